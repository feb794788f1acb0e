//! The outbox of one connection: the queue of shared, pre-framed frames the
//! hub fills and the connection's transport drains, the wake-up between
//! them, and the request to close.
//!
//! There is no I/O here. The hub hands each recipient a frame (a reference
//! count on shared bytes) and a wake-up, under its own locks at most; only
//! the connection's task writes to its socket
//! (`crate::transport::SocketWriter`), under no shared lock.
//!
//! The queue is bounded in bytes (`OUTBOUND_QUEUE_BYTES`) and in frames
//! (`OUTBOUND_QUEUE_LEN`), counting what was handed over and not yet
//! written, so the writer's batch in flight counts too. A frame that would
//! take it over either bound is refused and asks the connection to close
//! as a slow consumer (1008), instead of buffering without limit. The deque
//! is allocated by the first frame and released when a burst has drained,
//! so an idle connection keeps (almost) no queue memory.
//!
//! A frame may be queued with its wake-up deferred ([`Outbox::send_deferred`])
//! and the connection woken later ([`Outbox::wake_deferred`]): a large
//! session's events are queued at once, in order and under the same bounds,
//! and its connections woken a few at a time (`hub/pacing.rs`). A
//! deferred wake-up is asked for once until it happens, and none is
//! deferred once a quarter of either bound is queued: waiting for its turn
//! must not take a connection towards eviction. The pacer's wake-up comes
//! with a *turn* (a semaphore permit), given back when the connection's
//! task next runs ([`Outbox::register`]): the pacer wakes the next
//! connections once the woken ones ran, so the runtime's queue never holds
//! more than a chunk of one session's writers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Waker;

use futures_util::task::AtomicWaker;
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::Metrics;
use crate::protocol::{CloseReason, Frame, ServerEvent};

/// One queued outgoing message.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Frame,
    /// Message type, for metrics.
    pub kind: &'static str,
    /// When the event was produced (ms since epoch); 0 for direct replies.
    pub produced_at: u64,
}

impl Outbound {
    /// A frame for one connection only (a reply, a control frame), not a
    /// session event: it has no production time.
    pub fn reply(frame: Frame, kind: &'static str) -> Outbound {
        Outbound {
            frame,
            kind,
            produced_at: 0,
        }
    }

    /// [`Self::reply`] of an event, serialized once, of its own kind.
    pub fn event(event: &ServerEvent<'_>) -> Outbound {
        Outbound::reply(event.to_frame(), event.kind())
    }
}

/// [`Outbound::kind`] of control frames (ping, pong, close): not counted
/// as messages sent.
pub const CONTROL: &str = "control";

/// Why [`Outbox::push`] did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The connection is ending.
    Closed,
    /// The frame would overflow the queue: the connection is asked to close
    /// as a slow consumer. `first` if this refusal decided the close reason
    /// (count the eviction once).
    SlowConsumer { first: bool },
}

/// A drained queue keeps at most this many slots (a few hundred bytes); a
/// larger one, left by a burst, is released.
const KEPT_SLOTS: usize = 8;

/// See the module docs. One per connection, shared by the hub's handles to
/// it and the connection's task.
pub struct Outbox {
    close: Mutex<Option<CloseReason>>,
    /// Set (before the wake) when the connection is asked to close; read on
    /// every wake-up, so it is an atomic rather than the mutex above.
    kicked: AtomicBool,
    queue: Mutex<Queue>,
    /// The connection's task, woken when a frame is queued or it is kicked.
    waker: AtomicWaker,
    /// A deferred wake-up was asked for and has not happened yet.
    wake_deferred: AtomicBool,
    /// [`Queue::turn`] holds the pacer's turn: read on every wake-up, so
    /// the queue's lock is only taken when there is one to give back.
    has_turn: AtomicBool,
    /// Bytes and frames handed over and not yet written (or dropped).
    queued_bytes: AtomicUsize,
    queued_frames: AtomicUsize,
    max_queued_bytes: usize,
    max_queued_frames: usize,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    /// The connection ended: frames are refused.
    closed: bool,
    /// A frame was refused for want of room: later ones are refused too,
    /// even once the writer made room, so the client never gets an event
    /// after one it missed (it resumes from the last one it got).
    overflowed: bool,
    /// The pacer's turn, held from its wake-up until the task runs.
    turn: Option<OwnedSemaphorePermit>,
}

