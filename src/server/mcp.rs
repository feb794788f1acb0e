//! The Model Context Protocol endpoint at `/mcp`: five tools through which
//! an MCP-capable LLM app acts on a shared session (docs/mcp.md).
//!
//! Transport: Streamable HTTP, served by the official SDK ([`http`]): MCP
//! sessions for clients that `initialize` (the only ones with a stream,
//! so the only ones that can subscribe to resources), stateless answers
//! for one-off requests. The hub's state lives in the store, so a session
//! sees what every instance does.
//!
//! A tool call is a REST call in another envelope: the same bearer check
//! ([`super::auth::Bearer`], verified once per request), the same session rule
//! ([`crate::auth::Identity::may_use_session`]) and the same hub operations
//! (`require_session`, `run_command_once`, `run_ai_command_once`,
//! `broadcast`), so every WebSocket client of the session sees what the MCP
//! caller did, `by` the token's `sub` (without auth: `X-Client-Id`, else
//! `mcp`).
//!
//! Every tool has a `title`, annotations that say what it does (reads are
//! read-only; sends are not destructive but reach the outside world) and
//! an `outputSchema` its results always validate against ([`output`]);
//! the text block is the JSON of the structured result. Failures are MCP
//! tool errors (`isError: true`) whose structured content is
//! `{success: false, code, message}` with the hub's stable error code; a
//! missing or bad token is an HTTP 401 before the protocol starts, like
//! REST. Calls are counted by tool and outcome (`hub_mcp_tool_calls_total`).

mod approval;
mod args;
mod http;
mod oauth;
mod output;
mod prompts;
mod resources;
mod subscriptions;

pub use http::routes;

use std::sync::{Arc, LazyLock};

use axum::http::request::Parts;
use rmcp::handler::server::common::schema_for_type;
#[allow(deprecated, reason = "logging/setLevel is still in 2025-11-25")]
use rmcp::model::SetLevelRequestParams;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResponse, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
#[allow(deprecated, reason = "resources/subscribe is the 2025-11-25 way")]
use rmcp::model::{SubscribeRequestParams, UnsubscribeRequestParams};
use rmcp::schemars::JsonSchema;
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use self::output::{
    Broadcasted, CommandRun, ContactList, Failure, History, ReadMarked, SentMessage, Templates,
};
use crate::auth::Identity;
use crate::hub::approvals::Door;
use crate::hub::{Broadcaster, Hub, SessionUse};
use crate::protocol::{
    ClientInfo, ErrorCode, HubError, WhatsAppCommand, check_id, check_idempotency_key,
    check_text_len, parse_whatsapp_command_with,
};

/// `by` of an MCP caller without auth and without `X-Client-Id`.
pub const DEFAULT_CALLER: &str = "mcp";

// ------------------------------------------------------------ arguments

use self::args::{
    Broadcast, GetHistory, MarkRead, RunCommand, SESSION_DOC, SendMessage, SessionOnly,
};

/// A tool's `inputSchema`, without integer-width formats
/// ([`output::portable`]).
fn input<T: JsonSchema + 'static>() -> Arc<rmcp::model::JsonObject> {
    Arc::new(output::portable((*schema_for_type::<T>()).clone()))
}

/// The tools, as `tools/list` shows them (built once).
static TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    let read_only = || ToolAnnotations::new().read_only(true).open_world(false);
    // Sends add a message; they never change or remove anything.
    let sends = |open_world| {
        ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(false)
            .open_world(open_world)
    };
    vec![
        Tool::new(
            "list_contacts",
            "List the contacts of the shared WhatsApp session (name and phone).",
            input::<SessionOnly>(),
        )
        .with_title("List contacts")
        .with_raw_output_schema(output::schema::<ContactList>())
        .with_annotations(read_only()),
        Tool::new(
            "send_message",
            "Send a WhatsApp message to a contact of the session. Every client of the session sees it, sent by you.",
            input::<SendMessage>(),
        )
        .with_title("Send a WhatsApp message")
        .with_raw_output_schema(output::schema::<SentMessage>())
        .with_annotations(sends(true)),
        Tool::new(
            "list_templates",
            "List the WhatsApp account's message templates (name, language, status, parameters). Outside the 24-hour window after a contact's last message, only an APPROVED template can be sent.",
            input::<SessionOnly>(),
        )
        .with_title("List message templates")
        .with_raw_output_schema(output::schema::<Templates>())
        .with_annotations(read_only()),
        Tool::new(
            "mark_read",
            "Mark a contact's latest WhatsApp message as read (blue ticks), optionally showing \"typing…\" while you prepare an answer.",
            input::<MarkRead>(),
        )
        .with_title("Mark a conversation read")
        .with_raw_output_schema(output::schema::<ReadMarked>())
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .idempotent(true)
                .open_world(true),
        ),
        Tool::new(
            "get_history",
            "Read the newest messages exchanged with a contact, oldest first.",
            input::<GetHistory>(),
        )
        .with_title("Read a conversation")
        .with_raw_output_schema(output::schema::<History>())
        .with_annotations(read_only()),
        Tool::new(
            "broadcast",
            "Show a short text to every client connected to the session (not sent over WhatsApp).",
            input::<Broadcast>(),
        )
        .with_title("Broadcast to the session's clients")
        .with_raw_output_schema(output::schema::<Broadcasted>())
        .with_annotations(sends(false)),
        Tool::new(
            "run_command",
            "Run a natural-language command (e.g. \"tell jane the meeting moved to 3\") through the hub's AI coordinator, exactly as a client's whatsapp_ai_command.",
            input::<RunCommand>(),
        )
        .with_title("Run a plain-language command")
        .with_raw_output_schema(output::schema::<CommandRun>())
        .with_annotations(sends(true)),
    ]
});

