//! `herald dev`: everything in one process with an in-memory backbone and event log,
//! the dispatcher included: the embedded default.

use herald_webhooks::ssrf::AddressPolicy;

use super::node::{self, Parts, Start};
use crate::{
    config::{self, Config},
    wiring::{Backbone, Webhooks},
};

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let start = Start::new(&config).await?;
    let mut policy = config.dispatcher.client.policy.clone();
    if !config.allow_addresses_set {
        // Local development means local receivers: loopback is allowed unless the
        // config says otherwise.
        policy = AddressPolicy::new(&["127.0.0.0/8".into(), "::1".into()]).map_err(anyhow::Error::msg)?;
    }
    let webhooks = Webhooks::memory();
    webhooks.prepare(&config).await?;
    let mut dispatcher_config = config.dispatcher.clone();
    dispatcher_config.client.policy = policy.clone();
    let dispatcher = webhooks.dispatcher(start.apps.clone(), dispatcher_config);
    let parts = Parts {
        name: "herald dev",
        backbone: Backbone::memory(&start.hub),
        webhooks: Some(webhooks),
        policy,
        dispatcher: Some(dispatcher),
    };
    let demo = start.demo;
    let tls = (config.server.tls.enabled(), config.grpc.tls.enabled());
    node::serve(config, start, parts, |bound| {
        if demo {
            crate::demo::print_demo(bound.edge, bound.grpc, &config::demo_app(), tls.0, tls.1);
        }
    })
    .await
}
