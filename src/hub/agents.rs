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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use super::Hub;
use crate::broker::InstanceMessage;
use crate::metrics::{Metrics, Shed};
use crate::outbox::Outbound;
use crate::protocol::{ClientInfo, ErrorCode, HubError, ServerEvent, WhatsAppCommand};
use crate::store::AgentRef;

type CallResult = Result<Value, HubError>;

/// How long after the requester's timeout an agent's answer is still
/// accepted and recorded.
pub const LATE_REPLY_GRACE: Duration = Duration::from_secs(120);

/// Most timed-out calls one instance keeps for a late answer; past it the
/// oldest is forgotten (a late answer to it is then not recorded). Each
/// holds its command (bounded by the message size), so this bounds their
/// memory whatever a flood of unanswered calls does.
pub const MAX_LATE_AGENT_CALLS: usize = 10_000;

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
    late: Mutex<LateCalls>,
}

/// The timed-out calls, with their grace deadlines in insertion order (one
/// grace for all, so the oldest expires first): pruning costs only what it
/// removes.
#[derive(Default)]
struct LateCalls {
    by_id: HashMap<String, (LateCall, Instant)>,
    /// May name calls already answered (skipped when popped).
    order: VecDeque<(Instant, String)>,
}

impl LateCalls {
    /// Keeps `call` until `until`; returns how many calls were forgotten
    /// to make room or because their grace ended.
    fn insert(&mut self, call_id: String, call: LateCall, until: Instant) -> usize {
        let mut pruned = self.prune(Instant::now());
        while self.by_id.len() >= MAX_LATE_AGENT_CALLS {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            pruned += usize::from(self.by_id.remove(&oldest).is_some());
        }
        if self.order.len() > 2 * MAX_LATE_AGENT_CALLS {
            let by_id = &self.by_id;
            self.order.retain(|(_, id)| by_id.contains_key(id));
        }
        self.order.push_back((until, call_id.clone()));
        self.by_id.insert(call_id, (call, until));
        pruned
    }

    /// Forgets the calls whose grace ended; how many.
    fn prune(&mut self, now: Instant) -> usize {
        let mut pruned = 0;
        while let Some((until, _)) = self.order.front()
            && *until <= now
        {
            if let Some((_, id)) = self.order.pop_front()
                && self.by_id.get(&id).is_some_and(|(_, u)| *u <= now)
            {
                self.by_id.remove(&id);
                pruned += 1;
            }
        }
        pruned
    }

    fn remove(&mut self, call_id: &str) -> Option<LateCall> {
        let now = Instant::now();
        self.by_id
            .remove(call_id)
            .and_then(|(call, until)| (until > now).then_some(call))
    }
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
                    return lock(&self.late).remove(call_id).map(|late| (late, result));
                }
            }
        }
        lock(&self.late).remove(call_id).map(|call| (call, result))
    }

    /// Sets `hub_agent_calls_held`.
    fn report_held(&self, metrics: &Metrics) {
        let held = [
            ("pending", lock(&self.pending).len()),
            ("forwarded", lock(&self.forwarded).len()),
            ("late", lock(&self.late).by_id.len()),
        ];
        for (table, n) in held {
            metrics
                .agent_calls_held
                .with_label_values(&[table])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
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
                    let pruned = lock(&self.agents.late).insert(
                        call_id.clone(),
                        late,
                        Instant::now() + LATE_REPLY_GRACE,
                    );
                    for _ in 0..pruned {
                        self.metrics.shed(Shed::AgentCallPruned);
                    }
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
        self.agents.report_held(&self.metrics);
        result
    }

    pub async fn handle_instance_message(self: &Arc<Self>, msg: InstanceMessage) {
        match msg {
            InstanceMessage::DisconnectClient { session, client_id } => {
                self.disconnect_local(&session, &client_id)
            }
            InstanceMessage::ApprovalResolved { session, id } => {
                self.approval_resolved_elsewhere(&session, id)
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
                    hub.agents.report_held(&hub.metrics);
                });
                self.agents.report_held(&self.metrics);
                let out = Outbound::event(&ServerEvent::Execute {
                    request_id: &call_id,
                    command: &command,
                });
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
        let completed = self.agents.complete(call_id, result);
        self.agents.report_held(&self.metrics);
        let Some((late, result)) = completed else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> LateCall {
        LateCall {
            session: "s".into(),
            command: WhatsAppCommand::ListContacts,
            requester: serde_json::from_value(serde_json::json!({
                "client_id": "c", "client_name": "c", "instance": "i"
            }))
            .expect("a client"),
        }
    }

    #[test]
    fn late_calls_are_forgotten_past_their_grace_or_the_cap() {
        let mut late = LateCalls::default();
        let now = Instant::now();
        // Already past its grace: pruned by the next insert.
        assert_eq!(late.insert("old".into(), call(), now), 0);
        assert_eq!(late.insert("a".into(), call(), now + LATE_REPLY_GRACE), 1);
        assert!(late.remove("old").is_none());
        assert!(late.remove("a").is_some());
        let mut pruned = 0;
        for i in 0..MAX_LATE_AGENT_CALLS + 5 {
            pruned += late.insert(format!("c{i}"), call(), now + LATE_REPLY_GRACE);
        }
        assert_eq!(pruned, 5);
        assert_eq!(late.by_id.len(), MAX_LATE_AGENT_CALLS);
        assert!(late.remove("c0").is_none(), "the oldest went first");
        assert!(late.remove("c5").is_some());
        assert!(late.order.len() <= 2 * MAX_LATE_AGENT_CALLS + 1);
    }
}
