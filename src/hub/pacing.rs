//! The pacing of a large session's fan-out: its events are handed to their
//! recipients by a task of the session's own, a chunk at a time, yielding
//! between chunks, so a small session's event delivered meanwhile waits for
//! one chunk of woken writers, not for the whole fan-out
//! (docs/performance.md, "Isolation").
//!
//! A chunk is sized by time, not by count ([`ChunkSize`]): the pacer
//! measures how long the runtime took to come back to it after each chunk
//! (the woken connections' writes, and whatever else was queued) and sizes
//! the next one to take about [`ChunkSize::BUDGET`]. A write costs 2–3 times
//! more on some machines' loopback than on others, and more on a busy
//! machine than on a quiet one; a fixed count let the wait of everybody
//! else grow with it.
//!
//! Nothing here knows what a recipient is: the registry hands each one the
//! frame through the closure it gives [`Pacing::run`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::outbox::Outbound;

/// Sessions with more local recipients than this get their events paced;
/// it is also the size of a pacer's first chunk.
pub const FANOUT_CHUNK: usize = 256;

/// One paced event: its log position and who gets it, taken when it was
/// delivered.
pub(super) struct PacedEvent<R> {
    pub(super) epoch: String,
    pub(super) offset: u64,
    pub(super) out: Outbound,
    pub(super) recipients: Vec<R>,
}

/// The paced events of the sessions that have some, in offset order; a
/// session is listed while its pacer task runs.
pub(super) struct Pacing<R> {
    sessions: Mutex<HashMap<String, VecDeque<PacedEvent<R>>>>,
    /// Woken after each paced event went out (and by the registry after
    /// each unpaced delivery), for [`crate::hub::registry::Registry::delivered`].
    pub(super) progress: tokio::sync::Notify,
}

impl<R> Default for Pacing<R> {
    fn default() -> Self {
        Pacing {
            sessions: Mutex::default(),
            progress: tokio::sync::Notify::new(),
        }
    }
}

impl<R: Send + Sync + 'static> Pacing<R> {
    pub(super) fn sessions(&self) -> MutexGuard<'_, HashMap<String, VecDeque<PacedEvent<R>>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an event of `session` at or before `offset` of `epoch` is
    /// still being handed out.
    pub(super) fn pending(&self, session: &str, epoch: &str, offset: u64) -> bool {
        self.sessions()
            .get(session)
            .is_some_and(|q| q.iter().any(|e| e.epoch == epoch && e.offset <= offset))
    }

    /// Hands out the session's paced events in order, a chunk at a time
    /// (`hand` gives one recipient the frame); ends (and unlists the
    /// session) when none is left.
    pub(super) async fn run(
        self: Arc<Self>,
        session: String,
        hand: impl Fn(&R, &Outbound) + Send + 'static,
    ) {
        let mut chunk = ChunkSize::default();
        loop {
            // The event stays listed (pending) until every chunk went out.
            let Some((out, recipients)) = self
                .sessions()
                .get_mut(&session)
                .and_then(|q| q.front_mut())
                .map(|e| (e.out.clone(), std::mem::take(&mut e.recipients)))
            else {
                return;
            };
            let mut rest = recipients.as_slice();
            while !rest.is_empty() {
                let (now, later) = rest.split_at(chunk.recipients.min(rest.len()));
                for recipient in now {
                    hand(recipient, &out);
                }
                let yielded = Instant::now();
                tokio::task::yield_now().await;
                chunk.after(now.len(), yielded.elapsed());
                rest = later;
            }
            drop(recipients);
            {
                let mut sessions = self.sessions();
                let done = sessions.get_mut(&session).is_none_or(|q| {
                    q.pop_front();
                    q.is_empty()
                });
                if done {
                    sessions.remove(&session);
                }
            }
            self.progress.notify_waiters();
        }
    }
}

/// How many recipients the next chunk hands the frame to.
#[derive(Debug)]
struct ChunkSize {
    recipients: usize,
}

impl Default for ChunkSize {
    fn default() -> Self {
        ChunkSize {
            recipients: FANOUT_CHUNK,
        }
    }
}

impl ChunkSize {
    /// About how long the runtime should spend on one chunk before the
    /// pacer's turn comes again: what a small session's event may wait.
    const BUDGET: Duration = Duration::from_millis(1);
    /// Never fewer: each chunk costs a yield.
    const MIN: usize = 16;
    /// Never more: a quiet runtime says little about a loaded one.
    const MAX: usize = 1024;

    /// `handed` recipients were handed the frame, and the pacer's turn
    /// came again `took` later: the next chunk aims at [`Self::BUDGET`],
    /// halfway from the current size, so one odd measurement moves it
    /// little.
    fn after(&mut self, handed: usize, took: Duration) {
        let per_recipient = took.as_nanos() / handed.max(1) as u128;
        let fits = Self::BUDGET.as_nanos() / per_recipient.max(1);
        let fits = usize::try_from(fits).unwrap_or(usize::MAX);
        self.recipients = (self.recipients / 2 + fits / 2).clamp(Self::MIN, Self::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(chunk: &mut ChunkSize, per_recipient: Duration) -> usize {
        for _ in 0..20 {
            let handed = chunk.recipients;
            chunk.after(handed, per_recipient * handed as u32);
        }
        chunk.recipients
    }

    /// Writes of 4 µs fit 250 in the budget of 1 ms, of 15 µs 66: the
    /// chunk follows what a recipient costs, from either side.
    #[test]
    fn a_chunk_settles_where_its_writes_take_about_the_budget() {
        let mut chunk = ChunkSize::default();
        let slow = settle(&mut chunk, Duration::from_micros(15));
        assert!((60..=70).contains(&slow), "{slow}");
        let fast = settle(&mut chunk, Duration::from_micros(4));
        assert!((240..=255).contains(&fast), "{fast}");
    }

    /// A runtime that came back at once (nothing to run) or after a very
    /// long stall moves the chunk only to its bounds.
    #[test]
    fn a_chunk_stays_within_its_bounds() {
        let mut chunk = ChunkSize::default();
        assert_eq!(settle(&mut chunk, Duration::ZERO), ChunkSize::MAX);
        assert_eq!(settle(&mut chunk, Duration::from_millis(5)), ChunkSize::MIN);
        chunk.after(0, Duration::from_secs(1));
        assert_eq!(chunk.recipients, ChunkSize::MIN);
    }
}
