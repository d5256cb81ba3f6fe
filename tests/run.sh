#!/usr/bin/env bash
# Runs every test of LEO Optima, from nothing: installs the Debian packages and the pinned Node, installs the SDKs
# of the end-to-end tests, then builds and runs the whole ctest suite twice: on the optimised build (build/) and on
# the AddressSanitizer + UndefinedBehaviorSanitizer build (build-asan/).
#
#   tests/run.sh [--fast] [-R REGEX] [--build-dir DIR] [--asan-dir DIR]
#
#   --fast            skip the sanitizer pass
#   -R REGEX          run only the ctest tests whose names match REGEX (in both passes)
#   --build-dir DIR   optimised build tree (default build/)
#   --asan-dir DIR    sanitizer build tree (default build-asan/)
#
# Environment: LEO_TEST_PASS_TIMEOUT (seconds one ctest pass may take, default 1500 optimised and 2400 sanitized;
# each test also has its own ctest TIMEOUT). Exits non-zero when anything failed; the last line is
# "summary: N passed, M failed" over both passes (a build that fails counts as one failure).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2

fast=0
regex=
build_dir=build
asan_dir=build-asan
while [ $# -gt 0 ]; do
    case "$1" in
    --fast) fast=1 ;;
    -R)
        [ $# -ge 2 ] || { echo "run.sh: -R needs a regular expression" >&2; exit 2; }
        regex=$2
        shift
        ;;
    --build-dir | --asan-dir)
        [ $# -ge 2 ] || { echo "run.sh: $1 needs a directory" >&2; exit 2; }
        if [ "$1" = --build-dir ]; then build_dir=$2; else asan_dir=$2; fi
        shift
        ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "run.sh: unknown option \"$1\"" >&2
        exit 2
        ;;
    esac
    shift
done

started=$(date +%s)
jobs=$(nproc 2>/dev/null || echo 2)
passed=0
failed=0
results=()

step() { printf '\n==> %s\n' "$*"; }
elapsed() { echo "$(($(date +%s) - started))s"; }
die() {
    echo "run.sh: $*" >&2
    echo "summary: $passed passed, $((failed + 1)) failed"
    exit 1
}

step "Debian packages"
bash deploy/install-deps.sh || die "deploy/install-deps.sh failed"

step "pinned Node"
bash deploy/node.sh || die "deploy/node.sh failed"
npm=$root/.tools/node/bin/npm

# npm ci starts from an empty node_modules every time; skip it when node_modules already holds exactly what the
# lockfile names, installed by the same npm.
step "end-to-end test dependencies (npm ci in tests/e2e)"
stamp=tests/e2e/node_modules/.leo-npm-ci
want="$(sha256sum tests/e2e/package-lock.json | cut -d' ' -f1) $("$npm" --version)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "run.sh: tests/e2e/node_modules is up to date"
else
    (cd tests/e2e && "$npm" ci --no-audit --no-fund) || die "npm ci in tests/e2e failed"
    echo "$want" >"$stamp"
fi

# run_pass NAME DIR TIMEOUT CTEST_JOBS BUILD_ARGS...: builds DIR and runs ctest in it, adding to the counts.
run_pass() {
    local name=$1 dir=$2 limit=$3 cjobs=$4
    shift 4
    step "$name: build ($dir)"
    if ! bash deploy/build.sh --dir "$dir" "$@"; then
        results+=("$name: build failed")
        failed=$((failed + 1))
        return
    fi
    step "$name: ctest -j$cjobs in $dir"
    local log=$dir/ctest.log args=(--test-dir "$dir" --output-on-failure --no-tests=error -j"$cjobs")
    [ -n "$regex" ] && args+=(-R "$regex")
    timeout --kill-after=30 "$limit" ctest "${args[@]}" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    # ctest closes with "N% tests passed, F tests failed out of T"; without that line (the pass was stopped), count
    # the per-test result lines instead.
    local line total np nf
    line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1)
    if [ -n "$line" ]; then
        total=$(echo "$line" | sed -E 's/.* out of ([0-9]+).*/\1/')
        nf=$(echo "$line" | sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/')
        np=$((total - nf))
    else
        np=$(grep -cE 'Test +#[0-9]+: .* Passed' "$log")
        nf=$(grep -cE 'Test +#[0-9]+: .*\*\*\*' "$log")
    fi
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        nf=$((nf + 1))
        results+=("$name: $np passed, $nf failed (ctest stopped after ${limit}s)")
    elif [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
        nf=1
        results+=("$name: $np passed, ctest exited with status $rc")
    else
        results+=("$name: $np passed, $nf failed")
    fi
    passed=$((passed + np))
    failed=$((failed + nf))
}

run_pass "optimised" "$build_dir" "${LEO_TEST_PASS_TIMEOUT:-1500}" "$jobs"

if [ "$fast" = 0 ]; then
    # Sanitized binaries are slower and hungrier; two tests at a time keep timing-sensitive tests honest.
    asan_jobs=$((jobs < 2 ? jobs : 2))
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    run_pass "sanitized" "$asan_dir" "${LEO_TEST_PASS_TIMEOUT:-2400}" "$asan_jobs" --asan
    unset ASAN_OPTIONS UBSAN_OPTIONS
else
    results+=("sanitized: skipped (--fast)")
fi

step "results ($(elapsed))"
for r in "${results[@]}"; do
    echo "  $r"
done
echo "summary: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
