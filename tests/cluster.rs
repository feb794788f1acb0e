//! Cluster mode end to end: a private redis-server and several hubs on free
//! loopback ports, driven by real WebSocket clients. The tests that do not
//! depend on a single server run on a 3-master Redis Cluster instead with
//! `MCP_HUB_TEST_REDIS=cluster` (./scripts/test runs them both ways). The hubs run
//! in-process, except where the process is the point: `kill -9` (a crash
//! must be noticed through the presence TTL), stderr, `SSL_CERT_FILE` in
//! the environment, and scripts/cluster.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// Short heartbeats so failure tests finish quickly; TTL = 5 heartbeats.
const HEARTBEAT_MS: &str = "200";
const PRESENCE_TTL_MS: &str = "1000";

/// The hub settings for instance `id` on `redis` (either topology).
fn hub_args(redis: &impl RedisTarget, id: &str, extra: &[&str]) -> Vec<String> {
    let mut args = redis.hub_args();
    args.extend(
        [
            "--instance-id",
            id,
            "--heartbeat-ms",
            HEARTBEAT_MS,
            "--presence-ttl-ms",
            PRESENCE_TTL_MS,
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string()),
    );
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn start_hub(redis: &impl RedisTarget, id: &str, extra: &[&str]) -> TestHub {
    TestHub::start(&strs(&hub_args(redis, id, extra))).await
}

async fn three_hubs(redis: &impl RedisTarget) -> Vec<TestHub> {
    three_hubs_with(redis, &[]).await
}

async fn three_hubs_with(redis: &impl RedisTarget, extra: &[&str]) -> Vec<TestHub> {
    let mut hubs = Vec::new();
    for id in ["hub-a", "hub-b", "hub-c"] {
        hubs.push(start_hub(redis, id, extra).await);
    }
    hubs
}

/// Three spawned hubs, for tests that kill one with SIGKILL.
async fn three_hub_processes(redis: &impl RedisTarget) -> Vec<HubProcess> {
    let mut hubs = Vec::new();
    for id in ["hub-a", "hub-b", "hub-c"] {
        hubs.push(HubProcess::start(&strs(&hub_args(redis, id, &[])), &[]).await);
    }
    hubs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_contacts_history_and_presence() {
    let redis = TestRedis::start();
    let hubs = three_hubs(&redis).await;

    let (mut a, conf_a) = WsClient::register(&hubs[0].ws_url(), "team", "alice").await;
    let (mut b, conf_b) = WsClient::register(&hubs[1].ws_url(), "team", "bob").await;
    let (mut c, conf_c) = WsClient::register(&hubs[2].ws_url(), "team", "carol").await;
    assert_eq!(conf_a["instance"], "hub-a");
    assert_eq!(conf_b["instance"], "hub-b");
    assert_eq!(conf_c["instance"], "hub-c");
    // A healthy cluster shows its Redis error series at 0, not "no data".
    assert_eq!(
        hubs[0].metric("hub_redis_errors_total{op=\"join\"}").await,
        Some(0.0)
    );
    // Presence is cluster-wide: carol sees alice and bob on other instances.
    assert_eq!(sorted_ids(&conf_c["clients"]), ["alice", "bob", "carol"]);
    let joined = a.recv_type("client_joined").await;
    assert_eq!(joined["client_id"], "bob");
    assert_eq!(joined["instance"], "hub-b");

    // A send on hub-a is seen on hub-b and hub-c, and recorded once.
    let resp = a
        .request(json!({"type":"whatsapp_ai_command","command":"send john a message saying hello cluster"}))
        .await;
    assert_eq!(resp["content"]["success"], true, "{resp}");
    for client in [&mut b, &mut c] {
        let ev = client.recv_type("message_event").await;
        assert_eq!(ev["contact"], "John");
        assert_eq!(ev["message"], "hello cluster");
        assert_eq!(ev["by"], "alice");
    }
    // History and last contact are shared: bob reads it on hub-b, carol
    // replies to the last contact on hub-c.
    let hist = b
        .request(
            json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"john"}}),
        )
        .await;
    let messages = hist["content"]["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{hist}");
    assert_eq!(messages[0]["message"], "hello cluster");
    let reply = c
        .request(json!({"type":"whatsapp_ai_command","command":"reply see you soon"}))
        .await;
    assert_eq!(
        reply["content"]["interpretation"]["contact"], "John",
        "{reply}"
    );

    // An agent's contact update on hub-c reaches everyone and is the
    // session's contact list from then on.
    let (mut agent, _) = WsClient::register_with(
        &hubs[2].ws_url(),
        json!({"type":"register","client_id":"phone","session":"team","capabilities":["whatsapp"]}),
    )
    .await;
    let ack = agent
        .request(json!({"type":"contacts_update","contacts":[{"name":"Zed"},{"name":"Yara"}]}))
        .await;
    assert_eq!(ack["type"], "response", "{ack}");
    let list = a.recv_type("contact_list_broadcast").await;
    assert_eq!(list["total_count"], 2);

    // GET /api/v1/cluster lists the three live instances with client counts.
    let (status, body) = http_get_url(&hubs[1].http_url("/api/v1/cluster")).await;
    assert_eq!(status, 200);
    let cluster: Value = serde_json::from_str(&body).expect("json");
    let listed: HashMap<String, u64> = cluster["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap_or_default().to_string(),
                i["clients"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 3, "{cluster}");
    assert!(listed.contains_key("hub-a") && listed.contains_key("hub-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broadcast_arrives_once_and_in_order() {
    let redis = TestRedis::start();
    let hubs = three_hubs_with(
        &redis,
        &[
            "--rate-limit-per-sec",
            "10000",
            "--rate-limit-burst",
            "10000",
        ],
    )
    .await;
    const PER_PRODUCER: usize = 60;

    // Two clients per instance; the first of hub-a and of hub-b produce.
    let mut clients = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        for k in 0..2 {
            let id = format!("c{i}{k}");
            let (client, _) = WsClient::register(&hub.ws_url(), "fanout", &id).await;
            clients.push((id, client));
        }
    }
    // Everyone has seen everyone join before traffic starts.
    for (id, client) in clients.iter_mut() {
        let expected_joins = 5 - clients_before(id);
        for _ in 0..expected_joins {
            client.recv_type("client_joined").await;
        }
    }

    let producers = ["c00", "c10"];
    for n in 0..PER_PRODUCER {
        for (id, client) in clients.iter_mut() {
            if producers.contains(&id.as_str()) {
                client
                    .send_json(json!({"type":"broadcast","payload":{"seq": n, "from": id}}))
                    .await;
            }
        }
    }

    for (id, client) in clients.iter_mut() {
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        let expected: usize =
            producers.iter().filter(|p| **p != id.as_str()).count() * PER_PRODUCER;
        for _ in 0..expected {
            let ev = client.recv_type("broadcast").await;
            let from = ev["from"].as_str().expect("from").to_string();
            assert_ne!(&from, id, "a producer must not receive its own broadcast");
            seen.entry(from)
                .or_default()
                .push(ev["payload"]["seq"].as_u64().expect("seq"));
        }
        for (from, seqs) in &seen {
            let want: Vec<u64> = (0..PER_PRODUCER as u64).collect();
            assert_eq!(
                seqs, &want,
                "{id} got {from}'s broadcasts out of order or duplicated"
            );
        }
        // Nothing extra arrives (no duplicates after the expected ones).
        let extra = client.try_recv(Duration::from_millis(300)).await;
        assert!(
            extra.as_ref().is_none_or(|e| e["type"] != "broadcast"),
            "{id} got an extra broadcast: {extra:?}"
        );
    }
}

/// How many clients registered before `id` (clients register in order
/// c00, c01, c10, c11, c20, c21).
fn clients_before(id: &str) -> usize {
    ["c00", "c01", "c10", "c11", "c20", "c21"]
        .iter()
        .position(|c| *c == id)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_one_instance_serves_clients_on_the_others() {
    let redis = TestRedis::start();
    let hubs = three_hubs(&redis).await;
    let (mut agent, conf) = WsClient::register_with(
        &hubs[1].ws_url(),
        json!({"type":"register","client_id":"phone","session":"s","capabilities":["whatsapp"]}),
    )
    .await;
    assert_eq!(conf["agent"], true);
    let (mut user, _) = WsClient::register(&hubs[0].ws_url(), "s", "user").await;
    let (mut watcher, _) = WsClient::register(&hubs[2].ws_url(), "s", "watcher").await;

    user.send_json(json!({"type":"whatsapp_command","request_id":"q1",
        "command":{"action":"send","contact":"john","message":"via the agent"}}))
        .await;
    let exec = agent.recv_type("execute").await;
    assert_eq!(exec["command"]["action"], "send");
    assert_eq!(
        exec["command"]["contact"], "John",
        "contact names are resolved"
    );
    agent
        .send_json(json!({"type":"execute_result","request_id":exec["request_id"],
            "content":{"success":true,"contact":"John","message":"via the agent","message_id":"wamid.1"}}))
        .await;
    let resp = user.recv_type("response").await;
    assert_eq!(resp["request_id"], "q1");
    assert_eq!(resp["content"]["message_id"], "wamid.1");
    let ev = watcher.recv_type("message_event").await;
    assert_eq!(ev["message_id"], "wamid.1");

    // The agent goes silent: the requester on another instance times out.
    let hub_fast = start_hub(&redis, "hub-d", &["--agent-timeout-ms", "400"]).await;
    let (mut impatient, _) = WsClient::register(&hub_fast.ws_url(), "s", "impatient").await;
    let err = impatient
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "agent_timeout");
    agent.recv_type("execute").await;

    // The agent leaves: commands fall back to the hub's connector.
    drop(agent);
    let changed = user.recv_type("agent_changed").await;
    assert!(changed["client_id"].is_null());
    let resp = user
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(resp["content"]["executed_by"], "simulated", "{resp}");
}

/// The agent's connection to one hub goes silent (its network moved on)
/// and the agent registers again, same id, on another hub. When the first
/// hub finally closes the dead connection (its idle timeout), the role
/// stays with the new connection: the first hub gives up only what its
/// own connection held, so commands still reach the agent instead of
/// falling back to the connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registered_again_elsewhere_keeps_the_role_when_its_old_connection_dies() {
    let redis = TestRedis::start();
    let first = start_hub(
        &redis,
        "hub-a",
        &["--ping-interval-ms", "100", "--idle-timeout-ms", "1500"],
    )
    .await;
    let second = start_hub(&redis, "hub-b", &[]).await;
    let link = FaultyLink::to(first.addr.port()).await;
    let through_link = format!("ws://127.0.0.1:{}/", link.port);
    let (_old, conf) = register_agent(&through_link, "s", "phone").await;
    assert_eq!(conf["agent"], true);
    link.set(Link::Cut);
    let (mut agent, conf) = register_agent(&second.ws_url(), "s", "phone").await;
    assert_eq!(conf["agent"], true);
    let (mut user, _) = WsClient::register(&second.ws_url(), "s", "user").await;

    // hub-a closes the silent connection; its cleanup (giving up, or not,
    // the agent role) is done when its connection gauge drops.
    wait_connections(&first, 0).await;

    user.send_json(json!({"type":"whatsapp_command","request_id":"q1",
        "command":{"action":"list_contacts"}}))
        .await;
    let exec = agent.recv_type("execute").await;
    agent
        .send_json(
            json!({"type":"execute_result","request_id":exec["request_id"],
            "content":{"success":true,"contacts":[]}}),
        )
        .await;
    let (frames, answer) = until_answer(&mut user, "q1").await;
    assert_eq!(answer["type"], "response", "{answer}");
    // (The new registration's own `agent_changed`, naming phone on hub-b,
    // may be logged after the user's registration, and reach it.)
    assert!(
        !frames
            .iter()
            .any(|f| f["type"] == "agent_changed" && f["client_id"].is_null()),
        "the session was told the agent left: {frames:?}"
    );
}

