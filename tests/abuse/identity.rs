//! See tests/abuse.rs. Identity: idempotency records bounded per caller
//! and in bytes, keys scoped to their caller and bound to their request,
//! the webhook contact cap, sessions created only by registering (never by
//! a read) and removed when idle.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::fake_graph::{FakeGraph, PHONE_NUMBER_ID};
#[allow(unused_imports)]
use crate::support::*;

/// `hub_limit_shed_total{limit="<limit>"}` right now (0 when absent).
async fn shed(hub: &TestHub, limit: &str) -> f64 {
    hub.metric(&format!("hub_limit_shed_total{{limit=\"{limit}\"}}"))
        .await
        .unwrap_or(0.0)
}

/// POST a REST command to `session`, with a bearer token or an
/// `X-Client-Id`, and an `Idempotency-Key`: status and body.
async fn post_command(
    hub: &TestHub,
    session: &str,
    caller: Caller<'_>,
    key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let url = hub.http_url(&format!("/api/v1/sessions/{session}/commands"));
    let mut req = reqwest::Client::new().post(&url).json(&body);
    req = match caller {
        Caller::Token(token) => req.bearer_auth(token),
        Caller::ClientId(id) => req.header("x-client-id", id),
    };
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[derive(Clone, Copy)]
enum Caller<'a> {
    Token(&'a str),
    ClientId(&'a str),
}

fn list_contacts() -> Value {
    json!({"command": {"action": "list_contacts"}})
}

fn send(contact: &str, message: &str) -> Value {
    json!({"command": {"action": "send", "contact": contact, "message": message}})
}

/// A contacts file whose `list_contacts` answer is far over the default
/// IDEMPOTENCY_MAX_RESULT_BYTES (4096).
fn many_contacts(dir: &TempDir) -> String {
    let contacts: Vec<Value> = (0..200)
        .map(|n| json!({"name": format!("Contact number {n:03}"), "phone": format!("+1555{n:07}")}))
        .collect();
    dir.write("contacts.json", &Value::Array(contacts).to_string())
        .display()
        .to_string()
}

/// The sessions the admin API lists.
async fn listed_sessions(hub: &TestHub) -> Vec<String> {
    let (status, page) =
        http_call(hub, Method::GET, "/api/v1/sessions?limit=500", None, None).await;
    assert_eq!(status, 200, "{page}");
    page["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["session"].as_str().expect("name").to_string())
        .collect()
}

/// 300 `list_contacts` with fresh keys used to keep 300 full answers for
/// 24 h: now an answer over IDEMPOTENCY_MAX_RESULT_BYTES is kept as its
/// digest, and a retry gets the outcome without the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_over_the_byte_cap_are_kept_as_digests() {
    let dir = TempDir::new();
    let file = many_contacts(&dir);
    let hub = TestHub::start(&[
        "--contacts-file",
        &file,
        "--rate-limit-per-sec",
        "1000",
        "--rate-limit-burst",
        "1000",
    ])
    .await;
    let (_member, _) = WsClient::register(&hub.ws_url(), "default", "member").await;
    let caller = Caller::ClientId("lister");
    for n in 0..50 {
        let (status, body) = post_command(
            &hub,
            "default",
            caller,
            Some(&format!("k{n}")),
            list_contacts(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total_count"], 200, "the first answer is whole");
    }
    assert_eq!(shed(&hub, "idempotency_digest").await, 50.0);
    let (status, retry) = post_command(&hub, "default", caller, Some("k7"), list_contacts()).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["success"], true, "{retry}");
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["result_omitted"], true, "{retry}");
    assert!(retry.get("contacts").is_none(), "{retry}");
    assert!(retry["result_bytes"].as_u64().unwrap() > 4096, "{retry}");
}

/// A caller's fresh keys past IDEMPOTENCY_KEYS_PER_CALLER forget its
/// oldest: a retry of an evicted key runs again, a kept one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_keys_past_the_per_caller_cap_forget_the_oldest() {
    let dir = TempDir::new();
    let file = many_contacts(&dir);
    let hub = TestHub::start(&[
        "--contacts-file",
        &file,
        "--idempotency-keys-per-caller",
        "10",
        "--rate-limit-per-sec",
        "1000",
        "--rate-limit-burst",
        "1000",
    ])
    .await;
    let (_member, _) = WsClient::register(&hub.ws_url(), "default", "member").await;
    let caller = Caller::ClientId("lister");
    for n in 0..40 {
        let (status, _) = post_command(
            &hub,
            "default",
            caller,
            Some(&format!("k{n}")),
            list_contacts(),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(shed(&hub, "idempotency_evicted").await, 30.0);
    let (_, oldest) = post_command(&hub, "default", caller, Some("k0"), list_contacts()).await;
    assert_eq!(
        oldest["total_count"], 200,
        "k0 was forgotten: it ran again: {oldest}"
    );
    let (_, newest) = post_command(&hub, "default", caller, Some("k39"), list_contacts()).await;
    assert_eq!(newest["duplicate"], true, "k39 is kept: {newest}");
    // Another caller's keys are its own: its first key evicts none of these.
    let (_, other) = post_command(
        &hub,
        "default",
        Caller::ClientId("other"),
        Some("k39"),
        list_contacts(),
    )
    .await;
    assert_eq!(other["total_count"], 200, "{other}");
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-abuse-identity";

fn token(sub: &str) -> String {
    client_token(SECRET, sub, "default", 600)
}

/// Bob reusing Alice's key used to get her answer (her text, `success:
/// true`) while his message was never sent. A key is its caller's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_callers_key_is_another_key() {
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (mut watcher, _) = WsClient::register_with_token(
        &hub.ws_url(),
        &alice,
        json!({"type": "register", "session": "default", "client_id": "watcher"}),
    )
    .await;
    let (status, first) = post_command(
        &hub,
        "default",
        Caller::Token(&alice),
        Some("order-42"),
        send("john", "alice's secret"),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = post_command(
        &hub,
        "default",
        Caller::Token(&bob),
        Some("order-42"),
        send("jane", "bob's own"),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["success"], true, "{second}");
    assert_eq!(
        second["contact"], "Jane",
        "bob's message was sent: {second}"
    );
    assert_eq!(second["message"], "bob's own", "{second}");
    assert_ne!(second["message_id"], first["message_id"]);
    // Both went out.
    let mut sent = Vec::new();
    while sent.len() < 2 {
        let ev = watcher.recv_type("message_event").await;
        if ev["direction"] == "outgoing" {
            sent.push((ev["by"].clone(), ev["message"].clone()));
        }
    }
    assert_eq!(
        sent,
        [
            (json!("alice"), json!("alice's secret")),
            (json!("bob"), json!("bob's own"))
        ]
    );
}

/// The same key with a different body used to replay the first answer:
/// now it is refused, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused() {
    let hub = TestHub::start(&[]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let caller = Caller::ClientId("alice");
    let (status, _) = post_command(&hub, "default", caller, Some("k"), send("john", "one")).await;
    assert_eq!(status, 200);
    let (status, body) =
        post_command(&hub, "default", caller, Some("k"), send("john", "two")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "idempotency_key_reused", "{body}");
    // Over WebSocket alike.
    let mut reused = ws_command(json!({"action": "send", "contact": "jane", "message": "three"}));
    reused["idempotency_key"] = json!("k");
    let answer = user.request(reused).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "idempotency_key_reused", "{answer}");
    // The same request with the key is still its first answer.
    let (status, again) =
        post_command(&hub, "default", caller, Some("k"), send("john", "one")).await;
    assert_eq!((status, &again["message"]), (200, &json!("one")), "{again}");
    let history = user.request(history_cmd("john")).await;
    assert_eq!(history["content"]["count"], 1, "sent once: {history}");
}

/// Signs a webhook body as Meta does (HMAC-SHA256 with the app secret).
fn signature(body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, APP_SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn inbound(wamid: &str, from: &str, name: &str) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
    "field": "messages",
    "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": name}, "wa_id": from}],
        "messages": [{"from": from, "id": wamid, "timestamp": now_secs().to_string(), "type": "text",
                      "text": {"body": "hello"}}],
    }}]}]})
    .to_string()
}

