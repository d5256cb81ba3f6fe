/*
 * controlplane_tokens.test.mjs — admin API tokens, invitations and config validation, through HTTP against
 * leo-controlplane on a private PostgreSQL (lib/postgres.mjs).
 *
 * One cluster and one daemon for the file; the cases run in file order and share the tenants, users and
 * sessions the setup case creates. The roles × endpoints matrix for these routes lives with the others in
 * controlplane.test.mjs.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';

import { LineLog, bin } from './lib/harness.mjs';
import { adminRequest } from './lib/controlplane.mjs';
import { startPostgres } from './lib/postgres.mjs';

const T = { timeout: 30000 };
const OWNER = { email: 'owner@tokens.test', password: 'owner-password-0001' };
const PASSWORD = 'member-password-0001';
const KEY_HASH_SECRET = 'controlplane-tokens-secret-77a1';
const INJECTIONS = [
    "x'); DROP TABLE admin_tokens; --",
    "' OR '1'='1",
    "'; UPDATE invitations SET accepted_at = now(); --",
    '$1::text); DELETE FROM users; --',
];

let pg;
let cp;
let port;
const S = { tokens: {}, users: {}, secrets: [] };

/* ------------------------------------------------------------------------------------------------------------ */

const childEnv = (extra) => ({
    ...process.env,
    ASAN_OPTIONS: process.env.ASAN_OPTIONS || 'abort_on_error=0:detect_leaks=1',
    UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || 'print_stacktrace=1',
    LEO_KEY_HASH_SECRET: KEY_HASH_SECRET,
    ...extra,
});

