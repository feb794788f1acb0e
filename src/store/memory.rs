//! In-process session store for standalone mode.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    AgentRef, IdempotencyBegin, Presence, PresenceChange, SessionListing, SessionPage,
    SessionStore, StoreResult,
};
use crate::protocol::{
    ClientInfo, Contact, DeliveryStatus, HistoryEntry, MessageDirection, StatusError, now_millis,
};

#[derive(Default)]
struct SessionState {
    contacts: Vec<Contact>,
    seeded: bool,
    last_contact: Option<String>,
    /// Keyed by lower-cased contact name.
    history: HashMap<String, VecDeque<HistoryEntry>>,
    /// In join order, so listings are stable.
    members: Vec<ClientInfo>,
    /// Increased by every change of `members` ([`super::PresenceChange`]).
    presence_version: u64,
    agent: Option<AgentRef>,
    /// Latest delivery status by message id.
    statuses: HashMap<String, (DeliveryStatus, Option<StatusError>)>,
    /// For the admin API ([`SessionListing`]).
    last_activity: Option<u64>,
    messages_in: u64,
    messages_out: u64,
}

impl SessionState {
    /// What [`SessionStore::exists`] means for this store.
    fn exists(&self) -> bool {
        self.seeded
            || !self.contacts.is_empty()
            || self.last_contact.is_some()
            || !self.history.is_empty()
            || !self.members.is_empty()
            || self.agent.is_some()
    }

    fn touch(&mut self) {
        self.last_activity = Some(now_millis());
    }
}

/// An idempotency key: held by a token until its result is stored.
enum Idempotency {
    Held { token: String, until: Instant },
    Done { result: String, until: Instant },
}

/// Expiring WhatsApp bookkeeping: idempotency keys, seen webhook items and
/// the queue of accepted webhook events.
#[derive(Default)]
struct Traffic {
    idempotency: HashMap<String, Idempotency>,
    seen: HashMap<String, Instant>,
    queue: VecDeque<String>,
}

impl Traffic {
    /// Drops what expired (cheap enough at a standalone hub's volume).
    fn expire(&mut self, now: Instant) {
        self.seen.retain(|_, until| *until > now);
        self.idempotency.retain(|_, e| match e {
            Idempotency::Held { until, .. } | Idempotency::Done { until, .. } => *until > now,
        });
    }
}

pub struct MemoryStore {
    history_limit: usize,
    sessions: Mutex<HashMap<String, SessionState>>,
    traffic: Mutex<Traffic>,
}

impl MemoryStore {
    pub fn new(history_limit: usize) -> Self {
        MemoryStore {
            history_limit,
            sessions: Mutex::new(HashMap::new()),
            traffic: Mutex::new(Traffic::default()),
        }
    }

