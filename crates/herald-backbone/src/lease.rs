//! Leases: how a presence backend that several nodes share (Redis) keeps each node's
//! share of it right.
//!
//! **Each node is the source of truth for its own connections**; the backend holds a
//! copy that every node can rebuild. A node's lease says it is alive: when a node
//! crashes, its lease runs out and another node removes its connections
//! ([`LeaseHolder::reaped`]). When a node's own view of the backend was interrupted (a
//! stall, a partition, a restart with or without data, a write that failed), the
//! backend asks the node to re-assert its share ([`LeaseHolder::reassert`]), giving it
//! what the backend holds for it, so the node removes what is no longer true and adds
//! back what is missing.

use async_trait::async_trait;
use herald_core::{ChannelName, SocketId};

use crate::{Member, Result};

/// What a reap changed in one channel because another node's lease expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaped {
    pub app_id: String,
    pub channel: ChannelName,
    /// A presence member that left (publish `member_removed`); `None`: the channel
    /// lost its last subscriber (it may be vacated).
    pub member: Option<Member>,
}

/// One entry the backend holds for a node: its subscription count of a channel, or
/// one of its presence connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Count { app_id: String, channel: ChannelName },
    Member { app_id: String, channel: ChannelName, socket: SocketId },
}

/// Why a node re-asserts its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gap {
    /// The node's view was interrupted (failed or late writes): the backend's copy may
    /// miss changes, but nobody was told anything.
    Interrupted,
    /// The node's lease was found gone: another node took it for a crash and removed
    /// its connections, telling their channels so (`member_removed`, `vacated`).
    Expired,
    /// The backend lost its data (restarted empty): nobody was told anything, and
    /// every node rebuilds its share.
    Lost,
}

impl Gap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interrupted => "interrupted",
            Self::Expired => "expired",
            Self::Lost => "lost",
        }
    }

    /// The worse of two gaps: what the re-assertion must assume.
    pub fn max(self, other: Self) -> Self {
        let rank = |g: Self| match g {
            Self::Interrupted => 0,
            Self::Expired => 1,
            Self::Lost => 2,
        };
        if rank(other) > rank(self) { other } else { self }
    }
}

/// A node, as its lease keeper sees it.
#[async_trait]
pub trait LeaseHolder: Send + Sync + 'static {
    /// Another node's lease expired and this node removed one of its connections:
    /// tell the channel (called on the lease task: hand off, do not block).
    fn reaped(&self, reaped: Reaped);

    /// Whether a write of this node's share failed since the last call (the backend's
    /// copy may be wrong even though the lease looked fine). Clears the flag.
    fn take_dirty(&self) -> bool;

    /// Makes the backend's copy of this node's share right again: removes what `held`
    /// (the backend's copy, read just before) has that the node no longer has, and adds
    /// back everything the node has. Idempotent; an error leaves it to be retried.
    async fn reassert(&self, held: Vec<Held>, gap: Gap) -> Result<()>;
}
