//! `herald smoke` against a real `herald dev` process: it passes when every step works,
//! and when one does not it fails with exit 1 naming that step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use herald_testkit::wait_until_blocking;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// The app the server serves; `secret` and `token` vary for the smoke client.
fn config(dir: &Path, name: &str, secret: &str, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[[apps]]\nid = \"smoke\"\nkey = \"smoke-key\"\nsecret = \"{secret}\"\napi_tokens = [\"{token}\"]\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A `herald dev` on port 0 everywhere, and the addresses it bound.
struct Dev {
    child: Child,
    ws: String,
    grpc: String,
}

impl Dev {
    fn start(dir: &Path, config: &Path) -> Self {
        let ready = dir.join("ready.json");
        let mut child = Command::new(HERALD)
            .args(["dev", "--port", "0", "--metrics-port", "0", "--grpc-port", "0", "--config"])
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let text = wait_until_blocking(Duration::from_secs(20), || {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && text.contains(&format!("\"pid\":{},", child.id()))
            {
                return Ok(text);
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("herald dev exited ({status}) before it was ready");
            }
            Err("the ready file".to_string())
        });
        let bound: serde_json::Value = serde_json::from_str(&text).unwrap();
        let address = |name: &str| bound[name].as_str().unwrap().to_owned();
        Self { ws: address("ws"), grpc: address("grpc"), child }
    }

    fn smoke(&self, config: &Path, grpc: Option<&str>) -> Output {
        let mut command = Command::new(HERALD);
        command.args(["smoke", "--config"]).arg(config);
        command.args(["--ws", &format!("ws://{}", self.ws), "--http", &format!("http://{}", self.ws)]);
        if let Some(grpc) = grpc {
            command.args(["--grpc", grpc]);
        }
        command.args(["--timeout", "10s"]).output().unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-smoke-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn passes_against_a_working_herald_and_names_each_step() {
    let dir = temp_dir("ok");
    let server = config(&dir, "server", "right-secret", "right-token-of-sixteen");
    let dev = Dev::start(&dir, &server);
    let grpc = format!("http://{}", dev.grpc);
    let out = dev.smoke(&server, Some(&grpc));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for step in ["subscribed to smoke-", "HTTP API publish delivered", "gRPC publish delivered", "smoke: ok"]
    {
        assert!(stdout.contains(step), "{step:?} in {stdout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failing_step_is_exit_1_and_named() {
    let dir = temp_dir("fail");
    let server = config(&dir, "server", "right-secret", "right-token-of-sixteen");
    let dev = Dev::start(&dir, &server);
    let grpc = format!("http://{}", dev.grpc);
    let failed = |out: Output| -> String {
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // The HTTP API refuses a signature made with another secret.
    let wrong_secret = config(&dir, "wrong-secret", "another-secret", "right-token-of-sixteen");
    let stderr = failed(dev.smoke(&wrong_secret, Some(&grpc)));
    assert!(stderr.contains("smoke: publish over the HTTP API failed: HTTP/1.1 401"), "{stderr}");

    // gRPC refuses another token.
    let wrong_token = config(&dir, "wrong-token", "right-secret", "another-token-of-sixteen");
    let stderr = failed(dev.smoke(&wrong_token, Some(&grpc)));
    assert!(stderr.contains("smoke: publish over gRPC failed") && stderr.contains("token"), "{stderr}");

    // Nothing listens at the WebSocket address given.
    let mut command = Command::new(HERALD);
    command.args(["smoke", "--config"]).arg(&server);
    let out = command.args(["--ws", "ws://127.0.0.1:1", "--http", "http://127.0.0.1:1"]).output().unwrap();
    assert!(failed(out).contains("smoke: connect and subscribe failed"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checks_a_herald_that_serves_tls_with_client_certificates() {
    let ca = herald_testkit::tls::TestCa::new();
    let (server_cert, backend) = (ca.issue("server"), ca.issue("backend"));
    let dir = ca.dir();
    let app = config(dir, "app", "right-secret", "right-token-of-sixteen");
    let tls = |section: &str, auth: &str| {
        format!(
            "[{section}]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nclient_auth = \"{auth}\"\n",
            server_cert.cert_file.display(),
            server_cert.key_file.display(),
            ca.ca_file().display()
        )
    };
    let server = dir.join("server.toml");
    let text = std::fs::read_to_string(&app).unwrap();
    std::fs::write(&server, format!("{}{}{text}", tls("server.tls", "api"), tls("grpc.tls", "required")))
        .unwrap();
    let dev = Dev::start(dir, &server);
    let smoke = |identity: bool| {
        let mut command = Command::new(HERALD);
        command.args(["smoke", "--config"]).arg(&app);
        command.args(["--ws", &format!("wss://{}", dev.ws), "--http", &format!("https://{}", dev.ws)]);
        command.args(["--grpc", &format!("https://{}", dev.grpc), "--ca-file"]).arg(ca.ca_file());
        // The certificate names localhost (and 127.0.0.1).
        command.args(["--server-name", "localhost"]);
        if identity {
            command.arg("--cert-file").arg(&backend.cert_file).arg("--key-file").arg(&backend.key_file);
        }
        command.args(["--timeout", "10s"]).output().unwrap()
    };
    let out = smoke(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("gRPC publish delivered"), "{stdout}");

    // Without a client certificate: WebSocket clients are still served, the HTTP API
    // is not.
    let out = smoke(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("smoke: publish over the HTTP API failed: HTTP/1.1 401"), "{stderr}");
}
