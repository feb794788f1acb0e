//! The session event log end to end (issue 11): offsets and epochs on
//! session events, `register.since` resume with no gap and no duplicate
//! across the switch to live delivery, the replay window (length, epoch),
//! the REST replay, and in cluster mode: a Redis flush, a cut pub/sub
//! connection, one script call per event, and a `kill -9`'d hub whose
//! clients resume through HAProxy. Real hubs, real redis-servers on free
//! loopback ports, real WebSocket clients.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mcp_hub::hub::monitor::STATS_INTERVAL;
use serde_json::{Value, json};
use support::*;

/// What one client saw of a session's events.
#[derive(Default)]
struct Seen {
    /// Every offset received, in arrival order.
    offsets: Vec<u64>,
    /// Broadcasts by producer: the `n` of each payload, in arrival order.
    broadcasts: BTreeMap<String, Vec<u64>>,
    epoch: Option<String>,
}

impl Seen {
    fn take(&mut self, frame: &Value) {
        let Some(offset) = frame["offset"].as_u64() else {
            return;
        };
        let epoch = frame["epoch"]
            .as_str()
            .expect("an event's epoch")
            .to_string();
        if let Some(known) = &self.epoch {
            assert_eq!(known, &epoch, "one epoch in this test: {frame}");
        }
        self.epoch = Some(epoch);
        self.offsets.push(offset);
        if frame["type"] == "broadcast" {
            let from = frame["from"].as_str().unwrap().to_string();
            let n = frame["payload"]["n"].as_u64().unwrap();
            self.broadcasts.entry(from).or_default().push(n);
        }
    }

    fn last(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }
}

/// Offsets of the session's log (read through REST) in `(after, ..]` that
/// `me`, registered with the member list `listed`, must receive: all but
/// the events about itself that exclude it (its own broadcasts, its own
/// joins and departures) and the presence events its list already
/// reflects (each member is told once: a `client_joined` of a listed
/// member as listed, a `client_left` of a member it was never told of).
async fn owed(
    hub: &impl Endpoint,
    session: &str,
    epoch: &str,
    (after, listed): (u64, &Value),
    me: &str,
) -> Vec<u64> {
    let (status, body) = http_get_json(
        hub,
        &format!("/api/v1/sessions/{session}/events?since={after}&epoch={epoch}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recovered"], true, "{body}");
    // Who `me` knows, by client id: when they registered.
    let mut known: BTreeMap<String, Value> = listed
        .as_array()
        .expect("a member list")
        .iter()
        .map(|m| {
            (
                m["client_id"].as_str().unwrap().to_string(),
                m["connected_at"].clone(),
            )
        })
        .collect();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let who = e["client_id"].as_str().unwrap_or_default().to_string();
            match e["type"].as_str() {
                Some("broadcast") => e["from"] != me,
                _ if who == me => false,
                Some("client_joined") => {
                    known.insert(who, e["connected_at"].clone()) != Some(e["connected_at"].clone())
                }
                Some("client_left") => known.remove(&who).is_some(),
                _ => true,
            }
        })
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

fn broadcast(n: u64) -> Value {
    json!({"type": "broadcast", "payload": {"n": n}})
}

/// Registers `client_id` resuming after `since` (offset, epoch).
async fn resume(
    url: &str,
    session: &str,
    client_id: &str,
    since: (u64, &str),
) -> (WsClient, Value) {
    WsClient::register_with(
        url,
        json!({"type": "register", "session": session, "client_id": client_id,
               "since": {"offset": since.0, "epoch": since.1}}),
    )
    .await
}

