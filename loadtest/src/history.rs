//! `history`: what channel history costs, on a cluster this run starts (a Redis and
//! `--edges` `herald edge` processes sharing one port).
//!
//! 1. **Publish cost**: gRPC `PublishStream` for `--publish-seconds` to a channel
//!    without history, then to one with, alternating, `--rounds` times each: the
//!    publications, the edges' and Redis's CPU, and the Redis commands per
//!    publication.
//! 2. **Reconnect storm**: `--connections` clients over `--channels` history channels
//!    take their position from the subscription ack and disconnect; `--missed`
//!    publications are made to every channel; then every client reconnects at once
//!    (`--concurrency` handshakes in flight) and subscribes with `since`. Each must get
//!    exactly its missed publications, in order, and `"recovered":true`. Reported: the
//!    time until the last client recovered, per-client percentiles, and the Redis
//!    commands and CPU (Redis and edges) of the storm.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use herald_proto::v1::{Event, PublishBatchRequest, event::Payload, publisher_client::PublisherClient};
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    publish::{self, authed},
    pusher::{PusherConn, find, source_address},
    scale::cluster::{self, Edge, EdgeConfig},
    server_stats,
};

const APP_ID: &str = "history";
const KEY: &str = "history-key";
const SECRET: &str = "history-secret";
const TOKEN: &str = "history-run-api-token";

#[derive(clap::Args, Clone)]
pub struct HistoryArgs {
    /// Clients of the reconnect storm.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// History channels they are spread over.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Publications each channel gets while the clients are away.
    #[arg(long, default_value_t = 100)]
    missed: usize,
    /// Edges (they share one port; the kernel spreads connections over them).
    #[arg(long, default_value_t = 3)]
    edges: usize,
    /// Handshakes in flight at once during the storm.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Seconds of each publish-cost run (0: skip the publish cost).
    #[arg(long, default_value_t = 5.0)]
    publish_seconds: f64,
    /// Publish-cost runs of each kind, alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The `herald` binary.
    #[arg(long, default_value = "target/release/herald")]
    herald: String,
    #[arg(long, default_value_t = 16101)]
    port: u16,
    #[arg(long, default_value_t = 16479)]
    redis_port: u16,
}

/// CPU seconds of the edges and of Redis, and Redis's command counts, at one moment.
struct Meter {
    edges_cpu: f64,
    redis_cpu: f64,
    info: Vec<(String, String)>,
}

impl Meter {
    async fn read(edges: &[Edge], redis_port: u16) -> anyhow::Result<Self> {
        let edges_cpu =
            edges.iter().filter_map(|e| server_stats::sample(e.process.pid()).ok()).map(|s| s.cpu).sum();
        let info = cluster::redis_info(redis_port).await?;
        let redis_cpu =
            cluster::info_number(&info, "used_cpu_sys") + cluster::info_number(&info, "used_cpu_user");
        Ok(Self { edges_cpu, redis_cpu, info })
    }

