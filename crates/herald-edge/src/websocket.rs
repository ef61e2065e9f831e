//! WebSocket (RFC 6455) as the edge speaks it: the opening handshake, read straight
//! off the socket so that a client connection costs no HTTP server machinery, and
//! client frames parsed in place from the bytes one read brought in.
//!
//! Frames are put together into messages by a [`MessageAssembler`], which enforces
//! RFC 6455's rules on their sequence; the session answers a [`Violation`] with its
//! close code.
//!
//! Nothing here keeps a buffer: the session reads into a buffer only while a message
//! is arriving, so an idle connection holds none.

use std::{borrow::Cow, ops::Range};

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

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 §4.1 asks of clients: 16 bytes,
/// base64-encoded (24 characters, padded). Anything else is refused with 400.
pub fn is_valid_key(key: &str) -> bool {
    // 24 characters decode to at most 18 bytes; exactly 16 when they end in "==".
    let mut decoded = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut decoded)
            .is_ok_and(|len| len == 16)
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

fn is_control(opcode: OpCode) -> bool {
    matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong)
}

/// Parses the first frame in `buf` and unmasks its payload in place. `Ok(None)`: the
/// frame is not complete yet. Returns the frame and the bytes it took.
///
/// `max_payload` bounds data frames (text, binary, continuation); control frames are
/// bounded by the RFC's 125 bytes.
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
    if length >> 63 != 0 {
        return Err(FrameError::Protocol("the most significant bit of a 64-bit length must be 0"));
    }
    let control = is_control(opcode);
    if control && (!fin || length > 125) {
        return Err(FrameError::Protocol("control frames must be whole and at most 125 bytes"));
    }
    let length = usize::try_from(length).map_err(|_| FrameError::TooLarge)?;
    if !control && length > max_payload {
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

/// Why a client's input ends its connection: the close frame to answer it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1002: a frame, or a sequence of frames, that RFC 6455 forbids.
    Protocol(&'static str),
    /// 1007: a text message or a close reason that is not UTF-8.
    InvalidUtf8,
    /// 1009: a message longer than the limit.
    TooLarge,
}

impl Violation {
    /// The close code to send.
    pub fn code(self) -> u16 {
        match self {
            Self::Protocol(_) => 1002,
            Self::InvalidUtf8 => 1007,
            Self::TooLarge => 1009,
        }
    }

    /// The close reason to send.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Protocol(why) => why,
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::TooLarge => "message too large",
        }
    }
}

impl From<FrameError> for Violation {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::Protocol(why) => Self::Protocol(why),
            FrameError::TooLarge => Self::TooLarge,
        }
    }
}

/// A whole message from the client, or a control frame (which may arrive between
/// the fragments of a message). Borrowed from the read buffer when it came in one
/// frame, owned when it was put together from several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message: valid UTF-8, checked.
    Text(Cow<'a, str>),
    Binary(Cow<'a, [u8]>),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A valid close frame: its code (none in an empty frame) and UTF-8 reason.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
}

/// Whether a client may send `code` in a close frame: RFC 6455 §7.4.1's codes and
/// IANA's later 1012–1014, and 3000–4999 for libraries and applications. 1004–1006
/// and 1015 are reserved and never sent; the rest of 1000–2999 is unassigned.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code to answer a client's close frame with: its own, echoed as RFC 6455
/// §5.5.1 suggests, or 1000 when it sent none.
pub fn close_reply(code: Option<u16>) -> u16 {
    code.unwrap_or(1000)
}

fn parse_close(payload: &[u8]) -> Result<Message<'_>, Violation> {
    match payload {
        [] => Ok(Message::Close { code: None, reason: "" }),
        [_] => Err(Violation::Protocol("a close frame's payload is a 2-byte code and a reason")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_close_code(code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(Message::Close { code: Some(code), reason })
        }
    }
}

/// What [`MessageAssembler::read`] found.
#[derive(Debug)]
pub struct Read<'a> {
    /// A message (or control frame), if one was completed.
    pub message: Option<Message<'a>>,
    /// Input bytes used: the frames taken, the message's last one included. The rest
    /// (an unfinished frame, or frames after the message) is for the next read.
    pub used: usize,
}

/// Puts a client's frames together into messages, and enforces what RFC 6455 §5
/// asks of their sequence: continuation frames only inside a fragmented message, no
/// new message before it ends, control frames anywhere (never fragmented), text
/// that is UTF-8 (failing as soon as a fragment makes it invalid), close frames with
/// a valid code and a UTF-8 reason, and a message no longer than the limit.
///
/// Pure: no I/O, no clock. It holds only the fragmented message in progress, so an
/// idle connection's assembler is one empty pointer.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    partial: Option<Box<Partial>>,
}

