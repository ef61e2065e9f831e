//! The backbone contracts as executable scenarios, run against every implementation
//! (memory here; Redis single, sharded and cluster in `herald-redis`). A scenario that
//! waits does so for a condition with a deadline, never for a fixed time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use herald_core::{ChannelName, Publication, PublicationData, SocketId};
use herald_test_util::{Deadline, WAIT, wait_until};
use parking_lot::Mutex;
use serde_json::json;

use crate::{
    Broker, ChannelCount, CountChange, Direction, Error, HistoryQuery, Member, MemberChange, Message,
    MessageHandler, PresenceManager, Retention, Topic,
};

/// A handler that records what it receives.
#[derive(Default)]
pub struct Recorder {
    received: Mutex<Vec<(Topic, Message)>>,
}

impl MessageHandler for Recorder {
    fn handle(&self, topic: &Topic, message: Message) {
        self.received.lock().push((topic.clone(), message));
    }
}

impl Recorder {
    pub fn events(&self, topic: &Topic) -> Vec<String> {
        self.received
            .lock()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, m)| match m {
                Message::Publication(p) => p.event.to_string(),
                Message::TerminateUser { user_id } => format!("terminate:{user_id}"),
                Message::Watchlist { user_id, online } => format!("watch:{user_id}:{online}"),
            })
            .collect()
    }

    /// The offsets of the publications `topic` received, in order (0: none given).
    pub fn offsets(&self, topic: &Topic) -> Vec<u64> {
        self.received
            .lock()
            .iter()
            .filter(|(t, _)| t == topic)
            .filter_map(|(_, m)| match m {
                Message::Publication(p) => Some(p.position.as_ref().map_or(0, |at| at.offset)),
                Message::TerminateUser { .. } | Message::Watchlist { .. } => None,
            })
            .collect()
    }

    /// Waits until `topic` has received `n` messages; panics after [`WAIT`].
    pub async fn wait_for(&self, topic: &Topic, n: usize) -> Vec<String> {
        wait_until(WAIT, || {
            let events = self.events(topic);
            if events.len() >= n {
                Ok(events)
            } else {
                Err(format!("{n} messages on {topic:?}, have {events:?}"))
            }
        })
        .await
    }
}

pub fn publication(app: &str, channel: &str, event: &str) -> Message {
    Message::Publication(Publication {
        app_id: app.into(),
        channel: ChannelName::new(channel).unwrap(),
        event: event.into(),
        data: PublicationData::from_string("{}"),
        user_id: None,
        exclude: None,
        // Every broker carries these as they are.
        published_us: 1_700_000_000_123_456,
        trace: herald_core::TraceContext::from_headers(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("vendor=value"),
        ),
        position: None,
    })
}

fn topic(app: &str, channel: &str) -> Topic {
    Topic::channel(&Arc::from(app), &ChannelName::new(channel).unwrap())
}

