//! Herald's backbone and webhook state over Redis, so that stateless edge nodes and dispatcher
//! replicas behave as one server.
//!
//! | module | what |
//! |---|---|
//! | `broker` | [`RedisBroker`]: interest-based fan-out over Redis pub/sub, pipelined publishing, reconnect and resubscribe |
//! | `client` | how every connection is opened: `rediss://` (TLS), a private CA, a client certificate, the ACL user and password; [`Refused`]: the failures no retry fixes |
//! | `cluster` | the broker over a Redis Cluster: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) |
//! | `idempotency` | [`RedisIdempotency`]: idempotency keys shared by every node |
//! | `limiter` | [`RedisRateLimiter`]: webhook rate limits (GCRA) shared by every dispatcher replica |
//! | `presence` | [`RedisPresence`]: occupancy and presence members, cluster-wide, one Lua script per change; `presence::lease`: node leases, gaps, re-assertion, reaping |
//! | `webhooks` | [`RedisWebhookStore`]: webhook endpoints, attempts and dead letters |
//! | `wire` | how a [`herald_backbone::Message`] travels through Redis |
//!
//! Every implementation here passes its conformance suite (`herald_backbone::conformance`,
//! `herald_webhooks::store::conformance`) against a real `redis-server` (see `tests/`).

mod broker;
mod client;
mod cluster;
mod history;
mod idempotency;
mod limiter;
mod presence;
mod webhooks;
mod wire;

pub use broker::{DEFAULT_COMMAND_TIMEOUT, RedisBroker, RedisConfig};
pub use client::{
    ClientCertificate, RedisTls, Refusal, Refused, UrlInfo, read_certificates, read_private_key, redact_url,
    url_info,
};
pub use idempotency::RedisIdempotency;
pub use limiter::{REDIS_GCRA_SCRIPT, RedisRateLimiter};
pub use presence::RedisPresence;
pub use webhooks::RedisWebhookStore;

use herald_backbone::{Error, Result};
use redis::{
    FromRedisValue, aio::MultiplexedConnection, cluster::ClusterClient, cluster_async::ClusterConnection,
};

/// Independent Redis instances, each owning the keys and channels that consistent
/// hashing assigns it: adding an instance moves about 1/n of them. Every node of a
/// cluster must list the instances in the same order.
pub(crate) struct Shards<T> {
    pub(crate) items: Vec<T>,
    /// Points on the hash ring, sorted, with the instance each belongs to.
    ring: Vec<(u64, usize)>,
}

/// Points per instance on the ring: enough for an even spread.
const POINTS_PER_SHARD: usize = 160;

impl Shards<Connection> {
    /// A command connection to each instance of `config` (one to a Redis Cluster).
    pub(crate) async fn open(config: &RedisConfig) -> Result<Self> {
        let mut connections = Vec::with_capacity(config.urls.len());
        if config.cluster {
            connections.push(Connection::open_cluster(config).await?);
        } else {
            for url in &config.urls {
                connections.push(Connection::open(config, url).await?);
            }
        }
        Shards::new(connections)
    }
}

impl<T> Shards<T> {
    pub(crate) fn new(items: Vec<T>) -> Result<Self> {
        if items.is_empty() {
            return Err(Error::unavailable("redis: no instance configured"));
        }
        let mut ring: Vec<(u64, usize)> = (0..items.len())
            .flat_map(|shard| {
                (0..POINTS_PER_SHARD).map(move |point| (hash(&format!("{shard}-{point}")), shard))
            })
            .collect();
        ring.sort_unstable();
        Ok(Self { items, ring })
    }

    /// No instances (a Redis Cluster routes by itself).
    pub(crate) fn empty() -> Self {
        Self { items: Vec::new(), ring: Vec::new() }
    }

    pub(crate) fn index(&self, key: &str) -> usize {
        if self.items.len() == 1 {
            return 0;
        }
        let point = hash(key);
        let at = self.ring.partition_point(|(p, _)| *p < point);
        self.ring.get(at).or(self.ring.first()).map_or(0, |(_, shard)| *shard)
    }

