#!/usr/bin/env bash
# Runs LEO Optima locally: installs what is missing, builds, and starts the gateway in the foreground.
#
#   deploy/run-demo.sh [GATEWAY_ARGS...]
#
# Without OPENAI_API_KEY the gateway talks to the mock provider (build/leo-mock-provider on 127.0.0.1:9100, started
# here and stopped with the gateway) using deploy/config/gateway.demo.json; with OPENAI_API_KEY set it uses
# deploy/config/gateway.openai.json and the real provider. Further arguments go to leo-gateway (for example
# --workers 2 or --listen 127.0.0.1:8081). Ctrl-C (or SIGTERM to this script) stops everything it started.
# LEO_DEMO_BUILD_DIR picks another build tree than build/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

DEMO_KEY=sk-leo-demo-0000000000000000
MOCK_ADDR=127.0.0.1:9100
listen=127.0.0.1:8080
bdir=${LEO_DEMO_BUILD_DIR:-build}

# The URL to print follows a --listen given on the command line.
prev=
for arg in "$@"; do
    case "$prev" in
    --listen | -l) listen=$arg ;;
    esac
    case "$arg" in
    --listen=*) listen=${arg#--listen=} ;;
    esac
    prev=$arg
done

bash deploy/install-deps.sh --quiet
echo "run-demo.sh: building (deploy/build.sh)"
log=$(mktemp)
bash deploy/build.sh --dir "$bdir" --target leo-gateway --target leo-mock-provider >"$log" 2>&1 || {
    cat "$log" >&2
    rm -f "$log"
    echo "run-demo.sh: the build failed" >&2
    exit 1
}
rm -f "$log"

if [ -n "${OPENAI_API_KEY:-}" ]; then
    config=deploy/config/gateway.openai.json
    upstream="OpenAI (OPENAI_API_KEY is set)"
else
    config=deploy/config/gateway.demo.json
    upstream="the mock provider on $MOCK_ADDR (set OPENAI_API_KEY to use OpenAI)"
fi
[ -f "$config" ] || { echo "run-demo.sh: missing configuration $config" >&2; exit 1; }

# listening HOST:PORT: true when something accepts TCP connections there.
listening() {
    local host=${1%:*} port=${1##*:}
    case "$host" in
    "" | 0.0.0.0 | "*") host=127.0.0.1 ;;
    esac
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Another process on one of the ports would take requests meant for this demo (the gateway's workers share their
# port with SO_REUSEPORT, so a second gateway would not even fail to start).
for addr in "$listen" $([ -z "${OPENAI_API_KEY:-}" ] && echo "$MOCK_ADDR"); do
    if listening "$addr"; then
        echo "run-demo.sh: something already listens on $addr; stop it first (or pass --listen HOST:PORT)" >&2
        exit 1
    fi
done

mock_pid=
gw_pid=
stop() {
    trap - INT TERM EXIT
    [ -n "$gw_pid" ] && kill -TERM "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
    [ -n "$mock_pid" ] && kill -TERM "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null
    return 0
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

if [ -z "${OPENAI_API_KEY:-}" ]; then
    "$bdir/leo-mock-provider" --listen "$MOCK_ADDR" &
    mock_pid=$!
    # Wait (at most 10 s) until the mock accepts connections, so the gateway's first request finds it.
    for _ in $(seq 100); do
        kill -0 "$mock_pid" 2>/dev/null || { echo "run-demo.sh: the mock provider exited at start" >&2; exit 1; }
        listening "$MOCK_ADDR" && break
        sleep 0.1
    done
    listening "$MOCK_ADDR" || { echo "run-demo.sh: the mock provider did not start listening on $MOCK_ADDR" >&2; exit 1; }
fi

cat <<EOF

  LEO Optima gateway
    OpenAI-compatible API:  http://$listen/v1
    API key:                $DEMO_KEY
    upstream:               $upstream
    config:                 $config

  Try it:
    curl -s http://$listen/v1/chat/completions \\
      -H 'Authorization: Bearer $DEMO_KEY' \\
      -H 'Content-Type: application/json' \\
      -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}'

  Ctrl-C stops the gateway$([ -n "$mock_pid" ] && echo " and the mock provider").

EOF

if [ -z "$mock_pid" ]; then
    trap - INT TERM EXIT
    exec "$bdir/leo-gateway" --config "$config" "$@"
fi

# With the mock, the gateway runs as a child rather than through exec so that this script outlives it and can stop
# the mock. The trap also sends it SIGTERM (which it answers by draining its workers), so Ctrl-C and a SIGTERM to
# this script both stop it even if it came up with SIGINT ignored, as background children of a script may.
"$bdir/leo-gateway" --config "$config" "$@" &
gw_pid=$!
set +e
wait "$gw_pid"
rc=$?
gw_pid=
exit "$rc"
