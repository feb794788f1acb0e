//! Faults injected on purpose under load (docs/reliability.md §3): a
//! steady publisher and 30 resuming subscribers spread over two hubs on
//! Redis, then a fault — Redis frozen with SIGSTOP, or the hub holding
//! half the subscribers killed with SIGKILL. Every subscriber counts what
//! it received of the broadcasts the publisher had acknowledged: lost,
//! duplicated, out of order, and how often it had to start afresh
//! (`recovered: false`). The figures are printed (`scripts/chaos` runs
//! longer faults and collects them); the assertions are the guarantees:
//! nothing acknowledged is lost, nothing is delivered twice or out of
//! order, every resume recovers.
//!
//! CI runs the short form; `CHAOS_FAULT_SECS` (default 3) sets how long a
//! fault lasts and `CHAOS_RUN_SECS` (default 6) how long the publisher runs.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const SUBSCRIBERS: usize = 30;
const SESSION: &str = "chaos";
const PUBLISHER: &str = "publisher";
/// The publisher's 100 broadcasts a second are above a client's default
/// rate limit (20/s): raised, so what is refused is the fault's doing.
const UNTHROTTLED: &[&str] = &["--rate-limit-per-sec", "1000", "--rate-limit-burst", "1000"];

fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// What one resuming subscriber received.
#[derive(Debug, Default)]
struct Seen {
    numbers: Vec<u64>,
    /// Resumes answered `recovered: false`.
    resets: u32,
    reconnects: u32,
    /// The longest time between two deliveries (the fault's cost to it).
    longest_gap: Duration,
}

/// Subscribes (on `urls[first]`, then the next one after every drop) and
/// resumes from the last offset it saw, until `done` and quiet.
async fn subscriber(
    urls: Vec<String>,
    first: usize,
    id: String,
    registered: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut since: Option<(u64, String)> = None;
    let mut at = first;
    let mut last_delivery = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(120);
    'connect: loop {
        assert!(Instant::now() < give_up, "{id}: never settled");
        let url = &urls[at % urls.len()];
        let Ok(mut client) = WsClient::try_connect(url, None).await else {
            at += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut register = json!({"type": "register", "session": SESSION, "client_id": id});
        if let Some((offset, epoch)) = &since {
            register["since"] = json!({"offset": offset, "epoch": epoch});
        }
        client.send_json(register).await;
        let confirmed = loop {
            match client.try_recv(Duration::from_secs(5)).await {
                Some(f) if f["type"] == "registration_confirmed" => break f,
                Some(f) if f["type"] == "error" => {
                    // The hub is not ready for it (store unavailable...).
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'connect;
                }
                Some(_) => {}
                None => {
                    at += 1;
                    continue 'connect;
                }
            }
        };
        if since.is_some() && confirmed["recovered"] != true {
            seen.resets += 1;
        }
        if since.is_none() {
            registered.fetch_add(1, Ordering::AcqRel);
        }
        if let (Some(offset), Some(epoch)) =
            (confirmed["offset"].as_u64(), confirmed["epoch"].as_str())
        {
            since = Some((offset, epoch.to_string()));
        }
        loop {
            match client.try_recv(Duration::from_millis(250)).await {
                Some(frame) => {
                    if let (Some(offset), Some(epoch)) =
                        (frame["offset"].as_u64(), frame["epoch"].as_str())
                    {
                        since = Some((offset, epoch.to_string()));
                    }
                    if frame["type"] == "broadcast" && frame["from"] == PUBLISHER {
                        let n = frame["payload"]["n"].as_u64().unwrap_or(u64::MAX);
                        seen.numbers.push(n);
                        seen.longest_gap = seen.longest_gap.max(last_delivery.elapsed());
                        last_delivery = Instant::now();
                    }
                }
                None if client.closed().is_some() => {
                    seen.reconnects += 1;
                    at += 1;
                    continue 'connect;
                }
                None if done.load(Ordering::Acquire)
                    && last_delivery.elapsed() > Duration::from_secs(3) =>
                {
                    return seen;
                }
                None => {}
            }
        }
    }
}

