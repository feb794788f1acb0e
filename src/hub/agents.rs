//! Agent routing: forwarding a command to the client that holds the real
//! WhatsApp session (possibly on another instance) and relaying its answer.
//!
//! The requester's instance keeps a *pending* call with a timeout; the
//! agent's instance keeps a *forwarded* call until the agent answers or
//! disconnects. Both sides are plain maps, never locked across an await.
//!
//! An answer that comes after the requester was told `agent_timeout` is
//! not lost: the agent's instance still relays it for
//! [`LATE_REPLY_GRACE`], and the requester's instance records a late
//! successful send in history and announces it (a message that was sent
//! is never missing from history).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use super::Hub;
use super::registry::Outbound;
use crate::broker::InstanceMessage;
use crate::protocol::{ClientInfo, ErrorCode, HubError, ServerEvent, WhatsAppCommand};
use crate::store::AgentRef;

type CallResult = Result<Value, HubError>;

/// How long after the requester's timeout an agent's answer is still
/// accepted and recorded.
pub const LATE_REPLY_GRACE: Duration = Duration::from_secs(120);

/// What the requester's instance needs to record a late answer.
#[derive(Clone)]
pub struct LateCall {
    pub session: String,
    pub command: WhatsAppCommand,
    pub requester: ClientInfo,
}

struct Forwarded {
    reply_to: String,
    session: String,
    agent_client_id: String,
}

#[derive(Default)]
pub struct AgentRouter {
    pending: Mutex<HashMap<String, oneshot::Sender<CallResult>>>,
    forwarded: Mutex<HashMap<String, Forwarded>>,
    /// Calls whose requester timed out, until their grace ends.
    late: Mutex<HashMap<String, (LateCall, Instant)>>,
}

impl AgentRouter {
    fn add_pending(&self, call_id: &str, tx: oneshot::Sender<CallResult>) {
        lock(&self.pending).insert(call_id.to_string(), tx);
    }

    /// Hands the result to the waiting requester; if it gave up already,
    /// returns the late call it left behind (to be recorded).
    fn complete(&self, call_id: &str, result: CallResult) -> Option<(LateCall, CallResult)> {
        if let Some(tx) = lock(&self.pending).remove(call_id) {
            // The requester may have timed out this very moment.
            match tx.send(result) {
                Ok(()) => return None,
                Err(result) => {
                    return lock(&self.late)
                        .remove(call_id)
                        .map(|(late, _)| (late, result));
                }
            }
        }
        let now = Instant::now();
        let mut late = lock(&self.late);
        late.retain(|_, (_, until)| *until > now);
        late.remove(call_id).map(|(call, _)| (call, result))
    }

    fn take_forwarded(&self, call_id: &str, agent_client_id: &str) -> Option<Forwarded> {
        let mut forwarded = lock(&self.forwarded);
        match forwarded.get(call_id) {
            Some(f) if f.agent_client_id == agent_client_id => forwarded.remove(call_id),
            _ => None,
        }
    }

    fn take_forwarded_for_agent(
        &self,
        session: &str,
        agent_client_id: &str,
    ) -> Vec<(String, Forwarded)> {
        let mut forwarded = lock(&self.forwarded);
        let ids: Vec<String> = forwarded
            .iter()
            .filter(|(_, f)| f.session == session && f.agent_client_id == agent_client_id)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| forwarded.remove(&id).map(|f| (id, f)))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// Sends `command` to the session's agent and waits for its result.
    /// With `late`, an answer after the timeout is still recorded.
    pub async fn call_agent(
        self: &Arc<Self>,
        session: &str,
        agent: &AgentRef,
        command: Value,
        late: Option<LateCall>,
    ) -> CallResult {
        let call_id = format!("call-{}", uuid::Uuid::new_v4().simple());
        let (tx, rx) = oneshot::channel();
        self.agents.add_pending(&call_id, tx);
        let msg = InstanceMessage::AgentCall {
            call_id: call_id.clone(),
            session: session.to_string(),
            agent_client_id: agent.client_id.clone(),
            command,
            reply_to: self.instance().to_string(),
        };
        let sent = if agent.instance == self.instance() {
            self.handle_instance_message(msg).await;
            Ok(())
        } else {
            self.broker.send_to_instance(&agent.instance, msg).await
        };
        if let Err(e) = sent {
            lock(&self.agents.pending).remove(&call_id);
            self.metrics
                .agent_calls
                .with_label_values(&["unavailable"])
                .inc();
            return Err(e);
        }
        let result = match tokio::time::timeout(self.config.agent_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HubError::new(
                ErrorCode::AgentUnavailable,
                "agent call dropped",
            )),
            Err(_) => {
                // The agent may still answer (and may have sent the
                // message): keep what is needed to record it then.
                if let Some(late) = late {
                    lock(&self.agents.late)
                        .insert(call_id.clone(), (late, Instant::now() + LATE_REPLY_GRACE));
                }
                lock(&self.agents.pending).remove(&call_id);
                Err(HubError::new(
                    ErrorCode::AgentTimeout,
                    format!(
                        "the agent did not answer within {} ms",
                        self.config.agent_timeout.as_millis()
                    ),
                ))
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.code == ErrorCode::AgentTimeout => "timeout",
            Err(_) => "unavailable",
        };
        self.metrics.agent_calls.with_label_values(&[outcome]).inc();
        result
    }

