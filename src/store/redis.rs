//! Session state in Redis, shared by every instance of a cluster, and the
//! reaping of what dead instances left in it. Owns the store's Lua scripts.
//! Key layout: [`crate::redis::Keys`] and docs/redis.md.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use ::redis::Script;
use async_trait::async_trait;

use std::time::Duration;

use super::{
    AgentRef, IdempotencyBegin, IdempotencyKey, NewSender, PartialReap, Presence, PresenceChange,
    Reaped, SenderContact, SessionListing, SessionPage, SessionStore, StoreResult,
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
/// meanwhile have registered again on another instance. A leave is
/// activity (ARGV[3], ms): a session's idle time starts at its last one.
/// KEYS: presence, session stats. Touches the session's slot only: the
/// instance's member set is another slot (Redis Cluster), updated by the
/// caller.
static TAKE_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{BUMP_PRESENCE}
        local v = redis.call('HGET', KEYS[1], ARGV[1])
        if not v then return nil end
        local ok, client = pcall(cjson.decode, v)
        if ok and client.instance ~= ARGV[2] then return nil end
        redis.call('HDEL', KEYS[1], ARGV[1])
        redis.call('HSET', KEYS[2], 'last_activity', ARGV[3])
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

/// Lua: `now_ms()`, the server's clock in ms: every instance's scripts
/// judge expiry by the same clock.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Takes an idempotency key: the stored (unexpired) result if there is
/// one, else the lock if free; either one held for another fingerprint is
/// `reused`. One script, so a result stored between the checks cannot be
/// missed (which would send twice). KEYS: lock, the caller's results hash,
/// its index. ARGV: fingerprint (64 hex), token, lock TTL ms, key.
/// Values are the fingerprint followed by the token or the result.
static IDEMPOTENCY_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
        local fp = ARGV[1]
        local until_ms = redis.call('ZSCORE', KEYS[3], ARGV[4])
        if until_ms and tonumber(until_ms) > now_ms() then
            local r = redis.call('HGET', KEYS[2], ARGV[4])
            if r then
                if string.sub(r, 1, 64) ~= fp then return {{'reused', ''}} end
                return {{'done', string.sub(r, 65)}}
            end
        end
        local held = redis.call('GET', KEYS[1])
        if held then
            if string.sub(held, 1, 64) ~= fp then return {{'reused', ''}} end
            return {{'busy', ''}}
        end
        redis.call('SET', KEYS[1], fp .. ARGV[2], 'PX', ARGV[3])
        return {{'acquired', ''}}
        "
    ))
});

/// Stores a result in the caller's hash and index, frees the lock if this
/// token still holds it, forgets (a bounded number of) expired results,
/// then the caller's oldest past its cap; returns how many it forgot for
/// the cap. Both structures expire whole after a TTL without a result.
/// KEYS: lock, results hash, index. ARGV: fingerprint, token, result,
/// TTL ms, key, cap.
static IDEMPOTENCY_FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
        local now = now_ms()
        local ttl = tonumber(ARGV[4])
        if redis.call('GET', KEYS[1]) == ARGV[1] .. ARGV[2] then redis.call('DEL', KEYS[1]) end
        redis.call('HSET', KEYS[2], ARGV[5], ARGV[1] .. ARGV[3])
        redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
        local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)
        if #expired > 0 then
            redis.call('HDEL', KEYS[2], unpack(expired))
            redis.call('ZREM', KEYS[3], unpack(expired))
        end
        local over = math.min(redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6]), 1000)
        local evicted = 0
        if over > 0 then
            local oldest = redis.call('ZRANGE', KEYS[3], 0, over - 1)
            redis.call('HDEL', KEYS[2], unpack(oldest))
            redis.call('ZREMRANGEBYRANK', KEYS[3], 0, over - 1)
            evicted = #oldest
        end
        redis.call('PEXPIRE', KEYS[2], ttl)
        redis.call('PEXPIRE', KEYS[3], ttl)
        return evicted
        "
    ))
});

/// Frees the lock if ARGV[1] (fingerprint and token) still holds it.
static IDEMPOTENCY_ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 1
        ",
    )
});

