//! One consumer loop per topic: event records become deliveries at once, waiting
//! deliveries (retry tiers, parked) are held until due, and finished records are
//! committed.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use herald_backbone::LogConsumer;
use herald_proto::v1::Delivery;
use herald_telemetry::Metric;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    Dispatcher, Job,
    offsets::{Offsets, RecordAck},
};

/// How long a consumer waits after a failed read of the log before reading again.
const POLL_RETRY: Duration = Duration::from_secs(1);

/// Records asked for in one read.
const POLL_MAX: usize = 512;

/// Items held until their due time (milliseconds since the epoch), released in due
/// order; items due at the same time come out in the order they went in.
pub(super) struct DueQueue<T> {
    items: BTreeMap<(i64, u64), T>,
    /// Breaks ties between equal due times, in arrival order.
    sequence: u64,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        Self { items: BTreeMap::new(), sequence: 0 }
    }
}

impl<T> DueQueue<T> {
    pub(super) fn push(&mut self, due_ms: i64, item: T) {
        self.sequence += 1;
        self.items.insert((due_ms, self.sequence), item);
    }

    /// The earliest item due at or before `now_ms`.
    pub(super) fn pop_due(&mut self, now_ms: i64) -> Option<T> {
        let entry = self.items.first_entry()?;
        (entry.key().0 <= now_ms).then(|| entry.remove())
    }

    /// When the earliest item is due.
    pub(super) fn next_due(&self) -> Option<i64> {
        self.items.first_key_value().map(|((due, _), _)| *due)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }
}

/// What a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queue {
    /// The events topic: each record becomes deliveries at once.
    Events,
    /// A retry tier: deliveries waiting for their next attempt.
    Retry,
    /// Deliveries put aside while their endpoint was busy or their app throttled.
    Parked,
}

impl Queue {
    /// The `queue` label of [`Metric::WebhookWaiting`].
    fn label(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Retry => "retry",
            Self::Parked => "parked",
        }
    }
}

/// Deliveries held until due, counted in [`Metric::WebhookWaiting`] while held.
struct Waiting {
    jobs: DueQueue<Job>,
    queue: Queue,
}

impl Waiting {
    fn gauge(&self) -> metrics::Gauge {
        metrics::gauge!(Metric::WebhookWaiting.name(), "queue" => self.queue.label())
    }

    fn push(&mut self, due_ms: i64, job: Job) {
        self.jobs.push(due_ms, job);
        self.gauge().increment(1.0);
    }

    fn pop_due(&mut self, now_ms: i64) -> Option<Job> {
        let job = self.jobs.pop_due(now_ms)?;
        self.gauge().decrement(1.0);
        Some(job)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gauge().decrement(self.jobs.items.len() as f64);
    }
}

impl Dispatcher {
    /// One topic's consumer loop. Event records become deliveries at once; waiting
    /// deliveries are held (in due order) until due.
    pub(super) async fn consume(
        self: Arc<Self>,
        mut consumer: Box<dyn LogConsumer>,
        queue: Queue,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> herald_backbone::Result<()> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        // `acquire_many` counts in u32: the budget is capped to what it can take back.
        let max_in_flight = u32::try_from(self.config.max_in_flight).unwrap_or(u32::MAX);
        let budget = Arc::new(Semaphore::new(max_in_flight as usize));
        let mut waiting = Waiting { jobs: DueQueue::default(), queue };
        let mut last_commit = Instant::now();
        while !shutdown.is_cancelled() {
            // Release what is due.
            let now = herald_core::time::now_ms();
            while let Some(job) = waiting.pop_due(now) {
                self.enqueue(job);
            }
            if last_commit.elapsed() >= self.config.commit_interval {
                self.commit(consumer.as_mut(), &offsets).await;
                last_commit = Instant::now();
                if queue == Queue::Events {
                    let oldest = offsets.lock().oldest_pending_ms();
                    let lag_ms = oldest.map_or(0, |at| (now - at).max(0));
                    metrics::gauge!(Metric::DispatcherLag.name()).set(lag_ms as f64 / 1000.0);
                }
            }
            // Wait for records (while the budget allows), for the next due delivery,
            // or for the next commit, whichever comes first.
            let next_due =
                waiting.jobs.next_due().map(|due| Duration::from_millis((due - now).max(0).unsigned_abs()));
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
                polled = tokio::time::timeout(wait, consumer.poll(free.min(POLL_MAX))) => match polled {
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
                let ack = Arc::new(RecordAck::begin(&offsets, &record, slot));
                if queue == Queue::Events {
                    self.route_event(&record, ack).await;
                    continue;
                }
                match Delivery::decode(record.value.as_ref()) {
                    Ok(delivery) => waiting.push(delivery.due_ms, Job { delivery, _acks: vec![ack] }),
                    Err(e) => {
                        tracing::error!(error = %e, topic = %record.topic, "undecodable delivery skipped")
                    }
                }
            }
        }
        // Shutdown: what is held is not done (read again after a restart); what is in
        // flight gets the grace period to finish, which it has when the whole budget
        // is back.
        drop(waiting);
        if tokio::time::timeout(grace, budget.acquire_many(max_in_flight)).await.is_err() {
            tracing::info!("deliveries still in flight after the grace period: left unfinished");
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
            offsets.lock().uncommit(positions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_due_order_and_only_when_due() {
        let mut queue = DueQueue::default();
        queue.push(300, "c");
        queue.push(100, "a");
        queue.push(200, "b");
        assert_eq!(queue.next_due(), Some(100));
        assert_eq!(queue.pop_due(99), None, "nothing is due yet");
        assert_eq!(queue.pop_due(100), Some("a"));
        assert_eq!(queue.pop_due(250), Some("b"));
        assert_eq!(queue.pop_due(250), None);
        assert_eq!(queue.next_due(), Some(300));
        assert_eq!(queue.pop_due(i64::MAX), Some("c"));
        assert_eq!((queue.next_due(), queue.len()), (None, 0));
    }

    #[test]
    fn equal_due_times_keep_their_arrival_order() {
        let mut queue = DueQueue::default();
        for n in 0..5 {
            queue.push(7, n);
        }
        queue.push(3, 99);
        let released: Vec<_> = std::iter::from_fn(|| queue.pop_due(7)).collect();
        assert_eq!(released, [99, 0, 1, 2, 3, 4]);
    }
}
