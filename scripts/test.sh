#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. install what the tests need (idempotent),
#   2. formatting and lints,
#   3. Rust unit and integration tests (cargo nextest),
#   4. the container image: hadolint on the Dockerfile, checks that it builds with
#      scripts/build-release.sh and that .dockerignore leaves build output out, and
#      the release build itself (scripts/image-check.sh),
#   5. RFC 6455 conformance: the Autobahn testsuite's fuzzing client against an echo
#      harness on the edge's own frame code (scripts/autobahn.sh),
#   6. clients/js (the recovery module for pusher-js) and the compatibility suite:
#      unmodified pusher-js and the official pusher server
#      SDK against a real `herald dev` process and `herald edge` clusters, webhooks
#      checked by the official Standard Webhooks library and the pusher SDK, in dev
#      and over tansu + Redis with a separate `herald dispatcher`,
#   7. the bad-input suite: raw handshakes, frames, Pusher messages, HTTP API and
#      gRPC calls, and a slow consumer against a real `herald dev`, each with its
#      exact answer and a fresh client served afterwards,
#   8. the Helm chart (scripts/helm-test.sh): lint, offline validation against the
#      Kubernetes schemas, assertions, and its rendered pods run as local processes,
#   9. the fault tests: real partitions (nftables), stalls and restarts of Redis,
#      Kafka and Herald inside network namespaces created for them (needs root).
# Any missing tool or service fails the run loudly; nothing is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "== cargo nextest"
cargo nextest run --locked --workspace --all-targets

echo "== container image (hadolint, Dockerfile and .dockerignore checks, release build)"
scripts/image-check.sh

echo "== Autobahn testsuite (RFC 6455) against the edge's frame reader and outbox"
scripts/autobahn.sh

echo "== clients/js: the recovery module's own tests (real pusher-js and Laravel Echo)"
(cd clients/js && npm test)

echo "== compatibility suite (pusher-js, pusher server SDK, grpcio, grpcurl)"
cargo build --locked -p herald
HERALD_BIN="$PWD/target/debug/herald" node --test tests/compat/ loadtest/node/
echo "== bad-input suite (handshakes, frames, Pusher messages, HTTP API, gRPC, slow consumers)"
HERALD_BIN="$PWD/target/debug/herald" node --test tests/badinput/
# The three-edge suite again over three Redis shards and over a Redis Cluster.
for mode in sharded cluster; do
  echo "== cluster compatibility suite over Redis: ${mode}"
  COMPAT_REDIS_MODE="${mode}" HERALD_BIN="$PWD/target/debug/herald" node --test tests/compat/cluster.test.mjs
done
# The webhook verifiers again over a real tansu and redis-server: an edge recording
# to Kafka and a separate dispatcher.
echo "== webhooks over Kafka (tansu) and Redis"
COMPAT_WEBHOOKS_MODE=cluster HERALD_BIN="$PWD/target/debug/herald" node --test tests/compat/webhooks.test.mjs

# The Helm chart: lint, offline schema validation, assertions on the rendered objects,
# and its edge and dispatcher pods run as processes against redis-server and tansu.
echo "== Helm chart (lint, Kubernetes schemas, rendered pods run against redis-server and tansu; dashboard and alert rules against /metrics)"
HERALD_BIN="$PWD/target/debug/herald" scripts/helm-test.sh

# Real partitions, each test file in a network namespace of its own (scripts/faults.sh
# creates and deletes them; nothing leaves them, the host's firewall is untouched).
echo "== fault tests (network namespaces)"
HERALD_BIN="$PWD/target/debug/herald" scripts/faults.sh
