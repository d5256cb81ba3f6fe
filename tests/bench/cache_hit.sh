#!/usr/bin/env bash
# cache_hit.sh — the gateway's CPU cost of an exact-cache hit against the miss path, side by side on one gateway.
#
#   tests/bench/cache_hit.sh [--rounds N] [--seconds S] [--connections C] [--no-stream] [--port P]
#                            [--upstream-port P] [--no-access-log] [--out DIR] [--build-dir DIR] [--no-build]
#
#   --rounds N         alternating rounds of every case (default 3); the table gives the medians
#   --seconds S        length of each wrk run (default 10)
#   --connections C    wrk connections (default 32: enough to keep the one worker busy)
#   --no-stream        only the non-streaming cases
#   --port P           where the gateway listens (default 8181)
#   --upstream-port P  where the shared kit's upstream listens (default 9181)
#   --no-access-log    run the gateway with "access_log": false (default: on, as shipped)
#   --out DIR          keep the config, the gateway log, every wrk output and the per-round rows in DIR
#                      (default: a temporary directory, removed at exit)
#   --build-dir DIR    the build tree holding leo-gateway (default <repo>/build, a Release build)
#   --no-build         use the binary as it is
#
# The cases, one wrk -t1 run each per round, in this order every round:
#   hit           one identical deterministic request (temperature 0): after the warm-up every request is
#                 answered from the exact cache's in-process LRU (L1) without the upstream;
#   miss          deterministic requests that are all different (a counter and the round in the message
#                 text, built by wrk's request() hook): every one is looked up, missed, proxied to the
#                 upstream and stored (the miss path);
#   bypass        the same request with temperature 0.2: not eligible, the cache is not consulted (the
#                 gateway without the cache, for reference);
#   stream_hit, stream_miss, stream_bypass   the same three with "stream": true: a hit is the stored answer
#                 replayed as SSE, a miss is proxied as a stream, assembled and stored.
# For each run it reads the worker's CPU time (utime + stime in /proc/WORKER/stat) and the gateway's own
# counters (leo_requests_total, leo_cache_lookups_total{level="l1"} from /metrics) before and after, and wrk's
# throughput and p50/p99 latency. CPU per request = the worker's CPU time over the requests it served; the
# hit share checks that each case is what it claims (hit ~1, miss and bypass 0).
#
# Set-up as in tests/bench/compare.sh: the shared kit's neutral upstream (../shared/bench/upstream.c, SHARED_DIR
# overrides) and wrk on CPU 0, `leo-gateway --workers 1` on CPU 1, one OpenAI-type provider without a key, one
# tenant key; the cache section is left at its defaults (exact cache on for deterministic requests, L1 64 MiB,
# no Redis: L1 only; the semantic cache off). Needs 2 CPUs, wrk, taskset, curl, cc. It is a benchmark, not a
# test: ctest does not run it. On a machine shared with other work, throughput and latency move with the load;
# the CPU time per request is the steadier figure. The script prints the load averages.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

ROUNDS=3 SECS=10 CONNS=32 STREAMS=1 PORT=8181 UPORT=9181 ACCESS_LOG=true OUT="" BUILD_DIR="$root/build" BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --no-stream) STREAMS=0; shift ;;
    --port) PORT=$2; shift 2 ;;
    --upstream-port) UPORT=$2; shift 2 ;;
    --no-access-log) ACCESS_LOG=false; shift ;;
    --out) OUT=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cache_hit.sh: unknown argument \"$1\"" >&2; exit 2 ;;
    esac
done
case $ROUNDS$SECS$CONNS$PORT$UPORT in *[!0-9]*) echo "cache_hit.sh: --rounds, --seconds, --connections and the ports take numbers" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$SECS" -ge 1 ] && [ "$CONNS" -ge 1 ] || { echo "cache_hit.sh: --rounds, --seconds and --connections must be at least 1" >&2; exit 2; }

name=cache_hit.sh
. "$here/lib.sh"
bench_kit upstream.c
bench_needs wrk taskset curl cc ss
for p in "$PORT" "$UPORT"; do
    if port_busy "$p"; then
        echo "cache_hit.sh: port $p is already in use (--port and --upstream-port choose others)" >&2
        exit 2
    fi
