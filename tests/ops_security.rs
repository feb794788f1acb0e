//! The operations side of issue 10 (authentication), tested with the real
//! tools: HAProxy (haproxy/haproxy.cfg) on free loopback ports in front of
//! real hub processes (`target/debug/mcp-hub`), curl and rustls for TLS,
//! and the shipped compose, Kubernetes and scripts/cluster files.
//!
//! What it proves: the public frontend answers 403 for /metrics and
//! /api/v1/cluster while /health and WebSocket upgrades pass; the stats page
//! needs HAPROXY_STATS_USER/HAPROXY_STATS_PASSWORD (and is closed without
//! them) while the exporter keeps answering Prometheus; TLS_BIND/TLS_CERT
//! terminate TLS in front of a hub; compose commits no secrets, publishes
//! only the client port and runs Prometheus without its lifecycle API;
//! Kubernetes takes the key from a Secret; scripts/cluster passes the key
//! to its hubs through the environment.
//!
//! A test whose tool is missing says so on stderr and passes, like
//! tests/ops_config.rs; ./scripts/test installs them.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::{
    Haproxy, TempDir, TestCa, free_port, free_ports, have, interpolate, repo_file, repo_path,
    repo_yaml, tool, wait_until,
};
use tokio_tungstenite::tungstenite;

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ------------------------------------------------------------ processes

