//! How the hub reaches its Redis in each [`RedisTopology`]: the pool of
//! command connections ([`RedisPool`]) and the [`Connector`] that opens the
//! dedicated ones (the broker's publisher and pub/sub subscriber).
//!
//! On a Redis Cluster every connection (pooled or dedicated) is a cluster
//! connection: it routes each command to the node owning its slot and
//! follows `MOVED`/`ASK`, slot migrations and failovers by itself; the
//! subscriber's is a RESP3 one for sharded pub/sub.
//!
//! With Sentinel, every new connection asks the Sentinels for the current
//! master (and checks that the node says `ROLE master`), so a reconnect after
//! a failover lands on the promoted replica. A watcher task listens to the
//! Sentinels' `+switch-master` announcements: the pool's connections made
//! before it are dropped (idle ones at once, busy ones when they come back)
//! and the dedicated connections' owners are told ([`MasterChanges`]);
//! the broker's publisher already holds its events from the moment a
//! replica is about to be promoted. So nobody keeps writing to a master
//! that is being replaced (after a manual failover or a partition it still
//! accepts writes until Sentinel demotes it, and those writes are then
//! lost). A
//! connection that meets `READONLY` (it still points at a demoted master)
//! is dropped and the pool's idle connections with it
//! ([`RedisPool::master_moved`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionLike;
use ::redis::sentinel::SentinelClient;
use ::redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult};
use deadpool_redis::Runtime;
use deadpool_redis::cluster as dcluster;
use deadpool_redis::sentinel as dsentinel;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{COMMAND_TIMEOUT, RedisError, RedisErrorKind};
use crate::config::{RedisTopology, SentinelTopology};

/// Command connections, pooled; one variant per topology.
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Sentinel(dsentinel::Pool),
    /// Each connection is multiplexed over every node already.
    Cluster(dcluster::Pool),
}

/// A pooled connection of any kind; a [`ConnectionLike`] (a pipeline or
/// script on a Redis Cluster must stay in one slot: see `Keys`).
pub enum PooledConnection {
    Single(deadpool_redis::Connection),
    Sentinel(dsentinel::Connection),
    Cluster(dcluster::Connection),
}

/// A connection outside the pool (the broker's publisher); multiplexed: a
/// clone is another handle on the same connection.
#[derive(Clone)]
pub enum DedicatedConnection {
    /// To the single server or the master Sentinel names.
    Single(::redis::aio::MultiplexedConnection),
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl From<deadpool_redis::Pool> for RedisPool {
    fn from(pool: deadpool_redis::Pool) -> Self {
        RedisPool::Single(pool)
    }
}

fn pool_config(size: usize) -> deadpool_redis::PoolConfig {
    let mut pool_cfg = deadpool_redis::PoolConfig::new(size);
    pool_cfg.timeouts.wait = Some(COMMAND_TIMEOUT);
    pool_cfg.timeouts.create = Some(COMMAND_TIMEOUT);
    pool_cfg.timeouts.recycle = Some(COMMAND_TIMEOUT);
    pool_cfg
}

impl RedisPool {
    /// A connection, from the pool or newly opened (to the current master).
    /// The pools' futures are boxed: both are large, and they sit at the
    /// bottom of deep call chains (the AI coordinator's, in debug builds
    /// beyond a worker thread's stack).
    pub async fn get(&self) -> Result<PooledConnection, String> {
        match self {
            RedisPool::Single(p) => Box::pin(p.get())
                .await
                .map(PooledConnection::Single)
                .map_err(|e| e.to_string()),
            RedisPool::Sentinel(p) => Box::pin(p.get())
                .await
                .map(PooledConnection::Sentinel)
                .map_err(|e| e.to_string()),
            RedisPool::Cluster(p) => Box::pin(p.get())
                .await
                .map(PooledConnection::Cluster)
                .map_err(|e| e.to_string()),
        }
    }

    /// `conn` met `READONLY`: the node it points at is no longer the
    /// master. It is dropped instead of going back to the pool, and so are
    /// the idle connections (they point at the same node), so the next
    /// commands connect to the master Sentinel names now.
    pub fn master_moved(&self, conn: PooledConnection) {
        match conn {
            PooledConnection::Single(c) => drop(deadpool_redis::Connection::take(c)),
            PooledConnection::Sentinel(c) => drop(dsentinel::Connection::take(c)),
            PooledConnection::Cluster(c) => drop(dcluster::Connection::take(c)),
        }
        self.drop_idle();
    }