/// A fragmented message so far.
#[derive(Debug)]
struct Partial {
    text: bool,
    bytes: Vec<u8>,
    /// Of a text message: `bytes[..checked]` is valid UTF-8, and ends on a character
    /// boundary (only an unfinished character may follow).
    checked: usize,
}

impl Partial {
    /// Validates what arrived since the last check, so that text which can no longer
    /// be UTF-8 fails at once rather than when (or if) the message ends.
    fn check(&mut self) -> Result<(), Violation> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.bytes[self.checked..]) {
            Ok(_) => self.checked = self.bytes.len(),
            // Only an unfinished character at the end: the next fragment may finish it.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(Violation::InvalidUtf8),
        }
        Ok(())
    }
}

impl MessageAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the unfinished fragmented message held (0 when none is open).
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.bytes.len())
    }

    /// Whether a fragmented message is open.
    pub fn is_open(&self) -> bool {
        self.partial.is_some()
    }

    /// Parses frames from the start of `input` (unmasking them in place) until one
    /// completes a message or a control frame, or the input ends inside a frame.
    /// Fragments are taken into the assembler; the message returned borrows `input`
    /// when it came in one frame. Every message is at most `max_message` bytes.
    ///
    /// After an error the connection must be closed with [`Violation::code`]; the
    /// assembler has dropped what it held.
    pub fn read<'a>(&mut self, input: &'a mut [u8], max_message: usize) -> Result<Read<'a>, Violation> {
        let mut used = 0;
        loop {
            // A continuation frame may only bring what the message still has room for:
            // known from its header, before its payload is read.
            let limit = match input.get(used).map(|first| first & 0x0F) {
                Some(0) => max_message.saturating_sub(self.buffered()),
                _ => max_message,
            };
            let parsed = parse_frame(&mut input[used..], limit).map_err(|e| self.fail(e.into()))?;
            let Some((frame, len)) = parsed else {
                return Ok(Read { message: None, used });
            };
            let payload = used + frame.payload.start..used + frame.payload.end;
            used += len;
            if frame.fin {
                // A final frame always completes something: a message, or a control frame.
                let input: &'a [u8] = input;
                let message = self.push(frame.fin, frame.opcode, &input[payload], max_message)?;
                return Ok(Read { message, used });
            }
            self.push(frame.fin, frame.opcode, &input[payload], max_message)?;
        }
    }

    /// Takes one (unmasked) frame: returns the message it completes, if any.
    pub fn push<'a>(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &'a [u8],
        max_message: usize,
    ) -> Result<Option<Message<'a>>, Violation> {
        self.take(fin, opcode, payload, max_message).map_err(|e| self.fail(e))
    }

    /// Drops the message in progress: the connection is ending with `violation`.
    fn fail(&mut self, violation: Violation) -> Violation {
        self.partial = None;
        violation
    }

    fn take<'a>(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &'a [u8],
        max_message: usize,
    ) -> Result<Option<Message<'a>>, Violation> {
        if is_control(opcode) && (!fin || payload.len() > 125) {
            return Err(Violation::Protocol("control frames must be whole and at most 125 bytes"));
        }
        match opcode {
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(Violation::Protocol("a new message began inside a fragmented one"));
                }
                if payload.len() > max_message {
                    return Err(Violation::TooLarge);
                }
                let text = opcode == OpCode::Text;
                if fin {
                    return Ok(Some(whole(text, Cow::Borrowed(payload))?));
                }
                let mut partial = Box::new(Partial { text, bytes: payload.to_vec(), checked: 0 });
                partial.check()?;
                self.partial = Some(partial);
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(Violation::Protocol("a continuation frame with no message to continue"));
                };
                if partial.bytes.len() + payload.len() > max_message {
                    return Err(Violation::TooLarge);
                }
                partial.bytes.extend_from_slice(payload);
                partial.check()?;
                if !fin {
                    return Ok(None);
                }
                match self.partial.take() {
                    Some(partial) => Ok(Some(whole(partial.text, Cow::Owned(partial.bytes))?)),
                    None => Ok(None),
                }
            }
            OpCode::Close => parse_close(payload).map(Some),
            OpCode::Ping => Ok(Some(Message::Ping(payload))),
            OpCode::Pong => Ok(Some(Message::Pong(payload))),
        }
    }
}

