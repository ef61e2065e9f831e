//! The webhook store and rate limiter over real Redis: single, sharded and cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use herald_dispatcher::{
    gcra::Rate,
    limiter::Leases,
    store::{ATTEMPTS_KEPT, AttemptRecord, WebhookStore, conformance},
};
use herald_redis::{RedisConfig, RedisRateLimiter, RedisWebhookStore};
use herald_testkit::redis::{RedisCluster, RedisServer};

fn config(instances: &[&RedisServer]) -> RedisConfig {
    RedisConfig::sharded(instances.iter().map(|r| r.url()).collect())
}

#[tokio::test]
async fn the_store_conforms_on_one_redis_on_shards_and_on_a_cluster() {
    let redis = RedisServer::start();
    conformance::store_scenarios(&RedisWebhookStore::connect(&config(&[&redis])).await.unwrap()).await;

    let shards = [RedisServer::start(), RedisServer::start(), RedisServer::start()];
    let sharded = config(&shards.iter().collect::<Vec<_>>());
    conformance::store_scenarios(&RedisWebhookStore::connect(&sharded).await.unwrap()).await;

    let cluster = RedisCluster::start();
    let on_cluster = RedisConfig { cluster: true, ..RedisConfig::sharded(cluster.urls()) };
    conformance::store_scenarios(&RedisWebhookStore::connect(&on_cluster).await.unwrap()).await;
}

#[tokio::test]
async fn attempts_are_trimmed_to_the_newest() {
    let redis = RedisServer::start();
    let store = RedisWebhookStore::connect(&config(&[&redis])).await.unwrap();
    for n in 0..(ATTEMPTS_KEPT as u32 + 20) {
        let attempt = AttemptRecord {
            webhook_id: format!("msg_{n}"),
            endpoint_id: "ep".into(),
            attempt: 1,
            time_ms: i64::from(n),
            status: 204,
            latency_ms: 1,
            response_excerpt: String::new(),
            error: String::new(),
        };
        store.record_attempt("app", &attempt).await.unwrap();
    }
    let kept = store.attempts("app", "ep", None, usize::MAX).await.unwrap();
    assert_eq!(kept.len(), ATTEMPTS_KEPT);
    assert_eq!(kept[0].webhook_id, format!("msg_{}", ATTEMPTS_KEPT + 19));
}

#[tokio::test]
async fn two_replicas_share_one_limit_through_leases() {
    let redis = RedisServer::start();
    let rate = Rate::new(200.0, 20).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let limiter = RedisRateLimiter::connect(&config(&[&redis])).await.unwrap();
        replicas.push(Arc::new(Leases::new(Arc::new(limiter))));
    }
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for leases in replicas {
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u32;
            while started.elapsed() < window {
                match leases.take_one("app:limited", rate).await.unwrap() {
                    None => granted += 1,
                    Some(wait) => {
                        tokio::time::sleep(wait.min(window.saturating_sub(started.elapsed()))).await
                    }
                }
            }
            granted
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    // 200/s for 2 s plus the burst, never more (a lease is counted when taken);
    // leases not spent in time only lower it.
    assert!(total <= 400 + 20 + 2, "{total} granted");
    assert!(total >= 320, "{total} granted");
}
