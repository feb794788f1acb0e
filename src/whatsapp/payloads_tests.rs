//! One test per message kind and per robustness rule, through
//! [`events_of`], with the reference's examples verbatim where it has them.

use serde_json::{Value, json};

use super::*;
use crate::config::whatsapp::NumberRoutes;
use crate::protocol::DeliveryStatus;
use crate::whatsapp::webhooks::{WebhookEvent, events_of};

const PHONE_ID: &str = "106540352242922";

fn routes() -> NumberRoutes {
    NumberRoutes::new(vec![(PHONE_ID.into(), "s".into())], "d".into())
}

/// A delivery of `messages` (JSON text, as in the reference) to the one
/// configured number, from Sheena.
fn delivery(messages: &str) -> Value {
    let messages: Value = serde_json::from_str(messages).expect("test JSON");
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
            "messages": messages,
        }
    }]}]})
}

/// The text and content of the single inbound message of `messages`.
fn read_one(message: &str) -> (String, MessageContent) {
    let events = events_of(&delivery(&format!("[{message}]")), &routes());
    match events.as_slice() {
        [WebhookEvent::Inbound { text, content, .. }] => (text.clone(), content.clone()),
        other => panic!("expected one inbound event, got {other:?}"),
    }
}

fn unsupported(kind: &str) -> MessageContent {
    MessageContent {
        unsupported: Some(kind.into()),
        ..MessageContent::default()
    }
}

#[test]
fn image_with_caption() {
    let (text, content) = read_one(
        r#"{
  "from": "16505551234",
  "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
  "timestamp": "1744344496",
  "type": "image",
  "image": {
    "caption": "Taj Mahal",
    "mime_type": "image/jpeg",
    "sha256": "SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=",
    "id": "1003383421387256",
    "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=133..."
  }
}"#,
    );
    assert_eq!(text, "[image] Taj Mahal");
    assert_eq!(
        content.media,
        Some(Box::new(Media {
            kind: MediaKind::Image,
            id: Some("1003383421387256".into()),
            link: None,
            url: None, // Meta's lookaside URL is not kept
            mime_type: Some("image/jpeg".into()),
            sha256: Some("SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=".into()),
            size: None,
            caption: Some("Taj Mahal".into()),
            filename: None,
            voice: false,
        }))
    );
}

#[test]
fn voice_note_and_plain_audio() {
    let audio = |voice: bool| {
        format!(
            r#"{{"from": "16505551234", "id": "wamid.V", "timestamp": "1744344496", "type": "audio",
                "audio": {{ "mime_type": "audio/ogg; codecs=opus", "sha256": "wvqXMe6n7n1W0zphvLPoLj+s/NtKqmr3zZ7YzTP7xFI=", "id": "1908647269898587", "url": "https://lookaside.fbsbx.com/…", "voice": {voice} }}}}"#
        )
    };
    let (text, content) = read_one(&audio(true));
    assert_eq!(text, "[voice note]");
    let media = content.media.expect("media");
    assert_eq!((media.kind, media.voice), (MediaKind::Audio, true));
    assert_eq!(media.mime_type.as_deref(), Some("audio/ogg; codecs=opus"));
    let (text, content) = read_one(&audio(false));
    assert_eq!(text, "[audio]");
    assert!(!content.media.expect("media").voice);
}

#[test]
fn document_with_filename() {
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.D", "timestamp": "1744344496", "type": "document",
            "document": { "caption": "my receipt", "filename": "receipt.pdf", "mime_type": "application/pdf", "sha256": "V5OPpLD/gEG6Xjg0MbmQDLFgcKsL+j5LfY4ny/pZ4MY=", "id": "622684793477189", "url": "https://lookaside.fbsbx.com/…" }}"#,
    );
    assert_eq!(text, "[document receipt.pdf] my receipt");
    let media = content.media.expect("media");
    assert_eq!(media.kind, MediaKind::Document);
    assert_eq!(media.filename.as_deref(), Some("receipt.pdf"));
    assert_eq!(media.caption.as_deref(), Some("my receipt"));
}

