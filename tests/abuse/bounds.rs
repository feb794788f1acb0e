//! Every response and held record bounded in bytes (issue 19): the events
//! GET in pages, the resume replay's budget (`recovered: false`, never
//! 1008), and the agent calls an instance holds. The idempotency records'
//! bounds are in `identity.rs`. See tests/abuse.rs.

use serde_json::{Value, json};

use crate::support::*;

/// A broadcast of about `kib` KiB.
fn big_broadcast(n: usize, kib: usize) -> Value {
    json!({"type": "broadcast", "payload": {"n": n, "fill": "x".repeat(kib * 1024)}})
}

/// Fills session `s` of `hub` with `count` broadcasts of `kib` KiB each from
/// one member; returns the log's epoch and the offset before them.
async fn fill_log(hub: &TestHub, count: usize, kib: usize) -> (String, u64) {
    let (mut writer, confirmed) = WsClient::register(&hub.ws_url(), "s", "writer").await;
    let epoch = confirmed["epoch"].as_str().expect("epoch").to_string();
    let before = confirmed["offset"].as_u64().expect("offset");
    for n in 0..count {
        let mut b = big_broadcast(n, kib);
        let rid = format!("fill-{n}");
        b["request_id"] = json!(rid);
        let answer = writer.request(b).await;
        assert_ne!(answer["type"], "error", "{answer}");
    }
    (epoch, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_get_is_paged_by_bytes() {
    let hub = TestHub::start(&["--events-page-max-bytes", "65536"]).await;
    let (epoch, before) = fill_log(&hub, 20, 16).await;
    // 20 × 16 KiB: no page may hold them all; paging yields each once.
    let mut since = before;
    let mut seen = Vec::new();
    let mut broadcasts = Vec::new();
    let mut pages = 0;
    loop {
        let url = hub.http_url(&format!(
            "/api/v1/sessions/s/events?since={since}&epoch={epoch}"
        ));
        let response = reqwest::get(&url).await.expect("GET events");
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.expect("body");
        assert!(
            body.len() <= 65536 + 17 * 1024,
            "a page of {} bytes passes the cap and one event",
            body.len()
        );
        let page: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(page["recovered"], true, "{}", page["next_since"]);
        for event in page["events"].as_array().expect("events") {
            seen.push(event["offset"].as_u64().expect("offset"));
            if event["type"] == "broadcast" {
                broadcasts.push(event["payload"]["n"].as_u64().expect("n"));
            }
        }
        pages += 1;
        since = page["next_since"].as_u64().expect("next_since");
        if page["has_more"] == false {
            break;
        }
        assert!(pages < 50, "paging does not end");
    }
    // Every event after `since` once, in order (the writer's own join
    // included), every broadcast among them.
    let expected: Vec<u64> = (before + 1..before + 1 + seen.len() as u64).collect();
    assert_eq!(seen, expected);
    assert_eq!(broadcasts, (0..20).collect::<Vec<u64>>());
    assert!(pages >= 5, "{pages} pages for 320 KiB at 64 KiB a page");
    hub.wait_metric("hub_limit_shed_total{limit=\"events_page\"}", |v| v >= 4.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_the_replay_budget_gets_recovered_false_not_1008() {
    let hub = TestHub::start(&["--replay-max-bytes", "65536"]).await;
    let (reader, confirmed) = WsClient::register(&hub.ws_url(), "s", "reader").await;
    let epoch = confirmed["epoch"].as_str().expect("epoch").to_string();
    let since = confirmed["offset"].as_u64().expect("offset");
    reader.close().await;
    // 12 × 16 KiB missed: more than the 64 KiB a resume may replay.
    fill_log(&hub, 12, 16).await;
    let (mut resumed, confirmed) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type": "register", "session": "s", "client_id": "reader",
               "since": {"offset": since, "epoch": epoch}}),
    )
    .await;
    assert_eq!(confirmed["type"], "registration_confirmed", "{confirmed}");
    assert_eq!(confirmed["recovered"], false, "{confirmed}");
    hub.wait_metric("hub_limit_shed_total{limit=\"replay_budget\"}", |v| {
        v == 1.0
    })
    .await;
    // Connected and served, not closed as a slow consumer.
    let pong = resumed.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(resumed.closed().is_none());
    // A backlog within the budget still resumes.
    let offset = confirmed["offset"].as_u64().expect("offset");
    resumed.close().await;
    fill_log(&hub, 2, 16).await;
    let (_again, confirmed) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type": "register", "session": "s", "client_id": "reader",
               "since": {"offset": offset, "epoch": confirmed["epoch"]}}),
    )
    .await;
    assert_eq!(confirmed["recovered"], true, "{confirmed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_agent_calls_are_held_in_a_bounded_table() {
    let hub = TestHub::start(&["--agent-timeout-ms", "200"]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "t", "user").await;
    let (mut agent, _) = register_agent(&url, "t", "phone").await;
    agent.recv_type("agent_changed").await;
    let mut calls = Vec::new();
    for n in 0..3 {
        let rid = format!("t{n}");
        let mut body = send_cmd("john", "anyone there?");
        body["request_id"] = json!(rid);
        user.send_json(body).await;
        calls.push(agent.recv_type("execute").await["request_id"].clone());
        let (_, err) = until_answer(&mut user, &rid).await;
        assert_eq!(err["code"], "agent_timeout", "{err}");
    }
    // Each timed-out call is kept for a late answer (the table's bound and
    // its expiry are unit-tested with hub::agents' LateCalls) ...
    hub.wait_metric("hub_agent_calls_held{table=\"late\"}", |v| v == 3.0)
        .await;
    hub.wait_metric("hub_agent_calls_held{table=\"pending\"}", |v| v == 0.0)
        .await;
    // ... and leaves it when the answer comes.
    agent
        .send_json(json!({"type": "execute_result", "request_id": calls[0],
                          "content": {"success": true, "contact": "John", "message_id": "late"}}))
        .await;
    hub.wait_metric("hub_agent_calls_held{table=\"late\"}", |v| v == 2.0)
        .await;
}
