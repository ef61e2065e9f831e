//! Configuration: a TOML file, overridden by `HERALD_*` environment variables, then by
//! command-line flags. Everything is parsed and validated before any port is bound,
//! and every problem is reported at once.

use std::{collections::BTreeMap, path::Path, time::Duration};

use herald_api::GrpcConfig;
use herald_core::{App, AppLimits, Apps};
use herald_dispatcher::{
    DispatcherConfig,
    client::ClientConfig,
    schedule::{RetryAfterBounds, RetrySchedule},
};
use herald_kafka::KafkaConfig;
use herald_node::{ConnectionConfig, EdgeConfig, EventsConfig, HttpApiConfig};
use herald_webhooks::{
    endpoint::{Endpoint, Format},
    filter::EventType,
    ssrf::AddressPolicy,
};
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

    mod properties {
        //! The environment and the file are untrusted input too (a typo, a template
        //! gone wrong): whatever they hold, loading ends in a config or in a list of
        //! errors (exit 64), never a panic.
        use herald_node::{ConnectionConfig, HttpApiConfig};
        use proptest::{collection::vec, prelude::*, sample::select};

        use super::*;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        /// `HERALD_SECTION__KEY` of every option the example file documents, and the
        /// Kafka ones (commented out there).
        fn real_keys() -> Vec<String> {
            let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/herald.example.toml");
            let table = read_file(Path::new(example)).unwrap();
            let mut keys = vec!["HERALD_APPS".to_string(), "HERALD_WEBHOOKS".to_string()];
            for (section, value) in &table {
                if let Value::Table(options) = value {
                    keys.extend(
                        options.keys().map(|k| format!("HERALD_{section}__{k}").to_ascii_uppercase()),
                    );
                }
            }
            for kafka in ["brokers", "client_id", "replication_factor", "properties"] {
                keys.push(format!("HERALD_KAFKA__{}", kafka.to_ascii_uppercase()));
            }
            keys
        }

        fn env_key() -> impl Strategy<Value = String> {
            let odd = vec![
                "HERALD_SERVER",
                "HERALD_SERVER__",
                "HERALD___PORT",
                "HERALD_SERVER____PORT",
                "HERALD_SERVER__PORT__X",
                "HERALD_APPS__0__ID",
                "HERALD_KAFKA",
                "HERALD_KAFKA__PROPERTIES__ACKS",
                "HERALD_LOG",
                "HERALD_BIN",
                "herald_server__port",
                "HERALD_server__Port",
            ];
            prop_oneof![
                6 => select(real_keys()),
                2 => select(odd).prop_map(String::from),
                1 => "HERALD_[A-Za-z_]{0,24}",
                1 => any::<String>(),
            ]
        }

        fn env_value() -> impl Strategy<Value = String> {
            let snippets = vec![
                "",
                "0",
                "-1",
                "65536",
                "9223372036854775807",
                "18446744073709551616",
                "nan",
                "-inf",
                "1e308",
                "true",
                "\"quoted\"",
                "'single'",
                "\"unterminated",
                "[]",
                "[1, \"a\"]",
                "[\"5s\", \"99999999999999999h\", \"0ms\", \"-1s\"]",
                "[\"10.0.0.0/99\", \"::1/129\", \"not-an-ip\"]",
                "{}",
                "{port = 1}",
                "[{id = \"a\", key = \"k\", secret = \"s\"}]",
                "[{id = \"a\", key = \"k\", secret = \"s\"}, {id = \"a\", key = \"k\", secret = \"\"}]",
                "[{id = \"a/b\", key = \"k\", secret = \"s\", limits = {max_batch_events = 0}}]",
                "[{app_id = \"a\", id = \"x\", url = \"http://[::1\"}]",
                "redis://127.0.0.1:1/",
                "127.0.0.1",
                "::1",
                "/nonexistent/dir/file",
                "/",
            ];
            prop_oneof![
                3 => select(snippets).prop_map(String::from),
                2 => any::<i64>().prop_map(|n| n.to_string()),
                1 => any::<u64>().prop_map(|n| n.to_string()),
                1 => any::<f64>().prop_map(|n| n.to_string()),
                1 => "[a-z0-9:/._\\[\\]{}=\", -]{0,24}",
                1 => any::<String>(),
            ]
        }

        /// What a configuration sets, within the documented ranges, as TOML values.
        #[derive(Debug, Clone)]
        struct Valid {
            host: String,
            ports: (u16, u16, u16),
            node_id: u32,
            shutdown_grace_secs: u64,
            edge_threads: usize,
            connection: ConnectionConfig,
            http: HttpApiConfig,
            redis_url: String,
            redis_prefix: String,
            lease_secs: u64,
            apps: Vec<App>,
        }

        fn quoted(s: &str) -> String {
            format!("\"{s}\"")
        }

        impl Valid {
            /// Every option as (section, key, TOML value); an empty section is top level.
            fn options(&self) -> Vec<(&'static str, &'static str, String)> {
                let c = &self.connection;
                let mut options = vec![
                    ("server", "host", quoted(&self.host)),
                    ("server", "port", self.ports.0.to_string()),
                    ("server", "metrics_port", self.ports.1.to_string()),
                    ("grpc", "port", self.ports.2.to_string()),
                    ("server", "node_id", self.node_id.to_string()),
                    ("server", "shutdown_grace_secs", self.shutdown_grace_secs.to_string()),
                    ("server", "edge_threads", self.edge_threads.to_string()),
                    ("connection", "activity_timeout_secs", c.activity_timeout_secs.to_string()),
                    ("connection", "pong_timeout_secs", c.pong_timeout_secs.to_string()),
                    ("connection", "max_message_bytes", c.max_message_bytes.to_string()),
                    ("connection", "max_pending_input_bytes", c.max_pending_input_bytes.to_string()),
                    ("connection", "outbound_queue_bytes", c.outbound_queue_bytes.to_string()),
                    ("connection", "write_timeout_secs", c.write_timeout_secs.to_string()),
                    ("connection", "handshake_timeout_secs", c.handshake_timeout_secs.to_string()),
                    ("connection", "max_request_head_bytes", c.max_request_head_bytes.to_string()),
                    ("http", "max_body_bytes", self.http.max_body_bytes.to_string()),
                    ("http", "timestamp_tolerance_secs", self.http.timestamp_tolerance_secs.to_string()),
                    ("http", "body_timeout_secs", self.http.body_timeout_secs.to_string()),
                    ("redis", "url", quoted(&self.redis_url)),
                    ("redis", "prefix", quoted(&self.redis_prefix)),
                    ("redis", "lease_secs", self.lease_secs.to_string()),
                ];
                let apps: Vec<String> = self.apps.iter().map(app_toml).collect();
                options.push(("", "apps", format!("[{}]", apps.join(", "))));
                options
            }

            fn check(&self, config: &Config) -> Result<(), TestCaseError> {
                let server = &config.server;
                prop_assert_eq!(&server.host, &self.host);
                prop_assert_eq!((server.port, server.metrics_port, config.grpc.port), self.ports);
                prop_assert_eq!(server.node_id, self.node_id);
                prop_assert_eq!(server.shutdown_grace_secs, self.shutdown_grace_secs);
                prop_assert_eq!(server.edge_threads, self.edge_threads);
                prop_assert_eq!(&config.connection, &self.connection);
                prop_assert_eq!(&config.http, &self.http);
                prop_assert_eq!(&config.redis.url, &self.redis_url);
                prop_assert_eq!(&config.redis.prefix, &self.redis_prefix);
                prop_assert_eq!(config.redis.lease_secs, self.lease_secs);
                prop_assert_eq!(&config.apps, &self.apps);
                Ok(())
            }
        }

        /// An inline TOML table.
        fn inline(fields: &[(&str, String)]) -> String {
            let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{{}}}", fields.join(", "))
        }

        fn app_toml(app: &App) -> String {
            let l = &app.limits;
            let limits = inline(&[
                ("max_connections", l.max_connections.to_string()),
                ("max_event_data_bytes", l.max_event_data_bytes.to_string()),
                ("max_event_name_len", l.max_event_name_len.to_string()),
                ("max_channels_per_event", l.max_channels_per_event.to_string()),
                ("max_batch_events", l.max_batch_events.to_string()),
                ("max_channels_per_connection", l.max_channels_per_connection.to_string()),
                ("max_presence_members", l.max_presence_members.to_string()),
                ("max_presence_user_info_bytes", l.max_presence_user_info_bytes.to_string()),
                ("client_events_per_second", l.client_events_per_second.to_string()),
                ("webhooks_per_second", l.webhooks_per_second.to_string()),
                ("webhooks_burst", l.webhooks_burst.to_string()),
            ]);
            let tokens: Vec<String> = app.api_tokens.iter().map(|t| quoted(t)).collect();
            inline(&[
                ("id", quoted(&app.id)),
                ("key", quoted(&app.key)),
                ("secret", quoted(&app.secret)),
                ("enabled", app.enabled.to_string()),
                ("enable_client_events", app.enable_client_events.to_string()),
                ("api_tokens", format!("[{}]", tokens.join(", "))),
                ("limits", limits),
            ])
        }

        const BIG: usize = 1 << 40;

        fn limits() -> impl Strategy<Value = AppLimits> {
            (
                (0u64..BIG as u64, 1..BIG, 0..BIG, 1..BIG, 1..BIG, 0..BIG),
                (0..BIG, 0..BIG, any::<u32>(), any::<u32>(), 1..u32::MAX),
            )
                .prop_map(
                    |(
                        (connections, data, name, channels, batch, per_connection),
                        (members, info, client, hooks, burst),
                    )| {
                        AppLimits {
                            max_connections: connections,
                            max_event_data_bytes: data,
                            max_event_name_len: name,
                            max_channels_per_event: channels,
                            max_batch_events: batch,
                            max_channels_per_connection: per_connection,
                            max_presence_members: members,
                            max_presence_user_info_bytes: info,
                            client_events_per_second: client,
                            webhooks_per_second: hooks,
                            webhooks_burst: burst,
                        }
                    },
                )
        }

        fn apps() -> impl Strategy<Value = Vec<App>> {
            let app = (
                "[A-Za-z0-9_.-]{1,12}",
                any::<bool>(),
                any::<bool>(),
                vec("[A-Za-z0-9]{16,24}", 0..3),
                limits(),
            );
            vec(app, 1..4).prop_map(|apps| {
                apps.into_iter()
                    .enumerate()
                    // Ids and keys made distinct by their index.
                    .map(|(i, (secret, enabled, client_events, api_tokens, limits))| App {
                        id: format!("app-{i}"),
                        key: format!("key-{i}"),
                        secret,
                        enabled,
                        enable_client_events: client_events,
                        api_tokens,
                        limits,
                    })
                    .collect()
            })
        }

        fn connection() -> impl Strategy<Value = ConnectionConfig> {
            (
                1u64..100_000,
                1u64..100_000,
                1..BIG,
                0..BIG,
                16_384..BIG,
                1u64..100_000,
                1u64..100_000,
                1024..BIG,
            )
                .prop_map(
                    |(activity, pong, message, pending, outbound, write, handshake, head)| ConnectionConfig {
                        activity_timeout_secs: activity,
                        pong_timeout_secs: pong,
                        max_message_bytes: message,
                        max_pending_input_bytes: message + pending,
                        outbound_queue_bytes: outbound,
                        write_timeout_secs: write,
                        handshake_timeout_secs: handshake,
                        max_request_head_bytes: head,
                    },
                )
        }

        fn valid() -> impl Strategy<Value = Valid> {
            let host = prop_oneof![
                any::<[u8; 4]>().prop_map(|ip| std::net::Ipv4Addr::from(ip).to_string()),
                any::<[u16; 8]>().prop_map(|ip| std::net::Ipv6Addr::from(ip).to_string()),
            ];
            let ports = (any::<u16>(), any::<u16>(), any::<u16>())
                // Two listeners may share only port 0 (each gets a port of its own).
                .prop_filter("distinct ports", |&(a, b, c)| {
                    let ports = [a, b, c];
                    ports.iter().enumerate().all(|(i, p)| *p == 0 || !ports[..i].contains(p))
                });
            let http =
                (1024..BIG, 0..u64::MAX >> 1, 1..u64::MAX >> 1).prop_map(|(body, tolerance, timeout)| {
                    HttpApiConfig {
                        max_body_bytes: body,
                        timestamp_tolerance_secs: tolerance,
                        body_timeout_secs: timeout,
                    }
                });
            let redis = ("[a-z0-9.-]{1,20}", any::<u16>(), "[a-z0-9:_-]{1,12}", 1..u64::MAX >> 1);
            let server = (any::<u32>(), 1..u64::MAX >> 1, 0usize..64);
            (host, ports, server, connection(), http, redis, apps()).prop_map(
                |(
                    host,
                    ports,
                    (node_id, grace, threads),
                    connection,
                    http,
                    (redis_host, redis_port, prefix, lease),
                    apps,
                )| {
                    Valid {
                        host,
                        ports,
                        node_id,
                        shutdown_grace_secs: grace,
                        edge_threads: threads,
                        connection,
                        http,
                        redis_url: format!("redis://{redis_host}:{redis_port}/"),
                        redis_prefix: prefix,
                        lease_secs: lease,
                        apps,
                    }
                },
            )
        }

        /// Where an option is set: the file, the environment, or both (the file then
        /// holds a decoy of the wrong type, which the environment must replace).
        #[derive(Debug, Clone, Copy)]
        enum Place {
            File,
            Env,
            Both,
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn arbitrary_environment_overrides_load_or_list_errors(
                vars in vec((env_key(), env_value()), 0..6),
            ) {
                match Config::load(&Flags::default(), vars) {
                    Ok(_) => {}
                    Err(errors) => {
                        prop_assert!(!errors.is_empty());
                        prop_assert!(errors.iter().all(|e| !e.is_empty()), "{:?}", errors);
                    }
                }
            }

            #[test]
            fn arbitrary_environment_over_the_example_file_never_panics(
                vars in vec((env_key(), env_value()), 1..4),
            ) {
                let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/herald.example.toml");
                let flags = Flags { config: Some(example.into()), ..Flags::default() };
                if let Err(errors) = Config::load(&flags, vars) {
                    prop_assert!(!errors.is_empty());
                }
            }

            #[test]
            fn a_valid_configuration_loads_with_the_values_set(
                valid in valid(),
                places in vec(select(vec![Place::File, Place::Env, Place::Both]), 22),
                lowercase in any::<bool>(),
                noise in vec(("HERALD_(BIN|TEST|X)[A-Z_]{0,8}", env_value()), 0..3),
            ) {
                let mut top = String::new();
                let mut sections: BTreeMap<&str, String> = BTreeMap::new();
                let mut vars: Vec<(String, String)> = noise;
                for ((section, key, value), place) in valid.options().into_iter().zip(places) {
                    let in_file = match place {
                        Place::File => value.clone(),
                        Place::Env | Place::Both => "\"decoy\"".to_string(),
                    };
                    if !matches!(place, Place::Env) {
                        let text =
                            if section.is_empty() { &mut top } else { sections.entry(section).or_default() };
                        text.push_str(&format!("{key} = {in_file}\n"));
                    }
                    if !matches!(place, Place::File) {
                        let name =
                            if section.is_empty() { key.to_string() } else { format!("{section}__{key}") };
                        let name = if lowercase { name } else { name.to_ascii_uppercase() };
                        vars.push((format!("HERALD_{name}"), value));
                    }
                }
                for (section, text) in &sections {
                    top.push_str(&format!("[{section}]\n{text}"));
                }
                let (_file, flags) = with_file(&top);
                let config =
                    Config::load(&flags, vars).map_err(|e| TestCaseError::fail(format!("{e:?}\n{top}")))?;
                valid.check(&config)?;
            }
        }
    }
}
