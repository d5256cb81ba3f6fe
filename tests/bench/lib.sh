# lib.sh — set-up shared by the benchmark scripts in this directory; sourced, not run. The sourcing script sets
# `root` (the repository) and `name` (its own name, for messages) first.

# Sets `kit` to the shared benchmark kit: ../shared/bench beside the repository, or SHARED_DIR (the directory
# holding the kit, or its parent). Exits unless every file named is in it.
bench_kit() {
    local f
    if [ -n "${SHARED_DIR:-}" ]; then
        if [ -f "$SHARED_DIR/upstream.c" ]; then kit=$SHARED_DIR; else kit=$SHARED_DIR/bench; fi
    else
        kit=$(cd "$root/.." && pwd)/shared/bench
    fi
    for f in "$@"; do
        [ -f "$kit/$f" ] || { echo "$name: the shared kit is not at $kit (set SHARED_DIR)" >&2; exit 2; }
    done
}

# Exits unless every command named is on PATH and the machine has 2 CPUs (the proxy under test on CPU 1, the
# load and the upstream on CPU 0).
bench_needs() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: $tool is missing (bash deploy/install-deps.sh --bench)" >&2; exit 2; }
    done
    [ "$(nproc)" -ge 2 ] || { echo "$name: needs 2 CPUs (the proxy on CPU 1, load and upstream on CPU 0)" >&2; exit 2; }
}

# True when something listens on TCP port $1.
port_busy() { ss -Htln "sport = :$1" | grep -q .; }
