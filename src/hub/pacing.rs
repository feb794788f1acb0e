//! The pacing of a large session's fan-out. Its events are queued for
//! every recipient at once, under the same bounds as any frame, so each
//! client gets them in order and a slow one is evicted as usual; what is
//! paced is the *wake-ups*. A task of the session's own wakes its
//! recipients' connections, at most [`WOKEN_AT_ONCE`] of them woken and not
//! yet run at any time: each wake-up hands over a turn (a semaphore
//! permit) that the connection's task gives back when it runs
//! ([`Outbox::wake_deferred`]). So the runtime's queue never holds more
//! than a chunk of the session's writers, and a small session's event
//! delivered meanwhile waits for at most that many, not for the whole
//! fan-out (docs/performance.md, "Isolation"); a pacer ends only once its
//! turns are all back, so a session never has more. Yielding between chunks
//! instead was not enough: the pacer ran again after a few dozen tasks and
//! the queue grew to thousands of writers.
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

use tokio::sync::Semaphore;

use crate::outbox::Outbox;

/// Sessions with more local recipients than this get their wake-ups
/// paced (smaller ones are woken at once: tokio's local run queue holds
/// 256 tasks, so they do not spill into the global queue).
pub(super) const FANOUT_CHUNK: usize = 256;

/// A paced session's connections woken and not yet run, at most: what a
/// small session's event may wait behind.
pub(super) const WOKEN_AT_ONCE: usize = 64;

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

    /// Wakes the session's listed recipients, at most [`WOKEN_AT_ONCE`]
    /// woken and not yet run; ends (and unlists the session) when none is
    /// left and every turn is back, so the next pacer of the session does
    /// not add its turns to this one's.
    pub(super) async fn run(self: Arc<Self>, session: String) {
        let turns = Arc::new(Semaphore::new(WOKEN_AT_ONCE));
        loop {
            let listed = self.sessions().get_mut(&session).map(std::mem::take);
            match listed {
                Some(listed) if !listed.is_empty() => {
                    for recipient in listed {
                        // Never closed: acquiring only waits.
                        let Ok(turn) = turns.clone().acquire_owned().await else {
                            break;
                        };
                        R::as_ref(&recipient).wake_deferred(turn);
                    }
                }
                _ => {
                    // Wakes listed meanwhile are seen below, under the
                    // lock `wake_later` lists them under.
                    let _all_back = turns.acquire_many(WOKEN_AT_ONCE as u32).await;
                    let mut sessions = self.sessions();
                    if sessions.get(&session).is_none_or(Vec::is_empty) {
                        sessions.remove(&session);
                        return;
                    }
                }
            }
        }
    }

    /// How many sessions have a pacer running.
    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.sessions().len()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::metrics::Metrics;
    use crate::outbox::{Outbound, WakeCount};

    /// A connection: its outbox and its task's wake-ups.
    struct Connection {
        outbox: Outbox,
        task: Arc<WakeCount>,
    }

    impl AsRef<Outbox> for Connection {
        fn as_ref(&self) -> &Outbox {
            &self.outbox
        }
    }

    impl Connection {
        fn new() -> Arc<Connection> {
            let connection = Connection {
                outbox: Outbox::new(64, 1 << 20),
                task: Arc::default(),
            };
            connection.run();
            Arc::new(connection)
        }

        /// Its task runs (and registers its waker, as every poll does).
        fn run(&self) {
            self.outbox.register(&Waker::from(self.task.clone()));
        }
    }

    /// Queues an event for each of `connections`, its wake-up deferred:
    /// those to list for the pacer.
    fn send_deferred(connections: &[Arc<Connection>], metrics: &Metrics) -> Vec<Arc<Connection>> {
        connections
            .iter()
            .filter(|c| {
                let frame = Outbound::reply("event".into(), "broadcast");
                c.outbox.send_deferred(frame, metrics)
            })
            .cloned()
            .collect()
    }

    fn woken(connections: &[Arc<Connection>]) -> Vec<&Arc<Connection>> {
        connections.iter().filter(|c| c.task.count() > 0).collect()
    }

    async fn let_the_pacer_run() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The pacer wakes the next connections only as the woken ones run
    /// (give back their turn) or end: never more than a chunk of the
    /// session's writers wait in the runtime's queue.
    #[tokio::test]
    async fn the_pacer_wakes_more_connections_only_as_the_woken_ones_run() {
        let metrics = Metrics::new("i");
        let pacing = Arc::new(Pacing::default());
        let connections: Vec<_> = (0..FANOUT_CHUNK * 2).map(|_| Connection::new()).collect();
        assert!(pacing.wake_later("s", send_deferred(&connections, &metrics)));
        tokio::spawn(pacing.clone().run("s".into()));
        let_the_pacer_run().await;
        assert_eq!(woken(&connections).len(), WOKEN_AT_ONCE, "none ran yet");

        for c in woken(&connections).into_iter().take(10) {
            c.run();
        }
        let_the_pacer_run().await;
        assert_eq!(woken(&connections).len(), WOKEN_AT_ONCE + 10);

        for c in woken(&connections).into_iter().skip(10).take(5) {
            c.outbox.close(false, None);
        }
        let_the_pacer_run().await;
        assert_eq!(woken(&connections).len(), WOKEN_AT_ONCE + 15);

        for _ in 0..100 {
            for c in woken(&connections) {
                c.run();
            }
            let_the_pacer_run().await;
        }
        assert_eq!(pacing.running(), 0);
        assert_eq!(woken(&connections).len(), connections.len());
        assert!(connections.iter().all(|c| c.task.count() == 1));
    }

    /// A pacer done with its list stays until every turn it gave is back:
    /// the session's next events are woken within the same turns.
    #[tokio::test]
    async fn a_pacer_ends_only_once_its_turns_are_back() {
        let metrics = Metrics::new("i");
        let pacing = Arc::new(Pacing::default());
        let connections: Vec<_> = (0..WOKEN_AT_ONCE * 2).map(|_| Connection::new()).collect();
        let (first, second) = connections.split_at(WOKEN_AT_ONCE);
        assert!(pacing.wake_later("s", send_deferred(first, &metrics)));
        tokio::spawn(pacing.clone().run("s".into()));
        let_the_pacer_run().await;
        assert_eq!(woken(first).len(), WOKEN_AT_ONCE);
        assert!(
            !pacing.wake_later("s", send_deferred(second, &metrics)),
            "its pacer still runs"
        );
        let_the_pacer_run().await;
        assert!(woken(second).is_empty(), "no turn is free");

        for c in first {
            c.run();
        }
        let_the_pacer_run().await;
        assert_eq!(woken(second).len(), WOKEN_AT_ONCE);
        for c in second {
            c.run();
        }
        let_the_pacer_run().await;
        assert_eq!(pacing.running(), 0);
    }
}
