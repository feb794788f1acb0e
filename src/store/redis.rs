//! Session state in Redis, shared by every instance of a cluster, and the
//! reaping of what dead instances left in it. Owns the store's Lua scripts.
//! Key layout: [`crate::redis::Keys`] and docs/redis.md.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use ::redis::Script;
use async_trait::async_trait;

use std::time::Duration;

use super::{
    AgentRef, IdempotencyBegin, PartialReap, Presence, PresenceChange, Reaped, SessionListing,
    SessionPage, SessionStore, StoreResult,
};
use crate::protocol::{
    ClientInfo, Contact, DeliveryStatus, HistoryEntry, HubError, MessageDirection, StatusError,
    now_millis,
};
use crate::redis::{RedisBackend, RedisError};

/// Deletes the agent key only if its field ARGV[1] (`client_id` or
/// `instance`) still equals ARGV[2]: a newer agent is never released.
static RELEASE_AGENT_IF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local v = redis.call('GET', KEYS[1])
        if not v then return 0 end
        local ok, agent = pcall(cjson.decode, v)
        if ok and agent[ARGV[1]] == ARGV[2] then
            redis.call('DEL', KEYS[1])
            return 1
        end
        return 0
        ",
    )
});

/// Lua: `bump_presence(stats)` increases the session's presence version
/// (field `presence_version` of its stats hash, [`super::PresenceChange`])
/// and returns it: the larger of the previous version + 1 and the server's
/// clock in microseconds (a hybrid clock). A version Redis lost — flushed,
/// or rolled back by a failover that promoted a replica behind its master
/// — so never goes back below one a client was given before (the new
/// master's clock is past the lost writes').
const BUMP_PRESENCE: &str = r"
local function bump_presence(stats)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(redis.call('HGET', stats, 'presence_version') or '0') or 0
  local new = math.max(old + 1, now)
  redis.call('HSET', stats, 'presence_version', string.format('%d', new))
  return new
end
";

/// Adds or replaces a presence entry and bumps the presence version, at
/// once. KEYS: presence, session stats. ARGV: client id, entry, now (ms).
/// Returns `{created, version}`.
static JOIN_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{BUMP_PRESENCE}
        local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('HSET', KEYS[2], 'last_activity', ARGV[3])
        return {{created, bump_presence(KEYS[2])}}
        "
    ))
});

/// Removes a presence entry and returns it with the presence version it
/// bumped (`{entry, version}`), so exactly one caller (the leaving
/// client's instance, or one reaper) announces the departure. The entry is
/// only taken if it belongs to instance ARGV[2]: the same client id may
/// meanwhile have registered again on another instance. KEYS: presence,
/// session stats. Touches the session's slot only: the instance's member
/// set is another slot (Redis Cluster), updated by the caller.
static TAKE_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{BUMP_PRESENCE}
        local v = redis.call('HGET', KEYS[1], ARGV[1])
        if not v then return nil end
        local ok, client = pcall(cjson.decode, v)
        if ok and client.instance ~= ARGV[2] then return nil end
        redis.call('HDEL', KEYS[1], ARGV[1])
        return {{v, bump_presence(KEYS[2])}}
        "
    ))
});

/// The presence entries and the version they are as of, read at once:
/// `{version, entry...}`. KEYS: presence, session stats.
static READ_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local out = {redis.call('HGET', KEYS[2], 'presence_version') or '0'}
        for _, v in ipairs(redis.call('HVALS', KEYS[1])) do out[#out + 1] = v end
        return out
        ",
    )
});

/// Writes a message status unless it moves backwards (`read` before
/// `delivered` is kept; `failed` is final). ARGV: status, JSON, ttl ms.
static SET_STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local rank = {sent = 1, delivered = 2, read = 3, failed = 4}
        local cur = redis.call('GET', KEYS[1])
        if cur then
            local ok, v = pcall(cjson.decode, cur)
            if ok and type(v) == 'table' and v.status then
                if v.status == 'failed' then return 0 end
                if (rank[ARGV[1]] or 0) <= (rank[v.status] or 0) then return 0 end
            end
        end
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        return 1
        ",
    )
});

