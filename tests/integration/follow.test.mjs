/*
 * follow.test.mjs — gateways follow the control plane: tenants and API keys created or revoked through the
 * admin API become live on every gateway worker within a second, through the snapshot the control plane
 * publishes to Redis (docs/controlplane.md, "Snapshot protocol").
 *
 * Real processes over real sockets: a private PostgreSQL (lib/postgres.mjs), redis-server, leo-controlplane,
 * the mock provider and a two-worker gateway whose config has a "control_plane" section. The cases run in
 * file order and share the processes; the last ones stop Redis on purpose.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ControlPlane, stopControlPlaneStack } from './lib/controlplane.mjs';
import { chat, chatBody, freePort, startGateway, startMock } from './lib/harness.mjs';
import { startPostgres } from './lib/postgres.mjs';
import { Redis } from './lib/redis.mjs';

const T = { timeout: 30000 };
const KEY_HASH_SECRET = 'follow-integration-secret-77a1';
const OWNER = { email: 'owner@follow.test', password: 'owner-password-0001' };
const LIVE_MS = 1000; /* the promise: a change is live on every worker within this */

let pg, redis, cp, mock, gw, token, tenant, key1, key2, dir, redisPort;

const redisGet = (key) => redis.command('GET', key);
const api = (method, p, body) => cp.api(method, p, { body, token });

/** Status of one chat request with key on a fresh connection (so the kernel spreads them over workers). */
async function status(key) {
    const r = await chat(gw.port, chatBody('hello'), { key, timeoutMs: 5000 });
    return r.status;
}

/** Polls until `n` consecutive requests with key answer `want`, or fails once deadline (ms epoch) passes. */
async function until(key, want, deadline, n = 1) {
    let got = [];
    while (Date.now() < deadline) {
        got = [];
        for (let i = 0; i < n; i++) got.push(await status(key));
        if (got.every((s) => s === want)) return Date.now();
        await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`expected ${want} x${n} for the key before the deadline, last statuses: ${got.join(',')}\n` +
        gw.stderr.tail(20));
}

function gatewayConfig(cachePath) {
    return {
        listen: '127.0.0.1:0',
        workers: 2,
        drain_timeout_ms: 2000,
        providers: [{ name: 'mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` }],
        models: [{ name: 'gpt-4o-mini', deployments: [{ provider: 'mock', model: 'mock-small' }] }],
        control_plane: { redis_url: `redis://127.0.0.1:${redisPort}`, cache_path: cachePath },
    };
}

before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leo-follow-'));
    redisPort = await freePort();
    [pg, redis, mock] = await Promise.all([startPostgres(), Redis.start({ port: redisPort }), startMock()]);
    cp = await ControlPlane.start({ pg, redisUrl: redis.url, keyHashSecret: KEY_HASH_SECRET, owner: OWNER });
    token = await cp.login(OWNER.email, OWNER.password);
    gw = await startGateway({ config: gatewayConfig(path.join(dir, 'snapshot.json')), workers: 2,
        env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET } });
}, { timeout: 90000 });

after(() => stopControlPlaneStack({ gateways: [gw], mock, cp, redis, pg, dir }), { timeout: 60000 });

