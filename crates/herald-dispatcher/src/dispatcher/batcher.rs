//! Pusher-format batching: an endpoint's events gather into one request until the batch
//! is full or its window ends.

use std::sync::{Arc, atomic::Ordering};

use herald_proto::v1::{ChannelEvent, Delivery};
use herald_webhooks::{delivery::webhook_id, endpoint::Endpoint};

use super::{Dispatcher, Job, offsets::RecordAck};

/// A Pusher batch being gathered, with the records it finishes.
pub(super) struct PusherBatch {
    /// Tells this batch from a later one of the same endpoint, so the timer of an
    /// earlier window never sends a batch it did not start.
    generation: u64,
    events: Vec<ChannelEvent>,
    acks: Vec<Arc<RecordAck>>,
    created_ms: i64,
}

impl Dispatcher {
    /// Adds a Pusher-format event to the endpoint's batch; the batch goes when full or
    /// when its window ends.
    pub(super) fn gather(self: &Arc<Self>, endpoint: &Endpoint, event: ChannelEvent, ack: Arc<RecordAck>) {
        let queue = self.queue(&endpoint.app_id, &endpoint.id);
        let mut slot = queue.batch.lock();
        let started = slot.is_none();
        let batch = slot.get_or_insert_with(|| PusherBatch {
            generation: self.batches.fetch_add(1, Ordering::Relaxed),
            events: Vec::new(),
            acks: Vec::new(),
            created_ms: event.time_ms,
        });
        batch.events.push(event);
        batch.acks.push(ack);
        if batch.events.len() >= self.config.pusher_batch_max {
            if let Some(batch) = slot.take() {
                drop(slot);
                self.enqueue(batch_job(endpoint, batch));
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
                // The queue is gone when its endpoint was: the batch went with it.
                let Some(queue) = dispatcher.existing_queue(&endpoint.id) else { return };
                let batch = {
                    let mut slot = queue.batch.lock();
                    match slot.as_ref() {
                        Some(b) if b.generation == generation => slot.take(),
                        _ => None,
                    }
                };
                if let Some(batch) = batch {
                    dispatcher.enqueue(batch_job(&endpoint, batch));
                }
            });
        }
    }
}

/// The delivery of a batch: its id is the first event's, so a batch sent again (after
/// a restart) has the same `webhook-id` when it has the same first event.
fn batch_job(endpoint: &Endpoint, batch: PusherBatch) -> Job {
    let first = batch.events.first().map(|e| e.id.as_str()).unwrap_or_default();
    let delivery = Delivery {
        id: webhook_id(first, &endpoint.id),
        app_id: endpoint.app_id.clone(),
        endpoint_id: endpoint.id.clone(),
        created_ms: batch.created_ms,
        events: batch.events,
        ..Delivery::default()
    };
    Job { delivery, _acks: batch.acks }
}
