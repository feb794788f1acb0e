//! Redis Sentinel (issue 14): hubs find their master through three real
//! Sentinels and follow a failover under steady broadcast load — a
//! `kill -9` of the master and a manual `SENTINEL FAILOVER` that leaves
//! the old master writable — serving again within a documented bound,
//! writing nothing more to a replaced master, and losing no acknowledged
//! broadcast for live or resuming (`since`) clients. `/ready` is 503 while
//! no master is reachable, and a node that answers `READONLY` (a demoted
//! master) is dropped. Real redis-server and `redis-server --sentinel`
//! processes on free loopback ports (tests/support: `SentinelSet`), hubs
//! in-process.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcp_hub::metrics::Metrics;
use mcp_hub::redis::{RedisBackend, RedisErrorKind};
use serde_json::{Value, json};
use support::*;

/// deploy/redis/sentinel.conf: `down-after-milliseconds`.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// deploy/redis/sentinel.conf: `failover-timeout`; a failed attempt is
/// retried after twice this, so a failover is done within 2 × this.
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);
/// The hub's own bound once a master is named again (docs/redis.md,
/// "Sentinel"): the reconnect backoff cap (5 s) plus the catch-up read and
/// one heartbeat (300 ms here), with room for a loaded machine.
const HUB_BOUND: Duration = Duration::from_secs(7);

const SESSION: &str = "failover";
const PRODUCERS: usize = 3;

fn hub_args(set: &SentinelSet, id: &str) -> Vec<String> {
    [
        "--redis-sentinels",
        &set.addresses(),
        "--redis-sentinel-master",
        SENTINEL_MASTER,
        "--instance-id",
        id,
        "--heartbeat-ms",
        "300",
        // Longer than the outage: this test is about delivery, not about
        // reaping instances that were merely cut off from Redis.
        "--presence-ttl-ms",
        "30000",
        "--rate-limit-per-sec",
        "5000",
        "--rate-limit-burst",
        "5000",
        "--session-log-len",
        "20000",
    ]
    .map(str::to_string)
    .to_vec()
}

async fn start_hub(set: &SentinelSet, id: &str) -> TestHub {
    let args = hub_args(set, id);
    TestHub::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// Per producer, the `n` of every broadcast received, in arrival order;
/// `end` holds the producers whose final marker arrived.
#[derive(Default)]
struct Received {
    by_producer: BTreeMap<String, Vec<u64>>,
    ended: usize,
    last_offset: u64,
    epoch: Option<String>,
}

impl Received {
    fn take(&mut self, frame: &Value) {
        if let Some(offset) = frame["offset"].as_u64() {
            self.last_offset = offset;
            self.epoch = frame["epoch"].as_str().map(str::to_string);
        }
        if frame["type"] != "broadcast" {
            return;
        }
        if frame["payload"]["end"] == true {
            self.ended += 1;
        } else if let Some(n) = frame["payload"]["n"].as_u64() {
            let from = frame["from"].as_str().unwrap_or_default().to_string();
            self.by_producer.entry(from).or_default().push(n);
        }
    }
}

/// Reads until every producer's end marker arrived (bounded).
async fn read_to_end(c: &mut WsClient, seen: &mut Received, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.ended < PRODUCERS {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{who}: timed out before every end marker");
        if let Some(frame) = c.try_recv(left).await {
            seen.take(&frame);
        }
    }
}

/// Sends broadcasts every 10 ms until `stop`, then an end marker (retried
/// until accepted); returns the `n` of every broadcast acknowledged
/// (`broadcast_sent`: the hub queued it for the log).
fn produce(
    mut c: WsClient,
    acked_count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(WsClient, Vec<u64>)> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0;
        while !stop.load(Ordering::Acquire) {
            tick.tick().await;
            let answer = c
                .request(json!({"type": "broadcast", "payload": {"n": n}}))
                .await;
            if answer["response_type"] == "broadcast_sent" {
                acked.push(n);
                acked_count.fetch_add(1, Ordering::AcqRel);
            } else {
                assert_eq!(answer["code"], "store_unavailable", "{answer}");
            }
            n += 1;
        }
        loop {
            let answer = c
                .request(json!({"type": "broadcast", "payload": {"end": true}}))
                .await;
            if answer["response_type"] == "broadcast_sent" {
                break;
            }
            tick.tick().await;
        }
        (c, acked)
    })
}

/// How the master is replaced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Failover {
    /// `kill -9`: no master until the Sentinels promote the replica.
    KillMaster,
    /// `SENTINEL FAILOVER`: the old master stays up, still a master, until
    /// the Sentinels demote it (seconds later).
    Manual,
}