/// Reads frames into `seen` until `done` holds (bounded).
async fn read_until(c: &mut WsClient, seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}: broadcasts {:?}, last offset {}",
            seen.broadcasts
                .iter()
                .map(|(p, b)| (p, b.len()))
                .collect::<Vec<_>>(),
            seen.last()
        );
        if let Some(frame) = c.try_recv(left).await {
            seen.take(&frame);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_resume_replays_the_missed_events_then_goes_live() {
    let hub = TestHub::start(&with_fast_producers(&["--instance-id", "resume-hub"])).await;
    let url = hub.ws_url();
    let (mut alice, conf) = WsClient::register(&url, "r", "alice").await;
    assert_eq!(conf["recovered"], false, "{conf}");
    let epoch = conf["epoch"].as_str().expect("epoch").to_string();
    let start = conf["offset"].as_u64().expect("offset");
    let listed = conf["clients"].clone();
    // Replies carry no offset, session events do.
    assert!(alice.registration_contacts().get("offset").is_none());
    let (mut bob, _) = WsClient::register(&url, "r", "bob").await;
    let joined = alice.recv_type("client_joined").await;
    // Alice's own `client_joined` came first (not to her), then bob's.
    assert!(joined["offset"].as_u64().unwrap() > start, "{joined}");
    assert_eq!(joined["epoch"], epoch.as_str());
    let mut seen = Seen::default();
    seen.take(&joined);
    // Alice goes; bob broadcasts 0..20 while she is away.
    alice.close().await;
    for n in 0..20 {
        bob.request(broadcast(n)).await;
    }
    // Bob keeps broadcasting while alice resumes: the switch from replay
    // to live happens under load.
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for n in 20..200 {
            tick.tick().await;
            bob.request(broadcast(n)).await;
        }
        bob
    });
    let (mut alice, conf) = resume(&url, "r", "alice", (seen.last(), &epoch)).await;
    assert_eq!(conf["recovered"], true, "{conf}");
    assert_eq!(conf["epoch"], epoch.as_str());
    read_until(&mut alice, &mut seen, "all 200 broadcasts", |s| {
        s.broadcasts.get("bob").is_some_and(|b| b.len() >= 200)
    })
    .await;
    let bob = producer.await.unwrap();
    let _ = alice.flush().await.iter().map(|f| seen.take(f)).count();
    assert_eq!(seen.broadcasts["bob"], (0..200).collect::<Vec<_>>());
    let owed = owed(&hub, "r", &epoch, (start, &listed), "alice").await;
    assert_eq!(seen.offsets, owed, "every offset owed, once, in order");
    bob.close().await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_log_or_from_another_epoch_replays_nothing() {
    let hub = TestHub::start(&with_fast_producers(&["--session-log-len", "3"])).await;
    let url = hub.ws_url();
    let (alice, conf) = WsClient::register(&url, "old", "alice").await;
    let epoch = conf["epoch"].as_str().unwrap().to_string();
    let at = conf["offset"].as_u64().unwrap();
    alice.close().await;
    let (mut bob, _) = WsClient::register(&url, "old", "bob").await;
    for n in 0..5 {
        bob.request(broadcast(n)).await;
    }
    for since in [(at, epoch.as_str()), (at + 7, "another-epoch")] {
        let (mut alice, conf) = resume(&url, "old", "alice", since).await;
        assert_eq!(conf["recovered"], false, "{since:?}: {conf}");
        assert_eq!(conf["epoch"], epoch.as_str());
        assert!(conf["offset"].as_u64().unwrap() > at, "{conf}");
        assert_eq!(alice.flush().await, Vec::<Value>::new(), "nothing replayed");
        alice.close().await;
        bob.recv_type("client_left").await;
    }
    // The REST replay answers alike.
    let (status, body) = http_get_json(
        &hub,
        &format!("/api/v1/sessions/old/events?since={at}&epoch={epoch}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["recovered"], false, "{body}");
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["epoch"], epoch.as_str());
    // Malformed `since`: invalid_field; half a REST position: 400.
    for since in [
        json!(5),
        json!({"offset": -1, "epoch": "e"}),
        json!({"offset": 1}),
        json!({"offset": 1, "epoch": ""}),
        json!({"offset": 1, "epoch": "e", "x": 1}),
    ] {
        let mut c = WsClient::connect(&url).await;
        let err = c
            .request(json!({"type": "register", "session": "old", "since": since}))
            .await;
        assert_eq!(err["code"], "invalid_field", "{since}: {err}");
    }
    let (status, _) = http_get_json(&hub, "/api/v1/sessions/old/events?since=1").await;
    assert_eq!(status, 400);
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_restart_starts_a_new_epoch() {
    let hub = HubProcess::start(&[], &[]).await;
    let (mut alice, conf) = WsClient::register(&hub.ws_url(), "e", "alice").await;
    let epoch = conf["epoch"].as_str().unwrap().to_string();
    alice.request(broadcast(1)).await;
    let at = conf["offset"].as_u64().unwrap();
    drop(alice);
    drop(hub);
    let hub = HubProcess::start(&[], &[]).await;
    let (alice, conf) = resume(&hub.ws_url(), "e", "alice", (at, &epoch)).await;
    assert_eq!(conf["recovered"], false, "{conf}");
    assert_ne!(conf["epoch"], epoch.as_str(), "a new process, a new epoch");
    alice.close().await;
}

/// `args` plus a rate limit the test producers stay under.
fn with_fast_producers<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--rate-limit-per-sec", "5000", "--rate-limit-burst", "5000"]);
    all
}

fn cluster_args<'a>(redis_url: &'a str, id: &'a str) -> Vec<&'a str> {
    cluster_args_with(redis_url, id, "200", "1000")
}

fn cluster_args_with<'a>(
    redis_url: &'a str,
    id: &'a str,
    heartbeat_ms: &'a str,
    presence_ttl_ms: &'a str,
) -> Vec<&'a str> {
    vec![
        "--rate-limit-per-sec",
        "5000",
        "--rate-limit-burst",
        "5000",
        "--redis-url",
        redis_url,
        "--instance-id",
        id,
        "--heartbeat-ms",
        heartbeat_ms,
        "--presence-ttl-ms",
        presence_ttl_ms,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_or_emptied_redis_starts_a_new_epoch() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let hub = TestHub::start(&cluster_args(&url, "flush-hub")).await;
    let (mut alice, conf) = WsClient::register(&hub.ws_url(), "f", "alice").await;
    let first = conf["epoch"].as_str().unwrap().to_string();
    let (mut bob, _) = WsClient::register(&hub.ws_url(), "f", "bob").await;
    let joined = alice.recv_type("client_joined").await;
    let at = joined["offset"].as_u64().unwrap();
    redis.cmd(&["FLUSHALL"]);
    bob.request(broadcast(1)).await;
    let b = alice.recv_type("broadcast").await;
    assert_ne!(
        b["epoch"],
        first.as_str(),
        "the flushed log has a new epoch"
    );
    assert_eq!(b["offset"], 1, "and starts again at 1: {b}");
    let second = b["epoch"].as_str().unwrap().to_string();
    let (carol, conf) = resume(&hub.ws_url(), "f", "alice-2", (at, &first)).await;
    assert_eq!(conf["recovered"], false, "{conf}");
    assert_eq!(conf["epoch"], second.as_str());
    carol.close().await;
    // Restarted empty: yet another epoch.
    redis.stop();
    redis.restart();
    hub.wait_ready().await;
    let (carol, conf) = resume(&hub.ws_url(), "f", "alice-3", (1, &second)).await;
    assert_eq!(conf["recovered"], false, "{conf}");
    assert_ne!(conf["epoch"], second.as_str());
    assert_ne!(conf["epoch"], first.as_str());
    carol.close().await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_pubsub_connection_loses_no_offset() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = TestHub::start(&cluster_args(&url, "cut-a")).await;
    let b = TestHub::start(&cluster_args(&url, "cut-b")).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let (c, conf) = WsClient::register(&b.ws_url(), "cut", &format!("reader-{i}")).await;
        readers.push((
            c,
            (conf["offset"].as_u64().unwrap(), conf["clients"].clone()),
            Seen::default(),
        ));
    }
    let (mut producer, _) = WsClient::register(&a.ws_url(), "cut", "producer").await;
    let epoch = producer.flush().await;
    drop(epoch);
    const N: u64 = 300;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(3));
        for n in 0..N {
            tick.tick().await;
            producer.request(broadcast(n)).await;
        }
        producer
    });
    // Cut every pub/sub connection (both hubs') twice mid-run.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    let producer = sender.await.unwrap();
    for (i, (c, start, seen)) in readers.iter_mut().enumerate() {
        read_until(c, seen, "every broadcast", |s| {
            s.broadcasts
                .get("producer")
                .is_some_and(|b| b.len() as u64 >= N)
        })
        .await;
        let _ = c.flush().await.iter().map(|f| seen.take(f)).count();
        assert_eq!(
            seen.broadcasts["producer"],
            (0..N).collect::<Vec<_>>(),
            "reader-{i}"
        );
        let epoch = seen.epoch.clone().unwrap();
        let owed = owed(
            &b,
            "cut",
            &epoch,
            (start.0, &start.1),
            &format!("reader-{i}"),
        )
        .await;
        assert_eq!(
            seen.offsets, owed,
            "reader-{i}: every offset once, in order"
        );
    }
    producer.close().await;
    for (c, _, _) in readers {
        c.close().await;
    }
}

