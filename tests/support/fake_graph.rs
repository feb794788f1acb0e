//! A fake Meta Graph API for the Cloud API connector, on a loopback port,
//! built from /work/shared/reference/whatsapp-cloud-api.md (§6, §7–§13).
//! This file owns the fake's state (business numbers and their tokens,
//! media, inbound message ids, the 24-hour window clocks, templates), its
//! routes, the token checks and the record of every request; the
//! endpoints live in submodules:
//!
//! - `POST /{version}/{phone_number_id}/messages` (messages.rs): sends of
//!   every kind, validated; read receipts (and the typing indicator).
//! - `POST /{version}/{phone_number_id}/media`, `GET`/`DELETE
//!   /{version}/{media_id}` and `GET /lookaside/{media_id}` (media.rs).
//! - `GET /{version}/{waba_id}/message_templates` (templates.rs).
//!
//! Every number-scoped call checks the bearer token of that number (401
//! code 190 otherwise) and answers an unknown phone number id with Graph's
//! "object does not exist" (400 `GraphMethodException` code 100 subcode 33).
//! Sends play scripted behaviours: a Graph error envelope with any status
//! and code (optionally `Retry-After`), a 5xx with no body, a delay.
//! Successful sends answer `wamid.fake.<n>` (n = number of the POST
//! …/messages call), so a test can tell which call a message id came from.
//!
//! Reached as `support::fake_graph` (tests/support/mod.rs).
#![allow(dead_code)]

mod errors;
mod media;
mod messages;
mod templates;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Uri};
use axum::routing::{get, post};
use serde_json::Value;

use super::scripted::Script;

/// The default number: its token, phone number id and WhatsApp Business
/// Account (the `entry[].id` of Meta's examples).
pub const TOKEN: &str = "test-graph-token";
pub const PHONE_NUMBER_ID: &str = "106540352242922";
pub const WABA_ID: &str = "102290129340398";
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

/// One request the fake received, whatever its route.
#[derive(Debug, Clone)]
pub struct GraphRequest {
    pub method: String,
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    pub headers: HeaderMap,
    /// The JSON body (`Null` if none or not JSON); for an upload, the
    /// form's text fields as an object.
    pub body: Value,
    /// For `POST …/media`: the file part (`None` on every other route).
    pub upload: Option<Upload>,
}

/// What a `POST /{phone}/media` carried (accepted or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The phone number id in the path.
    pub phone: String,
    /// The file part's name and Content-Type (None: no file part, or the
    /// part had none).
    pub filename: Option<String>,
    pub mime: Option<String>,
    pub size: usize,
    /// The media id the fake answered, if it accepted the upload.
    pub media_id: Option<String>,
}

/// A stored media object: uploaded by the hub, or seeded by a test as if
/// a WhatsApp user had sent it ([`FakeGraph::put_media`]).
#[derive(Debug, Clone)]
pub struct Media {
    pub bytes: Vec<u8>,
    pub mime: String,
    pub filename: Option<String>,
    /// The business number it belongs to (uploaded on / received by).
    pub phone: String,
}

struct Number {
    token: String,
    waba: String,
}

#[derive(Default)]
struct State {
    /// phone number id → its token and WABA.
    numbers: BTreeMap<String, Number>,
    media: HashMap<String, Media>,
    media_counter: u64,
    /// (phone number id, wamid) of inbound messages: what a read receipt
    /// may name.
    inbound: HashSet<(String, String)>,
    /// (phone number id, wa_id digits) → unix secs of the user's last message.
    last_inbound: HashMap<(String, String), u64>,
    window_check: bool,
    /// WABA id → its templates, in the order added.
    templates: BTreeMap<String, Vec<Value>>,
    template_counter: u64,
    fail_next_download: Option<u16>,
    /// `set_delay`, also for read receipts (the script's own copy only
    /// comes with a behaviour, which receipts do not consume).
    delay: Duration,
    requests: Vec<GraphRequest>,
}

struct Inner {
    /// The POST …/messages record and the send behaviours.
    script: Script<Behavior>,
    /// `http://127.0.0.1:port`: media URLs and `paging.next` point here.
    base: String,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn record(&self, request: GraphRequest) {
        self.state().requests.push(request);
    }

