//! The session event log and the bus between hub instances.
//!
//! The broker owns each session's event log: it gives every published event
//! its offset (+1 per event per session) and the log's epoch, keeps the last
//! `SESSION_LOG_LEN` events for `SESSION_LOG_TTL_MS`, and hands the logged
//! event back to *every* instance (the publishing one included) through the
//! hub's [`Inbound`] channel, in offset order. [`local::LocalBroker`] is the
//! standalone log (an in-memory ring per session, epoch random per process);
//! `redis::RedisBroker` keeps the log in Redis and carries events over
//! pub/sub, assigning, logging and publishing in one Lua script per event,
//! on one channel per session: an instance only receives the events of the
//! sessions it has local subscribers of ([`Broker::interest`]).
//!
//! Beside the logs, the bus carries point-to-point [`InstanceMessage`]s and
//! a cluster-wide monitor channel for the admin dashboard (not logged).

pub mod local;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::HubError;

/// What the log keeps of a session event besides its position and frame:
/// the fields of a log entry's header line, the same before the event is
/// logged ([`EventEnvelope`]) and after ([`LoggedEvent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeader {
    pub session: String,
    /// The instance that published it.
    pub origin: String,
    /// Message type, for metrics.
    pub kind: String,
    /// When the producer created the event (ms since epoch), for latency.
    pub produced_at: u64,
    /// A client that must not receive it (the producer itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
    /// A `client_joined`/`client_left`: the presence version of the change
    /// it announces (the store's `PresenceChange`). A client whose member
    /// list is as of this version or a later one is not sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<u64>,
    /// The W3C `traceparent` of the span that published it (traces on):
    /// every instance's delivery continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A session event on its way to the log: already serialized (without its
/// offset, which the log assigns).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventEnvelope {
    #[serde(flatten)]
    pub header: EventHeader,
    pub frame: String,
}

impl EventEnvelope {
    /// The event as logged at `offset` of the log `epoch`: its frame with
    /// the position in front.
    pub fn logged(self, offset: u64, epoch: String) -> LoggedEvent {
        let frame = positioned(offset, &epoch, &self.frame);
        LoggedEvent {
            offset,
            epoch,
            header: self.header,
            frame,
        }
    }

    /// The event's log entry ([`LoggedEvent::to_entry`]) without the
    /// position, which only the log can assign: the header line and the
    /// frame, each cut after its `{"offset":N,"epoch":"E",`. The Redis
    /// append script puts the position back in front of both, so the entry
    /// it logs is the one Rust writes. None: the entry did not start with
    /// the position on both lines.
    pub fn entry_without_position(self) -> Option<(String, String)> {
        let entry = self.logged(0, String::new()).to_entry().ok()?;
        let position = positioned(0, "", "");
        let (header, frame) = entry.split_once('\n')?;
        Some((
            header.strip_prefix(&position)?.to_string(),
            frame.strip_prefix(&position)?.to_string(),
        ))
    }
}

/// `{"offset":N,"epoch":"E",` + `object` without its opening brace: the
/// position in front of a logged event's frame, written as serde writes
/// it in front of the header line. Epochs are hex tokens made by the hub,
/// so they need no escaping.
fn positioned(offset: u64, epoch: &str, object: &str) -> String {
    let rest = object.strip_prefix('{').unwrap_or(object);
    format!("{{\"offset\":{offset},\"epoch\":\"{epoch}\",{rest}")
}

/// A session event as the log holds it: its position, and the frame every
/// recipient gets (`{"offset":N,"epoch":"E",...}`), serialized once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub offset: u64,
    pub epoch: String,
    #[serde(flatten)]
    pub header: EventHeader,
    /// Not part of the header on the wire: the text after the header line.
    #[serde(skip)]
    pub frame: String,
}

impl LoggedEvent {
    /// The log's and pub/sub's form, the one writer of it: a JSON header
    /// line (offset, epoch, then the [`EventHeader`]), `\n`, the frame.
    /// Redis's append script writes the same bytes (see
    /// [`EventEnvelope::entry_without_position`]).
    pub fn to_entry(&self) -> serde_json::Result<String> {
        let mut entry = serde_json::to_string(self)?;
        entry.push('\n');
        entry.push_str(&self.frame);
        Ok(entry)
    }

    /// Parses [`Self::to_entry`]'s form (from the log or pub/sub).
    pub fn parse(text: &str) -> Option<LoggedEvent> {
        let (header, frame) = text.split_once('\n')?;
        let mut event: LoggedEvent = serde_json::from_str(header).ok()?;
        event.frame = frame.to_string();
        Some(event)
    }
}

/// Resolves with the event's position once it is in the log (dropped
/// unanswered if that cannot be known, e.g. a retried publish that had
/// already logged it).
pub type Published = tokio::sync::oneshot::Receiver<(String, u64)>;

