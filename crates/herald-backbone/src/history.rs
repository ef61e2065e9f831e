//! Channel history as the backbone keeps it: what a channel keeps ([`Retention`]), how
//! it is read ([`HistoryQuery`]) and what a read returns ([`HistoryPage`]). The
//! [`Broker`](crate::Broker) keeps it, because a publication's offset must be given in
//! the same step that sends it to the nodes: that is what makes the order of offsets
//! the order every subscriber receives them in.

use std::time::Duration;

use herald_core::{HistoryRule, Publication, StreamPosition};

/// What a channel keeps: the last `size` publications, each for `ttl`; its offset and
/// epoch for `meta_ttl` after it was last published to or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub size: usize,
    pub ttl: Duration,
    pub meta_ttl: Duration,
}

impl From<&HistoryRule> for Retention {
    fn from(rule: &HistoryRule) -> Self {
        Self { size: rule.size, ttl: rule.ttl, meta_ttl: rule.meta_ttl }
    }
}

/// Which end of the kept publications a read takes `limit` from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// The oldest first: what follows `since`, in publish order (a recovery).
    #[default]
    Forward,
    /// The newest first (the latest messages of a chat).
    Backward,
}

/// A read of a channel's history: the kept publications with an offset above `since`
/// (all kept ones when `None`), at most `limit` of them, from the end `direction` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub since: Option<u64>,
    pub limit: usize,
    pub direction: Direction,
}

impl HistoryQuery {
    /// Everything kept after `offset`, oldest first (a recovery).
    pub fn after(offset: u64, limit: usize) -> Self {
        Self { since: Some(offset), limit, direction: Direction::Forward }
    }

    /// Just the channel's position (no publications).
    pub fn position() -> Self {
        Self { since: None, limit: 0, direction: Direction::Forward }
    }
}

/// The answer to a [`HistoryQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The channel's latest position: the offset of its last publication (0: none in
    /// this epoch) and the epoch. Every publication made after the read that returned
    /// it has a greater offset.
    pub position: StreamPosition,
    /// The oldest offset still kept (`position.offset + 1` when nothing is kept).
    pub first: u64,
    /// The publications read, each with its position, in the query's direction.
    pub publications: Vec<Publication>,
}

impl HistoryPage {
    /// Whether a client at `since` can have everything it missed from this channel's
    /// history: same epoch, not ahead of it, and every offset after it still kept.
    pub fn recovers(&self, since: &StreamPosition) -> bool {
        since.epoch == self.position.epoch
            && since.offset <= self.position.offset
            && since.offset.saturating_add(1) >= self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(top: u64, first: u64) -> HistoryPage {
        HistoryPage { position: StreamPosition::new(top, "e"), first, publications: vec![] }
    }

    #[test]
    fn recovers_only_an_unbroken_run_of_the_same_epoch() {
        let at = |offset| StreamPosition::new(offset, "e");
        assert!(page(10, 6).recovers(&at(5)), "6..=10 kept");
        assert!(page(10, 6).recovers(&at(10)), "nothing missed");
        assert!(!page(10, 6).recovers(&at(4)), "5 was trimmed");
        assert!(!page(10, 6).recovers(&at(11)), "ahead of the channel");
        assert!(!page(10, 6).recovers(&StreamPosition::new(7, "other")), "another epoch");
        assert!(page(10, 11).recovers(&at(10)), "nothing kept, nothing missed");
        assert!(!page(10, 11).recovers(&at(9)), "nothing kept, one missed");
        assert!(page(0, 1).recovers(&at(0)), "a new channel");
    }
}