    /// Closes the idle connections (they point at a node that is no longer
    /// the master); the next commands open new ones.
    pub fn drop_idle(&self) {
        match self {
            RedisPool::Single(p) => {
                p.retain(|_, _| false);
            }
            RedisPool::Sentinel(p) => {
                p.retain(|_, _| false);
            }
            RedisPool::Cluster(p) => {
                p.retain(|_, _| false);
            }
        }
    }
}

impl ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a ::redis::Cmd,
    ) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            PooledConnection::Single(c) => c.req_packed_command(cmd),
            PooledConnection::Sentinel(c) => c.req_packed_command(cmd),
            PooledConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            PooledConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            PooledConnection::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            PooledConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            PooledConnection::Single(c) => c.get_db(),
            PooledConnection::Sentinel(c) => c.get_db(),
            PooledConnection::Cluster(c) => c.get_db(),
        }
    }
}

impl ConnectionLike for DedicatedConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a ::redis::Cmd,
    ) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            DedicatedConnection::Single(c) => c.req_packed_command(cmd),
            DedicatedConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            DedicatedConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            DedicatedConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            DedicatedConnection::Single(c) => c.get_db(),
            DedicatedConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// Opens connections outside the pool, to the current master (or, on a
/// Redis Cluster, to the nodes owning the slots).
pub enum Connector {
    Single(::redis::Client),
    Sentinel(SentinelConnector),
    /// The seed nodes.
    Cluster(Vec<String>),
}

pub struct SentinelConnector {
    /// Asks the Sentinels on every call (their answer changes at failover).
    client: tokio::sync::Mutex<SentinelClient>,
    /// What the Sentinels announced last (see [`watch_sentinels`]).
    state: watch::Sender<FailoverState>,
    /// Stops the watcher when the last backend clone goes.
    _watcher: Option<DropGuard>,
}

/// The Sentinels' latest word on the master.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct FailoverState {
    /// `+switch-master` (or an aborted failover) announcements seen.
    switches: u64,
    /// A failover is promoting a replica and has not switched yet.
    promoting: bool,
}

fn client_error(what: &'static str) -> ::redis::RedisError {
    ::redis::RedisError::from((::redis::ErrorKind::Client, what))
}

impl Connector {
    /// A client for the current master (with Sentinel, asked on every
    /// call, so a reconnection follows a failover).
    async fn client(&self) -> RedisResult<::redis::Client> {
        match self {
            Connector::Single(client) => Ok(client.clone()),
            Connector::Sentinel(s) => s.client.lock().await.async_get_client().await,
            Connector::Cluster(_) => Err(client_error("a Redis Cluster has no single master")),
        }
    }

    /// A multiplexed connection of its own.
    pub async fn dedicated(&self) -> RedisResult<DedicatedConnection> {
        match self {
            Connector::Cluster(nodes) => Ok(DedicatedConnection::Cluster(
                ::redis::cluster::ClusterClient::new(nodes.clone())?
                    .get_async_connection()
                    .await?,
            )),
            _ => Ok(DedicatedConnection::Single(
                self.client()
                    .await?
                    .get_multiplexed_async_connection()
                    .await?,
            )),
        }
    }

    /// A RESP2 pub/sub connection to the current master.
    pub async fn pubsub(&self) -> RedisResult<::redis::aio::PubSub> {
        match self {
            Connector::Cluster(_) => Err(client_error("a Redis Cluster uses sharded pub/sub")),
            _ => self.client().await?.get_async_pubsub().await,
        }
    }

