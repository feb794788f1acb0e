//! WhatsApp execution: the connector trait, the simulated account, and the
//! contact-name resolution every executor shares.
//!
//! A session whose agent is connected is served by the agent instead (see
//! `hub::agents`); the connector is the fallback.

pub mod resolve;
pub mod simulated;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::protocol::{Contact, HubError};

/// A message that arrived on the account, to be recorded and broadcast.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub session: String,
    pub contact: String,
    pub message: String,
}

pub type IncomingSender = mpsc::Sender<IncomingMessage>;

#[async_trait]
pub trait WhatsAppConnector: Send + Sync + 'static {
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
}
