#!/usr/bin/env bash
# Configures and builds LEO Optima with CMake.
#
#   deploy/build.sh [--asan] [--dir DIR] [--jobs N] [--target NAME]... [-- CMAKE_ARGS...]
#
#   (default)      optimised build (Release, -O2) in build/
#   --asan         AddressSanitizer + UndefinedBehaviorSanitizer build (RelWithDebInfo, -O2 -g,
#                  -DLEO_SANITIZE=ON) in build-asan/
#   --dir DIR      build tree to use instead (relative paths are taken from the current directory)
#   --jobs N       parallel compile jobs (default: nproc)
#   --target NAME  build only this target (repeatable; default: everything)
#   -- ARGS        further arguments for the cmake configure step
#
# The tests' Node is always set to the pinned one (-DLEO_NODE=<repo>/.tools/node/bin/node, see deploy/node.sh).
# Re-running reconfigures incrementally and rebuilds only what changed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

asan=0
dir=
jobs=$(nproc 2>/dev/null || echo 2)
targets=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --asan) asan=1 ;;
    --dir)
        [ $# -ge 2 ] || { echo "build.sh: --dir needs a directory" >&2; exit 2; }
        dir=$2
        shift
        ;;
    --jobs | -j)
        [ $# -ge 2 ] || { echo "build.sh: --jobs needs a number" >&2; exit 2; }
        jobs=$2
        shift
        ;;
    --target)
        [ $# -ge 2 ] || { echo "build.sh: --target needs a name" >&2; exit 2; }
        targets+=("$2")
        shift
        ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build.sh: unknown option \"$1\"" >&2
        exit 2
        ;;
    esac
    shift
done

if [ -z "$dir" ]; then
    if [ "$asan" = 1 ]; then dir=$root/build-asan; else dir=$root/build; fi
fi
case "$dir" in
/*) ;;
*) dir=$PWD/$dir ;;
esac

if [ "$asan" = 1 ]; then
    cfg=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DLEO_SANITIZE=ON)
else
    cfg=(-DCMAKE_BUILD_TYPE=Release -DLEO_SANITIZE=OFF)
fi

echo "build.sh: configuring ${dir#"$root"/} ($([ "$asan" = 1 ] && echo "ASan+UBSan" || echo "Release -O2"))"
cmake -S "$root" -B "$dir" "${cfg[@]}" -DLEO_NODE="$root/.tools/node/bin/node" "${extra[@]}"

build=(cmake --build "$dir" -j"$jobs")
for t in "${targets[@]}"; do
    build+=(--target "$t")
done
echo "build.sh: building with $jobs job(s)"
"${build[@]}"
echo "build.sh: done: ${dir#"$root"/}"
