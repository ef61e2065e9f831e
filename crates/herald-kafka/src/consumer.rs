//! One member of a consumer group: reads what librdkafka fetched for the partitions
//! the group gave it, commits exactly the positions it is told.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use herald_backbone::{Error, LogConsumer, LogRecord, Position, Result};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaResult,
    message::BorrowedMessage,
};
use tokio::sync::oneshot;

use crate::{config::Settings, context::Context, unavailable};

/// Longest wait for the group coordinator to store a commit. While there is no
/// coordinator librdkafka holds a commit back for up to `session.timeout.ms` (45 s
/// by default) hoping one turns up, and a commit sent just as the broker died waits
/// for its answer up to `socket.timeout.ms` (60 s). The caller gets an error after
/// this instead; the commit thread carries on until librdkafka gives up.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most queued errors one `poll` drains (see there); any more wait for the next poll.
const MAX_DRAINED_ERRORS: usize = 10_000;

type CommitRequest = (TopicPartitionList, oneshot::Sender<KafkaResult<()>>);

pub(crate) struct KafkaConsumer {
    /// The only strong handle but while a commit runs; taken only by `drop`.
    consumer: Option<Arc<StreamConsumer<Context>>>,
    topic: Arc<str>,
    /// Commits for the commit thread, which stops when this is dropped.
    commits: std::sync::mpsc::Sender<CommitRequest>,
    /// When it last left and rejoined the group over a wrong assignment.
    resubscribed: Option<Instant>,
}

/// Least time between two rejoins over a wrong assignment.
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(5);

impl KafkaConsumer {
    /// Records of a topic this member does not subscribe to came in: the group gave it
    /// partitions of another member's topic (a dispatcher's consumers share one group
    /// with different subscriptions, and a broker that mixed those up would assign
    /// wrongly). Handing them on would have the wrong reader finish and commit them,
    /// losing them. They are dropped uncommitted, and the member leaves and rejoins the
    /// group (at most every [`RESUBSCRIBE_EVERY`]) so that it rebalances.
    fn assigned_elsewhere(&mut self, dropped: usize) {
        let due = self.resubscribed.is_none_or(|at| at.elapsed() >= RESUBSCRIBE_EVERY);
        tracing::warn!(
            topic = %self.topic,
            dropped,
            rejoining = due,
            "records of another topic were assigned to this consumer: left unread and uncommitted"
        );
        if !due {
            return;
        }
        self.resubscribed = Some(Instant::now());
        if let Some(consumer) = &self.consumer {
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[&self.topic]) {
                tracing::warn!(error = %e, topic = %self.topic, "could not subscribe again");
            }
        }
    }

    pub(crate) fn subscribe(settings: &Settings, group: &str, topic: &str) -> Result<Self> {
        let consumer: StreamConsumer<Context> = settings
            .consumer(group, topic)
            .create_with_context(settings.context())
            .map_err(|e| unavailable("creating a consumer", e))?;
        consumer.subscribe(&[topic]).map_err(|e| unavailable(&format!("subscribing to {topic}"), e))?;
        let consumer = Arc::new(consumer);
        let commits = spawn_committer(Arc::downgrade(&consumer))?;
        Ok(Self { consumer: Some(consumer), topic: Arc::from(topic), commits, resubscribed: None })
    }

    fn consumer(&self) -> Result<&Arc<StreamConsumer<Context>>> {
        self.consumer.as_ref().ok_or_else(|| Error::unavailable("kafka: the consumer is closed"))
    }

    fn record(&self, message: &BorrowedMessage<'_>) -> LogRecord {
        let topic =
            if message.topic() == &*self.topic { self.topic.clone() } else { Arc::from(message.topic()) };
        LogRecord {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice).unwrap_or_default(),
            value: message.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
            timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        }
    }
}