fn commandstat(info: &str, command: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_script_call_per_event_whatever_the_audience() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Heartbeats are scripts too (timed by Redis's clock): one a minute
    // keeps them out of the count.
    let hub = TestHub::start(&cluster_args_with(&url, "stat-hub", "60000", "120000")).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(
            WsClient::register(&hub.ws_url(), "stat", &format!("c{i}"))
                .await
                .0,
        );
    }
    let (mut producer, _) = WsClient::register(&hub.ws_url(), "stat", "producer").await;
    // Everyone has seen every join: nothing is in flight.
    for c in &mut clients {
        c.recv_type("client_joined").await;
        let _ = c.flush().await;
    }
    let window = Instant::now();
    redis.cmd(&["CONFIG", "RESETSTAT"]);
    for n in 0..100 {
        producer.request(broadcast(n)).await;
    }
    for c in &mut clients {
        let mut seen = Seen::default();
        read_until(c, &mut seen, "100 broadcasts", |s| {
            s.broadcasts.get("producer").is_some_and(|b| b.len() >= 100)
        })
        .await;
    }
    let info = redis.cmd(&["INFO", "commandstats"]);
    let scripts = commandstat(&info, "evalsha") + commandstat(&info, "eval");
    let publishes = commandstat(&info, "publish");
    // Besides the events', the hub publishes its stats on the monitor
    // channel once per STATS_INTERVAL, whatever the load.
    let stats = window.elapsed().as_millis() / STATS_INTERVAL.as_millis() + 1;
    assert_eq!(
        scripts, 100,
        "one script call per event, not per recipient:\n{info}"
    );
    assert!(
        (100..=100 + stats as u64).contains(&publishes),
        "one PUBLISH per event, inside the script (and at most {stats} of the hub's stats):\n{info}"
    );
    producer.close().await;
}

