//! A large session's events, queued for their recipients off the broker's
//! dispatcher. The registry collects an event's recipients under its locks
//! and hands them here as a *job*; a task of the session's own hands the
//! jobs, one after the other, a chunk of recipients at a time, to the
//! outbox's flusher (a thread that queues their frames and writes them,
//! `outbox/flusher.rs`) instead of waking their connections' tasks; the
//! task only waits, so the runtime's worker threads do no work per
//! recipient. The dispatcher (one task for all of the broker's events) goes on
//! at once to the next event, of any session: a small session's event no
//! longer waits for the 1–3 ms a 10 000-recipient queueing takes
//! (docs/performance.md, "Isolation").
//!
//! While a session has jobs, every one of its events becomes a job,
//! however few its recipients, so each client gets the session's events in
//! order. The jobs are bounded: the dispatcher waits for room
//! ([`Fanouts::room`], at most [`MAX_JOBS`] per session) before it goes on,
//! so a session published to faster than the flusher queues its frames
//! (it writes between chunks) slows the dispatcher, instead of holding
//! work without bound.
//!
//! A job's recipients are those of the event when it was handed over,
//! with the registry's count of departures then ([`Member`]): one that
//! left since (an admin feed switching sessions, a client replaced by a new
//! connection) is skipped, so a feed gets no event of the session it left
//! after the frames of the one it watches now, and a feed back in the
//! session gets only what was published after its new watch, as any new
//! watch does. What a recipient keeps is when it last left, which is
//! exact because a connection is a recipient of one session at a time (an
//! MCP watch has a handle of its own per session); what is not excluded is
//! the one frame being queued at the moment the recipient leaves. The
//! check costs the event one number, and no work per recipient under the
//! registry's locks.
//!
//! Two sizes meet here: a session is large above [`FANOUT_CHUNK`]
//! recipients, and its task hands [`QUEUED_AT_ONCE`] of them at a time to
//! the flusher.
//!
//! A recipient is anything with an outbox (the registry's, private to it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot};

use super::position::Position;
use crate::metrics::Metrics;
use crate::outbox::{Flusher, Outbound, Outbox};

/// Sessions with more local recipients than this are large: their frames
/// are queued and written by the flusher (smaller ones are
/// queued by the dispatcher and their connections woken at once: tokio's
/// local run queue holds 256 tasks, so they do not spill into the global
/// queue).
pub(super) const FANOUT_CHUNK: usize = 256;

/// A session's jobs waiting, at most, before the dispatcher waits for its
/// task: each holds the event's recipient list (8 bytes per recipient).
pub(super) const MAX_JOBS: usize = 8;

/// Recipients handed to the flusher at once: the flusher takes in new
/// work between its writes, so a large event's first recipients are
/// written while the rest are queued, and without the flusher's thread
/// (the chunks are queued by the task itself) the task yields after each.
pub(super) const QUEUED_AT_ONCE: usize = 1024;

/// A recipient of a session's events: a connection's outbox, and when it
/// last left a session, on the registry's count of departures (0: never).
pub(super) trait Member: AsRef<Outbox> {
    fn left_at(&self) -> u64;
}

/// One event to queue for its recipients.
pub(super) struct Job<R> {
    pub position: Position,
    pub out: Outbound,
    pub recipients: Vec<Arc<R>>,
    /// The registry's count of departures when the event was handed over:
    /// a recipient that left after it is skipped ([`Member::left_at`]).
    pub departures: u64,
}

/// A task [`Fanouts::push`] asks the caller to start.
pub(super) struct Start {
    session: String,
    task: u64,
}

/// Jobs dropped by [`Fanouts::forget`].
#[must_use = "dropped outside the caller's locks"]
pub(super) struct Forgotten<R> {
    _jobs: VecDeque<Job<R>>,
}

/// The jobs of one session whose task runs.
struct Jobs<R> {
    /// Which task owns them: a session forgotten (nobody here subscribes)
    /// and subscribed again gets a new task, and the old one stops.
    task: u64,
    waiting: VecDeque<Job<R>>,
    /// The event the task is queueing now.
    queueing: Option<Position>,
}

