/*
 * controlplane.test.mjs — leo-controlplane against a private PostgreSQL (lib/postgres.mjs), over real sockets.
 *
 * One cluster per run, empty at the start. Three databases in it: `leo` for the daemon (which migrates it from
 * empty at start and bootstraps the first owner from the environment), `mig1` and `mig2` for the migration
 * cases. The cases run in file order and share the daemon: setup cases create the tenants, users and keys the
 * later ones use. The audit-tampering cases come last, because they break the chain on purpose.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

import { LineLog, bin, hashKey, recordedHeader, sourceDir, startMock } from './lib/harness.mjs';
import { startPostgres } from './lib/postgres.mjs';

const T = { timeout: 20000 };
const KEY_HASH_SECRET = 'controlplane-integration-secret-5e1f';
const OWNER = { email: 'owner@leo.test', password: 'owner-password-0001' };
const PASSWORD = 'member-password-0001';
const LOCK_KEY = '30510826535609200'; /* LEO_MIGRATE_LOCK_KEY */
/* the master key provider credentials are sealed under (base64 of 32 bytes) */
const MASTER_KEY = crypto.randomBytes(32).toString('base64');
const MIGRATIONS = fs.readdirSync(path.join(sourceDir, 'migrations')).filter((f) => f.endsWith('.sql')).sort();

let pg;
let cp;
let port;

/* ------------------------------------------------------------------------------------------------------------
 * Processes
 * ------------------------------------------------------------------------------------------------------------ */

const SANITIZER_RE = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (Address|Undefined|Leak)/;
const childEnv = (extra) => ({
    ...process.env,
    ASAN_OPTIONS: process.env.ASAN_OPTIONS || 'abort_on_error=0:detect_leaks=1',
    UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || 'print_stacktrace=1',
    LEO_KEY_HASH_SECRET: KEY_HASH_SECRET,
    ...extra,
});

const running = new Set();
process.on('exit', () => {
    for (const p of running) {
        try {
            p.kill('SIGKILL');
        } catch {
            /* gone */
        }
    }
});

/** Runs `leo-controlplane ARGS` to its end: {code, stdout, stderr}; fails on sanitizer reports. */
function cli(args, { database = 'leo', env = {}, input, timeoutMs = 15000 } = {}) {
    return new Promise((resolve, reject) => {
        const child = execFile(bin('leo-controlplane'), args, {
            env: childEnv({ DATABASE_URL: pg.conninfoFor(database), ...env }),
            timeout: timeoutMs,
        }, (err, stdout, stderr) => {
            if (SANITIZER_RE.test(stderr)) {
                reject(new Error(`leo-controlplane ${args.join(' ')}: sanitizer report:\n${stderr}`));
                return;
            }
            if (err && typeof err.code !== 'number') {
                reject(err);
                return;
            }
            resolve({ code: err ? err.code : 0, stdout, stderr });
        });
        child.stdin.end(input === undefined ? '' : input);
    });
}

/** Starts `leo-controlplane serve` on a free port; resolves once it logs "listening on". */
async function startDaemon(env = {}) {
    const proc = spawn(bin('leo-controlplane'), ['serve', '--listen', '127.0.0.1:0', '--db-pool', '3'], {
        env: childEnv({ DATABASE_URL: pg.conninfoFor('leo'), ...env }),
        stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(proc);
    proc.on('error', (e) => process.stderr.write(`cannot start ${bin('leo-controlplane')}: ${e.message}\n`));
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
        running.delete(proc);
        resolve({ code, signal });
    }));
    const stderr = new LineLog(proc.stderr, 'controlplane stderr');
    const stdout = new LineLog(proc.stdout, 'controlplane stdout');
    const line = await stderr.waitForJson((j) => /^listening on /.test(j.msg || ''), {
        timeoutMs: 20000,
        what: '"listening on" line',
    });
    return {
        proc,
        stderr,
        stdout,
        exited,
        port: Number(/:(\d+)$/.exec(line.msg)[1]),
        async stop() {
            proc.kill('SIGTERM');
            let timer;
            const info = await Promise.race([exited, new Promise((_, reject) => {
                timer = setTimeout(() => {
                    proc.kill('SIGKILL');
                    reject(new Error('leo-controlplane did not stop within 15 s:\n' + stderr.tail(20)));
                }, 15000);
            })]).finally(() => clearTimeout(timer));
            await Promise.all([endOf(proc.stderr), endOf(proc.stdout)]);
            const reports = [...stderr.sanitizerReports(), ...stdout.sanitizerReports()];
            if (reports.length) throw new Error('sanitizer reports:\n' + stderr.tail(80));
            return info;
        },
    };
}

function endOf(stream) {
    if (stream.readableEnded || stream.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
        const t = setTimeout(resolve, 5000);
        stream.once('close', () => {
            clearTimeout(t);
            resolve();
        });
    });
}

/* ------------------------------------------------------------------------------------------------------------
 * HTTP
 * ------------------------------------------------------------------------------------------------------------ */

/**
 * One request to the admin API on a fresh connection. body: an object (sent as JSON) or a raw string.
 * localAddress picks the client address (any 127.0.0.0/8 address reaches the daemon on 127.0.0.1).
 */
function api(method, p, { token, body, headers = {}, localAddress } = {}) {
    return new Promise((resolve, reject) => {
        const h = { ...headers };
        if (token) h.Authorization = `Bearer ${token}`;
        let payload;
        if (body !== undefined) {
            payload = typeof body === 'string' ? body : JSON.stringify(body);
            h['Content-Type'] = 'application/json';
        }
        const req = http.request({ host: '127.0.0.1', port, method, path: p, headers: h, agent: false, localAddress });
        const timer = setTimeout(() => req.destroy(new Error(`${method} ${p}: no answer within 10 s`)), 10000);
        req.on('error', (e) => {
            clearTimeout(timer);
            reject(e);
        });
        req.on('response', (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => {
                clearTimeout(timer);
                const text = Buffer.concat(chunks).toString('utf8');
                let json;
                try {
                    json = text ? JSON.parse(text) : undefined;
                } catch {
                    json = undefined;
                }
                resolve({ status: res.statusCode, headers: res.headers, text, json });
            });
        });
        req.end(payload);
    });
}

/** Asserts the error shape and returns the error object. */
function assertError(r, status, { code, param } = {}) {
    assert.equal(r.status, status, `expected ${status}, got ${r.status}: ${r.text}`);
    assert.ok(r.json && r.json.error, `no error object: ${r.text}`);
    const e = r.json.error;
    assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(typeof e.message, 'string');
    assert.ok(e.message.length > 0);
    if (code !== undefined) assert.equal(e.code, code, r.text);
    if (param !== undefined) assert.equal(e.param, param, r.text);
    return e;
}

async function login(email, password, opts = {}) {
    const r = await api('POST', '/admin/v1/login', { body: { email, password }, ...opts });
    assert.equal(r.status, 200, `login ${email}: ${r.text}`);
    return r.json.token;
}

async function createUser(token, email, role, tenantId) {
    const body = { email, password: PASSWORD, role };
    if (tenantId) body.tenant_id = tenantId;
    const r = await api('POST', '/admin/v1/users', { token, body });
    assert.equal(r.status, 201, `create ${email}: ${r.text}`);
    return r.json;
}

async function createKey(token, tenantId, body = { name: 'k' }) {
    const r = await api('POST', `/admin/v1/tenants/${tenantId}/keys`, { token, body });
    assert.equal(r.status, 201, r.text);
    return r.json;
}

const sql = (s) => pg.query(s, { database: 'leo' });
const q = (s) => `'${s.replace(/'/g, "''")}'`; /* a literal for the test's own psql statements */

/* ------------------------------------------------------------------------------------------------------------ */

before(async () => {
    pg = await startPostgres();
    pg.conninfoFor = (db) => `host=127.0.0.1 port=${pg.port} user=postgres dbname=${db} connect_timeout=5`;
    await pg.psql('CREATE DATABASE leo; CREATE DATABASE mig1; CREATE DATABASE mig2;');
    cp = await startDaemon({
        LEO_BOOTSTRAP_OWNER_EMAIL: OWNER.email.toUpperCase(),
        LEO_BOOTSTRAP_OWNER_PASSWORD: OWNER.password,
        LEO_MASTER_KEY: MASTER_KEY,
    });
    port = cp.port;
}, { timeout: 60000 });

after(async () => {
    try {
        if (cp) {
            const info = await cp.stop();
            assert.deepEqual(info, { code: 0, signal: null }, 'leo-controlplane exit after SIGTERM');
        }
    } finally {
        if (pg) await pg.stop();
    }
}, { timeout: 60000 });

describe('migrations', () => {
    it('migrate applies every migration from empty, recorded with its checksum; a second run is a no-op', T, async () => {
        const first = await cli(['migrate'], { database: 'mig1' });
        assert.equal(first.code, 0, first.stderr);
        const applied = first.stdout.split('\n').filter((l) => l.startsWith('applied 0'));
        assert.deepEqual(applied, MIGRATIONS.map((f) => `applied ${f.replace(/\.sql$/, '')}`));
        const rows = await pg.query('SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version',
            { database: 'mig1' });
        assert.deepEqual(rows.map((r) => [r.version, r.name, r.checksum]), MIGRATIONS.map((f) => {
            const m = /^(\d{4})_(.*)\.sql$/.exec(f);
            const sum = crypto.createHash('sha256').update(fs.readFileSync(path.join(sourceDir, 'migrations', f)))
                .digest('hex');
            return [Number(m[1]), m[2], sum];
        }));

        const second = await cli(['migrate'], { database: 'mig1' });
        assert.equal(second.code, 0, second.stderr);
        assert.match(second.stdout, /^nothing to apply/m);
        assert.doesNotMatch(second.stdout, /^applied 0/m);
        assert.equal(second.stderr, '');
        const again = await pg.query('SELECT version, applied_at FROM schema_migrations ORDER BY version',
            { database: 'mig1' });
        assert.deepEqual(again, rows.map((r) => ({ version: r.version, applied_at: r.applied_at })));
    });

    it('two concurrent migrate runs queue on the advisory lock: both succeed, each migration is applied once', T,
        async () => {
            /* hold the lock so that both runs are certainly waiting for it at the same time */
            const holder = spawn(path.join(pg.bin, 'psql'), ['-X', '-q', '-A', '-t', '-h', pg.socketDir, '-p',
                String(pg.port), '-U', 'postgres', '-d', 'mig2'], { stdio: ['pipe', 'pipe', 'pipe'] });
            running.add(holder);
            holder.on('exit', () => running.delete(holder));
            const held = new LineLog(holder.stdout, 'psql');
            holder.stdin.write(`SELECT 'locked', pg_advisory_lock(${LOCK_KEY});\n`);
            await held.waitFor((l) => l.text.startsWith('locked'), { timeoutMs: 10000, what: 'lock' });

            const runs = [cli(['migrate'], { database: 'mig2' }), cli(['migrate'], { database: 'mig2' })];
            const deadline = Date.now() + 10000;
            for (;;) {
                const [{ n }] = await pg.query("SELECT count(*)::int AS n FROM pg_locks l JOIN pg_stat_activity a " +
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = 'mig2'",
                { database: 'mig2' });
                if (n === 2) break;
                assert.ok(Date.now() < deadline, `both runs should be waiting for the lock, ${n} are`);
                await new Promise((r) => setTimeout(r, 25));
            }
            holder.stdin.end(`SELECT pg_advisory_unlock(${LOCK_KEY});\n`);
            const results = await Promise.all(runs);
            for (const r of results) assert.equal(r.code, 0, r.stderr);
            const applied = results.map((r) => r.stdout.split('\n').filter((l) => l.startsWith('applied 0')).length);
            assert.deepEqual(applied.sort(), [0, MIGRATIONS.length], results.map((r) => r.stdout).join('\n'));
            const [{ n, distinct }] = await pg.query(
                'SELECT count(*)::int AS n, count(DISTINCT version)::int AS distinct FROM schema_migrations',
                { database: 'mig2' });
            assert.deepEqual([n, distinct], [MIGRATIONS.length, MIGRATIONS.length]);
        });

    it('a migration changed after it was applied is refused', T, async () => {
        await pg.psql("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 2;",
            { database: 'mig1' });
        const r = await cli(['migrate'], { database: 'mig1' });
        assert.equal(r.code, 1);
        assert.match(r.stderr, /migration 0002_\w+ was changed after it was applied/);
    });

    it('the daemon migrated its empty database at start and created the first owner from the environment', T,
        async () => {
            assert.ok(cp.stderr.json((j) => /database schema is up to date \(\d+ migrations, \d+ applied now\)/
                .test(j.msg || '') && j.msg.includes(`${MIGRATIONS.length} applied now`)).length === 1,
            cp.stderr.tail(10));
            const users = await sql('SELECT u.email, m.role, m.tenant_id FROM users u JOIN memberships m ' +
                'ON m.user_id = u.id');
            assert.deepEqual(users, [{ email: OWNER.email, role: 'owner', tenant_id: null }]);
            const r = await api('GET', '/admin/v1/health');
            assert.equal(r.status, 200);
            assert.equal(r.json.status, 'ok');
        });
});

