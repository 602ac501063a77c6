#!/usr/bin/env bash
# bench/instructions.sh [CONFIG [ARGS]] — instructions a request takes in process (bench/inprocess.py:
# the gateway's App with no sockets, every thread counted, the ledger's too), from callgrind:
# the total for 1,200 requests minus the total for 200, over 1,000. Repeats within about 1 %, so
# it tells a small change to the request path from noise where throughput cannot. Not a speed:
# uvicorn and the sockets are left out, and the CPU's caches are not modelled. Default CONFIG:
# bench/cache-config.yaml (every request after the first a cache hit). ARGS go to inprocess.py
# (--batch 100: ledger batches of exactly 100 rows). Needs valgrind (Debian).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
config=${1:-$here/cache-config.yaml}; shift || true
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
trap '"$kit/upstream.sh" stop' EXIT
"$kit/upstream.sh" start  # a miss, and a config without cache, call the fixed upstream
count() {  # requests [ARGS] → total instructions; the run's own lines go to its log
  local n=$1; shift
  rm -rf "$run/inprocess.db"*
  TURNOUT_BENCH_DB=$run/inprocess.db valgrind --tool=callgrind --callgrind-out-file="$run/callgrind.$n.out" \
    "$root/.venv/bin/python" "$here/inprocess.py" "$n" --config "$config" --nap-every 8 "$@" >"$run/inprocess.$n.log" 2>&1
  grep -Eq "dropped 0, spilled 0|ledger: none" "$run/inprocess.$n.log" || { echo "the ledger lagged; see $run/inprocess.$n.log" >&2; exit 1; }
  awk '/^(summary|totals):/ {print $2; exit}' "$run/callgrind.$n.out"
}
low=$(count 200 "$@"); high=$(count 1200 "$@")
echo "$(basename "$config") $*: $(( (high - low) / 1000 )) instructions a request, in process (callgrind, 1,200 minus 200 requests)"
