//! The node's registry of local subscriptions, and the fan-out of broker messages.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use herald_backbone::{Message, MessageHandler, Topic};
use herald_core::{
    ErrorCode, Publication,
    sharded::{Sharded, shrink_map, shrink_vec},
};
use herald_telemetry::{Metric, trace};

use crate::{Close, Outbox, Push, frame};

/// A connection's number on this node (the second half of its socket id).
pub type ConnId = u64;

/// Local subscribers of one topic. A list to iterate fast on fan-out, shared
/// copy-on-write so a fan-out writes to its sockets without holding the hub's lock.
/// A long list has an index for O(1) removal; a short one (most topics: a channel with
/// a few subscribers on this node) is searched, and costs no map.
#[derive(Default)]
struct Subscribers {
    list: Arc<Vec<(ConnId, Arc<Outbox>)>>,
    /// Boxed: one pointer in every topic, rather than a map's 48 bytes in topics that
    /// have none.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<ConnId, usize>>>,
    /// Connections catching up on the topic's history ([`Hub::begin_catch_up`]): not
    /// subscribers yet, what is fanned out meanwhile is kept for them. Boxed, as
    /// `index`: almost every topic has none.
    #[allow(clippy::box_collection)]
    catching_up: Option<Box<Vec<CatchUp>>>,
}

/// What was fanned out to a topic while one connection caught up on its history:
/// each frame with its offset in the channel's history (`None`: not kept there).
struct CatchUp {
    conn: ConnId,
    outbox: Arc<Outbox>,
    frames: Vec<(Option<u64>, Bytes)>,
    bytes: usize,
    overflowed: bool,
    /// Set once the catch-up is written ([`Hub::finish_catch_up`]): the offset its
    /// history read reached. A publication the read already had may still be on its
    /// way from the broker (published before the read, delivered after it): until one
    /// above this floor arrives, frames at or below it are dropped, the rest written.
    floor: Option<u64>,
}

impl CatchUp {
    /// After the catch-up was written: writes the frames above the floor (or with no
    /// offset), and says whether one above the floor came, so that nothing at or below
    /// it can follow (a channel's publications reach a node in offset order).
    fn drain(&self, floor: u64, frames: &[(Option<u64>, Bytes)]) -> bool {
        let mut above = false;
        for (offset, frame) in frames {
            if offset.is_none_or(|o| o > floor) {
                above |= offset.is_some();
                self.outbox.push(frame.clone());
            }
        }
        above
    }

    /// Keeps frames for later, up to the connection's outbound limit; past it the
    /// connection is a slow consumer (4100), as it would have been as a subscriber.
    fn keep(&mut self, frames: &[(Option<u64>, Bytes)]) {
        if self.overflowed {
            return;
        }
        let bytes: usize = frames.iter().map(|(_, f)| f.len()).sum();
        if self.bytes + bytes > self.outbox.limit() {
            self.overflowed = true;
            self.frames = Vec::new();
            self.outbox.close(Close::error(ErrorCode::OverCapacity, CATCH_UP_OVERFLOW));
            return;
        }
        self.bytes += bytes;
        self.frames.extend(frames.iter().cloned());
    }
}

const CATCH_UP_OVERFLOW: &str =
    "over capacity: the channel published more than the connection may queue while it caught up";

/// How [`Hub::finish_catch_up`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaughtUp {
    /// The connection is a subscriber now, everything in order in its outbox.
    Subscribed,
    /// More was published meanwhile than the connection may queue: it was closed (4100).
    Overflowed,
    /// The catch-up had been abandoned (or never begun).
    Missing,
}

type Snapshot = Arc<Vec<(ConnId, Arc<Outbox>)>>;

/// Lists longer than this are indexed.
const INDEX_FROM: usize = 32;

