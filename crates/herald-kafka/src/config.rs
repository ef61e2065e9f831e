//! Where the Kafka cluster is and how to talk to it (security included), and the
//! librdkafka settings the [`crate::KafkaEventLog`] guarantees rest on.
//!
//! [`KafkaConfig`] is the `[kafka]` section as written; [`Settings`] is what every
//! client is built from: the properties with the files of
//! [`KafkaConfig::property_files`] read, once, when the log connects.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use herald_backbone::{Error, Result};
use rdkafka::{
    ClientConfig, ClientContext,
    config::RDKafkaLogLevel,
    error::KafkaError,
    producer::{BaseProducer, DeliveryResult, ProducerContext},
};
use serde::Deserialize;

use crate::context::Context;

/// How to reach the Kafka cluster.
///
/// Its `Debug` shows no secret: the values of [`is_secret`] properties are
/// `<redacted>`, and of [`KafkaConfig::property_files`] only the paths are known.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`: where to start (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Names this node's connections in the brokers' logs and quotas.
    pub client_id: String,
    /// Replicas of each partition of the topics [`crate::KafkaEventLog`] creates.
    pub replication_factor: i16,
    /// Extra librdkafka properties (security, timeouts, ...), for every client; they
    /// override Herald's defaults (`linger.ms`, `message.timeout.ms`, ...). The
    /// settings the guarantees rest on cannot be overridden: see
    /// [`KafkaConfig::FIXED`].
    pub properties: BTreeMap<String, String>,
    /// Properties whose values are files' contents (without the trailing newline):
    /// property name → file. For secrets (`sasl.password`, `ssl.key.password`), so
    /// they are mounted as files and never written in the configuration, the
    /// environment or a process listing. Read when the log connects: a changed file
    /// takes effect at the next start. A property is set here or in
    /// [`KafkaConfig::properties`], not both.
    pub property_files: BTreeMap<String, PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "herald".into(),
            replication_factor: 1,
            properties: BTreeMap::new(),
            property_files: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("replication_factor", &self.replication_factor)
            .field("properties", &Redacted(&self.properties))
            .field("property_files", &self.property_files)
            .finish()
    }
}

/// Whether the value of librdkafka property `key` is a secret: never logged,
/// printed or put in an error message. Passwords, secrets and passphrases by name,
/// private keys given inline (`ssl.key.pem`), and `sasl.oauthbearer.config`, which
/// may hold a token.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "passphrase"].iter().any(|word| key.contains(word))
        || key.ends_with("key.pem")
        || key == "ssl_key"
        || key == "sasl.oauthbearer.config"
}

/// Shown in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// Properties, with the values of secret ones replaced by [`REDACTED`].
struct Redacted<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(key, value)| (key, if is_secret(key) { REDACTED } else { value.as_str() })),
            )
            .finish()
    }
}

/// librdkafka's default `message.timeout.ms` is 5 minutes: far too long for a caller
/// waiting on an append. 30 s lets librdkafka ride out a leader election.
const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;

/// `security.protocol` values, as librdkafka spells them (it ignores case).
const PROTOCOLS: &[&str] = &["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// SASL mechanisms this build of librdkafka supports with a username and password
/// (case matters to librdkafka). Not GSSAPI (Kerberos: built without Cyrus SASL),
/// not OAUTHBEARER (Herald has no token provider).
const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Properties that name a file librdkafka reads when a client is created.
const FILE_PROPERTIES: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.crl.location",
    "ssl.keystore.location",
];

