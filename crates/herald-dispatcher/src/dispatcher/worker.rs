//! Endpoint queues and their workers: each endpoint has a bounded queue, a worker that
//! takes its jobs in order, waits for the app's and the endpoint's rate limits and for
//! one of the endpoint's concurrency slots, then starts the attempt.
//!
//! A worker lives as long as its endpoint: when the endpoint is deleted (gone from its
//! app's endpoint list) the worker removes its queue and ends, dropping what waited in
//! it, as an attempt would have.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};

use herald_telemetry::Metric;
use herald_webhooks::{endpoint::Endpoint, gcra::Rate};

use super::{Dispatcher, Job, batcher::PusherBatch};

/// An endpoint's queue and its Pusher batch being gathered.
pub(super) struct EndpointQueue {
    jobs: mpsc::Sender<Job>,
    pub(super) batch: Mutex<Option<PusherBatch>>,
}

/// An idle worker checks that its endpoint still exists every `endpoint_refresh` times
/// this (at least [`MIN_IDLE_CHECK`]): often enough that deleted endpoints do not pile
/// up workers, rarely enough that idle endpoints cost next to no store reads.
const IDLE_CHECK_FACTOR: u32 = 10;
const MIN_IDLE_CHECK: Duration = Duration::from_millis(100);

/// How long a parked delivery waits when its endpoint was busy.
const BUSY_PARK_MS: i64 = 1_000;

impl Dispatcher {
    /// The queue (and worker) of an endpoint, started on first use.
    pub(super) fn queue(self: &Arc<Self>, app_id: &str, endpoint_id: &str) -> Arc<EndpointQueue> {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get(endpoint_id) {
            return queue.clone();
        }
        let (jobs, receiver) = mpsc::channel(self.config.endpoint_queue.max(1));
        let queue = Arc::new(EndpointQueue { jobs, batch: Mutex::new(None) });
        queues.insert(endpoint_id.to_owned(), queue.clone());
        let dispatcher = self.clone();
        let (app_id, endpoint_id) = (app_id.to_owned(), endpoint_id.to_owned());
        let own = Arc::downgrade(&queue);
        self.tasks.spawn(async move { dispatcher.work(app_id, endpoint_id, own, receiver).await });
        queue
    }

    /// The queue of an endpoint, if it has one now.
    pub(super) fn existing_queue(&self, endpoint_id: &str) -> Option<Arc<EndpointQueue>> {
        self.queues.lock().get(endpoint_id).cloned()
    }

    /// Endpoints that have a queue and a worker now.
    #[cfg(test)]
    pub(super) fn queued_endpoints(&self) -> usize {
        self.queues.lock().len()
    }

    /// Hands a job to its endpoint's queue; a full queue parks it.
    pub(super) fn enqueue(self: &Arc<Self>, job: Job) {
        let queue = self.queue(&job.delivery.app_id, &job.delivery.endpoint_id);
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            queue.jobs.try_send(job)
        {
            self.park(job, herald_core::time::now_ms() + BUSY_PARK_MS, "busy");
        }
    }

    /// Removes the worker's own queue (not a newer one of the same endpoint).
    fn evict(&self, endpoint_id: &str, own: &Weak<EndpointQueue>) {
        let mut queues = self.queues.lock();
        if queues.get(endpoint_id).is_some_and(|queue| std::ptr::eq(Arc::as_ptr(queue), own.as_ptr())) {
            queues.remove(endpoint_id);
        }
    }

