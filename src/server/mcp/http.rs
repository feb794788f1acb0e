//! `/mcp` over HTTP: the origin, bearer, audience and scope checks, the
//! REST rate limit, then one of two services of the official SDK over the
//! same handler:
//!
//! * **sessions** (stateful): `initialize` opens an MCP session
//!   (`Mcp-Session-Id`); its requests, its `GET` event stream and
//!   `DELETE` go to the session's worker on the instance that issued it
//!   (HAProxy sticks a session to that instance by the header). Only a
//!   session has a stream, so only a session can hold resource
//!   subscriptions ([`super::subscriptions`]).
//! * **stateless**: any other request without a session id is answered
//!   on its own (plain JSON), by any instance, as before sessions existed:
//!   a one-off `tools/call` needs no handshake.
//!
//! A session idle for [`SESSION_KEEP_ALIVE`] ends; an instance holds at
//! most [`MAX_SESSIONS`] (more `initialize`s get 503 `too_many_connections`).
//! A session belongs to the token's `sub` that opened it: another caller
//! presenting its id gets the 404 of an unknown session; one `sub` holds
//! at most [`MAX_SESSIONS_PER_CALLER`] (429 `too_many_connections`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::Value;
use tower::ServiceExt;

use super::subscriptions::Subscriptions;
use super::{Caller, HubTools, oauth};
use crate::hub::Hub;
use crate::protocol::ErrorCode;
use crate::server::auth::{Bearer, refusal};
use crate::server::{browser, rate};

/// An MCP session ends after this long without a request or open stream.
pub const SESSION_KEEP_ALIVE: Duration = Duration::from_secs(600);
/// MCP sessions one instance holds at most.
pub const MAX_SESSIONS: usize = 1000;
/// MCP sessions one token's `sub` may hold on an instance (an app with a
/// few windows open), so one caller cannot take every session.
pub const MAX_SESSIONS_PER_CALLER: usize = 16;

const SESSION_HEADER: &str = "mcp-session-id";

/// The two services and what decides between them.
#[derive(Clone)]
struct Services {
    sessions: StreamableHttpService<HubTools, LocalSessionManager>,
    manager: Arc<LocalSessionManager>,
    stateless: StreamableHttpService<HubTools, NeverSessionManager>,
    owners: Arc<Owners>,
}

/// Who opened each MCP session (the token's `sub`; None without auth): a
/// session id is usable only by its owner, so a leaked id lets nobody
/// else read its stream, subscribe into it or end it.
#[derive(Default)]
struct Owners(std::sync::Mutex<std::collections::HashMap<String, Option<String>>>);

impl Owners {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Option<String>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `caller` may use session `id` (an id not recorded here is
    /// left to the SDK, which answers 404 for a session it does not hold).
    fn allows(&self, id: &str, caller: Option<&str>) -> bool {
        self.map()
            .get(id)
            .is_none_or(|owner| owner.as_deref() == caller)
    }

    /// Whether ended sessions should be forgotten: the map outgrew what
    /// the instance may hold.
    fn full(&self) -> bool {
        self.map().len() >= 2 * MAX_SESSIONS
    }

    /// Keeps only the sessions in `live`.
    fn prune(&self, live: &std::collections::HashSet<String>) {
        self.map().retain(|id, _| live.contains(id));
    }

    /// How many of `live`'s sessions `owner` opened.
    fn held_by(&self, owner: &str, live: &std::collections::HashSet<String>) -> usize {
        self.map()
            .iter()
            .filter(|(id, o)| o.as_deref() == Some(owner) && live.contains(*id))
            .count()
    }

    fn record(&self, id: String, owner: Option<String>) {
        self.map().insert(id, owner);
    }
}

/// A POST's JSON-RPC method, read by [`authenticate`] for [`dispatch`].
#[derive(Clone)]
struct Initialize(bool);

/// `/mcp`: the origin and bearer checks, the REST rate limit (a bucket map
/// of its own), then the session or the stateless service.
pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    let base = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(hub.config().max_rest_body_bytes)
        .with_cancellation_token(hub.shutdown().child_token())
        // `Host` is checked for every route, this one included, against
        // ALLOWED_HOSTS (`super::browser::allowed_host`): one list, one answer.
        .disable_allowed_hosts();
    // The call counter's series start at 0 (dashboards and rate() see
    // them before the first call).
    for tool in super::TOOLS
        .iter()
        .map(|t| t.name.as_ref())
        .chain(["unknown"])
    {
        for outcome in ["ok", "error"] {
            hub.metrics()
                .mcp_tool_calls
                .with_label_values(&[tool, outcome]);
        }
    }
    let subscriptions = Subscriptions::new(hub.clone());
    let tools = HubTools {
        hub: hub.clone(),
        subscriptions,
    };
    let stateless = {
        let tools = tools.clone();
        StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(NeverSessionManager::default()),
            base.clone()
                .with_legacy_session_mode(false)
                .with_json_response(true)
                .with_sse_keep_alive(None),
        )
    };
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(SESSION_KEEP_ALIVE);
    let manager = Arc::new(manager);
    let sessions = StreamableHttpService::new(
        move || Ok(tools.clone()),
        manager.clone(),
        base.with_legacy_session_mode(true)
            // Proxies close quiet streams: HAProxy's `timeout tunnel` is 1 h,
            // others' idle timeouts are shorter.
            .with_sse_keep_alive(Some(Duration::from_secs(15))),
    );
    let services = Services {
        sessions,
        manager,
        stateless,
        owners: Arc::default(),
    };
    let limit = Arc::new(rate::RestRateLimit::new(hub.config()));
    Router::new()
        .route(
            "/mcp",
            axum::routing::any(move |request: Request| dispatch(services.clone(), request)),
        )
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (limit, hub.clone()),
            rate::limit,
        ))
        .merge(oauth::routes(hub))
}

