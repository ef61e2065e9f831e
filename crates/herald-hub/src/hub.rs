//! The node's registry of local subscriptions, and the fan-out of broker messages.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use herald_backbone::{Message, MessageHandler, Topic};
use herald_core::{ErrorCode, sharded::Sharded};
use herald_telemetry::Metric;

use crate::{Close, Outbox, Push, frame};

/// A connection's number on this node (the second half of its socket id).
pub type ConnId = u64;

/// Local subscribers of one topic. A `Vec` to iterate fast on fan-out, with an index
/// for O(1) removal.
#[derive(Default)]
struct Subscribers {
    list: Vec<(ConnId, Arc<Outbox>)>,
    index: HashMap<ConnId, usize>,
}

impl Subscribers {
    fn insert(&mut self, conn: ConnId, outbox: Arc<Outbox>) -> bool {
        if self.index.contains_key(&conn) {
            return false;
        }
        self.index.insert(conn, self.list.len());
        self.list.push((conn, outbox));
        true
    }

    fn remove(&mut self, conn: ConnId) -> bool {
        let Some(at) = self.index.remove(&conn) else {
            return false;
        };
        self.list.swap_remove(at);
        if let Some((moved, _)) = self.list.get(at) {
            self.index.insert(*moved, at);
        }
        true
    }
}

/// Which local sessions listen to which topics: channel subscriptions, and the
/// per-user control topics of signed-in connections. Sharded by topic, so
/// subscriptions to unrelated channels never contend.
pub struct Hub {
    node: u32,
    topics: Sharded<Topic, Subscribers>,
}

impl Hub {
    /// `node` is this node's socket id prefix: exclusions name sockets of any node,
    /// and only this node's ones can be local.
    pub fn new(node: u32) -> Self {
        Self { node, topics: Sharded::new(256) }
    }

    /// Adds a local subscriber. Returns true when it is the topic's first on this node
    /// (the node then needs the broker topic; `Node` reconciles that interest).
    pub fn subscribe(&self, topic: &Topic, conn: ConnId, outbox: Arc<Outbox>) -> bool {
        let mut shard = self.topics.shard(topic);
        let first = !shard.contains_key(topic);
        let inserted = shard.entry(topic.clone()).or_default().insert(conn, outbox);
        if first {
            metrics::gauge!(Metric::LocalChannels.name()).increment(1);
        }
        first && inserted
    }

    /// Removes a local subscriber. Returns true when it was the topic's last on this
    /// node, so the caller unsubscribes the node on the broker.
    pub fn unsubscribe(&self, topic: &Topic, conn: ConnId) -> bool {
        let mut shard = self.topics.shard(topic);
        let Some(subscribers) = shard.get_mut(topic) else {
            return false;
        };
        if !subscribers.remove(conn) || !subscribers.list.is_empty() {
            return false;
        }
        shard.remove(topic);
        metrics::gauge!(Metric::LocalChannels.name()).decrement(1);
        true
    }

    /// Whether a topic has local subscribers (decides broker interest).
    pub fn has_subscribers(&self, topic: &Topic) -> bool {
        self.topics.shard(topic).contains_key(topic)
    }

    /// Hands one already-encoded frame to every local subscriber of `topic` except
    /// `exclude`. Returns the number of queues it was handed to.
    pub fn fan_out(&self, topic: &Topic, frame: &Bytes, exclude: Option<ConnId>) -> usize {
        let shard = self.topics.shard(topic);
        let Some(subscribers) = shard.get(topic) else {
            return 0;
        };
        let mut delivered = 0;
        let mut overflowed = 0;
        for (conn, outbox) in &subscribers.list {
            if Some(*conn) == exclude {
                continue;
            }
            match outbox.push(frame.clone()) {
                Push::Queued => delivered += 1,
                Push::Overflow => overflowed += 1,
                Push::Closed => {}
            }
        }
        drop(shard);
        metrics::counter!(Metric::Deliveries.name()).increment(delivered as u64);
        if overflowed > 0 {
            metrics::counter!(Metric::SlowConsumers.name()).increment(overflowed);
        }
        delivered
    }

    fn close_all(&self, topic: &Topic, close: &Close) {
        if let Some(subscribers) = self.topics.shard(topic).get(topic) {
            for (_, outbox) in &subscribers.list {
                outbox.close(close.clone());
            }
        }
    }
}