/// What a read of a session's log found.
#[derive(Debug, Clone)]
pub struct LogRead {
    pub epoch: String,
    /// The offset of the session's latest event (0: none yet).
    pub head: u64,
    /// The events after the requested offset, oldest first, as many as the
    /// read's [`ReadBudget`] allows; `None` when they are not all in the
    /// log any more (trimmed, older than the TTL, or the offset is not from
    /// this log's history).
    pub events: Option<Vec<LoggedEvent>>,
    /// Whether events after the last one given were left for a next read
    /// (the budget was reached before the head).
    pub more: bool,
}

impl LogRead {
    /// A read's answer from what [`replay_window`] found (None: the events
    /// after the offset are not all kept).
    pub fn new(epoch: String, head: u64, window: Option<(Vec<LoggedEvent>, bool)>) -> Self {
        let (events, more) = match window {
            Some((events, more)) => (Some(events), more),
            None => (None, false),
        };
        LogRead {
            epoch,
            head,
            events,
            more,
        }
    }
}

/// How much one read of a log may return: it stops before the event that
/// would pass either bound (always giving at least one event), so a read
/// costs at most this much memory whatever the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBudget {
    /// Bytes of event frames.
    pub max_bytes: usize,
    pub max_events: usize,
}

impl ReadBudget {
    /// For a read of the head alone (no `after`).
    pub const HEAD_ONLY: ReadBudget = ReadBudget {
        max_bytes: 0,
        max_events: 0,
    };

    /// Whether one more event of `frame_bytes` passes the budget, after
    /// `events` events of `bytes` (the first event always fits).
    pub fn exceeded_by(&self, events: usize, bytes: usize, frame_bytes: usize) -> bool {
        events >= self.max_events || (events > 0 && bytes + frame_bytes > self.max_bytes)
    }
}

/// Which events after `after` a log with these bounds can still replay,
/// within `budget`. `kept` are the logged events (oldest first; consumed
/// lazily, only up to the budget), `head` the latest offset, `len`/`ttl_ms`
/// the retention. Shared by both logs, so both answer alike. Returns the
/// events and whether more are left after them.
pub fn replay_window(
    kept: impl IntoIterator<Item = LoggedEvent>,
    head: u64,
    after: u64,
    retention: (u64, u64),
    budget: ReadBudget,
    now: u64,
) -> Option<(Vec<LoggedEvent>, bool)> {
    let (len, ttl_ms) = retention;
    if after > head {
        return None;
    }
    if after == head {
        return Some((Vec::new(), false));
    }
    // The oldest offset still promised: the last `len` events.
    if after + 1 + len <= head {
        return None;
    }
    let mut events: Vec<LoggedEvent> = Vec::new();
    let mut bytes = 0;
    let mut more = false;
    for e in kept.into_iter().filter(|e| e.offset > after) {
        if budget.exceeded_by(events.len(), bytes, e.frame.len()) {
            more = true;
            break;
        }
        // Contiguous from `after + 1`, or the log lost some.
        if e.offset != after + 1 + events.len() as u64 {
            return None;
        }
        bytes += e.frame.len();
        events.push(e);
    }
    let first = events.first()?;
    if now.saturating_sub(first.header.produced_at) > ttl_ms
        || (!more && events.last().map(|e| e.offset) != Some(head))
    {
        return None;
    }
    Some((events, more))
}

/// Point-to-point messages between instances (agent routing).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstanceMessage {
    /// Forward `command` to the agent `agent_client_id` connected to the
    /// receiving instance; answer to `reply_to` with `call_id`.
    AgentCall {
        call_id: String,
        session: String,
        agent_client_id: String,
        command: Value,
        reply_to: String,
    },
    AgentReply {
        call_id: String,
        #[serde(default)]
        content: Option<Value>,
        #[serde(default)]
        error: Option<HubError>,
    },
    /// An admin asked to disconnect `client_id` of `session`, connected to
    /// the receiving instance (close 4002).
    DisconnectClient { session: String, client_id: String },
    /// A held send whose caller waits on the receiving instance was
    /// decided: wake it.
    ApprovalResolved { session: String, id: u64 },
}

