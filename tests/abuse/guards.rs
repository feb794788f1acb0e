//! The connection's guards (issue 19): the registration deadline, the
//! per-identity WebSocket cap, binary frames under the rate limit, the
//! `Host` allow-list of every route (DNS rebinding), and the pages'
//! security headers. See tests/abuse.rs.

use std::time::Duration;

use mcp_hub::auth::{Role, mint};
use serde_json::{Value, json};

use crate::support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-abuse-guards";

fn token(sub: &str, role: Role) -> String {
    mint(
        SECRET,
        sub,
        &["*".to_string()],
        role,
        Duration::from_secs(600),
    )
    .expect("mint")
}

/// A WebSocket to `url` with a bearer token: Ok, or the refusal's status
/// and JSON body.
async fn open_with_token(url: &str, token: &str) -> Result<WsClient, (u16, Value)> {
    let bearer = format!("Bearer {token}");
    WsClient::try_connect_with(url, &[("authorization", bearer.as_str())]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_registers_is_closed_at_the_registration_deadline() {
    let hub = TestHub::start(&["--register-timeout-ms", "1000"]).await;
    let url = hub.ws_url();
    let (mut registered, _) = WsClient::register(&url, "deadline", "on-time").await;
    let mut silent = WsClient::connect(&url).await;
    // Pings are answered but are not a registration.
    let pong = silent.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");

    assert_eq!(silent.expect_close().await, Some(4408));
    hub.wait_metric("hub_limit_shed_total{limit=\"register_timeout\"}", |v| {
        v == 1.0
    })
    .await;
    hub.wait_metric(
        "hub_ws_connections_closed_total{reason=\"register_timeout\"}",
        |v| v == 1.0,
    )
    .await;
    // Past the same deadline, a client that registered in time is served.
    let pong = registered.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(registered.closed().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_sub_holds_at_most_max_connections_per_identity() {
    let hub = TestHub::start(&[
        "--auth-jwt-secret",
        SECRET,
        "--max-connections-per-identity",
        "2",
    ])
    .await;
    let url = hub.ws_url();
    let alice = token("alice", Role::Client);
    let first = open_with_token(&url, &alice).await.expect("alice's first");
    let _second = open_with_token(&url, &alice).await.expect("alice's second");
    let (status, body) = open_with_token(&url, &alice)
        .await
        .err()
        .expect("a third of alice's is refused");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_connections", "{body}");
    // Another sub is not affected.
    let _bob = open_with_token(&url, &token("bob", Role::Client))
        .await
        .expect("bob's");
    // A connection that ends gives its slot back.
    first.close().await;
    wait_until_async("alice's slot is given back", RECV_TIMEOUT, || async {
        open_with_token(&url, &alice).await.is_ok()
    })
    .await;

    // The dashboard feed holds a slot of its sub too.
    let root = token("root", Role::Admin);
    let feed_url = format!("ws://{}/dashboard/feed", hub.addr);
    let _feed = open_with_token(&feed_url, &root).await.expect("a feed");
    let _client = open_with_token(&url, &root).await.expect("root's client");
    let (status, body) = open_with_token(&feed_url, &root)
        .await
        .err()
        .expect("a third of root's is refused");
    assert_eq!(status, 429, "{body}");
    // At least the two refusals above (the wait for alice's slot may
    // have been refused too).
    hub.wait_metric(
        "hub_limit_shed_total{limit=\"connections_per_identity\"}",
        |v| v >= 2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_use_up_the_rate_limit_like_text_frames() {
    // 2 tokens, refilled at one per 100 s: the test never sees a refill.
    let hub = TestHub::start(&["--rate-limit-per-sec", "0.01", "--rate-limit-burst", "2"]).await;
    let mut c = WsClient::connect(&hub.ws_url()).await;
    for _ in 0..2 {
        c.send_binary(vec![1, 2, 3]).await;
        assert_eq!(c.recv().await["code"], "binary_not_supported");
    }
    c.send_binary(vec![1, 2, 3]).await;
    assert_eq!(c.recv().await["code"], "rate_limited");
    // The bucket is shared: text is refused now too.
    c.send_json(json!({"type": "ping", "request_id": "p"}))
        .await;
    let err = c.recv().await;
    assert_eq!(
        (err["code"].as_str(), err["request_id"].as_str()),
        (Some("rate_limited"), Some("p"))
    );
    // Binary frames over the limit keep being refused, never relayed or
    // silently dropped, and the connection stays open.
    for _ in 0..3 {
        c.send_binary(vec![1, 2, 3]).await;
        assert_eq!(c.recv().await["code"], "rate_limited");
    }
    assert!(c.closed().is_none(), "the connection stays open");
    hub.wait_metric("hub_errors_total{code=\"rate_limited\"}", |v| v >= 5.0)
        .await;
}

/// What a DNS-rebinding page sends: its own name as `Host`, and its own
/// origin, which matches that `Host`.
fn rebound(host: &str) -> [(&'static str, String); 2] {
    [
        ("host", host.to_string()),
        ("origin", format!("http://{host}")),
    ]
}

/// GET `path` with these headers: status and JSON body (Null if not JSON).
async fn get_with(hub: &TestHub, path: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(hub.http_url(path));
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let r = req.send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_with_its_matching_origin_is_refused_on_every_route() {
    let hub = TestHub::start(&[]).await;
    let _member = WsClient::register(&hub.ws_url(), "default", "someone").await;
    let port = hub.addr.port();
    let attacker = format!("attacker.example:{port}");
    let headers = rebound(&attacker);
    let ws_headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();

    // REST, the admin API, and every other route.
    for path in [
        "/api/v1/sessions/default",
        "/api/v1/sessions",
        "/ui",
        "/dashboard",
        "/health",
    ] {
        let (status, body) = get_with(&hub, path, &headers).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["code"], "host_not_allowed", "{path}: {body}");
    }
    // The WebSocket upgrade, clients' and the dashboard feed's.
    for path in ["/", "/ws", "/dashboard/feed"] {
        let url = format!("ws://{}{path}", hub.addr);
        let (status, body) = WsClient::try_connect_with(&url, &ws_headers)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} upgraded for {attacker}"));
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["code"], "host_not_allowed", "{path}: {body}");
    }
    hub.wait_metric("hub_limit_shed_total{limit=\"host_not_allowed\"}", |v| {
        v == 8.0
    })
    .await;

    // The names a local browser uses pass, their matching Origin too.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let headers = rebound(&host);
        for path in ["/api/v1/sessions/default", "/api/v1/sessions"] {
            let (status, body) = get_with(&hub, path, &headers).await;
            assert_eq!(status, 200, "{host}{path}: {body}");
        }
        let ws_headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        for path in ["/ws", "/dashboard/feed"] {
            let url = format!("ws://{}{path}", hub.addr);
            if let Err((status, body)) = WsClient::try_connect_with(&url, &ws_headers).await {
                panic!("{host}{path} refused: {status} {body}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_may_not_be_framed_and_run_only_their_own_scripts() {
    let hub = TestHub::start(&[]).await;
    for path in ["/ui", "/", "/dashboard"] {
        let r = reqwest::get(hub.http_url(path)).await.expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let csp = header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        // Scripts: only the hub's own modules (/assets/), no inline one.
        assert!(csp.contains("script-src 'self';"), "{path}: {csp:?}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp:?}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    }
}
