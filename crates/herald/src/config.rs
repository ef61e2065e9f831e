//! Configuration: a TOML file, overridden by `HERALD_*` environment variables, then by
//! command-line flags. Everything is parsed and validated before any port is bound,
//! and every problem is reported at once.

use std::{collections::BTreeMap, path::Path, time::Duration};

use herald_api::GrpcConfig;
use herald_core::{App, AppLimits, Apps};
use herald_dispatcher::{
    DispatcherConfig,
    client::ClientConfig,
    endpoint::{Endpoint, Format},
    filter::EventType,
    schedule::{RetryAfterBounds, RetrySchedule},
    ssrf::AddressPolicy,
};
use herald_edge::{ConnectionConfig, EdgeConfig, EventsConfig, HttpApiConfig};
use herald_kafka::KafkaConfig;
use serde::Deserialize;
use toml::{Table, Value};

/// The whole configuration (see `config/herald.example.toml` for every option).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub connection: ConnectionConfig,
    pub http: HttpApiConfig,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    pub redis: RedisSection,
    pub events: EventsConfig,
    /// The Kafka event log; absent: an edge records no events (no webhooks).
    pub kafka: Option<KafkaConfig>,
    pub dispatcher: DispatcherSection,
    pub webhooks: Vec<WebhookSection>,
    pub apps: Vec<App>,
}

/// The Redis backbone that `herald edge` nodes share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port/` of the Redis every edge of the cluster uses.
    pub url: String,
    /// Several independent Redis instances instead of `url`: channels are spread over
    /// them by consistent hashing. Every edge must list the same URLs in the same order.
    pub shards: Vec<String>,
    /// `shards` (or `url`) are nodes of one Redis Cluster: sharded pub/sub
    /// (`SPUBLISH`/`SSUBSCRIBE`) and keys spread by slot, instead of independent
    /// instances.
    pub cluster: bool,
    /// Prefix of every Redis key and channel, so several clusters can share a Redis.
    pub prefix: String,
    /// Seconds an edge's presence lease lasts without renewal: the members and counts
    /// of an edge that crashed are removed (and `member_removed` sent) within about
    /// this time plus a third.
    pub lease_secs: u64,
}

impl RedisSection {
    /// The instances to use: `shards`, or `url` alone.
    pub fn urls(&self) -> Vec<String> {
        if self.shards.is_empty() { vec![self.url.clone()] } else { self.shards.clone() }
    }
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            shards: Vec::new(),
            cluster: false,
            prefix: "herald".into(),
            lease_secs: 15,
        }
    }
}

/// The webhook dispatcher (`herald dispatcher`, and inside `herald dev`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherSection {
    /// Kafka consumer group every dispatcher replica joins.
    pub group: String,
    /// Prefix of the dispatcher's topics (`<prefix>.retry.<n>`, `.parked`, `.dead`).
    pub topic_prefix: String,
    /// Partitions of those topics when the dispatcher creates them.
    pub partitions: i32,
    /// Delays between attempts (`5s`, `5m`, `2h`, `250ms`); one more attempt than delays.
    pub retry_schedule: Vec<String>,
    /// Each delay varies by up to this fraction either way.
    pub retry_jitter: f64,
    /// `Retry-After` (429, 503) is honoured within these bounds, in seconds.
    pub retry_after_min_secs: u64,
    pub retry_after_max_secs: u64,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Response body bytes read at most.
    pub max_response_bytes: usize,
    /// Requests in flight per endpoint, unless the endpoint sets its own.
    pub endpoint_concurrency: u32,
    /// Deliveries waiting per endpoint; more wait in the parked topic.
    pub endpoint_queue: usize,
    /// Records read and not finished, per topic.
    pub max_in_flight: usize,
    /// A rate-limit wait longer than this parks the delivery.
    pub max_throttle_wait_ms: u64,
    /// Pusher format: most events per request, and the longest a batch gathers.
    pub pusher_batch_max: usize,
    pub pusher_batch_window_ms: u64,
    /// How long an app's endpoint list is cached, in milliseconds.
    pub endpoint_refresh_ms: u64,
    /// Addresses (IPs or CIDRs) endpoints may resolve to although they are private,
    /// loopback or otherwise reserved (SSRF protection refuses those by default).
    pub allow_addresses: Vec<String>,
    /// A PEM file of CA certificates trusted for `https://` endpoints besides
    /// Mozilla's (a private CA); empty: none.
    pub ca_file: String,
}

