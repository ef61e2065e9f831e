//! [`KafkaEventLog`] against a real tansu broker: the shared [`EventLog`] contract,
//! then what only a real broker shows (outages, restarts, a group of several members).
//!
//! tansu 0.6.0 differs from Kafka in ways these tests work around:
//! - Its memory (and S3) engine answers a fetch from an offset inside a stored batch
//!   with nothing, so a member resuming at a committed position in the middle of a
//!   batch waits forever (tansu 0.7 returns the batch, as Kafka does). The memory
//!   run of the contract sends one record per batch; the sqlite engine, which stores
//!   records one by one, runs it with normal batching.
//! - Its sqlite engine fails every produce (a panic, UNKNOWN_SERVER_ERROR to the
//!   client) from a producer whose epoch it does not know, which is what librdkafka
//!   sends after bumping the epoch itself when records timed out. `KafkaEventLog`
//!   replaces its producer after a failed append; the outage test below fails
//!   without that.
//! - It opens a sqlite URL's path relative to its working directory (the testkit
//!   runs it in `/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeSet, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use herald_backbone::{Append, EventLog, LogConsumer, LogRecord, Position, conformance};
use herald_kafka::{KafkaConfig, KafkaEventLog};
use herald_testkit::{Deadline, tansu::Tansu};

/// How long a call that must fail (rather than hang) gets before the test gives up on
/// it. Only a hang reaches it: how fast librdkafka's own timeouts fire is theirs, not
/// something to bound with this machine's clock.
const HANG: Duration = Duration::from_secs(60);

async fn connect(tansu: &Tansu) -> KafkaEventLog {
    KafkaEventLog::connect(KafkaConfig::new(tansu.brokers())).await.unwrap()
}

fn records(prefix: &str, n: usize) -> Vec<Append> {
    (0..n).map(|i| Append { key: format!("key-{i}").into(), value: format!("{prefix}{i}").into() }).collect()
}

fn value(record: &LogRecord) -> String {
    String::from_utf8(record.value.to_vec()).unwrap()
}

fn after(record: &LogRecord) -> Position {
    Position { topic: record.topic.clone(), partition: record.partition, next_offset: record.offset + 1 }
}

