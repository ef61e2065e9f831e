//! In-memory backbone: one process, any number of nodes. The default of `herald dev`,
//! and a model of the contracts that the Redis implementations are tested against.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use herald_core::{
    ChannelName, Publication, SocketId, StreamPosition,
    sharded::{Sharded, shrink_map},
};
use parking_lot::Mutex;

use crate::{
    Broker, ChannelCount, ChannelStats, CountChange, Direction, Error, HistoryPage, HistoryQuery, Lifecycle,
    Member, MemberChange, Message, MessageHandler, PresenceManager, Result, Retention, Topic,
};

/// The shared state of an in-process cluster. Each node gets its own [`MemoryBroker`];
/// all share one [`MemoryPresence`].
#[derive(Clone, Default)]
pub struct MemoryBackbone {
    inner: Arc<BrokerState>,
    presence: Arc<MemoryPresence>,
}

#[derive(Default)]
struct BrokerState {
    next_node: AtomicU64,
    nodes: Mutex<HashMap<u64, Arc<dyn MessageHandler>>>,
    interest: Mutex<HashMap<Topic, HashSet<u64>>>,
    /// The history of every channel that keeps one. Held while a kept publication is
    /// delivered, so the order of offsets is the order of delivery.
    histories: Mutex<Histories>,
}

#[derive(Default)]
struct Histories {
    channels: HashMap<Topic, ChannelHistory>,
    /// Reads and writes since the last sweep of channels whose epoch expired.
    touches: u32,
}

/// Sweep the channels that nobody touched for their `meta_ttl` once every this many
/// reads and writes: memory stays bounded by the channels in use, at a cost spread thin.
const SWEEP_EVERY: u32 = 1024;

/// One channel's history.
struct ChannelHistory {
    epoch: Arc<str>,
    /// The offset of the last publication (0: none in this epoch).
    top: u64,
    /// The kept publications, oldest first, with when they were kept.
    kept: VecDeque<(Instant, Publication)>,
    /// Last published to or read.
    touched: Instant,
    /// The retention it was last touched with, for the sweep.
    meta_ttl: Duration,
}

impl ChannelHistory {
    fn new(now: Instant, retention: Retention) -> Self {
        Self {
            epoch: StreamPosition::new_epoch(),
            top: 0,
            kept: VecDeque::new(),
            touched: now,
            meta_ttl: retention.meta_ttl,
        }
    }

    /// Drops what `retention` no longer keeps; a channel untouched for longer than its
    /// `meta_ttl` starts a new epoch (as a Redis key that expired would).
    fn trim(&mut self, retention: Retention, now: Instant) {
        if now.duration_since(self.touched) > self.meta_ttl {
            *self = Self::new(now, retention);
        }
        self.meta_ttl = retention.meta_ttl;
        while self.kept.len() > retention.size
            || self.kept.front().is_some_and(|(at, _)| now.duration_since(*at) > retention.ttl)
        {
            self.kept.pop_front();
        }
    }

    fn page(&self, query: HistoryQuery) -> HistoryPage {
        let first =
            self.kept.front().and_then(|(_, p)| p.position.as_ref()).map_or(self.top + 1, |p| p.offset);
        let after = query.since.unwrap_or(0);
        let newer = self
            .kept
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.position.as_ref().is_some_and(|at| at.offset > after));
        let publications = match query.direction {
            Direction::Forward => newer.take(query.limit).cloned().collect(),
            Direction::Backward => {
                let newer: Vec<&Publication> = newer.collect();
                newer.iter().rev().take(query.limit).map(|p| (*p).clone()).collect()
            }
        };
        HistoryPage { position: StreamPosition::new(self.top, self.epoch.clone()), first, publications }
    }
}

impl Histories {
    /// The channel's history, trimmed to `retention` as of `now` and marked touched.
    fn touch(&mut self, topic: &Topic, retention: Retention, now: Instant) -> &mut ChannelHistory {
        self.touches += 1;
        if self.touches >= SWEEP_EVERY {
            self.touches = 0;
            self.channels.retain(|_, h| now.duration_since(h.touched) <= h.meta_ttl);
            shrink_map(&mut self.channels);
        }
        let history =
            self.channels.entry(topic.clone()).or_insert_with(|| ChannelHistory::new(now, retention));
        history.trim(retention, now);
        history.touched = now;
        history
    }
}

impl MemoryBackbone {
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker for one node, delivering that node's subscribed topics to `handler`.
    pub fn broker(&self, handler: Arc<dyn MessageHandler>) -> MemoryBroker {
        let node = self.inner.next_node.fetch_add(1, Ordering::Relaxed);
        self.inner.nodes.lock().insert(node, handler);
        MemoryBroker { node, state: self.inner.clone() }
    }

    pub fn presence(&self) -> Arc<MemoryPresence> {
        self.presence.clone()
    }

