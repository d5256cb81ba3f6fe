#!/usr/bin/env bash
# latency_probe.sh — where the added latency of one proxied request goes, at one connection.
#
#   tests/bench/latency_probe.sh [--rounds N] [--seconds S] [--busy-poll US] [--build-dir DIR] [--no-build]
#                                [--out DIR]
#
#   --rounds N        alternating rounds of the latency runs (default 3); figures are medians over them
#   --seconds S       length of each wrk run (default 5)
#   --busy-poll US    the busy_poll_us of the second gateway configuration (default 50)
#   --build-dir DIR   the probe build (default <repo>/build-probe: Release with -DLEO_PROBES=ON, configured
#                     and built here unless --no-build)
#   --out DIR         keep configs, logs and the probe files in DIR (default: a temporary directory)
#
# The placement is compare.sh's: the gateway (or the relay) on CPU 1, wrk and the shared kit's upstream on
# CPU 0, one connection, the kit's chat.lua (whole answers). Two parts:
#
# 1. p50 at one connection, in alternating rounds, of:
#      direct          wrk -> upstream (the direct p50 the target is measured against)
#      relay_busy      wrk -> tests/bench/relay_floor.c on CPU 1, polling without blocking -> upstream: a proxy
#                      that does no work at all, busy-polling as the gateway does with busy_poll_us
#      relay_block     the same relay sleeping in epoll_wait, as the gateway does by default
#      leo             the gateway as shipped (busy_poll_us 0), the probe build without the shim (a probe point
#                      is then one test of a NULL pointer)
#      leo_busy        the gateway with busy_poll_us US
#    and what each adds over direct, against the target (added p50 at most 1.5x the direct p50).
# 2. Where the gateway's time goes: each configuration runs once more with tests/bench/probe_shim.c preloaded,
#    which times the segments between the probe points of common/probe.h and the system calls. Each segment is
#    charged to the code that runs in it (the gateway, libcurl, the event loop, the system call) and summed over
#    the request's path (from the wake-up that delivers the request to the send upstream, and from the wake-up
#    that delivers the answer to the write of the response); waiting, what runs after the send while the upstream
#    works, and what the worker does after the response (the access log) are shown apart.
#
# A benchmark, not a test: ctest does not run it. Needs wrk, taskset, curl, cc and 2 CPUs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

ROUNDS=3 SECS=5 BUSY_POLL=50 BUILD_DIR="$root/build-probe" BUILD=1 OUT=""
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --busy-poll) BUSY_POLL=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "latency_probe.sh: unknown argument \"$1\"" >&2; exit 2 ;;
    esac
done
case $ROUNDS$SECS$BUSY_POLL in
*[!0-9]*) echo "latency_probe.sh: --rounds, --seconds and --busy-poll take numbers" >&2; exit 2 ;;
esac
[ "$BUSY_POLL" -gt 0 ] || { echo "latency_probe.sh: --busy-poll must be above 0" >&2; exit 2; }

name=latency_probe.sh
. "$here/lib.sh"
bench_kit upstream.c chat.lua
bench_needs wrk taskset curl cc ss
for p in 8080 8081 9100; do
    if port_busy "$p"; then echo "latency_probe.sh: port $p is in use (needs 8080, 8081 and 9100)" >&2; exit 2; fi
done

# ---- build ----
if [ "$BUILD" = 1 ]; then
    mkdir -p "$BUILD_DIR"
    { cmake -S "$root" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DLEO_PROBES=ON &&
      cmake --build "$BUILD_DIR" --target leo-gateway -j"$(nproc)"; } > "$BUILD_DIR/probe-build.log" 2>&1 ||
        { echo "latency_probe.sh: the probe build failed:" >&2; tail -n 30 "$BUILD_DIR/probe-build.log" >&2; exit 1; }
fi
gw=$BUILD_DIR/leo-gateway
[ -x "$gw" ] || { echo "latency_probe.sh: no gateway binary at $gw" >&2; exit 2; }
grep -q '^LEO_PROBES:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null ||
    { echo "latency_probe.sh: $BUILD_DIR is not configured with -DLEO_PROBES=ON" >&2; exit 2; }

if [ -n "$OUT" ]; then mkdir -p "$OUT"; work=$(cd "$OUT" && pwd); else work=$(mktemp -d /tmp/leo-probe.XXXXXX); fi
pids=()
cleanup() {
    [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "$OUT" ] || rm -rf "$work"
}
trap cleanup EXIT
cc -O2 -o "$work/upstream" "$kit/upstream.c"
cc -O2 -o "$work/relay" "$here/relay_floor.c"
cc -O2 -shared -fPIC -o "$work/probe_shim.so" "$here/probe_shim.c" -ldl

