//! The WebSocket transport: one loop, driven by one task per connection,
//! for every WebSocket the hub serves (session clients and admin feeds).
//! It reads messages and hands each to the connection's [`Peer`], writes
//! what was queued in the connection's [`Outbox`], pings, enforces the
//! liveness deadlines and sends the close frame.
//!
//! Nothing here knows what a message means, nor about the hub: a peer
//! decides that (`server::connection` for clients, `server::feed` for the
//! admin feed). The hub reaches a connection only through its outbox: it
//! queues shared, pre-framed frames and wakes this task, which writes to
//! the socket ([`SocketWriter`]) whatever is queued in one `writev`,
//! holding no lock but its own write half's. A large fan-out's frames are
//! written by the outbox's flusher thread instead, through the same write
//! half ([`SharedWriter`], attached to the outbox), never both at once and
//! neither waiting for the other.
//!
//! Memory per idle connection is kept small (docs/performance.md): one task
//! whose state holds no request (a message being answered is boxed), a
//! queue that allocates only while frames wait, and a read buffer of
//! [`READ_BUFFER_BYTES`] that only grows for a large message.
//!
//! A message runs to its answer before the next one is read (the peer may
//! hand long work to a task of its own); meanwhile writing, pings and a
//! kick go on.

mod liveness;
mod reader;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::{Sink, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Shed};
use crate::outbox::{CONTROL, Outbound, Outbox};
use crate::protocol::{CloseReason, Frame};

use liveness::{Due, Liveness, PingGrid};
use reader::{ReadReady, ReadSide, close_for, ws_config};

pub use reader::READ_BUFFER_BYTES;
pub use writer::{NonBlockingWrite, SharedWriter, SocketWriter, shutdown_write};

/// How long the goodbye (queued frames at shutdown, the close frame) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// An upgraded connection: what the peer sends is read from `io` (hyper's
/// upgraded I/O, handshake leftovers included); frames are written to
/// `socket`.
pub struct UpgradedSocket {
    pub io: TokioIo<Upgraded>,
    pub socket: Arc<TcpStream>,
}

/// What a connection is for: what its messages mean. The loop hands it
/// each message in order and waits for the answer before reading the next.
pub trait Peer: Send + Sized + 'static {
    /// Answers a text message; the peer comes back with the answer.
    fn on_text(self, text: Utf8Bytes) -> impl Future<Output = Self> + Send + 'static;

    /// A binary message arrived.
    fn on_binary(&mut self);

    /// Whether the peer registered (only asked when [`Limits::register_within`]
    /// set a deadline).
    fn is_registered(&self) -> bool;

    /// The connection ended (the close frame went out); the peer cleans up.
    fn leave(self) -> impl Future<Output = ()> + Send;
}

/// The transport limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message or frame (close 1009 above it).
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    /// Closed (1001) after this long without inbound traffic.
    pub idle_timeout: Duration,
    /// Closed (4401) after this long: the token's remaining lifetime.
    pub expires_in: Option<Duration>,
    /// Closed (4408) unless the peer registered within this long.
    pub register_within: Option<Duration>,
}

