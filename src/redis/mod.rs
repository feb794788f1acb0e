//! The low-level Redis layer under the cluster's store, broker, membership
//! and AI coordination: the connections of the configured topology (one
//! server, the master Redis Sentinel names, or a Redis Cluster whose
//! connections route each command to the node owning its slot), the key
//! layout with its hash tags ([`Keys`]) and one timed, counted path every
//! command, pipeline and Lua script runs through, whatever the topology.
//! Scripts themselves live with the layer that owns their keys
//! (`store::redis`, `ai::cluster`); the instances' heartbeats, which
//! membership writes on a connection of their own ([`OwnConnection`]) and
//! the store reads, are here (`heartbeats`).
//!
//! Every command is bounded by a timeout, so a hung Redis turns into a
//! [`RedisError`] (and from there `store_unavailable` / `ai_unavailable`)
//! instead of a stuck client. Which server answers (one URL, the master
//! Redis Sentinel names, or the Redis Cluster node owning a key's slot) is
//! [`topology`]'s business.

mod error;
mod heartbeats;
mod own_connection;
mod topology;

pub use error::{RedisError, RedisErrorKind};
pub use heartbeats::Beat;
pub use own_connection::OwnConnection;
pub use topology::{DedicatedConnection, MasterChanges, MasterEvent, PooledConnection, RedisPool};

/// A value stored in Redis as JSON, read back; what does not parse is
/// reported as the store's trouble (`store_unavailable`), naming `what`.
pub fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    raw: &str,
) -> Result<T, crate::protocol::HubError> {
    serde_json::from_str(raw).map_err(|e| {
        crate::protocol::HubError::store_unavailable(format!("corrupt {what} in Redis: {e}"))
    })
}

/// A value as the JSON Redis stores.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<String, crate::protocol::HubError> {
    serde_json::to_string(value).map_err(crate::protocol::HubError::internal)
}

/// A time to live in milliseconds for Redis, never 0 (which would not
/// expire, or be refused).
pub fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::FromRedisValue;

use crate::config::RedisTopology;
use crate::metrics::Metrics;
use topology::Connector;