/// A standalone hub on a free loopback port (no auth settings: loopback
/// hubs may run without a key), killed on drop.
struct Hub {
    addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Hub {
    fn start() -> Hub {
        // Its own working directory, so no .env of the developer applies.
        let dir = TempDir::new();
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-hub"))
            .arg("serve")
            .current_dir(&dir.0)
            .env_clear()
            .env("MCP_SERVER_HOST", "127.0.0.1")
            .env("MCP_SERVER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mcp-hub");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if http(port, "GET", "/ready", &[]).is_some_and(|r| r.status == 200) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mcp-hub exited before it was ready: {status}");
            }
            if std::time::Instant::now() > deadline {
                kill(&mut child);
                panic!("mcp-hub on port {port} never answered /ready 200");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Hub {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: dir,
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// haproxy/haproxy.cfg with chosen extra variables (stats credentials,
/// TLS) and every other auth/TLS variable removed from its environment.
struct Lb {
    port: u16,
    stats_port: u16,
    child: Child,
    dir: TempDir,
}

const LB_OPTIONAL_VARS: &[&str] = &[
    "HAPROXY_STATS_USER",
    "HAPROXY_STATS_PASSWORD",
    "TLS_BIND",
    "TLS_CERT",
    "ADMIN_ALLOW_FROM",
];

impl Lb {
    fn start(hubs: &[SocketAddr], extra: &[(&str, String)]) -> Lb {
        let dir = TempDir::new();
        let (port, stats_port) = (free_port(), free_port());
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(repo_path("haproxy/haproxy.cfg"))
            .env("LB_BIND", format!("127.0.0.1:{port}"))
            .env("STATS_BIND", format!("127.0.0.1:{stats_port}"))
            .env("HAPROXY_SOCKET", dir.path().join("admin.sock"))
            // `log stdout`: the access log, read by the token-logging test.
            .stdout(std::fs::File::create(dir.path().join("access.log")).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).expect("log file"));
        for var in LB_OPTIONAL_VARS {
            cmd.env_remove(var);
        }
        for slot in 0..3 {
            let addr = hubs
                .get(slot)
                .map(|a| a.to_string())
                .unwrap_or_else(|| support::CLOSED_ADDR.to_string());
            cmd.env(format!("HUB{}_ADDR", slot + 1), addr);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn haproxy");
        let mut lb = Lb {
            port,
            stats_port,
            child,
            dir,
        };
        let want = hubs.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while lb.servers_up() != Some(want) {
            if let Ok(Some(status)) = lb.child.try_wait() {
                panic!(
                    "haproxy exited ({status}):\n{}",
                    std::fs::read_to_string(lb.dir.path().join("haproxy.log")).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy never saw {want} hub(s) up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lb
    }

    fn servers_up(&self) -> Option<usize> {
        let r = http(self.stats_port, "GET", "/metrics", &[])?;
        r.body
            .lines()
            .find(|l| l.starts_with("haproxy_backend_active_servers{proxy=\"hubs\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as usize)
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

// ------------------------------------------------------------ HTTP, WS

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on loopback, `Connection: close`; None when the
/// connection fails or the answer is not HTTP.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    Some(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// Registers `client_id` over an open WebSocket and returns the
/// confirmation: proof that the upgrade reached a hub.
fn register<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, client_id: &str) -> Json {
    let msg = serde_json::json!({"type": "register", "client_id": client_id, "client_name": client_id, "request_id": "reg"});
    ws.send(tungstenite::Message::text(msg.to_string()))
        .expect("send register");
    loop {
        match ws.read().expect("read from the hub") {
            tungstenite::Message::Text(t) => {
                let v: Json = serde_json::from_str(t.as_str()).expect("JSON from the hub");
                if v["type"] == "registration_confirmed" {
                    return v;
                }
                assert_ne!(v["type"], "error", "{v}");
            }
            tungstenite::Message::Close(c) => panic!("closed before registering: {c:?}"),
            _ => {}
        }
    }
}

fn ws_over_tcp(port: u16, client_id: &str) -> Json {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (mut ws, resp) = match tungstenite::client(format!("ws://127.0.0.1:{port}/"), tcp) {
        Ok(ok) => ok,
        Err(e) => panic!("WebSocket upgrade through HAProxy failed: {e}"),
    };
    assert_eq!(resp.status().as_u16(), 101);
    let confirmed = register(&mut ws, client_id);
    let _ = ws.close(None);
    confirmed
}

// ------------------------------------------------- the public frontend

/// Every way of spelling the internal endpoints that reaches a hub route.
const INTERNAL_PATHS: &[&str] = &[
    "/metrics",
    "/metrics/",
    "/metrics/x",
    "/metrics?format=text",
    "/api/v1/cluster",
    "/api/v1/cluster/",
    "/api/v1/cluster/instances/x",
    "//metrics",
    "/METRICS",
    "/%6detrics",
    "/api//v1/cluster",
];

#[test]
fn the_load_balancer_refuses_internal_endpoints_and_passes_the_rest() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let hub = Hub::start();
    let lb = Haproxy::start(&[hub.addr], 1);

    // The hub itself serves /metrics (Prometheus scrapes it directly) ...
    let direct = http(hub.addr.port(), "GET", "/metrics", &[]).expect("hub /metrics");
    assert_eq!(direct.status, 200, "{}", direct.head);
    // ... and the load balancer refuses it, whatever the method or spelling.
    for path in INTERNAL_PATHS {
        for method in ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"] {
            let r = http(lb.port, method, path, &[]).expect("HAProxy answers");
            assert_eq!(r.status, 403, "{method} {path} through HAProxy: {}", r.head);
            if method != "HEAD" {
                let body: Json = serde_json::from_str(&r.body).unwrap_or_else(|e| {
                    panic!("{method} {path}: body is not JSON ({e}): {}", r.body)
                });
                assert_eq!(body["type"], "error", "{body}");
                assert_eq!(body["code"], "forbidden", "{body}");
            }
        }
    }
    // A WebSocket upgrade is no internal endpoint, even if the query
    // mentions one.
    let r = http(lb.port, "GET", "/?next=/metrics", &[]).expect("HAProxy answers");
    assert_ne!(r.status, 403, "{}", r.head);

    // Public endpoints and WebSockets pass.
    for path in ["/health", "/ready"] {
        let r = http(lb.port, "GET", path, &[]).expect("HAProxy answers");
        assert_eq!(r.status, 200, "GET {path} through HAProxy: {}", r.head);
    }
    let confirmed = ws_over_tcp(lb.port, "through-lb");
    assert_eq!(confirmed["client_id"], "through-lb", "{confirmed}");
}

/// Admin endpoints, in every spelling that reaches a hub route.
const ADMIN_PATHS: &[&str] = &[
    "/api/v1/sessions",
    "/api/v1/sessions/",
    "/API/v1/Sessions",
    "//api//v1/sessions",
    "/api/v1/%73essions",
    "/api/v1/sessions/s/clients/x",
    "/api/v1/sessions/a%2Fb/clients/x",
    "/api/v1/sessions/s/broadcast",
    "/api/v1/sessions/a%2Fb/broadcast",
    "/api/v1/sessions/s/%62roadcast",
    "/api/v1/sessions/s/approvals",
    "/api/v1/sessions/s/approvals/3",
    "/api/v1/instances",
    "/dashboard",
    "/dashboard/feed",
    "/DASHBOARD",
];

/// The session API and the rest pass whatever the source: these must get
/// the hub's own answer through the load balancer.
const PUBLIC_PATHS: &[&str] = &[
    "/api/v1/sessions/s",
    "/api/v1/sessions/s/history/broadcast",
    "/api/v1/sessions/s/events",
    "/api/v1/sessions/clients",
    "/api/v1/openapi.json",
    "/health",
    "/ui",
];

/// The status of a WebSocket upgrade of `path` through `port` (101 when
/// accepted).
fn upgrade_status(port: u16, path: &str) -> u16 {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    match tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), tcp) {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            response.status().as_u16()
        }
        Err(e) => panic!("upgrade of {path} through {port}: {e}"),
    }
}

/// ADMIN_ALLOW_FROM: from a source outside it the admin endpoints get 403
/// at the edge (any spelling, any method, the feed's upgrade too) while
/// the session API, WebSockets and the rest pass; the default list
/// (loopback and private ranges) and a list naming the source let the
/// calls through to the hub (an open loopback hub: 200).
#[test]
fn admin_endpoints_pass_the_load_balancer_only_from_allowed_networks() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let hub = Hub::start();
    // 127.0.0.1 is outside these documentation ranges.
    let outside = Haproxy::start_with(
        &[hub.addr],
        1,
        &[("ADMIN_ALLOW_FROM", "192.0.2.0/24 2001:db8::/32")],
    );
    for path in ADMIN_PATHS {
        for method in ["GET", "POST", "DELETE"] {
            let r = http(outside.port, method, path, &[]).expect("HAProxy answers");
            assert_eq!(r.status, 403, "{method} {path} from outside: {}", r.head);
            let body: Json = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.body));
            assert_eq!(body["code"], "forbidden", "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains("ADMIN_ALLOW_FROM"), "{body}");
        }
    }
    assert_eq!(upgrade_status(outside.port, "/dashboard/feed"), 403);
    for path in PUBLIC_PATHS {
        let direct = http(hub.addr.port(), "GET", path, &[]).expect("hub answers");
        let through = http(outside.port, "GET", path, &[]).expect("HAProxy answers");
        assert_eq!(
            through.status, direct.status,
            "GET {path}: {}",
            through.head
        );
    }
    let confirmed = ws_over_tcp(outside.port, "outside");
    assert_eq!(confirmed["client_id"], "outside", "{confirmed}");

    let by_default = Haproxy::start(&[hub.addr], 1);
    let listed = Haproxy::start_with(
        &[hub.addr],
        1,
        &[("ADMIN_ALLOW_FROM", "192.0.2.0/24 127.0.0.1/32")],
    );
    for lb in [&by_default, &listed] {
        for path in ["/api/v1/sessions", "/api/v1/instances", "/dashboard"] {
            let r = http(lb.port, "GET", path, &[]).expect("HAProxy answers");
            assert_eq!(r.status, 200, "GET {path} from loopback: {}", r.head);
        }
        assert_eq!(upgrade_status(lb.port, "/dashboard/feed"), 101);
    }
}

#[test]
fn the_access_log_never_contains_a_query_token() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let hub = Hub::start();
    let lb = Lb::start(&[hub.addr], &[]);
    let r = http(lb.port, "GET", "/health?token=eyJ.secret-token.sig", &[]).expect("HAProxy");
    assert_eq!(r.status, 200, "{}", r.head);
    let log = lb.dir.path().join("access.log");
    let mut text = String::new();
    wait_until("the access log line", Duration::from_secs(10), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("GET /health HTTP/1.1")
    });
    assert!(!text.contains("secret-token"), "token logged:\n{text}");
}

// ------------------------------------------------------- the stats page

#[test]
fn the_stats_page_needs_credentials_and_the_exporter_does_not() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let lb = Lb::start(
        &[],
        &[
            ("HAPROXY_STATS_USER", "ops".to_string()),
            (
                "HAPROXY_STATS_PASSWORD",
                "correct horse battery".to_string(),
            ),
        ],
    );
    let basic = |user: &str, pass: &str| {
        use base64_like::encode;
        format!("Basic {}", encode(format!("{user}:{pass}").as_bytes()))
    };

