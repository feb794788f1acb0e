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
///
/// Every name part that comes from a client or an operator (session,
/// contact, client or instance id) goes through [`escape_key_part`], so a
/// part can never contain the `:` that separates parts: no two different
/// (session, contact) pairs share a key, and no session name reaches
/// another session's keys.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Percent-escapes one key part: `%`, `:`, `{`, `}` (Redis Cluster hash
/// tags), the glob characters `*?[]\` (so `SCAN MATCH` patterns built
/// from parts stay literal), whitespace and control characters, as `%XX`
/// per UTF-8 byte. Everything else stays readable. Injective: different
/// parts give different escapes.
pub fn escape_key_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        if matches!(c, '%' | ':' | '{' | '}' | '*' | '?' | '[' | ']' | '\\')
            || c.is_whitespace()
            || c.is_control()
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
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

    fn session_key(&self, session: &str, what: &str) -> String {
        format!(
            "{}:session:{}:{what}",
            self.prefix,
            escape_key_part(session)
        )
    }

    pub fn contacts(&self, session: &str) -> String {
        self.session_key(session, "contacts")
    }

    pub fn last_contact(&self, session: &str) -> String {
        self.session_key(session, "last_contact")
    }

    /// One conversation; contact names are case-insensitive.
    pub fn history(&self, session: &str, contact: &str) -> String {
        format!(
            "{}:{}",
            self.session_key(session, "history"),
            escape_key_part(&contact.to_lowercase())
        )
    }

    pub fn presence(&self, session: &str) -> String {
        self.session_key(session, "presence")
    }

    pub fn agent(&self, session: &str) -> String {
        self.session_key(session, "agent")
    }

    /// STREAM: the session's event log, entry id `{offset}-0`, one field
    /// `e` holding the event as published (header line, `\n`, frame).
    pub fn session_log(&self, session: &str) -> String {
        format!("{}:session:{session}:log", self.prefix)
    }

    /// String: the epoch of the session's log (random, made by the hub).
    pub fn session_log_epoch(&self, session: &str) -> String {
        format!("{}:session:{session}:log:epoch", self.prefix)
    }

    /// String counter: the offset of the session's latest event.
    pub fn session_log_offset(&self, session: &str) -> String {
        format!("{}:session:{session}:log:offset", self.prefix)
    }

    /// HASH: publisher id → sequence number of its latest logged event, so a
    /// retried publish pipeline logs nothing twice.
    pub fn session_log_seen(&self, session: &str) -> String {
        format!("{}:session:{session}:log:seen", self.prefix)
    }

    /// ZSET: instance id → last heartbeat (ms since epoch).
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    fn instance_key(&self, instance: &str, what: &str) -> String {
        format!(
            "{}:instance:{}:{what}",
            self.prefix,
            escape_key_part(instance)
        )
    }

    /// JSON description of a live instance, expiring with its heartbeat.
    pub fn instance_info(&self, instance: &str) -> String {
        self.instance_key(instance, "info")
    }

    /// SET of "session\tclient_id" of an instance's clients, for reaping.
    pub fn instance_members(&self, instance: &str) -> String {
        self.instance_key(instance, "members")
    }

    /// Pub/sub channel carrying one session's events (its log entries).
    pub fn session_channel(&self, session: &str) -> String {
        self.session_key(session, "events")
    }

    /// Pub/sub channel of one instance's point-to-point messages.
    pub fn inbox_channel(&self, instance: &str) -> String {
        self.instance_key(instance, "inbox")
    }

    /// AI single-flight lock of one request hash (string: holder token).
    pub fn ai_lock(&self, hash: &str) -> String {
        format!("{}:ai:lock:{}", self.prefix, escape_key_part(hash))
    }

    /// The shared (and, with a cache TTL, cached) AI answer of one hash.
    pub fn ai_result(&self, hash: &str) -> String {
        format!("{}:ai:result:{}", self.prefix, escape_key_part(hash))
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
        format!(
            "{}:ai:quota:{}:calls",
            self.prefix,
            escape_key_part(provider)
        )
    }

    /// Concurrency semaphore of one AI provider.
    pub fn ai_slots(&self, provider: &str) -> String {
        format!(
            "{}:ai:quota:{}:slots",
            self.prefix,
            escape_key_part(provider)
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn plain_names_stay_readable() {
        let k = Keys::new("mcp-hub");
        assert_eq!(k.contacts("default"), "mcp-hub:session:default:contacts");
        assert_eq!(
            k.history("default", "John"),
            "mcp-hub:session:default:history:john"
        );
        assert_eq!(k.inbox_channel("hub-1"), "mcp-hub:instance:hub-1:inbox");
        assert_eq!(escape_key_part("Zoë's phone"), "Zoë's%20phone");
    }

    #[test]
    fn adversarial_names_cannot_collide_or_reach_other_sessions() {
        let k = Keys::new("p");
        // A session name that spells another session's key.
        assert_ne!(k.history("a:history:b", "c"), k.history("a", "b:history:c"));
        assert_ne!(k.contacts("a:contacts"), k.history("a", "contacts"));
        assert_eq!(k.contacts("a:presence"), "p:session:a%3Apresence:contacts");
        assert_ne!(k.presence("x"), k.contacts("x:presence:y"));
        // The escape character itself is escaped: `%3A` and `:` differ.
        assert_ne!(k.agent("a%3Ab"), k.agent("a:b"));
        assert_eq!(escape_key_part("a%3Ab"), "a%253Ab");
        assert_eq!(
            escape_key_part("{tag}*?[x]\\ \t"),
            "%7Btag%7D%2A%3F%5Bx%5D%5C%20%09"
        );

        // Every (session, contact) pair of tricky parts gets its own key,
        // and no session key equals another session's.
        let parts = [
            "a",
            "b",
            "a:b",
            "a:history",
            "history:b",
            "a:history:b",
            ":",
            "::",
            "%",
            "%3A",
            "a%3Ab",
            "",
            " ",
            "{a}",
            "a b",
            "a\tb",
            "*",
            "ä:ö",
        ];
        let mut seen = HashSet::new();
        for s in parts {
            for key in [k.contacts(s), k.last_contact(s), k.presence(s), k.agent(s)] {
                assert!(seen.insert(key.clone()), "duplicate key {key}");
            }
            for c in parts {
                let key = k.history(s, c);
                assert!(seen.insert(key.clone()), "duplicate key {key}");
            }
        }
        // Contact names are case-insensitive, by design.
        assert_eq!(k.history("s", "JOHN"), k.history("s", "john"));
    }
}
