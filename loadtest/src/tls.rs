//! `tls`: what `wss://` costs the server, against plain `ws://` in the same run.
//!
//! A test CA and a server certificate for 127.0.0.1 (ECDSA P-256) are made at run
//! time in a temporary directory. Each round starts a fresh `herald dev` for each
//! kind, plain then TLS (`[server.tls]`), from `--herald`, on ports the kernel picks
//! (read from its ready file); gRPC stays plain on both, so publishing costs the
//! same. On each, one after the other:
//!
//! 1. **Connection setup**: `--connections` clients (`--concurrency` at once) over
//!    `--channels` channels connect, upgrade and subscribe (over TLS: TCP, a full
//!    TLS 1.3 handshake, then the same): the server's CPU per connection set up, and
//!    its memory per idle connection.
//! 2. **Fan-out**: `--rate` events a second for `--seconds` through gRPC, round-robin
//!    over the channels; every connection counts what it receives: deliveries against
//!    expected, and the server's CPU per delivery.
//!
//! A fresh server per round and kind, so that every memory figure is measured from
//! the same start (a server that already held and dropped thousands of connections
//! reuses their freed memory, and its RSS would not grow for the next ones).
//! Clients never resume a TLS session: every handshake is a full one, as a
//! browser's first connection is.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use herald_proto::v1::{Event, PublishRequest, event::Payload, publisher_client::PublisherClient};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::{process::Child, sync::Semaphore, task::JoinHandle};
use tokio_rustls::TlsConnector;

use crate::{
    history::{bail_on_errors, for_each_client},
    publish::authed,
    pusher::{OP_TEXT, PusherConn, find, source_address},
    server_stats::{self, Sample},
};

const APP_ID: &str = "tls-bench";
const KEY: &str = "tls-bench-key";
const SECRET: &str = "tls-bench-secret";
const TOKEN: &str = "tls-bench-api-token-0123456789";
/// The event published; the connections count frames that name it.
const EVENT: &str = "tls-bench-event";

#[derive(clap::Args, Clone)]
pub struct TlsArgs {
    /// Subscribed connections of each setup.
    #[arg(long, default_value_t = 5_000)]
    connections: usize,
    /// Channels they are spread over (connection i on channel i mod C).
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Events published per second during the fan-out.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Bytes of event data.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Rounds, each plain then TLS.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Longest wait for the deliveries still in flight after publishing.
    #[arg(long, default_value_t = 30.0)]
    drain_seconds: f64,
    /// The TLS 1.3 cipher suite the clients offer (the server takes the client's
    /// choice): AES-128-GCM is what Chrome and Firefox put first.
    #[arg(long, value_enum, default_value_t = Suite::Aes128Gcm)]
    cipher_suite: Suite,
    /// The `herald` binary.
    #[arg(long, default_value = "target/release/herald")]
    herald: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    fn rustls(self) -> rustls::CipherSuite {
        match self {
            Self::Aes128Gcm => rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            Self::Aes256Gcm => rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            Self::Chacha20Poly1305 => rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Tls,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
        }
    }
}

pub async fn run(args: TlsArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.connections > 0 && args.channels > 0, "--connections and --channels must be > 0");
    let files = Files::new()?;
    let connector = files.connector(args.cipher_suite)?;
    eprintln!(
        "tls: {} connections over {} channels, {} events/s for {} s, {} round(s); certificates in {}",
        args.connections,
        args.channels,
        args.rate,
        args.seconds,
        args.rounds.max(1),
        files.dir.path().display()
    );
    let mut runs = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for kind in [Kind::Plain, Kind::Tls] {
            let server = Server::start(&args.herald, &files, kind).await?;
            let tls = (kind == Kind::Tls).then_some(&connector);
            let measured = measure(&args, &server, tls).await;
            let log = server.stop().await;
            let (setup, fanout) =
                measured.with_context(|| format!("{} round {round}; server log:\n{log}", kind.name()))?;
            let run = json!({ "round": round, "kind": kind.name(), "setup": setup, "fanout": fanout });
            eprintln!("tls: {run}");
            runs.push(run);
        }
    }
    let summary = summary(&runs);
    eprintln!("{}", table(&args, &runs, &summary));
    Ok(json!({
        "scenario": "tls",
        "connections": args.connections,
        "channels": args.channels,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seconds": args.seconds,
        "payload_bytes": args.payload,
        "certificate": "ECDSA P-256",
        "resumption": false,
        "runs": runs,
        "summary": summary,
    }))
}