/// Broadcasts `{n}` every 10 ms for `run` from a client of `urls[0]`
/// (then the next hub after a drop); the numbers the hub acknowledged.
async fn publisher(urls: Vec<String>, run: Duration) -> (HashSet<u64>, Vec<String>) {
    let mut acked = HashSet::new();
    let mut refused = Vec::new();
    let until = Instant::now() + run;
    let mut n = 0u64;
    let mut at = 0;
    while Instant::now() < until {
        let url = &urls[at % urls.len()];
        let Ok(mut client) = WsClient::try_connect(url, None).await else {
            at += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        client
            .send_json(json!({"type": "register", "session": SESSION, "client_id": PUBLISHER}))
            .await;
        if client
            .try_recv(Duration::from_secs(5))
            .await
            .map(|f| f["type"].clone())
            != Some(json!("registration_confirmed"))
        {
            at += 1;
            continue;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while Instant::now() < until {
            tick.tick().await;
            n += 1;
            let rid = format!("p{n}");
            client
                .send_json(json!({"type": "broadcast", "payload": {"n": n}, "request_id": rid}))
                .await;
            // The acknowledgement, or the refusal (store unavailable):
            // only acknowledged broadcasts are owed to the subscribers.
            let answer = loop {
                match client.try_recv(Duration::from_secs(10)).await {
                    Some(f) if f["request_id"] == rid.as_str() => break Some(f),
                    Some(_) => {}
                    None => break None,
                }
            };
            match answer {
                Some(a) if a["type"] == "response" => {
                    acked.insert(n);
                }
                Some(a) => refused.push(a["code"].as_str().unwrap_or("?").to_string()),
                None => {
                    at += 1;
                    break;
                }
            }
        }
    }
    (acked, refused)
}

/// Checks and prints what every subscriber saw of the acknowledged numbers.
fn report(
    fault: &str,
    acked: &HashSet<u64>,
    refused: &[String],
    seen: &[Seen],
    recovery: Duration,
) {
    let mut lost = 0;
    let mut duplicated = 0;
    let mut out_of_order = 0;
    for s in seen {
        let got: HashSet<u64> = s.numbers.iter().copied().collect();
        lost += acked.difference(&got).count();
        duplicated += s.numbers.len() - got.len();
        out_of_order += s.numbers.windows(2).filter(|w| w[1] < w[0]).count();
    }
    let resets: u32 = seen.iter().map(|s| s.resets).sum();
    let reconnects: u32 = seen.iter().map(|s| s.reconnects).sum();
    let gap = seen.iter().map(|s| s.longest_gap).max().unwrap_or_default();
    println!(
        "chaos {fault}: acknowledged={} refused={} {:?} subscribers={} reconnects={reconnects} \
         lost={lost} duplicated={duplicated} out_of_order={out_of_order} resets={resets} \
         longest_gap_ms={} ready_again_ms={}",
        acked.len(),
        refused.len(),
        refused.iter().collect::<HashSet<_>>(),
        seen.len(),
        gap.as_millis(),
        recovery.as_millis()
    );
    assert!(!acked.is_empty(), "the publisher got nothing through");
    assert_eq!(
        (lost, duplicated, out_of_order, resets),
        (0, 0, 0, 0),
        "{fault}: lost, duplicated, out of order, resets"
    );
}

/// Runs the publisher and the subscribers around `fault` (which runs
/// while they do and returns when the system is whole again).
async fn under_load(
    name: &str,
    urls: Vec<String>,
    publisher_urls: Vec<String>,
    fault: impl Future<Output = Duration>,
) {
    let done = Arc::new(AtomicBool::new(false));
    let registered = Arc::new(AtomicUsize::new(0));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            tokio::spawn(subscriber(
                urls.clone(),
                i,
                format!("sub-{i}"),
                registered.clone(),
                done.clone(),
            ))
        })
        .collect();
    // Every subscriber registers before the first broadcast: one that
    // registered later would not be owed the earlier ones.
    wait_until_async(
        "every subscriber registered",
        Duration::from_secs(30),
        || {
            let registered = registered.clone();
            async move { registered.load(Ordering::Acquire) == SUBSCRIBERS }
        },
    )
    .await;
    let publishing = tokio::spawn(publisher(publisher_urls, secs("CHAOS_RUN_SECS", 6)));
    let recovery = fault.await;
    let (acked, refused) = publishing.await.expect("publisher");
    done.store(true, Ordering::Release);
    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(s.await.expect("subscriber"));
    }
    report(name, &acked, &refused, &seen, recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_with_sigstop_loses_nothing_acknowledged() {
    let redis = RedisServer::start();
    let hubs = start_cluster(&redis, &["hub-a", "hub-b"], UNTHROTTLED).await;
    let urls: Vec<String> = hubs.iter().map(|h| h.ws_url()).collect();
    let publisher_urls = vec![urls[0].clone()];
    let fault_for = secs("CHAOS_FAULT_SECS", 3);
    let hubs_ref = &hubs;
    under_load("redis-sigstop", urls.clone(), publisher_urls, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.freeze();
        tokio::time::sleep(fault_for).await;
        redis.resume();
        let started = Instant::now();
        for hub in hubs_ref {
            hub.wait_ready_for(Duration::from_secs(60)).await;
        }
        started.elapsed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_with_9_loses_nothing_its_subscribers_resume() {
    let redis = RedisServer::start();
    let a_args = member_args(redis.hub_args(), "hub-a", UNTHROTTLED);
    let b_args = member_args(redis.hub_args(), "hub-b", UNTHROTTLED);
    let mut doomed =
        HubProcess::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let survivor =
        HubProcess::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let urls = vec![doomed.ws_url(), survivor.ws_url()];
    // The publisher is on the survivor; half the subscribers lose their hub.
    let publisher_urls = vec![survivor.ws_url()];
    let survivor_ref = &survivor;
    under_load("hub-kill-9", urls, publisher_urls, async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        doomed.kill();
        // The survivor stays ready throughout.
        survivor_ref.wait_ready().await;
        Duration::ZERO
    })
    .await;
}

// ------------------------------------------- one hub's link to Redis, faulty

/// hub-a reaches Redis through a [`FaultyLink`]; hub-b directly. A long
/// log, so a hub cut off for the whole fault catches up from it.
async fn hubs_with_a_faulty_link(redis: &RedisServer) -> (Vec<TestHub>, FaultyLink) {
    let link = FaultyLink::to(redis.port).await;
    let mut hubs = Vec::new();
    for (id, redis_port) in [("hub-a", link.port), ("hub-b", redis.port)] {
        let redis_args = vec![
            "--redis-url".into(),
            format!("redis://127.0.0.1:{redis_port}"),
        ];
        let mut extra = vec!["--session-log-len", "20000"];
        extra.extend_from_slice(UNTHROTTLED);
        let args = member_args(redis_args, id, &extra);
        hubs.push(TestHub::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await);
    }
    (hubs, link)
}

/// `mode` on hub-a's Redis link for the fault's length, under load, the
/// publisher on hub `publisher` (0: the faulty link's, 1: the other).
async fn faulty_link_under_load(name: &str, mode: Link, publisher: usize) {
    let redis = RedisServer::start();
    let (hubs, link) = hubs_with_a_faulty_link(&redis).await;
    let urls: Vec<String> = hubs.iter().map(|h| h.ws_url()).collect();
    let fault_for = secs("CHAOS_FAULT_SECS", 3);
    let hubs_ref = &hubs;
    under_load(name, urls.clone(), vec![urls[publisher].clone()], async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        link.set(mode);
        tokio::time::sleep(fault_for).await;
        link.set(Link::Pass);
        let started = Instant::now();
        hubs_ref[0].wait_ready_for(Duration::from_secs(60)).await;
        started.elapsed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_partitioned_from_redis_loses_nothing_acknowledged() {
    // The publisher is on the hub that keeps Redis.
    faulty_link_under_load("partition-hub-redis", Link::Cut, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_loss_on_a_hub_s_redis_link_lose_nothing_acknowledged() {
    // The publisher is on the hub whose link suffers.
    faulty_link_under_load("latency-200ms-loss-5pct", Link::Lossy, 0).await;
}