impl KafkaConfig {
    /// Properties that [`KafkaConfig::properties`] may not set: durability (the
    /// producer's), and at-least-once consumption without skipping (the consumers').
    pub const FIXED: &[&str] = &[
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "allow.auto.create.topics",
    ];

    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), ..Self::default() }
    }

    /// Sets one extra librdkafka property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Sets one librdkafka property to the content of `file`.
    pub fn with_property_file(mut self, key: impl Into<String>, file: impl Into<PathBuf>) -> Self {
        self.property_files.insert(key.into(), file.into());
        self
    }

    /// Adds every problem with the configuration to `errors`, each naming its key
    /// (`kafka.properties.security.protocol: ...`) and none showing a secret. Reads
    /// the files the configuration names, and has librdkafka check the properties
    /// by creating (and dropping) a client that connects to nothing, so what it
    /// would refuse at start-up (a CA file that holds no certificate, a key that
    /// does not match its certificate, a wrong key password) is found here.
    /// The client certificate and CA files are also checked to be valid now
    /// (librdkafka checks that they parse and belong together, not that they have
    /// not expired); a CA location may be a directory or `probe`, and only a file is
    /// read.
    pub fn check(&self, errors: &mut Vec<String>) {
        self.resolve_into(errors);
        let now = std::time::SystemTime::now();
        let file = |key: &str| self.properties.get(key).map(Path::new).filter(|p| p.is_file());
        if let Some(cert) = file("ssl.certificate.location") {
            let name = self.source("ssl.certificate.location");
            herald_tls::check_certificate_validity(&name, cert, now, errors);
        }
        if let Some(ca) = file("ssl.ca.location") {
            herald_tls::check_ca_file(&self.source("ssl.ca.location"), ca, now, errors);
        }
    }

    /// The settings every client is built from, or every problem with them.
    pub(crate) fn settings(&self) -> Result<Settings> {
        let mut errors = Vec::new();
        match self.resolve_into(&mut errors) {
            Some(settings) if errors.is_empty() => Ok(settings),
            _ => Err(Error::unavailable(format!("kafka: invalid configuration: {}", errors.join("; ")))),
        }
    }

    /// Checks everything, reading the files; `None` only after adding the reasons.
    fn resolve_into(&self, errors: &mut Vec<String>) -> Option<Settings> {
        let before = errors.len();
        if self.brokers.trim().is_empty() {
            errors.push("kafka.brokers is empty".to_owned());
        }
        if self.replication_factor < 1 {
            errors.push(format!(
                "kafka.replication_factor must be at least 1, not {}",
                self.replication_factor
            ));
        }
        let mut properties = self.properties.clone();
        for (key, path) in &self.property_files {
            if self.properties.contains_key(key) {
                errors.push(format!(
                    "kafka.property_files.{key}: {key} is also set in kafka.properties: set it in one place"
                ));
                continue;
            }
            match read_property_file(path) {
                Ok(value) => {
                    properties.insert(key.clone(), value);
                }
                Err(problem) => errors.push(format!("kafka.property_files.{key}: {problem}")),
            }
        }
        for key in properties.keys().filter(|k| Self::FIXED.contains(&k.as_str())) {
            errors.push(format!(
                "{}: cannot be overridden: the delivery guarantees rest on it",
                self.source(key)
            ));
        }
        if message_timeout(&properties).is_none() {
            errors.push(format!(
                "{}: must be a number of milliseconds",
                self.source(if properties.contains_key("message.timeout.ms") {
                    "message.timeout.ms"
                } else {
                    "delivery.timeout.ms"
                })
            ));
        }
        self.check_security(&properties, errors);
        if errors.len() > before {
            return None;
        }
        let settings = Settings::new(self, properties);
        // Only once everything else is right: librdkafka stops at the first problem.
        if let Err(refused) = settings.accepted_by_librdkafka() {
            errors.push(format!("kafka.properties: librdkafka refuses them: {refused}"));
            return None;
        }
        Some(settings)
    }

    /// Where `key` was set, for a message: `kafka.properties.KEY` or
    /// `kafka.property_files.KEY`.
    fn source(&self, key: &str) -> String {
        let section = if self.property_files.contains_key(key) { "property_files" } else { "properties" };
        format!("kafka.{section}.{key}")
    }

    /// `security.protocol` and the SASL and SSL properties that go with it.
    fn check_security(&self, properties: &BTreeMap<String, String>, errors: &mut Vec<String>) {
        let protocol = match properties.get("security.protocol") {
            None => Some("PLAINTEXT".to_owned()),
            Some(value) => {
                let upper = value.trim().to_ascii_uppercase();
                if PROTOCOLS.contains(&upper.as_str()) {
                    Some(upper)
                } else {
                    errors.push(format!(
                        "{}: {value:?} is not one of {}",
                        self.source("security.protocol"),
                        PROTOCOLS.join(", ")
                    ));
                    None
                }
            }
        };
        let Some(protocol) = protocol else { return };
        let sasl = protocol.starts_with("SASL_");
        let ssl = protocol.ends_with("SSL");

        // Settings librdkafka would silently ignore with this protocol are mistakes:
        // a password meant for a broker that will never be asked for it.
        let ignored = |prefix: &str| -> Vec<String> {
            properties.keys().filter(|key| key.starts_with(prefix)).map(|key| self.source(key)).collect()
        };
        if !sasl && !ignored("sasl.").is_empty() {
            errors.push(format!(
                "{}: set, but security.protocol is {protocol}, which does not use SASL (SASL_SSL does)",
                ignored("sasl.").join(", ")
            ));
        }
        if !ssl && !ignored("ssl.").is_empty() {
            errors.push(format!(
                "{}: set, but security.protocol is {protocol}, which does not use TLS (SSL or SASL_SSL do)",
                ignored("ssl.").join(", ")
            ));
        }

        if sasl {
            let mechanism = match (properties.get("sasl.mechanism"), properties.get("sasl.mechanisms")) {
                (Some(_), Some(_)) => {
                    errors.push(
                        "kafka.properties: sasl.mechanism and sasl.mechanisms are the same property: set one"
                            .to_owned(),
                    );
                    None
                }
                (Some(m), None) => Some(("sasl.mechanism", m)),
                (None, Some(m)) => Some(("sasl.mechanisms", m)),
                (None, None) => {
                    errors.push(format!(
                        "kafka.properties.sasl.mechanism: security.protocol {protocol} needs one of {}",
                        MECHANISMS.join(", ")
                    ));
                    None
                }
            };
            if let Some((key, mechanism)) = mechanism {
                if !MECHANISMS.contains(&mechanism.as_str()) {
                    errors.push(format!(
                        "{}: {mechanism:?} is not supported: use one of {} (in capitals)",
                        self.source(key),
                        MECHANISMS.join(", ")
                    ));
                }
                for needed in ["sasl.username", "sasl.password"] {
                    if properties.get(needed).is_none_or(|v| v.is_empty()) {
                        errors.push(format!(
                            "kafka.properties.{needed}: SASL {mechanism} needs it (sasl.password is best \
                             read from a file: kafka.property_files)"
                        ));
                    }
                }
            }
        }

        if ssl {
            for key in FILE_PROPERTIES {
                let Some(path) = properties.get(*key) else { continue };
                if *key == "ssl.ca.location" && path == "probe" {
                    continue;
                }
                if let Err(e) = readable(Path::new(path)) {
                    errors.push(format!("{}: cannot read {path}: {e}", self.source(key)));
                }
            }
            let certificate = ["ssl.certificate.location", "ssl.certificate.pem"]
                .iter()
                .any(|key| properties.contains_key(*key));
            let key = ["ssl.key.location", "ssl.key.pem"].iter().any(|key| properties.contains_key(*key));
            if certificate != key {
                errors.push(format!(
                    "kafka.properties: a client certificate needs its private key: {} is set, {} is not",
                    if certificate { "ssl.certificate.location" } else { "ssl.key.location" },
                    if certificate { "ssl.key.location" } else { "ssl.certificate.location" },
                ));
            }
        }
    }
}

