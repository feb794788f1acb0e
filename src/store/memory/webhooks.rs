//! The standalone store's webhook bookkeeping: which items were seen (the
//! dedup keys, with their expiry index) and the queue of accepted events
//! with their claims. Plain state transitions; the store journals them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(super) struct WebhookBook {
    seen: HashMap<String, Instant>,
    /// Every seen item by expiry.
    seen_expiry: BTreeSet<(Instant, String)>,
    /// Accepted webhook events with their number (the journal's key).
    queue: VecDeque<(u64, String)>,
    queue_seq: u64,
    /// Claimed events by number: their lease's end and the event. In the
    /// journal until acknowledged, so a restart queues them again.
    claimed: HashMap<u64, (Instant, String)>,
}

impl WebhookBook {
    /// Drops the seen items that expired: the front of the index only.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((until, key)) = self.seen_expiry.first().cloned() {
            if until > now {
                break;
            }
            self.seen_expiry.pop_first();
            self.seen.remove(&key);
        }
    }

    /// Marks `key` seen until `until`; false if it was already.
    pub(super) fn mark_seen(&mut self, key: &str, until: Instant) -> bool {
        if self.seen.contains_key(key) {
            return false;
        }
        self.seen.insert(key.to_string(), until);
        self.seen_expiry.insert((until, key.to_string()));
        true
    }

    pub(super) fn forget_seen(&mut self, key: &str) {
        if let Some(until) = self.seen.remove(key) {
            self.seen_expiry.remove(&(until, key.to_string()));
        }
    }

    /// Queues an event; its number.
    pub(super) fn push(&mut self, event: &str) -> u64 {
        self.queue_seq += 1;
        self.queue.push_back((self.queue_seq, event.to_string()));
        self.queue_seq
    }

    /// Queues an event read back from the journal under its number.
    pub(super) fn restore(&mut self, seq: u64, event: String) {
        self.queue.push_back((seq, event));
        self.queue_seq = self.queue_seq.max(seq);
    }

    /// Claims the oldest event for `lease`: lapsed claims first (their
    /// task never finished), oldest first.
    pub(super) fn claim(&mut self, now: Instant, lease: Duration) -> Option<(u64, String)> {
        let mut lapsed: Vec<u64> = self
            .claimed
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(seq, _)| *seq)
            .collect();
        lapsed.sort_unstable_by(|a, b| b.cmp(a));
        for seq in lapsed {
            if let Some((_, event)) = self.claimed.remove(&seq) {
                self.queue.push_front((seq, event));
            }
        }
        let (seq, event) = self.queue.pop_front()?;
        self.claimed.insert(seq, (now + lease, event.clone()));
        Some((seq, event))
    }

    /// Acknowledges a claimed event; false if it was not claimed.
    pub(super) fn ack(&mut self, seq: u64) -> bool {
        self.claimed.remove(&seq).is_some()
    }
}
