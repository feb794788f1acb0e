//! The WebSocket transport of one connection: a reader loop (size limit,
//! rate limit, in-flight cap) that parses messages and hands them to the
//! connection's [`ClientSession`], and a writer task that drains the
//! connection's bounded queue and sends the close frame.
//!
//! Memory per idle connection is kept small (docs/performance.md): the
//! socket's read buffer starts at [`READ_BUFFER_BYTES`] and only grows for a
//! large message, and the writer coalesces whatever is queued into one
//! socket write of up to [`WRITE_BUFFER_BYTES`] per flush.
//!
//! What a message means (registration, requests) is decided in `hub/`;
//! this loop only asks [`crate::protocol::ClientMessage::execution`] whether
//! it runs inline or in its own task, capped per connection, so one long AI
//! call never stalls pings or other requests.
//!
//! Liveness ([`Liveness`]) is one timer in the reader's `select!`: it asks
//! the writer for a WebSocket ping every `PING_INTERVAL_MS` and closes the
//! connection (1001) after `IDLE_TIMEOUT_MS` without inbound traffic, so a
//! half-open peer (an agent whose network vanished) does not keep its role.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::hub::Hub;
use crate::hub::client::ClientSession;
use crate::hub::registry::{ClientHandle, CloseReason, Outbound};
use crate::protocol::{
    ClientInfo, ErrorCode, Execution, HubError, now_millis, parse_client_message_with,
};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long the goodbye (queued frames at shutdown, the close frame) may take.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Initial read buffer of a socket (tungstenite allocates and zero-fills it
/// up front; its default is 128 KiB). A larger message grows it to the
/// message's size, up to `MAX_MESSAGE_BYTES`.
pub const READ_BUFFER_BYTES: usize = 2 * 1024;

/// Frames are gathered up to this many bytes before a socket write; a flush
/// writes the rest. tungstenite's default (128 KiB) is a buffer each busy
/// connection keeps at that size.
pub const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// At most this many queued bytes go into one flush, so one busy connection
/// yields to the others between batches.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The WebSocket settings of every connection: message and frame size limit
/// (close 1009 above it) and small socket buffers.
pub fn configure(ws: WebSocketUpgrade, max_message_bytes: usize) -> WebSocketUpgrade {
    ws.max_message_size(max_message_bytes)
        .max_frame_size(max_message_bytes)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
}

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

/// When to ping and when to give up on a silent peer. Inbound traffic only
/// moves `last_inbound`; the single timer is re-armed when it fires, so a
/// busy connection costs no timer resets.
struct Liveness {
    ping_interval: Duration,
    idle_timeout: Duration,
    next_ping: Instant,
    last_inbound: Instant,
}

/// What the liveness timer asks for when it fires.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    Ping,
    Idle,
}

impl Liveness {
    fn new(ping_interval: Duration, idle_timeout: Duration, now: Instant) -> Self {
        Liveness {
            ping_interval,
            idle_timeout,
            next_ping: now + ping_interval,
            last_inbound: now,
        }
    }

    /// The next instant the timer must fire.
    fn deadline(&self) -> Instant {
        self.next_ping.min(self.last_inbound + self.idle_timeout)
    }

    fn on_inbound(&mut self, now: Instant) {
        self.last_inbound = now;
    }

    fn on_timer(&mut self, now: Instant) -> Due {
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

/// Serves one upgraded connection; `identity` is its verified token (None
/// with auth off), whose `exp` closes the connection with 4401.
pub async fn handle_socket(hub: Arc<Hub>, socket: WebSocket, identity: Option<Identity>) {
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(hub.config.outbound_queue_len);
    let kick = CancellationToken::new();
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
        tx,
        kick.clone(),
        hub.config.outbound_queue_bytes,
    );
    hub.metrics.connections.inc();
    hub.metrics.connections_opened.inc();

    // The writer owns the sink; the reader's timer asks it for pings.
    let ping = Arc::new(Notify::new());
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        kick.clone(),
        handle.clone(),
        hub.clone(),
        ping.clone(),
    ));

    let mut conn = Connection {
        rate: RateLimiter::new(hub.config.rate_limit_per_sec, hub.config.rate_limit_burst),
        in_flight: Arc::new(Semaphore::new(hub.config.max_in_flight)),
        hub: hub.clone(),
        session: ClientSession::new(hub.clone(), handle.clone(), identity.clone().map(Arc::new)),
    };
    // Without a token the connection never expires.
    let expiry = async {
        match &identity {
            Some(id) => tokio::time::sleep(id.expires_in()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);

    let mut liveness = Liveness::new(
        hub.config.ping_interval,
        hub.config.idle_timeout,
        Instant::now(),
    );
    let timer = tokio::time::sleep_until(liveness.deadline().into());
    tokio::pin!(timer);

    loop {
        tokio::select! {
            _ = kick.cancelled() => break,
            _ = hub.shutdown.cancelled() => {
                handle.disconnect(CloseReason::ShuttingDown);
                break;
            }
            _ = &mut expiry => {
                handle.disconnect(CloseReason::TokenExpired);
                break;
            }
            _ = &mut timer => {
                match liveness.on_timer(Instant::now()) {
                    Due::Idle => {
                        tracing::debug!(conn_id, "no inbound traffic within the idle timeout");
                        handle.disconnect(CloseReason::IdleTimeout);
                        break;
                    }
                    Due::Ping => ping.notify_one(),
                    Due::Nothing => {}
                }
                timer.as_mut().reset(liveness.deadline().into());
            }
            msg = stream.next() => match msg.inspect(|_| liveness.on_inbound(Instant::now())) {
                Some(Ok(Message::Text(text))) => conn.on_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => conn.reply_error(
                    HubError::new(ErrorCode::BinaryNotSupported, "binary frames are not supported; send JSON text frames"),
                    None,
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    handle.disconnect(CloseReason::Normal);
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, conn_id, "websocket read failed");
                    let reason = if is_too_large(e) { CloseReason::TooLarge } else { CloseReason::Normal };
                    handle.disconnect(reason);
                    break;
                }
            }
        }
    }

    conn.session.leave().await;
    // The writer sends the close frame and ends once kicked.
    let _ = writer.await;
    let reason = handle.close_reason().unwrap_or(CloseReason::Normal);
    hub.metrics.connections.dec();
    hub.metrics
        .connections_closed
        .with_label_values(&[reason.label()])
        .inc();
}