/// The jobs of the sessions whose task runs, and the notice of each one
/// done.
pub(super) struct Fanouts<R> {
    sessions: Mutex<HashMap<String, Jobs<R>>>,
    tasks: AtomicU64,
    /// Notified after each job, and when a session's jobs are dropped;
    /// the registry notifies it after each event it queues itself.
    progress: Notify,
    /// Queues the tasks' chunks of recipients, in the order handed over,
    /// and writes their frames.
    flusher: Flusher<R>,
}

impl<R> Default for Fanouts<R> {
    fn default() -> Self {
        Fanouts {
            sessions: Mutex::default(),
            tasks: AtomicU64::new(0),
            progress: Notify::new(),
            flusher: Flusher::default(),
        }
    }
}

impl<R> Fanouts<R> {
    /// Notified as events are queued (see [`Self::wait_until`]).
    pub(super) fn progress(&self) -> &Notify {
        &self.progress
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Jobs<R>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<R: Member + Send + Sync + 'static> Fanouts<R> {
    /// Whether the session has jobs (then its next event is one too).
    pub(super) fn busy(&self, session: &str) -> bool {
        self.sessions().contains_key(session)
    }

    /// Hands `job` to the session's task. With none running, returns the
    /// one to [`Self::start`] once the caller let its locks go.
    pub(super) fn push(&self, session: &str, job: Job<R>) -> Option<Start> {
        let mut sessions = self.sessions();
        if let Some(jobs) = sessions.get_mut(session) {
            jobs.waiting.push_back(job);
            return None;
        }
        let task = self.tasks.fetch_add(1, Ordering::Relaxed);
        let jobs = Jobs {
            task,
            waiting: VecDeque::from([job]),
            queueing: None,
        };
        sessions.insert(session.to_owned(), jobs);
        Some(Start {
            session: session.to_owned(),
            task,
        })
    }

    /// Starts the task [`Self::push`] asked for.
    pub(super) fn start(self: &Arc<Self>, start: Start, metrics: &Arc<Metrics>) {
        let Start { session, task } = start;
        tokio::spawn(self.clone().run(session, task, metrics.clone()));
    }

    /// Drops the session's waiting jobs (nobody here subscribes to it any
    /// more); a job under way goes on to its end, and the session's next
    /// events (of subscribers come back meanwhile) are queued after it.
    /// Returns what was dropped, to be let go of outside the caller's
    /// locks (it may hold the last references to thousands of outboxes).
    pub(super) fn forget(&self, session: &str) -> Forgotten<R> {
        let mut sessions = self.sessions();
        let dropped = match sessions.get_mut(session) {
            Some(jobs) if jobs.queueing.is_some() => std::mem::take(&mut jobs.waiting),
            Some(_) => sessions
                .remove(session)
                .map(|jobs| jobs.waiting)
                .unwrap_or_default(),
            None => VecDeque::new(),
        };
        drop(sessions);
        self.progress.notify_waiters();
        Forgotten { _jobs: dropped }
    }

    /// Whether an event of the session at or before `offset` of `epoch`
    /// is still to be queued.
    pub(super) fn pending(&self, session: &str, epoch: &str, offset: u64) -> bool {
        self.sessions().get(session).is_some_and(|jobs| {
            jobs.queueing
                .iter()
                .chain(jobs.waiting.iter().map(|job| &job.position))
                .any(|p| p.epoch == epoch && p.offset <= offset)
        })
    }

    /// Waits until the session has fewer than [`MAX_JOBS`] jobs waiting.
    pub(super) async fn room(&self, session: &str) {
        self.wait_until(|| {
            self.sessions()
                .get(session)
                .is_none_or(|jobs| jobs.waiting.len() < MAX_JOBS)
        })
        .await
    }

    /// Waits until every job handed over so far is done.
    pub(super) async fn settled(&self) {
        self.wait_until(|| self.sessions().is_empty()).await
    }

    /// Waits until `done`, checked again whenever [`Self::progress`] is
    /// notified.
    pub(super) async fn wait_until(&self, done: impl Fn() -> bool) {
        // Most calls find it done (`room` follows every logged delivery):
        // no waiter is registered with `progress` then.
        if done() {
            return;
        }
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if done() {
                return;
            }
            progressed.await;
        }
    }

