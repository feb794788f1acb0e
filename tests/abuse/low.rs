//! The low findings (issue 19 §5): JWKS fetching (https only, no
//! redirects, a streamed size cap, the URL never logged), `nbf`, the REST
//! rate limit keyed by address without auth, webhook refusals logged
//! rate-limited, the webhook freshness window, and secrets in `Debug`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

// ---------------------------------------------------------------- JWKS

/// A JWKS-ish HTTP server on 127.0.0.1:0: `/jwks.json` and
/// `/redirect.json` (302 to `/jwks.json`), counting the requests of each.
struct JwksServer {
    base: String,
    direct: Arc<AtomicUsize>,
    redirected: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start() -> JwksServer {
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;
        let direct = Arc::new(AtomicUsize::new(0));
        let redirected = Arc::new(AtomicUsize::new(0));
        let (d, r) = (direct.clone(), redirected.clone());
        let app = axum::Router::new()
            .route(
                "/jwks.json",
                axum::routing::get(move || {
                    d.fetch_add(1, Ordering::SeqCst);
                    async { axum::Json(json!({"keys": []})) }
                }),
            )
            .route(
                "/redirect.json",
                axum::routing::get(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                    async {
                        (StatusCode::FOUND, [(header::LOCATION, "/jwks.json")]).into_response()
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            base: format!("http://{addr}"),
            direct,
            redirected,
            task,
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server answering every request with a chunked body of up to 300 MB
/// (no Content-Length, so only reading tells the size); `written` counts
/// the body bytes the client took, `gone` is set when it hung up.
struct EndlessBody {
    url: String,
    written: Arc<AtomicU64>,
    gone: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl EndlessBody {
    const TOTAL: u64 = 300 * 1024 * 1024;

    async fn start() -> EndlessBody {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(AtomicU64::new(0));
        let gone = Arc::new(AtomicBool::new(false));
        let (w, g) = (written.clone(), gone.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (w, g) = (w.clone(), g.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|x| x == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                    if socket.write_all(start.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b' '; 64 * 1024];
                    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                    frame.extend_from_slice(&chunk);
                    frame.extend_from_slice(b"\r\n");
                    while w.load(Ordering::SeqCst) < Self::TOTAL {
                        if socket.write_all(&frame).await.is_err() {
                            g.store(true, Ordering::SeqCst);
                            return;
                        }
                        w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                    g.store(true, Ordering::SeqCst);
                });
            }
        });
        EndlessBody {
            url: format!("http://{addr}/jwks.json"),
            written,
            gone,
            task,
        }
    }
}

impl Drop for EndlessBody {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Main buffered the whole body before its size check (300 MB: +310 MB
/// RSS); now the fetch stops reading at 256 KiB and counts the shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_jwks_body_is_dropped_while_it_streams() {
    let endless = EndlessBody::start().await;
    let hub = TestHub::start(&["--auth-jwks-url", &endless.url]).await;
    hub.wait_metric("hub_limit_shed_total{limit=\"jwks_too_large\"}", |v| {
        v >= 1.0
    })
    .await;
    wait_until_async("the JWKS fetch to hang up", RECV_TIMEOUT, || {
        let gone = endless.gone.load(Ordering::SeqCst);
        async move { gone }
    })
    .await;
    // The cap plus what the socket buffers held: far below the body.
    let taken = endless.written.load(Ordering::SeqCst);
    assert!(
        taken < 32 * 1024 * 1024,
        "the hub took {taken} bytes of a 300 MB JWKS"
    );
}

/// Plain http to a non-loopback host is refused at start (exit 2, naming
/// the setting); main started and fetched the keys in the clear.
#[test]
fn a_plain_http_jwks_url_is_refused_at_start() {
    let url = "http://idp.example/jwks.json";
    // In-process first: on main the binary would not exit at all.
    let refused = config_from_flags(&["--auth-jwks-url", url]);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("AUTH_JWKS_URL")),
        "{refused:?}"
    );
    let dir = TempDir::new();
    let (code, stderr) = run_hub(&["--port", "0"], &[("AUTH_JWKS_URL", url)], &dir);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("AUTH_JWKS_URL") && stderr.contains("https"),
        "{stderr}"
    );
}

/// A redirect is not followed (it could lead anywhere, http included):
/// the fetch fails and the target is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_redirect_is_not_followed() {
    let idp = JwksServer::start().await;
    let url = format!("{}/redirect.json", idp.base);
    let _hub = TestHub::start(&["--auth-jwks-url", &url]).await;
    // The first fetch happens before the hub listens.
    assert_eq!(idp.redirected.load(Ordering::SeqCst), 1);
    assert_eq!(
        idp.direct.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

/// Logs show the JWKS URL's scheme and host only: its userinfo, path and
/// query may carry credentials (main logged the URL verbatim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_url_is_never_logged_verbatim() {
    let idp = JwksServer::start().await;
    let host = idp.base.trim_start_matches("http://");
    let url = format!("http://jwksuser:s3cretpass@{host}/jwks.json?access_token=s3cretquery");
    let hub = HubProcess::start(&["--auth-jwks-url", &url], &[]).await;
    hub.wait_for_log("JWKS loaded", START_TIMEOUT).await;
    let log = hub.log();
    for secret in ["s3cretpass", "s3cretquery", "jwksuser", "/jwks.json"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
    assert!(log.contains(host), "the host is still named:\n{log}");
}

// ----------------------------------------------------------------- nbf

/// A token whose `nbf` is ahead is refused on the upgrade and on REST
/// (main ignored `nbf`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_before_its_nbf_is_refused() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-low";
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let now = now_secs();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    };
    let early =
        sign(json!({"sub": "a", "sessions": ["default"], "exp": now + 600, "nbf": now + 300}));
    let due = sign(json!({"sub": "a", "sessions": ["default"], "exp": now + 600, "nbf": now - 1}));

    match WsClient::try_connect(&hub.ws_url(), Some(&early)).await {
        Err((status, body)) => {
            assert_eq!(status, 401, "{body}");
            assert!(body.contains("nbf"), "{body}");
        }
        Ok(_) => panic!("the upgrade accepted a token before its nbf"),
    }
    let path = "/api/v1/sessions/default";
    let (status, body) = http_call(&hub, reqwest::Method::GET, path, Some(&early), None).await;
    assert_eq!(status, 401, "{body}");

    assert!(
        WsClient::try_connect(&hub.ws_url(), Some(&due))
            .await
            .is_ok()
    );
    let (status, body) = http_call(&hub, reqwest::Method::GET, path, Some(&due), None).await;
    assert_ne!(status, 401, "{body}");
}

// ----------------------------------------------------- REST rate limit

/// `GET path` with these headers; the status.
async fn get_status(hub: &TestHub, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = reqwest::Client::new().get(hub.http_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("GET").status().as_u16()
}

const REST_PATH: &str = "/api/v1/sessions/default";

/// Without auth, a fresh `X-Client-Id` per call no longer buys a fresh
/// bucket: one address, one bucket (main keyed on the header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_the_rest_limit_is_per_address_not_per_client_id() {
    let hub = TestHub::start(&["--rate-limit-per-sec", "0.01", "--rate-limit-burst", "2"]).await;
    for id in ["one", "two"] {
        let status = get_status(&hub, REST_PATH, &[("x-client-id", id)]).await;
        assert_ne!(status, 429, "{id}");
    }
    let status = get_status(&hub, REST_PATH, &[("x-client-id", "three")]).await;
    assert_eq!(status, 429, "a new X-Client-Id got a new bucket");
}

/// Behind a `TRUSTED_PROXIES` proxy the bucket is the forwarded client's,
/// so clients behind one load balancer do not share one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_rest_limit_is_per_forwarded_address() {
    let hub = TestHub::start(&[
        "--rate-limit-per-sec",
        "0.01",
        "--rate-limit-burst",
        "1",
        "--trusted-proxies",
        "127.0.0.1/32",
    ])
    .await;
    let a = [("x-forwarded-for", "203.0.113.7")];
    assert_ne!(get_status(&hub, REST_PATH, &a).await, 429);
    assert_eq!(get_status(&hub, REST_PATH, &a).await, 429);
    let b = [("x-forwarded-for", "203.0.113.8")];
    assert_ne!(
        get_status(&hub, REST_PATH, &b).await,
        429,
        "another client behind the proxy"
    );
}

