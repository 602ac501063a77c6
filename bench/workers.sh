#!/usr/bin/env bash
# bench/workers.sh — `turnout serve --workers 2` ÷ `--workers 1`: requests/s at 64 connections
# against the kit's fixed nginx upstream (../shared/bench). Both gateways may use CPUs 0 and 1;
# wrk (CPU 1) and the nginx upstream (CPU 1) share those cores, so the ratio here understates
# what two cores give with the load generator on another machine. Rounds alternate N=1 and
# N=2 (BENCH_ROUNDS, default 3) and the medians are compared. Not a test: prints the ratio
# and writes bench/results/workers.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-8}; rounds=${BENCH_ROUNDS:-3}; conns=${BENCH_CONNECTIONS:-64}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run" "$here/results"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; "$kit/upstream.sh" stop; }
trap cleanup EXIT
"$kit/upstream.sh" start
wait_up() { for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

for n in 1 2; do
  rm -rf "$run/workers$n.db"*
  TURNOUT_BENCH_DB=$run/workers$n.db taskset -c 0,1 "$root/.venv/bin/turnout" serve --config "$here/config.yaml" \
    --port $((18040 + n)) --workers "$n" >"$run/turnout-workers$n.log" 2>&1 & pids+=($!)
done
wait_up http://127.0.0.1:18041/healthz
wait_up http://127.0.0.1:18042/healthz
sleep 2  # the second worker of N=2 may still be starting
for n in 1 2; do "$kit/load.sh" "http://127.0.0.1:$((18040 + n))/v1/chat/completions" 2 "$conns" >/dev/null; done

: >"$run/workers-rounds.txt"
for r in $(seq "$rounds"); do
  for n in 1 2; do
    read -r rps _ _ bad < <("$kit/load.sh" "http://127.0.0.1:$((18040 + n))/v1/chat/completions" "$secs" "$conns")
    echo "round $r: --workers $n: $rps req/s (non-2xx $bad)" | tee -a "$run/workers-rounds.txt"
    echo "$n $rps" >>"$run/workers-rps.txt.$$"
  done
done
one=$(awk '$1==1 {print $2}' "$run/workers-rps.txt.$$" | median)
two=$(awk '$1==2 {print $2}' "$run/workers-rps.txt.$$" | median)
rm -f "$run/workers-rps.txt.$$"
{
  echo "date: $(date -u +%FT%TZ), $(nproc) cores; wrk and the nginx upstream on CPU 1, turnout on CPUs 0-1"
  cat "$run/workers-rounds.txt"
  echo "median @$conns: --workers 1 $one req/s, --workers 2 $two req/s, ratio $(awk "BEGIN {printf \"%.2f\", $two / $one}")"
} | tee "$here/results/workers.txt"
