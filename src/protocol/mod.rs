//! The wire protocol: every JSON message a client can send and every event
//! the hub can emit, plus the stable error codes.
//!
//! Inbound frames are parsed in two steps (`serde_json::Value` first, then the
//! typed message) so that every failure maps to a precise, stable error code
//! and the `request_id` can be echoed even when the rest of the frame is bad.

mod errors;
mod inbound;
mod outbound;

pub use errors::{ErrorCode, HubError};
pub use inbound::{
    AiContext, ClientMessage, ContactRef, Execution, MAX_IDEMPOTENCY_KEY_LEN, Register,
    WhatsAppCommand, check_idempotency_key, parse_client_message, parse_whatsapp_command,
};
pub use outbound::{
    ClientInfo, Contact, DeliveryStatus, Frame, HistoryEntry, MessageDirection, ServerEvent,
    StatusError, now_millis,
};
