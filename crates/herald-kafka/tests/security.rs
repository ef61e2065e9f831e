//! [`KafkaEventLog`] over TLS and SASL against a real tansu broker: `security.protocol`
//! SSL (with a private CA, and with a client certificate), SASL_SSL and
//! SASL_PLAINTEXT with SCRAM, the password read from a file; and the failures an
//! operator meets first (an untrusted broker certificate, no client certificate, a
//! wrong password), which must fail `connect` with the reason rather than hang.
//!
//! tansu 0.6 cannot serve TLS itself (see `herald_testkit::tansu`): the test kit
//! terminates TLS in front of it, so librdkafka's side of the handshake is real. Its
//! SASL is its own: SCRAM checks the password against stored credentials; PLAIN
//! accepts any password (tansu 0.6), so only SCRAM can show a wrong password refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use herald_backbone::{Append, EventLog, LogRecord, Position};
use herald_kafka::{KafkaConfig, KafkaEventLog};
use herald_testkit::{
    Deadline,
    tansu::{Options, ScramUser, Tansu, TlsOptions},
    tls::TestCa,
};

/// How long a call that must fail (rather than hang) gets before the test gives up on
/// it. `connect` gives up on an unreachable cluster after 10 s by itself.
const HANG: Duration = Duration::from_secs(60);

const PASSWORD: &str = "correct-horse-battery-staple";

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A broker serving TLS with a certificate of `ca`'s, and `options`' other settings.
fn tls_broker(ca: &TestCa, options: Options) -> Tansu {
    let tls = TlsOptions { server: ca.issue("kafka"), client_ca: None };
    Tansu::start_with(Options { tls: Some(tls), ..options })
}

/// A file holding `content` (with a line break, as `echo` writes it).
fn secret_file(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, format!("{content}\n")).unwrap();
    file
}

fn records(prefix: &str, n: usize) -> Vec<Append> {
    (0..n).map(|i| Append { key: format!("key-{i}").into(), value: format!("{prefix}{i}").into() }).collect()
}

fn value(record: &LogRecord) -> String {
    String::from_utf8(record.value.to_vec()).unwrap()
}

