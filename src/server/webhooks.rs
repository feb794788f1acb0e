//! The HTTP surface of Cloud API webhooks, on every instance (Meta calls
//! the load balancer): the subscription handshake and signed deliveries.
//! Authenticated by the app secret's signature, not by client identity.
//! Served only when WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN are set.
//!
//! Anyone can POST here, so a refused delivery is logged through a
//! [`LogThrottle`] (one WARN per kind per [`LOG_EVERY`], with the count
//! suppressed meanwhile), never one line per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::hub::Hub;
use crate::metrics::Shed;
use crate::protocol::now_millis;
use crate::telemetry::LogThrottle;
use crate::whatsapp::webhooks::{constant_time_eq, drop_stale, signature_valid};

pub const PATH: &str = "/webhooks/whatsapp";

/// Largest delivery body (Meta's are a few KiB; axum's default, made explicit).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// At most one WARN per kind of refused delivery this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
static UNREAD: LogThrottle = LogThrottle::new(LOG_EVERY);
static BAD_SIGNATURE: LogThrottle = LogThrottle::new(LOG_EVERY);
static NOT_JSON: LogThrottle = LogThrottle::new(LOG_EVERY);
static STALE: LogThrottle = LogThrottle::new(LOG_EVERY);
static NOT_QUEUED: LogThrottle = LogThrottle::new(LOG_EVERY);

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(handshake, delivery))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// `hub.mode=subscribe&hub.verify_token=T&hub.challenge=C` → 200 C.
/// The keys contain dots: decoded as a flat map (serde_urlencoded has no
/// nested keys), anything else is 403.
#[utoipa::path(get, path = "/webhooks/whatsapp", tag = "webhooks",
    params(
        ("hub.mode" = String, Query, description = "`subscribe`"),
        ("hub.verify_token" = String, Query, description = "WHATSAPP_VERIFY_TOKEN"),
        ("hub.challenge" = String, Query, description = "echoed back"),
    ),
    responses(
        (status = 200, description = "the challenge", content_type = "text/plain", body = String),
        (status = 403, description = "wrong mode or token"),
        (status = 404, description = "webhooks are not configured"),
    ))]
async fn handshake(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Some(expected) = hub.config().whatsapp.verify_token.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(Query(params)) = query else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let mode = params.get("hub.mode").map(String::as_str);
    let token = params
        .get("hub.verify_token")
        .map(String::as_str)
        .unwrap_or("");
    match (mode, params.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge))
            if constant_time_eq(token.as_bytes(), expected.expose().as_bytes()) =>
        {
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                challenge.clone(),
            )
                .into_response()
        }
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}

/// A webhook delivery, signed with the app secret (`X-Hub-Signature-256`).
#[utoipa::path(post, path = "/webhooks/whatsapp", tag = "webhooks",
    params(("X-Hub-Signature-256" = String, Header, description = "`sha256=<hex HMAC of the body>`")),
    request_body(content = serde_json::Value, description = "Meta's webhook payload"),
    responses(
        (status = 200, description = "accepted (queued for processing; items outside the freshness window acknowledged and dropped)"),
        (status = 400, description = "signed but not JSON"),
        (status = 401, description = "missing or bad signature"),
        (status = 404, description = "webhooks are not configured"),
        (status = 413, description = "body over 2 MiB"),
        (status = 500, description = "not queued; Meta redelivers"),
    ))]
async fn delivery(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(secret) = hub.config().whatsapp.app_secret.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            if let Some(suppressed) = UNREAD.admit() {
                tracing::warn!(status = %rejection.status(), suppressed, "webhook body not read: {rejection}");
            }
            return rejection.into_response();
        }
    };
    // Before anything looks at the body.
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature_valid(secret.expose(), &body, signature) {
        if let Some(suppressed) = BAD_SIGNATURE.admit() {
            tracing::warn!(
                suppressed,
                "webhook with a missing or bad signature refused"
            );
        }
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(mut payload) = serde_json::from_slice::<Value>(&body) else {
        // Signed but not JSON: nothing Meta would resend differently.
        if let Some(suppressed) = NOT_JSON.admit() {
            tracing::warn!(suppressed, "signed webhook that is not JSON refused");
        }
        return StatusCode::BAD_REQUEST.into_response();
    };
    let max_age = hub.config().whatsapp.webhook_max_age;
    let stale = drop_stale(&mut payload, now_millis(), max_age);
    if stale > 0 {
        hub.metrics()
            .limit_shed
            .with_label_values(&[Shed::WebhookStale.label()])
            .inc_by(stale as u64);
        if let Some(suppressed) = STALE.admit() {
            tracing::warn!(
                items = stale,
                suppressed,
                "webhook items outside the freshness window (WHATSAPP_WEBHOOK_MAX_AGE_MS, or ahead of this clock) acknowledged, not delivered"
            );
        }
    }
    match hub.accept_webhook(&payload).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => {
            if let Some(suppressed) = NOT_QUEUED.admit() {
                tracing::warn!(error = %e, suppressed, "webhook not queued; Meta will redeliver");
            }
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