impl Outbox {
    /// At most `max_queued_frames` frames and `max_queued_bytes` bytes of
    /// frames may wait to be written.
    pub fn new(max_queued_frames: usize, max_queued_bytes: usize) -> Self {
        Outbox {
            close: Mutex::new(None),
            kicked: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            wake_deferred: AtomicBool::new(false),
            has_turn: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
            queued_frames: AtomicUsize::new(0),
            max_queued_bytes,
            max_queued_frames,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame and wakes the connection's task. Never blocks, never
    /// writes.
    pub fn push(&self, out: Outbound) -> Result<(), Refused> {
        self.queue_frame(out)?;
        self.waker.wake();
        Ok(())
    }

    /// Queues a frame without waking the connection's task; true if it is
    /// a quarter of the way to either bound after it.
    fn queue_frame(&self, out: Outbound) -> Result<bool, Refused> {
        let len = out.frame.len();
        let mut queue = self.queue();
        if queue.closed {
            return Err(Refused::Closed);
        }
        if queue.overflowed {
            return Err(Refused::SlowConsumer { first: false });
        }
        let bytes = self
            .queued_bytes
            .load(Ordering::Acquire)
            .saturating_add(len);
        let frames = self.queued_frames.load(Ordering::Acquire) + 1;
        if bytes > self.max_queued_bytes || frames > self.max_queued_frames {
            queue.overflowed = true;
            drop(queue);
            let first = self.disconnect(CloseReason::SlowConsumer);
            return Err(Refused::SlowConsumer { first });
        }
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        self.queued_frames.fetch_add(1, Ordering::AcqRel);
        queue.frames.push_back(out);
        Ok(frames >= self.max_queued_frames.div_ceil(4)
            || bytes >= self.max_queued_bytes.div_ceil(4))
    }

    /// [`Self::push`], counting an eviction (1008) once, in the connection
    /// the frame would have overflowed. False if the frame was not taken.
    pub fn send(&self, out: Outbound, metrics: &Metrics) -> bool {
        counted(self.push(out), metrics).is_some()
    }

    /// [`Self::send`] with the wake-up deferred: true if the caller is to
    /// call [`Self::wake_deferred`] later. False if the frame was refused,
    /// if a deferred wake-up is already due (it will find this frame too),
    /// or if the queue is a quarter full, when the task is woken at once.
    pub fn send_deferred(&self, out: Outbound, metrics: &Metrics) -> bool {
        match counted(self.queue_frame(out), metrics) {
            None => false,
            Some(true) => {
                self.waker.wake();
                false
            }
            // The frame is queued before: the wake-up that clears the flag
            // finds it, and a later frame asks again.
            Some(false) => !self.wake_deferred.swap(true, Ordering::AcqRel),
        }
    }

    /// The deferred wake-up [`Self::send_deferred`] asked for, holding the
    /// pacer's `turn` until the task runs (dropped at once if the
    /// connection ended). Cleared before the wake: a frame queued after it
    /// asks again.
    pub fn wake_deferred(&self, turn: OwnedSemaphorePermit) {
        let previous = {
            let mut queue = self.queue();
            if queue.closed {
                Some(turn)
            } else {
                self.has_turn.store(true, Ordering::Release);
                queue.turn.replace(turn)
            }
        };
        // Given back outside the lock: it may wake the pacer.
        drop(previous);
        self.wake_deferred.store(false, Ordering::Release);
        self.waker.wake();
    }

    /// Gives back the pacer's turn, if held. On every poll of the
    /// connection's task: a load, the lock only when there is a turn.
    fn end_turn(&self) {
        if self.has_turn.load(Ordering::Acquire) {
            let turn = self.take_turn(&mut self.queue());
            drop(turn);
        }
    }

    /// The pacer's turn, taken out under the queue's lock (`wake_deferred`
    /// stores it under it), to be given back once the lock is let go: that
    /// may wake the pacer.
    fn take_turn(&self, queue: &mut Queue) -> Option<OwnedSemaphorePermit> {
        self.has_turn.store(false, Ordering::Release);
        queue.turn.take()
    }

    /// Moves every queued frame to the end of `into` (the writer's batch);
    /// they stay counted until [`Self::dequeued`].
    pub fn take_into(&self, into: &mut VecDeque<Outbound>) {
        let mut queue = self.queue();
        if queue.frames.is_empty() {
            return;
        }
        into.append(&mut queue.frames);
        if queue.frames.capacity() > KEPT_SLOTS {
            queue.frames = VecDeque::new();
        }
    }

    /// The next queued frame, if any (for a writer that takes frames one
    /// at a time); it stays counted until [`Self::dequeued`].
    pub fn next_frame(&self) -> Option<Outbound> {
        let mut queue = self.queue();
        let out = queue.frames.pop_front();
        if queue.frames.is_empty() && queue.frames.capacity() > KEPT_SLOTS {
            queue.frames = VecDeque::new();
        }
        out
    }

    /// The writer is done with `frames` frames of `bytes` bytes (written or
    /// dropped).
    pub fn dequeued(&self, bytes: usize, frames: usize) {
        if frames > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.queued_frames.fetch_sub(frames, Ordering::AcqRel);
        }
    }

    /// The connection ends: later frames are refused. Frames still queued
    /// are dropped unless `keep_queued`; `last` (the close frame) is queued
    /// after them whatever the bounds.
    pub fn close(&self, keep_queued: bool, last: Option<Outbound>) {
        let mut queue = self.queue();
        queue.closed = true;
        // Under the lock that `wake_deferred` checks `closed` under: no
        // turn is stored after this one is given back.
        let turn = self.take_turn(&mut queue);
        if !keep_queued {
            let dropped = std::mem::take(&mut queue.frames);
            self.dequeued(dropped.iter().map(|o| o.frame.len()).sum(), dropped.len());
        }
        if let Some(out) = last {
            self.queued_bytes
                .fetch_add(out.frame.len(), Ordering::AcqRel);
            self.queued_frames.fetch_add(1, Ordering::AcqRel);
            queue.frames.push_back(out);
        }
        drop(queue);
        drop(turn);
    }

    /// Bytes handed over and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// How many more frames the queue takes right now (the frame cap; the
    /// byte bound still applies to each frame).
    pub fn room(&self) -> usize {
        self.max_queued_frames
            .saturating_sub(self.queued_frames.load(Ordering::Acquire))
    }

    /// The connection's task is woken by the next [`Self::push`] or
    /// [`Self::disconnect`]. Call it before looking at the queue and at
    /// [`Self::is_kicked`], so nothing slips in between unseen. The task
    /// runs: the pacer's turn, if held, is given back.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
        self.end_turn();
    }