export LEO_KEY_HASH_SECRET=leo-bench-secret
KEY=sk-leo-bench-00000000000000000000
hash=$("$gw" hash-key "$KEY")
for mode in leo leo_busy; do
    extra=""
    [ "$mode" = leo ] || extra="\"busy_poll_us\": $BUSY_POLL,"
    cat > "$work/$mode.json" <<JSON
{
  "listen": "127.0.0.1:8080", "workers": 1, "drain_timeout_ms": 2000, "log_level": "info", "access_log": true, $extra
  "providers": [ { "name": "bench-upstream", "type": "openai", "base_url": "http://127.0.0.1:9100/v1" } ],
  "models": [ { "name": "gpt-4o-mini", "deployments": [ { "provider": "bench-upstream" } ] } ],
  "tenants": [ { "id": "bench", "keys": [ { "name": "bench", "hash": "$hash" } ] } ]
}
JSON
done

wait_port() { for _ in $(seq 100); do port_busy "$1" && return 0; sleep 0.05; done; echo "latency_probe.sh: nothing listens on $1" >&2; return 1; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
MOCK_PORT=9100 taskset -c 0 "$work/upstream" 2>>"$work/upstream.log" &
pids+=($!)
wait_port 9100

wrk_p50() { # port -> p50 in us
    taskset -c 0 env KEY="$KEY" MODEL=gpt-4o-mini wrk -t1 -c1 -d"${SECS}s" --latency -s "$kit/chat.lua" \
        "http://127.0.0.1:$1" 2>&1 | awk '
        function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return (v + 0) * 1000; if (v ~ /s$/) return (v + 0) * 1e6; return v }
        /^ +50%/ { p50 = us($2) } /Non-2xx/ { bad = 1 } END { print bad ? "failed" : p50 }'
}
start_gateway() { # mode [preload] -> pid in $gpid
    if [ $# -gt 1 ]; then
        LEO_PROBE_OUT="$work/$1" LD_PRELOAD="$2" taskset -c 1 "$gw" --config "$work/$1.json" --workers 1 2>"$work/$1.log" &
    else
        taskset -c 1 "$gw" --config "$work/$1.json" --workers 1 2>"$work/$1.log" &
    fi
    gpid=$!
    for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:8080/ready && break; sleep 0.05; done
    curl -sf -o /dev/null http://127.0.0.1:8080/ready || { echo "latency_probe.sh: the gateway did not start" >&2; cat "$work/$1.log" >&2; exit 1; }
    taskset -c 0 env KEY="$KEY" wrk -t1 -c1 -d1s -s "$kit/chat.lua" http://127.0.0.1:8080 >/dev/null 2>&1 # warm-up
}

# ---- 1. p50 at one connection ----
: > "$work/rows"
for _ in $(seq "$ROUNDS"); do
    echo "direct $(wrk_p50 9100)" >> "$work/rows"
    for m in busy block; do
        taskset -c 1 "$work/relay" 8081 9100 "$m" & rpid=$!
        wait_port 8081
        echo "relay_$m $(wrk_p50 8081)" >> "$work/rows"
        stop "$rpid"
    done
    for mode in leo leo_busy; do
        start_gateway "$mode"
        echo "$mode $(wrk_p50 8080)" >> "$work/rows"
        stop "$gpid"
    done
done
if grep -q failed "$work/rows"; then echo "latency_probe.sh: some requests failed:" >&2; cat "$work/rows" >&2; exit 1; fi

# ---- 2. the segments ----
for mode in leo leo_busy; do
    mkdir -p "$work/$mode"
    rm -f "$work/$mode"/probe.*.txt
    start_gateway "$mode" "$work/probe_shim.so"
    echo "$mode $(wrk_p50 8080)" > "$work/$mode/wrk"
    stop "$gpid"
done

# ---- report ----
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2))}'; }
p50() { awk -v t="$1" '$1 == t {print $2}' "$work/rows" | median; }
echo "== where the added latency goes, at one connection (whole answers)"
echo "tree:     $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
echo "machine:  $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n '1,1p'), Linux $(uname -r)"
echo "runs:     $ROUNDS alternating rounds of ${SECS}s, wrk -c1 on CPU 0, upstream on CPU 0, proxy on CPU 1; medians"
echo
d=$(p50 direct)
printf '%-12s %8s %10s %8s   %s\n' run p50_us added_us x_direct what
while read -r t what; do
    v=$(p50 "$t")
    awk -v t="$t" -v v="$v" -v d="$d" -v w="$what" 'BEGIN {
        if (t == "direct") printf "%-12s %8d %10s %8s   %s\n", t, v, "-", "-", w
        else printf "%-12s %8d %10d %8.2f   %s\n", t, v, v - d, (v - d) / d, w }'
