//! Cloud API webhooks: the signature check, turning a delivery into queued
//! events, and processing those events (inbound messages and delivery
//! statuses) on whichever instance takes them.
//!
//! Accepting a POST (any instance): verify `X-Hub-Signature-256` over the
//! raw bytes, parse, and for every message or status not seen before
//! (`mark_seen`, cluster-wide) push an event onto the store's webhook
//! queue, all before the 200. Processing (every instance drains the queue,
//! the receiver is woken at once): add unknown senders to the session's
//! contacts, record inbound text, advance statuses. So a redelivery is
//! processed once, and an instance dying right after its 200 loses
//! nothing: the events are already in Redis for the others.

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cloud_api::{OUTSIDE_WINDOW_CODE, outside_window_error};
use crate::hub::Hub;
use crate::protocol::{
    Contact, DeliveryStatus, ErrorCode, HistoryEntry, HubError, MessageDirection, ServerEvent,
    StatusError, now_millis,
};

/// How long a seen wamid (or wamid + status) is remembered; Meta retries
/// for hours to days.
pub const DEDUP_TTL: Duration = Duration::from_secs(72 * 3600);
/// How long a message's delivery status is kept.
pub const STATUS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often each instance looks at the shared queue when not woken.
const POLL: Duration = Duration::from_millis(250);

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
        text: String,
        timestamp: u64,
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

/// The events of one delivery for `session`, in order. Items for another
/// phone number id (when one is configured) and unknown kinds are skipped.
pub fn events_of(
    payload: &Value,
    session: &str,
    phone_number_id: Option<&str>,
) -> Vec<WebhookEvent> {
    let mut events = Vec::new();
    if str_at(payload, "object") != Some("whatsapp_business_account") {
        return events;
    }
    for entry in array(payload, "entry") {
        for change in array(entry, "changes") {
            let Some(value) = change.get("value") else {
                continue;
            };
            let for_us = match (phone_number_id, value.pointer("/metadata/phone_number_id")) {
                (Some(ours), Some(Value::String(theirs))) => ours == theirs,
                _ => true,
            };
            if !for_us {
                tracing::info!("webhook for another phone number id ignored");
                continue;
            }
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
                let timestamp = str_at(m, "timestamp")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(|s| s.saturating_mul(1000))
                    .unwrap_or_else(now_millis);
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

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

impl Hub {
    /// Accepts a verified delivery: queues every new item. Err (answer
    /// 500, Meta redelivers) if the store could not take them.
    pub async fn accept_webhook(&self, payload: &Value) -> Result<usize, HubError> {
        let phone_id = self
            .config
            .whatsapp
            .cloud_api
            .as_ref()
            .map(|c| c.phone_number_id.as_str());
        let mut queued = 0;
        for event in events_of(payload, &self.config.whatsapp.session, phone_id) {
            let key = event.dedup_key();
            if !self.store.mark_seen(&key, DEDUP_TTL).await? {
                tracing::debug!(%key, "webhook item already seen");
                continue;
            }
            let raw = serde_json::to_string(&event).map_err(HubError::internal)?;
            if let Err(e) = self.store.push_webhook_event(&raw).await {
                // Not queued: let the redelivery through.
                let _ = self.store.forget_seen(&key).await;
                return Err(e);
            }
            queued += 1;
        }
        if queued > 0 {
            self.webhook_wake.notify_one();
        }
        Ok(queued)
    }

    /// Processes one queued event.
    pub async fn process_webhook_event(&self, event: WebhookEvent) -> Result<(), HubError> {
        match event {
            WebhookEvent::Inbound {
                session,
                message_id,
                from,
                name,
                text,
                timestamp,
            } => {
                let contact = self.contact_for_sender(&session, &from, name).await?;
                let entry = HistoryEntry {
                    direction: MessageDirection::Incoming,
                    contact: contact.clone(),
                    message: text,
                    message_id,
                    timestamp,
                    by: contact,
                    executed_by: Some("cloud_api".to_string()),
                    status: None,
                    status_error: None,
                };
                self.record_and_publish(&session, &entry).await
            }
            WebhookEvent::Status {
                session,
                message_id,
                status,
                recipient,
                error,
            } => {
                let changed = self
                    .store
                    .set_status(&session, &message_id, status, error.as_ref(), STATUS_TTL)
                    .await?;
                if !changed {
                    return Ok(());
                }
                let contact = match recipient {
                    Some(r) => {
                        let r = digits(&r);
                        self.session_contacts(&session)
                            .await?
                            .into_iter()
                            .find(|c| c.phone.as_deref().is_some_and(|p| digits(p) == r))
                            .map(|c| c.name)
                    }
                    None => None,
                };
                self.publish(
                    &session,
                    &ServerEvent::MessageStatus {
                        message_id: &message_id,
                        status,
                        contact: contact.as_deref(),
                        error: error.as_ref(),
                        timestamp: now_millis(),
                    },
                    "message_status",
                    None,
                );
                Ok(())
            }
        }
    }

    /// The contact name of a sender, adding it to the session (and telling
    /// every client) when it is new.
    async fn contact_for_sender(
        &self,
        session: &str,
        wa_id: &str,
        profile_name: Option<String>,
    ) -> Result<String, HubError> {
        let mut contacts = self.session_contacts(session).await?;
        let wanted = digits(wa_id);
        if let Some(known) = contacts
            .iter()
            .find(|c| c.phone.as_deref().is_some_and(|p| digits(p) == wanted))
        {
            return Ok(known.name.clone());
        }
        let base = profile_name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
            .unwrap_or_else(|| format!("+{wanted}"));
        let taken = |n: &str| contacts.iter().any(|c| c.name.eq_ignore_ascii_case(n));
        let name = if taken(&base) {
            format!("{base} (+{wanted})")
        } else {
            base
        };
        contacts.push(Contact {
            name: name.clone(),
            phone: Some(format!("+{wanted}")),
        });
        self.store.set_contacts(session, &contacts).await?;
        self.publish_contacts(session, &contacts);
        Ok(name)
    }
}

/// Drains the webhook queue on this instance until shutdown.
pub fn spawn_drain(hub: Arc<Hub>) {
    tokio::spawn(async move {
        loop {
            loop {
                match hub.store.pop_webhook_event().await {
                    Ok(Some(raw)) => match serde_json::from_str::<WebhookEvent>(&raw) {
                        Ok(event) => {
                            if let Err(e) = hub.process_webhook_event(event).await {
                                tracing::warn!(error = %e, "could not process a webhook event");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "dropping a corrupt webhook event"),
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "webhook queue unavailable");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = hub.shutdown.cancelled() => return,
                _ = hub.webhook_wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
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
    fn parses_messages_and_statuses() {
        let payload = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
            "metadata": {"phone_number_id": "1"},
            "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "165"}],
            "messages": [{"from": "165", "id": "wamid.A", "timestamp": "10", "type": "text", "text": {"body": "hi"}}],
            "statuses": [{"id": "wamid.B", "status": "failed", "recipient_id": "165",
                          "errors": [{"code": 131047, "title": "Re-engagement message"}]},
                         {"id": "wamid.C", "status": "played"}]
        }}]}]});
        let events = events_of(&payload, "s", Some("1"));
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
        assert!(events_of(&payload, "s", Some("2")).is_empty());
        assert!(events_of(&json!({"object": "page"}), "s", None).is_empty());
    }
}
