//! The terminal client's protocol decisions as pure functions: what to do
//! after a close code, where a (re)registration leaves the client in the
//! session's event log, how each frame moves that position, and which
//! frames answer a request. The SDKs make the same decisions
//! (clients/typescript/src/protocol.ts, clients/python/.../protocol.py);
//! clients/cases/protocol-cases.json holds the cases all three must agree
//! on, run against this module by tests/protocol_cases.rs.

use serde_json::Value;

/// Where a client is in its session's event log (docs/protocol.md §12):
/// sent back as `since` when registering again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

impl Position {
    /// The frame's `offset` (a non-negative integer) and `epoch` (a
    /// string); None unless it has both.
    pub fn of(frame: &Value) -> Option<Position> {
        Some(Position {
            offset: frame.get("offset")?.as_u64()?,
            epoch: frame.get("epoch")?.as_str()?.to_string(),
        })
    }
}

/// What to do once the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// Reconnect with backoff, resuming with `since`.
    Reconnect,
    /// Get a new token, then reconnect at once.
    RenewToken,
    /// Do not reconnect (docs/protocol.md §11).
    Stop,
}

impl AfterClose {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterClose::Reconnect => "reconnect",
            AfterClose::RenewToken => "renew_token",
            AfterClose::Stop => "stop",
        }
    }
}

/// After the hub closed with `code` (None: the connection dropped without
/// a close frame): 4401 means a new token is needed; any other 4xxx is the
/// hub refusing this client (4001 replaced, 4002 removed by an admin, 4408
/// not registered in time) and reconnecting would loop; anything else
/// (1001 shutdown, 1012 restart, 1008 slow consumer, ...) is worth a
/// reconnect.
pub fn after_close(code: Option<u16>, can_renew_token: bool) -> AfterClose {
    match code {
        Some(4401) if can_renew_token => AfterClose::RenewToken,
        Some(4000..=4999) => AfterClose::Stop,
        _ => AfterClose::Reconnect,
    }
}

/// Where `registration_confirmed` leaves a client that registered with
/// `since`: whether the missed events are replayed (`recovered`; never
/// without `since`), and the position to resume from next. Recovered, it
/// stays at `since` (the replay moves it on); otherwise it is the
/// confirmation's (None if the hub has no event log), and the application
/// must reload its state.
pub fn after_registration(since: Option<&Position>, confirmed: &Value) -> (bool, Option<Position>) {
    let recovered = since.is_some() && confirmed.get("recovered") == Some(&Value::Bool(true));
    match since {
        Some(since) if recovered => (true, Some(since.clone())),
        _ => (false, Position::of(confirmed)),
    }
}

/// How `frame` moves the position `known`: the new position, and whether
/// the frame is a duplicate (an offset at or before `known` in the same
/// epoch, e.g. delivered again across a reconnect), not to be shown again.
pub fn track(known: Option<&Position>, frame: &Value) -> (Option<Position>, bool) {
    match (Position::of(frame), known) {
        (None, known) => (known.cloned(), false),
        (Some(p), Some(k)) if k.epoch == p.epoch && p.offset <= k.offset => (Some(k.clone()), true),
        (Some(p), _) => (Some(p), false),
    }
}

/// The request id `frame` answers: `response`, `error`, `pong` and
/// `registration_confirmed` carry the `request_id` of the request they
/// answer (a string: the hub echoes numbers as strings). Other frames
/// answer nothing, even with a `request_id` (`execute` carries the hub's).
pub fn answered_request(frame: &Value) -> Option<&str> {
    match frame.get("type")?.as_str()? {
        "response" | "error" | "pong" | "registration_confirmed" => {
            frame.get("request_id")?.as_str()
        }
        _ => None,
    }
}
