/*
 * leoctl.test.mjs — the leoctl binary against a real leo-controlplane and a private PostgreSQL.
 *
 * One cluster and one daemon for the file; the daemon bootstraps the first owner from the environment. leoctl
 * runs as a child in its own session (no controlling terminal, so it can never wait on a password prompt) with
 * LEOCTL_CONFIG pointing into a temporary directory. The cases run in file order and share state: the owner's
 * login comes first, and the audit case looks for the actions the earlier cases caused. What leoctl prints is
 * checked against the API's own answers, fetched directly with the token from the session file.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

import { LineLog, bin } from './lib/harness.mjs';
import { startPostgres } from './lib/postgres.mjs';

const T = { timeout: 20000 };
const OWNER = { email: 'owner@leoctl.test', password: 'owner-password-leoctl-1' };
const MEMBER = { email: 'member@leoctl.test', password: 'member-password-leoctl-1' };
const SANITIZER_RE = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (Address|Undefined|Leak)/;

let pg;
let cp;
let cpStderr;
let base;
let tmp;
let config;

const childEnv = (extra) => ({
    ...process.env,
    ASAN_OPTIONS: process.env.ASAN_OPTIONS || 'abort_on_error=0:detect_leaks=1',
    UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || 'print_stacktrace=1',
    ...extra,
});

/** Runs `leoctl ARGS`: {code, stdout, stderr}; fails on a sanitizer report or a run longer than 15 s. */
function leoctl(args, { env = {}, cfg = config } = {}) {
    const e = childEnv({ LEOCTL_CONFIG: cfg, ...env });
    for (const k of ['LEOCTL_PASSWORD', 'LEOCTL_NEW_PASSWORD', 'LEOCTL_URL', 'LEOCTL_CREDENTIAL_SECRET']) {
        if (!(k in env)) delete e[k];
    }
    return new Promise((resolve, reject) => {
        /* detached: a new session without a controlling terminal, so /dev/tty cannot be opened */
        const child = execFile(bin('leoctl'), args, { env: e, timeout: 15000, detached: true },
            (err, stdout, stderr) => {
                if (SANITIZER_RE.test(stderr)) {
                    reject(new Error(`leoctl ${args.join(' ')}: sanitizer report:\n${stderr}`));
                    return;
                }
                if (err && typeof err.code !== 'number') {
                    reject(new Error(`leoctl ${args.join(' ')}: ${err.message}\n${stderr}`));
                    return;
                }
                resolve({ code: err ? err.code : 0, stdout, stderr });
            });
        child.stdin.end();
    });
}

/** Asserts exit 0 and returns stdout. */
async function ok(args, opts) {
    const r = await leoctl(args, opts);
    assert.equal(r.code, 0, `leoctl ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
    return r;
}

/** A direct request to the admin API (not through leoctl), for checking what leoctl did. */
async function api(method, p, { token, body } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(`${base}/admin/v1${p}`, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10000),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined };
}

const session = (cfg = config) => JSON.parse(fs.readFileSync(cfg, 'utf8'));

/** The rows of a leoctl table (header first), split on runs of two or more spaces. */
const rows = (stdout) => stdout.trimEnd().split('\n').map((l) => l.split(/ {2,}/));

before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'leoctl-'));
    config = path.join(tmp, 'conf', 'leoctl', 'session');
    pg = await startPostgres();
    await pg.psql('CREATE DATABASE leo;');
    cp = spawn(bin('leo-controlplane'), ['serve', '--listen', '127.0.0.1:0', '--db-pool', '2'], {
        env: childEnv({
            DATABASE_URL: `host=127.0.0.1 port=${pg.port} user=postgres dbname=leo connect_timeout=5`,
            LEO_KEY_HASH_SECRET: 'leoctl-integration-secret',
            LEO_MASTER_KEY: '7f'.repeat(32),
            LEO_BOOTSTRAP_OWNER_EMAIL: OWNER.email,
            LEO_BOOTSTRAP_OWNER_PASSWORD: OWNER.password,
        }),
        stdio: ['ignore', 'pipe', 'pipe'],
    });
    cp.exited = new Promise((resolve) => cp.on('exit', (code, signal) => resolve({ code, signal })));
    cpStderr = new LineLog(cp.stderr, 'controlplane stderr');
    new LineLog(cp.stdout, 'controlplane stdout');
    const line = await cpStderr.waitForJson((j) => /^listening on /.test(j.msg || ''),
        { timeoutMs: 20000, what: '"listening on" line' });
    base = `http://127.0.0.1:${/:(\d+)$/.exec(line.msg)[1]}`;
}, { timeout: 60000 });