/// Interest, ordering, unsubscribe and idempotent subscribe. `new_cluster` builds two
/// nodes of one cluster, delivering to the given handlers.
pub async fn broker_scenarios<B: Broker, F: Future<Output = (B, B)>>(
    new_cluster: impl FnOnce(Arc<dyn MessageHandler>, Arc<dyn MessageHandler>) -> F,
) {
    let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let (a, b) = new_cluster(ra.clone(), rb.clone()).await;
    let news = topic("app1", "news");
    let other_app = topic("app2", "news");
    let sentinel = topic("app1", "sentinel");

    // Interest: only the subscribed node receives; subscribing twice delivers once.
    a.subscribe(&news).await.unwrap();
    a.subscribe(&news).await.unwrap();
    a.subscribe(&sentinel).await.unwrap();
    b.publish(&news, publication("app1", "news", "e0")).await.unwrap();
    b.publish(&other_app, publication("app2", "news", "wrong-app")).await.unwrap();
    b.publish(&sentinel, publication("app1", "sentinel", "s0")).await.unwrap();
    ra.wait_for(&sentinel, 1).await;
    assert_eq!(ra.events(&news), ["e0"]);
    // A publication arrives whole: data, timestamp and trace context as sent.
    let first = ra.received.lock().iter().find(|(t, _)| *t == news).map(|(_, m)| m.clone());
    assert_eq!(first, Some(publication("app1", "news", "e0")));
    assert!(ra.events(&other_app).is_empty(), "topics are per app");
    assert!(rb.events(&news).is_empty(), "b never subscribed");

    // Order per topic, from one publisher, also when both nodes listen.
    b.subscribe(&news).await.unwrap();
    let expected: Vec<String> = (1..=100).map(|i| format!("e{i}")).collect();
    for e in &expected {
        a.publish(&news, publication("app1", "news", e)).await.unwrap();
    }
    let got_a = ra.wait_for(&news, 101).await;
    assert_eq!(got_a[1..], expected[..]);
    assert_eq!(rb.wait_for(&news, 100).await, expected);

    // Unsubscribe stops delivery (checked behind a sentinel on a still-subscribed topic).
    a.unsubscribe(&news).await.unwrap();
    b.publish(&news, publication("app1", "news", "after")).await.unwrap();
    b.publish(&sentinel, publication("app1", "sentinel", "s1")).await.unwrap();
    ra.wait_for(&sentinel, 2).await;
    rb.wait_for(&news, 101).await;
    assert_eq!(ra.events(&news).len(), 101, "a unsubscribed");

    // Control messages travel like publications.
    let user = Topic::user(&Arc::from("app1"), "u1");
    b.subscribe(&user).await.unwrap();
    a.publish(&user, Message::TerminateUser { user_id: "u1".into() }).await.unwrap();
    assert_eq!(rb.wait_for(&user, 1).await, ["terminate:u1"]);
    let watchers = Topic::watchers(&Arc::from("app1"), "u2");
    b.subscribe(&watchers).await.unwrap();
    a.publish(&watchers, Message::Watchlist { user_id: "u2".into(), online: true }).await.unwrap();
    a.publish(&watchers, Message::Watchlist { user_id: "u2".into(), online: false }).await.unwrap();
    assert_eq!(rb.wait_for(&watchers, 2).await, ["watch:u2:true", "watch:u2:false"]);

    // A batch keeps its order per topic and reaches only interested nodes.
    let sports = topic("app1", "sports");
    a.subscribe(&sports).await.unwrap();
    let batch: Vec<(Topic, Message)> = (0..10)
        .flat_map(|i| {
            [
                (news.clone(), publication("app1", "news", &format!("b{i}"))),
                (sports.clone(), publication("app1", "sports", &format!("b{i}"))),
            ]
        })
        .collect();
    a.publish_batch(batch).await.unwrap();
    let in_order: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    assert_eq!(ra.wait_for(&sports, 10).await, in_order);
    assert_eq!(rb.wait_for(&news, 111).await[101..], in_order[..]);
    assert!(rb.events(&sports).is_empty(), "b never subscribed to sports");
    assert_eq!(ra.events(&news).len(), 101, "a unsubscribed from news");
}

fn kept(topic: &Topic, event: &str) -> Publication {
    match publication(&topic.app_id, &topic.name, event) {
        Message::Publication(p) => p,
        Message::TerminateUser { .. } | Message::Watchlist { .. } => unreachable!(),
    }
}

/// Publishes `events` to `topic`, kept, one call each; returns their offsets.
async fn publish_kept<B: Broker>(
    broker: &B,
    topic: &Topic,
    retention: Retention,
    events: &[String],
) -> Vec<u64> {
    let mut offsets = Vec::new();
    for event in events {
        let positions =
            broker.publish_kept(vec![(topic.clone(), kept(topic, event), retention)]).await.unwrap();
        offsets.push(positions[0].offset);
    }
    offsets
}

fn names(n: std::ops::RangeInclusive<usize>, prefix: &str) -> Vec<String> {
    n.map(|i| format!("{prefix}{i}")).collect()
}

