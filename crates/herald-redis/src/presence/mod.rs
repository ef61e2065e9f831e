//! [`RedisPresence`]: channel occupancy and presence members, cluster-wide, in Redis.
//!
//! Per channel (keys share one hash tag, so a channel's keys live together):
//! `…:occupancy` each node's subscription count and their sum (`all`), `…:sockets`
//! socket → user of presence connections, `…:counts` user → number of its
//! connections, `…:members` user → `user_info`, `…:announced` the lifecycle webhook
//! events announced (`#` occupied, `u:<user>` member). Per app, `…:channels` indexes
//! the occupied channels. Every change is one Lua script, so concurrent nodes never
//! see a half-made change and `member_added`/`member_removed` are decided once per
//! user, cluster-wide.
//!
//! **Occupancy is per node, not per connection**: a node sets its own count of each
//! channel, in batches (one script run for up to [`COUNTS_PER_SCRIPT`] channels of an
//! instance), when its counts change. A million clients on 10,000 channels cost
//! Redis a hash field per channel and node, not a set member per client, and a burst
//! of subscribes to one channel costs one write per batch. Presence connections are
//! still recorded one by one (members are per user, decided once cluster-wide).
//!
//! **Leases**: every change is also recorded in a set per node (the node of the
//! socket). Each node refreshes its lease in `…:nodes` (a sorted set of expiry times)
//! and reaps expired ones: the first node to claim a dead node's lease undoes all of
//! its subscriptions and presence connections, and reports the members that left,
//! so `member_removed` reaches the other nodes' clients. A crashed node's members and
//! counts are gone within about two leases (one to expire, and the reaper's own view
//! must have been sound for one).
//!
//! **Each node is the source of truth for its own connections**: what Redis holds is a
//! copy. A node never reaps others on evidence that its own view was interrupted, and
//! after any gap it re-asserts its whole share ([`RedisPresence::keep_lease`]).
//!
//! **Shards**: with several Redis instances, a channel's keys (and the app index
//! entry and node entries that go with them) live on the instance its name hashes
//! to; listings ask every instance; the first instance keeps the leases.

use std::sync::Arc;

use async_trait::async_trait;
use herald_backbone::{
    ChannelCount, ChannelStats, CountChange, Error, Held, Lifecycle, Member, MemberChange, PresenceManager,
    Result,
};
use herald_core::{ChannelName, SocketId};
use redis::Script;

use crate::{Connection, RedisConfig, RunCommand, RunScript, Shards};

mod lease;

use lease::{CLAIM, RENEW};

/// KEYS: node entries, then per channel its occupancy hash and its app index. ARGV:
/// node, then per channel its name, its entry and the node's count. Sets the node's
/// count of each channel (the hash maps node → count, and `all` → their sum); lists
/// the channel in its app's index while it has subscribers, and the entry in the
/// node's while the node has some. Returns each channel's sum before and after.
const SET_COUNTS: &str = r"
local out = {}
for i = 2, #KEYS, 2 do
  local k = i - 1 + (i - 2) / 2
  local channel, entry, count = ARGV[k + 1], ARGV[k + 2], tonumber(ARGV[k + 3])
  local got = redis.call('HMGET', KEYS[i], ARGV[1], 'all')
  local old, before = tonumber(got[1] or '0'), tonumber(got[2] or '0')
  local after = before
  if count ~= old then
    after = redis.call('HINCRBY', KEYS[i], 'all', count - old)
    if count > 0 then
      redis.call('HSET', KEYS[i], ARGV[1], count)
    else
      redis.call('HDEL', KEYS[i], ARGV[1])
    end
    if after <= 0 then
      redis.call('DEL', KEYS[i])
      after = 0
    end
    if old == 0 then
      redis.call('SADD', KEYS[1], entry)
    elseif count == 0 then
      redis.call('SREM', KEYS[1], entry)
    end
    if before == 0 and after > 0 then
      redis.call('SADD', KEYS[i + 1], channel)
    elseif before > 0 and after == 0 then
      redis.call('SREM', KEYS[i + 1], channel)
    end
  end
  out[#out + 1] = before
  out[#out + 1] = after
end
return out
";

/// Most channels one SET_COUNTS run sets: Redis runs nothing else meanwhile.
const COUNTS_PER_SCRIPT: usize = 256;

/// KEYS: sockets, counts, members, node entries. ARGV: socket, user, info, max
/// members, entry. Returns 1 (new member), 0 (already a member), -1 (full).
const ADD_MEMBER: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0
   and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[5])
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// KEYS: sockets, counts, members, node entries. ARGV: socket, entry. Returns {}
/// (unchanged) or {user, info} of a member whose last connection left.
const REMOVE_MEMBER: &str = r"
redis.call('SREM', KEYS[4], ARGV[2])
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return {} end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], user, -1) > 0 then return {} end
redis.call('HDEL', KEYS[2], user)
local info = redis.call('HGET', KEYS[3], user)
redis.call('HDEL', KEYS[3], user)
return {user, info or 'null'}
";

