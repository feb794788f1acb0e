//! The WebSocket transport of one connection, driven by one task: it
//! reads messages (size limit, rate limit, in-flight cap) and hands them to
//! the connection's [`ClientSession`], writes what the hub queued for the
//! client, pings, and sends the close frame.
//!
//! Memory per idle connection is kept small (docs/performance.md): one task
//! whose state holds no request (a request in progress is boxed, so the
//! large futures of `register` and friends are not part of every idle
//! connection), a queue that allocates only while frames wait, and a socket
//! read buffer of [`READ_BUFFER_BYTES`] that only grows for a large message.
//!
//! Reading (frames, masking, fragments, UTF-8, size limits, pong and
//! close replies) is tungstenite's. Writing is ours: every frame the client
//! gets is pre-framed ([`crate::protocol::Frame`]) and handed to the
//! connection's [`crate::outbox::Outbox`]; this task alone writes to the
//! socket ([`SocketWriter`]), whatever is queued in one `writev`, under no
//! shared lock. tungstenite's own
//! replies (pong, the close echo) are taken from it as bytes ([`ReadSide`])
//! and sent the same way, so frames never interleave.
//!
//! What a message means (registration, requests) is decided in `hub/`;
//! this loop only asks [`crate::protocol::ClientMessage::execution`] whether
//! it runs inline (reading waits until it is answered, writing goes on) or
//! in its own task, capped per connection, so one long AI call never stalls
//! pings or other requests.
//!
//! Liveness ([`Liveness`]) is one timer: it pings every `PING_INTERVAL_MS`,
//! closes the connection (1001) after `IDLE_TIMEOUT_MS` without inbound
//! traffic, so a half-open peer (an agent whose network vanished) does not
//! keep its role, closes it (4401) when its token expires, and (4408) when
//! it has not registered within `REGISTER_TIMEOUT_MS` of the upgrade, so a
//! socket that never registers does not hold a connection slot for good.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use axum::extract::WebSocketUpgrade;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::{Sink, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::Identity;
use crate::hub::Hub;
use crate::hub::client::ClientSession;
use crate::hub::registry::ClientHandle;
use crate::metrics::Shed;
use crate::outbox::{CONTROL, Outbound};
use crate::protocol::{
    ClientInfo, CloseReason, ErrorCode, Execution, Frame, HubError, parse_client_message_with,
};
use crate::server::outbox::SocketWriter;

use super::listener::shutdown_write;
use super::upgrade::UpgradedSocket;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long the goodbye (queued frames at shutdown, the close frame) may take.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Initial read buffer of a socket (tungstenite allocates and zero-fills it
/// up front; its default is 128 KiB). A larger message grows it to the
/// message's size, up to `MAX_MESSAGE_BYTES`.
/// It is also the most one socket read takes: inbound messages are small
/// (a `register` or `broadcast` is a few hundred bytes), and the buffer is
/// part of every idle connection.
pub const READ_BUFFER_BYTES: usize = 512;

/// Frames are gathered up to this many bytes before a socket write (the
/// admin feed's axum socket; client connections write through their
/// handle).
pub const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The WebSocket settings of the admin feed: message and frame size limit
/// (close 1009 above it) and small socket buffers.
pub fn configure(ws: WebSocketUpgrade, max_message_bytes: usize) -> WebSocketUpgrade {
    ws.max_message_size(max_message_bytes)
        .max_frame_size(max_message_bytes)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
}

/// The reading settings of a client connection: message and frame size
/// limit (close 1009 above it), a small read buffer; tungstenite's own
/// writes (pong, close echo) go to [`ReadSide`] as soon as it makes them.
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
}

/// What tungstenite reads from and writes to: it reads the upgraded
/// connection; what it writes (a pong, the echo of a close) is kept here
/// and sent through the connection's handle, in order with the hub's
/// frames.
pub struct ReadSide {
    io: TokioIo<Upgraded>,
    written: Vec<u8>,
}

