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
    Broker, ChannelCount, CountChange, Error, Member, MemberChange, Message, MessageHandler, PresenceManager,
    Topic,
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
