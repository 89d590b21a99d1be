#!/usr/bin/env bash
# Throughput with the spool's fsync group commit on vs off, side by side:
#   scripts/bench-spool.sh [ROUNDS=3] [SECONDS=10] [CLIENTS=8] [SPANS_PER_REQUEST=512]
# Alternates the two modes round by round against one embedded ClickHouse and prints
# the median acknowledged spans/s of each and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-10} clients=${3:-8} spans=${4:-512}

cargo build --release -q -p collector --bin collector -p bench --bin bench
bin=target/release/collector load="target/release/bench load"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

COLLECTOR__EMBEDDED__DATA_DIR="$work/db" "$bin" embedded-clickhouse >"$work/url" 2>"$work/front.log" &
pids+=($!)
for _ in $(seq 1 240); do [ -s "$work/url" ] && break; sleep 0.5; done
url=$(head -n1 "$work/url")

run() { # mode round → spans/s
  local mode=$1 round=$2
  local port=$((24000 + round * 10))
  RUST_LOG=warn "$bin" --clickhouse-url "$url" --grpc-addr 127.0.0.1:$port --http-addr 127.0.0.1:$((port + 1)) \
    --admin-addr 127.0.0.1:$((port + 2)) --ui-addr "" --set spool.sync="$mode" --set spool.dir="$work/spool-$mode-$round" \
    --set clickhouse.database="bench_${mode}_$round" 2>>"$work/collector.log" &
  local pid=$!
  for _ in $(seq 1 120); do curl -sf "127.0.0.1:$((port + 2))/health/ready" >/dev/null && break; sleep 0.5; done
  $load --endpoint "http://127.0.0.1:$port" --clients "$clients" --spans "$spans" --seconds "$secs" |
    sed -E 's/.*"spans_per_second":([0-9.]+).*/\1/'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

: >"$work/fsync"; : >"$work/none"
for r in $(seq 1 "$rounds"); do
  for mode in fsync none; do
    v=$(run "$mode" "$r")
    echo "round $r spool.sync=$mode: $v spans/s"
    echo "$v" >>"$work/$mode"
  done
done
on=$(median <"$work/fsync") off=$(median <"$work/none")
echo "median spans/s: fsync $on, none $off; ratio on/off $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.2f", a / b}')"
