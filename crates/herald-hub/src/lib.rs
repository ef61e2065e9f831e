//! Local fan-out: the per-node registry of which sessions subscribe to which channels
//! ([`Hub`]), and each connection's send side ([`Outbox`]): its socket, written
//! straight into by the fan-out, and a bounded queue for what the socket cannot take.
//!
//! A publication is encoded into its WebSocket frame once per node; every local
//! subscriber's queue gets a clone of the same [`bytes::Bytes`] (a reference count, not
//! a copy). Server-to-client frames are unmasked, so the bytes on the wire are the same
//! for every subscriber.

pub mod frame;
mod hub;
mod outbox;

pub use hub::{CaughtUp, ConnId, Hub};
pub use outbox::{Close, Outbox, Push, Status, Wake, millis};