#[test]
fn sticker_and_video() {
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.S", "timestamp": "1744344496", "type": "sticker",
            "sticker": { "mime_type": "image/webp", "sha256": "wvqXMe6n7n1W0zphvLPoLj+s/NtKqmr3zZ7YzTP7xFI=", "id": "1908647269898587", "url": "https://lookaside.fbsbx.com/…", "animated": true }}"#,
    );
    assert_eq!(text, "[sticker]");
    assert_eq!(content.media.expect("media").kind, MediaKind::Sticker);
    let (text, _) = read_one(
        r#"{"from": "16505551234", "id": "wamid.VI", "timestamp": "1744344496", "type": "video",
            "video": { "caption": "Timelapse of growth", "mime_type": "video/mp4", "sha256": "vdGU5X4caz12KwFgYwpljlUNqMt1YnkH+5GkPc3mMnc=", "id": "731675419373506", "url": "https://lookaside.fbsbx.com/…" }}"#,
    );
    assert_eq!(text, "[video] Timelapse of growth");
}

#[test]
fn media_without_an_id_is_unsupported_with_meta_details() {
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.M", "timestamp": "1744344496", "type": "image",
            "errors": [{"code": 131052, "title": "Media download error",
                        "error_data": {"details": "Media file size too big. Max file size we currently support: 100MB"}}],
            "image": {"mime_type": "image/jpeg"}}"#,
    );
    assert_eq!(
        text,
        "[unsupported image] (Media file size too big. Max file size we currently support: 100MB)"
    );
    assert_eq!(content, unsupported("image"));
}

#[test]
fn button_reply_with_context() {
    let (text, content) = read_one(
        r#"{
  "context": { "from": "15550783881", "id": "wamid.HBgLMTY0NjcwNDM1OTUVAgARGBJBM0Y4RUU0RUNFQkFDMjYzQUMA" },
  "from": "16505551234",
  "id": "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQThBREYwNzc2RDc2QjA1QTIwMgA=",
  "timestamp": "1714510003",
  "type": "interactive",
  "interactive": {
    "type": "button_reply",
    "button_reply": { "id": "change-button", "title": "Change" }
  }
}"#,
    );
    assert_eq!(text, "Change");
    assert_eq!(
        content.reply,
        Some(Box::new(ReplyPicked {
            source: "button".into(),
            id: "change-button".into(),
            title: "Change".into(),
            description: None,
            context_message_id: Some(
                "wamid.HBgLMTY0NjcwNDM1OTUVAgARGBJBM0Y4RUU0RUNFQkFDMjYzQUMA".into()
            ),
        }))
    );
}

#[test]
fn list_reply_with_description() {
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.L", "timestamp": "1714510003", "type": "interactive",
"interactive": {
  "type": "list_reply",
  "list_reply": { "id": "priority_express", "title": "Priority Mail Express", "description": "Next Day to 2 Days" }
}}"#,
    );
    assert_eq!(text, "Priority Mail Express");
    assert_eq!(
        content.reply,
        Some(Box::new(ReplyPicked {
            source: "list".into(),
            id: "priority_express".into(),
            title: "Priority Mail Express".into(),
            description: Some("Next Day to 2 Days".into()),
            context_message_id: None,
        }))
    );
}

#[test]
fn other_interactive_types_are_unsupported() {
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.F", "timestamp": "1714510003", "type": "interactive",
            "interactive": {"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}}}"#,
    );
    assert_eq!(text, "[unsupported interactive:nfm_reply]");
    assert_eq!(content, unsupported("interactive:nfm_reply"));
}

