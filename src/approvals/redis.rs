//! Held sends kept in Redis, so every instance of a cluster sees them:
//! a session's held sends live in its slot (`{s:<session>}`), one hash
//! each, plus a ZSET of the undecided ones; a cluster-wide ZSET
//! (`{approvals}`) indexes their expiries for the sweep. Holding and
//! deciding are Lua scripts: exactly one decider wins.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;
use serde_json::Value;

use super::{Approval, ApprovalStore, Decide, Held, Record, Resolution};
use crate::protocol::{HubError, now_millis};
use crate::redis::{RedisBackend, decode, encode, millis};

/// Holds a send unless the session has ARGV[4] undecided ones that have
/// not expired. KEYS: pending ZSET, the send's hash. ARGV: number, expiry
/// (ms), held JSON, max pending, now (ms), keep (ms). 1: held.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[5], '+inf') >= tonumber(ARGV[4]) then
          return 0
        end
        redis.call('HSET', KEYS[2], 'held', ARGV[3], 'expires_at', ARGV[2])
        redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[6]))
        redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
        redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[6]))
        return 1
        ",
    )
});

/// Decides a held send unless it is decided: ARGV[2] (the resolution) or,
/// when now ARGV[4] is at or past its expiry, ARGV[3] (the expiry).
/// KEYS: the send's hash, pending ZSET. ARGV: number, resolution JSON,
/// expiry JSON, now (ms), keep (ms). Returns `{'won', held, resolution}`,
/// `{'lost', held, resolution, outcome or ''}` or `{'unknown'}`.
static DECIDE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local held = redis.call('HGET', KEYS[1], 'held')
        if not held then return {'unknown'} end
        local decided = redis.call('HGET', KEYS[1], 'resolution')
        if decided then
          return {'lost', held, decided, redis.call('HGET', KEYS[1], 'outcome') or ''}
        end
        local chosen = ARGV[2]
        if tonumber(ARGV[4]) >= tonumber(redis.call('HGET', KEYS[1], 'expires_at')) then
          chosen = ARGV[3]
        end
        redis.call('HSET', KEYS[1], 'resolution', chosen)
        redis.call('PEXPIRE', KEYS[1], ARGV[5])
        redis.call('ZREM', KEYS[2], ARGV[1])
        return {'won', held, chosen}
        ",
    )
});

/// Records the outcome of a decided send that is still kept. KEYS: its
/// hash. ARGV: outcome JSON.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        redis.call('HSET', KEYS[1], 'outcome', ARGV[1])
        return 1
        ",
    )
});

pub struct RedisApprovals {
    backend: RedisBackend,
}

impl RedisApprovals {
    pub fn new(backend: RedisBackend) -> Self {
        RedisApprovals { backend }
    }

    fn due_member(session: &str, id: u64) -> String {
        serde_json::json!([session, id]).to_string()
    }
}

#[async_trait]
impl ApprovalStore for RedisApprovals {
    async fn next_id(&self, session: &str) -> Result<u64, HubError> {
        let key = self.backend.keys.approval_seq(session);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .incr(&key, 1u64)
            // Outlives every record it numbered (each is kept far less).
            .pexpire(&key, 30 * 86_400_000)
            .ignore();
        let (id,): (u64,) = self.backend.pipe("approval_next_id", &pipe).await?;
        Ok(id)
    }

    async fn hold(
        &self,
        held: &Held,
        max_pending: usize,
        keep: Duration,
    ) -> Result<bool, HubError> {
        let keys = &self.backend.keys;
        let approval = &held.approval;
        let mut invocation = HOLD.prepare_invoke();
        invocation
            .key(keys.approvals_pending(&approval.session))
            .key(keys.approval(&approval.session, approval.id))
            .arg(approval.id)
            .arg(approval.expires_at)
            .arg(encode(held)?)
            .arg(max_pending)
            .arg(now_millis())
            .arg(millis(keep));
        let held_now: i64 = self.backend.script("approval_hold", &invocation).await?;
        if held_now != 1 {
            return Ok(false);
        }
        let due = ::redis::cmd("ZADD")
            .arg(keys.approvals_due())
            .arg(approval.expires_at)
            .arg(Self::due_member(&approval.session, approval.id))
            .to_owned();
        // Without its index entry the send still expires: its waiter
        // decides the expiry itself.
        if let Err(error) = self.backend.query::<i64>("approval_due", &due).await {
            tracing::warn!(%error, "held send not indexed for the expiry sweep");
        }
        Ok(true)
    }

