//! The instances' heartbeats, timed by Redis's clock, not the hubs': every
//! instance stamps and judges them against the same clock (`TIME` of the
//! node holding the set), so a wall-clock step on one hub (an NTP step, a
//! VM resumed) neither makes the live instances look dead to it — it would
//! reap them — nor makes it look dead to the others. Membership heartbeats
//! and reaps through these; the store reads them to hide the clients of
//! dead instances.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;

use super::{RedisBackend, RedisError};

/// `ZADD` of ARGV[1] at Redis's now (ms); returns that now. KEYS: the
/// instances set.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          redis.call('ZADD', KEYS[1], now, ARGV[1])
          return now",
    )
});

/// The instances heard from within ARGV[1] ms of Redis's now (ARGV[2]
/// `alive`), or not (`dead`). KEYS: the instances set.
static BY_AGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          local since = now - tonumber(ARGV[1])
          if ARGV[2] == 'alive' then
            return redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')
          end
          return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. since)",
    )
});

impl RedisBackend {
    /// Records a heartbeat of `instance`; Redis's time of it (ms).
    pub async fn beat(&self, instance: &str) -> Result<u64, RedisError> {
        let mut invocation = BEAT.prepare_invoke();
        invocation.key(self.keys.instances()).arg(instance);
        self.script("heartbeat", &invocation).await
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
