//! TLS on the `herald` binary's listeners as an operator configures it: `check-config`
//! reports every certificate problem at once, and a `herald dev` serving `wss://`,
//! `https://` and gRPC over TLS never writes a secret (app secret, API token,
//! webhook secret, key material) to its output or its metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use herald_testkit::{
    Client,
    tls::{Issued, Leaf, TestCa},
    wait_until_blocking,
};
use serde_json::json;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

const APP_SECRET: &str = "app-secret-c0ffee-7f3a9c";
const API_TOKEN: &str = "api-token-5d2e8b-feed";
const WEBHOOK_SECRET: &str = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1rZXktMzItYnl0ZXM=";

fn app_section() -> String {
    format!(
        r#"
[[apps]]
id = "tls-app"
key = "tls-key"
secret = "{APP_SECRET}"
api_tokens = ["{API_TOKEN}"]

[[webhooks]]
app_id = "tls-app"
id = "receiver"
url = "https://127.0.0.1:9/hook"
secret = "{WEBHOOK_SECRET}"
"#
    )
}

fn tls_section(name: &str, cert: &Issued, key: &Issued, extra: &str) -> String {
    format!(
        "[{name}]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}\n",
        cert.cert_file.display(),
        key.key_file.display()
    )
}

/// Lines of key material: the base64 body of each PEM key.
fn key_lines(issued: &[&Issued]) -> Vec<String> {
    issued
        .iter()
        .flat_map(|i| i.key_pem.lines().filter(|l| !l.starts_with("-----")).map(String::from))
        .collect()
}

/// Kills the process if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn assert_no_secret(text: &str, keys: &[String], what: &str) {
    for secret in [APP_SECRET, API_TOKEN, WEBHOOK_SECRET, "dGVzdC13ZWJob29rLXNlY3JldC1rZXktMzItYnl0ZXM"] {
        assert!(!text.contains(secret), "{secret} in {what}: {text}");
    }
    for line in keys {
        assert!(!text.contains(line.as_str()), "key material in {what}: {text}");
    }
}

#[test]
fn check_config_reports_every_tls_problem_at_once_without_secrets() {
    let ca = TestCa::new();
    let (a, b) = (ca.issue("a"), ca.issue("b"));
    let expired = ca.issue_leaf(Leaf::new("expired").expired());
    let config = format!(
        "{}{}[grpc.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_auth = \"api\"\nclient_ca_file = \"{}\"\n{}",
        // The key of another certificate.
        tls_section("server.tls", &a, &b, ""),
        "",
        expired.cert_file.display(),
        expired.key_file.display(),
        ca.dir().join("missing-ca.pem").display(),
        app_section(),
    );
    let path = ca.dir().join("herald.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(HERALD).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "server.tls: ",
        "b.key is not the key of the certificate in",
        "grpc.tls.cert_file: ",
        "expired on 2021-01-01T00:00:00Z",
        "grpc.tls.client_ca_file: ",
        "missing-ca.pem: cannot be read",
        "grpc.tls.client_auth: \"api\" is for the port",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from: {stderr}");
    }
    let keys = key_lines(&[&a, &b, &expired]);
    assert_no_secret(&stderr, &keys, "check-config's errors");
    assert_no_secret(&String::from_utf8_lossy(&output.stdout), &keys, "check-config's output");

    // And a good one passes.
    let good = format!(
        "{}{}{}",
        tls_section("server.tls", &a, &a, ""),
        tls_section("grpc.tls", &b, &b, ""),
        app_section()
    );
    std::fs::write(&path, good).unwrap();
    let output = Command::new(HERALD).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_no_secret(&String::from_utf8_lossy(&output.stdout), &keys, "check-config's output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_dev_server_writes_no_secret_to_its_output_or_metrics() {
    let ca = TestCa::new();
    let server = ca.issue("server");
    let ready = ca.dir().join("ready.json");
    let config = format!(
        "[server]\nport = 0\nmetrics_port = 0\nshutdown_grace = \"1s\"\n[grpc]\nport = 0\n{}{}{}",
        tls_section("server.tls", &server, &server, ""),
        tls_section("grpc.tls", &server, &server, ""),
        app_section()
    );
    let path = ca.dir().join("herald.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(HERALD)
        .args(["dev", "--config"])
        .arg(&path)
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut child = KillOnDrop(child);
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let bound = wait_until_blocking(Duration::from_secs(30), || {
        std::fs::read_to_string(&ready)
            .ok()
            .filter(|t| t.contains(&format!("\"pid\":{},", child.0.id())))
            .ok_or_else(|| "the ready file".to_string())
    });
    let bound: serde_json::Value = serde_json::from_str(&bound).unwrap();
    let address = |name: &str| -> std::net::SocketAddr { bound[name].as_str().unwrap().parse().unwrap() };
    let (edge, metrics) = (address("ws"), address("metrics"));

    // Traffic that succeeds and traffic that fails, over TLS.
    let trust = ca.client_config(None);
    let mut client = Client::connect_tls(edge, "tls-key", trust.clone()).await;
    client.subscribe("news").await;
    client
        .send(
            json!({ "event": "pusher:subscribe", "data": { "channel": "private-x", "auth": "tls-key:bad" } }),
        )
        .await;
    let app = herald_core::App { secret: APP_SECRET.into(), ..herald_core::App::for_test("tls-app") };
    let app = herald_core::App { key: "tls-key".into(), ..app };
    let body = json!({ "name": "e", "channels": ["news"], "data": "hello" }).to_string();
    let signed = herald_core::auth::sign_api_request(
        &app,
        "POST",
        "/apps/tls-app/events",
        vec![],
        body.as_bytes(),
        herald_testkit::now(),
    );
    let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish();
    let headers = [("content-type", "application/json")];
    let path = format!("/apps/tls-app/events?{query}");
    let (status, _) = herald_testkit::https_request(
        edge,
        trust.clone(),
        "POST",
        &path,
        &headers,
        body.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(client.recv_event("e").await["data"], "hello");
    let forged = path.replace("auth_signature=", "auth_signature=0");
    let (status, _) =
        herald_testkit::https_request(edge, trust.clone(), "POST", &forged, &headers, body.into_bytes())
            .await;
    assert_eq!(status, http::StatusCode::UNAUTHORIZED);
    // Plain HTTP to the TLS port: a failed handshake, counted.
    let mut plain = tokio::net::TcpStream::connect(edge).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut Vec::new()).await;
    let (status, metrics_text) = herald_testkit::http_request(metrics, "GET", "/metrics", vec![]).await;
    assert_eq!(status, http::StatusCode::OK);
    let metrics_text = metrics_text.as_str().unwrap_or_default().to_string();
    assert!(
        metrics_text.contains("herald_tls_certificate_expiry_timestamp_seconds{listener=\"edge\"}"),
        "{metrics_text}"
    );
    // Counted once the server has given up on it, which the client may see first.
    herald_testkit::eventually_async("the failed handshake to be counted", || async {
        let (_, text) = herald_testkit::http_request(metrics, "GET", "/metrics", vec![]).await;
        let failures = "herald_tls_handshake_failures_total{listener=\"edge\",reason=\"error\"} 1";
        text.as_str().is_some_and(|t| t.contains(failures))
    })
    .await;

    assert!(Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap().success());
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(err.contains("herald dev is running"), "{err}");
    let keys = key_lines(&[&server]);
    assert_no_secret(&out, &keys, "stdout");
    assert_no_secret(&err, &keys, "the log");
    assert_no_secret(&metrics_text, &keys, "/metrics");
}
