#!/usr/bin/env bash
# semcache.sh — benchmark of the semantic cache (gateway/semcache.c) through its real module: time to add N
# entries, lookup latency for exact repeats, light paraphrases and unrelated prompts, recall against an
# exhaustive scan, answers served from another prompt than the query's own (and whether the index missed),
# and memory per entry, at several sizes.
#
#   tests/bench/semcache.sh [--sizes 10000,100000,1000000] [--queries Q] [--recall-queries R]
#                           [--threshold T] [--seed S] [--out DIR] [--build-dir DIR] [--no-build]
#
#   --sizes LIST        entries in the cache, one run (one process) per size (default 10000,100000)
#   --queries Q         timed lookups of each kind per size (default 2000)
#   --recall-queries R  repeats and paraphrases checked against the exhaustive scan (default 200 of each;
#                       the scan embeds every stored prompt again and scores it against the 2R queries)
#   --threshold T       the similarity threshold (default: the cache's, LEO_SEMCACHE_DEFAULT_THRESHOLD)
#   --seed S            seed of the query choice (default 1); the stored prompts do not depend on it
#   --out DIR           keep the raw results in DIR: per size the bench's key/value output (size-N.txt) and one
#                       CSV row per timed query (size-N.csv), and the summary (summary.txt)
#   --build-dir DIR     the build tree whose libleo_gateway_core.a and libleo_common.a are linked (default
#                       <repo>/build, a Release build; built here unless --no-build)
#
# What it does: builds the libraries (incrementally), compiles tests/bench/semcache_bench.c against them
# (cc -O2), then for each size starts one process that creates the cache as a worker does with the `local`
# embedder and no Redis (leo_semcache_new with redis NULL, max_entries = N), adds N synthetic prompts in one
# namespace (the worst case: one index holds everything), looks up Q repeats, Q paraphrases and Q unrelated
# prompts (interleaved), scores every repeat and paraphrase against the prompt it was made from, checks the
# first R repeats and paraphrases against an exhaustive scan, and reports (see the comment at the top of
# semcache_bench.c for the data and every definition). It prints the machine and its load averages, and
# tables; latencies are given as wall time and as the thread's CPU time (on a machine shared with other work
# the CPU time is the steadier figure). The 1M case needs about 1.7 GB of memory and 6 to 11 minutes of one
# core (5 to 9 of them adding). It is a benchmark, not a test: ctest does not run it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

SIZES=10000,100000 QUERIES=2000 RECALL=200 THRESHOLD="" SEED=1 OUT="" BUILD_DIR="$root/build" BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
    --sizes) SIZES=$2; shift 2 ;;
    --queries) QUERIES=$2; shift 2 ;;
    --recall-queries) RECALL=$2; shift 2 ;;
    --threshold) THRESHOLD=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "semcache.sh: unknown argument \"$1\"" >&2; exit 2 ;;
    esac
done
case $SIZES in *[!0-9,]* | "" | ,* | *, | *,,*) echo "semcache.sh: --sizes takes numbers separated by commas" >&2; exit 2 ;; esac
case $QUERIES$RECALL$SEED in *[!0-9]*) echo "semcache.sh: --queries, --recall-queries and --seed take numbers" >&2; exit 2 ;; esac

# ---- build ----
if [ "$BUILD" = 1 ]; then
    if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
        cmake -S "$root" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release > "$BUILD_DIR.configure.log" 2>&1 ||
            { echo "semcache.sh: cmake failed:" >&2; tail -n 30 "$BUILD_DIR.configure.log" >&2; exit 1; }
    fi
    cmake --build "$BUILD_DIR" --target leo_gateway_core -j"$(nproc)" > "$BUILD_DIR/bench-semcache-build.log" 2>&1 ||
        { echo "semcache.sh: the build failed:" >&2; tail -n 30 "$BUILD_DIR/bench-semcache-build.log" >&2; exit 1; }
fi
type=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null || true)
for lib in libleo_gateway_core.a libleo_common.a libllhttp.a; do
    [ -f "$BUILD_DIR/$lib" ] || { echo "semcache.sh: no $lib in $BUILD_DIR" >&2; exit 2; }
done

