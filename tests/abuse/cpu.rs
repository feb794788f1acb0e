//! Bounded CPU per request (issue 19): every name and text field is capped
//! before any work is done with it (contacts, AI contexts and prompts,
//! `contacts_update`, `request_id`), and fuzzy matching stops at its
//! budget however many long names a session holds. See tests/abuse.rs.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

/// POSTs a command to session `s` over REST: status and body.
async fn rest_command(hub: &TestHub, body: Value) -> (u16, Value) {
    http_call(
        hub,
        Method::POST,
        "/api/v1/sessions/s/commands",
        None,
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_name_over_max_name_chars_is_refused_before_any_matching() {
    let hub = TestHub::start(&["--session-creation", "any_write"]).await;
    // The reproduction: sends to a 30,000-character name took /health to
    // 36.9 s. Now each is refused at parsing, REST and WebSocket alike.
    let long = "j".repeat(30_000);
    let (status, body) = rest_command(
        &hub,
        json!({"command": {"action": "send", "contact": long, "message": "hi"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_field", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("command.contact"),
        "{body}"
    );
    let (mut ws, _) = WsClient::register(&hub.ws_url(), "s", "alice").await;
    let answer = ws
        .request(ws_command(
            json!({"action": "get_history", "contact": "j".repeat(129)}),
        ))
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    // At the limit a name is fine (and unknown).
    let answer = ws
        .request(ws_command(
            json!({"action": "get_history", "contact": "j".repeat(128)}),
        ))
        .await;
    assert_eq!(answer["type"], "response", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ai_context_over_its_caps_is_refused() {
    let hub = TestHub::start(&["--session-creation", "any_write"]).await;
    let (mut ws, _) = WsClient::register(&hub.ws_url(), "s", "alice").await;
    // A caller-chosen contact list is what the matcher would run over.
    let many: Vec<String> = (0..3_000).map(|i| format!("contact {i}")).collect();
    let answer = ws
        .request(
            json!({"type": "whatsapp_ai_command", "command": "send contact 7 hi",
                        "context": {"contact_list": many}}),
        )
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("context"),
        "{answer}"
    );
    let answer = ws
        .request(
            json!({"type": "whatsapp_ai_command", "command": "send bob hi",
                        "context": {"last_contact": "b".repeat(500)}}),
        )
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    // ai_request: its prompt and its free-form context.
    let answer = ws
        .request(json!({"type": "ai_request", "prompt": "p".repeat(5_000)}))
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    let answer = ws
        .request(json!({"type": "ai_request", "prompt": "hi",
                        "context": {"blob": "b".repeat(40 * 1024)}}))
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    // REST takes the same context rule.
    let (status, body) = rest_command(
        &hub,
        json!({"text": "send bob hi", "context": {"contact_list": ["x".repeat(200)]}}),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_field")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_update_names_are_bounded() {
    // Frames up to 4 MiB, so the list's own bound is what refuses it.
    let hub = TestHub::start(&["--max-message-bytes", "4194304"]).await;
    let (mut agent, _) = register_agent(&hub.ws_url(), "s", "phone").await;
    let answer = agent
        .request(json!({"type": "contacts_update",
                        "contacts": [{"name": "Ann", "phone": "1"}, {"name": "n".repeat(129)}]}))
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    // A list too large for the clients' queues (1 MiB) is refused whole.
    let big: Vec<Value> = (0..5_000)
        .map(|i| json!({"name": format!("{i:0>120}"), "phone": "+1555"}))
        .collect();
    let answer = agent
        .request(json!({"type": "contacts_update", "contacts": big}))
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("OUTBOUND_QUEUE_BYTES"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_over_its_cap_is_refused_and_not_echoed() {
    let hub = TestHub::start(&[]).await;
    let mut ws = WsClient::connect(&hub.ws_url()).await;
    ws.send_json(json!({"type": "ping", "request_id": "r".repeat(10_000)}))
        .await;
    let answer = ws.recv().await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    assert!(
        answer.get("request_id").is_none_or(Value::is_null),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzy_matching_stops_at_its_budget() {
    // An operator's long contact names (MAX_NAME_CHARS raised to 1000):
    // 4,000 names alike but for their last digits, and a query alike to
    // all of them, is the matcher's worst case.
    let dir = TempDir::new();
    let contacts: Vec<Value> = (0..4_000)
        .map(|i| json!({"name": format!("{}{i:0>6}", "x".repeat(994)), "phone": format!("+{i}")}))
        .collect();
    let file = dir.write("contacts.json", &Value::from(contacts).to_string());
    let hub = TestHub::start(&[
        "--contacts-file",
        &file.display().to_string(),
        "--max-name-chars",
        "1000",
        "--session-creation",
        "any_write",
    ])
    .await;
    let (status, body) = rest_command(
        &hub,
        json!({"command": {"action": "send", "contact": "x".repeat(1000), "message": "hi"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "contact_not_found", "{body}");
    assert!(
        body["candidates"].as_array().is_none_or(|c| c.len() <= 20),
        "{body}"
    );
    hub.wait_metric("hub_limit_shed_total{limit=\"fuzzy_budget\"}", |v| v >= 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_file_name_over_max_name_chars_is_a_startup_error() {
    let dir = TempDir::new();
    let file = dir.write(
        "contacts.json",
        &json!([{"name": "n".repeat(200), "phone": "+1"}]).to_string(),
    );
    let err = TestHub::try_start(&["--contacts-file", &file.display().to_string()])
        .await
        .err()
        .expect("refused");
    assert!(err.contains("CONTACTS_FILE"), "{err}");
    assert!(err.contains("MAX_NAME_CHARS"), "{err}");
}
