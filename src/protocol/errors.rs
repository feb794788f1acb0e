//! Stable error codes sent to clients as `{"type":"error","code",...}` and
//! the hub-wide error type that carries them.

use serde::{Deserialize, Serialize};

/// Every error code a client can receive. The snake_case names are part of
/// the public protocol (docs/protocol.md): never rename one. The string form
/// (serde and [`ErrorCode::as_str`]) is derived, so the two cannot drift.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    MissingField,
    InvalidField,
    UnknownType,
    UnknownAction,
    BinaryNotSupported,
    NotRegistered,
    AlreadyRegistered,
    RateLimited,
    TooManyInFlight,
    NotAgent,
    UnknownRequest,
    AgentTimeout,
    AgentUnavailable,
    AgentDisconnected,
    ContactNotFound,
    AmbiguousContact,
    UnparseableCommand,
    InvalidInterpretation,
    StoreUnavailable,
    ConnectorFailed,
    /// Free-form text outside the 24-hour window (Cloud API 131047).
    OutsideConversationWindow,
    /// The Cloud API refused the access token (401 / code 190).
    ConnectorAuthFailed,
    /// Still rate limited when the request deadline ran out.
    ConnectorRateLimited,
    /// Network errors or 5xx until the request deadline ran out.
    ConnectorUnavailable,
    AiRateLimited,
    AiUnavailable,
    AiFailed,
    ShuttingDown,
    /// A browser `Origin` this hub does not accept (HTTP 403 on the upgrade).
    ForbiddenOrigin,
    /// The instance holds `MAX_CONNECTIONS` already (HTTP 503 on the
    /// upgrade), or the token's `sub` `MAX_CONNECTIONS_PER_IDENTITY` (429).
    TooManyConnections,
    /// A request whose `Host` is not in `ALLOWED_HOSTS` (HTTP 403, any route).
    HostNotAllowed,
    /// The session holds `MAX_CLIENTS_PER_SESSION` clients already.
    SessionFull,
    /// A REST or MCP request on a session that does not exist (HTTP 404):
    /// any read, and a write unless SESSION_CREATION=any_write.
    SessionNotFound,
    /// An idempotency key used again for a different request (HTTP 422).
    IdempotencyKeyReused,
    /// An admin call naming a client that is not in the session (HTTP 404).
    ClientNotFound,
    /// A REST body over the limit (HTTP 413).
    PayloadTooLarge,
    /// HTTP 401: a missing, invalid or expired token (docs/security.md).
    Unauthorized,
    /// The token does not allow this: another session, the agent role
    /// without the role claim, another `sub`'s client id, an admin endpoint.
    Forbidden,
    /// HTTP 403: the token lacks the scope this needs (`whatsapp.read`,
    /// `whatsapp.send` or `admin`, from its `scope` claim).
    InsufficientScope,
    /// A free-form send to a contact whose last message is more than 24
    /// hours old, refused by the hub before calling the Cloud API: send a
    /// template (`send_template`, `list_templates`).
    OutsideServiceWindow,
    /// The Cloud API refused the message's media (131053, or 131052 for
    /// media a contact sent), or its download failed.
    MediaFailed,
    /// The Cloud API refused a template send (1320xx: unknown or not
    /// approved template, wrong parameters, paused or disabled template).
    TemplateRejected,
    /// The Cloud API cannot deliver to this contact (131026, 131049,
    /// 131050, 137000).
    Undeliverable,
    /// The Cloud API refused a parameter of the request (100, 131008,
    /// 131009): a media id it does not know, an option over its limits ...
    ConnectorRejected,
    /// An upload whose MIME type WhatsApp does not take (HTTP 415).
    UnsupportedMediaType,
    /// A media reference this session does not have (HTTP 404).
    MediaNotFound,
    /// The configured connector cannot do this (media with `none`, read
    /// receipts with the simulator's ...).
    NotSupported,
    /// A person rejected the held send (APPROVAL_REQUIRED).
    ApprovalRejected,
    /// Nobody approved the held send within APPROVAL_TTL_MS.
    ApprovalExpired,
    /// `approve`/`reject` of a held send that is unknown or decided already.
    ApprovalNotPending,
    /// The session has MAX_PENDING_APPROVALS_PER_SESSION sends waiting already.
    ApprovalQueueFull,
    #[serde(rename = "internal_error")]
    #[strum(serialize = "internal_error")]
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every code, e.g. to start their metric series at 0.
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        <ErrorCode as strum::IntoEnumIterator>::iter()
    }
}

/// An error with a stable code and a human-readable message. Command
/// failures that the original protocol reports as `success:false` (unknown
/// contact, ambiguous name, ...) carry their candidates too.
/// Serializable, so an error crosses instances (agent replies) with its
/// code intact.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct HubError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
}

impl HubError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HubError {
            code,
            message: message.into(),
            candidates: Vec::new(),
        }
    }

    pub fn with_candidates(mut self, candidates: Vec<String>) -> Self {
        self.candidates = candidates;
        self
    }

    /// Errors the original protocol reports inside a `response` with
    /// `success:false` rather than as a top-level `error` message.
    pub fn is_command_failure(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::ContactNotFound
                | ErrorCode::AmbiguousContact
                | ErrorCode::UnparseableCommand
                | ErrorCode::InvalidInterpretation
                | ErrorCode::ConnectorFailed
                | ErrorCode::OutsideConversationWindow
                | ErrorCode::OutsideServiceWindow
                | ErrorCode::MediaFailed
                | ErrorCode::TemplateRejected
                | ErrorCode::Undeliverable
                | ErrorCode::ConnectorRejected
                | ErrorCode::ConnectorAuthFailed
                | ErrorCode::ConnectorRateLimited
                | ErrorCode::ConnectorUnavailable
                | ErrorCode::ApprovalRejected
                | ErrorCode::ApprovalExpired
                | ErrorCode::ApprovalQueueFull
        )
    }

    pub fn store_unavailable(detail: impl std::fmt::Display) -> Self {
        HubError::new(
            ErrorCode::StoreUnavailable,
            format!("session store unavailable: {detail}"),
        )
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        HubError::new(ErrorCode::Internal, detail.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_as_snake_case() {
        assert_eq!(ErrorCode::TooManyInFlight.as_str(), "too_many_in_flight");
        assert_eq!(ErrorCode::Internal.as_str(), "internal_error");
        for code in ErrorCode::all() {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(ErrorCode::all().count(), 54);
    }
}
