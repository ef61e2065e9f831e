//! A node: everything the edge's sessions and APIs share.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_backbone::{Broker, EventLog, IdempotencyStore, Message, PresenceManager, Topic};
use herald_core::{Apps, Publication, SocketId, sharded::Sharded};
use herald_hub::{ConnId, Hub, Outbox};
use parking_lot::Mutex;

use crate::{
    EdgeConfig,
    events::{EventsConfig, Recorder},
    input_budget::InputBudget,
};

/// The shared state of one edge node. Cheap to share (`Arc<Node>`).
pub struct Node {
    pub(crate) id: u32,
    pub(crate) apps: Apps,
    pub(crate) config: EdgeConfig,
    pub(crate) hub: Arc<Hub>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) presence: Arc<dyn PresenceManager>,
    /// This node's connections in channels: the truth the backbone's copy is rebuilt from.
    pub(crate) share: crate::share::Share,
    next_conn: AtomicU64,
    /// Open connections per app id on this node (for `max_connections`).
    app_connections: HashMap<String, AtomicU64>,
    /// Every open session's outbox, so shutdown can close them.
    pub(crate) sessions: Sharded<ConnId, Arc<Outbox>>,
    ready: AtomicBool,
    interest: Interest,
    /// Idempotency keys shared by the cluster, if the backbone has them.
    idempotency: OnceLock<Arc<dyn IdempotencyStore>>,
    /// Where channel events are recorded for webhooks, if anywhere.
    pub(crate) recorder: OnceLock<Arc<Recorder>>,
    /// Debounced lifecycle announcements waiting for their time, and the signal to
    /// decide them at once (shutdown).
    pub(crate) lifecycle: tokio_util::task::TaskTracker,
    pub(crate) lifecycle_now: tokio_util::sync::CancellationToken,
    /// Unfinished client input held by this node's sessions, and its bound.
    pub(crate) input_budget: InputBudget,
    /// Lifecycle announcements waiting for the debounce (one entry per channel or
    /// user, however often it was left).
    pub(crate) debounced: Arc<crate::debounce::Debouncer>,
}

/// The broker topics this node is subscribed to, kept equal to the topics with local
/// subscribers. Changes to one topic are serialized by a striped async lock, so a
/// subscribe racing an unsubscribe can never leave the node deaf to a channel it serves.
struct Interest {
    hasher: RandomState,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    subscribed: Mutex<HashSet<Topic>>,
}

impl Node {
    /// `hub` must be the handler the `broker` delivers to.
    pub fn new(
        id: u32,
        apps: Apps,
        config: EdgeConfig,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceManager>,
    ) -> Arc<Self> {
        let app_connections = apps.iter().map(|a| (a.id.clone(), AtomicU64::new(0))).collect();
        let input_budget = InputBudget::new(config.connection.max_pending_input_bytes);
        Arc::new(Self {
            id,
            apps,
            config,
            hub,
            broker,
            presence,
            share: crate::share::Share::new(),
            next_conn: AtomicU64::new(1),
            app_connections,
            sessions: Sharded::new(64),
            ready: AtomicBool::new(true),
            idempotency: OnceLock::new(),
            recorder: OnceLock::new(),
            lifecycle: tokio_util::task::TaskTracker::new(),
            lifecycle_now: tokio_util::sync::CancellationToken::new(),
            input_budget,
            debounced: Arc::default(),
            interest: Interest {
                hasher: RandomState::new(),
                stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
                subscribed: Mutex::new(HashSet::new()),
            },
        })
    }

