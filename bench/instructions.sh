#!/usr/bin/env bash
# bench/instructions.sh [CONFIG] — instructions a request takes in process (bench/inprocess.py:
# the gateway's App with no sockets, every thread counted, the ledger's too), from callgrind:
# the total for 1,200 requests minus the total for 200, over 1,000. Repeats within about 1 %, so
# it tells a small change to the request path from noise where throughput cannot. Not a speed:
# uvicorn and the sockets are left out, and the CPU's caches are not modelled. Default CONFIG:
# bench/cache-config.yaml (every request after the first a cache hit). Needs valgrind (Debian).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
config=${1:-$here/cache-config.yaml}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
trap '"$kit/upstream.sh" stop' EXIT
"$kit/upstream.sh" start  # a miss, and a config without cache, call the fixed upstream
count() {  # requests → total instructions; the run's own lines go to its log
  rm -rf "$run/inprocess.db"*
  TURNOUT_BENCH_DB=$run/inprocess.db valgrind --tool=callgrind --callgrind-out-file="$run/callgrind.$1.out" \
    "$root/.venv/bin/python" "$here/inprocess.py" "$1" --config "$config" --nap-every 8 >"$run/inprocess.$1.log" 2>&1
  grep -q "dropped 0, spilled 0" "$run/inprocess.$1.log" || { echo "the ledger lagged; see $run/inprocess.$1.log" >&2; exit 1; }
  awk '/^(summary|totals):/ {print $2; exit}' "$run/callgrind.$1.out"
}
low=$(count 200); high=$(count 1200)
echo "$(basename "$config"): $(( (high - low) / 1000 )) instructions a request, in process (callgrind, 1,200 minus 200 requests)"
