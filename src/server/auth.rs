//! HTTP side of authentication: taking the token from a request
//! (`Authorization: Bearer`, or `?token=` on the WebSocket upgrade only)
//! and answering 401 / 403 with the protocol's error body.
//!
//! A REST or MCP call's token is verified once, by the outermost
//! middleware (the rate limit, [`super::rate::limit`], which keys callers
//! by it); the handlers read that verdict ([`Bearer`]) from the request.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
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
    if !hub.auth().enabled() {
        return Ok(None);
    }
    let token = match bearer(headers) {
        Some(Ok(t)) => t.to_string(),
        Some(Err(e)) => return Err(unauthorized(&e)),
        None => query_token(uri).ok_or_else(|| unauthorized(&AuthError::Missing))?,
    };
    verify(hub, &token).await.map(Some)
}

/// The verdict on a REST/MCP call's `Authorization: Bearer` token:
/// `Ok(None)` with auth off. The middleware that verified it stores it in
/// the request's extensions; as an extractor it takes it from there, and
/// verifies the token itself only for a route no middleware covered.
#[derive(Clone, Debug)]
pub struct Bearer(Result<Option<Identity>, AuthError>);

impl Bearer {
    /// Verifies the bearer token of `headers` (header only, never `?token=`).
    pub async fn verify(hub: &Hub, headers: &HeaderMap) -> Bearer {
        if !hub.auth().enabled() {
            return Bearer(Ok(None));
        }
        let verdict = match bearer(headers) {
            Some(Ok(token)) => verify_token(hub, token).await.map(Some),
            Some(Err(e)) => Err(e),
            None => Err(AuthError::Missing),
        };
        Bearer(verdict)
    }

    /// The verified identity (None with auth off), if the token was good.
    pub fn verified(&self) -> Option<&Identity> {
        self.0.as_ref().ok().and_then(Option::as_ref)
    }

    /// The identity, or the 401 answer.
    pub fn identity(self) -> Result<Option<Identity>, Box<Response>> {
        self.0.map_err(|e| Box::new(unauthorized(&e)))
    }

    /// The verdict stored in `parts`, or one reached now.
    pub async fn of(hub: &Hub, parts: &mut Parts) -> Bearer {
        match parts.extensions.remove::<Bearer>() {
            Some(verdict) => verdict,
            None => Bearer::verify(hub, &parts.headers).await,
        }
    }
}

impl FromRequestParts<Arc<Hub>> for Bearer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Infallible> {
        Ok(Bearer::of(hub, parts).await)
    }
}

/// The identity of a call (`Authorization: Bearer` only) outside the
/// REST middleware; `Ok(None)` with auth off; the 401 response otherwise.
pub async fn bearer_identity(hub: &Hub, headers: &HeaderMap) -> Result<Option<Identity>, Response> {
    Bearer::verify(hub, headers)
        .await
        .identity()
        .map_err(|r| *r)
}

/// Admin endpoints: with auth on, a token with role admin (401 / 403).
pub async fn require_admin(hub: &Hub, headers: &HeaderMap) -> Result<(), Response> {
    match bearer_identity(hub, headers).await? {
        Some(id) => not_admin(&id, "this endpoint").map_or(Ok(()), Err),
        None => Ok(()),
    }
}

/// Why `id` may not use the admin API `what`, if it may not: not role
/// admin (`forbidden`), or an admin token whose `scope` leaves `admin`
/// out (`insufficient_scope`).
pub fn not_admin(id: &Identity, what: &str) -> Option<Response> {
    if id.is_admin() {
        return None;
    }
    if id.role != crate::auth::Role::Admin {
        return Some(forbidden(format!("{what} needs a token with role admin")));
    }
    Some(refusal(
        StatusCode::FORBIDDEN,
        ErrorCode::InsufficientScope,
        format!("{what} needs a token with the `admin` scope"),
    ))
}

async fn verify(hub: &Hub, token: &str) -> Result<Identity, Response> {
    verify_token(hub, token).await.map_err(|e| unauthorized(&e))
}

/// Every token check goes through here (and is counted once).
async fn verify_token(hub: &Hub, token: &str) -> Result<Identity, AuthError> {
    let verdict = hub.auth().verify(token).await;
    let result = match &verdict {
        Ok(_) => "accepted",
        Err(AuthError::Expired) => "expired",
        Err(_) => "invalid",
    };
    hub.metrics()
        .token_verifications
        .with_label_values(&[result])
        .inc();
    if let Err(e) = &verdict {
        tracing::debug!(error = %e, "token refused");
    }
    verdict
}
