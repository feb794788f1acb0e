//! JSON Schemas of every WebSocket message, generated with `schemars`
//! from the types that parse and build them: the parser's own bodies
//! (`inbound.rs`), [`WhatsAppCommand`] (one schema per action) and
//! [`ServerEvent`] (one per event), so a field added to one of those is in
//! the schemas without anyone writing it down. The AsyncAPI document of
//! `/ws` (`src/server/asyncapi.rs`) is made of these; `tests/asyncapi.rs`
//! checks them against the parser's kinds and against real frames.

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::errors::ErrorCode;
use super::fields::MAX_REQUEST_ID_LEN;
use super::inbound::{
    AiCommandBody, AiRequestBody, BroadcastBody, ClientMessage, ContactsUpdateBody, DecisionBody,
    ExecuteResultBody, IncomingBody, Register, WhatsAppCommand, WhatsAppCommandBody,
};
use super::outbound::ServerEvent;

/// The stable error codes (§9) as a string enum, in [`ErrorCode::all`]'s
/// order: a new code is in the schema of `error` at once.
impl JsonSchema for ErrorCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<&str> = ErrorCode::all().map(ErrorCode::as_str).collect();
        schemars::json_schema!({
            "type": "string",
            "enum": codes,
            "description": "A stable error code (docs/protocol.md §9)",
        })
    }
}

/// One message of the protocol and its payload's JSON Schema (draft 07,
/// every subschema inline).
#[derive(Debug, Clone)]
pub struct MessageSchema {
    /// Unique within its direction: the wire `type`, or
    /// `whatsapp_command.ACTION` for a command.
    pub id: String,
    /// The wire `type`.
    pub kind: &'static str,
    pub payload: Value,
}

/// Events that are logged in the session's event log and so carry its
/// `offset` and `epoch` (docs/protocol.md §12).
pub const SESSION_EVENTS: &[&str] = &[
    "message_event",
    "message_status",
    "broadcast",
    "client_joined",
    "client_left",
    "agent_changed",
    "contact_list_broadcast",
    "approval_request",
    "approval_resolved",
];

fn generator(contract: Contract) -> SchemaGenerator {
    SchemaSettings::draft07()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
            s.contract = contract;
        })
        .into_generator()
}

/// `T`'s schema as an object, without its title (the type's Rust name).
fn object_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Map<String, Value> {
    let mut schema = match generator.root_schema_for::<T>().to_value() {
        Value::Object(map) => map,
        other => Map::from_iter([("allOf".to_string(), json!([other]))]),
    };
    schema.remove("title");
    schema.remove("$schema");
    schema
}

fn properties(schema: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let props = schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if !props.is_object() {
        *props = Value::Object(Map::new());
    }
    props.as_object_mut().expect("an object")
}

fn require(schema: &mut Map<String, Value>, field: &str) {
    let required = schema
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = required
        && !list.iter().any(|f| f == field)
    {
        list.insert(0, json!(field));
    }
}

/// A client message: the body's schema plus `type` and `request_id`
/// (which the parser takes off before reading the body).
fn client_message(kind: &'static str, body: Option<Map<String, Value>>) -> Map<String, Value> {
    let mut schema = body.unwrap_or_else(|| Map::from_iter([("type".into(), json!("object"))]));
    let props = properties(&mut schema);
    props.insert(
        "type".into(),
        json!({"type": "string", "const": kind, "description": "The message's kind"}),
    );
    props.insert(
        "request_id".into(),
        json!({
            "description": "Echoed in the answer to correlate it (a number is echoed as a string)",
            "anyOf": [
                {"type": "string", "maxLength": MAX_REQUEST_ID_LEN},
                {"type": "number"},
                {"type": "null"},
            ],
        }),
    );
    require(&mut schema, "type");
    schema
}

/// Every message a client may send, in [`ClientMessage::KINDS`] order;
/// `whatsapp_command` once per action.
pub fn client_messages() -> Vec<MessageSchema> {
    let mut generator = generator(Contract::Deserialize);
    let mut out = Vec::new();
    for &kind in ClientMessage::KINDS {
        let body = match kind {
            "register" => Some(object_schema::<Register>(&mut generator)),
            "whatsapp_command" => {
                for (action, command) in actions(&mut generator) {
                    let mut body = object_schema::<WhatsAppCommandBody>(&mut generator);
                    properties(&mut body).insert("command".into(), command);
                    out.push(MessageSchema {
                        id: format!("{kind}.{action}"),
                        kind,
                        payload: Value::Object(client_message(kind, Some(body))),
                    });
                }
                continue;
            }
            "whatsapp_ai_command" => Some(object_schema::<AiCommandBody>(&mut generator)),
            "ai_request" => Some(object_schema::<AiRequestBody>(&mut generator)),
            "broadcast" => Some(object_schema::<BroadcastBody>(&mut generator)),
            "execute_result" => Some(object_schema::<ExecuteResultBody>(&mut generator)),
            "contacts_update" => Some(object_schema::<ContactsUpdateBody>(&mut generator)),
            "incoming_message" => Some(object_schema::<IncomingBody>(&mut generator)),
            "approve" | "reject" => Some(object_schema::<DecisionBody>(&mut generator)),
            // `ping`, `list_approvals`, and a kind added without a body
            // here (tests/asyncapi.rs then fails on its missing fields).
            _ => None,
        };
        out.push(MessageSchema {
            id: kind.to_string(),
            kind,
            payload: Value::Object(client_message(kind, body)),
        });
    }
    out
}

/// `whatsapp_command.command`'s schema for each action.
fn actions(generator: &mut SchemaGenerator) -> Vec<(String, Value)> {
    variants(object_schema::<WhatsAppCommand>(generator), "action")
}

/// The variants of an internally tagged enum's schema, by tag value.
fn variants(mut schema: Map<String, Value>, tag: &str) -> Vec<(String, Value)> {
    let list = match schema.remove("oneOf") {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    list.into_iter()
        .map(|variant| {
            let name = variant["properties"][tag]["const"]
                .as_str()
                .or_else(|| variant["properties"][tag]["enum"][0].as_str())
                .unwrap_or_default()
                .to_string();
            (name, variant)
        })
        .collect()
}

/// Every event the hub sends ([`ServerEvent`]'s variants, in order).
pub fn server_events() -> Vec<MessageSchema> {
    let mut generator = generator(Contract::Serialize);
    let schema = object_schema::<ServerEvent<'static>>(&mut generator);
    let kinds = <ServerEvent<'static> as strum::VariantNames>::VARIANTS;
    variants(schema, "type")
        .into_iter()
        .map(|(name, payload)| {
            let kind = kinds
                .iter()
                .copied()
                .find(|k| *k == name)
                .unwrap_or("unknown");
            let mut payload = match payload {
                Value::Object(map) => map,
                other => Map::from_iter([("allOf".to_string(), json!([other]))]),
            };
            if SESSION_EVENTS.contains(&kind) {
                let props = properties(&mut payload);
                props.insert(
                    "offset".into(),
                    json!({"type": "integer", "minimum": 0,
                           "description": "Its offset in the session's event log (§12)"}),
                );
                props.insert(
                    "epoch".into(),
                    json!({"type": "string", "description": "The event log's epoch (§12)"}),
                );
            }
            MessageSchema {
                id: kind.to_string(),
                kind,
                payload: Value::Object(payload),
            }
        })
        .collect()
}
