//! `webhooks`: the dispatcher's delivery rate and latency. The dispatcher runs on one
//! thread (a current-thread runtime: one core) over the in-memory event log, and
//! delivers Standard Webhooks (signed, HTTP/1.1 keep-alive) to a sink on another
//! thread that answers 204 and times each request from its event's append.
//!
//! Without `--rate` events are appended as fast as the dispatcher takes them (the
//! producer keeps at most `--window` undelivered): the result is the most it
//! sustains. With `--rate` they are appended at that rate, and the latency is what a
//! receiver sees at that load.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use herald_backbone::{Append, EventLog, MemoryEventLog};
use herald_core::{App, AppLimits, Apps};
use herald_dispatcher::{Dispatcher, DispatcherConfig};
use herald_proto::v1::{ChannelEvent, ChannelEventType};
use herald_webhooks::{
    endpoint::{Endpoint, Format},
    limiter::LocalRateLimiter,
    ssrf::AddressPolicy,
    store::{MemoryWebhookStore, WebhookStore},
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Clone)]
pub struct WebhooksArgs {
    /// Events to deliver.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events appended per second; 0: as fast as the dispatcher delivers.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// With no rate: most events appended and not yet delivered.
    #[arg(long, default_value_t = 20_000)]
    window: u64,
    /// Endpoints (one app each) the events are spread over.
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    /// Requests in flight per endpoint (keep-alive connections to the sink).
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Bytes of event data.
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the sink saw.
struct Sink {
    addr: SocketAddr,
    received: AtomicU64,
    /// Append time of event n (ms since the epoch); 0 until appended.
    appended: Vec<AtomicU64>,
    latency: Mutex<Histogram<u64>>,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

fn now_ms_f() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.events > 0 && args.endpoints > 0, "--events and --endpoints must be at least 1");
    // The sink: its own thread and runtime.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let sink = Arc::new(Sink {
        addr: listener.local_addr()?,
        received: AtomicU64::new(0),
        appended: (0..args.events).map(|_| AtomicU64::new(0)).collect(),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")?),
        first: Mutex::new(None),
        last: Mutex::new(None),
    });
    let serving = sink.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(runtime) = runtime {
            runtime.block_on(serve_sink(listener, serving));
        }
    });

    // The dispatcher: one thread.
    let log = MemoryEventLog::new();
    let store = MemoryWebhookStore::default();
    let mut apps = Vec::new();
    for i in 0..args.endpoints {
        let app_id = format!("app-{i}");
        let app = App::with_credentials(&app_id, &format!("{app_id}-key"), &format!("{app_id}-secret"));
        apps.push(App { limits: AppLimits { webhooks_per_second: 0, ..AppLimits::default() }, ..app });
        let mut endpoint = Endpoint::new(
            format!("ep_{i}"),
            &app_id,
            &format!("http://{}/hook", sink.addr),
            Format::StandardWebhooks,
            SECRET,
        );
        endpoint.max_concurrency = args.concurrency;
        store.put_endpoint(&endpoint).await?;
    }
    let mut config =
        DispatcherConfig { endpoint_queue: 10_000, max_in_flight: 50_000, ..DispatcherConfig::default() };
    config.client.policy = AddressPolicy::new(&["127.0.0.1".into()]).map_err(anyhow::Error::msg)?;
    config.client.max_idle_per_host = args.concurrency as usize * args.endpoints;
    herald_dispatcher::dispatcher::ensure_topics(&log, &config).await?;
    let dispatcher = Dispatcher::new(
        Apps::new(apps).map_err(|e| anyhow::anyhow!("{e:?}"))?,
        Arc::new(log.clone()),
        Arc::new(store),
        Arc::new(LocalRateLimiter::default()),
        config,
    );
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let cpu = Arc::new(AtomicU64::new(0));
    let dispatcher_thread = {
        let cpu = cpu.clone();
        std::thread::Builder::new().name("dispatcher".into()).spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(dispatcher.run(stopping, Duration::from_secs(1)))?;
            cpu.store(thread_cpu_micros(), Ordering::Relaxed);
            Ok(())
        })?
    };

    // The producer: this runtime.
    let data = "x".repeat(args.payload);
    let started = Instant::now();
    let mut n = 0u64;
    while n < args.events {
        let batch = 500.min(args.events - n);
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        } else {
            while n - sink.received.load(Ordering::Relaxed) > args.window {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let batch =
            if args.rate > 0.0 { batch.min(((args.rate / 100.0).ceil() as u64).max(1)) } else { batch };
        let mut records = Vec::with_capacity(batch as usize);
        let now = now_ms_f();
        for i in n..n + batch {
            let app_id = format!("app-{}", i as usize % args.endpoints);
            let channel = format!("channel-{}", i % 64);
            let event = ChannelEvent {
                id: format!("evt_{i:026}"),
                app_id: app_id.clone(),
                channel: channel.clone(),
                time_ms: now as i64,
                r#type: ChannelEventType::Publication as i32,
                event: "loadtest".into(),
                data: data.clone(),
                ..ChannelEvent::default()
            };
            sink.appended[i as usize].store(now.to_bits(), Ordering::Relaxed);
            records.push(Append {
                key: Bytes::from(format!("{app_id}/{channel}")),
                value: event.encode_to_vec().into(),
            });
        }
        log.append("herald.events", records).await?;
        n += batch;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.received.load(Ordering::Relaxed) < args.events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let append_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = dispatcher_thread.join();

    let received = sink.received.load(Ordering::Relaxed);
    let span = match (*sink.first.lock(), *sink.last.lock()) {
        (Some(first), Some(last)) => (last - first).as_secs_f64().max(1e-6),
        _ => 1e-6,
    };
    let latency = sink.latency.lock();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let rate = received as f64 / span;
    let cpu_seconds = cpu.load(Ordering::Relaxed) as f64 / 1e6;
    eprintln!(
        "webhooks: {received}/{} delivered in {span:.2} s: {rate:.0}/s; append→2xx p50 {:.2} ms p99 {:.2} ms max {:.2} ms; dispatcher CPU {cpu_seconds:.2} s ({:.1} µs per delivery)",
        args.events,
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0,
        cpu_seconds * 1e6 / received.max(1) as f64,
    );
    Ok(json!({
        "scenario": "webhooks",
        "events": args.events,
        "delivered": received,
        "rate_target": args.rate,
        "endpoints": args.endpoints,
        "concurrency": args.concurrency,
        "seconds": span,
        "append_seconds": append_seconds,
        "deliveries_per_second": rate,
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": latency.max() as f64 / 1000.0 },
        "dispatcher_cpu_seconds": cpu_seconds,
        "dispatcher_cpu_us_per_delivery": cpu_seconds * 1e6 / received.max(1) as f64,
    }))
}

/// CPU time of the calling thread, in microseconds (Linux: /proc/thread-self/stat).
fn thread_cpu_micros() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else { return 0 };
    // Fields after the command (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit(')').next() else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ')'.
    let ticks: u64 = fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    ticks * 10_000
}

async fn serve_sink(listener: std::net::TcpListener, sink: Arc<Sink>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let sink = sink.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let sink = sink.clone();
                async move {
                    let id =
                        request.headers().get("webhook-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let _ = request.into_body().collect().await;
                    let now = now_ms_f();
                    if let Some(n) = id.as_deref().and_then(event_number)
                        && let Some(appended) = sink.appended.get(n as usize)
                    {
                        let appended = f64::from_bits(appended.load(Ordering::Relaxed));
                        let micros = ((now - appended) * 1000.0).max(1.0) as u64;
                        let _ = sink.latency.lock().record(micros);
                    }
                    let at = Instant::now();
                    sink.first.lock().get_or_insert(at);
                    *sink.last.lock() = Some(at);
                    sink.received.fetch_add(1, Ordering::Relaxed);
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `msg_<26 digits>_<endpoint>` → the event number.
fn event_number(webhook_id: &str) -> Option<u64> {
    webhook_id.strip_prefix("msg_")?.split('_').next()?.parse().ok()
}