/// Takes an idempotency key: the stored result if there is one, else the
/// lock if free. One script, so a result stored between the two checks
/// cannot be missed (which would send twice).
static IDEMPOTENCY_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local r = redis.call('GET', KEYS[2])
        if r then return {'done', r} end
        if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
            return {'acquired', ''}
        end
        return {'busy', ''}
        ",
    )
});

/// Stores the result, then frees the lock if this token still holds it.
static IDEMPOTENCY_FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 1
        ",
    )
});

static IDEMPOTENCY_ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 1
        ",
    )
});

/// A status as stored under `message_status`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredStatus {
    status: DeliveryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<StatusError>,
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// How long an instance trusts that a session it put in the index is still
/// there (Redis may have lost it since); its next write then puts it again.
const INDEX_REFRESH_MS: u64 = 60_000;
/// Bound of [`RedisStore::indexed`]: reaching it forgets everything (the
/// next writes just index their sessions again).
const INDEXED_MAX: usize = 100_000;

pub struct RedisStore {
    backend: RedisBackend,
    instance: String,
    history_limit: usize,
    presence_ttl_ms: u64,
    /// Sessions this instance put in the index, and when (ms since epoch).
    indexed: Mutex<HashMap<String, u64>>,
}

impl RedisStore {
    pub fn new(
        backend: RedisBackend,
        instance: String,
        history_limit: usize,
        presence_ttl_ms: u64,
    ) -> Self {
        RedisStore {
            backend,
            instance,
            history_limit,
            presence_ttl_ms,
            indexed: Mutex::default(),
        }
    }
}

impl RedisStore {
    /// Runs a write pipeline of `session`'s slot, adding to it the
    /// session's last activity (its stats hash shares the slot). On this
    /// instance's first write of a session (and again after
    /// [`INDEX_REFRESH_MS`]) the session also goes into the index the admin
    /// API pages through: another slot (`{sessions}`) on a Redis Cluster, so
    /// its own `ZADD`, sent at the same time as the pipeline.
    async fn write<T: ::redis::FromRedisValue>(
        &self,
        op: &'static str,
        session: &str,
        mut pipe: ::redis::Pipeline,
    ) -> Result<T, RedisError> {
        let keys = &self.backend.keys;
        pipe.hset(keys.session_stats(session), "last_activity", now_millis())
            .ignore();
        self.indexing(session, self.backend.pipe(op, &pipe)).await
    }

    /// [`Self::write`] for a script of the session's slot (which sets the
    /// last activity itself).
    async fn write_script<T: ::redis::FromRedisValue>(
        &self,
        op: &'static str,
        session: &str,
        invocation: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.indexing(session, self.backend.script(op, invocation))
            .await
    }

    /// Runs `write`, with the session's `ZADD` to the index at the same
    /// time when this instance's (re-)indexing of it is due.
    async fn indexing<T>(
        &self,
        session: &str,
        write: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        let keys = &self.backend.keys;
        let now = now_millis();
        let due = {
            let indexed = self.indexed.lock().unwrap_or_else(|p| p.into_inner());
            indexed
                .get(session)
                .is_none_or(|&at| now.saturating_sub(at) >= INDEX_REFRESH_MS)
        };
        if !due {
            return write.await;
        }
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(keys.sessions()).arg(0).arg(session);
        let (written, _): (T, i64) =
            tokio::try_join!(write, self.backend.query("index_session", &zadd))?;
        let mut indexed = self.indexed.lock().unwrap_or_else(|p| p.into_inner());
        if indexed.len() >= INDEXED_MAX {
            indexed.clear();
        }
        indexed.insert(session.to_string(), now);
        Ok(written)
    }
}

fn member_tag(session: &str, client_id: &str) -> String {
    format!("{session}\t{client_id}")
}

