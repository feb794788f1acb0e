//! A fake Meta Graph API for the Cloud API connector: `POST
//! /{version}/{phone_number_id}/messages` on a loopback port. It records
//! every request (arrival time, path, headers, JSON body), checks the
//! bearer token (401 code 190 otherwise) and the body's required fields
//! (400 code 100), and plays scripted behaviours: a Graph error envelope
//! with any status and code (optionally `Retry-After`), a 500 with no
//! body, a delay. Successful sends answer `wamid.fake.<n>` (n = call
//! number), so a test can tell which call a message id came from.
//!
//! Reached as `support::fake_graph` (tests/support/mod.rs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::scripted::Script;

pub const TOKEN: &str = "test-graph-token";
pub const PHONE_NUMBER_ID: &str = "106540352242922";
pub const VERSION: &str = "v21.0";

#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with a wamid.
    Accept,
    /// The Graph error envelope: HTTP status, error code, Retry-After secs.
    Error {
        status: u16,
        code: i64,
        retry_after: Option<u64>,
    },
    /// A 5xx with no body.
    Empty(u16),
}

impl Behavior {
    pub fn error(status: u16, code: i64) -> Behavior {
        Behavior::Error {
            status,
            code,
            retry_after: None,
        }
    }
}

pub use super::scripted::Recorded;

#[derive(Default)]
struct Inner {
    script: Script<Behavior>,
}

pub struct FakeGraph {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGraph {
    pub async fn start() -> FakeGraph {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/{version}/{phone}/messages", post(messages))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Graph API");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGraph { addr, inner, task }
    }

    /// WHATSAPP_BASE_URL for this fake.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Hub flags of a cloud_api hub on this fake (webhook secrets included).
    pub fn hub_flags(&self) -> Vec<String> {
        [
            "--connector",
            "cloud_api",
            "--whatsapp-access-token",
            TOKEN,
            "--whatsapp-phone-number-id",
            PHONE_NUMBER_ID,
            "--whatsapp-app-secret",
            super::APP_SECRET,
            "--whatsapp-verify-token",
            super::VERIFY_TOKEN,
            "--whatsapp-base-url",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.base_url()])
        .collect()
    }

    /// Behaviours for the next calls, in order; then the default.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.inner.script.push(behaviors);
    }

    /// What calls do once the script is used up (initially `Accept`).
    pub fn set_default(&self, behavior: Behavior) {
        self.inner.script.set_default(behavior);
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.script.set_delay(delay);
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.inner.script.calls()
    }

    pub fn call_count(&self) -> usize {
        self.inner.script.call_count()
    }
}

fn envelope(status: u16, code: i64, message: &str) -> Response {
    let body = json!({"error": {
        "message": format!("(#{code}) {message}"),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": message},
        "fbtrace_id": "Afake",
    }});
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(body),
    )
        .into_response()
}

async fn messages(
    State(inner): State<Arc<Inner>>,
    Path((_version, _phone)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let number = inner.script.record(uri.path().to_string(), &headers, &body);
    let (behavior, delay) = inner.script.next(Behavior::Accept);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let bearer = format!("Bearer {TOKEN}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(bearer.as_str()) {
        return envelope(
            401,
            190,
            "Invalid OAuth access token - Cannot parse access token",
        );
    }
    let valid = json["messaging_product"] == "whatsapp"
        && json["to"].is_string()
        && (json.pointer("/text/body").is_some_and(Value::is_string)
            || json.pointer("/template/name").is_some_and(Value::is_string));
    if !valid {
        return envelope(400, 100, "Invalid parameter");
    }
    match behavior {
        Behavior::Accept => {
            let to = json["to"].clone();
            axum::Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": format!("wamid.fake.{number}")}],
            }))
            .into_response()
        }
        Behavior::Error {
            status,
            code,
            retry_after,
        } => {
            let mut r = envelope(status, code, "scripted failure");
            if let Some(secs) = retry_after {
                r.headers_mut().insert(
                    "retry-after",
                    secs.to_string().parse().expect("header value"),
                );
            }
            r
        }
        Behavior::Empty(status) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
    }
}
