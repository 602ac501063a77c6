#!/usr/bin/env bash
# bench/bedrock.sh — what the Bedrock path costs in turnout over the openai path, in one run.
# Both fakes (tests.fakes.upstream for OpenAI, tests.fakes.bedrock for Converse) and wrk share
# CPU 1; turnout (bench/bedrock-config.yaml, ledger on) gets CPU 0. The same chat request goes
# to task via-openai and to task via-bedrock. Each fake is also loaded directly with the request
# it receives from turnout (the Converse one signed with SigV4), so its own cost can be taken
# out. Not a test: prints the comparison and writes bench/results/bedrock.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
kit=${BENCH_KIT:-$root/../shared/bench}
py=$root/.venv/bin/python
secs=${BENCH_SECONDS:-8}
run=${TMPDIR:-/tmp}/turnout-bedrock-bench; mkdir -p "$run" "$here/results"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
openai_port=18101 bedrock_port=18102 port=18130
export BENCH_OPENAI_PORT=$openai_port BENCH_BEDROCK_PORT=$bedrock_port TURNOUT_BENCH_DB=$run/ledger.db
# The fake's keys (AWS's documented example pair); no profile, no instance metadata.
export AWS_ACCESS_KEY_ID=AKIDEXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
unset AWS_BEARER_TOKEN_BEDROCK AWS_SESSION_TOKEN AWS_PROFILE

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
wait_port() { for _ in $(seq 100); do (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on :$1"; exit 1; }
calc() { awk "BEGIN { print $1 }"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$tpid/stat"; }  # turnout's user + system CPU, in 1/100 s
# The fakes keep every request they get; empty the lists so that they do not grow run to run.
clear_fakes() { curl -sf -X DELETE "127.0.0.1:$openai_port/_requests" >/dev/null; curl -sf -X DELETE "127.0.0.1:$bedrock_port/_requests" >/dev/null; }
via() { clear_fakes; BENCH_MODEL=$1 "$kit/load.sh" "http://127.0.0.1:$port/v1/chat/completions" "$2" "$3"; }

(cd "$root" && exec taskset -c 1 "$py" -m tests.fakes.upstream --port $openai_port >"$run/fake-openai.log" 2>&1) & pids+=($!)
(cd "$root" && exec taskset -c 1 "$py" -m tests.fakes.bedrock --port $bedrock_port >"$run/fake-bedrock.log" 2>&1) & pids+=($!)
rm -f "$run/ledger.db"*
taskset -c 0 "$root/.venv/bin/turnout" serve --config "$here/bedrock-config.yaml" --port $port >"$run/turnout.log" 2>&1 & pids+=($!); tpid=$!
wait_port $openai_port; wait_port $bedrock_port
wait_up "http://127.0.0.1:$port/healthz"
# ... and during a load too: a list of ~100k requests makes the fakes' GC pauses show in p99.
(while sleep 1; do clear_fakes 2>/dev/null || true; done) & pids+=($!)

# Direct load on the fakes needs the exact request turnout sends them: for Bedrock, the
# Converse body, SigV4-signed with the fake's keys (the fake checks every signature, so it
# does the same work either way). A copy of load.sh next to its own post.lua sends it.
mkdir -p "$run/kit-converse"; cp "$kit/load.sh" "$run/kit-converse/load.sh"
"$py" - "http://127.0.0.1:$bedrock_port" "$run/kit-converse/post.lua" <<'EOF'
import sys
from urllib.parse import quote

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.session import Session

from turnout.providers.bedrock.translate import to_converse

endpoint, lua = sys.argv[1:]
chat = {"messages": [{"role": "system", "content": "You are a helpful support assistant."},
                     {"role": "user", "content": "My order 1234 has not arrived yet. What can I do?"}], "max_tokens": 64}
body = orjson.dumps(to_converse(chat, structured_output=False).request)
url = f"{endpoint}/model/{quote('deepseek.v3-v1:0', safe='')}/converse"
req = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json", "Accept": "application/json"})
SigV4Auth(Session().get_credentials().get_frozen_credentials(), "bedrock", "us-east-1").add_auth(req)
with open(lua, "w") as f:
    f.write('wrk.method = "POST"\n')
    for k, v in req.headers.items():
        f.write(f"wrk.headers[{orjson.dumps(k).decode()}] = {orjson.dumps(v).decode()}\n")
    f.write(f"wrk.body = {orjson.dumps(body.decode()).decode()}\n")
EOF
converse_url="http://127.0.0.1:$bedrock_port/model/deepseek.v3-v1%3A0/converse"
direct_bedrock() { clear_fakes; "$run/kit-converse/load.sh" "$converse_url" "$1" "$2"; }
direct_openai() { clear_fakes; BENCH_MODEL=bench-model "$kit/load.sh" "http://127.0.0.1:$openai_port/v1/chat/completions" "$1" "$2"; }

# Both paths answer, and the fake accepted turnout's signature and the direct one.
clear_fakes
for m in via-openai via-bedrock; do
  curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"$m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" >/dev/null || { echo "$m failed"; exit 1; }
done
taskset -c 1 wrk -t1 -c1 -d1s -s "$run/kit-converse/post.lua" "$converse_url" >/dev/null
sigs=$(curl -sf "127.0.0.1:$bedrock_port/_requests" | "$py" -c "import json,sys; print(sorted({r['signature_ok'] for r in json.load(sys.stdin)}))")
[ "$sigs" = "[True]" ] || { echo "the fake rejected a signature: $sigs"; exit 1; }

via via-openai 2 32 >/dev/null; via via-bedrock 2 32 >/dev/null   # warm-up
c0=$(cpu_ticks); read -r o32_rps o32_p50 o32_p99 o32_bad < <(via via-openai "$secs" 32); c1=$(cpu_ticks)
read -r b32_rps b32_p50 b32_p99 b32_bad < <(via via-bedrock "$secs" 32); c2=$(cpu_ticks)
o_cpu=$(calc "($c1 - $c0) * 10000 / ($o32_rps * $secs)"); b_cpu=$(calc "($c2 - $c1) * 10000 / ($b32_rps * $secs)")
read -r o1_rps o1_p50 _ _ < <(via via-openai "$secs" 1)
read -r b1_rps b1_p50 _ _ < <(via via-bedrock "$secs" 1)
read -r do32_rps _ _ do_bad < <(direct_openai "$secs" 32)
read -r db32_rps _ _ db_bad < <(direct_bedrock "$secs" 32)
[ "$do_bad$db_bad" = 00 ] || { echo "a fake answered non-2xx when loaded directly: $do_bad / $db_bad"; exit 1; }
read -r _ do1_p50 _ _ < <(direct_openai "$secs" 1)
read -r _ db1_p50 _ _ < <(direct_bedrock "$secs" 1)
# Stream time to first byte: bench/ttfb.py with the model swapped in.
ttfb() {
  clear_fakes
  (cd "$here" && taskset -c 1 "$py" -c "import sys, ttfb; ttfb.BODY = ttfb.BODY.replace(b'bench-stream', sys.argv[1].encode()); \
sys.argv[1:] = sys.argv[2:]; ttfb.main()" "$1" "http://127.0.0.1:$port/v1/chat/completions" "$2")
}
ttfb via-openai 100 >/dev/null; ttfb via-bedrock 100 >/dev/null  # warm-up
ttfb_o=$(ttfb via-openai 500); ttfb_b=$(ttfb via-bedrock 500)
sleep 1
rows=$("$py" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from requests').fetchone()[0])" "$run/ledger.db")

{
  echo "turnout Bedrock path vs openai path, $(date -u +%F), one run; turnout on CPU 0, the fakes and wrk on CPU 1"
  echo "The upstreams are Python fakes: absolute figures include the fakes' own cost; only differences and ratios mean something."
  printf "throughput @32: via-openai %.0f req/s, via-bedrock %.0f req/s (non-2xx %s / %s); bedrock / openai = %.2f\n" \
    "$o32_rps" "$b32_rps" "$o32_bad" "$b32_bad" "$(calc "$b32_rps / $o32_rps")"
  printf "  turnout CPU per request @32: via-openai %.0f µs (busy %.0f%%), via-bedrock %.0f µs (busy %.0f%%); bedrock / openai = %.2f\n" \
    "$o_cpu" "$(calc "($c1 - $c0) / $secs")" "$b_cpu" "$(calc "($c2 - $c1) / $secs")" "$(calc "$b_cpu / $o_cpu")"
  printf "  the fakes loaded directly @32: openai fake %.0f req/s, bedrock fake %.0f req/s\n" "$do32_rps" "$db32_rps"
  printf "p50 @32: via-openai %s ms, via-bedrock %s ms; p99 @32: %s ms, %s ms\n" "$o32_p50" "$b32_p50" "$o32_p99" "$b32_p99"
  printf "p50 @1: via-openai %s ms, via-bedrock %s ms, added by the Bedrock path %.3f ms\n" \
    "$o1_p50" "$b1_p50" "$(calc "$b1_p50 - $o1_p50")"
  printf "  the fakes direct @1: openai fake %s ms, bedrock fake %s ms (difference %.3f ms)\n" \
    "$do1_p50" "$db1_p50" "$(calc "$db1_p50 - $do1_p50")"
  printf "  turnout's own p50 @1 (via - direct): openai path %.3f ms, bedrock path %.3f ms, added %.3f ms\n" \
    "$(calc "$o1_p50 - $do1_p50")" "$(calc "$b1_p50 - $db1_p50")" "$(calc "($b1_p50 - $db1_p50) - ($o1_p50 - $do1_p50)")"
  printf "stream TTFB (median of 500): via-openai %s ms, via-bedrock %s ms, added %.3f ms\n" "$ttfb_o" "$ttfb_b" "$(calc "$ttfb_b - $ttfb_o")"
  echo "ledger rows written: $rows"
} | tee "$here/results/bedrock.txt"
