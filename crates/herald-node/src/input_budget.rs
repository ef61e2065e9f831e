//! The node-wide budget of unfinished client input.
//!
//! A client may send the start of a frame, or the first fragments of a message, and
//! then nothing: the edge holds those bytes (up to `max_message_bytes` a connection)
//! until the rest comes or the connection ends. Bounded per connection only, a few
//! hundred such clients pin tens of megabytes. So every session accounts here for
//! the unfinished input it holds, and one that would take the node past
//! `connection.max_pending_input_bytes` is closed instead.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of unfinished input held by all of a node's connections, and their limit.
#[derive(Debug)]
pub struct InputBudget {
    limit: usize,
    held: AtomicUsize,
}

impl InputBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, held: AtomicUsize::new(0) }
    }

    /// Moves one connection's share from `from` to `to` bytes. Shrinking always
    /// succeeds; growing past the limit fails and changes nothing.
    pub fn resize(&self, from: usize, to: usize) -> bool {
        // The common case, a session holding nothing before and after a message:
        // no write to the node-wide counter every session shares.
        if to == from {
            return true;
        }
        if to < from {
            self.held.fetch_sub(from - to, Ordering::AcqRel);
            return true;
        }
        let grow = to - from;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(grow).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_the_limit_and_shrinks_freely() {
        let budget = InputBudget::new(100);
        assert!(budget.resize(0, 60));
        assert!(!budget.resize(0, 41), "60 + 41 is over the limit");
        assert_eq!(budget.held(), 60, "a refused growth changes nothing");
        assert!(budget.resize(0, 40));
        assert!(budget.resize(60, 10));
        assert!(budget.resize(0, 50));
        assert_eq!(budget.held(), 100);
        assert!(budget.resize(50, 0) && budget.resize(40, 0) && budget.resize(10, 0));
        assert_eq!(budget.held(), 0);
    }
}
