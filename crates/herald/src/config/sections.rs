//! The sections of the config file as serde reads them. The edge's, the gRPC API's,
//! the event log's and Kafka's sections are their crates' own settings types; the
//! ones here belong to the binary, or (`[dispatcher]`) are the flat, documented shape
//! of a crate's nested settings.

use std::{path::Path, time::Duration};

use herald_api::GrpcConfig;
use herald_core::App;
use herald_dispatcher::{
    DispatcherConfig,
    client::ClientConfig,
    schedule::{RetryAfterBounds, RetrySchedule},
};
use herald_kafka::KafkaConfig;
use herald_node::{ConnectionConfig, EventsConfig, HttpApiConfig, duration};
use herald_telemetry::TracingConfig;
use herald_webhooks::{
    endpoint::{Endpoint, Format},
    filter::EventType,
    ssrf::AddressPolicy,
};
use serde::Deserialize;

const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);

/// The config file's shape (see `config/herald.example.toml` for every option), once
/// the environment and the flags are applied; [`super::Config`] is what it means.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Sections {
    pub server: ServerConfig,
    pub connection: ConnectionConfig,
    pub http: HttpApiConfig,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    pub telemetry: TelemetrySection,
    pub redis: RedisSection,
    pub events: EventsConfig,
    /// The Kafka event log; absent: an edge records no events (no webhooks).
    pub kafka: Option<KafkaConfig>,
    pub dispatcher: DispatcherSection,
    pub webhooks: Vec<WebhookSection>,
    pub apps: Vec<App>,
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
    /// How long a graceful shutdown may take.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_grace: Duration,
    /// 0: WebSocket clients and the HTTP API are served on the shared multi-threaded
    /// runtime; N: on N dedicated single-threaded event loops (`SO_REUSEPORT`).
    pub edge_threads: usize,
    /// Once every listener is bound, write the addresses actually bound (JSON, written
    /// atomically) to this file; empty: none. With ports 0 the kernel picks free
    /// ports, and whoever started Herald reads them here (see `ready.rs`).
    pub ready_file: String,
    /// How long an edge gathers changes of its channel subscription counts before
    /// sending them to Redis in one batch. Longer: fewer Redis writes; shorter:
    /// fresher counts in the HTTP API and `channel_occupied` sooner.
    #[serde(deserialize_with = "duration::deserialize")]
    pub occupancy_flush: Duration,
    /// Connections (WebSocket clients and HTTP API) an edge holds before it stops
    /// taking new ones: it closes its listener, leaving the port to the edges that
    /// share it (`SO_REUSEPORT`) and saying not ready on `/readyz`, and listens again
    /// once down to 95% of it. 0: the open-file limit (raised to its hard limit at
    /// start) less a reserve for Redis, gRPC and the rest: a tenth, at most 1,000.
    pub max_connections: usize,
    /// `[server.tls]`: TLS on the WebSocket + HTTP API port (`wss://`, `https://`);
    /// plain without a certificate. The metrics port stays plain.
    pub tls: herald_tls::ListenerTls,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 6001,
            metrics_port: 9091,
            node_id: 0,
            shutdown_grace: Duration::from_secs(10),
            edge_threads: 0,
            ready_file: String::new(),
            occupancy_flush: Duration::from_millis(50),
            max_connections: 0,
            tls: herald_tls::ListenerTls::default(),
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        errors.extend(crate::ready::validate(&self.ready_file));
        duration::at_least(errors, "server.shutdown_grace", self.shutdown_grace, SECOND);
        if self.occupancy_flush > Duration::from_secs(10) {
            errors.push("server.occupancy_flush: at most 10s".into());
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Log lines as JSON objects instead of text.
    pub json: bool,
}

/// `[telemetry]`: OpenTelemetry traces (see [`TracingConfig`] for what each means).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct TelemetrySection {
    /// OTLP/gRPC endpoint of a collector; empty: no traces.
    pub otlp_endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    #[serde(deserialize_with = "duration::deserialize")]
    pub export_timeout: Duration,
    pub max_queue_size: usize,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        let defaults = TracingConfig::default();
        Self {
            otlp_endpoint: String::new(),
            service_name: defaults.service_name,
            sample_ratio: defaults.sample_ratio,
            resource_attributes: Default::default(),
            export_timeout: defaults.export_timeout,
            max_queue_size: defaults.max_queue_size,
        }
    }
}

