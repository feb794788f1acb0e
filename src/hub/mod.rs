//! The hub's core: the one owner of an instance's shared state ([`Hub`])
//! and the operations every door calls (join and leave a session, run a
//! request or command, broadcast, publish an event, read a session's
//! summary, route to an agent). Transport-agnostic: nothing here knows
//! about WebSockets or HTTP.

pub mod agents;
pub mod approvals;
pub mod client;
mod departures;
pub mod door;
pub mod executor;
mod fanout;
pub mod idempotency;
pub mod media;
pub mod monitor;
mod position;
mod presence;
mod queries;
mod recent;
pub mod registry;
pub mod requests;
pub mod session;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ai::coordinator::AiCoordinator;
use crate::auth::Authenticator;
use crate::broker::{
    Broker, EventEnvelope, EventHeader, Inbound, LoggedEvent, Published, ReadBudget,
};
use crate::config::{HubConfig, SessionCreation};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::protocol::{
    ClientInfo, Contact, ErrorCode, HistoryEntry, HubError, MessageDirection, ServerEvent,
    WhatsAppCommand, now_millis,
};
use crate::store::SessionStore;
use crate::whatsapp::{IncomingMessage, WhatsAppConnector};

use crate::outbox::Outbound;
use agents::AgentRouter;
pub use queries::{EventsPage, SessionSummary};
use registry::{ClientHandle, Delivery, Registry};
pub use requests::Broadcaster;

/// Whether a REST or MCP request reads its session or writes to it
/// ([`Hub::require_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionUse {
    Read,
    Write,
}

impl SessionUse {
    /// `list_contacts`, `get_history` and `list_templates` read; sends and
    /// read receipts write.
    pub fn of(command: &WhatsAppCommand) -> SessionUse {
        match command {
            WhatsAppCommand::ListContacts
            | WhatsAppCommand::GetHistory { .. }
            | WhatsAppCommand::ListTemplates => SessionUse::Read,
            // A read receipt is visible to the contact: it acts for the account.
            WhatsAppCommand::Send { .. }
            | WhatsAppCommand::SendTemplate { .. }
            | WhatsAppCommand::MarkRead { .. } => SessionUse::Write,
        }
    }
}

/// Everything one hub instance shares between its connections: the one
/// owner of its state (like mini-redis's `Db`). The fields are private;
/// the server and the cluster loop read configuration, metrics and the
/// shutdown token through accessors and do everything else through the
/// hub's operations, so every door (WebSocket, REST, MCP, admin) runs the
/// same code.
pub struct Hub {
    config: HubConfig,
    store: Arc<dyn SessionStore>,
    broker: Arc<dyn Broker>,
    membership: Arc<dyn Membership>,
    connector: Arc<dyn WhatsAppConnector>,
    ai: AiCoordinator,
    metrics: Arc<Metrics>,
    /// Verifies tokens (or lets everyone in with auth off).
    auth: Arc<Authenticator>,
    registry: Registry,
    agents: AgentRouter,
    /// Cancelled when the hub starts draining.
    shutdown: CancellationToken,
    /// Every live WebSocket connection, so shutdown can wait for them.
    connections: TaskTracker,
    started: AtomicBool,
    /// The broker connection epoch whose missed events were delivered.
    caught_up: AtomicU64,
    /// Woken when this instance queued webhook events, so they are
    /// processed at once rather than at the next poll.
    webhook_wake: tokio::sync::Notify,
    /// This instance's admin feeds (the dashboard).
    monitor: monitor::MonitorFeeds,
    /// Sends held for a person's approval, and the callers waiting here.
    approvals: approvals::ApprovalDesk,
    /// When this hub was created (ms since epoch), for its uptime.
    started_at: u64,
    /// The dispatcher's channel, to queue a [`Inbound::Barrier`] at
    /// shutdown (weak: the brokers own it).
    dispatch: std::sync::OnceLock<mpsc::WeakSender<Inbound>>,
    /// Media references, this instance's media cache and its downloads.
    media: media::MediaDesk,
    /// Departures the store did not take yet.
    departures: departures::Departures,
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
    pub auth: Arc<Authenticator>,
    pub approvals: Arc<dyn crate::approvals::ApprovalStore>,
}

