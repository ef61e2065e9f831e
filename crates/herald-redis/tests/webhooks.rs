//! The webhook store and rate limiter against real `redis-server`s: one, several
//! independent ones (sharded by app id) and a Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use herald_redis::{RedisConfig, RedisRateLimiter, RedisWebhookStore};
use herald_testkit::redis::{RedisCluster, RedisServer};
use herald_webhooks::{
    gcra::Rate,
    limiter::RateLimiter,
    store::{
        ATTEMPTS_KEPT, DEAD_LETTERS_KEPT, RETENTION_MS, WebhookStore,
        conformance::{self, attempt, dead},
    },
};

/// One instance, or several sharded by key.
fn config(instances: &[&RedisServer]) -> RedisConfig {
    RedisConfig::sharded(instances.iter().map(|r| r.url()).collect())
}

fn cluster_config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig { cluster: true, ..RedisConfig::sharded(cluster.urls()) }
}

#[tokio::test]
async fn the_store_conforms_on_one_redis() {
    let redis = RedisServer::start();
    conformance::store_scenarios(&RedisWebhookStore::connect(&config(&[&redis])).await.unwrap()).await;
}

#[tokio::test]
async fn the_store_conforms_on_shards() {
    let shards = [RedisServer::start(), RedisServer::start(), RedisServer::start()];
    let store = RedisWebhookStore::connect(&config(&shards.iter().collect::<Vec<_>>())).await.unwrap();
    conformance::store_scenarios(&store).await;
    // Each app's keys live together, on one instance.
    let mut holding = Vec::new();
    for redis in &shards {
        let mut connection =
            redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg("herald:*").query_async(&mut connection).await.unwrap();
        holding.push(keys);
    }
    for app in ["{wh:5:app-1}", "{wh:5:app-2}"] {
        let on = holding.iter().filter(|keys| keys.iter().any(|k| k.contains(app))).count();
        assert_eq!(on, 1, "{app}'s keys are on one instance: {holding:?}");
    }
}

#[tokio::test]
async fn the_store_and_the_limiter_work_on_a_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisWebhookStore::connect(&cluster_config(&cluster)).await.unwrap();
    conformance::store_scenarios(&store).await;
    // The multi-key scripts with apps whose keys land on other slots than the above.
    for app in ["a", "b", "c", "d", "e", "f"] {
        store.put_dead_letter(app, &dead("msg", 1)).await.unwrap();
        assert_eq!(store.dead_letters(app, 0, 10).await.unwrap().len(), 1);
        assert!(store.take_dead_letter(app, "msg").await.unwrap().is_some());
    }

    let limiter = RedisRateLimiter::connect(&cluster_config(&cluster)).await.unwrap();
    let rate = Rate::new(1.0, 3).unwrap();
    assert_eq!(limiter.take("app:ep", rate, 5).await.unwrap(), (3, Duration::ZERO));
    let (granted, wait) = limiter.take("app:ep", rate, 1).await.unwrap();
    assert_eq!(granted, 0);
    // About one interval, less the time since the first take.
    assert!(wait > Duration::from_millis(100) && wait <= Duration::from_secs(1), "{wait:?}");
}

#[tokio::test]
async fn attempts_keep_the_newest_and_drop_those_past_retention() {
    let redis = RedisServer::start();
    let store = RedisWebhookStore::connect(&config(&[&redis])).await.unwrap();
    // One by one, since their order is what's tested (about 1k local round trips).
    let recorded = ATTEMPTS_KEPT + 20;
    for n in 0..recorded {
        store.record_attempt("app", &attempt("ep", &format!("msg_{n}"), 1, n as i64)).await.unwrap();
    }
    let kept = store.attempts("app", "ep", None, usize::MAX).await.unwrap();
    let expected: Vec<String> = (20..recorded).rev().map(|n| format!("msg_{n}")).collect();
    assert_eq!(kept.into_iter().map(|a| a.webhook_id).collect::<Vec<_>>(), expected);
    assert_eq!(store.attempts("app", "ep", None, 3).await.unwrap().len(), 3);
    assert!(store.attempts("app", "ep", None, 0).await.unwrap().is_empty());
    let one = store.attempts("app", "ep", Some("msg_500"), usize::MAX).await.unwrap();
    assert_eq!(one, [attempt("ep", "msg_500", 1, 500)]);
    assert!(store.attempts("app", "ep", Some("msg_5"), 10).await.unwrap().is_empty(), "trimmed");

    // Older than the retention compared with the newest: dropped as the newer arrive.
    store.record_attempt("app", &attempt("old", "msg_a", 1, 1_000)).await.unwrap();
    store.record_attempt("app", &attempt("old", "msg_b", 1, 2_000)).await.unwrap();
    store.record_attempt("app", &attempt("old", "msg_c", 1, 1_500 + RETENTION_MS)).await.unwrap();
    let kept = store.attempts("app", "old", None, 10).await.unwrap();
    assert_eq!(kept.iter().map(|a| a.webhook_id.as_str()).collect::<Vec<_>>(), ["msg_c", "msg_b"]);
}

