//! A person's approval before a send (`APPROVAL_REQUIRED`, docs/protocol.md
//! §14). A send that needs it is *held*: recorded in the shared
//! [`ApprovalStore`], announced to the session as `approval_request`, and
//! its caller waits. Any human member (not an agent), an admin, or the MCP
//! user (elicitation) decides; the store lets exactly one decision win,
//! cluster-wide. The instance whose decision won carries it out — runs the
//! send when approved — records the outcome, announces
//! `approval_resolved`, and wakes the waiting caller on its instance.
//!
//! Nothing is tied to the caller's instance: if it dies, the held send is
//! still decided (and sent) by another, and the expiry sweep of any
//! instance rejects what nobody decided in time. A decider that dies
//! between winning and sending leaves the send unsent (at most once: a
//! message is never sent twice), and its waiter answers
//! `connector_unavailable` (final, so an idempotent retry does not send again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::Hub;
pub use super::door::{AskUser, Door};
use super::executor::failure_content;
use crate::approvals::{
    Approval, ApprovalStore, ApprovalVia, Decide, Decision, Held, Record, Resolution,
};
use crate::broker::InstanceMessage;
use crate::protocol::{ClientInfo, ErrorCode, HubError, ServerEvent, WhatsAppCommand, now_millis};

/// How long a decided send's record is kept, for its waiter and late
/// duplicates of the decision.
const KEEP_DECIDED: Duration = Duration::from_secs(600);
/// How often a waiter reads the record, in case the wake-up from another
/// instance was lost (pub/sub is at most once).
const BACKSTOP: Duration = Duration::from_secs(2);
/// Most held sends one expiry sweep decides.
const SWEEP_BATCH: usize = 256;

/// The hub's side of held sends: the shared records and this instance's
/// waiting callers.
pub struct ApprovalDesk {
    store: Arc<dyn ApprovalStore>,
    /// (session, number) → the waiting caller's wake-up.
    waiters: Mutex<HashMap<(String, u64), Arc<Notify>>>,
}

impl ApprovalDesk {
    pub fn new(store: Arc<dyn ApprovalStore>) -> Self {
        ApprovalDesk {
            store,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, session: &str, id: u64) {
        if let Some(notify) = self.waiters().get(&(session.to_string(), id)) {
            notify.notify_one();
        }
    }
}

/// Removes a waiter however its wait ends.
struct WaiterGuard<'a> {
    desk: &'a ApprovalDesk,
    key: (String, u64),
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.desk.waiters().remove(&self.key);
    }
}

/// The error a rejected or expired send answers.
fn refusal(resolution: &Resolution) -> HubError {
    let because = resolution
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match resolution.decision {
        Decision::Expired => HubError::new(
            ErrorCode::ApprovalExpired,
            "nobody approved the send before it expired (APPROVAL_TTL_MS)",
        ),
        _ => HubError::new(
            ErrorCode::ApprovalRejected,
            format!("`{}` rejected the send{because}", resolution.decided_by),
        ),
    }
}

/// The caller's answer from a decided send's recorded outcome: the send's
/// answer, or its error (its code kept, so the idempotency layer and REST
/// treat it as the error it was).
fn outcome_result(outcome: Value) -> Result<Value, HubError> {
    let failed_with = (outcome.get("success").and_then(Value::as_bool) == Some(false))
        .then(|| outcome.get("code").and_then(Value::as_str))
        .flatten()
        .and_then(|c| c.parse::<ErrorCode>().ok());
    match failed_with {
        Some(code) => {
            let message = outcome
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the approved send failed");
            let candidates = outcome
                .get("candidates")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            Err(HubError::new(code, message).with_candidates(candidates))
        }
        None => Ok(outcome),
    }
}

