//! The events live delivery keeps for the joins under way in a session.
//!
//! A join reads the session's log outside any lock, then enters the
//! registry under the lock live delivery takes; what delivery passed in
//! between is taken from here. Events are kept only while a join holds a
//! [`KeptForJoin`] of the session (taken before its read), so a session
//! nobody is joining holds no frames: memory per idle session stays
//! constant, however many events it had.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::outbox::Outbound;

/// How many delivered events per session a join can catch up from; a join
/// that live delivery passed by more reads the log again.
const RECENT: usize = 1024;

/// One delivered event, kept for joins.
#[derive(Clone)]
pub struct Recent {
    pub offset: u64,
    pub out: Outbound,
    pub except: Option<String>,
    pub presence: Option<u64>,
}

/// The events of one session kept for the joins under way in it.
#[derive(Default)]
pub(super) struct Kept {
    /// Joins holding a [`KeptForJoin`] of the session.
    joins: usize,
    pub(super) events: VecDeque<Recent>,
}

impl Kept {
    /// Keeps a delivered event (the oldest goes past [`RECENT`]).
    pub(super) fn push(&mut self, event: Recent) {
        if self.events.len() == RECENT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// The kept events of every session a join is under way in.
#[derive(Default)]
pub(super) struct KeptEvents(Mutex<HashMap<String, Kept>>);

impl KeptEvents {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Kept>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `session`'s events until the guard is dropped.
    pub(super) fn keep(&self, session: &str) -> KeptForJoin<'_> {
        self.lock().entry(session.to_string()).or_default().joins += 1;
        KeptForJoin {
            kept: self,
            session: session.to_string(),
        }
    }
}

/// While held, live delivery keeps the session's events for a join
/// (`Registry::keep_recent`).
pub struct KeptForJoin<'a> {
    kept: &'a KeptEvents,
    session: String,
}

impl Drop for KeptForJoin<'_> {
    fn drop(&mut self) {
        let mut sessions = self.kept.lock();
        if let Some(kept) = sessions.get_mut(&self.session) {
            kept.joins -= 1;
            if kept.joins == 0 {
                sessions.remove(&self.session);
            }
        }
    }
}
