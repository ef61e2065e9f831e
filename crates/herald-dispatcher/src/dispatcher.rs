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

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use herald_backbone::{EventLog, LogConsumer, LogRecord, Position};
use herald_core::Apps;
use herald_proto::v1::{ChannelEvent, Delivery};
use herald_telemetry::Metric;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use herald_webhooks::{
    delivery::{encode_delivery, webhook_id},
    endpoint::{Endpoint, Format, validate_url},
    filter::Filter,
    gcra::Rate,
    limiter::RateLimiter,
    store::{AttemptRecord, DeadLetter, WebhookStore},
};

use crate::{
    client::{Client, ClientConfig},
    format,
    limiter::Leases,
    schedule::{RetryAfterBounds, RetrySchedule, parse_retry_after},
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

    /// Every topic a delivery may wait in (read by the dispatcher).
    pub fn waiting(&self) -> impl Iterator<Item = &String> {
        self.retries.iter().chain(std::iter::once(&self.parked))
    }
}

/// Creates the topics the dispatcher reads and writes, if missing.
pub async fn ensure_topics(log: &dyn EventLog, config: &DispatcherConfig) -> herald_backbone::Result<()> {
    let topics = Topics::new(&config.topic_prefix, &config.retry);
    let mut all: Vec<&str> = vec![&config.events_topic, &topics.parked, &topics.dead];
    all.extend(topics.retries.iter().map(String::as_str));
    log.ensure_topics(&all, config.partitions).await
}

// ---------------------------------------------------------------------------------
// Offsets

/// Which records of each partition are still being worked on.
#[derive(Default)]
struct Offsets {
    partitions: HashMap<(Arc<str>, i32), PartitionOffsets>,
}

#[derive(Default)]
struct PartitionOffsets {
    pending: BTreeSet<i64>,
    /// One past the highest offset seen.
    end: i64,
    committed: i64,
}

impl Offsets {
    fn begin(&mut self, record: &LogRecord) {
        let partition = self.partitions.entry((record.topic.clone(), record.partition)).or_default();
        partition.pending.insert(record.offset);
        partition.end = partition.end.max(record.offset + 1);
    }

    fn finish(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.clone(), partition)) {
            p.pending.remove(&offset);
        }
    }

    /// Positions that moved since the last call: each partition's lowest record not
    /// finished (or its end when all are).
    fn committable(&mut self) -> Vec<Position> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            let next = p.pending.first().copied().unwrap_or(p.end);
            if next > p.committed {
                p.committed = next;
                out.push(Position { topic: topic.clone(), partition: *partition, next_offset: next });
            }
        }
        out
    }
}

