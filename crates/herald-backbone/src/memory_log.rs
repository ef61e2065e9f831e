//! The in-memory [`EventLog`] of `herald dev` and tests: Kafka's model (partitioned
//! topics, consumer groups sharing partitions, committed positions) in one process.
//!
//! Memory: a partition keeps its records until every group consuming the topic has
//! committed past them, and never more than `max_records` (the oldest go first, as
//! Kafka's retention would drop them) so a dev node with no dispatcher stays bounded.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{Append, Error, EventLog, LogConsumer, LogRecord, Position, Result};

/// Records a partition keeps at most, by default.
pub const DEFAULT_MAX_RECORDS: usize = 1_000_000;

#[derive(Clone)]
pub struct MemoryEventLog {
    inner: Arc<Inner>,
}

struct Inner {
    max_records: usize,
    topics: Mutex<HashMap<Arc<str>, Arc<Topic>>>,
    next_member: AtomicU64,
}

struct Topic {
    name: Arc<str>,
    state: Mutex<TopicState>,
    appended: Notify,
}

struct TopicState {
    partitions: Vec<Partition>,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Partition {
    /// Offset of `records[0]`.
    base: i64,
    records: VecDeque<(bytes::Bytes, bytes::Bytes, i64)>,
}

impl Partition {
    fn end(&self) -> i64 {
        self.base + self.records.len() as i64
    }
}

#[derive(Default)]
struct Group {
    /// Bumped on every membership change: members then re-read their assignment from
    /// the committed positions, as after a Kafka rebalance.
    generation: u64,
    members: Vec<u64>,
    committed: HashMap<i32, i64>,
}

impl MemoryEventLog {
    pub fn new() -> Self {
        Self::with_max_records(DEFAULT_MAX_RECORDS)
    }

    pub fn with_max_records(max_records: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_records: max_records.max(1),
                topics: Mutex::new(HashMap::new()),
                next_member: AtomicU64::new(1),
            }),
        }
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unavailable(format!("unknown topic {name:?}")))
    }
}

impl Default for MemoryEventLog {
    fn default() -> Self {
        Self::new()
    }
}

/// The partition of a key: the same for the same key, spread over the partitions.
fn partition_of(key: &[u8], partitions: usize) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (hash % partitions as u64) as usize
}

impl TopicState {
    /// Drops what every group has committed past, and what is over the cap.
    fn trim(&mut self, partition: usize, max_records: usize) {
        let committed =
            self.groups.values().map(|g| g.committed.get(&(partition as i32)).copied().unwrap_or(0)).min();
        let part = &mut self.partitions[partition];
        if let Some(committed) = committed {
            while part.base < committed && !part.records.is_empty() {
                part.records.pop_front();
                part.base += 1;
            }
        }
        while part.records.len() > max_records {
            part.records.pop_front();
            part.base += 1;
        }
    }
}

#[async_trait]
impl EventLog for MemoryEventLog {
    async fn append(&self, topic: &str, records: Vec<Append>) -> Result<()> {
        let topic = self.topic(topic)?;
        let now = herald_core::time::now_ms();
        {
            let mut state = topic.state.lock();
            let partitions = state.partitions.len();
            for record in records {
                let p = partition_of(&record.key, partitions);
                state.partitions[p].records.push_back((record.key, record.value, now));
                state.trim(p, self.inner.max_records);
            }
        }
        topic.appended.notify_waiters();
        Ok(())
    }

    async fn ensure_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        let mut all = self.inner.topics.lock();
        for name in topics {
            all.entry(Arc::from(*name)).or_insert_with(|| {
                Arc::new(Topic {
                    name: Arc::from(*name),
                    state: Mutex::new(TopicState {
                        partitions: (0..partitions.max(1)).map(|_| Partition::default()).collect(),
                        groups: HashMap::new(),
                    }),
                    appended: Notify::new(),
                })
            });
        }
        Ok(())
    }

    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn LogConsumer>> {
        let topic = self.topic(topic)?;
        let member = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = topic.state.lock();
            let g = state.groups.entry(group.to_owned()).or_default();
            g.members.push(member);
            g.generation += 1;
        }
        topic.appended.notify_waiters();
        Ok(Box::new(MemoryConsumer {
            topic,
            group: group.to_owned(),
            member,
            generation: 0,
            cursors: HashMap::new(),
        }))
    }
}

struct MemoryConsumer {
    topic: Arc<Topic>,
    group: String,
    member: u64,
    /// The group generation `cursors` belong to (0: none yet).
    generation: u64,
    /// Next offset to read, per owned partition.
    cursors: HashMap<i32, i64>,
}