/// Channel history: offsets within an epoch, what is kept (size, age), reads in both
/// directions, offset order under concurrent publishers, the merge guarantee, and a new
/// epoch when the store lost its history (`forget` makes it lose everything).
pub async fn history_scenarios<B: Broker, F: Future<Output = (B, B)>, G: Future<Output = ()>>(
    new_cluster: impl FnOnce(Arc<dyn MessageHandler>, Arc<dyn MessageHandler>) -> F,
    forget: impl FnOnce() -> G,
) {
    let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let (a, b) = new_cluster(ra.clone(), rb.clone()).await;
    let keep = Retention { size: 5, ttl: Duration::from_secs(600), meta_ttl: Duration::from_secs(3600) };
    let chat = topic("app1", "chat");

    // A channel nobody published to yet has an epoch as soon as it is read, and keeps it.
    let fresh = a.history(&chat, keep, HistoryQuery::position()).await.unwrap();
    assert_eq!((fresh.position.offset, fresh.first), (0, 1));
    assert!(fresh.publications.is_empty());
    let epoch = fresh.position.epoch.clone();
    assert!(!epoch.is_empty());

    // Offsets 1, 2, 3 in that epoch, delivered with their positions, from either node.
    a.subscribe(&chat).await.unwrap();
    assert_eq!(publish_kept(&b, &chat, keep, &names(1..=3, "h")).await, [1, 2, 3]);
    assert_eq!(ra.wait_for(&chat, 3).await, names(1..=3, "h"));
    assert_eq!(ra.offsets(&chat), [1, 2, 3]);
    let delivered = ra.received.lock().iter().find_map(|(_, m)| match m {
        Message::Publication(p) => p.position.clone(),
        Message::TerminateUser { .. } | Message::Watchlist { .. } => None,
    });
    assert_eq!(delivered.map(|p| p.epoch), Some(epoch.clone()));

    // A read after 1: 2 and 3, whole, with their positions; 1 is still kept.
    let page = b.history(&chat, keep, HistoryQuery::after(1, 100)).await.unwrap();
    assert_eq!((page.position.offset, page.position.epoch.clone(), page.first), (3, epoch.clone(), 1));
    let read: Vec<(String, u64)> = page
        .publications
        .iter()
        .map(|p| (p.event.to_string(), p.position.as_ref().unwrap().offset))
        .collect();
    assert_eq!(read, [("h2".to_owned(), 2), ("h3".to_owned(), 3)]);
    let mut expected = kept(&chat, "h2");
    expected.position = page.publications[0].position.clone();
    assert_eq!(page.publications[0], expected, "kept as published");

    // Only the last `size` are kept.
    assert_eq!(publish_kept(&a, &chat, keep, &names(4..=10, "h")).await, (4..=10).collect::<Vec<_>>());
    let page = a.history(&chat, keep, HistoryQuery::after(0, 100)).await.unwrap();
    assert_eq!(page.first, 6);
    assert_eq!(page.publications.iter().map(|p| p.event.to_string()).collect::<Vec<_>>(), names(6..=10, "h"));
    let at = |offset| herald_core::StreamPosition::new(offset, epoch.clone());
    assert!(page.recovers(&at(5)) && page.recovers(&at(10)));
    assert!(!page.recovers(&at(4)), "6 is the oldest kept");

    // Limits from either end.
    let query = |since, limit, direction| HistoryQuery { since, limit, direction };
    let offsets = |page: crate::HistoryPage| {
        page.publications.iter().map(|p| p.position.as_ref().unwrap().offset).collect::<Vec<_>>()
    };
    let newest = a.history(&chat, keep, query(None, 2, Direction::Backward)).await.unwrap();
    assert_eq!(offsets(newest), [10, 9]);
    let oldest = a.history(&chat, keep, query(None, 2, Direction::Forward)).await.unwrap();
    assert_eq!(offsets(oldest), [6, 7]);
    let after = a.history(&chat, keep, query(Some(8), 1, Direction::Backward)).await.unwrap();
    assert_eq!(offsets(after), [10]);
    let none = a.history(&chat, keep, query(Some(10), 5, Direction::Forward)).await.unwrap();
    assert!(none.publications.is_empty() && none.recovers(&at(10)));

    // Channels and apps count on their own; a batch keeps its order.
    let other = topic("app2", "chat");
    let batch = vec![
        (other.clone(), kept(&other, "o1"), keep),
        (chat.clone(), kept(&chat, "h11"), keep),
        (other.clone(), kept(&other, "o2"), keep),
    ];
    let positions: Vec<u64> = b.publish_kept(batch).await.unwrap().iter().map(|p| p.offset).collect();
    assert_eq!(positions, [1, 11, 2]);

    // Two publishers at once: every subscriber gets the channel in offset order, each
    // offset once.
    b.subscribe(&chat).await.unwrap();
    let (from_a, from_b) = (names(1..=150, "a"), names(1..=150, "b"));
    let (offsets_a, offsets_b) =
        tokio::join!(publish_kept(&a, &chat, keep, &from_a), publish_kept(&b, &chat, keep, &from_b));
    let mut all: Vec<u64> = offsets_a.into_iter().chain(offsets_b).collect();
    all.sort_unstable();
    assert_eq!(all, (12..=311).collect::<Vec<_>>(), "each offset given once");
    ra.wait_for(&chat, 311).await;
    rb.wait_for(&chat, 300).await;
    assert_eq!(ra.offsets(&chat), (1..=311).collect::<Vec<_>>(), "a: in offset order");
    assert_eq!(rb.offsets(&chat), (12..=311).collect::<Vec<_>>(), "b: in offset order");

    // The merge guarantee: a node that subscribes while publications flow, then reads,
    // has every offset: up to the read's position from the read, the rest delivered.
    let room = topic("app1", "room");
    let wide = Retention { size: 10_000, ..keep };
    let since = b.history(&room, wide, HistoryQuery::position()).await.unwrap().position.offset;
    let publisher = async {
        publish_kept(&a, &room, wide, &names(1..=300, "r")).await;
    };
    let recovery = async {
        // Let some go by before this node subscribes.
        wait_until(WAIT, || {
            if ra.offsets(&room).len() >= 20 { Ok(()) } else { Err("20 publications to room".to_owned()) }
        })
        .await;
        b.subscribe(&room).await.unwrap();
        b.history(&room, wide, HistoryQuery::after(since, 10_000)).await.unwrap()
    };
    a.subscribe(&room).await.unwrap();
    let ((), page) = tokio::join!(publisher, recovery);
    let read: Vec<u64> = page.publications.iter().map(|p| p.position.as_ref().unwrap().offset).collect();
    assert_eq!(read, (since + 1..=page.position.offset).collect::<Vec<_>>(), "the read has no gap");
    // Waited for by the last offset, not a count: publications at or below the read's
    // position may arrive too (published before the read, still on their way).
    // (Nothing to wait for when the read already had all 300.)
    wait_until(WAIT, || {
        let offsets = rb.offsets(&room);
        if page.position.offset == 300 || offsets.contains(&300) {
            Ok(())
        } else {
            Err(format!("offset 300 at b, have {offsets:?}"))
        }
    })
    .await;
    let live: Vec<u64> = rb.offsets(&room).into_iter().filter(|o| *o > page.position.offset).collect();
    assert_eq!(live, (page.position.offset + 1..=300).collect::<Vec<_>>(), "the rest delivered");

    // Publications older than `ttl` are no longer kept; the position stays.
    let brief = Retention { ttl: Duration::from_secs(1), ..keep };
    let blink = topic("app1", "blink");
    publish_kept(&a, &blink, brief, &names(1..=2, "x")).await;
    herald_test_util::eventually_async("publications older than the ttl to be dropped", || async {
        let page = a.history(&blink, brief, HistoryQuery::after(0, 10)).await.unwrap();
        page.publications.is_empty() && page.first == 3 && page.position.offset == 2
    })
    .await;
    let page = a.history(&blink, brief, HistoryQuery::position()).await.unwrap();
    assert!(page.recovers(&herald_core::StreamPosition::new(2, page.position.epoch.clone())));

    // A store that lost everything starts a new epoch.
    forget().await;
    let lost = a.history(&chat, keep, HistoryQuery::position()).await.unwrap();
    assert_eq!(lost.position.offset, 0);
    assert_ne!(lost.position.epoch, epoch, "a new epoch");
    assert!(!lost.recovers(&at(311)));
}