impl Default for DispatcherSection {
    fn default() -> Self {
        let defaults = DispatcherConfig::default();
        Self {
            group: defaults.group,
            topic_prefix: defaults.topic_prefix,
            partitions: defaults.partitions,
            retry_schedule: ["5s", "5m", "30m", "2h", "5h", "10h", "10h"].map(String::from).to_vec(),
            retry_jitter: 0.2,
            retry_after_min_secs: 1,
            retry_after_max_secs: 3600,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            max_response_bytes: 64 * 1024,
            endpoint_concurrency: defaults.endpoint_concurrency,
            endpoint_queue: defaults.endpoint_queue,
            max_in_flight: defaults.max_in_flight,
            max_throttle_wait_ms: 1_000,
            pusher_batch_max: defaults.pusher_batch_max,
            pusher_batch_window_ms: 250,
            endpoint_refresh_ms: 1_000,
            allow_addresses: Vec::new(),
            ca_file: String::new(),
        }
    }
}

impl DispatcherSection {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Err(e) = RetrySchedule::from_strings(&self.retry_schedule, self.retry_jitter) {
            errors.push(format!("dispatcher.retry_schedule: {e}"));
        }
        if let Err(e) = AddressPolicy::new(&self.allow_addresses) {
            errors.push(format!("dispatcher.allow_addresses: {e}"));
        }
        if let Err(e) = self.extra_roots() {
            errors.push(format!("dispatcher.ca_file: {e}"));
        }
        if self.retry_after_min_secs > self.retry_after_max_secs {
            errors.push("dispatcher.retry_after_min_secs: must not exceed retry_after_max_secs".into());
        }
        for (name, value) in [
            ("dispatcher.partitions", self.partitions.max(0) as u64),
            ("dispatcher.connect_timeout_ms", self.connect_timeout_ms),
            ("dispatcher.request_timeout_ms", self.request_timeout_ms),
            ("dispatcher.max_response_bytes", self.max_response_bytes as u64),
            ("dispatcher.endpoint_concurrency", u64::from(self.endpoint_concurrency)),
            ("dispatcher.endpoint_queue", self.endpoint_queue as u64),
            ("dispatcher.max_in_flight", self.max_in_flight as u64),
            ("dispatcher.pusher_batch_max", self.pusher_batch_max as u64),
        ] {
            if value == 0 {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        if self.group.is_empty() || self.topic_prefix.is_empty() {
            errors.push("dispatcher.group and dispatcher.topic_prefix: must not be empty".into());
        }
    }

    /// The dispatcher's settings (call after validation).
    pub fn dispatcher(&self, events_topic: &str) -> DispatcherConfig {
        let defaults = DispatcherConfig::default();
        DispatcherConfig {
            group: self.group.clone(),
            events_topic: events_topic.to_owned(),
            topic_prefix: self.topic_prefix.clone(),
            partitions: self.partitions,
            retry: RetrySchedule::from_strings(&self.retry_schedule, self.retry_jitter).unwrap_or_default(),
            retry_after: RetryAfterBounds {
                min: Duration::from_secs(self.retry_after_min_secs),
                max: Duration::from_secs(self.retry_after_max_secs),
            },
            client: ClientConfig {
                connect_timeout: Duration::from_millis(self.connect_timeout_ms),
                request_timeout: Duration::from_millis(self.request_timeout_ms),
                max_response_bytes: self.max_response_bytes,
                policy: self.policy(),
                extra_roots: self.extra_roots().unwrap_or_default(),
                ..ClientConfig::default()
            },
            endpoint_concurrency: self.endpoint_concurrency,
            endpoint_queue: self.endpoint_queue,
            max_in_flight: self.max_in_flight,
            max_throttle_wait: Duration::from_millis(self.max_throttle_wait_ms),
            pusher_batch_max: self.pusher_batch_max,
            pusher_batch_window: Duration::from_millis(self.pusher_batch_window_ms),
            endpoint_refresh: Duration::from_millis(self.endpoint_refresh_ms),
            commit_interval: defaults.commit_interval,
        }
    }

    fn extra_roots(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        if self.ca_file.is_empty() {
            return Ok(Vec::new());
        }
        herald_dispatcher::client::read_ca_file(Path::new(&self.ca_file))
    }

    pub fn policy(&self) -> AddressPolicy {
        AddressPolicy::new(&self.allow_addresses).unwrap_or_default()
    }
}

/// A webhook endpoint declared in the config file (`[[webhooks]]`), created or
/// updated at start-up; the admin API manages the others.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    pub app_id: String,
    /// A stable id (`ep_` is prepended unless present).
    pub id: String,
    pub url: String,
    /// `standard-webhooks` (default) or `pusher`.
    #[serde(default)]
    pub format: Option<String>,
    /// `whsec_…` (Standard Webhooks).
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub channel_patterns: Vec<String>,
    #[serde(default)]
    pub rate_per_second: f64,
    #[serde(default)]
    pub max_concurrency: u32,
}

