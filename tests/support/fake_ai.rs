//! A fake AI upstream for tests: the Gemini `generateContent` route and the
//! OpenAI `chat/completions` route on one loopback port. It records every
//! request (arrival time, path, headers, JSON body), tracks concurrency
//! (peak requests in progress), delays answers, and plays scripted
//! behaviours: 429 with RetryInfo / Retry-After, 500, any status, a hang,
//! a raw body. Answers carry the call number ("reply #N") so a test can
//! tell which upstream call an answer came from.
//!
//! Reached as `support::fake_ai` (tests/support/mod.rs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::scripted::Script;

pub const GEMINI_KEY: &str = "test-gemini-key";
pub const OPENAI_KEY: &str = "sk-test-openai";

#[derive(Debug, Clone)]
pub enum Behavior {
    /// A normal answer: a function call when tools were declared, else text.
    Answer,
    /// 429; Gemini gets RetryInfo.retryDelay, OpenAI a Retry-After header
    /// (whole seconds of the same value).
    RateLimited { retry_delay: Option<&'static str> },
    /// The API's error envelope with this status.
    Status(u16),
    /// Never answers.
    Hang,
    /// Exactly this status and JSON body.
    Raw(u16, Value),
}

pub use super::scripted::Recorded;

#[derive(Default)]
struct Inner {
    script: Script<Behavior>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// Require OPENAI_KEY as a bearer token (false: no Authorization expected).
    openai_requires_key: Mutex<Option<bool>>,
}

pub struct FakeAi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeAi {
    pub async fn start() -> FakeAi {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1beta/models/{target}", post(gemini))
            .route("/v1/chat/completions", post(openai))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake AI server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAi { addr, inner, task }
    }

    /// GEMINI_BASE_URL for this fake.
    pub fn gemini_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// OPENAI_BASE_URL for this fake.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Behaviours for the next calls, in order; then the default.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.inner.script.push(behaviors);
    }

    /// What calls do once the script is used up (initially `Answer`).
    pub fn set_default(&self, behavior: Behavior) {
        self.inner.script.set_default(behavior);
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.script.set_delay(delay);
    }

    pub fn openai_requires_key(&self, required: bool) {
        *self.inner.openai_requires_key.lock().unwrap() = Some(required);
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.inner.script.calls()
    }

    pub fn call_count(&self) -> usize {
        self.inner.script.call_count()
    }

    /// Most requests ever in progress at once.
    pub fn peak_concurrency(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.call_count() < n {
            assert!(
                Instant::now() < deadline,
                "the fake AI got {} calls, expected {n} within {timeout:?}",
                self.call_count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Inner {
    fn arrive(
        self: &Arc<Self>,
        path: String,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> (usize, InFlight) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let number = self.script.record(path, headers, body);
        (number, InFlight(self.clone()))
    }

    fn next(&self) -> (Behavior, Duration) {
        self.script.next(Behavior::Answer)
    }
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn google_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

async fn gemini(
    State(inner): State<Arc<Inner>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (number, _in_flight) = inner.arrive(format!("/v1beta/models/{target}"), &headers, &body);
    let (behavior, delay) = inner.next();
    tokio::time::sleep(delay).await;
    if headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) != Some(GEMINI_KEY) {
        return json_response(
            400,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
        );
    }
    if !target.ends_with(":generateContent") {
        return json_response(
            404,
            json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}),
        );
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match behavior {
        Behavior::Answer => {
            let part = if request.get("tools").is_some() {
                json!({"functionCall": {"name": "send_message",
                    "args": {"contact": "John", "message": format!("reply #{number}")}}})
            } else {
                json!({"text": format!("answer #{number}")})
            };
            json_response(
                200,
                json!({
                    "candidates": [{"content": {"role": "model", "parts": [part]},
                        "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17},
                    "modelVersion": "gemini-2.5-flash",
                    "responseId": format!("fake-{number}"),
                }),
            )
        }
        Behavior::RateLimited { retry_delay } => {
            let mut details = vec![
                json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]}),
            ];
            if let Some(d) = retry_delay {
                details.push(
                    json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": d}),
                );
            }
            json_response(
                429,
                json!({"error": {"code": 429, "message": "You exceeded your current quota.",
                    "status": "RESOURCE_EXHAUSTED", "details": details}}),
            )
        }
        Behavior::Status(code) => json_response(
            code,
            json!({"error": {"code": code, "message": format!("fake error {code}"),
                "status": google_status(code)}}),
        ),
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json_response(500, Value::Null)
        }
        Behavior::Raw(code, body) => json_response(code, body),
    }
}

async fn openai(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (number, _in_flight) = inner.arrive("/v1/chat/completions".into(), &headers, &body);
    let (behavior, delay) = inner.next();
    tokio::time::sleep(delay).await;
    let requires_key = inner.openai_requires_key.lock().unwrap().unwrap_or(true);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let expected = format!("Bearer {OPENAI_KEY}");
    if requires_key && auth != Some(expected.as_str()) {
        return json_response(
            401,
            json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                "param": null, "code": "invalid_api_key"}}),
        );
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match behavior {
        Behavior::Answer => {
            let message = if request.get("tools").is_some() {
                json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": format!("call_{number}"), "type": "function",
                    "function": {"name": "send_message",
                        "arguments": json!({"contact": "John", "message": format!("reply #{number}")}).to_string()}}]})
            } else {
                json!({"role": "assistant", "content": format!("answer #{number}")})
            };
            let finish = if request.get("tools").is_some() {
                "tool_calls"
            } else {
                "stop"
            };
            json_response(
                200,
                json!({"id": format!("chatcmpl-{number}"), "object": "chat.completion", "created": 0,
                    "model": request.get("model").cloned().unwrap_or(Value::Null),
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}),
            )
        }
        Behavior::RateLimited { retry_delay } => {
            let mut response = json_response(
                429,
                json!({"error": {"message": "Rate limit reached.", "type": "requests",
                    "param": null, "code": "rate_limit_exceeded"}}),
            );
            if let Some(secs) =
                retry_delay.and_then(|d| d.trim_end_matches('s').parse::<f64>().ok())
            {
                let value = HeaderValue::from_str(&format!("{}", secs.ceil() as u64)).unwrap();
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
        Behavior::Status(code) => json_response(
            code,
            json!({"error": {"message": format!("fake error {code}"), "type": "server_error",
                "param": null, "code": null}}),
        ),
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json_response(500, Value::Null)
        }
        Behavior::Raw(code, body) => json_response(code, body),
    }
}
