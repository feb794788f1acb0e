//! Plain HTTP endpoints: liveness, readiness, metrics and the cluster view.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::hub::Hub;

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(cluster))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Readiness: listening, backend reachable, clients announced, not draining.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "`ready`", content_type = "text/plain", body = String),
    (status = 503, description = "`not ready` or `draining`", content_type = "text/plain", body = String),
))]
async fn ready(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    if hub.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if hub.shutdown().is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Prometheus exposition of this instance (docs/operations.md).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
))]
async fn metrics(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    hub.metrics().store_up.set(i64::from(hub.broker_healthy()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hub.metrics().render(),
    )
}

/// Live instances and their client counts; with auth on, admins only.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the cluster's mode and live instances", body = ClusterView),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks role admin; `insufficient_scope`: its `scope` leaves out `admin`", body = super::openapi::ErrorBody),
        (status = 503, description = "the backend is unreachable", body = super::openapi::ErrorBody),
    ))]
async fn cluster(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> axum::response::Response {
    if let Err(refusal) = super::auth::require_admin(&hub, &headers).await {
        return refusal;
    }
    match hub.instances().await {
        Ok(instances) => axum::Json(serde_json::json!({
            "mode": hub.cluster_mode(),
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

/// The answer of `/api/v1/cluster` (documentation only: built as JSON).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ClusterView {
    /// `standalone` or `cluster`.
    mode: String,
    /// The instance that answered.
    instance: String,
    instances: Vec<crate::membership::InstanceInfo>,
}