    /// Loses every channel's history, as a restart would (tests of new epochs).
    #[cfg(any(test, feature = "test-util"))]
    pub fn forget_history(&self) {
        self.inner.histories.lock().channels.clear();
    }
}

/// One node's view of the in-memory broker. Publishing delivers synchronously to
/// every subscribed node's handler before returning, so order per topic is the
/// publish order.
pub struct MemoryBroker {
    node: u64,
    state: Arc<BrokerState>,
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        self.state.nodes.lock().remove(&self.node);
        self.state.interest.lock().retain(|_, nodes| {
            nodes.remove(&self.node);
            !nodes.is_empty()
        });
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<()> {
        // Collect the handlers first: a handler must never run under our locks.
        let handlers: Vec<Arc<dyn MessageHandler>> = {
            let interest = self.state.interest.lock();
            let Some(nodes) = interest.get(topic) else {
                return Ok(());
            };
            let all = self.state.nodes.lock();
            nodes.iter().filter_map(|n| all.get(n).cloned()).collect()
        };
        if let Some((last, rest)) = handlers.split_last() {
            for handler in rest {
                handler.handle(topic, message.clone());
            }
            last.handle(topic, message);
        }
        Ok(())
    }

    async fn publish_batch(&self, messages: Vec<(Topic, Message)>) -> Result<()> {
        self.deliver(messages);
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<()> {
        self.state.interest.lock().entry(topic.clone()).or_default().insert(self.node);
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<()> {
        let mut interest = self.state.interest.lock();
        if let Some(nodes) = interest.get_mut(topic) {
            nodes.remove(&self.node);
            if nodes.is_empty() {
                interest.remove(topic);
                shrink_map(&mut *interest);
            }
        }
        Ok(())
    }

    async fn publish_kept(
        &self,
        publications: Vec<(Topic, Publication, Retention)>,
    ) -> Result<Vec<StreamPosition>> {
        let now = Instant::now();
        let mut histories = self.state.histories.lock();
        let mut positions = Vec::with_capacity(publications.len());
        let mut messages = Vec::with_capacity(publications.len());
        for (topic, mut publication, retention) in publications {
            let history = histories.touch(&topic, retention, now);
            history.top += 1;
            let position = StreamPosition::new(history.top, history.epoch.clone());
            publication.position = Some(position.clone());
            history.kept.push_back((now, publication.clone()));
            history.trim(retention, now);
            positions.push(position);
            messages.push((topic, Message::Publication(publication)));
        }
        // Delivered before the lock is released: no other publication to these
        // channels can take an offset and overtake them.
        self.deliver(messages);
        drop(histories);
        Ok(positions)
    }

    async fn history(&self, topic: &Topic, retention: Retention, query: HistoryQuery) -> Result<HistoryPage> {
        Ok(self.state.histories.lock().touch(topic, retention, Instant::now()).page(query))
    }
}

/// A node's handler and the messages for it.
type NodeShare = (Arc<dyn MessageHandler>, Vec<(Topic, Message)>);

impl MemoryBroker {
    /// Hands messages to every subscribed node's handler, each node's share in order
    /// and in one batch.
    fn deliver(&self, messages: Vec<(Topic, Message)>) {
        // Each node's share of the batch, in order; handed over after the locks are gone.
        let mut shares: Vec<NodeShare> = Vec::new();
        {
            let interest = self.state.interest.lock();
            let all = self.state.nodes.lock();
            for (topic, message) in messages {
                let Some(nodes) = interest.get(&topic) else { continue };
                for node in nodes {
                    let Some(handler) = all.get(node) else { continue };
                    match shares.iter_mut().find(|(h, _)| Arc::ptr_eq(h, handler)) {
                        Some((_, share)) => share.push((topic.clone(), message.clone())),
                        None => shares.push((handler.clone(), vec![(topic.clone(), message.clone())])),
                    }
                }
            }
        }
        for (handler, share) in shares {
            handler.handle_batch(share);
        }
    }
}

/// In-memory [`PresenceManager`], sharded by channel.
pub struct MemoryPresence {
    channels: Sharded<(Arc<str>, ChannelName), ChannelState>,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self { channels: Sharded::new(64) }
    }
}

#[derive(Default)]
struct ChannelState {
    /// node -> its subscription count (never 0), and their sum.
    nodes: HashMap<u32, u64>,
    subscribers: u64,
    /// user id -> (member as its first connection announced it, its connections)
    members: HashMap<Arc<str>, (Member, HashSet<SocketId>)>,
    socket_user: HashMap<SocketId, Arc<str>>,
    /// Lifecycle announcements made (see [`PresenceManager::announce`]).
    announced_occupied: bool,
    announced_members: HashSet<Arc<str>>,
}

impl ChannelState {
    fn stats(&self) -> ChannelStats {
        ChannelStats { subscription_count: self.subscribers, user_count: self.members.len() as u64 }
    }

    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.members.is_empty()
            && !self.announced_occupied
            && self.announced_members.is_empty()
    }
}

