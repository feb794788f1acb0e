//! The low-level Redis layer under the cluster's store, broker, membership
//! and AI coordination: the connection pool, the key layout ([`Keys`]) and
//! one timed, counted path every command, pipeline and Lua script runs
//! through. Scripts themselves live with the layer that owns their keys
//! (`store::redis`, `ai::cluster`).
//!
//! Every command is bounded by a timeout, so a hung Redis turns into a
//! [`RedisError`] (and from there `store_unavailable` / `ai_unavailable`)
//! instead of a stuck client.

mod error;

pub use error::{RedisError, RedisErrorKind};

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::FromRedisValue;
use deadpool_redis::{Pool, Runtime};

use crate::metrics::Metrics;

/// Bound of every Redis operation (and of getting a pooled connection).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis key and channel names. docs/redis.md documents this layout.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn contacts(&self, session: &str) -> String {
        format!("{}:session:{session}:contacts", self.prefix)
    }

    pub fn last_contact(&self, session: &str) -> String {
        format!("{}:session:{session}:last_contact", self.prefix)
    }

    pub fn history(&self, session: &str, contact: &str) -> String {
        format!(
            "{}:session:{session}:history:{}",
            self.prefix,
            contact.to_lowercase()
        )
    }

    pub fn presence(&self, session: &str) -> String {
        format!("{}:session:{session}:presence", self.prefix)
    }

    pub fn agent(&self, session: &str) -> String {
        format!("{}:session:{session}:agent", self.prefix)
    }

    /// ZSET: instance id → last heartbeat (ms since epoch).
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    /// JSON description of a live instance, expiring with its heartbeat.
    pub fn instance_info(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:info", self.prefix)
    }

    /// SET of "session\tclient_id" of an instance's clients, for reaping.
    pub fn instance_members(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:members", self.prefix)
    }

    /// Pub/sub channel carrying every session event.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Pub/sub channel of one instance's point-to-point messages.
    pub fn inbox_channel(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:inbox", self.prefix)
    }

    /// AI single-flight lock of one request hash (string: holder token).
    pub fn ai_lock(&self, hash: &str) -> String {
        format!("{}:ai:lock:{hash}", self.prefix)
    }

    /// The shared (and, with a cache TTL, cached) AI answer of one hash.
    pub fn ai_result(&self, hash: &str) -> String {
        format!("{}:ai:result:{hash}", self.prefix)
    }

    /// The latest delivery status of one sent message (JSON, expiring).
    pub fn message_status(&self, session: &str, message_id: &str) -> String {
        format!("{}:session:{session}:status:{message_id}", self.prefix)
    }

    /// Lock of an idempotency key while its first request runs.
    pub fn idempotency_lock(&self, key: &str) -> String {
        format!("{}:idem:lock:{key}", self.prefix)
    }

    /// The first result of an idempotency key (JSON, expiring).
    pub fn idempotency_result(&self, key: &str) -> String {
        format!("{}:idem:result:{key}", self.prefix)
    }

    /// Marker of a webhook item already accepted (SET NX, expiring).
    pub fn webhook_seen(&self, key: &str) -> String {
        format!("{}:whatsapp:seen:{key}", self.prefix)
    }

    /// LIST of accepted webhook events not yet processed.
    pub fn webhook_queue(&self) -> String {
        format!("{}:whatsapp:inbound", self.prefix)
    }

    /// Sliding one-minute window of upstream AI calls of one provider.
    pub fn ai_calls(&self, provider: &str) -> String {
        format!("{}:ai:quota:{provider}:calls", self.prefix)
    }

    /// Concurrency semaphore of one AI provider.
    pub fn ai_slots(&self, provider: &str) -> String {
        format!("{}:ai:quota:{provider}:slots", self.prefix)
    }
}

/// A pool plus the key layout and metrics; cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    pub pool: Pool,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    /// For dedicated (pub/sub, publisher) connections; absent when the
    /// backend was made from a bare pool. Boxed in an `Arc`: the client is
    /// large and the backend is cloned into every user.
    client: Option<Arc<::redis::Client>>,
}

impl RedisBackend {
    pub fn new(url: &str, prefix: &str, metrics: Arc<Metrics>) -> Result<Self, RedisError> {
        let config_error = |e: String| RedisError::new("connect", RedisErrorKind::Config(e));
        let client = ::redis::Client::open(url).map_err(|e| config_error(e.to_string()))?;
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(32);
        pool_cfg.timeouts.wait = Some(COMMAND_TIMEOUT);
        pool_cfg.timeouts.create = Some(COMMAND_TIMEOUT);
        pool_cfg.timeouts.recycle = Some(COMMAND_TIMEOUT);
        cfg.pool = Some(pool_cfg);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| config_error(e.to_string()))?;
        Ok(RedisBackend {
            pool,
            keys: Keys::new(prefix),
            metrics,
            client: Some(Arc::new(client)),
        })
    }

    /// A backend over an existing pool (pooled commands only).
    pub fn from_pool(pool: Pool, prefix: &str, metrics: Arc<Metrics>) -> Self {
        RedisBackend {
            pool,
            keys: Keys::new(prefix),
            metrics,
            client: None,
        }
    }

    /// The client for connections outside the pool (pub/sub subscriptions,
    /// the broker's publisher).
    pub fn client(&self) -> Result<&::redis::Client, RedisError> {
        self.client.as_deref().ok_or_else(|| {
            RedisError::new(
                "connect",
                RedisErrorKind::Config("backend built from a pool has no dedicated client".into()),
            )
        })
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &::redis::Cmd,
    ) -> Result<T, RedisError> {
        self.pooled(op, async |conn| cmd.query_async(conn).await)
            .await
    }

    /// Runs a pipeline (atomic when built with `.atomic()`).
    pub async fn pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &::redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.pooled(op, async |conn| pipe.query_async(conn).await)
            .await
    }

    /// Runs a Lua script (EVALSHA, loading it on first use).
    pub async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.pooled(op, async |conn| invocation.invoke_async(conn).await)
            .await
    }

    /// Runs `work` on a pooled connection, the whole under [`Self::timed`].
    async fn pooled<T>(
        &self,
        op: &'static str,
        work: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> ::redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        self.timed(op, async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| RedisError::new(op, RedisErrorKind::Pool(e.to_string())))?;
            work(&mut conn)
                .await
                .map_err(|e| RedisError::from_client(op, &e))
        })
        .await
    }

    /// Runs one Redis operation under the shared timeout, recording its
    /// latency under `op` and counting its failure. Every Redis call of the
    /// hub goes through here (the broker's publisher too, on its own
    /// connection).
    pub async fn timed<T>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        let started = Instant::now();
        let result = tokio::time::timeout(COMMAND_TIMEOUT, work).await;
        self.metrics
            .redis_command_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        // The error series of every op that ran exists, at 0 until the
        // first failure, so dashboards show "0 errors" rather than no data.
        let errors = self.metrics.redis_errors.with_label_values(&[op]);
        let error = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => RedisError::new(
                op,
                RedisErrorKind::Timeout(COMMAND_TIMEOUT.as_millis() as u64),
            ),
        };
        errors.inc();
        tracing::debug!(op, %error, "redis command failed");
        Err(error)
    }
}
