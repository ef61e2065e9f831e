//! The node's subscription counts, and their way to the backbone: a subscribe or an
//! unsubscribe changes a count here, at once; a flusher task sends the counts that
//! changed to the backbone in one batch ([`PresenceManager::set_counts`]), at most once
//! per `occupancy_flush`, and records what the batch changed cluster-wide
//! (`subscription_count`, `channel_occupied`, the vacated check). So the backbone's
//! work follows the node's counts, not its clients: ten thousand clients subscribing
//! to one channel within a flush are one write.
//!
//! Counts are absolute, so a batch sent twice, or a re-assertion racing a flush, is
//! harmless; the two are serialized anyway, so the backbone always ends with the
//! latest counts.
//!
//! [`PresenceManager::set_counts`]: herald_backbone::PresenceManager::set_counts

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Weak},
    time::Duration,
};

use herald_backbone::{ChannelCount, CountChange, Result};
use herald_core::ChannelName;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{lifecycle, node::Node};

/// Pause after a failed flush before the next try (the counts wait, marked changed).
const RETRY_AFTER: Duration = Duration::from_secs(1);

type Key = (Arc<str>, ChannelName);

#[derive(Default)]
pub(crate) struct Occupancy {
    state: Mutex<State>,
    changed: Notify,
    /// Held while counts go to the backbone (a flush or a re-assertion).
    writing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// This node's subscription count per channel (no zeros).
    counts: HashMap<Key, u64>,
    /// Channels whose count changed since it was last sent.
    changed: HashSet<Key>,
}

impl Occupancy {
    /// One more of this node's connections is subscribed to `channel`.
    pub(crate) fn add(&self, app_id: &Arc<str>, channel: &ChannelName) {
        let key = (app_id.clone(), channel.clone());
        let mut state = self.state.lock();
        *state.counts.entry(key.clone()).or_insert(0) += 1;
        state.changed.insert(key);
        drop(state);
        self.changed.notify_one();
    }

    /// One fewer.
    pub(crate) fn remove(&self, app_id: &Arc<str>, channel: &ChannelName) {
        let key = (app_id.clone(), channel.clone());
        let mut state = self.state.lock();
        if let Some(count) = state.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                state.counts.remove(&key);
                herald_core::sharded::shrink_map(&mut state.counts);
            }
            state.changed.insert(key);
        }
        drop(state);
        self.changed.notify_one();
    }

    /// The changed counts, as they are now, taken (marked sent).
    fn take_changed(&self) -> Vec<ChannelCount> {
        let mut state = self.state.lock();
        let changed = std::mem::take(&mut state.changed);
        changed.into_iter().map(|key| count_of(&state.counts, key)).collect()
    }

    /// Marks counts changed again (their write failed).
    fn unsent(&self, counts: &[ChannelCount]) {
        let mut state = self.state.lock();
        state.changed.extend(counts.iter().map(|c| (c.app_id.clone(), c.channel.clone())));
    }

    /// Sends the changed counts; records what they changed. False if the backbone
    /// could not take them (they stay marked changed).
    pub(crate) async fn flush(&self, node: &Arc<Node>) -> bool {
        let writing = self.writing.lock().await;
        let counts = self.take_changed();
        if counts.is_empty() {
            return true;
        }
        match node.presence.set_counts(node.id, &counts).await {
            Ok(changes) => {
                // Recorded before the next flush may start: a caller that flushed to
                // get `channel_occupied` recorded before its own event finds it so.
                for (count, change) in counts.iter().zip(changes) {
                    lifecycle::record_count(node, &count.app_id, &count.channel, change).await;
                    lifecycle::tell_count(node, &count.app_id, &count.channel, change).await;
                }
                drop(writing);
                true
            }
            Err(e) => {
                self.unsent(&counts);
                node.share.failed("count", &e);
                false
            }
        }
    }

    /// A re-assertion: sends every count the node has, and 0 for each of `stale` (the
    /// channels the backbone holds a count of) that it has none of. Returns the counts
    /// sent and what they changed.
    pub(crate) async fn reassert(
        &self,
        node: &Node,
        stale: impl IntoIterator<Item = (Arc<str>, ChannelName)>,
    ) -> Result<Vec<(ChannelCount, CountChange)>> {
        let _writing = self.writing.lock().await;
        let counts: Vec<ChannelCount> = {
            let mut state = self.state.lock();
            let mut keys: HashSet<Key> = state.counts.keys().cloned().collect();
            keys.extend(stale);
            state.changed.clear();
            keys.into_iter().map(|key| count_of(&state.counts, key)).collect()
        };
        match node.presence.set_counts(node.id, &counts).await {
            Ok(changes) => Ok(counts.into_iter().zip(changes).collect()),
            Err(e) => {
                self.unsent(&counts);
                Err(e)
            }
        }
    }

    /// Sends changes `window` after the first of a burst, until `stop`; on a failure,
    /// again after [`RETRY_AFTER`]. Holds the node weakly: a node dropped without a
    /// shutdown is freed.
    pub(crate) async fn run(
        node: Weak<Node>,
        occupancy: Arc<Self>,
        window: Duration,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = occupancy.changed.notified() => {}
                () = stop.cancelled() => return,
            }
            // What else changes within the window goes in the same batch.
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = stop.cancelled() => return,
            }
            let Some(node) = node.upgrade() else { return };
            if !occupancy.flush(&node).await {
                drop(node);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => occupancy.changed.notify_one(),
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

fn count_of(counts: &HashMap<Key, u64>, key: Key) -> ChannelCount {
    let count = counts.get(&key).copied().unwrap_or(0);
    ChannelCount { app_id: key.0, channel: key.1, count }
}
