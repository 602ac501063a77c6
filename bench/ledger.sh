#!/usr/bin/env bash
# bench/ledger.sh — what the ledger costs, in one run: turnout with no ledger, with the SQLite
# ledger and with the PostgreSQL ledger (127.0.0.1:5432/test), routing bench-model to the fixed
# upstream, measured side by side in interleaved rounds (BENCH_ROUNDS, default 3), with each
# gateway's CPU a request (all its threads, from /proc). Same kit as run.sh: turnout on CPU 0,
# upstream and wrk on CPU 1. Then each store's sustained insert rate on its own (bench/ledger_rows.py: rows/s through write_batch and through
# LedgerWriter.submit). Writes bench/results/ledger.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-8}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run" "$here/results"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; "$kit/upstream.sh" stop; psql -qh 127.0.0.1 -U postgres test -c 'DROP SCHEMA IF EXISTS turnout_bench CASCADE' >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$kit/upstream.sh" start
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
calc() { awk "BEGIN { print $1 }"; }

# The three gateways run side by side, each pinned to CPU 0 (idle while another is measured),
# and are measured in interleaved rounds: the machine's speed drifts over minutes, so each
# figure is the median round's and the ratios compare gateways measured in the same rounds.
declare -A port=([none]=18030 [sqlite]=18034 [postgres]=18035) got=() gw=()
stores=(none sqlite postgres)
for store in "${stores[@]}"; do
  rm -rf "$run/ledger-$store.db"*  # the file, its WAL and its spill journal
  TURNOUT_BENCH_DB=$run/ledger-$store.db TURNOUT_BENCH_STORE=$store \
    taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/config.yaml" --port "${port[$store]}" \
    >"$run/turnout-$store.log" 2>&1 & pids+=($!)
done
for store in "${stores[@]}"; do
  wait_up "http://127.0.0.1:${port[$store]}/healthz"
  "$kit/load.sh" "http://127.0.0.1:${port[$store]}/v1/chat/completions" 2 32 >/dev/null  # warm-up
done
rounds=${BENCH_ROUNDS:-3}
# CPU time each gateway spent (all its threads: the loop and the store's writer), in clock ticks,
# read from /proc around each of its rounds: what a request costs on the core, which the
# machine's drift moves far less than throughput.
ticks() { awk '{ t += $14 + $15 } END { print t }' /proc/"$1"/task/*/stat; }
declare -A cpu=() served=()
i=0
for store in "${stores[@]}"; do gw[$store]=${pids[$i]}; cpu[$store]=0; served[$store]=0; i=$((i + 1)); done
for _ in $(seq "$rounds"); do
  for store in "${stores[@]}"; do
    before=$(ticks "${gw[$store]}")
    line=$("$kit/load.sh" "http://127.0.0.1:${port[$store]}/v1/chat/completions" "$secs" 32)
    sleep 0.3  # the round's last rows reach the store, on this gateway's account
    cpu[$store]=$((cpu[$store] + $(ticks "${gw[$store]}") - before))
    served[$store]=$(calc "${served[$store]} + $(echo "$line" | awk '{print $1}') * $secs")
    got[$store]+="$line"$'\n'
    sleep 2  # the last batches written before the next gateway is measured
  done
done
per_request() {  # per_request STORE → CPU microseconds a request cost, over every round
  calc "${cpu[$1]} * 1000000 / $(getconf CLK_TCK) / ${served[$1]}"
}
measure() {  # measure STORE → "rps32 p50_1": the median round's throughput, then p50 at one connection
  local rps bad p50
  read -r rps _ _ _ < <(printf "%s" "${got[$1]}" | sort -g -k1,1 | awk -v n="$rounds" 'NR == int((n + 1) / 2)')
  bad=$(printf "%s" "${got[$1]}" | awk '{ s += $4 } END { print s + 0 }')
  [ "$bad" = 0 ] || { echo "$1: $bad non-2xx answers" >&2; exit 1; }
  read -r _ p50 _ _ < <("$kit/load.sh" "http://127.0.0.1:${port[$1]}/v1/chat/completions" "$secs" 1)
  echo "$rps $p50"
}

per_round() {  # per_round STORE → that store's throughput / no ledger's, one ratio per round
  paste -d' ' <(printf "%s" "${got[$1]}" | awk '{print $1}') <(printf "%s" "${got[none]}" | awk '{print $1}') \
    | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 / $2 }'
}
read -r n_rps n_p50 < <(measure none)
read -r s_rps s_p50 < <(measure sqlite)
read -r p_rps p_p50 < <(measure postgres)
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
rows=$(taskset -c 0 "$root/.venv/bin/python" "$here/ledger_rows.py" --rows "${BENCH_ROWS:-100000}")
{
  echo "turnout ledger bench, $(date -u +%F), one run ($rounds interleaved rounds @32, medians); turnout on CPU 0, upstream and wrk on CPU 1"
  printf "no ledger:          %6.0f req/s @32, p50 @1 %s ms\n" "$n_rps" "$n_p50"
  printf "SQLite ledger:      %6.0f req/s @32 (x%.2f), p50 @1 %s ms\n" "$s_rps" "$(calc "$s_rps / $n_rps")" "$s_p50"
  printf "PostgreSQL ledger:  %6.0f req/s @32 (x%.2f), p50 @1 %s ms\n" "$p_rps" "$(calc "$p_rps / $n_rps")" "$p_p50"
  # Each round's ratios, in round order: their spread is the machine's noise, against which
  # the medians above should be read.
  printf "each round, SQLite / none:     %s\n" "$(per_round sqlite)"
  printf "each round, PostgreSQL / none: %s\n" "$(per_round postgres)"
  n_cpu=$(per_request none); s_cpu=$(per_request sqlite); p_cpu=$(per_request postgres)
  printf "CPU a request, every round: no ledger %.1f us, SQLite %.1f us (none / SQLite = %.2f), PostgreSQL %.1f us (%.2f)\n" \
    "$n_cpu" "$s_cpu" "$(calc "$n_cpu / $s_cpu")" "$p_cpu" "$(calc "$n_cpu / $p_cpu")"
  echo "(metrics on in all three; rows are written in batches by a background task)"
  echo "sustained inserts, one store on CPU 0 (batches of 256 rows, each row with 2 attempts):"
  echo "$rows"
} | tee "$here/results/ledger.txt"
