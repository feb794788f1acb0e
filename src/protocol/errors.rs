//! Stable error codes sent to clients as `{"type":"error","code",...}` and
//! the hub-wide error type that carries them.

use serde::Serialize;

/// Every error code a client can receive. The snake_case names are part of
/// the public protocol (docs/protocol.md): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
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
    AiRateLimited,
    AiUnavailable,
    AiFailed,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::AlreadyRegistered => "already_registered",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyInFlight => "too_many_in_flight",
            ErrorCode::NotAgent => "not_agent",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::AgentTimeout => "agent_timeout",
            ErrorCode::AgentUnavailable => "agent_unavailable",
            ErrorCode::AgentDisconnected => "agent_disconnected",
            ErrorCode::ContactNotFound => "contact_not_found",
            ErrorCode::AmbiguousContact => "ambiguous_contact",
            ErrorCode::UnparseableCommand => "unparseable_command",
            ErrorCode::InvalidInterpretation => "invalid_interpretation",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::ConnectorFailed => "connector_failed",
            ErrorCode::AiRateLimited => "ai_rate_limited",
            ErrorCode::AiUnavailable => "ai_unavailable",
            ErrorCode::AiFailed => "ai_failed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal_error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable code and a human-readable message. Command
/// failures that the original protocol reports as `success:false` (unknown
/// contact, ambiguous name, ...) carry their candidates too.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HubError {
    pub code: ErrorCode,
    pub message: String,
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
