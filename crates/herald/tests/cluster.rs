//! `herald edge` as an operator runs it: two edge processes sharing one Redis behave
//! as one server to clients and publishers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use herald_core::auth;
use herald_testkit::{
    Client, app, http_request, now,
    redis::{RedisCluster, RedisServer},
};
use serde_json::json;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A `herald edge` process, killed on drop.
struct Edge {
    child: Child,
    ws: SocketAddr,
    grpc: SocketAddr,
    health: SocketAddr,
}

const TOKEN: &str = "cluster-api-token-0123456789";

impl Edge {
    fn start(redis: &RedisServer) -> Self {
        Self::start_with("HERALD_REDIS__URL", redis.url())
    }

    /// An edge over several Redis instances (`[redis] shards`).
    fn start_sharded(instances: &[RedisServer]) -> Self {
        let urls: Vec<String> = instances.iter().map(|r| format!("{:?}", r.url())).collect();
        Self::start_with("HERALD_REDIS__SHARDS", format!("[{}]", urls.join(",")))
    }

    /// An edge over a Redis Cluster (`[redis] cluster = true`).
    fn start_on_cluster(cluster: &RedisCluster) -> Self {
        let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
        Self::start_with_env(&[
            ("HERALD_REDIS__SHARDS", format!("[{}]", urls.join(","))),
            ("HERALD_REDIS__CLUSTER", "true".into()),
        ])
    }

    fn start_with(variable: &str, value: String) -> Self {
        Self::start_with_env(&[(variable, value)])
    }

