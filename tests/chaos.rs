//! Faults injected on purpose under load (docs/reliability.md §3): a
//! steady publisher and 30 resuming subscribers spread over two hubs on
//! Redis, then a fault — Redis frozen with SIGSTOP, the hub holding half
//! the subscribers killed with SIGKILL, one hub's Redis link cut or lossy,
//! the hub holding the agent killed in the middle of a send, a wall-clock
//! step on one hub (libfaketime) — or a standalone hub on a slow disk,
//! killed and restarted on it. Every subscriber counts what it received
//! of the broadcasts the publisher had acknowledged: lost, duplicated, out
//! of order, and how often it had to start afresh (`recovered: false`).
//! The figures are printed (`scripts/chaos` runs longer faults and
//! collects them); the assertions are the guarantees: nothing
//! acknowledged is lost, nothing is delivered twice or out of order, every
//! resume recovers.
//!
//! CI runs the short form; `CHAOS_FAULT_SECS` (default 3) sets how long a
//! fault lasts and `CHAOS_RUN_SECS` (default 6) how long the publisher runs.

use crate::support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
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
        let Some(mut client) = WsClient::connect_if_up(url).await else {
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

/// What the publisher got: the numbers the hub acknowledged, its refusals,
/// and how long each acknowledgement took.
#[derive(Default)]
struct Published {
    acked: HashSet<u64>,
    refused: Vec<String>,
    ack_latencies: Vec<Duration>,
    ran_for: Duration,
}

/// Broadcasts `{n}` every 10 ms (or as fast as the acknowledgements come,
/// one at a time) for `run` from a client of `urls[0]` (then the next hub
/// after a drop).
async fn publisher(urls: Vec<String>, run: Duration) -> Published {
    let mut out = Published::default();
    let started = Instant::now();
    let until = started + run;
    let mut n = 0u64;
    let mut at = 0;
    while Instant::now() < until {
        let url = &urls[at % urls.len()];
        let Some(mut client) = WsClient::connect_if_up(url).await else {
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
            let sent_at = Instant::now();
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
                    out.acked.insert(n);
                    out.ack_latencies.push(sent_at.elapsed());
                }
                Some(a) => out
                    .refused
                    .push(a["code"].as_str().unwrap_or("?").to_string()),
                None => {
                    at += 1;
                    break;
                }
            }
        }
    }
    out.ran_for = started.elapsed();
    out
}

/// The `q` quantile of `samples`, in milliseconds.
fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let at = ((last as f64) * q).round() as usize;
    sorted[at.min(last)].as_secs_f64() * 1000.0
}

/// Checks and prints what every subscriber saw of the acknowledged numbers.
fn report(fault: &str, published: &Published, seen: &[Seen], recovery: Duration) {
    let acked = &published.acked;
    let refused = &published.refused;
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
         longest_gap_ms={} ready_again_ms={} ack_p50_ms={:.1} ack_p99_ms={:.1} acks_per_s={:.1}",
        acked.len(),
        refused.len(),
        refused.iter().collect::<HashSet<_>>(),
        seen.len(),
        gap.as_millis(),
        recovery.as_millis(),
        quantile_ms(&published.ack_latencies, 0.5),
        quantile_ms(&published.ack_latencies, 0.99),
        acked.len() as f64 / published.ran_for.as_secs_f64().max(0.001),
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
    let published = publishing.await.expect("publisher");
    done.store(true, Ordering::Release);
    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(s.await.expect("subscriber"));
    }
    report(name, &published, &seen, recovery);
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

// ------------------------------------- the agent's hub killed mid-send

const AGENT: &str = "wa-agent";
const SENDER: &str = "sender";
const ORDER_TEXT: &str = "order 42 shipped";
const ORDER_KEY: &str = "order-42-shipped";

/// What the agent was asked to do: the `execute` call ids of the order.
#[derive(Default)]
struct AgentLog {
    executed: Vec<String>,
}

/// An agent (`capabilities: ["whatsapp"]`) that knows Alice and answers
/// every `execute` of the order with a success — except the first, which
/// it holds (a send still in flight), telling `holding`. After a drop it
/// registers again on the next hub. Runs until `stop`.
async fn agent(
    urls: Vec<String>,
    holding: tokio::sync::oneshot::Sender<()>,
    log: Arc<std::sync::Mutex<AgentLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut holding = Some(holding);
    let mut at = 0;
    while !stop.load(Ordering::Acquire) {
        let url = &urls[at % urls.len()];
        let Some(mut client) = WsClient::connect_if_up(url).await else {
            at += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        client
            .send_json(
                json!({"type": "register", "session": SESSION, "client_id": AGENT,
                              "capabilities": ["whatsapp"], "request_id": "reg"}),
            )
            .await;
        client
            .send_json(json!({"type": "contacts_update", "request_id": "contacts",
                              "contacts": [{"name": "Alice", "phone": "+15550001"}]}))
            .await;
        loop {
            match client.try_recv(Duration::from_millis(100)).await {
                Some(f) if f["type"] == "execute" => {
                    let call = f["request_id"].as_str().unwrap_or_default().to_string();
                    if f["command"]["message"] != ORDER_TEXT {
                        // Anything else (none expected) fails plainly.
                        client
                            .send_json(json!({"type": "execute_result", "request_id": call,
                                              "content": {"success": false, "error": "unexpected"}}))
                            .await;
                        continue;
                    }
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.executed.push(call.clone());
                        log.executed.len()
                    };
                    if let Some(tell) = holding.take() {
                        let _ = tell.send(());
                        continue;
                    }
                    client
                        .send_json(json!({"type": "execute_result", "request_id": call,
                                          "content": {"success": true, "contact": "Alice",
                                                      "message": ORDER_TEXT,
                                                      "message_id": format!("wamid.order-{n}")}}))
                        .await;
                }
                Some(_) => {}
                None if client.closed().is_some() => {
                    at += 1;
                    break;
                }
                None if stop.load(Ordering::Acquire) => {
                    client.close().await;
                    return;
                }
                None => {}
            }
        }
    }
}

