#!/usr/bin/env bash
# bench/cache.sh — what a cache hit costs against the floor proxy, and how much of it is the
# hit's ledger row, in one run: the floor proxy (floor_proxy.py, one upstream call a request),
# turnout answering every request from its cache with the SQLite ledger (cache-config.yaml, as
# run.sh's cache-hit case) and the same with no ledger (store.kind: none), measured in
# interleaved rounds (BENCH_ROUNDS, default 5) with each one's CPU a request (all its threads,
# from /proc), and the ceiling (ceiling.py: a bare app answering fixed bytes on the same server, the
# least any hit can cost there). Same kit as run.sh: the process under test on CPU 0, the upstream and wrk on CPU 1.
# Writes bench/results/cache.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-6}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run" "$here/results"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }
"$root/.venv/bin/pip" install -q aiohttp orjson uvicorn uvloop httptools >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; "$kit/upstream.sh" stop; }
trap cleanup EXIT
"$kit/upstream.sh" start
wait_port() { for _ in $(seq 100); do (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on :$1"; exit 1; }
calc() { awk "BEGIN { print $1 }"; }

declare -A port=([floor]=18020 [sqlite]=18036 [none]=18037 [ceiling]=18038) got=() gw=() cpu=() served=()
names=(floor sqlite none ceiling)
(cd "$kit" && FLOOR_UPSTREAM=http://127.0.0.1:18001 exec taskset -c 0 "$root/.venv/bin/uvicorn" floor_proxy:app \
  --port 18020 --loop uvloop --http httptools --no-access-log --log-level warning) & pids+=($!); gw[floor]=$!
(cd "$here" && exec taskset -c 0 "$root/.venv/bin/uvicorn" ceiling:app \
  --port 18038 --loop uvloop --http httptools --lifespan off --no-access-log --log-level warning) & pids+=($!)
gw[ceiling]=$!
for store in sqlite none; do
  rm -rf "$run/cache-$store.db"*
  TURNOUT_BENCH_DB=$run/cache-$store.db TURNOUT_BENCH_STORE=$store taskset -c 0 "$root/.venv/bin/turnout" serve \
    --config "$here/cache-config.yaml" --port "${port[$store]}" >"$run/turnout-cache-$store.log" 2>&1 & pids+=($!)
  gw[$store]=$!
done
for name in "${names[@]}"; do
  wait_port "${port[$name]}"
  "$kit/load.sh" "http://127.0.0.1:${port[$name]}/v1/chat/completions" 2 32 >/dev/null  # warm-up (the first fills)
  cpu[$name]=0; served[$name]=0
done
body='{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful support assistant."},{"role":"user","content":"My order 1234 has not arrived yet. What can I do?"}],"max_tokens":64}'
for name in sqlite none; do  # every request of the rounds must be a hit (the kit's post.lua body)
  hit=$(curl -s -o /dev/null -D - -H 'content-type: application/json' --data-binary "$body" \
    "http://127.0.0.1:${port[$name]}/v1/chat/completions" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-turnout-cache" {print $2}')
  [ "$hit" = hit ] || { echo "turnout ($name) did not answer the bench body from its cache (X-Turnout-Cache: $hit)" >&2; exit 1; }
done
ticks() { awk '{ t += $14 + $15 } END { print t }' /proc/"$1"/task/*/stat; }
rounds=${BENCH_ROUNDS:-5}
for _ in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    p=${gw[$name]}; before=$(ticks "$p")
    line=$("$kit/load.sh" "http://127.0.0.1:${port[$name]}/v1/chat/completions" "$secs" 32)
    sleep 0.3  # the round's last rows reach the store, on this gateway's account
    cpu[$name]=$((cpu[$name] + $(ticks "$p") - before))
    served[$name]=$(calc "${served[$name]} + $(echo "$line" | awk '{print $1}') * $secs")
    got[$name]+="$line"$'\n'
    sleep 1
  done
done
median() { printf "%s" "${got[$1]}" | awk '{print $1}' | sort -g | awk -v n="$rounds" 'NR == int((n + 1) / 2)'; }
per_request() { calc "${cpu[$1]} * 1000000 / $(getconf CLK_TCK) / ${served[$1]}"; }
per_round() {  # per_round NAME → its throughput / the floor's, one ratio per round
  paste -d' ' <(printf "%s" "${got[$1]}" | awk '{print $1}') <(printf "%s" "${got[floor]}" | awk '{print $1}') \
    | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 / $2 }'
}
for name in "${names[@]}"; do
  bad=$(printf "%s" "${got[$name]}" | awk '{ s += $4 } END { print s + 0 }')
  [ "$bad" = 0 ] || { echo "$name: $bad non-2xx answers" >&2; exit 1; }
done
f=$(median floor); s=$(median sqlite); n=$(median none); c=$(median ceiling)
{
  echo "turnout cache-hit bench, $(date -u +%F), one run ($rounds interleaved rounds of ${secs}s @32, medians); each on CPU 0, upstream and wrk on CPU 1"
  printf "floor proxy:                 %6.0f req/s, CPU a request %.1f us\n" "$f" "$(per_request floor)"
  printf "hits, SQLite ledger:         %6.0f req/s = %.2fx floor, CPU a request %.1f us (rounds %s)\n" \
    "$s" "$(calc "$s / $f")" "$(per_request sqlite)" "$(per_round sqlite)"
  printf "hits, no ledger (kind none): %6.0f req/s = %.2fx floor, CPU a request %.1f us (rounds %s)\n" \
    "$n" "$(calc "$n / $f")" "$(per_request none)" "$(per_round none)"
  printf "ceiling (bench/ceiling.py):  %6.0f req/s = %.2fx floor, CPU a request %.1f us (rounds %s)\n" \
    "$c" "$(calc "$c / $f")" "$(per_request ceiling)" "$(per_round ceiling)"
} | tee "$here/results/cache.txt"
