//! The serialized outgoing message as it goes on the wire: a complete
//! WebSocket frame (RFC 6455 §5.2; server frames are never masked), built
//! once and shared by every recipient, so a broadcast to a thousand clients
//! frames its text once and every connection writes the same bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// One complete server-to-client WebSocket frame. Cloning is a
/// reference-count bump.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Header and payload.
    wire: Bytes,
    /// Where the payload starts in `wire`.
    header: u8,
}

const FIN: u8 = 0x80;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// Longest header: 2 bytes + a 64-bit length (no mask key from a server).
const MAX_HEADER: usize = 10;

impl Frame {
    /// A text frame (FIN set, one fragment) carrying `text`.
    pub fn text(text: &str) -> Frame {
        Frame::build(OP_TEXT, text.as_bytes())
    }

    /// An empty ping.
    pub fn ping() -> Frame {
        Frame::build(OP_PING, &[])
    }

    /// A close frame with `code` and `reason` (a reason longer than a
    /// control frame allows, 123 bytes, is cut at a character boundary).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::build(OP_CLOSE, &payload)
    }

    /// Bytes already framed elsewhere (e.g. a pong the WebSocket library
    /// wrote), sent as they are.
    pub fn raw(wire: Bytes) -> Frame {
        Frame { wire, header: 0 }
    }

    fn build(opcode: u8, payload: &[u8]) -> Frame {
        let len = payload.len();
        let mut buf = BytesMut::with_capacity(MAX_HEADER + len);
        buf.put_u8(FIN | opcode);
        if len < 126 {
            buf.put_u8(len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            buf.put_u8(126);
            buf.put_u16(len);
        } else {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
        let header = buf.len() as u8;
        buf.put_slice(payload);
        Frame {
            wire: buf.freeze(),
            header,
        }
    }

    /// The whole frame, header included: what is written to the socket.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The payload's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.wire[self.header as usize..]
    }

    /// The payload as text (empty if it is not UTF-8, which a frame built
    /// by [`Frame::text`] always is).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }

    /// Payload length in bytes (the message's size).
    pub fn len(&self) -> usize {
        self.wire.len() - self.header as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::text(&text)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Frame {
        Frame::text(text)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_carry_the_length_in_the_smallest_form() {
        let short = Frame::text("hi");
        assert_eq!(short.wire(), b"\x81\x02hi");
        assert_eq!((short.as_str(), short.len()), ("hi", 2));

        let medium = "x".repeat(300);
        let f = Frame::text(&medium);
        assert_eq!(&f.wire()[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!((f.len(), f.as_str()), (300, medium.as_str()));

        let long = "y".repeat(70_000);
        let f = Frame::text(&long);
        assert_eq!(&f.wire()[..2], &[0x81, 127]);
        assert_eq!(&f.wire()[2..10], &70_000u64.to_be_bytes());
        assert_eq!(f.len(), 70_000);
    }

    #[test]
    fn control_frames() {
        assert_eq!(Frame::ping().wire(), &[0x89, 0]);
        assert_eq!(Frame::close(1008, "slow").wire(), b"\x88\x06\x03\xf0slow");
        // A reason too long for a control frame is cut, on a char boundary.
        let f = Frame::close(1000, &"é".repeat(100));
        assert_eq!(f.len(), 2 + 122);
        assert!(f.wire()[1] <= 125);
    }
}