    /// A node id for socket ids: random, so that nodes of a cluster (almost surely)
    /// differ without coordination; operators can pin one in the config.
    pub fn random_id() -> u32 {
        fastrand::u32(1..1_000_000_000)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// Shares idempotency keys with the cluster through `store` (set once, at start).
    pub fn share_idempotency_keys(&self, store: Arc<dyn IdempotencyStore>) {
        let _ = self.idempotency.set(store);
    }

    /// Records every channel event in `log` (set once, at start; the topic must exist).
    pub fn record_events_to(&self, log: Arc<dyn EventLog>, config: EventsConfig) {
        let _ = self.recorder.set(Recorder::start(log, config));
    }

    /// A crashed node's connection was reaped: records what that changed, as a leave
    /// on this node would have (`member` left; `None`: the channel lost its last
    /// subscriber).
    pub fn record_reaped(
        self: &Arc<Self>,
        app_id: &str,
        channel: &herald_core::ChannelName,
        member: Option<&str>,
    ) {
        let count = if member.is_none() { Some(0) } else { None };
        self.record_left(app_id, channel, count, member);
    }

    /// The cluster's idempotency keys, if they are shared.
    pub fn idempotency_store(&self) -> Option<&Arc<dyn IdempotencyStore>> {
        self.idempotency.get()
    }

    /// Cluster-wide channel occupancy and presence members.
    pub fn presence(&self) -> &Arc<dyn PresenceManager> {
        &self.presence
    }

    /// Bytes of unfinished client input (partial frames and messages) this node holds,
    /// bounded by `connection.max_pending_input_bytes`.
    pub fn pending_input_bytes(&self) -> usize {
        self.input_budget.held()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    pub(crate) fn next_socket_id(&self) -> SocketId {
        SocketId { node: self.id, conn: self.next_conn.fetch_add(1, Ordering::Relaxed) }
    }

    /// Counts a new connection of `app_id`; refuses it past `max` (0 = unlimited).
    pub(crate) fn acquire_connection(&self, app_id: &str, max: u64) -> bool {
        let Some(count) = self.app_connections.get(app_id) else {
            return false;
        };
        let previous = count.fetch_add(1, Ordering::AcqRel);
        if max != 0 && previous >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn release_connection(&self, app_id: &str) {
        if let Some(count) = self.app_connections.get(app_id) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Publishes one event to its channel's subscribers on every node. The one publish
    /// path of the HTTP API, the gRPC API and client events.
    pub async fn publish(&self, publication: Publication) -> herald_backbone::Result<()> {
        let topic = Topic::channel(&publication.app_id, &publication.channel);
        self.broker.publish(&topic, Message::Publication(publication)).await
    }

    /// Adds a local subscriber and makes sure the node receives the topic before
    /// returning (so nothing published after a subscription ack is missed). On error
    /// the local subscription is undone.
    pub(crate) async fn subscribe(
        &self,
        topic: &Topic,
        conn: ConnId,
        outbox: Arc<Outbox>,
    ) -> herald_backbone::Result<()> {
        self.hub.subscribe(topic, conn, outbox);
        if let Err(e) = self.reconcile_interest(topic).await {
            self.hub.unsubscribe(topic, conn);
            return Err(e);
        }
        Ok(())
    }

    /// Removes a local subscriber; the broker unsubscription (after the last one)
    /// happens in the background, retried.
    pub(crate) fn unsubscribe(self: &Arc<Self>, topic: &Topic, conn: ConnId) {
        if self.hub.unsubscribe(topic, conn) {
            let node = self.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(100);
                for attempt in 1..=10 {
                    match node.reconcile_interest(&topic).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, attempt, "broker unsubscribe failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            });
        }
    }

    async fn reconcile_interest(&self, topic: &Topic) -> herald_backbone::Result<()> {
        let stripe = self.interest.hasher.hash_one(topic) as usize % self.interest.stripes.len();
        let _serialized = self.interest.stripes[stripe].lock().await;
        let want = self.hub.has_subscribers(topic);
        let have = self.interest.subscribed.lock().contains(topic);
        if want && !have {
            self.broker.subscribe(topic).await?;
            self.interest.subscribed.lock().insert(topic.clone());
        } else if !want && have {
            self.broker.unsubscribe(topic).await?;
            let mut subscribed = self.interest.subscribed.lock();
            subscribed.remove(topic);
            herald_core::sharded::shrink_set(&mut *subscribed);
        }
        Ok(())
    }
}