after(async () => {
    try {
        if (cp && cp.exitCode === null) {
            cp.kill('SIGTERM');
            let timer;
            const info = await Promise.race([cp.exited, new Promise((resolve) => {
                timer = setTimeout(() => {
                    cp.kill('SIGKILL');
                    resolve({ code: null, signal: 'timeout' });
                }, 15000);
            })]).finally(() => clearTimeout(timer));
            assert.deepEqual(info, { code: 0, signal: null }, 'leo-controlplane exit after SIGTERM');
            assert.deepEqual(cpStderr.sanitizerReports ? cpStderr.sanitizerReports() : [], []);
        }
    } finally {
        if (pg) await pg.stop();
        if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    }
}, { timeout: 60000 });

/* State shared by the cases below. */
const S = {};

describe('usage', () => {
    it('an unknown command or option exits 2 with the usage on stderr; --help exits 0', T, async () => {
        const r = await leoctl(['frobnicate']);
        assert.equal(r.code, 2);
        assert.match(r.stderr, /^leoctl: unknown command "frobnicate"\n/);
        assert.match(r.stderr, /usage: leoctl /);
        assert.equal(r.stdout, '');

        const v = await leoctl(['keys', 'explode', '--tenant', 'x']);
        assert.equal(v.code, 2);
        assert.match(v.stderr, /unknown command "keys explode"/);

        const o = await leoctl(['keys', 'list', '--tenant', 'x', '--colour']);
        assert.equal(o.code, 2);
        assert.match(o.stderr, /unknown option "--colour" for keys list/);

        const a = await leoctl(['tenants', 'get']);
        assert.equal(a.code, 2);
        assert.match(a.stderr, /expected 1 argument, got 0/);

        const h = await ok(['keys', 'create', '--help']);
        assert.match(h.stdout, /^usage: leoctl keys create --tenant ID --name NAME/);
    });

    it('commands before login exit 1 and say how to log in; login without a password source exits 2', T,
        async () => {
            const r = await leoctl(['whoami']);
            assert.equal(r.code, 1);
            assert.equal(r.stderr, 'leoctl: not logged in: run leoctl login --url URL --email EMAIL\n');

            /* no LEOCTL_PASSWORD and no terminal to prompt on */
            const p = await leoctl(['login', '--url', base, '--email', OWNER.email]);
            assert.equal(p.code, 2);
            assert.match(p.stderr, /cannot read a password: set LEOCTL_PASSWORD/);
            assert.equal(fs.existsSync(config), false);
        });

    it('audit verify names the server-side command and exits 2', T, async () => {
        const r = await leoctl(['audit', 'verify']);
        assert.equal(r.code, 2);
        assert.match(r.stderr, /leo-controlplane audit verify/);
    });
});

