//! The clients connected to *this* instance, grouped by session, and the
//! fan-out of one serialized frame to them.
//!
//! Delivery never blocks and never awaits under the lock: each client has a
//! queue bounded in bytes (`OUTBOUND_QUEUE_BYTES`, and in frames by
//! `OUTBOUND_QUEUE_LEN`), and a client whose queue would overflow is
//! disconnected as a slow consumer instead of being buffered without limit.
//! A frame is a complete WebSocket frame in shared bytes (one clone per
//! recipient is a reference count). When a client's connection has
//! attached its socket and nothing waits in its queue, the delivering task
//! writes the frame straight to the socket (no wake-up, no copy); only what
//! the socket does not take is queued, and queueing wakes the connection's
//! single task, which writes the rest.
//!
//! Logged session events go through [`Registry::deliver_logged`], which
//! keeps, per session, the position (epoch, offset) this instance last
//! delivered: an offset at or below it is dropped (never delivered twice),
//! one past a gap is refused so the caller fills the gap from the log first.
//! [`Registry::insert_at`] joins a client under the same lock, so a resumed
//! client's replay and its live events meet with no gap and no duplicate.
//! A presence event is not queued for a client whose member list already
//! reflects it (its version is at or below the list's, see
//! [`ClientHandle::wants`]).
//!
//! A session may also have hidden watchers ([`Registry::watch`], the admin
//! dashboard's feed): they get its logged events like a client and count
//! as a local subscriber, but are no member (not in presence, not listed,
//! not counted as clients).
//!
//! The registry is also the instance's one notion of *local interest* in a
//! session: a session has it while it has at least one local subscriber,
//! client or watcher. The first one in and the last one out are reported to
//! the interest hook (the broker's [`crate::broker::Broker::interest`])
//! under the `sessions` write lock (watchers change under it too), so the
//! reports of one session arrive in the order they happened.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, ready};

use futures_util::task::AtomicWaker;

use crate::metrics::Metrics;
use crate::protocol::{ClientInfo, Frame, now_millis};

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
}

/// Why the hub closes a connection; decides the close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    SlowConsumer,
    TooLarge,
    ShuttingDown,
    Replaced,
    TokenExpired,
    /// No inbound traffic (pongs included) for `IDLE_TIMEOUT_MS`.
    IdleTimeout,
    /// An admin disconnected the client (`DELETE .../clients/{id}`).
    AdminDisconnect,
    /// The client broke the WebSocket protocol (an unmasked frame, a bad
    /// opcode or fragment sequence, reserved bits).
    ProtocolError,
    /// A text message (or close reason) that is not UTF-8.
    InvalidPayload,
    /// No completed `register` within `REGISTER_TIMEOUT_MS` of the upgrade.
    RegisterTimeout,
}

impl CloseReason {
    /// Every reason, e.g. to start their metric series at 0.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Normal,
        CloseReason::SlowConsumer,
        CloseReason::TooLarge,
        CloseReason::ShuttingDown,
        CloseReason::Replaced,
        CloseReason::TokenExpired,
        CloseReason::IdleTimeout,
        CloseReason::AdminDisconnect,
        CloseReason::ProtocolError,
        CloseReason::InvalidPayload,
        CloseReason::RegisterTimeout,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::ShuttingDown | CloseReason::IdleTimeout => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidPayload => 1007,
            CloseReason::SlowConsumer => 1008,
            CloseReason::TooLarge => 1009,
            CloseReason::Replaced => 4001,
            CloseReason::AdminDisconnect => 4002,
            CloseReason::RegisterTimeout => 4408,
            CloseReason::TokenExpired => 4401,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ShuttingDown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooLarge => "message_too_large",
            CloseReason::Replaced => "replaced",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::AdminDisconnect => "admin_disconnect",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidPayload => "invalid_payload",
            CloseReason::RegisterTimeout => "register_timeout",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::ShuttingDown => "hub shutting down",
            CloseReason::SlowConsumer => "slow consumer: outbound queue full",
            CloseReason::TooLarge => "message too large",
            CloseReason::Replaced => "client_id registered again on another connection",
            CloseReason::TokenExpired => "token expired",
            CloseReason::IdleTimeout => "idle timeout: no traffic, pongs included",
            CloseReason::AdminDisconnect => "disconnected by an admin",
            CloseReason::ProtocolError => "websocket protocol error",
            CloseReason::InvalidPayload => "text is not valid UTF-8",
            CloseReason::RegisterTimeout => "registration timeout",
        }
    }
}

