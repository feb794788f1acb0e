//! Per-connection limits and forced closes, against an in-process hub:
//! message size (close 1009, inclusive bound), slow consumers (close 1008,
//! by queued frames or queued bytes; a burst within the bound is fine),
//! rate limit (`rate_limited`, request ids echoed; binary frames: the
//! abuse suite's `guards`),
//! requests in flight (`too_many_in_flight`), and a client id registered
//! again (close 4001). The hard limits of issue 10, each at its boundary:
//! `MAX_CONNECTIONS` (503 before the upgrade), `MAX_CLIENTS_PER_SESSION`
//! (`session_full`, also across instances), field lengths and counts
//! (`invalid_field`), contacts per session.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// A broadcast frame of exactly `len` bytes.
fn broadcast_of(len: usize, fill: char) -> String {
    let head = r#"{"type":"broadcast","payload":""#;
    let tail = r#""}"#;
    let s = format!(
        "{head}{}{tail}",
        fill.to_string().repeat(len - head.len() - tail.len())
    );
    assert_eq!(s.len(), len);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_message_bytes_closes_with_1009_and_one_at_it_passes() {
    let hub = TestHub::start(&["--max-message-bytes", "1024"]).await;
    let url = hub.ws_url();
    let (mut peer, _) = WsClient::register(&url, "size", "peer").await;
    let (mut big, _) = WsClient::register(&url, "size", "big").await;
    peer.recv_type("client_joined").await;

    // Exactly at the limit is fine (the bound is inclusive).
    let fits = broadcast_of(1024, 'x');
    big.send_text(&fits).await;
    let sent: Value = serde_json::from_str(&fits).expect("json");
    assert_eq!(
        peer.recv_type("broadcast").await["payload"],
        sent["payload"]
    );
    assert_quiet(&mut big, "no error for a frame at the limit").await;

    // One byte over: close 1009, whatever the frame says.
    let over = broadcast_of(1025, 'y');
    big.send_text(&over).await;
    assert_eq!(big.expect_close().await, Some(1009));
    // Nothing of it was relayed; the others just see the client leave.
    let left = peer.recv().await;
    assert_eq!(left["type"], "client_left", "{left}");
    assert_eq!(left["client_id"], "big");
    wait_metric(
        &hub,
        "hub_ws_connections_closed_total{reason=\"message_too_large\"}",
        1.0,
    )
    .await;
    // The limit applies before registration too, at the same boundary.
    let mut anon = WsClient::connect(&url).await;
    let head = r#"{"type":"ping","request_id":"big","pad":""#;
    let at_limit = format!("{head}{}\"}}", "x".repeat(1024 - head.len() - 2));
    assert_eq!(at_limit.len(), 1024);
    anon.send_text(&at_limit).await;
    let pong = anon.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["request_id"].as_str()),
        (Some("pong"), Some("big"))
    );
    anon.send_text(&over).await;
    assert_eq!(anon.expect_close().await, Some(1009));
    hub.wait_metric(
        "hub_ws_connections_closed_total{reason=\"message_too_large\"}",
        |v| v == 2.0,
    )
    .await;
    // The hub is fine.
    assert_quiet(&mut peer, "only the client_left").await;
    let (_again, conf) = WsClient::register(&url, "size", "big").await;
    assert_eq!(conf["client_id"], "big");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_with_1008() {
    // The frame cap (OUTBOUND_QUEUE_LEN) is reached first.
    never_reader_is_cut_off(&["--outbound-queue-len", "8"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_cuts_off_a_client_that_never_reads() {
    // 4 frames of 60 kB exceed 200 kB; the frame cap is far away.
    never_reader_is_cut_off(&[
        "--outbound-queue-bytes",
        "200000",
        "--outbound-queue-len",
        "100000",
    ])
    .await;
}

async fn never_reader_is_cut_off(queue_flags: &[&str]) {
    let mut args = vec![
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
    ];
    args.extend_from_slice(queue_flags);
    let hub = TestHub::start(&args).await;
    let url = hub.ws_url();
    let (mut slow, _) = WsClient::register(&url, "flood", "slow").await;
    let (mut fast, _) = WsClient::register(&url, "flood", "fast").await;
    let (mut producer, _) = WsClient::register(&url, "flood", "producer").await;
    fast.recv_type("client_joined").await;

    // From here on `slow` is not polled until the hub has given up on it.
    let fill = "z".repeat(60_000);
    let mut rounds = 0;
    let mut cut_off = false;
    let mut slow_left = false;
    while rounds < 3000 && !cut_off {
        producer
            .send_json(json!({"type": "broadcast", "payload": {"round": rounds, "fill": fill}}))
            .await;
        // `fast` keeps up and sees every round, in order (and, at some
        // point, `slow` leaving).
        let mut b = fast.recv().await;
        if b["type"] == "client_left" {
            assert_eq!(b["client_id"], "slow", "{b}");
            slow_left = true;
            b = fast.recv().await;
        }
        assert_eq!(b["type"], "broadcast", "{b}");
        assert_eq!(b["payload"]["round"], rounds);
        rounds += 1;
        if rounds % 10 == 0 {
            let body = metrics_text(&hub).await;
            cut_off = metric_value(&body, "hub_slow_consumer_disconnects_total") >= Some(1.0);
        }
    }
    assert!(cut_off, "never disconnected after {rounds} rounds of 60 kB");

    // The slow client: whatever it had buffered, then close 1008 (or just
    // the end of the connection when not even the close frame fit).
    let code = slow.expect_close().await;
    assert!(matches!(code, Some(1008) | None), "close code {code:?}");
    // Everyone else is unaffected and sees it leave.
    if !slow_left {
        let left = fast.recv().await;
        assert_eq!(left["type"], "client_left", "{left}");
        assert_eq!(left["client_id"], "slow");
    }
    producer
        .send_json(json!({"type": "broadcast", "payload": {"round": "after"}}))
        .await;
    assert_eq!(
        fast.recv_type("broadcast").await["payload"]["round"],
        "after"
    );
    for c in [&mut fast, &mut producer] {
        assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    }
    let body = metrics_text(&hub).await;
    assert_eq!(
        metric_value(&body, "hub_slow_consumer_disconnects_total"),
        Some(1.0),
        "only the slow client"
    );
    wait_metric(
        &hub,
        "hub_ws_connections_closed_total{reason=\"slow_consumer\"}",
        1.0,
    )
    .await;
    let (_back, conf) = WsClient::register(&url, "flood", "slow").await;
    assert_eq!(conf["clients"].as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_within_the_default_queue_bounds_evicts_nobody() {
    // Default OUTBOUND_QUEUE_BYTES / OUTBOUND_QUEUE_LEN; only the
    // publisher's rate limit is raised so it can send the burst at once.
    let hub = TestHub::start(&[
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
    ])
    .await;
    let url = hub.ws_url();
    let mut subscribers = Vec::new();
    for id in ["s1", "s2", "s3"] {
        let (c, _) = WsClient::register(&url, "burst", id).await;
        subscribers.push(c);
    }
    let (mut producer, _) = WsClient::register(&url, "burst", "producer").await;
    // 1 000 broadcasts of ~150 bytes, sent before anyone reads a frame.
    const N: u64 = 1000;
    let fill = "b".repeat(100);
    for seq in 0..N {
        producer
            .send_json(json!({"type": "broadcast", "payload": {"seq": seq, "fill": fill}}))
            .await;
    }
    for s in &mut subscribers {
        let mut next = 0;
        while next < N {
            let frame = s.recv().await;
            if frame["type"] != "broadcast" {
                continue; // presence of the later joiners
            }
            assert_eq!(frame["payload"]["seq"], next, "in order, none lost");
            next += 1;
        }
    }
    assert_quiet(&mut producer, "the producer gets nothing back").await;
    let body = metrics_text(&hub).await;
    assert_eq!(
        metric_value(&body, "hub_slow_consumer_disconnects_total"),
        Some(0.0)
    );
    for s in &mut subscribers {
        assert_eq!(s.request(json!({"type": "ping"})).await["type"], "pong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_drops_excess_frames_with_rate_limited() {
    let hub = TestHub::start(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "3"]).await;
    let url = hub.ws_url();
    let mut c = WsClient::connect(&url).await;
    // A burst: three bad frames use up the bucket (every text frame counts),
    // then a frame of an unknown type and four pings. Every frame is
    // answered, in order, each with its request_id, whether or not the
    // message itself was valid.
    for _ in 0..3 {
        c.send_text("{not json").await;
    }
    c.send_json(json!({"type": "teleport", "request_id": "p0"}))
        .await;
    for i in 1..5 {
        c.send_json(json!({"type": "ping", "request_id": format!("p{i}")}))
            .await;
    }
    let answers = recv_n(&mut c, 8).await;
    for a in &answers[..3] {
        assert_eq!(a["code"], "invalid_json", "within the burst: {answers:?}");
    }
    for (i, a) in answers[3..].iter().enumerate() {
        assert_eq!(a["request_id"], format!("p{i}"), "{answers:?}");
        assert!(
            a["type"] == "pong" || a["code"] == "rate_limited",
            "{answers:?}"
        );
    }
    assert_eq!(answers[3]["code"], "rate_limited", "{answers:?}");
    let limited = answers[3..]
        .iter()
        .filter(|a| a["code"] == "rate_limited")
        .count();
    assert!(limited >= 4, "at most one token per second: {answers:?}");

    // The bucket refills: poll (bounded) until a frame passes again; the
    // connection was never closed.
    async fn until_allowed(c: &mut WsClient, body: Value) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            c.send_json(body.clone()).await;
            let a = c.recv().await;
            if a["code"] != "rate_limited" {
                return a;
            }
            assert!(tokio::time::Instant::now() < deadline, "never refilled");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let pong = until_allowed(&mut c, json!({"type": "ping", "request_id": "again"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    let conf = until_allowed(
        &mut c,
        json!({"type": "register", "client_id": "greedy", "session": "rl"}),
    )
    .await;
    assert_eq!(conf["type"], "registration_confirmed", "{conf}");
    assert_eq!(c.recv().await["type"], "contact_list_broadcast");
    // Registered requests are limited the same way.
    for i in 0..6 {
        c.send_json(
            json!({"type": "whatsapp_command", "request_id": format!("w{i}"),
                           "command": {"action": "list_contacts"}}),
        )
        .await;
    }
    let answers = recv_n(&mut c, 6).await;
    let mut rids: Vec<&str> = answers
        .iter()
        .filter_map(|a| a["request_id"].as_str())
        .collect();
    rids.sort();
    assert_eq!(rids, ["w0", "w1", "w2", "w3", "w4", "w5"], "{answers:?}");
    let limited = answers
        .iter()
        .filter(|a| a["code"] == "rate_limited")
        .count();
    assert!(limited >= 4, "{answers:?}");
    let body = metrics_text(&hub).await;
    assert!(metric_value(&body, "hub_errors_total{code=\"rate_limited\"}") >= Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_in_flight_are_refused() {
    let hub = TestHub::start(&[
        "--max-in-flight",
        "1",
        "--rate-limit-per-sec",
        "10000",
        "--rate-limit-burst",
        "10000",
    ])
    .await;
    let url = hub.ws_url();
    let (mut agent, _) = register_agent(&url, "inflight", "phone").await;
    agent.recv_type("agent_changed").await;
    let (mut user, _) = WsClient::register(&url, "inflight", "user").await;

    // One request waits for the agent, which does not answer yet.
    user.send_json(json!({"type": "whatsapp_command", "request_id": "slow",
                          "command": {"action": "list_contacts"}}))
        .await;
    let exec = agent.recv_type("execute").await;
    // Every further request is refused while it is in flight...
    for (rid, body) in [
        ("second", ws_command(json!({"action": "list_contacts"}))),
        ("ai", ai_command("list contacts")),
        ("ask", json!({"type": "ai_request", "prompt": "hi"})),
    ] {
        let mut body = body;
        body["request_id"] = json!(rid);
        user.send_json(body).await;
        let e = user.recv().await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "too_many_in_flight", "{e}");
        assert_eq!(e["request_id"], rid);
    }
    // ...but pings and broadcasts are not requests in flight.
    assert_eq!(user.request(json!({"type": "ping"})).await["type"], "pong");
    let sent = user
        .request(json!({"type": "broadcast", "payload": "still allowed"}))
        .await;
    assert_eq!(sent["response_type"], "broadcast_sent");
    assert_eq!(
        agent.recv_type("broadcast").await["payload"],
        "still allowed"
    );
    assert_quiet(&mut agent, "refused requests never reach the agent").await;

    // Once answered, the slot is free again: a strictly sequential client
    // (next request only after the previous answer) is never refused.
    agent
        .send_json(
            json!({"type": "execute_result", "request_id": exec["request_id"],
                          "content": {"success": true, "n": 0}}),
        )
        .await;
    let r = user.recv().await;
    assert_eq!(r["request_id"], "slow", "{r}");
    assert_eq!(
        r["content"],
        json!({"success": true, "n": 0}),
        "the agent's answer, whole"
    );
    for i in 1..=40u64 {
        let rid = format!("seq{i}");
        user.send_json(json!({"type": "whatsapp_command", "request_id": rid,
                              "command": {"action": "list_contacts"}}))
            .await;
        // A refusal would be queued before the pong.
        let refused = barrier(&mut user).await;
        assert!(
            refused.is_empty(),
            "request {i}, sent after the previous answer: {refused:?}"
        );
        let exec = agent.recv_type("execute").await;
        agent
            .send_json(
                json!({"type": "execute_result", "request_id": exec["request_id"],
                              "content": {"success": true, "n": i}}),
            )
            .await;
        let r = user.recv().await;
        assert_eq!(r["request_id"], rid.as_str(), "{r}");
        assert_eq!(r["content"]["n"], i, "{r}");
    }
    // Any kind of request, not only agent commands, gets the free slot.
    let r = user
        .request(json!({"type": "ai_request", "prompt": "hi"}))
        .await;
    assert_eq!(r["response_type"], "ai_response", "{r}");
    let body = metrics_text(&hub).await;
    assert_eq!(
        metric_value(&body, "hub_errors_total{code=\"too_many_in_flight\"}"),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_connected_client_id_again_closes_the_old_connection_with_4001() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let (mut watcher, _) = WsClient::register(&url, "rep", "watcher").await;
    let (mut old, _) = WsClient::register(&url, "rep", "alice").await;
    assert_eq!(watcher.recv().await["client_id"], "alice");
    // The same id in another session is another client: replaces nothing.
    let (mut elsewhere, _) = WsClient::register(&url, "other", "alice").await;

    let (mut new, conf) = WsClient::register_with(
        &url,
        json!({"type": "register", "session": "rep", "client_id": "alice", "client_name": "Alice again"}),
    )
    .await;
    let members: Vec<&str> = conf["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    assert_eq!(members, ["watcher", "alice"], "alice once: {conf}");
    assert_eq!(old.expect_close().await, Some(4001));
    // The others see the new registration, not a departure.
    let joined = watcher.recv().await;
    assert_eq!(joined["type"], "client_joined", "{joined}");
    assert_eq!(joined["client_name"], "Alice again");
    wait_metric(
        &hub,
        "hub_ws_connections_closed_total{reason=\"replaced\"}",
        1.0,
    )
    .await;
    assert_quiet(&mut watcher, "no client_left for a replaced connection").await;
    assert_quiet(&mut elsewhere, "the other session's alice is untouched").await;
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/rep").await;
    assert_eq!(
        summary["clients"][1]["client_name"], "Alice again",
        "{summary}"
    );
    assert_eq!(summary["clients"].as_array().map(Vec::len), Some(2));

    // The new connection is the client now.
    let r = new
        .request(send_cmd("john", "from the new connection"))
        .await;
    assert_eq!(r["content"]["success"], true);
    assert_eq!(watcher.recv_type("message_event").await["by"], "alice");
    // When it leaves, alice is gone for good.
    new.close().await;
    assert_eq!(watcher.recv().await["type"], "client_left");
    assert_quiet(&mut elsewhere, "nor told about this alice leaving").await;
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/rep").await;
    assert_eq!(
        summary["clients"].as_array().map(Vec::len),
        Some(1),
        "{summary}"
    );
}

// ------------------------------------------------- issue 10: hard limits

/// Every limit's error: `{"type":"error","code":...}` with this code.
fn assert_error(frame: &serde_json::Value, code: &str) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_get_503_before_the_upgrade() {
    let hub = TestHub::start(&["--max-connections", "2"]).await;
    let url = hub.ws_url();
    let (mut first, _) = WsClient::register(&url, "cap", "first").await;
    let second = WsClient::try_connect_with(&url, &[])
        .await
        .unwrap_or_else(|(s, b)| panic!("the second of 2 was refused: {s} {b}"));
    let (status, body) = match WsClient::try_connect_with(&url, &[]).await {
        Ok(_) => panic!("a third connection was accepted with MAX_CONNECTIONS=2"),
        Err(refused) => refused,
    };
    assert_eq!(status, 503, "{body}");
    assert_error(&body, "too_many_connections");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    // The refused upgrade never became a client; the others are fine.
    assert_eq!(first.request(json!({"type": "ping"})).await["type"], "pong");
    // HTTP is not capped.
    assert_eq!(hub.get("/health").await.0, 200);

    // A slot frees when a connection ends.
    second.close().await;
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    let mut again = loop {
        match WsClient::try_connect_with(&url, &[]).await {
            Ok(ws) => break ws,
            Err((503, _)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((status, body)) => panic!("no slot freed: {status} {body}"),
        }
    };
    assert_eq!(again.request(json!({"type": "ping"})).await["type"], "pong");
    hub.wait_metric("hub_errors_total{code=\"too_many_connections\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_refuses_one_more_client_with_session_full() {
    let hub = TestHub::start(&["--max-clients-per-session", "2"]).await;
    let url = hub.ws_url();
    let (mut a, _) = WsClient::register(&url, "full", "a").await;
    // Exactly at the limit: accepted.
    let (_b, conf) = WsClient::register(&url, "full", "b").await;
    assert_eq!(conf["clients"].as_array().map(Vec::len), Some(2));
    a.recv_type("client_joined").await;

    // One over: session_full, and the connection stays open, unregistered.
    let mut c = WsClient::connect(&url).await;
    let answer = c
        .request(json!({"type": "register", "session": "full", "client_id": "c"}))
        .await;
    assert_error(&answer, "session_full");
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    let not_yet = c.request(send_cmd("john", "hi")).await;
    assert_error(&not_yet, "not_registered");
    assert_quiet(&mut a, "nobody joined").await;
    // Registering an id that is already there replaces; it adds nobody.
    let (_b_again, conf) = WsClient::register(&url, "full", "b").await;
    assert_eq!(conf["clients"].as_array().map(Vec::len), Some(2), "{conf}");
    // Other sessions are not affected.
    let (_elsewhere, _) = WsClient::register(&url, "roomy", "c").await;

    // When someone leaves, the same connection may register.
    a.close().await;
    wait_connections(&hub, 3).await;
    let joined = c
        .request(json!({"type": "register", "session": "full", "client_id": "c"}))
        .await;
    assert_eq!(joined["type"], "registration_confirmed", "{joined}");
    hub.wait_metric("hub_errors_total{code=\"session_full\"}", |v| v >= 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_per_session_counts_every_instance() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = |id: &'static str| {
        vec![
            "--redis-url".to_string(),
            url.clone(),
            "--instance-id".to_string(),
            id.to_string(),
            "--max-clients-per-session".to_string(),
            "2".to_string(),
        ]
    };
    let a_args = args("limit-a");
    let b_args = args("limit-b");
    let hub_a = TestHub::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let hub_b = TestHub::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (_one, _) = WsClient::register(&hub_a.ws_url(), "shared", "one").await;
    let (_two, _) = WsClient::register(&hub_b.ws_url(), "shared", "two").await;
    // A refused join counts the members; it never reads their list.
    let members_read = "hub_redis_command_duration_seconds_count{op=\"members\"}";
    for hub in [&hub_a, &hub_b] {
        let before = hub.metric(members_read).await.unwrap_or(0.0);
        let mut three = WsClient::connect(&hub.ws_url()).await;
        let answer = three
            .request(json!({"type": "register", "session": "shared", "client_id": "three"}))
            .await;
        assert_error(&answer, "session_full");
        assert_eq!(hub.metric(members_read).await.unwrap_or(0.0), before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_limits_pass_at_the_limit_and_fail_one_over() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    // client_name: 64 characters (not bytes) pass, 65 fail.
    let (_ok, conf) = WsClient::register_with(
        &url,
        json!({"type": "register", "session": "f", "client_id": "n64", "client_name": "é".repeat(64)}),
    )
    .await;
    assert_eq!(conf["client_name"], "é".repeat(64));
    let mut c = WsClient::connect(&url).await;
    let answer = c
        .request(json!({"type": "register", "session": "f", "client_name": "n".repeat(65)}))
        .await;
    assert_error(&answer, "invalid_field");
    // capabilities: 8 pass, 9 fail.
    let caps = |n: usize| (0..n).map(|i| format!("cap{i}")).collect::<Vec<_>>();
    let answer = c
        .request(
            json!({"type": "register", "session": "f", "client_id": "c9", "capabilities": caps(9)}),
        )
        .await;
    assert_error(&answer, "invalid_field");
    let answer = c
        .request(
            json!({"type": "register", "session": "f", "client_id": "c8", "capabilities": caps(8)}),
        )
        .await;
    assert_eq!(answer["type"], "registration_confirmed", "{answer}");
    // Message text: 4096 characters pass, 4097 fail.
    let ok = c.request(send_cmd("john", &"m".repeat(4096))).await;
    assert_eq!(ok["content"]["success"], true, "{ok}");
    let over = c.request(send_cmd("john", &"m".repeat(4097))).await;
    assert_error(&over, "invalid_field");
    let over = c
        .request(json!({"type": "whatsapp_ai_command", "command": "m".repeat(4097)}))
        .await;
    assert_error(&over, "invalid_field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_limits_are_settings() {
    let hub = TestHub::start(&[
        "--max-text-chars",
        "10",
        "--max-client-name-chars",
        "3",
        "--max-capabilities",
        "1",
    ])
    .await;
    let url = hub.ws_url();
    let mut c = WsClient::connect(&url).await;
    let answer = c
        .request(json!({"type": "register", "session": "s", "client_name": "abcd"}))
        .await;
    assert_error(&answer, "invalid_field");
    let answer = c
        .request(json!({"type": "register", "session": "s", "capabilities": ["a", "b"]}))
        .await;
    assert_error(&answer, "invalid_field");
    let answer = c
        .request(json!({"type": "register", "session": "s", "client_name": "abc", "capabilities": ["a"]}))
        .await;
    assert_eq!(answer["type"], "registration_confirmed", "{answer}");
    let ok = c.request(send_cmd("john", "0123456789")).await;
    assert_eq!(ok["content"]["success"], true, "{ok}");
    let over = c.request(send_cmd("john", "0123456789a")).await;
    assert_error(&over, "invalid_field");
}

fn contacts(n: usize) -> serde_json::Value {
    json!(
        (0..n)
            .map(|i| json!({"name": format!("Person {i}")}))
            .collect::<Vec<_>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_update_over_the_limit_is_refused_whole() {
    let hub = TestHub::start(&["--max-contacts-per-session", "6"]).await;
    let url = hub.ws_url();
    let (mut agent, _) = register_agent(&url, "book", "phone").await;
    let (mut watcher, _) = WsClient::register(&url, "book", "watcher").await;
    let ack = agent
        .request(json!({"type": "contacts_update", "contacts": contacts(6)}))
        .await;
    assert_eq!(ack["type"], "response", "{ack}");
    assert_eq!(
        watcher.recv_type("contact_list_broadcast").await["total_count"],
        6
    );
    let refused = agent
        .request(json!({"type": "contacts_update", "contacts": contacts(7)}))
        .await;
    assert_error(&refused, "invalid_field");
    assert_quiet(&mut watcher, "nothing announced").await;
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/book").await;
    assert_eq!(summary["total_count"], 6, "nothing stored: {summary}");
    assert_eq!(summary["contacts"][5]["name"], "Person 5", "{summary}");

    // A contacts file over the limit does not start.
    let dir = TempDir::new();
    let file = dir.write("contacts.json", &contacts(7).to_string());
    let err = TestHub::try_start(&[
        "--max-contacts-per-session",
        "6",
        "--contacts-file",
        file.to_str().expect("utf-8 path"),
    ])
    .await
    .err()
    .expect("a contacts file over the limit is refused");
    assert!(
        err.contains("CONTACTS_FILE") && err.contains("MAX_CONTACTS_PER_SESSION"),
        "{err}"
    );
}
