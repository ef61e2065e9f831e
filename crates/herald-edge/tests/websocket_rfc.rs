//! RFC 6455 as a client can break it, over raw TCP against a real edge: every bad
//! handshake, frame and close gets the exact answer the RFC asks for (a 400, or a
//! close frame with 1002 or 1007), and the node still serves a fresh client after.
//! Also the node-wide budget of unfinished input (`max_pending_input_bytes`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use herald_node::{ConnectionConfig, EdgeConfig};
use herald_testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// A WebSocket client that sends exactly the bytes a test gives it.
struct Raw {
    stream: TcpStream,
    /// Bytes read and not yet parsed into a frame.
    buffered: Vec<u8>,
}

/// A frame from the server: opcode and payload.
#[derive(Debug)]
struct ServerFrame {
    opcode: u8,
    payload: Vec<u8>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A close frame with this code (`None`: no code in it).
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Dropped,
}

fn upgrade_request(key: &str) -> String {
    format!(
        "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client frame, masked as the RFC requires of clients.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    with_mask(first, payload, true)
}

fn with_mask(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let bit = if mask { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

const PUSHER_PING: &[u8] = br#"{"event":"pusher:ping","data":{}}"#;

impl Raw {
    /// Connects and reads the `101` and `pusher:connection_established`.
    async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(upgrade_request("dGhlIHNhbXBsZSBub25jZQ==").as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte)).await.unwrap().unwrap();
            assert_eq!(n, 1, "closed during the handshake: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut raw = Self { stream, buffered: Vec::new() };
        let established = raw.frame().await.unwrap();
        assert!(
            String::from_utf8_lossy(&established.payload).contains("pusher:connection_established"),
            "{established:?}"
        );
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame from the server; `None` when the connection ended.
    async fn frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buffered) {
                self.buffered.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0; 4096];
            let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await;
            match read.expect("timed out waiting for the server") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the connection ends; returns how, and the text messages before.
    async fn end(&mut self) -> (End, Vec<String>) {
        let mut texts = Vec::new();
        loop {
            match self.frame().await {
                None => return (End::Dropped, texts),
                Some(ServerFrame { opcode: CLOSE, payload }) => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return (End::Close(code), texts);
                }
                Some(ServerFrame { opcode: TEXT, payload }) => {
                    texts.push(String::from_utf8(payload).unwrap());
                }
                Some(_) => {}
            }
        }
    }

    /// The next text message (skipping control frames); panics if the connection ends.
    async fn text(&mut self) -> String {
        loop {
            match self.frame().await {
                Some(ServerFrame { opcode: TEXT, payload }) => return String::from_utf8(payload).unwrap(),
                Some(ServerFrame { opcode: CLOSE, payload }) => panic!("closed: {payload:?}"),
                Some(_) => {}
                None => panic!("connection dropped"),
            }
        }
    }
}

/// An unmasked server frame at the start of `buf`, and its length.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    let [first, second, ..] = *buf else { return None };
    assert_eq!(second & 0x80, 0, "server frames are never masked");
    let (len, header) = match second & 0x7F {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(header..header + len)?.to_vec();
    assert_eq!(first & 0x80, 0x80, "the server does not fragment");
    Some((ServerFrame { opcode: first & 0x0F, payload }, header + len))
}

/// Sends `bytes` on a fresh connection and expects the connection to end with `code`;
/// then checks that a fresh client is still served.
async fn expect_close(server: &Server, what: &str, bytes: &[u8], code: u16) {
    let mut raw = Raw::connect(server.addr).await;
    raw.send(bytes).await;
    let (end, _) = raw.end().await;
    assert_eq!(end, End::Close(Some(code)), "{what}");
    still_serves(server).await;
}

async fn still_serves(server: &Server) {
    let mut fresh = server.connect().await;
    assert!(fresh.sync().await.is_empty());
}

#[tokio::test]
async fn a_new_message_inside_a_fragmented_one_closes_with_1002() {
    let server = Server::default().await;
    for (what, opcode) in [("text", TEXT), ("binary", BINARY)] {
        let mut bytes = masked(TEXT, b"{\"event\":");
        bytes.extend(masked(FIN | opcode, PUSHER_PING));
        expect_close(&server, what, &bytes, 1002).await;
        // A non-final data frame inside the open message is as wrong.
        let mut bytes = masked(TEXT, b"{\"event\":");
        bytes.extend(masked(opcode, b"x"));
        expect_close(&server, what, &bytes, 1002).await;
    }
    expect_close(&server, "continuation with nothing open", &masked(FIN, b"x"), 1002).await;
    expect_close(&server, "non-final continuation with nothing open", &masked(0, b"x"), 1002).await;
}

#[tokio::test]
async fn invalid_close_frames_close_with_1002_or_1007() {
    let server = Server::default().await;
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let frame = masked(FIN | CLOSE, &close_payload(code, b""));
        expect_close(&server, &format!("close code {code}"), &frame, 1002).await;
    }
    expect_close(&server, "1-byte close payload", &masked(FIN | CLOSE, &[0x03]), 1002).await;
    // "κόσμε" with an encoded surrogate (ED A0 80) in the middle: not UTF-8.
    let reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
    expect_close(&server, "reason not UTF-8", &masked(FIN | CLOSE, &close_payload(1000, reason)), 1007).await;
}

