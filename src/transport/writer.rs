//! The write half of a WebSocket connection: drains the connection's
//! [`Outbox`] into its socket. The connection's task writes, and so does
//! the outbox's flusher thread ([`DirectWrite`]) for a large fan-out's
//! frames: the two share the write half ([`SharedWriter`]), which only
//! this connection's writers ever lock, and neither waits for the other:
//! the flusher gives up when the task writes, and the task, finding the
//! flusher writing, is woken by it when it is done. The writer takes the
//! queued frames into its own batch (one short lock of the outbox's
//! queue), then writes the batch with `writev`.
//!
//! Frames never interleave: a frame the socket took in part is finished
//! before anything else, the close frame included.
//!
//! The socket is written directly (not through hyper's upgraded I/O, which
//! tungstenite reads): `writev` of the shared frames, with no copy into a
//! write buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::outbox::{CONTROL, DirectWrite, Outbound, Outbox};
use crate::protocol::{Frame, now_millis};

/// A socket written through `&self` without blocking (tokio's `TcpStream`).
pub trait NonBlockingWrite: Send + Sync {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl NonBlockingWrite for TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }
}

/// At most this many frames go into one `writev`.
const MAX_IOV: usize = 64;

/// At most this many bytes are written per [`SocketWriter::poll_write`]
/// (or flush) before the connection yields to the others.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// A batch that held more slots than this is released once written.
const KEPT_SLOTS: usize = 8;

/// See the module docs.
pub struct SocketWriter<S = TcpStream> {
    socket: Arc<S>,
    /// Frames taken from the outbox and not yet (wholly) written.
    batch: VecDeque<Outbound>,
    /// Bytes of the batch's first frame already written.
    head_written: usize,
    /// The task waits for the socket to drain (it registered for its
    /// write readiness): a flusher that finds it full need not wake it.
    awaiting_writable: bool,
}

impl<S: NonBlockingWrite> SocketWriter<S> {
    pub fn new(socket: Arc<S>) -> Self {
        SocketWriter {
            socket,
            batch: VecDeque::new(),
            head_written: 0,
            awaiting_writable: false,
        }
    }

    /// Writes what the outbox holds: Ready when it is empty, Pending when
    /// the socket is full (the task is woken when it drains) or after
    /// [`MAX_BATCH_BYTES`] (woken at once, so the other connections get
    /// their turn).
    pub fn poll_write(
        &mut self,
        outbox: &Outbox,
        cx: &mut Context<'_>,
        metrics: &Metrics,
    ) -> Poll<io::Result<()>> {
        self.awaiting_writable = false;
        loop {
            match self.write_some(outbox, metrics)? {
                Written::All => return Poll::Ready(Ok(())),
                Written::Budget => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Written::Blocked => {
                    let Poll::Ready(ready) = self.socket.poll_write_ready(cx) else {
                        self.awaiting_writable = true;
                        return Poll::Pending;
                    };
                    ready?;
                }
            }
        }
    }

    /// Writes what the outbox holds until it is empty, the socket is full
    /// or [`MAX_BATCH_BYTES`] went out; never waits.
    fn write_some(&mut self, outbox: &Outbox, metrics: &Metrics) -> io::Result<Written> {
        let mut now = None;
        let mut total = 0;
        loop {
            if self.batch.len() < MAX_IOV {
                outbox.take_into(&mut self.batch);
            }
            if self.batch.is_empty() {
                if self.batch.capacity() > KEPT_SLOTS {
                    self.batch = VecDeque::new();
                }
                return Ok(Written::All);
            }
            if total >= MAX_BATCH_BYTES {
                return Ok(Written::Budget);
            }
            let result = {
                let mut bufs = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                let mut offset = self.head_written;
                for out in self.batch.iter().take(MAX_IOV) {
                    bufs[n] = IoSlice::new(&out.frame.wire()[offset..]);
                    offset = 0;
                    n += 1;
                }
                self.socket.try_write_vectored(&bufs[..n])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    self.advance(n, outbox, metrics, &mut now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Written::Blocked),
                Err(e) => return Err(e),
            }
        }
    }

