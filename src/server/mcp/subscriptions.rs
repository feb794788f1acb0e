//! `resources/subscribe`: an MCP session (stateful, see [`super::http`])
//! that subscribed to a resource gets `notifications/resources/updated`
//! on its stream whenever the resource changes, whichever instance caused
//! it: a message in or out of a conversation (`message_event`,
//! `message_status`), a new contact list, a member joining or leaving.
//!
//! Each hub session with subscribers on this instance is watched once
//! ([`Hub::watch_session`], as the admin feed watches one): its logged
//! events reach a hidden handle whose frames a task of ours reads, maps to
//! the resources they change and turns into notifications. Bounded: at
//! most [`PER_MCP_SESSION`] subscriptions per MCP session and
//! [`PER_INSTANCE`] on the instance; an MCP session whose stream is gone,
//! or does not take a notification within [`NOTIFY_DEADLINE`], loses all
//! its subscriptions at that notification (they share the stream), and a
//! watch with no subscriber left stops.
//! The subscribers of an event are told concurrently: rmcp's send waits
//! until the stream took the notification, so one stream no longer read
//! must not hold up the others, nor the watch's reader until the watch is
//! evicted as a slow consumer.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::{Peer, RoleServer};
use serde_json::Value;

use super::Call;
use super::resources::HubResource;
use crate::hub::Hub;
use crate::hub::SessionUse;
use crate::hub::monitor::WatchGuard;
use crate::hub::registry::ClientHandle;
use crate::protocol::{ClientInfo, ErrorCode, HubError, now_millis};

/// Subscriptions one MCP session may hold.
pub const PER_MCP_SESSION: usize = 64;
/// Subscriptions one instance holds at most.
pub const PER_INSTANCE: usize = 10_000;

/// How long a subscriber's stream may take to accept a notification
/// before the subscription is dropped, as a slow consumer's connection is.
pub const NOTIFY_DEADLINE: Duration = Duration::from_secs(2);

/// Hidden watchers' connection ids: apart from clients' and admin feeds'.
static NEXT_WATCH_ID: AtomicU64 = AtomicU64::new(1 << 56);

/// Who is notified of what.
struct Subscriber {
    mcp_session: String,
    /// The resource's URI, as the client subscribed to it.
    uri: String,
    resource: HubResource,
    peer: Peer<RoleServer>,
}

/// One watched hub session.
struct Watched {
    subscribers: Vec<Subscriber>,
    /// Stops the hidden watch when dropped.
    _watch: WatchGuard,
    reader: tokio::task::AbortHandle,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// This instance's MCP resource subscriptions.
pub struct Subscriptions {
    hub: Arc<Hub>,
    sessions: Mutex<HashMap<String, Watched>>,
}

impl Subscriptions {
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Subscriptions {
            hub,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes `mcp_session` (whose stream `peer` is) to `resource`,
    /// already authorized and canonical (`uri` is what the client named).
    pub async fn subscribe(
        self: &Arc<Self>,
        session: &str,
        resource: HubResource,
        uri: String,
        mcp_session: String,
        peer: Peer<RoleServer>,
    ) -> Result<(), HubError> {
        let subscriber = Subscriber {
            mcp_session,
            uri,
            resource,
            peer,
        };
        if !self.sessions().contains_key(session) {
            // Watched before the lock is taken again (watching awaits).
            let watched = self.watch(session).await;
            self.sessions()
                .entry(session.to_string())
                .or_insert(watched);
        }
        let mut sessions = self.sessions();
        let total: usize = sessions.values().map(|w| w.subscribers.len()).sum();
        let Some(watched) = sessions.get_mut(session) else {
            return Err(HubError::internal("the watch vanished"));
        };
        let mine = watched
            .subscribers
            .iter()
            .filter(|s| s.mcp_session == subscriber.mcp_session);
        if mine.clone().any(|s| s.uri == subscriber.uri) {
            return Ok(());
        }
        if mine.count() >= PER_MCP_SESSION || total >= PER_INSTANCE {
            return Err(HubError::new(
                ErrorCode::TooManyInFlight,
                format!(
                    "too many resource subscriptions (at most {PER_MCP_SESSION} per MCP session)"
                ),
            ));
        }
        watched.subscribers.push(subscriber);
        Ok(())
    }

    /// Ends `mcp_session`'s subscription to `uri` (nothing if it had none).
    pub fn unsubscribe(&self, mcp_session: &str, uri: &str) {
        self.end_where(|s| s.mcp_session == mcp_session && s.uri == uri);
    }

    /// Ends every subscription of `mcp_sessions`, in one pass: their stream,
    /// which all of a session's subscriptions share, is gone or stopped
    /// taking notifications.
    fn drop_streams(&self, mcp_sessions: &HashSet<String>) {
        self.end_where(|s| mcp_sessions.contains(&s.mcp_session));
    }

    /// Ends the subscriptions `ended` picks; a watch left with none stops.
    fn end_where(&self, ended: impl Fn(&Subscriber) -> bool) {
        let mut sessions = self.sessions();
        for watched in sessions.values_mut() {
            watched.subscribers.retain(|s| !ended(s));
        }
        sessions.retain(|_, w| !w.subscribers.is_empty());
    }

    /// Starts the hidden watch of `session` and the task that reads it.
    async fn watch(self: &Arc<Self>, session: &str) -> Watched {
        let conn_id = NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed);
        let info = ClientInfo {
            client_id: format!("mcp-subscriptions-{conn_id}"),
            client_name: "mcp subscriptions".to_string(),
            instance: self.hub.instance().to_string(),
            capabilities: Vec::new(),
            owner: None,
            connected_at: Some(now_millis()),
        };
        let config = self.hub.config();
        let handle = ClientHandle::new(
            info,
            conn_id,
            config.outbound_queue_len,
            config.outbound_queue_bytes,
        );
        let watch = self.hub.watch_session(session, handle.clone()).await;
        let me = Arc::downgrade(self);
        let name = session.to_string();
        let reader = tokio::spawn(async move {
            loop {
                let frame = poll_fn(|cx| {
                    let outbox = handle.outbox();
                    outbox.register(cx.waker());
                    match outbox.next_frame() {
                        Some(out) => {
                            outbox.dequeued(out.frame.len(), 1);
                            Poll::Ready(Some(out))
                        }
                        None if handle.close_reason().is_some() => Poll::Ready(None),
                        None => Poll::Pending,
                    }
                })
                .await;
                let Some(me) = me.upgrade() else {
                    return;
                };
                let Some(out) = frame else {
                    // Evicted (a burst it could not keep up with): the
                    // next subscribe starts a fresh watch.
                    tracing::warn!(session = %name, "mcp subscriptions: the watch ended");
                    me.sessions().remove(&name);
                    return;
                };
                if let Ok(event) = serde_json::from_slice::<Value>(out.frame.payload()) {
                    me.notify(&name, &event).await;
                }
            }
        });
        Watched {
            subscribers: Vec::new(),
            _watch: watch,
            reader: reader.abort_handle(),
        }
    }

