//! Messages clients send to the hub, and their validating parser.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::content::{
    Interactive, Location, Media, MessageContent, Reaction, check_outgoing, summary,
};
use super::errors::{ErrorCode, HubError};
use super::fields::{
    FieldLimits, MAX_REQUEST_ID_LEN, check_contacts, check_idempotency_key, check_json_bytes,
    check_name, check_text_len,
};
use super::outbound::Contact;

/// One inbound message after validation. Its kind (the wire `type`, also
/// the metrics label) comes from the variant's name.
#[derive(Debug, Clone, PartialEq, strum::IntoStaticStr, strum::VariantNames)]
#[strum(serialize_all = "snake_case")]
pub enum ClientMessage {
    Register(Register),
    #[strum(serialize = "whatsapp_command")]
    WhatsAppCommand {
        command: WhatsAppCommand,
        /// Same key, same session, within IDEMPOTENCY_TTL_MS: the first
        /// result again, never a second send.
        idempotency_key: Option<String>,
    },
    #[strum(serialize = "whatsapp_ai_command")]
    WhatsAppAiCommand {
        command: String,
        context: Option<AiContext>,
        idempotency_key: Option<String>,
    },
    AiRequest {
        prompt: String,
        context: Option<Value>,
    },
    Ping,
    Broadcast {
        payload: Value,
    },
    /// An agent's answer to an `execute` request.
    ExecuteResult {
        content: Value,
    },
    /// An agent reporting the real account's contacts.
    ContactsUpdate {
        contacts: Vec<Contact>,
    },
    /// An agent reporting a message that arrived on the real account.
    IncomingMessage {
        contact: String,
        message: String,
    },
    /// A person approving a held send (APPROVAL_REQUIRED).
    Approve {
        id: u64,
        reason: Option<String>,
    },
    /// A person rejecting a held send.
    Reject {
        id: u64,
        reason: Option<String>,
    },
    /// The session's held sends waiting for a decision (a client that
    /// joined after their `approval_request`).
    ListApprovals,
}

/// How a connection runs a message relative to the ones it reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// Handled inline and needs no registration: `ping`, and `register`,
    /// which must be complete before the next message is read.
    Immediate,
    /// Handled inline, awaited before the next message is read: a client's
    /// broadcasts and an agent's reports must take effect in the order sent.
    InOrder,
    /// Run in its own task under the per-connection in-flight cap: commands
    /// and AI calls may be slow and must not stall pings or other requests.
    Concurrent,
}

impl ClientMessage {
    /// Every value [`Self::kind`] gives (the metrics start them at 0).
    pub const KINDS: &'static [&'static str] = <Self as strum::VariantNames>::VARIANTS;

    /// The wire `type`, also the metrics label.
    pub fn kind(&self) -> &'static str {
        self.into()
    }

    pub fn execution(&self) -> Execution {
        match self {
            ClientMessage::Ping | ClientMessage::Register(_) => Execution::Immediate,
            ClientMessage::Broadcast { .. }
            | ClientMessage::ContactsUpdate { .. }
            | ClientMessage::IncomingMessage { .. } => Execution::InOrder,
            ClientMessage::WhatsAppCommand { .. }
            | ClientMessage::WhatsAppAiCommand { .. }
            | ClientMessage::AiRequest { .. }
            | ClientMessage::ExecuteResult { .. }
            // Approving runs the send, which may be slow.
            | ClientMessage::Approve { .. }
            | ClientMessage::Reject { .. }
            | ClientMessage::ListApprovals => Execution::Concurrent,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, schemars::JsonSchema)]
pub struct Register {
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Resume point: the last offset this client received, and its epoch.
    #[serde(default, deserialize_with = "since_field")]
    #[schemars(with = "Option<Since>")]
    pub since: Option<Since>,
}

/// Where a resuming client left off (`register.since`).
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
pub struct Since {
    pub offset: u64,
    #[schemars(length(min = 1, max = 64))]
    pub epoch: String,
}

