#!/usr/bin/env bash
# compare.sh — LEO Optima side by side with the Portkey gateway and the bare upstream, on one machine, in one run.
#
#   tests/bench/compare.sh [--rounds N] [--seconds S] [--stream] [--port P] [--no-access-log]
#                          [--busy-poll US] [--no-hop] [--perf] [--out DIR] [--build-dir DIR] [--no-build]
#
#   --rounds N, --seconds S, --stream   passed to the shared kit's compare.sh (defaults 3, 10, off)
#   --port P          where the gateway listens (default 8080)
#   --no-access-log   run the gateway with "access_log": false (default: on, as shipped)
#   --busy-poll US    run the gateway with "busy_poll_us": US (the worker polls without blocking for US
#                     microseconds after I/O; see docs/configuration.md); default: left out, i.e. off
#   --no-hop          skip the latency decomposition at one connection (same-core and cross-core round trips
#                     to the upstream, bare GET /health and chat through the gateway)
#   --perf            also profile the worker under 32 connections (perf record -g, perf stat on system calls,
#                     perf record --call-graph dwarf) and summarise where its time goes
#   --out DIR         keep the gateway log (over 1 GB for 3 rounds of 10 s), the config, wrk output and the
#                     profiles in DIR (default: a temporary directory, removed at exit)
#   --build-dir DIR   the build tree holding leo-gateway (default <repo>/build, a Release build)
#   --no-build        use the binary as it is
#
# What it does: builds the Release gateway (incrementally), writes a config with one OpenAI-type provider at
# http://127.0.0.1:9100/v1 (no key), the model gpt-4o-mini and one tenant key, starts
# `taskset -c 1 leo-gateway --workers 1`, waits for /ready, then runs the shared kit's compare.sh, which starts
# the neutral upstream and wrk on CPU 0 and Portkey on CPU 1 and alternates rounds of direct / Portkey / LEO.
# Afterwards it reads the peak resident set (VmHWM) of the worker and of the supervisor, measures where the
# added latency at one connection goes (see --no-hop), optionally profiles, stops the gateway and prints it all.
#
# The shared kit is found beside the repository (<repo>/../shared/bench/compare.sh); SHARED_DIR overrides it
# (either the directory holding compare.sh or its parent). It is a benchmark, not a test: ctest does not run it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

ROUNDS=3 SECS=10 STREAM="" PORT=8080 ACCESS_LOG=true BUSY_POLL="" HOP=1 PERF=0 OUT="" BUILD_DIR="$root/build" BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --stream) STREAM=1; shift ;;
    --port) PORT=$2; shift 2 ;;
    --no-access-log) ACCESS_LOG=false; shift ;;
    --busy-poll) BUSY_POLL=$2; shift 2 ;;
    --no-hop) HOP=0; shift ;;
    --perf) PERF=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument \"$1\"" >&2; exit 2 ;;
    esac
done
case $ROUNDS$SECS$PORT$BUSY_POLL in
*[!0-9]*) echo "compare.sh: --rounds, --seconds, --port and --busy-poll take numbers" >&2; exit 2 ;;
esac

name=compare.sh
. "$here/lib.sh"
bench_kit compare.sh upstream.c chat.lua
bench_needs wrk taskset curl cc ss
[ "$PERF" = 0 ] || command -v perf >/dev/null || { echo "compare.sh: --perf needs perf (linux-perf)" >&2; exit 2; }

for p in "$PORT" 9100 8787; do
    if port_busy "$p"; then
        echo "compare.sh: port $p is already in use; the benchmark needs $PORT (gateway), 9100 (upstream) and 8787 (Portkey)" >&2
        ss -Htlnp "sport = :$p" >&2 || true
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
        { echo "compare.sh: the build failed:" >&2; tail -n 30 "$BUILD_DIR/bench-build.log" >&2; exit 1; }
fi
[ -x "$gw" ] || { echo "compare.sh: no gateway binary at $gw" >&2; exit 2; }

# ---- work directory, cleanup ----
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    work=$(cd "$OUT" && pwd)
else
    work=$(mktemp -d /tmp/leo-bench.XXXXXX)
