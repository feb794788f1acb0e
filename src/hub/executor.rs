//! Executing WhatsApp commands for a session: through its agent when one is
//! connected, else through the configured connector. Either way a sent
//! message lands in the shared history and every client sees it, marked
//! with who carried it out (`executed_by`: `agent`, `cloud_api`,
//! `simulated`).
//!
//! Connector choice: a connected agent always takes precedence. When it is
//! gone, the *configured* connector (WHATSAPP_CONNECTOR) runs the command:
//! the simulator only when `simulated` is configured; with `none` a send
//! fails with `agent_unavailable` and nothing is recorded.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Hub;
use super::agents::LateCall;
use super::door::Door;
use crate::ai::{InterpretRequest, validate};
use crate::contacts::resolve_contact;
use crate::protocol::{
    AiContext, ClientInfo, ErrorCode, HistoryEntry, HubError, MessageContent, MessageDirection,
    WhatsAppCommand, now_millis, summary,
};
use crate::whatsapp::{Outgoing, Template, no_agent};

/// `executed_by` of what an agent carried out.
pub const EXECUTED_BY_AGENT: &str = "agent";

const DEFAULT_HISTORY_LIMIT: usize = 20;

/// WhatsApp's customer-service window: free-form messages only within 24
/// hours of the contact's last message.
pub const SERVICE_WINDOW_MS: u64 = 24 * 3_600_000;

/// The `content` the original protocol returns for a failed command.
pub fn failure_content(err: &HubError) -> Value {
    let mut content = json!({
        "success": false,
        "error": err.message,
        "code": err.code.as_str(),
    });
    if !err.candidates.is_empty() {
        content["candidates"] = json!(err.candidates);
    }
    content
}