/// Reads `consumer` until it has seen every value in `expected`; panics after 30 s.
/// A read error (a broker connection not up yet, as right after a restart) is
/// transient, as the dispatcher treats it: read again.
async fn read_all(consumer: &mut dyn LogConsumer, expected: &BTreeSet<String>) -> Vec<LogRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read = Vec::new();
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    while !expected.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let polled = tokio::time::timeout(left, consumer.poll(100)).await.unwrap_or_else(|_| {
            panic!("read {} of {} records; read errors: {errors:?}", seen.len(), expected.len())
        });
        match polled {
            Ok(batch) => {
                seen.extend(batch.iter().map(value));
                read.extend(batch);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    read
}

/// A scratch directory for a sqlite-backed tansu, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-kafka-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// tansu's storage URL for a database in this directory.
    fn sqlite(&self) -> String {
        format!("sqlite://{}/tansu.db", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// tansu's sqlite engine stores records one by one, so a fetch can start anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_event_log_conforms_on_tansu_sqlite() {
    let dir = TempDir::new("conformance");
    let tansu = Tansu::start_with_storage(&dir.sqlite());
    let log = connect(&tansu).await;
    conformance::event_log_scenarios(&log, "sqlite-").await;
}

/// tansu 0.6's memory (and S3) engine answers a fetch from an offset in the middle
/// of a stored batch with nothing (fixed in tansu 0.7: "storage: return the batch
/// containing a mid-batch fetch offset"), so a member resuming at a committed
/// position inside a batch would wait forever. One record per batch avoids it.
#[tokio::test]
async fn kafka_event_log_conforms_on_tansu_memory() {
    let tansu = Tansu::start();
    let config = KafkaConfig::new(tansu.brokers()).with_property("batch.num.messages", "1");
    let log = KafkaEventLog::connect(config).await.unwrap();
    conformance::event_log_scenarios(&log, "memory-").await;
}

#[tokio::test]
async fn connect_fails_when_no_broker_answers() {
    // A port bound and never listened on: held by this test, so nothing else can
    // take it, and every connection to it is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let connect = KafkaEventLog::connect(KafkaConfig::new(format!("127.0.0.1:{port}")));
    let result = Deadline::after(HANG).run(connect, || "connect to fail".into()).await;
    assert!(result.is_err(), "connected to nothing");
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let config = KafkaConfig::new("127.0.0.1:9092").with_property("enable.auto.commit", "true");
    let Err(e) = KafkaEventLog::connect(config).await else { panic!("accepted") };
    assert!(e.to_string().contains("enable.auto.commit"), "{e}");
}

#[tokio::test]
async fn append_to_a_missing_topic_fails() {
    let tansu = Tansu::start();
    let config = KafkaConfig::new(tansu.brokers()).with_property("message.timeout.ms", "3000");
    let log = KafkaEventLog::connect(config).await.unwrap();
    let result =
        Deadline::after(HANG).run(log.append("missing", records("v", 1)), || "append to fail".into()).await;
    assert!(result.is_err(), "appended to a topic nobody created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_fails_when_the_broker_dies_and_works_once_it_is_back() {
    let dir = TempDir::new("outage");
    let mut tansu = Tansu::start_with_storage(&dir.sqlite());
    let config = KafkaConfig::new(tansu.brokers()).with_property("message.timeout.ms", "3000");
    let log = KafkaEventLog::connect(config).await.unwrap();
    log.ensure_topics(&["outage"], 2).await.unwrap();
    log.append("outage", records("before-", 10)).await.unwrap();

    tansu.stop();
    let started = Instant::now();
    let during = log.append("outage", records("during-", 10));
    let result = Deadline::after(HANG).run(during, || "an append to a dead broker to fail".into()).await;
    let error = result.expect_err("an append to a dead broker succeeded");
    assert!(error.is_retryable(), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(2), "failed before the message timeout: {error}");
    println!("append while the broker is down: {error} after {:?}", started.elapsed());

    // Back, with its data: appends work again without a new KafkaEventLog.
    tansu.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = Vec::new();
    while let Err(e) = log.append("outage", records("after-", 10)).await {
        assert!(Instant::now() < deadline, "appends did not recover: {e}");
        failures.push(e.to_string());
        if tansu.crashed() {
            // tansu's own bug, not an outage Herald must ride out: a broker that is
            // back is one that works (see `Tansu::crashed`).
            println!("tansu panicked after the restart; restarting it again");
            tansu.restart();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("appends failed {} times after the restart: {failures:?}", failures.len());
    let mut consumer = log.consume("outage-readers", "outage").await.unwrap();
    let expected: BTreeSet<String> =
        (0..10).flat_map(|i| [format!("before-{i}"), format!("after-{i}")]).collect();
    read_all(consumer.as_mut(), &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_commits_fail_while_the_broker_is_down() {
    let mut tansu = Tansu::start();
    // librdkafka holds a commit back for up to the session timeout while there is no
    // coordinator: a short one keeps the test short.
    let config = KafkaConfig::new(tansu.brokers()).with_property("session.timeout.ms", "6000");
    let log = KafkaEventLog::connect(config).await.unwrap();
    log.ensure_topics(&["down"], 1).await.unwrap();
    log.append("down", records("v", 1)).await.unwrap();
    let mut consumer = log.consume("downers", "down").await.unwrap();
    let read = read_all(consumer.as_mut(), &["v0".to_owned()].into()).await;

    tansu.stop();
    let started = Instant::now();
    let position = [after(&read[0])];
    let commit = consumer.commit(&position);
    let result = Deadline::after(HANG).run(commit, || "a commit to a dead broker to fail".into()).await;
    let error = result.expect_err("a commit to a dead broker succeeded");
    println!("commit while the broker is down: {error} after {:?}", started.elapsed());
    // The consumer reports the outage instead of waiting in silence.
    let polled = Deadline::after(HANG).run(consumer.poll(10), || "a read to report the outage".into()).await;
    assert!(polled.is_err(), "{polled:?}");
}

/// While the broker is away librdkafka queues an error for every failed connection
/// attempt, ahead of the records that come once it is back. Handed out one per poll,
/// they hold the records back behind a reader that pauses after each error (the
/// dispatcher waits a second): it then lags behind for longer than the outage
/// lasted, and the longer the outage, the longer the lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_queued_during_an_outage_do_not_hold_back_the_records_after_it() {
    let dir = TempDir::new("stale-errors");
    let mut tansu = Tansu::start_with_storage(&dir.sqlite());
    let config = KafkaConfig::new(tansu.brokers()).with_property("session.timeout.ms", "6000");
    let log = KafkaEventLog::connect(config).await.unwrap();
    log.ensure_topics(&["stale"], 1).await.unwrap();
    log.append("stale", records("before-", 1)).await.unwrap();
    let mut consumer = log.consume("stale-readers", "stale").await.unwrap();
    read_all(consumer.as_mut(), &["before-0".to_owned()].into()).await;

    // An outage of a few seconds, during which nobody reads.
    tansu.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    tansu.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = log.append("stale", records("after-", 1)).await {
        assert!(Instant::now() < deadline, "appends did not recover: {e}");
        if tansu.crashed() {
            tansu.restart();
        }
    }

    // The broker is back and the record is in the log: the reader gets it, after at
    // most the errors of the reconnection itself, not one poll per queued error.
    let mut errors = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.poll(100)).await.expect("the record never came") {
            Ok(batch) if batch.iter().any(|r| value(r) == "after-0") => break,
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    println!("{} errors before the record: {errors:?}", errors.len());
    assert!(errors.len() <= 2, "{} errors came before the record: {errors:?}", errors.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_positions_survive_a_broker_restart() {
    let dir = TempDir::new("restart");
    let mut tansu = Tansu::start_with_storage(&dir.sqlite());
    // The broker may die before the dropped member's leave reaches it: the group
    // then waits for that member's session to time out before it rebalances.
    let config = KafkaConfig::new(tansu.brokers()).with_property("session.timeout.ms", "6000");
    let log = KafkaEventLog::connect(config.clone()).await.unwrap();
    log.ensure_topics(&["kept"], 1).await.unwrap();
    log.append("kept", records("first-", 5)).await.unwrap();
    let mut consumer = log.consume("keepers", "kept").await.unwrap();
    let read = read_all(consumer.as_mut(), &(0..5).map(|i| format!("first-{i}")).collect()).await;
    consumer.commit(&[after(read.last().unwrap())]).await.unwrap();
    drop(consumer);

    tansu.restart();
    let log = KafkaEventLog::connect(config).await.unwrap();
    log.append("kept", records("second-", 5)).await.unwrap();
    let mut consumer = log.consume("keepers", "kept").await.unwrap();
    let read = read_all(consumer.as_mut(), &(0..5).map(|i| format!("second-{i}")).collect()).await;
    assert!(read.iter().all(|r| value(r).starts_with("second-")), "read committed records again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_of_a_group_read_every_record_between_them() {
    let tansu = Tansu::start();
    let log = connect(&tansu).await;
    log.ensure_topics(&["shared"], 4).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Vec<String>)>();
    let mut members = Vec::new();
    for member in 0..2 {
        let mut consumer = log.consume("sharers", "shared").await.unwrap();
        let tx = tx.clone();
        members.push(tokio::spawn(async move {
            loop {
                // Errors during a rebalance are transient: poll again.
                let Ok(batch) = consumer.poll(50).await else { continue };
                let positions: Vec<Position> = batch.iter().map(after).collect();
                let _ = consumer.commit(&positions).await;
                if tx.send((member, batch.iter().map(value).collect())).is_err() {
                    return;
                }
            }
        }));
    }
    let expected: BTreeSet<String> = (0..200).map(|i| format!("v{i}")).collect();
    log.append("shared", records("v", 200)).await.unwrap();

    // At least once: a record may come twice (read again after a rebalance), but
    // every record comes, from one member or the other.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeSet::new();
    let mut by_member = [HashSet::new(), HashSet::new()];
    while !expected.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((member, values))) = tokio::time::timeout(left, rx.recv()).await else {
            panic!("the group read {} of {} records", seen.len(), expected.len());
        };
        by_member[member].extend(values.iter().cloned());
        seen.extend(values);
    }
    assert_eq!(seen, expected);
    println!("member 0 read {}, member 1 read {}", by_member[0].len(), by_member[1].len());
    for member in members {
        member.abort();
    }
}
