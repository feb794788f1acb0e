//! The shared session state: contacts, last contact, per-contact history,
//! presence and the session's active agent.
//!
//! [`memory::MemoryStore`] keeps it in this process (standalone);
//! `redis::RedisStore` keeps it in Redis so every instance of a cluster
//! sees the same session.

pub mod memory;
pub mod redis;

use async_trait::async_trait;

use crate::protocol::{ClientInfo, Contact, HistoryEntry, HubError};

/// The client acting as a session's WhatsApp executor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentRef {
    pub client_id: String,
    pub instance: String,
}

pub type StoreResult<T> = Result<T, HubError>;

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Seeds a session's contacts unless it already has some.
    async fn seed_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()>;
    async fn contacts(&self, session: &str) -> StoreResult<Vec<Contact>>;
    async fn set_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()>;
    async fn last_contact(&self, session: &str) -> StoreResult<Option<String>>;
    /// Appends to the contact's history (capped) and makes it the last contact.
    async fn record_message(&self, session: &str, entry: &HistoryEntry) -> StoreResult<()>;
    /// The newest `limit` messages with a contact, oldest first.
    async fn history(
        &self,
        session: &str,
        contact: &str,
        limit: usize,
    ) -> StoreResult<Vec<HistoryEntry>>;

    async fn join(&self, session: &str, client: &ClientInfo) -> StoreResult<()>;
    /// Removes a client; true if it was present (so exactly one caller
    /// announces its departure).
    async fn leave(&self, session: &str, client_id: &str) -> StoreResult<bool>;
    async fn members(&self, session: &str) -> StoreResult<Vec<ClientInfo>>;

    /// Makes `agent` the session's executor; returns the one it replaced.
    /// The newest registration wins (see docs/protocol.md).
    async fn claim_agent(&self, session: &str, agent: &AgentRef) -> StoreResult<Option<AgentRef>>;
    /// Claims the agent role only if no agent is registered (used when
    /// re-announcing clients after a Redis outage).
    async fn claim_agent_if_vacant(&self, session: &str, agent: &AgentRef) -> StoreResult<bool>;
    /// Clears the agent if it is still `client_id`; true if it was.
    async fn release_agent(&self, session: &str, client_id: &str) -> StoreResult<bool>;
    async fn agent(&self, session: &str) -> StoreResult<Option<AgentRef>>;
}