impl TelemetrySection {
    pub fn build(self, errors: &mut Vec<String>) -> TracingConfig {
        let config = TracingConfig {
            otlp_endpoint: Some(self.otlp_endpoint).filter(|e| !e.is_empty()),
            service_name: self.service_name,
            sample_ratio: self.sample_ratio,
            resource_attributes: self.resource_attributes.into_iter().collect(),
            export_timeout: self.export_timeout,
            max_queue_size: self.max_queue_size,
        };
        config.validate(errors);
        duration::at_least(errors, "telemetry.export_timeout", config.export_timeout, 100 * MILLISECOND);
        config
    }
}

/// The Redis backbone that `herald edge` nodes share. Its `Debug` shows no password
/// (neither `password` nor one in a URL).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port/` of the Redis every edge of the cluster uses; `rediss://`
    /// for TLS. A user and password may be in it (`rediss://user:password@host:port`),
    /// but not also in `username`/`password`.
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
    /// How long an edge's presence lease lasts without renewal: the members and counts
    /// of an edge that crashed are removed (and `member_removed` sent) within about
    /// this time plus a third.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lease: Duration,
    /// How long a Redis command may wait for its answer. One that takes longer fails
    /// (a publish with 503 / UNAVAILABLE) and is not sent again, since Redis may still
    /// run it. 0: 2s, or a third of `lease` if that is less; else at least 100ms and
    /// at most a third of `lease`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub command_timeout: Duration,
    /// The ACL user (Redis 6+) every connection signs in as; empty: the URL's, else
    /// Redis's default user.
    pub username: String,
    /// The password; empty: none (or the URL's). Better kept out of the file:
    /// `HERALD_REDIS__PASSWORD`, or `password_file`.
    #[serde(deserialize_with = "secret")]
    pub password: String,
    /// A file whose content (less a trailing newline) is the password, such as a
    /// mounted Kubernetes Secret; read at start-up. Not with `password`.
    pub password_file: String,
    /// `rediss://` only: a PEM file of the CA certificates to trust instead of
    /// Mozilla's roots (which managed services' certificates chain to): a private CA.
    pub ca_file: String,
    /// `rediss://` only: a client certificate (PEM, with its chain) and its private key,
    /// for a Redis that requires one (`tls-auth-clients yes`). Both or neither.
    pub cert_file: String,
    pub key_file: String,
}

/// A password as text: a value of another type (`password = 123`) is refused without
/// being quoted, so the error cannot show it.
fn secret<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match toml::Value::deserialize(deserializer)? {
        toml::Value::String(text) => Ok(text),
        _ => Err(serde::de::Error::custom("must be a string (put it in quotes)")),
    }
}

impl std::fmt::Debug for RedisSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            shards,
            cluster,
            prefix,
            lease,
            command_timeout,
            username,
            password,
            password_file,
            ca_file,
            cert_file,
            key_file,
        } = self;
        let shards: Vec<String> = shards.iter().map(|url| herald_redis::redact_url(url)).collect();
        f.debug_struct("RedisSection")
            .field("url", &herald_redis::redact_url(url))
            .field("shards", &shards)
            .field("cluster", cluster)
            .field("prefix", prefix)
            .field("lease", lease)
            .field("command_timeout", command_timeout)
            .field("username", username)
            .field("password", &if password.is_empty() { "" } else { "<redacted>" })
            .field("password_file", password_file)
            .field("ca_file", ca_file)
            .field("cert_file", cert_file)
            .field("key_file", key_file)
            .finish()
    }
}

impl RedisSection {
    /// The instances to use: `shards`, or `url` alone.
    pub fn urls(&self) -> Vec<String> {
        if self.shards.is_empty() { vec![self.url.clone()] } else { self.shards.clone() }
    }

    /// The command timeout in force (see `command_timeout`).
    pub fn command_timeout(&self) -> Duration {
        match self.command_timeout.is_zero() {
            true => herald_redis::DEFAULT_COMMAND_TIMEOUT.min(self.lease / 3),
            false => self.command_timeout,
        }
    }