/// A call's raw arguments.
type Args = Option<rmcp::model::JsonObject>;

/// The arguments of a call: a missing one is `missing_field`, any other
/// mismatch (wrong type, unknown field) `invalid_field`.
fn arguments<T: DeserializeOwned>(args: Args) -> Result<T, HubError> {
    serde_json::from_value(Value::Object(args.unwrap_or_default())).map_err(|e| {
        let message = format!("{e} (in the tool's arguments)");
        let code = if message.starts_with("missing field") {
            ErrorCode::MissingField
        } else {
            ErrorCode::InvalidField
        };
        HubError::new(code, message)
    })
}

// ---------------------------------------------------------------- tools

/// The rmcp handler: one per request (stateless) or session, cheap to
/// clone.
#[derive(Clone)]
struct HubTools {
    hub: Arc<Hub>,
    subscriptions: Arc<subscriptions::Subscriptions>,
}

/// The protocol revisions `/mcp` meets and tests (tests/mcp.rs): not
/// every one the SDK knows.
const VERSIONS: [ProtocolVersion; 2] =
    [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25];

impl ServerHandler for HubTools {
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(&VERSIONS)
    }

    #[allow(deprecated, reason = "logging/setLevel is still in 2025-11-25")]
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_tools()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("mcp-hub", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools act on a WhatsApp account shared by several clients: every client of the session sees what you send. \
                 Errors carry a stable `code` (docs/protocol.md §9).",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(TOOLS.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        TOOLS.iter().find(|t| t.name == name).cloned()
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(prompts::PROMPTS.clone()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let call = Call::of(&self.hub, &context).map_err(|e| protocol_error(&e))?;
        call.prompt(&request.name, request.arguments)
            .await
            .map(Into::into)
            .map_err(|e| protocol_error(&e))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let call = Call::of(&self.hub, &context).map_err(|e| protocol_error(&e))?;
        call.complete(&request)
            .await
            .map(CompleteResult::new)
            .map_err(|e| protocol_error(&e))
    }

    /// Accepted, but there is nothing to send at any level: the endpoint
    /// is stateless (no stream between requests; docs/mcp.md).
    #[allow(deprecated, reason = "logging/setLevel is still in 2025-11-25")]
    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let call = Call::of(&self.hub, &context).map_err(|e| protocol_error(&e))?;
        let listed = call
            .list_resources()
            .await
            .map_err(|e| protocol_error(&e))?;
        Ok(ListResourcesResult::with_all_items(listed))
    }

    #[allow(deprecated, reason = "resources/subscribe is the 2025-11-25 way")]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let call = Call::of(&self.hub, &context).map_err(|e| protocol_error(&e))?;
        let Some(mcp_session) = mcp_session(&context) else {
            return Err(ErrorData::invalid_request(
                "resources/subscribe needs an MCP session: send `initialize` first and its Mcp-Session-Id with every request",
                None,
            ));
        };
        call.subscribe(
            &self.subscriptions,
            request.uri,
            mcp_session,
            context.peer.clone(),
        )
        .await
        .map_err(|e| protocol_error(&e))
    }

    #[allow(deprecated, reason = "resources/unsubscribe is the 2025-11-25 way")]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Some(mcp_session) = mcp_session(&context) {
            self.subscriptions.unsubscribe(&mcp_session, &request.uri);
        }
        Ok(())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(
            resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let call = Call::of(&self.hub, &context).map_err(|e| protocol_error(&e))?;
        match call.read_resource(&request.uri).await {
            Ok(result) => Ok(result.into()),
            // The spec's code for a resource that is not there.
            Err(e) if e.code == ErrorCode::InvalidField || e.code == ErrorCode::SessionNotFound => {
                Err(ErrorData::resource_not_found(
                    e.message.clone(),
                    Some(json!({"code": e.code.as_str(), "uri": request.uri})),
                ))
            }
            Err(e) => Err(protocol_error(&e)),
        }
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = match Call::of(&self.hub, &context) {
            Ok(call) => call,
            Err(e) => return Ok(tool_error(&e).into()),
        };
        let name = request.name.as_ref();
        tracing::debug!(tool = name, "mcp tool call");
        let args = request.arguments;
        let outcome = match name {
            "list_contacts" => call.list_contacts(args).await,
            "send_message" => call.send_message(args).await,
            "get_history" => call.get_history(args).await,
            "list_templates" => call.list_templates(args).await,
            "mark_read" => call.mark_read(args).await,
            "broadcast" => call.broadcast(args).await,
            "run_command" => call.run_command(args).await,
            other => {
                self.count("unknown", "error");
                // The spec's answer to an unknown tool: a protocol error.
                return Err(ErrorData::invalid_params(
                    format!("unknown tool `{other}`"),
                    None,
                ));
            }
        };
        let result = outcome.unwrap_or_else(|e| tool_error(&e));
        let failed = result.is_error == Some(true);
        self.count(name, if failed { "error" } else { "ok" });
        Ok(result.into())
    }
}

