//! The Cloud API connector: sends, media, read receipts and templates
//! through Meta's Graph API, each business number with its own token
//! (`{base}/{version}/{phone_number_id}/…`). Which number a call uses is
//! the session's (WHATSAPP_NUMBERS). Retries and the error table are in
//! [`request`]; message bodies in [`body`]; media in [`media`]; templates
//! in [`templates`].
//!
//! Inbound messages and statuses arrive by webhook (`whatsapp::webhooks`).

mod body;
mod media;
mod request;
mod templates;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{MediaBytes, MediaUpload, Outgoing, Template, TemplateInfo, WhatsAppConnector};
use crate::config::whatsapp::{CloudApiSettings, NumberSettings};
use crate::protocol::{Contact, ErrorCode, HubError};
pub use request::{OUTSIDE_WINDOW_CODE, code_for_upstream, outside_window_error};

pub struct CloudApiConnector {
    settings: CloudApiSettings,
    contacts: Vec<Contact>,
    http: reqwest::Client,
    /// Bound of one call, retries included.
    deadline: Duration,
}

impl CloudApiConnector {
    pub fn new(settings: CloudApiSettings, contacts: Vec<Contact>, deadline: Duration) -> Self {
        CloudApiConnector {
            settings,
            contacts,
            http: crate::ai::http::client(),
            deadline,
        }
    }

    /// The number that backs `session`.
    fn number(&self, session: &str) -> Result<&NumberSettings, HubError> {
        self.settings.number_for_session(session).ok_or_else(|| {
            HubError::new(
                ErrorCode::ConnectorUnavailable,
                format!("no WhatsApp business number backs session `{session}` (WHATSAPP_NUMBERS)"),
            )
        })
    }

    /// `{base}/{version}/{path}`.
    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}/{path}",
            self.settings.base_url, self.settings.api_version
        )
    }

    /// Posts `body` to `number`'s messages endpoint (sends and read
    /// receipts); the answer.
    async fn post_messages(
        &self,
        number: &NumberSettings,
        body: &Value,
    ) -> Result<Value, HubError> {
        let url = self.url(&format!("{}/messages", number.phone_number_id));
        request::call(self.deadline, |_| {
            self.http
                .post(&url)
                .bearer_auth(number.access_token.expose())
                .json(body)
        })
        .await
    }

    /// Posts a message body on `number`; its wamid.
    async fn post_message(&self, number: &NumberSettings, body: Value) -> Result<String, HubError> {
        self.post_messages(number, &body)
            .await?
            .pointer("/messages/0/id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 256)
            .map(str::to_string)
            .ok_or_else(|| {
                HubError::new(
                    ErrorCode::ConnectorFailed,
                    "the Cloud API accepted the message but returned no message id",
                )
            })
    }
}

/// Graph wants digits only (`+1 555-0100` → `15550100`).
fn recipient(contact: &Contact) -> Result<String, HubError> {
    let digits: String = contact
        .phone
        .as_deref()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    if digits.is_empty() {
        return Err(HubError::new(
            ErrorCode::ConnectorFailed,
            format!("contact `{}` has no phone number to send to", contact.name),
        ));
    }
    Ok(digits)
}

#[async_trait]
impl WhatsAppConnector for CloudApiConnector {
    fn name(&self) -> &'static str {
        "cloud_api"
    }

    fn initial_contacts(&self) -> Vec<Contact> {
        self.contacts.clone()
    }

    fn has_service_window(&self) -> bool {
        true
    }

    async fn send(
        &self,
        session: &str,
        contact: &Contact,
        message: &Outgoing,
    ) -> Result<String, HubError> {
        let number = self.number(session)?;
        let body = body::message(&recipient(contact)?, message);
        self.post_message(number, body).await
    }

    async fn send_template(
        &self,
        session: &str,
        contact: &Contact,
        template: &Template,
    ) -> Result<String, HubError> {
        let number = self.number(session)?;
        let body = body::template(&recipient(contact)?, template);
        self.post_message(number, body).await
    }

    async fn upload_media(&self, session: &str, upload: MediaUpload) -> Result<String, HubError> {
        let number = self.number(session)?;
        media::upload(self, number, upload).await
    }

    async fn fetch_media(
        &self,
        session: &str,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<MediaBytes, HubError> {
        let number = self.number(session)?;
        media::download(self, number, media_id, max_bytes).await
    }

    async fn media_size(&self, session: &str, media_id: &str) -> Result<Option<u64>, HubError> {
        let number = self.number(session)?;
        media::size(self, number, media_id).await
    }

    async fn mark_read(
        &self,
        session: &str,
        message_id: &str,
        typing: bool,
    ) -> Result<(), HubError> {
        let number = self.number(session)?;
        let mut body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        });
        if typing {
            body["typing_indicator"] = json!({"type": "text"});
        }
        let answer = self.post_messages(number, &body).await?;
        if answer.get("success").and_then(Value::as_bool) == Some(true) {
            Ok(())
        } else {
            Err(HubError::new(
                ErrorCode::ConnectorFailed,
                "the Cloud API did not confirm the read receipt",
            ))
        }
    }

    async fn list_templates(&self, session: &str) -> Result<Vec<TemplateInfo>, HubError> {
        let number = self.number(session)?;
        templates::list(self, number).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_digits() {
        let c = Contact {
            name: "A".into(),
            phone: Some("+1 555-0100".into()),
        };
        assert_eq!(recipient(&c).unwrap(), "15550100");
        let c = Contact {
            name: "A".into(),
            phone: None,
        };
        assert_eq!(recipient(&c).unwrap_err().code, ErrorCode::ConnectorFailed);
    }
}
