#!/usr/bin/env bash
# Runs every check and test of the workspace: ./scripts/test.sh
# Installs what it needs (the embedded ClickHouse) and starts the local services the
# tests use when they are not answering. CLICKHOUSE_URL=http://host:8123 makes every
# test use that ClickHouse server instead of the embedded engine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# A CI run builds once from scratch: incremental artifacts would only cost disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

step() { printf '\n==> %s\n' "$*"; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for PORT NAME: up to 60 s for a service to answer on 127.0.0.1:PORT.
wait_for() {
  for _ in $(seq 1 120); do answers "$1" && return 0; sleep 0.5; done
  echo "$2 did not answer on 127.0.0.1:$1" >&2
  return 1
}

ensure_service() {
  local port=$1 name=$2
  shift 2
  if answers "$port"; then return 0; fi
  echo "$name is not answering on 127.0.0.1:$port; starting it"
  "$@" || true
  wait_for "$port" "$name"
}

step "local services"
ensure_service 5432 PostgreSQL sh -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start'
ensure_service 6379 Redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
ensure_service 5672 RabbitMQ rabbitmq-server -detached

step "compose file (Debian's docker-compose: docker-compose config)"
if ! command -v docker-compose >/dev/null; then
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo"
  $as_root apt-get install -y --no-install-recommends docker-compose >/dev/null 2>&1 \
    || { $as_root apt-get update >/dev/null && $as_root apt-get install -y --no-install-recommends docker-compose >/dev/null; }
fi
docker-compose config -q
docker-compose --profile load config -q
docker-compose --profile cluster config -q
python3 scripts/check-cluster-config.py

step "headless browser (Debian's chromium and chromedriver, for the web UI's browser test)"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo"
  $as_root apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { $as_root apt-get update >/dev/null && $as_root apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }
fi
chromium --version

step "format and lints"
cargo fmt --all --check
python3 scripts/check-rust-version.py
python3 scripts/check-module-edges.py
# One feature set for every step (the lapin carrier included), so clippy, build and
# tests share their artifacts instead of rebuilding.
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "build"
cargo build --workspace --all-targets --all-features

front_pid=""
cleanup() { [ -n "$front_pid" ] && kill "$front_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${CLICKHOUSE_URL:-}" ]; then
  step "embedded ClickHouse (installs chdb-core into .local/ on first use)"
  target/debug/collector embedded-clickhouse --install-only
  data=$(mktemp -d)
  url_file="$data/url"
  COLLECTOR__EMBEDDED__DATA_DIR="$data/db" target/debug/collector embedded-clickhouse >"$url_file" &
  front_pid=$!
  for _ in $(seq 1 240); do [ -s "$url_file" ] && break; sleep 0.5; done
  CLICKHOUSE_URL=$(head -n1 "$url_file")
  [ -n "$CLICKHOUSE_URL" ] || { echo "the embedded ClickHouse did not start" >&2; exit 1; }
  export CLICKHOUSE_URL
  echo "using $CLICKHOUSE_URL"

  step "embedded ClickHouse front tests"
  "$root/.local/embedded-clickhouse/venv/bin/python" -m unittest discover -s collector/embedded -p 'test_*.py'
fi

step "tests"
# Every test binary runs even after a failure, so one run shows every failure.
cargo test --workspace --all-features --no-fail-fast
