//! HTTP plumbing shared by the remote providers: one attempt, a bounded
//! body, and the classification of what went wrong.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{ProviderError, ProviderErrorKind};

/// Largest response body read from a provider; more is an error.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A provider's retry delay above this is treated as this (bounded sleep;
/// the coordinator's deadline bounds it further).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The client every remote provider uses. No overall timeout here: the
/// coordinator bounds each attempt (AI_TIMEOUT_MS) and drops it on expiry.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("mcp-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|e| {
            // Only fails if the TLS backend cannot initialise.
            tracing::warn!(error = %e, "custom HTTP client unavailable; using defaults");
            reqwest::Client::new()
        })
}

/// A completed HTTP exchange.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn text_snippet(&self) -> String {
        super::prompt::snippet(String::from_utf8_lossy(&self.body).trim())
    }
}

/// Sends the request and reads the whole (bounded) body.
pub async fn send(
    provider: &str,
    request: reqwest::RequestBuilder,
) -> Result<Reply, ProviderError> {
    let mut response = request.send().await.map_err(|e| transport(provider, &e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(ProviderError::bad_output(format!(
                        "{provider} sent a response larger than {MAX_BODY_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(transport(provider, &e)),
        }
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn transport(provider: &str, e: &reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    // reqwest's Display names the URL, never a header: no key in messages.
    ProviderError::new(
        ProviderErrorKind::Unavailable,
        format!("{provider} {what}: {e}"),
    )
}

/// How a non-success status is treated: 429 and 5xx (and 408) are retried,
/// every other 4xx is final.
pub fn status_kind(status: StatusCode) -> ProviderErrorKind {
    match status.as_u16() {
        429 => ProviderErrorKind::RateLimited,
        408 | 500..=599 => ProviderErrorKind::Unavailable,
        _ => ProviderErrorKind::Rejected,
    }
}

/// `Retry-After` (delta-seconds, possibly fractional) or OpenAI's
/// `retry-after-ms`. HTTP-date forms are ignored (backoff applies).
pub fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return seconds(ms / 1000.0);
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(seconds)
}

/// A protobuf Duration string: `"47s"`, `"29.723877525s"`.
pub fn proto_duration(s: &str) -> Option<Duration> {
    s.trim()
        .strip_suffix('s')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .and_then(seconds)
}

fn seconds(s: f64) -> Option<Duration> {
    if !s.is_finite() || s < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(s)
        .ok()
        .map(|d| d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn durations() {
        assert_eq!(proto_duration("47s"), Some(Duration::from_secs(47)));
        assert_eq!(proto_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(proto_duration("1e400s"), None);
        assert_eq!(proto_duration("-1s"), None);
        assert_eq!(proto_duration("NaNs"), None);
        assert_eq!(proto_duration("9999999999s"), Some(MAX_RETRY_AFTER));
        assert_eq!(proto_duration("47"), None);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_header(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after_header(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after_header(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_header(&h), None);
    }

    #[test]
    fn statuses() {
        let k = |n: u16| status_kind(StatusCode::from_u16(n).unwrap());
        assert_eq!(k(429), ProviderErrorKind::RateLimited);
        for n in [500, 502, 503, 504, 408] {
            assert_eq!(k(n), ProviderErrorKind::Unavailable, "{n}");
        }
        for n in [400, 401, 402, 403, 404, 422] {
            assert_eq!(k(n), ProviderErrorKind::Rejected, "{n}");
        }
    }
}
