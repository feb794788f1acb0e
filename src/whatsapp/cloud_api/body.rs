//! The JSON bodies of `POST /{phone_number_id}/messages` (Meta's message
//! types: text, media, interactive reply buttons and lists, reactions,
//! locations, templates). Contents were checked against the Cloud API's
//! limits when the command was parsed (`protocol::check_outgoing`).

use serde_json::{Value, json};

use crate::protocol::{Interactive, MediaKind};
use crate::whatsapp::{Outgoing, Template};

fn envelope(to: &str, kind: &str, object: Value) -> Value {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
    });
    body[kind] = object;
    body
}

/// The body of a send to `to` (digits).
pub fn message(to: &str, message: &Outgoing) -> Value {
    let content = &message.content;
    let text = message.text.as_str();
    if let Some(media) = &content.media {
        let mut object = match (&media.id, &media.link) {
            (Some(id), _) => json!({ "id": id }),
            (None, link) => json!({ "link": link }),
        };
        let caption = media
            .caption
            .as_deref()
            .or(Some(text).filter(|t| !t.is_empty()));
        let captioned = matches!(
            media.kind,
            MediaKind::Image | MediaKind::Video | MediaKind::Document
        );
        if let (true, Some(caption)) = (captioned, caption) {
            object["caption"] = json!(caption);
        }
        if let Some(name) = &media.filename {
            object["filename"] = json!(name);
        }
        if media.voice {
            object["voice"] = json!(true);
        }
        return envelope(to, media.kind.as_str(), object);
    }
    if let Some(options) = &content.interactive {
        return envelope(to, "interactive", interactive(text, options));
    }
    if let Some(reaction) = &content.reaction {
        return envelope(
            to,
            "reaction",
            json!({ "message_id": reaction.message_id, "emoji": reaction.emoji }),
        );
    }
    if let Some(location) = &content.location {
        let mut object = json!({
            "latitude": location.latitude,
            "longitude": location.longitude,
        });
        if let Some(name) = &location.name {
            object["name"] = json!(name);
        }
        if let Some(address) = &location.address {
            object["address"] = json!(address);
        }
        return envelope(to, "location", object);
    }
    envelope(to, "text", json!({ "preview_url": false, "body": text }))
}

fn interactive(body: &str, options: &Interactive) -> Value {
    let (kind, action, header, footer) = match options {
        Interactive::Buttons {
            buttons,
            header,
            footer,
        } => {
            let buttons: Vec<Value> = buttons
                .iter()
                .map(|b| json!({"type": "reply", "reply": {"id": b.id, "title": b.title}}))
                .collect();
            ("button", json!({ "buttons": buttons }), header, footer)
        }
        Interactive::List {
            button,
            sections,
            header,
            footer,
        } => {
            let sections: Vec<Value> = sections
                .iter()
                .map(|s| {
                    let rows: Vec<Value> = s
                        .rows
                        .iter()
                        .map(|r| {
                            let mut row = json!({"id": r.id, "title": r.title});
                            if let Some(d) = &r.description {
                                row["description"] = json!(d);
                            }
                            row
                        })
                        .collect();
                    let mut section = json!({ "rows": rows });
                    if let Some(t) = &s.title {
                        section["title"] = json!(t);
                    }
                    section
                })
                .collect();
            (
                "list",
                json!({ "button": button, "sections": sections }),
                header,
                footer,
            )
        }
    };
    let mut object = json!({
        "type": kind,
        "body": { "text": body },
        "action": action,
    });
    if let Some(h) = header {
        object["header"] = json!({"type": "text", "text": h});
    }
    if let Some(f) = footer {
        object["footer"] = json!({ "text": f });
    }
    object
}

/// The body of a template send.
pub fn template(to: &str, template: &Template) -> Value {
    let mut object = json!({
        "name": template.name,
        "language": { "code": template.language },
    });
    if let Some(components) = &template.components {
        object["components"] = components.clone();
    }
    envelope(to, "template", object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Media, MessageContent, Reaction, ReplyOption};

    fn outgoing(text: &str, content: MessageContent) -> Outgoing {
        Outgoing {
            text: text.into(),
            content,
        }
    }

    #[test]
    fn bodies_follow_the_cloud_api() {
        let text = message("1555", &outgoing("hi", MessageContent::default()));
        assert_eq!(text["type"], "text");
        assert_eq!(text["text"]["body"], "hi");

        let doc = Media {
            kind: MediaKind::Document,
            id: Some("42".into()),
            link: None,
            url: None,
            mime_type: None,
            sha256: None,
            size: None,
            caption: None,
            filename: Some("report.pdf".into()),
            voice: false,
        };
        let sent = message(
            "1555",
            &outgoing(
                "Q3 numbers",
                MessageContent {
                    media: Some(Box::new(doc)),
                    ..Default::default()
                },
            ),
        );
        assert_eq!(
            sent["document"],
            json!({"id": "42", "caption": "Q3 numbers", "filename": "report.pdf"})
        );
        assert_eq!(sent["type"], "document");

        let buttons = Interactive::Buttons {
            buttons: vec![ReplyOption {
                id: "yes".into(),
                title: "Yes".into(),
                description: None,
            }],
            header: None,
            footer: Some("f".into()),
        };
        let sent = message(
            "1555",
            &outgoing(
                "Confirm?",
                MessageContent {
                    interactive: Some(Box::new(buttons)),
                    ..Default::default()
                },
            ),
        );
        assert_eq!(sent["interactive"]["type"], "button");
        assert_eq!(sent["interactive"]["body"]["text"], "Confirm?");
        assert_eq!(
            sent["interactive"]["action"]["buttons"][0],
            json!({"type": "reply", "reply": {"id": "yes", "title": "Yes"}})
        );
        assert_eq!(sent["interactive"]["footer"]["text"], "f");

        let sent = message(
            "1555",
            &outgoing(
                "",
                MessageContent {
                    reaction: Some(Box::new(Reaction {
                        message_id: "wamid.A".into(),
                        emoji: "👍".into(),
                    })),
                    ..Default::default()
                },
            ),
        );
        assert_eq!(
            sent["reaction"],
            json!({"message_id": "wamid.A", "emoji": "👍"})
        );
    }
}