describe('create-owner', () => {
    it('creates an owner with the password from LEO_OWNER_PASSWORD or stdin, once per email', T, async () => {
        const a = await cli(['create-owner', '--email', 'second-owner@leo.test'],
            { env: { LEO_OWNER_PASSWORD: 'second-owner-password' } });
        assert.equal(a.code, 0, a.stderr);
        const b = await cli(['create-owner', '--email', 'third-owner@leo.test'], { input: 'third-owner-password\n' });
        assert.equal(b.code, 0, b.stderr);
        await login('third-owner@leo.test', 'third-owner-password');
        const again = await cli(['create-owner', '--email', 'second-owner@leo.test'],
            { env: { LEO_OWNER_PASSWORD: 'second-owner-password' } });
        assert.equal(again.code, 1);
        assert.match(again.stderr, /already exists/);
        const short = await cli(['create-owner', '--email', 'short@leo.test'], { input: 'short\n' });
        assert.equal(short.code, 2);
        assert.match(short.stderr, /at least 12 characters/);
        const rows = await sql("SELECT count(*)::int AS n FROM memberships WHERE role = 'owner'");
        assert.equal(rows[0].n, 3);
    });
});

/* State shared by the cases below. */
const S = { tokens: {}, users: {} };

describe('login and sessions', () => {
    it('signs in with email and password and returns an opaque token stored only as a hash', T, async () => {
        const r = await api('POST', '/admin/v1/login', { body: { email: 'Owner@LEO.test', password: OWNER.password } });
        assert.equal(r.status, 200, r.text);
        assert.match(r.json.token, /^leo_sess_[A-Za-z0-9_-]{43}$/);
        const ttl = Date.parse(r.json.expires_at) - Date.now();
        assert.ok(ttl > 11.9 * 3600e3 && ttl <= 12 * 3600e3, `expires_at ${r.json.expires_at}`);
        assert.equal(r.json.user.email, OWNER.email);
        assert.equal(r.headers['cache-control'], 'no-store');
        S.tokens.owner = r.json.token;
        const me = await api('GET', '/admin/v1/me', { token: r.json.token });
        assert.equal(me.status, 200, me.text);
        assert.equal(me.json.user.email, OWNER.email);
        assert.deepEqual(me.json.memberships, [{ role: 'owner', tenant_id: null }]);
        const stored = await sql('SELECT encode(token_hash, \'hex\') AS h FROM sessions');
        assert.ok(stored.length >= 1);
        const dump = await pg.psql('SELECT string_agg(s::text, \'\') FROM sessions s;', { database: 'leo' });
        assert.ok(!dump.includes(r.json.token) && !dump.includes(r.json.token.slice(9)), 'the token is not stored');
    });

    it('refuses a wrong password and an unknown email with the same answer', T, async () => {
        const wrong = await api('POST', '/admin/v1/login', { body: { email: OWNER.email, password: 'not-the-password' } });
        const unknown = await api('POST', '/admin/v1/login', { body: { email: 'nobody@leo.test', password: 'x' } });
        const e1 = assertError(wrong, 401, { code: 'invalid_credentials', param: null });
        const e2 = assertError(unknown, 401, { code: 'invalid_credentials', param: null });
        assert.deepEqual(e1, e2);
        assert.equal(e1.type, 'authentication_error');
    });

    it('rejects malformed login bodies naming the field', T, async () => {
        assertError(await api('POST', '/admin/v1/login', { body: { password: 'x' } }), 400,
            { code: 'missing_field', param: 'email' });
        assertError(await api('POST', '/admin/v1/login', { body: { email: OWNER.email } }), 400,
            { code: 'missing_field', param: 'password' });
        assertError(await api('POST', '/admin/v1/login', { body: { email: OWNER.email, password: 5 } }), 400,
            { code: 'invalid_type', param: 'password' });
        assertError(await api('POST', '/admin/v1/login', { body: { email: 'x', password: 'y', extra: 1 } }), 400,
            { code: 'unknown_field', param: 'extra' });
        assertError(await api('POST', '/admin/v1/login', { body: '{"email": ' }), 400, { code: 'invalid_json' });
        assertError(await api('POST', '/admin/v1/login', { body: '[1]' }), 400, { code: 'invalid_json' });
        assertError(await api('POST', '/admin/v1/login', { body: '{"email":"a@b.c","email":"d@e.f","password":"p"}' }),
            400, { code: 'invalid_json' });
    });

    it('throttles guessing: after 5 failures per email and address in 15 minutes, 429 with Retry-After', T,
        async () => {
            await createUser(S.tokens.owner, 'throttled@leo.test', 'viewer');
            for (let i = 0; i < 5; i++) {
                const body = { email: 'throttled@leo.test', password: `guess-${i}` };
                const r = await api('POST', '/admin/v1/login', { body });
                assertError(r, 401, { code: 'invalid_credentials' });
            }
            /* the right password does not help while throttled */
            const blocked = await api('POST', '/admin/v1/login', { body: { email: 'throttled@leo.test', password: PASSWORD } });
            assertError(blocked, 429, { code: 'too_many_attempts' });
            assert.equal(blocked.json.error.type, 'rate_limit_error');
            const retry = Number(blocked.headers['retry-after']);
            assert.ok(Number.isInteger(retry) && retry > 890 && retry <= 900, `Retry-After ${blocked.headers['retry-after']}`);
            const [{ n }] = await sql("SELECT count(*)::int AS n FROM login_failures WHERE email = 'throttled@leo.test'");
            assert.equal(n, 5, 'attempts while blocked are not counted');

            /* another client address is counted apart */
            await login('throttled@leo.test', PASSWORD, { localAddress: '127.0.0.2' });

            /* once the failures are older than 15 minutes, the pair may sign in, which clears its failures */
            await pg.psql("UPDATE login_failures SET at = at - interval '16 minutes' WHERE email = 'throttled@leo.test';",
                { database: 'leo' });
            await login('throttled@leo.test', PASSWORD);
            const [{ left }] = await sql("SELECT count(*)::int AS left FROM login_failures WHERE email = 'throttled@leo.test'" +
                " AND remote_addr = '127.0.0.1'");
            assert.equal(left, 0);
        });

    it('logout revokes the session: the token then gets 401', T, async () => {
        const token = await login(OWNER.email, OWNER.password);
        assert.equal((await api('GET', '/admin/v1/me', { token })).status, 200);
        const out = await api('POST', '/admin/v1/logout', { token });
        assert.equal(out.status, 204, out.text);
        assertError(await api('GET', '/admin/v1/me', { token }), 401, { code: 'invalid_session' });
        assertError(await api('POST', '/admin/v1/logout', { token }), 401, { code: 'invalid_session' });
        assert.equal((await api('GET', '/admin/v1/me', { token: S.tokens.owner })).status, 200, 'other sessions live on');
    });

    it('expired sessions, revoked sessions and disabled users get 401', T, async () => {
        await createUser(S.tokens.owner, 'expiring@leo.test', 'viewer');
        const token = await login('expiring@leo.test', PASSWORD);
        assert.equal((await api('GET', '/admin/v1/tenants', { token })).status, 200);
        await pg.psql("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = " +
            "(SELECT id FROM users WHERE email = 'expiring@leo.test');", { database: 'leo' });
        assertError(await api('GET', '/admin/v1/tenants', { token }), 401, { code: 'invalid_session' });

        const t2 = await login('expiring@leo.test', PASSWORD);
        await pg.psql("UPDATE sessions SET revoked_at = now() WHERE user_id = " +
            "(SELECT id FROM users WHERE email = 'expiring@leo.test');", { database: 'leo' });
        assertError(await api('GET', '/admin/v1/me', { token: t2 }), 401, { code: 'invalid_session' });

        const t3 = await login('expiring@leo.test', PASSWORD);
        await pg.psql("UPDATE users SET disabled = true WHERE email = 'expiring@leo.test';", { database: 'leo' });
        assertError(await api('GET', '/admin/v1/me', { token: t3 }), 401, { code: 'invalid_session' });
        assertError(await api('POST', '/admin/v1/login', { body: { email: 'expiring@leo.test', password: PASSWORD } }),
            401, { code: 'invalid_credentials' });

        assertError(await api('GET', '/admin/v1/me'), 401, { code: 'missing_session' });
        assertError(await api('GET', '/admin/v1/me', { headers: { Authorization: 'Basic abc' } }), 401,
            { code: 'missing_session' });
        assertError(await api('GET', '/admin/v1/me', { token: 'leo_sess_' + 'A'.repeat(43) }), 401,
            { code: 'invalid_session' });
    });
});

