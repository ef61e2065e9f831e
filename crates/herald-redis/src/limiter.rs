//! [`RedisRateLimiter`]: the GCRA state of every webhook rate limit, shared by the
//! dispatcher replicas so a limit holds across the cluster rather than per replica.
//!
//! One key per limit, `<prefix>:{rl:<key>}`, holding its theoretical arrival time; it
//! expires once the limit is idle (see [`REDIS_GCRA_SCRIPT`]). With independent
//! instances the limit's key picks the instance; in a Redis Cluster its slot does.

use std::time::Duration;

use async_trait::async_trait;
use herald_dispatcher::{
    gcra::{REDIS_GCRA_SCRIPT, Rate},
    limiter::RateLimiter,
    store::StoreError,
};
use redis::Script;

use crate::{Connection, RedisConfig, RunScript, Shards};

/// The [`RateLimiter`] of a cluster: one script run per [`RateLimiter::take`], on the
/// Redis server's clock, so replicas' clock skew doesn't matter. Replicas lease cells
/// through `herald_dispatcher::limiter::Leases` rather than call it per delivery.
pub struct RedisRateLimiter {
    connections: Shards<Connection>,
    prefix: String,
    gcra: Script,
}

impl RedisRateLimiter {
    /// Connects to every instance of `config` (or to its Redis Cluster).
    pub async fn connect(config: &RedisConfig) -> herald_backbone::Result<Self> {
        Ok(Self {
            connections: Shards::open(config).await?,
            prefix: config.prefix.clone(),
            gcra: Script::new(REDIS_GCRA_SCRIPT),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn take(&self, key: &str, rate: Rate, n: u32) -> Result<(u32, Duration), StoreError> {
        let (granted, wait_us): (u32, u64) = self
            .gcra
            .key(format!("{}:{{rl:{key}}}", self.prefix))
            .arg(rate.emission_interval_micros())
            // The script refuses a burst of 0 (a `Rate` built without `Rate::new`); the
            // in-process limiter treats it as 1, and so does this one.
            .arg(rate.burst.max(1))
            .arg(n)
            .run(self.connections.pick(key))
            .await?;
        Ok((granted, Duration::from_micros(wait_us)))
    }
}