fn key(app_id: &str, channel: &ChannelName) -> (Arc<str>, ChannelName) {
    (Arc::from(app_id), channel.clone())
}

impl MemoryPresence {
    /// Runs `f` on a channel's state, dropping the entry once it is empty.
    fn with_channel<T>(
        &self,
        app_id: &str,
        channel: &ChannelName,
        f: impl FnOnce(&mut ChannelState) -> T,
    ) -> T {
        let key = key(app_id, channel);
        let mut shard = self.channels.shard(&key);
        let state = shard.entry(key.clone()).or_default();
        let out = f(state);
        if state.is_empty() {
            shard.remove(&key);
        }
        out
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn set_counts(&self, node: u32, counts: &[ChannelCount]) -> Result<Vec<CountChange>> {
        Ok(counts
            .iter()
            .map(|ChannelCount { app_id, channel, count }| {
                self.with_channel(app_id, channel, |c| {
                    let before = c.subscribers;
                    let old = match *count {
                        0 => c.nodes.remove(&node),
                        n => c.nodes.insert(node, n),
                    };
                    c.subscribers = c.subscribers - old.unwrap_or(0) + count;
                    CountChange { before, after: c.subscribers }
                })
            })
            .collect())
    }

    async fn add_member(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        member: Member,
        max_members: usize,
    ) -> Result<MemberChange> {
        self.with_channel(app_id, channel, |c| {
            if let Some((_, sockets)) = c.members.get_mut(&member.user_id) {
                sockets.insert(socket);
                c.socket_user.insert(socket, member.user_id.clone());
                return Ok(MemberChange::Unchanged);
            }
            if c.members.len() >= max_members {
                return Err(Error::PresenceFull { limit: max_members });
            }
            c.socket_user.insert(socket, member.user_id.clone());
            c.members.insert(member.user_id.clone(), (member.clone(), HashSet::from([socket])));
            Ok(MemberChange::Changed(member))
        })
    }

    async fn remove_member(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
    ) -> Result<MemberChange> {
        Ok(self.with_channel(app_id, channel, |c| {
            let Some(user_id) = c.socket_user.remove(&socket) else {
                return MemberChange::Unchanged;
            };
            let Some((_, sockets)) = c.members.get_mut(&user_id) else {
                return MemberChange::Unchanged;
            };
            sockets.remove(&socket);
            if !sockets.is_empty() {
                return MemberChange::Unchanged;
            }
            match c.members.remove(&user_id) {
                Some((member, _)) => MemberChange::Changed(member),
                None => MemberChange::Unchanged,
            }
        }))
    }

    async fn members(&self, app_id: &str, channel: &ChannelName) -> Result<Vec<Member>> {
        let key = key(app_id, channel);
        let shard = self.channels.shard(&key);
        Ok(shard.get(&key).map(|c| c.members.values().map(|(m, _)| m.clone()).collect()).unwrap_or_default())
    }

    async fn channel(&self, app_id: &str, channel: &ChannelName) -> Result<ChannelStats> {
        let key = key(app_id, channel);
        let shard = self.channels.shard(&key);
        Ok(shard.get(&key).map(ChannelState::stats).unwrap_or_default())
    }

    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<(ChannelName, ChannelStats)>> {
        let mut out = Vec::new();
        self.channels.for_each_shard(|shard| {
            out.extend(
                shard
                    .iter()
                    .filter(|((app, name), c)| {
                        &**app == app_id && name.as_str().starts_with(prefix) && c.subscribers > 0
                    })
                    .map(|((_, name), c)| (name.clone(), c.stats())),
            );
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn announce(&self, app_id: &str, channel: &ChannelName, change: Lifecycle<'_>) -> Result<bool> {
        Ok(self.with_channel(app_id, channel, |c| match change {
            Lifecycle::Occupied => !std::mem::replace(&mut c.announced_occupied, true),
            Lifecycle::Vacated => {
                let due = c.announced_occupied && c.subscribers == 0;
                if due {
                    c.announced_occupied = false;
                }
                due
            }
            Lifecycle::MemberAdded(user) => c.announced_members.insert(Arc::from(user)),
            Lifecycle::MemberRemoved(user) => {
                !c.members.contains_key(user) && c.announced_members.remove(user)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test]
    async fn memory_broker_conforms() {
        conformance::broker_scenarios(|handler_a, handler_b| async move {
            let backbone = MemoryBackbone::new();
            (backbone.broker(handler_a), backbone.broker(handler_b))
        })
        .await;
    }

    #[tokio::test]
    async fn memory_history_conforms() {
        let backbone = MemoryBackbone::new();
        let cluster = backbone.clone();
        conformance::history_scenarios(
            |handler_a, handler_b| async move { (cluster.broker(handler_a), cluster.broker(handler_b)) },
            || async move { backbone.forget_history() },
        )
        .await;
    }

    #[tokio::test]
    async fn memory_presence_conforms() {
        conformance::presence_scenarios(&MemoryPresence::default()).await;
    }
}