/// Adds a webhook sender to a session's contacts: the read, the cap and
/// the write in one step, so concurrent senders (on any instance) never
/// pass `MAX_CONTACTS_PER_SESSION` nor overwrite each other. The list's
/// JSON is extended as text (serde wrote it; cjson only reads it).
/// KEYS: contacts, stats. ARGV: digits, max, name, name if taken, phone,
/// now ms. Returns `{'known', name}`, `{'full'}` or `{'added', name, list}`.
static ADD_SENDER_CONTACT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local raw = redis.call('GET', KEYS[1])
        local list = {}
        if raw then
            local ok, v = pcall(cjson.decode, raw)
            if not ok or type(v) ~= 'table' then
                return redis.error_reply('corrupt contacts list')
            end
            list = v
        end
        local wanted = string.lower(ARGV[3])
        local taken = false
        for _, c in ipairs(list) do
            if type(c.phone) == 'string' and (string.gsub(c.phone, '%D', '')) == ARGV[1] then
                return {'known', tostring(c.name)}
            end
            if type(c.name) == 'string' and string.lower(c.name) == wanted then taken = true end
        end
        if #list >= tonumber(ARGV[2]) then return {'full'} end
        local name = ARGV[3]
        if taken then name = ARGV[4] end
        local entry = cjson.encode({name = name, phone = ARGV[5]})
        local new
        if raw and #list > 0 then
            new = string.sub(raw, 1, -2) .. ',' .. entry .. ']'
        else
            new = '[' .. entry .. ']'
        end
        redis.call('SET', KEYS[1], new)
        redis.call('HSET', KEYS[2], 'last_activity', ARGV[6])
        return {'added', name, new}
        ",
    )
});

/// Removes an idle session: if it has no client in presence and its last
/// activity is at or before ARGV[1] (ms), and its `histories` set is still
/// exactly the contacts the caller read (ARGV[3..], their history keys
/// KEYS[11..]), every key of it goes. KEYS: stats, presence, histories,
/// contacts, last_contact, agent, log, log epoch, log offset, log seen,
/// history keys. ARGV: cutoff, number of history keys, their contacts.
/// Returns `{'removed'}`, `{'gone'}` (nothing was there), `{'busy'}`,
/// `{'active', last_activity}` or `{'changed'}` (read the set again).
static EXPIRE_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('HLEN', KEYS[2]) > 0 then return {'busy'} end
        local last = tonumber(redis.call('HGET', KEYS[1], 'last_activity') or '0') or 0
        if last > tonumber(ARGV[1]) then return {'active', tostring(last)} end
        local n = tonumber(ARGV[2])
        if redis.call('SCARD', KEYS[3]) ~= n then return {'changed'} end
        for i = 1, n do
            if redis.call('SISMEMBER', KEYS[3], ARGV[2 + i]) == 0 then return {'changed'} end
        end
        local deleted = 0
        for i = 1, #KEYS, 500 do
            deleted = deleted + redis.call('DEL', unpack(KEYS, i, math.min(i + 499, #KEYS)))
        end
        if deleted == 0 then return {'gone'} end
        return {'removed'}
        ",
    )
});

/// Takes a removed (or never-there) session out of the admin index and the
/// activity index, unless its activity was indexed after ARGV[2] (a write
/// brought it back). KEYS: sessions, activity. ARGV: session, cutoff ms.
static UNINDEX_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
        if at and tonumber(at) > tonumber(ARGV[2]) then return 0 end
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('ZREM', KEYS[1], ARGV[1])
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
/// At most half of SESSION_IDLE_TTL_MS ([`RedisStore::with_session_idle_ttl`]):
/// a write after the sweep removed a session always indexes it again.
const INDEX_REFRESH_MS: u64 = 60_000;
/// SESSION_IDLE_TTL_MS's default, for stores made without one.
const DEFAULT_IDLE_TTL_MS: u64 = 7 * 86_400_000;
/// Bound of [`RedisStore::indexed`]: reaching it forgets everything (the
/// next writes just index their sessions again).
const INDEXED_MAX: usize = 100_000;

