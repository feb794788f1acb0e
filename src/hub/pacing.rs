//! The pacing of a large session's fan-out. Its events are queued for
//! every recipient at once, under the same bounds as any frame, so each
//! client gets them in order and a slow one is evicted as usual; what is
//! paced is the *wake-ups*. A task of the session's own wakes its
//! recipients' connections [`FANOUT_CHUNK`] at a time, yielding between
//! chunks, so a small session's event delivered meanwhile waits for one
//! chunk of woken writers, not for the whole fan-out (docs/performance.md,
//! "Isolation").
//!
//! A recipient is listed to be woken at most once
//! ([`Outbox::send_deferred`] says when to list it): while the pacer is
//! behind, later events only join the frames already queued for it, and
//! the connection, once woken, writes them all in one `writev`. The list
//! is thus bounded by the session's size, not by the events, and a fan-out
//! the instance cannot keep up with batches its writes instead of queueing
//! work. A recipient whose queue reached a quarter of its bounds is woken
//! at once instead: waiting for its turn must not take it towards eviction.
//!
//! A recipient is anything with an outbox (the registry's, private to it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::outbox::Outbox;

/// Sessions with more local recipients than this get their wake-ups
/// paced (smaller ones are woken at once), this many at a time: tokio's
/// local run queue holds 256 tasks, so the woken writers of one chunk do
/// not spill into the global queue. A chunk sized by time (about 1 ms of
/// the runtime's work) was tried and measured no better for the small
/// session (docs/performance.md, "A chunk sized by time").
pub(super) const FANOUT_CHUNK: usize = 256;

/// The recipients to wake, per session whose pacer task runs.
pub(super) struct Pacing<R> {
    sessions: Mutex<HashMap<String, Vec<Arc<R>>>>,
}

impl<R> Default for Pacing<R> {
    fn default() -> Self {
        Pacing {
            sessions: Mutex::default(),
        }
    }
}

impl<R: AsRef<Outbox> + Send + Sync + 'static> Pacing<R> {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<R>>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `recipients` (frames are queued for them, not yet woken) to be
    /// woken by the session's pacer. True if the session has no pacer
    /// running: the caller starts one ([`Self::run`]).
    pub(super) fn wake_later(&self, session: &str, recipients: Vec<Arc<R>>) -> bool {
        if recipients.is_empty() {
            return false;
        }
        let mut sessions = self.sessions();
        match sessions.get_mut(session) {
            Some(listed) => {
                listed.extend(recipients);
                false
            }
            None => {
                sessions.insert(session.to_owned(), recipients);
                true
            }
        }
    }

    /// Wakes the session's listed recipients, a chunk at a time; ends (and
    /// unlists the session) when none is left.
    pub(super) async fn run(self: Arc<Self>, session: String) {
        loop {
            let listed = {
                let mut sessions = self.sessions();
                match sessions.get_mut(&session) {
                    Some(listed) if !listed.is_empty() => std::mem::take(listed),
                    _ => {
                        sessions.remove(&session);
                        return;
                    }
                }
            };
            for chunk in listed.chunks(FANOUT_CHUNK) {
                for recipient in chunk {
                    R::as_ref(recipient).wake_deferred();
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// How many sessions have a pacer running.
    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.sessions().len()
    }

    /// How many recipients the session's pacer has yet to wake.
    #[cfg(test)]
    pub(super) fn listed(&self, session: &str) -> usize {
        self.sessions().get(session).map_or(0, Vec::len)
    }
}