impl WebhookSection {
    /// The endpoint it declares, or what is wrong with it.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let format = match &self.format {
            None => Format::StandardWebhooks,
            Some(f) => f.parse()?,
        };
        let event_types = self
            .event_types
            .iter()
            .map(|t| t.parse::<EventType>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let id = if self.id.starts_with("ep_") { self.id.clone() } else { format!("ep_{}", self.id) };
        let mut endpoint = Endpoint::new(id, &self.app_id, &self.url, format, &self.secret);
        endpoint.event_types = event_types;
        endpoint.channel_patterns = self.channel_patterns.clone();
        endpoint.rate_per_second = self.rate_per_second;
        endpoint.max_concurrency = self.max_concurrency;
        endpoint.validate()?;
        Ok(endpoint)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the WebSocket + Pusher HTTP API listener and the metrics listener.
    pub host: String,
    /// WebSocket + Pusher HTTP API port.
    pub port: u16,
    /// `/healthz`, `/readyz`, `/metrics` port.
    pub metrics_port: u16,
    /// Socket ids start with this number; 0 picks a random one at start-up.
    pub node_id: u32,
    /// Seconds a graceful shutdown may take.
    pub shutdown_grace_secs: u64,
    /// 0: WebSocket clients and the HTTP API are served on the shared multi-threaded
    /// runtime; N: on N dedicated single-threaded event loops (`SO_REUSEPORT`).
    pub edge_threads: usize,
    /// Once every listener is bound, write the addresses actually bound (JSON, written
    /// atomically) to this file; empty: none. With ports 0 the kernel picks free
    /// ports, and whoever started Herald reads them here (see `ready.rs`).
    pub ready_file: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 6001,
            metrics_port: 9091,
            node_id: 0,
            shutdown_grace_secs: 10,
            edge_threads: 0,
            ready_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Log lines as JSON objects instead of text.
    pub json: bool,
}

/// Overrides given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// Config file (TOML). Without one, `herald dev` creates a demo app.
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
    /// Listen address for WebSocket, HTTP API and metrics (overrides server.host).
    #[arg(long)]
    pub host: Option<String>,
    /// WebSocket + HTTP API port (overrides server.port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Health and metrics port (overrides server.metrics_port).
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// gRPC API port (overrides grpc.port).
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Write the bound addresses to this file once listening (overrides
    /// server.ready_file).
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
}

