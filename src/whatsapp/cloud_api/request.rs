//! One Graph API call with retries: rate limits and transient failures
//! are retried with backoff (honouring `Retry-After`) within the request
//! deadline; every other error maps to a stable hub code. Bodies are read
//! with a size limit. The access token is never logged.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;

use crate::ai::http::retry_after_header;
use crate::protocol::{ErrorCode, HubError};

/// Graph error codes that mean "too fast, try again later".
const RATE_LIMIT_CODES: [i64; 4] = [4, 80007, 130429, 131056];
/// Graph error codes of a temporary upstream failure.
const TRANSIENT_CODES: [i64; 2] = [131000, 131016];
/// Re-engagement: free-form text outside the 24-hour window.
pub const OUTSIDE_WINDOW_CODE: i64 = 131047;
/// Largest JSON answer read from Graph.
const RESPONSE_BODY_LIMIT: usize = 1024 * 1024;

/// The message a client gets for 131047, sync or async.
pub fn outside_window_error(detail: &str) -> HubError {
    HubError::new(
        ErrorCode::OutsideConversationWindow,
        format!(
            "more than 24 hours since this contact last wrote: free-form text is refused outside the customer-service window; use a template (send_template){}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ),
    )
}

/// The hub's code for a Graph error code that is not retried (Meta's
/// error-code table), None for codes without a specific meaning.
pub fn code_for_upstream(code: i64) -> Option<ErrorCode> {
    Some(match code {
        OUTSIDE_WINDOW_CODE => ErrorCode::OutsideConversationWindow,
        190 => ErrorCode::ConnectorAuthFailed,
        131052 | 131053 => ErrorCode::MediaFailed,
        132000..=132999 => ErrorCode::TemplateRejected,
        131026 | 131049 | 131050 | 137000 => ErrorCode::Undeliverable,
        100 | 131008 | 131009 => ErrorCode::ConnectorRejected,
        c if RATE_LIMIT_CODES.contains(&c) => ErrorCode::ConnectorRateLimited,
        c if TRANSIENT_CODES.contains(&c) => ErrorCode::ConnectorUnavailable,
        _ => return None,
    })
}

/// What one attempt came to.
pub(super) enum Attempt {
    Done(Value),
    /// Worth retrying; `retry_after` from the upstream, if it said.
    Retry {
        error: HubError,
        retry_after: Option<Duration>,
    },
    Fatal(HubError),
}

/// Runs `request` (built afresh for every attempt) until it succeeds, a
/// final error, or `deadline` runs out; the answer's JSON.
pub(super) async fn call(
    deadline: Duration,
    request: impl Fn(Duration) -> reqwest::RequestBuilder,
) -> Result<Value, HubError> {
    let started = Instant::now();
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        let (error, retry_after) = match attempt(&request, remaining).await {
            Attempt::Done(json) => return Ok(json),
            Attempt::Fatal(e) => return Err(e),
            Attempt::Retry { error, retry_after } => (error, retry_after),
        };
        let pause = backoff.next().unwrap_or(Duration::from_secs(5));
        // The upstream said when: wait exactly that (never less).
        let pause = retry_after.unwrap_or(pause);
        let remaining = deadline.saturating_sub(started.elapsed());
        if pause >= remaining {
            tracing::warn!(code = %error.code, "cloud api: giving up, deadline reached");
            return Err(error);
        }
        tracing::info!(code = %error.code, pause_ms = pause.as_millis() as u64, "cloud api: retrying");
        tokio::time::sleep(pause).await;
    }
}

async fn attempt(
    request: &impl Fn(Duration) -> reqwest::RequestBuilder,
    remaining: Duration,
) -> Attempt {
    if remaining.is_zero() {
        return Attempt::Fatal(HubError::new(
            ErrorCode::ConnectorUnavailable,
            "the Cloud API did not answer within the request deadline",
        ));
    }
    let response = match request(remaining).timeout(remaining).send().await {
        Ok(r) => r,
        Err(e) => {
            // reqwest errors carry the URL, never the headers.
            return Attempt::Retry {
                error: HubError::new(
                    ErrorCode::ConnectorUnavailable,
                    format!("the Cloud API is unreachable: {}", e.without_url()),
                ),
                retry_after: None,
            };
        }
    };
    let status = response.status();
    let retry_after = retry_after_header(response.headers());
    let bytes = match read_limited(response, RESPONSE_BODY_LIMIT).await {
        Ok(b) => b,
        Err(Some(e)) => return Attempt::Fatal(e),
        Err(None) => {
            return Attempt::Retry {
                error: HubError::new(
                    ErrorCode::ConnectorUnavailable,
                    "the Cloud API connection broke mid-answer",
                ),
                retry_after: None,
            };
        }
    };
    // Graph errors may come as text/javascript: parse regardless.
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status.is_success() {
        return match json {
            Some(v) => Attempt::Done(v),
            None => Attempt::Fatal(HubError::new(
                ErrorCode::ConnectorFailed,
                "the Cloud API answered with a body that is not JSON",
            )),
        };
    }
    classify(status.as_u16(), json.as_ref(), retry_after)
}

