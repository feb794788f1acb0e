//! The one test-support module of the test binaries (`mod support;` in
//! tests/suite.rs and tests/soak.rs; a test file says `use crate::support;`
//! then `use support::*;`): an in-process hub ([`TestHub`]), the spawned binary
//! ([`HubProcess`], only where the process is the point), a WebSocket
//! client ([`WsClient`]), private redis-server / HAProxy launchers, a
//! headless chromium over WebDriver ([`browser::Browser`]), the
//! fake AI upstream, and the small helpers every suite shares.
//!
//! Everything waits by polling with a bound (never a bare sleep) and
//! panics with context when the bound is reached; everything started is
//! stopped on drop, also when a test fails.
#![allow(dead_code, unused_imports, async_fn_in_trait)]

pub mod browser;
pub mod fake_ai;
pub mod fake_graph;
mod faketime;
mod faulty_link;
mod helpers;
mod in_process;
mod mcp;
mod ops;
mod presence;
mod process;
mod redis;
pub mod scripted;
mod slow_disk;
mod tls;
pub mod wa_payloads;
mod ws;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use faketime::*;
pub use faulty_link::*;
pub use helpers::*;
pub use in_process::*;
pub use mcp::*;
pub use ops::*;
pub use presence::*;
pub use process::*;
pub use redis::*;
pub use slow_disk::*;
pub use tls::*;
pub use ws::*;

/// The WhatsApp app secret (webhook signatures) and verify token of the
/// Cloud API test hubs ([`fake_graph::FakeGraph::hub_flags`]).
pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";

/// Bound on a hub starting to listen and becoming ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on any single expected WebSocket frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening hub, in-process or spawned: its address and what every
/// test asks of it over HTTP.
pub trait Endpoint {
    fn addr(&self) -> SocketAddr;

    fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr())
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// The status `/ready` answers right now (None: no HTTP answer).
    async fn ready_status(&self) -> Option<u16> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let r = client.get(self.http_url("/ready")).send().await.ok()?;
        Some(r.status().as_u16())
    }

    /// GET `path`: status and body (panics if the hub does not answer).
    async fn get(&self, path: &str) -> (u16, String) {
        http_get_url(&self.http_url(path)).await
    }

    /// The value of an unlabelled metric (or a labelled one, given as
    /// `name{label="value"}`) in `/metrics`; None if absent.
    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        metric_value(&body, series)
    }

    /// Polls `/metrics` until `series` satisfies `ok` (absent counts as 0);
    /// returns the value, panics with the exposition after [`RECV_TIMEOUT`].
    async fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
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
}

/// A hub known only by its address (for tasks that outlive a borrow).
impl Endpoint for SocketAddr {
    fn addr(&self) -> SocketAddr {
        *self
    }
}

/// GET on a hub: status and body.
pub async fn http_get(hub: &impl Endpoint, path: &str) -> (u16, String) {
    http_get_url(&hub.http_url(path)).await
}

/// GET any URL: status and body (panics if nothing answers).
pub async fn http_get_url(url: &str) -> (u16, String) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The value of one series (`name` or `name{label="v"}` exactly as
/// exposed) in an exposition; None when absent.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// An address no test listens on, for a load balancer's server slot
/// that must stay DOWN. A port that was merely free when asked may be
/// taken by a hub another test starts meanwhile, which HAProxy then counts
/// as up; nothing listens on 127.0.0.254 (tests bind 127.0.0.1) and the
/// discard port 9 is not one anyone picks.
pub const CLOSED_ADDR: &str = "127.0.0.254:9";

/// Where [`free_ports`] picks: below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768–60999 on Linux). A port `bind(0)` handed
/// out is free again once returned, and any of the thousands of
/// connections this suite opens may take it as its source port before the
/// server it was meant for binds it (seen: HAProxy's "cannot bind socket"
/// for a stats port). Below 22000 is `free_cluster_ports`'s.
const PICKED_PORTS: std::ops::Range<u32> = 22_000..32_700;

/// Finds a free loopback TCP port.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive free loopback TCP ports (a server and the
/// ones after it, e.g. scripts/cluster's hub ports). Each test process
/// walks [`PICKED_PORTS`] from its own starting point and never hands a
/// port out twice, so parallel tests (and the soak beside the suite) do not
/// pick each other's.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static WALKED: AtomicU32 = AtomicU32::new(0);
    let span = PICKED_PORTS.end - PICKED_PORTS.start;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    let free = |p: u32| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok();
    for _ in 0..span {
        let offset = (start + WALKED.fetch_add(u32::from(n), Ordering::Relaxed)) % span;
        let first = PICKED_PORTS.start + offset;
        if first + u32::from(n) <= PICKED_PORTS.end && (first..first + u32::from(n)).all(free) {
            return first as u16;
        }
    }
    panic!("no {n} consecutive free ports in {PICKED_PORTS:?}");
}

pub fn have(binary: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Async flavour of [`wait_until`].
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A minimal blocking HTTP GET on loopback (no async runtime needed): the
/// whole answer, status line and headers included; None if nothing answers.
pub fn http_get_blocking(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
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
