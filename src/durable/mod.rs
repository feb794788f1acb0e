//! The standalone hub's durable state (`DATA_DIR`, docs/reliability.md):
//! one redb database file that the embedded store and the standalone log
//! write through a [`Journal`].
//!
//! The in-process store and log stay the working copy — every read is
//! served from memory, every atomic step is taken under their locks —
//! and each write also hands the rows it changed to the journal, *inside*
//! that lock, so the file sees the writes in the order memory did. One
//! writer thread commits whatever is queued in one redb transaction
//! (group commit) with an fsync, then acknowledges: a store write returns,
//! and a logged event is handed to the dispatcher, only once it is on
//! disk. So a kill -9 or a power cut loses nothing a client was answered
//! or shown. At start, [`Journal::open`] reads everything back
//! ([`Snapshot`]) for the store and the log to restore.
//!
//! Bounded like memory: a conversation keeps `HISTORY_LIMIT` rows, a
//! session's log `SESSION_LOG_LEN`, a session's statuses 10 000;
//! idempotency records and seen webhook items are dropped when they
//! expire; a removed (idle) session takes all its rows along.

mod restore;
mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use redb::Database;

pub use restore::{IdempotencyRow, SessionRows, Snapshot};

/// One change to the durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A session's contacts (JSON `{contacts, seeded}`).
    Contacts {
        session: String,
        json: String,
    },
    /// A session's small state: last contact, counters, activity (JSON).
    Meta {
        session: String,
        json: String,
    },
    /// A recorded message of a conversation (the lower-cased contact),
    /// numbered `seq`; the conversation keeps its newest `keep`.
    History {
        session: String,
        contact: String,
        seq: u64,
        entry: String,
        keep: usize,
    },
    /// A sent message's latest delivery status (JSON); `reset`: the
    /// session's statuses were cleared first (memory's cap).
    Status {
        session: String,
        message_id: String,
        json: String,
        reset: bool,
    },
    /// Everything of a session (the idle sweep removed it).
    RemoveSession {
        session: String,
    },
    /// An idempotency result (JSON [`IdempotencyRow`]).
    IdempotencyPut {
        id: String,
        row: IdempotencyRow,
    },
    IdempotencyDelete {
        id: String,
    },
    /// A webhook item seen until `expires_ms`.
    SeenPut {
        key: String,
        expires_ms: u64,
    },
    SeenDelete {
        key: String,
    },
    /// The queue of accepted webhook events.
    QueuePush {
        seq: u64,
        event: String,
    },
    QueuePop {
        seq: u64,
    },
    /// A logged event (its entry text); the session's log keeps its
    /// newest `keep`.
    Event {
        session: String,
        offset: u64,
        entry: String,
        keep: usize,
    },
    /// A forgotten log: its events go; new logs start above `head`.
    ForgetLog {
        session: String,
        head: u64,
    },
    /// Drops idempotency records and seen items expired by `now_ms`.
    Purge {
        now_ms: u64,
    },
}

/// Resolves once the ops it was given for are on disk (Err: the commit
/// failed, with why).
pub type Commit = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// Why the data directory cannot be used (a startup error naming DATA_DIR).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

/// The write side of the durable state: queues ops for the writer thread.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<writer::Submission>,
    path: Arc<PathBuf>,
}

/// The database file in the data directory.
pub const FILE_NAME: &str = "mcp-hub.redb";

impl Journal {
    /// Opens (or creates) the database in `dir`, reads it back and starts
    /// the writer thread. Fails if the directory cannot be created, the
    /// file is not a database, or another process has it open.
    pub fn open(dir: &Path) -> Result<(Journal, Snapshot), OpenError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenError(format!("cannot create `{}`: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError(format!(
                "`{}` is in use by another mcp-hub process (give each hub its own DATA_DIR)",
                path.display()
            )),
            other => OpenError(format!("cannot open `{}`: {other}", path.display())),
        })?;
        let snapshot = restore::read(&db)
            .map_err(|e| OpenError(format!("cannot read `{}`: {e}", path.display())))?;
        let tx = writer::spawn(db, path.clone());
        Ok((
            Journal {
                tx,
                path: Arc::new(path),
            },
            snapshot,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `ops`; the returned [`Commit`] resolves once they are on disk.
    /// Never blocks: call it under the lock that ordered the change.
    pub fn submit(&self, ops: Vec<Op>) -> Commit {
        let (done, commit) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(writer::Submission {
            ops,
            done: Some(done),
            after: None,
        });
        commit
    }

    /// Queues `ops` and runs `after` on the writer thread once they are on
    /// disk (true) or could not be written (false): how a logged event
    /// reaches the dispatcher only after it is durable.
    pub fn submit_then(&self, ops: Vec<Op>, after: impl FnOnce(bool) + Send + 'static) {
        let _ = self.tx.send(writer::Submission {
            ops,
            done: None,
            after: Some(Box::new(after)),
        });
    }
}

/// Waits for a commit: a failed (or abandoned) one is `store_unavailable`.
pub async fn committed(commit: Commit) -> Result<(), crate::protocol::HubError> {
    match commit.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(crate::protocol::HubError::store_unavailable(format!(
            "the data directory could not be written: {why}"
        ))),
        Err(_) => Err(crate::protocol::HubError::store_unavailable(
            "the data directory's writer stopped",
        )),
    }
}
