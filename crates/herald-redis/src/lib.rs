//! Herald's backbone over Redis, so that stateless edge nodes behave as one server.
//!
//! | module | what |
//! |---|---|
//! | `broker` | [`RedisBroker`]: interest-based fan-out over Redis pub/sub, pipelined publishing, reconnect and resubscribe |
//! | `idempotency` | [`RedisIdempotency`]: idempotency keys shared by every node |
//! | `presence` | [`RedisPresence`]: occupancy and presence members, cluster-wide, one Lua script per change |
//! | `wire` | how a [`herald_backbone::Message`] travels through Redis |
//!
//! Every implementation here passes [`herald_backbone::conformance`] against a real
//! `redis-server` (see `tests/`).

mod broker;
mod idempotency;
mod presence;
mod wire;

pub use broker::{RedisBroker, RedisConfig};
pub use idempotency::RedisIdempotency;
pub use presence::{OnReaped, Reaped, RedisPresence};

use herald_backbone::{Error, Result};
use redis::aio::MultiplexedConnection;

/// A multiplexed (pipelined) connection to the configured Redis; it reconnects by
/// itself after Redis comes back.
async fn connect(config: &RedisConfig) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
    client.get_multiplexed_async_connection().await.map_err(unavailable)
}

/// Every Redis failure is the backbone being unavailable: the operation did not happen.
fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}
