//! WhatsApp execution: the connector trait and its implementations
//! (`simulated`, `cloud_api`, `none`) and Cloud API webhook handling.
//! Contact-name resolution lives in [`crate::contacts`].
//!
//! A session whose agent is connected is served by the agent instead (see
//! `hub::agents`); the configured connector serves it otherwise. The
//! simulator only ever runs when it is the configured connector.

pub mod cloud_api;
pub mod payloads;
pub mod simulated;
pub mod webhooks;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::protocol::{Contact, ErrorCode, HubError};

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

#[async_trait]
pub trait WhatsAppConnector: Send + Sync + 'static {
    /// The `executed_by` of what it sends and receives.
    fn name(&self) -> &'static str;
    /// Contacts a new session starts with.
    fn initial_contacts(&self) -> Vec<Contact>;
    /// Sends a text; returns the message id.
    async fn send(
        &self,
        session: &str,
        contact: &Contact,
        message: &str,
    ) -> Result<String, HubError>;
    /// Sends a template; returns the message id.
    async fn send_template(
        &self,
        session: &str,
        contact: &Contact,
        template: &Template,
    ) -> Result<String, HubError>;
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
        HubError::new(
            ErrorCode::AgentUnavailable,
            "no agent is connected for this session and WHATSAPP_CONNECTOR=none: nothing was sent",
        )
    }
}

#[async_trait]
impl WhatsAppConnector for NoConnector {
    fn name(&self) -> &'static str {
        "none"
    }

    fn initial_contacts(&self) -> Vec<Contact> {
        self.contacts.clone()
    }

    async fn send(&self, _: &str, _: &Contact, _: &str) -> Result<String, HubError> {
        Err(Self::unavailable())
    }

    async fn send_template(&self, _: &str, _: &Contact, _: &Template) -> Result<String, HubError> {
        Err(Self::unavailable())
    }
}
