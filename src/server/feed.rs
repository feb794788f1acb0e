//! The dashboard's monitoring feed (`/dashboard/feed`): what its messages
//! mean to the transport's loop ([`crate::transport::serve`]), the same
//! loop as a session client's. A feed gets every monitor event of the
//! cluster ([`crate::hub::monitor`]) and, on request, the events of the
//! one session it watches; protocol in docs/admin.md.
//!
//! Its queue is bounded like a client's (a feed that does not keep up is
//! closed with 1008), and its liveness is a client's: pinged every
//! `PING_INTERVAL_MS`, closed with 1001 after `IDLE_TIMEOUT_MS` without
//! inbound traffic (pongs included), with 4401 when its token expires.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::browser::ConnectionSlots;
use super::rest::check_session;
use super::upgrade::Upgrade;
use crate::auth::Identity;
use crate::hub::Hub;
use crate::hub::monitor::{FeedGuard, STATS_INTERVAL, WatchGuard};
use crate::hub::registry::ClientHandle;
use crate::outbox::Outbound;
use crate::protocol::{ClientInfo, ErrorCode, now_millis};
use crate::transport::{self, Limits, Peer, UpgradedSocket};

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
pub(super) async fn feed_upgrade(
    State(hub): State<Arc<Hub>>,
    Extension(slots): Extension<ConnectionSlots>,
    headers: HeaderMap,
    uri: Uri,
    ws: Upgrade,
) -> Response {
    if !super::browser::origin_allowed(&headers, &hub.config().allowed_origins) {
        hub.metrics().error(ErrorCode::ForbiddenOrigin);
        return super::browser::forbidden_origin();
    }
    let identity = match super::auth::upgrade_identity(&hub, &headers, &uri).await {
        Err(refusal) => return refusal,
        Ok(Some(id)) => match super::auth::not_admin(&id, "the monitoring feed") {
            Some(refusal) => return refusal,
            None => Some(id),
        },
        Ok(None) => None,
    };
    let slot = match slots.take(identity.as_ref(), hub.metrics()) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    ws.on_upgrade(move |socket| {
        let tracker = hub.connections().clone();
        tracker.track_future(async move {
            serve_feed(hub, socket, identity).await;
            // The slot is free once the feed is gone.
            drop(slot);
        })
    })
}

/// One feed connection, from its `hello` to its close.
async fn serve_feed(hub: Arc<Hub>, upgraded: UpgradedSocket, identity: Option<Identity>) {
    let conn_id = NEXT_FEED_ID.fetch_add(1, Ordering::Relaxed);
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
    let limits = Limits {
        max_message_bytes: hub.config().max_message_bytes,
        ping_interval: hub.config().ping_interval,
        idle_timeout: hub.config().idle_timeout,
        expires_in: identity.as_ref().map(|id| id.expires_in()),
        register_within: None,
    };
    let feed = Feed {
        _registered: hub.add_monitor_feed(handle.clone()),
        hub: hub.clone(),
        handle: handle.clone(),
        watching: None,
    };
    let hello = json!({
        "type": "hello",
        "instance": hub.instance(),
        "stats_interval_ms": STATS_INTERVAL.as_millis() as u64,
    });
    feed.send(hello);
    transport::serve(
        upgraded,
        handle,
        feed,
        limits,
        hub.metrics(),
        hub.shutdown(),
        conn_id,
    )
    .await;
}

/// A connected feed: registered with the hub's monitor feeds while it
/// lives, and watching at most one session.
struct Feed {
    hub: Arc<Hub>,
    handle: ClientHandle,
    watching: Option<WatchGuard>,
    _registered: FeedGuard,
}

impl Feed {
    /// Queues a reply for the feed itself.
    fn send(&self, reply: serde_json::Value) {
        let out = Outbound::reply(reply.to_string().into(), "other");
        self.handle.send(out, self.hub.metrics());
    }

    async fn answer(&mut self, text: &str) {
        let reply = match serde_json::from_str::<FeedRequest>(text) {
            Ok(FeedRequest::Watch { session }) => match check_session(&session) {
                Ok(()) => {
                    // The old watch ends before the new one starts.
                    drop(self.watching.take());
                    let watch = self.hub.watch_session(&session, self.handle.clone()).await;
                    self.watching = Some(watch);
                    json!({"type": "watching", "session": session})
                }
                Err(_) => json!({"type": "error", "code": ErrorCode::InvalidField.as_str(),
                    "message": "session must be 1 to 128 printable characters"}),
            },
            Ok(FeedRequest::Unwatch) => {
                self.watching = None;
                json!({"type": "watching", "session": null})
            }
            Err(e) => json!({"type": "error", "code": ErrorCode::InvalidMessage.as_str(),
                "message": format!("expected {{\"type\":\"watch\",\"session\":...}} or {{\"type\":\"unwatch\"}}: {e}")}),
        };
        self.send(reply);
    }
}

impl Peer for Feed {
    async fn on_text(mut self, text: Utf8Bytes) -> Self {
        self.answer(text.as_str()).await;
        self
    }

    /// The feed speaks JSON text; anything else is ignored.
    fn on_binary(&mut self) {}

    fn is_registered(&self) -> bool {
        true
    }

    /// The watch and the feed's registration end with it.
    async fn leave(self) {}
}