#[test]
fn template_quick_reply_button() {
    let (text, content) = read_one(
        r#"{
  "context": { "from": "15550783881", "id": "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=" },
  "from": "16505551234",
  "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
  "timestamp": "1750091045",
  "type": "button",
  "button": { "payload": "Unsubscribe", "text": "Unsubscribe" }
}"#,
    );
    assert_eq!(text, "Unsubscribe");
    let reply = content.reply.expect("reply");
    assert_eq!(reply.source, "template_button");
    assert_eq!(
        (reply.id.as_str(), reply.title.as_str()),
        ("Unsubscribe", "Unsubscribe")
    );
    assert_eq!(
        reply.context_message_id.as_deref(),
        Some("wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=")
    );
    // pywa's fixture: a payload distinct from the label, and no context.
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.Q", "timestamp": "1750091045", "type": "button",
            "button": {"payload": "callback_data", "text": "title"}}"#,
    );
    assert_eq!(text, "title");
    let reply = content.reply.expect("reply");
    assert_eq!(
        (reply.id.as_str(), reply.context_message_id),
        ("callback_data", None)
    );
}

#[test]
fn reaction_and_reaction_removed() {
    let (text, content) = read_one(
        r#"{
  "from": "16505551234",
  "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
  "timestamp": "1749419544",
  "type": "reaction",
  "reaction": {
    "message_id": "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=",
    "emoji": "👍"
  }
}"#,
    );
    assert_eq!(text, "[reaction 👍]");
    assert_eq!(
        content.reaction,
        Some(Box::new(Reaction {
            message_id: "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=".into(),
            emoji: "👍".into(),
        }))
    );
    for reaction in [
        r#"{"message_id": "wamid.T"}"#,
        r#"{"message_id": "wamid.T", "emoji": ""}"#,
    ] {
        let (text, content) = read_one(&format!(
            r#"{{"from": "16505551234", "id": "wamid.R", "timestamp": "1749419544", "type": "reaction", "reaction": {reaction}}}"#
        ));
        assert_eq!(text, "[reaction removed]");
        assert_eq!(content.reaction.expect("reaction").emoji, "");
    }
}

#[test]
fn location_with_numbers_and_with_strings() {
    let (text, content) = read_one(
        r#"{
  "from": "16505551234",
  "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
  "timestamp": "1744344496",
  "type": "location",
  "location": {
    "address": "101 Forest Ave, Palo Alto, CA 94301",
    "latitude": 37.44221496582,
    "longitude": -122.16165924072,
    "name": "Philz Coffee",
    "url": "https://philzcoffee.com/"
  }
}"#,
    );
    assert_eq!(
        text,
        "[location Philz Coffee, 101 Forest Ave, Palo Alto, CA 94301]"
    );
    assert_eq!(
        content.location,
        Some(Box::new(Location {
            latitude: 37.44221496582,
            longitude: -122.16165924072,
            name: Some("Philz Coffee".into()),
            address: Some("101 Forest Ave, Palo Alto, CA 94301".into()),
            url: Some("https://philzcoffee.com/".into()),
        }))
    );
    let at = |latitude: &str, longitude: &str| {
        read_one(&format!(
            r#"{{"from": "16505551234", "id": "wamid.P", "timestamp": "1744344496", "type": "location",
                "location": {{"latitude": {latitude}, "longitude": {longitude}}}}}"#
        ))
    };
    let (text, content) = at(r#""37.44216251868683""#, r#""-122.16153582049394""#);
    assert_eq!(text, "[location 37.44216251868683,-122.16153582049394]");
    let location = content.location.expect("location");
    assert_eq!(
        (location.latitude, location.longitude),
        (37.44216251868683, -122.16153582049394)
    );
    for (latitude, longitude) in [
        ("91", "0"),
        ("0", "-180.5"),
        (r#""NaN""#, "0"),
        (r#""north""#, "0"),
    ] {
        assert_eq!(
            at(latitude, longitude),
            ("[unsupported location]".into(), unsupported("location"))
        );
    }
}

#[test]
fn shared_contacts() {
    let (text, content) = read_one(
        r#"{
  "from": "16505551234",
  "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
  "timestamp": "1744344496",
  "type": "contacts",
  "contacts": [ {
    "name": { "first_name": "Barbara", "last_name": "Johnson", "formatted_name": "Barbara J. Johnson" },
    "org": { "company": "Social Tsunami" },
    "phones": [ { "phone": "+1 (415) 555-0829", "wa_id": "14125550829", "type": "MOBILE" } ]
  } ]
}"#,
    );
    assert_eq!(text, "[contact card: Barbara J. Johnson]");
    assert_eq!(
        content.contacts,
        Some(vec![SharedContact {
            name: "Barbara J. Johnson".into(),
            phones: vec!["+1 (415) 555-0829".into()],
        }])
    );
    // Without a formatted name: first and last.
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.C2", "timestamp": "1744344496", "type": "contacts",
            "contacts": [{"name": {"formatted_name": "Ann Lee"}},
                         {"name": {"first_name": "Bo", "last_name": "Chen"}, "vcard": "BEGIN:VCARD"}]}"#,
    );
    assert_eq!(text, "[contact cards: Ann Lee, Bo Chen]");
    assert_eq!(content.contacts.expect("cards").len(), 2);
}