#[tokio::test]
async fn dead_letters_keep_the_newest_and_drop_those_past_retention() {
    let redis = RedisServer::start();
    let store = Arc::new(RedisWebhookStore::connect(&config(&[&redis])).await.unwrap());
    // Concurrently (pipelined on the connection): trimming goes by failure time, not by
    // arrival, so the order they land in doesn't matter.
    let put = DEAD_LETTERS_KEPT + 5;
    let mut puts = tokio::task::JoinSet::new();
    for n in 0..put {
        let store = store.clone();
        puts.spawn(async move { store.put_dead_letter("app", &dead(&format!("msg_{n}"), n as i64)).await });
    }
    while let Some(done) = puts.join_next().await {
        done.unwrap().unwrap();
    }
    let kept = store.dead_letters("app", 0, usize::MAX).await.unwrap();
    assert_eq!(kept.len(), DEAD_LETTERS_KEPT);
    assert_eq!(kept[0], dead(&format!("msg_{}", put - 1), put as i64 - 1), "newest first");
    assert_eq!(kept[DEAD_LETTERS_KEPT - 1].webhook_id, "msg_5");
    assert!(store.take_dead_letter("app", "msg_4").await.unwrap().is_none(), "trimmed");
    assert!(store.dead_letters("app", 0, 0).await.unwrap().is_empty());
    assert_eq!(store.dead_letters("app", put as i64 - 10, 100).await.unwrap().len(), 10);

    // Replacing one moves it rather than duplicating it.
    store.put_dead_letter("app", &dead("msg_5000", put as i64)).await.unwrap();
    let newest = store.dead_letters("app", 0, 2).await.unwrap();
    let newest: Vec<_> = newest.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(newest, ["msg_5000", format!("msg_{}", put - 1).as_str()]);
    assert_eq!(store.dead_letters("app", 0, usize::MAX).await.unwrap().len(), DEAD_LETTERS_KEPT);

    // One that failed more than the retention after msg_100: msg_5..=msg_99 go.
    store.put_dead_letter("app", &dead("msg_late", 100 + RETENTION_MS)).await.unwrap();
    let kept = store.dead_letters("app", 0, usize::MAX).await.unwrap();
    assert_eq!(kept.len(), DEAD_LETTERS_KEPT - 95 + 1);
    assert_eq!(kept[0].webhook_id, "msg_late");
    assert_eq!(kept.last().unwrap().webhook_id, "msg_100");
}

#[tokio::test]
async fn two_replays_at_once_take_a_dead_letter_once() {
    let redis = RedisServer::start();
    let (a, b) = (
        RedisWebhookStore::connect(&config(&[&redis])).await.unwrap(),
        RedisWebhookStore::connect(&config(&[&redis])).await.unwrap(),
    );
    for n in 0..50 {
        let id = format!("msg_{n}");
        a.put_dead_letter("app", &dead(&id, n)).await.unwrap();
        let (on_a, on_b) = tokio::join!(a.take_dead_letter("app", &id), b.take_dead_letter("app", &id));
        let taken = [on_a.unwrap(), on_b.unwrap()];
        assert_eq!(taken.iter().flatten().collect::<Vec<_>>(), [&dead(&id, n)], "exactly one replay");
    }
    assert!(a.dead_letters("app", 0, 100).await.unwrap().is_empty());
}