/// What the loop was woken for.
enum Event<P> {
    /// Disconnected (slow consumer, replaced, shutdown...).
    Kicked,
    Timer,
    /// The message in progress was answered.
    Answered(P),
    /// The socket write failed (the peer is gone).
    WriteFailed,
    Inbound(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
}

/// A message being answered; it gives the peer back when done.
type Answering<P> = Pin<Box<dyn Future<Output = P> + Send>>;

/// Serves one upgraded connection until it closes. `handle` owns the
/// connection's outbox (the hub queues into it); the hub's `shutdown`
/// closes the connection with 1001 after what was queued.
pub async fn serve<P, H>(
    upgraded: UpgradedSocket,
    handle: H,
    peer: P,
    limits: Limits,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    conn_id: u64,
) where
    P: Peer,
    H: AsRef<Outbox> + Clone + Send + Sync + 'static,
{
    let outbox = handle.as_ref();
    let tcp = upgraded.socket;
    let writer = Arc::new(SharedWriter::new(tcp.clone()));
    outbox.attach(&writer);
    let mut socket = WebSocketStream::from_raw_socket(
        ReadSide::new(upgraded.io),
        Role::Server,
        Some(ws_config(limits.max_message_bytes)),
    )
    .await;
    metrics.connections.inc();
    metrics.connections_opened.inc();

    let now = Instant::now();
    let mut liveness = Liveness::new(
        limits.ping_interval,
        PingGrid::for_interval(limits.ping_interval),
        limits.idle_timeout,
        limits.expires_in.map(|d| now + d),
        limits.register_within.map(|d| now + d),
        now,
    );
    // Between messages: Some. While a message is answered, the answer
    // holds the peer.
    let mut idle_peer = Some(peer);
    let mut answering: Option<Answering<P>> = None;
    // The client sent a close frame (tungstenite echoes it).
    let mut peer_closed = false;
    let read_ready = ReadReady::new();
    let read_waker = Waker::from(read_ready.clone());
    let timer = tokio::time::sleep_until(liveness.deadline().into());
    tokio::pin!(timer);
    // Draining the hub kicks the connection: its shutdown future is polled
    // once, with a waker that disconnects (so the loop does not poll the
    // hub-wide token on every wake-up).
    let on_shutdown = shutdown.cancelled();
    tokio::pin!(on_shutdown);
    let kick = Waker::from(Arc::new(ShutdownKick(handle.clone())));
    if on_shutdown
        .as_mut()
        .poll(&mut Context::from_waker(&kick))
        .is_ready()
    {
        outbox.disconnect(CloseReason::ShuttingDown);
    }

    loop {
        let event = std::future::poll_fn(|cx| {
            // Register before looking: a frame or a kick after this wakes us.
            outbox.register(cx.waker());
            if outbox.is_kicked() {
                return Poll::Ready(Event::Kicked);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            if let Some(request) = answering.as_mut()
                && let Poll::Ready(peer) = request.as_mut().poll(cx)
            {
                return Poll::Ready(Event::Answered(peer));
            }
            // A full socket only pauses writing: the loop still reads,
            // pings and notices a kick.
            if let Poll::Ready(Err(e)) = writer.poll_write(outbox, cx, metrics) {
                tracing::debug!(error = %e, conn_id, "websocket write failed");
                return Poll::Ready(Event::WriteFailed);
            }
            // The next message is read once the previous one is answered,
            // and only when the socket may have one.
            if answering.is_none() && read_ready.take(cx.waker()) {
                let polled = socket.poll_next_unpin(&mut Context::from_waker(&read_waker));
                // A ping read is answered with a pong, in order with the
                // rest of what the peer gets.
                if let Some(reply) = socket.get_mut().take_written() {
                    send_control(outbox, metrics, reply);
                }
                if let Poll::Ready(msg) = polled {
                    read_ready.again();
                    return Poll::Ready(Event::Inbound(msg));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Kicked => break,
            Event::Timer => {
                let now = Instant::now();
                match liveness.on_timer(now) {
                    Due::Expired => {
                        outbox.disconnect(CloseReason::TokenExpired);
                        break;
                    }
                    // Nothing is read while a message is answered: it counts
                    // as traffic.
                    Due::Idle if answering.is_some() => liveness.on_inbound(now),
                    Due::Idle => {
                        tracing::debug!(conn_id, "no inbound traffic within the idle timeout");
                        outbox.disconnect(CloseReason::IdleTimeout);
                        break;
                    }
                    // A `register` in progress may still complete.
                    Due::Unregistered if answering.is_some() => liveness.register_overdue(),
                    Due::Unregistered => {
                        close_unregistered(outbox, metrics, conn_id);
                        break;
                    }
                    Due::Ping => send_control(outbox, metrics, Frame::ping()),
                    Due::Nothing => {}
                }
                timer.as_mut().reset(liveness.deadline().into());
            }
            Event::Answered(peer) => {
                answering = None;
                let overdue = liveness.on_answered(peer.is_registered());
                idle_peer = Some(peer);
                if overdue {
                    close_unregistered(outbox, metrics, conn_id);
                    break;
                }
            }
            Event::WriteFailed => {
                outbox.disconnect(CloseReason::Normal);
                break;
            }
            Event::Inbound(msg) => {
                liveness.on_inbound(Instant::now());
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(peer) = idle_peer.take() {
                            answering = Some(Box::pin(peer.on_text(text)));
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if let Some(peer) = idle_peer.as_mut() {
                            peer.on_binary();
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        peer_closed = true;
                        outbox.disconnect(CloseReason::Normal);
                        break;
                    }
                    None => {
                        outbox.disconnect(CloseReason::Normal);
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, conn_id, "websocket read failed");
                        outbox.disconnect(close_for(&e));
                        break;
                    }
                }
            }
        }
    }

    let reason = outbox.close_reason().unwrap_or(CloseReason::Normal);
    // Boxed: the goodbye and the leave are not part of an idle connection's
    // state.
    Box::pin(farewell(
        socket,
        &tcp,
        &writer,
        outbox,
        metrics,
        reason,
        peer_closed,
    ))
    .await;
    // The socket closes here (the outbox holds the write half weakly).
    drop(writer);
    drop(tcp);
    // A message being answered completes (a join half done would leave the
    // session inconsistent); then the peer leaves.
    if let Some(request) = answering {
        idle_peer = Some(request.await);
    }
    if let Some(peer) = idle_peer {
        Box::pin(peer.leave()).await;
    }
    metrics.connections.dec();
    metrics
        .connections_closed
        .with_label_values(&[reason.label()])
        .inc();
}

/// Closes (4408) a connection that did not register in time.
fn close_unregistered(outbox: &Outbox, metrics: &Metrics, conn_id: u64) {
    tracing::debug!(conn_id, "not registered within the registration timeout");
    metrics.shed(Shed::RegisterTimeout);
    outbox.disconnect(CloseReason::RegisterTimeout);
}

/// Sends a control frame (ping, pong) in order with the other frames.
fn send_control(outbox: &Outbox, metrics: &Metrics, frame: Frame) {
    outbox.send(Outbound::reply(frame, CONTROL), metrics);
}

/// The waker of a connection's hub-shutdown future: draining the hub
/// disconnects the connection (1001), which wakes its task.
struct ShutdownKick<H>(H);

impl<H: AsRef<Outbox> + Send + Sync + 'static> Wake for ShutdownKick<H> {
    fn wake(self: Arc<Self>) {
        self.0.as_ref().disconnect(CloseReason::ShuttingDown);
    }
}

/// Sends the close frame: after what is still queued when the hub shuts
/// down, else after the rest of a partly written frame only; the echo
/// tungstenite made if the peer closed first. Bounded: a peer that reads
/// nothing must not keep the connection. Then the socket is half-closed and
/// let go.
async fn farewell(
    mut socket: WebSocketStream<ReadSide>,
    tcp: &TcpStream,
    writer: &SharedWriter,
    outbox: &Outbox,
    metrics: &Metrics,
    reason: CloseReason,
    peer_closed: bool,
) {
    let close = if peer_closed {
        // tungstenite writes its echo of the peer's close on a flush.
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Sink::<Message>::poll_flush(Pin::new(&mut socket), &mut cx);
        socket.get_mut().take_written()
    } else {
        None
    };
    let close = close.unwrap_or_else(|| Frame::close(reason.code(), reason.text()));
    writer.finish(outbox, Some(close), reason == CloseReason::ShuttingDown);
    let goodbye = std::future::poll_fn(|cx| writer.poll_write(outbox, cx, metrics));
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, goodbye).await {
        let _ = shutdown_write(tcp);
    }
    writer.detach(outbox);
}
