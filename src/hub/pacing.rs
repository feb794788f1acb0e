//! The pacing of a large session's fan-out: its events are handed to their
//! recipients by a task of the session's own, [`FANOUT_CHUNK`] at a time,
//! yielding between chunks, so a small session's event delivered meanwhile
//! waits for one chunk of woken writers, not for the whole fan-out
//! (docs/performance.md, "Isolation"). A chunk sized by time (about 1 ms
//! of the runtime's work) was tried and measured no better for the small
//! session (docs/performance.md, "A chunk sized by time").
//!
//! Nothing here knows what a recipient is: the registry hands each one the
//! frame through the closure it gives [`Pacing::run`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::outbox::Outbound;

/// Sessions with more local recipients than this get their events paced
/// (smaller ones are handed theirs at once), this many at a time: tokio's
/// local run queue holds 256 tasks, so the woken writers of one chunk do
/// not spill into the global queue.
pub(super) const FANOUT_CHUNK: usize = 256;

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
            for chunk in recipients.chunks(FANOUT_CHUNK) {
                for recipient in chunk {
                    hand(recipient, &out);
                }
                tokio::task::yield_now().await;
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