/// Every webhook sender used to be added to the contacts, past
/// MAX_CONTACTS_PER_SESSION: now the list stops at the cap (its messages
/// are still recorded, under the sender's number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_senders_past_the_contact_cap_are_not_added() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let file = dir.write(
        "contacts.json",
        r#"[{"name": "John", "phone": "+1 555 0100"}, {"name": "Jane", "phone": "+15550102"}]"#,
    );
    let mut args = graph.hub_flags();
    args.extend(
        [
            "--contacts-file",
            &file.display().to_string(),
            "--max-contacts-per-session",
            "5",
        ]
        .map(str::to_string),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hub = TestHub::start(&args).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    for n in 0..8 {
        let body = inbound(
            &format!("wamid.in.{n}"),
            &format!("4915100000{n:02}"),
            &format!("Sender {n}"),
        );
        let status = reqwest::Client::new()
            .post(hub.http_url("/webhooks/whatsapp"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature(&body))
            .body(body)
            .send()
            .await
            .expect("POST webhook")
            .status();
        assert_eq!(status, 200);
    }
    let mut contacts = Vec::new();
    for _ in 0..8 {
        let ev = user.recv_type("message_event").await;
        assert_eq!(ev["direction"], "incoming", "{ev}");
        contacts.push(ev["contact"].as_str().expect("contact").to_string());
    }
    let (status, session) = http_get_json(&hub, "/api/v1/sessions/default").await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["total_count"], 5, "exactly the cap: {session}");
    assert_eq!(shed(&hub, "webhook_contact_cap").await, 5.0);
    // The first three senders got their names, the others their numbers.
    assert_eq!(
        contacts,
        [
            "Sender 0",
            "Sender 1",
            "Sender 2",
            "+491510000003",
            "+491510000004",
            "+491510000005",
            "+491510000006",
            "+491510000007"
        ]
    );
}

