//! A simulated WhatsApp account: sends always succeed, and an optional
//! auto-reply makes incoming messages flow so clients see both directions.
//! Contacts and history live in the session store like any other session
//! state, so a simulated account is shared across a cluster too.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;

use super::media::{CachedMedia, MediaCache};
use super::{
    IncomingMessage, IncomingSender, MediaBytes, MediaUpload, Outgoing, Template, TemplateInfo,
    WhatsAppConnector,
};
use crate::protocol::{Contact, ErrorCode, HubError};

pub struct SimulatedConnector {
    contacts: Vec<Contact>,
    auto_reply: Option<String>,
    auto_reply_delay: Duration,
    incoming: IncomingSender,
    /// Uploaded media, kept by this instance only (bounded like the media
    /// cache): there is no Cloud API to keep it.
    uploads: MediaCache,
}

pub fn builtin_contacts() -> Vec<Contact> {
    [
        ("John", "+15550100001"),
        ("Jane", "+15550100002"),
        ("Alice", "+15550100003"),
        ("Bob", "+15550100004"),
        ("Maria", "+15550100005"),
        ("Mom", "+15550100006"),
    ]
    .into_iter()
    .map(|(name, phone)| Contact {
        name: name.to_string(),
        phone: Some(phone.to_string()),
    })
    .collect()
}

/// Reads a contacts file: a JSON array of names or `{name, phone}` objects.
pub fn load_contacts(path: &Path) -> Result<Vec<Contact>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let refs: Vec<crate::protocol::ContactRef> =
        serde_json::from_str(&text).map_err(|e| format!("not a JSON list of contacts: {e}"))?;
    let contacts: Vec<Contact> = refs.into_iter().map(|r| r.into_contact()).collect();
    if let Some(bad) = contacts.iter().find(|c| c.name.trim().is_empty()) {
        return Err(format!("a contact has an empty name: {bad:?}"));
    }
    Ok(contacts)
}

impl SimulatedConnector {
    pub fn new(
        contacts: Vec<Contact>,
        auto_reply: Option<String>,
        auto_reply_delay: Duration,
        incoming: IncomingSender,
        upload_bytes: u64,
    ) -> Self {
        SimulatedConnector {
            contacts,
            auto_reply,
            auto_reply_delay,
            incoming,
            uploads: MediaCache::new(upload_bytes),
        }
    }
}

#[async_trait]
impl WhatsAppConnector for SimulatedConnector {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn initial_contacts(&self) -> Vec<Contact> {
        self.contacts.clone()
    }

    async fn send(
        &self,
        session: &str,
        contact: &Contact,
        message: &Outgoing,
    ) -> Result<String, HubError> {
        if let Some(media) = &message.content.media
            && let Some(id) = &media.id
            && self.uploads.get(id).is_none()
        {
            return Err(HubError::new(
                ErrorCode::MediaNotFound,
                format!("no uploaded media `{id}` on this hub instance"),
            ));
        }
        if let Some(template) = &self.auto_reply {
            let reply = template
                .replace("{message}", &message.text)
                .replace("{contact}", &contact.name);
            let incoming = IncomingMessage {
                session: session.to_string(),
                contact: contact.name.clone(),
                message: reply,
                executed_by: "simulated",
            };
            let tx = self.incoming.clone();
            let delay = self.auto_reply_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // The hub is shutting down if the receiver is gone.
                let _ = tx.send(incoming).await;
            });
        }
        Ok(format!("sim.{}", uuid::Uuid::new_v4().simple()))
    }

    async fn send_template(
        &self,
        _session: &str,
        _contact: &Contact,
        _template: &Template,
    ) -> Result<String, HubError> {
        Ok(format!("sim.{}", uuid::Uuid::new_v4().simple()))
    }

    async fn upload_media(&self, _session: &str, upload: MediaUpload) -> Result<String, HubError> {
        let id = format!("sim{}", uuid::Uuid::new_v4().simple());
        self.uploads.insert(
            id.clone(),
            Arc::new(CachedMedia {
                mime_type: upload.mime_type,
                bytes: upload.bytes,
            }),
        );
        Ok(id)
    }

    async fn fetch_media(
        &self,
        _session: &str,
        media_id: &str,
        _max_bytes: usize,
    ) -> Result<MediaBytes, HubError> {
        let media = self.uploads.get(media_id).ok_or_else(|| {
            HubError::new(
                ErrorCode::MediaNotFound,
                "the simulator keeps uploads in memory on the instance that took them; this one has none by that id",
            )
        })?;
        Ok(MediaBytes {
            mime_type: media.mime_type.clone(),
            bytes: media.bytes.clone(),
        })
    }

    /// Nobody reads a simulated account's messages: accepted, nothing to do.
    async fn mark_read(&self, _: &str, _: &str, _: bool) -> Result<(), HubError> {
        Ok(())
    }

    async fn list_templates(&self, _session: &str) -> Result<Vec<TemplateInfo>, HubError> {
        Ok(Vec::new())
    }
}