/// A dashboard feed watching a session on an instance with no client of
/// it gets the session's events, each once: the watch is local interest
/// there, so that instance subscribes the session's channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_watches_a_session_on_an_instance_without_its_clients() {
    let redis = TestRedis::start();
    let with_clients = start_hub(&redis, "hub-a", &[]).await;
    let without = start_hub(&redis, "hub-b", &[]).await;
    let (mut c1, _) = WsClient::register(&with_clients.ws_url(), "watched", "c1").await;
    let mut feed = WsClient::connect(&format!("ws://{}/dashboard/feed", without.addr)).await;
    feed.recv_type("hello").await;
    feed.send_json(json!({"type": "watch", "session": "watched"}))
        .await;
    assert_eq!(feed.recv_type("watching").await["session"], "watched");
    // At once, before the channel subscription may be confirmed: the
    // watch started from the log's head, so nothing after it is lost.
    for n in 1..=3 {
        c1.request(json!({"type": "broadcast", "payload": {"n": n}}))
            .await;
    }
    for n in 1..=3 {
        assert_eq!(feed.recv_type("broadcast").await["payload"]["n"], n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_leaves_presence_within_the_ttl() {
    let redis = TestRedis::start();
    let mut hubs = three_hub_processes(&redis).await;
    let (mut a, _) = WsClient::register(&hubs[0].ws_url(), "s", "stays").await;
    let (_b, _) = WsClient::register(&hubs[1].ws_url(), "s", "doomed").await;
    let (_agent, _) = WsClient::register_with(
        &hubs[1].ws_url(),
        json!({"type":"register","client_id":"doomed-agent","session":"s","capabilities":["whatsapp"]}),
    )
    .await;
    a.recv_type("client_joined").await;
    a.recv_type("client_joined").await;

    hubs[1].kill();
    // Both of hub-b's clients are announced gone, once each, and its agent
    // is released.
    let mut left = Vec::new();
    let mut agent_released = false;
    while left.len() < 2 || !agent_released {
        let ev = a.recv().await;
        match ev["type"].as_str() {
            Some("client_left") => {
                left.push(ev["client_id"].as_str().unwrap_or_default().to_string())
            }
            Some("agent_changed") if ev["client_id"].is_null() => agent_released = true,
            _ => {}
        }
    }
    left.sort();
    assert_eq!(left, ["doomed", "doomed-agent"]);
    let extra = a.try_recv(Duration::from_millis(500)).await;
    assert!(
        extra.as_ref().is_none_or(|e| e["type"] != "client_left"),
        "client_left announced twice: {extra:?}"
    );

    // The dead instance is gone from the cluster listing.
    let url = hubs[0].http_url("/api/v1/cluster");
    wait_until_async(
        "hub-b to leave /api/v1/cluster",
        Duration::from_secs(10),
        || {
            let url = url.clone();
            async move {
                let (_, body) = http_get_url(&url).await;
                !body.contains("hub-b") && body.contains("hub-a")
            }
        },
    )
    .await;
    // Commands fall back to the connector (the agent died with its hub).
    let resp = a
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(resp["content"]["executed_by"], "simulated", "{resp}");
}

/// Two hubs on one Redis (started in `ids` order); `client` registered in
/// session `s` on the first, seen joining by `watcher` on the second.
async fn watched_from_another_hub(
    ids: [&str; 2],
    client: &str,
) -> (TestRedis, [TestHub; 2], WsClient, WsClient) {
    let redis = TestRedis::start();
    let first = start_hub(&redis, ids[0], &[]).await;
    let second = start_hub(&redis, ids[1], &[]).await;
    let (mut watcher, _) = WsClient::register(&second.ws_url(), "s", "watcher").await;
    let (client_ws, _) = WsClient::register(&first.ws_url(), "s", client).await;
    assert_eq!(
        watcher.recv_type("client_joined").await["client_id"],
        client
    );
    (redis, [first, second], watcher, client_ws)
}

/// An instance whose heartbeat was late by more than the TTL, though it
/// lives, is reaped by another: its clients are announced gone. At its
/// next heartbeat it finds itself out of the cluster and puts them back,
/// announced again, so presence does not keep losing connected clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_reaped_by_mistake_puts_its_clients_back() {
    let (redis, [_late, reaper], mut watcher, _kept) =
        watched_from_another_hub(["hub-late", "hub-reaper"], "kept").await;

    // hub-late's heartbeat made ancient, as if it had stalled, until the
    // reaper takes its client (XX: never re-adding it once forgotten).
    let instances = "mcp-hub:{cluster}:instances";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub-late never reaped"
        );
        redis.cmd_any(&["ZADD", instances, "XX", "1", "hub-late"]);
        match watcher.try_recv(Duration::from_millis(100)).await {
            Some(ev) if ev["type"] == "client_left" => {
                assert_eq!(ev["client_id"], "kept", "{ev}");
                break;
            }
            _ => {}
        }
    }
    let back = watcher.recv_type("client_joined").await;
    assert_eq!(back["client_id"], "kept", "{back}");
    assert_eq!(back["instance"], "hub-late", "{back}");
    // ...and in presence again, as every instance reads it.
    let url = reaper.http_url("/api/v1/sessions/s");
    wait_until_async("kept back in presence", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let (_, body) = http_get_url(&url).await;
            let summary: Value = serde_json::from_str(&body).unwrap_or_default();
            sorted_ids(&summary["clients"]) == ["kept", "watcher"]
        }
    })
    .await;
}