impl Config {
    /// Loads the file (if any), applies `env` (`HERALD_*` variables) and the flags, and
    /// validates the result. `Err` lists every problem found.
    pub fn load(flags: &Flags, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, Vec<String>> {
        let mut table = match &flags.config {
            Some(path) => read_file(path)?,
            None => Table::new(),
        };
        apply_env(&mut table, env)?;
        let server = table.entry("server").or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(server) = server {
            if let Some(host) = &flags.host {
                server.insert("host".into(), Value::String(host.clone()));
            }
            if let Some(port) = flags.port {
                server.insert("port".into(), Value::Integer(port.into()));
            }
            if let Some(port) = flags.metrics_port {
                server.insert("metrics_port".into(), Value::Integer(port.into()));
            }
            if let Some(path) = &flags.ready_file {
                server.insert("ready_file".into(), Value::String(path.to_string_lossy().into_owned()));
            }
        }
        if let Some(port) = flags.grpc_port {
            let grpc = table.entry("grpc").or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(grpc) = grpc {
                grpc.insert("port".into(), Value::Integer(port.into()));
            }
        }
        let config: Config = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| vec![format!("invalid configuration: {}", e.message())])?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if !self.redis.url.starts_with("redis://") {
            errors.push(format!("redis.url: {:?} is not a redis:// URL", self.redis.url));
        }
        for (i, url) in self.redis.shards.iter().enumerate() {
            if !url.starts_with("redis://") {
                errors.push(format!("redis.shards[{i}]: {url:?} is not a redis:// URL"));
            }
        }
        if self.redis.lease_secs == 0 {
            errors.push("redis.lease_secs: must be at least 1".into());
        }
        if self.redis.prefix.is_empty() {
            errors.push("redis.prefix: must not be empty".into());
        }
        if self.server.host.parse::<std::net::IpAddr>().is_err() {
            errors.push(format!("server.host: {:?} is not an IP address", self.server.host));
        }
        let ports = [
            ("server.port", self.server.port),
            ("server.metrics_port", self.server.metrics_port),
            ("grpc.port", self.grpc.port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| *p == *port && *port != 0) {
                errors.push(format!("{name}: {port} is already used by {other}"));
            }
        }
        errors.extend(crate::ready::validate(&self.server.ready_file));
        if self.server.shutdown_grace_secs == 0 {
            errors.push("server.shutdown_grace_secs: must be at least 1".into());
        }
        self.connection.validate(&mut errors);
        self.http.validate(&mut errors);
        self.grpc.validate(&mut errors);
        self.events.validate(&mut errors);
        self.dispatcher.validate(&mut errors);
        let apps = Apps::new(self.apps.clone());
        for (i, webhook) in self.webhooks.iter().enumerate() {
            if let Err(e) = webhook.endpoint() {
                errors.push(format!("webhooks[{i}]: {e}"));
            }
            if let Ok(apps) = &apps
                && !apps.is_empty()
                && apps.by_id(&webhook.app_id).is_none()
            {
                errors.push(format!("webhooks[{i}].app_id: no app {:?}", webhook.app_id));
            }
        }
        if let Err(app_errors) = apps {
            errors.extend(app_errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    pub fn edge(&self) -> EdgeConfig {
        EdgeConfig {
            connection: self.connection.clone(),
            http: self.http.clone(),
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_secs),
            threads: self.server.edge_threads,
        }
    }

    /// The configured apps, or (for `herald dev` without any) the demo app.
    pub fn apps_or_demo(&self) -> (Apps, bool) {
        let (apps, demo) =
            if self.apps.is_empty() { (vec![demo_app()], true) } else { (self.apps.clone(), false) };
        // Validated in `load`; the demo app is valid by construction.
        (Apps::new(apps).unwrap_or_default(), demo)
    }
}

/// The app `herald dev` serves when no app is configured. Fixed credentials, so a demo
/// page keeps working across restarts; bound to loopback by default.
pub fn demo_app() -> App {
    App {
        id: "demo".into(),
        key: "demo-key".into(),
        secret: "demo-secret".into(),
        enabled: true,
        enable_client_events: true,
        api_tokens: vec!["herald-demo-api-token".into()],
        limits: AppLimits::default(),
    }
}

fn read_file(path: &Path) -> Result<Table, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    text.parse::<Table>().map_err(|e| vec![format!("{}: {}", path.display(), e.to_string().trim_end())])
}

/// The top-level keys of the configuration: `HERALD_*` variables that start with
/// anything else belong to other tools (`HERALD_BIN` in a test harness, say) and are
/// left alone; inside these sections an unknown key is an error like in the file.
const SECTIONS: [&str; 11] = [
    "server",
    "connection",
    "http",
    "grpc",
    "log",
    "redis",
    "events",
    "kafka",
    "dispatcher",
    "webhooks",
    "apps",
];

/// `HERALD_SECTION__KEY=value` sets `section.key` (double underscores separate
/// levels; names are lowercased). Values are read as TOML (`7000`, `true`,
/// `[{id = "1", key = "k", secret = "s"}]`) and otherwise taken as strings.
fn apply_env(table: &mut Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("HERALD_").map(|rest| (rest.to_ascii_lowercase(), v)))
        .filter(|(name, _)| SECTIONS.contains(&name.split("__").next().unwrap_or("")))
        .collect();
    for (name, raw) in vars {
        let path: Vec<&str> = name.split("__").collect();
        let value = parse_env_value(&raw);
        let (last, parents) = match path.split_last() {
            Some((last, parents)) if !last.is_empty() => (last, parents),
            _ => {
                errors.push(format!("HERALD_{}: not a configuration key", name.to_ascii_uppercase()));
                continue;
            }
        };
        if let Err(part) = set_path(table, parents, last, value) {
            errors.push(format!("HERALD_{}: {part} is not a section", name.to_ascii_uppercase()));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn set_path(table: &mut Table, parents: &[&str], last: &str, value: Value) -> Result<(), String> {
    let Some((first, rest)) = parents.split_first() else {
        table.insert(last.to_string(), value);
        return Ok(());
    };
    match table.entry(first.to_string()).or_insert_with(|| Value::Table(Table::new())) {
        Value::Table(next) => set_path(next, rest, last, value),
        _ => Err(first.to_string()),
    }
}

fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A config file removed on drop (std only, to keep dependencies lean).
    struct TempConfig(std::path::PathBuf);

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn with_file(text: &str) -> (TempConfig, Flags) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("herald-config-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let flags = Flags { config: Some(path.clone()), ..Flags::default() };
        (TempConfig(path), flags)
    }

    #[test]
    fn defaults_without_a_file() {
        let config = Config::load(&Flags::default(), env(&[])).unwrap();
        assert_eq!(config.server.port, 6001);
        assert_eq!(config.server.metrics_port, 9091);
        assert_eq!(config.connection.activity_timeout_secs, 120);
        let (apps, demo) = config.apps_or_demo();
        assert!(demo);
        assert!(apps.by_key("demo-key").is_some());
    }

    #[test]
    fn file_then_env_then_flags() {
        let (_file, mut flags) = with_file(
            r#"
            [server]
            port = 7000
            metrics_port = 7001
            [[apps]]
            id = "1"
            key = "k"
            secret = "s"
            [apps.limits]
            max_connections = 5
            "#,
        );
        let config = Config::load(
            &flags,
            env(&[("HERALD_SERVER__PORT", "8000"), ("HERALD_CONNECTION__POUT", "1"), ("HERALD_BIN", "x")]),
        );
        assert!(config.unwrap_err()[0].contains("pout"), "unknown keys are errors");
        assert!(Config::load(&flags, env(&[("HERALD_BIN", "x")])).is_ok(), "other tools' variables");

        let config = Config::load(&flags, env(&[("HERALD_SERVER__PORT", "8000")])).unwrap();
        assert_eq!(config.server.port, 8000);
        assert_eq!(config.apps[0].limits.max_connections, 5);
        flags.port = Some(9000);
        let config = Config::load(&flags, env(&[("HERALD_SERVER__PORT", "8000")])).unwrap();
        assert_eq!(config.server.port, 9000);
    }

    #[test]
    fn apps_from_the_environment() {
        let config = Config::load(
            &Flags::default(),
            env(&[("HERALD_APPS", r#"[{id = "a", key = "k", secret = "s", enable_client_events = true}]"#)]),
        )
        .unwrap();
        assert!(config.apps[0].enable_client_events);
    }

    #[test]
    fn reports_every_semantic_error_at_once() {
        let (_file, flags) = with_file(
            r#"
            [server]
            host = "not-an-ip"
            shutdown_grace_secs = 0
            [connection]
            pong_timeout_secs = 0
            [http]
            body_timeout_secs = 0
            [[apps]]
            id = "1"
            key = "k"
            secret = ""
            [[apps]]
            id = "1"
            key = "k2"
            secret = "s"
            "#,
        );
        let errors = Config::load(&flags, env(&[])).unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(errors.iter().any(|e| e.starts_with("http.body_timeout_secs")), "{errors:#?}");
    }

    #[test]
    fn the_example_config_is_valid_and_documents_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/herald.example.toml");
        let flags = Flags { config: Some(example.into()), ..Flags::default() };
        let config = Config::load(&flags, env(&[])).unwrap();
        let defaults = Config::default();
        assert_eq!(config.connection, defaults.connection);
        assert_eq!(config.http, defaults.http);
        assert_eq!(config.grpc, defaults.grpc);
        assert_eq!(config.server.port, defaults.server.port);
        assert_eq!(config.redis, defaults.redis);
        assert_eq!(config.events, defaults.events);
        assert_eq!(config.dispatcher, defaults.dispatcher);
        assert_eq!(config.apps[0].limits, AppLimits::default());
    }
}
