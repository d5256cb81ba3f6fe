#!/usr/bin/env bash
# redis_overhead.sh — what quotas cost on the hot path: the same gateway and load without quotas, with quotas on
# in-process counters, and with quotas on Redis, side by side in alternating rounds.
#
#   tests/bench/redis_overhead.sh [--rounds N] [--seconds S] [--stream] [--port P] [--redis-port P]
#                                 [--out DIR] [--build-dir DIR] [--no-build]
#
#   --rounds N, --seconds S   alternating rounds of wrk runs of S seconds each (defaults 3 and 10)
#   --stream                  "stream": true in the request (the kit's chat.lua)
#   --port P                  the first of three gateway ports (P, P+1, P+2; default 8080)
#   --redis-port P            the private redis-server's port (default 6390)
#   --out DIR                 keep configs, logs and wrk output in DIR (default: a temporary directory)
#   --build-dir DIR           the build tree holding leo-gateway (default <repo>/build, a Release build)
#   --no-build                use the binary as it is
#
# Three gateways run at once, each `taskset -c 1 leo-gateway --workers 1`, identical but for quotas:
#   none    no quota anywhere: admission is skipped (no Redis round trip)
#   local   the key and its tenant carry every limit kind (rpm, tpm, tokens and USD per day and per month,
#           concurrency) with limits far above the load, counted in-process (no "redis" section)
#   redis   the same quotas on a private redis-server (taskset -c 0, no persistence): one EVALSHA admits
#           each request before it is sent upstream, one settles it when it ends; fail-closed with a 1 s
#           command timeout, so every measured request went through redis
# The kit's upstream (../shared/bench/upstream.c) listens on 9100 on CPU 0, and wrk runs on CPU 0 as in
# compare.sh. Each round loads none, local and redis in turn at 32 connections (throughput) and at 1 (latency),
# so drift on a shared machine hits all three alike; the table gives each figure's median over the rounds.
# The limits never refuse: a non-2xx answer is reported and fails the run. Redis's command counters are
# checked afterwards to show the redis gateway did its two scripts per request.
#
# Needs 2 CPUs, wrk, taskset, curl, cc, redis-server and redis-cli. It is a benchmark, not a test: ctest does
# not run it. Run it on a quiet machine and read medians (the kit's figures vary by about ±15% between runs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

ROUNDS=3 SECS=10 STREAM="" PORT=8080 RPORT=6390 OUT="" BUILD_DIR="$root/build" BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --stream) STREAM=1; shift ;;
    --port) PORT=$2; shift 2 ;;
    --redis-port) RPORT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "redis_overhead.sh: unknown argument \"$1\"" >&2; exit 2 ;;
    esac
done
case $ROUNDS$SECS$PORT$RPORT in
*[!0-9]*) echo "redis_overhead.sh: --rounds, --seconds, --port and --redis-port take numbers" >&2; exit 2 ;;
esac

name=redis_overhead.sh
. "$here/lib.sh"
bench_kit upstream.c chat.lua
bench_needs wrk taskset curl cc ss redis-server redis-cli

ports=("$PORT" "$((PORT + 1))" "$((PORT + 2))")
for p in "${ports[@]}" 9100 "$RPORT"; do
    if ss -Htln "sport = :$p" | grep -q .; then
        echo "redis_overhead.sh: port $p is already in use (needs ${ports[*]}, 9100 and $RPORT)" >&2
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
        { echo "redis_overhead.sh: the build failed:" >&2; tail -n 30 "$BUILD_DIR/bench-build.log" >&2; exit 1; }
fi
[ -x "$gw" ] || { echo "redis_overhead.sh: no gateway binary at $gw" >&2; exit 2; }

# ---- work directory, cleanup ----
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    work=$(cd "$OUT" && pwd)
else
    work=$(mktemp -d /tmp/leo-redis-bench.XXXXXX)
fi
sups=() up="" redis=""
cleanup() {
    for s in "${sups[@]}"; do kill -TERM "$s" 2>/dev/null || true; done
    for s in "${sups[@]}"; do
        for _ in $(seq 50); do kill -0 "$s" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$s" 2>/dev/null || true
    done
    [ -z "$up" ] || kill "$up" 2>/dev/null || true
    [ -z "$redis" ] || kill "$redis" 2>/dev/null || true
    [ -n "$OUT" ] || rm -rf "$work"
}
trap cleanup EXIT

# ---- upstream and redis on CPU 0 ----
cc -O2 -o "$work/upstream" "$kit/upstream.c"
taskset -c 0 "$work/upstream" 2>"$work/upstream.log" &
up=$!
taskset -c 0 redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
redis=$!
for _ in $(seq 100); do
    redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done
redis-cli -p "$RPORT" ping | grep -q PONG || { echo "redis_overhead.sh: redis-server did not start" >&2; exit 1; }

# ---- the three configurations ----
export LEO_KEY_HASH_SECRET=leo-bench-secret
KEY=sk-leo-bench-00000000000000000000
hash=$("$gw" hash-key "$KEY")
BIG='{ "rpm": 1000000000000, "tpm": 1000000000000, "tokens_per_day": 1000000000000,
       "tokens_per_month": 1000000000000, "usd_per_day": 1000000000, "usd_per_month": 1000000000,
       "concurrency": 1000000 }'
