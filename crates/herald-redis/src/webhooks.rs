//! [`RedisWebhookStore`]: webhook endpoints, delivery attempts and dead letters, shared
//! by the admin API of every edge node and by every dispatcher replica.
//!
//! Keys of app `<app>` (`<n>` is the length of `<app>` in bytes):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:{wh:<n>:<app>}:endpoints` | hash | endpoint id → endpoint JSON |
//! | `<prefix>:{wh:<n>:<app>}:attempts:<endpoint>` | list | attempt JSON, newest first |
//! | `<prefix>:{wh:<n>:<app>}:dead` | sorted set | webhook id by `failed_ms` |
//! | `<prefix>:{wh:<n>:<app>}:dead:data` | hash | webhook id → dead letter JSON |
//!
//! Every key of an app carries the same hash tag, so in a Redis Cluster they share a
//! slot and one script may touch several of them; with independent instances the app
//! id picks the instance. The length makes the key unambiguous whatever the app id
//! contains (`}` or `:` included), as in the other stores of this crate.
//!
//! Trimming happens in the script that adds: an attempt list keeps the newest
//! [`ATTEMPTS_KEPT`] and drops, from its oldest end, attempts more than
//! [`RETENTION_MS`] older than the one added; the dead letters keep the newest
//! [`DEAD_LETTERS_KEPT`] and drop those more than [`RETENTION_MS`] older than the newest.
//! Times are the records' own (the dispatcher's clock), not Redis's. The attempt and
//! dead letter keys also expire [`RETENTION_MS`] after their last write, so the history
//! of an idle endpoint or app goes as a whole; endpoints never expire. An endpoint's JSON
//! holds its signing secrets: this Redis must be as trusted as the configuration.

use async_trait::async_trait;
use herald_backbone::Error;
use herald_webhooks::{
    endpoint::Endpoint,
    store::{ATTEMPTS_KEPT, AttemptRecord, DEAD_LETTERS_KEPT, DeadLetter, RETENTION_MS, WebhookStore},
};
use redis::Script;

use crate::{Connection, RedisConfig, RunCommand, RunScript, Shards};

type Result<T, E = Error> = std::result::Result<T, E>;

/// KEYS: attempts. ARGV: attempt JSON, its `time_ms`, kept, retention ms.
///
/// The list is in recording order, so past-retention attempts gather at its tail: only
/// the tail is looked at, one decode per attempt dropped plus one.
const RECORD_ATTEMPT: &str = r"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local cutoff = tonumber(ARGV[2]) - tonumber(ARGV[4])
while true do
  local oldest = redis.call('LINDEX', KEYS[1], -1)
  if not oldest then break end
  local ok, record = pcall(cjson.decode, oldest)
  if not (ok and type(record) == 'table' and type(record.time_ms) == 'number'
          and record.time_ms < cutoff) then
    break
  end
  redis.call('RPOP', KEYS[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// KEYS: dead (sorted set), dead data (hash). ARGV: webhook id, failed ms, JSON, kept,
/// retention ms. Adds (or replaces) one, then drops what is past retention or beyond the
/// newest `kept`, in the same step so readers never see more than the contract allows.
const PUT_DEAD: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local newest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
local cutoff = string.format('%d', newest - tonumber(ARGV[5]))
local drop = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)
local excess = redis.call('ZCARD', KEYS[1]) - #drop - tonumber(ARGV[4])
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], #drop, #drop + excess - 1)) do
    table.insert(drop, id)
  end
end
for _, id in ipairs(drop) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
";

/// KEYS: dead, dead data. ARGV: since ms, limit. The JSON of the newest `limit` that
/// failed at or after `since`, newest first. One script rather than two commands so a
/// listing is one round trip and one consistent view. `HGET` in a loop rather than
/// `HMGET` with `unpack`: Lua's stack (8000 values) is smaller than a full listing.
const DEAD_LETTERS: &str = r"
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local found = {}
for _, id in ipairs(ids) do
  local data = redis.call('HGET', KEYS[2], id)
  if data then table.insert(found, data) end
end
return found
";

/// KEYS: dead, dead data. ARGV: webhook id. Removes it and returns its JSON (nil when
/// absent): one script, so two concurrent replays can never both take it.
const TAKE_DEAD: &str = r"
local data = redis.call('HGET', KEYS[2], ARGV[1])
if not data then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return data
";

/// The [`WebhookStore`] of a cluster: every node and replica sees the same endpoints,
/// attempts and dead letters. Each method is one command or one script on the
/// instance (or slot) of the app, so a change is atomic and visible to every reader
/// once it returns. A Redis failure is [`Error::Unavailable`].
pub struct RedisWebhookStore {
    connections: Shards<Connection>,
    prefix: String,
    record_attempt: Script,
    put_dead: Script,
    dead_letters: Script,
    take_dead: Script,
}

