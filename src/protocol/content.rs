//! What a message carries besides its text: media, a tapped reply option,
//! a reaction, a location, shared contact cards, an offered set of reply
//! options, or the raw type of a kind the hub does not know. Shared by
//! the wire (`message_event`, `get_history`), the store and the connectors.
//!
//! Every field is optional and omitted when absent, so a text message is
//! exactly what it always was. `message` always holds a readable summary
//! (`[image] caption`, the tapped option's title, ...) for clients that do
//! not know these objects.

use serde::{Deserialize, Serialize};

/// The content of one message beyond its text (flattened into
/// [`super::HistoryEntry`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// The option a person picked (reply button, list row, template
    /// quick-reply button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyPicked>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Contact cards shared in the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Vec<SharedContact>>,
    /// Reply options offered by an outgoing interactive message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Interactive>,
    /// The WhatsApp type of a message the hub does not model (`poll_update`,
    /// `edit`, a future type ...); `message` then reads `[unsupported TYPE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

impl MessageContent {
    pub fn is_empty(&self) -> bool {
        *self == MessageContent::default()
    }
}

/// The kinds of media WhatsApp carries (a voice note is `audio` with
/// `voice: true`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum MediaKind {
    Image,
    Audio,
    Video,
    Document,
    Sticker,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A media attachment. Inbound: `id` is the Cloud API media id and `url`
/// the hub path that serves its bytes to the session's members. Outbound
/// (`send`): exactly one of `id` (from an upload) or `link` (a public
/// https URL the Cloud API fetches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Media {
    pub kind: MediaKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Hub path of the bytes: `/api/v1/sessions/{session}/media/{ref}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes, when known (after an upload or a first download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// Documents only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Audio recorded as a voice note.
    #[serde(default, skip_serializing_if = "is_false")]
    pub voice: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which option a person picked, and on which offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplyPicked {
    /// `button` (reply button), `list` (list row) or `template_button`
    /// (a template's quick-reply button; `id` is its payload).
    pub source: String,
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The message id of the message that carried the options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_message_id: Option<String>,
}

/// An emoji reaction to a message; an empty `emoji` removes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reaction {
    pub message_id: String,
    #[serde(default)]
    pub emoji: String,
}

/// A shared location (decimal degrees).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A contact card someone shared (name and phone numbers only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SharedContact {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<String>,
}

/// Reply options offered with a message: up to 3 buttons, or a list of up
/// to 10 rows in sections behind a `button` label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Interactive {
    Buttons {
        buttons: Vec<ReplyOption>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
    },
    List {
        /// The label of the button that opens the list.
        button: String,
        sections: Vec<ListSection>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplyOption {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub rows: Vec<ReplyOption>,
}