    /// `n` bytes of the batch were written: the frames done leave it and
    /// the outbox's counts.
    fn advance(&mut self, mut n: usize, outbox: &Outbox, metrics: &Metrics, now: &mut Option<u64>) {
        let (mut bytes, mut frames) = (0, 0);
        while n > 0 {
            let Some(head) = self.batch.front() else {
                break;
            };
            let rest = head.frame.wire().len() - self.head_written;
            if n < rest {
                self.head_written += n;
                break;
            }
            n -= rest;
            self.head_written = 0;
            if let Some(out) = self.batch.pop_front() {
                bytes += out.frame.len();
                frames += 1;
                written(&out, metrics, now);
            }
        }
        outbox.dequeued(bytes, frames);
    }

    /// The connection ends: the outbox refuses later frames, `close` (the
    /// close frame) goes out last, and what was queued before it is dropped
    /// unless `deliver_queued` (the rest of a partly written frame always
    /// goes out first). Write it with [`Self::poll_write`], then
    /// [`Self::detach`].
    pub fn finish(&mut self, outbox: &Outbox, close: Option<Frame>, deliver_queued: bool) {
        if !deliver_queued {
            let keep = usize::from(self.head_written > 0);
            self.drop_batch(outbox, keep);
        }
        outbox.close(deliver_queued, close.map(|f| Outbound::reply(f, CONTROL)));
    }

    /// Lets go of what was never written; it leaves the outbox's counts.
    pub fn detach(&mut self, outbox: &Outbox) {
        outbox.close(false, None);
        self.drop_batch(outbox, 0);
        self.head_written = 0;
        self.batch = VecDeque::new();
    }

    fn drop_batch(&mut self, outbox: &Outbox, keep: usize) {
        let keep = keep.min(self.batch.len());
        let dropped: Vec<_> = self.batch.drain(keep..).collect();
        outbox.dequeued(dropped.iter().map(|o| o.frame.len()).sum(), dropped.len());
    }
}

/// How far [`SocketWriter::write_some`] got.
enum Written {
    /// The outbox is empty.
    All,
    /// The socket is full.
    Blocked,
    /// [`MAX_BATCH_BYTES`] went out; there may be more.
    Budget,
}

/// The write half shared by the connection's task and the outbox's
/// flusher (module docs).
pub struct SharedWriter<S = TcpStream> {
    writer: Mutex<SocketWriter<S>>,
    /// The task found the flusher writing: the flusher wakes it when done.
    task_waits: AtomicBool,
}

impl<S: NonBlockingWrite> SharedWriter<S> {
    pub fn new(socket: Arc<S>) -> Self {
        SharedWriter {
            writer: Mutex::new(SocketWriter::new(socket)),
            task_waits: AtomicBool::new(false),
        }
    }

    /// The task's [`SocketWriter::poll_write`]. It never waits for the
    /// flusher (a worker thread blocked on it would hold up every task
    /// queued behind): Pending while the flusher writes, which wakes the
    /// task when done.
    pub fn poll_write(
        &self,
        outbox: &Outbox,
        cx: &mut Context<'_>,
        metrics: &Metrics,
    ) -> Poll<io::Result<()>> {
        let mut writer = match self.try_lock() {
            Some(writer) => writer,
            None => {
                self.task_waits.store(true, Ordering::SeqCst);
                // Paired with the flusher's: either it sees the flag after
                // it let go, or this sees the write half free.
                fence(Ordering::SeqCst);
                let Some(writer) = self.try_lock() else {
                    return Poll::Pending;
                };
                self.task_waits.store(false, Ordering::Relaxed);
                writer
            }
        };
        writer.poll_write(outbox, cx, metrics)
    }

    /// [`SocketWriter::finish`], once the flusher's write (if any) is done.
    pub fn finish(&self, outbox: &Outbox, close: Option<Frame>, deliver_queued: bool) {
        self.lock().finish(outbox, close, deliver_queued);
    }

    /// [`SocketWriter::detach`], once the flusher's write (if any) is done.
    pub fn detach(&self, outbox: &Outbox) {
        self.lock().detach(outbox);
    }

