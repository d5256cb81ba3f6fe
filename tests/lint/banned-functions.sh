#!/usr/bin/env bash
# Fails when C code calls a banned libc function.
#
#   tests/lint/banned-functions.sh [ROOT]
#
# Scans every .c and .h file under ROOT/common, ROOT/gateway, ROOT/controlplane and ROOT/tests (ROOT defaults to
# the repository root; node_modules is skipped) for calls of sprintf, strcat, strcpy, strncpy, strtok, atoi and
# gets. Their safe replacements: snprintf or leo_buf_addf, leo_buf_add, memcpy with a known length, strtol with an
# end pointer, a leo_str scanner. A name only counts as a call when it stands alone (snprintf, vsnprintf, fgets
# and strtok_r do not match) and is followed by "(". Comments and string literals are blanked out before
# matching; the scanner knows /* */, // and quoted strings with escapes, which covers this code base, not every
# corner of C (a quote inside a character constant like '"' is handled, trigraphs and line splices are not).
#
# Prints one "file:line: banned function NAME: text" line per hit and exits 1 when there is any, 0 otherwise.
set -euo pipefail

root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
[ -d "$root" ] || { echo "banned-functions.sh: no directory \"$root\"" >&2; exit 2; }
cd "$root"

dirs=()
for d in common gateway controlplane tests; do
    [ -d "$d" ] && dirs+=("$d")
done
[ "${#dirs[@]}" -gt 0 ] || { echo "banned-functions.sh: none of common/ gateway/ controlplane/ tests/ in $root" >&2; exit 2; }

files=$(find "${dirs[@]}" -name node_modules -prune -o -type f \( -name '*.c' -o -name '*.h' \) -print | LC_ALL=C sort)
nfiles=$(printf '%s' "$files" | grep -c . || true)

hits=$(printf '%s\n' "$files" | grep . | tr '\n' '\0' | xargs -0 -r awk '
    FNR == 1 { in_block = 0 }
    {
        # Blank out comments and the contents of string and character literals, keeping the rest.
        line = $0; out = ""; n = length(line); i = 1
        while (i <= n) {
            c = substr(line, i, 1); c2 = substr(line, i, 2)
            if (in_block) {
                if (c2 == "*/") { in_block = 0; out = out "  "; i += 2 } else { out = out " "; i++ }
            } else if (c2 == "/*") {
                in_block = 1; out = out "  "; i += 2
            } else if (c2 == "//") {
                break
            } else if (c == "\"" || c == "\047") {
                q = c; out = out c; i++
                while (i <= n) {
                    c = substr(line, i, 1)
                    if (c == "\\") { out = out "  "; i += 2; continue }
                    if (c == q) { out = out c; i++; break }
                    out = out " "; i++
                }
            } else {
                out = out c; i++
            }
        }
        rest = " " out
        while (match(rest, /[^A-Za-z0-9_](sprintf|strcat|strcpy|strncpy|strtok|atoi|gets)[ \t]*\(/)) {
            name = substr(rest, RSTART + 1, RLENGTH - 1)
            sub(/[ \t]*\($/, "", name)
            text = $0; sub(/^[ \t]+/, "", text)
            printf "%s:%d: banned function %s: %s\n", FILENAME, FNR, name, text
            rest = "(" substr(rest, RSTART + RLENGTH)
        }
    }')

if [ -n "$hits" ]; then
    printf '%s\n' "$hits"
    echo "banned-functions.sh: $(printf '%s\n' "$hits" | wc -l) banned call(s) in $nfiles file(s) under ${dirs[*]}" >&2
    exit 1
fi
echo "banned-functions.sh: no banned calls in $nfiles file(s) under ${dirs[*]}"
