//! AI coordination at the library level: several `AiCoordinator`s (as on
//! several hub instances) sharing one private redis-server, calling a local
//! fake Gemini / OpenAI-compatible server that counts calls, records
//! concurrency and plays scripted failures.
//!
//! Durations in these tests are protocol parameters (leases, retry delays,
//! cooldowns), never speed expectations: assertions on time check that
//! something did NOT happen too early (a retry before the provider's retry
//! delay, a takeover before a lease expired).

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_hub::ai::breaker::BreakerState;
use mcp_hub::ai::coordinator::AiCoordinator;
use mcp_hub::ai::gemini::GeminiProvider;
use mcp_hub::ai::openai::OpenAiProvider;
use mcp_hub::ai::settings::{CoordinationSettings, GeminiSettings, OpenAiSettings};
use mcp_hub::ai::{AiError, AiProvider, InterpretRequest, RedisCoordination, validate};
use mcp_hub::metrics::Metrics;
use mcp_hub::protocol::{ErrorCode, HubError};
use mcp_hub::redis::RedisBackend;
use serde_json::{Value, json};
use support::RedisServer;
use support::fake_ai::{Behavior, FakeAi, GEMINI_KEY, OPENAI_KEY};

const COMMAND: &str = "send john a message saying hello";
const PREFIX: &str = "aitest";

fn gemini(fake: &FakeAi) -> Arc<dyn AiProvider> {
    gemini_with_key(fake, GEMINI_KEY)
}

fn gemini_with_key(fake: &FakeAi, key: &str) -> Arc<dyn AiProvider> {
    Arc::new(GeminiProvider::new(GeminiSettings {
        api_key: key.into(),
        model: "gemini-2.5-flash".into(),
        base_url: fake.gemini_url(),
    }))
}

fn openai(fake: &FakeAi, key: &str) -> Arc<dyn AiProvider> {
    Arc::new(OpenAiProvider::new(OpenAiSettings {
        api_key: key.into(),
        model: "gpt-4o-mini".into(),
        base_url: fake.openai_url(),
    }))
}

/// Quick retries, generous deadlines, no quotas, no breaker.
fn settings() -> CoordinationSettings {
    CoordinationSettings {
        attempt_timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(20),
        max_retries: 2,
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        cache_ttl: Duration::from_secs(60),
        rate_limit_per_min: 0,
        max_concurrency: 0,
        queue_timeout: Duration::from_secs(10),
        lock_ttl: Duration::from_secs(2),
        breaker_threshold: 0,
        breaker_cooldown: Duration::from_secs(1),
    }
}

struct Node {
    ai: Arc<AiCoordinator>,
    metrics: Arc<Metrics>,
}

fn node(
    provider: Arc<dyn AiProvider>,
    s: CoordinationSettings,
    redis: Option<&RedisServer>,
) -> Node {
    let metrics = Arc::new(Metrics::new("ai-test"));
    let redis = redis.map(|r| RedisCoordination {
        backend: RedisBackend::from_pool(r.pool(), PREFIX, metrics.clone()),
    });
    Node {
        ai: Arc::new(AiCoordinator::with_settings(
            provider,
            metrics.clone(),
            s,
            redis,
        )),
        metrics,
    }
}

fn request(command: &str) -> InterpretRequest {
    InterpretRequest {
        command: command.into(),
        contacts: vec!["John".into(), "Alice".into()],
        last_contact: None,
    }
}

fn code(e: &AiError) -> ErrorCode {
    HubError::from(e.clone()).code
}

