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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::rest::{ApiError, check_session, require_session};
use crate::hub::Hub;
use crate::hub::monitor::{STATS_INTERVAL, WatchGuard};
use crate::hub::registry::{ClientHandle, CloseReason, Outbound};
use crate::protocol::{ClientInfo, ErrorCode, HubError, ServerEvent, now_millis};
use crate::store::SessionPage;
use crate::store::membership::InstanceInfo;

/// Sessions per page when `limit` is not given, and the most allowed.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(disconnect_client))
        .routes(routes!(broadcast))
        .routes(routes!(instances))
        .routes(routes!(super::openapi::openapi_json))
}

/// The dashboard page and its feed (not REST: see `NON_REST_ROUTES`).
pub fn pages() -> Router<Arc<Hub>> {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/dashboard/feed", get(feed_upgrade))
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard/index.html"))
}

/// The admin identity of a call (`admin` without auth), or its refusal.
async fn admin(hub: &Hub, headers: &HeaderMap) -> Result<String, ApiError> {
    match super::auth::bearer_identity(hub, headers).await {
        Err(refusal) => Err(ApiError::Refused(Box::new(refusal))),
        Ok(Some(id)) if !id.is_admin() => Err(ApiError::Refused(Box::new(super::auth::forbidden(
            "this endpoint needs a token with role admin",
        )))),
        Ok(Some(id)) => Ok(id.sub),
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
        (status = 403, description = "the token lacks role admin", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn list_sessions(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionPage>, ApiError> {
    admin(&hub, &headers).await?;
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
    Ok(Json(
        hub.store.list_sessions(cursor.as_deref(), limit).await?,
    ))
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
        (status = 403, description = "the token lacks role admin", body = ErrorBody),
        (status = 404, description = "`client_not_found`", body = ErrorBody),
        (status = 503, description = "its instance or the store is unreachable", body = ErrorBody),
    ))]
async fn disconnect_client(
    State(hub): State<Arc<Hub>>,
    Path((session, client_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin(&hub, &headers).await?;
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
        (status = 403, description = "the token lacks role admin", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn broadcast(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Result<Json<BroadcastBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let from = admin(&hub, &headers).await?;
    check_session(&session)?;
    let Json(body) = body.map_err(|e| HubError::new(ErrorCode::InvalidJson, e.body_text()))?;
    require_session(&hub, &session).await?;
    let event = ServerEvent::Broadcast {
        from: &from,
        payload: &body.payload,
        timestamp: now_millis(),
    };
    hub.publish_delivered(&session, &event, "broadcast", None)
        .await?;
    Ok(Json(json!({"sent": true, "from": from})))
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
        (status = 403, description = "the token lacks role admin", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn instances(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Result<Json<Instances>, ApiError> {
    admin(&hub, &headers).await?;
    let clients = hub.registry.client_count();
    let now = now_millis();
    let instances = hub
        .membership
        .instances(clients)
        .await?
        .into_iter()
        .map(|mut info| {
            if info.instance == hub.instance() {
                info.clients = clients;
                info.ready = hub.is_ready();
            }
            InstanceView {
                uptime_ms: now.saturating_sub(info.started_at),
                info,
            }
        })
        .collect();
    Ok(Json(Instances {
        mode: hub.membership.mode(),
        instance: hub.instance().to_string(),
        instances,
    }))
}

// ------------------------------------------------------------------ feed

/// Feed connections get ids of their own (they are never registry
/// clients; the ids only key the feed and watcher maps).
static NEXT_FEED_ID: AtomicU64 = AtomicU64::new(1 << 48);

/// What the dashboard sends on its feed.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FeedRequest {
    /// Get this session's events as they happen (replaces a previous watch).
    Watch {
        session: String,
    },
    Unwatch,
}

/// The monitoring feed: admins only, checked before the upgrade (401 /
/// 403 as plain HTTP), like a client connection's token and `Origin`.
async fn feed_upgrade(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if !super::browser::origin_allowed(&headers, &hub.config.allowed_origins) {
        hub.metrics.error(ErrorCode::ForbiddenOrigin);
        return super::browser::forbidden_origin();
    }
    match super::auth::upgrade_identity(&hub, &headers, &uri).await {
        Err(refusal) => return refusal,
        Ok(Some(id)) if !id.is_admin() => {
            return super::auth::forbidden("the monitoring feed needs a token with role admin");
        }
        Ok(_) => {}
    }
    super::connection::configure(ws, hub.config.max_message_bytes).on_upgrade(move |socket| {
        let tracker = hub.connections.clone();
        tracker.track_future(serve_feed(hub, socket))
    })
}

/// One feed connection: its queue is bounded like a client's (a feed that
/// does not keep up is closed with 1008), it gets every monitor event of
/// the cluster, and the events of the session it watches.
async fn serve_feed(hub: Arc<Hub>, socket: WebSocket) {
    let conn_id = NEXT_FEED_ID.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let info = ClientInfo {
        client_id: format!("admin-feed-{conn_id}"),
        client_name: "admin feed".to_string(),
        instance: hub.instance().to_string(),
        capabilities: Vec::new(),
        owner: None,
        connected_at: Some(now_millis()),
    };
    let handle = ClientHandle::new(
        info,
        conn_id,
        hub.config.outbound_queue_len,
        hub.config.outbound_queue_bytes,
    );
    let _feed = hub.add_monitor_feed(handle.clone());
    let hello = json!({
        "type": "hello",
        "instance": hub.instance(),
        "stats_interval_ms": STATS_INTERVAL.as_millis() as u64,
    });
    send_text(&hub, &handle, hello.to_string());

    // The writer task is the only one woken by the handle (its waker holds
    // one task); the reader learns that the feed ended from `done`.
    let done = CancellationToken::new();
    let writer_done = done.clone().drop_guard();
    let writer_handle = handle.clone();
    let writer = tokio::spawn(async move {
        let _done = writer_done;
        loop {
            let out = std::future::poll_fn(|cx| {
                writer_handle.wake_on_send(cx.waker());
                if writer_handle.is_kicked() {
                    return Poll::Ready(None);
                }
                match writer_handle.next_frame() {
                    Some(out) => Poll::Ready(Some(out)),
                    None => Poll::Pending,
                }
            })
            .await;
            let Some(out) = out else { break };
            let len = out.frame.len();
            let sent = tokio::select! {
                _ = kicked(&writer_handle) => break,
                sent = sink.send(Message::Text(out.frame.as_str().into())) => sent,
            };
            writer_handle.dequeued(len);
            if sent.is_err() {
                writer_handle.disconnect(CloseReason::Normal);
                return;
            }
        }
        let reason = writer_handle.close_reason().unwrap_or(CloseReason::Normal);
        let close = CloseFrame {
            code: reason.code(),
            reason: reason.text().into(),
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            if sink.send(Message::Close(Some(close))).await.is_ok() {
                let _ = sink.close().await;
            }
        })
        .await;
    });

    let mut watching: Option<WatchGuard> = None;
    loop {
        let msg = tokio::select! {
            _ = done.cancelled() => break,
            _ = hub.shutdown.cancelled() => {
                handle.disconnect(CloseReason::ShuttingDown);
                break;
            }
            msg = stream.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                handle.disconnect(CloseReason::Normal);
                break;
            }
        };
        let reply = match serde_json::from_str::<FeedRequest>(text.as_str()) {
            Ok(FeedRequest::Watch { session }) => match check_session(&session) {
                Ok(()) => {
                    // The old watch ends before the new one starts.
                    drop(watching.take());
                    watching = Some(hub.watch_session(&session, handle.clone()).await);
                    json!({"type": "watching", "session": session})
                }
                Err(_) => json!({"type": "error", "code": ErrorCode::InvalidField.as_str(),
                    "message": "session must be 1 to 128 printable characters"}),
            },
            Ok(FeedRequest::Unwatch) => {
                watching = None;
                json!({"type": "watching", "session": null})
            }
            Err(e) => json!({"type": "error", "code": ErrorCode::InvalidMessage.as_str(),
                "message": format!("expected {{\"type\":\"watch\",\"session\":...}} or {{\"type\":\"unwatch\"}}: {e}")}),
        };
        send_text(&hub, &handle, reply.to_string());
    }
    drop(watching);
    let _ = writer.await;
}

/// Resolves once the feed was asked to close ([`ClientHandle::disconnect`]).
async fn kicked(handle: &ClientHandle) {
    std::future::poll_fn(|cx| {
        handle.wake_on_send(cx.waker());
        if handle.is_kicked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Queues a reply for the feed itself.
fn send_text(hub: &Hub, handle: &ClientHandle, text: String) {
    let out = Outbound {
        frame: text.into(),
        kind: "other",
        produced_at: 0,
    };
    handle.send(out, &hub.metrics);
}