async function startDaemon(env) {
    const proc = spawn(bin('leo-controlplane'), ['serve', '--listen', '127.0.0.1:0', '--db-pool', '4'], {
        env: childEnv(env),
        stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    const stderr = new LineLog(proc.stderr, 'controlplane stderr');
    const line = await stderr.waitForJson((j) => /^listening on /.test(j.msg || ''), {
        timeoutMs: 20000,
        what: '"listening on" line',
    });
    return {
        proc,
        stderr,
        port: Number(/:(\d+)$/.exec(line.msg)[1]),
        async stop() {
            proc.kill('SIGTERM');
            const info = await exited;
            if (!proc.stderr.readableEnded) await new Promise((resolve) => proc.stderr.once('close', resolve));
            const reports = stderr.sanitizerReports();
            if (reports.length) throw new Error('sanitizer reports:\n' + stderr.tail(80));
            return info;
        },
    };
}

/** One admin API request to the daemon (lib/controlplane.mjs adminRequest): {status, headers, text, json}. */
const api = (method, p, opts = {}) => adminRequest(port, method, p, opts);

function assertError(r, status, { code, param } = {}) {
    assert.equal(r.status, status, `expected ${status}, got ${r.status}: ${r.text}`);
    assert.ok(r.json && r.json.error, `no error object: ${r.text}`);
    assert.deepEqual(Object.keys(r.json.error).sort(), ['code', 'message', 'param', 'type']);
    if (code !== undefined) assert.equal(r.json.error.code, code, r.text);
    if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
    return r.json.error;
}

async function login(email, password) {
    const r = await api('POST', '/admin/v1/login', { body: { email, password } });
    assert.equal(r.status, 200, `login ${email}: ${r.text}`);
    return r.json.token;
}

async function createToken(token, body) {
    const r = await api('POST', '/admin/v1/tokens', { token, body });
    assert.equal(r.status, 201, r.text);
    return r.json;
}

async function invite(token, body) {
    const r = await api('POST', '/admin/v1/invitations', { token, body });
    assert.equal(r.status, 201, r.text);
    return r.json;
}

const sql = (s) => pg.query(s, { database: 'leo' });
const q = (s) => `'${s.replace(/'/g, "''")}'`;
const A = () => S.tenantA.id;
const B = () => S.tenantB.id;
let seq = 0;
const uniq = (tag) => `${tag}-${++seq}`;

/*
 * BLAKE2b (RFC 7693) with key, salt and personalisation, as libsodium's crypto_generichash computes it. The
 * token tests need the unkeyed BLAKE2b-256 admin tokens were stored under before hashes were keyed (to write
 * such a legacy row) and the keyed hash stored now (to check it); node:crypto has neither (its blake2b512 has a
 * fixed 64-byte output and takes no key). The first token test checks this code against node:crypto's
 * blake2b512; a mistake in it makes the legacy token or the stored-hash comparison fail, never pass.
 */
const B2_IV = [0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n, 0x510e527fade682d1n,
    0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n];
const B2_SIGMA = ['0123456789abcdef', 'ea489fd61c02b753', 'b8c052fdae367194', '7931dcbe265a40f8', '905724afe1bc683d',
    '2c6a0b834d75fe19', 'c51fed4a0763928b', 'db7ec13950f4862a', '6fe9b308c2d714a5', 'a2847615fb9e3cd0']
    .map((r) => [...r].map((x) => parseInt(x, 16)));
function blake2b(data, { outlen = 32, key = Buffer.alloc(0), salt = Buffer.alloc(16), personal = Buffer.alloc(16) } = {}) {
    const M = (1n << 64n) - 1n;
    const rotr = (x, n) => ((x >> n) | (x << (64n - n))) & M;
    const h = B2_IV.slice();
    h[0] ^= 0x01010000n ^ (BigInt(key.length) << 8n) ^ BigInt(outlen);
    for (let i = 0; i < 2; i++) {
        h[4 + i] ^= salt.readBigUInt64LE(8 * i);
        h[6 + i] ^= personal.readBigUInt64LE(8 * i);
    }
    const keyBlock = Buffer.alloc(key.length ? 128 : 0);
    key.copy(keyBlock);
    const input = Buffer.concat([keyBlock, Buffer.from(data)]);
    const blocks = Math.max(1, Math.ceil(input.length / 128));
    for (let b = 0; b < blocks; b++) {
        const last = b === blocks - 1;
        const block = Buffer.alloc(128);
        input.copy(block, 0, b * 128, Math.min(input.length, (b + 1) * 128));
        const m = Array.from({ length: 16 }, (_, i) => block.readBigUInt64LE(8 * i));
        const v = [...h, ...B2_IV];
        v[12] ^= BigInt(last ? input.length : (b + 1) * 128);
        if (last) v[14] ^= M;
        const G = (a, bb, c, d, x, y) => {
            v[a] = (v[a] + v[bb] + x) & M; v[d] = rotr(v[d] ^ v[a], 32n);
            v[c] = (v[c] + v[d]) & M; v[bb] = rotr(v[bb] ^ v[c], 24n);
            v[a] = (v[a] + v[bb] + y) & M; v[d] = rotr(v[d] ^ v[a], 16n);
            v[c] = (v[c] + v[d]) & M; v[bb] = rotr(v[bb] ^ v[c], 63n);
        };
        for (let r = 0; r < 12; r++) {
            const s = B2_SIGMA[r % 10].map((i) => m[i]);
            G(0, 4, 8, 12, s[0], s[1]); G(1, 5, 9, 13, s[2], s[3]); G(2, 6, 10, 14, s[4], s[5]); G(3, 7, 11, 15, s[6], s[7]);
            G(0, 5, 10, 15, s[8], s[9]); G(1, 6, 11, 12, s[10], s[11]); G(2, 7, 8, 13, s[12], s[13]); G(3, 4, 9, 14, s[14], s[15]);
        }
        for (let i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
    }
    const out = Buffer.alloc(64);
    h.forEach((x, i) => out.writeBigUInt64LE(x, 8 * i));
    return out.subarray(0, outlen);
}

/* The unkeyed hash of tokens stored before hashes were keyed (hash_kind 0), as hex. */
const unkeyedTokenHash = (token) => blake2b(Buffer.from(token)).toString('hex');

/* The keyed hash the daemon stores (hash_kind 1, controlplane/auth.h): the key hash secret from its passphrase
 * (common/keyhash.c), crypto_kdf subkey 1 of context "leoadmtk" from it, BLAKE2b-256 of the token keyed with that. */
function keyedTokenHash(token, passphrase = KEY_HASH_SECRET) {
    const secret = blake2b(Buffer.from(`leo-keyhash-v1:${passphrase}`));
    const salt = Buffer.alloc(16);
    salt.writeBigUInt64LE(1n);
    const personal = Buffer.alloc(16);
    personal.write('leoadmtk');
    const subkey = blake2b(Buffer.alloc(0), { key: secret, salt, personal });
    return blake2b(Buffer.from(token), { key: subkey }).toString('hex');
}

/* Everything a dry run must leave alone: row counts and the audit log's last id. */
async function footprint() {
    const [row] = await sql(`SELECT (SELECT count(*) FROM tenants)::int AS tenants, (SELECT count(*) FROM users)::int
        AS users, (SELECT count(*) FROM api_keys)::int AS keys, (SELECT count(*) FROM admin_tokens)::int AS tokens,
        (SELECT count(*) FROM invitations)::int AS invitations, (SELECT count(*) FROM providers)::int AS providers,
        (SELECT coalesce(max(id), 0)::int FROM audit_log) AS audit,
        (SELECT string_agg(name, ',' ORDER BY id) FROM tenants) AS tenant_names`);
    return row;
}

/* ------------------------------------------------------------------------------------------------------------ */

before(async () => {
    pg = await startPostgres();
    await pg.psql('CREATE DATABASE leo;');
    cp = await startDaemon({
        DATABASE_URL: `host=127.0.0.1 port=${pg.port} user=postgres dbname=leo connect_timeout=5`,
        LEO_BOOTSTRAP_OWNER_EMAIL: OWNER.email,
        LEO_BOOTSTRAP_OWNER_PASSWORD: OWNER.password,
    });
    port = cp.port;
}, { timeout: 60000 });

after(async () => {
    try {
        if (cp) {
            assert.deepEqual(await cp.stop(), { code: 0, signal: null }, 'leo-controlplane exit after SIGTERM');
            /* the whole log, now that the daemon has exited: no token or invitation secret in it */
            const log = cp.stderr.lines.map((l) => l.text).join('\n');
            assert.ok(S.secrets.length >= 3);
            for (const secret of S.secrets) assert.ok(!log.includes(secret.slice(7)), 'a secret is in the log');
        }
    } finally {
        if (pg) await pg.stop();
    }
}, { timeout: 60000 });

describe('setup', () => {
    it('two tenants and one user per role (tenant roles in A, one tenant admin in B)', T, async () => {
        S.tokens.owner = await login(OWNER.email, OWNER.password);
        const owner = S.tokens.owner;
        for (const [k, slug] of [['tenantA', 'tok-a'], ['tenantB', 'tok-b']]) {
            const r = await api('POST', '/admin/v1/tenants', { token: owner, body: { slug, name: slug } });
            assert.equal(r.status, 201, r.text);
            S[k] = r.json;
        }
        const users = [['admin'], ['operator'], ['viewer'], ['tenant_admin', A()], ['tenant_member', A()],
            ['tenant_admin_b', B(), 'tenant_admin']];
        for (const [name, tenant, role] of users) {
            const body = { email: `${name}@tokens.test`, password: PASSWORD, role: role || name };
            if (tenant) body.tenant_id = tenant;
            const r = await api('POST', '/admin/v1/users', { token: owner, body });
            assert.equal(r.status, 201, r.text);
            S.users[name] = r.json;
            S.tokens[name] = await login(body.email, PASSWORD);
        }
    });
});

describe('admin API tokens', () => {
    it('create returns the secret once; only its hash is stored; the list shows it masked', T, async () => {
        const t = await createToken(S.tokens.owner, { name: 'ci', role: 'admin' });
        assert.match(t.token, /^leo_at_[A-Za-z0-9_-]{43}$/);
        assert.equal(t.name, 'ci');
        assert.equal(t.role, 'admin');
        assert.equal(t.tenant_id, null);
        assert.equal(t.status, 'active');
        assert.equal(t.expires_at, null);
        assert.equal(t.last_used_at, null);
        assert.equal(t.created_by, `user:${(await api('GET', '/admin/v1/me', { token: S.tokens.owner })).json.user.id}`);
        assert.equal(t.masked, `leo_at_…${t.token.slice(-4)}`);
        S.ci = t;

        const list = await api('GET', '/admin/v1/tokens', { token: S.tokens.owner });
        assert.equal(list.status, 200, list.text);
        const row = list.json.data.find((x) => x.id === t.id);
        assert.equal(row.masked, t.masked);
        assert.equal(row.last4, t.token.slice(-4));
        assert.equal(row.token, undefined);
        assert.ok(!list.text.includes(t.token.slice(7)), 'the list never shows the secret');

        const dump = await pg.psql("SELECT string_agg(t::text, '') FROM admin_tokens t;", { database: 'leo' });
        assert.ok(!dump.includes(t.token.slice(7)), 'the secret is not stored');
        const [{ n }] = await sql(`SELECT count(*)::int AS n FROM admin_tokens WHERE octet_length(token_hash) = 32
            AND id = ${q(t.id)}`);
        assert.equal(n, 1);
        const audit = await pg.psql("SELECT string_agg(l::text, '') FROM audit_log l;", { database: 'leo' });
        assert.ok(!audit.includes(t.token.slice(7)), 'the secret is not in the audit log');
        const [entry] = await sql(`SELECT actor, action, details FROM audit_log WHERE target = ${q(`token:${t.id}`)}`);
        assert.equal(entry.action, 'token.create');
        assert.equal(entry.details.role, 'admin');
        S.secrets.push(t.token);
    });

    it('authenticates like a session, with the token as the audited actor of its writes', T, async () => {
        const tok = S.ci.token;
        const me = await api('GET', '/admin/v1/me', { token: tok });
        assert.equal(me.status, 200, me.text);
        assert.equal(me.json.user, null);
        assert.deepEqual(me.json.memberships, [{ role: 'admin', tenant_id: null }]);
        assert.equal(me.json.token.id, S.ci.id);

        const t = await api('POST', '/admin/v1/tenants', { token: tok, body: { slug: 'made-by-token', name: 'T' } });
        assert.equal(t.status, 201, t.text);
        const k = await api('POST', `/admin/v1/tenants/${t.json.id}/keys`, { token: tok, body: { name: 'k' } });
        assert.equal(k.status, 201, k.text);
        assert.equal(k.json.created_by, null);
        const rows = await sql(`SELECT actor, action FROM audit_log WHERE target IN (${q(`tenant:${t.json.id}`)},
            ${q(`key:${k.json.id}`)}) ORDER BY id`);
        assert.deepEqual(rows, [
            { actor: `token:${S.ci.id}`, action: 'tenant.create' },
            { actor: `token:${S.ci.id}`, action: 'key.create' },
        ]);
        const listed = (await api('GET', '/admin/v1/tokens', { token: S.tokens.owner })).json.data.find((x) => x.id === S.ci.id);
        assert.ok(listed.last_used_at, 'last_used_at is set once the token is used');
        const access = await cp.stderr.waitForJson((j) => j.type === 'access' && j.token === S.ci.id &&
            j.path === '/admin/v1/me');
        assert.equal(access.user, null);
        assertError(await api('POST', '/admin/v1/logout', { token: tok }), 400, { code: 'invalid_value' });
    });

    it('holds exactly the permissions of its role', T, async () => {
        const v = await createToken(S.tokens.owner, { name: 'read-only', role: 'viewer' });
        assert.equal((await api('GET', '/admin/v1/tenants', { token: v.token })).status, 200);
        assert.equal((await api('GET', '/admin/v1/audit', { token: v.token })).status, 200);
        assertError(await api('POST', '/admin/v1/tenants', { token: v.token, body: { slug: uniq('x'), name: 'x' } }), 403,
            { code: 'forbidden' });
        const m = await createToken(S.tokens.tenant_admin, { name: 'member-a', role: 'tenant_member', tenant_id: A() });
        assert.equal((await api('GET', `/admin/v1/tenants/${A()}/keys`, { token: m.token })).status, 200);
        assertError(await api('GET', `/admin/v1/tenants/${B()}/keys`, { token: m.token }), 403, { code: 'forbidden' });
        assertError(await api('POST', `/admin/v1/tenants/${A()}/keys`, { token: m.token, body: { name: 'x' } }), 403,
            { code: 'forbidden' });
    });

    it('is refused once revoked; revoking is audited and final', T, async () => {
        const t = await createToken(S.tokens.admin, { name: 'short-lived', role: 'operator' });
        S.secrets.push(t.token);
        assert.equal((await api('GET', '/admin/v1/tenants', { token: t.token })).status, 200);
        const r = await api('POST', `/admin/v1/tokens/${t.id}/revoke`, { token: S.tokens.admin });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.status, 'revoked');
        assert.ok(r.json.revoked_at);
        assertError(await api('GET', '/admin/v1/tenants', { token: t.token }), 401, { code: 'invalid_session' });
        assertError(await api('POST', `/admin/v1/tokens/${t.id}/revoke`, { token: S.tokens.admin }), 409,
            { code: 'token_revoked' });
        const [entry] = await sql(`SELECT actor, action FROM audit_log WHERE target = ${q(`token:${t.id}`)}
            AND action = 'token.revoke'`);
        assert.equal(entry.actor, `user:${S.users.admin.id}`);
        assertError(await api('POST', '/admin/v1/tokens/00000000-0000-4000-8000-000000000000/revoke',
            { token: S.tokens.admin }), 404, { code: 'not_found' });
        assertError(await api('GET', '/admin/v1/me', { token: 'leo_at_' + 'A'.repeat(43) }), 401,
            { code: 'invalid_session' });
    });

    it('is refused once expired; an expiry in the past is refused at creation', T, async () => {
        assertError(await api('POST', '/admin/v1/tokens', {
            token: S.tokens.owner, body: { name: 'old', role: 'viewer', expires_at: '2020-01-01T00:00:00Z' },
        }), 400, { code: 'invalid_value', param: 'expires_at' });
        const t = await createToken(S.tokens.owner, { name: 'expiring', role: 'viewer', expires_at: '2099-01-01T00:00:00Z' });
        assert.equal(t.expires_at, '2099-01-01T00:00:00+00:00');
        assert.equal((await api('GET', '/admin/v1/tenants', { token: t.token })).status, 200);
        await pg.psql(`UPDATE admin_tokens SET expires_at = now() - interval '1 second' WHERE id = ${q(t.id)};`,
            { database: 'leo' });
        assertError(await api('GET', '/admin/v1/tenants', { token: t.token }), 401, { code: 'invalid_session' });
        const listed = (await api('GET', '/admin/v1/tokens?limit=200', { token: S.tokens.owner })).json.data;
        assert.equal(listed.find((x) => x.id === t.id).status, 'expired');
    });

    it('is stored as a hash keyed with the daemon secret; a token stored unkeyed works and is re-hashed on use', T,
        async () => {
            /* the BLAKE2b above agrees with OpenSSL's where both apply */
            for (const s of ['', 'abc', 'x'.repeat(128), 'leo_at_'.repeat(40)])
                assert.equal(blake2b(Buffer.from(s), { outlen: 64 }).toString('hex'),
                    crypto.createHash('blake2b512').update(s).digest('hex'), `blake2b512 of ${s.length} bytes`);

            const t = await createToken(S.tokens.owner, { name: 'keyed', role: 'viewer' });
            S.secrets.push(t.token);
            assert.equal((await api('GET', '/admin/v1/me', { token: t.token })).status, 200);
            const [row] = await sql(`SELECT hash_kind, encode(token_hash, 'hex') AS hash FROM admin_tokens
                WHERE id = ${q(t.id)}`);
            assert.equal(row.hash_kind, 1);
            assert.equal(row.hash, keyedTokenHash(t.token), 'keyed with the subkey of LEO_KEY_HASH_SECRET');
            assert.notEqual(row.hash, unkeyedTokenHash(t.token));
            assert.notEqual(row.hash, keyedTokenHash(t.token, 'another-secret'));

            /* a token made before this change: a row holding the unkeyed hash, as the daemon used to write it */
            const legacy = `leo_at_${crypto.randomBytes(32).toString('base64url')}`;
            S.secrets.push(legacy);
            const id = crypto.randomUUID();
            await pg.psql(`INSERT INTO admin_tokens (id, token_hash, hash_kind, name, role, prefix, last4, created_by)
                VALUES (${q(id)}, decode(${q(unkeyedTokenHash(legacy))}, 'hex'), 0, 'legacy', 'viewer', 'leo_at_',
                ${q(legacy.slice(-4))}, 'test:legacy');`, { database: 'leo' });
            const me = await api('GET', '/admin/v1/me', { token: legacy });
            assert.equal(me.status, 200, me.text);
            assert.equal(me.json.token.id, id);
            const [after] = await sql(`SELECT hash_kind, encode(token_hash, 'hex') AS hash, last_used_at
                FROM admin_tokens WHERE id = ${q(id)}`);
            assert.equal(after.hash_kind, 1, 're-hashed on its first use');
            assert.equal(after.hash, keyedTokenHash(legacy));
            assert.ok(after.last_used_at);
            /* found by its keyed hash from now on */
            assert.equal((await api('GET', '/admin/v1/tenants', { token: legacy })).status, 200);

            /* the kinds are not interchangeable: an unkeyed hash marked keyed, or a keyed one marked legacy, is
             * not found */
            const mislabelled = [[`leo_at_${crypto.randomBytes(32).toString('base64url')}`, 1, unkeyedTokenHash],
                [`leo_at_${crypto.randomBytes(32).toString('base64url')}`, 0, keyedTokenHash]];
            for (const [tok, kind, hash] of mislabelled) {
                await pg.psql(`INSERT INTO admin_tokens (token_hash, hash_kind, name, role, prefix, last4, created_by)
                    VALUES (decode(${q(hash(tok))}, 'hex'), ${kind}, 'mislabelled', 'viewer', 'leo_at_',
                    ${q(tok.slice(-4))}, 'test:legacy');`, { database: 'leo' });
                assertError(await api('GET', '/admin/v1/me', { token: tok }), 401, { code: 'invalid_session' });
            }
        });

    it('never carries a role above its creator', T, async () => {
        assertError(await api('POST', '/admin/v1/tokens', { token: S.tokens.admin, body: { name: 'x', role: 'owner' } }),
            403, { code: 'forbidden', param: 'role' });
        assertError(await api('POST', '/admin/v1/tokens', { token: S.ci.token, body: { name: 'x', role: 'owner' } }),
            403, { code: 'forbidden', param: 'role' });
        assertError(await api('POST', '/admin/v1/tokens', { token: S.tokens.tenant_admin, body: { name: 'x', role: 'admin' } }),
            403, { code: 'forbidden' });
        assertError(await api('POST', '/admin/v1/tokens', {
            token: S.tokens.tenant_admin, body: { name: 'x', role: 'tenant_admin', tenant_id: B() },
        }), 403, { code: 'forbidden' });
        for (const who of ['operator', 'viewer', 'tenant_member']) {
            assertError(await api('POST', '/admin/v1/tokens', {
                token: S.tokens[who], body: { name: 'x', role: 'tenant_member', tenant_id: A() },
            }), 403, { code: 'forbidden' });
        }
        /* a token made by a token is bounded the same way */
        const op = await createToken(S.ci.token, { name: 'op-from-token', role: 'operator' });
        assert.equal(op.created_by, `token:${S.ci.id}`);
        assertError(await api('POST', '/admin/v1/tokens', { token: op.token, body: { name: 'x', role: 'viewer' } }), 403,
            { code: 'forbidden' });
        const [{ n }] = await sql("SELECT count(*)::int AS n FROM admin_tokens WHERE name = 'x'");
        assert.equal(n, 0);
    });

    it("a tenant admin sees and revokes only its own tenant's tokens", T, async () => {
        const b = await createToken(S.tokens.tenant_admin_b, { name: 'b-token', role: 'tenant_member', tenant_id: B() });
        const list = await api('GET', '/admin/v1/tokens?limit=200', { token: S.tokens.tenant_admin });
        assert.equal(list.status, 200, list.text);
        assert.ok(list.json.data.length >= 1);
        for (const t of list.json.data) assert.equal(t.tenant_id, A(), JSON.stringify(t));
        assertError(await api('POST', `/admin/v1/tokens/${b.id}/revoke`, { token: S.tokens.tenant_admin }), 404,
            { code: 'not_found' });
        assertError(await api('POST', `/admin/v1/tokens/${S.ci.id}/revoke`, { token: S.tokens.tenant_admin }), 404,
            { code: 'not_found' });
        const [row] = await sql(`SELECT revoked_at FROM admin_tokens WHERE id = ${q(b.id)}`);
        assert.equal(row.revoked_at, null);
        assert.equal((await api('GET', `/admin/v1/tenants/${B()}`, { token: b.token })).status, 200);
        const bList = await api('GET', '/admin/v1/tokens?limit=200', { token: S.tokens.tenant_admin_b });
        assert.deepEqual(bList.json.data.map((t) => t.id), [b.id]);
    });

    it('validates every field and stores SQL-injection strings as plain data', T, async () => {
        const owner = S.tokens.owner;
        assertError(await api('POST', '/admin/v1/tokens', { token: owner, body: { role: 'viewer' } }), 400,
            { code: 'missing_field', param: 'name' });
        assertError(await api('POST', '/admin/v1/tokens', { token: owner, body: { name: 'x' } }), 400,
            { code: 'missing_field', param: 'role' });
        assertError(await api('POST', '/admin/v1/tokens', { token: owner, body: { name: 'x', role: 'viewer', tenant_id: A() } }),
            400, { code: 'invalid_value', param: 'tenant_id' });
        assertError(await api('POST', '/admin/v1/tokens', { token: owner, body: { name: 'x', role: 'tenant_member' } }), 400,
            { code: 'missing_field', param: 'tenant_id' });
        assertError(await api('POST', '/admin/v1/tokens', { token: owner, body: { name: 'x', role: 'viewer', extra: 1 } }),
            400, { code: 'unknown_field', param: 'extra' });
        assertError(await api('POST', '/admin/v1/tokens', {
            token: owner, body: { name: 'x', role: 'tenant_member', tenant_id: '00000000-0000-4000-8000-000000000000' },
        }), 400, { code: 'invalid_value', param: 'tenant_id' });
        for (const s of INJECTIONS) {
            const t = await createToken(owner, { name: s, role: 'viewer' });
            assert.equal(t.name, s);
            assertError(await api('POST', '/admin/v1/tokens', { token: owner, body: { name: 'x', role: s } }), 400,
                { param: 'role' });
            assertError(await api('POST', '/admin/v1/tokens', {
                token: owner, body: { name: 'x', role: 'tenant_member', tenant_id: s },
            }), 400, { param: 'tenant_id' });
            assertError(await api('POST', '/admin/v1/tokens', { token: owner, body: { name: 'x', role: 'viewer', expires_at: s } }),
                400, { param: 'expires_at' });
            assertError(await api('POST', `/admin/v1/tokens/${encodeURIComponent(s)}/revoke`, { token: owner }), 404);
            assertError(await api('GET', '/admin/v1/me', { token: `leo_at_${s}` }), 401);
        }
        const [{ n }] = await sql(`SELECT count(*)::int AS n FROM admin_tokens WHERE name IN (${INJECTIONS.map(q).join(',')})`);
        assert.equal(n, INJECTIONS.length);
        const [{ live }] = await sql('SELECT count(*)::int AS live FROM admin_tokens WHERE revoked_at IS NULL');
        assert.ok(live > INJECTIONS.length, 'no token was revoked by an injection');
    });
});

describe('invitations', () => {
    it('an invitation is shown once, listed while pending, and accepted into a user with the invited role', T,
        async () => {
            const inv = await invite(S.tokens.admin, { email: 'Invitee@Tokens.TEST', role: 'operator' });
            assert.match(inv.token, /^leo_inv_[A-Za-z0-9_-]{43}$/);
            S.secrets.push(inv.token);
            assert.equal(inv.email, 'invitee@tokens.test');
            assert.equal(inv.status, 'pending');
            assert.equal(inv.invited_by, `user:${S.users.admin.id}`);
            const ttl = Date.parse(inv.expires_at) - Date.parse(inv.created_at);
            assert.equal(ttl, 7 * 24 * 3600e3);
            const list = await api('GET', '/admin/v1/invitations', { token: S.tokens.admin });
            assert.ok(list.json.data.some((i) => i.id === inv.id));
            assert.ok(!list.text.includes(inv.token.slice(8)), 'the list never shows the token');
            const dump = await pg.psql("SELECT string_agg(i::text, '') FROM invitations i;", { database: 'leo' });
            assert.ok(!dump.includes(inv.token.slice(8)), 'the token is not stored');

            assertError(await api('POST', '/admin/v1/invitations/accept', {
                body: { token: 'leo_inv_' + 'B'.repeat(43), password: PASSWORD },
            }), 404, { code: 'not_found' });
            assertError(await api('POST', '/admin/v1/invitations/accept', { body: { token: inv.token, password: 'short' } }),
                400, { code: 'invalid_value', param: 'password' });
            const ok = await api('POST', '/admin/v1/invitations/accept', { body: { token: inv.token, password: PASSWORD } });
            assert.equal(ok.status, 201, ok.text);
            assert.equal(ok.json.email, 'invitee@tokens.test');
            assert.deepEqual(ok.json.memberships, [{ role: 'operator', tenant_id: null }]);
            const tok = await login('invitee@tokens.test', PASSWORD);
            const me = await api('GET', '/admin/v1/me', { token: tok });
            assert.deepEqual(me.json.memberships, [{ role: 'operator', tenant_id: null }]);
            assertError(await api('POST', '/admin/v1/invitations/accept', { body: { token: inv.token, password: PASSWORD } }),
                404, { code: 'not_found' });
            const after = await api('GET', '/admin/v1/invitations?limit=200', { token: S.tokens.admin });
            assert.ok(!after.json.data.some((i) => i.id === inv.id), 'an accepted invitation is not pending');
            const rows = await sql(`SELECT actor, action FROM audit_log WHERE target = ${q(`invitation:${inv.id}`)} ORDER BY id`);
            assert.deepEqual(rows, [
                { actor: `user:${S.users.admin.id}`, action: 'invitation.create' },
                { actor: `user:${ok.json.id}`, action: 'invitation.accept' },
            ]);
        });

    it('two accepts of one invitation at the same time: exactly one succeeds', T, async () => {
        for (let round = 0; round < 3; round++) {
            const email = `${uniq('race')}@tokens.test`;
            const inv = await invite(S.tokens.owner, { email, role: 'tenant_member', tenant_id: A() });
            const results = await Promise.all(Array.from({ length: 4 }, (_, i) => api('POST', '/admin/v1/invitations/accept', {
                body: { token: inv.token, password: `${PASSWORD}-${i}` },
            })));
            const statuses = results.map((r) => r.status).sort();
            assert.deepEqual(statuses, [201, 404, 404, 404], results.map((r) => r.text).join('\n'));
            const [{ n }] = await sql(`SELECT count(*)::int AS n FROM users WHERE email = ${q(email)}`);
            assert.equal(n, 1);
            const [{ a }] = await sql(`SELECT count(*)::int AS a FROM audit_log WHERE action = 'invitation.accept'
                AND target = ${q(`invitation:${inv.id}`)}`);
            assert.equal(a, 1);
        }
    });

    it('the inviter can only grant what it could grant by creating the user', T, async () => {
        assertError(await api('POST', '/admin/v1/invitations', {
            token: S.tokens.admin, body: { email: 'would-be-owner@tokens.test', role: 'owner' },
        }), 403, { code: 'forbidden', param: 'role' });
        assertError(await api('POST', '/admin/v1/invitations', {
            token: S.tokens.tenant_admin, body: { email: 'would-be-admin@tokens.test', role: 'admin' },
        }), 403, { code: 'forbidden' });
        assertError(await api('POST', '/admin/v1/invitations', {
            token: S.tokens.tenant_admin, body: { email: 'intruder@tokens.test', role: 'tenant_admin', tenant_id: B() },
        }), 403, { code: 'forbidden' });
        for (const who of ['operator', 'viewer', 'tenant_member']) {
            assertError(await api('POST', '/admin/v1/invitations', {
                token: S.tokens[who], body: { email: 'someone@tokens.test', role: 'tenant_member', tenant_id: A() },
            }), 403, { code: 'forbidden' });
        }
        const ok = await invite(S.tokens.tenant_admin, { email: 'a-member@tokens.test', role: 'tenant_member', tenant_id: A() });
        assert.equal(ok.tenant_id, A());
        const [{ n }] = await sql(`SELECT count(*)::int AS n FROM invitations WHERE email IN ('would-be-owner@tokens.test',
            'would-be-admin@tokens.test', 'intruder@tokens.test', 'someone@tokens.test')`);
        assert.equal(n, 0);
        assertError(await api('POST', '/admin/v1/invitations', {
            token: S.tokens.owner, body: { email: 'ADMIN@tokens.test', role: 'viewer' },
        }), 409, { code: 'already_exists', param: 'email' });
    });

    it("a tenant admin sees and revokes only its own tenant's invitations", T, async () => {
        const b = await invite(S.tokens.tenant_admin_b, { email: 'b-member@tokens.test', role: 'tenant_member', tenant_id: B() });
        const g = await invite(S.tokens.owner, { email: 'global-viewer@tokens.test', role: 'viewer' });
        const list = await api('GET', '/admin/v1/invitations?limit=200', { token: S.tokens.tenant_admin });
        assert.equal(list.status, 200, list.text);
        assert.ok(list.json.data.length >= 1);
        for (const i of list.json.data) assert.equal(i.tenant_id, A(), JSON.stringify(i));
        for (const id of [b.id, g.id]) {
            assertError(await api('POST', `/admin/v1/invitations/${id}/revoke`, { token: S.tokens.tenant_admin }), 404,
                { code: 'not_found' });
        }
        const rows = await sql(`SELECT revoked_at FROM invitations WHERE id IN (${q(b.id)}, ${q(g.id)})`);
        assert.deepEqual(rows, [{ revoked_at: null }, { revoked_at: null }]);
        S.invB = b;
    });

    it('a revoked or expired invitation cannot be accepted', T, async () => {
        const r = await api('POST', `/admin/v1/invitations/${S.invB.id}/revoke`, { token: S.tokens.tenant_admin_b });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.status, 'revoked');
        assertError(await api('POST', `/admin/v1/invitations/${S.invB.id}/revoke`, { token: S.tokens.tenant_admin_b }), 409,
            { code: 'invitation_not_pending' });
        assertError(await api('POST', '/admin/v1/invitations/accept', { body: { token: S.invB.token, password: PASSWORD } }),
            404, { code: 'not_found' });
        const [entry] = await sql(`SELECT actor FROM audit_log WHERE action = 'invitation.revoke'
            AND target = ${q(`invitation:${S.invB.id}`)}`);
        assert.equal(entry.actor, `user:${S.users.tenant_admin_b.id}`);

        const e = await invite(S.tokens.owner, { email: 'late@tokens.test', role: 'viewer' });
        await pg.psql(`UPDATE invitations SET expires_at = now() - interval '1 second' WHERE id = ${q(e.id)};`,
            { database: 'leo' });
        assertError(await api('POST', '/admin/v1/invitations/accept', { body: { token: e.token, password: PASSWORD } }),
            404, { code: 'not_found' });
        const list = await api('GET', '/admin/v1/invitations?limit=200', { token: S.tokens.owner });
        assert.ok(!list.json.data.some((i) => i.id === e.id));
        const [{ n }] = await sql("SELECT count(*)::int AS n FROM users WHERE email IN ('late@tokens.test', 'b-member@tokens.test')");
        assert.equal(n, 0);
    });

    it('validates every field and treats SQL-injection strings as data', T, async () => {
        const owner = S.tokens.owner;
        assertError(await api('POST', '/admin/v1/invitations', { token: owner, body: { role: 'viewer' } }), 400,
            { code: 'missing_field', param: 'email' });
        assertError(await api('POST', '/admin/v1/invitations/accept', { body: { password: PASSWORD } }), 400,
            { code: 'missing_field', param: 'token' });
        assertError(await api('POST', '/admin/v1/invitations/accept', { body: { token: 'x', password: PASSWORD, role: 'owner' } }),
            400, { code: 'unknown_field', param: 'role' });
        const before = await sql('SELECT count(*)::int AS n FROM invitations WHERE accepted_at IS NULL AND revoked_at IS NULL');
        for (const s of INJECTIONS) {
            assertError(await api('POST', '/admin/v1/invitations', { token: owner, body: { email: s, role: 'viewer' } }), 400,
                { param: 'email' });
            assertError(await api('POST', '/admin/v1/invitations', { token: owner, body: { email: 'i@tokens.test', role: s } }),
                400, { param: 'role' });
            assertError(await api('POST', '/admin/v1/invitations', {
                token: owner, body: { email: 'i@tokens.test', role: 'tenant_member', tenant_id: s },
            }), 400, { param: 'tenant_id' });
            assertError(await api('POST', '/admin/v1/invitations/accept', { body: { token: s, password: PASSWORD } }), 404);
            assertError(await api('POST', '/admin/v1/invitations/accept', {
                body: { token: `leo_inv_${s}`, password: `${s}-long-enough` },
            }), 404);
            assertError(await api('POST', `/admin/v1/invitations/${encodeURIComponent(s)}/revoke`, { token: owner }), 404);
        }
        /* an email that is valid and carries quotes is stored as it is */
        const odd = await invite(owner, { email: "o'hara--@tokens.test", role: 'viewer' });
        assert.equal(odd.email, "o'hara--@tokens.test");
        const after = await sql('SELECT count(*)::int AS n FROM invitations WHERE accepted_at IS NULL AND revoked_at IS NULL');
        assert.equal(after[0].n, before[0].n + 1);
    });
});

describe('config validation', () => {
    const validate = (token, body) => api('POST', '/admin/v1/config/validate', { token, body });

    it('answers valid or the field at fault, through the real validation, and writes nothing', T, async () => {
        const owner = S.tokens.owner;
        const before = await footprint();
        const cases = [
            [{ kind: 'tenant', action: 'create', body: { slug: 'dry-run', name: 'Dry' } }, null],
            [{ kind: 'tenant', action: 'create', body: { slug: 'Not A Slug', name: 'Dry' } }, 'slug'],
            [{ kind: 'tenant', action: 'create', body: { slug: 'ok-slug' } }, 'name'],
            [{ kind: 'tenant', action: 'update', tenant_id: A(), body: { name: 'renamed' } }, null],
            [{ kind: 'tenant', action: 'update', tenant_id: A(), body: { slug: 'x' } }, 'slug'],
            [{ kind: 'tenant', action: 'update', tenant_id: A(), body: {} }, null, 'empty_change'],
            [{ kind: 'key', action: 'create', tenant_id: A(), body: { name: 'k', limits: { rpm: 10 } } }, null],
            [{ kind: 'key', action: 'create', tenant_id: A(), body: { name: 'k', limits: { rpm: -1 } } }, 'limits.rpm'],
            [{ kind: 'key', action: 'create', tenant_id: A(), body: { name: 'k', allowed_models: ['a', 'a'] } },
                'allowed_models[1]'],
            [{ kind: 'key', action: 'update', tenant_id: A(), id: '00000000-0000-4000-8000-000000000001',
                body: { status: 'paused' } }, 'status'],
            [{ kind: 'user', action: 'create', body: { email: 'dry@tokens.test', password: PASSWORD, role: 'viewer' } }, null],
            [{ kind: 'user', action: 'create', body: { email: 'dry@tokens.test', password: 'short', role: 'viewer' } },
                'password'],
            [{ kind: 'provider', action: 'create', body: { name: 'p', type: 'openai', base_url: 'ftp://x' } }, 'base_url'],
            [{ kind: 'provider', action: 'create', body: { name: 'p', type: 'openai', base_url: 'https://api.example' } }, null],
            [{ kind: 'token', action: 'create', body: { name: 't', role: 'viewer' } }, null],
            [{ kind: 'token', action: 'create', body: { name: 't', role: 'viewer', expires_at: 'soon' } }, 'expires_at'],
            [{ kind: 'invitation', action: 'create', body: { email: 'dry-invite@tokens.test', role: 'viewer' } }, null],
            [{ kind: 'invitation', action: 'create', body: { email: 'not-an-email', role: 'viewer' } }, 'email'],
        ];
        for (const [body, field, code] of cases) {
            const r = await validate(owner, body);
            assert.equal(r.status, 200, `${JSON.stringify(body)}: ${r.text}`);
            if (field === null && code === undefined) {
                assert.deepEqual(r.json, { valid: true }, JSON.stringify(body));
            } else {
                assert.equal(r.json.valid, false, JSON.stringify(body));
                assert.equal(r.json.errors.length, 1);
                assert.equal(r.json.errors[0].field, field, `${JSON.stringify(body)}: ${r.text}`);
                assert.equal(typeof r.json.errors[0].message, 'string');
            }
        }
        assert.deepEqual(await footprint(), before, 'a dry run changes nothing and audits nothing');
    });

    it("checks the real endpoint's permission: what the caller could not do is 403, not valid", T, async () => {
        const before = await footprint();
        assertError(await validate(S.tokens.viewer, { kind: 'tenant', action: 'create', body: { slug: 'v', name: 'v' } }),
            403, { code: 'forbidden' });
        assertError(await validate(S.tokens.tenant_admin, {
            kind: 'key', action: 'create', tenant_id: B(), body: { name: 'k' },
        }), 403, { code: 'forbidden' });
        assertError(await validate(S.tokens.admin, {
            kind: 'user', action: 'create', body: { email: 'o@tokens.test', password: PASSWORD, role: 'owner' },
        }), 403, { code: 'forbidden', param: 'role' });
        assertError(await validate(S.tokens.tenant_admin, { kind: 'token', action: 'create', body: { name: 't', role: 'admin' } }),
            403, { code: 'forbidden' });
        const ok = await validate(S.tokens.tenant_admin, { kind: 'key', action: 'create', tenant_id: A(), body: { name: 'k' } });
        assert.deepEqual(ok.json, { valid: true });
        const viaToken = await validate(S.ci.token, { kind: 'tenant', action: 'create', body: { slug: 'tok', name: 'T' } });
        assert.deepEqual(viaToken.json, { valid: true });
        assertError(await validate(undefined, { kind: 'tenant', action: 'create', body: {} }), 401, { code: 'missing_session' });
        assert.deepEqual(await footprint(), before);
    });

    it('rejects a malformed validation request as a request error', T, async () => {
        const owner = S.tokens.owner;
        const before = await footprint();
        const bad = [
            [{ action: 'create', body: {} }, 'missing_field', 'kind'],
            [{ kind: 'tenant', body: {} }, 'missing_field', 'action'],
            [{ kind: 'galaxy', action: 'create', body: {} }, 'invalid_value', 'kind'],
            [{ kind: 'user', action: 'update', body: {} }, 'invalid_value', 'action'],
            [{ kind: 'tenant', action: 'create' }, 'missing_field', 'body'],
            [{ kind: 'tenant', action: 'create', body: [] }, 'invalid_type', 'body'],
            [{ kind: 'key', action: 'create', body: { name: 'k' } }, 'missing_field', 'tenant_id'],
            [{ kind: 'key', action: 'update', tenant_id: A(), body: { name: 'k' } }, 'missing_field', 'id'],
            [{ kind: 'tenant', action: 'create', tenant_id: A(), body: {} }, 'invalid_value', 'tenant_id'],
            [{ kind: 'tenant', action: 'create', body: {}, extra: 1 }, 'unknown_field', 'extra'],
        ];
        for (const [body, code, param] of bad) assertError(await validate(owner, body), 400, { code, param });
        for (const s of INJECTIONS) {
            assertError(await validate(owner, { kind: s, action: 'create', body: {} }), 400, { param: 'kind' });
            assertError(await validate(owner, { kind: 'tenant', action: s, body: {} }), 400, { param: 'action' });
            assertError(await validate(owner, { kind: 'key', action: 'create', tenant_id: s, body: { name: 'k' } }), 400,
                { param: 'tenant_id' });
            const r = await validate(owner, { kind: 'tenant', action: 'create', body: { slug: s, name: s } });
            assert.deepEqual([r.status, r.json.valid, r.json.errors[0].field], [200, false, 'slug']);
            const n = await validate(owner, { kind: 'tenant', action: 'create', body: { slug: 'fine', name: s } });
            assert.deepEqual(n.json, { valid: true });
        }
        assert.deepEqual(await footprint(), before);
    });
});