/// `kill -9` of one of three hubs behind HAProxy while three producers (on
/// the surviving hubs: a producer on the killed hub could lose what it
/// was sending, which says nothing about delivery) each send 300
/// broadcasts at a steady rate to 30 readers. The killed hub's readers
/// reconnect through HAProxy with `since`; every reader ends with all 900
/// broadcasts exactly once, in per-producer order, and exactly the
/// offsets owed to it (contiguous but for its own joins and departures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broadcast_lost_when_a_hub_is_killed() {
    const PER_PRODUCER: u64 = 300;
    const READERS: usize = 30;
    let redis = RedisServer::start();
    let url = redis.url();
    let mut hubs = Vec::new();
    for id in ["k1", "k2", "k3"] {
        // Under a loaded machine a 1 s presence TTL may reap live hubs:
        // this test is about delivery, not failure detection.
        let mut args = cluster_args_with(&url, id, "500", "5000");
        // Room for the replay of a reader that resumes after HAProxy's
        // failover (about two seconds of events).
        args.extend(["--session-log-len", "5000", "--outbound-queue-len", "8192"]);
        hubs.push(HubProcess::start(&args, &[]).await);
    }
    let addrs: Vec<_> = hubs.iter().map(|h| h.addr).collect();
    let lb = Haproxy::start(&addrs, 3);
    // Readers spread over the three hubs directly, so hub k3 surely has some.
    let mut readers = Vec::new();
    for i in 0..READERS {
        let id = format!("reader-{i}");
        let (c, conf) = WsClient::register(&hubs[i % 3].ws_url(), "kill", &id).await;
        let start = (conf["offset"].as_u64().unwrap(), conf["clients"].clone());
        readers.push((id, i % 3, c, start, Seen::default()));
    }
    // Producers on k1 and k2 (two on k1, one on k2).
    let mut producers = Vec::new();
    for (p, hub) in [0usize, 1, 0].into_iter().enumerate() {
        let (c, _) =
            WsClient::register(&hubs[hub].ws_url(), "kill", &format!("producer-{p}")).await;
        producers.push(c);
    }
    let mut tasks = Vec::new();
    for mut c in producers {
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(15));
            for n in 0..PER_PRODUCER {
                tick.tick().await;
                let answer = c.request(broadcast(n)).await;
                assert_eq!(answer["response_type"], "broadcast_sent", "{answer}");
            }
            c
        }));
    }
    // Let about a third of the run pass, reading meanwhile, then kill k3.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        for (_, _, c, _, seen) in readers.iter_mut() {
            while let Some(f) = c.try_recv(Duration::from_millis(1)).await {
                seen.take(&f);
            }
        }
    }
    hubs[2].kill();
    // k3's readers: drain what reached them, then resume through HAProxy.
    for (id, hub, c, _, seen) in readers.iter_mut() {
        if *hub != 2 {
            continue;
        }
        while let Some(f) = c.try_recv(Duration::from_millis(50)).await {
            seen.take(&f);
        }
        let epoch = seen.epoch.clone().expect("saw events before the kill");
        let mut resumed = None;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < give_up {
            // HAProxy may still route to the dead hub until its check fails.
            let attempt = tokio::time::timeout(Duration::from_secs(3), async {
                let mut fresh = WsClient::connect(&lb.ws_url()).await;
                let rid = next_request_id();
                fresh
                    .send_json(
                        json!({"type": "register", "session": "kill", "client_id": id,
                                      "since": {"offset": seen.last(), "epoch": epoch},
                                      "request_id": rid}),
                    )
                    .await;
                let conf = fresh.try_recv(Duration::from_secs(2)).await?;
                Some((fresh, conf))
            })
            .await;
            match attempt {
                Ok(Some((fresh, conf))) if conf["type"] == "registration_confirmed" => {
                    resumed = Some((fresh, conf));
                    break;
                }
                // Routed to the dead hub (HAProxy has not seen it fail
                // yet): the connection ends; try again.
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (fresh, conf) = resumed.expect("resumed through HAProxy");
        assert_eq!(conf["recovered"], true, "{id}: {conf}");
        *c = fresh;
    }
    for t in tasks {
        t.await.unwrap().close().await;
    }
    let survivor = &hubs[0];
    for (id, _, c, start, seen) in readers.iter_mut() {
        read_until(c, seen, "all 900 broadcasts", |s| {
            s.broadcasts.values().map(Vec::len).sum::<usize>() as u64 >= 3 * PER_PRODUCER
        })
        .await;
        let _ = c.flush().await.iter().map(|f| seen.take(f)).count();
        for p in 0..3 {
            assert_eq!(
                seen.broadcasts[&format!("producer-{p}")],
                (0..PER_PRODUCER).collect::<Vec<_>>(),
                "{id}: producer-{p}'s broadcasts, each once, in order"
            );
        }
        let epoch = seen.epoch.clone().unwrap();
        let owed = owed(survivor, "kill", &epoch, (start.0, &start.1), id).await;
        // The dead hub's clients leave presence later (reaping): those
        // events may still be on their way; everything up to the last
        // offset seen must be exactly what was owed.
        let last = seen.last();
        let owed: Vec<u64> = owed.into_iter().filter(|o| *o <= last).collect();
        assert_eq!(
            seen.offsets, owed,
            "{id}: every offset owed, once, in order"
        );
    }
    drop(lb);
}

/// Per-session channels (issue 14): an instance subscribes to a session's
/// channel only when a local client joins it, so hub B, which has no
/// client of the session until one joins mid-stream, must close the
/// subscribe race from the log: each client joining there sees every
/// offset after its confirmed one exactly once, in order (also after
/// the last local client left and B unsubscribed). Hub C, whose client is
/// in another session, receives no pub/sub message of the stream at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_mid_stream_on_an_idle_instance_misses_nothing_and_others_hear_nothing() {
    const N: u64 = 300;
    let redis = RedisServer::start();
    let url = redis.url();
    let a = TestHub::start(&cluster_args(&url, "chan-a")).await;
    let b = TestHub::start(&cluster_args(&url, "chan-b")).await;
    let c = TestHub::start(&cluster_args(&url, "chan-c")).await;
    let (mut elsewhere, _) = WsClient::register(&c.ws_url(), "elsewhere", "carol").await;
    let (mut producer, _) = WsClient::register(&a.ws_url(), "chan", "producer").await;
    let _ = producer.flush().await;
    let _ = elsewhere.flush().await;
    // Sessions' channels only: the monitor channel carries every hub's
    // stats every 2 s.
    let series = r#"hub_pubsub_messages_received_total{channel="session"}"#;
    let c_before = c
        .metric(series)
        .await
        .expect("the session channel's series");

    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(3));
        for n in 0..N {
            tick.tick().await;
            producer.request(broadcast(n)).await;
        }
        producer
    });
    let producer_sent = |s: &Seen| s.broadcasts.get("producer").and_then(|b| b.last()).copied();
    // Two joins on hub B while the stream flows; the first client leaves
    // before the second joins, so B subscribes twice.
    for (i, until) in [(0, Some(N / 2)), (1, None)] {
        let id = format!("late-{i}");
        let (mut late, conf) = WsClient::register(&b.ws_url(), "chan", &id).await;
        assert_eq!(conf["instance"], "chan-b");
        let start = conf["offset"].as_u64().unwrap();
        let mut seen = Seen::default();
        let last = until.unwrap_or(N - 1);
        read_until(&mut late, &mut seen, "the producer's broadcasts", |s| {
            producer_sent(s).is_some_and(|n| n >= last)
        })
        .await;
        if until.is_none() {
            let _ = late.flush().await.iter().map(|f| seen.take(f)).count();
        }
        let epoch = seen.epoch.clone().expect("saw events");
        let owed = owed(&b, "chan", &epoch, (start, &conf["clients"]), &id).await;
        let owed: Vec<u64> = owed.into_iter().filter(|o| *o <= seen.last()).collect();
        assert_eq!(
            seen.offsets, owed,
            "{id}: every offset owed, once, in order"
        );
        let got = &seen.broadcasts["producer"];
        let first = got[0];
        assert_eq!(
            *got,
            (first..=*got.last().unwrap()).collect::<Vec<_>>(),
            "{id}: broadcasts gap-free and once"
        );
        late.close().await;
    }
    let producer = sender.await.unwrap();
    // Hub C got its own client's join, nothing of session `chan`; hub B,
    // whose clients followed the stream live, did get its messages.
    assert_eq!(
        c.metric(series)
            .await
            .expect("the session channel's series")
            - c_before,
        0.0,
        "hub C has no client of `chan`: no pub/sub message of it"
    );
    assert!(
        b.metric(series)
            .await
            .expect("the session channel's series")
            > 0.0,
        "hub B's clients followed `chan` live, through pub/sub"
    );
    producer.close().await;
    elsewhere.close().await;
}

