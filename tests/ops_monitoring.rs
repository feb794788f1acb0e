//! Monitoring end to end, on the shipped files: `scripts/cluster up
//! --prometheus` starts redis-server, three hubs, HAProxy (haproxy/haproxy.cfg)
//! and Prometheus (deploy/prometheus/prometheus.yml) on free loopback ports;
//! the test drives traffic of every kind through HAProxy (registrations,
//! pings, broadcasts, commands, errors, AI commands against a fake Gemini
//! with single flight and the cache, an agent, a slow consumer, a Redis
//! that refuses writes), then evaluates every expression of the Grafana
//! dashboard through Prometheus' HTTP API and fails on any empty result.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fake_ai::{FakeAi, GEMINI_KEY};
use support::{WsClient, assert_succeeded, free_port, free_ports, have, hub_binary, repo_path};

fn missing_tool() -> Option<&'static str> {
    ["redis-server", "haproxy", "prometheus", "curl"]
        .into_iter()
        .find(|t| !have(t))
}

/// A loopback cluster started with scripts/cluster; `down` on drop, so a
/// failing test leaves nothing running.
struct Cluster {
    dir: PathBuf,
    lb_port: u16,
    hub_base: u16,
    redis_port: u16,
    prometheus_port: u16,
}

impl Cluster {
    fn script(dir: &Path, cmd: &str) -> std::process::Command {
        let mut c = std::process::Command::new(repo_path("scripts/cluster"));
        c.arg(cmd)
            .env("CLUSTER_DIR", dir)
            .env("MCP_HUB_BIN", hub_binary());
        // Settings a developer's shell could leak into the hubs.
        for var in [
            "REDIS_KEY_PREFIX",
            "LOG_FORMAT",
            "RUST_LOG",
            "CONTACTS_FILE",
            "AUTO_REPLY",
            "OPENAI_API_KEY",
            "MAX_MESSAGE_BYTES",
        ] {
            c.env_remove(var);
        }
        c
    }

