//! Through which door a command came, as the approval of sends sees it
//! (`APPROVAL_REQUIRED`, [`super::approvals`]), and how the MCP door asks
//! its user directly.

use std::sync::Arc;

use async_trait::async_trait;

use crate::protocol::Approval;

/// Asks the MCP user directly (elicitation) whether a held send goes out.
#[async_trait]
pub trait AskUser: Send + Sync {
    /// `Some(true)`: approve; `Some(false)`: reject; None: no answer (the
    /// client cannot ask, or the user dismissed the question).
    async fn ask(&self, approval: &Approval) -> Option<bool>;
}

/// Through which door a command came, as approval sees it.
#[derive(Clone, Default)]
pub enum Door {
    /// A WebSocket client or a REST caller.
    #[default]
    Client,
    /// An MCP tool; with a way to ask its user when the client can.
    Mcp(Option<Arc<dyn AskUser>>),
}
