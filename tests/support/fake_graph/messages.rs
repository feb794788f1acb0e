//! `POST /{version}/{phone_number_id}/messages`: sends of every kind the
//! hub may use (text, template, image/video/document/audio/sticker,
//! interactive, reaction, location, contacts), validated as §1, §7.6, §8,
//! §9 and §11.1 describe, the 24-hour window (§12), and read receipts with
//! the optional typing indicator (§10).

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Behavior, GraphRequest, Inner, digits, errors, now_secs};

/// Why a send is refused: a required parameter is missing (400 code 100,
/// as Graph answers `text.body` missing), or a value breaks a rule (400
/// code 131009).
enum Refusal {
    Required(String),
    Invalid(String),
}

impl Refusal {
    fn response(self) -> Response {
        match self {
            Refusal::Required(p) => errors::param(&format!("The parameter {p} is required.")),
            Refusal::Invalid(details) => errors::not_valid(&details),
        }
        .into_response()
    }
}

type Checked<T = ()> = Result<T, Refusal>;

fn invalid<T>(details: impl Into<String>) -> Checked<T> {
    Err(Refusal::Invalid(details.into()))
}

/// `v` holds when `rule` does; otherwise 131009 with `details`.
fn ensure(rule: bool, details: impl FnOnce() -> String) -> Checked {
    if rule { Ok(()) } else { invalid(details()) }
}

const WINDOW_SECS: u64 = 24 * 60 * 60;
const MEDIA_KINDS: [&str; 5] = ["image", "video", "document", "audio", "sticker"];

pub(super) async fn messages(
    State(inner): State<Arc<Inner>>,
    Path((_version, phone)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let number = inner.script.record(uri.path().to_string(), &headers, &body);
    inner.record(GraphRequest::new("POST", &uri, &headers, json.clone()));
    // A read receipt is not a send: it consumes no scripted behaviour.
    let receipt = json.get("status").is_some();
    let (behavior, delay) = if receipt {
        (Behavior::Accept, inner.state().delay)
    } else {
        inner.script.next(Behavior::Accept)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Err(r) = inner.authorize_number(&phone, &headers, "post") {
        return r.into_response();
    }
    if receipt {
        return read_receipt(&inner, &phone, &json);
    }
    let template = match validate(&inner, &phone, &json) {
        Ok(template) => template,
        Err(refusal) => return refusal.response(),
    };
    if !template && window_closed(&inner, &phone, &json) {
        return errors::re_engagement().into_response();
    }
    match behavior {
        Behavior::Accept => {
            let to = json["to"].clone();
            let mut message = json!({"id": format!("wamid.fake.{number}")});
            if template {
                // §11.1: template sends also say how pacing took them.
                message["message_status"] = json!("accepted");
            }
            Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [message],
            }))
            .into_response()
        }
        Behavior::Error {
            status,
            code,
            retry_after,
        } => {
            let mut r = errors::scripted(status, code).into_response();
            if let Some(secs) = retry_after {
                r.headers_mut().insert(
                    "retry-after",
                    secs.to_string().parse().expect("header value"),
                );
            }
            r
        }
        Behavior::Empty(status) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
    }
}

/// §10: `{"success": true}` for a message received on this number.
fn read_receipt(inner: &Inner, phone: &str, json: &Value) -> Response {
    if json["messaging_product"] != "whatsapp" {
        return errors::param("The parameter messaging_product is required.").into_response();
    }
    if json["status"] != "read" {
        return errors::not_valid("status must be \"read\"").into_response();
    }
    let Some(wamid) = json["message_id"].as_str() else {
        return errors::param("The parameter message_id is required.").into_response();
    };
    let known = inner
        .state()
        .inbound
        .contains(&(phone.to_string(), wamid.to_string()));
    if !known {
        return errors::not_valid(&format!(
            "message_id {wamid} is not a message received on phone number {phone}"
        ))
        .into_response();
    }
    Json(json!({"success": true})).into_response()
}

/// When the window check is on: no inbound from `to` on `phone` within
/// 24 hours (or none known).
fn window_closed(inner: &Inner, phone: &str, json: &Value) -> bool {
    let state = inner.state();
    if !state.window_check {
        return false;
    }
    let to = digits(json["to"].as_str().unwrap_or_default());
    match state.last_inbound.get(&(phone.to_string(), to)) {
        Some(&at) => now_secs().saturating_sub(at) > WINDOW_SECS,
        None => true,
    }
}

