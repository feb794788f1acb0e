//! Asking the MCP user directly whether a held send goes out
//! (elicitation, when the client declared it): the user's answer is one
//! more decision, racing the session's members for the one that counts.

use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{ElicitRequestParams, ElicitationAction, ElicitationSchema};
use rmcp::schemars::JsonSchema;
use rmcp::{Peer, RoleServer};
use serde_json::Value;

use crate::hub::approvals::AskUser;
use crate::protocol::Approval;

/// What the MCP user is asked to fill in.
#[derive(JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[allow(dead_code, reason = "only its schema is used")]
struct Confirm {
    /// Send this message?
    approve: bool,
}

/// Elicitation on the caller's MCP session.
pub(super) struct Elicit {
    pub peer: Peer<RoleServer>,
    /// How long the question stands: the held send's time to live.
    pub ttl: Duration,
}

impl Elicit {
    /// An asker for this peer, if its client declared elicitation.
    pub fn for_peer(peer: &Peer<RoleServer>, ttl: Duration) -> Option<Elicit> {
        let declared = peer
            .peer_info()
            .is_some_and(|info| info.capabilities.elicitation.is_some());
        declared.then(|| Elicit {
            peer: peer.clone(),
            ttl,
        })
    }
}

#[async_trait]
impl AskUser for Elicit {
    async fn ask(&self, approval: &Approval) -> Option<bool> {
        let requested_schema = ElicitationSchema::from_type::<Confirm>().ok()?;
        let message = format!(
            "Send to {} on WhatsApp: \"{}\"? (held send {} of session {})",
            approval.contact, approval.text, approval.id, approval.session
        );
        let params = ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema,
        };
        let answer = self
            .peer
            .create_elicitation_with_timeout(params, Some(self.ttl))
            .await;
        match answer {
            Ok(result) => match result.action {
                ElicitationAction::Accept => result
                    .content
                    .as_ref()
                    .and_then(|c| c.get("approve"))
                    .and_then(Value::as_bool),
                ElicitationAction::Decline => Some(false),
                // Dismissed: the session's members still decide.
                _ => None,
            },
            Err(error) => {
                tracing::debug!(%error, "elicitation failed; the session's members decide");
                None
            }
        }
    }
}