done <<ROWS
direct wrk -> upstream, both on CPU 0
relay_busy a relay that does no work, polling without blocking (the floor for leo_busy)
relay_block the same relay sleeping in epoll_wait (the floor for leo)
leo the gateway as shipped
leo_busy the gateway with busy_poll_us $BUSY_POLL
ROWS
awk -v d="$d" -v rb="$(p50 relay_busy)" -v rk="$(p50 relay_block)" -v l="$(p50 leo)" -v lb="$(p50 leo_busy)" 'BEGIN {
    t = 1.5 * d
    printf "target: added p50 at most 1.5x the direct p50 = %.1f us\n", t
    printf "  a relay that does nothing adds %d us busy-polling (%.2fx) and %d us blocking (%.2fx)\n", rb - d, (rb - d) / d, rk - d, (rk - d) / d
    printf "  left for all of the gateway'"'"'s own work above the busy relay: %.1f us (%.1f us above the blocking one)\n", t - (rb - d), t - (rk - d)
    printf "  the gateway spends above the relay: %d us busy-polling, %d us blocking\n", lb - rb, l - rk }'

for mode in leo leo_busy; do
    f=$(ls -S "$work/$mode"/probe.*.txt 2>/dev/null | sed -n '1,1p')
    [ -n "$f" ] || { echo "latency_probe.sh: no probe file for $mode" >&2; exit 1; }
    echo
    echo "segments of $mode (one run of ${SECS}s with the probe shim: p50 $(cut -d' ' -f2 "$work/$mode/wrk") us, each of"
    echo "the ~40 points adding ~0.1 us); per request = how often the segment occurs per request:"
    awk '
        function owner(a, b) {
            if ((a == ">epoll_wait" && b == "<epoll_wait") || (a == "<epoll_wait" && b == ">epoll_wait")) return "waiting"
            if (a == ">poll" && b == "<poll") return "libcurl poll"
            if ((a == "<send" && b == ">poll") || (a == "<poll" && b == "curl_leave") || (a == "curl_leave" && b == ">epoll_wait")) return "overlapped"
            if (a == "response_written" || a ~ /write_log$/ || (a == "<write" && b == "response_written")) return "after"
            if (a ~ /^>/ && b == "<" substr(a, 2)) return "syscall " substr(a, 2)
            if (a == "<epoll_wait" || a == "<read" || (a == "curl_leave" && b == ">epoll_wait")) return "loop"
            if (a == "request_read" || a == "request_parsed" || a == "upstream_start" || a == "upstream_done") return "gateway"
            if (a ~ /^curl_/ || a == "<poll" || a == "<send" || a == "<recv") return "libcurl"
            return "other"
        }
        { from[NR] = $1; to[NR] = $2; n[NR] = $3; ns[NR] = $4; if ($1 == "request_read" && $2 == "request_parsed") reqs = $3 }
        END {
            if (!reqs) { print "  no requests seen"; exit 1 }
            printf "  %-36s %-14s %11s %9s %11s\n", "segment", "owner", "per request", "p50 us", "us/request"
            for (i = 1; i <= NR; i++) {
                per = n[i] / reqs
                if (per < 0.05) continue
                o = owner(from[i], to[i])
                us = ns[i] / 1000 * per
                line[i] = sprintf("  %-36s %-14s %11.2f %9.2f %11.2f", from[i] " -> " to[i], o, per, ns[i] / 1000, us)
                key[i] = o
                if (o == "libcurl poll" && per >= 1) {
                    # two per request: the liveness check before the send is on the path, the check after the
                    # send runs while the upstream works on the request
                    side["overlapped"] += ns[i] / 1000
                    us = ns[i] / 1000 * (per - 1)
                }
                if (o != "waiting" && o != "after" && o != "overlapped") { sum[o] += us; total += us }
                else side[o] += us
            }
            for (i = 1; i <= NR; i++) if (i in line) print line[i]
            printf "  on the path (from the wake-up that delivers the request to the send upstream, and from the wake-up\n"
            printf "  that delivers the answer to the write of the response), us per request:\n"
            split("gateway,libcurl,libcurl poll,loop,syscall read,syscall send,syscall recv,syscall write,other", order, ",")
            for (k = 1; k in order; k++) if (order[k] in sum) printf "    %-16s %7.2f\n", order[k], sum[order[k]]
            printf "    %-16s %7.2f\n", "total", total
            printf "%.2f %.2f %.2f\n", sum["gateway"], sum["libcurl"], sum["libcurl poll"] > sums
            printf "  apart: waiting in epoll_wait %.2f us/request (for the upstream, and for the next request, or\n", side["waiting"]
            printf "  spinning when busy-polling); after the send, while the upstream works (libcurl'"'"'s second poll, its\n"
            printf "  return to the loop) %.2f us/request; after the response (access log) %.2f us/request\n", side["overlapped"], side["after"]
        }' sums="$work/$mode/sums" "$f"
done

# ---- the two parts together ----
read -r gwb curlb pollb < "$work/leo_busy/sums"
awk -v d="$d" -v rb="$(p50 relay_busy)" -v g="$gwb" -v c="$curlb" -v q="$pollb" 'BEGIN {
    left = 1.5 * d - (rb - d)
    printf "\nwith busy polling: the target leaves %.1f us above the busy relay; on the request'"'"'s path the gateway'"'"'s\n", left
    printf "own code takes %.1f us and libcurl %.1f us (%.1f us of it in its liveness poll), the event loop and the\n", g, c + q, q
    printf "system calls the relay makes too aside\n" }'
