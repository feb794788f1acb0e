//! Contract tests of the AI quotas (`ai::quota::Quotas`): the same test
//! functions run against the standalone twin (`Quotas::local`: a semaphore
//! and a sliding window in this process) and the Redis twin
//! (`Quotas::redis`: the same limits in Lua scripts, on Redis's clock), so
//! the standalone and cluster limits cannot drift apart. Then what only
//! the Redis twin has: limits shared by every instance, and slot leases.
//! Each Redis case runs on its own private redis-server (killed when the
//! test ends, also on failure), or its own 3-master Redis Cluster with
//! `MCP_HUB_TEST_REDIS=cluster`.

use crate::support;

use std::time::{Duration, Instant};

use mcp_hub::ai::AiError;
use mcp_hub::ai::cluster::RedisAi;
use mcp_hub::ai::quota::{QuotaPermit, Quotas};
use mcp_hub::redis::RedisBackend;
use support::TestRedis;

const PREFIX: &str = "contract";
const PROVIDER: &str = "contract-ai";
const WAIT: Duration = Duration::from_secs(10);
/// How long a caller that must be refused is willing to wait.
const IMPATIENT: Duration = Duration::from_millis(100);
/// A Redis slot's lease when the test does not let it expire.
const LEASE: Duration = Duration::from_secs(30);
/// A sliding window short enough for a test to see it refill.
const SHORT_WINDOW: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------- fixtures

/// Makes quotas under test (`per_minute`, `max_concurrency`); two made
/// by one Redis fixture share their limits, as instances of one cluster.
struct QuotaFixture {
    backend: Option<RedisBackend>,
    _redis: Option<TestRedis>,
}

impl QuotaFixture {
    fn quotas(&self, per_minute: u32, max_concurrency: u32) -> Quotas {
        self.quotas_of(PROVIDER, per_minute, max_concurrency, LEASE)
    }

    fn quotas_of(
        &self,
        provider: &'static str,
        per_minute: u32,
        max_concurrency: u32,
        lease: Duration,
    ) -> Quotas {
        match &self.backend {
            None => Quotas::local(per_minute, max_concurrency),
            Some(backend) => Quotas::redis(
                RedisAi::over(backend.clone()),
                provider,
                per_minute,
                max_concurrency,
                lease,
            ),
        }
    }
}

fn memory_quotas() -> QuotaFixture {
    QuotaFixture {
        backend: None,
        _redis: None,
    }
}

fn redis_quotas() -> QuotaFixture {
    let redis = TestRedis::start();
    QuotaFixture {
        backend: Some(redis.backend(PREFIX, "inst-a")),
        _redis: Some(redis),
    }
}

fn impatient() -> Instant {
    Instant::now() + IMPATIENT
}

fn patient() -> Instant {
    Instant::now() + WAIT
}

fn granted(r: Result<QuotaPermit, AiError>) -> QuotaPermit {
    match r {
        Ok(permit) => permit,
        Err(e) => panic!("refused: {e:?}"),
    }
}

/// The refusal's message (`ai_rate_limited`, not an outage).
fn refused(r: Result<QuotaPermit, AiError>) -> String {
    match r {
        Ok(_) => panic!("granted, expected ai_rate_limited"),
        Err(AiError::RateLimited(why)) => why,
        Err(e) => panic!("expected ai_rate_limited, got {e:?}"),
    }
}

// ------------------------------------------------------ quota contract

/// At most `max_concurrency` calls at once: one more is refused once its
/// deadline passes; a dropped permit frees its slot for the next caller.
async fn concurrency_is_capped_and_freed_on_drop(f: QuotaFixture) {
    let q = f.quotas(0, 2);
    let a = granted(q.acquire(impatient()).await);
    let _b = granted(q.acquire(impatient()).await);
    let why = refused(q.acquire(impatient()).await);
    assert!(why.contains("slot"), "{why}");
    drop(a);
    // Freed (in the background for Redis): granted once it is.
    let _c = granted(q.acquire(patient()).await);
    refused(q.acquire(impatient()).await);
}

/// A caller waiting for a slot gets the one a holder frees, before its
/// deadline, and not before it is freed.
async fn a_waiting_caller_gets_the_freed_slot(f: QuotaFixture) {
    let q = f.quotas(0, 1);
    let held = granted(q.acquire(impatient()).await);
    let waiter = q.acquire(patient());
    tokio::pin!(waiter);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiter)
            .await
            .is_err(),
        "granted while the only slot was held"
    );
    let freed = Instant::now();
    drop(held);
    let _mine = granted(waiter.await);
    assert!(freed.elapsed() < WAIT, "well before the deadline");
}

/// At most `per_minute` calls in the window, taken by every attempt even
/// when its permit is dropped at once; the next is refused without waiting
/// when the window frees only after its deadline.
async fn the_rate_is_capped_and_refused_at_once(f: QuotaFixture) {
    let q = f.quotas(3, 0);
    for _ in 0..3 {
        drop(granted(q.acquire(impatient()).await));
    }
    let started = Instant::now();
    let why = refused(q.acquire(Instant::now() + Duration::from_secs(5)).await);
    assert!(why.contains("3 calls per minute"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} for a window that frees in a minute",
        started.elapsed()
    );
}

