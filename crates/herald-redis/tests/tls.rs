//! Redis as managed services run it: TLS only (`rediss://`), a private CA, an ACL user
//! with a password, optionally a required client certificate. The backbone conforms
//! over one instance, three shards and a Redis Cluster; what Redis refuses is reported
//! as a [`Refused`] naming the problem, never the password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use herald_backbone::{
    Broker, Error, MessageHandler, Topic,
    conformance::{Recorder, publication},
};
use herald_core::ChannelName;
use herald_redis::{
    ClientCertificate, RedisBroker, RedisConfig, RedisIdempotency, RedisPresence, RedisTls, Refusal, Refused,
};
use herald_testkit::{
    redis::{RedisCluster, RedisServer, Tls},
    tls::TestCa,
};

const USER: &str = "herald";
const PASSWORD: &str = "pw-7f3a9c1e-never-logged";

/// A TLS Redis with the test CA, where only [`USER`] gets in.
fn secured(ca: &TestCa) -> Tls {
    Tls::new(ca).user(USER, PASSWORD)
}

/// The settings that reach a server secured by `tls`: its CA, its user and password,
/// and a client certificate if it requires one.
fn config(urls: Vec<String>, tls: &Tls) -> RedisConfig {
    let client = tls.require_client_certificate.then(|| ClientCertificate {
        cert_file: tls.client().cert_file.clone(),
        key_file: tls.client().key_file.clone(),
    });
    RedisConfig {
        max_backoff: Duration::from_millis(200),
        username: tls.user.as_ref().map(|u| u.name.clone()),
        password: tls.user.as_ref().map(|u| u.password.clone()),
        tls: RedisTls { ca_file: Some(tls.ca_file.clone()), client },
        ..RedisConfig::sharded(urls)
    }
}

fn topic(channel: &str) -> Topic {
    Topic::channel(&Arc::from("app1"), &ChannelName::new(channel).unwrap())
}

