//! Sits between the hub and the AI provider: counts calls and reports
//! whether an answer was cached or shared with other waiters.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{AiError, AiProvider, InterpretRequest, Interpretation};
use crate::metrics::Metrics;

/// An answer plus how it was obtained.
#[derive(Debug, Clone)]
pub struct AiOutcome<T> {
    pub value: T,
    pub cached: bool,
    pub shared: bool,
}

pub struct AiCoordinator {
    provider: Arc<dyn AiProvider>,
    metrics: Arc<Metrics>,
}

impl AiCoordinator {
    pub fn new(provider: Arc<dyn AiProvider>, metrics: Arc<Metrics>) -> Self {
        AiCoordinator { provider, metrics }
    }

    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    pub async fn interpret(
        &self,
        _session: &str,
        request: &InterpretRequest,
    ) -> Result<AiOutcome<Interpretation>, AiError> {
        let result = self.observe(self.provider.interpret(request)).await;
        result.map(|value| AiOutcome {
            value,
            cached: false,
            shared: false,
        })
    }

    pub async fn complete(
        &self,
        _session: &str,
        prompt: &str,
        context: Option<&Value>,
    ) -> Result<AiOutcome<String>, AiError> {
        let result = self.observe(self.provider.complete(prompt, context)).await;
        result.map(|value| AiOutcome {
            value,
            cached: false,
            shared: false,
        })
    }

    async fn observe<T>(
        &self,
        call: impl Future<Output = Result<T, AiError>>,
    ) -> Result<T, AiError> {
        let started = Instant::now();
        let result = call.await;
        let provider = self.provider.name();
        self.metrics
            .ai_upstream_duration
            .with_label_values(&[provider])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(AiError::RateLimited(_)) => "rate_limited",
            Err(AiError::Unavailable(_)) => "unavailable",
            Err(AiError::Failed(_)) => "failed",
        };
        self.metrics
            .ai_requests
            .with_label_values(&[provider, outcome])
            .inc();
        result
    }
}
