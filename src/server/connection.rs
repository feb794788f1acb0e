//! One WebSocket connection: a reader loop that parses and dispatches
//! messages, and a writer task that drains the connection's bounded queue.
//!
//! Slow requests (commands, AI) run in their own tasks, capped per
//! connection, so one long AI call never stalls pings or other requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::hub::executor::failure_content;
use crate::hub::registry::{ClientHandle, CloseReason, Outbound};
use crate::protocol::{
    ClientInfo, ClientMessage, ErrorCode, Frame, HubError, Register, ServerEvent, now_millis,
    parse_client_message,
};
use crate::store::AgentRef;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

const MAX_ID_LEN: usize = 128;
/// How long the goodbye (queued frames at shutdown, the close frame) may take.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A registered client's identity on this connection.
struct Registered {
    session: String,
    info: ClientInfo,
    is_agent: bool,
}

/// Token bucket for the per-connection message rate limit.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection {
    hub: Arc<Hub>,
    conn_id: u64,
    /// This connection's own handle (also used before registration).
    handle: ClientHandle,
    client: Option<Arc<Registered>>,
    rate: RateLimiter,
    in_flight: Arc<Semaphore>,
}

pub async fn handle_socket(hub: Arc<Hub>, socket: WebSocket) {
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(hub.config.outbound_queue_len);
    let kick = CancellationToken::new();
    let placeholder = ClientInfo {
        client_id: String::new(),
        client_name: String::new(),
        instance: hub.instance().to_string(),
        capabilities: Vec::new(),
    };
    let handle = ClientHandle::new(placeholder, conn_id, tx.clone(), kick.clone());
    hub.metrics.connections.inc();
    hub.metrics.connections_opened.inc();

    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        kick.clone(),
        handle.clone(),
        hub.clone(),
    ));

    let mut conn = Connection {
        rate: RateLimiter::new(hub.config.rate_limit_per_sec, hub.config.rate_limit_burst),
        in_flight: Arc::new(Semaphore::new(hub.config.max_in_flight)),
        hub: hub.clone(),
        conn_id,
        handle: handle.clone(),
        client: None,
    };

    loop {
        tokio::select! {
            _ = kick.cancelled() => break,
            _ = hub.shutdown.cancelled() => {
                handle.disconnect(CloseReason::ShuttingDown);
                break;
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => conn.on_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => conn.reply_error(
                    HubError::new(ErrorCode::BinaryNotSupported, "binary frames are not supported; send JSON text frames"),
                    None,
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    handle.disconnect(CloseReason::Normal);
                    break;
                }
                Some(Err(e)) => {
                    let reason = if is_too_large(&e) { CloseReason::TooLarge } else { CloseReason::Normal };
                    tracing::debug!(error = %e, conn_id, "websocket read failed");
                    handle.disconnect(reason);
                    break;
                }
            }
        }
    }

    conn.unregister().await;
    // The writer sends the close frame and ends once kicked.
    let _ = writer.await;
    let reason = handle.close_reason().unwrap_or(CloseReason::Normal);
    hub.metrics.connections.dec();
    hub.metrics
        .connections_closed
        .with_label_values(&[reason.label()])
        .inc();
}

fn is_too_large(e: &axum::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("too long")
        || text.contains("too big")
        || text.contains("capacity")
        || text.contains("space limit")
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    kick: CancellationToken,
    handle: ClientHandle,
    hub: Arc<Hub>,
) {
    loop {
        let out = tokio::select! {
            biased;
            _ = kick.cancelled() => break,
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
        };
        // A client that stops reading blocks the socket write: the kick
        // (slow consumer, shutdown) must still end the connection.
        let written = tokio::select! {
            _ = kick.cancelled() => break,
            written = write_one(&mut sink, out, &hub) => written,
        };
        if written.is_err() {
            handle.disconnect(CloseReason::Normal);
            return;
        }
    }
    let reason = handle.close_reason().unwrap_or(CloseReason::Normal);
    let farewell = async {
        if reason == CloseReason::ShuttingDown {
            // Deliver what is already queued before saying goodbye.
            while let Ok(out) = rx.try_recv() {
                if write_one(&mut sink, out, &hub).await.is_err() {
                    return;
                }
            }
        }
        let close = CloseFrame {
            code: reason.code(),
            reason: reason.text().into(),
        };
        if sink.send(Message::Close(Some(close))).await.is_ok() {
            let _ = sink.close().await;
        }
    };
    // Bounded: a peer that reads nothing must not keep the task alive.
    let _ = tokio::time::timeout(CLOSE_GRACE, farewell).await;
}

