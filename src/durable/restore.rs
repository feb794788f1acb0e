//! Reading the durable state back at start ([`Snapshot`]), and the rows'
//! shapes the store writes.

use std::collections::BTreeMap;

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{
    CONTACTS, EVENTS, HISTORY, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, META, QUEUE, SEEN, SEEN_EXPIRY,
    SETTINGS, STATUSES, parts, trailing_number,
};

/// A stored idempotency result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRow {
    pub caller: String,
    pub fingerprint: String,
    pub result: String,
    /// When it expires (ms since epoch).
    pub expires_ms: u64,
}

impl IdempotencyRow {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Option<IdempotencyRow> {
        serde_json::from_str(text).ok()
    }
}

/// One session's rows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SessionRows {
    pub contacts: Option<String>,
    pub meta: Option<String>,
    /// Lower-cased contact → its entries (JSON), oldest first, with seq.
    pub history: BTreeMap<String, Vec<(u64, String)>>,
    /// Message id → status (JSON).
    pub statuses: Vec<(String, String)>,
}

/// Everything the data directory holds, read at start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub sessions: BTreeMap<String, SessionRows>,
    pub idempotency: Vec<(String, IdempotencyRow)>,
    /// Seen webhook items and their expiry (ms).
    pub seen: Vec<(String, u64)>,
    /// Accepted webhook events, oldest first.
    pub queue: Vec<(u64, String)>,
    /// The log's epoch: made once per data directory, so offsets carry on
    /// across restarts.
    pub epoch: String,
    /// New logs start above this offset ([`super::Op::ForgetLog`]).
    pub forgotten_head: u64,
    /// Each session's logged events (offset, entry), oldest first.
    pub logs: BTreeMap<String, Vec<(u64, String)>>,
    /// The highest history seq in use.
    pub last_history_seq: u64,
}

/// Creates the tables and the epoch on first use, then reads everything.
pub(super) fn read(db: &Database) -> Result<Snapshot, redb::Error> {
    init(db)?;
    let txn = db.begin_read()?;
    let mut snapshot = Snapshot::default();
    let settings = txn.open_table(SETTINGS)?;
    snapshot.epoch = settings
        .get("epoch")?
        .map(|v| v.value().to_string())
        .unwrap_or_default();
    snapshot.forgotten_head = settings
        .get("forgotten_head")?
        .and_then(|v| v.value().parse().ok())
        .unwrap_or(0);
    for row in txn.open_table(CONTACTS)?.iter()? {
        let (session, json) = row?;
        snapshot
            .sessions
            .entry(session.value().to_string())
            .or_default()
            .contacts = Some(json.value().to_string());
    }
    for row in txn.open_table(META)?.iter()? {
        let (session, json) = row?;
        snapshot
            .sessions
            .entry(session.value().to_string())
            .or_default()
            .meta = Some(json.value().to_string());
    }
    for row in txn.open_table(HISTORY)?.iter()? {
        let (key, entry) = row?;
        let key = key.value();
        let seq = trailing_number(key);
        snapshot.last_history_seq = snapshot.last_history_seq.max(seq);
        if let [session, contact] = parts(key, 2).as_slice() {
            snapshot
                .sessions
                .entry(session.clone())
                .or_default()
                .history
                .entry(contact.clone())
                .or_default()
                .push((seq, entry.value().to_string()));
        }
    }
    for row in txn.open_table(STATUSES)?.iter()? {
        let (key, json) = row?;
        if let [session, message_id] = parts(key.value(), 2).as_slice() {
            snapshot
                .sessions
                .entry(session.clone())
                .or_default()
                .statuses
                .push((message_id.clone(), json.value().to_string()));
        }
    }
    for row in txn.open_table(IDEMPOTENCY)?.iter()? {
        let (id, json) = row?;
        if let Some(record) = IdempotencyRow::from_json(json.value()) {
            snapshot.idempotency.push((id.value().to_string(), record));
        }
    }
    for row in txn.open_table(SEEN)?.iter()? {
        let (item, expires) = row?;
        snapshot
            .seen
            .push((item.value().to_string(), expires.value()));
    }
    for row in txn.open_table(QUEUE)?.iter()? {
        let (seq, event) = row?;
        snapshot
            .queue
            .push((seq.value(), event.value().to_string()));
    }
    for row in txn.open_table(EVENTS)?.iter()? {
        let (key, entry) = row?;
        let key = key.value();
        if let [session] = parts(key, 1).as_slice() {
            snapshot
                .logs
                .entry(session.clone())
                .or_default()
                .push((trailing_number(key), entry.value().to_string()));
        }
    }
    Ok(snapshot)
}

/// Opens every table (creating it) and makes the epoch once.
fn init(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(CONTACTS)?;
        txn.open_table(META)?;
        txn.open_table(HISTORY)?;
        txn.open_table(STATUSES)?;
        txn.open_table(IDEMPOTENCY)?;
        txn.open_table(IDEMPOTENCY_EXPIRY)?;
        txn.open_table(SEEN)?;
        txn.open_table(SEEN_EXPIRY)?;
        txn.open_table(QUEUE)?;
        txn.open_table(EVENTS)?;
        let mut settings = txn.open_table(SETTINGS)?;
        if settings.get("epoch")?.is_none() {
            let epoch = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
            settings.insert("epoch", epoch.as_str())?;
        }
    }
    txn.commit()?;
    Ok(())
}
