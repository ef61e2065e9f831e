#!/usr/bin/env bash
# A local Herald cluster on this machine, without Docker: one Redis and several
# `herald edge` processes sharing it; with WEBHOOKS=1 also a Kafka-protocol broker
# (tansu) the edges record events to, and `herald dispatcher` processes delivering
# them as webhooks. See deploy/local/README.md.
#
#   deploy/local/cluster.sh start           start whatever is not running, wait until ready
#   deploy/local/cluster.sh stop            stop the dispatchers and edges (gracefully, in
#                                           parallel), then tansu and Redis
#   deploy/local/cluster.sh status          which pieces run (exit 0 all, 1 some, 3 none)
#   deploy/local/cluster.sh restart-redis   stop and start Redis only (edges reconnect)
#   deploy/local/cluster.sh publish CHANNEL EVENT DATA [PORT]
#                                           signed Pusher HTTP API publish with curl
#
# Environment (defaults in brackets):
#   REDIS_PORT     [16379]               Redis on 127.0.0.1
#   EDGE_PORTS     ["6001 6002 6003"]    WebSocket + HTTP API, one per edge
#   METRICS_PORTS  ["9101 9102 9103"]    /healthz /readyz /metrics, one per edge
#   GRPC_PORTS     ["50061 50062 50063"] gRPC, one per edge
#                  (the three lists must be equally long: that is the number of edges)
#   WEBHOOKS       [0]  1: also run tansu and the dispatchers, and give the edges the
#                       broker (HERALD_KAFKA__BROKERS) so that they record events
#   KAFKA_PORT     [19092]               tansu on 127.0.0.1 (WEBHOOKS=1)
#   DISPATCHER_METRICS_PORTS ["9201"]    /healthz /readyz /metrics, one per dispatcher
#                                        (WEBHOOKS=1; as many dispatchers as ports)
#   TANSU          [tansu]               the tansu binary (data: RUN_DIR/tansu.db)
#   HERALD_BIN     [target/release/herald; built with cargo if missing]
#   CLUSTER_CONFIG [deploy/local/herald.toml]
#   RUN_DIR        [deploy/local/run]    pid files and logs
#   READY_TIMEOUT  [30]  seconds start waits for Redis (and tansu) and for every edge's
#                        (and dispatcher's) /readyz
#   STOP_TIMEOUT   [15]  seconds stop waits for the edges and dispatchers before SIGKILL
#   HERALD_*       passed to every edge (and dispatcher) as configuration overrides (e.g.
#                  HERALD_LOG__JSON=true). With WEBHOOKS=1, HERALD_DISPATCHER__ALLOW_ADDRESSES
#                  defaults to loopback, so that endpoints on this machine are allowed.
# Use the same port variables for every command of one cluster.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

HOST=127.0.0.1
REDIS_PORT="${REDIS_PORT:-16379}"
EDGE_PORTS="${EDGE_PORTS:-6001 6002 6003}"
METRICS_PORTS="${METRICS_PORTS:-9101 9102 9103}"
GRPC_PORTS="${GRPC_PORTS:-50061 50062 50063}"
DEFAULT_BIN="$ROOT/target/release/herald"
HERALD_BIN="${HERALD_BIN:-$DEFAULT_BIN}"
CLUSTER_CONFIG="${CLUSTER_CONFIG:-$HERE/herald.toml}"
RUN_DIR="${RUN_DIR:-$HERE/run}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"
REDIS_STOP_TIMEOUT=10
WEBHOOKS="${WEBHOOKS:-0}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
DISPATCHER_METRICS_PORTS="${DISPATCHER_METRICS_PORTS:-9201}"
TANSU="${TANSU:-tansu}"
TANSU_STOP_TIMEOUT=10