fi
sup="" load="" ups=()
cleanup() {
    [ -z "$load" ] || kill "$load" 2>/dev/null || true
    [ ${#ups[@]} -eq 0 ] || kill "${ups[@]}" 2>/dev/null || true
    if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
        kill -TERM "$sup" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$sup" 2>/dev/null || true
    fi
    [ -n "$OUT" ] || rm -rf "$work"
}
trap cleanup EXIT

# ---- configuration ----
export LEO_KEY_HASH_SECRET=leo-bench-secret
KEY=sk-leo-bench-00000000000000000000
hash=$("$gw" hash-key "$KEY")
busy_poll_line=""
[ -z "$BUSY_POLL" ] || busy_poll_line=$'\n  "busy_poll_us": '"$BUSY_POLL,"
cat > "$work/gateway.bench.json" <<JSON
{
  "listen": "127.0.0.1:$PORT",
  "workers": 1,
  "drain_timeout_ms": 2000,
  "log_level": "info",
  "access_log": $ACCESS_LOG,$busy_poll_line
  "providers": [ { "name": "bench-upstream", "type": "openai", "base_url": "http://127.0.0.1:9100/v1" } ],
  "models": [ { "name": "gpt-4o-mini", "deployments": [ { "provider": "bench-upstream" } ] } ],
  "tenants": [ { "id": "bench", "keys": [ { "name": "bench", "hash": "$hash" } ] } ]
}
JSON
"$gw" --check --config "$work/gateway.bench.json" >/dev/null

# ---- the gateway ----
taskset -c 1 "$gw" --config "$work/gateway.bench.json" --workers 1 --listen "127.0.0.1:$PORT" \
    2>"$work/gateway.log" &
sup=$!
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" && break
    kill -0 "$sup" 2>/dev/null || { echo "compare.sh: the gateway exited; its log:" >&2; cat "$work/gateway.log" >&2; exit 1; }
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" || { echo "compare.sh: the gateway never became ready" >&2; exit 1; }
worker=$(pgrep -P "$sup" | sed -n '1,1p') sup_pid=$sup
[ -n "$worker" ] || { echo "compare.sh: no worker process under supervisor $sup" >&2; exit 1; }

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
mib() { awk -v v="$1" 'BEGIN {printf "%.1f MiB", v / 1024}'; }
idle_worker=$(kib "$worker" VmRSS) idle_sup=$(kib "$sup" VmRSS)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the side-by-side comparison (shared kit) ----
args=(--leo-url "http://127.0.0.1:$PORT" --leo-key "$KEY" --leo-model gpt-4o-mini --rounds "$ROUNDS" --seconds "$SECS")
[ -z "$STREAM" ] || args+=(--stream)
bash "$kit/compare.sh" "${args[@]}" >"$work/compare.out" 2>"$work/compare.err" || {
    echo "compare.sh: the shared kit failed:" >&2; cat "$work/compare.err" "$work/compare.out" >&2; exit 1; }
hwm_worker=$(kib "$worker" VmHWM) hwm_sup=$(kib "$sup" VmHWM) rss_worker=$(kib "$worker" VmRSS)
split_worker="anon $(mib "$(kib "$worker" RssAnon)"), file $(mib "$(kib "$worker" RssFile)"), shmem $(mib "$(kib "$worker" RssShmem)")"
split_sup="anon $(mib "$(kib "$sup" RssAnon)"), file $(mib "$(kib "$sup" RssFile)"), shmem $(mib "$(kib "$sup" RssShmem)")"

# ---- where the added latency at one connection goes ----
# Four round trips at one connection, in alternating rounds, all driven by wrk on CPU 0:
#   direct_c1      wrk -> upstream on CPU 0: no core crossing (the kit's "direct" figure)
#   xcore_c1       wrk -> a second upstream pinned to CPU 1 (port 9101): the cost of one round trip between the
#                  cores to a minimal server, which is what the topology adds to each leg through the gateway
#   leo_health_c1  wrk -> GET /health on the gateway (CPU 1), no script: the gateway's HTTP server, routing and
#                  access log, without upstream, authentication or JSON
#   leo_chat_c1    wrk -> the gateway -> the upstream on CPU 0: the full proxied request, two cross-core legs
# and leo_health_c32, the HTTP server's own ceiling on one core.
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2))}'; }
wrk_run() { # conns url [lua] -> "rps p50_us p99_us non2xx"
    local c=$1 url=$2 script=() out
    [ $# -lt 3 ] || script=(-s "$3")
    out=$(env STREAM="$STREAM" KEY="$KEY" MODEL=gpt-4o-mini taskset -c 0 wrk -t1 -c"$c" -d"${SECS}s" --latency \
        "${script[@]}" "$url" 2>&1)
    awk '
        function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return (v + 0) * 1000; if (v ~ /s$/) return (v + 0) * 1e6; return v }
        /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) } /^Requests\/sec/ { rps = $2 } /Non-2xx/ { bad = $NF }
        END { printf "%d %d %d %d\n", rps, p50, p99, bad }' <<<"$out"
}
start_upstream() { # cpu port -> pid in $!
    MOCK_PORT=$2 taskset -c "$1" "$work/upstream" 2>>"$work/upstream.log" &
    for _ in $(seq 50); do port_busy "$2" && return 0; sleep 0.1; done
    echo "compare.sh: the upstream did not start on port $2" >&2
    return 1
}
if [ "$HOP" = 1 ] || [ "$PERF" = 1 ]; then
    cc -O2 -o "$work/upstream" "$kit/upstream.c"
    start_upstream 0 9100
    ups+=($!)
