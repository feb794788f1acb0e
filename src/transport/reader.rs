//! The read half of a WebSocket connection: tungstenite reads the upgraded
//! connection (frames, masking, fragments, UTF-8, size limits, pong and
//! close replies); what it writes back (a pong, the echo of a close) is
//! kept as raw bytes and sent through the connection's outbox, in order
//! with everything else the peer gets.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::protocol::{CloseReason, Frame};

/// Initial read buffer of a socket (tungstenite allocates and zero-fills it
/// up front; its default is 128 KiB). A larger message grows it to the
/// message's size, up to `MAX_MESSAGE_BYTES`.
/// It is also the most one socket read takes: inbound messages are small
/// (a `register` or `broadcast` is a few hundred bytes), and the buffer is
/// part of every idle connection.
pub const READ_BUFFER_BYTES: usize = 512;

/// The reading settings of a connection: message and frame size limit
/// (close 1009 above it), a small read buffer; tungstenite's own writes
/// (pong, close echo) go to [`ReadSide`] as soon as it makes them.
pub(super) fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
}

/// What tungstenite reads from and writes to: it reads the upgraded
/// connection; what it writes is kept here until the loop takes it.
pub struct ReadSide {
    io: TokioIo<Upgraded>,
    written: Vec<u8>,
}

impl ReadSide {
    pub(super) fn new(io: TokioIo<Upgraded>) -> Self {
        ReadSide {
            io,
            written: Vec::new(),
        }
    }

    /// What tungstenite wrote since the last call, as one raw frame.
    pub(super) fn take_written(&mut self) -> Option<Frame> {
        (!self.written.is_empty())
            .then(|| Frame::raw(Bytes::from(std::mem::take(&mut self.written))))
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The waker the socket's read side is polled with: it marks the socket as
/// worth reading and wakes the connection's task. A wake-up for a queued
/// frame then skips the read side (a tungstenite read attempt, two waker
/// registrations and the socket's readiness lock per delivery).
pub(super) struct ReadReady {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl ReadReady {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(ReadReady {
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        })
    }

    /// Whether the socket may have something to read (and forget it: the
    /// next read attempt registers again).
    pub(super) fn take(&self, task: &std::task::Waker) -> bool {
        let ready = self.ready.swap(false, Ordering::AcqRel);
        if ready {
            self.task.register(task);
        }
        ready
    }

    /// A message was read: there may be more.
    pub(super) fn again(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

impl Wake for ReadReady {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// How a read error closes the connection (RFC 6455 §7.4.1): 1009 for a
/// message or frame over `max_message_size` / `max_frame_size`, 1002 for a
/// frame that breaks the protocol, 1007 for text that is not UTF-8; a
/// connection that broke (or was reset without a close) just ends (1000).
pub(super) fn close_for(e: &WsError) -> CloseReason {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::TooLarge,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Normal,
        WsError::Protocol(_) => CloseReason::ProtocolError,
        WsError::Utf8(_) => CloseReason::InvalidPayload,
        _ => CloseReason::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_close_with_their_rfc_6455_codes() {
        let too_long = WsError::Capacity(CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        });
        assert_eq!(close_for(&too_long), CloseReason::TooLarge);
        let unmasked = WsError::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert_eq!(close_for(&unmasked).code(), 1002);
        let reset = WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(close_for(&reset), CloseReason::Normal);
        assert_eq!(close_for(&WsError::Utf8("bad".into())).code(), 1007);
        assert_eq!(close_for(&WsError::ConnectionClosed), CloseReason::Normal);
        // Typed, not read from the text.
        let io = std::io::Error::other("message too long");
        assert_eq!(close_for(&WsError::Io(io)), CloseReason::Normal);
    }
}
