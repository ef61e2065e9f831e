//! The broker contract against a real `redis-server` (started here, on a free port),
//! and what happens when Redis goes away and comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use herald_backbone::{
    Broker, Error, MessageHandler, Topic,
    conformance::{Recorder, publication},
};
use herald_core::ChannelName;
use herald_redis::{RedisBroker, RedisConfig, RedisIdempotency, RedisPresence};
use herald_testkit::redis::{RedisCluster, RedisServer};
use herald_testkit::{Deadline, eventually_async};

fn config(redis: &RedisServer) -> RedisConfig {
    RedisConfig { max_backoff: Duration::from_millis(200), ..RedisConfig::new(redis.url()) }
}

fn topic(channel: &str) -> Topic {
    Topic::channel(&Arc::from("app1"), &ChannelName::new(channel).unwrap())
}

#[tokio::test]
async fn one_redis_conforms() {
    let redis = RedisServer::start();
    conforms(&config(&redis), vec![redis.url()]).await;
}

#[tokio::test]
async fn presence_is_shared_by_every_node_of_the_cluster() {
    use herald_backbone::{ChannelCount, CountChange, Member, MemberChange, PresenceManager};
    use herald_core::SocketId;
    let redis = RedisServer::start();
    let (a, b) = (
        RedisPresence::connect(&config(&redis)).await.unwrap(),
        RedisPresence::connect(&config(&redis)).await.unwrap(),
    );
    let room = ChannelName::new("presence-room").unwrap();
    let alice = Member { user_id: "alice".into(), user_info: serde_json::json!({ "n": 1 }) };
    let (on_a, on_b) = (SocketId { node: 1, conn: 1 }, SocketId { node: 2, conn: 1 });
    let one = [ChannelCount { app_id: "app".into(), channel: room.clone(), count: 1 }];
    assert_eq!(a.set_counts(1, &one).await.unwrap(), [CountChange { before: 0, after: 1 }]);
    let counted = b.set_counts(2, &one).await.unwrap();
    assert_eq!(counted, [CountChange { before: 1, after: 2 }], "counts are cluster-wide");
    let first = a.add_member("app", &room, on_a, alice.clone(), 10).await.unwrap();
    let second = b.add_member("app", &room, on_b, alice.clone(), 10).await.unwrap();
    assert_eq!((first, second), (MemberChange::Changed(alice.clone()), MemberChange::Unchanged));
    assert_eq!(b.members("app", &room).await.unwrap(), std::slice::from_ref(&alice));
    assert_eq!(a.remove_member("app", &room, on_a).await.unwrap(), MemberChange::Unchanged);
    assert_eq!(b.remove_member("app", &room, on_b).await.unwrap(), MemberChange::Changed(alice));
}

#[tokio::test]
async fn an_idempotency_key_is_claimed_once_by_the_whole_cluster() {
    use herald_backbone::{Claim, IdempotencyStore};
    let redis = RedisServer::start();
    let a = RedisIdempotency::connect(&config(&redis)).await.unwrap();
    let b = RedisIdempotency::connect(&config(&redis)).await.unwrap();
    let window = Duration::from_millis(500);
    assert_eq!(a.claim("app", "k", "id-a", window).await.unwrap(), Claim::Won);
    assert_eq!(b.claim("app", "k", "id-b", window).await.unwrap(), Claim::Pending);
    a.complete("app", "k", "id-a", window).await.unwrap();
    assert_eq!(b.claim("app", "k", "id-b", window).await.unwrap(), Claim::Done("id-a".into()));
    assert_eq!(b.claim("other-app", "k", "id-b", window).await.unwrap(), Claim::Won, "keys are per app");
    // A failed publish releases the key; an expired window frees it too.
    b.release("other-app", "k").await.unwrap();
    assert_eq!(a.claim("other-app", "k", "id-c", window).await.unwrap(), Claim::Won);
    // The window is Redis's timer, not ours: the completed key expires within it (never
    // later, never not at all), and once it has, the key is free again.
    let config = config(&redis);
    let completed = format!("{}:idem:3:app:k", config.prefix);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&completed).query_async(&mut raw).await.unwrap();
    // -2: already gone (a slow machine); -1 would be a key that never expires.
    assert!(ttl_ms == -2 || (1..=500).contains(&ttl_ms), "{completed} expires in {ttl_ms} ms");
    let b = &b;
    eventually_async("the completed key to expire", || async move {
        b.claim("app", "k", "id-d", window).await.unwrap() == Claim::Won
    })
    .await;
}