done

# ---- build ----
gw=$BUILD_DIR/leo-gateway
if [ "$BUILD" = 1 ]; then
    type=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null || true)
    if [ "$type" = Release ]; then
        build=(cmake --build "$BUILD_DIR" --target leo-gateway -j"$(nproc)")
    else
        build=(bash "$root/deploy/build.sh" --dir "$BUILD_DIR" --target leo-gateway)
    fi
    "${build[@]}" > "$BUILD_DIR/bench-build.log" 2>&1 ||
        { echo "cache_hit.sh: the build failed:" >&2; tail -n 30 "$BUILD_DIR/bench-build.log" >&2; exit 1; }
fi
[ -x "$gw" ] || { echo "cache_hit.sh: no gateway binary at $gw" >&2; exit 2; }

# ---- work directory, cleanup ----
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    work=$(cd "$OUT" && pwd)
else
    work=$(mktemp -d /tmp/leo-cache-bench.XXXXXX)
fi
sup="" up="" keep=${OUT:+1}
cleanup() {
    [ -z "$up" ] || kill "$up" 2>/dev/null || true
    if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
        kill -TERM "$sup" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$sup" 2>/dev/null || true
    fi
    [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT

# ---- the upstream ----
cc -O2 -o "$work/upstream" "$kit/upstream.c"
MOCK_PORT=$UPORT taskset -c 0 "$work/upstream" 2>"$work/upstream.log" &
up=$!
for _ in $(seq 50); do port_busy "$UPORT" && break; sleep 0.1; done
port_busy "$UPORT" || { echo "cache_hit.sh: the upstream did not start on port $UPORT" >&2; exit 1; }

# ---- configuration and the gateway ----
export LEO_KEY_HASH_SECRET=leo-bench-secret
KEY=sk-leo-bench-00000000000000000000
hash=$("$gw" hash-key "$KEY")
cat > "$work/gateway.bench.json" <<JSON
{
  "listen": "127.0.0.1:$PORT",
  "workers": 1,
  "drain_timeout_ms": 2000,
  "log_level": "info",
  "access_log": $ACCESS_LOG,
  "providers": [ { "name": "bench-upstream", "type": "openai", "base_url": "http://127.0.0.1:$UPORT/v1" } ],
  "models": [ { "name": "gpt-4o-mini", "deployments": [ { "provider": "bench-upstream" } ] } ],
  "tenants": [ { "id": "bench", "keys": [ { "name": "bench", "hash": "$hash" } ] } ]
}
JSON
"$gw" --check --config "$work/gateway.bench.json" >/dev/null
taskset -c 1 "$gw" --config "$work/gateway.bench.json" --workers 1 --listen "127.0.0.1:$PORT" \
    2>"$work/gateway.log" &
sup=$!
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" && break
    kill -0 "$sup" 2>/dev/null || { echo "cache_hit.sh: the gateway exited; its log:" >&2; cat "$work/gateway.log" >&2; exit 1; }
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" || { echo "cache_hit.sh: the gateway never became ready" >&2; exit 1; }
worker=$(pgrep -P "$sup" | sed -n '1,1p')
[ -n "$worker" ] || { echo "cache_hit.sh: no worker process under supervisor $sup" >&2; exit 1; }

# ---- the request (wrk script) ----
# CASE hit | miss | bypass, STREAM 0 | 1, RUN: a tag that makes the miss bodies of every run unique.
cat > "$work/cache.lua" <<'LUA'
local stream = os.getenv("STREAM") == "1"
local case = os.getenv("CASE") or "hit"
local run = os.getenv("RUN") or "0"
local model = os.getenv("MODEL") or "gpt-4o-mini"
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("KEY") or "")
local content = "Benchmark request: please summarise the benefits of connection pooling " ..
                "in an HTTP proxy in two short sentences. Keep it brief, factual and neutral."
if stream then content = content .. " (streamed)" end
local temperature = case == "bypass" and "0.2" or "0"
local function body(text)
  return '{"model":"' .. model .. '","messages":[{"role":"user","content":"' .. text ..
         '"}],"max_tokens":64,"temperature":' .. temperature .. ',"stream":' .. (stream and "true" or "false") ..
         ',"user":"bench-user-0001"}'
end
if case == "miss" then
  local n = 0
  function request()
    n = n + 1
    return wrk.format(nil, nil, nil, body(content .. " [" .. run .. "-" .. n .. "]"))
  end
else
  wrk.body = body(content)
end
LUA

metric_sum() { # name [label filter] -> the sum of the series
    curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" -v f="${2:-}" '
        index($0, n "{") == 1 || $1 == n { if (f == "" || index($0, f)) s += $NF } END { printf "%d\n", s }'
}
ticks() { awk '{print $14 + $15}' "/proc/$worker/stat"; }
hz=$(getconf CLK_TCK)
run_case() { # case stream tag -> appends a row to rows
    local c=$1 s=$2 tag=$3 name t0 t1 r0 r1 h0 h1 m0 m1 out
    name=$([ "$s" = 1 ] && echo "stream_$c" || echo "$c")
    t0=$(ticks) r0=$(metric_sum leo_requests_total)
    h0=$(metric_sum leo_cache_lookups_total 'level="l1",result="hit"')
    m0=$(metric_sum leo_cache_lookups_total 'level="l1",result="miss"')
    out=$(env CASE="$c" STREAM="$s" RUN="$tag" KEY="$KEY" MODEL=gpt-4o-mini taskset -c 0 \
        wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$work/cache.lua" "http://127.0.0.1:$PORT" 2>&1)
    t1=$(ticks) r1=$(metric_sum leo_requests_total)
    h1=$(metric_sum leo_cache_lookups_total 'level="l1",result="hit"')
    m1=$(metric_sum leo_cache_lookups_total 'level="l1",result="miss"')
    printf '%s\n' "$out" > "$work/wrk.$name.$tag.txt"
    # the two /metrics scrapes between the readings are requests too: 2 of them
    awk -v name="$name" -v t=$((t1 - t0)) -v hz="$hz" -v n=$((r1 - r0 - 2)) -v h=$((h1 - h0)) -v m=$((m1 - m0)) '
        function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return (v + 0) * 1000; if (v ~ /s$/) return (v + 0) * 1e6; return v }
        /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) } /^Requests\/sec/ { rps = $2 } /Non-2xx/ { bad = $NF }
        END { printf "%s %d %d %d %.2f %d %.4f %d %d\n", name, rps, p50, p99, (n > 0 ? 1e6 * t / hz / n : 0), n,
              (n > 0 ? h / n : 0), bad + 0, t }' <<<"$out" >> "$work/rows"
}