/// The window slides: once the oldest calls are older than the window, a
/// caller that waited is granted (not before).
async fn the_window_refills_as_its_calls_age(f: QuotaFixture) {
    let q = f.quotas(2, 0).with_window(SHORT_WINDOW);
    let started = Instant::now();
    granted(q.acquire(impatient()).await);
    granted(q.acquire(impatient()).await);
    refused(q.acquire(impatient()).await);
    granted(q.acquire(patient()).await);
    let waited = started.elapsed();
    // Redis's clock counts whole milliseconds: a little slack.
    assert!(
        waited + Duration::from_millis(20) >= SHORT_WINDOW,
        "granted after {waited:?}, before the window of {SHORT_WINDOW:?} moved"
    );
    assert!(waited < WAIT, "{waited:?}");
}

/// No limit set (0, 0): every call is granted at once, however many are
/// held.
async fn no_limits_grant_every_call(f: QuotaFixture) {
    let q = f.quotas(0, 0);
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(granted(q.acquire(impatient()).await));
    }
    assert_eq!(held.len(), 50);
}

/// Both limits at once: a call refused by the rate limit holds no slot.
async fn a_call_refused_by_the_rate_holds_no_slot(f: QuotaFixture) {
    let q = f.quotas(1, 1).with_window(SHORT_WINDOW);
    drop(granted(q.acquire(impatient()).await));
    let why = refused(q.acquire(impatient()).await);
    assert!(why.contains("per minute"), "{why}");
    // The window refills; the slot was not kept by the refused call.
    let _next = granted(q.acquire(patient()).await);
    let why = refused(q.acquire(impatient()).await);
    assert!(why.contains("slot") || why.contains("per minute"), "{why}");
}

macro_rules! quota_contract {
    ($($name:ident),* $(,)?) => {
        mod memory_quotas {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::memory_quotas()).await;
                }
            )*
        }
        mod redis_quotas {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::redis_quotas()).await;
                }
            )*
        }
    };
}

quota_contract!(
    concurrency_is_capped_and_freed_on_drop,
    a_waiting_caller_gets_the_freed_slot,
    the_rate_is_capped_and_refused_at_once,
    the_window_refills_as_its_calls_age,
    no_limits_grant_every_call,
    a_call_refused_by_the_rate_holds_no_slot,
);

// ------------------------------------------------- the Redis twin only

/// Redis quotas hold for the whole cluster: two instances share the slots
/// and the window (of one provider; another provider has its own).
#[tokio::test]
async fn redis_quotas_hold_for_every_instance() {
    let f = redis_quotas();
    let (a, b) = (
        f.quotas_of("slots", 0, 1, LEASE),
        f.quotas_of("slots", 0, 1, LEASE),
    );
    let held = granted(a.acquire(impatient()).await);
    let why = refused(b.acquire(impatient()).await);
    assert!(why.contains("cluster-wide"), "{why}");
    drop(held);
    let _b = granted(b.acquire(patient()).await);

    let (a, b) = (
        f.quotas_of("rate", 2, 0, LEASE),
        f.quotas_of("rate", 2, 0, LEASE),
    );
    granted(a.acquire(impatient()).await);
    granted(b.acquire(impatient()).await);
    refused(a.acquire(impatient()).await);
    refused(b.acquire(impatient()).await);
    // Another provider is not limited by these.
    let other = f.quotas_of("other", 2, 1, LEASE);
    granted(other.acquire(impatient()).await);
}

/// A holder that dies without freeing its slot (its permit never dropped)
/// loses it when the lease runs out.
#[tokio::test]
async fn a_dead_holders_redis_slot_frees_when_its_lease_ends() {
    let f = redis_quotas();
    let lease = Duration::from_secs(1);
    let q = f.quotas_of(PROVIDER, 0, 1, lease);
    let taken = Instant::now();
    std::mem::forget(granted(q.acquire(impatient()).await));
    refused(q.acquire(impatient()).await);
    granted(q.acquire(patient()).await);
    assert!(
        taken.elapsed() + Duration::from_millis(20) >= lease,
        "the slot freed after {:?}, before its lease of {lease:?}",
        taken.elapsed()
    );
}

/// A holder whose call runs keeps its slot past the lease (`keep_alive`
/// renews it); the slot frees when the permit is dropped.
#[tokio::test]
async fn keep_alive_holds_a_redis_slot_past_its_lease() {
    let f = redis_quotas();
    let lease = Duration::from_millis(300);
    let q = f.quotas_of(PROVIDER, 0, 1, lease);
    let held = granted(q.acquire(impatient()).await);
    tokio::select! {
        _ = held.keep_alive() => panic!("the slot was lost while renewed"),
        r = q.acquire(Instant::now() + lease * 5) => {
            refused(r);
        }
    }
    drop(held);
    granted(q.acquire(patient()).await);
}