/// Checks a send; true when it is a template (allowed outside the window).
fn validate(inner: &Inner, phone: &str, json: &Value) -> Checked<bool> {
    if json["messaging_product"] != "whatsapp" {
        return Err(Refusal::Required("messaging_product".into()));
    }
    if !json["to"].is_string() {
        return Err(Refusal::Required("to".into()));
    }
    // `type` defaults to text (§1); a body with only `template` is taken
    // as one, as the fake always did.
    let kind = match json["type"].as_str() {
        Some(kind) => kind,
        None if json.get("template").is_some() => "template",
        None => "text",
    };
    match kind {
        "text" => {
            // The 4096-character limit is unverified (§1): not enforced.
            str_field(json, "/text/body", "text['body']")?;
        }
        "template" => {
            str_field(json, "/template/name", "template['name']")?;
        }
        k if MEDIA_KINDS.contains(&k) => media(inner, phone, k, &json[k])?,
        "interactive" => interactive(inner, phone, &json["interactive"])?,
        "reaction" => {
            str_field(json, "/reaction/message_id", "reaction['message_id']")?;
            // "" removes the reaction (§9.1).
            str_field(json, "/reaction/emoji", "reaction['emoji']")?;
        }
        "location" => {
            for (key, bound) in [("latitude", 90.0), ("longitude", 180.0)] {
                let v = &json["location"][key];
                if v.is_null() {
                    return Err(Refusal::Required(format!("location['{key}']")));
                }
                // Strings in Meta's examples, numbers in the Node SDK.
                let n = v.as_f64().or_else(|| v.as_str()?.trim().parse().ok());
                ensure(n.is_some_and(|n: f64| n.abs() <= bound), || {
                    format!("location {key} must be a number within ±{bound}, got {v}")
                })?;
            }
        }
        "contacts" => {
            let cards = json["contacts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            ensure((1..=257).contains(&cards.len()), || {
                format!("contacts must hold 1 to 257 cards, got {}", cards.len())
            })?;
            for card in cards {
                str_field(
                    card,
                    "/name/formatted_name",
                    "contacts['name']['formatted_name']",
                )?;
            }
        }
        other => return invalid(format!("message type {other} is not supported")),
    }
    Ok(kind == "template")
}

/// A required string at `pointer` (empty allowed).
fn str_field<'a>(json: &'a Value, pointer: &str, name: &str) -> Checked<&'a str> {
    json.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::Required(name.to_string()))
}

/// An optional string of at most `max` characters.
fn optional_text(v: &Value, what: &str, max: usize) -> Checked {
    match v {
        Value::Null => Ok(()),
        Value::String(s) => ensure(s.chars().count() <= max, || {
            format!(
                "{what} is {} characters, at most {max} allowed",
                s.chars().count()
            )
        }),
        other => invalid(format!("{what} must be a string, got {other}")),
    }
}

/// A required, non-empty string of at most `max` characters.
fn required_text<'a>(v: &'a Value, what: &str, max: usize) -> Checked<&'a str> {
    let Some(s) = v.as_str().filter(|s| !s.is_empty()) else {
        return invalid(format!("{what} is required"));
    };
    optional_text(v, what, max)?;
    Ok(s)
}

/// A media object (§7.6): exactly one of `id` (uploaded on this number) or
/// `link`; no caption on audio and stickers; captions ≤ 1024.
fn media(inner: &Inner, phone: &str, kind: &str, obj: &Value) -> Checked {
    if !obj.is_object() {
        return Err(Refusal::Required(kind.to_string()));
    }
    match (&obj["id"], &obj["link"]) {
        (Value::Null, Value::Null) | (Value::String(_), Value::String(_)) => {
            return invalid(format!("{kind} needs exactly one of id or link"));
        }
        (Value::String(id), Value::Null) => {
            let ours = inner
                .state()
                .media
                .get(id)
                .is_some_and(|m| m.phone == phone);
            ensure(ours, || {
                format!("{kind} id {id} is not media uploaded on phone number {phone}")
            })?;
        }
        (Value::Null, Value::String(link)) => ensure(
            link.starts_with("http://") || link.starts_with("https://"),
            || format!("{kind} link must be an HTTP(S) URL, got {link}"),
        )?,
        _ => return invalid(format!("{kind} id and link must be strings")),
    }
    if matches!(kind, "audio" | "sticker") {
        ensure(obj.get("caption").is_none(), || {
            format!("caption is not allowed on {kind}")
        })?;
    }
    optional_text(&obj["caption"], &format!("{kind} caption"), 1024)
}