fn sid(conn: u64) -> SocketId {
    SocketId { node: 1, conn }
}

fn member(user: &str) -> Member {
    Member { user_id: user.into(), user_info: json!({ "name": user }) }
}

fn count(app: &str, channel: &ChannelName, count: u64) -> ChannelCount {
    ChannelCount { app_id: app.into(), channel: channel.clone(), count }
}

fn change(before: u64, after: u64) -> CountChange {
    CountChange { before, after }
}

/// Sets one count of `node`.
async fn set<P: PresenceManager>(p: &P, node: u32, app: &str, channel: &ChannelName, n: u64) -> CountChange {
    p.set_counts(node, &[count(app, channel, n)]).await.unwrap()[0]
}

/// Occupancy counts, once-per-user membership, the member limit and listing.
pub async fn presence_scenarios<P: PresenceManager>(p: &P) {
    let room = ChannelName::new("presence-room").unwrap();
    let news = ChannelName::new("news").unwrap();

    // Counts are per node, absolute, and add up over nodes.
    assert_eq!(set(p, 1, "a1", &news, 1).await, change(0, 1));
    assert_eq!(set(p, 1, "a1", &news, 1).await, change(1, 1), "setting again is as once");
    assert_eq!(set(p, 2, "a1", &news, 2).await, change(1, 3), "nodes add up");
    assert_eq!(set(p, 1, "a2", &news, 1).await, change(0, 1), "apps are separate");
    assert_eq!(p.channel("a1", &news).await.unwrap().subscription_count, 3);
    assert_eq!(set(p, 2, "a1", &news, 1).await, change(3, 2), "a node's count goes down");

    // One call sets several channels, answered in order.
    let (b1, b2) = (ChannelName::new("batch-1").unwrap(), ChannelName::new("batch-2").unwrap());
    let batch = [count("a1", &b1, 4), count("a1", &b2, 0), count("a1", &news, 2)];
    assert_eq!(p.set_counts(3, &batch).await.unwrap(), [change(0, 4), change(0, 0), change(2, 4)]);
    let batch = [count("a1", &b1, 0), count("a1", &news, 0)];
    assert_eq!(p.set_counts(3, &batch).await.unwrap(), [change(4, 0), change(4, 2)]);
    assert_eq!(p.channel("a1", &b1).await.unwrap().subscription_count, 0);
    // A batch larger than an implementation may send at once (Redis: 256 a script).
    let bulk: Vec<ChannelName> = (0..600).map(|i| ChannelName::new(&format!("bulk-{i}")).unwrap()).collect();
    let counts: Vec<ChannelCount> = bulk.iter().map(|c| count("a1", c, 2)).collect();
    assert_eq!(p.set_counts(4, &counts).await.unwrap(), vec![change(0, 2); 600]);
    assert_eq!(p.channels("a1", "bulk-").await.unwrap().len(), 600);
    let counts: Vec<ChannelCount> = bulk.iter().map(|c| count("a1", c, 0)).collect();
    assert_eq!(p.set_counts(4, &counts).await.unwrap(), vec![change(2, 0); 600]);
    assert!(p.channels("a1", "bulk-").await.unwrap().is_empty());

    // Alice with two connections is one member; Bob joins; Carol is over the limit.
    set(p, 1, "a1", &room, 3).await;
    for (conn, user) in [(10, "alice"), (11, "alice"), (12, "bob")] {
        let change = p.add_member("a1", &room, sid(conn), member(user), 2).await.unwrap();
        let expect_new = conn != 11;
        assert_eq!(change == MemberChange::Changed(member(user)), expect_new, "{conn} {user}");
    }
    let full = p.add_member("a1", &room, sid(13), member("carol"), 2).await;
    assert!(matches!(full, Err(Error::PresenceFull { limit: 2 })), "{full:?}");
    let again = p.add_member("a1", &room, sid(14), member("bob"), 2).await.unwrap();
    assert_eq!(again, MemberChange::Unchanged, "another connection of a member is accepted");
    p.remove_member("a1", &room, sid(14)).await.unwrap();

    let mut users: Vec<_> = p.members("a1", &room).await.unwrap().into_iter().map(|m| m.user_id).collect();
    users.sort();
    assert_eq!(users, [Arc::from("alice"), Arc::from("bob")]);
    let asked: Vec<Arc<str>> = ["bob", "carol", "alice"].map(Arc::from).to_vec();
    assert_eq!(p.are_members("a1", &room, &asked).await.unwrap(), [true, false, true]);
    assert!(p.are_members("a1", &room, &[]).await.unwrap().is_empty());
    let stats = p.channel("a1", &room).await.unwrap();
    assert_eq!((stats.subscription_count, stats.user_count), (3, 2));

    // Alice leaves only with her last connection.
    assert_eq!(p.remove_member("a1", &room, sid(10)).await.unwrap(), MemberChange::Unchanged);
    assert_eq!(p.remove_member("a1", &room, sid(11)).await.unwrap(), MemberChange::Changed(member("alice")));
    assert_eq!(p.remove_member("a1", &room, sid(11)).await.unwrap(), MemberChange::Unchanged, "idempotent");

    // Listing by prefix shows occupied channels only (none at all: an empty list).
    assert!(p.channels("a1", "no-such-prefix-").await.unwrap().is_empty());
    assert!(p.channels("no-such-app", "").await.unwrap().is_empty());
    let listed: Vec<_> =
        p.channels("a1", "").await.unwrap().into_iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(listed, ["news", "presence-room"]);
    let presence_only = p.channels("a1", "presence-").await.unwrap();
    assert_eq!(presence_only.len(), 1);
    assert_eq!(presence_only[0].1.user_count, 1);
    for conn in [10, 11, 12] {
        p.remove_member("a1", &room, sid(conn)).await.unwrap();
    }
    assert_eq!(set(p, 1, "a1", &room, 0).await, change(3, 0));
    assert_eq!(set(p, 1, "a1", &news, 0).await, change(2, 1));
    assert_eq!(set(p, 9, "a1", &news, 0).await, change(1, 1), "no count to clear: a no-op");
    let listed: Vec<_> =
        p.channels("a1", "").await.unwrap().into_iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(listed, ["news"]);

    lifecycle_scenarios(p).await;
}

