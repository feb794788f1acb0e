//! Integration-test harness: the real `mcp-hub` binary on a free loopback
//! port, and real WebSocket clients. Processes are killed on drop, so a
//! failing test never leaves a hub running.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variables a developer's shell could leak into a test hub.
const HUB_ENV: &[&str] = &[
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

/// A hub process. Its stderr is captured for [`HubProcess::log`] and
/// printed when a test panics while the hub is alive.
pub struct HubProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    _cwd: tempdir::TempDir,
}

mod tempdir {
    /// A private working directory, so no stray `.env` is read.
    pub struct TempDir(pub std::path::PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("mcp-hub-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl HubProcess {
    /// Starts a hub and waits until `/ready` answers 200.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        let hub = Self::start_unready(args, envs).await;
        hub.wait_ready().await;
        hub
    }

    /// Starts a hub and waits only until it listens (for tests where it
    /// cannot become ready, e.g. Redis is down).
    pub async fn start_unready(args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        let cwd = tempdir::TempDir::new();
        let mut cmd = Command::new(hub_binary());
        cmd.arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .current_dir(&cwd.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in HUB_ENV {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mcp-hub");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
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
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, addr_rx).await {
            Ok(Ok(addr)) => addr.parse().expect("listening address"),
            _ => {
                let status = child.try_wait().ok().flatten();
                panic!(
                    "hub did not start listening (exit: {status:?}); log:\n{}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        HubProcess {
            addr,
            child: Some(child),
            log,
            _cwd: cwd,
        }
    }

    pub async fn wait_ready(&self) {
        let url = self.http_url("/ready");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().as_u16() == 200
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("hub never became ready; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGKILL and reap: a crash, not a shutdown.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap, so the process is really gone when this returns.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

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

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- hub {} log ---\n{}", self.addr, self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
        self.signal("-KILL");
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that speaks the hub's JSON protocol.
pub struct WsClient {
    ws: Ws,
    /// Frames read while looking for something else, delivered first.
    backlog: std::collections::VecDeque<Value>,
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        WsClient {
            ws,
            backlog: Default::default(),
        }
    }

    /// Connects and registers; returns `registration_confirmed`. The
    /// `contact_list_broadcast` that follows is consumed.
    pub async fn register(url: &str, session: &str, client_id: &str) -> (WsClient, Value) {
        Self::register_with(
            url,
            json!({"type": "register", "session": session, "client_id": client_id}),
        )
        .await
    }

    pub async fn register_with(url: &str, body: Value) -> (WsClient, Value) {
        let mut client = Self::connect(url).await;
        client.send_json(body).await;
        let confirmed = client.recv().await;
        assert_eq!(
            confirmed["type"], "registration_confirmed",
            "unexpected answer to register: {confirmed}"
        );
        let contacts = client.recv().await;
        assert_eq!(contacts["type"], "contact_list_broadcast", "{contacts}");
        (client, confirmed)
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .await
            .expect("send text frame");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws
            .send(Message::Binary(b.into()))
            .await
            .expect("send binary frame");
    }

    /// The next text frame as JSON; panics after 10 s.
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(RECV_TIMEOUT).await {
            Some(v) => v,
            None => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next text frame, or None if none arrives within `wait` (or the
    /// connection ends).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!("hub sent invalid JSON ({e}): {}", t.as_str())
                    }));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next message of type `ty`; messages of other types are skipped.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let mut skipped = Vec::new();
        loop {
            let v = match self.try_recv(RECV_TIMEOUT).await {
                Some(v) => v,
                None => panic!("no `{ty}` within {RECV_TIMEOUT:?}; skipped: {skipped:?}"),
            };
            if v["type"] == ty {
                return v;
            }
            skipped.push(v);
        }
    }

    /// Sends `v` with a fresh `request_id` and returns the answer carrying
    /// it (response, error, pong, registration_confirmed), skipping events.
    pub async fn request(&mut self, mut v: Value) -> Value {
        let rid = format!("t{}", REQUEST_SEQ.fetch_add(1, Ordering::Relaxed));
        v["request_id"] = json!(rid);
        self.send_json(v).await;
        let mut skipped = Vec::new();
        loop {
            let msg = match self.try_recv(RECV_TIMEOUT).await {
                Some(m) => m,
                None => panic!(
                    "no answer to request {rid} within {RECV_TIMEOUT:?}; skipped: {skipped:?}"
                ),
            };
            if msg["request_id"] == rid.as_str() {
                // Keep events that arrived meanwhile for later readers.
                self.backlog.extend(skipped);
                return msg;
            }
            skipped.push(msg);
        }
    }

    /// Waits for the server's close frame and returns its code (None if the
    /// connection ended without one). Text frames before it are skipped.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no close frame within {RECV_TIMEOUT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
