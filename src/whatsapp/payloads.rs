//! The Cloud API webhook payload as typed serde structs, and what an
//! inbound message means to the hub. This module owns:
//!
//! - the shapes of a delivery: envelope, changes, sender profiles,
//!   messages of every kind, statuses and errors (unknown fields ignored);
//! - the bounds on everything a sender controls, applied while parsing
//!   (strings cut at char boundaries, lists capped), so nothing downstream
//!   sees an oversized value;
//! - per-item leniency: every list is parsed element by element, and a
//!   malformed element is logged and skipped without losing its siblings;
//! - reading one message into its readable summary and its
//!   [`MessageContent`] ([`InboundMessage::read`]).
//!
//! Routing, freshness and the events themselves are `webhooks`'.

use crate::protocol::summary;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;

use crate::protocol::{
    Location, Media, MediaKind, MessageContent, Reaction, ReplyPicked, SharedContact,
};

/// Character limits of sender-controlled strings.
pub mod limits {
    pub const ID: usize = 256;
    pub const TITLE: usize = 256;
    pub const NAME: usize = 256;
    pub const CAPTION: usize = 1024;
    pub const DESCRIPTION: usize = 1024;
    pub const EMOJI: usize = 32;
    pub const FILENAME: usize = 240;
    pub const MIME: usize = 128;
    pub const SHA256: usize = 128;
    pub const TYPE: usize = 64;
    pub const PLACE: usize = 512;
    pub const PHONE: usize = 64;
    /// Error details and titles (what a status error or a summary shows).
    pub const DETAILS: usize = 300;
    /// Shared contact cards per message, and phones per card.
    pub const CARDS: usize = 20;
    pub const PHONES: usize = 10;
}

use limits::*;

/// `text` cut to at most `max` characters, at a char boundary.
pub fn cut(mut text: String, max: usize) -> String {
    if let Some((end, _)) = text.char_indices().nth(max) {
        text.truncate(end);
    }
    text
}

fn bounded<'de, D: Deserializer<'de>, const MAX: usize>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| cut(s, MAX))
}

fn bounded_opt<'de, D: Deserializer<'de>, const MAX: usize>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(|s| cut(s, MAX)))
}

/// The first `MAX` well-formed elements of a list; a malformed element
/// (or a non-list) is logged and skipped so it cannot cost its siblings.
fn first_valid<'de, D: Deserializer<'de>, T: DeserializeOwned, const MAX: usize>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let what = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("item");
    let items = match Value::deserialize(d)? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        _ => {
            tracing::warn!(what, "webhook list is not a list: ignored");
            Vec::new()
        }
    };
    Ok(items
        .into_iter()
        .filter_map(|item| {
            T::deserialize(item)
                .inspect_err(|error| tracing::warn!(what, %error, "malformed webhook item skipped"))
                .ok()
        })
        .take(MAX)
        .collect())
}

fn each_valid<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    first_valid::<D, T, { usize::MAX }>(d)
}

/// A whole POST.
#[derive(Debug, Deserialize)]
pub struct Delivery {
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default, deserialize_with = "each_valid")]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    #[serde(default, deserialize_with = "each_valid")]
    pub changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(default)]
    pub value: Option<ChangeValue>,
}

/// One change: the number it concerns, and its items.
#[derive(Debug, Deserialize)]
pub struct ChangeValue {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// The senders' profiles (not shared cards: see [`ContactCard`]).
    #[serde(default, deserialize_with = "each_valid")]
    pub contacts: Vec<SenderProfile>,
    #[serde(default, deserialize_with = "each_valid")]
    pub messages: Vec<InboundMessage>,
    #[serde(default, deserialize_with = "each_valid")]
    pub statuses: Vec<StatusItem>,
    /// Account-level errors (a change with neither messages nor statuses).
    #[serde(default, deserialize_with = "each_valid")]
    pub errors: Vec<ApiError>,
}

#[derive(Debug, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub phone_number_id: Option<String>,
}

