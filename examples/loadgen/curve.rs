//! `loadgen curve` (issue 20, "The cost curve"): CPU per delivery, delivery
//! latency and idle memory at 1 000 to 100 000 connections, on hubs or on a
//! NATS server (WebSocket listener) as a reference.
//!
//! One process may hold at most ~20 000 descriptors here, so the parent
//! process holds no connection: it starts `--shards` copies of itself
//! (`--shard i/n`), each holding at most ~15 000 connections from loopback
//! source addresses of its own (`127.(10+i).x.y`, 200 connections per
//! address: the hub caps one address at `MAX_CONNECTIONS_PER_IP`, and each
//! address has its own ephemeral ports), and talks to them over their
//! stdin/stdout:
//!
//! 1. each shard connects and registers its sessions (a session never spans
//!    shards; its members go round-robin over the `--url`s, so a session
//!    of 10 on 5 hubs has 2 members on each), reads everything, waits until
//!    registration's frames stopped and prints `READY`;
//! 2. the parent waits until the hubs' `VmRSS` settled (idle memory per
//!    connection), samples the hubs' idle CPU for `--idle-secs`, then reads
//!    CPU (`/proc/PID/stat` of `--pid`s and `--other-pid`s), Redis `INFO
//!    commandstats` (`--redis`) and the hubs' `/metrics`, and sends `GO`;
//! 3. each shard publishes the events of its own sessions on one shared
//!    schedule (`--deliveries-per-sec` in all, for `--seconds`), from the
//!    session's first member; the other members receive (latency = receive
//!    time - the send time stamped in the payload, one clock);
//! 4. once every expected delivery arrived (or nothing moved for
//!    `--idle-timeout-secs`), each shard prints `DONE` and a latency
//!    histogram; the parent reads CPU, Redis and metrics again, tells the
//!    shards to exit and prints the figures and one `RESULT` line.
//!
//! Shapes: `--big S` puts S connections in one session (1 publisher, S-1
//! subscribers; the only session that gets events) and the other
//! connections, idle, in sessions of `--per-session`; without `--big`
//! every connection is in a session of `--per-session` and every session
//! gets events (round-robin).
//!
//! `--proto nats`: the same over a NATS server's WebSocket listener (text
//! protocol: `CONNECT`, `SUB subject sid`, `PUB subject n`, `MSG`, and
//! `PONG` to its `PING`); a session is a subject, the publisher does not
//! subscribe.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use super::{
    CpuTicks, Head, PUBLISHER_ID, READ_BUFFER, SOURCE_NET, Stamp, Ws, check_loopback,
    clock_ticks_per_sec, connect_spread, cpu_ticks, now_micros, raise_fd_limit, register, rss_kib,
    settle_rss, total_cpu_ticks,
};

const USAGE: &str =
    "usage: loadgen curve --url ws://127.0.0.1:PORT/... [--proto hub|nats] --connections N
  [--big S [--big-first]] [--per-session 10] [--deliveries-per-sec 20000] [--seconds 30] [--payload-bytes 100]
  [--pid PID]... [--other-pid NAME=PID]... [--redis 127.0.0.1:PORT] [--idle-secs 10]
  [--shards 0 (auto: one per 15000 connections)] [--connect-concurrency 100] [--big-concurrency 4]
  [--settle-timeout-secs 900] [--idle-timeout-secs 5] [--label TEXT ({n}: connections)]";

/// Connections one shard holds at most (the hard fd limit is 20 000).
const PER_SHARD: usize = 15_000;
/// Latency histogram: bucket = ln(1 + us) * SCALE (2 % wide buckets).
const SCALE: f64 = 50.0;
const BUCKETS: usize = 1_200;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Hub,
    Nats,
    /// Socket.IO 4 (Engine.IO 4) over WebSocket: bench/socketio/server.js.
    SocketIo,
}

#[derive(Debug, Clone)]
struct CurveArgs {
    raw: Vec<String>,
    proto: Proto,
    urls: Vec<String>,
    pids: Vec<u32>,
    others: Vec<(String, u32)>,
    redis: Option<String>,
    connections: usize,
    big: usize,
    per_session: usize,
    deliveries_per_sec: f64,
    seconds: f64,
    payload_bytes: usize,
    idle_secs: f64,
    shards: usize,
    shard: Option<usize>,
    run_id: u64,
    connect_concurrency: usize,
    big_concurrency: usize,
    /// Measure the big session alone first, then with the idle rest.
    big_first: bool,
    settle_timeout: Duration,
    idle_timeout: Duration,
    label: String,
}