    async fn decide(
        &self,
        session: &str,
        id: u64,
        resolution: &Resolution,
        now: u64,
        keep: Duration,
    ) -> Result<Decide, HubError> {
        let keys = &self.backend.keys;
        let mut invocation = DECIDE.prepare_invoke();
        invocation
            .key(keys.approval(session, id))
            .key(keys.approvals_pending(session))
            .arg(id)
            .arg(encode(resolution)?)
            .arg(encode(&Resolution::expiry(now))?)
            .arg(now)
            .arg(millis(keep));
        let answer: Vec<String> = self.backend.script("approval_decide", &invocation).await?;
        let decided = match answer.as_slice() {
            [won, held, chosen] if won == "won" => Decide::Won(
                decode("held send", held)?,
                decode("approval resolution", chosen)?,
            ),
            [lost, held, decided, outcome] if lost == "lost" => Decide::Lost(Record {
                held: decode("held send", held)?,
                resolution: Some(decode("approval resolution", decided)?),
                outcome: match outcome.as_str() {
                    "" => None,
                    raw => Some(decode("approval outcome", raw)?),
                },
            }),
            _ => Decide::Unknown,
        };
        let undue = ::redis::cmd("ZREM")
            .arg(keys.approvals_due())
            .arg(Self::due_member(session, id))
            .to_owned();
        if let Err(error) = self.backend.query::<i64>("approval_undue", &undue).await {
            // The sweep finds it decided (or gone) and drops it then.
            tracing::debug!(%error, "decided send still in the expiry index");
        }
        Ok(decided)
    }

    async fn finish(&self, session: &str, id: u64, outcome: &Value) -> Result<(), HubError> {
        let mut invocation = FINISH.prepare_invoke();
        invocation
            .key(self.backend.keys.approval(session, id))
            .arg(encode(outcome)?);
        let _: i64 = self.backend.script("approval_finish", &invocation).await?;
        Ok(())
    }

    async fn get(&self, session: &str, id: u64) -> Result<Option<Record>, HubError> {
        let cmd = ::redis::cmd("HMGET")
            .arg(self.backend.keys.approval(session, id))
            .arg("held")
            .arg("resolution")
            .arg("outcome")
            .to_owned();
        let (held, resolution, outcome): (Option<String>, Option<String>, Option<String>) =
            self.backend.query("approval_get", &cmd).await?;
        let Some(held) = held else {
            return Ok(None);
        };
        Ok(Some(Record {
            held: decode("held send", &held)?,
            resolution: resolution
                .map(|r| decode("approval resolution", &r))
                .transpose()?,
            outcome: outcome
                .map(|o| decode("approval outcome", &o))
                .transpose()?,
        }))
    }

    async fn pending(&self, session: &str, max: usize) -> Result<Vec<Approval>, HubError> {
        let keys = &self.backend.keys;
        let range = ::redis::cmd("ZRANGE")
            .arg(keys.approvals_pending(session))
            .arg(0)
            .arg(max.saturating_sub(1))
            .to_owned();
        let ids: Vec<u64> = self.backend.query("approval_pending", &range).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.hget(keys.approval(session, *id), "held");
        }
        let helds: Vec<Option<String>> = self.backend.pipe("approval_pending", &pipe).await?;
        let mut approvals = Vec::with_capacity(helds.len());
        for raw in helds.into_iter().flatten() {
            approvals.push(decode::<Held>("held send", &raw)?.approval);
        }
        // Oldest first: by number, as the ZSET orders by expiry.
        approvals.sort_by_key(|a| a.id);
        Ok(approvals)
    }

    async fn due(&self, now: u64, max: usize) -> Result<Vec<(String, u64)>, HubError> {
        let cmd = ::redis::cmd("ZRANGEBYSCORE")
            .arg(self.backend.keys.approvals_due())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(max)
            .to_owned();
        let members: Vec<String> = self.backend.query("approval_due", &cmd).await?;
        let mut due = Vec::with_capacity(members.len());
        for member in members {
            match serde_json::from_str::<(String, u64)>(&member) {
                Ok(entry) => due.push(entry),
                Err(_) => {
                    // Not ours to keep: drop what cannot be read.
                    let rem = ::redis::cmd("ZREM")
                        .arg(self.backend.keys.approvals_due())
                        .arg(&member)
                        .to_owned();
                    let _ = self.backend.query::<i64>("approval_undue", &rem).await;
                }
            }
        }
        Ok(due)
    }
}