/// `since` must be `{"offset": integer >= 0, "epoch": non-empty string}`;
/// anything else is `invalid_field` (null means absent).
fn since_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Since>, D::Error> {
    let value = Value::deserialize(d)?;
    if value.is_null() {
        return Ok(None);
    }
    let bad = || {
        serde::de::Error::custom(
            "field `since` must be {\"offset\": integer >= 0, \"epoch\": non-empty string}",
        )
    };
    let Value::Object(obj) = value else {
        return Err(bad());
    };
    if obj.keys().any(|k| k != "offset" && k != "epoch") {
        return Err(bad());
    }
    let offset = obj.get("offset").and_then(Value::as_u64).ok_or_else(bad)?;
    let epoch = obj
        .get("epoch")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty() && e.len() <= 64)
        .ok_or_else(bad)?;
    Ok(Some(Since {
        offset,
        epoch: epoch.to_string(),
    }))
}

/// A WhatsApp action, as sent in `whatsapp_command.command` and as produced
/// by an AI interpretation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum WhatsAppCommand {
    /// Text, or media, reply options, a reaction or a location (then
    /// `message` is optional: a caption, or the options' body).
    Send {
        contact: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media: Option<Box<Media>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interactive: Option<Box<Interactive>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reaction: Option<Box<Reaction>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<Box<Location>>,
    },
    ListContacts,
    GetHistory {
        contact: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// An approved template: the only message allowed outside the 24-hour
    /// customer-service window (see docs/whatsapp.md).
    SendTemplate {
        contact: String,
        template: String,
        language: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<Vec<Value>>")]
        components: Option<Value>,
    },
    /// Marks the contact's latest incoming message read (and earlier ones
    /// with it); `typing` also shows "typing…" to them for up to 25 s.
    MarkRead {
        contact: String,
        #[serde(default)]
        typing: bool,
    },
    /// The account's message templates (Cloud API).
    ListTemplates,
}

impl WhatsAppCommand {
    /// A plain text send.
    pub fn text(contact: impl Into<String>, message: impl Into<String>) -> Self {
        WhatsAppCommand::Send {
            contact: contact.into(),
            message: message.into(),
            media: None,
            interactive: None,
            reaction: None,
            location: None,
        }
    }

    /// A send's contact, as asked, and the text its history entry shows
    /// (a summary for media and the like, `[template NAME]` for a
    /// template); None for everything else.
    pub fn sent_text(&self) -> Option<(&str, String)> {
        match self {
            WhatsAppCommand::Send {
                contact, message, ..
            } => Some((contact, summary(message, &self.sent_content()))),
            WhatsAppCommand::SendTemplate {
                contact, template, ..
            } => Some((contact, format!("[template {template}]"))),
            WhatsAppCommand::ListContacts
            | WhatsAppCommand::GetHistory { .. }
            | WhatsAppCommand::MarkRead { .. }
            | WhatsAppCommand::ListTemplates => None,
        }
    }

    /// What a send carries besides its text (empty for other commands).
    pub fn sent_content(&self) -> MessageContent {
        match self {
            WhatsAppCommand::Send {
                media,
                interactive,
                reaction,
                location,
                ..
            } => MessageContent {
                media: media.clone(),
                interactive: interactive.clone(),
                reaction: reaction.clone(),
                location: location.clone(),
                ..MessageContent::default()
            },
            _ => MessageContent::default(),
        }
    }

    /// Whether this command sends a message.
    pub fn is_send(&self) -> bool {
        matches!(
            self,
            WhatsAppCommand::Send { .. } | WhatsAppCommand::SendTemplate { .. }
        )
    }

    pub fn action(&self) -> &'static str {
        match self {
            WhatsAppCommand::Send { .. } => "send",
            WhatsAppCommand::ListContacts => "list_contacts",
            WhatsAppCommand::GetHistory { .. } => "get_history",
            WhatsAppCommand::SendTemplate { .. } => "send_template",
            WhatsAppCommand::MarkRead { .. } => "mark_read",
            WhatsAppCommand::ListTemplates => "list_templates",
        }
    }
}