/// A complete data message: text is checked to be UTF-8.
fn whole(text: bool, bytes: Cow<'_, [u8]>) -> Result<Message<'_>, Violation> {
    if !text {
        return Ok(Message::Binary(bytes));
    }
    let text = match bytes {
        Cow::Borrowed(bytes) => {
            Cow::Borrowed(std::str::from_utf8(bytes).map_err(|_| Violation::InvalidUtf8)?)
        }
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).map_err(|_| Violation::InvalidUtf8)?),
    };
    Ok(Message::Text(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as browsers send them.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        masked_with(first, payload, [1, 2, 3, 4])
    }

    fn masked_with(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
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

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        assert!(is_valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_valid_key("AAAAAAAAAAAAAAAAAAAAAA=="));
        for key in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZTE=",
            "dGhlIHNhbXBsZSBub25j",
            "dGhlIHNhbXBsZSBub25jZQ==x",
            "dGhlIHNhbXBsZSBub25j!!==",
            // Padding bits that are not zero: not a canonical encoding of 16 bytes.
            "dGhlIHNhbXBsZSBub25jZR==",
        ] {
            assert!(!is_valid_key(key), "{key:?}");
        }
    }

    #[test]
    fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert!(matches!(parse_frame(&mut frame, 100), Err(FrameError::Protocol(_))));
    }

    #[test]
    fn control_frames_are_not_held_to_the_message_limit() {
        let mut ping = masked(0x89, &[7; 100]);
        assert!(parse_frame(&mut ping, 10).unwrap().is_some());
    }

    /// Reads every message in `input`, as the session does; `Err` on a violation.
    fn read_all(
        assembler: &mut MessageAssembler,
        input: &mut Vec<u8>,
        max: usize,
    ) -> Result<Vec<Owned>, Violation> {
        let mut used = 0;
        let mut out = Vec::new();
        loop {
            let read = assembler.read(&mut input[used..], max)?;
            used += read.used;
            match read.message {
                Some(message) => out.push(Owned::from(message)),
                None => break,
            }
        }
        input.drain(..used);
        Ok(out)
    }

    fn read_bytes(bytes: &[u8], max: usize) -> Result<Vec<Owned>, Violation> {
        read_all(&mut MessageAssembler::new(), &mut bytes.to_vec(), max)
    }

    /// A message that owns its bytes, to compare.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    impl From<Message<'_>> for Owned {
        fn from(message: Message<'_>) -> Self {
            match message {
                Message::Text(text) => Self::Text(text.into_owned()),
                Message::Binary(bytes) => Self::Binary(bytes.into_owned()),
                Message::Ping(bytes) => Self::Ping(bytes.to_vec()),
                Message::Pong(bytes) => Self::Pong(bytes.to_vec()),
                Message::Close { code, reason } => Self::Close(code, reason.to_owned()),
            }
        }
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    #[test]
    fn single_frames_are_borrowed_and_fragments_put_together() {
        let mut bytes = masked(0x81, b"hello");
        let read = MessageAssembler::new().read(&mut bytes, 100).unwrap();
        assert_eq!(read.message, Some(Message::Text(Cow::Borrowed("hello"))));
        assert_eq!(read.used, bytes.len());

        let bytes = concat(&[
            masked(0x01, "κό".as_bytes()),
            masked(0x89, b"p"),
            // "σ" cut in two, and an empty fragment.
            masked(0x00, &"σμε".as_bytes()[..1]),
            masked(0x00, b""),
            masked(0x8A, b""),
            masked(0x80, &"σμε".as_bytes()[1..]),
            masked(0x82, &[0, 255]),
        ]);
        let expected = vec![
            Owned::Ping(b"p".to_vec()),
            Owned::Pong(vec![]),
            Owned::Text("κόσμε".into()),
            Owned::Binary(vec![0, 255]),
        ];
        assert_eq!(read_bytes(&bytes, 100), Ok(expected));
    }

    #[test]
    fn sequences_rfc_6455_forbids_are_protocol_errors() {
        let protocol =
            |frames: &[Vec<u8>]| matches!(read_bytes(&concat(frames), 100), Err(Violation::Protocol(_)));
        assert!(protocol(&[masked(0x01, b"a"), masked(0x81, b"b")]), "text inside a message");
        assert!(protocol(&[masked(0x01, b"a"), masked(0x02, b"b")]), "binary inside a message");
        assert!(protocol(&[masked(0x80, b"a")]), "continuation of nothing");
        assert!(protocol(&[masked(0x00, b"a")]), "non-final continuation of nothing");
        assert!(protocol(&[masked(0x01, b"a"), masked(0x80, b"b"), masked(0x80, b"c")]), "continued twice");
        let mut assembler = MessageAssembler::new();
        assert!(assembler.push(false, OpCode::Ping, b"", 100).is_err(), "push checks control frames too");
        assert!(assembler.push(true, OpCode::Pong, &[0; 126], 100).is_err());
    }

    #[test]
    fn close_frames_are_checked() {
        let close = |payload: &[u8]| read_bytes(&masked(0x88, payload), 100);
        assert_eq!(close(b""), Ok(vec![Owned::Close(None, String::new())]));
        assert_eq!(close(&[0x03, 0xE8, b'o', b'k']), Ok(vec![Owned::Close(Some(1000), "ok".into())]));
        assert!(matches!(close(&[0x03]), Err(Violation::Protocol(_))));
        assert_eq!(close(&[0x03, 0xE8, 0xFF]), Err(Violation::InvalidUtf8));
        for code in 0..=u16::MAX {
            let valid = close(&code.to_be_bytes()).is_ok();
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(valid, expected, "{code}");
        }
        assert_eq!(close_reply(None), 1000);
        assert_eq!(close_reply(Some(4001)), 4001);
    }

    #[test]
    fn text_must_be_utf8_and_fails_as_soon_as_it_cannot_be() {
        assert_eq!(read_bytes(&masked(0x81, b"\xed\xa0\x80"), 100), Err(Violation::InvalidUtf8));
        assert_eq!(read_bytes(&masked(0x81, b"a\xce"), 100), Err(Violation::InvalidUtf8));
        // The first fragment alone is enough to know.
        assert_eq!(read_bytes(&masked(0x01, b"\xff"), 100), Err(Violation::InvalidUtf8));
        assert_eq!(
            read_bytes(&concat(&[masked(0x01, b"\xce"), masked(0x00, b"A")]), 100),
            Err(Violation::InvalidUtf8)
        );
        // Cut inside a character: not an error until the message ends.
        let mut assembler = MessageAssembler::new();
        assert_eq!(read_all(&mut assembler, &mut masked(0x01, b"\xce"), 100), Ok(vec![]));
        assert_eq!(read_all(&mut assembler, &mut masked(0x80, b""), 100), Err(Violation::InvalidUtf8));
        assert!(!assembler.is_open(), "dropped after the violation");
        // Binary is not checked.
        assert_eq!(read_bytes(&masked(0x82, b"\xff"), 100), Ok(vec![Owned::Binary(vec![0xff])]));
    }

    #[test]
    fn messages_over_the_limit_are_refused_from_the_frame_header() {
        assert_eq!(read_bytes(&masked(0x81, &[b'a'; 11]), 10), Err(Violation::TooLarge));
        assert_eq!(read_bytes(&masked(0x81, &[b'a'; 10]), 10), Ok(vec![Owned::Text("a".repeat(10))]));
        // Fragments add up; the continuation that passes the limit is refused from its header.
        let mut assembler = MessageAssembler::new();
        assert_eq!(read_all(&mut assembler, &mut masked(0x01, &[b'a'; 6]), 10), Ok(vec![]));
        assert_eq!(assembler.buffered(), 6);
        let over = masked(0x80, &[b'a'; 5]);
        assert_eq!(read_all(&mut assembler, &mut over[..2].to_vec(), 10), Err(Violation::TooLarge));
        assert_eq!(assembler.buffered(), 0);
    }

    mod properties {
        use proptest::{collection::vec, option, prelude::*, sample::Index};

        use super::*;

        const MAX: usize = 1 << 20;

        fn data_message() -> impl Strategy<Value = Owned> {
            prop_oneof![
                vec(any::<char>(), 0..40).prop_map(|chars| Owned::Text(chars.into_iter().collect())),
                vec(any::<u8>(), 0..300).prop_map(Owned::Binary),
            ]
        }

        fn control_frame() -> impl Strategy<Value = Owned> {
            prop_oneof![
                vec(any::<u8>(), 0..=125).prop_map(Owned::Ping),
                vec(any::<u8>(), 0..=125).prop_map(Owned::Pong),
            ]
        }

        /// A message, where to cut it into fragments, and the control frames (if any)
        /// to send after each fragment but the last.
        type Fragmented = (Owned, Vec<Index>, Vec<Option<Owned>>);

        fn fragmented() -> impl Strategy<Value = Fragmented> {
            (data_message(), vec(any::<Index>(), 0..4), vec(option::of(control_frame()), 4))
        }

        /// The frames of `messages`, each fragmented as it says, masked with `masks`;
        /// and what a reader must produce from them.
        fn encode(messages: &[Fragmented], masks: &[[u8; 4]]) -> (Vec<u8>, Vec<Owned>) {
            let mut masks = masks.iter().cycle();
            let mut mask = || *masks.next().unwrap_or(&[0; 4]);
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (message, cuts, controls) in messages {
                let (opcode, payload) = match message {
                    Owned::Text(text) => (0x1, text.as_bytes()),
                    Owned::Binary(bytes) => (0x2, &bytes[..]),
                    _ => unreachable!(),
                };
                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(payload.len());
                let mut start = 0;
                for (i, &end) in cuts.iter().enumerate() {
                    let last = i == cuts.len() - 1;
                    let first = if i == 0 { opcode } else { 0x0 } | if last { 0x80 } else { 0 };
                    bytes.extend(masked_with(first, &payload[start..end], mask()));
                    start = end;
                    if let (false, Some(Some(control))) = (last, controls.get(i)) {
                        let (opcode, payload) = match control {
                            Owned::Ping(p) => (0x89, p),
                            Owned::Pong(p) => (0x8A, p),
                            _ => unreachable!(),
                        };
                        bytes.extend(masked_with(opcode, payload, mask()));
                        expected.push(control.clone());
                    }
                }
                expected.push(message.clone());
            }
            (bytes, expected)
        }

        /// Valid frames with a few bytes overwritten and the end cut off: input that
        /// gets past the first checks, unlike most random bytes.
        fn mangled() -> impl Strategy<Value = Vec<u8>> {
            let flips = vec((any::<Index>(), any::<u8>()), 0..4);
            (vec(fragmented(), 0..4), vec(any::<[u8; 4]>(), 1..4), flips, any::<Index>()).prop_map(
                |(messages, masks, flips, cut)| {
                    let (mut bytes, _) = encode(&messages, &masks);
                    if !bytes.is_empty() {
                        for (at, value) in flips {
                            let at = at.index(bytes.len());
                            bytes[at] = value;
                        }
                    }
                    bytes.truncate(cut.index(bytes.len() + 1));
                    bytes
                },
            )
        }

        proptest! {
            // No failure persistence files: a failing case is printed, shrunk.
            #![proptest_config(ProptestConfig {
                cases: 128,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn arbitrary_bytes_never_panic_nor_overread(
                mut bytes in prop_oneof![vec(any::<u8>(), 0..400), mangled()],
                max in 0usize..400,
            ) {
                let len = bytes.len();
                if let Ok(Some((frame, used))) = parse_frame(&mut bytes.clone(), max) {
                    prop_assert!(used <= len);
                    prop_assert!(frame.payload.end <= used);
                }
                let mut assembler = MessageAssembler::new();
                let mut used = 0;
                while let Ok(read) = assembler.read(&mut bytes[used..], max) {
                    prop_assert!(read.used <= len - used);
                    used += read.used;
                    if read.message.is_none() {
                        break;
                    }
                }
                prop_assert!(used <= len);
            }

            #[test]
            fn fragmented_messages_with_control_frames_between_come_back_whole(
                messages in vec(fragmented(), 0..6),
                masks in vec(any::<[u8; 4]>(), 1..8),
            ) {
                let (bytes, expected) = encode(&messages, &masks);
                prop_assert_eq!(read_bytes(&bytes, MAX), Ok(expected));
            }

            #[test]
            fn input_split_anywhere_reads_the_same(
                messages in vec(fragmented(), 1..4),
                masks in vec(any::<[u8; 4]>(), 1..8),
            ) {
                let (bytes, expected) = encode(&messages, &masks);
                for cut in 0..=bytes.len() {
                    let mut assembler = MessageAssembler::new();
                    let mut input = bytes[..cut].to_vec();
                    let mut read = read_all(&mut assembler, &mut input, MAX).unwrap();
                    input.extend_from_slice(&bytes[cut..]);
                    read.extend(read_all(&mut assembler, &mut input, MAX).unwrap());
                    prop_assert!(input.is_empty(), "everything used");
                    prop_assert_eq!(&read, &expected, "cut at {}", cut);
                }
            }
        }
    }
}