    /// A RESP3 cluster connection whose pushes go to `pushes`.
    pub async fn sharded_pubsub(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>,
    ) -> RedisResult<::redis::cluster_async::ClusterConnection> {
        match self {
            Connector::Cluster(nodes) => {
                ::redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(::redis::ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .build()?
                    .get_async_connection()
                    .await
            }
            _ => Err(client_error("sharded pub/sub is for a Redis Cluster")),
        }
    }

    /// The Sentinels' announcements, from now on.
    pub fn master_changes(&self) -> MasterChanges {
        match self {
            Connector::Single(_) | Connector::Cluster(_) => MasterChanges::never(),
            Connector::Sentinel(s) => MasterChanges::watching(s.state.subscribe()),
        }
    }
}

/// What the Sentinels announce about the master.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MasterEvent {
    /// A replica is about to be promoted: the current master still takes
    /// writes, but what it takes from now on will not be on the new one.
    Promoting,
    /// The Sentinels name a new master (or gave the failover up):
    /// reconnect.
    Switched,
}

/// Announcements about the master ([`Connector::master_changes`]); never
/// resolves for a single server.
pub struct MasterChanges(Option<Watching>);

struct Watching {
    rx: watch::Receiver<FailoverState>,
    /// The switch count already reported.
    switches: u64,
    /// Whether the current promotion was reported.
    promoting: bool,
}

impl MasterChanges {
    pub fn never() -> Self {
        MasterChanges(None)
    }

    fn watching(rx: watch::Receiver<FailoverState>) -> Self {
        let now = *rx.borrow();
        MasterChanges(Some(Watching {
            rx,
            switches: now.switches,
            promoting: now.promoting,
        }))
    }