/// A hub on its own Redis, with `watcher` and `leaver` in session `s`;
/// `leaver` disconnected while Redis held every write (scripts included)
/// until its leave had timed out: its departure is due, and Redis answers
/// again. A first departure (`early`) loaded the leave's script, as on any
/// hub that ran a while, so the paused leave waited in Redis and ran at
/// `UNPAUSE`, after the hub stopped waiting for it.
async fn leaver_departure_left_due() -> (TestRedis, TestHub, WsClient) {
    let redis = TestRedis::start();
    let hub = start_hub(&redis, "hub-a", &[]).await;
    let (mut watcher, _) = WsClient::register(&hub.ws_url(), "s", "watcher").await;
    let (early, _) = WsClient::register(&hub.ws_url(), "s", "early").await;
    drop(early);
    let (leaver, _) = WsClient::register(&hub.ws_url(), "s", "leaver").await;
    assert_eq!(watcher.recv_type("client_left").await["client_id"], "early");
    assert_eq!(
        watcher.recv_type("client_joined").await["client_id"],
        "leaver"
    );
    redis.cmd_all(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    drop(leaver);
    hub.wait_metric("hub_departures_pending", |v| v == 1.0)
        .await;
    redis.cmd_all(&["CLIENT", "UNPAUSE"]);
    (redis, hub, watcher)
}

/// A departure the store did not take (Redis held every write past the
/// command timeout, as a busy Redis or a full pool would) is retried, and
/// the session hears its `client_left` once Redis answers; before, the
/// client stayed listed for as long as its instance lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_redis_did_not_take_is_retried_until_it_does() {
    let (_redis, hub, mut watcher) = leaver_departure_left_due().await;

    let left = watcher.recv_type("client_left").await;
    assert_eq!(left["client_id"], "leaver", "{left}");
    hub.wait_metric("hub_departures_pending", |v| v == 0.0)
        .await;
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/s").await;
    assert_eq!(sorted_ids(&summary["clients"]), ["watcher"], "{summary}");
    assert_quiet(&mut watcher, "one client_left, no more").await;
}

