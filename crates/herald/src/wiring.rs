//! What the roles are built from: the listeners, the backbone (memory for `herald dev`,
//! Redis for a cluster) and the webhook services (memory, or Kafka and Redis). Each
//! role module picks its parts here and composes them; only this module and the roles
//! name the Redis and Kafka crates.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use herald_api::{WebhookAdminConfig, WebhookAdminService};
use herald_backbone::{Broker, EventLog, IdempotencyStore, MemoryBackbone, MemoryEventLog, PresenceManager};
use herald_core::Apps;
use herald_dispatcher::{Dispatcher, DispatcherConfig, Topics};
use herald_hub::Hub;
use herald_kafka::KafkaEventLog;
use herald_redis::{
    RedisBroker, RedisConfig, RedisIdempotency, RedisPresence, RedisRateLimiter, RedisWebhookStore,
};
use herald_webhooks::{
    limiter::{LocalRateLimiter, RateLimiter},
    ssrf::AddressPolicy,
    store::{MemoryWebhookStore, WebhookStore, upsert_declared},
};
use tokio::net::TcpListener;

use crate::config::Config;

/// Binds `port` on the configured host, alone: a second process on the same port is
/// an error.
pub(crate) async fn bind(config: &Config, port: u16) -> anyhow::Result<TcpListener> {
    let host = config.host;
    TcpListener::bind(SocketAddr::new(host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))
}

/// Binds the edge's port with `SO_REUSEPORT`, so that each edge thread can accept on a
/// socket of its own (`server.edge_threads`).
pub(crate) fn bind_edge(config: &Config) -> anyhow::Result<TcpListener> {
    let (host, port) = (config.host, config.server.port);
    herald_telemetry::bind(SocketAddr::new(host, port))
        .with_context(|| format!("cannot listen on {host}:{port}"))
}

/// The Redis settings of the backbone and the webhook state (reading the password
/// file).
pub(crate) fn redis_config(config: &Config) -> anyhow::Result<RedisConfig> {
    config.redis.client().map_err(anyhow::Error::msg)
}

/// What a node publishes through and keeps presence in.
pub(crate) struct Backbone {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) presence: Arc<dyn PresenceManager>,
    pub(crate) idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// Redis presence keeps a lease per node; the memory backbone needs none.
    pub(crate) leased: Option<Arc<RedisPresence>>,
}

impl Backbone {
    /// In memory: one process is the whole cluster.
    pub(crate) fn memory(hub: &Arc<Hub>) -> Self {
        let backbone = MemoryBackbone::new();
        Self {
            broker: Arc::new(backbone.broker(hub.clone())),
            presence: backbone.presence(),
            idempotency: None,
            leased: None,
        }
    }

    /// Redis, shared by every edge of the cluster.
    pub(crate) async fn redis(config: &Config, hub: &Arc<Hub>) -> anyhow::Result<Self> {
        let redis = redis_config(config)?;
        let broker = RedisBroker::connect(redis.clone(), hub.clone())
            .await
            .with_context(|| format!("connecting to Redis at {:?}", redis.urls_redacted()))?;
        let presence = Arc::new(RedisPresence::connect(&redis).await?);
        Ok(Self {
            broker: Arc::new(broker),
            presence: presence.clone(),
            idempotency: Some(Arc::new(RedisIdempotency::connect(&redis).await?)),
            leased: Some(presence),
        })
    }
}

/// What webhooks need: the event log, the store of endpoints, attempts and dead
/// letters, and the rate limits.
pub(crate) struct Webhooks {
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) store: Arc<dyn WebhookStore>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
}

impl Webhooks {
    /// In memory, for `herald dev`.
    pub(crate) fn memory() -> Self {
        Self {
            log: Arc::new(MemoryEventLog::new()),
            store: Arc::new(MemoryWebhookStore::default()),
            limiter: Arc::new(LocalRateLimiter::default()),
        }
    }

    /// Kafka and Redis, for a cluster; `None` without `[kafka]`.
    pub(crate) async fn cluster(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(kafka) = &config.kafka else { return Ok(None) };
        let redis = redis_config(config)?;
        let log = KafkaEventLog::connect(kafka.clone())
            .await
            .with_context(|| format!("connecting to Kafka at {:?}", kafka.brokers))?;
        Ok(Some(Self {
            log: Arc::new(log),
            store: Arc::new(RedisWebhookStore::connect(&redis).await.map_err(explained)?),
            limiter: Arc::new(RedisRateLimiter::connect(&redis).await.map_err(explained)?),
        }))
    }

    /// Creates the topics and the endpoints declared in the config file.
    pub(crate) async fn prepare(&self, config: &Config) -> anyhow::Result<()> {
        herald_dispatcher::dispatcher::ensure_topics(self.log.as_ref(), &config.dispatcher)
            .await
            .context("creating the event log topics")?;
        for webhook in &config.webhooks {
            upsert_declared(self.store.as_ref(), webhook.clone(), herald_core::time::now_ms()).await?;
        }
        Ok(())
    }

    /// A dispatcher delivering from this log, store and limiter.
    pub(crate) fn dispatcher(&self, apps: Apps, config: DispatcherConfig) -> Arc<Dispatcher> {
        Dispatcher::new(apps, self.log.clone(), self.store.clone(), self.limiter.clone(), config)
    }

    /// The gRPC WebhookAdmin service over this store, replaying into the parked topic.
    pub(crate) fn admin(&self, config: &Config, apps: &Apps, policy: AddressPolicy) -> WebhookAdminService {
        let topics = Topics::new(&config.dispatcher.topic_prefix, &config.dispatcher.retry);
        WebhookAdminService::new(
            apps,
            WebhookAdminConfig {
                store: self.store.clone(),
                log: self.log.clone(),
                replay_topic: topics.parked,
                policy,
            },
        )
    }
}

/// A Redis error, said as [`redis_refusal`] says it when Redis refused.
fn explained(error: herald_backbone::Error) -> anyhow::Error {
    let error = anyhow::Error::from(error);
    redis_refusal(&error).unwrap_or(error)
}

/// The error to exit with if Redis refused the connection: where, what, and which
/// settings to check.
pub(crate) fn redis_refusal(error: &anyhow::Error) -> Option<anyhow::Error> {
    use herald_redis::{Refusal, Refused};
    let refused = error.chain().find_map(|e| Refused::of(e.downcast_ref::<herald_backbone::Error>()?))?;
    let check = match refused.refusal() {
        Refusal::Authentication => "check redis.username and redis.password (or redis.password_file)",
        Refusal::Permission => {
            "the ACL user needs every command, and the keys and channels under redis.prefix"
        }
        Refusal::Tls => "check redis.ca_file, and redis.cert_file and redis.key_file",
        Refusal::Config => "check the [redis] settings",
    };
    Some(anyhow::anyhow!("redis {}: {refused}: {check}", refused.addr()))
}
