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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Bearer;
use super::browser::{ConnectionSlots, Page};
use super::openapi::ErrorBody;
use super::rest::{ApiError, check_session};
use crate::auth::Identity;
use crate::hub::monitor::{STATS_INTERVAL, WatchGuard};
use crate::hub::registry::ClientHandle;
use crate::hub::{Broadcaster, Hub, SessionUse};
use crate::membership::InstanceInfo;
use crate::outbox::Outbound;
use crate::protocol::CloseReason;
use crate::protocol::{ClientInfo, ErrorCode, HubError, now_millis};
use crate::store::SessionPage;

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

pub(super) static DASHBOARD: LazyLock<Page> =
    LazyLock::new(|| Page::new(include_str!("dashboard/index.html")));

async fn dashboard() -> Response {
    DASHBOARD.response()
}

/// The admin identity of a call (`admin` without auth), or its refusal.
fn admin(bearer: Bearer) -> Result<String, ApiError> {
    match bearer.identity() {
        Err(refusal) => Err(ApiError::Refused(refusal)),
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
        (status = 403, description = "the token lacks role admin", body = ErrorBody),
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
        (status = 403, description = "the token lacks role admin", body = ErrorBody),
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

// ------------------------------------------------------------------ feed

/// How long the close frame may take to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
/// 403 as plain HTTP) like a client connection's token and `Origin`, and
/// holding a connection slot like any WebSocket (503 / 429
/// `too_many_connections` when the instance's or the `sub`'s are taken).
async fn feed_upgrade(
    State(hub): State<Arc<Hub>>,
    Extension(slots): Extension<ConnectionSlots>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if !super::browser::origin_allowed(&headers, &hub.config().allowed_origins) {
        hub.metrics().error(ErrorCode::ForbiddenOrigin);
        return super::browser::forbidden_origin();
    }
    let identity = match super::auth::upgrade_identity(&hub, &headers, &uri).await {
        Err(refusal) => return refusal,
        Ok(Some(id)) if !id.is_admin() => {
            return super::auth::forbidden("the monitoring feed needs a token with role admin");
        }
        Ok(identity) => identity,
    };
    let slot = match slots.take(identity.as_ref(), hub.metrics()) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    super::connection::configure(ws, hub.config().max_message_bytes).on_upgrade(move |socket| {
        let tracker = hub.connections().clone();
        tracker.track_future(async move {
            serve_feed(hub, socket, identity).await;
            // The slot is free once the feed is gone.
            drop(slot);
        })
    })
}

/// One feed connection: its queue is bounded like a client's (a feed that
/// does not keep up is closed with 1008), it gets every monitor event of
/// the cluster, and the events of the session it watches. Liveness is a
/// client's: pinged every `PING_INTERVAL_MS`, closed with 1001 after
/// `IDLE_TIMEOUT_MS` without inbound traffic (pongs included), and with
/// 4401 when its token expires. Two tasks: this one reads, [`write_feed`]
/// writes (the handle wakes one task).
async fn serve_feed(hub: Arc<Hub>, socket: WebSocket, identity: Option<Identity>) {
    let conn_id = NEXT_FEED_ID.fetch_add(1, Ordering::Relaxed);
    let (sink, mut stream) = socket.split();
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
        hub.config().outbound_queue_len,
        hub.config().outbound_queue_bytes,
    );
    hub.metrics().connections.inc();
    hub.metrics().connections_opened.inc();
    let _feed = hub.add_monitor_feed(handle.clone());
    let hello = json!({
        "type": "hello",
        "instance": hub.instance(),
        "stats_interval_ms": STATS_INTERVAL.as_millis() as u64,
    });
    send_text(&hub, &handle, hello.to_string());

    // The reader learns from `done` that the writer ended.
    let done = CancellationToken::new();
    let writer = tokio::spawn(write_feed(
        sink,
        handle.clone(),
        hub.config().ping_interval,
        done.clone().drop_guard(),
    ));

    let now = Instant::now();
    let expires_at = identity.map(|id| now + id.expires_in());
    let mut last_inbound = now;
    let mut watching: Option<WatchGuard> = None;
    loop {
        let idle_at = last_inbound + hub.config().idle_timeout;
        let deadline = expires_at.map_or(idle_at, |exp| exp.min(idle_at));
        let msg = tokio::select! {
            _ = done.cancelled() => break,
            _ = hub.shutdown().cancelled() => {
                handle.disconnect(CloseReason::ShuttingDown);
                break;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let expired = expires_at.is_some_and(|exp| Instant::now() >= exp);
                handle.disconnect(if expired {
                    CloseReason::TokenExpired
                } else {
                    CloseReason::IdleTimeout
                });
                break;
            }
            msg = stream.next() => msg,
        };
        last_inbound = Instant::now();
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
                    // Nothing was read while the watch started (it reads
                    // the store): that wait is not the peer's silence.
                    last_inbound = Instant::now();
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
    let reason = handle.close_reason().unwrap_or(CloseReason::Normal);
    hub.metrics().connections.dec();
    hub.metrics()
        .connections_closed
        .with_label_values(&[reason.label()])
        .inc();
}

/// The feed's writer: queued frames and a ping every `ping_interval`, then
/// the close frame once the feed is asked to close.
async fn write_feed(
    mut sink: SplitSink<WebSocket, Message>,
    handle: ClientHandle,
    ping_interval: Duration,
    _done: DropGuard,
) {
    let start = tokio::time::Instant::now() + ping_interval;
    let mut ping = tokio::time::interval_at(start, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // `next_frame` takes a frame only when it resolves, so losing the
        // race to the ping loses no frame.
        let (msg, len) = tokio::select! {
            out = next_frame(&handle) => match out {
                Some(out) => {
                    let len = out.frame.len();
                    (Message::Text(out.frame.as_str().into()), len)
                }
                None => break,
            },
            _ = ping.tick() => (Message::Ping(Default::default()), 0),
        };
        let sent = tokio::select! {
            _ = kicked(&handle) => break,
            sent = sink.send(msg) => sent,
        };
        handle.outbox().dequeued(len, usize::from(len > 0));
        if sent.is_err() {
            handle.disconnect(CloseReason::Normal);
            return;
        }
    }
    let reason = handle.close_reason().unwrap_or(CloseReason::Normal);
    let close = CloseFrame {
        code: reason.code(),
        reason: reason.text().into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if sink.send(Message::Close(Some(close))).await.is_ok() {
            let _ = sink.close().await;
        }
    })
    .await;
}

/// The next queued frame; None once the feed was asked to close.
async fn next_frame(handle: &ClientHandle) -> Option<Outbound> {
    std::future::poll_fn(|cx| {
        handle.outbox().register(cx.waker());
        if handle.outbox().is_kicked() {
            return Poll::Ready(None);
        }
        match handle.outbox().next_frame() {
            Some(out) => Poll::Ready(Some(out)),
            None => Poll::Pending,
        }
    })
    .await
}

/// Resolves once the feed was asked to close ([`ClientHandle::disconnect`]).
async fn kicked(handle: &ClientHandle) {
    std::future::poll_fn(|cx| {
        handle.outbox().register(cx.waker());
        if handle.outbox().is_kicked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Queues a reply for the feed itself.
fn send_text(hub: &Hub, handle: &ClientHandle, text: String) {
    let out = Outbound::reply(text.into(), "other");
    handle.send(out, hub.metrics());
}