fn parse(raw: Vec<String>) -> Result<CurveArgs> {
    let mut a = CurveArgs {
        raw: raw.clone(),
        proto: Proto::Hub,
        urls: Vec::new(),
        pids: Vec::new(),
        others: Vec::new(),
        redis: None,
        connections: 1000,
        big: 0,
        per_session: 10,
        deliveries_per_sec: 20_000.0,
        seconds: 30.0,
        payload_bytes: 100,
        idle_secs: 10.0,
        shards: 0,
        shard: None,
        run_id: now_micros(),
        connect_concurrency: 100,
        big_concurrency: 4,
        big_first: false,
        settle_timeout: Duration::from_secs(900),
        idle_timeout: Duration::from_secs(5),
        label: String::new(),
    };
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        if flag == "--big-first" {
            a.big_first = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        let int = || -> Result<u64> {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} takes a whole number, not `{value}`"))
        };
        let float = || -> Result<f64> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| anyhow!("{flag} takes a number, not `{value}`"))
        };
        match flag.as_str() {
            "--proto" => {
                a.proto = match value.as_str() {
                    "hub" => Proto::Hub,
                    "nats" => Proto::Nats,
                    "socketio" => Proto::SocketIo,
                    _ => bail!("--proto takes hub, nats or socketio"),
                }
            }
            "--url" => a.urls.push(check_loopback(&value)?),
            "--pid" => a.pids.push(int()? as u32),
            "--hub-pid-file" => {
                let text = std::fs::read_to_string(&value)
                    .with_context(|| format!("reading --hub-pid-file {value}"))?;
                a.pids.push(text.trim().parse().context("a pid")?);
            }
            "--other-pid" => {
                let (name, pid) = value
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--other-pid takes NAME=PID"))?;
                a.others
                    .push((name.to_string(), pid.parse().context("--other-pid: a pid")?));
            }
            "--redis" => a.redis = Some(value),
            "--connections" | "--clients" => a.connections = int()? as usize,
            "--big" => a.big = int()? as usize,
            "--per-session" => a.per_session = (int()? as usize).max(2),
            "--deliveries-per-sec" => a.deliveries_per_sec = float()?,
            "--seconds" => a.seconds = float()?,
            "--payload-bytes" => a.payload_bytes = int()? as usize,
            "--idle-secs" => a.idle_secs = float()?,
            "--shards" => a.shards = int()? as usize,
            "--shard" => {
                let (i, n) = value
                    .split_once('/')
                    .ok_or_else(|| anyhow!("--shard takes i/n"))?;
                a.shard = Some(i.parse().context("--shard i/n")?);
                a.shards = n.parse().context("--shard i/n")?;
            }
            "--source-net" => {
                let net: u8 = value.parse().context("--source-net takes 1..=254")?;
                if net == 0 || net == 255 {
                    bail!("--source-net takes 1..=254");
                }
                SOURCE_NET.store(net, Ordering::Relaxed);
            }
            "--run-id" => a.run_id = int()?,
            "--connect-concurrency" => a.connect_concurrency = (int()? as usize).max(1),
            "--big-concurrency" => a.big_concurrency = (int()? as usize).max(1),
            "--settle-timeout-secs" => a.settle_timeout = Duration::from_secs(int()?),
            "--idle-timeout-secs" => a.idle_timeout = Duration::from_secs(int()?),
            // `{n}` in the label: the connections of the measurement.
            "--label" => a.label = value,
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    if a.urls.is_empty() {
        bail!("curve needs at least one --url\n{USAGE}");
    }
    if a.connections < 2 {
        bail!("--connections must be at least 2");
    }
    if a.big == 1 || a.big > a.connections {
        bail!("--big must be 0 or 2..=--connections");
    }
    if a.big_first && (a.big == 0 || a.big == a.connections) {
        bail!("--big-first needs --big below --connections");
    }
    if a.shards == 0 {
        a.shards = a.connections.div_ceil(PER_SHARD).max(1);
    }
    if let Some(i) = a.shard
        && i >= a.shards
    {
        bail!("--shard {i}/{}: i must be below n", a.shards);
    }
    let mut seen = std::collections::HashSet::new();
    a.pids.retain(|p| seen.insert(*p));
    Ok(a)
}

/// One session of the plan.
#[derive(Clone, Copy, Debug)]
struct Sess {
    size: usize,
    active: bool,
    shard: usize,
}

/// Sessions and their shards, the same in every process.
fn plan(a: &CurveArgs) -> Vec<Sess> {
    let mut sessions = Vec::new();
    let mut rest = a.connections;
    if a.big > 0 {
        sessions.push(Sess {
            size: a.big,
            active: true,
            shard: 0,
        });
        rest -= a.big;
    }
    while rest > 0 {
        let size = a.per_session.min(rest);
        sessions.push(Sess {
            size,
            active: a.big == 0 && size >= 2,
            shard: 0,
        });
        rest -= size;
    }
    let mut load = vec![0usize; a.shards];
    for s in sessions.iter_mut() {
        let shard = if a.big > 0 && s.size == a.big && s.active {
            0
        } else {
            (0..a.shards).min_by_key(|&i| (load[i], i)).unwrap_or(0)
        };
        s.shard = shard;
        load[shard] += s.size;
    }
    sessions
}

/// Events per second in all: deliveries per second / receivers per event.
fn event_rate(a: &CurveArgs, sessions: &[Sess]) -> (f64, Vec<usize>) {
    let active: Vec<usize> = (0..sessions.len())
        .filter(|&i| sessions[i].active)
        .collect();
    let receivers: usize = active.iter().map(|&i| sessions[i].size - 1).sum();
    let per_event = receivers as f64 / active.len().max(1) as f64;
    (a.deliveries_per_sec / per_event.max(1.0), active)
}

pub async fn main(raw: Vec<String>) -> Result<()> {
    let a = parse(raw)?;
    if event_rate(&a, &plan(&a)).1.is_empty() {
        bail!("no session with a publisher and a receiver");
    }
    match a.shard {
        Some(i) => run_shard(&a, i).await,
        None => run_parent(&a).await,
    }
}

// ------------------------------------------------------------- parent

struct Child {
    proc: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    /// The next line starting with `word`; other lines are echoed.
    async fn expect(&mut self, i: usize, word: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, self.lines.next_line())
                .await
                .map_err(|_| anyhow!("shard {i}: no {word} within {}s", limit.as_secs()))??
                .ok_or_else(|| anyhow!("shard {i} exited before {word}"))?;
            if let Some(rest) = line.strip_prefix(word) {
                return Ok(rest.trim().to_string());
            }
            println!("shard {i}: {line}");
        }
    }
}

/// `key=value` pairs of a line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(f: &HashMap<String, String>, k: &str) -> u64 {
    f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