/// Sessions' requests (and `initialize`, which opens one) to the session
/// service, the rest to the stateless one.
async fn dispatch(services: Services, request: Request) -> Response {
    let has_session = request.headers().contains_key(SESSION_HEADER);
    let initialize = request
        .extensions()
        .get::<Initialize>()
        .is_some_and(|i| i.0);
    let stateful = has_session || initialize || request.method() != Method::POST;
    if !stateful {
        return match services.stateless.oneshot(request).await {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        };
    }
    let caller = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.0.as_ref())
        .map(|identity| identity.sub.clone());
    if let Some(id) = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        && !services.owners.allows(id, caller.as_deref())
    {
        // As for an unknown session: no hint that the id exists.
        return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
    }
    let opens = initialize && !has_session;
    if opens {
        let live: std::collections::HashSet<String> = services
            .manager
            .sessions
            .read()
            .await
            .keys()
            .map(|k| k.to_string())
            .collect();
        if live.len() >= MAX_SESSIONS {
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TooManyConnections,
                format!("this instance holds {MAX_SESSIONS} MCP sessions; try again later"),
            );
        }
        if let Some(sub) = caller.as_deref()
            && services.owners.held_by(sub, &live) >= MAX_SESSIONS_PER_CALLER
        {
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                format!(
                    "this token holds {MAX_SESSIONS_PER_CALLER} MCP sessions here: end one (DELETE) or let it idle out"
                ),
            );
        }
        if services.owners.full() {
            services.owners.prune(&live);
        }
    }
    let response = match services.sessions.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    };
    if opens
        && let Some(id) = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        services.owners.record(id.to_string(), caller);
    }
    response
}

/// Browser `Origin` as for the WebSocket upgrade (403), then the token as
/// for REST, plus the audience (401 with the OAuth challenge), then the
/// scope the request needs (403 `insufficient_scope`): refused before any
/// MCP message is handled. A POST's body is read here (within the REST
/// body limit) to see what it does, and handed on as it came.
async fn authenticate(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    if !browser::origin_allowed(req.headers(), &hub.config().allowed_origins) {
        hub.metrics().error(ErrorCode::ForbiddenOrigin);
        return browser::forbidden_origin();
    }
    // Verified once, by the rate limit's middleware in front of this one.
    let (mut parts, body) = req.into_parts();
    let identity = match Bearer::of(&hub, &mut parts).await.identity() {
        Ok(identity) => identity,
        Err(refusal) => {
            let presented = parts.headers.contains_key(header::AUTHORIZATION);
            return oauth::unauthorized(&hub, *refusal, presented);
        }
    };
    if let Some(identity) = &identity
        && !oauth::audience_ok(&hub, identity)
    {
        return oauth::wrong_audience(&hub);
    }
    let limit = hub.config().max_rest_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is over {limit} bytes"),
        );
    };
    // Parsed once here; the SDK parses again for itself. Not JSON: the SDK
    // answers the parse error, and nothing needs a scope.
    let message: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(identity) = &identity
        && let Some(scope) = oauth::required_scope(&message)
        && !identity.has_scope(scope)
    {
        return oauth::insufficient_scope(&hub, scope);
    }
    parts
        .extensions
        .insert(Initialize(message["method"] == "initialize"));
    parts.extensions.insert(Caller(identity));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
        .into_response()
}
