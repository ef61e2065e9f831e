//! The dispatcher end to end over a Kafka reached the way managed services require:
//! TLS with a private CA and SASL SCRAM-SHA-512, the password from a file. An event
//! recorded by one connection (the edge's, in production) is read by the
//! dispatcher's own and delivered, signed, to a real HTTP receiver. Against a real
//! tansu broker, TLS terminated in front of it (see `herald_testkit::tansu`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use herald_backbone::{Append, EventLog};
use herald_core::Apps;
use herald_dispatcher::{Dispatcher, DispatcherConfig, schedule::RetrySchedule};
use herald_kafka::{KafkaConfig, KafkaEventLog};
use herald_proto::v1::{ChannelEvent, ChannelEventType};
use herald_testkit::{
    receiver::Receiver,
    tansu::{Options, ScramUser, Tansu, TlsOptions},
    tls::TestCa,
};
use herald_webhooks::{
    endpoint::{Endpoint, Format, new_endpoint_id},
    limiter::LocalRateLimiter,
    sign::{SigningKey, verify_standard},
    ssrf::AddressPolicy,
    store::{MemoryWebhookStore, WebhookStore},
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_delivered_from_an_event_recorded_over_sasl_ssl() {
    let ca = TestCa::new();
    let tansu = Tansu::start_with(Options {
        tls: Some(TlsOptions { server: ca.issue("kafka"), client_ca: None }),
        scram_users: vec![ScramUser::sha512("herald", "dispatcher-password")],
        ..Options::default()
    });
    let secrets = tempfile::tempdir().unwrap();
    let password = secrets.path().join("kafka-password");
    std::fs::write(&password, "dispatcher-password\n").unwrap();
    let kafka = KafkaConfig::new(tansu.brokers())
        .with_property("security.protocol", "SASL_SSL")
        .with_property("sasl.mechanism", "SCRAM-SHA-512")
        .with_property("sasl.username", "herald")
        .with_property("ssl.ca.location", ca.ca_file().display().to_string())
        .with_property_file("sasl.password", &password);

    let mut config = DispatcherConfig {
        partitions: 2,
        retry: RetrySchedule { delays: vec![Duration::from_millis(100)], jitter: 0.0 },
        endpoint_refresh: Duration::from_millis(50),
        commit_interval: Duration::from_millis(50),
        ..DispatcherConfig::default()
    };
    config.client.policy = AddressPolicy::new(&["127.0.0.1".into()]).unwrap();
    let log: Arc<dyn EventLog> = Arc::new(KafkaEventLog::connect(kafka.clone()).await.unwrap());
    herald_dispatcher::dispatcher::ensure_topics(log.as_ref(), &config).await.unwrap();
    let receiver = Receiver::start().await;
    let store = MemoryWebhookStore::default();
    let endpoint =
        Endpoint::new(new_endpoint_id(), "a", &receiver.url("/hook"), Format::StandardWebhooks, SECRET);
    store.put_endpoint(&endpoint).await.unwrap();
    let events_topic = config.events_topic.clone();
    let dispatcher = Dispatcher::new(
        Apps::new(vec![herald_testkit::app("a")]).unwrap(),
        log,
        Arc::new(store),
        Arc::new(LocalRateLimiter::default()),
        config,
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn(dispatcher.run(stop.clone(), Duration::from_secs(2)));

    // The edge records the event through a connection of its own.
    let recorder = KafkaEventLog::connect(kafka).await.unwrap();
    let event = ChannelEvent {
        id: "evt_00000000000000000000000001".into(),
        app_id: "a".into(),
        channel: "room".into(),
        time_ms: herald_core::time::now_ms(),
        r#type: ChannelEventType::ChannelOccupied as i32,
        ..Default::default()
    };
    let record = Append { key: "a/room".into(), value: event.encode_to_vec().into() };
    recorder.append(&events_topic, vec![record]).await.unwrap();

    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    let request = &got[0];
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    let key = SigningKey::from_secret(SECRET).unwrap();
    assert!(verify_standard(
        &key,
        request.header("webhook-id"),
        timestamp,
        &request.body,
        request.header("webhook-signature")
    ));
    let body = request.json();
    assert_eq!(body["type"], "channel.occupied");
    assert_eq!(body["data"]["channel"], "room");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap().unwrap();
}
