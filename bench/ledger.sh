#!/usr/bin/env bash
# bench/ledger.sh — what the ledger costs, in one run: turnout with no ledger, with the SQLite
# ledger and with the PostgreSQL ledger (127.0.0.1:5432/test), routing bench-model to the fixed
# upstream. Same kit as run.sh: turnout on CPU 0, upstream and wrk on CPU 1. Then each store's
# sustained insert rate on its own (bench/ledger_rows.py: rows/s through write_batch and through
# LedgerWriter.submit). Writes bench/results/ledger.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-8}
run=${TMPDIR:-/tmp}/turnout-bench; mkdir -p "$run" "$here/results"
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; "$kit/upstream.sh" stop; psql -qh 127.0.0.1 -U postgres test -c 'DROP SCHEMA IF EXISTS turnout_bench CASCADE' >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$kit/upstream.sh" start
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
calc() { awk "BEGIN { print $1 }"; }

measure() {  # measure STORE → "rps32 p50_1"
  rm -rf "$run"/ledger.db*  # the file, its WAL and its spill journal
  TURNOUT_BENCH_DB=$run/ledger.db TURNOUT_BENCH_STORE=$1 \
    taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/config.yaml" --port 18030 >"$run/turnout-$1.log" 2>&1 &
  pid=$!
  wait_up http://127.0.0.1:18030/healthz
  "$kit/load.sh" http://127.0.0.1:18030/v1/chat/completions 2 32 >/dev/null  # warm-up
  read -r rps _ _ bad < <("$kit/load.sh" http://127.0.0.1:18030/v1/chat/completions "$secs" 32)
  read -r _ p50 _ _ < <("$kit/load.sh" http://127.0.0.1:18030/v1/chat/completions "$secs" 1)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  [ "$bad" = 0 ] || { echo "$1: $bad non-2xx answers"; exit 1; }
  echo "$rps $p50"
}

read -r n_rps n_p50 < <(measure none)
read -r s_rps s_p50 < <(measure sqlite)
read -r p_rps p_p50 < <(measure postgres)
rows=$(taskset -c 0 "$root/.venv/bin/python" "$here/ledger_rows.py" --rows "${BENCH_ROWS:-100000}")
{
  echo "turnout ledger bench, $(date -u +%F), one run; turnout on CPU 0, upstream and wrk on CPU 1"
  printf "no ledger:          %6.0f req/s @32, p50 @1 %s ms\n" "$n_rps" "$n_p50"
  printf "SQLite ledger:      %6.0f req/s @32 (x%.2f), p50 @1 %s ms\n" "$s_rps" "$(calc "$s_rps / $n_rps")" "$s_p50"
  printf "PostgreSQL ledger:  %6.0f req/s @32 (x%.2f), p50 @1 %s ms\n" "$p_rps" "$(calc "$p_rps / $n_rps")" "$p_p50"
  echo "(metrics on in all three; rows are written in batches by a background task)"
  echo "sustained inserts, one store on CPU 0 (batches of 256 rows, each row with 2 attempts):"
  echo "$rows"
} | tee "$here/results/ledger.txt"