// ------------------------------------------------------------ webhooks

const WEBHOOK: &str = "/webhooks/whatsapp";
const WEBHOOK_FLAGS: [&str; 4] = [
    "--whatsapp-app-secret",
    APP_SECRET,
    "--whatsapp-verify-token",
    VERIFY_TOKEN,
];

/// `sha256=<hex>` as computed by `openssl dgst -sha256 -hmac`.
fn openssl_signature(body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", APP_SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl failed");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let hex = text
        .trim()
        .rsplit("= ")
        .next()
        .expect("a digest")
        .to_string();
    assert_eq!(hex.len(), 64, "{text}");
    format!("sha256={hex}")
}

/// POSTs a delivery with this signature header; the status (None: the
/// hub hung up before answering, as it may on an oversize body).
async fn post_webhook(hub: &impl Endpoint, body: Vec<u8>, signature: Option<&str>) -> Option<u16> {
    let mut req = reqwest::Client::new()
        .post(hub.http_url(WEBHOOK))
        .header("content-type", "application/json")
        .body(body);
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    req.send().await.ok().map(|r| r.status().as_u16())
}

/// A delivery with one inbound text sent at `timestamp` (Unix seconds).
fn inbound(wamid: &str, text: &str, timestamp: u64) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp",
            "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}],
            "messages": [{"from": "16505551234", "id": wamid, "timestamp": timestamp.to_string(),
                          "type": "text", "text": {"body": text}}]}}]}]})
    .to_string()
}