/// Per-session channels (issue 14): the first client of a session on an
/// instance is often sent an event before that instance's SUBSCRIBE to the
/// session's channel is confirmed: an agent's own `agent_changed`,
/// published right after it joined. Nothing follows it, so only reading
/// the log once the subscription is confirmed delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_event_after_a_join_on_an_idle_instance_arrives() {
    let redis = RedisServer::start();
    let url = redis.url();
    let hub = TestHub::start(&cluster_args(&url, "first-a")).await;
    for i in 0..5 {
        let session = format!("first-{i}");
        let (mut agent, conf) = WsClient::register_with(
            &hub.ws_url(),
            json!({"type": "register", "session": session, "client_id": "phone",
                   "capabilities": ["whatsapp"]}),
        )
        .await;
        assert_eq!(conf["agent"], true, "{conf}");
        let changed = agent.recv_type("agent_changed").await;
        assert_eq!(changed["client_id"], "phone", "{changed}");
        agent.close().await;
    }
}

/// Settings of a hub `id` on a Redis Cluster, with fast producers and a
/// presence TTL long enough that a failover does not reap live instances.
fn redis_cluster_hub(redis: &RedisCluster, id: &str) -> Vec<String> {
    let mut args = redis.hub_args();
    args.extend(
        [
            "--instance-id",
            id,
            "--heartbeat-ms",
            "500",
            "--presence-ttl-ms",
            "10000",
            "--rate-limit-per-sec",
            "5000",
            "--rate-limit-burst",
            "5000",
        ]
        .map(String::from),
    );
    args
}

