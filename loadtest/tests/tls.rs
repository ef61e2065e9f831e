//! The TLS cost run (`herald-loadtest tls`), tiny, against the debug `herald`: both
//! servers start, every connection sets up (over TLS on the second), and every
//! delivery arrives on both. Asserts what was counted, never how fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

#[test]
fn plain_and_tls_servers_both_set_up_every_connection_and_deliver_everything() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald-loadtest"))
        .args(["tls", "--herald", common::herald_binary().to_str().unwrap()])
        .args(["--connections", "50", "--channels", "5", "--rate", "50", "--seconds", "1", "--rounds", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the tls run failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["scenario"], "tls");

    let runs = report["runs"].as_array().unwrap();
    let kinds: Vec<&str> = runs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["plain", "tls"], "{report}");
    assert_eq!(runs[0]["setup"]["tls"], serde_json::Value::Null, "{report}");
    assert_eq!(runs[1]["setup"]["tls"], "TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519", "{report}");
    for run in runs {
        assert_eq!(run["setup"]["connections"], 50, "{run}");
        assert!(run["setup"]["server_cpu_us_per_connection"].is_number(), "{run}");
        let fanout = &run["fanout"];
        assert_eq!(fanout["publish_errors"], 0, "{run}");
        assert!(fanout["published"].as_u64().unwrap() > 0, "{run}");
        // 10 connections on each of 5 channels: every event reaches 10.
        assert_eq!(fanout["expected"].as_u64().unwrap(), fanout["published"].as_u64().unwrap() * 10, "{run}");
        assert_eq!(fanout["delivered"], fanout["expected"], "nothing lost: {run}");
        assert_eq!(fanout["connections_off_count"], 0, "every connection got its channel's events: {run}");
    }
    // CPU time is read in ticks of 10 ms: a run this small may read 0, so no ratio is
    // asserted, only that the summary has one row per kind.
    for row in ["plain", "tls", "tls_over_plain"] {
        assert!(report["summary"][row].is_object(), "{report}");
    }
}
