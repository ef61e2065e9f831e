//! What `herald dev` and `herald edge` share: a node served on the WebSocket + Pusher
//! HTTP API port and on gRPC, with the operations listener, until a signal; then the
//! drain, in order: sessions (spread reconnects), gRPC, the in-process dispatcher, the
//! node's background work, the presence lease, the operations listener.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, anyhow};
use herald_core::Apps;
use herald_dispatcher::Dispatcher;
use herald_hub::Hub;
use herald_node::Node;
use herald_tls::ServerTls;
use herald_webhooks::ssrf::AddressPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Ops;
use crate::{
    config::Config,
    ready,
    wiring::{self, Backbone, Webhooks},
};

/// What every serving role starts from: its listeners, bound before anything connects
/// to a backend (so a port that is taken fails the start at once), its node id, its
/// apps (or the demo app) and its hub.
pub(super) struct Start {
    edge: TcpListener,
    grpc: TcpListener,
    /// The listeners' TLS, loaded (and checked) before anything is served.
    edge_tls: Option<ServerTls>,
    grpc_tls: Option<ServerTls>,
    ops: TcpListener,
    pub(super) node_id: u32,
    pub(super) apps: Apps,
    /// No app is configured: the demo app is served.
    pub(super) demo: bool,
    pub(super) hub: Arc<Hub>,
}

impl Start {
    pub(super) async fn new(config: &Config) -> anyhow::Result<Self> {
        let edge_tls = ServerTls::load(&config.server.tls, "edge", &[b"http/1.1"])
            .map_err(|e| anyhow!("server.tls: {e}"))?;
        let grpc_tls =
            ServerTls::load(&config.grpc.tls, "grpc", &[b"h2"]).map_err(|e| anyhow!("grpc.tls: {e}"))?;
        let edge = wiring::bind_edge(config)?;
        let grpc = wiring::bind(config, config.grpc.port).await?;
        let ops = wiring::bind(config, config.server.metrics_port).await?;
        let node_id = match config.server.node_id {
            0 => Node::random_id(),
            id => id,
        };
        let (apps, demo) = config.apps_or_demo();
        Ok(Self {
            edge,
            grpc,
            edge_tls,
            grpc_tls,
            ops,
            node_id,
            apps,
            demo,
            hub: Arc::new(Hub::new(node_id)),
        })
    }
}

/// What a serving role brings besides its listeners.
pub(super) struct Parts {
    /// `"herald dev"` or `"herald edge"`, for the log.
    pub(super) name: &'static str,
    pub(super) backbone: Backbone,
    /// The event log, webhook store and limits, when webhooks are configured.
    pub(super) webhooks: Option<Webhooks>,
    /// What endpoint URLs registered over gRPC may resolve to.
    pub(super) policy: AddressPolicy,
    /// `herald dev`: the dispatcher runs in this process.
    pub(super) dispatcher: Option<Arc<Dispatcher>>,
}

/// Where a serving role listens, once bound.
pub(super) struct Bound {
    pub(super) edge: SocketAddr,
    pub(super) grpc: SocketAddr,
}

/// Serves the node until SIGTERM/SIGINT and drains it. `started` runs once every
/// listener is serving (the demo banner).
pub(super) async fn serve(
    config: Config,
    start: Start,
    parts: Parts,
    started: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let metrics = herald_telemetry::install_prometheus();
    let ready_file = ready::ReadyFile::prepare(&config.server.ready_file).context("server.ready_file")?;
    let Start { edge, grpc, edge_tls, grpc_tls, ops, node_id, apps, hub, .. } = start;
    let Parts { name, backbone, webhooks, policy, dispatcher } = parts;
    let grace = config.edge().shutdown_grace;

    let mut node =
        Node::builder(node_id, apps.clone(), config.edge(), hub, backbone.broker, backbone.presence);
    if let Some(store) = backbone.idempotency {
        node = node.idempotency(store);
    }
    if let Some(webhooks) = &webhooks {
        node = node.record_events(webhooks.log.clone(), config.events.clone());
    }
    let node = node.build();
    let admin = webhooks.as_ref().map(|w| w.admin(&config, &apps, policy));
    // The lease that removes a crashed edge's presence members (announced by whichever
    // edge reaps it) and keeps this edge's share of presence right after any gap.
    let lease = backbone
        .leased
        .as_ref()
        .map(|presence| presence.keep_lease(node_id, config.redis.lease, node.lease_holder()));

    let shutdown = CancellationToken::new();
    let signal = tokio::spawn(crate::signal::cancel_on_terminate(shutdown.clone()));
    let dispatcher = dispatcher.map(|dispatcher| {
        let stop = shutdown.clone();
        tokio::spawn(async move { dispatcher.run(stop, grace).await })
    });
    let (edge_addr, grpc_addr, ops_addr) = (edge.local_addr()?, grpc.local_addr()?, ops.local_addr()?);
    let bound = ready::Addresses { ws: Some(edge_addr), grpc: Some(grpc_addr), metrics: Some(ops_addr) };
    let ready = {
        let node = node.clone();
        Arc::new(move || node.readiness())
    };
    let ops = Ops::start(ops, ready, metrics);
    let grpc = tokio::spawn(herald_api::serve(
        grpc,
        node.clone(),
        config.grpc.clone(),
        grpc_tls,
        admin,
        grace,
        shutdown.clone().cancelled_owned(),
    ));
    tracing::info!(ws_addr = %edge_addr, %grpc_addr, health_addr = %ops_addr, node_id, apps = apps.len(), "{name} is running");
    started(Bound { edge: edge_addr, grpc: grpc_addr });
    // The listeners queue connections from here on, whatever the tasks are doing.
    ready_file.write(bound).context("writing server.ready_file")?;

    herald_edge::serve(edge, node.clone(), edge_tls, shutdown.cancelled_owned()).await;
    ready_file.remove();
    signal.abort();
    let _ = grpc.await;
    if let Some(dispatcher) = dispatcher {
        match dispatcher.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the dispatcher stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the dispatcher task failed"),
            Ok(Ok(())) => {}
        }
    }
    // Nothing publishes any more: the node's background work (event log appender,
    // broker unsubscriptions) stops.
    node.shutdown(Duration::from_secs(5)).await;
    if let (Some(lease), Some(presence)) = (lease, backbone.leased) {
        // Every session has left its channels: give the lease up.
        lease.abort();
        if let Err(e) = presence.release_lease(node_id).await {
            tracing::warn!(error = %e, "could not release the presence lease");
        }
    }
    ops.stop().await;
    tracing::info!("stopped");
    Ok(())
}
