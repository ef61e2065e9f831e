//! A node's lease on its share of presence: renewals, gaps and the re-assertion they
//! trigger, and the reaping of nodes whose lease expired (see
//! [`RedisPresence::keep_lease`] for the rules).

use std::{sync::Arc, time::Duration};

use herald_backbone::{ChannelCount, Gap, Held, LeaseHolder, MemberChange, PresenceManager, Reaped, Result};
use herald_telemetry::Metric;
use tokio::{
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use super::{RedisPresence, parse_entry};
use crate::{Connection, RunCommand, RunScript};

/// KEYS: leases. ARGV: node, expiry, now. Renews the lease; returns {had, reaping}:
/// whether the lease was there, and whether a reap of this node is in progress (a
/// marker past its time is a reaper that died: dropped).
pub(super) const RENEW: &str = r"
local had = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local marker = 'reaping:' .. ARGV[1]
local reaping = redis.call('ZSCORE', KEYS[1], marker)
if reaping and tonumber(reaping) < tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[1], marker)
  reaping = false
end
return {had and 1 or 0, reaping and 1 or 0}
";

/// KEYS: leases. ARGV: lease (`<node>`, or `reaping:<node>` of a dead reaper), now,
/// node, marker expiry. Returns 1 if the lease was still expired and is now claimed:
/// replaced by a `reaping:<node>` marker until the reap is done.
pub(super) const CLAIM: &str = r"
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[4], 'reaping:' .. ARGV[3])
return 1
";

impl RedisPresence {
    /// Keeps `node`'s lease alive (renewed every third of `ttl`), keeps the node's share
    /// right after any gap in its view of Redis, and reaps the nodes whose lease
    /// expired, until the returned task is aborted. Abort it and call
    /// [`RedisPresence::release_lease`] on a graceful shutdown.
    ///
    /// The rules that keep live nodes from removing each other:
    /// - **A node reaps only while its own view is sound**: after one lease of renewals
    ///   that all succeeded on time. A stall or partition of Redis interrupts every
    ///   node's renewals alike, so when it ends each node first renews its own lease
    ///   (within a third of a lease) before any of them may judge another's.
    /// - **Claims are atomic** and leave a `reaping:<node>` marker while the reaper
    ///   removes the connections, so a reaped node that comes back waits for the reap
    ///   to finish before it re-asserts its share.
    /// - **After any gap a node re-asserts its whole share** (subscriptions, presence
    ///   members, lifecycle announcements, its lease): after failed or late renewals or
    ///   writes, when its lease was found gone (it was reaped), and when an instance
    ///   lost its data (found by a per-instance marker, `…:instance`, that only a
    ///   restart without data or a flush removes).
    pub fn keep_lease(
        self: &Arc<Self>,
        node: u32,
        ttl: Duration,
        holder: Arc<dyn LeaseHolder>,
    ) -> JoinHandle<()> {
        let presence = self.clone();
        tokio::spawn(async move { presence.lease_loop(node, ttl, holder).await })
    }

    async fn lease_loop(&self, node: u32, ttl: Duration, holder: Arc<dyn LeaseHolder>) {
        let mut ticks = tokio::time::interval(ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease = LeaseState::new(self.instance_count());
        // The re-assertion in progress: on its own task, so a large share never delays
        // the renewals (aborted with the lease task).
        let mut rebuild: JoinSet<(Gap, Result<()>)> = JoinSet::new();
        loop {
            ticks.tick().await;
            // A finished re-assertion was logged by the holder; a failed one is due again
            // (a task that panicked: rebuilt as after a data loss, the widest gap).
            while let Some(done) = rebuild.try_join_next() {
                match done {
                    Ok((_, Ok(()))) => {}
                    Ok((gap, Err(e))) => {
                        tracing::warn!(error = %e, node, "could not re-assert the presence share; retrying");
                        lease.gap(gap);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, node, "the presence re-assertion failed; retrying");
                        lease.gap(Gap::Lost);
                    }
                }
            }
            let renewal = match self.renew(node, ttl).await {
                Ok(renewal) => renewal,
                Err(e) => {
                    tracing::warn!(error = %e, node, "could not renew the presence lease");
                    lease.interrupted();
                    continue;
                }
            };
            let now = Instant::now();
            lease.renewed(now, ttl, renewal.had);
            match self.check_instances(node, &mut lease.instances).await {
                Ok(false) => {}
                Ok(true) => lease.gap(Gap::Lost),
                Err(e) => {
                    tracing::warn!(error = %e, node, "could not check the Redis instances");
                    lease.interrupted();
                    continue;
                }
            }
            if holder.take_dirty() {
                lease.gap(Gap::Interrupted);
            }
            if let Some(gap) = lease.pending
                && !renewal.reaping
                && rebuild.is_empty()
            {
                match self.held(node).await {
                    Ok(held) => {
                        lease.pending = None;
                        metrics::counter!(Metric::PresenceReasserts.name(), "gap" => gap.as_str())
                            .increment(1);
                        tracing::info!(
                            node,
                            gap = gap.as_str(),
                            entries = held.len(),
                            "re-asserting the presence share"
                        );
                        let holder = holder.clone();
                        rebuild.spawn(async move { (gap, holder.reassert(held, gap).await) });
                    }
                    Err(e) => tracing::warn!(error = %e, node, "could not read the presence share"),
                }
            }
            if !lease.may_reap(now, ttl) {
                continue;
            }
            match self.reap(node, ttl).await {
                Ok(reaped) => reaped.into_iter().for_each(|r| holder.reaped(r)),
                Err(e) => tracing::warn!(error = %e, "could not reap expired nodes"),
            }
        }
    }

