//! The instances' heartbeats, timed by Redis's clock, not the hubs': every
//! instance stamps and judges them against the same clock (`TIME` of the
//! node holding the set), so a wall-clock step on one hub (an NTP step, a
//! VM resumed) neither makes the live instances look dead to it — it would
//! reap them — nor makes it look dead to the others. Membership heartbeats
//! and reaps through these; the store reads them to hide the clients of
//! dead instances.
//!
//! A reaper first marks the instance it reaps (its score becomes -1, only
//! if it is still stale), then takes its clients, then removes it from the
//! set. An instance that was alive after all finds out at its next
//! heartbeat either way, [`Beat::Entered`]: it is missing from the set, or
//! marked because the reap stopped part-way.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;

use super::{OwnConnection, RedisBackend, RedisError};

/// Lua: `now`, Redis's clock in ms (`TIME` of the node holding the set).
const REDIS_NOW_MS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// `ZADD` of ARGV[1] at Redis's now (ms), and its description ARGV[2]
/// (JSON) stamped `last_heartbeat` = now, `SET` for ARGV[3] ms; returns
/// `entered`: 1 when ARGV[1] was not in the set (its first heartbeat, or
/// the first since a reaper forgot it) or was marked by a reaper (score
/// -1). KEYS: the instances set, the instance's description (one slot).
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{REDIS_NOW_MS}
          local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
          redis.call('ZADD', KEYS[1], now, ARGV[1])
          local info = cjson.decode(ARGV[2])
          info.last_heartbeat = now
          redis.call('SET', KEYS[2], cjson.encode(info), 'PX', ARGV[3])
          if (not old) or tonumber(old) < 0 then return 1 end
          return 0"
    ))
});

/// Marks ARGV[1] as being reaped (score -1), if its heartbeat is older
/// than ARGV[2] ms by Redis's now: 1 when marked (also when a reap of it
/// was left part-way), 0 when it is gone or beat again meanwhile. KEYS: the
/// instances set.
static MARK_REAPING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{REDIS_NOW_MS}
          local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
          if (not score) or tonumber(score) >= now - tonumber(ARGV[2]) then return 0 end
          redis.call('ZADD', KEYS[1], 'XX', -1, ARGV[1])
          return 1"
    ))
});

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The instance was in the set: its heartbeat is refreshed.
    Continued,
    /// The instance was not in the set: its first heartbeat, or the first
    /// since another instance judged it dead (a heartbeat late by more
    /// than the TTL) and reaped its clients, which it must put back.
    Entered,
}

/// The instances heard from within ARGV[1] ms of Redis's now (ARGV[2]
/// `alive`), or not (`dead`). KEYS: the instances set.
static BY_AGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{REDIS_NOW_MS}
          local since = now - tonumber(ARGV[1])
          if ARGV[2] == 'alive' then
            return redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')
          end
          return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. since)"
    ))
});

impl OwnConnection {
    /// Records a heartbeat of `instance` with its description `info` (JSON,
    /// its `last_heartbeat` set by Redis's clock), which expires after
    /// `ttl`, in one round trip; whether `instance` was still in the set.
    /// On the heartbeat's own connection, so it never waits for the pool.
    pub async fn beat(
        &self,
        instance: &str,
        info: &str,
        ttl: Duration,
    ) -> Result<Beat, RedisError> {
        let keys = &self.backend().keys;
        let mut invocation = BEAT.prepare_invoke();
        invocation
            .key(keys.instances())
            .key(keys.instance_info(instance))
            .arg(instance)
            .arg(info)
            .arg(ttl.as_millis() as u64);
        let entered: i64 = self.script("heartbeat", &invocation).await?;
        Ok(if entered == 1 {
            Beat::Entered
        } else {
            Beat::Continued
        })
    }
}

impl RedisBackend {
    /// Marks `instance` as being reaped if its heartbeat is older than
    /// `ttl`; false when it is gone or alive again (leave it alone).
    pub async fn mark_reaping(&self, instance: &str, ttl: Duration) -> Result<bool, RedisError> {
        let mut invocation = MARK_REAPING.prepare_invoke();
        invocation
            .key(self.keys.instances())
            .arg(instance)
            .arg(ttl.as_millis() as u64);
        let marked: i64 = self.script("reap_mark", &invocation).await?;
        Ok(marked == 1)
    }

    /// The instances whose last heartbeat is within `ttl` (`alive`), or
    /// older (not `alive`: dead).
    pub async fn instances_by_age(
        &self,
        op: &'static str,
        ttl: Duration,
        alive: bool,
    ) -> Result<Vec<String>, RedisError> {
        let mut invocation = BY_AGE.prepare_invoke();
        invocation
            .key(self.keys.instances())
            .arg(ttl.as_millis() as u64)
            .arg(if alive { "alive" } else { "dead" });
        self.script(op, &invocation).await
    }
}
