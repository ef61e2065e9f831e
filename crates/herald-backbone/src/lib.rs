//! The backbone that ties Herald's stateless edge nodes into one cluster: the
//! [`Broker`] (fan-out of publications between nodes) and the [`PresenceManager`]
//! (cluster-wide channel occupancy and presence members), with in-memory
//! implementations for `herald dev` and tests; and the [`EventLog`], the durable
//! record of every channel event that the webhook dispatcher consumes. Redis implementations live in
//! `herald-redis`; every implementation must pass [`conformance`].

use std::{borrow::Cow, fmt, sync::Arc};

use async_trait::async_trait;
use herald_core::{ChannelName, Publication, SocketId, StreamPosition};

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod event_log;
mod history;
mod lease;
pub mod memory;
mod memory_log;

pub use event_log::{Append, EventLog, LogConsumer, LogRecord, Position};
pub use history::{Direction, HistoryPage, HistoryQuery, Retention};
pub use lease::{Gap, Held, LeaseHolder, Reaped};
pub use memory::{MemoryBackbone, MemoryBroker, MemoryPresence};
pub use memory_log::{DEFAULT_MAX_RECORDS, MemoryEventLog};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A backend (broker, presence, store, event log) cannot be reached or failed; the
    /// operation did not happen. Retryable. The one error type for this, whichever
    /// backend and whichever role: callers decide on [`Error::is_retryable`].
    #[error("backbone unavailable: {0}")]
    Unavailable(Unavailable),
    /// A presence channel already has its maximum number of members.
    #[error("presence channel has reached its limit of {limit} members")]
    PresenceFull { limit: usize },
}

impl Error {
    /// The backend is unavailable, for a reason that has no error value of its own.
    pub fn unavailable(what: impl Into<Cow<'static, str>>) -> Self {
        Self::Unavailable(Unavailable { what: what.into(), source: None })
    }

    /// The backend is unavailable because of `source` (kept: [`std::error::Error::source`]
    /// walks to it).
    pub fn unavailable_because(
        what: impl Into<Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable(Unavailable { what: what.into(), source: Some(Arc::new(source)) })
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// What was unavailable (`"redis"`, `"kafka: creating topics"`), and the backend's own
/// error when there is one. Its text includes the source's, so a log line with `%e` says
/// everything; [`std::error::Error::source`] still returns the source for callers that
/// inspect it.
#[derive(Debug, Clone)]
pub struct Unavailable {
    what: Cow<'static, str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for Unavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A broker topic: a channel of an app, or a node-internal per-user control topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub app_id: Arc<str>,
    pub name: Arc<str>,
}

impl Topic {
    pub fn channel(app_id: &Arc<str>, channel: &ChannelName) -> Self {
        Self { app_id: app_id.clone(), name: Arc::from(channel.as_str()) }
    }

    /// Control messages for one user's connections (terminate). `:` cannot appear in a
    /// channel name, so this never collides with a channel topic.
    pub fn user(app_id: &Arc<str>, user_id: &str) -> Self {
        Self { app_id: app_id.clone(), name: Arc::from(format!("#user:{user_id}")) }
    }

    /// Online and offline news of one user, for the connections that watch it.
    pub fn watchers(app_id: &Arc<str>, user_id: &str) -> Self {
        Self { app_id: app_id.clone(), name: Arc::from(format!("#watch:{user_id}")) }
    }
}

/// What nodes send each other through the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An event for the subscribers of a channel.
    Publication(Publication),
    /// Close every connection signed in as this user (`terminate_connections`).
    TerminateUser { user_id: Arc<str> },
    /// The user came online (its first signed-in connection, cluster-wide) or went
    /// offline (its last): for the connections watching it.
    Watchlist { user_id: Arc<str>, online: bool },
}

/// Receives the messages of the topics a node subscribed to. Called on the broker's
/// delivery task: it must not block (hand work off, never await I/O).
pub trait MessageHandler: Send + Sync + 'static {
    fn handle(&self, topic: &Topic, message: Message);

    /// Several messages at once, in order (a batch publish, or what a broker read in
    /// one go), so the handler can coalesce what it sends. The default handles them
    /// one by one.
    fn handle_batch(&self, messages: Vec<(Topic, Message)>) {
        for (topic, message) in messages {
            self.handle(&topic, message);
        }
    }
}