/// [`PresenceManager::announce`]: occupied/vacated and member added/removed alternate,
/// and a quick reconnect announces nothing.
async fn lifecycle_scenarios<P: PresenceManager>(p: &P) {
    use crate::Lifecycle::{MemberAdded, MemberRemoved, Occupied, Vacated};
    let lobby = ChannelName::new("presence-lobby").unwrap();
    assert!(!p.announce("a1", &lobby, Vacated).await.unwrap(), "never occupied: nothing to vacate");
    set(p, 1, "a1", &lobby, 1).await;
    assert!(p.announce("a1", &lobby, Occupied).await.unwrap());
    set(p, 1, "a1", &lobby, 2).await;
    assert!(!p.announce("a1", &lobby, Occupied).await.unwrap(), "announced once");
    p.add_member("a1", &lobby, sid(20), member("dave"), 10).await.unwrap();
    assert!(p.announce("a1", &lobby, MemberAdded("dave")).await.unwrap());
    assert!(!p.announce("a1", &lobby, MemberAdded("dave")).await.unwrap());

    // Dave's connection drops and comes back (as another socket) before the debounce:
    // the removal check finds him present and nothing is announced.
    p.remove_member("a1", &lobby, sid(20)).await.unwrap();
    set(p, 1, "a1", &lobby, 1).await;
    set(p, 1, "a1", &lobby, 2).await;
    p.add_member("a1", &lobby, sid(22), member("dave"), 10).await.unwrap();
    assert!(!p.announce("a1", &lobby, MemberAdded("dave")).await.unwrap(), "reconnect: no member_added");
    assert!(!p.announce("a1", &lobby, MemberRemoved("dave")).await.unwrap(), "still present");

    // Now everyone leaves for good.
    p.remove_member("a1", &lobby, sid(22)).await.unwrap();
    set(p, 1, "a1", &lobby, 0).await;
    assert!(p.announce("a1", &lobby, MemberRemoved("dave")).await.unwrap());
    assert!(!p.announce("a1", &lobby, MemberRemoved("dave")).await.unwrap(), "announced once");
    assert!(p.announce("a1", &lobby, Vacated).await.unwrap());
    assert!(!p.announce("a1", &lobby, Vacated).await.unwrap(), "announced once");
    set(p, 2, "a1", &lobby, 1).await;
    assert!(!p.announce("a1", &lobby, Vacated).await.unwrap(), "occupied again: not vacated");
    assert!(p.announce("a1", &lobby, Occupied).await.unwrap(), "occupied again after a vacate");
    set(p, 2, "a1", &lobby, 0).await;
    assert!(p.announce("a1", &lobby, Vacated).await.unwrap());
    let listed: Vec<_> =
        p.channels("a1", "presence-lobby").await.unwrap().into_iter().map(|(c, _)| c.to_string()).collect();
    assert!(listed.is_empty(), "{listed:?}");
}

