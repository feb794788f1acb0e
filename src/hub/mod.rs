//! The hub's core: shared state of one instance and the operations the
//! connection loop calls (join and leave a session, run a request, publish
//! an event, execute a command, route to an agent). Transport-agnostic:
//! nothing here knows about WebSockets.

pub mod agents;
pub mod client;
pub mod executor;
pub mod idempotency;
pub mod registry;
pub mod requests;
pub mod session;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ai::coordinator::AiCoordinator;
use crate::broker::{Broker, EventEnvelope, Inbound};
use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::protocol::{
    ClientInfo, Contact, HistoryEntry, HubError, MessageDirection, ServerEvent, now_millis,
};
use crate::store::SessionStore;
use crate::store::membership::Membership;
use crate::whatsapp::{IncomingMessage, WhatsAppConnector};

use agents::AgentRouter;
use registry::{ClientHandle, Outbound, Registry};

/// Everything one hub instance shares between its connections.
pub struct Hub {
    pub config: HubConfig,
    pub store: Arc<dyn SessionStore>,
    pub broker: Arc<dyn Broker>,
    pub membership: Arc<dyn Membership>,
    pub connector: Arc<dyn WhatsAppConnector>,
    pub ai: AiCoordinator,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub agents: AgentRouter,
    /// Cancelled when the hub starts draining.
    pub shutdown: CancellationToken,
    /// Every live WebSocket connection, so shutdown can wait for them.
    pub connections: TaskTracker,
    started: AtomicBool,
    publish_order: std::sync::Mutex<()>,
    /// Woken when this instance queued webhook events, so they are
    /// processed at once rather than at the next poll.
    pub webhook_wake: tokio::sync::Notify,
}

/// The pieces a hub is assembled from (memory or Redis, rules or Gemini...).
pub struct HubParts {
    pub config: HubConfig,
    pub store: Arc<dyn SessionStore>,
    pub broker: Arc<dyn Broker>,
    pub membership: Arc<dyn Membership>,
    pub connector: Arc<dyn WhatsAppConnector>,
    pub ai: AiCoordinator,
    pub metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(parts: HubParts) -> Arc<Hub> {
        Arc::new(Hub {
            config: parts.config,
            store: parts.store,
            broker: parts.broker,
            membership: parts.membership,
            connector: parts.connector,
            ai: parts.ai,
            metrics: parts.metrics,
            registry: Registry::default(),
            agents: AgentRouter::default(),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            started: AtomicBool::new(false),
            publish_order: std::sync::Mutex::new(()),
            webhook_wake: tokio::sync::Notify::new(),
        })
    }

    pub fn instance(&self) -> &str {
        &self.config.instance_id
    }

