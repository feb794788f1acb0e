//! The journal's writer thread: group commit. It takes everything queued,
//! applies it in one redb write transaction, commits (an fsync), then
//! acknowledges each submission in order.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use redb::{Database, ReadableTable, Table, WriteTransaction};

use super::Op;
use super::tables::{
    CONTACTS, EVENTS, HISTORY, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, META, QUEUE, SEEN, SEEN_EXPIRY,
    SETTINGS, STATUSES, expiry_id, expiry_key, key, prefix_end,
};

/// Most submissions one transaction takes (the rest wait for the next).
const BATCH: usize = 512;

pub(super) type After = Box<dyn FnOnce(bool) + Send>;

pub(super) struct Submission {
    pub ops: Vec<Op>,
    pub done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    pub after: Option<After>,
}

pub(super) fn spawn(db: Database, path: PathBuf) -> mpsc::Sender<Submission> {
    let (tx, rx) = mpsc::channel::<Submission>();
    let spawned = std::thread::Builder::new()
        .name("mcp-hub-journal".into())
        .spawn(move || run(Some(db), &path, &rx));
    if let Err(e) = spawned {
        // Every submission then fails (its channel is closed): the store
        // answers store_unavailable rather than pretend.
        tracing::error!(error = %e, "cannot start the data directory's writer");
    }
    tx
}

fn run(mut db: Option<Database>, path: &Path, rx: &mpsc::Receiver<Submission>) {
    // A failed commit may have taken events that clients were shown: the
    // first commit after it gives the log a new epoch, so after a restart
    // those offsets are never taken for others (clients start afresh).
    let mut new_epoch = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // After a failed write (a full disk...) redb wants the database
        // closed and opened again: done before the next batch, until it
        // works. What failed was not acknowledged; what is on disk is the
        // last commit, whole (copy-on-write).
        if db.is_none() {
            db = Database::create(path)
                .inspect_err(
                    |e| tracing::debug!(error = %e, "the data directory cannot be reopened yet"),
                )
                .ok();
        }
        let result = match &db {
            Some(open) => commit(open, &batch, new_epoch).map_err(|e| e.to_string()),
            None => Err("the data directory cannot be opened again yet".to_string()),
        };
        if let Err(error) = &result {
            tracing::error!(%error, "the data directory could not be written");
            db = None;
            new_epoch = true;
        } else {
            new_epoch = false;
        }
        for submission in batch {
            if let Some(done) = submission.done {
                let _ = done.send(result.clone());
            }
            if let Some(after) = submission.after {
                after(result.is_ok());
            }
        }
    }
}

fn commit(db: &Database, batch: &[Submission], new_epoch: bool) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    apply(&txn, batch.iter().flat_map(|s| &s.ops))?;
    if new_epoch {
        let epoch = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        txn.open_table(SETTINGS)?.insert("epoch", epoch.as_str())?;
    }
    txn.commit()?;
    Ok(())
}