async fn write_one(
    sink: &mut SplitSink<WebSocket, Message>,
    out: Outbound,
    hub: &Hub,
) -> Result<(), axum::Error> {
    sink.send(Message::Text(out.frame)).await?;
    hub.metrics
        .messages_sent
        .with_label_values(&[out.kind])
        .inc();
    if out.produced_at > 0 {
        let latency_ms = now_millis().saturating_sub(out.produced_at);
        hub.metrics
            .broadcast_latency
            .observe(latency_ms as f64 / 1000.0);
    }
    Ok(())
}

impl Connection {
    fn send(&self, frame: Frame, kind: &'static str) {
        self.handle.send(
            Outbound {
                frame,
                kind,
                produced_at: 0,
            },
            &self.hub.metrics,
        );
    }

    fn reply_error(&self, err: HubError, request_id: Option<&str>) {
        reply_error(&self.hub, &self.handle, &err, request_id);
    }

    async fn on_text(&mut self, text: &str) {
        let parsed = parse_client_message(text);
        let kind = match &parsed {
            Ok((msg, _)) => message_kind(msg),
            Err(_) => "invalid",
        };
        self.hub
            .metrics
            .messages_received
            .with_label_values(&[kind])
            .inc();
        if !self.rate.allow() {
            // Echo the request_id whenever it could be read, even from a
            // message that is otherwise invalid (docs/protocol.md §2).
            let rid = match &parsed {
                Ok((_, r)) | Err((_, r)) => r.clone(),
            };
            self.reply_error(
                HubError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} messages per second; slow down",
                        self.hub.config.rate_limit_per_sec
                    ),
                ),
                rid.as_deref(),
            );
            return;
        }
        let (msg, request_id) = match parsed {
            Ok(ok) => ok,
            Err((err, rid)) => return self.reply_error(err, rid.as_deref()),
        };
        let rid = request_id.as_deref();
        match msg {
            ClientMessage::Ping => self.send(
                ServerEvent::Pong {
                    timestamp: now_millis(),
                    request_id: rid,
                }
                .to_frame(),
                "pong",
            ),
            ClientMessage::Register(reg) => {
                if let Err(e) = self.register(reg, rid).await {
                    self.reply_error(e, rid);
                }
            }
            other => {
                let Some(client) = self.client.clone() else {
                    return self.reply_error(
                        HubError::new(
                            ErrorCode::NotRegistered,
                            "send `register` before any other request",
                        ),
                        rid,
                    );
                };
                match other {
                    // Inline, not spawned: a client's broadcasts and an
                    // agent's reports must take effect in the order sent.
                    ClientMessage::Broadcast { payload } => {
                        publish_broadcast(&self.hub, &self.handle, &client, &payload, rid);
                    }
                    report @ (ClientMessage::ContactsUpdate { .. }
                    | ClientMessage::IncomingMessage { .. }) => {
                        if let Err(e) =
                            handle_request(&self.hub, &self.handle, &client, report, rid).await
                        {
                            self.reply_error(e, rid);
                        }
                    }
                    other => self.dispatch(client, other, request_id),
                }
            }
        }
    }

    async fn register(&mut self, reg: Register, rid: Option<&str>) -> Result<(), HubError> {
        if self.client.is_some() {
            return Err(HubError::new(
                ErrorCode::AlreadyRegistered,
                "this connection is already registered",
            ));
        }
        let session = reg.session.unwrap_or_else(|| "default".to_string());
        let client_id = reg.client_id.unwrap_or_else(|| {
            format!(
                "client-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        for (field, value) in [("session", &session), ("client_id", &client_id)] {
            if value.trim().is_empty()
                || value.len() > MAX_ID_LEN
                || value.chars().any(char::is_control)
            {
                return Err(HubError::new(
                    ErrorCode::InvalidField,
                    format!("field `{field}` must be 1 to {MAX_ID_LEN} printable characters"),
                ));
            }
        }
        let client_name = reg
            .client_name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| client_id.clone());
        let is_agent = reg.capabilities.iter().any(|c| c == "whatsapp");
        let info = ClientInfo {
            client_id: client_id.clone(),
            client_name: client_name.clone(),
            instance: self.hub.instance().to_string(),
            capabilities: reg.capabilities,
        };
        let hub = &self.hub;
        hub.store
            .seed_contacts(&session, &hub.connector.initial_contacts())
            .await?;
        hub.store.join(&session, &info).await?;
        let contacts = hub.store.contacts(&session).await?;
        let members = hub.store.members(&session).await?;
        if is_agent {
            // Claimed before the confirmation: a client told `agent: true`
            // already receives `execute`.
            let me = AgentRef {
                client_id: client_id.clone(),
                instance: hub.instance().to_string(),
            };
            hub.store.claim_agent(&session, &me).await?;
        }

        self.handle = self.handle.with_info(info.clone());
        self.client = Some(Arc::new(Registered {
            session: session.clone(),
            info: info.clone(),
            is_agent,
        }));

        let mut confirmed = json!({
            "type": "registration_confirmed",
            "client_id": client_id,
            "client_name": client_name,
            "session": session,
            "instance": hub.instance(),
            "agent": is_agent,
            "clients": members,
        });
        if let Some(rid) = rid {
            confirmed["request_id"] = json!(rid);
        }
        // Queued before this connection joins the registry, so no session
        // event (e.g. the agent_changed below) can overtake them.
        self.send(Frame::from(confirmed.to_string()), "registration_confirmed");
        self.send(
            ServerEvent::ContactListBroadcast {
                contacts: &contacts,
                total_count: contacts.len(),
                timestamp: now_millis(),
            }
            .to_frame(),
            "contact_list_broadcast",
        );
        if let Some(old) = hub.registry.insert(&session, self.handle.clone())
            && old.conn_id != self.conn_id
        {
            old.disconnect(CloseReason::Replaced);
            // The old connection's cleanup will see it was replaced and do
            // nothing, so an agent role it held must be given up here, and
            // the calls sent to it fail as if it had disconnected (this
            // connection never saw them).
            let was_agent = old.info.capabilities.iter().any(|c| c == "whatsapp");
            if was_agent {
                hub.agent_gone(&session, &client_id).await;
            }
            if was_agent && !is_agent && hub.store.release_agent(&session, &client_id).await? {
                hub.publish_agent_changed(&session, None);
            }
        }
        hub.publish_client_event(&session, &info, true);
        if is_agent {
            hub.publish_agent_changed(&session, Some(&client_id));
        }
        tracing::info!(session, client_id, is_agent, "client registered");
        Ok(())
    }

    fn dispatch(&self, client: Arc<Registered>, msg: ClientMessage, request_id: Option<String>) {
        let hub = self.hub.clone();
        let handle = self.handle.clone();
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return self.reply_error(
                HubError::new(
                    ErrorCode::TooManyInFlight,
                    format!(
                        "at most {} requests may be in progress per connection",
                        hub.config.max_in_flight
                    ),
                ),
                request_id.as_deref(),
            );
        };
        tokio::spawn(async move {
            let rid = request_id.as_deref();
            if let Err(e) = handle_request(&hub, &handle, &client, msg, rid).await {
                reply_error(&hub, &handle, &e, rid);
            }
            drop(permit);
        });
    }

    async fn unregister(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let hub = &self.hub;
        let session = &client.session;
        let client_id = &client.info.client_id;
        if !hub.registry.remove(session, client_id, self.conn_id) {
            // Replaced by a newer connection with the same client id.
            return;
        }
        if client.is_agent {
            hub.agent_gone(session, client_id).await;
            match hub.store.release_agent(session, client_id).await {
                Ok(true) => hub.publish_agent_changed(session, None),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not release the agent"),
            }
        }
        match hub.store.leave(session, client_id).await {
            Ok(true) => hub.publish_client_event(session, &client.info, false),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove presence"),
        }
        tracing::info!(session, client_id, "client left");
    }
}

