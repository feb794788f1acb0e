//! Sits between the hub and the AI provider.
//!
//! * **Single flight.** Identical requests (same session, provider, model,
//!   normalized prompt and context; SHA-256 of all of it) share one upstream
//!   call. In-process, the first caller leads and the others await the same
//!   shared future. In cluster mode the leader also takes the Redis lock
//!   `{prefix}:ai:lock:{hash}` (`SET NX PX`, renewed while the call runs);
//!   leaders on other instances wait for the answer in
//!   `{prefix}:ai:result:{hash}` (polling with backoff) or for the lock to
//!   be free, then take over. A leader that dies stops renewing; its lease
//!   expires and a waiter takes over.
//! * **Cache.** Answers stay for `AI_CACHE_TTL_MS` (in Redis in cluster mode).
//! * **Quotas, retries, breaker.** Every upstream attempt takes quota
//!   ([`super::quota`]), is bounded by `AI_TIMEOUT_MS`, and is retried with
//!   exponential backoff and full jitter (at least the provider's retry
//!   delay) on 429/5xx/timeouts, within `AI_DEADLINE_MS`; the breaker
//!   ([`super::breaker`]) refuses at once after repeated outages.
//!
//! `AiOutcome.cached` says the answer came from the cache; `.shared` that
//! it came from an upstream call made for another identical request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::breaker::Breaker;
use super::cluster::{Entry, LockGuard, RedisAi};
use super::quota::Quotas;
use super::settings::CoordinationSettings;
use super::{
    AiError, AiProvider, InterpretRequest, Interpretation, ProviderError, ProviderErrorKind,
    RedisCoordination,
};
use crate::metrics::Metrics;

/// Answers kept in a standalone hub's cache at most.
const LOCAL_CACHE_MAX: usize = 10_000;
/// Waiting for another instance's call: first poll, and the cap.
const WAIT_POLL_MIN: Duration = Duration::from_millis(10);
const WAIT_POLL_MAX: Duration = Duration::from_millis(200);
/// Bumped when the meaning of a stored answer changes.
const KEY_VERSION: &str = "ai-v1";

/// An answer plus how it was obtained.
#[derive(Debug, Clone)]
pub struct AiOutcome<T> {
    pub value: T,
    pub cached: bool,
    pub shared: bool,
}

#[derive(Debug, Clone)]
struct Answer {
    value: Value,
    cached: bool,
    shared: bool,
}

type FlightResult = Result<Answer, AiError>;
type Flight = Shared<BoxFuture<'static, FlightResult>>;
/// Makes one upstream attempt (called once per attempt).
type Call = Arc<dyn Fn() -> BoxFuture<'static, Result<Value, ProviderError>> + Send + Sync>;

struct FlightEntry {
    id: u64,
    flight: WeakShared<BoxFuture<'static, FlightResult>>,
}

enum Store {
    Local(Mutex<HashMap<String, (Instant, Value)>>),
    Redis(RedisAi),
}

struct Inner {
    provider: Arc<dyn AiProvider>,
    metrics: Arc<Metrics>,
    settings: CoordinationSettings,
    breaker: Arc<Breaker>,
    quotas: Quotas,
    store: Store,
    flights: Mutex<HashMap<String, FlightEntry>>,
    next_flight: AtomicU64,
}

pub struct AiCoordinator {
    inner: Arc<Inner>,
}

impl AiCoordinator {
    /// Standalone, with the default settings.
    pub fn new(provider: Arc<dyn AiProvider>, metrics: Arc<Metrics>) -> Self {
        Self::with_settings(provider, metrics, CoordinationSettings::default(), None)
    }

    /// `redis` set: single flight, cache and quotas hold cluster-wide.
    pub fn with_settings(
        provider: Arc<dyn AiProvider>,
        metrics: Arc<Metrics>,
        settings: CoordinationSettings,
        redis: Option<RedisCoordination>,
    ) -> Self {
        let (store, quotas) = match redis {
            None => (
                Store::Local(Mutex::new(HashMap::new())),
                Quotas::local(settings.rate_limit_per_min, settings.max_concurrency),
            ),
            Some(r) => {
                let redis = RedisAi::over(r.backend);
                let quotas = Quotas::redis(
                    redis.clone(),
                    provider.name(),
                    settings.rate_limit_per_min,
                    settings.max_concurrency,
                    settings.lock_ttl,
                );
                (Store::Redis(redis), quotas)
            }
        };
        AiCoordinator {
            inner: Arc::new(Inner {
                breaker: Breaker::new(settings.breaker_threshold, settings.breaker_cooldown),
                provider,
                metrics,
                settings,
                quotas,
                store,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
            }),
        }
    }

