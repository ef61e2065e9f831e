//! An echo server for the Autobahn testsuite's fuzzing client (`scripts/autobahn.sh`),
//! built on the edge's own WebSocket code: the handshake checks of
//! [`herald_edge::websocket`], its frame reader and [`MessageAssembler`] (as the
//! session uses them), and the hub's [`Outbox`] and frame writer. Messages come back
//! as they came, text as text and binary as binary; everything else is what a Herald
//! session does: pongs, the close echo, and the close code of each violation, with
//! the edge's default limits (`max_message_bytes`, the outbound queue).
//!
//! Listens on 127.0.0.1, on a port the system picks, and prints that port alone on
//! its first line of output.

use std::{
    io::{self, Write},
    time::Duration,
};

use bytes::Bytes;
use herald_edge::websocket::{self, Message, MessageAssembler, Read};
use herald_hub::{Close, Outbox, Wake, frame};
use herald_node::ConnectionConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long a closing connection waits for the client's half of the close handshake.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?.port())?;
    stdout.flush()?;
    let config = ConnectionConfig::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &config).await {
                eprintln!("autobahn_echo: connection failed: {e}");
            }
        });
    }
}

/// Reads the upgrade request, answers it, then echoes until the connection closes.
async fn connection(mut stream: TcpStream, config: &ConnectionConfig) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        if buf.len() > config.max_request_head_bytes {
            return refuse(stream, "431 Request Header Fields Too Large").await;
        }
        let mut chunk = [0; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match websocket::parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(_) => return refuse(stream, "400 Bad Request").await,
        }
    };
    let key = match head.key.as_deref() {
        Some(key) if head.websocket && websocket::is_valid_key(key) => key,
        _ => return refuse(stream, "400 Bad Request").await,
    };
    if head.version.as_deref() != Some("13") {
        return refuse(stream, "426 Upgrade Required").await;
    }
    let outbox = Outbox::new(stream, config.outbound_queue_bytes);
    outbox.push(Bytes::from(websocket::switching_protocols(key)));
    let input = buf.split_off(head.len);
    echo(&outbox, input, config.max_message_bytes).await;
    finish(&outbox).await;
    Ok(())
}

async fn refuse(mut stream: TcpStream, status: &str) -> io::Result<()> {
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Echoes messages until the connection is closing (as a session serves it).
async fn echo(outbox: &Outbox, mut input: Vec<u8>, max_message: usize) {
    let socket = outbox.socket();
    let mut assembler = MessageAssembler::new();
    loop {
        let mut used = 0;
        while !outbox.is_closing() {
            match assembler.read(&mut input[used..], max_message) {
                Ok(Read { message: Some(message), used: taken }) => {
                    used += taken;
                    answer(outbox, message);
                }
                Ok(Read { message: None, used: taken }) => {
                    used += taken;
                    break;
                }
                Err(violation) => outbox.close(Close::plain(violation.code(), violation.reason())),
            }
        }
        input.drain(..used);
        let status = outbox.status();
        if status.closing.is_some() {
            return;
        }
        let wake = outbox.wake(status.pending).await;
        match wake {
            Wake::News => {}
            Wake::Writable(true) => outbox.write_pending(),
            Wake::Readable(true) => {
                input.reserve(4096);
                match socket.try_read_buf(&mut input) {
                    Ok(0) => outbox.close(Close::plain(1006, "")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => outbox.close(Close::plain(1006, "")),
                }
            }
            Wake::Writable(false) | Wake::Readable(false) => outbox.close(Close::plain(1006, "")),
        }
    }
}

fn answer(outbox: &Outbox, message: Message<'_>) {
    match message {
        Message::Text(text) => {
            outbox.push(frame::text(text.as_bytes()));
        }
        Message::Binary(bytes) => {
            outbox.push(frame::binary(&bytes));
        }
        Message::Ping(payload) => {
            outbox.push(frame::pong(payload));
        }
        Message::Pong(_) => {}
        Message::Close { code, .. } => outbox.close(Close::plain(websocket::close_reply(code), "")),
    }
}

/// Sends what is queued (the close frame last), shuts the write side (the server
/// closes the TCP connection first, as RFC 6455 §7.1.1 asks) and waits briefly for
/// the client to close its side.
async fn finish(outbox: &Outbox) {
    let socket = outbox.socket();
    loop {
        let status = outbox.status();
        if status.broken || !status.pending {
            break;
        }
        match tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, socket.writable()).await {
            Ok(Ok(())) => outbox.write_pending(),
            _ => return,
        }
    }
    if outbox.status().broken {
        return;
    }
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        let mut scratch = [0u8; 256];
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            match socket.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}
