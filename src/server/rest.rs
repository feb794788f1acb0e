//! The REST API for callers that don't hold a WebSocket: read a session,
//! read a conversation, run a command. Commands run exactly as if a client
//! sent them, so every WebSocket client of the session sees the result live.
//!
//! Limits: bodies over `MAX_REST_BODY_BYTES` get 413, callers over the rate
//! limit 429 ([`super::rate`]); reads of an unknown session get 404 and
//! create nothing; CORS only with `ALLOWED_ORIGINS` ([`super::browser`]).
//!
//! With auth on every call needs `Authorization: Bearer` (401), the token
//! must allow the session (403 `forbidden`), and the caller is the token's
//! `sub` (`X-Client-Id` is ignored); without auth `X-Client-Id` names it.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Bearer;
use super::{browser, rate};
use crate::auth::Scope;
use crate::hub::approvals::Door;
use crate::hub::{Hub, SessionSummary, SessionUse};
use crate::protocol::{
    AiContext, ClientInfo, ErrorCode, HubError, check_ai_context, check_idempotency_key,
    check_text_len, parse_whatsapp_command_with,
};

/// The session API.
pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(session_summary))
        .routes(routes!(history))
        .routes(routes!(command))
        .routes(routes!(events))
        .routes(routes!(templates))
}

/// `api` under the REST API's body limit, rate limit and CORS policy.
pub fn limited(hub: &Arc<Hub>, api: OpenApiRouter<Arc<Hub>>) -> OpenApiRouter<Arc<Hub>> {
    let config = hub.config();
    let limit = Arc::new(rate::RestRateLimit::new(config));
    let routes = api
        .layer(DefaultBodyLimit::max(config.max_rest_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            (limit, hub.clone()),
            rate::limit,
        ));
    // Outermost, so a preflight is answered before the rate limit counts it.
    match browser::cors_layer(&config.allowed_origins) {
        Some(cors) => routes.layer(cors),
        None => routes,
    }
}

pub(super) enum ApiError {
    Hub(HubError),
    /// A ready answer (401 / 403 from the auth check).
    Refused(Box<Response>),
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        ApiError::Hub(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = match self {
            ApiError::Hub(e) => e,
            ApiError::Refused(response) => return *response,
        };
        let status = match e.code {
            ErrorCode::StoreUnavailable
            | ErrorCode::AgentUnavailable
            | ErrorCode::AiUnavailable
            | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::AgentTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::AiRateLimited | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::SessionNotFound | ErrorCode::ClientNotFound | ErrorCode::MediaNotFound => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::MediaFailed
            | ErrorCode::ConnectorFailed
            | ErrorCode::ConnectorRejected
            | ErrorCode::ConnectorAuthFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::ConnectorUnavailable | ErrorCode::ConnectorRateLimited => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ApprovalNotPending => StatusCode::CONFLICT,
            ErrorCode::Internal | ErrorCode::AiFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::InsufficientScope => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        if matches!(e.code, ErrorCode::Unauthorized | ErrorCode::Forbidden) {
            return super::auth::refusal(status, e.code, e.message);
        }
        let body = json!({"code": e.code.as_str(), "message": e.message});
        (status, Json(body)).into_response()
    }
}

/// Authorizes a call (its token verified by the middleware) for `session`
/// and returns the caller as the
/// session's clients see it (`by` of its messages): the token's `sub` with
/// auth on, else `X-Client-Id` (default `rest`).
pub(super) fn caller(
    hub: &Hub,
    headers: &HeaderMap,
    bearer: Bearer,
    session: &str,
    scope: Scope,
) -> Result<ClientInfo, ApiError> {
    check_session(session)?;
    let identity = bearer.identity().map_err(ApiError::Refused)?;
    if let Some(id) = &identity {
        id.require(scope)?;
    }
    match identity {
        None => Ok(rest_client(hub, headers)),
        Some(id) if !id.may_use_session(session) => Err(HubError::new(
            ErrorCode::Forbidden,
            format!("the token does not allow session `{session}`"),
        )
        .into()),
        Some(id) => Ok(ClientInfo {
            client_id: id.sub.clone(),
            client_name: id.sub.clone(),
            instance: hub.instance().to_string(),
            capabilities: Vec::new(),
            owner: Some(id.sub),
            connected_at: None,
        }),
    }
}

fn rest_client(hub: &Hub, headers: &HeaderMap) -> ClientInfo {
    let client_id = headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty() && v.len() <= 128)
        .unwrap_or("rest")
        .to_string();
    ClientInfo {
        client_name: client_id.clone(),
        client_id,
        instance: hub.instance().to_string(),
        capabilities: Vec::new(),
        owner: None,
        connected_at: None,
    }
}

pub(super) fn check_session(session: &str) -> Result<(), ApiError> {
    if session.trim().is_empty() || session.len() > 128 || session.chars().any(char::is_control) {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            "session must be 1 to 128 printable characters",
        )
        .into());
    }
    Ok(())
}

