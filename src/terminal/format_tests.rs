//! Tests of format.rs.
use serde_json::json;

use super::*;

fn frame(text: &str) -> String {
    format_frame(text, &Names::default())
}

fn fmt(v: Value) -> String {
    frame(&v.to_string())
}

#[test]
fn message_statuses() {
    let names = Names::default();
    let f = |v: Value| format_event(&v, &names);
    assert_eq!(
        f(
            json!({"type":"message_status","message_id":"wamid.1","status":"delivered","contact":"John","timestamp":1})
        ),
        "  ✓✓ delivered (message to John)"
    );
    assert_eq!(
        f(
            json!({"type":"message_status","message_id":"wamid.1","status":"failed",
                 "error":{"code":"outside_conversation_window","message":"use a template"},"timestamp":1})
        ),
        "  ✗ failed: use a template (message wamid.1)"
    );
    assert_eq!(
        f(
            json!({"type":"message_event","direction":"outgoing","contact":"John",
                 "message":"hi","by":"me","status":"read"})
        ),
        "→ John: hi (by me) ✓✓ read"
    );
}

#[test]
fn message_events() {
    assert_eq!(
        fmt(
            json!({"type":"message_event","direction":"outgoing","contact":"John",
            "message":"hello","message_id":"m1","timestamp":1,"by":"terminal-1"})
        ),
        "→ John: hello (by terminal-1)"
    );
    assert_eq!(
        fmt(
            json!({"type":"message_event","direction":"incoming","contact":"John",
            "message":"hi","message_id":"m2","timestamp":2,"by":"John"})
        ),
        "← John: hi"
    );
    assert_eq!(
        fmt(
            json!({"type":"message_event","direction":"incoming","contact":"Family",
            "message":"hi","by":"Mom"})
        ),
        "← Family: hi (from Mom)"
    );
}

#[test]
fn client_ids_show_as_names_once_known() {
    let mut names = Names::default();
    names.learn(
        &json!({"type":"registration_confirmed","client_id":"c1","client_name":"t1",
        "clients":[{"client_id":"c1","client_name":"t1"},{"client_id":"c2","client_name":"bob"}]}),
    );
    names.learn(&json!({"type":"client_joined","client_id":"c3","client_name":"carol"}));
    names.learn(&json!({"type":"client_joined","client_id":5}));
    let sent = |by: &str| {
        format_event(
            &json!({"type":"message_event","direction":"outgoing","contact":"John",
                "message":"hello","by":by}),
            &names,
        )
    };
    assert_eq!(sent("c1"), "→ John: hello (by t1)");
    assert_eq!(sent("c2"), "→ John: hello (by bob)");
    assert_eq!(sent("c3"), "→ John: hello (by carol)");
    assert_eq!(sent("c9"), "→ John: hello (by c9)");
    assert_eq!(
        format_event(
            &json!({"type":"broadcast","from":"c2","payload":"hi"}),
            &names
        ),
        "broadcast from bob: hi"
    );
}

#[test]
fn presence_and_contacts() {
    assert_eq!(
        fmt(
            json!({"type":"client_joined","client_id":"alice","client_name":"alice",
            "instance":"x","capabilities":[],"timestamp":1})
        ),
        "+ alice joined (instance x)"
    );
    assert_eq!(
        fmt(
            json!({"type":"client_joined","client_id":"a1","client_name":"alice",
            "instance":"x","capabilities":["whatsapp"],"timestamp":1})
        ),
        "+ alice joined (a1, instance x, agent)"
    );
    assert_eq!(
        fmt(json!({"type":"client_left","client_id":"a1","client_name":"alice","instance":"x"})),
        "- alice left"
    );
    assert_eq!(
        fmt(
            json!({"type":"contact_list_broadcast","contacts":[{"name":"John","phone":"1"},
            {"name":"Jane"}],"total_count":2,"timestamp":1})
        ),
        "contacts: John, Jane (2)"
    );
    let many: Vec<Value> = (0..40).map(|i| json!({"name": format!("c{i}")})).collect();
    let line = fmt(json!({"type":"contact_list_broadcast","contacts":many,"total_count":40}));
    assert!(line.ends_with("c29, … (40)"), "{line}");
}