    let anonymous = http(lb.stats_port, "GET", "/stats", &[]).expect("stats");
    assert_eq!(anonymous.status, 401, "{}", anonymous.head);
    assert!(
        anonymous
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{}",
        anonymous.head
    );
    let wrong = basic("ops", "wrong");
    let r = http(
        lb.stats_port,
        "GET",
        "/stats",
        &[("Authorization", wrong.as_str())],
    )
    .expect("stats");
    assert_eq!(r.status, 401, "{}", r.head);
    let right = basic("ops", "correct horse battery");
    let r = http(
        lb.stats_port,
        "GET",
        "/stats",
        &[("Authorization", right.as_str())],
    )
    .expect("stats");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body.contains("hub1"), "the stats page lists the servers");

    // Prometheus scrapes the exporter without credentials.
    let metrics = http(lb.stats_port, "GET", "/metrics", &[]).expect("exporter");
    assert_eq!(metrics.status, 200, "{}", metrics.head);
    assert!(metrics.body.contains("haproxy_backend_active_servers"));
}

#[test]
fn without_credentials_the_stats_page_is_closed_to_everyone() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    // Unset, and set but empty (compose passes `${HAPROXY_STATS_USER:-}`).
    let empty = [
        ("HAPROXY_STATS_USER", String::new()),
        ("HAPROXY_STATS_PASSWORD", String::new()),
    ];
    let only_user = [("HAPROXY_STATS_USER", "ops".to_string())];
    for extra in [&[][..], &empty[..], &only_user[..]] {
        let lb = Lb::start(&[], extra);
        for auth in [None, Some("Basic Og==")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            for path in ["/stats", "/stats;csv", "/stats/"] {
                let r = http(lb.stats_port, "GET", path, &headers).expect("stats");
                assert_eq!(r.status, 403, "{extra:?} {auth:?} {path}: {}", r.head);
            }
        }
        let metrics = http(lb.stats_port, "GET", "/metrics", &[]).expect("exporter");
        assert_eq!(metrics.status, 200, "{extra:?}: {}", metrics.head);
    }
}