    /// The password in force: `password`, or the content of `password_file` less a
    /// trailing newline; `None` without either (the URL's, if any, applies).
    pub fn password(&self) -> Result<Option<String>, String> {
        if !self.password.is_empty() {
            return Ok(Some(self.password.clone()));
        }
        if self.password_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.password_file)
            .map_err(|e| format!("redis.password_file: cannot read {}: {e}", self.password_file))?;
        let password = text.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&text);
        if password.is_empty() {
            return Err(format!("redis.password_file: {} is empty", self.password_file));
        }
        Ok(Some(password.to_owned()))
    }

    /// The settings of the Redis client: where, as whom, over what TLS. Reads
    /// `password_file`.
    pub fn client(&self) -> Result<herald_redis::RedisConfig, String> {
        let optional = |path: &str| Some(std::path::PathBuf::from(path)).filter(|_| !path.is_empty());
        let client = match (optional(&self.cert_file), optional(&self.key_file)) {
            (Some(cert_file), Some(key_file)) => {
                Some(herald_redis::ClientCertificate { cert_file, key_file })
            }
            _ => None,
        };
        Ok(herald_redis::RedisConfig {
            prefix: self.prefix.clone(),
            cluster: self.cluster,
            command_timeout: self.command_timeout(),
            username: Some(self.username.clone()).filter(|u| !u.is_empty()),
            password: self.password()?,
            tls: herald_redis::RedisTls { ca_file: optional(&self.ca_file), client },
            ..herald_redis::RedisConfig::sharded(self.urls())
        })
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        for (name, url) in std::iter::once(("redis.url".to_owned(), &self.url))
            .chain(self.shards.iter().enumerate().map(|(i, url)| (format!("redis.shards[{i}]"), url)))
        {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                let url = herald_redis::redact_url(url);
                errors.push(format!("{name}: {url:?} is not a redis:// (or rediss:// for TLS) URL"));
            }
        }
        self.validate_security(errors);
        duration::at_least(errors, "redis.lease", self.lease, SECOND);
        if !self.command_timeout.is_zero() {
            duration::at_least(
                errors,
                "redis.command_timeout",
                self.command_timeout,
                Duration::from_millis(100),
            );
            if self.command_timeout > self.lease / 3 {
                errors.push("redis.command_timeout: at most a third of redis.lease".into());
            }
        }
        if self.prefix.is_empty() {
            errors.push("redis.prefix: must not be empty".into());
        }
        if self.prefix.contains(['{', '}']) {
            // Braces would make a hash tag of part of it and split a channel's keys
            // from its pub/sub slot in a Redis Cluster.
            errors.push("redis.prefix: must not contain '{' or '}'".into());
        }
    }
}

