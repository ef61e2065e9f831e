//! Channel history in Redis, kept beside the channel's pub/sub: a hash with the
//! channel's epoch and latest offset, and a list of its last publications.
//!
//! A kept publication is one script run on the Redis that carries the channel (the
//! same shard; in a Redis Cluster the same slot, through a hash tag): it takes the next
//! offset, appends the publication, trims the list by size and age, and publishes it
//! with its offset. Redis runs one script at a time, so offsets are handed out in the
//! order the publications reach the subscribers, whichever edges sent them, and a
//! history read that ran before a publication never misses it while one that ran after
//! has it: the merge guarantee of [`Broker::history`](herald_backbone::Broker::history).
//!
//! Each list entry is `<ms> <message>`: when Redis kept it (Redis's clock, so edges
//! with skewed clocks agree on ages), then the broker message as subscribers receive
//! it, offset and epoch included.

use std::time::Duration;

use herald_backbone::{Direction, Error, HistoryPage, HistoryQuery, Message, Result, Retention, Topic};
use herald_core::{Publication, StreamPosition};
use redis::{ErrorKind, FromRedisValue, Script, ServerErrorKind, Value};

use crate::{Connection, wire};

/// Shared by both scripts: the channel's epoch (a new one, with the list of any old
/// one dropped, when it has none), and the list trimmed of entries older than the ttl.
const PRELUDE: &str = r#"
local meta, list = KEYS[1], KEYS[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('DEL', list)
end
redis.call('PEXPIRE', meta, ARGV[3])
local ttl = tonumber(ARGV[2])
while true do
  local head = redis.call('LINDEX', list, 0)
  if not head then break end
  local at = tonumber(string.match(head, '^(%d+) '))
  if at and now - at <= ttl then break end
  redis.call('LPOP', list)
end
"#;

/// KEYS: meta, list. ARGV: new epoch, ttl ms, meta ttl ms, size, pub/sub command
/// (`PUBLISH`/`SPUBLISH`), channel, message (a JSON object without offset and epoch).
/// Returns `{offset, epoch}`.
const PUBLISH_BODY: &str = r#"
local offset = redis.call('HINCRBY', meta, 'o', 1)
local payload = ARGV[7]
local message = string.sub(payload, 1, -2) .. ',"o":' .. offset .. ',"e":"' .. epoch .. '"}'
redis.call('RPUSH', list, now .. ' ' .. message)
redis.call('LTRIM', list, -tonumber(ARGV[4]), -1)
redis.call('PEXPIRE', list, ttl)
redis.call(ARGV[5], ARGV[6], message)
return {offset, epoch}
"#;

/// KEYS: meta, list. ARGV: new epoch, ttl ms, meta ttl ms, since (-1: all), limit,
/// backward (0/1). Returns `{epoch, latest offset, first kept offset, entries...}`.
const READ_BODY: &str = r#"
local top = tonumber(redis.call('HGET', meta, 'o'))
local len = redis.call('LLEN', list)
local first = top - len + 1
local answer = {epoch, top, first}
local since, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local from, to = 0, len - 1
if since >= first then from = since - first + 1 end
if limit == 0 or from > to then return answer end
if ARGV[6] == '1' then
  if to - limit + 1 > from then from = to - limit + 1 end
elseif from + limit - 1 < to then
  to = from + limit - 1
end
for _, entry in ipairs(redis.call('LRANGE', list, from, to)) do
  answer[#answer + 1] = entry
end
return answer
"#;

/// The two scripts, compiled once per broker.
pub(crate) struct HistoryScripts {
    publish: Script,
    read: Script,
}

impl Default for HistoryScripts {
    fn default() -> Self {
        Self {
            publish: Script::new(&format!("{PRELUDE}{PUBLISH_BODY}")),
            read: Script::new(&format!("{PRELUDE}{READ_BODY}")),
        }
    }
}

/// The history keys of a pub/sub channel, in its slot: the whole channel name is their
/// hash tag. (A channel name has no braces of its own: the config refuses them in app
/// ids and the prefix, and channel names cannot have them.)
fn keys(channel: &str) -> [String; 2] {
    [format!("{{{channel}}}:meta"), format!("{{{channel}}}:list")]
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// An `EVALSHA` of `script` on the keys of `channel`, with the arguments both scripts
/// begin with.
fn invocation(script: &Script, channel: &str, retention: Retention) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(2).arg(&keys(channel));
    cmd.arg(&*StreamPosition::new_epoch()).arg(millis(retention.ttl)).arg(millis(retention.meta_ttl));
    cmd
}

impl HistoryScripts {
    /// Publishes and keeps `publications`, all of one Redis (one slot in a cluster),
    /// in one pipeline; `channel` names a topic's pub/sub channel and `command` is
    /// `PUBLISH` or `SPUBLISH`.
    pub(crate) async fn publish(
        &self,
        connection: &Connection,
        command: &str,
        channel: impl Fn(&Topic) -> String,
        publications: &[(Topic, Publication, Retention)],
    ) -> Result<Vec<StreamPosition>> {
        let mut pipe = redis::pipe();
        for (topic, publication, retention) in publications {
            let channel = channel(topic);
            let mut cmd = invocation(&self.publish, &channel, *retention);
            let message = wire::encode(&topic.app_id, &Message::Publication(publication.clone()));
            cmd.arg(retention.size.max(1)).arg(command).arg(&channel).arg(message);
            pipe.add_command(cmd);
        }
        let answers: Vec<(u64, String)> = run_loading(connection, &pipe, &self.publish).await?;
        Ok(answers.into_iter().map(|(offset, epoch)| StreamPosition::new(offset, epoch)).collect())
    }

    /// Reads the history of the topic whose pub/sub channel is `channel`.
    pub(crate) async fn read(
        &self,
        connection: &Connection,
        channel: &str,
        retention: Retention,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        let mut pipe = redis::pipe();
        let mut cmd = invocation(&self.read, channel, retention);
        let since = query.since.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX));
        cmd.arg(since)
            .arg(query.limit.min(retention.size))
            .arg(u8::from(query.direction == Direction::Backward));
        pipe.add_command(cmd);
        let (answer,): (Vec<Value>,) = run_loading(connection, &pipe, &self.read).await?;
        page(answer, query.direction)
    }
}