async fn start_on_cluster(redis: &RedisCluster, id: &str) -> TestHub {
    let args = redis_cluster_hub(redis, id);
    TestHub::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// Redis Cluster (issue 14): the session's slot moves to another master
/// (keys migrated, `SETSLOT NODE`) while events flow. The old owner drops
/// hub B's sharded subscription; B subscribes again where the slot lives
/// now and reads what it missed from the log. Its readers, and a reader
/// that left before the move and resumes with `since` after it, see every
/// offset owed to them, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_session_slot_while_events_flow_loses_nothing() {
    const N: u64 = 300;
    let redis = RedisCluster::start(3, 0);
    let a = start_on_cluster(&redis, "move-a").await;
    let b = start_on_cluster(&redis, "move-b").await;
    let mut readers = Vec::new();
    for i in 0..2 {
        let (c, conf) = WsClient::register(&b.ws_url(), "move", &format!("reader-{i}")).await;
        readers.push((
            c,
            (conf["offset"].as_u64().unwrap(), conf["clients"].clone()),
            Seen::default(),
        ));
    }
    let (mut leaver, conf) = WsClient::register(&b.ws_url(), "move", "leaver").await;
    let leaver_start = (conf["offset"].as_u64().unwrap(), conf["clients"].clone());
    let (mut producer, _) = WsClient::register(&a.ws_url(), "move", "producer").await;
    let _ = producer.flush().await;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for n in 0..N {
            tick.tick().await;
            let answer = producer.request(broadcast(n)).await;
            assert_eq!(answer["response_type"], "broadcast_sent", "{answer}");
        }
        producer
    });
    // The leaver reads a third of the stream, then goes.
    let mut left_seen = Seen::default();
    read_until(&mut leaver, &mut left_seen, "a third of the stream", |s| {
        s.broadcasts
            .get("producer")
            .is_some_and(|b| b.len() as u64 >= N / 3)
    })
    .await;
    leaver.close().await;
    // Move the session's slot to another master mid-stream.
    let slot = redis.slot("{s:move}");
    let (_, owner) = redis.master_of_slot(slot);
    let target = redis
        .masters()
        .into_iter()
        .find(|m| m.port != owner)
        .expect("another master")
        .port;
    tokio::task::block_in_place(|| redis.move_slot(slot, target));
    assert_eq!(redis.master_of_slot(slot).1, target);
    // The leaver resumes after the move.
    let epoch = left_seen.epoch.clone().expect("saw events");
    let (mut resumed, conf) =
        resume(&b.ws_url(), "move", "leaver", (left_seen.last(), &epoch)).await;
    assert_eq!(conf["recovered"], true, "{conf}");
    let producer = sender.await.unwrap();
    let all = |s: &Seen| {
        s.broadcasts
            .get("producer")
            .is_some_and(|b| b.len() as u64 >= N)
    };
    read_until(&mut resumed, &mut left_seen, "every broadcast", all).await;
    readers.push((resumed, leaver_start, left_seen));
    for (i, (c, start, seen)) in readers.iter_mut().enumerate() {
        read_until(c, seen, "every broadcast", all).await;
        let _ = c.flush().await.iter().map(|f| seen.take(f)).count();
        assert_eq!(
            seen.broadcasts["producer"],
            (0..N).collect::<Vec<_>>(),
            "reader {i}"
        );
        let me = if i < 2 {
            format!("reader-{i}")
        } else {
            "leaver".into()
        };
        let epoch = seen.epoch.as_ref().unwrap();
        let owed = owed(&b, "move", epoch, (start.0, &start.1), &me).await;
        // The leaver's own departure and return are not owed to it.
        let last = seen.last();
        let owed: Vec<u64> = owed.into_iter().filter(|o| *o <= last).collect();
        assert_eq!(
            seen.offsets, owed,
            "{me}: every offset owed, once, in order"
        );
    }
    producer.close().await;
}

