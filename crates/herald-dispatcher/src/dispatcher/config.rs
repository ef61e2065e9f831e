//! The dispatcher's settings and the names of its topics.

use std::time::Duration;

use herald_backbone::EventLog;

use crate::{
    client::ClientConfig,
    schedule::{RetryAfterBounds, RetrySchedule},
};

/// Settings of the dispatcher (`[dispatcher]`).
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// The consumer group every replica joins.
    pub group: String,
    /// The topic channel events are read from.
    pub events_topic: String,
    /// Prefix of the dispatcher's own topics: `<prefix>.retry.<n>`, `<prefix>.parked`,
    /// `<prefix>.dead`.
    pub topic_prefix: String,
    /// Partitions of the dispatcher's topics when it creates them.
    pub partitions: i32,
    pub retry: RetrySchedule,
    pub retry_after: RetryAfterBounds,
    pub client: ClientConfig,
    /// Requests in flight per endpoint, unless the endpoint sets its own.
    pub endpoint_concurrency: u32,
    /// Deliveries waiting per endpoint; more are parked.
    pub endpoint_queue: usize,
    /// Records read but not finished, per topic consumer.
    pub max_in_flight: usize,
    /// A rate-limit wait longer than this parks the delivery instead.
    pub max_throttle_wait: Duration,
    /// Pusher format: most events per request, and how long a batch may gather.
    pub pusher_batch_max: usize,
    pub pusher_batch_window: Duration,
    /// How long an app's endpoint list is cached.
    pub endpoint_refresh: Duration,
    /// How often consumed positions are committed.
    pub commit_interval: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            group: "herald-dispatcher".into(),
            events_topic: "herald.events".into(),
            topic_prefix: "herald.webhooks".into(),
            partitions: 12,
            retry: RetrySchedule::default(),
            retry_after: RetryAfterBounds::default(),
            client: ClientConfig::default(),
            endpoint_concurrency: 16,
            endpoint_queue: 1_000,
            max_in_flight: 20_000,
            max_throttle_wait: Duration::from_secs(1),
            pusher_batch_max: 50,
            pusher_batch_window: Duration::from_millis(250),
            endpoint_refresh: Duration::from_secs(1),
            commit_interval: Duration::from_millis(200),
        }
    }
}

/// The names of the dispatcher's topics.
#[derive(Debug, Clone)]
pub struct Topics {
    pub retries: Vec<String>,
    pub parked: String,
    pub dead: String,
}

impl Topics {
    pub fn new(prefix: &str, retry: &RetrySchedule) -> Self {
        Self {
            retries: (0..retry.delays.len().max(1)).map(|i| format!("{prefix}.retry.{i}")).collect(),
            parked: format!("{prefix}.parked"),
            dead: format!("{prefix}.dead"),
        }
    }
}

/// Creates the topics the dispatcher reads and writes, if missing.
pub async fn ensure_topics(log: &dyn EventLog, config: &DispatcherConfig) -> herald_backbone::Result<()> {
    let topics = Topics::new(&config.topic_prefix, &config.retry);
    let mut all: Vec<&str> = vec![&config.events_topic, &topics.parked, &topics.dead];
    all.extend(topics.retries.iter().map(String::as_str));
    log.ensure_topics(&all, config.partitions).await
}