impl RedisStore {
    /// Reaps `instance`, pushing what it takes onto `reaped` as it goes (so
    /// a failure part-way still reports what is already gone).
    async fn reap_into(&self, instance: &str, reaped: &mut Vec<Reaped>) -> StoreResult<()> {
        let keys = &self.backend.keys;
        let tags: Vec<String> = self
            .backend
            .query(
                "reap_members",
                ::redis::cmd("SMEMBERS").arg(keys.instance_members(instance)),
            )
            .await?;
        for tag in &tags {
            let Some((session, client_id)) = tag.split_once('\t') else {
                continue;
            };
            // The member set goes as a whole once every tag is reaped.
            let mut take = TAKE_PRESENCE.prepare_invoke();
            take.key(keys.presence(session))
                .key(keys.session_stats(session))
                .arg(client_id)
                .arg(instance);
            let taken: Option<(String, u64)> = self.backend.script("reap_take", &take).await?;
            if let Some((client, version)) =
                taken.and_then(|(t, v)| serde_json::from_str::<ClientInfo>(&t).ok().map(|c| (c, v)))
            {
                reaped.push(Reaped::ClientLeft {
                    session: session.to_string(),
                    client,
                    version,
                });
            }
            let mut release = RELEASE_AGENT_IF.prepare_invoke();
            release
                .key(keys.agent(session))
                .arg("instance")
                .arg(instance);
            let released: i64 = self.backend.script("reap_agent", &release).await?;
            if released == 1 {
                reaped.push(Reaped::AgentReleased {
                    session: session.to_string(),
                });
            }
        }
        let _: () = self
            .backend
            .query(
                "reap_done",
                ::redis::cmd("DEL").arg(keys.instance_members(instance)),
            )
            .await?;
        tracing::info!(dead = %instance, clients = tags.len(), "reaped a dead instance's sessions");
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, raw: &str) -> Result<T, HubError> {
    serde_json::from_str(raw)
        .map_err(|e| HubError::store_unavailable(format!("corrupt {what} in Redis: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, HubError> {
    serde_json::to_string(value).map_err(HubError::internal)
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn exists(&self, session: &str) -> StoreResult<bool> {
        // Recording a message always sets last_contact, so the history
        // keys need no scan.
        let keys = &self.backend.keys;
        let mut cmd = ::redis::cmd("EXISTS");
        cmd.arg(keys.contacts(session))
            .arg(keys.last_contact(session))
            .arg(keys.presence(session))
            .arg(keys.agent(session));
        let found: i64 = self.backend.query("exists", &cmd).await?;
        Ok(found > 0)
    }

    async fn seed_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(self.backend.keys.contacts(session))
            .arg(encode(&contacts)?)
            .arg("NX")
            .ignore();
        let _: () = self.write("seed_contacts", session, pipe).await?;
        Ok(())
    }

    async fn contacts(&self, session: &str) -> StoreResult<Vec<Contact>> {
        let raw: Option<String> = self
            .backend
            .query(
                "contacts",
                ::redis::cmd("GET").arg(self.backend.keys.contacts(session)),
            )
            .await?;
        raw.map(|r| decode("contacts", &r))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    async fn set_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()> {
        let mut pipe = ::redis::pipe();
        pipe.set(self.backend.keys.contacts(session), encode(&contacts)?)
            .ignore();
        let _: () = self.write("set_contacts", session, pipe).await?;
        Ok(())
    }

    async fn last_contact(&self, session: &str) -> StoreResult<Option<String>> {
        Ok(self
            .backend
            .query(
                "last_contact",
                ::redis::cmd("GET").arg(self.backend.keys.last_contact(session)),
            )
            .await?)
    }

    async fn record_message(&self, session: &str, entry: &HistoryEntry) -> StoreResult<()> {
        let key = self.backend.keys.history(session, &entry.contact);
        let cap = self.history_limit as isize;
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .rpush(&key, encode(entry)?)
            .ignore()
            .ltrim(&key, -cap, -1)
            .ignore()
            .set(self.backend.keys.last_contact(session), &entry.contact)
            .ignore()
            .hincr(
                self.backend.keys.session_stats(session),
                match entry.direction {
                    MessageDirection::Incoming => "messages_in",
                    MessageDirection::Outgoing => "messages_out",
                },
                1,
            )
            .ignore();
        let _: () = self.write("record_message", session, pipe).await?;
        Ok(())
    }

    async fn history(
        &self,
        session: &str,
        contact: &str,
        limit: usize,
    ) -> StoreResult<Vec<HistoryEntry>> {
        let limit = limit.max(1) as isize;
        let raw: Vec<String> = self
            .backend
            .query(
                "history",
                ::redis::cmd("LRANGE")
                    .arg(self.backend.keys.history(session, contact))
                    .arg(-limit)
                    .arg(-1),
            )
            .await?;
        let mut entries: Vec<HistoryEntry> = raw
            .iter()
            .map(|r| decode("history entry", r))
            .collect::<Result<_, _>>()?;
        if entries.is_empty() {
            return Ok(entries);
        }
        let keys: Vec<String> = entries
            .iter()
            .map(|e| self.backend.keys.message_status(session, &e.message_id))
            .collect();
        let statuses: Vec<Option<String>> = self
            .backend
            .query("history_status", ::redis::cmd("MGET").arg(&keys))
            .await?;
        for (entry, status) in entries.iter_mut().zip(statuses) {
            if let Some(s) = status.and_then(|s| serde_json::from_str::<StoredStatus>(&s).ok()) {
                entry.status = Some(s.status);
                entry.status_error = s.error;
            }
        }
        Ok(entries)
    }

    async fn set_status(
        &self,
        session: &str,
        message_id: &str,
        status: DeliveryStatus,
        error: Option<&StatusError>,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let stored = StoredStatus {
            status,
            error: error.cloned(),
        };
        let mut invocation = SET_STATUS.prepare_invoke();
        invocation
            .key(self.backend.keys.message_status(session, message_id))
            .arg(status.as_str())
            .arg(encode(&stored)?)
            .arg(millis(ttl));
        let changed: i64 = self.backend.script("set_status", &invocation).await?;
        Ok(changed == 1)
    }

    async fn idempotency_begin(
        &self,
        key: &str,
        token: &str,
        lock_ttl: Duration,
    ) -> StoreResult<IdempotencyBegin> {
        let mut invocation = IDEMPOTENCY_BEGIN.prepare_invoke();
        invocation
            .key(self.backend.keys.idempotency_lock(key))
            .key(self.backend.keys.idempotency_result(key))
            .arg(token)
            .arg(millis(lock_ttl));
        let answer: Vec<String> = self
            .backend
            .script("idempotency_begin", &invocation)
            .await?;
        Ok(match answer.first().map(String::as_str) {
            Some("done") => IdempotencyBegin::Done(answer.get(1).cloned().unwrap_or_default()),
            Some("acquired") => IdempotencyBegin::Acquired,
            _ => IdempotencyBegin::Busy,
        })
    }

    async fn idempotency_finish(
        &self,
        key: &str,
        token: &str,
        result: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut invocation = IDEMPOTENCY_FINISH.prepare_invoke();
        invocation
            .key(self.backend.keys.idempotency_lock(key))
            .key(self.backend.keys.idempotency_result(key))
            .arg(token)
            .arg(result)
            .arg(millis(ttl));
        let _: i64 = self
            .backend
            .script("idempotency_finish", &invocation)
            .await?;
        Ok(())
    }

    async fn idempotency_abandon(&self, key: &str, token: &str) -> StoreResult<()> {
        let mut invocation = IDEMPOTENCY_ABANDON.prepare_invoke();
        invocation
            .key(self.backend.keys.idempotency_lock(key))
            .arg(token);
        let _: i64 = self
            .backend
            .script("idempotency_abandon", &invocation)
            .await?;
        Ok(())
    }

    async fn mark_seen(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.backend.keys.webhook_seen(key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let set: Option<String> = self.backend.query("webhook_seen", &cmd).await?;
        Ok(set.is_some())
    }

    async fn forget_seen(&self, key: &str) -> StoreResult<()> {
        let _: i64 = self
            .backend
            .query(
                "webhook_seen",
                ::redis::cmd("DEL").arg(self.backend.keys.webhook_seen(key)),
            )
            .await?;
        Ok(())
    }

    async fn push_webhook_event(&self, event: &str) -> StoreResult<()> {
        let _: i64 = self
            .backend
            .query(
                "webhook_push",
                ::redis::cmd("LPUSH")
                    .arg(self.backend.keys.webhook_queue())
                    .arg(event),
            )
            .await?;
        Ok(())
    }

    async fn pop_webhook_event(&self) -> StoreResult<Option<String>> {
        Ok(self
            .backend
            .query(
                "webhook_pop",
                ::redis::cmd("RPOP").arg(self.backend.keys.webhook_queue()),
            )
            .await?)
    }

    async fn join(&self, session: &str, client: &ClientInfo) -> StoreResult<PresenceChange> {
        // Two slots (the instance's member set, the session's presence), so
        // two commands, in this order: a member tag without presence is
        // harmless to a reaper, presence without a tag would never be reaped.
        let _: i64 = self
            .backend
            .query(
                "join_member",
                ::redis::cmd("SADD")
                    .arg(self.backend.keys.instance_members(&client.instance))
                    .arg(member_tag(session, &client.client_id)),
            )
            .await?;
        let mut invocation = JOIN_PRESENCE.prepare_invoke();
        invocation
            .key(self.backend.keys.presence(session))
            .key(self.backend.keys.session_stats(session))
            .arg(&client.client_id)
            .arg(encode(client)?)
            .arg(now_millis());
        // HSET answers how many fields it created: 1 = the entry was missing.
        let (created, version): (i64, u64) =
            self.write_script("join", session, &invocation).await?;
        Ok(PresenceChange {
            changed: created == 1,
            version,
        })
    }

    async fn leave(&self, session: &str, client_id: &str) -> StoreResult<PresenceChange> {
        let mut invocation = TAKE_PRESENCE.prepare_invoke();
        invocation
            .key(self.backend.keys.presence(session))
            .key(self.backend.keys.session_stats(session))
            .arg(client_id)
            .arg(&self.instance);
        let removed: Option<(String, u64)> = self.backend.script("leave", &invocation).await?;
        // After the take (another slot): a tag left behind by a failure here
        // only makes a reaper find nothing to take.
        let _: i64 = self
            .backend
            .query(
                "leave_member",
                ::redis::cmd("SREM")
                    .arg(self.backend.keys.instance_members(&self.instance))
                    .arg(member_tag(session, client_id)),
            )
            .await?;
        Ok(PresenceChange {
            changed: removed.is_some(),
            version: removed.map_or(0, |(_, v)| v),
        })
    }

    async fn presence(&self, session: &str) -> StoreResult<Presence> {
        let alive_since = now_millis().saturating_sub(self.presence_ttl_ms);
        // Two slots (the session's, the membership's): two commands at once.
        let mut presence = READ_PRESENCE.prepare_invoke();
        presence
            .key(self.backend.keys.presence(session))
            .key(self.backend.keys.session_stats(session));
        let mut live = ::redis::cmd("ZRANGEBYSCORE");
        live.arg(self.backend.keys.instances())
            .arg(alive_since)
            .arg("+inf");
        let (raw, alive): (Vec<String>, Vec<String>) = tokio::try_join!(
            self.backend.script("members", &presence),
            self.backend.query("members_alive", &live),
        )?;
        let (version, entries) = raw.split_first().map_or((0, &[][..]), |(v, rest)| {
            (v.parse::<u64>().unwrap_or(0), rest)
        });
        let mut members: Vec<ClientInfo> = entries
            .iter()
            .filter_map(|r| decode::<ClientInfo>("presence", r).ok())
            // Clients of dead instances linger until reaped; hide them now.
            .filter(|c| c.instance == self.instance || alive.contains(&c.instance))
            .collect();
        members.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(Presence { members, version })
    }

    async fn claim_agent(&self, session: &str, agent: &AgentRef) -> StoreResult<Option<AgentRef>> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(self.backend.keys.agent(session))
            .arg(encode(agent)?)
            .arg("GET");
        let (previous,): (Option<String>,) = self.write("claim_agent", session, pipe).await?;
        Ok(previous.and_then(|p| decode("agent", &p).ok()))
    }

    async fn claim_agent_if_vacant(&self, session: &str, agent: &AgentRef) -> StoreResult<bool> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(self.backend.keys.agent(session))
            .arg(encode(agent)?)
            .arg("NX");
        let (set,): (Option<String>,) = self.write("claim_agent", session, pipe).await?;
        Ok(set.is_some())
    }

    async fn release_agent(&self, session: &str, client_id: &str) -> StoreResult<bool> {
        let mut invocation = RELEASE_AGENT_IF.prepare_invoke();
        invocation
            .key(self.backend.keys.agent(session))
            .arg("client_id")
            .arg(client_id);
        let released: i64 = self.backend.script("release_agent", &invocation).await?;
        Ok(released == 1)
    }

    async fn agent(&self, session: &str) -> StoreResult<Option<AgentRef>> {
        let raw: Option<String> = self
            .backend
            .query(
                "agent",
                ::redis::cmd("GET").arg(self.backend.keys.agent(session)),
            )
            .await?;
        Ok(raw.and_then(|r| decode("agent", &r).ok()))
    }

    async fn list_sessions(&self, cursor: Option<&str>, limit: usize) -> StoreResult<SessionPage> {
        let keys = &self.backend.keys;
        let from = cursor.map_or_else(|| "-".to_string(), |c| format!("({c}"));
        // One more than asked: whether there is a next page.
        let mut names: Vec<String> = self
            .backend
            .query(
                "list_sessions",
                ::redis::cmd("ZRANGEBYLEX")
                    .arg(keys.sessions())
                    .arg(from)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.saturating_add(1)),
            )
            .await?;
        let more = names.len() > limit;
        names.truncate(limit);
        if names.is_empty() {
            return Ok(SessionPage {
                sessions: Vec::new(),
                next_cursor: None,
            });
        }
        type Details = (
            usize,
            Option<String>,
            (Option<u64>, Option<u64>, Option<u64>),
        );
        let details_of = |pipe: &mut ::redis::Pipeline, name: &str| {
            pipe.hlen(keys.presence(name))
                .get(keys.agent(name))
                .cmd("HMGET")
                .arg(keys.session_stats(name))
                .arg("last_activity")
                .arg("messages_in")
                .arg("messages_out");
        };
        // The page's details in one round trip: one pipeline, or on a Redis
        // Cluster one per session (each in its slot), all at once.
        let details: Vec<Details> = if self.backend.is_cluster() {
            let each = names.iter().map(|name| {
                let mut pipe = ::redis::pipe();
                details_of(&mut pipe, name);
                async move {
                    self.backend
                        .pipe::<Details>("list_sessions_details", &pipe)
                        .await
                }
            });
            futures_util::future::try_join_all(each).await?
        } else {
            let mut pipe = ::redis::pipe();
            for name in &names {
                details_of(&mut pipe, name);
            }
            self.backend.pipe("list_sessions_details", &pipe).await?
        };
        let sessions: Vec<SessionListing> = names
            .into_iter()
            .zip(details)
            .map(
                |(session, (clients, agent, (last, inbound, outbound)))| SessionListing {
                    session,
                    clients,
                    agent: agent.and_then(|a| decode("agent", &a).ok()),
                    last_activity: last,
                    messages_in: inbound.unwrap_or(0),
                    messages_out: outbound.unwrap_or(0),
                },
            )
            .collect();
        let next_cursor = if more {
            sessions.last().map(|l| l.session.clone())
        } else {
            None
        };
        Ok(SessionPage {
            sessions,
            next_cursor,
        })
    }

    async fn reap_instance(&self, instance: &str) -> Result<Vec<Reaped>, PartialReap> {
        let mut reaped = Vec::new();
        match self.reap_into(instance, &mut reaped).await {
            Ok(()) => Ok(reaped),
            Err(error) => Err(PartialReap { reaped, error }),
        }
    }
}