/// `value.contacts[]`: who sent the messages of a change.
#[derive(Debug, Deserialize)]
pub struct SenderProfile {
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub wa_id: Option<String>,
    /// A business-scoped user id (BSUID), given when `wa_id` may not be.
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub user_id: Option<String>,
    #[serde(default)]
    pub profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
pub struct Profile {
    #[serde(default, deserialize_with = "bounded_opt::<_, NAME>")]
    pub name: Option<String>,
}

/// An error object (`messages[].errors[]`, `statuses[].errors[]`,
/// `value.errors[]`).
#[derive(Debug, Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default, deserialize_with = "bounded_opt::<_, DETAILS>")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, DETAILS>")]
    pub message: Option<String>,
    #[serde(default)]
    pub error_data: Option<ErrorData>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorData {
    #[serde(default, deserialize_with = "bounded_opt::<_, DETAILS>")]
    pub details: Option<String>,
}

/// `statuses[]`: what became of a message the hub sent.
#[derive(Debug, Deserialize)]
pub struct StatusItem {
    #[serde(deserialize_with = "bounded::<_, ID>")]
    pub id: String,
    #[serde(deserialize_with = "bounded::<_, TYPE>")]
    pub status: String,
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub recipient_id: Option<String>,
    #[serde(default, deserialize_with = "each_valid")]
    pub errors: Vec<ApiError>,
}

/// `messages[]`: one inbound message. `kind` names which of the optional
/// objects carries it; a kind whose object is missing or unusable reads as
/// unsupported.
#[derive(Debug, Deserialize)]
pub struct InboundMessage {
    #[serde(deserialize_with = "bounded::<_, ID>")]
    pub id: String,
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub from: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub from_user_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "bounded_opt::<_, TYPE>")]
    pub kind: Option<String>,
    #[serde(default)]
    pub context: Option<MessageContext>,
    #[serde(default)]
    pub text: Option<TextBody>,
    #[serde(default)]
    pub image: Option<MediaObject>,
    #[serde(default)]
    pub video: Option<MediaObject>,
    #[serde(default)]
    pub audio: Option<MediaObject>,
    #[serde(default)]
    pub document: Option<MediaObject>,
    #[serde(default)]
    pub sticker: Option<MediaObject>,
    #[serde(default)]
    pub interactive: Option<InteractiveReply>,
    #[serde(default)]
    pub button: Option<QuickReplyButton>,
    #[serde(default)]
    pub reaction: Option<ReactionObject>,
    #[serde(default)]
    pub location: Option<LocationObject>,
    /// Shared contact cards.
    #[serde(default, deserialize_with = "first_valid::<_, ContactCard, CARDS>")]
    pub contacts: Vec<ContactCard>,
    #[serde(default)]
    pub unsupported: Option<UnsupportedObject>,
    #[serde(default, deserialize_with = "each_valid")]
    pub errors: Vec<ApiError>,
}

/// The message a reply refers to.
#[derive(Debug, Deserialize)]
pub struct MessageContext {
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub id: Option<String>,
}

/// The body is not cut here: it is the message itself, and Meta caps it.
#[derive(Debug, Deserialize)]
pub struct TextBody {
    #[serde(default)]
    pub body: Option<String>,
}

/// An inbound image, video, audio, document or sticker. Meta's `url`
/// (lookaside) is not kept: the hub serves the bytes at its own URL.
#[derive(Debug, Deserialize)]
pub struct MediaObject {
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, MIME>")]
    pub mime_type: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, SHA256>")]
    pub sha256: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, CAPTION>")]
    pub caption: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, FILENAME>")]
    pub filename: Option<String>,
    #[serde(default)]
    pub voice: bool,
}

/// `interactive`: a tapped reply button or list row (other types exist).
#[derive(Debug, Deserialize)]
pub struct InteractiveReply {
    #[serde(rename = "type", default, deserialize_with = "bounded_opt::<_, TYPE>")]
    pub kind: Option<String>,
    #[serde(default)]
    pub button_reply: Option<PickedOption>,
    #[serde(default)]
    pub list_reply: Option<PickedOption>,
}

#[derive(Debug, Deserialize)]
pub struct PickedOption {
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, TITLE>")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, DESCRIPTION>")]
    pub description: Option<String>,
}

/// `button`: a tapped template quick-reply button.
#[derive(Debug, Deserialize)]
pub struct QuickReplyButton {
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub payload: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, TITLE>")]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ReactionObject {
    #[serde(default, deserialize_with = "bounded_opt::<_, ID>")]
    pub message_id: Option<String>,
    /// Missing or empty: the reaction was removed.
    #[serde(default, deserialize_with = "bounded_opt::<_, EMOJI>")]
    pub emoji: Option<String>,
}

/// Decimal degrees: a JSON number inbound, a string in some clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Degrees {
    Number(f64),
    Text(String),
}