impl Hub {
    pub fn new(parts: HubParts) -> Arc<Hub> {
        // Known label values start at 0, so dashboards see "0 closed for
        // this reason" rather than no data.
        for reason in crate::protocol::CloseReason::ALL {
            parts
                .metrics
                .connections_closed
                .with_label_values(&[reason.label()]);
        }
        let broker = parts.broker.clone();
        let registry = Registry::with_interest(Box::new(move |session, interested| {
            broker.interest(session, interested)
        }));
        let media = media::MediaDesk::new(&parts.config);
        let departures = departures::Departures::new(parts.metrics.departures_pending.clone());
        Arc::new(Hub {
            departures,
            media,
            config: parts.config,
            store: parts.store,
            broker: parts.broker,
            membership: parts.membership,
            connector: parts.connector,
            ai: parts.ai,
            metrics: parts.metrics,
            auth: parts.auth,
            registry,
            agents: AgentRouter::default(),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            started: AtomicBool::new(false),
            caught_up: AtomicU64::new(0),
            webhook_wake: tokio::sync::Notify::new(),
            monitor: monitor::MonitorFeeds::default(),
            approvals: approvals::ApprovalDesk::new(parts.approvals),
            started_at: now_millis(),
            dispatch: std::sync::OnceLock::new(),
        })
    }

    pub fn instance(&self) -> &str {
        &self.config.instance_id
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Verifies tokens (or lets everyone in with auth off).
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// Cancelled when the hub starts draining (cancel it to drain).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Tracks every live WebSocket connection, so shutdown can wait for them.
    pub fn connections(&self) -> &TaskTracker {
        &self.connections
    }

    /// Clients registered on this instance.
    pub fn local_client_count(&self) -> usize {
        self.registry.client_count()
    }

    /// Whether the broker reaches its backend.
    pub fn broker_healthy(&self) -> bool {
        self.broker.is_healthy()
    }

    /// The broker's connection epoch (see [`Broker::connection_epoch`]).
    pub fn broker_epoch(&self) -> u64 {
        self.broker.connection_epoch()
    }

    /// Flushes the broker's queued events and stops it: at shutdown, once
    /// every connection closed, so their `client_left` still goes out.
    pub async fn close_broker(&self) {
        self.broker.close().await;
    }

    /// Ready to take new clients: listening, backend reachable, not draining.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire)
            && !self.shutdown.is_cancelled()
            && self.broker.is_healthy()
            && self.membership.is_healthy()
            // Not ready until clients are re-announced after a reconnect.
            && self.membership.synced_epoch() == self.broker.connection_epoch()
            // ...and until the events missed meanwhile were read from the log.
            && self.caught_up.load(Ordering::Acquire) == self.broker.connection_epoch()
    }

    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Serializes `event` once and hands it to the session's log, which
    /// gives it its offset and delivers it to every client of the session
    /// on every instance (but `except`), this one included, in offset
    /// order. Fails (`store_unavailable`) when the log is unreachable: then
    /// no one gets the event.
    pub fn publish(
        &self,
        session: &str,
        event: &ServerEvent<'_>,
        except: Option<&str>,
    ) -> Result<Published, HubError> {
        self.publish_presence(session, event, except, None)
    }