    /// Renews `node`'s lease; says whether it was still there (not reaped, not lost)
    /// and whether another node is reaping it right now.
    async fn renew(&self, node: u32, ttl: Duration) -> Result<Renewal> {
        let now = herald_core::time::now_ms() as u64;
        let (had, reaping): (u8, u8) = self
            .renew
            .key(self.nodes())
            .arg(node)
            .arg(now + ttl.as_millis() as u64)
            .arg(now)
            .run(self.coordinator())
            .await?;
        Ok(Renewal { had: had == 1, reaping: reaping == 1 })
    }

    fn instance_count(&self) -> usize {
        self.connections.items.len()
    }

    /// Whether an instance lost its data since the last check: each instance keeps a
    /// marker that only a restart without data (or a flush) removes. The first check
    /// learns the markers.
    async fn check_instances(&self, node: u32, known: &mut [Option<String>]) -> Result<bool> {
        let mut lost = false;
        for (connection, known) in self.connections.items.iter().zip(known.iter_mut()) {
            let fresh = format!("{node}-{:016x}", fastrand::u64(..));
            let previous: Option<String> = redis::cmd("SET")
                .arg(format!("{}:instance", self.prefix))
                .arg(&fresh)
                .arg("NX")
                .arg("GET")
                .run_on(connection)
                .await?;
            let now = previous.unwrap_or(fresh);
            if known.as_ref().is_some_and(|k| *k != now) {
                tracing::warn!(node, "a Redis instance lost its data: rebuilding this node's share");
                lost = true;
            }
            *known = Some(now);
        }
        Ok(lost)
    }

    /// Gives the lease up (after a graceful shutdown has removed the node's
    /// connections), so nothing is reaped later.
    pub async fn release_lease(&self, node: u32) -> Result<()> {
        redis::cmd("ZREM").arg(self.nodes()).arg(node).run_on(self.coordinator()).await
    }

