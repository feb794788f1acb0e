//! `/mcp` prompts: starting points an LLM app offers its user ("reply to
//! the last message from John", "summarize the conversation with John"),
//! with the conversation itself in the prompt, and `completion/complete`
//! of a prompt's or resource template's `contact` from the session's
//! contacts.

use std::sync::LazyLock;

use rmcp::model::{
    CompleteRequestParams, CompletionInfo, GetPromptResult, JsonObject, Prompt, PromptArgument,
    PromptMessage, Reference, Role,
};
use serde_json::Value;

use super::resources::CONVERSATION_TEMPLATE;
use super::{Call, SESSION_DOC};
use crate::hub::SessionUse;
use crate::protocol::{ErrorCode, HubError, MessageDirection};

pub const REPLY: &str = "reply_to_last_message";
pub const SUMMARIZE: &str = "summarize_conversation";

/// At most this many messages of a conversation go into a prompt.
const PROMPT_MESSAGES: u64 = 50;

/// The prompts, as `prompts/list` shows them (built once).
pub static PROMPTS: LazyLock<Vec<Prompt>> = LazyLock::new(|| {
    let arguments = || {
        Some(vec![
            PromptArgument::new("contact")
                .with_title("Contact")
                .with_description("The contact's name as the session knows it.")
                .with_required(true),
            PromptArgument::new("session")
                .with_title("Session")
                .with_description(SESSION_DOC)
                .with_required(false),
        ])
    };
    vec![
        Prompt::new(
            REPLY,
            Some("Draft a reply to the last message from a contact, with the conversation so far; send it with send_message once the user agrees."),
            arguments(),
        )
        .with_title("Reply to the last message"),
        Prompt::new(
            SUMMARIZE,
            Some("Summarize the conversation with a contact: what was said, what is open, what to do next."),
            arguments(),
        )
        .with_title("Summarize a conversation"),
    ]
});

/// A prompt argument as a string (the spec's arguments are strings).
fn argument<'a>(args: &'a JsonObject, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

impl Call<'_> {
    /// `prompts/get`: the prompt with the conversation read now.
    pub(super) async fn prompt(
        &self,
        name: &str,
        args: Option<JsonObject>,
    ) -> Result<GetPromptResult, HubError> {
        let args = args.unwrap_or_default();
        let Some(contact) = argument(&args, "contact") else {
            return Err(HubError::new(
                ErrorCode::MissingField,
                "missing argument `contact`",
            ));
        };
        let session = argument(&args, "session").map(str::to_string);
        let history = self
            .conversation(session, contact, Some(PROMPT_MESSAGES))
            .await?;
        let conversation = serde_json::to_string(&history.messages).map_err(HubError::internal)?;
        let who = &history.contact;
        let (text, title) = match name {
            REPLY => {
                let last = history
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.direction == MessageDirection::Incoming);
                let ask = match last {
                    Some(m) => format!(
                        "Draft a short reply to {who}'s last message: {:?}.",
                        m.message
                    ),
                    None => format!(
                        "{who} has not written yet: draft a short message to start the conversation."
                    ),
                };
                (
                    format!(
                        "You help the user answer on their WhatsApp account. The conversation with {who} so far, oldest first (JSON):\n{conversation}\n\n{ask} Show the draft to the user; when they agree, send it with the `send_message` tool (contact: {who:?})."
                    ),
                    format!("Reply to {who}"),
                )
            }
            SUMMARIZE => (
                format!(
                    "Summarize the WhatsApp conversation with {who} below, oldest first (JSON): what was said, what is still open, and what the user should do next.\n{conversation}"
                ),
                format!("Summary of the conversation with {who}"),
            ),
            other => {
                return Err(HubError::new(
                    ErrorCode::InvalidField,
                    format!("unknown prompt `{other}`"),
                ));
            }
        };
        Ok(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                .with_description(title),
        )
    }

    /// `completion/complete`: contact names for a prompt's or the
    /// conversation template's `contact` (those starting with the typed
    /// text first, then those containing it); nothing for anything else.
    pub(super) async fn complete(
        &self,
        request: &CompleteRequestParams,
    ) -> Result<CompletionInfo, HubError> {
        let ours = match &request.r#ref {
            Reference::Prompt(p) => PROMPTS.iter().any(|known| known.name == p.name),
            Reference::Resource(r) => r.uri == CONVERSATION_TEMPLATE,
            _ => false,
        };
        if !ours || request.argument.name != "contact" {
            return Ok(CompletionInfo::default());
        }
        let session = request
            .context
            .as_ref()
            .and_then(|c| c.arguments.as_ref())
            .and_then(|a| a.get("session"))
            .cloned();
        let session = match self.existing_session(session, SessionUse::Read).await {
            Ok(session) => session,
            // Nothing to offer yet: no one has used the session.
            Err(e) if e.code == ErrorCode::SessionNotFound => {
                return Ok(CompletionInfo::default());
            }
            Err(e) => return Err(e),
        };
        let names: Vec<String> = self
            .hub
            .session_contacts(&session)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        Ok(matching(&names, &request.argument.value))
    }
}

/// Names starting with `typed` (case-insensitive), then names containing
/// it, at most [`CompletionInfo::MAX_VALUES`].
fn matching(names: &[String], typed: &str) -> CompletionInfo {
    let typed = typed.to_lowercase();
    let lower: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    let starts = names
        .iter()
        .zip(&lower)
        .filter(|(_, l)| l.starts_with(&typed));
    let contains = names
        .iter()
        .zip(&lower)
        .filter(|(_, l)| !l.starts_with(&typed) && l.contains(&typed));
    let all: Vec<&String> = starts.chain(contains).map(|(n, _)| n).collect();
    let total = all.len();
    let values: Vec<String> = all
        .into_iter()
        .take(CompletionInfo::MAX_VALUES)
        .cloned()
        .collect();
    let more = values.len() < total;
    CompletionInfo::with_pagination(values, Some(total as u32), more).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_puts_names_that_start_with_the_text_first() {
        let names: Vec<String> = ["Mom", "John", "Joanna", "Bob Jones"]
            .map(String::from)
            .into();
        let c = matching(&names, "jo");
        assert_eq!(c.values, ["John", "Joanna", "Bob Jones"]);
        assert_eq!((c.total, c.has_more), (Some(3), Some(false)));
        let many: Vec<String> = (0..150).map(|i| format!("c{i}")).collect();
        let c = matching(&many, "c");
        assert_eq!(c.values.len(), CompletionInfo::MAX_VALUES);
        assert_eq!((c.total, c.has_more), (Some(150), Some(true)));
    }
}
