//! The AsyncAPI 3.0 document of the WebSocket protocol (`/ws`,
//! docs/protocol.md), served at `GET /api/v1/asyncapi.json`. It describes
//! the hub: it *receives* every client message and *sends* every event.
//! The payload schemas are generated from the protocol's types
//! ([`crate::protocol::schema`]), so the document cannot drift from the
//! parser and the events; `tests/asyncapi.rs` validates it with the
//! AsyncAPI parser and checks real frames against it.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use crate::protocol::schema::{MessageSchema, client_messages, server_events};

/// The channel's id in the document.
const CHANNEL: &str = "ws";

/// Client messages answered by one event kind (besides `error`), as the
/// operations' `reply`.
const REPLIES: &[(&str, &str)] = &[
    ("register", "registration_confirmed"),
    ("ping", "pong"),
    ("whatsapp_command", "response"),
    ("whatsapp_ai_command", "response"),
    ("ai_request", "response"),
];

/// A client message's id in `components/messages`.
pub fn client_message_id(m: &MessageSchema) -> String {
    format!("client.{}", m.id)
}

/// An event's id in `components/messages`.
pub fn event_id(m: &MessageSchema) -> String {
    format!("hub.{}", m.id)
}

fn message(m: &MessageSchema, from: &str) -> Value {
    let mut payload = m.payload.clone();
    let description = payload
        .as_object_mut()
        .and_then(|p| p.remove("description"))
        .and_then(|d| d.as_str().map(str::to_string));
    let mut msg = Map::new();
    msg.insert("name".into(), json!(m.kind));
    msg.insert("title".into(), json!(format!("{} ({from})", m.id)));
    msg.insert(
        "summary".into(),
        json!(description.unwrap_or_else(|| format!("`{}` (docs/protocol.md)", m.kind))),
    );
    msg.insert("contentType".into(), json!("application/json"));
    msg.insert("payload".into(), payload);
    Value::Object(msg)
}

fn channel_ref(id: &str) -> Value {
    json!({"$ref": format!("#/channels/{CHANNEL}/messages/{id}")})
}

/// The whole document.
pub fn document() -> Value {
    let clients = client_messages();
    let events = server_events();
    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    let mut operations = Map::new();
    for m in &events {
        let id = event_id(m);
        messages.insert(id.clone(), message(m, "hub → client"));
        channel_messages.insert(
            id.clone(),
            json!({"$ref": format!("#/components/messages/{id}")}),
        );
        operations.insert(
            format!("send.{}", m.id),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{CHANNEL}")},
                "summary": format!("The hub sends `{}`", m.kind),
                "messages": [channel_ref(&id)],
            }),
        );
    }
    for m in &clients {
        let id = client_message_id(m);
        messages.insert(id.clone(), message(m, "client → hub"));
        channel_messages.insert(
            id.clone(),
            json!({"$ref": format!("#/components/messages/{id}")}),
        );
        let mut op = json!({
            "action": "receive",
            "channel": {"$ref": format!("#/channels/{CHANNEL}")},
            "summary": format!("A client sends `{}`", m.id),
            "messages": [channel_ref(&id)],
        });
        if let Some((_, answer)) = REPLIES.iter().find(|(kind, _)| *kind == m.kind) {
            op["reply"] = json!({
                "channel": {"$ref": format!("#/channels/{CHANNEL}")},
                "messages": [channel_ref(&format!("hub.{answer}")), channel_ref("hub.error")],
            });
        }
        operations.insert(format!("receive.{}", m.id), op);
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "mcp-hub WebSocket protocol",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The protocol spoken between mcp-hub and its clients over WebSocket \
                (docs/protocol.md). Every message is one JSON object in one text frame, in \
                both directions; `type` names its kind. This document describes the hub: it \
                receives the client messages and sends the events. The payload schemas are \
                generated from the hub's own types. With authentication on, the upgrade \
                carries a JWT (`Authorization: Bearer`, or `?token=` on the URL; \
                docs/security.md).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "hub": {
                "host": "127.0.0.1:8002",
                "protocol": "ws",
                "description": "A hub (PORT, default 8002); `wss` behind a TLS proxy.",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            },
        },
        "channels": {
            CHANNEL: {
                "address": "/ws",
                "title": "The WebSocket",
                "description": "One connection per client, also served at `/`. A client \
                    registers first (`register`), then exchanges messages with the hub.",
                "messages": channel_messages,
            },
        },
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Only with authentication on (docs/security.md); \
                        browsers give it as `?token=` on the URL instead.",
                },
            },
        },
    })
}

/// The serialized document, built once.
static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string_pretty(&document()).unwrap_or_default());

/// The AsyncAPI document of the WebSocket protocol.
#[utoipa::path(get, path = "/api/v1/asyncapi.json", tag = "operations", responses(
    (status = 200, description = "the AsyncAPI 3.0 document of the WebSocket protocol (`/ws`)", body = serde_json::Value),
))]
pub async fn asyncapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}