#[test]
fn unsupported_message_with_errors() {
    let (text, content) = read_one(
        r#"{
  "from": "16505551234",
  "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
  "timestamp": "1750090702",
  "errors": [ { "code": 131051, "title": "Message type unknown", "message": "Message type unknown",
                "error_data": { "details": "Message type is currently not supported." } } ],
  "type": "unsupported",
  "unsupported": { "type": "edit" }
}"#,
    );
    assert_eq!(
        text,
        "[unsupported edit] (Message type is currently not supported.)"
    );
    assert_eq!(content, unsupported("edit"));
}

#[test]
fn unknown_type_poll_update() {
    let (text, content) = read_one(
        r#"{"from": "16505551234", "id": "wamid.U", "timestamp": "1750090702", "type": "poll_update",
            "poll_update": {"options": [1, 2]}}"#,
    );
    assert_eq!(text, "[unsupported poll_update]");
    assert_eq!(content, unsupported("poll_update"));
}

#[test]
fn one_post_for_several_numbers_is_routed_per_change() {
    let change = |phone: &str, id: &str| {
        json!({"field": "messages", "value": {
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone},
            "messages": [{"from": "16505551234", "id": id, "timestamp": "1749416383",
                          "type": "text", "text": {"body": id}}],
        }})
    };
    let payload = json!({"object": "whatsapp_business_account", "entry": [
        {"id": "waba-1", "changes": [change("111", "wamid.1"), change("333", "wamid.3")]},
        {"id": "waba-2", "changes": [change("222", "wamid.2")]},
    ]});
    let routes = NumberRoutes::new(
        vec![
            ("111".into(), "shop".into()),
            ("222".into(), "support".into()),
        ],
        "d".into(),
    );
    let routed: Vec<(String, String)> = events_of(&payload, &routes)
        .into_iter()
        .map(|event| match event {
            WebhookEvent::Inbound {
                session,
                message_id,
                ..
            } => (session, message_id),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        routed,
        [
            ("shop".into(), "wamid.1".into()),
            ("support".into(), "wamid.2".into())
        ]
    );
}

#[test]
fn sender_by_business_scoped_user_id() {
    let payload = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
        "metadata": {"phone_number_id": PHONE_ID},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "user_id": "US.13491208655302741918"}],
        "messages": [
            {"from_user_id": "US.13491208655302741918", "id": "wamid.B", "timestamp": "1749416383",
             "type": "text", "text": {"body": "hello"}},
            {"id": "wamid.NOBODY", "timestamp": "1749416383", "type": "text", "text": {"body": "?"}},
        ],
    }}]}]});
    let events = events_of(&payload, &routes());
    assert_eq!(
        events,
        [WebhookEvent::Inbound {
            session: "s".into(),
            message_id: "wamid.B".into(),
            from: "US.13491208655302741918".into(),
            name: Some("Sheena Nelson".into()),
            text: "hello".into(),
            timestamp: 1_749_416_383_000,
            content: MessageContent::default(),
        }]
    );
}

