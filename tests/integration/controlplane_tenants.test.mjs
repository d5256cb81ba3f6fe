/*
 * controlplane_tenants.test.mjs — tenant policy managed through the admin API (migrations/0010): allow_byok,
 * allow_route_override and allowed_models are set with POST/PATCH /admin/v1/tenants, validated, audited, kept to
 * global owners and admins, and published in the snapshot, where a following gateway enforces them within a
 * second of the admin API's answer.
 *
 * Real processes over real sockets: a private PostgreSQL (lib/postgres.mjs), redis-server, leo-controlplane (with
 * a master key, so it can hold a provider credential), the mock provider and a two-worker gateway whose config
 * has a "control_plane" section. The provider, its credential, two deployments and the models "a" (both
 * deployments) and "b" come from the admin API; the gateway's file adds the model "file-chat" and an admin key.
 * Which key went upstream is read from the mock's request log. Cases run in file order and share the processes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';

import { startControlPlaneStack, stopControlPlaneStack } from './lib/controlplane.mjs';
import { chat, hashKey, nonce, recordedHeader, request, startGateway } from './lib/harness.mjs';

const T = { timeout: 30000 };
const KEY_HASH_SECRET = 'cp-tenants-integration-secret-51c9';
const OWNER = { email: 'owner@tenants.test', password: 'owner-password-0001' };
const PASSWORD = 'member-password-0001';
const MASTER_KEY = crypto.randomBytes(32).toString('base64');
const CRED_SECRET = `sk-cred-${crypto.randomBytes(10).toString('hex')}`;
const BYOK_SECRET = `sk-byok-${crypto.randomBytes(10).toString('hex')}`;
const OPS_KEY = `sk-leo-ops-${crypto.randomBytes(12).toString('hex')}`;
/* how soon a change must be in force on every worker after the admin API answered (docs/controlplane.md) */
const LIVE_MS = 1000;
const INJECTION = "x'); DROP TABLE tenants; --";

let pg, redis, cp, mock, gw, dir;
const S = { tokens: {} };

const api = (method, p, body, token = S.tokens.owner) => cp.api(method, p, { body, token });
const sql = (s) => pg.query(s);
const q = (s) => `'${s.replace(/'/g, "''")}'`;
const tenantPath = () => `/admin/v1/tenants/${S.tenant.id}`;

async function created(method, p, body) {
    const r = await api(method, p, body);
    assert.equal(r.status, 201, `${method} ${p}: ${r.text}`);
    return r.json;
}

async function patchTenant(body, token) {
    const r = await api('PATCH', tenantPath(), body, token);
    assert.equal(r.status, 200, `PATCH ${JSON.stringify(body)}: ${r.text}`);
    return r.json;
}

function assertError(r, status, { code, param } = {}) {
    assert.equal(r.status, status, `expected ${status}, got ${r.status}: ${r.text}`);
    assert.ok(r.json && r.json.error, `no error object: ${r.text}`);
    if (code !== undefined) assert.equal(r.json.error.code, code, r.text);
    if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
    return r.json.error;
}

/** One chat request for model on a fresh connection (the kernel spreads them over the workers). */
function ask(model, { key = S.key.secret, headers = {}, text = 'hello' } = {}) {
    return chat(gw.port, { model, messages: [{ role: 'user', content: text }] }, { key, headers, timeoutMs: 5000 });
}

/** Polls until check() holds for n consecutive calls, or fails once deadline (ms epoch) passes. check returns
 *  true, or a description of what it saw. */
async function until(check, deadline, what, n = 4) {
    let seen = [];
    while (Date.now() < deadline) {
        seen = [];
        for (let i = 0; i < n; i++) seen.push(await check());
        if (seen.every((s) => s === true)) return Date.now();
        await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`${what}: not seen before the deadline; last: ${JSON.stringify(seen)}\n${gw.stderr.tail(20)}`);
}

/** A check that a request for model with key answers status (and error code, for errors). */
const answers = (model, status, code, opts = {}) => async () => {
    const r = await ask(model, opts);
    const got = r.status === 200 ? 200 : `${r.status} ${JSON.parse(r.text).error.code}`;
    return got === (code ? `${status} ${code}` : status) || got;
};

async function modelsListed(key) {
    const r = await request(gw.port, { method: 'GET', path: '/v1/models', headers: { Authorization: `Bearer ${key}` } });
    assert.equal(r.status, 200, r.text);
    return JSON.parse(r.text).data.map((m) => m.id).sort();
}

