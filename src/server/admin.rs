//! The admin surface: the admin REST API (sessions, clients, instances, a
//! test broadcast), the dashboard page and its monitoring feed.
//!
//! With auth on, everything here needs a token with role `admin` (401 /
//! 403); without auth it is open like the rest of a loopback hub. The
//! dashboard page itself holds no data: it reads the API and the feed with
//! the token the operator gives it. The feed (`/dashboard/feed`, a
//! WebSocket) carries the cluster-wide monitor events
//! ([`crate::hub::monitor`]) and, on request, one session's events;
//! protocol in docs/admin.md.

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Bearer;
use super::browser::Page;
use super::openapi::ErrorBody;
use super::rest::{ApiError, check_session};
use crate::hub::{Broadcaster, Hub, SessionUse};
use crate::membership::InstanceInfo;
use crate::protocol::CloseReason;
use crate::protocol::{
    Approval, ClientInfo, Decision, ErrorCode, HubError, MAX_REASON_CHARS, check_text_len,
    now_millis,
};
use crate::store::SessionPage;

/// Sessions per page when `limit` is not given, and the most allowed.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(disconnect_client))
        .routes(routes!(broadcast))
        .routes(routes!(pending_approvals))
        .routes(routes!(decide_approval))
        .routes(routes!(instances))
        .routes(routes!(super::openapi::openapi_json))
        .routes(routes!(super::asyncapi::asyncapi_json))
}

/// The dashboard page and its feed (not REST: see `NON_REST_ROUTES`).
pub fn pages() -> Router<Arc<Hub>> {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/dashboard/feed", get(super::feed::feed_upgrade))
}

pub(super) static DASHBOARD: LazyLock<Page> =
    LazyLock::new(|| Page::new(include_str!("dashboard/index.html")));

async fn dashboard() -> Response {
    DASHBOARD.response()
}

