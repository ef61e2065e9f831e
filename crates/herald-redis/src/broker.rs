//! [`RedisBroker`]: fan-out between edge nodes over Redis pub/sub.
//!
//! - **Interest-based**: a node subscribes to a topic's Redis channel only while it has
//!   local subscribers (the node decides; this implements `subscribe`/`unsubscribe`).
//!   Redis then sends each publication once to each interested node.
//! - **Two connections per node**, whatever the number of channels or clients: one
//!   multiplexed connection publishes (commands pipelined in order, so publications
//!   from one node to one channel arrive in publish order), one pub/sub connection
//!   receives.
//! - **Batches**: `publish_batch` is one pipeline, and everything the subscriber
//!   connection has ready goes to the handler in one `handle_batch`, so bursts stay
//!   coalesced into one write per socket on the receiving nodes.
//! - **Outages**: publishing fails with `Unavailable` while Redis is unreachable
//!   (never silently); the subscriber connection is re-established with exponential
//!   backoff and jitter and every wanted channel resubscribed; the gap is logged.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use herald_backbone::{
    Broker, Error, HistoryPage, HistoryQuery, Message, MessageHandler, Result, Retention, Topic,
};
use herald_core::{Publication, StreamPosition, time::Backoff};
use herald_telemetry::Metric;
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_stream::{Stream, StreamExt};

use crate::{
    Connection, RedisTls, Shards, client, cluster::ClusterBroker, history::HistoryScripts, unavailable, wire,
};

/// Where and how to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://host:port/` (or `rediss://` for TLS) of each independent Redis;
    /// channels are spread over them by consistent hashing (one URL: no sharding).
    pub urls: Vec<String>,
    /// Prefix of every Redis channel name, so several clusters can share a Redis.
    pub prefix: String,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// `urls` are nodes of one Redis Cluster: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`)
    /// and keys spread by slot, instead of independent instances.
    pub cluster: bool,
    /// How long a command may wait for its answer before it fails (`Unavailable`; it
    /// is not sent again: Redis may still run it).
    pub command_timeout: Duration,
    /// The ACL user every connection authenticates as; `None`: the URL's, else
    /// Redis's default user.
    pub username: Option<String>,
    /// The password every connection authenticates with; `None`: the URL's, if any.
    pub password: Option<String>,
    /// CA and client certificate for `rediss://` URLs.
    pub tls: RedisTls,
}

/// Never prints a password: not `password`, nor one in a URL.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { urls: _, prefix, max_backoff, cluster, command_timeout, username, password, tls } = self;
        f.debug_struct("RedisConfig")
            .field("urls", &self.urls_redacted())
            .field("prefix", prefix)
            .field("max_backoff", max_backoff)
            .field("cluster", cluster)
            .field("command_timeout", command_timeout)
            .field("username", username)
            .field("password", &password.as_ref().map(|_| "<redacted>"))
            .field("tls", tls)
            .finish()
    }
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self::sharded(vec![url.into()])
    }

    /// `urls` with any password in them replaced by `***`, for logs and errors.
    pub fn urls_redacted(&self) -> Vec<String> {
        self.urls.iter().map(|url| client::redact_url(url)).collect()
    }

    /// Channels spread over several independent Redis instances. Every node of a
    /// cluster must list the same URLs in the same order.
    pub fn sharded(urls: Vec<String>) -> Self {
        Self {
            urls,
            prefix: "herald".into(),
            max_backoff: Duration::from_secs(5),
            cluster: false,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            username: None,
            password: None,
            tls: RedisTls::default(),
        }
    }
}

/// [`RedisConfig::command_timeout`] by default: long enough for a Redis busy with a
/// reconnection storm, short enough to tell a publisher soon that Redis is gone.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Most messages handed to the handler at once.
const MAX_BATCH: usize = 256;

