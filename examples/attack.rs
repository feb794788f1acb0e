//! The abuse probe (issue 19): runs each hostile-input attack of
//! docs/security.md §12 against a hub you run yourself on loopback, exposed
//! directly (no HAProxy), and meanwhile asks `/health` on a fresh
//! connection every `--probe-ms`. Prints, per attack, the `/health`
//! latency (p50, p99, max, failures), the hub's resident memory before and
//! at the end (`--pid`), and what the attack got.
//!
//! ```text
//! cargo build --release --examples && ./target/release/mcp-hub &
//! ./target/release/examples/attack --url http://127.0.0.1:8002 --pid $!
//! ./target/release/examples/attack --url http://127.0.0.1:8002 --pid $! --only silent,trickle
//! ```
//!
//! Attacks (`--only` takes a comma-separated list):
//! * `silent`: `--sockets` TCP connections that send nothing.
//! * `trickle`: `--sockets` connections trickling a header byte every 500 ms.
//! * `bigheaders`: `--sockets` connections each sending up to 400 KB of an
//!   unfinished request head.
//! * `keepalive`: `--sockets` connections that make one request, then idle.
//! * `unregistered`: `--sockets` WebSockets that never `register`.
//! * `events`: fills a session's log with 64 KB broadcasts, then 40
//!   concurrent `GET /api/v1/sessions/{s}/events`, repeated.
//! * `fuzzy`: REST sends naming 30,000-character contacts.
//! * `idempotency`: `list_contacts` with 300 fresh idempotency keys (start
//!   the hub with a `CONTACTS_FILE` of 10,000 contacts to make each result
//!   large, as in the review that found it).
//!
//! Sockets are spread over 127.0.0.2–127.0.0.250 source addresses (one
//! process may hold at most its fd limit; the hub's per-address cap is its
//! own defence, measured apart). Every loop is bounded in count and time,
//! and only loopback URLs are accepted. The hub must run with auth off
//! (loopback default) for the REST attacks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const ATTACKS: [&str; 8] = [
    "silent",
    "trickle",
    "bigheaders",
    "keepalive",
    "unregistered",
    "events",
    "fuzzy",
    "idempotency",
];