describe('sessions', () => {
    it('a wrong password exits 1 with the API\'s message and status, and stores nothing', T, async () => {
        const direct = await api('POST', '/login', { body: { email: OWNER.email, password: 'not-the-password-1' } });
        assert.equal(direct.status, 401);
        const r = await leoctl(['login', '--url', base, '--email', OWNER.email],
            { env: { LEOCTL_PASSWORD: 'not-the-password-2' } });
        assert.equal(r.code, 1);
        assert.equal(r.stderr, `leoctl: ${direct.json.error.message} (HTTP 401)\n`);
        assert.equal(r.stdout, '');
        assert.equal(fs.existsSync(config), false);
    });

    it('login stores the token and URL in a 0600 file without the password, and prints neither', T, async () => {
        const r = await ok(['login', '--url', `${base}/admin/v1/`, '--email', OWNER.email],
            { env: { LEOCTL_PASSWORD: OWNER.password } });
        assert.match(r.stdout, new RegExp(`^logged in to ${base} as ${OWNER.email} \\(session expires `));
        const st = fs.statSync(config);
        assert.equal(st.mode & 0o777, 0o600);
        assert.equal(fs.statSync(path.dirname(config)).mode & 0o777, 0o700);
        const text = fs.readFileSync(config, 'utf8');
        assert.ok(!text.includes(OWNER.password), 'the session file holds the password');
        const s = session();
        assert.equal(s.url, base);
        assert.equal(s.email, OWNER.email);
        assert.match(s.token, /^leo_sess_/);
        assert.ok(!r.stdout.includes(s.token) && !r.stderr.includes(s.token), 'the token was printed');
        S.token = s.token;
        assert.equal((await api('GET', '/me', { token: S.token })).status, 200);
    });

    it('whoami shows the user, its role and the session; --json is the API\'s answer', T, async () => {
        const me = (await api('GET', '/me', { token: S.token })).json;
        const r = await ok(['whoami']);
        assert.equal(r.stdout.split('\n')[0], `${OWNER.email} (${me.user.id}) on ${base}`);
        assert.match(r.stdout, /^roles: owner$/m);
        assert.match(r.stdout, /^session expires: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/m);
        const j = await ok(['--json', 'whoami']);
        assert.deepEqual(JSON.parse(j.stdout), me);
    });

    it('a --url of another server is refused: the token is not sent there', T, async () => {
        const r = await leoctl(['whoami', '--url', 'http://127.0.0.1:9']);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /the session is for http:\/\/127\.0\.0\.1:\d+, not http:\/\/127\.0\.0\.1:9/);
    });
});

