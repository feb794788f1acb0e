//! Liveness (issue 11): heartbeats and the idle timeout end a half-open
//! connection, and presence lost in a Redis outage is announced again when
//! the hubs re-announce their clients.

use crate::support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Fast heartbeats so a silent peer is cut off within a second.
const PING_MS: &str = "100";
const IDLE_MS: &str = "500";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_loses_the_role_within_the_idle_timeout() {
    let hub = TestHub::start(&["--ping-interval-ms", PING_MS, "--idle-timeout-ms", IDLE_MS]).await;
    let (mut watcher, _) = WsClient::register(&hub.ws_url(), "s", "watcher").await;
    let (mut agent, confirmed) = register_agent(&hub.ws_url(), "s", "agent").await;
    assert_eq!(confirmed["agent"], true);
    let joined = watcher.recv_type("agent_changed").await;
    assert_eq!(joined["client_id"], "agent");

    // From here the agent reads nothing, so it answers no ping (tungstenite
    // only answers while the stream is read): a half-open peer.
    let silent_since = Instant::now();
    // The watcher keeps reading (and so answering pings) while it waits.
    let released = watcher.recv_type("agent_changed").await;
    assert_eq!(released["client_id"], Value::Null, "{released}");
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "released after {waited:?} with an idle timeout of {IDLE_MS} ms"
    );
    let left = watcher.recv_type("client_left").await;
    assert_eq!(left["client_id"], "agent");

    // The agent finds its connection closed once it reads again: the 1001
    // close frame, or a reset (reading now answers the queued pings onto a
    // socket the hub has closed, and the reset discards the unread close).
    let code = agent.expect_close().await;
    assert!(matches!(code, Some(1001) | None), "closed with {code:?}");
    // The watcher, answering pings all along, outlived several timeouts.
    let pong = watcher.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    let metrics = metrics_text(&hub).await;
    assert_eq!(
        metric_value(
            &metrics,
            "hub_ws_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        Some(1.0),
        "exactly the silent agent was cut off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_must_exceed_the_ping_interval() {
    let err = config_from_flags(&["--ping-interval-ms", "1000", "--idle-timeout-ms", "1000"])
        .unwrap_err();
    assert!(err.contains("IDLE_TIMEOUT_MS"), "{err}");
}

/// Reads `client`'s frames until it has seen every `client_joined` in
/// `joined` and, if `agent`, the `agent_changed` naming it; panics after 15 s.
async fn expect_presence(client: &mut WsClient, who: &str, joined: &[&str], agent: Option<&str>) {
    let want: BTreeSet<String> = joined.iter().map(|s| s.to_string()).collect();
    let mut got = BTreeSet::new();
    let mut agent_seen = agent.is_none();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got != want || !agent_seen {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(v) = client.try_recv(left).await else {
            panic!(
                "{who}: wanted joins {want:?} (got {got:?}), agent {agent:?} (seen: {agent_seen}); frames: {seen:#?}"
            );
        };
        match v["type"].as_str() {
            Some("client_joined") => {
                let id = v["client_id"].as_str().unwrap_or_default().to_string();
                assert!(got.insert(id.clone()), "{who}: {id} announced twice");
            }
            Some("agent_changed") if agent.is_some() && v["client_id"] == agent.unwrap_or("") => {
                agent_seen = true;
            }
            _ => {}
        }
        seen.push(v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lost_in_a_redis_restart_is_announced_again() {
    let mut redis = RedisServer::start();
    let hubs = start_cluster(&redis, &["hub-a", "hub-b", "hub-c"], &[]).await;
    let (mut a, _) = register_agent(&hubs[0].ws_url(), "s", "ag").await;
    let (mut b, _) = WsClient::register(&hubs[1].ws_url(), "s", "b1").await;
    let (mut c, conf) = WsClient::register(&hubs[2].ws_url(), "s", "c1").await;
    assert_eq!(sorted_ids(&conf["clients"]), ["ag", "b1", "c1"]);
    // Everyone has seen everyone; start from a quiet state.
    expect_presence(&mut a, "ag", &["b1", "c1"], None).await;
    expect_presence(&mut b, "b1", &["c1"], None).await;
    for client in [&mut a, &mut b, &mut c] {
        client.flush().await;
    }

    // Redis dies and comes back empty: presence and the agent are gone.
    redis.stop();
    for hub in &hubs {
        let ready = hub.http_url("/ready");
        wait_until_async("the outage to be seen", Duration::from_secs(15), || {
            let url = ready.clone();
            async move { http_get_url(&url).await.0 == 503 }
        })
        .await;
    }
    redis.restart();

    // Each hub re-announces its own clients; the others are told.
    expect_presence(&mut a, "ag", &["b1", "c1"], None).await;
    expect_presence(&mut b, "b1", &["ag", "c1"], Some("ag")).await;
    expect_presence(&mut c, "c1", &["ag", "b1"], Some("ag")).await;
    for hub in &hubs {
        let ready = hub.http_url("/ready");
        wait_until_async("/ready to recover", Duration::from_secs(15), || {
            let url = ready.clone();
            async move { http_get_url(&url).await.0 == 200 }
        })
        .await;
    }
    // The store agrees, and nothing is announced twice.
    let (_d, conf) = WsClient::register(&hubs[1].ws_url(), "s", "d1").await;
    assert_eq!(sorted_ids(&conf["clients"]), ["ag", "b1", "c1", "d1"]);
    for client in [&mut a, &mut b, &mut c] {
        let late: Vec<Value> = client
            .flush()
            .await
            .into_iter()
            .filter(|v| v["type"] == "client_joined" && v["client_id"] != "d1")
            .collect();
        assert!(late.is_empty(), "announced again: {late:?}");
    }
}
