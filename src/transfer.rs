//! `mcp-hub export` and `mcp-hub import`: a store as JSON lines, to move
//! it between a data directory (DATA_DIR) and Redis, or to back it up.
//! Both read the hub's own settings (flags, environment, `.env`), so the
//! store they open is the one the hub would.
//!
//! One line per record, each a JSON object with a `kind`:
//! `{"kind":"session","session":S,"contacts":[...]}` first, then every
//! message of the session, oldest first per conversation:
//! `{"kind":"message","session":S, ...history entry...}` (with its
//! delivery `status` when it has one). What moves is what a user would
//! miss: sessions, contacts and conversations. The event log does not (a
//! client of the new store starts afresh, `recovered: false`), nor do the
//! short-lived records (idempotency keys, webhook deduplication), nor
//! presence (nobody is connected to a store at rest).

use std::io::{BufRead, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::HubConfig;
use crate::durable::Journal;
use crate::protocol::{Contact, HistoryEntry, check_id, check_name};
use crate::redis::RedisBackend;
use crate::store::SessionStore;
use crate::whatsapp::webhooks::STATUS_TTL;

/// Longest line `import` reads (a session line carries its contacts).
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// Sessions read per page while exporting.
const PAGE: usize = 200;

/// One line of the export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Session {
        session: String,
        contacts: Vec<Contact>,
    },
    Message {
        session: String,
        #[serde(flatten)]
        entry: Box<HistoryEntry>,
    },
}

/// Why a transfer stopped: a setting (exit 2) or the data (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid setting {setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl TransferError {
    pub fn exit_code(&self) -> u8 {
        match self {
            TransferError::Setting { .. } => 2,
            TransferError::Failed(_) => 1,
        }
    }
}

impl From<crate::config::ConfigError> for TransferError {
    fn from(e: crate::config::ConfigError) -> Self {
        TransferError::Setting {
            setting: e.setting,
            reason: e.reason,
        }
    }
}

fn failed(what: impl std::fmt::Display) -> TransferError {
    TransferError::Failed(what.to_string())
}

/// The store the hub's settings name: Redis, or the data directory. The
/// journal (if any) must outlive the writes.
fn open_store(
    config: &HubConfig,
) -> Result<(Arc<dyn SessionStore>, Option<Journal>), TransferError> {
    if let Some(topology) = &config.redis {
        let metrics = Arc::new(crate::metrics::Metrics::new(&config.instance_id));
        let backend =
            RedisBackend::new(topology, &config.redis_key_prefix, metrics).map_err(|e| {
                TransferError::Setting {
                    setting: topology.setting(),
                    reason: e.kind.to_string(),
                }
            })?;
        return Ok((Arc::new(crate::app::redis_store(config, backend)), None));
    }
    let Some(dir) = &config.data_dir else {
        return Err(TransferError::Setting {
            setting: "DATA_DIR",
            reason: format!(
                "`{}` keeps nothing to export or import into; name a data directory or Redis",
                crate::config::MEMORY_ONLY
            ),
        });
    };
    let (store, journal, _) = crate::app::data_dir_store(config, dir)?;
    Ok((Arc::new(store), Some(journal)))
}

/// Writes every session of the configured store to `out`; how many lines.
pub async fn export(config: &HubConfig, out: &mut impl Write) -> Result<u64, TransferError> {
    let (store, _journal) = open_store(config)?;
    let mut lines = 0u64;
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_sessions(cursor.as_deref(), PAGE)
            .await
            .map_err(failed)?;
        for listing in &page.sessions {
            let session = &listing.session;
            let contacts = store.contacts(session).await.map_err(failed)?;
            write_line(
                out,
                &Line::Session {
                    session: session.clone(),
                    contacts,
                },
            )?;
            lines += 1;
            for contact in store.conversations(session).await.map_err(failed)? {
                let history = store
                    .history(session, &contact, config.history_limit)
                    .await
                    .map_err(failed)?;
                for entry in history {
                    write_line(
                        out,
                        &Line::Message {
                            session: session.clone(),
                            entry: Box::new(entry),
                        },
                    )?;
                    lines += 1;
                }
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.flush().map_err(failed)?;
    Ok(lines)
}

fn write_line(out: &mut impl Write, line: &Line) -> Result<(), TransferError> {
    let text = serde_json::to_string(line).map_err(failed)?;
    writeln!(out, "{text}").map_err(failed)
}

/// Reads JSON lines from `input` into the configured store (meant for an
/// empty one: messages are appended); how many lines. Stops at the first
/// line that is not a valid record, naming its number; what came before
/// it stays.
pub async fn import(config: &HubConfig, input: &mut impl BufRead) -> Result<u64, TransferError> {
    let (store, _journal) = open_store(config)?;
    let limits = &config.field_limits;
    let mut number = 0u64;
    let mut text = String::new();
    loop {
        text.clear();
        let mut bounded = std::io::Read::take(&mut *input, MAX_LINE_BYTES as u64 + 1);
        let read = bounded.read_line(&mut text).map_err(failed)?;
        if read == 0 {
            break;
        }
        number += 1;
        if text.len() > MAX_LINE_BYTES {
            return Err(failed(format!(
                "line {number}: longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        if text.trim().is_empty() {
            continue;
        }
        let bad = |why: String| failed(format!("line {number}: {why}"));
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        match line {
            Line::Session { session, contacts } => {
                check_id("session", &session).map_err(|e| bad(e.message))?;
                for contact in &contacts {
                    check_name("contacts", &contact.name, limits).map_err(|e| bad(e.message))?;
                }
                store
                    .set_contacts(&session, &contacts)
                    .await
                    .map_err(|e| bad(e.message))?;
            }
            Line::Message { session, entry } => {
                check_id("session", &session).map_err(|e| bad(e.message))?;
                check_name("contact", &entry.contact, limits).map_err(|e| bad(e.message))?;
                let status = entry.status;
                let error = entry.status_error.clone();
                let entry = HistoryEntry {
                    status: None,
                    status_error: None,
                    ..*entry
                };
                store
                    .record_message(&session, &entry)
                    .await
                    .map_err(|e| bad(e.message))?;
                if let Some(status) = status {
                    store
                        .set_status(
                            &session,
                            &entry.message_id,
                            status,
                            error.as_ref(),
                            STATUS_TTL,
                        )
                        .await
                        .map_err(|e| bad(e.message))?;
                }
            }
        }
    }
    Ok(number)
}
