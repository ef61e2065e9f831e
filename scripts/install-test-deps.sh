#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently: each step checks first and
# skips what is already there. Run as root on a fresh machine (CI does), or as a
# developer who already has the tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "install-test-deps: $*"; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: error: $* missing and not root: install it ($*) and retry" >&2
    exit 1
  fi
  if [ -z "${HERALD_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export HERALD_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# What the build needs beyond Rust: a C toolchain, pkg-config and OpenSSL's headers
# (librdkafka is built from source, with TLS and SASL over the system's OpenSSL).
scripts/install-build-deps.sh

if command -v cargo-nextest >/dev/null 2>&1 || cargo nextest --version >/dev/null 2>&1; then
  log "cargo-nextest present"
else
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  log "node $(node --version) present"
else
  log "installing nodejs and npm"
  apt_install nodejs npm
fi

if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
  log "$(python3 --version) with pip present"
else
  log "installing python3 and pip"
  apt_install python3 python3-pip
fi
# The TLS tests of the compatibility suite and the Helm chart make their CA and
# certificates with the openssl command-line tool.
if command -v openssl >/dev/null 2>&1; then
  log "$(openssl version | cut -d' ' -f1-2) present"
else
  log "installing openssl"
  apt_install openssl
fi

# The Redis backbone's tests start their own redis-server processes on free ports.
if command -v redis-server >/dev/null 2>&1; then
  log "$(redis-server --version | cut -d' ' -f1-3) present"
else
  log "installing redis-server"
  apt_install redis-server
fi

# The fault tests (scripts/faults.sh) cut paths with nftables rules inside network
# namespaces they create (iproute2's `ip netns`).
if command -v nft >/dev/null 2>&1; then
  log "$(nft --version) present"
else
  log "installing nftables"
  apt_install nftables
fi
if command -v ip >/dev/null 2>&1; then
  log "ip (iproute2) present"
else
  log "installing iproute2"
  apt_install iproute2
fi

# The Kafka event log's tests start their own tansu brokers (a Kafka-protocol broker)
# on free ports. A prebuilt binary next to the repository saves an ~11-minute build;
# without the dynostore feature tansu has no storage engine and refuses to start.
REPO_ROOT="$(pwd)"
TANSU_VERSION=0.6.0
if command -v tansu >/dev/null 2>&1; then
  log "$(tansu --version) present"
elif [ -f "${REPO_ROOT}/../shared/bin/tansu" ]; then
  if [ -w /usr/local/bin ]; then
    log "installing tansu from ../shared/bin to /usr/local/bin"
    install -m 755 "${REPO_ROOT}/../shared/bin/tansu" /usr/local/bin/tansu
  else
    cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    log "installing tansu from ../shared/bin to ${cargo_bin}"
    install -D -m 755 "${REPO_ROOT}/../shared/bin/tansu" "${cargo_bin}/tansu"
  fi
else
  log "building tansu ${TANSU_VERSION} (takes a while)"
  cargo install tansu --locked --version "${TANSU_VERSION}" --features dynostore,libsql
fi

# Debian's own Python refuses system-wide pip installs unless told otherwise; a
# pyenv or venv Python ignores this.
export PIP_BREAK_SYSTEM_PACKAGES=1

scripts/install-node-deps.sh
scripts/install-python-deps.sh
# The Autobahn testsuite (scripts/autobahn.sh) in a Python 2.7 virtualenv; fails
# loudly when the machine has no Python 2.7.
scripts/install-autobahn.sh
# hadolint (the Dockerfile check, scripts/image-check.sh), helm, kubernetes-validate
# and yamllint (the Helm chart's tests) in ~/.cache/herald/k8s-tools.
scripts/install-k8s-tools.sh
