//! Events and replies the hub sends to clients, and the serialized
//! [`Frame`] that is shared between every recipient of one event.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::approval::{Approval, Resolution};
use super::content::MessageContent;
use super::errors::HubError;

/// At most this many members are listed in `registration_confirmed`, so a
/// join into a large session costs one small frame, not one listing
/// everybody (docs/protocol.md, limits).
pub const REGISTRATION_CLIENTS_MAX: usize = 100;

pub use super::frame::Frame;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Contact {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageDirection {
    Outgoing,
    Incoming,
}

/// One message of a conversation, as stored and as sent in `message_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryEntry {
    pub direction: MessageDirection,
    pub contact: String,
    pub message: String,
    pub message_id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The client id that caused it (for outgoing) or the sender's name.
    pub by: String,
    /// Who carried it out or received it: `agent`, `cloud_api` or
    /// `simulated`. Absent only on entries written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
    /// The latest delivery status reported for an outgoing message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeliveryStatus>,
    /// Why it failed, when `status` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_error: Option<StatusError>,
    /// Media, a picked reply, a reaction, ... (absent for plain text).
    #[serde(flatten)]
    pub content: MessageContent,
}

/// Delivery progress of a sent message, lowest first: a status never moves
/// backwards (`read` may arrive before `delivered`), `failed` is final.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "sent" => Some(DeliveryStatus::Sent),
            "delivered" => Some(DeliveryStatus::Delivered),
            "read" => Some(DeliveryStatus::Read),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }

    /// Whether `self` may replace `current`.
    pub fn advances(self, current: Option<DeliveryStatus>) -> bool {
        match current {
            None => true,
            Some(DeliveryStatus::Failed) => false,
            Some(c) => self > c,
        }
    }
}

/// The reason of a `failed` status: the hub's code plus the upstream's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatusError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_code: Option<i64>,
}

/// A connected client as other clients see it.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_name: String,
    pub instance: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The token's `sub` that registered this client id (auth on only):
    /// kept with presence so another `sub` cannot take the id over, on any
    /// instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the client registered (ms since epoch); absent for REST callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<u64>,
}

impl ClientInfo {
    /// Registered as an agent: it can execute WhatsApp commands.
    pub fn is_agent(&self) -> bool {
        self.capabilities.iter().any(|c| c == "whatsapp")
    }
}