/// KEYS: announced, occupancy, counts. ARGV: field (`#` for occupancy, `u:<user>`), user.
/// Returns 1 if the presence was not announced yet (and now is).
const ANNOUNCE_PRESENT: &str = r"
return redis.call('HSETNX', KEYS[1], ARGV[1], 1)
";

/// KEYS and ARGV as ANNOUNCE_PRESENT. Returns 1 if the presence was announced and is
/// gone now (no subscriber; the user has no connection); the announcement is withdrawn.
const ANNOUNCE_ABSENT: &str = r"
if ARGV[2] == '' then
  if tonumber(redis.call('HGET', KEYS[2], 'all') or '0') > 0 then return 0 end
elseif redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
  return 0
end
return redis.call('HDEL', KEYS[1], ARGV[1])
";

/// Presence and occupancy of a cluster, in one Redis.
pub struct RedisPresence {
    /// A channel's keys live on the instance its name hashes to; the first instance
    /// also keeps the node leases.
    connections: Shards<Connection>,
    /// Redis Cluster: a script may only touch the keys of one slot, so the app index
    /// and the node records are kept in per-channel keys plus global lists.
    cluster: bool,
    prefix: Arc<str>,
    set_counts: Script,
    add_member: Script,
    remove_member: Script,
    announce_present: Script,
    announce_absent: Script,
    renew: Script,
    claim: Script,
}

impl RedisPresence {
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        Ok(Self {
            connections: Shards::open(config).await?,
            cluster: config.cluster,
            prefix: Arc::from(config.prefix.as_str()),
            set_counts: Script::new(SET_COUNTS),
            add_member: Script::new(ADD_MEMBER),
            remove_member: Script::new(REMOVE_MEMBER),
            announce_present: Script::new(ANNOUNCE_PRESENT),
            announce_absent: Script::new(ANNOUNCE_ABSENT),
            renew: Script::new(RENEW),
            claim: Script::new(CLAIM),
        })
    }

    /// Keys of one channel: `<prefix>:{<app len>:<app>:<channel>}:<what>`.
    fn key(&self, app_id: &str, channel: &str, what: &str) -> String {
        format!("{}:{{{}:{app_id}:{channel}}}:{what}", self.prefix, app_id.len())
    }

    /// The instance that holds a channel's keys.
    fn on(&self, app_id: &str, channel: &str) -> &Connection {
        self.connections.pick(&format!("{app_id}:{channel}"))
    }

    /// The instance that keeps the node leases.
    fn coordinator(&self) -> &Connection {
        &self.connections.items[0]
    }

    fn entries(&self, node: u32) -> String {
        format!("{}:node:{node}:entries", self.prefix)
    }

    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The app index and node record keys a script updates: global in one Redis,
    /// per channel (same slot as its other keys) in a Redis Cluster.
    fn script_keys(&self, app_id: &str, channel: &str, node: u32) -> (String, String) {
        if self.cluster {
            (self.key(app_id, channel, "index"), self.key(app_id, channel, &format!("node:{node}")))
        } else {
            (self.index(app_id), self.entries(node))
        }
    }

    /// Redis Cluster only: lists the channel in its app's index and its per-channel
    /// node record in the node's list, before the change itself (so a crash between
    /// the two leaves something to reap, never an orphan). Idempotent.
    async fn register(&self, app_id: &str, channel: &str, node: u32) -> Result<()> {
        if !self.cluster {
            return Ok(());
        }
        let connection = self.on(app_id, channel);
        redis::cmd("SADD").arg(self.index(app_id)).arg(channel).run_on::<()>(connection).await?;
        let record = self.key(app_id, channel, &format!("node:{node}"));
        redis::cmd("SADD").arg(self.node_records(node)).arg(record).run_on::<()>(connection).await
    }

    /// Redis Cluster only: the per-channel record keys of a node.
    fn node_records(&self, node: u32) -> String {
        format!("{}:node:{node}:records", self.prefix)
    }

    fn index(&self, app_id: &str) -> String {
        format!("{}:{{{}:{app_id}}}:channels", self.prefix, app_id.len())
    }

    async fn stats(&self, app_id: &str, channels: &[ChannelName]) -> Result<Vec<ChannelStats>> {
        let mut stats = vec![ChannelStats::default(); channels.len()];
        if self.cluster {
            // A cluster pipeline must stay in one slot: ask channel by channel.
            for (i, channel) in channels.iter().enumerate() {
                let connection = self.coordinator();
                let subscription_count: Option<u64> = redis::cmd("HGET")
                    .arg(self.key(app_id, channel.as_str(), "occupancy"))
                    .arg("all")
                    .run_on(connection)
                    .await?;
                let subscription_count = subscription_count.unwrap_or(0);
                let user_count: u64 = redis::cmd("HLEN")
                    .arg(self.key(app_id, channel.as_str(), "members"))
                    .run_on(connection)
                    .await?;
                stats[i] = ChannelStats { subscription_count, user_count };
            }
            return Ok(stats);
        }
        for (shard, connection) in self.connections.items.iter().enumerate() {
            let here: Vec<usize> = (0..channels.len())
                .filter(|i| self.connections.index(&format!("{app_id}:{}", channels[*i])) == shard)
                .collect();
            if here.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for i in &here {
                pipe.cmd("HGET").arg(self.key(app_id, channels[*i].as_str(), "occupancy")).arg("all");
                pipe.cmd("HLEN").arg(self.key(app_id, channels[*i].as_str(), "members"));
            }
            let pipe = &pipe;
            let counts: Vec<Option<u64>> = connection
                .run(|mut connection| async move { pipe.query_async(&mut connection).await })
                .await?;
            for (i, count) in here.iter().zip(counts.chunks(2)) {
                stats[*i] = ChannelStats {
                    subscription_count: count[0].unwrap_or(0),
                    user_count: count.get(1).copied().flatten().unwrap_or(0),
                };
            }
        }
        Ok(stats)
    }
}