/// Reads from `consumer` until `n` records arrived; panics after 20 s (a Kafka group
/// join takes a few seconds).
pub async fn poll_n(consumer: &mut dyn crate::LogConsumer, n: usize) -> Vec<crate::LogRecord> {
    let mut out = Vec::new();
    let deadline = Deadline::after(Duration::from_secs(20));
    while out.len() < n {
        let records =
            deadline.run(consumer.poll(n - out.len()), || format!("{n} records, have {}", out.len())).await;
        out.extend(records.unwrap());
    }
    out
}

/// Whether `future` is still waiting after being polled once (its output, if it
/// completed, is dropped: callers assert on the answer).
async fn is_pending<F: Future>(future: Pin<&mut F>) -> bool {
    let mut future = Some(future);
    std::future::poll_fn(|cx| match future.take() {
        Some(mut future) => Poll::Ready(future.as_mut().poll(cx).is_pending()),
        None => Poll::Ready(false),
    })
    .await
}

/// `future`'s output if its first poll completes it; else `None` (and it is dropped).
async fn one_step<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

fn append(key: &str, value: String) -> crate::Append {
    crate::Append { key: bytes::Bytes::copy_from_slice(key.as_bytes()), value: value.into() }
}

fn position_after(record: &crate::LogRecord) -> crate::Position {
    crate::Position {
        topic: record.topic.clone(),
        partition: record.partition,
        next_offset: record.offset + 1,
    }
}

