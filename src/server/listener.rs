//! The sockets of the HTTP server. Every accepted socket is shared
//! ([`SharedTcp`]): HTTP reads and writes it as usual, and a connection
//! upgraded to WebSocket takes a second reference ([`Peer::socket`]) through
//! which the connection's task writes pre-framed events straight to the
//! socket ([`crate::transport::SocketWriter`]), beside hyper's upgraded
//! stream it reads from. Each socket also records its [`Activity`] (what the
//! accept loop's deadlines are measured from) and holds its source
//! address's slot ([`AddressSlots`]) for as long as it is open.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::telemetry::monotonic_ms as now_ms;

/// Who is on the other end of a request: its address (the REST rate limit
/// of anonymous callers) and the socket (for a WebSocket upgrade). Weak:
/// whatever keeps a request's extensions does not keep its socket open.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub socket: Weak<TcpStream>,
}

/// What an HTTP connection is doing, as its socket and its requests see
/// it: the accept loop closes it when a request head or body takes too
/// long, a response stalls, or it sits idle (`accept.rs`). Atomics: the
/// socket's reads and writes and the request's phases update it; one
/// watchdog reads it.
#[derive(Debug)]
pub struct Activity {
    /// The last read or write of any bytes.
    last_io_ms: AtomicU64,
    /// When the first byte of a request head not yet handed to a handler
    /// arrived (0: none). Trickling more bytes does not move it.
    head_started_ms: AtomicU64,
    /// When the latest request reached its handler (its head complete).
    request_started_ms: AtomicU64,
    /// Requests whose handler runs now.
    handling: AtomicU32,
    /// Request bodies not yet read to their end.
    receiving: AtomicU32,
    /// Response bodies not yet written to their end.
    responding: AtomicU32,
    /// Whether any request was handled (later silence is keep-alive idle).
    served: AtomicBool,
    /// Signalled when a phase ends: the watchdog, which may be waiting
    /// without a deadline, arms its deadline again.
    phase_ended: tokio::sync::Notify,
    /// False once the watchdog is gone (the connection upgraded or ended):
    /// a WebSocket's reads then cost no clock read.
    watched: AtomicBool,
}

/// What the watchdog finds when an [`Activity`] deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// A request head has not arrived whole in time (or, on a fresh
    /// connection, not at all).
    HeaderTimeout,
    /// A request body has not arrived whole within the header deadline
    /// after its head.
    BodyTimeout,
    /// A response has made no progress (the client stopped reading).
    ResponseStalled,
    /// No request since the last one finished.
    KeepaliveIdle,
}

/// The phases of a request a [`Phase`] guard marks.
#[derive(Debug, Clone, Copy)]
enum PhaseKind {
    Handling,
    Receiving,
    Responding,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            last_io_ms: AtomicU64::new(now_ms()),
            head_started_ms: AtomicU64::new(0),
            request_started_ms: AtomicU64::new(0),
            handling: AtomicU32::new(0),
            receiving: AtomicU32::new(0),
            responding: AtomicU32::new(0),
            served: AtomicBool::new(false),
            phase_ended: tokio::sync::Notify::new(),
            watched: AtomicBool::new(true),
        }
    }
}

