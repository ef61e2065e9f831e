//! The dispatcher: from event log records to HTTP deliveries.
//!
//! ```text
//!  events topic ──► match endpoints ──► endpoint queue ──► app limit, endpoint limit
//!  retry tiers ──► wait until due ──┘      (bounded)        ──► concurrency cap ──► POST
//!                                                                                  │
//!      2xx: done · failure: next retry tier (or dead letter) · 410: disable + dead letter
//! ```
//!
//! **At least once.** A record's offset is committed only when every delivery made
//! from it is finished: delivered, appended to a retry tier, or dead-lettered
//! (appended to the dead-letter topic and recorded in the store). Each delivery holds
//! a [`RecordAck`]; the last one dropped marks the record done, and a partition is
//! committed up to its lowest record not done. A crash redelivers from there, with
//! the same `webhook-id`.
//!
//! **No head-of-line blocking.** A failed delivery waits in a retry tier (a topic per
//! step of the schedule), never in its partition. Each endpoint has its own bounded
//! queue and concurrency cap, each app its own rate limit: a full queue, or a wait
//! for the limit longer than `max_throttle_wait`, parks the delivery in the `parked`
//! topic with its attempt count unchanged, so a noisy app or a slow endpoint never
//! holds up the partition other apps' events travel in.

//!
//! | file | what |
//! |---|---|
//! | `config` | [`DispatcherConfig`], the topic names, [`ensure_topics`] |
//! | `offsets` | which records are finished, so how far a partition is committed |
//! | `consumer` | one loop per topic: records in, due deliveries out, commits |
//! | `routing` | an event to the endpoints that want it; the endpoint cache |
//! | `batcher` | Pusher-format batches |
//! | `worker` | an endpoint's queue, rate limits and concurrency cap |
//! | `attempt` | one POST, its outcome, and retry, park, dead letter or disable |

mod attempt;
mod batcher;
mod config;
mod consumer;
mod offsets;
mod routing;
mod worker;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use herald_backbone::EventLog;
use herald_core::Apps;
use herald_proto::v1::Delivery;
use parking_lot::Mutex;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use herald_webhooks::{
    limiter::RateLimiter,
    store::{AttemptRecord, WebhookStore},
};

pub use self::{
    config::{DispatcherConfig, Topics, ensure_topics},
    offsets::RecordAck,
};
use self::{consumer::Queue, routing::EndpointCache, worker::EndpointQueue};
use crate::{client::Client, limiter::Leases};

/// One delivery on its way, with the records it finishes.
struct Job {
    delivery: Delivery,
    /// Held for their `Drop`: the records finish when the job does.
    _acks: Vec<Arc<RecordAck>>,
}

/// Attempt records on their way to the store.
type AttemptQueue = mpsc::Sender<(String, AttemptRecord)>;

pub struct Dispatcher {
    apps: Apps,
    log: Arc<dyn EventLog>,
    store: Arc<dyn WebhookStore>,
    leases: Leases,
    client: Client,
    config: DispatcherConfig,
    topics: Topics,
    endpoints: EndpointCache,
    queues: Mutex<HashMap<String, Arc<EndpointQueue>>>,
    batches: AtomicU64,
    /// Attempt records on their way to the store (one writer, so a delivery costs no
    /// task of its own for it). `None` once the dispatcher has stopped: dropping the
    /// sender is what lets the writer finish.
    attempts: Mutex<Option<AttemptQueue>>,
    attempt_writer: Mutex<Option<mpsc::Receiver<(String, AttemptRecord)>>>,
    /// Endpoint workers, attempts, batch windows, hand-overs.
    tasks: TaskTracker,
    /// Cancelled when the grace period is over: writes still retrying give up (their
    /// records stay uncommitted, so they are read again after a restart).
    halt: CancellationToken,
}

/// Attempt records that may wait for the store; more are dropped (and logged).
const ATTEMPTS_QUEUED: usize = 65_536;

/// After the grace period, how long the attempt records still queued get to reach the
/// store.
const ATTEMPTS_FLUSH: Duration = Duration::from_millis(500);

impl Dispatcher {
    pub fn new(
        apps: Apps,
        log: Arc<dyn EventLog>,
        store: Arc<dyn WebhookStore>,
        limiter: Arc<dyn RateLimiter>,
        config: DispatcherConfig,
    ) -> Arc<Self> {
        let (attempts, attempt_writer) = mpsc::channel(ATTEMPTS_QUEUED);
        Arc::new(Self {
            attempts: Mutex::new(Some(attempts)),
            attempt_writer: Mutex::new(Some(attempt_writer)),
            apps,
            log,
            store,
            leases: Leases::new(limiter),
            client: Client::new(config.client.clone()),
            topics: Topics::new(&config.topic_prefix, &config.retry),
            endpoints: EndpointCache::new(config.endpoint_refresh),
            config,
            queues: Mutex::new(HashMap::new()),
            batches: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            halt: CancellationToken::new(),
        })
    }

    /// Consumes the events topic and every waiting topic until `shutdown`, then stops
    /// reading, waits up to `grace` for deliveries in flight and commits what is done.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> herald_backbone::Result<()> {
        ensure_topics(self.log.as_ref(), &self.config).await?;
        // Owned here: dropped (so aborted) with `run` if it fails early.
        let mut writer = JoinSet::new();
        if let Some(records) = self.attempt_writer.lock().take() {
            writer.spawn(attempt::write_attempts(self.store.clone(), records));
        }
        let mut consumers = JoinSet::new();
        let mut topics = vec![(self.config.events_topic.clone(), Queue::Events)];
        topics.extend(self.topics.retries.iter().map(|t| (t.clone(), Queue::Retry)));
        topics.push((self.topics.parked.clone(), Queue::Parked));
        for (topic, queue) in topics {
            let consumer = self.log.consume(&self.config.group, &topic).await?;
            let dispatcher = self.clone();
            let shutdown = shutdown.clone();
            consumers.spawn(async move { dispatcher.consume(consumer, queue, shutdown, grace).await });
        }
        while let Some(result) = consumers.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "a dispatcher consumer failed");
            }
        }
        // The endpoint workers end once their queues are drained and closed.
        self.queues.lock().clear();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::info!("dispatcher tasks still running after the grace period");
        }
        // Every consumer has made its last commit: what is abandoned now is read
        // again after a restart.
        self.halt.cancel();
        // No attempt is recorded from here on; the writer ends once it has written
        // what is queued.
        drop(self.attempts.lock().take());
        if tokio::time::timeout(ATTEMPTS_FLUSH, writer.join_next()).await.is_err() {
            tracing::warn!("attempt records still queued at shutdown were not written");
        }
        Ok(())
    }
}