/// The conformance scenarios over `config`; `instances` are every Redis behind it.
async fn conforms(config: &RedisConfig, instances: Vec<String>) {
    common::conforms(config, || async move {
        for url in instances {
            let client = redis::Client::open(url).unwrap();
            common::flush(&mut client.get_multiplexed_async_connection().await.unwrap()).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sharded_over_three_instances_the_backbone_conforms_and_spreads() {
    let instances = [RedisServer::start(), RedisServer::start(), RedisServer::start()];
    let sharded = RedisConfig {
        max_backoff: Duration::from_millis(200),
        ..RedisConfig::sharded(instances.iter().map(RedisServer::url).collect())
    };
    conforms(&sharded, instances.iter().map(RedisServer::url).collect()).await;

    // Topics really are spread: every instance carries some of 60 channels.
    let broker = RedisBroker::connect(sharded, Arc::new(Recorder::default())).await.unwrap();
    for i in 0..60 {
        broker.subscribe(&topic(&format!("spread-{i}"))).await.unwrap();
    }
    for instance in &instances {
        let client = redis::Client::open(instance.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let channels: Vec<String> =
            redis::cmd("PUBSUB").arg("CHANNELS").arg("*spread-*").query_async(&mut connection).await.unwrap();
        assert!((5..45).contains(&channels.len()), "{} of 60 on {}", channels.len(), instance.url());
    }
}

#[tokio::test]
async fn over_a_redis_cluster_the_backbone_conforms_with_sharded_pubsub() {
    use herald_backbone::{Claim, IdempotencyStore};
    let cluster = RedisCluster::start();
    let config = RedisConfig { cluster: true, ..RedisConfig::sharded(cluster.urls()) };
    let flushed = cluster.ports.iter().map(|port| format!("redis://127.0.0.1:{port}/")).collect();
    conforms(&config, flushed).await;
    let keys = RedisIdempotency::connect(&config).await.unwrap();
    let window = Duration::from_secs(5);
    assert_eq!(keys.claim("app", "k", "id", window).await.unwrap(), Claim::Won);
    keys.complete("app", "k", "id", window).await.unwrap();
    assert_eq!(keys.claim("app", "k", "id2", window).await.unwrap(), Claim::Done("id".into()));

    // Sharded pub/sub: the channels are spread over the masters (SHARDNUMSUB per node).
    let broker = RedisBroker::connect(config, Arc::new(Recorder::default())).await.unwrap();
    for i in 0..30 {
        broker.subscribe(&topic(&format!("spread-{i}"))).await.unwrap();
    }
    let mut serving = 0;
    for port in &cluster.ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let channels: Vec<String> =
            redis::cmd("PUBSUB").arg("SHARDCHANNELS").query_async(&mut connection).await.unwrap();
        if !channels.is_empty() {
            serving += 1;
        }
    }
    assert!(serving >= 3, "sharded channels live on {serving} nodes");
}

#[tokio::test]
async fn an_outage_fails_publishes_then_delivery_resumes_after_resubscribing() {
    let mut redis = RedisServer::start();
    let recorder = Arc::new(Recorder::default());
    let receiver =
        RedisBroker::connect(config(&redis), recorder.clone() as Arc<dyn MessageHandler>).await.unwrap();
    let publisher = RedisBroker::connect(config(&redis), Arc::new(Recorder::default())).await.unwrap();
    let news = topic("news");
    receiver.subscribe(&news).await.unwrap();
    publisher.publish(&news, publication("app1", "news", "before")).await.unwrap();
    recorder.wait_for(&news, 1).await;

    redis.stop();
    let failed = publisher.publish(&news, publication("app1", "news", "lost")).await;
    assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");

    // Redis comes back (empty, as after a restart): the receiver resubscribes by itself.
    let _redis = RedisServer::start_on(redis.port);
    let deadline = Deadline::after(Duration::from_secs(10));
    loop {
        let _ = publisher.publish(&news, publication("app1", "news", "after")).await;
        if recorder.events(&news).iter().any(|e| e == "after") {
            break;
        }
        deadline
            .poll_again(|| format!("a delivery after Redis came back: {:?}", recorder.events(&news)))
            .await;
    }
    assert!(!recorder.events(&news).iter().any(|e| e == "lost"), "a failed publish is not delivered later");
}

#[tokio::test]
async fn every_redis_connection_recovers_from_a_restart() {
    use herald_backbone::{ChannelCount, Claim, IdempotencyStore, PresenceManager};
    let mut redis = RedisServer::start();
    let presence = RedisPresence::connect(&config(&redis)).await.unwrap();
    let keys = RedisIdempotency::connect(&config(&redis)).await.unwrap();
    let broker = RedisBroker::connect(config(&redis), Arc::new(Recorder::default())).await.unwrap();
    let one = [ChannelCount { app_id: "app".into(), channel: ChannelName::new("room").unwrap(), count: 1 }];
    presence.set_counts(1, &one).await.unwrap();
    broker.publish(&topic("news"), publication("app1", "news", "e")).await.unwrap();

    redis.stop();
    assert!(presence.set_counts(1, &one).await.is_err(), "down: a clear error");
    let _redis = RedisServer::start_on(redis.port);
    // The first call after the restart finds its connection broken and reconnects.
    assert_eq!(presence.set_counts(1, &one).await.unwrap()[0].after, 1);
    let window = Duration::from_secs(5);
    assert_eq!(keys.claim("app", "k", "id", window).await.unwrap(), Claim::Won);
    broker.publish(&topic("news"), publication("app1", "news", "e")).await.unwrap();
}

#[tokio::test]
async fn a_burst_of_500_arrives_whole_and_in_order() {
    let redis = RedisServer::start();
    let recorder = Arc::new(Recorder::default());
    let receiver =
        RedisBroker::connect(config(&redis), recorder.clone() as Arc<dyn MessageHandler>).await.unwrap();
    let news = topic("news");
    receiver.subscribe(&news).await.unwrap();
    let batch: Vec<_> =
        (0..500).map(|i| (news.clone(), publication("app1", "news", &format!("e{i}")))).collect();
    receiver.publish_batch(batch).await.unwrap();
    let expected: Vec<String> = (0..500).map(|i| format!("e{i}")).collect();
    assert_eq!(recorder.wait_for(&news, 500).await, expected);
}

/// Fan-out is at most once: a publish Redis did not answer in time (stalled, not gone)
/// fails, and is not sent again, since Redis may run it once it wakes up; sent twice it
/// would reach every subscriber twice.
#[tokio::test]
async fn a_publish_that_timed_out_is_not_sent_again() {
    let redis = RedisServer::start();
    let received = Arc::new(Recorder::default());
    let subscriber = RedisBroker::connect(config(&redis), received.clone()).await.unwrap();
    subscriber.subscribe(&topic("news")).await.unwrap();
    let quick = RedisConfig { command_timeout: Duration::from_millis(300), ..config(&redis) };
    let publisher = RedisBroker::connect(quick, Arc::new(Recorder::default())).await.unwrap();

    // Redis stalls until the publish has failed (its answer timed out), or until a new
    // connection reaches it: the one a publish sent again would go out on. Either way
    // it then wakes up and runs whatever it was sent.
    redis.pause();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stall = std::thread::spawn({
        let (pid, port, failed) = (redis.pid(), redis.port, failed.clone());
        let before = connections_to(port);
        move || {
            while !failed.load(std::sync::atomic::Ordering::SeqCst) && connections_to(port).is_subset(&before)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let resumed = std::process::Command::new("kill").args(["-s", "CONT", &pid.to_string()]).status();
            assert!(resumed.unwrap().success());
        }
    });
    let stalled = publisher.publish(&topic("news"), publication("app1", "news", "once")).await;
    failed.store(true, std::sync::atomic::Ordering::SeqCst);
    stall.join().unwrap();
    assert!(matches!(stalled, Err(Error::Unavailable(_))), "{stalled:?}");
    // Whatever Redis still runs of the stalled publish arrives before this one.
    publisher.publish(&topic("news"), publication("app1", "news", "marker")).await.unwrap();
    eventually_async("the marker", || async { received.events(&topic("news")).contains(&"marker".into()) })
        .await;
    assert_eq!(received.events(&topic("news")), ["once", "marker"], "the stalled publish ran once");
}

/// The clients (address:port, hex) of the established connections to `port` on this
/// host, Redis's side of them, accepted or still in its queue, from /proc/net/tcp.
fn connections_to(port: u16) -> std::collections::HashSet<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ours = fields.get(1).is_some_and(|l| l.ends_with(&local)) && fields.get(3) == Some(&"01");
            ours.then(|| fields[2].to_owned())
        })
        .collect()
}

/// Subscriptions that wait for the connection together go to Redis as one
/// `SUBSCRIBE`: an edge taking an interest in many channels at once (its clients
/// arriving together) does not send a command per channel, and every one of them is
/// subscribed.
#[tokio::test]
async fn subscriptions_made_together_are_sent_together() {
    let redis = RedisServer::start();
    let received = Arc::new(Recorder::default());
    let broker = Arc::new(RedisBroker::connect(config(&redis), received.clone()).await.unwrap());
    let subscribes = || async {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String =
            redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await.unwrap();
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_subscribe:calls="))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse::<u64>().unwrap())
    };
    let before = subscribes().await;
    let mut all = tokio::task::JoinSet::new();
    for n in 0..200 {
        let broker = broker.clone();
        all.spawn(async move { broker.subscribe(&topic(&format!("c{n}"))).await });
    }
    while let Some(subscribed) = all.join_next().await {
        subscribed.unwrap().unwrap();
    }
    let sent = subscribes().await - before;
    assert!((1..20).contains(&sent), "200 subscriptions made together took {sent} SUBSCRIBE commands");
    let publisher = RedisBroker::connect(config(&redis), Arc::new(Recorder::default())).await.unwrap();
    for n in 0..200 {
        publisher
            .publish(&topic(&format!("c{n}")), publication("app1", &format!("c{n}"), "hello"))
            .await
            .unwrap();
    }
    eventually_async("a publication on every channel", || async {
        (0..200).all(|n| !received.events(&topic(&format!("c{n}"))).is_empty())
    })
    .await;
}

/// A batch of subscriptions made while Redis is down fails as a whole, every waiter
/// told (none hangs); once Redis is back, the same channels subscribe and deliver.
#[tokio::test]
async fn subscriptions_made_together_while_redis_is_down_all_fail_then_work_after() {
    let mut redis = RedisServer::start();
    let received = Arc::new(Recorder::default());
    let broker = Arc::new(RedisBroker::connect(config(&redis), received.clone()).await.unwrap());
    redis.stop();
    let mut all = tokio::task::JoinSet::new();
    for n in 0..20 {
        let broker = broker.clone();
        all.spawn(async move { broker.subscribe(&topic(&format!("down-{n}"))).await });
    }
    while let Some(subscribed) = all.join_next().await {
        let subscribed = subscribed.unwrap();
        assert!(matches!(subscribed, Err(Error::Unavailable(_))), "{subscribed:?}");
    }

    let _redis = RedisServer::start_on(redis.port);
    let publisher = RedisBroker::connect(config(&redis), Arc::new(Recorder::default())).await.unwrap();
    let news = topic("down-7");
    let deadline = Deadline::after(Duration::from_secs(10));
    while broker.subscribe(&news).await.is_err() {
        deadline.poll_again(|| "a subscription once Redis is back".into()).await;
    }
    // The failed ones were not taken up again by the resubscription that came first.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let channels: Vec<String> =
        redis::cmd("PUBSUB").arg("CHANNELS").query_async(&mut connection).await.unwrap();
    assert_eq!(channels.len(), 1, "{channels:?}");
    publisher.publish(&news, publication("app1", "down-7", "back")).await.unwrap();
    received.wait_for(&news, 1).await;
}

/// A Redis that forgot the history scripts (restarted, or `SCRIPT FLUSH`) gets them
/// loaded again: publishing and reading go on.
#[tokio::test]
async fn history_scripts_are_loaded_again_when_redis_forgot_them() {
    use herald_backbone::{HistoryQuery, Message, Retention};
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(config(&redis), Arc::new(Recorder::default())).await.unwrap();
    let chat = topic("history-chat");
    let keep = Retention { size: 10, ttl: Duration::from_secs(60), meta_ttl: Duration::from_secs(3600) };
    let kept = |event: &str| match publication("app1", "history-chat", event) {
        Message::Publication(p) => (chat.clone(), p, keep),
        other => panic!("{other:?}"),
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let flush = || redis::cmd("SCRIPT").arg("FLUSH").clone();
    assert_eq!(broker.publish_kept(vec![kept("a")]).await.unwrap()[0].offset, 1);
    let _: () = flush().query_async(&mut raw).await.unwrap();
    assert_eq!(broker.publish_kept(vec![kept("b"), kept("c")]).await.unwrap()[1].offset, 3);
    let _: () = flush().query_async(&mut raw).await.unwrap();
    let page = broker.history(&chat, keep, HistoryQuery::after(0, 10)).await.unwrap();
    let events: Vec<String> = page.publications.iter().map(|p| p.event.to_string()).collect();
    assert_eq!(events, ["a", "b", "c"]);
}
