//! `herald edge`: one stateless edge node of a cluster, on the Redis backbone shared
//! by every edge, recording channel events to Kafka when webhooks are wanted.

use std::sync::Arc;

use herald_hub::Hub;
use herald_node::Node;

use super::node::{self, Listeners, Parts};
use crate::{
    config::Config,
    wiring::{Backbone, Webhooks},
};

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    let node_id = match config.server.node_id {
        0 => Node::random_id(),
        id => id,
    };
    let (apps, demo) = config.apps_or_demo();
    if demo {
        tracing::warn!("no apps configured: this edge serves the demo app (configure [[apps]])");
    }
    let hub = Arc::new(Hub::new(node_id));
    let backbone = Backbone::redis(&config, &hub).await?;
    let webhooks = Webhooks::cluster(&config).await?;
    if let Some(webhooks) = &webhooks {
        webhooks.prepare(&config).await?;
    }
    let parts = Parts {
        name: "herald edge",
        node_id,
        apps,
        hub,
        backbone,
        webhooks,
        policy: config.dispatcher.client.policy.clone(),
        dispatcher: None,
    };
    node::serve(config, listeners, parts, |_| {}).await
}