/// §8.1–§8.3: reply buttons, lists, call-to-action URL buttons. Every
/// refusal is 131009 with what was wrong.
fn interactive(inner: &Inner, phone: &str, obj: &Value) -> Checked {
    if !obj.is_object() {
        return invalid("interactive object is required");
    }
    let kind = obj["type"].as_str().unwrap_or_default();
    // The list page allows 4096 (§8.2); buttons and cta_url 1024.
    let body_max = if kind == "list" { 4096 } else { 1024 };
    required_text(&obj["body"]["text"], "interactive body.text", body_max)?;
    optional_text(&obj["footer"]["text"], "interactive footer.text", 60)?;
    let action = &obj["action"];
    match kind {
        "button" => {
            header(inner, phone, &obj["header"], true)?;
            buttons(action)
        }
        "list" => {
            header(inner, phone, &obj["header"], false)?;
            list(action)
        }
        "cta_url" => {
            header(inner, phone, &obj["header"], true)?;
            ensure(action["name"] == "cta_url", || {
                "cta_url action.name must be \"cta_url\"".into()
            })?;
            required_text(
                &action["parameters"]["display_text"],
                "cta_url display_text",
                20,
            )?;
            required_text(&action["parameters"]["url"], "cta_url url", usize::MAX)?;
            Ok(())
        }
        other => invalid(format!(
            "interactive type {other:?} is not supported by the fake"
        )),
    }
}

/// Optional header: text ≤ 60, or (where `media_ok`) image/video/document
/// by id or link, without a caption.
fn header(inner: &Inner, phone: &str, h: &Value, media_ok: bool) -> Checked {
    if h.is_null() {
        return Ok(());
    }
    match h["type"].as_str().unwrap_or_default() {
        "text" => required_text(&h["text"], "header text", 60).map(drop),
        k @ ("image" | "video" | "document") if media_ok => {
            ensure(h[k].get("caption").is_none(), || {
                format!("a {k} header takes no caption")
            })?;
            media(inner, phone, k, &h[k])
        }
        other => invalid(format!("header type {other:?} is not allowed here")),
    }
}

/// §8.1: 1–3 reply buttons, ids ≤ 256 and titles ≤ 20, each unique.
fn buttons(action: &Value) -> Checked {
    let list = action["buttons"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    ensure((1..=3).contains(&list.len()), || {
        format!(
            "action.buttons must hold 1 to 3 buttons, got {}",
            list.len()
        )
    })?;
    let (mut ids, mut titles) = (HashSet::new(), HashSet::new());
    for b in list {
        ensure(b["type"] == "reply", || {
            format!("button type must be \"reply\", got {}", b["type"])
        })?;
        let id = required_text(&b["reply"]["id"], "button reply.id", 256)?;
        ensure(id.trim() == id, || {
            format!("button id {id:?} has leading or trailing spaces")
        })?;
        let title = required_text(&b["reply"]["title"], "button reply.title", 20)?;
        ensure(ids.insert(id), || format!("button id {id:?} is not unique"))?;
        ensure(titles.insert(title), || {
            format!("button title {title:?} is not unique")
        })?;
    }
    Ok(())
}

/// §8.2: a button label ≤ 20, 1–10 sections (titled ≤ 24, required when
/// several), ≤ 10 rows in all, row ids ≤ 200 and unique, titles ≤ 24,
/// descriptions ≤ 72.
fn list(action: &Value) -> Checked {
    required_text(&action["button"], "list action.button", 20)?;
    let sections = action["sections"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    ensure((1..=10).contains(&sections.len()), || {
        format!(
            "action.sections must hold 1 to 10 sections, got {}",
            sections.len()
        )
    })?;
    let mut ids = HashSet::new();
    let mut total = 0;
    for s in sections {
        if sections.len() > 1 {
            required_text(&s["title"], "section title (several sections)", 24)?;
        } else {
            optional_text(&s["title"], "section title", 24)?;
        }
        let rows = s["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
        ensure(!rows.is_empty(), || {
            "every section needs at least one row".into()
        })?;
        total += rows.len();
        for r in rows {
            let id = required_text(&r["id"], "row id", 200)?;
            ensure(ids.insert(id), || format!("row id {id:?} is not unique"))?;
            required_text(&r["title"], "row title", 24)?;
            optional_text(&r["description"], "row description", 72)?;
        }
    }
    ensure(total <= 10, || {
        format!("a list holds at most 10 rows in all sections, got {total}")
    })
}