    pub fn provider_name(&self) -> &'static str {
        self.inner.provider.name()
    }

    pub fn breaker_state(&self) -> super::breaker::BreakerState {
        self.inner.breaker.state()
    }

    pub async fn interpret(
        &self,
        session: &str,
        request: &InterpretRequest,
    ) -> Result<AiOutcome<Interpretation>, AiError> {
        let provider = self.inner.provider.clone();
        if !provider.is_remote() {
            let result = provider
                .interpret(request)
                .await
                .map_err(ProviderError::into_ai_error);
            return self.local_outcome(result);
        }
        let mut contacts: Vec<&str> = request.contacts.iter().map(|c| c.trim()).collect();
        contacts.sort_unstable();
        contacts.dedup();
        let key = self.key(
            "interpret",
            session,
            json!({
                "command": normalize(&request.command),
                "contacts": contacts,
                "last_contact": request.last_contact.as_deref().map(normalize),
            }),
        );
        let request = request.clone();
        let call: Call = Arc::new(move || {
            let provider = provider.clone();
            let request = request.clone();
            async move { provider.interpret(&request).await.map(to_json) }.boxed()
        });
        self.run(key, call).await
    }

    pub async fn complete(
        &self,
        session: &str,
        prompt: &str,
        context: Option<&Value>,
    ) -> Result<AiOutcome<String>, AiError> {
        let provider = self.inner.provider.clone();
        if !provider.is_remote() {
            let result = provider
                .complete(prompt, context)
                .await
                .map_err(ProviderError::into_ai_error);
            return self.local_outcome(result);
        }
        // serde_json's maps are sorted: the context's text is canonical.
        let key = self.key(
            "complete",
            session,
            json!({ "prompt": normalize(prompt), "context": context }),
        );
        let prompt = prompt.to_string();
        let context = context.cloned();
        let call: Call = Arc::new(move || {
            let provider = provider.clone();
            let prompt = prompt.clone();
            let context = context.clone();
            async move {
                provider
                    .complete(&prompt, context.as_ref())
                    .await
                    .map(Value::String)
            }
            .boxed()
        });
        self.run(key, call).await
    }

    fn local_outcome<T>(&self, result: Result<T, AiError>) -> Result<AiOutcome<T>, AiError> {
        self.count(&result);
        result.map(|value| AiOutcome {
            value,
            cached: false,
            shared: false,
        })
    }

    fn count<T>(&self, result: &Result<T, AiError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(AiError::RateLimited(_)) => "rate_limited",
            Err(AiError::Unavailable(_)) => "unavailable",
            Err(AiError::Failed(_)) => "failed",
        };
        self.inner
            .metrics
            .ai_requests
            .with_label_values(&[self.inner.provider.name(), outcome])
            .inc();
    }

    /// SHA-256 (hex) of everything an answer depends on.
    fn key(&self, kind: &str, session: &str, request: Value) -> String {
        let material = json!([
            KEY_VERSION,
            self.inner.provider.name(),
            self.inner.provider.model(),
            kind,
            session,
            request,
        ]);
        let digest = ring::digest::digest(&ring::digest::SHA256, material.to_string().as_bytes());
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Joins the identical flight in progress in this process, or leads one.
    async fn run<T: DeserializeOwned>(
        &self,
        key: String,
        call: Call,
    ) -> Result<AiOutcome<T>, AiError> {
        let inner = &self.inner;
        let (flight, joined) = {
            let mut flights = inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&key).and_then(|f| f.flight.upgrade()) {
                Some(flight) => (flight, true),
                None => {
                    let id = inner.next_flight.fetch_add(1, Ordering::Relaxed);
                    let flight: Flight =
                        lead(inner.clone(), key.clone(), id, call).boxed().shared();
                    if let Some(weak) = flight.downgrade() {
                        flights.insert(key, FlightEntry { id, flight: weak });
                    }
                    (flight, false)
                }
            }
        };
        if joined {
            inner.metrics.ai_singleflight_joins.inc();
        }
        let result = flight.await.and_then(|answer| {
            let value = serde_json::from_value::<T>(answer.value).map_err(|e| {
                AiError::Failed(format!("the stored AI answer has an unexpected shape: {e}"))
            })?;
            Ok(if joined {
                // This caller did not start anything: the leader's answer
                // came from the cache, or from the call made for it.
                AiOutcome {
                    value,
                    cached: answer.cached,
                    shared: !answer.cached,
                }
            } else {
                AiOutcome {
                    value,
                    cached: answer.cached,
                    shared: answer.shared,
                }
            })
        });
        self.count(&result);
        result
    }
}