    /// The bearer token of the request, if any.
    fn bearer(headers: &HeaderMap) -> Option<&str> {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    /// Any configured number's token (media retrieval and download).
    fn authorize_any(&self, headers: &HeaderMap) -> Result<(), errors::GraphError> {
        let token = Self::bearer(headers);
        if self
            .state()
            .numbers
            .values()
            .any(|n| Some(n.token.as_str()) == token)
        {
            Ok(())
        } else {
            Err(errors::invalid_token())
        }
    }

    /// A number-scoped call: the token must be a configured one (else
    /// 401), the number must exist (else 400 code 100 subcode 33), and the
    /// token must be that number's own (else 401).
    fn authorize_number(
        &self,
        phone: &str,
        headers: &HeaderMap,
        verb: &str,
    ) -> Result<(), errors::GraphError> {
        self.authorize_any(headers)?;
        let token = Self::bearer(headers);
        match self.state().numbers.get(phone) {
            None => Err(errors::no_such_object(verb, phone)),
            Some(n) if Some(n.token.as_str()) != token => Err(errors::invalid_token()),
            Some(_) => Ok(()),
        }
    }
}

impl GraphRequest {
    fn new(method: &str, uri: &Uri, headers: &HeaderMap, body: Value) -> GraphRequest {
        GraphRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            headers: headers.clone(),
            body,
            upload: None,
        }
    }

    /// A POST …/messages that is a message send (not a read receipt).
    fn is_send(&self) -> bool {
        self.method == "POST"
            && self.path.ends_with("/messages")
            && self.body.get("status").is_none()
    }