fn apply<'a>(txn: &WriteTransaction, ops: impl Iterator<Item = &'a Op>) -> Result<(), redb::Error> {
    let mut contacts = txn.open_table(CONTACTS)?;
    let mut meta = txn.open_table(META)?;
    let mut history = txn.open_table(HISTORY)?;
    let mut statuses = txn.open_table(STATUSES)?;
    let mut idempotency = txn.open_table(IDEMPOTENCY)?;
    let mut idempotency_expiry = txn.open_table(IDEMPOTENCY_EXPIRY)?;
    let mut seen = txn.open_table(SEEN)?;
    let mut seen_expiry = txn.open_table(SEEN_EXPIRY)?;
    let mut queue = txn.open_table(QUEUE)?;
    let mut events = txn.open_table(EVENTS)?;
    let mut settings = txn.open_table(SETTINGS)?;
    for op in ops {
        match op {
            Op::Contacts { session, json } => {
                contacts.insert(session.as_str(), json.as_str())?;
            }
            Op::Meta { session, json } => {
                meta.insert(session.as_str(), json.as_str())?;
            }
            Op::History {
                session,
                contact,
                seq,
                entry,
                keep,
            } => {
                history.insert(
                    key(&[session, contact], Some(*seq)).as_slice(),
                    entry.as_str(),
                )?;
                keep_newest(&mut history, &key(&[session, contact], None), *keep)?;
            }
            Op::Status {
                session,
                message_id,
                json,
                reset,
            } => {
                if *reset {
                    remove_prefix(&mut statuses, &key(&[session], None))?;
                }
                statuses.insert(key(&[session, message_id], None).as_slice(), json.as_str())?;
            }
            Op::RemoveSession { session } => {
                contacts.remove(session.as_str())?;
                meta.remove(session.as_str())?;
                let prefix = key(&[session], None);
                remove_prefix(&mut history, &prefix)?;
                remove_prefix(&mut statuses, &prefix)?;
                remove_prefix(&mut events, &prefix)?;
            }
            Op::IdempotencyPut { id, row } => {
                let old = idempotency
                    .insert(id.as_str(), row.to_json().as_str())?
                    .and_then(|old| super::IdempotencyRow::from_json(old.value()));
                if let Some(old) = old {
                    idempotency_expiry.remove(expiry_key(old.expires_ms, id).as_slice())?;
                }
                idempotency_expiry.insert(expiry_key(row.expires_ms, id).as_slice(), ())?;
            }
            Op::IdempotencyDelete { id } => {
                let old = idempotency
                    .remove(id.as_str())?
                    .and_then(|old| super::IdempotencyRow::from_json(old.value()));
                if let Some(old) = old {
                    idempotency_expiry.remove(expiry_key(old.expires_ms, id).as_slice())?;
                }
            }
            Op::SeenPut {
                key: item,
                expires_ms,
            } => {
                seen.insert(item.as_str(), expires_ms)?;
                seen_expiry.insert(expiry_key(*expires_ms, item).as_slice(), ())?;
            }
            Op::SeenDelete { key: item } => {
                let old = seen.remove(item.as_str())?.map(|e| e.value());
                if let Some(expires_ms) = old {
                    seen_expiry.remove(expiry_key(expires_ms, item).as_slice())?;
                }
            }
            Op::QueuePush { seq, event } => {
                queue.insert(seq, event.as_str())?;
            }
            Op::QueuePop { seq } => {
                queue.remove(seq)?;
            }
            Op::Event {
                session,
                offset,
                entry,
                keep,
            } => {
                events.insert(key(&[session], Some(*offset)).as_slice(), entry.as_str())?;
                keep_newest(&mut events, &key(&[session], None), *keep)?;
            }
            Op::ForgetLog { session, head } => {
                remove_prefix(&mut events, &key(&[session], None))?;
                let known = settings
                    .get("forgotten_head")?
                    .and_then(|v| v.value().parse::<u64>().ok())
                    .unwrap_or(0);
                let head = known.max(*head).to_string();
                settings.insert("forgotten_head", head.as_str())?;
            }
            Op::Purge { now_ms } => {
                for id in expired(&mut idempotency_expiry, *now_ms)? {
                    idempotency.remove(id.as_str())?;
                }
                for item in expired(&mut seen_expiry, *now_ms)? {
                    seen.remove(item.as_str())?;
                }
            }
        }
    }
    Ok(())
}

/// Removes every row whose key starts with `prefix`.
fn remove_prefix<V: redb::Value + 'static>(
    table: &mut Table<&'static [u8], V>,
    prefix: &[u8],
) -> Result<(), redb::Error> {
    match prefix_end(prefix) {
        Some(end) => table.retain_in(prefix..end.as_slice(), |_, _| false)?,
        None => table.retain_in(prefix.., |_, _| false)?,
    }
    Ok(())
}

/// Keeps the newest `keep` rows under `prefix` (keys ending in a number).
fn keep_newest<V: redb::Value + 'static>(
    table: &mut Table<&'static [u8], V>,
    prefix: &[u8],
    keep: usize,
) -> Result<(), redb::Error> {
    let end = prefix_end(prefix).unwrap_or_default();
    let keys: Vec<Vec<u8>> = table
        .range(prefix..end.as_slice())?
        .map(|row| row.map(|(k, _)| k.value().to_vec()))
        .collect::<Result<_, _>>()?;
    for old in keys.iter().take(keys.len().saturating_sub(keep)) {
        table.remove(old.as_slice())?;
    }
    Ok(())
}

/// Takes the expiry index's entries at or before `now_ms`; their ids.
fn expired(index: &mut Table<&'static [u8], ()>, now_ms: u64) -> Result<Vec<String>, redb::Error> {
    let end = expiry_key(now_ms.saturating_add(1), "");
    let mut ids = Vec::new();
    index.retain_in(..end.as_slice(), |k, ()| {
        ids.push(expiry_id(k).to_string());
        false
    })?;
    Ok(ids)
}
