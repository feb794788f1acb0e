//! Tests of inbound.rs.
use super::*;

fn code_of(text: &str) -> ErrorCode {
    parse_client_message(text).unwrap_err().0.code
}

/// A message's kind is the `type` it arrived with, for every kind.
#[test]
fn each_kind_is_the_wire_type() {
    let frames = [
        r#"{"type":"register","session":"s","client_id":"c"}"#,
        r#"{"type":"whatsapp_command","command":{"action":"list_contacts"}}"#,
        r#"{"type":"whatsapp_ai_command","command":"tell john hi"}"#,
        r#"{"type":"ai_request","prompt":"hi"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"broadcast","payload":{}}"#,
        r#"{"type":"execute_result","content":{}}"#,
        r#"{"type":"contacts_update","contacts":[]}"#,
        r#"{"type":"incoming_message","contact":"John","message":"hi"}"#,
        r#"{"type":"approve","id":3}"#,
        r#"{"type":"reject","id":3,"reason":"no"}"#,
        r#"{"type":"list_approvals"}"#,
    ];
    let mut kinds = Vec::new();
    for frame in frames {
        let wire: Value = serde_json::from_str(frame).unwrap();
        let (msg, _) = parse_client_message(frame).unwrap_or_else(|e| panic!("{frame}: {e:?}"));
        assert_eq!(msg.kind(), wire["type"], "{frame}");
        kinds.push(msg.kind());
    }
    assert_eq!(kinds, ClientMessage::KINDS);
}

