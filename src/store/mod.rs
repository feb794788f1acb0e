//! The shared session state: contacts, last contact, per-contact history
//! (with the latest delivery status of each sent message), presence and
//! the session's active agent; plus the cluster-wide bookkeeping of
//! WhatsApp traffic: idempotent sends, webhook deduplication and the
//! queue of accepted webhook events. It also ends what it keeps: an idle
//! session is removed ([`SessionStore::expire_idle`]), idempotency records
//! are capped per caller (and in total in memory).
//!
//! [`memory::MemoryStore`] keeps it in this process (standalone);
//! `redis::RedisStore` keeps it in Redis so every instance of a cluster
//! sees the same session. Reaping what a dead instance left behind is the
//! store's job too ([`SessionStore::reap_instance`]): it is the store's
//! data, taken with the store's own atomic scripts.

pub mod memory;
pub mod redis;

use async_trait::async_trait;

use std::time::Duration;

use crate::protocol::{ClientInfo, Contact, DeliveryStatus, HistoryEntry, HubError, StatusError};

/// The client acting as a session's WhatsApp executor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AgentRef {
    pub client_id: String,
    pub instance: String,
}

pub type StoreResult<T> = Result<T, HubError>;

/// Where an idempotency key stands when a request tries to take it.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyBegin {
    /// This request holds the key: run, then finish (or abandon) it.
    Acquired,
    /// Another request with the same fingerprint holds it; its result is
    /// not there yet.
    Busy,
    /// The first request's stored result (JSON).
    Done(String),
    /// The key is held or done for a request with another fingerprint.
    Reused,
}

/// One idempotency key as the store keeps it. Every part is a hash made
/// by the hub (`hub::idempotency`), so the store never sees a client's text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdempotencyKey<'a> {
    /// The caller's scope: its records are counted and capped together.
    pub caller: &'a str,
    /// The key within the caller's scope (session and the client's key).
    pub key: &'a str,
    /// The request the key was first used for: the same key with another
    /// fingerprint is [`IdempotencyBegin::Reused`].
    pub fingerprint: &'a str,
}

/// What [`SessionStore::add_sender_contact`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SenderContact {
    /// A contact with this phone number was there already, by this name.
    Known(String),
    /// Added by this name; the session's contacts now.
    Added {
        name: String,
        contacts: Vec<Contact>,
    },
    /// The session holds its `MAX_CONTACTS_PER_SESSION` already: not added.
    Full,
}

/// A webhook sender to add to a session's contacts
/// ([`SessionStore::add_sender_contact`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSender<'a> {
    /// The sender's number, ASCII digits only: a contact whose phone has
    /// the same digits is this sender.
    pub digits: &'a str,
    /// The name to add it by...
    pub name: &'a str,
    /// ...or this one when a contact has that name already (ASCII case
    /// ignored).
    pub name_if_taken: &'a str,
    /// The phone stored with it.
    pub phone: &'a str,
}

/// The ASCII digits of a phone number: two numbers are the same contact
/// when these are equal (`+1 555 0100` is `15550100`).
pub fn phone_digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// One session as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SessionListing {
    pub session: String,
    /// Clients in the session's presence, on every instance.
    pub clients: usize,
    pub agent: Option<AgentRef>,
    /// The last join, leave, contact change or recorded message (ms since
    /// epoch).
    pub last_activity: Option<u64>,
    /// Messages recorded in the session's history, by direction.
    pub messages_in: u64,
    pub messages_out: u64,
    /// The WhatsApp business number backing it (Cloud API), set by the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
}

/// One page of [`SessionStore::list_sessions`], ordered by session name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SessionPage {
    pub sessions: Vec<SessionListing>,
    /// Give it as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A session's members (in join order), or some of them, as of one
/// presence version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Presence {
    pub members: Vec<ClientInfo>,
    /// How many members the session has (`members` may list fewer).
    pub total: usize,
    /// The session's presence version this list is as of.
    pub version: u64,
}

/// What a join or leave did to a session's presence.
///
/// Every change of a session's presence (a join, a leave, a reaped client)
/// increases its *presence version*, atomically with the change, and
/// [`SessionStore::presence`] reads the members together with the version
/// they are as of. The `client_joined`/`client_left` announcing a change
/// carries its version, so a client whose member list is as of that
/// version or a later one already has it and is not told again
/// (docs/protocol.md, `client_joined`). A version that Redis lost starts
/// again from the clock, above every earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceChange {
    /// A join that added the client (not a replacement), a leave that
    /// removed it.
    pub changed: bool,
    /// The presence version of this change (of the session's presence
    /// when nothing changed).
    pub version: u64,
}

