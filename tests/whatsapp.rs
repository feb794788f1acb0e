//! The WhatsApp Cloud API connector against a fake Graph API
//! (`support::fake_graph`), its signed webhooks (signatures computed by
//! `openssl`, not by the code under test), delivery statuses, connector
//! choice (`none`, an agent dropping with `cloud_api`), idempotent sends
//! across a 3-instance cluster, and late agent answers.

use crate::support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_graph::{Behavior, FakeGraph, PHONE_NUMBER_ID, TOKEN, VERSION};
use support::*;

const CONTACTS: &str =
    r#"[{"name": "John", "phone": "+1 555 0100"}, {"name": "Jane", "phone": "+15550102"}]"#;
const WEBHOOK: &str = "/webhooks/whatsapp";

/// A cloud_api hub on `graph` with John and Jane as contacts.
async fn cloud_hub(graph: &FakeGraph, dir: &TempDir, extra: &[&str]) -> TestHub {
    let file = dir.write("contacts.json", CONTACTS);
    let mut args: Vec<String> = graph.hub_flags();
    args.push("--contacts-file".into());
    args.push(file.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestHub::start(&args).await
}

/// `sha256=<hex>` as computed by `openssl dgst -sha256 -hmac`.
fn openssl_signature(secret: &str, body: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl failed");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    // "SHA2-256(stdin)= <hex>" (older: "(stdin)= <hex>")
    let hex = text
        .trim()
        .rsplit("= ")
        .next()
        .expect("a digest")
        .to_string();
    assert_eq!(hex.len(), 64, "{text}");
    format!("sha256={hex}")
}

async fn post_webhook(hub: &impl Endpoint, body: &str, signature: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(hub.http_url(WEBHOOK))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    req.send().await.expect("POST webhook").status().as_u16()
}

async fn post_signed(hub: &impl Endpoint, body: &str) {
    let sig = openssl_signature(APP_SECRET, body);
    assert_eq!(post_webhook(hub, body, Some(&sig)).await, 200, "{body}");
}

fn value_with(inner: Value) -> String {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
    });
    for (k, v) in inner.as_object().expect("object") {
        value[k] = v.clone();
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": value}]}]})
    .to_string()
}

fn inbound(wamid: &str, from: &str, name: &str, text: &str) -> String {
    value_with(json!({
        "contacts": [{"profile": {"name": name}, "wa_id": from}],
        "messages": [{"from": from, "id": wamid, "timestamp": now_secs().to_string(), "type": "text",
                      "text": {"body": text}}],
    }))
}

fn status(wamid: &str, status: &str, recipient: &str, errors: Option<Value>) -> String {
    let mut st = json!({"id": wamid, "status": status, "timestamp": now_secs().to_string(),
                        "recipient_id": recipient});
    if let Some(e) = errors {
        st["errors"] = e;
    }
    value_with(json!({"statuses": [st]}))
}

fn send_key(contact: &str, message: &str, key: &str) -> Value {
    let mut v = send_cmd(contact, message);
    v["idempotency_key"] = json!(key);
    v
}

/// The next message_event with this direction.
async fn next_message(c: &mut WsClient, direction: &str) -> Value {
    loop {
        let ev = c.recv_type("message_event").await;
        if ev["direction"] == direction {
            return ev;
        }
    }
}

