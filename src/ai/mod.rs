//! AI providers turn natural language into WhatsApp actions.
//!
//! A provider only proposes an [`Interpretation`]; [`validate`] checks it
//! against the schema and the session's contacts before anything runs, so
//! model output is never trusted. The [`coordinator::AiCoordinator`] sits in
//! front of the provider: single flight (in-process and, in cluster mode,
//! through a Redis lock), answer cache, quotas, retries with backoff, a
//! circuit breaker. docs/ai.md describes all of it.

pub mod breaker;
pub mod cluster;
pub mod coordinator;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod prompt;
pub mod quota;
pub mod rules;
/// The AI settings, owned by [`crate::config`]; re-exported under their
/// old path.
pub use crate::config::ai as settings;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contacts::resolve_contact;
use crate::protocol::{ErrorCode, HubError, WhatsAppCommand};
use crate::redis::{RedisBackend, RedisError};

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

/// What a client is told when the AI could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AiError {
    #[error("AI provider rate limited: {0}")]
    RateLimited(String),
    #[error("AI provider unavailable: {0}")]
    Unavailable(String),
    #[error("AI provider failed: {0}")]
    Failed(String),
}

impl AiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AiError::RateLimited(_) => ErrorCode::AiRateLimited,
            AiError::Unavailable(_) => ErrorCode::AiUnavailable,
            AiError::Failed(_) => ErrorCode::AiFailed,
        }
    }
}

impl From<AiError> for HubError {
    fn from(e: AiError) -> Self {
        HubError::new(e.code(), e.to_string())
    }
}

/// How one upstream attempt failed; decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// 429: retried after the provider's retry delay (or backoff).
    RateLimited,
    /// A quota that will not clear soon (Gemini `PerDay`, OpenAI
    /// `insufficient_quota`): reported as rate limited, not retried.
    QuotaExhausted,
    /// 5xx, transport error or timeout: retried with backoff.
    Unavailable,
    /// Any other 4xx (bad key, unknown model, malformed request): never retried.
    Rejected,
    /// The provider answered but the answer is unusable (blocked prompt,
    /// truncated or malformed output): not retried.
    BadOutput,
}

/// One upstream attempt's failure, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    pub message: String,
    /// The provider's own "retry after" (Gemini RetryInfo, Retry-After).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_output(message: impl Into<String>) -> Self {
        ProviderError::new(ProviderErrorKind::BadOutput, message)
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ProviderErrorKind::RateLimited | ProviderErrorKind::Unavailable
        )
    }

    /// What the client finally sees once retries are over.
    pub fn into_ai_error(self) -> AiError {
        match self.kind {
            ProviderErrorKind::RateLimited | ProviderErrorKind::QuotaExhausted => {
                AiError::RateLimited(self.message)
            }
            ProviderErrorKind::Unavailable => AiError::Unavailable(self.message),
            ProviderErrorKind::Rejected | ProviderErrorKind::BadOutput => {
                AiError::Failed(self.message)
            }
        }
    }
}

/// The cluster's Redis, for cross-instance coordination.
#[derive(Clone)]
pub struct RedisCoordination {
    /// The cluster's Redis (any topology), with its key prefix.
    pub backend: RedisBackend,
}

/// A Redis failure of the coordination store: quotas and single flight
/// cannot hold without it, so the call fails closed.
impl From<RedisError> for AiError {
    fn from(e: RedisError) -> Self {
        AiError::Unavailable(format!("AI coordination store (Redis) unavailable: {e}"))
    }
}

/// Builds the coordinator the hub uses, from the AI settings. `redis` is
/// the cluster's Redis (None in standalone mode): the AI shares its pool,
/// key prefix and metrics.
pub fn build_coordinator(
    settings: &settings::AiArgs,
    metrics: Arc<crate::metrics::Metrics>,
    redis: Option<RedisBackend>,
) -> Result<coordinator::AiCoordinator, crate::config::ConfigError> {
    let provider: Arc<dyn AiProvider> = match settings.ai_provider {
        settings::AiProviderKind::Rules => Arc::new(rules::RulesProvider),
        settings::AiProviderKind::Gemini => {
            Arc::new(gemini::GeminiProvider::new(settings.gemini()?))
        }
        settings::AiProviderKind::Openai => {
            Arc::new(openai::OpenAiProvider::new(settings.openai()?))
        }
    };
    let redis = redis.map(|backend| RedisCoordination { backend });
    Ok(coordinator::AiCoordinator::with_settings(
        provider,
        metrics,
        settings.coordination(),
        redis,
    ))
}

/// One upstream attempt per call: retries, timeouts, quotas and single
/// flight are the coordinator's job.
#[async_trait]
pub trait AiProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Model (or other variant) answers depend on; part of the cache key.
    fn model(&self) -> &str {
        ""
    }
    /// False for providers that answer locally and instantly (rules): the
    /// coordinator then calls them directly, without locks or quotas.
    fn is_remote(&self) -> bool {
        true
    }
    async fn interpret(&self, request: &InterpretRequest) -> Result<Interpretation, ProviderError>;
    /// Free-form answer to an `ai_request`.
    async fn complete(
        &self,
        prompt: &str,
        context: Option<&Value>,
    ) -> Result<String, ProviderError>;
}

/// Longest message the hub will send on a model's say-so.
pub const MAX_MESSAGE_CHARS: usize = 4096;
const MAX_HISTORY_LIMIT: usize = 500;

/// Checks an interpretation against the action schema and the contacts,
/// returning the canonical command (contact names resolved).
pub fn validate(
    interpretation: &Interpretation,
    contacts: &[String],
    metrics: &crate::metrics::Metrics,
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
        resolve_contact(name, contacts, metrics).map(str::to_string)
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
            Ok(WhatsAppCommand::text(contact, message))
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
            validate(&bad_action, &names(), &crate::metrics::Metrics::new("test"))
                .unwrap_err()
                .code,
            ErrorCode::InvalidInterpretation
        );
        let no_message = Interpretation {
            action: "send".into(),
            contact: Some("john".into()),
            message: Some("  ".into()),
            ..Default::default()
        };
        assert_eq!(
            validate(&no_message, &names(), &crate::metrics::Metrics::new("test"))
                .unwrap_err()
                .code,
            ErrorCode::InvalidInterpretation
        );
        let stranger = Interpretation {
            action: "send".into(),
            contact: Some("Mallory".into()),
            message: Some("hi".into()),
            ..Default::default()
        };
        assert_eq!(
            validate(&stranger, &names(), &crate::metrics::Metrics::new("test"))
                .unwrap_err()
                .code,
            ErrorCode::ContactNotFound
        );
        let ok = Interpretation {
            action: "send".into(),
            contact: Some("john".into()),
            message: Some("hi".into()),
            ..Default::default()
        };
        assert_eq!(
            validate(&ok, &names(), &crate::metrics::Metrics::new("test")).unwrap(),
            WhatsAppCommand::text("John", "hi")
        );
    }
}
