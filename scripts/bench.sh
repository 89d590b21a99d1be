#!/usr/bin/env bash
# Our collector side by side with rotel (from PyPI), each pinned to one core, the
# load generator, the discard ClickHouse sink and the embedded engine on the other:
#   scripts/bench.sh                 # 5 alternating rounds of 10 s, then overload
#   scripts/bench.sh quick           # one 5 s round of ours and rotel (before merging)
#   scripts/bench.sh -- ARGS...      # `bench compare` with your own arguments
# Prints every run and a table of medians with the ours / rotel ratios; see BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
mode=${1:-full}
[ "$mode" = "--" ] && shift

cargo build --release -q -p collector --bin collector -p bench --bin bench
bin="$CARGO_TARGET_DIR/release"

# rotel 0.0.1a15 into a private virtualenv (its binary links the machine's libpython3.11).
venv=.local/rotel
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("rotel") == "0.0.1a15"' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q rotel==0.0.1a15
fi
rotel=$(find "$venv" -path '*site-packages/rotel/rotel-agent' -type f | head -n1)
[ -x "$rotel" ] || { echo "rotel-agent not found under $venv" >&2; exit 1; }

echo "# machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -n1); $(uptime)"
run() { taskset -c 1 "$bin/bench" compare --collector "$bin/collector" --rotel "$rotel" "$@"; }
case "$mode" in
  quick) run --rounds 1 --seconds 5 --scenarios ours,rotel ;;
  full)
    run --rounds 5 --seconds 10 --scenarios ours,rotel,ours-nofsync,ours-embedded
    run --rounds 3 --seconds 15 --scenarios ours-overload,rotel-overload
    ;;
  --) run "$@" ;;
  *) echo "usage: scripts/bench.sh [quick | -- bench-compare-args]" >&2; exit 2 ;;
esac