async fn run_parent(a: &CurveArgs) -> Result<()> {
    let sessions = plan(a);
    let (rate, active) = event_rate(a, &sessions);
    let events_total = (rate * a.seconds).round() as u64;
    println!(
        "mode=curve proto={:?} connections={} big={} per_session={} sessions={} active={} \
         shards={} deliveries/s={} events/s={rate:.2} seconds={} events={events_total} urls={}",
        a.proto,
        a.connections,
        a.big,
        a.per_session,
        sessions.len(),
        active.len(),
        a.shards,
        a.deliveries_per_sec,
        a.seconds,
        a.urls.join(",")
    );
    let rss_before: Vec<u64> = a.pids.iter().map(|&p| rss_kib(p)).collect::<Result<_>>()?;
    let exe = std::env::current_exe().context("own executable")?;
    let mut children = Vec::new();
    for i in 0..a.shards {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("curve")
            .args(&a.raw)
            .args(["--shard", &format!("{i}/{}", a.shards)])
            .args(["--source-net", &(10 + i).to_string()])
            .args(["--run-id", &a.run_id.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut proc = cmd.spawn().context("starting a shard")?;
        let stdin = proc.stdin.take().context("shard stdin")?;
        let stdout = proc.stdout.take().context("shard stdout")?;
        children.push(Child {
            proc,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
        });
    }
    let phases: Vec<usize> = if a.big_first {
        vec![a.big, a.connections]
    } else {
        vec![a.connections]
    };
    for (k, &n) in phases.iter().enumerate() {
        if k > 0 {
            for c in children.iter_mut() {
                c.stdin.write_all(b"FILL\n").await?;
                c.stdin.flush().await?;
            }
        }
        measure(a, &mut children, n, &rss_before).await?;
    }
    for c in children.iter_mut() {
        let _ = c.stdin.write_all(b"EXIT\n").await;
    }
    for c in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(60), c.proc.wait())
            .await
            .is_err()
        {
            let _ = c.proc.kill().await;
        }
    }

    Ok(())
}

