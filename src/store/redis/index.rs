//! The admin API's session index and the idle sweep: every write of a
//! session (re)indexes it now and then, the index is paged by name, and
//! the sweep removes sessions idle past SESSION_IDLE_TTL_MS and takes them
//! out of both indexes.

use std::time::Duration;

use super::scripts::{EXPIRE_SESSION, UNINDEX_SESSION};
use super::{RedisStore, decode, millis};
use crate::protocol::now_millis;
use crate::redis::RedisError;
use crate::store::{SessionListing, SessionPage, StoreResult};

/// How long an instance trusts that a session it put in the index is still
/// there (Redis may have lost it since); its next write then puts it again.
/// At most half of SESSION_IDLE_TTL_MS ([`RedisStore::with_session_idle_ttl`]):
/// a write after the sweep removed a session always indexes it again.
pub(super) const INDEX_REFRESH_MS: u64 = 60_000;
/// SESSION_IDLE_TTL_MS's default, for stores made without one.
pub(super) const DEFAULT_IDLE_TTL_MS: u64 = 7 * 86_400_000;
/// Bound of [`RedisStore::indexed`]: reaching it forgets everything (the
/// next writes just index their sessions again).
const INDEXED_MAX: usize = 100_000;

impl RedisStore {
    /// Runs a write pipeline of `session`'s slot, adding to it the
    /// session's last activity (its stats hash shares the slot). On this
    /// instance's first write of a session (and again after
    /// [`INDEX_REFRESH_MS`]) the session also goes into the index the admin
    /// API pages through: another slot (`{sessions}`) on a Redis Cluster, so
    /// its own `ZADD`, sent at the same time as the pipeline.
    pub(super) async fn write<T: ::redis::FromRedisValue>(
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
    pub(super) async fn write_script<T: ::redis::FromRedisValue>(
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

impl RedisStore {
    pub(super) async fn list_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
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
                    phone_number_id: None,
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

    pub(super) async fn sweep_idle(&self, idle: Duration, max: usize) -> StoreResult<Vec<String>> {
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
}