describe('roles', () => {
    const ROLES = ['owner', 'admin', 'operator', 'viewer', 'tenant_admin', 'tenant_member'];

    it('setup: two tenants, one user per role (tenant roles in tenant A), a key in each tenant', T, async () => {
        const owner = S.tokens.owner;
        for (const slug of ['tenant-a', 'tenant-b']) {
            const r = await api('POST', '/admin/v1/tenants', { token: owner, body: { slug, name: slug.toUpperCase() } });
            assert.equal(r.status, 201, r.text);
            S[slug] = r.json;
        }
        const A = S['tenant-a'].id;
        for (const role of ROLES.slice(1)) {
            S.users[role] = await createUser(owner, `${role}@leo.test`, role, role.startsWith('tenant_') ? A : undefined);
        }
        S.users.tenant_admin_b = await createUser(owner, 'tenant_admin_b@leo.test', 'tenant_admin', S['tenant-b'].id);
        S.tokens.owner_matrix = await login(OWNER.email, OWNER.password);
        for (const role of [...ROLES.slice(1), 'tenant_admin_b']) S.tokens[role] = await login(`${role}@leo.test`, PASSWORD);
        S.keyA = await createKey(owner, A, { name: 'key-a' });
        S.keyB = await createKey(owner, S['tenant-b'].id, { name: 'key-b' });
    });

    let seq = 0;
    const uniq = (tag) => `${tag}-${++seq}`;
    const A = () => S['tenant-a'].id;
    const createProvider = async () => {
        const r = await api('POST', '/admin/v1/providers', {
            token: S.tokens.owner, body: { name: uniq('prov'), type: 'openai', base_url: 'http://127.0.0.1:9/v1' },
        });
        assert.equal(r.status, 201, r.text);
        return r.json.id;
    };
    const createDeployment = async () => {
        const r = await api('POST', '/admin/v1/deployments', {
            token: S.tokens.owner, body: { provider_id: await createProvider(), model: 'upstream-model' },
        });
        assert.equal(r.status, 201, r.text);
        return r.json.id;
    };
    const createModel = async () => (await createModelWith())[0];
    /* a model and its one deployment: [model id, deployment id] */
    const createModelWith = async () => {
        const d = await createDeployment();
        const r = await api('POST', '/admin/v1/models', {
            token: S.tokens.owner, body: { name: uniq('model'), deployments: [{ deployment_id: d }] },
        });
        assert.equal(r.status, 201, r.text);
        return [r.json.id, d];
    };
    const inviteToA = async () => {
        const r = await api('POST', '/admin/v1/invitations', {
            token: S.tokens.owner, body: { email: `${uniq('inv')}@leo.test`, role: 'tenant_member', tenant_id: A() },
        });
        assert.equal(r.status, 201, r.text);
        return r.json;
    };
    const createCredential = async () => {
        const p = await createProvider();
        const r = await api('POST', `/admin/v1/providers/${p}/credentials`, {
            token: S.tokens.owner, body: { name: 'c', secret: 'sk-matrix-secret-0002' },
        });
        assert.equal(r.status, 201, r.text);
        return [p, r.json.id];
    };

    /* Every endpoint, how to call it (prepare may create what the call consumes), and the roles allowed. */
    const ENDPOINTS = [
        { name: 'GET /health', allow: ROLES, public: true, call: () => ['GET', '/admin/v1/health'] },
        { name: 'GET /openapi.json', allow: ROLES, public: true, call: () => ['GET', '/admin/v1/openapi.json'] },
        {
            name: 'POST /login',
            allow: ROLES,
            public: true,
            call: () => ['POST', '/admin/v1/login', { email: OWNER.email, password: OWNER.password }],
        },
        { name: 'GET /me', allow: ROLES, call: () => ['GET', '/admin/v1/me'] },
        { name: 'GET /tenants', allow: ROLES, call: () => ['GET', '/admin/v1/tenants'] },
        {
            name: 'POST /tenants',
            allow: ['owner', 'admin'],
            call: () => ['POST', '/admin/v1/tenants', { slug: uniq('t'), name: 'n' }],
        },
        { name: 'GET /tenants/{A}', allow: ROLES, call: () => ['GET', `/admin/v1/tenants/${A()}`] },
        {
            name: 'PATCH /tenants/{A}',
            allow: ['owner', 'admin'],
            call: () => ['PATCH', `/admin/v1/tenants/${A()}`, { name: 'TENANT-A' }],
        },
        {
            name: 'GET /users',
            allow: ['owner', 'admin', 'operator', 'viewer', 'tenant_admin'],
            call: () => ['GET', '/admin/v1/users'],
        },
        {
            name: 'POST /users (tenant_member of A)',
            allow: ['owner', 'admin', 'tenant_admin'],
            call: () => ['POST', '/admin/v1/users',
                { email: `${uniq('m')}@leo.test`, password: PASSWORD, role: 'tenant_member', tenant_id: A() }],
        },
        {
            name: 'POST /users (viewer)',
            allow: ['owner', 'admin'],
            call: () => ['POST', '/admin/v1/users', { email: `${uniq('v')}@leo.test`, password: PASSWORD, role: 'viewer' }],
        },
        {
            name: 'POST /users (owner)',
            allow: ['owner'],
            call: () => ['POST', '/admin/v1/users', { email: `${uniq('o')}@leo.test`, password: PASSWORD, role: 'owner' }],
        },
        { name: 'GET /tenants/{A}/keys', allow: ROLES, call: () => ['GET', `/admin/v1/tenants/${A()}/keys`] },
        {
            name: 'POST /tenants/{A}/keys',
            allow: ['owner', 'admin', 'operator', 'tenant_admin'],
            call: () => ['POST', `/admin/v1/tenants/${A()}/keys`, { name: uniq('k') }],
        },
        {
            name: 'GET /tenants/{A}/keys/{key}',
            allow: ROLES,
            call: () => ['GET', `/admin/v1/tenants/${A()}/keys/${S.keyA.id}`],
        },
        {
            name: 'PATCH /tenants/{A}/keys/{key}',
            allow: ['owner', 'admin', 'operator', 'tenant_admin'],
            call: () => ['PATCH', `/admin/v1/tenants/${A()}/keys/${S.keyA.id}`, { limits: { rpm: 60 } }],
        },
        {
            name: 'POST /tenants/{A}/keys/{key}/revoke',
            allow: ['owner', 'admin', 'operator', 'tenant_admin'],
            prepare: async () => (await createKey(S.tokens.owner, A(), { name: uniq('r') })).id,
            call: (id) => ['POST', `/admin/v1/tenants/${A()}/keys/${id}/revoke`],
        },
        {
            name: 'POST /tenants/{A}/keys/{key}/rotate',
            allow: ['owner', 'admin', 'operator', 'tenant_admin'],
            prepare: async () => (await createKey(S.tokens.owner, A(), { name: uniq('r') })).id,
            call: (id) => ['POST', `/admin/v1/tenants/${A()}/keys/${id}/rotate`],
        },
        { name: 'GET /audit', allow: ['owner', 'admin', 'operator', 'viewer'], call: () => ['GET', '/admin/v1/audit'] },
        { name: 'GET /providers', allow: ['owner', 'admin', 'operator', 'viewer'], call: () => ['GET', '/admin/v1/providers'] },
        {
            name: 'POST /providers',
            allow: ['owner', 'admin'],
            call: () => ['POST', '/admin/v1/providers', { name: uniq('p'), type: 'openai', base_url: 'http://127.0.0.1:9/v1' }],
        },
        {
            name: 'GET /providers/{p}',
            allow: ['owner', 'admin', 'operator', 'viewer'],
            prepare: createProvider,
            call: (id) => ['GET', `/admin/v1/providers/${id}`],
        },
        {
            name: 'PATCH /providers/{p}',
            allow: ['owner', 'admin'],
            prepare: createProvider,
            call: (id) => ['PATCH', `/admin/v1/providers/${id}`, { enabled: false }],
        },
        {
            name: 'DELETE /providers/{p}',
            allow: ['owner', 'admin'],
            prepare: createProvider,
            call: (id) => ['DELETE', `/admin/v1/providers/${id}`],
        },
        {
            name: 'GET /providers/{p}/credentials',
            allow: ['owner', 'admin', 'operator', 'viewer'],
            prepare: createProvider,
            call: (id) => ['GET', `/admin/v1/providers/${id}/credentials`],
        },
        {
            name: 'POST /providers/{p}/credentials',
            allow: ['owner', 'admin'],
            prepare: createProvider,
            call: (id) => ['POST', `/admin/v1/providers/${id}/credentials`, { name: 'c', secret: 'sk-matrix-secret-0001' }],
        },
        {
            name: 'PATCH /providers/{p}/credentials/{c}',
            allow: ['owner', 'admin'],
            prepare: createCredential,
            call: ([p, c]) => ['PATCH', `/admin/v1/providers/${p}/credentials/${c}`, { enabled: false }],
        },
        {
            name: 'DELETE /providers/{p}/credentials/{c}',
            allow: ['owner', 'admin'],
            prepare: createCredential,
            call: ([p, c]) => ['DELETE', `/admin/v1/providers/${p}/credentials/${c}`],
        },
        { name: 'GET /deployments', allow: ['owner', 'admin', 'operator', 'viewer'], call: () => ['GET', '/admin/v1/deployments'] },
        {
            name: 'POST /deployments',
            allow: ['owner', 'admin'],
            prepare: createProvider,
            call: (p) => ['POST', '/admin/v1/deployments', { provider_id: p, model: 'm' }],
        },
        {
            name: 'GET /deployments/{d}',
            allow: ['owner', 'admin', 'operator', 'viewer'],
            prepare: createDeployment,
            call: (d) => ['GET', `/admin/v1/deployments/${d}`],
        },
        {
            name: 'PATCH /deployments/{d}',
            allow: ['owner', 'admin'],
            prepare: createDeployment,
            call: (d) => ['PATCH', `/admin/v1/deployments/${d}`, { enabled: false }],
        },
        {
            name: 'DELETE /deployments/{d}',
            allow: ['owner', 'admin'],
            prepare: createDeployment,
            call: (d) => ['DELETE', `/admin/v1/deployments/${d}`],
        },
        { name: 'GET /models', allow: ['owner', 'admin', 'operator', 'viewer'], call: () => ['GET', '/admin/v1/models'] },
        {
            name: 'POST /models',
            allow: ['owner', 'admin'],
            prepare: createDeployment,
            call: (d) => ['POST', '/admin/v1/models', { name: uniq('mm'), deployments: [{ deployment_id: d }] }],
        },
        {
            name: 'GET /models/{m}',
            allow: ['owner', 'admin', 'operator', 'viewer'],
            prepare: createModel,
            call: (m) => ['GET', `/admin/v1/models/${m}`],
        },
        {
            name: 'PATCH /models/{m}',
            allow: ['owner', 'admin'],
            prepare: createModel,
            call: (m) => ['PATCH', `/admin/v1/models/${m}`, { strategy: 'priority' }],
        },
        {
            name: 'DELETE /models/{m}',
            allow: ['owner', 'admin'],
            prepare: createModel,
            call: (m) => ['DELETE', `/admin/v1/models/${m}`],
        },
        { name: 'GET /usage', allow: ROLES, call: () => ['GET', '/admin/v1/usage?group_by=tenant'] },
        {
            /* the credential's provider (127.0.0.1:9) is unreachable: still a 200 answer, {"ok": false} */
            name: 'POST /providers/{p}/test',
            allow: ['owner', 'admin'],
            prepare: createCredential,
            call: ([p]) => ['POST', `/admin/v1/providers/${p}/test`],
        },
        { name: 'GET /overrides', allow: ['owner', 'admin', 'operator', 'viewer'], call: () => ['GET', '/admin/v1/overrides'] },
        {
            name: 'POST /overrides',
            allow: ['owner', 'admin'],
            prepare: createModelWith,
            call: ([m, d]) => ['POST', '/admin/v1/overrides', { model_id: m, deployment_id: d, action: 'disable' }],
        },
        {
            name: 'DELETE /overrides/{o}',
            allow: ['owner', 'admin'],
            prepare: async () => {
                const [m, d] = await createModelWith();
                const r = await api('POST', '/admin/v1/overrides', {
                    token: S.tokens.owner, body: { model_id: m, deployment_id: d, action: 'weight', weight: 3 },
                });
                assert.equal(r.status, 201, r.text);
                return r.json.id;
            },
            call: (o) => ['DELETE', `/admin/v1/overrides/${o}`],
        },
        { name: 'GET /cooldowns', allow: ['owner', 'admin', 'operator', 'viewer'], call: () => ['GET', '/admin/v1/cooldowns'] },
        {
            name: 'POST /providers/{p}/credentials/{c}/cooldown',
            allow: ['owner', 'admin'],
            prepare: createCredential,
            call: ([p, c]) => ['POST', `/admin/v1/providers/${p}/credentials/${c}/cooldown`, { duration_s: 60 }],
        },
        {
            name: 'DELETE /providers/{p}/credentials/{c}/cooldown',
            allow: ['owner', 'admin'],
            prepare: async () => {
                const [p, c] = await createCredential();
                const r = await api('POST', `/admin/v1/providers/${p}/credentials/${c}/cooldown`, {
                    token: S.tokens.owner, body: { duration_s: 60, reason: 'matrix' },
                });
                assert.equal(r.status, 201, r.text);
                return [p, c];
            },
            call: ([p, c]) => ['DELETE', `/admin/v1/providers/${p}/credentials/${c}/cooldown`],
        },
        { name: 'GET /tokens', allow: ROLES.slice(0, 5), call: () => ['GET', '/admin/v1/tokens'] },
        {
            name: 'POST /tokens (tenant_member of A)',
            allow: ['owner', 'admin', 'tenant_admin'],
            call: () => ['POST', '/admin/v1/tokens', { name: uniq('t'), role: 'tenant_member', tenant_id: A() }],
        },
        {
            name: 'POST /tokens (viewer)',
            allow: ['owner', 'admin'],
            call: () => ['POST', '/admin/v1/tokens', { name: uniq('t'), role: 'viewer' }],
        },
        {
            name: 'POST /tokens/{t}/revoke (a token of A)',
            allow: ['owner', 'admin', 'tenant_admin'],
            prepare: async () => {
                const r = await api('POST', '/admin/v1/tokens', {
                    token: S.tokens.owner, body: { name: uniq('t'), role: 'tenant_member', tenant_id: A() },
                });
                assert.equal(r.status, 201, r.text);
                return r.json.id;
            },
            call: (id) => ['POST', `/admin/v1/tokens/${id}/revoke`],
        },
        { name: 'GET /invitations', allow: ROLES.slice(0, 5), call: () => ['GET', '/admin/v1/invitations'] },
        {
            name: 'POST /invitations (tenant_member of A)',
            allow: ['owner', 'admin', 'tenant_admin'],
            call: () => ['POST', '/admin/v1/invitations', { email: `${uniq('i')}@leo.test`, role: 'tenant_member', tenant_id: A() }],
        },
        {
            name: 'POST /invitations/{i}/revoke (an invitation to A)',
            allow: ['owner', 'admin', 'tenant_admin'],
            prepare: async () => (await inviteToA()).id,
            call: (id) => ['POST', `/admin/v1/invitations/${id}/revoke`],
        },
        {
            name: 'POST /invitations/accept',
            allow: ROLES,
            public: true,
            prepare: async () => (await inviteToA()).token,
            call: (token) => ['POST', '/admin/v1/invitations/accept', { token, password: PASSWORD }],
        },
        {
            name: 'POST /config/validate (a key of A)',
            allow: ['owner', 'admin', 'operator', 'tenant_admin'],
            call: () => ['POST', '/admin/v1/config/validate',
                { kind: 'key', action: 'create', tenant_id: A(), body: { name: uniq('k') } }],
        },
        {
            name: 'POST /logout',
            allow: ROLES,
            /* a session of its own, so the matrix keeps its tokens */
            session: true,
            call: () => ['POST', '/admin/v1/logout'],
        },
    ];

    it('every role against every endpoint: allowed → 2xx, denied → 403; no session → 401 but on public routes',
        { timeout: 60000 },
        async () => {
            const failures = [];
            const tokenOf = (role) => (role === 'owner' ? S.tokens.owner_matrix : S.tokens[role]);
            for (const ep of ENDPOINTS) {
                for (const role of [...ROLES, null]) {
                    const arg = ep.prepare ? await ep.prepare() : undefined;
                    const [method, p, body] = ep.call(arg);
                    let token = role ? tokenOf(role) : undefined;
                    if (ep.session && role) {
                        token = await login(role === 'owner' ? OWNER.email : `${role}@leo.test`,
                            role === 'owner' ? OWNER.password : PASSWORD);
                    }
                    const r = await api(method, p, { token, body });
                    const expected = role === null ? (ep.public ? 'ok' : 401) : ep.allow.includes(role) ? 'ok' : 403;
                    const ok = expected === 'ok' ? r.status >= 200 && r.status < 300 : r.status === expected;
                    if (!ok) {
                        failures.push(`${ep.name} as ${role || 'anonymous'}: expected ${expected}, ` +
                            `got ${r.status} ${r.text}`);
                    }
                    if (expected === 403) assertError(r, 403, { code: 'forbidden' });
                }
            }
            assert.deepEqual(failures, []);
        });

    it('tenant roles see only their own tenant in lists', T, async () => {
        const tenants = await api('GET', '/admin/v1/tenants', { token: S.tokens.tenant_member });
        assert.deepEqual(tenants.json.data.map((t) => t.id), [S['tenant-a'].id]);
        const all = await api('GET', '/admin/v1/tenants?limit=200', { token: S.tokens.viewer });
        assert.ok(all.json.data.length >= 2);

        const users = await api('GET', '/admin/v1/users?limit=200', { token: S.tokens.tenant_admin });
        assert.equal(users.status, 200);
        assert.ok(users.json.data.length >= 2);
        for (const u of users.json.data) {
            assert.ok(u.memberships.length > 0);
            for (const m of u.memberships) assert.equal(m.tenant_id, S['tenant-a'].id, JSON.stringify(u));
        }
        assert.ok(!users.text.includes(OWNER.email), 'global users are not listed to a tenant admin');
    });

    it("tenant A's admin can neither read nor change tenant B or its keys", T, async () => {
        const tok = S.tokens.tenant_admin;
        const B = S['tenant-b'].id;
        const kB = S.keyB.id;
        const calls = [
            ['GET', `/admin/v1/tenants/${B}`],
            ['PATCH', `/admin/v1/tenants/${B}`, { name: 'pwned' }],
            ['GET', `/admin/v1/tenants/${B}/keys`],
            ['POST', `/admin/v1/tenants/${B}/keys`, { name: 'pwned' }],
            ['GET', `/admin/v1/tenants/${B}/keys/${kB}`],
            ['PATCH', `/admin/v1/tenants/${B}/keys/${kB}`, { status: 'disabled' }],
            ['POST', `/admin/v1/tenants/${B}/keys/${kB}/revoke`],
            ['POST', `/admin/v1/tenants/${B}/keys/${kB}/rotate`],
            ['POST', '/admin/v1/users', { email: 'intruder@leo.test', password: PASSWORD, role: 'tenant_admin', tenant_id: B }],
        ];
        for (const [method, p, body] of calls) {
            assertError(await api(method, p, { token: tok, body }), 403, { code: 'forbidden' });
        }
        /* B's key through A's path: not found, because every key query is scoped to the path's tenant */
        const A = S['tenant-a'].id;
        for (const [method, p, body] of [
            ['GET', `/admin/v1/tenants/${A}/keys/${kB}`],
            ['PATCH', `/admin/v1/tenants/${A}/keys/${kB}`, { status: 'disabled' }],
            ['POST', `/admin/v1/tenants/${A}/keys/${kB}/revoke`],
            ['POST', `/admin/v1/tenants/${A}/keys/${kB}/rotate`],
        ]) {
            assertError(await api(method, p, { token: tok, body }), 404, { code: 'not_found' });
        }
        const listA = await api('GET', `/admin/v1/tenants/${A}/keys?limit=200`, { token: tok });
        assert.ok(!listA.json.data.some((k) => k.id === kB));
        const [row] = await sql(`SELECT status, name, rotated_from FROM api_keys WHERE id = ${q(kB)}`);
        assert.deepEqual(row, { status: 'active', name: 'key-b', rotated_from: null });
        const [t] = await sql(`SELECT name FROM tenants WHERE id = ${q(B)}`);
        assert.equal(t.name, 'TENANT-B');
        const [{ n }] = await sql("SELECT count(*)::int AS n FROM users WHERE email = 'intruder@leo.test'");
        assert.equal(n, 0);
        /* and B's own admin can */
        assert.equal((await api('GET', `/admin/v1/tenants/${B}/keys/${kB}`, { token: S.tokens.tenant_admin_b })).status, 200);
    });

    it('nobody grants a role stronger than their own', T, async () => {
        assertError(await api('POST', '/admin/v1/users', {
            token: S.tokens.admin, body: { email: 'would-be-owner@leo.test', password: PASSWORD, role: 'owner' },
        }), 403, { code: 'forbidden', param: 'role' });
        assertError(await api('POST', '/admin/v1/users', {
            token: S.tokens.tenant_admin, body: { email: 'would-be-admin@leo.test', password: PASSWORD, role: 'admin' },
        }), 403, { code: 'forbidden' });
        assert.equal((await api('POST', '/admin/v1/users', {
            token: S.tokens.tenant_admin,
            body: { email: 'new-tenant-admin@leo.test', password: PASSWORD, role: 'tenant_admin', tenant_id: S['tenant-a'].id },
        })).status, 201);
    });
});

