//! A scale worker: one process holding its share of the connections (a process may
//! hold at most 20,000 files here). Each connection subscribes to its channels, reads
//! everything the server sends, and reconnects when it is dropped (after a random
//! pause, as clients behind a load balancer would); the worker counts deliveries per
//! phase with their latency, and answers the coordinator's commands, one per line on
//! stdin, with one JSON line on stdout.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::Semaphore,
};

use crate::{
    pusher::{OP_CLOSE, OP_TEXT, PusherConn, find, source_address},
    server_stats,
};

use super::{Layout, PHASES};

#[derive(clap::Args, Clone)]
pub struct WorkerArgs {
    /// The edges' shared WebSocket address.
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub secret: String,
    #[arg(long)]
    pub app_id: String,
    /// The first connection (global index) this worker holds.
    #[arg(long)]
    pub first: usize,
    /// How many connections it holds.
    #[arg(long)]
    pub count: usize,
    #[command(flatten)]
    pub layout: Layout,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Longest random pause before a dropped connection reconnects, ms.
    #[arg(long, default_value_t = 1000)]
    pub reconnect_jitter_ms: u64,
    /// How long a connection may take from connect to its last subscription
    /// acknowledgement before the attempt counts as failed (and is made again).
    #[arg(long, default_value_t = 30.0)]
    pub handshake_timeout: f64,
}

