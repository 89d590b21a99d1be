#!/usr/bin/env bash
# Spool bytes per span during a ClickHouse outage (docs/scaling.md): the bench's
# discard sink refuses every INSERT as an overloaded ClickHouse does, so everything
# the collector acknowledges stays in its spool; the load generator sends for a
# while; spool bytes / acknowledged spans is the disk an outage costs per span.
#   scripts/measure-spool-bytes.sh [SPANS_PER_REQUEST] [SECONDS] [CLIENTS]
# Uses target/<profile>/{collector,bench} (PROFILE=debug by default; bytes do not
# depend on the build). Deduplication is off so that the load generator's repeated
# requests are all spooled (a fingerprint adds 16 bytes per request when it is on).
set -euo pipefail
spans=${1:-512}
seconds=${2:-10}
clients=${3:-4}
bin=target/${PROFILE:-debug}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port); grpc=$(free_port); http=$(free_port); admin=$(free_port)
dir=$(mktemp -d)
"$bin/bench" sink --addr "127.0.0.1:$sink_port" --refuse-inserts 2>"$dir/sink.err" &
sink=$!
"$bin/collector" --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" \
  --admin-addr "127.0.0.1:$admin" --ui-addr 127.0.0.1:0 \
  --set "clickhouse.url=http://127.0.0.1:$sink_port" --set "spool.dir=$dir/spool" \
  --set spool.dedup_window_secs=0 --set spool.max_disk_bytes=8000000000 \
  --set telemetry.export_interval_ms=0 2>"$dir/collector.err" &
collector=$!
trap 'kill $collector $sink 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$admin/health/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
report=$("$bin/bench" load --endpoint "http://127.0.0.1:$grpc" --clients "$clients" \
  --spans "$spans" --seconds "$seconds")
sleep 1
spool=$(curl -fs "http://127.0.0.1:$admin/metrics" | awk '$1=="collector_spool_bytes"{print $2}')
disk=$(du -sb "$dir/spool" | cut -f1)
python3 - "$report" "$spool" "$disk" "$spans" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); spool = int(float(sys.argv[2])); disk = int(sys.argv[3])
n = r["spans_acknowledged"]
print(f"{sys.argv[4]} spans/request: {n} spans acknowledged at {r['spans_per_second']:.0f}/s, "
      f"refused {r['refused']}; collector_spool_bytes {spool} = {spool / n:.1f} B/span; "
      f"spool directory {disk} B = {disk / n:.1f} B/span")
PY
