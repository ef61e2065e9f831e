//! What an edge records in the event log, read back from the in-memory log: one
//! record per publication and client event, lifecycle events decided once and
//! debounced, and the debounced ones flushed at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use herald_backbone::{EventLog, LogConsumer, MemoryEventLog};
use herald_node::{EventsConfig, NodeBuilder};
use herald_proto::v1::{ChannelEvent, ChannelEventType};
use herald_testkit::{Deadline, Server, WAIT, app, config as testkit_config, eventually_async};
use prost::Message as _;
use serde_json::json;

/// A server recording to an in-memory log of one partition: the log is read back in
/// the order the node recorded, across channels too, so a later event can serve as a
/// marker that everything recorded before it has been read.
async fn recording(debounce_ms: u64) -> (Server, Box<dyn LogConsumer>) {
    let log = MemoryEventLog::new();
    let config = EventsConfig { debounce: Duration::from_millis(debounce_ms), ..EventsConfig::default() };
    log.ensure_topics(&[&config.topic], 1).await.unwrap();
    let consumer = log.consume("test", &config.topic).await.unwrap();
    let record = |node: NodeBuilder| node.record_events(Arc::new(log), config);
    let server = Server::start_with(vec![app("app")], testkit_config(), |b| Arc::new(b), record).await;
    (server, consumer)
}