impl RedisSection {
    /// TLS and credentials: the URLs in use all TLS or none, TLS settings only with
    /// TLS, readable files, one password.
    fn validate_security(&self, errors: &mut Vec<String>) {
        let used = if self.shards.is_empty() { "redis.url" } else { "redis.shards" };
        let mut urls = Vec::new();
        for (i, url) in self.urls().iter().enumerate() {
            let name = if self.shards.is_empty() { used.to_owned() } else { format!("{used}[{i}]") };
            match herald_redis::url_info(url) {
                Ok(info) => urls.push((name, info)),
                Err(e) => errors.push(format!("{name}: {:?}: {e}", herald_redis::redact_url(url))),
            }
        }
        let tls = urls.iter().filter(|(_, info)| info.tls).count();
        if tls > 0 && tls < urls.len() {
            errors.push(format!(
                "{used}: mixes rediss:// (TLS) and redis:// URLs: all of them or none must be rediss://"
            ));
        }
        let files = [
            ("redis.ca_file", &self.ca_file),
            ("redis.cert_file", &self.cert_file),
            ("redis.key_file", &self.key_file),
        ];
        let tls_settings: Vec<&str> =
            files.iter().filter(|(_, path)| !path.is_empty()).map(|(name, _)| *name).collect();
        if tls == 0 && !urls.is_empty() && !tls_settings.is_empty() {
            errors.push(format!(
                "{}: TLS settings, but {used} is not rediss://: use rediss:// URLs, or remove them",
                tls_settings.join(", ")
            ));
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            errors.push(
                "redis.cert_file and redis.key_file: a client certificate needs both (or neither)".into(),
            );
        }
        let mut unreadable = Vec::new();
        for (name, path) in files.iter().filter(|(_, path)| !path.is_empty()) {
            let read = match *name {
                "redis.key_file" => herald_redis::read_private_key(std::path::Path::new(path)),
                _ => herald_redis::read_certificates(std::path::Path::new(path)),
            };
            if let Err(e) = read {
                errors.push(format!("{name}: {e}"));
                unreadable.push(*name);
            }
        }
        // What the files hold: a client certificate that is its key's and valid now, a
        // CA with a certificate valid now.
        let now = std::time::SystemTime::now();
        if !self.cert_file.is_empty()
            && !self.key_file.is_empty()
            && !unreadable.iter().any(|name| *name != "redis.ca_file")
        {
            let (cert, key) = (Path::new(&self.cert_file), Path::new(&self.key_file));
            herald_tls::check_certificate_pair("redis", cert, key, now, errors);
        }
        if !self.ca_file.is_empty() && !unreadable.contains(&"redis.ca_file") {
            herald_tls::check_ca_file("redis.ca_file", Path::new(&self.ca_file), now, errors);
        }
        if !self.password.is_empty() && !self.password_file.is_empty() {
            errors.push("redis.password and redis.password_file: both given: keep one".into());
        } else if let Err(e) = self.password() {
            errors.push(e);
        }
        let given = !self.password.is_empty() || !self.password_file.is_empty();
        for (name, info) in &urls {
            if given && info.password {
                errors.push(format!(
                    "{name}: has a password, and redis.password or redis.password_file is set too: keep one"
                ));
            }
            if !self.username.is_empty() && info.username {
                errors.push(format!("{name}: has a user name, and redis.username is set too: keep one"));
            }
        }
    }
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            shards: Vec::new(),
            cluster: false,
            prefix: "herald".into(),
            lease: Duration::from_secs(15),
            command_timeout: Duration::ZERO,
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

/// The webhook dispatcher (`herald dispatcher`, and inside `herald dev`): the
/// documented, flat shape of [`DispatcherConfig`], whose defaults are its defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherSection {
    /// Kafka consumer group every dispatcher replica joins.
    pub group: String,
    /// Prefix of the dispatcher's topics (`<prefix>.retry.<n>`, `.parked`, `.dead`).
    pub topic_prefix: String,
    /// Partitions of those topics when the dispatcher creates them.
    pub partitions: i32,
    /// Delays between attempts (`"5s"`, `"5m"`, `"2h"`, `"250ms"`); one more attempt
    /// than delays. Kept as text and parsed by [`DispatcherSection::build`], so a bad
    /// delay is reported with every other problem rather than alone.
    pub retry_schedule: Vec<String>,
    /// Each delay varies by up to this fraction either way.
    pub retry_jitter: f64,
    /// `Retry-After` (429, 503) is honoured within these bounds.
    #[serde(deserialize_with = "duration::deserialize")]
    pub retry_after_min: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub retry_after_max: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub request_timeout: Duration,
    /// How long a kept-alive connection to an endpoint may sit unused before it is
    /// closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// Response body bytes read at most.
    pub max_response_bytes: usize,
    /// Requests in flight per endpoint, unless the endpoint sets its own.
    pub endpoint_concurrency: u32,
    /// Deliveries waiting per endpoint; more wait in the parked topic.
    pub endpoint_queue: usize,
    /// Records read and not finished, per topic.
    pub max_in_flight: usize,
    /// A rate-limit wait longer than this parks the delivery.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_throttle_wait: Duration,
    /// Pusher format: most events per request, and the longest a batch gathers.
    pub pusher_batch_max: usize,
    #[serde(deserialize_with = "duration::deserialize")]
    pub pusher_batch_window: Duration,
    /// How long an app's endpoint list is cached.
    #[serde(deserialize_with = "duration::deserialize")]
    pub endpoint_refresh: Duration,
    /// Addresses (IPs or CIDRs) endpoints may resolve to although they are private,
    /// loopback or otherwise reserved (SSRF protection refuses those by default).
    pub allow_addresses: Vec<String>,
    /// A PEM file of CA certificates trusted for `https://` endpoints besides
    /// Mozilla's (a private CA); empty: none.
    pub ca_file: String,
}