/// One measurement: READY from every shard, memory, the idle window, GO,
/// DONE and the histograms; prints the figures and a RESULT line.
async fn measure(
    a: &CurveArgs,
    children: &mut [Child],
    connections: usize,
    rss_before: &[u64],
) -> Result<()> {
    let started = Instant::now();
    let mut connected = 0u64;
    let mut failed = 0u64;
    for (i, c) in children.iter_mut().enumerate() {
        let f = fields(&c.expect(i, "READY", a.settle_timeout).await?);
        connected += num(&f, "connected");
        failed += num(&f, "failed");
    }
    println!(
        "registered {connected} connections ({failed} failed) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut rss_per_conn = f64::NAN;
    if !a.pids.is_empty() {
        let after = settle_rss(&a.pids, Duration::from_secs(60)).await?;
        let delta: u64 = after
            .iter()
            .sum::<u64>()
            .saturating_sub(rss_before.iter().sum());
        rss_per_conn = delta as f64 / connected.max(1) as f64;
        println!(
            "servers VmRSS before={} KiB after={} KiB delta={delta} KiB => {rss_per_conn:.2} KiB per connection ({connected} connections)",
            rss_before.iter().sum::<u64>(),
            after.iter().sum::<u64>()
        );
    }
    let hz = clock_ticks_per_sec() as f64;
    // The idle window: what the servers and Redis do with nobody
    // publishing (pings, heartbeats, presence refresh), per second; its end
    // is the publish phase's start.
    let idle_start = Instant::now();
    let idle_cpu0 = total_cpu_ticks(&a.pids)?;
    let redis_idle0 = match &a.redis {
        Some(r) => Some(redis_counts(r).await?),
        None => None,
    };
    let metrics_idle0 = pubsub_total(a).await;
    tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
    let redis_before = match &a.redis {
        Some(r) => Some(redis_counts(r).await?),
        None => None,
    };
    let metrics_before = pubsub_total(a).await;
    let idle_cpu = total_cpu_ticks(&a.pids)?.since(idle_cpu0);
    let idle_window = idle_start.elapsed().as_secs_f64();
    let idle_cpu_per_sec = (idle_cpu.user + idle_cpu.system) as f64 / hz / idle_window;
    let idle_pct = idle_cpu_per_sec * 100.0;
    println!(
        "servers idle CPU before publishing: {idle_pct:.2} % of one core ({idle_window:.1}s sampled)"
    );
    let others_before = a
        .others
        .iter()
        .map(|(_, p)| cpu_ticks(*p))
        .collect::<Result<Vec<_>>>()?;
    let cpu_before = total_cpu_ticks(&a.pids)?;
    let t_cpu = Instant::now();
    let t0 = now_micros() + 300_000;
    for c in children.iter_mut() {
        c.stdin.write_all(format!("GO {t0}\n").as_bytes()).await?;
        c.stdin.flush().await?;
    }
    let mut sent = 0u64;
    let mut expected = 0u64;
    let mut received = 0u64;
    let mut dup = 0u64;
    let mut ooo = 0u64;
    let mut closed = 0u64;
    let mut errors = 0u64;
    let mut hist = vec![0u64; BUCKETS];
    let limit = Duration::from_secs_f64(a.seconds) + a.settle_timeout;
    for (i, c) in children.iter_mut().enumerate() {
        let f = fields(&c.expect(i, "DONE", limit).await?);
        sent += num(&f, "sent");
        expected += num(&f, "expected");
        received += num(&f, "received");
        dup += num(&f, "dup");
        ooo += num(&f, "ooo");
        closed += num(&f, "closed");
        errors += num(&f, "errors");
        let h = c.expect(i, "HIST", Duration::from_secs(30)).await?;
        for kv in h.split(',').filter(|s| !s.is_empty()) {
            if let Some((b, n)) = kv.split_once(':')
                && let (Ok(b), Ok(n)) = (b.parse::<usize>(), n.parse::<u64>())
                && b < BUCKETS
            {
                hist[b] += n;
            }
        }
    }
    let cpu = total_cpu_ticks(&a.pids)?.since(cpu_before);
    let window = t_cpu.elapsed().as_secs_f64();
    let others: Vec<(String, CpuTicks)> = a
        .others
        .iter()
        .zip(others_before)
        .map(|((name, p), before)| Ok((name.clone(), cpu_ticks(*p)?.since(before))))
        .collect::<Result<_>>()?;
    let redis_after = match &a.redis {
        Some(r) => Some(redis_counts(r).await?),
        None => None,
    };
    let metrics_after = pubsub_total(a).await;
    // Every delivery, duplicates included, cost the server a write.
    let deliveries = received + dup + ooo;
    let per = |ticks: u64| {
        if deliveries > 0 {
            ticks as f64 / hz * 1e6 / deliveries as f64
        } else {
            f64::NAN
        }
    };
    let total_samples: u64 = hist.iter().sum();
    let pct = |q: f64| -> f64 {
        if total_samples == 0 {
            return f64::NAN;
        }
        let want = ((total_samples as f64 * q).ceil() as u64).max(1);
        let mut acc = 0;
        for (b, &n) in hist.iter().enumerate() {
            acc += n;
            if acc >= want {
                return (((b as f64 + 0.5) / SCALE).exp() - 1.0) / 1000.0;
            }
        }
        f64::NAN
    };
    let lost = expected.saturating_sub(received);
    println!(
        "published {sent} events; deliveries {deliveries} of {expected} expected (lost {lost}, duplicated {dup}, out of order {ooo}); {closed} connections closed by the server; {errors} error frames to the publishers"
    );
    println!(
        "latency ms (2 % buckets): p50={:.2} p90={:.2} p99={:.2} p999={:.2} max={:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    let mut result = format!(
        "RESULT label={} proto={:?} connections={} connected={connected} big={} per_session={} events={sent} deliveries={deliveries} expected={expected} lost={lost} dup={dup} ooo={ooo} closed={closed} errors={errors} p50_ms={:.2} p99_ms={:.2} window_s={window:.1}",
        if a.label.is_empty() {
            "-".to_string()
        } else {
            a.label.replace("{n}", &connections.to_string())
        },
        a.proto,
        connections,
        a.big,
        a.per_session,
        pct(0.5),
        pct(0.99)
    );
    if !a.pids.is_empty() {
        println!(
            "server cpu (publish phase, {} pid(s)): {:.2}s over {window:.1}s => {:.2} us/delivery (user {:.2} us, system {:.2} us)",
            a.pids.len(),
            (cpu.user + cpu.system) as f64 / hz,
            per(cpu.user + cpu.system),
            per(cpu.user),
            per(cpu.system)
        );
        // Less what the servers spend idle in the same time.
        let net = if deliveries > 0 {
            ((cpu.user + cpu.system) as f64 / hz - idle_cpu_per_sec * window) * 1e6
                / deliveries as f64
        } else {
            f64::NAN
        };
        println!("server cpu less the idle rate ({idle_pct:.2} % of a core): {net:.2} us/delivery");
        result += &format!(
            " cpu_us={:.2} user_us={:.2} sys_us={:.2} cpu_net_us={net:.2} idle_cpu_pct={idle_pct:.2} rss_kib_per_conn={rss_per_conn:.2}",
            per(cpu.user + cpu.system),
            per(cpu.user),
            per(cpu.system)
        );
    }
    for (name, t) in &others {
        println!(
            "other cpu {name} (publish phase): {:.2} us/delivery (user {:.2} us, system {:.2} us), {:.1} % of one core",
            per(t.user + t.system),
            per(t.user),
            per(t.system),
            (t.user + t.system) as f64 / hz / window * 100.0
        );
        result += &format!(" {name}_us={:.2}", per(t.user + t.system));
    }
    if let (Some(b), Some(af), Some(i0)) = (redis_before, redis_after, redis_idle0) {
        let d = |k: &str| af.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0);
        let publishes = d("publish") + d("spublish");
        let ev = sent.max(1) as f64;
        // PUBLISHes with nobody publishing (heartbeats), scaled to the window.
        let idle_pub = |k: &str| b.get(k).copied().unwrap_or(0) - i0.get(k).copied().unwrap_or(0);
        let background = (idle_pub("publish") + idle_pub("spublish")) as f64 / idle_window * window;
        let net = (publishes as f64 - background) / ev;
        println!(
            "redis: PUBLISH less the idle rate ({background:.0} in the window): {net:.3} per event"
        );
        result += &format!(" redis_publish_net_per_event={net:.3}");
        println!(
            "redis: PUBLISH/SPUBLISH {publishes} ({:.3} per event), EVALSHA {} ({:.3} per event), commands {} ({:.2} per event)",
            publishes as f64 / ev,
            d("evalsha"),
            d("evalsha") as f64 / ev,
            d("total_commands_processed"),
            d("total_commands_processed") as f64 / ev
        );
        let mut by_command: Vec<(u64, &String)> = af
            .keys()
            .filter(|k| k.as_str() != "total_commands_processed")
            .map(|k| (d(k), k))
            .filter(|(n, _)| *n > 0)
            .collect();
        by_command.sort_unstable_by(|x, y| y.cmp(x));
        println!(
            "redis commands in the publish phase: {}",
            by_command
                .iter()
                .map(|(n, k)| format!("{k} {n} ({:.2}/event)", *n as f64 / ev))
                .collect::<Vec<_>>()
                .join(", ")
        );
        result += &format!(
            " redis_publish_per_event={:.3} redis_cmds_per_event={:.2}",
            publishes as f64 / ev,
            d("total_commands_processed") as f64 / ev
        );
    }
    if let (Some(b), Some(af), Some(i0)) = (metrics_before, metrics_after, metrics_idle0) {
        let per_event = (af - b) / sent.max(1) as f64;
        let background = (b - i0) / idle_window * window;
        let net = (af - b - background) / sent.max(1) as f64;
        println!(
            "hub_pubsub_messages_received_total{{channel=\"session\"}} (all hubs): +{} ({per_event:.3} per event; less the idle rate, {background:.0} in the window: {net:.3})",
            af - b
        );
        result += &format!(" pubsub_msgs_per_event={per_event:.3} pubsub_net_per_event={net:.3}");
    }
    match subscribers_per_event(a).await {
        Ok(Some(n)) => {
            println!(
                "redis pub/sub: each event's channel has {n:.3} subscribers (PUBSUB NUMSUB) => {n:.3} messages per event"
            );
            result += &format!(" numsub_per_event={n:.3}");
        }
        Ok(None) => {}
        Err(e) => println!("redis PUBSUB NUMSUB: {e:#}"),
    }
    println!("{result}");
    Ok(())
}

