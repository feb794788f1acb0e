//! The broadcast bus between hub instances.
//!
//! The hub delivers every session event to its own local clients directly;
//! the broker carries it to the *other* instances. [`local::LocalBroker`]
//! is the standalone bus (there are no other instances); `redis::RedisBroker`
//! uses Redis pub/sub. Messages arriving from other instances are pushed into
//! the hub's [`Inbound`] channel.

pub mod local;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::HubError;

/// A session event as it travels between instances: already serialized, so
/// the receiving instance forwards the text without re-encoding it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub session: String,
    pub origin: String,
    /// Message type, for metrics.
    pub kind: String,
    /// When the producer created the event (ms since epoch), for latency.
    pub produced_at: u64,
    /// A client that must not receive it (the producer itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
    pub frame: String,
}

/// Point-to-point messages between instances (agent routing).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstanceMessage {
    /// Forward `command` to the agent `agent_client_id` connected to the
    /// receiving instance; answer to `reply_to` with `call_id`.
    AgentCall {
        call_id: String,
        session: String,
        agent_client_id: String,
        command: Value,
        reply_to: String,
    },
    AgentReply {
        call_id: String,
        #[serde(default)]
        content: Option<Value>,
        #[serde(default)]
        error: Option<HubError>,
    },
}

/// What a broker hands to the hub.
#[derive(Debug)]
pub enum Inbound {
    Event(EventEnvelope),
    Instance(InstanceMessage),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Queues an event for the other instances. Never blocks: events of one
    /// producer go out in the order they were queued.
    fn publish_event(&self, envelope: EventEnvelope);
    /// Delivers a message to one instance (possibly this one).
    async fn send_to_instance(
        &self,
        instance: &str,
        message: InstanceMessage,
    ) -> Result<(), HubError>;
    /// False while the broker cannot reach its backend.
    fn is_healthy(&self) -> bool;
    /// Counts (re)connections to the backend; a change means the backend
    /// may have restarted and lost what this instance announced.
    fn connection_epoch(&self) -> u64 {
        0
    }
    /// Flushes queued events and stops background work (at shutdown, after
    /// the last client is gone, so their `client_left` still goes out).
    async fn close(&self) {}
}