/// Creates `topic`, appends `n` records and reads them back through a group, then
/// commits: every kind of client (admin, producer, consumer) over the connection.
async fn round_trip(log: &KafkaEventLog, topic: &str, n: usize) {
    log.ensure_topics(&[topic], 2).await.unwrap();
    log.append(topic, records("v", n)).await.unwrap();
    let mut consumer = log.consume(&format!("{topic}-readers"), topic).await.unwrap();
    let expected: BTreeSet<String> = (0..n).map(|i| format!("v{i}")).collect();
    let deadline = Deadline::after(Duration::from_secs(30));
    let mut seen = BTreeSet::new();
    let mut last = Vec::new();
    let mut errors = Vec::new();
    while !expected.is_subset(&seen) {
        let polled = deadline
            .run(consumer.poll(100), || format!("read {} of {n}; errors: {errors:?}", seen.len()))
            .await;
        match polled {
            Ok(batch) => {
                seen.extend(batch.iter().map(value));
                last.extend(batch.iter().map(|r| Position {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    next_offset: r.offset + 1,
                }));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    consumer.commit(&last).await.unwrap();
}

/// Connects, expecting a failure: within [`HANG`], and saying one of `reasons`.
async fn refused(config: KafkaConfig, reasons: &[&str]) -> String {
    let result = Deadline::after(HANG).run(KafkaEventLog::connect(config), || "connect to fail".into()).await;
    let Err(error) = result else { panic!("connected") };
    let message = error.to_string();
    println!("refused: {message}");
    assert!(reasons.iter().any(|r| message.contains(r)), "{message}\n  says none of {reasons:?}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_works_over_ssl_with_a_private_ca() {
    let ca = TestCa::new();
    let tansu = tls_broker(&ca, Options::default());
    let config = KafkaConfig::new(tansu.brokers())
        .with_property("security.protocol", "SSL")
        .with_property("ssl.ca.location", path(&ca.ca_file()));
    let log = KafkaEventLog::connect(config).await.unwrap();
    round_trip(&log, "over-ssl", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_fails_the_connection_clearly() {
    let ca = TestCa::new();
    let tansu = tls_broker(&ca, Options::default());
    let stranger = TestCa::named("Some other CA");
    let config = KafkaConfig::new(tansu.brokers())
        .with_property("security.protocol", "SSL")
        .with_property("ssl.ca.location", path(&stranger.ca_file()));
    refused(config, &["certificate verify failed"]).await;

    // Plain TCP to a TLS port: no answer that makes sense, and a clear end too.
    refused(KafkaConfig::new(tansu.brokers()), &["reaching"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_the_broker_requires_one() {
    let ca = TestCa::new();
    let tls = TlsOptions { server: ca.issue("kafka"), client_ca: Some(ca.ca_file()) };
    let tansu = Tansu::start_with(Options { tls: Some(tls), ..Options::default() });
    let without = KafkaConfig::new(tansu.brokers())
        .with_property("security.protocol", "SSL")
        .with_property("ssl.ca.location", path(&ca.ca_file()));
    refused(without.clone(), &["SSL", "ssl", "certificate"]).await;

    // The key's password from a file, as a mounted secret would give it.
    let client = ca.issue("herald-client");
    let dir = tempfile::tempdir().unwrap();
    let key_password = "key-password-1";
    let encrypted_key = dir.path().join("client.key");
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-aes256", "-in", &path(&client.key_file), "-out", &path(&encrypted_key)])
        .args(["-passout", &format!("pass:{key_password}")])
        .status()
        .unwrap();
    assert!(status.success(), "openssl could not encrypt the key");
    let with = without
        .with_property("ssl.certificate.location", path(&client.cert_file))
        .with_property("ssl.key.location", path(&encrypted_key))
        .with_property_file("ssl.key.password", secret_file(dir.path(), "key-password", key_password));
    let log = KafkaEventLog::connect(with).await.unwrap();
    round_trip(&log, "mutual-tls", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_scram_sha_512_and_the_password_from_a_file() {
    let ca = TestCa::new();
    let users = vec![ScramUser::sha512("herald", PASSWORD)];
    let tansu = tls_broker(&ca, Options { scram_users: users, ..Options::default() });
    let dir = tempfile::tempdir().unwrap();
    let config = |password: &str| {
        KafkaConfig::new(tansu.brokers())
            .with_property("security.protocol", "SASL_SSL")
            .with_property("sasl.mechanism", "SCRAM-SHA-512")
            .with_property("sasl.username", "herald")
            .with_property("ssl.ca.location", path(&ca.ca_file()))
            .with_property_file("sasl.password", secret_file(dir.path(), password, password))
    };
    let log = KafkaEventLog::connect(config(PASSWORD)).await.unwrap();
    round_trip(&log, "over-sasl-ssl", 20).await;

    let message = refused(config("wrong-password"), &["SASL authentication", "Authentication failed"]).await;
    assert!(!message.contains("wrong-password"), "the password is in the error: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plaintext_with_scram_sha_256() {
    let users = vec![ScramUser::sha256("herald", PASSWORD)];
    let tansu = Tansu::start_with(Options { scram_users: users, ..Options::default() });
    let config = |password: &str| {
        KafkaConfig::new(tansu.brokers())
            .with_property("security.protocol", "SASL_PLAINTEXT")
            .with_property("sasl.mechanism", "SCRAM-SHA-256")
            .with_property("sasl.username", "herald")
            .with_property("sasl.password", password)
    };
    let log = KafkaEventLog::connect(config(PASSWORD)).await.unwrap();
    round_trip(&log, "over-sasl-plaintext", 5).await;
    refused(config("wrong-password"), &["SASL authentication", "Authentication failed"]).await;
    // A broker that requires SASL, and a client that does not speak it.
    refused(KafkaConfig::new(tansu.brokers()), &["reaching"]).await;
}

/// SASL PLAIN: librdkafka takes the properties and offers PLAIN to the broker.
/// tansu 0.6 does not offer PLAIN (its SASL library is built with SCRAM only), so
/// what a broker that does would answer cannot be shown here; the refusal names
/// the mechanism, which shows it reached the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_plain_reaches_the_broker() {
    let ca = TestCa::new();
    let users = vec![ScramUser::sha512("herald", PASSWORD)];
    let tansu = tls_broker(&ca, Options { scram_users: users, ..Options::default() });
    let dir = tempfile::tempdir().unwrap();
    let config = KafkaConfig::new(tansu.brokers())
        .with_property("security.protocol", "SASL_SSL")
        .with_property("sasl.mechanism", "PLAIN")
        .with_property("sasl.username", "herald")
        .with_property("ssl.ca.location", path(&ca.ca_file()))
        .with_property_file("sasl.password", secret_file(dir.path(), "password", PASSWORD));
    let mut problems = Vec::new();
    config.check(&mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    refused(config, &["SASL PLAIN mechanism handshake failed"]).await;
}

/// Everything librdkafka logs, at its most verbose (`debug=all`: the configuration,
/// the TLS handshake, every SASL step), goes to `tracing` without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_logs_no_secret() {
    let logged = Captured::default();
    // Each test is a process of its own under nextest: the global subscriber is this
    // test's. librdkafka logs from its own threads, so a thread's default would not do.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(logged.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let ca = TestCa::new();
    let users = vec![ScramUser::sha512("herald", PASSWORD)];
    let tansu = tls_broker(&ca, Options { scram_users: users, ..Options::default() });
    let dir = tempfile::tempdir().unwrap();
    let config = KafkaConfig::new(tansu.brokers())
        .with_property("security.protocol", "SASL_SSL")
        .with_property("sasl.mechanism", "SCRAM-SHA-512")
        .with_property("sasl.username", "herald")
        .with_property("ssl.ca.location", path(&ca.ca_file()))
        .with_property("debug", "all")
        .with_property_file("sasl.password", secret_file(dir.path(), "password", PASSWORD));
    let log = KafkaEventLog::connect(config.clone()).await.unwrap();
    round_trip(&log, "logged", 2).await;
    tracing::info!(?config, "the configuration, as Herald would log it");
    drop(log);

    let text = logged.text();
    assert!(text.contains("librdkafka") && text.contains("SCRAM"), "librdkafka logged nothing:\n{text}");
    let dumped = text.lines().find(|line| line.contains("librdkafka") && line.contains("sasl.password"));
    println!("librdkafka's configuration dump: {dumped:?}");
    assert!(dumped.is_some(), "librdkafka did not log its configuration:\n{text}");
    assert!(!text.contains(PASSWORD), "the password was logged");
    println!("{} lines logged, none with the password", text.lines().count());
}

/// What a `tracing` subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