fi
if [ "$HOP" = 1 ]; then
    if port_busy 9101; then echo "compare.sh: port 9101 is in use (needed by the latency decomposition)" >&2; exit 2; fi
    start_upstream 1 9101
    ups+=($!)
    : > "$work/hop.rows"
    wrk_run 8 "http://127.0.0.1:$PORT" "$kit/chat.lua" >/dev/null # warm-up
    for _ in $(seq "$ROUNDS"); do
        echo "direct_c1 $(wrk_run 1 http://127.0.0.1:9100 "$kit/chat.lua")" >> "$work/hop.rows"
        echo "xcore_c1 $(wrk_run 1 http://127.0.0.1:9101 "$kit/chat.lua")" >> "$work/hop.rows"
        echo "leo_health_c1 $(wrk_run 1 "http://127.0.0.1:$PORT/health")" >> "$work/hop.rows"
        echo "leo_chat_c1 $(wrk_run 1 "http://127.0.0.1:$PORT" "$kit/chat.lua")" >> "$work/hop.rows"
        echo "leo_health_c32 $(wrk_run 32 "http://127.0.0.1:$PORT/health")" >> "$work/hop.rows"
    done
fi

# ---- profile ----
if [ "$PERF" = 1 ]; then
    # Two recordings under one load: frame-pointer call graphs (-g) for self time, then DWARF call graphs for
    # attributing library and kernel time to the gateway function that called in (the libraries and the
    # Release build keep no frame pointers, so -g cannot walk past them).
    psecs=$SECS dsecs=$((SECS < 5 ? SECS : 5))
    env STREAM="$STREAM" KEY="$KEY" MODEL=gpt-4o-mini taskset -c 0 wrk -t1 -c32 -d"$((psecs + dsecs + 8))s" \
        --latency -s "$kit/chat.lua" "http://127.0.0.1:$PORT" > "$work/perf.wrk" 2>&1 &
    load=$!
    sleep 1
    perf record -g -o "$work/perf.data" -p "$worker" -- sleep "$psecs" 2> "$work/perf.record.log" >/dev/null
    # System calls per request. The requests are the gateway's own leo_requests_total, read at the start and
    # at the end of the command perf stat runs, so they bracket the window in which it counts.
    calls=write,writev,read,readv,sendto,recvfrom,epoll_ctl,epoll_wait,poll,ioctl
    total="curl -sf http://127.0.0.1:$PORT/metrics | awk '/^leo_requests_total[{]/ {s += \$NF} END {printf \"%d\\n\", s}'"
    # The worker's CPU time (utime + stime, in clock ticks) is read in the same window.
    ticks="awk '{print \$14 + \$15}' /proc/$worker/stat"
    perf stat -x, -e "$(echo "$calls" | sed 's/\([a-z_]*\)/syscalls:sys_enter_\1/g')" -p "$worker" -- \
        bash -c "$total > '$work/requests.0'; $ticks > '$work/ticks.0'; date +%s%N > '$work/ns.0'; sleep 2;
                 $total > '$work/requests.1'; $ticks > '$work/ticks.1'; date +%s%N > '$work/ns.1'" \
        2> "$work/perf.syscalls" >/dev/null
    r0=$(cat "$work/requests.0") r1=$(cat "$work/requests.1")
    cpu_s=$(awk -v a="$(cat "$work/ticks.0")" -v b="$(cat "$work/ticks.1")" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.3f", (b - a) / hz}')
    wall_s=$(awk -v a="$(cat "$work/ns.0")" -v b="$(cat "$work/ns.1")" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
    perf record --call-graph dwarf,16384 -F 999 -o "$work/perf.dwarf.data" -p "$worker" -- sleep "$dsecs" \
        2>> "$work/perf.record.log" >/dev/null
    wait "$load" || true
    load=""
fi

hwm_worker_end=$(kib "$worker" VmHWM) hwm_sup_end=$(kib "$sup" VmHWM)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
kill -TERM "$sup"
for _ in $(seq 50); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sup" 2>/dev/null && echo "compare.sh: the gateway did not stop within 5 s of SIGTERM" >&2
wait "$sup" 2>/dev/null || true
sup=""

# ---- report ----
echo "== LEO Optima side-by-side benchmark"
echo "tree:     $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
echo "machine:  $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n '1,1p'), Linux $(uname -r)"
echo "gateway:  $gw, 1 worker on CPU 1, access_log $ACCESS_LOG, busy_poll_us ${BUSY_POLL:-0 (off)} (stderr to a file)"
echo "load avg: before $load_before, after $load_after"
echo
cat "$work/compare.out"
if grep -qi 'non-2xx' "$work/compare.err"; then
    echo "WARNING: some requests failed, so these figures are not valid:"
    grep -i 'non-2xx' "$work/compare.err"
fi
echo "gateway log: $(wc -l < "$work/gateway.log") lines, $(du -h "$work/gateway.log" | cut -f1)"
grep -v '"type":"access"' "$work/gateway.log" | grep -E '"level":"(warn|error)"|Assertion|Segmentation' | sed -n '1,5p' |
    sed 's/^/  gateway: /' || true
echo
echo "resident memory (VmRSS idle -> VmHWM after the comparison)"
echo "  worker     pid $worker: idle $(mib "$idle_worker"), peak $(mib "$hwm_worker"); after the load $(mib "$rss_worker"): $split_worker"
echo "  supervisor pid $sup_pid: idle $(mib "$idle_sup"), peak $(mib "$hwm_sup"); after the load: $split_sup"
if [ "$hwm_worker_end" != "$hwm_worker" ] || [ "$hwm_sup_end" != "$hwm_sup" ]; then
    echo "  after the extra runs below: worker peak $(mib "$hwm_worker_end"), supervisor peak $(mib "$hwm_sup_end")"
fi
if [ "$HOP" = 1 ]; then
    col() { awk -v t="$1" -v k="$2" '$1 == t {print $k}' "$work/hop.rows" | median; }
    bad=$(awk '$5 > 0 {print $1}' "$work/hop.rows" | sort -u | tr '\n' ' ')
    echo
    echo "latency at 1 connection, ${ROUNDS} rounds of ${SECS}s, stream=${STREAM:-0}; medians"
    printf '%-16s %10s %10s %10s   %s\n' run rps p50_us p99_us what
    while read -r t what; do
        printf '%-16s %10s %10s %10s   %s\n' "$t" "$(col "$t" 2)" "$(col "$t" 3)" "$(col "$t" 4)" "$what"
    done <<'ROWS'
direct_c1 upstream on CPU 0, same core as wrk
xcore_c1 upstream on CPU 1: one cross-core round trip
leo_health_c1 GET /health through the gateway (CPU 1)
leo_chat_c1 chat through the gateway (CPU 1) to the upstream (CPU 0)
leo_health_c32 GET /health through the gateway at 32 connections
ROWS
    awk -v d="$(col direct_c1 3)" -v x="$(col xcore_c1 3)" -v h="$(col leo_health_c1 3)" -v l="$(col leo_chat_c1 3)" 'BEGIN {
        printf "added p50 (leo_chat - direct): %d us = %.2fx the direct p50; the target is at most 1.5x\n", l - d, (l - d) / d
        printf "cross-core cost of one round trip (xcore - direct): %d us; the proxied request makes two\n", x - d
        printf "gateway HTTP server, routing, access log (leo_health - xcore): %d us\n", h - x
        printf "proxied request beyond /health (leo_chat - leo_health): %d us, of which one cross-core leg\n", l - h
        printf "estimate of the time spent in the gateway itself at c1 (leo_chat - 2 xcore + direct): %d us\n", l - 2 * x + d }'
    [ -z "$bad" ] || echo "WARNING: non-2xx responses in: $bad"
fi
if [ "$PERF" = 1 ]; then
    echo
    echo "profile: perf record -g -p $worker -- sleep $psecs, under wrk -t1 -c32 (chat.lua, stream=${STREAM:-0})"
    awk '/^Requests\/sec/ {print "  wrk throughput over the whole profiling window: " $2 " requests/s"}' "$work/perf.wrk"
    perf report -i "$work/perf.data" --no-children -g none --sort dso --stdio 2>/dev/null |
        awk '/^ *[0-9.]+%/ {printf "  %-8s %s\n", $1, $2}' | sed -n '1,12p'
    echo "  by component (self time):"
    perf report -i "$work/perf.data" --no-children -g none --sort dso,sym --stdio 2>/dev/null | awk '
        /^ *[0-9.]+%/ {
            pct = $1 + 0; dso = $2; sym = $0; sub(/^.*\] /, "", sym)
            if (dso ~ /kernel/) k = "kernel"
            else if (dso ~ /libcurl/) k = "libcurl"
            else if (dso ~ /libjansson/) k = "jansson"
            else if (dso ~ /libc\.so/ && sym ~ /(malloc|free|realloc|calloc|_int_|tcache|arena|memalign)/) k = "malloc/free (libc)"
            else if (dso ~ /libc\.so/) k = "libc other"
            else if (dso ~ /libuv/) k = "libuv"
            else if (dso ~ /leo-gateway/) k = "leo-gateway"
            else if (dso ~ /libssl|libcrypto/) k = "openssl"
            else k = "other (" dso ")"
            s[k] += pct
        }
        END { for (k in s) printf "    %6.2f%%  %s\n", s[k], k }' | sort -rn
    echo "  kernel self time by the system call it ran under (file = the access log; wake-ups = samples inside"
    echo "  sock_def_readable, i.e. waking the process at the other end of a loopback socket, on the other CPU):"
    perf script -i "$work/perf.data" -F ip,sym,dso 2>/dev/null > "$work/perf.script"
    awk '
        BEGIN { RS = "" }
        {
            n = split($0, L, "\n"); total++
            if (L[1] !~ /kernel\.kallsyms/) next
            k = "no system call (interrupts, faults)"; file = 0
            for (i = 1; i <= n; i++) {
                split(L[i], f, " ")
                if (f[2] ~ /^(ext4_|shmem_file_write|generic_perform_write)/) file = 1
                if (f[2] == "do_syscall_64" && i > 1) { split(L[i - 1], g, " "); k = g[2]; break }
            }
            if (file) k = k " (file)"
            c[k]++
        }
        END { for (k in c) if (100 * c[k] / total >= 0.3) printf "    %6.2f%%  %s\n", 100 * c[k] / total, k }' \
        "$work/perf.script" | sort -rn
    awk 'BEGIN { RS = "" } { total++; if ($0 ~ /sock_def_readable/) wake++ }
        END { printf "    %6.2f%%  of all samples inside sock_def_readable (wake-ups, counted above)\n", 100 * wake / total }' \
        "$work/perf.script"
    echo "  top symbols (self time):"
    perf report -i "$work/perf.data" --no-children -g none --sort dso,sym --stdio 2>/dev/null |
        awk '/^ *[0-9.]+%/ {sub(/^ +/, ""); print "    " $0}' | sed -n '1,30p'
    # inlined frames come without their object file; the real frame follows them
    awk -v c="$cpu_s" -v w="$wall_s" -v n=$((r1 - r0)) 'BEGIN {
        printf "  worker CPU in a 2 s window: %.0f%% of one core, %d requests, %.1f us of CPU per request\n",
            100 * c / w, n, 1e6 * c / n }'
    echo "  system calls per request (perf stat -e syscalls:sys_enter_* in the same window):"
    awk -F, -v n=$((r1 - r0)) '$3 ~ /sys_enter_/ && $1 + 0 > 0 { sub(/.*sys_enter_/, "", $3); printf "    %6.2f  %s\n", $1 / n, $3 }' \
        "$work/perf.syscalls" | sort -rn
    perf script -i "$work/perf.dwarf.data" -F ip,sym,dso 2>/dev/null | grep -v '(inlined)$' > "$work/perf.dwarf.script"
    echo
    echo "profile with DWARF call graphs: perf record --call-graph dwarf,16384 -F 999 -p $worker -- sleep $dsecs"
    echo "  inclusive time of the gateway's own functions (share of samples with the function on the stack):"
    awk '
        BEGIN { RS = "" }
        {
            total++; n = split($0, L, "\n"); delete seen
            for (i = 1; i <= n; i++)
                if (L[i] ~ /leo-gateway\)$/) { split(L[i], f, " "); if (!(f[2] in seen)) { seen[f[2]] = 1; c[f[2]]++ } }
        }
        END { for (k in c) if (k !~ /^(main|_start|leo_supervisor_run|leo_worker_run|\[unknown\])$/) printf "    %6.2f%%  %s\n", 100 * c[k] / total, k }' \
        "$work/perf.dwarf.script" | sort -rn | sed -n '1,25p'
    echo "  time outside the gateway by what ran and the gateway function that called in:"
    awk '
        function comp(line) {
            if (line ~ /kernel\.kallsyms/) return "kernel"
            if (line ~ /libcurl/) return "libcurl"
            if (line ~ /libjansson/) return "jansson"
            if (line ~ /libc\.so/ && line ~ /(malloc|free|realloc|calloc|_int_|tcache|memalign)/) return "malloc/free"
            if (line ~ /libc\.so/) return "libc other"
            if (line ~ /libuv/) return "libuv"
            if (line ~ /libsodium/) return "libsodium"
            if (line ~ /\[vdso\]/) return "vdso"
            return "other"
        }
        BEGIN { RS = "" }
        {
            total++; n = split($0, L, "\n")
            if (L[1] ~ /leo-gateway\)$/) next
            what = comp(L[1])
            # libc called by jansson or libcurl (their allocations, string functions) is charged to them;
            # kernel time stays kernel time, whoever made the system call
            for (i = 2; i <= n; i++) {
                if (L[i] ~ /leo-gateway\)$/) { split(L[i], f, " "); c[what " <- " f[2]]++; break }
                if (what ~ /^(malloc|libc)/ && L[i] ~ /libjansson/) what = "jansson"
                else if (what ~ /^(malloc|libc)/ && L[i] ~ /libcurl/) what = "libcurl"
            }
        }
        END { for (k in c) printf "    %6.2f%%  %s\n", 100 * c[k] / total, k }' \
        "$work/perf.dwarf.script" | sort -rn | sed -n '1,20p'
fi
if [ -n "$OUT" ]; then
    echo
    echo "gateway log, config, wrk output$([ "$PERF" = 0 ] || echo ' and perf.data') kept in $work"
fi