# ---- warm-up and checks: a hit must be a hit ----
cases=(hit miss bypass)
streams=(0)
[ "$STREAMS" = 0 ] || streams+=(1)
for s in "${streams[@]}"; do
    sfx=""; [ "$s" = 0 ] || sfx=" (stream)"
    for c in "${cases[@]}"; do
        env CASE="$c" STREAM="$s" RUN="warm" KEY="$KEY" taskset -c 0 wrk -t1 -c8 -d2s -s "$work/cache.lua" \
            "http://127.0.0.1:$PORT" > "$work/wrk.warmup.$c.$s.txt" 2>&1
    done
    lua_body() { # the body the hit case sends
        local t="Benchmark request: please summarise the benefits of connection pooling in an HTTP proxy in two short sentences. Keep it brief, factual and neutral."
        [ "$1" = 0 ] || t="$t (streamed)"
        printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}],"max_tokens":64,"temperature":0,"stream":%s,"user":"bench-user-0001"}' \
            "$t" "$([ "$1" = 1 ] && echo true || echo false)"
    }
    status=$(curl -s -o "$work/check.$s.body" -D - -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        --data "$(lua_body "$s")" "http://127.0.0.1:$PORT/v1/chat/completions" |
        awk 'tolower($1) == "x-leo-cache-status:" {sub(/\r$/, "", $2); print $2}')
    if [ "$status" != hit ]; then
        echo "cache_hit.sh: the hit request$sfx was answered with x-leo-cache-status \"${status:-none}\", not hit; see $work" >&2
        keep=1; exit 1
    fi
