//! Cloud API webhooks, the transport-free part: the signature check, the
//! freshness window ([`drop_stale`]) and turning a delivery's JSON into
//! [`WebhookEvent`]s (inbound messages and delivery statuses). Queuing and
//! processing them is the hub's (`hub::webhooks`); the HTTP surface is
//! `server::webhooks`.

use std::time::Duration;

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cloud_api::{OUTSIDE_WINDOW_CODE, outside_window_error};
use crate::config::whatsapp::{NumberRoutes, WEBHOOK_MAX_AGE_MS_MAX};
use crate::protocol::{DeliveryStatus, ErrorCode, MessageContent, StatusError, now_millis};

/// How far ahead of this host's clock an item's `timestamp` may be (clock
/// skew); later ones are not delivered.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// How long a seen wamid (or wamid + status) is remembered: the largest
/// freshness window (`WHATSAPP_WEBHOOK_MAX_AGE_MS`, Meta's 7 days of
/// retries) plus the skew, so a replayed delivery is either a duplicate or
/// stale, never delivered twice.
pub const DEDUP_TTL: Duration =
    Duration::from_millis(WEBHOOK_MAX_AGE_MS_MAX + MAX_FUTURE_SKEW.as_millis() as u64);
/// How long a message's delivery status is kept.
pub const STATUS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// One accepted webhook item, as queued in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived and handled one at a time; boxing the content would only add an allocation"
)]
pub enum WebhookEvent {
    Inbound {
        session: String,
        message_id: String,
        from: String,
        #[serde(default)]
        name: Option<String>,
        /// The text, or a readable summary of other content.
        text: String,
        timestamp: u64,
        #[serde(default, skip_serializing_if = "MessageContent::is_empty")]
        content: MessageContent,
    },
    Status {
        session: String,
        message_id: String,
        status: DeliveryStatus,
        #[serde(default)]
        recipient: Option<String>,
        #[serde(default)]
        error: Option<StatusError>,
    },
}

impl WebhookEvent {
    /// Its deduplication key: the wamid, or the wamid and the status.
    pub fn dedup_key(&self) -> String {
        match self {
            WebhookEvent::Inbound { message_id, .. } => format!("in:{message_id}"),
            WebhookEvent::Status {
                message_id, status, ..
            } => format!("st:{message_id}:{}", status.as_str()),
        }
    }
}

/// `sha256=<hex HMAC-SHA256(body, secret)>`, checked in constant time.
pub fn signature_valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, body, &tag).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// Equality without an early exit (the verify token handshake).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// The status error of a `failed` status (131047: use a template).
fn status_error(errors: Option<&Value>) -> StatusError {
    let first = errors
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or(Value::Null);
    let code = first.get("code").and_then(Value::as_i64);
    let detail = first
        .pointer("/error_data/details")
        .and_then(Value::as_str)
        .or_else(|| str_at(&first, "message"))
        .or_else(|| str_at(&first, "title"))
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    if code == Some(OUTSIDE_WINDOW_CODE) {
        let e = outside_window_error(&detail);
        return StatusError {
            code: e.code.as_str().to_string(),
            message: e.message,
            upstream_code: code,
        };
    }
    StatusError {
        code: ErrorCode::ConnectorFailed.as_str().to_string(),
        message: if detail.is_empty() {
            "the message could not be delivered".to_string()
        } else {
            detail
        },
        upstream_code: code,
    }
}

/// An item's `timestamp` (Unix seconds as a string, as Meta sends it) in
/// milliseconds.
fn timestamp_ms(item: &Value) -> Option<u64> {
    str_at(item, "timestamp")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000))
}

/// Removes from a delivery every message and status whose `timestamp` is
/// older than `max_age` or more than [`MAX_FUTURE_SKEW`] ahead of `now_ms`
/// (an item without one stays); how many were removed. Meta stops retrying
/// after 7 days, so an older item is a replay or a stuck queue: it is
/// acknowledged (200) and not delivered.
pub fn drop_stale(payload: &mut Value, now_ms: u64, max_age: Duration) -> usize {
    let oldest = now_ms.saturating_sub(max_age.as_millis() as u64);
    let newest = now_ms.saturating_add(MAX_FUTURE_SKEW.as_millis() as u64);
    let fresh = |item: &Value| timestamp_ms(item).is_none_or(|t| (oldest..=newest).contains(&t));
    let mut dropped = 0;
    let entries = payload.get_mut("entry").and_then(Value::as_array_mut);
    for entry in entries.into_iter().flatten() {
        let changes = entry.get_mut("changes").and_then(Value::as_array_mut);
        for change in changes.into_iter().flatten() {
            for kind in ["messages", "statuses"] {
                if let Some(items) = change
                    .pointer_mut(&format!("/value/{kind}"))
                    .and_then(Value::as_array_mut)
                {
                    let before = items.len();
                    items.retain(fresh);
                    dropped += before - items.len();
                }
            }
        }
    }
    dropped
}

