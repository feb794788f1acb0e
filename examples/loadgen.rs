//! Benchmarks against hubs you run yourself on loopback (issue 9).
//!
//! Three modes:
//!
//! * `idle`: registers `--clients` WebSocket clients (`--per-session` per
//!   session), waits until the hub has sent every frame registration causes
//!   and its memory settled, and prints the hub's resident memory per
//!   connection (`VmRSS` of `/proc/<pid>/status`, before connecting vs
//!   after).
//! * `fanout` (the default, and the tool's historic behaviour): registers
//!   `--subscribers` clients in one session, spread round-robin over the
//!   `--url`s, then one publisher sends `--messages` broadcasts of
//!   `--payload-bytes` at `--rate` per second (0 = as fast as the socket
//!   takes them). Prints deliveries/s, latency percentiles, lost, duplicated
//!   and out-of-order deliveries, evicted subscribers, and the CPU time the
//!   hub processes (`--pid`) spent per delivery during the publish phase,
//!   user and system time separately.
//! * `sessions` (issue 14): registers `--clients` clients, `--per-session`
//!   per session, all on the *first* `--url`; then the first client of each
//!   session sends `--messages` broadcasts in all (round-robin over the
//!   sessions, at `--rate` per second). Reads every `--url`'s
//!   `hub_pubsub_messages_received_total` before and after the publish
//!   phase and prints each hub's share and the Redis pub/sub messages per
//!   event (per-session channels: only instances with clients of a session
//!   receive its events).
//!
//! ```text
//! cargo run --release --example loadgen -- sessions --url ws://127.0.0.1:8001/ \
//!     --url ws://127.0.0.1:8002/ --url ws://127.0.0.1:8003/ --clients 600 --per-session 2 \
//!     --messages 3000 --rate 500
//! cargo run --release --example loadgen -- idle --url ws://127.0.0.1:8002/ --pid 1234
//! cargo run --release --example loadgen -- fanout --url ws://127.0.0.1:8002/ \
//!     --subscribers 1000 --messages 1000 --rate 0 --payload-bytes 100 --pid 1234
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:8002/ --clients 200 --messages 500
//! ```
//!
//! The hub's own limits are raised with its documented settings, never by
//! this tool: a burst needs `RATE_LIMIT_PER_SEC` / `RATE_LIMIT_BURST` above
//! `--messages` (the publisher is one connection), and `OUTBOUND_QUEUE_LEN`
//! decides whether subscribers that fall behind are evicted (close 1008).
//! See `docs/performance.md` for the measured numbers and exact commands.
//!
//! * `sends` (issue 22): `--clients` clients, each in a session of its
//!   own on the first `--url`, send `--messages` WhatsApp sends in all,
//!   each waiting for its answer before the next: acknowledged sends per
//!   second and the latency of an answer, which with a data directory
//!   (DATA_DIR) includes its fsync. `scripts/bench-durability`.
//! * `curve` (issue 20): CPU per delivery, latency and idle memory from
//!   1 000 to 100 000 connections, spread over several processes and
//!   loopback source addresses, on hubs or on NATS; see `loadgen/curve.rs`
//!   and `scripts/bench-curve`.
//!
//! Only loopback URLs are accepted; every loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

#[path = "loadgen/curve.rs"]
mod curve;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one connect + register may take before it counts as failed.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Client id of the fan-out publisher (receivers only count its broadcasts).
const PUBLISHER_ID: &str = "producer";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Idle,
    Fanout,
    Sessions,
    Sends,
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    urls: Vec<String>,
    pids: Vec<u32>,
    /// fanout: other processes (or kernel threads) whose CPU over the
    /// publish phase is printed apart from the hubs', by name.
    others: Vec<(String, u32)>,
    /// idle: clients to register; fanout: subscribers.
    clients: usize,
    per_session: usize,
    messages: usize,
    payload_bytes: usize,
    rate_per_sec: f64,
    connect_concurrency: usize,
    /// fanout: a subscriber that saw nothing for this long after the last
    /// publish stops waiting.
    idle_timeout: Duration,
    /// Upper bound for settling (frames caused by registration, memory).
    settle_timeout: Duration,
    /// idle: keep the clients connected this long after the measurement.
    hold: Duration,
    /// fanout: broadcasts per second of a second, small session (a
    /// publisher and one subscriber on the first URL) during the publish
    /// phase, whose latency shows how much the big fan-out delays others.
    probe_rate: f64,
    /// fanout: the subscribers read what arrived every this long instead
    /// of each frame as it comes (None): several frames per read, so a
    /// fan-out's receivers cost this machine a fraction of the CPU, as
    /// clients on other machines would; their latency then includes up to
    /// this interval.
    read_every: Option<Duration>,
    /// fanout: once every subscriber registered, this process's threads
    /// but the probe's run at this nice value (0 = unchanged): the
    /// receivers, sharing this machine's cores with the hub, then take
    /// only the CPU the hub and the probe leave, as receivers on other
    /// machines would take none of it.
    receivers_nice: i32,
    /// fanout: once every subscriber registered, this process's threads
    /// but the probe's run under SCHED_BATCH: same share of the CPU as
    /// before, but a receiver woken never preempts a running thread (the
    /// hub's), as receivers on other machines never would.
    receivers_batch: bool,
    /// fanout: the probe's hub, when not the first URL's: a control, the
    /// probe on a hub without the fan-out but on the same machine.
    probe_url: Option<String>,
}