    /// An endpoint's worker: takes its jobs in order, waits for the rate limits and a
    /// concurrency slot, and starts each attempt; ends when its endpoint is gone or
    /// its queue is closed (at shutdown).
    async fn work(
        self: Arc<Self>,
        app_id: String,
        endpoint_id: String,
        own: Weak<EndpointQueue>,
        mut jobs: mpsc::Receiver<Job>,
    ) {
        let idle_check = self.config.endpoint_refresh.saturating_mul(IDLE_CHECK_FACTOR).max(MIN_IDLE_CHECK);
        let cap = |endpoint: &Endpoint| match endpoint.max_concurrency {
            0 => (self.config.endpoint_concurrency as usize).max(1),
            n => n as usize,
        };
        let slots = Arc::new(Semaphore::new(0));
        let mut concurrency = 0;
        'jobs: loop {
            let next = tokio::select! {
                job = jobs.recv() => job,
                () = tokio::time::sleep(idle_check) => {
                    if let Ok(None) = self.endpoints.get(self.store.as_ref(), &app_id, &endpoint_id).await {
                        break 'jobs;
                    }
                    continue 'jobs;
                }
            };
            let Some(job) = next else { return };
            let route = match self.endpoints.get(self.store.as_ref(), &app_id, &endpoint_id).await {
                Ok(Some(route)) => route,
                Ok(None) => {
                    tracing::info!(endpoint = %endpoint_id, "endpoint deleted: delivery dropped");
                    break 'jobs;
                }
                Err(e) => {
                    // Nothing can be decided without the endpoint: try again later,
                    // without counting an attempt.
                    tracing::warn!(error = %e, "endpoint lookup failed");
                    self.park(job, herald_core::time::now_ms() + BUSY_PARK_MS, "busy");
                    continue 'jobs;
                }
            };
            // An updated cap applies from the next delivery (a lower one as the
            // requests in flight finish).
            let wanted = cap(&route.endpoint);
            if wanted > concurrency {
                slots.add_permits(wanted - concurrency);
            } else {
                for _ in wanted..concurrency {
                    let Ok(permit) = slots.clone().acquire_owned().await else { return };
                    permit.forget();
                }
            }
            concurrency = wanted;
            loop {
                match self.throttle(&app_id, &route.endpoint).await {
                    None => break,
                    Some(wait) if wait > self.config.max_throttle_wait => {
                        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                        self.park(job, herald_core::time::now_ms().saturating_add(wait_ms), "throttled");
                        continue 'jobs;
                    }
                    Some(wait) => tokio::time::sleep(wait).await,
                }
            }
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let dispatcher = self.clone();
            self.tasks.spawn(async move {
                dispatcher.attempt(job, route).await;
                drop(slot);
            });
        }
        // The endpoint is gone: so are its queue and whatever waited in it (the
        // records those jobs came from are finished as they are dropped).
        self.evict(&endpoint_id, &own);
        jobs.close();
        while jobs.try_recv().is_ok() {}
    }

    /// Takes one cell of the app's limit and the endpoint's: `None` when both allow a
    /// delivery now, else how long to wait.
    async fn throttle(&self, app_id: &str, endpoint: &Endpoint) -> Option<Duration> {
        let app_rate =
            self.apps.by_id(app_id).filter(|app| app.limits.webhooks_per_second > 0).and_then(|app| {
                Rate::new(f64::from(app.limits.webhooks_per_second), app.limits.webhooks_burst).ok()
            });
        let endpoint_rate = (endpoint.rate_per_second > 0.0)
            .then(|| {
                Rate::new(endpoint.rate_per_second, (endpoint.rate_per_second.ceil() as u32).clamp(1, 100))
                    .ok()
            })
            .flatten();
        if let Some(rate) = app_rate
            && let Some(wait) = self.take(&format!("app:{app_id}"), rate).await
        {
            return Some(throttled("app", wait));
        }
        if let Some(rate) = endpoint_rate
            && let Some(wait) = self.take(&format!("endpoint:{}", endpoint.id), rate).await
        {
            return Some(throttled("endpoint", wait));
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
}

/// Counts a wait for the `limit` (`app` or `endpoint`) rate limit.
fn throttled(limit: &'static str, wait: Duration) -> Duration {
    metrics::counter!(Metric::WebhookThrottled.name(), "limit" => limit).increment(1);
    metrics::histogram!(Metric::WebhookThrottleWait.name(), "limit" => limit).record(wait.as_secs_f64());
    wait
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use herald_backbone::{LogRecord, MemoryEventLog};
    use herald_core::Apps;
    use herald_proto::v1::Delivery;
    use herald_webhooks::{
        endpoint::Format,
        limiter::LocalRateLimiter,
        store::{MemoryWebhookStore, WebhookStore},
    };

    use super::{super::offsets::Offsets, *};
    use crate::dispatcher::{DispatcherConfig, RecordAck};

    fn dispatcher(store: &MemoryWebhookStore) -> Arc<Dispatcher> {
        let config =
            DispatcherConfig { endpoint_refresh: Duration::from_millis(50), ..DispatcherConfig::default() };
        Dispatcher::new(
            Apps::new([herald_testkit::app("a")]).unwrap(),
            Arc::new(MemoryEventLog::new()),
            Arc::new(store.clone()),
            Arc::new(LocalRateLimiter::default()),
            config,
        )
    }

    fn job(endpoint_id: &str, ack: Option<RecordAck>) -> Job {
        let delivery =
            Delivery { app_id: "a".into(), endpoint_id: endpoint_id.into(), ..Delivery::default() };
        Job { delivery, _acks: ack.into_iter().map(Arc::new).collect() }
    }

    /// Waits until `done`. Time is paused (the timers are the worker's): each pause
    /// moves tokio's clock on, and the deadline, on the real clock, only bounds a hang.
    async fn until(done: impl Fn() -> bool) {
        let deadline = herald_testkit::Deadline::after(herald_testkit::WAIT);
        while !done() {
            deadline.poll_again(|| "the worker's state".to_owned()).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_for_an_endpoint_that_is_gone_ends_its_worker_and_finishes_its_record() {
        let store = MemoryWebhookStore::default();
        let d = dispatcher(&store);
        let budget = Arc::new(Semaphore::new(1));
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let record = LogRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: bytes::Bytes::new(),
            value: bytes::Bytes::new(),
            timestamp_ms: 0,
        };
        let ack = RecordAck::begin(&offsets, &record, budget.clone().try_acquire_owned().unwrap());
        d.enqueue(job("ep_deleted", Some(ack)));
        assert_eq!(d.queued_endpoints(), 1);
        until(|| d.queued_endpoints() == 0).await;
        until(|| budget.available_permits() == 1).await;
        assert_eq!(offsets.lock().committable()[0].next_offset, 1, "the record is finished");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_ends_when_its_endpoint_is_deleted_and_only_then() {
        let store = MemoryWebhookStore::default();
        let kept = Endpoint::new("ep_kept".into(), "a", "http://192.0.2.1/", Format::StandardWebhooks, "");
        let deleted =
            Endpoint::new("ep_deleted".into(), "a", "http://192.0.2.1/", Format::StandardWebhooks, "");
        store.put_endpoint(&kept).await.unwrap();
        store.put_endpoint(&deleted).await.unwrap();
        let d = dispatcher(&store);
        d.queue("a", "ep_kept");
        d.queue("a", "ep_deleted");
        // Several idle checks: both endpoints exist, both workers stay.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(d.queued_endpoints(), 2);
        store.delete_endpoint("a", "ep_deleted").await.unwrap();
        until(|| d.existing_queue("ep_deleted").is_none()).await;
        assert!(d.existing_queue("ep_kept").is_some());
        // Used again (an endpoint of the same id created anew): a new worker.
        d.queue("a", "ep_deleted");
        assert_eq!(d.queued_endpoints(), 2);
    }
}
