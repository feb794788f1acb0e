//! Edge cases of the documented rules (docs/protocol.md), against the real
//! hub binary: limits at their boundaries, reconnect replacement, the agent
//! role changing hands, and bad input that tests/standalone.rs does not
//! send. "Nothing else arrived" is proven with [`WsClient::flush`] (a ping
//! round trip) after the hub has provably finished the work, never with a
//! timer.

mod common;

use common::{HubProcess, WsClient};
use serde_json::{Value, json};

fn types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn register_agent(url: &str, session: &str, id: &str) -> (WsClient, Value) {
    WsClient::register_with(
        url,
        json!({"type":"register","session":session,"client_id":id,"capabilities":["whatsapp"]}),
    )
    .await
}

/// Waits until the hub has finished with every connection but `open` ones
/// (a closed connection's cleanup, and the events it publishes, are done
/// before the gauge drops).
async fn wait_connections(hub: &HubProcess, open: usize) {
    hub.wait_metric("hub_ws_connections", |v| v == open as f64)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_echoes_request_ids_and_spares_binary_frames() {
    // 2 tokens, refilled at one per 100 s: the test never sees a refill.
    let hub = HubProcess::start(
        &["--rate-limit-per-sec", "0.01", "--rate-limit-burst", "2"],
        &[],
    )
    .await;
    let mut c = WsClient::connect(&hub.ws_url()).await;
    for rid in ["u1", "u2"] {
        c.send_json(json!({"type":"teleport","request_id":rid}))
            .await;
        let err = c.recv().await;
        assert_eq!(
            (err["code"].as_str(), err["request_id"].as_str()),
            (Some("unknown_type"), Some(rid))
        );
    }
    // Over the limit: still answered, and the request_id still echoed,
    // whether or not the message itself was valid.
    c.send_json(json!({"type":"teleport","request_id":"u3"}))
        .await;
    let err = c.recv().await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert_eq!(
        err["request_id"], "u3",
        "rate_limited must echo the request_id: {err}"
    );
    c.send_json(json!({"type":"ping","request_id":"u4"})).await;
    let err = c.recv().await;
    assert_eq!(
        (err["code"].as_str(), err["request_id"].as_str()),
        (Some("rate_limited"), Some("u4"))
    );
    // Binary frames are not counted (and are answered as such).
    for _ in 0..3 {
        c.send_binary(vec![1, 2, 3]).await;
        assert_eq!(c.recv().await["code"], "binary_not_supported");
    }
    assert!(c.closed().is_none(), "the connection stays open");
    assert!(
        hub.metric("hub_errors_total{code=\"rate_limited\"}")
            .await
            .is_some_and(|v| v >= 2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limit_is_inclusive() {
    let hub = HubProcess::start(&["--max-message-bytes", "1024"], &[]).await;
    let frame_of = |len: usize| {
        let head = r#"{"type":"ping","request_id":"big","pad":""#;
        let tail = r#""}"#;
        let s = format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()));
        assert_eq!(s.len(), len);
        s
    };
    let mut c = WsClient::connect(&hub.ws_url()).await;
    c.send_text(&frame_of(1024)).await;
    let pong = c.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["request_id"].as_str()),
        (Some("pong"), Some("big"))
    );
    c.send_text(&frame_of(1025)).await;
    assert_eq!(c.expect_close().await, Some(1009));
    hub.wait_metric(
        "hub_ws_connections_closed_total{reason=\"message_too_large\"}",
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_bad_input_keeps_the_connection_usable() {
    let hub = HubProcess::start(&[], &[]).await;
    let mut c = WsClient::connect(&hub.ws_url()).await;

    // (frame, code, echoed request_id)
    let before_register: [(&str, &str, Option<&str>); 9] = [
        (
            r#"{"type":"ping","request_id":{"a":1}}"#,
            "invalid_field",
            None,
        ),
        (r#"{"type":"ping","request_id":[1]}"#, "invalid_field", None),
        (r#"{"request_id":"x1"}"#, "missing_field", Some("x1")),
        (
            r#"{"type":5,"request_id":"x2"}"#,
            "invalid_field",
            Some("x2"),
        ),
        (
            r#"{"type":"broadcast","payload":1,"request_id":"x3"}"#,
            "not_registered",
            Some("x3"),
        ),
        (
            r#"{"type":"execute_result","content":{},"request_id":"x4"}"#,
            "not_registered",
            Some("x4"),
        ),
        (r#""just a string""#, "invalid_message", None),
        (
            r#"{"type":"register","client_id":42,"request_id":"x5"}"#,
            "invalid_field",
            Some("x5"),
        ),
        (
            r#"{"type":"register","capabilities":"whatsapp","request_id":"x6"}"#,
            "invalid_field",
            Some("x6"),
        ),
    ];
    for (frame, code, rid) in before_register {
        c.send_text(frame).await;
        let err = c.recv().await;
        assert_eq!(err["type"], "error", "{frame} → {err}");
        assert_eq!(err["code"], code, "{frame} → {err}");
        assert_eq!(err["request_id"].as_str(), rid, "{frame} → {err}");
        assert!(c.flush().await.is_empty(), "after {frame}");
    }
    // Ids: blank, control characters, too long.
    let long = "x".repeat(129);
    for body in [
        json!({"type":"register","client_id":"   "}),
        json!({"type":"register","client_id":"a\u{7}b"}),
        json!({"type":"register","session":""}),
        json!({"type":"register","session":long}),
        json!({"type":"register","client_id":long}),
    ] {
        let err = c.request(body.clone()).await;
        assert_eq!(err["code"], "invalid_field", "{body} → {err}");
    }
    // A failed register leaves the connection unregistered, free to retry.
    let conf = c
        .request(json!({"type":"register","client_id":"ok","session":"bad2"}))
        .await;
    assert_eq!(conf["type"], "registration_confirmed");
    assert_eq!(c.recv().await["type"], "contact_list_broadcast");

    let after_register: [(Value, &str); 12] = [
        (json!({"type":"whatsapp_command"}), "missing_field"),
        (
            json!({"type":"whatsapp_command","command":"send"}),
            "invalid_field",
        ),
        (
            json!({"type":"whatsapp_command","command":{}}),
            "missing_field",
        ),
        (
            json!({"type":"whatsapp_command","command":{"action":7}}),
            "invalid_field",
        ),
        (
            json!({"type":"whatsapp_command","command":{"action":"send","contact":"  ","message":"x"}}),
            "invalid_field",
        ),
        (
            json!({"type":"whatsapp_command","command":{"action":"send","contact":"bob","message":""}}),
            "invalid_field",
        ),
        (
            json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"bob","limit":501}}),
            "invalid_field",
        ),
        (
            json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"bob","limit":-1}}),
            "invalid_field",
        ),
        (
            json!({"type":"whatsapp_ai_command","command":["send"]}),
            "invalid_field",
        ),
        (json!({"type":"broadcast"}), "missing_field"),
        (
            json!({"type":"execute_result","content":{"success":true}}),
            "unknown_request",
        ),
        (
            json!({"type":"incoming_message","contact":"Bob","message":"hi"}),
            "not_agent",
        ),
    ];
    for (body, code) in after_register {
        let err = c.request(body.clone()).await;
        assert_eq!(err["type"], "error", "{body} → {err}");
        assert_eq!(err["code"], code, "{body} → {err}");
    }
    // execute_result without a request_id cannot be matched.
    c.send_json(json!({"type":"execute_result","content":{}}))
        .await;
    assert_eq!(c.recv().await["code"], "missing_field");
    // Nothing above was executed or broadcast.
    assert!(c.flush().await.is_empty());
    let h = c
        .request(
            json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"bob"}}),
        )
        .await;
    assert_eq!(h["content"]["count"], 0, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_the_same_client_id_replaces_the_old_connection() {
    let hub = HubProcess::start(&[], &[]).await;
    let url = hub.ws_url();
    let (mut old, _) = WsClient::register(&url, "re", "dup").await;
    let (mut watcher, _) = WsClient::register(&url, "re", "w").await;
    old.recv_type("client_joined").await;
    // The same id in another session is another client: replaces nothing.
    let (mut elsewhere, _) = WsClient::register(&url, "other", "dup").await;

    let (mut new, conf) = WsClient::register(&url, "re", "dup").await;
    let mut members: Vec<&str> = conf["clients"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["client_id"].as_str()).collect())
        .unwrap_or_default();
    members.sort();
    assert_eq!(members, ["dup", "w"], "{conf}");
    assert_eq!(old.expect_close().await, Some(4001));
    wait_connections(&hub, 3).await;
    let seen = watcher.flush().await;
    assert_eq!(
        types(&seen),
        ["client_joined"],
        "no client_left for a replaced connection: {seen:?}"
    );
    assert_eq!(seen[0]["client_id"], "dup");
    assert!(elsewhere.flush().await.is_empty());
    let (_, summary) = hub.get("/api/v1/sessions/re").await;
    let summary: Value = serde_json::from_str(&summary).expect("json");
    assert_eq!(
        summary["clients"].as_array().map(Vec::len),
        Some(2),
        "{summary}"
    );

    // The new connection is fully the client: its events, its departure.
    new.send_json(json!({"type":"broadcast","payload":"i am back"}))
        .await;
    assert_eq!(watcher.recv_type("broadcast").await["from"], "dup");
    new.close().await;
    assert_eq!(watcher.recv_type("client_left").await["client_id"], "dup");
    assert!(elsewhere.flush().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_is_a_departure() {
    let hub = HubProcess::start(&[], &[]).await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "drop", "a").await;
    let (b, _) = WsClient::register(&hub.ws_url(), "drop", "b").await;
    a.recv_type("client_joined").await;
    drop(b); // no close frame: the TCP connection just ends
    let left = a.recv_type("client_left").await;
    assert_eq!(left["client_id"], "b");
    assert_eq!(left["client_name"], "b");
    wait_connections(&hub, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_role_changes_hands_as_documented() {
    let hub = HubProcess::start(&[], &[]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "ag", "user").await;
    let (mut first, conf) = register_agent(&url, "ag", "first").await;
    assert_eq!(conf["agent"], true);
    // agent_changed goes to everyone, the new agent included.
    assert_eq!(first.recv_type("agent_changed").await["client_id"], "first");
    assert_eq!(user.recv_type("agent_changed").await["client_id"], "first");

    let (mut second, _) = register_agent(&url, "ag", "second").await;
    for c in [&mut user, &mut first, &mut second] {
        let ev = c.recv_type("agent_changed").await;
        assert_eq!(ev["client_id"], "second");
        assert!(ev["instance"].is_string());
    }
    // The previous agent leaving changes nothing about the role.
    first.close().await;
    wait_connections(&hub, 2).await;
    let seen = user.flush().await;
    // (second's client_joined was skipped while waiting for agent_changed)
    assert_eq!(types(&seen), ["client_left"], "{seen:?}");
    assert_eq!(seen[0]["client_id"], "first");
    let rid = "via-second";
    user.send_json(json!({"type":"whatsapp_command","request_id":rid,"command":{"action":"get_history","contact":"mom","limit":3}}))
        .await;
    let exec = second.recv_type("execute").await;
    assert_eq!(
        exec["command"],
        json!({"action":"get_history","contact":"Mom","limit":3})
    );
    assert!(
        exec["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("call-"))
    );
    // A failure is passed through unchanged, and nothing is recorded.
    let failure = json!({"success":false,"error":"phone offline","detail":{"battery":3}});
    second
        .send_json(
            json!({"type":"execute_result","request_id":exec["request_id"],"content":failure}),
        )
        .await;
    let r = user.answer_to(rid, &json!(rid)).await;
    assert_eq!(r["response_type"], "whatsapp_command_result");
    assert_eq!(r["content"], failure);

    // The agent's own commands are executed by the connector.
    let own = second
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"bob","message":"from the agent"}}))
        .await;
    assert_eq!(own["content"]["executed_by"], "simulated", "{own}");
    assert!(
        types(&second.flush().await)
            .iter()
            .all(|t| t == "message_event"),
        "no execute sent back to the agent itself"
    );

    // An AI command is forwarded with the resolved interpretation, and a
    // successful send is recorded and broadcast before the response.
    user.send_json(json!({"type":"whatsapp_ai_command","request_id":"ai-1","command":"tell maria that dinner at 8"}))
        .await;
    let exec = second.recv_type("execute").await;
    assert_eq!(
        exec["command"],
        json!({"action":"send","contact":"Maria","message":"dinner at 8"})
    );
    let answer =
        json!({"success":true,"contact":"Maria","message":"dinner at 8","message_id":"wamid.1"});
    second
        .send_json(
            json!({"type":"execute_result","request_id":exec["request_id"],"content":answer}),
        )
        .await;
    let frames = loop_until(&mut user, "ai-1").await;
    let ev = frames
        .iter()
        .find(|f| f["type"] == "message_event" && f["message_id"] == "wamid.1");
    assert!(ev.is_some_and(|e| e["by"] == "user"), "{frames:?}");
    let last = frames.last().cloned().unwrap_or_default();
    assert_eq!(last["response_type"], "whatsapp_ai_command_result");
    assert_eq!(last["content"]["result"], answer);
    assert_eq!(last["content"]["success"], true);
    assert_eq!(
        second.recv_type("message_event").await["message_id"],
        "wamid.1"
    );

    // The agent reconnects without the capability under the same id: the
    // role is released and commands go to the connector again.
    let (_plain, _) = WsClient::register(&url, "ag", "second").await;
    assert_eq!(second.expect_close().await, Some(4001));
    let ev = user.recv_type("agent_changed").await;
    assert!(ev["client_id"].is_null(), "{ev}");
    let r = user
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(r["content"]["executed_by"], "simulated", "{r}");
}