    /// Asks the connection to close; the first reason given wins. True if
    /// this call decided the reason.
    pub fn disconnect(&self, reason: CloseReason) -> bool {
        let first = {
            let mut slot = self.close.lock().unwrap_or_else(|p| p.into_inner());
            let first = slot.is_none();
            slot.get_or_insert(reason);
            first
        };
        self.kicked.store(true, Ordering::Release);
        self.waker.wake();
        first
    }

    /// The connection was asked to close ([`Self::disconnect`]).
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a push returned if it took its frame, counting an eviction the
/// first time.
fn counted<T>(pushed: Result<T, Refused>, metrics: &Metrics) -> Option<T> {
    match pushed {
        Ok(taken) => Some(taken),
        Err(Refused::SlowConsumer { first: true }) => {
            metrics.slow_consumer_disconnects.inc();
            None
        }
        Err(_) => None,
    }
}

/// A waker counting its wake-ups: a connection's task, for tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct WakeCount(AtomicUsize);

#[cfg(test)]
impl WakeCount {
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
impl std::task::Wake for WakeCount {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(text: &str) -> Outbound {
        Outbound::reply(text.into(), "broadcast")
    }

    fn texts(frames: &VecDeque<Outbound>) -> Vec<&str> {
        frames.iter().map(|o| o.frame.as_str()).collect()
    }

    #[test]
    fn frames_come_out_in_order_and_leave_the_counts_when_dequeued() {
        let outbox = Outbox::new(10, 100);
        outbox.push(frame("one")).unwrap();
        outbox.push(frame("two")).unwrap();
        assert_eq!((outbox.queued_bytes(), outbox.room()), (6, 8));
        let mut batch = VecDeque::new();
        outbox.take_into(&mut batch);
        assert_eq!(texts(&batch), ["one", "two"]);
        assert_eq!(outbox.room(), 8, "taken frames count until written");
        outbox.dequeued(6, 2);
        assert_eq!((outbox.queued_bytes(), outbox.room()), (0, 10));
        assert!(!outbox.is_kicked());
    }

