//! The standalone bus and log: one instance, so events need no transport.
//! Each session's log is an in-memory ring of its last `SESSION_LOG_LEN`
//! events; the epoch is random per process, so offsets from before a
//! restart are never mistaken for new ones.

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
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
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
            for ring in rings.values_mut() {
                if ring
                    .events
                    .back()
                    .is_some_and(|e| now.saturating_sub(e.header.produced_at) > ttl)
                {
                    ring.events = VecDeque::new();
                }
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
        let _ = done.send((event.epoch.clone(), event.offset));
        let _ = self.inbound.try_send(Inbound::Event(event));
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
    }

    fn is_healthy(&self) -> bool {
        true
    }
}
