//! `scale`: a whole cluster on this machine, at the scale where the real problems
//! show: a Redis, `--edges` `herald edge` processes sharing one port (`SO_REUSEPORT`:
//! the kernel spreads connections over the live ones, as a load balancer would, and a
//! restarted edge takes the port again), and worker processes holding `--connections`
//! subscribed connections between them (a process may hold at most 20,000 files).
//!
//! Phases, each measured and bounded in time:
//! 1. **connect**: every connection subscribed to one of `--channels` channels, to the
//!    channel all share, (one in `--presence-every`) to a presence channel, and (the
//!    first `--presence-crowd`) to one presence channel they all are members of;
//! 2. **broadcast**: one publish to the shared channel: time to the last delivery,
//!    latency percentiles across every connection, none lost;
//! 3. **steady**: `--steady-rate` deliveries per second over the channels for
//!    `--steady-seconds`: latency percentiles, none lost;
//! 4. **kill**: `kill -9` of one edge: its clients reconnect to the others (time until
//!    all are back and subscribed, Redis commands per second meanwhile), then it is
//!    started again;
//! 5. **rolling**: every edge in turn gets SIGTERM (its spread drain), exits and is
//!    started again: the highest reconnect rate, failed reconnects.
//!
//! Throughout, a sample per second: subscribed connections, edge and worker memory,
//! the kernel's socket memory, Redis memory, clients and commands per second. The
//! report is one JSON line (stdout); `--out DIR` also gets the samples and SVG plots.

pub(crate) mod cluster;
pub mod worker;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use herald_proto::v1::{
    Event, GetChannelRequest, PublishBatchRequest, event::Payload, publish_result,
    publisher_client::PublisherClient,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{
    plot::{self, Series},
    publish::authed,
};
use cluster::{Edge, EdgeConfig};

/// Phases a worker counts deliveries for (the `p:N;` in an event's data).
pub const PHASES: usize = 8;
const BROADCAST: usize = 1;
const STEADY: usize = 2;

const APP_ID: &str = "scale";
/// The presence channel of `--presence-crowd`.
const CROWD: &str = "presence-crowd";
const KEY: &str = "scale-key";
const SECRET: &str = "scale-secret";
const TOKEN: &str = "scale-run-api-token";

/// Which channels connection `i` is on; the workers and the coordinator agree on it.
#[derive(clap::Args, Clone, Debug)]
pub struct Layout {
    /// Channels the connections are spread over: connection `i` is on `c{i % N}`.
    #[arg(long, default_value_t = 10_000)]
    pub channels: usize,
    /// The channel every connection is also on.
    #[arg(long, default_value = "all")]
    pub shared: String,
    /// One connection in this many also joins a presence channel (0: none).
    #[arg(long, default_value_t = 100)]
    pub presence_every: usize,
    /// Presence channels those are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub presence_channels: usize,
    /// The first this many connections are also members of `presence-crowd` (each a
    /// user of its own: every join is announced to all the members before it).
    #[arg(long, default_value_t = 0)]
    pub presence_crowd: usize,
}

impl Layout {
    pub fn channels_of(&self, i: usize) -> Vec<String> {
        let mut channels = vec![format!("c{}", i % self.channels.max(1)), self.shared.clone()];
        if self.presence_every > 0 && i.is_multiple_of(self.presence_every) {
            channels.push(format!("presence-p{}", (i / self.presence_every) % self.presence_channels.max(1)));
        }
        if i < self.presence_crowd {
            channels.push(CROWD.to_owned());
        }
        channels
    }