/// Marks a record finished when the last delivery made from it is dropped, and gives
/// its slot of the consumer's in-flight budget back.
pub struct RecordAck {
    offsets: Arc<Mutex<Offsets>>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for RecordAck {
    fn drop(&mut self) {
        self.offsets.lock().finish(&self.topic, self.partition, self.offset);
    }
}

// ---------------------------------------------------------------------------------
// The dispatcher

/// One delivery on its way, with the records it finishes.
struct Job {
    delivery: Delivery,
    #[expect(dead_code, reason = "held for its Drop: the records finish when the job does")]
    acks: Vec<Arc<RecordAck>>,
}

/// An endpoint's queue and its Pusher batch being gathered.
struct EndpointQueue {
    jobs: mpsc::Sender<Job>,
    batch: Mutex<Option<PusherBatch>>,
}

struct PusherBatch {
    generation: u64,
    events: Vec<ChannelEvent>,
    acks: Vec<Arc<RecordAck>>,
    created_ms: i64,
}

struct CachedEndpoints {
    fetched: Instant,
    list: Arc<Vec<(Arc<Endpoint>, Filter)>>,
}

pub struct Dispatcher {
    apps: Apps,
    log: Arc<dyn EventLog>,
    store: Arc<dyn WebhookStore>,
    leases: Leases,
    client: Client,
    config: DispatcherConfig,
    topics: Topics,
    endpoints: Mutex<HashMap<String, CachedEndpoints>>,
    queues: Mutex<HashMap<String, Arc<EndpointQueue>>>,
    batches: std::sync::atomic::AtomicU64,
    /// Attempt records on their way to the store (one writer, so a delivery costs
    /// no task of its own for it).
    attempts: mpsc::Sender<(String, AttemptRecord)>,
    attempt_writer: Mutex<Option<mpsc::Receiver<(String, AttemptRecord)>>>,
    tasks: TaskTracker,
}

/// How long a consumer waits after a failed read of the log before reading again.
const POLL_RETRY: Duration = Duration::from_secs(1);

/// Attempt records that may wait for the store; more are dropped (and logged).
const ATTEMPTS_QUEUED: usize = 65_536;

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
            attempts,
            attempt_writer: Mutex::new(Some(attempt_writer)),
            apps,
            log,
            store,
            leases: Leases::new(limiter),
            client: Client::new(config.client.clone()),
            topics: Topics::new(&config.topic_prefix, &config.retry),
            config,
            endpoints: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            batches: std::sync::atomic::AtomicU64::new(0),
            tasks: TaskTracker::new(),
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
        let writer = self.attempt_writer.lock().take();
        let attempt_writer = writer.map(|records| {
            let store = self.store.clone();
            tokio::spawn(write_attempts(store, records))
        });
        let mut consumers = tokio::task::JoinSet::new();
        let mut topics = vec![(self.config.events_topic.clone(), true)];
        topics.extend(self.topics.waiting().map(|t| (t.clone(), false)));
        for (topic, events) in topics {
            let consumer = self.log.consume(&self.config.group, &topic).await?;
            let dispatcher = self.clone();
            let shutdown = shutdown.clone();
            consumers.spawn(async move { dispatcher.consume(consumer, events, shutdown, grace).await });
        }
        while let Some(result) = consumers.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "a dispatcher consumer failed");
            }
        }
        // The endpoint workers end once their queues are drained and closed.
        self.queues.lock().clear();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        if let Some(writer) = attempt_writer {
            // Whatever attempts are still queued get a moment to reach the store.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while !self.attempts.is_closed() && self.attempts.capacity() < ATTEMPTS_QUEUED {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            writer.abort();
        }
        Ok(())
    }

    fn record_attempt(&self, app_id: String, record: AttemptRecord) {
        if self.attempts.try_send((app_id, record)).is_err() {
            tracing::warn!("attempt records are backing up: one dropped");
        }
    }

    /// One topic's consumer loop. Event records become deliveries at once; waiting
    /// deliveries are held (in due order) until due.
    async fn consume(
        self: Arc<Self>,
        mut consumer: Box<dyn LogConsumer>,
        events: bool,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> herald_backbone::Result<()> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let budget = Arc::new(Semaphore::new(self.config.max_in_flight));
        let mut waiting: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
        let mut held: HashMap<u64, Job> = HashMap::new();
        let mut sequence = 0u64;
        let mut last_commit = Instant::now();
        while !shutdown.is_cancelled() {
            // Release what is due.
            let now = herald_core::time::now_ms();
            while let Some(Reverse((due, seq))) = waiting.peek().copied() {
                if due > now {
                    break;
                }
                waiting.pop();
                if let Some(job) = held.remove(&seq) {
                    self.enqueue(job);
                }
            }
            if last_commit.elapsed() >= self.config.commit_interval {
                self.commit(consumer.as_mut(), &offsets).await;
                last_commit = Instant::now();
            }
            // Wait for records (while the budget allows), for the next due delivery,
            // or for the next commit, whichever comes first.
            let next_due =
                waiting.peek().map(|Reverse((due, _))| Duration::from_millis((due - now).max(0) as u64));
            let wait = next_due.unwrap_or(self.config.commit_interval).min(self.config.commit_interval);
            let free = budget.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let records = tokio::select! {
                polled = tokio::time::timeout(wait, consumer.poll(free.min(512))) => match polled {
                    Ok(Ok(records)) => records,
                    // The log is unreachable (brokers down): what is in flight goes
                    // on; reading resumes when it is back.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not read the event log; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(POLL_RETRY) => continue,
                            _ = shutdown.cancelled() => break,
                        }
                    }
                    Err(_) => continue,
                },
                _ = shutdown.cancelled() => break,
            };
            for record in records {
                let Ok(slot) = budget.clone().try_acquire_owned() else {
                    // Cannot happen (we asked for at most `free`); if it does, the
                    // record is simply not acknowledged and is read again later.
                    break;
                };
                offsets.lock().begin(&record);
                let ack = Arc::new(RecordAck {
                    offsets: offsets.clone(),
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    _slot: slot,
                });
                if events {
                    self.route_event(&record, ack).await;
                } else {
                    match Delivery::decode(record.value.as_ref()) {
                        Ok(delivery) => {
                            sequence += 1;
                            waiting.push(Reverse((delivery.due_ms, sequence)));
                            held.insert(sequence, Job { delivery, acks: vec![ack] });
                        }
                        Err(e) => {
                            tracing::error!(error = %e, topic = %record.topic, "undecodable delivery skipped")
                        }
                    }
                }
            }
        }
        // Shutdown: what is held is not done (read again after a restart); what is in
        // flight gets the grace period to finish.
        drop(held);
        let deadline = Instant::now() + grace;
        while budget.available_permits() < self.config.max_in_flight && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.commit(consumer.as_mut(), &offsets).await;
        Ok(())
    }

    async fn commit(&self, consumer: &mut dyn LogConsumer, offsets: &Mutex<Offsets>) {
        let positions = offsets.lock().committable();
        if positions.is_empty() {
            return;
        }
        if let Err(e) = consumer.commit(&positions).await {
            // Not fatal: the next commit covers these positions too.
            tracing::warn!(error = %e, "could not commit consumed positions");
            let mut offsets = offsets.lock();
            for position in positions {
                if let Some(p) = offsets.partitions.get_mut(&(position.topic, position.partition)) {
                    p.committed = p.committed.min(position.next_offset - 1);
                }
            }
        }
    }

    /// Turns one event record into deliveries for the endpoints that want it.
    async fn route_event(self: &Arc<Self>, record: &LogRecord, ack: Arc<RecordAck>) {
        let event = match ChannelEvent::decode(record.value.as_ref()) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "undecodable channel event skipped");
                return;
            }
        };
        match self.endpoints_of(&event.app_id).await {
            Ok(endpoints) => self.route_to(&endpoints, &event, ack),
            Err(e) => {
                // Without the endpoint list nothing can be decided: keep the record
                // unfinished (it is read again after a restart) and try again.
                tracing::warn!(error = %e, "endpoint list unavailable; retrying the event");
                let dispatcher = self.clone();
                self.tasks.spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(endpoints) = dispatcher.endpoints_of(&event.app_id).await {
                            return dispatcher.route_to(&endpoints, &event, ack);
                        }
                    }
                });
            }
        }
    }

    fn route_to(
        self: &Arc<Self>,
        endpoints: &[(Arc<Endpoint>, Filter)],
        event: &ChannelEvent,
        ack: Arc<RecordAck>,
    ) {
        for (endpoint, filter) in endpoints {
            if !endpoint.enabled || !format::wants(endpoint, filter, event) {
                continue;
            }
            match endpoint.format {
                Format::StandardWebhooks => {
                    let delivery = Delivery {
                        id: webhook_id(&event.id, &endpoint.id),
                        app_id: event.app_id.clone(),
                        endpoint_id: endpoint.id.clone(),
                        created_ms: event.time_ms,
                        events: vec![event.clone()],
                        ..Delivery::default()
                    };
                    self.enqueue(Job { delivery, acks: vec![ack.clone()] });
                }
                Format::Pusher => self.gather(endpoint, event.clone(), ack.clone()),
            }
        }
    }

    /// The enabled endpoints of an app, cached for `endpoint_refresh`.
    async fn endpoints_of(
        &self,
        app_id: &str,
    ) -> herald_webhooks::store::Result<Arc<Vec<(Arc<Endpoint>, Filter)>>> {
        if let Some(cached) = self.endpoints.lock().get(app_id)
            && cached.fetched.elapsed() < self.config.endpoint_refresh
        {
            return Ok(cached.list.clone());
        }
        let list: Vec<(Arc<Endpoint>, Filter)> = self
            .store
            .list_endpoints(app_id)
            .await?
            .into_iter()
            .map(|e| {
                let filter = e.filter();
                (Arc::new(e), filter)
            })
            .collect();
        let list = Arc::new(list);
        self.endpoints
            .lock()
            .insert(app_id.to_owned(), CachedEndpoints { fetched: Instant::now(), list: list.clone() });
        Ok(list)
    }

    async fn endpoint(&self, app_id: &str, id: &str) -> Option<Arc<Endpoint>> {
        match self.endpoints_of(app_id).await {
            Ok(list) => list.iter().find(|(e, _)| e.id == id).map(|(e, _)| e.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "endpoint lookup failed");
                None
            }
        }
    }

    /// Adds a Pusher-format event to the endpoint's batch; the batch goes when full or
    /// when its window ends.
    fn gather(self: &Arc<Self>, endpoint: &Endpoint, event: ChannelEvent, ack: Arc<RecordAck>) {
        let queue = self.queue(&endpoint.app_id, &endpoint.id);
        let mut slot = queue.batch.lock();
        let started = slot.is_none();
        let batch = slot.get_or_insert_with(|| PusherBatch {
            generation: self.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            events: Vec::new(),
            acks: Vec::new(),
            created_ms: event.time_ms,
        });
        batch.events.push(event);
        batch.acks.push(ack);
        if batch.events.len() >= self.config.pusher_batch_max {
            if let Some(batch) = slot.take() {
                drop(slot);
                self.enqueue(self.batch_job(endpoint, batch));
            }
            return;
        }
        if started {
            let generation = batch.generation;
            let dispatcher = self.clone();
            let endpoint = endpoint.clone();
            let window = self.config.pusher_batch_window;
            self.tasks.spawn(async move {
                tokio::time::sleep(window).await;
                let queue = dispatcher.queue(&endpoint.app_id, &endpoint.id);
                let batch = {
                    let mut slot = queue.batch.lock();
                    match slot.as_ref() {
                        Some(b) if b.generation == generation => slot.take(),
                        _ => None,
                    }
                };
                if let Some(batch) = batch {
                    dispatcher.enqueue(dispatcher.batch_job(&endpoint, batch));
                }
            });
        }
    }

    fn batch_job(&self, endpoint: &Endpoint, batch: PusherBatch) -> Job {
        let first = batch.events.first().map(|e| e.id.as_str()).unwrap_or_default();
        let delivery = Delivery {
            id: webhook_id(first, &endpoint.id),
            app_id: endpoint.app_id.clone(),
            endpoint_id: endpoint.id.clone(),
            created_ms: batch.created_ms,
            events: batch.events,
            ..Delivery::default()
        };
        Job { delivery, acks: batch.acks }
    }

    /// The queue (and worker) of an endpoint, started on first use.
    fn queue(self: &Arc<Self>, app_id: &str, endpoint_id: &str) -> Arc<EndpointQueue> {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get(endpoint_id) {
            return queue.clone();
        }
        let (jobs, receiver) = mpsc::channel(self.config.endpoint_queue.max(1));
        let queue = Arc::new(EndpointQueue { jobs, batch: Mutex::new(None) });
        queues.insert(endpoint_id.to_owned(), queue.clone());
        let dispatcher = self.clone();
        let (app_id, endpoint_id) = (app_id.to_owned(), endpoint_id.to_owned());
        self.tasks.spawn(async move { dispatcher.work(app_id, endpoint_id, receiver).await });
        queue
    }

    /// Hands a job to its endpoint's queue; a full queue parks it.
    fn enqueue(self: &Arc<Self>, job: Job) {
        let queue = self.queue(&job.delivery.app_id, &job.delivery.endpoint_id);
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            queue.jobs.try_send(job)
        {
            let due = herald_core::time::now_ms() + 1_000;
            self.park(job, due, "busy");
        }
    }

    /// An endpoint's worker: takes its jobs in order, waits for the rate limits and a
    /// concurrency slot, and starts each attempt.
    async fn work(self: Arc<Self>, app_id: String, endpoint_id: String, mut jobs: mpsc::Receiver<Job>) {
        let cap = |endpoint: Option<&Endpoint>| match endpoint {
            Some(e) if e.max_concurrency > 0 => e.max_concurrency as usize,
            _ => (self.config.endpoint_concurrency as usize).max(1),
        };
        let mut concurrency = cap(self.endpoint(&app_id, &endpoint_id).await.as_deref());
        let slots = Arc::new(Semaphore::new(concurrency));
        'jobs: while let Some(job) = jobs.recv().await {
            let endpoint = self.endpoint(&app_id, &endpoint_id).await;
            // An updated cap applies from the next delivery (a lower one as the
            // requests in flight finish).
            let wanted = cap(endpoint.as_deref());
            if wanted > concurrency {
                slots.add_permits(wanted - concurrency);
            } else if wanted < concurrency {
                let mut shed = concurrency - wanted;
                while shed > 0 {
                    let Ok(permit) = slots.clone().acquire_owned().await else { return };
                    permit.forget();
                    shed -= 1;
                }
            }
            concurrency = wanted;
            loop {
                match self.throttle(&app_id, endpoint.as_deref()).await {
                    None => break,
                    Some(wait) if wait > self.config.max_throttle_wait => {
                        self.park(job, herald_core::time::now_ms() + wait.as_millis() as i64, "throttled");
                        continue 'jobs;
                    }
                    Some(wait) => tokio::time::sleep(wait).await,
                }
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let dispatcher = self.clone();
            self.tasks.spawn(async move {
                dispatcher.attempt(job, endpoint).await;
                drop(slot);
            });
        }
    }

    /// Takes one cell of the app's limit and the endpoint's: `None` when both allow a
    /// delivery now, else how long to wait.
    async fn throttle(&self, app_id: &str, endpoint: Option<&Endpoint>) -> Option<Duration> {
        let app_rate =
            self.apps.by_id(app_id).filter(|app| app.limits.webhooks_per_second > 0).and_then(|app| {
                Rate::new(f64::from(app.limits.webhooks_per_second), app.limits.webhooks_burst).ok()
            });
        let endpoint_rate = endpoint
            .filter(|e| e.rate_per_second > 0.0)
            .and_then(|e| Rate::new(e.rate_per_second, (e.rate_per_second.ceil() as u32).clamp(1, 100)).ok());
        if let Some(rate) = app_rate
            && let Some(wait) = self.take(&format!("app:{app_id}"), rate).await
        {
            return Some(wait);
        }
        if let (Some(rate), Some(endpoint)) = (endpoint_rate, endpoint)
            && let Some(wait) = self.take(&format!("endpoint:{}", endpoint.id), rate).await
        {
            return Some(wait);
        }
        None
    }

    /// One cell of a limit: `None` when taken, else how long to wait.
    async fn take(&self, key: &str, rate: Rate) -> Option<Duration> {
        match self.leases.take_one(key, rate).await {
            Ok(wait) => wait,
            Err(e) => {
                // The shared limit is unreachable: wait a little rather than send
                // unlimited.
                tracing::warn!(error = %e, "rate limiter unavailable");
                Some(Duration::from_millis(500))
            }
        }
    }

    /// One attempt of a job, and what follows from its outcome.
    async fn attempt(self: Arc<Self>, mut job: Job, endpoint: Option<Arc<Endpoint>>) {
        let delivery = &job.delivery;
        let Some(endpoint) = endpoint else {
            tracing::info!(endpoint = %delivery.endpoint_id, "endpoint deleted: delivery dropped");
            return;
        };
        if !endpoint.enabled {
            return self.dead_letter(job, "the endpoint is disabled".into()).await;
        }
        let Some(app) = self.apps.by_id(&delivery.app_id) else {
            tracing::info!(app = %delivery.app_id, "app removed: delivery dropped");
            return;
        };
        let target = match validate_url(&endpoint.url) {
            Ok(target) => target,
            Err(e) => return self.dead_letter(job, e).await,
        };
        let prepared = match format::prepare(delivery, &endpoint, app, herald_core::time::now_ms()) {
            Ok(prepared) => prepared,
            Err(e) => return self.dead_letter(job, e).await,
        };
        job.delivery.attempt += 1;
        let started = Instant::now();
        // Boxed: the request future is large, and this one is moved into a task.
        let result = Box::pin(self.client.post(&target, prepared.headers, prepared.body)).await;
        let latency = started.elapsed();
        let mut record = AttemptRecord {
            webhook_id: job.delivery.id.clone(),
            endpoint_id: endpoint.id.clone(),
            attempt: job.delivery.attempt,
            time_ms: herald_core::time::now_ms(),
            status: 0,
            latency_ms: latency.as_millis().min(u128::from(u32::MAX)) as u32,
            response_excerpt: String::new(),
            error: String::new(),
        };
        let outcome = match &result {
            Ok(response) => {
                record.status = response.status.as_u16();
                record.response_excerpt = response.excerpt.clone();
                if response.status.is_success() {
                    "success"
                } else if response.status == http::StatusCode::GONE {
                    "gone"
                } else {
                    record.error = format!("HTTP {}", response.status.as_u16());
                    "failure"
                }
            }
            Err(e) => {
                record.error = e.to_string();
                if e.is_refused() { "refused" } else { "failure" }
            }
        };
        metrics::counter!(Metric::WebhookAttempts.name(), "outcome" => outcome).increment(1);
        self.record_attempt(job.delivery.app_id.clone(), record.clone());
        match result {
            Ok(response) if response.status.is_success() => {
                let age = (herald_core::time::now_ms() - job.delivery.created_ms).max(0) as f64 / 1000.0;
                metrics::histogram!(Metric::WebhookLatency.name()).record(age);
            }
            Ok(response) if response.status == http::StatusCode::GONE => {
                self.disable(&endpoint, "the endpoint answered 410 Gone").await;
                self.dead_letter(job, "HTTP 410 Gone: endpoint disabled".into()).await;
            }
            Ok(response) => {
                let retry_after = matches!(response.status.as_u16(), 429 | 503)
                    .then(|| response.headers.get(http::header::RETRY_AFTER))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
                    .map(|d| self.config.retry_after.clamp(d));
                self.retry(job, record.error, retry_after).await;
            }
            Err(e) => self.retry(job, e.to_string(), None).await,
        }
    }

    /// After a failed attempt: the next retry tier, or the dead letters when the
    /// schedule is exhausted.
    async fn retry(&self, mut job: Job, error: String, retry_after: Option<Duration>) {
        let Some(delay) = self.config.retry.delay_after(job.delivery.attempt) else {
            return self.dead_letter(job, error).await;
        };
        let delay = retry_after.unwrap_or(delay);
        job.delivery.due_ms = herald_core::time::now_ms() + delay.as_millis() as i64;
        job.delivery.last_error = error;
        let tier = (job.delivery.attempt as usize).saturating_sub(1).min(self.topics.retries.len() - 1);
        metrics::counter!(Metric::WebhookRetries.name(), "reason" => "failure").increment(1);
        self.hand_over(&self.topics.retries[tier], &job.delivery).await;
    }

    /// Parks a job (full queue, long rate-limit wait) without counting an attempt.
    fn park(self: &Arc<Self>, mut job: Job, due_ms: i64, reason: &'static str) {
        job.delivery.due_ms = due_ms;
        metrics::counter!(Metric::WebhookRetries.name(), "reason" => reason).increment(1);
        let dispatcher = self.clone();
        self.tasks.spawn(async move {
            dispatcher.hand_over(&dispatcher.topics.parked, &job.delivery).await;
            drop(job);
        });
    }

    async fn dead_letter(&self, mut job: Job, error: String) {
        job.delivery.failed_ms = herald_core::time::now_ms();
        job.delivery.last_error = error.clone();
        metrics::counter!(Metric::WebhookDeadLetters.name()).increment(1);
        tracing::info!(webhook_id = %job.delivery.id, endpoint = %job.delivery.endpoint_id, %error, "dead-lettered");
        self.hand_over(&self.topics.dead, &job.delivery).await;
        let dead = DeadLetter {
            webhook_id: job.delivery.id.clone(),
            endpoint_id: job.delivery.endpoint_id.clone(),
            failed_ms: job.delivery.failed_ms,
            attempts: job.delivery.attempt,
            last_error: error,
            event_types: job
                .delivery
                .events
                .iter()
                .filter_map(format::event_type)
                .map(|t| t.as_str().to_owned())
                .collect(),
            delivery: job.delivery.encode_to_vec(),
        };
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = self.store.put_dead_letter(&job.delivery.app_id, &dead).await {
            tracing::warn!(error = %e, "could not record a dead letter; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Appends a delivery to a topic, retrying until it is durable: the records it
    /// finishes stay unfinished until then.
    async fn hand_over(&self, topic: &str, delivery: &Delivery) {
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = self.log.append(topic, vec![encode_delivery(delivery)]).await {
            tracing::warn!(error = %e, topic, "could not hand a delivery over; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn disable(&self, endpoint: &Endpoint, reason: &str) {
        let mut disabled = endpoint.clone();
        disabled.enabled = false;
        disabled.disabled_reason = reason.to_owned();
        disabled.updated_ms = herald_core::time::now_ms();
        if let Err(e) = self.store.put_endpoint(&disabled).await {
            tracing::warn!(error = %e, "could not disable an endpoint");
        }
        self.endpoints.lock().remove(&endpoint.app_id);
        tracing::warn!(endpoint = %endpoint.id, app = %endpoint.app_id, reason, "endpoint disabled");
    }
}

/// Writes attempt records to the store, one after another.
async fn write_attempts(store: Arc<dyn WebhookStore>, mut records: mpsc::Receiver<(String, AttemptRecord)>) {
    while let Some((app_id, record)) = records.recv().await {
        if let Err(e) = store.record_attempt(&app_id, &record).await {
            tracing::warn!(error = %e, "could not record a delivery attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> LogRecord {
        LogRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            key: bytes::Bytes::new(),
            value: bytes::Bytes::new(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn a_partition_commits_up_to_its_lowest_unfinished_record() {
        let mut offsets = Offsets::default();
        for offset in 0..5 {
            offsets.begin(&record(offset));
        }
        let topic: Arc<str> = "t".into();
        offsets.finish(&topic, 0, 1);
        offsets.finish(&topic, 0, 2);
        assert!(offsets.committable().is_empty(), "0 is not finished");
        offsets.finish(&topic, 0, 0);
        assert_eq!(offsets.committable()[0].next_offset, 3);
        offsets.finish(&topic, 0, 4);
        offsets.finish(&topic, 0, 3);
        assert_eq!(offsets.committable()[0].next_offset, 5);
        assert!(offsets.committable().is_empty(), "nothing moved");
        // A record read again after a rebalance is simply worked on again.
        offsets.begin(&record(4));
        assert!(offsets.committable().is_empty());
        offsets.finish(&topic, 0, 4);
        assert!(offsets.committable().is_empty());
    }
}
