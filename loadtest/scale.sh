#!/usr/bin/env bash
# The scale run, in one command: a million subscribed WebSocket connections on this
# machine, across stateless `herald edge` processes sharing one port and one Redis,
# through a broadcast, a steady load, a kill -9 and a rolling restart. Bounded in
# time, stops and cleans up by itself (every process it starts is killed when it
# ends); not part of CI. Writes report.json, samples.json and SVG plots to
# loadtest/results/scale-<date>/.
#
#   loadtest/scale.sh                      # 1,000,000 connections
#   loadtest/scale.sh --connections 100000 # any `herald-loadtest scale` option
#
# Needs: redis-server, root for the kernel settings below (skipped, with a note, when
# they are already high enough or cannot be changed), about 20 GiB of memory for a
# million (kernel socket memory included; see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v redis-server >/dev/null || { echo "scale.sh: redis-server is missing (apt-get install redis-server)" >&2; exit 1; }

# Kernel settings a million loopback connections need on one box (both ends of each
# connection are here): files for 2M sockets, a listen queue as deep as Herald's
# (4096), and ephemeral ports (the load processes also spread over 254 source
# addresses). Only raised, never lowered.
raise() {
  local key=$1 want=$2 have
  have=$(sysctl -n "$key" | awk '{print $1}')
  if (( have >= want )); then return; fi
  sysctl -qw "$key=$want" 2>/dev/null || echo "scale.sh: could not raise $key to $want (it is $have)" >&2
}
raise fs.file-max 2500000
raise net.core.somaxconn 4096
raise net.ipv4.tcp_max_syn_backlog 4096
# Connections queued on an edge's listener when it closes it (at its connection cap,
# or draining) move to another edge on the port instead of being reset (Linux 5.14+).
if [[ "$(sysctl -n net.ipv4.tcp_migrate_req 2>/dev/null || echo 1)" != 1 ]]; then
  sysctl -qw net.ipv4.tcp_migrate_req=1 2>/dev/null || echo "scale.sh: could not set net.ipv4.tcp_migrate_req=1" >&2
fi
if [[ "$(sysctl -n net.ipv4.ip_local_port_range | awk '{print $1}')" -gt 10000 ]]; then
  sysctl -qw net.ipv4.ip_local_port_range="10000 65000" 2>/dev/null || true
fi

cargo build --release --locked -p herald -p herald-loadtest
out="loadtest/results/scale-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
echo "scale.sh: per-process file limit $(ulimit -n); writing to $out" >&2
# The load generator starts Redis, the edges and its workers, and stops them when it
# ends. It runs in a process group of its own, which is killed whatever happens: when
# the run ends, on Ctrl-C, and after three hours at the latest.
setsid target/release/herald-loadtest scale --herald target/release/herald --out "$out" "$@" \
  > "$out/report.line.json" &
pid=$!
cleanup() { kill -KILL -- "-$pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
( sleep 10800; kill -KILL -- "-$pid" 2>/dev/null ) &
watchdog=$!
status=0
wait "$pid" || status=$?
kill "$watchdog" 2>/dev/null || true
cat "$out/report.line.json"
exit "$status"