impl Hub {
    /// Runs `command` for `requester`, holding it for a person's approval
    /// first when APPROVAL_REQUIRED says so (`from_ai`: an AI interpreted
    /// it). Reads never wait.
    pub(super) async fn execute_via(
        self: &Arc<Self>,
        session: &str,
        command: &WhatsAppCommand,
        requester: &ClientInfo,
        door: &Door,
        from_ai: bool,
    ) -> Result<Value, HubError> {
        let from_mcp = matches!(door, Door::Mcp(_));
        // The setting first: with nothing held (the default), a send costs
        // no copy of its text.
        if !self.config.approval.holds(from_mcp, from_ai) {
            return self.execute(session, command, requester).await;
        }
        let Some((contact, text)) = command.sent_text() else {
            return self.execute(session, command, requester).await;
        };
        let id = self.approvals.store.next_id(session).await?;
        let now = now_millis();
        let held = Held {
            approval: Approval {
                id,
                session: session.to_string(),
                requested_by: requester.client_id.clone(),
                via: if from_mcp {
                    ApprovalVia::Mcp
                } else {
                    ApprovalVia::Ai
                },
                action: command.action().to_string(),
                contact: contact.to_string(),
                text,
                created_at: now,
                expires_at: now + self.config.approval.ttl.as_millis() as u64,
            },
            command: command.clone(),
            requester: requester.clone(),
        };
        let ask = match door {
            Door::Mcp(ask) => ask.clone(),
            Door::Client => None,
        };
        self.hold_and_wait(held, ask).await
    }