read -r -a EDGES <<<"$EDGE_PORTS"
read -r -a METRICS <<<"$METRICS_PORTS"
read -r -a GRPCS <<<"$GRPC_PORTS"
read -r -a DISPATCHERS <<<"$DISPATCHER_METRICS_PORTS"
REDIS_URL="redis://$HOST:$REDIS_PORT/"
KAFKA_BROKERS="$HOST:$KAFKA_PORT"

# The environment of every edge and dispatcher on top of ours: this cluster's Redis
# and, with WEBHOOKS=1, its broker and (unless set) a loopback allow-list.
HERALD_ENV=(HERALD_REDIS__URL="$REDIS_URL")
if [[ $WEBHOOKS == 1 ]]; then
  HERALD_ENV+=(HERALD_KAFKA__BROKERS="$KAFKA_BROKERS")
  if [[ -z ${HERALD_DISPATCHER__ALLOW_ADDRESSES+set} ]]; then
    HERALD_ENV+=(HERALD_DISPATCHER__ALLOW_ADDRESSES='["127.0.0.1", "::1"]')
  fi
fi

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# Every port of the cluster: Redis, the edges and, with WEBHOOKS=1, tansu and the dispatchers.
all_ports() {
  printf '%s\n' "$REDIS_PORT" "${EDGES[@]}" "${METRICS[@]}" "${GRPCS[@]}"
  if [[ $WEBHOOKS == 1 ]]; then printf '%s\n' "$KAFKA_PORT" "${DISPATCHERS[@]}"; fi
}

