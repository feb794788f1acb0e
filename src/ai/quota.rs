//! Upstream quotas: at most `AI_RATE_LIMIT_PER_MIN` calls in any minute and
//! `AI_MAX_CONCURRENCY` calls at once per provider. In cluster mode they
//! hold for the whole cluster (Lua scripts in Redis, see [`super::cluster`]);
//! standalone, for the process. Every upstream attempt (retries included)
//! takes quota. A caller waits for room until its queue deadline, then gets
//! `ai_rate_limited`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AiError;
use super::cluster::{RedisAi, spawn_cleanup};

/// The sliding window of the per-minute limit (shorter only in tests).
const WINDOW: Duration = Duration::from_secs(60);
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);

pub enum Quotas {
    Local(LocalQuotas),
    Redis(RedisQuotas),
}

pub struct LocalQuotas {
    per_minute: u32,
    window: Duration,
    slots: Option<Arc<Semaphore>>,
    /// When the calls still in the window started, oldest first.
    calls: Mutex<VecDeque<Instant>>,
}

pub struct RedisQuotas {
    redis: RedisAi,
    provider: &'static str,
    per_minute: u32,
    window: Duration,
    cap: u32,
    lease: Duration,
}

/// One upstream call's quota; the concurrency slot is freed on drop.
pub enum QuotaPermit {
    Local(#[allow(dead_code)] Option<OwnedSemaphorePermit>),
    Redis(RedisSlot),
}

pub struct RedisSlot {
    redis: RedisAi,
    provider: &'static str,
    token: String,
    lease: Duration,
    /// False when no concurrency cap applies (nothing to renew or free).
    held: bool,
}

impl Quotas {
    pub fn local(per_minute: u32, max_concurrency: u32) -> Self {
        Quotas::Local(LocalQuotas {
            per_minute,
            window: WINDOW,
            slots: (max_concurrency > 0)
                .then(|| Arc::new(Semaphore::new(max_concurrency as usize))),
            calls: Mutex::new(VecDeque::new()),
        })
    }

    pub fn redis(
        redis: RedisAi,
        provider: &'static str,
        per_minute: u32,
        max_concurrency: u32,
        lease: Duration,
    ) -> Self {
        Quotas::Redis(RedisQuotas {
            redis,
            provider,
            per_minute,
            window: WINDOW,
            cap: max_concurrency,
            lease,
        })
    }

    /// The same quotas with `per_minute` calls allowed in any `window`
    /// instead of any minute (a test's short window; at least 1 ms).
    pub fn with_window(mut self, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(1));
        match &mut self {
            Quotas::Local(q) => q.window = window,
            Quotas::Redis(q) => q.window = window,
        }
        self
    }

    /// Waits for room until `until`. `Err(RateLimited)` when there was none
    /// in time; `Err(Unavailable)` when Redis failed.
    pub async fn acquire(&self, until: Instant) -> Result<QuotaPermit, AiError> {
        match self {
            Quotas::Local(q) => q.acquire(until).await.map(QuotaPermit::Local),
            Quotas::Redis(q) => q.acquire(until).await.map(QuotaPermit::Redis),
        }
    }
}

fn over_quota(what: &str) -> AiError {
    AiError::RateLimited(format!("too many AI requests: {what}; try again shortly"))
}

impl LocalQuotas {
    async fn acquire(&self, until: Instant) -> Result<Option<OwnedSemaphorePermit>, AiError> {
        let slot = match &self.slots {
            None => None,
            Some(s) => match tokio::time::timeout_at(until.into(), s.clone().acquire_owned()).await
            {
                Ok(Ok(permit)) => Some(permit),
                // Timed out (a closed semaphore cannot happen: never closed).
                _ => return Err(over_quota("every concurrent AI slot stayed busy")),
            },
        };
        if self.per_minute == 0 {
            return Ok(slot);
        }
        loop {
            let now = Instant::now();
            let wait = {
                let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
                while calls
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    calls.pop_front();
                }
                if calls.len() < self.per_minute as usize {
                    calls.push_back(now);
                    None
                } else {
                    calls
                        .front()
                        .map(|t| self.window.saturating_sub(now.duration_since(*t)))
                }
            };
            match wait {
                None => return Ok(slot),
                Some(w) if now + w > until => {
                    return Err(over_quota(&format!(
                        "the limit of {} calls per minute is reached",
                        self.per_minute
                    )));
                }
                Some(w) => tokio::time::sleep(w.max(Duration::from_millis(1))).await,
            }
        }
    }
}

impl RedisQuotas {
    async fn acquire(&self, until: Instant) -> Result<RedisSlot, AiError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let held = self.cap > 0;
        if self.per_minute == 0 && !held {
            return Ok(RedisSlot {
                redis: self.redis.clone(),
                provider: self.provider,
                token,
                lease: self.lease,
                held,
            });
        }
        let mut poll = POLL_MIN;
        loop {
            let answer = self
                .redis
                .quota_acquire_in(
                    self.provider,
                    &token,
                    self.per_minute,
                    self.window,
                    self.cap,
                    self.lease,
                )
                .await?;
            let now = Instant::now();
            let (wait, why) = match answer {
                0 => {
                    return Ok(RedisSlot {
                        redis: self.redis.clone(),
                        provider: self.provider,
                        token,
                        lease: self.lease,
                        held,
                    });
                }
                ms if ms > 0 => (
                    Duration::from_millis(ms as u64),
                    format!(
                        "the cluster-wide limit of {} calls per minute is reached",
                        self.per_minute
                    ),
                ),
                _ => {
                    let w = poll;
                    poll = (poll * 2).min(POLL_MAX);
                    (
                        w,
                        format!("all {} cluster-wide AI slots stayed busy", self.cap),
                    )
                }
            };
            if now + wait > until {
                // The window frees no sooner than `wait`: no point waiting.
                if answer > 0 || now >= until {
                    return Err(over_quota(&why));
                }
                tokio::time::sleep_until(until.into()).await;
                continue;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl QuotaPermit {
    /// Keeps a Redis slot's lease alive while the call runs; never returns
    /// while the slot is held.
    pub async fn keep_alive(&self) {
        match self {
            QuotaPermit::Redis(slot) if slot.held => loop {
                tokio::time::sleep(slot.lease / 3).await;
                match slot
                    .redis
                    .slot_renew(slot.provider, &slot.token, slot.lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("AI concurrency slot lost (lease expired)");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "renewing an AI slot failed; retrying"),
                }
            },
            _ => std::future::pending().await,
        }
    }
}

impl Drop for RedisSlot {
    fn drop(&mut self) {
        if self.held {
            let redis = self.redis.clone();
            let provider = self.provider;
            let token = std::mem::take(&mut self.token);
            spawn_cleanup(async move {
                let _ = redis.slot_release(provider, &token).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_concurrency_and_rate() {
        let q = Quotas::local(0, 2);
        let soon = || Instant::now() + Duration::from_millis(30);
        let a = q.acquire(soon()).await.unwrap();
        let _b = q.acquire(soon()).await.unwrap();
        assert!(matches!(
            q.acquire(soon()).await,
            Err(AiError::RateLimited(_))
        ));
        drop(a);
        assert!(q.acquire(soon()).await.is_ok());

        let q = Quotas::local(3, 0);
        for _ in 0..3 {
            q.acquire(soon()).await.unwrap();
        }
        // The window frees in a minute: refused at once, not after waiting.
        let started = Instant::now();
        let far = Instant::now() + Duration::from_secs(30);
        assert!(matches!(q.acquire(far).await, Err(AiError::RateLimited(_))));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
