#!/usr/bin/env bash
# bench/safety.sh — throughput with injection screening on vs off. Two `turnout serve`, both
# pinned to CPU 0 (bench/safety-config.yaml, and the same with every channel off; each with its
# own SQLite ledger), loaded in
# turn from wrk on CPU 1 (../shared/bench/load.sh) for BENCH_ROUNDS rounds of BENCH_SECONDS,
# the order alternating; prints each round and the medians. BENCH_UNIQUE=1: a user message that
# differs on every request (bench/unique.lua), so no verdict comes from the screener's cache.
# Reuses the kit's upstream if one is already up (another benchmark), else starts and stops its own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-6}; rounds=${BENCH_ROUNDS:-5}; conns=${BENCH_CONNECTIONS:-32}
run=${TMPDIR:-/tmp}/turnout-bench-safety; mkdir -p "$run"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }

pids=(); own_upstream=0
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$own_upstream" = 1 ]; then BENCH_RUN=$run "$kit/upstream.sh" stop; fi
}
trap cleanup EXIT
if ! curl -sf http://127.0.0.1:18002/health >/dev/null; then BENCH_RUN=$run "$kit/upstream.sh" start; own_upstream=1; fi
load() {
  if [ "${BENCH_UNIQUE:-0}" = 1 ]; then
    out=$(taskset -c 1 wrk -t1 -c"$3" -d"$2s" -s "$here/unique.lua" "$1" 2>&1)
    echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') 0 0 $(echo "$out" | awk '/Non-2xx/ {print $5}')"
  else
    "$kit/load.sh" "$@"
  fi
}
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }

rm -rf "$run"/off.db* "$run"/on.db*
# The same config but for `safety:`, every channel off.
sed 's/block/off/g' "$here/safety-config.yaml" >"$run/off.yaml"
TURNOUT_BENCH_DB=$run/off.db taskset -c 0 "$root/.venv/bin/turnout" serve --config "$run/off.yaml" \
  --port 18040 >"$run/off.log" 2>&1 & pids+=($!)
TURNOUT_BENCH_DB=$run/on.db taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/safety-config.yaml" \
  --port 18041 >"$run/on.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:18040/healthz; wait_up http://127.0.0.1:18041/healthz
off=http://127.0.0.1:18040/v1/chat/completions; on=http://127.0.0.1:18041/v1/chat/completions
load "$off" 2 "$conns" >/dev/null; load "$on" 2 "$conns" >/dev/null  # warm-up

offs=(); ons=(); ratios=()
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then
    read -r a _ _ bad_a < <(load "$off" "$secs" "$conns"); read -r b _ _ bad_b < <(load "$on" "$secs" "$conns")
  else
    read -r b _ _ bad_b < <(load "$on" "$secs" "$conns"); read -r a _ _ bad_a < <(load "$off" "$secs" "$conns")
  fi
  ratio=$(awk "BEGIN { printf \"%.3f\", $b / $a }")
  printf "round %d: screening off %.0f req/s, on %.0f req/s (non-2xx %s / %s), on / off = %s\n" "$r" "$a" "$b" "$bad_a" "$bad_b" "$ratio"
  offs+=("$a"); ons+=("$b"); ratios+=("$ratio")
done
median() { printf "%s\n" "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "median of %d rounds @%d%s: off %.0f req/s, on %.0f req/s; median on / off = %s\n" \
  "$rounds" "$conns" "$([ "${BENCH_UNIQUE:-0}" = 1 ] && echo ", a unique message per request")" "$(median "${offs[@]}")" "$(median "${ons[@]}")" "$(median "${ratios[@]}")"