#[tokio::test]
async fn valid_close_frames_are_echoed() {
    let server = Server::default().await;
    for code in
        [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
    {
        let frame = masked(FIN | CLOSE, &close_payload(code, "bye ✓".as_bytes()));
        expect_close(&server, &format!("close code {code}"), &frame, code).await;
    }
    // No code at all: answered with 1000.
    expect_close(&server, "empty close", &masked(FIN | CLOSE, b""), 1000).await;
}

#[tokio::test]
async fn frames_rfc_6455_forbids_close_with_1002() {
    let server = Server::default().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ping over 125 bytes", masked(FIN | PING, &[b'a'; 126])),
        ("close over 125 bytes", masked(FIN | CLOSE, &close_payload(1000, &[b'a'; 124]))),
        ("fragmented ping", masked(PING, b"a")),
        ("fragmented pong", masked(PONG, b"a")),
        ("reserved opcode 3", masked(FIN | 0x3, b"a")),
        ("reserved opcode 7", masked(FIN | 0x7, b"a")),
        ("reserved opcode 0xB", masked(FIN | 0xB, b"a")),
        ("reserved opcode 0xF", masked(FIN | 0xF, b"")),
        ("RSV1", masked(FIN | 0x40 | TEXT, PUSHER_PING)),
        ("RSV2", masked(FIN | 0x20 | TEXT, PUSHER_PING)),
        ("RSV3", masked(FIN | 0x10 | TEXT, PUSHER_PING)),
        ("unmasked", with_mask(FIN | TEXT, PUSHER_PING, false)),
    ];
    for (what, bytes) in cases {
        expect_close(&server, what, &bytes, 1002).await;
    }
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007_also_across_fragments() {
    let server = Server::default().await;
    expect_close(&server, "one frame", &masked(FIN | TEXT, b"{\"event\":\"\xed\xa0\x80\"}"), 1007).await;
    // The second fragment breaks a character the first one began.
    let mut split = masked(TEXT, b"{\"event\":\"\xce");
    split.extend(masked(FIN, b"\x41\"}"));
    expect_close(&server, "across fragments", &split, 1007).await;
    // A message that ends inside a character.
    let mut truncated = masked(TEXT, b"\"a");
    truncated.extend(masked(FIN, b"\xce"));
    expect_close(&server, "cut character at the end", &truncated, 1007).await;
    // Fail fast: the first fragment is already invalid; the message never ends.
    expect_close(&server, "invalid first fragment", &masked(TEXT, b"\xff"), 1007).await;
}

#[tokio::test]
async fn fragmented_messages_with_control_frames_between_are_served() {
    let server = Server::default().await;
    let mut raw = Raw::connect(server.addr).await;
    // "κόσμε" cut inside a character across three fragments, a ping and a pong between.
    let message = "{\"event\":\"pusher:ping\",\"data\":{\"x\":\"κόσμε\"}}".as_bytes();
    let cut = message.len() - 8;
    let mut bytes = masked(TEXT, &message[..10]);
    bytes.extend(masked(FIN | PING, b"hello"));
    bytes.extend(masked(0, &message[10..cut]));
    bytes.extend(masked(FIN | PONG, b""));
    bytes.extend(masked(FIN, &message[cut..]));
    raw.send(&bytes).await;
    let pong = raw.frame().await.unwrap();
    assert_eq!((pong.opcode, &pong.payload[..]), (PONG, &b"hello"[..]), "ping answered mid-message");
    assert!(raw.text().await.contains("pusher:pong"), "the whole message was served");
    // Binary messages are refused with a Pusher error, the connection kept.
    raw.send(&masked(BINARY, b"\x00")).await;
    raw.send(&masked(FIN, b"\x01")).await;
    assert!(raw.text().await.contains("binary"));
    raw.send(&masked(FIN | TEXT, PUSHER_PING)).await;
    assert!(raw.text().await.contains("pusher:pong"));
}

#[tokio::test]
async fn a_key_that_is_not_16_bytes_of_base64_is_refused_with_400() {
    let server = Server::default().await;
    for key in [
        "abc",
        // 16 bytes, padding missing.
        "dGhlIHNhbXBsZSBub25jZQ",
        // 17 and 15 bytes.
        "dGhlIHNhbXBsZSBub25jZTE=",
        "dGhlIHNhbXBsZSBub25j",
        // Not base64.
        "dGhlIHNhbXBsZSBub25j!!==",
        "",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(upgrade_request(key).as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "key {key:?}: {answer}");
        assert!(answer.contains("Sec-WebSocket-Key"), "key {key:?}: {answer}");
    }
    still_serves(&server).await;
}
/// A connection with `len` bytes of an unfinished frame sent, `first_part` of them so far.
async fn holding(addr: SocketAddr, len: usize, first_part: usize) -> (Raw, Vec<u8>) {
    let mut message = PUSHER_PING.to_vec();
    // JSON allows trailing whitespace: a `pusher:ping` of any size.
    message.resize(len, b' ');
    let frame = masked(FIN | TEXT, &message);
    let mut raw = Raw::connect(addr).await;
    raw.send(&frame[..first_part]).await;
    (raw, frame[first_part..].to_vec())
}

#[tokio::test]
async fn unfinished_input_is_bounded_node_wide() {
    let config = EdgeConfig {
        connection: ConnectionConfig {
            max_pending_input_bytes: 10_000,
            max_message_bytes: 8_000,
            ..Default::default()
        },
        ..config()
    };
    let server = Server::start(vec![app("app")], config).await;
    let node = server.node.clone();

    // The first connection holds 6,000 bytes of a frame: within the budget.
    let (mut first, first_rest) = holding(server.addr, 8000, 6000).await;
    eventually("the first connection's bytes counted", || node.pending_input_bytes() >= 6000).await;

    // A second one would take the node past it: closed with 1013 (try again later).
    let (mut second, _) = holding(server.addr, 8000, 6000).await;
    assert_eq!(second.end().await.0, End::Close(Some(1013)));
    eventually("the second connection's bytes released", || node.pending_input_bytes() < 8000).await;

    // The first one is untouched and finishes its message.
    first.send(&first_rest).await;
    assert!(first.text().await.contains("pusher:pong"));
    eventually("the finished message released", || node.pending_input_bytes() == 0).await;

    // The budget is free again: a new connection may hold as much.
    let (mut third, third_rest) = holding(server.addr, 8000, 6000).await;
    eventually("the third connection's bytes counted", || node.pending_input_bytes() >= 6000).await;
    // An open fragmented message counts too: a fourth one's 5,000 are too many now.
    let mut fourth = Raw::connect(server.addr).await;
    let mut fragment = PUSHER_PING.to_vec();
    fragment.resize(5000, b' ');
    fourth.send(&masked(TEXT, &fragment)).await;
    assert_eq!(fourth.end().await.0, End::Close(Some(1013)));
    third.send(&third_rest).await;
    assert!(third.text().await.contains("pusher:pong"));

    // Closing a connection mid-frame releases what it held.
    let (fifth, _) = holding(server.addr, 8000, 6000).await;
    eventually("the fifth connection's bytes counted", || node.pending_input_bytes() >= 6000).await;
    drop(fifth);
    eventually("a closed connection's bytes released", || node.pending_input_bytes() == 0).await;
    still_serves(&server).await;
}
