//! `publish`: publishes through Herald's gRPC API as fast as the server takes it.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::ValueEnum;
use herald_api::client::{self, H2Channel};
use herald_proto::v1::{
    Event, PublishRequest, PublishStreamRequest, event::Payload, publish_result,
    publisher_client::PublisherClient,
};
use serde_json::json;
use tokio::sync::mpsc;
use tonic::{Request, metadata::MetadataValue};

#[derive(clap::Args, Clone)]
pub struct PublishArgs {
    /// Herald's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: SocketAddr,
    /// API token of the app.
    #[arg(long, default_value = "herald-demo-api-token")]
    token: String,
    #[arg(long, default_value = "demo")]
    app_id: String,
    /// Channel to publish to (subscribers are optional).
    #[arg(long, default_value = "loadtest")]
    channel: String,
    #[arg(long, value_enum, default_value_t = Mode::Unary)]
    mode: Mode,
    /// Unary: calls in flight at once. Stream: concurrent streams.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Bytes of event data.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How long to publish.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

impl PublishArgs {
    /// `PublishStream` over 4 streams of one connection, 100-byte events to `channel`,
    /// for `seconds` (another scenario's publisher).
    pub fn stream(target: SocketAddr, token: &str, app_id: &str, channel: &str, seconds: f64) -> Self {
        Self {
            target,
            token: token.into(),
            app_id: app_id.into(),
            channel: channel.into(),
            mode: Mode::Stream,
            concurrency: 4,
            connections: 1,
            payload: 100,
            seconds,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    Unary,
    Stream,
}

/// What one worker counted.
#[derive(Default)]
struct Tally {
    published: u64,
    errors: u64,
    /// Microseconds per unary call (unary mode only).
    latencies: Vec<u32>,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<serde_json::Value> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            client::connect(args.target).await.with_context(|| format!("connecting to {}", args.target))?,
        );
    }
    let token: Arc<MetadataValue<_>> = Arc::new(format!("Bearer {}", args.token).parse()?);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let client = PublisherClient::with_origin(
            channels[i % channels.len()].clone(),
            format!("http://{}", args.target).parse()?,
        );
        let (args, token) = (args.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            match args.mode {
                Mode::Unary => unary_worker(client, &args, &token, deadline).await,
                Mode::Stream => stream_worker(client, &args, &token, deadline).await,
            }
        }));
    }
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await?;
        total.published += tally.published;
        total.errors += tally.errors;
        total.latencies.extend(tally.latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = total.published as f64 / elapsed;
    total.latencies.sort_unstable();
    let percentile = |p: f64| -> Option<f64> {
        let n = total.latencies.len();
        (n > 0).then(|| f64::from(total.latencies[((n - 1) as f64 * p) as usize]) / 1000.0)
    };
    eprintln!(
        "publish ({:?}, {} in flight over {} connection(s), {} B): {} published, {} errors in {:.2} s = {:.0} publishes/s{}",
        args.mode,
        args.concurrency,
        args.connections,
        args.payload,
        total.published,
        total.errors,
        elapsed,
        rate,
        match (percentile(0.5), percentile(0.99)) {
            (Some(p50), Some(p99)) => format!(", latency p50 {p50:.3} ms p99 {p99:.3} ms"),
            _ => String::new(),
        }
    );
    Ok(json!({
        "scenario": "publish",
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "concurrency": args.concurrency,
        "connections": args.connections,
        "payload_bytes": args.payload,
        "seconds": elapsed,
        "published": total.published,
        "errors": total.errors,
        "publishes_per_second": rate,
        "latency_ms_p50": percentile(0.5),
        "latency_ms_p99": percentile(0.99),
        "latency_ms_max": percentile(1.0),
    }))
}

fn event(args: &PublishArgs, data: &str) -> Event {
    Event {
        name: "loadtest".into(),
        payload: Some(Payload::Data(data.to_string())),
        channels: vec![args.channel.clone()],
        ..Default::default()
    }
}

pub fn authed<T>(message: T, token: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", token.clone());
    request
}

async fn unary_worker(
    mut client: PublisherClient<H2Channel>,
    args: &PublishArgs,
    token: &MetadataValue<tonic::metadata::Ascii>,
    deadline: Instant,
) -> Tally {
    let data = "x".repeat(args.payload);
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let request = PublishRequest { app_id: args.app_id.clone(), event: Some(event(args, &data)) };
        let sent = Instant::now();
        match client.publish(authed(request, token)).await {
            Ok(_) => {
                tally.published += 1;
                tally.latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

async fn stream_worker(
    mut client: PublisherClient<H2Channel>,
    args: &PublishArgs,
    token: &MetadataValue<tonic::metadata::Ascii>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let (sender, receiver) = mpsc::channel(1024);
    let producer = {
        let (args, data) = (args.clone(), "x".repeat(args.payload));
        tokio::spawn(async move {
            let mut sequence = 0;
            while Instant::now() < deadline {
                sequence += 1;
                let request = PublishStreamRequest {
                    sequence,
                    app_id: args.app_id.clone(),
                    event: Some(event(&args, &data)),
                };
                if sender.send(request).await.is_err() {
                    break;
                }
            }
        })
    };
    let answers =
        client.publish_stream(authed(tokio_stream::wrappers::ReceiverStream::new(receiver), token)).await;
    let mut answers = match answers {
        Ok(answers) => answers.into_inner(),
        Err(_) => {
            tally.errors += 1;
            return tally;
        }
    };
    while let Ok(Some(answer)) = answers.message().await {
        match answer.result.and_then(|r| r.result) {
            Some(publish_result::Result::Published(_)) => tally.published += 1,
            _ => tally.errors += 1,
        }
    }
    producer.abort();
    tally
}
