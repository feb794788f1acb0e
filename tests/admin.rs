//! The admin API and the monitoring feed (issue 13, docs/admin.md): the
//! OpenAPI document (validated by Python's `openapi-spec-validator`, and
//! checked against every route the sources register), paged sessions,
//! session details, disconnecting a client (close 4002), instances, the
//! test broadcast, the feed and its session watch, and that none of it
//! reaches anyone but an admin.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use mcp_hub::auth::{Role, mint};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-admin-tests";

fn token(sub: &str, sessions: &[&str], role: Role) -> String {
    let sessions: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
    mint(SECRET, sub, &sessions, role, Duration::from_secs(600)).expect("mint")
}

fn feed_url(hub: &TestHub) -> String {
    format!("ws://{}/dashboard/feed", hub.addr)
}

/// Every `.rs` file under `src/`, comments dropped.
/// Unit-test modules (`tests.rs`, `*_tests.rs`): their fakes (a hub for
/// the terminal's tests, say) serve no route of the hub.
fn is_unit_test(path: &std::path::Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s == "tests" || s.ends_with("_tests"))
}

fn sources() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("src dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") && !is_unit_test(&path) {
                let text = std::fs::read_to_string(&path).expect("source");
                let code: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                out.push((path.display().to_string(), code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_path("src"), &mut out);
    out
}

/// The OpenAPI document is valid OpenAPI 3.1 for an independent validator
/// and describes exactly the REST routes the hub serves.
///
/// How "served but undocumented" is caught: REST routes are registered
/// with `utoipa_axum`'s `routes!`, which takes the path and method from
/// the handler's `#[utoipa::path]`, so serving and documenting are one
/// line. This test then scans `src/` for axum's other ways to add a route
/// (`.route(`, `.route_service(`, `.nest(`, `.nest_service(`): each must
/// name a string literal listed in `NON_REST_ROUTES` (with its reason), so
/// a route added any other way fails here until it is documented or listed.
/// And every `#[utoipa::path]` in the sources must be in the served
/// document, so an annotated handler that is not registered fails too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_covers_every_route() {
    let hub = TestHub::start(&[]).await;
    let (status, doc) = http_call(&hub, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    let dir = TempDir::new();
    let file = dir.write("openapi.json", &doc.to_string());
    let out = std::process::Command::new("python3")
        .arg("-m")
        .arg("openapi_spec_validator")
        .arg(&file)
        .output()
        .expect("python3 runs (scripts/test installs openapi-spec-validator)");
    assert_succeeded(&out, "openapi-spec-validator refused the document");

    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let registration = regex::Regex::new(r"\.(route|route_service|nest|nest_service)\(\s*([^,)]*)")
        .expect("regex");
    let annotation =
        regex::Regex::new(r#"#\[utoipa::path\(\s*\w+\s*,\s*path\s*=\s*"([^"]+)""#).expect("regex");
    let mut annotated = BTreeSet::new();
    let mut plain = Vec::new();
    for (file, code) in sources() {
        for c in registration.captures_iter(&code) {
            let arg = c[2].trim().to_string();
            let literal = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"'));
            match literal {
                Some(path) => plain.push((file.clone(), path.to_string())),
                None => panic!("{file}: a route registered with a non-literal path `{arg}`"),
            }
        }
        for c in annotation.captures_iter(&code) {
            annotated.insert(c[1].to_string());
        }
    }
    assert!(
        !plain.is_empty() && !annotated.is_empty(),
        "the scan found nothing"
    );
    for (file, path) in &plain {
        assert!(
            mcp_hub::server::openapi::NON_REST_ROUTES.contains(&path.as_str()),
            "{file}: `{path}` is served with a plain axum route: register it with \
             utoipa_axum's routes! and a #[utoipa::path], or list it (with why) in NON_REST_ROUTES"
        );
        assert!(!documented.contains(path), "`{path}` is both REST and not");
    }
    assert_eq!(
        annotated, documented,
        "every #[utoipa::path] handler is served and documented, and only those"
    );
    // The admin API and the existing endpoints alike.
    for path in [
        "/api/v1/sessions",
        "/api/v1/sessions/{session}/clients/{client_id}",
        "/api/v1/instances",
        "/api/v1/cluster",
        "/api/v1/sessions/{session}/commands",
        "/webhooks/whatsapp",
        "/metrics",
    ] {
        assert!(
            documented.contains(path),
            "{path} missing from the document"
        );
    }
    assert!(doc["paths"]["/api/v1/sessions/{session}/clients/{client_id}"]["delete"].is_object());
}

/// Sessions page by name; a session's detail lists its clients with their
/// instance, capabilities and `connected_at`; instances report version and
/// readiness; an admin broadcast reaches the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_sessions_read_details_and_instances_and_broadcast() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let (_a, _) = WsClient::register(&url, "alpha", "a1").await;
    let (mut b1, _) = WsClient::register_with(
        &url,
        json!({"type": "register", "session": "beta", "client_id": "b1",
               "client_name": "Bee", "capabilities": ["whatsapp"]}),
    )
    .await;
    let (_b2, _) = WsClient::register(&url, "beta", "b2").await;
    let (_g, _) = WsClient::register(&url, "gamma", "g1").await;

    let (status, first) =
        http_call(&hub, Method::GET, "/api/v1/sessions?limit=2", None, None).await;
    assert_eq!(status, 200, "{first}");
    let names = |page: &Value| -> Vec<String> {
        page["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["session"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&first), ["alpha", "beta"]);
    let beta = &first["sessions"][1];
    assert_eq!(beta["clients"], 2, "{beta}");
    assert_eq!(beta["agent"]["client_id"], "b1", "{beta}");
    assert!(beta["last_activity"].as_u64().is_some(), "{beta}");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = http_call(
        &hub,
        Method::GET,
        &format!("/api/v1/sessions?limit=2&cursor={cursor}"),
        None,
        None,
    )
    .await;
    assert_eq!(names(&second), ["gamma"]);
    assert!(second["next_cursor"].is_null());
    let (status, bad) = http_call(&hub, Method::GET, "/api/v1/sessions?limit=0", None, None).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_field")));

    let (status, detail) = http_call(&hub, Method::GET, "/api/v1/sessions/beta", None, None).await;
    assert_eq!(status, 200, "{detail}");
    let bee = detail["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["client_id"] == "b1")
        .expect("b1 listed")
        .clone();
    assert_eq!(bee["client_name"], "Bee");
    assert_eq!(bee["instance"], hub.instance_id.as_str());
    assert_eq!(bee["capabilities"], json!(["whatsapp"]));
    assert!(bee["connected_at"].as_u64().is_some(), "{bee}");
    assert_eq!(detail["agent"]["client_id"], "b1");
    assert!(
        detail["total_count"].as_u64().is_some_and(|n| n > 0),
        "{detail}"
    );

    let (status, instances) = http_call(&hub, Method::GET, "/api/v1/instances", None, None).await;
    assert_eq!(status, 200, "{instances}");
    let me = &instances["instances"][0];
    assert_eq!(me["instance"], hub.instance_id.as_str());
    assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(me["ready"], true);
    assert_eq!(me["clients"], 4);
    assert!(me["uptime_ms"].as_u64().is_some(), "{me}");

    let (status, sent) = http_call(
        &hub,
        Method::POST,
        "/api/v1/sessions/beta/broadcast",
        None,
        Some(json!({"payload": {"text": "test from the dashboard"}})),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let got = b1.recv_type("broadcast").await;
    assert_eq!(got["from"], "admin");
    assert_eq!(got["payload"]["text"], "test from the dashboard");
    let (status, _) = http_call(
        &hub,
        Method::POST,
        "/api/v1/sessions/nowhere/broadcast",
        None,
        Some(json!({"payload": 1})),
    )
    .await;
    assert_eq!(status, 404, "a broadcast creates no session");
}

/// DELETE closes the client's connection with 4002; the others see
/// `client_left`; a client that is not there is 404 `client_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_disconnects_a_client_with_close_4002() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let (mut gone, _) = WsClient::register(&url, "s", "gone").await;
    let (mut stays, _) = WsClient::register(&url, "s", "stays").await;
    let (status, body) = http_call(
        &hub,
        Method::DELETE,
        "/api/v1/sessions/s/clients/gone",
        None,
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["close_code"], 4002);
    assert_eq!(body["client"]["client_id"], "gone");
    assert_eq!(gone.expect_close().await, Some(4002));
    let left = stays.recv_type("client_left").await;
    assert_eq!(left["client_id"], "gone", "{left}");
    let (status, body) = http_call(
        &hub,
        Method::DELETE,
        "/api/v1/sessions/s/clients/gone",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("client_not_found"))
    );
}

/// With auth on: no token is 401, a client token 403 on every admin
/// endpoint and on the feed; an admin token gets in. A session client
/// never receives a monitor event, even while the feed is busy with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_data_reaches_admins_only() {
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let client = token("alice", &["s"], Role::Client);
    let admin = token("root", &[], Role::Admin);
    let calls = [
        (Method::GET, "/api/v1/sessions"),
        (Method::GET, "/api/v1/instances"),
        (Method::DELETE, "/api/v1/sessions/s/clients/x"),
        (Method::POST, "/api/v1/sessions/s/broadcast"),
    ];
    for (method, path) in &calls {
        let body = Some(json!({"payload": 1}));
        let (status, _) = http_call(&hub, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, e) = http_call(&hub, method.clone(), path, Some(&client), body).await;
        assert_eq!(status, 403, "{method} {path} with a client token: {e}");
        assert_eq!(e["code"], "forbidden");
    }
    let (status, _) = http_call(&hub, Method::GET, "/api/v1/sessions", Some(&admin), None).await;
    assert_eq!(status, 200);
    let refused = WsClient::try_connect(&feed_url(&hub), Some(&client)).await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(403));
    let refused = WsClient::try_connect(&feed_url(&hub), None).await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(401));

    let mut feed = WsClient::connect_with_token(&feed_url(&hub), &admin).await;
    assert_eq!(
        feed.recv_type("hello").await["instance"],
        hub.instance_id.as_str()
    );
    let (mut alice, _) = WsClient::register_with_token(
        &hub.ws_url(),
        &client,
        json!({"type": "register", "session": "s", "client_id": "alice-1"}),
    )
    .await;
    let presence = feed.recv_type("presence").await;
    assert_eq!(presence["client"]["client_id"], "alice-1", "{presence}");
    assert_eq!(presence["joined"], true);
    // A stats tick after alice joined: she was connected while it went out.
    let stats = feed.recv_type("instance_stats").await;
    assert_eq!(stats["instance"], hub.instance_id.as_str(), "{stats}");
    assert!(stats["ai"]["breaker"].is_string(), "{stats}");
    let seen = alice.flush().await;
    for frame in &seen {
        assert!(
            !matches!(
                frame["type"].as_str(),
                Some("instance_stats" | "presence" | "agent" | "hello" | "watching")
            ),
            "a session client got a monitor event: {frame}"
        );
    }
}

