//! Circuit breaker in front of the upstream provider (one per instance).
//!
//! Closed: calls go through; `threshold` consecutive failures (5xx,
//! transport errors, timeouts) open it. Open: every call is refused at once
//! (`ai_unavailable`) for `cooldown`. Then half-open: exactly one probe goes
//! through; its success closes the breaker, its failure opens it again.
//! Any answer from the provider other than an outage (including a 429 or a
//! 400) proves it is reachable and counts as a success.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What callers see; for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Refusal: the breaker is open (or a probe is already under way).
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// Time until a probe may go through (zero while a probe runs).
    pub retry_in: Duration,
}

impl Breaker {
    /// `threshold` 0 disables the breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Arc<Breaker> {
        Arc::new(Breaker {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make one upstream call.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refused> {
        let mut probe = false;
        if self.threshold > 0 {
            let mut state = self.lock();
            match *state {
                State::Closed { .. } => {}
                State::Open { until } => {
                    let now = Instant::now();
                    if now < until {
                        return Err(Refused {
                            retry_in: until - now,
                        });
                    }
                    *state = State::HalfOpen { probing: true };
                    probe = true;
                }
                State::HalfOpen { probing: true } => {
                    return Err(Refused {
                        retry_in: Duration::ZERO,
                    });
                }
                State::HalfOpen { probing: false } => {
                    *state = State::HalfOpen { probing: true };
                    probe = true;
                }
            }
        }
        if probe {
            tracing::info!("AI circuit breaker half-open: probing the provider");
        }
        Ok(Permit {
            breaker: self.clone(),
            probe,
            settled: false,
        })
    }

    fn record(&self, probe: bool, ok: bool) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.lock();
        let next = match (*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    tracing::warn!(
                        failures,
                        cooldown_ms = self.cooldown.as_millis() as u64,
                        "AI circuit breaker open"
                    );
                    State::Open {
                        until: Instant::now() + self.cooldown,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen { .. }, false) if probe => {
                tracing::warn!("AI circuit breaker probe failed; open again");
                State::Open {
                    until: Instant::now() + self.cooldown,
                }
            }
            // A call admitted before the breaker opened failed too: no change.
            (other, false) => other,
        };
        *state = next;
    }
}

/// Permission for one call; report how it went. Dropping an unsettled
/// probe (the call was abandoned) lets the next caller probe instead.
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record(self.probe, true);
    }

    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut state = self.breaker.lock();
            if *state == (State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breaker::new(2, Duration::from_millis(30));
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().success();
        b.admit().unwrap().failure();
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().unwrap();
        assert!(b.admit().is_err(), "one probe at a time");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        // An abandoned probe lets the next caller probe.
        drop(b.admit().unwrap());
        let probe = b.admit().unwrap();
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().success();
    }

    #[test]
    fn threshold_zero_disables() {
        let b = Breaker::new(0, Duration::from_secs(60));
        for _ in 0..10 {
            b.admit().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