pub struct RedisStore {
    backend: RedisBackend,
    instance: String,
    history_limit: usize,
    presence_ttl_ms: u64,
    /// How often this instance indexes a session it writes again.
    index_refresh_ms: u64,
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
            index_refresh_ms: INDEX_REFRESH_MS.min(DEFAULT_IDLE_TTL_MS / 2),
            indexed: Mutex::default(),
        }
    }

    /// Idle sessions are removed after `idle` (SESSION_IDLE_TTL_MS): the
    /// index is refreshed at least twice as often, so a write to a session
    /// the sweep removed always puts it back.
    pub fn with_session_idle_ttl(mut self, idle: Duration) -> Self {
        self.index_refresh_ms = INDEX_REFRESH_MS.min(millis(idle) / 2).max(1);
        self
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

    /// Runs `write`, with the session's `ZADD`s to the index and the
    /// activity index at the same time when this instance's (re-)indexing
    /// of it is due. The activity first: the sweep's unindexing, seeing it
    /// new, then leaves both.
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
                .is_none_or(|&at| now.saturating_sub(at) >= self.index_refresh_ms)
        };
        if !due {
            return write.await;
        }
        let mut zadd = ::redis::pipe();
        zadd.cmd("ZADD")
            .arg(keys.sessions_activity())
            .arg(now)
            .arg(session)
            .ignore()
            .cmd("ZADD")
            .arg(keys.sessions())
            .arg(0)
            .arg(session)
            .ignore();
        let (written, ()): (T, ()) =
            tokio::try_join!(write, self.backend.pipe("index_session", &zadd))?;
        let mut indexed = self.indexed.lock().unwrap_or_else(|p| p.into_inner());
        if indexed.len() >= INDEXED_MAX {
            indexed.clear();
        }
        indexed.insert(session.to_string(), now);
        Ok(written)
    }
}

/// What [`RedisStore::expire_session`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expiry {
    Removed,
    /// Nothing of it was left (another instance's sweep took it).
    Gone,
    /// A client is in its presence.
    Busy,
    /// Its last activity (ms) is after the cutoff.
    Active(u64),
    /// Its histories changed between the read and the script.
    Changed,
}

impl RedisStore {
    /// Removes `session` if it is idle since `cutoff` (ms): reads the
    /// contacts it has a history with, then runs [`EXPIRE_SESSION`] over
    /// every key of it (all in its slot).
    async fn expire_session(&self, session: &str, cutoff: u64) -> StoreResult<Expiry> {
        let keys = &self.backend.keys;
        let contacts: Vec<String> = self
            .backend
            .query(
                "idle_histories",
                ::redis::cmd("SMEMBERS").arg(keys.session_histories(session)),
            )
            .await?;
        let mut invocation = EXPIRE_SESSION.prepare_invoke();
        invocation
            .key(keys.session_stats(session))
            .key(keys.presence(session))
            .key(keys.session_histories(session))
            .key(keys.contacts(session))
            .key(keys.last_contact(session))
            .key(keys.agent(session))
            .key(keys.session_log(session))
            .key(keys.session_log_epoch(session))
            .key(keys.session_log_offset(session))
            .key(keys.session_log_seen(session));
        for contact in &contacts {
            invocation.key(keys.history(session, contact));
        }
        invocation.arg(cutoff).arg(contacts.len());
        for contact in &contacts {
            invocation.arg(contact);
        }
        let answer: Vec<String> = self.backend.script("idle_expire", &invocation).await?;
        Ok(match answer.first().map(String::as_str) {
            Some("removed") => Expiry::Removed,
            Some("gone") => Expiry::Gone,
            Some("busy") => Expiry::Busy,
            Some("active") => {
                Expiry::Active(answer.get(1).and_then(|v| v.parse().ok()).unwrap_or(cutoff))
            }
            _ => Expiry::Changed,
        })
    }