#[test]
fn command_responses() {
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_command_result","request_id":"2",
            "content":{"success":true,"contact":"John","message":"hi","message_id":"m"}})
        ),
        "[#2] ok: sent to John: hi"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_command_result","request_id":3,
            "content":{"success":true,"contacts":[{"name":"John"},{"name":"Jane"}],"total_count":2}})
        ),
        "[#3] ok: contacts: John, Jane (2)"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_command_result",
            "content":{"success":true,"contact":"John","count":2,"messages":[
                {"direction":"outgoing","contact":"John","message":"hello","by":"t1"},
                {"direction":"incoming","contact":"John","message":"hi","by":"John"}]}})
        ),
        "ok: history with John (2):\n    → John: hello (by t1)\n    ← John: hi"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_command_result",
            "content":{"success":true,"contact":"John","messages":[]}})
        ),
        "ok: no messages with John"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_command_result","request_id":"4",
            "content":{"success":false,"error":"`jo` matches several contacts",
                "code":"ambiguous_contact","candidates":["John","Joan"]}})
        ),
        "[#4] failed [ambiguous_contact]: `jo` matches several contacts (candidates: John, Joan)"
    );
}

#[test]
fn ai_responses() {
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_ai_command_result","request_id":"1",
            "content":{"success":true,"provider":"rules","cached":false,
                "interpretation":{"action":"send","contact":"John","message":"hello"},
                "result":{"success":true,"contact":"John","message":"hello","message_id":"m"}}})
        ),
        "[#1] ai (rules) understood send John \"hello\": ok: sent to John: hello"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_ai_command_result",
            "content":{"success":false,"provider":"rules","interpretation":{"action":"send","contact":"Zed","message":"x"},
                "result":{"success":false,"code":"contact_not_found","error":"no contact Zed"}}})
        ),
        "ai (rules) understood send Zed \"x\": failed [contact_not_found]: no contact Zed"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_ai_command_result",
            "content":{"success":false,"code":"unparseable_command","error":"cannot understand",
                "interpretation":{"raw":"?"}}})
        ),
        "ai: failed [unparseable_command]: cannot understand"
    );
    assert_eq!(
        fmt(json!({"type":"response","response_type":"ai_response","content":{"text":"hey"}})),
        "ai: hey"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"broadcast_sent","request_id":"9","content":{"success":true}})
        ),
        "[#9] broadcast sent"
    );
    assert_eq!(
        fmt(json!({"type":"response","response_type":"new_thing","content":{"a":1}})),
        "new_thing: {\"a\":1}"
    );
}

#[test]
fn errors_pongs_broadcasts_agents() {
    assert_eq!(
        fmt(json!({"type":"error","code":"rate_limited","message":"slow down","request_id":"5"})),
        "[#5] error [rate_limited]: slow down"
    );
    assert_eq!(
        fmt(json!({"type":"error","code":"invalid_json","message":"bad"})),
        "error [invalid_json]: bad"
    );
    assert_eq!(
        fmt(json!({"type":"pong","timestamp":1,"request_id":"6"})),
        "[#6] pong"
    );
    assert_eq!(
        fmt(json!({"type":"broadcast","from":"t2","payload":{"text":"lunch?"},"timestamp":1})),
        "broadcast from t2: lunch?"
    );
    assert_eq!(
        fmt(json!({"type":"broadcast","from":"t2","payload":[1,2]})),
        "broadcast from t2: [1,2]"
    );
    assert_eq!(
        fmt(json!({"type":"agent_changed","client_id":"phone","instance":"x","timestamp":1})),
        "agent: phone (instance x) now executes commands"
    );
    assert_eq!(
        fmt(json!({"type":"agent_changed","client_id":null,"instance":null})),
        "agent: none; the hub's connector executes commands"
    );
}

