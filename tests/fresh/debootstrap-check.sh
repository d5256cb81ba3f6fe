#!/usr/bin/env bash
# Proves that the install path works on a fresh Debian 12: builds a bare bookworm root (debootstrap, minbase
# variant), copies a clean checkout into it and runs, inside a chroot and with an empty environment:
#
#   bash deploy/install-deps.sh && bash deploy/node.sh && (cd tests/e2e && ../../.tools/node/bin/npm ci)
#
# then the first two again, which must be fast no-ops.
#
#   tests/fresh/debootstrap-check.sh [--build] [--tests] [--head] [--keep] [--dir DIR]
#
#   --build    also run deploy/build.sh inside (the optimised build)
#   --tests    also run tests/run.sh --fast inside
#   --head     copy the committed tree (git archive HEAD) instead of the working tree (tracked and untracked
#              files that git does not ignore)
#   --keep     keep the root afterwards (its mounts are always removed)
#   --dir DIR  where to build the root (default: a new directory under /var/tmp)
#
# Needs root. The root uses the host's apt sources and apt settings and trusts the CA certificates that the host
# added locally (/usr/local/share/ca-certificates), so that it reaches the same package archives the same way.
# Package services are kept from starting inside (policy-rc.d), so nothing listens on the host's ports.
# Prints "fresh check: PASSED" or "fresh check: FAILED" last and exits 0 or 1.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

do_build=0
do_tests=0
head=0
keep=0
target=
while [ $# -gt 0 ]; do
    case "$1" in
    --build) do_build=1 ;;
    --tests) do_tests=1 ;;
    --head) head=1 ;;
    --keep) keep=1 ;;
    --dir)
        [ $# -ge 2 ] || { echo "debootstrap-check.sh: --dir needs a directory" >&2; exit 2; }
        target=$2
        shift
        ;;
    -h | --help)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "debootstrap-check.sh: unknown option \"$1\"" >&2
        exit 2
        ;;
    esac
    shift
done

say() { echo "debootstrap-check.sh: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "debootstrap-check.sh: needs root" >&2; exit 2; }

if ! dpkg-query -W -f='${db:Status-Abbrev}' debootstrap 2>/dev/null | grep -q '^ii'; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap
fi

# The host's Debian archive for bookworm, from deb822 .sources or one-line .list files; debootstrap's own default
# when none is found.
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ && !/(^|\n)Enabled:[ \t]*no/ {
                 for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); print u[1]; exit }
             }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' "$f"
    done
}
mirror=$(host_mirror | head -1)

if [ -z "$target" ]; then
    target=$(mktemp -d /var/tmp/leo-fresh.XXXXXX)
else
    mkdir -p "$target"
    target=$(cd "$target" && pwd)
fi
[ "$target" != / ] || { echo "debootstrap-check.sh: refusing to use / as the root" >&2; exit 2; }
# mktemp makes the directory 0700; as the root's "/" that would lock every user but root out of the whole system.
chmod 0755 "$target"

mounts=()
cleanup() {
    local i m
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        m=${mounts[$i]}
        umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || say "could not unmount $m"
    done
    mounts=()
    # Never delete while anything is still mounted below the root: a bind mount of /dev would take the host's
    # device nodes with it.
    if grep -q " $target/" /proc/mounts; then
        say "mounts remain under $target; not deleting it"
        return
    fi
    if [ "$keep" = 1 ]; then
        say "kept the root in $target"
    else
        rm -rf --one-file-system "$target"
        say "removed $target"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
say "debootstrap bookworm (minbase) into $target${mirror:+ from $mirror}"
debootstrap --variant=minbase bookworm "$target" ${mirror:+"$mirror"} >"$target.debootstrap.log" 2>&1 || {
    tail -30 "$target.debootstrap.log" >&2
    rm -f "$target.debootstrap.log"
    echo "fresh check: FAILED (debootstrap)"
    exit 1
}
rm -f "$target.debootstrap.log"
say "debootstrap done in $(($(date +%s) - t0))s"

# The host's view of the network and of the package archives.
cp /etc/resolv.conf "$target/etc/resolv.conf"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    case "$f" in
    /etc/apt/sources.list) cp "$f" "$target/etc/apt/sources.list" ;;
    *) cp "$f" "$target/etc/apt/sources.list.d/" ;;
    esac
done
if [ -n "$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null)" ] && [ ! -s /etc/apt/sources.list ]; then
    rm -f "$target/etc/apt/sources.list" # the deb822 files replace the one debootstrap wrote