describe('tenants, keys, users', () => {
    it('tenants create derives the slug; list and get show it', T, async () => {
        const r = await ok(['tenants', 'create', 'Acme Inc.']);
        const [header, row] = rows(r.stdout);
        assert.deepEqual(header, ['ID', 'SLUG', 'NAME', 'STATUS', 'CREATED']);
        assert.equal(row[1], 'acme-inc');
        assert.equal(row[2], 'Acme Inc.');
        assert.equal(row[3], 'active');
        S.tenant = row[0];
        const t = await api('GET', `/tenants/${S.tenant}`, { token: S.token });
        assert.equal(t.status, 200);
        assert.equal(t.json.slug, 'acme-inc');

        await ok(['tenants', 'create', 'Globex', '--slug', 'globex-eu']);
        const list = rows((await ok(['tenants', 'list'])).stdout);
        assert.deepEqual(list.slice(1).map((x) => x[1]), ['acme-inc', 'globex-eu']);

        const g = await ok(['tenants', 'get', S.tenant, '--json']);
        assert.deepEqual(JSON.parse(g.stdout), t.json);

        const dup = await leoctl(['tenants', 'create', 'ACME inc']);
        assert.equal(dup.code, 1);
        assert.match(dup.stderr, /^leoctl: .+ \(HTTP 409\)\n$/);
    });

    it('keys create prints the secret once with a warning; the key has the models and expiry asked for', T,
        async () => {
            const r = await ok(['keys', 'create', '--tenant', S.tenant, '--name', 'production', '--models',
                'gpt-4o-mini,claude-3-haiku', '--expires', '30d']);
            const m = /^secret: (sk-leo-[A-Za-z0-9_-]{40})$/m.exec(r.stdout);
            assert.ok(m, r.stdout);
            assert.equal(r.stdout.split(m[1]).length, 2, 'the secret is printed exactly once');
            assert.match(r.stderr, /^leoctl: warning: the secret is shown only this once/);
            const id = /^created key ([0-9a-f-]{36}) "production" in tenant /m.exec(r.stdout)[1];
            S.key = { id, secret: m[1] };
            const k = (await api('GET', `/tenants/${S.tenant}/keys/${id}`, { token: S.token })).json;
            assert.deepEqual(k.allowed_models, ['gpt-4o-mini', 'claude-3-haiku']);
            const days = (Date.parse(k.expires_at) - Date.now()) / 86400000;
            assert.ok(days > 29.9 && days <= 30, `expires_at ${k.expires_at}`);
            assert.equal(k.last4, m[1].slice(-4));

            const j = await ok(['keys', 'create', '--tenant', S.tenant, '--name', 'batch', '--json']);
            const created = JSON.parse(j.stdout);
            assert.match(created.secret, /^sk-leo-[A-Za-z0-9_-]{40}$/);
            assert.equal(created.expires_at, null);
            S.key2 = created;
        });

    it('keys list is a table of masked keys without any secret', T, async () => {
        const r = await ok(['keys', 'list', '--tenant', S.tenant]);
        const [header, ...body] = rows(r.stdout);
        assert.deepEqual(header, ['ID', 'NAME', 'KEY', 'STATUS', 'CREATED']);
        assert.deepEqual(body.map((x) => x.slice(0, 4)), [
            [S.key.id, 'production', `sk-…${S.key.secret.slice(-4)}`, 'active'],
            [S.key2.id, 'batch', `sk-…${S.key2.secret.slice(-4)}`, 'active'],
        ]);
        assert.ok(!r.stdout.includes(S.key.secret) && !r.stdout.includes(S.key2.secret));
        assert.doesNotMatch(r.stdout, /sk-leo-/);
    });

    it('keys revoke shows the key revoked; revoking again is the API\'s 409', T, async () => {
        const r = await ok(['keys', 'revoke', '--tenant', S.tenant, S.key.id]);
        const [, row] = rows(r.stdout);
        assert.deepEqual(row.slice(0, 4), [S.key.id, 'production', `sk-…${S.key.secret.slice(-4)}`, 'revoked']);
        const k = (await api('GET', `/tenants/${S.tenant}/keys/${S.key.id}`, { token: S.token })).json;
        assert.equal(k.status, 'revoked');

        const again = await leoctl(['keys', 'revoke', '--tenant', S.tenant, S.key.id]);
        const direct = await api('POST', `/tenants/${S.tenant}/keys/${S.key.id}/revoke`, { token: S.token });
        assert.equal(direct.status, 409);
        assert.equal(again.code, 1);
        assert.equal(again.stderr, `leoctl: ${direct.json.error.message} (HTTP 409)\n`);

        const missing = await leoctl(['keys', 'revoke', '--tenant', S.tenant, '00000000-0000-0000-0000-000000000000']);
        assert.equal(missing.code, 1);
        assert.match(missing.stderr, /\(HTTP 404\)\n$/);
    });

    it('keys rotate prints the successor\'s secret once; the old key is revoked', T, async () => {
        const r = await ok(['keys', 'rotate', '--tenant', S.tenant, S.key2.id]);
        const m = /^secret: (sk-leo-[A-Za-z0-9_-]{40})$/m.exec(r.stdout);
        assert.ok(m, r.stdout);
        assert.notEqual(m[1], S.key2.secret);
        assert.match(r.stderr, /shown only this once/);
        const list = rows((await ok(['keys', 'list', '--tenant', S.tenant])).stdout).slice(1);
        const byId = Object.fromEntries(list.map((x) => [x[0], x]));
        assert.equal(byId[S.key2.id][3], 'revoked');
        const successor = list.find((x) => x[2] === `sk-…${m[1].slice(-4)}`);
        assert.ok(successor, r.stdout);
        assert.equal(successor[1], 'batch');
        assert.equal(successor[3], 'active');
    });

    it('users create makes a tenant member who can log in with leoctl', T, async () => {
        const r = await ok(['users', 'create', '--email', MEMBER.email, '--role', 'tenant_member', '--tenant',
            S.tenant], { env: { LEOCTL_NEW_PASSWORD: MEMBER.password } });
        const [, row] = rows(r.stdout);
        assert.equal(row[1], MEMBER.email);
        assert.equal(row[2], `tenant_member of tenant ${S.tenant}`);
        assert.ok(!r.stdout.includes(MEMBER.password) && !r.stderr.includes(MEMBER.password));

        const other = path.join(tmp, 'member-session');
        await ok(['login', '--url', base, '--email', MEMBER.email], { env: { LEOCTL_PASSWORD: MEMBER.password },
            cfg: other });
        const w = await ok(['whoami'], { cfg: other });
        assert.match(w.stdout, new RegExp(`^roles: tenant_member of tenant ${S.tenant}$`, 'm'));
        /* a member may not create keys: the API's 403 comes through */
        const denied = await leoctl(['keys', 'create', '--tenant', S.tenant, '--name', 'x'], { cfg: other });
        assert.equal(denied.code, 1);
        assert.match(denied.stderr, /^leoctl: .+ \(HTTP 403\)\n$/);
        await ok(['logout'], { cfg: other });

        const bad = await leoctl(['users', 'create', '--email', 'x@leoctl.test', '--role', 'tenant_member'],
            { env: { LEOCTL_NEW_PASSWORD: MEMBER.password } });
        assert.equal(bad.code, 1);
        assert.match(bad.stderr, /\(HTTP 400\)\n$/);
    });
});