impl RedisWebhookStore {
    /// Connects to every instance of `config` (or to its Redis Cluster).
    pub async fn connect(config: &RedisConfig) -> herald_backbone::Result<Self> {
        Ok(Self {
            connections: Shards::open(config).await?,
            prefix: config.prefix.clone(),
            record_attempt: Script::new(RECORD_ATTEMPT),
            put_dead: Script::new(PUT_DEAD),
            dead_letters: Script::new(DEAD_LETTERS),
            take_dead: Script::new(TAKE_DEAD),
        })
    }

    /// `<prefix>:{wh:<app len>:<app>}:<what>`.
    fn key(&self, app_id: &str, what: &str) -> String {
        format!("{}:{{wh:{}:{app_id}}}:{what}", self.prefix, app_id.len())
    }

    fn attempts_key(&self, app_id: &str, endpoint_id: &str) -> String {
        self.key(app_id, &format!("attempts:{endpoint_id}"))
    }

    /// The instance that holds every key of `app_id`.
    fn on(&self, app_id: &str) -> &Connection {
        self.connections.pick(app_id)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::unavailable_because("encoding a webhook record", e))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(e) => {
            // Written by an incompatible version: one bad record shouldn't make every
            // listing of its app fail, so it is skipped (and logged).
            tracing::warn!(error = %e, "unreadable webhook record skipped");
            None
        }
    }
}

/// A caller's limit as a Redis count: never more than can exist, so `usize::MAX`
/// ("all") doesn't overflow Redis's integer.
fn at_most(limit: usize, kept: usize) -> usize {
    limit.min(kept)
}

#[async_trait]
impl WebhookStore for RedisWebhookStore {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        let json = to_json(endpoint)?;
        redis::cmd("HSET")
            .arg(self.key(&endpoint.app_id, "endpoints"))
            .arg(&endpoint.id)
            .arg(json)
            .run_on::<()>(self.on(&endpoint.app_id))
            .await?;
        Ok(())
    }

    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>> {
        let json: Option<String> =
            redis::cmd("HGET").arg(self.key(app_id, "endpoints")).arg(id).run_on(self.on(app_id)).await?;
        Ok(json.and_then(|j| from_json(&j)))
    }

    async fn list_endpoints(&self, app_id: &str) -> Result<Vec<Endpoint>> {
        let all: Vec<String> =
            redis::cmd("HVALS").arg(self.key(app_id, "endpoints")).run_on(self.on(app_id)).await?;
        let mut endpoints: Vec<Endpoint> = all.iter().filter_map(|j| from_json(j)).collect();
        // A hash has no order; creation order (as the memory store lists them) keeps
        // listings stable from one call to the next.
        endpoints.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(endpoints)
    }

    async fn delete_endpoint(&self, app_id: &str, id: &str) -> Result<bool> {
        let removed: u32 =
            redis::cmd("HDEL").arg(self.key(app_id, "endpoints")).arg(id).run_on(self.on(app_id)).await?;
        Ok(removed > 0)
    }

    async fn record_attempt(&self, app_id: &str, attempt: &AttemptRecord) -> Result<()> {
        let json = to_json(attempt)?;
        let _: i64 = self
            .record_attempt
            .key(self.attempts_key(app_id, &attempt.endpoint_id))
            .arg(json)
            .arg(attempt.time_ms)
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
        let limit = at_most(limit, ATTEMPTS_KEPT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Unfiltered, Redis cuts the list; filtered, the match can be anywhere in it
        // (at most ATTEMPTS_KEPT records).
        let last = if webhook_id.is_some() { -1 } else { i64::try_from(limit).unwrap_or(i64::MAX) - 1 };
        let all: Vec<String> = redis::cmd("LRANGE")
            .arg(self.attempts_key(app_id, endpoint_id))
            .arg(0)
            .arg(last)
            .run_on(self.on(app_id))
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| from_json::<AttemptRecord>(j))
            .filter(|a| webhook_id.is_none_or(|w| a.webhook_id == w))
            .take(limit)
            .collect())
    }

    async fn put_dead_letter(&self, app_id: &str, dead: &DeadLetter) -> Result<()> {
        let json = to_json(dead)?;
        let _: i64 = self
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
        let limit = at_most(limit, DEAD_LETTERS_KEPT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let found: Vec<String> = self
            .dead_letters
            .key(self.key(app_id, "dead"))
            .key(self.key(app_id, "dead:data"))
            .arg(since_ms)
            .arg(limit)
            .run(self.on(app_id))
            .await?;
        Ok(found.iter().filter_map(|j| from_json(j)).collect())
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