const USAGE: &str = "usage: loadgen [idle|fanout|sessions] [--url ws://127.0.0.1:PORT/]... [--pid PID]... [--hub-pid-file FILE]...
  idle:   [--clients 10000] [--per-session 5] [--hold-secs 0]
  sessions: [--clients 100] [--per-session 5] [--messages 200] [--rate 0]
  sends:  [--clients 8] [--messages 2000] (WhatsApp sends, each answered before the next)
  fanout: [--subscribers|--clients 100] [--messages 200] [--rate 0] [--payload-bytes 100] [--idle-timeout-secs 10]
          [--probe-rate 0] (a second, small session's latency during the fan-out)
          [--read-every-ms 0] (subscribers read in bulk every N ms; 0 = each frame as it comes)
          [--receivers-nice 0] (all threads but the probe's at this nice value while publishing)
          [--receivers-policy other] (batch: all threads but the probe's under SCHED_BATCH while publishing)
          [--probe-url URL] (the probe on another hub: the machine's share of its latency)
          [--other-pid NAME=PID]... (CPU per delivery of other processes, printed apart)
  both:   [--connect-concurrency 100] [--settle-timeout-secs 120]";

fn parse_args(raw: Vec<String>) -> Result<Args> {
    let mut it = raw.into_iter().peekable();
    let mode = match it.peek().map(String::as_str) {
        Some("idle") => Mode::Idle,
        Some("fanout") => Mode::Fanout,
        Some("sessions") => Mode::Sessions,
        Some("sends") => Mode::Sends,
        Some("-h" | "--help") => bail!("{USAGE}"),
        // No mode word: the original loadgen flags, i.e. fanout.
        _ => Mode::Fanout,
    };
    if matches!(
        it.peek().map(String::as_str),
        Some("idle" | "fanout" | "sessions" | "sends")
    ) {
        it.next();
    }
    let mut args = Args {
        mode,
        urls: Vec::new(),
        pids: Vec::new(),
        others: Vec::new(),
        clients: if mode == Mode::Idle { 10_000 } else { 100 },
        per_session: 5,
        messages: 200,
        payload_bytes: 100,
        rate_per_sec: 0.0,
        connect_concurrency: 100,
        idle_timeout: Duration::from_secs(10),
        settle_timeout: Duration::from_secs(120),
        hold: Duration::ZERO,
        probe_rate: 0.0,
        read_every: None,
        receivers_nice: 0,
        receivers_batch: false,
        probe_url: None,
    };
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        let num = |what: &str| -> Result<u64> {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} takes {what}, not `{value}`"))
        };
        match flag.as_str() {
            "--url" => args.urls.push(check_loopback(&value)?),
            "--pid" => args.pids.push(num("a process id")? as u32),
            "--hub-pid-file" => {
                let text = std::fs::read_to_string(&value)
                    .with_context(|| format!("reading --hub-pid-file {value}"))?;
                let pid = text
                    .trim()
                    .parse()
                    .with_context(|| format!("{value} does not hold a pid"))?;
                args.pids.push(pid);
            }
            "--other-pid" => {
                let (name, pid) = value
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--other-pid takes NAME=PID, not `{value}`"))?;
                let pid = pid
                    .parse()
                    .with_context(|| format!("--other-pid {value}: not a pid"))?;
                args.others.push((name.to_string(), pid));
            }
            "--clients" | "--subscribers" => args.clients = num("a count")? as usize,
            "--per-session" => args.per_session = num("a count")?.max(1) as usize,
            "--messages" => args.messages = num("a count")? as usize,
            "--payload-bytes" => args.payload_bytes = num("a size in bytes")? as usize,
            "--rate" => {
                args.rate_per_sec = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r >= 0.0)
                    .ok_or_else(|| anyhow!("--rate takes messages per second (0 = burst)"))?
            }
            "--connect-concurrency" => args.connect_concurrency = num("a count")?.max(1) as usize,
            "--idle-timeout-secs" => args.idle_timeout = Duration::from_secs(num("seconds")?),
            "--settle-timeout-secs" => args.settle_timeout = Duration::from_secs(num("seconds")?),
            "--hold-secs" => args.hold = Duration::from_secs(num("seconds")?),
            "--probe-rate" => {
                args.probe_rate = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r >= 0.0)
                    .ok_or_else(|| anyhow!("--probe-rate takes messages per second (0 = off)"))?
            }
            "--probe-url" => args.probe_url = Some(check_loopback(&value)?),
            "--receivers-nice" => {
                args.receivers_nice = value
                    .parse::<i32>()
                    .ok()
                    .filter(|n| (0..=19).contains(n))
                    .ok_or_else(|| anyhow!("--receivers-nice takes a nice value, 0 to 19"))?
            }
            "--receivers-policy" => {
                args.receivers_batch = match value.as_str() {
                    "batch" => true,
                    "other" => false,
                    _ => bail!("--receivers-policy takes batch or other, not `{value}`"),
                }
            }
            "--read-every-ms" => {
                args.read_every = Some(num("milliseconds")?)
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    if args.urls.is_empty() {
        args.urls.push("ws://127.0.0.1:8002/".into());
    }
    // A hub's CPU or memory counted twice would skew the per-delivery figure.
    let mut seen_pids = std::collections::HashSet::new();
    args.pids.retain(|p| seen_pids.insert(*p));
    if args.mode == Mode::Idle && args.pids.is_empty() {
        bail!("idle needs the hub's --pid (or --hub-pid-file) to read its memory");
    }
    for &pid in &args.pids {
        rss_kib(pid).with_context(|| format!("--pid {pid}: cannot read /proc/{pid}/status"))?;
    }
    Ok(args)
}

/// Only hubs on this machine: the tool opens thousands of connections.
fn check_loopback(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("--url {url}: only ws:// URLs"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !loopback {
        bail!("--url {url}: only loopback hosts (127.0.0.0/8, ::1, localhost)");
    }
    Ok(url.to_string())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Soft fd limit raised to the hard one: idle mode holds one socket per
/// client. Returns the limit in effect.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// This process's threads but `except` (thread ids). Threads they start
/// later inherit what is set on them below.
fn threads_but(except: &[libc::pid_t]) -> Result<Vec<libc::pid_t>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let tid = entry?.file_name().to_str().and_then(|t| t.parse().ok());
        threads.extend(tid.filter(|tid| !except.contains(tid)));
    }
    Ok(threads)
}

/// Sets thread `tid` to nice `nice`. Lowering one's own threads' priority
/// needs no privilege.
fn renice_thread(tid: libc::pid_t, nice: i32) -> Result<()> {
    // SAFETY: setpriority only reads its arguments; on Linux PRIO_PROCESS
    // with a thread id sets that thread's nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
        bail!(
            "setpriority({tid}, {nice}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Puts thread `tid` under SCHED_BATCH: it keeps its nice value and so its
/// share of the CPU, but it does not preempt the running thread when it
/// wakes. Needs no privilege.
fn batch_thread(tid: libc::pid_t) -> Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads its arguments; on Linux a
    // thread id names that thread.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_BATCH, &param) } != 0 {
        bail!(
            "sched_setscheduler({tid}, SCHED_BATCH): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time of processes in clock ticks: user (`utime`) and system
/// (`stime`, the kernel's work on their behalf: socket writes on loopback
/// include the receiving side's TCP processing).
#[derive(Clone, Copy, Default, Debug)]
struct CpuTicks {
    user: u64,
    system: u64,
}

impl CpuTicks {
    fn since(self, before: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }
}

/// utime and stime of a process (all its threads).
fn cpu_ticks(pid: u32) -> Result<CpuTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces: count from its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    Ok(CpuTicks {
        user: tick(11)?,
        system: tick(12)?,
    })
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 { n as u64 } else { 100 }
}

fn total_cpu_ticks(pids: &[u32]) -> Result<CpuTicks> {
    pids.iter().try_fold(CpuTicks::default(), |sum, &p| {
        let t = cpu_ticks(p)?;
        Ok(CpuTicks {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
    })
}

/// Second octet of the loopback source addresses (127.N.x.y) this process
/// connects from: 1 unless `--source-net` (each `curve` shard has its own).
static SOURCE_NET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
/// tungstenite's read buffer per connection, bytes; 0 = its default
/// (128 KiB, zero-filled on the first read: 13 GB at 100 000 connections).
static READ_BUFFER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Opens a WebSocket to `url` (a loopback address) from the next of many
/// loopback source addresses (127.N.0.1, 127.N.0.2, ..., 127.N.1.1, ...;
/// N = `--source-net`), 200 connections each: a hub caps the connections
/// of one address (MAX_CONNECTIONS_PER_IP, 512), as it would for clients
/// on the Internet, and each address has its own ephemeral ports.
async fn connect_spread(
    url: &str,
) -> Result<(
    Ws,
    tokio_tungstenite::tungstenite::handshake::client::Response,
)> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) / 200;
    let net = SOURCE_NET.load(Ordering::Relaxed);
    let source = std::net::Ipv4Addr::new(127, net, (n / 250 % 250) as u8, (n % 250 + 1) as u8);
    let parsed: axum::http::Uri = url.parse().context("a ws:// URL")?;
    let host = parsed.host().context("a host")?.trim_matches(['[', ']']);
    let target = tokio::net::lookup_host((host, parsed.port_u16().unwrap_or(80)))
        .await?
        .find(std::net::SocketAddr::is_ipv4)
        .context("an IPv4 address")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    let small = READ_BUFFER.load(Ordering::Relaxed);
    let config = (small > 0).then(|| {
        WebSocketConfig::default()
            .read_buffer_size(small)
            .write_buffer_size(0)
    });
    Ok(client_async_with_config(url, MaybeTlsStream::Plain(tcp), config).await?)
}

/// Connects and registers; returns once `registration_confirmed` arrived
/// (the frames after it are the reader's business).
async fn register(url: &str, session: &str, id: &str) -> Result<Ws> {
    Ok(register_sized(url, session, id).await?.0)
}

/// [`register`], also returning the size of `registration_confirmed` in
/// bytes.
async fn register_sized(url: &str, session: &str, id: &str) -> Result<(Ws, usize)> {
    let work = async {
        let (mut ws, _) = connect_spread(url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let reg = json!({"type":"register","session":session,"client_id":id});
        ws.send(Message::Text(reg.to_string().into())).await?;
        // A client registering on another instance can see a few frames
        // of its session before its own confirmation; bounded anyway.
        for _ in 0..10_000 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(f) = serde_json::from_str::<Head>(t.as_str()) {
                        match f.kind.as_str() {
                            "registration_confirmed" => return Ok((ws, t.len())),
                            "error" => bail!("register {id}: {}", t.as_str()),
                            _ => {}
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("register {id}: connection closed"),
            }
        }
        bail!("register {id}: no registration_confirmed")
    };
    tokio::time::timeout(REGISTER_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("register {id}: timed out"))?
}

/// Just enough of a hub frame to classify it.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    payload: Option<Stamp>,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct Stamp {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    t: Option<u64>,
}

/// Waits until `counter` reaches `expected`, or stops moving for `quiet`,
/// or `limit` passed. Returns whether `expected` was reached.
async fn wait_for_count(
    counter: &AtomicU64,
    expected: u64,
    quiet: Duration,
    limit: Duration,
) -> bool {
    let start = Instant::now();
    let mut last = counter.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= expected {
            return true;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if last_change.elapsed() >= quiet || start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- idle

async fn run_idle(args: &Args) -> Result<()> {
    let fd_limit = raise_fd_limit();
    if (fd_limit as usize) < args.clients + 64 {
        eprintln!(
            "warning: fd limit {fd_limit} < {} clients; raise it (ulimit -n 65536)",
            args.clients
        );
    }
    let per = args.per_session;
    let sessions = args.clients.div_ceil(per);
    let run = now_micros();
    // Member j of a k-member session receives registration_confirmed (read
    // by register()), contact_list_broadcast, and one client_joined per
    // member after it.
    let mut expected_frames = 0u64;
    for s in 0..sessions {
        let k = per.min(args.clients - s * per) as u64;
        expected_frames += k + k * (k - 1) / 2;
    }

    let before: Vec<u64> = args
        .pids
        .iter()
        .map(|&p| rss_kib(p))
        .collect::<Result<_>>()?;
    println!(
        "mode=idle clients={} per_session={per} sessions={sessions} urls={} fd_limit={fd_limit}",
        args.clients,
        args.urls.join(",")
    );

    let frames = Arc::new(AtomicU64::new(0));
    let kinds: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = CancellationToken::new();
    let started = Instant::now();
    // One future per session registers its members one after the other, so
    // the frames each member will receive are known; sessions run
    // concurrently up to --connect-concurrency.
    let results: Vec<(Vec<tokio::task::JoinHandle<()>>, usize)> =
        futures_util::stream::iter(0..sessions)
            .map(|s| {
                let frames = frames.clone();
                let kinds = kinds.clone();
                let stop = stop.clone();
                let urls = args.urls.clone();
                let clients = args.clients;
                async move {
                    let session = format!("idle-{run}-{s}");
                    let mut handles = Vec::new();
                    let mut failed = 0;
                    for j in 0..per.min(clients - s * per) {
                        let i = s * per + j;
                        let url = &urls[i % urls.len()];
                        match register(url, &session, &format!("c{i}")).await {
                            Ok(ws) => handles.push(tokio::spawn(hold_idle(
                                ws,
                                frames.clone(),
                                kinds.clone(),
                                stop.clone(),
                            ))),
                            Err(e) => {
                                if failed == 0 {
                                    eprintln!("{e:#}");
                                }
                                failed += 1;
                            }
                        }
                    }
                    (handles, failed)
                }
            })
            .buffer_unordered(args.connect_concurrency)
            .collect()
            .await;
    let registered_in = started.elapsed();
    let failed: usize = results.iter().map(|(_, f)| f).sum();
    let handles: Vec<_> = results.into_iter().flat_map(|(h, _)| h).collect();
    let connected = handles.len();
    println!(
        "registered {connected} clients in {:.1}s ({failed} failed)",
        registered_in.as_secs_f64()
    );

    let all_frames = wait_for_count(
        &frames,
        expected_frames,
        Duration::from_secs(5),
        args.settle_timeout,
    )
    .await;
    println!(
        "frames after registration: {} of {expected_frames} expected{}",
        frames.load(Ordering::Relaxed),
        if all_frames { "" } else { " (stopped waiting)" }
    );
    let after = settle_rss(&args.pids, args.settle_timeout).await?;
    let mut by_kind: Vec<_> = kinds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .into_iter()
        .collect();
    by_kind.sort();
    println!(
        "frames by type once memory settled: {by_kind:?} ({} in all)",
        frames.load(Ordering::Relaxed)
    );
    for (k, &p) in args.pids.iter().enumerate() {
        let delta = after[k].saturating_sub(before[k]);
        println!(
            "hub pid {p}: VmRSS before={} KiB after={} KiB delta={delta} KiB => {:.1} KiB per connection ({connected} connections)",
            before[k],
            after[k],
            delta as f64 / connected.max(1) as f64
        );
    }
    if args.pids.len() > 1 {
        let delta: u64 = after
            .iter()
            .sum::<u64>()
            .saturating_sub(before.iter().sum());
        println!(
            "all hubs: delta={delta} KiB => {:.1} KiB per connection",
            delta as f64 / connected.max(1) as f64
        );
    }
    if !args.hold.is_zero() {
        println!("holding the connections for {}s", args.hold.as_secs());
        tokio::time::sleep(args.hold).await;
    }
    stop.cancel();
    for h in handles {
        let _ = h.await;
    }
    Ok(())
}

/// Keeps an idle client connected, reading (and counting) whatever the hub
/// sends, until `stop`; then closes it.
async fn hold_idle(
    mut ws: Ws,
    frames: Arc<AtomicU64>,
    kinds: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    frames.fetch_add(1, Ordering::Relaxed);
                    let kind = serde_json::from_str::<Head>(t.as_str()).map(|h| h.kind).unwrap_or_default();
                    *kinds.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Polls VmRSS every 500 ms until three samples in a row are within
/// 0.5 % of each other (or `limit`); returns the last sample.
async fn settle_rss(pids: &[u32], limit: Duration) -> Result<Vec<u64>> {
    let start = Instant::now();
    let mut history: Vec<Vec<u64>> = Vec::new();
    loop {
        let now: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect::<Result<_>>()?;
        history.push(now.clone());
        if history.len() >= 3 {
            let tail = &history[history.len() - 3..];
            let stable = (0..pids.len()).all(|k| {
                let lo = tail.iter().map(|s| s[k]).min().unwrap_or(0);
                let hi = tail.iter().map(|s| s[k]).max().unwrap_or(0);
                (hi - lo) as f64 <= hi as f64 * 0.005
            });
            if stable {
                return Ok(now);
            }
        }
        if start.elapsed() >= limit {
            println!(
                "memory did not settle within {}s; last sample used",
                limit.as_secs()
            );
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ------------------------------------------------------------ sessions

/// The pub/sub messages of sessions' channels a hub received (its stats on
/// the monitor channel and its inbox are not events).
const SESSION_PUBSUB_SERIES: &str = r#"hub_pubsub_messages_received_total{channel="session"}"#;

/// [`SESSION_PUBSUB_SERIES`] of the hub behind a `ws://` URL.
async fn pubsub_received(url: &str) -> Result<f64> {
    let base = url.strip_prefix("ws").unwrap_or(url).trim_end_matches('/');
    let metrics = format!("http{base}/metrics");
    let body = reqwest::get(&metrics)
        .await
        .with_context(|| format!("GET {metrics}"))?
        .text()
        .await?;
    body.lines()
        .find_map(|l| l.strip_prefix(SESSION_PUBSUB_SERIES)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("{metrics}: no {SESSION_PUBSUB_SERIES}"))
}

async fn run_sessions(args: &Args) -> Result<()> {
    raise_fd_limit();
    let per = args.per_session;
    let sessions = args.clients.div_ceil(per);
    let run = now_micros();
    let home = &args.urls[0];
    println!(
        "mode=sessions clients={} per_session={per} sessions={sessions} on={home} others={}",
        args.clients,
        args.urls[1..].join(",")
    );
    let frames = Arc::new(AtomicU64::new(0));
    // Frame counts by type: kept by `hold_idle`, not printed in this mode.
    let kinds = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let stop = CancellationToken::new();
    // Per session: the sender (its first client) and the others, held.
    let registered: Vec<Result<(Ws, Vec<tokio::task::JoinHandle<()>>)>> =
        futures_util::stream::iter(0..sessions)
            .map(|s| {
                let frames = frames.clone();
                let kinds = kinds.clone();
                let stop = stop.clone();
                let clients = args.clients;
                async move {
                    let session = format!("sessions-{run}-{s}");
                    let sender = register(home, &session, &format!("s{s}-c0")).await?;
                    let mut held = Vec::new();
                    for j in 1..per.min(clients - s * per) {
                        let ws = register(home, &session, &format!("s{s}-c{j}")).await?;
                        held.push(tokio::spawn(hold_idle(
                            ws,
                            frames.clone(),
                            kinds.clone(),
                            stop.clone(),
                        )));
                    }
                    Ok((sender, held))
                }
            })
            .buffer_unordered(args.connect_concurrency)
            .collect()
            .await;
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for r in registered {
        let (sender, held) = r?;
        senders.push(sender);
        handles.extend(held);
    }
    // Registration's own frames settle before the measured phase.
    wait_for_count(
        &frames,
        u64::MAX,
        Duration::from_secs(2),
        args.settle_timeout,
    )
    .await;
    let before: Vec<f64> =
        futures_util::future::try_join_all(args.urls.iter().map(|u| pubsub_received(u))).await?;
    let frames_before = frames.load(Ordering::Relaxed);
    let gap = if args.rate_per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / args.rate_per_sec)
    } else {
        Duration::ZERO
    };
    let started = Instant::now();
    for m in 0..args.messages {
        let ws = &mut senders[m % sessions];
        let frame = json!({"type":"broadcast","payload":{"seq": m}});
        ws.send(Message::Text(frame.to_string().into())).await?;
        if !gap.is_zero() {
            tokio::time::sleep_until((started + gap * (m as u32 + 1)).into()).await;
        }
    }
    let receivers_per_event = (per.saturating_sub(1)) as u64;
    let expected = frames_before + args.messages as u64 * receivers_per_event;
    let all = wait_for_count(
        &frames,
        expected,
        Duration::from_secs(5),
        args.settle_timeout,
    )
    .await;
    let after: Vec<f64> =
        futures_util::future::try_join_all(args.urls.iter().map(|u| pubsub_received(u))).await?;
    println!(
        "published {} broadcasts in {:.1}s; deliveries {} of {}{}",
        args.messages,
        started.elapsed().as_secs_f64(),
        frames.load(Ordering::Relaxed) - frames_before,
        expected - frames_before,
        if all { "" } else { " (stopped waiting)" }
    );
    let mut total = 0.0;
    for (k, url) in args.urls.iter().enumerate() {
        let delta = after[k] - before[k];
        total += delta;
        println!(
            "{url}: hub_pubsub_messages_received_total +{delta} ({:.3} per event){}",
            delta / args.messages.max(1) as f64,
            if k == 0 { " [has the clients]" } else { "" }
        );
    }
    println!(
        "redis pub/sub messages per event (all instances): {:.3}",
        total / args.messages.max(1) as f64
    );
    stop.cancel();
    for h in handles {
        let _ = h.await;
    }
    for mut ws in senders {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    Ok(())
}

// -------------------------------------------------------------- fanout

/// What one subscriber saw.
struct Seen {
    latencies_us: Vec<u64>,
    per_seq: Vec<u32>,
    out_of_order: u64,
    close_code: Option<u16>,
    ended: &'static str,
    last_delivery: Option<Instant>,
}

async fn run_fanout(args: &Args) -> Result<()> {
    let fd_limit = raise_fd_limit();
    let m = args.messages;
    let s = args.clients;
    if s == 0 {
        bail!("fanout needs at least one subscriber");
    }
    let session = format!("bench-{}", now_micros());
    println!(
        "mode=fanout urls={} subscribers={s} messages={m} rate={} payload={}B read={} pids={:?}",
        args.urls.join(","),
        if args.rate_per_sec > 0.0 {
            format!("{}/s", args.rate_per_sec)
        } else {
            "burst".into()
        },
        args.payload_bytes,
        match args.read_every {
            Some(every) => format!("every {} ms (latency includes the wait)", every.as_millis()),
            None => "each frame as it comes".into(),
        },
        args.pids
    );
    if (fd_limit as usize) < s + 64 {
        eprintln!("warning: fd limit {fd_limit} < {s} subscribers; raise it (ulimit -n 65536)");
    }

    let setup_frames = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicBool::new(false));
    // How long a subscriber waits for its deliveries once publishing
    // ended. Counted from then, not from the start: registering a big
    // session alone can take minutes (each join is announced to every
    // member), and subscribers that gave up before the first broadcast
    // would leave the publisher alone in the session.
    let drain_limit = args.settle_timeout + Duration::from_secs(120);

    // Registered in order (subscriber j gets one client_joined per later
    // member), each one reading from the moment it is registered.
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(s);
    for i in 0..s {
        let url = &args.urls[i % args.urls.len()];
        let ws = register(url, &session, &format!("r{i}")).await?;
        tasks.push(tokio::spawn(subscribe(
            ws,
            m,
            setup_frames.clone(),
            published.clone(),
            args.idle_timeout,
            drain_limit,
            args.read_every,
        )));
    }
    let (publisher, confirmation_bytes) =
        register_sized(&args.urls[0], &session, PUBLISHER_ID).await?;
    // contact_list_broadcast each, client_joined for every later member
    // and for the publisher.
    let expected_setup = (s + s * (s - 1) / 2 + s) as u64;
    let settled = wait_for_count(
        &setup_frames,
        expected_setup,
        Duration::from_secs(3),
        args.settle_timeout,
    )
    .await;
    println!(
        "registered {s} subscribers + publisher in {:.1}s; setup frames {} of {expected_setup}{}",
        started.elapsed().as_secs_f64(),
        setup_frames.load(Ordering::Relaxed),
        if settled { "" } else { " (stopped waiting)" }
    );
    println!(
        "publisher's registration_confirmed ({} members): {confirmation_bytes} bytes",
        s + 1
    );

    let (mut sink, mut stream) = publisher.split();
    // The publisher reads its own socket: rate_limited errors mean the
    // hub's RATE_LIMIT_* is below what was asked.
    let publisher_reader = tokio::spawn(async move {
        let mut errors: HashMap<String, u64> = HashMap::new();
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg
                && let Ok(f) = serde_json::from_str::<Head>(t.as_str())
                && f.kind == "error"
            {
                *errors.entry(f.code.unwrap_or_default()).or_default() += 1;
            }
        }
        errors
    });

    let probe = if args.probe_rate > 0.0 {
        let url = args.probe_url.as_ref().unwrap_or(&args.urls[0]);
        Some(Probe::start(url, args.probe_rate, published.clone()).await?)
    } else {
        None
    };
    if args.receivers_nice > 0 || args.receivers_batch {
        let except: Vec<libc::pid_t> = probe.iter().map(|p| p.tid).collect();
        let threads = threads_but(&except)?;
        if args.receivers_nice > 0 {
            for &tid in &threads {
                renice_thread(tid, args.receivers_nice)?;
            }
            println!(
                "receivers: {} threads at nice {} (the probe's at its own)",
                threads.len(),
                args.receivers_nice
            );
        }
        if args.receivers_batch {
            for &tid in &threads {
                batch_thread(tid)?;
            }
            println!(
                "receivers: {} threads under SCHED_BATCH (the probe's not)",
                threads.len()
            );
        }
    }
    let filler = "x".repeat(args.payload_bytes);
    let cpu_before = total_cpu_ticks(&args.pids)?;
    let others_before = args
        .others
        .iter()
        .map(|(_, p)| cpu_ticks(*p))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let gap = (args.rate_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate_per_sec));
    let mut send_error = None;
    for seq in 0..m {
        if let Some(gap) = gap {
            // Absolute schedule: the average rate stays exact.
            tokio::time::sleep_until((t0 + gap.mul_f64(seq as f64)).into()).await;
        }
        let frame =
            json!({"type":"broadcast","payload":{"seq":seq,"t":now_micros(),"fill":filler}});
        if let Err(e) = sink.send(Message::Text(frame.to_string().into())).await {
            send_error = Some(format!("publish stopped at seq {seq}: {e}"));
            break;
        }
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    published.store(true, Ordering::Relaxed);

    let mut seen = Vec::with_capacity(s);
    // Every subscriber stays connected until all are done: one leaving
    // early would announce its departure to every member still waiting
    // for its deliveries (10 000 frames each at 10 000 members).
    let mut connected = Vec::with_capacity(s);
    for t in tasks {
        let (x, ws) = t.await?;
        seen.push(x);
        connected.push(ws);
    }
    let cpu_after = total_cpu_ticks(&args.pids)?;
    drop(connected);
    let others: Vec<(String, CpuTicks)> = args
        .others
        .iter()
        .zip(others_before)
        .map(|((name, p), before)| Ok((name.clone(), cpu_ticks(*p)?.since(before))))
        .collect::<Result<_>>()?;
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    let publisher_errors =
        match tokio::time::timeout(Duration::from_secs(5), publisher_reader).await {
            Ok(Ok(errors)) => errors,
            _ => HashMap::new(),
        };

    report_fanout(
        args,
        &seen,
        t0,
        publish_secs,
        cpu_after.since(cpu_before),
        &others,
        &publisher_errors,
    );
    if let Some(probe) = probe {
        probe.report().await;
    }
    if let Some(e) = send_error {
        println!("{e}");
    }
    Ok(())
}

/// A second session, small (one publisher, one subscriber), broadcasting
/// at its own rate while the big one fans out: its latency is what the
/// fan-out costs everybody else on the instance. Its two clients run on a
/// thread and runtime of their own, as another user's would: what it
/// measures is the hub, not the wait behind the big session's thousands of
/// receivers in this process's runtime.
struct Probe {
    thread: std::thread::JoinHandle<(u64, Vec<u64>)>,
    /// The thread's id, kept at its priority by `--receivers-nice`.
    tid: libc::pid_t,
}

impl Probe {
    /// Returns once both clients registered.
    async fn start(url: &str, rate: f64, published: Arc<AtomicBool>) -> Result<Probe> {
        let url = url.to_string();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<libc::pid_t>>();
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run_probe(url, rate, published, ready_tx)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        (0, Vec::new())
                    }
                }
            })?;
        let tid = ready_rx
            .await
            .map_err(|_| anyhow!("the probe's thread ended before registering"))??;
        Ok(Probe { thread, tid })
    }

    async fn report(self) {
        let thread = self.thread;
        let (sent, mut latencies) = tokio::task::spawn_blocking(move || thread.join())
            .await
            .ok()
            .and_then(|joined| joined.ok())
            .unwrap_or_default();
        latencies.sort_unstable();
        let pct = |q: f64| {
            if latencies.is_empty() {
                return f64::NAN;
            }
            let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i] as f64 / 1000.0
        };
        println!(
            "probe session: sent={sent} received={} latency ms: p50={:.2} p99={:.2} max={:.2}",
            latencies.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}

/// The probe's two clients, on the probe's runtime: registers both, tells
/// `ready`, then publishes at `rate` until `published` and returns how
/// many it sent and each delivery's latency in µs.
async fn run_probe(
    url: String,
    rate: f64,
    published: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<Result<libc::pid_t>>,
) -> (u64, Vec<u64>) {
    let session = format!("probe-{}", now_micros());
    let registered = async {
        let reader = register(&url, &session, "probe-reader").await?;
        let writer = register(&url, &session, PUBLISHER_ID).await?;
        Ok::<_, anyhow::Error>((reader, writer))
    }
    .await;
    let (mut reader, writer) = match registered {
        Ok(pair) => {
            // SAFETY: gettid has no arguments and cannot fail.
            let _ = ready.send(Ok(unsafe { libc::gettid() }));
            pair
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return (0, Vec::new());
        }
    };
    let (mut sink, mut stream) = writer.split();
    // The publisher's own frames (presence, errors) are read and dropped.
    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let done = published.clone();
    let sent = Arc::new(AtomicU64::new(0));
    let counted = sent.clone();
    let publisher = tokio::spawn(async move {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let t0 = Instant::now();
        let mut seq = 0u64;
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep_until((t0 + gap.mul_f64(seq as f64)).into()).await;
            let frame = json!({"type":"broadcast","payload":{"seq":seq,"t":now_micros()}});
            if sink
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            seq += 1;
            counted.store(seq, Ordering::Relaxed);
        }
    });
    // Read until the publisher stopped and every broadcast it sent arrived,
    // or nothing came for 30 s after it stopped (the rest counts as lost):
    // a late broadcast is measured, not taken for a lost one.
    let mut latencies = Vec::new();
    let mut quiet_secs = 0;
    loop {
        if publisher.is_finished() && latencies.len() as u64 >= sent.load(Ordering::Relaxed) {
            break;
        }
        let next = tokio::time::timeout(Duration::from_secs(1), reader.next()).await;
        let msg = match next {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Err(_) if publisher.is_finished() => {
                quiet_secs += 1;
                if quiet_secs >= 30 {
                    break;
                }
                continue;
            }
            Err(_) => continue,
            Ok(_) => break,
        };
        quiet_secs = 0;
        let received = now_micros();
        if let Ok(f) = serde_json::from_str::<Head>(msg.as_str())
            && f.kind == "broadcast"
            && let Some(sent) = f.payload.and_then(|p| p.t)
        {
            latencies.push(received.saturating_sub(sent));
        }
    }
    (sent.load(Ordering::Relaxed), latencies)
}

async fn subscribe(
    mut ws: Ws,
    messages: usize,
    setup_frames: Arc<AtomicU64>,
    published: Arc<AtomicBool>,
    idle_timeout: Duration,
    drain_limit: Duration,
    read_every: Option<Duration>,
) -> (Seen, Ws) {
    let mut seen = Seen {
        latencies_us: Vec::with_capacity(messages),
        per_seq: vec![0; messages],
        out_of_order: 0,
        close_code: None,
        ended: "complete",
        last_delivery: None,
    };
    let mut highest: Option<u64> = None;
    let mut last_frame = Instant::now();
    let mut published_at: Option<Instant> = None;
    while seen.latencies_us.len() < messages {
        if published_at.is_none() && published.load(Ordering::Relaxed) {
            // The idle clock starts when publishing ended at the latest.
            published_at = Some(Instant::now());
            last_frame = Instant::now();
        }
        if published_at.is_some_and(|t| t.elapsed() >= drain_limit) {
            seen.ended = "deadline";
            break;
        }
        // None: nothing arrived in this wait.
        let next = match read_every {
            None => tokio::time::timeout(Duration::from_millis(250), ws.next())
                .await
                .ok(),
            // What is already buffered or in the socket, without waiting;
            // once that is drained, sleep until the next bulk read.
            Some(every) => match ws.next().now_or_never() {
                Some(next) => Some(next),
                None => {
                    tokio::time::sleep(every).await;
                    None
                }
            },
        };
        let msg = match next {
            None => {
                if published_at.is_some() && last_frame.elapsed() >= idle_timeout {
                    seen.ended = "idle";
                    break;
                }
                continue;
            }
            Some(Some(Ok(Message::Text(t)))) => t,
            Some(Some(Ok(Message::Close(frame)))) => {
                seen.close_code = frame.map(|f| u16::from(f.code));
                seen.ended = "closed";
                break;
            }
            Some(Some(Ok(_))) => continue,
            Some(Some(Err(_)) | None) => {
                seen.ended = "error";
                break;
            }
        };
        let received = now_micros();
        last_frame = Instant::now();
        let Ok(f) = serde_json::from_str::<Head>(msg.as_str()) else {
            continue;
        };
        if f.kind != "broadcast" || f.from.as_deref() != Some(PUBLISHER_ID) {
            setup_frames.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (Some(seq), Some(sent)) = f.payload.map(|p| (p.seq, p.t)).unwrap_or((None, None))
        else {
            continue;
        };
        if let Some(slot) = seen.per_seq.get_mut(seq as usize) {
            *slot += 1;
        }
        if highest.is_some_and(|h| seq < h) {
            seen.out_of_order += 1;
        }
        highest = highest.max(Some(seq));
        seen.latencies_us.push(received.saturating_sub(sent));
        seen.last_delivery = Some(last_frame);
    }
    (seen, ws)
}

fn report_fanout(
    args: &Args,
    seen: &[Seen],
    t0: Instant,
    publish_secs: f64,
    cpu_ticks: CpuTicks,
    others: &[(String, CpuTicks)],
    publisher_errors: &HashMap<String, u64>,
) {
    let m = args.messages as u64;
    let expected = m * seen.len() as u64;
    let mut all: Vec<u64> = seen
        .iter()
        .flat_map(|x| x.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let lost: u64 = seen
        .iter()
        .map(|x| x.per_seq.iter().filter(|&&n| n == 0).count() as u64)
        .sum();
    let dupes: u64 = seen
        .iter()
        .map(|x| {
            x.per_seq
                .iter()
                .map(|&n| n.saturating_sub(1) as u64)
                .sum::<u64>()
        })
        .sum();
    let out_of_order: u64 = seen.iter().map(|x| x.out_of_order).sum();
    let evicted = seen.iter().filter(|x| x.close_code == Some(1008)).count();
    let lost_by_evicted: u64 = seen
        .iter()
        .filter(|x| x.close_code == Some(1008))
        .map(|x| x.per_seq.iter().filter(|&&n| n == 0).count() as u64)
        .sum();
    let mut endings: HashMap<String, usize> = HashMap::new();
    for x in seen {
        let key = match x.close_code {
            Some(code) => format!("closed {code}"),
            None => x.ended.to_string(),
        };
        *endings.entry(key).or_default() += 1;
    }
    let mut endings: Vec<_> = endings.into_iter().collect();
    endings.sort();
    let last = seen.iter().filter_map(|x| x.last_delivery).max();
    let window = last
        .map(|l| l.duration_since(t0).as_secs_f64())
        .unwrap_or(0.0);
    let delivered = all.len() as u64;
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all[i] as f64 / 1000.0
    };

    println!(
        "published {m} in {publish_secs:.2}s; publisher errors: {}",
        if publisher_errors.is_empty() {
            "none".to_string()
        } else {
            format!("{publisher_errors:?}")
        }
    );
    if publisher_errors.contains_key("rate_limited") {
        println!(
            "the hub rate-limited the publisher: raise its RATE_LIMIT_PER_SEC / RATE_LIMIT_BURST"
        );
    }
    println!(
        "deliveries={delivered} of {expected} in {window:.2}s (first publish to last delivery) => {:.0} deliveries/s",
        if window > 0.0 {
            delivered as f64 / window
        } else {
            0.0
        }
    );
    println!(
        "lost={lost} ({:.1}%, {lost_by_evicted} of them on evicted subscribers) duplicated={dupes} out_of_order={out_of_order} evicted_1008={evicted} of {} subscribers",
        if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        },
        seen.len()
    );
    println!("subscriber endings: {endings:?}");
    println!(
        "latency ms: p50={:.2} p90={:.2} p99={:.2} p999={:.2} max={:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    if !args.pids.is_empty() {
        let hz = clock_ticks_per_sec();
        let secs = |ticks: u64| ticks as f64 / hz as f64;
        let per_delivery = |ticks: u64| {
            if delivered > 0 {
                secs(ticks) * 1e6 / delivered as f64
            } else {
                0.0
            }
        };
        let total = cpu_ticks.user + cpu_ticks.system;
        println!(
            "hub cpu (publish phase, {} pid(s)): {:.2}s => {:.2} us/delivery (user {:.2}s = {:.2} us, system {:.2}s = {:.2} us; clock tick {} ms)",
            args.pids.len(),
            secs(total),
            per_delivery(total),
            secs(cpu_ticks.user),
            per_delivery(cpu_ticks.user),
            secs(cpu_ticks.system),
            per_delivery(cpu_ticks.system),
            1000 / hz
        );
        for (name, t) in others {
            println!(
                "other cpu {name} (publish phase): {:.2} us/delivery (user {:.2} us, system {:.2} us)",
                per_delivery(t.user + t.system),
                per_delivery(t.user),
                per_delivery(t.system)
            );
        }
    }
}

/// `sends`: acknowledged WhatsApp sends per second and their latency.
async fn run_sends(args: &Args) -> Result<()> {
    let url = &args.urls[0];
    let clients = args.clients.max(1);
    let per_client = args.messages.div_ceil(clients);
    println!(
        "mode=sends clients={clients} messages={} on={url}",
        per_client * clients
    );
    let run = now_micros();
    let mut sockets = Vec::with_capacity(clients);
    for c in 0..clients {
        let session = format!("sends-{run}-{c}");
        sockets.push(register(url, &session, &format!("sender-{c}")).await?);
    }
    let started = Instant::now();
    let cpu_before = total_cpu_ticks(&args.pids).ok();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(c, mut ws)| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let rid = format!("s{c}-{n}");
                    let send = json!({"type": "whatsapp_command", "request_id": rid,
                        "command": {"action": "send", "contact": "John", "message": format!("m{n}")}});
                    let at = Instant::now();
                    ws.send(Message::Text(send.to_string().into())).await?;
                    loop {
                        let Some(frame) = ws.next().await else {
                            bail!("sender {c}: connection closed");
                        };
                        if let Message::Text(t) = frame? {
                            let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                            if v["request_id"] == rid.as_str() {
                                if v["content"]["success"] != true {
                                    bail!("sender {c}: {v}");
                                }
                                break;
                            }
                        }
                    }
                    latencies.push(at.elapsed().as_micros() as u64);
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |q: f64| {
        let i = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    println!(
        "acknowledged sends/s={:.0} latency ms: p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    if let (Some(before), Ok(after)) = (cpu_before, total_cpu_ticks(&args.pids)) {
        let ticks = (after.user + after.system).saturating_sub(before.user + before.system);
        let secs = ticks as f64 / clock_ticks_per_sec() as f64;
        println!("hub CPU per send µs={:.1}", secs * 1e6 / all.len() as f64);
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("curve") {
        if let Err(e) = curve::main(raw[1..].to_vec()).await {
            eprintln!("loadgen curve: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args(raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
    };
    let result = match args.mode {
        Mode::Idle => run_idle(&args).await,
        Mode::Fanout => run_fanout(&args).await,
        Mode::Sessions => run_sessions(&args).await,
        Mode::Sends => run_sends(&args).await,
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
