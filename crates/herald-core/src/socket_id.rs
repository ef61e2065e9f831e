//! Socket ids: `<node>.<connection>`, unique across the cluster.

use std::{fmt, str::FromStr};

/// A connection's id as Pusher clients see it (`123.456`). The node part is chosen at
/// node start-up, the connection part counts up, so ids are unique across nodes and
/// a node can tell whether an id is one of its own connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub node: u32,
    pub conn: u64,
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.conn)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket_id must look like 1234.5678")]
pub struct InvalidSocketId;

impl FromStr for SocketId {
    type Err = InvalidSocketId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (node, conn) = s.split_once('.').ok_or(InvalidSocketId)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(node) || !digits(conn) {
            return Err(InvalidSocketId);
        }
        Ok(Self {
            node: node.parse().map_err(|_| InvalidSocketId)?,
            conn: conn.parse().map_err(|_| InvalidSocketId)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let id: SocketId = "123.456".parse().unwrap();
        assert_eq!(id, SocketId { node: 123, conn: 456 });
        assert_eq!(id.to_string(), "123.456");
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "-1.2", "1.+2"] {
            assert!(bad.parse::<SocketId>().is_err(), "{bad}");
        }
    }
}