/// A feed that watches a session gets its events as they happen, without
/// joining it: the session's clients see no one arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_watches_a_session_without_joining_it() {
    let hub = TestHub::start(&[]).await;
    let (mut c1, _) = WsClient::register(&hub.ws_url(), "s", "c1").await;
    // c1's own `client_joined` is published just after its confirmation:
    // logged before the watch starts, so the feed's first one is c2's.
    wait_until_async("c1's join logged", Duration::from_secs(10), || async {
        let (_, v) = http_get_json(&hub, "/api/v1/sessions/s/events").await;
        v["offset"] == 1
    })
    .await;
    let mut feed = WsClient::connect(&feed_url(&hub)).await;
    feed.recv_type("hello").await;
    feed.send_json(json!({"type": "watch", "session": "s"}))
        .await;
    assert_eq!(feed.recv_type("watching").await["session"], "s");
    let (_c2, _) = WsClient::register(&hub.ws_url(), "s", "c2").await;
    // The session's own event, exactly as its clients get it.
    let joined = feed.recv_type("client_joined").await;
    assert_eq!(joined["client_id"], "c2");
    assert!(joined["offset"].as_u64().is_some(), "{joined}");
    c1.request(json!({"type": "broadcast", "payload": {"n": 1}}))
        .await;
    assert_eq!(feed.recv_type("broadcast").await["payload"]["n"], 1);
    // Not a member: presence is c1 and c2 only, and c1 heard of c2 only.
    let (_, detail) = http_call(&hub, Method::GET, "/api/v1/sessions/s", None, None).await;
    assert_eq!(sorted_ids(&detail["clients"]), ["c1", "c2"]);
    let joins: Vec<Value> = c1
        .flush()
        .await
        .into_iter()
        .filter(|f| f["type"] == "client_joined")
        .collect();
    assert_eq!(joins.len(), 1, "{joins:?}");
    feed.send_json(json!({"type": "unwatch"})).await;
    assert!(feed.recv_type("watching").await["session"].is_null());
}