/// The content of a property file, without the line break at its end; the problem
/// (never the content) if it cannot be read or is empty.
fn read_property_file(path: &Path) -> Result<String, String> {
    let content =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = content.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(value.to_owned())
}

/// Whether `path` can be read: a file that opens, or a directory (`ssl.ca.location`
/// may name one) that lists.
fn readable(path: &Path) -> std::io::Result<()> {
    if path.is_dir() { std::fs::read_dir(path).map(drop) } else { std::fs::File::open(path).map(drop) }
}

/// How long librdkafka keeps trying to deliver a record (0: forever); `None` if the
/// configured value is not a number.
fn message_timeout(properties: &BTreeMap<String, String>) -> Option<Duration> {
    let configured = properties.get("message.timeout.ms").or(properties.get("delivery.timeout.ms"));
    match configured.map(|ms| ms.trim().parse::<u64>()) {
        Some(Ok(0)) => Some(Duration::MAX),
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(_)) => None,
        None => Some(Duration::from_millis(DEFAULT_MESSAGE_TIMEOUT_MS)),
    }
}

/// A checked [`KafkaConfig`] with its files read: what every client is built from.
/// Its `Debug` redacts secrets as [`KafkaConfig`]'s does.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) brokers: String,
    client_id: String,
    pub(crate) replication_factor: i16,
    /// [`KafkaConfig::properties`] and the contents of [`KafkaConfig::property_files`].
    properties: BTreeMap<String, String>,
    /// What librdkafka's log lines and errors are cleaned of.
    context: Context,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("replication_factor", &self.replication_factor)
            .field("properties", &Redacted(&self.properties))
            .finish()
    }
}

