//! In-process session store for standalone mode. Whatever expires is
//! kept in an ordered index beside its map (idle sessions, idempotency
//! records and locks, seen webhook items), so expiring costs what expired,
//! never a scan of everything.
//!
//! With a data directory (DATA_DIR) it is the embedded durable store: the
//! maps stay the working copy, and every write also hands the rows it
//! changed to the [`Journal`] under the same lock, then waits until they
//! are on disk before it returns ([`crate::durable`]). Presence, the agent
//! role and idempotency locks are not kept: a restarted process has no
//! connection, and a request it was running is gone.

mod idempotency;
mod restore;
mod webhooks;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use idempotency::Idempotency;
use restore::{SessionMeta, status_json};
use webhooks::WebhookBook;

use super::{
    AgentRef, IdempotencyBegin, IdempotencyKey, JoinRefused, JoinRule, NewSender, Presence,
    PresenceChange, SenderContact, SessionListing, SessionPage, SessionStore, StoreResult,
    may_replace, phone_digits,
};
use crate::durable::{Commit, IdempotencyRow, Journal, Op, committed};
use crate::protocol::{
    ClientInfo, Contact, DeliveryStatus, HistoryEntry, MessageDirection, StatusError, now_millis,
};

/// Most delivery statuses a session keeps (then they start over).
const MAX_STATUSES: usize = 10_000;

/// IDEMPOTENCY_MAX_TOTAL_BYTES's default, for stores made without one.
const DEFAULT_IDEMPOTENCY_BYTES: u64 = 64 * 1024 * 1024;

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
    /// The last write, join or leave: what idle expiry measures from.
    touched: Option<Instant>,
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

/// The sessions, and when each is next looked at by the idle sweep.
#[derive(Default)]
struct Sessions {
    map: HashMap<String, SessionState>,
    /// Every session of `map` exactly once, by the time it is next checked
    /// for idleness: its creation, then (re-queued by the sweep) its last
    /// touch. Writes do not move it, so they cost no index update; the
    /// sweep re-queues a session it finds touched since.
    idle: BTreeSet<(Instant, String)>,
}

/// Expiring WhatsApp bookkeeping: idempotency keys, seen webhook items and
/// the queue of accepted webhook events.
struct Traffic {
    idempotency: Idempotency,
    webhooks: WebhookBook,
}

impl Traffic {
    /// Drops what expired: the fronts of the expiry indexes only.
    fn expire(&mut self, now: Instant) {
        self.idempotency.expire(now);
        self.webhooks.expire(now);
    }
}

pub struct MemoryStore {
    history_limit: usize,
    sessions: Mutex<Sessions>,
    traffic: Mutex<Traffic>,
    /// The data directory's journal (None: memory only).
    journal: Option<Journal>,
    /// Numbers the journal's history rows.
    history_seq: AtomicU64,
}

impl MemoryStore {
    pub fn new(history_limit: usize) -> Self {
        Self::with_idempotency_budget(history_limit, DEFAULT_IDEMPOTENCY_BYTES)
    }

    /// A store whose idempotency records take at most `max_bytes` in all
    /// (IDEMPOTENCY_MAX_TOTAL_BYTES): past it the oldest are forgotten.
    pub fn with_idempotency_budget(history_limit: usize, max_bytes: u64) -> Self {
        MemoryStore {
            history_limit,
            sessions: Mutex::new(Sessions::default()),
            traffic: Mutex::new(Traffic {
                idempotency: Idempotency::new(max_bytes),
                webhooks: WebhookBook::default(),
            }),
            journal: None,
            history_seq: AtomicU64::new(0),
        }
    }

    /// The journal's ops of `f`, queued (under the caller's lock) when the
    /// store has a data directory.
    fn journal(&self, ops: impl FnOnce() -> Vec<Op>) -> Option<Commit> {
        self.journal.as_ref().map(|j| j.submit(ops()))
    }