    /// [`Self::publish`] of a `client_joined`/`client_left` announcing the
    /// presence change of version `presence` (see
    /// [`crate::store::PresenceChange`]).
    fn publish_presence(
        &self,
        session: &str,
        event: &ServerEvent<'_>,
        except: Option<&str>,
        presence: Option<u64>,
    ) -> Result<Published, HubError> {
        // With traces on, a span whose context the event carries.
        let span = if crate::telemetry::tracing_enabled() {
            tracing::info_span!(
                "publish",
                session,
                kind = event.kind(),
                otel.kind = "producer"
            )
        } else {
            tracing::Span::none()
        };
        let _entered = span.enter();
        let published = self.broker.publish_event(EventEnvelope {
            header: EventHeader {
                session: session.to_string(),
                origin: self.instance().to_string(),
                kind: event.kind().to_string(),
                produced_at: now_millis(),
                except: except.map(str::to_string),
                presence,
                traceparent: crate::telemetry::current_traceparent(),
            },
            frame: event.to_json(),
        });
        if let Err(e) = &published {
            self.metrics.error(e.code);
        }
        published
    }

    /// [`Self::publish`] for announcements nobody waits on: a failure is
    /// logged (the event reached no one, so no one saw half of it).
    pub fn announce(&self, session: &str, event: &ServerEvent<'_>, except: Option<&str>) {
        if let Err(error) = self.publish(session, event, except) {
            tracing::warn!(session, kind = event.kind(), %error, "event not published");
        }
    }

