//! Leases against the shared Redis limit: two replicas, one limit, a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use herald_dispatcher::limiter::Leases;
use herald_redis::{RedisConfig, RedisRateLimiter};
use herald_testkit::redis::RedisServer;
use herald_webhooks::gcra::Rate;

#[tokio::test]
async fn two_replicas_leasing_from_one_limit_stay_within_it() {
    let redis = RedisServer::start();
    let (per_second, burst) = (200.0, 20);
    let rate = Rate::new(per_second, burst).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let limiter = RedisRateLimiter::connect(&RedisConfig::sharded(vec![redis.url()])).await.unwrap();
        replicas.push(Leases::new(Arc::new(limiter)));
    }
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for leases in replicas {
        tasks.spawn(async move {
            let mut granted = 0u32;
            while started.elapsed() < window {
                match leases.take_one("app", rate).await.unwrap() {
                    None => granted += 1,
                    Some(wait) => {
                        tokio::time::sleep(wait.min(window.saturating_sub(started.elapsed()))).await
                    }
                }
            }
            granted
        });
    }
    let mut total = 0;
    while let Some(granted) = tasks.join_next().await {
        total += granted.unwrap();
    }
    // GCRA grants at most burst + rate × (time between first and last grant). Cells are
    // spent only inside the window, except the one cell a replica's last call may bring
    // back after it ended: one each for two replicas, plus one for the server's clock
    // (Redis `TIME`) and `Instant` not being the same clock.
    let most = (per_second * window.as_secs_f64()) as u32 + burst + 2 + 1;
    assert!(total <= most, "{total} granted, at most {most} allowed");
    // Unspent leases and late wake-ups only lower it; the burst absorbs wake-ups up to
    // (burst - 1) × 5 ms late, so only a badly stalled machine gets below 80 %.
    let least = (per_second * window.as_secs_f64() * 0.8) as u32;
    assert!(total >= least, "{total} granted, expected at least {least}");
}
