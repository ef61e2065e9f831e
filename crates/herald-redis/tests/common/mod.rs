//! What the Redis test files share.

use std::future::Future;

use herald_backbone::conformance;
use herald_redis::{RedisBroker, RedisConfig, RedisPresence};

/// The broker, history and presence conformance scenarios over `config`;
/// `forget_all` makes every Redis behind it lose everything (the history's store lost).
pub async fn conforms<F: Future<Output = ()>>(config: &RedisConfig, forget_all: impl FnOnce() -> F) {
    let shared = config.clone();
    conformance::broker_scenarios(|a, b| async move {
        let a = RedisBroker::connect(shared.clone(), a).await.unwrap();
        let b = RedisBroker::connect(shared, b).await.unwrap();
        (a, b)
    })
    .await;
    let shared = config.clone();
    conformance::history_scenarios(
        |a, b| async move {
            let a = RedisBroker::connect(shared.clone(), a).await.unwrap();
            let b = RedisBroker::connect(shared, b).await.unwrap();
            (a, b)
        },
        forget_all,
    )
    .await;
    conformance::presence_scenarios(&RedisPresence::connect(config).await.unwrap()).await;
}

/// `FLUSHALL` on a connection; a replica of a Redis Cluster refuses (READONLY): its
/// master's flush reaches it.
pub async fn flush(connection: &mut redis::aio::MultiplexedConnection) {
    let _: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(connection).await;
}
