//! The OpenAPI 3.1 document of the REST surface, generated from the code:
//! every REST handler carries a `#[utoipa::path]` and is registered with
//! `utoipa_axum`'s `routes!`, which takes its path and method from that
//! annotation — so a REST route is documented by the same line that serves
//! it. What is not REST is listed in [`NON_REST_ROUTES`]; `tests/admin.rs`
//! fails when a route in `src/` is in neither.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Routes the router serves that are not REST and so not in the document,
/// each with why:
pub const NON_REST_ROUTES: &[&str] = &[
    // The WebSocket protocol (docs/protocol.md); a browser gets the web page.
    "/",
    // The WebSocket protocol at its explicit path.
    "/ws",
    // The web client page (HTML).
    "/ui",
    // The pages' JavaScript modules (the SDK bundle, their scripts).
    "/assets/{name}",
    // The admin dashboard page (HTML, docs/dashboard.md).
    "/dashboard",
    // The dashboard's monitoring feed, a WebSocket (docs/admin.md).
    "/dashboard/feed",
    // The Model Context Protocol endpoint (Streamable HTTP, docs/mcp.md).
    "/mcp",
    // /mcp's OAuth protected resource metadata (RFC 9728, docs/mcp.md): a
    // document of its own standard, served only with authentication on.
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
];

/// The document's frame: title, version, the bearer scheme; the paths come
/// from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mcp-hub",
        description = "REST API of mcp-hub: sessions, commands, event log, operations and \
                       the admin API. With auth on, every call needs `Authorization: Bearer <JWT>` \
                       (docs/security.md); admin endpoints need role `admin`."
    ),
    modifiers(&Frame),
    tags(
        (name = "sessions", description = "A session's state, history, commands and event log"),
        (name = "admin", description = "Operators: sessions, clients, instances (role admin)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "webhooks", description = "WhatsApp Cloud API webhooks (signed by Meta)"),
    )
)]
pub struct ApiDoc;

/// The bearer scheme; no license entry (the crate declares none, and an
/// empty one would read as a claim).
struct Frame;

impl utoipa::Modify for Frame {
    fn modify(&self, openapi: &mut OpenApi) {
        openapi.info.license = None;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The error body of every REST refusal.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// A stable error code (docs/protocol.md §10).
    code: String,
    message: String,
}

/// The serialized document, shared by every request.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

impl Document {
    pub fn new(doc: &OpenApi) -> Self {
        Document(Arc::new(doc.to_pretty_json().unwrap_or_default()))
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", responses(
    (status = 200, description = "the OpenAPI 3.1 document of this API", body = serde_json::Value),
))]
pub async fn openapi_json(Extension(doc): Extension<Document>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_string(),
    )
}
