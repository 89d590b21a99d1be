#!/usr/bin/env bash
# The whole stack in one command, on embedded defaults: ./scripts/demo.sh
#
# Builds, then starts the collector on its embedded ClickHouse, the sample service on
# embedded storage (sled) exporting to the collector, and the load generator for a
# bounded run; waits until the spans have arrived and prints, read back from
# ClickHouse (`sample-service report`): the RED table per service and route, one order
# trace as a waterfall (request → outbox relay → worker), its log lines, and where to
# keep exploring. Then everything keeps running for that exploring until Ctrl-C
# (when stdin is a terminal; DEMO_KEEP_RUNNING=0/1 decides otherwise).
#
# Needs Rust (cargo) and python3; the first run installs the embedded ClickHouse
# (chdb-core, about 180 MB) into .local/embedded-clickhouse/. State lives in
# .local/demo/ (ClickHouse data, spool, shop data, logs, pids); a second run reuses
# it and stops whatever a killed run left behind.
#
# Environment:
#   DEMO_SECONDS (20)          length of the load run
#   DEMO_CONCURRENCY (16)      load generator workers
#   DEMO_PROFILE (release)     release | debug
#   DEMO_BIN_DIR               take collector, sample-service and loadgen from here; no build
#   DEMO_STATE_DIR (.local/demo)
#   DEMO_KEEP_RUNNING          1: keep the stack up after the report until Ctrl-C; 0: stop
#   DEMO_GRPC_PORT (14317), DEMO_HTTP_PORT (14318), DEMO_ADMIN_PORT (14133)   collector
#   DEMO_UI_PORT (18686)       the collector's web UI
#   DEMO_SHOP_PORT (18080), DEMO_CLICKHOUSE_PORT (18123)
# The ports are not the usual 4317/4318/13133/16686/8080/8123, so the demo runs next to a
# collector, shop or ClickHouse you already have. DATABASE_URL, REDIS_URL and AMQP_URL
# (all three), if set, put the shop on those servers instead of embedded storage
# (SHOP_PREFIX and the other SHOP_* settings pass through too).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${DEMO_SECONDS:-20}
concurrency=${DEMO_CONCURRENCY:-16}
profile=${DEMO_PROFILE:-release}
state=${DEMO_STATE_DIR:-$root/.local/demo}
grpc_port=${DEMO_GRPC_PORT:-14317}
http_port=${DEMO_HTTP_PORT:-14318}
admin_port=${DEMO_ADMIN_PORT:-14133}
ui_port=${DEMO_UI_PORT:-18686}
shop_port=${DEMO_SHOP_PORT:-18080}
clickhouse_port=${DEMO_CLICKHOUSE_PORT:-18123}
if [ -n "${DEMO_KEEP_RUNNING:-}" ]; then keep=$DEMO_KEEP_RUNNING
elif [ -t 0 ]; then keep=1
else keep=0
fi

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1=$2 is not a positive whole number"; }
positive DEMO_SECONDS "$seconds"
positive DEMO_CONCURRENCY "$concurrency"
for var in DEMO_GRPC_PORT DEMO_HTTP_PORT DEMO_ADMIN_PORT DEMO_UI_PORT DEMO_SHOP_PORT DEMO_CLICKHOUSE_PORT; do
  case $var in
    DEMO_GRPC_PORT) p=$grpc_port ;; DEMO_HTTP_PORT) p=$http_port ;;
    DEMO_ADMIN_PORT) p=$admin_port ;; DEMO_SHOP_PORT) p=$shop_port ;;
    DEMO_UI_PORT) p=$ui_port ;;
    *) p=$clickhouse_port ;;
  esac
  positive "$var" "$p"
  [ "$p" -le 65535 ] || die "$var=$p is not a port"
done
case $profile in release | debug) ;; *) die "DEMO_PROFILE=$profile: use release or debug" ;; esac
case $keep in 0 | 1) ;; *) die "DEMO_KEEP_RUNNING=$keep: use 0 or 1" ;; esac

