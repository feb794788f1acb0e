//! The requests of a registered client, one function per message type
//! (like mini-redis's `cmd/`): what each does and what it answers. Whether
//! a request runs inline or in its own task is the transport's business
//! ([`crate::protocol::Execution`]); nothing here knows about sockets.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Hub;
use super::door::Door;
use super::executor::failure_content;
use super::idempotency::Keyed;
use super::registry::ClientHandle;
use super::session::Member;
use crate::protocol::{
    AiContext, ClientInfo, ClientMessage, Contact, Decision, ErrorCode, HubError, ServerEvent,
    WhatsAppCommand, now_millis,
};

/// A message of a registered client, with everything needed to run it.
pub struct Request {
    pub(super) hub: Arc<Hub>,
    pub(super) handle: ClientHandle,
    pub(super) member: Arc<Member>,
    pub(super) msg: ClientMessage,
}

impl Request {
    /// Runs the request and answers it, with `error` if it failed.
    pub async fn answer(self, request_id: Option<&str>) {
        self.answer_then(request_id, || {}).await;
    }

    /// Like [`Request::answer`], but calls `release` once the request is
    /// done and *before* its answer is queued: a client that waits for each
    /// answer before sending the next request must find its in-flight slot
    /// free again.
    pub async fn answer_then(self, request_id: Option<&str>, release: impl FnOnce()) {
        let hub = self.hub.clone();
        let handle = self.handle.clone();
        let outcome = self.run(request_id).await;
        release();
        match outcome {
            Ok(Some(reply)) => hub.send_to(
                &handle,
                &ServerEvent::Response {
                    response_type: reply.response_type,
                    content: reply.content,
                    request_id,
                },
            ),
            Ok(None) => {}
            Err(e) => hub.reply_error(&handle, &e, request_id),
        }
    }

    /// Runs the request; the answer (if any) or the error is for the caller
    /// to send.
    async fn run(self, rid: Option<&str>) -> Result<Option<Reply>, HubError> {
        let Request {
            hub,
            handle: _,
            member,
            msg,
        } = self;
        let cx = Cx {
            hub: &hub,
            member: &member,
            rid,
        };
        match msg {
            ClientMessage::WhatsAppCommand {
                command,
                idempotency_key,
            } => whatsapp_command(cx, &command, idempotency_key.as_deref()).await,
            ClientMessage::WhatsAppAiCommand {
                command,
                context,
                idempotency_key,
            } => whatsapp_ai_command(cx, &command, context, idempotency_key.as_deref()).await,
            ClientMessage::AiRequest { prompt, context } => {
                ai_request(cx, &prompt, context.as_ref()).await
            }
            ClientMessage::Broadcast { payload } => broadcast(cx, &payload).await,
            ClientMessage::ExecuteResult { content } => execute_result(cx, content).await,
            ClientMessage::ContactsUpdate { contacts } => contacts_update(cx, &contacts).await,
            ClientMessage::IncomingMessage { contact, message } => {
                incoming_message(cx, contact, message).await
            }
            ClientMessage::Approve { id, reason } => {
                decide(cx, id, Decision::Approved, reason).await
            }
            ClientMessage::Reject { id, reason } => {
                decide(cx, id, Decision::Rejected, reason).await
            }
            ClientMessage::ListApprovals => {
                let approvals = cx.hub.pending_approvals(cx.session()).await?;
                Ok(Reply::new(
                    "approvals",
                    json!({"success": true, "approvals": approvals}),
                ))
            }
            // Handled by the session before any request (ClientSession).
            ClientMessage::Ping | ClientMessage::Register(_) => Ok(None),
        }
    }
}

/// A request's answer: a `response` of this type.
pub struct Reply {
    response_type: &'static str,
    content: Value,
}

impl Reply {
    fn new(response_type: &'static str, content: Value) -> Option<Reply> {
        Some(Reply {
            response_type,
            content,
        })
    }
}

/// What every request function gets: the hub, the requester, and the
/// `request_id` to echo.
#[derive(Clone, Copy)]
struct Cx<'a> {
    hub: &'a Arc<Hub>,
    member: &'a Member,
    rid: Option<&'a str>,
}

