//! The channel lifecycle as the event log records it: subscription counts, and
//! `channel_occupied` / `channel_vacated` / `member_added` / `member_removed`, each
//! decided once for the whole cluster (through [`herald_backbone::PresenceManager::announce`])
//! and, for the leaving half, only after the debounce (see `debounce`).

use std::{sync::Arc, time::Duration};

use herald_backbone::{CountChange, Lifecycle};
use herald_core::{ChannelKind, ChannelName};
use herald_proto::v1::{ChannelEvent, ChannelEventType};

use crate::{debounce::Key, node::Node, recorder::channel_event};

/// Hands a lifecycle or client event to the event log, if there is one.
pub(crate) fn record(node: &Node, event: impl FnOnce() -> ChannelEvent) {
    if let Some(recorder) = node.recorder() {
        recorder.record(event());
    }
}

/// How long a node records one `cache_miss` per channel: a crowd subscribing to an
/// empty cache channel (a deploy's reconnect storm) asks the app's backend once to
/// fill it, not once per client.
pub(crate) const CACHE_MISS_WINDOW: Duration = Duration::from_secs(5);

/// How often a node tells a channel of more than [`COUNT_THROTTLE_ABOVE`] subscribers
/// its subscription count, at most: Pusher's every 5 seconds while there is activity.
pub(crate) const COUNT_THROTTLE: Duration = Duration::from_secs(5);
pub(crate) const COUNT_THROTTLE_ABOVE: u64 = 100;

/// Channels something was done for lately (a `cache_miss` recorded, a count told), and
/// when: so it is done at most once per channel within a window.
#[derive(Default)]
pub(crate) struct Recently {
    done: parking_lot::Mutex<std::collections::HashMap<(Arc<str>, ChannelName), std::time::Instant>>,
}

impl Recently {
    /// Whether it is due for `channel` now (not done within `window`); if so, it counts
    /// as done now.
    fn due(&self, app_id: &Arc<str>, channel: &ChannelName, window: Duration) -> bool {
        let now = std::time::Instant::now();
        let mut done = self.done.lock();
        // Bounded by the channels done within one window.
        if done.len() >= 1024 {
            done.retain(|_, at| now.duration_since(*at) < window);
        }
        match done.get(&(app_id.clone(), channel.clone())) {
            Some(at) if now.duration_since(*at) < window => false,
            _ => {
                done.insert((app_id.clone(), channel.clone()), now);
                true
            }
        }
    }
}

/// A client subscribed to a cache channel with no cached event: records `cache_miss`
/// (once per channel and node within [`CACHE_MISS_WINDOW`]).
pub(crate) fn record_cache_miss(node: &Node, app_id: &Arc<str>, channel: &ChannelName) {
    if node.recorder().is_some() && node.cache_misses.due(app_id, channel, CACHE_MISS_WINDOW) {
        record(node, || channel_event(app_id, channel.as_str(), ChannelEventType::CacheMiss));
    }
}