/// A client that registers again on the hub while its last departure is
/// still due: the departure is completed first (`client_left`, then
/// `client_joined`) and never takes the new registration's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_while_its_departure_is_due_stays_present() {
    let (_redis, hub, mut watcher) = leaver_departure_left_due().await;
    let (_back, _) = WsClient::register(&hub.ws_url(), "s", "leaver").await;

    assert_eq!(
        watcher.recv_type("client_left").await["client_id"],
        "leaver"
    );
    assert_eq!(
        watcher.recv_type("client_joined").await["client_id"],
        "leaver"
    );
    hub.wait_metric("hub_departures_pending", |v| v == 0.0)
        .await;
    assert_quiet(&mut watcher, "no more presence changes").await;
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/s").await;
    assert_eq!(
        sorted_ids(&summary["clients"]),
        ["leaver", "watcher"],
        "{summary}"
    );
}

/// A hub stopped cleanly while another runs: each of its clients leaves
/// once, by its own departure (not reaped while it drains), and presence
/// it could not remove itself (written here for it straight into Redis,
/// as a departure Redis did not take) is reaped by the other hub. Before,
/// a clean stop left the cluster's set and nothing ever reaped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanly_stopped_hub_leaves_what_it_could_not_remove_to_the_others() {
    let (redis, [stopping, staying], mut watcher, _live) =
        watched_from_another_hub(["hub-stopping", "hub-staying"], "live").await;
    let ghost = json!({
        "client_id": "ghost",
        "client_name": "ghost",
        "instance": "hub-stopping",
        "capabilities": [],
        "connected_at": 1,
    });
    redis.cmd_any(&[
        "HSET",
        "mcp-hub:{s:s}:presence",
        "ghost",
        &ghost.to_string(),
    ]);
    redis.cmd_any(&["SADD", "mcp-hub:{i:hub-stopping}:members", "s\tghost"]);

    stopping.shutdown().await.unwrap();
    let mut left = Vec::new();
    for _ in 0..2 {
        let ev = watcher.recv_type("client_left").await;
        left.push(ev["client_id"].as_str().unwrap_or_default().to_string());
    }
    left.sort();
    assert_eq!(left, ["ghost", "live"]);
    assert_quiet(&mut watcher, "each departure announced once").await;
    let (_, summary) = http_get_json(&staying, "/api/v1/sessions/s").await;
    assert_eq!(sorted_ids(&summary["clients"]), ["watcher"], "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_survive_a_redis_outage_without_restarting() {
    let mut redis = RedisServer::start();
    let hub1 = start_hub(&redis, "hub-a", &[]).await;
    let hub2 = start_hub(&redis, "hub-b", &[]).await;
    let (mut a, _) = WsClient::register(&hub1.ws_url(), "s", "a").await;
    let (mut b, _) = WsClient::register(&hub2.ws_url(), "s", "b").await;
    a.recv_type("client_joined").await;

    redis.stop();
    let ready = hub1.http_url("/ready");
    wait_until_async("hub-a /ready to turn 503", Duration::from_secs(15), || {
        let url = ready.clone();
        async move { http_get_url(&url).await.0 == 503 }
    })
    .await;
    assert_eq!(http_get_url(&hub1.http_url("/health")).await.0, 200);
    // Clients stay connected; what needs Redis answers store_unavailable.
    let err = a
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(err["code"], "store_unavailable", "{err}");
    let pong = a.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong");

    redis.restart();
    for hub in [&hub1, &hub2] {
        let ready = hub.http_url("/ready");
        wait_until_async("/ready to recover", Duration::from_secs(20), || {
            let url = ready.clone();
            async move { http_get_url(&url).await.0 == 200 }
        })
        .await;
    }
    // Same connections, working again across instances (the restarted
    // Redis is empty: contacts are re-seeded, presence re-announced).
    let resp = a
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"jane","message":"back"}}))
        .await;
    assert_eq!(resp["content"]["success"], true, "{resp}");
    let ev = b.recv_type("message_event").await;
    assert_eq!(ev["message"], "back");
    let (_c, conf) = WsClient::register(&hub2.ws_url(), "s", "c").await;
    assert_eq!(sorted_ids(&conf["clients"]), ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_started_before_redis_waits_then_serves() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let hub = HubProcess::start_unready(
        &[
            "--instance-id",
            "early",
            "--heartbeat-ms",
            HEARTBEAT_MS,
            "--presence-ttl-ms",
            PRESENCE_TTL_MS,
            // `early` stays unregistered until Redis is up: however long
            // that takes here, its registration deadline is not the point.
            "--register-timeout-ms",
            "60000",
        ],
        &[("REDIS_URL", &url)],
    )
    .await;
    assert_eq!(http_get_url(&hub.http_url("/health")).await.0, 200);
    assert_eq!(http_get_url(&hub.http_url("/ready")).await.0, 503);
    // Registering needs Redis: a clear error, and the connection stays.
    let mut early = WsClient::connect(&hub.ws_url()).await;
    let err = early
        .request(json!({"type":"register","client_id":"early","session":"s"}))
        .await;
    assert_eq!(err["code"], "store_unavailable", "{err}");
    let redis = RedisServer::start_on(port);
    let ready = hub.http_url("/ready");
    wait_until_async(
        "/ready after Redis appears",
        Duration::from_secs(20),
        || {
            let url = ready.clone();
            async move { http_get_url(&url).await.0 == 200 }
        },
    )
    .await;
    let (_c, conf) = WsClient::register(&hub.ws_url(), "s", "late").await;
    assert_eq!(conf["instance"], "early");
    let retry = early
        .request(json!({"type":"register","client_id":"early","session":"s"}))
        .await;
    assert_eq!(retry["type"], "registration_confirmed", "{retry}");
    assert!(hub.log().contains("redis unavailable"), "{}", hub.log());
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_clients_spread_and_survive_a_dead_instance() {
    let redis = TestRedis::start();
    let mut hubs = three_hub_processes(&redis).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.addr).collect();
    let lb = Haproxy::start(&addrs, 3);

    let mut clients = Vec::new();
    for i in 0..6 {
        let id = format!("u{i}");
        let (client, conf) = WsClient::register(&lb.ws_url(), "lb", &id).await;
        let instance = conf["instance"].as_str().expect("instance").to_string();
        clients.push((id, client, instance));
    }
    let mut per_instance: HashMap<&str, usize> = HashMap::new();
    for (_, _, instance) in &clients {
        *per_instance.entry(instance.as_str()).or_default() += 1;
    }
    // leastconn spreads long-lived sockets over every instance.
    assert_eq!(per_instance.len(), 3, "{per_instance:?}");

    let sent = clients[0]
        .1
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"alice","message":"before the crash"}}))
        .await;
    assert_eq!(sent["content"]["success"], true, "{sent}");

    hubs[1].kill();
    let mut moved = 0;
    for (id, client, instance) in clients.iter_mut() {
        if instance != "hub-b" {
            continue;
        }
        // The dead instance's sockets end; the client reconnects through
        // HAProxy with the same identity and lands on a live instance.
        while client.try_recv(Duration::from_secs(10)).await.is_some() {}
        let (mut again, conf) = WsClient::register(&lb.ws_url(), "lb", id).await;
        assert_ne!(conf["instance"], "hub-b", "{conf}");
        let hist = again
            .request(json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"alice"}}))
            .await;
        assert_eq!(
            hist["content"]["messages"][0]["message"], "before the crash",
            "{hist}"
        );
        *client = again;
        *instance = conf["instance"].as_str().unwrap_or_default().to_string();
        moved += 1;
    }
    assert!(moved >= 1, "no client was on hub-b");
    lb.wait_servers_up(2);

    // Everyone is in one session again: a broadcast reaches all five others.
    clients[0]
        .1
        .send_json(json!({"type":"broadcast","payload":"all here?"}))
        .await;
    for (id, client, _) in clients.iter_mut().skip(1) {
        let ev = client.recv_type("broadcast").await;
        assert_eq!(ev["payload"], "all here?", "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cluster_starts_serves_and_stops_a_local_cluster() {
    let redis_port = free_port();
    scripts_cluster_round_trip(redis_port, &[], "single").await;
}

/// `scripts/cluster up --redis cluster`: the same, over a local 3-master
/// Redis Cluster (ports R..R+2, bus ports +10000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cluster_runs_on_a_redis_cluster() {
    let redis_port = free_cluster_ports(3);
    scripts_cluster_round_trip(redis_port, &["--redis", "cluster"], "cluster").await;
}

