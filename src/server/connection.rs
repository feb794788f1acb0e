//! A session client's connection: what its messages mean to the
//! transport's loop ([`crate::transport::serve`]). Each message is counted,
//! rate limited (a token bucket per connection) and parsed here; what it
//! asks for is decided in `hub/` ([`ClientSession`]). This only asks
//! [`crate::protocol::ClientMessage::execution`] whether it runs inline
//! (reading waits until it is answered, writing goes on) or in its own
//! task, capped per connection, so one long AI call never stalls pings or
//! other requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Identity;
use crate::hub::Hub;
use crate::hub::client::ClientSession;
use crate::hub::registry::ClientHandle;
use crate::protocol::{ClientInfo, ErrorCode, Execution, HubError, parse_client_message_with};
use crate::transport::{self, Limits, Peer, UpgradedSocket};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one upgraded client connection; `identity` is its verified token
/// (None with auth off), whose `exp` closes the connection with 4401.
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
    let limits = Limits {
        max_message_bytes: hub.config().max_message_bytes,
        ping_interval: hub.config().ping_interval,
        idle_timeout: hub.config().idle_timeout,
        expires_in: identity.as_ref().map(|id| id.expires_in()),
        register_within: Some(hub.config().limits.register_timeout),
    };
    let connection = Connection {
        rate: RateLimiter::new(
            hub.config().rate_limit_per_sec,
            hub.config().rate_limit_burst,
        ),
        in_flight: Arc::new(Semaphore::new(hub.config().max_in_flight)),
        hub: hub.clone(),
        session: ClientSession::new(hub.clone(), handle.clone(), identity.map(Arc::new)),
    };
    transport::serve(
        upgraded,
        handle,
        connection,
        limits,
        hub.metrics(),
        hub.shutdown(),
        conn_id,
    )
    .await;
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

struct Connection {
    hub: Arc<Hub>,
    session: ClientSession,
    rate: RateLimiter,
    in_flight: Arc<Semaphore>,
}

impl Peer for Connection {
    async fn on_text(mut self, text: Utf8Bytes) -> Self {
        self.answer(text).await;
        self
    }

    /// Counted by the rate limit like text: answering each one costs as
    /// much as answering a bad text frame.
    fn on_binary(&mut self) {
        if self.within_rate(None) {
            self.reply_error(
                HubError::new(
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not supported; send JSON text frames",
                ),
                None,
            );
        }
    }

    fn is_registered(&self) -> bool {
        self.session.is_registered()
    }

    async fn leave(mut self) {
        self.session.leave().await;
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

    async fn answer(&mut self, text: Utf8Bytes) {
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
