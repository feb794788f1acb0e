//! HTTP on the WebSocket port: /health, /ready, the web
//! client at `/`, the REST API (session summary, history, commands with
//! the same content as over WebSocket, 400s with {code, message}),
//! /api/v1/cluster, and /metrics (lints with promtool after traffic of
//! every kind).
//! Against an in-process hub.

use crate::support;

use serde_json::{Value, json};
use support::*;

/// POSTs `body` (raw) to the session's commands; status and JSON body.
async fn post_raw(
    hub: &TestHub,
    session: &str,
    body: &str,
    content_type: Option<&str>,
    client_id: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(hub.http_url(&format!("/api/v1/sessions/{session}/commands")))
        .body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(id) = client_id {
        req = req.header("x-client-id", id);
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {body}: not JSON ({e}): {status} {text}"));
    (status, v)
}

async fn post(hub: &TestHub, session: &str, body: Value, client_id: Option<&str>) -> (u16, Value) {
    post_raw(
        hub,
        session,
        &body.to_string(),
        Some("application/json"),
        client_id,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_web_client_and_cluster() {
    let hub = TestHub::start(&["--instance-id", "web-hub"]).await;
    let (status, body) = http_get(&hub, "/health").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(&hub, "/ready").await;
    assert_eq!((status, body.trim()), (200, "ready"));

    // GET / without an upgrade: the web client, which speaks the protocol.
    let r = reqwest::get(hub.http_url("/")).await.expect("GET /");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let page = r.text().await.expect("page");
    assert!(page.to_lowercase().contains("<html"), "not HTML");
    // The page's behaviour lives in a same-origin module (the CSP allows no
    // inline script); that module and the SDK it imports speak the protocol.
    assert!(
        page.contains(r#"src="/assets/web-page.js""#),
        "the page loads its script from /assets"
    );
    let (status, script) = http_get(&hub, "/assets/web-page.js").await;
    assert_eq!(status, 200);
    let (status, sdk) = http_get(&hub, "/assets/mcp-hub-client.js").await;
    assert_eq!(status, 200);
    let code = format!("{script}{sdk}");
    for needle in ["WebSocket", "register", "whatsapp_ai_command"] {
        assert!(code.contains(needle), "the web client mentions {needle}");
    }
    let (status, ui) = http_get(&hub, "/ui").await;
    assert_eq!(status, 200);
    assert_eq!(ui, page, "/ui serves the same page");
    // The same address upgrades to the hub's WebSocket (and /ws too).
    for url in [hub.ws_url(), format!("ws://{}/ws", hub.addr)] {
        let mut c = WsClient::connect(&url).await;
        assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    }
    let (status, _) = http_get(&hub, "/no/such/path").await;
    assert_eq!(status, 404);

    let (status, cluster) = http_get_json(&hub, "/api/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(cluster["mode"], "standalone");
    assert_eq!(cluster["instance"], "web-hub");
    let instances = cluster["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 1, "{cluster}");
    assert_eq!(instances[0]["instance"], "web-hub");
    assert_eq!(instances[0]["clients"], 0);
    assert!(instances[0]["started_at"].as_u64().is_some_and(|t| t > 0));
    assert!(instances[0]["last_heartbeat"].as_u64().is_some());
    let (_c1, _) = WsClient::register(&hub.ws_url(), "a", "one").await;
    let (_c2, _) = WsClient::register(&hub.ws_url(), "b", "two").await;
    let (_, cluster) = http_get_json(&hub, "/api/v1/cluster").await;
    assert_eq!(cluster["instances"][0]["clients"], 2, "{cluster}");
}

/// A hub with `watcher` ("Watcher") registered in session "rest".
async fn rest_session() -> (TestHub, WsClient) {
    let hub = TestHub::start(&["--instance-id", "rest-hub"]).await;
    let (ws, _) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type": "register", "session": "rest", "client_id": "watcher", "client_name": "Watcher"}),
    )
    .await;
    (hub, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_session_reads_its_contacts_with_no_clients_and_no_agent() {
    // (An untouched session reads 404:
    // reads_of_an_unknown_session_are_404_and_create_nothing_in_memory.)
    let hub = TestHub::start(&["--instance-id", "rest-hub"]).await;
    let (joined, _) = WsClient::register(&hub.ws_url(), "fresh", "visitor").await;
    joined.close().await;
    wait_connections(&hub, 0).await;
    let (status, s) = http_get_json(&hub, "/api/v1/sessions/fresh").await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&s),
        [
            "agent",
            "clients",
            "contacts",
            "last_contact",
            "session",
            "total_count"
        ]
    );
    assert_eq!(s["session"], "fresh");
    assert_eq!(names(&s["contacts"]), BUILTIN);
    assert_eq!(s["total_count"], 6);
    assert_eq!(s["clients"], json!([]));
    assert_eq!(s["last_contact"], Value::Null);
    assert_eq!(s["agent"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_command_gives_the_same_content_as_a_whatsapp_command() {
    let (hub, mut ws) = rest_session().await;
    let (status, via_rest) = post(
        &hub,
        "rest",
        json!({"command": {"action": "send", "contact": "john", "message": "same"}}),
        Some("crm-bot"),
    )
    .await;
    assert_eq!(status, 200);
    let ev = ws.recv().await;
    assert_eq!(
        without_volatile(&ev),
        json!({"type": "message_event", "direction": "outgoing", "contact": "John",
               "message": "same", "by": "crm-bot", "executed_by": "simulated"}),
        "the WebSocket client sees the REST send"
    );
    assert_eq!(ev["message_id"], via_rest["message_id"]);
    let via_ws = ws.request(send_cmd("john", "same")).await;
    assert_eq!(
        without_volatile(&via_rest),
        without_volatile(&via_ws["content"])
    );
    assert_eq!(keys(&via_rest), keys(&via_ws["content"]));
    ws.recv_type("message_event").await;
    for command in [
        json!({"action": "list_contacts"}),
        json!({"action": "get_history", "contact": "JOHN", "limit": 5}),
        json!({"action": "send", "contact": "zed", "message": "x"}),
        json!({"action": "get_history", "contact": "m"}),
    ] {
        let (status, via_rest) = post(&hub, "rest", json!({"command": command}), None).await;
        assert_eq!(status, 200, "{command}: {via_rest}");
        let via_ws = ws.request(ws_command(command.clone())).await;
        assert_eq!(via_rest, via_ws["content"], "{command}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_text_gives_the_same_content_as_a_whatsapp_ai_command() {
    let (hub, mut ws) = rest_session().await;
    let (status, via_rest) = post(&hub, "rest", json!({"text": "send jane hi"}), None).await;
    assert_eq!(status, 200);
    assert_eq!(via_rest["success"], true, "{via_rest}");
    assert_eq!(
        via_rest["interpretation"],
        json!({"action": "send", "contact": "Jane", "message": "hi"})
    );
    let ev = ws.recv_type("message_event").await;
    assert_eq!(
        (ev["contact"].as_str(), ev["by"].as_str()),
        (Some("Jane"), Some("rest"))
    );
    let via_ws = ws.request(ai_command("send jane hi")).await;
    assert_eq!(
        without_volatile(&via_rest),
        without_volatile(&via_ws["content"])
    );
    ws.recv_type("message_event").await;
    for text in [
        "show history with jane",
        "list contacts",
        "what now?",
        "tell nobody that x",
    ] {
        let (status, via_rest) = post(&hub, "rest", json!({"text": text}), None).await;
        assert_eq!(status, 200, "{text}: {via_rest}");
        let via_ws = ws.request(ai_command(text)).await;
        assert_eq!(via_rest, via_ws["content"], "{text}");
    }
    // A context is honoured, and what it sent moves the last contact.
    let (_, r) = post(
        &hub,
        "rest",
        json!({"text": "reply on my way", "context": {"last_contact": "Bob", "contact_list": ["Bob"]}}),
        None,
    )
    .await;
    assert_eq!(r["interpretation"]["contact"], "Bob", "{r}");
    assert_eq!(ws.recv_type("message_event").await["contact"], "Bob");
    let (_, s) = http_get_json(&hub, "/api/v1/sessions/rest").await;
    assert_eq!(s["last_contact"], "Bob", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_over_rest_is_validated_like_get_history() {
    let (hub, mut ws) = rest_session().await;
    let john = json!({"command": {"action": "send", "contact": "john", "message": "first"}});
    assert_eq!(post(&hub, "rest", john, Some("crm-bot")).await.0, 200);
    ws.request(send_cmd("john", "second")).await;
    assert_eq!(
        post(&hub, "rest", json!({"text": "send jane hi"}), None)
            .await
            .0,
        200
    );
    let (status, h) = http_get_json(&hub, "/api/v1/sessions/rest/history/jane?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(h["contact"], "Jane");
    assert_eq!(h["count"], 1);
    assert_eq!(h["messages"][0]["message"], "hi");
    let (_, h) = http_get_json(&hub, "/api/v1/sessions/rest/history/JOHN").await;
    assert_eq!(h["count"], 2, "{h}");
    assert_eq!(h["messages"][0]["by"], "crm-bot");
    assert_eq!(h["messages"][1]["by"], "watcher");
    let (status, h) = http_get_json(&hub, "/api/v1/sessions/rest/history/zed").await;
    assert_eq!(
        (status, h["code"].as_str()),
        (200, Some("contact_not_found"))
    );
    // Validated like get_history over WebSocket; errors are {code, message}.
    for query in ["limit=0", "limit=1000", "limit=-1", "limit=abc"] {
        let (status, e) =
            http_get_json(&hub, &format!("/api/v1/sessions/rest/history/jane?{query}")).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (400, Some("invalid_field")),
            "{query}: {e}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_summary_follows_its_clients_agent_and_contacts() {
    let (hub, ws) = rest_session().await;
    let mut members = [ws];
    let mut agent = join_agent(&hub.ws_url(), "rest", "phone", &mut members).await;
    let [mut ws] = members;
    let (status, s) = http_get_json(&hub, "/api/v1/sessions/rest").await;
    assert_eq!(status, 200);
    let clients: Vec<&str> = s["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    assert_eq!(clients, ["watcher", "phone"]);
    assert!(s["clients"][0]["connected_at"].as_u64().is_some(), "{s}");
    assert_eq!(
        without_volatile(&s["clients"][0]),
        json!({"client_id": "watcher", "client_name": "Watcher", "instance": "rest-hub", "capabilities": []})
    );
    assert_eq!(
        s["agent"],
        json!({"client_id": "phone", "instance": "rest-hub"})
    );
    let ack = agent
        .request(json!({"type": "contacts_update", "contacts": ["Bob", "Grandma"]}))
        .await;
    assert_eq!(ack["response_type"], "ack");
    let (_, s) = http_get_json(&hub, "/api/v1/sessions/rest").await;
    assert_eq!(names(&s["contacts"]), ["Bob", "Grandma"]);
    assert_eq!(s["total_count"], 2);
    agent.close().await;
    ws.recv_type("client_left").await;
    let (_, s) = http_get_json(&hub, "/api/v1/sessions/rest").await;
    assert_eq!(s["agent"], Value::Null);
    assert_eq!(s["clients"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_commands_go_through_the_agent_like_any_other() {
    let (hub, ws) = rest_session().await;
    let mut members = [ws];
    let mut agent = join_agent(&hub.ws_url(), "rest", "phone", &mut members).await;
    let [mut ws] = members;
    let rest_call = tokio::spawn({
        let url = hub.http_url("/api/v1/sessions/rest/commands");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({"command": {"action": "send", "contact": "bob", "message": "via agent"}}))
                .send()
                .await
                .expect("POST");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    });
    let exec = agent.recv_type("execute").await;
    assert_eq!(
        exec["command"],
        json!({"action": "send", "contact": "Bob", "message": "via agent"})
    );
    agent
        .send_json(
            json!({"type": "execute_result", "request_id": exec["request_id"],
                          "content": {"success": true, "message_id": "wamid.rest"}}),
        )
        .await;
    let (status, body) = rest_call.await.expect("join");
    assert_eq!(
        (status, body),
        (200, json!({"success": true, "message_id": "wamid.rest"}))
    );
    assert_eq!(
        ws.recv_type("message_event").await["message_id"],
        "wamid.rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rest_bodies_get_400_with_code_and_message_and_have_no_effect() {
    let (hub, mut ws) = rest_session().await;
    // Bad bodies: 400 with {code, message}; nothing happens.
    let long_session = "s".repeat(129);
    let bad: Vec<(String, String, Option<&str>, &str)> = vec![
        (
            "rest".into(),
            "{not json".into(),
            Some("application/json"),
            "invalid_json",
        ),
        (
            "rest".into(),
            r#"{"command":{"action":"send"}}"#.into(),
            None,
            "invalid_json",
        ),
        (
            "rest".into(),
            r#""send john hi""#.into(),
            Some("application/json"),
            "invalid_json",
        ),
        (
            "rest".into(),
            "{}".into(),
            Some("application/json"),
            "invalid_message",
        ),
        (
            "rest".into(),
            r#"{"command":{"action":"list_contacts"},"text":"list contacts"}"#.into(),
            Some("application/json"),
            "invalid_message",
        ),
        (
            "rest".into(),
            r#"{"command":{"action":"dance"}}"#.into(),
            Some("application/json"),
            "unknown_action",
        ),
        (
            "rest".into(),
            r#"{"command":{"action":"send","contact":"bob"}}"#.into(),
            Some("application/json"),
            "missing_field",
        ),
        (
            "rest".into(),
            r#"{"command":{}}"#.into(),
            Some("application/json"),
            "missing_field",
        ),
        (
            "rest".into(),
            r#"{"command":"send"}"#.into(),
            Some("application/json"),
            "invalid_field",
        ),
        (
            "rest".into(),
            r#"{"command":{"action":"get_history","contact":"bob","limit":1000}}"#.into(),
            Some("application/json"),
            "invalid_field",
        ),
        (
            "rest".into(),
            r#"{"command":{"action":"send","contact":"bob","message":""}}"#.into(),
            Some("application/json"),
            "invalid_field",
        ),
        (
            "rest".into(),
            r#"{"text":42}"#.into(),
            Some("application/json"),
            "invalid_json",
        ),
        (
            long_session,
            r#"{"text":"list contacts"}"#.into(),
            Some("application/json"),
            "invalid_field",
        ),
    ];
    for (session, body, ct, code) in bad {
        let (status, e) = post_raw(&hub, &session, &body, ct, None).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(keys(&e), ["code", "message"], "{body}: {e}");
        assert_eq!(e["code"], code, "{body}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, e) = http_get_json(&hub, &format!("/api/v1/sessions/{}", "s".repeat(129))).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("invalid_field")));
    assert_quiet(&mut ws, "rejected REST calls have no effect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_kind_of_traffic_and_pass_promtool() {
    let hub = TestHub::start(&["--instance-id", "metrics-hub", "--agent-timeout-ms", "2000"]).await;
    let url = hub.ws_url();
    // Before any traffic the exposition already lints, and every error
    // code's series exists at 0 (dashboards show 0, not "no data").
    let fresh = metrics_text(&hub).await;
    promtool_check(&fresh);
    for code in ["invalid_json", "agent_timeout", "internal_error"] {
        let series = format!("hub_errors_total{{code=\"{code}\"}}");
        assert_eq!(metric_value(&fresh, &series), Some(0.0), "{series}");
    }
    for reason in ["slow_consumer", "idle_timeout", "token_expired"] {
        let series = format!("hub_ws_connections_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&fresh, &series), Some(0.0), "{series}");
    }
    // So does every message type's, both ways (rate() and increase() work
    // from the first message).
    let received = [
        "register",
        "ping",
        "whatsapp_command",
        "whatsapp_ai_command",
        "ai_request",
        "broadcast",
        "execute_result",
        "contacts_update",
        "incoming_message",
        "invalid",
    ];
    for kind in received {
        let series = format!("hub_ws_messages_received_total{{type=\"{kind}\"}}");
        assert_eq!(metric_value(&fresh, &series), Some(0.0), "{series}");
    }
    let sent = [
        "registration_confirmed",
        "contact_list_broadcast",
        "client_joined",
        "client_left",
        "agent_changed",
        "message_event",
        "message_status",
        "broadcast",
        "response",
        "error",
        "pong",
        "execute",
    ];
    for kind in sent {
        let series = format!("hub_ws_messages_sent_total{{type=\"{kind}\"}}");
        assert_eq!(metric_value(&fresh, &series), Some(0.0), "{series}");
    }

    let (mut a, _) = WsClient::register(&url, "m", "a").await;
    let (mut agent, _) = register_agent(&url, "m", "phone").await;
    a.recv_type("agent_changed").await;
    // Every client message type.
    assert_eq!(a.request(json!({"type": "ping"})).await["type"], "pong");
    a.request(json!({"type": "broadcast", "payload": {"x": 1}}))
        .await;
    a.request(json!({"type": "ai_request", "prompt": "hi"}))
        .await;
    // whatsapp_command and whatsapp_ai_command through the agent:
    // execute / execute_result.
    for body in [send_cmd("john", "m1"), ai_command("tell jane that m2")] {
        let mut body = body;
        body["request_id"] = json!("via-agent");
        a.send_json(body).await;
        let exec = agent.recv_type("execute").await;
        agent
            .send_json(json!({"type": "execute_result", "request_id": exec["request_id"],
                              "content": {"success": true, "message_id": format!("wamid.{}", exec["request_id"])}}))
            .await;
        let r = a.recv_type("response").await;
        assert_eq!(r["content"]["success"], true, "{r}");
    }
    agent
        .request(json!({"type": "contacts_update", "contacts": ["John", "Jane"]}))
        .await;
    agent
        .request(json!({"type": "incoming_message", "contact": "John", "message": "yo"}))
        .await;
    // Errors of several kinds, invalid and binary frames.
    a.send_text("{bad").await;
    a.send_binary(vec![1, 2]).await;
    a.request(json!({"type": "teleport"})).await;
    a.request(ai_command("gibberish gibberish")).await;
    agent.close().await;
    a.recv_type("client_left").await;
    let r = a.request(send_cmd("john", "connector again")).await;
    assert_eq!(r["content"]["executed_by"], "simulated");
    a.request(history_cmd("john")).await;
    // REST traffic too.
    let (status, _) = post(&hub, "m", json!({"text": "list contacts"}), None).await;
    assert_eq!(status, 200);
    // A connection closed for size.
    let mut big = WsClient::connect(&url).await;
    big.send_text(&"x".repeat(70_000)).await;
    assert_eq!(big.expect_close().await, Some(1009));
    for reason in ["normal", "message_too_large"] {
        let series = format!("hub_ws_connections_closed_total{{reason=\"{reason}\"}}");
        wait_metric(&hub, &series, 1.0).await;
    }

    let (status, body) = {
        let r = reqwest::get(hub.http_url("/metrics"))
            .await
            .expect("metrics");
        let ct = r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(ct.starts_with("text/plain"), "{ct}");
        (r.status().as_u16(), r.text().await.expect("body"))
    };
    assert_eq!(status, 200);
    promtool_check(&body);
    for (series, at_least) in [
        ("hub_ws_messages_received_total{type=\"register\"}", 2.0),
        ("hub_ws_messages_received_total{type=\"ping\"}", 1.0),
        ("hub_ws_messages_received_total{type=\"broadcast\"}", 1.0),
        ("hub_ws_messages_received_total{type=\"ai_request\"}", 1.0),
        (
            "hub_ws_messages_received_total{type=\"whatsapp_command\"}",
            3.0,
        ),
        (
            "hub_ws_messages_received_total{type=\"whatsapp_ai_command\"}",
            2.0,
        ),
        (
            "hub_ws_messages_received_total{type=\"execute_result\"}",
            2.0,
        ),
        (
            "hub_ws_messages_received_total{type=\"contacts_update\"}",
            1.0,
        ),
        (
            "hub_ws_messages_received_total{type=\"incoming_message\"}",
            1.0,
        ),
        ("hub_ws_messages_received_total{type=\"invalid\"}", 2.0),
        (
            "hub_ws_messages_sent_total{type=\"registration_confirmed\"}",
            2.0,
        ),
        (
            "hub_ws_messages_sent_total{type=\"contact_list_broadcast\"}",
            3.0,
        ),
        ("hub_ws_messages_sent_total{type=\"message_event\"}", 4.0),
        ("hub_ws_messages_sent_total{type=\"client_joined\"}", 1.0),
        ("hub_ws_messages_sent_total{type=\"client_left\"}", 1.0),
        ("hub_ws_messages_sent_total{type=\"agent_changed\"}", 2.0),
        ("hub_ws_messages_sent_total{type=\"broadcast\"}", 1.0),
        ("hub_ws_messages_sent_total{type=\"execute\"}", 2.0),
        ("hub_ws_messages_sent_total{type=\"response\"}", 6.0),
        ("hub_ws_messages_sent_total{type=\"pong\"}", 1.0),
        ("hub_ws_messages_sent_total{type=\"error\"}", 3.0),
        ("hub_errors_total{code=\"invalid_json\"}", 1.0),
        ("hub_errors_total{code=\"binary_not_supported\"}", 1.0),
        ("hub_errors_total{code=\"unknown_type\"}", 1.0),
        ("hub_agent_calls_total{outcome=\"ok\"}", 2.0),
        ("hub_ws_connections_opened_total", 3.0),
        ("hub_ws_connections_closed_total{reason=\"normal\"}", 1.0),
        (
            "hub_ws_connections_closed_total{reason=\"message_too_large\"}",
            1.0,
        ),
        ("hub_ws_connections", 1.0),
        ("hub_broadcast_latency_seconds_count", 1.0),
        ("hub_slow_consumer_disconnects_total", 0.0),
        ("hub_store_up", 1.0),
        (
            "hub_build_info{instance=\"metrics-hub\",version=\"0.1.0\"}",
            1.0,
        ),
        ("process_resident_memory_bytes", 1.0),
    ] {
        let v = metric_value(&body, series);
        assert!(v >= Some(at_least), "{series} = {v:?}\n{body}");
    }
    assert_eq!(
        metric_value(&body, "hub_ws_connections"),
        Some(1.0),
        "only `a` is left"
    );
}

// ------------------------------------------------- issue 10: REST limits

/// GETs of an unknown session: 404, and the session still does not exist.
async fn unknown_session_reads_are_404(hub: &TestHub) {
    for path in [
        "/api/v1/sessions/ghost",
        "/api/v1/sessions/ghost/history/john",
        "/api/v1/sessions/ghost/history/john?limit=5",
        "/api/v1/sessions/ghost",
    ] {
        let (status, e) = http_get_json(hub, path).await;
        assert_eq!(status, 404, "{path}: {e}");
        assert_eq!(keys(&e), ["code", "message"], "{e}");
        assert_eq!(e["code"], "session_not_found", "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_an_unknown_session_are_404_and_create_nothing_in_memory() {
    let hub = TestHub::start(&[]).await;
    unknown_session_reads_are_404(&hub).await;
    // A read by POST creates nothing either, and neither does a write
    // (SESSION_CREATION=register): registering does.
    for command in [
        json!({"action": "list_contacts"}),
        json!({"action": "send", "contact": "john", "message": "hi"}),
    ] {
        let (status, r) = post(&hub, "ghost", json!({"command": command}), None).await;
        assert_eq!(status, 404, "{r}");
        assert_eq!(r["code"], "session_not_found", "{r}");
    }
    assert_eq!(http_get_json(&hub, "/api/v1/sessions/ghost").await.0, 404);
    let (_ws, _) = WsClient::register(&hub.ws_url(), "ghost", "c").await;
    assert_eq!(http_get_json(&hub, "/api/v1/sessions/ghost").await.0, 200);
}

/// SESSION_CREATION=any_write: a REST write creates its session (with
/// the connector's contacts, as a registration would); a read still not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_write_lets_a_rest_command_create_its_session() {
    let hub = TestHub::start(&["--session-creation", "any_write"]).await;
    let (status, r) = post(
        &hub,
        "fresh",
        json!({"command": {"action": "list_contacts"}}),
        None,
    )
    .await;
    assert_eq!(
        (status, &r["code"]),
        (404, &json!("session_not_found")),
        "{r}"
    );
    let (status, r) = post(
        &hub,
        "fresh",
        json!({"command": {"action": "send", "contact": "john", "message": "hi"}}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["success"], true, "{r}");
    let (status, summary) = http_get_json(&hub, "/api/v1/sessions/fresh").await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["last_contact"], "John", "{summary}");
    assert!(
        summary["total_count"].as_u64().unwrap() > 0,
        "seeded: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_an_unknown_session_are_404_and_write_no_redis_key() {
    let redis = RedisServer::start();
    let url = redis.url();
    let hub = TestHub::start(&["--redis-url", &url, "--redis-key-prefix", "rest404"]).await;
    unknown_session_reads_are_404(&hub).await;
    assert_eq!(
        redis.cmd(&["--raw", "KEYS", "rest404:{s:*"]),
        "",
        "a read wrote session keys"
    );
    // Joining creates the session (and its keys).
    let (_ws, _) = WsClient::register(&hub.ws_url(), "ghost", "c").await;
    assert_eq!(http_get_json(&hub, "/api/v1/sessions/ghost").await.0, 200);
    assert!(
        redis
            .cmd(&["--raw", "KEYS", "rest404:{s:ghost}:*"])
            .contains("rest404:{s:ghost}:contacts")
    );
}

/// A list_contacts command padded with spaces to exactly `len` bytes.
fn padded_command(len: usize) -> String {
    let body = json!({"command": {"action": "list_contacts"}}).to_string();
    format!("{body}{}", " ".repeat(len - body.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_bodies_over_64_kib_get_413() {
    let hub = TestHub::start(&[]).await;
    let (_ws, _) = WsClient::register(&hub.ws_url(), "big", "w").await;
    let at = padded_command(64 * 1024);
    let (status, r) = post_raw(&hub, "big", &at, Some("application/json"), None).await;
    assert_eq!(status, 200, "exactly 64 KiB passes: {r}");
    let over = padded_command(64 * 1024 + 1);
    let (status, e) = post_raw(&hub, "big", &over, Some("application/json"), None).await;
    assert_eq!(status, 413, "{e}");
    assert_eq!(keys(&e), ["code", "message"], "{e}");
    assert_eq!(e["code"], "payload_too_large");

    // The limit is a setting.
    let small = TestHub::start(&["--max-rest-body-bytes", "1024"]).await;
    let (_ws, _) = WsClient::register(&small.ws_url(), "big", "w").await;
    let (status, _) = post_raw(
        &small,
        "big",
        &padded_command(1024),
        Some("application/json"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, e) = post_raw(
        &small,
        "big",
        &padded_command(1025),
        Some("application/json"),
        None,
    )
    .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_are_rate_limited_per_caller() {
    // A burst of 3 and (practically) no refill during the test.
    let hub = TestHub::start(&["--rate-limit-per-sec", "0.01", "--rate-limit-burst", "3"]).await;
    let (_ws, _) = WsClient::register(&hub.ws_url(), "rl", "w").await;
    let call_from = |from: &'static str, id: Option<&'static str>| {
        let url = hub.http_url("/api/v1/sessions/rl");
        async move {
            let client = reqwest::Client::builder()
                .local_address(from.parse::<std::net::IpAddr>().ok())
                .build()
                .expect("client");
            let mut req = client.get(url);
            if let Some(id) = id {
                req = req.header("x-client-id", id);
            }
            let r = req.send().await.expect("GET");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("JSON"))
        }
    };
    let call = |id| call_from("127.0.0.1", id);
    for n in 0..3 {
        assert_eq!(call(Some("crm")).await.0, 200, "call {n} within the burst");
    }
    let (status, e) = call(Some("crm")).await;
    assert_eq!(status, 429, "{e}");
    assert_eq!(keys(&e), ["code", "message"], "{e}");
    assert_eq!(e["code"], "rate_limited");
    // Without auth a caller is its address: another X-Client-Id from it
    // shares the bucket, another address has its own.
    assert_eq!(call(Some("billing")).await.0, 429);
    assert_eq!(call(None).await.0, 429);
    for _ in 0..3 {
        assert_eq!(call_from("127.0.0.2", Some("billing")).await.0, 200);
    }
    assert_eq!(call_from("127.0.0.2", None).await.0, 429);
    // Health, readiness and metrics are never limited.
    for _ in 0..5 {
        assert_eq!(hub.get("/health").await.0, 200);
    }
}
