//! AI providers turn natural language into WhatsApp actions.
//!
//! A provider only proposes an [`Interpretation`]; [`validate`] checks it
//! against the schema and the session's contacts before anything runs, so
//! model output is never trusted. The [`coordinator::AiCoordinator`] sits in
//! front of the provider (single flight, cache, quotas).

pub mod coordinator;
pub mod rules;
pub mod settings;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::{ErrorCode, HubError, WhatsAppCommand};
use crate::whatsapp::resolve::resolve_contact;

/// What the provider is asked to interpret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct InterpretRequest {
    pub command: String,
    pub contacts: Vec<String>,
    pub last_contact: Option<String>,
}

/// A provider's proposal, untrusted until [`validate`]d.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Interpretation {
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Why the provider could not interpret the command (action "unknown").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AiError {
    #[error("AI provider rate limited: {0}")]
    RateLimited(String),
    #[error("AI provider unavailable: {0}")]
    Unavailable(String),
    #[error("AI provider failed: {0}")]
    Failed(String),
}

impl From<AiError> for HubError {
    fn from(e: AiError) -> Self {
        let code = match e {
            AiError::RateLimited(_) => ErrorCode::AiRateLimited,
            AiError::Unavailable(_) => ErrorCode::AiUnavailable,
            AiError::Failed(_) => ErrorCode::AiFailed,
        };
        HubError::new(code, e.to_string())
    }
}

/// Builds the coordinator the hub uses, from the AI settings. `redis` is
/// the cluster's pool (None in standalone mode).
pub fn build_coordinator(
    settings: &settings::AiArgs,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    _redis: Option<deadpool_redis::Pool>,
) -> Result<coordinator::AiCoordinator, crate::config::ConfigError> {
    let provider: std::sync::Arc<dyn AiProvider> = match settings.ai_provider {
        settings::AiProviderKind::Rules => std::sync::Arc::new(rules::RulesProvider),
        other => {
            return Err(crate::config::ConfigError {
                setting: "AI_PROVIDER",
                reason: format!("{other:?} is not available yet"),
            });
        }
    };
    Ok(coordinator::AiCoordinator::new(provider, metrics))
}

#[async_trait]
pub trait AiProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn interpret(&self, request: &InterpretRequest) -> Result<Interpretation, AiError>;
    /// Free-form answer to an `ai_request`.
    async fn complete(&self, prompt: &str, context: Option<&Value>) -> Result<String, AiError>;
}

/// Longest message the hub will send on a model's say-so.
pub const MAX_MESSAGE_CHARS: usize = 4096;
const MAX_HISTORY_LIMIT: usize = 500;

/// Checks an interpretation against the action schema and the contacts,
/// returning the canonical command (contact names resolved).
pub fn validate(
    interpretation: &Interpretation,
    contacts: &[String],
) -> Result<WhatsAppCommand, HubError> {
    let contact = || -> Result<String, HubError> {
        let name = interpretation
            .contact
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                HubError::new(
                    ErrorCode::InvalidInterpretation,
                    format!("action `{}` needs a contact", interpretation.action),
                )
            })?;
        resolve_contact(name, contacts).map(str::to_string)
    };
    match interpretation.action.as_str() {
        "send" => {
            let contact = contact()?;
            let message = interpretation
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    HubError::new(
                        ErrorCode::InvalidInterpretation,
                        "action `send` needs a non-empty message",
                    )
                })?;
            if message.chars().count() > MAX_MESSAGE_CHARS {
                return Err(HubError::new(
                    ErrorCode::InvalidInterpretation,
                    format!("message longer than {MAX_MESSAGE_CHARS} characters"),
                ));
            }
            Ok(WhatsAppCommand::Send {
                contact,
                message: message.to_string(),
            })
        }
        "list_contacts" => Ok(WhatsAppCommand::ListContacts),
        "get_history" => {
            let contact = contact()?;
            if let Some(limit) = interpretation.limit
                && (limit == 0 || limit > MAX_HISTORY_LIMIT)
            {
                return Err(HubError::new(
                    ErrorCode::InvalidInterpretation,
                    format!("history limit must be between 1 and {MAX_HISTORY_LIMIT}"),
                ));
            }
            Ok(WhatsAppCommand::GetHistory {
                contact,
                limit: interpretation.limit,
            })
        }
        "unknown" | "" => Err(HubError::new(
            ErrorCode::UnparseableCommand,
            interpretation
                .reason
                .clone()
                .unwrap_or_else(|| "could not understand the command".to_string()),
        )),
        other => Err(HubError::new(
            ErrorCode::InvalidInterpretation,
            format!("the AI proposed an unsupported action `{other}`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["John".into(), "Alice".into()]
    }

    #[test]
    fn validation_rejects_untrusted_output() {
        let bad_action = Interpretation {
            action: "delete_account".into(),
            ..Default::default()
        };
        assert_eq!(
            validate(&bad_action, &names()).unwrap_err().code,
            ErrorCode::InvalidInterpretation
        );
        let no_message = Interpretation {
            action: "send".into(),
            contact: Some("john".into()),
            message: Some("  ".into()),
            ..Default::default()
        };
        assert_eq!(
            validate(&no_message, &names()).unwrap_err().code,
            ErrorCode::InvalidInterpretation
        );
        let stranger = Interpretation {
            action: "send".into(),
            contact: Some("Mallory".into()),
            message: Some("hi".into()),
            ..Default::default()
        };
        assert_eq!(
            validate(&stranger, &names()).unwrap_err().code,
            ErrorCode::ContactNotFound
        );
        let ok = Interpretation {
            action: "send".into(),
            contact: Some("john".into()),
            message: Some("hi".into()),
            ..Default::default()
        };
        assert_eq!(
            validate(&ok, &names()).unwrap(),
            WhatsAppCommand::Send {
                contact: "John".into(),
                message: "hi".into()
            }
        );
    }
}
