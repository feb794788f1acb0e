//! Browser safety and the connection cap, checked before a WebSocket
//! upgrade: the `Origin` check against cross-site WebSocket hijacking
//! (403 `forbidden_origin`), the per-instance `MAX_CONNECTIONS` cap (503
//! `too_many_connections`), and the REST API's CORS layer (only with
//! `ALLOWED_ORIGINS`). docs/security.md section 7 is the design.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::normalize_origin;
use crate::protocol::ErrorCode;

/// An HTTP error before the upgrade, with the same JSON body as a
/// WebSocket `error` message.
pub fn upgrade_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({"type": "error", "code": code.as_str(), "message": message});
    (status, Json(body)).into_response()
}

/// Whether a WebSocket upgrade may proceed as far as its `Origin` goes.
///
/// No `Origin` (terminals, agents, scripts): yes. With `allowed` (from
/// `ALLOWED_ORIGINS`): exactly those origins. Otherwise the page must come
/// from the host it connects to: the Origin's host[:port] equals `Host`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = normalize_origin(origin);
    if !allowed.is_empty() {
        return allowed.contains(&origin);
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        // `null` (sandboxed frames, file://) and anything malformed.
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    without_default_port(scheme, authority) == without_default_port(scheme, &host)
}

/// `example.com:443` and `example.com` are the same place for https.
fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// The 403 for a disallowed `Origin`.
pub fn forbidden_origin() -> Response {
    upgrade_error(
        StatusCode::FORBIDDEN,
        ErrorCode::ForbiddenOrigin,
        "this Origin may not open a WebSocket here (same host only, or list it in ALLOWED_ORIGINS)",
    )
}

/// The instance's WebSocket connection slots (`MAX_CONNECTIONS`). A slot
/// is taken before the upgrade and held by the connection until it ends,
/// so concurrent upgrades cannot overshoot the cap.
#[derive(Clone)]
pub struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    pub fn new(max: usize) -> Self {
        ConnectionSlots(Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))))
    }

    /// A slot; None when every slot is taken ([`too_many_connections`]).
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The 503 when every connection slot is taken.
pub fn too_many_connections() -> Response {
    upgrade_error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TooManyConnections,
        "this instance holds MAX_CONNECTIONS connections; retry later or elsewhere",
    )
}

/// CORS for the REST API, for exactly the `ALLOWED_ORIGINS`; None (no CORS
/// headers at all, preflights answered 405) when the list is empty.
pub fn cors_layer(allowed: &[String]) -> Option<CorsLayer> {
    if allowed.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = allowed
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-client-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn same_host_by_default() {
        let none: &[String] = &[];
        assert!(origin_allowed(&headers(None, "hub:8002"), none));
        assert!(origin_allowed(
            &headers(Some("http://hub:8002"), "hub:8002"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("https://Hub.Example"), "hub.example:443"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("http://evil:8002"), "hub:8002"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("http://hub:8003"), "hub:8002"),
            none
        ));
        assert!(!origin_allowed(&headers(Some("null"), "hub:8002"), none));
    }

    #[test]
    fn listed_origins_only_when_configured() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "hub"),
            &allowed
        ));
        assert!(origin_allowed(&headers(None, "hub"), &allowed));
        assert!(!origin_allowed(
            &headers(Some("http://hub"), "hub"),
            &allowed
        ));
    }
}
