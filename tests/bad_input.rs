//! Standalone mode, bad input: every malformed or misplaced message gets
//! `{"type":"error","code",...}` with its stable code, and the connection
//! stays usable afterwards (proved with a ping each time).

mod common;
mod standalone_support;

use common::{HubProcess, WsClient};
use serde_json::{Value, json};
use standalone_support::*;

/// Sends `frame`, expects exactly one error with `code` (and `request_id`
/// echoed as `rid`), then proves the connection still works.
async fn expect_error(c: &mut WsClient, frame: &str, code: &str, rid: Option<&str>) -> Value {
    c.send_text(frame).await;
    let err = c.recv().await;
    assert_eq!(err["type"], "error", "{frame} → {err}");
    assert_eq!(err["code"], code, "{frame} → {err}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{frame} → {err}"
    );
    match rid {
        Some(rid) => assert_eq!(err["request_id"], rid, "{frame} → {err}"),
        None => assert!(err.get("request_id").is_none(), "{frame} → {err}"),
    }
    let pending = barrier(c).await;
    assert!(
        pending.is_empty(),
        "one error per bad frame, and the connection answers a ping after {frame}: {pending:?}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_code_and_the_connection_survives() {
    // Far more frames than the default rate limit lets through.
    let hub = HubProcess::start(
        &[
            "--rate-limit-per-sec",
            "10000",
            "--rate-limit-burst",
            "10000",
        ],
        &[],
    )
    .await;
    let url = hub.ws_url();
    let (mut peer, _) = WsClient::register(&url, "bad", "peer").await;
    let mut c = WsClient::connect(&url).await;

    // Before register: everything but ping and register is refused.
    for frame in [
        r#"{"type":"whatsapp_command","request_id":"n1","command":{"action":"list_contacts"}}"#,
        r#"{"type":"whatsapp_ai_command","request_id":"n1","command":"list contacts"}"#,
        r#"{"type":"ai_request","request_id":"n1","prompt":"hi"}"#,
        r#"{"type":"broadcast","request_id":"n1","payload":1}"#,
        r#"{"type":"execute_result","request_id":"n1","content":{}}"#,
        r#"{"type":"contacts_update","request_id":"n1","contacts":[]}"#,
        r#"{"type":"incoming_message","request_id":"n1","contact":"a","message":"b"}"#,
    ] {
        expect_error(&mut c, frame, "not_registered", Some("n1")).await;
    }
    // Parse errors come before the registration check.
    expect_error(&mut c, "{nope", "invalid_json", None).await;
    // Invalid registrations.
    for (frame, code) in [
        (r#"{"type":"register","client_id":"   "}"#, "invalid_field"),
        (r#"{"type":"register","session":""}"#, "invalid_field"),
        (
            r#"{"type":"register","session":"a\u0007b"}"#,
            "invalid_field",
        ),
        (r#"{"type":"register","client_id":7}"#, "invalid_field"),
        (
            r#"{"type":"register","capabilities":"whatsapp"}"#,
            "invalid_field",
        ),
    ] {
        expect_error(&mut c, frame, code, None).await;
    }
    let long = "x".repeat(129);
    expect_error(
        &mut c,
        &json!({"type": "register", "client_id": long, "request_id": "long"}).to_string(),
        "invalid_field",
        Some("long"),
    )
    .await;
    let none = barrier(&mut peer).await;
    assert!(
        none.is_empty(),
        "failed registrations join nobody: {none:?}"
    );

    c.send_json(json!({"type": "register", "client_id": "x", "session": "bad"}))
        .await;
    assert_eq!(c.recv().await["type"], "registration_confirmed");
    assert_eq!(c.recv().await["type"], "contact_list_broadcast");
    assert_eq!(peer.recv().await["type"], "client_joined");

    let cases: &[(&str, &str, Option<&str>)] = &[
        // Not JSON / not an object: no request_id can be read.
        ("{nope", "invalid_json", None),
        ("", "invalid_json", None),
        (r#"{"type":"ping""#, "invalid_json", None),
        ("[1,2,3]", "invalid_message", None),
        ("\"ping\"", "invalid_message", None),
        ("42", "invalid_message", None),
        ("null", "invalid_message", None),
        // Envelope.
        (
            r#"{"prompt":"x","request_id":"r1"}"#,
            "missing_field",
            Some("r1"),
        ),
        (
            r#"{"type":null,"request_id":"r2"}"#,
            "invalid_field",
            Some("r2"),
        ),
        (
            r#"{"type":5,"request_id":"r3"}"#,
            "invalid_field",
            Some("r3"),
        ),
        (
            r#"{"type":"ping","request_id":{"a":1}}"#,
            "invalid_field",
            None,
        ),
        (r#"{"type":"ping","request_id":[1]}"#, "invalid_field", None),
        (
            r#"{"type":"ping","request_id":true}"#,
            "invalid_field",
            None,
        ),
        (
            r#"{"type":"teleport","request_id":"r4"}"#,
            "unknown_type",
            Some("r4"),
        ),
        (
            r#"{"type":"execute","request_id":8}"#,
            "unknown_type",
            Some("8"),
        ),
        (
            r#"{"type":"PING","request_id":"r5"}"#,
            "unknown_type",
            Some("r5"),
        ),
        // whatsapp_command.
        (
            r#"{"type":"whatsapp_command","request_id":"w1"}"#,
            "missing_field",
            Some("w1"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w2","command":"send"}"#,
            "invalid_field",
            Some("w2"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w3","command":{}}"#,
            "missing_field",
            Some("w3"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w4","command":{"action":7}}"#,
            "invalid_field",
            Some("w4"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w5","command":{"action":"dance"}}"#,
            "unknown_action",
            Some("w5"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w6","command":{"action":"send","contact":"bob"}}"#,
            "missing_field",
            Some("w6"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w7","command":{"action":"send","message":"hi"}}"#,
            "missing_field",
            Some("w7"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w8","command":{"action":"send","contact":" ","message":"hi"}}"#,
            "invalid_field",
            Some("w8"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w9","command":{"action":"send","contact":"bob","message":""}}"#,
            "invalid_field",
            Some("w9"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w10","command":{"action":"send","contact":"bob","message":5}}"#,
            "invalid_field",
            Some("w10"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w11","command":{"action":"get_history"}}"#,
            "missing_field",
            Some("w11"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w12","command":{"action":"get_history","contact":"bob","limit":0}}"#,
            "invalid_field",
            Some("w12"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w13","command":{"action":"get_history","contact":"bob","limit":1000}}"#,
            "invalid_field",
            Some("w13"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w14","command":{"action":"get_history","contact":"bob","limit":-1}}"#,
            "invalid_field",
            Some("w14"),
        ),
        (
            r#"{"type":"whatsapp_command","request_id":"w15","command":{"action":"get_history","contact":"bob","limit":"5"}}"#,
            "invalid_field",
            Some("w15"),
        ),
        // whatsapp_ai_command, ai_request, broadcast.
        (
            r#"{"type":"whatsapp_ai_command","request_id":"a1"}"#,
            "missing_field",
            Some("a1"),
        ),
        (
            r#"{"type":"whatsapp_ai_command","request_id":"a2","command":{"action":"send"}}"#,
            "invalid_field",
            Some("a2"),
        ),
        (
            r#"{"type":"whatsapp_ai_command","request_id":"a3","command":"reply hi","context":"bob"}"#,
            "invalid_field",
            Some("a3"),
        ),
        (
            r#"{"type":"whatsapp_ai_command","request_id":"a4","command":"reply hi","context":{"contact_list":"bob"}}"#,
            "invalid_field",
            Some("a4"),
        ),
        (
            r#"{"type":"ai_request","request_id":"a5"}"#,
            "missing_field",
            Some("a5"),
        ),
        (
            r#"{"type":"ai_request","request_id":"a6","prompt":42}"#,
            "invalid_field",
            Some("a6"),
        ),
        (
            r#"{"type":"broadcast","request_id":"b1"}"#,
            "missing_field",
            Some("b1"),
        ),
        // Agent-only messages from a plain client.
        (
            r#"{"type":"execute_result","request_id":"x1"}"#,
            "missing_field",
            Some("x1"),
        ),
        (
            r#"{"type":"execute_result","content":{}}"#,
            "missing_field",
            None,
        ),
        (
            r#"{"type":"execute_result","request_id":"call-nope","content":{}}"#,
            "unknown_request",
            Some("call-nope"),
        ),
        (
            r#"{"type":"contacts_update","request_id":"c1","contacts":["A"]}"#,
            "not_agent",
            Some("c1"),
        ),
        (
            r#"{"type":"incoming_message","request_id":"c2","contact":"A","message":"b"}"#,
            "not_agent",
            Some("c2"),
        ),
        // Registering twice.
        (
            r#"{"type":"register","request_id":"again"}"#,
            "already_registered",
            Some("again"),
        ),
        (
            r#"{"type":"register","client_id":"other","session":"other"}"#,
            "already_registered",
            None,
        ),
    ];
    for (frame, code, rid) in cases {
        expect_error(&mut c, frame, code, *rid).await;
    }
    // Binary frames are refused but harmless.
    c.send_binary(vec![0, 1, 2, 255]).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "binary_not_supported", "{e}");
    assert_quiet(&mut c, "one error per binary frame").await;
    c.send_binary(br#"{"type":"ping"}"#.to_vec()).await;
    assert_eq!(c.recv().await["code"], "binary_not_supported");
    assert_quiet(&mut c, "binary JSON is still binary").await;

    // Unknown fields are ignored, not errors.
    let pong = c
        .request(json!({"type": "ping", "extra": {"anything": [1]}}))
        .await;
    assert_eq!(pong["type"], "pong");

    // None of it reached the other client, and the registration stands.
    let pending = barrier(&mut peer).await;
    assert!(
        pending.is_empty(),
        "bad input leaked to the session: {pending:?}"
    );
    let r = c.request(send_cmd("john", "still here")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(peer.recv_type("message_event").await["by"], "x");

    // Errors are counted by code.
    let body = metrics_text(&hub).await;
    for (code, at_least) in [
        ("invalid_json", 4.0),
        ("invalid_message", 4.0),
        ("missing_field", 10.0),
        ("invalid_field", 15.0),
        ("unknown_type", 3.0),
        ("unknown_action", 1.0),
        ("not_registered", 7.0),
        ("already_registered", 2.0),
        ("binary_not_supported", 2.0),
        ("not_agent", 2.0),
        ("unknown_request", 1.0),
    ] {
        let series = format!("hub_errors_total{{code=\"{code}\"}}");
        let v = metric_value(&body, &series);
        assert!(v >= Some(at_least), "{series} = {v:?}");
    }
    assert!(metric_value(&body, "hub_ws_messages_received_total{type=\"invalid\"}") >= Some(30.0));
}
