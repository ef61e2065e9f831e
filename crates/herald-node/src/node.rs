//! A node: everything the front ends of one process (the WebSocket edge and the Pusher
//! HTTP API in `herald-edge`, the gRPC API in `herald-api`) share, and its whole API.
//!
//! A [`Node`] is built whole by [`NodeBuilder`]: the backbone it publishes through and
//! keeps presence in, and optionally the cluster's idempotency keys and the event log
//! its channel events are recorded in. The methods below are the node's API; the work
//! behind them lives in the module each one names (`publish`, `share`, `lifecycle`,
//! `interest`), so this file stays the one place to read what a node does.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use herald_backbone::{
    Broker, ChannelStats, EventLog, HistoryPage, HistoryQuery, IdempotencyStore, LeaseHolder, Lifecycle,
    Member, Message, PresenceManager, Retention, Topic,
};
use herald_core::{App, Apps, ChannelName, Publication, SocketId, sharded::Sharded};
use herald_hub::{CaughtUp, ConnId, Hub, Outbox};
use herald_proto::v1::ChannelEvent;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    EdgeConfig, HistoryAnswer, HistoryError, HistoryRequest,
    debounce::Debouncer,
    input_budget::InputBudget,
    interest::Interest,
    lifecycle,
    occupancy::Occupancy,
    publish::{self, PublishError, ValidEvent},
    recorder::{EventsConfig, Recorder},
    share::{self, Joined, Share},
};

/// The shared state of one node. Cheap to share (`Arc<Node>`).
pub struct Node {
    /// Itself, for the work that outlives a call (recording what a batch of counts
    /// changed).
    this: Weak<Node>,
    pub(crate) id: u32,
    apps: Apps,
    config: EdgeConfig,
    hub: Arc<Hub>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) presence: Arc<dyn PresenceManager>,
    /// Idempotency keys shared by the cluster, if the backbone has them.
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// Where channel events are recorded for webhooks, if anywhere.
    recorder: Option<Arc<Recorder>>,
    /// This node's connections in channels: the truth the backbone's copy is rebuilt from.
    pub(crate) share: Share,
    /// This node's subscription counts, and which changed since they were last sent.
    pub(crate) occupancy: Arc<Occupancy>,
    next_conn: AtomicU64,
    /// Per app id: the id every connection of the app shares, and its open
    /// connections on this node (for `max_connections`).
    app_connections: HashMap<String, (Arc<str>, AtomicU64)>,
    /// Every open session's outbox, so shutdown and the liveness sweep reach them.
    sessions: Sharded<ConnId, Arc<Outbox>>,
    ready: AtomicBool,
    /// Edge listeners out of their port because the edge is at its connection cap.
    listeners_full: AtomicUsize,
    interest: Arc<Interest>,
    /// Debounced lifecycle announcements waiting for their time, and the signal to
    /// decide them at once (shutdown).
    pub(crate) lifecycle: TaskTracker,
    pub(crate) lifecycle_now: CancellationToken,
    /// Lifecycle announcements waiting for the debounce (one entry per channel or
    /// user, however often it was left).
    pub(crate) debounced: Arc<Debouncer>,
    /// The node's other background work (the event log appender, broker
    /// unsubscriptions), stopped and waited for by [`Node::shutdown`].
    background: TaskTracker,
    stop: CancellationToken,
    /// Unfinished client input held by this node's sessions, and its bound.
    input_budget: InputBudget,
    /// Cache channels whose `cache_miss` was recorded lately.
    pub(crate) cache_misses: lifecycle::Recently,
    /// Busy channels whose subscription count was told lately.
    pub(crate) counts_told: lifecycle::Recently,
}

/// Builds a [`Node`] with everything it works with, given at once.
pub struct NodeBuilder {
    id: u32,
    apps: Apps,
    config: EdgeConfig,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceManager>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    events: Option<(Arc<dyn EventLog>, EventsConfig)>,
}

impl NodeBuilder {
    /// Shares idempotency keys with the cluster through `store`.
    pub fn idempotency(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.idempotency = Some(store);
        self
    }

    /// Records every channel event in `log` (its topic must exist).
    pub fn record_events(mut self, log: Arc<dyn EventLog>, config: EventsConfig) -> Self {
        self.events = Some((log, config));
        self
    }

