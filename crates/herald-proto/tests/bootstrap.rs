//! The generated code in `src/gen/` is checked in so that a normal build needs no
//! protoc. This test regenerates it from `proto/` and fails if anything drifted; run
//! it with `HERALD_PROTO_UPDATE=1` to rewrite the files after changing a `.proto`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

const GENERATED: [&str; 2] = ["herald.v1.rs", "herald_v1_descriptor.bin"];

#[test]
fn generated_code_matches_the_protos() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proto_root = crate_dir.join("../../proto");
    let out = std::env::temp_dir().join(format!("herald-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().unwrap());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .file_descriptor_set_path(out.join("herald_v1_descriptor.bin"))
        .compile_with_config(
            config,
            &["publisher.proto", "events.proto", "webhooks.proto"]
                .map(|f| proto_root.join("herald/v1").join(f)),
            &[proto_root],
        )
        .unwrap();

    let checked_in = crate_dir.join("src/gen");
    let update = std::env::var_os("HERALD_PROTO_UPDATE").is_some();
    let mut drifted = Vec::new();
    for name in GENERATED {
        let fresh = std::fs::read(out.join(name)).unwrap();
        let path = checked_in.join(name);
        if update {
            std::fs::write(&path, &fresh).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&fresh[..]) {
            drifted.push(display(&path));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        drifted.is_empty(),
        "generated code is out of date: {drifted:?}; run `HERALD_PROTO_UPDATE=1 cargo test -p herald-proto --test bootstrap` and commit"
    );
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
