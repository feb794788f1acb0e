//! Idempotent requests: a client-chosen key makes a command run at most
//! once per caller and session within IDEMPOTENCY_TTL_MS, cluster-wide.
//! The first request takes the key (a lock in the store), runs, and stores
//! its result; a concurrent duplicate polls until that result is there
//! (the single-flight shape of `ai::cluster`, without its pub/sub); a
//! later one gets it at once. Only a final outcome is stored: a request
//! that certainly did nothing (no agent, store down, rate limited before
//! sending...), or whose agent timed out (it may answer late), frees the
//! key instead, so a retry can succeed.
//!
//! **Scope.** A key is the caller's own: the token's `sub` with auth on,
//! the client id without (the WebSocket `client_id`, REST and MCP
//! `X-Client-Id`), in one session. The same key from another caller is
//! another key. Without auth the client id is what the caller says it is,
//! as everywhere else then (docs/security.md).
//!
//! **Binding.** A key is bound to its request: the SHA-256 of the request
//! kind and its canonical JSON (the parsed command, so field order and
//! spacing do not matter) is stored with it, and the same key with another
//! request is refused with `idempotency_key_reused` before anything runs.
//!
//! **Bounds.** A caller keeps at most IDEMPOTENCY_KEYS_PER_CALLER results
//! (its oldest forgotten first; the memory store also forgets the oldest
//! of everyone's past IDEMPOTENCY_MAX_TOTAL_BYTES), counted in
//! `hub_limit_shed_total{limit="idempotency_evicted"}`. A result larger
//! than IDEMPOTENCY_MAX_RESULT_BYTES is stored as its [`Digest`] (counted
//! as `idempotency_digest`): a retry still never runs the request again,
//! but gets the original outcome without its body (docs/protocol.md §4).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Hub;
use crate::metrics::Shed;
use crate::protocol::{AiContext, ClientInfo, ErrorCode, HubError, WhatsAppCommand};
use crate::store::{IdempotencyBegin, IdempotencyKey};

/// How often a duplicate looks for the first request's result.
const POLL: Duration = Duration::from_millis(20);
/// A `message_id` longer than this is left out of a digest.
const DIGEST_ID_MAX: usize = 256;

/// What is stored under a key: the first request's answer or error, or
/// the digest of one too large to keep.
#[derive(Serialize)]
enum StoredRef<'a> {
    #[serde(rename = "ok")]
    Ok(&'a Value),
    #[serde(rename = "err")]
    Err(&'a HubError),
}

/// [`StoredRef`] as read back.
#[derive(Deserialize)]
enum Stored {
    #[serde(rename = "ok")]
    Ok(Value),
    #[serde(rename = "err")]
    Err(HubError),
    #[serde(rename = "digest")]
    Digest(Digest),
}

/// What is kept of a result over IDEMPOTENCY_MAX_RESULT_BYTES: its outcome
/// and size, never its body.
#[derive(Serialize, Deserialize)]
struct Digest {
    /// Whether the first request answered (`true`) or failed.
    ok: bool,
    /// The answer's `success`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    /// The error's code, or the answer's `code` (a `success: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    /// The sent message's id, when the answer had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    /// The size and SHA-256 of the stored form it replaces.
    bytes: usize,
    sha256: String,
}

impl Digest {
    fn of(stored: &StoredRef<'_>, raw: &str) -> Digest {
        let (ok, success, code, message_id) = match stored {
            StoredRef::Ok(v) => (
                true,
                v.get("success").and_then(Value::as_bool),
                v.get("code")
                    .and_then(Value::as_str)
                    .and_then(|c| c.parse().ok()),
                v.get("message_id")
                    .and_then(Value::as_str)
                    .filter(|id| id.len() <= DIGEST_ID_MAX)
                    .map(str::to_string),
            ),
            StoredRef::Err(e) => (false, None, Some(e.code), None),
        };
        Digest {
            ok,
            success,
            code,
            message_id,
            bytes: raw.len(),
            sha256: sha256_hex(raw.as_bytes()),
        }
    }

    /// What a retry gets (docs/protocol.md §4): an answer marked
    /// `duplicate` and `result_omitted`, or the error's code.
    fn replay(self) -> Result<Value, HubError> {
        if !self.ok {
            let code = self.code.unwrap_or(ErrorCode::Internal);
            return Err(HubError::new(
                code,
                format!(
                    "the first request with this idempotency_key failed with `{code}`; its full error ({} bytes) was larger than IDEMPOTENCY_MAX_RESULT_BYTES and was not kept",
                    self.bytes
                ),
            ));
        }
        let mut answer = json!({
            "duplicate": true,
            "result_omitted": true,
            "result_bytes": self.bytes,
            "result_sha256": self.sha256,
        });
        if let Some(success) = self.success {
            answer["success"] = json!(success);
        }
        if let Some(code) = self.code {
            answer["code"] = json!(code);
        }
        if let Some(id) = self.message_id {
            answer["message_id"] = json!(id);
        }
        Ok(answer)
    }
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
            | ErrorCode::SessionNotFound
            | ErrorCode::ApprovalQueueFull
    )
}

