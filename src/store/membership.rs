//! What the hub reads about cluster membership: which instances are alive
//! (`/api/v1/cluster`), whether the backend is reachable, and whether this
//! instance's clients are announced for the current broker connection
//! (readiness). [`LocalMembership`] is the standalone answer;
//! `cluster::membership::RedisMembership` keeps it in Redis and the
//! `cluster::driver` loop keeps it current.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::protocol::{HubError, now_millis};

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
}

/// Standalone: the only instance is this one.
pub struct LocalMembership {
    instance: String,
    started_at: u64,
}

impl LocalMembership {
    pub fn new(instance: String) -> Self {
        LocalMembership {
            instance,
            started_at: now_millis(),
        }
    }
}

#[async_trait]
impl Membership for LocalMembership {
    async fn instances(&self, local_clients: usize) -> Result<Vec<InstanceInfo>, HubError> {
        Ok(vec![InstanceInfo {
            instance: self.instance.clone(),
            clients: local_clients,
            started_at: self.started_at,
            last_heartbeat: now_millis(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            // Standalone: ready whenever it answers (the admin API reports
            // this instance's live readiness anyway).
            ready: true,
        }])
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn mode(&self) -> &'static str {
        "standalone"
    }
}
