//! Session state in Redis, shared by every instance of a cluster, and the
//! reaping of what dead instances left in it. This module owns the store
//! itself and its plain reads and writes; the Lua scripts, the session
//! index (with the idle sweep) and presence (with reaping) have their own
//! modules. Key layout: [`crate::redis::Keys`] and docs/redis.md.

mod index;
mod presence;
mod scripts;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    AgentRef, IdempotencyBegin, IdempotencyKey, JoinRefused, JoinRule, NewSender, PartialReap,
    Presence, PresenceChange, Reaped, SenderContact, SessionPage, SessionStore, StoreResult,
};
use crate::protocol::{
    ClientInfo, Contact, DeliveryStatus, HistoryEntry, HubError, MessageDirection, StatusError,
    now_millis,
};
use crate::redis::{RedisBackend, decode, encode, millis};
use index::{DEFAULT_IDLE_TTL_MS, INDEX_REFRESH_MS};
use scripts::{
    ADD_SENDER_CONTACT, IDEMPOTENCY_ABANDON, IDEMPOTENCY_BEGIN, IDEMPOTENCY_FINISH,
    RELEASE_AGENT_IF, SET_STATUS,
};

/// A status as stored under `message_status`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredStatus {
    status: DeliveryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<StatusError>,
}

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
        self.sweep_idle(idle, max).await
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

    async fn conversations(&self, session: &str) -> StoreResult<Vec<String>> {
        let mut names: Vec<String> = self
            .backend
            .query(
                "conversations",
                ::redis::cmd("SMEMBERS").arg(self.backend.keys.session_histories(session)),
            )
            .await?;
        names.sort();
        Ok(names)
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

    async fn claim_webhook_event(&self, lease: Duration) -> StoreResult<Option<(String, String)>> {
        let keys = &self.backend.keys;
        let now = now_millis();
        // Every instance polls: an empty queue with no lapsed claim costs
        // two plain reads, never a script.
        let mut look = ::redis::pipe();
        look.llen(keys.webhook_queue())
            .zcount(keys.webhook_leases(), "-inf", now);
        let (queued, lapsed): (u64, u64) = self.backend.pipe("webhook_peek", &look).await?;
        if queued == 0 && lapsed == 0 {
            return Ok(None);
        }
        let claim = uuid::Uuid::new_v4().simple().to_string();
        let mut invocation = scripts::CLAIM_WEBHOOK.prepare_invoke();
        invocation
            .key(keys.webhook_queue())
            .key(keys.webhook_claims())
            .key(keys.webhook_leases())
            .arg(now)
            .arg(now + millis(lease))
            .arg(&claim);
        let event: Option<String> = self.backend.script("webhook_claim", &invocation).await?;
        Ok(event.map(|e| (claim, e)))
    }

    async fn ack_webhook_event(&self, claim: &str) -> StoreResult<()> {
        let keys = &self.backend.keys;
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .hdel(keys.webhook_claims(), claim)
            .ignore()
            .zrem(keys.webhook_leases(), claim)
            .ignore();
        let () = self.backend.pipe("webhook_ack", &pipe).await?;
        Ok(())
    }

    async fn join(
        &self,
        session: &str,
        client: &ClientInfo,
        rule: JoinRule,
    ) -> StoreResult<Result<PresenceChange, JoinRefused>> {
        self.join_presence(session, client, rule).await
    }

    async fn leave(&self, session: &str, client_id: &str) -> StoreResult<PresenceChange> {
        self.leave_presence(session, client_id).await
    }

    async fn member(&self, session: &str, client_id: &str) -> StoreResult<Option<ClientInfo>> {
        let raw: Option<String> = self
            .backend
            .query(
                "member",
                ::redis::cmd("HGET")
                    .arg(self.backend.keys.presence(session))
                    .arg(client_id),
            )
            .await?;
        raw.map(|raw| decode("presence entry", &raw)).transpose()
    }

    async fn presence(&self, session: &str, limit: usize) -> StoreResult<Presence> {
        self.live_presence(session, limit).await
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

    async fn release_agent(&self, session: &str, agent: &AgentRef) -> StoreResult<bool> {
        let mut invocation = RELEASE_AGENT_IF.prepare_invoke();
        invocation
            .key(self.backend.keys.agent(session))
            .arg("client_id")
            .arg(&agent.client_id)
            .arg("instance")
            .arg(&agent.instance);
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
        self.list_page(cursor, limit).await
    }

    async fn reap_instance(&self, instance: &str) -> Result<Vec<Reaped>, PartialReap> {
        let mut reaped = Vec::new();
        match self.reap_into(instance, &mut reaped).await {
            Ok(()) => Ok(reaped),
            Err(error) => Err(PartialReap { reaped, error }),
        }
    }
}
