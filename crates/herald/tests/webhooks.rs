//! Webhooks as an operator runs them: `herald edge` appends channel events to a real
//! Kafka-protocol broker (tansu), `herald dispatcher` replicas consume them and
//! deliver to real HTTP receivers, with rate limits and endpoints in a real Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use herald_core::auth;
use herald_testkit::{
    Client, app, http_request, now,
    process::{self, Process},
    receiver::{Received, Receiver},
    redis::RedisServer,
    tansu::Tansu,
};
use herald_webhooks::sign::{SigningKey, verify_standard};
use serde_json::json;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LONG: Duration = Duration::from_secs(60);

/// A herald process, killed on drop; its output is shown when the test fails.
struct Herald {
    process: Process,
    ws: Option<SocketAddr>,
}

/// The environment of every process of one test's cluster.
struct Cluster {
    env: Vec<(String, String)>,
    _redis: Option<RedisServer>,
    _tansu: Option<Tansu>,
}

impl Cluster {
    /// Apps `app` (unlimited webhooks) and `limited` (`limit`/s, burst 5), one
    /// Standard Webhooks endpoint each at `receivers`, a short debounce and retries.
    fn start(receivers: &[(&str, &Receiver)], limit: u32) -> Self {
        let redis = RedisServer::start();
        // sqlite storage: tansu 0.6's memory engine cannot resume a group inside a
        // stored batch (see herald-kafka's tests).
        let db = std::env::temp_dir().join(format!(
            "herald-webhooks-{}-{}.db",
            std::process::id(),
            fastrand::u64(..)
        ));
        let tansu = Tansu::start_with_storage(&format!("sqlite://{}", db.display()));
        let hooks: Vec<String> = receivers
            .iter()
            .map(|(app, r)| {
                format!(
                    r#"{{app_id = "{app}", id = "{app}-hook", url = "{}", secret = "{SECRET}"}}"#,
                    r.url("/hook")
                )
            })
            .collect();
        let env = vec![
            ("HERALD_REDIS__URL", redis.url()),
            ("HERALD_REDIS__LEASE_SECS", "1".into()),
            ("HERALD_KAFKA__BROKERS", tansu.brokers()),
            ("HERALD_EVENTS__PARTITIONS", "4".into()),
            ("HERALD_EVENTS__DEBOUNCE_MS", "300".into()),
            ("HERALD_DISPATCHER__PARTITIONS", "4".into()),
            ("HERALD_DISPATCHER__RETRY_SCHEDULE", r#"["200ms", "400ms"]"#.into()),
            ("HERALD_DISPATCHER__ALLOW_ADDRESSES", r#"["127.0.0.1"]"#.into()),
            ("HERALD_DISPATCHER__ENDPOINT_REFRESH_MS", "100".into()),
            ("HERALD_SERVER__SHUTDOWN_GRACE_SECS", "2".into()),
            ("HERALD_WEBHOOKS", format!("[{}]", hooks.join(","))),
            (
                "HERALD_APPS",
                format!(
                    r#"[{{id = "app", key = "app-key", secret = "app-secret"}},
                        {{id = "limited", key = "limited-key", secret = "limited-secret",
                          limits = {{webhooks_per_second = {limit}, webhooks_burst = 5}}}}]"#
                ),
            ),
        ];
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        Self { env, _redis: Some(redis), _tansu: Some(tansu) }
    }

    fn spawn(&self, role: &str, ready: &str) -> Herald {
        let env = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let (process, line) = Process::herald(HERALD, role, env, ready);
        Herald { process, ws: process::address(&line, "ws_addr") }
    }

    fn edge(&self) -> Herald {
        self.spawn("edge", "herald edge is running")
    }

    fn dispatcher(&self) -> Herald {
        self.spawn("dispatcher", "herald dispatcher started")
    }

    /// A dispatcher with a stable group membership (`group.instance.id`), as a
    /// Kubernetes StatefulSet pod would have: restarted after a crash, it takes its
    /// old place in the consumer group at once.
    fn dispatcher_as(&self, instance: &str) -> Herald {
        let mut env = self.env.clone();
        env.push(("HERALD_KAFKA__PROPERTIES".into(), format!(r#"{{"group.instance.id" = "{instance}"}}"#)));
        Cluster { env, _redis: None, _tansu: None }.spawn("dispatcher", "herald dispatcher started")
    }
}

impl Herald {
    fn ws(&self) -> SocketAddr {
        self.ws.unwrap()
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.process.kill();
    }
}

/// Publishes through an edge's Pusher HTTP API as the app's SDK would.
async fn trigger(edge: SocketAddr, app_id: &str, channel: &str, event: &str, data: &str) {
    let body = json!({ "name": event, "channels": [channel], "data": data }).to_string().into_bytes();
    let path = format!("/apps/{app_id}/events");
    let query = auth::sign_api_request(&app(app_id), "POST", &path, Vec::new(), &body, now());
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let (status, _) = http_request(edge, "POST", &format!("{path}?{}", query.join("&")), body).await;
    assert_eq!(status.as_u16(), 200);
}

fn verified(request: &Received) -> serde_json::Value {
    let key = SigningKey::from_secret(SECRET).unwrap();
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    assert!(
        verify_standard(
            &key,
            request.header("webhook-id"),
            timestamp,
            &request.body,
            request.header("webhook-signature")
        ),
        "bad signature on {:?}",
        request.json()
    );
    request.json()
}

/// Waits until the receiver got requests for which `done` holds.
async fn wait_until(receiver: &Receiver, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    herald_testkit::wait_until(LONG, || {
        let received = receiver.received();
        if done(&received) { Ok(received) } else { Err(format!("{what}; have {} requests", received.len())) }
    })
    .await
}

fn types(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| verified(r)["type"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test]
async fn publications_and_lifecycle_events_reach_a_receiver_through_kafka() {
    let receiver = Receiver::start().await;
    let cluster = Cluster::start(&[("app", &receiver)], 0);
    let edge = cluster.edge();
    let _dispatcher = cluster.dispatcher();
    let app = app("app");

    let mut alice = Client::connect(edge.ws(), &app.key).await;
    alice.subscribe_presence(&app, "presence-room", "alice").await;
    wait_until(&receiver, "occupied and member_added", |r| {
        let t = types(r);
        t.contains(&"channel.occupied".into()) && t.contains(&"member.added".into())
    })
    .await;

    trigger(edge.ws(), "app", "presence-room", "order-shipped", r#"{"id":7}"#).await;
    let got = wait_until(&receiver, "the publication", |r| types(r).contains(&"channel.event".into())).await;
    let publication = got.iter().map(verified).find(|b| b["type"] == "channel.event").unwrap();
    assert_eq!(publication["data"]["event"], "order-shipped");
    assert_eq!(publication["data"]["data"], r#"{"id":7}"#);
    assert_eq!(publication["data"]["channel"], "presence-room");

    // Leaving for good: member_removed and channel_vacated after the debounce.
    drop(alice);
    let got = wait_until(&receiver, "member_removed and vacated", |r| {
        let t = types(r);
        t.contains(&"member.removed".into()) && t.contains(&"channel.vacated".into())
    })
    .await;
    // Concurrent deliveries to one endpoint may overtake each other; the steps of
    // the test cannot.
    let mut per_channel: Vec<String> =
        types(&got).into_iter().filter(|t| t != "subscription.count").collect();
    per_channel[..2].sort();
    per_channel[3..].sort();
    assert_eq!(
        per_channel,
        ["channel.occupied", "member.added", "channel.event", "channel.vacated", "member.removed"]
    );
    let counts: Vec<u64> = got
        .iter()
        .map(verified)
        .filter(|b| b["type"] == "subscription.count")
        .map(|b| b["data"]["subscription_count"].as_u64().unwrap())
        .collect();
    let mut sorted = counts.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1], "joined, then left: {counts:?}");
}

#[tokio::test]
async fn a_tenant_limit_holds_across_two_dispatchers_and_others_are_not_held_back() {
    let limited = Receiver::start().await;
    let free = Receiver::start().await;
    let cluster = Cluster::start(&[("limited", &limited), ("app", &free)], 10);
    let edge = cluster.edge();
    let (_one, _two) = (cluster.dispatcher(), cluster.dispatcher());
    // Both replicas have joined the group once a first event went through.
    trigger(edge.ws(), "app", "warm-up", "e", "{}").await;
    free.wait_for(1, LONG).await;

    // The limited tenant's bucket is full (burst 5) when its 40 events go out.
    let start = Instant::now();
    for i in 0..40 {
        trigger(edge.ws(), "limited", &format!("c{}", i % 8), "e", &i.to_string()).await;
    }
    // Then ten events of the free tenant, behind all of them in the log.
    for i in 0..10 {
        trigger(edge.ws(), "app", &format!("free-{i}"), "e", "{}").await;
    }
    let free_got = wait_until(&free, "the free tenant's ten events", |r| {
        (0..10).all(|i| r.iter().any(|r| r.json()["data"]["channel"] == format!("free-{i}")))
    })
    .await;
    let free_done = free_got
        .iter()
        .filter(|r| r.json()["data"]["channel"].as_str().is_some_and(|c| c.starts_with("free-")))
        .map(|r| r.at)
        .max()
        .unwrap();

    // At least once: a rebalance (the second replica joining) may deliver an event
    // that was in flight again, with the same id. Every delivery counts against the
    // limit, duplicates included.
    let got = wait_until(&limited, "40 distinct events", |r| {
        r.iter().map(|r| r.header("webhook-id")).collect::<HashSet<_>>().len() >= 40
    })
    .await;
    let mut seen = HashSet::new();
    let firsts: Vec<&Received> =
        got.iter().filter(|r| seen.insert(r.header("webhook-id").to_owned())).collect();
    assert_eq!(firsts.len(), 40, "every event");
    // The limit, across both replicas, as GCRA guarantees it from a full bucket: by
    // `t` after the start at most the burst plus 10/s of `t` went out (+1 for the
    // edge), so the k-th delivery arrived at least (k - 6) intervals after the start.
    // A lower bound on arrival (never on how fast), so a slow machine can't break it.
    for (k, first) in (1u32..).zip(&firsts) {
        let earliest = Duration::from_millis(100) * k.saturating_sub(6);
        assert!(first.at - start >= earliest, "delivery {k} after {:?}, under the limit", first.at - start);
    }
    // Fair: the free tenant's events, sent after the limited tenant's 40, did not
    // wait behind them. The limit holds those back for at least 3.4 s; the free
    // tenant's all arrived before the last of them.
    assert!(
        free_done < firsts[39].at,
        "the free tenant's last event came {:?} after the start, behind the limited tenant's last ({:?})",
        free_done - start,
        firsts[39].at - start
    );
}

#[tokio::test]
async fn a_killed_dispatcher_loses_nothing() {
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(10));
    let cluster = Cluster::start(&[("app", &receiver)], 0);
    let edge = cluster.edge();
    let mut dispatcher = cluster.dispatcher_as("dispatcher-0");
    const EVENTS: usize = 300;
    for i in 0..EVENTS {
        trigger(edge.ws(), "app", &format!("ch-{}", i % 16), "e", &i.to_string()).await;
        if i == EVENTS / 3 {
            receiver.wait_for(20, LONG).await;
            dispatcher.kill();
        }
        if i == 2 * EVENTS / 3 {
            dispatcher = cluster.dispatcher_as("dispatcher-0");
        }
    }
    let got = wait_until(&receiver, "every publication", |r| {
        r.iter()
            .filter(|r| r.json()["type"] == "channel.event")
            .map(|r| r.json()["data"]["data"].clone())
            .collect::<HashSet<_>>()
            .len()
            >= EVENTS
    })
    .await;
    // Duplicates (delivered before the kill, not yet committed) carry the same id.
    let mut ids: HashMap<String, String> = HashMap::new();
    for request in got.iter().filter(|r| r.json()["type"] == "channel.event") {
        let data = request.json()["data"]["data"].as_str().unwrap().to_owned();
        let id = request.header("webhook-id").to_owned();
        assert_eq!(ids.entry(data).or_insert_with(|| id.clone()), &id, "a redelivery with another id");
    }
    assert_eq!(ids.len(), EVENTS);
    drop(dispatcher);
}
