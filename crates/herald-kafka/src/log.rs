//! [`KafkaEventLog`]: appends through one idempotent producer shared by every caller,
//! creates topics through the admin API, and hands out group consumers.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_backbone::{Append, Error, EventLog, LogConsumer, Result};
use parking_lot::RwLock;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
};

use crate::{KafkaConfig, config::Settings, consumer::KafkaConsumer, context::Context, unavailable};

/// How long `connect` waits for the cluster's metadata, and the admin operations for
/// the brokers' answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `append` tries again to queue a record while librdkafka's local queue
/// (`queue.buffering.max.messages`) is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

/// The [`EventLog`] over Kafka. Share it (`Arc`): one producer serves every
/// append, so records of concurrent callers travel in the same batches.
pub struct KafkaEventLog {
    settings: Settings,
    message_timeout: Duration,
    /// Replaced after a failed append, so appends recover: see `recover`.
    producer: RwLock<CurrentProducer>,
    admin: AdminClient<Context>,
}

/// The current producer and how many were created before it.
#[derive(Clone)]
struct CurrentProducer {
    generation: u64,
    inner: FutureProducer<Context>,
}

impl KafkaEventLog {
    /// Creates the clients and waits until the cluster answers (up to 10 s), so a
    /// node started against the wrong address fails at startup. After that librdkafka
    /// keeps its connections up by itself: an unreachable cluster makes operations
    /// fail with [`Error::Unavailable`], and they work again once it is back.
    ///
    /// The configuration is checked first (every problem at once, as
    /// [`KafkaConfig::check`] finds them), and the files it names are read once,
    /// here. A cluster that cannot be reached is reported with the last error
    /// librdkafka saw, such as a TLS handshake or a SASL authentication refused.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let settings = config.settings()?;
        let message_timeout = settings.message_timeout();
        let producer: FutureProducer<Context> = settings
            .producer()
            .create_with_context(settings.context())
            .map_err(|e| unavailable("creating the producer", e))?;
        let admin = settings
            .admin()
            .create_with_context(settings.context())
            .map_err(|e| unavailable("creating the admin client", e))?;
        // The metadata request blocks its thread until the cluster answers.
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, REQUEST_TIMEOUT))
            .await
            .map_err(|e| Error::unavailable_because("kafka: metadata task failed", e))?
            .map_err(|e| {
                let why = match settings.context().last_error() {
                    Some(last) => format!(" (last error: {last})"),
                    None => String::new(),
                };
                unavailable(&format!("reaching {}{why}", settings.brokers), e)
            })?;
        Ok(Self {
            settings,
            message_timeout,
            producer: RwLock::new(CurrentProducer { generation: 0, inner: producer }),
            admin,
        })
    }

    /// After a failed append, starts over with a new producer when the old one is
    /// dead for good (a fatal idempotence error), or has nothing left in flight.
    ///
    /// The second case covers brokers that refuse the producer's state after an
    /// outage: librdkafka bumps the producer epoch by itself once records timed out,
    /// which Kafka accepts but tansu 0.6 (sqlite engine) does not, failing every
    /// later record of that producer. A new producer gets a new id from the broker.
    /// Waiting until nothing is in flight keeps the order of a key's records: the
    /// old producer can no longer deliver anything after the new one's.
    fn recover(&self, failed: &CurrentProducer) {
        let fatal = failed.inner.client().fatal_error();
        if fatal.is_none() && failed.inner.in_flight_count() > 0 {
            return;
        }
        let mut current = self.producer.write();
        if current.generation != failed.generation {
            return; // Another append replaced it already.
        }
        match self
            .settings
            .producer()
            .create_with_context::<_, FutureProducer<Context>>(self.settings.context())
        {
            Ok(inner) => {
                match &fatal {
                    Some((code, reason)) => tracing::warn!(?code, %reason, "kafka producer failed, replaced"),
                    None => tracing::debug!("kafka producer replaced after a failed append"),
                }
                let old = std::mem::replace(
                    &mut *current,
                    CurrentProducer { generation: failed.generation + 1, inner },
                );
                // Closing a producer joins its polling thread: not on an async worker.
                drop(tokio::task::spawn_blocking(move || drop(old)));
            }
            Err(e) => tracing::error!(error = %e, "cannot create a kafka producer"),
        }
    }

    async fn produce(
        &self,
        producer: &FutureProducer<Context>,
        topic: &str,
        records: &[Append],
    ) -> Result<()> {
        let failed = |e: KafkaError| unavailable(&format!("appending to {topic}"), e);
        // Queue every record first and only then wait: they share batches, and
        // idempotence keeps each partition's records in this order.
        let mut deliveries = Vec::with_capacity(records.len());
        let mut failure = None;
        'queue: for record in records {
            let mut message = FutureRecord::to(topic).key(&record.key[..]).payload(&record.value[..]);
            let queued_at = Instant::now();
            loop {
                match producer.send_result(message) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                        if queued_at.elapsed() < self.message_timeout =>
                    {
                        // The queue drains as deliveries complete.
                        message = returned;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err((e, _)) => {
                        failure = Some(failed(e));
                        break 'queue;
                    }
                }
            }
        }
        // Wait for every delivery report, even after a failure: when `append`
        // returns, none of its records is still on its way.
        for delivery in deliveries {
            let error = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => failed(e),
                Err(_) => Error::unavailable("kafka: the producer was closed"),
            };
            failure.get_or_insert(error);
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl KafkaEventLog {
    /// Waits (up to [`REQUEST_TIMEOUT`]) until the cluster's metadata lists every one
    /// of `topics` with its partitions. A topic another client is creating at the same
    /// moment may be "already there" before its partitions are: a consumer subscribed
    /// then is assigned nothing, and would only find out at its next metadata refresh.
    async fn wait_visible(&self, topics: &[&str]) -> Result<()> {
        let producer = self.producer.read().inner.clone();
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            let mut missing = topics.clone();
            while !missing.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::unavailable(format!(
                        "kafka: topics created but not in the metadata after {REQUEST_TIMEOUT:?}: {}",
                        missing.join(", ")
                    )));
                }
                let metadata = producer
                    .client()
                    .fetch_metadata(None, left)
                    .map_err(|e| unavailable("reading the topics' metadata", e))?;
                missing.retain(|name| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
                });
                if !missing.is_empty() {
                    std::thread::sleep(METADATA_RECHECK);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::unavailable_because("kafka: metadata task failed", e))?
    }
}

/// How long `wait_visible` waits before asking for the metadata again.
const METADATA_RECHECK: Duration = Duration::from_millis(50);

#[async_trait]
impl EventLog for KafkaEventLog {
    async fn append(&self, topic: &str, records: Vec<Append>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let producer = self.producer.read().clone();
        let result = self.produce(&producer.inner, topic, &records).await;
        if result.is_err() {
            self.recover(&producer);
        }
        result
    }

    async fn ensure_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        let replication = i32::from(self.settings.replication_factor);
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|name| NewTopic::new(name, partitions.max(1), TopicReplication::Fixed(replication)))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let results =
            self.admin.create_topics(&new, &options).await.map_err(|e| unavailable("creating topics", e))?;
        let mut failed = Vec::new();
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => failed.push(format!("{name}: {code}")),
            }
        }
        if !failed.is_empty() {
            return Err(Error::unavailable(format!("kafka: creating topics: {}", failed.join(", "))));
        }
        self.wait_visible(topics).await
    }

    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn LogConsumer>> {
        Ok(Box::new(KafkaConsumer::subscribe(&self.settings, group, topic)?))
    }
}
