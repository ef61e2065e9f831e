//! The durable event log: every channel event is appended here, and the webhook
//! dispatcher consumes it as a group. Kafka in production (`herald-kafka`), memory in
//! `herald dev` ([`crate::MemoryEventLog`]).
//!
//! The log deals in bytes: producers encode `herald.v1.ChannelEvent` (protobuf) and the
//! dispatcher decodes it, so an implementation never needs to know the schema.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::Result;

/// One record to append: `key` picks the partition (every record with the same key
/// lands in the same partition, in append order), `value` is the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub key: Bytes,
    pub value: Bytes,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Bytes,
    pub value: Bytes,
    /// When it was appended (milliseconds since the Unix epoch).
    pub timestamp_ms: i64,
}

/// A position to commit: the next offset the group should read in a partition (the
/// offset of the last fully handled record plus one, as in Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub topic: Arc<str>,
    pub partition: i32,
    pub next_offset: i64,
}

/// A durable, partitioned log of channel events.
///
/// Contract, for every implementation:
/// - **Durable on return**: `append` returns `Ok` only once every record is stored
///   (Kafka: acknowledged by all in-sync replicas); on `Err` a prefix of them may be
///   stored. Retrying an append may store a record twice (consumers are at-least-once).
/// - **Ordered per key**: records with the same key are read in append order.
/// - Topics are created by [`EventLog::ensure_topics`], never implicitly.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends `records` to `topic`.
    async fn append(&self, topic: &str, records: Vec<Append>) -> Result<()>;

    /// Creates the topics that do not exist yet, with `partitions` partitions each;
    /// existing topics are left as they are.
    async fn ensure_topics(&self, topics: &[&str], partitions: i32) -> Result<()>;

    /// Joins consumer group `group` on `topic`. The members of one group share the
    /// topic's partitions; a new member starts at the group's committed positions, or
    /// at the beginning of a partition that has none.
    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn LogConsumer>>;
}

/// One member of a consumer group.
///
/// Contract: `poll` returns records of the partitions this member owns, in offset
/// order per partition. A record is read again (by this member or another, after a
/// restart or a rebalance) unless a position past it was committed: delivery is at
/// least once, and nothing is skipped. Committing a position of a partition the member
/// no longer owns is ignored or fails harmlessly.
#[async_trait]
pub trait LogConsumer: Send + 'static {
    /// Waits until at least one record is available and returns at most `max` of them.
    ///
    /// Cancellation safe: a `poll` dropped before it returns has taken no record (the
    /// next call returns them), so callers may wrap it in a timeout.
    async fn poll(&mut self, max: usize) -> Result<Vec<LogRecord>>;

    /// Stores the group's positions durably.
    async fn commit(&mut self, positions: &[Position]) -> Result<()>;
}