    /// Claims every expired lease but `own` (or a reap that its reaper abandoned) and
    /// undoes that node's connections. Returns what changed. Callers must only reap
    /// while their own view of Redis is sound (see [`RedisPresence::keep_lease`]).
    pub async fn reap(&self, own: u32, ttl: Duration) -> Result<Vec<Reaped>> {
        let now = herald_core::time::now_ms() as u64;
        let expired: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.nodes())
            .arg("-inf")
            .arg(now)
            .run_on(self.coordinator())
            .await?;
        let mut reaped = Vec::new();
        for lease in expired {
            let Ok(node) = lease.strip_prefix(REAPING).unwrap_or(&lease).parse::<u32>() else {
                continue;
            };
            if node == own {
                continue;
            }
            // Whoever claims the lease reaps it; the others skip it. The marker it
            // leaves outlives a reap; if the reaper dies, it expires and is claimed again.
            let claimed: u32 = self
                .claim
                .key(self.nodes())
                .arg(&lease)
                .arg(now)
                .arg(node)
                .arg(now + 4 * ttl.as_millis() as u64)
                .run(self.coordinator())
                .await?;
            if claimed == 0 {
                continue;
            }
            let held = self.held(node).await?;
            tracing::warn!(node, connections = held.len(), "node lease expired: removing its connections");
            // Members first, while their subscriptions still count; then the node's
            // counts, all at once.
            let mut counts = Vec::new();
            for entry in held {
                match entry {
                    Held::Member { app_id, channel, socket } => {
                        if let MemberChange::Changed(member) =
                            self.remove_member(&app_id, &channel, socket).await?
                        {
                            reaped.push(Reaped { app_id, channel, member: Some(member) });
                        }
                    }
                    Held::Count { app_id, channel } => {
                        counts.push(ChannelCount { app_id: Arc::from(app_id.as_str()), channel, count: 0 });
                    }
                }
            }
            let changes = self.set_counts(node, &counts).await?;
            for (count, change) in counts.into_iter().zip(changes) {
                if change.vacated() {
                    reaped.push(Reaped {
                        app_id: count.app_id.to_string(),
                        channel: count.channel,
                        member: None,
                    });
                }
            }
            for (connection, record) in &self.records_of(node).await? {
                redis::cmd("DEL").arg(record).run_on::<()>(connection).await?;
            }
            if self.cluster {
                redis::cmd("DEL").arg(self.node_records(node)).run_on::<()>(self.coordinator()).await?;
            }
            redis::cmd("ZREM")
                .arg(self.nodes())
                .arg(format!("{REAPING}{node}"))
                .run_on::<()>(self.coordinator())
                .await?;
        }
        Ok(reaped)
    }

    /// What Redis holds for `node`: its subscription counts and presence connections.
    pub async fn held(&self, node: u32) -> Result<Vec<Held>> {
        let mut held = Vec::new();
        for (connection, record) in &self.records_of(node).await? {
            let entries: Vec<String> = redis::cmd("SMEMBERS").arg(record).run_on(connection).await?;
            held.extend(entries.iter().filter_map(|e| parse_entry(e)));
        }
        Ok(held)
    }

    /// Where a node's records are: one set per instance, or (Redis Cluster) the
    /// per-channel sets its list names.
    async fn records_of(&self, node: u32) -> Result<Vec<(&Connection, String)>> {
        if !self.cluster {
            return Ok(self.connections.items.iter().map(|c| (c, self.entries(node))).collect());
        }
        let keys: Vec<String> =
            redis::cmd("SMEMBERS").arg(self.node_records(node)).run_on(self.coordinator()).await?;
        Ok(keys.into_iter().map(|k| (self.coordinator(), k)).collect())
    }
}

/// The prefix of a reap-in-progress marker in the leases' sorted set.
const REAPING: &str = "reaping:";

/// What a renewal found.
struct Renewal {
    /// The lease was there: not reaped, not lost.
    had: bool,
    /// Another node is removing this node's connections right now.
    reaping: bool,
}

/// What the lease task knows of its own view of Redis.
struct LeaseState {
    last_renewed: Option<Instant>,
    /// Since when every renewal succeeded on time; `None` right after a gap.
    healthy_since: Option<Instant>,
    /// A gap whose re-assertion is still due.
    pending: Option<Gap>,
    /// The data marker of each instance, as last seen.
    instances: Vec<Option<String>>,
}

impl LeaseState {
    fn new(instances: usize) -> Self {
        Self { last_renewed: None, healthy_since: None, pending: None, instances: vec![None; instances] }
    }

    fn gap(&mut self, gap: Gap) {
        self.pending = Some(self.pending.map_or(gap, |g| g.max(gap)));
    }

    /// A renewal or check failed: the view is not sound until a lease of good ones.
    fn interrupted(&mut self) {
        self.healthy_since = None;
        self.gap(Gap::Interrupted);
    }

    fn renewed(&mut self, now: Instant, ttl: Duration, had: bool) {
        // Renewals a lease apart: Redis stalled (or this process did), and leases may
        // have run out meanwhile, this node's among them.
        if self.last_renewed.is_some_and(|last| now.duration_since(last) > ttl) {
            self.interrupted();
        }
        self.last_renewed = Some(now);
        self.healthy_since.get_or_insert(now);
        // Gone: reaped (or, at start, never there; re-asserting an empty share is free).
        if !had {
            self.gap(Gap::Expired);
        }
    }

    /// Whether this node may judge others' leases: its own view has been sound (every
    /// renewal on time) for a whole lease.
    fn may_reap(&self, now: Instant, ttl: Duration) -> bool {
        self.healthy_since.is_some_and(|since| now.duration_since(since) >= ttl)
    }
}
