//! The hub's own accept loop, in place of `axum::serve`: every TCP
//! connection is admitted, watched and shed here before any request reaches
//! the router, so a hub exposed directly holds against slowloris and fd
//! exhaustion without a proxy in front (docs/security.md §12).
//!
//! - At accept: `MAX_CONNECTIONS_PER_IP` (the address's slot lives with the
//!   socket), then `MAX_PENDING_CONNECTIONS` over the connections not (yet)
//!   upgraded; at that cap an idle one of the address holding the most
//!   makes room ([`Pending`]).
//! - While a connection is HTTP: a request head must arrive whole within
//!   `HEADER_READ_TIMEOUT_MS` however slowly it trickles, and its body
//!   within the same time after the head; a head is at most
//!   `MAX_HEADER_BYTES` (431); a response that makes no progress for
//!   `KEEPALIVE_TIMEOUT_MS`, and a connection silent that long between
//!   requests, are closed (the phases are the listener's `Activity`). Once
//!   upgraded, a WebSocket leaves this loop's care (the registration
//!   deadline is the connection's).
//! - When accept fails for want of descriptors, the loop backs off
//!   (exponentially, to 1 s) instead of spinning, logs at most once a
//!   period, and frees a descriptor by shedding an idle connection the
//!   same way, so the next client (a `/health` probe) gets in.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use backon::{BackoffBuilder, ExponentialBuilder};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::listener::{Activity, AddressSlots, Idle, Peer, Phase, SharedTcp};
use crate::config::Limits;
use crate::hub::Hub;
use crate::metrics::{Metrics, Shed};
use crate::telemetry::{LogThrottle, monotonic_ms as now_ms};

static ACCEPT_FAILED: LogThrottle = LogThrottle::new(Duration::from_secs(10));
static ADDRESS_FULL: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Accepts until `hub.shutdown()` is cancelled; every connection task is
/// spawned on `connections`, which the caller waits for (each finishes its
/// request in flight, then closes).
pub async fn run(listener: TcpListener, app: Router, hub: Arc<Hub>, connections: TaskTracker) {
    let limits = &hub.config().limits;
    let gate = Gate {
        per_address: AddressSlots::new(limits.max_connections_per_ip),
        pending: Pending::new(limits.max_pending_connections),
    };
    let shutdown = hub.shutdown().clone();
    let mut backoff = None;
    let mut shed_last_time = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, addr)) => {
                backoff = None;
                shed_last_time = false;
                let Some((io, peer, watch)) = gate.admit(tcp, addr, limits, hub.metrics()) else {
                    continue;
                };
                connections.spawn(serve_connection(io, peer, watch, app.clone(), hub.clone()));
            }
            // A connection that failed before it was accepted (reset, or
            // a network error Linux reports at accept) is skipped.
            Err(e) if !is_exhaustion(&e) => {}
            // Out of file descriptors (EMFILE/ENFILE) or kernel memory.
            Err(e) => {
                hub.metrics().shed(Shed::AcceptExhausted);
                // A descriptor freed by shedding an idle connection is free
                // once its task drops it: retry after a moment, without
                // growing the backoff, and shed no second one before that
                // retry has been made.
                let evicted = !shed_last_time && gate.pending.evict_one();
                shed_last_time = evicted;
                if evicted {
                    hub.metrics().shed(Shed::PendingConnections);
                }
                let delay = if evicted {
                    Duration::from_millis(5)
                } else {
                    backoff
                        .get_or_insert_with(|| {
                            ExponentialBuilder::default()
                                .with_min_delay(Duration::from_millis(5))
                                .with_max_delay(Duration::from_secs(1))
                                .without_max_times()
                                .build()
                        })
                        .next()
                        .unwrap_or(Duration::from_secs(1))
                };
                if let Some(suppressed) = ACCEPT_FAILED.admit() {
                    tracing::error!(
                        error = %e,
                        suppressed,
                        retry_ms = delay.as_millis() as u64,
                        "accept failed; backing off"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Whether accept failed for want of a resource (descriptors, buffers,
/// memory), not because of the one connection it was accepting.
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A body whose end (or drop) ends a request phase; an empty one has
/// nothing to wait for.
fn tracked<B>(body: B, begin: impl FnOnce() -> Phase) -> Body
where
    B: HttpBody<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    if body.is_end_stream() {
        return Body::new(body);
    }
    Body::new(Tracked {
        inner: body,
        phase: Some(begin()),
    })
}

/// A body that ends its [`Phase`] when it ends, fails or is dropped.
struct Tracked<B> {
    inner: B,
    phase: Option<Phase>,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_))))
            || self.inner.is_end_stream()
        {
            self.phase = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The admission checks at accept.
struct Gate {
    per_address: Arc<AddressSlots>,
    pending: Arc<Pending>,
}

/// What the connection's task watches: its activity, its place among the
/// pending connections, and the signal that it was chosen to make room.
struct Watch {
    activity: Arc<Activity>,
    _pending: PendingSlot,
    evicted: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.activity.unwatch();
    }
}

