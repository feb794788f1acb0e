//! AI coordination end to end: three in-process hubs in cluster mode (one
//! private redis-server) with the Gemini provider pointed at a local fake.
//! 50 identical `whatsapp_ai_command`s spread over the three instances must
//! cause exactly one upstream call. (A selected provider without its key
//! is a startup error: tests/process.rs.)

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_ai::{FakeAi, GEMINI_KEY};
use support::*;

const COMMAND: &str = "send john a message saying hello";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_ai_commands_over_three_hubs_make_one_upstream_call() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    // Long enough that every command arrives while the call is in flight.
    fake.set_delay(Duration::from_millis(2000));
    let gemini_url = fake.gemini_url();
    let redis_url = redis.url();
    let mut hubs = Vec::new();
    for i in 0..3 {
        let id = format!("ai-hub-{i}");
        hubs.push(
            TestHub::start(&[
                "--redis-url",
                &redis_url,
                "--instance-id",
                &id,
                "--ai-provider",
                "gemini",
                "--gemini-api-key",
                GEMINI_KEY,
                "--gemini-base-url",
                &gemini_url,
                "--gemini-model",
                "gemini-2.5-flash",
                "--redis-key-prefix",
                "ai-e2e",
                "--ai-rate-limit-per-min",
                "0",
            ])
            .await,
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
        let text = metrics_text(h).await;
        upstream += metric_sum(
            &text,
            "hub_ai_upstream_duration_seconds_count{provider=\"gemini\"}",
        );
        lock_waits += metric_sum(&text, "hub_ai_lock_waits_total");
    }
    assert_eq!(upstream, 1.0);
    assert_eq!(
        lock_waits, 2.0,
        "the two other instances waited for the lock"
    );
}
