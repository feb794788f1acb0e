//! The soak driver (issue 22, docs/reliability.md §4), against hubs you
//! run yourself on loopback (`scripts/soak` starts Redis, three hubs and
//! HAProxy and runs this): steady broadcasts and churn for `--secs`, each
//! hub's RSS and open fds and Redis's memory and key count sampled every
//! `--sample-secs` into `--csv`, then the verdicts. Exits 1 when a series
//! grows beyond its noise, when abandoned sessions' keys outlive
//! `--drain-secs`, or when presence holds other entries than the
//! connected clients.
//!
//! ```text
//! cargo run --example soak -- --url ws://127.0.0.1:8002/ \
//!     --hub hub1=1234 --hub-pid-file run/cluster/hub2.pid --redis-url redis://127.0.0.1:6380 \
//!     --secs 600 --sample-secs 10 --csv soak.csv
//! ```

mod driver;
mod judge;
mod run;
mod sample;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use driver::Load;
use run::Plan;
use sample::HubPid;

const USAGE: &str = "usage: soak --url WS_URL... (--hub NAME=PID | --hub-pid-file FILE)... --redis-url URL
  [--secs 180] [--sample-secs 5] [--warmup-fraction 0.2] [--drain-secs 60] [--csv FILE] [--summary FILE]
  [--sessions 12] [--subscribers 24] [--rate 30] [--resumes-per-sec 5] [--abandoned-per-sec 1]";

/// Longest run and drain accepted (a week).
const MAX_SECS: f64 = 7.0 * 86_400.0;

struct Args {
    load: Load,
    plan: Plan,
    hubs: Vec<HubPid>,
    redis_url: String,
    summary: Option<PathBuf>,
}

fn parse_args(raw: Vec<String>) -> Result<Args> {
    let mut load = Load {
        urls: Vec::new(),
        sessions: 12,
        subscribers: 24,
        broadcasts_per_sec: 30.0,
        resumes_per_sec: 5.0,
        abandoned_per_sec: 1.0,
    };
    let mut plan = Plan {
        duration: Duration::from_secs(180),
        sample_every: Duration::from_secs(5),
        warmup_fraction: 0.2,
        drain_bound: Duration::from_secs(60),
        csv: None,
    };
    let mut hubs = Vec::new();
    let mut redis_url = None;
    let mut summary = None;
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| -> Result<f64> {
            let n: f64 = v
                .parse()
                .with_context(|| format!("{flag}: not a number: {v}"))?;
            if !n.is_finite() || n < 0.0 {
                bail!("{flag}: must be a finite number >= 0");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--url" => {
                if !(value.starts_with("ws://127.") || value.starts_with("ws://localhost")) {
                    bail!("--url: only loopback ws:// URLs ({value})");
                }
                load.urls.push(value);
            }
            "--hub" => {
                let (name, pid) = value.split_once('=').context("--hub NAME=PID")?;
                hubs.push(HubPid {
                    name: name.into(),
                    pid: pid.parse().context("--hub: PID")?,
                });
            }
            "--hub-pid-file" => {
                let path = PathBuf::from(&value);
                let pid = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {value}"))?
                    .trim()
                    .parse()
                    .with_context(|| format!("{value}: not a PID"))?;
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or(value);
                hubs.push(HubPid { name, pid });
            }
            "--redis-url" => redis_url = Some(value),
            "--secs" => plan.duration = Duration::from_secs_f64(num(&value)?.clamp(1.0, MAX_SECS)),
            "--sample-secs" => {
                plan.sample_every = Duration::from_secs_f64(num(&value)?.clamp(0.5, 3600.0))
            }
            "--warmup-fraction" => plan.warmup_fraction = num(&value)?.min(0.9),
            "--drain-secs" => {
                plan.drain_bound = Duration::from_secs_f64(num(&value)?.min(MAX_SECS))
            }
            "--csv" => plan.csv = Some(value.into()),
            "--summary" => summary = Some(PathBuf::from(value)),
            "--sessions" => load.sessions = num(&value)?.clamp(1.0, 1000.0) as usize,
            "--subscribers" => load.subscribers = num(&value)?.min(10_000.0) as usize,
            "--rate" => load.broadcasts_per_sec = num(&value)?.clamp(0.01, 10_000.0),
            "--resumes-per-sec" => load.resumes_per_sec = num(&value)?.min(10_000.0),
            "--abandoned-per-sec" => load.abandoned_per_sec = num(&value)?.min(1000.0),
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if load.urls.is_empty() || hubs.is_empty() {
        bail!("at least one --url and one hub are needed\n{USAGE}");
    }
    let redis_url = redis_url.with_context(|| format!("--redis-url is needed\n{USAGE}"))?;
    Ok(Args {
        load,
        plan,
        hubs,
        redis_url,
        summary,
    })
}

#[tokio::main]
async fn main() {
    let code = match real_main().await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("soak: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

async fn real_main() -> Result<bool> {
    let args = parse_args(std::env::args().skip(1).collect())?;
    eprintln!(
        "soak: {} s, {} steady sessions x ({} subscribers + 1 publisher), {} broadcasts/s, {} resumes/s, {} abandoned sessions/s, sampling every {} s",
        args.plan.duration.as_secs(),
        args.load.sessions,
        args.load.subscribers,
        args.load.broadcasts_per_sec,
        args.load.resumes_per_sec,
        args.load.abandoned_per_sec,
        args.plan.sample_every.as_secs_f64()
    );
    let outcome = run::run(args.load, args.hubs, &args.redis_url, args.plan).await?;
    let report = outcome.report();
    print!("{report}");
    if let Some(path) = args.summary {
        std::fs::write(&path, &report)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(outcome.passed())
}
