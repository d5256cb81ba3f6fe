#!/usr/bin/env bash
# hnsw.sh — benchmark of the semantic cache's vector index (common/hnsw.c): build time, search latency
# (p50/p99), recall@10 against exact search and memory per entry, at several index sizes.
#
#   tests/bench/hnsw.sh [--sizes 10000,100000,1000000] [--dim 256] [--M M] [--efc EF] [--ef EF,EF,...]
#                       [--queries Q] [--recall-queries R] [--data random|clustered] [--clusters C] [--seed S]
#                       [--no-reserve] [--out FILE]
#
# Defaults: sizes 10000,100000, dimension 256, the index's default M, ef_construction and ef_search (0 = default;
# --ef takes a list, one row per value), 1000 queries timed one at a time with k = 10, the first 200 of them also
# checked against an exact scan, uniform random unit vectors, seed 1, the index sized for all entries before the
# build (--no-reserve: grown by doubling, so bytes/entry includes the unused capacity). --out also writes the
# output to FILE.
#
# It compiles tests/bench/hnsw_bench.c with common/hnsw.c and common/alloc.c (cc -O2, as the Release build,
# no -march: the index picks its AVX2 code path at run time on CPUs that have it) into a temporary directory,
# prints the machine (CPU model, cores, load averages) and runs it. The 1M-entry case at dimension 256 needs
# about 1.5 GB of memory and minutes of one core (most of it building the index); the exact scans for recall
# cost R full passes over the data. It is a benchmark, not a test: ctest does not run it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

OUT=""
args=()
while [ $# -gt 0 ]; do
    case $1 in
    --out) OUT=$2; shift 2 ;;
    --no-reserve) args+=("$1"); shift ;;
    --sizes | --dim | --M | --efc | --ef | --queries | --recall-queries | --data | --clusters | --seed)
        [ $# -ge 2 ] || { echo "hnsw.sh: $1 needs a value" >&2; exit 2; }
        args+=("$1" "$2"); shift 2 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "hnsw.sh: unknown argument \"$1\"" >&2; exit 2 ;;
    esac
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -std=gnu11 -O2 -Wall -Wextra -Werror -I"$root" -o "$tmp/hnsw_bench" \
    "$root/tests/bench/hnsw_bench.c" "$root/common/hnsw.c" "$root/common/alloc.c" -lm

run() {
    echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores," \
        "$(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo)," \
        "$(grep -q avx2 /proc/cpuinfo && echo AVX2 || echo no AVX2)"
    echo "# load averages at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# command: tests/bench/hnsw.sh ${args[*]:-}"
    "$tmp/hnsw_bench" "${args[@]}"
    echo "# load averages at end: $(cut -d' ' -f1-3 /proc/loadavg)"
}

if [ -n "$OUT" ]; then
    run | tee "$OUT"
else
    run
fi