describe('providers and credentials', () => {
    const SECRET = 'sk-upstream-plaintext-7f3a9c2e4b1d';
    let prov;

    it('a provider is created, read, listed and changed; validation names the field', T, async () => {
        const owner = S.tokens.owner;
        const r = await api('POST', '/admin/v1/providers', {
            token: owner,
            body: { name: 'openai-main', type: 'openai', base_url: 'https://api.example.test/v1', timeouts: { connect_ms: 2000 } },
        });
        assert.equal(r.status, 201, r.text);
        prov = r.json;
        assert.equal(prov.name, 'openai-main');
        assert.equal(prov.type, 'openai');
        assert.deepEqual(prov.timeouts, { connect_ms: 2000, first_byte_ms: null, total_ms: null });
        assert.equal(prov.enabled, true);
        assertError(await api('POST', '/admin/v1/providers', {
            token: owner, body: { name: 'openai-main', type: 'openai', base_url: 'https://x.test' },
        }), 409, { code: 'already_exists', param: 'name' });
        for (const [body, param] of [
            [{ name: 'bad name', type: 'openai', base_url: 'https://x.test' }, 'name'],
            [{ name: 'p-x', type: 'bedrock', base_url: 'https://x.test' }, 'type'],
            [{ name: 'p-x', type: 'openai', base_url: 'ftp://x.test' }, 'base_url'],
            [{ name: 'p-x', type: 'openai' }, 'base_url'],
            [{ name: 'p-x', type: 'azure', base_url: 'https://x.test' }, 'api_version'],
            [{ name: 'p-x', type: 'openai', base_url: 'https://x.test', timeouts: { connect_ms: 0 } }, 'timeouts.connect_ms'],
            [{ name: 'p-x', type: 'openai', base_url: 'https://x.test', timeouts: { read_ms: 5 } }, 'timeouts.read_ms'],
            [{ name: 'p-x', type: 'openai', base_url: 'https://x.test', extra: 1 }, 'extra'],
        ]) {
            assertError(await api('POST', '/admin/v1/providers', { token: owner, body }), 400, { param });
        }
        const g = await api('GET', `/admin/v1/providers/${prov.id}`, { token: S.tokens.viewer });
        assert.deepEqual(g.json, prov);
        const p = await api('PATCH', `/admin/v1/providers/${prov.id}`, {
            token: owner, body: { base_url: 'https://api2.example.test/v1/', enabled: false },
        });
        assert.equal(p.status, 200, p.text);
        assert.equal(p.json.enabled, false);
        assertError(await api('PATCH', `/admin/v1/providers/${prov.id}`, { token: owner, body: { type: 'gemini' } }), 400,
            { code: 'immutable_field', param: 'type' });
        const list = await api('GET', '/admin/v1/providers?limit=1', { token: owner });
        assert.equal(list.status, 200);
        assert.equal(list.json.data.length, 1);
        assert.equal(typeof list.json.next_cursor, 'string');
        const [a] = await sql(`SELECT action, details->>'name' AS name FROM audit_log WHERE target = 'provider:${prov.id}' ORDER BY id LIMIT 1`);
        assert.deepEqual(a, { action: 'provider.create', name: 'openai-main' });
    });

    it('a credential is write-only: masked in every response, sealed in the database, bound to its row', T, async () => {
        const owner = S.tokens.owner;
        const r = await api('POST', `/admin/v1/providers/${prov.id}/credentials`, {
            token: owner, body: { name: 'primary', secret: SECRET, weight: 3 },
        });
        assert.equal(r.status, 201, r.text);
        assert.equal(r.json.masked, 'sk-…4b1d');
        assert.equal(r.json.weight, 3);
        assert.match(r.json.key_id, /^mk[0-9a-f]{16}$/);
        assert.ok(!r.text.includes(SECRET));
        const cred = r.json;
        const list = await api('GET', `/admin/v1/providers/${prov.id}/credentials`, { token: S.tokens.viewer });
        assert.equal(list.status, 200);
        assert.deepEqual(list.json.data, [cred]);
        assert.ok(!list.text.includes(SECRET));
        /* in the database: only the sealed form, under the key id it names */
        const [row] = await sql(`SELECT sealed, key_id, masked FROM provider_credentials WHERE id = ${q(cred.id)}`);
        assert.match(row.sealed, new RegExp(`^sb1\\.${row.key_id}\\.[A-Za-z0-9_-]+$`));
        const dump = await sql('SELECT row_to_json(c)::text AS t FROM provider_credentials c');
        assert.ok(!JSON.stringify(dump).includes(SECRET), 'no plaintext in provider_credentials');
        const audit = await sql('SELECT details::text AS d FROM audit_log');
        assert.ok(!JSON.stringify(audit).includes(SECRET), 'no plaintext in the audit log');
        assert.ok(!cp.stderr.lines.some((l) => l.text.includes(SECRET)), 'no plaintext in the log');

        assertError(await api('PATCH', `/admin/v1/providers/${prov.id}/credentials/${cred.id}`, {
            token: owner, body: { secret: 'sk-new' },
        }), 400, { code: 'immutable_field', param: 'secret' });
        const d = await api('PATCH', `/admin/v1/providers/${prov.id}/credentials/${cred.id}`, {
            token: owner, body: { enabled: false },
        });
        assert.equal(d.status, 200, d.text);
        assert.equal(d.json.enabled, false);
        for (const [body, param] of [
            [{ name: 'x' }, 'secret'],
            [{ name: 'x', secret: '' }, 'secret'],
            [{ secret: 'sk-x' }, 'name'],
            [{ name: 'x', secret: 'sk-x', weight: 0 }, 'weight'],
            [{ name: 'x', secret: 'sk-x', enabled: 'yes' }, 'enabled'],
        ]) {
            assertError(await api('POST', `/admin/v1/providers/${prov.id}/credentials`, { token: owner, body }), 400, { param });
        }
        assertError(await api('POST', `/admin/v1/providers/${prov.id}/credentials`, {
            token: owner, body: { name: 'primary', secret: 'sk-other' },
        }), 409, { param: 'name' });
        assertError(await api('POST', `/admin/v1/providers/${crypto.randomUUID()}/credentials`, {
            token: owner, body: { name: 'x', secret: 'sk-other' },
        }), 404, { code: 'not_found' });
        const del = await api('DELETE', `/admin/v1/providers/${prov.id}/credentials/${cred.id}`, { token: owner });
        assert.equal(del.status, 200, del.text);
        assertError(await api('DELETE', `/admin/v1/providers/${prov.id}/credentials/${cred.id}`, { token: owner }), 404);
        const pd = await api('DELETE', `/admin/v1/providers/${prov.id}`, { token: owner });
        assert.equal(pd.status, 200);
        assertError(await api('GET', `/admin/v1/providers/${prov.id}`, { token: owner }), 404);
    });
});