/// The events of one delivery for `session`, in order. Items for another
/// phone number id (when one is configured) and unknown kinds are skipped.
pub fn events_of(payload: &Value, routes: &NumberRoutes) -> Vec<WebhookEvent> {
    let mut events = Vec::new();
    if str_at(payload, "object") != Some("whatsapp_business_account") {
        return events;
    }
    for entry in array(payload, "entry") {
        for change in array(entry, "changes") {
            let Some(value) = change.get("value") else {
                continue;
            };
            let phone = value
                .pointer("/metadata/phone_number_id")
                .and_then(Value::as_str);
            let Some(session) = routes.session_for(phone) else {
                tracing::info!("webhook for a phone number id this hub does not serve ignored");
                continue;
            };
            let names: Vec<(&str, &str)> = array(value, "contacts")
                .filter_map(|c| Some((str_at(c, "wa_id")?, c.pointer("/profile/name")?.as_str()?)))
                .collect();
            for m in array(value, "messages") {
                let (Some(id), Some(from)) = (str_at(m, "id"), str_at(m, "from")) else {
                    continue;
                };
                let kind = str_at(m, "type").unwrap_or("unknown");
                let text = match kind {
                    "text" => m
                        .pointer("/text/body")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    other => format!("[{other} message]"),
                };
                let timestamp = timestamp_ms(m).unwrap_or_else(now_millis);
                events.push(WebhookEvent::Inbound {
                    session: session.to_string(),
                    message_id: id.to_string(),
                    from: from.to_string(),
                    name: names
                        .iter()
                        .find(|(wa, _)| *wa == from)
                        .map(|(_, n)| n.to_string()),
                    text,
                    timestamp,
                    content: MessageContent::default(),
                });
            }
            for st in array(value, "statuses") {
                let (Some(id), Some(status)) = (
                    str_at(st, "id"),
                    str_at(st, "status").and_then(DeliveryStatus::parse),
                ) else {
                    continue;
                };
                events.push(WebhookEvent::Status {
                    session: session.to_string(),
                    message_id: id.to_string(),
                    status,
                    recipient: str_at(st, "recipient_id").map(str::to_string),
                    error: (status == DeliveryStatus::Failed)
                        .then(|| status_error(st.get("errors"))),
                });
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hmac_reference_vector() {
        // HMAC-SHA256(key="secret", msg="test") from the reference notes.
        let h = "sha256=0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914";
        assert!(signature_valid("secret", b"test", Some(h)));
        assert!(!signature_valid("secret", b"test2", Some(h)));
        assert!(!signature_valid("other", b"test", Some(h)));
        assert!(!signature_valid("secret", b"test", None));
        assert!(!signature_valid("secret", b"test", Some("sha256=zz")));
        assert!(!signature_valid("secret", b"test", Some("0329a0")));
    }

    #[test]
    fn items_outside_the_window_are_dropped() {
        let now = 1_000_000_000_000;
        let day = 86_400;
        let secs = now / 1000;
        let item = |id: &str, ts: Option<u64>| match ts {
            Some(ts) => json!({"id": id, "from": "1", "timestamp": ts.to_string()}),
            None => json!({"id": id, "from": "1"}),
        };
        let mut payload = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
            "messages": [item("old", Some(secs - 8 * day)), item("edge", Some(secs - 7 * day)),
                         item("now", Some(secs)), item("none", None),
                         item("skewed", Some(secs + 300)), item("future", Some(secs + 301))],
            "statuses": [item("st-old", Some(secs - 8 * day)), item("st", Some(secs - day))],
        }}]}]});
        let max_age = Duration::from_secs(7 * day);
        assert_eq!(drop_stale(&mut payload, now, max_age), 3);
        let ids = |kind: &str| -> Vec<String> {
            payload["entry"][0]["changes"][0]["value"][kind]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids("messages"), ["edge", "now", "none", "skewed"]);
        assert_eq!(ids("statuses"), ["st"]);
        assert!(DEDUP_TTL >= max_age + MAX_FUTURE_SKEW);
    }

    #[test]
    fn parses_messages_and_statuses() {
        let payload = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
            "metadata": {"phone_number_id": "1"},
            "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "165"}],
            "messages": [{"from": "165", "id": "wamid.A", "timestamp": "10", "type": "text", "text": {"body": "hi"}}],
            "statuses": [{"id": "wamid.B", "status": "failed", "recipient_id": "165",
                          "errors": [{"code": 131047, "title": "Re-engagement message"}]},
                         {"id": "wamid.C", "status": "played"}]
        }}]}]});
        let routes = |phone: &str| NumberRoutes::new(vec![(phone.into(), "s".into())], "d".into());
        let events = events_of(&payload, &routes("1"));
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0],
            WebhookEvent::Inbound {
                session: "s".into(),
                message_id: "wamid.A".into(),
                from: "165".into(),
                name: Some("Sheena".into()),
                text: "hi".into(),
                timestamp: 10_000,
                content: MessageContent::default(),
            }
        );
        match &events[1] {
            WebhookEvent::Status { status, error, .. } => {
                assert_eq!(*status, DeliveryStatus::Failed);
                let e = error.as_ref().unwrap();
                assert_eq!(e.code, "outside_conversation_window");
                assert!(e.message.contains("template"));
            }
            other => panic!("{other:?}"),
        }
        assert!(events_of(&payload, &routes("2")).is_empty());
        assert!(events_of(&json!({"object": "page"}), &routes("1")).is_empty());
    }
}