/// What the worker has counted.
struct State {
    /// Connections open and subscribed to all their channels now.
    subscribed: AtomicU64,
    /// Subscribed again after being dropped.
    reconnects: AtomicU64,
    /// Connections the server closed or lost.
    drops: AtomicU64,
    /// Connection or subscription attempts that failed.
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Failures by kind (the message with its numbers taken out).
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Deliveries per phase (the `p:N;` in each event's data).
    deliveries: [AtomicU64; PHASES],
    /// Publish-to-delivery latency of the current phase, µs.
    latency: Mutex<Histogram<u64>>,
    handshakes: Semaphore,
    stopping: AtomicBool,
}

impl State {
    fn failed(&self, e: &anyhow::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let message = format!("{e:#}");
        let kind: String = message.chars().filter(|c| !c.is_ascii_digit()).take(120).collect();
        *self.errors.lock().entry(kind).or_insert(0) += 1;
        self.first_error.lock().get_or_insert(message);
    }
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<serde_json::Value> {
    let state = Arc::new(State {
        subscribed: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        drops: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        first_error: Mutex::new(None),
        errors: Mutex::default(),
        deliveries: std::array::from_fn(|_| AtomicU64::new(0)),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        handshakes: Semaphore::new(args.concurrency.max(1)),
        stopping: AtomicBool::new(false),
    });
    let args = Arc::new(args);
    for i in args.first..args.first + args.count {
        tokio::spawn(hold(state.clone(), args.clone(), i));
    }
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        match command.trim() {
            "stats" => println!("{}", stats(&state, false)),
            "latency" => println!("{}", stats(&state, true)),
            "reset" => {
                state.latency.lock().reset();
                println!("{}", json!({ "reset": true }));
            }
            other => println!("{}", json!({ "error": format!("unknown command {other:?}") })),
        }
    }
    state.stopping.store(true, Ordering::Relaxed);
    Ok(json!({ "scenario": "scale-worker", "first": args.first }))
}

fn stats(state: &State, with_latency: bool) -> serde_json::Value {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut report = json!({
        "subscribed": load(&state.subscribed),
        "reconnects": load(&state.reconnects),
        "drops": load(&state.drops),
        "failures": load(&state.failures),
        "first_error": state.first_error.lock().clone(),
        "errors": state.errors.lock().clone(),
        "deliveries": state.deliveries.iter().map(load).collect::<Vec<_>>(),
        "rss": server_stats::sample(std::process::id()).map(|s| s.rss).unwrap_or(0),
    });
    if with_latency {
        let latency = state.latency.lock();
        let recorded: Vec<[u64; 2]> =
            latency.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect();
        report["latency"] = json!(recorded);
    }
    report
}

/// Connection `i`, for as long as the worker runs: connect, subscribe, read until
/// dropped, and again.
async fn hold(state: Arc<State>, args: Arc<WorkerArgs>, i: usize) {
    let channels = args.layout.channels_of(i);
    let mut dropped_before = false;
    loop {
        let opened = {
            let Ok(_permit) = state.handshakes.acquire().await else { return };
            // Boxed: a task is as large as its largest await, and the handshake's is
            // several times the read loop's, which is what a held connection waits in.
            let within = Duration::from_secs_f64(args.handshake_timeout);
            match tokio::time::timeout(within, Box::pin(open(&args, i, &channels))).await {
                Ok(opened) => opened,
                Err(_) => Err(anyhow::anyhow!("no subscription acknowledged within {within:?}")),
            }
        };
        match opened {
            Ok(conn) => {
                state.subscribed.fetch_add(1, Ordering::Relaxed);
                if dropped_before {
                    state.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                read(&state, conn).await;
                state.subscribed.fetch_sub(1, Ordering::Relaxed);
                state.drops.fetch_add(1, Ordering::Relaxed);
                dropped_before = true;
            }
            Err(e) => state.failed(&e),
        }
        if state.stopping.load(Ordering::Relaxed) {
            return;
        }
        let pause = fastrand::u64(0..=args.reconnect_jitter_ms.max(1));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A connection subscribed to `channels` (all subscriptions sent at once, then their
/// acknowledgements awaited).
async fn open(args: &WorkerArgs, i: usize, channels: &[String]) -> anyhow::Result<PusherConn> {
    let mut conn = PusherConn::connect(args.target, Some(source_address(i)), &args.key).await?;
    let app = herald_core::App::with_credentials(&args.app_id, &args.key, &args.secret);
    for channel in channels {
        let data = if channel.starts_with("presence-") {
            let channel_data = json!({ "user_id": format!("u{i}"), "user_info": {} }).to_string();
            let auth = herald_core::auth::channel_auth(&app, &conn.socket_id, channel, Some(&channel_data));
            json!({ "channel": channel, "auth": auth, "channel_data": channel_data })
        } else {
            json!({ "channel": channel })
        };
        let message = json!({ "event": "pusher:subscribe", "data": data }).to_string();
        conn.send_text(message.as_bytes()).await?;
    }
    let mut acknowledged = 0;
    while acknowledged < channels.len() {
        let text = conn.next_text().await.context("waiting for subscription acknowledgements")?;
        if find(&text, b"pusher_internal:subscription_succeeded") {
            acknowledged += 1;
        } else if find(&text, b"pusher:subscription_error") || find(&text, b"\"pusher:error\"") {
            anyhow::bail!("subscription refused: {}", String::from_utf8_lossy(&text));
        }
    }
    conn.socket_id = String::new();
    Ok(conn)
}

/// Reads until the connection ends, counting deliveries and their latency.
async fn read(state: &State, mut conn: PusherConn) {
    loop {
        let frame = match conn.next_frame().await {
            Ok(frame) => frame,
            Err(_) => return,
        };
        match frame.opcode {
            OP_TEXT => {
                if find(&frame.payload, b"\"pusher:ping\"") {
                    if conn.send_text(br#"{"event":"pusher:pong","data":{}}"#).await.is_err() {
                        return;
                    }
                } else if let Some((phase, sent_us)) = stamp(&frame.payload) {
                    if let Some(count) = state.deliveries.get(phase) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    let latency = super::now_micros().saturating_sub(sent_us).max(1);
                    let _ = state.latency.lock().record(latency);
                }
            }
            OP_CLOSE => return,
            _ => {}
        }
    }
}

/// The phase and send time in an event's data: `p:PHASE;ts:MICROS;`.
fn stamp(payload: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = &text[text.find("p:")? + 2..];
    let (phase, rest) = rest.split_once(";ts:")?;
    let (sent, _) = rest.split_once(';')?;
    Some((phase.parse().ok()?, sent.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_from_an_event_frame() {
        let frame = br#"{"event":"e","channel":"all","data":"p:3;ts:1700000000000000;xxxx"}"#;
        assert_eq!(stamp(frame), Some((3, 1_700_000_000_000_000)));
        assert_eq!(stamp(br#"{"event":"pusher:ping","data":{}}"#), None);
    }
}