fn to_json<T: Serialize>(value: T) -> Value {
    // Interpretation and String always serialize.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Whitespace-insensitive form of a prompt, for the key only (the
/// provider gets the text as typed).
fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Removes a flight from the map when it ends or is abandoned.
struct FlightCleanup {
    inner: Arc<Inner>,
    key: String,
    id: u64,
}

impl Drop for FlightCleanup {
    fn drop(&mut self) {
        let mut flights = self
            .inner
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// The leader's work: cache, then (cluster) lock, then the upstream call.
async fn lead(inner: Arc<Inner>, key: String, id: u64, call: Call) -> FlightResult {
    let _cleanup = FlightCleanup {
        inner: inner.clone(),
        key: key.clone(),
        id,
    };
    match &inner.store {
        Store::Local(cache) => lead_local(&inner, cache, &key, &call).await,
        Store::Redis(redis) => lead_cluster(&inner, redis, &key, &call).await,
    }
}

async fn lead_local(
    inner: &Inner,
    cache: &Mutex<HashMap<String, (Instant, Value)>>,
    key: &str,
    call: &Call,
) -> FlightResult {
    let ttl = inner.settings.cache_ttl;
    if !ttl.is_zero() {
        let hit = {
            let cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache
                .get(key)
                .filter(|(expires, _)| *expires > Instant::now())
                .map(|(_, v)| v.clone())
        };
        if let Some(value) = hit {
            inner.metrics.ai_cache_hits.inc();
            return Ok(Answer {
                value,
                cached: true,
                shared: false,
            });
        }
    }
    let value = call_upstream(inner, call).await?;
    if !ttl.is_zero() {
        let now = Instant::now();
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= LOCAL_CACHE_MAX {
            cache.retain(|_, (expires, _)| *expires > now);
        }
        if cache.len() >= LOCAL_CACHE_MAX
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (expires, _))| *expires)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(key.to_string(), (now + ttl, value.clone()));
    }
    Ok(Answer {
        value,
        cached: false,
        shared: false,
    })
}

async fn lead_cluster(inner: &Inner, redis: &RedisAi, hash: &str, call: &Call) -> FlightResult {
    let s = &inner.settings;
    let deadline = Instant::now() + s.deadline;
    let caching = !s.cache_ttl.is_zero();
    let lock_key = redis.lock_key(hash);
    let result_key = redis.result_key(hash);
    let from_entry = |entry: Entry, cached: bool, shared: bool| {
        entry.into_result().map(|value| Answer {
            value,
            cached,
            shared,
        })
    };
    if caching && let Some(Entry::Ok(value)) = redis.entry(&result_key).await? {
        inner.metrics.ai_cache_hits.inc();
        return from_entry(Entry::Ok(value), true, false);
    }
    // Set once this caller has seen another holder: from then on any answer
    // written for this hash (even an error) is the one it waited for.
    let mut waited = false;
    loop {
        let token = uuid::Uuid::new_v4().simple().to_string();
        if redis.try_lock(&lock_key, &token, s.lock_ttl).await? {
            let lock = LockGuard::new(redis.clone(), lock_key.clone(), token);
            match redis.entry(&result_key).await? {
                // The holder we waited for finished between two polls.
                Some(entry) if waited => {
                    lock.release().await;
                    inner.metrics.ai_singleflight_joins.inc();
                    return from_entry(entry, false, true);
                }
                Some(Entry::Ok(value)) if caching => {
                    lock.release().await;
                    inner.metrics.ai_cache_hits.inc();
                    return from_entry(Entry::Ok(value), true, false);
                }
                // A stale answer (an error, or caching is off): gone, so
                // that waiters of this call cannot mistake it for ours.
                Some(_) => redis.forget(&result_key).await?,
                None => {}
            }
            let result =
                keep_alive_while(lock.keep_alive(s.lock_ttl), call_upstream(inner, call)).await;
            let ttl = match &result {
                Ok(_) if caching => s.cache_ttl,
                // Long enough for every waiter's next poll.
                _ => s.lock_ttl,
            };
            lock.finish(&result_key, &Entry::from_result(&result), ttl)
                .await;
            return result.map(|value| Answer {
                value,
                cached: false,
                shared: false,
            });
        }
        if !waited {
            waited = true;
            inner.metrics.ai_lock_waits.inc();
        }
        let mut poll = WAIT_POLL_MIN;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(AiError::Unavailable(format!(
                    "no answer within {} ms from the identical AI request in progress on another instance",
                    s.deadline.as_millis()
                )));
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(WAIT_POLL_MAX);
            let (entry, locked) = redis.poll(&result_key, &lock_key).await?;
            if let Some(entry) = entry {
                inner.metrics.ai_singleflight_joins.inc();
                return from_entry(entry, false, true);
            }
            if !locked {
                // The holder gave up or died (lease expired): take over.
                break;
            }
        }
    }
}