/// The session's contacts, last contact, clients (with instance,
/// capabilities and `connected_at`) and agent ([`Hub::session_summary`]):
/// for its members, and for admins (any session).
#[utoipa::path(get, path = "/api/v1/sessions/{session}", tag = "sessions",
    params(("session" = String, Path, description = "the session id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the session", body = SessionSummary),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token does not allow this session; `insufficient_scope`: its `scope` leaves out what this needs", body = super::openapi::ErrorBody),
        (status = 404, description = "`session_not_found`", body = super::openapi::ErrorBody),
        (status = 429, description = "`rate_limited`", body = super::openapi::ErrorBody),
    ))]
async fn session_summary(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    bearer: Bearer,
) -> Result<Json<SessionSummary>, ApiError> {
    caller(&hub, &headers, bearer, &session, Scope::Read)?;
    Ok(Json(hub.session_summary(&session).await?))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// The newest messages with a contact (a `get_history` command).
#[utoipa::path(get, path = "/api/v1/sessions/{session}/history/{contact}", tag = "sessions",
    params(
        ("session" = String, Path, description = "the session id"),
        ("contact" = String, Path, description = "the contact's name (case-insensitive)"),
        ("limit" = Option<usize>, Query, description = "1 to 500 messages (default 50)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the command's result, as a WebSocket `response` content", body = Object),
        (status = 400, description = "an invalid field", body = super::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token does not allow this session; `insufficient_scope`: its `scope` leaves out what this needs", body = super::openapi::ErrorBody),
        (status = 404, description = "`session_not_found`", body = super::openapi::ErrorBody),
        (status = 429, description = "`rate_limited`", body = super::openapi::ErrorBody),
    ))]
async fn history(
    State(hub): State<Arc<Hub>>,
    Path((session, contact)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    headers: HeaderMap,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    let client = caller(&hub, &headers, bearer, &session, Scope::Read)?;
    let Query(q) = query.map_err(|e| HubError::new(ErrorCode::InvalidField, e.body_text()))?;
    // Validated like a WebSocket get_history (limit 1 to 500).
    let mut command = json!({"action": "get_history", "contact": contact});
    if let Some(limit) = q.limit {
        command["limit"] = json!(limit);
    }
    let command = parse_whatsapp_command_with(command, &hub.config().field_limits)?;
    hub.require_session(&session, SessionUse::Read).await?;
    run(&hub, &session, command, &client).await.map(Json)
}

/// The account's message templates (a `list_templates` command): name,
/// language, status, category, how many parameters, components.
#[utoipa::path(get, path = "/api/v1/sessions/{session}/templates", tag = "sessions",
    params(("session" = String, Path, description = "the session id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{success, templates, count, executed_by}`", body = Object),
        (status = 400, description = "`not_supported`: the connector has no templates, or no WhatsApp Business Account id is configured", body = super::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden` or `insufficient_scope`", body = super::openapi::ErrorBody),
        (status = 404, description = "`session_not_found`", body = super::openapi::ErrorBody),
    ))]
async fn templates(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    let client = caller(&hub, &headers, bearer, &session, Scope::Read)?;
    hub.require_session(&session, SessionUse::Read).await?;
    let command = parse_whatsapp_command_with(
        json!({"action": "list_templates"}),
        &hub.config().field_limits,
    )?;
    match run(&hub, &session, command, &client).await {
        // A command failure is a `success:false` content elsewhere; here
        // its code decides the status.
        Ok(v) if v.get("success") == Some(&Value::Bool(false)) => {
            let code = v
                .get("code")
                .and_then(Value::as_str)
                .and_then(|c| c.parse::<ErrorCode>().ok())
                .unwrap_or(ErrorCode::ConnectorFailed);
            let message = v.get("error").and_then(Value::as_str).unwrap_or("failed");
            Err(HubError::new(code, message).into())
        }
        other => other.map(Json),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
    epoch: Option<String>,
}

/// The session's event log after `since` (the same replay as a WebSocket
/// `register` with `since`), a page at a time: `recovered` is true when
/// `epoch` is the log's and every event after `since` is still kept; only
/// then are `events` (oldest first, exactly as clients received them)
/// given, at most EVENTS_PAGE_MAX_BYTES of them and EVENTS_PAGE_MAX_EVENTS.
/// `has_more`: the next page starts at `next_since` (same `epoch`).
#[utoipa::path(get, path = "/api/v1/sessions/{session}/events", tag = "sessions",
    params(
        ("session" = String, Path, description = "the session id"),
        ("since" = Option<u64>, Query, description = "the last offset the caller has (with `epoch`)"),
        ("epoch" = Option<String>, Query, description = "the log epoch `since` belongs to"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{recovered, offset, epoch, has_more, next_since, events}`", body = Object),
        (status = 400, description = "an invalid field", body = super::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token does not allow this session; `insufficient_scope`: its `scope` leaves out what this needs", body = super::openapi::ErrorBody),
        (status = 404, description = "`session_not_found`", body = super::openapi::ErrorBody),
    ))]
async fn events(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
    bearer: Bearer,
) -> Result<Response, ApiError> {
    caller(&hub, &headers, bearer, &session, Scope::Read)?;
    hub.require_session(&session, SessionUse::Read).await?;
    let Query(q) = query.map_err(|e| HubError::new(ErrorCode::InvalidField, e.body_text()))?;
    let since = match (q.since, q.epoch.as_deref()) {
        (None, None) => None,
        (Some(since), Some(epoch)) if !epoch.is_empty() => Some((since, epoch)),
        _ => {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                "give both `since` (an offset) and `epoch`, or neither",
            )
            .into());
        }
    };
    let page = hub.events_page(&session, since).await?;
    let head = json!({
        "recovered": page.events.is_some(),
        "offset": page.head,
        "epoch": page.epoch,
        "has_more": page.has_more,
        "next_since": page.next_since,
    })
    .to_string();
    // The logged frames are JSON already: the page is spliced from them,
    // not parsed and serialized again (a page is up to EVENTS_PAGE_MAX_BYTES).
    let frames = page.events.unwrap_or_default();
    let mut body = String::with_capacity(
        head.len() + 16 + frames.iter().map(|e| e.frame.len() + 1).sum::<usize>(),
    );
    body.push_str(&head[..head.len() - 1]);
    body.push_str(",\"events\":[");
    for (i, event) in frames.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&event.frame);
    }
    body.push_str("]}");
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `{"command": {"action": ...}}` runs a whatsapp_command;
/// `{"text": "send john hi", "context"?: {...}}` runs an AI command.
#[derive(Deserialize, utoipa::ToSchema)]
struct CommandBody {
    /// A `whatsapp_command` action object (docs/protocol.md).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    command: Option<Value>,
    /// A natural-language command for the AI coordinator.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    context: Option<AiContext>,
}

