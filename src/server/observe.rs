//! What every HTTP request leaves behind, one layer around every route
//! (the fallback included): an `x-request-id` (the caller's when it is
//! short and printable, else a new UUID) on the request and its response,
//! `hub_http_requests_total` / `hub_http_request_duration_seconds` by
//! matched route template (never the raw path, so the labels stay a small
//! set), an access log line (target `mcp_hub::access`: method, route,
//! status, latency, request id; never the query string or a header), and
//! with traces on (OTEL_EXPORTER_OTLP_ENDPOINT) a server span that
//! continues the caller's W3C `traceparent`. A WebSocket upgrade is
//! counted and timed to its 101, never for the socket's life.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

use crate::hub::Hub;
use crate::metrics::UNMATCHED_ROUTE;

/// The request id header, on every request and response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest caller's request id kept (longer ones are replaced).
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// The access log's `tracing` target (filter it with RUST_LOG).
pub const ACCESS_LOG: &str = "mcp_hub::access";

/// `app` with the layers above, outermost first: an unfit caller's id is
/// dropped, a missing one generated, the id copied to the response, then
/// the request measured, logged and traced.
pub fn layer(app: Router, hub: Arc<Hub>) -> Router {
    app.layer(axum::middleware::from_fn_with_state(hub, observe))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unfit_request_id))
}

/// Keeps a caller's `x-request-id` only if there is one, of 1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters; otherwise it is
/// removed, and a UUID takes its place.
async fn drop_unfit_request_id(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let mut ids = headers.get_all(&REQUEST_ID).iter();
    let fit = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => request_id_fits(id.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !fit {
        headers.remove(&REQUEST_ID);
    }
    request
}

fn request_id_fits(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(u8::is_ascii_graphic)
}

/// The `method` label: the standard methods, else `other` (a bounded set
/// whatever a caller sends).
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

async fn observe(State(hub): State<Arc<Hub>>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_owned(),
        None => UNMATCHED_ROUTE.to_owned(),
    };
    let method = method_label(request.method());
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!(
        "http_request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
    );
    crate::telemetry::set_remote_parent(&span, &crate::telemetry::HeaderCarrier(request.headers()));
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    hub.metrics()
        .http_request(&route, method, status.as_u16(), elapsed.as_secs_f64());
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::info!(
        target: ACCESS_LOG,
        method,
        route = %route,
        status = status.as_u16(),
        latency_ms = (elapsed.as_secs_f64() * 1e3 * 1e3).round() / 1e3,
        request_id = %request_id,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_short_and_printable() {
        assert!(request_id_fits(b"abc-123_XYZ.:/"));
        assert!(request_id_fits(&[b'a'; MAX_REQUEST_ID_LEN]));
        assert!(!request_id_fits(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        assert!(!request_id_fits(b""));
        assert!(!request_id_fits(b"has space"));
        assert!(!request_id_fits(b"tab\there"));
        assert!(!request_id_fits("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "other"
        );
    }
}