impl Subscribers {
    fn position(&self, conn: ConnId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&conn).copied(),
            None => self.list.iter().position(|(c, _)| *c == conn),
        }
    }

    fn insert(&mut self, conn: ConnId, outbox: Arc<Outbox>) -> bool {
        if self.position(conn).is_some() {
            return false;
        }
        let list = Arc::make_mut(&mut self.list);
        list.push((conn, outbox));
        match &mut self.index {
            Some(index) => {
                index.insert(conn, list.len() - 1);
            }
            None if list.len() > INDEX_FROM => {
                self.index = Some(Box::new(list.iter().enumerate().map(|(at, (c, _))| (*c, at)).collect()));
            }
            None => {}
        }
        true
    }

    /// No subscriber and no one catching up: the topic can go.
    fn is_empty(&self) -> bool {
        self.list.is_empty() && self.catching_up.is_none()
    }

    fn take_catch_up(&mut self, conn: ConnId) -> Option<CatchUp> {
        let catching_up = self.catching_up.as_mut()?;
        let at = catching_up.iter().position(|c| c.conn == conn)?;
        let catch_up = catching_up.swap_remove(at);
        if catching_up.is_empty() {
            self.catching_up = None;
        }
        Some(catch_up)
    }

    fn remove(&mut self, conn: ConnId) -> bool {
        let Some(at) = self.position(conn) else {
            return false;
        };
        let list = Arc::make_mut(&mut self.list);
        list.swap_remove(at);
        if let Some(index) = &mut self.index {
            index.remove(&conn);
            if let Some((moved, _)) = list.get(at) {
                index.insert(*moved, at);
            }
            // A crowd that left gives its memory back.
            if list.len() <= INDEX_FROM / 2 {
                self.index = None;
            } else {
                shrink_map(index);
            }
        }
        shrink_vec(list);
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
        // A connection past its catch-up may still be draining it.
        let removed = subscribers.remove(conn) || subscribers.take_catch_up(conn).is_some();
        if !removed || !subscribers.is_empty() {
            return false;
        }
        shard.remove(topic);
        metrics::gauge!(Metric::LocalChannels.name()).decrement(1);
        true
    }

    /// Starts a subscription that first catches up on the channel's history: until
    /// [`Hub::finish_catch_up`], what is fanned out to `topic` is kept for `conn`
    /// instead of written to it. Like [`Hub::subscribe`], returns true when the topic
    /// is new on this node (the node needs the broker topic).
    pub fn begin_catch_up(&self, topic: &Topic, conn: ConnId, outbox: Arc<Outbox>) -> bool {
        let mut shard = self.topics.shard(topic);
        let first = !shard.contains_key(topic);
        let subscribers = shard.entry(topic.clone()).or_default();
        let catching_up = subscribers.catching_up.get_or_insert_with(Box::default);
        catching_up.retain(|c| c.conn != conn);
        catching_up.push(CatchUp {
            conn,
            outbox,
            frames: Vec::new(),
            bytes: 0,
            overflowed: false,
            floor: None,
        });
        if first {
            metrics::gauge!(Metric::LocalChannels.name()).increment(1);
        }
        first
    }

    /// Ends `conn`'s catch-up, atomically with respect to fan-out: writes `first` (the
    /// history it missed, and its subscription ack), then what was fanned out meanwhile
    /// that is not in `first` (an offset above `after`, or none), and makes it a
    /// subscriber: at once if one above `after` came already, else once one comes,
    /// dropping the publications at or below `after` still on their way meanwhile. So
    /// it gets the channel in order, without a gap or a duplicate.
    pub fn finish_catch_up(&self, topic: &Topic, conn: ConnId, after: u64, first: Vec<Bytes>) -> CaughtUp {
        let mut shard = self.topics.shard(topic);
        let Some(subscribers) = shard.get_mut(topic) else {
            return CaughtUp::Missing;
        };
        let Some(mut catch_up) = subscribers.take_catch_up(conn) else {
            return CaughtUp::Missing;
        };
        if catch_up.overflowed {
            if subscribers.is_empty() {
                shard.remove(topic);
                metrics::gauge!(Metric::LocalChannels.name()).decrement(1);
            }
            return CaughtUp::Overflowed;
        }
        let frames = std::mem::take(&mut catch_up.frames);
        let above = frames.iter().any(|(offset, _)| offset.is_some_and(|o| o > after));
        let missed = frames.into_iter().filter(|(offset, _)| offset.is_none_or(|o| o > after));
        let all: Vec<Bytes> = first.into_iter().chain(missed.map(|(_, frame)| frame)).collect();
        if !all.is_empty() {
            // One buffer: one write, as a burst of a fan-out is.
            catch_up.outbox.push(Bytes::from(all.concat()));
        }
        if above {
            subscribers.insert(conn, catch_up.outbox);
        } else {
            catch_up.floor = Some(after);
            catch_up.bytes = 0;
            subscribers.catching_up.get_or_insert_with(Box::default).push(catch_up);
        }
        CaughtUp::Subscribed
    }

    /// Abandons `conn`'s catch-up (its history could not be read, or it left). Returns
    /// true when the topic has no one left on this node, as [`Hub::unsubscribe`].
    pub fn abandon_catch_up(&self, topic: &Topic, conn: ConnId) -> bool {
        let mut shard = self.topics.shard(topic);
        let Some(subscribers) = shard.get_mut(topic) else {
            return false;
        };
        if subscribers.take_catch_up(conn).is_none() || !subscribers.is_empty() {
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

    /// The topic's subscribers as they are now; the lock is released on return.
    fn snapshot(&self, topic: &Topic) -> Option<Snapshot> {
        self.topics.shard(topic).get(topic).map(|s| s.list.clone())
    }

    /// The topic's subscribers as they are now, `frames` kept for the connections
    /// catching up on it (but `exclude`) under the same lock, so a frame reaches each
    /// connection once: as a subscriber, or from its catch-up.
    fn snapshot_keeping(
        &self,
        topic: &Topic,
        frames: &[(Option<u64>, Bytes)],
        exclude: Option<ConnId>,
    ) -> Option<Snapshot> {
        let mut shard = self.topics.shard(topic);
        let subscribers = shard.get_mut(topic)?;
        let snapshot = subscribers.list.clone();
        let Some(catching_up) = &mut subscribers.catching_up else {
            return Some(snapshot);
        };
        // Catch-ups keep the frames; those past theirs drain them, and become
        // subscribers (for the next fan-out: this one they have had) once one above
        // their floor came.
        let mut caught_up = Vec::new();
        for catch_up in catching_up.iter_mut().filter(|c| Some(c.conn) != exclude) {
            match catch_up.floor {
                None => catch_up.keep(frames),
                Some(floor) if catch_up.drain(floor, frames) => caught_up.push(catch_up.conn),
                Some(_) => {}
            }
        }
        for conn in caught_up {
            if let Some(catch_up) = subscribers.take_catch_up(conn) {
                subscribers.insert(conn, catch_up.outbox);
            }
        }
        Some(snapshot)
    }

    /// Writes an already-encoded frame to every local subscriber of `topic` except
    /// `exclude`: straight into each socket that has nothing queued, one `write`
    /// each. Returns the number of subscribers it was handed to.
    pub fn fan_out(&self, topic: &Topic, frame: &Bytes, exclude: Option<ConnId>) -> usize {
        self.fan_out_counted(topic, frame, &[(None, frame.clone())], exclude)
    }

    /// [`Hub::fan_out`] of `bytes`, the concatenation of `frames` (each with its history
    /// offset, for connections catching up): a burst is still one `write` per
    /// subscriber.
    fn fan_out_counted(
        &self,
        topic: &Topic,
        bytes: &Bytes,
        frames: &[(Option<u64>, Bytes)],
        exclude: Option<ConnId>,
    ) -> usize {
        let Some(subscribers) = self.snapshot_keeping(topic, frames, exclude) else {
            return 0;
        };
        let mut tally = Tally::default();
        for (conn, outbox) in subscribers.iter() {
            if Some(*conn) != exclude {
                tally.count(outbox.push(bytes.clone()), frames.len());
            }
        }
        tally.record()
    }

    /// Fans several messages out in order. Consecutive publications to one topic
    /// with the same exclusion go out together: a burst to a channel costs one system
    /// call per subscriber, not one per frame.
    fn fan_out_batch(&self, messages: Vec<(Topic, Message)>) {
        let mut messages = messages.into_iter().peekable();
        let mut frames = Vec::new();
        while let Some((topic, message)) = messages.next() {
            let publication = match message {
                Message::Publication(publication) => publication,
                control @ (Message::TerminateUser { .. } | Message::Watchlist { .. }) => {
                    self.handle(&topic, control);
                    continue;
                }
            };
            // The run's span and latency are the first publication's: a batch comes
            // from one API call, so its publications share a trace and a timestamp.
            let span = fan_out_span(&publication);
            let _entered = span.enter();
            let (frame, exclude) = self.encode(&publication);
            frames.push((offset(&publication), frame));
            while let Some((next_topic, Message::Publication(next))) = messages.peek() {
                if *next_topic != topic || self.excluded(next) != exclude {
                    break;
                }
                frames.push((offset(next), self.encode(next).0));
                messages.next();
            }
            // One buffer for the whole run, shared by every subscriber: one `write`
            // each, as cheap as a single frame's.
            let run = match frames.as_slice() {
                [(_, one)] => one.clone(),
                _ => Bytes::from(frames.iter().map(|(_, f)| &f[..]).collect::<Vec<&[u8]>>().concat()),
            };
            let delivered = self.fan_out_counted(&topic, &run, &frames, exclude);
            fanned_out(&span, &publication, delivered / frames.len().max(1), run.len());
            frames.clear();
        }
    }

    /// The frame of a publication (encoded once per node, whatever the number of
    /// subscribers), and the local connection it excludes.
    fn encode(&self, publication: &Publication) -> (Bytes, Option<ConnId>) {
        metrics::counter!(Metric::Publications.name()).increment(1);
        let frame = frame::text(publication.to_message().as_bytes());
        (frame, self.excluded(publication))
    }

    /// The local connection a publication excludes, if any.
    fn excluded(&self, publication: &Publication) -> Option<ConnId> {
        publication.exclude.filter(|socket| socket.node == self.node).map(|socket| socket.conn)
    }
}

/// A publication's offset in its channel's history, if it is kept there.
fn offset(publication: &Publication) -> Option<u64> {
    publication.position.as_ref().map(|p| p.offset)
}

/// Deliveries and slow consumers of one fan-out, recorded once at its end.
#[derive(Default)]
struct Tally {
    delivered: usize,
    overflowed: u64,
}

impl Tally {
    fn count(&mut self, push: Push, frames: usize) {
        match push {
            Push::Queued => self.delivered += frames,
            Push::Overflow => self.overflowed += 1,
            Push::Closed => {}
        }
    }

    fn record(self) -> usize {
        metrics::counter!(Metric::Deliveries.name()).increment(self.delivered as u64);
        if self.overflowed > 0 {
            metrics::counter!(Metric::SlowConsumers.name()).increment(self.overflowed);
        }
        self.delivered
    }
}

/// The span of one publication's fan-out on this node, a child of the publisher's
/// span when its trace is sampled (else disabled, at no cost).
fn fan_out_span(publication: &Publication) -> tracing::Span {
    trace::child_of(publication.trace.as_ref(), || {
        tracing::info_span!(
            target: trace::TARGET,
            "fan_out",
            otel.kind = "consumer",
            channel = publication.channel.as_str(),
            event = &*publication.event,
            subscribers = tracing::field::Empty,
            bytes = tracing::field::Empty,
        )
    })
}

/// Records a finished fan-out: its latency from the publication's timestamp, and in
/// its span, to how many subscribers and how many bytes (each) it went.
fn fanned_out(span: &tracing::Span, publication: &Publication, subscribers: usize, bytes: usize) {
    if publication.published_us > 0 {
        let micros = herald_core::time::now_us().saturating_sub(publication.published_us).max(0);
        metrics::histogram!(Metric::DeliveryLatency.name()).record(micros as f64 / 1e6);
    }
    if !span.is_disabled() {
        span.record("subscribers", subscribers);
        span.record("bytes", bytes);
    }
}

fn close_all(subscribers: &Snapshot, close: &Close) {
    for (_, outbox) in subscribers.iter() {
        outbox.close(close.clone());
    }
}

/// Pusher lets a terminated user's client reconnect (its auth endpoint then decides
/// whether it may sign in again), so the code is a reconnect one.
fn terminated() -> Close {
    Close::error(ErrorCode::ReconnectImmediately, "connection terminated by the app")
}

impl MessageHandler for Hub {
    fn handle(&self, topic: &Topic, message: Message) {
        match message {
            Message::Publication(publication) => {
                let span = fan_out_span(&publication);
                let _entered = span.enter();
                let (frame, exclude) = self.encode(&publication);
                let frames = [(offset(&publication), frame.clone())];
                let delivered = self.fan_out_counted(topic, &frame, &frames, exclude);
                fanned_out(&span, &publication, delivered, frame.len());
            }
            Message::TerminateUser { .. } => {
                if let Some(subscribers) = self.snapshot(topic) {
                    close_all(&subscribers, &terminated());
                }
            }
            Message::Watchlist { user_id, online } => {
                let ids = [&*user_id];
                let (online, offline): (&[&str], &[&str]) = if online { (&ids, &[]) } else { (&[], &ids) };
                let frame = frame::text(herald_core::protocol::watchlist_events(online, offline).as_bytes());
                self.fan_out(topic, &frame, None);
            }
        }
    }

    fn handle_batch(&self, messages: Vec<(Topic, Message)>) {
        self.fan_out_batch(messages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::tests::pair;
    use herald_core::{ChannelName, Publication, PublicationData, SocketId};
    use tokio::{io::AsyncReadExt, net::TcpStream};

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
            published_us: 0,
            trace: None,
            position: None,
        })
    }

    fn publication_bytes() -> &'static [u8] {
        br#"{"event":"e","channel":"news","data":"hello"}"#
    }

    async fn subscribers(hub: &Hub, n: usize, limit: usize) -> Vec<(Arc<Outbox>, TcpStream)> {
        let mut all = Vec::new();
        for conn in 0..n {
            let (outbox, client) = pair(limit).await;
            let outbox = Arc::new(outbox);
            hub.subscribe(&topic("news"), conn as u64, outbox.clone());
            all.push((outbox, client));
        }
        all
    }

    /// Short lists are searched, long ones indexed: adding and removing across that
    /// threshold, in any order, keeps every subscriber findable exactly once.
    #[tokio::test]
    async fn subscribers_stay_consistent_across_the_index_threshold() {
        let (outbox, _client) = pair(1 << 20).await;
        let outbox = Arc::new(outbox);
        let mut subscribers = Subscribers::default();
        let check = |subscribers: &Subscribers, expected: &[u64]| {
            assert_eq!(subscribers.list.len(), expected.len());
            for conn in expected {
                let at = subscribers.position(*conn).expect("findable");
                assert_eq!(subscribers.list[at].0, *conn);
            }
            let len = subscribers.list.len();
            if len > INDEX_FROM {
                assert!(subscribers.index.is_some(), "{len} subscribers are indexed");
            }
            if len <= INDEX_FROM / 2 {
                assert!(subscribers.index.is_none(), "{len} subscribers are searched");
            }
        };
        let mut expected: Vec<u64> = Vec::new();
        for conn in 0..3 * INDEX_FROM as u64 {
            assert!(subscribers.insert(conn, outbox.clone()));
            assert!(!subscribers.insert(conn, outbox.clone()), "a second insert is refused");
            expected.push(conn);
            check(&subscribers, &expected);
        }
        assert!(subscribers.index.is_some(), "a long list is indexed");
        // Every third, from the middle out, then the rest from the front.
        let mut order: Vec<u64> = expected.iter().copied().filter(|c| c % 3 == 1).rev().collect();
        order.extend(expected.iter().copied().filter(|c| c % 3 != 1));
        for conn in order {
            assert!(subscribers.remove(conn));
            assert!(!subscribers.remove(conn), "a second remove finds nothing");
            expected.retain(|c| *c != conn);
            check(&subscribers, &expected);
            assert!(subscribers.position(conn).is_none());
        }
        assert!(subscribers.index.is_none(), "an emptied list drops its index");
        assert!(subscribers.insert(5, outbox.clone()) && subscribers.position(5) == Some(0));
    }

    #[tokio::test]
    async fn one_encoding_shared_by_every_subscriber() {
        let hub = Hub::new(7);
        let subs = subscribers(&hub, 100, 1 << 20).await;
        // Something queued ahead keeps the frames in the queues, where they can be seen.
        for (outbox, _) in &subs {
            outbox.queue_without_writing(Bytes::from_static(b"ahead"));
        }
        hub.handle(&topic("news"), publication(Some(SocketId { node: 7, conn: 3 })));

        let mut frames = Vec::new();
        for (conn, (outbox, _)) in subs.iter().enumerate() {
            let queued = outbox.queued();
            if conn == 3 {
                assert_eq!(queued.len(), 1, "the excluded socket gets nothing");
                continue;
            }
            assert_eq!(queued.len(), 2);
            frames.push(queued[1].clone());
        }
        // The same allocation everywhere: no per-subscriber serialization or copy.
        let first = frames[0].as_ptr();
        assert!(frames.iter().all(|f| f.as_ptr() == first));
        assert_eq!(frames.len(), 99);
        assert_eq!(frames[0], frame::text(publication_bytes()));
    }

    #[tokio::test]
    async fn every_subscriber_reads_the_frame_from_its_socket() {
        let hub = Hub::new(7);
        let mut subs = subscribers(&hub, 20, 1 << 20).await;
        hub.handle(&topic("news"), publication(None));
        let expected = frame::text(publication_bytes());
        for (outbox, client) in &mut subs {
            assert_eq!(outbox.queued_bytes(), 0, "written straight into the socket");
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        }
    }

    #[tokio::test]
    async fn a_batch_reaches_each_socket_in_order() {
        let hub = Hub::new(7);
        let mut subs = subscribers(&hub, 10, 1 << 20).await;
        let batch: Vec<_> = (0..8).map(|_| (topic("news"), publication(None))).collect();
        hub.handle_batch(batch);
        let expected: Vec<u8> = (0..8).flat_map(|_| frame::text(publication_bytes()).to_vec()).collect();
        for (outbox, client) in &mut subs {
            assert_eq!(outbox.queued_bytes(), 0, "written at once");
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        }
    }

    #[tokio::test]
    async fn exclusion_of_another_nodes_socket_excludes_nobody_here() {
        let hub = Hub::new(7);
        let mut subs = subscribers(&hub, 4, 1 << 20).await;
        hub.handle(&topic("news"), publication(Some(SocketId { node: 8, conn: 3 })));
        let expected = frame::text(publication_bytes());
        for (_, client) in &mut subs {
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        }
    }

    #[tokio::test]
    async fn first_and_last_subscriber_drive_broker_interest() {
        let hub = Hub::new(1);
        let (outbox, _client) = pair(1024).await;
        let outbox = Arc::new(outbox);
        assert!(hub.subscribe(&topic("a"), 1, outbox.clone()));
        assert!(!hub.subscribe(&topic("a"), 2, outbox.clone()));
        assert!(!hub.subscribe(&topic("a"), 2, outbox.clone()), "idempotent");
        assert!(!hub.unsubscribe(&topic("a"), 1));
        assert!(!hub.unsubscribe(&topic("a"), 1), "idempotent");
        assert!(hub.unsubscribe(&topic("a"), 2));
        assert!(!hub.has_subscribers(&topic("a")));
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_cut_off_without_affecting_others() {
        let hub = Hub::new(1);
        let subs = subscribers(&hub, 2, 64 * 1024).await;
        let (slow, fast) = (&subs[0].0, &subs[1].0);
        // The slow one has a queue already (its socket stopped taking data).
        slow.queue_without_writing(Bytes::from(vec![0; 60 * 1024]));
        for _ in 0..100 {
            hub.handle(&topic("news"), publication(None));
        }
        assert_eq!(slow.status().closing, Some(4100));
        assert!(!fast.is_closing());
        assert_eq!(fast.queued_bytes(), 0, "the fast one got every frame");
    }

    fn kept_at(offset: u64) -> Message {
        let Message::Publication(mut p) = publication(None) else { unreachable!() };
        p.event = format!("e{offset}").into();
        p.position = Some(herald_core::StreamPosition::new(offset, "ep"));
        Message::Publication(p)
    }

    fn frame_of(message: &Message) -> Bytes {
        let Message::Publication(p) = message else { unreachable!() };
        frame::text(p.to_message().as_bytes())
    }

    #[tokio::test]
    async fn a_catch_up_gets_history_then_what_was_published_meanwhile_then_live() {
        let hub = Hub::new(1);
        let (outbox, mut client) = pair(1 << 20).await;
        let outbox = Arc::new(outbox);
        let news = topic("news");
        assert!(hub.begin_catch_up(&news, 1, outbox.clone()), "the topic is new here");
        assert!(hub.has_subscribers(&news), "the node keeps the topic while it catches up");
        // 2..=5 are fanned out while the history (up to 3) is read: kept, not written.
        hub.handle_batch((2..=3).map(|o| (news.clone(), kept_at(o))).collect());
        hub.handle(&news, kept_at(4));
        hub.handle(&news, publication(None));
        hub.handle(&news, kept_at(5));
        assert_eq!(outbox.queued_bytes(), 0);
        let history: Vec<Bytes> = (1..=3).map(|o| frame_of(&kept_at(o))).collect();
        let ack = frame::text(b"ack");
        let first: Vec<Bytes> = history.iter().cloned().chain([ack.clone()]).collect();
        assert_eq!(hub.finish_catch_up(&news, 1, 3, first), CaughtUp::Subscribed);
        hub.handle(&news, kept_at(6));
        // 2 and 3 came with the history, not again; the unkept one is not lost.
        let expected: Vec<Bytes> = history
            .into_iter()
            .chain([ack, frame_of(&kept_at(4)), frame::text(publication_bytes()), frame_of(&kept_at(5))])
            .chain([frame_of(&kept_at(6))])
            .collect();
        let expected = expected.concat();
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert_eq!(hub.finish_catch_up(&news, 1, 0, vec![]), CaughtUp::Missing, "once");
        assert!(hub.unsubscribe(&news, 1), "a subscriber like any other");
    }

    /// A publication the history read already had can still be on its way from the
    /// broker when the catch-up is written: it is dropped, until one above the read's
    /// position shows nothing older can follow.
    #[tokio::test]
    async fn after_its_catch_up_a_connection_drops_what_the_history_had_until_a_newer_one() {
        let hub = Hub::new(1);
        let (outbox, mut client) = pair(1 << 20).await;
        let outbox = Arc::new(outbox);
        let news = topic("news");
        hub.begin_catch_up(&news, 1, outbox.clone());
        let ack = frame::text(b"ack");
        assert_eq!(hub.finish_catch_up(&news, 1, 5, vec![ack.clone()]), CaughtUp::Subscribed);
        hub.handle(&news, kept_at(4));
        hub.handle(&news, kept_at(5));
        hub.handle(&news, publication(None));
        hub.handle_batch(vec![(news.clone(), kept_at(5)), (news.clone(), kept_at(6))]);
        hub.handle(&news, kept_at(7));
        let expected: Vec<Bytes> =
            vec![ack, frame::text(publication_bytes()), frame_of(&kept_at(6)), frame_of(&kept_at(7))];
        let expected = expected.concat();
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert!(hub.unsubscribe(&news, 1), "a subscriber now, and the topic's last");

        // Unsubscribing while it still drains leaves nothing either.
        hub.begin_catch_up(&news, 2, outbox.clone());
        hub.finish_catch_up(&news, 2, 9, vec![]);
        assert!(hub.unsubscribe(&news, 2));
        assert!(!hub.has_subscribers(&news));
    }

    #[tokio::test]
    async fn a_catch_up_that_overflows_closes_and_an_abandoned_one_leaves_nothing() {
        let hub = Hub::new(1);
        let news = topic("news");
        let (small, _client) = pair(200).await;
        let small = Arc::new(small);
        hub.begin_catch_up(&news, 1, small.clone());
        for o in 1..=10 {
            hub.handle(&news, kept_at(o));
        }
        assert_eq!(small.status().closing, Some(4100));
        assert_eq!(hub.finish_catch_up(&news, 1, 0, vec![]), CaughtUp::Overflowed);
        assert!(!hub.has_subscribers(&news), "nothing left of it");

        let (outbox, _client) = pair(1 << 20).await;
        let outbox = Arc::new(outbox);
        assert!(hub.begin_catch_up(&news, 2, outbox.clone()));
        hub.subscribe(&news, 3, outbox.clone());
        assert!(!hub.abandon_catch_up(&news, 2), "a subscriber is left");
        assert!(hub.unsubscribe(&news, 3), "the last one");
        assert!(hub.begin_catch_up(&news, 2, outbox));
        assert!(hub.abandon_catch_up(&news, 2));
        assert!(!hub.has_subscribers(&news));
    }

    #[tokio::test]
    async fn terminate_closes_the_users_sessions_with_a_reconnect_code() {
        let hub = Hub::new(1);
        let (outbox, _client) = pair(1024).await;
        let outbox = Arc::new(outbox);
        let user = Topic::user(&Arc::from("app"), "u1");
        hub.subscribe(&user, 1, outbox.clone());
        hub.handle(&user, Message::TerminateUser { user_id: "u1".into() });
        assert_eq!(outbox.status().closing, Some(4200));
    }
}
