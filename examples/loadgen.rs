//! Broadcast fan-out benchmark against running hubs.
//!
//! Connects `--clients` receivers (spread round-robin over `--url`s, e.g.
//! three hubs of a cluster), then one producer sends `--messages`
//! broadcasts carrying their send time. Every receiver records the
//! producer-to-receiver latency; the tool prints throughput, latency
//! percentiles and any lost or duplicated deliveries.
//!
//!   cargo run --release --example loadgen -- --url ws://127.0.0.1:8002/ --clients 200 --messages 500
//!
//! Only for hubs you run yourself on loopback; every loop is bounded.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    urls: Vec<String>,
    clients: usize,
    messages: usize,
    payload_bytes: usize,
    rate_per_sec: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        urls: Vec::new(),
        clients: 100,
        messages: 200,
        payload_bytes: 100,
        rate_per_sec: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.urls.push(value()),
            "--clients" => args.clients = value().parse().expect("--clients N"),
            "--messages" => args.messages = value().parse().expect("--messages N"),
            "--payload-bytes" => args.payload_bytes = value().parse().expect("--payload-bytes N"),
            "--rate" => {
                args.rate_per_sec = value()
                    .parse()
                    .expect("--rate per second (0 = as fast as allowed)")
            }
            other => panic!("unknown flag {other}"),
        }
    }
    if args.urls.is_empty() {
        args.urls.push("ws://127.0.0.1:8002/".into());
    }
    args
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn register(
    url: &str,
    session: &str,
    id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = connect_async(url).await.expect("connect");
    let reg = json!({"type":"register","session":session,"client_id":id});
    ws.send(Message::Text(reg.to_string().into()))
        .await
        .expect("register");
    // registration_confirmed + contact_list_broadcast
    for _ in 0..2 {
        ws.next().await.expect("frame").expect("frame");
    }
    ws
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let session = format!("bench-{}", now_micros());
    let expected = args.messages;

    let mut receivers = Vec::new();
    for i in 0..args.clients {
        let url = args.urls[i % args.urls.len()].clone();
        let ws = register(&url, &session, &format!("r{i}")).await;
        receivers.push(ws);
    }
    let mut tasks = Vec::new();
    for mut ws in receivers {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(expected);
            let mut seen = vec![0u32; expected];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while latencies.len() < expected {
                let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                };
                let v: Value = serde_json::from_str(msg.as_str()).unwrap_or(Value::Null);
                if v["type"] != "broadcast" || v["from"] != "producer" {
                    continue;
                }
                let sent = v["payload"]["t"].as_u64().unwrap_or(0);
                let seq = v["payload"]["seq"].as_u64().unwrap_or(0) as usize;
                if seq < seen.len() {
                    seen[seq] += 1;
                }
                latencies.push(now_micros().saturating_sub(sent));
            }
            let dupes = seen.iter().filter(|&&n| n > 1).count();
            let lost = seen.iter().filter(|&&n| n == 0).count();
            (latencies, lost, dupes)
        }));
    }

    let mut producer = register(&args.urls[0], &session, "producer").await;
    let filler = "x".repeat(args.payload_bytes);
    let started = Instant::now();
    let gap = (args.rate_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate_per_sec));
    for seq in 0..args.messages {
        let frame =
            json!({"type":"broadcast","payload":{"seq":seq,"t":now_micros(),"fill":filler}});
        producer
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
        if let Some(gap) = gap {
            tokio::time::sleep(gap).await;
        }
    }

    let mut all = Vec::new();
    let (mut lost, mut dupes) = (0, 0);
    for t in tasks {
        let (lat, l, d) = t.await.expect("receiver");
        all.extend(lat);
        lost += l;
        dupes += d;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all[i] as f64 / 1000.0
    };
    println!(
        "hubs={} clients={} messages={} payload={}B",
        args.urls.len(),
        args.clients,
        args.messages,
        args.payload_bytes
    );
    println!(
        "deliveries={} in {:.2}s => {:.0} deliveries/s; lost={} duplicated={}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        lost,
        dupes
    );
    println!(
        "latency ms: p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}
