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
        None,
        None,
        Duration::from_secs(1),
        stop.clone().cancelled_owned(),
    ));

    for mode in ["unary", "stream"] {
        let report = loadtest(&format!(
            "publish --target {addr} --token {TOKEN} --app-id demo --mode {mode} --seconds 0.5 --concurrency 4"
        ))
        .await;
        assert_eq!(report["scenario"], "publish");
        assert_eq!(report["mode"], mode);
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["published"].as_u64().unwrap() > 0, "{report}");
    }

    let ws = server.addr.to_string();
    let pid = std::process::id().to_string();
    let connect = loadtest(&format!(
        "connect --target {ws} --key demo-key --connections 300 --channels 10 --server-pid {pid} --hold-seconds 0.1"
    ))
    .await;
    assert_eq!(connect["connections"], 300, "{connect}");
    assert_eq!(connect["failures"], 0);
    assert!(connect["server_rss_bytes_per_connection"].is_number());

    let fanout = loadtest(&format!(
        "fanout --target {ws} --key demo-key --connections 40 --channels 4 --grpc {addr} --token {TOKEN} \
         --app-id demo --rate 200 --seconds 0.5 --server-pid {pid}"
    ))
    .await;
    assert!(fanout["published"].as_u64().unwrap() > 0, "{fanout}");
    assert_eq!(fanout["delivered"], fanout["expected"], "nothing lost: {fanout}");
    assert_eq!(fanout["expected"].as_u64().unwrap(), fanout["published"].as_u64().unwrap() * 10);

    // Bursts through the Pusher HTTP API (batch_events), signed with the app's secret.
    let burst = loadtest(&format!(
        "fanout --target {ws} --key demo-key --secret demo-secret --app-id demo --via http --batch 8 \
         --connections 40 --channels 4 --rate 800 --seconds 0.5"
    ))
    .await;
    assert!(burst["published"].as_u64().unwrap() >= 8, "{burst}");
    assert_eq!(burst["published"].as_u64().unwrap() % 8, 0, "whole batches: {burst}");
    assert_eq!(burst["delivered"], burst["expected"], "nothing lost: {burst}");

    // Churn while fanning out, with a latency plot.
    let plot = std::env::temp_dir().join(format!("herald-smoke-{}.svg", std::process::id()));
    let churn = loadtest(&format!(
        "churn --target {ws} --grpc {addr} --token {TOKEN} --connections 30 --channels 3 --rate 100 \
         --seconds 0.5 --churn 100 --churn-hold 0.1 --plot {}",
        plot.display()
    ))
    .await;
    assert_eq!(churn["scenario"], "churn");
    assert!(churn["churn"]["opened"].as_u64().unwrap() > 10, "{churn}");
    assert_eq!(churn["churn"]["failed"], 0, "{churn}");
    assert_eq!(churn["delivered"], churn["expected"], "nothing lost: {churn}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{svg}");
    std::fs::remove_file(&plot).unwrap();

    // The highest sustainable rate, in short rounds.
    let max = loadtest(&format!(
        "fanout --target {ws} --grpc {addr} --token {TOKEN} --connections 20 --channels 2 --rate 50 \
         --seconds 0.3 --max --max-rounds 3"
    ))
    .await;
    assert_eq!(max["scenario"], "fanout-max");
    assert_eq!(max["rounds"].as_array().unwrap().len(), 3, "{max}");
    assert!(max["max_sustained_rate"].as_f64().unwrap() >= 50.0, "{max}");

    // Connections spread over worker processes.
    let spread = loadtest(&format!(
        "connect --target {ws} --key demo-key --connections 90 --channels 3 --processes 3 --hold-seconds 0.1"
    ))
    .await;
    assert_eq!(spread["connections"], 90, "{spread}");
    assert_eq!(spread["processes"], 3);
    stop.cancel();
}

/// The null server speaks enough Pusher for the same scenarios, and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_null_server_takes_the_fanout_scenario() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut null = Command::new(env!("CARGO_BIN_EXE_herald-loadtest"))
        .args(["null-server", "--listen", &format!("127.0.0.1:{port}"), "--seconds", "30"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Ready when it prints its address.
    let stderr = null.stderr.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(10), ready).await.unwrap().unwrap();
    assert!(line.contains("listening"), "{line}");
    for batch in [1, 4] {
        let report = loadtest(&format!(
            "fanout --target 127.0.0.1:{port} --via http --batch {batch} --connections 30 --channels 3 \
             --rate 400 --seconds 0.5"
        ))
        .await;
        assert!(report["published"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["delivered"], report["expected"], "nothing lost: {report}");
    }
    let _ = null.kill();
    let _ = null.wait();
}

/// Runs the load generator with `args` (split on whitespace) and returns its report.
async fn loadtest(args: &str) -> serde_json::Value {
    let args: Vec<String> = args.split_whitespace().map(String::from).collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_herald-loadtest")).args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    })
    .await
    .unwrap()
}