describe('providers, deployments, models', () => {
    const SECRET = 'sk-leoctl-upstream-secret-9d2e71';

    it('providers create and list; add-credential takes the secret from the environment and shows it masked', T,
        async () => {
            const c = await ok(['--json', 'providers', 'create', 'up-1', '--type', 'openai', '--base-url',
                'https://upstream.example.test/v1']);
            S.provider = JSON.parse(c.stdout);
            assert.equal(S.provider.name, 'up-1');
            const list = await ok(['providers', 'list']);
            const table = rows(list.stdout);
            assert.deepEqual(table[0], ['ID', 'NAME', 'TYPE', 'BASE URL', 'STATUS', 'CREATED']);
            assert.deepEqual(table.find((r) => r[1] === 'up-1').slice(0, 5),
                [S.provider.id, 'up-1', 'openai', 'https://upstream.example.test/v1', 'enabled']);

            /* no secret source (no variable, no terminal): a usage error, nothing stored */
            const none = await leoctl(['providers', 'add-credential', S.provider.id, '--name', 'main']);
            assert.equal(none.code, 2);
            assert.match(none.stderr, /LEOCTL_CREDENTIAL_SECRET/);
            const add = await ok(['providers', 'add-credential', S.provider.id, '--name', 'main', '--weight', '2'],
                { env: { LEOCTL_CREDENTIAL_SECRET: SECRET } });
            assert.ok(!add.stdout.includes(SECRET) && !add.stderr.includes(SECRET), 'the secret is never printed');
            const row = rows(add.stdout)[1];
            assert.deepEqual(row.slice(1, 5), ['main', `sk-…${SECRET.slice(-4)}`, '2', 'enabled']);
            const creds = await ok(['--json', 'providers', 'credentials', S.provider.id]);
            const arr = JSON.parse(creds.stdout);
            assert.equal(arr.length, 1);
            assert.equal(arr[0].masked, `sk-…${SECRET.slice(-4)}`);
            assert.ok(!creds.stdout.includes(SECRET));
            const bad = await leoctl(['providers', 'add-credential', S.provider.id, '--name', 'x', '--weight', '0'],
                { env: { LEOCTL_CREDENTIAL_SECRET: SECRET } });
            assert.equal(bad.code, 2);
            const dup = await leoctl(['providers', 'add-credential', S.provider.id, '--name', 'main'],
                { env: { LEOCTL_CREDENTIAL_SECRET: SECRET } });
            assert.equal(dup.code, 1);
            assert.match(dup.stderr, /already has a credential with this name \(HTTP 409\)/);
        });

    it('deployments create and models create map a name to them; models list shows priorities and weights', T,
        async () => {
            const d1 = JSON.parse((await ok(['--json', 'deployments', 'create', '--provider', S.provider.id,
                '--model', 'gpt-up-a'])).stdout);
            const d2 = JSON.parse((await ok(['--json', 'deployments', 'create', '--provider', S.provider.id,
                '--model', 'gpt-up-b'])).stdout);
            const dl = rows((await ok(['deployments', 'list'])).stdout);
            assert.deepEqual(dl.find((r) => r[0] === d1.id).slice(1, 4), ['up-1', 'gpt-up-a', 'enabled']);
            const m = await ok(['models', 'create', 'smart', '--deployments', `${d1.id}*3,${d2.id}@1`]);
            assert.deepEqual(rows(m.stdout)[1].slice(1, 5),
                ['smart', 'weighted', 'up-1/gpt-up-a@0*3, up-1/gpt-up-b@1*1', 'enabled']);
            const list = JSON.parse((await ok(['--json', 'models', 'list'])).stdout);
            assert.deepEqual(list.map((x) => x.name), ['smart']);
            const usage = await leoctl(['models', 'create', 'other', '--deployments', 'x@y']);
            assert.equal(usage.code, 2);
            const unknown = await leoctl(['models', 'create', 'other', '--deployments', '00000000-0000-4000-8000-000000000000']);
            assert.equal(unknown.code, 1);
            assert.match(unknown.stderr, /deployment does not exist \(HTTP 400\)/);
        });
});

