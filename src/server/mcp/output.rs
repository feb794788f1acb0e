//! What each `/mcp` tool returns, as types. A type's JSON Schema, joined
//! with [`Failure`]'s, is the tool's `outputSchema` ([`schema`]), and every
//! result is made by parsing the hub's answer into its type and writing
//! that back: what a client receives always validates, also when an agent
//! (which may answer any JSON) executed the command; an answer that does
//! not fit is `connector_failed`. The text block of every result is the
//! JSON of its structured content, for clients that read only `content`.

use std::sync::Arc;

use rmcp::handler::server::common::schema_for_output;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject};
use rmcp::schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::protocol::{Contact, ErrorCode, HistoryEntry, HubError, Media};

/// `list_contacts`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ContactList {
    #[schemars(extend("const" = true))]
    pub success: bool,
    /// The session's contacts, by name.
    pub contacts: Vec<Contact>,
    pub total_count: u64,
    /// What answered: the connector (`simulated`, `cloud_api`) or `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
}

/// `send_message`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SentMessage {
    #[schemars(extend("const" = true))]
    pub success: bool,
    /// The contact's name as the session knows it.
    pub contact: String,
    pub message: String,
    /// WhatsApp's id of the message (a `wamid.` with the Cloud API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
    /// The media sent, with the hub URL that serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
}

/// `list_templates`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Templates {
    #[schemars(extend("const" = true))]
    pub success: bool,
    /// The account's templates: send one with `send_template`.
    pub templates: Vec<TemplateListing>,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
}

/// One template of `list_templates`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct TemplateListing {
    pub name: String,
    pub language: String,
    /// `APPROVED` templates can be sent.
    pub status: String,
    pub category: String,
    /// How many parameters a send must give.
    pub parameters: u64,
    /// Header, body and buttons as the Cloud API describes them.
    pub components: Value,
}

/// `mark_read`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ReadMarked {
    #[schemars(extend("const" = true))]
    pub success: bool,
    pub contact: String,
    /// The incoming message marked read (earlier ones with it); absent
    /// when the contact has written nothing to mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// "typing…" is shown to the contact.
    pub typing: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
}

/// `get_history`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct History {
    #[schemars(extend("const" = true))]
    pub success: bool,
    pub contact: String,
    /// Oldest first.
    pub messages: Vec<HistoryEntry>,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
}

/// `broadcast`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Broadcasted {
    #[schemars(extend("const" = true))]
    pub success: bool,
    pub session: String,
}

