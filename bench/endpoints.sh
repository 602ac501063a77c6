#!/usr/bin/env bash
# bench/endpoints.sh — the added p50 of each endpoint over chat completions, one run: one
# turnout (CPU 0) serving chat completions, Anthropic Messages, the Responses API and embeddings
# from the same fixed upstreams (nginx, CPU 1); wrk at one connection, then at 32 for throughput.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-6}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run/embed-body" "$here/results"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }
pid=""; npid=""
# A server that already exited is no failure (under set -e a failed kill would end the cleanup
# there, leaving the upstreams running, and the script's status 1).
cleanup() { for p in $pid $npid; do kill "$p" 2>/dev/null || true; done; "$kit/upstream.sh" stop; }
trap cleanup EXIT
"$kit/upstream.sh" start
sed "s#@RUN@#$run#g" "$here/endpoints-nginx.conf" > "$run/embed-nginx.conf"
taskset -c 1 nginx -c "$run/embed-nginx.conf" >/dev/null 2>&1 & npid=$!
rm -rf "$run"/endpoints.db*
TURNOUT_BENCH_DB=$run/endpoints.db taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/endpoints-config.yaml" \
  --port 18040 >"$run/turnout-endpoints.log" 2>&1 & pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18040/healthz >/dev/null && curl -sf http://127.0.0.1:18005/health >/dev/null && break; sleep 0.1; done
ms() { case $1 in *us) echo "${1%us}" | awk '{print $1/1000}';; *ms) echo "${1%ms}";; *s) echo "${1%s}" | awk '{print $1*1000}';; *) echo nan;; esac; }
load() {  # load ENDPOINT PATH SECONDS CONNECTIONS → "rps p50_ms non_2xx"
  local out
  out=$(BENCH_ENDPOINT=$1 taskset -c 1 wrk -t1 -c"$4" -d"$3s" --latency -s "$here/endpoints.lua" "http://127.0.0.1:18040$2" 2>&1)
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(ms "$(echo "$out" | awk '$1=="50%" {print $2}')") $(echo "$out" | awk '/Non-2xx/ {print $5}' | sed 's/^$/0/')"
}
declare -A path=([chat]=/v1/chat/completions [messages]=/v1/messages [responses]=/v1/responses [embeddings]=/v1/embeddings)
{
  echo "turnout endpoints bench, $(date -u +%F), one run; turnout on CPU 0, upstreams and wrk on CPU 1"
  for e in chat messages responses embeddings; do load "$e" "${path[$e]}" 2 8 >/dev/null; done  # warm-up
  read -r _ chat_p50 _ < <(load chat /v1/chat/completions "$secs" 1)
  for e in chat messages responses embeddings; do
    read -r _ p50 bad1 < <(load "$e" "${path[$e]}" "$secs" 1)
    if [ "${bad1:-0}" != 0 ]; then echo "$e: not measured, it answered non-2xx ($bad1 of them)"; continue; fi
    read -r rps _ bad32 < <(load "$e" "${path[$e]}" "$secs" 32)
    printf "%-11s p50 @1 %6.3f ms (added over chat %+.3f ms)  %6.0f req/s @32  non-2xx %s/%s\n" \
      "$e" "$p50" "$(awk "BEGIN { print $p50 - $chat_p50 }")" "$rps" "${bad1:-0}" "${bad32:-0}"
  done
  echo "(embeddings: one input, an 8-float vector from nginx; chat p50 measured twice, the first as the reference)"
} | tee "$here/results/endpoints.txt"