/// `kill -9` of the master under load over three hubs: the Sentinels
/// promote the replica, every hub serves again (ready, a broadcast crosses
/// instances) within down-after + failover + HUB_BOUND, and every reader —
/// those that stayed connected and those that resume with `since` on
/// another hub — has every acknowledged broadcast exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_follow_a_failover_and_resuming_clients_lose_nothing() {
    failover_under_load(Failover::KillMaster).await;
}

/// A manual failover leaves the old master up and writable until the
/// Sentinels demote it: the hubs move to the promoted replica at its
/// `+switch-master` and write nothing more to the old one (what they wrote
/// there would be lost at the demotion); readers lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_leave_a_replaced_master_at_once() {
    failover_under_load(Failover::Manual).await;
}

/// Append scripts the old master ran so far.
fn scripts_run(redis: &RedisServer) -> u64 {
    redis
        .cmd(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn failover_under_load(cause: Failover) {
    let mut set = SentinelSet::start();
    let old_master = set.master.port;
    let mut hubs = Vec::new();
    for id in ["s1", "s2", "s3"] {
        hubs.push(start_hub(&set, id).await);
    }
    // Readers that stay connected through the failover, two per hub, and
    // one per hub that leaves before the kill and resumes after it.
    let mut readers = Vec::new();
    let mut resumers = Vec::new();
    for (h, hub) in hubs.iter().enumerate() {
        for r in 0..2 {
            let (c, _) =
                WsClient::register(&hub.ws_url(), SESSION, &format!("reader-{h}-{r}")).await;
            readers.push((format!("reader-{h}-{r}"), c, Received::default()));
        }
        let (c, _) = WsClient::register(&hub.ws_url(), SESSION, &format!("resumer-{h}")).await;
        resumers.push((format!("resumer-{h}"), h, c, Received::default()));
    }
    // Readers drain all the time, so no queue fills while the hubs wait.
    let stop = Arc::new(AtomicBool::new(false));
    let reader_tasks: Vec<_> = readers
        .into_iter()
        .map(|(id, mut c, mut seen)| {
            tokio::spawn(async move {
                read_to_end(&mut c, &mut seen, &id).await;
                (id, c, seen)
            })
        })
        .collect();
    let acked_count = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for (p, hub) in hubs.iter().enumerate() {
        let (c, _) = WsClient::register(&hub.ws_url(), SESSION, &format!("producer-{p}")).await;
        producers.push(produce(c, acked_count.clone(), stop.clone()));
    }
    wait_until_async("150 broadcasts before the kill", START_TIMEOUT, || {
        let n = acked_count.load(Ordering::Acquire);
        async move { n >= 150 }
    })
    .await;
    // The resumers read what reached them and leave.
    for (_, _, c, seen) in resumers.iter_mut() {
        for f in c.flush().await {
            seen.take(&f);
        }
    }
    let mut left = Vec::new();
    for (id, h, c, seen) in resumers {
        c.close().await;
        left.push((id, h, seen));
    }

    // Registering needs Redis: the probe pair joins before the kill.
    let (mut probe, _) = WsClient::register(&hubs[0].ws_url(), "probe", "probe").await;
    let (mut listener, _) = WsClient::register(&hubs[2].ws_url(), "probe", "listener").await;
    let killed_at = Instant::now();
    let deadline = match cause {
        Failover::KillMaster => {
            set.master.stop();
            // No master reachable: every hub says so.
            for hub in &hubs {
                wait_until_async("/ready 503 without a master", DOWN_AFTER * 5, || async {
                    hub.ready_status().await == Some(503)
                })
                .await;
            }
            DOWN_AFTER + 2 * FAILOVER_TIMEOUT + HUB_BOUND
        }
        Failover::Manual => {
            let answer = set.sentinels[0].cmd(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
            assert_eq!(answer, "OK");
            // Serving counts only once the replica is the master.
            wait_until_async("the replica's promotion", 2 * FAILOVER_TIMEOUT, || async {
                set.master_port() == Some(set.replica.port)
            })
            .await;
            2 * FAILOVER_TIMEOUT + HUB_BOUND
        }
    };
    let mut k = 0;
    loop {
        assert!(
            killed_at.elapsed() < deadline,
            "hubs not serving again within {deadline:?} of the {cause:?} (master named: {:?})",
            set.master_port()
        );
        let ready = {
            let mut all = true;
            for hub in &hubs {
                all &= hub.ready_status().await == Some(200);
            }
            all
        };
        k += 1;
        if ready
            && probe
                .request(json!({"type": "broadcast", "payload": {"probe": k}}))
                .await["response_type"]
                == "broadcast_sent"
        {
            let crossed = async {
                loop {
                    let f = listener.recv_type("broadcast").await;
                    if f["payload"]["probe"] == k {
                        break;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(2), crossed)
                .await
                .is_ok()
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_in = killed_at.elapsed();
    let new_master = set.master_port();
    assert!(
        new_master.is_some_and(|p| p != old_master),
        "the Sentinels promoted the replica: {new_master:?}"
    );
    eprintln!("hubs serving again {recovered_in:?} after the {cause:?}");
    let old_master_scripts = (cause == Failover::Manual).then(|| scripts_run(&set.master));

    // Some load on the new master, then the producers stop.
    let now = acked_count.load(Ordering::Acquire);
    wait_until_async("150 broadcasts after the failover", START_TIMEOUT, || {
        let n = acked_count.load(Ordering::Acquire);
        async move { n >= now + 150 }
    })
    .await;
    stop.store(true, Ordering::Release);
    if let Some(before) = old_master_scripts {
        assert_eq!(
            scripts_run(&set.master),
            before,
            "no event went to the replaced master after the hubs moved"
        );
    }
    let mut acked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (p, task) in producers.into_iter().enumerate() {
        let (c, list) = task.await.unwrap();
        acked.insert(format!("producer-{p}"), list);
        c.close().await;
    }

    // Resume on the next hub with the last offset seen before leaving.
    let mut everyone = Vec::new();
    for (id, h, mut seen) in left {
        let epoch = seen.epoch.clone().expect("events before the kill");
        let (mut c, conf) = WsClient::register_with(
            &hubs[(h + 1) % 3].ws_url(),
            json!({"type": "register", "session": SESSION, "client_id": id,
                   "since": {"offset": seen.last_offset, "epoch": epoch}}),
        )
        .await;
        assert_eq!(conf["recovered"], true, "{id}: the log survived: {conf}");
        read_to_end(&mut c, &mut seen, &id).await;
        everyone.push((id, c, seen));
    }
    for task in reader_tasks {
        everyone.push(task.await.unwrap());
    }

    let mut lost = 0;
    for (id, c, seen) in everyone {
        for (producer, sent) in &acked {
            let got = seen.by_producer.get(producer).cloned().unwrap_or_default();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{id}: {producer}'s broadcasts once each, in order: {got:?}"
            );
            lost += sent
                .iter()
                .filter(|n| got.binary_search(n).is_err())
                .count();
        }
        c.close().await;
    }
    let total: usize = acked.values().map(Vec::len).sum();
    eprintln!("acknowledged broadcasts: {total}; missing at readers: {lost}");
    assert_eq!(lost, 0, "acknowledged broadcasts lost at the failover");
    probe.close().await;
    listener.close().await;
}

/// Sentinels that name no reachable master (here: none answer at all):
/// the hub is alive but not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_no_master_is_reachable() {
    let nowhere = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let hub = TestHub::start_unready(&[
        "--redis-sentinels",
        &nowhere,
        "--redis-sentinel-master",
        SENTINEL_MASTER,
    ])
    .await;
    assert_eq!(hub.get("/health").await.0, 200);
    // After three failed attempts to find a master it is still not ready.
    wait_metric(
        &hub,
        "hub_redis_errors_total{op=\"publisher_connect\"}",
        3.0,
    )
    .await;
    assert_eq!(hub.ready_status().await, Some(503));
    assert_eq!(hub.metric("hub_store_up").await, Some(0.0));
}

/// `connected_clients` of a redis-server.
fn connected_clients(redis: &RedisServer) -> u64 {
    redis
        .cmd(&["INFO", "clients"])
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// What a hub meets on a demoted master: `READONLY`, for plain commands
/// and scripts alike, is typed as "the master moved", and the pooled
/// connections to that node are closed instead of reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_from_a_demoted_master_drops_its_connections() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(master.port);
    let backend = RedisBackend::new(&replica.topology(), "ro", Arc::new(Metrics::new("ro")))
        .expect("backend");
    let before = connected_clients(&replica);
    // Reads work on a replica: the pool now holds a connection to it.
    let _: Option<String> = backend
        .query("read", ::redis::cmd("GET").arg("k"))
        .await
        .expect("GET on a replica");
    assert_eq!(connected_clients(&replica), before + 1);

    let write = backend
        .query::<()>("write", ::redis::cmd("SET").arg("k").arg("v"))
        .await
        .expect_err("SET on a replica");
    assert!(
        matches!(write.kind, RedisErrorKind::ReadOnly(_)) && write.master_moved(),
        "{write:?}"
    );
    wait_until("the pool to close its connection", RECV_TIMEOUT, || {
        connected_clients(&replica) == before
    });

    let script =
        ::redis::Script::new("redis.call('GET', KEYS[1]); return redis.call('SET', KEYS[1], 'v')");
    let mut invocation = script.prepare_invoke();
    invocation.key("k");
    let scripted = backend
        .script::<()>("write_script", &invocation)
        .await
        .expect_err("a writing script on a replica");
    assert!(scripted.master_moved(), "{scripted:?}");
    wait_until("the pool to close its connection", RECV_TIMEOUT, || {
        connected_clients(&replica) == before
    });
}
