//! The Redis layer's one error type: which operation failed and how.
//! Callers convert it into their own error (`HubError` here, `AiError` in
//! the AI layer) with `From`.

use crate::protocol::HubError;

/// A failed Redis operation (`op` is also its metrics label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis `{op}`: {kind}")]
pub struct RedisError {
    pub op: &'static str,
    pub kind: RedisErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisErrorKind {
    /// No answer within the command timeout.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// No pooled connection could be had.
    #[error("connection pool: {0}")]
    Pool(String),
    /// Connecting, or the connection broke.
    #[error("I/O: {0}")]
    Io(String),
    /// Redis answered with an error (a script error, a wrong type...).
    #[error("server error: {0}")]
    Server(String),
    /// Redis answered something the caller cannot read.
    #[error("unexpected reply: {0}")]
    Reply(String),
    /// The server is a replica (`READONLY`): the master moved, e.g. after a
    /// Sentinel failover demoted the node this connection points at.
    #[error("the master moved (READONLY): {0}")]
    ReadOnly(String),
    /// The URL or the client setup is wrong.
    #[error("configuration: {0}")]
    Config(String),
}

impl RedisError {
    pub fn new(op: &'static str, kind: RedisErrorKind) -> Self {
        RedisError { op, kind }
    }

    /// True when the connection points at a node that is no longer the
    /// master: drop it and connect again (Sentinel names the new master).
    pub fn master_moved(&self) -> bool {
        matches!(self.kind, RedisErrorKind::ReadOnly(_))
    }

    /// Classifies an error of the `redis` crate.
    pub fn from_client(op: &'static str, e: &::redis::RedisError) -> Self {
        use ::redis::ErrorKind as K;
        let text = e.to_string();
        let kind = if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            RedisErrorKind::Io(text)
        } else {
            match e.kind() {
                K::Server(::redis::ServerErrorKind::ReadOnly) => RedisErrorKind::ReadOnly(text),
                K::Parse | K::UnexpectedReturnType => RedisErrorKind::Reply(text),
                K::InvalidClientConfig => RedisErrorKind::Config(text),
                K::Io => RedisErrorKind::Io(text),
                _ => RedisErrorKind::Server(text),
            }
        };
        RedisError { op, kind }
    }
}

/// Whatever Redis failure a client meets is `store_unavailable`.
impl From<RedisError> for HubError {
    fn from(e: RedisError) -> Self {
        HubError::store_unavailable(e)
    }
}