/// Command calls (`cmdstat_<name>` calls) and `total_commands_processed`
/// of a Redis server, by one plain RESP `INFO` over TCP.
async fn redis_counts(addr: &str) -> Result<HashMap<String, u64>> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("--redis {addr}"))?;
    s.write_all(b"*1\r\n$4\r\nINFO\r\n*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .await?;
    let mut buf = Vec::new();
    let mut out = HashMap::new();
    let mut replies = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    // Two bulk replies: `$len\r\n` + len bytes + `\r\n` each.
    while replies < 2 && Instant::now() < deadline {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut s, &mut chunk),
        )
        .await
        .map_err(|_| anyhow!("redis INFO timed out"))??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        replies = 0;
        let mut pos = 0;
        while let Some(eol) = find(&buf[pos..], b"\r\n") {
            let head = std::str::from_utf8(&buf[pos..pos + eol]).unwrap_or("");
            let Some(len) = head.strip_prefix('$').and_then(|l| l.parse::<usize>().ok()) else {
                bail!("redis INFO: unexpected reply {head}");
            };
            let start = pos + eol + 2;
            if buf.len() < start + len + 2 {
                break;
            }
            replies += 1;
            pos = start + len + 2;
        }
    }
    if replies < 2 {
        bail!("redis INFO: incomplete reply");
    }
    let text = String::from_utf8_lossy(&buf);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("total_commands_processed:") {
            out.insert(
                "total_commands_processed".into(),
                v.trim().parse().unwrap_or(0),
            );
        } else if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some((name, stats)) = rest.split_once(':')
        {
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.insert(name.to_string(), calls);
        }
    }
    Ok(out)
}

/// A RESP reply, as much of it as this tool reads.
enum Resp {
    Text(String),
    Int(i64),
    List(Vec<Resp>),
    Nil,
}

