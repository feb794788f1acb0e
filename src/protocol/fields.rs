//! Bounds on single fields of inbound messages, checked before any work
//! is done with them: ids, idempotency keys, texts, contact names and
//! lists, AI contexts ([`FieldLimits`], docs/protocol.md §10). Used by the
//! WebSocket parser and by the REST and MCP surfaces alike.

use serde::Serialize;

use super::errors::{ErrorCode, HubError};

/// Longest accepted session name or client id.
pub const MAX_ID_LEN: usize = 128;

/// A session name or client id (`field` names it in the error) must be 1
/// to 128 printable characters.
pub fn check_id(field: &str, value: &str) -> Result<(), HubError> {
    if value.trim().is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!("field `{field}` must be 1 to {MAX_ID_LEN} printable characters"),
        ));
    }
    Ok(())
}

/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// An idempotency key must be 1 to 256 printable characters.
pub fn check_idempotency_key(key: Option<String>) -> Result<Option<String>, HubError> {
    match key {
        Some(k)
            if k.trim().is_empty()
                || k.len() > MAX_IDEMPOTENCY_KEY_LEN
                || k.chars().any(char::is_control) =>
        {
            Err(HubError::new(
                ErrorCode::InvalidField,
                format!(
                    "field `idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable characters"
                ),
            ))
        }
        other => Ok(other),
    }
}

/// Bounds on single fields of inbound messages (settings `MAX_TEXT_CHARS`,
/// `MAX_CLIENT_NAME_CHARS`, `MAX_CAPABILITIES`, `MAX_NAME_CHARS`,
/// `MAX_AI_CONTEXT_BYTES`, `MAX_CONTACTS_PER_SESSION`); over a bound the
/// message is refused with `invalid_field` before any work is done with it.
/// Lengths count characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    /// A WhatsApp message text: `send`'s `message`, `incoming_message`'s
    /// `message`, and the text of a `whatsapp_ai_command`.
    pub max_text_chars: usize,
    pub max_client_name_chars: usize,
    pub max_capabilities: usize,
    /// A contact's name or phone, wherever one is given (`MAX_NAME_CHARS`).
    pub max_name_chars: usize,
    /// An AI `context`, in bytes of JSON (`MAX_AI_CONTEXT_BYTES`).
    pub max_ai_context_bytes: usize,
    /// Entries of a `contact_list` in an AI context, and of a
    /// `contacts_update` (`MAX_CONTACTS_PER_SESSION`).
    pub max_contacts: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        FieldLimits {
            max_text_chars: 4096,
            max_client_name_chars: 64,
            max_capabilities: 8,
            max_name_chars: 128,
            max_ai_context_bytes: 32 * 1024,
            max_contacts: 10_000,
        }
    }
}

/// `invalid_field` when a contact name or phone (`field`) is longer than
/// `MAX_NAME_CHARS`: every name the hub matches, stores or sends is
/// bounded, so matching one costs a bounded amount of CPU.
pub fn check_name(field: &str, value: &str, limits: &FieldLimits) -> Result<(), HubError> {
    check_text_len(field, value, limits.max_name_chars)
}

/// Checks the contacts of a `contacts_update` or an AI context's
/// `contact_list` (`field`): at most `MAX_CONTACTS_PER_SESSION`, each name
/// and phone within `MAX_NAME_CHARS`.
pub fn check_contacts<'a>(
    field: &str,
    contacts: impl ExactSizeIterator<Item = (&'a str, Option<&'a str>)>,
    limits: &FieldLimits,
) -> Result<(), HubError> {
    if contacts.len() > limits.max_contacts {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!(
                "field `{field}` may list at most {} contacts",
                limits.max_contacts
            ),
        ));
    }
    for (name, phone) in contacts {
        check_name(&format!("{field}.name"), name, limits)?;
        if let Some(phone) = phone {
            check_name(&format!("{field}.phone"), phone, limits)?;
        }
    }
    Ok(())
}

/// `invalid_field` when `value` serializes to more than `max` bytes of
/// JSON; measured without building it (the count stops at the cap).
pub fn check_json_bytes(field: &str, value: &impl Serialize, max: usize) -> Result<(), HubError> {
    let mut counter = ByteCounter { left: max };
    if serde_json::to_writer(&mut counter, value).is_err() {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!("field `{field}` must be at most {max} bytes of JSON"),
        ));
    }
    Ok(())
}

/// A writer that only counts, and fails once more than `left` bytes came.
struct ByteCounter {
    left: usize,
}

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.left = self
            .left
            .checked_sub(buf.len())
            .ok_or_else(|| std::io::Error::other("over the byte cap"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Longest accepted `request_id` (it is echoed in every answer).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// `invalid_field` when `value` is longer than `max` characters.
pub fn check_text_len(field: &str, value: &str, max: usize) -> Result<(), HubError> {
    // Counting stops one past the limit: a huge text costs no more.
    if value.chars().take(max + 1).count() > max {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!("field `{field}` must be at most {max} characters"),
        ));
    }
    Ok(())
}