describe('deployments and models', () => {
    let prov, d1, d2, model;

    it('deployments are created, changed and validated', T, async () => {
        const owner = S.tokens.owner;
        const p = await api('POST', '/admin/v1/providers', {
            token: owner, body: { name: 'catalog-prov', type: 'anthropic', base_url: 'https://anthropic.example.test' },
        });
        assert.equal(p.status, 201, p.text);
        prov = p.json;
        const r = await api('POST', '/admin/v1/deployments', {
            token: owner, body: { provider_id: prov.id, model: 'claude-x', limits: { rpm: 100 } },
        });
        assert.equal(r.status, 201, r.text);
        d1 = r.json;
        assert.equal(d1.provider, 'catalog-prov');
        assert.deepEqual(d1.limits, { rpm: 100 });
        d2 = (await api('POST', '/admin/v1/deployments', {
            token: owner, body: { provider_id: prov.id, model: 'claude-y' },
        })).json;
        assertError(await api('POST', '/admin/v1/deployments', {
            token: owner, body: { provider_id: prov.id, model: 'claude-x' },
        }), 409, { param: 'model' });
        for (const [body, param] of [
            [{ provider_id: crypto.randomUUID(), model: 'm' }, 'provider_id'],
            [{ provider_id: 'nope', model: 'm' }, 'provider_id'],
            [{ provider_id: prov.id, model: 'has space' }, 'model'],
            [{ provider_id: prov.id, model: 'm2', limits: { usd_per_day: 1 } }, 'limits.usd_per_day'],
            [{ provider_id: prov.id, model: 'm2', limits: { rpm: -1 } }, 'limits.rpm'],
        ]) {
            assertError(await api('POST', '/admin/v1/deployments', { token: owner, body }), 400, { param });
        }
        const u = await api('PATCH', `/admin/v1/deployments/${d2.id}`, { token: owner, body: { enabled: false } });
        assert.equal(u.status, 200, u.text);
        assert.equal(u.json.enabled, false);
        assertError(await api('PATCH', `/admin/v1/deployments/${d2.id}`, { token: owner, body: { model: 'z' } }), 400,
            { code: 'immutable_field', param: 'model' });
        const list = await api('GET', '/admin/v1/deployments?limit=200', { token: S.tokens.viewer });
        assert.ok(list.json.data.some((d) => d.id === d1.id));
    });

    it('a model maps a name to deployments with priorities and weights; its list is replaced on update', T, async () => {
        const owner = S.tokens.owner;
        const r = await api('POST', '/admin/v1/models', {
            token: owner,
            body: { name: 'smart', strategy: 'weighted', deployments: [
                { deployment_id: d2.id, priority: 1 }, { deployment_id: d1.id, weight: 3 }] },
        });
        assert.equal(r.status, 201, r.text);
        model = r.json;
        assert.deepEqual(model.deployments, [
            { deployment_id: d1.id, provider: 'catalog-prov', model: 'claude-x', priority: 0, weight: 3 },
            { deployment_id: d2.id, provider: 'catalog-prov', model: 'claude-y', priority: 1, weight: 1 },
        ]);
        for (const [body, param] of [
            [{ name: 'smart', deployments: [{ deployment_id: d1.id }] }, 'name'],
            [{ name: 'x y', deployments: [{ deployment_id: d1.id }] }, 'name'],
            [{ name: 'm-a' }, 'deployments'],
            [{ name: 'm-a', deployments: [] }, 'deployments'],
            [{ name: 'm-a', deployments: [{ deployment_id: d1.id }, { deployment_id: d1.id }] }, 'deployments[1].deployment_id'],
            [{ name: 'm-a', deployments: [{ deployment_id: d1.id, priority: 1001 }] }, 'deployments[0].priority'],
            [{ name: 'm-a', deployments: [{ deployment_id: d1.id, extra: 1 }] }, 'deployments[0].extra'],
            [{ name: 'm-a', deployments: [{ deployment_id: crypto.randomUUID() }] }, 'deployments'],
            [{ name: 'm-a', strategy: 'random', deployments: [{ deployment_id: d1.id }] }, 'strategy'],
        ]) {
            const e = await api('POST', '/admin/v1/models', { token: owner, body });
            assert.ok(e.status === 400 || e.status === 409, e.text);
            assertError(e, e.status, { param });
        }
        const u = await api('PATCH', `/admin/v1/models/${model.id}`, {
            token: owner, body: { strategy: 'priority', deployments: [{ deployment_id: d2.id, weight: 5 }] },
        });
        assert.equal(u.status, 200, u.text);
        assert.equal(u.json.strategy, 'priority');
        assert.deepEqual(u.json.deployments.map((d) => [d.model, d.priority, d.weight]), [['claude-y', 0, 5]]);
        const g = await api('GET', `/admin/v1/models/${model.id}`, { token: S.tokens.viewer });
        assert.deepEqual(g.json, u.json);
        /* deleting a deployment removes it from the models that used it */
        assert.equal((await api('DELETE', `/admin/v1/deployments/${d2.id}`, { token: owner })).status, 200);
        assert.deepEqual((await api('GET', `/admin/v1/models/${model.id}`, { token: owner })).json.deployments, []);
        assert.equal((await api('DELETE', `/admin/v1/models/${model.id}`, { token: owner })).status, 200);
        assertError(await api('GET', `/admin/v1/models/${model.id}`, { token: owner }), 404);
        const actions = (await sql(`SELECT action FROM audit_log WHERE target = 'model:${model.id}' ORDER BY id`)).map((a) => a.action);
        assert.deepEqual(actions, ['model.create', 'model.update', 'model.delete']);
    });
});

describe('provider connection test', () => {
    const GOOD = 'sk-probe-good-key-5b7d1e93a0c4';
    const BAD = 'sk-probe-wrong-key-8e2f6a1c9d37';
    let mock;
    let fake; /* a provider that accepts GOOD only, by the header its type authenticates with */
    const seen = [];

    before(async () => {
        mock = await startMock();
        fake = http.createServer((req, res) => {
            seen.push({ method: req.method, url: req.url, headers: req.headers });
            const presented = req.headers['x-api-key'] || req.headers['api-key'] || req.headers['x-goog-api-key'] ||
                (req.headers.authorization || '').replace(/^Bearer /, '');
            const ok = presented === GOOD;
            res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
            /* like OpenAI's real refusal, the message repeats the key it was given */
            res.end(JSON.stringify(ok ? { data: [] } : { error: { message: `Incorrect API key provided: ${presented}.` } }));
        });
        await new Promise((resolve) => fake.listen(0, '127.0.0.1', resolve));
    });
    after(async () => {
        if (fake) await new Promise((resolve) => fake.close(resolve));
        if (mock) await mock.stop();
    });

    const provider = async (type, baseUrl, secret, extra = {}) => {
        const p = await api('POST', '/admin/v1/providers', {
            token: S.tokens.owner, body: { name: `probe-${type}-${crypto.randomBytes(4).toString('hex')}`, type, base_url: baseUrl, ...extra },
        });
        assert.equal(p.status, 201, p.text);
        if (secret) {
            const c = await api('POST', `/admin/v1/providers/${p.json.id}/credentials`, {
                token: S.tokens.owner, body: { name: 'primary', secret },
            });
            assert.equal(c.status, 201, c.text);
        }
        return p.json.id;
    };

    it('answers ok with the model list of the mock provider, sending the key as a Bearer token', T, async () => {
        const id = await provider('openai', mock.baseUrl, GOOD);
        const r = await api('POST', `/admin/v1/providers/${id}/test`, { token: S.tokens.owner });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.ok, true);
        assert.equal(r.json.result, 'ok');
        assert.equal(r.json.status, 200);
        assert.equal(typeof r.json.latency_ms, 'number');
        assert.equal(r.json.credential.name, 'primary');
        assert.equal(r.json.error, undefined);
        assert.ok(!r.text.includes(GOOD));
        const recs = (await mock.requests()).filter((x) => x.method === 'GET' && x.path === '/v1/models');
        assert.ok(recs.length >= 1);
        assert.equal(recordedHeader(recs.at(-1), 'authorization'), `Bearer ${GOOD}`);
    });

    it('reports a refusal with the upstream status and message, scrubbed of the secret', T, async () => {
        const id = await provider('openai', `http://127.0.0.1:${fake.address().port}/v1`, BAD);
        const r = await api('POST', `/admin/v1/providers/${id}/test`, { token: S.tokens.owner });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.ok, false);
        assert.equal(r.json.result, 'refused');
        assert.equal(r.json.status, 401);
        assert.equal(r.json.error, 'the provider answered 401: Incorrect API key provided: ***.');
        for (let i = 0; i + 8 <= BAD.length; i++) assert.ok(!r.text.includes(BAD.slice(i, i + 8)), r.text);
        assert.equal(seen.at(-1).url, '/v1/models');
        assert.equal(seen.at(-1).headers.authorization, `Bearer ${BAD}`);
        assert.ok(!cp.stderr.tail(200).includes(BAD), 'the secret is not logged');
    });

    it('authenticates each provider type the way the gateway does', T, async () => {
        const base = `http://127.0.0.1:${fake.address().port}`;
        const cases = [
            ['anthropic', `${base}/v1`, {}, '/v1/models', (h) => h['x-api-key'] === GOOD && h['anthropic-version'] === '2023-06-01'],
            ['gemini', `${base}/v1beta`, {}, '/v1beta/models', (h) => h['x-goog-api-key'] === GOOD],
            ['azure', `${base}`, { api_version: '2024-06-01' }, '/openai/models?api-version=2024-06-01', (h) => h['api-key'] === GOOD],
        ];
        for (const [type, url, extra, expectPath, auth] of cases) {
            const id = await provider(type, url, GOOD, extra);
            const r = await api('POST', `/admin/v1/providers/${id}/test`, { token: S.tokens.owner });
            assert.equal(r.status, 200, r.text);
            assert.equal(r.json.ok, true, `${type}: ${r.text}`);
            const last = seen.at(-1);
            assert.equal(last.url, expectPath, type);
            assert.ok(auth(last.headers), `${type}: ${JSON.stringify(last.headers)}`);
            assert.ok(!last.url.includes(GOOD), 'the secret is never in the URL');
        }
    });

    it('reports an unreachable provider; no credential → 409; unknown provider → 404; metrics count results', T, async () => {
        const closed = await new Promise((resolve) => {
            const srv = net.createServer();
            srv.listen(0, '127.0.0.1', () => {
                const p = srv.address().port;
                srv.close(() => resolve(p));
            });
        });
        const id = await provider('openai', `http://127.0.0.1:${closed}/v1`, GOOD);
        const r = await api('POST', `/admin/v1/providers/${id}/test`, { token: S.tokens.owner });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.ok, false);
        assert.equal(r.json.result, 'unreachable');
        assert.equal(r.json.status, null);
        assert.match(r.json.error, /^cannot reach the provider: /);
        assert.ok(!r.text.includes(GOOD));
        assertError(await api('POST', `/admin/v1/providers/${await provider('openai', mock.baseUrl, null)}/test`,
            { token: S.tokens.owner }), 409, { code: 'no_credential' });
        assertError(await api('POST', `/admin/v1/providers/${crypto.randomUUID()}/test`, { token: S.tokens.owner }), 404);
        assertError(await api('POST', `/admin/v1/providers/${id}/test`, { token: S.tokens.owner, body: { x: 1 } }), 400,
            { code: 'unknown_field', param: 'x' });
        const m = await api('GET', '/metrics');
        assert.match(m.text, /leo_cp_provider_tests_total\{type="openai",result="ok"\} [1-9]/);
        assert.match(m.text, /leo_cp_provider_tests_total\{type="openai",result="refused"\} [1-9]/);
        assert.match(m.text, /leo_cp_provider_tests_total\{type="openai",result="unreachable"\} [1-9]/);
    });
});

