//! Standalone membership: the only instance is this one, always healthy.

use async_trait::async_trait;

use super::{InstanceInfo, Membership};
use crate::protocol::{HubError, now_millis};

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
