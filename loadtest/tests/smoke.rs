//! Keeps the load generator working: a short run of each scenario against a real
//! in-process server. Asserts what was counted, never how fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use herald_api::GrpcConfig;
use herald_testkit::{Server, app, config};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "loadtest-api-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_counts_what_it_did() {
    let mut demo = app("demo");
    demo.api_tokens = vec![TOKEN.into()];
    let server = Server::start(vec![demo], config()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(herald_api::serve(
        listener,
        server.node.clone(),
        GrpcConfig::default(),
        Duration::from_secs(1),
        stop.clone().cancelled_owned(),
    ));

    for mode in ["unary", "stream"] {
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_herald-loadtest"))
                .args(["publish", "--target", &addr.to_string(), "--token", TOKEN, "--app-id", "demo"])
                .args(["--mode", mode, "--seconds", "0.5", "--concurrency", "4"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["scenario"], "publish");
        assert_eq!(report["mode"], mode);
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["published"].as_u64().unwrap() > 0, "{report}");
    }

    let ws = server.addr.to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let output = Command::new(env!("CARGO_BIN_EXE_herald-loadtest")).args(&args).output().unwrap();
            assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
        })
    };
    let pid = std::process::id().to_string();
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let connect = run(words(&format!(
        "connect --target {ws} --key demo-key --connections 300 --channels 10 --server-pid {pid} --hold-seconds 0.1"
    )))
    .await
    .unwrap();
    assert_eq!(connect["connections"], 300, "{connect}");
    assert_eq!(connect["failures"], 0);
    assert!(connect["server_rss_bytes_per_connection"].is_number());

    let fanout = run(words(&format!(
        "fanout --target {ws} --key demo-key --connections 40 --channels 4 --grpc {addr} --token {TOKEN} \
         --app-id demo --rate 200 --seconds 0.5 --server-pid {pid}"
    )))
    .await
    .unwrap();
    assert!(fanout["published"].as_u64().unwrap() > 0, "{fanout}");
    assert_eq!(fanout["delivered"], fanout["expected"], "nothing lost: {fanout}");
    assert_eq!(fanout["expected"].as_u64().unwrap(), fanout["published"].as_u64().unwrap() * 10);
    stop.cancel();
}