/// A contact as clients may give it in a context: a bare name or an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ContactRef {
    Name(String),
    Contact(Contact),
}

impl ContactRef {
    pub fn name_and_phone(&self) -> (&str, Option<&str>) {
        match self {
            ContactRef::Name(name) => (name, None),
            ContactRef::Contact(c) => (&c.name, c.phone.as_deref()),
        }
    }

    pub fn into_contact(self) -> Contact {
        match self {
            ContactRef::Name(name) => Contact { name, phone: None },
            ContactRef::Contact(c) => c,
        }
    }
}

/// The context a client may attach to an AI command; when absent the hub
/// uses the session's own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AiContext {
    #[serde(default)]
    pub last_contact: Option<String>,
    #[serde(default)]
    pub contact_list: Option<Vec<ContactRef>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct WhatsAppCommandBody {
    command: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct AiCommandBody {
    command: String,
    #[serde(default)]
    context: Option<AiContext>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct AiRequestBody {
    prompt: String,
    #[serde(default)]
    context: Option<Value>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct BroadcastBody {
    payload: Value,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct ExecuteResultBody {
    content: Value,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct ContactsUpdateBody {
    contacts: Vec<ContactRef>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct DecisionBody {
    id: u64,
    #[serde(default)]
    reason: Option<String>,
}

/// Longest `reason` of a `reject`, in characters.
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct IncomingBody {
    contact: String,
    message: String,
}

/// Checks an AI context: at most `MAX_AI_CONTEXT_BYTES` of JSON and, when
/// it is the structured one, its names and its contact list's length.
pub fn check_ai_context(
    context: &impl Serialize,
    structured: Option<&AiContext>,
    limits: &FieldLimits,
) -> Result<(), HubError> {
    check_json_bytes("context", context, limits.max_ai_context_bytes)?;
    let Some(ctx) = structured else {
        return Ok(());
    };
    if let Some(last) = &ctx.last_contact {
        check_name("context.last_contact", last, limits)?;
    }
    if let Some(list) = &ctx.contact_list {
        check_contacts(
            "context.contact_list",
            list.iter().map(ContactRef::name_and_phone),
            limits,
        )?;
    }
    Ok(())
}

/// Parses one text frame with the default [`FieldLimits`].
pub fn parse_client_message(
    text: &str,
) -> Result<(ClientMessage, Option<String>), (HubError, Option<String>)> {
    parse_client_message_with(text, &FieldLimits::default())
}

/// Parses one text frame. On failure returns the error together with the
/// `request_id` if one could be read, so the error can still be correlated.
pub fn parse_client_message_with(
    text: &str,
    limits: &FieldLimits,
) -> Result<(ClientMessage, Option<String>), (HubError, Option<String>)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            HubError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")),
            None,
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err((
            HubError::new(ErrorCode::InvalidMessage, "a message must be a JSON object"),
            None,
        ));
    };
    let request_id = match obj.remove("request_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID_LEN => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(_)) => {
            // Not echoed: an answer is no bigger than its request's bounds.
            return Err((
                HubError::new(
                    ErrorCode::InvalidField,
                    format!("field `request_id` must be at most {MAX_REQUEST_ID_LEN} bytes"),
                ),
                None,
            ));
        }
        Some(_) => {
            return Err((
                HubError::new(
                    ErrorCode::InvalidField,
                    "field `request_id` must be a string or a number",
                ),
                None,
            ));
        }
    };
    let kind = match obj.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err((
                HubError::new(ErrorCode::InvalidField, "field `type` must be a string"),
                request_id,
            ));
        }
        None => {
            return Err((
                HubError::new(ErrorCode::MissingField, "missing field `type`"),
                request_id,
            ));
        }
    };
    let body = Value::Object(obj);
    let parsed = match kind.as_str() {
        "register" => body_as::<Register>(body, &kind)
            .and_then(|r| check_register(&r, limits).map(|()| r))
            .map(ClientMessage::Register),
        "whatsapp_command" => body_as::<WhatsAppCommandBody>(body, &kind).and_then(|b| {
            Ok(ClientMessage::WhatsAppCommand {
                command: parse_whatsapp_command_with(b.command, limits)?,
                idempotency_key: check_idempotency_key(b.idempotency_key)?,
            })
        }),
        "whatsapp_ai_command" => body_as::<AiCommandBody>(body, &kind).and_then(|b| {
            check_text_len("command", &b.command, limits.max_text_chars)?;
            if let Some(context) = &b.context {
                check_ai_context(context, Some(context), limits)?;
            }
            Ok(ClientMessage::WhatsAppAiCommand {
                command: b.command,
                context: b.context,
                idempotency_key: check_idempotency_key(b.idempotency_key)?,
            })
        }),
        "ai_request" => body_as::<AiRequestBody>(body, &kind).and_then(|b| {
            check_text_len("prompt", &b.prompt, limits.max_text_chars)?;
            if let Some(context) = &b.context {
                check_ai_context(context, None, limits)?;
            }
            Ok(ClientMessage::AiRequest {
                prompt: b.prompt,
                context: b.context,
            })
        }),
        "ping" => Ok(ClientMessage::Ping),
        "list_approvals" => Ok(ClientMessage::ListApprovals),
        "broadcast" => body_as::<BroadcastBody>(body, &kind)
            .map(|b| ClientMessage::Broadcast { payload: b.payload }),
        "execute_result" => body_as::<ExecuteResultBody>(body, &kind)
            .map(|b| ClientMessage::ExecuteResult { content: b.content }),
        "contacts_update" => body_as::<ContactsUpdateBody>(body, &kind).and_then(|b| {
            check_contacts(
                "contacts",
                b.contacts.iter().map(ContactRef::name_and_phone),
                limits,
            )?;
            Ok(ClientMessage::ContactsUpdate {
                contacts: b
                    .contacts
                    .into_iter()
                    .map(ContactRef::into_contact)
                    .collect(),
            })
        }),
        "incoming_message" => body_as::<IncomingBody>(body, &kind).and_then(|b| {
            check_name("contact", &b.contact, limits)?;
            check_text_len("message", &b.message, limits.max_text_chars)?;
            Ok(ClientMessage::IncomingMessage {
                contact: b.contact,
                message: b.message,
            })
        }),
        "approve" | "reject" => body_as::<DecisionBody>(body, &kind).and_then(|b| {
            if let Some(reason) = &b.reason {
                check_text_len("reason", reason, MAX_REASON_CHARS)?;
            }
            let (id, reason) = (b.id, b.reason);
            Ok(if kind == "approve" {
                ClientMessage::Approve { id, reason }
            } else {
                ClientMessage::Reject { id, reason }
            })
        }),
        other => Err(HubError::new(
            ErrorCode::UnknownType,
            format!("unknown message type `{other}`"),
        )),
    };
    match parsed {
        Ok(msg) => Ok((msg, request_id)),
        Err(e) => Err((e, request_id)),
    }
}

fn check_register(reg: &Register, limits: &FieldLimits) -> Result<(), HubError> {
    if let Some(name) = &reg.client_name {
        check_text_len("client_name", name, limits.max_client_name_chars)?;
    }
    if reg.capabilities.len() > limits.max_capabilities {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!(
                "field `capabilities` may list at most {} entries",
                limits.max_capabilities
            ),
        ));
    }
    Ok(())
}

