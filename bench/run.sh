#!/usr/bin/env bash
# bench/run.sh — turnout's overhead against the floor Python proxy and nginx, in one run.
# Uses ../shared/bench (fixed nginx upstream on CPU 1, load from wrk on CPU 1, the proxy under
# test pinned to CPU 0). Not a test: prints ratios and writes bench/results/latest.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
py=$root/.venv/bin/python
secs=${BENCH_SECONDS:-8}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run" "$here/results"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }
"$root/.venv/bin/pip" install -q aiohttp orjson uvicorn uvloop httptools >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; "$kit/upstream.sh" stop; }
trap cleanup EXIT
"$kit/upstream.sh" start
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
wait_port() { for _ in $(seq 100); do (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on :$1"; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
load() { "$kit/load.sh" "$@"; }
calc() { awk "BEGIN { print $1 }"; }

# The floor: a bare ASGI pass-through, same server stack as turnout (uvicorn + uvloop + httptools).
(cd "$kit" && FLOOR_UPSTREAM=http://127.0.0.1:18001 exec taskset -c 0 "$root/.venv/bin/uvicorn" floor_proxy:app \
  --port 18020 --loop uvloop --http httptools --no-access-log --log-level warning) & pids+=($!)
rm -rf "$run/ledger.db"*
TURNOUT_BENCH_DB=$run/ledger.db taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/config.yaml" \
  --port 18030 >"$run/turnout.log" 2>&1 & pids+=($!); tpid=$!
# The same gateway with every control on (tenant key, policy, limits and budgets, prices,
# metrics, a capture rule): what a real deployment pays per request.
rm -rf "$run/controls.db"* "$run/keys.db"*
TURNOUT_BENCH_DB=$run/controls.db TURNOUT_BENCH_KEYS=$run/keys.db taskset -c 0 "$root/.venv/bin/turnout" serve \
  --config "$here/controls-config.yaml" --port 18031 >"$run/turnout-controls.log" 2>&1 & pids+=($!)
# The plain gateway with injection screening on every channel (safety-config.yaml); bench/safety.sh
# runs the longer A/B, with a unique message per request too.
rm -rf "$run/safety.db"*
TURNOUT_BENCH_DB=$run/safety.db taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/safety-config.yaml" \
  --port 18032 >"$run/turnout-safety.log" 2>&1 & pids+=($!)
# The plain gateway with the response cache on (cache-config.yaml): every request after the first
# is a hit, answered with no upstream call.
rm -rf "$run/cache.db"*
TURNOUT_BENCH_DB=$run/cache.db taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/cache-config.yaml" \
  --port 18033 >"$run/turnout-cache.log" 2>&1 & pids+=($!)
wait_port 18020
wait_up http://127.0.0.1:18030/healthz  # readyz: the SSE upstream has no /v1/models
wait_up http://127.0.0.1:18031/healthz
wait_up http://127.0.0.1:18032/healthz
wait_up http://127.0.0.1:18033/healthz

load http://127.0.0.1:18030/v1/chat/completions 2 32 >/dev/null   # warm-up
load http://127.0.0.1:18020/v1/chat/completions 2 32 >/dev/null
load http://127.0.0.1:18031/v1/chat/completions 2 32 >/dev/null
load http://127.0.0.1:18032/v1/chat/completions 2 32 >/dev/null
load http://127.0.0.1:18033/v1/chat/completions 2 32 >/dev/null  # the first request fills the cache
rss_before=$(rss "$tpid")
# Throughput @32 in interleaved rounds (every server once a round, in turn): the machine's speed
# drifts over minutes, so each figure is the median round's and every ratio compares servers
# measured side by side. Non-2xx answers are summed over the rounds.
rounds=${BENCH_ROUNDS:-3}
declare -A port=([c]=18002 [f]=18020 [t]=18030 [k]=18031 [s]=18032 [h]=18033) got=()
for _ in $(seq "$rounds"); do
  for name in c f t k s h; do
    got[$name]+="$(load "http://127.0.0.1:${port[$name]}/v1/chat/completions" "$secs" 32)"$'\n'
  done
done
median() { printf "%s" "${got[$1]}" | sort -g -k1,1 | awk -v n="$rounds" 'NR == int((n + 1) / 2)'; }
bad() { printf "%s" "${got[$1]}" | awk '{ s += $4 } END { print s + 0 }'; }
read -r c_rps c_p50 _ _ < <(median c)
read -r f_rps f_p50 f_p99 _ < <(median f)
read -r t_rps t_p50 t_p99 _ < <(median t); t_bad=$(bad t)
read -r k_rps k_p50 k_p99 _ < <(median k); k_bad=$(bad k)
read -r s_rps _ _ _ < <(median s); s_bad=$(bad s)
read -r h_rps _ _ _ < <(median h); h_bad=$(bad h)
read -r f1_rps f1_p50 _ _ < <(load http://127.0.0.1:18020/v1/chat/completions "$secs" 1)
read -r _ h1_p50 _ _ < <(load http://127.0.0.1:18033/v1/chat/completions "$secs" 1)
hz1_p50=$(taskset -c 1 wrk -t1 -c1 -d"${secs}s" --latency http://127.0.0.1:18033/healthz \
  | awk '$1=="50%" {v=$2; if (v ~ /us$/) {sub(/us$/, "", v); v/=1000} else sub(/ms$/, "", v); print v}')
read -r t1_rps t1_p50 _ _ < <(load http://127.0.0.1:18030/v1/chat/completions "$secs" 1)
read -r k1_rps k1_p50 _ _ < <(load http://127.0.0.1:18031/v1/chat/completions "$secs" 1)
ttfb_up=$(taskset -c 1 "$py" "$here/ttfb.py" http://127.0.0.1:18003/v1/chat/completions 500)
ttfb_t=$(taskset -c 1 "$py" "$here/ttfb.py" http://127.0.0.1:18030/v1/chat/completions 500)
# RSS over 100,000 more requests (counted from wrk's own total).
n=0; while [ "$n" -lt 100000 ]; do
  out=$(taskset -c 1 wrk -t1 -c32 -d10s -s "$kit/post.lua" http://127.0.0.1:18030/v1/chat/completions)
  n=$((n + $(echo "$out" | awk '/requests in/ {print $1}')))
done
rss_after=$(rss "$tpid")
sleep 1
rows=$("$py" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from requests').fetchone()[0])" "$run/ledger.db")

{
  echo "turnout bench, $(date -u +%F), one run ($rounds interleaved rounds @32, medians); proxies pinned to CPU 0, upstream and wrk on CPU 1"
  printf "throughput @32: C proxy %.0f req/s, floor %.0f req/s, turnout %.0f req/s (non-2xx %s)\n" "$c_rps" "$f_rps" "$t_rps" "$t_bad"
  printf "  turnout / floor = %.2f   turnout / C proxy = %.3f\n" "$(calc "$t_rps / $f_rps")" "$(calc "$t_rps / $c_rps")"
  printf "every control on @32: turnout %.0f req/s (non-2xx %s), turnout / floor = %.2f; p50 @1 %s ms (+%.3f ms over floor)\n" \
    "$k_rps" "$k_bad" "$(calc "$k_rps / $f_rps")" "$k1_p50" "$(calc "$k1_p50 - $f1_p50")"
  printf "injection screening on @32: turnout %.0f req/s (non-2xx %s), screening on / off = %.2f\n" \
    "$s_rps" "$s_bad" "$(calc "$s_rps / $t_rps")"
  printf "cache hits @32: turnout %.0f req/s (non-2xx %s), hits / floor = %.2f; p50 @1 %s ms (+%.3f ms over its /healthz)\n" \
    "$h_rps" "$h_bad" "$(calc "$h_rps / $f_rps")" "$h1_p50" "$(calc "$h1_p50 - $hz1_p50")"
  printf "p50 @32: floor %s ms, turnout %s ms; p99 @32: floor %s ms, turnout %s ms\n" "$f_p50" "$t_p50" "$f_p99" "$t_p99"
  printf "p50 @1: floor %s ms, turnout %s ms, added %.3f ms\n" "$f1_p50" "$t1_p50" "$(calc "$t1_p50 - $f1_p50")"
  printf "stream TTFB (median of 500): upstream direct %s ms, via turnout %s ms, added %.3f ms\n" "$ttfb_up" "$ttfb_t" "$(calc "$ttfb_t - $ttfb_up")"
  printf "turnout RSS: %s MB before, %s MB after %s more requests (growth %.1f%%)\n" "$rss_before" "$rss_after" "$n" "$(calc "($rss_after - $rss_before) * 100 / $rss_before")"
  echo "ledger rows written: $rows"
} | tee "$here/results/latest.txt"
# Each endpoint's added p50 over chat completions (its own turnout and upstreams): endpoints.sh.
cleanup; trap - EXIT
"$here/endpoints.sh"
