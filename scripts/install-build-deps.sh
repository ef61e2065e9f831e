#!/usr/bin/env bash
# Installs what building Herald needs beyond the Rust toolchain, idempotently: each
# step checks first and skips what is already there, so the Dockerfile's build stage
# (rust:*-bookworm, which has all of it) and a developer's machine install nothing.
# Run as root on a fresh Debian machine (CI does, through
# scripts/install-test-deps.sh); scripts/build-release.sh runs it too.
#
#   - a C toolchain and make: librdkafka is built from source (rdkafka-sys);
#   - pkg-config and OpenSSL's headers (libssl-dev): librdkafka's TLS and SASL SCRAM
#     use the system's OpenSSL (crates/herald-kafka/Cargo.toml says why).
set -euo pipefail

log() { echo "install-build-deps: $*"; }

missing=()
command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || missing+=(build-essential)
command -v perl >/dev/null 2>&1 || missing+=(perl)
if ! command -v pkg-config >/dev/null 2>&1; then
  missing+=(pkg-config libssl-dev)
elif ! pkg-config --exists openssl; then
  missing+=(libssl-dev)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  log "C toolchain, pkg-config and OpenSSL $(pkg-config --modversion openssl) headers present"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-build-deps: error: missing ${missing[*]} (Debian package names) and not root on Debian: install them and retry" >&2
  exit 1
fi
log "installing ${missing[*]}"
if [ -z "${HERALD_APT_UPDATED:-}" ]; then
  apt-get update -qq
  export HERALD_APT_UPDATED=1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
pkg-config --exists openssl || { echo "install-build-deps: error: pkg-config still finds no openssl" >&2; exit 1; }
log "OpenSSL $(pkg-config --modversion openssl) headers installed"