/// 100 refused POSTs (bad signatures, signed non-JSON, oversize bodies)
/// cost a bounded number of WARN lines, not one each as on main.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_webhooks_are_logged_rate_limited() {
    let hub = HubProcess::start(&WEBHOOK_FLAGS, &[]).await;
    let started = Instant::now();
    let not_json = b"not json".to_vec();
    let not_json_sig = openssl_signature(&not_json);
    for i in 0..100 {
        match i % 10 {
            0 => {
                post_webhook(&hub, vec![b' '; 2 * 1024 * 1024 + 1], None).await;
            }
            1..=4 => {
                let status = post_webhook(&hub, not_json.clone(), Some(&not_json_sig)).await;
                assert_eq!(status, Some(400));
            }
            _ => {
                let status = post_webhook(&hub, b"{}".to_vec(), Some("sha256=00")).await;
                assert_eq!(status, Some(401));
            }
        }
    }
    let elapsed = started.elapsed();
    hub.wait_for_log("missing or bad signature", RECV_TIMEOUT)
        .await;
    let log = hub.log();
    let warns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("webhook"))
        .count();
    // Three kinds, at most one line each per 10 s window the run touched.
    let windows = 2 + elapsed.as_secs() as usize / 10;
    assert!(
        (1..=3 * windows).contains(&warns),
        "{warns} WARN lines for 100 refused webhooks in {elapsed:?}:\n{log}"
    );
}

/// Items older than the window (7 days) or ahead of the clock (over
/// 5 min) are acknowledged with 200 but not delivered, and counted; main
/// delivered a replay of any age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_future_webhook_messages_are_acknowledged_not_delivered() {
    let hub = TestHub::start(&WEBHOOK_FLAGS).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let now = now_secs();
    for (wamid, text, at) in [
        ("wamid.OLD", "eight days old", now - 8 * 86_400),
        ("wamid.AHEAD", "an hour ahead", now + 3_600),
        ("wamid.NOW", "just now", now),
    ] {
        let body = inbound(wamid, text, at);
        let sig = openssl_signature(body.as_bytes());
        assert_eq!(
            post_webhook(&hub, body.into_bytes(), Some(&sig)).await,
            Some(200),
            "{wamid}"
        );
    }
    // Queued in order: the first delivered message is the fresh one.
    let first = loop {
        let ev = user.recv_type("message_event").await;
        if ev["direction"] == "incoming" {
            break ev;
        }
    };
    assert_eq!(first["message_id"], "wamid.NOW", "{first}");
    let shed = hub
        .metric("hub_limit_shed_total{limit=\"webhook_stale\"}")
        .await;
    assert_eq!(shed, Some(2.0));
}

// ------------------------------------------------------------- secrets

/// `Debug` of the parsed command lines (serve, terminal, token) shows no
/// secret; main's derived `Debug` printed AUTH_JWT_SECRET and the tokens.
#[test]
fn parsed_settings_debug_shows_no_secret() {
    use clap::Parser;
    use mcp_hub::config::Cli;
    let secret = "low-abuse-secret-0123456789abcdef012345";
    let lines: [&[&str]; 3] = [
        &[
            "mcp-hub",
            "--auth-jwt-secret",
            secret,
            "--auth-jwt-previous-secret",
            "low-abuse-previous-0123456789abcdef0123",
            "--auth-jwks-url",
            "https://idp.example/jwks.json?access_token=low-abuse-query",
            "--whatsapp-access-token",
            "low-abuse-access",
            "--gemini-api-key",
            "low-abuse-gemini",
            "--redis-url",
            "redis://:low-abuse-redis@10.0.0.1:6379",
        ],
        &["mcp-hub", "terminal", "--token", "low-abuse-terminal"],
        &[
            "mcp-hub",
            "token",
            "--sub",
            "a",
            "--auth-jwt-secret",
            secret,
        ],
    ];
    for argv in lines {
        let shown = format!("{:?}", Cli::try_parse_from(argv).expect("parses"));
        // Every secret value above, and nothing else, says "low-abuse".
        assert!(!shown.contains("low-abuse"), "{shown}");
    }
}