describe('provider test, overrides, cooldowns, usage', () => {
    const GOOD = 'sk-leoctl-probe-good-4c1e9a';
    let fake;

    before(async () => {
        /* a provider that accepts GOOD only */
        fake = http.createServer((req, res) => {
            const ok = req.headers.authorization === `Bearer ${GOOD}`;
            res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
            res.end(JSON.stringify(ok ? { data: [] } : { error: { message: 'invalid key' } }));
        });
        await new Promise((resolve) => fake.listen(0, '127.0.0.1', resolve));
    });
    after(async () => {
        if (fake) await new Promise((resolve) => fake.close(resolve));
    });

    const providerWith = async (name, secret) => {
        const p = JSON.parse((await ok(['--json', 'providers', 'create', name, '--type', 'openai', '--base-url',
            `http://127.0.0.1:${fake.address().port}/v1`])).stdout);
        const c = JSON.parse((await ok(['--json', 'providers', 'add-credential', p.id, '--name', 'k'],
            { env: { LEOCTL_CREDENTIAL_SECRET: secret } })).stdout);
        return [p, c];
    };

    it('providers test exits 0 when the key is accepted and 1 with the upstream\'s refusal', T, async () => {
        const [good] = await providerWith('probe-good', GOOD);
        const r = await ok(['providers', 'test', good.id]);
        assert.match(r.stdout, /^ok: HTTP 200 in \d+ ms \(credential k\)\n$/);
        const j = JSON.parse((await ok(['--json', 'providers', 'test', good.id])).stdout);
        assert.equal(j.ok, true);
        assert.equal(j.status, 200);
        const [bad] = await providerWith('probe-bad', 'sk-leoctl-probe-wrong-77aa01');
        const refused = await leoctl(['providers', 'test', bad.id]);
        assert.equal(refused.code, 1);
        assert.equal(refused.stdout, 'refused: HTTP 401 in ' + /in (\d+) ms/.exec(refused.stdout)[1] +
            ' ms (credential k): the provider answered 401: invalid key\n');
        assert.ok(!refused.stdout.includes('sk-leoctl-probe-wrong'));
        const missing = await leoctl(['providers', 'test']);
        assert.equal(missing.code, 2);
    });

    it('overrides set, list and clear; cooldowns set, list and clear', T, async () => {
        const [p, cred] = await providerWith('ovr-up', GOOD);
        const d = JSON.parse((await ok(['--json', 'deployments', 'create', '--provider', p.id, '--model', 'm-x'])).stdout);
        const m = JSON.parse((await ok(['--json', 'models', 'create', 'ovr-m', '--deployments', d.id])).stdout);
        const set = await ok(['overrides', 'set', '--model', m.id, '--deployment', d.id, '--disable', '--reason', 'incident']);
        const row = rows(set.stdout)[1];
        assert.deepEqual(row.slice(1, 5), ['ovr-m', 'ovr-up/m-x', 'disable', 'incident']);
        const pin = JSON.parse((await ok(['--json', 'overrides', 'set', '--model', m.id, '--deployment', d.id,
            '--weight', '5'])).stdout);
        assert.equal(pin.id, row[0]);
        assert.equal(pin.weight, 5);
        const list = rows((await ok(['overrides', 'list'])).stdout);
        assert.deepEqual(list[0], ['ID', 'MODEL', 'DEPLOYMENT', 'OVERRIDE', 'REASON', 'SET']);
        assert.deepEqual(list.find((x) => x[0] === pin.id).slice(1, 5), ['ovr-m', 'ovr-up/m-x', 'weight=5', '-']);
        for (const args of [['--model', m.id, '--deployment', d.id], ['--model', m.id, '--deployment', d.id, '--disable', '--weight', '1'],
            ['--model', m.id, '--deployment', d.id, '--weight', 'x']]) {
            assert.equal((await leoctl(['overrides', 'set', ...args])).code, 2, args.join(' '));
        }
        await ok(['overrides', 'clear', pin.id]);
        const again = await leoctl(['overrides', 'clear', pin.id]);
        assert.equal(again.code, 1);
        assert.match(again.stderr, /override not found \(HTTP 404\)/);

        const cd = rows((await ok(['cooldowns', 'set', p.id, cred.id, '--for', '10m', '--reason', 'rotating'])).stdout);
        assert.deepEqual(cd[0], ['PROVIDER', 'CREDENTIAL', 'CREDENTIAL ID', 'UNTIL', 'STATE', 'REASON']);
        assert.deepEqual([cd[1][0], cd[1][1], cd[1][2], cd[1][4], cd[1][5]], ['ovr-up', 'k', cred.id, 'active', 'rotating']);
        const listed = JSON.parse((await ok(['--json', 'cooldowns', 'list'])).stdout);
        const mine = listed.find((x) => x.credential_id === cred.id);
        const left = new Date(mine.until).getTime() - Date.now();
        assert.ok(left > 500 * 1000 && left <= 600 * 1000, `${left} ms left`);
        assert.equal((await leoctl(['cooldowns', 'set', p.id, cred.id, '--for', '10 minutes'])).code, 2);
        assert.equal((await leoctl(['cooldowns', 'set', p.id, cred.id])).code, 2);
        const past = await leoctl(['cooldowns', 'set', p.id, cred.id, '--until', '2001-01-01T00:00:00Z']);
        assert.equal(past.code, 1);
        assert.match(past.stderr, /until: must lie in the next 30 days \(HTTP 400\)/);
        await ok(['cooldowns', 'clear', p.id, cred.id]);
        assert.equal((await leoctl(['cooldowns', 'clear', p.id, cred.id])).code, 1);
    });

    it('usage report prints the rollups as a table, JSON or the API\'s CSV; filters reach the API', T, async () => {
        await pg.psql("INSERT INTO usage_rollups (hour, tenant, key_name, model, requests, errors, cache_hits," +
            " prompt_tokens, completion_tokens, cost_usd, saved_usd, latency_ms_sum) VALUES" +
            " ('2026-03-01T10:00:00Z', 'acme-inc', 'ci', 'gpt-x', 4, 1, 2, 40, 20, 0.5, 0.25, 100)," +
            " ('2026-03-02T11:00:00Z', 'acme-inc', 'ci', 'gpt-y', 6, 0, 0, 60, 30, 1.5, 0, 300);",
        { database: 'leo' });
        const day = rows((await ok(['usage', 'report', '--group-by', 'day', '--from', '2026-03-01T00:00:00Z',
            '--to', '2026-03-03T00:00:00Z'])).stdout);
        assert.deepEqual(day, [
            ['DAY', 'REQUESTS', 'ERRORS', 'CACHE HITS', 'PROMPT TOKENS', 'COMPLETION TOKENS', 'COST USD', 'SAVED USD',
                'AVG LATENCY MS'],
            ['2026-03-01', '4', '1', '2', '40', '20', '0.5', '0.25', '25'],
            ['2026-03-02', '6', '0', '0', '60', '30', '1.5', '0', '50'],
        ]);
        const byKey = rows((await ok(['usage', 'report', '--group-by', 'key', '--tenant', 'acme-inc', '--model', 'gpt-y'])).stdout);
        assert.deepEqual(byKey.map((r) => r.slice(0, 3)), [['TENANT', 'KEY', 'REQUESTS'], ['acme-inc', 'ci', '6']]);
        const j = JSON.parse((await ok(['--json', 'usage', 'report', '--group-by', 'model', '--tenant', 'acme-inc'])).stdout);
        assert.equal(j.group_by, 'model');
        assert.deepEqual(j.rows.map((r) => [r.model, r.requests]), [['gpt-x', 4], ['gpt-y', 6]]);
        const csv = await ok(['usage', 'report', '--group-by', 'tenant', '--csv']);
        const direct = await fetch(`${base}/admin/v1/usage?group_by=tenant&format=csv`,
            { headers: { Authorization: `Bearer ${session().token}` } });
        assert.equal(csv.stdout, await direct.text());
        assert.match(csv.stdout, /^tenant,requests,/);
        assert.equal((await leoctl(['usage', 'report', '--group-by', 'week'])).code, 2);
        assert.equal((await leoctl(['--json', 'usage', 'report', '--csv'])).code, 2);
    });
});