impl MessageHandler for Hub {
    fn handle(&self, topic: &Topic, message: Message) {
        match message {
            Message::Publication(publication) => {
                metrics::counter!(Metric::Publications.name()).increment(1);
                // Encoded once per node, whatever the number of subscribers.
                let frame = frame::text(publication.to_message().as_bytes());
                let exclude =
                    publication.exclude.filter(|socket| socket.node == self.node).map(|socket| socket.conn);
                self.fan_out(topic, &frame, exclude);
            }
            // Pusher lets a terminated user's client reconnect (its auth endpoint then
            // decides whether it may sign in again), so the code is a reconnect one.
            Message::TerminateUser { .. } => self.close_all(
                topic,
                &Close::error(ErrorCode::ReconnectImmediately, "connection terminated by the app"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{ChannelName, Publication, PublicationData, SocketId};

    fn topic(name: &str) -> Topic {
        Topic::channel(&Arc::from("app"), &ChannelName::new(name).unwrap())
    }

    fn publication(exclude: Option<SocketId>) -> Message {
        Message::Publication(Publication {
            app_id: "app".into(),
            channel: ChannelName::new("news").unwrap(),
            event: "e".into(),
            data: PublicationData::from_string("hello"),
            user_id: None,
            exclude,
        })
    }

    #[tokio::test]
    async fn one_encoding_shared_by_every_subscriber() {
        let hub = Hub::new(7);
        let outboxes: Vec<_> = (0..1000).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        for (conn, outbox) in outboxes.iter().enumerate() {
            hub.subscribe(&topic("news"), conn as u64, outbox.clone());
        }
        hub.handle(&topic("news"), publication(Some(SocketId { node: 7, conn: 3 })));

        let mut frames = Vec::new();
        for (conn, outbox) in outboxes.iter().enumerate() {
            if conn == 3 {
                assert_eq!(outbox.queued_bytes(), 0, "the excluded socket gets nothing");
                continue;
            }
            let batch = outbox.next_batch().await;
            assert_eq!(batch.frames.len(), 1);
            frames.push(batch.frames[0].clone());
        }
        // The same allocation everywhere: no per-subscriber serialization or copy.
        let first = frames[0].as_ptr();
        assert!(frames.iter().all(|f| f.as_ptr() == first));
        assert_eq!(frames.len(), 999);
        let expected = frame::text(publication_bytes());
        assert_eq!(frames[0], expected);
    }

    #[test]
    fn exclusion_of_another_nodes_socket_excludes_nobody_here() {
        let hub = Hub::new(7);
        let outbox = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&topic("news"), 3, outbox.clone());
        hub.handle(&topic("news"), publication(Some(SocketId { node: 8, conn: 3 })));
        assert!(outbox.queued_bytes() > 0);
    }

    #[test]
    fn first_and_last_subscriber_drive_broker_interest() {
        let hub = Hub::new(1);
        let outbox = Arc::new(Outbox::new(1024));
        assert!(hub.subscribe(&topic("a"), 1, outbox.clone()));
        assert!(!hub.subscribe(&topic("a"), 2, outbox.clone()));
        assert!(!hub.subscribe(&topic("a"), 2, outbox.clone()), "idempotent");
        assert!(!hub.unsubscribe(&topic("a"), 1));
        assert!(!hub.unsubscribe(&topic("a"), 1), "idempotent");
        assert!(hub.unsubscribe(&topic("a"), 2));
        assert!(!hub.has_subscribers(&topic("a")));
    }

    #[test]
    fn a_slow_subscriber_is_cut_off_without_affecting_others() {
        let hub = Hub::new(1);
        let slow = Arc::new(Outbox::new(200));
        let fast = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&topic("news"), 1, slow.clone());
        hub.subscribe(&topic("news"), 2, fast.clone());
        for _ in 0..10 {
            hub.handle(&topic("news"), publication(None));
        }
        assert!(slow.is_closing());
        assert!(!fast.is_closing());
        assert_eq!(fast.queued_bytes(), 10 * frame::text(publication_bytes()).len());
    }

    fn publication_bytes() -> &'static [u8] {
        br#"{"event":"e","channel":"news","data":"hello"}"#
    }

    #[tokio::test]
    async fn terminate_closes_the_users_sessions_with_a_reconnect_code() {
        let hub = Hub::new(1);
        let outbox = Arc::new(Outbox::new(1024));
        let user = Topic::user(&Arc::from("app"), "u1");
        hub.subscribe(&user, 1, outbox.clone());
        hub.handle(&user, Message::TerminateUser { user_id: "u1".into() });
        assert!(outbox.is_closing());
        let close = outbox.next_batch().await.close.unwrap();
        assert_eq!(close.code, 4200);
    }
}
