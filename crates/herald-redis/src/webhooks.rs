//! [`RedisWebhookStore`]: webhook endpoints, attempts and dead letters shared by every
//! edge (the admin API) and dispatcher replica; and [`RedisRateLimiter`], the GCRA
//! state of every webhook rate limit.
//!
//! Keys, all of one app in one hash tag (one slot in a Redis Cluster, one instance
//! when sharded by app id):
//! - `<prefix>:{wh:<app>}:endpoints`: hash, endpoint id → endpoint JSON;
//! - `<prefix>:{wh:<app>}:attempts:<endpoint>`: list of attempt JSON, newest first,
//!   trimmed to [`ATTEMPTS_KEPT`], expiring [`RETENTION_MS`] after the last one;
//! - `<prefix>:{wh:<app>}:dead`: sorted set of webhook ids by failure time, and
//!   `<prefix>:{wh:<app>}:dead:data`: hash, webhook id → dead letter JSON; trimmed to
//!   [`DEAD_LETTERS_KEPT`] and [`RETENTION_MS`] in the same script that adds one.
//! - `<prefix>:{rl:<key>}`: a limit's theoretical arrival time (see
//!   `herald_dispatcher::gcra::REDIS_GCRA_SCRIPT`), gone once the limit is idle.

use std::time::Duration;

use async_trait::async_trait;
use herald_dispatcher::{
    endpoint::Endpoint,
    gcra::{REDIS_GCRA_SCRIPT, Rate},
    limiter::RateLimiter,
    store::{
        ATTEMPTS_KEPT, AttemptRecord, DEAD_LETTERS_KEPT, DeadLetter, RETENTION_MS, StoreError, WebhookStore,
    },
};
use redis::Script;

use crate::{Connection, RedisConfig, RunCommand, RunScript, Shards};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// KEYS: attempts. ARGV: attempt JSON, kept, retention ms.
const RECORD_ATTEMPT: &str = r"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// KEYS: dead (zset), dead data (hash). ARGV: webhook id, failed ms, JSON, kept,
/// retention ms. Adds one, then drops what is too old or beyond the newest `kept`.
const PUT_DEAD: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local cutoff = tonumber(ARGV[2]) - tonumber(ARGV[5])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)
local excess = redis.call('ZCARD', KEYS[1]) - #old - tonumber(ARGV[4])
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], #old, #old + excess - 1)
  for _, id in ipairs(oldest) do table.insert(old, id) end
end
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
";

/// KEYS: dead, dead data. ARGV: webhook id. Removes and returns its JSON (or nil), so
/// two replays can never take the same one.
const TAKE_DEAD: &str = r"
local data = redis.call('HGET', KEYS[2], ARGV[1])
if not data then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return data
";

pub struct RedisWebhookStore {
    connections: Shards<Connection>,
    prefix: String,
    record_attempt: Script,
    put_dead: Script,
    take_dead: Script,
}

impl RedisWebhookStore {
    pub async fn connect(config: &RedisConfig) -> herald_backbone::Result<Self> {
        Ok(Self {
            connections: Shards::open(config).await?,
            prefix: config.prefix.clone(),
            record_attempt: Script::new(RECORD_ATTEMPT),
            put_dead: Script::new(PUT_DEAD),
            take_dead: Script::new(TAKE_DEAD),
        })
    }

    fn key(&self, app_id: &str, what: &str) -> String {
        format!("{}:{{wh:{}:{app_id}}}:{what}", self.prefix, app_id.len())
    }

    fn on(&self, app_id: &str) -> &Connection {
        self.connections.pick(app_id)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Unavailable(format!("encoding: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(e) => {
            // A record written by another version: skipped rather than failing reads.
            tracing::warn!(error = %e, "unreadable webhook record skipped");
            None
        }
    }
}

#[async_trait]
impl WebhookStore for RedisWebhookStore {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        let json = to_json(endpoint)?;
        let key = self.key(&endpoint.app_id, "endpoints");
        Ok(redis::cmd("HSET")
            .arg(key)
            .arg(&endpoint.id)
            .arg(json)
            .run_on::<()>(self.on(&endpoint.app_id))
            .await?)
    }

    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>> {
        let json: Option<String> =
            redis::cmd("HGET").arg(self.key(app_id, "endpoints")).arg(id).run_on(self.on(app_id)).await?;
        Ok(json.and_then(|j| from_json(&j)))
    }

