#!/usr/bin/env bash
# bench/quota.sh — what the quota check costs per request, in one run: turnout without quotas,
# with every limit on in-process, and with every limit on in Redis (127.0.0.1:6379). Same bench
# kit as run.sh: turnout on CPU 0, the nginx upstream and wrk on CPU 1. Writes
# bench/results/quota.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-8}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run" "$here/results"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; "$kit/upstream.sh" stop; redis-cli --scan --pattern 'turnout-bench*' | xargs -r redis-cli del >/dev/null; }
trap cleanup EXIT
"$kit/upstream.sh" start
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
calc() { awk "BEGIN { print $1 }"; }

measure() {  # measure NAME CONFIG [LIMITS_BACKEND] → "rps32 p50_1"
  rm -f "$run"/ledger.db* "$run"/keys.db*
  TURNOUT_BENCH_DB=$run/ledger.db TURNOUT_BENCH_KEYS=$run/keys.db TURNOUT_BENCH_LIMITS=${3:-memory} \
    taskset -c 0 "$root/.venv/bin/turnout" serve --config "$2" --port 18030 >"$run/turnout-$1.log" 2>&1 &
  pid=$!
  wait_up http://127.0.0.1:18030/healthz
  "$kit/load.sh" http://127.0.0.1:18030/v1/chat/completions 2 32 >/dev/null  # warm-up
  read -r rps _ _ bad < <("$kit/load.sh" http://127.0.0.1:18030/v1/chat/completions "$secs" 32)
  read -r _ p50 _ _ < <("$kit/load.sh" http://127.0.0.1:18030/v1/chat/completions "$secs" 1)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  [ "$bad" = 0 ] || { echo "$1: $bad non-2xx answers"; exit 1; }
  echo "$rps $p50"
}

read -r n_rps n_p50 < <(measure none "$here/config.yaml")
read -r m_rps m_p50 < <(measure memory "$here/quota-config.yaml" memory)
read -r r_rps r_p50 < <(measure redis "$here/quota-config.yaml" redis)
{
  echo "turnout quota bench, $(date -u +%F), one run; turnout on CPU 0, upstream and wrk on CPU 1"
  printf "no quotas:          %6.0f req/s @32, p50 @1 %s ms\n" "$n_rps" "$n_p50"
  printf "in-process quotas:  %6.0f req/s @32 (x%.2f), p50 @1 %s ms (+%.3f ms)\n" "$m_rps" "$(calc "$m_rps / $n_rps")" "$m_p50" "$(calc "$m_p50 - $n_p50")"
  printf "Redis quotas:       %6.0f req/s @32 (x%.2f), p50 @1 %s ms (+%.3f ms)\n" "$r_rps" "$(calc "$r_rps / $n_rps")" "$r_p50" "$(calc "$r_p50 - $n_p50")"
  echo "(every limit on for one tenant: rpm, tpm, concurrency, USD per day and month, plus a task scope;"
  echo " Redis: one pipelined EVALSHA to admit; settles ride with the next write)"
} | tee "$here/results/quota.txt"