fi
for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && cp "$f" "$target/etc/apt/apt.conf.d/"
done
for f in /etc/apt/trusted.gpg.d/* /usr/share/keyrings/*; do
    [ -f "$f" ] || continue
    mkdir -p "$target$(dirname "$f")"
    [ -e "$target$f" ] || cp "$f" "$target$f"
done
mkdir -p "$target/usr/local/share/ca-certificates"
for f in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$f" ] && cp "$f" "$target/usr/local/share/ca-certificates/"
done
printf '#!/bin/sh\nexit 101\n' >"$target/usr/sbin/policy-rc.d"
chmod 0755 "$target/usr/sbin/policy-rc.d"

# The checkout.
dest=/work/leo
mkdir -p "$target$dest"
if [ "$head" = 1 ]; then
    say "copying git HEAD"
    git -C "$repo" archive --format=tar HEAD | tar -x -C "$target$dest"
else
    say "copying the working tree (tracked and untracked, minus ignored files)"
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -x -C "$target$dest"
fi
if [ -e "$target$dest/.tools" ] || [ -e "$target$dest/tests/e2e/node_modules" ] || [ -e "$target$dest/build" ]; then
    echo "fresh check: FAILED (the copied tree holds .tools, node_modules or build)"
    exit 1
fi

mount -t proc proc "$target/proc" && mounts+=("$target/proc")
mount -t sysfs sysfs "$target/sys" && mounts+=("$target/sys")
# /dev with everything below it (pts, shm), as a slave: nothing mounted or unmounted under the root's /dev can
# travel back to the host's.
mount --rbind /dev "$target/dev" && mounts+=("$target/dev")
mount --make-rslave "$target/dev"

script='set -euo pipefail
cd /work/leo
t() { date +%s; }
echo "fresh: Debian $(cat /etc/debian_version), $(uname -m)"
a=$(t); bash deploy/install-deps.sh; echo "fresh: install-deps.sh took $(($(t) - a))s"
a=$(t); bash deploy/node.sh; echo "fresh: node.sh took $(($(t) - a))s"
a=$(t); (cd tests/e2e && ../../.tools/node/bin/npm ci --no-audit --no-fund); echo "fresh: npm ci took $(($(t) - a))s"
echo "fresh: $(redis-server --version | cut -d" " -f1-3), $(runuser -u postgres -- /usr/lib/postgresql/*/bin/initdb --version) (run as postgres)"
echo "fresh: node $(.tools/node/bin/node --version), npm $(.tools/node/bin/npm --version), Debian node $(node --version)"
(cd tests/e2e && ../../.tools/node/bin/node --input-type=module -e "
    const { default: OpenAI } = await import(\"openai\");
    const { default: Anthropic } = await import(\"@anthropic-ai/sdk\");
    const o = JSON.parse((await import(\"node:fs\")).readFileSync(\"node_modules/openai/package.json\", \"utf8\")).version;
    const a = JSON.parse((await import(\"node:fs\")).readFileSync(\"node_modules/@anthropic-ai/sdk/package.json\", \"utf8\")).version;
    if (typeof OpenAI !== \"function\" || typeof Anthropic !== \"function\") process.exit(1);
    console.log(\"fresh: SDKs load: openai \" + o + \", @anthropic-ai/sdk \" + a);
")
a=$(t); out=$(bash deploy/install-deps.sh); b=$(t)
echo "fresh: second install-deps.sh: $out ($((b - a))s)"
case "$out" in *"already installed"*) ;; *) echo "fresh: second install-deps.sh was not a no-op"; exit 1 ;; esac
a=$(t); out=$(bash deploy/node.sh); b=$(t)
echo "fresh: second node.sh: $out ($((b - a))s)"
case "$out" in *"already in"*) ;; *) echo "fresh: second node.sh was not a no-op"; exit 1 ;; esac
'
[ "$do_build" = 1 ] && script+='a=$(t); bash deploy/build.sh; echo "fresh: build.sh took $(($(t) - a))s"
'
[ "$do_tests" = 1 ] && script+='a=$(t); bash tests/run.sh --fast; echo "fresh: tests/run.sh --fast took $(($(t) - a))s"
'

say "running the install path inside the chroot"
t0=$(date +%s)
if chroot "$target" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb CI=true /bin/bash -c "$script" </dev/null; then
    say "inside the chroot: all steps passed in $(($(date +%s) - t0))s"
    result=PASSED
else
    say "inside the chroot: a step failed after $(($(date +%s) - t0))s"
    result=FAILED
fi
cleanup
trap - EXIT
echo "fresh check: $result"
[ "$result" = PASSED ]
