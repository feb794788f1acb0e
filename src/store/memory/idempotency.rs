//! Idempotency records of the memory store: capped per caller and in
//! bytes in all, every removal by an ordered index (O(log n), no scan).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::store::{IdempotencyBegin, IdempotencyKey};

/// What a stored idempotency record costs beside its strings: its map
/// entries and index nodes, counted against the byte budget.
const RECORD_OVERHEAD: usize = 160;

/// An idempotency key held by a running request.
pub(super) struct Held {
    token: String,
    fingerprint: String,
    until: Instant,
}

/// A stored idempotency result.
pub(super) struct Done {
    fingerprint: String,
    result: String,
    caller: String,
    /// Its place in [`Idempotency::by_expiry`] and its caller's set.
    at: (Instant, u64),
}

impl Done {
    fn cost(&self, id: &str) -> usize {
        id.len() + self.fingerprint.len() + self.result.len() + self.caller.len() + RECORD_OVERHEAD
    }
}

/// Idempotency records: capped per caller and in bytes in all, every
/// removal by an ordered index (O(log n), no scan).
pub(super) struct Idempotency {
    held: HashMap<String, Held>,
    /// Every held key by when its lock expires.
    held_expiry: BTreeSet<(Instant, String)>,
    done: HashMap<String, Done>,
    /// Every result by expiry (all results live IDEMPOTENCY_TTL_MS, so
    /// this is also their age): the front expires, or is evicted, first.
    by_expiry: BTreeMap<(Instant, u64), String>,
    /// Each caller's results, oldest first.
    by_caller: HashMap<String, BTreeSet<(Instant, u64)>>,
    bytes: usize,
    max_bytes: usize,
    seq: u64,
}

impl Idempotency {
    pub(super) fn new(max_bytes: u64) -> Self {
        Idempotency {
            held: HashMap::new(),
            held_expiry: BTreeSet::new(),
            done: HashMap::new(),
            by_expiry: BTreeMap::new(),
            by_caller: HashMap::new(),
            bytes: 0,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            seq: 0,
        }
    }

    /// The map key of an idempotency key: its caller's and its own hash.
    pub(super) fn id(key: &IdempotencyKey<'_>) -> String {
        format!("{}:{}", key.caller, key.key)
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.by_expiry.first_entry() {
            if oldest.key().0 > now {
                break;
            }
            let id = oldest.remove();
            self.remove_done(&id);
        }
        while let Some((until, id)) = self.held_expiry.first().cloned() {
            if until > now {
                break;
            }
            self.held_expiry.pop_first();
            self.held.remove(&id);
        }
    }

    fn remove_done(&mut self, id: &str) {
        let Some(done) = self.done.remove(id) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(done.cost(id));
        self.by_expiry.remove(&done.at);
        if let Some(mine) = self.by_caller.get_mut(&done.caller) {
            mine.remove(&done.at);
            if mine.is_empty() {
                self.by_caller.remove(&done.caller);
            }
        }
    }

    pub(super) fn release(&mut self, id: &str, token: &str) {
        if let Some(held) = self.held.get(id)
            && held.token == token
        {
            self.held_expiry.remove(&(held.until, id.to_string()));
            self.held.remove(id);
        }
    }

    pub(super) fn begin(
        &mut self,
        key: &IdempotencyKey<'_>,
        token: &str,
        lock_ttl: Duration,
    ) -> IdempotencyBegin {
        let id = Self::id(key);
        if let Some(done) = self.done.get(&id) {
            return if done.fingerprint == key.fingerprint {
                IdempotencyBegin::Done(done.result.clone())
            } else {
                IdempotencyBegin::Reused
            };
        }
        if let Some(held) = self.held.get(&id) {
            return if held.fingerprint == key.fingerprint {
                IdempotencyBegin::Busy
            } else {
                IdempotencyBegin::Reused
            };
        }
        let until = Instant::now() + lock_ttl;
        self.held_expiry.insert((until, id.clone()));
        self.held.insert(
            id,
            Held {
                token: token.to_string(),
                fingerprint: key.fingerprint.to_string(),
                until,
            },
        );
        IdempotencyBegin::Acquired
    }

    /// Stores a result; the ids of the records forgotten for it.
    pub(super) fn finish(
        &mut self,
        key: &IdempotencyKey<'_>,
        token: &str,
        result: &str,
        ttl: Duration,
        per_caller: usize,
    ) -> Vec<String> {
        let id = Self::id(key);
        self.release(&id, token);
        self.remove_done(&id);
        self.seq += 1;
        self.insert_done(id, key.caller, key.fingerprint, result, ttl);
        let mut evicted = Vec::new();
        // The caller's oldest first...
        while let Some(oldest) = self
            .by_caller
            .get_mut(key.caller)
            .filter(|mine| mine.len() > per_caller.max(1))
            .and_then(|mine| mine.pop_first())
        {
            if let Some(old) = self.by_expiry.remove(&oldest) {
                self.remove_done(&old);
                evicted.push(old);
            }
        }
        // ...then everyone's oldest, past the byte budget (the newest
        // result is kept even alone over it).
        while self.bytes > self.max_bytes && self.by_expiry.len() > 1 {
            let Some((_, old)) = self.by_expiry.pop_first() else {
                break;
            };
            self.remove_done(&old);
            evicted.push(old);
        }
        evicted
    }

    /// Adds a result that expires in `ttl` (a new one, or one read back
    /// from the data directory), without the caps: the caller applies them.
    pub(super) fn insert_done(
        &mut self,
        id: String,
        caller: &str,
        fingerprint: &str,
        result: &str,
        ttl: Duration,
    ) {
        self.seq += 1;
        let at = (Instant::now() + ttl, self.seq);
        let done = Done {
            fingerprint: fingerprint.to_string(),
            result: result.to_string(),
            caller: caller.to_string(),
            at,
        };
        self.bytes += done.cost(&id);
        self.by_expiry.insert(at, id.clone());
        self.by_caller
            .entry(caller.to_string())
            .or_default()
            .insert(at);
        self.done.insert(id, done);
    }
}
