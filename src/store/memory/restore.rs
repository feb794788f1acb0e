//! The memory store's rows in the data directory: what a session's small
//! state looks like there, and building a store back from a [`Snapshot`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{MemoryStore, SessionState};
use crate::durable::{Journal, Snapshot};
use crate::protocol::{Contact, DeliveryStatus, HistoryEntry, StatusError, now_millis};

/// A session's small state as the journal keeps it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct SessionMeta {
    #[serde(default)]
    seeded: bool,
    #[serde(default)]
    last_contact: Option<String>,
    #[serde(default)]
    last_activity: Option<u64>,
    #[serde(default)]
    messages_in: u64,
    #[serde(default)]
    messages_out: u64,
}

impl SessionMeta {
    pub(super) fn of(state: &SessionState) -> SessionMeta {
        SessionMeta {
            seeded: state.seeded,
            last_contact: state.last_contact.clone(),
            last_activity: state.last_activity,
            messages_in: state.messages_in,
            messages_out: state.messages_out,
        }
    }

    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A delivery status as the journal keeps it.
pub(super) fn status_json(status: DeliveryStatus, error: Option<&StatusError>) -> String {
    serde_json::to_string(&(status, error)).unwrap_or_default()
}

impl MemoryStore {
    /// The store of a data directory: what `snapshot` read back, written
    /// through `journal` from now on. Rows that no longer parse are
    /// skipped (and logged), never fatal.
    pub fn restored(
        history_limit: usize,
        idempotency_max_bytes: u64,
        journal: Journal,
        snapshot: &Snapshot,
    ) -> MemoryStore {
        let mut store = MemoryStore::with_idempotency_budget(history_limit, idempotency_max_bytes);
        let mut skipped = 0usize;
        {
            let mut sessions = store.lock();
            let now = Instant::now();
            for (name, rows) in &snapshot.sessions {
                let mut state = SessionState::default();
                if let Some(json) = &rows.contacts {
                    match serde_json::from_str::<Vec<Contact>>(json) {
                        Ok(contacts) => state.contacts = contacts,
                        Err(_) => skipped += 1,
                    }
                }
                let meta: SessionMeta = rows
                    .meta
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or_default();
                state.seeded = meta.seeded;
                state.last_contact = meta.last_contact;
                state.last_activity = meta.last_activity;
                state.messages_in = meta.messages_in;
                state.messages_out = meta.messages_out;
                for (contact, entries) in &rows.history {
                    let skip = entries.len().saturating_sub(history_limit);
                    let list: VecDeque<HistoryEntry> = entries
                        .iter()
                        .skip(skip)
                        .filter_map(|(_, e)| {
                            let parsed = serde_json::from_str(e).ok();
                            skipped += usize::from(parsed.is_none());
                            parsed
                        })
                        .collect();
                    state.history.insert(contact.clone(), list);
                }
                for (message_id, json) in &rows.statuses {
                    match serde_json::from_str::<(DeliveryStatus, Option<StatusError>)>(json) {
                        Ok(status) => {
                            state.statuses.insert(message_id.clone(), status);
                        }
                        Err(_) => skipped += 1,
                    }
                }
                // A restored session starts a fresh idle period.
                state.touched = Some(now);
                sessions.idle.insert((now, name.clone()));
                sessions.map.insert(name.clone(), state);
            }
        }
        {
            let mut traffic = store.traffic.lock().unwrap_or_else(|p| p.into_inner());
            let now_ms = now_millis();
            let in_ms = |expires_ms: u64| Duration::from_millis(expires_ms.saturating_sub(now_ms));
            for (id, row) in &snapshot.idempotency {
                if row.expires_ms > now_ms {
                    traffic.idempotency.insert_done(
                        id.clone(),
                        &row.caller,
                        &row.fingerprint,
                        &row.result,
                        in_ms(row.expires_ms),
                    );
                }
            }
            for (item, expires_ms) in &snapshot.seen {
                if *expires_ms > now_ms {
                    traffic
                        .webhooks
                        .mark_seen(item, Instant::now() + in_ms(*expires_ms));
                }
            }
            for (seq, event) in &snapshot.queue {
                traffic.webhooks.restore(*seq, event.clone());
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "rows of the data directory that could not be read were skipped"
            );
        }
        store
            .history_seq
            .store(snapshot.last_history_seq, Ordering::Relaxed);
        store.journal = Some(journal);
        store
    }
}