    fn try_lock(&self) -> Option<MutexGuard<'_, SocketWriter<S>>> {
        match self.writer.try_lock() {
            Ok(writer) => Some(writer),
            // Each write is accounted for as it returns: a poisoned writer
            // is consistent.
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SocketWriter<S>> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The flusher writes only while the connection's task does not, and
/// leaves waiting on a full socket to the task: it never registers for the
/// socket's readiness, which would take that wake-up from the task.
impl<S: NonBlockingWrite> DirectWrite for SharedWriter<S> {
    fn write_now(&self, outbox: &Outbox, metrics: &Metrics) -> bool {
        let Some(mut writer) = self.try_lock() else {
            return false;
        };
        let done = match writer.write_some(outbox, metrics) {
            Ok(Written::All) => true,
            // The socket's readiness wakes the task already.
            Ok(Written::Blocked) => writer.awaiting_writable,
            Ok(Written::Budget) | Err(_) => false,
        };
        drop(writer);
        fence(Ordering::SeqCst);
        // The task found the write half busy meanwhile: it writes next.
        let task_waits = self.task_waits.swap(false, Ordering::SeqCst);
        done && !task_waits
    }
}

/// Half-closes the socket (FIN), as `TcpStream`'s own `poll_shutdown`.
pub fn shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        done => done,
    }
}

