//! WebSocket (RFC 6455) as the edge speaks it: the opening handshake, read straight
//! off the socket so that a client connection costs no HTTP server machinery, and
//! client frames parsed in place from the bytes one read brought in.
//!
//! Nothing here keeps a buffer: the session reads into a buffer only while a message
//! is arriving, so an idle connection holds none.

use std::ops::Range;

use base64::Engine;
use fastwebsockets::OpCode;
use sha1::{Digest, Sha1};

/// RFC 6455's GUID, appended to the client's key to prove the server read it.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers parsed in a request head; more is refused as malformed.
const MAX_HEADERS: usize = 64;

/// What the edge needs of a request's head to route it.
#[derive(Debug)]
pub struct RequestHead {
    /// Length of the head, blank line included; the bytes after it are the body or,
    /// after an upgrade, the client's first frames.
    pub len: usize,
    /// A `GET` asking to upgrade to `websocket`.
    pub websocket: bool,
    /// The request target: path and query.
    pub target: String,
    pub key: Option<String>,
    pub version: Option<String>,
    /// `Content-Length`, if given and valid.
    pub content_length: Option<usize>,
}

/// Parses a request head from the start of `buf`: `Ok(None)` until it is complete.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = request.parse(buf)? else {
        return Ok(None);
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let websocket = request.method == Some("GET")
        && header("upgrade")
            .is_some_and(|u| u.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")));
    Ok(Some(RequestHead {
        len,
        websocket,
        target: origin_form(request.path.unwrap_or("/")).to_string(),
        key: header("sec-websocket-key").map(String::from),
        version: header("sec-websocket-version").map(String::from),
        content_length: header("content-length").and_then(|v| v.parse().ok()),
    }))
}

/// The path and query of a request target, also when a client sends it in absolute
/// form (`http://host/path`), as HTTP/1.1 servers must accept.
fn origin_form(target: &str) -> &str {
    let Some((_, rest)) = target.split_once("://") else {
        return target;
    };
    rest.find(['/', '?']).map_or("/", |at| &rest[at..])
}

/// The `101 Switching Protocols` answer to a client's `Sec-WebSocket-Key`.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept_key(key).as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    response
}

fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// One client frame, unmasked in place in the read buffer.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    /// Where the payload is in the buffer.
    pub payload: Range<usize>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The frame broke RFC 6455 (unmasked, reserved bits, bad opcode, long control frame).
    Protocol(&'static str),
    /// Longer than the limit; refused from its header, before the payload is read.
    TooLarge,
}

/// Parses the first frame in `buf` and unmasks its payload in place. `Ok(None)`: the
/// frame is not complete yet. Returns the frame and the bytes it took.
pub fn parse_frame(buf: &mut [u8], max_payload: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    if first & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let opcode = OpCode::try_from(first & 0x0F).map_err(|_| FrameError::Protocol("unknown opcode"))?;
    if second & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (length, header) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if control && (!fin || length > 125) {
        return Err(FrameError::Protocol("control frames must be whole and at most 125 bytes"));
    }
    let length = usize::try_from(length).map_err(|_| FrameError::TooLarge)?;
    if length > max_payload {
        return Err(FrameError::TooLarge);
    }
    let start = header + 4;
    let end = start + length;
    if buf.len() < end {
        return Ok(None);
    }
    let mask = [buf[header], buf[header + 1], buf[header + 2], buf[header + 3]];
    fastwebsockets::unmask(&mut buf[start..end], mask);
    Ok(Some((Frame { fin, opcode, payload: start..end }, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as browsers send them.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn parses_frames_of_every_length_form_and_waits_for_the_rest() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut bytes = masked(0x81, &payload);
            bytes.extend_from_slice(b"next");
            for cut in [0, 1, 3, bytes.len() - 5] {
                let partial = parse_frame(&mut bytes.clone()[..cut], 100_000);
                assert!(matches!(partial, Ok(None)), "{len} cut at {cut}");
            }
            let (frame, used) = parse_frame(&mut bytes, 100_000).unwrap().unwrap();
            assert!(frame.fin);
            assert_eq!(frame.opcode, OpCode::Text);
            assert_eq!(&bytes[frame.payload], &payload[..], "length {len}");
            assert_eq!(&bytes[used..], b"next");
        }
    }

    #[test]
    fn refuses_what_rfc_6455_forbids() {
        let protocol =
            |mut bytes: Vec<u8>| matches!(parse_frame(&mut bytes, 100), Err(FrameError::Protocol(_)));
        assert!(protocol(vec![0x81, 0x01, b'a']), "unmasked");
        assert!(protocol(masked(0xC1, b"a")), "reserved bit");
        assert!(protocol(masked(0x83, b"a")), "unknown opcode");
        assert!(protocol(masked(0x09, b"a")), "fragmented ping");
        assert!(protocol(masked(0x89, &[0; 126])), "long ping");
        // Too large is known from the header alone.
        let big = masked(0x81, &[0; 101]);
        assert!(matches!(parse_frame(&mut big[..4].to_vec(), 100), Err(FrameError::TooLarge)));
    }

    #[test]
    fn reads_the_upgrade_request_and_answers_with_the_rfc_example_key() {
        let request = b"GET /app/key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\nFRAME";
        assert!(parse_head(&request[..40]).unwrap().is_none());
        let head = parse_head(request).unwrap().unwrap();
        assert!(head.websocket);
        assert_eq!(head.target, "/app/key?protocol=7");
        assert_eq!(&request[head.len..], b"FRAME");
        assert_eq!(head.version.as_deref(), Some("13"));
        // RFC 6455 section 1.3's worked example.
        let response = String::from_utf8(switching_protocols(head.key.as_deref().unwrap())).unwrap();
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{response}");

        let absolute = b"GET http://example.com:6001/app/k?protocol=7 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_head(absolute).unwrap().unwrap().target, "/app/k?protocol=7");
        let post =
            parse_head(b"POST /apps/1/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert!(!post.websocket, "only a GET upgrades");
        assert!(parse_head(b"\x00\x01 nonsense\r\n\r\n").is_err());
    }
}
