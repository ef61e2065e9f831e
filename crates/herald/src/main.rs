//! `herald`: the one binary of every role. Parses and validates all configuration
//! before starting the runtime or binding a port, then wires the roles together and
//! runs until SIGTERM/SIGINT, then drains within the grace period.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_backbone::{Broker, MemoryBackbone, PresenceManager};
use herald_edge::Node;
use herald_hub::Hub;
use herald_redis::{OnReaped, Reaped, RedisBroker, RedisConfig, RedisIdempotency, RedisPresence};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod config;

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
    /// backbone (`[redis]`) shared by every edge.
    Edge(Flags),
    /// Validate the configuration (file + HERALD_* env + flags); exit 64 if invalid.
    CheckConfig(Flags),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Dev(flags) | Command::Edge(flags) | Command::CheckConfig(flags)) = &cli.command;
    let config = match Config::load(flags, std::env::vars()) {
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
        Command::Dev(_) | Command::Edge(_) => {
            let role = if matches!(cli.command, Command::Dev(_)) { Role::Dev } else { Role::Edge };
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
}

async fn run(config: Config, role: Role) -> anyhow::Result<()> {
    let metrics = herald_telemetry::install_prometheus();
    let host: std::net::IpAddr = config.server.host.parse().context("server.host")?;
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
    let redis = RedisConfig {
        prefix: config.redis.prefix.clone(),
        cluster: config.redis.cluster,
        ..RedisConfig::sharded(config.redis.urls())
    };
    let mut redis_presence = None;
    let (broker, presence): (Arc<dyn Broker>, Arc<dyn PresenceManager>) = match role {
        Role::Dev => {
            let backbone = MemoryBackbone::new();
            (Arc::new(backbone.broker(hub.clone())), backbone.presence())
        }
        Role::Edge => {
            let broker = RedisBroker::connect(redis.clone(), hub.clone())
                .await
                .with_context(|| format!("connecting to Redis at {:?}", config.redis.urls()))?;
            let presence = Arc::new(RedisPresence::connect(&redis).await?);
            redis_presence = Some(presence.clone());
            (Arc::new(broker), presence)
        }
    };
    let node = Node::new(node_id, apps, config.edge(), hub, broker, presence);
    if role == Role::Edge {
        node.share_idempotency_keys(Arc::new(RedisIdempotency::connect(&redis).await?));
    }
    // The lease that removes a crashed edge's presence members, announced by whichever
    // edge reaps it.
    let lease = redis_presence.as_ref().map(|presence| {
        let node = node.clone();
        let on_reaped: OnReaped = Arc::new(move |reaped: Reaped| {
            let node = node.clone();
            tokio::spawn(async move {
                let user_id = reaped.member.user_id.clone();
                if let Err(e) = node.publish_member_removed(&reaped.app_id, &reaped.channel, &user_id).await {
                    tracing::warn!(error = %e, "could not announce a reaped presence member");
                }
            });
        });
        presence.keep_lease(node_id, Duration::from_secs(config.redis.lease_secs), on_reaped)
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

    let shutdown = CancellationToken::new();
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
        config.edge().shutdown_grace,
        shutdown.clone().cancelled_owned(),
    ));
    herald_edge::serve(listener, node, shutdown.cancelled_owned()).await;
    let _ = grpc.await;
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
