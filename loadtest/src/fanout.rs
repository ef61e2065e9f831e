//! `fanout`: N subscribers over C channels; a publisher publishes at R/s through
//! Herald's gRPC API, each event's data carrying its send time. Reports deliveries
//! against expectations (loss), deliveries per second, publish→deliver latency
//! percentiles, and (given the server's pid) server CPU per delivery.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use herald_api::client;
use herald_proto::v1::{Event, PublishRequest, event::Payload, publisher_client::PublisherClient};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataValue;

use crate::{
    connect::{ConnectArgs, open_subscribed},
    publish::authed,
    pusher::{OP_TEXT, PusherConn},
    server_stats,
};

#[derive(clap::Args, Clone)]
pub struct FanoutArgs {
    /// Subscribers: `--connections` of them over `--channels` channels.
    #[command(flatten)]
    pub subscribers: ConnectArgs,
    /// Herald's gRPC address, for publishing.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,
    #[arg(long, default_value = "herald-demo-api-token")]
    pub token: String,
    #[arg(long, default_value = "demo")]
    pub app_id: String,
    /// Publications per second, spread round-robin over the channels.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Bytes of event data (at least the timestamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// How long to publish.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

/// Latencies are sharded over several histograms so subscribers rarely contend.
const SHARDS: usize = 16;

struct Recorder {
    delivered: AtomicU64,
    latencies: Vec<Mutex<Histogram<u64>>>,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<serde_json::Value> {
    let subscribers = &args.subscribers;
    let channels = subscribers.channels.max(1);
    let (connections, failures) = open_subscribed(subscribers, 0).await;
    anyhow::ensure!(failures == 0, "{failures} subscribers failed to connect");
    let mut per_channel = vec![0u64; channels];
    for i in 0..connections.len() {
        per_channel[i % channels] += 1;
    }

    let recorder = Arc::new(Recorder {
        delivered: AtomicU64::new(0),
        latencies: (0..SHARDS).map(|_| histogram().map(Mutex::new)).collect::<anyhow::Result<_>>()?,
    });
    let readers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::spawn(read_deliveries(conn, recorder.clone(), i % SHARDS)))
        .collect();

    let before = subscribers.server_pid.map(server_stats::sample).transpose()?;
    let published = publish_at_rate(&args, channels).await?;
    let expected: u64 = published.iter().zip(&per_channel).map(|(p, s)| p * s).sum();
    // Wait (bounded) for what is still in flight.
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while recorder.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = subscribers.server_pid.map(server_stats::sample).transpose()?;
    for reader in &readers {
        reader.abort();
    }

    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let mut latency = histogram()?;
    for shard in &recorder.latencies {
        latency.add(&*shard.lock()).context("merging latencies")?;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let server_cpu = before.zip(after).map(|(b, a)| a.cpu - b.cpu);
    let published_total: u64 = published.iter().sum();
    eprintln!(
        "fanout: {} subscribers / {channels} channels, {published_total} published at {:.0}/s: \
         {delivered} of {expected} delivered ({:.0}/s); latency p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms{}",
        per_channel.iter().sum::<u64>(),
        args.rate,
        delivered as f64 / args.seconds,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1000.0,
        server_cpu
            .map(|cpu| format!(
                "; server CPU {cpu:.2} s = {:.2} µs per delivery",
                cpu * 1e6 / delivered.max(1) as f64
            ))
            .unwrap_or_default()
    );
    Ok(json!({
        "scenario": "fanout",
        "subscribers": per_channel.iter().sum::<u64>(),
        "channels": channels,
        "rate": args.rate,
        "payload_bytes": args.payload,
        "seconds": args.seconds,
        "published": published_total,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "deliveries_per_second": delivered as f64 / args.seconds,
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99.9": ms(0.999), "max": latency.max() as f64 / 1000.0 },
        "server_cpu_seconds": server_cpu,
        "server_cpu_us_per_delivery": server_cpu.map(|cpu| cpu * 1e6 / delivered.max(1) as f64),
    }))
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, up to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Counts deliveries on one connection and records their latency from the `ts:`
/// stamp in the data.
async fn read_deliveries(mut conn: PusherConn, recorder: Arc<Recorder>, shard: usize) {
    while let Ok(frame) = conn.next_frame().await {
        if frame.opcode != OP_TEXT {
            continue;
        }
        let Some(sent) = stamp(&frame.payload) else { continue };
        let latency = now_micros().saturating_sub(sent).max(1);
        recorder.delivered.fetch_add(1, Ordering::Relaxed);
        let _ = recorder.latencies[shard].lock().record(latency.min(60_000_000));
    }
}

/// The microsecond timestamp after `ts:` in a message.
fn stamp(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(3).position(|w| w == b"ts:")? + 3;
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&payload[at..at + digits]).ok()?.parse().ok()
}

/// Publishes at `args.rate` for `args.seconds`, round-robin over the channels;
/// returns how many publishes each channel got.
async fn publish_at_rate(args: &FanoutArgs, channels: usize) -> anyhow::Result<Vec<u64>> {
    let channel = client::connect(args.grpc).await.with_context(|| format!("connecting to {}", args.grpc))?;
    let client = PublisherClient::with_origin(channel, format!("http://{}", args.grpc).parse()?);
    let token: Arc<MetadataValue<_>> = Arc::new(format!("Bearer {}", args.token).parse()?);
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let in_flight = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while Instant::now() < end {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * args.rate) as u64;
        while sent < due {
            let channel_index = (sent % channels as u64) as usize;
            sent += 1;
            let permit = in_flight.clone().acquire_owned().await?;
            let stamp = format!("ts:{};", now_micros());
            let data = format!("{stamp}{}", "x".repeat(args.payload.saturating_sub(stamp.len())));
            let request = PublishRequest {
                app_id: args.app_id.clone(),
                event: Some(Event {
                    name: "fanout".into(),
                    payload: Some(Payload::Data(data)),
                    channels: vec![format!("c{channel_index}")],
                    ..Default::default()
                }),
            };
            let (mut client, token, published) = (client.clone(), token.clone(), published.clone());
            tokio::spawn(async move {
                if client.publish(authed(request, &token)).await.is_ok() {
                    published[channel_index].fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
        }
    }
    // Every publish has finished once all permits are back.
    let _all = in_flight.acquire_many(256).await?;
    Ok(published.iter().map(|p| p.load(Ordering::Relaxed)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stamp_in_a_pusher_message() {
        let message = br#"{"channel":"c0","data":"ts:1700000000123456;xxxx","event":"fanout"}"#;
        assert_eq!(stamp(message), Some(1_700_000_000_123_456));
        assert_eq!(stamp(b"{}"), None);
    }
}