impl Cx<'_> {
    fn session(&self) -> &str {
        &self.member.session
    }

    /// Confirms a request that has no other answer, when it asked (request_id).
    fn acknowledge(&self, response_type: &'static str) -> Option<Reply> {
        self.rid
            .and_then(|_| Reply::new(response_type, json!({"success": true})))
    }

    /// Only the session's current agent may report on the account (a
    /// replaced agent stays connected as an ordinary client).
    async fn require_agent(&self) -> Result<(), HubError> {
        let current = self.hub.store.agent(self.session()).await?;
        let me = &self.member.info.client_id;
        if self.member.is_agent && current.is_some_and(|a| &a.client_id == me) {
            Ok(())
        } else {
            Err(HubError::new(
                ErrorCode::NotAgent,
                "only the session's current agent (registered with the `whatsapp` capability) may send this",
            ))
        }
    }
}

/// Who sends a `broadcast` event (its `from`), and so who gets it.
#[derive(Debug, Clone, Copy)]
pub enum Broadcaster<'a> {
    /// A client of the session (WebSocket): it gets no copy of its own
    /// broadcast.
    Member(&'a str),
    /// A caller outside the session (MCP, the admin API): every client of
    /// the session gets it.
    Caller(&'a str),
}

impl Hub {
    /// Sends a `broadcast` event with `payload` to the session's clients on
    /// every instance. A member's broadcast returns once logged — on disk
    /// (`DATA_DIR`) or in Redis, not merely queued, so a crash loses nothing
    /// it was acknowledged (it gets no copy, so its ack need not wait for
    /// the delivery); a caller's once this instance's clients have it, so
    /// its answer follows the event.
    pub async fn broadcast(
        &self,
        session: &str,
        from: Broadcaster<'_>,
        payload: &Value,
    ) -> Result<(), HubError> {
        let sender = match from {
            Broadcaster::Member(id) | Broadcaster::Caller(id) => id,
        };
        let event = ServerEvent::Broadcast {
            from: sender,
            payload,
            timestamp: now_millis(),
        };
        match from {
            Broadcaster::Member(_) => {
                let logged = self.publish(session, &event, Some(sender))?;
                match tokio::time::timeout(crate::redis::COMMAND_TIMEOUT, logged).await {
                    Ok(Ok(_)) => Ok(()),
                    _ => Err(HubError::new(
                        ErrorCode::StoreUnavailable,
                        "the broadcast was not confirmed logged in time; it may still be delivered",
                    )),
                }
            }
            Broadcaster::Caller(_) => self.publish_delivered(session, &event, None).await,
        }
    }

    /// Runs a WhatsApp command for a WebSocket client or a REST caller. A
    /// command that was carried out but failed (unknown contact...) is an
    /// answer (`success: false`), not an error.
    pub async fn run_command(
        self: &Arc<Self>,
        session: &str,
        command: &WhatsAppCommand,
        requester: &ClientInfo,
    ) -> Result<Value, HubError> {
        self.run_command_once(session, command, requester, None, &Door::Client)
            .await
    }

    /// [`Hub::run_command`] at most once per idempotency key, through
    /// `door` (a send may wait for approval, [`super::approvals`]).
    pub async fn run_command_once(
        self: &Arc<Self>,
        session: &str,
        command: &WhatsAppCommand,
        requester: &ClientInfo,
        idempotency_key: Option<&str>,
        door: &Door,
    ) -> Result<Value, HubError> {
        let keyed = idempotency_key.map(|key| Keyed::command(session, requester, key, command));
        let executed = self
            .idempotent(
                keyed,
                self.execute_via(session, command, requester, door, false),
            )
            .await;
        match executed {
            Ok(content) => Ok(content),
            Err(e) if e.is_command_failure() => {
                self.metrics.error(e.code);
                Ok(failure_content(&e))
            }
            Err(e) => Err(e),
        }
    }

    /// A natural-language command ([`Hub::execute_ai_command`]) at most
    /// once per idempotency key.
    pub async fn run_ai_command_once(
        self: &Arc<Self>,
        session: &str,
        text: &str,
        context: Option<AiContext>,
        requester: &ClientInfo,
        idempotency_key: Option<&str>,
        door: &Door,
    ) -> Result<Value, HubError> {
        let keyed = idempotency_key
            .map(|key| Keyed::ai_command(session, requester, key, text, context.as_ref()));
        self.idempotent(
            keyed,
            self.execute_ai_command(session, text, context, requester, door),
        )
        .await
    }
}

async fn whatsapp_command(
    cx: Cx<'_>,
    cmd: &WhatsAppCommand,
    idempotency_key: Option<&str>,
) -> Result<Option<Reply>, HubError> {
    let content = cx
        .hub
        .run_command_once(
            cx.session(),
            cmd,
            &cx.member.info,
            idempotency_key,
            &Door::Client,
        )
        .await?;
    Ok(Reply::new("whatsapp_command_result", content))
}

async fn whatsapp_ai_command(
    cx: Cx<'_>,
    command: &str,
    context: Option<AiContext>,
    idempotency_key: Option<&str>,
) -> Result<Option<Reply>, HubError> {
    let content = cx
        .hub
        .run_ai_command_once(
            cx.session(),
            command,
            context,
            &cx.member.info,
            idempotency_key,
            &Door::Client,
        )
        .await?;
    Ok(Reply::new("whatsapp_ai_command_result", content))
}

async fn ai_request(
    cx: Cx<'_>,
    prompt: &str,
    context: Option<&Value>,
) -> Result<Option<Reply>, HubError> {
    let outcome = cx.hub.ai.complete(cx.session(), prompt, context).await?;
    let content = json!({
        "text": outcome.value,
        "provider": cx.hub.ai.provider_name(),
        "cached": outcome.cached,
        "shared": outcome.shared,
    });
    Ok(Reply::new("ai_response", content))
}

async fn broadcast(cx: Cx<'_>, payload: &Value) -> Result<Option<Reply>, HubError> {
    let from = Broadcaster::Member(&cx.member.info.client_id);
    cx.hub.broadcast(cx.session(), from, payload).await?;
    Ok(cx.acknowledge("broadcast_sent"))
}

async fn execute_result(cx: Cx<'_>, content: Value) -> Result<Option<Reply>, HubError> {
    let Some(call_id) = cx.rid else {
        return Err(HubError::new(
            ErrorCode::MissingField,
            "execute_result needs the `request_id` of the execute it answers",
        ));
    };
    if !cx
        .hub
        .agent_answered(&cx.member.info.client_id, call_id, content)
        .await
    {
        return Err(HubError::new(
            ErrorCode::UnknownRequest,
            format!("no pending execute with request_id `{call_id}` for this agent"),
        ));
    }
    Ok(None)
}

/// A person's `approve` or `reject` of a held send: any member but an
/// agent (the process that would carry the send out is not a person).
async fn decide(
    cx: Cx<'_>,
    id: u64,
    decision: Decision,
    reason: Option<String>,
) -> Result<Option<Reply>, HubError> {
    if cx.member.is_agent {
        return Err(HubError::new(
            ErrorCode::Forbidden,
            "an agent cannot decide a held send; a person (a client without the `whatsapp` capability) does",
        ));
    }
    let content = cx
        .hub
        .decide_approval(
            cx.session(),
            id,
            decision,
            &cx.member.info.client_id,
            reason,
        )
        .await?;
    Ok(Reply::new("approval_decided", content))
}

/// A contact's JSON besides its name and phone (`{"name":"","phone":""},`).
const CONTACT_JSON_OVERHEAD: usize = 26;

async fn contacts_update(cx: Cx<'_>, contacts: &[Contact]) -> Result<Option<Reply>, HubError> {
    cx.require_agent().await?;
    // The count and every name were bounded at parsing
    // (protocol::check_contacts, MAX_CONTACTS_PER_SESSION).
    if contacts.iter().any(|c| c.name.trim().is_empty()) {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            "field `contacts` must not contain an empty name",
        ));
    }
    // Every client is sent the whole list (contact_list_broadcast): one
    // larger than half a connection's queue would cut every client off as
    // a slow consumer.
    let list_bytes: usize = contacts
        .iter()
        .map(|c| c.name.len() + c.phone.as_ref().map_or(0, String::len) + CONTACT_JSON_OVERHEAD)
        .sum();
    let max_bytes = cx.hub.config.outbound_queue_bytes / 2;
    if list_bytes > max_bytes {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!(
                "field `contacts` holds about {list_bytes} bytes; a contact list is at most {max_bytes} (half of OUTBOUND_QUEUE_BYTES)"
            ),
        ));
    }
    cx.hub.store.set_contacts(cx.session(), contacts).await?;
    cx.hub
        .publish_contacts_delivered(cx.session(), contacts)
        .await?;
    Ok(cx.acknowledge("ack"))
}

async fn incoming_message(
    cx: Cx<'_>,
    contact: String,
    message: String,
) -> Result<Option<Reply>, HubError> {
    cx.require_agent().await?;
    if contact.trim().is_empty() || message.is_empty() {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            "fields `contact` and `message` must not be empty",
        ));
    }
    cx.hub
        .record_incoming(crate::whatsapp::IncomingMessage {
            session: cx.session().to_string(),
            contact,
            message,
            executed_by: super::executor::EXECUTED_BY_AGENT,
        })
        .await?;
    Ok(cx.acknowledge("ack"))
}
