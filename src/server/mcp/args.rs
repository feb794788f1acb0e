//! The arguments of the `/mcp` tools, as their `inputSchema`s describe
//! them (unknown fields refused).

use rmcp::schemars::JsonSchema;
use serde::Deserialize;

use crate::protocol::{Location, Media, Reaction, ReplyOption};

/// Every tool's optional `session` argument.
pub(super) const SESSION_DOC: &str = "The hub session to act on. Default: the token's only session, or `default` without authentication.";

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(super) struct SessionOnly {
    #[schemars(description = SESSION_DOC)]
    pub(super) session: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(super) struct SendMessage {
    /// The contact's name as the session knows it (case and small typos are forgiven).
    pub(super) contact: String,
    /// The text to send; with `media`, its caption; with `buttons`, the
    /// text above them. Optional with `media`, `reaction` or `location`.
    #[serde(default)]
    pub(super) message: String,
    /// A file to send: `{"kind": "document", "id": "<id from POST /api/v1/sessions/{session}/media>", "filename": "report.pdf"}`,
    /// or `{"kind": "image", "link": "https://…"}`. Kinds: image, audio, video, document, sticker.
    pub(super) media: Option<Media>,
    /// Up to 3 reply buttons under `message`, e.g. `[{"id": "yes", "title": "Yes"}]`
    /// (titles at most 20 characters). The contact's tap comes back as a message with `reply`.
    pub(super) buttons: Option<Vec<ReplyOption>>,
    /// An emoji reaction to one of the contact's messages: `{"message_id": "wamid…", "emoji": "👍"}` (empty emoji removes it).
    pub(super) reaction: Option<Reaction>,
    /// A location pin: `{"latitude": 37.44, "longitude": -122.16, "name": "…", "address": "…"}`.
    pub(super) location: Option<Location>,
    /// Sends at most once per key and session (retries get the first answer).
    pub(super) idempotency_key: Option<String>,
    #[schemars(description = SESSION_DOC)]
    pub(super) session: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(super) struct GetHistory {
    /// The contact's name as the session knows it.
    pub(super) contact: String,
    /// How many of the newest messages to return (1 to 500, default 20).
    #[schemars(range(min = 1, max = 500))]
    pub(super) limit: Option<u64>,
    #[schemars(description = SESSION_DOC)]
    pub(super) session: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(super) struct MarkRead {
    /// The contact whose latest message to mark read (earlier ones with it).
    pub(super) contact: String,
    /// Also show "typing…" to the contact (for up to 25 s, or until the
    /// next message): only when an answer follows.
    #[serde(default)]
    pub(super) typing: bool,
    #[schemars(description = SESSION_DOC)]
    pub(super) session: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(super) struct Broadcast {
    /// The text every client of the session receives as a `broadcast` event.
    pub(super) text: String,
    #[schemars(description = SESSION_DOC)]
    pub(super) session: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(super) struct RunCommand {
    /// A command in plain language, e.g. "send john a message saying hello".
    pub(super) text: String,
    /// Runs at most once per key and session (retries get the first answer).
    pub(super) idempotency_key: Option<String>,
    #[schemars(description = SESSION_DOC)]
    pub(super) session: Option<String>,
}