    /// Moves a session's place in the activity index to `at` (ms), if it is
    /// still there.
    async fn reindex_activity(&self, session: &str, at: u64) -> StoreResult<()> {
        let _: i64 = self
            .backend
            .query(
                "idle_reindex",
                ::redis::cmd("ZADD")
                    .arg(self.backend.keys.sessions_activity())
                    .arg("XX")
                    .arg(at)
                    .arg(session),
            )
            .await?;
        Ok(())
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
                .arg(instance)
                .arg(now_millis());
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

/// The fingerprint the scripts compare: exactly 64 characters (a SHA-256
/// in hex, as the hub makes it), the prefix of every stored value.
fn fingerprint<'a>(key: &IdempotencyKey<'a>) -> Result<&'a str, HubError> {
    if key.fingerprint.len() == 64 && key.fingerprint.is_ascii() {
        Ok(key.fingerprint)
    } else {
        Err(HubError::internal(
            "an idempotency fingerprint must be 64 ASCII characters",
        ))
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

    async fn add_sender_contact(
        &self,
        session: &str,
        sender: &NewSender<'_>,
        max: usize,
    ) -> StoreResult<SenderContact> {
        let keys = &self.backend.keys;
        let mut invocation = ADD_SENDER_CONTACT.prepare_invoke();
        invocation
            .key(keys.contacts(session))
            .key(keys.session_stats(session))
            .arg(sender.digits)
            .arg(max)
            .arg(sender.name)
            .arg(sender.name_if_taken)
            .arg(sender.phone)
            .arg(now_millis());
        let answer: Vec<String> = self
            .write_script("add_sender_contact", session, &invocation)
            .await?;
        match answer.as_slice() {
            [known, name] if known == "known" => Ok(SenderContact::Known(name.clone())),
            [full] if full == "full" => Ok(SenderContact::Full),
            [added, name, list] if added == "added" => Ok(SenderContact::Added {
                name: name.clone(),
                contacts: decode("contacts", list)?,
            }),
            other => Err(HubError::store_unavailable(format!(
                "unexpected answer of the contact script: {other:?}"
            ))),
        }
    }

    async fn expire_idle(&self, idle: Duration, max: usize) -> StoreResult<Vec<String>> {
        let keys = &self.backend.keys;
        let now = now_millis();
        let cutoff = now.saturating_sub(millis(idle));
        let candidates: Vec<String> = self
            .backend
            .query(
                "idle_candidates",
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(keys.sessions_activity())
                    .arg("-inf")
                    .arg(cutoff)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(max),
            )
            .await?;
        let mut removed = Vec::new();
        for session in candidates {
            match self.expire_session(&session, cutoff).await? {
                outcome @ (Expiry::Removed | Expiry::Gone) => {
                    let mut unindex = UNINDEX_SESSION.prepare_invoke();
                    unindex
                        .key(keys.sessions())
                        .key(keys.sessions_activity())
                        .arg(&session)
                        .arg(cutoff);
                    let _: i64 = self.backend.script("idle_unindex", &unindex).await?;
                    self.indexed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&session);
                    if outcome == Expiry::Removed {
                        removed.push(session);
                    }
                }
                // In use: looked at again one idle period from now.
                Expiry::Busy => self.reindex_activity(&session, now).await?,
                Expiry::Active(last) => self.reindex_activity(&session, last).await?,
                // A message meanwhile: its activity says so at the next sweep.
                Expiry::Changed => {}
            }
        }
        Ok(removed)
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
            .sadd(
                self.backend.keys.session_histories(session),
                entry.contact.to_lowercase(),
            )
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
        key: &IdempotencyKey<'_>,
        token: &str,
        lock_ttl: Duration,
    ) -> StoreResult<IdempotencyBegin> {
        let keys = &self.backend.keys;
        let mut invocation = IDEMPOTENCY_BEGIN.prepare_invoke();
        invocation
            .key(keys.idempotency_lock(key.caller, key.key))
            .key(keys.idempotency_results(key.caller))
            .key(keys.idempotency_index(key.caller))
            .arg(fingerprint(key)?)
            .arg(token)
            .arg(millis(lock_ttl))
            .arg(key.key);
        let answer: Vec<String> = self
            .backend
            .script("idempotency_begin", &invocation)
            .await?;
        Ok(match answer.first().map(String::as_str) {
            Some("done") => IdempotencyBegin::Done(answer.get(1).cloned().unwrap_or_default()),
            Some("acquired") => IdempotencyBegin::Acquired,
            Some("reused") => IdempotencyBegin::Reused,
            _ => IdempotencyBegin::Busy,
        })
    }

    async fn idempotency_finish(
        &self,
        key: &IdempotencyKey<'_>,
        token: &str,
        result: &str,
        ttl: Duration,
        per_caller: usize,
    ) -> StoreResult<usize> {
        let keys = &self.backend.keys;
        let mut invocation = IDEMPOTENCY_FINISH.prepare_invoke();
        invocation
            .key(keys.idempotency_lock(key.caller, key.key))
            .key(keys.idempotency_results(key.caller))
            .key(keys.idempotency_index(key.caller))
            .arg(fingerprint(key)?)
            .arg(token)
            .arg(result)
            .arg(millis(ttl))
            .arg(key.key)
            .arg(per_caller.max(1));
        let evicted: usize = self
            .backend
            .script("idempotency_finish", &invocation)
            .await?;
        Ok(evicted)
    }

    async fn idempotency_abandon(&self, key: &IdempotencyKey<'_>, token: &str) -> StoreResult<()> {
        let mut invocation = IDEMPOTENCY_ABANDON.prepare_invoke();
        invocation
            .key(self.backend.keys.idempotency_lock(key.caller, key.key))
            .arg(format!("{}{token}", fingerprint(key)?));
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
            .arg(&self.instance)
            .arg(now_millis());
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
