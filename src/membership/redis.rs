//! Which instances of a cluster are alive, kept in Redis, and finding the
//! dead ones.
//!
//! Each instance heartbeats into a ZSET every heartbeat interval, timed
//! by Redis's clock (`redis::heartbeats`: a step of one hub's wall clock
//! changes nothing). An instance silent for the presence TTL is dead: the first live instance to
//! notice has the store take its clients and agents
//! ([`SessionStore::reap_instance`], atomic, so exactly one reaper gets
//! each) and hands them back as [`Reaped`] events for the caller to
//! announce. So the clients of a crashed instance disappear within the
//! presence TTL plus one heartbeat. Nothing here knows the hub: the
//! `cluster::driver` loop feeds it the client count and applies its events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{InstanceInfo, Membership};
use crate::protocol::{HubError, now_millis};
use crate::redis::{Beat, OwnConnection, RedisBackend, RedisError};
use crate::store::{PartialReap, Reaped, SessionStore};

pub struct RedisMembership {
    backend: RedisBackend,
    /// The heartbeat's and the leave's: never behind the pool's queue.
    own: OwnConnection,
    store: Arc<dyn SessionStore>,
    instance: String,
    heartbeat: Duration,
    presence_ttl: Duration,
    started_at: u64,
    healthy: AtomicBool,
    synced_epoch: AtomicU64,
    /// Left the cluster: heartbeats write nothing more.
    left: AtomicBool,
    /// Held through a heartbeat and through the leave, so a heartbeat in
    /// flight never lands after the leave (the instance would look alive
    /// for another TTL). Only those two take it, once a heartbeat apart.
    beating: tokio::sync::Mutex<()>,
}

impl RedisMembership {
    pub fn new(
        backend: RedisBackend,
        store: Arc<dyn SessionStore>,
        instance: String,
        heartbeat: Duration,
        presence_ttl: Duration,
    ) -> Self {
        RedisMembership {
            own: OwnConnection::new(backend.clone()),
            backend,
            store,
            instance,
            heartbeat,
            presence_ttl,
            started_at: now_millis(),
            healthy: AtomicBool::new(false),
            // Never synced: not ready before the first re-announcement.
            synced_epoch: AtomicU64::new(u64::MAX),
            left: AtomicBool::new(false),
            beating: tokio::sync::Mutex::new(()),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }

    /// Records that this instance's clients are announced for `epoch`.
    pub fn mark_synced(&self, epoch: u64) {
        self.synced_epoch.store(epoch, Ordering::Release);
    }

    /// Refreshes this instance's heartbeat and description (`ready`: its
    /// readiness as of the last heartbeat). [`Beat::Entered`]: this
    /// instance was not in the cluster's set, or marked by a reaper, so
    /// after its first heartbeat a reaper took its clients.
    pub async fn beat(&self, clients: usize, ready: bool) -> Result<Beat, RedisError> {
        let _beating = self.beating.lock().await;
        if self.has_left() {
            return Ok(Beat::Continued);
        }
        let info = InstanceInfo {
            instance: self.instance.clone(),
            clients,
            started_at: self.started_at,
            // Stamped by Redis's clock (see `redis::heartbeats`).
            last_heartbeat: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready,
        };
        let info = serde_json::to_string(&info).unwrap_or_default();
        self.own
            .beat(&self.instance, &info, self.presence_ttl)
            .await
    }

    /// Reaps every dead instance but this one; returns what was taken, in
    /// order, for the caller to announce (also when failing part-way).
    pub async fn reap(&self) -> Result<Vec<Reaped>, PartialReap> {
        let mut reaped = Vec::new();
        let dead: Vec<String> = match self
            .backend
            .instances_by_age("reap_scan", self.presence_ttl, false)
            .await
        {
            Ok(dead) => dead,
            Err(e) => {
                return Err(PartialReap {
                    reaped,
                    error: e.into(),
                });
            }
        };
        for instance in dead.iter().filter(|d| **d != self.instance) {
            if let Err(error) = self.reap_one(instance, &mut reaped).await {
                return Err(PartialReap { reaped, error });
            }
        }
        Ok(reaped)
    }

    /// At startup, before serving: what an earlier run under this
    /// instance id left behind (its heartbeat stale, or marked by a clean
    /// stop), reaped as any dead instance's, since nothing else may: a
    /// single hub restarting, or one restarted before another hub reaped
    /// it, would otherwise keep it as its own. A fresh heartbeat under this
    /// id (a run still alive, or one that crashed within the TTL) is left
    /// alone.
    pub async fn reap_earlier_run(&self) -> Result<Vec<Reaped>, PartialReap> {
        let mut reaped = Vec::new();
        match self.reap_one(&self.instance, &mut reaped).await {
            Ok(()) => Ok(reaped),
            Err(error) => Err(PartialReap { reaped, error }),
        }
    }

    /// Marks `instance` (only if its heartbeat is stale), takes what it
    /// left into `reaped`, then forgets it.
    async fn reap_one(&self, instance: &str, reaped: &mut Vec<Reaped>) -> Result<(), HubError> {
        // Marked first, so that the instance, should it be alive after all,
        // learns of the reap even if this one stops part-way.
        if !self
            .backend
            .mark_reaping(instance, self.presence_ttl)
            .await?
        {
            return Ok(());
        }
        match self.store.reap_instance(instance).await {
            Ok(taken) => reaped.extend(taken),
            Err(partial) => {
                reaped.extend(partial.reaped);
                return Err(partial.error);
            }
        }
        // Forgotten only once its sessions are clean, so a failed reap is
        // retried on the next heartbeat.
        let _: () = self
            .backend
            .query(
                "reap_forget",
                ::redis::cmd("ZREM")
                    .arg(self.backend.keys.instances())
                    .arg(instance),
            )
            .await?;
        Ok(())
    }

    /// Whether [`Self::leave_cluster`] ran.
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// Leaving cleanly, after the last connection closed (or the drain's
    /// bound passed): no heartbeat follows, and this instance's heartbeat becomes the oldest possible
    /// (`ZADD XX`, score 0, unless reaped already), so it is listed as dead
    /// at once, and the next reap of any live instance takes what presence
    /// it could not remove itself (departures Redis did not take while it
    /// drained), then forgets it. Removed from the set, those entries would
    /// never be reaped; left earlier, while clients were still draining,
    /// they would be reaped under them.
    pub async fn leave_cluster(&self) -> Result<(), RedisError> {
        let _beating = self.beating.lock().await;
        self.left.store(true, Ordering::Release);
        let keys = &self.backend.keys;
        let mut pipe = ::redis::pipe();
        pipe.cmd("ZADD")
            .arg(keys.instances())
            .arg("XX")
            .arg(0)
            .arg(&self.instance)
            .ignore()
            .del(keys.instance_info(&self.instance))
            .ignore();
        self.own.pipe("leave_cluster", &pipe).await
    }
}

#[async_trait]
impl Membership for RedisMembership {
    async fn instances(&self, _local_clients: usize) -> Result<Vec<InstanceInfo>, HubError> {
        let keys = &self.backend.keys;
        let ids: Vec<String> = self
            .backend
            .instances_by_age("instances", self.presence_ttl, true)
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

    async fn leave(&self) {
        if let Err(e) = self.leave_cluster().await {
            tracing::debug!(error = %e, "leaving the cluster failed; others reap after the TTL");
        }
    }
}
