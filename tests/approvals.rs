//! A person's approval before a send (`APPROVAL_REQUIRED`, docs/protocol.md
//! §14): a held send reaches WhatsApp only once a human member approves
//! it; a rejection or the expiry answers the caller with its code; exactly
//! one decision wins, also with deciders on two instances; and a held send
//! outlives the instance that held it (a killed process).

use crate::support;

use serde_json::{Value, json};
use support::*;

/// A standalone hub that holds MCP sends (`extra`: more settings).
async fn holding_hub(mode: &str, extra: &[&str]) -> TestHub {
    let mut args = vec!["--approval-required", mode];
    args.extend_from_slice(extra);
    TestHub::start(&args).await
}

/// The messages the session's history holds with John.
async fn history_with_john(client: &mut WsClient) -> Vec<Value> {
    let answer = client.request(history_cmd("John")).await;
    answer["content"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("a history: {answer}"))
}

async fn decide(client: &mut WsClient, kind: &str, id: &Value) -> Value {
    client.request(json!({"type": kind, "id": id})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_send_waits_for_a_person_and_goes_out_once_approved() {
    let hub = holding_hub("mcp", &[]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let (mut bob, _) = WsClient::register(&hub.ws_url(), "default", "bob").await;

    let call = mcp_send(hub.addr, "see you at 6");
    let request = alice.recv_type("approval_request").await;
    assert_eq!(
        keys(&request),
        [
            "action",
            "contact",
            "created_at",
            "epoch",
            "expires_at",
            "id",
            "offset",
            "requested_by",
            "session",
            "text",
            "type",
            "via"
        ]
    );
    assert_eq!(
        (
            &request["requested_by"],
            &request["via"],
            &request["contact"],
            &request["text"]
        ),
        (
            &json!("claude"),
            &json!("mcp"),
            &json!("John"),
            &json!("see you at 6")
        )
    );
    let expires_in =
        request["expires_at"].as_u64().unwrap() - request["created_at"].as_u64().unwrap();
    assert_eq!(expires_in, 300_000, "APPROVAL_TTL_MS defaults to 5 minutes");
    assert_eq!(
        bob.recv_type("approval_request").await,
        request,
        "every member sees it"
    );
    // Held: nothing reached WhatsApp, and the caller still waits.
    assert!(history_with_john(&mut alice).await.is_empty());
    assert!(!call.is_finished());
    // A direct WebSocket send is not held in `mcp` mode.
    let direct = alice.request(send_cmd("John", "not held")).await;
    assert_eq!(direct["content"]["success"], true, "{direct}");

    let answer = decide(&mut bob, "approve", &request["id"]).await;
    assert_eq!(answer["response_type"], "approval_decided", "{answer}");
    let content = &answer["content"];
    assert_eq!(
        (&content["decision"], &content["id"]),
        (&json!("approved"), &request["id"])
    );
    assert_eq!(content["result"]["success"], true, "{answer}");
    let resolved = alice.recv_type("approval_resolved").await;
    assert_eq!(
        (
            &resolved["id"],
            &resolved["decision"],
            &resolved["decided_by"]
        ),
        (&request["id"], &json!("approved"), &json!("bob"))
    );
    assert_eq!(
        resolved["result"]["message_id"],
        content["result"]["message_id"]
    );

    let result = call.await.unwrap();
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(
        result["structuredContent"]["message_id"],
        content["result"]["message_id"]
    );
    let sent: Vec<_> = history_with_john(&mut alice)
        .await
        .into_iter()
        .filter(|m| m["message"] == "see you at 6")
        .collect();
    assert_eq!(sent.len(), 1, "sent once");
    assert_eq!(sent[0]["by"], "claude", "sent as the caller who asked");
    hub.wait_metric("hub_approvals_total{outcome=\"approved\"}", |v| v == 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_or_expired_send_is_never_sent_and_the_caller_gets_the_code() {
    let hub = holding_hub("mcp", &["--approval-ttl-ms", "1000"]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;

    let call = mcp_send(hub.addr, "rejected one");
    let request = alice.recv_type("approval_request").await;
    let answer = alice
        .request(json!({"type": "reject", "id": request["id"], "reason": "not to John"}))
        .await;
    assert_eq!(answer["content"]["decision"], "rejected", "{answer}");
    assert!(
        answer["content"].get("result").is_none(),
        "nothing was sent"
    );
    let resolved = alice.recv_type("approval_resolved").await;
    assert_eq!(resolved["reason"], "not to John");
    let result = call.await.unwrap();
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(result["structuredContent"]["code"], "approval_rejected");

    // Nobody answers the next one: it expires after APPROVAL_TTL_MS.
    let call = mcp_send(hub.addr, "expired one");
    let request = alice.recv_type("approval_request").await;
    let resolved = alice.recv_type("approval_resolved").await;
    assert_eq!(
        (
            &resolved["id"],
            &resolved["decision"],
            &resolved["decided_by"]
        ),
        (&request["id"], &json!("expired"), &json!("hub"))
    );
    let result = call.await.unwrap();
    assert_eq!(
        result["structuredContent"]["code"], "approval_expired",
        "{result}"
    );
    // Too late to approve it now.
    let late = decide(&mut alice, "approve", &request["id"]).await;
    assert_eq!(
        (&late["type"], &late["code"]),
        (&json!("error"), &json!("approval_not_pending"))
    );
    assert!(
        history_with_john(&mut alice).await.is_empty(),
        "nothing was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_people_decide_and_only_once() {
    let hub = holding_hub("mcp", &["--max-pending-approvals-per-session", "1"]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let (mut agent, _) = register_agent(&hub.ws_url(), "default", "phone").await;

    let call = mcp_send(hub.addr, "once");
    let request = alice.recv_type("approval_request").await;
    let id = &request["id"];
    // The agent is the account's executor, not a person.
    let refused = decide(&mut agent, "approve", id).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // Unknown numbers and bad bodies have their codes.
    let unknown = decide(&mut alice, "approve", &json!(id.as_u64().unwrap() + 100)).await;
    assert_eq!(unknown["code"], "approval_not_pending");
    let bad = alice.request(json!({"type": "reject", "id": "one"})).await;
    assert_eq!(bad["code"], "invalid_field", "{bad}");
    let long = alice
        .request(json!({"type": "reject", "id": id, "reason": "x".repeat(501)}))
        .await;
    assert_eq!(long["code"], "invalid_field", "{long}");
    // One held send at a time here: a second is refused at once.
    let (_, second) = call_tool_as(
        &hub,
        "claude",
        "send_message",
        json!({"contact": "John", "message": "two"}),
    )
    .await;
    assert_eq!(
        second["result"]["structuredContent"]["code"], "approval_queue_full",
        "{second}"
    );

    // The agent carries the approved send out; a second decision is late.
    let id = id.clone();
    let approving = tokio::spawn(async move {
        let approved = decide(&mut alice, "approve", &id).await;
        (approved, decide(&mut alice, "reject", &id).await)
    });
    let execute = agent.recv_type("execute").await;
    assert_eq!(execute["command"]["message"], "once");
    let rid = execute["request_id"].clone();
    agent
        .send_json(json!({"type": "execute_result", "request_id": rid,
            "content": {"success": true, "contact": "John", "message_id": "wamid.1"}}))
        .await;
    let (approved, again) = approving.await.unwrap();
    assert_eq!(
        approved["content"]["result"]["message_id"], "wamid.1",
        "{approved}"
    );
    assert_eq!(again["code"], "approval_not_pending", "{again}");
    let result = call.await.unwrap();
    assert_eq!(
        result["structuredContent"]["message_id"], "wamid.1",
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_mode_holds_what_an_ai_interpreted_from_any_door() {
    let hub = holding_hub("ai", &[]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let (mut bob, _) = WsClient::register(&hub.ws_url(), "default", "bob").await;
    // What a person typed as a command is theirs: not held.
    let direct = bob.request(send_cmd("John", "typed by bob")).await;
    assert_eq!(direct["content"]["success"], true, "{direct}");

    let rid = "ai-1";
    bob.send_json(json!({"type": "whatsapp_ai_command", "request_id": rid,
        "command": "send john a message saying hello from the AI"}))
        .await;
    let request = alice.recv_type("approval_request").await;
    assert_eq!(
        (&request["via"], &request["requested_by"], &request["text"]),
        (&json!("ai"), &json!("bob"), &json!("hello from the AI"))
    );
    let approved = decide(&mut alice, "approve", &request["id"]).await;
    assert_eq!(approved["content"]["result"]["success"], true, "{approved}");
    let answer = bob.answer_to(rid, &json!({})).await;
    assert_eq!(answer["response_type"], "whatsapp_ai_command_result");
    assert_eq!(answer["content"]["success"], true, "{answer}");
    assert_eq!(answer["content"]["result"]["message"], "hello from the AI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deciders_racing_on_two_instances_send_each_held_send_at_most_once() {
    let redis = TestRedis::start();
    let hubs = start_cluster(&redis, &["hub-a", "hub-b"], &["--approval-required", "mcp"]).await;
    let (mut alice, _) = WsClient::register(&hubs[0].ws_url(), "default", "alice").await;
    let (mut bob, _) = WsClient::register(&hubs[1].ws_url(), "default", "bob").await;

    const HELD: usize = 8;
    let calls: Vec<_> = (0..HELD)
        .map(|i| mcp_send(hubs[i % 2].addr, &format!("race {i}")))
        .collect();
    let mut ids = Vec::new();
    for _ in 0..HELD {
        ids.push(bob.recv_type("approval_request").await["id"].clone());
    }
    // alice approves every one on hub-a while bob rejects every one on
    // hub-b, all at once.
    for id in &ids {
        alice
            .send_json(json!({"type": "approve", "id": id, "request_id": format!("a{id}")}))
            .await;
        bob.send_json(json!({"type": "reject", "id": id, "request_id": format!("b{id}")}))
            .await;
    }
    let mut approved = Vec::new();
    for id in &ids {
        let a = alice
            .answer_to(&format!("a{id}"), &json!({"approve": id}))
            .await;
        let b = bob
            .answer_to(&format!("b{id}"), &json!({"reject": id}))
            .await;
        let won: Vec<&Value> = [&a, &b]
            .into_iter()
            .filter(|r| r["type"] == "response")
            .collect();
        assert_eq!(won.len(), 1, "exactly one decision wins: {a} {b}");
        let lost = if a["type"] == "response" { &b } else { &a };
        assert_eq!(lost["code"], "approval_not_pending", "{lost}");
        if won[0]["content"]["decision"] == "approved" {
            approved.push(won[0]["content"]["result"]["message"].clone());
        }
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let succeeded = results.iter().filter(|r| r["isError"] == false).count();
    assert_eq!(
        succeeded,
        approved.len(),
        "callers hear what won: {results:?}"
    );
    assert!(
        results
            .iter()
            .filter(|r| r["isError"] == true)
            .all(|r| r["structuredContent"]["code"] == "approval_rejected"),
        "{results:?}"
    );
    // WhatsApp got exactly the approved ones, once each.
    let mut sent: Vec<Value> = history_with_john(&mut alice)
        .await
        .into_iter()
        .map(|m| m["message"].clone())
        .collect();
    sent.sort_by_key(|m| m.to_string());
    approved.sort_by_key(|m| m.to_string());
    assert_eq!(sent, approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_send_outlives_the_instance_that_held_it() {
    let redis = TestRedis::start();
    let holding = ["--approval-required", "mcp", "--approval-ttl-ms", "3000"];
    let args = member_args(redis.hub_args(), "hub-doomed", &holding);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut doomed = HubProcess::start(&args, &[]).await;
    let hubs = start_cluster(
        &redis,
        &["hub-b"],
        &["--approval-required", "mcp", "--approval-ttl-ms", "3000"],
    )
    .await;
    let (mut bob, _) = WsClient::register(&hubs[0].ws_url(), "default", "bob").await;

    // Two sends held on the doomed instance, whose callers wait there.
    let doomed_addr = doomed.addr();
    for message in ["approved after the crash", "expired after the crash"] {
        let args = json!({"contact": "John", "message": message});
        // The call dies with the instance; its held send does not.
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(mcp_url(doomed_addr))
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": "send_message", "arguments": args}}))
                .send()
                .await;
        });
    }
    let mut requests = Vec::new();
    for _ in 0..2 {
        requests.push(bob.recv_type("approval_request").await);
    }
    requests.sort_by_key(|r| r["id"].as_u64());
    let (to_approve, to_expire) = if requests[0]["text"] == "approved after the crash" {
        (&requests[0], &requests[1])
    } else {
        (&requests[1], &requests[0])
    };
    doomed.kill();

    let approved = decide(&mut bob, "approve", &to_approve["id"]).await;
    assert_eq!(approved["content"]["result"]["success"], true, "{approved}");
    let sent = bob.recv_type("message_event").await;
    assert_eq!(
        (&sent["message"], &sent["by"]),
        (&json!("approved after the crash"), &json!("mcp"))
    );
    // Nobody waits for the other one any more: hub-b's sweep expires it.
    let resolved = loop {
        let event = bob.recv_type("approval_resolved").await;
        if event["id"] == to_expire["id"] {
            break event;
        }
    };
    assert_eq!(resolved["decision"], "expired", "{resolved}");
    let messages: Vec<Value> = history_with_john(&mut bob).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_send_that_failed_keeps_its_error_and_frees_its_key() {
    // No connector: an approved send fails with agent_unavailable (nothing
    // was sent), which must free the idempotency key like any such error.
    let dir = TempDir::new();
    let contacts = dir.write(
        "contacts.json",
        r#"[{"name":"John","phone":"+15550100001"}]"#,
    );
    let contacts = contacts.to_str().expect("utf8");
    let hub = holding_hub("mcp", &["--connector", "none", "--contacts-file", contacts]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let keyed = json!({"contact": "John", "message": "once it works", "idempotency_key": "k-1"});
    let first = {
        let addr = hub.addr;
        let args = keyed.clone();
        tokio::spawn(async move { call_tool_as(&addr, "claude", "send_message", args).await })
    };
    let request = alice.recv_type("approval_request").await;
    let decided = decide(&mut alice, "approve", &request["id"]).await;
    assert_eq!(
        decided["content"]["result"]["code"], "agent_unavailable",
        "{decided}"
    );
    let (_, answer) = first.await.unwrap();
    assert_eq!(
        answer["result"]["structuredContent"]["code"], "agent_unavailable",
        "{answer}"
    );
    // The agent is here now: the retry with the same key is held again
    // (it runs), not the failure replayed.
    let (mut agent, _) = register_agent(&hub.ws_url(), "default", "phone").await;
    agent.recv_type("agent_changed").await;
    let retry = {
        let addr = hub.addr;
        tokio::spawn(async move { call_tool_as(&addr, "claude", "send_message", keyed).await })
    };
    let again = alice.recv_type("approval_request").await;
    assert_ne!(again["id"], request["id"]);
    let approving = tokio::spawn(async move { decide(&mut alice, "approve", &again["id"]).await });
    let execute = agent.recv_type("execute").await;
    agent
        .send_json(
            json!({"type": "execute_result", "request_id": execute["request_id"],
            "content": {"success": true, "contact": "John", "message_id": "wamid.k1"}}),
        )
        .await;
    approving.await.unwrap();
    let (_, answer) = retry.await.unwrap();
    assert_eq!(
        answer["result"]["structuredContent"]["message_id"], "wamid.k1",
        "{answer}"
    );
}
