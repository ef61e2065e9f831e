//! The `herald` binary as an operator runs it: configuration checking, start-up,
//! readiness and a graceful SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("herald-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_reports_every_error_and_exits_64() {
    let bad = temp_config(
        "bad",
        r#"
        [server]
        host = "nowhere"
        [connection]
        pong_timeout_secs = 0
        [[apps]]
        id = "a"
        key = "k"
        secret = ""
        "#,
    );
    let output = Command::new(HERALD).args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["server.host", "connection.pong_timeout_secs", "apps[0].secret"] {
        assert!(stderr.contains(expected), "{expected} missing from: {stderr}");
    }

    let typo = temp_config("typo", "[server]\nprot = 1\n");
    let output = Command::new(HERALD).args(["check-config", "--config"]).arg(&typo).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("prot"));

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/herald.example.toml");
    let output = Command::new(HERALD).args(["check-config", "--config", example]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));

    let output = Command::new(HERALD)
        .args(["check-config"])
        .env("HERALD_SERVER__PORT", "not-a-port")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "env overrides are validated too");

    // Webhook settings are validated with the rest.
    let webhooks = temp_config(
        "webhooks",
        r#"
        [dispatcher]
        retry_schedule = ["5s", "soon"]
        allow_addresses = ["10.0.0.0/33"]
        [[webhooks]]
        app_id = "nobody"
        id = "hook"
        url = "ftp://example.com/"
        secret = "not-a-secret"
        [[apps]]
        id = "a"
        key = "k"
        secret = "s"
        "#,
    );
    let output = Command::new(HERALD).args(["check-config", "--config"]).arg(&webhooks).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in
        ["dispatcher.retry_schedule", "dispatcher.allow_addresses", "webhooks[0]: url", "webhooks[0].app_id"]
    {
        assert!(stderr.contains(expected), "{expected} missing from: {stderr}");
    }
    let output = Command::new(HERALD)
        .args(["check-config"])
        .env("HERALD_APPS", r#"[{id = "a", key = "k", secret = "s", limits = {webhooks_per_second = 10, webhooks_burst = 0}}]"#)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("webhooks_burst"));

    // The dispatcher cannot run without the event log.
    let output = Command::new(HERALD).args(["dispatcher"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("[kafka]"));

    for path in [bad, typo, webhooks] {
        let _ = std::fs::remove_file(path);
    }
}

/// Sends an HTTP/1.0 GET and returns the status line.
fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.lines().next().unwrap_or("").to_string()
}

#[test]
fn dev_serves_a_demo_app_and_stops_cleanly_on_sigterm() {
    let mut child = Command::new(HERALD)
        .args(["dev", "--port", "0", "--metrics-port", "0", "--grpc-port", "0"])
        .env("HERALD_SERVER__SHUTDOWN_GRACE_SECS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut ws_addr = None;
    let mut health_addr = None;
    for line in stderr.lines() {
        let line = line.unwrap();
        let field = |name: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).map(String::from)
        };
        if line.contains("herald dev is running") {
            ws_addr = field("ws_addr");
            health_addr = field("health_addr");
            break;
        }
    }
    let (ws_addr, health_addr) = (ws_addr.unwrap(), health_addr.unwrap());
    assert!(get(&health_addr, "/readyz").contains("200"));
    assert!(get(&health_addr, "/healthz").contains("200"));
    assert!(get(&ws_addr, "/nothing-here").contains("404"));

    let mut stdout = String::new();
    let mut out = child.stdout.take().unwrap();
    let pid = child.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(4), "exited within the grace period");
    out.read_to_string(&mut stdout).unwrap();
    for expected in ["demo-key", "demo-secret", "new Pusher("] {
        assert!(stdout.contains(expected), "{expected} not in the banner: {stdout}");
    }
}
