//! Webhook bodies as Meta POSTs them to the hub (reference §4, §7.7, §8.4,
//! §9, §12, §13), one builder per kind of inbound message plus statuses;
//! each takes the business `phone_number_id` the change concerns and
//! returns the JSON string to sign and post. Messages carry the sender's
//! `contacts[]` profile block and a timestamp of now; [`at`] sets another
//! (a user who last wrote three days ago), [`named`] another profile
//! name, [`with_media`] the media fields the fake Graph API serves,
//! [`two_numbers`] merges two bodies into one POST. [`signature`] computes
//! `X-Hub-Signature-256` with ring, for tests where the signature is not
//! the point (tests/whatsapp.rs checks it with openssl instead).
//!
//! Reached as `support::wa_payloads` (tests/support/mod.rs).
#![allow(dead_code)]

use serde_json::{Value, json};

use super::fake_graph::{PHONE_NUMBER_ID, WABA_ID};
use super::now_secs;

/// The digits-only display number of a business number in webhooks
/// (§13): Meta's example number for the default one, a made-up one
/// derived from the id for others.
pub fn display_number(phone_number_id: &str) -> String {
    if phone_number_id == PHONE_NUMBER_ID {
        return "15550783881".to_string();
    }
    let tail: String = phone_number_id.chars().rev().take(7).collect();
    let tail: String = tail.chars().rev().collect();
    format!("1555{tail:0>7}")
}

/// The sender's default profile name.
fn profile_name(from: &str) -> String {
    format!("User {from}")
}

/// One POST with one change for `phone_number_id` holding `value`.
fn body(phone_number_id: &str, mut value: Value) -> String {
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({
        "display_phone_number": display_number(phone_number_id),
        "phone_number_id": phone_number_id,
    });
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": value}]}],
    })
    .to_string()
}

/// An inbound message of any kind: `message` is `messages[0]` without
/// `from`, `id` and `timestamp`, which this adds.
pub fn message(phone_number_id: &str, wamid: &str, from: &str, mut message: Value) -> String {
    message["from"] = json!(from);
    message["id"] = json!(wamid);
    message["timestamp"] = json!(now_secs().to_string());
    body(
        phone_number_id,
        json!({
            "contacts": [{"profile": {"name": profile_name(from)}, "wa_id": from}],
            "messages": [message],
        }),
    )
}

pub fn text(phone_number_id: &str, wamid: &str, from: &str, text: &str) -> String {
    message(
        phone_number_id,
        wamid,
        from,
        json!({"type": "text", "text": {"body": text}}),
    )
}

/// A media object as §7.7 shows it: no `url` (optional since 2025; see
/// [`with_media`]), a `sha256` placeholder, no caption key when none.
fn media_object(media_id: &str, mime: &str, caption: Option<&str>) -> Value {
    let mut m = json!({
        "mime_type": mime,
        "sha256": "SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=",
        "id": media_id,
    });
    if let Some(c) = caption {
        m["caption"] = json!(c);
    }
    m
}

pub fn image(
    phone_number_id: &str,
    wamid: &str,
    from: &str,
    media_id: &str,
    caption: Option<&str>,
) -> String {
    let image = media_object(media_id, "image/jpeg", caption);
    message(
        phone_number_id,
        wamid,
        from,
        json!({"type": "image", "image": image}),
    )
}

/// A voice note: `type: audio` with `voice: true` (there is no `voice`
/// type), OGG/OPUS.
pub fn voice(phone_number_id: &str, wamid: &str, from: &str, media_id: &str) -> String {
    let mut audio = media_object(media_id, "audio/ogg; codecs=opus", None);
    audio["voice"] = json!(true);
    message(
        phone_number_id,
        wamid,
        from,
        json!({"type": "audio", "audio": audio}),
    )
}

pub fn document(
    phone_number_id: &str,
    wamid: &str,
    from: &str,
    media_id: &str,
    filename: &str,
    mime: &str,
    caption: Option<&str>,
) -> String {
    let mut document = media_object(media_id, mime, caption);
    document["filename"] = json!(filename);
    message(
        phone_number_id,
        wamid,
        from,
        json!({"type": "document", "document": document}),
    )
}

/// The `context` of a reply to the business message `context_wamid`.
fn context(phone_number_id: &str, context_wamid: &str) -> Value {
    json!({"from": display_number(phone_number_id), "id": context_wamid})
}

/// A tap on a reply button of `context_wamid` (§8.4).
pub fn button_reply(
    phone_number_id: &str,
    wamid: &str,
    from: &str,
    context_wamid: &str,
    id: &str,
    title: &str,
) -> String {
    message(
        phone_number_id,
        wamid,
        from,
        json!({
            "context": context(phone_number_id, context_wamid),
            "type": "interactive",
            "interactive": {"type": "button_reply", "button_reply": {"id": id, "title": title}},
        }),
    )
}

/// A row picked in the list of `context_wamid` (§8.4).
pub fn list_reply(
    phone_number_id: &str,
    wamid: &str,
    from: &str,
    context_wamid: &str,
    id: &str,
    title: &str,
    description: Option<&str>,
) -> String {
    let mut reply = json!({"id": id, "title": title});
    if let Some(d) = description {
        reply["description"] = json!(d);
    }
    message(
        phone_number_id,
        wamid,
        from,
        json!({
            "context": context(phone_number_id, context_wamid),
            "type": "interactive",
            "interactive": {"type": "list_reply", "list_reply": reply},
        }),
    )
}