impl Settings {
    fn new(config: &KafkaConfig, properties: BTreeMap<String, String>) -> Self {
        let secrets = properties.iter().filter(|(key, _)| is_secret(key)).map(|(_, value)| value.clone());
        Self {
            brokers: config.brokers.clone(),
            client_id: config.client_id.clone(),
            replication_factor: config.replication_factor,
            context: Context::new(secrets.collect()),
            properties,
        }
    }

    /// The context every client runs with.
    pub(crate) fn context(&self) -> Context {
        self.context.clone()
    }

    /// How long librdkafka keeps trying to deliver a record.
    pub(crate) fn message_timeout(&self) -> Duration {
        message_timeout(&self.properties).unwrap_or(Duration::from_millis(DEFAULT_MESSAGE_TIMEOUT_MS))
    }

    /// Whether librdkafka takes these properties: a producer created, with no
    /// brokers to connect to, and dropped. Creating a client sets up its TLS context
    /// (reading the CA, certificate and key) and its SASL mechanism.
    fn accepted_by_librdkafka(&self) -> Result<(), String> {
        let mut config = self.producer();
        config.remove("bootstrap.servers");
        // Without brokers librdkafka warns that it cannot connect: true, and noise.
        config.set_log_level(RDKafkaLogLevel::Emerg);
        match config.create_with_context::<_, BaseProducer<Silent>>(Silent) {
            Ok(producer) => {
                drop(producer);
                Ok(())
            }
            Err(e) => Err(self.context.redact(&crate::redacted(e).to_string())),
        }
    }

