#!/usr/bin/env bash
# THE release build of the `herald` binary: the Dockerfile's build stage runs this
# script and so does the test suite (scripts/image-check.sh), so the image ships
# exactly what the tests built. scripts/image-check.sh fails if the Dockerfile stops
# calling it.
#
# Output: ${CARGO_TARGET_DIR:-target}/release/herald (its path is printed last).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# zlib (librdkafka's compression) is built from libz-sys' bundled source and linked
# statically: the runtime image (distroless/cc) has glibc and libgcc but no libz.so,
# and a build machine's zlib headers no longer decide what the binary needs.
# librdkafka itself is always built from source and linked statically (rdkafka's
# default features); protoc is vendored (protoc-bin-vendored).
export LIBZ_SYS_STATIC=1

# librdkafka's TLS and SASL SCRAM use the system's OpenSSL, linked dynamically
# (libssl3: the runtime image has Debian 12's; crates/herald-kafka/Cargo.toml says
# why not a vendored copy), so the build needs its headers and pkg-config. The
# Dockerfile's build image has them: this installs nothing there.
scripts/install-build-deps.sh

cargo build --release --locked -p herald --bin herald

target_dir="${CARGO_TARGET_DIR:-target}"
echo "build-release: ${target_dir}/release/herald"