impl ReadSide {
    /// What tungstenite wrote since the last call, as one raw frame.
    fn take_written(&mut self) -> Option<Frame> {
        (!self.written.is_empty())
            .then(|| Frame::raw(Bytes::from(std::mem::take(&mut self.written))))
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

type Socket = WebSocketStream<ReadSide>;

/// Token bucket for the per-connection message rate limit.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// When to ping, when to give up on a silent peer, when the token
/// expires and by when the connection must have registered. Inbound
/// traffic only moves `last_inbound`; the single timer is re-armed when it
/// fires, so a busy connection costs no timer resets.
struct Liveness {
    ping_interval: Duration,
    idle_timeout: Duration,
    next_ping: Instant,
    last_inbound: Instant,
    /// The token's `exp` (None without a token: never).
    expires_at: Option<Instant>,
    registration: Registration,
}

/// Where the connection is with its `register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// Not registered; closed (4408) if still not at this instant.
    Due(Instant),
    /// The deadline passed while a request (its `register`) was being
    /// answered: that answer decides.
    Overdue,
    Done,
}

/// What the liveness timer asks for when it fires.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    Ping,
    Idle,
    Expired,
    Unregistered,
}

impl Liveness {
    /// `register_by`: None when the connection needs no `register` deadline.
    fn new(
        ping_interval: Duration,
        idle_timeout: Duration,
        expires_at: Option<Instant>,
        register_by: Option<Instant>,
        now: Instant,
    ) -> Self {
        Liveness {
            ping_interval,
            idle_timeout,
            next_ping: now + ping_interval,
            last_inbound: now,
            expires_at,
            registration: register_by.map_or(Registration::Done, Registration::Due),
        }
    }

    /// The next instant the timer must fire.
    fn deadline(&self) -> Instant {
        let mut at = self.next_ping.min(self.last_inbound + self.idle_timeout);
        if let Some(exp) = self.expires_at {
            at = at.min(exp);
        }
        if let Registration::Due(by) = self.registration {
            at = at.min(by);
        }
        at
    }

    fn on_inbound(&mut self, now: Instant) {
        self.last_inbound = now;
    }

    /// An inline request was answered; true when the connection missed its
    /// registration deadline (the request was not a successful `register`).
    fn on_answered(&mut self, registered: bool) -> bool {
        if registered {
            self.registration = Registration::Done;
        }
        self.registration == Registration::Overdue
    }

    /// The deadline passed while a request was being answered.
    fn register_overdue(&mut self) {
        self.registration = Registration::Overdue;
    }

    fn on_timer(&mut self, now: Instant) -> Due {
        if self.expires_at.is_some_and(|exp| now >= exp) {
            return Due::Expired;
        }
        if matches!(self.registration, Registration::Due(by) if now >= by) {
            return Due::Unregistered;
        }
        if now >= self.last_inbound + self.idle_timeout {
            return Due::Idle;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.ping_interval;
            return Due::Ping;
        }
        Due::Nothing
    }
}

struct Connection {
    hub: Arc<Hub>,
    session: ClientSession,
    rate: RateLimiter,
    in_flight: Arc<Semaphore>,
}

/// An inline request in progress; it gives the connection back when done.
type Answering = Pin<Box<dyn Future<Output = Connection> + Send>>;

/// What woke the connection's loop.
enum Event {
    /// Disconnected (slow consumer, replaced, shutdown...).
    Kicked,
    Timer,
    /// The inline request in progress was answered.
    Answered(Connection),
    /// The socket write failed (the peer is gone).
    WriteFailed,
    Inbound(Option<Result<Message, WsError>>),
}