describe('routing overrides and forced cooldowns', () => {
    let prov, cred, d1, d2, model;

    it('setup: a provider with a credential, two deployments, a model using both', T, async () => {
        const owner = S.tokens.owner;
        const p = await api('POST', '/admin/v1/providers', {
            token: owner, body: { name: 'ovr-prov', type: 'openai', base_url: 'https://ovr.example.test/v1' },
        });
        assert.equal(p.status, 201, p.text);
        prov = p.json;
        const c = await api('POST', `/admin/v1/providers/${prov.id}/credentials`, {
            token: owner, body: { name: 'k1', secret: 'sk-ovr-secret-0001' },
        });
        assert.equal(c.status, 201, c.text);
        cred = c.json;
        const ds = [];
        for (const m of ['ovr-a', 'ovr-b']) {
            const d = await api('POST', '/admin/v1/deployments', { token: owner, body: { provider_id: prov.id, model: m } });
            assert.equal(d.status, 201, d.text);
            ds.push(d.json);
        }
        [d1, d2] = ds;
        const m = await api('POST', '/admin/v1/models', {
            token: owner, body: { name: 'ovr-model', deployments: [{ deployment_id: d1.id }, { deployment_id: d2.id }] },
        });
        assert.equal(m.status, 201, m.text);
        model = m.json;
    });

    it('an override is set, replaced, listed and cleared, audited; validation names the field', T, async () => {
        const owner = S.tokens.owner;
        const r = await api('POST', '/admin/v1/overrides', {
            token: owner, body: { model_id: model.id, deployment_id: d1.id, action: 'disable', reason: 'incident 42' },
        });
        assert.equal(r.status, 201, r.text);
        assert.equal(r.json.model, 'ovr-model');
        assert.equal(r.json.deployment, 'ovr-prov/ovr-a');
        assert.equal(r.json.action, 'disable');
        assert.equal(r.json.weight, null);
        assert.equal(r.json.reason, 'incident 42');
        const again = await api('POST', '/admin/v1/overrides', {
            token: owner, body: { model_id: model.id, deployment_id: d1.id, action: 'weight', weight: 0 },
        });
        assert.equal(again.status, 201, again.text);
        assert.equal(again.json.id, r.json.id, 'one override per deployment of a model: replaced');
        assert.equal(again.json.action, 'weight');
        assert.equal(again.json.weight, 0);
        for (const [body, param] of [
            [{ model_id: model.id, deployment_id: d1.id, action: 'weight' }, 'weight'],
            [{ model_id: model.id, deployment_id: d1.id, action: 'disable', weight: 2 }, 'weight'],
            [{ model_id: model.id, deployment_id: d1.id }, 'action'],
            [{ model_id: model.id, deployment_id: d1.id, action: 'drain' }, 'action'],
            [{ model_id: 'nope', deployment_id: d1.id, action: 'disable' }, 'model_id'],
            [{ model_id: model.id, deployment_id: crypto.randomUUID(), action: 'disable' }, 'deployment_id'],
            [{ model_id: model.id, deployment_id: d1.id, action: 'disable', reason: 'x'.repeat(513) }, 'reason'],
            [{ model_id: model.id, deployment_id: d1.id, action: 'disable', until: 'x' }, 'until'],
        ]) {
            assertError(await api('POST', '/admin/v1/overrides', { token: owner, body }), 400, { param });
        }
        const list = await api('GET', '/admin/v1/overrides?limit=200', { token: S.tokens.viewer });
        assert.equal(list.status, 200);
        assert.deepEqual(list.json.data.filter((o) => o.model_id === model.id), [again.json]);
        const del = await api('DELETE', `/admin/v1/overrides/${r.json.id}`, { token: owner });
        assert.equal(del.status, 200, del.text);
        assertError(await api('DELETE', `/admin/v1/overrides/${r.json.id}`, { token: owner }), 404, { code: 'not_found' });
        assertError(await api('DELETE', '/admin/v1/overrides/not-a-uuid', { token: owner }), 404);
        const actions = (await sql(`SELECT action FROM audit_log WHERE target = 'model:${model.id}' AND action LIKE 'override.%' ORDER BY id`))
            .map((a) => a.action);
        assert.deepEqual(actions, ['override.set', 'override.set', 'override.clear']);
    });

    it('a forced cooldown is set (until or duration), replaced, listed and cleared, audited', T, async () => {
        const owner = S.tokens.owner;
        const path = `/admin/v1/providers/${prov.id}/credentials/${cred.id}/cooldown`;
        const until = new Date(Date.now() + 3600 * 1000).toISOString();
        const r = await api('POST', path, { token: owner, body: { until, reason: 'key leaked' } });
        assert.equal(r.status, 201, r.text);
        assert.equal(r.json.credential, 'k1');
        assert.equal(r.json.provider, 'ovr-prov');
        assert.equal(r.json.active, true);
        assert.equal(r.json.reason, 'key leaked');
        assert.equal(new Date(r.json.until).getTime(), new Date(until).getTime());
        const again = await api('POST', path, { token: owner, body: { duration_s: 120 } });
        assert.equal(again.status, 201, again.text);
        assert.equal(again.json.id, r.json.id, 'one forced cooldown per credential: replaced');
        assert.ok(new Date(again.json.until) < new Date(until));
        for (const [body, param] of [
            [{}, 'until'],
            [{ until, duration_s: 5 }, 'until'],
            [{ until: new Date(Date.now() - 1000).toISOString() }, 'until'],
            [{ until: 'tomorrow' }, 'until'],
            [{ duration_s: 0 }, 'duration_s'],
            [{ duration_s: 31 * 86400 }, 'duration_s'],
            [{ duration_s: 5, extra: true }, 'extra'],
        ]) {
            assertError(await api('POST', path, { token: owner, body }), 400, { param });
        }
        /* the credential must belong to the provider of the path */
        assertError(await api('POST', `/admin/v1/providers/${crypto.randomUUID()}/credentials/${cred.id}/cooldown`,
            { token: owner, body: { duration_s: 5 } }), 404);
        const list = await api('GET', '/admin/v1/cooldowns?limit=200', { token: S.tokens.operator });
        assert.equal(list.status, 200);
        assert.deepEqual(list.json.data.filter((x) => x.credential_id === cred.id), [again.json]);
        assert.ok(!list.text.includes('sk-ovr-secret-0001'));
        assert.equal((await api('DELETE', path, { token: owner })).status, 200);
        assertError(await api('DELETE', path, { token: owner }), 404, { code: 'not_found' });
        const actions = (await sql(`SELECT action FROM audit_log WHERE target = 'credential:${cred.id}' AND action LIKE 'credential.cooldown%' ORDER BY id`))
            .map((a) => a.action);
        assert.deepEqual(actions, ['credential.cooldown', 'credential.cooldown', 'credential.cooldown_clear']);
    });

    it('removing the deployment from the model takes its override with it', T, async () => {
        const owner = S.tokens.owner;
        const r = await api('POST', '/admin/v1/overrides', {
            token: owner, body: { model_id: model.id, deployment_id: d2.id, action: 'disable' },
        });
        assert.equal(r.status, 201, r.text);
        const u = await api('PATCH', `/admin/v1/models/${model.id}`, { token: owner, body: { deployments: [{ deployment_id: d1.id }] } });
        assert.equal(u.status, 200, u.text);
        assertError(await api('DELETE', `/admin/v1/overrides/${r.json.id}`, { token: owner }), 404);
    });
});

