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
use redis::{FromRedisValue, aio::MultiplexedConnection};

/// A multiplexed (pipelined) connection that is replaced when it breaks (Redis
/// restarted or the network dropped it). A command that finds the connection already
/// broken is sent once more on a fresh one; a failure after that is `Unavailable`.
pub(crate) struct Connection {
    client: redis::Client,
    current: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Connection {
    pub(crate) async fn open(config: &RedisConfig) -> Result<Self> {
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        let first = client.get_multiplexed_async_connection().await.map_err(unavailable)?;
        Ok(Self { client, current: tokio::sync::Mutex::new(Some(first)) })
    }

    async fn get(&self) -> Result<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            return Ok(connection.clone());
        }
        let fresh = self.client.get_multiplexed_async_connection().await.map_err(unavailable)?;
        *current = Some(fresh.clone());
        Ok(fresh)
    }

    /// Runs `command` (a command, pipeline or script invocation), reconnecting once
    /// if the connection turns out to be broken.
    pub(crate) async fn run<T, F, Fut>(&self, command: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut retried = false;
        loop {
            match command(self.get().await?).await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    self.current.lock().await.take();
                    if retried {
                        return Err(unavailable(e));
                    }
                    retried = true;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T> {
        self.run(|mut connection| async move { command.query_async(&mut connection).await }).await
    }
}

/// `.run(&connection)` for script invocations.
pub(crate) trait RunScript {
    fn run<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a;
}

impl RunScript for redis::ScriptInvocation<'_> {
    fn run<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a {
        connection.run(move |mut c| async move { self.invoke_async(&mut c).await })
    }
}

/// `.run_on(&connection)` for commands.
pub(crate) trait RunCommand {
    fn run_on<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a;
}

impl RunCommand for redis::Cmd {
    fn run_on<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        connection: &'a Connection,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'a {
        connection.query(self)
    }
}

/// Every Redis failure is the backbone being unavailable: the operation did not happen.
fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}