    pub(crate) fn pick(&self, key: &str) -> &T {
        &self.items[self.index(key)]
    }
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike `std`'s hasher), so
/// every node maps a key to the same instance.
fn hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Spread the low-entropy FNV output over the ring (a splitmix64 finish).
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// A connection to one Redis (multiplexed, pipelined) or to a Redis Cluster (which
/// routes each command to the node of its key's slot).
#[derive(Clone)]
pub(crate) enum AnyConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a [`Connection`] connects.
enum Target {
    Single(Box<(redis::Client, redis::AsyncConnectionConfig)>),
    Cluster(Box<ClusterClient>),
}

/// A connection that is replaced when it breaks (Redis restarted or the network
/// dropped it). A command that finds the connection already broken is sent once more
/// on a fresh one; a failure after that is `Unavailable`. A command that timed out is
/// never sent again: Redis may have run it (slow, not gone), and a `PUBLISH` sent twice
/// is delivered twice.
pub(crate) struct Connection {
    target: Target,
    current: tokio::sync::Mutex<Option<AnyConnection>>,
}

impl Connection {
    /// A connection to the Redis at `url` (one of `config.urls`), checked to take
    /// commands: a refusal ([`Refused`]: wrong password, an untrusted certificate) is
    /// found here, at start-up, rather than by the first command.
    pub(crate) async fn open(config: &RedisConfig, url: &str) -> Result<Self> {
        let client = client::client(config, url)?;
        let addr = client::address(client.get_connection_info());
        let options = redis::AsyncConnectionConfig::new().set_response_timeout(Some(config.command_timeout));
        let mut first = client
            .get_multiplexed_async_connection_with_config(&options)
            .await
            .map_err(|e| client::connect_error(&addr, e))?;
        // Without a password, connecting to a Redis that wants one succeeds; the
        // commands then fail (NOAUTH).
        redis::cmd("PING")
            .query_async::<()>(&mut first)
            .await
            .map_err(|e| client::connect_error(&addr, e))?;
        Ok(Self {
            target: Target::Single(Box::new((client, options))),
            current: tokio::sync::Mutex::new(Some(AnyConnection::Single(first))),
        })
    }

    /// A connection to the Redis Cluster that `config.urls` (some of its nodes) belong to.
    pub(crate) async fn open_cluster(config: &RedisConfig) -> Result<Self> {
        let client = client::cluster_client(config)?
            .response_timeout(config.command_timeout)
            .build()
            .map_err(|e| client::connect_error(&client::seeds(config), e))?;
        let mut first = match client.get_async_connection().await {
            Ok(connection) => connection,
            Err(e) => return Err(client::cluster_connect_error(config, e).await),
        };
        if let Err(e) = redis::cmd("PING").query_async::<()>(&mut first).await {
            return Err(client::cluster_connect_error(config, e).await);
        }
        Ok(Self {
            target: Target::Cluster(Box::new(client)),
            current: tokio::sync::Mutex::new(Some(AnyConnection::Cluster(first))),
        })
    }

    async fn get(&self) -> Result<AnyConnection> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            return Ok(connection.clone());
        }
        let fresh = match &self.target {
            Target::Single(single) => {
                let (client, config) = single.as_ref();
                AnyConnection::Single(
                    client.get_multiplexed_async_connection_with_config(config).await.map_err(unavailable)?,
                )
            }
            Target::Cluster(client) => {
                AnyConnection::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
        };
        metrics::counter!(herald_telemetry::Metric::BackboneReconnects.name(), "connection" => "command")
            .increment(1);
        *current = Some(fresh.clone());
        Ok(fresh)
    }

    /// Runs `command` (a command, pipeline or script invocation), reconnecting once
    /// if the connection turns out to be broken.
    pub(crate) async fn run<T, F, Fut>(&self, command: F) -> Result<T>
    where
        F: Fn(AnyConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut retried = false;
        loop {
            match command(self.get().await?).await {
                Ok(value) => return Ok(value),
                // Slow or cut off: the next command gets a fresh connection, but
                // this one is not sent again (it may have run).
                Err(e) if e.is_timeout() => {
                    self.current.lock().await.take();
                    return Err(unavailable(e));
                }
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    self.current.lock().await.take();
                    if retried {
                        return Err(unavailable(e));
                    }
                    retried = true;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T> {
        self.run(|mut connection| async move { command.query_async(&mut connection).await }).await
    }
}

/// `.run(&connection)` for script invocations.
pub(crate) trait RunScript {
    fn run<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a;
}

impl RunScript for redis::ScriptInvocation<'_> {
    fn run<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a {
        connection.run(move |mut c| async move { self.invoke_async(&mut c).await })
    }
}

/// `.run_on(&connection)` for commands.
pub(crate) trait RunCommand {
    fn run_on<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a;
}

impl RunCommand for redis::Cmd {
    fn run_on<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a {
        connection.query(self)
    }
}

/// Every Redis failure is the backbone being unavailable: the operation did not happen.
fn unavailable(e: redis::RedisError) -> Error {
    Error::unavailable_because("redis", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_hashing_spreads_keys_and_moves_few_when_a_shard_is_added() {
        let three = Shards::new(vec![0, 1, 2]).unwrap();
        let four = Shards::new(vec![0, 1, 2, 3]).unwrap();
        let keys: Vec<String> = (0..10_000).map(|i| format!("app:channel-{i}")).collect();
        let mut counts = [0; 3];
        for key in &keys {
            counts[three.index(key)] += 1;
        }
        assert!(counts.iter().all(|c| (2_500..4_200).contains(c)), "even enough: {counts:?}");
        let moved = keys.iter().filter(|k| three.index(k) != four.index(k)).count();
        assert!((1_500..3_500).contains(&moved), "about a quarter moves: {moved}");
        assert!(
            keys.iter().all(|k| three.index(k) == four.index(k) || four.index(k) == 3),
            "only to the new shard"
        );
        assert_eq!(Shards::new(vec!["only"]).unwrap().index("anything"), 0);
    }
}
