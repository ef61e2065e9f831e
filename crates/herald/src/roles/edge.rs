//! `herald edge`: one stateless edge node of a cluster, on the Redis backbone shared
//! by every edge, recording channel events to Kafka when webhooks are wanted.

use super::node::{self, Parts, Start};
use crate::{
    config::Config,
    wiring::{Backbone, Webhooks},
};

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let start = Start::new(&config).await?;
    if start.demo {
        tracing::warn!("no apps configured: this edge serves the demo app (configure [[apps]])");
    }
    let backbone = Backbone::redis(&config, &start.hub).await?;
    let webhooks = Webhooks::cluster(&config).await?;
    if let Some(webhooks) = &webhooks {
        webhooks.prepare(&config).await?;
    }
    let policy = config.dispatcher.client.policy.clone();
    let parts = Parts { name: "herald edge", backbone, webhooks, policy, dispatcher: None };
    node::serve(config, start, parts, |_| {}).await
}