/// A tap on a template's quick-reply button: `type: button` (§8.4).
pub fn template_button(
    phone_number_id: &str,
    wamid: &str,
    from: &str,
    context_wamid: &str,
    payload: &str,
    text: &str,
) -> String {
    message(
        phone_number_id,
        wamid,
        from,
        json!({
            "context": context(phone_number_id, context_wamid),
            "type": "button",
            "button": {"payload": payload, "text": text},
        }),
    )
}

/// A reaction to the business message `message_id`; `None` = removed
/// (Meta then omits `emoji`, §9.1).
pub fn reaction(
    phone_number_id: &str,
    wamid: &str,
    from: &str,
    message_id: &str,
    emoji: Option<&str>,
) -> String {
    let mut reaction = json!({"message_id": message_id});
    if let Some(e) = emoji {
        reaction["emoji"] = json!(e);
    }
    message(
        phone_number_id,
        wamid,
        from,
        json!({"type": "reaction", "reaction": reaction}),
    )
}

/// A location: coordinates as JSON numbers (§9.2); `name` and `address`
/// for a chosen place, neither for a shared current location.
pub fn location(
    phone_number_id: &str,
    wamid: &str,
    from: &str,
    latitude: f64,
    longitude: f64,
    name: Option<&str>,
    address: Option<&str>,
) -> String {
    let mut location = json!({"latitude": latitude, "longitude": longitude});
    if let Some(n) = name {
        location["name"] = json!(n);
    }
    if let Some(a) = address {
        location["address"] = json!(a);
    }
    message(
        phone_number_id,
        wamid,
        from,
        json!({"type": "location", "location": location}),
    )
}

/// A message type the Cloud API does not support (`kind` e.g. `edit`,
/// `poll_update`), with its 131051 error (§12.3).
pub fn unsupported(phone_number_id: &str, wamid: &str, from: &str, kind: &str) -> String {
    message(
        phone_number_id,
        wamid,
        from,
        json!({
            "errors": [error(131_051, "Message type unknown", "Message type is currently not supported.")],
            "type": "unsupported",
            "unsupported": {"type": kind},
        }),
    )
}

/// A webhook error object (`statuses[].errors[]`, `messages[].errors[]`):
/// `message` equals `title` (§12.2).
pub fn error(code: i64, title: &str, details: &str) -> Value {
    json!({
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": "/documentation/business-messaging/whatsapp/support/error-codes",
    })
}

/// The `errors` of a send that failed for the closed 24-hour window.
pub fn errors_131047() -> Value {
    json!([error(
        131_047,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number."
    )])
}

/// A status of a message the business sent (`sent`, `delivered`, `read`,
/// `failed` with `errors`).
pub fn status(
    phone_number_id: &str,
    wamid: &str,
    status: &str,
    recipient: &str,
    errors: Option<Value>,
) -> String {
    let mut st = json!({
        "id": wamid,
        "status": status,
        "timestamp": now_secs().to_string(),
        "recipient_id": recipient,
    });
    if let Some(e) = errors {
        st["errors"] = e;
    }
    body(phone_number_id, json!({"statuses": [st]}))
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).expect("a webhook body built here")
}

/// Every value (change) of a body.
fn values(v: &mut Value) -> impl Iterator<Item = &mut Value> {
    v["entry"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .flat_map(|e| e["changes"].as_array_mut().into_iter().flatten())
        .map(|c| &mut c["value"])
}

/// `body` with every message and status timestamped `unix_secs`.
pub fn at(body: &str, unix_secs: u64) -> String {
    let mut v = parse(body);
    for value in values(&mut v) {
        for key in ["messages", "statuses"] {
            for item in value[key].as_array_mut().into_iter().flatten() {
                item["timestamp"] = json!(unix_secs.to_string());
            }
        }
    }
    v.to_string()
}

/// `body` with the sender's profile name `name`.
pub fn named(body: &str, name: &str) -> String {
    let mut v = parse(body);
    for value in values(&mut v) {
        for c in value["contacts"].as_array_mut().into_iter().flatten() {
            c["profile"]["name"] = json!(name);
        }
    }
    v.to_string()
}

/// `body` with its media object's `url`, `sha256` and `mime_type` taken
/// from what the fake serves for it (`FakeGraph::media_info`): as Meta
/// sends since the 2025 rollout of `url` (§7.7).
pub fn with_media(body: &str, info: &Value) -> String {
    let mut v = parse(body);
    for value in values(&mut v) {
        for m in value["messages"].as_array_mut().into_iter().flatten() {
            let kind = m["type"].as_str().unwrap_or_default().to_string();
            if let Some(obj) = m.get_mut(&kind).filter(|o| o.get("id").is_some()) {
                for key in ["url", "sha256", "mime_type"] {
                    obj[key] = info[key].clone();
                }
            }
        }
    }
    v.to_string()
}

/// One POST holding the changes of `a` then those of `b` in
/// `entry[0].changes` (two numbers of one account, §13).
pub fn two_numbers(a: &str, b: &str) -> String {
    let mut merged = parse(a);
    let b = parse(b);
    let extra = b["entry"][0]["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    merged["entry"][0]["changes"]
        .as_array_mut()
        .expect("changes")
        .extend(extra);
    merged.to_string()
}

/// `X-Hub-Signature-256` of `body` under `app_secret`:
/// `sha256=` + lower-case hex of HMAC-SHA256 (§4).
pub fn signature(app_secret: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, app_secret.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}