fn reply_error(hub: &Hub, handle: &ClientHandle, err: &HubError, request_id: Option<&str>) {
    hub.metrics.error(err.code);
    handle.send(
        Outbound {
            frame: ServerEvent::error(err, request_id),
            kind: "error",
            produced_at: 0,
        },
        &hub.metrics,
    );
}

fn respond(
    hub: &Hub,
    handle: &ClientHandle,
    response_type: &'static str,
    content: Value,
    request_id: Option<&str>,
) {
    handle.send(
        Outbound {
            frame: ServerEvent::Response {
                response_type,
                content,
                request_id,
            }
            .to_frame(),
            kind: "response",
            produced_at: 0,
        },
        &hub.metrics,
    );
}

async fn handle_request(
    hub: &Arc<Hub>,
    handle: &ClientHandle,
    client: &Registered,
    msg: ClientMessage,
    rid: Option<&str>,
) -> Result<(), HubError> {
    let session = &client.session;
    match msg {
        ClientMessage::WhatsAppCommand(cmd) => {
            let content = match hub.execute(session, &cmd, &client.info).await {
                Ok(c) => c,
                Err(e) if e.is_command_failure() => {
                    hub.metrics.error(e.code);
                    failure_content(&e)
                }
                Err(e) => return Err(e),
            };
            respond(hub, handle, "whatsapp_command_result", content, rid);
        }
        ClientMessage::WhatsAppAiCommand { command, context } => {
            let content = hub
                .execute_ai_command(session, &command, context, &client.info)
                .await?;
            respond(hub, handle, "whatsapp_ai_command_result", content, rid);
        }
        ClientMessage::AiRequest { prompt, context } => {
            let outcome = hub.ai.complete(session, &prompt, context.as_ref()).await?;
            let content = json!({
                "text": outcome.value,
                "provider": hub.ai.provider_name(),
                "cached": outcome.cached,
                "shared": outcome.shared,
            });
            respond(hub, handle, "ai_response", content, rid);
        }
        ClientMessage::Broadcast { payload } => {
            publish_broadcast(hub, handle, client, &payload, rid);
        }
        ClientMessage::ExecuteResult { content } => {
            let Some(call_id) = rid else {
                return Err(HubError::new(
                    ErrorCode::MissingField,
                    "execute_result needs the `request_id` of the execute it answers",
                ));
            };
            if !hub
                .agent_answered(&client.info.client_id, call_id, content)
                .await
            {
                return Err(HubError::new(
                    ErrorCode::UnknownRequest,
                    format!("no pending execute with request_id `{call_id}` for this agent"),
                ));
            }
        }
        ClientMessage::ContactsUpdate { contacts } => {
            require_agent(hub, client).await?;
            if contacts.iter().any(|c| c.name.trim().is_empty()) {
                return Err(HubError::new(
                    ErrorCode::InvalidField,
                    "field `contacts` must not contain an empty name",
                ));
            }
            hub.store.set_contacts(session, &contacts).await?;
            hub.publish_contacts(session, &contacts);
            acknowledge(hub, handle, rid);
        }
        ClientMessage::IncomingMessage { contact, message } => {
            require_agent(hub, client).await?;
            if contact.trim().is_empty() || message.is_empty() {
                return Err(HubError::new(
                    ErrorCode::InvalidField,
                    "fields `contact` and `message` must not be empty",
                ));
            }
            hub.record_incoming(crate::whatsapp::IncomingMessage {
                session: session.clone(),
                contact,
                message,
            })
            .await?;
            acknowledge(hub, handle, rid);
        }
        ClientMessage::Ping | ClientMessage::Register(_) => {}
    }
    Ok(())
}

