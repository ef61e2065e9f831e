//! What the load-test scenarios' tests share.

use std::path::PathBuf;

/// The `herald` binary the workspace's tests build (`cargo nextest run --workspace`
/// builds every binary first).
pub fn herald_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug/herald");
    assert!(
        binary.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        binary.display()
    );
    binary
}
