//! What a message carries besides its text ([`crate::protocol::MessageContent`])
//! as terminal text: media with its size and absolute URL, a picked reply
//! option, a reaction, a location, shared contact cards, offered options
//! and types the hub does not model. Pure, tested in format_tests.rs.
//!
//! Like everything printed, every string from the wire goes through
//! [`clean`].

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;

use crate::protocol::{Interactive, Location, Media, MessageContent, ReplyOption};

/// How a message shows: the text after `contact: ` and the lines under it
/// (offered options), not yet indented.
#[derive(Debug, PartialEq)]
pub(super) struct Shown {
    pub body: String,
    pub below: Vec<String>,
}

/// The body and option lines of a history entry or `message_event`.
/// Content that says more than the `message` summary replaces it (the
/// summary repeats the caption, the picked title, ...); content that does
/// not parse (a media kind from a newer hub, ...) leaves the summary,
/// which is always readable.
pub(super) fn show(entry: &Value, message: &str, origin: Option<&str>) -> Shown {
    let plain = || Shown {
        body: clean(message),
        below: Vec::new(),
    };
    let Ok(content) = MessageContent::deserialize(entry) else {
        return plain();
    };
    if content.is_empty() {
        return plain();
    }
    let mut parts = Vec::new();
    if let Some(media) = &content.media {
        parts.push(media_text(media, origin));
    }
    if let Some(reply) = &content.reply {
        let mut text = format!(
            "↩ picked \"{}\" ({})",
            clean(&reply.title),
            clean(&reply.id)
        );
        if let Some(d) = reply.description.as_deref().filter(|d| !d.is_empty()) {
            let _ = write!(text, " — {}", clean(d));
        }
        parts.push(text);
    }
    if let Some(reaction) = &content.reaction {
        parts.push(if reaction.emoji.is_empty() {
            format!(
                "removed the reaction to message {}",
                clean(&reaction.message_id)
            )
        } else {
            format!(
                "reacted {} to message {}",
                clean(&reaction.emoji),
                clean(&reaction.message_id)
            )
        });
    }
    if let Some(location) = &content.location {
        parts.push(location_text(location));
    }
    if let Some(cards) = content.contacts.as_ref().filter(|c| !c.is_empty()) {
        let cards: Vec<String> = cards
            .iter()
            .map(|c| {
                let phones: Vec<String> = c.phones.iter().map(|p| clean(p)).collect();
                if phones.is_empty() {
                    clean(&c.name)
                } else {
                    format!("{} ({})", clean(&c.name), phones.join(", "))
                }
            })
            .collect();
        let noun = if cards.len() == 1 {
            "shared contact"
        } else {
            "shared contacts"
        };
        parts.push(format!("{noun}: {}", cards.join("; ")));
    }
    if let Some(kind) = &content.unsupported {
        parts.push(format!("unsupported message type {}", clean(kind)));
    }
    // Offered options come with the text they ask about: it stays.
    let body = if parts.is_empty() {
        clean(message)
    } else {
        parts.join(" ")
    };
    let below = content
        .interactive
        .as_ref()
        .map_or_else(Vec::new, |i| options(i));
    Shown { body, below }
}

/// `image (12.3 KB) "caption" http://hub:8002/api/v1/sessions/s/media/r`,
/// `voice note (8.0 KB) …`, `document report.pdf (1.2 MB) …`.
fn media_text(media: &Media, origin: Option<&str>) -> String {
    let mut out = String::from(if media.voice {
        "voice note"
    } else {
        media.kind.as_str()
    });
    if let Some(name) = media.filename.as_deref().filter(|n| !n.is_empty()) {
        let _ = write!(out, " {}", clean(name));
    }
    if let Some(size) = media.size {
        let _ = write!(out, " ({})", human_size(size));
    }
    if let Some(caption) = media.caption.as_deref().filter(|c| !c.is_empty()) {
        let _ = write!(out, " \"{}\"", clean(caption));
    }
    let url = media.url.as_deref().map(|u| absolute(u, origin));
    if let Some(url) = url.or_else(|| media.link.as_deref().map(clean)) {
        let _ = write!(out, " {url}");
    }
    out
}

/// `location 52.520008,13.404954 Brandenburger Tor, Pariser Platz <url>`:
/// the coordinates as a maps search box takes them.
fn location_text(l: &Location) -> String {
    let mut out = format!("location {},{}", l.latitude, l.longitude);
    let place: Vec<String> = [&l.name, &l.address]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(|s| clean(s))
        .collect();
    if !place.is_empty() {
        let _ = write!(out, " {}", place.join(", "));
    }
    if let Some(url) = l.url.as_deref().filter(|u| !u.is_empty()) {
        let _ = write!(out, " {}", clean(url));
    }
    out
}

/// The offered options, numbered from 1 across a list's sections.
fn options(interactive: &Interactive) -> Vec<String> {
    let option = |n: usize, o: &ReplyOption| {
        let mut line = format!("{n}. {}", clean(&o.title));
        if let Some(d) = o.description.as_deref().filter(|d| !d.is_empty()) {
            let _ = write!(line, " — {}", clean(d));
        }
        line
    };
    match interactive {
        Interactive::Buttons { buttons, .. } => buttons
            .iter()
            .enumerate()
            .map(|(i, o)| option(i + 1, o))
            .collect(),
        Interactive::List {
            button, sections, ..
        } => {
            let mut lines = vec![format!("list \"{}\":", clean(button))];
            let mut n = 0;
            for section in sections {
                if let Some(title) = section.title.as_deref().filter(|t| !t.is_empty()) {
                    lines.push(format!("{}:", clean(title)));
                }
                for row in &section.rows {
                    n += 1;
                    lines.push(option(n, row));
                }
            }
            lines
        }
    }
}

/// A hub path made absolute with the hub's HTTP origin (a URL that is
/// already absolute, or no origin known, is shown as it is).
fn absolute(url: &str, origin: Option<&str>) -> String {
    match origin {
        Some(origin) if url.starts_with('/') && !url.starts_with("//") => {
            clean(&format!("{origin}{url}"))
        }
        _ => clean(url),
    }
}

/// The hub's HTTP origin from its WebSocket URL: `ws://h:8002/ws` →
/// `http://h:8002`, `wss://h/` → `https://h`. Credentials in the URL are
/// dropped (they would end up on screen). None for anything else.
pub fn http_origin(ws_url: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(ws_url).ok()?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return None,
    };
    url.set_scheme(scheme).ok()?;
    url.host_str()?;
    Some(url.origin().ascii_serialization())
}

/// `512 B`, `12.3 KB`, `4.0 MB` (powers of 1024).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 KB would print as "1024.0 KB".
    while value >= 1023.95 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Makes untrusted text safe to print on one line: control characters
/// (newlines, escape sequences, ...) are shown escaped instead of acting.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
