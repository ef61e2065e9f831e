//! `herald edge` over Redis as managed services run it: TLS only (`rediss://`) with a
//! private CA, an ACL user whose password comes from a file. Edges deliver each
//! other's publications over one instance, three shards and a Redis Cluster; a wrong
//! password stops an edge at start-up with an error that says so and never shows a
//! password; `check-config` reports TLS settings that cannot work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use herald_core::auth;
use herald_testkit::{
    Client, app, http_request, now,
    process::{Process, address},
    redis::{RedisCluster, RedisServer, Tls},
    tls::TestCa,
    wait_until_blocking,
};
use serde_json::json;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const USER: &str = "herald";
const PASSWORD: &str = "pw-5d1e0b7a-from-a-file";
const WRONG: &str = "pw-wrong-1c9f44e2";

/// The test CA, a TLS Redis setup where only [`USER`] gets in, and a file holding
/// `password` (with the trailing newline a mounted secret often has).
struct Secured {
    ca: TestCa,
    tls: Tls,
    password_file: PathBuf,
}

impl Secured {
    fn new(password: &str) -> Self {
        let ca = TestCa::new();
        let tls = Tls::new(&ca).user(USER, PASSWORD);
        let password_file = ca.dir().join("redis-password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        Self { ca, tls, password_file }
    }

    /// The environment of an edge over `urls` (several: shards, or cluster nodes).
    fn env(&self, urls: &[String], cluster: bool) -> Vec<(&'static str, String)> {
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        vec![
            ("HERALD_REDIS__SHARDS", format!("[{}]", urls.join(","))),
            ("HERALD_REDIS__CLUSTER", cluster.to_string()),
            ("HERALD_REDIS__USERNAME", USER.into()),
            ("HERALD_REDIS__PASSWORD_FILE", self.password_file.display().to_string()),
            ("HERALD_REDIS__CA_FILE", self.ca.ca_file().display().to_string()),
            ("HERALD_REDIS__LEASE", "2s".into()),
            ("HERALD_APPS", r#"[{id = "app", key = "app-key", secret = "app-secret"}]"#.into()),
            ("RUST_LOG", "debug".into()),
        ]
    }
}

/// A running `herald edge` and its WebSocket + HTTP API address.
struct Edge {
    _process: Process,
    ws: SocketAddr,
}

impl Edge {
    fn start(env: &[(&'static str, String)]) -> Self {
        let (process, ready) = Process::herald(
            HERALD,
            "edge",
            env.iter().map(|(k, v)| (*k, v.as_str())),
            "herald edge is running",
        );
        assert!(!process.output().contains(PASSWORD), "the password is in the log:\n{}", process.output());
        Self { ws: address(&ready, "ws_addr").unwrap(), _process: process }
    }
}

/// Two edges over the same Redis: a client on the first receives what is published
/// through the second's HTTP API, on every one of a dozen channels (spread over the
/// shards or the cluster's nodes). Returns them, still running.
async fn two_edges_deliver(env: &[(&'static str, String)]) -> (Edge, Edge, Client) {
    let (a, b) = (Edge::start(env), Edge::start(env));
    let mut client = Client::connect(a.ws, &app("app").key).await;
    let channels: Vec<String> = (0..12).map(|i| format!("tls-{i}")).collect();
    for channel in &channels {
        client.subscribe(channel).await;
    }
    for channel in &channels {
        let body = json!({ "name": "tick", "channels": [channel], "data": channel }).to_string().into_bytes();
        let path = "/apps/app/events";
        let query = auth::sign_api_request(&app("app"), "POST", path, Vec::new(), &body, now());
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let (status, _) = http_request(b.ws, "POST", &format!("{path}?{}", query.join("&")), body).await;
        assert_eq!(status, 200);
    }
    let mut got = Vec::new();
    for _ in &channels {
        got.push(client.recv_event("tick").await["data"].as_str().unwrap().to_owned());
    }
    got.sort();
    let mut expected = channels.clone();
    expected.sort();
    assert_eq!(got, expected);
    (a, b, client)
}

#[tokio::test]
async fn edges_over_a_tls_redis_with_an_acl_user_deliver_each_others_publications() {
    let secured = Secured::new(PASSWORD);
    let redis = RedisServer::start_tls(&secured.tls);
    two_edges_deliver(&secured.env(&[redis.url()], false)).await;
}

#[tokio::test]
async fn edges_over_three_tls_redis_shards_deliver_each_others_publications() {
    let secured = Secured::new(PASSWORD);
    let shards = [
        RedisServer::start_tls(&secured.tls),
        RedisServer::start_tls(&secured.tls),
        RedisServer::start_tls(&secured.tls),
    ];
    let urls: Vec<String> = shards.iter().map(RedisServer::url).collect();
    let _running = two_edges_deliver(&secured.env(&urls, false)).await;
    for shard in &shards {
        let channels = shard.cli(&["PUBSUB", "CHANNELS", "*tls-*"]);
        assert!(!channels.trim().is_empty(), "every shard carries some of the channels");
    }
}

#[tokio::test]
async fn edges_over_a_tls_redis_cluster_deliver_each_others_publications() {
    let secured = Secured::new(PASSWORD);
    let cluster = RedisCluster::start_tls(&secured.tls);
    two_edges_deliver(&secured.env(&cluster.urls(), true)).await;
}

/// A child process killed on drop (if it is still running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_wrong_password_stops_the_edge_at_start_up_saying_so_and_not_what_it_is() {
    refused_at_start_up("edge", Vec::new());
}

#[test]
fn a_wrong_password_stops_a_dispatcher_the_same_way() {
    let tansu = herald_testkit::tansu::Tansu::start();
    refused_at_start_up("dispatcher", vec![("HERALD_KAFKA__BROKERS", tansu.brokers())]);
}

/// `herald <role>` with a wrong Redis password (and `extra` settings) exits at once,
/// non-zero, naming the problem and the settings to check, never a password.
fn refused_at_start_up(role: &str, extra: Vec<(&'static str, String)>) {
    let secured = Secured::new(WRONG);
    let redis = RedisServer::start_tls(&secured.tls);
    let mut env = secured.env(&[redis.url()], false);
    // A lease long enough that retrying until it runs out would show.
    env.push(("HERALD_REDIS__LEASE", "60s".into()));
    env.extend(extra);
    let mut child = Command::new(HERALD)
        .args([role, "--port", "0", "--metrics-port", "0", "--grpc-port", "0"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let readers = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .map(|stream| {
        std::thread::spawn(move || {
            let mut text = String::new();
            stream.unwrap().read_to_string(&mut text).unwrap();
            text
        })
    });
    let mut running = Running(child);
    let status = wait_until_blocking(Duration::from_secs(30), || {
        running.0.try_wait().unwrap().ok_or_else(|| format!("herald {role} to exit, without retrying"))
    });
    let output: String = readers.map(|reader| reader.join().unwrap()).concat();
    assert!(!status.success(), "{status}\n{output}");
    let expected = format!(
        "redis 127.0.0.1:{}: authentication failed (wrong user name or password): check redis.username and redis.password",
        redis.port
    );
    assert!(output.contains(&expected), "{output}");
    assert!(!output.contains("is not answering yet"), "a refusal is not retried:\n{output}");
    assert!(!output.contains(WRONG) && !output.contains(PASSWORD), "a password is in the output:\n{output}");
}

#[test]
fn check_config_reports_redis_tls_settings_that_cannot_work_without_the_password() {
    let secured = Secured::new(PASSWORD);
    let missing = secured.ca.dir().join("missing.pem").display().to_string();
    let output = Command::new(HERALD)
        .arg("check-config")
        .env("HERALD_REDIS__URL", format!("redis://{USER}:{PASSWORD}@127.0.0.1:6379/"))
        .env("HERALD_REDIS__PASSWORD_FILE", &secured.password_file)
        .env("HERALD_REDIS__CA_FILE", secured.ca.ca_file())
        .env("HERALD_REDIS__CERT_FILE", &missing)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(64), "{text}");
    for expected in [
        "redis.ca_file, redis.cert_file: TLS settings, but redis.url is not rediss://",
        "redis.cert_file and redis.key_file: a client certificate needs both (or neither)",
        &format!("redis.cert_file: cannot read {missing}"),
        "redis.url: has a password, and redis.password or redis.password_file is set too: keep one",
    ] {
        assert!(text.contains(expected), "{expected}:\n{text}");
    }
    assert!(!text.contains(PASSWORD), "the password is in the output:\n{text}");

    // The same settings, right: valid.
    let output = Command::new(HERALD)
        .arg("check-config")
        .env("HERALD_REDIS__URL", "rediss://127.0.0.1:6380/")
        .env("HERALD_REDIS__USERNAME", USER)
        .env("HERALD_REDIS__PASSWORD_FILE", &secured.password_file)
        .env("HERALD_REDIS__CA_FILE", secured.ca.ca_file())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
