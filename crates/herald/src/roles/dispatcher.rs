//! `herald dispatcher`: webhook deliveries from the event log until SIGTERM/SIGINT; any
//! number of replicas share the work as one consumer group.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{Ops, Ready};
use crate::{
    config::Config,
    ready,
    wiring::{self, Webhooks},
};

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = herald_telemetry::install_prometheus();
    let ready_file = ready::ReadyFile::prepare(&config.server.ready_file).context("server.ready_file")?;
    let ops_listener = wiring::bind(&config, config.server.metrics_port).await?;
    let ops_addr = ops_listener.local_addr()?;
    let Some(webhooks) = Webhooks::cluster(&config).await? else {
        anyhow::bail!("herald dispatcher needs [kafka]");
    };
    webhooks.prepare(&config).await?;
    let (apps, _) = config.apps_or_demo();
    let dispatcher = webhooks.dispatcher(apps, config.dispatcher.clone());
    let shutdown = CancellationToken::new();
    let signal = tokio::spawn(crate::signal::cancel_on_terminate(shutdown.clone()));
    let ready = Ready::new();
    let ops = Ops::start(ops_listener, ready.readiness(), metrics);
    tracing::info!(metrics = %ops_addr, group = %config.dispatcher.group, "herald dispatcher started");
    ready_file
        .write(ready::Addresses { metrics: Some(ops_addr), ..ready::Addresses::default() })
        .context("writing server.ready_file")?;
    let grace = config.server.shutdown_grace;
    let result = dispatcher.run(shutdown, grace).await;
    ready.clear();
    signal.abort();
    ops.stop().await;
    ready_file.remove();
    result.context("the dispatcher stopped")?;
    tracing::info!("stopped");
    Ok(())
}