/// Fan-out of messages between nodes.
///
/// Contract, for every implementation:
/// - **Interest-based**: a node receives the messages of a topic only between its
///   `subscribe` and `unsubscribe` of that topic; messages to topics nobody subscribed
///   to are dropped. Subscribing twice is the same as once.
/// - **At most once**: a published message reaches each subscribed node at most once;
///   a message published while the backbone is down fails with
///   [`Error::Unavailable`] instead of vanishing.
/// - **Ordered per topic**: messages one node publishes to one topic are handled by
///   every subscribed node in publish order.
/// - `publish` returns once the backbone has accepted the message; delivery to nodes
///   happens asynchronously (the memory broker delivers before returning).
/// - Cancellation: dropping a `publish` future may or may not publish the message;
///   dropping `subscribe`/`unsubscribe` leaves the interest unchanged or changed, never
///   half-changed.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<()>;

    /// Publishes several messages in order, as one operation where the backbone can
    /// (one round trip, one hand-over to each node's handler). On error, a prefix of
    /// them may have been published. The default publishes them one by one.
    async fn publish_batch(&self, messages: Vec<(Topic, Message)>) -> Result<()> {
        for (topic, message) in messages {
            self.publish(&topic, message).await?;
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<()>;
    async fn unsubscribe(&self, topic: &Topic) -> Result<()>;

    /// Publishes publications of channels that keep history: each is kept in its
    /// channel's history under its retention and given the channel's next offset **in
    /// the same step that publishes it**, so every node receives a channel's
    /// publications in offset order, whichever nodes published them, and each arrives
    /// with its [`Publication::position`] set. Returns the positions given, in order.
    /// On error, a prefix of them may have been published (and kept).
    async fn publish_kept(
        &self,
        publications: Vec<(Topic, Publication, Retention)>,
    ) -> Result<Vec<StreamPosition>>;

    /// Reads a channel's history ([`HistoryQuery`]): the kept publications (trimmed to
    /// the last `retention.size`, none older than `retention.ttl`) with their
    /// positions, and the channel's latest position. A channel without an epoch gets
    /// one, and a read keeps its offset and epoch for another `retention.meta_ttl`, so
    /// the position a reader was given stays valid for the publications that follow.
    ///
    /// **The merge guarantee** recovery is built on: when this node had subscribed to
    /// the topic before the call, every publication of the topic with an offset above
    /// the returned position reaches this node's handler. Publications at or below it
    /// may reach the handler after the call too (published before the read, still on
    /// their way): a reader that replays the page drops those (see `herald-hub`'s
    /// catch-up).
    async fn history(&self, topic: &Topic, retention: Retention, query: HistoryQuery) -> Result<HistoryPage>;
}

/// The outcome of [`IdempotencyStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the key: publish, then `complete` (or `release` on failure).
    Won,
    /// Already published within the window, as this publication id.
    Done(String),
    /// Another node is publishing it right now; ask again shortly.
    Pending,
}

/// Idempotency keys shared by every node, so a publish retried against another
/// node within the window is still published once. Nodes without one keep keys
/// per node.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` of `app_id` for `window`, for the publication `id`.
    async fn claim(&self, app_id: &str, key: &str, id: &str, window: std::time::Duration) -> Result<Claim>;
    /// The claimed publish succeeded: duplicates get `id` until the window ends.
    async fn complete(&self, app_id: &str, key: &str, id: &str, window: std::time::Duration) -> Result<()>;
    /// The claimed publish failed: forget the key, so a retry can publish.
    async fn release(&self, app_id: &str, key: &str) -> Result<()>;
}

/// One node's subscription count of one channel: how many of its connections are
/// subscribed to it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelCount {
    pub app_id: Arc<str>,
    pub channel: ChannelName,
    pub count: u64,
}

/// A channel's cluster-wide subscription count before and after a node's count of it
/// was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountChange {
    pub before: u64,
    pub after: u64,
}

impl CountChange {
    /// The channel had no subscriber and has one now (it may be announced occupied).
    pub fn occupied(self) -> bool {
        self.before == 0 && self.after > 0
    }

    /// The channel had subscribers and has none now (it may be announced vacated).
    pub fn vacated(self) -> bool {
        self.before > 0 && self.after == 0
    }
}