    /// Waits for the next announcement not reported yet.
    pub async fn next(&mut self) -> MasterEvent {
        let Some(w) = &mut self.0 else {
            return std::future::pending().await;
        };
        loop {
            let now = *w.rx.borrow_and_update();
            if now.switches != w.switches {
                w.switches = now.switches;
                w.promoting = now.promoting;
                return MasterEvent::Switched;
            }
            if now.promoting && !w.promoting {
                w.promoting = true;
                return MasterEvent::Promoting;
            }
            if w.rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Waits until the Sentinels name the new master (or give up).
    pub async fn switched(&mut self) {
        while self.next().await != MasterEvent::Switched {}
    }
}

/// Follows the Sentinels' failover announcements for `master` on the first
/// Sentinel that answers (the next one when it goes away):
///
/// * `+failover-state-send-slaveof-noone`: sent just before the replica is
///   told `REPLICAOF NO ONE`, so writers can hold their writes;
/// * `+switch-master` and `-failover-abort-*`: the pool's connections made
///   before it are dropped (`moved_at`), and writers reconnect.
///
/// Reconnects with a short fixed delay until `stop`.
async fn watch_sentinels(
    sentinels: Vec<ConnectionInfo>,
    master: String,
    pool: RedisPool,
    state: watch::Sender<FailoverState>,
    moved_at: Arc<Mutex<Option<Instant>>>,
    stop: CancellationToken,
) {
    let mut next = 0;
    while !stop.is_cancelled() {
        let info = sentinels[next % sentinels.len()].clone();
        next += 1;
        let subscribed = async {
            let mut pubsub = ::redis::Client::open(info)?.get_async_pubsub().await?;
            pubsub
                .subscribe("+failover-state-send-slaveof-noone")
                .await?;
            pubsub.subscribe("+switch-master").await?;
            pubsub.psubscribe("-failover-abort-*").await?;
            RedisResult::Ok(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(COMMAND_TIMEOUT, subscribed).await {
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(message) = message else { break };
                // Every announcement names the master by its name, as one
                // word: "<name> <old ip> <old port> <new ip> <new port>",
                // "slave <ip:port> <ip> <port> @ <name> <ip> <port>", ...
                let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                if !payload.split(' ').any(|word| word == master) {
                    continue;
                }
                let channel = message.get_channel_name();
                if channel == "+failover-state-send-slaveof-noone" {
                    tracing::warn!(master = %master, %payload, "redis sentinel: promoting a replica; holding session events");
                    state.send_modify(|s| s.promoting = true);
                    continue;
                }
                tracing::warn!(master = %master, %channel, %payload, "redis sentinel: the master moved; reconnecting");
                *moved_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                pool.drop_idle();
                state.send_modify(|s| {
                    s.switches += 1;
                    s.promoting = false;
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn config_error(e: impl ToString) -> RedisError {
    RedisError::new("connect", RedisErrorKind::Config(e.to_string()))
}

/// Builds the pool and the connector of a topology. Nothing connects yet:
/// an unreachable Redis or Sentinel shows up at the first command.
pub fn connect(topology: &RedisTopology) -> Result<(RedisPool, Connector), RedisError> {
    match topology {
        RedisTopology::Single { url } => {
            let client = ::redis::Client::open(url.as_str()).map_err(config_error)?;
            let mut cfg = deadpool_redis::Config::from_url(url.as_str());
            cfg.pool = Some(pool_config(32));
            let pool = cfg
                .create_pool(Some(Runtime::Tokio1))
                .map_err(config_error)?;
            Ok((RedisPool::Single(pool), Connector::Single(client)))
        }
        RedisTopology::Cluster { nodes } => {
            // Checked here (URLs parse), connected on first use.
            ::redis::cluster::ClusterClient::new(nodes.clone()).map_err(config_error)?;
            let mut cfg = dcluster::Config::from_urls(nodes.clone());
            // Each connection is multiplexed over every node already.
            cfg.pool = Some(pool_config(8));
            let pool = cfg
                .create_pool(Some(Runtime::Tokio1))
                .map_err(config_error)?;
            Ok((RedisPool::Cluster(pool), Connector::Cluster(nodes.clone())))
        }
        RedisTopology::Sentinel(s) => {
            let manager = dsentinel::Manager::new(
                sentinel_infos(s)?,
                s.master.clone(),
                Some(node_info(s)),
                dsentinel::SentinelServerType::Master,
            )
            .map_err(config_error)?;
            // A connection made before the latest `+switch-master` points
            // at the old master: it fails its recycle check and is dropped.
            let moved_at: Arc<Mutex<Option<Instant>>> = Arc::default();
            let moved = moved_at.clone();
            let pool = dsentinel::Pool::builder(manager)
                .config(pool_config(32))
                .post_recycle(dsentinel::Hook::sync_fn(move |_, metrics| {
                    match *moved.lock().unwrap_or_else(|p| p.into_inner()) {
                        Some(at) if metrics.created < at => Err(dsentinel::HookError::message(
                            "made before the master moved",
                        )),
                        _ => Ok(()),
                    }
                }))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(config_error)?;
            let client = SentinelClient::build(
                sentinel_infos(s)?,
                s.master.clone(),
                Some(node_info(s).into()),
                ::redis::sentinel::SentinelServerType::Master,
            )
            .map_err(config_error)?;
            let pool = RedisPool::Sentinel(pool);
            let (state, _) = watch::channel(FailoverState::default());
            // Outside a runtime (a backend built in sync code) nothing
            // watches: reconnections still ask the Sentinels.
            let watcher = tokio::runtime::Handle::try_current().ok().map(|runtime| {
                let stop = CancellationToken::new();
                runtime.spawn(watch_sentinels(
                    sentinel_infos(s).unwrap_or_default(),
                    s.master.clone(),
                    pool.clone(),
                    state.clone(),
                    moved_at,
                    stop.clone(),
                ));
                stop.drop_guard()
            });
            Ok((
                pool,
                Connector::Sentinel(SentinelConnector {
                    client: tokio::sync::Mutex::new(client),
                    state,
                    _watcher: watcher,
                }),
            ))
        }
    }
}

/// The Sentinel nodes, with the Sentinels' own password.
fn sentinel_infos(s: &SentinelTopology) -> Result<Vec<ConnectionInfo>, RedisError> {
    s.sentinels
        .iter()
        .map(|(host, port)| {
            let addr = if s.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            };
            let info = addr.into_connection_info().map_err(config_error)?;
            Ok(match &s.sentinel_password {
                Some(password) => {
                    let settings = info.redis_settings().clone().set_password(password);
                    info.set_redis_settings(settings)
                }
                None => info,
            })
        })
        .collect()
}

/// How to reach the master (and replicas) the Sentinels name.
fn node_info(s: &SentinelTopology) -> dsentinel::SentinelNodeConnectionInfo {
    dsentinel::SentinelNodeConnectionInfo {
        tls_mode: s.tls.then_some(dsentinel::TlsMode::Secure),
        redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
            db: s.db,
            username: s.username.clone(),
            password: s.password.clone(),
            protocol: Default::default(),
        }),
    }
}
