//! [`RedisPresence`]: channel occupancy and presence members, cluster-wide, in Redis.
//!
//! Per channel (keys share one hash tag, so a channel's keys live together):
//! `…:subs` the set of subscribed socket ids, `…:sockets` socket → user of presence
//! connections, `…:counts` user → number of its connections, `…:members` user →
//! `user_info`. Per app, `…:channels` indexes the occupied channels. Every change is
//! one Lua script, so concurrent nodes never see a half-made change and
//! `member_added`/`member_removed` are decided once per user, cluster-wide.
//!
//! Not yet here (issue 5, next part): per-node leases that remove a crashed node's
//! connections, and sharding these keys over several Redis instances.

use std::sync::Arc;

use async_trait::async_trait;
use herald_backbone::{ChannelStats, Error, Member, MemberChange, PresenceManager, Result};
use herald_core::{ChannelName, SocketId};
use redis::{Script, aio::MultiplexedConnection};

use crate::RedisConfig;

/// KEYS: subs, app index. ARGV: socket, channel. Returns the subscription count.
const JOIN: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('SCARD', KEYS[1])
";

/// KEYS: subs, app index. ARGV: socket, channel. Returns the subscription count.
const LEAVE: &str = r"
redis.call('SREM', KEYS[1], ARGV[1])
local n = redis.call('SCARD', KEYS[1])
if n == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return n
";

/// KEYS: sockets, counts, members. ARGV: socket, user, info, max members.
/// Returns 1 (new member), 0 (already a member), -1 (full).
const ADD_MEMBER: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0
   and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// KEYS: sockets, counts, members. ARGV: socket. Returns {} (unchanged) or
/// {user, info} of a member whose last connection left.
const REMOVE_MEMBER: &str = r"
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return {} end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], user, -1) > 0 then return {} end
redis.call('HDEL', KEYS[2], user)
local info = redis.call('HGET', KEYS[3], user)
redis.call('HDEL', KEYS[3], user)
return {user, info or 'null'}
";

/// Presence and occupancy of a cluster, in one Redis.
pub struct RedisPresence {
    connection: MultiplexedConnection,
    prefix: Arc<str>,
    join: Script,
    leave: Script,
    add_member: Script,
    remove_member: Script,
}

impl RedisPresence {
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        // The multiplexed connection reconnects by itself after Redis comes back.
        let connection = client.get_multiplexed_async_connection().await.map_err(unavailable)?;
        Ok(Self {
            connection,
            prefix: Arc::from(config.prefix.as_str()),
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            add_member: Script::new(ADD_MEMBER),
            remove_member: Script::new(REMOVE_MEMBER),
        })
    }

    /// Keys of one channel: `<prefix>:{<app len>:<app>:<channel>}:<what>`.
    fn key(&self, app_id: &str, channel: &str, what: &str) -> String {
        format!("{}:{{{}:{app_id}:{channel}}}:{what}", self.prefix, app_id.len())
    }

    fn index(&self, app_id: &str) -> String {
        format!("{}:{{{}:{app_id}}}:channels", self.prefix, app_id.len())
    }

    fn connection(&self) -> MultiplexedConnection {
        self.connection.clone()
    }

    async fn stats(&self, app_id: &str, channels: &[ChannelName]) -> Result<Vec<ChannelStats>> {
        let mut pipe = redis::pipe();
        for channel in channels {
            pipe.cmd("SCARD").arg(self.key(app_id, channel.as_str(), "subs"));
            pipe.cmd("HLEN").arg(self.key(app_id, channel.as_str(), "members"));
        }
        let counts: Vec<u64> = pipe.query_async(&mut self.connection()).await.map_err(unavailable)?;
        Ok(counts
            .chunks(2)
            .map(|c| ChannelStats { subscription_count: c[0], user_count: c.get(1).copied().unwrap_or(0) })
            .collect())
    }
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}

#[async_trait]
impl PresenceManager for RedisPresence {
    async fn join(&self, app_id: &str, channel: &ChannelName, socket: SocketId) -> Result<u64> {
        self.join
            .key(self.key(app_id, channel.as_str(), "subs"))
            .key(self.index(app_id))
            .arg(socket.to_string())
            .arg(channel.as_str())
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    async fn leave(&self, app_id: &str, channel: &ChannelName, socket: SocketId) -> Result<u64> {
        self.leave
            .key(self.key(app_id, channel.as_str(), "subs"))
            .key(self.index(app_id))
            .arg(socket.to_string())
            .arg(channel.as_str())
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    async fn add_member(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        member: Member,
        max_members: usize,
    ) -> Result<MemberChange> {
        let outcome: i64 = self
            .add_member
            .key(self.key(app_id, channel.as_str(), "sockets"))
            .key(self.key(app_id, channel.as_str(), "counts"))
            .key(self.key(app_id, channel.as_str(), "members"))
            .arg(socket.to_string())
            .arg(&*member.user_id)
            .arg(member.user_info.to_string())
            .arg(max_members)
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        match outcome {
            1 => Ok(MemberChange::Changed(member)),
            -1 => Err(Error::PresenceFull { limit: max_members }),
            _ => Ok(MemberChange::Unchanged),
        }
    }

    async fn remove_member(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
    ) -> Result<MemberChange> {
        let removed: Vec<String> = self
            .remove_member
            .key(self.key(app_id, channel.as_str(), "sockets"))
            .key(self.key(app_id, channel.as_str(), "counts"))
            .key(self.key(app_id, channel.as_str(), "members"))
            .arg(socket.to_string())
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(match removed.as_slice() {
            [user, info] => MemberChange::Changed(Member {
                user_id: Arc::from(user.as_str()),
                user_info: serde_json::from_str(info).unwrap_or(serde_json::Value::Null),
            }),
            _ => MemberChange::Unchanged,
        })
    }

    async fn members(&self, app_id: &str, channel: &ChannelName) -> Result<Vec<Member>> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key(app_id, channel.as_str(), "members"))
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(all
            .into_iter()
            .map(|(user, info)| Member {
                user_id: Arc::from(user.as_str()),
                user_info: serde_json::from_str(&info).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }

    async fn channel(&self, app_id: &str, channel: &ChannelName) -> Result<ChannelStats> {
        let stats = self.stats(app_id, std::slice::from_ref(channel)).await?;
        Ok(stats.into_iter().next().unwrap_or_default())
    }

    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<(ChannelName, ChannelStats)>> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.index(app_id))
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let mut channels: Vec<ChannelName> =
            names.iter().filter(|n| n.starts_with(prefix)).filter_map(|n| ChannelName::new(n).ok()).collect();
        channels.sort();
        let stats = self.stats(app_id, &channels).await?;
        Ok(channels.into_iter().zip(stats).filter(|(_, s)| s.subscription_count > 0).collect())
    }
}