/// Whether an error is the request's final outcome, and so stored under
/// its key. Not final: what certainly did nothing ([`had_no_effect`]), and
/// an agent's timeout — the agent may still answer (its late answer is
/// recorded and announced), so a retry after it is back runs rather than
/// replaying the timeout.
fn is_final(e: &HubError) -> bool {
    !had_no_effect(e) && e.code != ErrorCode::AgentTimeout
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of `parts` joined by a separator no part holds unescaped (a
/// client's key may hold any printable character, so it goes last).
fn hash_of(parts: &[&str]) -> String {
    sha256_hex(parts.join("\u{1f}").as_bytes())
}

/// Whose keys these are: the token's `sub` with auth on (every caller
/// then carries it as `owner`), else the client id.
fn caller_scope(caller: &ClientInfo) -> String {
    match &caller.owner {
        Some(sub) => hash_of(&["sub", sub]),
        None => hash_of(&["client", &caller.client_id]),
    }
}

/// An idempotency key with what it is scoped and bound to, hashed for the
/// store.
pub struct Keyed {
    caller: String,
    key: String,
    fingerprint: String,
}

impl Keyed {
    /// `kind` and `canonical` (the request's parsed JSON) make the
    /// fingerprint.
    fn new(session: &str, caller: &ClientInfo, key: &str, kind: &str, canonical: &str) -> Keyed {
        Keyed {
            caller: caller_scope(caller),
            key: hash_of(&[session, key]),
            fingerprint: hash_of(&[kind, canonical]),
        }
    }

    /// `key` of a `whatsapp_command` (and a REST `{"command"}`).
    pub fn command(
        session: &str,
        caller: &ClientInfo,
        key: &str,
        command: &WhatsAppCommand,
    ) -> Keyed {
        let canonical = serde_json::to_string(command).unwrap_or_default();
        Self::new(session, caller, key, "whatsapp_command", &canonical)
    }

    /// `key` of a `whatsapp_ai_command` (a REST `{"text"}`, MCP
    /// `run_command`).
    pub fn ai_command(
        session: &str,
        caller: &ClientInfo,
        key: &str,
        text: &str,
        context: Option<&AiContext>,
    ) -> Keyed {
        let canonical = serde_json::to_string(&json!({"command": text, "context": context}))
            .unwrap_or_default();
        Self::new(session, caller, key, "whatsapp_ai_command", &canonical)
    }

    fn store_key(&self) -> IdempotencyKey<'_> {
        IdempotencyKey {
            caller: &self.caller,
            key: &self.key,
            fingerprint: &self.fingerprint,
        }
    }
}

impl Hub {
    /// Runs `work` once per key (see the module docs); without a key,
    /// just runs it.
    pub async fn idempotent(
        self: &Arc<Self>,
        keyed: Option<Keyed>,
        work: impl Future<Output = Result<Value, HubError>>,
    ) -> Result<Value, HubError> {
        let Some(keyed) = keyed else {
            return work.await;
        };
        let key = keyed.store_key();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl = self.config.whatsapp.idempotency_ttl;
        // Long enough for an agent call or a send with its retries; a
        // holder that died frees the key after this.
        let mut lock_ttl = (self.config.agent_timeout * 3).max(Duration::from_secs(30));
        if self.config.approval.required != crate::config::ApprovalRequired::Off {
            // ...and for the person who approves it.
            lock_ttl += self.config.approval.ttl;
        }
        let wait_until = Instant::now() + lock_ttl + Duration::from_secs(1);
        loop {
            match self.store.idempotency_begin(&key, &token, lock_ttl).await? {
                IdempotencyBegin::Acquired => break,
                IdempotencyBegin::Done(raw) => {
                    tracing::debug!("idempotency key replayed");
                    return match serde_json::from_str::<Stored>(&raw) {
                        Ok(Stored::Ok(v)) => Ok(v),
                        Ok(Stored::Err(e)) => Err(e),
                        Ok(Stored::Digest(d)) => d.replay(),
                        Err(e) => Err(HubError::store_unavailable(format!(
                            "corrupt idempotent result: {e}"
                        ))),
                    };
                }
                IdempotencyBegin::Reused => {
                    return Err(HubError::new(
                        ErrorCode::IdempotencyKeyReused,
                        "this idempotency_key was used for a different request; use a new key for a new request",
                    ));
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
            Err(e) if !is_final(e) => None,
            Ok(v) => Some(StoredRef::Ok(v)),
            Err(e) => Some(StoredRef::Err(e)),
        };
        let saved = match stored {
            Some(stored) => match self.stored_form(&stored) {
                Ok(raw) => self
                    .store
                    .idempotency_finish(
                        &key,
                        &token,
                        &raw,
                        ttl,
                        self.config.limits.idempotency_keys_per_caller,
                    )
                    .await
                    .map(|evicted| {
                        for _ in 0..evicted {
                            self.metrics.shed(Shed::IdempotencyEvicted);
                        }
                    }),
                Err(e) => Err(e),
            },
            None => self.store.idempotency_abandon(&key, &token).await,
        };
        if let Err(e) = saved {
            // The answer stands; a duplicate after the lock expires would
            // run again, so say so.
            tracing::warn!(error = %e, "could not store an idempotent result");
        }
        result
    }

    /// The text stored for a result: the result itself, or its digest when
    /// it is over IDEMPOTENCY_MAX_RESULT_BYTES.
    fn stored_form(&self, stored: &StoredRef<'_>) -> Result<String, HubError> {
        let raw = serde_json::to_string(stored).map_err(HubError::internal)?;
        if raw.len() <= self.config.limits.idempotency_max_result_bytes {
            return Ok(raw);
        }
        self.metrics.shed(Shed::IdempotencyDigest);
        #[derive(Serialize)]
        enum DigestRef<'a> {
            #[serde(rename = "digest")]
            Digest(&'a Digest),
        }
        serde_json::to_string(&DigestRef::Digest(&Digest::of(stored, &raw)))
            .map_err(HubError::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, owner: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            client_name: id.into(),
            instance: "i".into(),
            capabilities: Vec::new(),
            owner: owner.map(str::to_string),
            connected_at: None,
        }
    }

    #[test]
    fn keys_are_scoped_to_caller_and_session_and_bound_to_the_request() {
        let alice = client("a", Some("alice"));
        let send = |to: &str| WhatsAppCommand::text(to, "hi");
        let a = Keyed::command("s", &alice, "k", &send("john"));
        assert_eq!(a.fingerprint.len(), 64);
        // Another caller, another session: another key.
        let bob = Keyed::command("s", &client("a", Some("bob")), "k", &send("john"));
        assert_ne!(a.caller, bob.caller);
        assert_eq!(a.key, bob.key);
        assert_ne!(a.key, Keyed::command("s2", &alice, "k", &send("john")).key);
        // The sub, not the client id, with auth on.
        assert_eq!(
            a.caller,
            Keyed::command("s", &client("b", Some("alice")), "k", &send("john")).caller
        );
        // Without auth, a client id that looks like a sub is still apart.
        assert_ne!(
            a.caller,
            Keyed::command("s", &client("alice", None), "k", &send("john")).caller
        );
        // Another request, another fingerprint; the same one, the same.
        let other = Keyed::command("s", &alice, "k", &send("jane"));
        assert_eq!(a.key, other.key);
        assert_ne!(a.fingerprint, other.fingerprint);
        assert_eq!(
            a.fingerprint,
            Keyed::command("s", &alice, "k", &send("john")).fingerprint
        );
        let ai = Keyed::ai_command("s", &alice, "k", "send john hi", None);
        assert_ne!(a.fingerprint, ai.fingerprint);
    }

    #[test]
    fn a_digest_replays_the_outcome_without_the_body() {
        let answer = json!({"success": true, "message_id": "wamid.1", "contacts": vec!["x"; 10]});
        let stored = StoredRef::Ok(&answer);
        let raw = serde_json::to_string(&stored).unwrap();
        let replay = Digest::of(&stored, &raw).replay().unwrap();
        assert_eq!(replay["success"], true);
        assert_eq!(replay["duplicate"], true);
        assert_eq!(replay["result_omitted"], true);
        assert_eq!(replay["message_id"], "wamid.1");
        assert_eq!(replay["result_bytes"], raw.len());
        assert!(replay.get("contacts").is_none());
        let e = HubError::new(ErrorCode::AgentTimeout, "x".repeat(100));
        let stored = StoredRef::Err(&e);
        let raw = serde_json::to_string(&stored).unwrap();
        let err = Digest::of(&stored, &raw).replay().unwrap_err();
        assert_eq!(err.code, ErrorCode::AgentTimeout);
    }
}