/// Just enough base64 for a Basic header (no extra dependency).
mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn encodes_like_rfc_4648() {
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg==");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode(b"ops:pw"), "b3BzOnB3");
    }
}

// ------------------------------------------------------------------ TLS

fn rustls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA PEM") {
        roots.add(cert.expect("CA certificate")).expect("CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// curl's exit status and output (`-w '%{http_code}'` appended).
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn tls_bind_terminates_tls_in_front_of_a_hub() {
    if !tool("haproxy", "haproxy") || !tool("openssl", "openssl") || !tool("curl", "curl") {
        return;
    }
    let certs = TestCa::make();
    let hub = Hub::start();
    let tls_port = free_port();
    let lb = Lb::start(
        &[hub.addr],
        &[
            ("TLS_BIND", format!("127.0.0.1:{tls_port}")),
            ("TLS_CERT", certs.bundle().display().to_string()),
        ],
    );
    wait_until("the TLS port to listen", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    let ca = certs.ca().display().to_string();
    let https = |path: &str| format!("https://localhost:{tls_port}{path}");
    let resolve = format!("localhost:{tls_port}:127.0.0.1");

    // https:// through HAProxy reaches the hub, with the certificate
    // verified against the throw-away CA.
    let (ok, out) = curl(&["--cacert", &ca, "--resolve", &resolve, &https("/health")]);
    assert!(ok && out == "200", "https /health: {out}");
    // The 403s apply on the TLS bind too.
    let (ok, out) = curl(&["--cacert", &ca, "--resolve", &resolve, &https("/metrics")]);
    assert!(ok && out == "403", "https /metrics: {out}");
    // It is real TLS: an untrusted client refuses the certificate ...
    let (ok, out) = curl(&["--resolve", &resolve, &https("/health")]);
    assert!(!ok, "curl without the CA must fail: {out}");
    // ... and plain HTTP on the TLS port gets no HTTP answer.
    let (ok, out) = curl(&[&format!("http://127.0.0.1:{tls_port}/health")]);
    assert!(!ok || !out.starts_with('2'), "plain HTTP on TLS: {out}");
    assert!(
        http(tls_port, "GET", "/health", &[]).is_none(),
        "plain HTTP on the TLS port must not be answered"
    );
    // The plain client port keeps working (LB_BIND).
    assert_eq!(
        http(lb.port, "GET", "/health", &[]).map(|r| r.status),
        Some(200)
    );

    // wss:// through HAProxy: a WebSocket over rustls registers at the hub.
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(rustls_config(&certs.ca()), name).expect("TLS client");
    let tls = rustls::StreamOwned::new(conn, tcp);
    let (mut ws, resp) = match tungstenite::client(format!("wss://localhost:{tls_port}/"), tls) {
        Ok(ok) => ok,
        Err(e) => panic!("wss upgrade through HAProxy failed: {e}"),
    };
    assert_eq!(resp.status().as_u16(), 101);
    let confirmed = register(&mut ws, "over-tls");
    assert_eq!(confirmed["client_id"], "over-tls", "{confirmed}");
    let _ = ws.close(None);
}

#[test]
fn tls_bind_without_a_certificate_refuses_to_start() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let dir = TempDir::new();
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(repo_path("haproxy/haproxy.cfg"))
        .env_remove("TLS_CERT")
        .env("TLS_BIND", "127.0.0.1:0")
        .env("HAPROXY_SOCKET", dir.path().join("admin.sock"))
        .output()
        .expect("haproxy -c");
    assert!(
        !out.status.success(),
        "TLS_BIND without TLS_CERT must be a configuration error"
    );
}

// ------------------------------------------------------- docker compose

/// `${NAME...}` references in a compose value: (name, modifier), where the
/// modifier is what follows the name (`:?msg`, `:-default`, or empty).
fn interpolations(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        let tail = &rest[at + 2..];
        let end = tail.find('}').unwrap_or(tail.len());
        let inner = &tail[..end];
        let name_end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        out.push((inner[..name_end].to_string(), inner[name_end..].to_string()));
        rest = &tail[end..];
    }
    out
}