impl Default for DispatcherSection {
    /// The dispatcher crate's defaults, written once there.
    fn default() -> Self {
        let DispatcherConfig {
            group,
            events_topic: _,
            topic_prefix,
            partitions,
            retry,
            retry_after,
            client,
            endpoint_concurrency,
            endpoint_queue,
            max_in_flight,
            max_throttle_wait,
            pusher_batch_max,
            pusher_batch_window,
            endpoint_refresh,
            commit_interval: _,
        } = DispatcherConfig::default();
        Self {
            group,
            topic_prefix,
            partitions,
            retry_schedule: retry.delays.iter().map(|d| duration::format(*d)).collect(),
            retry_jitter: retry.jitter,
            retry_after_min: retry_after.min,
            retry_after_max: retry_after.max,
            connect_timeout: client.connect_timeout,
            request_timeout: client.request_timeout,
            idle_timeout: client.idle_timeout,
            max_response_bytes: client.max_response_bytes,
            endpoint_concurrency,
            endpoint_queue,
            max_in_flight,
            max_throttle_wait,
            pusher_batch_max,
            pusher_batch_window,
            endpoint_refresh,
            allow_addresses: Vec::new(),
            ca_file: String::new(),
        }
    }
}

impl DispatcherSection {
    /// The dispatcher's settings, reading `events_topic`, with every problem of the
    /// section recorded in `errors`; `None` exactly when one was.
    pub(super) fn build(&self, events_topic: &str, errors: &mut Vec<String>) -> Option<DispatcherConfig> {
        let before = errors.len();
        let delays = self
            .retry_schedule
            .iter()
            .enumerate()
            .map(|(i, text)| {
                duration::parse(text).map_err(|e| format!("dispatcher.retry_schedule: delay #{}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| errors.push(e))
            .ok();
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            errors.push(format!(
                "dispatcher.retry_jitter: must be between 0 and 1 (a fraction of each delay), got {}",
                self.retry_jitter
            ));
        }
        let policy = AddressPolicy::new(&self.allow_addresses)
            .map_err(|e| errors.push(format!("dispatcher.allow_addresses: {e}")))
            .ok();
        let extra_roots =
            self.extra_roots().map_err(|e| errors.push(format!("dispatcher.ca_file: {e}"))).ok();
        if self.retry_after_min > self.retry_after_max {
            errors.push("dispatcher.retry_after_min: must not exceed retry_after_max".into());
        }
        for (name, value) in [
            ("dispatcher.connect_timeout", self.connect_timeout),
            ("dispatcher.request_timeout", self.request_timeout),
            ("dispatcher.idle_timeout", self.idle_timeout),
        ] {
            duration::at_least(errors, name, value, MILLISECOND);
        }
        for (name, value) in [
            ("dispatcher.partitions", self.partitions.max(0) as u64),
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
        if errors.len() > before {
            return None;
        }
        let defaults = DispatcherConfig::default();
        Some(DispatcherConfig {
            group: self.group.clone(),
            events_topic: events_topic.to_owned(),
            topic_prefix: self.topic_prefix.clone(),
            partitions: self.partitions,
            retry: RetrySchedule { delays: delays?, jitter: self.retry_jitter },
            retry_after: RetryAfterBounds { min: self.retry_after_min, max: self.retry_after_max },
            client: ClientConfig {
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
                idle_timeout: self.idle_timeout,
                max_response_bytes: self.max_response_bytes,
                policy: policy?,
                extra_roots: extra_roots?,
                ..defaults.client
            },
            endpoint_concurrency: self.endpoint_concurrency,
            endpoint_queue: self.endpoint_queue,
            max_in_flight: self.max_in_flight,
            max_throttle_wait: self.max_throttle_wait,
            pusher_batch_max: self.pusher_batch_max,
            pusher_batch_window: self.pusher_batch_window,
            endpoint_refresh: self.endpoint_refresh,
            commit_interval: defaults.commit_interval,
        })
    }

    fn extra_roots(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        if self.ca_file.is_empty() {
            return Ok(Vec::new());
        }
        herald_dispatcher::client::read_ca_file(Path::new(&self.ca_file))
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