/// Runs `pipe` (EVALSHAs of `script`); when Redis does not know the script (it
/// restarted, or a new node), loads it and runs the pipeline once more: a script Redis
/// lacks fails every EVALSHA of it, so none of them ran.
async fn run_loading<T: FromRedisValue + Send>(
    connection: &Connection,
    pipe: &redis::Pipeline,
    script: &Script,
) -> Result<T> {
    connection
        .run(|mut c| async move {
            match pipe.query_async::<T>(&mut c).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script.prepare_invoke().load_async(&mut c).await?;
                    pipe.query_async::<T>(&mut c).await
                }
                other => other,
            }
        })
        .await
}

/// A read script's answer as a page: `{epoch, top, first, entries...}`.
fn page(answer: Vec<Value>, direction: Direction) -> Result<HistoryPage> {
    let malformed = || Error::unavailable("redis: malformed history answer");
    let mut fields = answer.into_iter();
    let (Some(epoch), Some(top), Some(first)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(malformed());
    };
    let epoch: String = redis::from_redis_value(epoch).map_err(|_| malformed())?;
    let top: u64 = redis::from_redis_value(top).map_err(|_| malformed())?;
    let first: i64 = redis::from_redis_value(first).map_err(|_| malformed())?;
    let mut publications = Vec::new();
    for entry in fields {
        let entry: Vec<u8> = redis::from_redis_value(entry).map_err(|_| malformed())?;
        let message = entry.iter().position(|b| *b == b' ').and_then(|at| wire::decode(&entry[at + 1..]));
        match message {
            Some(Message::Publication(p)) if p.position.is_some() => publications.push(p),
            _ => return Err(malformed()),
        }
    }
    if direction == Direction::Backward {
        publications.reverse();
    }
    let first = u64::try_from(first).unwrap_or(0).max(1);
    Ok(HistoryPage { position: StreamPosition::new(top, epoch), first, publications })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channels_slot() {
        assert_eq!(keys("herald:3:app:chat"), ["{herald:3:app:chat}:meta", "{herald:3:app:chat}:list"]);
    }
}