impl HubTools {
    fn count(&self, tool: &str, outcome: &str) {
        self.hub
            .metrics()
            .mcp_tool_calls
            .with_label_values(&[tool, outcome])
            .inc();
    }
}

/// Who called, as the auth check found it ([`http`]); read by the tools
/// from the request's parts.
#[derive(Clone)]
struct Caller(Option<Identity>);

/// One tool call: who calls, and how to act for them.
struct Call<'a> {
    hub: &'a Arc<Hub>,
    identity: Option<&'a Identity>,
    client_id_header: Option<&'a str>,
    /// The MCP client, to ask its user about a held send.
    peer: &'a rmcp::Peer<RoleServer>,
}

impl<'a> Call<'a> {
    /// The request's caller, as the auth layer found it.
    fn of(hub: &'a Arc<Hub>, context: &'a RequestContext<RoleServer>) -> Result<Self, HubError> {
        let parts = context.extensions.get::<Parts>();
        let Some(Caller(identity)) = parts.and_then(|p| p.extensions.get::<Caller>()) else {
            // Only reachable if the router lost the auth layer: refuse.
            return Err(HubError::new(
                ErrorCode::Unauthorized,
                "the request was not authenticated",
            ));
        };
        Ok(Call {
            hub,
            identity: identity.as_ref(),
            client_id_header: parts
                .and_then(|p| p.headers.get("x-client-id"))
                .and_then(|v| v.to_str().ok()),
            peer: &context.peer,
        })
    }

    /// The door a send of this call goes through: an MCP one, asking the
    /// user too when the client declared elicitation.
    fn door(&self) -> Door {
        let ttl = self.hub.config().approval.ttl;
        let ask = approval::Elicit::for_peer(self.peer, ttl);
        Door::Mcp(ask.map(|a| Arc::new(a) as Arc<dyn crate::hub::approvals::AskUser>))
    }

    /// The session a call acts on, allowed for the caller.
    fn session(&self, asked: Option<String>) -> Result<String, HubError> {
        let session = match (asked, self.identity) {
            (Some(s), _) => s,
            (None, None) => "default".to_string(),
            (None, Some(id)) => match id.sessions.as_slice() {
                [only] if only != "*" => only.clone(),
                _ => {
                    return Err(HubError::new(
                        ErrorCode::MissingField,
                        "missing field `session`: the token does not name exactly one session; name the one to act on",
                    ));
                }
            },
        };
        check_id("session", &session)?;
        if let Some(id) = self.identity
            && !id.may_use_session(&session)
        {
            return Err(HubError::new(
                ErrorCode::Forbidden,
                format!("the token does not allow session `{session}`"),
            ));
        }
        Ok(session)
    }

