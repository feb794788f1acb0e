//! `/mcp` as an OAuth 2.0 protected resource (MCP authorization, RFC 9728):
//! its metadata at `/.well-known/oauth-protected-resource` (and the
//! `/mcp`-suffixed path), the `WWW-Authenticate` challenges that point
//! clients there, the audience a token for `/mcp` must carry, and the
//! scope each JSON-RPC request needs (403 `insufficient_scope` before the
//! request is read by the SDK).

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::auth::{Identity, Scope};
use crate::hub::Hub;
use crate::protocol::ErrorCode;

use super::super::auth::refusal;

const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The resource identifier of `/mcp`: the hub's public URL + `/mcp`.
pub fn resource(hub: &Hub) -> String {
    format!("{}/mcp", hub.config().public_url())
}

fn metadata_url(hub: &Hub) -> String {
    format!("{}{METADATA_PATH}/mcp", hub.config().public_url())
}

/// The metadata routes, served with authentication on (without it there
/// is nothing to authorize).
pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    if !hub.auth().enabled() {
        return Router::new();
    }
    // The configuration is fixed: the document is built once.
    let config = hub.config();
    let mut body = json!({
        "resource": resource(hub),
        "scopes_supported": [Scope::Read.as_str(), Scope::Send.as_str(), Scope::Admin.as_str()],
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-hub",
    });
    // RFC 9728 makes the list optional: none configured, none named.
    if !config.auth.authorization_servers.is_empty() {
        body["authorization_servers"] = json!(config.auth.authorization_servers);
    }
    let metadata = move || std::future::ready(axum::Json(body.clone()));
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata.clone()),
        )
        .route("/.well-known/oauth-protected-resource/mcp", get(metadata))
}

/// `Bearer resource_metadata="…"` plus `error`, `scope` where they apply.
fn challenge(hub: &Hub, error: Option<&str>, scope: Option<Scope>) -> HeaderValue {
    let mut value = format!("Bearer resource_metadata=\"{}\"", metadata_url(hub));
    if let Some(error) = error {
        value.push_str(&format!(", error=\"{error}\""));
    }
    if let Some(scope) = scope {
        value.push_str(&format!(", scope=\"{}\"", scope.as_str()));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// A 401 of the REST layer with `/mcp`'s challenge: `invalid_token` when
/// a token was presented (RFC 6750 §3.1), none when it was missing.
pub fn unauthorized(hub: &Hub, mut response: Response, token_presented: bool) -> Response {
    let error = token_presented.then_some("invalid_token");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge(hub, error, None));
    response
}

/// Whether the token was issued for this hub: `aud` names its public URL
/// (or `/mcp` under it). With AUTH_JWT_AUDIENCE set, verification already
/// required that audience of every token.
pub fn audience_ok(hub: &Hub, identity: &Identity) -> bool {
    if hub.config().auth.audience.is_some() {
        return true;
    }
    let base = hub.config().public_url();
    let mcp = resource(hub);
    identity.audiences.iter().any(|a| {
        let a = a.trim_end_matches('/');
        a == base || a == mcp
    })
}

pub fn wrong_audience(hub: &Hub) -> Response {
    let response = refusal(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        format!(
            "the token was not issued for this server: its `aud` must be {}",
            resource(hub)
        ),
    );
    unauthorized(hub, response, true)
}

/// The scope a JSON-RPC request (or a batch) needs, by method and tool.
/// `message` is the request's body, parsed once by the caller.
pub fn required_scope(message: &Value) -> Option<Scope> {
    let needs = |message: &Value| {
        let method = message["method"].as_str().unwrap_or_default();
        match method {
            "tools/call" => match message["params"]["name"].as_str() {
                Some("send_message" | "broadcast" | "run_command") => Some(Scope::Send),
                Some(_) => Some(Scope::Read),
                None => None,
            },
            "resources/read" | "resources/list" | "prompts/get" | "completion/complete" => {
                Some(Scope::Read)
            }
            _ => None,
        }
    };
    let all: Vec<Scope> = match message {
        Value::Array(batch) => batch.iter().filter_map(needs).collect(),
        single => needs(single).into_iter().collect(),
    };
    // Send is the stronger need: a batch that sends needs it.
    all.iter()
        .copied()
        .find(|s| *s == Scope::Send)
        .or(all.first().copied())
}

/// 403 `insufficient_scope`, with the challenge naming the scope.
pub fn insufficient_scope(hub: &Hub, scope: Scope) -> Response {
    let mut response = refusal(
        StatusCode::FORBIDDEN,
        ErrorCode::InsufficientScope,
        format!("this needs a token with the `{}` scope", scope.as_str()),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        challenge(hub, Some("insufficient_scope"), Some(scope)),
    );
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_needs_the_scope_of_what_it_does() {
        let scope = |v: Value| required_scope(&v);
        let call = |tool: &str| json!({"method": "tools/call", "params": {"name": tool}});
        assert_eq!(scope(call("send_message")), Some(Scope::Send));
        assert_eq!(scope(call("get_history")), Some(Scope::Read));
        assert_eq!(
            scope(json!({"method": "resources/read"})),
            Some(Scope::Read)
        );
        assert_eq!(scope(json!({"method": "tools/list"})), None);
        assert_eq!(scope(json!({"method": "initialize"})), None);
        assert_eq!(
            scope(json!([call("get_history"), call("run_command")])),
            Some(Scope::Send)
        );
        // A body that is not JSON is read as null (src/server/mcp/http.rs).
        let not_json: Value = serde_json::from_slice(b"not json").unwrap_or_default();
        assert_eq!(required_scope(&not_json), None);
    }
}
