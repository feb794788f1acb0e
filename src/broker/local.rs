//! The standalone bus: one instance, so events need no transport and
//! instance messages can only be addressed to ourselves.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Broker, EventEnvelope, Inbound, InstanceMessage};
use crate::protocol::{ErrorCode, HubError};

pub struct LocalBroker {
    instance: String,
    inbound: mpsc::Sender<Inbound>,
}

impl LocalBroker {
    pub fn new(instance: String, inbound: mpsc::Sender<Inbound>) -> Self {
        LocalBroker { instance, inbound }
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn publish_event(&self, _envelope: EventEnvelope) {}

    async fn send_to_instance(
        &self,
        instance: &str,
        message: InstanceMessage,
    ) -> Result<(), HubError> {
        if instance != self.instance {
            return Err(HubError::new(
                ErrorCode::AgentUnavailable,
                format!("instance `{instance}` is not reachable in standalone mode"),
            ));
        }
        self.inbound
            .send(Inbound::Instance(message))
            .await
            .map_err(|_| HubError::new(ErrorCode::ShuttingDown, "hub is shutting down"))
    }

    fn is_healthy(&self) -> bool {
        true
    }
}