    /// [`Self::announce`] for announcements that must not be lost to a
    /// publisher that is still reconnecting (re-announcing presence after a
    /// Redis outage): retries with backoff for a few seconds while the log
    /// is unreachable. `presence`: the version of a presence event.
    pub async fn announce_retrying(
        &self,
        session: &str,
        event: &ServerEvent<'_>,
        except: Option<&str>,
        presence: Option<u64>,
    ) {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(50))
            .with_max_delay(std::time::Duration::from_secs(1))
            .with_max_times(12)
            .build();
        loop {
            match self.publish_presence(session, event, except, presence) {
                Ok(_) => return,
                Err(error) => match delays.next() {
                    Some(delay) if error.code == crate::protocol::ErrorCode::StoreUnavailable => {
                        tokio::time::sleep(delay).await
                    }
                    _ => {
                        tracing::warn!(session, kind = event.kind(), %error, "event not published");
                        return;
                    }
                },
            }
        }
    }

    /// [`Self::publish`], then waits until this instance delivered the event
    /// to its own clients: a request's answer then follows the events it
    /// caused, as it did before the log (docs/protocol.md). Bounded: a
    /// delivery that takes longer than a Redis command's timeout is not
    /// waited for.
    pub async fn publish_delivered(
        &self,
        session: &str,
        event: &ServerEvent<'_>,
        except: Option<&str>,
    ) -> Result<(), HubError> {
        let published = self.publish(session, event, except)?;
        let wait = async {
            let Ok((epoch, offset)) = published.await else {
                return;
            };
            self.registry.delivered(session, &epoch, offset).await;
        };
        let _ = tokio::time::timeout(crate::redis::COMMAND_TIMEOUT, wait).await;
        Ok(())
    }

    /// Queues a frame for one client only (a reply, not a session event).
    pub fn send_to(&self, handle: &ClientHandle, event: &ServerEvent<'_>) {
        handle.send(Outbound::event(event), &self.metrics);
    }

    /// Answers one client with `error`, counting the code.
    pub fn reply_error(&self, handle: &ClientHandle, err: &HubError, request_id: Option<&str>) {
        self.metrics.error(err.code);
        handle.send(
            Outbound::event(&ServerEvent::error(err, request_id)),
            &self.metrics,
        );
    }

    /// The session rule of REST and MCP requests (docs/protocol.md §3): a
    /// session exists while the store holds anything of it (contacts,
    /// history, a client in presence, an agent). A read of an unknown
    /// session is `session_not_found` and creates nothing; so is a write,
    /// unless SESSION_CREATION=any_write, which creates the session first
    /// (its contacts seeded, as a registration would). A WebSocket
    /// `register` always creates its session; webhooks create the account's.
    pub async fn require_session(&self, session: &str, usage: SessionUse) -> Result<(), HubError> {
        if self.store.exists(session).await? {
            return Ok(());
        }
        match (usage, self.config.limits.session_creation) {
            (SessionUse::Write, SessionCreation::AnyWrite) => {
                self.store
                    .seed_contacts(session, &self.connector.initial_contacts())
                    .await
            }
            (SessionUse::Read, _) => Err(HubError::new(
                ErrorCode::SessionNotFound,
                format!("no session `{session}` (a session exists once a client registered in it)"),
            )),
            (SessionUse::Write, SessionCreation::Register) => Err(HubError::new(
                ErrorCode::SessionNotFound,
                format!(
                    "no session `{session}`: a session is created by a client registering in it (SESSION_CREATION=register)"
                ),
            )),
        }
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
        self.announce(session, &event, None);
    }

    /// [`Self::publish_contacts`] for the agent that sent them: answered
    /// after it got the event.
    pub async fn publish_contacts_delivered(
        &self,
        session: &str,
        contacts: &[Contact],
    ) -> Result<(), HubError> {
        let event = ServerEvent::ContactListBroadcast {
            contacts,
            total_count: contacts.len(),
            timestamp: now_millis(),
        };
        self.publish_delivered(session, &event, None).await
    }

    /// Records a message in the session history and tells every client.
    pub async fn record_and_publish(
        &self,
        session: &str,
        entry: &HistoryEntry,
    ) -> Result<(), HubError> {
        self.store.record_message(session, entry).await?;
        self.publish_delivered(session, &ServerEvent::MessageEvent { entry }, None)
            .await
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
            content: Default::default(),
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
        self.announce(session, &event, None);
        self.publish_monitor(&monitor::MonitorEvent::Agent {
            session,
            client_id,
            timestamp: now_millis(),
        });
    }

    /// `client_joined` again for a client Redis lost, back in presence at
    /// `version` (see [`Self::announce_retrying`]).
    async fn reannounce_client(&self, session: &str, client: &ClientInfo, version: u64) {
        let event = ServerEvent::ClientJoined {
            client,
            timestamp: now_millis(),
        };
        self.announce_retrying(session, &event, Some(&client.client_id), Some(version))
            .await;
    }

    /// `agent_changed` again for an agent role re-claimed after Redis lost it.
    async fn reannounce_agent(&self, session: &str, client_id: &str) {
        let event = ServerEvent::AgentChanged {
            client_id: Some(client_id),
            instance: Some(self.instance()),
            timestamp: now_millis(),
        };
        self.announce_retrying(session, &event, None, None).await;
    }

    /// `client_joined` (`joined`) or `client_left` about `client`, for the
    /// presence change of `version`.
    pub fn publish_client_event(
        &self,
        session: &str,
        client: &ClientInfo,
        joined: bool,
        version: u64,
    ) {
        let timestamp = now_millis();
        let event = if joined {
            ServerEvent::ClientJoined { client, timestamp }
        } else {
            ServerEvent::ClientLeft { client, timestamp }
        };
        let published =
            self.publish_presence(session, &event, Some(&client.client_id), Some(version));
        if let Err(error) = published {
            tracing::warn!(session, kind = event.kind(), %error, "event not published");
        }
        self.publish_monitor(&monitor::MonitorEvent::Presence {
            session,
            client,
            joined,
            timestamp,
        });
    }

    /// Handles what the broker hands over: logged events (in offset
    /// order per session), resubscriptions, instance messages. Runs on one
    /// task, so events are delivered in the order the log gave them.
    pub async fn handle_inbound(self: &Arc<Self>, inbound: Inbound) {
        match inbound {
            Inbound::Event(event) => self.deliver_event(event).await,
            Inbound::Resubscribed(epoch) => {
                // Events published while the subscription was down are only
                // in the log: deliver them before anything live.
                for session in self.registry.sessions() {
                    self.catch_up(&session).await;
                }
                self.caught_up.store(epoch, Ordering::Release);
            }
            // The channel's events before the confirmation were not
            // received: deliver them from the log (duplicates are dropped
            // by offset).
            Inbound::Subscribed(session) => self.catch_up(&session).await,
            Inbound::Instance(msg) => self.handle_instance_message(msg).await,
            Inbound::Monitor(text) => self.monitor.relay(&text, &self.metrics),
            Inbound::Barrier(done) => {
                self.registry.settled().await;
                let _ = done.send(());
            }
        }
    }

    /// [`Self::deliver_logged_event`], in a span continuing the publisher's
    /// trace when the event carries one (traces on).
    async fn deliver_event(&self, event: LoggedEvent) {
        use tracing::Instrument;
        let span = self.delivery_span(&event);
        self.deliver_logged_event(event).instrument(span).await
    }

    /// With traces on, the span of this instance's delivery of `event`: a
    /// child of the span that published it, whichever instance that was.
    fn delivery_span(&self, event: &LoggedEvent) -> tracing::Span {
        match &event.header.traceparent {
            Some(parent) if crate::telemetry::tracing_enabled() => {
                let span = tracing::info_span!(
                    "deliver",
                    session = %event.header.session,
                    kind = %event.header.kind,
                    offset = event.offset,
                    instance = self.instance(),
                    otel.kind = "consumer"
                );
                crate::telemetry::set_traceparent(&span, parent);
                span
            }
            _ => tracing::Span::none(),
        }
    }

    /// Delivers one logged event to the local clients, first filling any
    /// gap before it from the log (an offset never skipped, never twice).
    async fn deliver_logged_event(&self, event: LoggedEvent) {
        let out = logged_outbound(&event);
        let session = &event.header.session;
        let delivery = self
            .registry
            .deliver_logged(&event, &out, false, &self.metrics);
        if let Delivery::Gap { after } = delivery {
            let filled = self.deliver_from_log(session, after, Some(&event.epoch), event.offset);
            if let Err(gap) = filled.await {
                tracing::warn!(%session, after, offset = event.offset, "{gap}; delivering past the gap");
            }
            self.registry
                .deliver_logged(&event, &out, true, &self.metrics);
        }
        // A large session's task queues its frames: wait if it is behind.
        self.registry.fanout_room(session).await;
    }

    /// Delivers what the session's log holds past this instance's last
    /// delivered offset (after a (re)subscription).
    async fn catch_up(&self, session: &str) {
        let Some(position) = self.registry.position(session) else {
            return;
        };
        let (epoch, after) = match self.broker.log_head(session).await {
            // The log was lost and began again: all of the new one is due.
            Ok(head) if head.epoch != position.epoch => (head.epoch, 0),
            Ok(head) => (head.epoch, position.offset),
            Err(error) => {
                tracing::warn!(session, %error, "cannot read the log to catch up");
                return;
            }
        };
        // Pinned to that log: should it begin again meanwhile, its offsets
        // are not this one's.
        if let Err(gap) = self
            .deliver_from_log(session, after, Some(&epoch), u64::MAX)
            .await
        {
            tracing::warn!(session, "{gap}; missed events are not delivered");
        }
    }

    /// Delivers the session's logged events after `after` and before
    /// `until` to the local clients, read a page (EVENTS_PAGE_MAX_BYTES /
    /// _EVENTS) at a time, so a long backlog is never held whole. With
    /// `epoch`, only from that log. Err: why some could not be read.
    async fn deliver_from_log(
        &self,
        session: &str,
        mut after: u64,
        epoch: Option<&str>,
        until: u64,
    ) -> Result<(), String> {
        let budget = self.events_page_budget();
        while after + 1 < until {
            let read = self
                .broker
                .read_log(session, Some(after), budget)
                .await
                .map_err(|e| format!("cannot read the log: {e}"))?;
            if epoch.is_some_and(|epoch| epoch != read.epoch) {
                return Err("the log began again".into());
            }
            let events = read
                .events
                .ok_or_else(|| "events missing from the log".to_string())?;
            for event in events.iter().filter(|e| e.offset < until) {
                self.delivery_span(event).in_scope(|| {
                    let out = logged_outbound(event);
                    self.registry
                        .deliver_logged(event, &out, true, &self.metrics)
                });
                self.registry.fanout_room(session).await;
            }
            match events.last() {
                Some(last) if read.more => after = last.offset,
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// One page of a session's log (EVENTS_PAGE_MAX_BYTES, _EVENTS).
    fn events_page_budget(&self) -> ReadBudget {
        ReadBudget {
            max_bytes: self.config.limits.events_page_max_bytes,
            max_events: self.config.limits.events_page_max_events,
        }
    }

    /// Waits (at most `bound`) until every event the dispatcher had been
    /// handed is delivered to the local clients' queues: called at
    /// shutdown before the connections close, so an event acknowledged to
    /// its producer is not dropped on its way to a local recipient.
    pub async fn settle_dispatch(&self, bound: std::time::Duration) {
        let Some(tx) = self.dispatch.get().and_then(mpsc::WeakSender::upgrade) else {
            return;
        };
        let (done, settled) = tokio::sync::oneshot::channel();
        let broker = self.broker.clone();
        let _ = tokio::time::timeout(bound, async move {
            broker.settle().await;
            if tx.send(Inbound::Barrier(done)).await.is_ok() {
                drop(tx);
                let _ = settled.await;
            }
        })
        .await;
    }

    /// Runs until shutdown: broker inbound and connector incoming messages.
    /// `dispatch` is the sending side of `inbound` (kept weakly, for
    /// [`Self::settle_dispatch`]).
    pub fn spawn_background(
        self: &Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        dispatch: mpsc::WeakSender<Inbound>,
        mut incoming: mpsc::Receiver<IncomingMessage>,
    ) {
        let _ = self.dispatch.set(dispatch);
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                hub.handle_inbound(msg).await;
            }
        });
        webhooks::spawn_drain(self.clone());
        self.spawn_idle_sweep();
        self.spawn_approval_sweep();
        self.spawn_departure_retries();
        self.spawn_monitor();
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

/// Most sessions one idle sweep removes: its cost per tick is bounded.
const IDLE_SWEEP_BATCH: usize = 256;

impl Hub {
    /// Removes idle sessions until shutdown (SESSION_IDLE_TTL_MS,
    /// docs/protocol.md §3): four times per idle period, at most once a
    /// minute, each tick at most [`IDLE_SWEEP_BATCH`] sessions. Every
    /// instance of a cluster sweeps; the store's removal is atomic per
    /// session, so a session is removed (and counted) once.
    fn spawn_idle_sweep(self: &Arc<Self>) {
        let idle = self.config.limits.session_idle_ttl;
        let period = (idle / 4).clamp(
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(60),
        );
        self.every(period, move |hub| async move {
            match hub.store.expire_idle(idle, IDLE_SWEEP_BATCH).await {
                Ok(removed) => {
                    for session in removed {
                        hub.broker.forget_log(&session);
                        hub.metrics.shed(crate::metrics::Shed::SessionIdleExpired);
                        tracing::info!(session, "idle session removed");
                    }
                }
                Err(error) => tracing::debug!(%error, "idle sweep failed"),
            }
        });
    }

    /// Runs `work` every `period` until shutdown, a tick late rather than
    /// in bursts when one run takes longer (the sweeps).
    pub(super) fn every<F, Fut>(self: &Arc<Self>, period: std::time::Duration, work: F)
    where
        F: Fn(Arc<Hub>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = hub.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                work(hub.clone()).await;
            }
        });
    }
}

/// The queued form of a logged event: its frame shared by every recipient.
pub(crate) fn logged_outbound(event: &LoggedEvent) -> Outbound {
    Outbound {
        frame: event.frame.as_str().into(),
        kind: static_kind(&event.header.kind),
        produced_at: event.header.produced_at,
    }
}

/// Maps a message type received from another instance to a metrics label
/// (`other`: a kind this build does not know).
pub(crate) fn static_kind(kind: &str) -> &'static str {
    let kinds = <ServerEvent<'_> as strum::VariantNames>::VARIANTS;
    kinds
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}