    /// What every client shares; `defaults` are overridden by the configured properties.
    fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("allow.auto.create.topics", "false")
            // A broker's thread sleeps through its reconnect backoff, and records
            // waiting for that broker only time out when it wakes: with librdkafka's
            // 10 s maximum an append to a dead broker failed up to 10 s after its
            // `message.timeout.ms`. Retrying a connection every second costs little.
            .set("reconnect.backoff.max.ms", "1000");
        let protocol = self.properties.get("security.protocol").map(|p| p.to_ascii_uppercase());
        if protocol.as_deref().is_some_and(|p| p.ends_with("SSL"))
            && !self.properties.contains_key("ssl.ca.location")
            && !self.properties.contains_key("ssl.ca.pem")
        {
            // The public CAs, wherever the system keeps them. Unset, librdkafka asks
            // OpenSSL for its default paths, which are the `openssl` package's
            // (/usr/lib/ssl/certs on Debian) and missing from a distroless image;
            // `probe` tries the usual bundle files first
            // (/etc/ssl/certs/ca-certificates.crt there).
            config.set("ssl.ca.location", "probe");
        }
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        // `group.instance.id` is per consumer (see `consumer`), and only for consumers.
        for (key, value) in self.properties.iter().filter(|(key, _)| *key != "group.instance.id") {
            config.set(key, value);
        }
        config
    }

    pub(crate) fn producer(&self) -> ClientConfig {
        let mut config = self.client(&[
            // Records sent within a few milliseconds of each other share a request:
            // appends of many callers batch without adding noticeable latency.
            ("linger.ms", "5"),
            ("message.timeout.ms", &DEFAULT_MESSAGE_TIMEOUT_MS.to_string()),
            ("partitioner", "murmur2_random"),
        ]);
        config.set("enable.idempotence", "true").set("acks", "all");
        config
    }

    pub(crate) fn admin(&self) -> ClientConfig {
        self.client(&[])
    }

    pub(crate) fn consumer(&self, group: &str, topic: &str) -> ClientConfig {
        let mut config = self.client(&[
            ("auto.offset.reset", "earliest"),
            // A dispatcher that crashed holds its partitions until its session times
            // out: 10 s rather than librdkafka's 45 s, heartbeating every 2 s.
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "2000"),
            // A fetch waits at the broker at most this long for new records. Kafka
            // answers as soon as a record arrives; brokers that only answer when the
            // wait is over (tansu 0.6) would otherwise add up to librdkafka's 500 ms
            // to every webhook's latency.
            ("fetch.wait.max.ms", "50"),
            // A subscribed topic that is missing (or gains partitions) is noticed at
            // the next metadata refresh: within 10 s, not librdkafka's 5 minutes.
            ("topic.metadata.refresh.interval.ms", "10000"),
        ]);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        // Static membership: a process restarted with the same `group.instance.id`
        // takes its old members' places at once instead of waiting for them to time
        // out. One process has a consumer per topic, so each gets its own id.
        if let Some(instance) = self.properties.get("group.instance.id") {
            config.set("group.instance.id", format!("{instance}.{topic}"));
        }
        config
    }
}

/// The context of the client that only checks the properties: it says nothing.
struct Silent;

impl ClientContext for Silent {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}

    fn error(&self, _: KafkaError, _: &str) {}
}

impl ProducerContext for Silent {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use herald_testkit::tls::TestCa;

    use super::*;

    fn problems(config: &KafkaConfig) -> String {
        let mut errors = Vec::new();
        config.check(&mut errors);
        errors.join("\n")
    }

    /// A file holding `content`, in a directory removed on drop.
    fn file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_and_overrides() {
        let config = KafkaConfig::new("kafka:9092").with_property("linger.ms", "50");
        let settings = config.settings().unwrap();
        let producer = settings.producer();
        assert_eq!(producer.get("bootstrap.servers"), Some("kafka:9092"));
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("ssl.ca.location"), None);
        assert_eq!(settings.message_timeout(), Duration::from_secs(30));
        let consumer = settings.consumer("g", "t");
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn every_problem_is_reported() {
        let config = KafkaConfig { brokers: String::new(), replication_factor: 0, ..KafkaConfig::default() }
            .with_property("enable.auto.commit", "true")
            .with_property("message.timeout.ms", "soon");
        let Err(e @ Error::Unavailable(_)) = config.settings() else { panic!("accepted") };
        let message = e.to_string();
        for part in ["brokers", "replication_factor", "enable.auto.commit", "message.timeout.ms"] {
            assert!(message.contains(part), "{message} names {part}");
        }
    }

