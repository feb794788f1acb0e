//! The network surface: the axum router (WebSocket at `/` and `/ws`,
//! health, readiness, metrics, REST, the MCP endpoint at `/mcp`, the pages
//! and their scripts, [`assets`]), the listener, and graceful shutdown.
//! Every route first checks `Host` against `ALLOWED_HOSTS`; what is checked
//! before an upgrade (Origin, connection caps) and the pages' security
//! headers are in [`browser`]; the upgrade itself in [`upgrade`], over the
//! shared sockets of [`listener`], which the accept loop ([`accept`])
//! admits, watches and sheds. Every REST route is registered through
//! `utoipa_axum`, so it is in the OpenAPI document ([`openapi`]); the rest
//! are listed in [`openapi::NON_REST_ROUTES`]. Every request, matched or
//! not, gets a request id, per-route metrics, an access log line and (with
//! traces on) a span ([`observe`]).

pub mod accept;
pub mod admin;
pub mod assets;
pub mod asyncapi;
pub mod auth;
pub mod browser;
pub mod connection;
pub mod feed;
pub mod http;
pub mod listener;
pub mod mcp;
pub mod media;
pub mod observe;
pub mod openapi;
pub mod rate;
pub mod rest;
pub mod upgrade;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;

pub fn router(hub: Arc<Hub>) -> Router {
    let slots = browser::ConnectionSlots::new(
        hub.config().max_connections,
        hub.config().limits.max_connections_per_identity,
    );
    let (api, doc) = rest_api(&hub).split_for_parts();
    // The pages' CSP hashes are computed now, not by a first visitor.
    LazyLock::force(&WEB_PAGE);
    LazyLock::force(&admin::DASHBOARD);
    let observed = hub.clone();
    let app = Router::new()
        .route("/", get(root))
        .route("/ws", get(ws_upgrade))
        // Every WebSocket holds a slot: clients and dashboard feeds.
        .merge(admin::pages())
        .layer(Extension(slots))
        .route("/ui", get(web_page))
        .route("/assets/{name}", get(assets::serve))
        .merge(mcp::routes(&hub))
        .merge(api)
        .layer(Extension(openapi::Document::new(&doc)))
        // Outermost: a request for a name this hub does not serve reaches
        // no handler (DNS rebinding).
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            browser::allowed_host,
        ))
        .with_state(hub);
    // Around all of it, the fallback included: request ids, per-route
    // metrics, the access log and trace spans ([`observe`]).
    observe::layer(app, observed)
}

/// Every REST route, with its OpenAPI description.
pub fn rest_api(hub: &Arc<Hub>) -> utoipa_axum::router::OpenApiRouter<Arc<Hub>> {
    use utoipa::OpenApi;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(http::routes())
        // The session and admin APIs share one rate limit and CORS policy.
        .merge(rest::limited(
            hub,
            rest::routes()
                .merge(media::routes(hub))
                .merge(admin::routes()),
        ))
        .merge(webhooks::routes())
}

/// The original clients connect to `ws://host:8002/`; a browser opening the
/// same address gets the web client.
async fn root(
    state: State<Arc<Hub>>,
    slots: Extension<browser::ConnectionSlots>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<upgrade::Upgrade, Response>,
) -> Response {
    match ws {
        Ok(ws) => ws_upgrade(state, slots, headers, uri, ws).await,
        Err(_) => web_page().await,
    }
}

static WEB_PAGE: LazyLock<browser::Page> =
    LazyLock::new(|| browser::Page::new(include_str!("../../web/index.html")));

async fn web_page() -> Response {
    WEB_PAGE.response()
}

async fn ws_upgrade(
    State(hub): State<Arc<Hub>>,
    Extension(slots): Extension<browser::ConnectionSlots>,
    headers: HeaderMap,
    uri: Uri,
    ws: upgrade::Upgrade,
) -> Response {
    if !browser::origin_allowed(&headers, &hub.config().allowed_origins) {
        hub.metrics()
            .error(crate::protocol::ErrorCode::ForbiddenOrigin);
        return browser::forbidden_origin();
    }
    // Before the upgrade: a missing or bad token is a plain HTTP 401.
    let identity = match auth::upgrade_identity(&hub, &headers, &uri).await {
        Ok(identity) => identity,
        Err(refusal) => return refusal,
    };
    let slot = match slots.take(identity.as_ref(), hub.metrics()) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    ws.on_upgrade(move |socket| {
        let tracker = hub.connections().clone();
        tracker.track_future(async move {
            connection::handle_socket(hub, socket, identity).await;
            // The slot is free once the connection is gone.
            drop(slot);
        })
    })
}

/// Longest wait at shutdown for the dispatcher to hand out the events it
/// holds ([`Hub::settle_dispatch`]).
const SETTLE_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves until `shutdown` completes, then drains: /ready turns 503, every
/// client gets close 1001, and the call returns within the shutdown timeout.
/// Like mini-redis's `server::run`, the caller decides what "shutdown"
/// means: the process passes SIGTERM/SIGINT, a test passes a channel.
pub async fn serve(
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let state = match (&hub.config().redis, &hub.config().data_dir) {
        (Some(_), _) => "redis".to_string(),
        (None, Some(dir)) => dir.display().to_string(),
        (None, None) => crate::config::MEMORY_ONLY.to_string(),
    };
    tracing::info!(%addr, instance = hub.instance(), %state, "mcp-hub listening on {addr}");
    hub.mark_started();
    let app = router(hub.clone());
    let drain = hub.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {
                tracing::info!("shutdown requested: draining connections");
                // Events already acknowledged reach the local clients'
                // queues first; each connection then writes its queue
                // before its close 1001.
                drain.settle_dispatch(SETTLE_BOUND).await;
                drain.shutdown().cancel();
            }
            _ = drain.shutdown().cancelled() => {}
        }
    });
    // HTTP connections (each finishes its request in flight on shutdown);
    // upgraded WebSockets are tracked by the hub (each sends close 1001 and
    // leaves presence).
    let http = TaskTracker::new();
    accept::run(listener, app, hub.clone(), http.clone()).await;
    http.close();
    hub.connections().close();
    let drained = async {
        http.wait().await;
        hub.connections().wait().await;
    };
    if tokio::time::timeout(hub.config().shutdown_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = hub.config().shutdown_timeout.as_millis() as u64,
            "shutdown timeout reached; exiting with connections still open"
        );
    }
    Ok(())
}

/// SIGTERM and SIGINT, registered with the OS when created.
pub struct ShutdownSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    #[cfg(unix)]
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    pub fn install() -> std::io::Result<Self> {
        Ok(ShutdownSignals {})
    }

    #[cfg(unix)]
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {},
            _ = self.interrupt.recv() => {},
        }
    }

    #[cfg(not(unix))]
    pub async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