/// Bound of every Redis operation (and of getting a pooled connection).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis key and channel names. docs/redis.md documents this layout.
///
/// Every name part that comes from a client or an operator (session,
/// contact, client or instance id) goes through [`escape_key_part`], so a
/// part can never contain the `:` that separates parts: no two different
/// (session, contact) pairs share a key, and no session name reaches
/// another session's keys.
///
/// **Hash tags** (Redis Cluster): the keys used together in one script,
/// `MULTI` or pipeline share a `{tag}`, so they live in one slot. Every key
/// of a session carries `{s:<session>}` (its log, channel, presence,
/// agent, history, stats...); the membership keys `{cluster}`; the admin
/// session index `{sessions}` and monitor channel `{monitor}`; an instance's
/// member set and inbox `{i:<instance>}`; an AI request's lock and answer
/// `{ai:<hash>}`; a provider's quota windows `{q:<provider>}`; an
/// idempotency key's lock and result `{idem:<key>}`; the approval expiry
/// index `{approvals}`. Keys always used
/// alone carry no tag. On a single Redis the tags are just characters.
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
    /// `prefix` must not contain `{` or `}` (config checks it): the first
    /// braces of a key are its hash tag.
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P:{s:<session>}:<what>`: one slot for everything of a session.
    fn session_key(&self, session: &str, what: &str) -> String {
        format!("{}:{{s:{}}}:{what}", self.prefix, escape_key_part(session))
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
        self.session_key(session, "log")
    }

    /// String: the epoch of the session's log (random, made by the hub).
    pub fn session_log_epoch(&self, session: &str) -> String {
        self.session_key(session, "log:epoch")
    }

    /// String counter: the offset of the session's latest event.
    pub fn session_log_offset(&self, session: &str) -> String {
        self.session_key(session, "log:offset")
    }

    /// HASH: publisher id → sequence number of its latest logged event, so a
    /// retried publish pipeline logs nothing twice.
    pub fn session_log_seen(&self, session: &str) -> String {
        self.session_key(session, "log:seen")
    }

    /// Pub/sub channel carrying one session's events (its log entries); in
    /// its slot, so the append script may publish to it (sharded pub/sub on
    /// a Redis Cluster).
    pub fn session_channel(&self, session: &str) -> String {
        self.session_key(session, "events")
    }

    /// The latest delivery status of one sent message (JSON, expiring).
    pub fn message_status(&self, session: &str, message_id: &str) -> String {
        format!(
            "{}:{}",
            self.session_key(session, "status"),
            escape_key_part(message_id)
        )
    }

    /// String counter: a session's last approval number.
    pub fn approval_seq(&self, session: &str) -> String {
        self.session_key(session, "approvals:seq")
    }

    /// ZSET: a session's undecided held sends, number → expiry (ms).
    pub fn approvals_pending(&self, session: &str) -> String {
        self.session_key(session, "approvals")
    }

    /// HASH: one held send: `held` (JSON), `expires_at`, then `resolution`
    /// and `outcome` (JSON) once decided and carried out.
    pub fn approval(&self, session: &str, id: u64) -> String {
        format!("{}:{id}", self.session_key(session, "approval"))
    }

    /// ZSET: `[session, number]` (JSON) → expiry (ms) of every undecided
    /// held send, which the expiry sweep reads. Its own slot
    /// (`{approvals}`): written apart from the session's keys.
    pub fn approvals_due(&self) -> String {
        format!("{}:{{approvals}}:due", self.prefix)
    }

    /// ZSET (all scores 0, so ordered by name): every session that ever
    /// existed, the index the admin API pages through with `ZRANGEBYLEX`.
    /// Its own slot (`{sessions}`): written apart from any session's keys.
    pub fn sessions(&self) -> String {
        format!("{}:{{sessions}}", self.prefix)
    }

    /// HASH: a session's activity for the admin API: `last_activity`
    /// (ms since epoch), `messages_in`, `messages_out`.
    pub fn session_stats(&self, session: &str) -> String {
        self.session_key(session, "stats")
    }

    /// SET: the (lower-cased) contacts the session has a history with, so
    /// idle expiry can name every history key.
    pub fn session_histories(&self, session: &str) -> String {
        self.session_key(session, "histories")
    }

    /// ZSET: session → its last indexed activity (ms), which the idle
    /// sweep reads oldest first. Beside [`Self::sessions`] (same slot), so
    /// both are updated and cleaned up together.
    pub fn sessions_activity(&self) -> String {
        format!("{}:{{sessions}}:activity", self.prefix)
    }

    /// Pub/sub channel of the cluster-wide admin monitoring feed; a shard
    /// channel of its own slot (`{monitor}`) on a Redis Cluster.
    pub fn monitor_channel(&self) -> String {
        format!("{}:{{monitor}}", self.prefix)
    }

    /// ZSET: instance id → last heartbeat (ms since epoch).
    pub fn instances(&self) -> String {
        format!("{}:{{cluster}}:instances", self.prefix)
    }

    /// JSON description of a live instance, expiring with its heartbeat;
    /// beside [`Self::instances`], so a heartbeat is one pipeline and the
    /// listing one `MGET`.
    pub fn instance_info(&self, instance: &str) -> String {
        format!(
            "{}:{{cluster}}:instance:{}:info",
            self.prefix,
            escape_key_part(instance)
        )
    }

    fn instance_key(&self, instance: &str, what: &str) -> String {
        format!("{}:{{i:{}}}:{what}", self.prefix, escape_key_part(instance))
    }

    /// SET of "session\tclient_id" of an instance's clients, for reaping.
    pub fn instance_members(&self, instance: &str) -> String {
        self.instance_key(instance, "members")
    }

    /// Pub/sub channel of one instance's point-to-point messages.
    pub fn inbox_channel(&self, instance: &str) -> String {
        self.instance_key(instance, "inbox")
    }

    /// AI single-flight lock of one request hash (string: holder token).
    pub fn ai_lock(&self, hash: &str) -> String {
        format!("{}:{{ai:{}}}:lock", self.prefix, escape_key_part(hash))
    }

    /// The shared (and, with a cache TTL, cached) AI answer of one hash.
    pub fn ai_result(&self, hash: &str) -> String {
        format!("{}:{{ai:{}}}:result", self.prefix, escape_key_part(hash))
    }

    /// `P:{idem:<caller>}:<what>`: one slot for everything of one caller's
    /// idempotency keys, so its cap is kept by one script.
    fn idempotency_key_of(&self, caller: &str, what: &str) -> String {
        format!(
            "{}:{{idem:{}}}:{what}",
            self.prefix,
            escape_key_part(caller)
        )
    }

    /// Lock of one of a caller's idempotency keys while its first request
    /// runs (string: fingerprint and holder token).
    pub fn idempotency_lock(&self, caller: &str, key: &str) -> String {
        self.idempotency_key_of(caller, &format!("lock:{}", escape_key_part(key)))
    }

    /// HASH of a caller's stored results: key → fingerprint and result.
    pub fn idempotency_results(&self, caller: &str) -> String {
        self.idempotency_key_of(caller, "results")
    }

    /// ZSET of a caller's stored results: key → when it expires (ms);
    /// the lowest scores are the oldest, forgotten first past the cap.
    pub fn idempotency_index(&self, caller: &str) -> String {
        self.idempotency_key_of(caller, "keys")
    }

    /// Marker of a webhook item already accepted (SET NX, expiring).
    pub fn webhook_seen(&self, key: &str) -> String {
        format!("{}:whatsapp:seen:{}", self.prefix, escape_key_part(key))
    }

    /// LIST of accepted webhook events not yet claimed (LPUSH, RPOP).
    /// Beside its claims (`{webhooks}`), so a claim is one script.
    pub fn webhook_queue(&self) -> String {
        format!("{}:{{webhooks}}:inbound", self.prefix)
    }

    /// HASH: claim id → a claimed webhook event, until acknowledged.
    pub fn webhook_claims(&self) -> String {
        format!("{}:{{webhooks}}:claims", self.prefix)
    }

    /// ZSET: claim id → when its lease lapses (ms).
    pub fn webhook_leases(&self) -> String {
        format!("{}:{{webhooks}}:leases", self.prefix)
    }

    /// Sliding one-minute window of upstream AI calls of one provider.
    pub fn ai_calls(&self, provider: &str) -> String {
        format!("{}:{{q:{}}}:calls", self.prefix, escape_key_part(provider))
    }

    /// Concurrency semaphore of one AI provider.
    pub fn ai_slots(&self, provider: &str) -> String {
        format!("{}:{{q:{}}}:slots", self.prefix, escape_key_part(provider))
    }
}

/// The pool of the configured topology plus the key layout and metrics;
/// cheap to clone. The store, broker, membership and AI code use it alike
/// whatever the topology.
#[derive(Clone)]
pub struct RedisBackend {
    pub pool: RedisPool,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    /// For dedicated (pub/sub, publisher) connections; absent when the
    /// backend was made from a bare pool.
    connector: Option<Arc<Connector>>,
}

impl RedisBackend {
    /// A backend on any topology (nothing connects until the first use: a
    /// Redis that is down at startup is retried later).
    pub fn new(
        topology: &RedisTopology,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisError> {
        let (pool, connector) = topology::connect(topology)?;
        Ok(RedisBackend {
            pool,
            keys: Keys::new(prefix),
            metrics,
            connector: Some(Arc::new(connector)),
        })
    }

    /// A backend over an existing pool (pooled commands only).
    pub fn from_pool(pool: impl Into<RedisPool>, prefix: &str, metrics: Arc<Metrics>) -> Self {
        RedisBackend {
            pool: pool.into(),
            keys: Keys::new(prefix),
            metrics,
            connector: None,
        }
    }

    fn connector(&self) -> ::redis::RedisResult<&Connector> {
        self.connector.as_deref().ok_or_else(|| {
            ::redis::RedisError::from((
                ::redis::ErrorKind::Client,
                "backend built from a pool has no dedicated client",
            ))
        })
    }

    /// True on a Redis Cluster: pub/sub is sharded there (`SPUBLISH`,
    /// `SSUBSCRIBE`), and a pipeline must stay within one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.pool, RedisPool::Cluster(_))
    }

    /// A connection of its own, outside the pool (the broker's publisher),
    /// to the current master: with Sentinel, each call asks the Sentinels,
    /// so a reconnection follows a failover.
    pub async fn dedicated(&self) -> ::redis::RedisResult<DedicatedConnection> {
        self.connector()?.dedicated().await
    }

    /// A RESP2 pub/sub connection to the single server or the current
    /// master (not on a Redis Cluster: see [`Self::sharded_pubsub`]).
    pub async fn pubsub(&self) -> ::redis::RedisResult<::redis::aio::PubSub> {
        self.connector()?.pubsub().await
    }

    /// A cluster connection whose pushes (sharded messages, subscription
    /// confirmations, disconnections) go to `pushes` (RESP3). It follows
    /// slot moves and failovers itself, resubscribing what it subscribed.
    pub async fn sharded_pubsub(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>,
    ) -> ::redis::RedisResult<::redis::cluster_async::ClusterConnection> {
        self.connector()?.sharded_pubsub(pushes).await
    }

    /// Redis Sentinel's failover announcements (none for a single server
    /// or a Redis Cluster, which fails over by itself): owners of dedicated
    /// connections hold writes while a replica is being promoted and
    /// reconnect when the new master is named, instead of writing on to
    /// the old master.
    pub fn master_changes(&self) -> MasterChanges {
        match self.connector.as_deref() {
            Some(connector) => connector.master_changes(),
            None => MasterChanges::never(),
        }
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
    /// A connection that meets `READONLY` (a demoted master) is dropped
    /// with the pool's idle ones, so the next command finds the new master.
    async fn pooled<T>(
        &self,
        op: &'static str,
        work: impl AsyncFnOnce(&mut PooledConnection) -> ::redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        self.timed(op, async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| RedisError::new(op, RedisErrorKind::Pool(e)))?;
            let result = work(&mut conn)
                .await
                .map_err(|e| RedisError::from_client(op, &e));
            if let Err(e) = &result
                && e.master_moved()
            {
                tracing::warn!(
                    op,
                    "redis answered READONLY: the master moved; reconnecting"
                );
                self.pool.master_moved(conn);
            }
            result
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
        assert_eq!(k.contacts("default"), "mcp-hub:{s:default}:contacts");
        assert_eq!(
            k.history("default", "John"),
            "mcp-hub:{s:default}:history:john"
        );
        assert_eq!(k.inbox_channel("hub-1"), "mcp-hub:{i:hub-1}:inbox");
        assert_eq!(escape_key_part("Zoë's phone"), "Zoë's%20phone");
    }

    #[test]
    fn adversarial_names_cannot_collide_or_reach_other_sessions() {
        let k = Keys::new("p");
        // A session name that spells another session's key.
        assert_ne!(k.history("a:history:b", "c"), k.history("a", "b:history:c"));
        assert_ne!(k.contacts("a:contacts"), k.history("a", "contacts"));
        assert_eq!(k.contacts("a:presence"), "p:{s:a%3Apresence}:contacts");
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

    /// Redis Cluster's hash tag of a key: the text between the first `{`
    /// and the next `}` (the whole key when there is none or it is empty).
    fn hash_tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|&n| n > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn keys_used_together_share_a_slot() {
        let k = Keys::new("p");
        for session in ["default", "a:b", "{x}", "a}b{c", "ä ö"] {
            let tag = hash_tag(&k.contacts(session)).to_string();
            assert!(tag.starts_with("s:"), "{tag}");
            for key in [
                k.last_contact(session),
                k.history(session, "{John}"),
                k.presence(session),
                k.agent(session),
                k.session_log(session),
                k.session_log_epoch(session),
                k.session_log_offset(session),
                k.session_log_seen(session),
                k.session_channel(session),
                k.message_status(session, "wamid.{1}"),
                k.session_stats(session),
                k.session_histories(session),
            ] {
                assert_eq!(hash_tag(&key), tag, "{key}");
            }
        }
        assert_ne!(
            hash_tag(&k.contacts("a")),
            hash_tag(&k.contacts("b")),
            "sessions spread over slots"
        );
        let pairs = [
            (k.instances(), k.instance_info("hub-1")),
            (k.instance_members("hub-1"), k.inbox_channel("hub-1")),
            (k.ai_lock("h"), k.ai_result("h")),
            (k.ai_calls("gemini"), k.ai_slots("gemini")),
            (k.idempotency_lock("x", "k"), k.idempotency_results("x")),
            (k.idempotency_lock("x", "k2"), k.idempotency_index("x")),
            (k.sessions(), k.sessions_activity()),
        ];
        for (a, b) in pairs {
            assert_eq!(hash_tag(&a), hash_tag(&b), "{a} / {b}");
        }
    }
}