/// A feed that does not read is closed like any slow consumer (1008) once
/// its bounded queue is full; the session goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_does_not_keep_up_is_dropped_as_a_slow_consumer() {
    drop_a_slow_feed(&["--outbound-queue-len", "8"]).await;
}

/// The same by the byte bound alone (`OUTBOUND_QUEUE_BYTES`, two frames
/// of 60 kB), the frame cap left at its default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_over_its_byte_bound_is_dropped_as_a_slow_consumer() {
    drop_a_slow_feed(&["--outbound-queue-bytes", "131072"]).await;
}

async fn drop_a_slow_feed(bound: &[&str]) {
    let mut args = vec![
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
    ];
    args.extend_from_slice(bound);
    let hub = TestHub::start(&args).await;
    let url = hub.ws_url();
    let (mut fast, _) = WsClient::register(&url, "flood", "fast").await;
    let (mut producer, _) = WsClient::register(&url, "flood", "producer").await;
    fast.recv_type("client_joined").await;
    let mut feed = WsClient::connect(&feed_url(&hub)).await;
    feed.send_json(json!({"type": "watch", "session": "flood"}))
        .await;
    feed.recv_type("watching").await;

    // From here on the feed is not read until the hub has given up on it.
    let fill = "z".repeat(60_000);
    let mut rounds = 0;
    let mut cut_off = false;
    while rounds < 3000 && !cut_off {
        producer
            .send_json(json!({"type": "broadcast", "payload": {"round": rounds, "fill": fill}}))
            .await;
        let b = fast.recv_type("broadcast").await;
        assert_eq!(b["payload"]["round"], rounds);
        rounds += 1;
        if rounds % 10 == 0 {
            let body = metrics_text(&hub).await;
            cut_off = metric_value(&body, "hub_slow_consumer_disconnects_total") >= Some(1.0);
        }
    }
    assert!(
        cut_off,
        "the feed was never dropped after {rounds} rounds of 60 kB ({bound:?})"
    );
    let code = feed.expect_close().await;
    assert!(matches!(code, Some(1008) | None), "close code {code:?}");
    wait_metric(
        &hub,
        "hub_ws_connections_closed_total{reason=\"slow_consumer\"}",
        1.0,
    )
    .await;
    // The session's clients are unaffected.
    producer
        .send_json(json!({"type": "broadcast", "payload": {"round": "after"}}))
        .await;
    assert_eq!(
        fast.recv_type("broadcast").await["payload"]["round"],
        "after"
    );
}