    /// Tells every subscriber of a resource `event` changed; ends every
    /// subscription of an MCP session whose stream is gone or did not take
    /// the notification in time.
    async fn notify(&self, session: &str, event: &Value) {
        let due: Vec<(String, String, Peer<RoleServer>)> = {
            let sessions = self.sessions();
            let Some(watched) = sessions.get(session) else {
                return;
            };
            watched
                .subscribers
                .iter()
                .filter(|s| changes(&s.resource, event))
                .map(|s| (s.mcp_session.clone(), s.uri.clone(), s.peer.clone()))
                .collect()
        };
        let dropped: HashSet<String> = notify_all(due).await.into_iter().map(|(s, _)| s).collect();
        if !dropped.is_empty() {
            tracing::info!(
                session,
                mcp_sessions = dropped.len(),
                "mcp subscriptions: a stream is gone or did not take a notification in time; its subscriptions end"
            );
            self.drop_streams(&dropped);
        }
    }
}

/// Sends each `(mcp_session, uri, peer)` its notification, all at once,
/// each within [`NOTIFY_DEADLINE`]; returns those to unsubscribe (the
/// stream is gone, or did not take it in time).
async fn notify_all(due: Vec<(String, String, Peer<RoleServer>)>) -> Vec<(String, String)> {
    let sends = due.into_iter().map(|(mcp_session, uri, peer)| async move {
        let param = ResourceUpdatedNotificationParam::new(uri.clone());
        let sent = tokio::time::timeout(NOTIFY_DEADLINE, peer.notify_resource_updated(param)).await;
        let kept = matches!(sent, Ok(Ok(()))) && !peer.is_transport_closed();
        (!kept).then_some((mcp_session, uri))
    });
    futures_util::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

impl Call<'_> {
    /// `resources/subscribe`: the resource, authorized as for a read and
    /// named canonically (the contact as the session knows it), is watched
    /// for `mcp_session`, whose stream `peer` is.
    pub(super) async fn subscribe(
        &self,
        subscriptions: &Arc<Subscriptions>,
        uri: String,
        mcp_session: String,
        peer: Peer<RoleServer>,
    ) -> Result<(), HubError> {
        let Some(resource) = HubResource::parse(&uri) else {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                format!(
                    "no resource at `{}`",
                    uri.chars().take(200).collect::<String>()
                ),
            ));
        };
        let resource = match resource {
            HubResource::Conversation { session, contact } => {
                let history = self
                    .conversation(Some(session.clone()), &contact, Some(1))
                    .await?;
                HubResource::Conversation {
                    session,
                    contact: history.contact,
                }
            }
            HubResource::Contacts { session } => HubResource::Contacts {
                session: self
                    .existing_session(Some(session), SessionUse::Read)
                    .await?,
            },
            HubResource::Members { session } => HubResource::Members {
                session: self
                    .existing_session(Some(session), SessionUse::Read)
                    .await?,
            },
        };
        let session = resource.session().to_string();
        subscriptions
            .subscribe(&session, resource, uri, mcp_session, peer)
            .await
    }
}