    fn traffic<T>(&self, f: impl FnOnce(&mut Traffic) -> T) -> T {
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        t.expire(Instant::now());
        f(&mut t)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionState>> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain data; the data itself is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write: creates the session when it is new.
    fn with<T>(&self, session: &str, f: impl FnOnce(&mut SessionState) -> T) -> T {
        f(self.lock().entry(session.to_string()).or_default())
    }

    /// A read: an unknown session reads as empty and is not created.
    fn read<T: Default>(&self, session: &str, f: impl FnOnce(&SessionState) -> T) -> T {
        self.lock().get(session).map(f).unwrap_or_default()
    }

    /// A removal: changes an existing session only.
    fn update<T: Default>(&self, session: &str, f: impl FnOnce(&mut SessionState) -> T) -> T {
        self.lock().get_mut(session).map(f).unwrap_or_default()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn exists(&self, session: &str) -> StoreResult<bool> {
        Ok(self.read(session, SessionState::exists))
    }

    async fn seed_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()> {
        self.with(session, |s| {
            if !s.seeded {
                s.touch();
                s.seeded = true;
                if s.contacts.is_empty() {
                    s.contacts = contacts.to_vec();
                }
            }
        });
        Ok(())
    }

    async fn contacts(&self, session: &str) -> StoreResult<Vec<Contact>> {
        Ok(self.read(session, |s| s.contacts.clone()))
    }

    async fn set_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()> {
        self.with(session, |s| {
            s.touch();
            s.seeded = true;
            s.contacts = contacts.to_vec();
        });
        Ok(())
    }

    async fn last_contact(&self, session: &str) -> StoreResult<Option<String>> {
        Ok(self.read(session, |s| s.last_contact.clone()))
    }

    async fn record_message(&self, session: &str, entry: &HistoryEntry) -> StoreResult<()> {
        let limit = self.history_limit;
        self.with(session, |s| {
            s.touch();
            match entry.direction {
                MessageDirection::Incoming => s.messages_in += 1,
                MessageDirection::Outgoing => s.messages_out += 1,
            }
            s.last_contact = Some(entry.contact.clone());
            let list = s.history.entry(entry.contact.to_lowercase()).or_default();
            list.push_back(entry.clone());
            while list.len() > limit {
                list.pop_front();
            }
        });
        Ok(())
    }

    async fn history(
        &self,
        session: &str,
        contact: &str,
        limit: usize,
    ) -> StoreResult<Vec<HistoryEntry>> {
        Ok(self.read(session, |s| {
            s.history
                .get(&contact.to_lowercase())
                .map(|list| {
                    let skip = list.len().saturating_sub(limit);
                    list.iter()
                        .skip(skip)
                        .cloned()
                        .map(|mut e| {
                            if let Some((status, error)) = s.statuses.get(&e.message_id) {
                                e.status = Some(*status);
                                e.status_error = error.clone();
                            }
                            e
                        })
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    async fn set_status(
        &self,
        session: &str,
        message_id: &str,
        status: DeliveryStatus,
        error: Option<&StatusError>,
        _ttl: Duration,
    ) -> StoreResult<bool> {
        Ok(self.with(session, |s| {
            let current = s.statuses.get(message_id).map(|(st, _)| *st);
            if !status.advances(current) {
                return false;
            }
            // Bounded like the history it annotates.
            if s.statuses.len() >= 10_000 {
                s.statuses.clear();
            }
            s.statuses
                .insert(message_id.to_string(), (status, error.cloned()));
            true
        }))
    }

    async fn idempotency_begin(
        &self,
        key: &str,
        token: &str,
        lock_ttl: Duration,
    ) -> StoreResult<IdempotencyBegin> {
        Ok(self.traffic(|t| match t.idempotency.get(key) {
            Some(Idempotency::Done { result, .. }) => IdempotencyBegin::Done(result.clone()),
            Some(Idempotency::Held { .. }) => IdempotencyBegin::Busy,
            None => {
                t.idempotency.insert(
                    key.to_string(),
                    Idempotency::Held {
                        token: token.to_string(),
                        until: Instant::now() + lock_ttl,
                    },
                );
                IdempotencyBegin::Acquired
            }
        }))
    }

    async fn idempotency_finish(
        &self,
        key: &str,
        _token: &str,
        result: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.traffic(|t| {
            t.idempotency.insert(
                key.to_string(),
                Idempotency::Done {
                    result: result.to_string(),
                    until: Instant::now() + ttl,
                },
            )
        });
        Ok(())
    }

    async fn idempotency_abandon(&self, key: &str, token: &str) -> StoreResult<()> {
        self.traffic(|t| {
            if matches!(t.idempotency.get(key), Some(Idempotency::Held { token: held, .. }) if held == token)
            {
                t.idempotency.remove(key);
            }
        });
        Ok(())
    }

    async fn mark_seen(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        Ok(self.traffic(|t| {
            if t.seen.contains_key(key) {
                return false;
            }
            t.seen.insert(key.to_string(), Instant::now() + ttl);
            true
        }))
    }

    async fn forget_seen(&self, key: &str) -> StoreResult<()> {
        self.traffic(|t| t.seen.remove(key));
        Ok(())
    }

    async fn push_webhook_event(&self, event: &str) -> StoreResult<()> {
        self.traffic(|t| t.queue.push_back(event.to_string()));
        Ok(())
    }

    async fn pop_webhook_event(&self) -> StoreResult<Option<String>> {
        Ok(self.traffic(|t| t.queue.pop_front()))
    }

    async fn join(&self, session: &str, client: &ClientInfo) -> StoreResult<PresenceChange> {
        Ok(self.with(session, |s| {
            s.touch();
            let before = s.members.len();
            s.members.retain(|m| m.client_id != client.client_id);
            let added = before == s.members.len();
            s.members.push(client.clone());
            s.presence_version += 1;
            PresenceChange {
                changed: added,
                version: s.presence_version,
            }
        }))
    }

    async fn leave(&self, session: &str, client_id: &str) -> StoreResult<PresenceChange> {
        Ok(self
            .update(session, |s| {
                let before = s.members.len();
                s.members.retain(|m| m.client_id != client_id);
                let removed = before != s.members.len();
                if removed {
                    s.presence_version += 1;
                }
                Some(PresenceChange {
                    changed: removed,
                    version: s.presence_version,
                })
            })
            .unwrap_or(PresenceChange {
                changed: false,
                version: 0,
            }))
    }

    async fn presence(&self, session: &str) -> StoreResult<Presence> {
        Ok(self.read(session, |s| Presence {
            members: s.members.clone(),
            version: s.presence_version,
        }))
    }

    async fn claim_agent(&self, session: &str, agent: &AgentRef) -> StoreResult<Option<AgentRef>> {
        Ok(self.with(session, |s| s.agent.replace(agent.clone())))
    }

    async fn claim_agent_if_vacant(&self, session: &str, agent: &AgentRef) -> StoreResult<bool> {
        Ok(self.with(session, |s| {
            if s.agent.is_some() {
                return false;
            }
            s.agent = Some(agent.clone());
            true
        }))
    }

    async fn release_agent(&self, session: &str, client_id: &str) -> StoreResult<bool> {
        Ok(self.update(session, |s| {
            if s.agent.as_ref().is_some_and(|a| a.client_id == client_id) {
                s.agent = None;
                true
            } else {
                false
            }
        }))
    }

    async fn agent(&self, session: &str) -> StoreResult<Option<AgentRef>> {
        Ok(self.read(session, |s| s.agent.clone()))
    }

    async fn list_sessions(&self, cursor: Option<&str>, limit: usize) -> StoreResult<SessionPage> {
        let sessions = self.lock();
        // A standalone hub holds few sessions: sorting the names per page is
        // cheaper than keeping a second, ordered index in step.
        let mut names: Vec<&String> = sessions
            .iter()
            .filter(|(name, s)| s.exists() && cursor.is_none_or(|c| name.as_str() > c))
            .map(|(name, _)| name)
            .collect();
        names.sort();
        let more = names.len() > limit;
        names.truncate(limit);
        let listed: Vec<SessionListing> = names
            .into_iter()
            .filter_map(|name| {
                let s = sessions.get(name)?;
                Some(SessionListing {
                    session: name.clone(),
                    clients: s.members.len(),
                    agent: s.agent.clone(),
                    last_activity: s.last_activity,
                    messages_in: s.messages_in,
                    messages_out: s.messages_out,
                })
            })
            .collect();
        let next_cursor = if more {
            listed.last().map(|l| l.session.clone())
        } else {
            None
        };
        Ok(SessionPage {
            sessions: listed,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(contact: &str, n: u64) -> HistoryEntry {
        HistoryEntry {
            direction: MessageDirection::Outgoing,
            contact: contact.into(),
            message: format!("m{n}"),
            message_id: format!("id{n}"),
            timestamp: n,
            by: "t".into(),
            executed_by: None,
            status: None,
            status_error: None,
        }
    }

    #[tokio::test]
    async fn history_is_capped_and_ordered() {
        let store = MemoryStore::new(3);
        for n in 0..5 {
            store.record_message("s", &entry("John", n)).await.unwrap();
        }
        let h = store.history("s", "john", 10).await.unwrap();
        let ids: Vec<_> = h.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, ["id2", "id3", "id4"]);
        assert_eq!(
            store.history("s", "John", 1).await.unwrap()[0].message_id,
            "id4"
        );
        assert_eq!(
            store.last_contact("s").await.unwrap().as_deref(),
            Some("John")
        );
        assert!(store.history("other", "John", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn newest_agent_wins_and_release_is_conditional() {
        let store = MemoryStore::new(3);
        let a = AgentRef {
            client_id: "a".into(),
            instance: "i".into(),
        };
        let b = AgentRef {
            client_id: "b".into(),
            instance: "i".into(),
        };
        assert_eq!(store.claim_agent("s", &a).await.unwrap(), None);
        assert_eq!(store.claim_agent("s", &b).await.unwrap(), Some(a));
        assert!(!store.release_agent("s", "a").await.unwrap());
        assert!(store.release_agent("s", "b").await.unwrap());
        assert_eq!(store.agent("s").await.unwrap(), None);
    }
}