impl Degrees {
    fn value(&self) -> Option<f64> {
        match self {
            Degrees::Number(n) => Some(*n),
            Degrees::Text(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LocationObject {
    #[serde(default)]
    pub latitude: Option<Degrees>,
    #[serde(default)]
    pub longitude: Option<Degrees>,
    #[serde(default, deserialize_with = "bounded_opt::<_, PLACE>")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, PLACE>")]
    pub address: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, PLACE>")]
    pub url: Option<String>,
}

/// `messages[].contacts[]`: a shared card (only its name and phones are
/// kept).
#[derive(Debug, Deserialize)]
pub struct ContactCard {
    #[serde(default)]
    pub name: Option<CardName>,
    #[serde(default, deserialize_with = "first_valid::<_, CardPhone, PHONES>")]
    pub phones: Vec<CardPhone>,
}

#[derive(Debug, Deserialize)]
pub struct CardName {
    #[serde(default, deserialize_with = "bounded_opt::<_, NAME>")]
    pub formatted_name: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, NAME>")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "bounded_opt::<_, NAME>")]
    pub last_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CardPhone {
    #[serde(default, deserialize_with = "bounded_opt::<_, PHONE>")]
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UnsupportedObject {
    #[serde(rename = "type", default, deserialize_with = "bounded_opt::<_, TYPE>")]
    pub kind: Option<String>,
}

/// An inbound message as the hub records it: a readable summary and the
/// structured content.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub text: String,
    pub content: MessageContent,
}

/// Why a message reads as unsupported: its (possibly qualified) type.
type Unsupported = String;

impl InboundMessage {
    /// The sender: the phone-based `from`, else the BSUID.
    pub fn sender(&self) -> Option<&str> {
        self.from.as_deref().or(self.from_user_id.as_deref())
    }

    /// Whether `profile` describes this message's sender.
    pub fn sent_by(&self, profile: &SenderProfile) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        same(&self.from, &profile.wa_id) || same(&self.from_user_id, &profile.user_id)
    }

    /// Its summary and content; a kind the hub does not model (or one whose
    /// data is missing or out of range) reads as `[unsupported TYPE]`.
    pub fn read(&self) -> Reading {
        let kind = self.kind.as_deref().unwrap_or("unknown");
        if kind == "text" {
            return Reading {
                text: self
                    .text
                    .as_ref()
                    .and_then(|t| t.body.clone())
                    .unwrap_or_default(),
                content: MessageContent::default(),
            };
        }
        match self.read_known(kind) {
            // The same summary as everywhere (`protocol::summary`).
            Ok(content) => Reading {
                text: summary("", &content),
                content,
            },
            Err(unsupported) => self.read_unsupported(unsupported),
        }
    }

    fn read_known(&self, kind: &str) -> Result<MessageContent, Unsupported> {
        match kind {
            "image" | "video" | "audio" | "document" | "sticker" => self.read_media(kind),
            "interactive" => self.read_interactive(),
            "button" => self.read_quick_reply(),
            "reaction" => self.read_reaction(),
            "location" => self.read_location(),
            "contacts" => self.read_contacts(),
            "unsupported" => Err(self
                .unsupported
                .as_ref()
                .and_then(|u| u.kind.clone())
                .unwrap_or_else(|| "unsupported".to_string())),
            other => Err(other.to_string()),
        }
    }

    fn read_unsupported(&self, kind: Unsupported) -> Reading {
        let content = MessageContent {
            unsupported: Some(kind),
            ..MessageContent::default()
        };
        let mut text = summary("", &content);
        // Meta's reason (131051 unknown type, 131052 media download error...).
        let details = self.errors.first().and_then(|e| {
            let details = e.error_data.as_ref().and_then(|d| d.details.as_deref());
            [details, e.title.as_deref()]
                .into_iter()
                .flatten()
                .find(|s| !s.is_empty())
        });
        if let Some(details) = details {
            text = format!("{text} ({details})");
        }
        Reading { text, content }
    }

    fn read_media(&self, kind: &str) -> Result<MessageContent, Unsupported> {
        let unsupported = || kind.to_string();
        let media_kind: MediaKind = kind.parse().map_err(|_| unsupported())?;
        let object = match media_kind {
            MediaKind::Image => &self.image,
            MediaKind::Video => &self.video,
            MediaKind::Audio => &self.audio,
            MediaKind::Document => &self.document,
            MediaKind::Sticker => &self.sticker,
        };
        let object = object.as_ref().ok_or_else(unsupported)?;
        let id = object.id.clone().ok_or_else(unsupported)?;
        let filename = object
            .filename
            .clone()
            .filter(|_| media_kind == MediaKind::Document);
        let voice = media_kind == MediaKind::Audio && object.voice;
        let caption = object.caption.clone().filter(|c| !c.is_empty());
        Ok(MessageContent {
            media: Some(Box::new(Media {
                kind: media_kind,
                id: Some(id),
                link: None,
                url: None,
                mime_type: object.mime_type.clone(),
                sha256: object.sha256.clone(),
                size: None,
                caption,
                filename,
                voice,
            })),
            ..MessageContent::default()
        })
    }

    fn read_interactive(&self) -> Result<MessageContent, Unsupported> {
        let interactive = self.interactive.as_ref().ok_or("interactive")?;
        let kind = interactive.kind.as_deref().unwrap_or("unknown");
        let unsupported = || format!("interactive:{kind}");
        let (source, picked) = match kind {
            "button_reply" => ("button", &interactive.button_reply),
            "list_reply" => ("list", &interactive.list_reply),
            _ => return Err(unsupported()),
        };
        let picked = picked.as_ref().ok_or_else(unsupported)?;
        let id = picked.id.clone().ok_or_else(unsupported)?;
        let title = picked.title.clone().unwrap_or_default();
        let description = picked.description.clone().filter(|_| source == "list");
        Ok(self.picked(source, id, title, description))
    }

    fn read_quick_reply(&self) -> Result<MessageContent, Unsupported> {
        let button = self.button.as_ref().ok_or("button")?;
        // Without a payload set on the template, Meta sends the label.
        let id = button
            .payload
            .clone()
            .or_else(|| button.text.clone())
            .ok_or("button")?;
        let title = button.text.clone().unwrap_or_else(|| id.clone());
        Ok(self.picked("template_button", id, title, None))
    }

    fn picked(
        &self,
        source: &str,
        id: String,
        title: String,
        description: Option<String>,
    ) -> MessageContent {
        MessageContent {
            reply: Some(Box::new(ReplyPicked {
                source: source.to_string(),
                id,
                title,
                description,
                context_message_id: self.context.as_ref().and_then(|c| c.id.clone()),
            })),
            ..MessageContent::default()
        }
    }

    fn read_reaction(&self) -> Result<MessageContent, Unsupported> {
        let reaction = self.reaction.as_ref().ok_or("reaction")?;
        let message_id = reaction.message_id.clone().ok_or("reaction")?;
        let emoji = reaction.emoji.clone().unwrap_or_default();
        Ok(MessageContent {
            reaction: Some(Box::new(Reaction { message_id, emoji })),
            ..MessageContent::default()
        })
    }

    fn read_location(&self) -> Result<MessageContent, Unsupported> {
        let location = self.location.as_ref().ok_or("location")?;
        let degrees = |d: &Option<Degrees>, max: f64| {
            d.as_ref()
                .and_then(Degrees::value)
                .filter(|v| v.is_finite() && v.abs() <= max)
        };
        let latitude = degrees(&location.latitude, 90.0).ok_or("location")?;
        let longitude = degrees(&location.longitude, 180.0).ok_or("location")?;
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(MessageContent {
            location: Some(Box::new(Location {
                latitude,
                longitude,
                name: non_empty(&location.name),
                address: non_empty(&location.address),
                url: non_empty(&location.url),
            })),
            ..MessageContent::default()
        })
    }

    fn read_contacts(&self) -> Result<MessageContent, Unsupported> {
        if self.contacts.is_empty() {
            return Err("contacts".to_string());
        }
        Ok(MessageContent {
            contacts: Some(self.contacts.iter().map(ContactCard::shared).collect()),
            ..MessageContent::default()
        })
    }
}

impl ContactCard {
    /// Its name (`formatted_name`, else first and last) and phones.
    fn shared(&self) -> SharedContact {
        let name = self.name.as_ref().map_or_else(String::new, |n| {
            n.formatted_name
                .clone()
                .filter(|f| !f.trim().is_empty())
                .unwrap_or_else(|| {
                    let parts = [n.first_name.as_deref(), n.last_name.as_deref()];
                    let joined: Vec<&str> = parts.into_iter().flatten().map(str::trim).collect();
                    cut(joined.join(" ").trim().to_string(), NAME)
                })
        });
        SharedContact {
            name,
            phones: self.phones.iter().filter_map(|p| p.phone.clone()).collect(),
        }
    }
}

#[cfg(test)]
#[path = "payloads_tests.rs"]
mod tests;
