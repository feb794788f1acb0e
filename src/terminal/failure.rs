//! Why a terminal session stopped, and which of those reasons are worth
//! reconnecting after.

use std::fmt;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::format;
use super::protocol::{AfterClose, after_close};

/// Why the terminal stopped with a failure.
#[derive(Debug)]
pub(super) enum Failure {
    Connect(String),
    Registration(String),
    ClosedByHub(Option<CloseFrame>),
    Lost(String),
    /// Close 4401 and no renewed token to reconnect with.
    TokenExpired,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Registration(e) => write!(f, "registration failed: {e}"),
            Failure::ClosedByHub(Some(frame)) => {
                let code = u16::from(frame.code);
                if frame.reason.is_empty() {
                    write!(f, "connection closed by the hub: {code}")
                } else {
                    write!(
                        f,
                        "connection closed by the hub: {code} {}",
                        format::clean(&frame.reason)
                    )
                }
            }
            Failure::ClosedByHub(None) => {
                write!(f, "connection closed by the hub (no close code)")
            }
            Failure::Lost(e) => write!(f, "connection lost: {e}"),
            Failure::TokenExpired => write!(
                f,
                "token expired (close 4401): start again with a fresh token (--token / MCP_HUB_TOKEN), or renew the file given with --token-file / MCP_HUB_TOKEN_FILE"
            ),
        }
    }
}

impl Failure {
    /// Worth reconnecting after: the connection went away, not the hub
    /// refusing this client (4xxx: replaced by a newer connection, auth;
    /// [`after_close`] decides).
    pub(super) fn is_transient(&self) -> bool {
        match self {
            Failure::Lost(_) | Failure::Connect(_) => true,
            Failure::ClosedByHub(frame) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                after_close(code, false) == AfterClose::Reconnect
            }
            Failure::Registration(_) | Failure::TokenExpired => false,
        }
    }
}