/// A plain connection to one instance (not through a cluster client), as `tls`'s
/// admin (Herald's user may not `FLUSHALL`).
async fn raw(url: &str, tls: &Tls) -> redis::aio::MultiplexedConnection {
    use redis::IntoConnectionInfo;
    let mut info = url.into_connection_info().unwrap();
    if let Some(user) = tls.admin() {
        let settings = info.redis_settings().clone().set_username(&user.name).set_password(&user.password);
        info = info.set_redis_settings(settings);
    }
    let client_tls = redis::ClientTlsConfig {
        client_cert: std::fs::read(&tls.client().cert_file).unwrap(),
        client_key: std::fs::read(&tls.client().key_file).unwrap(),
    };
    let certificates = redis::TlsCertificates {
        client_tls: Some(client_tls),
        root_cert: Some(std::fs::read(&tls.ca_file).unwrap()),
    };
    let client = redis::Client::build_with_tls(info, certificates).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The conformance scenarios over `config`; `instances` are every Redis behind it.
async fn conforms(config: &RedisConfig, instances: Vec<String>, tls: &Tls) {
    common::conforms(config, || async move {
        for url in instances {
            common::flush(&mut raw(&url, tls).await).await;
        }
    })
    .await;
}

#[tokio::test]
async fn one_redis_over_tls_with_an_acl_user_conforms() {
    let ca = TestCa::new();
    let tls = secured(&ca);
    let redis = RedisServer::start_tls(&tls);
    assert!(redis.url().starts_with("rediss://"));
    // The default user is off: only the ACL user gets in, and only over TLS.
    conforms(&config(vec![redis.url()], &tls), vec![redis.url()], &tls).await;
}

#[tokio::test]
async fn sharded_over_three_tls_instances_the_backbone_conforms() {
    let ca = TestCa::new();
    let tls = secured(&ca);
    let instances =
        [RedisServer::start_tls(&tls), RedisServer::start_tls(&tls), RedisServer::start_tls(&tls)];
    let urls: Vec<String> = instances.iter().map(RedisServer::url).collect();
    let config = config(urls.clone(), &tls);
    conforms(&config, urls, &tls).await;
    // The channels are spread: each instance has subscribers (the pub/sub connection of
    // each shard is secured like the rest).
    let broker = RedisBroker::connect(config, Arc::new(Recorder::default())).await.unwrap();
    for i in 0..60 {
        broker.subscribe(&topic(&format!("spread-{i}"))).await.unwrap();
    }
    for instance in &instances {
        let channels = instance.cli(&["PUBSUB", "CHANNELS", "*spread-*"]);
        assert!(channels.lines().count() >= 5, "{channels}");
    }
}

#[tokio::test]
async fn over_a_tls_redis_cluster_with_an_acl_user_the_backbone_conforms() {
    use herald_backbone::{Claim, IdempotencyStore};
    let ca = TestCa::new();
    let tls = secured(&ca);
    let cluster = RedisCluster::start_tls(&tls);
    let config = RedisConfig { cluster: true, ..config(cluster.urls(), &tls) };
    conforms(&config, cluster.urls(), &tls).await;
    let keys = RedisIdempotency::connect(&config).await.unwrap();
    let window = Duration::from_secs(5);
    assert_eq!(keys.claim("app", "k", "id", window).await.unwrap(), Claim::Won);
    keys.complete("app", "k", "id", window).await.unwrap();
    assert_eq!(keys.claim("app", "k", "id2", window).await.unwrap(), Claim::Done("id".into()));
}

/// The refusal behind a failed connect; its text has no password in it.
fn refused<T>(result: Result<T, Error>, password: &str) -> Refused {
    let Err(error) = result else { panic!("connected, but should have been refused") };
    let text = format!("{error} {error:?}");
    eprintln!("refused as expected: {error}");
    assert!(!text.contains(password), "the password leaked: {text}");
    Refused::of(&error).unwrap_or_else(|| panic!("not a refusal: {error}")).clone()
}

#[tokio::test]
async fn a_wrong_password_an_unknown_user_or_none_is_refused_clearly() {
    let ca = TestCa::new();
    let tls = secured(&ca);
    let redis = RedisServer::start_tls(&tls);
    let right = config(vec![redis.url()], &tls);
    let handler = || Arc::new(Recorder::default()) as Arc<dyn MessageHandler>;

    let wrong = RedisConfig { password: Some("not-the-password".into()), ..right.clone() };
    let refusal = refused(RedisBroker::connect(wrong.clone(), handler()).await, "not-the-password");
    assert_eq!(refusal.refusal(), Refusal::Authentication);
    assert_eq!(refusal.addr(), format!("127.0.0.1:{}", redis.port));
    let text = refusal.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    // Every kind of client refuses the same way, not only the broker.
    let refusal = refused(RedisPresence::connect(&wrong).await, "not-the-password");
    assert_eq!(refusal.refusal(), Refusal::Authentication);

    let unknown = RedisConfig { username: Some("nobody".into()), ..right.clone() };
    assert_eq!(
        refused(RedisBroker::connect(unknown, handler()).await, PASSWORD).refusal(),
        Refusal::Authentication
    );

    // No credentials at all: connecting works, the first command does not (NOAUTH),
    // and that is found at connect time too.
    let anonymous = RedisConfig { username: None, password: None, ..right.clone() };
    let refusal = refused(RedisBroker::connect(anonymous, handler()).await, PASSWORD);
    assert_eq!(refusal.refusal(), Refusal::Authentication, "{refusal}");

    // The password in the URL works as well (and is not printed in the config).
    let in_url = RedisConfig {
        username: None,
        password: None,
        ..config(vec![format!("rediss://{USER}:{PASSWORD}@127.0.0.1:{}/", redis.port)], &tls)
    };
    assert!(!format!("{in_url:?} {right:?}").contains(PASSWORD), "{in_url:?}");
    RedisBroker::connect(in_url, handler()).await.unwrap();
}

#[tokio::test]
async fn over_a_redis_cluster_a_wrong_password_is_refused_clearly() {
    let ca = TestCa::new();
    let tls = secured(&ca);
    let cluster = RedisCluster::start_tls(&tls);
    let wrong = RedisConfig {
        cluster: true,
        password: Some("not-the-password".into()),
        ..config(cluster.urls(), &tls)
    };
    let handler = Arc::new(Recorder::default()) as Arc<dyn MessageHandler>;
    let refusal = refused(RedisBroker::connect(wrong.clone(), handler).await, "not-the-password");
    assert_eq!(refusal.refusal(), Refusal::Authentication, "{refusal}");
    assert!(cluster.ports.iter().any(|p| refusal.addr() == format!("127.0.0.1:{p}")), "{refusal}");
    let refusal = refused(RedisIdempotency::connect(&wrong).await, "not-the-password");
    assert_eq!(refusal.refusal(), Refusal::Authentication, "{refusal}");
}

#[tokio::test]
async fn a_required_client_certificate_is_presented_and_its_absence_is_refused_clearly() {
    let ca = TestCa::new();
    let tls = secured(&ca).require_client_certificate();
    let redis = RedisServer::start_tls(&tls);
    let with_certificate = config(vec![redis.url()], &tls);
    assert!(with_certificate.tls.client.is_some());

    // With the certificate, the broker works end to end.
    let recorder = Arc::new(Recorder::default());
    let receiver =
        RedisBroker::connect(with_certificate.clone(), recorder.clone() as Arc<dyn MessageHandler>)
            .await
            .unwrap();
    let publisher =
        RedisBroker::connect(with_certificate.clone(), Arc::new(Recorder::default())).await.unwrap();
    let news = topic("news");
    receiver.subscribe(&news).await.unwrap();
    publisher.publish(&news, publication("app1", "news", "over-mtls")).await.unwrap();
    recorder.wait_for(&news, 1).await;

    // Without it, Redis ends the handshake: a TLS refusal that says what is missing.
    let without =
        RedisConfig { tls: RedisTls { client: None, ..with_certificate.tls.clone() }, ..with_certificate };
    let refusal = refused(RedisBroker::connect(without, Arc::new(Recorder::default())).await, PASSWORD);
    assert_eq!(refusal.refusal(), Refusal::Tls, "{refusal}");
    assert!(refusal.to_string().contains("client certificate"), "{refusal}");
}

#[tokio::test]
async fn an_untrusted_server_certificate_or_tls_settings_without_tls_are_refused_clearly() {
    let ca = TestCa::new();
    let tls = secured(&ca);
    let redis = RedisServer::start_tls(&tls);
    let handler = || Arc::new(Recorder::default()) as Arc<dyn MessageHandler>;

    // Mozilla's roots do not include the test CA; another CA does not either.
    let mozilla = RedisConfig { tls: RedisTls::default(), ..config(vec![redis.url()], &tls) };
    let refusal = refused(RedisBroker::connect(mozilla, handler()).await, PASSWORD);
    assert_eq!(refusal.refusal(), Refusal::Tls, "{refusal}");
    assert!(refusal.to_string().contains("not signed by a CA trusted here"), "{refusal}");
    let other = TestCa::named("Another test CA");
    let wrong_ca = RedisConfig {
        tls: RedisTls { ca_file: Some(other.ca_file()), client: None },
        ..config(vec![redis.url()], &tls)
    };
    assert_eq!(refused(RedisBroker::connect(wrong_ca, handler()).await, PASSWORD).refusal(), Refusal::Tls);

    // TLS settings with a redis:// URL cannot work.
    let plain = RedisServer::start();
    let refusal = refused(RedisBroker::connect(config(vec![plain.url()], &tls), handler()).await, PASSWORD);
    assert_eq!(refusal.refusal(), Refusal::Config, "{refusal}");
}