/// One reply from the start of `buf`: `Ok(None)` while incomplete.
fn resp_parse(buf: &[u8]) -> Result<Option<(Resp, usize)>> {
    let Some(eol) = find(buf, b"\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[1..eol]).context("RESP header")?;
    let next = eol + 2;
    match buf.first() {
        Some(b'+') => Ok(Some((Resp::Text(head.to_string()), next))),
        Some(b'-') => bail!("redis: {head}"),
        Some(b':') => Ok(Some((Resp::Int(head.parse().context("RESP int")?), next))),
        Some(b'$') => {
            let len: i64 = head.parse().context("RESP length")?;
            if len < 0 {
                return Ok(Some((Resp::Nil, next)));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&buf[next..end]).into_owned();
            Ok(Some((Resp::Text(text), end + 2)))
        }
        Some(b'*') => {
            let n: i64 = head.parse().context("RESP length")?;
            let mut items = Vec::new();
            let mut pos = next;
            for _ in 0..n.max(0) {
                match resp_parse(&buf[pos..])? {
                    Some((item, used)) => {
                        items.push(item);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::List(items), pos)))
        }
        _ => bail!("redis: unexpected reply"),
    }
}

/// One command to Redis (plain RESP over TCP), its reply.
async fn redis_cmd(addr: &str, args: &[String]) -> Result<Resp> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("--redis {addr}"))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((reply, _)) = resp_parse(&buf)? {
            return Ok(reply);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(left, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
            .await
            .map_err(|_| anyhow!("redis: no reply within 10 s"))??;
        if n == 0 {
            bail!("redis closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Pub/sub messages per event, exactly: the mean subscriber count
/// (`PUBSUB NUMSUB`: the instances subscribed, one message each) of the
/// channels of the sessions that get events.
async fn subscribers_per_event(a: &CurveArgs) -> Result<Option<f64>> {
    let (Some(redis), Proto::Hub) = (&a.redis, a.proto) else {
        return Ok(None);
    };
    let pattern = if a.big > 0 {
        format!("*{{s:{}}}:events", session_name(a, 0))
    } else {
        format!("*{{s:curve-{}-*}}:events", a.run_id)
    };
    let Resp::List(names) =
        redis_cmd(redis, &["PUBSUB".into(), "CHANNELS".into(), pattern]).await?
    else {
        bail!("PUBSUB CHANNELS: not a list");
    };
    let mut args = vec!["PUBSUB".to_string(), "NUMSUB".to_string()];
    args.extend(names.into_iter().filter_map(|n| match n {
        Resp::Text(t) => Some(t),
        _ => None,
    }));
    let channels = args.len() - 2;
    if channels == 0 {
        return Ok(Some(0.0));
    }
    let Resp::List(reply) = redis_cmd(redis, &args).await? else {
        bail!("PUBSUB NUMSUB: not a list");
    };
    let total: i64 = reply
        .iter()
        .skip(1)
        .step_by(2)
        .map(|r| match r {
            Resp::Int(n) => *n,
            _ => 0,
        })
        .sum();
    Ok(Some(total as f64 / channels as f64))
}

/// Sum of the session channels' `hub_pubsub_messages_received_total` over
/// the `--url`s (hubs reached directly); None for NATS or when a hub does
/// not answer.
async fn pubsub_total(a: &CurveArgs) -> Option<f64> {
    if a.proto != Proto::Hub || a.redis.is_none() {
        return None;
    }
    let mut sum = 0.0;
    for u in &a.urls {
        sum += super::pubsub_received(u).await.ok()?;
    }
    Some(sum)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// -------------------------------------------------------------- shard

/// What one shard's receivers counted.
struct Counters {
    /// Frames that are not a measured delivery (registration, presence).
    setup: AtomicU64,
    /// Deliveries with a sequence number above the connection's last.
    received: AtomicU64,
    dup: AtomicU64,
    ooo: AtomicU64,
    /// Connections the server closed (or that failed) after registering.
    closed: AtomicU64,
    /// Error frames the publishers got.
    errors: AtomicU64,
    hist: Vec<AtomicU64>,
    /// Measurements done (phase 1: the big session alone).
    phase: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            setup: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dup: AtomicU64::new(0),
            ooo: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            phase: AtomicU64::new(0),
        }
    }

    /// Zeroes what one measurement counts (before its READY).
    fn reset(&self) {
        for n in [
            &self.received,
            &self.dup,
            &self.ooo,
            &self.closed,
            &self.errors,
        ] {
            n.store(0, Ordering::Relaxed);
        }
        for n in &self.hist {
            n.store(0, Ordering::Relaxed);
        }
    }

    /// Sequence numbers of a later phase start above the earlier ones'.
    fn phase_base(&self) -> u64 {
        self.phase.load(Ordering::Relaxed) * 1_000_000_000
    }

    fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::Relaxed);
    }

    /// One measured delivery; `last` is the connection's highest seq.
    fn delivery(&self, stamp: Stamp, last: &mut Option<u64>) {
        let (Some(seq), Some(sent)) = (stamp.seq, stamp.t) else {
            self.setup.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let latency = now_micros().saturating_sub(sent);
        match *last {
            Some(l) if seq == l => {
                self.dup.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(l) if seq < l => {
                self.ooo.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                *last = Some(seq);
                self.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        let b = (((latency as f64) + 1.0).ln() * SCALE) as usize;
        self.hist[b.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

type Sink = Arc<Mutex<SplitSink<Ws, Message>>>;

async fn run_shard(a: &CurveArgs, me: usize) -> Result<()> {
    // A shard never outlives its parent (killed by a script's trap).
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    raise_fd_limit();
    READ_BUFFER.store(4096, Ordering::Relaxed);
    let sessions = plan(a);
    let mine: Vec<usize> = (0..sessions.len())
        .filter(|&s| sessions[s].shard == me)
        .collect();
    let pairs: Vec<(usize, usize)> = mine
        .iter()
        .flat_map(|&s| (0..sessions[s].size).map(move |j| (s, j)))
        .collect();
    // Each join of a session reads its member list, so joins of one big
    // session at once queue up in Redis (timeouts at 100 at once): the
    // big session registers --big-concurrency at a time, the rest
    // --connect-concurrency. A failed registration is retried twice.
    let (big_pairs, rest): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|&(s, _)| a.big > 0 && s == 0 && sessions[0].shard == me);
    let mut shard = Shard {
        me,
        counters: Arc::new(Counters::new()),
        sinks: HashMap::new(),
        receivers: HashMap::new(),
        connected: 0,
        failed: 0,
        stdin: tokio::io::BufReader::new(tokio::io::stdin()).lines(),
    };
    shard
        .register(a, &sessions, big_pairs, a.big_concurrency)
        .await;
    if a.big_first {
        // Phase 1: the big session alone, measured; then the idle rest.
        shard.measure(a, &sessions).await?;
        shard.wait_for("FILL").await?;
    }
    shard
        .register(a, &sessions, rest, a.connect_concurrency)
        .await;
    shard.measure(a, &sessions).await?;
    // Held until the parent read the servers' CPU, then dropped at exit.
    let _ = shard.wait_for("EXIT").await;
    std::process::exit(0);
}

/// One shard's connections and its line to the parent.
struct Shard {
    me: usize,
    counters: Arc<Counters>,
    sinks: HashMap<usize, Sink>,
    /// Receivers registered per session.
    receivers: HashMap<usize, u64>,
    connected: u64,
    failed: u64,
    stdin: tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
}

impl Shard {
    async fn register(
        &mut self,
        a: &CurveArgs,
        sessions: &[Sess],
        pairs: Vec<(usize, usize)>,
        width: usize,
    ) {
        let counters = self.counters.clone();
        let results: Vec<_> = futures_util::stream::iter(pairs)
            .map(|(s, j)| join(a, sessions, &counters, s, j))
            .buffer_unordered(width)
            .collect()
            .await;
        for r in results {
            match r {
                Ok((s, j, sink)) => {
                    self.connected += 1;
                    if let Some(sink) = sink {
                        self.sinks.insert(s, sink);
                    } else if j > 0 {
                        *self.receivers.entry(s).or_default() += 1;
                    }
                }
                Err(e) => {
                    if self.failed == 0 {
                        eprintln!("shard {}: {e:#}", self.me);
                    }
                    self.failed += 1;
                }
            }
        }
    }

    /// The next line from the parent starting with `word` (its rest).
    async fn wait_for(&mut self, word: &str) -> Result<String> {
        loop {
            let line = self
                .stdin
                .next_line()
                .await?
                .ok_or_else(|| anyhow!("no {word} from the parent"))?;
            if let Some(rest) = line.strip_prefix(word) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    /// READY once registration's frames stopped; on GO, this shard's part
    /// of the schedule; DONE and HIST once the deliveries arrived.
    async fn measure(&mut self, a: &CurveArgs, sessions: &[Sess]) -> Result<()> {
        let c = self.counters.clone();
        // Registration's frames (presence of each member to each other) done.
        super::wait_for_count(&c.setup, u64::MAX, Duration::from_secs(3), a.settle_timeout).await;
        c.reset();
        say(&format!(
            "READY connected={} failed={} setup_frames={}",
            self.connected,
            self.failed,
            c.setup.load(Ordering::Relaxed)
        ));
        let t0: u64 = self.wait_for("GO").await?.parse().context("GO t0")?;
        let (rate, active) = event_rate(a, sessions);
        // The shared schedule, in this process's clock (same machine).
        let start = Instant::now() + Duration::from_micros(t0.saturating_sub(now_micros()));
        let events = (rate * a.seconds).round() as u64;
        let filler = "x".repeat(a.payload_bytes);
        let mut seq: HashMap<usize, u64> = HashMap::new();
        let mut sent = 0u64;
        for e in 0..events {
            let s = active[(e % active.len() as u64) as usize];
            let Some(sink) = self.sinks.get(&s) else {
                continue;
            };
            tokio::time::sleep_until((start + Duration::from_secs_f64(e as f64 / rate)).into())
                .await;
            // Sequence numbers go on across phases (per connection order).
            let n = seq.entry(s).or_default();
            let payload = json!({"seq": c.phase_base() + *n, "t": now_micros(), "fill": filler});
            *n += 1;
            let frame = match a.proto {
                Proto::Hub => Message::Text(
                    json!({"type":"broadcast","payload":payload})
                        .to_string()
                        .into(),
                ),
                Proto::Nats => {
                    let body = payload.to_string();
                    Message::Binary(
                        format!("PUB {} {}\r\n{body}\r\n", session_name(a, s), body.len())
                            .into_bytes()
                            .into(),
                    )
                }
                // Engine.IO message (4), Socket.IO event (2): pub(room, text).
                Proto::SocketIo => Message::Text(
                    format!(
                        "42{}",
                        json!(["pub", session_name(a, s), payload.to_string()])
                    )
                    .into(),
                ),
            };
            if let Err(e) = sink.lock().await.send(frame).await {
                eprintln!("shard {}: publish to session {s} failed: {e}", self.me);
                continue;
            }
            sent += 1;
        }
        let expected: u64 = seq
            .iter()
            .map(|(s, &n)| n * self.receivers.get(s).copied().unwrap_or(0))
            .sum();
        // Until every expected delivery arrived, or nothing moved for a while.
        let seen = || {
            c.received.load(Ordering::Relaxed)
                + c.dup.load(Ordering::Relaxed)
                + c.ooo.load(Ordering::Relaxed)
        };
        let mut last = seen();
        let mut moved = Instant::now();
        while c.received.load(Ordering::Relaxed) < expected && moved.elapsed() < a.idle_timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = seen();
            if now != last {
                last = now;
                moved = Instant::now();
            }
        }
        say(&format!(
            "DONE sent={sent} expected={expected} received={} dup={} ooo={} closed={} errors={}",
            c.received.load(Ordering::Relaxed),
            c.dup.load(Ordering::Relaxed),
            c.ooo.load(Ordering::Relaxed),
            c.closed.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed)
        ));
        let hist: Vec<String> = c
            .hist
            .iter()
            .enumerate()
            .filter_map(|(b, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| format!("{b}:{n}"))
            })
            .collect();
        say(&format!("HIST {}", hist.join(",")));
        c.next_phase();
        Ok(())
    }
}

/// Connects and registers member `j` of session `s` (up to 3 attempts),
/// then reads its socket in a task of its own; a publisher's sink is
/// returned.
async fn join(
    a: &CurveArgs,
    sessions: &[Sess],
    counters: &Arc<Counters>,
    s: usize,
    j: usize,
) -> Result<(usize, usize, Option<Sink>)> {
    let url = &a.urls[(s + j) % a.urls.len()];
    let publisher = j == 0 && sessions[s].active;
    let name = session_name(a, s);
    let mut attempt = 0;
    let ws = loop {
        attempt += 1;
        let ws = match a.proto {
            Proto::Hub => {
                let id = if publisher {
                    PUBLISHER_ID.to_string()
                } else {
                    format!("c{j}")
                };
                register(url, &name, &id).await
            }
            Proto::Nats => nats_connect(url, (!publisher).then_some(&name)).await,
            Proto::SocketIo => sio_connect(url, (!publisher).then_some(&name)).await,
        };
        match ws {
            Ok(ws) => break ws,
            Err(e) if attempt >= 3 => return Err(e),
            Err(e) => {
                eprintln!("{name} member {j}: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    if publisher {
        let (sink, stream) = ws.split();
        let sink = Arc::new(Mutex::new(sink));
        tokio::spawn(drain(stream, sink.clone(), a.proto, counters.clone()));
        Ok((s, j, Some(sink)))
    } else {
        tokio::spawn(receive(ws, counters.clone(), a.proto));
        Ok((s, j, None))
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn session_name(a: &CurveArgs, s: usize) -> String {
    match a.proto {
        Proto::Hub | Proto::SocketIo => format!("curve-{}-{s}", a.run_id),
        Proto::Nats => format!("curve.{}.{s}", a.run_id),
    }
}

/// Reads a publisher's socket (registration frames, pings) until it ends.
async fn drain(
    mut stream: futures_util::stream::SplitStream<Ws>,
    sink: Sink,
    proto: Proto,
    c: Arc<Counters>,
) {
    let mut buf = Vec::new();
    while let Some(Ok(msg)) = stream.next().await {
        // An error answering a publish (its event reaches nobody).
        let error = match &msg {
            Message::Text(t) => t.as_str().contains("\"type\":\"error\""),
            Message::Binary(b) => b.starts_with(b"-ERR"),
            _ => false,
        } || (proto == Proto::SocketIo
            && matches!(&msg, Message::Text(t) if t.as_str().starts_with("44")));
        if error {
            c.errors.fetch_add(1, Ordering::Relaxed);
            if c.errors.load(Ordering::Relaxed) <= 3 {
                eprintln!(
                    "publisher got: {}",
                    String::from_utf8_lossy(&msg.clone().into_data())
                );
            }
        }
        if proto == Proto::SocketIo && matches!(&msg, Message::Text(t) if t.as_str() == "2") {
            let _ = sink.lock().await.send(Message::Text("3".into())).await;
        }
        if proto == Proto::Nats {
            buf.extend_from_slice(&msg.into_data());
            let pings = nats_parse(&mut buf, |_| {});
            for _ in 0..pings {
                let _ = sink
                    .lock()
                    .await
                    .send(Message::Binary(b"PONG\r\n".to_vec().into()))
                    .await;
            }
        }
    }
}

/// A receiver: counts deliveries (and everything else as setup frames).
async fn receive(mut ws: Ws, c: Arc<Counters>, proto: Proto) {
    let mut last = None;
    let mut buf = Vec::new();
    loop {
        let msg = match ws.next().await {
            Some(Ok(m)) => m,
            _ => {
                c.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match proto {
            Proto::Hub => {
                let Message::Text(t) = msg else {
                    if let Message::Close(_) = msg {
                        c.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    continue;
                };
                // Presence and registration frames need no parsing.
                if !t.as_str().contains("\"type\":\"broadcast\"") {
                    c.setup.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match serde_json::from_str::<Head>(t.as_str()) {
                    Ok(h) if h.kind == "broadcast" && h.payload.is_some() => {
                        if let Some(p) = h.payload {
                            c.delivery(p, &mut last);
                        }
                    }
                    _ => {
                        c.setup.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Proto::SocketIo => {
                let Message::Text(t) = msg else {
                    if let Message::Close(_) = msg {
                        c.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    continue;
                };
                let t = t.as_str();
                if t == "2" {
                    // Engine.IO ping: pong, or the server closes us.
                    if ws.send(Message::Text("3".into())).await.is_err() {
                        c.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    continue;
                }
                // 42["msg","<payload JSON>"]
                let stamp = t
                    .strip_prefix("42")
                    .and_then(|rest| serde_json::from_str::<(String, String)>(rest).ok())
                    .filter(|(event, _)| event == "msg")
                    .and_then(|(_, text)| serde_json::from_str::<Stamp>(&text).ok());
                match stamp {
                    Some(p) => c.delivery(p, &mut last),
                    None => {
                        c.setup.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Proto::Nats => {
                if let Message::Close(_) = msg {
                    c.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                buf.extend_from_slice(&msg.into_data());
                let pings = nats_parse(&mut buf, |payload| {
                    match serde_json::from_slice::<Stamp>(payload) {
                        Ok(p) => c.delivery(p, &mut last),
                        Err(_) => {
                            c.setup.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                for _ in 0..pings {
                    if ws
                        .send(Message::Binary(b"PONG\r\n".to_vec().into()))
                        .await
                        .is_err()
                    {
                        c.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }
}

/// Consumes whole NATS protocol lines (and MSG payloads) from `buf`,
/// calling `on_msg` with each MSG payload; returns the PINGs seen. What
/// is incomplete stays in `buf`.
fn nats_parse(buf: &mut Vec<u8>, mut on_msg: impl FnMut(&[u8])) -> usize {
    let mut pos = 0;
    let mut pings = 0;
    while let Some(eol) = find(&buf[pos..], b"\r\n") {
        let line = &buf[pos..pos + eol];
        if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
            let len = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split_whitespace().last())
                .and_then(|n| n.parse::<usize>().ok());
            let Some(len) = len else {
                // Not a MSG line we understand: skip it.
                pos += eol + 2;
                continue;
            };
            let start = pos + eol + 2;
            if buf.len() < start + len + 2 {
                break;
            }
            on_msg(&buf[start..start + len]);
            pos = start + len + 2;
        } else {
            if line == b"PING" {
                pings += 1;
            }
            pos += eol + 2;
        }
    }
    buf.drain(..pos);
    pings
}

/// A Socket.IO connection (Engine.IO 4 over WebSocket): the open packet,
/// CONNECT to the main namespace (`40`), and for a receiver
/// `join(room)` with an acknowledgement (`421[...]` answered by `431[]`).
async fn sio_connect(url: &str, room: Option<&str>) -> Result<Ws> {
    let work = async {
        let (mut ws, _) = connect_spread(url)
            .await
            .with_context(|| format!("connect {url}"))?;
        // 0{"sid":...} (open), then 40{"sid":...} (connected), then 431[].
        let mut stage = 0;
        for _ in 0..100 {
            let t = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => bail!("socket.io closed the connection"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            };
            let t = t.as_str();
            if t == "2" {
                ws.send(Message::Text("3".into())).await?;
                continue;
            }
            if t.starts_with("44") {
                bail!("socket.io: {t}");
            }
            match stage {
                0 if t.starts_with('0') => {
                    ws.send(Message::Text("40".into())).await?;
                    stage = 1;
                }
                1 if t.starts_with("40") => match room {
                    None => return Ok(ws),
                    Some(r) => {
                        ws.send(Message::Text(format!("421{}", json!(["join", r])).into()))
                            .await?;
                        stage = 2;
                    }
                },
                2 if t.starts_with("431") => return Ok(ws),
                _ => {}
            }
        }
        bail!("socket.io: no connect/join acknowledgement")
    };
    tokio::time::timeout(super::REGISTER_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("socket.io connect {url}: timed out"))?
}

/// A NATS connection over its WebSocket listener: CONNECT (and SUB to
/// `subject`), confirmed by the PONG to a PING.
async fn nats_connect(url: &str, subject: Option<&str>) -> Result<Ws> {
    let work = async {
        let (mut ws, _) = connect_spread(url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let mut hello =
            String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n");
        if let Some(s) = subject {
            hello += &format!("SUB {s} 1\r\n");
        }
        hello += "PING\r\n";
        ws.send(Message::Binary(hello.into_bytes().into())).await?;
        let mut buf = Vec::new();
        loop {
            match ws.next().await {
                Some(Ok(m)) => buf.extend_from_slice(&m.into_data()),
                Some(Err(e)) => return Err(e.into()),
                None => bail!("nats closed the connection"),
            }
            let text = String::from_utf8_lossy(&buf);
            if let Some(err) = text.lines().find(|l| l.starts_with("-ERR")) {
                bail!("nats: {err}");
            }
            if text.contains("PONG\r\n") {
                return Ok(ws);
            }
            if buf.len() > 1 << 20 {
                bail!("nats: no PONG in the first MiB");
            }
        }
    };
    tokio::time::timeout(super::REGISTER_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("nats connect {url}: timed out"))?
}
