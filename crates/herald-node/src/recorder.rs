//! Channel events into the event log: publications, client events and the channel
//! lifecycle (occupied/vacated, member added/removed, subscription counts), each a
//! `herald.v1.ChannelEvent` keyed by `{app_id}/{channel}` so a channel's events stay
//! in order.
//!
//! One appender task per node takes events from a bounded queue, in arrival order,
//! and appends whatever has queued up as one batch. A publisher that wants
//! durability waits for its batch's acknowledgement; everything else is handed over
//! without waiting, so a slow log never stalls a WebSocket session. When the queue is
//! full those events are dropped and counted (`herald_events_dropped_total`), never
//! buffered without bound.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use herald_backbone::{Append, EventLog};
use herald_core::time::Backoff;
use herald_proto::v1::{ChannelEvent, ChannelEventType};
use herald_telemetry::Metric;
use prost::Message as _;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Settings of the event log as the edge writes it (`[events]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// The topic channel events are appended to.
    pub topic: String,
    /// Partitions of the topic when Herald creates it (more: more dispatcher
    /// replicas can share the work).
    pub partitions: i32,
    /// Acknowledge a publish (HTTP 200, gRPC OK) only once its events are durably in
    /// the log. `false`: acknowledge after fan-out and append in the background
    /// (lower latency; a crash may lose webhook events of acknowledged publishes).
    pub durable_publish: bool,
    /// Events that may wait for the appender. Past it, publishers with
    /// `durable_publish` wait; lifecycle and client events are dropped and counted.
    pub queue_capacity: usize,
    /// Most events appended in one batch.
    pub max_batch: usize,
    /// How long a channel must stay empty (a user stay away) before
    /// `channel_vacated` (`member_removed`) is recorded, so a quick reconnect records
    /// nothing (Pusher: a few seconds).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub debounce: Duration,
    /// Record a `subscription_count` event whenever a channel's count changes.
    pub subscription_count: bool,
    /// Announcements (a vacated channel, a removed member) that may wait out the
    /// debounce on this node at once, about 200 bytes each; past it they are decided
    /// without waiting (a quick reconnect then records both events). Clients choose
    /// how fast they leave channels: this bounds what that costs.
    pub max_debounced: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            topic: "herald.events".into(),
            partitions: 12,
            durable_publish: true,
            queue_capacity: 10_000,
            max_batch: 1_000,
            debounce: Duration::from_secs(3),
            subscription_count: true,
            max_debounced: 100_000,
        }
    }
}

impl EventsConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.topic.is_empty() {
            errors.push("events.topic: must not be empty".into());
        }
        if self.partitions < 1 {
            errors.push("events.partitions: must be at least 1".into());
        }
        if self.queue_capacity == 0 || self.max_batch == 0 {
            errors.push("events.queue_capacity and events.max_batch: must be at least 1".into());
        }
    }
}

/// The event log could not take an event (the publish was not acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
#[error("event log: {0}")]
pub struct RecordError(#[source] pub herald_backbone::Error);

impl RecordError {
    fn stopped() -> Self {
        Self(herald_backbone::Error::unavailable("the event log appender stopped"))
    }
}

struct Pending {
    /// `None`: a marker, acknowledged once everything before it is appended.
    append: Option<Append>,
    ack: Option<oneshot::Sender<Result<(), RecordError>>>,
}

/// A node's writer of the event log.
pub struct Recorder {
    queue: mpsc::Sender<Pending>,
    config: EventsConfig,
}

impl Recorder {
    /// Starts the appender task on `tasks` (its owner waits for it at shutdown); it
    /// ends when the recorder is dropped and the queue has drained, or at `stop`.
    pub fn start(
        log: Arc<dyn EventLog>,
        config: EventsConfig,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let (queue, pending) = mpsc::channel(config.queue_capacity);
        let (config_topic, max_batch) = (config.topic.clone(), config.max_batch);
        tasks.spawn(async move {
            // At shutdown the node has flushed what it waits for; what comes after is
            // not waited for.
            tokio::select! {
                () = append_loop(log, config_topic, max_batch, pending) => {}
                () = stop.cancelled() => {}
            }
        });
        Arc::new(Self { queue, config })
    }

    pub fn config(&self) -> &EventsConfig {
        &self.config
    }

    /// Appends `events`, waiting until they are durable when `durable_publish` is on.
    pub async fn record_publications(&self, events: Vec<ChannelEvent>) -> Result<(), RecordError> {
        if !self.config.durable_publish {
            events.into_iter().for_each(|e| self.record(e));
            return Ok(());
        }
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let (ack, acked) = oneshot::channel();
            let pending = Pending { append: Some(encode(&event)), ack: Some(ack) };
            self.queue.send(pending).await.map_err(|_| RecordError::stopped())?;
            acks.push(acked);
        }
        for acked in acks {
            acked.await.map_err(|_| RecordError::stopped())??;
        }
        Ok(())
    }

    /// Waits until everything handed over before is appended (or given up).
    pub async fn flushed(&self) {
        // A marker behind everything queued: acknowledged once they are appended.
        let (ack, acked) = oneshot::channel();
        if self.queue.send(Pending { append: None, ack: Some(ack) }).await.is_ok() {
            let _ = acked.await;
        }
    }

    /// Hands `event` to the appender without waiting; dropped (and counted) when the
    /// queue is full.
    pub fn record(&self, event: ChannelEvent) {
        if self.queue.try_send(Pending { append: Some(encode(&event)), ack: None }).is_err() {
            metrics::counter!(Metric::EventsDropped.name(), "reason" => "queue_full").increment(1);
            tracing::warn!(channel = %event.channel, "event log queue full: event dropped");
        }
    }
}

fn encode(event: &ChannelEvent) -> Append {
    Append {
        key: Bytes::from(format!("{}/{}", event.app_id, event.channel)),
        value: Bytes::from(event.encode_to_vec()),
    }
}

async fn append_loop(
    log: Arc<dyn EventLog>,
    topic: String,
    max_batch: usize,
    mut queue: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        let records: Vec<Append> = batch.iter().filter_map(|p| p.append.clone()).collect();
        let count = records.len() as u64;
        if records.is_empty() {
            batch.drain(..).filter_map(|p| p.ack).for_each(|ack| drop(ack.send(Ok(()))));
            continue;
        }
        // Events nobody waits for get a few tries before they are given up; a waiting
        // publisher gets the error at once and decides itself.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1600)).factor(4);
        let mut result = log.append(&topic, records.clone()).await;
        for _ in 0..3 {
            if result.is_ok() || batch.iter().any(|p| p.ack.is_some()) {
                break;
            }
            backoff.wait().await;
            result = log.append(&topic, records.clone()).await;
        }
        match &result {
            Ok(()) => metrics::counter!(Metric::EventsAppended.name()).increment(count),
            Err(e) => {
                metrics::counter!(Metric::EventsDropped.name(), "reason" => "unavailable").increment(count);
                tracing::warn!(error = %e, events = count, "could not append to the event log");
            }
        }
        for pending in batch.drain(..) {
            if let Some(ack) = pending.ack {
                let _ = ack.send(result.clone().map_err(RecordError));
            }
        }
    }
}

/// A new event id: `evt_` and 26 Crockford base32 characters of 48 bits of
/// milliseconds and 80 random bits, so ids sort by time (like a ULID).
pub fn event_id(time_ms: i64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let random = (u128::from(fastrand::u64(..)) << 16) | u128::from(fastrand::u16(..));
    let mut value = ((time_ms as u128 & 0xFFFF_FFFF_FFFF) << 80) | random;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    let mut id = String::with_capacity(30);
    id.push_str("evt_");
    id.extend(out.iter().map(|b| char::from(*b)));
    id
}

/// A channel event of `kind`, with a fresh id and time.
pub fn channel_event(app_id: &str, channel: &str, kind: ChannelEventType) -> ChannelEvent {
    let time_ms = herald_core::time::now_ms();
    ChannelEvent {
        id: event_id(time_ms),
        app_id: app_id.to_owned(),
        channel: channel.to_owned(),
        time_ms,
        r#type: kind as i32,
        ..ChannelEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_unique_and_sort_by_time() {
        let a = event_id(1_000);
        let b = event_id(2_000);
        assert_eq!(a.len(), 30);
        assert!(a.starts_with("evt_"));
        assert!(a < b);
        assert_ne!(event_id(1_000), event_id(1_000));
    }
}
