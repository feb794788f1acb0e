//! The wire protocol: every JSON message a client can send and every event
//! the hub can emit, plus the stable error codes.
//!
//! Inbound frames are parsed in two steps (`serde_json::Value` first, then the
//! typed message) so that every failure maps to a precise, stable error code
//! and the `request_id` can be echoed even when the rest of the frame is bad.

mod approval;
mod close;
mod content;
mod errors;
mod fields;
mod frame;
mod inbound;
mod outbound;
pub mod schema;

pub use approval::{Approval, ApprovalVia, DECIDED_BY_HUB, Decision, Resolution};
pub use close::CloseReason;
pub use content::{
    Interactive, ListSection, Location, MAX_CAPTION_CHARS, Media, MediaKind, MessageContent,
    Reaction, ReplyOption, ReplyPicked, SharedContact, check_outgoing, summary,
};
pub use errors::{ErrorCode, HubError};
pub use fields::{
    FieldLimits, MAX_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN, check_contacts, check_id,
    check_idempotency_key, check_name, check_text_len,
};
pub use inbound::{
    AiContext, ClientMessage, ContactRef, Execution, MAX_REASON_CHARS, Register, Since,
    WhatsAppCommand, check_ai_context, parse_client_message, parse_client_message_with,
    parse_whatsapp_command, parse_whatsapp_command_with,
};
pub use outbound::{
    ClientInfo, Contact, DeliveryStatus, Frame, HistoryEntry, MessageDirection,
    REGISTRATION_CLIENTS_MAX, ServerEvent, StatusError, now_millis,
};
