//! `REDIS_GCRA_SCRIPT` against a real `redis-server`: grants, partial grants, the wait it
//! reports, key expiry, argument checks, and the rate holding across two connections that
//! stand in for two dispatcher replicas.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use herald_redis::REDIS_GCRA_SCRIPT;
use herald_testkit::redis::RedisServer;
use herald_webhooks::gcra::Rate;
use redis::{Script, aio::MultiplexedConnection};

async fn connect(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// One script call: `(granted, wait_us)`.
async fn acquire(con: &mut MultiplexedConnection, key: &str, rate: Rate, n: u32) -> (u32, u64) {
    Script::new(REDIS_GCRA_SCRIPT)
        .key(key)
        .arg(rate.emission_interval_micros())
        .arg(rate.burst)
        .arg(n)
        .invoke_async(con)
        .await
        .unwrap()
}

#[tokio::test]
async fn grants_the_burst_then_partially_then_reports_the_wait() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    let rate = Rate::new(10.0, 5).unwrap(); // 100 ms per cell

    assert_eq!(acquire(&mut con, "gcra:a", rate, 3).await, (3, 0));
    assert_eq!(acquire(&mut con, "gcra:a", rate, 3).await, (2, 0), "two of the burst were left");
    let (granted, wait_us) = acquire(&mut con, "gcra:a", rate, 3).await;
    assert_eq!(granted, 0);
    assert!(wait_us > 0 && wait_us <= 100_000, "wait {wait_us} µs");

    // Asking for nothing grants nothing and still says how long one cell would take.
    let (granted, wait_us) = acquire(&mut con, "gcra:a", rate, 0).await;
    assert_eq!(granted, 0);
    assert!(wait_us <= 100_000, "wait {wait_us} µs");

    // Limiters are independent per key.
    assert_eq!(acquire(&mut con, "gcra:b", rate, 10).await, (5, 0));

    // After the reported wait, a cell conforms.
    let (_, wait_us) = acquire(&mut con, "gcra:a", rate, 1).await;
    tokio::time::sleep(Duration::from_micros(wait_us)).await;
    assert_eq!(acquire(&mut con, "gcra:a", rate, 3).await.0, 1);
}

#[tokio::test]
async fn the_key_lives_only_until_the_bucket_is_full_again() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    let rate = Rate::new(50.0, 5).unwrap(); // 20 ms per cell, full after 100 ms

    assert_eq!(acquire(&mut con, "gcra:idle", rate, 5).await, (5, 0));
    let ttl_ms: i64 = redis::cmd("PTTL").arg("gcra:idle").query_async(&mut con).await.unwrap();
    assert!((1..=100).contains(&ttl_ms), "ttl {ttl_ms} ms");

    // The TAT is stored as whole microseconds, not in Lua's lossy default number format.
    let tat: String = redis::cmd("GET").arg("gcra:idle").query_async(&mut con).await.unwrap();
    assert!(tat.len() >= 16 && tat.bytes().all(|b| b.is_ascii_digit()), "{tat}");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exists: i64 = redis::cmd("EXISTS").arg("gcra:idle").query_async(&mut con).await.unwrap();
        if exists == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the idle limiter's key never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Gone means full: the whole burst again.
    assert_eq!(acquire(&mut con, "gcra:idle", rate, 10).await, (5, 0));
}

#[tokio::test]
async fn two_replicas_share_one_rate() {
    let server = RedisServer::start();
    let rate = Rate::new(50.0, 5).unwrap();
    let window = Duration::from_secs(2);
    let start = Instant::now();

    // Each "replica" asks for 3 cells at a time and sleeps the reported wait when refused.
    let replica = |mut con: MultiplexedConnection| async move {
        let (mut granted, mut partial) = (0u32, 0u32);
        while start.elapsed() < window {
            match acquire(&mut con, "gcra:shared", rate, 3).await {
                (0, wait_us) => {
                    assert!(wait_us > 0, "refused without a wait");
                    tokio::time::sleep(Duration::from_micros(wait_us)).await;
                }
                (g, wait_us) => {
                    assert_eq!(wait_us, 0);
                    assert!(g <= 3);
                    granted += g;
                    partial += u32::from(g < 3);
                }
            }
        }
        (granted, partial)
    };
    let (a, b) = tokio::join!(replica(connect(&server).await), replica(connect(&server).await));
    let total = a.0 + b.0;

    // The burst plus 50/s over 2 s is 105; the lower bound leaves room for scheduling.
    assert!((95..=106).contains(&total), "granted {total} in {window:?} (replicas {a:?} {b:?})");
    assert!(a.0 > 0 && b.0 > 0, "both replicas got cells: {a:?} {b:?}");
    assert!(a.1 + b.1 > 0, "some grants were partial");
}

#[tokio::test]
async fn malformed_arguments_are_errors_not_grants() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    for (interval, burst, n) in
        [("0", "5", "1"), ("1.5", "5", "1"), ("x", "5", "1"), ("100", "0", "1"), ("100", "5", "-1")]
    {
        let result: redis::RedisResult<(u32, u64)> = Script::new(REDIS_GCRA_SCRIPT)
            .key("gcra:bad")
            .arg(interval)
            .arg(burst)
            .arg(n)
            .invoke_async(&mut con)
            .await;
        let err = result.expect_err("malformed arguments");
        assert!(err.to_string().contains("gcra"), "{interval} {burst} {n}: {err}");
    }
    let exists: i64 = redis::cmd("EXISTS").arg("gcra:bad").query_async(&mut con).await.unwrap();
    assert_eq!(exists, 0, "nothing was written");
}