    pub async fn handle_instance_message(self: &Arc<Self>, msg: InstanceMessage) {
        match msg {
            InstanceMessage::DisconnectClient { session, client_id } => {
                self.disconnect_local(&session, &client_id)
            }
            InstanceMessage::AgentCall {
                call_id,
                session,
                agent_client_id,
                command,
                reply_to,
            } => {
                let Some(agent) = self.registry.get(&session, &agent_client_id) else {
                    let err = HubError::new(
                        ErrorCode::AgentUnavailable,
                        "the session's agent is no longer connected",
                    );
                    self.reply_to_caller(&reply_to, call_id, Err(err)).await;
                    return;
                };
                lock(&self.agents.forwarded).insert(
                    call_id.clone(),
                    Forwarded {
                        reply_to,
                        session,
                        agent_client_id: agent_client_id.clone(),
                    },
                );
                // The caller gives up after the agent timeout; a late answer
                // is still relayed (and recorded there) for the grace
                // period, then the call is forgotten, so a later answer is
                // refused with `unknown_request` instead of leaking the entry.
                let hub = self.clone();
                let expired_id = call_id.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(hub.config.agent_timeout + LATE_REPLY_GRACE).await;
                    hub.agents.take_forwarded(&expired_id, &agent_client_id);
                });
                let frame = ServerEvent::Execute {
                    request_id: &call_id,
                    command: &command,
                }
                .to_frame();
                let out = Outbound::reply(frame, "execute");
                if !agent.send(out, &self.metrics)
                    && let Some(f) = self.agents.take_forwarded(&call_id, &agent.info.client_id)
                {
                    let err =
                        HubError::new(ErrorCode::AgentUnavailable, "the agent is not reading");
                    self.reply_to_caller(&f.reply_to, call_id, Err(err)).await;
                }
            }
            InstanceMessage::AgentReply {
                call_id,
                content,
                error,
            } => {
                let result = match (content, error) {
                    (_, Some(error)) => Err(error),
                    (Some(content), None) => Ok(content),
                    (None, None) => Ok(Value::Null),
                };
                self.complete_call(&call_id, result).await;
            }
        }
    }

    /// An agent answered `execute`; false if no such call was forwarded to it.
    pub async fn agent_answered(
        self: &Arc<Self>,
        agent_client_id: &str,
        call_id: &str,
        content: Value,
    ) -> bool {
        let Some(f) = self.agents.take_forwarded(call_id, agent_client_id) else {
            return false;
        };
        self.reply_to_caller(&f.reply_to, call_id.to_string(), Ok(content))
            .await;
        true
    }

    /// Fails every call forwarded to an agent that just disconnected.
    pub async fn agent_gone(self: &Arc<Self>, session: &str, agent_client_id: &str) {
        for (call_id, f) in self
            .agents
            .take_forwarded_for_agent(session, agent_client_id)
        {
            // The command reached the agent: it may have been carried out,
            // so this is not retried elsewhere.
            let err = HubError::new(
                ErrorCode::AgentDisconnected,
                "the agent disconnected before answering; the command may or may not have been carried out",
            );
            self.reply_to_caller(&f.reply_to, call_id, Err(err)).await;
        }
    }

    /// Delivers a call's result; records a late one.
    async fn complete_call(self: &Arc<Self>, call_id: &str, result: CallResult) {
        let Some((late, result)) = self.agents.complete(call_id, result) else {
            return;
        };
        if let Ok(content) = result {
            tracing::info!(session = %late.session, call_id, "recording an agent answer that came after agent_timeout");
            self.after_agent_success(&late.session, &late.command, &content, &late.requester)
                .await;
        }
    }

    async fn reply_to_caller(
        self: &Arc<Self>,
        reply_to: &str,
        call_id: String,
        result: CallResult,
    ) {
        if reply_to == self.instance() {
            self.complete_call(&call_id, result).await;
            return;
        }
        let (content, error) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        let reply = InstanceMessage::AgentReply {
            call_id,
            content,
            error,
        };
        if let Err(e) = self.broker.send_to_instance(reply_to, reply).await {
            tracing::warn!(error = %e, instance = reply_to, "could not relay an agent reply");
        }
    }
}