    fn is_read_receipt(&self) -> bool {
        self.method == "POST"
            && self.path.ends_with("/messages")
            && self.body.get("status").is_some()
    }
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
    /// Listening, with the default number ([`PHONE_NUMBER_ID`], [`TOKEN`],
    /// [`WABA_ID`]) configured.
    pub async fn start() -> FakeGraph {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Graph API");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            script: Script::default(),
            base: format!("http://{addr}"),
            state: Mutex::default(),
        });
        inner.state().numbers.insert(
            PHONE_NUMBER_ID.to_string(),
            Number {
                token: TOKEN.to_string(),
                waba: WABA_ID.to_string(),
            },
        );
        // One `{object}` name at every position: the router refuses two
        // names for the same path segment.
        let app = Router::new()
            .route("/{version}/{object}/messages", post(messages::messages))
            .route("/{version}/{object}/media", post(media::upload))
            .route(
                "/{version}/{object}/message_templates",
                get(templates::list),
            )
            .route(
                "/{version}/{object}",
                get(media::retrieve).delete(media::delete),
            )
            .route("/lookaside/{object}", get(media::download))
            // Uploads reach 100 MB (documents); the size rules of §7.5 are
            // the fake's to apply, not axum's 2 MB default.
            .layer(DefaultBodyLimit::disable())
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGraph { addr, inner, task }
    }

    /// WHATSAPP_BASE_URL for this fake.
    pub fn base_url(&self) -> String {
        self.inner.base.clone()
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

    /// Another business number (or a new token / WABA for a known one).
    pub fn add_number(&self, phone_number_id: &str, token: &str, waba_id: &str) {
        self.inner.state().numbers.insert(
            phone_number_id.to_string(),
            Number {
                token: token.to_string(),
                waba: waba_id.to_string(),
            },
        );
    }

    /// Behaviours for the next sends, in order; then the default. (Read
    /// receipts do not consume them.)
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.inner.script.push(behaviors);
    }

    /// What sends do once the script is used up (initially `Accept`).
    pub fn set_default(&self, behavior: Behavior) {
        self.inner.script.set_default(behavior);
    }

    /// Every answer to POST …/messages (sends and read receipts) waits
    /// this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.script.set_delay(delay);
        self.inner.state().delay = delay;
    }

    /// Every POST …/messages (sends and read receipts, accepted or not).
    pub fn calls(&self) -> Vec<Recorded> {
        self.inner.script.calls()
    }

    pub fn call_count(&self) -> usize {
        self.inner.script.call_count()
    }

    /// `message_id` becomes a message received on `phone`: a read receipt
    /// may name it.
    pub fn add_inbound(&self, phone: &str, wamid: &str) {
        self.inner
            .state()
            .inbound
            .insert((phone.to_string(), wamid.to_string()));
    }

    /// When `wa_id` (digits) last wrote to `phone` (the 24-hour window).
    pub fn set_last_inbound(&self, phone: &str, wa_id: &str, unix_secs: u64) {
        self.inner
            .state()
            .last_inbound
            .insert((phone.to_string(), digits(wa_id)), unix_secs);
    }

    /// On: a free-form send outside the recipient's 24-hour window fails
    /// with 400 code 131047 (§12.2). Off by default.
    pub fn set_window_check(&self, on: bool) {
        self.inner.state().window_check = on;
    }

    /// Seeds media as if a WhatsApp user had sent it to `phone`; its id.
    pub fn put_media(&self, phone: &str, mime: &str, bytes: Vec<u8>) -> String {
        media::store(
            &mut self.inner.state(),
            Media {
                bytes,
                mime: mime.to_string(),
                filename: None,
                phone: phone.to_string(),
            },
        )
    }

    /// A stored media object (None: unknown or deleted).
    pub fn media(&self, media_id: &str) -> Option<Media> {
        self.inner.state().media.get(media_id).cloned()
    }

    /// What `GET /{media_id}` answers right now (url, mime_type, sha256,
    /// file_size, id), for webhook bodies that carry them
    /// (`wa_payloads::with_media`).
    pub fn media_info(&self, media_id: &str) -> Option<Value> {
        let state = self.inner.state();
        let m = state.media.get(media_id)?;
        Some(media::info(&self.inner.base, media_id, m))
    }

    /// The next download (`GET /lookaside/…`) answers `status` with no
    /// body, once.
    pub fn fail_next_download(&self, status: u16) {
        self.inner.state().fail_next_download = Some(status);
    }

    /// A template of `waba_id`, as `GET …/message_templates` lists it
    /// (§11.2); an `id` is added when it has none.
    pub fn add_template(&self, waba_id: &str, mut template: Value) {
        let mut state = self.inner.state();
        if template.get("id").is_none() {
            state.template_counter += 1;
            template["id"] =
                Value::String((1_387_372_356_726_668 + state.template_counter).to_string());
        }
        state
            .templates
            .entry(waba_id.to_string())
            .or_default()
            .push(template);
    }

    /// Every request, on every route, in arrival order.
    pub fn requests(&self) -> Vec<GraphRequest> {
        self.inner.state().requests.clone()
    }

    /// Bodies of the POST …/messages that were message sends (accepted or
    /// not; read receipts excluded).
    pub fn sends(&self) -> Vec<Value> {
        let state = self.inner.state();
        state
            .requests
            .iter()
            .filter(|r| r.is_send())
            .map(|r| r.body.clone())
            .collect()
    }

    /// Every POST …/media (accepted or not).
    pub fn uploads(&self) -> Vec<Upload> {
        let state = self.inner.state();
        state
            .requests
            .iter()
            .filter_map(|r| r.upload.clone())
            .collect()
    }

    /// (phone number id, message id, typing indicator present) of every
    /// read receipt received (accepted or not).
    pub fn read_receipts(&self) -> Vec<(String, String, bool)> {
        let state = self.inner.state();
        state
            .requests
            .iter()
            .filter(|r| r.is_read_receipt())
            .map(|r| {
                let phone = r.path.rsplit('/').nth(1).unwrap_or_default().to_string();
                let wamid = r.body["message_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (phone, wamid, r.body.get("typing_indicator").is_some())
            })
            .collect()
    }

    /// How many `GET /{version}/{media_id}` arrived.
    pub fn media_fetches(&self) -> usize {
        self.count(|r| r.method == "GET" && media::is_media_path(&r.path))
    }

    /// How many `GET /lookaside/{media_id}` arrived.
    pub fn downloads(&self) -> usize {
        self.count(|r| r.method == "GET" && r.path.starts_with("/lookaside/"))
    }

    fn count(&self, f: impl Fn(&GraphRequest) -> bool) -> usize {
        self.inner.state().requests.iter().filter(|r| f(r)).count()
    }
}

/// The digits of a phone number as a `to` may write it (`+1 (555) 010-2`).
fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Unix seconds now.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