    /// Holds a send, announces it, and waits for its outcome.
    async fn hold_and_wait(
        self: &Arc<Self>,
        held: Held,
        ask: Option<Arc<dyn AskUser>>,
    ) -> Result<Value, HubError> {
        let desk = &self.approvals;
        let approval = held.approval.clone();
        let session = approval.session.as_str();
        let key = (session.to_string(), approval.id);
        // Waiting before it is announced: a decision cannot come first.
        let notify = Arc::new(Notify::new());
        desk.waiters().insert(key.clone(), notify.clone());
        let _guard = WaiterGuard { desk, key };
        let max = self.config.approval.max_pending_per_session;
        if !desk.store.hold(&held, max, KEEP_DECIDED).await? {
            self.metrics.approvals.with_label_values(&["refused"]).inc();
            return Err(HubError::new(
                ErrorCode::ApprovalQueueFull,
                format!(
                    "session `{session}` has {max} sends waiting for approval already (MAX_PENDING_APPROVALS_PER_SESSION)"
                ),
            ));
        }
        self.metrics.approvals.with_label_values(&["held"]).inc();
        tracing::info!(
            session,
            id = approval.id,
            via = <&str>::from(approval.via),
            "send held for approval"
        );
        let announced = self
            .publish_delivered(
                session,
                &ServerEvent::ApprovalRequest {
                    approval: &approval,
                },
                None,
            )
            .await;
        if let Err(e) = announced {
            // Nobody saw it: it must not be approved later, after the
            // caller got this error (and maybe retried).
            let withdrawn = Resolution {
                reason: Some("it could not be announced".into()),
                ..Resolution::expiry(now_millis())
            };
            let _ = desk
                .store
                .decide(session, approval.id, &withdrawn, now_millis(), KEEP_DECIDED)
                .await;
            return Err(e);
        }
        self.publish_monitor(&super::monitor::MonitorEvent::Approval {
            approval: &approval,
            resolution: None,
        });

        let expiry = tokio::time::Instant::now()
            + Duration::from_millis(approval.expires_at.saturating_sub(now_millis()));
        // After a decision, how long its outcome (the send) may take.
        let mut outcome_deadline = None;
        let asking = async {
            match &ask {
                Some(ask) => ask.ask(&approval).await,
                None => None,
            }
        };
        tokio::pin!(asking);
        let mut asked = ask.is_none();
        let mut backstop = tokio::time::interval(BACKSTOP);
        backstop.reset();
        loop {
            let deadline = outcome_deadline.unwrap_or(expiry);
            tokio::select! {
                _ = notify.notified() => {}
                _ = backstop.tick() => {}
                answer = &mut asking, if !asked => {
                    asked = true;
                    if let Some(yes) = answer {
                        let decision = if yes { Decision::Approved } else { Decision::Rejected };
                        let by = format!("mcp:{}", held.requester.client_id);
                        match self.decide_approval(session, approval.id, decision, &by, None).await {
                            Ok(_) => {}
                            Err(e) if e.code == ErrorCode::ApprovalNotPending => {}
                            Err(e) => tracing::warn!(session, id = approval.id, error = %e, "the MCP user's decision was not recorded"),
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if outcome_deadline.is_some() {
                        // Final (not `agent_timeout`, which frees an
                        // idempotency key): a retry must not send again.
                        return Err(HubError::new(
                            ErrorCode::ConnectorUnavailable,
                            "the held send's outcome did not arrive in time (the deciding instance may have stopped, or the store is unreachable); it was sent at most once",
                        ));
                    }
                    // Nobody decided in time: expire it (unless someone
                    // just did), then wait a bounded time for the outcome.
                    self.expire(session, approval.id).await;
                    outcome_deadline = Some(self.outcome_deadline());
                }
            }
            match desk.store.get(session, approval.id).await {
                Ok(Some(Record {
                    resolution: Some(resolution),
                    outcome,
                    ..
                })) => {
                    if resolution.decision != Decision::Approved {
                        return Err(refusal(&resolution));
                    }
                    if let Some(outcome) = outcome {
                        return outcome_result(outcome);
                    }
                    outcome_deadline.get_or_insert_with(|| self.outcome_deadline());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(session, id = approval.id, error = %e, "cannot read the held send")
                }
            }
        }
    }

    /// How long a decided send's outcome may take: a send with its retries.
    fn outcome_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.config.agent_timeout * 3
    }

    /// A person's (or the expiry's) decision of a held send: recorded once
    /// cluster-wide, then carried out here. Returns the `approval_resolved`
    /// content: the decision and, for an approval, the send's answer.
    pub async fn decide_approval(
        self: &Arc<Self>,
        session: &str,
        id: u64,
        decision: Decision,
        decided_by: &str,
        reason: Option<String>,
    ) -> Result<Value, HubError> {
        let resolution = Resolution {
            decision,
            decided_by: decided_by.to_string(),
            decided_at: now_millis(),
            reason,
        };
        let decided = self
            .approvals
            .store
            .decide(session, id, &resolution, now_millis(), KEEP_DECIDED)
            .await?;
        match decided {
            Decide::Won(held, resolution) => Ok(self.carry_out_detached(held, resolution).await),
            Decide::Lost(record) => {
                let by = record
                    .resolution
                    .map(|r| format!(" ({} by `{}`)", r.decision.as_str(), r.decided_by))
                    .unwrap_or_default();
                Err(HubError::new(
                    ErrorCode::ApprovalNotPending,
                    format!("approval {id} is decided already{by}"),
                ))
            }
            Decide::Unknown => Err(HubError::new(
                ErrorCode::ApprovalNotPending,
                format!("no held send {id} in session `{session}`"),
            )),
        }
    }

    /// The held sends of a session that wait for a decision, oldest first.
    pub async fn pending_approvals(&self, session: &str) -> Result<Vec<Approval>, HubError> {
        let max = self.config.approval.max_pending_per_session;
        self.approvals.store.pending(session, max).await
    }

    /// Expires a held send nobody decided; a no-op if someone did.
    async fn expire(self: &Arc<Self>, session: &str, id: u64) {
        let decided = self
            .approvals
            .store
            .decide(
                session,
                id,
                &Resolution::expiry(now_millis()),
                now_millis(),
                KEEP_DECIDED,
            )
            .await;
        match decided {
            Ok(Decide::Won(held, resolution)) => {
                self.carry_out_detached(held, resolution).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(session, id, error = %e, "cannot expire a held send"),
        }
    }

    /// [`Self::carry_out`] in a task of its own: a decision that won is
    /// carried out even if the request that made it (an admin call, an MCP
    /// tool call) is dropped meanwhile.
    async fn carry_out_detached(self: &Arc<Self>, held: Held, resolution: Resolution) -> Value {
        let hub = self.clone();
        let id = held.approval.id;
        tokio::spawn(async move { hub.carry_out(held, &resolution).await })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(id, error = %e, "carrying out a decision failed");
                failure_content(&HubError::internal("carrying out the decision failed"))
            })
    }

