//! `herald edge`: one stateless edge node of a cluster, on the Redis backbone shared
//! by every edge, recording channel events to Kafka when webhooks are wanted.

use std::time::Duration;

use herald_core::time::Backoff;
use tokio::time::Instant;

use super::node::{self, Parts, Start};
use crate::{
    config::Config,
    wiring::{self, Backbone, Webhooks},
};

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let start = Start::new(&config).await?;
    if start.demo {
        tracing::warn!("no apps configured: this edge serves the demo app (configure [[apps]])");
    }
    let backbone = connect_backbone(&config, &start).await?;
    let webhooks = Webhooks::cluster(&config).await?;
    if let Some(webhooks) = &webhooks {
        webhooks.prepare(&config).await?;
    }
    let policy = config.dispatcher.client.policy.clone();
    let parts = Parts { name: "herald edge", backbone, webhooks, policy, dispatcher: None };
    node::serve(config, start, parts, |_| {}).await
}

/// Connects to Redis, retrying for up to one presence lease: an edge that starts
/// while Redis is busy (a reconnection storm during a rolling restart) or restarting
/// waits for it rather than exiting; one that cannot reach it for that long exits
/// with the error. One that Redis refuses (a wrong password, an untrusted
/// certificate) exits at once, saying which settings to check.
async fn connect_backbone(config: &Config, start: &Start) -> anyhow::Result<Backbone> {
    let give_up = Instant::now() + config.redis.lease;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3)).jittered();
    loop {
        match Backbone::redis(config, &start.hub).await {
            Ok(backbone) => return Ok(backbone),
            Err(e) if let Some(refused) = wiring::redis_refusal(&e) => return Err(refused),
            Err(e) if Instant::now() < give_up => {
                tracing::warn!(error = format!("{e:#}"), "Redis is not answering yet: retrying");
                backoff.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
}
