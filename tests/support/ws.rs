//! A WebSocket client that speaks the hub's JSON protocol, with bounded
//! waits that panic with context (frames skipped, close seen).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::RECV_TIMEOUT;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that speaks the hub's JSON protocol.
pub struct WsClient {
    ws: Ws,
    /// Frames read while looking for something else, delivered first.
    backlog: VecDeque<Value>,
    /// The close seen while reading frames: Some(code) (code None: the
    /// connection ended without a close frame).
    closed: Option<Option<u16>>,
    /// The `contact_list_broadcast` that followed registration.
    registration_contacts: Option<Value>,
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

/// A request id no other request of this test binary uses.
pub fn next_request_id() -> String {
    format!("t{}", REQUEST_SEQ.fetch_add(1, Ordering::Relaxed))
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        WsClient {
            ws,
            backlog: VecDeque::new(),
            closed: None,
            registration_contacts: None,
        }
    }

    /// Connects, or None when the hub cannot be reached or refuses (a hub
    /// that is down or restarting, for tests that expect it to be).
    pub async fn connect_if_up(url: &str) -> Option<WsClient> {
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .ok()?
            .ok()?;
        Some(WsClient {
            ws,
            backlog: VecDeque::new(),
            closed: None,
            registration_contacts: None,
        })
    }

    /// Opens a WebSocket with extra request headers (e.g. `Origin`,
    /// `Authorization`). Err: the hub refused the upgrade, with its HTTP
    /// status and raw body.
    async fn open(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, (u16, Vec<u8>)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request().expect("a WebSocket URL");
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        let connected =
            tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .unwrap_or_else(|_| panic!("connecting to {url} timed out"));
        match connected {
            Ok((ws, _)) => Ok(WsClient {
                ws,
                backlog: VecDeque::new(),
                closed: None,
                registration_contacts: None,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
                response.status().as_u16(),
                response.body().clone().unwrap_or_default(),
            )),
            Err(e) => panic!("connecting to {url}: {e}"),
        }
    }