impl Activity {
    fn on_read(&self, n: usize) {
        if n == 0 || !self.watched.load(Ordering::Relaxed) {
            return;
        }
        let now = now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.is_idle() {
            // Only the first byte of a head starts its clock.
            let _ =
                self.head_started_ms
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        if self.watched.load(Ordering::Relaxed) {
            self.last_io_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The watchdog is gone: stop recording the socket's I/O.
    pub fn unwatch(&self) {
        self.watched.store(false, Ordering::Relaxed);
    }

    fn counter(&self, kind: PhaseKind) -> &AtomicU32 {
        match kind {
            PhaseKind::Handling => &self.handling,
            PhaseKind::Receiving => &self.receiving,
            PhaseKind::Responding => &self.responding,
        }
    }

    fn begin(self: &Arc<Self>, kind: PhaseKind) -> Phase {
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        Phase {
            activity: self.clone(),
            kind,
        }
    }

    /// A request reached its handler: its head is complete. The guard
    /// marks the handler's end when dropped.
    pub fn begin_request(self: &Arc<Self>) -> Phase {
        self.served.store(true, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.request_started_ms.store(now_ms(), Ordering::Relaxed);
        self.begin(PhaseKind::Handling)
    }

    /// A request body is being read (until the guard drops).
    pub fn begin_body(self: &Arc<Self>) -> Phase {
        self.begin(PhaseKind::Receiving)
    }

    /// A response body is being written (until the guard drops).
    pub fn begin_response(self: &Arc<Self>) -> Phase {
        self.begin(PhaseKind::Responding)
    }

    /// Resolves when a phase ends (or has ended since the last wait: the
    /// signal is kept).
    pub async fn phase_ended(&self) {
        self.phase_ended.notified().await
    }

    /// Whether the connection was served, is idle and has not begun a next
    /// request: it waits for one (the first to shed for room).
    pub fn is_kept_alive(&self) -> bool {
        self.is_idle()
            && self.served.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == 0
    }

    /// Whether no request is being received, handled or answered (the
    /// connection may be shed).
    pub fn is_idle(&self) -> bool {
        self.handling.load(Ordering::Relaxed) == 0
            && self.receiving.load(Ordering::Relaxed) == 0
            && self.responding.load(Ordering::Relaxed) == 0
    }

    /// When this connection is next due to be closed, and why; None while
    /// a handler runs with its body read (its own timeouts bound it).
    /// `header` and `keepalive` are HEADER_READ_TIMEOUT_MS and
    /// KEEPALIVE_TIMEOUT_MS.
    pub fn deadline(&self, header_ms: u64, keepalive_ms: u64) -> Option<(u64, Idle)> {
        let last = self.last_io_ms.load(Ordering::Relaxed);
        if self.receiving.load(Ordering::Relaxed) > 0 {
            // A body trickled byte by byte is a slowloris too.
            let started = self.request_started_ms.load(Ordering::Relaxed);
            return Some((started + header_ms, Idle::BodyTimeout));
        }
        if self.handling.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.responding.load(Ordering::Relaxed) > 0 {
            // A slow reader is fine while it reads; one that stopped is not.
            return Some((last + keepalive_ms, Idle::ResponseStalled));
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != 0 {
            return Some((head + header_ms, Idle::HeaderTimeout));
        }
        Some(if self.served.load(Ordering::Relaxed) {
            (last + keepalive_ms, Idle::KeepaliveIdle)
        } else {
            (last + header_ms, Idle::HeaderTimeout)
        })
    }
}

/// One phase of a request on a connection (see [`Activity::begin_request`],
/// [`Activity::begin_body`], [`Activity::begin_response`]); ends on drop.
pub struct Phase {
    activity: Arc<Activity>,
    kind: PhaseKind,
}

impl Drop for Phase {
    fn drop(&mut self) {
        let a = &self.activity;
        a.last_io_ms.store(now_ms(), Ordering::Relaxed);
        a.counter(self.kind).fetch_sub(1, Ordering::Relaxed);
        a.phase_ended.notify_one();
    }
}

/// `MAX_CONNECTIONS_PER_IP`: the TCP connections each source address holds,
/// upgraded or not. Addresses in `TRUSTED_PROXIES` are not counted (behind
/// HAProxy, every client arrives from it).
pub struct AddressSlots {
    max: u32,
    held: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's place in its address's count, given back on drop.
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl AddressSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(AddressSlots {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or None at the cap.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A TCP socket several owners may read and write (tokio's `TcpStream`
/// I/O through `&self`); as an HTTP connection's I/O it behaves like the
/// stream itself, recording its [`Activity`] and holding its address's
/// slot until the socket is dropped (after the upgrade, too).
pub struct SharedTcp {
    tcp: Arc<TcpStream>,
    activity: Arc<Activity>,
    _slot: Option<AddressSlot>,
}

impl SharedTcp {
    pub fn new(tcp: Arc<TcpStream>, activity: Arc<Activity>, slot: Option<AddressSlot>) -> Self {
        SharedTcp {
            tcp,
            activity,
            _slot: slot,
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let room = dst.len();
            let mut read = None;
            // A read that did not fill the buffer drained the socket (epoll
            // and kqueue are edge-triggered): the readiness is cleared at
            // once, as tokio's own `poll_read` does there, instead of by one
            // more read that finds nothing (a system call per inbound
            // message, e.g. per pong). The readiness cleared is the one from
            // before the read, so data arriving meanwhile still wakes the
            // task.
            const EDGE_TRIGGERED: bool = cfg!(any(
                target_os = "linux",
                target_os = "android",
                target_os = "macos",
                target_os = "ios",
                target_os = "freebsd",
                target_os = "netbsd",
                target_os = "openbsd",
                target_os = "dragonfly"
            ));
            let outcome = self.tcp.try_io(Interest::READABLE, || {
                let n = self.tcp.try_read(dst)?;
                read = Some(n);
                if EDGE_TRIGGERED && 0 < n && n < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match (read, outcome) {
                (Some(n), _) => {
                    self.activity.on_read(n);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                (None, Err(e)) => return Poll::Ready(Err(e)),
                (None, Ok(())) => {}
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    self.activity.on_write();
                    return Poll::Ready(done);
                }
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    self.activity.on_write();
                    return Poll::Ready(done);
                }
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(crate::transport::shutdown_write(&self.tcp))
    }
}

/// The client's address: the peer's, or, when the peer is one of the
/// `TRUSTED_PROXIES`, the last hop its `X-Forwarded-For` names (the one the
/// proxy itself appended; earlier entries are the client's to forge).
pub fn client_ip(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    limits: &crate::config::Limits,
) -> IpAddr {
    if !limits.is_trusted_proxy(peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .next_back()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_of_a_request_has_its_deadline() {
        let (header, keepalive) = (1_000, 5_000);
        let a = Arc::new(Activity::default());
        let why = |a: &Activity| a.deadline(header, keepalive).map(|(_, why)| why);
        assert_eq!(why(&a), Some(Idle::HeaderTimeout), "fresh and silent");
        a.on_read(10);
        assert_eq!(why(&a), Some(Idle::HeaderTimeout), "a head under way");
        let handling = a.begin_request();
        let body = a.begin_body();
        assert_eq!(why(&a), Some(Idle::BodyTimeout), "its body under way");
        assert!(!a.is_idle());
        drop(body);
        assert_eq!(why(&a), None, "the handler runs");
        let response = a.begin_response();
        drop(handling);
        assert_eq!(
            why(&a),
            Some(Idle::ResponseStalled),
            "its response under way"
        );
        // Pipelined bytes of the next request do not start a head clock
        // while the response is written.
        a.on_read(10);
        drop(response);
        assert!(a.is_kept_alive());
        assert_eq!(why(&a), Some(Idle::KeepaliveIdle), "served, waiting");
        a.on_read(10);
        assert_eq!(
            why(&a),
            Some(Idle::HeaderTimeout),
            "the next head under way"
        );
        assert!(
            !a.is_kept_alive(),
            "a head under way is not kept-alive idle"
        );
    }
}