    /// What happened since `before`, per `per` (publications, recoveries).
    fn since(&self, before: &Meter, per: f64) -> Value {
        let commands = |info: &[(String, String)]| cluster::info_number(info, "total_commands_processed");
        let by_command: serde_json::Map<String, Value> = cluster::calls_by_command(&self.info)
            .into_iter()
            .filter_map(|(name, calls)| {
                let before = cluster::command_calls(&before.info, &name);
                (calls > before).then(|| (name, json!(round((calls - before) as f64 / per))))
            })
            .collect();
        json!({
            "edges_cpu_us": round((self.edges_cpu - before.edges_cpu) * 1e6 / per),
            "redis_cpu_us": round((self.redis_cpu - before.redis_cpu) * 1e6 / per),
            "redis_commands": round((commands(&self.info) - commands(&before.info)) / per),
            "redis_scripts": round((cluster::script_calls(&self.info) - cluster::script_calls(&before.info)) as f64 / per),
            "redis_by_command": by_command,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<Value> {
    let retention = args.missed.max(100);
    let apps = format!(
        r#"[{{id = "{APP_ID}", key = "{KEY}", secret = "{SECRET}", api_tokens = ["{TOKEN}"], limits = {{ max_connections = 0 }}, history = [{{channels = "history-*", size = {retention}, ttl = "10m"}}]}}]"#
    );
    let redis = cluster::redis(args.redis_port).await?;
    let mut config = EdgeConfig {
        binary: args.herald.clone(),
        port: args.port,
        redis_port: args.redis_port,
        apps,
        grace: Duration::from_secs(2),
        extra_env: vec![],
    };
    let mut edges = Vec::with_capacity(args.edges);
    for id in 0..args.edges.max(1) {
        let edge = Edge::start(&config, id).await?;
        config.port = edge.ws.port();
        edges.push(edge);
    }
    let target = SocketAddr::from(([127, 0, 0, 1], config.port));
    eprintln!("history: redis and {} edges up on {target}", edges.len());

    let publish_cost =
        if args.publish_seconds > 0.0 { publish_cost(&args, &edges).await? } else { json!(null) };
    let storm = storm(&args, &edges, target).await?;
    drop(redis);
    Ok(json!({ "scenario": "history", "edges": edges.len(), "publish_cost": publish_cost, "storm": storm }))
}

/// Stream publishing to a plain channel and to a history channel, alternating.
async fn publish_cost(args: &HistoryArgs, edges: &[Edge]) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for round in 0..args.rounds.max(1) {
        for channel in ["plain-bench", "history-bench"] {
            let before = Meter::read(edges, args.redis_port).await?;
            let report = publish::run(publish::PublishArgs::stream(
                edges[round % edges.len()].grpc,
                TOKEN,
                APP_ID,
                channel,
                args.publish_seconds,
            ))
            .await?;
            let after = Meter::read(edges, args.redis_port).await?;
            let published = report["published"].as_f64().unwrap_or(0.0);
            if published == 0.0 || report["errors"].as_u64() != Some(0) {
                bail!("publish to {channel} failed: {report}");
            }
            let mut cost = after.since(&before, published);
            cost["history"] = json!(channel.starts_with("history"));
            cost["published"] = json!(published);
            cost["publishes_per_second"] = report["publishes_per_second"].clone();
            eprintln!("history: publish cost {cost}");
            runs.push(cost);
        }
    }
    Ok(Value::Array(runs))
}

/// Where one client stands in its channel's history.
struct Position {
    channel: usize,
    offset: u64,
    epoch: String,
}

/// The reconnect storm.
async fn storm(args: &HistoryArgs, edges: &[Edge], target: SocketAddr) -> anyhow::Result<Value> {
    let n = args.connections;
    // 1. Every client subscribes, keeps its position, and goes away.
    let channels = args.channels.max(1);
    let positions = for_each_client(n, 64, move |i| async move {
        let mut conn = PusherConn::connect(target, Some(source_address(i)), KEY).await?;
        let (position, _) = subscribe(&mut conn, i % channels, None).await?;
        Ok(position)
    })
    .await;
    bail_on_errors("subscribing", &positions)?;
    let positions: Vec<Position> = positions.into_iter().filter_map(Result::ok).collect();
    eprintln!(
        "history: {n} clients subscribed and gone; publishing {} to each of {} channels",
        args.missed, args.channels
    );

    // 2. What they miss: `missed` publications to every channel, 10 per batch.
    let mut client = PublisherClient::with_origin(
        herald_api::client::connect(edges[0].grpc).await?,
        format!("http://{}", edges[0].grpc).parse()?,
    );
    let token = format!("Bearer {TOKEN}").parse()?;
    for round in 0..args.missed {
        for chunk in (0..args.channels).collect::<Vec<_>>().chunks(10) {
            let events = chunk
                .iter()
                .map(|c| Event {
                    name: "missed".into(),
                    payload: Some(Payload::Data(format!("{round}"))),
                    channels: vec![format!("history-s{c}")],
                    ..Default::default()
                })
                .collect();
            let answer = client
                .publish_batch(authed(PublishBatchRequest { app_id: APP_ID.into(), events }, &token))
                .await?;
            if answer
                .get_ref()
                .results
                .iter()
                .any(|r| !matches!(r.result, Some(herald_proto::v1::publish_result::Result::Published(_))))
            {
                bail!("a missed publication failed: {:?}", answer.get_ref().results);
            }
        }
    }

    // 3. Everyone comes back at once and recovers.
    let before = Meter::read(edges, args.redis_port).await?;
    let started = Instant::now();
    let missed = args.missed as u64;
    let positions = Arc::new(positions);
    let outcomes = for_each_client(n, args.concurrency, {
        let positions = positions.clone();
        move |i| {
            let positions = positions.clone();
            async move {
                let at = &positions[i];
                let mut conn = PusherConn::connect(target, Some(source_address(i)), KEY).await?;
                let (ack, offsets) = subscribe(&mut conn, at.channel, Some(at)).await?;
                let expected: Vec<u64> = (at.offset + 1..=at.offset + missed).collect();
                if offsets != expected {
                    bail!(
                        "client {i}: got offsets {:?}..{:?} ({}), expected {}..={}",
                        offsets.first(),
                        offsets.last(),
                        offsets.len(),
                        at.offset + 1,
                        at.offset + missed
                    );
                }
                if ack.epoch != at.epoch {
                    bail!("client {i}: epoch changed");
                }
                Ok(started.elapsed())
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let after = Meter::read(edges, args.redis_port).await?;
    bail_on_errors("recovering", &outcomes)?;
    let mut times: Vec<Duration> = outcomes.into_iter().filter_map(Result::ok).collect();
    times.sort_unstable();
    let percentile =
        |p: f64| times.get(((times.len() - 1) as f64 * p) as usize).map_or(0.0, |d| d.as_secs_f64());
    let cost = after.since(&before, n as f64);
    let report = json!({
        "connections": n,
        "channels": args.channels,
        "missed_each": args.missed,
        "recovered": times.len(),
        "seconds_to_all": round(elapsed.as_secs_f64()),
        "recoveries_per_second": round(n as f64 / elapsed.as_secs_f64()),
        "replayed_per_second": round((n as u64 * missed) as f64 / elapsed.as_secs_f64()),
        "client_p50_s": round(percentile(0.5)),
        "client_p99_s": round(percentile(0.99)),
        "per_recovery": cost,
    });
    eprintln!("history: storm {report}");
    Ok(report)
}

/// Runs `work(i)` for every client `0..n`, at most `concurrency` at once.
pub(crate) async fn for_each_client<T, F, Fut>(
    n: usize,
    concurrency: usize,
    work: F,
) -> Vec<anyhow::Result<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await;
        let future = work(i);
        tasks.spawn(async move {
            let _permit = permit;
            (i, future.await)
        });
    }
    let mut results: Vec<Option<anyhow::Result<T>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, result)) => results[i] = Some(result),
            Err(e) => return vec![Err(anyhow::anyhow!("a client task failed: {e}"))],
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("no result")))).collect()
}