tmp=$(mktemp -d /tmp/leo-semcache-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    work=$(cd "$OUT" && pwd)
else
    work=$tmp
fi
# a sanitizer build's libraries need the bench built and linked the same way
san=()
grep -q '^LEO_SANITIZE:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null &&
    san=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
# shellcheck disable=SC2046 # pkg-config prints several words on purpose
cc -std=gnu11 -O2 -Wall -Wextra -Werror "${san[@]}" -I"$root" -o "$tmp/semcache_bench" "$here/semcache_bench.c" \
    "$BUILD_DIR/libleo_gateway_core.a" "$BUILD_DIR/libleo_common.a" "$BUILD_DIR/libllhttp.a" \
    $(pkg-config --libs libuv libcurl jansson libsodium hiredis) -lm

# ---- runs ----
machine="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n '1,1p'), $(nproc) CPUs,"
machine="$machine $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
args=(--queries "$QUERIES" --recall-queries "$RECALL" --seed "$SEED")
[ -z "$THRESHOLD" ] || args+=(--threshold "$THRESHOLD")
IFS=, read -r -a sizes <<<"$SIZES"
for n in "${sizes[@]}"; do
    echo "semcache.sh: $n entries (load averages $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$tmp/semcache_bench" --size "$n" "${args[@]}" --raw "$work/size-$n.csv" > "$work/size-$n.txt"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ----
v() { awk -v k="$2" '$1 == k {print $2}' "$work/size-$1.txt"; }
{
    echo "== semantic cache benchmark (gateway/semcache.c, local embedder, no Redis, one namespace)"
    echo "tree:      $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
    echo "machine:   $machine"
    echo "build:     $BUILD_DIR (${type:-unknown build type}), bench cc -O2"
    echo "load avg:  start $load_start, end $load_end"
    echo "command:   tests/bench/semcache.sh --sizes $SIZES ${args[*]}"
    echo "threshold: $(v "${sizes[0]}" threshold), dimension $(v "${sizes[0]}" dim), $QUERIES queries of each kind, recall on $RECALL repeats and $RECALL paraphrases"
    echo
    echo "adds and memory"
    printf '%10s %10s %10s %14s %10s %12s %12s\n' entries add_wall_s add_cpu_s add_cpu_us/ent rss_MiB rss_B/entry heap_B/entry
    for n in "${sizes[@]}"; do
        printf '%10s %10s %10s %14s %10s %12s %12s\n' "$n" "$(v "$n" add_wall_s)" "$(v "$n" add_cpu_s)" \
            "$(awk -v c="$(v "$n" add_cpu_s)" -v n="$n" 'BEGIN {printf "%.1f", c * 1e6 / n}')" \
            "$(v "$n" rss_after_mib)" "$(v "$n" rss_bytes_per_entry)" "$(v "$n" heap_bytes_per_entry)"
    done
    echo
    echo "lookups (query_init + lookup + release: eligibility, namespace, embedding, HNSW search, guard)"
    printf '%10s %-11s %8s %8s %9s %9s %9s %9s\n' entries kind hit_rate own_hit p50_us p99_us cpu_p50 cpu_p99
    for n in "${sizes[@]}"; do
        for k in repeat paraphrase unrelated; do
            own=$(v "$n" "${k}_source_hit_rate")
            printf '%10s %-11s %8s %8s %9s %9s %9s %9s\n' "$n" "$k" "$(v "$n" "${k}_hit_rate")" "${own:--}" \
                "$(v "$n" "${k}_p50_us")" "$(v "$n" "${k}_p99_us")" "$(v "$n" "${k}_cpu_p50_us")" "$(v "$n" "${k}_cpu_p99_us")"
        done
    done
    emb=""
    for n in "${sizes[@]}"; do emb="$emb${emb:+, }$(v "$n" embed_cpu_p50_us) us at $n"; done
    echo "own_hit: the hit is the very prompt the query was made from; for repeats this is the recall over all"
    echo "of them (the exhaustive answer to an exact repeat is the prompt itself). The embedding alone (CPU p50): $emb."
    echo
    echo "answers from another prompt (hits on a stored prompt other than the one the query was made from)"
    printf '%10s %-11s %8s %11s %11s %11s\n' entries kind queries other_hits index_miss own_missed
    for n in "${sizes[@]}"; do
        for k in repeat paraphrase; do
            printf '%10s %-11s %8s %11s %11s %11s\n' "$n" "$k" "$(v "$n" "${k}_queries")" \
                "$(v "$n" "${k}_other_hits")" "$(v "$n" "${k}_other_hits_index_miss")" "$(v "$n" "${k}_own_missed")"
        done
    done
    echo "index_miss: of the other_hits, those where the query's own prompt passed the threshold and the guard and"
    echo "was more similar than the prompt served: the index missed it (the exhaustive scan would not have served"
    echo "that answer). The rest are the embedding's and the guard's verdict: another prompt at least as similar."
    echo "own_missed: misses although the query's own prompt was acceptable (index misses that cost a hit)."
    echo
    echo "recall against the exhaustive scan (same threshold, same guard)"
    printf '%10s %-11s %8s %10s %8s %10s %13s %9s\n' entries kind queries exh_hits recall exh_misses miss_agreement undecided
    for n in "${sizes[@]}"; do
        for k in repeat paraphrase; do
            printf '%10s %-11s %8s %10s %8s %10s %13s %9s\n' "$n" "$k" "$(v "$n" "${k}_recall_queries")" \
                "$(v "$n" "${k}_exhaustive_hits")" "$(v "$n" "${k}_recall")" "$(v "$n" "${k}_exhaustive_misses")" \
                "$(v "$n" "${k}_miss_agreement")" "$(v "$n" "${k}_undecided")"
        done
    done
    awk '/^add_failed/ && $2 > 0 {bad = 1} END {if (bad) print "WARNING: some adds failed; see size-N.txt"}' "$work"/size-*.txt
    [ -z "$OUT" ] || { echo; echo "raw results in $work (size-N.txt, size-N.csv, summary.txt)"; }
} | if [ -n "$OUT" ]; then tee "$work/summary.txt"; else cat; fi