/// A frame went out: counted, and an event's delivery latency observed
/// (one clock read per batch).
fn written(out: &Outbound, metrics: &Metrics, now: &mut Option<u64>) {
    if out.kind == CONTROL {
        return;
    }
    metrics.message_sent(out.kind);
    if out.produced_at > 0 {
        let now = *now.get_or_insert_with(now_millis);
        let latency_ms = now.saturating_sub(out.produced_at);
        metrics
            .broadcast_latency
            .observe(latency_ms as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::protocol::CloseReason;

    /// A socket that takes at most `room` more bytes, then WouldBlock.
    #[derive(Default)]
    struct FakeSocket {
        room: Mutex<usize>,
        got: Mutex<Vec<u8>>,
    }

    impl FakeSocket {
        fn open(&self, bytes: usize) {
            *self.room.lock().unwrap() = bytes;
        }
    }

    impl NonBlockingWrite for FakeSocket {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(*room - n);
                self.got.lock().unwrap().extend_from_slice(&b[..take]);
                n += take;
            }
            *room -= n;
            Ok(n)
        }

        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if *self.room.lock().unwrap() > 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    fn frame(text: &str) -> Outbound {
        Outbound::reply(text.into(), "broadcast")
    }

    /// The task's poll of its write half.
    fn poll(
        writer: &SharedWriter<FakeSocket>,
        outbox: &Outbox,
        metrics: &Metrics,
    ) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        writer.poll_write(outbox, &mut cx, metrics)
    }

    /// A connection's outbox (`max_frames`, `max_bytes`) and its write half
    /// on a socket that takes nothing yet.
    fn connection(
        max_frames: usize,
        max_bytes: usize,
    ) -> (Metrics, Outbox, Arc<FakeSocket>, SharedWriter<FakeSocket>) {
        let socket = Arc::new(FakeSocket::default());
        let writer = SharedWriter::new(socket.clone());
        (
            Metrics::new("i"),
            Outbox::new(max_frames, max_bytes),
            socket,
            writer,
        )
    }

    #[test]
    fn a_partly_written_frame_is_finished_before_the_close_frame() {
        let (metrics, outbox, socket, writer) = connection(10, 100);
        socket.open(1000);
        outbox.push(frame("one")).unwrap();
        assert!(poll(&writer, &outbox, &metrics).is_ready());
        assert_eq!(outbox.queued_bytes(), 0, "written and uncounted");
        // The socket takes 3 bytes of "two" (2 header + "t"), then is full.
        socket.open(3);
        outbox.push(frame("two")).unwrap();
        outbox.push(frame("three")).unwrap();
        assert!(poll(&writer, &outbox, &metrics).is_pending());
        assert_eq!(outbox.queued_bytes(), 8);
        // The kick keeps the rest of the torn frame, drops the others, and
        // the close frame follows it.
        outbox.disconnect(CloseReason::SlowConsumer);
        writer.finish(&outbox, Some(Frame::close(1008, "x")), false);
        socket.open(1000);
        assert!(poll(&writer, &outbox, &metrics).is_ready());
        assert_eq!(
            socket.got.lock().unwrap().as_slice(),
            b"\x81\x03one\x81\x03two\x88\x03\x03\xf0x"
        );
        assert!(outbox.push(frame("late")).is_err());
        writer.detach(&outbox);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn a_socket_that_takes_nothing_leaves_frames_queued_and_in_order() {
        let (metrics, outbox, socket, writer) = connection(10, 8);
        outbox.push(frame("1234")).unwrap();
        assert!(poll(&writer, &outbox, &metrics).is_pending());
        outbox.push(frame("5678")).unwrap();
        assert!(outbox.push(frame("9")).is_err(), "the batch still counts");
        assert_eq!(outbox.close_reason(), Some(CloseReason::SlowConsumer));
        socket.open(1000);
        assert!(poll(&writer, &outbox, &metrics).is_ready());
        assert_eq!(
            socket.got.lock().unwrap().as_slice(),
            b"\x81\x041234\x81\x045678"
        );
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn shutdown_delivers_what_was_queued_before_the_close_frame() {
        let (metrics, outbox, socket, writer) = connection(10, 100);
        outbox.push(frame("a")).unwrap();
        writer.finish(&outbox, Some(Frame::close(1001, "")), true);
        socket.open(1000);
        assert!(poll(&writer, &outbox, &metrics).is_ready());
        assert_eq!(
            socket.got.lock().unwrap().as_slice(),
            b"\x81\x01a\x88\x02\x03\xe9"
        );
    }

    /// The flusher writes through the task's write half: a frame it wrote
    /// in part is finished, in order, by whoever writes next; it gives up
    /// (false, so the task is woken) on a full socket and while the task
    /// holds the write half.
    #[test]
    fn the_flusher_and_the_task_share_one_write_half_and_its_torn_frame() {
        let (metrics, outbox, socket, writer) = connection(10, 100);
        socket.open(1000);
        outbox.push(frame("one")).unwrap();
        assert!(writer.write_now(&outbox, &metrics));
        assert_eq!(outbox.queued_bytes(), 0);

        socket.open(3);
        outbox.push(frame("two")).unwrap();
        assert!(!writer.write_now(&outbox, &metrics), "the socket is full");
        socket.open(1000);
        {
            let _task_writes = writer.lock();
            assert!(!writer.write_now(&outbox, &metrics), "the task writes");
        }
        outbox.push(frame("three")).unwrap();
        assert!(poll(&writer, &outbox, &metrics).is_ready());
        assert_eq!(
            socket.got.lock().unwrap().as_slice(),
            b"\x81\x03one\x81\x03two\x81\x05three"
        );
        assert_eq!(outbox.queued_bytes(), 0);
    }

    /// The task never waits for the flusher: finding it writing, the task
    /// is told to write again once the flusher let go, and a flusher that
    /// finds the socket full leaves the task asleep only if the socket's
    /// readiness is to wake it.
    #[test]
    fn a_task_that_found_the_flusher_writing_is_woken_after_it() {
        let (metrics, outbox, socket, writer) = connection(10, 100);
        socket.open(1000);
        {
            let _flusher_writes = writer.lock();
            outbox.push(frame("one")).unwrap();
            assert!(poll(&writer, &outbox, &metrics).is_pending());
        }
        assert!(!writer.write_now(&outbox, &metrics), "wake the task");
        assert!(writer.write_now(&outbox, &metrics), "told once");

        socket.open(0);
        outbox.push(frame("two")).unwrap();
        assert!(!writer.write_now(&outbox, &metrics), "the task must wait");
        assert!(poll(&writer, &outbox, &metrics).is_pending());
        assert!(writer.write_now(&outbox, &metrics), "the socket wakes it");
    }
}