    /// The caller as the session's clients see it (`by`): the token's
    /// `sub`, else `X-Client-Id`, else [`DEFAULT_CALLER`].
    fn client(&self) -> ClientInfo {
        let (client_id, owner) = match self.identity {
            Some(id) => (id.sub.clone(), Some(id.sub.clone())),
            None => (
                self.client_id_header
                    .filter(|v| check_id("x-client-id", v).is_ok())
                    .unwrap_or(DEFAULT_CALLER)
                    .to_string(),
                None,
            ),
        };
        ClientInfo {
            client_name: client_id.clone(),
            client_id,
            instance: self.hub.instance().to_string(),
            capabilities: Vec::new(),
            owner,
            connected_at: None,
        }
    }

    /// The session a call acts on, which must exist: reads never create
    /// one, writes only with SESSION_CREATION=any_write
    /// ([`Hub::require_session`]).
    async fn existing_session(
        &self,
        asked: Option<String>,
        usage: SessionUse,
    ) -> Result<String, HubError> {
        let session = self.session(asked)?;
        self.hub.require_session(&session, usage).await?;
        Ok(session)
    }

    fn command(&self, command: Value) -> Result<WhatsAppCommand, HubError> {
        parse_whatsapp_command_with(command, &self.hub.config().field_limits)
    }

    async fn list_contacts(&self, args: Args) -> Result<CallToolResult, HubError> {
        let args: SessionOnly = arguments(args)?;
        let session = self
            .existing_session(args.session, SessionUse::Read)
            .await?;
        let content = self
            .hub
            .run_command(&session, &WhatsAppCommand::ListContacts, &self.client())
            .await?;
        Ok(command_result::<ContactList>(content))
    }

    async fn send_message(&self, args: Args) -> Result<CallToolResult, HubError> {
        let SendMessage {
            contact,
            message,
            media,
            buttons,
            reaction,
            location,
            idempotency_key,
            session,
        } = arguments(args)?;
        let mut send = json!({"action": "send", "contact": &contact});
        if !message.is_empty() {
            send["message"] = json!(message);
        }
        if let Some(media) = media {
            send["media"] = json!(media);
        }
        if let Some(buttons) = buttons {
            send["interactive"] = json!({"type": "buttons", "buttons": buttons});
        }
        if let Some(reaction) = reaction {
            send["reaction"] = json!(reaction);
        }
        if let Some(location) = location {
            send["location"] = json!(location);
        }
        let command = self.command(send)?;
        let key = check_idempotency_key(idempotency_key)?;
        let session = self.existing_session(session, SessionUse::Write).await?;
        let mut content = self
            .hub
            .run_command_once(
                &session,
                &command,
                &self.client(),
                key.as_deref(),
                &self.door(),
            )
            .await?;
        // What was asked, where an agent's answer does not say.
        if let Value::Object(answer) = &mut content {
            answer.entry("contact").or_insert(json!(contact));
            answer.entry("message").or_insert(json!(message));
        }
        Ok(command_result::<SentMessage>(content))
    }

    async fn list_templates(&self, args: Args) -> Result<CallToolResult, HubError> {
        let args: SessionOnly = arguments(args)?;
        let session = self
            .existing_session(args.session, SessionUse::Read)
            .await?;
        let content = self
            .hub
            .run_command(&session, &WhatsAppCommand::ListTemplates, &self.client())
            .await?;
        Ok(command_result::<Templates>(content))
    }

    async fn mark_read(&self, args: Args) -> Result<CallToolResult, HubError> {
        let args: MarkRead = arguments(args)?;
        let command = self.command(
            json!({"action": "mark_read", "contact": args.contact, "typing": args.typing}),
        )?;
        let session = self
            .existing_session(args.session, SessionUse::Write)
            .await?;
        let content = self
            .hub
            .run_command(&session, &command, &self.client())
            .await?;
        Ok(command_result::<ReadMarked>(content))
    }

    async fn get_history(&self, args: Args) -> Result<CallToolResult, HubError> {
        let args: GetHistory = arguments(args)?;
        let history = self
            .conversation(args.session, &args.contact, args.limit)
            .await?;
        Ok(output::result(&history, false))
    }