done

# ---- the measured rounds ----
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
: > "$work/rows"
for r in $(seq "$ROUNDS"); do
    for s in "${streams[@]}"; do
        for c in "${cases[@]}"; do
            run_case "$c" "$s" "r$r"
        done
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
hwm=$(awk '$1 == "VmHWM:" {printf "%.1f MiB", $2 / 1024}' "/proc/$worker/status")

kill -TERM "$sup"
for _ in $(seq 50); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
wait "$sup" 2>/dev/null || true
sup=""

# ---- report ----
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v t="$1" -v k="$2" '$1 == t {print $k}' "$work/rows" | median; }
{
    echo "== exact-cache hit against the miss path (one gateway worker)"
    echo "tree:     $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
    echo "machine:  $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n '1,1p'), Linux $(uname -r)"
    echo "gateway:  $gw, 1 worker on CPU 1, access_log $ACCESS_LOG, cache defaults (L1 only, no Redis)"
    echo "load:     wrk -t1 -c$CONNS on CPU 0 with the kit's upstream; ${ROUNDS} rounds of ${SECS}s per case, alternating"
    echo "load avg: before $load_before, after $load_after; worker peak resident set $hwm"
    echo
    echo "medians over the rounds"
    printf '%-14s %10s %10s %10s %12s %10s\n' case rps p50_us p99_us cpu_us/req l1_hits/req
    for s in "${streams[@]}"; do
        for c in "${cases[@]}"; do
            n=$([ "$s" = 1 ] && echo "stream_$c" || echo "$c")
            printf '%-14s %10s %10s %10s %12s %10s\n' "$n" "$(col "$n" 2)" "$(col "$n" 3)" "$(col "$n" 4)" \
                "$(col "$n" 5)" "$(col "$n" 7)"
        done
    done
    echo
    for s in "${streams[@]}"; do
        p=$([ "$s" = 1 ] && echo "stream_" || echo "")
        awk -v h="$(col "${p}hit" 5)" -v m="$(col "${p}miss" 5)" -v b="$(col "${p}bypass" 5)" -v what="${p:-whole}" 'BEGIN {
            sub(/_$/, "", what)
            printf "%-6s hit CPU / miss CPU = %.3f (%s us / %s us per request; the target is below 0.25); miss / bypass = %.2f\n",
                what, h / m, h, m, m / b }'
        # the same ratio within each round (the hit and miss runs of one round are 2 x --seconds apart)
        per=$(awk -v h="${p}hit" -v m="${p}miss" '$1 == h {x[++i] = $5} $1 == m {y[++j] = $5}
            END {for (k = 1; k <= i && k <= j; k++) printf "%.3f\n", x[k] / y[k]}' "$work/rows")
        echo "       per round: $(echo "$per" | tr '\n' ' ')(median $(echo "$per" | median))"
    done
    awk '$8 > 0 {print "WARNING: non-2xx responses in " $1 " (" $8 "); these figures are not valid"}' "$work/rows" | sort -u
    awk '($1 ~ /hit$/ && $7 < 0.99) || ($1 !~ /hit$/ && $7 > 0.01) {print "WARNING: " $1 " has " $7 " L1 hits per request in one round"}' "$work/rows" | sort -u
    grep -E '"level":"(warn|error)"|Assertion|Segmentation' "$work/gateway.log" | grep -v '"type":"access"' | sed -n '1,5p' |
        sed 's/^/  gateway: /' || true
    echo
    echo "per round (case rps p50_us p99_us cpu_us/req requests l1_hits/req non2xx cpu_ticks):"
    sed 's/^/  /' "$work/rows"
    [ -z "$OUT" ] || { echo; echo "config, gateway log, wrk outputs and rows kept in $work"; }
} | if [ -n "$OUT" ]; then tee "$work/summary.txt"; else cat; fi
