//! Presence leases against a real `redis-server`: crashed nodes are reaped; live nodes
//! never reap each other when Redis stalls past the lease; after Redis restarts empty
//! every node re-asserts its share; a node reaped while alive comes back whole.
//!
//! Absence ("nobody was reaped") is never proved by waiting a while: a canary node
//! whose lease expired is planted after the fault, and the assertions are made once the
//! canary is reaped, i.e. once reaping demonstrably runs again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use herald_backbone::{ChannelCount, Gap, Held, LeaseHolder, Member, PresenceManager, Reaped, Result};
use herald_core::{ChannelName, SocketId};
use herald_redis::{RedisConfig, RedisPresence};
use herald_testkit::redis::RedisServer;
use parking_lot::Mutex;
use tokio::sync::mpsc;

const TTL: Duration = Duration::from_millis(600);
const WAIT: Duration = Duration::from_secs(15);

fn config(redis: &RedisServer) -> RedisConfig {
    RedisConfig { max_backoff: Duration::from_millis(200), ..RedisConfig::new(redis.url()) }
}

fn member(user: &str) -> Member {
    Member { user_id: user.into(), user_info: serde_json::json!({ "name": user }) }
}

fn room() -> ChannelName {
    ChannelName::new("presence-room").unwrap()
}

#[derive(Debug)]
enum Event {
    Reaped(Reaped),
    Reasserted(Gap),
}

/// A node as the lease keeper sees it: the truth about its own connections, re-asserted
/// on demand, and every report it gets.
struct TestNode {
    id: u32,
    presence: Arc<RedisPresence>,
    truth: Mutex<Vec<(ChannelName, SocketId, Option<Member>)>>,
    events: mpsc::UnboundedSender<Event>,
}

impl TestNode {
    async fn start(redis: &RedisServer, id: u32) -> (Arc<Self>, mpsc::UnboundedReceiver<Event>) {
        let (events, received) = mpsc::unbounded_channel();
        let presence = Arc::new(RedisPresence::connect(&config(redis)).await.unwrap());
        (Arc::new(Self { id, presence, truth: Mutex::new(Vec::new()), events }), received)
    }

    fn lease(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.presence.keep_lease(self.id, TTL, self.clone())
    }

    /// The node's count of each channel, as its truth says.
    fn counts(&self) -> Vec<ChannelCount> {
        let mut counts: Vec<ChannelCount> = Vec::new();
        for (channel, _, _) in self.truth.lock().iter() {
            match counts.iter_mut().find(|c| c.channel == *channel) {
                Some(count) => count.count += 1,
                None => {
                    counts.push(ChannelCount { app_id: "app".into(), channel: channel.clone(), count: 1 })
                }
            }
        }
        counts
    }

    async fn join(&self, channel: &ChannelName, conn: u64, member: Option<Member>) {
        let socket = SocketId { node: self.id, conn };
        self.truth.lock().push((channel.clone(), socket, member.clone()));
        self.presence.set_counts(self.id, &self.counts()).await.unwrap();
        if let Some(member) = member {
            self.presence.add_member("app", channel, socket, member, 100).await.unwrap();
        }
    }
}

#[async_trait]
impl LeaseHolder for TestNode {
    fn reaped(&self, reaped: Reaped) {
        let _ = self.events.send(Event::Reaped(reaped));
    }

    fn take_dirty(&self) -> bool {
        false
    }

    async fn reassert(&self, _held: Vec<Held>, gap: Gap) -> Result<()> {
        self.presence.set_counts(self.id, &self.counts()).await?;
        let truth = self.truth.lock().clone();
        for (channel, socket, member) in truth {
            if let Some(member) = member {
                self.presence.add_member("app", &channel, socket, member, usize::MAX).await?;
            }
        }
        let _ = self.events.send(Event::Reasserted(gap));
        Ok(())
    }
}