write_config() { # name port quotas(json or empty) redis(json or empty)
    local name=$1 port=$2 quotas=$3 redis_section=$4 tq="" kq=""
    if [ -n "$quotas" ]; then tq="\"quotas\": $quotas,"; kq=", \"quotas\": $quotas"; fi
    cat > "$work/gateway.$name.json" <<JSON
{
  "listen": "127.0.0.1:$port",
  "workers": 1,
  "drain_timeout_ms": 2000,
  "log_level": "info",
  "access_log": false,
  "alerts": { "threshold": 0 },
  ${redis_section}
  "providers": [ { "name": "bench-upstream", "type": "openai", "base_url": "http://127.0.0.1:9100/v1" } ],
  "models": [ { "name": "gpt-4o-mini", "deployments": [ { "provider": "bench-upstream" } ] } ],
  "tenants": [ { "id": "bench", $tq "keys": [ { "name": "bench", "hash": "$hash" $kq } ] } ]
}
JSON
    "$gw" --check --config "$work/gateway.$name.json" >/dev/null
}
write_config none "${ports[0]}" "" ""
write_config local "${ports[1]}" "$BIG" ""
# fail-closed, so that every measured request went through redis; the command timeout is raised from the
# shipped 50 ms so that a busy machine shows slow round trips in the figures rather than 503s
write_config redis "${ports[2]}" "$BIG" "\"redis\": { \"url\": \"redis://127.0.0.1:$RPORT/0\", \"timeout_ms\": 1000, \"on_failure\": \"closed\" },"

names=(none local redis)
for i in 0 1 2; do
    taskset -c 1 "$gw" --config "$work/gateway.${names[$i]}.json" --workers 1 2>"$work/gateway.${names[$i]}.log" &
    sups+=($!)
done
for i in 0 1 2; do
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:${ports[$i]}/ready" && break
        kill -0 "${sups[$i]}" 2>/dev/null ||
            { echo "redis_overhead.sh: gateway ${names[$i]} exited:" >&2; cat "$work/gateway.${names[$i]}.log" >&2; exit 1; }
        sleep 0.1
    done
    curl -sf -o /dev/null "http://127.0.0.1:${ports[$i]}/ready" ||
        { echo "redis_overhead.sh: gateway ${names[$i]} never became ready" >&2; exit 1; }
done
# the redis gateway's worker must be connected before it is measured (fail-closed would answer 503)
for _ in $(seq 100); do
    grep -q 'redis: connected to' "$work/gateway.redis.log" && break
    sleep 0.05
done
grep -q 'redis: connected to' "$work/gateway.redis.log" ||
    { echo "redis_overhead.sh: the redis gateway never connected to redis" >&2; exit 1; }

# ---- load ----
wrk_run() { # conns url -> "rps p50_us p99_us"
    local c=$1 url=$2 out
    out=$(env STREAM="$STREAM" KEY="$KEY" MODEL=gpt-4o-mini taskset -c 0 wrk -t1 -c"$c" -d"${SECS}s" --latency \
        -s "$kit/chat.lua" "$url" 2>&1)
    printf '%s\n' "$out" >> "$work/wrk.out"
    if printf '%s\n' "$out" | grep -q 'Non-2xx'; then
        echo "$url: $(printf '%s\n' "$out" | grep 'Non-2xx')" >> "$work/non2xx" # checked by the caller
    fi
    printf '%s\n' "$out" | awk '
        function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1e6; return v }
        /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) } /^Requests\/sec/ { rps = $2 }
        END { printf "%d %d %d\n", rps, p50, p99 }'
}
redis-cli -p "$RPORT" config resetstat >/dev/null
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for i in 0 1 2; do wrk_run 8 "http://127.0.0.1:${ports[$i]}" >/dev/null; done # warm-up
: > "$work/rows"
for _ in $(seq "$ROUNDS"); do
    for i in 0 1 2; do
        echo "${names[$i]} c32 $(wrk_run 32 "http://127.0.0.1:${ports[$i]}")" >> "$work/rows"
        echo "${names[$i]} c1 $(wrk_run 1 "http://127.0.0.1:${ports[$i]}")" >> "$work/rows"
        if [ -s "$work/non2xx" ]; then
            echo "redis_overhead.sh: non-2xx answers (the limits never refuse: see the gateway logs in --out):" >&2
            cat "$work/non2xx" >&2
            exit 1
        fi
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- what redis did ----
stats=$(redis-cli -p "$RPORT" info commandstats)
scripts=$(printf '%s\n' "$stats" | awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {n += $3} END {print n + 0}')
usec=$(printf '%s\n' "$stats" | awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {n += $3; u += $5} END {printf "%.1f", n ? u / n : 0}')
served=$(curl -s "http://127.0.0.1:${ports[2]}/metrics" |
    awk '/^leo_requests_total\{/ && /route="\/v1\/chat\/completions"/ && /status="200"/ {n += $NF} END {print n + 0}')

# ---- report ----
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
col() { awk -v t="$1" -v c="$2" -v k="$3" '$1==t && $2==c {print $k}' "$work/rows" | median; }
echo "quotas on the hot path: ${ROUNDS} alternating rounds of ${SECS}s, stream=${STREAM:-0}; medians"
echo "load average before: $load_before, after: $load_after"
printf '%-8s %12s %12s %12s %12s\n' quotas rps_c32 p99_us_c32 p50_us_c1 p99_us_c1
for t in "${names[@]}"; do
    printf '%-8s %12s %12s %12s %12s\n' "$t" "$(col "$t" c32 3)" "$(col "$t" c32 5)" "$(col "$t" c1 4)" "$(col "$t" c1 5)"
done
awk -v n="$(col none c32 3)" -v l="$(col local c32 3)" -v r="$(col redis c32 3)" \
    -v n1="$(col none c1 4)" -v l1="$(col local c1 4)" -v r1="$(col redis c1 4)" 'BEGIN {
    printf "throughput vs none: local %.2f, redis %.2f\n", n ? l / n : 0, n ? r / n : 0
    printf "added p50 at c1 vs none: local %d us, redis %d us\n", l1 - n1, r1 - n1 }'
echo "redis: $scripts scripts (admission + settlement), ${usec} us each inside redis; the redis gateway served $served chat requests"