    #[test]
    fn deserializes_with_defaults() {
        let config: KafkaConfig = serde_json::from_str(r#"{ "brokers": "a:1,b:2" }"#).unwrap();
        assert_eq!(config, KafkaConfig { brokers: "a:1,b:2".into(), ..KafkaConfig::default() });
        let config: KafkaConfig = serde_json::from_str(
            r#"{ "brokers": "a:1", "property_files": { "sasl.password": "/run/secrets/kafka" } }"#,
        )
        .unwrap();
        assert_eq!(config.property_files["sasl.password"], PathBuf::from("/run/secrets/kafka"));
    }

    /// The example configuration's `[kafka]` section (commented out there), with
    /// its comments taken out, is a `KafkaConfig`, with the file it names.
    #[test]
    fn the_example_configuration_documents_a_valid_section() {
        let example = include_str!("../../../config/herald.example.toml");
        let section: String = example
            .lines()
            .skip_while(|line| *line != "# [kafka]")
            .take_while(|line| line.starts_with('#'))
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        #[derive(Deserialize)]
        struct File {
            kafka: KafkaConfig,
        }
        let File { kafka } = toml::from_str(&section).unwrap_or_else(|e| panic!("{e}\n{section}"));
        assert_eq!(kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(kafka.property_files["sasl.password"], PathBuf::from("/run/secrets/kafka/password"));
        let message = problems(&kafka);
        assert!(message.contains("cannot read /run/secrets/kafka/password"), "{message}");
    }

    /// SASL_SSL with SCRAM and the password from a file: every client gets the
    /// file's content without its line break, and librdkafka takes the properties.
    #[test]
    fn a_property_file_is_read_into_every_client() {
        let (_dir, password) = file("s3cr3t-from-a-file\n");
        let config = KafkaConfig::new("kafka:9093")
            .with_property("security.protocol", "SASL_SSL")
            .with_property("sasl.mechanism", "SCRAM-SHA-512")
            .with_property("sasl.username", "herald")
            .with_property_file("sasl.password", &password);
        assert_eq!(problems(&config), "");
        let settings = config.settings().unwrap();
        for client in [settings.producer(), settings.admin(), settings.consumer("g", "t")] {
            assert_eq!(client.get("sasl.password"), Some("s3cr3t-from-a-file"));
            assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
            // No CA configured: the system's public CAs, found wherever they are.
            assert_eq!(client.get("ssl.ca.location"), Some("probe"));
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let (_dir, password) = file("from-the-file");
        let config = KafkaConfig::new("kafka:9093")
            .with_property("security.protocol", "SASL_SSL")
            .with_property("sasl.mechanism", "PLAIN")
            .with_property("sasl.username", "herald")
            .with_property("ssl.key.password", "key-pass-inline")
            .with_property("ssl.key.pem", "-----BEGIN PRIVATE KEY-----inline")
            .with_property("sasl.oauthbearer.client.secret", "oauth-inline")
            .with_property("some.future.secret.thing", "future-inline")
            .with_property_file("sasl.password", &password);
        let shown = format!("{config:?} {config:#?}");
        for secret in ["key-pass-inline", "BEGIN PRIVATE KEY", "oauth-inline", "future-inline"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(
            shown.contains(REDACTED) && shown.contains("herald") && shown.contains("SASL_SSL"),
            "{shown}"
        );
        assert!(shown.contains(&password.display().to_string()), "the file's path is shown: {shown}");

        // Read, the file's content is a secret like the others.
        let settings = KafkaConfig::new("kafka:9093")
            .with_property("security.protocol", "SASL_PLAINTEXT")
            .with_property("sasl.mechanism", "PLAIN")
            .with_property("sasl.username", "herald")
            .with_property_file("sasl.password", &password)
            .settings()
            .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("from-the-file") && shown.contains(REDACTED), "{shown}");

        for key in ["sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem"] {
            assert!(is_secret(key), "{key}");
        }
        for key in ["sasl.username", "ssl.ca.location", "ssl.key.location", "security.protocol"] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn security_problems_are_reported_at_once() {
        let (_dir, empty) = file("\n");
        let config = KafkaConfig::new("kafka:9093")
            .with_property("security.protocol", "SASL_SSL")
            .with_property("sasl.mechanism", "GSSAPI")
            .with_property("sasl.password", "inline-password")
            .with_property_file("sasl.password", "/nonexistent/password")
            .with_property_file("ssl.key.password", &empty)
            .with_property_file("sasl.oauthbearer.client.secret", "/nonexistent/other")
            .with_property("ssl.ca.location", "/nonexistent/ca.pem")
            .with_property("ssl.certificate.location", "/nonexistent/client.pem");
        let message = problems(&config);
        for part in [
            "kafka.property_files.sasl.password: sasl.password is also set in kafka.properties",
            "kafka.property_files.ssl.key.password",
            "is empty",
            "kafka.property_files.sasl.oauthbearer.client.secret: cannot read /nonexistent/other",
            "kafka.properties.sasl.mechanism: \"GSSAPI\" is not supported",
            "kafka.properties.sasl.username: SASL GSSAPI needs it",
            "kafka.properties.ssl.ca.location: cannot read /nonexistent/ca.pem",
            "kafka.properties.ssl.certificate.location: cannot read",
            "a client certificate needs its private key",
        ] {
            assert!(message.contains(part), "{message}\n  does not say: {part}");
        }
        println!("{message}");
        assert!(!message.contains("inline-password"), "{message}");

        let message = problems(&KafkaConfig::new("k:1").with_property("security.protocol", "TLS"));
        assert!(
            message.contains("\"TLS\" is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
            "{message}"
        );

        let message = problems(&KafkaConfig::new("k:1").with_property("security.protocol", "sasl_plaintext"));
        assert!(
            message.contains("sasl.mechanism: security.protocol SASL_PLAINTEXT needs one of"),
            "{message}"
        );

        let message = problems(
            &KafkaConfig::new("k:1")
                .with_property("security.protocol", "SASL_SSL")
                .with_property("sasl.mechanism", "scram-sha-512")
                .with_property("sasl.username", "u")
                .with_property("sasl.password", "p"),
        );
        assert!(message.contains("\"scram-sha-512\" is not supported"), "{message}");

        // Settings the protocol would have librdkafka ignore.
        let message = problems(
            &KafkaConfig::new("k:1")
                .with_property("sasl.username", "u")
                .with_property("ssl.ca.location", "/etc/ssl/certs"),
        );
        assert!(message.contains("kafka.properties.sasl.username: set, but security.protocol is PLAINTEXT"));
        assert!(
            message.contains("kafka.properties.ssl.ca.location: set, but security.protocol is PLAINTEXT")
        );
    }

    /// What only librdkafka knows is found by the check, not at start-up: here a CA
    /// file that holds no certificate.
    #[test]
    fn librdkafka_checks_the_files_it_reads() {
        let (_dir, not_a_certificate) = file("not a certificate\n");
        let config = KafkaConfig::new("k:1")
            .with_property("security.protocol", "SSL")
            .with_property("ssl.ca.location", not_a_certificate.display().to_string());
        let message = problems(&config);
        println!("{message}");
        assert!(
            message.contains("librdkafka refuses them") && message.contains("ssl.ca.location"),
            "{message}"
        );

        let ca = TestCa::new();
        let client = ca.issue("client");
        let config = KafkaConfig::new("k:1")
            .with_property("security.protocol", "SSL")
            .with_property("ssl.ca.location", ca.ca_file().display().to_string())
            .with_property("ssl.certificate.location", client.cert_file.display().to_string())
            .with_property("ssl.key.location", client.key_file.display().to_string());
        assert_eq!(problems(&config), "");
        // Someone else's key for this certificate.
        let other = ca.issue("other");
        let config = config.with_property("ssl.key.location", other.key_file.display().to_string());
        let message = problems(&config);
        println!("{message}");
        assert!(message.contains("librdkafka refuses them"), "{message}");
    }
}
