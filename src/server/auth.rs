//! HTTP side of authentication: taking the token from a request
//! (`Authorization: Bearer`, or `?token=` on the WebSocket upgrade only)
//! and answering 401 / 403 with the protocol's error body.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{AuthError, Identity};
use crate::hub::Hub;
use crate::protocol::ErrorCode;

/// `{"type":"error","code":...,"message":...}` with `status`.
pub fn refusal(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = json!({"type": "error", "code": code.as_str(), "message": message.into()});
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

pub fn unauthorized(err: &AuthError) -> Response {
    refusal(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        err.to_string(),
    )
}

pub fn forbidden(message: impl Into<String>) -> Response {
    refusal(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
}

/// The token of `Authorization: Bearer <jwt>`, if that header is present.
fn bearer(headers: &HeaderMap) -> Option<Result<&str, AuthError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AuthError::Invalid("expected `Authorization: Bearer <jwt>`".into()));
    Some(parsed)
}

/// `?token=` of the upgrade URL (browsers cannot set headers on a WebSocket).
fn query_token(uri: &Uri) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Q {
        token: Option<String>,
    }
    axum::extract::Query::<Q>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.token)
        .filter(|t| !t.is_empty())
}

/// The identity of a WebSocket upgrade (header first, then `?token=`);
/// `Ok(None)` with auth off; the 401 response otherwise.
pub async fn upgrade_identity(
    hub: &Hub,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<Identity>, Response> {
    if !hub.auth.enabled() {
        return Ok(None);
    }
    let token = match bearer(headers) {
        Some(Ok(t)) => t.to_string(),
        Some(Err(e)) => return Err(unauthorized(&e)),
        None => query_token(uri).ok_or_else(|| unauthorized(&AuthError::Missing))?,
    };
    verify(hub, &token).await.map(Some)
}

/// The identity of a REST/admin call (`Authorization: Bearer` only);
/// `Ok(None)` with auth off; the 401 response otherwise.
pub async fn bearer_identity(hub: &Hub, headers: &HeaderMap) -> Result<Option<Identity>, Response> {
    if !hub.auth.enabled() {
        return Ok(None);
    }
    let token = match bearer(headers) {
        Some(Ok(t)) => t.to_string(),
        Some(Err(e)) => return Err(unauthorized(&e)),
        None => return Err(unauthorized(&AuthError::Missing)),
    };
    verify(hub, &token).await.map(Some)
}

/// Admin endpoints: with auth on, a token with role admin (401 / 403).
pub async fn require_admin(hub: &Hub, headers: &HeaderMap) -> Result<(), Response> {
    match bearer_identity(hub, headers).await? {
        Some(id) if !id.is_admin() => Err(forbidden("this endpoint needs a token with role admin")),
        _ => Ok(()),
    }
}

async fn verify(hub: &Hub, token: &str) -> Result<Identity, Response> {
    hub.auth.verify(token).await.map_err(|e| {
        tracing::debug!(error = %e, "token refused");
        unauthorized(&e)
    })
}