    /// How many of the first `total` connections are on `c{channel}`.
    fn subscribers(&self, total: usize, channel: usize) -> u64 {
        let n = self.channels.max(1);
        (total / n + usize::from(channel < total % n)) as u64
    }
}

#[derive(clap::Args, Clone)]
pub struct ScaleArgs {
    /// Subscribed connections to hold.
    #[arg(long, default_value_t = 1_000_000)]
    pub connections: usize,
    /// Edge processes (0: one per 18,000 connections, under the 20,000 files a
    /// process may hold here, plus one: the others must hold a dead or restarting
    /// edge's clients too).
    #[arg(long, default_value_t = 0)]
    pub edges: usize,
    /// Connections per worker process.
    #[arg(long, default_value_t = 16_000)]
    pub per_worker: usize,
    #[command(flatten)]
    pub layout: Layout,
    /// The `herald` binary.
    #[arg(long, default_value = "target/release/herald")]
    pub herald: String,
    /// The port all edges share (0: the kernel picks one for the first edge, and the
    /// others join it).
    #[arg(long, default_value_t = 16001)]
    pub port: u16,
    /// The port of the Redis this run starts.
    #[arg(long, default_value_t = 16379)]
    pub redis_port: u16,
    /// Use the Redis already listening on this port of 127.0.0.1 instead of starting one
    /// (it should be empty).
    #[arg(long)]
    pub redis: Option<u16>,
    /// Handshakes in progress at once, per worker.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Longest random pause before a dropped client reconnects, ms.
    #[arg(long, default_value_t = 1000)]
    pub reconnect_jitter_ms: u64,
    /// Deliveries per second in the steady phase (0: skip it).
    #[arg(long, default_value_t = 100_000.0)]
    pub steady_rate: f64,
    #[arg(long, default_value_t = 20.0)]
    pub steady_seconds: f64,
    /// Skip the kill -9 phase.
    #[arg(long)]
    pub no_kill: bool,
    /// Edges restarted in the rolling phase (default: all; 0 skips it).
    #[arg(long)]
    pub rolling: Option<usize>,
    /// The edges' shutdown grace (the spread drain lasts most of it).
    #[arg(long, default_value_t = 5.0)]
    pub grace_seconds: f64,
    /// The longest any one phase may take before the run fails.
    #[arg(long, default_value_t = 600.0)]
    pub phase_timeout: f64,
    /// Write the samples (JSON) and plots (SVG) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// More `NAME=VALUE` environment for every edge.
    #[arg(long = "edge-env", value_parser = parse_env)]
    pub edge_env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A worker process and its command line.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn ask(&mut self, command: &str) -> anyhow::Result<Value> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        let line = self.stdout.next_line().await?.context("a worker exited")?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// The workers' counts, summed.
#[derive(Default, Debug, Clone)]
struct Totals {
    subscribed: u64,
    reconnects: u64,
    drops: u64,
    failures: u64,
    deliveries: [u64; PHASES],
    rss: u64,
    first_error: Option<String>,
    errors: std::collections::BTreeMap<String, u64>,
}

struct Workers(Vec<Worker>);

impl Workers {
    async fn start(args: &ScaleArgs, target: SocketAddr) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let count = args.connections.div_ceil(args.per_worker.max(1));
        let mut workers = Vec::with_capacity(count);
        for w in 0..count {
            let first = w * args.per_worker;
            let share = args.per_worker.min(args.connections - first);
            let mut child = Command::new(&exe)
                .arg("scale-worker")
                .args(["--target", &target.to_string(), "--key", KEY, "--secret", SECRET, "--app-id", APP_ID])
                .args(["--first", &first.to_string(), "--count", &share.to_string()])
                .args(["--channels", &args.layout.channels.to_string(), "--shared", &args.layout.shared])
                .args(["--presence-every", &args.layout.presence_every.to_string()])
                .args(["--presence-channels", &args.layout.presence_channels.to_string()])
                .args(["--presence-crowd", &args.layout.presence_crowd.to_string()])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--reconnect-jitter-ms", &args.reconnect_jitter_ms.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            workers.push(Worker { child, stdin, stdout });
        }
        Ok(Self(workers))
    }

    async fn totals(&mut self) -> anyhow::Result<Totals> {
        let mut totals = Totals::default();
        for worker in &mut self.0 {
            let report = worker.ask("stats").await?;
            let n = |k: &str| report[k].as_u64().unwrap_or(0);
            totals.subscribed += n("subscribed");
            totals.reconnects += n("reconnects");
            totals.drops += n("drops");
            totals.failures += n("failures");
            totals.rss += n("rss");
            for (i, d) in report["deliveries"].as_array().into_iter().flatten().enumerate().take(PHASES) {
                totals.deliveries[i] += d.as_u64().unwrap_or(0);
            }
            if totals.first_error.is_none() {
                totals.first_error = report["first_error"].as_str().map(str::to_owned);
            }
            for (kind, count) in report["errors"].as_object().into_iter().flatten() {
                *totals.errors.entry(kind.clone()).or_insert(0) += count.as_u64().unwrap_or(0);
            }
        }
        Ok(totals)
    }

