//! Integration-test harness: the real `mcp-hub` binary on a free loopback
//! port, and real WebSocket clients. Processes are killed on drop, so a
//! failing test never leaves a hub running.
//!
//! Each test file that uses it says `mod common;`. Everything waits by
//! polling with a bound (never a bare sleep) and panics with context (the
//! hub's log, the frames skipped) when the bound is reached.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on a hub starting to listen and becoming ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on any single expected WebSocket frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Variables a developer's shell could leak into a test hub, besides every
/// `[env: ...]` the hub's own `--help` lists (see [`hub_env_vars`]).
const EXTRA_HUB_ENV: &[&str] = &[
    "MCP_SERVER_HOST",
    "MCP_SERVER_PORT",
    "INSTANCE_ID",
    "LOG_FORMAT",
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
    "AI_PROVIDER",
    "CONTACTS_FILE",
    "AUTO_REPLY",
    "GEMINI_API_KEY",
    "OPENAI_API_KEY",
    "MCP_HUB_URL",
    "RUST_LOG",
];

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn hub_binary() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-hub")
}

/// Every environment variable the hub reads: the `[env: NAME=...]` entries
/// of `mcp-hub serve --help` (so a setting added later is covered without
/// touching this file) plus [`EXTRA_HUB_ENV`].
pub fn hub_env_vars() -> &'static [String] {
    static VARS: OnceLock<Vec<String>> = OnceLock::new();
    VARS.get_or_init(|| {
        let help = std::process::Command::new(hub_binary())
            .args(["serve", "--help"])
            .env_clear()
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut vars: Vec<String> = EXTRA_HUB_ENV.iter().map(|s| s.to_string()).collect();
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && !vars.contains(&name) {
                vars.push(name);
            }
        }
        vars
    })
}

/// A private working directory, removed on drop, so no stray `.env` is read.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mcp-hub-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A hub process. Its stderr is captured for [`HubProcess::log`] and
/// printed when a test panics while the hub is alive.
pub struct HubProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// Set when the hub's stderr ends, i.e. the process (almost surely) died.
    stderr_closed: Arc<AtomicBool>,
    _cwd: TempDir,
}

impl HubProcess {
    /// Starts a hub (`serve --host 127.0.0.1 --port 0` plus `args`, in an
    /// empty directory, with none of the caller's hub settings in its
    /// environment except `envs`) and waits until `/ready` answers 200.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        let hub = Self::start_unready(args, envs).await;
        hub.wait_ready().await;
        hub
    }

    /// Starts a hub and waits only until it listens (for tests where it
    /// cannot become ready, e.g. Redis is down).
    pub async fn start_unready(args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        Self::start_unready_in(TempDir::new(), args, envs).await
    }

    /// Like [`HubProcess::start`], in a given working directory (e.g. one
    /// with a `.env`); the directory lives as long as the hub.
    pub async fn start_in(cwd: TempDir, args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        let hub = Self::start_unready_in(cwd, args, envs).await;
        hub.wait_ready().await;
        hub
    }

    pub async fn start_unready_in(
        cwd: TempDir,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> HubProcess {
        let mut cmd = Command::new(hub_binary());
        cmd.arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .current_dir(&cwd.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in hub_env_vars() {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mcp-hub");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        let closed = stderr_closed.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("mcp-hub listening on ").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
            closed.store(true, Ordering::Release);
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, addr_rx).await {
            Ok(Ok(addr)) => addr
                .parse()
                .unwrap_or_else(|e| panic!("bad listening address {addr:?}: {e}; args {args:?}")),
            _ => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                panic!(
                    "hub {args:?} did not start listening (exit: {status:?}); log:\n{}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        HubProcess {
            addr,
            child: Some(child),
            log,
            stderr_closed,
            _cwd: cwd,
        }
    }

    /// Polls `/ready` until 200; panics with the log after [`START_TIMEOUT`]
    /// or as soon as the process is seen to have died.
    pub async fn wait_ready(&self) {
        self.wait_ready_for(START_TIMEOUT).await;
    }

    pub async fn wait_ready_for(&self, bound: Duration) {
        let url = self.http_url("/ready");
        let deadline = Instant::now() + bound;
        loop {
            if self.ready_status().await == Some(200) {
                return;
            }
            if self.stderr_closed.load(Ordering::Acquire) {
                panic!("hub exited before becoming ready; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "{url} never answered 200 within {bound:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status `/ready` answers right now (None: no HTTP answer).
    pub async fn ready_status(&self) -> Option<u16> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let r = client.get(self.http_url("/ready")).send().await.ok()?;
        Some(r.status().as_u16())
    }

    /// GET `path`: status and body (panics if the hub does not answer).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = self.http_url(path);
        let r = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}; log:\n{}", self.log()));
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// The value of an unlabelled metric (or a labelled one, given as
    /// `name{label="value"}`) in `/metrics`; None if absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Polls `/metrics` until `series` satisfies `ok` (absent counts as 0);
    /// returns the value, panics with the exposition after [`RECV_TIMEOUT`].
    pub async fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let v = self.metric(series).await.unwrap_or(0.0);
            if ok(v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{series} = {v} never satisfied the condition:\n{}",
                    self.get("/metrics").await.1
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("hub is running")
    }

    fn signal(&self, sig: libc::c_int) {
        // `id()` is None once the child has been reaped: never signal a
        // pid that may have been reused.
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            send_signal(pid, sig);
        }
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// SIGKILL and reap: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }

    /// Waits for the process to exit (reaping it); None if it is still
    /// running after `timeout` (or was already reaped).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Everything the hub wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Polls the log until it contains `needle`; panics with it after `bound`.
    pub async fn wait_for_log(&self, needle: &str, bound: Duration) {
        let deadline = Instant::now() + bound;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                panic!("`{needle}` never appeared in the log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// SIGKILL, then wait (bounded) until the process is gone.
fn kill_and_reap(mut child: Child) {
    let _ = child.start_kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- hub {} log ---\n{}", self.addr, self.log());
        }
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }
}

/// Kills (SIGKILL) and reaps a helper process (redis-server, haproxy...)
/// when dropped, so a failing test never leaves it behind.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut std::process::Command) -> ChildGuard {
        ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program())),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `sig` unless the process has already exited.
    pub fn signal(&mut self, sig: libc::c_int) {
        if matches!(self.0.try_wait(), Ok(None)) {
            send_signal(self.0.id(), sig);
        }
    }

    /// Waits (polling) up to `bound` for the process to exit.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

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

    pub async fn register_with(url: &str, body: Value) -> (WsClient, Value) {
        let mut client = Self::connect(url).await;
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