    async fn up(hub_env: &[(&str, &str)]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("mcp-hub-ops-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Three consecutive free hub ports (haproxy.cfg's three slots).
        let hub_base = free_ports(3);
        let cluster = Cluster {
            dir,
            lb_port: free_port(),
            hub_base,
            redis_port: free_port(),
            prometheus_port: free_port(),
        };
        let stats_port = free_port();
        let mut cmd = Cluster::script(&cluster.dir, "up");
        cmd.args(["--hubs", "3", "--scrape-interval", "1s"])
            .args(["--port", &cluster.lb_port.to_string()])
            .args(["--stats-port", &stats_port.to_string()])
            .args(["--hub-base-port", &hub_base.to_string()])
            .args(["--redis-port", &cluster.redis_port.to_string()])
            .args(["--prometheus-port", &cluster.prometheus_port.to_string()]);
        for (k, v) in hub_env {
            cmd.env(k, v);
        }
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("run scripts/cluster up");
        assert_succeeded(&out, "scripts/cluster up failed");
        cluster
    }

    fn lb_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.lb_port)
    }

    fn hub_url(&self, i: u16) -> String {
        format!("ws://127.0.0.1:{}/", self.hub_base + i)
    }

    fn hub_metrics_url(&self, i: u16) -> String {
        format!("http://127.0.0.1:{}/metrics", self.hub_base + i)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Cluster::script(&self.dir, "down").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One inline Redis command (no quoting needed for these).
async fn redis_cmd(port: u16, cmd: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to redis");
    s.write_all(format!("{cmd}\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("redis answers")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

/// Sum of the samples of `name` (any labels) in a hub's exposition.
async fn hub_metric(url: &str, name: &str) -> f64 {
    let Ok(resp) = reqwest::get(url).await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn prom_query(port: u16, expr: &str) -> Vec<Value> {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .await
        .expect("query Prometheus");
    let status = resp.status();
    let body: Value = resp.json().await.expect("Prometheus answers JSON");
    assert!(
        status.is_success() && body["status"] == "success",
        "Prometheus rejected `{expr}`: {body}"
    );
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The single value of an instant query, or 0 when empty.
async fn prom_value(port: u16, expr: &str) -> f64 {
    prom_query(port, expr)
        .await
        .first()
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_has_data_from_a_loopback_cluster() {
    if let Some(tool) = missing_tool() {
        eprintln!(
            "SKIPPED: `{tool}` is not installed (run ./scripts/test, which installs redis-server, haproxy and prometheus)"
        );
        return;
    }
    let fake = FakeAi::start().await;
    // Slow enough that identical commands from three hubs overlap.
    fake.set_delay(Duration::from_millis(800));
    let gemini_url = fake.gemini_url();
    let cluster = Cluster::up(&[
        ("AI_PROVIDER", "gemini"),
        ("GEMINI_API_KEY", GEMINI_KEY),
        ("GEMINI_BASE_URL", &gemini_url),
        ("AI_RATE_LIMIT_PER_MIN", "0"),
        // A small outbound queue, so a client that stops reading is
        // disconnected quickly; no per-connection limit on the flood.
        ("OUTBOUND_QUEUE_LEN", "4"),
        ("RATE_LIMIT_PER_SEC", "100000"),
        ("RATE_LIMIT_BURST", "100000"),
    ])
    .await;
    let prom = cluster.prometheus_port;
    let lb = cluster.lb_url();

    // Clients through HAProxy: leastconn puts one on each hub.
    let mut users = Vec::new();
    let mut instances = std::collections::BTreeSet::new();
    for i in 0..3 {
        let (c, conf) = WsClient::register(&lb, "obs", &format!("user{i}")).await;
        instances.insert(conf["instance"].as_str().unwrap_or_default().to_string());
        users.push(c);
    }
    assert_eq!(
        instances.len(),
        3,
        "leastconn spreads clients: {instances:?}"
    );

    // Pings, commands and broadcasts.
    for u in users.iter_mut() {
        let pong = u.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }
    let list = users[0]
        .request(json!({"type": "whatsapp_command", "command": {"action": "list_contacts"}}))
        .await;
    assert_eq!(list["type"], "response", "{list}");
    let sent = users[1]
        .request(json!({"type": "whatsapp_command",
            "command": {"action": "send", "contact": "john", "message": "metrics please"}}))
        .await;
    assert_eq!(sent["content"]["success"], true, "{sent}");
    let history = users[2]
        .request(json!({"type": "whatsapp_command",
            "command": {"action": "get_history", "contact": "john"}}))
        .await;
    assert_eq!(history["type"], "response", "{history}");
    for n in 0..5 {
        users[0]
            .send_json(json!({"type": "broadcast", "payload": {"n": n}}))
            .await;
    }
    for u in users.iter_mut().skip(1) {
        for _ in 0..5 {
            u.recv_type("broadcast").await;
        }
    }

    // Errors with codes.
    users[1].send_text("{ this is not json").await;
    let err = users[1].recv_type("error").await;
    assert_eq!(err["code"], "invalid_json", "{err}");
    let err = users[2].request(json!({"type": "no_such_type"})).await;
    assert_eq!(err["type"], "error", "{err}");

    // AI: the same command on three hubs at once is one upstream call
    // (single flight across the cluster); asked again, it is a cache hit.
    const COMMAND: &str = "send john a message saying the dashboard works";
    let asks = users.drain(..).map(|mut u| {
        tokio::spawn(async move {
            let answer = u
                .request(json!({"type": "whatsapp_ai_command", "command": COMMAND}))
                .await;
            (u, answer)
        })
    });
    let asks: Vec<_> = asks.collect();
    for t in asks {
        let (u, answer) = t.await.expect("AI task");
        assert_eq!(answer["type"], "response", "{answer}");
        users.push(u);
    }
    assert_eq!(fake.call_count(), 1, "identical AI commands share one call");
    let again = users[0]
        .request(json!({"type": "whatsapp_ai_command", "command": COMMAND}))
        .await;
    assert_eq!(again["type"], "response", "{again}");
    assert_eq!(
        fake.call_count(),
        1,
        "the repeated command is served from the cache"
    );

    // An agent executes commands for its session.
    let (mut agent, conf) = WsClient::register_with(
        &lb,
        json!({"type": "register", "client_id": "phone", "session": "agent-s",
               "capabilities": ["whatsapp"]}),
    )
    .await;
    assert_eq!(conf["agent"], true, "{conf}");
    let (mut boss, _) = WsClient::register(&lb, "agent-s", "boss").await;
    boss.send_json(
        json!({"type": "whatsapp_command", "request_id": "via-agent",
        "command": {"action": "send", "contact": "john", "message": "from the agent"}}),
    )
    .await;
    let exec = agent.recv_type("execute").await;
    agent
        .send_json(
            json!({"type": "execute_result", "request_id": exec["request_id"],
            "content": {"success": true, "contact": "John", "message": "from the agent",
                        "message_id": "wamid.ops"}}),
        )
        .await;
    let done = boss.recv_type("response").await;
    assert_eq!(done["request_id"], "via-agent", "{done}");

    // A slow consumer: it stops reading while big broadcasts pour in, on
    // one hub directly (no HAProxy buffers in between).
    let (sleepy, _) = WsClient::register(&cluster.hub_url(0), "flood", "sleepy").await;
    let (mut producer, _) = WsClient::register(&cluster.hub_url(0), "flood", "producer").await;
    let blob = "x".repeat(30_000);
    let metrics0 = cluster.hub_metrics_url(0);
    let mut disconnected = false;
    for n in 0..4000 {
        producer
            .send_json(json!({"type": "broadcast", "payload": {"n": n, "blob": blob}}))
            .await;
        if n % 50 == 49 && hub_metric(&metrics0, "hub_slow_consumer_disconnects_total").await >= 1.0
        {
            disconnected = true;
            break;
        }
    }
    assert!(
        disconnected,
        "the client that never reads was not disconnected"
    );
    // The hub cannot finish a close handshake with a peer that never reads;
    // the socket goes away when the client does.
    drop(sleepy);
    // And one client that leaves normally.
    let (leaver, _) = WsClient::register(&lb, "obs", "leaver").await;
    leaver.close().await;

    // Redis refusing writes (out of memory): the hubs count Redis errors and
    // report store_unavailable, then recover when Redis accepts writes again.
    let ok = redis_cmd(cluster.redis_port, "CONFIG SET maxmemory 1").await;
    assert_eq!(ok, "+OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut redis_errors = 0.0;
    while redis_errors < 1.0 && Instant::now() < deadline {
        let _ = users[0]
            .request(json!({"type": "whatsapp_command",
                "command": {"action": "send", "contact": "john", "message": "while Redis is full"}}))
            .await;
        for i in 0..3 {
            redis_errors += hub_metric(&cluster.hub_metrics_url(i), "hub_redis_errors_total").await;
        }
    }
    let ok = redis_cmd(cluster.redis_port, "CONFIG SET maxmemory 0").await;
    assert_eq!(ok, "+OK");
    assert!(
        redis_errors >= 1.0,
        "no Redis errors counted while Redis refused writes"
    );

    // Every dashboard expression, as Grafana sends it with the instance
    // variable at "All", must return data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("grafana/dashboards/mcp-hub-overview.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let var = dashboard["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == "instance"))
        .expect("instance variable");
    let all = var["allValue"].as_str().unwrap_or(".*").to_string();
    // The variable's own query lists the three hubs by INSTANCE_ID.
    let values = prom_query(prom, "group by (instance) (up{job=\"hub\"})").await;
    let mut listed: Vec<String> = values
        .iter()
        .filter_map(|v| v["metric"]["instance"].as_str().map(str::to_string))
        .collect();
    listed.sort();
    assert_eq!(listed, ["hub1", "hub2", "hub3"]);

    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            exprs.push((
                format!("{} / {}", p["title"].as_str().unwrap_or("?"), t["refId"]),
                expr.replace("$__rate_interval", "1m")
                    .replace("$instance", &all),
            ));
        }
    }
    assert!(exprs.len() > 20, "{} expressions", exprs.len());
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut empty: Vec<(String, String)> = exprs.clone();
    while !empty.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (name, expr) in empty {
            if prom_query(prom, &expr).await.is_empty() {
                still.push((name, expr));
            }
        }
        empty = still;
        if !empty.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data after the traffic:\n{}\nhub1 log:\n{}",
        empty
            .iter()
            .map(|(n, e)| format!("  {n}: {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
        cluster.log("hub1")
    );

    // And the numbers reflect what happened.
    for (expr, at_least) in [
        ("sum(hub_slow_consumer_disconnects_total)", 1.0),
        ("sum(hub_agent_calls_total{outcome=\"ok\"})", 1.0),
        ("sum(hub_ai_cache_hits_total)", 1.0),
        (
            "sum(hub_ai_singleflight_joins_total) + sum(hub_ai_lock_waits_total)",
            1.0,
        ),
        ("sum(hub_ai_requests_total{provider=\"gemini\"})", 4.0),
        ("sum(hub_errors_total{code=\"invalid_json\"})", 1.0),
        ("sum(hub_redis_errors_total)", 1.0),
        (
            "sum(hub_ws_messages_received_total{type=\"broadcast\"})",
            5.0,
        ),
        ("count(up{job=\"hub\"} == 1)", 3.0),
        ("count(up{job=\"haproxy\"} == 1)", 1.0),
    ] {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut v = prom_value(prom, expr).await;
        while v < at_least && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            v = prom_value(prom, expr).await;
        }
        assert!(v >= at_least, "{expr} = {v}, expected at least {at_least}");
    }

    // The alert rules load and evaluate without errors.
    let rules: Value = reqwest::get(format!("http://127.0.0.1:{prom}/api/v1/rules"))
        .await
        .expect("rules")
        .json()
        .await
        .expect("rules JSON");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    assert!(!groups.is_empty(), "{rules}");
    for g in groups {
        for r in g["rules"].as_array().into_iter().flatten() {
            assert_ne!(
                r["health"], "err",
                "rule {} fails: {}",
                r["name"], r["lastError"]
            );
        }
    }

    drop(agent);
    let down = Cluster::script(&cluster.dir, "down")
        .output()
        .expect("scripts/cluster down");
    assert!(down.status.success());
    let status = Cluster::script(&cluster.dir, "status")
        .output()
        .expect("scripts/cluster status");
    assert!(!status.status.success(), "everything is stopped after down");
}
