//! Where the Kafka cluster is and how to talk to it, and the librdkafka settings the
//! [`crate::KafkaEventLog`] guarantees rest on.

use std::{collections::BTreeMap, time::Duration};

use herald_backbone::{Error, Result};
use rdkafka::ClientConfig;
use serde::Deserialize;

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "herald".into(),
            replication_factor: 1,
            properties: BTreeMap::new(),
        }
    }
}

/// librdkafka's default `message.timeout.ms` is 5 minutes: far too long for a caller
/// waiting on an append. 30 s lets librdkafka ride out a leader election.
const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;

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

    /// Every problem with the configuration, at once.
    pub(crate) fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push("brokers is empty".to_owned());
        }
        if self.replication_factor < 1 {
            problems.push(format!("replication_factor must be at least 1, not {}", self.replication_factor));
        }
        for key in self.properties.keys().filter(|k| Self::FIXED.contains(&k.as_str())) {
            problems
                .push(format!("property {key:?} cannot be overridden: the delivery guarantees rest on it"));
        }
        if self.message_timeout().is_none() {
            problems.push("message.timeout.ms must be a number of milliseconds".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::unavailable(format!("kafka: invalid configuration: {}", problems.join("; "))))
        }
    }

    /// How long librdkafka keeps trying to deliver a record (0: forever).
    pub(crate) fn message_timeout(&self) -> Option<Duration> {
        let configured =
            self.properties.get("message.timeout.ms").or(self.properties.get("delivery.timeout.ms"));
        match configured.map(|ms| ms.trim().parse::<u64>()) {
            Some(Ok(0)) => Some(Duration::MAX),
            Some(Ok(ms)) => Some(Duration::from_millis(ms)),
            Some(Err(_)) => None,
            None => Some(Duration::from_millis(DEFAULT_MESSAGE_TIMEOUT_MS)),
        }
    }

    /// What every client shares; `defaults` are overridden by [`KafkaConfig::properties`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config = KafkaConfig::new("kafka:9092").with_property("linger.ms", "50");
        config.validate().unwrap();
        let producer = config.producer();
        assert_eq!(producer.get("bootstrap.servers"), Some("kafka:9092"));
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(config.message_timeout(), Some(Duration::from_secs(30)));
        let consumer = config.consumer("g", "t");
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn every_problem_is_reported() {
        let config = KafkaConfig { brokers: String::new(), replication_factor: 0, ..KafkaConfig::default() }
            .with_property("enable.auto.commit", "true")
            .with_property("message.timeout.ms", "soon");
        let Err(e @ Error::Unavailable(_)) = config.validate() else { panic!("accepted") };
        let message = e.to_string();
        for part in ["brokers", "replication_factor", "enable.auto.commit", "message.timeout.ms"] {
            assert!(message.contains(part), "{message} names {part}");
        }
    }

    #[test]
    fn deserializes_with_defaults() {
        let config: KafkaConfig = serde_json::from_str(r#"{ "brokers": "a:1,b:2" }"#).unwrap();
        assert_eq!(config, KafkaConfig { brokers: "a:1,b:2".into(), ..KafkaConfig::default() });
    }
}