    #[test]
    fn the_byte_bound_and_the_frame_cap_each_ask_once_for_a_1008_close() {
        let by_bytes = Outbox::new(10, 5);
        by_bytes.push(frame("12345")).unwrap();
        assert_eq!(
            by_bytes.push(frame("6")),
            Err(Refused::SlowConsumer { first: true })
        );
        assert_eq!(
            by_bytes.push(frame("7")),
            Err(Refused::SlowConsumer { first: false })
        );
        assert!(by_bytes.is_kicked());
        assert_eq!(by_bytes.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(by_bytes.queued_bytes(), 5, "refused frames are not counted");

        let by_frames = Outbox::new(1, 100);
        by_frames.push(frame("a")).unwrap();
        assert_eq!(
            by_frames.push(frame("b")),
            Err(Refused::SlowConsumer { first: true })
        );
    }

    #[test]
    fn after_a_refused_frame_no_later_frame_is_taken_even_once_there_is_room() {
        let outbox = Outbox::new(10, 5);
        outbox.push(frame("12345")).unwrap();
        assert!(outbox.push(frame("678")).is_err());
        // The writer wrote the first frame: there is room again, but
        // taking the next event would skip the refused one.
        assert_eq!(outbox.next_frame().map(|o| o.frame), Some("12345".into()));
        outbox.dequeued(5, 1);
        assert_eq!(
            outbox.push(frame("9")),
            Err(Refused::SlowConsumer { first: false })
        );
        assert!(outbox.next_frame().is_none());
    }

    #[test]
    fn a_closed_outbox_refuses_frames_and_queues_the_close_frame_last() {
        let outbox = Outbox::new(1, 100);
        outbox.push(frame("kept")).unwrap();
        outbox.close(true, Some(frame("bye")));
        assert_eq!(outbox.push(frame("late")), Err(Refused::Closed));
        assert_eq!(outbox.close_reason(), None);
        assert_eq!(outbox.queued_bytes(), 7, "the close frame passes the cap");
        assert_eq!(outbox.next_frame().map(|o| o.frame), Some("kept".into()));
        assert_eq!(outbox.next_frame().map(|o| o.frame), Some("bye".into()));

        let dropping = Outbox::new(10, 100);
        dropping.push(frame("dropped")).unwrap();
        dropping.close(false, None);
        assert_eq!(dropping.queued_bytes(), 0);
        assert!(dropping.next_frame().is_none());
    }

    #[test]
    fn the_first_close_reason_wins() {
        let outbox = Outbox::new(10, 100);
        assert!(outbox.disconnect(CloseReason::TokenExpired));
        assert!(!outbox.disconnect(CloseReason::ShuttingDown));
        assert!(outbox.is_kicked());
        assert_eq!(outbox.close_reason(), Some(CloseReason::TokenExpired));
    }

    /// A deferred wake-up is asked for once until it happens; past a
    /// quarter of the bounds the task is woken at once instead: waiting
    /// for the pacer must not take a connection towards eviction.
    #[test]
    fn a_deferred_wake_up_is_asked_for_once_and_not_past_a_quarter_of_the_bounds() {
        let metrics = Metrics::new("i");
        let outbox = Outbox::new(12, 1 << 20);
        let woken = Arc::new(WakeCount::default());
        outbox.register(&Waker::from(woken.clone()));
        assert!(outbox.send_deferred(frame("1"), &metrics), "list it");
        assert!(
            !outbox.send_deferred(frame("2"), &metrics),
            "listed already"
        );
        assert_eq!(woken.count(), 0);
        assert!(
            !outbox.send_deferred(frame("3"), &metrics),
            "3 of 12 frames"
        );
        assert_eq!(woken.count(), 1, "woken at once");

        let by_bytes = Outbox::new(100, 40);
        by_bytes.register(&Waker::from(woken.clone()));
        assert!(by_bytes.send_deferred(frame("123456789"), &metrics));
        by_bytes.wake_deferred(
            Arc::new(tokio::sync::Semaphore::new(1))
                .try_acquire_owned()
                .unwrap(),
        );
        assert_eq!(woken.count(), 2);
        by_bytes.register(&Waker::from(woken.clone()));
        assert!(
            !by_bytes.send_deferred(frame("0123456789"), &metrics),
            "19 of 40 bytes"
        );
        assert_eq!(woken.count(), 3);
    }

    /// A turn handed to a closed outbox, or held when it closes, is given
    /// back at once: nothing would run to give it back later.
    #[test]
    fn a_closed_outbox_gives_the_pacers_turn_back() {
        let turns = Arc::new(tokio::sync::Semaphore::new(2));
        let outbox = Outbox::new(10, 100);
        outbox.wake_deferred(turns.clone().try_acquire_owned().unwrap());
        assert_eq!(turns.available_permits(), 1, "held until the task runs");
        outbox.close(false, None);
        assert_eq!(turns.available_permits(), 2);
        outbox.wake_deferred(turns.clone().try_acquire_owned().unwrap());
        assert_eq!(turns.available_permits(), 2);
    }
}