    async fn reset_latency(&mut self) -> anyhow::Result<()> {
        for worker in &mut self.0 {
            worker.ask("reset").await?;
        }
        Ok(())
    }

    /// The latency histogram of every worker, merged (µs).
    async fn latency(&mut self) -> anyhow::Result<Histogram<u64>> {
        let mut merged = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for worker in &mut self.0 {
            let report = worker.ask("latency").await?;
            for pair in report["latency"].as_array().into_iter().flatten() {
                let (value, count) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
                merged.record_n(value.max(1), count)?;
            }
        }
        Ok(merged)
    }

    async fn stop(self) {
        for mut worker in self.0 {
            drop(worker.stdin);
            let _ = tokio::time::timeout(Duration::from_secs(10), worker.child.wait()).await;
        }
    }
}

/// One sample of the whole run.
#[derive(Clone, Debug, serde::Serialize)]
struct Sample {
    t: f64,
    phase: &'static str,
    subscribed: u64,
    reconnects: u64,
    failures: u64,
    edges_rss: u64,
    edges_anon: u64,
    workers_rss: u64,
    kernel_tcp_mem: u64,
    kernel_socket_slabs: u64,
    tcp_sockets: u64,
    redis_memory: u64,
    redis_clients: u64,
    redis_commands: u64,
    redis_scripts: u64,
    redis_publishes: u64,
    redis_commands_per_second: f64,
}

struct Run {
    args: ScaleArgs,
    started: Instant,
    redis_port: u16,
    edges: Vec<Option<Edge>>,
    edge_config: EdgeConfig,
    workers: Workers,
    samples: Arc<Mutex<Vec<Sample>>>,
    phase: &'static str,
    last_commands: Option<(Instant, u64)>,
}

impl Run {
    /// The edges' resident and anonymous memory, summed.
    fn edges_memory(&self) -> (u64, u64) {
        edges_memory(&self.edges)
    }