/// A node's record of its count of a channel, as JSON (app ids may hold any
/// character).
fn count_entry(app_id: &str, channel: &str) -> String {
    serde_json::json!(["c", app_id, channel]).to_string()
}

/// A node's record of one presence connection.
fn member_entry(app_id: &str, channel: &ChannelName, socket: SocketId) -> String {
    serde_json::json!(["m", app_id, channel.as_str(), socket.to_string()]).to_string()
}

/// An entry, if it is one of this version's (subscription entries of earlier
/// versions, one per connection, are skipped).
fn parse_entry(text: &str) -> Option<Held> {
    let parts: Vec<String> = serde_json::from_str(text).ok()?;
    match parts.as_slice() {
        [kind, app_id, channel] if kind == "c" => {
            Some(Held::Count { app_id: app_id.clone(), channel: ChannelName::stored(channel)? })
        }
        [kind, app_id, channel, socket] if kind == "m" => Some(Held::Member {
            app_id: app_id.clone(),
            channel: ChannelName::stored(channel)?,
            socket: socket.parse().ok()?,
        }),
        _ => None,
    }
}

#[async_trait]
impl PresenceManager for RedisPresence {
    async fn set_counts(&self, node: u32, counts: &[ChannelCount]) -> Result<Vec<CountChange>> {
        let mut out = vec![CountChange::default(); counts.len()];
        // The channels of one instance go together, a batch per script run; in a Redis
        // Cluster a script may only touch one slot: a run per channel.
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.connections.items.len()];
        for (i, c) in counts.iter().enumerate() {
            groups[self.connections.index(&format!("{}:{}", c.app_id, c.channel))].push(i);
        }
        let per_run = if self.cluster { 1 } else { COUNTS_PER_SCRIPT };
        for (shard, group) in groups.iter().enumerate() {
            for batch in group.chunks(per_run) {
                let mut invocation = self.set_counts.prepare_invoke();
                let first = &counts[batch[0]];
                let (_, entries) = self.script_keys(&first.app_id, first.channel.as_str(), node);
                invocation.key(entries).arg(node);
                for &i in batch {
                    let ChannelCount { app_id, channel, count } = &counts[i];
                    if self.cluster && *count > 0 {
                        self.register(app_id, channel.as_str(), node).await?;
                    }
                    let (index, _) = self.script_keys(app_id, channel.as_str(), node);
                    invocation.key(self.key(app_id, channel.as_str(), "occupancy")).key(index);
                    invocation.arg(channel.as_str()).arg(count_entry(app_id, channel.as_str())).arg(*count);
                }
                let connection = if self.cluster {
                    self.on(&first.app_id, first.channel.as_str())
                } else {
                    &self.connections.items[shard]
                };
                let sums: Vec<u64> = invocation.run(connection).await?;
                for (&i, pair) in batch.iter().zip(sums.chunks(2)) {
                    out[i] = CountChange { before: pair[0], after: pair.get(1).copied().unwrap_or(0) };
                }
            }
        }
        Ok(out)
    }

    async fn add_member(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        member: Member,
        max_members: usize,
    ) -> Result<MemberChange> {
        self.register(app_id, channel.as_str(), socket.node).await?;
        let (_, entries) = self.script_keys(app_id, channel.as_str(), socket.node);
        let outcome: i64 = self
            .add_member
            .key(self.key(app_id, channel.as_str(), "sockets"))
            .key(self.key(app_id, channel.as_str(), "counts"))
            .key(self.key(app_id, channel.as_str(), "members"))
            .key(entries)
            .arg(socket.to_string())
            .arg(&*member.user_id)
            .arg(member.user_info.to_string())
            .arg(max_members)
            .arg(member_entry(app_id, channel, socket))
            .run(self.on(app_id, channel.as_str()))
            .await?;
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
        let (_, entries) = self.script_keys(app_id, channel.as_str(), socket.node);
        let removed: Vec<String> = self
            .remove_member
            .key(self.key(app_id, channel.as_str(), "sockets"))
            .key(self.key(app_id, channel.as_str(), "counts"))
            .key(self.key(app_id, channel.as_str(), "members"))
            .key(entries)
            .arg(socket.to_string())
            .arg(member_entry(app_id, channel, socket))
            .run(self.on(app_id, channel.as_str()))
            .await?;
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
            .run_on(self.on(app_id, channel.as_str()))
            .await?;
        Ok(all
            .into_iter()
            .map(|(user, info)| Member {
                user_id: Arc::from(user.as_str()),
                user_info: serde_json::from_str(&info).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }

    async fn are_members(
        &self,
        app_id: &str,
        channel: &ChannelName,
        user_ids: &[Arc<str>],
    ) -> Result<Vec<bool>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.key(app_id, channel.as_str(), "members"))
            .arg(user_ids.iter().map(|u| &**u).collect::<Vec<&str>>())
            .run_on(self.on(app_id, channel.as_str()))
            .await?;
        Ok(found.into_iter().map(|info| info.is_some()).collect())
    }

    async fn channel(&self, app_id: &str, channel: &ChannelName) -> Result<ChannelStats> {
        let stats = self.stats(app_id, std::slice::from_ref(channel)).await?;
        Ok(stats.into_iter().next().unwrap_or_default())
    }

    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<(ChannelName, ChannelStats)>> {
        let mut names: Vec<String> = Vec::new();
        for connection in &self.connections.items {
            let here: Vec<String> = redis::cmd("SMEMBERS").arg(self.index(app_id)).run_on(connection).await?;
            names.extend(here);
        }
        names.sort();
        names.dedup();
        let mut channels: Vec<ChannelName> =
            names.iter().filter(|n| n.starts_with(prefix)).filter_map(|n| ChannelName::new(n).ok()).collect();
        channels.sort();
        let stats = self.stats(app_id, &channels).await?;
        Ok(channels.into_iter().zip(stats).filter(|(_, s)| s.subscription_count > 0).collect())
    }

    async fn announce(&self, app_id: &str, channel: &ChannelName, change: Lifecycle<'_>) -> Result<bool> {
        let (field, script) = match change {
            Lifecycle::Occupied => ("#".to_owned(), &self.announce_present),
            Lifecycle::MemberAdded(user) => (format!("u:{user}"), &self.announce_present),
            Lifecycle::Vacated => ("#".to_owned(), &self.announce_absent),
            Lifecycle::MemberRemoved(user) => (format!("u:{user}"), &self.announce_absent),
        };
        let user = match change {
            Lifecycle::MemberAdded(user) | Lifecycle::MemberRemoved(user) => user,
            _ => "",
        };
        let due: u32 = script
            .key(self.key(app_id, channel.as_str(), "announced"))
            .key(self.key(app_id, channel.as_str(), "occupancy"))
            .key(self.key(app_id, channel.as_str(), "counts"))
            .arg(field)
            .arg(user)
            .run(self.on(app_id, channel.as_str()))
            .await?;
        Ok(due == 1)
    }
}