check_ports() {
  local n=${#EDGES[@]} p
  [[ $WEBHOOKS == 0 || $WEBHOOKS == 1 ]] || die "WEBHOOKS must be 0 or 1 (not '$WEBHOOKS')"
  ((n > 0)) || die "EDGE_PORTS is empty"
  ((${#METRICS[@]} == n && ${#GRPCS[@]} == n)) ||
    die "EDGE_PORTS, METRICS_PORTS and GRPC_PORTS must list as many ports each (now ${n}, ${#METRICS[@]}, ${#GRPCS[@]})"
  if [[ $WEBHOOKS == 1 ]]; then ((${#DISPATCHERS[@]} > 0)) || die "DISPATCHER_METRICS_PORTS is empty"; fi
  local -a ports
  mapfile -t ports < <(all_ports)
  for p in "${ports[@]}"; do
    if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "not a port: '$p'"; fi
  done
  local dups
  dups=$(printf '%s\n' "${ports[@]}" | sort | uniq -d)
  [[ -z $dups ]] || die "ports used twice: ${dups//$'\n'/ }"
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$RUN_DIR/$1.log"; }

# The expected process name (/proc/PID/comm) of a piece.
comm_of() {
  case $1 in
    redis) echo redis-server ;;
    tansu) basename "$TANSU" | cut -c1-15 ;;
    *) basename "$HERALD_BIN" | cut -c1-15 ;;
  esac
}

# True while PID is a process that has not exited (zombies count as exited: a
# process started by an earlier run is no child of ours to reap).
exists() {
  local state
  state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# True while PID is a live process named COMM (guards against reused pids).
alive() { exists "$1" && [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]]; }

# Prints the pid of a running piece (pid file + live process of the right name).
running_pid() {
  local file pid
  file=$(pid_file "$1")
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" "$(comm_of "$1")" || return 1
  echo "$pid"
}

# Milliseconds since the epoch (for deadlines; SECONDS only counts whole seconds).
now_ms() {
  local t=${EPOCHREALTIME//[.,]/}
  echo $((t / 1000))
}

# True if something accepts connections on 127.0.0.1:PORT.
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# True if the process PID itself holds a socket listening on TCP PORT: an answer on
# that port from some other process (one that took the port first) does not count.
listens_on() {
  local pid=$1 port inode fds
  port=$(printf '%04X' "$2")
  fds=$(ls -l "/proc/$pid/fd" 2>/dev/null) || return 1
  for inode in $(awk -v p=":$port" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
    "/proc/$pid/net/tcp" "/proc/$pid/net/tcp6" 2>/dev/null); do
    [[ $fds == *"socket:[$inode]"* ]] && return 0
  done
  return 1
}

# True once a herald piece wrote its ready file (--ready-file: every listener bound,
# written atomically): the pid in it must be the one we started.
herald_bound() {
  local file
  file="$RUN_DIR/$1.ready"
  [[ -f $file ]] && grep -q "\"pid\":$2[,}]" "$file"
}

# The HTTP status of GET http://127.0.0.1:PORT/PATH (000 if none).
http_status() {
  local port=$1 path=$2
  if command -v curl >/dev/null; then
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$HOST:$port$path" || true
  else
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>/dev/tcp/$0/$1 && printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$2" "$0" >&3 &&
      IFS=" " read -r _ code _ <&3 && echo "${code//[^0-9]/}"' "$HOST" "$port" "$path" 2>/dev/null || echo 000
  fi
}

redis_pong() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>/dev/tcp/$0/$1 && printf "PING\r\n" >&3 && IFS= read -r line <&3 && [[ $line == "+PONG"* ]]' \
    "$HOST" "$REDIS_PORT" 2>/dev/null
}

# The end of a piece's log since its last start (each start begins with "=== ").
log_tail() {
  local file
  file=$(log_file "$1")
  echo "--- $file (since the last start) ---" >&2
  awk '/^=== /{n=0} {line[n++]=$0} END{for(i=(n>40?n-40:0);i<n;i++)print line[i]}' "$file" >&2 2>/dev/null || true
  echo "---" >&2
}

# Starts a command in its own session (so a Ctrl-C in this terminal later does not
# reach it), output appended to the piece's log, and records its pid.
launch() {
  local name=$1
  shift
  local log
  log=$(log_file "$name")
  echo "=== $(date '+%F %T') cluster.sh: $(printf '%q ' "$@")" >>"$log"
  # A background job of a non-interactive shell is not a process group leader,
  # so setsid execs the command in the same process: $! is its pid.
  setsid "$@" </dev/null >>"$log" 2>&1 &
  echo $! >"$(pid_file "$name")"
}

# Sends SIGTERM to each named piece still running, waits up to TIMEOUT seconds for
# all of them, then SIGKILLs (and waits briefly for) the rest. Removes pid files.
terminate() {
  local timeout=$1
  shift
  local name pid names=() pids=()
  for name in "$@"; do
    if pid=$(running_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      names+=("$name")
      pids+=("$pid")
    else
      rm -f "$(pid_file "$name")"
    fi
  done
  ((${#pids[@]} > 0)) || return 0
  local deadline=$(($(now_ms) + timeout * 1000)) killed=0 i left
  for ((;;)); do
    left=0
    for i in "${!pids[@]}"; do
      if alive "${pids[$i]}" "$(comm_of "${names[$i]}")"; then left=1; fi
    done
    ((left)) || break
    if (($(now_ms) >= deadline)); then
      if ((killed)); then
        echo "cluster.sh: still running after SIGKILL: pids ${pids[*]}" >&2
        return 1
      fi
      for i in "${!pids[@]}"; do
        if alive "${pids[$i]}" "$(comm_of "${names[$i]}")"; then
          echo "${names[$i]}: still running after ${timeout}s: SIGKILL" >&2
          kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
      done
      killed=1
      deadline=$(($(now_ms) + 5000))
    fi
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    rm -f "$(pid_file "${names[$i]}")"
    echo "${names[$i]}: stopped (pid ${pids[$i]})"
  done
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

start_redis() {
  local pid
  if pid=$(running_pid redis); then
    echo "redis: already running (pid $pid, port $REDIS_PORT)"
    return 0
  fi
  rm -f "$(pid_file redis)"
  command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
  check_free redis "$REDIS_PORT"
  launch redis redis-server --port "$REDIS_PORT" --bind "$HOST" --save "" --appendonly no \
    --daemonize no --dir "$RUN_DIR"
  pid=$(<"$(pid_file redis)")
  await_started redis "answer PING" redis_ready "$pid"
  echo "redis: started (pid $pid, port $REDIS_PORT)"
}

stop_redis() { terminate "$REDIS_STOP_TIMEOUT" redis; }

# Our redis-server listens on REDIS_PORT and answers PING.
redis_ready() { listens_on "$1" "$REDIS_PORT" && redis_pong; }

# await_started NAME WHAT COMMAND...: waits until COMMAND succeeds for the piece NAME
# just launched. If the piece exits, or does not WHAT within READY_TIMEOUT seconds
# (then it is killed), prints the end of its log and dies.
await_started() {
  local name=$1 what=$2 pid
  shift 2
  pid=$(<"$(pid_file "$name")")
  local deadline=$(($(now_ms) + READY_TIMEOUT * 1000))
  until "$@"; do
    if ! exists "$pid"; then
      log_tail "$name"
      rm -f "$(pid_file "$name")"
      die "$name exited during start-up"
    fi
    if (($(now_ms) >= deadline)); then
      log_tail "$name"
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$(pid_file "$name")"
      die "$name did not $what within ${READY_TIMEOUT}s"
    fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------------------
# tansu (WEBHOOKS=1): the Kafka-protocol broker of the event log
# ---------------------------------------------------------------------------

# The absolute path of the tansu binary.
tansu_bin() {
  local bin
  bin=$(command -v "$TANSU") || die "tansu not found (TANSU=$TANSU): install it or set TANSU to its path"
  [[ $bin == /* ]] || bin="$PWD/$bin"
  echo "$bin"
}

start_tansu() {
  local pid bin dir
  if pid=$(running_pid tansu); then
    echo "tansu: already running (pid $pid, port $KAFKA_PORT)"
    return 0
  fi
  rm -f "$(pid_file tansu)"
  bin=$(tansu_bin)
  check_free tansu "$KAFKA_PORT"
  dir=$(cd "$RUN_DIR" && pwd)
  # sqlite, not memory: the log (and the dispatchers' group offsets) survives restarts.
  # tansu opens the sqlite path relative to its working directory: it runs in /.
  # NO_COLOR: no terminal colour codes in its log file.
  launch tansu env -C / NO_COLOR=1 "$bin" broker --listener-url "tcp://$KAFKA_BROKERS" \
    --advertised-listener-url "tcp://$KAFKA_BROKERS" --storage-engine "sqlite://$dir/tansu.db"
  pid=$(<"$(pid_file tansu)")
  await_started tansu "listen on port $KAFKA_PORT" listens_on "$pid" "$KAFKA_PORT"
  echo "tansu: started (pid $pid, port $KAFKA_PORT)"
}

stop_tansu() { terminate "$TANSU_STOP_TIMEOUT" tansu; }

# Fails if a port of a piece that is not running is taken (by something else).
check_free() {
  local name=$1 port taken=()
  shift
  running_pid "$name" >/dev/null && return 0
  for port in "$@"; do
    if port_open "$port"; then taken+=("$port"); fi
  done
  ((${#taken[@]} == 0)) && return 0
  local list="${taken[*]}"
  die "$name: port(s) $list taken by processes this script did not start (see: ss -ltnp | grep -E ':(${list// /|})\b')"
}

# ---------------------------------------------------------------------------
# Edges and dispatchers (herald processes, ready when /readyz answers 200)
# ---------------------------------------------------------------------------

edge_names() {
  local i
  for i in "${!EDGES[@]}"; do echo "edge-$((i + 1))"; done
}

dispatcher_names() {
  local i
  for i in "${!DISPATCHERS[@]}"; do echo "dispatcher-$((i + 1))"; done
}

# The dispatchers stop stops: those of DISPATCHER_METRICS_PORTS (WEBHOOKS=1) and any
# other with a pid file (started with other settings).
dispatchers_to_stop() {
  local file
  {
    if [[ $WEBHOOKS == 1 ]]; then dispatcher_names; fi
    for file in "$RUN_DIR"/dispatcher-*.pid; do
      if [[ -e $file ]]; then basename "$file" .pid; fi
    done
  } | sort -uV
}

# The index of edge-N or dispatcher-N in its port lists (N - 1).
index_of() { echo $((${1##*-} - 1)); }

# The /readyz port of an edge or dispatcher.
metrics_port_of() {
  local i
  i=$(index_of "$1")
  if [[ $1 == edge-* ]]; then echo "${METRICS[$i]}"; else echo "${DISPATCHERS[$i]}"; fi
}

# How messages name the ports of an edge or dispatcher.
ports_of() {
  local i
  i=$(index_of "$1")
  if [[ $1 == edge-* ]]; then echo "port ${EDGES[$i]}"; else echo "metrics port ${DISPATCHERS[$i]}"; fi
}

ensure_binary() {
  [[ -x $HERALD_BIN ]] && return 0
  [[ $HERALD_BIN == "$DEFAULT_BIN" ]] || die "HERALD_BIN=$HERALD_BIN is not an executable"
  echo "no $HERALD_BIN: building it (cargo build --release -p herald)"
  (cd "$ROOT" && cargo build --release -p herald)
}

# start_heralds edge|dispatcher: starts every edge (or dispatcher) not running yet,
# all at once, and waits for each /readyz (200) until one deadline.
start_heralds() {
  local role=$1 i name pid
  local -a names starting=()
  mapfile -t names < <("${role}_names")
  for name in "${names[@]}"; do
    if pid=$(running_pid "$name"); then
      echo "$name: already running (pid $pid, $(ports_of "$name"))"
      continue
    fi
    rm -f "$(pid_file "$name")"
    i=$(index_of "$name")
    if [[ $role == edge ]]; then
      launch "$name" env "${HERALD_ENV[@]}" "$HERALD_BIN" edge --config "$CLUSTER_CONFIG" --host "$HOST" \
        --port "${EDGES[$i]}" --metrics-port "${METRICS[$i]}" --grpc-port "${GRPCS[$i]}" \
        --ready-file "$RUN_DIR/$name.ready"
    else
      # A stable group membership per dispatcher (unless the caller sets Kafka
      # properties): restarted after a crash, it takes its partitions back at once.
      local -a membership=()
      [[ -n ${HERALD_KAFKA__PROPERTIES:-} ]] ||
        membership=("HERALD_KAFKA__PROPERTIES={\"group.instance.id\" = \"$name\"}")
      launch "$name" env "${HERALD_ENV[@]}" "${membership[@]+"${membership[@]}"}" "$HERALD_BIN" dispatcher \
        --config "$CLUSTER_CONFIG" --host "$HOST" --metrics-port "${DISPATCHERS[$i]}" \
        --ready-file "$RUN_DIR/$name.ready"
    fi
    starting+=("$name")
  done
  ((${#starting[@]} > 0)) || return 0

  local deadline=$(($(now_ms) + READY_TIMEOUT * 1000)) failed=0 status port
  local -a waiting=("${starting[@]}") still
  while ((${#waiting[@]} > 0)); do
    still=()
    for name in "${waiting[@]}"; do
      pid=$(<"$(pid_file "$name")")
      if ! exists "$pid"; then
        echo "$name: exited during start-up" >&2
        log_tail "$name"
        rm -f "$(pid_file "$name")"
        failed=1
        continue
      fi
      port=$(metrics_port_of "$name")
      # Only once this very process has bound every port (its ready file) is the
      # /readyz answer on that port its own.
      status=000
      if herald_bound "$name" "$pid"; then status=$(http_status "$port" /readyz); fi
      if [[ $status == 200 ]] && alive "$pid" "$(comm_of "$name")"; then
        echo "$name: ready (pid $pid, $(ports_of "$name"))"
      elif (($(now_ms) >= deadline)); then
        echo "$name: /readyz on port $port not 200 (last: $status) after ${READY_TIMEOUT}s: stopping it" >&2
        log_tail "$name"
        terminate 5 "$name" >/dev/null || true
        failed=1
      else
        still+=("$name")
      fi
    done
    waiting=("${still[@]+"${still[@]}"}")
    ((${#waiting[@]} == 0)) || sleep 0.2
  done
  ((failed == 0)) || die "not every $role came up (logs in $RUN_DIR; the others keep running: 'cluster.sh stop' stops them)"
}

# Stops the dispatchers and the edges together (each drains within shutdown_grace).
stop_heralds() {
  local -a names
  mapfile -t names < <(dispatchers_to_stop; edge_names)
  terminate "$STOP_TIMEOUT" "${names[@]}"
}

# ---------------------------------------------------------------------------
# App credentials (the first [[apps]] of the config file)
# ---------------------------------------------------------------------------

toml_string() { sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\[\{0,1\}[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$CLUSTER_CONFIG" | head -n 1; }

load_app() {
  APP_ID=$(sed -n '/^\[\[apps\]\]/,$p' "$CLUSTER_CONFIG" | sed -n 's/^[[:space:]]*id[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' | head -n 1)
  APP_KEY=$(toml_string key)
  APP_SECRET=$(toml_string secret)
  APP_TOKEN=$(toml_string api_tokens)
}

summary() {
  load_app
  local i n=${#EDGES[@]}
  cat <<EOF

Herald local cluster: $n edges sharing Redis at $REDIS_URL

EOF
  printf '  %-7s %-42s %-24s %-17s %s\n' edge WebSocket "HTTP API" gRPC "health / metrics"
  for i in "${!EDGES[@]}"; do
    printf '  %-7s %-42s %-24s %-17s %s\n' "edge-$((i + 1))" "ws://$HOST:${EDGES[$i]}/app/$APP_KEY" \
      "http://$HOST:${EDGES[$i]}" "$HOST:${GRPCS[$i]}" "http://$HOST:${METRICS[$i]}/{readyz,metrics}"
  done
  if [[ $WEBHOOKS == 1 ]]; then
    cat <<EOF

  Webhooks: the edges record events to tansu at $KAFKA_BROKERS (data: ${RUN_DIR#"$ROOT"/}/tansu.db);
  ${#DISPATCHERS[@]} dispatcher(s) deliver them, sharing the work as one consumer group:
EOF
    for i in "${!DISPATCHERS[@]}"; do
      printf '    %-13s %s\n' "dispatcher-$((i + 1))" "http://$HOST:${DISPATCHERS[$i]}/{readyz,metrics}"
    done
    cat <<EOF
  Add an endpoint: a [[webhooks]] block in ${CLUSTER_CONFIG#"$ROOT"/} (then stop and start), or
    grpcurl -plaintext -H 'authorization: Bearer $APP_TOKEN' \\
      -d '{"app_id": "$APP_ID", "url": "http://$HOST:8000/hook"}' \\
      $HOST:${GRPCS[0]} herald.v1.WebhookAdmin/CreateEndpoint
EOF
  fi
  local sub=${EDGES[0]} pub=${EDGES[1]:-${EDGES[0]}}
  cat <<EOF

  app id: $APP_ID   key: $APP_KEY   secret: $APP_SECRET   gRPC token: $APP_TOKEN

  Subscribe on one edge (pusher-js):
    const pusher = new Pusher("$APP_KEY", { wsHost: "$HOST", wsPort: $sub, forceTLS: false,
      enabledTransports: ["ws"], cluster: "local" });
    pusher.subscribe("my-channel").bind("my-event", (data) => console.log(data));

  Publish through another (pusher server SDK, or signed curl by this script):
    new Pusher({ appId: "$APP_ID", key: "$APP_KEY", secret: "$APP_SECRET",
      host: "$HOST", port: "$pub", useTLS: false }).trigger("my-channel", "my-event", { hello: "world" });
    deploy/local/cluster.sh publish my-channel my-event '{"hello":"world"}' $pub

  Logs: ${RUN_DIR#"$ROOT"/}/*.log    Stop: deploy/local/cluster.sh stop
EOF
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

cmd_start() {
  mkdir -p "$RUN_DIR"
  ensure_binary
  [[ -f $CLUSTER_CONFIG ]] || die "no config file $CLUSTER_CONFIG"
  local out
  out=$(env "${HERALD_ENV[@]}" "$HERALD_BIN" check-config --config "$CLUSTER_CONFIG" 2>&1) || die "invalid configuration:"$'\n'"$out"
  # Every port first, so that a conflict starts nothing.
  check_free redis "$REDIS_PORT"
  local i
  for i in "${!EDGES[@]}"; do
    check_free "edge-$((i + 1))" "${EDGES[$i]}" "${METRICS[$i]}" "${GRPCS[$i]}"
  done
  if [[ $WEBHOOKS == 1 ]]; then
    tansu_bin >/dev/null
    check_free tansu "$KAFKA_PORT"
    for i in "${!DISPATCHERS[@]}"; do
      check_free "dispatcher-$((i + 1))" "${DISPATCHERS[$i]}"
    done
  fi
  start_redis
  if [[ $WEBHOOKS == 1 ]]; then start_tansu; fi
  start_heralds edge
  if [[ $WEBHOOKS == 1 ]]; then start_heralds dispatcher; fi
  summary
}

cmd_stop() {
  [[ -d $RUN_DIR ]] || { echo "nothing to stop"; return 0; }
  stop_heralds
  # tansu too if an earlier start ran it (the dispatchers and edges are gone by now).
  if [[ $WEBHOOKS == 1 || -f $(pid_file tansu) ]]; then stop_tansu; fi
  stop_redis
  local port left=()
  for port in $(all_ports); do
    port_open "$port" && left+=("$port")
  done
  if ((${#left[@]} > 0)); then
    echo "cluster.sh: still listening (not started by this script?): ports ${left[*]}" >&2
    return 1
  fi
  echo "stopped"
}

cmd_status() {
  local name pid i up=0 total=0 state width=7
  local -a names=(redis)
  if [[ $WEBHOOKS == 1 ]]; then names+=(tansu); fi
  mapfile -t -O ${#names[@]} names < <(edge_names)
  if [[ $WEBHOOKS == 1 ]]; then mapfile -t -O ${#names[@]} names < <(dispatcher_names); fi
  for name in "${names[@]}"; do ((${#name} <= width)) || width=${#name}; done
  for name in "${names[@]}"; do
    total=$((total + 1))
    if pid=$(running_pid "$name"); then
      up=$((up + 1))
      case $name in
        redis)
          state="running (pid $pid) on $HOST:$REDIS_PORT"
          redis_pong || state+=", NOT answering PING"
          ;;
        tansu)
          state="running (pid $pid) on $HOST:$KAFKA_PORT"
          port_open "$KAFKA_PORT" || state+=", NOT accepting connections"
          ;;
        edge-*)
          i=$(index_of "$name")
          state="running (pid $pid) ws/http :${EDGES[$i]} grpc :${GRPCS[$i]} metrics :${METRICS[$i]}, /readyz $(http_status "${METRICS[$i]}" /readyz)"
          ;;
        *)
          i=$(index_of "$name")
          state="running (pid $pid) metrics :${DISPATCHERS[$i]}, /readyz $(http_status "${DISPATCHERS[$i]}" /readyz)"
          ;;
      esac
    elif [[ -f $(pid_file "$name") ]]; then
      state="not running (stale pid file)"
    else
      state="not running"
    fi
    printf '%-*s %s\n' "$width" "$name" "$state"
  done
  if [[ $WEBHOOKS == 0 ]]; then
    # Pieces of an earlier WEBHOOKS=1 start: not counted, but not hidden either.
    local -a others=()
    for name in tansu $(dispatchers_to_stop); do
      if running_pid "$name" >/dev/null; then others+=("$name"); fi
    done
    if ((${#others[@]} > 0)); then echo "(also running: ${others[*]}; WEBHOOKS=1 includes them)" >&2; fi
  fi
  ((up == total)) && return 0
  ((up == 0)) && return 3
  return 1
}

cmd_restart_redis() {
  mkdir -p "$RUN_DIR"
  # Each edge logs this once its subscriber connection is back and resubscribed.
  local marker="redis subscriber reconnected and resubscribed" name pid
  local -A before=()
  local -a edges=()
  for name in $(edge_names); do
    if pid=$(running_pid "$name"); then
      edges+=("$name")
      before[$name]=$(grep -c "$marker" "$(log_file "$name")" || true)
    fi
  done
  stop_redis
  start_redis
  if [[ $WEBHOOKS == 1 ]]; then
    echo "webhook endpoints were kept in Redis: none until the next 'stop' and 'start' declares the [[webhooks]] again"
  fi
  if ((${#edges[@]} == 0)); then return 0; fi
  local deadline=$(($(now_ms) + READY_TIMEOUT * 1000)) still
  local -a waiting=("${edges[@]}")
  while ((${#waiting[@]} > 0)); do
    still=()
    for name in "${waiting[@]}"; do
      if (($(grep -c "$marker" "$(log_file "$name")" || true) > ${before[$name]})); then
        echo "$name: reconnected to redis and resubscribed"
      else
        still+=("$name")
      fi
    done
    waiting=("${still[@]+"${still[@]}"}")
    ((${#waiting[@]} == 0)) && break
    (($(now_ms) < deadline)) || die "no reconnection logged within ${READY_TIMEOUT}s by: ${waiting[*]} (see $RUN_DIR)"
    sleep 0.2
  done
}

# publish CHANNEL EVENT DATA [PORT]: POST /apps/{id}/events, signed as Pusher signs.
cmd_publish() {
  (($# >= 3 && $# <= 4)) || die "usage: cluster.sh publish CHANNEL EVENT DATA [EDGE_PORT]"
  command -v curl >/dev/null || die "publish needs curl"
  command -v openssl >/dev/null || die "publish needs openssl"
  load_app
  local channel=$1 event=$2 data=$3 port=${4:-${EDGES[1]:-${EDGES[0]}}}
  json_string() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
  }
  local body path query signature
  body="{\"name\":$(json_string "$event"),\"channels\":[$(json_string "$channel")],\"data\":$(json_string "$data")}"
  path="/apps/$APP_ID/events"
  query="auth_key=$APP_KEY&auth_timestamp=$(date +%s)&auth_version=1.0&body_md5=$(printf '%s' "$body" | md5sum | cut -d' ' -f1)"
  signature=$(printf 'POST\n%s\n%s' "$path" "$query" | openssl dgst -sha256 -hmac "$APP_SECRET" | sed 's/^.* //')
  local out code
  out=$(curl -sS --max-time 5 -w '\n%{http_code}' -H 'Content-Type: application/json' --data-binary "$body" \
    "http://$HOST:$port$path?$query&auth_signature=$signature") || die "no answer from $HOST:$port"
  code=${out##*$'\n'}
  echo "POST http://$HOST:$port$path -> HTTP $code ${out%$'\n'*}"
  [[ $code == 2?? ]] || exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    start | stop | status | restart-redis | publish) check_ports ;;
  esac
  case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart-redis) cmd_restart_redis ;;
    publish) cmd_publish "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