#[test]
fn a_malformed_item_does_not_cost_its_neighbours() {
    let payload = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
        "metadata": {"phone_number_id": PHONE_ID},
        "contacts": [{"wa_id": 7}, {"profile": {"name": "Sheena"}, "wa_id": "165"}],
        "messages": [
            {"from": "165", "id": "wamid.BAD", "type": "image", "image": {"id": 42}},
            {"from": "165", "id": "wamid.GOOD", "timestamp": "10", "type": "text", "text": {"body": "hi"}},
            "not an object",
        ],
        "statuses": [
            {"id": "wamid.S1", "status": ["read"]},
            {"id": "wamid.S2", "status": "failed", "errors": [{"code": "oops"}]},
        ],
    }}]}, "garbage"]});
    let events = events_of(&payload, &routes());
    assert_eq!(events.len(), 2, "{events:?}");
    match &events[0] {
        WebhookEvent::Inbound {
            message_id, name, ..
        } => assert_eq!(
            (message_id.as_str(), name.as_deref()),
            ("wamid.GOOD", Some("Sheena"))
        ),
        other => panic!("{other:?}"),
    }
    match &events[1] {
        WebhookEvent::Status { status, error, .. } => {
            assert_eq!(*status, DeliveryStatus::Failed);
            let error = error.as_ref().expect("error");
            assert_eq!(error.message, "the message could not be delivered");
        }
        other => panic!("{other:?}"),
    }
    // A list that is not a list is ignored, not fatal.
    let payload = json!({"object": "whatsapp_business_account", "entry": {"changes": []}});
    assert!(events_of(&payload, &routes()).is_empty());
}

#[test]
fn account_level_errors_make_no_event() {
    let payload = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
        "metadata": {"phone_number_id": PHONE_ID},
        "errors": [{"code":130429,"title":"Rate limit hit","message":"Rate limit hit","error_data":{"details":"Message failed to send because there were too many messages sent from this phone number in a short period of time"},"href":"/documentation/business-messaging/whatsapp/support/error-codes"}],
    }}]}]});
    assert!(events_of(&payload, &routes()).is_empty());
}

#[test]
fn oversized_fields_are_cut() {
    let long = |c: char, n: usize| c.to_string().repeat(n);
    let message = json!({
        "from": long('1', 300), "id": long('w', 300), "timestamp": "1", "type": "document",
        "document": {"id": long('9', 300), "caption": long('é', 2000), "filename": long('f', 500),
                     "mime_type": long('m', 200), "sha256": long('s', 200)},
    });
    let (text, content) = read_one(&message.to_string());
    let media = content.media.expect("media");
    let chars = |s: &Option<String>| s.as_deref().map_or(0, |s| s.chars().count());
    assert_eq!(chars(&media.id), 256);
    assert_eq!(chars(&media.caption), 1024);
    assert_eq!(chars(&media.filename), 240);
    assert_eq!(chars(&media.mime_type), 128);
    assert_eq!(chars(&media.sha256), 128);
    assert_eq!(
        text.chars().count(),
        "[document ".len() + 240 + "] ".len() + 1024
    );

    let cards: Vec<Value> = (0..30)
        .map(|i| json!({"name": {"formatted_name": format!("n{i}")}, "phones": vec![json!({"phone": "1"}); 15]}))
        .collect();
    let message = json!({"from": "1", "id": "wamid.X", "type": "contacts", "contacts": cards});
    let (_, content) = read_one(&message.to_string());
    let cards = content.contacts.expect("cards");
    assert_eq!(cards.len(), limits::CARDS);
    assert!(cards.iter().all(|c| c.phones.len() == limits::PHONES));

    let message = json!({"from": "1", "id": "wamid.Y", "type": "reaction",
                         "reaction": {"message_id": "wamid.T", "emoji": long('👍', 40)}});
    let (_, content) = read_one(&message.to_string());
    assert_eq!(content.reaction.expect("reaction").emoji, long('👍', 32));

    let message = json!({"from": "1", "id": "wamid.Z", "type": long('x', 100)});
    let (text, _) = read_one(&message.to_string());
    assert_eq!(text, format!("[unsupported {}]", long('x', 64)));
    assert_eq!(cut("aé".into(), 1), "a");
    assert_eq!(cut("aé".into(), 5), "aé");
}