/// Setup, then fan-out, on one server; the connections are closed at the end.
async fn measure(
    args: &TlsArgs,
    server: &Server,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<(Value, Value)> {
    let (connections, setup) = setup(args, server, tls).await?;
    let fanout = fanout(args, server, connections).await?;
    Ok((setup, fanout))
}

/// Opens the connections, each subscribed; the server's CPU and memory for them.
async fn setup(
    args: &TlsArgs,
    server: &Server,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<(Vec<PusherConn>, Value)> {
    let n = args.connections;
    let (target, channels) = (server.ws, args.channels);
    let before = server.sample()?;
    let client_before = own_sample()?;
    let started = Instant::now();
    let opened = for_each_client(n, args.concurrency, {
        let tls = tls.cloned();
        move |i| {
            let tls = tls.clone();
            async move {
                let mut conn =
                    PusherConn::connect_with(target, Some(source_address(i)), KEY, tls.as_ref()).await?;
                conn.subscribe(&channel(i % channels)).await?;
                Ok(conn)
            }
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = server.sample()?;
    let client_after = own_sample()?;
    bail_on_errors("connecting", &opened)?;
    let connections: Vec<PusherConn> = opened.into_iter().filter_map(Result::ok).collect();
    let per = n as f64;
    let report = json!({
        "connections": n,
        "tls": connections.first().and_then(PusherConn::tls_parameters),
        "seconds": round3(elapsed),
        "connections_per_second": round3(per / elapsed),
        "server_cpu_us_per_connection": round3((after.cpu - before.cpu) * 1e6 / per),
        "server_rss_kib_per_connection": round3((after.rss as f64 - before.rss as f64) / 1024.0 / per),
        "server_anon_kib_per_connection": round3((after.anon as f64 - before.anon as f64) / 1024.0 / per),
        "server_rss_mib": round3(after.rss as f64 / (1 << 20) as f64),
        "client_cpu_us_per_connection": round3((client_after.cpu - client_before.cpu) * 1e6 / per),
    });
    Ok((connections, report))
}

/// Publishes at the rate, every connection counting what it gets; the server's CPU
/// per delivery. Closes the connections.
async fn fanout(args: &TlsArgs, server: &Server, connections: Vec<PusherConn>) -> anyhow::Result<Value> {
    let channels = args.channels;
    let counts: Arc<Vec<AtomicU64>> = Arc::new(connections.iter().map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let readers: Vec<JoinHandle<()>> = connections
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let (counts, delivered) = (counts.clone(), delivered.clone());
            tokio::spawn(async move {
                let mut conn = conn.buffered();
                while let Ok(frame) = conn.next_frame().await {
                    if frame.opcode == OP_TEXT && find(&frame.payload, EVENT.as_bytes()) {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let before = server.sample()?;
    let client_before = own_sample()?;
    let published = publish(args, server.grpc).await;
    let result = async {
        let (published, errors) = published?;
        let expected_of = |i: usize| published[i % channels];
        let expected: u64 = (0..counts.len()).map(expected_of).sum();
        let deadline = Instant::now() + Duration::from_secs_f64(args.drain_seconds);
        // Polling with a deadline: the counters are the condition.
        while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = server.sample()?;
        let client_after = own_sample()?;
        let delivered = delivered.load(Ordering::Relaxed);
        let wrong =
            counts.iter().enumerate().filter(|(i, c)| c.load(Ordering::Relaxed) != expected_of(*i)).count();
        let per = delivered.max(1) as f64;
        anyhow::Ok(json!({
            "published": published.iter().sum::<u64>(),
            "publish_errors": errors,
            "expected": expected,
            "delivered": delivered,
            "connections_off_count": wrong,
            "server_cpu_us_per_delivery": round3((after.cpu - before.cpu) * 1e6 / per),
            "client_cpu_us_per_delivery": round3((client_after.cpu - client_before.cpu) * 1e6 / per),
        }))
    }
    .await;
    for reader in &readers {
        reader.abort();
    }
    for reader in readers {
        // Cancelled: its connection is dropped (closed) with it.
        let _ = reader.await;
    }
    result
}

/// Unary publishes at `args.rate` for `args.seconds`, round-robin over the channels:
/// how many each channel got, and the failed calls.
async fn publish(args: &TlsArgs, grpc: SocketAddr) -> anyhow::Result<(Vec<u64>, u64)> {
    let channel_ =
        herald_api::client::connect(grpc).await.with_context(|| format!("connecting to {grpc}"))?;
    let client = PublisherClient::with_origin(channel_, format!("http://{grpc}").parse()?);
    let token: Arc<tonic::metadata::MetadataValue<_>> = Arc::new(format!("Bearer {TOKEN}").parse()?);
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..args.channels).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    const IN_FLIGHT: u32 = 256;
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT as usize));
    let data = "x".repeat(args.payload);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while Instant::now() < end {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * args.rate) as u64;
        while sent < due {
            let index = (sent % args.channels as u64) as usize;
            sent += 1;
            let permit = in_flight.clone().acquire_owned().await?;
            let request = PublishRequest {
                app_id: APP_ID.into(),
                event: Some(Event {
                    name: EVENT.into(),
                    payload: Some(Payload::Data(data.clone())),
                    channels: vec![channel(index)],
                    ..Default::default()
                }),
            };
            let (mut client, token, published, errors) =
                (client.clone(), token.clone(), published.clone(), errors.clone());
            tokio::spawn(async move {
                match client.publish(authed(request, &token)).await {
                    Ok(_) => published[index].fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                drop(permit);
            });
        }
    }
    // Every call has finished once all permits are back.
    let _all = in_flight.acquire_many(IN_FLIGHT).await?;
    Ok((published.iter().map(|p| p.load(Ordering::Relaxed)).collect(), errors.load(Ordering::Relaxed)))
}

fn channel(index: usize) -> String {
    format!("tls-c{index}")
}

fn own_sample() -> anyhow::Result<Sample> {
    server_stats::sample(std::process::id())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The figures compared, as (section, field).
const FIGURES: [(&str, &str); 5] = [
    ("setup", "server_cpu_us_per_connection"),
    ("setup", "server_rss_kib_per_connection"),
    ("setup", "connections_per_second"),
    ("fanout", "server_cpu_us_per_delivery"),
    ("fanout", "client_cpu_us_per_delivery"),
];

/// Means over the rounds of each kind, and TLS / plain.
fn summary(runs: &[Value]) -> Value {
    let mean = |kind: &str, section: &str, field: &str| {
        let values: Vec<f64> =
            runs.iter().filter(|r| r["kind"] == kind).filter_map(|r| r[section][field].as_f64()).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let mut summary = json!({ "plain": {}, "tls": {}, "tls_over_plain": {} });
    for (section, field) in FIGURES {
        let (plain, tls) = (mean("plain", section, field), mean("tls", section, field));
        summary["plain"][field] = json!(plain.map(round3));
        summary["tls"][field] = json!(tls.map(round3));
        let ratio = plain.zip(tls).filter(|(p, _)| *p != 0.0).map(|(p, t)| round3(t / p));
        summary["tls_over_plain"][field] = json!(ratio);
    }
    summary
}

/// The human summary.
fn table(args: &TlsArgs, runs: &[Value], summary: &Value) -> String {
    let mut out = format!(
        "tls: {} connections / {} channels, {} events/s for {} s; wss:// negotiated {}\n\
         {:<12} {:>14} {:>14} {:>10} {:>18} {:>18} {:>20}\n",
        args.connections,
        args.channels,
        args.rate,
        args.seconds,
        runs.iter().find_map(|r| r["setup"]["tls"].as_str()).unwrap_or("nothing"),
        "run",
        "setup µs/conn",
        "KiB/idle conn",
        "conn/s",
        "fan-out µs/deliv",
        "client µs/deliv",
        "delivered/expected",
    );
    let number = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    for run in runs {
        out.push_str(&format!(
            "{:<12} {:>14} {:>14} {:>10} {:>18} {:>18} {:>20}\n",
            format!("{} {}", run["kind"].as_str().unwrap_or(""), run["round"]),
            number(&run["setup"]["server_cpu_us_per_connection"]),
            number(&run["setup"]["server_rss_kib_per_connection"]),
            run["setup"]["connections_per_second"].as_f64().map_or("-".into(), |x| format!("{x:.0}")),
            number(&run["fanout"]["server_cpu_us_per_delivery"]),
            number(&run["fanout"]["client_cpu_us_per_delivery"]),
            format!("{}/{}", run["fanout"]["delivered"], run["fanout"]["expected"]),
        ));
    }
    for (name, row) in [("mean plain", "plain"), ("mean tls", "tls"), ("tls / plain", "tls_over_plain")] {
        let at = |field: &str| number(&summary[row][field]);
        out.push_str(&format!(
            "{:<12} {:>14} {:>14} {:>10} {:>18} {:>18}\n",
            name,
            at("server_cpu_us_per_connection"),
            at("server_rss_kib_per_connection"),
            at("connections_per_second"),
            at("server_cpu_us_per_delivery"),
            at("client_cpu_us_per_delivery"),
        ));
    }
    out
}

/// The run's temporary directory (removed on drop): the CA, the server's certificate
/// and key, the servers' configs, ready files and logs.
struct Files {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Files {
    /// A CA, and a certificate it signs for 127.0.0.1 and `localhost`; rcgen's
    /// default key type, ECDSA P-256, the common choice for a web server's key.
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("herald-loadtest-tls-").tempdir()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "herald-loadtest CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;

        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, "herald-loadtest server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &ca, &ca_key)?;
        let (cert_file, key_file) = (dir.path().join("server.pem"), dir.path().join("server.key"));
        std::fs::write(&cert_file, certificate.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Self { ca: ca.der().clone(), dir, cert_file, key_file })
    }

    /// A TLS 1.3 client offering `suite` that trusts the CA only, never resumes a
    /// session (every handshake is a full one) and offers `http/1.1`, as a browser
    /// opening a `wss://` does.
    fn connector(&self, suite: Suite) -> anyhow::Result<TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == suite.rustls());
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// A `herald dev` this run started; killed when dropped.
struct Server {
    child: Child,
    pid: u32,
    ws: SocketAddr,
    grpc: SocketAddr,
    log: PathBuf,
}

impl Server {
    async fn start(binary: &Path, files: &Files, kind: Kind) -> anyhow::Result<Self> {
        let dir = files.dir.path();
        let name = kind.name();
        let tls = match kind {
            Kind::Plain => String::new(),
            Kind::Tls => format!(
                "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                files.cert_file.display().to_string(),
                files.key_file.display().to_string()
            ),
        };
        let config = format!(
            "[server]\nhost = \"127.0.0.1\"\nport = 0\nmetrics_port = 0\n{tls}\n[grpc]\nport = 0\n\n\
             [[apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\napi_tokens = [\"{TOKEN}\"]\n\
             [apps.limits]\nmax_connections = 0\n"
        );
        let (config_file, ready_file, log) = (
            dir.join(format!("{name}.toml")),
            dir.join(format!("{name}.ready.json")),
            dir.join(format!("{name}.log")),
        );
        std::fs::write(&config_file, config)?;
        // The previous server of this kind was killed and left its ready file: it
        // must not be taken for this one's.
        match std::fs::remove_file(&ready_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let log_file = std::fs::File::create(&log)?;
        let mut child = tokio::process::Command::new(binary)
            .arg("dev")
            .arg("--config")
            .arg(&config_file)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        // Ready when the file is there (written whole, by a rename).
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                break serde_json::from_str(&text).with_context(|| format!("ready file {text:?}"))?;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the {name} server exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("the {name} server wrote no ready file within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let address = |field: &str| -> anyhow::Result<SocketAddr> {
            ready[field]
                .as_str()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("no {field} in {ready}"))
        };
        let pid = child.id().context("the server's pid")?;
        eprintln!("tls: {name} server {pid} on {} (gRPC {})", address("ws")?, address("grpc")?);
        Ok(Self { pid, ws: address("ws")?, grpc: address("grpc")?, child, log })
    }

    fn sample(&self) -> anyhow::Result<Sample> {
        server_stats::sample(self.pid)
    }

    /// Kills it and waits for it; returns what it logged.
    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
