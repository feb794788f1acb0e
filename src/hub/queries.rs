//! What the request APIs read of the hub's state, one operation each so
//! that every door answers alike: a session's summary, a page of its event
//! log, the list of sessions and the cluster's instances. The doors keep
//! only their envelope (paths, arguments, status codes, JSON shape).

use serde::Serialize;

use super::{Hub, SessionUse};
use crate::broker::LoggedEvent;
use crate::membership::InstanceInfo;
use crate::metrics::Shed;
use crate::protocol::{ClientInfo, Contact, HubError};
use crate::store::{AgentRef, SessionPage};

/// A session at a glance: its contacts, last contact, clients (with
/// instance, capabilities and `connected_at`) and agent.
// Fields in the order its JSON has always had (alphabetical).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionSummary {
    pub agent: Option<AgentRef>,
    /// Every client in the session's presence, on every instance.
    pub clients: Vec<ClientInfo>,
    #[schema(value_type = Vec<Object>)]
    pub contacts: Vec<Contact>,
    pub last_contact: Option<String>,
    pub session: String,
    /// The number of contacts.
    pub total_count: usize,
    /// The WhatsApp business number backing it (Cloud API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
}

/// One page of a session's event log after a position the caller has.
#[derive(Debug)]
pub struct EventsPage {
    /// The events after the position, oldest first, exactly as clients
    /// received them; None when the log cannot replay them (no position
    /// given, another epoch, or trimmed): the caller reloads instead.
    pub events: Option<Vec<LoggedEvent>>,
    /// The offset of the session's latest event.
    pub head: u64,
    pub epoch: String,
    /// Events after the last one given are left for a next page.
    pub has_more: bool,
    /// Where the next page starts (with `epoch`), when `events` are given.
    pub next_since: Option<u64>,
}

impl Hub {
    /// The summary of an existing session (`session_not_found` otherwise;
    /// nothing is created).
    pub async fn session_summary(&self, session: &str) -> Result<SessionSummary, HubError> {
        self.require_session(session, SessionUse::Read).await?;
        // Plain reads: the session was seeded when it was joined.
        let contacts = self.store.contacts(session).await?;
        Ok(SessionSummary {
            agent: self.store.agent(session).await?,
            clients: self.store.members(session).await?,
            total_count: contacts.len(),
            contacts,
            last_contact: self.store.last_contact(session).await?,
            session: session.to_string(),
            phone_number_id: self.phone_number_id(session),
        })
    }

    /// The session's events after `since` (an offset and the log epoch it
    /// belongs to), at most one page (EVENTS_PAGE_MAX_BYTES and
    /// _EVENTS); without `since`, only where the log stands. The caller
    /// checks that the session exists ([`Hub::require_session`]).
    pub async fn events_page(
        &self,
        session: &str,
        since: Option<(u64, &str)>,
    ) -> Result<EventsPage, HubError> {
        let read = self
            .broker
            .read_log(
                session,
                since.map(|(offset, _)| offset),
                self.events_page_budget(),
            )
            .await?;
        let events = match (since, read.events) {
            (Some((_, epoch)), Some(events)) if epoch == read.epoch => Some(events),
            _ => None,
        };
        let has_more = events.is_some() && read.more;
        if has_more {
            self.metrics.shed(Shed::EventsPage);
        }
        let next_since = match (&events, since) {
            (Some(events), Some((after, _))) => Some(events.last().map_or(after, |e| e.offset)),
            _ => None,
        };
        Ok(EventsPage {
            events,
            head: read.head,
            epoch: read.epoch,
            has_more,
            next_since,
        })
    }

    /// Every session, by name, `limit` at a time after `cursor`.
    pub async fn list_sessions(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SessionPage, HubError> {
        let mut page = self.store.list_sessions(cursor, limit).await?;
        for listing in &mut page.sessions {
            listing.phone_number_id = self.phone_number_id(&listing.session);
        }
        Ok(page)
    }

    /// The Cloud API number that backs `session`, if one does.
    pub fn phone_number_id(&self, session: &str) -> Option<String> {
        self.config
            .whatsapp
            .cloud_api
            .as_ref()
            .and_then(|c| c.number_for_session(session))
            .map(|n| n.phone_number_id.clone())
    }

    /// The cluster's live instances as their last heartbeats describe them
    /// (standalone: this one, its client count live).
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, HubError> {
        self.membership.instances(self.local_client_count()).await
    }

    /// [`Self::instances`] with this instance's own entry live: its
    /// clients and readiness now, not as of its last heartbeat.
    pub async fn instances_with_live_self(&self) -> Result<Vec<InstanceInfo>, HubError> {
        let clients = self.local_client_count();
        let mut instances = self.membership.instances(clients).await?;
        for info in &mut instances {
            if info.instance == self.instance() {
                info.clients = clients;
                info.ready = self.is_ready();
            }
        }
        Ok(instances)
    }

    /// `standalone` or `cluster`.
    pub fn cluster_mode(&self) -> &'static str {
        self.membership.mode()
    }
}
