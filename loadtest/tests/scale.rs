//! The scale run (`herald-loadtest scale`), scaled down: Redis, four `herald edge`
//! processes on one port and several load processes, through every phase. Asserts
//! what was counted (every connection subscribed, every delivery made, every client
//! of a killed or restarted edge back, every member of a crowded presence channel
//! counted), never how fast. The edges' connection cap leaves three of them just
//! enough room for everyone, so a crash and each restart fill the others to their cap,
//! and they must leave the port to the rest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use herald_testkit::redis::RedisServer;

#[test]
fn a_cluster_of_four_edges_holds_every_connection_through_a_crash_and_a_rolling_restart() {
    let redis = RedisServer::start();
    let connections = 20_000u64;
    let output = Command::new(env!("CARGO_BIN_EXE_herald-loadtest"))
        .args(["scale", "--herald", common::herald_binary().to_str().unwrap()])
        .args(["--redis", &redis.port.to_string(), "--port", "0"])
        .args(["--connections", &connections.to_string(), "--edges", "4", "--per-worker", "5000"])
        .args(["--channels", "1000", "--presence-every", "50", "--presence-channels", "40"])
        .args(["--presence-crowd", "300"])
        .args(["--edge-env", "HERALD_SERVER__MAX_CONNECTIONS=7000"])
        .args(["--steady-rate", "5000", "--steady-seconds", "2", "--grace-seconds", "2"])
        .args(["--phase-timeout", "300"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the scale run failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report.get("error").is_none(), "{report}\n{stderr}");

    let count = |phase: &str, field: &str| report[phase][field].as_u64().unwrap_or(u64::MAX);
    // Everyone subscribed: the connect phase ends only then.
    assert_eq!(count("connect", "subscriptions"), connections * 2 + connections / 50 + 300, "{report}");
    // The crowd's members all counted, across the edges (the run checks it is whole
    // again after the restarts).
    assert_eq!(report["connect"]["presence_crowd"]["user_count"].as_u64(), Some(300), "{report}");
    // One broadcast to the channel all share reached every connection, once.
    assert_eq!(count("broadcast", "deliveries"), connections, "{report}");
    // The steady phase lost nothing.
    assert!(count("steady", "expected") > 0, "{report}");
    assert_eq!(count("steady", "deliveries"), count("steady", "expected"), "{report}");
    // kill -9 of an edge: its clients all came back (the phase ends when every
    // connection is subscribed again).
    assert!(count("kill", "dropped") > 0, "{report}");
    assert_eq!(count("kill", "reconnected"), count("kill", "dropped"), "{report}");
    // Every edge restarted in turn; every client it drained came back.
    assert_eq!(count("rolling", "edges"), 4, "{report}");
    assert!(count("rolling", "reconnected") >= connections, "{report}");
}