/// `run_command`: what the AI understood and what running it gave.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CommandRun {
    #[schemars(extend("const" = true))]
    pub success: bool,
    pub interpretation: Interpretation,
    /// The executed command's result (as `send_message`, `get_history` or
    /// `list_contacts` return it).
    pub result: Value,
    /// The AI provider that interpreted the text.
    pub provider: String,
    /// Answered from the interpretation cache.
    pub cached: bool,
    /// Joined an identical interpretation already under way.
    pub shared: bool,
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Interpretation {
    /// `send`, `send_template`, `get_history` or `list_contacts`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// Every tool's error result (`isError: true`).
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Failure {
    #[schemars(extend("const" = false))]
    pub success: bool,
    /// The hub's stable error code (docs/protocol.md §9).
    pub code: String,
    pub message: String,
    /// Near matches, for an unknown or ambiguous contact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
    /// Whatever else the failed command reported (for `run_command`, what
    /// the AI understood).
    #[serde(flatten)]
    pub detail: Map<String, Value>,
}

impl Failure {
    pub fn of(error: &HubError) -> Failure {
        Failure {
            success: false,
            code: error.code.as_str().to_string(),
            message: error.message.clone(),
            candidates: error.candidates.clone(),
            detail: Map::new(),
        }
    }

    /// A command's `success: false` content (`code` and `error`, for
    /// `run_command` maybe only in its `result`); a failure without a code
    /// is `connector_failed`.
    pub fn of_content(mut content: Map<String, Value>) -> Failure {
        let field = |content: &Map<String, Value>, key: &str| {
            let nested = || content.get("result").and_then(|r| r.get(key));
            content
                .get(key)
                .or_else(nested)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let code = field(&content, "code")
            .unwrap_or_else(|| ErrorCode::ConnectorFailed.as_str().to_string());
        let message = field(&content, "error").unwrap_or_else(|| "the command failed".into());
        let candidates = content
            .remove("candidates")
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        for key in ["success", "code", "error", "message"] {
            content.remove(key);
        }
        Failure {
            success: false,
            code,
            message,
            candidates,
            detail: content,
        }
    }
}

/// The tool's `outputSchema`: `T` or a [`Failure`], as one schema whose
/// root is `type: object` (which clients of 2025-06-18 require).
pub fn schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    let mut defs = JsonObject::new();
    let mut branch = |schema: &JsonObject| {
        let mut schema = schema.clone();
        // Definitions are referenced from the document's root.
        if let Some(Value::Object(d)) = schema.remove("$defs") {
            defs.extend(d);
        }
        schema.remove("$schema");
        Value::Object(schema)
    };
    let ok = branch(&schema_for_output::<T>());
    let failed = branch(&schema_for_output::<Failure>());
    let mut root = JsonObject::new();
    root.insert("type".into(), json!("object"));
    root.insert("anyOf".into(), json!([ok, failed]));
    if !defs.is_empty() {
        root.insert("$defs".into(), Value::Object(defs));
    }
    Arc::new(portable(root))
}

/// `schema` without schemars' integer-width formats (`uint64`, `uint`,
/// …): they are no JSON Schema format, so validators warn about them (the
/// TypeScript SDK's ajv does, on every list); `minimum` already says it.
pub fn portable(mut schema: JsonObject) -> JsonObject {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                let width = map
                    .get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f.starts_with("uint") || f.starts_with("int"));
                if width {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    schema.values_mut().for_each(strip);
    schema
}

/// A command's answer as `T`, or its [`Failure`]: a `success:false`
/// answer (unknown contact, ...) with its code (for `run_command` the code
/// of the executed command's `result`). An agent may answer any JSON: what
/// is not an object is kept under `result`, a failure without a code is
/// `connector_failed`, and a success that does not fit `T` is
/// `connector_failed` too.
pub fn answer<T: DeserializeOwned>(content: Value) -> Result<T, Failure> {
    let content = match content {
        Value::Object(map) => map,
        other => Map::from_iter([("result".to_string(), other)]),
    };
    if content.get("success") != Some(&Value::Bool(true)) {
        return Err(Failure::of_content(content));
    }
    parse(Value::Object(content)).map_err(|e| Failure::of(&e))
}

impl From<Failure> for HubError {
    /// The failure as an error (its code, message and candidates).
    fn from(failure: Failure) -> HubError {
        let code = failure.code.parse().unwrap_or(ErrorCode::ConnectorFailed);
        let mut error = HubError::new(code, failure.message);
        error.candidates = failure.candidates;
        error
    }
}

/// The hub's answer as `T`, or `connector_failed` if it does not fit.
pub fn parse<T: DeserializeOwned>(content: Value) -> Result<T, HubError> {
    serde_json::from_value(content).map_err(|e| {
        HubError::new(
            ErrorCode::ConnectorFailed,
            format!("the answer does not match the tool's output schema: {e}"),
        )
    })
}

/// A result whose text block is the JSON of its structured content.
pub fn result<T: Serialize>(value: &T, is_error: bool) -> CallToolResult {
    let structured = serde_json::to_value(value).unwrap_or_else(|e| {
        json!({"success": false, "code": ErrorCode::Internal.as_str(), "message": e.to_string()})
    });
    let mut result = if is_error {
        CallToolResult::structured_error(structured.clone())
    } else {
        CallToolResult::structured(structured.clone())
    };
    result.content = vec![ContentBlock::text(structured.to_string())];
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_admits_a_result_or_a_failure_and_keeps_definitions_at_the_root() {
        let schema = schema::<History>();
        assert_eq!(schema["type"], "object");
        let branches = schema["anyOf"].as_array().unwrap();
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[0]["properties"]["success"]["const"], true);
        assert_eq!(branches[1]["properties"]["success"]["const"], false);
        // HistoryEntry is a definition, referenced from the messages' items.
        let text = Value::Object((*schema).clone()).to_string();
        assert!(text.contains("#/$defs/HistoryEntry"), "{text}");
        assert!(schema["$defs"]["HistoryEntry"].is_object(), "{text}");
        assert!(!branches[0].as_object().unwrap().contains_key("$defs"));
        assert!(!text.contains("uint64"), "{text}");
    }

    #[test]
    fn an_answer_that_does_not_fit_is_connector_failed() {
        let odd = json!({"success": true, "contacts": ["john"], "total_count": 1});
        let e = parse::<ContactList>(odd).err().unwrap();
        assert_eq!(e.code, ErrorCode::ConnectorFailed);
    }
}