    /// The newest `limit` messages with `contact` (the hub's default
    /// without one), typed as `get_history` returns them: what the tool,
    /// the prompts, the conversation resource and its subscriptions read.
    /// A command that failed (unknown contact, ...) is its error,
    /// candidates included.
    async fn conversation(
        &self,
        session: Option<String>,
        contact: &str,
        limit: Option<u64>,
    ) -> Result<History, HubError> {
        let mut command = json!({"action": "get_history", "contact": contact});
        if let Some(limit) = limit {
            command["limit"] = json!(limit);
        }
        let command = self.command(command)?;
        let session = self.existing_session(session, SessionUse::Read).await?;
        let mut content = self
            .hub
            .run_command(&session, &command, &self.client())
            .await?;
        // What was asked and what came, where an agent's answer does not say.
        if let Value::Object(answer) = &mut content {
            let count = answer
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::len);
            answer.entry("contact").or_insert(json!(contact));
            if let Some(count) = count {
                answer.entry("count").or_insert(json!(count));
            }
        }
        Ok(output::answer(content)?)
    }

    async fn broadcast(&self, args: Args) -> Result<CallToolResult, HubError> {
        let args: Broadcast = arguments(args)?;
        if args.text.trim().is_empty() {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                "field `text` must not be empty",
            ));
        }
        check_text_len(
            "text",
            &args.text,
            self.hub.config().field_limits.max_text_chars,
        )?;
        let session = self
            .existing_session(args.session, SessionUse::Write)
            .await?;
        let client = self.client();
        let payload = json!({"text": args.text});
        self.hub
            .broadcast(&session, Broadcaster::Caller(&client.client_id), &payload)
            .await?;
        Ok(output::result(
            &Broadcasted {
                success: true,
                session,
            },
            false,
        ))
    }

    async fn run_command(&self, args: Args) -> Result<CallToolResult, HubError> {
        let args: RunCommand = arguments(args)?;
        check_text_len(
            "text",
            &args.text,
            self.hub.config().field_limits.max_text_chars,
        )?;
        let session = self
            .existing_session(args.session, SessionUse::Write)
            .await?;
        let key = check_idempotency_key(args.idempotency_key)?;
        // Exactly a `whatsapp_ai_command` (and a REST `{"text"}` command).
        let content = self
            .hub
            .run_ai_command_once(
                &session,
                &args.text,
                None,
                &self.client(),
                key.as_deref(),
                &self.door(),
            )
            .await?;
        Ok(command_result::<CommandRun>(content))
    }
}

/// A command's content as a tool result: `T`, or the tool error of
/// [`output::answer`].
fn command_result<T: DeserializeOwned + Serialize>(content: Value) -> CallToolResult {
    match output::answer::<T>(content) {
        Ok(value) => output::result(&value, false),
        Err(failure) => output::result(&failure, true),
    }
}

/// The request's `Mcp-Session-Id`, when it belongs to a session.
fn mcp_session(context: &RequestContext<RoleServer>) -> Option<String> {
    context
        .extensions
        .get::<Parts>()
        .and_then(|p| p.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A hub error outside a tool call (prompts, resources, completion): a
/// JSON-RPC error whose `data` carries the hub's code; the caller's
/// mistakes are invalid params, the hub's own trouble an internal error.
fn protocol_error(e: &HubError) -> ErrorData {
    let data = Some(json!({"code": e.code.as_str()}));
    match e.code {
        ErrorCode::Internal | ErrorCode::StoreUnavailable => {
            ErrorData::internal_error(e.message.clone(), data)
        }
        _ => ErrorData::invalid_params(e.message.clone(), data),
    }
}

/// A hub error as an MCP tool error: `{success: false, code, message,
/// candidates?}`.
fn tool_error(e: &HubError) -> CallToolResult {
    output::result(&Failure::of(e), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(content: Value) -> (bool, Value) {
        let r = command_result::<SentMessage>(content);
        (
            r.is_error == Some(true),
            r.structured_content.unwrap_or_default(),
        )
    }

    #[test]
    fn command_results_become_tool_results_whatever_an_agent_answers() {
        let (failed, s) = outcome(json!({"success": true, "contact": "John", "message": "hi"}));
        assert!(!failed);
        assert_eq!(s["contact"], "John");
        // A success that does not fit the output type.
        let (failed, s) = outcome(json!({"success": true, "contact": 7}));
        assert!(failed);
        assert_eq!(s["code"], "connector_failed");
        // The code of run_command's executed command.
        let (failed, s) = outcome(json!({"success": false, "result": {
            "success": false, "code": "contact_not_found", "error": "no contact"}}));
        assert!(failed);
        assert_eq!(
            (&s["code"], &s["message"]),
            (&json!("contact_not_found"), &json!("no contact"))
        );
        // An agent's odd answers: not an object, a failure without a code.
        let (failed, s) = outcome(json!("done"));
        assert!(failed);
        assert_eq!(
            (&s["code"], &s["result"]),
            (&json!("connector_failed"), &json!("done"))
        );
        let (failed, s) = outcome(json!({"success": false, "error": 7}));
        assert!(failed);
        assert_eq!(s["code"], "connector_failed");
    }
}
