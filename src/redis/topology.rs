//! How the hub reaches its Redis in each [`RedisTopology`]: the pool of
//! command connections ([`RedisPool`]) and the [`Connector`] that opens the
//! dedicated ones (the broker's publisher and pub/sub subscriber).
//!
//! With Sentinel, every new connection asks the Sentinels for the current
//! master (and checks that the node says `ROLE master`), so a reconnect after
//! a failover lands on the promoted replica. A connection that meets
//! `READONLY` (it still points at a demoted master) is dropped and the
//! pool's idle connections with it ([`RedisPool::master_moved`]).

use ::redis::aio::ConnectionLike;
use ::redis::sentinel::SentinelClient;
use ::redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult};
use deadpool_redis::Runtime;
use deadpool_redis::sentinel as dsentinel;

use super::{COMMAND_TIMEOUT, RedisError, RedisErrorKind};
use crate::config::{RedisTopology, SentinelTopology};

/// Command connections, pooled; one variant per topology.
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Sentinel(dsentinel::Pool),
}

/// A pooled connection of either kind; a [`ConnectionLike`].
pub enum PooledConnection {
    Single(deadpool_redis::Connection),
    Sentinel(dsentinel::Connection),
}

impl From<deadpool_redis::Pool> for RedisPool {
    fn from(pool: deadpool_redis::Pool) -> Self {
        RedisPool::Single(pool)
    }
}

fn pool_config() -> deadpool_redis::PoolConfig {
    let mut pool_cfg = deadpool_redis::PoolConfig::new(32);
    pool_cfg.timeouts.wait = Some(COMMAND_TIMEOUT);
    pool_cfg.timeouts.create = Some(COMMAND_TIMEOUT);
    pool_cfg.timeouts.recycle = Some(COMMAND_TIMEOUT);
    pool_cfg
}

impl RedisPool {
    /// A connection, from the pool or newly opened (to the current master).
    pub async fn get(&self) -> Result<PooledConnection, String> {
        match self {
            RedisPool::Single(p) => p
                .get()
                .await
                .map(PooledConnection::Single)
                .map_err(|e| e.to_string()),
            RedisPool::Sentinel(p) => p
                .get()
                .await
                .map(PooledConnection::Sentinel)
                .map_err(|e| e.to_string()),
        }
    }

    /// `conn` met `READONLY`: the node it points at is no longer the
    /// master. It is dropped instead of going back to the pool, and so are
    /// the idle connections (they point at the same node), so the next
    /// commands connect to the master Sentinel names now.
    pub fn master_moved(&self, conn: PooledConnection) {
        match (self, conn) {
            (RedisPool::Single(p), PooledConnection::Single(c)) => {
                drop(deadpool_redis::Connection::take(c));
                p.retain(|_, _| false);
            }
            (RedisPool::Sentinel(p), PooledConnection::Sentinel(c)) => {
                drop(dsentinel::Connection::take(c));
                p.retain(|_, _| false);
            }
            _ => {}
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            PooledConnection::Single(c) => c.get_db(),
            PooledConnection::Sentinel(c) => c.get_db(),
        }
    }
}

/// Opens connections outside the pool, to the current master.
pub enum Connector {
    Single(::redis::Client),
    /// Asks the Sentinels on every call (their answer changes at failover).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Connector {
    /// A client for the current master.
    pub async fn client(&self) -> RedisResult<::redis::Client> {
        match self {
            Connector::Single(client) => Ok(client.clone()),
            Connector::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
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
            cfg.pool = Some(pool_config());
            let pool = cfg
                .create_pool(Some(Runtime::Tokio1))
                .map_err(config_error)?;
            Ok((RedisPool::Single(pool), Connector::Single(client)))
        }
        RedisTopology::Sentinel(s) => {
            let manager = dsentinel::Manager::new(
                sentinel_infos(s)?,
                s.master.clone(),
                Some(node_info(s)),
                dsentinel::SentinelServerType::Master,
            )
            .map_err(config_error)?;
            let pool = dsentinel::Pool::builder(manager)
                .config(pool_config())
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
            Ok((
                RedisPool::Sentinel(pool),
                Connector::Sentinel(tokio::sync::Mutex::new(client)),
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