/// Sends the order on `url` with its idempotency key until an answer is
/// final; every answer the sender got, in order.
async fn sender(url: String) -> Vec<Value> {
    let (mut client, _) = WsClient::register(&url, SESSION, SENDER).await;
    let mut answers = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < give_up,
            "the order never got a final answer: {answers:?}"
        );
        let mut order = send_cmd("alice", ORDER_TEXT);
        order["idempotency_key"] = json!(ORDER_KEY);
        let answer = client.request(order).await;
        answers.push(answer.clone());
        let retry = answer["type"] == "error"
            && matches!(
                answer["code"].as_str(),
                Some("agent_timeout" | "agent_unavailable")
            );
        if !retry {
            return answers;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_s_hub_killed_with_9_mid_send_sends_once_per_attempt() {
    let redis = RedisServer::start();
    // No connector but the agent: nothing is "sent" unless the agent says so.
    let mut extra = vec!["--connector", "none", "--agent-timeout-ms", "1500"];
    extra.extend_from_slice(UNTHROTTLED);
    let x_args = member_args(redis.hub_args(), "hub-x", &extra);
    let y_args = member_args(redis.hub_args(), "hub-y", &extra);
    let mut hub_x =
        HubProcess::start(&x_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let hub_y =
        HubProcess::start(&y_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let (x_url, y_url) = (hub_x.ws_url(), hub_y.ws_url());
    let log = Arc::new(std::sync::Mutex::new(AgentLog::default()));
    let stop_agent = Arc::new(AtomicBool::new(false));
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let agent_task = tokio::spawn(agent(
        vec![x_url.clone(), y_url.clone()],
        held_tx,
        log.clone(),
        stop_agent.clone(),
    ));
    let session_path = format!("/api/v1/sessions/{SESSION}");
    wait_until_async("hub-y sees the agent on hub-x", RECV_TIMEOUT, || async {
        let (_, summary) = http_get_json(&hub_y, &session_path).await;
        summary["agent"]["instance"] == "hub-x" && summary["contacts"].to_string().contains("Alice")
    })
    .await;

    let hub_y_ref = &hub_y;
    let mut answers = Vec::new();
    let answers_ref = &mut answers;
    under_load(
        "agent-hub-kill-9-mid-send",
        vec![x_url.clone(), y_url.clone()],
        vec![y_url.clone()],
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sending = tokio::spawn(sender(hub_y_ref.ws_url()));
            // The agent holds the send: its hub dies under it.
            tokio::time::timeout(RECV_TIMEOUT, held_rx)
                .await
                .expect("the order reached the agent")
                .expect("the agent tells");
            hub_x.kill();
            let killed = Instant::now();
            *answers_ref = sending.await.expect("sender");
            hub_y_ref.wait_ready().await;
            killed.elapsed()
        },
    )
    .await;

    // One more try with the key after the success: replayed, not executed.
    let executed_before = log.lock().unwrap().executed.len();
    let replay = sender(y_url.clone()).await;
    assert_eq!(replay.len(), 1, "{replay:?}");
    assert_eq!(replay[0]["content"], answers.last().unwrap()["content"]);

    stop_agent.store(true, Ordering::Release);
    agent_task.await.expect("agent");
    let executed = log.lock().unwrap().executed.clone();
    assert_eq!(
        executed.len(),
        executed_before,
        "a replay reached the agent"
    );

    // Every attempt the sender was told about ran at most once on the
    // agent; exactly one succeeded, and it is the last answer.
    let codes: Vec<String> = answers
        .iter()
        .map(|a| match a["type"].as_str() {
            Some("error") => a["code"].as_str().unwrap_or("?").to_string(),
            _ => format!("success={}", a["content"]["success"]),
        })
        .collect();
    println!(
        "chaos agent-hub-kill-9-mid-send: sender answers {codes:?}, agent executions {}",
        executed.len()
    );
    let successes = codes.iter().filter(|c| *c == "success=true").count();
    assert_eq!(successes, 1, "{codes:?}");
    assert_eq!(codes.last().map(String::as_str), Some("success=true"));
    let told_might_have_run = codes
        .iter()
        .filter(|c| {
            matches!(
                c.as_str(),
                "success=true" | "agent_timeout" | "agent_disconnected"
            )
        })
        .count();
    assert!(
        executed.len() <= told_might_have_run,
        "the agent executed the order {} times for {codes:?}",
        executed.len()
    );
    let distinct: HashSet<&String> = executed.iter().collect();
    assert_eq!(distinct.len(), executed.len(), "one call executed twice");

    // One history entry, read from the hub's store once the agent is gone.
    wait_until_async("the agent role is released", RECV_TIMEOUT, || async {
        http_get_json(&hub_y, &session_path).await.1["agent"].is_null()
    })
    .await;
    let (status, history) =
        http_get_json(&hub_y, &format!("{session_path}/history/alice?limit=500")).await;
    assert_eq!(status, 200, "{history}");
    let sent = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["message"] == ORDER_TEXT)
        .count();
    assert_eq!(sent, 1, "{history}");
}

// ------------------------------------------- a slow disk under DATA_DIR

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_slows_acknowledgements_and_loses_nothing_across_a_kill_9() {
    // About 100 ms an fsync (40 writes a second; a commit is a few).
    let Some(disk) = SlowDisk::mount(64, 40) else {
        return;
    };
    let data_dir = disk.path().join("data");
    let data_dir = data_dir.to_str().expect("utf8").to_string();
    let mut args = vec!["--data-dir", data_dir.as_str()];
    args.extend_from_slice(UNTHROTTLED);
    let hub = HubProcess::start(&args, &[]).await;
    let port = hub.addr.port().to_string();
    let url = hub.ws_url();
    let restarted = std::sync::Mutex::new(None);
    let restarted_ref = &restarted;
    let args_ref = &args;
    let fault_for = secs("CHAOS_FAULT_SECS", 3);
    under_load(
        "slow-disk-40-writes-per-s",
        vec![url.clone()],
        vec![url],
        async move {
            let mut hub = hub;
            // Half the fault on the slow disk, then a crash and a restart on it.
            tokio::time::sleep(Duration::from_secs(1) + fault_for / 2).await;
            hub.kill();
            let killed = Instant::now();
            let mut again = args_ref.clone();
            again.extend_from_slice(&["--port", &port]);
            let hub = HubProcess::start(&again, &[]).await;
            let ready_after = killed.elapsed();
            *restarted_ref.lock().unwrap() = Some(hub);
            ready_after
        },
    )
    .await;
    let fsync = disk.probe_fsync();
    println!("chaos slow-disk-40-writes-per-s: fsync after the run {fsync:?}");
    drop(restarted);
}

// -------------------------------------------- a clock step on one instance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_on_one_hub_loses_nothing_and_both_stay_ready() {
    let Some(clock) = FakeClock::new() else {
        return;
    };
    let redis = RedisServer::start();
    let a_args = member_args(redis.hub_args(), "hub-a", UNTHROTTLED);
    let b_args = member_args(redis.hub_args(), "hub-b", UNTHROTTLED);
    let envs = clock.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let stepped = HubProcess::start(
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &envs,
    )
    .await;
    let steady =
        HubProcess::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let urls = vec![stepped.ws_url(), steady.ws_url()];
    // The publisher on the stepped hub: its timestamps jump.
    let publisher_urls = vec![stepped.ws_url()];
    let fault_for = secs("CHAOS_FAULT_SECS", 3);
    let (stepped_ref, steady_ref, clock_ref) = (&stepped, &steady, &clock);
    under_load(
        "clock-step-back-1h-forward-2h",
        urls,
        publisher_urls,
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let everyone = presence_seen_by(&[stepped_ref, steady_ref]).await;
            assert_eq!(everyone, [SUBSCRIBERS; 2], "before the steps");
            for offset in [-3600, 3600] {
                clock_ref.set_offset_secs(offset);
                // Several presence TTLs (1 s): a reaper would have struck.
                tokio::time::sleep((fault_for / 2).max(Duration::from_millis(2500))).await;
                let seen = presence_seen_by(&[stepped_ref, steady_ref]).await;
                assert_eq!(seen, everyone, "the clients each hub lists, {offset:+} s");
            }
            let started = Instant::now();
            for hub in [stepped_ref, steady_ref] {
                hub.wait_ready().await;
            }
            started.elapsed()
        },
    )
    .await;
}

/// How many of the subscribers each hub lists (its session summary; the
/// publisher may have finished).
async fn presence_seen_by(hubs: &[&HubProcess]) -> Vec<usize> {
    let mut seen = Vec::new();
    for hub in hubs {
        let (_, summary) = http_get_json(*hub, &format!("/api/v1/sessions/{SESSION}")).await;
        let clients = summary["clients"].as_array().cloned().unwrap_or_default();
        let subscribers = clients
            .iter()
            .filter(|c| {
                c["client_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("sub-"))
            })
            .count();
        seen.push(subscribers);
    }
    seen
}
