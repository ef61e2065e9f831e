//! The `herald` binary as an operator runs it: configuration checking, start-up,
//! readiness and a graceful SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use herald_testkit::{Deadline, wait_until_blocking};

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
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut ws_addr = None;
    let mut health_addr = None;
    for line in stderr.by_ref() {
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
    // The rest of the log, read as it comes so a full pipe never blocks the process.
    let log = std::thread::spawn(move || stderr.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    assert!(get(&health_addr, "/readyz").contains("200"));
    assert!(get(&health_addr, "/healthz").contains("200"));
    assert!(get(&ws_addr, "/nothing-here").contains("404"));

    let mut stdout = String::new();
    let mut out = child.stdout.take().unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_for_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    // Within the grace period, said by the process rather than measured on a loaded
    // machine's clock: with nothing left open, the edge never reports running out of it
    // and the drain runs to the end.
    let log = log.join().unwrap();
    assert!(!log.contains("grace period over"), "shutdown ran out of its grace period: {log}");
    assert!(log.contains("SIGTERM received") && log.contains("stopped"), "no clean stop in: {log}");
    out.read_to_string(&mut stdout).unwrap();
    for expected in ["demo-key", "demo-secret", "new Pusher("] {
        assert!(stdout.contains(expected), "{expected} not in the banner: {stdout}");
    }
}

/// Waits for `child` to exit; kills it and fails if it is still running after `within`
/// (a hung shutdown; a passing test never waits this long).
fn wait_for_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Deadline::after(within);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if deadline.passed() {
            let _ = child.kill();
            panic!("herald still running {within:?} after SIGTERM");
        }
        deadline.poll_again_blocking(String::new);
    }
}

/// Polls until `path` holds the ready file of `child` (Herald writes it atomically:
/// whole or absent; a file of another pid is stale), failing if the process exits
/// first or after `within`.
fn wait_for_ready_file(child: &mut std::process::Child, path: &std::path::Path, within: Duration) -> String {
    wait_until_blocking(within, || {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.contains(&format!("\"pid\":{},", child.id()))
        {
            return Ok(text);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("herald exited ({status}) before writing {}", path.display());
        }
        Err(format!("the ready file {}", path.display()))
    })
}

#[test]
fn port_0_everywhere_and_the_ready_file_names_the_ports_bound() {
    let dir = std::env::temp_dir().join(format!("herald-cli-ready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready.json");
    std::fs::write(&ready, r#"{"pid":1,"ws":"127.0.0.1:1"}"#).unwrap();
    let mut child = Command::new(HERALD)
        .args(["dev", "--port", "0", "--metrics-port", "0", "--grpc-port", "0", "--ready-file"])
        .arg(&ready)
        .env("HERALD_SERVER__SHUTDOWN_GRACE_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The stale file of "an earlier run" is replaced.
    let text = wait_for_ready_file(&mut child, &ready, Duration::from_secs(20));
    let bound: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(bound["pid"], child.id(), "{text}");
    let address = |name: &str| -> std::net::SocketAddr { bound[name].as_str().unwrap().parse().unwrap() };
    let (ws, grpc, metrics) = (address("ws"), address("grpc"), address("metrics"));
    assert_eq!(address("http"), ws, "one listener for WebSocket and the HTTP API");
    let ports = [ws.port(), grpc.port(), metrics.port()];
    assert!(ports.iter().all(|p| *p != 0), "{ports:?}");
    assert_eq!(ports.iter().collect::<std::collections::HashSet<_>>().len(), 3, "{ports:?}");

    // Each is the listener it claims to be.
    assert!(get(&metrics.to_string(), "/readyz").contains("200"));
    assert!(get(&ws.to_string(), "/nothing-here").contains("404"));
    let mut h2 = TcpStream::connect(grpc).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    let mut frame = [0u8; 9];
    h2.read_exact(&mut frame).unwrap();
    assert_eq!(frame[3], 0x4, "gRPC answers the HTTP/2 preface with SETTINGS");

    // A clean stop removes it: nothing is served at those addresses any more.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!ready.exists(), "the ready file outlived the process");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_ready_file_in_a_missing_directory_is_a_config_error() {
    let output = Command::new(HERALD)
        .args(["check-config", "--ready-file", "/nonexistent-herald-dir/ready.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.ready_file"));
}
