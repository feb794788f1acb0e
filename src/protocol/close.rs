//! WebSocket close codes: why the hub closes a connection, as the code,
//! the metric label and the reason text the peer sees (docs/protocol.md).

/// Why the hub closes a connection; decides the close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    SlowConsumer,
    TooLarge,
    ShuttingDown,
    Replaced,
    TokenExpired,
    /// No inbound traffic (pongs included) for `IDLE_TIMEOUT_MS`.
    IdleTimeout,
    /// An admin disconnected the client (`DELETE .../clients/{id}`).
    AdminDisconnect,
    /// The client broke the WebSocket protocol (an unmasked frame, a bad
    /// opcode or fragment sequence, reserved bits).
    ProtocolError,
    /// A text message (or close reason) that is not UTF-8.
    InvalidPayload,
    /// No completed `register` within `REGISTER_TIMEOUT_MS` of the upgrade.
    RegisterTimeout,
}

impl CloseReason {
    /// Every reason, e.g. to start their metric series at 0.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Normal,
        CloseReason::SlowConsumer,
        CloseReason::TooLarge,
        CloseReason::ShuttingDown,
        CloseReason::Replaced,
        CloseReason::TokenExpired,
        CloseReason::IdleTimeout,
        CloseReason::AdminDisconnect,
        CloseReason::ProtocolError,
        CloseReason::InvalidPayload,
        CloseReason::RegisterTimeout,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::ShuttingDown | CloseReason::IdleTimeout => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidPayload => 1007,
            CloseReason::SlowConsumer => 1008,
            CloseReason::TooLarge => 1009,
            CloseReason::Replaced => 4001,
            CloseReason::AdminDisconnect => 4002,
            CloseReason::RegisterTimeout => 4408,
            CloseReason::TokenExpired => 4401,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ShuttingDown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooLarge => "message_too_large",
            CloseReason::Replaced => "replaced",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::AdminDisconnect => "admin_disconnect",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidPayload => "invalid_payload",
            CloseReason::RegisterTimeout => "register_timeout",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::ShuttingDown => "hub shutting down",
            CloseReason::SlowConsumer => "slow consumer: outbound queue full",
            CloseReason::TooLarge => "message too large",
            CloseReason::Replaced => "client_id registered again on another connection",
            CloseReason::TokenExpired => "token expired",
            CloseReason::IdleTimeout => "idle timeout: no traffic, pongs included",
            CloseReason::AdminDisconnect => "disconnected by an admin",
            CloseReason::ProtocolError => "websocket protocol error",
            CloseReason::InvalidPayload => "text is not valid UTF-8",
            CloseReason::RegisterTimeout => "registration timeout",
        }
    }
}
