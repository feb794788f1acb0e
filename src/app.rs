//! Assembles a hub from its configuration: picks the store, broker,
//! connector and AI provider for standalone or cluster mode.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::Authenticator;
use crate::broker::local::LocalBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, Inbound};
use crate::config::{ConfigError, ConnectorKind, HubConfig};
use crate::hub::{Hub, HubParts};
use crate::membership::Membership;
use crate::membership::local::LocalMembership;
use crate::membership::redis::RedisMembership;
use crate::metrics::Metrics;
use crate::redis::RedisBackend;
use crate::server::ShutdownSignals;
use crate::store::SessionStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::whatsapp::cloud_api::CloudApiConnector;
use crate::whatsapp::simulated::{SimulatedConnector, builtin_contacts, load_contacts};
use crate::whatsapp::{NoConnector, WhatsAppConnector};

/// Errors that stop the hub from starting; each names its setting.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} (MCP_SERVER_HOST/MCP_SERVER_PORT): {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// The process's hub: binds, serves until SIGTERM/SIGINT, drains.
pub async fn run(config: HubConfig) -> Result<(), StartupError> {
    let (hub, listener) = bind(config).await?;
    // Handlers are installed before the hub reports itself listening and
    // ready, so a SIGTERM at any moment after that drains cleanly.
    let signals = ShutdownSignals::install().map_err(|source| StartupError::Bind {
        addr: "signal handlers".into(),
        source,
    })?;
    serve(hub, listener, signals.recv())
        .await
        .map_err(|source| StartupError::Bind {
            addr: "listener".into(),
            source,
        })
}

/// Builds the hub and binds its listener (port 0 picks a free one; read it
/// back with `listener.local_addr()`).
pub async fn bind(config: HubConfig) -> Result<(Arc<Hub>, TcpListener), StartupError> {
    let socket_addr = std::net::SocketAddr::new(config.host, config.port);
    let addr = socket_addr.to_string();
    let hub = build(config).await?;
    let listener = listen(socket_addr).map_err(|source| StartupError::Bind { addr, source })?;
    // Once it is certain the hub runs (a refused start prints one line).
    if hub.config().auth.open_by_default {
        tracing::warn!(
            host = %hub.config().host,
            "authentication is off (no AUTH_JWT_SECRET, loopback host): anyone who can reach this port may use every session"
        );
    }
    Ok((hub, listener))
}

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`). A burst of connects larger than the queue drops
/// SYNs, and a dropped SYN is retried after a second: the accept loop sheds
/// what it must itself, so the queue in front of it is deep.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds as `TcpListener::bind` does (SO_REUSEADDR), with [`LISTEN_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `shutdown` completes, then drains the connections and
/// flushes their last events to the cluster.
pub async fn serve(
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = crate::server::serve(hub.clone(), listener, shutdown).await;
    // Every connection has closed (or the drain's bound passed): leave the
    // cluster (the others reap what this instance could not remove), and
    // flush their last events.
    hub.leave_cluster().await;
    hub.close_broker().await;
    served
}