/// What a broker hands to the hub.
#[derive(Debug)]
pub enum Inbound {
    Event(LoggedEvent),
    Instance(InstanceMessage),
    /// The subscription (re)started with this connection epoch: events may
    /// have been missed since the last one; read them from the log.
    Resubscribed(u64),
    /// The subscription to this session's channel is confirmed: events
    /// published before it are only in the log; read them from there.
    Subscribed(String),
    /// A cluster-wide monitoring event (JSON text) for the admin feeds.
    Monitor(String),
    /// Answered once every message queued before it has been handled: at
    /// shutdown, events already logged reach the local clients' queues
    /// before the connections close.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Queues an event for the session's log and every instance. Never
    /// blocks: events of one producer are logged in the order queued. Fails
    /// (`store_unavailable`) when the event cannot be logged: it is then
    /// delivered to no one.
    fn publish_event(&self, envelope: EventEnvelope) -> Result<Published, HubError>;
    /// Reads the session's log: its epoch, latest offset and, with `after`,
    /// the events after it, within `budget` (see [`LogRead::events`]).
    async fn read_log(
        &self,
        session: &str,
        after: Option<u64>,
        budget: ReadBudget,
    ) -> Result<LogRead, HubError>;
    /// The log's epoch and latest offset, without events.
    async fn log_head(&self, session: &str) -> Result<LogRead, HubError> {
        self.read_log(session, None, ReadBudget::HEAD_ONLY).await
    }
    /// Delivers a message to one instance (possibly this one).
    async fn send_to_instance(
        &self,
        instance: &str,
        message: InstanceMessage,
    ) -> Result<(), HubError>;
    /// Whether this instance has local interest in a session's events (its
    /// first local subscriber appeared: true; its last one left: false).
    /// Called in order per session, under the hub's registry lock, so it
    /// must not block. A broker that carries events per session subscribes
    /// to (or leaves) the session's channel and answers a confirmed
    /// subscription with [`Inbound::Subscribed`]; the standalone one has
    /// nothing to do.
    fn interest(&self, _session: &str, _interested: bool) {}
    /// Hands a monitoring event (JSON text) to every instance, this one
    /// included, for their admin feeds ([`Inbound::Monitor`]). Best effort,
    /// not logged: a monitor event lost to an outage is superseded by the
    /// next periodic one.
    async fn publish_monitor(&self, payload: String) -> Result<(), HubError>;
    /// Forgets the log of a session the idle sweep removed
    /// (SESSION_IDLE_TTL_MS). The standalone log frees its ring (a later
    /// log of the same name continues above every forgotten offset, so an
    /// old offset is never taken for a new event); on Redis the store's
    /// expiry deleted the log's keys with the session's, so the default
    /// has nothing to do.
    fn forget_log(&self, _session: &str) {}
    /// Waits until every event published so far has been handed to the
    /// dispatcher (the durable standalone log hands them over once on
    /// disk); at shutdown, before the dispatcher's barrier.
    async fn settle(&self) {}
    /// False while the broker cannot reach its backend.
    fn is_healthy(&self) -> bool;
    /// Counts (re)connections to the backend; a change means the backend
    /// may have restarted and lost what this instance announced.
    fn connection_epoch(&self) -> u64 {
        0
    }
    /// Flushes queued events and stops background work (at shutdown, after
    /// the last client is gone, so their `client_left` still goes out).
    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(except: Option<&str>, presence: Option<u64>) -> EventEnvelope {
        EventEnvelope {
            header: EventHeader {
                session: "s".into(),
                origin: "hub1".into(),
                kind: "client_left".into(),
                produced_at: 7,
                except: except.map(str::to_string),
                presence,
                traceparent: None,
            },
            frame: r#"{"type":"client_left","client_id":"c1"}"#.into(),
        }
    }

    /// The entry as the log has always held it (the Redis append script
    /// writes it too): the position, then the header's fields in this
    /// order, absent options left out; `\n`; the frame with the position
    /// in front.
    #[test]
    fn a_log_entry_keeps_its_bytes_and_parses_back() {
        let event = envelope(Some("c1"), Some(9)).logged(3, "e1".into());
        let entry = concat!(
            r#"{"offset":3,"epoch":"e1","session":"s","origin":"hub1","kind":"client_left","produced_at":7,"except":"c1","presence":9}"#,
            "\n",
            r#"{"offset":3,"epoch":"e1","type":"client_left","client_id":"c1"}"#,
        );
        assert_eq!(event.to_entry().unwrap(), entry);
        assert_eq!(LoggedEvent::parse(entry), Some(event));
        let bare = envelope(None, None).logged(3, "e1".into());
        let bare_entry = bare.to_entry().unwrap();
        assert!(
            bare_entry.starts_with(
                r#"{"offset":3,"epoch":"e1","session":"s","origin":"hub1","kind":"client_left","produced_at":7}"#
            ),
            "{bare_entry}"
        );
        assert_eq!(LoggedEvent::parse(&bare_entry), Some(bare));
    }

    /// What the Redis append script gets: the entry after each line's
    /// position.
    #[test]
    fn an_entry_without_its_position_is_what_follows_it() {
        let (header, frame) = envelope(Some("c1"), None).entry_without_position().unwrap();
        assert_eq!(
            header,
            r#""session":"s","origin":"hub1","kind":"client_left","produced_at":7,"except":"c1"}"#
        );
        assert_eq!(frame, r#""type":"client_left","client_id":"c1"}"#);
    }
}
