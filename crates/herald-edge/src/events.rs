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

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use herald_backbone::{Append, EventLog, Lifecycle};
use herald_core::ChannelName;
use herald_proto::v1::{ChannelEvent, ChannelEventType};
use herald_telemetry::Metric;
use prost::Message as _;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::{debounce::Key, node::Node};

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
    /// Milliseconds a channel must stay empty (a user stay away) before
    /// `channel_vacated` (`member_removed`) is recorded, so a quick reconnect records
    /// nothing (Pusher: a few seconds).
    pub debounce_ms: u64,
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
            debounce_ms: 3_000,
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

    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
}

/// The event log could not take an event (the publish was not acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
#[error("event log: {0}")]
pub struct RecordError(pub String);

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
    /// Starts the appender task; it ends when the recorder is dropped and the queue
    /// has drained.
    pub fn start(log: Arc<dyn EventLog>, config: EventsConfig) -> Arc<Self> {
        let (queue, pending) = mpsc::channel(config.queue_capacity);
        tokio::spawn(append_loop(log, config.topic.clone(), config.max_batch, pending));
        Arc::new(Self { queue, config })
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
            self.queue.send(pending).await.map_err(|_| RecordError("the appender stopped".into()))?;
            acks.push(acked);
        }
        for acked in acks {
            acked.await.map_err(|_| RecordError("the appender stopped".into()))??;
        }
        Ok(())
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
        let mut delay = Duration::from_millis(100);
        let mut result = log.append(&topic, records.clone()).await;
        for _ in 0..3 {
            if result.is_ok() || batch.iter().any(|p| p.ack.is_some()) {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 4;
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
                let _ = ack.send(result.clone().map_err(|e| RecordError(e.to_string())));
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

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A channel event of `kind`, with a fresh id and time.
pub fn channel_event(app_id: &str, channel: &str, kind: ChannelEventType) -> ChannelEvent {
    let time_ms = now_ms();
    ChannelEvent {
        id: event_id(time_ms),
        app_id: app_id.to_owned(),
        channel: channel.to_owned(),
        time_ms,
        r#type: kind as i32,
        ..ChannelEvent::default()
    }
}

impl Node {
    /// The event log writer, if this node records events.
    pub(crate) fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.recorder.get()
    }

    /// Hands a lifecycle or client event to the event log, if there is one.
    pub(crate) fn record(&self, event: impl FnOnce() -> ChannelEvent) {
        if let Some(recorder) = self.recorder() {
            recorder.record(event());
        }
    }

    /// After a join that brought the channel to `count` subscribers (and, in a
    /// presence channel, maybe a new member): records `subscription_count`, and
    /// `channel_occupied` / `member_added` when the cluster had not announced them.
    pub(crate) async fn record_joined(
        &self,
        app_id: &str,
        channel: &ChannelName,
        count: u64,
        user: Option<&str>,
    ) {
        let Some(recorder) = self.recorder() else { return };
        if recorder.config.subscription_count {
            let mut event = channel_event(app_id, channel.as_str(), ChannelEventType::SubscriptionCount);
            event.subscription_count = count;
            recorder.record(event);
        }
        if count == 1 {
            self.announce(app_id, channel, Lifecycle::Occupied).await;
        }
        if let Some(user) = user {
            self.announce(app_id, channel, Lifecycle::MemberAdded(user)).await;
        }
    }

    /// After a leave that left `count` subscribers (and, in a presence channel, maybe
    /// removed the user's last connection): records `subscription_count` now, and
    /// `channel_vacated` / `member_removed` after the debounce if still true then.
    pub(crate) fn record_left(
        self: &Arc<Self>,
        app_id: &str,
        channel: &ChannelName,
        count: Option<u64>,
        removed_user: Option<&str>,
    ) {
        let Some(recorder) = self.recorder() else { return };
        if let Some(count) = count
            && recorder.config.subscription_count
        {
            let mut event = channel_event(app_id, channel.as_str(), ChannelEventType::SubscriptionCount);
            event.subscription_count = count;
            recorder.record(event);
        }
        if count != Some(0) && removed_user.is_none() {
            return;
        }
        // One entry per channel (user) waiting, decided by one driver task: see
        // `debounce`.
        if self.debounced.needs_driver() {
            // It holds the node weakly: a node dropped without a shutdown is freed.
            let (debounced, node) = (self.debounced.clone(), Arc::downgrade(self));
            let now = self.lifecycle_now.clone();
            self.lifecycle.spawn(async move {
                let decide = move |keys| {
                    if let Some(node) = node.upgrade() {
                        node.decide_debounced(keys);
                    }
                    std::future::ready(())
                };
                debounced.drive(now, decide).await;
            });
        }
        let deadline = tokio::time::Instant::now() + recorder.config.debounce();
        let app_id: Arc<str> = Arc::from(app_id);
        let mut keys = Vec::with_capacity(2);
        if let Some(user) = removed_user {
            keys.push(Key { app_id: app_id.clone(), channel: channel.clone(), user: Some(Arc::from(user)) });
        }
        if count == Some(0) {
            keys.push(Key { app_id, channel: channel.clone(), user: None });
        }
        let max = recorder.config.max_debounced;
        let now: Vec<Key> =
            keys.into_iter().filter_map(|key| self.debounced.schedule(key, deadline, max).err()).collect();
        if !now.is_empty() {
            self.decide_debounced(now);
        }
        if self.lifecycle_now.is_cancelled() {
            // Shutting down: the driver has decided everything, or is about to.
            for keys in self.debounced.take_all() {
                self.decide_debounced(keys);
            }
        }
    }

    /// Decides one channel's due announcements, in order, in a task of their own (a
    /// Redis round trip each; channels are decided in parallel).
    fn decide_debounced(self: &Arc<Self>, keys: Vec<Key>) {
        let node = self.clone();
        self.lifecycle.spawn(async move {
            for key in keys {
                let change = match &key.user {
                    Some(user) => Lifecycle::MemberRemoved(user),
                    None => Lifecycle::Vacated,
                };
                node.announce(&key.app_id, &key.channel, change).await;
            }
        });
    }

    /// At shutdown: decides every debounced announcement now, and waits (at most
    /// `within`) until they and everything queued before are in the event log.
    pub async fn flush_events(&self, within: Duration) {
        let Some(recorder) = self.recorder() else { return };
        self.lifecycle_now.cancel();
        self.lifecycle.close();
        let flushed = async {
            self.lifecycle.wait().await;
            // A marker behind everything queued: acknowledged once they are appended.
            let (ack, acked) = oneshot::channel();
            let marker = Pending { append: None, ack: Some(ack) };
            if recorder.queue.send(marker).await.is_ok() {
                let _ = acked.await;
            }
        };
        if tokio::time::timeout(within, flushed).await.is_err() {
            tracing::warn!("lifecycle events still unrecorded at shutdown");
        }
    }

    /// Records the lifecycle event `change` if the cluster decides it is due.
    pub(crate) async fn announce(&self, app_id: &str, channel: &ChannelName, change: Lifecycle<'_>) {
        let Some(recorder) = self.recorder() else { return };
        match self.presence.announce(app_id, channel, change).await {
            Ok(false) => {}
            Ok(true) => {
                let (kind, user) = match change {
                    Lifecycle::Occupied => (ChannelEventType::ChannelOccupied, None),
                    Lifecycle::Vacated => (ChannelEventType::ChannelVacated, None),
                    Lifecycle::MemberAdded(user) => (ChannelEventType::MemberAdded, Some(user)),
                    Lifecycle::MemberRemoved(user) => (ChannelEventType::MemberRemoved, Some(user)),
                };
                let mut event = channel_event(app_id, channel.as_str(), kind);
                event.user_id = user.unwrap_or_default().to_owned();
                recorder.record(event);
            }
            Err(e) => tracing::warn!(error = %e, ?change, "could not decide a lifecycle event"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use herald_backbone::{MemoryBackbone, MemoryEventLog};
    use herald_core::Apps;
    use herald_hub::Hub;

    use super::*;

    /// A node of the in-memory backbone recording to an in-memory log.
    async fn recording_node() -> Arc<Node> {
        recording_node_with(EventsConfig::default()).await
    }

    async fn recording_node_with(config: EventsConfig) -> Arc<Node> {
        let backbone = MemoryBackbone::new();
        let hub = Arc::new(Hub::new(1));
        let broker = Arc::new(backbone.broker(hub.clone()));
        let apps = Apps::new(vec![herald_testkit::app("app")]).unwrap();
        let node = Node::new(1, apps, crate::EdgeConfig::default(), hub, broker, backbone.presence());
        let log = Arc::new(MemoryEventLog::new());
        log.ensure_topics(&[&config.topic], 1).await.unwrap();
        node.record_events_to(log, config);
        node
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_announcements_are_decided_at_once() {
        let node = recording_node_with(EventsConfig { max_debounced: 10, ..EventsConfig::default() }).await;
        for i in 0..100 {
            let channel = ChannelName::new(&format!("ch-{i}")).unwrap();
            node.record_left("app", &channel, Some(0), None);
        }
        assert_eq!(node.debounced.pending(), 10);
    }

    /// A client subscribing and unsubscribing in a loop used to leave a task per leave
    /// waiting out the debounce (a few kilobytes each): memory grew with the rate.
    #[tokio::test(start_paused = true)]
    async fn leaves_waiting_for_the_debounce_cost_one_entry_per_channel() {
        let node = recording_node().await;
        let busy = ChannelName::new("busy").unwrap();
        for _ in 0..1_000 {
            node.record_left("app", &busy, Some(0), None);
        }
        assert!(node.lifecycle.len() <= 1, "{} tasks wait for one channel", node.lifecycle.len());
        assert_eq!(node.debounced.pending(), 1);

        for i in 0..1_000 {
            let channel = ChannelName::new(&format!("ch-{i}")).unwrap();
            node.record_left("app", &channel, Some(0), Some("user"));
        }
        assert!(node.lifecycle.len() <= 1, "{} tasks wait for 1,000 channels", node.lifecycle.len());
        assert_eq!(node.debounced.pending(), 2_001, "a vacated channel and a removed member each");

        // Once due, every one is decided and nothing is left behind.
        tokio::time::sleep(EventsConfig::default().debounce()).await;
        node.flush_events(Duration::from_secs(5)).await;
        assert_eq!(node.debounced.pending(), 0);
        assert_eq!(node.lifecycle.len(), 0);
    }

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
