//! Which instances are alive, and cleaning up after the ones that died.
//!
//! Each instance heartbeats into a ZSET every `HEARTBEAT_MS`. An instance
//! silent for `PRESENCE_TTL_MS` is dead: the first live instance to notice
//! removes its clients from presence (announcing `client_left` exactly once
//! per client, thanks to an atomic take) and releases its agents. So the
//! clients of a crashed instance disappear within PRESENCE_TTL_MS plus one
//! heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::conn::RedisBackend;
use crate::hub::Hub;
use crate::protocol::{ClientInfo, HubError, now_millis};
use crate::store::AgentRef;
use crate::store::redis::{RELEASE_AGENT_IF, TAKE_PRESENCE, member_tag};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub instance: String,
    pub clients: usize,
    pub started_at: u64,
    pub last_heartbeat: u64,
}

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Live instances, this one included.
    async fn instances(&self, hub: &Hub) -> Result<Vec<InstanceInfo>, HubError>;
    /// False while the backend cannot be reached.
    fn is_healthy(&self) -> bool;
    /// The broker connection epoch this instance's clients were last
    /// announced for (see `Broker::connection_epoch`).
    fn synced_epoch(&self) -> u64 {
        0
    }
    fn mode(&self) -> &'static str;
}

/// Standalone: the only instance is this one.
pub struct LocalMembership {
    started_at: u64,
}

impl LocalMembership {
    pub fn new() -> Self {
        LocalMembership {
            started_at: now_millis(),
        }
    }
}

impl Default for LocalMembership {
    fn default() -> Self {
        LocalMembership::new()
    }
}

#[async_trait]
impl Membership for LocalMembership {
    async fn instances(&self, hub: &Hub) -> Result<Vec<InstanceInfo>, HubError> {
        Ok(vec![InstanceInfo {
            instance: hub.instance().to_string(),
            clients: hub.registry.client_count(),
            started_at: self.started_at,
            last_heartbeat: now_millis(),
        }])
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn mode(&self) -> &'static str {
        "standalone"
    }
}

pub struct RedisMembership {
    backend: RedisBackend,
    started_at: u64,
    healthy: AtomicBool,
    synced_epoch: AtomicU64,
}

impl RedisMembership {
    pub fn new(backend: RedisBackend) -> Self {
        RedisMembership {
            backend,
            started_at: now_millis(),
            healthy: AtomicBool::new(false),
            synced_epoch: AtomicU64::new(u64::MAX),
        }
    }