# ---------------------------------------------------------------- what it needs
can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() {
  say "installing $*"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
if ! command -v curl >/dev/null; then
  can_install && apt_install curl || die "curl is missing; install it"
fi
if ! command -v python3 >/dev/null; then
  can_install && apt_install python3 python3-venv || die "python3 is missing (the embedded ClickHouse runs on it); install it"
fi
if [ ! -x .local/embedded-clickhouse/venv/bin/python ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  can_install && apt_install python3-venv ||
    die "python3 cannot create virtualenvs (the embedded ClickHouse installs into one); install python3-venv"
fi

# ---------------------------------------------------------------- state, stale runs
mkdir -p "$state/logs"
state=$(cd "$state" && pwd)
logs=$state/logs
pidfile=$state/pids
exec 9>"$state/lock"
if command -v flock >/dev/null && ! flock -n 9; then
  die "another demo is running with $state (set DEMO_STATE_DIR for a second one)"
fi

alive() { kill -0 "$1" 2>/dev/null; }
# stop PID NAME: SIGTERM, up to 20 s for a clean stop (the collector drains its
# queue, the shop finishes requests), then SIGKILL.
stop() {
  local pid=$1 name=$2
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 80); do alive "$pid" || return 0; sleep 0.25; done
  echo "demo: $name ($pid) did not stop within 20 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# A run that was killed (kill -9, a closed terminal) leaves its processes behind,
# holding the ports and the sled locks: stop those that are still ours, known by the
# DEMO_OWNER=<state dir> in their environment (a reused pid is someone else's).
if [ -s "$pidfile" ]; then
  while read -r pid name; do
    if alive "$pid" && tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF -- "DEMO_OWNER=$state"; then
      echo "demo: stopping the $name ($pid) left over from an earlier run" >&2
      stop "$pid" "$name"
    fi
  done < <(tac "$pidfile")
fi
: >"$pidfile"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for var in DEMO_GRPC_PORT:$grpc_port DEMO_HTTP_PORT:$http_port DEMO_ADMIN_PORT:$admin_port DEMO_UI_PORT:$ui_port \
  DEMO_SHOP_PORT:$shop_port DEMO_CLICKHOUSE_PORT:$clickhouse_port; do
  port=${var#*:}
  # A stopped leftover may take a moment to release its port.
  for _ in $(seq 1 20); do answers "$port" || break; sleep 0.25; done
  if answers "$port"; then
    die "127.0.0.1:$port is in use by another program; stop it or set ${var%%:*}"
  fi
done

# ---------------------------------------------------------------- build
if [ -n "${DEMO_BIN_DIR:-}" ]; then
  bin=$DEMO_BIN_DIR
else
  command -v cargo >/dev/null || die "cargo is missing; install Rust (https://rustup.rs)"
  say "building ($profile)"
  if [ "$profile" = release ]; then
    cargo build --release -p collector -p sample-service
  else
    cargo build -p collector -p sample-service
  fi
  bin=${CARGO_TARGET_DIR:-$root/target}/$profile
fi
for b in collector sample-service loadgen; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing (DEMO_BIN_DIR names the directory of the built binaries)"
done

# ---------------------------------------------------------------- start, stop
pids=()
names=()
# start NAME COMMAND...: runs COMMAND in the background, stdout and stderr to
# logs/NAME.log. In its own session, so Ctrl-C reaches only this script, which then
# stops the services in order; 9>&-: the lock stays with this script.
start() {
  local name=$1
  shift
  DEMO_OWNER=$state setsid "$@" >"$logs/$name.log" 2>&1 9>&- </dev/null &
  pids+=($!)
  names+=("$name")
  echo "$! $name" >>"$pidfile"
}

stopping=0
stop_all() {
  local rc=$?
  [ "$stopping" = 1 ] && return
  stopping=1
  trap '' INT TERM
  if [ "${#pids[@]}" -gt 0 ]; then
    say "stopping"
    # Reverse order: the shop's last spans reach the collector, the collector's last
    # rows reach ClickHouse.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[$i]}" "${names[$i]}"; done
    wait 2>/dev/null || true
  fi
  : >"$pidfile"
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_until SECONDS WHAT PID COMMAND...: polls COMMAND every half second while PID lives.
wait_until() {
  local limit=$1 what=$2 pid=$3
  shift 3
  for _ in $(seq 1 $((limit * 2))); do
    "$@" && return 0
    if ! alive "$pid"; then
      echo "demo: $what exited; the end of its log:" >&2
      tail -n 20 "$logs/$what.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  die "$what was not ready within $limit s; see $logs/$what.log"
}
# Every service still runs; else say which one stopped.
check_alive() {
  for i in "${!pids[@]}"; do
    alive "${pids[$i]}" || die "the ${names[$i]} exited; see $logs/${names[$i]}.log"
  done
}
ready() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- ClickHouse
say "embedded ClickHouse on 127.0.0.1:$clickhouse_port (the first run installs chdb-core into .local/embedded-clickhouse/)"
"$bin/collector" embedded-clickhouse --install-only
: >"$state/clickhouse.url"
start clickhouse env COLLECTOR__EMBEDDED__DATA_DIR="$state/clickhouse" \
  COLLECTOR__EMBEDDED__PORT="$clickhouse_port" \
  sh -c 'exec "$0" embedded-clickhouse >"$1"' "$bin/collector" "$state/clickhouse.url"
wait_until 120 clickhouse "${pids[-1]}" test -s "$state/clickhouse.url"
clickhouse=$(head -n1 "$state/clickhouse.url")
ch() { curl -fsS --max-time 10 --data-binary "$1" "$clickhouse/" 2>/dev/null; }

# ---------------------------------------------------------------- collector
say "collector: OTLP gRPC 127.0.0.1:$grpc_port, HTTP 127.0.0.1:$http_port, admin 127.0.0.1:$admin_port, web UI http://127.0.0.1:$ui_port/"
start collector env COLLECTOR__SPOOL__DIR="$state/spool" \
  "$bin/collector" --clickhouse-url "$clickhouse" \
  --grpc-addr "127.0.0.1:$grpc_port" --http-addr "127.0.0.1:$http_port" \
  --admin-addr "127.0.0.1:$admin_port" --ui-addr "127.0.0.1:$ui_port"
wait_until 120 collector "${pids[-1]}" ready "http://127.0.0.1:$admin_port/health/ready"

# ---------------------------------------------------------------- shop
if [ -n "${DATABASE_URL:-}${REDIS_URL:-}${AMQP_URL:-}" ]; then
  mode="PostgreSQL, Redis and RabbitMQ (DATABASE_URL, REDIS_URL, AMQP_URL)"
else
  mode="embedded storage in $state/shop"
fi
say "sample service on 127.0.0.1:$shop_port, $mode"
start shop env SHOP_LISTEN="127.0.0.1:$shop_port" SHOP_DATA_DIR="$state/shop" \
  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$grpc_port" OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
  OTEL_BSP_SCHEDULE_DELAY=500 OTEL_BLRP_SCHEDULE_DELAY=500 OTEL_METRIC_EXPORT_INTERVAL=5000 \
  RUST_LOG="${RUST_LOG:-info}" \
  "$bin/sample-service" --dev
wait_until 120 shop "${pids[-1]}" ready "http://127.0.0.1:$shop_port/health/ready"

# ---------------------------------------------------------------- load
say "load generator: ${seconds} s, $concurrency workers (its own view of the answers)"
rm -f "$state/loadgen.json"
started=$(date +%s)
"$bin/loadgen" --base-url "http://127.0.0.1:$shop_port" --duration "${seconds}s" \
  --requests 1000000000 --concurrency "$concurrency" \
  --jwt-private-key "$root/sample-service/dev-keys/jwt-private.pem" --json "$state/loadgen.json"
# Ctrl-C during the load reaches the load generator too, which stops early, prints its
# report and exits 0; bash then drops the interrupt, so act on it here.
if grep -qE '"stopped_by": *"interrupted"' "$state/loadgen.json"; then exit 130; fi
check_alive

# ---------------------------------------------------------------- wait for the data
# The orders' consumer spans come last (relay, worker, 0.5 s export, 1 s collector
# batches): wait until the load generator's sample orders have all three, then until
# the number of SERVER spans stops growing. Bounded; the report says if it is short.
say "waiting for the spans to reach ClickHouse"
since() { echo $(($(date +%s) - started + 2)); }
traces=$(grep -oE '"trace_id": *"[0-9a-f]{32}"' "$state/loadgen.json" | grep -oE '[0-9a-f]{32}' |
  sed "s/.*/'&'/" | paste -sd, - || true)
deadline=$(($(date +%s) + 60))
if [ -n "$traces" ]; then
  want=$(($(tr -cd , <<<"$traces" | wc -c) + 1))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    have=$(ch "SELECT count() FROM (SELECT TraceId FROM otel.otel_traces WHERE TraceId IN ($traces)
      AND SpanKind = 'Consumer' GROUP BY TraceId HAVING uniqExact(SpanName) >= 3)" || echo 0)
    [ "$have" -ge "$want" ] && break
    check_alive
    sleep 1
  done
  echo "sample orders with all three worker spans: ${have:-0} of $want" >&2
fi
last=-1
while [ "$(date +%s)" -lt "$deadline" ]; do
  n=$(ch "SELECT count() FROM otel.otel_traces WHERE SpanKind = 'Server'
    AND Timestamp >= now64(9) - toIntervalSecond($(since))" || echo 0)
  [ "$n" -gt 0 ] && [ "$n" = "$last" ] && break
  last=$n
  check_alive
  sleep 1.5
done

# ---------------------------------------------------------------- the report
say "what the collector stored, read back from ClickHouse"
"$bin/sample-service" report --clickhouse-url "$clickhouse" --since-seconds "$(since)" \
  --collector-grpc "127.0.0.1:$grpc_port" --collector-http "127.0.0.1:$http_port" \
  --collector-admin "127.0.0.1:$admin_port" --shop-url "http://127.0.0.1:$shop_port"
echo "  web UI             http://127.0.0.1:$ui_port/ (services, traces, logs, service map)"
echo "  logs and state     $logs/, $state/"

if [ "$keep" = 1 ]; then
  say "everything keeps running for exploring (web UI: http://127.0.0.1:$ui_port/); Ctrl-C stops it"
  # Returns when a service exits on its own (or at Ctrl-C, through the trap).
  wait -n "${pids[@]}" || true
  check_alive
fi
