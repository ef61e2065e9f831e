//! `connect`: opens N connections, each subscribed to one of C channels, spread over
//! source addresses 127.0.0.1–127.0.0.254; reports the accept rate (connection to
//! subscription ack) and, given the server's pid, its memory and CPU per connection.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::json;
use std::process::Stdio;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::Semaphore,
};

use crate::{
    pusher::{PusherConn, source_address},
    server_stats,
};

#[derive(clap::Args, Clone)]
pub struct ConnectArgs {
    /// The server's WebSocket address; several (comma-separated) spread the
    /// connections over the nodes of a cluster, round-robin.
    #[arg(long, default_value = "127.0.0.1:6001", value_delimiter = ',', num_args = 1..)]
    pub target: Vec<SocketAddr>,
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
    /// Load-generator processes to spread the connections over (a process may hold at
    /// most ~19,000 sockets here); 0 = one per 15,000 connections. `connect` only.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Internal: run as worker `N` of a multi-process `connect`.
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<serde_json::Value> {
    if let Some(worker) = args.worker {
        return work(args, worker).await;
    }
    let before = args.server_pid.map(server_stats::sample).transpose()?;
    let started = Instant::now();
    let mut args = args;
    if args.processes == 0 {
        args.processes = args.connections.div_ceil(CONNECTIONS_PER_PROCESS).max(1);
    }
    let (held, opened, failures) = if args.processes > 1 {
        let workers = spawn_workers(&args).await?;
        let opened = workers.iter().map(|w| w.opened).sum();
        let failures = workers.iter().map(|w| w.failures).sum();
        (Held::Workers(workers), opened, failures)
    } else {
        let (connections, failures) = open_subscribed(&args, 0).await;
        let opened = connections.len();
        (Held::Here(connections), opened, failures)
    };
    let elapsed = started.elapsed().as_secs_f64();
    // Let the server settle (freed handshake buffers) before measuring what idle
    // connections cost.
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    let after = args.server_pid.map(server_stats::sample).transpose()?;
    let per_connection = match (before, after) {
        (Some(before), Some(after)) if opened > 0 => Some((
            (after.rss as f64 - before.rss as f64) / opened as f64,
            (after.cpu - before.cpu) / opened as f64 * 1e6,
        )),
        _ => None,
    };
    eprintln!(
        "connect: {opened} subscribed ({failures} failed) over {} process(es) in {elapsed:.2} s = {:.0} connections/s{}",
        args.processes,
        opened as f64 / elapsed,
        per_connection
            .map(|(rss, cpu)| format!("; server: {rss:.0} B RSS and {cpu:.1} µs CPU per connection"))
            .unwrap_or_default()
    );
    held.release().await;
    Ok(json!({
        "scenario": "connect",
        "connections": opened,
        "failures": failures,
        "channels": args.channels,
        "processes": args.processes,
        "seconds": elapsed,
        "connections_per_second": opened as f64 / elapsed,
        "server_rss_bytes_per_connection": per_connection.map(|p| p.0),
        "server_cpu_us_per_connection": per_connection.map(|p| p.1),
    }))
}

/// The node connection `i` goes to.
pub fn target_of(targets: &[SocketAddr], i: usize) -> SocketAddr {
    targets.get(i % targets.len().max(1)).copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 6001)))
}

fn targets(targets: &[SocketAddr]) -> String {
    targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Connections one load-generator process takes when the split is automatic (the
/// limit is 20,000 open files per process here).
const CONNECTIONS_PER_PROCESS: usize = 15_000;

/// The open connections, here or in worker processes.
enum Held {
    Here(Vec<PusherConn>),
    Workers(Vec<Worker>),
}

impl Held {
    async fn release(self) {
        match self {
            Self::Here(connections) => drop(connections),
            Self::Workers(workers) => {
                for mut worker in workers {
                    // Closing its stdin tells a worker to drop its connections and exit.
                    drop(worker.child.stdin.take());
                    let _ = worker.child.wait().await;
                }
            }
        }
    }
}

struct Worker {
    child: tokio::process::Child,
    opened: usize,
    failures: usize,
}

/// Starts `args.processes` copies of this program, each opening its share of the
/// connections (from its own source addresses), and waits until all are subscribed.
async fn spawn_workers(args: &ConnectArgs) -> anyhow::Result<Vec<Worker>> {
    let exe = std::env::current_exe().context("finding the load generator's executable")?;
    let processes = args.processes.max(1);
    let mut workers = Vec::with_capacity(processes);
    for worker in 0..processes {
        let share = args.connections / processes + usize::from(worker < args.connections % processes);
        let mut child = tokio::process::Command::new(&exe)
            .args(["connect", "--target", &targets(&args.target), "--key", &args.key])
            .args(["--connections", &share.to_string(), "--channels", &args.channels.to_string()])
            .args(["--concurrency", &args.concurrency.to_string(), "--worker", &worker.to_string()])
            .args(["--processes", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push((child, BufReader::new(stdout)));
    }
    let mut ready = Vec::with_capacity(processes);
    for (child, mut stdout) in workers {
        let mut line = String::new();
        stdout.read_line(&mut line).await?;
        let report: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("worker said {line:?}"))?;
        let count = |k: &str| report[k].as_u64().unwrap_or(0) as usize;
        ready.push(Worker { child, opened: count("opened"), failures: count("failures") });
    }
    Ok(ready)
}

/// A worker: opens its connections, reports, and holds them until its stdin closes.
async fn work(args: ConnectArgs, worker: usize) -> anyhow::Result<serde_json::Value> {
    // Each worker starts elsewhere in the source addresses and channels.
    let offset = worker * 97;
    let (connections, failures) = open_subscribed(&args, offset).await;
    println!("{}", json!({ "opened": connections.len(), "failures": failures }));
    let mut stdin = tokio::io::stdin();
    let _ = tokio::io::copy(&mut stdin, &mut tokio::io::sink()).await;
    drop(connections);
    Ok(json!({ "scenario": "connect-worker", "worker": worker }))
}

/// Opens `args.connections` connections subscribed to channels `c0…`, numbering the
/// channels from `offset`. Returns the open ones and the number that failed.
pub async fn open_subscribed(args: &ConnectArgs, offset: usize) -> (Vec<PusherConn>, usize) {
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permits = permits.clone();
        let (target, key) = (target_of(&args.target, i), args.key.clone());
        let channel = format!("c{}", (offset + i) % args.channels.max(1));
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut conn = PusherConn::connect(target, Some(source_address(offset + i)), &key).await?;
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
