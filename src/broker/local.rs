//! The standalone bus and log: one instance, so events need no transport.
//! Each session's log is an in-memory ring of its last `SESSION_LOG_LEN`
//! events. Without a data directory the epoch is random per process, so
//! offsets from before a restart are never mistaken for new ones. With one
//! (DATA_DIR) the log is durable: every event is journaled and reaches the
//! dispatcher only once it is on disk, the epoch belongs to the data
//! directory, and a restarted hub carries on the same offsets, so its
//! clients resume with `recovered: true` ([`crate::durable`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    Broker, EventEnvelope, Inbound, InstanceMessage, LogRead, LoggedEvent, Published, ReadBudget,
    replay_window,
};
use crate::durable::{Journal, Op, Snapshot};
use crate::protocol::{ErrorCode, HubError, now_millis};

/// One session's log.
#[derive(Default)]
struct Ring {
    head: u64,
    events: VecDeque<LoggedEvent>,
}

pub struct LocalBroker {
    instance: String,
    inbound: mpsc::Sender<Inbound>,
    epoch: String,
    len: usize,
    ttl: Duration,
    rings: Mutex<HashMap<String, Ring>>,
    published: AtomicU64,
    /// One above the highest head of a forgotten ring
    /// ([`Broker::forget_log`]): a session without a ring starts there, so
    /// no offset of this epoch is ever given twice to a session name, and a
    /// `since` from a forgotten log is never taken for this one (its next
    /// offset is missing). Changed under the rings lock.
    forgotten_head: AtomicU64,
    /// The data directory's journal (None: the log is memory only).
    journal: Option<Journal>,
    /// Sessions with local clients: their logs are never reclaimed, so
    /// their offsets run on without a jump.
    interested: Mutex<std::collections::HashSet<String>>,
}

