//! The outbox of one connection: the queue of shared, pre-framed frames the
//! hub fills and the connection's transport drains, the wake-up between
//! them, and the request to close.
//!
//! There is no I/O here. The hub hands each recipient a frame (a reference
//! count on shared bytes) and a wake-up, under its own locks at most; the
//! transport's write half (`crate::transport::SharedWriter`) writes to the
//! socket, holding no lock but its own: from the connection's task, or
//! from the [`Flusher`]'s thread when the task is not writing.
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
//! and the connection flushed later ([`Outbox::flush_deferred`]): a large
//! session's events are queued and its connections' frames written by the
//! [`Flusher`]'s thread, in order and under the same bounds, rather than by
//! the runtime's worker threads, which stay free for the other sessions'
//! connections. For that the transport *attaches* its
//! write half ([`DirectWrite`]) to the outbox; the flusher uses it only when
//! the connection's task is not writing, and never waits on the socket: a
//! socket that does not take everything, or a writer busy elsewhere, gets
//! its task woken instead. A deferred flush is asked for once until it
//! happens, and none is deferred once a quarter of either bound is queued:
//! waiting for the flusher must not take a connection towards eviction.

mod flusher;

pub use flusher::Flusher;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

use futures_util::task::AtomicWaker;

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
    /// A deferred flush was asked for and has not happened yet.
    flush_deferred: AtomicBool,
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
    /// The transport's write half, for the flusher; held weakly (the
    /// connection's task owns it: it ends with the task), and let go of
    /// when the queue closes.
    direct: Option<Weak<dyn DirectWrite>>,
}

/// The write half of a connection as the [`Flusher`] uses it.
pub trait DirectWrite: Send + Sync {
    /// Writes what `outbox` holds now, without waiting and without taking
    /// the socket's readiness wake-up from the connection's task. True if
    /// the task has nothing to do for it: everything queued was written, or
    /// what is left waits for the socket, whose readiness wakes the task.
    /// False (the task is woken) otherwise: the task was writing or asked
    /// to meanwhile, the socket filled first here, the write failed, or
    /// this flush wrote its share of bytes.
    fn write_now(&self, outbox: &Outbox, metrics: &Metrics) -> bool;
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
            flush_deferred: AtomicBool::new(false),
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
    /// have it flushed later ([`Self::flush_deferred`]). False if the frame
    /// was refused, if a flush is already due (it will find this frame
    /// too), or if the queue is a quarter full, when the task is woken at
    /// once.
    pub fn send_deferred(&self, out: Outbound, metrics: &Metrics) -> bool {
        match counted(self.queue_frame(out), metrics) {
            None => false,
            Some(true) => {
                self.waker.wake();
                false
            }
            // The frame is queued before: the flush that clears the flag
            // finds it, and a later frame asks again.
            Some(false) => !self.flush_deferred.swap(true, Ordering::AcqRel),
        }
    }

    /// The flush [`Self::send_deferred`] asked for: the queued frames are
    /// written through the attached write half, and the connection's task
    /// woken if that leaves it something to do ([`DirectWrite::write_now`])
    /// or if there is none. The flag is cleared first: a frame queued
    /// meanwhile asks again.
    pub fn flush_deferred(&self, metrics: &Metrics) {
        self.flush_deferred.store(false, Ordering::Release);
        let direct = self.queue().direct.as_ref().and_then(Weak::upgrade);
        if !direct.is_some_and(|d| d.write_now(self, metrics)) {
            self.waker.wake();
        }
    }

    /// [`Self::flush_deferred`] left to the connection's task.
    pub fn wake_deferred(&self) {
        self.flush_deferred.store(false, Ordering::Release);
        self.waker.wake();
    }

    /// Lets the flusher write through `direct` until the queue closes or
    /// `direct` is dropped.
    pub fn attach<D: DirectWrite + 'static>(&self, direct: &Arc<D>) {
        let weak: Weak<D> = Arc::downgrade(direct);
        let mut queue = self.queue();
        if !queue.closed {
            queue.direct = Some(weak);
        }
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
        // The task writes the rest and the close frame (a flush under way
        // may write some of it, in order: they share the write half).
        let direct = queue.direct.take();
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
        drop(direct);
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
    /// [`Self::is_kicked`], so nothing slips in between unseen.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
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

    /// The task runs: it registers its waker with `outbox`, as every poll
    /// does (a wake-up takes the waker registered before it).
    pub(crate) fn runs(self: &std::sync::Arc<Self>, outbox: &Outbox) {
        outbox.register(&Waker::from(self.clone()));
    }