/// A socket the hub may write to from any task (tokio's `TcpStream`, whose
/// I/O works through `&self`).
pub trait DirectSocket: Send + Sync {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// [`Outbound::kind`] of control frames (ping, pong, close): not counted
/// as messages sent.
pub const CONTROL: &str = "control";

/// What every handle of one connection shares: the close reason, the kick
/// and the outbound queue. One allocation per connection.
struct Shared {
    close: Mutex<Option<CloseReason>>,
    /// Set (before the wake) when the connection is asked to close; read on
    /// every wake-up, so it is an atomic rather than the mutex above.
    kicked: AtomicBool,
    queue: Mutex<Queue>,
    /// The connection's task, woken when a frame is queued or it is kicked.
    waker: AtomicWaker,
    /// Bytes of the frames queued and not yet written.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    max_queued_frames: usize,
    /// The presence version the client's member list is as of: presence
    /// events of this version or an older one are not sent (it has them).
    presence_floor: AtomicU64,
}

/// The frames waiting for the connection's socket. The deque is allocated
/// by the first frame and released again when a burst has drained, so an
/// idle connection keeps (almost) no queue memory.
///
/// With a socket attached, every write to it happens under this lock, and
/// the first frame may be partly written (`head_written`): its rest goes
/// out before anything else, so frames never interleave.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    /// Bytes of the first frame's wire form already written.
    head_written: usize,
    /// The connection ended: frames are refused.
    closed: bool,
    /// The connection's socket, while frames may be written straight to it.
    socket: Option<Arc<dyn DirectSocket>>,
}

/// A drained queue keeps at most this many slots (a few hundred bytes); a
/// larger one, left by a burst, is released.
const KEPT_SLOTS: usize = 8;

/// At most this many frames go into one `writev`.
const MAX_IOV: usize = 64;

/// At most this many bytes are written per [`ClientHandle::poll_write`]
/// before the connection yields to the others.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The handle through which anything can send to, or disconnect, a client.
/// Cloning it is two reference-count bumps and a copy of the id.
#[derive(Clone)]
pub struct ClientHandle {
    pub info: Arc<ClientInfo>,
    pub conn_id: u64,
    shared: Arc<Shared>,
}

impl ClientHandle {
    /// At most `max_queued_frames` frames and `max_queued_bytes` bytes of
    /// frames may wait to be written.
    pub fn new(
        info: ClientInfo,
        conn_id: u64,
        max_queued_frames: usize,
        max_queued_bytes: usize,
    ) -> Self {
        ClientHandle {
            info: Arc::new(info),
            conn_id,
            shared: Arc::new(Shared {
                close: Mutex::new(None),
                kicked: AtomicBool::new(false),
                queue: Mutex::new(Queue::default()),
                waker: AtomicWaker::new(),
                queued_bytes: AtomicUsize::new(0),
                max_queued_bytes,
                max_queued_frames,
                presence_floor: AtomicU64::new(0),
            }),
        }
    }

    /// The client's member list is as of presence `version` (0: it takes
    /// every presence event, e.g. a resumed client).
    pub fn set_presence_floor(&self, version: u64) {
        self.shared.presence_floor.store(version, Ordering::Release);
    }

    /// Whether a session event is for this client: not one `except`s it,
    /// and not a presence event (of version `presence`) its member list
    /// already reflects.
    pub fn wants(&self, except: Option<&str>, presence: Option<u64>) -> bool {
        Some(self.info.client_id.as_str()) != except
            && presence.is_none_or(|v| v > self.shared.presence_floor.load(Ordering::Acquire))
    }

