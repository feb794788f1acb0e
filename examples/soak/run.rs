//! One soak: the load of [`crate::driver`] for a duration, sampled every
//! few seconds ([`crate::sample`]), then the checks: every series flat
//! after warm-up ([`crate::judge`]), the abandoned sessions' keys gone
//! and the key count back to its baseline, and presence holding exactly
//! the connected clients.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::driver::{
    ABANDONED_KEYS, ABANDONED_PREFIX, Driver, Load, MEMBER_SET_KEYS, SESSION_INDEX_KEYS,
    STEADY_PRESENCE_KEYS,
};
use crate::judge::{Verdict, judge};
use crate::sample::{HubPid, RedisProbe, Row, csv_header, csv_line, measure, series};

/// How long and how closely to watch.
#[derive(Clone, Debug)]
pub struct Plan {
    pub duration: Duration,
    pub sample_every: Duration,
    /// Share of the run left out of the verdicts (allocators, caches and
    /// the first abandoned sessions' lifetimes settle in it).
    pub warmup_fraction: f64,
    /// Bound on the abandoned sessions' keys disappearing after the load
    /// stops (idle TTL + a sweep period + margin).
    pub drain_bound: Duration,
    /// Where to write the samples as CSV (written as they come).
    pub csv: Option<PathBuf>,
}

/// What a soak found.
pub struct Outcome {
    pub rows: Vec<Row>,
    pub verdicts: Vec<Verdict>,
    pub warmup_end: f64,
    /// Redis keys once the steady clients were registered, before churn.
    pub baseline_keys: u64,
    /// Redis keys when the drain ended (or its bound passed).
    pub final_keys: u64,
    /// Keys of abandoned sessions still there when the drain ended.
    pub leftover: Vec<String>,
    /// Abandoned sessions still in the session indexes then.
    pub indexed: u64,
    /// How long after the load stopped the abandoned keys were gone.
    pub drained_after: Option<Duration>,
    /// Steady clients, and the entries presence and the instances' member
    /// sets held for them once all were connected again.
    pub expected_members: u64,
    pub presence_entries: u64,
    pub member_entries: u64,
    pub driver_summary: String,
    // Read by tests/soak.rs's assertions; the example prints the summary.
    #[allow(dead_code)]
    pub resumes: u64,
    #[allow(dead_code)]
    pub recovered: u64,
    #[allow(dead_code)]
    pub abandoned_sessions: u64,
}

impl Outcome {
    pub fn all_flat(&self) -> bool {
        !self.verdicts.is_empty() && self.verdicts.iter().all(|v| v.flat)
    }

    /// Abandoned sessions expired and nothing else was left behind.
    pub fn drained(&self) -> bool {
        self.drained_after.is_some() && self.final_keys <= self.baseline_keys
    }

    pub fn presence_exact(&self) -> bool {
        self.presence_entries == self.expected_members
            && self.member_entries == self.expected_members
    }

    pub fn passed(&self) -> bool {
        self.all_flat() && self.drained() && self.presence_exact()
    }

    /// The human report: one line per series, then the checks.
    pub fn report(&self) -> String {
        let mut out = format!(
            "soak: {} samples, verdicts on t >= {:.0} s (warm-up excluded)\n",
            self.rows.len(),
            self.warmup_end
        );
        for v in &self.verdicts {
            out.push_str(&v.line());
            out.push('\n');
        }
        out.push_str(&format!("load: {}\n", self.driver_summary));
        out.push_str(&format!(
            "expiry: abandoned-session keys {} {}; {} abandoned sessions left in the session indexes; redis keys {} at the end vs baseline {} before churn\n",
            if self.leftover.is_empty() { "all gone" } else { "LEFT" },
            match self.drained_after {
                Some(d) => format!("{:.1} s after the load stopped", d.as_secs_f64()),
                None => format!("({} still there: {:?})", self.leftover.len(), &self.leftover[..self.leftover.len().min(10)]),
            },
            self.indexed,
            self.final_keys,
            self.baseline_keys,
        ));
        out.push_str(&format!(
            "presence: {} entries, member sets {}, for {} connected steady clients\n",
            self.presence_entries, self.member_entries, self.expected_members
        ));
        out.push_str(if self.passed() {
            "soak: PASS\n"
        } else {
            "soak: FAIL\n"
        });
        out
    }
}