impl LocalBroker {
    pub fn new(
        instance: String,
        inbound: mpsc::Sender<Inbound>,
        log_len: usize,
        log_ttl: Duration,
    ) -> Self {
        LocalBroker {
            instance,
            inbound,
            epoch: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
            len: log_len.max(1),
            ttl: log_ttl,
            rings: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
            forgotten_head: AtomicU64::new(0),
            journal: None,
            interested: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The durable log of a data directory: its epoch, its forgotten head
    /// and every session's kept events as `snapshot` read them back,
    /// journaled from now on.
    pub fn restored(
        instance: String,
        inbound: mpsc::Sender<Inbound>,
        log_len: usize,
        log_ttl: Duration,
        journal: Journal,
        snapshot: &Snapshot,
    ) -> Self {
        let mut broker = Self::new(instance, inbound, log_len, log_ttl);
        broker.epoch = snapshot.epoch.clone();
        broker.forgotten_head = AtomicU64::new(snapshot.forgotten_head);
        let mut rings = HashMap::new();
        for (session, entries) in &snapshot.logs {
            let events: VecDeque<LoggedEvent> = entries
                .iter()
                .filter_map(|(_, entry)| LoggedEvent::parse(entry))
                .filter(|e| e.epoch == snapshot.epoch)
                .collect();
            let Some(head) = events.back().map(|e| e.offset) else {
                continue;
            };
            let skip = events.len().saturating_sub(broker.len);
            rings.insert(
                session.clone(),
                Ring {
                    head,
                    events: events.into_iter().skip(skip).collect(),
                },
            );
        }
        broker.rings = Mutex::new(rings);
        broker.journal = Some(journal);
        broker
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Sessions whose log this instance holds (bounded: a log silent for
    /// SESSION_LOG_TTL_MS is reclaimed).
    pub fn logs_held(&self) -> usize {
        self.rings.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn publish_event(&self, envelope: EventEnvelope) -> Result<Published, HubError> {
        let now = now_millis();
        let ttl = self.ttl_ms();
        // Offset, log and hand-off under one lock: the dispatcher receives
        // events in offset order.
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        // A session whose last event is older than the TTL has nothing left
        // to replay: free its events (its head stays, so no offset repeats
        // within this epoch). Checked every 1024 events: publishing stays
        // O(1).
        if self.published.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            // Its entry goes too (a silent session costs nothing): its
            // head lives on in the forgotten head, above which every later
            // log starts, as with a log whose session expired. A client
            // resuming from it then starts afresh, as on Redis after
            // SESSION_LOG_TTL_MS of silence.
            let mut forgotten = Vec::new();
            let interested = self.interested.lock().unwrap_or_else(|p| p.into_inner());
            rings.retain(|session, ring| {
                let stale = !interested.contains(session)
                    && ring
                        .events
                        .back()
                        .is_none_or(|e| now.saturating_sub(e.header.produced_at) > ttl);
                if stale {
                    self.forgotten_head
                        .fetch_max(ring.head + 1, Ordering::Relaxed);
                    forgotten.push(session.clone());
                }
                !stale
            });
            drop(interested);
            if let Some(journal) = &self.journal
                && !forgotten.is_empty()
            {
                let head = self.forgotten_head.load(Ordering::Relaxed);
                let ops = forgotten
                    .into_iter()
                    .map(|session| Op::ForgetLog { session, head })
                    .collect();
                drop(journal.submit(ops));
            }
        }
        let ring = rings
            .entry(envelope.header.session.clone())
            .or_insert_with(|| Ring {
                head: self.forgotten_head.load(Ordering::Relaxed),
                events: VecDeque::new(),
            });
        ring.head += 1;
        let event = envelope.logged(ring.head, self.epoch.clone());
        ring.events.push_back(event.clone());
        while ring.events.len() > self.len {
            ring.events.pop_front();
        }
        // A full dispatcher queue only delays delivery: the event is in the
        // ring, and the dispatcher fills the gap from it at the next event.
        let (done, published) = tokio::sync::oneshot::channel();
        let position = (event.epoch.clone(), event.offset);
        let Some(journal) = &self.journal else {
            let _ = done.send(position);
            let _ = self.inbound.try_send(Inbound::Event(event));
            return Ok(published);
        };
        // Durable: handed to the dispatcher once on disk (queued under the
        // rings lock, so the disk sees the offsets in order).
        let entry = event.to_entry().map_err(HubError::internal)?;
        let op = Op::Event {
            session: event.header.session.clone(),
            offset: event.offset,
            entry,
            keep: self.len,
        };
        let inbound = self.inbound.clone();
        journal.submit_then(vec![op], move |written| {
            if !written {
                // Delivered anyway (it is in the ring); a restart may not
                // replay it.
                tracing::warn!(
                    offset = event.offset,
                    "event delivered without being on disk"
                );
            }
            let _ = done.send(position);
            let _ = inbound.try_send(Inbound::Event(event));
        });
        Ok(published)
    }

    async fn read_log(
        &self,
        session: &str,
        after: Option<u64>,
        budget: ReadBudget,
    ) -> Result<LogRead, HubError> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let (head, kept) = match rings.get(session) {
            Some(r) => (r.head, Some(&r.events)),
            None => (self.forgotten_head.load(Ordering::Relaxed), None),
        };
        let window = after.map_or(Some((Vec::new(), false)), |after| {
            // Only what the budget takes is copied: offsets in a ring are
            // contiguous, so the wanted ones start at a known index.
            let skip = kept.and_then(|k| k.front()).map_or(0, |first| {
                after.saturating_add(1).saturating_sub(first.offset)
            });
            let wanted = kept
                .into_iter()
                .flatten()
                .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                .cloned();
            replay_window(
                wanted,
                head,
                after,
                (self.len as u64, self.ttl_ms()),
                budget,
                now_millis(),
            )
        });
        Ok(LogRead::new(self.epoch.clone(), head, window))
    }

    async fn send_to_instance(
        &self,
        instance: &str,
        message: InstanceMessage,
    ) -> Result<(), HubError> {
        if instance != self.instance {
            return Err(HubError::new(
                ErrorCode::AgentUnavailable,
                format!("instance `{instance}` is not reachable in standalone mode"),
            ));
        }
        self.inbound
            .send(Inbound::Instance(message))
            .await
            .map_err(|_| HubError::new(ErrorCode::ShuttingDown, "hub is shutting down"))
    }

    async fn publish_monitor(&self, payload: String) -> Result<(), HubError> {
        // Lossy by design: a full dispatcher queue drops a monitor event.
        let _ = self.inbound.try_send(Inbound::Monitor(payload));
        Ok(())
    }

    fn forget_log(&self, session: &str) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ring) = rings.remove(session) {
            self.forgotten_head
                .fetch_max(ring.head + 1, Ordering::Relaxed);
        }
        if let Some(journal) = &self.journal {
            // Nobody waits for it: the session is gone either way.
            drop(journal.submit(vec![Op::ForgetLog {
                session: session.to_string(),
                head: self.forgotten_head.load(Ordering::Relaxed),
            }]));
        }
    }

    fn interest(&self, session: &str, interested: bool) {
        let mut sessions = self.interested.lock().unwrap_or_else(|p| p.into_inner());
        if interested {
            sessions.insert(session.to_string());
        } else {
            sessions.remove(session);
        }
    }

    async fn settle(&self) {
        if let Some(journal) = &self.journal {
            // Acknowledged after everything queued before it, whose events
            // were handed over first.
            let _ = journal.submit(Vec::new()).await;
        }
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::EventHeader;

    fn envelope(session: &str) -> EventEnvelope {
        EventEnvelope {
            header: EventHeader {
                session: session.to_string(),
                origin: "solo".into(),
                kind: "broadcast".into(),
                produced_at: now_millis(),
                except: None,
                presence: None,
                traceparent: None,
            },
            frame: r#"{"type":"broadcast","from":"x","payload":1,"timestamp":1}"#.into(),
        }
    }

    #[tokio::test]
    async fn a_silent_session_s_log_is_reclaimed_and_its_offsets_never_reused() {
        let (tx, _rx) = mpsc::channel(1 << 16);
        let broker = LocalBroker::new("solo".into(), tx, 10, Duration::from_millis(1));
        // A session with a local client keeps its log however quiet.
        broker.interest("watched", true);
        drop(broker.publish_event(envelope("watched")));
        // 2 000 sessions speak once, then fall silent past the TTL.
        for n in 0..2000 {
            drop(broker.publish_event(envelope(&format!("s{n}"))));
        }
        let head = broker.log_head("s7").await.unwrap().head;
        std::thread::sleep(Duration::from_millis(5));
        // One busy session keeps publishing: the sweep runs along.
        for _ in 0..1100 {
            drop(broker.publish_event(envelope("busy")));
        }
        assert_eq!(broker.logs_held(), 2, "busy and watched only");
        assert_eq!(broker.log_head("watched").await.unwrap().head, 1);
        // A session that speaks again starts above every offset it had.
        let (_, offset) = broker.publish_event(envelope("s7")).unwrap().await.unwrap();
        assert!(offset > head, "{offset} after {head}");
    }
}