const snapshot = async () => JSON.parse(await redis.command('GET', 'leo:snapshot'));
const snapTenant = async () => (await snapshot()).tenants.find((t) => t.id === 'pol');

/** Waits for a published snapshot satisfying pred, then for both workers to apply that version (or a later
 *  one); resolves with the snapshot. */
async function applied(pred, from, what) {
    const deadline = Date.now() + 5000;
    let snap;
    while (Date.now() < deadline) {
        snap = await snapshot();
        if (pred(snap)) break;
        await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(pred(snap), `${what}: not published; last: ${JSON.stringify(snap.tenants)}`);
    const done = new Set();
    while (done.size < 2 && Date.now() < deadline) {
        for (const j of gw.stderr.json((x) => typeof x.msg === 'string' && x.msg.startsWith('control plane snapshot version'), from)) {
            const v = Number(/version (\d+) applied/.exec(j.msg)?.[1]);
            if (v >= snap.version) done.add(j.role);
        }
        if (done.size < 2) await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual([...done].sort(), ['worker-0', 'worker-1'], `${what}: version ${snap.version} applied by\n` +
        gw.stderr.tail(20));
    return snap;
}

before(async () => {
    let token;
    ({ dir, pg, mock, redis, cp, token } = await startControlPlaneStack({ name: 'cp-tenants',
        keyHashSecret: KEY_HASH_SECRET, owner: OWNER, env: { LEO_MASTER_KEY: MASTER_KEY } }));
    S.tokens.owner = token;
    gw = await startGateway({
        config: {
            listen: '127.0.0.1:0',
            drain_timeout_ms: 2000,
            providers: [{ name: 'file-mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` }],
            models: [{ name: 'file-chat', deployments: [{ provider: 'file-mock', model: 'mock-small' }] }],
            control_plane: { redis_url: redis.url, cache_path: path.join(dir, 'snapshot.json') },
            tenants: [{ id: 'ops', keys: [{ name: 'ops', admin: true,
                hash: await hashKey(OPS_KEY, { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET }) }] }],
        },
        workers: 2,
        env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET, LEO_MASTER_KEY: MASTER_KEY },
    });
}, { timeout: 90000 });

after(() => stopControlPlaneStack({ gateways: [gw], mock, cp, redis, pg, dir }), { timeout: 60000 });

describe('tenant policy from the admin API to the gateway', () => {
    it('setup: a tenant with the default policy, its keys, a tenant admin, models a and b from the admin API', T,
        async () => {
            S.tenant = await created('POST', '/admin/v1/tenants', { slug: 'pol', name: 'Policy' });
            assert.equal(S.tenant.allow_byok, false);
            assert.equal(S.tenant.allow_route_override, false);
            assert.equal(S.tenant.allowed_models, null);
            const provider = await created('POST', '/admin/v1/providers',
                { name: 'pol-mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` });
            await created('POST', `/admin/v1/providers/${provider.id}/credentials`, { name: 'main', secret: CRED_SECRET });
            const small = await created('POST', '/admin/v1/deployments', { provider_id: provider.id, model: 'mock-small' });
            const large = await created('POST', '/admin/v1/deployments', { provider_id: provider.id, model: 'mock-large' });
            await created('POST', '/admin/v1/models',
                { name: 'a', deployments: [{ deployment_id: small.id }, { deployment_id: large.id }] });
            await created('POST', '/admin/v1/models', { name: 'b', deployments: [{ deployment_id: large.id }] });
            S.key = await created('POST', `${tenantPath()}/keys`, { name: 'main' });
            S.keyB = await created('POST', `${tenantPath()}/keys`, { name: 'b-only', allowed_models: ['b'] });
            const ta = await created('POST', '/admin/v1/users',
                { email: 'ta@tenants.test', password: PASSWORD, role: 'tenant_admin', tenant_id: S.tenant.id });
            S.tokens.tenant_admin = await cp.login(ta.email, PASSWORD);
            S.tokens.tenant_admin_api = (await created('POST', '/admin/v1/tokens',
                { name: 'ta-token', role: 'tenant_admin', tenant_id: S.tenant.id })).token;

            await until(answers('a', 200), Date.now() + 5000, 'key main serves model a');
            await until(answers('b', 200, null, { key: S.keyB.secret }), Date.now() + 5000, 'key b-only serves model b');
            const t = await snapTenant();
            assert.equal(t.allow_byok, false);
            assert.equal(t.allow_route_override, false);
            assert.equal(t.models, undefined);
            assert.deepEqual(t.keys.find((k) => k.name === 'b-only').models, ['b']);
        });

    it('allow_route_override: x-leo-route is refused, then honoured within a second of the change', T, async () => {
        const pinned = { headers: { 'x-leo-route': 'pol-mock/mock-large' } };
        const before = await ask('a', pinned);
        assertError({ status: before.status, text: before.text, json: JSON.parse(before.text) }, 403,
            { code: 'route_override_not_allowed' });

        const t = await patchTenant({ allow_route_override: true });
        const changed = Date.now();
        assert.equal(t.allow_route_override, true);
        assert.equal(t.allow_byok, false);
        const live = await until(async () => {
            const r = await ask('a', pinned);
            return (r.status === 200 && r.headers['x-leo-deployment'] === 'pol-mock/mock-large' &&
                JSON.parse(r.text).model === 'mock-large') || `${r.status} ${r.headers['x-leo-deployment']}`;
        }, changed + LIVE_MS, 'x-leo-route honoured');
        assert.ok(live - changed <= LIVE_MS, `live after ${live - changed} ms`);
        assert.equal((await snapTenant()).allow_route_override, true);
        assert.equal((await api('GET', tenantPath())).json.allow_route_override, true);

        const [entry] = await sql(`SELECT action, details FROM audit_log WHERE target = ${q(`tenant:${S.tenant.id}`)}
            ORDER BY id DESC LIMIT 1`);
        assert.deepEqual(entry, { action: 'tenant.update', details: { allow_route_override: true } });

        await patchTenant({ allow_route_override: false });
        await until(answers('a', 403, 'route_override_not_allowed', pinned), Date.now() + LIVE_MS,
            'x-leo-route refused again');
    });

    it("allow_byok: the caller's own bearer goes upstream instead of the credential within a second", T, async () => {
        /* X-API-Key authenticates with the gateway; the bearer is the caller's provider key */
        const upstreamAuth = async () => {
            const n = nonce('byok');
            const r = await ask('b', { key: null, text: n,
                headers: { 'X-API-Key': S.key.secret, Authorization: `Bearer ${BYOK_SECRET}` } });
            assert.equal(r.status, 200, r.text);
            const rec = await mock.requestWith(n);
            assert.equal(recordedHeader(rec, 'x-api-key'), undefined, 'the LEO key never goes upstream');
            return recordedHeader(rec, 'authorization');
        };
        assert.equal(await upstreamAuth(), `Bearer ${CRED_SECRET}`, 'without allow_byok the bearer is ignored');

        const t = await patchTenant({ allow_byok: true });
        const changed = Date.now();
        assert.equal(t.allow_byok, true);
        const live = await until(async () => {
            const auth = await upstreamAuth();
            return auth === `Bearer ${BYOK_SECRET}` || (auth === `Bearer ${CRED_SECRET}` ? 'credential' : 'other');
        }, changed + LIVE_MS, 'the caller bearer upstream');
        assert.ok(live - changed <= LIVE_MS, `live after ${live - changed} ms`);
        assert.equal((await snapTenant()).allow_byok, true);
        const doc = await redis.command('GET', 'leo:snapshot');
        assert.ok(!doc.includes(CRED_SECRET), 'the snapshot never holds the credential in clear');

        await patchTenant({ allow_byok: false });
        await until(async () => (await upstreamAuth()) === `Bearer ${CRED_SECRET}`, Date.now() + LIVE_MS,
            'the credential upstream again');
    });

    it('allowed_models: the tenant is held to its list within a second, its keys within their own', T, async () => {
        const from = gw.stderr.lines.length;
        const t = await patchTenant({ allowed_models: ['a'] });
        const changed = Date.now();
        assert.deepEqual(t.allowed_models, ['a']);
        await until(answers('b', 403, 'model_not_allowed'), changed + LIVE_MS, 'model b refused to key main');
        const refused = JSON.parse((await ask('b')).text).error;
        assert.equal(refused.message, 'model "b" is not allowed for this key');
        assert.equal(refused.param, 'model');
        await until(answers('a', 200), Date.now() + LIVE_MS, 'model a served');
        assert.deepEqual(await modelsListed(S.key.secret), ['a']);
        /* every name is a model the snapshot publishes: the list travels with the tenant */
        const snap = await applied((s) => JSON.stringify(s.tenants.find((x) => x.id === 'pol').models) === '["a"]',
            from, 'the tenant with its models');
        const pt = snap.tenants.find((x) => x.id === 'pol');
        assert.equal(pt.keys.find((k) => k.name === 'main').models, undefined);
        assert.deepEqual(pt.keys.find((k) => k.name === 'b-only').models, ['b']);
        /* a key's own list narrows within the tenant's: b-only now may use nothing */
        await until(answers('b', 403, 'model_not_allowed', { key: S.keyB.secret }), Date.now() + LIVE_MS,
            'model b refused to key b-only');
        await until(answers('a', 403, 'model_not_allowed', { key: S.keyB.secret }), Date.now() + LIVE_MS,
            'model a refused to key b-only');
        assert.deepEqual(await modelsListed(S.keyB.secret), []);
        const [entry] = await sql(`SELECT actor, action, details FROM audit_log
            WHERE target = ${q(`tenant:${S.tenant.id}`)} ORDER BY id DESC LIMIT 1`);
        assert.equal(entry.action, 'tenant.update');
        assert.deepEqual(entry.details, { allowed_models: ['a'] });
        assert.match(entry.actor, /^user:/);
    });

    it('allowed_models naming models the control plane does not publish: the keys carry the list, the gateway ' +
        'keeps following', T, async () => {
        const from = gw.stderr.lines.length;
        await patchTenant({ allowed_models: ['a', 'file-chat', 'ghost'] });
        /* the gateway would refuse a whole document whose tenant names a model it does not know */
        const snap = await applied((s) => {
            const x = s.tenants.find((y) => y.id === 'pol');
            return x.models === undefined && x.keys.find((k) => k.name === 'main').models !== undefined;
        }, from, 'the list on the keys');
        const pt = snap.tenants.find((x) => x.id === 'pol');
        assert.deepEqual(pt.keys.find((k) => k.name === 'main').models, ['a', 'file-chat', 'ghost']);
        assert.deepEqual(pt.keys.find((k) => k.name === 'b-only').models, [''], 'b-only keeps no model');
        assert.ok(!gw.stderr.lines.slice(from).some((l) => /snapshot.*(rejected|invalid)|unknown model/.test(l.text)),
            gw.stderr.tail(20));
        await until(answers('file-chat', 200), Date.now() + LIVE_MS, 'the file model served to key main');
        await until(answers('a', 200), Date.now() + LIVE_MS, 'model a served to key main');
        await until(answers('b', 403, 'model_not_allowed'), Date.now() + LIVE_MS, 'model b refused to key main');
        assert.deepEqual(await modelsListed(S.key.secret), ['a', 'file-chat']);
        for (const m of ['a', 'b', 'file-chat'])
            await until(answers(m, 403, 'model_not_allowed', { key: S.keyB.secret }), Date.now() + LIVE_MS,
                `model ${m} refused to key b-only`);

        /* null: every model again */
        const t = await patchTenant({ allowed_models: null });
        const changed = Date.now();
        assert.equal(t.allowed_models, null);
        await until(answers('b', 200), changed + LIVE_MS, 'model b served to key main');
        await until(answers('b', 200, null, { key: S.keyB.secret }), Date.now() + LIVE_MS, 'model b served to b-only');
        const back = await snapTenant();
        assert.equal(back.models, undefined);
        assert.equal(back.keys.find((k) => k.name === 'main').models, undefined);
    });

    it("a tenant admin cannot change its tenant's policy (403), by session or API token; it reads it", T, async () => {
        await patchTenant({ allow_byok: true, allowed_models: ['a', 'b'] });
        const before = (await api('GET', tenantPath())).json;
        for (const token of [S.tokens.tenant_admin, S.tokens.tenant_admin_api]) {
            for (const body of [{ allow_byok: false }, { allow_route_override: true }, { allowed_models: null },
                { allowed_models: ['a'] }, { name: 'renamed', allow_byok: false }]) {
                assertError(await api('PATCH', tenantPath(), body, token), 403, { code: 'forbidden' });
            }
            const seen = await api('GET', tenantPath(), undefined, token);
            assert.equal(seen.status, 200, seen.text);
            assert.equal(seen.json.allow_byok, true);
            assert.deepEqual(seen.json.allowed_models, ['a', 'b']);
        }
        assert.deepEqual((await api('GET', tenantPath())).json, before, 'nothing changed');
        /* a global role without tenants.write is refused too */
        const op = await created('POST', '/admin/v1/users', { email: 'op@tenants.test', password: PASSWORD, role: 'operator' });
        assertError(await api('PATCH', tenantPath(), { allow_byok: false }, await cp.login(op.email, PASSWORD)), 403,
            { code: 'forbidden' });
        await patchTenant({ allow_byok: false, allowed_models: null });
    });

    it('validation errors name the field; create takes the policy; injection strings are plain data', T, async () => {
        const bad = [
            [{ allow_byok: 'yes' }, 'invalid_type', 'allow_byok'],
            [{ allow_byok: 1 }, 'invalid_type', 'allow_byok'],
            [{ allow_route_override: 'true' }, 'invalid_type', 'allow_route_override'],
            [{ allowed_models: [] }, 'invalid_value', 'allowed_models'],
            [{ allowed_models: 'a' }, 'invalid_value', 'allowed_models'],
            [{ allowed_models: {} }, 'invalid_value', 'allowed_models'],
            [{ allowed_models: Array.from({ length: 257 }, (_, i) => `m${i}`) }, 'invalid_value', 'allowed_models'],
            [{ allowed_models: ['a', 'a'] }, 'invalid_value', 'allowed_models[1]'],
            [{ allowed_models: ['a', ''] }, 'invalid_value', 'allowed_models[1]'],
            [{ allowed_models: [7] }, 'invalid_value', 'allowed_models[0]'],
            [{ allowed_models: ['x'.repeat(129)] }, 'invalid_value', 'allowed_models[0]'],
            [{ allowed_models: ['tab\there'] }, 'invalid_value', 'allowed_models[0]'],
            [{ allow_byok: true, models: ['a'] }, 'unknown_field', 'models'],
        ];
        const before = (await api('GET', tenantPath())).json;
        for (const [body, code, param] of bad) {
            assertError(await api('PATCH', tenantPath(), body), 400, { code, param });
            assertError(await api('POST', '/admin/v1/tenants', { slug: 'bad-policy', name: 'x', ...body }), 400,
                { code, param });
            const dry = await api('POST', '/admin/v1/config/validate',
                { kind: 'tenant', action: 'update', tenant_id: S.tenant.id, body });
            assert.deepEqual([dry.status, dry.json.valid, dry.json.errors[0].field], [200, false, param], dry.text);
        }
        assertError(await api('PATCH', tenantPath(), { allow_byok: null }), 400, { code: 'empty_change' });
        assert.deepEqual((await api('GET', tenantPath())).json, before, 'nothing changed');
        assert.equal((await sql("SELECT count(*)::int AS n FROM tenants WHERE slug = 'bad-policy'"))[0].n, 0);

        const from = gw.stderr.lines.length;
        const c = await created('POST', '/admin/v1/tenants', { slug: 'pol-2', name: 'Second', allow_byok: true,
            allow_route_override: true, allowed_models: ['a', INJECTION] });
        assert.equal(c.allow_byok, true);
        assert.equal(c.allow_route_override, true);
        assert.deepEqual(c.allowed_models, ['a', INJECTION]);
        assert.deepEqual((await api('GET', `/admin/v1/tenants/${c.id}`)).json, c);
        const listed = (await api('GET', '/admin/v1/tenants?limit=200')).json.data.find((x) => x.id === c.id);
        assert.deepEqual(listed, c);
        const [entry] = await sql(`SELECT action, details FROM audit_log WHERE target = ${q(`tenant:${c.id}`)}`);
        assert.equal(entry.action, 'tenant.create');
        assert.equal(entry.details.allow_byok, true);
        assert.equal(entry.details.allow_route_override, true);
        assert.deepEqual(entry.details.allowed_models, ['a', INJECTION]);
        assert.equal((await sql('SELECT count(*)::int AS n FROM tenants'))[0].n, 2, 'the tenants table is intact');
        /* a name that is no model: the tenant goes without "models", and so does a tenant without keys */
        const snap = await applied((s) => s.tenants.some((x) => x.id === 'pol-2'), from, 'the second tenant');
        const p2 = snap.tenants.find((x) => x.id === 'pol-2');
        assert.deepEqual(p2, { id: 'pol-2', allow_byok: true, allow_route_override: true, quotas: {}, keys: [] });
    });
});