impl Gate {
    fn admit(
        &self,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
        limits: &Limits,
        metrics: &Metrics,
    ) -> Option<(SharedTcp, Peer, Watch)> {
        let ip = addr.ip();
        let address_slot = if limits.is_trusted_proxy(ip) {
            None
        } else {
            match self.per_address.take(ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics.shed(Shed::ConnectionsPerIp);
                    if let Some(suppressed) = ADDRESS_FULL.admit() {
                        tracing::warn!(
                            %ip,
                            suppressed,
                            max = limits.max_connections_per_ip,
                            "connection refused: its address holds MAX_CONNECTIONS_PER_IP"
                        );
                    }
                    return None;
                }
            }
        };
        let activity = Arc::new(Activity::default());
        let evicted = Arc::new(Notify::new());
        let pending = self.pending.admit(
            PendingEntry {
                ip,
                activity: activity.clone(),
                evicted: evicted.clone(),
            },
            metrics,
        )?;
        if let Err(e) = tcp.set_nodelay(true) {
            // TCP_NODELAY: real-time events go out at once instead of Nagle
            // holding a frame for the peer's delayed ACK (~40 ms).
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let tcp = Arc::new(tcp);
        let peer = Peer {
            addr,
            socket: Arc::downgrade(&tcp),
        };
        let io = SharedTcp::new(tcp, activity.clone(), address_slot);
        Some((
            io,
            peer,
            Watch {
                activity,
                _pending: pending,
                evicted,
            },
        ))
    }
}

/// `MAX_PENDING_CONNECTIONS`: the connections not (yet) upgraded, oldest
/// first. At the cap one with no request in flight is shed to admit the
/// newcomer, taken from the address that holds the most pending
/// connections (a crowd's, not a lone client's), and there the oldest
/// kept-alive one (it was served; its client only reconnects), else the
/// oldest that has sent no complete request yet. A slowloris crowd then
/// only pushes its own members out, while requests that complete in
/// milliseconds keep getting through.
struct Pending {
    max: usize,
    next_id: AtomicU64,
    table: Mutex<PendingTable>,
}

#[derive(Default)]
struct PendingTable {
    conns: BTreeMap<u64, PendingEntry>,
    per_address: HashMap<IpAddr, usize>,
}

struct PendingEntry {
    ip: IpAddr,
    activity: Arc<Activity>,
    evicted: Arc<Notify>,
}

/// A connection's place in [`Pending`], given up when it upgrades or ends.
struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
}

