//! Herald's [`EventLog`] over Kafka, or any broker that speaks its protocol (tansu in
//! the tests): [`KafkaEventLog`]. The only crate that builds librdkafka (through
//! `rdkafka`, from source, so the client is recent enough for current brokers).
//!
//! | module | what |
//! |---|---|
//! | `config` | [`KafkaConfig`]: brokers, client id, replication factor, extra librdkafka properties (security among them), properties read from files; checked at once |
//! | `context` | what librdkafka logs and reports, to `tracing`, secrets blanked |
//! | `log` | [`KafkaEventLog`]: the idempotent producer, topic creation |
//! | `consumer` | one member of a consumer group, committing only what it is told to |
//!
//! Guarantees, which are the [`EventLog`] contract:
//! - **Durable on return.** The producer is idempotent (`enable.idempotence=true`)
//!   with `acks=all`: `append` returns `Ok` only when every record's delivery report
//!   says the in-sync replicas have it. librdkafka retries sends by itself until
//!   `message.timeout.ms` (30 s unless configured); past it, or on any error that
//!   cannot be retried, `append` fails with [`Error::Unavailable`] naming the cause.
//!   Idempotence means librdkafka's own retries never duplicate or reorder a record;
//!   a caller retrying a failed `append` may still store a record twice.
//! - **Ordered per key.** A key's records go to one partition (librdkafka's
//!   `murmur2_random` partitioner: the Java client's choice, and an empty key is
//!   hashed like any other), and idempotence keeps them in order through retries.
//! - **At least once, nothing skipped.** Consumers never commit by themselves
//!   (`enable.auto.commit=false`, `enable.auto.offset.store=false`): the group's
//!   position moves only through [`LogConsumer::commit`], so whatever was not
//!   committed is read again by the next owner of its partition, and a partition
//!   with no committed position is read from the beginning
//!   (`auto.offset.reset=earliest`).
//! - Topics are never created implicitly (`allow.auto.create.topics=false`), only by
//!   [`EventLog::ensure_topics`].
//!
//! Nothing waits forever on a dead cluster: an append fails after
//! `message.timeout.ms`, a commit after 10 s, and `poll` reports the outage as an
//! error. librdkafka reconnects by itself; after a failed append the producer is
//! replaced once nothing is in flight (see `KafkaEventLog::recover`), so a broker
//! that lost the producer's state cannot refuse it for good.
//!
//! Security is librdkafka's: `security.protocol` SSL, SASL_PLAINTEXT or SASL_SSL with
//! SASL PLAIN or SCRAM-SHA-256/512, over the system's OpenSSL (see Cargo.toml for
//! why not a vendored one). Secrets come from files
//! ([`KafkaConfig::property_files`]) and never appear in a `Debug`, a log line or
//! an error: see [`is_secret`].
//!
//! Every implementation here passes `herald_backbone::conformance` against a real
//! tansu broker (see `tests/`, which also records tansu 0.6's quirks).
//!
//! [`EventLog`]: herald_backbone::EventLog
//! [`EventLog::ensure_topics`]: herald_backbone::EventLog::ensure_topics
//! [`Error::Unavailable`]: herald_backbone::Error::Unavailable
//! [`LogConsumer::commit`]: herald_backbone::LogConsumer::commit

mod config;
mod consumer;
mod context;
mod log;

pub use config::{KafkaConfig, is_secret};
pub use log::KafkaEventLog;

use herald_backbone::Error;
use rdkafka::error::KafkaError;

fn unavailable(what: &str, e: KafkaError) -> Error {
    Error::unavailable_because(format!("kafka: {what}"), redacted(e))
}

/// `e` without the value it quotes when that value is a secret: librdkafka refusing
/// a property says which value it refused.
fn redacted(e: KafkaError) -> KafkaError {
    match e {
        KafkaError::ClientConfig(code, _, key, _) if is_secret(&key) => KafkaError::ClientConfig(
            code,
            format!("invalid value for {key}"),
            key,
            config::REDACTED.to_owned(),
        ),
        e => e,
    }
}