    /// Ready to take new clients: listening, backend reachable, not draining.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire)
            && !self.shutdown.is_cancelled()
            && self.broker.is_healthy()
            && self.membership.is_healthy()
            // Not ready until clients are re-announced after a reconnect.
            && self.membership.synced_epoch() == self.broker.connection_epoch()
    }

    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Serializes `event` once and delivers it to every client of the
    /// session on every instance (but `except`).
    pub fn publish(
        &self,
        session: &str,
        event: &ServerEvent<'_>,
        kind: &'static str,
        except: Option<&str>,
    ) {
        let produced_at = now_millis();
        let frame = event.to_frame();
        let out = Outbound {
            frame: frame.clone(),
            kind,
            produced_at,
        };
        // Local delivery and the hand-off to other instances happen under
        // one short lock, so every instance sees this instance's events in
        // the same order. Nothing in here awaits.
        let _order = self.publish_order.lock().unwrap_or_else(|p| p.into_inner());
        self.registry.deliver(session, &out, except, &self.metrics);
        self.broker.publish_event(EventEnvelope {
            session: session.to_string(),
            origin: self.instance().to_string(),
            kind: kind.to_string(),
            produced_at,
            except: except.map(str::to_string),
            frame: frame.as_str().to_string(),
        });
    }

    /// Queues a frame for one client only (a reply, not a session event).
    pub fn send_direct(&self, handle: &ClientHandle, event: &ServerEvent<'_>, kind: &'static str) {
        handle.send(
            Outbound {
                frame: event.to_frame(),
                kind,
                produced_at: 0,
            },
            &self.metrics,
        );
    }

    /// Answers one client with `error`, counting the code.
    pub fn reply_error(&self, handle: &ClientHandle, err: &HubError, request_id: Option<&str>) {
        self.metrics.error(err.code);
        handle.send(
            Outbound {
                frame: ServerEvent::error(err, request_id),
                kind: "error",
                produced_at: 0,
            },
            &self.metrics,
        );
    }

    /// The session's contacts, seeding them from the connector when the
    /// store has none (a new session, or a Redis that lost its data).
    pub async fn session_contacts(&self, session: &str) -> Result<Vec<Contact>, HubError> {
        let contacts = self.store.contacts(session).await?;
        if !contacts.is_empty() {
            return Ok(contacts);
        }
        self.store
            .seed_contacts(session, &self.connector.initial_contacts())
            .await?;
        self.store.contacts(session).await
    }

    pub fn publish_contacts(&self, session: &str, contacts: &[Contact]) {
        let event = ServerEvent::ContactListBroadcast {
            contacts,
            total_count: contacts.len(),
            timestamp: now_millis(),
        };
        self.publish(session, &event, "contact_list_broadcast", None);
    }

    /// Records a message in the session history and tells every client.
    pub async fn record_and_publish(
        &self,
        session: &str,
        entry: &HistoryEntry,
    ) -> Result<(), HubError> {
        self.store.record_message(session, entry).await?;
        self.publish(
            session,
            &ServerEvent::MessageEvent { entry },
            "message_event",
            None,
        );
        Ok(())
    }

    pub async fn record_incoming(&self, incoming: IncomingMessage) -> Result<(), HubError> {
        let entry = HistoryEntry {
            direction: MessageDirection::Incoming,
            contact: incoming.contact.clone(),
            message: incoming.message,
            message_id: format!("in.{}", uuid::Uuid::new_v4().simple()),
            timestamp: now_millis(),
            by: incoming.contact,
            executed_by: Some(incoming.executed_by.to_string()),
            status: None,
            status_error: None,
        };
        self.record_and_publish(&incoming.session, &entry).await
    }

    /// Tells the session who its agent is now (None: the connector).
    pub fn publish_agent_changed(&self, session: &str, client_id: Option<&str>) {
        let event = ServerEvent::AgentChanged {
            client_id,
            instance: client_id.map(|_| self.instance()),
            timestamp: now_millis(),
        };
        self.publish(session, &event, "agent_changed", None);
    }

    pub fn publish_client_event(&self, session: &str, client: &ClientInfo, joined: bool) {
        let timestamp = now_millis();
        let (event, kind) = if joined {
            (
                ServerEvent::ClientJoined { client, timestamp },
                "client_joined",
            )
        } else {
            (ServerEvent::ClientLeft { client, timestamp }, "client_left")
        };
        self.publish(session, &event, kind, Some(&client.client_id));
    }

    /// Handles what other instances (or the local loop-back) send.
    pub async fn handle_inbound(self: &Arc<Self>, inbound: Inbound) {
        match inbound {
            Inbound::Event(env) => {
                if env.origin == self.instance() {
                    return;
                }
                let out = Outbound {
                    frame: env.frame.into(),
                    kind: static_kind(&env.kind),
                    produced_at: env.produced_at,
                };
                self.registry
                    .deliver(&env.session, &out, env.except.as_deref(), &self.metrics);
            }
            Inbound::Instance(msg) => self.handle_instance_message(msg).await,
        }
    }

    /// Runs until shutdown: broker inbound and connector incoming messages.
    pub fn spawn_background(
        self: &Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut incoming: mpsc::Receiver<IncomingMessage>,
    ) {
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                hub.handle_inbound(msg).await;
            }
        });
        webhooks::spawn_drain(self.clone());
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = incoming.recv().await {
                if let Err(e) = hub.record_incoming(msg).await {
                    tracing::warn!(error = %e, "could not record an incoming message");
                }
            }
        });
    }
}

/// Maps a message type received from another instance to a metrics label.
fn static_kind(kind: &str) -> &'static str {
    match kind {
        "contact_list_broadcast" => "contact_list_broadcast",
        "message_event" => "message_event",
        "message_status" => "message_status",
        "client_joined" => "client_joined",
        "client_left" => "client_left",
        "broadcast" => "broadcast",
        "agent_changed" => "agent_changed",
        _ => "other",
    }
}
