#!/usr/bin/env bash
# bench/shadow.sh — what a shadow release costs the answers that are served. Two `turnout serve`
# on the same config (bench/shadow-config.yaml: the chat route with releases, v1 active), each
# with its own state folder: A without a shadow, B with v2 in shadow at 100% (its target is the
# kit's fixed nginx upstream too, under another name; caps so high that every request is
# mirrored). Both pinned to CPU 0, loaded in turn from wrk on CPU 1 (../shared/bench/load.sh)
# for BENCH_ROUNDS rounds of BENCH_SECONDS, the order alternating: p50 and p99 at 1 connection
# (does a served answer wait for its shadow call?) and req/s at 32 (B makes two upstream calls a
# request on the same core). Prints each round, the medians and B / A, and what B mirrored
# (/metrics: every request, unless some were busy or capped).
# Reuses the kit's upstream if one is already up (another benchmark), else starts and stops its own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
secs=${BENCH_SECONDS:-6}; rounds=${BENCH_ROUNDS:-3}
run=${TMPDIR:-/tmp}/turnout-bench-shadow; mkdir -p "$run"
turnout=$root/.venv/bin/turnout
command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx wrk; }

pids=(); own_upstream=0
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$own_upstream" = 1 ]; then BENCH_RUN=$run "$kit/upstream.sh" stop; fi
}
trap cleanup EXIT
if ! curl -sf http://127.0.0.1:18002/health >/dev/null; then BENCH_RUN=$run "$kit/upstream.sh" start; own_upstream=1; fi
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
load() { "$kit/load.sh" "$@"; }

# The releases: v1 serves on both gateways, v2 is B's shadow (another name for the same upstream).
rm -rf "$run/releases" "$run/a" "$run/b"; mkdir -p "$run/releases/bench-model" "$run/a" "$run/b"
release_file() { printf 'target: %s\nprompt:\n  user: "unused by chat"\nparams: {temperature: 0}\n' "$1"; }
release_file upstream >"$run/releases/bench-model/v1.yaml"
release_file shadow-upstream >"$run/releases/bench-model/v2.yaml"
export TURNOUT_BENCH_RELEASES=$run/releases
release() {  # release SIDE ARGS...: `turnout release ARGS` on that gateway's state
  local side=$1; shift
  TURNOUT_BENCH_STATE=$run/$side "$turnout" release "$@" --by bench --config "$here/shadow-config.yaml" >/dev/null
}
for side in a b; do
  release "$side" register bench-model --all
  release "$side" promote bench-model v1 --why "bench: the served release"
done
release b shadow bench-model v2 --percent 100 --why "bench: mirror every request"
TURNOUT_BENCH_STATE=$run/a taskset -c 0 "$turnout" serve --config "$here/shadow-config.yaml" \
  --port 18050 >"$run/a.log" 2>&1 & pids+=($!)
TURNOUT_BENCH_STATE=$run/b taskset -c 0 "$turnout" serve --config "$here/shadow-config.yaml" \
  --port 18051 >"$run/b.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:18050/healthz; wait_up http://127.0.0.1:18051/healthz
a=http://127.0.0.1:18050/v1/chat/completions; b=http://127.0.0.1:18051/v1/chat/completions
load "$a" 2 32 >/dev/null; load "$b" 2 32 >/dev/null  # warm-up

a1s=(); b1s=(); a99s=(); b99s=(); a32s=(); b32s=(); bad=0
both() {  # both CONNECTIONS: A then B on odd rounds, B then A on even ones; sets the globals
  local conns=$1 r=$2
  if [ $((r % 2)) = 1 ]; then
    read -r A_rps A_p50 A_p99 A_bad < <(load "$a" "$secs" "$conns"); read -r B_rps B_p50 B_p99 B_bad < <(load "$b" "$secs" "$conns")
  else
    read -r B_rps B_p50 B_p99 B_bad < <(load "$b" "$secs" "$conns"); read -r A_rps A_p50 A_p99 A_bad < <(load "$a" "$secs" "$conns")
  fi
  bad=$((bad + A_bad + B_bad))
}
for r in $(seq "$rounds"); do
  both 1 "$r"; a1s+=("$A_p50"); b1s+=("$B_p50"); a99s+=("$A_p99"); b99s+=("$B_p99")
  printf "round %d: @1 p50 A %.3f ms, B %.3f ms, p99 A %.3f ms, B %.3f ms;" "$r" "$A_p50" "$B_p50" "$A_p99" "$B_p99"
  both 32 "$r"; a32s+=("$A_rps"); b32s+=("$B_rps")
  printf " @32 A %.0f req/s, B %.0f req/s\n" "$A_rps" "$B_rps"
done
median() { printf "%s\n" "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ma1=$(median "${a1s[@]}"); mb1=$(median "${b1s[@]}"); ma99=$(median "${a99s[@]}"); mb99=$(median "${b99s[@]}")
ma32=$(median "${a32s[@]}"); mb32=$(median "${b32s[@]}")
shadowed=$(curl -sf http://127.0.0.1:18051/metrics | awk '/^turnout_shadow_total\{/ {
  match($0, /result="[a-z_]+"/); r = substr($0, RSTART + 8, RLENGTH - 9); n[r] += $NF }
  END { s = ""; for (r in n) s = s sprintf("%s%s %d", s == "" ? "" : ", ", r, n[r]); print (s == "" ? "none" : s) }')
echo "turnout shadow bench, $(date -u +%F), $rounds rounds of ${secs}s; gateways on CPU 0, nginx upstream and wrk on CPU 1"
printf "served p50 @1:  A (no shadow) %.3f ms, B (shadow at 100%%) %.3f ms, B / A = %.2f (%+.3f ms)\n" \
  "$ma1" "$mb1" "$(awk "BEGIN { print $mb1 / $ma1 }")" "$(awk "BEGIN { print $mb1 - $ma1 }")"
printf "served p99 @1:  A %.3f ms, B %.3f ms, B / A = %.2f\n" "$ma99" "$mb99" "$(awk "BEGIN { print $mb99 / $ma99 }")"
printf "req/s @32:      A %.0f, B %.0f, B / A = %.2f\n" "$ma32" "$mb32" "$(awk "BEGIN { print $mb32 / $ma32 }")"
echo "non-2xx: $bad; B's mirrored requests (turnout_shadow_total by result): $shadowed"
