//! The dispatcher end to end on the in-memory log and store, delivering to real HTTP
//! receivers on loopback: formats and signatures, retries, Retry-After, 410, hung
//! endpoints, dead letters, Pusher batches, rate limits and their fairness, SSRF.
//! Schedules are scaled down (milliseconds for hours), never slept through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use herald_backbone::{EventLog, MemoryEventLog};
use herald_core::{App, AppLimits, Apps};
use herald_dispatcher::{
    Dispatcher, DispatcherConfig,
    schedule::{RetryAfterBounds, RetrySchedule},
};
use herald_proto::v1::{ChannelEvent, ChannelEventType};
use herald_testkit::{
    Deadline,
    receiver::{Answer, Receiver},
    wait_until,
};
use herald_webhooks::{
    endpoint::{Endpoint, Format, new_endpoint_id},
    limiter::LocalRateLimiter,
    sign::{SigningKey, pusher_signature, verify_standard},
    ssrf::AddressPolicy,
    store::{MemoryWebhookStore, WebhookStore},
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn app(id: &str, per_second: u32) -> App {
    let limits = AppLimits { webhooks_per_second: per_second, webhooks_burst: 5, ..AppLimits::default() };
    App { limits, ..herald_testkit::app(id) }
}

fn endpoint(app_id: &str, url: String, format: Format) -> Endpoint {
    Endpoint::new(new_endpoint_id(), app_id, &url, format, SECRET)
}

fn event(app_id: &str, channel: &str, kind: ChannelEventType, n: usize) -> ChannelEvent {
    ChannelEvent {
        id: format!("evt_{n:026}"),
        app_id: app_id.into(),
        channel: channel.into(),
        time_ms: herald_core::time::now_ms(),
        r#type: kind as i32,
        user_id: format!("user-{n}"),
        ..Default::default()
    }
}

struct Harness {
    log: MemoryEventLog,
    /// The log as the dispatcher sees it, counting appends and commits.
    observed: Arc<Observed>,
    store: MemoryWebhookStore,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(apps: Vec<App>, config: DispatcherConfig) -> Self {
        Self::start_reading(apps, config, |log| Arc::new(log)).await
    }

    /// Like `start`, with the dispatcher reading the log through `wrap`.
    async fn start_reading(
        apps: Vec<App>,
        config: DispatcherConfig,
        wrap: impl FnOnce(MemoryEventLog) -> Arc<dyn EventLog>,
    ) -> Self {
        let log = MemoryEventLog::new();
        let store = MemoryWebhookStore::default();
        let stop = CancellationToken::new();
        herald_dispatcher::dispatcher::ensure_topics(&log, &config).await.unwrap();
        let observed = Arc::new(Observed { inner: wrap(log.clone()), seen: Arc::default() });
        let dispatcher = Dispatcher::new(
            Apps::new(apps).unwrap(),
            observed.clone(),
            Arc::new(store.clone()),
            Arc::new(LocalRateLimiter::default()),
            config,
        );
        let run = dispatcher.run(stop.clone(), Duration::from_secs(2));
        let task = tokio::spawn(async move { run.await.unwrap() });
        Self { log, observed, store, stop, task }
    }

    async fn add(&self, endpoint: &Endpoint) {
        self.store.put_endpoint(endpoint).await.unwrap();
    }

    async fn append(&self, events: &[ChannelEvent]) {
        let records = events
            .iter()
            .map(|e| herald_backbone::Append {
                key: format!("{}/{}", e.app_id, e.channel).into(),
                value: e.encode_to_vec().into(),
            })
            .collect();
        self.observed.append("herald.events", records).await.unwrap();
    }

    /// Waits until every record appended so far to a topic the dispatcher reads (the
    /// events, the retry tiers, the parked deliveries) is finished and committed: every
    /// delivery made from them was delivered, dead-lettered, or is itself a record
    /// counted here. A delivery that should not have been made would have arrived
    /// before this returns, which is what makes it a barrier rather than a sleep.
    async fn settled(&self) {
        wait_until(LONG, || {
            let pending = self.observed.seen.lock().unwrap().pending();
            if pending.is_empty() { Ok(()) } else { Err(format!("records still unfinished: {pending:?}")) }
        })
        .await
    }

    /// The app's dead letters, once there is one (panics after [`LONG`]).
    async fn dead_letters(&self, app_id: &str) -> Vec<herald_webhooks::store::DeadLetter> {
        let deadline = Deadline::after(LONG);
        loop {
            let dead = self.store.dead_letters(app_id, 0, 10).await.unwrap();
            if !dead.is_empty() {
                return dead;
            }
            deadline.poll_again(|| format!("a dead letter for {app_id}")).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap();
    }
}

/// Fast settings: loopback allowed, a schedule of milliseconds.
fn config(delays_ms: &[u64]) -> DispatcherConfig {
    let mut config = DispatcherConfig {
        retry: RetrySchedule {
            delays: delays_ms.iter().map(|d| Duration::from_millis(*d)).collect(),
            jitter: 0.0,
        },
        retry_after: RetryAfterBounds { min: Duration::from_millis(100), max: Duration::from_secs(5) },
        endpoint_refresh: Duration::from_millis(50),
        commit_interval: Duration::from_millis(50),
        ..DispatcherConfig::default()
    };
    config.client.policy = AddressPolicy::new(&["127.0.0.1".into()]).unwrap();
    config.client.request_timeout = Duration::from_millis(500);
    config
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn standard_webhooks_are_signed_filtered_and_shaped() {
    let receiver = Receiver::start().await;
    let h = Harness::start(vec![app("a", 0)], config(&[100])).await;
    let mut wanted = endpoint("a", receiver.url("/hook"), Format::StandardWebhooks);
    wanted.event_types = vec!["member.added".parse().unwrap()];
    wanted.channel_patterns = vec!["presence-*".into()];
    h.add(&wanted).await;
    h.append(&[
        event("a", "presence-room", ChannelEventType::MemberAdded, 1),
        event("a", "presence-room", ChannelEventType::ChannelOccupied, 2),
        event("a", "private-x", ChannelEventType::MemberAdded, 3),
        event("other-app", "presence-room", ChannelEventType::MemberAdded, 4),
    ])
    .await;
    let got = receiver.wait_for(1, LONG).await;
    h.settled().await;
    assert_eq!(receiver.received().len(), 1, "only the matching event is delivered");
    let request = &got[0];
    assert_eq!(request.path, "/hook");
    let id = request.header("webhook-id");
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    assert!((timestamp - herald_core::time::now_ms() / 1000).abs() < 30);
    let key = SigningKey::from_secret(SECRET).unwrap();
    assert!(verify_standard(&key, id, timestamp, &request.body, request.header("webhook-signature")));
    let body = request.json();
    assert_eq!(body["type"], "member.added");
    assert_eq!(body["data"]["channel"], "presence-room");
    assert_eq!(body["data"]["user_id"], "user-1");
    assert_eq!(body["data"]["app_id"], "a");
    h.stop().await;
}

#[tokio::test]
async fn failures_retry_on_the_schedule_with_the_same_id_then_dead_letter() {
    let receiver = Receiver::start().await;
    receiver.answer_all(Answer::Status(500));
    let h = Harness::start(vec![app("a", 0)], config(&[100, 300])).await;
    let ep = endpoint("a", receiver.url("/"), Format::StandardWebhooks);
    h.add(&ep).await;
    h.append(&[event("a", "c", ChannelEventType::ChannelOccupied, 1)]).await;
    let got = receiver.wait_for(3, LONG).await;
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one id on every attempt: {ids:?}");
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(90), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(280), "{gaps:?}");
    // Exhausted: a dead letter, no fourth attempt.
    let dead = h.dead_letters("a").await;
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].webhook_id.as_str(), dead[0].attempts), (ids[0], 3));
    assert_eq!(dead[0].last_error, "HTTP 500");
    let attempts = h.store.attempts("a", &ep.id, None, 10).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| (a.attempt, a.status)).collect::<Vec<_>>(),
        [(3, 500), (2, 500), (1, 500)]
    );
    h.settled().await;
    assert_eq!(receiver.received().len(), 3);
    // The dead-letter topic has it too.
    let mut dlq = h.log.consume("test", "herald.webhooks.dead").await.unwrap();
    let records = herald_backbone::conformance::poll_n(dlq.as_mut(), 1).await;
    let delivery = herald_proto::v1::Delivery::decode(records[0].value.as_ref()).unwrap();
    assert_eq!((delivery.id.as_str(), delivery.attempt), (ids[0], 3));
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_success_ends_it() {
    let receiver = Receiver::start().await;
    receiver.script([Answer::RetryAfter(429, 1), Answer::Status(503)]);
    // The schedule's first step is shorter than the Retry-After, its second longer:
    // each gap's lower bound tells which of the two was followed.
    let h = Harness::start(vec![app("a", 0)], config(&[50, 1_500, 50])).await;
    h.add(&endpoint("a", receiver.url("/"), Format::StandardWebhooks)).await;
    h.append(&[event("a", "c", ChannelEventType::ChannelVacated, 1)]).await;
    let got = receiver.wait_for(3, LONG).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "Retry-After: 1 waited {gap:?}");
    let gap = got[2].at - got[1].at;
    assert!(
        gap >= Duration::from_millis(1_450),
        "503 without Retry-After: the schedule's 1.5 s, waited {gap:?}"
    );
    h.settled().await;
    assert_eq!(receiver.received().len(), 3, "delivered: no more attempts");
    assert!(h.store.dead_letters("a", 0, 10).await.unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_dead_letters() {
    let receiver = Receiver::start().await;
    receiver.answer_all(Answer::Status(410));
    let h = Harness::start(vec![app("a", 0)], config(&[50])).await;
    let ep = endpoint("a", receiver.url("/"), Format::StandardWebhooks);
    h.add(&ep).await;
    h.append(&[event("a", "c", ChannelEventType::ChannelOccupied, 1)]).await;
    receiver.wait_for(1, LONG).await;
    h.dead_letters("a").await;
    let stored = h.store.get_endpoint("a", &ep.id).await.unwrap().unwrap();
    assert!(!stored.enabled);
    assert!(stored.disabled_reason.contains("410"), "{}", stored.disabled_reason);
    // A disabled endpoint receives nothing more.
    h.append(&[event("a", "c", ChannelEventType::ChannelOccupied, 2)]).await;
    h.settled().await;
    assert_eq!(receiver.received().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_hung_endpoint_times_out_and_is_retried_without_delaying_others() {
    let hung = Receiver::start().await;
    hung.answer_all(Answer::Hang);
    let healthy = Receiver::start().await;
    let h = Harness::start(vec![app("a", 0), app("b", 0)], config(&[100])).await;
    let a = endpoint("a", hung.url("/"), Format::StandardWebhooks);
    h.add(&a).await;
    h.add(&endpoint("b", healthy.url("/"), Format::StandardWebhooks)).await;
    let mut events: Vec<ChannelEvent> =
        (0..20).map(|n| event("a", "c", ChannelEventType::ChannelOccupied, n)).collect();
    events.extend((100..110).map(|n| event("b", "c", ChannelEventType::ChannelOccupied, n)));
    h.append(&events).await;
    let b_got = healthy.wait_for(10, LONG).await;
    // a's endpoint takes 16 requests at a time (the default cap), all hanging: its
    // 17th request can only start once one of them timed out (500 ms). b's deliveries
    // all came before that, so they never queued behind a's.
    let a_got = hung.wait_for(17, LONG).await;
    assert!(b_got[9].at < a_got[16].at, "b waited for a's hung endpoint");
    // The first attempts time out and are tried again, with the same id.
    let a_got = hung.wait_for(2 * 16, LONG).await;
    let mut per_id = std::collections::HashMap::<&str, usize>::new();
    for request in &a_got {
        *per_id.entry(request.header("webhook-id")).or_default() += 1;
    }
    assert!(per_id.len() <= 20, "{per_id:?}");
    assert!(per_id.values().any(|n| *n > 1), "no webhook-id was tried twice: {per_id:?}");
    // And the store says why: attempt 1 of a retried delivery timed out.
    let deadline = Deadline::after(LONG);
    loop {
        let attempts = h.store.attempts("a", &a.id, None, 100).await.unwrap();
        let retried: Vec<_> =
            attempts.iter().filter(|r| r.attempt == 2).map(|r| r.webhook_id.clone()).collect();
        let timed_out = attempts
            .iter()
            .any(|r| r.attempt == 1 && retried.contains(&r.webhook_id) && r.error.starts_with("timed out"));
        if timed_out {
            break;
        }
        deadline.poll_again(|| format!("a timed-out first attempt followed by a second: {attempts:?}")).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn pusher_format_batches_and_signs_with_the_app_secret() {
    let receiver = Receiver::start().await;
    let h = Harness::start(vec![app("a", 0)], config(&[100])).await;
    h.add(&endpoint("a", receiver.url("/pusher"), Format::Pusher)).await;
    let mut events: Vec<ChannelEvent> =
        (0..5).map(|n| event("a", &format!("presence-{n}"), ChannelEventType::MemberRemoved, n)).collect();
    // Publications have no Pusher form.
    events.push(event("a", "x", ChannelEventType::Publication, 9));
    h.append(&events).await;
    let got = receiver.wait_for(1, LONG).await;
    h.settled().await;
    assert_eq!(receiver.received().len(), 1, "one batch");
    let request = &got[0];
    assert_eq!(request.header("x-pusher-key"), "a-key");
    assert_eq!(request.header("x-pusher-signature"), pusher_signature("a-secret", &request.body));
    let body = request.json();
    assert!(body["time_ms"].as_i64().unwrap() > 0);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(
        events[0],
        serde_json::json!({ "name": "member_removed", "channel": "presence-0", "user_id": "user-0" })
    );
    h.stop().await;
}

#[tokio::test]
async fn a_tenant_at_its_limit_does_not_delay_another() {
    let slow_lane = Receiver::start().await;
    let fast_lane = Receiver::start().await;
    let mut cfg = config(&[100]);
    cfg.max_throttle_wait = Duration::from_millis(300);
    let h = Harness::start(vec![app("limited", 20), app("free", 0)], cfg).await;
    h.add(&endpoint("limited", slow_lane.url("/"), Format::StandardWebhooks)).await;
    h.add(&endpoint("free", fast_lane.url("/"), Format::StandardWebhooks)).await;
    let limited: Vec<ChannelEvent> =
        (0..60).map(|n| event("limited", "c", ChannelEventType::ChannelOccupied, n)).collect();
    h.append(&limited).await;
    // Its burst spent, the limited tenant is at its limit from here on.
    slow_lane.wait_for(5, LONG).await;
    let free: Vec<ChannelEvent> =
        (0..20).map(|n| event("free", "c", ChannelEventType::ChannelOccupied, n)).collect();
    h.append(&free).await;
    let free_got = fast_lane.wait_for(20, LONG).await;
    // The limited one gets its 60 at 20/s (burst 5): about 2.75 s, never faster.
    let got = slow_lane.wait_for(60, LONG).await;
    // Its 15th delivery is at least half a second after its first (ten past the
    // burst at 20/s); the free tenant's twenty were all in before it.
    assert!(free_got[19].at < got[14].at, "the free tenant waited behind the limited one");
    let span = got[59].at - got[0].at;
    assert!(span >= Duration::from_millis(2_500), "60 deliveries at 20/s took only {span:?}");
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 60, "throttling never duplicated or dropped one");
    assert!(h.store.dead_letters("limited", 0, 10).await.unwrap().is_empty(), "throttling used no attempt");
    h.stop().await;
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let receiver = Receiver::start().await;
    let mut cfg = config(&[]);
    cfg.client.policy = AddressPolicy::default();
    let h = Harness::start(vec![app("a", 0)], cfg).await;
    let ep = endpoint("a", receiver.url("/"), Format::StandardWebhooks);
    h.add(&ep).await;
    h.append(&[event("a", "c", ChannelEventType::ChannelOccupied, 1)]).await;
    let dead = h.dead_letters("a").await;
    assert!(
        dead[0].last_error.contains("127.0.0.1") && dead[0].last_error.contains("loopback"),
        "{}",
        dead[0].last_error
    );
    assert!(receiver.received().is_empty());
    h.stop().await;
}

/// An HTTPS receiver with a fresh self-signed certificate for 127.0.0.1: answers 204
/// and counts requests. Returns its URL, the certificate, and the count.
async fn https_receiver()
-> (String, rustls::pki_types::CertificateDer<'static>, Arc<std::sync::atomic::AtomicUsize>) {
    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let certificate = params.self_signed(&key).unwrap();
    let der = certificate.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], private)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/secure", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = service_fn(move |_request: http::Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                    *response.status_mut() = http::StatusCode::NO_CONTENT;
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, der, count)
}

#[tokio::test]
async fn https_endpoints_are_delivered_to_over_verified_tls() {
    let (url, certificate, count) = https_receiver().await;
    // Trusting the receiver's CA: delivered.
    let mut trusting = config(&[]);
    trusting.client.extra_roots = vec![certificate];
    let h = Harness::start(vec![app("a", 0)], trusting).await;
    h.add(&endpoint("a", url.clone(), Format::StandardWebhooks)).await;
    h.append(&[event("a", "c", ChannelEventType::ChannelOccupied, 1)]).await;
    wait_until(LONG, || {
        let arrived = count.load(std::sync::atomic::Ordering::SeqCst);
        if arrived > 0 { Ok(()) } else { Err("a delivery over TLS".to_owned()) }
    })
    .await;
    h.stop().await;

    // Not trusting it: the certificate is refused, the delivery dead-lettered.
    let h = Harness::start(vec![app("a", 0)], config(&[])).await;
    h.add(&endpoint("a", url, Format::StandardWebhooks)).await;
    h.append(&[event("a", "c", ChannelEventType::ChannelOccupied, 2)]).await;
    let dead = h.dead_letters("a").await;
    assert!(dead[0].last_error.starts_with("tls:"), "{}", dead[0].last_error);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test]
async fn an_endpoints_concurrency_cap_holds_and_follows_updates() {
    let receiver = Receiver::start().await;
    let h = Harness::start(vec![app("a", 0)], config(&[100])).await;
    let mut ep = endpoint("a", receiver.url("/"), Format::StandardWebhooks);
    ep.max_concurrency = 2;
    h.add(&ep).await;
    // Answers wait until released: two requests arrive, and no more can until one is
    // answered.
    receiver.hold();
    h.append(&(0..6).map(|n| event("a", "c", ChannelEventType::ChannelOccupied, n)).collect::<Vec<_>>())
        .await;
    receiver.wait_for(2, LONG).await;
    receiver.release();
    receiver.wait_for(6, LONG).await;
    h.settled().await;
    assert_eq!(receiver.max_in_flight(), 2, "never more than the cap at once");

    ep.max_concurrency = 6;
    h.add(&ep).await;
    // Not a synchronisation: the endpoint cache keeps a list 50 ms, so after this its
    // next read is certain to see the new cap.
    tokio::time::sleep(Duration::from_millis(100)).await;
    receiver.hold();
    h.append(&(10..16).map(|n| event("a", "c", ChannelEventType::ChannelOccupied, n)).collect::<Vec<_>>())
        .await;
    // All six arrive while none is answered: only a cap of six lets them.
    receiver.wait_for(12, LONG).await;
    assert_eq!(receiver.max_in_flight(), 6);
    receiver.release();
    h.settled().await;
    h.stop().await;
}

/// The events log of the harness, whose reads of the events topic fail `failures`
/// times first (brokers down).
struct FlakyLog {
    inner: MemoryEventLog,
    failures: usize,
}

struct FlakyConsumer {
    inner: Box<dyn herald_backbone::LogConsumer>,
    failures: usize,
}

#[async_trait::async_trait]
impl EventLog for FlakyLog {
    async fn append(
        &self,
        topic: &str,
        records: Vec<herald_backbone::Append>,
    ) -> herald_backbone::Result<()> {
        self.inner.append(topic, records).await
    }

    async fn ensure_topics(&self, topics: &[&str], partitions: i32) -> herald_backbone::Result<()> {
        self.inner.ensure_topics(topics, partitions).await
    }

    async fn consume(
        &self,
        group: &str,
        topic: &str,
    ) -> herald_backbone::Result<Box<dyn herald_backbone::LogConsumer>> {
        let failures = if topic == "herald.events" { self.failures } else { 0 };
        Ok(Box::new(FlakyConsumer { inner: self.inner.consume(group, topic).await?, failures }))
    }
}

#[async_trait::async_trait]
impl herald_backbone::LogConsumer for FlakyConsumer {
    async fn poll(&mut self, max: usize) -> herald_backbone::Result<Vec<herald_backbone::LogRecord>> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(herald_backbone::Error::unavailable("all brokers down"));
        }
        self.inner.poll(max).await
    }

    async fn commit(&mut self, positions: &[herald_backbone::Position]) -> herald_backbone::Result<()> {
        self.inner.commit(positions).await
    }
}