    /// The node, its background tasks started (so: inside a tokio runtime).
    pub fn build(self) -> Arc<Node> {
        let background = TaskTracker::new();
        let stop = CancellationToken::new();
        let recorder =
            self.events.map(|(log, config)| Recorder::start(log, config, &background, stop.clone()));
        let app_connections =
            self.apps.iter().map(|a| (a.id.clone(), (Arc::from(a.id.as_str()), AtomicU64::new(0)))).collect();
        let input_budget = InputBudget::new(self.config.connection.max_pending_input_bytes);
        let window = self.config.occupancy_flush;
        let node = Arc::new_cyclic(|this| Node {
            this: this.clone(),
            id: self.id,
            apps: self.apps,
            config: self.config,
            hub: self.hub,
            broker: self.broker,
            presence: self.presence,
            idempotency: self.idempotency,
            recorder,
            share: Share::new(),
            occupancy: Arc::default(),
            next_conn: AtomicU64::new(1),
            app_connections,
            sessions: Sharded::new(64),
            ready: AtomicBool::new(true),
            listeners_full: AtomicUsize::new(0),
            interest: Arc::new(Interest::new()),
            lifecycle: TaskTracker::new(),
            lifecycle_now: CancellationToken::new(),
            debounced: Arc::default(),
            background,
            stop,
            input_budget,
            cache_misses: lifecycle::Recently::default(),
            counts_told: lifecycle::Recently::default(),
        });
        let (weak, occupancy, stop) = (Arc::downgrade(&node), node.occupancy.clone(), node.stop.clone());
        node.background.spawn(Occupancy::run(weak, occupancy, window, stop));
        node
    }
}

impl Node {
    /// A node of `apps` with id `id`, publishing through `broker` (which must deliver
    /// to `hub`) and keeping presence in `presence`; see [`NodeBuilder`] for the rest.
    pub fn builder(
        id: u32,
        apps: Apps,
        config: EdgeConfig,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceManager>,
    ) -> NodeBuilder {
        NodeBuilder { id, apps, config, hub, broker, presence, idempotency: None, events: None }
    }

    /// A node id for socket ids: random, so that nodes of a cluster (almost surely)
    /// differ without coordination; operators can pin one in the config.
    pub fn random_id() -> u32 {
        fastrand::u32(1..1_000_000_000)
    }

    // === What the node is ===

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// The local fan-out: topics and their subscribers' outboxes.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The cluster's idempotency keys, if they are shared.
    pub fn idempotency_store(&self) -> Option<&Arc<dyn IdempotencyStore>> {
        self.idempotency.as_ref()
    }

    /// Cluster-wide channel occupancy and presence members.
    pub fn presence(&self) -> &Arc<dyn PresenceManager> {
        &self.presence
    }

