//! `fanout`: N subscribers over C channels; a publisher publishes at R/s through
//! Herald's gRPC API or the Pusher HTTP API (so any Pusher-compatible server can be
//! measured), each event's data carrying its send time, one event per call or
//! batches of K. Reports deliveries against expectations (loss), deliveries per
//! second, publish→deliver latency percentiles, and (given the server's pid) server
//! CPU per delivery.

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
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::{
    connect::{ConnectArgs, open_subscribed},
    plot::{self, Series},
    pusher::{OP_TEXT, PusherConn},
    server_stats,
};

mod churn;
mod publisher;

use churn::Churn;
use publisher::Publisher;

#[derive(clap::Args, Clone)]
pub struct FanoutArgs {
    /// Subscribers: `--connections` of them over `--channels` channels.
    #[command(flatten)]
    pub subscribers: ConnectArgs,
    /// How to publish: Herald's gRPC API, or the Pusher HTTP API (`--target`'s port).
    #[arg(long, value_enum, default_value_t = Via::Grpc)]
    pub via: Via,
    /// Herald's gRPC address, for publishing.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,
    #[arg(long, default_value = "herald-demo-api-token")]
    pub token: String,
    #[arg(long, default_value = "demo")]
    pub app_id: String,
    /// App secret, to sign HTTP API requests.
    #[arg(long, default_value = "demo-secret")]
    pub secret: String,
    /// Events per publish call, all to one channel (`PublishBatch` / `batch_events`
    /// when more than 1): a burst of K frames for each of its subscribers.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// HTTP API connections the publishes are spread over.
    #[arg(long, default_value_t = 4)]
    pub http_connections: usize,
    /// Events per second, spread round-robin over the channels.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Churn: extra connections opened per second while publishing, each subscribed
    /// to one of the channels, held for `--churn-hold` seconds, then dropped.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Seconds each churned connection stays.
    #[arg(long, default_value_t = 0.5)]
    pub churn_hold: f64,
    /// Write a plot of latency over the run (SVG) here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Find the highest sustainable rate instead: rounds of `--seconds` from
    /// `--rate` up (doubling, then bisecting to within 5%).
    #[arg(long)]
    pub max: bool,
    /// With `--max`: the p99 latency a sustained round stays within.
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// With `--max`: at most this many rounds.
    #[arg(long, default_value_t = 10)]
    pub max_rounds: usize,
    /// Bytes of event data (at least the timestamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// How long to publish.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Via {
    Grpc,
    Http,
}

/// Latencies are sharded over several histograms so subscribers rarely contend.
const SHARDS: usize = 16;

struct Recorder {
    delivered: AtomicU64,
    latencies: Vec<Mutex<Shard>>,
    /// When publishing started (µs since the epoch), the origin of the plot.
    start_micros: AtomicU64,
}

impl Recorder {
    /// Starts a round: forget what was counted, and ignore deliveries sent before now.
    fn reset(&self) {
        self.start_micros.store(now_micros(), Ordering::Relaxed);
        for shard in &self.latencies {
            let mut shard = shard.lock();
            shard.histogram.reset();
            shard.samples.clear();
        }
        self.delivered.store(0, Ordering::Relaxed);
    }
}