/// A node's broker over one Redis, several (each topic lives on one of them), or a
/// Redis Cluster (sharded pub/sub).
pub struct RedisBroker {
    shards: Shards<Arc<Inner>>,
    receivers: Vec<JoinHandle<()>>,
    cluster: Option<ClusterBroker>,
    history: HistoryScripts,
}

/// The broker's share of one Redis.
struct Inner {
    client: redis::Client,
    config: RedisConfig,
    /// The publishing connection (replaced when it breaks).
    publisher: Connection,
    /// Sends (un)subscriptions on the receiving connection; `None` while it is down.
    subscriber: tokio::sync::Mutex<Option<PubSubSink>>,
    /// The topics this node wants, by Redis channel name.
    wanted: Mutex<HashMap<String, Topic>>,
    /// Channels waiting to be subscribed, and who waits for each: whoever next holds
    /// `subscriber` sends them all in one `SUBSCRIBE`.
    pending: Mutex<Vec<(String, oneshot::Sender<Result<()>>)>>,
    handler: Arc<dyn MessageHandler>,
}

impl RedisBroker {
    /// Connects to every Redis and starts receiving for `handler`. Fails if one cannot
    /// be reached now; once running, the broker reconnects by itself.
    pub async fn connect(config: RedisConfig, handler: Arc<dyn MessageHandler>) -> Result<Self> {
        if config.cluster {
            let cluster = ClusterBroker::connect(&config, handler).await?;
            return Ok(Self {
                shards: Shards::empty(),
                receivers: Vec::new(),
                cluster: Some(cluster),
                history: HistoryScripts::default(),
            });
        }
        let mut shards = Vec::with_capacity(config.urls.len());
        let mut receivers = Vec::with_capacity(config.urls.len());
        for url in &config.urls {
            let client = client::client(&config, url)?;
            // Opened first: a refusal (a wrong password) is reported from here.
            let publisher = Connection::open(&config, url).await?;
            let addr = client::address(client.get_connection_info());
            let pubsub = client.get_async_pubsub().await.map_err(|e| client::connect_error(&addr, e))?;
            let inner = Arc::new(Inner {
                client,
                config: config.clone(),
                publisher,
                subscriber: tokio::sync::Mutex::new(None),
                wanted: Mutex::new(HashMap::new()),
                pending: Mutex::new(Vec::new()),
                handler: handler.clone(),
            });
            let (sink, stream) = pubsub.split();
            *inner.subscriber.lock().await = Some(sink);
            receivers.push(tokio::spawn(receive(inner.clone(), stream)));
            shards.push(inner);
        }
        Ok(Self {
            shards: Shards::new(shards)?,
            receivers,
            cluster: None,
            history: HistoryScripts::default(),
        })
    }

    /// The shard that carries `topic`.
    fn shard(&self, topic: &Topic) -> &Arc<Inner> {
        &self.shards.items[self.shard_index(topic)]
    }

    /// The index of the shard that carries `topic`.
    fn shard_index(&self, topic: &Topic) -> usize {
        self.shards.index(&format!("{}:{}", topic.app_id, topic.name))
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.receivers.iter().for_each(JoinHandle::abort);
    }
}

impl Inner {
    /// The Redis channel of a topic. The app id is length-prefixed, so no two topics
    /// share a name whatever their characters.
    fn channel(&self, topic: &Topic) -> String {
        format!("{}:{}:{}:{}", self.config.prefix, topic.app_id.len(), topic.app_id, topic.name)
    }