#[test]
fn held_sends_say_how_to_decide_them() {
    assert_eq!(
        fmt(
            json!({"type":"approval_request","id":3,"session":"s","requested_by":"claude",
            "via":"mcp","action":"send","contact":"John","text":"hi\u{1b}[2J",
            "created_at":1,"expires_at":2})
        ),
        "⏸ #3 claude (MCP) wants to send John: hi\\u{1b}[2J — /approve 3 or /reject 3"
    );
    assert_eq!(
        fmt(
            json!({"type":"approval_resolved","id":3,"decision":"approved","decided_by":"t1",
            "decided_at":2,"result":{"success":true,"message_id":"m1"}})
        ),
        "✔ #3 approved by t1"
    );
    assert_eq!(
        fmt(
            json!({"type":"approval_resolved","id":3,"decision":"rejected","decided_by":"t1",
            "decided_at":2,"reason":"not now"})
        ),
        "✘ #3 rejected by t1: not now"
    );
    assert_eq!(
        fmt(
            json!({"type":"approval_resolved","id":4,"decision":"expired","decided_by":"hub",
            "decided_at":2})
        ),
        "✘ #4 expired (nobody approved it in time)"
    );
    assert_eq!(
        fmt(
            json!({"type":"approval_resolved","id":5,"decision":"approved","decided_by":"t1",
            "decided_at":2,"result":{"success":false,"error":"no contact Jon","code":"contact_not_found"}})
        ),
        "✔ #5 approved by t1 — the send failed: no contact Jon"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"approvals","content":{"success":true,
            "approvals":[{"id":7,"requested_by":"claude","via":"ai","contact":"Ann","text":"yo"}]}})
        ),
        "waiting for approval:\n⏸ #7 claude (AI) wants to send Ann: yo — /approve 7 or /reject 7"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"approvals","content":{"success":true,"approvals":[]}})
        ),
        "no sends wait for approval"
    );
}