/// Everything the hub sends. `request_id` is echoed where the protocol says.
/// strum names each variant as serde does (its wire `type`, also its
/// metrics label): [`Self::kind`], and every kind in
/// [`strum::VariantNames::VARIANTS`].
#[derive(
    Debug, Clone, Serialize, strum::IntoStaticStr, strum::VariantNames, schemars::JsonSchema,
)]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ServerEvent<'a> {
    RegistrationConfirmed {
        client_id: &'a str,
        client_name: &'a str,
        session: &'a str,
        instance: &'a str,
        agent: bool,
        /// The session's members in join order, this client included,
        /// at most [`REGISTRATION_CLIENTS_MAX`] of them.
        clients: &'a [ClientInfo],
        /// How many members the session has (`clients` may list fewer).
        clients_total: usize,
        /// A `since` resume replayed every missed event (see
        /// docs/protocol.md); false without `since`.
        recovered: bool,
        /// The last session event offset before this client's first live
        /// event (replayed events included), and the log's epoch.
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    Response {
        response_type: &'a str,
        content: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    Error {
        #[schemars(with = "super::errors::ErrorCode")]
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    Pong {
        timestamp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    ContactListBroadcast {
        contacts: &'a [Contact],
        total_count: usize,
        timestamp: u64,
    },
    MessageEvent {
        #[serde(flatten)]
        entry: &'a HistoryEntry,
    },
    /// A delivery status of a sent message (Cloud API status webhooks).
    MessageStatus {
        message_id: &'a str,
        status: DeliveryStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        contact: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a StatusError>,
        timestamp: u64,
    },
    ClientJoined {
        #[serde(flatten)]
        client: &'a ClientInfo,
        timestamp: u64,
    },
    ClientLeft {
        #[serde(flatten)]
        client: &'a ClientInfo,
        timestamp: u64,
    },
    Broadcast {
        from: &'a str,
        payload: &'a Value,
        timestamp: u64,
    },
    AgentChanged {
        client_id: Option<&'a str>,
        instance: Option<&'a str>,
        timestamp: u64,
    },
    Execute {
        request_id: &'a str,
        command: &'a Value,
    },
    /// A send held for a person's `approve` (APPROVAL_REQUIRED).
    ApprovalRequest {
        #[serde(flatten)]
        approval: &'a Approval,
    },
    /// A held send was decided (once, cluster-wide); `result`: what the
    /// approved send answered.
    ApprovalResolved {
        id: u64,
        #[serde(flatten)]
        resolution: &'a Resolution,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
    },
}

impl<'a> ServerEvent<'a> {
    /// The wire `type`, also the `messages_sent` and log label.
    pub fn kind(&self) -> &'static str {
        self.into()
    }

    /// The event's JSON text (what a published event carries until it is
    /// logged and framed).
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with
        // non-string keys, no custom serializers that error.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal_error","message":"serialize: {e}"}}"#)
        })
    }

    /// Serializes once into a shareable frame.
    pub fn to_frame(&self) -> Frame {
        Frame::from(self.to_json())
    }

    pub fn error(err: &'a HubError, request_id: Option<&'a str>) -> Self {
        ServerEvent::Error {
            code: err.code.as_str(),
            message: &err.message,
            request_id,
        }
    }
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_confirmed_has_the_documented_fields() {
        let clients = [ClientInfo {
            client_id: "c1".into(),
            client_name: "n1".into(),
            instance: "hub1".into(),
            capabilities: vec!["whatsapp".into()],
            owner: None,
            connected_at: None,
        }];
        let event = |request_id| ServerEvent::RegistrationConfirmed {
            client_id: "c1",
            client_name: "n1",
            session: "s",
            instance: "hub1",
            agent: true,
            clients: &clients,
            clients_total: 1,
            recovered: false,
            offset: 7,
            epoch: "e1",
            request_id,
        };
        let value: Value = serde_json::from_str(event(Some("r1")).to_frame().as_str()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "registration_confirmed",
                "client_id": "c1",
                "client_name": "n1",
                "session": "s",
                "instance": "hub1",
                "agent": true,
                "clients": [{"client_id": "c1", "client_name": "n1", "instance": "hub1",
                             "capabilities": ["whatsapp"]}],
                "clients_total": 1,
                "recovered": false,
                "offset": 7,
                "epoch": "e1",
                "request_id": "r1",
            })
        );
        let value: Value = serde_json::from_str(event(None).to_frame().as_str()).unwrap();
        assert!(value.get("request_id").is_none());
    }

    /// Each event's kind (the metrics label) is its wire `type`, and the
    /// kinds are the labels the metrics and dashboards have always used.
    #[test]
    fn an_events_kind_is_its_wire_type() {
        let client = ClientInfo {
            client_id: "c1".into(),
            client_name: "n1".into(),
            instance: "hub1".into(),
            capabilities: Vec::new(),
            owner: None,
            connected_at: None,
        };
        let entry = HistoryEntry {
            direction: MessageDirection::Outgoing,
            contact: "John".into(),
            message: "hi".into(),
            message_id: "m1".into(),
            timestamp: 1,
            by: "c1".into(),
            executed_by: None,
            status: None,
            status_error: None,
            content: Default::default(),
        };
        let payload = Value::Null;
        let approval = Approval {
            id: 1,
            session: "s".into(),
            requested_by: "c1".into(),
            via: super::super::approval::ApprovalVia::Mcp,
            action: "send".into(),
            contact: "John".into(),
            text: "hi".into(),
            created_at: 1,
            expires_at: 2,
        };
        let resolution = Resolution::expiry(2);
        let events = [
            ServerEvent::RegistrationConfirmed {
                client_id: "c1",
                client_name: "n1",
                session: "s",
                instance: "hub1",
                agent: false,
                clients: &[],
                clients_total: 0,
                recovered: false,
                offset: 0,
                epoch: "e1",
                request_id: None,
            },
            ServerEvent::Response {
                response_type: "r",
                content: Value::Null,
                request_id: None,
            },
            ServerEvent::Error {
                code: "internal_error",
                message: "m",
                request_id: None,
            },
            ServerEvent::Pong {
                timestamp: 1,
                request_id: None,
            },
            ServerEvent::ContactListBroadcast {
                contacts: &[],
                total_count: 0,
                timestamp: 1,
            },
            ServerEvent::MessageEvent { entry: &entry },
            ServerEvent::MessageStatus {
                message_id: "m1",
                status: DeliveryStatus::Read,
                contact: None,
                error: None,
                timestamp: 1,
            },
            ServerEvent::ClientJoined {
                client: &client,
                timestamp: 1,
            },
            ServerEvent::ClientLeft {
                client: &client,
                timestamp: 1,
            },
            ServerEvent::Broadcast {
                from: "c1",
                payload: &payload,
                timestamp: 1,
            },
            ServerEvent::AgentChanged {
                client_id: None,
                instance: None,
                timestamp: 1,
            },
            ServerEvent::Execute {
                request_id: "r1",
                command: &payload,
            },
            ServerEvent::ApprovalRequest {
                approval: &approval,
            },
            ServerEvent::ApprovalResolved {
                id: 1,
                resolution: &resolution,
                result: None,
            },
        ];
        for event in &events {
            let value: Value = serde_json::from_str(&event.to_json()).unwrap();
            assert_eq!(value["type"], event.kind());
        }
        let kinds: Vec<&str> = events.iter().map(ServerEvent::kind).collect();
        assert_eq!(
            kinds,
            <ServerEvent<'_> as strum::VariantNames>::VARIANTS,
            "one event of each kind above"
        );
        let mut labels = kinds.clone();
        labels.sort_unstable();
        assert_eq!(
            labels,
            [
                "agent_changed",
                "approval_request",
                "approval_resolved",
                "broadcast",
                "client_joined",
                "client_left",
                "contact_list_broadcast",
                "error",
                "execute",
                "message_event",
                "message_status",
                "pong",
                "registration_confirmed",
                "response",
            ]
        );
    }
}