/// A response's body, at most `limit` bytes: Err(Some) when larger,
/// Err(None) when the connection broke.
pub(super) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, Option<HubError>> {
    let too_large = || {
        Some(HubError::new(
            ErrorCode::ConnectorFailed,
            format!("the Cloud API answered with more than {limit} bytes"),
        ))
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(None),
        }
    }
}

/// Maps a non-2xx answer to retry or a final error (Meta: branch on
/// `error.code`, then on the HTTP status).
pub(super) fn classify(
    status: u16,
    body: Option<&Value>,
    retry_after: Option<Duration>,
) -> Attempt {
    let error = body.and_then(|b| b.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_i64);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    let detail = error
        .and_then(|e| e.pointer("/error_data/details"))
        .and_then(Value::as_str)
        .unwrap_or(message.as_str())
        .chars()
        .take(300)
        .collect::<String>();
    let described = match code {
        Some(c) if detail != message && !detail.is_empty() => {
            format!("Cloud API error {c}: {message} ({detail})")
        }
        Some(c) => format!("Cloud API error {c}: {message}"),
        None => format!("Cloud API HTTP {status}"),
    };
    let retry = |code: ErrorCode| Attempt::Retry {
        error: HubError::new(code, described.clone()),
        retry_after,
    };
    match code.and_then(code_for_upstream) {
        Some(ErrorCode::OutsideConversationWindow) => {
            return Attempt::Fatal(outside_window_error(&detail));
        }
        Some(c @ (ErrorCode::ConnectorRateLimited | ErrorCode::ConnectorUnavailable)) => {
            return retry(c);
        }
        Some(c) => return Attempt::Fatal(HubError::new(c, described)),
        None => {}
    }
    match status {
        401 => Attempt::Fatal(HubError::new(ErrorCode::ConnectorAuthFailed, described)),
        429 => retry(ErrorCode::ConnectorRateLimited),
        408 | 500.. => retry(ErrorCode::ConnectorUnavailable),
        _ => Attempt::Fatal(HubError::new(ErrorCode::ConnectorFailed, described)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(a: Attempt) -> (ErrorCode, bool) {
        match a {
            Attempt::Done(_) => panic!("done"),
            Attempt::Retry { error, .. } => (error.code, true),
            Attempt::Fatal(error) => (error.code, false),
        }
    }

    #[test]
    fn error_table() {
        let env = |c: i64| json!({"error": {"code": c, "message": "m"}});
        let fatal = [
            (131047, ErrorCode::OutsideConversationWindow),
            (190, ErrorCode::ConnectorAuthFailed),
            (131053, ErrorCode::MediaFailed),
            (131052, ErrorCode::MediaFailed),
            (132001, ErrorCode::TemplateRejected),
            (132000, ErrorCode::TemplateRejected),
            (131026, ErrorCode::Undeliverable),
            (131050, ErrorCode::Undeliverable),
            (131009, ErrorCode::ConnectorRejected),
            (100, ErrorCode::ConnectorRejected),
            (123456, ErrorCode::ConnectorFailed),
        ];
        for (c, expected) in fatal {
            assert_eq!(
                code(classify(400, Some(&env(c)), None)),
                (expected, false),
                "{c}"
            );
        }
        assert_eq!(
            code(classify(401, None, None)),
            (ErrorCode::ConnectorAuthFailed, false)
        );
        for c in [130429, 131056] {
            assert_eq!(
                code(classify(400, Some(&env(c)), None)),
                (ErrorCode::ConnectorRateLimited, true)
            );
        }
        assert_eq!(
            code(classify(400, Some(&env(131000)), None)),
            (ErrorCode::ConnectorUnavailable, true)
        );
        assert_eq!(
            code(classify(429, None, None)),
            (ErrorCode::ConnectorRateLimited, true)
        );
        assert_eq!(
            code(classify(503, None, None)),
            (ErrorCode::ConnectorUnavailable, true)
        );
    }
}