    /// Opens a WebSocket with extra request headers (e.g. `Origin`). Err:
    /// the hub refused the upgrade, with its HTTP status and JSON body.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, (u16, Value)> {
        Self::open(url, headers).await.map_err(|(status, body)| {
            let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "refused upgrade ({status}) without a JSON body ({e}): {}",
                    String::from_utf8_lossy(&body)
                )
            });
            (status, json)
        })
    }

    /// Connects and registers; returns `registration_confirmed`. The
    /// `contact_list_broadcast` that follows is consumed (see
    /// [`WsClient::registration_contacts`]).
    pub async fn register(url: &str, session: &str, client_id: &str) -> (WsClient, Value) {
        Self::register_with(
            url,
            json!({"type": "register", "session": session, "client_id": client_id}),
        )
        .await
    }

    /// Connects with `Authorization: Bearer <token>` when `token` is
    /// given; a refused upgrade is `Err((status, body))`.
    pub async fn try_connect(url: &str, token: Option<&str>) -> Result<WsClient, (u16, String)> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        Self::open(url, &headers)
            .await
            .map_err(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Connects with a token (panics if refused).
    pub async fn connect_with_token(url: &str, token: &str) -> WsClient {
        match Self::try_connect(url, Some(token)).await {
            Ok(c) => c,
            Err((status, body)) => panic!("upgrade to {url} refused: {status} {body}"),
        }
    }

    /// Connects with a token and registers with `body`.
    pub async fn register_with_token(url: &str, token: &str, body: Value) -> (WsClient, Value) {
        let client = Self::connect_with_token(url, token).await;
        client.finish_register(body).await
    }

    pub async fn register_with(url: &str, body: Value) -> (WsClient, Value) {
        Self::connect(url).await.finish_register(body).await
    }

    async fn finish_register(self, body: Value) -> (WsClient, Value) {
        let mut client = self;
        client.send_json(body.clone()).await;
        let confirmed = client.recv().await;
        assert_eq!(
            confirmed["type"], "registration_confirmed",
            "unexpected answer to {body}: {confirmed}"
        );
        let contacts = client.recv().await;
        assert_eq!(
            contacts["type"], "contact_list_broadcast",
            "registration must be followed by the contact list: {contacts}"
        );
        client.registration_contacts = Some(contacts);
        (client, confirmed)
    }

    /// The `contact_list_broadcast` received right after registration.
    pub fn registration_contacts(&self) -> &Value {
        self.registration_contacts
            .as_ref()
            .expect("registered through WsClient::register*")
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .await
            .unwrap_or_else(|e| panic!("send text frame ({} bytes): {e}", s.len()));
    }

    /// Like [`WsClient::send_text`] but reports failure instead of panicking
    /// (for tests where the hub may already have closed the connection).
    pub async fn try_send_text(&mut self, s: &str) -> bool {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .await
            .is_ok()
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws
            .send(Message::Binary(b.into()))
            .await
            .expect("send binary frame");
    }

    /// The next text frame as JSON; panics after [`RECV_TIMEOUT`] or if the
    /// connection closes.
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(RECV_TIMEOUT).await {
            Some(v) => v,
            None => match self.closed {
                Some(code) => {
                    panic!("connection closed (code {code:?}) while waiting for a message")
                }
                None => panic!("no message within {RECV_TIMEOUT:?}"),
            },
        }
    }

    /// The next text frame, or None if none arrives within `wait` (or the
    /// connection ends: see [`WsClient::closed`]).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        if self.closed.is_some() {
            return None;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.closed = Some(None);
                    return None;
                }
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!("hub sent invalid JSON ({e}): {}", t.as_str())
                    }));
                }
                Message::Close(frame) => {
                    self.closed = Some(frame.map(|f| u16::from(f.code)));
                    return None;
                }
                _ => continue,
            }
        }
    }

    /// Whether the connection has been seen to end, and with which close
    /// code: None (still open as far as we know), Some(None) (ended without
    /// a close frame), Some(Some(code)).
    pub fn closed(&self) -> Option<Option<u16>> {
        self.closed
    }

    /// The next message of type `ty`; messages of other types are skipped.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let mut skipped = Vec::new();
        loop {
            let v = match self.try_recv(RECV_TIMEOUT).await {
                Some(v) => v,
                None => panic!(
                    "no `{ty}` within {RECV_TIMEOUT:?} (closed: {:?}); skipped: {skipped:?}",
                    self.closed
                ),
            };
            if v["type"] == ty {
                return v;
            }
            skipped.push(v);
        }
    }

    /// Sends `v` with a fresh `request_id` and returns the answer carrying
    /// it (response, error, pong, registration_confirmed), skipping events
    /// (which stay available to later reads).
    pub async fn request(&mut self, mut v: Value) -> Value {
        let rid = next_request_id();
        v["request_id"] = json!(rid);
        self.send_json(v.clone()).await;
        self.answer_to(&rid, &v).await
    }

    /// The answer carrying `rid`; other frames are kept for later reads.
    pub async fn answer_to(&mut self, rid: &str, sent: &Value) -> Value {
        let mut skipped = Vec::new();
        loop {
            let msg = match self.try_recv(RECV_TIMEOUT).await {
                Some(m) => m,
                None => panic!(
                    "no answer to {sent} within {RECV_TIMEOUT:?} (closed: {:?}); skipped: {skipped:?}",
                    self.closed
                ),
            };
            if msg["request_id"] == rid {
                // Keep events that arrived meanwhile for later readers.
                skipped.extend(self.backlog.drain(..));
                self.backlog = skipped.into();
                return msg;
            }
            skipped.push(msg);
        }
    }

    /// Waits for the server's close frame and returns its code (None if the
    /// connection ended without one). Text frames before it are skipped.
    pub async fn expect_close(&mut self) -> Option<u16> {
        self.backlog.clear();
        if let Some(code) = self.closed {
            return code;
        }
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no close frame within {RECV_TIMEOUT:?}"),
                Ok(None) | Ok(Some(Err(_))) => {
                    self.closed = Some(None);
                    return None;
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    return code;
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Sends a `ping` and returns every frame that arrives before its
    /// `pong` (backlog included). The hub answers one connection in order,
    /// so this is everything already queued for this client: an empty
    /// result proves nothing was pending, without waiting on a timer.
    pub async fn flush(&mut self) -> Vec<Value> {
        let rid = next_request_id();
        self.send_json(json!({"type": "ping", "request_id": rid}))
            .await;
        let mut before: Vec<Value> = self.backlog.drain(..).collect();
        loop {
            let m = self.recv().await;
            if m["type"] == "pong" && m["request_id"] == rid.as_str() {
                return before;
            }
            before.push(m);
        }
    }

    /// Asserts nothing of type `ty` arrives within `wait`; other frames are
    /// kept for later reads.
    pub async fn expect_no(&mut self, ty: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.try_recv(left).await {
                Some(v) if v["type"] == ty => panic!("unexpected `{ty}`: {v}"),
                Some(v) => seen.push(v),
                None => break,
            }
        }
        seen.extend(self.backlog.drain(..));
        self.backlog = seen.into();
    }

    /// Sends a close frame (code 1000) and waits briefly for the server's.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