/// A synchronous commit returns once the coordinator has stored the positions (or
/// refused them), which is what the contract asks, but blocks its thread meanwhile.
/// An asynchronous one would not help: its result comes through the consumer's
/// callback, served only while `poll` runs, and the caller waits in `commit` instead.
///
/// So each member has a thread of its own for commits. Not the runtime's blocking
/// pool: a commit stuck during an outage would hold up the runtime's shutdown. And
/// one thread, not one per commit: commits are stored in the order they were made,
/// even when the caller gave up waiting for an earlier one.
///
/// The thread holds the consumer only while it commits, so the member's `drop`
/// normally releases the last handle (and closes the consumer) itself.
fn spawn_committer(
    consumer: Weak<StreamConsumer<Context>>,
) -> Result<std::sync::mpsc::Sender<CommitRequest>> {
    let (commits, requests) = std::sync::mpsc::channel::<CommitRequest>();
    std::thread::Builder::new()
        .name("herald-kafka-commit".into())
        .spawn(move || {
            for (offsets, reply) in requests {
                let Some(consumer) = consumer.upgrade() else { break };
                let _ = reply.send(consumer.commit(&offsets, CommitMode::Sync));
            }
        })
        .map_err(|e| Error::unavailable_because("kafka: cannot start a commit thread", e))?;
    Ok(commits)
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize) -> Result<Vec<LogRecord>> {
        // `recv` waits without holding a thread: librdkafka wakes the task when its
        // queue of fetched records stops being empty. It is cancellation safe, so
        // dropping `poll` loses nothing.
        let consumer = self.consumer()?;
        let mut records = Vec::new();
        let mut error = match consumer.recv().await {
            Ok(first) => {
                records.push(self.record(&first));
                None
            }
            Err(e) => Some(e),
        };
        // Then whatever librdkafka already queued, without waiting for more. Taken in
        // one step, with no await in between: from here on the records are this
        // call's, and a caller that dropped it at an await (a timeout around `poll`
        // firing) would drop them with it: read, uncommitted, and never handed over.
        //
        // While the brokers are away librdkafka queues an error for every failed
        // connection attempt, ahead of the records that come once they are back.
        // Those errors are drained here, all but the latest: returned one per poll,
        // they would hold the records back by one caller's retry pause each, longer
        // than the outage itself lasted.
        let mut drained = 0;
        while records.len() < max && drained < MAX_DRAINED_ERRORS {
            match ready_now(consumer.recv()) {
                Some(Ok(message)) => records.push(self.record(&message)),
                // An error after records (a broker connection lost, say) is reported
                // again by librdkafka if it persists; the records go out first.
                Some(Err(_)) if !records.is_empty() => break,
                Some(Err(e)) => {
                    error = Some(e);
                    drained += 1;
                }
                None => break,
            }
        }
        let read = records.len();
        records.retain(|record| record.topic == self.topic);
        if records.len() < read {
            self.assigned_elsewhere(read - records.len());
        }
        match error {
            Some(e) if read == 0 => Err(unavailable(&format!("reading {}", self.topic), e)),
            _ => Ok(records),
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::with_capacity(positions.len());
        for position in positions {
            offsets
                .add_partition_offset(
                    &position.topic,
                    position.partition,
                    Offset::Offset(position.next_offset),
                )
                .map_err(|e| unavailable("committing", e))?;
        }
        let (reply, committed) = oneshot::channel();
        self.commits
            .send((offsets, reply))
            .map_err(|_| Error::unavailable("kafka: the commit thread has stopped"))?;
        match tokio::time::timeout(COMMIT_TIMEOUT, committed).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(unavailable("committing", e)),
            Ok(Err(_)) => Err(Error::unavailable("kafka: the commit thread has stopped")),
            Err(_) => Err(Error::unavailable(format!("kafka: commit not stored within {COMMIT_TIMEOUT:?}"))),
        }
    }
}

/// `future`'s output if it is ready at its first poll; else `None` (and it is
/// dropped). `recv` is ready at once when librdkafka has a message or an error queued.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Dropping the last handle closes the consumer: it leaves the group (so the
        // partitions move to the other members at once, not after the session
        // timeout) and waits for the brokers to acknowledge, blocking its thread.
        // Keep that off the async workers when there is a runtime (which then waits
        // for it on shutdown, so the member leaves cleanly). If a commit is still
        // running, its thread closes the consumer when that commit ends.
        let Some(consumer) = self.consumer.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(consumer))),
            Err(_) => drop(consumer),
        }
    }
}