/// What a join must respect, checked atomically with it
/// ([`SessionStore::join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinRule {
    /// The session's room: a join that would add a client to a session
    /// already holding this many is refused; one that replaces its own id
    /// is not (registering again replaces, it does not add).
    pub max_members: usize,
}

impl JoinRule {
    /// No room limit: for putting back clients the store lost (they were
    /// in already).
    pub const UNBOUNDED: JoinRule = JoinRule {
        max_members: usize::MAX,
    };
}

/// Why [`SessionStore::join`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefused {
    /// The session holds [`JoinRule::max_members`] clients and the id is
    /// not one of them.
    Full,
    /// The id is held by a client another user registered: the joining
    /// client has an `owner` and the held entry's differs.
    HeldByAnother,
}

/// Whether `held` (the id's current entry) may be replaced by `joining`:
/// without an owner (no authentication) anyone may; with one, only an
/// entry of the same owner (or none at all).
pub fn may_replace(held: &ClientInfo, joining: &ClientInfo) -> bool {
    joining.owner.is_none() || held.owner == joining.owner
}

/// Something a dead instance left behind, taken by the reaper: the caller
/// announces it (`client_left`, `agent_changed`) exactly once.
#[derive(Debug, Clone, PartialEq)]
pub enum Reaped {
    /// The client was in the session's presence; it is gone now (at
    /// presence `version`).
    ClientLeft {
        session: String,
        client: ClientInfo,
        version: u64,
    },
    /// The session's agent was on the dead instance; it has none now.
    AgentReleased { session: String },
}

/// A reaping that failed part-way: what was taken before the failure is
/// already gone from the store, so it must still be announced.
#[derive(Debug, Clone)]
pub struct PartialReap {
    pub reaped: Vec<Reaped>,
    pub error: HubError,
}

