//! The wire form of held sends (`APPROVAL_REQUIRED`, docs/protocol.md
//! §14): what `approval_request` and `approval_resolved` carry.

use serde::{Deserialize, Serialize};

/// What asked for a send that is held: an MCP tool, or an AI's
/// interpretation of a natural-language command.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ApprovalVia {
    Mcp,
    Ai,
}

/// How a held send ended.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Decision {
    Approved,
    Rejected,
    /// Nobody decided before `expires_at`: as good as rejected.
    Expired,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A held send as the session's clients see it (`approval_request`).
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct Approval {
    /// The session's number for it: what `approve`, `/approve N` and the
    /// admin API name.
    pub id: u64,
    pub session: String,
    /// The caller the send is made as (`by` of the sent message).
    pub requested_by: String,
    pub via: ApprovalVia,
    /// `send` or `send_template`.
    pub action: String,
    pub contact: String,
    /// The message, or `[template NAME]`.
    pub text: String,
    pub created_at: u64,
    pub expires_at: u64,
}

/// Who decided what, and when.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct Resolution {
    pub decision: Decision,
    /// A member's client id, `admin:SUB`, `mcp:CALLER` (elicitation), or
    /// `hub` (expiry).
    pub decided_by: String,
    pub decided_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `decided_by` of an expiry.
pub const DECIDED_BY_HUB: &str = "hub";

impl Resolution {
    /// The expiry of a held send, decided by the hub at `now`.
    pub fn expiry(now: u64) -> Resolution {
        Resolution {
            decision: Decision::Expired,
            decided_by: DECIDED_BY_HUB.to_string(),
            decided_at: now,
            reason: None,
        }
    }
}