async fn history(c: &mut WsClient, contact: &str) -> Vec<Value> {
    let r = c.request(history_cmd(contact)).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    r["content"]["messages"]
        .as_array()
        .expect("messages")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_go_to_the_graph_api_and_the_wamid_is_the_message_id() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;

    let r = user.request(send_cmd("john", "Hello from the hub")).await;
    let c = &r["content"];
    assert_eq!(c["success"], true, "{r}");
    assert_eq!(c["executed_by"], "cloud_api", "{r}");
    assert_eq!(c["message_id"], "wamid.fake.1", "{r}");
    let calls = graph.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].path,
        format!("/{VERSION}/{PHONE_NUMBER_ID}/messages")
    );
    assert_eq!(
        calls[0].headers["authorization"].to_str().unwrap(),
        format!("Bearer {TOKEN}")
    );
    assert_eq!(
        calls[0].body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
               "to": "15550100", "type": "text",
               "text": {"preview_url": false, "body": "Hello from the hub"}})
    );
    let ev = next_message(&mut user, "outgoing").await;
    assert_eq!(ev["message_id"], "wamid.fake.1", "{ev}");
    assert_eq!(ev["executed_by"], "cloud_api", "{ev}");

    // Templates: the only thing allowed outside the 24-hour window.
    let r = user
        .request(ws_command(
            json!({"action": "send_template", "contact": "jane",
            "template": "hello_world", "language": "en_US",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Jane"}]}]}),
        ))
        .await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(r["content"]["message_id"], "wamid.fake.2", "{r}");
    assert_eq!(
        graph.calls()[1].body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
               "to": "15550102", "type": "template",
               "template": {"name": "hello_world", "language": {"code": "en_US"},
                            "components": [{"type": "body",
                                            "parameters": [{"type": "text", "text": "Jane"}]}]}})
    );

    let h = history(&mut user, "john").await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["message_id"], "wamid.fake.1");
    assert_eq!(h[0]["executed_by"], "cloud_api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_errors_map_to_codes_and_retries_stay_within_the_deadline() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    // Three retries pause 200 + 400 + 800 ms, each up to doubled by jitter
    // (2.8 s at worst): the deadline leaves room for all three.
    let hub = cloud_hub(&graph, &dir, &["--agent-timeout-ms", "4000"]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let fails_with = |r: &Value, code: &str| {
        assert_eq!(r["type"], "response", "{r}");
        assert_eq!(r["content"]["success"], false, "{r}");
        assert_eq!(r["content"]["code"], code, "{r}");
    };

    // 131047 synchronously: not retried, the message says to use a template.
    graph.script([Behavior::error(400, 131047)]);
    let r = user.request(send_cmd("john", "late reply")).await;
    fails_with(&r, "outside_conversation_window");
    assert!(
        r["content"]["error"].as_str().unwrap().contains("template"),
        "{r}"
    );
    assert_eq!(graph.call_count(), 1);

    // Rate limits (130429, 131056, HTTP 429) are retried, then succeed.
    graph.script([
        Behavior::error(400, 130429),
        Behavior::error(400, 131056),
        Behavior::error(429, 4),
    ]);
    let r = user.request(send_cmd("john", "eventually")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(graph.call_count(), 5);

    // Still rate limited at the deadline: connector_rate_limited.
    graph.set_default(Behavior::error(400, 131056));
    let r = user.request(send_cmd("john", "never")).await;
    fails_with(&r, "connector_rate_limited");
    let after_rate_limit = graph.call_count();
    assert!(after_rate_limit > 6, "retried: {after_rate_limit}");

    // 5xx with no body: retried, then connector_unavailable.
    graph.set_default(Behavior::Empty(500));
    let r = user.request(send_cmd("john", "down")).await;
    fails_with(&r, "connector_unavailable");
    assert!(graph.call_count() > after_rate_limit + 1);
    graph.set_default(Behavior::Accept);
    graph.script([Behavior::Empty(503), Behavior::Empty(500)]);
    let r = user.request(send_cmd("john", "after a blip")).await;
    assert_eq!(r["content"]["success"], true, "{r}");

    // Code 190 is not retried.
    let before = graph.call_count();
    graph.script([Behavior::error(401, 190)]);
    let r = user.request(send_cmd("john", "expired token")).await;
    fails_with(&r, "connector_auth_failed");
    assert_eq!(graph.call_count(), before + 1);

    // Only the two accepted sends are in history.
    let h = history(&mut user, "john").await;
    let sent: Vec<&str> = h.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(sent, ["eventually", "after a blip"], "{h:?}");

    // A wrong token: the fake's real 401 / 190.
    let bad = TestHub::start(&[
        "--connector",
        "cloud_api",
        "--whatsapp-access-token",
        "wrong-token",
        "--whatsapp-phone-number-id",
        PHONE_NUMBER_ID,
        "--whatsapp-app-secret",
        APP_SECRET,
        "--whatsapp-verify-token",
        VERIFY_TOKEN,
        "--whatsapp-base-url",
        &graph.base_url(),
        "--contacts-file",
        &dir.path().join("contacts.json").display().to_string(),
    ])
    .await;
    let (mut c, _) = WsClient::register(&bad.ws_url(), "default", "bob").await;
    fails_with(
        &c.request(send_cmd("john", "x")).await,
        "connector_auth_failed",
    );

    // Nothing listening: network errors, retried, then connector_unavailable.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let file = dir.path().join("contacts.json").display().to_string();
    let down = TestHub::start(&[
        "--connector",
        "cloud_api",
        "--whatsapp-access-token",
        TOKEN,
        "--whatsapp-phone-number-id",
        PHONE_NUMBER_ID,
        "--whatsapp-app-secret",
        APP_SECRET,
        "--whatsapp-verify-token",
        VERIFY_TOKEN,
        "--whatsapp-base-url",
        &closed,
        "--contacts-file",
        &file,
        "--agent-timeout-ms",
        "1000",
    ])
    .await;
    let (mut c, _) = WsClient::register(&down.ws_url(), "default", "bob").await;
    fails_with(
        &c.request(send_cmd("john", "x")).await,
        "connector_unavailable",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &["--agent-timeout-ms", "5000"]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    graph.script([Behavior::Error {
        status: 429,
        code: 130429,
        retry_after: Some(1),
    }]);
    let r = user.request(send_cmd("john", "patience")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    let calls = graph.calls();
    assert_eq!(calls.len(), 2);
    let waited = calls[1].at.duration_since(calls[0].at);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_handshake_checks_the_verify_token() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let ok = format!(
        "{WEBHOOK}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
    );
    let r = reqwest::get(hub.http_url(&ok)).await.expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), "1158201444");
    for bad in [
        format!("{WEBHOOK}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1"),
        format!("{WEBHOOK}?hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"),
        format!("{WEBHOOK}?hub.mode=subscribe&hub.challenge=1"),
        WEBHOOK.to_string(),
    ] {
        assert_eq!(hub.get(&bad).await.0, 403, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_are_checked_before_anything_is_processed() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;

    let forged = inbound("wamid.forged", "16505551234", "Mallory", "forged");
    let zeros = format!("sha256={}", "0".repeat(64));
    let other_secret = openssl_signature("not-the-app-secret", &forged);
    let unprefixed = openssl_signature(APP_SECRET, &forged).replace("sha256=", "");
    for sig in [
        None,
        Some(zeros.as_str()),
        Some(&other_secret),
        Some(&unprefixed),
    ] {
        assert_eq!(post_webhook(&hub, &forged, sig).await, 401, "{sig:?}");
    }
    // The signature covers the exact bytes: one more space breaks it.
    let good_sig = openssl_signature(APP_SECRET, &forged);
    assert_eq!(
        post_webhook(&hub, &format!("{forged} "), Some(&good_sig)).await,
        401
    );

    // A valid one (signed by openssl): the first message anyone sees.
    let genuine = inbound(
        "wamid.genuine",
        "16505551234",
        "Sheena Nelson",
        "Does it come in blue?",
    );
    post_signed(&hub, &genuine).await;
    let contacts = user.recv_type("contact_list_broadcast").await;
    assert!(
        names(&contacts["contacts"]).contains(&"Sheena Nelson".to_string()),
        "{contacts}"
    );
    let ev = next_message(&mut user, "incoming").await;
    assert_eq!(ev["message"], "Does it come in blue?", "{ev}");
    assert_eq!(ev["message_id"], "wamid.genuine", "{ev}");
    assert_eq!(ev["contact"], "Sheena Nelson", "{ev}");
    assert_eq!(ev["executed_by"], "cloud_api", "{ev}");

    // `reply` answers that contact, through the Cloud API.
    let r = user.request(ai_command("reply yes, in blue")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    // The message sends only: the AI path also shows "typing…" (a read
    // receipt on the same endpoint) in the background.
    let sent = graph.sends().pop().expect("a send");
    assert_eq!(sent["to"], "16505551234");
    assert_eq!(sent["text"]["body"], "yes, in blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_progress_in_history_and_131047_fails_asynchronously() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let r = user.request(send_cmd("john", "tracked")).await;
    let wamid = r["content"]["message_id"].as_str().unwrap().to_string();

    for st in ["sent", "delivered", "read"] {
        post_signed(&hub, &status(&wamid, st, "15550100", None)).await;
        let ev = user.recv_type("message_status").await;
        assert_eq!(
            (
                ev["message_id"].as_str(),
                ev["status"].as_str(),
                ev["contact"].as_str()
            ),
            (Some(wamid.as_str()), Some(st), Some("John")),
            "{ev}"
        );
        let h = history(&mut user, "john").await;
        assert_eq!(h[0]["status"], st, "{h:?}");
    }
    // Late or repeated statuses never move it backwards, and say nothing.
    post_signed(&hub, &status(&wamid, "delivered", "15550100", None)).await;
    post_signed(&hub, &status(&wamid, "read", "15550100", None)).await;

    // 131047 after a 200: the failed status says to use a template.
    let r = user.request(send_cmd("jane", "too late")).await;
    let failed_id = r["content"]["message_id"].as_str().unwrap().to_string();
    let errors = json!([{"code": 131047, "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}]);
    post_signed(
        &hub,
        &status(&failed_id, "failed", "15550102", Some(errors)),
    )
    .await;
    let ev = user.recv_type("message_status").await;
    // The first status event after the repeats is the failure: the repeats
    // were not announced.
    assert_eq!(ev["message_id"], failed_id.as_str(), "{ev}");
    assert_eq!(ev["status"], "failed", "{ev}");
    assert_eq!(ev["error"]["code"], "outside_conversation_window", "{ev}");
    assert_eq!(ev["error"]["upstream_code"], 131047, "{ev}");
    assert!(
        ev["error"]["message"]
            .as_str()
            .unwrap()
            .contains("template"),
        "{ev}"
    );
    let h = history(&mut user, "jane").await;
    assert_eq!(h[0]["status"], "failed", "{h:?}");
    assert_eq!(h[0]["status_error"]["code"], "outside_conversation_window");
    let h = history(&mut user, "john").await;
    assert_eq!(h[0]["status"], "read", "{h:?}");
}

/// Three Cloud API hubs on one Redis (a cluster behind no balancer).
async fn three_cloud_hubs(
    graph: &FakeGraph,
    dir: &TempDir,
    redis: &RedisServer,
    ids: [&str; 3],
    extra: &[&str],
) -> Vec<TestHub> {
    let url = redis.url();
    let mut hubs = Vec::new();
    for id in ids {
        let mut args = vec![
            "--redis-url",
            &url,
            "--instance-id",
            id,
            "--heartbeat-ms",
            "200",
            "--presence-ttl-ms",
            "1000",
        ];
        args.extend_from_slice(extra);
        hubs.push(cloud_hub(graph, dir, &args).await);
    }
    hubs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_webhooks_reach_every_instance_once() {
    let redis = RedisServer::start();
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hubs = three_cloud_hubs(&graph, &dir, &redis, ["wa-a", "wa-b", "wa-c"], &[]).await;
    let mut clients = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        let (c, _) = WsClient::register(&hub.ws_url(), "default", &format!("c{i}")).await;
        clients.push(c);
    }
    post_signed(
        &hubs[0],
        &inbound("wamid.one", "4915112345678", "Klaus", "Hallo"),
    )
    .await;
    for c in clients.iter_mut() {
        let ev = next_message(c, "incoming").await;
        assert_eq!(
            (
                ev["message_id"].as_str(),
                ev["contact"].as_str(),
                ev["message"].as_str()
            ),
            (Some("wamid.one"), Some("Klaus"), Some("Hallo")),
            "{ev}"
        );
    }
    // Meta redelivers the same message to another instance: processed once.
    post_signed(
        &hubs[1],
        &inbound("wamid.one", "4915112345678", "Klaus", "Hallo"),
    )
    .await;
    post_signed(
        &hubs[2],
        &inbound("wamid.two", "4915112345678", "Klaus", "Noch da?"),
    )
    .await;
    for c in clients.iter_mut() {
        let ev = next_message(c, "incoming").await;
        assert_eq!(
            ev["message_id"], "wamid.two",
            "the redelivery was not processed: {ev}"
        );
    }
    let h = history(&mut clients[2], "klaus").await;
    let ids: Vec<&str> = h
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["wamid.one", "wamid.two"]);
}

const IDEM_SECRET: &str = "0123456789abcdef0123456789abcdef-whatsapp-idem";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_sends_with_one_key_over_three_instances_send_once() {
    let redis = RedisServer::start();
    let graph = FakeGraph::start().await;
    graph.set_delay(Duration::from_millis(300));
    let dir = TempDir::new();
    let hubs = three_cloud_hubs(
        &graph,
        &dir,
        &redis,
        ["idem-a", "idem-b", "idem-c"],
        &["--auth-jwt-secret", IDEM_SECRET],
    )
    .await;
    // One caller (a key is its caller's: the token's `sub`) on twenty
    // connections.
    let shop = client_token(IDEM_SECRET, "shop", "default", 600);
    let mut clients = Vec::new();
    for i in 0..20 {
        let (c, _) = WsClient::register_with_token(
            &hubs[i % 3].ws_url(),
            &shop,
            json!({"type": "register", "session": "default", "client_id": format!("u{i}")}),
        )
        .await;
        clients.push(c);
    }
    let mut sent = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut body = send_key("john", "exactly once", "order-42");
        body["request_id"] = json!(format!("k{i}"));
        c.send_json(body.clone()).await;
        sent.push(body);
    }
    let mut answers = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let a = c.answer_to(&format!("k{i}"), &sent[i]).await;
        assert_eq!(a["type"], "response", "{a}");
        answers.push(a["content"].clone());
    }
    assert_eq!(graph.call_count(), 1, "one upstream POST");
    assert_eq!(answers[0]["success"], true, "{}", answers[0]);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // Over REST, later, the same caller's key still answers the first result.
    let r = reqwest::Client::new()
        .post(hubs[1].http_url("/api/v1/sessions/default/commands"))
        .bearer_auth(&shop)
        .header("Idempotency-Key", "order-42")
        .json(&json!({"command": {"action": "send", "contact": "john", "message": "exactly once"}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    // REST and WebSocket keys share one namespace per caller and session.
    let body: Value = r.json().await.expect("json");
    assert_eq!(body, answers[0]);
    assert_eq!(graph.call_count(), 1);
    let h = history(&mut clients[0], "john").await;
    assert_eq!(h.len(), 1, "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_none_without_an_agent_sends_nothing() {
    let dir = TempDir::new();
    let file = dir.write("contacts.json", CONTACTS);
    let hub = TestHub::start(&[
        "--connector",
        "none",
        "--contacts-file",
        &file.display().to_string(),
    ])
    .await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "s", "alice").await;
    let r = user.request(send_cmd("john", "anyone?")).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "agent_unavailable", "{r}");
    assert!(history(&mut user, "john").await.is_empty());
    // With an agent, it executes.
    let (mut agent, _) = register_agent(&hub.ws_url(), "s", "phone").await;
    agent.recv_type("agent_changed").await;
    user.send_json(
        json!({"type": "whatsapp_command", "request_id": "via-agent",
        "command": {"action": "send", "contact": "john", "message": "now"}}),
    )
    .await;
    let exec = agent.recv_type("execute").await;
    let call = exec["request_id"].as_str().unwrap().to_string();
    agent
        .send_json(json!({"type": "execute_result", "request_id": call,
            "content": {"success": true, "contact": "John", "message_id": "wamid.agent.1"}}))
        .await;
    // The requester sees the message_event before its answer.
    let (events, r) = until_answer(&mut user, "via-agent").await;
    assert_eq!(r["content"]["success"], true, "{r}");
    let ev = events
        .iter()
        .find(|e| e["type"] == "message_event")
        .expect("a message_event");
    assert_eq!(ev["executed_by"], "agent", "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_dropping_with_cloud_api_leaves_sends_to_the_cloud_api() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "default", "alice").await;
    let (mut agent, _) = register_agent(&url, "default", "phone").await;
    user.recv_type("agent_changed").await;

    user.send_json(json!({"type": "whatsapp_command", "request_id": "a1",
        "command": {"action": "send", "contact": "john", "message": "via the phone"}}))
        .await;
    let exec = agent.recv_type("execute").await;
    let call = exec["request_id"].as_str().unwrap().to_string();
    agent
        .send_json(json!({"type": "execute_result", "request_id": call,
            "content": {"success": true, "contact": "John", "message_id": "wamid.phone.1"}}))
        .await;
    until_answer(&mut user, "a1").await;
    assert_eq!(graph.call_count(), 0);

    agent.close().await;
    let changed = user.recv_type("agent_changed").await;
    assert_eq!(changed["client_id"], Value::Null, "{changed}");
    for n in 0..3 {
        let r = user.request(send_cmd("john", &format!("after {n}"))).await;
        assert_eq!(r["content"]["executed_by"], "cloud_api", "{r}");
        assert!(
            r["content"]["message_id"]
                .as_str()
                .unwrap()
                .starts_with("wamid.fake."),
            "never the simulator: {r}"
        );
    }
    assert_eq!(graph.call_count(), 3);
    let h = history(&mut user, "john").await;
    let by: Vec<&str> = h
        .iter()
        .map(|e| e["executed_by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["agent", "cloud_api", "cloud_api", "cloud_api"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_execute_result_is_recorded() {
    let hub = TestHub::start(&["--agent-timeout-ms", "300"]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "late", "user").await;
    let (mut agent, _) = register_agent(&url, "late", "phone").await;
    agent.recv_type("agent_changed").await;
    user.send_json(json!({"type": "whatsapp_command", "request_id": "slow",
        "command": {"action": "send", "contact": "john", "message": "finally"}}))
        .await;
    let exec = agent.recv_type("execute").await;
    let call = exec["request_id"].as_str().unwrap().to_string();
    let (events, err) = until_answer(&mut user, "slow").await;
    assert_eq!(err["code"], "agent_timeout", "{err}");
    assert!(
        events.iter().all(|e| e["type"] != "message_event"),
        "{events:?}"
    );

    agent
        .send_json(json!({"type": "execute_result", "request_id": call,
            "content": {"success": true, "contact": "John", "message_id": "wamid.late"}}))
        .await;
    let ev = next_message(&mut user, "outgoing").await;
    assert_eq!(
        (
            ev["message_id"].as_str(),
            ev["executed_by"].as_str(),
            ev["by"].as_str()
        ),
        (Some("wamid.late"), Some("agent"), Some("user")),
        "{ev}"
    );
    // In history too (read from the store once the agent is gone, since
    // get_history goes to the agent while there is one).
    agent.close().await;
    user.recv_type("agent_changed").await;
    let h = history(&mut user, "john").await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["message"], "finally");
    assert_eq!(h[0]["executed_by"], "agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_is_never_logged() {
    // (A missing required setting exits 2 naming it: tests/process.rs.)
    // A working hub at debug level: sends and failures never log the token.
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let file = dir.write("contacts.json", CONTACTS);
    let base = graph.base_url();
    let file = file.display().to_string();
    let hub = HubProcess::start(
        &["--contacts-file", &file, "--agent-timeout-ms", "1000"],
        &[
            ("RUST_LOG", "debug"),
            ("WHATSAPP_CONNECTOR", "cloud_api"),
            ("WHATSAPP_ACCESS_TOKEN", TOKEN),
            ("WHATSAPP_PHONE_NUMBER_ID", PHONE_NUMBER_ID),
            ("WHATSAPP_APP_SECRET", APP_SECRET),
            ("WHATSAPP_VERIFY_TOKEN", VERIFY_TOKEN),
            ("WHATSAPP_BASE_URL", &base),
        ],
    )
    .await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let r = user.request(send_cmd("john", "logged?")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    graph.set_default(Behavior::Empty(500));
    let r = user.request(send_cmd("john", "failing")).await;
    assert_eq!(r["content"]["code"], "connector_unavailable", "{r}");
    hub.wait_for_log("cloud api", Duration::from_secs(5)).await;
    assert!(
        !hub.log().contains(TOKEN),
        "the access token leaked into the log"
    );
}