/// `up` with two hubs on the given Redis, two clients through HAProxy on
/// both hubs seeing each other, `status`, `down`.
async fn scripts_cluster_round_trip(redis_port: u16, redis: &[&str], mode: &str) {
    let dir = std::env::temp_dir().join(format!(
        "mcp-hub-cluster-script-{mode}-{}",
        std::process::id()
    ));
    let ports: Vec<String> = (0..2).map(|_| free_port().to_string()).collect();
    let redis_port = redis_port.to_string();
    let script = |cmd: &str| {
        let mut c = std::process::Command::new(repo_path("scripts/cluster"));
        c.arg(cmd)
            .env("CLUSTER_DIR", &dir)
            .env("MCP_HUB_BIN", hub_binary());
        c
    };
    // Make sure nothing is left running if an assertion fails.
    struct Down<F: Fn()>(F);
    impl<F: Fn()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _down = Down(|| {
        let _ = script("down").output();
    });

    // Hub ports are consecutive from the base, and scripts/cluster wants
    // all three haproxy.cfg slots free (the unused one stays DOWN).
    let hub_base = free_ports(3).to_string();
    let up = script("up")
        .args([
            "--hubs",
            "2",
            "--port",
            &ports[0],
            "--stats-port",
            &ports[1],
        ])
        .args(["--redis-port", &redis_port, "--hub-base-port", &hub_base])
        .args(redis)
        .output()
        .expect("run scripts/cluster up");
    assert_succeeded(&up, "scripts/cluster up failed");
    let status = script("status").output().expect("status");
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains("hub1: running") && text.contains("hub2: running"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("redis") && l.contains(": running") && l.ends_with(mode)),
        "{text}"
    );

    let url = format!("ws://127.0.0.1:{}/", ports[0]);
    let (_a, conf_a) = WsClient::register(&url, "script", "a").await;
    let (_b, conf_b) = WsClient::register(&url, "script", "b").await;
    assert_ne!(
        conf_a["instance"], conf_b["instance"],
        "leastconn uses both hubs"
    );
    assert_eq!(sorted_ids(&conf_b["clients"]), ["a", "b"]);

    let down = script("down").output().expect("down");
    assert!(down.status.success());
    let after = script("status").output().expect("status");
    assert!(
        !after.status.success(),
        "status after down must report stopped processes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls() {
    let redis = TlsRedisServer::start();
    let ca = redis.ca_file.to_string_lossy().to_string();
    let envs = [("REDIS_URL", redis.url()), ("SSL_CERT_FILE", ca)];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hub1 = HubProcess::start(&["--instance-id", "tls-a"], &envs).await;
    let hub2 = HubProcess::start(&["--instance-id", "tls-b"], &envs).await;
    let (mut a, _) = WsClient::register(&hub1.ws_url(), "tls", "a").await;
    let (mut b, conf) = WsClient::register(&hub2.ws_url(), "tls", "b").await;
    assert_eq!(sorted_ids(&conf["clients"]), ["a", "b"]);
    let resp = a
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"bob","message":"over tls"}}))
        .await;
    assert_eq!(resp["content"]["success"], true, "{resp}");
    assert_eq!(b.recv_type("message_event").await["message"], "over tls");
}

/// The presence promise across instances: 90 clients register at once
/// spread over three hubs, then half of them leave while 45 new ones
/// register; each learns of every other member exactly once, and of each
/// departure once (tests/support/presence.rs). A presence TTL long enough
/// that a loaded machine does not make a live hub look dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_and_leaves_on_three_hubs_tell_each_member_exactly_once() {
    let redis = TestRedis::start();
    let mut hubs = Vec::new();
    for id in ["rush-a", "rush-b", "rush-c"] {
        let mut args = redis.hub_args();
        args.extend(["--instance-id", id, "--presence-ttl-ms", "30000"].map(String::from));
        hubs.push(TestHub::start(&strs(&args)).await);
    }
    let urls: Vec<String> = hubs.iter().map(|h| h.ws_url()).collect();
    check_presence_exactly_once(&urls, &hubs[0], "rush", 90).await;
}
