#!/usr/bin/env bash
# Fault tests with real partitions: each tests/faults/*.test.mjs (or each FILE given)
# runs in a network namespace of its own, created here and always deleted, with only
# its loopback interface up. Inside it the test starts redis-server, tansu and Herald
# on fixed ports and cuts paths between them with nftables rules in the namespace's
# own output hook (tests/faults/lib.mjs): no packet ever leaves the namespace, and
# the host's firewall is never touched.
#
#   scripts/faults.sh [NODE-TEST-OPTION...] [FILE...]
#
# Options (arguments starting with -) go to `node --test`, e.g.
# --test-name-pattern=restart to run some tests of a file only.
#
# Needs root (ip netns), `ip` and `nft`; missing any of them fails the run (nothing is
# skipped). HERALD_BIN overrides the binary (default target/debug/herald; build it
# first); REDIS_SERVER and TANSU override the services' binaries (default: on PATH).
# HERALD_FAULTS_KEEP_LOGS=1 keeps each file's work dir (configs, logs) and prints it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
  echo "faults: error: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "network namespaces need root (run as root, as CI does)"
command -v ip >/dev/null 2>&1 || die "ip (iproute2) is missing: scripts/install-test-deps.sh installs it"
command -v nft >/dev/null 2>&1 || die "nft (nftables) is missing: scripts/install-test-deps.sh installs it"
command -v node >/dev/null 2>&1 || die "node is missing: scripts/install-test-deps.sh installs it"

HERALD_BIN="${HERALD_BIN:-$PWD/target/debug/herald}"
[ -x "${HERALD_BIN}" ] || die "no executable Herald at ${HERALD_BIN}: cargo build -p herald, or set HERALD_BIN"
REDIS_SERVER="${REDIS_SERVER:-$(command -v redis-server || true)}"
[ -n "${REDIS_SERVER}" ] || die "redis-server is missing: scripts/install-test-deps.sh installs it"
TANSU="${TANSU:-$(command -v tansu || true)}"
[ -n "${TANSU}" ] || die "tansu is missing: scripts/install-test-deps.sh installs it"
[ -d tests/compat/node_modules ] || die "tests/compat/node_modules is missing: scripts/install-node-deps.sh installs it"

PREFIX=herald-f-

# Every process still in namespace $1, then the namespace itself. Only processes this
# run started can be in it: the namespace was created for it.
remove_namespace() {
  local ns="$1" pids
  pids="$(ip netns pids "${ns}" 2>/dev/null || true)"
  if [ -n "${pids}" ]; then
    # shellcheck disable=SC2086
    kill -KILL ${pids} 2>/dev/null || true
  fi
  ip netns delete "${ns}" 2>/dev/null || true
}

# Namespaces left by an earlier run that was killed before its trap ran: their
# names carry the PID of that run (herald-f-PID-N), which is gone.
for ns in $(ip netns list | awk '{ print $1 }'); do
  case "${ns}" in
    "${PREFIX}"*) ;;
    *) continue ;;
  esac
  owner="${ns#"${PREFIX}"}"
  owner="${owner%%-*}"
  if [ "${owner}" != "$$" ] && ! kill -0 "${owner}" 2>/dev/null; then
    echo "faults: removing stale namespace ${ns}"
    remove_namespace "${ns}"
  fi
done

current_ns=""
runner=""
cleanup() {
  if [ -n "${runner}" ]; then kill -TERM "${runner}" 2>/dev/null || true; fi
  if [ -n "${current_ns}" ]; then remove_namespace "${current_ns}"; fi
  current_ns=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

node_args=()
files=()
for arg in "$@"; do
  case "${arg}" in
    -*) node_args+=("${arg}") ;;
    *) files+=("${arg}") ;;
  esac
done
if [ "${#files[@]}" -eq 0 ]; then
  shopt -s nullglob
  files=(tests/faults/*.test.mjs)
  shopt -u nullglob
fi
[ "${#files[@]}" -gt 0 ] || die "no fault tests found (tests/faults/*.test.mjs)"

failed=()
n=0
for file in "${files[@]}"; do
  [ -f "${file}" ] || die "no such test file: ${file}"
  n=$((n + 1))
  current_ns="${PREFIX}$$-${n}"
  ip netns add "${current_ns}"
  ip netns exec "${current_ns}" ip link set lo up
  echo "== fault tests: ${file} (network namespace ${current_ns})"
  # In the background, so that a TERM to this script reaches the trap at once.
  HERALD_FAULTS_NETNS="${current_ns}" HERALD_BIN="${HERALD_BIN}" REDIS_SERVER="${REDIS_SERVER}" TANSU="${TANSU}" \
    ip netns exec "${current_ns}" node --test --test-concurrency=1 ${node_args[@]+"${node_args[@]}"} "${file}" &
  runner=$!
  status=0
  wait "${runner}" || status=$?
  runner=""
  remove_namespace "${current_ns}"
  current_ns=""
  if [ "${status}" != 0 ]; then failed+=("${file}"); fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "faults: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "faults: all ${#files[@]} file(s) passed"
