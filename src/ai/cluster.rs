//! Cluster-wide AI coordination in Redis: the single-flight lock, the
//! shared answers, and the quota scripts. Every key is `{prefix}:ai:...`
//! (docs/ai.md lists them; [`crate::redis::Keys`] names them). The scripts
//! are the AI's own; they run through the Redis layer's one timed path
//! ([`RedisBackend`]), so every command is bounded by a timeout and counted,
//! and a Redis failure becomes `ai_unavailable` (fail closed: quotas cannot
//! be enforced without Redis).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{FromRedisValue, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AiError;
use crate::metrics::Metrics;
use crate::redis::{RedisBackend, RedisPool};

/// Renews a lock only while the caller still holds it.
static LOCK_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          end
          return 0",
    )
});

/// Compare-and-delete: releases a lock only if the caller still holds it.
static LOCK_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
          end
          return 0",
    )
});

/// Stores the answer and releases the lock in one step, so whenever the
/// lock is free after a finished call, the answer is there.
/// KEYS: lock, result. ARGV: token, entry, ttl ms.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
          if redis.call('GET', KEYS[1]) == ARGV[1] then
            redis.call('DEL', KEYS[1])
            return 1
          end
          return 0",
    )
});

/// Takes one upstream call's worth of quota, atomically: a slot in the
/// concurrency semaphore (ZSET holder token -> lease expiry, expired
/// holders purged) and an entry in the one-minute sliding window (ZSET
/// call token -> time). Time is Redis's own clock, the same for every
/// instance. KEYS: calls window, slots. ARGV: token, per-minute limit (0 =
/// none), concurrency cap (0 = none), lease ms, window ms (60000 but in
/// tests).
/// Returns 0 when granted, -1 when every slot is taken (poll again), or
/// the milliseconds until the window has room.
static QUOTA_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          local limit = tonumber(ARGV[2])
          local cap = tonumber(ARGV[3])
          local lease = tonumber(ARGV[4])
          local window = tonumber(ARGV[5])
          if cap > 0 then
            redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
            if redis.call('ZCARD', KEYS[2]) >= cap then
              return -1
            end
          end
          if limit > 0 then
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
            if redis.call('ZCARD', KEYS[1]) >= limit then
              local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
              local wait = tonumber(oldest[2]) + window - now
              if wait < 1 then wait = 1 end
              return wait
            end
            redis.call('ZADD', KEYS[1], now, ARGV[1])
            redis.call('PEXPIRE', KEYS[1], window + 1000)
          end
          if cap > 0 then
            redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
            redis.call('PEXPIRE', KEYS[2], lease * 2)
          end
          return 0",
    )
});

/// Extends a held slot's lease. KEYS: slots. ARGV: token, lease ms.
static SLOT_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
            return 0
          end
          local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
          redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
          return 1",
    )
});

/// A shared answer as stored in `{prefix}:ai:result:{hash}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    Ok(Value),
    Err { kind: String, message: String },
}

impl Entry {
    pub fn from_result(result: &Result<Value, AiError>) -> Entry {
        match result {
            Ok(v) => Entry::Ok(v.clone()),
            Err(e) => {
                let (kind, message) = match e {
                    AiError::RateLimited(m) => ("rate_limited", m),
                    AiError::Unavailable(m) => ("unavailable", m),
                    AiError::Failed(m) => ("failed", m),
                };
                Entry::Err {
                    kind: kind.to_string(),
                    message: message.clone(),
                }
            }
        }
    }

    pub fn into_result(self) -> Result<Value, AiError> {
        match self {
            Entry::Ok(v) => Ok(v),
            Entry::Err { kind, message } => Err(match kind.as_str() {
                "rate_limited" => AiError::RateLimited(message),
                "unavailable" => AiError::Unavailable(message),
                _ => AiError::Failed(message),
            }),
        }
    }
}

/// The cluster's Redis as the AI coordinator uses it; cheap to clone.
#[derive(Clone)]
pub struct RedisAi {
    backend: RedisBackend,
}

impl RedisAi {
    /// Over a pool (of any topology), key prefix and metrics.
    pub fn new(pool: impl Into<RedisPool>, prefix: &str, metrics: Arc<Metrics>) -> Self {
        Self::over(RedisBackend::from_pool(pool, prefix, metrics))
    }

    /// Over the cluster's backend (any topology).
    pub fn over(backend: RedisBackend) -> Self {
        RedisAi { backend }
    }

    /// Single-flight lock of one request hash (string: holder token).
    pub fn lock_key(&self, hash: &str) -> String {
        self.backend.keys.ai_lock(hash)
    }

    /// The shared (and, with a cache TTL, cached) answer of one request hash.
    pub fn result_key(&self, hash: &str) -> String {
        self.backend.keys.ai_result(hash)
    }

    /// Sliding one-minute window of upstream calls of one provider.
    pub fn calls_key(&self, provider: &str) -> String {
        self.backend.keys.ai_calls(provider)
    }

    /// Concurrency semaphore of one provider.
    pub fn slots_key(&self, provider: &str) -> String {
        self.backend.keys.ai_slots(provider)
    }

    async fn cmd<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, AiError> {
        Ok(self.backend.query(op, cmd).await?)
    }

    async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, AiError> {
        Ok(self.backend.script(op, invocation).await?)
    }

    /// `SET lock token NX PX lease`.
    pub async fn try_lock(
        &self,
        lock: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, AiError> {
        let set: Option<String> = self
            .cmd(
                "ai_lock",
                redis::cmd("SET")
                    .arg(lock)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease.as_millis() as u64),
            )
            .await?;
        Ok(set.is_some())
    }

