//! Plain HTTP endpoints: liveness, readiness, metrics and the REST API.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::hub::Hub;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/cluster", get(cluster))
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn ready(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    if hub.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if hub.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    hub.metrics.store_up.set(i64::from(hub.broker.is_healthy()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hub.metrics.render(),
    )
}

/// Live instances and their client counts; with auth on, admins only.
async fn cluster(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> axum::response::Response {
    if let Err(refusal) = super::auth::require_admin(&hub, &headers).await {
        return refusal;
    }
    match hub.membership.instances(hub.registry.client_count()).await {
        Ok(instances) => axum::Json(serde_json::json!({
            "mode": hub.membership.mode(),
            "instance": hub.instance(),
            "instances": instances,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"code": e.code.as_str(), "message": e.message})),
        )
            .into_response(),
    }
}