/// Runs a command in the session exactly as a WebSocket client would:
/// every client of the session sees its effects live.
#[utoipa::path(post, path = "/api/v1/sessions/{session}/commands", tag = "sessions",
    params(
        ("session" = String, Path, description = "the session id"),
        ("Idempotency-Key" = Option<String>, Header, description = "runs the command once per key"),
    ),
    request_body = CommandBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the command's result", body = Object),
        (status = 400, description = "an invalid command", body = super::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token does not allow this session; `insufficient_scope`: its `scope` leaves out what this needs", body = super::openapi::ErrorBody),
        (status = 404, description = "`session_not_found`: no such session (SESSION_CREATION=register creates none here)", body = super::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = super::openapi::ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: the `Idempotency-Key` was used for a different request", body = super::openapi::ErrorBody),
        (status = 429, description = "`rate_limited` or `ai_rate_limited`", body = super::openapi::ErrorBody),
        (status = 503, description = "the agent, AI or store is unavailable", body = super::openapi::ErrorBody),
    ))]
async fn command(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    bearer: Bearer,
    body: Result<Json<CommandBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    // Reading is the least any command needs; sending is checked below.
    let identity = bearer.verified().cloned();
    let client = caller(&hub, &headers, bearer, &session, Scope::Read)?;
    let needs = |scope| identity.as_ref().map_or(Ok(()), |id| id.require(scope));
    let Json(body) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HubError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the body is larger than {} bytes (MAX_REST_BODY_BYTES)",
                    hub.config().max_rest_body_bytes
                ),
            )
        } else {
            HubError::new(ErrorCode::InvalidJson, e.body_text())
        }
    })?;
    let key = idempotency_key(&headers)?;
    let key = key.as_deref();
    match (body.command, body.text) {
        (Some(cmd), None) => {
            let command = parse_whatsapp_command_with(cmd, &hub.config().field_limits)?;
            if SessionUse::of(&command) == SessionUse::Write {
                needs(Scope::Send)?;
            }
            hub.require_session(&session, SessionUse::of(&command))
                .await?;
            Ok(Json(
                hub.run_command_once(&session, &command, &client, key, &Door::Client)
                    .await?,
            ))
        }
        (None, Some(text)) => {
            needs(Scope::Send)?;
            check_text_len("text", &text, hub.config().field_limits.max_text_chars)?;
            if let Some(context) = &body.context {
                check_ai_context(context, Some(context), &hub.config().field_limits)?;
            }
            hub.require_session(&session, SessionUse::Write).await?;
            Ok(Json(
                hub.run_ai_command_once(&session, &text, body.context, &client, key, &Door::Client)
                    .await?,
            ))
        }
        _ => Err(HubError::new(
            ErrorCode::InvalidMessage,
            "give exactly one of `command` (an action object) or `text` (natural language)",
        )
        .into()),
    }
}

/// The `Idempotency-Key` header, validated like `idempotency_key`.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| {
        HubError::new(
            ErrorCode::InvalidField,
            "header `Idempotency-Key` must be printable ASCII",
        )
    })?;
    Ok(check_idempotency_key(Some(v.to_string()))?)
}

async fn run(
    hub: &Arc<Hub>,
    session: &str,
    command: crate::protocol::WhatsAppCommand,
    client: &ClientInfo,
) -> Result<Value, ApiError> {
    // The same path as a WebSocket `whatsapp_command`.
    Ok(hub.run_command(session, &command, client).await?)
}