/// A presence channel member: one user, however many connections it has.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user_id: Arc<str>,
    pub user_info: serde_json::Value,
}

/// Cluster-wide counts of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelStats {
    /// Connections subscribed, across all nodes.
    pub subscription_count: u64,
    /// Distinct users (presence channels only; 0 otherwise).
    pub user_count: u64,
}

/// What happened to a presence channel's member set when a connection joined or left.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberChange {
    /// The user was not a member before (emit `member_added`) / has no connection left
    /// (emit `member_removed`).
    Changed(Member),
    /// The user was already a member through another connection / still has one: no
    /// event, so `member_added`/`member_removed` fire once per user.
    Unchanged,
}

/// A channel lifecycle change to announce (as a webhook event) once, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle<'a> {
    /// The channel got a subscriber.
    Occupied,
    /// The channel may have lost its last subscriber.
    Vacated,
    /// The user joined the presence channel.
    MemberAdded(&'a str),
    /// The user may have left the presence channel.
    MemberRemoved(&'a str),
}

/// Cluster-wide channel occupancy and presence membership.
///
/// Contract, for every implementation:
/// - **Occupancy is kept per node**: each node sets how many of its connections are
///   subscribed to a channel ([`PresenceManager::set_counts`], batched: a node touches
///   the backend when its own counts change, not once per client), and a channel's
///   subscription count is the sum over nodes. Setting a count is absolute, so setting
///   it twice is as once.
/// - A user with several connections in a presence channel is one member: only its
///   first connection's join and its last connection's leave report
///   [`MemberChange::Changed`], so lifecycle events fire once per user cluster-wide.
/// - `add_member` refuses a new user past `max_members` with [`Error::PresenceFull`]
///   (another connection of an existing member is always accepted).
/// - Reads (`members`, `channel`, `channels`) reflect every completed write.
/// - Implementations with several nodes hold a per-node lease, so the connections of a
///   crashed node disappear within a bounded time, and never take a live node for a
///   crashed one because their own view was interrupted.
/// - Writes are idempotent (setting a count, adding a member, leaving twice is as once), so a
///   node can re-assert its whole share after any gap ([`LeaseHolder`]).
#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    /// Sets `node`'s subscription count of each channel (0: it has none); returns, in
    /// the same order, each channel's cluster-wide count before and after. On error a
    /// part of them may be set (setting them again is harmless).
    async fn set_counts(&self, node: u32, counts: &[ChannelCount]) -> Result<Vec<CountChange>>;
    async fn add_member(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        member: Member,
        max_members: usize,
    ) -> Result<MemberChange>;
    async fn remove_member(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
    ) -> Result<MemberChange>;
    /// The members of a presence channel, one per user, in no particular order.
    async fn members(&self, app_id: &str, channel: &ChannelName) -> Result<Vec<Member>>;
    /// Which of `user_ids` are members of the presence channel, in the same order.
    async fn are_members(
        &self,
        app_id: &str,
        channel: &ChannelName,
        user_ids: &[Arc<str>],
    ) -> Result<Vec<bool>> {
        let members = self.members(app_id, channel).await?;
        Ok(user_ids.iter().map(|user| members.iter().any(|m| m.user_id == *user)).collect())
    }
    async fn channel(&self, app_id: &str, channel: &ChannelName) -> Result<ChannelStats>;
    /// Every occupied channel of an app whose name starts with `prefix`.
    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<(ChannelName, ChannelStats)>>;

    /// Decides, atomically and once cluster-wide, whether a lifecycle event is due,
    /// so webhooks see `occupied`/`vacated` (and `member_added`/`member_removed`)
    /// strictly alternate per channel (per user) however nodes race:
    /// - `Occupied` / `MemberAdded(user)`: true if it was not announced yet (and now
    ///   is). Callers ask when a join made the channel (the user) present.
    /// - `Vacated` / `MemberRemoved(user)`: true if it was announced and the channel
    ///   has no subscriber (the user no connection) right now; the announcement is
    ///   then withdrawn. Callers ask a debounce period after the last leave, so a
    ///   quick reconnect, on any node, announces nothing at all.
    async fn announce(&self, app_id: &str, channel: &ChannelName, change: Lifecycle<'_>) -> Result<bool>;
}
