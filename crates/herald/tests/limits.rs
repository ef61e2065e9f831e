//! An edge at its file descriptor limit turns new connections away at once (a `503`
//! and a close, so clients reconnect, to another edge when several share the port)
//! instead of leaving them in the accept queue until their clients give up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use herald_testkit::{
    Deadline,
    process::{Process, address},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// Upgrades a fresh connection to the demo app's WebSocket; returns the connection
/// and the status line of the answer.
async fn upgrade(ws: std::net::SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(ws).await.unwrap();
    let request = format!(
        "GET /app/demo-key?protocol=7 HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: aGVyYWxkLWxpbWl0cyEhIQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n") {
        match stream.read_u8().await {
            Ok(byte) => head.push(byte),
            Err(_) => break,
        }
    }
    let line = String::from_utf8_lossy(&head).trim().to_owned();
    (stream, line)
}

#[tokio::test]
async fn an_edge_out_of_file_descriptors_turns_new_connections_away_at_once() {
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\"", HERALD]).args([
        "dev",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--grpc-port",
        "0",
    ]);
    let (_herald, ready) = Process::start("herald dev", command, "is running");
    let ws = address(&ready, "ws_addr").unwrap();
    let ops = address(&ready, "health_addr").unwrap();

    // Fill the process up; each connection holds a descriptor. One is turned away
    // when none is left: answered, not left waiting (the deadline only turns a hang
    // into a failure).
    let mut held = Vec::new();
    let deadline = Deadline::after(Duration::from_secs(20));
    let turned_away = loop {
        assert!(held.len() < 64, "a process limited to 64 files took 64 connections");
        let (stream, status) = deadline.run(upgrade(ws), || "an answer to an upgrade".into()).await;
        if status.starts_with("HTTP/1.1 101") {
            held.push(stream);
            continue;
        }
        break status;
    };
    assert!(turned_away.starts_with("HTTP/1.1 503"), "{turned_away:?}");
    assert!(!held.is_empty());

    // Once connections close, new ones are taken again.
    held.truncate(held.len() - 2);
    let taken = std::sync::Mutex::new(None);
    herald_testkit::eventually_async("an upgrade taken after connections closed", || async {
        let (stream, status) = upgrade(ws).await;
        let ok = status.starts_with("HTTP/1.1 101");
        if ok {
            *taken.lock().unwrap() = Some(stream);
        }
        ok
    })
    .await;
    held.extend(taken.into_inner().unwrap());

    // The metric says so (the scrape needs a descriptor too: one more closes first).
    held.truncate(held.len() - 2);
    let mut scrape = TcpStream::connect(ops).await.unwrap();
    scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut metrics = String::new();
    scrape.read_to_string(&mut metrics).await.unwrap();
    assert!(metrics.contains("herald_connections_shed_total{listener=\"edge\"}"), "{metrics}");
}
