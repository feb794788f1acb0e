//! Redis plumbing shared by the cluster's store, broker and membership: the
//! connection pool, the key layout, and timed, counted command execution.
//!
//! Every command is bounded by a timeout, so a hung Redis turns into
//! `store_unavailable` instead of a stuck client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{FromRedisValue, RedisResult};
use deadpool_redis::{Pool, Runtime};

use crate::metrics::Metrics;
use crate::protocol::HubError;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

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
}

/// A pool plus the key layout and metrics; cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    pub pool: Pool,
    pub client: ::redis::Client,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
}

impl RedisBackend {
    pub fn new(url: &str, prefix: &str, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = ::redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(32);
        pool_cfg.timeouts.wait = Some(COMMAND_TIMEOUT);
        pool_cfg.timeouts.create = Some(COMMAND_TIMEOUT);
        pool_cfg.timeouts.recycle = Some(COMMAND_TIMEOUT);
        cfg.pool = Some(pool_cfg);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| e.to_string())?;
        Ok(RedisBackend {
            pool,
            client,
            keys: Keys::new(prefix),
            metrics,
        })
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &::redis::Cmd,
    ) -> Result<T, HubError> {
        self.timed(op, async {
            let mut conn = self.conn().await?;
            cmd.query_async(&mut conn).await
        })
        .await
    }

    /// Runs a pipeline (atomic when built with `.atomic()`).
    pub async fn pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &::redis::Pipeline,
    ) -> Result<T, HubError> {
        self.timed(op, async {
            let mut conn = self.conn().await?;
            pipe.query_async(&mut conn).await
        })
        .await
    }

    /// Runs a Lua script (EVALSHA, loading it on first use).
    pub async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, HubError> {
        self.timed(op, async {
            let mut conn = self.conn().await?;
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    async fn conn(&self) -> RedisResult<deadpool_redis::Connection> {
        pooled(&self.pool).await
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, HubError> {
        observe(&self.metrics, op, fut)
            .await
            .map_err(HubError::store_unavailable)
    }
}

/// A connection from the pool, with pool failures as Redis I/O errors.
pub async fn pooled(pool: &Pool) -> RedisResult<deadpool_redis::Connection> {
    pool.get().await.map_err(|e| {
        ::redis::RedisError::from((::redis::ErrorKind::Io, "connection pool", e.to_string()))
    })
}

/// Runs one Redis operation under the shared timeout, recording its
/// latency and counting its failure; the error is the failure's text.
pub async fn observe<T>(
    metrics: &Metrics,
    op: &'static str,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, String> {
    let started = Instant::now();
    let result = tokio::time::timeout(COMMAND_TIMEOUT, fut).await;
    metrics
        .redis_command_duration
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    let failure = match result {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} ms", COMMAND_TIMEOUT.as_millis()),
    };
    metrics.redis_errors.with_label_values(&[op]).inc();
    tracing::debug!(op, error = %failure, "redis command failed");
    Err(failure)
}