pub(crate) fn bail_on_errors<T>(what: &str, results: &[anyhow::Result<T>]) -> anyhow::Result<()> {
    let failed: Vec<&anyhow::Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        bail!("{} of {} clients failed {what}; the first: {first:#}", failed.len(), results.len());
    }
    Ok(())
}

/// Subscribes to `history-s{channel}` (with `since` when given) and reads until the
/// ack: its position, and the offsets replayed before it.
async fn subscribe(
    conn: &mut PusherConn,
    channel: usize,
    since: Option<&Position>,
) -> anyhow::Result<(Position, Vec<u64>)> {
    let name = format!("history-s{channel}");
    let asked = since.is_some();
    let since = since.map(|at| json!({ "offset": at.offset, "epoch": at.epoch }));
    let mut data = json!({ "channel": name });
    if let Some(since) = since {
        data["since"] = since;
    }
    let message = json!({ "event": "pusher:subscribe", "data": data }).to_string();
    conn.send_text(message.as_bytes()).await?;
    let mut offsets = Vec::new();
    loop {
        let text = conn.next_text().await?;
        if find(&text, b"pusher_internal:subscription_succeeded") {
            let frame: Value = serde_json::from_slice(&text)?;
            let data: Value = serde_json::from_str(frame["data"].as_str().unwrap_or("{}"))?;
            if asked && data["recovered"] != json!(true) {
                bail!("not recovered: {data}");
            }
            let position = Position {
                channel,
                offset: data["position"]["offset"].as_u64().context("no position in the ack")?,
                epoch: data["position"]["epoch"].as_str().unwrap_or_default().to_owned(),
            };
            return Ok((position, offsets));
        }
        if find(&text, b"pusher:subscription_error") || find(&text, b"pusher:error") {
            bail!("subscription refused: {}", String::from_utf8_lossy(&text));
        }
        offsets.push(offset_of(&text).context("a replayed message without an offset")?);
    }
}

/// The `"offset":N` of a message, read without parsing the whole of it.
fn offset_of(text: &[u8]) -> Option<u64> {
    let key = b"\"offset\":";
    let at = text.windows(key.len()).rposition(|w| w == key)? + key.len();
    let digits: Vec<u8> = text[at..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}