/// Whether a session event changes `resource`.
fn changes(resource: &HubResource, event: &Value) -> bool {
    let kind = event["type"].as_str().unwrap_or_default();
    match resource {
        HubResource::Conversation { contact, .. } => {
            matches!(kind, "message_event" | "message_status")
                && event["contact"]
                    .as_str()
                    .is_some_and(|c| c.eq_ignore_ascii_case(contact))
        }
        HubResource::Contacts { .. } => kind == "contact_list_broadcast",
        HubResource::Members { .. } => {
            matches!(kind, "client_joined" | "client_left" | "agent_changed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ServerJsonRpcMessage;
    use rmcp::transport::Transport;
    use serde_json::json;
    use tokio::sync::mpsc;

    /// An MCP stream whose client reads what it is sent into `read`, or
    /// (`read` None) never reads it: a send then never completes.
    struct Stream {
        read: Option<mpsc::UnboundedSender<ServerJsonRpcMessage>>,
    }

    impl Transport<RoleServer> for Stream {
        type Error = std::io::Error;

        fn send(
            &mut self,
            item: ServerJsonRpcMessage,
        ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
            let read = self.read.clone();
            async move {
                match read {
                    Some(read) => {
                        let _ = read.send(item);
                        Ok(())
                    }
                    None => std::future::pending().await,
                }
            }
        }

        fn receive(
            &mut self,
        ) -> impl Future<Output = Option<rmcp::service::RxJsonRpcMessage<RoleServer>>> + Send
        {
            std::future::pending()
        }

        async fn close(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[derive(Clone)]
    struct Server;
    impl rmcp::ServerHandler for Server {}

    fn peer(read: Option<mpsc::UnboundedSender<ServerJsonRpcMessage>>) -> Peer<RoleServer> {
        let running = rmcp::service::serve_directly(Server, Stream { read }, None);
        let peer = running.peer().clone();
        // The service runs as long as the test.
        std::mem::forget(running);
        peer
    }

    /// A subscriber whose stream is no longer read neither holds up the
    /// others' notifications nor stays subscribed.
    #[tokio::test]
    async fn a_stream_no_longer_read_is_dropped_without_holding_up_the_others() {
        let (read, mut received) = mpsc::unbounded_channel();
        let due = vec![
            (
                "stalled".to_string(),
                "whatsapp://a".to_string(),
                peer(None),
            ),
            (
                "reader".to_string(),
                "whatsapp://a".to_string(),
                peer(Some(read)),
            ),
        ];
        let sending = tokio::spawn(notify_all(due));
        // Told while the stalled stream still has time left: not after it.
        let told = tokio::time::timeout(NOTIFY_DEADLINE / 2, received.recv())
            .await
            .expect("the reader is told without waiting for the stalled stream")
            .expect("a notification");
        let told = serde_json::to_value(&told).unwrap();
        assert_eq!(told["method"], "notifications/resources/updated", "{told}");
        assert_eq!(told["params"]["uri"], "whatsapp://a");
        let dropped = tokio::time::timeout(NOTIFY_DEADLINE * 3, sending)
            .await
            .expect("done once the deadline passed")
            .unwrap();
        assert_eq!(
            dropped,
            [("stalled".to_string(), "whatsapp://a".to_string())]
        );
    }

    #[test]
    fn events_change_the_resources_they_touch() {
        let john = HubResource::Conversation {
            session: "s".into(),
            contact: "John".into(),
        };
        let contacts = HubResource::Contacts {
            session: "s".into(),
        };
        let members = HubResource::Members {
            session: "s".into(),
        };
        let incoming = json!({"type": "message_event", "direction": "incoming", "contact": "john"});
        assert!(changes(&john, &incoming));
        assert!(!changes(
            &john,
            &json!({"type": "message_event", "contact": "Jane"})
        ));
        assert!(changes(
            &john,
            &json!({"type": "message_status", "contact": "John"})
        ));
        assert!(!changes(&contacts, &incoming));
        assert!(changes(
            &contacts,
            &json!({"type": "contact_list_broadcast"})
        ));
        assert!(changes(&members, &json!({"type": "client_left"})));
        assert!(!changes(&members, &json!({"type": "broadcast"})));
    }
}
