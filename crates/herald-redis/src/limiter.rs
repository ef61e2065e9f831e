//! [`RedisRateLimiter`]: the GCRA state of every webhook rate limit, shared by the
//! dispatcher replicas so a limit holds across the cluster rather than per replica.
//!
//! One key per limit, `<prefix>:{rl:<key>}`, holding its theoretical arrival time; it
//! expires once the limit is idle (see [`REDIS_GCRA_SCRIPT`]). With independent
//! instances the limit's key picks the instance; in a Redis Cluster its slot does.

use std::time::Duration;

use async_trait::async_trait;
use herald_backbone::Error;
use herald_webhooks::{gcra::Rate, limiter::RateLimiter};
use redis::Script;

use crate::{Connection, RedisConfig, RunScript, Shards};

/// The [`RateLimiter`] of a cluster: one script run per [`RateLimiter::take`], on the
/// Redis server's clock, so replicas' clock skew doesn't matter. Replicas lease cells
/// through the dispatcher's leases rather than call it per delivery.
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
    async fn take(&self, key: &str, rate: Rate, n: u32) -> Result<(u32, Duration), Error> {
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

/// GCRA for Redis 7, shared by every dispatcher replica so a tenant's limit holds across
/// the cluster rather than per replica.
///
/// Key layout: `KEYS[1]` is one string per limiter (the caller picks the name, e.g. one per
/// app or endpoint; in Redis Cluster a single key needs no hash tag). Its value is the TAT
/// as a decimal integer of microseconds since the Unix epoch on the Redis server's clock,
/// which every replica shares, so replica clock skew doesn't matter. The key expires when
/// the bucket would be full again (at least 1 ms), so an idle tenant costs no memory and a
/// missing key means "full burst available".
///
/// `ARGV[1]` = emission interval in microseconds (integer ≥ 1, see
/// [`Rate::emission_interval_micros`]), `ARGV[2]` = burst in cells (≥ 1), `ARGV[3]` = cells
/// requested (≥ 0). Returns `{granted, wait_us}`: `granted` in 0..=n (partial grants
/// allowed); `wait_us` is the time until the next cell conforms when `granted` is 0, else 0.
///
/// `ARGV[4]`, optional and for tests only: "now" in microseconds since the Unix epoch
/// (integer ≥ 0), used instead of the server's `TIME` so a test can drive the script and
/// the in-process [`herald_webhooks::gcra::Gcra`] with the same clock and compare them
/// (`tests/gcra.rs`). Production callers never pass it. The key's expiry (`PX`) still
/// runs on the server's real clock, so such a test has to keep the key from expiring.
///
/// `TIME` is allowed in a script because Redis 7 replicates a script's effects (the `SET`),
/// not the script. Numbers are written with `%d`: Lua's default number formatting keeps
/// 14 significant digits, which would truncate a microsecond timestamp (16 digits).
pub const REDIS_GCRA_SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
if not interval or interval < 1 or interval ~= math.floor(interval) then
  return redis.error_reply('ERR gcra: emission interval must be a whole number of microseconds >= 1')
end
if not burst or burst < 1 or burst ~= math.floor(burst) then
  return redis.error_reply('ERR gcra: burst must be a whole number >= 1')
end
if not n or n < 0 or n ~= math.floor(n) then
  return redis.error_reply('ERR gcra: requested cells must be a whole number >= 0')
end

local now
if ARGV[4] then
  now = tonumber(ARGV[4])
  if not now or now < 0 or now ~= math.floor(now) then
    return redis.error_reply('ERR gcra: now must be a whole number of microseconds >= 0')
  end
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

-- A missing key (never used, or expired because the bucket refilled) is a full bucket.
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local backlog = tat - now

local granted = math.floor((burst * interval - backlog) / interval)
if granted > n then
  granted = n
end
if granted < 0 then
  granted = 0
end

if granted > 0 then
  tat = tat + granted * interval
  -- The bucket is full again once the TAT is reached; keep the key until then only.
  local ttl_ms = math.ceil((tat - now) / 1000)
  if ttl_ms < 1 then
    ttl_ms = 1
  end
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', string.format('%d', ttl_ms))
  return {granted, 0}
end

-- One more cell conforms once the backlog is down to (burst - 1) intervals.
local wait = backlog - (burst - 1) * interval
if wait < 0 then
  wait = 0
end
return {0, wait}
"#;
