//! WhatsApp execution: the connector trait and its implementations
//! (`simulated`, `cloud_api`, `none`) and Cloud API webhook handling.
//! Contact-name resolution lives in [`crate::contacts`].
//!
//! A session whose agent is connected is served by the agent instead (see
//! `hub::agents`); the configured connector serves it otherwise. The
//! simulator only ever runs when it is the configured connector.

pub mod cloud_api;
pub mod media;
pub mod payloads;
pub mod simulated;
pub mod webhooks;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::protocol::{Contact, ErrorCode, HubError, MessageContent};

/// A message that arrived on the account, to be recorded and broadcast.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub session: String,
    pub contact: String,
    pub message: String,
    /// `simulated` (auto-reply) or `agent` (an agent's report).
    pub executed_by: &'static str,
}

pub type IncomingSender = mpsc::Sender<IncomingMessage>;

/// An approved message template (`send_template`).
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub language: String,
    pub components: Option<Value>,
}

/// A message to send: its text (a caption, or the body of reply options)
/// and what it carries besides (media, options, a reaction, a location).
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub text: String,
    pub content: MessageContent,
}

/// Bytes to upload as media.
#[derive(Debug, Clone)]
pub struct MediaUpload {
    pub bytes: Bytes,
    pub mime_type: String,
    pub filename: String,
}

/// Downloaded media.
#[derive(Debug, Clone)]
pub struct MediaBytes {
    pub mime_type: String,
    pub bytes: Bytes,
}

/// One message template of the account, as `list_templates` answers.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TemplateInfo {
    pub name: String,
    pub language: String,
    pub status: String,
    pub category: String,
    /// How many `{{…}}` variables its components hold (the parameters a
    /// send needs).
    pub parameters: usize,
    /// Its components as the Cloud API gives them (header, body, buttons).
    pub components: Value,
}

fn not_supported(connector: &str, what: &str) -> HubError {
    HubError::new(
        ErrorCode::NotSupported,
        format!("the `{connector}` connector cannot {what} (WHATSAPP_CONNECTOR=cloud_api can)"),
    )
}

#[async_trait]
pub trait WhatsAppConnector: Send + Sync + 'static {
    /// The `executed_by` of what it sends and receives.
    fn name(&self) -> &'static str;
    /// Contacts a new session starts with.
    fn initial_contacts(&self) -> Vec<Contact>;
    /// Whether it sends at all (`none` does not: a send needs an agent).
    fn sends(&self) -> bool {
        true
    }
    /// Whether free-form sends are bound by WhatsApp's 24-hour
    /// customer-service window (the Cloud API's are).
    fn has_service_window(&self) -> bool {
        false
    }
    /// Sends a message; returns the message id.
    async fn send(
        &self,
        session: &str,
        contact: &Contact,
        message: &Outgoing,
    ) -> Result<String, HubError>;
    /// Sends a template; returns the message id.
    async fn send_template(
        &self,
        session: &str,
        contact: &Contact,
        template: &Template,
    ) -> Result<String, HubError>;
    /// Uploads media for a later send; returns its media id.
    async fn upload_media(&self, _session: &str, _upload: MediaUpload) -> Result<String, HubError> {
        Err(not_supported(self.name(), "upload media"))
    }
    /// Downloads media by its media id, at most `max_bytes`.
    async fn fetch_media(
        &self,
        _session: &str,
        _media_id: &str,
        _max_bytes: usize,
    ) -> Result<MediaBytes, HubError> {
        Err(not_supported(self.name(), "download media"))
    }
    /// A media's size in bytes, when the connector can tell without
    /// downloading it.
    async fn media_size(&self, _session: &str, _media_id: &str) -> Result<Option<u64>, HubError> {
        Ok(None)
    }
    /// Marks an incoming message read (and shows "typing…" with `typing`).
    async fn mark_read(
        &self,
        _session: &str,
        _message_id: &str,
        _typing: bool,
    ) -> Result<(), HubError> {
        Err(not_supported(self.name(), "send read receipts"))
    }
    /// The account's message templates.
    async fn list_templates(&self, _session: &str) -> Result<Vec<TemplateInfo>, HubError> {
        Err(not_supported(self.name(), "list templates"))
    }
}

/// `WHATSAPP_CONNECTOR=none`: sends need an agent; there is no fallback.
pub struct NoConnector {
    contacts: Vec<Contact>,
}

impl NoConnector {
    pub fn new(contacts: Vec<Contact>) -> Self {
        NoConnector { contacts }
    }

    fn unavailable() -> HubError {
        no_agent()
    }
}

/// A send with no agent connected and WHATSAPP_CONNECTOR=none.
pub fn no_agent() -> HubError {
    HubError::new(
        ErrorCode::AgentUnavailable,
        "no agent is connected for this session and WHATSAPP_CONNECTOR=none: nothing was sent",
    )
}

#[async_trait]
impl WhatsAppConnector for NoConnector {
    fn name(&self) -> &'static str {
        "none"
    }

    fn initial_contacts(&self) -> Vec<Contact> {
        self.contacts.clone()
    }

    fn sends(&self) -> bool {
        false
    }

    async fn send(&self, _: &str, _: &Contact, _: &Outgoing) -> Result<String, HubError> {
        Err(Self::unavailable())
    }

    async fn send_template(&self, _: &str, _: &Contact, _: &Template) -> Result<String, HubError> {
        Err(Self::unavailable())
    }
}