/// Redis Cluster (issue 14): the master of the session's slot is killed
/// (`kill -9`) with a replica present. The replica takes over, the hubs
/// serve again (`/ready`, broadcasts across instances), and the reader got
/// no broadcast twice or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_the_hubs_recover() {
    let mut redis = RedisCluster::start(3, 1);
    let a = start_on_cluster(&redis, "fo-a").await;
    let b = start_on_cluster(&redis, "fo-b").await;
    let (mut reader, _) = WsClient::register(&b.ws_url(), "fo", "reader").await;
    let (mut producer, _) = WsClient::register(&a.ws_url(), "fo", "producer").await;
    let mut seen = Seen::default();
    for n in 0..20 {
        producer.request(broadcast(n)).await;
    }
    read_until(&mut reader, &mut seen, "the first broadcasts", |s| {
        s.broadcasts.get("producer").is_some_and(|b| b.len() >= 20)
    })
    .await;

    let (_, master) = redis.master_of_slot(redis.slot("{s:fo}"));
    tokio::task::block_in_place(|| {
        // Replication is asynchronous: a master killed before its replica
        // has every write loses them, and the log begins again (a new
        // epoch; that case is the catch-up's, not this test's). Seen once
        // on a loaded machine.
        wait_until(
            "the replica to have every write",
            Duration::from_secs(30),
            || redis.cli(master, &["WAIT", "1", "1000"]).trim() == "1",
        );
        redis.kill(master);
        redis.wait_ok();
    });
    assert_ne!(redis.master_of_slot(redis.slot("{s:fo}")).1, master);
    for hub in [&a, &b] {
        wait_until_async(
            "/ready after the failover",
            Duration::from_secs(30),
            || async { hub.ready_status().await == Some(200) },
        )
        .await;
    }
    // Broadcasts go through again (a hub's connections may still learn the
    // new topology: a refused one is retried within a bound).
    for n in 20..40 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answer = producer.request(broadcast(n)).await;
            if answer["response_type"] == "broadcast_sent" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    read_until(
        &mut reader,
        &mut seen,
        "the broadcasts after the failover",
        |s| {
            s.broadcasts
                .get("producer")
                .is_some_and(|b| b.last() == Some(&39))
        },
    )
    .await;
    let got = &seen.broadcasts["producer"];
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "no broadcast twice or out of order: {got:?}"
    );
    assert!(got.ends_with(&(20..40).collect::<Vec<_>>()), "{got:?}");
    // A new client joins on either hub.
    let (_late, conf) = WsClient::register(&a.ws_url(), "fo", "late").await;
    assert_eq!(conf["type"], "registration_confirmed");
    producer.close().await;
    reader.close().await;
}