    /// The event log writer, if this node records events.
    pub fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.recorder.as_ref()
    }

    // === Connections ===

    /// Every open session's outbox, by connection.
    pub fn sessions(&self) -> &Sharded<ConnId, Arc<Outbox>> {
        &self.sessions
    }

    /// The node-wide bound on unfinished client input.
    pub fn input_budget(&self) -> &InputBudget {
        &self.input_budget
    }

    /// Bytes of unfinished client input (partial frames and messages) this node holds,
    /// bounded by `connection.max_pending_input_bytes`.
    pub fn pending_input_bytes(&self) -> usize {
        self.input_budget.held()
    }

    /// Whether the node takes new clients (`/readyz`); if not, why.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        if self.listeners_full.load(Ordering::Relaxed) > 0 {
            return Err("at capacity");
        }
        Ok(())
    }

    /// An edge listener left its port at the connection cap (`true`), or rejoined it
    /// (`false`): not ready while any is out.
    pub fn set_listener_full(&self, full: bool) {
        if full {
            self.listeners_full.fetch_add(1, Ordering::Relaxed);
        } else {
            self.listeners_full.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// From now on `/readyz` says no: the node is draining.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    pub fn next_socket_id(&self) -> SocketId {
        SocketId { node: self.id, conn: self.next_conn.fetch_add(1, Ordering::Relaxed) }
    }

    /// Counts a new connection of `app_id` and returns the app id the connection
    /// keeps (one allocation per app, shared by all its connections); refuses it past
    /// `max` (0 = unlimited).
    pub fn acquire_connection(&self, app_id: &str, max: u64) -> Option<Arc<str>> {
        let (id, count) = self.app_connections.get(app_id)?;
        let previous = count.fetch_add(1, Ordering::AcqRel);
        if max != 0 && previous >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(id.clone())
    }

    pub fn release_connection(&self, app_id: &str) {
        if let Some((_, count)) = self.app_connections.get(app_id) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    // === Subscriptions ===

    /// Adds a local subscriber and makes sure the node receives the topic before
    /// returning (so nothing published after a subscription ack is missed). On error
    /// the local subscription is undone.
    pub async fn subscribe(
        &self,
        topic: &Topic,
        conn: ConnId,
        outbox: Arc<Outbox>,
    ) -> herald_backbone::Result<()> {
        self.hub.subscribe(topic, conn, outbox);
        if let Err(e) = self.interest.reconcile(&self.hub, self.broker.as_ref(), topic).await {
            self.hub.unsubscribe(topic, conn);
            return Err(e);
        }
        Ok(())
    }

    /// Starts a subscription that catches up on the channel's history first
    /// ([`Hub::begin_catch_up`]), and makes sure the node receives the topic before
    /// returning: a history read after this misses nothing published since (the
    /// broker's merge guarantee). On error nothing of it stays.
    pub async fn begin_catch_up(
        &self,
        topic: &Topic,
        conn: ConnId,
        outbox: Arc<Outbox>,
    ) -> herald_backbone::Result<()> {
        self.hub.begin_catch_up(topic, conn, outbox);
        if let Err(e) = self.interest.reconcile(&self.hub, self.broker.as_ref(), topic).await {
            self.abandon_catch_up(topic, conn);
            return Err(e);
        }
        Ok(())
    }

    /// Reads a channel's history (a catch-up, the HTTP and gRPC history APIs).
    pub async fn history(
        &self,
        topic: &Topic,
        retention: Retention,
        query: HistoryQuery,
    ) -> herald_backbone::Result<HistoryPage> {
        self.broker.history(topic, retention, query).await
    }

    /// A backend's read of a channel's history, validated as both APIs validate it.
    pub async fn read_history(
        &self,
        app: &App,
        request: HistoryRequest,
    ) -> Result<HistoryAnswer, HistoryError> {
        crate::history::read(self, app, request).await
    }

    /// Ends a catch-up: `first` (the missed history and the subscription ack), then what
    /// was published meanwhile above offset `after`, then live ([`Hub::finish_catch_up`]).
    pub fn finish_catch_up(&self, topic: &Topic, conn: ConnId, after: u64, first: Vec<Bytes>) -> CaughtUp {
        let caught_up = self.hub.finish_catch_up(topic, conn, after, first);
        if caught_up == CaughtUp::Overflowed {
            self.reconcile_later(topic);
        }
        caught_up
    }

    /// Abandons a catch-up; the broker unsubscription (if no one else is left)
    /// happens in the background, retried.
    pub fn abandon_catch_up(&self, topic: &Topic, conn: ConnId) {
        if self.hub.abandon_catch_up(topic, conn) {
            self.reconcile_later(topic);
        }
    }

    fn reconcile_later(&self, topic: &Topic) {
        let (hub, broker) = (self.hub.clone(), self.broker.clone());
        self.interest.reconcile_later(&self.background, &self.stop, hub, broker, topic.clone());
    }

    /// Removes a local subscriber; the broker unsubscription (after the last one)
    /// happens in the background, retried.
    pub fn unsubscribe(&self, topic: &Topic, conn: ConnId) {
        if self.hub.unsubscribe(topic, conn) {
            self.reconcile_later(topic);
        }
    }

    // === Publishing ===

    /// Publishes one event to its channel's subscribers on every node. The one publish
    /// path of the HTTP API, the gRPC API and client events.
    pub async fn publish(&self, publication: Publication) -> herald_backbone::Result<()> {
        let topic = Topic::channel(&publication.app_id, &publication.channel);
        self.broker.publish(&topic, Message::Publication(publication)).await
    }

    /// Adds `socket` to `channel` (as `member`, in a presence channel) in the node's
    /// share and the backbone. On error nothing of it stays.
    pub async fn join_presence(
        &self,
        app_id: &Arc<str>,
        channel: &ChannelName,
        socket: SocketId,
        member: Option<Member>,
        max_members: usize,
    ) -> herald_backbone::Result<Joined> {
        share::join_presence(self, app_id, channel, socket, member, max_members).await
    }

    /// Removes `socket` from `channel` in the node's share and the backbone. Returns
    /// the channel's remaining subscription count and the member that left (its user's
    /// last connection), where the backbone could tell; what it could not do is done
    /// by the next re-assertion.
    pub async fn leave_presence(
        &self,
        app_id: &Arc<str>,
        channel: &ChannelName,
        socket: SocketId,
        member: bool,
    ) -> Option<Member> {
        share::leave_presence(self, app_id, channel, socket, member).await
    }

    /// A connection signed in as `user_id` (for watchlists): adds it to the app's
    /// online users and, if the user was offline cluster-wide, tells its watchers.
    pub async fn user_online(
        &self,
        app_id: &Arc<str>,
        socket: SocketId,
        user_id: &Arc<str>,
    ) -> herald_backbone::Result<()> {
        if share::join_online(self, app_id, socket, user_id).await? {
            share::tell_watchers(self, app_id, user_id, true).await;
        }
        Ok(())
    }

    /// A signed-in connection ended: removes it from the app's online users and, if it
    /// was its user's last anywhere, tells the user's watchers.
    pub async fn user_offline(&self, app_id: &Arc<str>, socket: SocketId) {
        if let Some(member) = share::leave_online(self, app_id, socket).await {
            share::tell_watchers(self, app_id, &member.user_id, false).await;
        }
    }

    /// Makes `conn` receive the online and offline news of each user of `watchlist`,
    /// then returns which of them are online now (so nothing happening in between is
    /// missed).
    pub async fn watch(
        &self,
        app_id: &Arc<str>,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        watchlist: &[Arc<str>],
    ) -> herald_backbone::Result<Vec<bool>> {
        for (at, user) in watchlist.iter().enumerate() {
            if let Err(e) = self.subscribe(&Topic::watchers(app_id, user), conn, outbox.clone()).await {
                self.unwatch(app_id, conn, &watchlist[..at]);
                return Err(e);
            }
        }
        self.presence.are_members(app_id, &ChannelName::online_users(), watchlist).await
    }

    /// Stops `conn` receiving news of the users of `watchlist`.
    pub fn unwatch(&self, app_id: &Arc<str>, conn: ConnId, watchlist: &[Arc<str>]) {
        for user in watchlist {
            self.unsubscribe(&Topic::watchers(app_id, user), conn);
        }
    }

    /// A lease holder for this node: how the backbone's lease keeper reports reaped
    /// nodes and asks for re-assertions.
    pub fn lease_holder(self: &Arc<Self>) -> Arc<dyn LeaseHolder> {
        share::lease_holder(self)
    }

    /// Publishes a presence event to a channel's subscribers on every node.
    pub async fn tell(
        &self,
        app_id: &str,
        channel: &ChannelName,
        event: &str,
        data: &str,
        exclude: Option<SocketId>,
    ) {
        share::tell(self, app_id, channel, event, data, exclude).await
    }

    /// `pusher_internal:member_removed` for `user_id`, to the channel's subscribers on
    /// every node: its last connection left (here, or on a node that crashed).
    pub async fn tell_member_removed(&self, app_id: &str, channel: &ChannelName, user_id: &str) {
        share::tell_member_removed(self, app_id, channel, user_id).await
    }

    /// Publishes a validated event to each of its channels, on every node.
    pub async fn publish_event(&self, app: &App, event: &ValidEvent) -> Result<(), PublishError> {
        publish::publish_event(self, app, event).await
    }

    /// Publishes validated events, in order, each to each of its channels, on every
    /// node; several at once go to the broker as one batch, so each subscriber gets
    /// its share of them in one write.
    pub async fn publish_events<'a>(
        &self,
        app: &App,
        events: impl IntoIterator<Item = &'a ValidEvent>,
    ) -> Result<(), PublishError> {
        publish::publish_events(self, app, events).await
    }

    /// Closes every connection signed in as `user_id`, on every node.
    pub async fn terminate_user(&self, app: &App, user_id: &str) -> Result<(), PublishError> {
        publish::terminate_user(self, app, user_id).await
    }

    /// Hands a lifecycle or client event to the event log, if there is one.
    pub fn record(&self, event: impl FnOnce() -> ChannelEvent) {
        lifecycle::record(self, event)
    }

    /// A client subscribed to a cache channel that had no cached event: records
    /// `cache_miss` for the app's webhooks (once per channel and node within 5 s).
    pub fn record_cache_miss(&self, app_id: &Arc<str>, channel: &ChannelName) {
        lifecycle::record_cache_miss(self, app_id, channel)
    }

    /// After a join that made `user` a member of the presence channel: records
    /// `member_added` if the cluster had not announced it, after the node's counts
    /// (so `channel_occupied`, when due, comes first, as Pusher sends them).
    pub async fn record_joined(&self, app_id: &str, channel: &ChannelName, user: &str) {
        if self.recorder.is_some() {
            self.flush_counts().await;
        }
        lifecycle::record_joined(self, app_id, channel, user).await
    }

    /// Sends this node's changed subscription counts to the backbone now, instead of
    /// with the next batch.
    pub async fn flush_counts(&self) {
        if let Some(node) = self.this.upgrade() {
            node.occupancy.flush(&node).await;
        }
    }

    /// A channel's cluster-wide counts, this node's latest included (so a client
    /// that subscribed through this node is counted in this node's answer at once;
    /// other nodes' counts are at most `occupancy_flush` old).
    pub async fn channel_stats(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> herald_backbone::Result<ChannelStats> {
        self.flush_counts().await;
        self.presence.channel(app_id, channel).await
    }

    /// Every occupied channel of an app whose name starts with `prefix`, with its
    /// counts, this node's latest included.
    pub async fn channel_list(
        &self,
        app_id: &str,
        prefix: &str,
    ) -> herald_backbone::Result<Vec<(ChannelName, ChannelStats)>> {
        self.flush_counts().await;
        self.presence.channels(app_id, prefix).await
    }

    /// After a leave that left `count` subscribers (and, in a presence channel, maybe
    /// removed the user's last connection): records `subscription_count` now, and
    /// `channel_vacated` / `member_removed` after the debounce if still true then.
    pub fn record_left(
        self: &Arc<Self>,
        app_id: &str,
        channel: &ChannelName,
        count: Option<u64>,
        removed_user: Option<&str>,
    ) {
        lifecycle::record_left(self, app_id, channel, count, removed_user)
    }

    /// At shutdown: decides every debounced announcement now, and waits (at most
    /// `within`) until they and everything queued before are in the event log.
    pub async fn flush_events(&self, within: Duration) {
        lifecycle::flush_events(self, within).await
    }

    /// Records the lifecycle event `change` if the cluster decides it is due.
    pub async fn announce(&self, app_id: &str, channel: &ChannelName, change: Lifecycle<'_>) {
        lifecycle::announce(self, app_id, channel, change).await
    }

    /// A crashed node's connection was reaped: records what that changed, as a leave
    /// on this node would have (`member` left; `None`: the channel lost its last
    /// subscriber).
    pub fn record_reaped(self: &Arc<Self>, app_id: &str, channel: &ChannelName, member: Option<&str>) {
        let count = if member.is_none() { Some(0) } else { None };
        self.record_left(app_id, channel, count, member);
    }

    // === Shutdown ===

    /// At shutdown, after the sessions have closed: decides every debounced
    /// announcement now, waits until they and everything queued before are in the
    /// event log, then stops the node's background work and waits for it, all
    /// within `within`.
    pub async fn shutdown(self: &Arc<Self>, within: Duration) {
        let stopped = async {
            // The counts the closed sessions left go first: they decide `vacated`.
            self.occupancy.flush(self).await;
            self.flush_events(within).await;
            self.stop.cancel();
            self.background.close();
            self.background.wait().await;
        };
        if tokio::time::timeout(within, stopped).await.is_err() {
            tracing::warn!("the node's background work had not stopped within the grace period");
        }
    }
}