#[test]
fn parses_original_messages() {
    let (msg, rid) = parse_client_message(
        r#"{"type":"whatsapp_command","command":{"action":"send","contact":"John","message":"Hello!"}}"#,
    )
    .unwrap();
    assert_eq!(rid, None);
    assert_eq!(
        msg,
        ClientMessage::WhatsAppCommand {
            command: WhatsAppCommand::text("John", "Hello!"),
            idempotency_key: None,
        }
    );
    let (msg, rid) = parse_client_message(
        r#"{"type":"whatsapp_ai_command","command":"send john hi","request_id":7,"context":{"last_contact":"Bob","contact_list":["John",{"name":"Bob","phone":"1"}]}}"#,
    )
    .unwrap();
    assert_eq!(rid.as_deref(), Some("7"));
    match msg {
        ClientMessage::WhatsAppAiCommand { context, .. } => {
            let ctx = context.unwrap();
            assert_eq!(ctx.last_contact.as_deref(), Some("Bob"));
            assert_eq!(ctx.contact_list.unwrap().len(), 2);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn maps_bad_input_to_stable_codes() {
    assert_eq!(code_of("{not json"), ErrorCode::InvalidJson);
    assert_eq!(code_of("[1,2]"), ErrorCode::InvalidMessage);
    assert_eq!(code_of(r#"{"prompt":"x"}"#), ErrorCode::MissingField);
    assert_eq!(code_of(r#"{"type":5}"#), ErrorCode::InvalidField);
    assert_eq!(code_of(r#"{"type":"nope"}"#), ErrorCode::UnknownType);
    assert_eq!(code_of(r#"{"type":"ai_request"}"#), ErrorCode::MissingField);
    assert_eq!(
        code_of(r#"{"type":"ai_request","prompt":3}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code_of(r#"{"type":"whatsapp_command","command":{"action":"dance"}}"#),
        ErrorCode::UnknownAction
    );
    assert_eq!(
        code_of(r#"{"type":"whatsapp_command","command":{"action":"send","contact":"x"}}"#),
        ErrorCode::MissingField
    );
    assert_eq!(
        code_of(r#"{"type":"whatsapp_command","command":"send"}"#),
        ErrorCode::InvalidField
    );
}

#[test]
fn field_limits_are_inclusive() {
    let limits = FieldLimits::default();
    let parse = |v: Value| parse_client_message_with(&v.to_string(), &limits);
    let code = |v: Value| parse(v).unwrap_err().0.code;
    // Characters, not bytes: 4096 two-byte characters fit.
    let send = |text: String| serde_json::json!({"type": "whatsapp_command", "command": {"action": "send", "contact": "a", "message": text}});
    assert!(parse(send("é".repeat(4096))).is_ok());
    assert_eq!(code(send("é".repeat(4097))), ErrorCode::InvalidField);
    let incoming = |text: String| serde_json::json!({"type": "incoming_message", "contact": "a", "message": text});
    assert!(parse(incoming("x".repeat(4096))).is_ok());
    assert_eq!(code(incoming("x".repeat(4097))), ErrorCode::InvalidField);
    let ai = |text: String| serde_json::json!({"type": "whatsapp_ai_command", "command": text});
    assert!(parse(ai("x".repeat(4096))).is_ok());
    assert_eq!(code(ai("x".repeat(4097))), ErrorCode::InvalidField);
    let reg = |name: String, caps: usize| serde_json::json!({"type": "register", "client_name": name, "capabilities": vec!["c"; caps]});
    assert!(parse(reg("n".repeat(64), 8)).is_ok());
    assert_eq!(code(reg("n".repeat(65), 0)), ErrorCode::InvalidField);
    assert_eq!(code(reg("n".into(), 9)), ErrorCode::InvalidField);
    // The request id still comes back with a limit error.
    let mut over = reg("n".into(), 9);
    over["request_id"] = "r9".into();
    assert_eq!(parse(over).unwrap_err().1.as_deref(), Some("r9"));
    // REST commands are bounded the same way.
    let cmd =
        |n: usize| serde_json::json!({"action": "send", "contact": "a", "message": "m".repeat(n)});
    assert!(parse_whatsapp_command(cmd(4096)).is_ok());
    assert_eq!(
        parse_whatsapp_command(cmd(4097)).unwrap_err().code,
        ErrorCode::InvalidField
    );
}

#[test]
fn send_template_and_idempotency_keys() {
    let (msg, _) = parse_client_message(
        r#"{"type":"whatsapp_command","idempotency_key":"k1","command":{"action":"send_template","contact":"John","template":"hello_world","language":"en_US"}}"#,
    )
    .unwrap();
    assert_eq!(
        msg,
        ClientMessage::WhatsAppCommand {
            command: WhatsAppCommand::SendTemplate {
                contact: "John".into(),
                template: "hello_world".into(),
                language: "en_US".into(),
                components: None,
            },
            idempotency_key: Some("k1".into()),
        }
    );
    assert_eq!(
        code_of(
            r#"{"type":"whatsapp_command","command":{"action":"send_template","contact":"John","template":"","language":"en"}}"#
        ),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code_of(
            r#"{"type":"whatsapp_command","command":{"action":"send_template","contact":"John","template":"t","language":"en","components":{}}}"#
        ),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code_of(r#"{"type":"whatsapp_ai_command","command":"x","idempotency_key":""}"#),
        ErrorCode::InvalidField
    );
}

#[test]
fn request_id_survives_errors() {
    let (err, rid) = parse_client_message(r#"{"type":"bogus","request_id":"r1"}"#).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownType);
    assert_eq!(rid.as_deref(), Some("r1"));
}

#[test]
fn reports_and_broadcasts_run_in_order_commands_concurrently() {
    let exec = |text: &str| parse_client_message(text).unwrap().0.execution();
    assert_eq!(exec(r#"{"type":"ping"}"#), Execution::Immediate);
    assert_eq!(exec(r#"{"type":"register"}"#), Execution::Immediate);
    assert_eq!(
        exec(r#"{"type":"broadcast","payload":1}"#),
        Execution::InOrder
    );
    assert_eq!(
        exec(r#"{"type":"contacts_update","contacts":[]}"#),
        Execution::InOrder
    );
    assert_eq!(
        exec(r#"{"type":"incoming_message","contact":"a","message":"b"}"#),
        Execution::InOrder
    );
    assert_eq!(
        exec(r#"{"type":"ai_request","prompt":"hi"}"#),
        Execution::Concurrent
    );
    assert_eq!(
        exec(r#"{"type":"execute_result","content":1}"#),
        Execution::Concurrent
    );
    let (msg, _) = parse_client_message(r#"{"type":"whatsapp_ai_command","command":"x"}"#).unwrap();
    assert_eq!(msg.kind(), "whatsapp_ai_command");
    assert_eq!(msg.execution(), Execution::Concurrent);
}