/// Plants a crashed node `id` holding `user` in the room: its lease expired already.
async fn plant_canary(redis: &RedisServer, id: u32, user: &str) {
    let presence = RedisPresence::connect(&config(redis)).await.unwrap();
    let socket = SocketId { node: id, conn: 1 };
    let count = ChannelCount { app_id: "app".into(), channel: room(), count: 1 };
    presence.set_counts(id, &[count]).await.unwrap();
    presence.add_member("app", &room(), socket, member(user), 100).await.unwrap();
    expire_leases(redis, &[id]).await;
}

/// Makes the leases of `nodes` expired, as after a stall that kept their renewals
/// from arriving in time.
async fn expire_leases(redis: &RedisServer, nodes: &[u32]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let expired = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 - 1;
    let prefix = RedisConfig::new(redis.url()).prefix;
    for node in nodes {
        redis::cmd("ZADD")
            .arg(format!("{prefix}:nodes"))
            .arg(expired)
            .arg(node)
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
    }
}

/// Waits for the reap of `user`; returns the users of every reap reported before it.
async fn reaped_until(events: &mut mpsc::UnboundedReceiver<Event>, user: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, events.recv()).await.expect("no reap in time").unwrap();
        if let Event::Reaped(Reaped { member: Some(m), .. }) = event {
            if &*m.user_id == user {
                return before;
            }
            before.push(m.user_id.to_string());
        }
    }
}

/// Whichever of two nodes reaps the canary `user`: neither reported another reap.
async fn only_the_canary_is_reaped(
    a: &mut mpsc::UnboundedReceiver<Event>,
    b: &mut mpsc::UnboundedReceiver<Event>,
    user: &str,
) {
    let (first, others) = tokio::select! {
        r = reaped_until(a, user) => (r, b),
        r = reaped_until(b, user) => (r, a),
    };
    assert_eq!(first, Vec::<String>::new(), "a live node was reaped");
    while let Ok(event) = others.try_recv() {
        assert!(!matches!(event, Event::Reaped(_)), "a live node was reaped: {event:?}");
    }
}

async fn reasserted(events: &mut mpsc::UnboundedReceiver<Event>, want: Gap) {
    loop {
        let event =
            tokio::time::timeout(WAIT, events.recv()).await.expect("no re-assertion in time").unwrap();
        if matches!(event, Event::Reasserted(gap) if gap == want) {
            return;
        }
    }
}

async fn users(presence: &RedisPresence) -> Vec<String> {
    let mut users: Vec<String> =
        presence.members("app", &room()).await.unwrap().into_iter().map(|m| m.user_id.to_string()).collect();
    users.sort();
    users
}

#[tokio::test]
async fn a_crashed_nodes_members_and_counts_go_when_its_lease_expires() {
    let redis = RedisServer::start();
    let (a, mut events_a) = TestNode::start(&redis, 1).await;
    let (b, mut reaped) = TestNode::start(&redis, 2).await;
    let lease_a = a.lease();
    let _lease_b = b.lease();
    a.join(&room(), 7, Some(member("alice"))).await;
    b.join(&room(), 7, Some(member("bob"))).await;
    // Its lease is in Redis (the first renewal re-asserts an empty share).
    reasserted(&mut events_a, Gap::Expired).await;

    // Node 1 crashes (its lease is no longer renewed): node 2 reaps it.
    lease_a.abort();
    assert_eq!(reaped_until(&mut reaped, "alice").await, Vec::<String>::new());
    let stats = b.presence.channel("app", &room()).await.unwrap();
    assert_eq!((stats.subscription_count, stats.user_count), (1, 1));
    assert_eq!(users(&b.presence).await, ["bob"]);

    // A crashed node with the last subscriber of a channel: reported as emptied.
    let news = ChannelName::new("news").unwrap();
    let (c, mut events_c) = TestNode::start(&redis, 3).await;
    let lease_c = c.lease();
    c.join(&news, 1, None).await;
    reasserted(&mut events_c, Gap::Expired).await;
    lease_c.abort();
    loop {
        let event = tokio::time::timeout(WAIT, reaped.recv()).await.unwrap().unwrap();
        if let Event::Reaped(emptied) = event {
            assert_eq!((emptied.channel, emptied.member), (news, None));
            break;
        }
    }
}