/// After this node's count of a channel changed its cluster-wide count: tells the
/// channel's subscribers on every node (`pusher_internal:subscription_count`), if the
/// app asked for it and the channel is not a presence one (whose members tell more);
/// above [`COUNT_THROTTLE_ABOVE`] subscribers at most once per [`COUNT_THROTTLE`].
pub(crate) async fn tell_count(node: &Node, app_id: &Arc<str>, channel: &ChannelName, change: CountChange) {
    if change.after == change.before || change.after == 0 || channel.kind() == ChannelKind::Presence {
        return;
    }
    if !node.apps().by_id(app_id).is_some_and(|app| app.enable_subscription_count) {
        return;
    }
    if change.after > COUNT_THROTTLE_ABOVE && !node.counts_told.due(app_id, channel, COUNT_THROTTLE) {
        return;
    }
    let data = format!(r#"{{"subscription_count":{}}}"#, change.after);
    node.tell(app_id, channel, "pusher_internal:subscription_count", &data, None).await;
}

/// After a join that made `user` a member of the presence channel: records
/// `member_added` if the cluster had not announced it.
pub(crate) async fn record_joined(node: &Node, app_id: &str, channel: &ChannelName, user: &str) {
    if node.recorder().is_some() {
        node.announce(app_id, channel, Lifecycle::MemberAdded(user)).await;
    }
}

/// After this node's count of a channel reached the backbone, changing the channel's
/// cluster-wide count as `change` says: records `subscription_count` and
/// `channel_occupied` (when the cluster had not announced it) for a channel that
/// gained subscribers, and what `record_left` records for one that lost some.
pub(crate) async fn record_count(node: &Arc<Node>, app_id: &str, channel: &ChannelName, change: CountChange) {
    let Some(recorder) = node.recorder() else { return };
    if change.after < change.before {
        return record_left(node, app_id, channel, Some(change.after), None);
    }
    if change.after == change.before {
        return;
    }
    if recorder.config().subscription_count {
        let mut event = channel_event(app_id, channel.as_str(), ChannelEventType::SubscriptionCount);
        event.subscription_count = change.after;
        recorder.record(event);
    }
    if change.occupied() {
        node.announce(app_id, channel, Lifecycle::Occupied).await;
    }
}

/// After a leave that left `count` subscribers (and, in a presence channel, maybe
/// removed the user's last connection): records `subscription_count` now, and
/// `channel_vacated` / `member_removed` after the debounce if still true then.
pub(crate) fn record_left(
    node: &Arc<Node>,
    app_id: &str,
    channel: &ChannelName,
    count: Option<u64>,
    removed_user: Option<&str>,
) {
    let Some(recorder) = node.recorder() else { return };
    if channel.is_online_users() {
        // Not a channel: who is online has no webhooks.
        return;
    }
    if let Some(count) = count
        && recorder.config().subscription_count
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
    if node.debounced.needs_driver() {
        // It holds the node weakly: a node dropped without a shutdown is freed.
        let (debounced, weak) = (node.debounced.clone(), Arc::downgrade(node));
        let now = node.lifecycle_now.clone();
        node.lifecycle.spawn(async move {
            let decide = move |keys| {
                if let Some(node) = weak.upgrade() {
                    decide_debounced(&node, keys);
                }
                std::future::ready(())
            };
            debounced.drive(now, decide).await;
        });
    }
    let deadline = tokio::time::Instant::now() + recorder.config().debounce;
    let app_id: Arc<str> = Arc::from(app_id);
    let mut keys = Vec::with_capacity(2);
    if let Some(user) = removed_user {
        keys.push(Key { app_id: app_id.clone(), channel: channel.clone(), user: Some(Arc::from(user)) });
    }
    if count == Some(0) {
        keys.push(Key { app_id, channel: channel.clone(), user: None });
    }
    let max = recorder.config().max_debounced;
    let now: Vec<Key> =
        keys.into_iter().filter_map(|key| node.debounced.schedule(key, deadline, max).err()).collect();
    if !now.is_empty() {
        decide_debounced(node, now);
    }
    if node.lifecycle_now.is_cancelled() {
        // Shutting down: the driver has decided everything, or is about to.
        for keys in node.debounced.take_all() {
            decide_debounced(node, keys);
        }
    }
}

/// Decides one channel's due announcements, in order, in a task of their own (a
/// Redis round trip each; channels are decided in parallel).
fn decide_debounced(node: &Arc<Node>, keys: Vec<Key>) {
    let deciding = node.clone();
    node.lifecycle.spawn(async move {
        let node = deciding;
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
pub(crate) async fn flush_events(node: &Node, within: Duration) {
    let Some(recorder) = node.recorder() else { return };
    node.lifecycle_now.cancel();
    node.lifecycle.close();
    let flushed = async {
        node.lifecycle.wait().await;
        recorder.flushed().await;
    };
    if tokio::time::timeout(within, flushed).await.is_err() {
        tracing::warn!("lifecycle events still unrecorded at shutdown");
    }
}

/// Records the lifecycle event `change` if the cluster decides it is due.
pub(crate) async fn announce(node: &Node, app_id: &str, channel: &ChannelName, change: Lifecycle<'_>) {
    let Some(recorder) = node.recorder() else { return };
    match node.presence.announce(app_id, channel, change).await {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use herald_backbone::{EventLog, MemoryBackbone, MemoryEventLog};

    use crate::EventsConfig;
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
        let app = herald_core::App::for_test("app");
        let apps = Apps::new(vec![app]).unwrap();
        let log = Arc::new(MemoryEventLog::new());
        log.ensure_topics(&[&config.topic], 1).await.unwrap();
        Node::builder(1, apps, crate::EdgeConfig::default(), hub, broker, backbone.presence())
            .record_events(log, config)
            .build()
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
        tokio::time::sleep(EventsConfig::default().debounce).await;
        node.flush_events(Duration::from_secs(5)).await;
        assert_eq!(node.debounced.pending(), 0);
        assert_eq!(node.lifecycle.len(), 0);
    }
}