    async fn sample(&mut self) -> anyhow::Result<(Sample, Totals)> {
        let totals = self.workers.totals().await?;
        let info = cluster::redis_info(self.redis_port).await.unwrap_or_default();
        let commands = cluster::info_number(&info, "total_commands_processed") as u64;
        let now = Instant::now();
        let per_second = match self.last_commands {
            Some((at, before)) if now > at => {
                commands.saturating_sub(before) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last_commands = Some((now, commands));
        let (tcp_mem, tcp_sockets) = cluster::kernel_tcp();
        let sample = Sample {
            t: self.started.elapsed().as_secs_f64(),
            phase: self.phase,
            subscribed: totals.subscribed,
            reconnects: totals.reconnects,
            failures: totals.failures,
            edges_rss: self.edges_memory().0,
            edges_anon: self.edges_memory().1,
            workers_rss: totals.rss,
            kernel_tcp_mem: tcp_mem,
            kernel_socket_slabs: cluster::kernel_socket_slabs(),
            tcp_sockets,
            redis_memory: cluster::info_number(&info, "used_memory") as u64,
            redis_clients: cluster::info_number(&info, "connected_clients") as u64,
            redis_commands: commands,
            redis_scripts: cluster::script_calls(&info),
            redis_publishes: cluster::command_calls(&info, "publish"),
            redis_commands_per_second: per_second,
        };
        self.samples.lock().push(sample.clone());
        Ok((sample, totals))
    }

    /// Samples once a second until `done` says so, or fails after the phase timeout.
    async fn until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Sample, &Totals) -> bool,
    ) -> anyhow::Result<(Sample, Totals)> {
        let started = Instant::now();
        loop {
            let (sample, totals) = self.sample().await?;
            if done(&sample, &totals) {
                return Ok((sample, totals));
            }
            if started.elapsed().as_secs_f64() > self.args.phase_timeout {
                bail!(
                    "{what}: not done after {:.0} s (subscribed {} of {}, deliveries by phase {:?}, failures {}: {:?})",
                    self.args.phase_timeout,
                    totals.subscribed,
                    self.args.connections,
                    totals.deliveries,
                    totals.failures,
                    totals.errors
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn peak(&self, phase: &str, field: impl Fn(&Sample) -> f64) -> f64 {
        self.samples.lock().iter().filter(|s| s.phase == phase).map(&field).fold(0.0, f64::max)
    }
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<Value> {
    let n = args.connections;
    let edges_wanted = if args.edges == 0 { n.div_ceil(18_000) + 1 } else { args.edges };
    let apps = format!(
        r#"[{{id = "{APP_ID}", key = "{KEY}", secret = "{SECRET}", api_tokens = ["{TOKEN}"], limits = {{ max_presence_members = {} }}}}]"#,
        args.layout.presence_crowd.max(1000)
    );
    let (redis, redis_port) = match args.redis {
        Some(port) => (None, port),
        None => (Some(cluster::redis(args.redis_port).await?), args.redis_port),
    };
    let mut edge_config = EdgeConfig {
        binary: args.herald.clone(),
        port: args.port,
        redis_port,
        apps,
        grace: Duration::from_secs_f64(args.grace_seconds),
        extra_env: args.edge_env.clone(),
    };
    let mut edges = Vec::with_capacity(edges_wanted);
    for id in 0..edges_wanted {
        let edge = Edge::start(&edge_config, id).await?;
        // The port the kernel gave the first edge is every edge's.
        edge_config.port = edge.ws.port();
        edges.push(Some(edge));
    }
    let target = SocketAddr::from(([127, 0, 0, 1], edge_config.port));
    let (edges_rss, edges_anon) = edges_memory(&edges);
    let baseline = Baseline {
        edges_rss,
        edges_anon,
        tcp: cluster::kernel_tcp().0,
        slabs: cluster::kernel_socket_slabs(),
        redis: cluster::info_number(&cluster::redis_info(redis_port).await?, "used_memory"),
    };
    eprintln!("scale: redis and {edges_wanted} edges up on {target}; opening {n} connections");

    let workers = Workers::start(&args, target).await?;
    let mut run = Run {
        started: Instant::now(),
        redis_port,
        edges,
        edge_config,
        workers,
        samples: Arc::default(),
        phase: "connect",
        last_commands: None,
        args,
    };
    let mut report = json!({ "scenario": "scale", "connections": n, "edges": edges_wanted, "workers": run.workers.0.len() });
    let result = phases(&mut run, &mut report, baseline).await;
    if let Some(out) = &run.args.out {
        write_outputs(out, &run.samples.lock(), &report)?;
    }
    let Run { workers, edges, .. } = run;
    workers.stop().await;
    drop(edges);
    drop(redis);
    if let Err(e) = result {
        eprintln!("scale: failed: {e:#}");
        report["error"] = json!(format!("{e:#}"));
    }
    Ok(report)
}

fn edges_memory(edges: &[Option<Edge>]) -> (u64, u64) {
    edges.iter().flatten().map(|e| e.process.memory()).fold((0, 0), |(r, a), (rss, anon)| (r + rss, a + anon))
}

/// What the idle cluster held before any client came.
struct Baseline {
    edges_rss: u64,
    edges_anon: u64,
    tcp: u64,
    slabs: u64,
    redis: f64,
}

async fn phases(run: &mut Run, report: &mut Value, baseline: Baseline) -> anyhow::Result<()> {
    let n = run.args.connections as u64;
    let layout = run.args.layout.clone();

    // 1. Connect.
    let before = run.sample().await?.0;
    let calls_before = cluster::calls_by_command(&cluster::redis_info(run.redis_port).await?);
    let (connected, _) = run.until("connect", |s, _| s.subscribed >= n).await?;
    let seconds = connected.t;
    // Let handshake buffers go before measuring what held connections cost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (held, totals) = run.sample().await?;
    // What Redis ran while clients connected, by command: the edges send the scripts
    // (`evalsha`) and pub/sub interest; the scripts run the rest.
    let calls_by_command: std::collections::BTreeMap<String, u64> =
        cluster::calls_by_command(&cluster::redis_info(run.redis_port).await?)
            .into_iter()
            .map(|(name, calls)| {
                let before = calls_before.get(&name).copied().unwrap_or(0);
                (name, calls - before.min(calls))
            })
            .filter(|(name, calls)| *calls > 0 && name != "info")
            .collect();
    let presence = if layout.presence_every > 0 { n.div_ceil(layout.presence_every as u64) } else { 0 };
    let crowd = layout.presence_crowd.min(n as usize) as u64;
    let subscriptions = n * 2 + presence + crowd;
    report["connect"] = json!({
        "seconds": seconds,
        "connections_per_second": n as f64 / seconds,
        "subscriptions": subscriptions,
        "failures": totals.failures,
        "edges_rss_bytes": held.edges_rss,
        "edges_rss_bytes_per_connection": held.edges_rss.saturating_sub(baseline.edges_rss) as f64 / n as f64,
        "edges_anon_bytes": held.edges_anon,
        "edges_anon_bytes_per_connection": held.edges_anon.saturating_sub(baseline.edges_anon) as f64 / n as f64,
        "kernel_tcp_mem_bytes": held.kernel_tcp_mem.saturating_sub(baseline.tcp),
        "kernel_socket_slab_bytes_per_connection": held.kernel_socket_slabs.saturating_sub(baseline.slabs) as f64 / n as f64,
        "workers_rss_bytes_per_connection": held.workers_rss as f64 / n as f64,
        "redis_memory_bytes": held.redis_memory as f64 - baseline.redis,
        "redis_clients": held.redis_clients,
        "redis_commands": held.redis_commands - before.redis_commands,
        "redis_commands_per_subscription": (held.redis_commands - before.redis_commands) as f64 / subscriptions as f64,
        "redis_scripts_per_subscription": (held.redis_scripts - before.redis_scripts) as f64 / subscriptions as f64,
        "redis_peak_commands_per_second": run.peak("connect", |s| s.redis_commands_per_second),
        "redis_calls_by_command": calls_by_command,
    });
    eprintln!("scale: connect {}", report["connect"]);
    let publisher = Publisher::connect(run.edges.iter().flatten().next().context("no edge")?.grpc).await?;
    if crowd > 0 {
        // Every member in, as the whole cluster counts them.
        let (subscriptions, users) = publisher.channel(CROWD).await?;
        report["connect"]["presence_crowd"] =
            json!({ "members": crowd, "subscription_count": subscriptions, "user_count": users });
        if users != crowd {
            bail!("presence crowd: {users} users counted of {crowd}");
        }
    }

    // 2. One broadcast to the channel all share.
    run.phase = "broadcast";
    run.workers.reset_latency().await?;
    let sent = Instant::now();
    if let Some(Err(e)) = publisher.publish(&[(layout.shared.clone(), stamped(BROADCAST))]).await.pop() {
        bail!("broadcast: the publish failed: {e}");
    }
    let expected = n;
    let (_, totals) = run.until("broadcast", |_, t| t.deliveries[BROADCAST] >= expected).await?;
    let latency = run.workers.latency().await?;
    report["broadcast"] = json!({
        "deliveries": totals.deliveries[BROADCAST],
        "expected": expected,
        "seconds_to_last_delivery": latency.max() as f64 / 1e6,
        "deliveries_per_second": expected as f64 / (latency.max() as f64 / 1e6),
        "latency_ms": percentiles(&latency),
        "observed_seconds": sent.elapsed().as_secs_f64(),
    });
    write_latency_plot(run, &latency, "broadcast")?;
    eprintln!("scale: broadcast {}", report["broadcast"]);

    // 3. Steady deliveries over the channels.
    if run.args.steady_rate > 0.0 {
        run.phase = "steady";
        run.workers.reset_latency().await?;
        let per_event = layout.subscribers(n as usize, 0).max(1) as f64;
        let events_per_second = run.args.steady_rate / per_event;
        let publishes_before = run.sample().await?.0.redis_publishes;
        let published = steady(run, &publisher, events_per_second).await?;
        let expected = published.expected;
        // Until every delivery is made, or none has been for 30 s: then the report says
        // how many are missing, and the run goes on.
        let (mut seen, mut progress) = (0, Instant::now());
        let (done, totals) = run
            .until("steady", |_, t| {
                if t.deliveries[STEADY] > seen {
                    (seen, progress) = (t.deliveries[STEADY], Instant::now());
                }
                t.deliveries[STEADY] >= expected || progress.elapsed() > Duration::from_secs(30)
            })
            .await?;
        let latency = run.workers.latency().await?;
        report["steady"] = json!({
            "events": published.events,
            "failed_events": published.failed_events,
            "publish_errors": published.errors,
            "deliveries": totals.deliveries[STEADY],
            "expected": expected,
            "deliveries_per_second_target": run.args.steady_rate,
            "deliveries_per_second": expected as f64 / published.seconds,
            "redis_publishes": done.redis_publishes - publishes_before,
            "latency_ms": percentiles(&latency),
        });
        eprintln!("scale: steady {}", report["steady"]);
    }

    // 4. kill -9 of one edge.
    if !run.args.no_kill {
        run.phase = "kill";
        let before = run.sample().await?.1;
        let victim = run.edges.len() - 1;
        let pid = run.edges[victim].as_ref().map(|e| e.process.pid()).unwrap_or(0);
        let killed_at = Instant::now();
        if let Some(edge) = run.edges[victim].as_mut() {
            edge.process.kill().await;
        }
        run.edges[victim] = None;
        // Dropped connections are seen by their workers (a reset), then counted back.
        run.until("kill: drops seen", |_, t| t.drops > before.drops).await?;
        let (_, totals) = run.until("kill: all back", |s, _| s.subscribed >= n).await?;
        let reconnected = totals.reconnects - before.reconnects;
        report["kill"] = json!({
            "edge_pid": pid,
            "dropped": totals.drops - before.drops,
            "reconnected": reconnected,
            "seconds_until_all_back": killed_at.elapsed().as_secs_f64(),
            "failed_attempts": totals.failures - before.failures,
            "errors": totals.errors,
            "redis_peak_commands_per_second": run.peak("kill", |s| s.redis_commands_per_second),
        });
        eprintln!("scale: kill {}", report["kill"]);
        run.edges[victim] = Some(Edge::start(&run.edge_config, victim).await?);
    }

    // 5. Rolling restart with SIGTERM.
    let rolling = run.args.rolling.unwrap_or(run.edges.len()).min(run.edges.len());
    if rolling > 0 {
        run.phase = "rolling";
        let before = run.sample().await?.1;
        let started = Instant::now();
        let grace = Duration::from_secs_f64(run.args.grace_seconds);
        for id in 0..rolling {
            if let Some(mut edge) = run.edges[id].take() {
                edge.process.terminate(grace + Duration::from_secs(30)).await?;
            }
            run.sample().await?;
            run.edges[id] = Some(Edge::start(&run.edge_config, id).await?);
        }
        let (_, totals) = run.until("rolling: all back", |s, _| s.subscribed >= n).await?;
        let samples = run.samples.lock().clone();
        let rolling_samples: Vec<&Sample> = samples.iter().filter(|s| s.phase == "rolling").collect();
        let peak_rate = rolling_samples
            .windows(2)
            .map(|w| (w[1].reconnects.saturating_sub(w[0].reconnects)) as f64 / (w[1].t - w[0].t).max(1e-3))
            .fold(0.0, f64::max);
        // The first publisher's edge was restarted: ask a live one.
        let grpc = run.edges.iter().flatten().next().context("no edge")?.grpc;
        let crowd_back = crowd_back(&Publisher::connect(grpc).await?, crowd, run.args.phase_timeout).await?;
        report["rolling"] = json!({
            "presence_crowd_seconds_until_whole": crowd_back,
            "edges": rolling,
            "seconds": started.elapsed().as_secs_f64(),
            "reconnected": totals.reconnects - before.reconnects,
            "failed_attempts": totals.failures - before.failures,
            "peak_reconnects_per_second": peak_rate,
            "redis_peak_commands_per_second": run.peak("rolling", |s| s.redis_commands_per_second),
        });
        eprintln!("scale: rolling {}", report["rolling"]);
    }
    Ok(())
}

/// Waits until the presence crowd's user count is whole again (its members that
/// reconnected are back, those that left while dropped are gone); returns how long that
/// took, in seconds.
async fn crowd_back(publisher: &Publisher, crowd: u64, timeout: f64) -> anyhow::Result<f64> {
    let started = Instant::now();
    if crowd == 0 {
        return Ok(0.0);
    }
    loop {
        let (_, users) = publisher.channel(CROWD).await?;
        if users == crowd {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed().as_secs_f64() > timeout {
            bail!("presence crowd: {users} users of {crowd} after {timeout:.0} s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the steady phase published.
#[derive(Default)]
struct Published {
    events: u64,
    /// Deliveries the events that were accepted make.
    expected: u64,
    /// Events in calls that failed (not counted in `expected`: a call that timed out
    /// may or may not have been published).
    failed_events: u64,
    errors: std::collections::BTreeMap<String, u64>,
    /// How long publishing took (longer than asked if calls could not keep up).
    seconds: f64,
}

/// Publishes `events_per_second` events over the channels for the steady phase, on a
/// task of its own, while the coordinator samples; returns what it published.
async fn steady(run: &mut Run, publisher: &Publisher, events_per_second: f64) -> anyhow::Result<Published> {
    let layout = run.args.layout.clone();
    let n = run.args.connections;
    let seconds = run.args.steady_seconds;
    let publisher = publisher.clone();
    let mut publishing = tokio::spawn(async move {
        // Batches of events every 10 ms, each event to the next channel.
        let tick = Duration::from_millis(10);
        let per_tick = events_per_second * tick.as_secs_f64();
        let started = Instant::now();
        let mut interval = tokio::time::interval(tick);
        let (mut owed, mut next_channel) = (0.0, 0usize);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
        let published = Arc::new(Mutex::new(Published::default()));
        while started.elapsed().as_secs_f64() < seconds {
            interval.tick().await;
            owed += per_tick;
            let mut batch = Vec::new();
            while owed >= 1.0 {
                owed -= 1.0;
                let channel = next_channel % layout.channels.max(1);
                next_channel += 1;
                batch.push((format!("c{channel}"), stamped(STEADY), layout.subscribers(n, channel)));
            }
            // The API takes at most 10 events a call; calls go out side by side.
            for chunk in batch.chunks(10) {
                let permit = in_flight.clone().acquire_owned().await?;
                let (publisher, published) = (publisher.clone(), published.clone());
                let events: Vec<(String, String)> =
                    chunk.iter().map(|(c, d, _)| (c.clone(), d.clone())).collect();
                let deliveries: Vec<u64> = chunk.iter().map(|(_, _, d)| *d).collect();
                tokio::spawn(async move {
                    let outcomes = publisher.publish(&events).await;
                    let mut published = published.lock();
                    published.events += events.len() as u64;
                    for (outcome, deliveries) in outcomes.into_iter().zip(deliveries) {
                        match outcome {
                            Ok(()) => published.expected += deliveries,
                            Err(e) => {
                                published.failed_events += 1;
                                *published.errors.entry(e).or_insert(0) += 1;
                            }
                        }
                    }
                    drop(permit);
                });
            }
        }
        // Every call answered before the deliveries are counted.
        let _all = in_flight.acquire_many(256).await?;
        let mut published = std::mem::take(&mut *published.lock());
        published.seconds = started.elapsed().as_secs_f64();
        anyhow::Ok(published)
    });
    loop {
        tokio::select! {
            done = &mut publishing => return done?,
            _ = tokio::time::sleep(Duration::from_secs(1)) => { run.sample().await?; }
        }
    }
}

fn stamped(phase: usize) -> String {
    format!("p:{phase};ts:{};", now_micros())
}

fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.5)),
        "p90": ms(h.value_at_quantile(0.9)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "count": h.len(),
    })
}

/// Publishes through one edge's gRPC API.
#[derive(Clone)]
struct Publisher {
    client: PublisherClient<herald_api::client::H2Channel>,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Publisher {
    async fn connect(grpc: SocketAddr) -> anyhow::Result<Self> {
        let channel =
            herald_api::client::connect(grpc).await.with_context(|| format!("connecting to {grpc}"))?;
        let client = PublisherClient::with_origin(channel, format!("http://{grpc}").parse()?);
        Ok(Self { client, token: format!("Bearer {TOKEN}").parse()? })
    }

    /// Publishes a batch; each event's outcome (a batch call answers per event: the
    /// call succeeds when some of its events did not).
    async fn publish(&self, events: &[(String, String)]) -> Vec<Result<(), String>> {
        let events: Vec<Event> = events
            .iter()
            .map(|(channel, data)| Event {
                name: "e".into(),
                payload: Some(Payload::Data(data.clone())),
                channels: vec![channel.clone()],
                ..Default::default()
            })
            .collect();
        let count = events.len();
        let request = PublishBatchRequest { app_id: APP_ID.into(), events };
        match self.client.clone().publish_batch(authed(request, &self.token)).await {
            Ok(response) => response
                .into_inner()
                .results
                .into_iter()
                .map(|result| match result.result {
                    Some(publish_result::Result::Published(_)) => Ok(()),
                    Some(publish_result::Result::Error(e)) => Err(format!("{} (code {})", e.message, e.code)),
                    None => Err("no result".into()),
                })
                .collect(),
            Err(status) => vec![Err(format!("{} ({:?})", status.message(), status.code())); count],
        }
    }

    /// A channel's subscription and user counts, across the cluster.
    async fn channel(&self, channel: &str) -> anyhow::Result<(u64, u64)> {
        let request = GetChannelRequest { app_id: APP_ID.into(), channel: channel.into() };
        let info = self.client.clone().get_channel(authed(request, &self.token)).await?.into_inner();
        Ok((info.subscription_count, info.user_count))
    }
}

fn write_latency_plot(run: &Run, latency: &Histogram<u64>, name: &str) -> anyhow::Result<()> {
    let Some(out) = &run.args.out else { return Ok(()) };
    std::fs::create_dir_all(out)?;
    // The distribution as a CDF: share of deliveries made by each time.
    let total = latency.len().max(1) as f64;
    let mut seen = 0u64;
    let points: Vec<(f64, f64)> = latency
        .iter_recorded()
        .map(|v| {
            seen += v.count_since_last_iteration();
            (v.value_iterated_to() as f64 / 1000.0, seen as f64 / total * 100.0)
        })
        .collect();
    let svg = plot::line_chart(
        &format!("{name}: deliveries made by each latency"),
        "latency (ms)",
        "deliveries (%)",
        &[Series { name: "cumulative".into(), points }],
    );
    std::fs::write(out.join(format!("{name}-latency.svg")), svg)?;
    Ok(())
}

fn write_outputs(out: &PathBuf, samples: &[Sample], report: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("samples.json"), serde_json::to_string(samples)?)?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(report)?)?;
    let series = |name: &str, f: &dyn Fn(&Sample) -> f64| Series {
        name: name.into(),
        points: samples.iter().map(|s| (s.t, f(s))).collect(),
    };
    let mib = 1024.0 * 1024.0;
    let memory = plot::line_chart(
        "memory over the run",
        "seconds",
        "MiB",
        &[
            series("edges RSS", &|s| s.edges_rss as f64 / mib),
            series("kernel socket slabs", &|s| s.kernel_socket_slabs as f64 / mib),
            series("load generator RSS", &|s| s.workers_rss as f64 / mib),
            series("Redis", &|s| s.redis_memory as f64 / mib),
        ],
    );
    std::fs::write(out.join("memory.svg"), memory)?;
    let connections = plot::line_chart(
        "subscribed connections over the run",
        "seconds",
        "connections",
        &[series("subscribed", &|s| s.subscribed as f64)],
    );
    std::fs::write(out.join("connections.svg"), connections)?;
    let redis = plot::line_chart(
        "Redis commands per second",
        "seconds",
        "commands/s",
        &[series("commands/s", &|s| s.redis_commands_per_second)],
    );
    std::fs::write(out.join("redis.svg"), redis)?;
    Ok(())
}