impl MemoryConsumer {
    fn try_read(&mut self, max: usize) -> Vec<LogRecord> {
        let mut state = self.topic.state.lock();
        let partitions = state.partitions.len();
        let Some(group) = state.groups.get(&self.group) else {
            return Vec::new();
        };
        if group.generation != self.generation {
            // Rebalance: partitions are dealt round-robin over the members, in join order.
            self.generation = group.generation;
            let index = group.members.iter().position(|m| *m == self.member).unwrap_or(0);
            let members = group.members.len().max(1);
            self.cursors = (0..partitions)
                .filter(|p| p % members == index)
                .map(|p| (p as i32, group.committed.get(&(p as i32)).copied().unwrap_or(0)))
                .collect();
        }
        let mut out = Vec::new();
        let mut owned: Vec<i32> = self.cursors.keys().copied().collect();
        owned.sort_unstable();
        for p in owned {
            let part = &mut state.partitions[p as usize];
            let cursor = self.cursors.entry(p).or_insert(0);
            // Records dropped by the cap are gone: skip to the oldest kept.
            *cursor = (*cursor).max(part.base);
            while *cursor < part.end() && out.len() < max {
                let (key, value, timestamp_ms) = &part.records[(*cursor - part.base) as usize];
                out.push(LogRecord {
                    topic: self.topic.name.clone(),
                    partition: p,
                    offset: *cursor,
                    key: key.clone(),
                    value: value.clone(),
                    timestamp_ms: *timestamp_ms,
                });
                *cursor += 1;
            }
        }
        out
    }
}

#[async_trait]
impl LogConsumer for MemoryConsumer {
    async fn poll(&mut self, max: usize) -> Result<Vec<LogRecord>> {
        let topic = self.topic.clone();
        loop {
            let appended = topic.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let records = self.try_read(max.max(1));
            if !records.is_empty() {
                return Ok(records);
            }
            appended.await;
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<()> {
        let mut state = self.topic.state.lock();
        let mut touched = Vec::new();
        if let Some(group) = state.groups.get_mut(&self.group) {
            for position in positions {
                if position.topic != self.topic.name || !self.cursors.contains_key(&position.partition) {
                    continue;
                }
                let committed = group.committed.entry(position.partition).or_insert(0);
                *committed = (*committed).max(position.next_offset);
                touched.push(position.partition as usize);
            }
        }
        // The cap was applied when appending; what the commit frees is dropped here.
        for p in touched {
            state.trim(p, usize::MAX);
        }
        Ok(())
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let mut state = self.topic.state.lock();
        if let Some(group) = state.groups.get_mut(&self.group) {
            group.members.retain(|m| *m != self.member);
            group.generation += 1;
        }
        drop(state);
        self.topic.appended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test]
    async fn memory_event_log_conforms() {
        conformance::event_log_scenarios(&MemoryEventLog::new(), "").await;
    }

    #[tokio::test]
    async fn members_of_a_group_share_the_partitions() {
        let log = MemoryEventLog::new();
        log.ensure_topics(&["t"], 4).await.unwrap();
        let mut a = log.consume("g", "t").await.unwrap();
        let mut b = log.consume("g", "t").await.unwrap();
        let records = (0..40).map(|i| Append { key: format!("k{i}").into(), value: "v".into() }).collect();
        log.append("t", records).await.unwrap();
        let from_a = a.poll(100).await.unwrap();
        let from_b = b.poll(100).await.unwrap();
        assert_eq!(from_a.len() + from_b.len(), 40);
        assert!(from_a.iter().all(|r| from_b.iter().all(|s| s.partition != r.partition)));
    }

    #[tokio::test]
    async fn committed_records_are_dropped_and_the_cap_holds() {
        let log = MemoryEventLog::with_max_records(10);
        log.ensure_topics(&["t"], 1).await.unwrap();
        let records = (0..25).map(|i| Append { key: "k".into(), value: format!("{i}").into() }).collect();
        log.append("t", records).await.unwrap();
        let mut c = log.consume("g", "t").await.unwrap();
        let read = c.poll(100).await.unwrap();
        assert_eq!(read.len(), 10, "only the newest 10 are kept");
        assert_eq!(read[0].offset, 15);
        c.commit(&[Position { topic: "t".into(), partition: 0, next_offset: 25 }]).await.unwrap();
        let topic = log.topic("t").unwrap();
        assert!(topic.state.lock().partitions[0].records.is_empty());
    }
}