/// Reads never create state: only the write methods (seeding, setting
/// contacts, recording a message, joining, claiming the agent role) may
/// bring a session into existence; every read of an unknown session
/// answers empty and leaves nothing behind. Which requests may call a
/// write on an unknown session is the hub's rule (`SESSION_CREATION`,
/// `Hub::require_session`).
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Whether the session exists: it has contacts (seeded or set), a
    /// history (and so a last contact), a client in presence or an agent.
    async fn exists(&self, session: &str) -> StoreResult<bool>;
    /// Adds a webhook sender to the session's contacts unless a contact
    /// has its number, or the session holds `max` contacts already: one
    /// atomic read-modify-write (a Lua script on Redis, under the lock in
    /// memory), so concurrent senders on several instances can neither
    /// pass the cap nor lose each other's additions.
    async fn add_sender_contact(
        &self,
        session: &str,
        sender: &NewSender<'_>,
        max: usize,
    ) -> StoreResult<SenderContact>;
    /// Removes at most `max` sessions that have no client in presence and
    /// no activity (a write, a join or a leave) for `idle`, with their
    /// contacts, history and log; returns their names. Bounded work per
    /// call: the sweeper calls it periodically.
    async fn expire_idle(&self, idle: Duration, max: usize) -> StoreResult<Vec<String>>;
    /// Seeds a session's contacts unless it already has some.
    async fn seed_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()>;
    async fn contacts(&self, session: &str) -> StoreResult<Vec<Contact>>;
    async fn set_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()>;
    async fn last_contact(&self, session: &str) -> StoreResult<Option<String>>;
    /// Appends to the contact's history (capped) and makes it the last contact.
    async fn record_message(&self, session: &str, entry: &HistoryEntry) -> StoreResult<()>;
    /// The newest `limit` messages with a contact, oldest first, each with
    /// the latest status recorded by [`SessionStore::set_status`].
    async fn history(
        &self,
        session: &str,
        contact: &str,
        limit: usize,
    ) -> StoreResult<Vec<HistoryEntry>>;

    /// The (lower-cased) contacts the session has a history with: what
    /// `mcp-hub export` walks.
    async fn conversations(&self, session: &str) -> StoreResult<Vec<String>>;

    /// Records a delivery status of a sent message (kept for `ttl`) unless
    /// it would move it backwards; true if it changed.
    async fn set_status(
        &self,
        session: &str,
        message_id: &str,
        status: DeliveryStatus,
        error: Option<&StatusError>,
        ttl: Duration,
    ) -> StoreResult<bool>;

    /// Takes an idempotency key for `token`, or reports who has it.
    /// `lock_ttl` frees it if the holder dies without finishing.
    async fn idempotency_begin(
        &self,
        key: &IdempotencyKey<'_>,
        token: &str,
        lock_ttl: Duration,
    ) -> StoreResult<IdempotencyBegin>;
    /// Stores the result of `key` (kept for `ttl`) and frees its lock. The
    /// caller keeps at most `per_caller` results, its oldest forgotten
    /// first (the memory store also forgets the oldest of all callers past
    /// its byte budget); returns how many were forgotten.
    async fn idempotency_finish(
        &self,
        key: &IdempotencyKey<'_>,
        token: &str,
        result: &str,
        ttl: Duration,
        per_caller: usize,
    ) -> StoreResult<usize>;
    /// Frees the lock without a result (the request failed before sending).
    async fn idempotency_abandon(&self, key: &IdempotencyKey<'_>, token: &str) -> StoreResult<()>;

    /// Marks a webhook item (a wamid, or a wamid and a status) as seen for
    /// `ttl`; true the first time only, cluster-wide.
    async fn mark_seen(&self, key: &str, ttl: Duration) -> StoreResult<bool>;
    /// Unmarks it (it could not be queued; Meta will redeliver).
    async fn forget_seen(&self, key: &str) -> StoreResult<()>;
    /// Queues an accepted webhook event (JSON) for any instance to process.
    async fn push_webhook_event(&self, event: &str) -> StoreResult<()>;
    /// Claims the oldest queued webhook event for `lease`: it stays in the
    /// store, invisible to other claims, until [`Self::ack_webhook_event`]
    /// removes it. An event whose lease lapsed (its instance died while
    /// processing it) is queued again, first, by the next claim on any
    /// instance: a crash between taking an event and finishing it loses
    /// nothing. Returns the claim's id and the event.
    async fn claim_webhook_event(&self, lease: Duration) -> StoreResult<Option<(String, String)>>;
    /// Removes a claimed event: it was processed.
    async fn ack_webhook_event(&self, claim: &str) -> StoreResult<()>;

    /// Adds (or replaces) a client's presence entry, unless `rule` refuses
    /// it; `changed` if it was missing (so re-announcing after an outage
    /// tells the session only what it lost). The rule is checked in the
    /// same atomic step as the write, so two registrations of one brand-new
    /// id by different users, or two last places taken at once, cannot both
    /// pass; and it reads a count and one entry, never the member list.
    async fn join(
        &self,
        session: &str,
        client: &ClientInfo,
        rule: JoinRule,
    ) -> StoreResult<Result<PresenceChange, JoinRefused>>;
    /// Removes a client; `changed` if it was present (so exactly one caller
    /// announces its departure).
    async fn leave(&self, session: &str, client_id: &str) -> StoreResult<PresenceChange>;
    /// The members (all of them when the session has at most `limit`,
    /// else `limit` of them: the first to join standalone, any on Redis),
    /// how many there are, and the presence version they are as of, read
    /// at once. The read is bounded by `limit`, not by the session: every
    /// registration reads presence, and one listing a session of 10 000
    /// whole made joining it quadratic in bytes.
    async fn presence(&self, session: &str, limit: usize) -> StoreResult<Presence>;
    /// One member's presence entry, whichever instance holds it (a
    /// departure retried after an unanswered leave: gone, or registered
    /// again).
    async fn member(&self, session: &str, client_id: &str) -> StoreResult<Option<ClientInfo>>;
    /// Every member, in join order.
    async fn members(&self, session: &str) -> StoreResult<Vec<ClientInfo>> {
        Ok(self.presence(session, usize::MAX).await?.members)
    }

    /// Makes `agent` the session's executor; returns the one it replaced.
    /// The newest registration wins (see docs/protocol.md).
    async fn claim_agent(&self, session: &str, agent: &AgentRef) -> StoreResult<Option<AgentRef>>;
    /// Claims the agent role only if no agent is registered (used when
    /// re-announcing clients after a Redis outage).
    async fn claim_agent_if_vacant(&self, session: &str, agent: &AgentRef) -> StoreResult<bool>;
    /// Clears the agent if it is still `agent`: the same client on the
    /// same instance (the same id registered again elsewhere keeps the
    /// role when the old connection's death is noticed late); true if it was.
    async fn release_agent(&self, session: &str, agent: &AgentRef) -> StoreResult<bool>;
    async fn agent(&self, session: &str) -> StoreResult<Option<AgentRef>>;

    /// Pages through every session by name: the first `limit` sessions
    /// whose name sorts after `cursor` (all with None). A stable cursor:
    /// sessions created meanwhile appear in a later page if their name
    /// sorts after it, and nothing is listed twice.
    async fn list_sessions(&self, cursor: Option<&str>, limit: usize) -> StoreResult<SessionPage>;

    /// Takes every client and agent `instance` (a dead one) left in any
    /// session, each exactly once even with several reapers, and forgets
    /// its member index. A single process has no other instance, so the
    /// default has nothing to reap.
    async fn reap_instance(&self, _instance: &str) -> Result<Vec<Reaped>, PartialReap> {
        Ok(Vec::new())
    }
}