/// Most messages one `get_history` returns.
pub const MAX_HISTORY_LIMIT: usize = 500;

/// Validates a `whatsapp_command.command` object with the default
/// [`FieldLimits`].
pub fn parse_whatsapp_command(value: Value) -> Result<WhatsAppCommand, HubError> {
    parse_whatsapp_command_with(value, &FieldLimits::default())
}

/// Validates a `whatsapp_command.command` object.
pub fn parse_whatsapp_command_with(
    value: Value,
    limits: &FieldLimits,
) -> Result<WhatsAppCommand, HubError> {
    let action = match value.get("action") {
        Some(Value::String(a)) => a.clone(),
        Some(_) => {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                "field `command.action` must be a string",
            ));
        }
        None if value.is_object() => {
            return Err(HubError::new(
                ErrorCode::MissingField,
                "missing field `command.action`",
            ));
        }
        None => {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                "field `command` must be an object",
            ));
        }
    };
    if !matches!(
        action.as_str(),
        "send" | "list_contacts" | "get_history" | "send_template" | "mark_read" | "list_templates"
    ) {
        return Err(HubError::new(
            ErrorCode::UnknownAction,
            format!(
                "unknown action `{action}` (expected send, send_template, list_contacts, get_history, mark_read or list_templates)"
            ),
        ));
    }
    // `message` may be left out only when something else is sent.
    let carried = ["message", "media", "interactive", "reaction", "location"];
    if action == "send" && !carried.iter().any(|k| value.get(*k).is_some()) {
        return Err(HubError::new(
            ErrorCode::MissingField,
            "missing field `command.message`",
        ));
    }
    let cmd: WhatsAppCommand =
        serde_json::from_value(value).map_err(|e| field_error(&e.to_string(), "command."))?;
    if let WhatsAppCommand::GetHistory {
        limit: Some(limit), ..
    } = &cmd
        && !(1..=MAX_HISTORY_LIMIT).contains(limit)
    {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!("field `command.limit` must be between 1 and {MAX_HISTORY_LIMIT}"),
        ));
    }
    match &cmd {
        WhatsAppCommand::Send { contact, .. }
        | WhatsAppCommand::GetHistory { contact, .. }
        | WhatsAppCommand::MarkRead { contact, .. } => {
            check_name("command.contact", contact, limits)?
        }
        WhatsAppCommand::SendTemplate {
            contact,
            template,
            language,
            ..
        } => {
            check_name("command.contact", contact, limits)?;
            check_name("command.template", template, limits)?;
            check_name("command.language", language, limits)?;
        }
        WhatsAppCommand::ListContacts | WhatsAppCommand::ListTemplates => {}
    }
    if let WhatsAppCommand::Send { contact, .. } | WhatsAppCommand::MarkRead { contact, .. } = &cmd
        && contact.trim().is_empty()
    {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            "field `command.contact` must not be empty",
        ));
    }
    if let WhatsAppCommand::Send { message, .. } = &cmd {
        check_text_len("command.message", message, limits.max_text_chars)?;
        check_outgoing(message, &cmd.sent_content())?;
    }
    if let WhatsAppCommand::SendTemplate {
        contact,
        template,
        language,
        components,
    } = &cmd
    {
        for (field, value) in [
            ("contact", contact),
            ("template", template),
            ("language", language),
        ] {
            if value.trim().is_empty() {
                return Err(HubError::new(
                    ErrorCode::InvalidField,
                    format!("field `command.{field}` must not be empty"),
                ));
            }
        }
        if components.as_ref().is_some_and(|c| !c.is_array()) {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                "field `command.components` must be an array",
            ));
        }
    }
    Ok(cmd)
}

fn body_as<T: DeserializeOwned>(body: Value, kind: &str) -> Result<T, HubError> {
    serde_json::from_value(body).map_err(|e| {
        let mut err = field_error(&e.to_string(), "");
        err.message = format!("{kind}: {}", err.message);
        err
    })
}

/// Maps serde's messages to `missing_field` / `invalid_field`, keeping its
/// wording (which names the field and the expected type).
fn field_error(serde_msg: &str, prefix: &str) -> HubError {
    if let Some(rest) = serde_msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        HubError::new(
            ErrorCode::MissingField,
            format!("missing field `{prefix}{field}`"),
        )
    } else if let Some(rest) = serde_msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        HubError::new(
            ErrorCode::InvalidField,
            format!("unknown field `{prefix}{field}`"),
        )
    } else {
        HubError::new(ErrorCode::InvalidField, serde_msg.to_string())
    }
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
