//! The soak's CI form (docs/reliability.md §4): the driver of
//! `scripts/soak` (examples/soak) for `SOAK_SECS` (default 180) against
//! three spawned hubs on a private redis-server — spawned because each
//! hub's RSS and open fds are what is measured. Every series must be flat
//! after warm-up, abandoned sessions' keys must expire, and presence must
//! hold exactly the connected clients. Plus the flatness criterion itself.

mod support;

#[path = "../examples/soak/driver.rs"]
mod driver;
#[path = "../examples/soak/judge.rs"]
mod judge;
#[path = "../examples/soak/run.rs"]
mod run;
#[path = "../examples/soak/sample.rs"]
mod sample;

use std::time::Duration;

use support::*;

/// Short expiry settings, as scripts/soak sets them (SESSION_IDLE_TTL_MS
/// 10 s here: a 3-minute run needs the abandoned sessions' lifetime well
/// inside its warm-up).
const SOAK_HUB_ENV: &[(&str, &str)] = &[
    ("SESSION_IDLE_TTL_MS", "10000"),
    ("SESSION_LOG_TTL_MS", "5000"),
    ("SESSION_LOG_LEN", "50"),
    ("HEARTBEAT_MS", "1000"),
    ("PRESENCE_TTL_MS", "3000"),
];

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180)
        .max(30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_three_hubs_stay_flat_under_churn_and_abandoned_sessions_expire() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut hubs = Vec::new();
    for i in 1..=3 {
        let id = format!("soak-hub{i}");
        let mut envs = SOAK_HUB_ENV.to_vec();
        envs.push(("INSTANCE_ID", &id));
        hubs.push(HubProcess::start(&["--redis-url", &redis_url], &envs).await);
    }
    // Few sessions, each busy, joined and resumed all along: a hub keeps
    // a session's events while a join of it is under way (hub::recent),
    // so what it holds stays small and churns.
    let load = driver::Load {
        urls: hubs.iter().map(|h| h.ws_url()).collect(),
        sessions: 2,
        subscribers: 12,
        broadcasts_per_sec: 30.0,
        resumes_per_sec: 3.0,
        abandoned_per_sec: 1.0,
    };
    let secs = soak_secs();
    let plan = run::Plan {
        duration: Duration::from_secs(secs),
        sample_every: Duration::from_secs(3),
        // The first abandoned sessions live ~15 s, the allocators
        // settle: at 3 minutes 72 s of warm-up, 108 s judged.
        warmup_fraction: 0.4,
        drain_bound: Duration::from_secs(60),
        csv: std::env::var_os("SOAK_CSV").map(Into::into),
    };
    let pids = hubs
        .iter()
        .enumerate()
        .map(|(i, h)| sample::HubPid {
            name: format!("hub{}", i + 1),
            pid: h.pid(),
        })
        .collect();
    let outcome = run::run(load, pids, &redis_url, plan)
        .await
        .expect("the soak ran");
    let report = outcome.report();
    println!("{report}");
    assert!(outcome.all_flat(), "a series grows:\n{report}");
    assert!(
        outcome.drained(),
        "abandoned sessions' keys stayed:\n{report}"
    );
    assert!(outcome.presence_exact(), "presence is off:\n{report}");
    assert!(
        outcome.abandoned_sessions >= secs / 2,
        "too few sessions abandoned:\n{report}"
    );
    assert!(outcome.resumes >= secs, "too few resumes:\n{report}");
    assert_eq!(
        outcome.recovered, outcome.resumes,
        "a resume was not recovered:\n{report}"
    );
}

/// Points `t = 0, 10, ..` with `y = base + slope × t` and an alternating
/// ±`noise`.
fn series(n: usize, base: f64, slope: f64, noise: f64) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let t = i as f64 * 10.0;
            let wiggle = if i % 2 == 0 { noise } else { -noise };
            (t, base + slope * t + wiggle)
        })
        .collect()
}

#[test]
fn soak_judge_calls_a_series_growing_beyond_its_noise_not_flat() {
    // 100 MiB growing 3 % over the window, noise ±0.1 %.
    let points = series(61, 100_000.0, 3_000.0 / 600.0, 100.0);
    let v = judge::judge("rss", &points, 0.0, judge::RELATIVE_TOLERANCE).expect("enough points");
    assert!(!v.flat, "{}", v.line());
    assert!((v.growth - 3_000.0).abs() < 1.0, "{}", v.line());
}

/// The abandoned sessions' keys may grow by a quarter (their lifetime
/// stretches on a busy machine), not by what a leak adds: their whole
/// count again.
#[test]
fn soak_judge_lets_a_churning_series_stretch_by_a_quarter_not_double() {
    // 48 keys on average, noise ±1.
    let stretched = series(37, 44.0, 9.0 / 360.0, 1.0);
    assert!(
        !judge::judge("keys", &stretched, 0.0, judge::RELATIVE_TOLERANCE)
            .expect("points")
            .flat
    );
    let v = judge::judge("keys", &stretched, 0.0, judge::CHURN_TOLERANCE).expect("points");
    assert!(v.flat, "{}", v.line());
    let leaking = series(37, 30.0, 40.0 / 360.0, 1.0);
    let v = judge::judge("keys", &leaking, 0.0, judge::CHURN_TOLERANCE).expect("points");
    assert!(!v.flat, "{}", v.line());
}

#[test]
fn soak_judge_calls_noise_and_shrinking_flat_and_skips_the_warm_up() {
    // Noisy but level after a steep warm-up ramp (t < 100).
    let mut points: Vec<(f64, f64)> = (0..10)
        .map(|i| (i as f64 * 10.0, i as f64 * 1_000.0))
        .collect();
    points.extend(
        series(60, 10_000.0, 0.0, 500.0)
            .into_iter()
            .map(|(t, y)| (t + 100.0, y)),
    );
    let v = judge::judge("fds", &points, 100.0, judge::RELATIVE_TOLERANCE).expect("enough points");
    assert!(v.flat, "{}", v.line());
    // Memory given back is no leak.
    let shrinking = series(30, 50_000.0, -100.0, 10.0);
    assert!(
        judge::judge("rss", &shrinking, 0.0, judge::RELATIVE_TOLERANCE)
            .expect("points")
            .flat
    );
}
