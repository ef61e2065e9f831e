//! Which records of each partition are finished, and so how far a consumer may commit.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use herald_backbone::{LogRecord, Position};
use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;

/// Which records of each partition are still being worked on.
#[derive(Default)]
pub(super) struct Offsets {
    partitions: HashMap<(Arc<str>, i32), PartitionOffsets>,
}

#[derive(Default)]
struct PartitionOffsets {
    /// Offsets not finished, with their records' append times.
    pending: BTreeMap<i64, i64>,
    /// One past the highest offset seen.
    end: i64,
    committed: i64,
}

impl Offsets {
    pub(super) fn begin(&mut self, record: &LogRecord) {
        let partition = self.partitions.entry((record.topic.clone(), record.partition)).or_default();
        partition.pending.insert(record.offset, record.timestamp_ms);
        partition.end = partition.end.max(record.offset + 1);
    }

    pub(super) fn finish(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.clone(), partition)) {
            p.pending.remove(&offset);
        }
    }

    /// Positions that moved since the last call: each partition's lowest record not
    /// finished (or its end when all are).
    pub(super) fn committable(&mut self) -> Vec<Position> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            let next = p.pending.first_key_value().map_or(p.end, |(offset, _)| *offset);
            if next > p.committed {
                p.committed = next;
                out.push(Position { topic: topic.clone(), partition: *partition, next_offset: next });
            }
        }
        out
    }

    /// When the oldest record not finished was appended (milliseconds since the
    /// epoch), if any is unfinished.
    pub(super) fn oldest_pending_ms(&self) -> Option<i64> {
        self.partitions.values().filter_map(|p| p.pending.first_key_value().map(|(_, at)| *at)).min()
    }

    /// The commit of `positions` failed: offer them again next time (the next commit
    /// covers them too).
    pub(super) fn uncommit(&mut self, positions: Vec<Position>) {
        for position in positions {
            if let Some(p) = self.partitions.get_mut(&(position.topic, position.partition)) {
                p.committed = p.committed.min(position.next_offset - 1);
            }
        }
    }
}

/// Marks a record finished when the last delivery made from it is dropped, and gives
/// its slot of the consumer's in-flight budget back.
pub struct RecordAck {
    offsets: Arc<Mutex<Offsets>>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    _slot: OwnedSemaphorePermit,
}

impl RecordAck {
    /// Begins `record` in `offsets`; it is finished when the ack is dropped.
    pub(super) fn begin(
        offsets: &Arc<Mutex<Offsets>>,
        record: &LogRecord,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        offsets.lock().begin(record);
        Self {
            offsets: offsets.clone(),
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            _slot: slot,
        }
    }
}

impl Drop for RecordAck {
    fn drop(&mut self) {
        self.offsets.lock().finish(&self.topic, self.partition, self.offset);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(offset: i64) -> LogRecord {
        LogRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            key: bytes::Bytes::new(),
            value: bytes::Bytes::new(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn a_partition_commits_up_to_its_lowest_unfinished_record() {
        let mut offsets = Offsets::default();
        for offset in 0..5 {
            offsets.begin(&record(offset));
        }
        let topic: Arc<str> = "t".into();
        offsets.finish(&topic, 0, 1);
        offsets.finish(&topic, 0, 2);
        assert!(offsets.committable().is_empty(), "0 is not finished");
        offsets.finish(&topic, 0, 0);
        assert_eq!(offsets.committable()[0].next_offset, 3);
        offsets.finish(&topic, 0, 4);
        offsets.finish(&topic, 0, 3);
        assert_eq!(offsets.committable()[0].next_offset, 5);
        assert!(offsets.committable().is_empty(), "nothing moved");
        // A record read again after a rebalance is simply worked on again.
        offsets.begin(&record(4));
        assert!(offsets.committable().is_empty());
        offsets.finish(&topic, 0, 4);
        assert!(offsets.committable().is_empty());
    }

    #[test]
    fn a_failed_commit_is_offered_again() {
        let mut offsets = Offsets::default();
        offsets.begin(&record(0));
        offsets.finish(&"t".into(), 0, 0);
        let positions = offsets.committable();
        offsets.uncommit(positions);
        assert_eq!(offsets.committable()[0].next_offset, 1);
    }

    /// Offsets `0..n`, finished in any order, with a commit attempt after each finish
    /// (`true`: that commit fails).
    fn finish_orders() -> impl Strategy<Value = (Vec<i64>, Vec<bool>)> {
        (1..40i64).prop_flat_map(|n| {
            (
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                proptest::collection::vec(any::<bool>(), n as usize),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the order records finish in, a commit never passes a record that
        /// is not finished, never goes back, and reaches the end once all are finished.
        #[test]
        fn commits_never_pass_an_unfinished_record((order, failures) in finish_orders()) {
            let topic: Arc<str> = "t".into();
            let mut offsets = Offsets::default();
            for offset in 0..order.len() as i64 {
                offsets.begin(&record(offset));
            }
            let mut finished = std::collections::BTreeSet::new();
            let mut committed = 0;
            for (offset, fails) in order.iter().zip(failures) {
                offsets.finish(&topic, 0, *offset);
                finished.insert(*offset);
                let positions = offsets.committable();
                prop_assert!(positions.len() <= 1);
                if let Some(position) = positions.first() {
                    let next = position.next_offset;
                    prop_assert!(next > committed, "went back from {} to {}", committed, next);
                    prop_assert!((0..next).all(|o| finished.contains(&o)), "{} passes an unfinished record", next);
                    if fails {
                        offsets.uncommit(positions);
                    } else {
                        committed = next;
                    }
                }
                // The lowest unfinished record is always committable in the end.
                let lowest = (0..order.len() as i64).find(|o| !finished.contains(o)).unwrap_or(order.len() as i64);
                prop_assert!(committed <= lowest);
            }
            if let Some(position) = offsets.committable().first() {
                committed = position.next_offset;
            }
            prop_assert_eq!(committed, order.len() as i64);
        }
    }
}
