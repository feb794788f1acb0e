//! The clients connected to *this* instance, grouped by session, and the
//! fan-out of one serialized frame to them.
//!
//! Delivery never blocks and never awaits under the lock: each client has a
//! bounded queue, and a client whose queue is full is disconnected as a slow
//! consumer instead of being buffered without limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::{ClientInfo, Frame};

/// One queued outgoing message.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Frame,
    /// Message type, for metrics.
    pub kind: &'static str,
    /// When the event was produced (ms since epoch); 0 for direct replies.
    pub produced_at: u64,
}

/// Why the hub closes a connection; decides the close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    SlowConsumer,
    TooLarge,
    ShuttingDown,
    Replaced,
    /// No inbound traffic (pongs included) for `IDLE_TIMEOUT_MS`.
    IdleTimeout,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::ShuttingDown | CloseReason::IdleTimeout => 1001,
            CloseReason::SlowConsumer => 1008,
            CloseReason::TooLarge => 1009,
            CloseReason::Replaced => 4001,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ShuttingDown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooLarge => "message_too_large",
            CloseReason::Replaced => "replaced",
            CloseReason::IdleTimeout => "idle_timeout",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::ShuttingDown => "hub shutting down",
            CloseReason::SlowConsumer => "slow consumer: outbound queue full",
            CloseReason::TooLarge => "message too large",
            CloseReason::Replaced => "client_id registered again on another connection",
            CloseReason::IdleTimeout => "idle timeout: no traffic, pongs included",
        }
    }
}

/// The handle through which anything can send to, or disconnect, a client.
#[derive(Clone)]
pub struct ClientHandle {
    pub info: ClientInfo,
    pub conn_id: u64,
    tx: mpsc::Sender<Outbound>,
    close: Arc<Mutex<Option<CloseReason>>>,
    kick: CancellationToken,
}

impl ClientHandle {
    pub fn new(
        info: ClientInfo,
        conn_id: u64,
        tx: mpsc::Sender<Outbound>,
        kick: CancellationToken,
    ) -> Self {
        ClientHandle {
            info,
            conn_id,
            tx,
            close: Arc::new(Mutex::new(None)),
            kick,
        }
    }

    /// The same connection under a new identity (after `register`).
    pub fn with_info(&self, info: ClientInfo) -> Self {
        ClientHandle {
            info,
            ..self.clone()
        }
    }

    /// Queues a frame; false if the client was disconnected for being slow
    /// or is already gone.
    pub fn send(&self, out: Outbound, metrics: &Metrics) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.disconnect(CloseReason::SlowConsumer) {
                    metrics.slow_consumer_disconnects.inc();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the connection to close; the first reason given wins. True if
    /// this call decided the reason.
    pub fn disconnect(&self, reason: CloseReason) -> bool {
        let first = {
            let mut slot = self.close.lock().unwrap_or_else(|p| p.into_inner());
            let first = slot.is_none();
            slot.get_or_insert(reason);
            first
        };
        self.kick.cancel();
        first
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
pub struct Registry {
    sessions: RwLock<HashMap<String, HashMap<String, ClientHandle>>>,
}

impl Registry {
    /// Adds a client; returns the handle it replaced (same client id).
    pub fn insert(&self, session: &str, handle: ClientHandle) -> Option<ClientHandle> {
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        sessions
            .entry(session.to_string())
            .or_default()
            .insert(handle.info.client_id.clone(), handle)
    }

    /// Removes a client if it is still this connection.
    pub fn remove(&self, session: &str, client_id: &str, conn_id: u64) -> bool {
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let Some(clients) = sessions.get_mut(session) else {
            return false;
        };
        if clients.get(client_id).is_none_or(|h| h.conn_id != conn_id) {
            return false;
        }
        clients.remove(client_id);
        if clients.is_empty() {
            sessions.remove(session);
        }
        true
    }

    pub fn get(&self, session: &str, client_id: &str) -> Option<ClientHandle> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions.get(session)?.get(client_id).cloned()
    }

    /// Queues `out` for every local client of the session but `except`;
    /// returns how many got it.
    pub fn deliver(
        &self,
        session: &str,
        out: &Outbound,
        except: Option<&str>,
        metrics: &Metrics,
    ) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let Some(clients) = sessions.get(session) else {
            return 0;
        };
        clients
            .values()
            .filter(|h| Some(h.info.client_id.as_str()) != except)
            .filter(|h| h.send(out.clone(), metrics))
            .count()
    }

    pub fn client_count(&self) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions.values().map(HashMap::len).sum()
    }

    pub fn all(&self) -> Vec<(String, ClientHandle)> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions
            .iter()
            .flat_map(|(s, clients)| clients.values().map(move |h| (s.clone(), h.clone())))
            .collect()
    }
}
