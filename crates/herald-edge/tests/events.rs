//! What an edge records in the event log, read back from the in-memory log: one
//! record per publication and client event, lifecycle events decided once and
//! debounced, and the debounced ones flushed at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use herald_backbone::{EventLog, LogConsumer, MemoryEventLog};
use herald_node::{EventsConfig, NodeBuilder};
use herald_proto::v1::{ChannelEvent, ChannelEventType};
use herald_testkit::{Server, app, config as testkit_config};
use prost::Message as _;
use serde_json::json;

async fn recording(debounce_ms: u64) -> (Server, Box<dyn LogConsumer>) {
    let log = MemoryEventLog::new();
    let config = EventsConfig { debounce: Duration::from_millis(debounce_ms), ..EventsConfig::default() };
    log.ensure_topics(&[&config.topic], 2).await.unwrap();
    let consumer = log.consume("test", &config.topic).await.unwrap();
    let record = |node: NodeBuilder| node.record_events(Arc::new(log), config);
    let server = Server::start_with(vec![app("app")], testkit_config(), |b| Arc::new(b), record).await;
    (server, consumer)
}

/// The next `n` events (other than subscription counts), in log order per channel.
async fn next(consumer: &mut dyn LogConsumer, n: usize) -> Vec<ChannelEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let records = tokio::time::timeout(Duration::from_secs(5), consumer.poll(100))
            .await
            .unwrap_or_else(|_| panic!("timed out with {out:?}"))
            .unwrap();
        out.extend(
            records
                .iter()
                .map(|r| ChannelEvent::decode(r.value.as_ref()).unwrap())
                .filter(|e| e.r#type != ChannelEventType::SubscriptionCount as i32),
        );
    }
    out
}

fn kinds(events: &[ChannelEvent]) -> Vec<ChannelEventType> {
    events.iter().map(|e| ChannelEventType::try_from(e.r#type).unwrap()).collect()
}

#[tokio::test]
async fn publications_client_events_and_the_lifecycle_are_recorded() {
    use ChannelEventType::*;
    let (server, mut log) = recording(200).await;
    let app = server.app().clone();
    let mut alice = server.connect().await;
    alice.subscribe_presence(&app, "presence-room", "alice").await;
    let joined = next(log.as_mut(), 2).await;
    assert_eq!(kinds(&joined), [ChannelOccupied, MemberAdded]);
    assert_eq!(joined[1].user_id, "alice");

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

    // Leaving and coming back within the debounce: nothing; leaving for good: both.
    drop(alice);
    let mut again = server.connect().await;
    again.subscribe_presence(&app, "presence-room", "alice").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(again);
    let left = next(log.as_mut(), 2).await;
    assert_eq!(kinds(&left), [MemberRemoved, ChannelVacated], "a reconnect records nothing");
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
    tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await.unwrap().unwrap();
    assert_eq!(kinds(&next(log.as_mut(), 2).await), [MemberRemoved, ChannelVacated]);
    drop(bob);
}