/// The admin identity of a call (`admin` without auth), or its refusal.
fn admin(bearer: Bearer) -> Result<String, ApiError> {
    match bearer.identity() {
        Err(refusal) => Err(ApiError::Refused(refusal)),
        Ok(Some(id)) => match super::auth::not_admin(&id, "this endpoint") {
            Some(refusal) => Err(ApiError::Refused(Box::new(refusal))),
            None => Ok(id.sub),
        },
        Ok(None) => Ok("admin".to_string()),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Every session, by name, a page at a time, with its client count,
/// agent, last activity and message counts.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "admin",
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, description = "1 to 500 sessions (default 50)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "one page of sessions", body = SessionPage),
        (status = 400, description = "`invalid_field`", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks role admin; `insufficient_scope`: its `scope` leaves out `admin`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn list_sessions(
    State(hub): State<Arc<Hub>>,
    bearer: Bearer,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionPage>, ApiError> {
    admin(bearer)?;
    let Query(q) = query.map_err(|e| HubError::new(ErrorCode::InvalidField, e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!("`limit` must be 1 to {MAX_PAGE}"),
        )
        .into());
    }
    let cursor = q.cursor.filter(|c| !c.is_empty());
    Ok(Json(hub.list_sessions(cursor.as_deref(), limit).await?))
}

/// What `DELETE .../clients/{client_id}` did.
#[derive(Serialize, utoipa::ToSchema)]
struct Disconnected {
    session: String,
    client: ClientInfo,
    /// The close code the client gets (4002, docs/protocol.md §11).
    close_code: u16,
}

/// Disconnects a client on whichever instance holds it (close 4002); the
/// rest of the session sees `client_left`. Accepted once the instance
/// holding it was told (it closes the connection at once).
#[utoipa::path(delete, path = "/api/v1/sessions/{session}/clients/{client_id}", tag = "admin",
    params(
        ("session" = String, Path, description = "the session id"),
        ("client_id" = String, Path, description = "the client to disconnect"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "the client is being disconnected", body = Disconnected),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks role admin; `insufficient_scope`: its `scope` leaves out `admin`", body = ErrorBody),
        (status = 404, description = "`client_not_found`", body = ErrorBody),
        (status = 503, description = "its instance or the store is unreachable", body = ErrorBody),
    ))]
async fn disconnect_client(
    State(hub): State<Arc<Hub>>,
    Path((session, client_id)): Path<(String, String)>,
    bearer: Bearer,
) -> Result<Response, ApiError> {
    admin(bearer)?;
    check_session(&session)?;
    let client = hub.disconnect_client(&session, &client_id).await?;
    let body = Disconnected {
        session,
        client,
        close_code: CloseReason::AdminDisconnect.code(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct BroadcastBody {
    /// Any JSON value, delivered as the `payload` of a `broadcast` event.
    #[schema(value_type = Object)]
    payload: Value,
}

/// Sends a `broadcast` event into the session, `from` the admin (its
/// token's `sub`, or `admin` without auth): a test that the session's
/// clients receive events.
#[utoipa::path(post, path = "/api/v1/sessions/{session}/broadcast", tag = "admin",
    params(("session" = String, Path, description = "the session id")),
    request_body = BroadcastBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{sent: true, from}`", body = Object),
        (status = 400, description = "an invalid body", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks role admin; `insufficient_scope`: its `scope` leaves out `admin`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn broadcast(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    bearer: Bearer,
    body: Result<Json<BroadcastBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let from = admin(bearer)?;
    check_session(&session)?;
    let Json(body) = body.map_err(|e| HubError::new(ErrorCode::InvalidJson, e.body_text()))?;
    // A test broadcast never creates its session.
    hub.require_session(&session, SessionUse::Read).await?;
    hub.broadcast(&session, Broadcaster::Caller(&from), &body.payload)
        .await?;
    Ok(Json(json!({"sent": true, "from": from})))
}

/// `GET /api/v1/sessions/{session}/approvals`.
#[derive(Serialize, utoipa::ToSchema)]
struct PendingApprovals {
    session: String,
    /// Held sends waiting for a decision, oldest first.
    approvals: Vec<Approval>,
}

/// The session's sends held for a person's approval (APPROVAL_REQUIRED),
/// oldest first.
#[utoipa::path(get, path = "/api/v1/sessions/{session}/approvals", tag = "admin",
    params(("session" = String, Path, description = "the session id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the held sends", body = PendingApprovals),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks role admin; `insufficient_scope`: its `scope` leaves out `admin`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn pending_approvals(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    bearer: Bearer,
) -> Result<Json<PendingApprovals>, ApiError> {
    admin(bearer)?;
    check_session(&session)?;
    let approvals = hub.pending_approvals(&session).await?;
    Ok(Json(PendingApprovals { session, approvals }))
}

/// `approve` or `reject`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Approve,
    Reject,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DecisionBody {
    decision: Verdict,
    /// Shown to the session with the decision (at most 500 characters).
    reason: Option<String>,
}

/// Approves or rejects a held send, as `admin:SUB` (`admin` without
/// auth). Exactly one decision wins cluster-wide; an approved send is sent
/// before this answers, with the send's answer as `result`.
#[utoipa::path(post, path = "/api/v1/sessions/{session}/approvals/{id}", tag = "admin",
    params(
        ("session" = String, Path, description = "the session id"),
        ("id" = u64, Path, description = "the held send's number"),
    ),
    request_body = DecisionBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{success, id, decision, result?}`", body = Object),
        (status = 400, description = "an invalid body", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks role admin; `insufficient_scope`: its `scope` leaves out `admin`", body = ErrorBody),
        (status = 409, description = "`approval_not_pending`: unknown, or decided already", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn decide_approval(
    State(hub): State<Arc<Hub>>,
    Path((session, id)): Path<(String, u64)>,
    bearer: Bearer,
    body: Result<Json<DecisionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let admin_sub = admin(bearer)?;
    check_session(&session)?;
    let Json(body) = body.map_err(|e| HubError::new(ErrorCode::InvalidJson, e.body_text()))?;
    if let Some(reason) = &body.reason {
        check_text_len("reason", reason, MAX_REASON_CHARS)?;
    }
    let decision = match body.decision {
        Verdict::Approve => Decision::Approved,
        Verdict::Reject => Decision::Rejected,
    };
    let decided_by = if admin_sub == "admin" {
        admin_sub
    } else {
        format!("admin:{admin_sub}")
    };
    let content = hub
        .decide_approval(&session, id, decision, &decided_by, body.reason)
        .await?;
    Ok(Json(content))
}

/// `GET /api/v1/instances`.
#[derive(Serialize, utoipa::ToSchema)]
struct Instances {
    /// `standalone` or `cluster`.
    mode: &'static str,
    /// The instance that answered.
    instance: String,
    instances: Vec<InstanceView>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct InstanceView {
    #[serde(flatten)]
    info: InstanceInfo,
    uptime_ms: u64,
}

/// The cluster's live instances with version, uptime, connections and
/// readiness (this instance's live; the others' as of their last
/// heartbeat).
#[utoipa::path(get, path = "/api/v1/instances", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the live instances", body = Instances),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks role admin; `insufficient_scope`: its `scope` leaves out `admin`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn instances(
    State(hub): State<Arc<Hub>>,
    bearer: Bearer,
) -> Result<Json<Instances>, ApiError> {
    admin(bearer)?;
    let now = now_millis();
    let instances = hub
        .instances_with_live_self()
        .await?
        .into_iter()
        .map(|info| InstanceView {
            uptime_ms: now.saturating_sub(info.started_at),
            info,
        })
        .collect();
    Ok(Json(Instances {
        mode: hub.cluster_mode(),
        instance: hub.instance().to_string(),
        instances,
    }))
}