describe('tenants and users: validation', () => {
    it('names the field in every validation error', T, async () => {
        const tok = S.tokens.owner;
        const cases = [
            [{ name: 'x' }, 'slug', 'missing_field'],
            [{ slug: 'UPPER', name: 'x' }, 'slug', 'invalid_value'],
            [{ slug: 'ok-slug', name: '' }, 'name', 'invalid_value'],
            [{ slug: 'ok-slug', name: 'a\u0001b' }, 'name', 'invalid_value'],
            [{ slug: 'ok-slug', name: 5 }, 'name', 'invalid_type'],
            [{ slug: 'ok-slug', name: 'x', status: 'gone' }, 'status', 'invalid_value'],
            [{ slug: 'ok-slug', name: 'x', colour: 'red' }, 'colour', 'unknown_field'],
        ];
        for (const [body, param, code] of cases) {
            assertError(await api('POST', '/admin/v1/tenants', { token: tok, body }), 400, { param, code });
        }
        assertError(await api('POST', '/admin/v1/tenants', { token: tok, body: { slug: 'tenant-a', name: 'dup' } }), 409,
            { param: 'slug', code: 'already_exists' });
        assertError(await api('PATCH', `/admin/v1/tenants/${S['tenant-a'].id}`, { token: tok, body: { slug: 'x' } }), 400,
            { param: 'slug' });
        assertError(await api('PATCH', `/admin/v1/tenants/${S['tenant-a'].id}`, { token: tok, body: {} }), 400,
            { code: 'empty_change' });
        assertError(await api('GET', '/admin/v1/tenants/00000000-0000-0000-0000-000000000000', { token: tok }), 404);
        assertError(await api('GET', '/admin/v1/tenants/not-a-uuid', { token: tok }), 404);
        assertError(await api('GET', '/admin/v1/tenants?limit=0', { token: tok }), 400, { param: 'limit' });
        assertError(await api('GET', '/admin/v1/tenants?limit=201', { token: tok }), 400, { param: 'limit' });
        assertError(await api('GET', '/admin/v1/tenants?cursor=zzz', { token: tok }), 400, { param: 'cursor' });
        assertError(await api('GET', '/admin/v1/tenants?sort=name', { token: tok }), 400, { param: 'sort' });
        assertError(await api('DELETE', '/admin/v1/tenants', { token: tok }), 405);
        assertError(await api('GET', '/admin/v1/nothing', { token: tok }), 404);

        const users = [
            [{ password: PASSWORD, role: 'viewer' }, 'email', 'missing_field'],
            [{ email: 'no-at-sign', password: PASSWORD, role: 'viewer' }, 'email', 'invalid_value'],
            [{ email: 'p@leo.test', password: 'short', role: 'viewer' }, 'password', 'invalid_value'],
            [{ email: 'p@leo.test', password: PASSWORD, role: 'king' }, 'role', 'invalid_value'],
            [{ email: 'p@leo.test', password: PASSWORD, role: 'viewer', tenant_id: S['tenant-a'].id }, 'tenant_id',
                'invalid_value'],
            [{ email: 'p@leo.test', password: PASSWORD, role: 'tenant_member' }, 'tenant_id', 'missing_field'],
            [{ email: 'p@leo.test', password: PASSWORD, role: 'tenant_member', tenant_id: 'x' }, 'tenant_id',
                'invalid_value'],
            [{ email: 'p@leo.test', password: PASSWORD, role: 'tenant_member',
                tenant_id: '00000000-0000-0000-0000-000000000000' }, 'tenant_id', 'invalid_value'],
            [{ email: OWNER.email, password: PASSWORD, role: 'viewer' }, 'email', 'already_exists'],
        ];
        for (const [body, param, code] of users) {
            const r = await api('POST', '/admin/v1/users', { token: tok, body });
            assertError(r, code === 'already_exists' ? 409 : 400, { param, code });
        }
    });

    it('pages through lists with limit and an opaque cursor, without overlap', T, async () => {
        const tok = S.tokens.owner;
        const seen = [];
        let cursor = null;
        let pages = 0;
        do {
            const r = await api('GET', `/admin/v1/users?limit=3${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
                { token: tok });
            assert.equal(r.status, 200, r.text);
            assert.ok(r.json.data.length <= 3);
            seen.push(...r.json.data.map((u) => u.id));
            cursor = r.json.next_cursor;
            pages++;
        } while (cursor && pages < 50);
        const [{ n }] = await sql('SELECT count(*)::int AS n FROM users');
        assert.equal(seen.length, n);
        assert.equal(new Set(seen).size, n);
        assert.ok(pages >= 3);
    });
});

describe('API keys', () => {
    it('create returns the secret once; lists and reads never show it; the database holds only its keyed hash', T,
        async () => {
            const tok = S.tokens.tenant_admin;
            const A = S['tenant-a'].id;
            const r = await api('POST', `/admin/v1/tenants/${A}/keys`, {
                token: tok,
                body: { name: 'production', allowed_models: ['gpt-4o-mini'], limits: { rpm: 100, usd_per_day: 2.5 },
                    expires_at: '2099-01-01T00:00:00Z' },
            });
            assert.equal(r.status, 201, r.text);
            const k = r.json;
            assert.match(k.secret, /^sk-leo-[A-Za-z0-9_-]{40}$/);
            assert.equal(k.prefix, k.secret.slice(0, 7));
            assert.equal(k.last4, k.secret.slice(-4));
            assert.equal(k.masked, `sk-\u2026${k.secret.slice(-4)}`);
            assert.deepEqual([k.name, k.status, k.tenant_id, k.allowed_models, k.limits],
                ['production', 'active', A, ['gpt-4o-mini'], { rpm: 100, usd_per_day: 2.5 }]);
            assert.equal(Date.parse(k.expires_at), Date.parse('2099-01-01T00:00:00Z'));
            S.prodKey = k;

            const list = await api('GET', `/admin/v1/tenants/${A}/keys?limit=200`, { token: tok });
            const one = await api('GET', `/admin/v1/tenants/${A}/keys/${k.id}`, { token: tok });
            for (const res of [list, one]) {
                assert.equal(res.status, 200);
                assert.ok(!res.text.includes(k.secret.slice(7)), 'no part of the secret beyond the prefix');
                assert.ok(!res.text.includes('"secret"'));
            }
            const listed = list.json.data.find((x) => x.id === k.id);
            assert.equal(listed.masked, `sk-\u2026${k.last4}`);

            const expected = await hashKey(k.secret, { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET });
            const [row] = await sql(`SELECT key_hash, prefix, last4 FROM api_keys WHERE id = ${q(k.id)}`);
            assert.deepEqual(row, { key_hash: expected, prefix: k.prefix, last4: k.last4 });
            const { stdout: dump } = await new Promise((resolve, reject) => {
                execFile(path.join(pg.bin, 'pg_dump'), ['-h', pg.socketDir, '-p', String(pg.port), '-U', 'postgres',
                    '--data-only', 'leo'], { maxBuffer: 64 << 20 }, (err, stdout) => (err ? reject(err) : resolve({ stdout })));
            });
            assert.ok(dump.includes(expected), 'the hash is in the database');
            assert.ok(!dump.includes(k.secret.slice(7)), 'the secret is nowhere in the database');
        });

    it('rotate returns a new secret once and revokes the old key; revoke is final', T, async () => {
        const tok = S.tokens.operator;
        const A = S['tenant-a'].id;
        const old = S.prodKey;
        const r = await api('POST', `/admin/v1/tenants/${A}/keys/${old.id}/rotate`, { token: tok });
        assert.equal(r.status, 200, r.text);
        const k = r.json;
        assert.match(k.secret, /^sk-leo-[A-Za-z0-9_-]{40}$/);
        assert.notEqual(k.secret, old.secret);
        assert.notEqual(k.id, old.id);
        assert.equal(k.rotated_from, old.id);
        assert.deepEqual([k.name, k.allowed_models, k.limits, k.status], [old.name, old.allowed_models, old.limits, 'active']);
        const prev = await api('GET', `/admin/v1/tenants/${A}/keys/${old.id}`, { token: tok });
        assert.equal(prev.json.status, 'revoked');
        assert.ok(prev.json.revoked_at);
        const [row] = await sql(`SELECT key_hash FROM api_keys WHERE id = ${q(k.id)}`);
        assert.equal(row.key_hash, await hashKey(k.secret, { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET }));
        const again = await api('GET', `/admin/v1/tenants/${A}/keys/${k.id}`, { token: tok });
        assert.ok(!again.text.includes(k.secret.slice(7)));

        assertError(await api('POST', `/admin/v1/tenants/${A}/keys/${old.id}/rotate`, { token: tok }), 409,
            { code: 'key_revoked' });
        const rev = await api('POST', `/admin/v1/tenants/${A}/keys/${k.id}/revoke`, { token: tok });
        assert.equal(rev.status, 200, rev.text);
        assert.equal(rev.json.status, 'revoked');
        assert.ok(!('secret' in rev.json));
        assertError(await api('POST', `/admin/v1/tenants/${A}/keys/${k.id}/revoke`, { token: tok }), 409,
            { code: 'key_revoked' });
        assertError(await api('PATCH', `/admin/v1/tenants/${A}/keys/${k.id}`, { token: tok, body: { status: 'active' } }),
            409, { code: 'key_revoked' });
        assertError(await api('POST', `/admin/v1/tenants/${A}/keys/00000000-0000-4000-8000-000000000000/revoke`,
            { token: tok }), 404);
        assertError(await api('POST', `/admin/v1/tenants/${A}/keys/nope/revoke`, { token: tok }), 404);
    });

    it('PATCH enables and disables, and sets allowed models, limits and expiry', T, async () => {
        const tok = S.tokens.tenant_admin;
        const A = S['tenant-a'].id;
        const k = await createKey(tok, A, { name: 'patchable' });
        const url = `/admin/v1/tenants/${A}/keys/${k.id}`;
        let r = await api('PATCH', url, { token: tok, body: { status: 'disabled' } });
        assert.equal(r.json.status, 'disabled', r.text);
        r = await api('PATCH', url, { token: tok, body: { limits: { usd_per_month: 0.1 } } });
        assert.ok(r.text.includes('"limits":{"usd_per_month":0.1}'), r.text);
        const limits = { tpm: 1000, concurrency: 4 };
        r = await api('PATCH', url, { token: tok, body: { status: 'active', allowed_models: ['a', 'b'], limits } });
        assert.deepEqual([r.json.status, r.json.allowed_models, r.json.limits], ['active', ['a', 'b'], limits]);
        r = await api('PATCH', url, {
            token: tok, body: { allowed_models: null, expires_at: '2098-05-06T07:08:09+02:00', name: 'renamed' },
        });
        assert.deepEqual([r.json.allowed_models, r.json.name], [null, 'renamed']);
        assert.equal(Date.parse(r.json.expires_at), Date.parse('2098-05-06T05:08:09Z'));
        r = await api('PATCH', url, { token: tok, body: { expires_at: null } });
        assert.equal(r.json.expires_at, null);
        const [row] = await sql(`SELECT status, allowed_models, limits, name, expires_at FROM api_keys WHERE id = ${q(k.id)}`);
        assert.deepEqual(row, { status: 'active', allowed_models: null, limits, name: 'renamed', expires_at: null });

        const bad = [
            [{ status: 'revoked' }, 'status'],
            [{ limits: { rpm: -1 } }, 'limits.rpm'],
            [{ limits: { rpm: 1.5 } }, 'limits.rpm'],
            [{ limits: { speed: 1 } }, 'limits.speed'],
            [{ limits: [] }, 'limits'],
            [{ allowed_models: [] }, 'allowed_models'],
            [{ allowed_models: ['a', 7] }, 'allowed_models[1]'],
            [{ allowed_models: ['a', 'a'] }, 'allowed_models[1]'],
            [{ expires_at: '2001-01-01T00:00:00Z' }, 'expires_at'],
            [{ expires_at: 'tomorrow' }, 'expires_at'],
            [{ expires_at: '2099-02-30T00:00:00Z' }, 'expires_at'],
            [{ name: '' }, 'name'],
            [{ secret: 'sk-leo-mine' }, 'secret'],
            [{ key_hash: 'kh1:00' }, 'key_hash'],
        ];
        for (const [body, param] of bad) {
            assertError(await api('PATCH', url, { token: tok, body }), 400, { param });
        }
        assertError(await api('PATCH', url, { token: tok, body: {} }), 400, { code: 'empty_change' });
        assertError(await api('POST', `/admin/v1/tenants/${A}/keys`, { token: tok, body: {} }), 400,
            { param: 'name', code: 'missing_field' });
        assertError(await api('POST', `/admin/v1/tenants/${A}/keys/${k.id}/revoke`, { token: tok, body: { why: 'x' } }),
            400, { param: 'why' });
        assertError(await api('POST', '/admin/v1/tenants/00000000-0000-4000-8000-000000000000/keys',
            { token: S.tokens.owner, body: { name: 'orphan' } }), 404);
        assertError(await api('GET', '/admin/v1/tenants/00000000-0000-4000-8000-000000000000/keys',
            { token: S.tokens.owner }), 404);
        const empty = await api('POST', '/admin/v1/tenants', { token: S.tokens.owner, body: { slug: 'keyless', name: 'K' } });
        const none = await api('GET', `/admin/v1/tenants/${empty.json.id}/keys`, { token: S.tokens.owner });
        assert.equal(none.status, 200);
        assert.deepEqual(none.json, { data: [], next_cursor: null });
    });
});

describe('SQL injection', () => {
    const NASTY = [
        "x'); DROP TABLE tenants; --",
        "' OR '1'='1",
        "'; SELECT pg_sleep(5); --",
        'Robert"); DROP TABLE users;--',
        '$1 $$ \\x00 %s %n',
    ];

    it('is harmless in every string parameter: stored literally or rejected', { timeout: 30000 }, async () => {
        const tok = S.tokens.owner;
        const A = S['tenant-a'].id;
        for (const s of NASTY) {
            /* free text is stored literally */
            const slug = `inj-${crypto.randomUUID().slice(0, 8)}`;
            const t = await api('POST', '/admin/v1/tenants', { token: tok, body: { slug, name: s } });
            assert.equal(t.status, 201, t.text);
            assert.equal(t.json.name, s);
            const [row] = await sql(`SELECT name FROM tenants WHERE id = ${q(t.json.id)}`);
            assert.equal(row.name, s);
            const p = await api('PATCH', `/admin/v1/tenants/${t.json.id}`, { token: tok, body: { name: `${s}!` } });
            assert.equal(p.json.name, `${s}!`);

            const k = await api('POST', `/admin/v1/tenants/${A}/keys`, { token: tok, body: { name: s, allowed_models: [s] } });
            assert.equal(k.status, 201, k.text);
            assert.deepEqual([k.json.name, k.json.allowed_models], [s, [s]]);
            const [krow] = await sql(`SELECT name, allowed_models FROM api_keys WHERE id = ${q(k.json.id)}`);
            assert.deepEqual(krow, { name: s, allowed_models: [s] });

            /* identifiers and formats are rejected */
            const rejected = async (method, p, body, param) =>
                assertError(await api(method, p, { token: tok, body }), 400, { param });
            await rejected('POST', '/admin/v1/tenants', { slug: s, name: 'x' }, 'slug');
            await rejected('PATCH', `/admin/v1/tenants/${t.json.id}`, { status: s }, 'status');
            await rejected('POST', '/admin/v1/users', { email: s, password: PASSWORD, role: 'viewer' }, 'email');
            await rejected('POST', '/admin/v1/users', { email: 'i@leo.test', password: PASSWORD, role: s }, 'role');
            assertError(await api('POST', '/admin/v1/users', {
                token: tok, body: { email: 'i@leo.test', password: PASSWORD, role: 'tenant_member', tenant_id: s },
            }), 400, { param: 'tenant_id' });
            await rejected('PATCH', `/admin/v1/tenants/${A}/keys/${k.json.id}`, { expires_at: s }, 'expires_at');
            await rejected('PATCH', `/admin/v1/tenants/${A}/keys/${k.json.id}`, { limits: { [s]: 1 } }, `limits.${s}`);
            /* the provider catalogue: free text (credential names, secrets, URL paths) is stored literally,
             * identifiers are rejected */
            const prov = await api('POST', '/admin/v1/providers', { token: tok, body: {
                name: `inj-${crypto.randomUUID().slice(0, 8)}`, type: 'openai',
                base_url: `https://inj.example.test/${encodeURIComponent(s)}`, api_version: s } });
            assert.equal(prov.status, 201, prov.text);
            assert.equal(prov.json.api_version, s);
            const cred = await api('POST', `/admin/v1/providers/${prov.json.id}/credentials`,
                { token: tok, body: { name: s, secret: `sk-${s}` } });
            assert.equal(cred.status, 201, cred.text);
            assert.equal(cred.json.name, s);
            const [crow] = await sql(`SELECT name FROM provider_credentials WHERE id = ${q(cred.json.id)}`);
            assert.equal(crow.name, s);
            await rejected('POST', '/admin/v1/providers', { name: s, type: 'openai', base_url: 'https://x.test' }, 'name');
            await rejected('POST', '/admin/v1/providers', { name: 'inj-t', type: s, base_url: 'https://x.test' }, 'type');
            await rejected('POST', '/admin/v1/providers', { name: 'inj-u', type: 'openai', base_url: s }, 'base_url');
            await rejected('POST', '/admin/v1/deployments', { provider_id: s, model: 'm' }, 'provider_id');
            await rejected('POST', '/admin/v1/models', { name: 'inj-m', deployments: [{ deployment_id: s }] },
                'deployments[0].deployment_id');
            await rejected('POST', '/admin/v1/models', { name: 'inj-m', strategy: s, deployments: [] }, 'strategy');
            if (/[\s"\\]/.test(s)) {
                await rejected('POST', '/admin/v1/deployments', { provider_id: prov.json.id, model: s }, 'model');
                await rejected('POST', '/admin/v1/models', { name: s, deployments: [] }, 'name');
            } else {
                const d = await api('POST', '/admin/v1/deployments', { token: tok, body: { provider_id: prov.json.id, model: s } });
                assert.equal(d.status, 201, d.text);
                assert.equal(d.json.model, s);
            }
            assertError(await api('GET', `/admin/v1/providers/${encodeURIComponent(s)}`, { token: tok }), 404);
            assertError(await api('DELETE', `/admin/v1/providers/${prov.json.id}/credentials/${encodeURIComponent(s)}`,
                { token: tok }), 404);
            assertError(await api('PATCH', `/admin/v1/models/${encodeURIComponent(s)}`, { token: tok, body: {} }), 404);

            const enc = encodeURIComponent(s);
            assertError(await api('GET', `/admin/v1/tenants/${enc}`, { token: tok }), 404);
            assertError(await api('GET', `/admin/v1/tenants/${A}/keys/${enc}`, { token: tok }), 404);
            assertError(await api('POST', `/admin/v1/tenants/${enc}/keys/${enc}/revoke`, { token: tok }), 404);
            assertError(await api('GET', `/admin/v1/tenants?cursor=${enc}`, { token: tok }), 400, { param: 'cursor' });
            assertError(await api('GET', `/admin/v1/tenants?limit=${enc}`, { token: tok }), 400, { param: 'limit' });
            assertError(await api('GET', `/admin/v1/audit?since=${enc}`, { token: tok }), 400, { param: 'since' });
            for (const name of ['action', 'target', 'actor']) {
                const r = await api('GET', `/admin/v1/audit?${name}=${enc}`, { token: tok });
                assert.equal(r.status, 200, r.text);
                assert.deepEqual(r.json.data, [], `audit ?${name}= matches nothing`);
            }
            assertError(await api('POST', '/admin/v1/login', { body: { email: `${s}@leo.test`, password: s } }),
                s.includes(' ') ? 400 : 401);
            assertError(await api('POST', '/admin/v1/login', { body: { email: OWNER.email, password: s } }), 401);
            assertError(await api('GET', '/admin/v1/me', { headers: { Authorization: `Bearer ${s}` } }), 401);
        }

        /* emails and passwords with quotes work as themselves */
        const email = "o'hara+x--@leo.test";
        const password = "pa'ss\"word; DROP TABLE users; --";
        const u = await api('POST', '/admin/v1/users', { token: tok, body: { email, password, role: 'viewer' } });
        assert.equal(u.status, 201, u.text);
        assert.equal(u.json.email, email);
        await login(email, password);
        assertError(await api('POST', '/admin/v1/login', { body: { email, password: "' OR '1'='1" } }), 401);

        const [{ tenants, users, keys }] = await sql('SELECT (SELECT count(*) FROM tenants)::int AS tenants, ' +
            '(SELECT count(*) FROM users)::int AS users, (SELECT count(*) FROM api_keys)::int AS keys');
        assert.ok(tenants >= 2 + NASTY.length && users > 5 && keys > NASTY.length);
    });
});

describe('audit log', () => {
    it('every write appended its entry; the log is queried by action, time and page', T, async () => {
        const tok = S.tokens.admin;
        const r = await api('GET', '/admin/v1/audit?limit=200', { token: tok });
        assert.equal(r.status, 200, r.text);
        const actions = new Set(r.json.data.map((e) => e.action));
        for (const a of ['tenant.create', 'tenant.update', 'user.create', 'key.create', 'key.update', 'key.revoke',
            'key.rotate', 'session.login', 'session.logout']) {
            assert.ok(actions.has(a), `an entry for ${a}`);
        }
        const ids = r.json.data.map((e) => e.id);
        assert.deepEqual(ids, [...ids].sort((x, y) => y - x), 'newest first');
        for (const e of r.json.data) assert.match(e.hash, /^[0-9a-f]{64}$/);

        const create = r.json.data.find((e) => e.action === 'key.create' && e.target === `key:${S.prodKey.id}`);
        assert.equal(create.actor, `user:${S.users.tenant_admin.id}`);
        assert.deepEqual(create.details,
            { name: 'production', last4: S.prodKey.last4, prefix: 'sk-leo-', tenant_id: S['tenant-a'].id });
        assert.ok(!JSON.stringify(r.json).includes(S.prodKey.secret.slice(7)), 'no secret in the audit log');

        const only = await api('GET', '/admin/v1/audit?action=key.rotate', { token: tok });
        assert.ok(only.json.data.length >= 1);
        assert.ok(only.json.data.every((e) => e.action === 'key.rotate'));
        const target = await api('GET', `/admin/v1/audit?target=${encodeURIComponent(`key:${S.prodKey.id}`)}`, { token: tok });
        assert.deepEqual(target.json.data.map((e) => e.action).sort(), ['key.create', 'key.rotate']);

        const future = await api('GET', '/admin/v1/audit?since=2090-01-01T00:00:00Z', { token: tok });
        assert.deepEqual(future.json.data, []);
        const past = await api('GET', '/admin/v1/audit?until=2000-01-01T00:00:00Z', { token: tok });
        assert.deepEqual(past.json.data, []);
        const since = encodeURIComponent(r.json.data[2].at);
        const recent = await api('GET', `/admin/v1/audit?since=${since}&limit=200`, { token: tok });
        assert.ok(recent.json.data.length >= 3);
        assert.ok(recent.json.data.every((e) => Date.parse(e.at) >= Date.parse(r.json.data[2].at)));

        const p1 = await api('GET', '/admin/v1/audit?limit=5', { token: tok });
        const p2 = await api('GET', `/admin/v1/audit?limit=5&cursor=${p1.json.next_cursor}`, { token: tok });
        assert.equal(p1.json.data.length, 5);
        assert.equal(p2.json.data.length, 5);
        assert.ok(p2.json.data[0].id < p1.json.data[4].id);
        assertError(await api('GET', '/admin/v1/audit?since=yesterday', { token: tok }), 400, { param: 'since' });
    });

    it('concurrent writes through the connection pool keep the chain in order', T, async () => {
        const tok = S.tokens.owner;
        const A = S['tenant-a'].id;
        const [{ before }] = await sql('SELECT count(*)::int AS before FROM audit_log');
        const writes = [];
        for (let i = 0; i < 40; i++) {
            writes.push(api('POST', `/admin/v1/tenants/${A}/keys`, { token: tok, body: { name: `burst-${i}` } }));
            writes.push(api('GET', `/admin/v1/tenants/${A}/keys?limit=5`, { token: tok }));
        }
        const results = await Promise.all(writes);
        for (const r of results) assert.ok(r.status === 200 || r.status === 201, r.text);
        const [{ after: n }] = await sql('SELECT count(*)::int AS after FROM audit_log');
        assert.equal(n, before + 40);
        const chain = await sql('SELECT id, encode(prev_hash, \'hex\') AS p, encode(hash, \'hex\') AS h FROM audit_log ' +
            'ORDER BY id');
        for (let i = 1; i < chain.length; i++) assert.equal(chain[i].p, chain[i - 1].h, `row ${chain[i].id}`);
    });

    it('clients that go away mid-request leave the daemon serving', T, async () => {
        const net = await import('node:net');
        const body = JSON.stringify({ email: OWNER.email, password: OWNER.password });
        await Promise.all(Array.from({ length: 20 }, (_, i) => new Promise((resolve) => {
            const sock = net.connect(port, '127.0.0.1', () => {
                sock.write(`POST /admin/v1/${i % 2 ? 'login' : 'tenants'} HTTP/1.1\r\nHost: x\r\n` +
                    `Authorization: Bearer ${S.tokens.owner}\r\nContent-Type: application/json\r\n` +
                    `Content-Length: ${body.length}\r\n\r\n${body}`);
                setImmediate(() => {
                    sock.destroy();
                    resolve();
                });
            });
            sock.on('error', resolve);
        })));
        const r = await api('GET', '/admin/v1/me', { token: S.tokens.owner });
        assert.equal(r.status, 200);
    });

    it('rejects UPDATE and DELETE of audit rows', T, async () => {
        await assert.rejects(pg.psql("UPDATE audit_log SET actor = 'x' WHERE id = 1;", { database: 'leo' }), /append-only/);
        await assert.rejects(pg.psql('DELETE FROM audit_log WHERE id = 1;', { database: 'leo' }), /append-only/);
        await assert.rejects(pg.psql('TRUNCATE audit_log;', { database: 'leo' }), /append-only/);
    });

    it('audit verify passes on the intact chain', T, async () => {
        const r = await cli(['audit', 'verify']);
        assert.equal(r.code, 0, r.stdout + r.stderr);
        const [{ n }] = await sql('SELECT count(*)::int AS n FROM audit_log');
        assert.match(r.stdout, new RegExp(`^audit log intact: ${n} rows, head [0-9a-f]{64}$`, 'm'));
        const [{ head }] = await sql("SELECT encode(hash, 'hex') AS head FROM audit_log ORDER BY id DESC LIMIT 1");
        assert.ok(r.stdout.includes(head));
    });

    it('audit verify reports the first edited row, and a removed row', T, async () => {
        const [{ id, details }] = await sql("SELECT id, details::text AS details FROM audit_log WHERE action = 'key.create' " +
            'ORDER BY id LIMIT 1');
        const tamper = (stmt) => pg.psql('ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;\n' + stmt +
            '\nALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;\n', { database: 'leo' });

        await tamper(`UPDATE audit_log SET details = details || '{"name":"forged"}' WHERE id = ${id};`);
        let r = await cli(['audit', 'verify']);
        assert.equal(r.code, 1, r.stdout + r.stderr);
        assert.match(r.stdout, new RegExp(`^audit log BROKEN at row ${id}: hash does not match`, 'm'));

        /* the original contents verify again: the hash covers the contents, nothing else */
        await tamper(`UPDATE audit_log SET details = ${q(details)}::jsonb WHERE id = ${id};`);
        r = await cli(['audit', 'verify']);
        assert.equal(r.code, 0, r.stdout + r.stderr);

        const [{ next }] = await sql(`SELECT min(id)::int AS next FROM audit_log WHERE id > ${id}`);
        await tamper(`DELETE FROM audit_log WHERE id = ${id};`);
        r = await cli(['audit', 'verify']);
        assert.equal(r.code, 1);
        assert.match(r.stdout, new RegExp(`^audit log BROKEN at row ${next}: prev_hash does not match`, 'm'));
    });
});

describe('database outage', () => {
    it('answers 503 while the database is down and serves again once it is back', { timeout: 45000 }, async () => {
        const token = S.tokens.viewer;
        assert.equal((await api('GET', '/admin/v1/tenants', { token })).status, 200);
        await pg.stopServer();
        try {
            assertError(await api('GET', '/admin/v1/tenants', { token }), 503, { code: 'database_unavailable' });
            assertError(await api('POST', '/admin/v1/login', { body: { email: OWNER.email, password: OWNER.password } }),
                503, { code: 'database_unavailable' });
            const health = await api('GET', '/admin/v1/health');
            assert.equal(health.status, 503);
            assert.equal(health.json.database_connections, 0);
        } finally {
            await pg.startServer();
        }
        const deadline = Date.now() + 20000;
        let last;
        for (;;) {
            last = await api('GET', '/admin/v1/tenants', { token });
            if (last.status === 200) break;
            assert.ok(Date.now() < deadline, `not serving again: ${last.status} ${last.text}`);
            await new Promise((r) => setTimeout(r, 100));
        }
        assert.ok(last.json.data.length >= 2);
        assert.ok(cp.stderr.json((j) => /database connection \d+ lost/.test(j.msg || '')).length >= 1);
    });

    it('the daemon and the tools refuse to start without a reachable database', T, async () => {
        const url = `host=127.0.0.1 port=${pg.port + 1 === 65536 ? 1 : pg.port + 1} user=postgres dbname=leo connect_timeout=2`;
        for (const args of [['serve', '--listen', '127.0.0.1:0'], ['migrate'], ['audit', 'verify']]) {
            const r = await new Promise((resolve) => {
                execFile(bin('leo-controlplane'), args, { env: childEnv({ DATABASE_URL: url }), timeout: 15000 },
                    (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stderr }));
            });
            assert.equal(r.code, 1, `${args[0]}: ${r.stderr}`);
            assert.match(r.stderr, /cannot connect to the database/);
            assert.doesNotMatch(r.stderr, SANITIZER_RE);
        }
        const none = await new Promise((resolve) => {
            execFile(bin('leo-controlplane'), ['migrate'], { env: childEnv({ DATABASE_URL: '' }), timeout: 15000 },
                (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stderr }));
        });
        assert.equal(none.code, 2);
        assert.match(none.stderr, /DATABASE_URL is not set/);
    });
});