/// Runs one soak against hubs already up.
pub async fn run(load: Load, hubs: Vec<HubPid>, redis_url: &str, plan: Plan) -> Result<Outcome> {
    let mut redis = RedisProbe::connect(redis_url).await?;
    let mut csv = match &plan.csv {
        Some(path) => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(f, "{}", csv_header(&hubs))?;
            Some(f)
        }
        None => None,
    };
    let mut driver = Driver::start(load).await?;
    let baseline_keys = redis.dbsize().await?;
    driver.start_churn();
    let counters = driver.counters.clone();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut tick = tokio::time::interval(plan.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = started.elapsed();
        let (rss_kib, fds, redis_used_memory, redis_keys, abandoned_keys) =
            measure(&hubs, &mut redis, ABANDONED_KEYS).await?;
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let row = Row {
            t_secs: t.as_secs_f64(),
            rss_kib,
            fds,
            redis_used_memory,
            redis_keys,
            abandoned_keys,
            connected: c(&counters.connected),
            broadcasts: c(&counters.broadcasts),
            deliveries: c(&counters.deliveries),
            resumes: c(&counters.resumes),
            abandoned_sessions: c(&counters.abandoned_sessions),
        };
        if let Some(f) = csv.as_mut() {
            writeln!(f, "{}", csv_line(&row))?;
            f.flush()?;
        }
        rows.push(row);
        if t >= plan.duration {
            break;
        }
    }

    driver.stop_churn().await?;
    let stopped = Instant::now();
    let index_keys = redis.keys_matching(SESSION_INDEX_KEYS).await?;
    let (leftover, indexed, final_keys, drained_after) = loop {
        let leftover = redis.keys_matching(ABANDONED_KEYS).await?;
        // Inside the index sorted sets, where DBSIZE does not see them.
        let indexed = redis
            .zset_members_with_prefix(&index_keys, ABANDONED_PREFIX)
            .await?;
        let keys = redis.dbsize().await?;
        if leftover.is_empty() && indexed == 0 && keys <= baseline_keys {
            break (leftover, indexed, keys, Some(stopped.elapsed()));
        }
        if stopped.elapsed() >= plan.drain_bound {
            break (leftover, indexed, keys, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let presence_keys = redis.keys_matching(STEADY_PRESENCE_KEYS).await?;
    let presence_entries = redis.hlen_sum(&presence_keys).await?;
    let member_keys = redis.keys_matching(MEMBER_SET_KEYS).await?;
    let member_entries = redis.scard_sum(&member_keys).await?;
    let expected_members = driver.load.steady_clients();
    let driver_summary = counters.summary();
    let resumes = counters.resumes.load(Ordering::Relaxed);
    let recovered = counters.recovered.load(Ordering::Relaxed);
    let abandoned_sessions = counters.abandoned_sessions.load(Ordering::Relaxed);
    driver.shutdown().await;

    let warmup_end = plan.duration.as_secs_f64() * plan.warmup_fraction;
    let verdicts = series(&hubs, &rows)
        .iter()
        .filter_map(|s| judge(&s.name, &s.points, warmup_end, s.relative))
        .collect();
    Ok(Outcome {
        rows,
        verdicts,
        warmup_end,
        baseline_keys,
        final_keys,
        leftover,
        indexed,
        drained_after,
        expected_members,
        presence_entries,
        member_entries,
        driver_summary,
        resumes,
        recovered,
        abandoned_sessions,
    })
}
