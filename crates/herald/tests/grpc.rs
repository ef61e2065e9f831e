//! The gRPC API over real HTTP/2 with a generated tonic client, and real WebSocket
//! subscribers receiving what is published.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use herald_api::{
    GrpcConfig,
    client::{self, H2Channel},
};
use herald_core::App;
use herald_proto::v1::{self as pb, publish_result, publisher_client::PublisherClient};
use herald_testkit::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};

const TOKEN: &str = "app-api-token-0123456789";
const OTHER_TOKEN: &str = "other-api-token-0123456789";

struct Grpc {
    server: Server,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Grpc {
    async fn start(config: GrpcConfig) -> Self {
        let mut main = app("app");
        main.api_tokens = vec![TOKEN.into()];
        let mut other = app("other");
        other.api_tokens = vec![OTHER_TOKEN.into()];
        let mut off = app("off");
        off.enabled = false;
        off.api_tokens = vec!["off-api-token-0123456789".into()];
        let server = Server::start(vec![main, other, off], herald_testkit::config()).await;
        Self::serve(server, config).await
    }

    /// Serves gRPC for an already started edge.
    async fn serve(server: Server, config: GrpcConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(herald_api::serve(
            listener,
            server.node.clone(),
            config,
            None,
            None,
            Duration::from_secs(2),
            stop.clone().cancelled_owned(),
        ));
        Self { server, addr, stop }
    }

    async fn default() -> Self {
        Self::start(GrpcConfig::default()).await
    }

    async fn client(&self) -> PublisherClient<H2Channel> {
        PublisherClient::with_origin(client::connect(self.addr).await.unwrap(), self.origin())
    }

    fn origin(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn event(channels: &[&str], name: &str, data: &str) -> pb::Event {
    pb::Event {
        name: name.into(),
        payload: Some(pb::event::Payload::Data(data.into())),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

fn publish(app_id: &str, event: pb::Event) -> pb::PublishRequest {
    pb::PublishRequest { app_id: app_id.into(), event: Some(event) }
}

#[tokio::test]
async fn publish_reaches_websocket_subscribers_and_honours_exclusion() {
    let grpc = Grpc::default().await;
    let mut a = grpc.server.connect().await;
    let mut b = grpc.server.connect().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    let mut client = grpc.client().await;

    let response = client
        .publish(authed(publish("app", event(&["news"], "headline", r#"{"t":1}"#)), TOKEN))
        .await
        .unwrap();
    let response = response.into_inner();
    assert_eq!(response.channels, 1);
    assert_eq!(response.publication_id.len(), 32);
    for client in [&mut a, &mut b] {
        let message = client.recv_event("headline").await;
        assert_eq!(message["data"], r#"{"t":1}"#, "data arrives as the string it was published as");
    }

    let mut excluding = event(&["news"], "ex", "x");
    excluding.exclude_socket_id = a.socket_id.clone();
    excluding.payload = Some(pb::event::Payload::DataBytes(b"bytes".to_vec()));
    client.publish(authed(publish("app", excluding), TOKEN)).await.unwrap();
    assert_eq!(b.recv_event("ex").await["data"], "bytes");
    assert!(a.sync().await.is_empty(), "excluded socket received the event");
}

#[tokio::test]
async fn authentication_and_authorization_statuses() {
    let grpc = Grpc::default().await;
    let mut client = grpc.client().await;
    let request = || publish("app", event(&["c"], "e", "d"));

    let status = client.publish(Request::new(request())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client.publish(authed(request(), "wrong-token-0123456789")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client.publish(authed(request(), OTHER_TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .publish(authed(publish("off", event(&["c"], "e", "d")), "off-api-token-0123456789"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client.publish(authed(publish("", event(&["c"], "e", "d")), TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn invalid_arguments_name_the_field_and_size_limits_exhaust() {
    let grpc = Grpc::start(GrpcConfig { max_message_bytes: 64 * 1024, ..GrpcConfig::default() }).await;
    let mut client = grpc.client().await;
    let cases = [
        (event(&["bad channel"], "e", "d"), Code::InvalidArgument, "channels:"),
        (event(&[], "e", "d"), Code::InvalidArgument, "channels:"),
        (event(&["c"], "", "d"), Code::InvalidArgument, "name:"),
        (pb::Event { payload: None, ..event(&["c"], "e", "") }, Code::InvalidArgument, "data:"),
        (
            pb::Event { payload: Some(pb::event::Payload::DataBytes(vec![0xff])), ..event(&["c"], "e", "") },
            Code::InvalidArgument,
            "data_bytes:",
        ),
        (
            pb::Event { exclude_socket_id: "nope".into(), ..event(&["c"], "e", "d") },
            Code::InvalidArgument,
            "exclude_socket_id:",
        ),
        (event(&["c"], "e", &"x".repeat(10 * 1024 + 1)), Code::ResourceExhausted, "data:"),
        (
            pb::Event { idempotency_key: "k".repeat(129), ..event(&["c"], "e", "d") },
            Code::InvalidArgument,
            "idempotency_key:",
        ),
    ];
    for (event, code, field) in cases {
        let status = client.publish(authed(publish("app", event), TOKEN)).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    // A message over the server's limit (64 KiB here) is RESOURCE_EXHAUSTED too.
    let huge = event(&["c"], "e", &"x".repeat(100 * 1024));
    let status = client.publish(authed(publish("app", huge), TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn idempotency_keys_publish_once() {
    let grpc = Grpc::default().await;
    let mut subscriber = grpc.server.connect().await;
    subscriber.subscribe("orders").await;
    let mut client = grpc.client().await;
    let keyed = || {
        publish("app", pb::Event { idempotency_key: "order-42".into(), ..event(&["orders"], "paid", "42") })
    };
    let first = client.publish(authed(keyed(), TOKEN)).await.unwrap().into_inner();
    let again = client.publish(authed(keyed(), TOKEN)).await.unwrap().into_inner();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.publication_id, again.publication_id);
    let received = subscriber.sync().await;
    assert_eq!(received.iter().filter(|m| m["event"] == "paid").count(), 1, "{received:?}");
}

#[tokio::test]
async fn batch_results_per_event_in_order() {
    let grpc = Grpc::default().await;
    let mut subscriber = grpc.server.connect().await;
    subscriber.subscribe("b").await;
    let mut client = grpc.client().await;
    let batch = pb::PublishBatchRequest {
        app_id: "app".into(),
        events: vec![
            event(&["b"], "one", "1"),
            event(&["bad name"], "two", "2"),
            event(&["b"], "three", "3"),
        ],
    };
    let results = client.publish_batch(authed(batch, TOKEN)).await.unwrap().into_inner().results;
    assert!(matches!(results[0].result, Some(publish_result::Result::Published(_))));
    match &results[1].result {
        Some(publish_result::Result::Error(e)) => assert_eq!(e.code, Code::InvalidArgument as i32),
        other => panic!("{other:?}"),
    }
    assert!(matches!(results[2].result, Some(publish_result::Result::Published(_))));
    assert_eq!(subscriber.recv_event("one").await["data"], "1");
    assert_eq!(subscriber.recv_event("three").await["data"], "3");

    // Events with idempotency keys keep their place among the others.
    let with_key = |name: &str| pb::Event { idempotency_key: "k-batch".into(), ..event(&["b"], name, name) };
    let batch = pb::PublishBatchRequest {
        app_id: "app".into(),
        events: vec![
            event(&["b"], "four", "4"),
            with_key("five"),
            event(&["b"], "six", "6"),
            with_key("again"),
        ],
    };
    let results = client.publish_batch(authed(batch, TOKEN)).await.unwrap().into_inner().results;
    let duplicates: Vec<bool> = results
        .iter()
        .map(|r| match &r.result {
            Some(publish_result::Result::Published(p)) => p.duplicate,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(duplicates, [false, false, false, true]);
    let received: Vec<String> = subscriber.sync().await.iter().map(|m| m["event"].to_string()).collect();
    assert_eq!(received, [r#""four""#, r#""five""#, r#""six""#], "in order, the duplicate dropped");

    let eleven = pb::PublishBatchRequest { app_id: "app".into(), events: vec![event(&["b"], "e", "d"); 11] };
    assert_eq!(client.publish_batch(authed(eleven, TOKEN)).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn publish_stream_acks_every_message_in_order() {
    let grpc = Grpc::default().await;
    let mut subscriber = grpc.server.connect().await;
    subscriber.subscribe("s").await;
    let mut client = grpc.client().await;
    let requests: Vec<_> = (1..=500u64)
        .map(|sequence| {
            let app_id = if sequence == 7 { "other" } else { "app" };
            pb::PublishStreamRequest {
                sequence,
                app_id: app_id.into(),
                event: Some(event(&["s"], "tick", &sequence.to_string())),
            }
        })
        .collect();
    let mut answers =
        client.publish_stream(authed(tokio_stream::iter(requests), TOKEN)).await.unwrap().into_inner();
    let mut sequences = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        let ok = matches!(
            answer.result.as_ref().and_then(|r| r.result.as_ref()),
            Some(publish_result::Result::Published(_))
        );
        assert_eq!(ok, answer.sequence != 7, "message 7 names an app the token is not for");
        sequences.push(answer.sequence);
    }
    assert_eq!(sequences, (1..=500).collect::<Vec<_>>());
    let mut received = Vec::new();
    while received.len() < 499 {
        let message = subscriber.recv_event("tick").await;
        received.push(message["data"].as_str().unwrap().parse::<u64>().unwrap());
    }
    let expected: Vec<u64> = (1..=500).filter(|s| *s != 7).collect();
    assert_eq!(received, expected, "published in order");
}

/// A broker that takes a millisecond per publish, like a remote one under load.
struct SlowBroker(herald_backbone::MemoryBroker);

#[tonic::async_trait]
impl herald_backbone::Broker for SlowBroker {
    async fn publish(
        &self,
        topic: &herald_backbone::Topic,
        message: herald_backbone::Message,
    ) -> herald_backbone::Result<()> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.publish(topic, message).await
    }
    async fn subscribe(&self, topic: &herald_backbone::Topic) -> herald_backbone::Result<()> {
        self.0.subscribe(topic).await
    }
    async fn unsubscribe(&self, topic: &herald_backbone::Topic) -> herald_backbone::Result<()> {
        self.0.unsubscribe(topic).await
    }
    async fn publish_kept(
        &self,
        publications: Vec<(herald_backbone::Topic, herald_core::Publication, herald_backbone::Retention)>,
    ) -> herald_backbone::Result<Vec<herald_core::StreamPosition>> {
        self.0.publish_kept(publications).await
    }
    async fn history(
        &self,
        topic: &herald_backbone::Topic,
        retention: herald_backbone::Retention,
        query: herald_backbone::HistoryQuery,
    ) -> herald_backbone::Result<herald_backbone::HistoryPage> {
        self.0.history(topic, retention, query).await
    }
}

#[tokio::test]
async fn a_publisher_faster_than_delivery_is_held_back_and_every_message_is_answered() {
    let mut main = app("app");
    main.api_tokens = vec![TOKEN.into()];
    let server = Server::start_with_broker(vec![main], herald_testkit::config(), |broker| {
        std::sync::Arc::new(SlowBroker(broker))
    })
    .await;
    let grpc = Grpc::serve(server, GrpcConfig::default()).await;
    let mut client = grpc.client().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut answers = client
        .publish_stream(authed(tokio_stream::wrappers::ReceiverStream::new(receiver), TOKEN))
        .await
        .unwrap()
        .into_inner();
    // The publisher offers 4 KiB messages as fast as the stream takes them...
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = tokio::spawn({
        let sent = sent.clone();
        async move {
            let data = "x".repeat(4 * 1024);
            for sequence in 0..1_500u64 {
                let request = pb::PublishStreamRequest {
                    sequence,
                    app_id: "app".into(),
                    event: Some(event(&["void"], "e", &data)),
                };
                if sender.send(request).await.is_err() {
                    return;
                }
                sent.store(sequence + 1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // ...while publishing takes 1 ms each: the stream may run ahead only by what the
    // server's HTTP/2 window holds (1 MiB: 256 messages) plus the answer window, never
    // by everything it has to send (1,500 messages).
    let mut answered = 0u64;
    let mut most_ahead = 0;
    while answered < 300 {
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.sequence, answered, "answers come in order");
        answered += 1;
        most_ahead = most_ahead.max(sent.load(std::sync::atomic::Ordering::SeqCst) - answered);
    }
    assert!(most_ahead < 600, "the publisher got {most_ahead} messages (of 4 KiB) ahead of publication");
    assert!(most_ahead > 10, "the stream pipelines ({most_ahead} ahead)");
    // Every message that was sent is answered: nothing is dropped.
    publisher.await.unwrap();
    let total = sent.load(std::sync::atomic::Ordering::SeqCst);
    while answered < total {
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.sequence, answered);
        answered += 1;
    }
    assert_eq!(answers.message().await.unwrap(), None);
}

#[tokio::test]
async fn channel_state_presence_users_and_terminate() {
    let grpc = Grpc::default().await;
    let app: App = grpc.server.app().clone();
    let mut alice = grpc.server.connect().await;
    alice.subscribe_presence(&app, "presence-room", "alice").await;
    alice.subscribe("news").await;
    alice.signin(&app, "alice").await;
    let mut client = grpc.client().await;

    let info = client
        .get_channel(authed(
            pb::GetChannelRequest { app_id: "app".into(), channel: "presence-room".into() },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.occupied, info.subscription_count, info.user_count), (true, 1, 1));
    let listed = client
        .list_channels(authed(
            pb::ListChannelsRequest { app_id: "app".into(), prefix: "presence-".into() },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["presence-room"]);
    let users = client
        .list_presence_users(authed(
            pb::ListPresenceUsersRequest { app_id: "app".into(), channel: "presence-room".into() },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].id, "alice");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&users[0].user_info_json).unwrap(),
        json!({ "name": "alice" })
    );
    let status = client
        .list_presence_users(authed(
            pb::ListPresenceUsersRequest { app_id: "app".into(), channel: "news".into() },
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    client
        .terminate_user_connections(authed(
            pb::TerminateUserConnectionsRequest { app_id: "app".into(), user_id: "alice".into() },
            TOKEN,
        ))
        .await
        .unwrap();
    assert_eq!(alice.closed().await.code, Some(4200));
}

#[tokio::test]
async fn health_reports_serving_then_not_serving_on_shutdown() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let grpc = Grpc::default().await;
    let mut health = HealthClient::with_origin(client::connect(grpc.addr).await.unwrap(), grpc.origin());
    for service in ["", "herald.v1.Publisher"] {
        let status =
            health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest { service: "herald.v1.Publisher".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    grpc.stop.cancel();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}

/// A broker that has lost its backbone: every publish fails, retryably.
struct DownBroker(herald_backbone::MemoryBroker);

#[tonic::async_trait]
impl herald_backbone::Broker for DownBroker {
    async fn publish(
        &self,
        _: &herald_backbone::Topic,
        _: herald_backbone::Message,
    ) -> herald_backbone::Result<()> {
        Err(herald_backbone::Error::unavailable("redis: connection refused"))
    }
    async fn subscribe(&self, topic: &herald_backbone::Topic) -> herald_backbone::Result<()> {
        self.0.subscribe(topic).await
    }
    async fn unsubscribe(&self, topic: &herald_backbone::Topic) -> herald_backbone::Result<()> {
        self.0.unsubscribe(topic).await
    }
    async fn publish_kept(
        &self,
        publications: Vec<(herald_backbone::Topic, herald_core::Publication, herald_backbone::Retention)>,
    ) -> herald_backbone::Result<Vec<herald_core::StreamPosition>> {
        self.0.publish_kept(publications).await
    }
    async fn history(
        &self,
        topic: &herald_backbone::Topic,
        retention: herald_backbone::Retention,
        query: herald_backbone::HistoryQuery,
    ) -> herald_backbone::Result<herald_backbone::HistoryPage> {
        self.0.history(topic, retention, query).await
    }
}

#[tokio::test]
async fn a_backbone_outage_is_unavailable_not_silence() {
    let mut main = app("app");
    main.api_tokens = vec![TOKEN.into()];
    let server = Server::start_with_broker(vec![main], herald_testkit::config(), |broker| {
        std::sync::Arc::new(DownBroker(broker))
    })
    .await;
    let (status, body) = server.trigger(&["c"], "e", "d").await;
    assert_eq!(status.as_u16(), 503, "HTTP API: {body}");
    let grpc = Grpc::serve(server, GrpcConfig::default()).await;
    let mut client = grpc.client().await;
    let status = client.publish(authed(publish("app", event(&["c"], "e", "d")), TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("connection refused"));
}
