#!/usr/bin/env bash
# Runs the benchmark matrix of BENCHMARKS.md against several Pusher-compatible servers,
# one at a time on the same port, with the same load generator, and prints one JSON
# line per run (prefixed with the server's name) to stdout and to loadtest/results/.
#
#   loadtest/compare.sh [herald] [herald-t1] [null] [node] [sockudo]   (default: all available)
#   ONLY=burst-8,churn loadtest/compare.sh herald                      (some scenarios only)
#
# Servers:
#   herald   target/release/herald dev (in-memory backbone)
#   herald-t1  the same with server.edge_threads = 1 (one dedicated event loop)
#   herald-base  $HERALD_BASE dev: another build of Herald (an earlier commit), to
#            measure a change against the commit before it in the same run
#   herald-otel, herald-otel-1pct  herald dev exporting traces ([telemetry], sample_ratio
#            1.0 or 0.01) to `herald-loadtest otlp-sink` on $OTLP_PORT, which only counts
#            spans (its counts go to $OUT/<server>-otlp.txt when the run ends)
#   null     herald-loadtest null-server: the floor (one thread that only write()s)
#   node     loadtest/node/ws-broadcast.mjs (Node.js + ws); needs `npm ci` there
#   sockudo  any command in $SOCKUDO_CMD that starts Sockudo in the foreground on the
#            port given as its last argument, with app demo / demo-key / demo-secret.
#            This repository neither contains nor builds Sockudo.
#
# Every run is bounded in time; servers are stopped after each run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PORT="${PORT:-16101}"
OTLP_PORT="${OTLP_PORT:-14317}"
SINK_PID=
OUT="${OUT:-loadtest/results}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
mkdir -p "$OUT"
ulimit -n 20000

servers=("$@")
if [ ${#servers[@]} -eq 0 ]; then
  servers=(herald herald-t1 null node)
  [ -n "${SOCKUDO_CMD:-}" ] && servers+=(sockudo)
fi

cargo build --release --locked -p herald -p herald-loadtest >&2
LOAD=target/release/herald-loadtest

start_server() {
  case "$1" in
    herald) target/release/herald dev --port "$PORT" --metrics-port 19191 --grpc-port 15151 >"$OUT/$1.log" 2>&1 & ;;
    herald-t1) HERALD_SERVER__EDGE_THREADS=1 target/release/herald dev --port "$PORT" --metrics-port 19191 \
      --grpc-port 15151 >"$OUT/$1.log" 2>&1 & ;;
    herald-base) "${HERALD_BASE:?set HERALD_BASE to the herald binary to compare with}" dev --port "$PORT" \
      --metrics-port 19191 --grpc-port 15151 >"$OUT/$1.log" 2>&1 & ;;
    herald-otel|herald-otel-1pct)
      # Traces exported to an OTLP sink that only counts them (sample_ratio 1.0 or 0.01).
      local ratio=1.0
      [ "$1" = herald-otel-1pct ] && ratio=0.01
      "$LOAD" otlp-sink --listen "127.0.0.1:$OTLP_PORT" --seconds 300 >>"$OUT/$1-otlp.txt" 2>"$OUT/$1-otlp.log" &
      SINK_PID=$!
      HERALD_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT" HERALD_TELEMETRY__SAMPLE_RATIO="$ratio" \
        target/release/herald dev --port "$PORT" --metrics-port 19191 --grpc-port 15151 >"$OUT/$1.log" 2>&1 & ;;
    null) "$LOAD" null-server --listen "127.0.0.1:$PORT" --seconds 300 >"$OUT/$1.log" 2>&1 & ;;
    node) node loadtest/node/ws-broadcast.mjs --port "$PORT" >"$OUT/$1.log" 2>&1 & ;;
    sockudo) $SOCKUDO_CMD "$PORT" >"$OUT/$1.log" 2>&1 & ;;
    *) echo "unknown server $1" >&2; exit 64 ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "$1 did not start; see $OUT/$1.log" >&2
  exit 1
}

# SIGTERM, then SIGKILL for a server still running after 10 s.
stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  if [ -n "$SINK_PID" ]; then
    kill "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=
  fi
}

# run NAME SERVER ARGS...: one scenario against a fresh server (only the scenarios
# named in $ONLY, comma-separated, when it is set).
run() {
  local name="$1" server="$2"
  shift 2
  case ",${ONLY:-$name}," in *",$name,"*) ;; *) return 0 ;; esac
  start_server "$server"
  sleep 0.5
  local report
  report=$("$LOAD" "$@" --target "127.0.0.1:$PORT" --server-pid "$SERVER_PID" 2>>"$OUT/$server.log" || echo '{"error":"run failed"}')
  stop_server
  echo "$server $name $report" | tee -a "$OUT/results.txt"
}

for server in "${servers[@]}"; do
  fan=(--via http --seconds "$SECONDS_PER_RUN")
  run connect-10k "$server" connect --connections 10000 --channels 100 --hold-seconds 2
  run fanout-1k-1ch "$server" fanout --connections 1000 --channels 1 --rate 100 "${fan[@]}" --plot "$OUT/$server-fanout-1k-1ch.svg"
  run fanout-10k-1ch "$server" fanout --connections 10000 --channels 1 --rate 10 "${fan[@]}" --plot "$OUT/$server-fanout-10k-1ch.svg"
  run fanout-100x100 "$server" fanout --connections 10000 --channels 100 --rate 1000 "${fan[@]}" --plot "$OUT/$server-fanout-100x100.svg"
  run fanout-100x100-light "$server" fanout --connections 10000 --channels 100 --rate 200 "${fan[@]}" --plot "$OUT/$server-fanout-100x100-light.svg"
  run burst-8 "$server" fanout --connections 1000 --channels 1 --rate 800 --batch 8 "${fan[@]}" --plot "$OUT/$server-burst-8.svg"
  run churn "$server" churn --connections 5000 --channels 100 --rate 500 --churn 500 --churn-hold 0.5 "${fan[@]}"
  run max-1k-1ch "$server" fanout --connections 1000 --channels 1 --rate 20 --max --via http --seconds 2
  # 10,000 publishes/s through gRPC over 100 channels of 10 subscribers (the traces
  # overhead scenario of issue 14: compare herald, herald-otel, herald-otel-1pct).
  run publish-10k "$server" fanout --connections 1000 --channels 100 --rate 10000 --via grpc \
    --grpc 127.0.0.1:15151 --seconds "$SECONDS_PER_RUN"
done