/// A client joining a busy session (issue 22, the replay window): its
/// member list is read a few round trips before it joins live delivery,
/// and every presence change in between must still reach it. The joiners'
/// hub reaches Redis over a link 40 ms each way, so that window holds a
/// few kilobytes of a steady stream of broadcasts and several members
/// arriving on the other hub: more than REPLAY_MAX_BYTES (1 KiB here),
/// which bounds a resume's backlog, not this window. When the window was
/// held to it, such a join started from live delivery and its member
/// list missed whoever arrived meanwhile; now each joiner's view (its
/// list, then `client_joined` / `client_left`) ends up exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_into_a_busy_session_misses_no_presence_change() {
    const SESSION: &str = "busy";
    let redis = RedisServer::start();
    let link = FaultyLink::to(redis.port).await;
    link.set(Link::Delay(Duration::from_millis(40)));
    let (slow_url, fast_url) = (format!("redis://127.0.0.1:{}", link.port), redis.url());
    let small_replay = ["--replay-max-bytes", "1024"];
    // A presence TTL far above the link's delay: this test is about the
    // join's cut, not reaping. With the usual 1 s, a loaded machine can
    // delay the slow hub's heartbeat past it; the fast hub then reaps it
    // mid-join, and a joiner hears of a member leaving before the member's
    // own late `client_joined` (docs/reliability.md, "Reaped by mistake").
    let slow_args = cluster_args_with(&slow_url, "slow", "200", "5000");
    let fast_args = cluster_args_with(&fast_url, "fast", "200", "5000");
    let slow = TestHub::start(&[&slow_args[..], &small_replay].concat()).await;
    let fast = TestHub::start(&[&fast_args[..], &small_replay].concat()).await;
    // The slow hub has a subscriber, so a join's cut is its live position.
    let (_watcher, _) = WsClient::register(&slow.ws_url(), SESSION, "watcher").await;

    // On the fast hub: a broadcast every 5 ms, a member arriving every
    // 20 ms (and, past ten, the oldest leaving).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (stop.clone(), fast.ws_url());
        tokio::spawn(async move {
            let (mut talker, _) = WsClient::register(&url, SESSION, "talker").await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ack = talker
                    .request(
                        json!({"type": "broadcast", "payload": {"n": n, "pad": "x".repeat(200)}}),
                    )
                    .await;
                assert_eq!(ack["response_type"], "broadcast_sent", "{ack}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let churn = {
        let (stop, url) = (stop.clone(), fast.ws_url());
        tokio::spawn(async move {
            let mut staying = std::collections::VecDeque::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = format!("arrival-{i:03}");
                let (c, _) = WsClient::register(&url, SESSION, &id).await;
                staying.push_back((id, c));
                if staying.len() > 10
                    && let Some((_, oldest)) = staying.pop_front()
                {
                    oldest.close().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            staying
        })
    };

    // Joiners on the slow hub, one after another, each keeping its view.
    let mut joiners = Vec::new();
    for j in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (client, conf) =
            WsClient::register(&slow.ws_url(), SESSION, &format!("joiner-{j}")).await;
        let view: BTreeSet<String> = ids(&conf["clients"]).into_iter().collect();
        joiners.push((format!("joiner-{j}"), client, view));
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let staying = churn.await.unwrap();

    // Who is in the session now (the talker has gone): each joiner's view
    // must come to exactly that, learning of each member once. A change a
    // join missed is never announced again, so the view would stay wrong.
    let mut truth: BTreeSet<String> = ["watcher".to_string()].into();
    truth.extend(joiners.iter().map(|(id, ..)| id.clone()));
    truth.extend(staying.iter().map(|(id, _)| id.clone()));
    for (id, client, view) in &mut joiners {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while *view != truth {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = client.try_recv(left).await else {
                panic!("{id}'s view of the members stayed {view:?}, not {truth:?}");
            };
            let who = frame["client_id"].as_str().unwrap_or_default().to_string();
            match frame["type"].as_str() {
                Some("client_joined") => {
                    assert!(view.insert(who.clone()), "{id} was told twice of {who}")
                }
                Some("client_left") => {
                    assert!(view.remove(&who), "{id} was told {who} left, unknown to it")
                }
                _ => {}
            }
        }
    }
}