describe('gateways follow the control plane', () => {
    it('publishes a snapshot at start', T, async () => {
        const deadline = Date.now() + 5000;
        let doc = '';
        while (Date.now() < deadline && !doc) {
            doc = await redisGet('leo:snapshot');
            if (!doc) await new Promise((r) => setTimeout(r, 50));
        }
        const snap = JSON.parse(doc);
        assert.ok(snap.version >= 1);
        assert.deepEqual(snap.tenants, []);
        assert.equal(await redisGet('leo:snapshot:version'), String(snap.version));
    });

    it('a key created through the admin API serves on the gateway within a second', T, async () => {
        const t = await api('POST', '/admin/v1/tenants', { slug: 'acme', name: 'Acme' });
        assert.equal(t.status, 201, t.text);
        tenant = t.json.id;
        assert.equal(await status('sk-leo-not-a-real-key-000000000000000000000'), 401);
        const k = await api('POST', `/admin/v1/tenants/${tenant}/keys`, { name: 'ci' });
        const created = Date.now();
        assert.equal(k.status, 201, k.text);
        key1 = { id: k.json.id, secret: k.json.secret };
        assert.match(key1.secret, /^sk-leo-/);
        const live = await until(key1.secret, 200, created + LIVE_MS, 6);
        assert.ok(live - created <= LIVE_MS, `live after ${live - created} ms`);
    });

    it('the snapshot in Redis holds the key hash and never the secret', T, async () => {
        const doc = await redisGet('leo:snapshot');
        assert.ok(!doc.includes(key1.secret), 'secret found in leo:snapshot');
        assert.ok(!doc.includes(key1.secret.slice(7)), 'secret body found in leo:snapshot');
        const snap = JSON.parse(doc);
        assert.equal(snap.tenants.length, 1);
        assert.equal(snap.tenants[0].id, 'acme');
        assert.equal(snap.tenants[0].allow_byok, false);
        assert.equal(snap.tenants[0].keys.length, 1);
        assert.equal(snap.tenants[0].keys[0].name, 'ci');
        assert.match(snap.tenants[0].keys[0].hash, /^kh1:[0-9a-f]{64}$/);
    });

    it('a revoked key answers 401 on every worker within a second', T, async () => {
        const k2 = await api('POST', `/admin/v1/tenants/${tenant}/keys`, { name: 'second' });
        assert.equal(k2.status, 201, k2.text);
        key2 = { id: k2.json.id, secret: k2.json.secret };
        await until(key2.secret, 200, Date.now() + LIVE_MS, 4);

        const from = gw.stderr.lines.length;
        const r = await api('POST', `/admin/v1/tenants/${tenant}/keys/${key1.id}/revoke`, {});
        const revoked = Date.now();
        assert.equal(r.status, 200, r.text);
        await until(key1.secret, 401, revoked + LIVE_MS, 8);
        /* both workers applied the version that dropped the key */
        const version = Number(await redisGet('leo:snapshot:version'));
        const applied = new Set();
        const deadline = revoked + LIVE_MS;
        while (applied.size < 2 && Date.now() < deadline + 200) {
            for (const j of gw.stderr.json((x) => typeof x.msg === 'string' &&
                x.msg.startsWith(`control plane snapshot version ${version} applied`), from)) applied.add(j.role);
            if (applied.size < 2) await new Promise((res) => setTimeout(res, 20));
        }
        assert.deepEqual([...applied].sort(), ['worker-0', 'worker-1']);
        assert.equal(await status(key2.secret), 200, 'the other key still serves');
    });

    it('a key restricted to some models is published with its list and held to it', T, async () => {
        const allowed = await api('POST', `/admin/v1/tenants/${tenant}/keys`,
            { name: 'mini-only', allowed_models: ['gpt-4o-mini', 'not-configured-here'] });
        const other = await api('POST', `/admin/v1/tenants/${tenant}/keys`,
            { name: 'other-only', allowed_models: ['some-other-model'] });
        assert.equal(allowed.status, 201, allowed.text);
        assert.equal(other.status, 201, other.text);
        const created = Date.now();
        await until(allowed.json.secret, 200, created + LIVE_MS, 4);
        /* the other key is known (not 401) but refused this model */
        await until(other.json.secret, 403, created + LIVE_MS, 4);
        const r = await chat(gw.port, chatBody('hello'), { key: other.json.secret, timeoutMs: 5000 });
        assert.equal(r.json().error.code, 'model_not_allowed', r.text);
        const snap = JSON.parse(await redisGet('leo:snapshot'));
        const byName = Object.fromEntries(snap.tenants[0].keys.map((k) => [k.name, k]));
        assert.deepEqual(byName['mini-only'].models, ['gpt-4o-mini', 'not-configured-here']);
        assert.deepEqual(byName['other-only'].models, ['some-other-model']);
        assert.equal(byName.second.models, undefined);
        /* dropping the restriction widens the key on the next snapshot */
        const p = await api('PATCH', `/admin/v1/tenants/${tenant}/keys/${other.json.id}`, { allowed_models: null });
        assert.equal(p.status, 200, p.text);
        await until(other.json.secret, 200, Date.now() + LIVE_MS, 4);
    });

    it('with Redis down the gateway keeps serving its last snapshot', T, async () => {
        const info = await redis.stop();
        redis = null;
        assert.equal(info.code, 0);
        await gw.stderr.waitForJson((j) => /redis is unreachable/.test(j.msg || ''), { timeoutMs: 5000 });
        for (let i = 0; i < 6; i++) assert.equal(await status(key2.secret), 200);
        assert.equal(await status(key1.secret), 401);
    });

    it('a gateway restarted while Redis is down serves the keys from its cache', T, async () => {
        await gw.stop();
        gw = await startGateway({ config: gatewayConfig(path.join(dir, 'snapshot.json')), workers: 2,
            env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET } });
        await until(key2.secret, 200, Date.now() + 5000, 6);
        assert.equal(await status(key1.secret), 401);
        assert.ok(gw.stderr.json((j) => /serving the cached snapshot/.test(j.msg || '')).length >= 1);
    });
});