impl Hub {
    pub async fn execute(
        self: &Arc<Self>,
        session: &str,
        command: &WhatsAppCommand,
        requester: &ClientInfo,
    ) -> Result<Value, HubError> {
        if let Some(agent) = self.store.agent(session).await? {
            // An agent's own commands go to the connector, not back to itself.
            if agent.client_id != requester.client_id {
                let command = self.resolve_for_agent(session, command).await?;
                let command = &command;
                let as_json = serde_json::to_value(command).map_err(HubError::internal)?;
                let late = LateCall {
                    session: session.to_string(),
                    command: command.clone(),
                    requester: requester.clone(),
                };
                match self.call_agent(session, &agent, as_json, Some(late)).await {
                    Ok(content) => {
                        self.after_agent_success(session, command, &content, requester)
                            .await;
                        return Ok(content);
                    }
                    Err(e) if e.code == ErrorCode::AgentUnavailable => {
                        // The command never reached the agent (it is gone, or
                        // its instance died): forget it and use the
                        // configured connector (never the simulator unless
                        // it is the one configured).
                        tracing::info!(session, agent = %agent.client_id, connector = self.connector.name(), "agent unavailable; using the configured connector");
                        if self.store.release_agent(session, &agent).await? {
                            self.publish_agent_changed(session, None);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.execute_with_connector(session, command, requester)
            .await
    }

    /// Canonical contact names for the agent, when the session knows the
    /// contact; otherwise the name as typed (the agent may know better).
    async fn resolve_for_agent(
        &self,
        session: &str,
        command: &WhatsAppCommand,
    ) -> Result<WhatsAppCommand, HubError> {
        let mut command = command.clone();
        if let WhatsAppCommand::Send { contact, .. }
        | WhatsAppCommand::GetHistory { contact, .. }
        | WhatsAppCommand::SendTemplate { contact, .. } = &mut command
        {
            let names: Vec<String> = self
                .session_contacts(session)
                .await?
                .into_iter()
                .map(|c| c.name)
                .collect();
            if let Ok(name) = resolve_contact(contact, &names, &self.metrics) {
                *contact = name.to_string();
            }
        }
        Ok(command)
    }

    pub(super) async fn after_agent_success(
        &self,
        session: &str,
        command: &WhatsAppCommand,
        content: &Value,
        requester: &ClientInfo,
    ) {
        let Some((contact, message)) = command.sent_text() else {
            return;
        };
        if content.get("success").and_then(Value::as_bool) != Some(true) {
            return;
        }
        let entry = HistoryEntry {
            direction: MessageDirection::Outgoing,
            contact: content
                .get("contact")
                .and_then(Value::as_str)
                .unwrap_or(contact)
                .to_string(),
            message,
            message_id: content
                .get("message_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("agent.{}", uuid::Uuid::new_v4().simple())),
            timestamp: now_millis(),
            by: requester.client_id.clone(),
            executed_by: Some(EXECUTED_BY_AGENT.to_string()),
            status: None,
            status_error: None,
            content: Default::default(),
        };
        if let Err(e) = self.record_and_publish(session, &entry).await {
            tracing::warn!(error = %e, "could not record an agent-sent message");
        }
    }

    async fn execute_with_connector(
        &self,
        session: &str,
        command: &WhatsAppCommand,
        requester: &ClientInfo,
    ) -> Result<Value, HubError> {
        // Without an agent and a connector that sends, the real cause first,
        // before any contact lookup can fail.
        if !self.connector.sends()
            && (command.is_send() || matches!(command, WhatsAppCommand::MarkRead { .. }))
        {
            return Err(no_agent());
        }
        let contacts = self.session_contacts(session).await?;
        let names: Vec<String> = contacts.iter().map(|c| c.name.clone()).collect();
        let target = |contact: &str| {
            let name = resolve_contact(contact, &names, &self.metrics)?;
            contacts
                .iter()
                .find(|c| c.name == name)
                .cloned()
                .ok_or_else(|| HubError::internal("resolved contact vanished"))
        };
        match command {
            WhatsAppCommand::Send {
                contact, message, ..
            } => {
                let target = target(contact)?;
                if self.connector.has_service_window() {
                    self.check_service_window(session, &target.name).await?;
                }
                let outgoing = Outgoing {
                    text: message.clone(),
                    content: command.sent_content(),
                };
                let message_id = self.connector.send(session, &target, &outgoing).await?;
                let shown = summary(message, &outgoing.content);
                let content = self.media_urls(session, outgoing.content);
                self.record_sent(
                    session,
                    &target.name,
                    &shown,
                    content,
                    message_id,
                    requester,
                )
                .await
            }
            WhatsAppCommand::SendTemplate {
                contact,
                template,
                language,
                components,
            } => {
                let target = target(contact)?;
                let tpl = Template {
                    name: template.clone(),
                    language: language.clone(),
                    components: components.clone(),
                };
                let message_id = self.connector.send_template(session, &target, &tpl).await?;
                let shown = command
                    .sent_text()
                    .map(|(_, text)| text)
                    .unwrap_or_default();
                let mut content = self
                    .record_sent(
                        session,
                        &target.name,
                        &shown,
                        MessageContent::default(),
                        message_id,
                        requester,
                    )
                    .await?;
                content["template"] = json!(template);
                Ok(content)
            }
            WhatsAppCommand::ListContacts => Ok(json!({
                "success": true,
                "contacts": contacts,
                "total_count": contacts.len(),
                "executed_by": self.connector.name(),
            })),
            WhatsAppCommand::GetHistory { contact, limit } => {
                let name = resolve_contact(contact, &names, &self.metrics)?;
                let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT).max(1);
                let messages = self.store.history(session, name, limit).await?;
                Ok(json!({
                    "success": true,
                    "contact": name,
                    "messages": messages,
                    "count": messages.len(),
                    "executed_by": self.connector.name(),
                }))
            }
            WhatsAppCommand::MarkRead { contact, typing } => {
                let name = resolve_contact(contact, &names, &self.metrics)?;
                let marked = self.mark_read(session, name, *typing).await?;
                Ok(json!({
                    "success": true,
                    "contact": name,
                    "message_id": marked,
                    "typing": *typing && marked.is_some(),
                    "executed_by": self.connector.name(),
                }))
            }
            WhatsAppCommand::ListTemplates => {
                let templates = self.connector.list_templates(session).await?;
                Ok(json!({
                    "success": true,
                    "templates": templates,
                    "count": templates.len(),
                    "executed_by": self.connector.name(),
                }))
            }
        }
    }

    /// The contact's latest incoming message id, if its history still
    /// holds one.
    async fn last_incoming(
        &self,
        session: &str,
        contact: &str,
    ) -> Result<Option<HistoryEntry>, HubError> {
        let history = self
            .store
            .history(session, contact, self.config.history_limit)
            .await?;
        Ok(history
            .into_iter()
            .rev()
            .find(|e| e.direction == MessageDirection::Incoming))
    }

    /// Refuses a free-form send when the contact's last message is known to
    /// be more than 24 hours old. A contact whose last message the history
    /// no longer (or never) holds is let through: the Cloud API's own
    /// answer (131047, `outside_conversation_window`) then decides.
    async fn check_service_window(&self, session: &str, contact: &str) -> Result<(), HubError> {
        let Some(last) = self.last_incoming(session, contact).await? else {
            return Ok(());
        };
        let age = now_millis().saturating_sub(last.timestamp);
        if age <= SERVICE_WINDOW_MS {
            return Ok(());
        }
        Err(HubError::new(
            ErrorCode::OutsideServiceWindow,
            format!(
                "{contact} last wrote {} hours ago: outside WhatsApp's 24-hour customer-service window only an approved template may be sent (list_templates, then send_template)",
                age / 3_600_000
            ),
        ))
    }

    /// Marks the contact's latest incoming message read; its id, or None
    /// when there is none to mark.
    pub(super) async fn mark_read(
        &self,
        session: &str,
        contact: &str,
        typing: bool,
    ) -> Result<Option<String>, HubError> {
        let Some(last) = self.last_incoming(session, contact).await? else {
            return Ok(None);
        };
        self.connector
            .mark_read(session, &last.message_id, typing)
            .await?;
        Ok(Some(last.message_id))
    }

    /// While an AI-interpreted send is on its way (held for approval,
    /// perhaps), the contact sees "typing…" on their last message, marked
    /// read with it: the Cloud API's typing indicator only exists on a
    /// read receipt. Best effort, in the background; only where the
    /// connector, not an agent, will send.
    fn show_typing(self: &Arc<Self>, session: &str, command: &WhatsAppCommand) {
        let Some((contact, _)) = command.sent_text() else {
            return;
        };
        if !self.connector.has_service_window() {
            return;
        }
        let hub = self.clone();
        let (session, contact) = (session.to_string(), contact.to_string());
        tokio::spawn(async move {
            if matches!(hub.store.agent(&session).await, Ok(Some(_))) {
                return;
            }
            let names: Vec<String> = match hub.session_contacts(&session).await {
                Ok(contacts) => contacts.into_iter().map(|c| c.name).collect(),
                Err(_) => return,
            };
            let Ok(name) = resolve_contact(&contact, &names, &hub.metrics) else {
                return;
            };
            if let Err(e) = hub.mark_read(&session, name, true).await {
                tracing::debug!(error = %e, "typing indicator not shown");
            }
        });
    }

    /// Records a message the connector accepted and tells every client;
    /// the `send` result content.
    async fn record_sent(
        &self,
        session: &str,
        contact: &str,
        message: &str,
        content: MessageContent,
        message_id: String,
        requester: &ClientInfo,
    ) -> Result<Value, HubError> {
        let entry = HistoryEntry {
            direction: MessageDirection::Outgoing,
            contact: contact.to_string(),
            message: message.to_string(),
            message_id,
            timestamp: now_millis(),
            by: requester.client_id.clone(),
            executed_by: Some(self.connector.name().to_string()),
            status: None,
            status_error: None,
            content,
        };
        self.record_and_publish(session, &entry).await?;
        let mut result = json!({
            "success": true,
            "contact": entry.contact,
            "message": entry.message,
            "message_id": entry.message_id,
            "timestamp": entry.timestamp,
            "executed_by": self.connector.name(),
        });
        if let Some(media) = &entry.content.media {
            result["media"] = json!(media);
        }
        Ok(result)
    }

    /// Interprets a natural-language command and executes it. The result is
    /// the original protocol's `whatsapp_ai_command_result` content.
    pub async fn execute_ai_command(
        self: &Arc<Self>,
        session: &str,
        text: &str,
        context: Option<AiContext>,
        requester: &ClientInfo,
        door: &Door,
    ) -> Result<Value, HubError> {
        let (contacts, last_contact) = match context {
            Some(AiContext {
                contact_list: Some(list),
                last_contact,
            }) => (
                list.into_iter()
                    .map(|c| c.into_contact().name)
                    .collect::<Vec<_>>(),
                last_contact,
            ),
            other => {
                let names = self
                    .session_contacts(session)
                    .await?
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                let last = match other.and_then(|c| c.last_contact) {
                    Some(last) => Some(last),
                    None => self.store.last_contact(session).await?,
                };
                (names, last)
            }
        };
        let request = InterpretRequest {
            command: text.trim().to_string(),
            contacts,
            last_contact,
        };
        let outcome = self.ai.interpret(session, &request).await?;
        let interpretation = &outcome.value;
        let command = match validate(interpretation, &request.contacts, &self.metrics) {
            Ok(c) => c,
            Err(e) => {
                let mut content = failure_content(&e);
                content["interpretation"] = json!(interpretation);
                content["provider"] = json!(self.ai.provider_name());
                content["cached"] = json!(outcome.cached);
                content["shared"] = json!(outcome.shared);
                return Ok(content);
            }
        };
        self.show_typing(session, &command);
        let result = match self
            .execute_via(session, &command, requester, door, true)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_command_failure() => failure_content(&e),
            Err(e) => return Err(e),
        };
        let success = result
            .get("success")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut shown = json!({ "action": command.action() });
        match &command {
            WhatsAppCommand::Send {
                contact, message, ..
            } => {
                shown["contact"] = json!(contact);
                shown["message"] = json!(message);
            }
            WhatsAppCommand::MarkRead { contact, .. } => {
                shown["contact"] = json!(contact);
            }
            WhatsAppCommand::GetHistory { contact, limit } => {
                shown["contact"] = json!(contact);
                if let Some(l) = limit {
                    shown["limit"] = json!(l);
                }
            }
            WhatsAppCommand::SendTemplate {
                contact, template, ..
            } => {
                shown["contact"] = json!(contact);
                shown["template"] = json!(template);
            }
            WhatsAppCommand::ListContacts | WhatsAppCommand::ListTemplates => {}
        }
        Ok(json!({
            "success": success,
            "interpretation": shown,
            "result": result,
            "provider": self.ai.provider_name(),
            "cached": outcome.cached,
            "shared": outcome.shared,
        }))
    }
}
