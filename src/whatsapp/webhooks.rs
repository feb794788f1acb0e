//! Cloud API webhooks, the transport-free part: the signature check, the
//! freshness window ([`drop_stale`]) and turning a delivery into
//! [`WebhookEvent`]s (inbound messages and delivery statuses), routed per
//! change by phone number id. The payload's shapes and what each message
//! kind means are [`super::payloads`]'. Queuing and processing the events
//! is the hub's (`hub::webhooks`); the HTTP surface is `server::webhooks`.

use std::time::Duration;

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cloud_api::{OUTSIDE_WINDOW_CODE, code_for_upstream, outside_window_error};
use super::payloads::{ApiError, Delivery, InboundMessage, Reading, SenderProfile, StatusItem};
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

/// The status error of a `failed` status (131047: use a template).
fn status_error(first: Option<&ApiError>) -> StatusError {
    let code = first.and_then(|e| e.code);
    let detail = first
        .and_then(|e| {
            e.error_data
                .as_ref()
                .and_then(|d| d.details.as_deref())
                .or(e.message.as_deref())
                .or(e.title.as_deref())
        })
        // At most 300 characters: cut while parsing.
        .unwrap_or("")
        .to_string();
    if code == Some(OUTSIDE_WINDOW_CODE) {
        let e = outside_window_error(&detail);
        return StatusError {
            code: e.code.as_str().to_string(),
            message: e.message,
            upstream_code: code,
        };
    }
    // 131053 media, 131026/131049/131050 undeliverable ...: Meta's table.
    let hub_code = code
        .and_then(code_for_upstream)
        .unwrap_or(ErrorCode::ConnectorFailed);
    StatusError {
        code: hub_code.as_str().to_string(),
        message: if detail.is_empty() {
            "the message could not be delivered".to_string()
        } else {
            detail
        },
        upstream_code: code,
    }
}

/// Unix seconds as a string (as Meta sends them) in milliseconds.
fn seconds_to_ms(seconds: &str) -> Option<u64> {
    seconds.parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}

/// An item's `timestamp` in milliseconds.
fn timestamp_ms(item: &Value) -> Option<u64> {
    str_at(item, "timestamp").and_then(seconds_to_ms)
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

/// The events of one delivery, in order, each for the session of its
/// change's number. Changes for a number this hub does not serve, unknown
/// statuses, senderless messages and malformed items are skipped.
pub fn events_of(payload: &Value, routes: &NumberRoutes) -> Vec<WebhookEvent> {
    let delivery = match Delivery::deserialize(payload) {
        Ok(delivery) => delivery,
        Err(error) => {
            tracing::info!(%error, "webhook delivery is not a Cloud API payload: ignored");
            return Vec::new();
        }
    };
    if delivery.object.as_deref() != Some("whatsapp_business_account") {
        return Vec::new();
    }
    let mut events = Vec::new();
    let changes = delivery.entry.iter().flat_map(|entry| &entry.changes);
    for value in changes.filter_map(|change| change.value.as_ref()) {
        let phone = value
            .metadata
            .as_ref()
            .and_then(|m| m.phone_number_id.as_deref());
        let Some(session) = routes.session_for(phone) else {
            tracing::info!("webhook for a phone number id this hub does not serve ignored");
            continue;
        };
        for error in &value.errors {
            tracing::warn!(
                session,
                code = ?error.code,
                title = error.title.as_deref().unwrap_or(""),
                "Cloud API reported an account-level error"
            );
        }
        events.extend(
            value
                .messages
                .iter()
                .filter_map(|m| inbound_event(session, m, &value.contacts)),
        );
        events.extend(
            value
                .statuses
                .iter()
                .filter_map(|st| status_event(session, st)),
        );
    }
    events
}

fn inbound_event(
    session: &str,
    message: &InboundMessage,
    senders: &[SenderProfile],
) -> Option<WebhookEvent> {
    let Some(from) = message.sender() else {
        tracing::info!(message_id = %message.id, "webhook message without a sender skipped");
        return None;
    };
    let name = senders
        .iter()
        .find(|profile| message.sent_by(profile))
        .and_then(|profile| profile.profile.as_ref()?.name.clone());
    let Reading { text, content } = message.read();
    Some(WebhookEvent::Inbound {
        session: session.to_string(),
        message_id: message.id.clone(),
        from: from.to_string(),
        name,
        text,
        timestamp: message
            .timestamp
            .as_deref()
            .and_then(seconds_to_ms)
            .unwrap_or_else(now_millis),
        content,
    })
}

fn status_event(session: &str, item: &StatusItem) -> Option<WebhookEvent> {
    let status = DeliveryStatus::parse(&item.status)?;
    Some(WebhookEvent::Status {
        session: session.to_string(),
        message_id: item.id.clone(),
        status,
        recipient: item.recipient_id.clone(),
        error: (status == DeliveryStatus::Failed).then(|| status_error(item.errors.first())),
    })
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
