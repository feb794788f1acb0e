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

use super::errors::{ErrorCode, HubError};

/// The content of one message beyond its text (flattened into
/// [`super::HistoryEntry`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<Media>>,
    /// The option a person picked (reply button, list row, template
    /// quick-reply button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Box<ReplyPicked>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Box<Reaction>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Box<Location>>,
    /// Contact cards shared in the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Vec<SharedContact>>,
    /// Reply options offered by an outgoing interactive message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Box<Interactive>>,
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

fn invalid(message: impl Into<String>) -> HubError {
    HubError::new(ErrorCode::InvalidField, message)
}

fn at_most(field: &str, value: &str, max: usize) -> Result<(), HubError> {
    if value.chars().count() > max {
        return Err(invalid(format!(
            "field `{field}` must be at most {max} characters"
        )));
    }
    Ok(())
}

fn present(field: &str, value: &str, max: usize) -> Result<(), HubError> {
    if value.trim().is_empty() {
        return Err(invalid(format!("field `{field}` must not be empty")));
    }
    at_most(field, value, max)
}

/// Most characters of a caption (Cloud API).
pub const MAX_CAPTION_CHARS: usize = 1024;

/// Checks a `send`'s content against the Cloud API's rules before anything
/// is sent: at most one of media, options, reaction, location; text
/// required without them; the limits of each (reference: Meta's
/// interactive, media, reaction and location pages).
pub fn check_outgoing(message: &str, content: &MessageContent) -> Result<(), HubError> {
    let given = [
        content.media.is_some(),
        content.interactive.is_some(),
        content.reaction.is_some(),
        content.location.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 {
        return Err(invalid(
            "a send carries at most one of `command.media`, `command.interactive`, `command.reaction` and `command.location`",
        ));
    }
    if given == 0 && message.is_empty() {
        return Err(invalid("field `command.message` must not be empty"));
    }
    if let Some(media) = &content.media {
        check_media(message, media)?;
    }
    if let Some(options) = &content.interactive {
        check_interactive(message, options)?;
    }
    if let Some(reaction) = &content.reaction {
        if !message.is_empty() {
            return Err(invalid("a reaction carries no `command.message`"));
        }
        present("command.reaction.message_id", &reaction.message_id, 256)?;
        at_most("command.reaction.emoji", &reaction.emoji, 32)?;
    }
    if let Some(location) = &content.location {
        let lat_ok = location.latitude.is_finite() && location.latitude.abs() <= 90.0;
        let lon_ok = location.longitude.is_finite() && location.longitude.abs() <= 180.0;
        if !(lat_ok && lon_ok) {
            return Err(invalid(
                "`command.location` needs latitude in [-90, 90] and longitude in [-180, 180]",
            ));
        }
        for (field, value) in [
            ("name", &location.name),
            ("address", &location.address),
            ("url", &location.url),
        ] {
            if let Some(v) = value {
                at_most(&format!("command.location.{field}"), v, 512)?;
            }
        }
    }
    Ok(())
}

fn check_media(message: &str, media: &Media) -> Result<(), HubError> {
    match (&media.id, &media.link) {
        (Some(id), None) => {
            present("command.media.id", id, 256)?;
            if !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(
                    "field `command.media.id` must be a media id from an upload",
                ));
            }
        }
        (None, Some(link)) => {
            at_most("command.media.link", link, 2048)?;
            let scheme_ok = link.starts_with("https://") || link.starts_with("http://");
            if !scheme_ok || link.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("field `command.media.link` must be an http(s) URL"));
            }
        }
        _ => {
            return Err(invalid(
                "`command.media` needs exactly one of `id` (from an upload) and `link`",
            ));
        }
    }
    let set_by_hub = [
        ("url", media.url.is_some()),
        ("mime_type", media.mime_type.is_some()),
        ("sha256", media.sha256.is_some()),
        ("size", media.size.is_some()),
    ];
    if let Some((field, _)) = set_by_hub.iter().find(|(_, set)| *set) {
        return Err(invalid(format!(
            "field `command.media.{field}` is set by the hub, not by a send"
        )));
    }
    let captioned = matches!(
        media.kind,
        MediaKind::Image | MediaKind::Video | MediaKind::Document
    );
    if !captioned && (media.caption.is_some() || !message.is_empty()) {
        return Err(invalid(format!(
            "{} media carries no caption or `command.message`",
            media.kind.as_str()
        )));
    }
    if media.caption.is_some() && !message.is_empty() {
        return Err(invalid(
            "give the caption as `command.message` or `command.media.caption`, not both",
        ));
    }
    at_most(
        "command.media.caption",
        media.caption.as_deref().unwrap_or(message),
        MAX_CAPTION_CHARS,
    )?;
    if let Some(name) = &media.filename {
        if media.kind != MediaKind::Document {
            return Err(invalid("only a document carries `command.media.filename`"));
        }
        present("command.media.filename", name, 240)?;
        if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
            return Err(invalid(
                "field `command.media.filename` must be a plain file name",
            ));
        }
    }
    if media.voice && media.kind != MediaKind::Audio {
        return Err(invalid("only audio can be a voice note"));
    }
    Ok(())
}

