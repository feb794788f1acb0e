//! Which hub instances are alive: what the hub reads about cluster
//! membership (`/api/v1/cluster`), whether the backend is reachable, and
//! whether this instance's clients are announced for the current broker
//! connection (readiness).
//!
//! The module owns the [`Membership`] trait the hub reads, the
//! [`InstanceInfo`] each instance publishes, and its two twins:
//! [`local::LocalMembership`] is the standalone answer (the only instance is
//! this one); `redis::RedisMembership` keeps every instance's heartbeat in
//! Redis, finds the dead ones and has the store reap them. The
//! `cluster::driver` loop keeps the Redis twin current for a hub.

pub mod local;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::protocol::HubError;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceInfo {
    pub instance: String,
    /// Registered clients on the instance.
    pub clients: usize,
    pub started_at: u64,
    pub last_heartbeat: u64,
    /// The hub's version (absent from instances older than the field).
    #[serde(default)]
    pub version: String,
    /// `/ready` of the instance at its last heartbeat.
    #[serde(default)]
    pub ready: bool,
}

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Live instances, this one included (`local_clients`: this instance's
    /// connected clients, which only it knows live).
    async fn instances(&self, local_clients: usize) -> Result<Vec<InstanceInfo>, HubError>;
    /// False while the backend cannot be reached.
    fn is_healthy(&self) -> bool;
    /// The broker connection epoch this instance's clients were last
    /// announced for (see `Broker::connection_epoch`).
    fn synced_epoch(&self) -> u64 {
        0
    }
    fn mode(&self) -> &'static str;
    /// Leaves the cluster at the end of a clean stop, once this instance's
    /// connections are closed (or the drain's bound passed): no heartbeat
    /// follows. Standalone, nothing to leave.
    async fn leave(&self) {}
}
