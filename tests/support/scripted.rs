//! What every fake upstream (the AI providers, the Graph API) shares: the
//! record of the requests it got and the script of how to answer them.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::Value;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// 1 for the first request, 2 for the next...
    pub number: usize,
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
}

/// Recorded requests plus scripted behaviours `B`: the queued ones in
/// order, then the default; every answer waits `delay` first.
pub struct Script<B> {
    calls: Mutex<Vec<Recorded>>,
    queue: Mutex<VecDeque<B>>,
    default: Mutex<Option<B>>,
    delay: Mutex<Duration>,
}

impl<B> Default for Script<B> {
    fn default() -> Self {
        Script {
            calls: Mutex::default(),
            queue: Mutex::default(),
            default: Mutex::default(),
            delay: Mutex::default(),
        }
    }
}

impl<B: Clone> Script<B> {
    pub fn push(&self, behaviors: impl IntoIterator<Item = B>) {
        self.queue.lock().unwrap().extend(behaviors);
    }

    pub fn set_default(&self, behavior: B) {
        *self.default.lock().unwrap() = Some(behavior);
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }

    pub fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// Records a request; returns its number.
    pub fn record(&self, path: String, headers: &HeaderMap, body: &[u8]) -> usize {
        let mut calls = self.calls.lock().unwrap();
        let number = calls.len() + 1;
        calls.push(Recorded {
            number,
            at: Instant::now(),
            path,
            headers: headers.clone(),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
        });
        number
    }

    /// The next behaviour (`fallback` when neither script nor default has
    /// one) and the delay to answer with.
    pub fn next(&self, fallback: B) -> (B, Duration) {
        let behavior = self
            .queue
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.default.lock().unwrap().clone())
            .unwrap_or(fallback);
        (behavior, *self.delay.lock().unwrap())
    }
}