#[test]
fn anything_else_is_printed_raw_without_panicking() {
    assert_eq!(frame("not json"), "? not json");
    assert_eq!(frame("[1,2]"), "? [1,2]");
    assert_eq!(frame("null"), "? null");
    assert_eq!(
        frame(r#"{"type":"surprise","x":1}"#),
        r#"? {"type":"surprise","x":1}"#
    );
    // Known types with missing or wrongly typed fields fall back to raw.
    for text in [
        r#"{"type":"message_event"}"#,
        r#"{"type":"message_event","contact":1,"message":[],"direction":"sideways"}"#,
        r#"{"type":"response"}"#,
        r#"{"type":"response","response_type":"whatsapp_command_result"}"#,
        r#"{"type":"error","code":5}"#,
        r#"{"type":"client_joined"}"#,
        r#"{"type":"client_left","client_id":7}"#,
        r#"{"type":"broadcast"}"#,
        r#"{"type":"contact_list_broadcast","contacts":"John"}"#,
        r#"{"type":7}"#,
    ] {
        assert!(frame(text).starts_with("? "), "{text}");
    }
    // Odd but parseable content degrades gracefully.
    for content in [
        json!(null),
        json!("x"),
        json!([1]),
        json!({"success": "yes"}),
    ] {
        for rt in ["whatsapp_command_result", "whatsapp_ai_command_result"] {
            let line = fmt(json!({"type":"response","response_type":rt,"content":content.clone()}));
            assert!(!line.is_empty());
        }
    }
}

#[test]
fn wire_text_cannot_break_lines_or_inject_escapes() {
    let line = fmt(
        json!({"type":"message_event","direction":"incoming","contact":"Eve",
        "message":"hi\n← John: fake\u{1b}[2J","by":"Eve"}),
    );
    assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
    assert!(
        line.starts_with("← Eve: hi\\n← John: fake\\u{1b}[2J"),
        "{line}"
    );
    assert_eq!(clean("plain ünïcode"), "plain ünïcode");
}

#[test]
fn banner_lists_the_others() {
    let confirmed = json!({"type":"registration_confirmed","client_id":"c1","client_name":"t1",
        "session":"s","instance":"hub-1","agent":false,
        "clients":[{"client_id":"c1","client_name":"t1","instance":"hub-1"},
                   {"client_id":"alice","client_name":"alice","instance":"hub-2"}]});
    let text = banner("ws://h:1", &confirmed);
    assert!(
        text.starts_with("connected to ws://h:1 as t1 (c1), session s, instance hub-1\n"),
        "{text}"
    );
    assert!(
        text.contains("also connected: alice (instance hub-2)"),
        "{text}"
    );
    let alone = banner(
        "ws://h:1",
        &json!({"client_id":"c1","clients":[{"client_id":"c1"}]}),
    );
    assert!(alone.contains("nobody else is connected"), "{alone}");
    let line = format_event(&confirmed, &Names::default());
    assert_eq!(line, "registered as c1 in session s");
}

/// A `message_event` with `content` flattened into it, formatted with the
/// hub at `http://hub:8002`.
fn content_line(direction: &str, message: &str, content: Value) -> String {
    let mut event = json!({"type":"message_event","direction":direction,"contact":"John",
        "message":message,"by":if direction == "incoming" { "John" } else { "t1" }});
    for (k, v) in content.as_object().unwrap() {
        event[k] = v.clone();
    }
    let names = Names::with_origin(content::http_origin("ws://hub:8002/ws"));
    format_event(&event, &names)
}

#[test]
fn media_shows_kind_size_caption_and_an_absolute_url() {
    assert_eq!(
        content_line(
            "incoming",
            "[image] sunset",
            json!({"media":{"kind":"image","id":"m1","url":"/api/v1/sessions/default/media/r1",
                "mime_type":"image/jpeg","size":12595,"caption":"sunset"}})
        ),
        "← John: image (12.3 KB) \"sunset\" http://hub:8002/api/v1/sessions/default/media/r1"
    );
    assert_eq!(
        content_line(
            "incoming",
            "[audio]",
            json!({"media":{"kind":"audio","voice":true,"url":"/api/v1/sessions/s/media/v"}})
        ),
        "← John: voice note http://hub:8002/api/v1/sessions/s/media/v"
    );
    assert_eq!(
        content_line(
            "outgoing",
            "[document] report.pdf",
            json!({"media":{"kind":"document","id":"u1","filename":"report.pdf","size":1288490,
                "url":"/api/v1/sessions/s/media/u1"},"status":"delivered"})
        ),
        "→ John: document report.pdf (1.2 MB) http://hub:8002/api/v1/sessions/s/media/u1 (by t1) ✓✓ delivered"
    );
    // Sent by link: the link is what there is to show.
    assert_eq!(
        content_line(
            "outgoing",
            "[video]",
            json!({"media":{"kind":"video","link":"https://cdn.example/v.mp4"}})
        ),
        "→ John: video https://cdn.example/v.mp4 (by t1)"
    );
    assert_eq!(
        content_line("incoming", "[sticker]", json!({"media":{"kind":"sticker"}})),
        "← John: sticker"
    );
}

#[test]
fn picked_replies_reactions_locations_and_cards() {
    assert_eq!(
        content_line(
            "incoming",
            "Yes",
            json!({"reply":{"source":"button","id":"yes","title":"Yes","context_message_id":"w1"}})
        ),
        "← John: ↩ picked \"Yes\" (yes)"
    );
    assert_eq!(
        content_line(
            "incoming",
            "9:00",
            json!({"reply":{"source":"list","id":"slot-9","title":"9:00","description":"early"}})
        ),
        "← John: ↩ picked \"9:00\" (slot-9) — early"
    );
    assert_eq!(
        content_line(
            "incoming",
            "[reaction 👍]",
            json!({"reaction":{"message_id":"wamid.1","emoji":"👍"}})
        ),
        "← John: reacted 👍 to message wamid.1"
    );
    assert_eq!(
        content_line(
            "incoming",
            "[reaction removed]",
            json!({"reaction":{"message_id":"wamid.1","emoji":""}})
        ),
        "← John: removed the reaction to message wamid.1"
    );
    assert_eq!(
        content_line(
            "incoming",
            "[location]",
            json!({"location":{"latitude":52.520008,"longitude":13.404954,
                "name":"Brandenburger Tor","address":"Pariser Platz"}})
        ),
        "← John: location 52.520008,13.404954 Brandenburger Tor, Pariser Platz"
    );
    assert_eq!(
        content_line(
            "incoming",
            "[contacts]",
            json!({"contacts":[{"name":"Ann Lee","phones":["+1 555 0101","+1 555 0102"]},
                {"name":"Bob"}]})
        ),
        "← John: shared contacts: Ann Lee (+1 555 0101, +1 555 0102); Bob"
    );
    assert_eq!(
        content_line(
            "incoming",
            "[unsupported poll_update]",
            json!({"unsupported":"poll_update"})
        ),
        "← John: unsupported message type poll_update"
    );
}

#[test]
fn offered_options_are_numbered_under_the_text() {
    assert_eq!(
        content_line(
            "outgoing",
            "Coming?",
            json!({"interactive":{"type":"buttons","buttons":[{"id":"yes","title":"Yes"},
                {"id":"no","title":"No"}]},"status":"sent"})
        ),
        "→ John: Coming? (by t1) ✓ sent\n    1. Yes\n    2. No"
    );
    let list = json!({"interactive":{"type":"list","button":"Times","sections":[
        {"title":"Morning","rows":[{"id":"9","title":"9:00","description":"early"},{"id":"10","title":"10:00"}]},
        {"rows":[{"id":"14","title":"14:00"}]}]}});
    assert_eq!(
        content_line("outgoing", "When?", list.clone()),
        "→ John: When? (by t1)\n    list \"Times\":\n    Morning:\n    1. 9:00 — early\n    2. 10:00\n    3. 14:00"
    );
    // In a history, an entry's options go one level deeper.
    let mut entry = json!({"direction":"outgoing","contact":"John","message":"When?","by":"t1"});
    entry["interactive"] = list["interactive"].clone();
    let history = fmt(
        json!({"type":"response","response_type":"whatsapp_command_result",
        "content":{"success":true,"contact":"John","messages":[entry]}}),
    );
    assert!(
        history.starts_with("ok: history with John (1):\n    → John: When? (by t1)\n        list"),
        "{history}"
    );
}

#[test]
fn odd_content_falls_back_to_the_summary_and_stays_on_its_line() {
    // A media kind from a newer hub: the summary is shown.
    assert_eq!(
        content_line(
            "incoming",
            "[hologram]",
            json!({"media":{"kind":"hologram"}})
        ),
        "← John: [hologram]"
    );
    assert_eq!(
        content_line("incoming", "hi", json!({"reaction":"👍"})),
        "← John: hi"
    );
    let line = content_line(
        "incoming",
        "x",
        json!({"media":{"kind":"document","filename":"a\n← Bob: fake\u{1b}[2J.pdf",
            "caption":"c\r\n","url":"/api/v1/sessions/s/media/r\n"},
            "contacts":[{"name":"\u{1b}]0;title\u{7}","phones":["\n"]}]}),
    );
    assert!(
        !line.contains('\n') && !line.contains('\u{1b}') && !line.contains('\r'),
        "{line}"
    );
    let options = content_line(
        "outgoing",
        "pick",
        json!({"interactive":{"type":"buttons","buttons":[{"id":"a","title":"A\n← Bob: fake"}]}}),
    );
    assert_eq!(options.lines().count(), 2, "{options}");
}

#[test]
fn sizes_and_origins() {
    use content::{http_origin, human_size};
    assert_eq!(human_size(0), "0 B");
    assert_eq!(human_size(1023), "1023 B");
    assert_eq!(human_size(1024), "1.0 KB");
    assert_eq!(human_size(12_595), "12.3 KB");
    assert_eq!(human_size(1_048_535), "1.0 MB");
    assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GB");
    assert_eq!(
        http_origin("ws://127.0.0.1:8002").as_deref(),
        Some("http://127.0.0.1:8002")
    );
    assert_eq!(
        http_origin("wss://user:secret@hub.example:443/ws?x=1").as_deref(),
        Some("https://hub.example")
    );
    assert_eq!(
        http_origin("ws://[::1]:9/").as_deref(),
        Some("http://[::1]:9")
    );
    assert_eq!(http_origin("ftp://h/"), None);
    assert_eq!(http_origin("not a url"), None);
    // Without an origin a hub path is shown as it is.
    let line = format_event(
        &json!({"type":"message_event","direction":"incoming","contact":"J","message":"[image]",
            "by":"J","media":{"kind":"image","url":"/api/v1/sessions/s/media/r"}}),
        &Names::default(),
    );
    assert_eq!(line, "← J: image /api/v1/sessions/s/media/r");
}

#[test]
fn templates_are_a_table() {
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_command_result","request_id":"3",
            "content":{"success":true,"templates":[
                {"name":"hello_world","language":"en_US","status":"APPROVED","category":"UTILITY","parameters":0},
                {"name":"order_update","language":"de","status":"PENDING","category":"MARKETING","parameters":2}]}})
        ),
        "[#3] ok: 2 templates:\n\
         \x20   name          language  status    category   parameters\n\
         \x20   hello_world   en_US     APPROVED  UTILITY    0\n\
         \x20   order_update  de        PENDING   MARKETING  2"
    );
    assert_eq!(
        fmt(
            json!({"type":"response","response_type":"whatsapp_command_result",
            "content":{"success":true,"templates":[]}})
        ),
        "ok: no templates"
    );
}
