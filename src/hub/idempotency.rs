//! Idempotent requests: a client-chosen key makes a command run at most
//! once per session within IDEMPOTENCY_TTL_MS, cluster-wide. The first
//! request takes the key (a lock in the store), runs, and stores its
//! result; a concurrent duplicate polls until that result is there (the
//! single-flight shape of `ai::cluster`, without its pub/sub); a later one
//! gets it at once. A request that certainly did nothing (no agent, store
//! down, rate limited before sending...) frees the key instead, so a retry
//! can succeed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Hub;
use crate::protocol::{ErrorCode, HubError};
use crate::store::IdempotencyBegin;

/// How often a duplicate looks for the first request's result.
const POLL: Duration = Duration::from_millis(20);

/// What is stored under a key: the first request's answer or error.
#[derive(Serialize, Deserialize)]
enum Stored {
    #[serde(rename = "ok")]
    Ok(Value),
    #[serde(rename = "err")]
    Err(HubError),
}

/// Errors after which nothing was sent: the key is freed, not kept.
fn had_no_effect(e: &HubError) -> bool {
    matches!(
        e.code,
        ErrorCode::AgentUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::ShuttingDown
            | ErrorCode::Internal
            | ErrorCode::ConnectorRateLimited
            | ErrorCode::ConnectorAuthFailed
            | ErrorCode::AiUnavailable
            | ErrorCode::AiRateLimited
    )
}

/// The store key: session, kind of request and the client's key, hashed
/// (a client's key may hold any printable character).
fn scoped_key(session: &str, kind: &str, key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{session}\u{1f}{kind}\u{1f}{key}").as_bytes(),
    );
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Hub {
    /// Runs `work` once per (`session`, `kind`, `key`); without a key, just
    /// runs it.
    pub async fn idempotent(
        self: &Arc<Self>,
        session: &str,
        kind: &str,
        key: Option<&str>,
        work: impl Future<Output = Result<Value, HubError>>,
    ) -> Result<Value, HubError> {
        let Some(key) = key else {
            return work.await;
        };
        let scoped = scoped_key(session, kind, key);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl = self.config.whatsapp.idempotency_ttl;
        // Long enough for an agent call or a send with its retries; a
        // holder that died frees the key after this.
        let lock_ttl = (self.config.agent_timeout * 3).max(Duration::from_secs(30));
        let wait_until = Instant::now() + lock_ttl + Duration::from_secs(1);
        loop {
            match self
                .store
                .idempotency_begin(&scoped, &token, lock_ttl)
                .await?
            {
                IdempotencyBegin::Acquired => break,
                IdempotencyBegin::Done(raw) => {
                    tracing::debug!(session, kind, "idempotency key replayed");
                    return match serde_json::from_str::<Stored>(&raw) {
                        Ok(Stored::Ok(v)) => Ok(v),
                        Ok(Stored::Err(e)) => Err(e),
                        Err(e) => Err(HubError::store_unavailable(format!(
                            "corrupt idempotent result: {e}"
                        ))),
                    };
                }
                IdempotencyBegin::Busy => {
                    if Instant::now() > wait_until || self.shutdown.is_cancelled() {
                        return Err(HubError::new(
                            ErrorCode::AgentTimeout,
                            "the first request with this idempotency_key is still running",
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        let result = work.await;
        let stored = match &result {
            Err(e) if had_no_effect(e) => None,
            Ok(v) => Some(Stored::Ok(v.clone())),
            Err(e) => Some(Stored::Err(e.clone())),
        };
        let saved = match stored {
            Some(stored) => match serde_json::to_string(&stored) {
                Ok(raw) => {
                    self.store
                        .idempotency_finish(&scoped, &token, &raw, ttl)
                        .await
                }
                Err(e) => Err(HubError::internal(e)),
            },
            None => self.store.idempotency_abandon(&scoped, &token).await,
        };
        if let Err(e) = saved {
            // The answer stands; a duplicate after the lock expires would
            // run again, so say so.
            tracing::warn!(error = %e, "could not store an idempotent result");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_and_hashed() {
        let a = scoped_key("s", "cmd", "k");
        assert_eq!(a.len(), 64);
        assert_ne!(a, scoped_key("s2", "cmd", "k"));
        assert_ne!(a, scoped_key("s", "ai", "k"));
    }
}