    /// Carries out a decision this instance won: sends when approved,
    /// records the outcome, tells the session and wakes the caller.
    async fn carry_out(self: &Arc<Self>, held: Held, resolution: &Resolution) -> Value {
        let Held {
            approval,
            command,
            requester,
        } = held;
        let session = approval.session.as_str();
        let result = if resolution.decision == Decision::Approved {
            let sent = match self.execute(session, &command, &requester).await {
                Ok(content) => content,
                Err(e) => failure_content(&e),
            };
            Some(sent)
        } else {
            None
        };
        let outcome = match &result {
            Some(sent) => sent.clone(),
            None => failure_content(&refusal(resolution)),
        };
        if let Err(e) = self
            .approvals
            .store
            .finish(session, approval.id, &outcome)
            .await
        {
            tracing::warn!(session, id = approval.id, error = %e, "the outcome of a held send was not recorded");
        }
        self.metrics
            .approvals
            .with_label_values(&[resolution.decision.as_str()])
            .inc();
        tracing::info!(session, id = approval.id, decision = resolution.decision.as_str(), decided_by = %resolution.decided_by, "held send decided");
        let event = ServerEvent::ApprovalResolved {
            id: approval.id,
            resolution,
            result: result.as_ref(),
        };
        if let Err(e) = self.publish_delivered(session, &event, None).await {
            tracing::warn!(session, id = approval.id, error = %e, "approval_resolved not published");
        }
        self.publish_monitor(&super::monitor::MonitorEvent::Approval {
            approval: &approval,
            resolution: Some(resolution),
        });
        self.wake_waiter(&requester.instance, session, approval.id)
            .await;
        let mut content = json!({
            "success": true,
            "id": approval.id,
            "decision": resolution.decision,
        });
        if let Some(result) = result {
            content["result"] = result;
        }
        content
    }

    /// Wakes the caller waiting for a held send, on whichever instance.
    async fn wake_waiter(&self, instance: &str, session: &str, id: u64) {
        if instance == self.instance() {
            self.approvals.wake(session, id);
            return;
        }
        let message = InstanceMessage::ApprovalResolved {
            session: session.to_string(),
            id,
        };
        if let Err(e) = self.broker.send_to_instance(instance, message).await {
            // Its backstop read finds the outcome.
            tracing::debug!(instance, error = %e, "cannot wake the waiting caller");
        }
    }

    /// Another instance decided a held send this one's caller waits for.
    pub(super) fn approval_resolved_elsewhere(&self, session: &str, id: u64) {
        self.approvals.wake(session, id);
    }

    /// Expires held sends nobody decided in time, whoever held them (their
    /// instance may be gone), until shutdown. Every instance sweeps; the
    /// store lets one expire each.
    pub(super) fn spawn_approval_sweep(self: &Arc<Self>) {
        if self.config.approval.required == crate::config::ApprovalRequired::Off {
            return;
        }
        let period = (self.config.approval.ttl / 10)
            .clamp(Duration::from_millis(250), Duration::from_secs(5));
        self.every(period, |hub| async move {
            match hub.approvals.store.due(now_millis(), SWEEP_BATCH).await {
                Ok(due) => {
                    for (session, id) in due {
                        hub.expire(&session, id).await;
                    }
                }
                Err(error) => tracing::debug!(%error, "approval sweep failed"),
            }
        });
    }
}
