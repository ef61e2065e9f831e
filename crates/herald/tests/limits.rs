//! Edges at their limits. At its connection cap (`server.max_connections`) an edge
//! leaves its port to the edges sharing it and says not ready, until it is down to
//! 95%. Out of file descriptors (a cap above the file limit) it turns new connections
//! away at once (a `503` and a close, so clients reconnect, to another edge when
//! several share the port) instead of leaving them in the accept queue until their
//! clients give up.

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
    // A cap above the file limit: the files run out first.
    command.env("HERALD_SERVER__MAX_CONNECTIONS", "1000");
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

/// The node number of the edge that took an upgraded connection: the first half of
/// the socket id in its `pusher:connection_established`.
async fn node_of(stream: &mut TcpStream) -> u32 {
    let mut seen = Vec::new();
    let text = loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains("activity_timeout") {
            break text;
        }
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before connection_established: {text:?}");
        seen.extend_from_slice(&chunk[..n]);
    };
    let id = text.split("socket_id").nth(1).unwrap();
    let id: String =
        id.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    id.parse().unwrap()
}

/// `/readyz`'s status line and body.
async fn readyz(ops: std::net::SocketAddr) -> String {
    let mut scrape = TcpStream::connect(ops).await.unwrap();
    scrape.write_all(b"GET /readyz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    scrape.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Opens connections one at a time until `n` are open, retrying attempts that fail;
/// returns them with the node each is on.
async fn open(ws: std::net::SocketAddr, n: usize) -> Vec<(TcpStream, u32)> {
    let mut open = Vec::new();
    let deadline = Deadline::after(Duration::from_secs(30));
    while open.len() < n {
        let attempt = async {
            let mut stream = TcpStream::connect(ws).await.ok()?;
            let request = format!(
                "GET /app/demo-key?protocol=7 HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: aGVyYWxkLWxpbWl0cyEhIQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.ok()?;
            let node = node_of(&mut stream).await;
            Some((stream, node))
        };
        if let Some(connection) =
            deadline.run(attempt, || format!("connection {} of {n}", open.len() + 1)).await
        {
            open.push(connection);
        }
    }
    open
}

#[tokio::test]
async fn an_edge_at_its_connection_cap_leaves_the_port_to_the_others_until_below_it() {
    // Two processes sharing one port, as edges do: the first may hold 4 connections.
    let start = |port: &str, node: &str, max: &str| {
        let mut command = Command::new(HERALD);
        command
            .args(["dev", "--port", port, "--metrics-port", "0", "--grpc-port", "0"])
            .env("HERALD_SERVER__NODE_ID", node)
            .env("HERALD_SERVER__MAX_CONNECTIONS", max);
        Process::start(&format!("herald dev (node {node})"), command, "is running")
    };
    let (_capped, ready) = start("0", "1", "4");
    let ws = address(&ready, "ws_addr").unwrap();
    let capped_ops = address(&ready, "health_addr").unwrap();
    let (_other, _) = start(&ws.port().to_string(), "2", "1000");
    assert!(readyz(capped_ops).await.starts_with("HTTP/1.1 200"));

    // Sequential clients: once the capped edge has its 4 (a fifth may have been in its
    // queue as it left: served, not dropped), every other goes to the other edge.
    let connections = open(ws, 40).await;
    let held = connections.iter().filter(|(_, node)| *node == 1).count();
    assert!((4..=5).contains(&held), "the capped edge holds {held} of 40");
    let ready = readyz(capped_ops).await;
    assert!(ready.starts_with("HTTP/1.1 503") && ready.ends_with("at capacity\n"), "{ready:?}");

    // Down to 95% of its cap (3 of 4) it listens again: new clients reach it.
    let (on_capped, mut kept): (Vec<_>, Vec<_>) = connections.into_iter().partition(|(_, node)| *node == 1);
    drop(on_capped);
    herald_testkit::eventually_async("the capped edge ready again", || async {
        readyz(capped_ops).await.starts_with("HTTP/1.1 200")
    })
    .await;
    let opened = std::sync::Mutex::new(Vec::new());
    herald_testkit::eventually_async("a new client on the capped edge", || async {
        let connection = open(ws, 1).await.remove(0);
        let reached = connection.1 == 1;
        opened.lock().unwrap().push(connection);
        reached
    })
    .await;
    kept.extend(opened.into_inner().unwrap());
    assert!(kept.iter().any(|(_, node)| *node == 2), "the other edge took clients too");
}
