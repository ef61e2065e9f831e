//! WebSocket frames as the server sends them (RFC 6455, unmasked).

use bytes::{BufMut, Bytes, BytesMut};

const FIN_TEXT: u8 = 0x81;
const FIN_BINARY: u8 = 0x82;
const FIN_CLOSE: u8 = 0x88;
const FIN_PONG: u8 = 0x8A;

/// A complete text frame (header and payload) carrying `payload`.
pub fn text(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut buf, FIN_TEXT, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

/// A complete binary frame carrying `payload` (Herald's Pusher sessions send none;
/// the Autobahn echo harness echoes binary messages with it).
pub fn binary(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut buf, FIN_BINARY, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

/// A close frame with a status code and a reason (truncated to fit a control frame).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut buf = BytesMut::with_capacity(4 + reason.len());
    put_header(&mut buf, FIN_CLOSE, 2 + reason.len());
    buf.put_u16(code);
    buf.put_slice(reason);
    buf.freeze()
}

/// A pong frame echoing a ping's payload (at most 125 bytes, as the reader enforces).
pub fn pong(payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(125)];
    let mut buf = BytesMut::with_capacity(2 + payload.len());
    put_header(&mut buf, FIN_PONG, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

fn put_header(buf: &mut BytesMut, first: u8, len: usize) {
    buf.put_u8(first);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        buf.put_u8(126);
        buf.put_u16(len);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_three_length_forms() {
        assert_eq!(&text(b"hi")[..], b"\x81\x02hi");
        let mid = text(&[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = text(&vec![b'a'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
        assert_eq!(&binary(&[0, 255])[..], b"\x82\x02\x00\xff");
    }

    #[test]
    fn close_frames_fit_a_control_frame() {
        assert_eq!(&close(4201, "x")[..], b"\x88\x03\x10\x69x");
        let long = close(4000, &"é".repeat(100));
        assert!(long.len() <= 127);
    }
}