    fn start_with_env(variables: &[(&str, String)]) -> Self {
        let mut child = Command::new(HERALD)
            .args(["edge", "--port", "0", "--metrics-port", "0", "--grpc-port", "0"])
            .envs(variables.iter().map(|(k, v)| (*k, v.as_str())))
            .env("HERALD_REDIS__LEASE_SECS", "1")
            .env(
                "HERALD_APPS",
                format!(
                    r#"[{{id = "app", key = "app-key", secret = "app-secret", api_tokens = ["{TOKEN}"], history = [{{channels = "history-*", size = 10000, ttl = "10m"}}]}}]"#
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let running =
            stderr.lines().map_while(Result::ok).find(|line| line.contains("herald edge is running"));
        // Owned (and so killed on drop) before anything can panic.
        let unset: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let mut edge = Self { ws: unset, grpc: unset, health: unset, child };
        let running = running.expect("herald edge exited before it was running");
        let field = |name: &str| -> SocketAddr {
            let prefix = format!("{name}=");
            running.split_whitespace().find_map(|w| w.strip_prefix(&prefix)).unwrap().parse().unwrap()
        };
        edge.ws = field("ws_addr");
        edge.grpc = field("grpc_addr");
        edge.health = field("health_addr");
        edge
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes through an edge's Pusher HTTP API, signed as the app's SDK would.
async fn trigger(edge: SocketAddr, channel: &str, event: &str, data: &str) {
    assert_eq!(try_trigger(edge, channel, event, data).await, 200);
}

/// The same, returning the HTTP status.
async fn try_trigger(edge: SocketAddr, channel: &str, event: &str, data: &str) -> u16 {
    let body = json!({ "name": event, "channels": [channel], "data": data }).to_string().into_bytes();
    let path = "/apps/app/events";
    let query = auth::sign_api_request(&app("app"), "POST", path, Vec::new(), &body, now());
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    http_request(edge, "POST", &format!("{path}?{}", query.join("&")), body).await.0.as_u16()
}

#[tokio::test]
async fn two_edges_deliver_each_others_publications_and_share_presence() {
    let redis = RedisServer::start();
    let (a, b) = (Edge::start(&redis), Edge::start(&redis));
    let app = app("app");
    let mut on_a = Client::connect(a.ws, &app.key).await;
    let mut on_b = Client::connect(b.ws, &app.key).await;
    on_a.subscribe("news").await;
    on_b.subscribe("news").await;

    // Published through edge B's HTTP API, delivered on both edges, in order.
    for i in 0..5 {
        trigger(b.ws, "news", "tick", &i.to_string()).await;
    }
    for client in [&mut on_a, &mut on_b] {
        for i in 0..5 {
            assert_eq!(client.recv_event("tick").await["data"], i.to_string());
        }
    }

    // Presence is cluster-wide: B's member appears on A once, and leaves once.
    let alice_on_a = on_a.subscribe_presence(&app, "presence-room", "alice").await;
    assert_eq!(alice_on_a["event"], "pusher_internal:subscription_succeeded");
    let bob_on_b = on_b.subscribe_presence(&app, "presence-room", "bob").await;
    let count = &bob_on_b["data"];
    assert!(count.to_string().contains("alice"), "bob sees alice from the other edge: {bob_on_b}");
    let added = on_a.recv_event("pusher_internal:member_added").await;
    assert!(added["data"].to_string().contains("bob"), "{added}");
}

#[tokio::test]
async fn a_killed_edges_members_leave_everywhere_within_its_lease() {
    let redis = RedisServer::start();
    let (mut doomed, b) = (Edge::start(&redis), Edge::start(&redis));
    let app = app("app");
    let mut alice = Client::connect(doomed.ws, &app.key).await;
    let mut bob = Client::connect(b.ws, &app.key).await;
    kill_with_a_member(&mut doomed, &mut alice, &mut bob, "presence-room").await;

    // Alice's client reconnects to the surviving edge and carries on.
    let mut alice = Client::connect(b.ws, &app.key).await;
    alice.subscribe_presence(&app, "presence-room", "alice").await;
    let added = bob.recv_event("pusher_internal:member_added").await;
    assert!(added["data"].to_string().contains("alice"), "{added}");
}

#[tokio::test]
async fn an_idempotency_key_holds_across_edges() {
    use herald_proto::v1::{Event, PublishRequest, event::Payload, publisher_client::PublisherClient};
    let redis = RedisServer::start();
    let (a, b) = (Edge::start(&redis), Edge::start(&redis));
    let mut subscriber = Client::connect(a.ws, &app("app").key).await;
    subscriber.subscribe("orders").await;
    let mut responses = Vec::new();
    for edge in [&a, &b] {
        let channel = herald_api::client::connect(edge.grpc).await.unwrap();
        let mut client =
            PublisherClient::with_origin(channel, format!("http://{}", edge.grpc).parse().unwrap());
        let event = Event {
            name: "paid".into(),
            payload: Some(Payload::Data("42".into())),
            channels: vec!["orders".into()],
            idempotency_key: "order-42".into(),
            ..Default::default()
        };
        let mut request = tonic::Request::new(PublishRequest { app_id: "app".into(), event: Some(event) });
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        responses.push(client.publish(request).await.unwrap().into_inner());
    }
    assert!(!responses[0].duplicate);
    assert!(responses[1].duplicate, "the retry through the other edge is a duplicate");
    assert_eq!(responses[0].publication_id, responses[1].publication_id);
    let received = subscriber.sync().await;
    assert_eq!(received.iter().filter(|m| m["event"] == "paid").count(), 1, "{received:?}");
}

#[tokio::test]
async fn edges_over_three_redis_shards_behave_as_one_server() {
    let instances = [RedisServer::start(), RedisServer::start(), RedisServer::start()];
    let (a, b) = (Edge::start_sharded(&instances), Edge::start_sharded(&instances));
    let (_, mut on_b) = deliver_everywhere(a.ws, b.ws, "sharded").await;
    let mut alice = Client::connect(a.ws, &app("app").key).await;
    alice.subscribe_presence(&app("app"), "presence-sharded", "alice").await;
    let joined = on_b.subscribe_presence(&app("app"), "presence-sharded", "bob").await;
    assert!(joined["data"].to_string().contains("alice"), "{joined}");
}

/// Clients on both edges subscribe to 12 channels; a publication to each through
/// edge `a` reaches both, in order. Returns the two clients.
async fn deliver_everywhere(a: SocketAddr, b: SocketAddr, prefix: &str) -> (Client, Client) {
    let key = app("app").key;
    let mut on_a = Client::connect(a, &key).await;
    let mut on_b = Client::connect(b, &key).await;
    let channels: Vec<String> = (0..12).map(|i| format!("{prefix}-{i}")).collect();
    for channel in &channels {
        on_a.subscribe(channel).await;
        on_b.subscribe(channel).await;
    }
    for channel in &channels {
        trigger(a, channel, "tick", channel).await;
    }
    // Ordered per channel, not across channels: the shards deliver independently.
    for client in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in &channels {
            got.push(client.recv_event("tick").await["data"].as_str().unwrap().to_owned());
        }
        got.sort();
        let mut expected = channels.clone();
        expected.sort();
        assert_eq!(got, expected);
    }
    (on_a, on_b)
}

#[tokio::test]
async fn edges_ride_out_a_redis_restart_under_traffic() {
    let mut redis = RedisServer::start();
    let (a, b) = (Edge::start(&redis), Edge::start(&redis));
    let mut client = Client::connect(a.ws, &app("app").key).await;
    client.subscribe("live").await;
    trigger(b.ws, "live", "tick", "before").await;
    assert_eq!(client.recv_event("tick").await["data"], "before");

    redis.stop();
    // Publishing while Redis is down fails clearly (503), it does not vanish.
    assert_eq!(try_trigger(b.ws, "live", "tick", "during").await, 503);
    let _redis = RedisServer::start_on(redis.port);

    // The edges reconnect and resubscribe by themselves: deliveries resume.
    let deadline = herald_testkit::Deadline::after(std::time::Duration::from_secs(10));
    let mut n = 0;
    'waiting: loop {
        n += 1;
        let _ = try_trigger(b.ws, "live", "tick", &format!("after-{n}")).await;
        // Whatever reached the client so far (a ping's pong marks the end).
        for message in client.sync().await {
            if message["event"] == "tick" {
                assert!(message["data"].as_str().unwrap().starts_with("after-"), "{message}");
                break 'waiting;
            }
        }
        deadline.poll_again(|| "a delivery after Redis came back".into()).await;
    }
    // The client never noticed: same connection, and the gap is in the metrics.
    let metrics = http_request(a.health, "GET", "/metrics", Vec::new()).await.1.to_string();
    assert!(metrics.contains("herald_backbone_reconnects_total"), "{metrics}");
}

#[tokio::test]
async fn edges_over_a_redis_cluster_behave_as_one_server() {
    let cluster = RedisCluster::start();
    let (mut doomed, b) = (Edge::start_on_cluster(&cluster), Edge::start_on_cluster(&cluster));
    let (mut on_doomed, mut on_b) = deliver_everywhere(doomed.ws, b.ws, "cluster").await;
    kill_with_a_member(&mut doomed, &mut on_doomed, &mut on_b, "presence-cluster").await;
}

/// Alice (on `doomed`) and Bob (on another edge) join a presence channel; `doomed`
/// is killed with -9 (no goodbye): once its lease (1 s here) runs out, Bob gets
/// `member_removed` for Alice.
async fn kill_with_a_member(doomed: &mut Edge, alice: &mut Client, bob: &mut Client, channel: &str) {
    let app = app("app");
    alice.subscribe_presence(&app, channel, "alice").await;
    let joined = bob.subscribe_presence(&app, channel, "bob").await;
    assert!(joined["data"].to_string().contains("alice"), "{joined}");
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let removed = bob.recv_event("pusher_internal:member_removed").await;
    assert!(removed["data"].to_string().contains("alice"), "{removed}");
}

#[tokio::test]
async fn an_edge_that_starts_while_redis_does_not_answer_waits_for_it() {
    let redis = RedisServer::start();
    // Stalled: connections are made, nothing is answered, every command times out.
    redis.pause();
    let mut command = Command::new(HERALD);
    command
        .args(["edge", "--port", "0", "--metrics-port", "0", "--grpc-port", "0"])
        .env("HERALD_REDIS__URL", redis.url())
        .env("HERALD_REDIS__COMMAND_TIMEOUT", "200ms")
        .env("HERALD_REDIS__LEASE", "30s");
    let (edge, _) =
        herald_testkit::process::Process::start("herald edge", command, "Redis is not answering yet");
    redis.resume();
    herald_testkit::eventually("the edge running once Redis answers", || {
        edge.output().contains("herald edge is running")
    })
    .await;
}

/// Recoveries on alternating edges while both publish: each client gets an unbroken,
/// duplicate-free run of offsets from its position through the live channel, with the
/// history in Redis.
#[tokio::test]
async fn recovery_across_edges_under_concurrent_publishing_has_no_gap_and_no_duplicate() {
    let redis = RedisServer::start();
    let (a, b) = (Edge::start(&redis), Edge::start(&redis));
    let subscribe_since = |since: Option<(u64, String)>| {
        let mut data = json!({ "channel": "history-busy" });
        if let Some((offset, epoch)) = since {
            data["since"] = json!({ "offset": offset, "epoch": epoch });
        }
        json!({ "event": "pusher:subscribe", "data": data })
    };
    let mut first = Client::connect(a.ws, "app-key").await;
    first.send(subscribe_since(None)).await;
    let ack = first.subscription_result("history-busy").await;
    let epoch = herald_testkit::data(&ack)["position"]["epoch"].as_str().unwrap().to_owned();
    let (mut since, mut published) = (0u64, 0u64);
    for recovery in 0..10u64 {
        // A burst through one edge while the client catches up through the other...
        let (publish_to, recover_on) = if recovery % 2 == 0 { (a.ws, b.ws) } else { (b.ws, a.ws) };
        let burst = tokio::spawn(async move {
            for i in 0..20 {
                trigger(publish_to, "history-busy", "e", &i.to_string()).await;
            }
        });
        let mut client = Client::connect(recover_on, "app-key").await;
        client.send(subscribe_since(Some((since, epoch.clone())))).await;
        let mut got = Vec::new();
        loop {
            let message = client.recv().await;
            if message["event"] == "pusher_internal:subscription_succeeded" {
                assert_eq!(herald_testkit::data(&message)["recovered"], true, "{message}");
                break;
            }
            got.push(message["offset"].as_u64().unwrap());
        }
        burst.await.unwrap();
        // ... and one more, so the client has a known last offset to reach.
        trigger(publish_to, "history-busy", "e", "last").await;
        published += 21;
        while got.last().copied().unwrap_or(since) < published {
            got.push(client.recv_event("e").await["offset"].as_u64().unwrap());
        }
        assert_eq!(got, (since + 1..=published).collect::<Vec<_>>(), "recovery {recovery} from {since}");
        since = published;
    }
}
