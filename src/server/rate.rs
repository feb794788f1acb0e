//! The REST API's rate limit: one token bucket per caller (the token's
//! `sub`, else the client's address), with the WebSocket's settings
//! (`RATE_LIMIT_PER_SEC`, `RATE_LIMIT_BURST`), in a bounded map that
//! forgets idle callers. Over the limit a call gets 429 `rate_limited`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Bearer;
use super::listener::client_ip;
use crate::config::HubConfig;
use crate::hub::Hub;
use crate::protocol::ErrorCode;

/// Callers remembered at once; past it idle callers are forgotten first.
const MAX_CALLERS: usize = 10_000;

/// Whose bucket a call draws from: with auth on, the token's `sub`;
/// otherwise (auth off, or a call without a valid token, which the handler
/// then answers 401) the client's address ([`client_ip`]: the peer, or
/// behind a `TRUSTED_PROXIES` proxy the hop it appended). Never a header
/// the caller chooses: `X-Client-Id` only names the caller, one address
/// cycling through ids still draws from one bucket.
pub fn caller_key(
    hub: &Hub,
    headers: &HeaderMap,
    bearer: &Bearer,
    peer: Option<SocketAddr>,
) -> String {
    if hub.auth().enabled()
        && let Some(identity) = bearer.verified()
    {
        return format!("sub:{}", identity.sub);
    }
    match peer {
        Some(addr) => format!("ip:{}", client_ip(addr.ip(), headers, &hub.config().limits)),
        None => "anonymous".to_string(),
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per caller.
pub struct RestRateLimit {
    rate: f64,
    burst: f64,
    max_callers: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RestRateLimit {
    pub fn new(config: &HubConfig) -> Self {
        Self::with_capacity(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
            MAX_CALLERS,
        )
    }

    fn with_capacity(rate: f64, burst: u32, max_callers: usize) -> Self {
        RestRateLimit {
            rate,
            burst: f64::from(burst),
            max_callers: max_callers.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_callers {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets every caller whose bucket has refilled (forgetting it
    /// changes nothing); if none has, the one idle the longest.
    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let refill = self.burst / self.rate;
        buckets.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < refill);
        if buckets.len() >= self.max_callers
            && let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
        {
            buckets.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn callers(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

/// Middleware of the REST routes: 429 `rate_limited` over the limit, with
/// the REST API's error body (`{"code", "message"}`). It verifies the
/// call's token, the one time per request, and leaves the verdict in the
/// request for the handlers ([`Bearer`]).
pub async fn limit(
    State((limit, hub)): State<(Arc<RestRateLimit>, Arc<Hub>)>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let bearer = Bearer::of(&hub, &mut parts).await;
    let peer = parts
        .extensions
        .get::<ConnectInfo<super::listener::Peer>>()
        .map(|ConnectInfo(peer)| peer.addr);
    let key = caller_key(&hub, &parts.headers, &bearer, peer);
    parts.extensions.insert(bearer);
    let req = Request::from_parts(parts, body);
    if !limit.allow(&key) {
        let body = json!({
            "code": ErrorCode::RateLimited.as_str(),
            "message": "too many REST calls; slow down (RATE_LIMIT_PER_SEC / RATE_LIMIT_BURST)",
        });
        return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_caller() {
        let limit = RestRateLimit::with_capacity(2.0, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limit.allow_at("a", t0));
        }
        assert!(!limit.allow_at("a", t0));
        assert!(limit.allow_at("b", t0), "callers have their own buckets");
        assert!(limit.allow_at("a", t0 + Duration::from_millis(500)));
        assert!(!limit.allow_at("a", t0 + Duration::from_millis(500)));
    }

    #[test]
    fn the_map_is_bounded_and_forgets_idle_callers_first() {
        let limit = RestRateLimit::with_capacity(1.0, 2, 3);
        let t0 = Instant::now();
        assert!(limit.allow_at("old", t0));
        assert!(limit.allow_at("busy", t0 + Duration::from_secs(5)));
        assert!(limit.allow_at("busy", t0 + Duration::from_secs(5)));
        assert!(limit.allow_at("c", t0 + Duration::from_secs(5)));
        // Full: "old" has refilled (idle > 2 s) and goes; "busy" stays empty.
        assert!(limit.allow_at("d", t0 + Duration::from_secs(5)));
        assert_eq!(limit.callers(), 3);
        assert!(!limit.allow_at("busy", t0 + Duration::from_secs(5)));
        // Nobody idle: the longest idle goes, the map never grows.
        for n in 0..10 {
            assert!(limit.allow_at(&format!("new{n}"), t0 + Duration::from_secs(5)));
        }
        assert_eq!(limit.callers(), 3);
    }
}
