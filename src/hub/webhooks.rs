//! Cloud API webhook events on the hub: accepting a verified delivery and
//! processing the events it holds, on whichever instance takes them.
//!
//! Accepting (any instance, before its 200): for every message or status
//! not seen before (`mark_seen`, cluster-wide) push an event onto the
//! store's webhook queue. Processing (every instance drains the queue, the
//! receiver is woken at once): add unknown senders to the session's
//! contacts, record inbound text, advance statuses. So a redelivery is
//! processed once, and an instance dying right after its 200 loses
//! nothing: the events are already in Redis for the others.
//!
//! Webhooks act on the account's session (`WHATSAPP_SESSION`) only, and
//! may create it (docs/protocol.md §3). A new sender joins its contacts
//! atomically and only below MAX_CONTACTS_PER_SESSION
//! ([`crate::store::SessionStore::add_sender_contact`]); past the cap its
//! messages are still recorded, under its number, and the refusal is
//! counted (`hub_limit_shed_total{limit="webhook_contact_cap"}`). A
//! sender's profile name is cut to MAX_NAME_CHARS characters.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Hub;
use crate::metrics::Shed;
use crate::protocol::{HistoryEntry, HubError, MessageDirection, ServerEvent, now_millis};
use crate::store::{NewSender, SenderContact, phone_digits as digits};
use crate::whatsapp::webhooks::{DEDUP_TTL, STATUS_TTL, WebhookEvent, events_of};

/// How often each instance looks at the shared queue when not woken.
const POLL: Duration = Duration::from_millis(250);
/// How long a claimed event is this instance's: past it (the instance
/// died mid-processing), any instance takes it again.
const LEASE: Duration = Duration::from_secs(60);

/// `text` cut to at most `max` characters.
fn at_most(text: &str, max: usize) -> &str {
    text.char_indices()
        .nth(max)
        .map_or(text, |(end, _)| &text[..end])
}

impl Hub {
    /// Accepts a verified delivery: queues every new item. Err (answer
    /// 500, Meta redelivers) if the store could not take them.
    pub async fn accept_webhook(&self, payload: &Value) -> Result<usize, HubError> {
        let mut queued = 0;
        for event in events_of(payload, &self.config.whatsapp.routes) {
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
                content,
            } => {
                let contact = self.contact_for_sender(&session, &from, name).await?;
                let mut content = self.media_urls(&session, content);
                // Taken again after a crash mid-processing: recorded once.
                let recorded = self
                    .store
                    .history(&session, &contact, self.config.history_limit)
                    .await?;
                if recorded.iter().any(|e| e.message_id == message_id) {
                    tracing::debug!(%message_id, "webhook message already recorded");
                    return Ok(());
                }
                // Clients show how big a file is before fetching it.
                self.inbound_media_size(&session, &mut content).await;
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
                    content,
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
                    None,
                )?;
                Ok(())
            }
        }
    }

    /// The contact name of a sender, adding it to the session (and telling
    /// every client) when it is new and the session has room; past
    /// MAX_CONTACTS_PER_SESSION it is not added and is named by its number.
    async fn contact_for_sender(
        &self,
        session: &str,
        wa_id: &str,
        profile_name: Option<String>,
    ) -> Result<String, HubError> {
        let max_name = self.config.limits.max_name_chars;
        // Seeded first, as for any session: the connector's contacts come
        // before the senders.
        self.session_contacts(session).await?;
        let wanted = digits(wa_id);
        // Every name stored here fits MAX_NAME_CHARS, "+" included.
        let wanted = at_most(&wanted, max_name.saturating_sub(1).max(1));
        let number = format!("+{wanted}");
        let base = profile_name
            .map(|n| at_most(n.trim(), max_name).trim_end().to_string())
            .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
            .unwrap_or_else(|| number.clone());
        let room = max_name.saturating_sub(number.chars().count() + 3);
        let if_taken = if room == 0 {
            number.clone()
        } else {
            format!("{} ({number})", at_most(&base, room).trim_end())
        };
        let sender = NewSender {
            digits: wanted,
            name: &base,
            name_if_taken: &if_taken,
            phone: &number,
        };
        let max = self.config.max_contacts_per_session;
        match self.store.add_sender_contact(session, &sender, max).await? {
            SenderContact::Known(name) => Ok(name),
            SenderContact::Added { name, contacts } => {
                self.publish_contacts(session, &contacts);
                Ok(name)
            }
            SenderContact::Full => {
                self.metrics.shed(Shed::WebhookContactCap);
                tracing::debug!(
                    session,
                    max,
                    "webhook sender not added: the session's contacts are full"
                );
                Ok(number)
            }
        }
    }
}

/// Drains the webhook queue on this instance until shutdown.
pub fn spawn_drain(hub: Arc<Hub>) {
    tokio::spawn(async move {
        loop {
            while hub.take_webhook_event().await {}
            tokio::select! {
                _ = hub.shutdown.cancelled() => return,
                _ = hub.webhook_wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
}

impl Hub {
    /// Claims, processes and acknowledges the oldest queued webhook event;
    /// false when there was none, or the store is away (then the event
    /// stays claimed and is taken again once its lease lapses).
    async fn take_webhook_event(&self) -> bool {
        let (claim, raw) = match self.store.claim_webhook_event(LEASE).await {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(error = %e, "webhook queue unavailable");
                return false;
            }
        };
        let processed = match serde_json::from_str::<WebhookEvent>(&raw) {
            Ok(event) => self.process_webhook_event(event).await,
            Err(e) => {
                tracing::warn!(error = %e, "dropping a corrupt webhook event");
                Ok(())
            }
        };
        match processed {
            Err(e) if e.code == crate::protocol::ErrorCode::StoreUnavailable => {
                tracing::warn!(error = %e, "webhook event not processed; retried later");
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "could not process a webhook event"),
            Ok(()) => {}
        }
        if let Err(e) = self.store.ack_webhook_event(&claim).await {
            // Taken again after its lease: processed once (inbound
            // messages are recorded once).
            tracing::debug!(error = %e, "webhook event not acknowledged");
        }
        true
    }
}
