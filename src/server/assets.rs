//! The pages' JavaScript modules, compiled into the binary and served at
//! `/assets/{name}` (no CDN, no Node at build time): the TypeScript SDK
//! bundled for browsers (`mcp-hub-client.js`, built from
//! clients/typescript/src by its scripts/bundle.mjs and committed; a test
//! in tests/web_client.rs rebuilds it and fails when it differs), the
//! message content rendering both pages share (`content-view.js`), and
//! each page's own script. The pages' CSP allows scripts from `'self'`
//! only ([`super::browser::Page`]).
//!
//! The names are stable (the modules import each other by them), so each
//! answer carries a strong `ETag` (the content's SHA-256) with
//! `Cache-Control: no-cache`: a browser revalidates on every load and gets
//! `304 Not Modified` until the binary serves something else.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// Every served module: its name under `/assets/` and its text.
const MODULES: &[(&str, &str)] = &[
    (
        "mcp-hub-client.js",
        include_str!("assets/mcp-hub-client.js"),
    ),
    ("content-view.js", include_str!("assets/content-view.js")),
    ("web-page.js", include_str!("../../web/index.js")),
    ("dashboard.js", include_str!("dashboard/dashboard.js")),
];

struct Asset {
    name: &'static str,
    body: &'static str,
    etag: HeaderValue,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    MODULES
        .iter()
        .map(|(name, body)| {
            let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
            let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
            Asset {
                name,
                body,
                etag: HeaderValue::from_str(&format!("\"{tag}\"")).expect("base64 is ASCII"),
            }
        })
        .collect()
});

/// `GET /assets/{name}`: the module, `304` when `If-None-Match` names its
/// current `ETag`, `404` for any other name.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cached = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == asset.etag || tag.trim() == "*");
    let common = [
        (header::ETAG, asset.etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    (common, [content_type], asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(name: &str, if_none_match: Option<&HeaderValue>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, tag.clone());
        }
        serve(Path(name.to_string()), headers).await
    }

    #[tokio::test]
    async fn a_module_is_served_with_its_etag_then_not_modified() {
        let first = get("content-view.js", None).await;
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(
            first.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let tag = first.headers()[header::ETAG].clone();
        assert!(tag.to_str().unwrap().starts_with('"'), "{tag:?}");
        let again = get("content-view.js", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("mcp-hub-client.js", Some(&tag)).await;
        assert_eq!(other.status(), StatusCode::OK, "another module's tag");
        assert_eq!(
            get("../Cargo.toml", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