#[tokio::test]
async fn reading_resumes_after_the_log_was_unreachable() {
    let receiver = Receiver::start().await;
    let h = Harness::start_reading(vec![app("a", 0)], config(&[100]), |inner| {
        Arc::new(FlakyLog { inner, failures: 2 })
    })
    .await;
    h.add(&endpoint("a", receiver.url("/"), Format::StandardWebhooks)).await;
    h.append(&[event("a", "c", ChannelEventType::ChannelOccupied, 1)]).await;
    receiver.wait_for(1, LONG).await;
    h.stop().await;
}

/// What the harness saw of the dispatcher's log: records appended and positions
/// committed, per topic.
#[derive(Default)]
struct Seen {
    appended: std::collections::HashMap<String, i64>,
    committed: std::collections::HashMap<(String, i32), i64>,
}

impl Seen {
    /// Topics the dispatcher reads with records not yet committed: (topic, appended,
    /// committed).
    fn pending(&self) -> Vec<(String, i64, i64)> {
        self.appended
            .iter()
            .filter(|(topic, _)| !topic.ends_with(".dead"))
            .filter_map(|(topic, appended)| {
                let committed: i64 =
                    self.committed.iter().filter(|((t, _), _)| t == topic).map(|(_, next)| *next).sum();
                (committed < *appended).then(|| (topic.clone(), *appended, committed))
            })
            .collect()
    }
}