/// Serves one upgraded connection; `identity` is its verified token (None
/// with auth off), whose `exp` closes the connection with 4401.
pub async fn handle_socket(hub: Arc<Hub>, upgraded: UpgradedSocket, identity: Option<Identity>) {
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let placeholder = ClientInfo {
        client_id: String::new(),
        client_name: String::new(),
        instance: hub.instance().to_string(),
        capabilities: Vec::new(),
        owner: None,
        connected_at: None,
    };
    let handle = ClientHandle::new(
        placeholder,
        conn_id,
        hub.config().outbound_queue_len,
        hub.config().outbound_queue_bytes,
    );
    let tcp = upgraded.socket;
    let mut writer = SocketWriter::new(tcp.clone());
    let mut socket = WebSocketStream::from_raw_socket(
        ReadSide {
            io: upgraded.io,
            written: Vec::new(),
        },
        Role::Server,
        Some(ws_config(hub.config().max_message_bytes)),
    )
    .await;
    hub.metrics().connections.inc();
    hub.metrics().connections_opened.inc();

    let now = Instant::now();
    let mut liveness = Liveness::new(
        hub.config().ping_interval,
        hub.config().idle_timeout,
        identity.as_ref().map(|id| now + id.expires_in()),
        Some(now + hub.config().limits.register_timeout),
        now,
    );
    // Idle between messages: Some. While an inline request runs, it holds
    // the connection and `answering` holds the request.
    let mut conn = Some(Connection {
        rate: RateLimiter::new(
            hub.config().rate_limit_per_sec,
            hub.config().rate_limit_burst,
        ),
        in_flight: Arc::new(Semaphore::new(hub.config().max_in_flight)),
        hub: hub.clone(),
        session: ClientSession::new(hub.clone(), handle.clone(), identity.map(Arc::new)),
    });
    let mut answering: Option<Answering> = None;
    // The client sent a close frame (tungstenite echoes it).
    let mut peer_closed = false;
    let read_ready = Arc::new(ReadReady {
        ready: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let read_waker = Waker::from(read_ready.clone());
    let timer = tokio::time::sleep_until(liveness.deadline().into());
    tokio::pin!(timer);
    // Draining the hub kicks the connection: its shutdown future is polled
    // once, with a waker that disconnects (so the loop does not poll the
    // hub-wide token on every wake-up).
    let shutdown = hub.shutdown().cancelled();
    tokio::pin!(shutdown);
    let on_shutdown = Waker::from(Arc::new(ShutdownKick(handle.clone())));
    if shutdown
        .as_mut()
        .poll(&mut Context::from_waker(&on_shutdown))
        .is_ready()
    {
        handle.disconnect(CloseReason::ShuttingDown);
    }

    loop {
        let event = std::future::poll_fn(|cx| {
            // Register before looking: a frame or a kick after this wakes us.
            handle.outbox().register(cx.waker());
            if handle.outbox().is_kicked() {
                return Poll::Ready(Event::Kicked);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            if let Some(request) = answering.as_mut()
                && let Poll::Ready(conn) = request.as_mut().poll(cx)
            {
                return Poll::Ready(Event::Answered(conn));
            }
            // A full socket only pauses writing: the loop still reads,
            // pings and notices a kick.
            if let Poll::Ready(Err(e)) = writer.poll_write(handle.outbox(), cx, hub.metrics()) {
                tracing::debug!(error = %e, conn_id, "websocket write failed");
                return Poll::Ready(Event::WriteFailed);
            }
            // The next message is read once the inline one is answered, and
            // only when the socket may have one.
            if answering.is_none() && read_ready.ready.swap(false, Ordering::AcqRel) {
                read_ready.task.register(cx.waker());
                let polled = socket.poll_next_unpin(&mut Context::from_waker(&read_waker));
                // A ping read is answered with a pong, in order with the
                // rest of what the client gets.
                if let Some(reply) = socket.get_mut().take_written() {
                    send_control(&handle, &hub, reply);
                }
                if let Poll::Ready(msg) = polled {
                    // There may be more: read again on the next turn.
                    read_ready.ready.store(true, Ordering::Release);
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
                        handle.disconnect(CloseReason::TokenExpired);
                        break;
                    }
                    // Nothing is read while a request is answered: it counts
                    // as traffic.
                    Due::Idle if answering.is_some() => liveness.on_inbound(now),
                    Due::Idle => {
                        tracing::debug!(conn_id, "no inbound traffic within the idle timeout");
                        handle.disconnect(CloseReason::IdleTimeout);
                        break;
                    }
                    // A `register` in progress may still complete.
                    Due::Unregistered if answering.is_some() => liveness.register_overdue(),
                    Due::Unregistered => {
                        close_unregistered(&handle, &hub, conn_id);
                        break;
                    }
                    Due::Ping => send_control(&handle, &hub, Frame::ping()),
                    Due::Nothing => {}
                }
                timer.as_mut().reset(liveness.deadline().into());
            }
            Event::Answered(done) => {
                answering = None;
                let overdue = liveness.on_answered(done.session.is_registered());
                conn = Some(done);
                if overdue {
                    close_unregistered(&handle, &hub, conn_id);
                    break;
                }
            }
            Event::WriteFailed => {
                handle.disconnect(CloseReason::Normal);
                break;
            }
            Event::Inbound(msg) => {
                liveness.on_inbound(Instant::now());
                let Some(c) = conn.as_mut() else { continue };
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        let Some(mut c) = conn.take() else { continue };
                        answering = Some(Box::pin(async move {
                            c.on_text(text).await;
                            c
                        }));
                    }
                    // Counted by the rate limit like text: answering each
                    // one costs as much as answering a bad text frame.
                    Some(Ok(Message::Binary(_))) => {
                        if c.within_rate(None) {
                            c.reply_error(
                                HubError::new(
                                    ErrorCode::BinaryNotSupported,
                                    "binary frames are not supported; send JSON text frames",
                                ),
                                None,
                            );
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        peer_closed = true;
                        handle.disconnect(CloseReason::Normal);
                        break;
                    }
                    None => {
                        handle.disconnect(CloseReason::Normal);
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, conn_id, "websocket read failed");
                        handle.disconnect(close_for(&e));
                        break;
                    }
                }
            }
        }
    }

    let reason = handle.close_reason().unwrap_or(CloseReason::Normal);
    // Boxed: the goodbye and the leave are not part of an idle connection's
    // state.
    Box::pin(farewell(
        socket,
        &tcp,
        writer,
        &handle,
        &hub,
        reason,
        peer_closed,
    ))
    .await;
    drop(tcp);
    // A request that was being answered completes (a join half done would
    // leave the session inconsistent); then the client leaves.
    if let Some(request) = answering {
        conn = Some(request.await);
    }
    if let Some(mut conn) = conn {
        Box::pin(conn.session.leave()).await;
    }
    hub.metrics().connections.dec();
    hub.metrics()
        .connections_closed
        .with_label_values(&[reason.label()])
        .inc();
}

/// Closes (4408) a connection that did not register in time.
fn close_unregistered(handle: &ClientHandle, hub: &Hub, conn_id: u64) {
    tracing::debug!(conn_id, "not registered within the registration timeout");
    hub.metrics().shed(Shed::RegisterTimeout);
    handle.disconnect(CloseReason::RegisterTimeout);
}

/// Sends a control frame (ping, pong) in order with the other frames.
fn send_control(handle: &ClientHandle, hub: &Hub, frame: Frame) {
    handle.send(Outbound::reply(frame, CONTROL), hub.metrics());
}

/// The waker the socket's read side is polled with: it marks the socket as
/// worth reading and wakes the connection's task. A wake-up for a queued
/// frame then skips the read side (a tungstenite read attempt, two waker
/// registrations and the socket's readiness lock per delivery).
struct ReadReady {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadReady {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The waker of a connection's hub-shutdown future: draining the hub
/// disconnects the connection (1001), which wakes its task.
struct ShutdownKick(ClientHandle);

impl Wake for ShutdownKick {
    fn wake(self: Arc<Self>) {
        self.0.disconnect(CloseReason::ShuttingDown);
    }
}

/// Sends the close frame: after what is still queued when the hub shuts
/// down, else after the rest of a partly written frame only; the echo
/// tungstenite made if the client closed first. Bounded: a peer that reads
/// nothing must not keep the connection. Then the socket is half-closed and
/// let go.
async fn farewell(
    mut socket: Socket,
    tcp: &tokio::net::TcpStream,
    mut writer: SocketWriter,
    handle: &ClientHandle,
    hub: &Hub,
    reason: CloseReason,
    peer_closed: bool,
) {
    let close = if peer_closed {
        // tungstenite writes its echo of the client's close on a flush.
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Sink::<Message>::poll_flush(Pin::new(&mut socket), &mut cx);
        socket.get_mut().take_written()
    } else {
        None
    };
    let close = close.unwrap_or_else(|| Frame::close(reason.code(), reason.text()));
    let outbox = handle.outbox();
    writer.finish(outbox, Some(close), reason == CloseReason::ShuttingDown);
    let goodbye = std::future::poll_fn(|cx| writer.poll_write(outbox, cx, hub.metrics()));
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, goodbye).await {
        let _ = shutdown_write(tcp);
    }
    writer.detach(outbox);
}

/// How a read error closes the connection (RFC 6455 §7.4.1): 1009 for a
/// message or frame over `max_message_size` / `max_frame_size`, 1002 for a
/// frame that breaks the protocol, 1007 for text that is not UTF-8; a
/// connection that broke (or was reset without a close) just ends (1000).
fn close_for(e: &WsError) -> CloseReason {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::TooLarge,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Normal,
        WsError::Protocol(_) => CloseReason::ProtocolError,
        WsError::Utf8(_) => CloseReason::InvalidPayload,
        _ => CloseReason::Normal,
    }
}

impl Connection {
    fn reply_error(&self, err: HubError, request_id: Option<&str>) {
        self.session.reply_error(&err, request_id);
    }

    /// Takes a token from the connection's rate limit; without one the
    /// frame is dropped and answered with `rate_limited`.
    fn within_rate(&mut self, request_id: Option<&str>) -> bool {
        if self.rate.allow() {
            return true;
        }
        self.reply_error(
            HubError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second; slow down",
                    self.hub.config().rate_limit_per_sec
                ),
            ),
            request_id,
        );
        false
    }

    async fn on_text(&mut self, text: Utf8Bytes) {
        let parsed = parse_client_message_with(text.as_str(), &self.hub.config().field_limits);
        let kind = match &parsed {
            Ok((msg, _)) => msg.kind(),
            Err(_) => crate::metrics::RECEIVED_INVALID,
        };
        self.hub
            .metrics()
            .messages_received
            .with_label_values(&[kind])
            .inc();
        // Echo the request_id whenever it could be read, even from a
        // message that is otherwise invalid (docs/protocol.md §2).
        let rid = match &parsed {
            Ok((_, r)) | Err((_, r)) => r.as_deref(),
        };
        if !self.within_rate(rid) {
            return;
        }
        let (msg, request_id) = match parsed {
            Ok(ok) => ok,
            Err((err, rid)) => return self.reply_error(err, rid.as_deref()),
        };
        let rid = request_id.as_deref();
        match msg.execution() {
            Execution::Immediate => {
                if let Err(e) = self.session.immediate(msg, rid).await {
                    self.reply_error(e, rid);
                }
            }
            Execution::InOrder => match self.session.request(msg) {
                Ok(request) => request.answer(rid).await,
                Err(e) => self.reply_error(e, rid),
            },
            Execution::Concurrent => {
                let request = match self.session.request(msg) {
                    Ok(request) => request,
                    Err(e) => return self.reply_error(e, rid),
                };
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    return self.reply_error(
                        HubError::new(
                            ErrorCode::TooManyInFlight,
                            format!(
                                "at most {} requests may be in progress per connection",
                                self.hub.config().max_in_flight
                            ),
                        ),
                        rid,
                    );
                };
                tokio::spawn(async move {
                    request
                        .answer_then(request_id.as_deref(), move || drop(permit))
                        .await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_close_with_their_rfc_6455_codes() {
        let too_long = WsError::Capacity(CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        });
        assert_eq!(close_for(&too_long), CloseReason::TooLarge);
        let unmasked = WsError::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert_eq!(close_for(&unmasked).code(), 1002);
        let reset = WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(close_for(&reset), CloseReason::Normal);
        assert_eq!(close_for(&WsError::Utf8("bad".into())).code(), 1007);
        assert_eq!(close_for(&WsError::ConnectionClosed), CloseReason::Normal);
        // Typed, not read from the text.
        let io = std::io::Error::other("message too long");
        assert_eq!(close_for(&WsError::Io(io)), CloseReason::Normal);
    }

    #[test]
    fn liveness_pings_on_schedule_and_gives_up_after_silence() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), ms(250), None, None, t0);
        assert_eq!(l.deadline(), t0 + ms(100));
        assert_eq!(l.on_timer(t0 + ms(50)), Due::Nothing);
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(200));
        // Traffic (a pong) keeps the connection; pings go on regardless.
        l.on_inbound(t0 + ms(180));
        assert_eq!(l.on_timer(t0 + ms(200)), Due::Ping);
        assert_eq!(l.on_timer(t0 + ms(300)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(400));
        assert_eq!(l.on_timer(t0 + ms(429)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(430));
        assert_eq!(l.on_timer(t0 + ms(430)), Due::Idle);
    }

    #[test]
    fn liveness_fires_at_token_expiry_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), ms(250), Some(t0 + ms(150)), None, t0);
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(150));
        assert_eq!(l.on_timer(t0 + ms(150)), Due::Expired);
        // Expiry wins over a silent peer due at the same instant.
        let mut l = Liveness::new(ms(100), ms(250), Some(t0 + ms(250)), None, t0);
        assert_eq!(l.on_timer(t0 + ms(250)), Due::Expired);
    }

    #[test]
    fn liveness_closes_a_connection_not_registered_by_its_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        assert_eq!(l.deadline(), t0 + ms(50));
        assert_eq!(l.on_timer(t0 + ms(50)), Due::Unregistered);
        // Registered in time: the deadline no longer applies.
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        assert!(!l.on_answered(true));
        assert_eq!(l.deadline(), t0 + ms(100));
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        // Due while its `register` was answered: that answer decides.
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        l.register_overdue();
        assert_eq!(l.deadline(), t0 + ms(100));
        assert!(l.on_answered(false));
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        l.register_overdue();
        assert!(!l.on_answered(true));
        // Unregistered but not yet due: an answer changes nothing.
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        assert!(!l.on_answered(false));
        assert_eq!(l.deadline(), t0 + ms(50));
    }
}