/// A feed holds one of the `MAX_CONNECTIONS` slots like any WebSocket:
/// with every slot taken, one more feed or client gets 503
/// `too_many_connections` before the upgrade, and the feed's slot frees
/// when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_holds_a_connection_slot() {
    let hub = TestHub::start(&["--max-connections", "2"]).await;
    let mut feed = WsClient::connect(&feed_url(&hub)).await;
    feed.recv_type("hello").await;
    let (mut client, _) = WsClient::register(&hub.ws_url(), "s", "c1").await;
    wait_connections(&hub, 2).await;
    for url in [feed_url(&hub), hub.ws_url()] {
        match WsClient::try_connect_with(&url, &[]).await {
            Ok(_) => panic!("{url} was accepted with MAX_CONNECTIONS=2 and 2 open"),
            Err((status, body)) => {
                assert_eq!(status, 503, "{url}: {body}");
                assert_eq!(body["code"], "too_many_connections", "{url}: {body}");
            }
        }
    }
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );

    feed.close().await;
    // The slot is given back just after the feed's task ends.
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    let mut again = loop {
        match WsClient::try_connect_with(&feed_url(&hub), &[]).await {
            Ok(ws) => break ws,
            Err((503, _)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((status, body)) => panic!("no slot freed: {status} {body}"),
        }
    };
    again.recv_type("hello").await;
    wait_metric(&hub, "hub_errors_total{code=\"too_many_connections\"}", 2.0).await;
}