impl Pending {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Pending {
            max,
            next_id: AtomicU64::new(0),
            table: Mutex::new(PendingTable::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, entry: PendingEntry, metrics: &Metrics) -> Option<PendingSlot> {
        let mut table = self.lock();
        if table.conns.len() >= self.max {
            // Shed one for this one, or, every one busy, refuse this one.
            metrics.shed(Shed::PendingConnections);
            if !table.evict() {
                return None;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *table.per_address.entry(entry.ip).or_insert(0) += 1;
        table.conns.insert(id, entry);
        Some(PendingSlot {
            pending: self.clone(),
            id,
        })
    }

    /// Sheds a connection with no request in flight (see [`Pending`]);
    /// false if there is none.
    fn evict_one(&self) -> bool {
        self.lock().evict()
    }
}

impl PendingTable {
    fn evict(&mut self) -> bool {
        // One pass, oldest first: the idle connection whose address holds
        // the most, kept-alive before fresh, the oldest among equals.
        let mut victim: Option<((usize, bool), u64)> = None;
        for (id, e) in &self.conns {
            if !e.activity.is_idle() {
                continue;
            }
            let rank = (
                self.per_address.get(&e.ip).copied().unwrap_or(0),
                e.activity.is_kept_alive(),
            );
            if victim.is_none_or(|(best, _)| rank > best) {
                victim = Some((rank, *id));
            }
        }
        let Some((_, id)) = victim else {
            return false;
        };
        if let Some(entry) = self.remove(id) {
            // A stored permit: the task closes the connection even if it is
            // not waiting on the signal at this instant.
            entry.evicted.notify_one();
        }
        true
    }

    fn remove(&mut self, id: u64) -> Option<PendingEntry> {
        let entry = self.conns.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&entry.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&entry.ip);
            }
        }
        Some(entry)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending.lock().remove(self.id);
    }
}

/// Serves one connection's HTTP requests until it closes, upgrades, is shed
/// by a deadline or for room, or the hub shuts down (the request in flight
/// is finished first).
async fn serve_connection(io: SharedTcp, peer: Peer, watch: Watch, app: Router, hub: Arc<Hub>) {
    let limits = &hub.config().limits;
    let header_ms = limits.header_read_timeout.as_millis() as u64;
    let keepalive_ms = limits.keepalive_timeout.as_millis() as u64;
    let activity = watch.activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        // The phases the watchdog's deadlines follow: the body until read
        // to its end, the handler, the response until written to its end.
        let handling = activity.begin_request();
        let mut request = request.map(|body| tracked(body, || activity.begin_body()));
        request.extensions_mut().insert(ConnectInfo(peer.clone()));
        let app = app.clone();
        let activity = activity.clone();
        async move {
            let response = app.oneshot(request).await;
            let response = response
                .map(|response| response.map(|body| tracked(body, || activity.begin_response())));
            drop(handling);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The bytes hyper buffers for a request head; past it, 431.
    builder.max_buf_size(limits.max_header_bytes.max(8192));
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let shutdown = hub.shutdown().clone();
    let mut draining = false;
    loop {
        // While a handler runs (its body read), its own timeouts bound it:
        // look again when a phase ends.
        let due = watch
            .activity
            .deadline(header_ms, keepalive_ms)
            .map_or(now_ms() + header_ms, |(due, _)| due);
        let wait = Duration::from_millis(due.saturating_sub(now_ms()));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_parse_too_large() {
                        hub.metrics().shed(Shed::HeaderTooLarge);
                    } else {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                }
                return;
            }
            _ = watch.evicted.notified() => return,
            _ = watch.activity.phase_ended() => {}
            _ = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tokio::time::sleep(wait) => {
                if let Some((due, why)) = watch.activity.deadline(header_ms, keepalive_ms)
                    && due <= now_ms()
                {
                    hub.metrics().shed(match why {
                        Idle::HeaderTimeout => Shed::HeaderTimeout,
                        Idle::BodyTimeout => Shed::BodyTimeout,
                        Idle::ResponseStalled => Shed::ResponseStalled,
                        Idle::KeepaliveIdle => Shed::KeepaliveIdle,
                    });
                    return;
                }
            }
        }
    }
}
