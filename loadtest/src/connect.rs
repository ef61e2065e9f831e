//! `connect`: opens N connections, each subscribed to one of C channels, spread over
//! source addresses 127.0.0.1–127.0.0.254; reports the accept rate (connection to
//! subscription ack) and, given the server's pid, its memory and CPU per connection.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::{
    pusher::{PusherConn, source_address},
    server_stats,
};

#[derive(clap::Args, Clone)]
pub struct ConnectArgs {
    /// The server's WebSocket address.
    #[arg(long, default_value = "127.0.0.1:6001")]
    pub target: SocketAddr,
    /// App key to connect with.
    #[arg(long, default_value = "demo-key")]
    pub key: String,
    /// Connections to open (one process holds at most ~19,000 here: 20,000 open files).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Channels the connections are spread over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// The server's pid, for its memory and CPU per connection.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// How long to hold the connections open (idle) after the last one is subscribed.
    #[arg(long, default_value_t = 1.0)]
    pub hold_seconds: f64,
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<serde_json::Value> {
    let before = args.server_pid.map(server_stats::sample).transpose()?;
    let started = Instant::now();
    let (connections, failures) = open_subscribed(&args, 0).await;
    let elapsed = started.elapsed().as_secs_f64();
    // Let the server settle (freed handshake buffers) before measuring what idle
    // connections cost.
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    let after = args.server_pid.map(server_stats::sample).transpose()?;
    let opened = connections.len();
    let per_connection = match (before, after) {
        (Some(before), Some(after)) if opened > 0 => Some((
            (after.rss as f64 - before.rss as f64) / opened as f64,
            (after.cpu - before.cpu) / opened as f64 * 1e6,
        )),
        _ => None,
    };
    eprintln!(
        "connect: {opened} subscribed ({failures} failed) in {elapsed:.2} s = {:.0} connections/s{}",
        opened as f64 / elapsed,
        per_connection
            .map(|(rss, cpu)| format!("; server: {rss:.0} B RSS and {cpu:.1} µs CPU per connection"))
            .unwrap_or_default()
    );
    drop(connections);
    Ok(json!({
        "scenario": "connect",
        "connections": opened,
        "failures": failures,
        "channels": args.channels,
        "seconds": elapsed,
        "connections_per_second": opened as f64 / elapsed,
        "server_rss_bytes_per_connection": per_connection.map(|p| p.0),
        "server_cpu_us_per_connection": per_connection.map(|p| p.1),
    }))
}

/// Opens `args.connections` connections subscribed to channels `c0…`, numbering the
/// channels from `offset`. Returns the open ones and the number that failed.
pub async fn open_subscribed(args: &ConnectArgs, offset: usize) -> (Vec<PusherConn>, usize) {
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permits = permits.clone();
        let (target, key) = (args.target, args.key.clone());
        let channel = format!("c{}", offset + i % args.channels.max(1));
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut conn = PusherConn::connect(target, Some(source_address(i)), &key).await?;
            conn.subscribe(&channel).await?;
            anyhow::Ok(conn)
        }));
    }
    let mut connections = Vec::with_capacity(args.connections);
    let mut failures = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(conn)) => connections.push(conn),
            Ok(Err(e)) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => failures += 1,
        }
    }
    if let Some(e) = first_error {
        eprintln!("connect: first failure: {e:#}");
    }
    (connections, failures)
}