/// Reply options' limits (Meta: reply buttons, list messages).
fn check_interactive(body: &str, options: &Interactive) -> Result<(), HubError> {
    let (header, footer, body_max) = match options {
        Interactive::Buttons {
            buttons,
            header,
            footer,
        } => {
            if !(1..=3).contains(&buttons.len()) {
                return Err(invalid(
                    "`command.interactive.buttons` takes 1 to 3 buttons",
                ));
            }
            check_options("command.interactive.buttons", buttons, 256, 20, false)?;
            (header, footer, 1024)
        }
        Interactive::List {
            button,
            sections,
            header,
            footer,
        } => {
            present("command.interactive.button", button, 20)?;
            if !(1..=10).contains(&sections.len()) {
                return Err(invalid(
                    "`command.interactive.sections` takes 1 to 10 sections",
                ));
            }
            let rows: Vec<ReplyOption> = sections.iter().flat_map(|s| s.rows.clone()).collect();
            if !(1..=10).contains(&rows.len()) || sections.iter().any(|s| s.rows.is_empty()) {
                return Err(invalid(
                    "a list takes 1 to 10 rows in all, at least one per section",
                ));
            }
            for section in sections {
                match &section.title {
                    Some(t) => at_most("command.interactive.sections.title", t, 24)?,
                    None if sections.len() > 1 => {
                        return Err(invalid(
                            "every section of a list with several sections needs a `title`",
                        ));
                    }
                    None => {}
                }
            }
            check_options("command.interactive.sections.rows", &rows, 200, 24, true)?;
            (header, footer, 4096)
        }
    };
    present("command.message", body, body_max)?;
    if let Some(h) = header {
        present("command.interactive.header", h, 60)?;
    }
    if let Some(f) = footer {
        present("command.interactive.footer", f, 60)?;
    }
    Ok(())
}

fn check_options(
    field: &str,
    options: &[ReplyOption],
    id_max: usize,
    title_max: usize,
    described: bool,
) -> Result<(), HubError> {
    for (i, option) in options.iter().enumerate() {
        present(&format!("{field}.id"), &option.id, id_max)?;
        if option.id.trim() != option.id {
            return Err(invalid(format!(
                "field `{field}.id` must not start or end with spaces"
            )));
        }
        present(&format!("{field}.title"), &option.title, title_max)?;
        match (&option.description, described) {
            (Some(d), true) => at_most(&format!("{field}.description"), d, 72)?,
            (Some(_), false) => {
                return Err(invalid(format!("`{field}` options take no description")));
            }
            (None, _) => {}
        }
        let earlier = &options[..i];
        if earlier.iter().any(|o| o.id == option.id) {
            return Err(invalid(format!("`{field}` ids must be unique")));
        }
        if !described && earlier.iter().any(|o| o.title == option.title) {
            return Err(invalid(format!("`{field}` titles must be unique")));
        }
    }
    Ok(())
}

/// The readable text of a message with this content: `[image] caption`,
/// `[voice note]`, `[document a.pdf] caption`, a picked option's title,
/// `[reaction 👍]`, `[location NAME, ADDRESS]` ... and `text` itself for a
/// plain message or one with reply options (the options' body).
pub fn summary(text: &str, content: &MessageContent) -> String {
    let with_caption = |head: String, caption: Option<&str>| match caption
        .filter(|c| !c.is_empty())
        .or(Some(text).filter(|t| !t.is_empty()))
    {
        Some(c) => format!("{head} {c}"),
        None => head,
    };
    if let Some(media) = &content.media {
        let head = match (media.kind, media.voice, &media.filename) {
            (MediaKind::Audio, true, _) => "[voice note]".to_string(),
            (MediaKind::Document, _, Some(name)) => format!("[document {name}]"),
            (kind, _, _) => format!("[{}]", kind.as_str()),
        };
        return with_caption(head, media.caption.as_deref());
    }
    if let Some(reply) = &content.reply {
        return reply.title.clone();
    }
    if let Some(reaction) = &content.reaction {
        return if reaction.emoji.is_empty() {
            "[reaction removed]".to_string()
        } else {
            format!("[reaction {}]", reaction.emoji)
        };
    }
    if let Some(location) = &content.location {
        let named: Vec<&str> = [location.name.as_deref(), location.address.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect();
        return if named.is_empty() {
            format!("[location {},{}]", location.latitude, location.longitude)
        } else {
            format!("[location {}]", named.join(", "))
        };
    }
    if let Some(cards) = &content.contacts {
        // A card without a name reads as its first phone.
        let names: Vec<&str> = cards
            .iter()
            .map(|c| match (c.name.as_str(), c.phones.first()) {
                ("", Some(phone)) => phone.as_str(),
                ("", None) => "(no name)",
                (name, _) => name,
            })
            .collect();
        let label = if names.len() == 1 {
            "contact card"
        } else {
            "contact cards"
        };
        return format!("[{label}: {}]", names.join(", "));
    }
    if let Some(kind) = &content.unsupported {
        return with_caption(format!("[unsupported {kind}]"), None);
    }
    text.to_string()
}