    /// A new connection task of `outbox`, registered.
    pub(crate) fn watching(outbox: &Outbox) -> Arc<Self> {
        let task = Arc::new(WakeCount::default());
        task.runs(outbox);
        task
    }
}

/// Waits (blocking the thread) until `done`, panicking after 10 s: for
/// tests that watch the flusher's thread.
#[cfg(test)]
pub(crate) fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
impl std::task::Wake for WakeCount {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A write half that takes every queued frame unless `refusing` (as a full
/// socket, or a task writing, would): a connection's transport, for tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct RecordingWrite {
    pub(crate) refusing: AtomicBool,
    pub(crate) frames: Mutex<Vec<String>>,
    pub(crate) writes: AtomicUsize,
}

#[cfg(test)]
impl DirectWrite for RecordingWrite {
    fn write_now(&self, outbox: &Outbox, _: &Metrics) -> bool {
        if self.refusing.load(Ordering::Relaxed) {
            return false;
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        while let Some(out) = outbox.next_frame() {
            outbox.dequeued(out.frame.len(), 1);
            let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
            frames.push(out.frame.as_str().to_owned());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A deferred flush is asked for once until it happens; past a
    /// quarter of the bounds the task is woken at once instead: waiting
    /// for the flusher must not take a connection towards eviction.
    #[test]
    fn a_deferred_flush_is_asked_for_once_and_not_past_a_quarter_of_the_bounds() {
        let metrics = Metrics::new("i");
        let outbox = Outbox::new(12, 1 << 20);
        let woken = WakeCount::watching(&outbox);
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
        woken.runs(&by_bytes);
        assert!(by_bytes.send_deferred(frame("12345"), &metrics));
        by_bytes.flush_deferred(&metrics);
        assert_eq!(woken.count(), 2, "no write half attached: the task writes");
        woken.runs(&by_bytes);
        assert!(by_bytes.send_deferred(frame("1"), &metrics), "asked again");
        assert!(
            !by_bytes.send_deferred(frame("0123456789"), &metrics),
            "16 of 40 bytes"
        );
        assert_eq!(woken.count(), 3);
    }

    /// A flush writes through the attached write half and leaves the task
    /// asleep; a write half that cannot take it all gets the task woken, and
    /// once the queue closes the task alone writes.
    #[test]
    fn a_flush_writes_directly_and_wakes_the_task_only_when_that_falls_short() {
        let metrics = Metrics::new("i");
        let outbox = Outbox::new(12, 1 << 20);
        let woken = WakeCount::watching(&outbox);
        let direct = Arc::new(RecordingWrite::default());
        outbox.attach(&direct);
        assert!(outbox.send_deferred(frame("1"), &metrics));
        assert!(!outbox.send_deferred(frame("2"), &metrics));
        outbox.flush_deferred(&metrics);
        assert_eq!(*direct.frames.lock().unwrap(), ["1", "2"]);
        assert_eq!((woken.count(), outbox.queued_bytes()), (0, 0));

        direct.refusing.store(true, Ordering::Relaxed);
        assert!(outbox.send_deferred(frame("3"), &metrics), "asked again");
        outbox.flush_deferred(&metrics);
        assert_eq!(woken.count(), 1, "the socket was full: the task writes");
        assert_eq!(outbox.next_frame().map(|o| o.frame), Some("3".into()));
        outbox.dequeued(1, 1);
        woken.runs(&outbox);

        direct.refusing.store(false, Ordering::Relaxed);
        outbox.close(true, Some(frame("bye")));
        assert_eq!(Arc::weak_count(&direct), 0, "let go of at close");
        outbox.flush_deferred(&metrics);
        assert_eq!(woken.count(), 2);
        assert_eq!(direct.frames.lock().unwrap().len(), 2);
        assert_eq!(outbox.next_frame().map(|o| o.frame), Some("bye".into()));

        let closed = Outbox::new(12, 1 << 20);
        closed.close(false, None);
        closed.attach(&direct);
        assert_eq!(Arc::weak_count(&direct), 0, "not attached once closed");

        // The write half ends with the connection's task.
        let ended = Outbox::new(12, 1 << 20);
        woken.runs(&ended);
        ended.attach(&Arc::new(RecordingWrite::default()));
        assert!(ended.send_deferred(frame("4"), &metrics));
        ended.flush_deferred(&metrics);
        assert_eq!(woken.count(), 3);
    }
}