/// Runs `work` while `keep_alive` renews leases; if keep-alive ends (the
/// lease was lost), the work still finishes.
async fn keep_alive_while<T>(
    keep_alive: impl Future<Output = ()>,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    tokio::select! {
        biased;
        out = &mut work => out,
        () = keep_alive => work.await,
    }
}

/// Upstream attempts with quotas, timeouts, retries and the breaker.
async fn call_upstream(inner: &Inner, call: &Call) -> Result<Value, AiError> {
    let s = &inner.settings;
    let provider = inner.provider.name();
    let deadline = Instant::now() + s.deadline;
    let mut attempt: u32 = 0;
    let mut ceilings = retry_ceilings(s);
    loop {
        let permit = inner.breaker.admit().map_err(|refused| {
            AiError::Unavailable(format!(
                "{provider} is failing; not calling it for {} ms (circuit breaker open)",
                refused.retry_in.as_millis()
            ))
        })?;
        let queue_until = (Instant::now() + s.queue_timeout).min(deadline);
        let slot = match inner.quotas.acquire(queue_until).await {
            Ok(slot) => slot,
            Err(e) => {
                if matches!(e, AiError::RateLimited(_)) {
                    inner.metrics.ai_rate_limited.inc();
                }
                return Err(e);
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(AiError::Unavailable(format!(
                "no answer from {provider} within {} ms",
                s.deadline.as_millis()
            )));
        }
        let limit = s.attempt_timeout.min(deadline - now);
        let started = Instant::now();
        let result = tokio::time::timeout(limit, keep_alive_while(slot.keep_alive(), call())).await;
        drop(slot);
        inner
            .metrics
            .ai_upstream_duration
            .with_label_values(&[provider])
            .observe(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(value)) => {
                permit.success();
                return Ok(value);
            }
            Ok(Err(e)) => e,
            Err(_) => ProviderError::new(
                ProviderErrorKind::Unavailable,
                format!("{provider} did not answer within {} ms", limit.as_millis()),
            ),
        };
        if error.kind == ProviderErrorKind::Unavailable {
            permit.failure();
        } else {
            permit.success();
        }
        let attempts = attempt + 1;
        if !error.retryable() {
            tracing::info!(provider, error = %error, "AI call failed (not retried)");
            return Err(error.into_ai_error());
        }
        if attempt >= s.max_retries {
            tracing::warn!(provider, attempts, error = %error, "AI call failed; no retries left");
            return Err(with_attempts(error, attempts).into_ai_error());
        }
        let ceiling = ceilings.next().unwrap_or(s.retry_max);
        let delay = full_jitter(ceiling).max(error.retry_after.unwrap_or_default());
        if Instant::now() + delay >= deadline {
            tracing::warn!(provider, attempts, delay_ms = delay.as_millis() as u64, error = %error, "AI call failed; the next retry would miss the deadline");
            return Err(with_attempts(error, attempts).into_ai_error());
        }
        tracing::info!(provider, attempt = attempts, delay_ms = delay.as_millis() as u64, error = %error, "AI call failed; retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

fn with_attempts(mut error: ProviderError, attempts: u32) -> ProviderError {
    if attempts > 1 {
        error.message = format!("{} (after {attempts} attempts)", error.message);
    }
    error
}

/// The capped exponential schedule of retry ceilings: base, 2·base, ...
/// up to max, for as many retries as the loop allows.
fn retry_ceilings(s: &CoordinationSettings) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::default()
        .with_min_delay(s.retry_base)
        .with_max_delay(s.retry_max)
        .without_max_times()
        .build()
}

/// Full jitter (uniform in [0, ceiling]): concurrent callers that failed
/// together spread their retries instead of retrying in lockstep.
fn full_jitter(ceiling: Duration) -> Duration {
    let ms = ceiling.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicUsize;

    /// Answers after a delay; fails the first `failures` calls with `kind`.
    struct Scripted {
        calls: AtomicUsize,
        delay: Duration,
        failures: usize,
        kind: ProviderErrorKind,
    }

    #[async_trait]
    impl AiProvider for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }

        async fn interpret(
            &self,
            request: &InterpretRequest,
        ) -> Result<Interpretation, ProviderError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if n < self.failures {
                return Err(ProviderError::new(self.kind, format!("failure {n}")));
            }
            Ok(Interpretation {
                action: "send".into(),
                contact: Some("John".into()),
                message: Some(request.command.clone()),
                ..Default::default()
            })
        }

        async fn complete(&self, prompt: &str, _: Option<&Value>) -> Result<String, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(format!("echo {prompt}"))
        }
    }

    fn scripted(delay_ms: u64, failures: usize, kind: ProviderErrorKind) -> Arc<Scripted> {
        Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
            failures,
            kind,
        })
    }

    fn fast_settings() -> CoordinationSettings {
        CoordinationSettings {
            retry_base: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            ..CoordinationSettings::default()
        }
    }

    fn request(command: &str) -> InterpretRequest {
        InterpretRequest {
            command: command.into(),
            contacts: vec!["John".into()],
            last_contact: None,
        }
    }

    #[tokio::test]
    async fn in_process_single_flight_and_cache() {
        let p = scripted(50, 0, ProviderErrorKind::Unavailable);
        let c = Arc::new(AiCoordinator::with_settings(
            p.clone(),
            Arc::new(Metrics::new("t")),
            fast_settings(),
            None,
        ));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let c = c.clone();
                // Whitespace differences are the same request.
                let cmd = if i % 2 == 0 { "say  hi" } else { " say hi " };
                tokio::spawn(async move { c.interpret("s", &request(cmd)).await })
            })
            .collect();
        let mut fresh = 0;
        for t in tasks {
            let o = t.await.unwrap().unwrap();
            assert!(!o.cached);
            if !o.shared {
                fresh += 1;
            }
        }
        assert_eq!(fresh, 1, "exactly one caller started the call");
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
        let again = c.interpret("s", &request("say hi")).await.unwrap();
        assert!(again.cached && !again.shared);
        // Another session is another request.
        c.interpret("other", &request("say hi")).await.unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
        assert!(c.inner.flights.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn retries_then_gives_a_clear_error() {
        let p = scripted(0, 2, ProviderErrorKind::Unavailable);
        let c = AiCoordinator::with_settings(
            p.clone(),
            Arc::new(Metrics::new("t")),
            fast_settings(),
            None,
        );
        let o = c.interpret("s", &request("x")).await.unwrap();
        assert_eq!(o.value.message.as_deref(), Some("x"));
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);

        let p = scripted(0, 100, ProviderErrorKind::Rejected);
        let c = AiCoordinator::with_settings(
            p.clone(),
            Arc::new(Metrics::new("t")),
            fast_settings(),
            None,
        );
        let e = c.interpret("s", &request("x")).await.unwrap_err();
        assert!(matches!(e, AiError::Failed(_)), "{e:?}");
        assert_eq!(p.calls.load(Ordering::SeqCst), 1, "4xx is never retried");

        let p = scripted(0, 100, ProviderErrorKind::RateLimited);
        let c = AiCoordinator::with_settings(
            p.clone(),
            Arc::new(Metrics::new("t")),
            fast_settings(),
            None,
        );
        let e = c.interpret("s", &request("x")).await.unwrap_err();
        assert!(matches!(e, AiError::RateLimited(_)), "{e:?}");
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn attempt_timeout_is_an_error_not_a_hang() {
        let p = scripted(5_000, 0, ProviderErrorKind::Unavailable);
        let settings = CoordinationSettings {
            attempt_timeout: Duration::from_millis(50),
            max_retries: 1,
            ..fast_settings()
        };
        let c =
            AiCoordinator::with_settings(p.clone(), Arc::new(Metrics::new("t")), settings, None);
        let e = c.complete("s", "x", None).await.unwrap_err();
        assert!(
            matches!(e, AiError::Unavailable(ref m) if m.contains("did not answer")),
            "{e:?}"
        );
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn backoff_is_bounded() {
        let s = CoordinationSettings {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            ..CoordinationSettings::default()
        };
        let ceilings: Vec<Duration> = retry_ceilings(&s).take(8).collect();
        // backon computes in f32: compare whole milliseconds.
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms[..5], [100, 200, 400, 800, 1000]);
        assert_eq!(ms[7], 1000);
        for c in ceilings {
            assert!(full_jitter(c) <= c);
        }
    }
}