struct Shard {
    histogram: Histogram<u64>,
    /// (ms since the start when it was sent, latency in µs) of every delivery.
    samples: Vec<(u32, u32)>,
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
        latencies: (0..SHARDS)
            .map(|_| Ok(Mutex::new(Shard { histogram: histogram()?, samples: Vec::new() })))
            .collect::<anyhow::Result<_>>()?,
        start_micros: AtomicU64::new(now_micros()),
    });
    let readers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::spawn(read_deliveries(conn, recorder.clone(), i % SHARDS)))
        .collect();

    if args.max {
        let report = find_max(&args, channels, &per_channel, &recorder).await;
        for reader in &readers {
            reader.abort();
        }
        return report;
    }
    let churn = Churn::default();
    let Round { published, expected, delivered, latency, server_cpu } =
        round(&args, args.rate, channels, &per_channel, &recorder, Some(&churn)).await?;
    for reader in &readers {
        reader.abort();
    }
    if let Some(path) = &args.plot {
        let samples: Vec<(u32, u32)> =
            recorder.latencies.iter().flat_map(|shard| shard.lock().samples.clone()).collect();
        let title = format!(
            "{} subscribers / {channels} channels, {} events/s{}",
            per_channel.iter().sum::<u64>(),
            args.rate,
            if args.batch > 1 { format!(" in batches of {}", args.batch) } else { String::new() }
        );
        std::fs::write(path, latency_plot(&title, samples, args.seconds))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
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
    let churned = churn.report(args.seconds);
    if args.churn > 0.0 {
        eprintln!("churn: {churned}");
    }
    Ok(json!({
        "scenario": if args.churn > 0.0 { "churn" } else { "fanout" },
        "churn": churned,
        "subscribers": per_channel.iter().sum::<u64>(),
        "channels": channels,
        "rate": args.rate,
        "via": format!("{:?}", args.via).to_lowercase(),
        "batch": args.batch,
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

/// What one publishing round measured.
struct Round {
    /// Events published per channel.
    published: Vec<u64>,
    expected: u64,
    delivered: u64,
    latency: Histogram<u64>,
    server_cpu: Option<f64>,
}

impl Round {
    fn p99_ms(&self) -> f64 {
        self.latency.value_at_quantile(0.99) as f64 / 1000.0
    }
}

/// Publishes at `rate` for `args.seconds` (with churn, if given), waits (bounded) for
/// the deliveries still in flight, and measures.
async fn round(
    args: &FanoutArgs,
    rate: f64,
    channels: usize,
    per_channel: &[u64],
    recorder: &Recorder,
    churn: Option<&Churn>,
) -> anyhow::Result<Round> {
    recorder.reset();
    let before = args.subscribers.server_pid.map(server_stats::sample).transpose()?;
    let published = match churn {
        Some(churn) if args.churn > 0.0 => {
            let (published, ()) =
                tokio::join!(publish_at_rate(args, channels, rate), churn.run(args, channels));
            published?
        }
        _ => publish_at_rate(args, channels, rate).await?,
    };
    let expected: u64 = published.iter().zip(per_channel).map(|(p, s)| p * s).sum();
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while recorder.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = args.subscribers.server_pid.map(server_stats::sample).transpose()?;
    let mut latency = histogram()?;
    for shard in &recorder.latencies {
        latency.add(&shard.lock().histogram).context("merging latencies")?;
    }
    Ok(Round {
        published,
        expected,
        delivered: recorder.delivered.load(Ordering::Relaxed),
        latency,
        server_cpu: before.zip(after).map(|(b, a)| a.cpu - b.cpu),
    })
}

/// The highest rate the server sustains: rounds of `args.seconds` at rising rates
/// (doubling from `args.rate`, then bisecting), where a round is sustained when every
/// expected delivery arrived, the publisher kept to 95% of the rate, and p99 latency
/// stayed within `--max-p99-ms`.
async fn find_max(
    args: &FanoutArgs,
    channels: usize,
    per_channel: &[u64],
    recorder: &Recorder,
) -> anyhow::Result<serde_json::Value> {
    let mut rate = args.rate.max(1.0);
    let mut best: Option<(f64, Round)> = None;
    let mut failed: Option<f64> = None;
    let mut rounds = Vec::new();
    for _ in 0..args.max_rounds {
        let result = round(args, rate, channels, per_channel, recorder, None).await?;
        let published: u64 = result.published.iter().sum();
        let sustained = result.delivered >= result.expected
            && published as f64 >= 0.95 * rate * args.seconds
            && result.p99_ms() <= args.max_p99_ms;
        eprintln!(
            "fanout --max: {rate:.0} events/s: {} of {} delivered, {published} published, p99 {:.2} ms: {}",
            result.delivered,
            result.expected,
            result.p99_ms(),
            if sustained { "sustained" } else { "not sustained" }
        );
        rounds.push(json!({
            "rate": rate, "sustained": sustained, "published": published,
            "expected": result.expected, "delivered": result.delivered, "p99_ms": result.p99_ms(),
            "server_cpu_seconds": result.server_cpu,
        }));
        if sustained {
            best = Some((rate, result));
        } else {
            failed = Some(rate);
        }
        let low = best.as_ref().map_or(0.0, |(r, _)| *r);
        rate = match failed {
            None => rate * 2.0,
            Some(high) if high - low <= high * 0.05 => break,
            Some(high) => (low + high) / 2.0,
        };
        // Let queues settle between rounds.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rate, result) = best.map_or((0.0, None), |(rate, result)| (rate, Some(result)));
    let subscribers: u64 = per_channel.iter().sum();
    let deliveries = result.as_ref().map_or(0.0, |r| r.delivered as f64 / args.seconds);
    eprintln!(
        "fanout --max: {subscribers} subscribers / {channels} channels: sustained {rate:.0} events/s = {deliveries:.0} deliveries/s"
    );
    Ok(json!({
        "scenario": "fanout-max",
        "subscribers": subscribers,
        "channels": channels,
        "via": format!("{:?}", args.via).to_lowercase(),
        "batch": args.batch,
        "max_p99_ms": args.max_p99_ms,
        "max_sustained_rate": rate,
        "deliveries_per_second": deliveries,
        "p99_ms": result.as_ref().map(Round::p99_ms),
        "server_cpu_us_per_delivery": result.as_ref().and_then(|r| r.server_cpu.map(|cpu| cpu * 1e6 / r.delivered.max(1) as f64)),
        "rounds": rounds,
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
async fn read_deliveries(conn: PusherConn, recorder: Arc<Recorder>, shard: usize) {
    let mut conn = conn.buffered();
    while let Ok(frame) = conn.next_frame().await {
        if frame.opcode != OP_TEXT {
            continue;
        }
        let Some(sent) = stamp(&frame.payload) else { continue };
        let start = recorder.start_micros.load(Ordering::Relaxed);
        if sent < start {
            // Published in an earlier round.
            continue;
        }
        let latency = now_micros().saturating_sub(sent).clamp(1, 60_000_000);
        recorder.delivered.fetch_add(1, Ordering::Relaxed);
        let since_start = (sent - start) / 1000;
        let mut shard = recorder.latencies[shard].lock();
        let _ = shard.histogram.record(latency);
        shard.samples.push((since_start as u32, latency as u32));
    }
}

/// Latency percentiles over the run, in 50 buckets by send time.
fn latency_plot(title: &str, mut samples: Vec<(u32, u32)>, seconds: f64) -> String {
    samples.sort_unstable();
    let bucket_ms = ((seconds * 1000.0 / 50.0) as u32).max(1);
    let mut series: [Series; 3] =
        ["p50", "p99", "max"].map(|name| Series { name: name.into(), points: Vec::new() });
    for bucket in samples.chunk_by(|a, b| a.0 / bucket_ms == b.0 / bucket_ms) {
        let mut latencies: Vec<u32> = bucket.iter().map(|s| s.1).collect();
        latencies.sort_unstable();
        let at = |q: f64| f64::from(latencies[((latencies.len() - 1) as f64 * q) as usize]) / 1000.0;
        let x = f64::from(bucket[0].0 / bucket_ms * bucket_ms) / 1000.0;
        for (series, q) in series.iter_mut().zip([0.5, 0.99, 1.0]) {
            series.points.push((x, at(q)));
        }
    }
    plot::line_chart(title, "seconds (by send time)", "publish → deliver latency, ms", &series)
}

/// The microsecond timestamp after `ts:` in a message.
fn stamp(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(3).position(|w| w == b"ts:")? + 3;
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&payload[at..at + digits]).ok()?.parse().ok()
}

/// Publishes at `rate` events a second for `args.seconds`, `args.batch` events
/// per call, round-robin over the channels; returns how many events each channel got.
async fn publish_at_rate(args: &FanoutArgs, channels: usize, rate: f64) -> anyhow::Result<Vec<u64>> {
    let publisher = Publisher::connect(args).await?;
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let in_flight = Arc::new(Semaphore::new(256));
    let batch = args.batch.max(1) as u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut sent = 0u64;
    let mut calls = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while Instant::now() < end {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent + batch <= due {
            let channel_index = (calls % channels as u64) as usize;
            calls += 1;
            sent += batch;
            let permit = in_flight.clone().acquire_owned().await?;
            let call = publisher.call(args, channel_index);
            let published = published.clone();
            tokio::spawn(async move {
                if call.await {
                    published[channel_index].fetch_add(batch, Ordering::Relaxed);
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
