/*
 * controlplane_routing.test.mjs — routing overrides and forced key cooldowns, from the admin API to the
 * gateway's router: a provider with two credentials and a model with two deployments are created through the
 * admin API; a gateway following the control plane spreads requests over both; forcing a cooldown on one
 * credential moves every request to the other within a second, clearing it brings both back; disabling a
 * deployment (or pinning its weight to 0) sends the traffic to the other deployment; /v1/status/deployments
 * shows each state.
 *
 * Real processes over real sockets: a private PostgreSQL (lib/postgres.mjs), redis-server, leo-controlplane,
 * the mock provider and a one-worker gateway (the router's state is per worker). Which credential served a
 * request is read from the mock's request log (its Authorization header), which deployment from the answer's
 * model. Cases run in file order and share the processes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';

import { startControlPlaneStack } from './lib/controlplane.mjs';
import {
    chat, hashKey, metricSum, nonce, parseMetrics, recordedHeader, request, startGateway,
} from './lib/harness.mjs';

const T = { timeout: 30000 };
const KEY_HASH_SECRET = 'cp-routing-integration-secret-3d8a';
const OWNER = { email: 'owner@routing.test', password: 'owner-password-0001' };
const MASTER_KEY = crypto.randomBytes(32).toString('base64');
const SECRET_A = `sk-route-a-${crypto.randomBytes(10).toString('hex')}`;
const SECRET_B = `sk-route-b-${crypto.randomBytes(10).toString('hex')}`;
/* how soon a change must be in force on the gateway after the admin API answered (docs/controlplane.md) */
const LIVE_MS = 1000;
const BATCH = 24;
/* the gateway operator's admin key, from the gateway's own file: the status API needs one */
const OPS_KEY = `sk-leo-ops-${crypto.randomBytes(12).toString('hex')}`;

let pg, redis, cp, mock, gw, token, dir;
const S = {};

const api = (method, p, body) => cp.api(method, p, { body, token });

async function created(method, p, body) {
    const r = await api(method, p, body);
    assert.equal(r.status, 201, `${method} ${p}: ${r.text}`);
    return r.json;
}

/** GET /v1/status/deployments of the gateway: the entries of model rt-chat by deployment id. */
async function status() {
    const r = await request(gw.port, { method: 'GET', path: '/v1/status/deployments',
        headers: { Authorization: `Bearer ${OPS_KEY}` } });
    assert.equal(r.status, 200, r.text);
    return Object.fromEntries(JSON.parse(r.text).deployments.filter((d) => d.model === 'rt-chat').map((d) => [d.id, d]));
}

/** Polls the status until pred(status) holds; fails after deadline (ms epoch). */
async function statusUntil(pred, deadline, what) {
    let last;
    while (Date.now() < deadline) {
        last = await status().catch((e) => ({ error: e.message }));
        if (!last.error && pred(last)) return last;
        await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`gateway status: ${what} not seen before the deadline; last: ${JSON.stringify(last)}\n` +
        gw.stderr.tail(20));
}

/**
 * Sends n chat requests for rt-chat (fresh connections) and reports who served them:
 * { credentials: {A, B}, models: {"mock-small": k, ...} }.
 */
async function batch(n = BATCH) {
    const tag = nonce('rt');
    const models = {};
    for (let i = 0; i < n; i++) {
        const r = await chat(gw.port, { model: 'rt-chat', messages: [{ role: 'user', content: `${tag} #${i}` }] },
            { key: S.key.secret });
        assert.equal(r.status, 200, r.text);
        const m = JSON.parse(r.text).model;
        models[m] = (models[m] || 0) + 1;
    }
    const recs = await mock.requestsWith(tag, { count: n });
    assert.equal(recs.length, n);
    const credentials = { A: 0, B: 0 };
    for (const rec of recs) {
        const auth = recordedHeader(rec, 'authorization');
        if (auth === `Bearer ${SECRET_A}`) credentials.A++;
        else if (auth === `Bearer ${SECRET_B}`) credentials.B++;
        else assert.fail(`unexpected upstream authorization ${JSON.stringify(auth && auth.slice(0, 12))}`);
    }
    return { credentials, models };
}

