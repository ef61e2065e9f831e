//! `herald`: the one binary of every role. Parses and validates all configuration
//! before starting the runtime or binding a port, then wires the roles together and
//! runs until SIGTERM/SIGINT, then drains within the grace period.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_api::{WebhookAdminConfig, WebhookAdminService};
use herald_backbone::{Broker, EventLog, MemoryBackbone, MemoryEventLog, PresenceManager};
use herald_dispatcher::{Dispatcher, Topics};
use herald_edge::Node;
use herald_hub::Hub;
use herald_kafka::KafkaEventLog;
use herald_redis::{
    RedisBroker, RedisConfig, RedisIdempotency, RedisPresence, RedisRateLimiter, RedisWebhookStore,
};
use herald_webhooks::{
    limiter::{LocalRateLimiter, RateLimiter},
    store::{MemoryWebhookStore, WebhookStore},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod config;
mod ready;

use config::{Config, Flags};

/// Exit code for a configuration error (EX_CONFIG would be 78; 64 is EX_USAGE, which
/// is what the docs promise operators).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "herald", version, about = "Pusher-compatible realtime pub/sub server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process with an in-memory backbone (the embedded default).
    Dev(Flags),
    /// One stateless edge node of a cluster: the same services, with the Redis
    /// backbone (`[redis]`) shared by every edge, and the Kafka event log (`[kafka]`)
    /// when webhooks are wanted.
    Edge(Flags),
    /// The webhook dispatcher: consumes the event log (`[kafka]`) as a group, so any
    /// number of replicas share the work; rate limits and endpoints in Redis.
    Dispatcher(Flags),
    /// Validate the configuration (file + HERALD_* env + flags); exit 64 if invalid.
    CheckConfig(Flags),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Dev(flags)
    | Command::Edge(flags)
    | Command::Dispatcher(flags)
    | Command::CheckConfig(flags)) = &cli.command;
    let loaded = Config::load(flags, std::env::vars()).and_then(|config| {
        if matches!(cli.command, Command::Dispatcher(_)) && config.kafka.is_none() {
            return Err(vec!["kafka: herald dispatcher needs the event log: set [kafka] brokers".into()]);
        }
        Ok(config)
    });
    let config = match loaded {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("herald: the configuration has {} error(s):", errors.len());
            for error in errors {
                eprintln!("  - {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig(_) => {
            println!("configuration is valid ({} app(s))", config.apps.len());
            ExitCode::SUCCESS
        }
        Command::Dev(_) | Command::Edge(_) | Command::Dispatcher(_) => {
            let role = match cli.command {
                Command::Dev(_) => Role::Dev,
                Command::Edge(_) => Role::Edge,
                _ => Role::Dispatcher,
            };
            herald_telemetry::init_tracing(config.log.json);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("herald: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config, role)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// In-memory backbone: one process is the whole cluster.
    Dev,
    /// Redis backbone: one of any number of edges.
    Edge,
    /// Webhook deliveries: one of any number of dispatchers.
    Dispatcher,
}

/// What webhooks need: the event log, the store of endpoints, attempts and dead
/// letters, and the rate limits.
struct Webhooks {
    log: Arc<dyn EventLog>,
    store: Arc<dyn WebhookStore>,
    limiter: Arc<dyn RateLimiter>,
}

impl Webhooks {
    /// In memory, for `herald dev`.
    fn memory() -> Self {
        Self {
            log: Arc::new(MemoryEventLog::new()),
            store: Arc::new(MemoryWebhookStore::default()),
            limiter: Arc::new(LocalRateLimiter::default()),
        }
    }

    /// Kafka and Redis, for a cluster.
    async fn cluster(config: &Config, redis: &RedisConfig) -> anyhow::Result<Option<Self>> {
        let Some(kafka) = &config.kafka else { return Ok(None) };
        let log = KafkaEventLog::connect(kafka.clone())
            .await
            .with_context(|| format!("connecting to Kafka at {:?}", kafka.brokers))?;
        Ok(Some(Self {
            log: Arc::new(log),
            store: Arc::new(RedisWebhookStore::connect(redis).await?),
            limiter: Arc::new(RedisRateLimiter::connect(redis).await?),
        }))
    }

    /// Creates the topics and the endpoints declared in the config file.
    async fn prepare(&self, config: &Config) -> anyhow::Result<()> {
        herald_dispatcher::dispatcher::ensure_topics(self.log.as_ref(), &self.dispatcher_config(config))
            .await
            .context("creating the event log topics")?;
        for webhook in &config.webhooks {
            let mut endpoint = webhook.endpoint().map_err(anyhow::Error::msg)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let existing = self.store.get_endpoint(&endpoint.app_id, &endpoint.id).await?;
            endpoint.created_ms = existing.as_ref().map_or(now, |e| e.created_ms);
            endpoint.updated_ms = now;
            if endpoint.secret.is_empty() {
                // A Pusher endpoint declared without one keeps (or gets) a secret, so
                // switching it to Standard Webhooks later works.
                endpoint.secret = match existing {
                    Some(e) => e.secret,
                    None => herald_webhooks::sign::generate_secret()?,
                };
            }
            self.store.put_endpoint(&endpoint).await?;
        }
        Ok(())
    }

    fn dispatcher_config(&self, config: &Config) -> herald_dispatcher::DispatcherConfig {
        config.dispatcher.dispatcher(&config.events.topic)
    }

    fn admin(
        &self,
        config: &Config,
        apps: &herald_core::Apps,
        policy: herald_webhooks::ssrf::AddressPolicy,
    ) -> WebhookAdminService {
        let topics = Topics::new(&config.dispatcher.topic_prefix, &self.dispatcher_config(config).retry);
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

/// `herald dispatcher`: webhook deliveries until SIGTERM/SIGINT.
async fn run_dispatcher(config: Config) -> anyhow::Result<()> {
    let metrics = herald_telemetry::install_prometheus();
    let host: std::net::IpAddr = config.server.host.parse().context("server.host")?;
    let ready_file = ready::ReadyFile::prepare(&config.server.ready_file).context("server.ready_file")?;
    let health_listener = TcpListener::bind(SocketAddr::new(host, config.server.metrics_port))
        .await
        .with_context(|| format!("cannot listen on {host}:{}", config.server.metrics_port))?;
    let health_addr = health_listener.local_addr()?;
    let redis = redis_config(&config);
    let Some(webhooks) = Webhooks::cluster(&config, &redis).await? else {
        anyhow::bail!("herald dispatcher needs [kafka]");
    };
    webhooks.prepare(&config).await?;
    let (apps, _) = config.apps_or_demo();
    let dispatcher = Dispatcher::new(
        apps,
        webhooks.log.clone(),
        webhooks.store.clone(),
        webhooks.limiter.clone(),
        webhooks.dispatcher_config(&config),
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_terminate(shutdown.clone()));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readiness = {
        let ready = ready.clone();
        Arc::new(move || ready.load(std::sync::atomic::Ordering::Relaxed))
    };
    let health_stop = CancellationToken::new();
    let health = tokio::spawn(herald_edge::serve_health_of(
        health_listener,
        readiness,
        metrics,
        health_stop.clone().cancelled_owned(),
    ));
    tracing::info!(metrics = %health_addr, group = %config.dispatcher.group, "herald dispatcher started");
    ready_file
        .write(ready::Addresses { metrics: Some(health_addr), ..ready::Addresses::default() })
        .context("writing server.ready_file")?;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let run = dispatcher.run(shutdown.clone(), grace);
    let result = run.await;
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    health_stop.cancel();
    let _ = health.await;
    ready_file.remove();
    result.context("the dispatcher stopped")?;
    tracing::info!("stopped");
    Ok(())
}

fn redis_config(config: &Config) -> RedisConfig {
    RedisConfig {
        prefix: config.redis.prefix.clone(),
        cluster: config.redis.cluster,
        ..RedisConfig::sharded(config.redis.urls())
    }
}

async fn run(config: Config, role: Role) -> anyhow::Result<()> {
    if role == Role::Dispatcher {
        return run_dispatcher(config).await;
    }
    let metrics = herald_telemetry::install_prometheus();
    let host: std::net::IpAddr = config.server.host.parse().context("server.host")?;
    let ready_file = ready::ReadyFile::prepare(&config.server.ready_file).context("server.ready_file")?;
    let listener = herald_edge::bind(SocketAddr::new(host, config.server.port))
        .with_context(|| format!("cannot listen on {host}:{}", config.server.port))?;
    let health_listener = TcpListener::bind(SocketAddr::new(host, config.server.metrics_port))
        .await
        .with_context(|| format!("cannot listen on {host}:{}", config.server.metrics_port))?;
    let grpc_listener = TcpListener::bind(SocketAddr::new(host, config.grpc.port))
        .await
        .with_context(|| format!("cannot listen on {host}:{}", config.grpc.port))?;

    let node_id = match config.server.node_id {
        0 => Node::random_id(),
        id => id,
    };
    let (apps, demo) = config.apps_or_demo();
    let hub = Arc::new(Hub::new(node_id));
    let redis = redis_config(&config);
    let mut redis_presence = None;
    let (broker, presence): (Arc<dyn Broker>, Arc<dyn PresenceManager>) = match role {
        Role::Dev => {
            let backbone = MemoryBackbone::new();
            (Arc::new(backbone.broker(hub.clone())), backbone.presence())
        }
        Role::Edge | Role::Dispatcher => {
            let broker = RedisBroker::connect(redis.clone(), hub.clone())
                .await
                .with_context(|| format!("connecting to Redis at {:?}", config.redis.urls()))?;
            let presence = Arc::new(RedisPresence::connect(&redis).await?);
            redis_presence = Some(presence.clone());
            (Arc::new(broker), presence)
        }
    };
    let node = Node::new(node_id, apps.clone(), config.edge(), hub, broker, presence);
    if role == Role::Edge {
        node.share_idempotency_keys(Arc::new(RedisIdempotency::connect(&redis).await?));
    }
    let shutdown = CancellationToken::new();
    // Webhooks: `herald dev` runs the dispatcher in-process on an in-memory log;
    // an edge records events to Kafka (when configured) for `herald dispatcher`.
    let mut policy = config.dispatcher.policy();
    let (webhooks, dispatcher) = if role == Role::Dev {
        if config.dispatcher.allow_addresses.is_empty() {
            // Local development means local receivers: loopback is allowed unless the
            // config says otherwise.
            policy = herald_webhooks::ssrf::AddressPolicy::new(&["127.0.0.0/8".into(), "::1".into()])
                .map_err(anyhow::Error::msg)?;
        }
        let webhooks = Webhooks::memory();
        webhooks.prepare(&config).await?;
        let mut dispatcher_config = webhooks.dispatcher_config(&config);
        dispatcher_config.client.policy = policy.clone();
        let dispatcher = Dispatcher::new(
            apps.clone(),
            webhooks.log.clone(),
            webhooks.store.clone(),
            webhooks.limiter.clone(),
            dispatcher_config,
        );
        let grace = config.edge().shutdown_grace;
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { dispatcher.run(stop, grace).await });
        (Some(webhooks), Some(task))
    } else {
        let webhooks = Webhooks::cluster(&config, &redis).await?;
        if let Some(webhooks) = &webhooks {
            webhooks.prepare(&config).await?;
        }
        (webhooks, None)
    };
    let admin = webhooks.as_ref().map(|w| {
        node.record_events_to(w.log.clone(), config.events.clone());
        w.admin(&config, &apps, policy)
    });
    // The lease that removes a crashed edge's presence members (announced by whichever
    // edge reaps it) and keeps this edge's share of presence right after any gap.
    let lease = redis_presence.as_ref().map(|presence| {
        presence.keep_lease(node_id, Duration::from_secs(config.redis.lease_secs), node.lease_holder())
    });

    let ws_addr = listener.local_addr()?;
    let health_addr = health_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let name = if role == Role::Dev { "herald dev" } else { "herald edge" };
    tracing::info!(%ws_addr, %grpc_addr, %health_addr, node_id, apps = node.apps().len(), "{name} is running");
    if demo && role == Role::Edge {
        tracing::warn!("no apps configured: this edge serves the demo app (configure [[apps]])");
    }
    if demo && role == Role::Dev {
        print_demo(ws_addr, grpc_addr, &config::demo_app());
    }

    tokio::spawn(signal_on_terminate(shutdown.clone()));
    let health_stop = CancellationToken::new();
    let health = tokio::spawn(herald_edge::serve_health(
        health_listener,
        node.clone(),
        metrics,
        health_stop.clone().cancelled_owned(),
    ));
    let grpc = tokio::spawn(herald_api::serve(
        grpc_listener,
        node.clone(),
        config.grpc.clone(),
        admin,
        config.edge().shutdown_grace,
        shutdown.clone().cancelled_owned(),
    ));
    // The listeners queue connections from here on, whatever the tasks are doing.
    let bound = ready::Addresses { ws: Some(ws_addr), grpc: Some(grpc_addr), metrics: Some(health_addr) };
    ready_file.write(bound).context("writing server.ready_file")?;
    herald_edge::serve(listener, node, shutdown.cancelled_owned()).await;
    ready_file.remove();
    let _ = grpc.await;
    if let Some(dispatcher) = dispatcher {
        match dispatcher.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the dispatcher stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the dispatcher task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let (Some(lease), Some(presence)) = (lease, redis_presence) {
        // Every session has left its channels: give the lease up.
        lease.abort();
        if let Err(e) = presence.release_lease(node_id).await {
            tracing::warn!(error = %e, "could not release the presence lease");
        }
    }
    health_stop.cancel();
    let _ = health.await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves the token on the first SIGTERM or SIGINT.
async fn signal_on_terminate(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let signal = tokio::select! {
        _ = terminate => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    token.cancel();
    tracing::info!("{signal} received");
}

fn print_demo(addr: SocketAddr, grpc: SocketAddr, app: &herald_core::App) {
    let host = addr.ip();
    let port = addr.port();
    println!(
        r#"
Herald dev: no apps configured, serving a demo app (for local development only).

  app id:  {id}
  key:     {key}
  secret:  {secret}
  client events: enabled

pusher-js:

  const pusher = new Pusher("{key}", {{
    wsHost: "{host}", wsPort: {port}, forceTLS: false,
    enabledTransports: ["ws"], cluster: "mt1",
  }});
  pusher.subscribe("my-channel").bind("my-event", (data) => console.log(data));

Publish with any Pusher server SDK (host {host}, port {port}, useTLS false), e.g. Node:

  new Pusher({{ appId: "{id}", key: "{key}", secret: "{secret}",
               host: "{host}", port: "{port}", useTLS: false }})
    .trigger("my-channel", "my-event", {{ hello: "world" }});

or over gRPC (herald.v1.Publisher on {grpc}, token {token}):

  grpcurl -plaintext -H 'authorization: Bearer {token}' \
    -d '{{"app_id":"{id}","event":{{"name":"my-event","data":"{{}}","channels":["my-channel"]}}}}' \
    {grpc} herald.v1.Publisher/Publish
"#,
        token = app.api_tokens.first().map(String::as_str).unwrap_or(""),
        id = app.id,
        key = app.key,
        secret = app.secret,
    );
}