struct Args {
    addr: SocketAddr,
    pid: Option<u32>,
    sockets: usize,
    seconds: u64,
    probe: Duration,
    only: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut url = "http://127.0.0.1:8002".to_string();
    let mut pid = None;
    let mut sockets = 2000;
    let mut seconds = 15;
    let mut probe_ms = 50;
    let mut only: Vec<String> = ATTACKS.iter().map(|s| s.to_string()).collect();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = value()?,
            "--pid" => pid = Some(value()?.parse()?),
            "--sockets" => sockets = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--probe-ms" => probe_ms = value()?.parse()?,
            "--only" => only = value()?.split(',').map(str::to_string).collect(),
            other => bail!("unknown flag {other}"),
        }
    }
    for a in &only {
        if !ATTACKS.contains(&a.as_str()) {
            bail!("unknown attack {a}; known: {}", ATTACKS.join(","));
        }
    }
    let hostport = url
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("--url must be http://IP:PORT, got {url}"))?;
    if !addr.ip().is_loopback() {
        bail!("only loopback hubs are probed");
    }
    Ok(Args {
        addr,
        pid,
        sockets: sockets.min(15_000),
        seconds: seconds.min(120),
        probe: Duration::from_millis(probe_ms.max(5)),
        only,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    println!(
        "{:<13} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9}  outcome",
        "attack", "p50 ms", "p99 ms", "max ms", "fail", "rss MB", "rss+ MB"
    );
    for attack in ATTACKS.iter().filter(|a| args.only.iter().any(|o| o == *a)) {
        let rss_before = rss_mb(args.pid);
        let stop = Instant::now() + Duration::from_secs(args.seconds);
        let prober = tokio::spawn(probe_health(args.addr, args.probe, stop));
        let outcome = match *attack {
            "silent" => hold_sockets(&args, stop, Hold::Silent).await,
            "trickle" => hold_sockets(&args, stop, Hold::Trickle).await,
            "bigheaders" => hold_sockets(&args, stop, Hold::BigHeaders).await,
            "keepalive" => hold_sockets(&args, stop, Hold::KeepAlive).await,
            "unregistered" => unregistered(&args, stop).await,
            "events" => events(&args, stop).await,
            "fuzzy" => fuzzy(&args, stop).await,
            "idempotency" => idempotency(&args, stop).await,
            _ => unreachable!("checked in parse_args"),
        };
        let rss_peak = rss_mb(args.pid);
        let mut samples = prober.await?;
        let fails = samples.iter().filter(|s| s.is_none()).count();
        let mut ok: Vec<f64> = samples.drain(..).flatten().collect();
        ok.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            ok.get(((ok.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{:<13} {:>9.2} {:>9.2} {:>9.2} {:>6} {:>9.1} {:>9.1}  {}",
            attack,
            pct(0.5),
            pct(0.99),
            ok.last().copied().unwrap_or(f64::NAN),
            fails,
            rss_peak.unwrap_or(f64::NAN),
            rss_peak.zip(rss_before).map_or(f64::NAN, |(a, b)| a - b),
            outcome.unwrap_or_else(|e| format!("error: {e:#}")),
        );
        // Let the hub shed what is left before the next attack.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// `GET /health` on a fresh connection every `every` until `stop`; each
/// sample is its latency in ms, or None when it failed or took over 5 s.
async fn probe_health(addr: SocketAddr, every: Duration, stop: Instant) -> Vec<Option<f64>> {
    let mut samples = Vec::new();
    while Instant::now() < stop {
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await?;
            let mut buf = [0u8; 64];
            let n = tcp.read(&mut buf).await?;
            Ok::<bool, std::io::Error>(buf[..n].starts_with(b"HTTP/1.1 200"))
        })
        .await;
        samples.push(match answer {
            Ok(Ok(true)) => Some(started.elapsed().as_secs_f64() * 1000.0),
            _ => None,
        });
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
    samples
}

fn rss_mb(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// A connection from the `i`th of 127.0.0.2–127.0.0.250.
async fn connect_from(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 249) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(addr).await
}

#[derive(Clone, Copy)]
enum Hold {
    Silent,
    Trickle,
    BigHeaders,
    KeepAlive,
}

/// Opens `--sockets` connections that each misbehave per `hold` until
/// `stop`; reports how many the hub had closed by then.
async fn hold_sockets(args: &Args, stop: Instant, hold: Hold) -> Result<String> {
    let mut tasks = Vec::new();
    for i in 0..args.sockets {
        let addr = args.addr;
        tasks.push(tokio::spawn(async move {
            let Ok(mut tcp) = connect_from(addr, i).await else {
                return Closed::Refused;
            };
            let prelude: &[u8] = match hold {
                Hold::KeepAlive => b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                _ => b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            };
            if tcp.write_all(prelude).await.is_err() {
                return Closed::ByHub;
            }
            let mut sent = 0usize;
            let mut buf = vec![0u8; 4096];
            loop {
                if Instant::now() >= stop {
                    return Closed::StillOpen;
                }
                let step = match hold {
                    Hold::Silent | Hold::KeepAlive => Vec::new(),
                    Hold::Trickle => b"X".to_vec(),
                    Hold::BigHeaders if sent < 400_000 => {
                        format!("X-Pad-{sent}: {}\r\n", "a".repeat(4000)).into_bytes()
                    }
                    Hold::BigHeaders => Vec::new(),
                };
                if !step.is_empty() {
                    if tcp.write_all(&step).await.is_err() {
                        return Closed::ByHub;
                    }
                    sent += step.len();
                }
                let wait = match hold {
                    Hold::BigHeaders if sent < 400_000 => Duration::from_millis(5),
                    _ => Duration::from_millis(500),
                };
                // A read of 0 bytes (or an error) is the hub closing; the
                // answer to the keep-alive request is read and dropped.
                match tokio::time::timeout(wait, tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Closed::ByHub,
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
        }));
    }
    let mut tally = [0usize; 3];
    for t in tasks {
        match t.await? {
            Closed::Refused => tally[0] += 1,
            Closed::ByHub => tally[1] += 1,
            Closed::StillOpen => tally[2] += 1,
        }
    }
    Ok(format!(
        "{} sockets: {} refused, {} closed by the hub, {} still open",
        args.sockets, tally[0], tally[1], tally[2]
    ))
}

enum Closed {
    Refused,
    ByHub,
    StillOpen,
}

/// WebSockets that upgrade and never register.
async fn unregistered(args: &Args, stop: Instant) -> Result<String> {
    let mut tasks = Vec::new();
    for i in 0..args.sockets.min(2000) {
        let addr = args.addr;
        tasks.push(tokio::spawn(async move {
            let Ok(tcp) = connect_from(addr, i).await else {
                return Closed::Refused;
            };
            let url = format!("ws://{addr}/");
            let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, tcp).await else {
                return Closed::Refused;
            };
            use futures_util::StreamExt;
            loop {
                let left = stop.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, ws.next()).await {
                    Err(_) => return Closed::StillOpen,
                    Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                        return Closed::ByHub;
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }));
    }
    let n = tasks.len();
    let mut tally = [0usize; 3];
    for t in tasks {
        match t.await? {
            Closed::Refused => tally[0] += 1,
            Closed::ByHub => tally[1] += 1,
            Closed::StillOpen => tally[2] += 1,
        }
    }
    Ok(format!(
        "{n} websockets: {} refused, {} closed by the hub, {} still open",
        tally[0], tally[1], tally[2]
    ))
}

/// One HTTP/1.1 request on a fresh connection; the status and the size of
/// the body read (capped at `read_cap`).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&str>,
    read_cap: usize,
) -> Result<(u16, usize)> {
    let (status, got) = http_body(addr, method, path, headers, body, read_cap).await?;
    Ok((status, got.len()))
}

/// [`http`], keeping what was read (the head included).
async fn http_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&str>,
    read_cap: usize,
) -> Result<(u16, Vec<u8>)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    if let Some(b) = body {
        tcp.write_all(b.as_bytes()).await?;
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || got.len() >= read_cap {
            break;
        }
        got.extend_from_slice(&buf[..n.min(read_cap - got.len())]);
    }
    let status = std::str::from_utf8(got.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, got))
}

/// A registered member of `session` (a WebSocket), for the attacks that
/// need an existing session.
async fn member(
    addr: SocketAddr,
    session: &str,
    id: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
    ws.send(Message::text(
        json!({"type": "register", "client_id": id, "session": session}).to_string(),
    ))
    .await?;
    Ok(ws)
}

/// Fills a session's log with 64 KB broadcasts (from several members, to
/// stay within each connection's rate limit), then 40 concurrent events GETs
/// until `stop`.
async fn events(args: &Args, stop: Instant) -> Result<String> {
    use futures_util::StreamExt;
    let session = format!("attack-events-{}", std::process::id());
    let payload = "x".repeat(60 * 1024);
    let mut filled = 0;
    // One member: its own broadcasts are sent to no one, so it is never a
    // slow consumer; each is acknowledged (read, so its queue stays empty).
    // The hub must allow the rate (RATE_LIMIT_PER_SEC), as a crowd of
    // members would get it anyway.
    let mut ws = member(args.addr, &session, "filler").await?;
    for n in 0..1000 {
        let frame = json!({"type": "broadcast", "payload": payload, "request_id": n});
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("broadcast_sent") => filled += 1,
            _ => {}
        }
    }
    // The log's head and epoch, then every GET asks for all it still has.
    let head_path = format!("/api/v1/sessions/{session}/events");
    let (_, head) = http_body(args.addr, "GET", &head_path, &[], None, 1 << 20).await?;
    let head = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .and_then(|at| serde_json::from_slice::<serde_json::Value>(&head[at + 4..]).ok())
        .context("the log's head")?;
    let offset = head["offset"].as_u64().unwrap_or(0);
    let epoch = head["epoch"].as_str().unwrap_or_default().to_string();
    let path = format!(
        "/api/v1/sessions/{session}/events?since={}&epoch={epoch}",
        offset.saturating_sub(900)
    );
    let mut rounds = 0;
    let mut largest = 0;
    let mut statuses = std::collections::BTreeMap::new();
    while Instant::now() < stop {
        let gets = (0..40).map(|_| http(args.addr, "GET", &path, &[], None, 256 << 20));
        for r in futures_util::future::join_all(gets).await {
            let (status, bytes) = r?;
            *statuses.entry(status).or_insert(0) += 1;
            largest = largest.max(bytes);
        }
        rounds += 1;
    }
    Ok(format!(
        "{filled} broadcasts of 60 KB; {rounds}×40 GETs, statuses {statuses:?}, largest answer {:.1} MB",
        largest as f64 / 1e6
    ))
}

/// REST sends naming a 30,000-character contact, two at a time.
async fn fuzzy(args: &Args, stop: Instant) -> Result<String> {
    let session = "default";
    let _keep = member(args.addr, session, "fuzzy-member").await?;
    let name = "j".repeat(30_000);
    let body = json!({"command": {"action": "send", "contact": name, "message": "hi"}}).to_string();
    let path = format!("/api/v1/sessions/{session}/commands");
    let mut statuses = std::collections::BTreeMap::new();
    while Instant::now() < stop {
        let sends = (0..2).map(|_| http(args.addr, "POST", &path, &[], Some(&body), 4096));
        for r in futures_util::future::join_all(sends).await {
            *statuses.entry(r?.0).or_insert(0) += 1;
        }
    }
    Ok(format!("30,000-char names: statuses {statuses:?}"))
}

/// `list_contacts` with fresh idempotency keys.
async fn idempotency(args: &Args, stop: Instant) -> Result<String> {
    let session = "default";
    let _keep = member(args.addr, session, "idem-member").await?;
    let body = json!({"command": {"action": "list_contacts"}}).to_string();
    let path = format!("/api/v1/sessions/{session}/commands");
    let mut statuses = std::collections::BTreeMap::new();
    let mut i = 0;
    while Instant::now() < stop && i < 300 {
        let key = format!("attack-{}-{i}", std::process::id());
        let (status, _) = http(
            args.addr,
            "POST",
            &path,
            &[("Idempotency-Key", key)],
            Some(&body),
            1 << 20,
        )
        .await?;
        *statuses.entry(status).or_insert(0) += 1;
        i += 1;
    }
    Ok(format!("{i} fresh keys: statuses {statuses:?}"))
}