    /// The same connection under a new identity (after `register`).
    pub fn with_info(&self, info: ClientInfo) -> Self {
        ClientHandle {
            info: Arc::new(info),
            ..self.clone()
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on frames are written straight to `socket` by whoever sends
    /// them while nothing is queued; the connection's task writes the rest
    /// with [`Self::poll_write`].
    pub fn attach(&self, socket: Arc<dyn DirectSocket>) {
        self.queue().socket = Some(socket);
    }

    /// Sends a frame: written to the socket at once when nothing is queued
    /// before it and the socket takes it, else queued (the connection's
    /// task is woken to write it). False if the client was disconnected for
    /// being slow or is already gone. A frame that would take the queue
    /// over its byte bound (or its frame cap) disconnects the client with
    /// 1008, counted once however many frames are refused.
    pub fn send(&self, out: Outbound, metrics: &Metrics) -> bool {
        self.send_with(out, metrics, true)
    }

    /// [`Self::send`], writing to the socket directly only if `direct`
    /// (else the frame is queued for the connection's task).
    pub fn send_with(&self, out: Outbound, metrics: &Metrics, direct: bool) -> bool {
        let len = out.frame.len();
        let shared = &*self.shared;
        let mut queue = self.queue();
        if queue.closed {
            return false;
        }
        // Frames are never interleaved: a direct write only when nothing
        // (not even the rest of a frame) waits.
        let mut partial = false;
        if direct
            && queue.frames.is_empty()
            && let Some(socket) = &queue.socket
        {
            let wire = out.frame.wire();
            match socket.try_write_vectored(&[IoSlice::new(wire)]) {
                Ok(n) if n == wire.len() => {
                    drop(queue);
                    written(&out, metrics, &mut None);
                    return true;
                }
                Ok(n) if n > 0 => {
                    queue.head_written = n;
                    partial = true;
                }
                // Full (or failed: the connection's task finds out when it
                // writes): queued.
                _ => {}
            }
        }
        let before = shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let over = before.saturating_add(len) > shared.max_queued_bytes
            || queue.frames.len() >= shared.max_queued_frames;
        if over && !partial {
            drop(queue);
            shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.slow_consumer(metrics);
            return false;
        }
        // A partly written frame is queued whatever the bound: its rest
        // must go out before the close frame.
        queue.frames.push_back(out);
        drop(queue);
        shared.waker.wake();
        if over {
            self.slow_consumer(metrics);
        }
        true
    }

    fn slow_consumer(&self, metrics: &Metrics) {
        if self.disconnect(CloseReason::SlowConsumer) {
            metrics.slow_consumer_disconnects.inc();
        }
    }

    /// Writes what is queued to the attached socket: Ready when the queue
    /// is empty, Pending when the socket is full (the task is woken when it
    /// drains) or after [`MAX_BATCH_BYTES`] (woken at once, so the other
    /// connections get their turn). Ready at once without a socket.
    pub fn poll_write(&self, cx: &mut Context<'_>, metrics: &Metrics) -> Poll<io::Result<()>> {
        let mut now = None;
        let mut total = 0;
        let mut queue = self.queue();
        let Some(socket) = queue.socket.clone() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if queue.frames.is_empty() {
                if queue.frames.capacity() > KEPT_SLOTS {
                    queue.frames = VecDeque::new();
                }
                return Poll::Ready(Ok(()));
            }
            if total >= MAX_BATCH_BYTES {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let result = {
                let mut bufs = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                let mut offset = queue.head_written;
                for out in queue.frames.iter().take(MAX_IOV) {
                    bufs[n] = IoSlice::new(&out.frame.wire()[offset..]);
                    offset = 0;
                    n += 1;
                }
                socket.try_write_vectored(&bufs[..n])
            };
            match result {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    total += n;
                    self.advance(&mut queue, n, metrics, &mut now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(queue);
                    ready!(socket.poll_write_ready(cx))?;
                    queue = self.queue();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `n` bytes of the queue's frames were written: the frames done leave
    /// the queue and its byte count.
    fn advance(&self, queue: &mut Queue, mut n: usize, metrics: &Metrics, now: &mut Option<u64>) {
        let mut done = 0;
        while n > 0 {
            let Some(head) = queue.frames.front() else {
                break;
            };
            let rest = head.frame.wire().len() - queue.head_written;
            if n < rest {
                queue.head_written += n;
                break;
            }
            n -= rest;
            queue.head_written = 0;
            if let Some(out) = queue.frames.pop_front() {
                done += out.frame.len();
                written(&out, metrics, now);
            }
        }
        self.dequeued(done);
    }

    /// The connection ends: later frames are refused, `close` (the close
    /// frame) is queued last, and what was queued before it is dropped
    /// unless `deliver_queued` (the rest of a partly written frame always
    /// goes out first). Write it with [`Self::poll_write`], then
    /// [`Self::detach`].
    pub fn finish(&self, close: Option<Frame>, deliver_queued: bool) {
        let mut queue = self.queue();
        queue.closed = true;
        if !deliver_queued {
            let keep = usize::from(queue.head_written > 0);
            let dropped: usize = queue.frames.drain(keep..).map(|o| o.frame.len()).sum();
            self.dequeued(dropped);
        }
        if let Some(frame) = close {
            self.shared
                .queued_bytes
                .fetch_add(frame.len(), Ordering::AcqRel);
            queue.frames.push_back(Outbound::reply(frame, CONTROL));
        }
    }

    /// Lets go of the socket; frames never written leave the byte count.
    pub fn detach(&self) {
        let mut queue = self.queue();
        queue.closed = true;
        queue.socket = None;
        queue.head_written = 0;
        let dropped: usize = queue.frames.drain(..).map(|o| o.frame.len()).sum();
        queue.frames = VecDeque::new();
        drop(queue);
        self.dequeued(dropped);
    }

    /// The connection's task is woken by the next [`Self::send`] that
    /// queues or [`Self::disconnect`]. Call it before looking at the queue
    /// and at [`Self::is_kicked`], so nothing slips in between unseen.
    pub fn wake_on_send(&self, waker: &std::task::Waker) {
        self.shared.waker.register(waker);
    }

    /// The connection was asked to close ([`Self::disconnect`]).
    pub fn is_kicked(&self) -> bool {
        self.shared.kicked.load(Ordering::Acquire)
    }

    /// The next queued frame, if any (for a connection without an attached
    /// socket, which writes its frames itself).
    pub fn next_frame(&self) -> Option<Outbound> {
        let mut queue = self.queue();
        let out = queue.frames.pop_front();
        if queue.frames.is_empty() && queue.frames.capacity() > KEPT_SLOTS {
            queue.frames = VecDeque::new();
        }
        out
    }

    /// The connection ended: later frames are refused (what is still queued
    /// can be taken with [`Self::next_frame`]).
    pub fn close_queue(&self) {
        self.queue().closed = true;
    }

    /// The writer took `bytes` of frames off the queue (written or dropped).
    pub fn dequeued(&self, bytes: usize) {
        if bytes > 0 {
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// How many more frames the client's queue takes right now (the frame
    /// cap; the byte bound still applies to each frame queued).
    pub fn room(&self) -> usize {
        self.shared
            .max_queued_frames
            .saturating_sub(self.queue().frames.len())
    }

    /// Asks the connection to close; the first reason given wins. True if
    /// this call decided the reason.
    pub fn disconnect(&self, reason: CloseReason) -> bool {
        let first = {
            let mut slot = self.shared.close.lock().unwrap_or_else(|p| p.into_inner());
            let first = slot.is_none();
            slot.get_or_insert(reason);
            first
        };
        self.shared.kicked.store(true, Ordering::Release);
        self.shared.waker.wake();
        first
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.shared.close.lock().unwrap_or_else(|p| p.into_inner())
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

/// Told `(session, true)` when a session gets its first local subscriber
/// and `(session, false)` when its last one leaves; must not block.
pub type InterestHook = Box<dyn Fn(&str, bool) + Send + Sync>;

#[derive(Default)]
pub struct Registry {
    sessions: RwLock<HashMap<String, HashMap<String, ClientHandle>>>,
    interest: Option<InterestHook>,
    /// Per session with local clients: the last delivered log position.
    /// Lock order: `positions`, then `sessions`.
    positions: Mutex<HashMap<String, Position>>,
    /// Per session with local clients: the last events delivered (offset,
    /// frame, except), so a join that read the log just before live
    /// delivery passed it takes the difference from here. Same lock order.
    recent: Mutex<HashMap<String, VecDeque<Recent>>>,
    /// Woken after each logged delivery, for [`Registry::delivered`].
    progress: tokio::sync::Notify,
    /// Hidden watchers per session (admin feeds, by connection id): they
    /// get the session's logged events like a client, are no member and
    /// not in presence. Lock order: after `recent`.
    watchers: RwLock<HashMap<String, HashMap<u64, ClientHandle>>>,
    /// More events wait to be delivered ([`Registry::set_backlogged`]).
    backlogged: AtomicBool,
}

/// [`Registry::insert_at`]'s `start` refused the join: read the log again.
#[derive(Debug)]
pub struct Refused;

/// How many delivered events per session a join can catch up from.
const RECENT: usize = 1024;

/// One delivered event, kept for joins.
#[derive(Clone)]
pub struct Recent {
    pub offset: u64,
    pub out: Outbound,
    pub except: Option<String>,
    pub presence: Option<u64>,
}

/// A position in a session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What [`Registry::deliver_logged`] did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the session's local clients (maybe none but `except`).
    Delivered,
    /// At or below the last delivered offset: dropped.
    Duplicate,
    /// No local client: nothing to do, and no position kept.
    NoClients,
    /// Offsets after `after` are missing: fill them from the log first.
    Gap { after: u64 },
}

impl Registry {
    /// A registry that reports local interest in sessions to `hook`.
    pub fn with_interest(hook: InterestHook) -> Self {
        Registry {
            interest: Some(hook),
            ..Registry::default()
        }
    }

    /// Whether more events wait behind the one being delivered. While they
    /// do, deliveries are queued rather than written to each socket at
    /// once, so every connection writes its backlog in one `writev` (a
    /// burst costs a socket write per connection and batch, not per
    /// delivery); when the hub keeps up, each delivery is one direct write
    /// and no wake-up.
    pub fn set_backlogged(&self, backlogged: bool) {
        self.backlogged.store(backlogged, Ordering::Relaxed);
    }

    /// Adds a client; returns the handle it replaced (same client id).
    pub fn insert(&self, session: &str, handle: ClientHandle) -> Option<ClientHandle> {
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        self.add(&mut sessions, session, handle)
    }

    /// Adds under the write lock, reporting a session's first subscriber.
    fn add(
        &self,
        sessions: &mut HashMap<String, HashMap<String, ClientHandle>>,
        session: &str,
        handle: ClientHandle,
    ) -> Option<ClientHandle> {
        let clients = sessions.entry(session.to_string()).or_default();
        if clients.is_empty()
            && !self.is_watched(session)
            && let Some(hook) = &self.interest
        {
            hook(session, true);
        }
        clients.insert(handle.info.client_id.clone(), handle)
    }

    /// Whether `session` has a hidden watcher (lock order: after `sessions`).
    fn is_watched(&self, session: &str) -> bool {
        self.watchers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(session)
    }

    /// Removes a client if it is still this connection.
    pub fn remove(&self, session: &str, client_id: &str, conn_id: u64) -> bool {
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let Some(clients) = sessions.get_mut(session) else {
            return false;
        };
        if clients.get(client_id).is_none_or(|h| h.conn_id != conn_id) {
            return false;
        }
        clients.remove(client_id);
        if clients.is_empty() {
            sessions.remove(session);
            if !self.is_watched(session)
                && let Some(hook) = &self.interest
            {
                hook(session, false);
            }
        }
        true
    }

    pub fn get(&self, session: &str, client_id: &str) -> Option<ClientHandle> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions.get(session)?.get(client_id).cloned()
    }

    /// Queues `out` for every local client of the session but `except`;
    /// returns how many got it.
    pub fn deliver(
        &self,
        session: &str,
        out: &Outbound,
        except: Option<&str>,
        metrics: &Metrics,
    ) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let Some(clients) = sessions.get(session) else {
            return 0;
        };
        clients
            .values()
            .filter(|h| Some(h.info.client_id.as_str()) != except)
            .filter(|h| h.send(out.clone(), metrics))
            .count()
    }

    /// Delivers one logged event in offset order (see the module docs).
    /// `force` accepts it past a gap the log could not fill.
    pub fn deliver_logged(
        &self,
        event: &crate::broker::LoggedEvent,
        out: &Outbound,
        force: bool,
        metrics: &Metrics,
    ) -> Delivery {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let watchers = self.watchers.read().unwrap_or_else(|p| p.into_inner());
        let watching = watchers.get(&event.session);
        let no_clients = HashMap::new();
        let clients = sessions.get(&event.session).unwrap_or(&no_clients);
        if clients.is_empty() && watching.is_none() {
            positions.remove(&event.session);
            recent.remove(&event.session);
            return Delivery::NoClients;
        };
        let position = positions
            .entry(event.session.clone())
            .or_insert_with(|| Position {
                epoch: event.epoch.clone(),
                offset: event.offset.saturating_sub(1),
            });
        let kept = recent.entry(event.session.clone()).or_default();
        if position.epoch != event.epoch {
            // The log was lost and began again: its offsets restart at 1.
            *position = Position {
                epoch: event.epoch.clone(),
                offset: 0,
            };
            kept.clear();
        }
        if event.offset <= position.offset {
            return Delivery::Duplicate;
        }
        if event.offset > position.offset + 1 && !force {
            return Delivery::Gap {
                after: position.offset,
            };
        }
        position.offset = event.offset;
        if kept.len() == RECENT {
            kept.pop_front();
        }
        kept.push_back(Recent {
            offset: event.offset,
            out: out.clone(),
            except: event.except.clone(),
            presence: event.presence,
        });
        let except = event.except.as_deref();
        let direct = !self.backlogged.load(Ordering::Relaxed);
        for h in clients.values() {
            if h.wants(except, event.presence) {
                h.send_with(out.clone(), metrics, direct);
            }
        }
        for h in watching.into_iter().flat_map(HashMap::values) {
            h.send_with(out.clone(), metrics, direct);
        }
        self.progress.notify_waiters();
        Delivery::Delivered
    }

    /// Waits until the session's local clients got `offset` of `epoch` (or
    /// it has none, or its log moved to another epoch).
    pub async fn delivered(&self, session: &str, epoch: &str, offset: u64) {
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            match self.position(session) {
                Some(p) if p.epoch == epoch && p.offset < offset => {}
                _ => return,
            }
            progressed.await;
        }
    }

    /// The last delivered position of a session that has local
    /// subscribers now (clients or watchers): every event up to it was
    /// logged before this call.
    pub fn live_position(&self, session: &str) -> Option<Position> {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let subscribed = sessions.get(session).is_some_and(|c| !c.is_empty())
            || self
                .watchers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(session);
        positions.get(session).filter(|_| subscribed).cloned()
    }

    /// The last delivered position of a session with local clients.
    pub fn position(&self, session: &str) -> Option<Position> {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.get(session).cloned()
    }

    /// Sessions that have local subscribers (clients or watchers).
    pub fn sessions(&self) -> Vec<String> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let watchers = self.watchers.read().unwrap_or_else(|p| p.into_inner());
        let watched_only = watchers.keys().filter(|s| !sessions.contains_key(*s));
        sessions.keys().chain(watched_only).cloned().collect()
    }

    /// Joins `handle` to the session atomically with respect to live
    /// delivery. `read` is the log's position as the join read it. `start`
    /// gets the position live delivery continues from (the last delivered
    /// one; with no local client yet, `read`) and the last events delivered
    /// before it, queues what the client gets
    /// first (confirmation, replay) and returns the position to keep — or
    /// None to refuse (read the log again). Returns the replaced handle.
    pub fn insert_at(
        &self,
        session: &str,
        handle: ClientHandle,
        read: Position,
        start: impl FnOnce(&Position, &VecDeque<Recent>, &ClientHandle) -> Option<Position>,
    ) -> Result<Option<ClientHandle>, Refused> {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // A hidden watcher keeps live delivery (and `recent`) going too.
        let has_clients = sessions.get(session).is_some_and(|c| !c.is_empty())
            || self
                .watchers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(session);
        let live = match positions.get(session) {
            Some(p) if has_clients => p.clone(),
            _ => read,
        };
        let none = VecDeque::new();
        let kept = match recent.get(session) {
            Some(k) if has_clients => k,
            _ => &none,
        };
        let keep = start(&live, kept, &handle).ok_or(Refused)?;
        positions.insert(session.to_string(), keep);
        Ok(self.add(&mut sessions, session, handle))
    }

    /// Adds a hidden watcher of `session` (see `watchers`); the first
    /// local subscriber of a session without clients reports interest.
    /// `read` is the log's position as the watch read it: with no local
    /// subscriber yet, live delivery (and catching up once the channel is
    /// subscribed) continues from there, so the watcher misses nothing
    /// published after it.
    pub fn watch(&self, session: &str, handle: ClientHandle, read: Option<Position>) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        // Held so interest changes of clients and watchers are ordered.
        let sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let mut watchers = self.watchers.write().unwrap_or_else(|p| p.into_inner());
        let watching = watchers.entry(session.to_string()).or_default();
        if watching.is_empty() && !sessions.contains_key(session) {
            match read {
                Some(read) => positions.insert(session.to_string(), read),
                None => positions.remove(session),
            };
            if let Some(hook) = &self.interest {
                hook(session, true);
            }
        }
        watching.insert(handle.conn_id, handle);
    }

    /// Removes the watcher `conn_id` of `session`; the last local
    /// subscriber out reports the end of interest.
    pub fn unwatch(&self, session: &str, conn_id: u64) {
        let sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let mut watchers = self.watchers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = watchers.get_mut(session)
            && w.remove(&conn_id).is_some()
            && w.is_empty()
        {
            watchers.remove(session);
            if !sessions.contains_key(session)
                && let Some(hook) = &self.interest
            {
                hook(session, false);
            }
        }
    }

    pub fn client_count(&self) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions.values().map(HashMap::len).sum()
    }

    pub fn all(&self) -> Vec<(String, ClientHandle)> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions
            .iter()
            .flat_map(|(s, clients)| clients.values().map(move |h| (s.clone(), h.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(max_frames: usize, max_bytes: usize) -> ClientHandle {
        let info = ClientInfo {
            client_id: "c".into(),
            client_name: "c".into(),
            instance: "i".into(),
            capabilities: Vec::new(),
            owner: None,
            connected_at: None,
        };
        ClientHandle::new(info, 1, max_frames, max_bytes)
    }

    fn frame(text: &str) -> Outbound {
        Outbound::reply(text.into(), "broadcast")
    }

    #[test]
    fn frames_come_out_in_order_and_leave_the_byte_count_when_written() {
        let metrics = Metrics::new("i");
        let h = handle(10, 100);
        assert!(h.send(frame("one"), &metrics));
        assert!(h.send(frame("two"), &metrics));
        assert_eq!((h.queued_bytes(), h.room()), (6, 8));
        let taken: Vec<_> = std::iter::from_fn(|| h.next_frame()).collect();
        let texts: Vec<_> = taken.iter().map(|o| o.frame.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);
        h.dequeued(6);
        assert_eq!((h.queued_bytes(), h.room()), (0, 10));
        assert!(!h.is_kicked());
    }

    #[test]
    fn the_byte_bound_and_the_frame_cap_each_disconnect_once_with_1008() {
        let metrics = Metrics::new("i");
        let by_bytes = handle(10, 5);
        assert!(by_bytes.send(frame("12345"), &metrics));
        assert!(!by_bytes.send(frame("6"), &metrics));
        assert!(!by_bytes.send(frame("7"), &metrics));
        assert!(by_bytes.is_kicked());
        assert_eq!(by_bytes.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(by_bytes.queued_bytes(), 5, "refused frames are not counted");

        let by_frames = handle(1, 100);
        assert!(by_frames.send(frame("a"), &metrics));
        assert!(!by_frames.send(frame("b"), &metrics));
        assert_eq!(by_frames.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(metrics.slow_consumer_disconnects.get(), 2);
    }

    #[test]
    fn a_closed_queue_refuses_frames_without_an_eviction() {
        let metrics = Metrics::new("i");
        let h = handle(10, 100);
        assert!(h.send(frame("kept"), &metrics));
        h.close_queue();
        assert!(!h.send(frame("late"), &metrics));
        assert_eq!(h.close_reason(), None);
        assert_eq!(h.queued_bytes(), 4);
        assert_eq!(h.next_frame().map(|o| o.frame), Some("kept".into()));
        assert!(h.next_frame().is_none());
    }

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

    impl DirectSocket for FakeSocket {
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

    fn poll_write(h: &ClientHandle, metrics: &Metrics) -> Poll<io::Result<()>> {
        h.poll_write(&mut Context::from_waker(std::task::Waker::noop()), metrics)
    }

    #[test]
    fn frames_go_straight_to_the_socket_and_a_partial_one_is_finished_first() {
        let metrics = Metrics::new("i");
        let h = handle(10, 100);
        let socket = Arc::new(FakeSocket::default());
        h.attach(socket.clone());
        socket.open(1000);
        assert!(h.send(frame("one"), &metrics));
        assert_eq!(h.queued_bytes(), 0, "written at once, never queued");
        // The socket takes 3 bytes of "two" (2 header + "t"), then is full.
        socket.open(3);
        assert!(h.send(frame("two"), &metrics));
        assert!(h.send(frame("three"), &metrics));
        assert_eq!(h.queued_bytes(), 8);
        assert!(poll_write(&h, &metrics).is_pending());
        // The kick keeps the rest of the torn frame, drops the others, and
        // the close frame follows it.
        h.disconnect(CloseReason::SlowConsumer);
        h.finish(Some(Frame::close(1008, "x")), false);
        socket.open(1000);
        assert!(poll_write(&h, &metrics).is_ready());
        assert_eq!(
            socket.got.lock().unwrap().as_slice(),
            b"\x81\x03one\x81\x03two\x88\x03\x03\xf0x"
        );
        assert!(!h.send(frame("late"), &metrics));
        h.detach();
        assert_eq!(h.queued_bytes(), 0);
    }

    #[test]
    fn a_socket_that_takes_nothing_queues_up_to_the_byte_bound() {
        let metrics = Metrics::new("i");
        let h = handle(10, 8);
        let socket = Arc::new(FakeSocket::default());
        h.attach(socket.clone());
        assert!(h.send(frame("1234"), &metrics));
        assert!(h.send(frame("5678"), &metrics));
        assert!(!h.send(frame("9"), &metrics));
        assert_eq!(h.close_reason(), Some(CloseReason::SlowConsumer));
        // What was queued goes out in order once the socket drains.
        socket.open(1000);
        assert!(poll_write(&h, &metrics).is_ready());
        assert_eq!(
            socket.got.lock().unwrap().as_slice(),
            b"\x81\x041234\x81\x045678"
        );
        assert_eq!(h.queued_bytes(), 0);
    }

    #[test]
    fn the_first_close_reason_wins() {
        let h = handle(10, 100);
        assert!(h.disconnect(CloseReason::TokenExpired));
        assert!(!h.disconnect(CloseReason::ShuttingDown));
        assert!(h.is_kicked());
        assert_eq!(h.close_reason(), Some(CloseReason::TokenExpired));
    }
}