fn env_map(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Number(n) => n.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        other => panic!("environment value {other:?}"),
                    };
                    (k.as_str().expect("variable name").to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn looks_secret(name: &str) -> bool {
    ["SECRET", "PASSWORD", "TOKEN", "KEY"]
        .iter()
        .any(|w| name.to_ascii_uppercase().contains(w))
        && !name.ends_with("_FILE")
        && !name.ends_with("_PREFIX")
}

#[test]
fn compose_commits_no_secrets() {
    let c = repo_yaml("docker-compose.yml");
    let services = c["services"].as_mapping().expect("services");
    let mut seen = BTreeSet::new();
    for (name, s) in services {
        let name = name.as_str().expect("service name");
        for (var, value) in env_map(s) {
            if !looks_secret(&var) {
                continue;
            }
            seen.insert(var.clone());
            let refs = interpolations(&value);
            assert_eq!(
                refs.len(),
                1,
                "{name}.{var} must come from .env as one ${{...}}, is {value:?}"
            );
            assert!(
                value.starts_with("${") && value.ends_with('}'),
                "{name}.{var} = {value:?}: no literal text around the secret"
            );
            let (_, modifier) = &refs[0];
            assert!(
                modifier.starts_with(":?") || modifier == ":-",
                "{name}.{var} = {value:?}: required (:?) or empty by default, never a default secret"
            );
        }
    }
    for var in [
        "AUTH_JWT_SECRET",
        "GF_SECURITY_ADMIN_PASSWORD",
        "HAPROXY_STATS_PASSWORD",
    ] {
        assert!(seen.contains(var), "compose never sets {var}: {seen:?}");
    }
    // Every hub has the key, and compose refuses to start without it.
    for i in 1..=3 {
        let env = env_map(&c["services"][format!("hub{i}").as_str()]);
        let secret = env.get("AUTH_JWT_SECRET").expect("hub AUTH_JWT_SECRET");
        assert!(
            secret.starts_with("${AUTH_JWT_SECRET:?"),
            "hub{i}: {secret}"
        );
        assert_ne!(
            env.get("AUTH_MODE").map(String::as_str),
            Some("none"),
            "hub{i} on 0.0.0.0 must not run without auth"
        );
    }
    let grafana = env_map(&c["services"]["grafana"]);
    assert!(grafana["GF_SECURITY_ADMIN_PASSWORD"].starts_with("${GRAFANA_ADMIN_PASSWORD:?"));

    // With an empty .env, compose refuses to start; with one, it resolves.
    let empty = BTreeMap::new();
    let full: BTreeMap<&str, &str> = [
        ("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("GRAFANA_ADMIN_PASSWORD", "pw"),
    ]
    .into();
    for (var, value) in env_map(&c["services"]["hub1"]) {
        let resolved = interpolate(&value, &full).unwrap_or_else(|e| panic!("{var}: {e}"));
        assert!(!resolved.contains("${"), "{var}");
        if var == "AUTH_JWT_SECRET" {
            let err = interpolate(&value, &empty).expect_err("no secret, no start");
            assert!(
                err.contains(".env"),
                "the error says where to set it: {err}"
            );
        }
    }
}

#[test]
fn env_example_lists_every_variable_compose_reads_with_no_value() {
    let compose = repo_file("docker-compose.yml");
    let example = repo_file(".env.example");
    let listed: BTreeMap<String, String> = example
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut used = BTreeSet::new();
    for line in compose.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for (name, _) in interpolations(line) {
            used.insert(name);
        }
    }
    for override_file in ["deploy/compose/key-rollover.yml", "deploy/compose/tls.yml"] {
        for (name, _) in interpolations(&repo_file(override_file)) {
            used.insert(name);
        }
    }
    assert!(used.contains("AUTH_JWT_SECRET"), "{used:?}");
    for name in &used {
        let value = listed
            .get(name)
            .unwrap_or_else(|| panic!(".env.example does not list {name}"));
        if looks_secret(name) {
            assert!(
                value.is_empty(),
                ".env.example must not carry a usable {name}: {value:?}"
            );
        }
    }
    assert!(example.contains("openssl rand -hex 32"));
    // .env itself is never committed nor copied into images.
    let ignored = |file: &str| repo_file(file).lines().any(|l| l.trim() == ".env");
    assert!(ignored(".gitignore"), ".gitignore must list .env");
    assert!(ignored(".dockerignore"), ".dockerignore must list .env");
    if have("git") {
        let tracked = Command::new("git")
            .args(["ls-files", "--error-unmatch", ".env"])
            .current_dir(repo_path("."))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("git");
        assert!(!tracked.success(), ".env is committed");
    }
}

fn published(service: &Yaml) -> Vec<String> {
    service["ports"]
        .as_sequence()
        .map(|p| {
            p.iter()
                .map(|x| match x {
                    Yaml::String(s) => s.clone(),
                    other => panic!("use quoted \"host:container\" ports, not {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_publishes_only_the_client_port_and_prometheus_has_no_lifecycle_api() {
    let c = repo_yaml("docker-compose.yml");
    for (name, s) in c["services"].as_mapping().expect("services") {
        let name = name.as_str().expect("name");
        let ports = published(s);
        if name == "haproxy" {
            let lb_port = env_map(s)["LB_BIND"]
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string();
            assert_eq!(ports, [format!("{lb_port}:{lb_port}")], "haproxy publishes");
        } else {
            assert!(ports.is_empty(), "{name} publishes {ports:?}");
        }
        assert!(s.get("network_mode").is_none(), "{name}: host networking");
    }
    let args: Vec<&str> = c["services"]["prometheus"]["command"]
        .as_sequence()
        .expect("prometheus command")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert!(
        !args.iter().any(|a| a.contains("enable-lifecycle")),
        "{args:?}"
    );
    assert!(
        !repo_file("scripts/cluster").contains("--web.enable-lifecycle"),
        "scripts/cluster runs Prometheus without the lifecycle API too"
    );

    // The operator override publishes stats, Prometheus and Grafana on the
    // host's loopback only.
    let ops = repo_yaml("deploy/compose/ops-ports.yml");
    let mut seen = BTreeSet::new();
    for (name, s) in ops["services"].as_mapping().expect("services") {
        let name = name.as_str().expect("name");
        assert!(
            c["services"].get(name).is_some(),
            "ops-ports.yml names unknown service {name}"
        );
        for p in published(s) {
            assert!(p.starts_with("127.0.0.1:"), "{name}: {p} is not loopback");
            seen.insert(p.rsplit(':').next().unwrap_or_default().to_string());
        }
    }
    for port in ["8404", "9090", "3000"] {
        assert!(seen.contains(port), "ops-ports.yml does not publish {port}");
    }
}

#[test]
fn compose_key_rollover_override_adds_the_previous_secret_to_every_hub() {
    let c = repo_yaml("docker-compose.yml");
    let o = repo_yaml("deploy/compose/key-rollover.yml");
    for (name, _) in c["services"].as_mapping().expect("services") {
        let name = name.as_str().expect("name");
        let env = env_map(&o["services"][name]);
        if name.starts_with("hub") {
            let v = env
                .get("AUTH_JWT_PREVIOUS_SECRET")
                .unwrap_or_else(|| panic!("{name} gets no AUTH_JWT_PREVIOUS_SECRET"));
            assert!(v.starts_with("${AUTH_JWT_PREVIOUS_SECRET:?"), "{v}");
        } else {
            assert!(env.is_empty(), "{name}: {env:?}");
        }
    }
}

#[test]
fn compose_tls_override_binds_the_mounted_certificate() {
    let o = repo_yaml("deploy/compose/tls.yml");
    let lb = &o["services"]["haproxy"];
    let env = env_map(lb);
    let cert = env.get("TLS_CERT").expect("TLS_CERT");
    let bind = env.get("TLS_BIND").expect("TLS_BIND");
    let mounts: Vec<&str> = lb["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .map(|v| v.as_str().expect("volume"))
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("${TLS_CERT_FILE:?") && m.ends_with(&format!(":{cert}:ro"))),
        "the certificate is mounted read-only at TLS_CERT: {mounts:?}"
    );
    let port = bind.rsplit(':').next().unwrap_or_default();
    assert_eq!(published(lb), [format!("{port}:{port}")]);
}

// ----------------------------------------------------------- Kubernetes

#[test]
fn kubernetes_takes_the_key_from_a_secret() {
    let config = repo_yaml("deploy/kubernetes/configmap.yaml");
    for (k, _) in config["data"].as_mapping().expect("data") {
        let k = k.as_str().expect("key");
        assert!(
            !looks_secret(k),
            "{k} belongs in a Secret, not the ConfigMap"
        );
    }
    let deploy = repo_yaml("deploy/kubernetes/deployment.yaml");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    let from = c["envFrom"].as_sequence().expect("envFrom");
    let secret = from
        .iter()
        .find(|e| e.get("secretRef").is_some())
        .expect("envFrom has a secretRef");
    assert_eq!(secret["secretRef"]["name"].as_str(), Some("mcp-hub-auth"));
    assert_ne!(
        secret["secretRef"]["optional"].as_bool(),
        Some(true),
        "a missing key must stop the pod, not run it open"
    );
    // The Secret is created by the operator, never shipped with a value.
    let kustomization = repo_yaml("deploy/kubernetes/kustomization.yaml");
    assert!(kustomization.get("secretGenerator").is_none());
    for r in kustomization["resources"].as_sequence().expect("resources") {
        let doc = repo_yaml(&format!(
            "deploy/kubernetes/{}",
            r.as_str().expect("resource")
        ));
        assert_ne!(doc["kind"].as_str(), Some("Secret"), "a committed Secret");
    }
    let readme = repo_file("deploy/kubernetes/README.md");
    assert!(readme.contains("kubectl create secret generic mcp-hub-auth"));
    assert!(readme.contains("AUTH_JWT_PREVIOUS_SECRET"));
}

// ------------------------------------------------------ scripts/cluster

/// `scripts/cluster down` for a run folder, also when the test fails.
struct ClusterDown(TempDir);

impl Drop for ClusterDown {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_path("scripts/cluster"))
            .arg("down")
            .env("CLUSTER_DIR", self.0.path().join("run"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn cluster_script_rejects_a_short_auth_secret() {
    let out = Command::new("bash")
        .arg(repo_path("scripts/cluster"))
        .args(["up", "--auth-secret", "too-short"])
        .env(
            "CLUSTER_DIR",
            std::env::temp_dir().join("mcp-hub-never-used"),
        )
        .output()
        .expect("scripts/cluster");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));
    let help = Command::new("bash")
        .arg(repo_path("scripts/cluster"))
        .arg("--help")
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--auth-secret",
        "AUTH_JWT_SECRET",
        "HAPROXY_STATS_USER",
        "HAPROXY_STATS_PASSWORD",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

/// A loopback cluster started with --auth-secret and stats credentials:
/// the hubs get the key in their environment (not on a command line) and
/// the stats page asks for the credentials.
#[test]
fn cluster_script_passes_the_key_and_stats_credentials() {
    if !tool("haproxy", "haproxy") || !tool("redis-server", "redis-server") {
        return;
    }
    let dir = TempDir::new();
    let run = dir.path().join("run");
    let guard = ClusterDown(dir);
    let hub_base = free_ports(3);
    let (port, stats, redis) = (free_port(), free_port(), free_port());
    let secret = "0123456789abcdef0123456789abcdef-test";
    let out = Command::new("bash")
        .arg(repo_path("scripts/cluster"))
        .args(["up", "--hubs", "1"])
        .args(["--port", &port.to_string()])
        .args(["--stats-port", &stats.to_string()])
        .args(["--hub-base-port", &hub_base.to_string()])
        .args(["--redis-port", &redis.to_string()])
        .args(["--auth-secret", secret])
        .env("CLUSTER_DIR", &run)
        .env("MCP_HUB_BIN", env!("CARGO_BIN_EXE_mcp-hub"))
        .env_remove("AUTH_JWT_SECRET")
        .env("HAPROXY_STATS_USER", "ops")
        .env("HAPROXY_STATS_PASSWORD", "pw")
        .output()
        .expect("scripts/cluster up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/cluster up failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("auth        on"), "{stdout}");
    assert!(!stdout.contains(secret), "the key is printed: {stdout}");

    let pid = std::fs::read_to_string(run.join("hub1.pid")).expect("hub1.pid");
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    let environ = std::fs::read(proc_dir.join("environ")).expect("hub environ");
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == format!("AUTH_JWT_SECRET={secret}").as_bytes()),
        "hub1 does not have AUTH_JWT_SECRET in its environment"
    );
    let cmdline = std::fs::read(proc_dir.join("cmdline")).expect("hub cmdline");
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(secret),
        "the key is on hub1's command line"
    );

    assert_eq!(
        http(stats, "GET", "/stats", &[]).map(|r| r.status),
        Some(401)
    );
    let auth = format!("Basic {}", base64_like::encode(b"ops:pw"));
    assert_eq!(
        http(stats, "GET", "/stats", &[("Authorization", auth.as_str())]).map(|r| r.status),
        Some(200)
    );
    assert_eq!(
        http(port, "GET", "/metrics", &[]).map(|r| r.status),
        Some(403)
    );
    assert_eq!(
        http(port, "GET", "/health", &[]).map(|r| r.status),
        Some(200)
    );
    drop(guard);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "scripts/cluster down left HAProxy running"
    );
}

// ------------------------------------------------------ docs/security.md

#[test]
fn security_doc_covers_the_operations_settings() {
    let doc = repo_file("docs/security.md");
    for needle in [
        "HAPROXY_STATS_USER",
        "HAPROXY_STATS_PASSWORD",
        "TLS_BIND",
        "TLS_CERT",
        "AUTH_JWT_SECRET",
        "AUTH_JWT_PREVIOUS_SECRET",
        "AUTH_JWKS_URL",
        "ALLOWED_ORIGINS",
        "mcp-hub token",
        "openssl rand -hex 32",
        "MAX_CONNECTIONS",
        "MAX_CLIENTS_PER_SESSION",
        "RATE_LIMIT_BURST",
        "4401",
        "ADMIN_ALLOW_FROM",
    ] {
        assert!(
            doc.contains(needle),
            "docs/security.md does not mention {needle}"
        );
    }
    // The TLS lines it quotes are the ones haproxy.cfg has.
    let cfg = repo_file("haproxy/haproxy.cfg");
    let tls_line = cfg
        .lines()
        .find(|l| l.trim_start().starts_with("bind \"${TLS_BIND}\""))
        .expect("haproxy.cfg has the TLS bind")
        .trim();
    assert!(
        doc.contains(tls_line),
        "docs/security.md must quote `{tls_line}`"
    );
    // And the admin allow-list's rules, as haproxy.cfg has them.
    let admin_lines: Vec<&str> = cfg
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("acl admin_"))
        .collect();
    assert_eq!(admin_lines.len(), 4, "{admin_lines:?}");
    for line in admin_lines {
        assert!(doc.contains(line), "docs/security.md must quote `{line}`");
    }
}

#[test]
fn the_image_bakes_in_no_key() {
    for line in repo_file("deploy/Dockerfile").lines() {
        let t = line.trim_start();
        if t.starts_with("ENV ") || t.starts_with("ARG ") || t.contains("AUTH_JWT_SECRET=") {
            assert!(
                !t.contains("AUTH_JWT_SECRET") && !t.contains("AUTH_JWT_PREVIOUS_SECRET"),
                "deploy/Dockerfile sets a key: {t}"
            );
        }
    }
}
