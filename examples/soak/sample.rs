//! What the soak measures: each hub's resident memory and open file
//! descriptors (from /proc), Redis's `used_memory` and key count, one row
//! per sample, and the CSV they are written to.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::judge::{CHURN_TOLERANCE, RELATIVE_TOLERANCE};

/// One watched hub process.
#[derive(Clone, Debug)]
pub struct HubPid {
    pub name: String,
    pub pid: u32,
}

/// Bound on one Redis query of the sampler.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most SCAN round trips one key search makes (COUNT 1000 each).
const MAX_SCAN_ROUNDS: usize = 10_000;

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> Result<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?;
    Ok(dir.count() as u64)
}

/// The Redis side of the soak: a connection for the sampler and the
/// end-of-run checks.
pub struct RedisProbe {
    con: redis::aio::MultiplexedConnection,
}

impl RedisProbe {
    pub async fn connect(url: &str) -> Result<RedisProbe> {
        let client = redis::Client::open(url).context("redis url")?;
        let con = tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .context("connecting to redis timed out")??;
        Ok(RedisProbe { con })
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async(&mut self.con))
            .await
            .context("redis query timed out")?
            .context("redis query")
    }

    /// `used_memory` of `INFO memory`, in bytes.
    pub async fn used_memory(&mut self) -> Result<u64> {
        let info: String = self.query(redis::cmd("INFO").arg("memory")).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no used_memory in INFO memory"))
    }

    pub async fn dbsize(&mut self) -> Result<u64> {
        self.query(&redis::cmd("DBSIZE")).await
    }

    /// Every key matching `pattern` (SCAN, bounded).
    pub async fn keys_matching(&mut self, pattern: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        for _ in 0..MAX_SCAN_ROUNDS {
            let (next, batch): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
        bail!("SCAN {pattern} did not finish in {MAX_SCAN_ROUNDS} rounds")
    }

    /// Members of the sorted sets `keys` whose name starts with `prefix`
    /// (sessions in the hub's session indexes), read 1000 at a time.
    pub async fn zset_members_with_prefix(&mut self, keys: &[String], prefix: &str) -> Result<u64> {
        let mut count = 0;
        for key in keys {
            let mut start = 0u64;
            loop {
                let page: Vec<String> = self
                    .query(redis::cmd("ZRANGE").arg(key).arg(start).arg(start + 999))
                    .await?;
                count += page.iter().filter(|m| m.starts_with(prefix)).count() as u64;
                if page.len() < 1000 {
                    break;
                }
                start += 1000;
            }
        }
        Ok(count)
    }

    /// Sum of `HLEN` over `keys` (presence hashes).
    pub async fn hlen_sum(&mut self, keys: &[String]) -> Result<u64> {
        let mut sum = 0;
        for key in keys {
            sum += self.query::<u64>(redis::cmd("HLEN").arg(key)).await?;
        }
        Ok(sum)
    }

    /// Sum of `SCARD` over `keys` (instance member sets).
    pub async fn scard_sum(&mut self, keys: &[String]) -> Result<u64> {
        let mut sum = 0;
        for key in keys {
            sum += self.query::<u64>(redis::cmd("SCARD").arg(key)).await?;
        }
        Ok(sum)
    }
}

/// One sample: the measured values and the driver's counters at that time.
#[derive(Clone, Debug)]
pub struct Row {
    pub t_secs: f64,
    pub rss_kib: Vec<u64>,
    pub fds: Vec<u64>,
    pub redis_used_memory: u64,
    pub redis_keys: u64,
    /// Keys of abandoned sessions still in Redis.
    pub abandoned_keys: u64,
    pub connected: u64,
    pub broadcasts: u64,
    pub deliveries: u64,
    pub resumes: u64,
    pub abandoned_sessions: u64,
}

/// Takes one sample of every hub and of Redis.
pub async fn measure(
    hubs: &[HubPid],
    redis: &mut RedisProbe,
    abandoned_pattern: &str,
) -> Result<(Vec<u64>, Vec<u64>, u64, u64, u64)> {
    let mut rss = Vec::with_capacity(hubs.len());
    let mut fds = Vec::with_capacity(hubs.len());
    for hub in hubs {
        rss.push(rss_kib(hub.pid).with_context(|| format!("{} (pid {})", hub.name, hub.pid))?);
        fds.push(open_fds(hub.pid).with_context(|| format!("{} (pid {})", hub.name, hub.pid))?);
    }
    let used = redis.used_memory().await?;
    let keys = redis.dbsize().await?;
    let abandoned = redis.keys_matching(abandoned_pattern).await?.len() as u64;
    Ok((rss, fds, used, keys, abandoned))
}

/// The CSV header for `hubs`.
pub fn csv_header(hubs: &[HubPid]) -> String {
    let mut h = String::from("t_secs");
    for hub in hubs {
        let _ = write!(h, ",{}_rss_kib", hub.name);
    }
    for hub in hubs {
        let _ = write!(h, ",{}_fds", hub.name);
    }
    h.push_str(",redis_used_memory,redis_keys,abandoned_keys,connected,broadcasts,deliveries,resumes,abandoned_sessions");
    h
}

/// One CSV line of `row`.
pub fn csv_line(row: &Row) -> String {
    let mut l = format!("{:.1}", row.t_secs);
    for v in row.rss_kib.iter().chain(&row.fds) {
        let _ = write!(l, ",{v}");
    }
    let _ = write!(
        l,
        ",{},{},{},{},{},{},{},{}",
        row.redis_used_memory,
        row.redis_keys,
        row.abandoned_keys,
        row.connected,
        row.broadcasts,
        row.deliveries,
        row.resumes,
        row.abandoned_sessions
    );
    l
}

/// One judged series.
pub struct Series {
    pub name: String,
    /// Growth allowed relative to the mean (see [`crate::judge`]).
    pub relative: f64,
    /// (t in seconds, value).
    pub points: Vec<(f64, f64)>,
}

/// The judged series of `rows`, hubs first.
pub fn series(hubs: &[HubPid], rows: &[Row]) -> Vec<Series> {
    let level = |name: String, value: &dyn Fn(&Row) -> f64| Series {
        name,
        relative: RELATIVE_TOLERANCE,
        points: rows.iter().map(|r| (r.t_secs, value(r))).collect(),
    };
    let mut out = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        out.push(level(format!("{} rss KiB", hub.name), &|r| {
            r.rss_kib[i] as f64
        }));
    }
    for (i, hub) in hubs.iter().enumerate() {
        out.push(level(format!("{} fds", hub.name), &|r| r.fds[i] as f64));
    }
    out.push(level("redis used_memory B".into(), &|r| {
        r.redis_used_memory as f64
    }));
    out.push(level("redis keys, others".into(), &|r| {
        r.redis_keys.saturating_sub(r.abandoned_keys) as f64
    }));
    // They churn: their lifetime stretches on a busy machine.
    out.push(Series {
        relative: CHURN_TOLERANCE,
        ..level("redis keys, abandoned".into(), &|r| r.abandoned_keys as f64)
    });
    out
}