    /// Runs `pipe` on the publishing connection. A connection found broken (Redis
    /// restarted) is replaced and the pipeline sent once more.
    async fn run(&self, pipe: &redis::Pipeline) -> Result<()> {
        self.publisher
            .run(|mut connection| async move { pipe.query_async::<()>(&mut connection).await })
            .await
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<()> {
        self.publish_batch(vec![(topic.clone(), message)]).await
    }

    async fn publish_batch(&self, messages: Vec<(Topic, Message)>) -> Result<()> {
        if let Some(cluster) = &self.cluster {
            return cluster.publish_batch(messages).await;
        }
        // One pipeline per shard, each in the batch's order (a topic lives on one
        // shard, so its order is kept).
        let mut pipes: Vec<(usize, redis::Pipeline)> = Vec::new();
        for (topic, message) in &messages {
            let index = self.shard_index(topic);
            let shard = &self.shards.items[index];
            let at = match pipes.iter().position(|(i, _)| *i == index) {
                Some(at) => at,
                None => {
                    pipes.push((index, redis::pipe()));
                    pipes.len() - 1
                }
            };
            pipes[at]
                .1
                .cmd("PUBLISH")
                .arg(shard.channel(topic))
                .arg(wire::encode(&topic.app_id, message))
                .ignore();
        }
        for (index, pipe) in &pipes {
            self.shards.items[*index].run(pipe).await?;
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<()> {
        if let Some(cluster) = &self.cluster {
            return cluster.subscribe(topic).await;
        }
        // Subscriptions that wait for the connection together go in one command: a
        // node taking an interest in thousands of channels (clients arriving after a
        // restart) sends a few `SUBSCRIBE`s, not one per channel.
        let shard = self.shard(topic);
        let channel = shard.channel(topic);
        shard.wanted.lock().insert(channel.clone(), topic.clone());
        let (done, subscribed) = oneshot::channel();
        shard.pending.lock().push((channel, done));
        let mut subscriber = shard.subscriber.lock().await;
        // Ours, unless whoever held the connection before took it with theirs.
        let batch = std::mem::take(&mut *shard.pending.lock());
        if !batch.is_empty() {
            let channels: Vec<&str> = batch.iter().map(|(channel, _)| channel.as_str()).collect();
            let result = match subscriber.as_mut() {
                Some(sink) => sink.subscribe(&channels).await.map_err(unavailable),
                None => Err(Error::unavailable("redis: reconnecting")),
            };
            if result.is_err() {
                let mut wanted = shard.wanted.lock();
                for (channel, _) in &batch {
                    wanted.remove(channel);
                }
            }
            for (_, done) in batch {
                let _ = done.send(result.clone());
            }
        }
        drop(subscriber);
        subscribed.await.unwrap_or_else(|_| Err(Error::unavailable("redis: subscription abandoned")))
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<()> {
        if let Some(cluster) = &self.cluster {
            return cluster.unsubscribe(topic).await;
        }
        let shard = self.shard(topic);
        let channel = shard.channel(topic);
        let mut subscriber = shard.subscriber.lock().await;
        // While disconnected there is nothing to undo on Redis: forgetting the topic
        // keeps it out of the resubscription.
        if let Some(sink) = subscriber.as_mut() {
            sink.unsubscribe(&channel).await.map_err(unavailable)?;
        }
        shard.wanted.lock().remove(&channel);
        Ok(())
    }

    async fn publish_kept(
        &self,
        publications: Vec<(Topic, Publication, Retention)>,
    ) -> Result<Vec<StreamPosition>> {
        if let Some(cluster) = &self.cluster {
            return cluster.publish_kept(&self.history, &publications).await;
        }
        // One pipeline per shard, each in the batch's order; the positions are put
        // back in the order of the publications.
        let mut by_shard: Vec<(usize, Vec<usize>)> = Vec::new();
        for (at, (topic, _, _)) in publications.iter().enumerate() {
            let index = self.shard_index(topic);
            match by_shard.iter_mut().find(|(i, _)| *i == index) {
                Some((_, ats)) => ats.push(at),
                None => by_shard.push((index, vec![at])),
            }
        }
        let mut positions = vec![None; publications.len()];
        for (index, ats) in by_shard {
            let shard = &self.shards.items[index];
            let share: Vec<_> = ats.iter().map(|at| publications[*at].clone()).collect();
            let given =
                self.history.publish(&shard.publisher, "PUBLISH", |t| shard.channel(t), &share).await?;
            for (at, position) in ats.into_iter().zip(given) {
                positions[at] = Some(position);
            }
        }
        positions
            .into_iter()
            .map(|p| p.ok_or_else(|| Error::unavailable("redis: a position is missing")))
            .collect()
    }

    async fn history(&self, topic: &Topic, retention: Retention, query: HistoryQuery) -> Result<HistoryPage> {
        if let Some(cluster) = &self.cluster {
            return cluster.history(&self.history, topic, retention, query).await;
        }
        let shard = self.shard(topic);
        self.history.read(&shard.publisher, &shard.channel(topic), retention, query).await
    }
}

/// Receives publications until aborted: hands each batch of ready messages to the
/// handler, and re-establishes the connection (resubscribing) whenever it is lost.
async fn receive(inner: Arc<Inner>, mut stream: redis::aio::PubSubStream) {
    let mut backoff = Backoff::new(Duration::from_millis(50), inner.config.max_backoff).jittered();
    loop {
        deliver(&inner, &mut stream).await;
        inner.subscriber.lock().await.take();
        metrics::gauge!(Metric::BackboneDown.name()).increment(1);
        let lost = tokio::time::Instant::now();
        tracing::warn!("redis subscriber connection lost; publications are missed until it is back");
        loop {
            backoff.wait().await;
            match resubscribe(&inner).await {
                Ok(fresh) => {
                    stream = fresh;
                    backoff.reset();
                    metrics::gauge!(Metric::BackboneDown.name()).decrement(1);
                    metrics::counter!(Metric::BackboneReconnects.name(), "connection" => "subscriber")
                        .increment(1);
                    tracing::warn!(
                        gap_ms = lost.elapsed().as_millis() as u64,
                        "redis subscriber connection back"
                    );
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "redis reconnect failed; retrying"),
            }
        }
    }
}

/// Hands messages to the handler until the stream ends (the connection is lost).
async fn deliver(inner: &Inner, stream: &mut redis::aio::PubSubStream) {
    let mut batch = Vec::new();
    while let Some(message) = stream.next().await {
        batch.push(message);
        // Whatever else has already arrived goes in the same batch.
        while batch.len() < MAX_BATCH {
            match ready_now(stream) {
                Some(Some(message)) => batch.push(message),
                Some(None) | None => break,
            }
        }
        let messages: Vec<(Topic, Message)> = {
            let wanted = inner.wanted.lock();
            batch
                .drain(..)
                .filter_map(|m| {
                    let topic = wanted.get(m.get_channel_name())?.clone();
                    Some((topic, wire::decode(m.get_payload_bytes())?))
                })
                .collect()
        };
        if !messages.is_empty() {
            inner.handler.handle_batch(messages);
        }
    }
}

/// The stream's next item if it is ready now: `Some(None)` when it ended.
fn ready_now(stream: &mut redis::aio::PubSubStream) -> Option<Option<redis::Msg>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(stream).poll_next(&mut cx) {
        std::task::Poll::Ready(item) => Some(item),
        std::task::Poll::Pending => None,
    }
}

/// A fresh subscriber connection with every wanted channel subscribed again.
async fn resubscribe(inner: &Inner) -> Result<redis::aio::PubSubStream> {
    let pubsub = inner.client.get_async_pubsub().await.map_err(unavailable)?;
    let (mut sink, stream) = pubsub.split();
    let mut subscriber = inner.subscriber.lock().await;
    let channels: Vec<String> = inner.wanted.lock().keys().cloned().collect();
    if !channels.is_empty() {
        sink.subscribe(&channels).await.map_err(unavailable)?;
    }
    tracing::info!(channels = channels.len(), "redis subscriber reconnected and resubscribed");
    *subscriber = Some(sink);
    Ok(stream)
}
