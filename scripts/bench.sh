#!/usr/bin/env bash
# Our collector side by side with rotel (from PyPI), each pinned to one core, the
# load generator, the discard ClickHouse sink and the embedded engine on the other:
#   scripts/bench.sh                 # both span profiles: 5 alternating rounds of 10 s
#                                    # each, then overload rounds
#   scripts/bench.sh basic | rich    # one profile's 5 rounds (ours, rotel) only
#   scripts/bench.sh quick           # one 5 s round of ours and rotel per profile
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
# Each profile's results go to their own file (.local/bench/<profile>/results.jsonl).
profile() { local p=$1; shift; mkdir -p ".local/bench/$p"; run --profile "$p" --work ".local/bench/$p" "$@"; }
case "$mode" in
  quick)
    profile basic --rounds 1 --seconds 5 --scenarios ours,rotel
    profile rich --rounds 1 --seconds 5 --scenarios ours,rotel
    ;;
  basic | rich) profile "$mode" --rounds 5 --seconds 10 --scenarios ours,rotel ;;
  full)
    profile basic --rounds 5 --seconds 10 --scenarios ours,rotel,ours-nofsync,ours-embedded
    profile rich --rounds 5 --seconds 10 --scenarios ours,rotel,ours-nofsync
    run --rounds 3 --seconds 15 --scenarios ours-overload,rotel-overload
    ;;
  --) run "$@" ;;
  *) echo "usage: scripts/bench.sh [full | basic | rich | quick | -- bench-compare-args]" >&2; exit 2 ;;
esac