pub async fn build(config: HubConfig) -> Result<Arc<Hub>, StartupError> {
    let metrics = Arc::new(Metrics::new(&config.instance_id));
    let contacts = match &config.contacts_file {
        Some(path) => load_contacts(path).map_err(|reason| ConfigError {
            setting: "CONTACTS_FILE",
            reason: format!("{}: {reason}", path.display()),
        })?,
        // A real account starts with no made-up contacts.
        None if config.connector == ConnectorKind::Simulated => builtin_contacts(),
        None => Vec::new(),
    };
    let max_name = config.limits.max_name_chars;
    if let Some(long) = contacts.iter().find(|c| {
        c.name.chars().count() > max_name
            || c.phone
                .as_ref()
                .is_some_and(|p| p.chars().count() > max_name)
    }) {
        return Err(ConfigError {
            setting: "CONTACTS_FILE",
            reason: format!(
                "contact `{}…` has a name or phone longer than MAX_NAME_CHARS ({max_name})",
                long.name.chars().take(32).collect::<String>()
            ),
        }
        .into());
    }
    if contacts.len() > config.max_contacts_per_session {
        // Every new session is seeded with these: they must fit.
        let (setting, what) = match &config.contacts_file {
            Some(_) => ("CONTACTS_FILE", "lists"),
            None => ("MAX_CONTACTS_PER_SESSION", "is below the built-in"),
        };
        return Err(ConfigError {
            setting,
            reason: format!(
                "{what} {} contacts; a session holds at most {} (MAX_CONTACTS_PER_SESSION)",
                contacts.len(),
                config.max_contacts_per_session
            ),
        }
        .into());
    }
    let (incoming_tx, incoming_rx) = mpsc::channel(1024);
    let (inbound_tx, inbound_rx) = mpsc::channel(4096);
    let dispatch = inbound_tx.downgrade();
    let connector: Arc<dyn WhatsAppConnector> = match config.connector {
        ConnectorKind::Simulated => Arc::new(SimulatedConnector::new(
            contacts,
            config.auto_reply.clone(),
            config.auto_reply_delay,
            incoming_tx,
            config.whatsapp.media_cache_bytes,
        )),
        ConnectorKind::CloudApi => {
            let settings = config.whatsapp.cloud_api.clone().ok_or(ConfigError {
                setting: "WHATSAPP_CONNECTOR",
                reason: "cloud_api without its settings".into(),
            })?;
            // A send, retries included, is bounded like an agent call.
            Arc::new(CloudApiConnector::new(
                settings,
                contacts,
                config.agent_timeout,
            ))
        }
        ConnectorKind::None => Arc::new(NoConnector::new(contacts)),
    };
    // Every setting is checked before the state is opened: a refused one
    // leaves no data directory behind and stays the only line.
    let redis_backend = match &config.redis {
        Some(topology) => Some(
            RedisBackend::new(topology, &config.redis_key_prefix, metrics.clone()).map_err(
                |e| ConfigError {
                    setting: topology.setting(),
                    reason: e.kind.to_string(),
                },
            )?,
        ),
        None => None,
    };
    let ai = crate::ai::build_coordinator(&config.ai, metrics.clone(), redis_backend.clone())?;
    let auth = Arc::new(Authenticator::from_settings(&config.auth, metrics.clone()).await?);
    let mut redis_membership = None;
    let (store, broker, membership, approvals): (
        Arc<dyn SessionStore>,
        Arc<dyn Broker>,
        _,
        Approvals,
    ) = match redis_backend {
        None => {
            let (store, broker, membership) = standalone_seams(&config, inbound_tx)?;
            let approvals = Arc::new(crate::approvals::memory::MemoryApprovals::new());
            (store, broker, membership, approvals)
        }
        Some(backend) => {
            tracing::info!(instance = %config.instance_id, prefix = %config.redis_key_prefix, redis = ?config.redis, "cluster mode: state in Redis");
            let store: Arc<dyn SessionStore> = Arc::new(redis_store(&config, backend.clone()));
            let membership = Arc::new(RedisMembership::new(
                backend.clone(),
                store.clone(),
                config.instance_id.clone(),
                config.heartbeat,
                config.presence_ttl,
            ));
            redis_membership = Some(membership.clone());
            let broker = Arc::new(RedisBroker::start(
                backend.clone(),
                config.instance_id.clone(),
                inbound_tx,
                config.session_log_len,
                config.session_log_ttl,
            ));
            let approvals = Arc::new(crate::approvals::redis::RedisApprovals::new(backend));
            (store, broker, membership, approvals)
        }
    };
    let jwks_refresh = config.auth.jwks_refresh;
    // Debug: a refused setting or a taken port must stay the only line.
    tracing::debug!(connector = config.connector.as_str(), "whatsapp connector");
    let hub = Hub::new(HubParts {
        config,
        store,
        broker,
        membership,
        connector,
        ai,
        metrics,
        auth: auth.clone(),
        approvals,
    });
    auth.spawn_refresh(jwks_refresh, hub.shutdown().clone());
    hub.spawn_background(inbound_rx, dispatch, incoming_rx);
    if let Some(m) = redis_membership {
        // Before anyone registers here: what an earlier run under this id
        // left is this instance's to reap.
        match m.reap_earlier_run().await {
            Ok(reaped) => hub.announce_reaped(&reaped),
            Err(partial) => {
                hub.announce_reaped(&partial.reaped);
                tracing::warn!(error = %partial.error, "could not reap an earlier run of this instance; another hub does after the TTL");
            }
        }
        crate::cluster::driver::spawn(m, hub.clone());
    }
    Ok(hub)
}

/// The store, log and membership a hub runs on.
type Seams = (Arc<dyn SessionStore>, Arc<dyn Broker>, Arc<dyn Membership>);
/// Where held sends are kept.
type Approvals = Arc<dyn crate::approvals::ApprovalStore>;

/// The standalone store, log and membership: durable in the data
/// directory (DATA_DIR), or memory only.
fn standalone_seams(
    config: &HubConfig,
    inbound_tx: mpsc::Sender<Inbound>,
) -> Result<Seams, ConfigError> {
    let membership = Arc::new(LocalMembership::new(config.instance_id.clone()));
    let Some(dir) = &config.data_dir else {
        return Ok((
            Arc::new(MemoryStore::with_idempotency_budget(
                config.history_limit,
                config.limits.idempotency_max_total_bytes,
            )),
            Arc::new(LocalBroker::new(
                config.instance_id.clone(),
                inbound_tx,
                config.session_log_len,
                config.session_log_ttl,
            )),
            membership,
        ));
    };
    let (store, journal, snapshot) = data_dir_store(config, dir)?;
    let broker = LocalBroker::restored(
        config.instance_id.clone(),
        inbound_tx,
        config.session_log_len,
        config.session_log_ttl,
        journal,
        &snapshot,
    );
    Ok((Arc::new(store), Arc::new(broker), membership))
}

/// The session store of a cluster member, on `backend`.
pub fn redis_store(config: &HubConfig, backend: RedisBackend) -> RedisStore {
    RedisStore::new(
        backend,
        config.instance_id.clone(),
        config.history_limit,
        config.presence_ttl.as_millis() as u64,
    )
    .with_session_idle_ttl(config.limits.session_idle_ttl)
}

/// Opens the data directory `dir`: the store it holds, written through its
/// journal from now on, and what was read back (for the log). An unusable
/// directory is a DATA_DIR error.
pub fn data_dir_store(
    config: &HubConfig,
    dir: &std::path::Path,
) -> Result<
    (
        MemoryStore,
        crate::durable::Journal,
        crate::durable::Snapshot,
    ),
    ConfigError,
> {
    let (journal, snapshot) = crate::durable::Journal::open(dir).map_err(|e| ConfigError {
        setting: "DATA_DIR",
        reason: e.to_string(),
    })?;
    // Debug: a refused setting must stay the only line (the listening line
    // names the data directory).
    tracing::debug!(path = %journal.path().display(), sessions = snapshot.sessions.len(), "standalone: state in the data directory");
    let store = MemoryStore::restored(
        config.history_limit,
        config.limits.idempotency_max_total_bytes,
        journal.clone(),
        &snapshot,
    );
    Ok((store, journal, snapshot))
}