#[tokio::test]
async fn live_nodes_never_reap_each_other_after_redis_stalls_past_the_lease() {
    let redis = RedisServer::start();
    let (a, mut events_a) = TestNode::start(&redis, 1).await;
    let (b, mut events_b) = TestNode::start(&redis, 2).await;
    let (_lease_a, _lease_b) = (a.lease(), b.lease());
    a.join(&room(), 1, Some(member("alice"))).await;
    b.join(&room(), 1, Some(member("bob"))).await;
    plant_canary(&redis, 90, "before").await;
    let _ = tokio::select! {
        r = reaped_until(&mut events_a, "before") => r,
        r = reaped_until(&mut events_b, "before") => r,
    };

    // Redis stalls for three leases: every lease runs out meanwhile (renewals queued
    // in the stalled server may still land when it resumes; they are taken as lost).
    redis.pause();
    tokio::time::sleep(TTL * 3).await;
    redis.resume();
    expire_leases(&redis, &[1, 2]).await;
    plant_canary(&redis, 91, "after").await;
    only_the_canary_is_reaped(&mut events_a, &mut events_b, "after").await;
    assert_eq!(users(&a.presence).await, ["alice", "bob"]);
}

#[tokio::test]
async fn after_redis_restarts_empty_every_node_reasserts_its_share() {
    let mut redis = RedisServer::start();
    let (a, mut events_a) = TestNode::start(&redis, 1).await;
    let (b, mut events_b) = TestNode::start(&redis, 2).await;
    let (_lease_a, _lease_b) = (a.lease(), b.lease());
    let news = ChannelName::new("news").unwrap();
    a.join(&room(), 1, Some(member("alice"))).await;
    a.join(&news, 1, None).await;
    b.join(&room(), 1, Some(member("bob"))).await;
    b.join(&room(), 2, Some(member("bob"))).await;
    // Each has seen the instance's data marker before the restart.
    reasserted(&mut events_a, Gap::Expired).await;
    reasserted(&mut events_b, Gap::Expired).await;

    let port = redis.port;
    redis.stop();
    let redis = RedisServer::start_on(port);
    reasserted(&mut events_a, Gap::Lost).await;
    reasserted(&mut events_b, Gap::Lost).await;
    assert_eq!(users(&a.presence).await, ["alice", "bob"]);
    let stats = b.presence.channel("app", &room()).await.unwrap();
    assert_eq!((stats.subscription_count, stats.user_count), (3, 2));
    assert_eq!(b.presence.channel("app", &news).await.unwrap().subscription_count, 1);

    // Reaping runs again, and took nobody alive.
    plant_canary(&redis, 92, "canary").await;
    only_the_canary_is_reaped(&mut events_a, &mut events_b, "canary").await;
    // The one who leaves last is announced: the counts were rebuilt.
    let on_b = |conn| SocketId { node: 2, conn };
    b.presence.remove_member("app", &room(), on_b(1)).await.unwrap();
    assert_eq!(
        b.presence.remove_member("app", &room(), on_b(2)).await.unwrap(),
        herald_backbone::MemberChange::Changed(member("bob"))
    );
}

#[tokio::test]
async fn a_node_reaped_while_alive_comes_back_whole() {
    let redis = RedisServer::start();
    let (a, mut events_a) = TestNode::start(&redis, 1).await;
    let (b, mut events_b) = TestNode::start(&redis, 2).await;
    let lease_a = a.lease();
    let _lease_b = b.lease();
    a.join(&room(), 1, Some(member("alice"))).await;
    b.join(&room(), 1, Some(member("bob"))).await;
    reasserted(&mut events_a, Gap::Expired).await;

    // Node 1 stops renewing (as behind a partition) and is reaped; then it renews again.
    lease_a.abort();
    assert_eq!(reaped_until(&mut events_b, "alice").await, Vec::<String>::new());
    assert_eq!(users(&b.presence).await, ["bob"]);
    let _lease_a = a.lease();
    reasserted(&mut events_a, Gap::Expired).await;
    assert_eq!(users(&b.presence).await, ["alice", "bob"]);
}
