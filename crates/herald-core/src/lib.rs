//! Herald's domain types, with no I/O: apps (tenants) and their limits, channel names,
//! socket ids, publications, Pusher protocol frames and error codes, and the HMAC
//! signatures Pusher uses for channel authorization, user sign-in and the HTTP API.
//!
//! Everything here is pure (but for [`time`]: the clock and a backoff timer) so that the edge, the gRPC API and the dispatcher agree on
//! one definition of "a valid channel" or "a correct signature".

pub mod app;
pub mod auth;
pub mod channel;
pub mod history;
pub mod pattern;
pub mod protocol;
pub mod publication;
pub mod sharded;
pub mod socket_id;
pub mod time;
pub mod trace;

pub use app::{App, AppLimits, Apps};
pub use channel::{ChannelKind, ChannelName, ChannelNameError};
pub use history::{HistoryRule, StreamPosition};
pub use pattern::ChannelPattern;
pub use protocol::ErrorCode;
pub use publication::{Publication, PublicationData};
pub use socket_id::SocketId;
pub use trace::TraceContext;