/// Frames up to and including the answer carrying `rid`.
async fn loop_until(c: &mut WsClient, rid: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let m = c.recv().await;
        let done = m["request_id"] == rid;
        frames.push(m);
        if done {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_are_capped_per_connection() {
    let hub = HubProcess::start(&["--max-in-flight", "1"], &[]).await;
    let url = hub.ws_url();
    let (mut agent, _) = register_agent(&url, "cap", "agent").await;
    let (mut user, _) = WsClient::register(&url, "cap", "user").await;
    user.send_json(
        json!({"type":"whatsapp_command","request_id":"slow","command":{"action":"list_contacts"}}),
    )
    .await;
    let exec = agent.recv_type("execute").await;
    // One request is waiting for the agent: the next is refused...
    let err = user
        .request(json!({"type":"ai_request","prompt":"hi"}))
        .await;
    assert_eq!(err["code"], "too_many_in_flight", "{err}");
    // ...but ping and broadcast are inline and never count.
    let ack = user
        .request(json!({"type":"broadcast","payload":"still here"}))
        .await;
    assert_eq!(ack["response_type"], "broadcast_sent");
    agent
        .send_json(json!({"type":"execute_result","request_id":exec["request_id"],"content":{"success":true,"contacts":[]}}))
        .await;
    let r = user.answer_to("slow", &json!("slow")).await;
    assert_eq!(r["content"], json!({"success":true,"contacts":[]}));
    // The slot is free again.
    let r = user
        .request(json!({"type":"ai_request","prompt":"hi"}))
        .await;
    assert_eq!(r["response_type"], "ai_response", "{r}");
}
