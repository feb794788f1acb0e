//! Held sends kept in this process (standalone): one lock around every
//! step, so a decision is as atomic as the Redis twin's script.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{Approval, ApprovalStore, Decide, Decision, Held, Record, Resolution};
use crate::protocol::{HubError, now_millis};

#[derive(Default)]
struct SessionApprovals {
    records: BTreeMap<u64, Kept>,
}

struct Kept {
    record: Record,
    /// When it is forgotten (ms): `keep` after its expiry or decision.
    drop_at: u64,
}

impl SessionApprovals {
    fn forget_old(&mut self, now: u64) {
        self.records.retain(|_, kept| kept.drop_at > now);
    }

    fn undecided(&self) -> impl Iterator<Item = &Record> {
        self.records
            .values()
            .map(|k| &k.record)
            .filter(|r| r.resolution.is_none())
    }
}

#[derive(Default)]
pub struct MemoryApprovals {
    sessions: Mutex<HashMap<String, SessionApprovals>>,
    /// One numbering for every session: numbers stay unique in a session
    /// even after its records (and entry) are gone.
    last_id: AtomicU64,
}

impl MemoryApprovals {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_session<T>(&self, session: &str, f: impl FnOnce(&mut SessionApprovals) -> T) -> T {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sessions.entry(session.to_string()).or_default();
        entry.forget_old(now_millis());
        f(entry)
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[async_trait]
impl ApprovalStore for MemoryApprovals {
    async fn next_id(&self, session: &str) -> Result<u64, HubError> {
        let _ = session;
        Ok(self.last_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn hold(
        &self,
        held: &Held,
        max_pending: usize,
        keep: Duration,
    ) -> Result<bool, HubError> {
        let now = now_millis();
        Ok(self.with_session(&held.approval.session, |s| {
            let live = s
                .undecided()
                .filter(|r| r.held.approval.expires_at > now)
                .count();
            if live >= max_pending {
                return false;
            }
            s.records.insert(
                held.approval.id,
                Kept {
                    record: Record {
                        held: held.clone(),
                        resolution: None,
                        outcome: None,
                    },
                    drop_at: held.approval.expires_at + millis(keep),
                },
            );
            true
        }))
    }

    async fn decide(
        &self,
        session: &str,
        id: u64,
        resolution: &Resolution,
        now: u64,
        keep: Duration,
    ) -> Result<Decide, HubError> {
        Ok(self.with_session(session, |s| {
            let Some(kept) = s.records.get_mut(&id) else {
                return Decide::Unknown;
            };
            if kept.record.resolution.is_some() {
                return Decide::Lost(kept.record.clone());
            }
            let recorded = if now >= kept.record.held.approval.expires_at
                && resolution.decision != Decision::Expired
            {
                Resolution::expiry(now)
            } else {
                resolution.clone()
            };
            kept.record.resolution = Some(recorded.clone());
            kept.drop_at = now + millis(keep);
            Decide::Won(kept.record.held.clone(), recorded)
        }))
    }

    async fn finish(&self, session: &str, id: u64, outcome: &Value) -> Result<(), HubError> {
        self.with_session(session, |s| {
            if let Some(kept) = s.records.get_mut(&id) {
                kept.record.outcome = Some(outcome.clone());
            }
        });
        Ok(())
    }

    async fn get(&self, session: &str, id: u64) -> Result<Option<Record>, HubError> {
        Ok(self.with_session(session, |s| s.records.get(&id).map(|k| k.record.clone())))
    }

    async fn pending(&self, session: &str, max: usize) -> Result<Vec<Approval>, HubError> {
        Ok(self.with_session(session, |s| {
            s.undecided()
                .take(max)
                .map(|r| r.held.approval.clone())
                .collect()
        }))
    }

    async fn due(&self, now: u64, max: usize) -> Result<Vec<(String, u64)>, HubError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| {
            s.forget_old(now);
            !s.records.is_empty()
        });
        Ok(sessions
            .iter()
            .flat_map(|(name, s)| {
                s.undecided()
                    .filter(|r| r.held.approval.expires_at <= now)
                    .map(|r| (name.clone(), r.held.approval.id))
            })
            .take(max)
            .collect())
    }
}