/// A REST write used to create any session it named: now it is refused
/// (`SESSION_CREATION=register`), and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_write_to_an_unknown_session_is_refused() {
    let hub = TestHub::start(&[]).await;
    let (status, body) = post_command(
        &hub,
        "ghost",
        Caller::ClientId("x"),
        None,
        send("john", "hi"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "session_not_found", "{body}");
    let (status, body) = post_command(
        &hub,
        "ghost",
        Caller::ClientId("x"),
        None,
        json!({"text": "send john hi"}),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("session_not_found")),
        "{body}"
    );
    assert_eq!(listed_sessions(&hub).await, Vec::<String>::new());
}

/// A `list_contacts` sent by POST used to create its session: a read
/// never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_by_post_leaves_no_session_behind() {
    let hub = TestHub::start(&["--session-creation", "any_write"]).await;
    let (status, body) =
        post_command(&hub, "ghost", Caller::ClientId("x"), None, list_contacts()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "session_not_found", "{body}");
    assert_eq!(listed_sessions(&hub).await, Vec::<String>::new());
    let (status, _) = http_get(&hub, "/api/v1/sessions/ghost").await;
    assert_eq!(status, 404);
}

/// Sessions used to stay forever: one without clients and without
/// activity for SESSION_IDLE_TTL_MS is removed with its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires() {
    let hub = TestHub::start(&["--session-idle-ttl-ms", "1000"]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "brief", "alice").await;
    let sent = user.request(send_cmd("john", "hi")).await;
    assert_eq!(sent["content"]["success"], true, "{sent}");
    user.close().await;
    wait_connections(&hub, 0).await;
    hub.wait_metric(
        "hub_limit_shed_total{limit=\"session_idle_expired\"}",
        |v| v >= 1.0,
    )
    .await;
    assert!(!listed_sessions(&hub).await.contains(&"brief".to_string()));
    let (status, _) = http_get(&hub, "/api/v1/sessions/brief").await;
    assert_eq!(status, 404, "removed with its state");
    // Registering again starts it afresh.
    let (mut again, _) = WsClient::register(&hub.ws_url(), "brief", "alice").await;
    let history = again.request(history_cmd("john")).await;
    assert_eq!(history["content"]["count"], 0, "{history}");
}