/// A message or frame over `max_message_size` / `max_frame_size` (close
/// 1009). axum wraps the tungstenite error it got from the socket.
fn is_too_large(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<WsError>(),
        Some(WsError::Capacity(CapacityError::MessageTooLong { .. }))
    )
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    kick: CancellationToken,
    handle: ClientHandle,
    hub: Arc<Hub>,
    ping: Arc<Notify>,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = kick.cancelled() => break,
            _ = ping.notified() => None,
            out = rx.recv() => match out {
                Some(out) => Some(out),
                None => break,
            },
        };
        // A client that stops reading blocks the socket write: the kick
        // (slow consumer, shutdown, idle timeout) must still end the connection.
        let written = tokio::select! {
            _ = kick.cancelled() => break,
            written = async {
                match first {
                    Some(first) => write_batch(&mut sink, first, &mut rx, &handle, &hub).await,
                    None => sink.send(Message::Ping(Default::default())).await,
                }
            } => written,
        };
        if written.is_err() {
            handle.disconnect(CloseReason::Normal);
            return;
        }
    }
    let reason = handle.close_reason().unwrap_or(CloseReason::Normal);
    let farewell = async {
        if reason == CloseReason::ShuttingDown {
            // Deliver what is already queued before saying goodbye.
            while let Ok(out) = rx.try_recv() {
                if write_batch(&mut sink, out, &mut rx, &handle, &hub)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let close = CloseFrame {
            code: reason.code(),
            reason: reason.text().into(),
        };
        if sink.send(Message::Close(Some(close))).await.is_ok() {
            let _ = sink.close().await;
        }
    };
    // Bounded: a peer that reads nothing must not keep the task alive.
    let _ = tokio::time::timeout(CLOSE_GRACE, farewell).await;
}

/// Writes `first` and whatever else is already queued (up to
/// [`MAX_BATCH_BYTES`]) with one flush: many frames, few socket writes.
/// The frames' bytes leave the queue's byte count once flushed.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Outbound,
    rx: &mut mpsc::Receiver<Outbound>,
    handle: &ClientHandle,
    hub: &Hub,
) -> Result<(), axum::Error> {
    let now = now_millis();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(out) = next.take() {
        bytes += out.frame.len();
        let (kind, produced_at) = (out.kind, out.produced_at);
        sink.feed(Message::Text(out.frame)).await?;
        hub.metrics.message_sent(kind);
        if produced_at > 0 {
            let latency_ms = now.saturating_sub(produced_at);
            hub.metrics
                .broadcast_latency
                .observe(latency_ms as f64 / 1000.0);
        }
        if bytes < MAX_BATCH_BYTES {
            next = rx.try_recv().ok();
        }
    }
    let flushed = sink.flush().await;
    handle.dequeued(bytes);
    flushed
}

impl Connection {
    fn reply_error(&self, err: HubError, request_id: Option<&str>) {
        self.session.reply_error(&err, request_id);
    }

    async fn on_text(&mut self, text: &str) {
        let parsed = parse_client_message_with(text, &self.hub.config.field_limits);
        let kind = match &parsed {
            Ok((msg, _)) => msg.kind(),
            Err(_) => "invalid",
        };
        self.hub
            .metrics
            .messages_received
            .with_label_values(&[kind])
            .inc();
        if !self.rate.allow() {
            // Echo the request_id whenever it could be read, even from a
            // message that is otherwise invalid (docs/protocol.md §2).
            let rid = match &parsed {
                Ok((_, r)) | Err((_, r)) => r.clone(),
            };
            self.reply_error(
                HubError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} messages per second; slow down",
                        self.hub.config.rate_limit_per_sec
                    ),
                ),
                rid.as_deref(),
            );
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
                                self.hub.config.max_in_flight
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
    fn too_large_is_the_typed_capacity_error() {
        let too_long = WsError::Capacity(CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        });
        assert!(is_too_large(axum::Error::new(too_long)));
        assert!(!is_too_large(axum::Error::new(WsError::ConnectionClosed)));
        let io = std::io::Error::other("message too long");
        assert!(!is_too_large(axum::Error::new(io)));
    }

    #[test]
    fn liveness_pings_on_schedule_and_gives_up_after_silence() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), ms(250), t0);
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
}