    async fn list_endpoints(&self, app_id: &str) -> Result<Vec<Endpoint>> {
        let all: Vec<String> =
            redis::cmd("HVALS").arg(self.key(app_id, "endpoints")).run_on(self.on(app_id)).await?;
        Ok(all.iter().filter_map(|j| from_json(j)).collect())
    }

    async fn delete_endpoint(&self, app_id: &str, id: &str) -> Result<bool> {
        let removed: u32 =
            redis::cmd("HDEL").arg(self.key(app_id, "endpoints")).arg(id).run_on(self.on(app_id)).await?;
        Ok(removed > 0)
    }

    async fn record_attempt(&self, app_id: &str, attempt: &AttemptRecord) -> Result<()> {
        let json = to_json(attempt)?;
        let key = self.key(app_id, &format!("attempts:{}", attempt.endpoint_id));
        let _: u32 = self
            .record_attempt
            .key(key)
            .arg(json)
            .arg(ATTEMPTS_KEPT)
            .arg(RETENTION_MS)
            .run(self.on(app_id))
            .await?;
        Ok(())
    }

    async fn attempts(
        &self,
        app_id: &str,
        endpoint_id: &str,
        webhook_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AttemptRecord>> {
        let key = self.key(app_id, &format!("attempts:{endpoint_id}"));
        let all: Vec<String> = redis::cmd("LRANGE").arg(key).arg(0).arg(-1).run_on(self.on(app_id)).await?;
        Ok(all
            .iter()
            .filter_map(|j| from_json::<AttemptRecord>(j))
            .filter(|a| webhook_id.is_none_or(|w| a.webhook_id == w))
            .take(limit)
            .collect())
    }

    async fn put_dead_letter(&self, app_id: &str, dead: &DeadLetter) -> Result<()> {
        let json = to_json(dead)?;
        let _: u32 = self
            .put_dead
            .key(self.key(app_id, "dead"))
            .key(self.key(app_id, "dead:data"))
            .arg(&dead.webhook_id)
            .arg(dead.failed_ms)
            .arg(json)
            .arg(DEAD_LETTERS_KEPT)
            .arg(RETENTION_MS)
            .run(self.on(app_id))
            .await?;
        Ok(())
    }

    async fn dead_letters(&self, app_id: &str, since_ms: i64, limit: usize) -> Result<Vec<DeadLetter>> {
        let connection = self.on(app_id);
        let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(self.key(app_id, "dead"))
            .arg("+inf")
            .arg(since_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit.max(1))
            .run_on(connection)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let data: Vec<Option<String>> =
            redis::cmd("HMGET").arg(self.key(app_id, "dead:data")).arg(&ids).run_on(connection).await?;
        Ok(data.iter().flatten().filter_map(|j| from_json(j)).collect())
    }

    async fn take_dead_letter(&self, app_id: &str, webhook_id: &str) -> Result<Option<DeadLetter>> {
        let json: Option<String> = self
            .take_dead
            .key(self.key(app_id, "dead"))
            .key(self.key(app_id, "dead:data"))
            .arg(webhook_id)
            .run(self.on(app_id))
            .await?;
        Ok(json.and_then(|j| from_json(&j)))
    }
}

/// Every webhook rate limit, shared by the dispatcher replicas.
pub struct RedisRateLimiter {
    connections: Shards<Connection>,
    prefix: String,
    gcra: Script,
}

impl RedisRateLimiter {
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
    async fn take(&self, key: &str, rate: Rate, n: u32) -> Result<(u32, Duration)> {
        let (granted, wait_us): (u32, u64) = self
            .gcra
            .key(format!("{}:{{rl:{key}}}", self.prefix))
            .arg(rate.emission_interval_micros())
            .arg(rate.burst)
            .arg(n)
            .run(self.connections.pick(key))
            .await?;
        Ok((granted, Duration::from_micros(wait_us)))
    }
}