    /// The session's task: its jobs in order, until none is left (or the
    /// session is forgotten).
    async fn run(self: Arc<Self>, session: String, task: u64, metrics: Arc<Metrics>) {
        // Should the task end early (a panic, the runtime shutting down),
        // its session must not stay busy: the dispatcher would wait for it.
        let mut ended = Ended {
            fanouts: self.clone(),
            session: session.clone(),
            task,
            metrics: metrics.clone(),
            in_flight: false,
        };
        while let Some(job) = self.next_job(&session, task) {
            let Job {
                out,
                recipients,
                departures,
                ..
            } = job;
            let mut recipients = recipients.into_iter();
            let mut last_chunk_queued = None;
            loop {
                let chunk: Vec<Arc<R>> = recipients.by_ref().take(QUEUED_AT_ONCE).collect();
                if chunk.is_empty() {
                    break;
                }
                let (queued, chunk_queued) = oneshot::channel();
                let out = out.clone();
                self.flusher
                    .queue_and_flush(&metrics, move |to_flush, metrics| {
                        for r in chunk {
                            // One that left the session since the event was
                            // handed over is skipped (module docs).
                            if r.left_at() <= departures
                                && R::as_ref(&r).send_deferred(out.clone(), metrics)
                            {
                                to_flush.push(r);
                            }
                        }
                        let _ = queued.send(());
                    });
                ended.in_flight = true;
                last_chunk_queued = Some(chunk_queued);
                // Without the flusher's thread the chunk was queued on
                // this one: the connections woken meanwhile run now.
                tokio::task::yield_now().await;
            }
            // The flusher runs the chunks in order: the event is queued for
            // everyone once its last chunk is. An error: that chunk
            // panicked, and the recipients it had not reached miss the
            // event (the outbox's bounds and flags hold).
            if let Some(queued) = last_chunk_queued {
                let _ = queued.await;
            }
            ended.in_flight = false;
        }
    }

    /// Marks the previous job done and takes the next, or ends the task.
    fn next_job(&self, session: &str, task: u64) -> Option<Job<R>> {
        let mut sessions = self.sessions();
        let next = match sessions.get_mut(session).filter(|jobs| jobs.task == task) {
            Some(jobs) => match jobs.waiting.pop_front() {
                Some(job) => {
                    jobs.queueing = Some(job.position.clone());
                    Some(job)
                }
                None => {
                    sessions.remove(session);
                    None
                }
            },
            None => None,
        };
        drop(sessions);
        self.progress.notify_waiters();
        next
    }
}

/// Removes its task's jobs when the task ends, however it ends: with a
/// chunk still to be queued, after it (the flusher runs it), so the session
/// stays busy (its next events handed over after it) until then.
struct Ended<R: Member + Send + Sync + 'static> {
    fanouts: Arc<Fanouts<R>>,
    session: String,
    task: u64,
    metrics: Arc<Metrics>,
    /// A chunk handed to the flusher may not be queued yet.
    in_flight: bool,
}

impl<R: Member + Send + Sync + 'static> Drop for Ended<R> {
    fn drop(&mut self) {
        if !self.in_flight {
            self.fanouts.end_task(&self.session, self.task);
            return;
        }
        let (fanouts, session, task) = (self.fanouts.clone(), self.session.clone(), self.task);
        self.fanouts
            .flusher
            .queue_and_flush(&self.metrics, move |_, _| fanouts.end_task(&session, task));
    }
}

impl<R> Fanouts<R> {
    /// Removes the session's jobs if `task` still owns them.
    fn end_task(&self, session: &str, task: u64) {
        let mut sessions = self.sessions();
        if sessions.get(session).is_some_and(|jobs| jobs.task == task) {
            let jobs = sessions.remove(session);
            drop(sessions);
            drop(jobs);
            self.progress.notify_waiters();
        }
    }

    /// The flusher, for tests that hold it.
    #[cfg(test)]
    pub(super) fn flusher(&self) -> &Flusher<R> {
        &self.flusher
    }
}
