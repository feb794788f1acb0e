//! AI coordination end to end: three real hub processes in cluster mode
//! (one private redis-server) with the Gemini provider pointed at a local
//! fake. 50 identical `whatsapp_ai_command`s spread over the three
//! instances must cause exactly one upstream call.

mod cluster_support;
mod common;
#[path = "support/fake_ai.rs"]
mod fake_ai;

use std::sync::Arc;
use std::time::Duration;

use cluster_support::RedisServer;
use common::{HubProcess, WsClient, hub_binary};
use fake_ai::{FakeAi, GEMINI_KEY};
use serde_json::{Value, json};

const COMMAND: &str = "send john a message saying hello";

/// `name{labels} value` lines of a Prometheus exposition, summed.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_ai_commands_over_three_hubs_make_one_upstream_call() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    // Long enough that every command arrives while the call is in flight.
    fake.set_delay(Duration::from_millis(2000));
    let gemini_url = fake.gemini_url();
    let redis_url = redis.url();
    let envs = [
        ("AI_PROVIDER", "gemini"),
        ("GEMINI_API_KEY", GEMINI_KEY),
        ("GEMINI_BASE_URL", gemini_url.as_str()),
        ("GEMINI_MODEL", "gemini-2.5-flash"),
        ("REDIS_KEY_PREFIX", "ai-e2e"),
        ("AI_RATE_LIMIT_PER_MIN", "0"),
    ];
    let mut hubs = Vec::new();
    for i in 0..3 {
        let id = format!("ai-hub-{i}");
        hubs.push(
            HubProcess::start(&["--redis-url", &redis_url, "--instance-id", &id], &envs).await,
        );
    }
    let mut clients = Vec::new();
    for i in 0..50 {
        let (client, _) =
            WsClient::register(&hubs[i % 3].ws_url(), "ai-e2e", &format!("client-{i}")).await;
        clients.push(client);
    }
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                client
                    .request(json!({"type": "whatsapp_ai_command", "command": COMMAND}))
                    .await
            })
        })
        .collect();
    let mut answers: Vec<Value> = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("client task"));
    }
    assert_eq!(fake.call_count(), 1, "exactly one upstream call");
    let mut fresh = 0;
    let mut shared = 0;
    for a in &answers {
        assert_eq!(a["type"], "response", "{a}");
        assert_eq!(a["response_type"], "whatsapp_ai_command_result", "{a}");
        let c = &a["content"];
        assert_eq!(c["success"], true, "{a}");
        assert_eq!(c["provider"], "gemini");
        assert_eq!(
            c["interpretation"],
            json!({"action": "send", "contact": "John", "message": "reply #1"}),
            "every client got the one call's answer"
        );
        match (c["cached"].as_bool(), c["shared"].as_bool()) {
            (Some(false), Some(false)) => fresh += 1,
            (Some(false), Some(true)) => shared += 1,
            other => panic!("unexpected cached/shared {other:?}: {a}"),
        }
    }
    assert_eq!((fresh, shared), (1, 49));
    // The instances' own metrics agree: one upstream call in the cluster.
    let mut upstream = 0.0;
    let mut lock_waits = 0.0;
    for h in &hubs {
        let text = reqwest::get(h.http_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        upstream += metric(
            &text,
            "hub_ai_upstream_duration_seconds_count{provider=\"gemini\"}",
        );
        lock_waits += metric(&text, "hub_ai_lock_waits_total");
    }
    assert_eq!(upstream, 1.0);
    assert_eq!(
        lock_waits, 2.0,
        "the two other instances waited for the lock"
    );
}

#[tokio::test]
async fn a_selected_provider_without_its_key_is_a_startup_error() {
    for (provider, setting) in [("gemini", "GEMINI_API_KEY"), ("openai", "OPENAI_API_KEY")] {
        let out = tokio::process::Command::new(hub_binary())
            .args(["serve", "--port", "0", "--ai-provider", provider])
            .env_remove("GEMINI_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("REDIS_URL")
            .current_dir(std::env::temp_dir())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), out)
            .await
            .expect("the hub exits at once")
            .expect("run mcp-hub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{provider}: {stderr}");
        assert!(stderr.contains(setting), "{provider}: {stderr}");
    }
}
