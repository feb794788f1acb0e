//! Held sends waiting for a person's decision (`APPROVAL_REQUIRED`,
//! docs/protocol.md §14): the records every instance of a cluster shares,
//! so that exactly one decision wins and a send held on an instance that
//! died can still be approved, rejected or expired on another.
//!
//! The module owns the [`ApprovalStore`] seam and its two twins:
//! [`memory::MemoryApprovals`] (standalone) and `redis::RedisApprovals`
//! (cluster, one Lua script per decision). What a held send *means* —
//! publishing `approval_request`, running the send once approved, waking
//! the caller who waits — is the hub's (`hub::approvals`).

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::protocol::{Approval, ApprovalVia, DECIDED_BY_HUB, Decision, Resolution};
use crate::protocol::{ClientInfo, HubError, WhatsAppCommand};

/// A held send with what it takes to carry it out on any instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub approval: Approval,
    pub command: WhatsAppCommand,
    pub requester: ClientInfo,
}

/// A held send as stored: undecided, decided, or carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub held: Held,
    pub resolution: Option<Resolution>,
    /// What the send answered (approved sends, once carried out), or the
    /// failure a rejection or expiry answers.
    pub outcome: Option<Value>,
}

/// What [`ApprovalStore::decide`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Decide {
    /// This decision won: the caller carries it out. The resolution is the
    /// one recorded: an approval or rejection that came after `expires_at`
    /// is recorded as the expiry it is.
    Won(Held, Resolution),
    /// Someone decided first.
    Lost(Record),
    /// No such held send (never, or forgotten after its keep time).
    Unknown,
}

/// The shared records of held sends. Every decision is one atomic step,
/// so exactly one of any number of concurrent deciders, on any instance,
/// wins. Records are bounded: at most `max_pending` undecided per session,
/// and each is forgotten `keep` after its expiry or decision.
#[async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// The session's next approval number.
    async fn next_id(&self, session: &str) -> Result<u64, HubError>;
    /// Holds a send (numbered by [`Self::next_id`]) unless the session holds
    /// `max_pending` undecided ones that have not expired; false then.
    async fn hold(&self, held: &Held, max_pending: usize, keep: Duration)
    -> Result<bool, HubError>;
    /// Records `resolution` unless the send is decided already; `now`
    /// (ms) past its expiry turns an approval or rejection into the expiry.
    async fn decide(
        &self,
        session: &str,
        id: u64,
        resolution: &Resolution,
        now: u64,
        keep: Duration,
    ) -> Result<Decide, HubError>;
    /// Records what the decided send answered (its waiter reads it).
    async fn finish(&self, session: &str, id: u64, outcome: &Value) -> Result<(), HubError>;
    async fn get(&self, session: &str, id: u64) -> Result<Option<Record>, HubError>;
    /// The session's undecided sends, oldest first, at most `max`.
    async fn pending(&self, session: &str, max: usize) -> Result<Vec<Approval>, HubError>;
    /// Undecided sends of any session whose expiry is at or before `now`,
    /// at most `max` (the expiry sweep decides them).
    async fn due(&self, now: u64, max: usize) -> Result<Vec<(String, u64)>, HubError>;
}