fn publish_broadcast(
    hub: &Hub,
    handle: &ClientHandle,
    client: &Registered,
    payload: &Value,
    rid: Option<&str>,
) {
    hub.publish(
        &client.session,
        &ServerEvent::Broadcast {
            from: &client.info.client_id,
            payload,
            timestamp: now_millis(),
        },
        "broadcast",
        Some(&client.info.client_id),
    );
    if rid.is_some() {
        respond(hub, handle, "broadcast_sent", json!({"success": true}), rid);
    }
}

/// Only the session's current agent may report on the account (a replaced
/// agent stays connected as an ordinary client).
async fn require_agent(hub: &Hub, client: &Registered) -> Result<(), HubError> {
    let current = hub.store.agent(&client.session).await?;
    if client.is_agent && current.is_some_and(|a| a.client_id == client.info.client_id) {
        Ok(())
    } else {
        Err(HubError::new(
            ErrorCode::NotAgent,
            "only the session's current agent (registered with the `whatsapp` capability) may send this",
        ))
    }
}

/// Confirms a request that has no other answer, when it asked (request_id).
fn acknowledge(hub: &Hub, handle: &ClientHandle, rid: Option<&str>) {
    if rid.is_some() {
        respond(hub, handle, "ack", json!({"success": true}), rid);
    }
}

fn message_kind(msg: &ClientMessage) -> &'static str {
    match msg {
        ClientMessage::Register(_) => "register",
        ClientMessage::WhatsAppCommand(_) => "whatsapp_command",
        ClientMessage::WhatsAppAiCommand { .. } => "whatsapp_ai_command",
        ClientMessage::AiRequest { .. } => "ai_request",
        ClientMessage::Ping => "ping",
        ClientMessage::Broadcast { .. } => "broadcast",
        ClientMessage::ExecuteResult { .. } => "execute_result",
        ClientMessage::ContactsUpdate { .. } => "contacts_update",
        ClientMessage::IncomingMessage { .. } => "incoming_message",
    }
}