async fn redis_int(redis: &RedisServer, cmd: &[&str]) -> i64 {
    let mut conn = redis.pool().get().await.expect("redis connection");
    let mut c = redis::cmd(cmd[0]);
    for a in &cmd[1..] {
        c.arg(*a);
    }
    c.query_async(&mut conn).await.expect("redis command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_requests_across_three_coordinators_make_one_upstream_call() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    fake.set_delay(Duration::from_millis(1000));
    let nodes: Vec<Node> = (0..3)
        .map(|_| node(gemini(&fake), settings(), Some(&redis)))
        .collect();
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let ai = nodes[i % 3].ai.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                ai.interpret("session-1", &request(COMMAND)).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("task").expect("an answer"));
    }
    assert_eq!(fake.call_count(), 1, "exactly one upstream call");
    let first = &outcomes[0].value;
    assert_eq!(first.message.as_deref(), Some("reply #1"));
    assert!(
        outcomes.iter().all(|o| &o.value == first),
        "50 identical answers"
    );
    let fresh = outcomes.iter().filter(|o| !o.cached && !o.shared).count();
    let shared = outcomes.iter().filter(|o| o.shared).count();
    assert_eq!(fresh, 1, "one caller made the call");
    assert_eq!(shared, 49, "the other 49 shared it");
    // Each of the two other instances' leaders waited for the lock once;
    // every other caller joined in-process or through Redis.
    let lock_waits: u64 = nodes.iter().map(|n| n.metrics.ai_lock_waits.get()).sum();
    let joins: u64 = nodes
        .iter()
        .map(|n| n.metrics.ai_singleflight_joins.get())
        .sum();
    assert_eq!(lock_waits, 2);
    assert_eq!(joins, 49);
    // Afterwards the answer is cached cluster-wide.
    let later = nodes[2]
        .ai
        .interpret("session-1", &request(COMMAND))
        .await
        .unwrap();
    assert!(later.cached && !later.shared);
    assert_eq!(&later.value, first);
    // Another session never gets this session's answer.
    let other = nodes[1]
        .ai
        .interpret("session-2", &request(COMMAND))
        .await
        .unwrap();
    assert_eq!(other.value.message.as_deref(), Some("reply #2"));
    assert_eq!(fake.call_count(), 2);
    let lock = format!("{PREFIX}:{{ai:*}}:lock");
    let mut conn = redis.pool().get().await.unwrap();
    let locks: Vec<String> = redis::cmd("KEYS")
        .arg(&lock)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(locks.is_empty(), "locks released: {locks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_distinct_requests_never_exceed_the_cluster_concurrency_cap() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    fake.set_delay(Duration::from_millis(150));
    let s = CoordinationSettings {
        max_concurrency: 4,
        queue_timeout: Duration::from_secs(30),
        deadline: Duration::from_secs(40),
        ..settings()
    };
    let nodes: Vec<Node> = (0..3)
        .map(|_| node(gemini(&fake), s.clone(), Some(&redis)))
        .collect();
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let ai = nodes[i % 3].ai.clone();
            tokio::spawn(async move {
                ai.interpret("s", &request(&format!("tell john number {i}")))
                    .await
            })
        })
        .collect();
    for t in tasks {
        let o = t.await.unwrap().expect("every request is answered");
        assert!(!o.cached && !o.shared);
    }
    assert_eq!(fake.call_count(), 30);
    let peak = fake.peak_concurrency();
    println!("peak concurrent upstream calls: {peak}");
    assert!(peak <= 4, "peak {peak} exceeds the cap of 4");
    assert!(peak >= 2, "the calls did run concurrently (peak {peak})");
    // Every slot is freed once the calls are over.
    let slots = format!("{PREFIX}:{{q:gemini}}:slots");
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_int(&redis, &["ZCARD", &slots]).await != 0 {
        assert!(Instant::now() < deadline, "slots still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rate_limit_refuses_with_ai_rate_limited() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    let s = CoordinationSettings {
        rate_limit_per_min: 5,
        queue_timeout: Duration::from_millis(300),
        ..settings()
    };
    let nodes: Vec<Node> = (0..3)
        .map(|_| node(gemini(&fake), s.clone(), Some(&redis)))
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..8 {
        match nodes[i % 3]
            .ai
            .interpret("s", &request(&format!("tell john {i}")))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(code(&e), ErrorCode::AiRateLimited, "{e}");
                limited += 1;
            }
        }
    }
    assert_eq!((ok, limited), (5, 3));
    assert_eq!(fake.call_count(), 5, "the limit holds across instances");
    let rejected: u64 = nodes.iter().map(|n| n.metrics.ai_rate_limited.get()).sum();
    assert_eq!(rejected, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_is_taken_over_after_its_lease_expires() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    fake.script([Behavior::Hang]);
    let lease = Duration::from_millis(600);
    let s = CoordinationSettings {
        lock_ttl: lease,
        // One slot: the dead holder's slot must expire too.
        max_concurrency: 1,
        ..settings()
    };
    let a = node(gemini(&fake), s.clone(), Some(&redis));
    let b = node(gemini(&fake), s, Some(&redis));

    let ai = a.ai.clone();
    let mut dying = Box::pin(async move { ai.interpret("s", &request(COMMAND)).await });
    tokio::select! {
        _ = &mut dying => panic!("a hung upstream call cannot finish"),
        _ = fake.wait_for_calls(1, Duration::from_secs(10)) => {}
    }
    // A dead process runs no destructors and renews nothing: forget the
    // holder's future without dropping it (dropping would release the
    // lock at once; see the next test).
    std::mem::forget(dying);

    let out = b.ai.interpret("s", &request(COMMAND)).await.unwrap();
    assert_eq!(out.value.message.as_deref(), Some("reply #2"));
    assert!(!out.cached && !out.shared);
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    println!("takeover {gap:?} after the dead holder's call (lease {lease:?})");
    assert!(
        gap >= lease - Duration::from_millis(200),
        "B called after {gap:?}, before the {lease:?} lease could expire"
    );
    assert_eq!(b.metrics.ai_lock_waits.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_releases_its_lock_for_the_waiters() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    fake.script([Behavior::Hang]);
    let s = CoordinationSettings {
        // Far longer than the test: only an explicit release frees it.
        lock_ttl: Duration::from_secs(120),
        max_concurrency: 1,
        deadline: Duration::from_secs(200),
        ..settings()
    };
    let a = node(gemini(&fake), s.clone(), Some(&redis));
    let b = node(gemini(&fake), s, Some(&redis));
    let ai = a.ai.clone();
    let leader = tokio::spawn(async move { ai.interpret("s", &request(COMMAND)).await });
    fake.wait_for_calls(1, Duration::from_secs(10)).await;
    let ai = b.ai.clone();
    let waiter = tokio::spawn(async move { ai.interpret("s", &request(COMMAND)).await });
    let lock_waits = b.metrics.ai_lock_waits.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock_waits.get() == 0 {
        assert!(Instant::now() < deadline, "B never waited for A's lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    leader.abort();
    let out = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter took over without waiting for the 120 s lease")
        .unwrap()
        .unwrap();
    assert_eq!(out.value.message.as_deref(), Some("reply #2"));
    assert_eq!(fake.call_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_shared_with_waiters_not_retried_by_each() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    fake.set_delay(Duration::from_millis(500));
    fake.set_default(Behavior::Status(400));
    let nodes: Vec<Node> = (0..2)
        .map(|_| node(gemini(&fake), settings(), Some(&redis)))
        .collect();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let ai = nodes[i % 2].ai.clone();
            tokio::spawn(async move { ai.interpret("s", &request(COMMAND)).await })
        })
        .collect();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(code(&e), ErrorCode::AiFailed, "{e}");
    }
    assert_eq!(fake.call_count(), 1);
    // A failure is not cached: the next request calls again.
    fake.set_delay(Duration::ZERO);
    fake.set_default(Behavior::Answer);
    let ok = nodes[0].ai.interpret("s", &request(COMMAND)).await.unwrap();
    assert!(!ok.cached && !ok.shared);
    assert_eq!(fake.call_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ttl_zero_disables_the_cache() {
    let redis = RedisServer::start();
    let fake = FakeAi::start().await;
    let s = CoordinationSettings {
        cache_ttl: Duration::ZERO,
        ..settings()
    };
    let a = node(gemini(&fake), s.clone(), Some(&redis));
    let b = node(gemini(&fake), s.clone(), Some(&redis));
    for (i, n) in [&a, &b, &a].iter().enumerate() {
        let o = n.ai.interpret("s", &request(COMMAND)).await.unwrap();
        assert!(!o.cached && !o.shared);
        assert_eq!(o.value.message, Some(format!("reply #{}", i + 1)));
    }
    assert_eq!(fake.call_count(), 3);
    // Standalone too.
    let c = node(gemini(&fake), s, None);
    c.ai.interpret("s", &request(COMMAND)).await.unwrap();
    c.ai.interpret("s", &request(COMMAND)).await.unwrap();
    assert_eq!(fake.call_count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_retry_delay_is_honoured() {
    let fake = FakeAi::start().await;
    fake.script([Behavior::RateLimited {
        retry_delay: Some("1s"),
    }]);
    let n = node(gemini(&fake), settings(), None);
    let out = n.ai.interpret("s", &request(COMMAND)).await.unwrap();
    assert_eq!(out.value.message.as_deref(), Some("reply #2"));
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    println!("Gemini retry after {gap:?} (RetryInfo.retryDelay 1s, backoff cap 20 ms)");
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_retry_after_is_honoured() {
    let fake = FakeAi::start().await;
    fake.script([Behavior::RateLimited {
        retry_delay: Some("1s"),
    }]);
    let n = node(openai(&fake, OPENAI_KEY), settings(), None);
    let out = n.ai.complete("s", "hello?", None).await.unwrap();
    assert_eq!(out.value, "answer #2");
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    println!("OpenAI retry after {gap:?} (Retry-After: 1)");
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_delay_beyond_the_deadline_fails_at_once() {
    let fake = FakeAi::start().await;
    fake.script([Behavior::RateLimited {
        retry_delay: Some("30s"),
    }]);
    let s = CoordinationSettings {
        deadline: Duration::from_secs(5),
        ..settings()
    };
    let n = node(gemini(&fake), s, None);
    let e = n.ai.interpret("s", &request(COMMAND)).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::AiRateLimited, "{e}");
    assert_eq!(fake.call_count(), 1, "no retry that cannot finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_and_recovers() {
    let fake = FakeAi::start().await;
    fake.set_default(Behavior::Status(500));
    let cooldown = Duration::from_millis(400);
    let s = CoordinationSettings {
        max_retries: 0,
        breaker_threshold: 3,
        breaker_cooldown: cooldown,
        cache_ttl: Duration::ZERO,
        ..settings()
    };
    let n = node(gemini(&fake), s, None);
    let ask = |i: usize| {
        let ai = n.ai.clone();
        async move { ai.interpret("s", &request(&format!("tell john {i}"))).await }
    };
    for i in 0..3 {
        let e = ask(i).await.unwrap_err();
        assert_eq!(code(&e), ErrorCode::AiUnavailable, "{e}");
    }
    assert_eq!(fake.call_count(), 3);
    assert_eq!(n.ai.breaker_state(), BreakerState::Open);
    // Open: refused at once, the provider is not called.
    let e = ask(3).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::AiUnavailable);
    assert!(e.to_string().contains("circuit breaker"), "{e}");
    assert_eq!(fake.call_count(), 3);
    // After the cooldown one probe goes through; it fails: open again.
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    assert!(ask(4).await.is_err());
    assert_eq!(fake.call_count(), 4);
    assert_eq!(n.ai.breaker_state(), BreakerState::Open);
    assert!(ask(5).await.is_err());
    assert_eq!(fake.call_count(), 4);
    // The provider recovers; the next probe closes the breaker.
    fake.set_default(Behavior::Answer);
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    assert!(ask(6).await.is_ok());
    assert_eq!(n.ai.breaker_state(), BreakerState::Closed);
    assert!(ask(7).await.is_ok());
    assert_eq!(fake.call_count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_clear_error_codes() {
    let truncated = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "{\"action\": \"send\", \"contact\": \"Jo"}]}, "finishReason": "MAX_TOKENS"}]});
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 3}});
    let per_day = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}});
    // (behaviour, expected code, expected upstream calls with max_retries 2)
    let cases = [
        (Behavior::Status(400), ErrorCode::AiFailed, 1),
        (Behavior::Status(401), ErrorCode::AiFailed, 1),
        (Behavior::Status(403), ErrorCode::AiFailed, 1),
        (Behavior::Status(404), ErrorCode::AiFailed, 1),
        (Behavior::Status(500), ErrorCode::AiUnavailable, 3),
        (Behavior::Status(503), ErrorCode::AiUnavailable, 3),
        (
            Behavior::RateLimited { retry_delay: None },
            ErrorCode::AiRateLimited,
            3,
        ),
        (Behavior::Raw(429, per_day), ErrorCode::AiRateLimited, 1),
        (Behavior::Raw(200, blocked), ErrorCode::AiFailed, 1),
        (Behavior::Raw(200, truncated), ErrorCode::AiFailed, 1),
        (
            Behavior::Raw(200, json!("not a response")),
            ErrorCode::AiFailed,
            1,
        ),
        (Behavior::Hang, ErrorCode::AiUnavailable, 3),
    ];
    let s = CoordinationSettings {
        attempt_timeout: Duration::from_millis(300),
        ..settings()
    };
    for (behavior, expected, calls) in cases {
        let fake = FakeAi::start().await;
        fake.set_default(behavior.clone());
        let n = node(gemini(&fake), s.clone(), None);
        let e = n.ai.interpret("s", &request(COMMAND)).await.unwrap_err();
        assert_eq!(code(&e), expected, "{behavior:?}: {e}");
        assert_eq!(fake.call_count(), calls, "{behavior:?}: {e}");
    }
    // A wrong key is a 400 from Gemini: reported, not retried.
    let fake = FakeAi::start().await;
    let n = node(gemini_with_key(&fake, "wrong"), s.clone(), None);
    let e = n.ai.interpret("s", &request(COMMAND)).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::AiFailed);
    assert!(e.to_string().contains("API key not valid"), "{e}");
    assert_eq!(fake.call_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_output_is_validated_not_trusted() {
    let fake = FakeAi::start().await;
    let call = |name: &str, args: Value| {
        json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": name, "args": args}}]}, "finishReason": "STOP"}]})
    };
    fake.script([
        Behavior::Raw(200, call("delete_account", json!({}))),
        Behavior::Raw(
            200,
            call(
                "send_message",
                json!({"contact": "Mallory", "message": "hi"}),
            ),
        ),
        Behavior::Raw(
            200,
            call("send_message", json!({"contact": "john", "message": "  "})),
        ),
        Behavior::Raw(
            200,
            call("get_history", json!({"contact": "alice", "limit": "5"})),
        ),
    ]);
    let s = CoordinationSettings {
        cache_ttl: Duration::ZERO,
        ..settings()
    };
    let n = node(gemini(&fake), s, None);
    let contacts = request(COMMAND).contacts;
    let mut codes = Vec::new();
    for i in 0..4 {
        let o =
            n.ai.interpret("s", &request(&format!("command {i}")))
                .await
                .unwrap();
        codes.push(
            validate(&o.value, &contacts, &mcp_hub::metrics::Metrics::new("test"))
                .map_err(|e| e.code),
        );
    }
    assert_eq!(codes[0], Err(ErrorCode::InvalidInterpretation));
    assert_eq!(codes[1], Err(ErrorCode::ContactNotFound));
    assert_eq!(codes[2], Err(ErrorCode::InvalidInterpretation));
    assert_eq!(
        codes[3],
        Ok(mcp_hub::protocol::WhatsAppCommand::GetHistory {
            contact: "Alice".into(),
            limit: Some(5)
        })
    );
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_requests_match_the_wire_format() {
    let fake = FakeAi::start().await;
    let n = node(gemini(&fake), settings(), None);
    let out = n.ai.interpret("s", &request(COMMAND)).await.unwrap();
    assert_eq!(out.value.action, "send");
    let text =
        n.ai.complete("s", "what is a hub?", Some(&json!({"b": [1], "a": "x"})))
            .await
            .unwrap();
    assert_eq!(text.value, "answer #2");
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    for c in &calls {
        assert_eq!(c.path, "/v1beta/models/gemini-2.5-flash:generateContent");
        assert_eq!(c.headers["x-goog-api-key"], GEMINI_KEY);
        assert!(
            c.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert!(
            !c.path.contains("key="),
            "the key travels in the header only"
        );
    }

    let body = &calls[0].body;
    assert_eq!(
        keys(body),
        ["contents", "systemInstruction", "toolConfig", "tools"]
    );
    let system = body["systemInstruction"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert!(system.contains("send_message"));
    assert_eq!(body["contents"].as_array().unwrap().len(), 1);
    assert_eq!(body["contents"][0]["role"], "user");
    assert_eq!(
        body["contents"][0]["parts"][0]["text"],
        "Contacts: [\"John\",\"Alice\"]\nLast contact: none\nCommand: \"send john a message saying hello\""
    );
    assert_eq!(
        body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    let decls = body["tools"][0]["functionDeclarations"].as_array().unwrap();
    let names: Vec<&str> = decls.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "send_message",
            "list_contacts",
            "get_history",
            "unknown_command"
        ]
    );
    for d in decls {
        assert!(d["description"].is_string());
        if let Some(p) = d.get("parameters") {
            assert_eq!(p["type"], "OBJECT");
            for prop in p["properties"].as_object().unwrap().values() {
                assert!(["STRING", "INTEGER"].contains(&prop["type"].as_str().unwrap()));
            }
        }
    }
    assert_eq!(
        decls[0]["parameters"]["required"],
        json!(["contact", "message"])
    );
    assert!(decls[1].get("parameters").is_none());
    assert_eq!(
        decls[2]["parameters"]["properties"]["limit"]["type"],
        "INTEGER"
    );

    let body = &calls[1].body;
    assert_eq!(keys(body), ["contents", "systemInstruction"]);
    assert_eq!(body["contents"][0]["role"], "user");
    assert_eq!(
        body["contents"][0]["parts"][0]["text"],
        "what is a hub?\n\nContext (JSON): {\"a\":\"x\",\"b\":[1]}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_requests_match_the_wire_format() {
    let fake = FakeAi::start().await;
    let n = node(openai(&fake, OPENAI_KEY), settings(), None);
    let out = n.ai.interpret("s", &request(COMMAND)).await.unwrap();
    // The fake sends the arguments as a JSON string, as OpenAI does.
    assert_eq!(out.value.contact.as_deref(), Some("John"));
    assert_eq!(out.value.message.as_deref(), Some("reply #1"));
    let text = n.ai.complete("s", "hi there", None).await.unwrap();
    assert_eq!(text.value, "answer #2");
    let calls = fake.calls();
    for c in &calls {
        assert_eq!(c.path, "/v1/chat/completions");
        assert_eq!(c.headers["authorization"], "Bearer sk-test-openai");
        assert!(
            c.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    let body = &calls[0].body;
    assert_eq!(keys(body), ["messages", "model", "tool_choice", "tools"]);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(body["messages"][0]["content"].is_string());
    assert_eq!(body["messages"][1]["role"], "user");
    assert!(
        body["messages"][1]["content"]
            .as_str()
            .unwrap()
            .ends_with("Command: \"send john a message saying hello\"")
    );
    let tools = body["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 4);
    for t in tools {
        assert_eq!(t["type"], "function");
        assert_eq!(keys(&t["function"]), ["description", "name", "parameters"]);
        assert_eq!(t["function"]["parameters"]["type"], "object");
        assert_eq!(t["function"]["parameters"]["additionalProperties"], false);
    }
    assert_eq!(tools[0]["function"]["name"], "send_message");
    assert_eq!(
        tools[0]["function"]["parameters"]["properties"]["message"]["type"],
        "string"
    );
    let body = &calls[1].body;
    assert_eq!(keys(body), ["messages", "model"]);
    assert_eq!(body["messages"][1]["content"], "hi there");

    // A local server (Ollama, llama.cpp) without a key: no Authorization.
    let local = FakeAi::start().await;
    local.openai_requires_key(false);
    let n = node(openai(&local, ""), settings(), None);
    n.ai.complete("s", "hi", None).await.unwrap();
    assert!(local.calls()[0].headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_leases_of_dead_holders_expire_while_live_ones_renew() {
    use mcp_hub::ai::cluster::RedisAi;
    let redis = RedisServer::start();
    let r = RedisAi::new(redis.pool(), PREFIX, Arc::new(Metrics::new("t")));
    let lease = Duration::from_millis(400);
    assert_eq!(r.quota_acquire("p", "dead", 0, 2, lease).await.unwrap(), 0);
    assert_eq!(r.quota_acquire("p", "live", 0, 2, lease).await.unwrap(), 0);
    assert_eq!(
        r.quota_acquire("p", "new", 0, 2, lease).await.unwrap(),
        -1,
        "both slots taken"
    );
    // "live" renews (keeping the key alive); "dead" does not.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(r.slot_renew("p", "live", lease).await.unwrap());
        if r.quota_acquire("p", "new", 0, 2, lease).await.unwrap() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead holder's slot never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slots = r.slots_key("p");
    let mut conn = redis.pool().get().await.unwrap();
    let mut holders: Vec<String> = redis::cmd("ZRANGE")
        .arg(&slots)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    holders.sort();
    assert_eq!(holders, ["live", "new"]);
    // A released slot is free at once; the window of a rate limit counts calls.
    r.slot_release("p", "new").await.unwrap();
    assert_eq!(r.quota_acquire("p", "again", 0, 2, lease).await.unwrap(), 0);
    assert_eq!(r.quota_acquire("q", "c1", 2, 0, lease).await.unwrap(), 0);
    assert_eq!(r.quota_acquire("q", "c2", 2, 0, lease).await.unwrap(), 0);
    let wait = r.quota_acquire("q", "c3", 2, 0, lease).await.unwrap();
    assert!(
        wait > 55_000 && wait <= 60_000,
        "the window frees in about a minute, not {wait} ms"
    );
}
