//! Local fan-out: the per-node registry of which sessions subscribe to which channels
//! ([`Hub`]), and each session's bounded outbound queue ([`Outbox`]). No sockets here,
//! so the fan-out path is unit-testable.
//!
//! A publication is encoded into its WebSocket frame once per node; every local
//! subscriber's queue gets a clone of the same [`bytes::Bytes`] (a reference count, not
//! a copy). Server-to-client frames are unmasked, so the bytes on the wire are the same
//! for every subscriber.

pub mod frame;
mod hub;
mod outbox;

pub use hub::{ConnId, Hub};
pub use outbox::{Batch, Close, Outbox, Push};