/// A feed is pinged like a client: one that answers (it reads, so its
/// WebSocket library answers the pings) outlives the idle timeout many
/// times over; one that reads nothing is closed (1001) once the idle
/// timeout passes without a pong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_feed_is_closed_after_the_idle_timeout() {
    let hub = TestHub::start(&["--ping-interval-ms", "100", "--idle-timeout-ms", "500"]).await;
    let mut live = WsClient::connect(&feed_url(&hub)).await;
    let mut silent = WsClient::connect(&feed_url(&hub)).await;
    live.recv_type("hello").await;

    // `silent` reads nothing from here on; `live` keeps reading (and so
    // answering pings) until the hub has given up on `silent`.
    let series = "hub_ws_connections_closed_total{reason=\"idle_timeout\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let _ = live.try_recv(Duration::from_millis(100)).await;
        assert_eq!(live.closed(), None, "the feed answering pings was closed");
        if metric_value(&metrics_text(&hub).await, series) == Some(1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the silent feed was never closed for idleness"
        );
    }
    let code = silent.expect_close().await;
    assert!(matches!(code, Some(1001) | None), "closed with {code:?}");
    // The live feed, silent itself but answering pings, still works.
    live.send_json(json!({"type": "watch", "session": "s"}))
        .await;
    assert_eq!(live.recv_type("watching").await["session"], "s");
    let metrics = metrics_text(&hub).await;
    assert_eq!(
        metric_value(&metrics, series),
        Some(1.0),
        "only the silent one"
    );
}

/// A feed opened with an admin token is closed with 4401 when the token
/// expires, like a client connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_is_closed_with_4401_when_its_token_expires() {
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let short = mint(SECRET, "root", &[], Role::Admin, Duration::from_secs(2)).expect("mint");
    let mut feed = WsClient::connect_with_token(&feed_url(&hub), &short).await;
    assert_eq!(feed.recv_type("hello").await["type"], "hello");
    // Bounded by expect_close's RECV_TIMEOUT (10 s).
    assert_eq!(feed.expect_close().await, Some(4401));
    wait_metric(
        &hub,
        "hub_ws_connections_closed_total{reason=\"token_expired\"}",
        1.0,
    )
    .await;
}