before(async () => {
    ({ dir, pg, mock, redis, cp, token } = await startControlPlaneStack({ name: 'cp-routing',
        keyHashSecret: KEY_HASH_SECRET, owner: OWNER, env: { LEO_MASTER_KEY: MASTER_KEY } }));
    gw = await startGateway({
        config: {
            listen: '127.0.0.1:0',
            drain_timeout_ms: 2000,
            providers: [{ name: 'file-mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` }],
            models: [{ name: 'file-chat', deployments: [{ provider: 'file-mock', model: 'mock-small' }] }],
            control_plane: { redis_url: redis.url },
            /* kept beside the control plane's tenants because it is an admin key (gateway/follower.h) */
            tenants: [{ id: 'ops', keys: [{ name: 'ops', admin: true,
                hash: await hashKey(OPS_KEY, { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET }) }] }],
        },
        workers: 1,
        env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET, LEO_MASTER_KEY: MASTER_KEY },
    });
}, { timeout: 90000 });

after(async () => {
    const results = await Promise.allSettled([gw && gw.stop(), mock && mock.stop(), cp && cp.stop()]);
    if (redis) await redis.stop().catch(() => {});
    if (pg) await pg.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    for (const r of results) if (r.status === 'rejected') throw r.reason;
}, { timeout: 60000 });

describe('routing overrides and forced cooldowns on a following gateway', () => {
    it('setup: two credentials, two deployments of one model, a key; both credentials and deployments serve', T, async () => {
        const tenant = await created('POST', '/admin/v1/tenants', { slug: 'rt', name: 'Routing' });
        S.provider = await created('POST', '/admin/v1/providers',
            { name: 'rt-mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` });
        S.credA = await created('POST', `/admin/v1/providers/${S.provider.id}/credentials`, { name: 'a', secret: SECRET_A });
        S.credB = await created('POST', `/admin/v1/providers/${S.provider.id}/credentials`, { name: 'b', secret: SECRET_B });
        S.small = await created('POST', '/admin/v1/deployments', { provider_id: S.provider.id, model: 'mock-small' });
        S.large = await created('POST', '/admin/v1/deployments', { provider_id: S.provider.id, model: 'mock-large' });
        S.model = await created('POST', '/admin/v1/models', {
            name: 'rt-chat', deployments: [{ deployment_id: S.small.id }, { deployment_id: S.large.id }],
        });
        S.key = await created('POST', `/admin/v1/tenants/${tenant.id}/keys`, { name: 'rt' });
        /* the gateway has the model once it applied the snapshot */
        await statusUntil((s) => Object.keys(s).length === 2, Date.now() + 5000, 'model rt-chat');
        const b = await batch();
        assert.ok(b.credentials.A > 0 && b.credentials.B > 0, JSON.stringify(b));
        assert.ok(b.models['mock-small'] > 0 && b.models['mock-large'] > 0, JSON.stringify(b));
    });

    it('a forced cooldown on credential a moves every request to b within a second; the status shows it', T, async () => {
        const r = await api('POST', `/admin/v1/providers/${S.provider.id}/credentials/${S.credA.id}/cooldown`,
            { duration_s: 600, reason: 'rotating a' });
        assert.equal(r.status, 201, r.text);
        const s = await statusUntil((x) => Object.values(x).every((d) => d.keys.find((k) => k.env === 'cp:a').state === 'forced_cooldown'),
            Date.now() + LIVE_MS, 'the forced cooldown of cp:a');
        for (const d of Object.values(s)) {
            const a = d.keys.find((k) => k.env === 'cp:a');
            assert.equal(a.reason, 'rotating a');
            assert.ok(a.cooldown_ms > 590000 && a.cooldown_ms <= 600000, JSON.stringify(a));
            assert.equal(d.keys.find((k) => k.env === 'cp:b').state, 'ok');
        }
        const b = await batch();
        assert.deepEqual(b.credentials, { A: 0, B: BATCH });
        /* the snapshot carries the cooldown, never the secret */
        const doc = await redis.command('GET', 'leo:snapshot');
        const cred = JSON.parse(doc).providers.find((p) => p.name === 'rt-mock').credentials.find((c) => c.name === 'a');
        assert.equal(cred.cooldown_reason, 'rotating a');
        assert.equal(cred.cooldown_until_ms, new Date(r.json.until).getTime());
        assert.ok(!doc.includes(SECRET_A) && !doc.includes(SECRET_B));
    });

    it('clearing the cooldown brings credential a back', T, async () => {
        const r = await api('DELETE', `/admin/v1/providers/${S.provider.id}/credentials/${S.credA.id}/cooldown`);
        assert.equal(r.status, 200, r.text);
        await statusUntil((x) => Object.values(x).every((d) => d.keys.every((k) => k.state === 'ok')),
            Date.now() + LIVE_MS, 'both keys ok');
        const b = await batch();
        assert.ok(b.credentials.A > 0 && b.credentials.B > 0, JSON.stringify(b));
    });

    it('disabling a deployment sends all traffic to the other; the status lists it as disabled', T, async () => {
        const o = await created('POST', '/admin/v1/overrides',
            { model_id: S.model.id, deployment_id: S.small.id, action: 'disable', reason: 'upstream incident' });
        const s = await statusUntil((x) => x['rt-mock/mock-small'].disabled === true, Date.now() + LIVE_MS,
            'rt-mock/mock-small disabled');
        assert.deepEqual(s['rt-mock/mock-small'].override, { action: 'disable', reason: 'upstream incident' });
        assert.equal(s['rt-mock/mock-large'].override, undefined);
        const b = await batch();
        assert.deepEqual(b.models, { 'mock-large': BATCH });
        const m = await request(gw.port, { method: 'GET', path: '/metrics' });
        assert.ok(metricSum(parseMetrics(m.text), 'leo_route_override_skips_total',
            { model: 'rt-chat', reason: 'deployment_disabled' }) >= BATCH);
        S.override = o;
    });

    it('pinning the other deployment\'s weight to 0 (after clearing the disable) keeps it as a standby only', T, async () => {
        assert.equal((await api('DELETE', `/admin/v1/overrides/${S.override.id}`)).status, 200);
        await created('POST', '/admin/v1/overrides',
            { model_id: S.model.id, deployment_id: S.large.id, action: 'weight', weight: 0, reason: 'drain large' });
        const s = await statusUntil((x) => x['rt-mock/mock-large'].weight === 0 && x['rt-mock/mock-small'].disabled === undefined,
            Date.now() + LIVE_MS, 'mock-large pinned to weight 0');
        assert.deepEqual(s['rt-mock/mock-large'].override, { action: 'weight', reason: 'drain large' });
        assert.equal(s['rt-mock/mock-large'].disabled, false);
        const b = await batch();
        assert.deepEqual(b.models, { 'mock-small': BATCH });
    });
});