    fn traffic<T>(&self, f: impl FnOnce(&mut Traffic) -> T) -> T {
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        t.expire(Instant::now());
        f(&mut t)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain data; the data itself is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write: creates the session when it is new (queued for the idle
    /// sweep), and touches it.
    fn with<T>(&self, session: &str, f: impl FnOnce(&mut SessionState) -> T) -> T {
        let mut sessions = self.lock();
        let Sessions { map, idle } = &mut *sessions;
        let now = Instant::now();
        let state = match map.get_mut(session) {
            Some(state) => state,
            None => {
                idle.insert((now, session.to_string()));
                map.entry(session.to_string()).or_default()
            }
        };
        state.touched = Some(now);
        f(state)
    }

    /// A read: an unknown session reads as empty and is not created.
    fn read<T: Default>(&self, session: &str, f: impl FnOnce(&SessionState) -> T) -> T {
        self.lock().map.get(session).map(f).unwrap_or_default()
    }

    /// A removal: changes (and touches) an existing session only.
    fn update<T: Default>(&self, session: &str, f: impl FnOnce(&mut SessionState) -> T) -> T {
        self.lock()
            .map
            .get_mut(session)
            .map(|state| {
                state.touched = Some(Instant::now());
                f(state)
            })
            .unwrap_or_default()
    }
}

impl MemoryStore {
    /// [`SessionStore::expire_idle`]'s work under the lock.
    fn remove_idle(&self, idle: Duration, max: usize) -> (Vec<String>, Option<Commit>) {
        let now = Instant::now();
        let Some(cutoff) = now.checked_sub(idle) else {
            return (Vec::new(), None);
        };
        let mut sessions = self.lock();
        let Sessions { map, idle: queue } = &mut *sessions;
        let mut removed = Vec::new();
        for _ in 0..max {
            if queue.first().is_none_or(|(at, _)| *at > cutoff) {
                break;
            }
            let Some((_, name)) = queue.pop_first() else {
                break;
            };
            let Some(state) = map.get(&name) else {
                continue;
            };
            if !state.members.is_empty() {
                // In use: looked at again one idle period from now.
                queue.insert((now, name));
            } else if let Some(touched) = state.touched.filter(|t| *t > cutoff) {
                queue.insert((touched, name));
            } else {
                map.remove(&name);
                removed.push(name);
            }
        }
        // The sweep also drops the journal's expired records.
        let commit = self.journal(|| {
            let mut ops: Vec<Op> = removed
                .iter()
                .map(|session| Op::RemoveSession {
                    session: session.clone(),
                })
                .collect();
            ops.push(Op::Purge {
                now_ms: now_millis(),
            });
            ops
        });
        (removed, commit)
    }
}

/// Waits until a write is on disk (nothing to wait for without a journal).
async fn durable(commit: Option<Commit>) -> StoreResult<()> {
    match commit {
        Some(commit) => committed(commit).await,
        None => Ok(()),
    }
}

impl SessionState {
    /// The journal rows of the session's contacts and small state.
    fn contact_ops(&self, session: &str) -> Vec<Op> {
        vec![
            Op::Contacts {
                session: session.to_string(),
                json: serde_json::to_string(&self.contacts).unwrap_or_default(),
            },
            self.meta_op(session),
        ]
    }

    fn meta_op(&self, session: &str) -> Op {
        Op::Meta {
            session: session.to_string(),
            json: SessionMeta::of(self).to_json(),
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn exists(&self, session: &str) -> StoreResult<bool> {
        Ok(self.read(session, SessionState::exists))
    }

    async fn add_sender_contact(
        &self,
        session: &str,
        sender: &NewSender<'_>,
        max: usize,
    ) -> StoreResult<SenderContact> {
        let (answer, commit) = self.with(session, |s| {
            if let Some(known) = s.contacts.iter().find(|c| {
                c.phone
                    .as_deref()
                    .is_some_and(|p| phone_digits(p) == sender.digits)
            }) {
                return (SenderContact::Known(known.name.clone()), None);
            }
            if s.contacts.len() >= max {
                return (SenderContact::Full, None);
            }
            let taken = s
                .contacts
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(sender.name));
            let name = if taken {
                sender.name_if_taken
            } else {
                sender.name
            };
            s.touch();
            s.seeded = true;
            s.contacts.push(Contact {
                name: name.to_string(),
                phone: Some(sender.phone.to_string()),
            });
            let commit = self.journal(|| s.contact_ops(session));
            let added = SenderContact::Added {
                name: name.to_string(),
                contacts: s.contacts.clone(),
            };
            (added, commit)
        });
        durable(commit).await?;
        Ok(answer)
    }

    async fn expire_idle(&self, idle: Duration, max: usize) -> StoreResult<Vec<String>> {
        let (removed, commit) = self.remove_idle(idle, max);
        durable(commit).await?;
        Ok(removed)
    }

    async fn seed_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()> {
        let commit = self.with(session, |s| {
            if s.seeded {
                return None;
            }
            s.touch();
            s.seeded = true;
            if s.contacts.is_empty() {
                s.contacts = contacts.to_vec();
            }
            self.journal(|| s.contact_ops(session))
        });
        durable(commit).await
    }

    async fn contacts(&self, session: &str) -> StoreResult<Vec<Contact>> {
        Ok(self.read(session, |s| s.contacts.clone()))
    }

    async fn set_contacts(&self, session: &str, contacts: &[Contact]) -> StoreResult<()> {
        let commit = self.with(session, |s| {
            s.touch();
            s.seeded = true;
            s.contacts = contacts.to_vec();
            self.journal(|| s.contact_ops(session))
        });
        durable(commit).await
    }

    async fn last_contact(&self, session: &str) -> StoreResult<Option<String>> {
        Ok(self.read(session, |s| s.last_contact.clone()))
    }

    async fn record_message(&self, session: &str, entry: &HistoryEntry) -> StoreResult<()> {
        let limit = self.history_limit;
        let commit = self.with(session, |s| {
            s.touch();
            match entry.direction {
                MessageDirection::Incoming => s.messages_in += 1,
                MessageDirection::Outgoing => s.messages_out += 1,
            }
            s.last_contact = Some(entry.contact.clone());
            let contact = entry.contact.to_lowercase();
            let list = s.history.entry(contact.clone()).or_default();
            list.push_back(entry.clone());
            while list.len() > limit {
                list.pop_front();
            }
            self.journal(|| {
                vec![
                    Op::History {
                        session: session.to_string(),
                        contact,
                        seq: self.history_seq.fetch_add(1, Ordering::Relaxed) + 1,
                        entry: serde_json::to_string(entry).unwrap_or_default(),
                        keep: limit,
                    },
                    s.meta_op(session),
                ]
            })
        });
        durable(commit).await
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

    async fn conversations(&self, session: &str) -> StoreResult<Vec<String>> {
        Ok(self.read(session, |s| {
            let mut names: Vec<String> = s.history.keys().cloned().collect();
            names.sort();
            names
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
        let (changed, commit) = self.with(session, |s| {
            let current = s.statuses.get(message_id).map(|(st, _)| *st);
            if !status.advances(current) {
                return (false, None);
            }
            // Bounded like the history it annotates.
            let reset = s.statuses.len() >= MAX_STATUSES;
            if reset {
                s.statuses.clear();
            }
            s.statuses
                .insert(message_id.to_string(), (status, error.cloned()));
            let commit = self.journal(|| {
                vec![Op::Status {
                    session: session.to_string(),
                    message_id: message_id.to_string(),
                    json: status_json(status, error),
                    reset,
                }]
            });
            (true, commit)
        });
        durable(commit).await?;
        Ok(changed)
    }

    async fn idempotency_begin(
        &self,
        key: &IdempotencyKey<'_>,
        token: &str,
        lock_ttl: Duration,
    ) -> StoreResult<IdempotencyBegin> {
        Ok(self.traffic(|t| t.idempotency.begin(key, token, lock_ttl)))
    }

    async fn idempotency_finish(
        &self,
        key: &IdempotencyKey<'_>,
        token: &str,
        result: &str,
        ttl: Duration,
        per_caller: usize,
    ) -> StoreResult<usize> {
        let (evicted, commit) = self.traffic(|t| {
            let evicted = t.idempotency.finish(key, token, result, ttl, per_caller);
            let commit = self.journal(|| {
                let put = Op::IdempotencyPut {
                    id: Idempotency::id(key),
                    row: IdempotencyRow {
                        caller: key.caller.to_string(),
                        fingerprint: key.fingerprint.to_string(),
                        result: result.to_string(),
                        expires_ms: now_millis() + ttl.as_millis() as u64,
                    },
                };
                let forgotten = evicted
                    .iter()
                    .map(|id| Op::IdempotencyDelete { id: id.clone() });
                std::iter::once(put).chain(forgotten).collect()
            });
            (evicted.len(), commit)
        });
        durable(commit).await?;
        Ok(evicted)
    }

    async fn idempotency_abandon(&self, key: &IdempotencyKey<'_>, token: &str) -> StoreResult<()> {
        self.traffic(|t| t.idempotency.release(&Idempotency::id(key), token));
        Ok(())
    }

    async fn mark_seen(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        let (first, commit) = self.traffic(|t| {
            if !t.webhooks.mark_seen(key, Instant::now() + ttl) {
                return (false, None);
            }
            let commit = self.journal(|| {
                vec![Op::SeenPut {
                    key: key.to_string(),
                    expires_ms: now_millis() + ttl.as_millis() as u64,
                }]
            });
            (true, commit)
        });
        if let Err(e) = durable(commit).await {
            // Not seen after all: the redelivery this error causes must
            // get through.
            self.traffic(|t| t.webhooks.forget_seen(key));
            return Err(e);
        }
        Ok(first)
    }

    async fn forget_seen(&self, key: &str) -> StoreResult<()> {
        let commit = self.traffic(|t| {
            t.webhooks.forget_seen(key);
            self.journal(|| {
                vec![Op::SeenDelete {
                    key: key.to_string(),
                }]
            })
        });
        durable(commit).await
    }

    async fn push_webhook_event(&self, event: &str) -> StoreResult<()> {
        let commit = self.traffic(|t| {
            let seq = t.webhooks.push(event);
            self.journal(|| {
                vec![Op::QueuePush {
                    seq,
                    event: event.to_string(),
                }]
            })
        });
        durable(commit).await
    }

    async fn claim_webhook_event(&self, lease: Duration) -> StoreResult<Option<(String, String)>> {
        Ok(self.traffic(|t| {
            let (seq, event) = t.webhooks.claim(Instant::now(), lease)?;
            Some((seq.to_string(), event))
        }))
    }

    async fn ack_webhook_event(&self, claim: &str) -> StoreResult<()> {
        let Ok(seq) = claim.parse::<u64>() else {
            return Ok(());
        };
        let commit = self.traffic(|t| {
            if !t.webhooks.ack(seq) {
                return None;
            }
            self.journal(|| vec![Op::QueuePop { seq }])
        });
        durable(commit).await
    }

    async fn join(
        &self,
        session: &str,
        client: &ClientInfo,
        rule: JoinRule,
    ) -> StoreResult<Result<PresenceChange, JoinRefused>> {
        Ok(self.with(session, |s| {
            let held = s
                .members
                .iter()
                .position(|m| m.client_id == client.client_id);
            match held {
                Some(i) if !may_replace(&s.members[i], client) => {
                    return Err(JoinRefused::HeldByAnother);
                }
                None if s.members.len() >= rule.max_members => return Err(JoinRefused::Full),
                _ => {}
            }
            s.touch();
            if let Some(i) = held {
                s.members.remove(i);
            }
            s.members.push(client.clone());
            s.presence_version += 1;
            Ok(PresenceChange {
                changed: held.is_none(),
                version: s.presence_version,
            })
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
                    s.touch();
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

    async fn member(&self, session: &str, client_id: &str) -> StoreResult<Option<ClientInfo>> {
        Ok(self.read(session, |s| {
            s.members.iter().find(|m| m.client_id == client_id).cloned()
        }))
    }

    async fn presence(&self, session: &str, limit: usize) -> StoreResult<Presence> {
        Ok(self.read(session, |s| Presence {
            members: s.members.iter().take(limit).cloned().collect(),
            total: s.members.len(),
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

    async fn release_agent(&self, session: &str, agent: &AgentRef) -> StoreResult<bool> {
        Ok(self.update(session, |s| {
            if s.agent.as_ref() == Some(agent) {
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
        let guard = self.lock();
        let sessions = &guard.map;
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
                    phone_number_id: None,
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
            content: Default::default(),
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
    async fn an_idle_sweep_removes_at_most_its_batch() {
        let store = MemoryStore::new(3);
        for n in 0..10 {
            store
                .record_message(&format!("s{n}"), &entry("John", n))
                .await
                .unwrap();
        }
        let idle = Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.expire_idle(idle, 3).await.unwrap().len(), 3);
        assert_eq!(store.expire_idle(idle, 100).await.unwrap().len(), 7);
        let sessions = store.lock();
        assert!(sessions.map.is_empty() && sessions.idle.is_empty());
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
        assert_eq!(store.claim_agent("s", &b).await.unwrap(), Some(a.clone()));
        assert!(!store.release_agent("s", &a).await.unwrap());
        assert!(store.release_agent("s", &b).await.unwrap());
        assert_eq!(store.agent("s").await.unwrap(), None);
    }
}