    /// Heartbeats and reaps until the hub shuts down.
    pub fn spawn(self: Arc<Self>, hub: Arc<Hub>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(hub.config.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_healthy = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = hub.shutdown.cancelled() => break,
                }
                let ok = match self.beat(&hub).await {
                    Ok(()) => true,
                    Err(e) => {
                        if was_healthy {
                            tracing::warn!(error = %e, "redis heartbeat failed: not ready until it recovers");
                        }
                        false
                    }
                };
                // After an outage or a reconnection (Redis may have
                // restarted empty), put this instance's clients back.
                let epoch = hub.broker.connection_epoch();
                if ok && (!was_healthy || epoch != self.synced_epoch.load(Ordering::Acquire)) {
                    tracing::info!("redis reachable: re-announcing local clients");
                    match self.resync(&hub).await {
                        Ok(()) => self.synced_epoch.store(epoch, Ordering::Release),
                        Err(e) => tracing::warn!(error = %e, "re-announcing local clients failed"),
                    }
                }
                self.healthy.store(ok, Ordering::Release);
                hub.metrics.store_up.set(i64::from(ok));
                was_healthy = ok;
                if ok && let Err(e) = self.reap(&hub).await {
                    tracing::warn!(error = %e, "reaping dead instances failed");
                }
            }
            // Leaving cleanly: others need not wait for the TTL.
            let _ = self.leave(&hub).await;
        });
    }

    async fn beat(&self, hub: &Hub) -> Result<(), HubError> {
        let keys = &self.backend.keys;
        let now = now_millis();
        let info = InstanceInfo {
            instance: hub.instance().to_string(),
            clients: hub.registry.client_count(),
            started_at: self.started_at,
            last_heartbeat: now,
        };
        let mut pipe = ::redis::pipe();
        pipe.zadd(keys.instances(), hub.instance(), now)
            .ignore()
            .cmd("SET")
            .arg(keys.instance_info(hub.instance()))
            .arg(serde_json::to_string(&info).map_err(HubError::internal)?)
            .arg("PX")
            .arg(hub.config.presence_ttl.as_millis() as u64)
            .ignore();
        self.backend.pipe("heartbeat", &pipe).await
    }

    /// After Redis came back (possibly empty), put this instance's clients
    /// and agents back.
    async fn resync(&self, hub: &Hub) -> Result<(), HubError> {
        for (session, handle) in hub.registry.all() {
            hub.store.join(&session, &handle.info).await?;
            if handle.info.capabilities.iter().any(|c| c == "whatsapp") {
                let me = AgentRef {
                    client_id: handle.info.client_id.clone(),
                    instance: hub.instance().to_string(),
                };
                hub.store.claim_agent_if_vacant(&session, &me).await?;
            }
        }
        Ok(())
    }

    async fn reap(&self, hub: &Hub) -> Result<(), HubError> {
        let keys = &self.backend.keys;
        let deadline = now_millis().saturating_sub(hub.config.presence_ttl.as_millis() as u64);
        let dead: Vec<String> = self
            .backend
            .query(
                "reap_scan",
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(keys.instances())
                    .arg("-inf")
                    .arg(deadline),
            )
            .await?;
        for instance in dead.iter().filter(|d| d.as_str() != hub.instance()) {
            let tags: Vec<String> = self
                .backend
                .query(
                    "reap_members",
                    ::redis::cmd("SMEMBERS").arg(keys.instance_members(instance)),
                )
                .await?;
            for tag in &tags {
                let Some((session, client_id)) = tag.split_once('\t') else {
                    continue;
                };
                let mut take = TAKE_PRESENCE.prepare_invoke();
                take.key(keys.presence(session))
                    .key(keys.instance_members(instance))
                    .arg(client_id)
                    .arg(member_tag(session, client_id))
                    .arg(instance);
                let taken: Option<String> = self.backend.script("reap_take", &take).await?;
                if let Some(client) =
                    taken.and_then(|t| serde_json::from_str::<ClientInfo>(&t).ok())
                {
                    hub.publish_client_event(session, &client, false);
                }
                let mut release = RELEASE_AGENT_IF.prepare_invoke();
                release
                    .key(keys.agent(session))
                    .arg("instance")
                    .arg(instance);
                let released: i64 = self.backend.script("reap_agent", &release).await?;
                if released == 1 {
                    hub.publish_agent_changed(session, None);
                }
            }
            let mut pipe = ::redis::pipe();
            pipe.del(keys.instance_members(instance))
                .ignore()
                .zrem(keys.instances(), instance)
                .ignore();
            let _: () = self.backend.pipe("reap_done", &pipe).await?;
            tracing::info!(dead = %instance, clients = tags.len(), "reaped a dead instance");
        }
        Ok(())
    }

    async fn leave(&self, hub: &Hub) -> Result<(), HubError> {
        let keys = &self.backend.keys;
        let mut pipe = ::redis::pipe();
        pipe.zrem(keys.instances(), hub.instance())
            .ignore()
            .del(keys.instance_info(hub.instance()))
            .ignore();
        self.backend.pipe("leave_cluster", &pipe).await
    }
}

#[async_trait]
impl Membership for RedisMembership {
    async fn instances(&self, _hub: &Hub) -> Result<Vec<InstanceInfo>, HubError> {
        let keys = &self.backend.keys;
        let ids: Vec<String> = self
            .backend
            .query(
                "instances",
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(keys.instances())
                    .arg(now_millis().saturating_sub(_hub.config.presence_ttl.as_millis() as u64))
                    .arg("+inf"),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = ::redis::cmd("MGET");
        for id in &ids {
            mget.arg(keys.instance_info(id));
        }
        let infos: Vec<Option<String>> = self.backend.query("instances_info", &mget).await?;
        let mut out: Vec<InstanceInfo> = infos
            .into_iter()
            .flatten()
            .filter_map(|raw| serde_json::from_str(&raw).ok())
            .collect();
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(out)
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn synced_epoch(&self) -> u64 {
        self.synced_epoch.load(Ordering::Acquire)
    }

    fn mode(&self) -> &'static str {
        "cluster"
    }
}
