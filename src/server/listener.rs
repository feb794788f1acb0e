//! The sockets of the HTTP server. Every accepted socket is shared
//! ([`SharedTcp`]): HTTP reads and writes it as usual, and a connection
//! upgraded to WebSocket takes a second reference ([`Peer::socket`]) through
//! which the hub writes pre-framed events straight to the socket from the
//! task that delivers them (`hub/registry.rs`), without waking the
//! connection's task. Each socket also records its [`Activity`] (what the
//! accept loop's deadlines are measured from) and holds its source
//! address's slot ([`AddressSlots`]) for as long as it is open.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::hub::registry::DirectSocket;

/// Who is on the other end of a request: its address (the REST rate limit
/// of anonymous callers) and the socket (for a WebSocket upgrade). Weak:
/// whatever keeps a request's extensions does not keep its socket open.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub socket: Weak<TcpStream>,
}

/// Milliseconds on the process's monotonic clock (first use = 1, so 0 can
/// mean "never").
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What an HTTP connection is doing, as its socket and its requests see
/// it: the accept loop closes it when a request head takes too long or it
/// sits idle (`accept.rs`). Atomics: the socket's reads and writes and the
/// request handlers update it; one watchdog reads it.
#[derive(Debug)]
pub struct Activity {
    /// The last read or write of any bytes.
    last_io_ms: AtomicU64,
    /// When the first byte of a request head not yet handed to a handler
    /// arrived (0: none). Trickling more bytes does not move it.
    head_started_ms: AtomicU64,
    /// Requests being handled now.
    busy: AtomicU32,
    /// Whether any request was handled (later silence is keep-alive idle).
    served: AtomicBool,
    /// Signalled when a request's handler ends: the watchdog, which waits
    /// without a deadline while one runs, arms its deadline again.
    request_ended: tokio::sync::Notify,
}

/// What the watchdog finds when an [`Activity`] deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// A request head has not arrived whole in time (or, on a fresh
    /// connection, not at all).
    HeaderTimeout,
    /// No request since the last one finished.
    KeepaliveIdle,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            last_io_ms: AtomicU64::new(now_ms()),
            head_started_ms: AtomicU64::new(0),
            busy: AtomicU32::new(0),
            served: AtomicBool::new(false),
            request_ended: tokio::sync::Notify::new(),
        }
    }
}

impl Activity {
    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.busy.load(Ordering::Relaxed) == 0 {
            // Only the first byte of a head starts its clock.
            let _ =
                self.head_started_ms
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A request reached its handler: its head is complete. The returned
    /// guard marks the handler's end when dropped.
    pub fn begin_request(self: &Arc<Self>) -> RequestInFlight {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        RequestInFlight(self.clone())
    }

    /// Resolves when a request's handler ends (or has ended since the last
    /// wait: the signal is kept).
    pub async fn request_ended(&self) {
        self.request_ended.notified().await
    }

    /// Whether a request was handled and none is now: the connection has
    /// been served and waits for another (the first to shed for room).
    pub fn is_kept_alive(&self) -> bool {
        self.is_idle() && self.served.load(Ordering::Relaxed)
    }

    /// Whether no request is being handled (the connection may be shed).
    pub fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    /// When this connection is next due to be closed, and why; None while a
    /// handler runs (its own timeouts bound it). `header` and `keepalive`
    /// are the HEADER_READ_TIMEOUT_MS and KEEPALIVE_TIMEOUT_MS.
    pub fn deadline(&self, header_ms: u64, keepalive_ms: u64) -> Option<(u64, Idle)> {
        if !self.is_idle() {
            return None;
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != 0 {
            return Some((head + header_ms, Idle::HeaderTimeout));
        }
        let last = self.last_io_ms.load(Ordering::Relaxed);
        Some(if self.served.load(Ordering::Relaxed) {
            // A response still being written to a slow reader counts as
            // activity: only silence in both directions is idle.
            (last + keepalive_ms, Idle::KeepaliveIdle)
        } else {
            (last + header_ms, Idle::HeaderTimeout)
        })
    }
}

/// A request being handled on a connection (see [`Activity::begin_request`]).
pub struct RequestInFlight(Arc<Activity>);

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.0.last_io_ms.store(now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.request_ended.notify_one();
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

    /// Connections `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> u32 {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&ip).copied().unwrap_or(0)
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
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    self.activity.on_read(n);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
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
        Poll::Ready(shutdown_write(&self.tcp))
    }
}

/// Half-closes the socket (FIN), as `TcpStream`'s own `poll_shutdown`.
pub fn shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        done => done,
    }
}

impl DirectSocket for TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
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
