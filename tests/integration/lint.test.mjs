// The banned-function check (tests/lint/banned-functions.sh) as a ctest test: the tree must be clean, and the
// check itself must catch what it claims to catch, so a broken scanner cannot pass the tree by accident.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const sourceDir = process.env.LEO_SOURCE_DIR ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const script = join(sourceDir, 'tests', 'lint', 'banned-functions.sh');

function runCheck(root) {
    const args = root ? [script, root] : [script];
    const r = spawnSync('bash', args, { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.error, undefined, `could not run ${script}: ${r.error}`);
    return r;
}

function withTree(files, fn) {
    const root = mkdtempSync(join(tmpdir(), 'leo-lint-'));
    try {
        for (const [path, text] of Object.entries(files)) {
            mkdirSync(dirname(join(root, path)), { recursive: true });
            writeFileSync(join(root, path), text);
        }
        fn(root);
    } finally {
        rmSync(root, { recursive: true, force: true });
    }
}

test('the source tree calls no banned function', () => {
    const r = runCheck();
    assert.equal(r.status, 0, `banned calls found:\n${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /no banned calls in \d+ file/);
});

test('every banned function is reported with file and line', () => {
    const src = [
        'void f(char *b, const char *s)',
        '{',
        '    sprintf(b, "%d", 1);',
        '    strcat(b, s);',
        '    strcpy(b, s);',
        '    strncpy (b, s, 2);',
        '    strtok(b, ",");',
        '    int n = atoi(s);',
        '    gets(b);',
        '}',
        '',
    ].join('\n');
    withTree({ 'gateway/bad.c': src, 'controlplane/api/worse.h': 'static int g(void) { return atoi("1"); }\n' }, (root) => {
        const r = runCheck(root);
        assert.equal(r.status, 1, r.stdout + r.stderr);
        const hits = r.stdout.trim().split('\n');
        assert.deepEqual(
            hits.map((l) => l.split(': ').slice(0, 2).join(': ')),
            [
                'controlplane/api/worse.h:1: banned function atoi',
                'gateway/bad.c:3: banned function sprintf',
                'gateway/bad.c:4: banned function strcat',
                'gateway/bad.c:5: banned function strcpy',
                'gateway/bad.c:6: banned function strncpy',
                'gateway/bad.c:7: banned function strtok',
                'gateway/bad.c:8: banned function atoi',
                'gateway/bad.c:9: banned function gets',
            ],
        );
    });
});

test('safe look-alikes, comments, strings and node_modules are not reported', () => {
    const src = [
        '/* sprintf(buf, "x") in a block comment',
        '   strcpy(a, b) still inside it */',
        '// atoi("1") in a line comment',
        'void f(char *b, const char *s, FILE *in)',
        '{',
        '    snprintf(b, 4, "%s", s);',
        '    fgets(b, 4, in);',
        '    strtok_r(b, ",", &s);',
        '    log_line("strcat(x, y) \\" sprintf(");',
        '    char q = \'"\'; my_atoi(s); widgets(b); /* gets(b) */',
        '}',
        '',
    ].join('\n');
    withTree({ 'common/ok.c': src, 'tests/e2e/node_modules/pkg/native.c': 'int x = atoi("1");\n' }, (root) => {
        const r = runCheck(root);
        assert.equal(r.status, 0, r.stdout + r.stderr);
        assert.match(r.stdout, /no banned calls in 1 file/);
    });
});