/// The [`crate::EventLog`] contract. `topic_prefix` keeps runs on a shared broker apart.
pub async fn event_log_scenarios(log: &dyn crate::EventLog, topic_prefix: &str) {
    let topic = format!("{topic_prefix}events");
    log.ensure_topics(&[&topic], 3).await.unwrap();
    // Creating again leaves the topic (and its records) alone.
    log.ensure_topics(&[&topic], 3).await.unwrap();

    // A second group, joined before anything is committed (the memory log drops
    // what every group has committed).
    let mut other = log.consume("group-b", &topic).await.unwrap();

    // Ordered per key, whatever the partitioning.
    let mut records = Vec::new();
    for i in 0..30 {
        records.push(append(&format!("app/channel-{}", i % 3), format!("{}:{i}", i % 3)));
    }
    log.append(&topic, records).await.unwrap();
    let mut consumer = log.consume("group-a", &topic).await.unwrap();
    let read = poll_n(consumer.as_mut(), 30).await;
    for key in 0..3 {
        let values: Vec<String> = read
            .iter()
            .filter(|r| r.key == format!("app/channel-{key}").as_bytes())
            .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..30).filter(|i| i % 3 == key).map(|i| format!("{key}:{i}")).collect();
        assert_eq!(values, expected, "records of one key come in append order");
        let partitions: std::collections::HashSet<i32> = read
            .iter()
            .filter(|r| r.key == format!("app/channel-{key}").as_bytes())
            .map(|r| r.partition)
            .collect();
        assert_eq!(partitions.len(), 1, "one key, one partition");
    }

    // Commit the first half of every partition; a new member of the group starts
    // there, so what was not committed is read again and nothing is skipped.
    let mut committed = Vec::new();
    let mut uncommitted = std::collections::HashSet::new();
    let mut by_partition: std::collections::BTreeMap<i32, Vec<&crate::LogRecord>> = Default::default();
    for r in &read {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for records in by_partition.values() {
        let half = records.len() / 2;
        if half > 0 {
            committed.push(position_after(records[half - 1]));
        }
        for r in &records[half..] {
            uncommitted.insert(r.value.clone());
        }
    }
    consumer.commit(&committed).await.unwrap();
    drop(consumer);
    let mut again = log.consume("group-a", &topic).await.unwrap();
    let reread = poll_n(again.as_mut(), uncommitted.len()).await;
    let reread: std::collections::HashSet<_> = reread.into_iter().map(|r| r.value).collect();
    assert_eq!(reread, uncommitted, "a new member resumes at the committed positions");
    let last: Vec<crate::Position> =
        by_partition.values().map(|rs| position_after(rs[rs.len() - 1])).collect();
    again.commit(&last).await.unwrap();

    // Another group reads everything, independently.
    assert_eq!(poll_n(other.as_mut(), 30).await.len(), 30);

    // Records appended while a member waits wake it up. The poll is seen waiting (its
    // first poll is `Pending`: nothing to read) before the append, so only a wake-up
    // by the append can complete it.
    let late = {
        let mut waiting = std::pin::pin!(poll_n(again.as_mut(), 1));
        assert!(is_pending(waiting.as_mut()).await, "a poll with nothing to read waits");
        log.append(&topic, vec![append("app/late", "late".into())]).await.unwrap();
        waiting.await
    };
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].value, "late".as_bytes());
    again.commit(&[position_after(&late[0])]).await.unwrap();

    // A poll dropped before it returned (as a timeout around it does) has taken
    // nothing: each poll here gets one step, and is dropped if that step is not the
    // last. Every record is read all the same.
    let cut: Vec<crate::Append> = (0..20).map(|i| append("app/cut", format!("cut {i}"))).collect();
    log.append(&topic, cut).await.unwrap();
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while read.len() < 20 {
        assert!(Instant::now() < deadline, "records taken by dropped polls: read {read:?}");
        match one_step(again.poll(1000)).await {
            Some(records) => read.extend(records.unwrap()),
            // The next step after a pause: its length is the pace, not a condition.
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let values: Vec<String> = read.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect();
    assert_eq!(values, (0..20).map(|i| format!("cut {i}")).collect::<Vec<_>>(), "all of them, in order");
    again.commit(&[position_after(&read[19])]).await.unwrap();

    // Nothing else is delivered (no record again, none twice). Proven with markers,
    // not a quiet period: one more record per key used above, so every partition that
    // holds a record gets one, and a partition is read in order, so anything still
    // due would be read before its partition's marker.
    let keys = ["app/channel-0", "app/channel-1", "app/channel-2", "app/late"];
    log.append(&topic, keys.iter().map(|key| append(key, format!("marker {key}"))).collect()).await.unwrap();
    let after: Vec<String> = poll_n(again.as_mut(), keys.len())
        .await
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    let mut markers: Vec<String> = keys.iter().map(|key| format!("marker {key}")).collect();
    let mut sorted = after.clone();
    sorted.sort();
    markers.sort();
    assert_eq!(sorted, markers, "only the markers follow what was committed: {after:?}");
}