    pub async fn renew_lock(
        &self,
        lock: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, AiError> {
        let renewed: i64 = self
            .script(
                "ai_lock_renew",
                LOCK_RENEW
                    .key(lock)
                    .arg(token)
                    .arg(lease.as_millis() as u64),
            )
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release_lock(&self, lock: &str, token: &str) -> Result<bool, AiError> {
        let released: i64 = self
            .script("ai_lock_release", LOCK_RELEASE.key(lock).arg(token))
            .await?;
        Ok(released == 1)
    }

    /// Writes the answer, then releases the lock (atomically).
    pub async fn finish(
        &self,
        lock: &str,
        token: &str,
        result: &str,
        entry: &Entry,
        ttl: Duration,
    ) -> Result<(), AiError> {
        let json = serde_json::to_string(entry)
            .map_err(|e| AiError::Failed(format!("cannot store the answer: {e}")))?;
        let _: i64 = self
            .script(
                "ai_finish",
                FINISH
                    .key(lock)
                    .key(result)
                    .arg(token)
                    .arg(json)
                    .arg(ttl.as_millis().max(1) as u64),
            )
            .await?;
        Ok(())
    }

    /// The stored answer; an unreadable one (another version's) is absent.
    pub async fn entry(&self, result: &str) -> Result<Option<Entry>, AiError> {
        let raw: Option<String> = self
            .cmd("ai_result_get", redis::cmd("GET").arg(result))
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    pub async fn forget(&self, result: &str) -> Result<(), AiError> {
        let _: i64 = self
            .cmd("ai_result_del", redis::cmd("DEL").arg(result))
            .await?;
        Ok(())
    }

    /// The answer (if written) and whether the lock is still held, read
    /// atomically (`MULTI`).
    pub async fn poll(&self, result: &str, lock: &str) -> Result<(Option<Entry>, bool), AiError> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("GET").arg(result).cmd("EXISTS").arg(lock);
        let (raw, locked): (Option<String>, bool) = self.backend.pipe("ai_poll", &pipe).await?;
        Ok((raw.and_then(|r| serde_json::from_str(&r).ok()), locked))
    }

    /// One attempt at taking quota, `per_minute` calls in any minute; see
    /// [`QUOTA_ACQUIRE`].
    pub async fn quota_acquire(
        &self,
        provider: &str,
        token: &str,
        per_minute: u32,
        cap: u32,
        lease: Duration,
    ) -> Result<i64, AiError> {
        let minute = Duration::from_secs(60);
        self.quota_acquire_in(provider, token, per_minute, minute, cap, lease)
            .await
    }

    /// [`Self::quota_acquire`] with `per_minute` calls in any `window`.
    pub async fn quota_acquire_in(
        &self,
        provider: &str,
        token: &str,
        per_minute: u32,
        window: Duration,
        cap: u32,
        lease: Duration,
    ) -> Result<i64, AiError> {
        self.script(
            "ai_quota_acquire",
            QUOTA_ACQUIRE
                .key(self.calls_key(provider))
                .key(self.slots_key(provider))
                .arg(token)
                .arg(per_minute)
                .arg(cap)
                .arg(lease.as_millis() as u64)
                .arg(window.as_millis() as u64),
        )
        .await
    }

    pub async fn slot_renew(
        &self,
        provider: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, AiError> {
        let renewed: i64 = self
            .script(
                "ai_slot_renew",
                SLOT_RENEW
                    .key(self.slots_key(provider))
                    .arg(token)
                    .arg(lease.as_millis() as u64),
            )
            .await?;
        Ok(renewed == 1)
    }

    pub async fn slot_release(&self, provider: &str, token: &str) -> Result<(), AiError> {
        let _: i64 = self
            .cmd(
                "ai_slot_release",
                redis::cmd("ZREM").arg(self.slots_key(provider)).arg(token),
            )
            .await?;
        Ok(())
    }
}

/// Runs `cleanup` on the current runtime without waiting (from a Drop).
pub fn spawn_cleanup(cleanup: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(cleanup);
    }
}

/// A held single-flight lock. Dropped unreleased (the leader was
/// cancelled), it is released in the background; if the process dies
/// instead, the lease expires.
pub struct LockGuard {
    redis: RedisAi,
    pub key: String,
    token: String,
    armed: bool,
}

impl LockGuard {
    pub fn new(redis: RedisAi, key: String, token: String) -> Self {
        LockGuard {
            redis,
            key,
            token,
            armed: true,
        }
    }

    /// Renews the lease every third of it; never returns while the lock is
    /// held (returns if it was lost, e.g. expired during a Redis outage).
    pub async fn keep_alive(&self, lease: Duration) {
        let period = lease / 3;
        loop {
            tokio::time::sleep(period).await;
            match self.redis.renew_lock(&self.key, &self.token, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(lock = %self.key, "AI single-flight lock lost (lease expired); another instance may call too");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "renewing the AI lock failed; retrying"),
            }
        }
    }

    pub async fn release(mut self) {
        self.armed = false;
        if let Err(e) = self.redis.release_lock(&self.key, &self.token).await {
            tracing::debug!(error = %e, "releasing the AI lock failed; it will expire");
        }
    }

    /// Stores the answer and releases the lock.
    pub async fn finish(mut self, result: &str, entry: &Entry, ttl: Duration) {
        match self
            .redis
            .finish(&self.key, &self.token, result, entry, ttl)
            .await
        {
            Ok(()) => self.armed = false,
            Err(e) => {
                tracing::warn!(error = %e, "could not share the AI answer; waiters will take over after the lease")
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.armed {
            let redis = self.redis.clone();
            let key = std::mem::take(&mut self.key);
            let token = std::mem::take(&mut self.token);
            spawn_cleanup(async move {
                let _ = redis.release_lock(&key, &token).await;
            });
        }
    }
}