/// The next `n` events (other than subscription counts), in log order; more if more
/// were there to read at once.
async fn next(consumer: &mut dyn LogConsumer, n: usize) -> Vec<ChannelEvent> {
    let mut out = Vec::new();
    let deadline = Deadline::after(WAIT);
    while out.len() < n {
        let records = deadline.run(consumer.poll(100), || format!("{n} events, have {out:?}")).await.unwrap();
        out.extend(
            records
                .iter()
                .map(|r| ChannelEvent::decode(r.value.as_ref()).unwrap())
                .filter(|e| e.r#type != ChannelEventType::SubscriptionCount as i32),
        );
    }
    out
}

/// Events (other than subscription counts) up to and including the first `marker`
/// matches; fails if anything follows it in the same read, which the callers rule out.
async fn until(consumer: &mut dyn LogConsumer, marker: impl Fn(&ChannelEvent) -> bool) -> Vec<ChannelEvent> {
    let mut out = Vec::new();
    while !out.iter().any(&marker) {
        out.extend(next(consumer, 1).await);
    }
    let at = out.iter().position(&marker).unwrap();
    assert_eq!(at, out.len() - 1, "nothing is recorded after the marker: {out:?}");
    out
}

fn kind(event: &ChannelEvent) -> ChannelEventType {
    ChannelEventType::try_from(event.r#type).unwrap()
}

fn kinds(events: &[ChannelEvent]) -> Vec<ChannelEventType> {
    events.iter().map(kind).collect()
}

#[tokio::test]
async fn publications_client_events_and_the_lifecycle_are_recorded() {
    use ChannelEventType::*;
    // The debounce is the one real duration here: alice's reconnect (an API call and
    // a WebSocket handshake) has to fit in it, so it is long enough for a loaded
    // machine. tokio's paused clock can't stand in: with real sockets it jumps to the
    // next timer whenever the runtime waits for a packet, debounce included.
    let (server, mut log) = recording(2_000).await;
    let app = server.app().clone();
    let mut alice = server.connect().await;
    alice.subscribe_presence(&app, "presence-room", "alice").await;
    let joined = next(log.as_mut(), 2).await;
    assert_eq!(kinds(&joined), [ChannelOccupied, MemberAdded]);
    assert_eq!(joined[1].user_id, "alice");
    // Bob stays until his leave marks the end of alice's reconnect, below.
    let mut bob = server.connect().await;
    bob.subscribe_presence(&app, "presence-room", "bob").await;
    let joined = next(log.as_mut(), 1).await;
    assert_eq!((kinds(&joined), joined[0].user_id.as_str()), (vec![MemberAdded], "bob"));

    let (status, _) = server.trigger(&["presence-room"], "shipped", r#"{"id":1}"#).await;
    assert_eq!(status, 200);
    alice.send(json!({ "event": "client-typing", "channel": "presence-room", "data": { "on": true } })).await;
    let sent = next(log.as_mut(), 2).await;
    assert_eq!(kinds(&sent), [Publication, ClientEvent]);
    assert_eq!((sent[0].event.as_str(), sent[0].data.as_str()), ("shipped", r#"{"id":1}"#));
    assert_eq!((sent[1].event.as_str(), sent[1].user_id.as_str()), ("client-typing", "alice"));
    assert_eq!(sent[1].data, r#"{"on":true}"#);
    assert!(
        sent.iter().all(|e| e.app_id == app.id && e.channel == "presence-room" && e.id.starts_with("evt_"))
    );

    // Leaving and coming back within the debounce records nothing. Alice's leave is
    // seen by the cluster (she is gone from the member list) before she comes back.
    drop(alice);
    let users = format!("/apps/{}/channels/presence-room/users", app.id);
    eventually_async("alice's leave to be processed", || async {
        server.api("GET", &users, &[], None).await.1 == json!({ "users": [{ "id": "bob" }] })
    })
    .await;
    let mut again = server.connect().await;
    again.subscribe_presence(&app, "presence-room", "alice").await;
    // The marker, instead of sleeping past alice's debounce: bob's leave is debounced
    // after hers, and the node decides due leaves in deadline order (one channel's
    // in one task, in order), so by the time his member_removed is in the log hers
    // has been decided, while she was back: nothing of alice's may come before it.
    drop(bob);
    let marked = until(log.as_mut(), |e| kind(e) == MemberRemoved).await;
    assert_eq!(
        marked.iter().map(|e| (kind(e), e.user_id.as_str())).collect::<Vec<_>>(),
        [(MemberRemoved, "bob")],
        "a reconnect within the debounce records nothing"
    );

    // Leaving for good: both, alice's removal first.
    drop(again);
    let left = until(log.as_mut(), |e| kind(e) == ChannelVacated).await;
    assert_eq!(kinds(&left), [MemberRemoved, ChannelVacated]);
    assert_eq!(left[0].user_id, "alice");
}

#[tokio::test]
async fn debounced_announcements_are_recorded_at_shutdown() {
    use ChannelEventType::*;
    let (mut server, mut log) = recording(60_000).await;
    let app = server.app().clone();
    let mut bob = server.connect().await;
    bob.subscribe_presence(&app, "presence-lobby", "bob").await;
    assert_eq!(kinds(&next(log.as_mut(), 2).await), [ChannelOccupied, MemberAdded]);
    // A minute of debounce, but the process is going away: decided now.
    Deadline::after(Duration::from_secs(60)).run(server.shutdown(), || "the shutdown".into()).await.unwrap();
    assert_eq!(kinds(&next(log.as_mut(), 2).await), [MemberRemoved, ChannelVacated]);
    drop(bob);
}

#[tokio::test]
async fn a_crowd_missing_a_cache_channel_records_one_cache_miss() {
    use ChannelEventType::*;
    let (server, mut log) = recording(100).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = server.connect().await;
        client.subscribe("cache-price").await;
        assert_eq!(client.recv().await["event"], "pusher:cache_miss", "each client is told");
        clients.push(client);
    }
    // A publication after them marks the end of what they recorded.
    server.trigger(&["cache-price"], "price", "42").await;
    let events = until(log.as_mut(), |e| kind(e) == Publication).await;
    // channel_occupied comes with the node's next count batch: before or after.
    let misses: Vec<&ChannelEvent> = events.iter().filter(|e| kind(e) == CacheMiss).collect();
    assert_eq!(misses.len(), 1, "one cache_miss: {events:?}");
    assert_eq!(misses[0].channel, "cache-price");
    assert_eq!(events.len(), 3, "occupied, cache_miss, the publication: {events:?}");
}