describe('audit and logout', () => {
    it('audit list shows the actions leoctl caused, newest first; --action and --limit filter', T, async () => {
        const r = await ok(['audit', 'list', '--limit', '200']);
        const [header, ...body] = rows(r.stdout);
        assert.deepEqual(header, ['ID', 'AT', 'ACTOR', 'ACTION', 'TARGET']);
        const actions = new Set(body.map((x) => x[3]));
        for (const a of ['session.login', 'tenant.create', 'key.create', 'key.revoke', 'key.rotate', 'user.create',
            'session.logout']) assert.ok(actions.has(a), `${a} missing from:\n${r.stdout}`);
        const ids = body.map((x) => Number(x[0]));
        assert.deepEqual(ids, [...ids].sort((a, b) => b - a));

        const one = rows((await ok(['audit', 'list', '--action', 'key.revoke', '--limit', '1'])).stdout);
        assert.equal(one.length, 2);
        assert.equal(one[1][3], 'key.revoke');
        assert.equal(one[1][4], `key:${S.key.id}`);

        const j = JSON.parse((await ok(['audit', 'list', '--action', 'tenant.create', '--json'])).stdout);
        assert.deepEqual(j.map((e) => e.details.slug).sort(), ['acme-inc', 'globex-eu']);

        const lim = await leoctl(['audit', 'list', '--limit', '0']);
        assert.equal(lim.code, 2);
    });

    it('logout revokes the session and removes the file', T, async () => {
        const r = await ok(['logout']);
        assert.equal(r.stdout, `logged out of ${base}\n`);
        assert.equal(fs.existsSync(config), false);
        assert.equal((await api('GET', '/me', { token: S.token })).status, 401);
        const w = await leoctl(['whoami']);
        assert.equal(w.code, 1);
        assert.match(w.stderr, /not logged in/);
    });
});
