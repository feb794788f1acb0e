//! `/mcp` resources: what an LLM app can read without calling a tool, as
//! JSON: a session's contacts, its members (who is connected, on which
//! instance) and each conversation, at
//! `whatsapp://sessions/{session}/contacts`, `…/members` and
//! `…/conversations/{contact}` (names percent-encoded). The same session
//! rule as the tools applies to every read.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use rmcp::model::{ReadResourceResult, Resource, ResourceContents, ResourceTemplate};
use serde_json::json;

use super::Call;
use crate::hub::SessionUse;
use crate::protocol::{ErrorCode, HubError};

const PREFIX: &str = "whatsapp://sessions/";
pub const CONTACTS_TEMPLATE: &str = "whatsapp://sessions/{session}/contacts";
pub const MEMBERS_TEMPLATE: &str = "whatsapp://sessions/{session}/members";
pub const CONVERSATION_TEMPLATE: &str = "whatsapp://sessions/{session}/conversations/{contact}";
const JSON: &str = "application/json";

/// A conversation resource holds at most this many of the newest messages.
const CONVERSATION_MESSAGES: u64 = 100;

/// `resources/list` names at most this many conversations.
const LISTED_CONVERSATIONS: usize = 100;

/// What a path segment escapes: everything but unreserved characters.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'[')
    .add(b']');

/// A resource of ours, parsed from its URI.
#[derive(Debug, PartialEq)]
pub enum HubResource {
    Contacts { session: String },
    Members { session: String },
    Conversation { session: String, contact: String },
}

impl HubResource {
    pub fn parse(uri: &str) -> Option<HubResource> {
        let rest = uri.strip_prefix(PREFIX)?;
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
                .filter(|d| !d.is_empty())
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [session, "contacts"] => Some(HubResource::Contacts {
                session: decode(session)?,
            }),
            [session, "members"] => Some(HubResource::Members {
                session: decode(session)?,
            }),
            [session, "conversations", contact] => Some(HubResource::Conversation {
                session: decode(session)?,
                contact: decode(contact)?,
            }),
            _ => None,
        }
    }

    pub fn session(&self) -> &str {
        match self {
            HubResource::Contacts { session }
            | HubResource::Members { session }
            | HubResource::Conversation { session, .. } => session,
        }
    }

    pub fn uri(&self) -> String {
        let enc = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
        match self {
            HubResource::Contacts { session } => format!("{PREFIX}{}/contacts", enc(session)),
            HubResource::Members { session } => format!("{PREFIX}{}/members", enc(session)),
            HubResource::Conversation { session, contact } => {
                format!("{PREFIX}{}/conversations/{}", enc(session), enc(contact))
            }
        }
    }
}

fn resource(uri: String, name: String, title: String, description: &str) -> Resource {
    Resource::new(uri, name)
        .with_title(title)
        .with_description(description)
        .with_mime_type(JSON)
}

/// `resources/templates/list`.
pub fn templates() -> Vec<ResourceTemplate> {
    let template = |uri: &str, name: &str, title: &str, description: &str| {
        ResourceTemplate::new(uri, name)
            .with_title(title)
            .with_description(description)
            .with_mime_type(JSON)
    };
    vec![
        template(
            CONVERSATION_TEMPLATE,
            "conversation",
            "Conversation",
            "The newest messages with a contact, oldest first (as get_history returns them).",
        ),
        template(
            CONTACTS_TEMPLATE,
            "contacts",
            "Contacts",
            "The session's contacts (as list_contacts returns them).",
        ),
        template(
            MEMBERS_TEMPLATE,
            "members",
            "Members",
            "Who is connected to the session, on which instance.",
        ),
    ]
}

impl Call<'_> {
    /// `resources/list`: the contacts, members and conversations of the
    /// caller's session (the token's only session, or `default` without
    /// auth); nothing when that session does not exist yet or the token
    /// names several (read them through the templates).
    pub(super) async fn list_resources(&self) -> Result<Vec<Resource>, HubError> {
        let Ok(session) = self.existing_session(None, SessionUse::Read).await else {
            return Ok(Vec::new());
        };
        let mut listed = vec![
            resource(
                HubResource::Contacts {
                    session: session.clone(),
                }
                .uri(),
                "contacts".into(),
                format!("Contacts of {session}"),
                "The session's contacts.",
            ),
            resource(
                HubResource::Members {
                    session: session.clone(),
                }
                .uri(),
                "members".into(),
                format!("Members of {session}"),
                "Who is connected to the session.",
            ),
        ];
        let contacts = self.hub.session_contacts(&session).await?;
        for contact in contacts.into_iter().take(LISTED_CONVERSATIONS) {
            let uri = HubResource::Conversation {
                session: session.clone(),
                contact: contact.name.clone(),
            }
            .uri();
            listed.push(resource(
                uri,
                format!("conversation with {}", contact.name),
                format!("Conversation with {}", contact.name),
                "The newest messages with the contact, oldest first.",
            ));
        }
        Ok(listed)
    }

    /// `resources/read`.
    pub(super) async fn read_resource(&self, uri: &str) -> Result<ReadResourceResult, HubError> {
        let Some(resource) = HubResource::parse(uri) else {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                format!(
                    "no resource at `{}`",
                    uri.chars().take(200).collect::<String>()
                ),
            ));
        };
        let body = match &resource {
            HubResource::Contacts { session } => {
                let session = self
                    .existing_session(Some(session.clone()), SessionUse::Read)
                    .await?;
                let contacts = self.hub.session_contacts(&session).await?;
                json!({"session": session, "contacts": contacts})
            }
            HubResource::Members { session } => {
                let session = self
                    .existing_session(Some(session.clone()), SessionUse::Read)
                    .await?;
                let summary = self.hub.session_summary(&session).await?;
                json!({"session": session, "members": summary.clients, "agent": summary.agent})
            }
            HubResource::Conversation { session, contact } => {
                let history = self
                    .conversation(Some(session.clone()), contact, Some(CONVERSATION_MESSAGES))
                    .await?;
                serde_json::to_value(&history).map_err(HubError::internal)?
            }
        };
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(body.to_string(), resource.uri()).with_mime_type(JSON),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_round_trip_with_encoded_names() {
        let conversation = HubResource::Conversation {
            session: "team a".into(),
            contact: "Mom/Dad?".into(),
        };
        let uri = conversation.uri();
        assert_eq!(
            uri,
            "whatsapp://sessions/team%20a/conversations/Mom%2FDad%3F"
        );
        assert_eq!(HubResource::parse(&uri), Some(conversation));
        for bad in [
            "whatsapp://sessions/a",
            "whatsapp://sessions//contacts",
            "whatsapp://sessions/a/contacts/x",
            "file:///etc/passwd",
            "whatsapp://sessions/a/conversations/%FF",
        ] {
            assert_eq!(HubResource::parse(bad), None, "{bad}");
        }
    }
}