/// An [`EventLog`] that counts what goes through it.
struct Observed {
    inner: Arc<dyn EventLog>,
    seen: Arc<std::sync::Mutex<Seen>>,
}

struct ObservedConsumer {
    inner: Box<dyn herald_backbone::LogConsumer>,
    seen: Arc<std::sync::Mutex<Seen>>,
}

#[async_trait::async_trait]
impl EventLog for Observed {
    async fn append(
        &self,
        topic: &str,
        records: Vec<herald_backbone::Append>,
    ) -> herald_backbone::Result<()> {
        let n = records.len() as i64;
        self.inner.append(topic, records).await?;
        *self.seen.lock().unwrap().appended.entry(topic.to_owned()).or_default() += n;
        Ok(())
    }

    async fn ensure_topics(&self, topics: &[&str], partitions: i32) -> herald_backbone::Result<()> {
        self.inner.ensure_topics(topics, partitions).await
    }

    async fn consume(
        &self,
        group: &str,
        topic: &str,
    ) -> herald_backbone::Result<Box<dyn herald_backbone::LogConsumer>> {
        Ok(Box::new(ObservedConsumer {
            inner: self.inner.consume(group, topic).await?,
            seen: self.seen.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl herald_backbone::LogConsumer for ObservedConsumer {
    async fn poll(&mut self, max: usize) -> herald_backbone::Result<Vec<herald_backbone::LogRecord>> {
        self.inner.poll(max).await
    }

    async fn commit(&mut self, positions: &[herald_backbone::Position]) -> herald_backbone::Result<()> {
        self.inner.commit(positions).await?;
        let mut seen = self.seen.lock().unwrap();
        for position in positions {
            let next = seen.committed.entry((position.topic.to_string(), position.partition)).or_default();
            *next = (*next).max(position.next_offset);
        }
        Ok(())
    }
}
