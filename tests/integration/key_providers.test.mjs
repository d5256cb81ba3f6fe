/*
 * key_providers.test.mjs — API keys restricted to some providers ("providers" on a key in the gateway's file,
 * allowed_providers in the admin API): such a key's requests go only to deployments at those providers —
 * first attempts, retries, hedges, x-leo-route pins and embeddings alike; a model with no deployment there is
 * refused like a model outside the key's list (403 model_not_allowed, in both dialects) and left out of
 * GET /v1/models (docs/routing.md, "Keys restricted to some providers").
 *
 * Two stacks, one after the other:
 * - a gateway from a file, in front of the mock provider. Its providers pa, pb and pc all reach the same mock,
 *   each with a credential of its own, so which provider an attempt went to is read from the Authorization
 *   header the mock recorded (and from x-leo-deployment and the access log's failed_attempts);
 * - the control plane (private PostgreSQL, redis-server, leo-controlplane) with a one-worker gateway following
 *   it: keys with allowed_providers created, changed and rotated through the admin API (and leoctl), validation
 *   errors, the snapshot's "providers", and a provider disabled under a key.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';

import { startControlPlaneStack, stopControlPlaneStack } from './lib/controlplane.mjs';
import {
    Gateway, Mock, bin, chat, hashKey, nonce, recordedHeader, request, startGateway,
} from './lib/harness.mjs';

const T = { timeout: 15000 };
const TL = { timeout: 30000 };

/** Which credential (A, B, C, ...) of secrets ({letter: value}) an upstream request carried. */
const credentialOf = (secrets, rec) => {
    const auth = recordedHeader(rec, 'authorization');
    const hit = Object.entries(secrets).find(([, v]) => auth === `Bearer ${v}`);
    assert.ok(hit, `unexpected upstream authorization ${JSON.stringify(auth && auth.slice(0, 12))}`);
    return hit[0];
};

const messages = (port, key, model, text) => request(port, {
    method: 'POST',
    path: '/v1/messages',
    headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01' },
    body: { model, max_tokens: 16, messages: [{ role: 'user', content: text }] },
    timeoutMs: 8000,
});

const embeddings = (port, key, model, input) => request(port, {
    method: 'POST',
    path: '/v1/embeddings',
    headers: { Authorization: `Bearer ${key}` },
    body: { model, input },
    timeoutMs: 8000,
});

/* ------------------------------------------------------------------------------------------------------------
 * A gateway from a file
 * ------------------------------------------------------------------------------------------------------------ */

describe('keys restricted to providers, from the configuration file', () => {
    const SECRETS = { A: 'sk-kp-provider-a-41d7c0', B: 'sk-kp-provider-b-9e02aa', C: 'sk-kp-provider-c-07f3b5' };
    const KEYS = { all: 'sk-leo-kp-all-0001', b: 'sk-leo-kp-b-only-0002', bc: 'sk-leo-kp-b-and-c-0003' };
    let mock, gw, port;

    const dep = (provider, extra = {}) => ({ provider, model: 'mock-small', ...extra });
    const ask = (key, model, text, headers = {}) =>
        chat(port, { model, messages: [{ role: 'user', content: text }] }, { key: KEYS[key], headers, timeoutMs: 8000 });
    /** The credentials of the upstream requests carrying n, at least count of them (waiting up to waitMs). */
    const upstream = async (n, count = 1, waitMs = 5000) =>
        (await mock.requestsWith(n, { count, timeoutMs: waitMs })).map((rec) => credentialOf(SECRETS, rec));

    before(async () => {
        mock = await Mock.start();
        const [allHash, bHash, bcHash] = await Promise.all([hashKey(KEYS.all), hashKey(KEYS.b), hashKey(KEYS.bc)]);
        const provider = (name, env) => ({ name, type: 'openai', base_url: mock.baseUrl, api_keys: [{ env }] });
        gw = await Gateway.start({
            config: {
                listen: '127.0.0.1:0',
                workers: 1,
                drain_timeout_ms: 5000,
                providers: [provider('pa', 'LEO_KP_KEY_A'), provider('pb', 'LEO_KP_KEY_B'), provider('pc', 'LEO_KP_KEY_C')],
                models: [
                    /* pa first for everyone who may use it */
                    { name: 'both', aliases: ['both-alias'], strategy: 'priority',
                        deployments: [dep('pa'), dep('pb', { priority: 1 })] },
                    { name: 'only-a', deployments: [dep('pa')] },
                    /* hedges after 100 ms, in priority order: pb, then pa, then pc */
                    { name: 'hedged', hedge_after_ms: 100, strategy: 'priority',
                        deployments: [dep('pb'), dep('pa', { priority: 1 }), dep('pc', { priority: 2 })] },
                ],
                /* failures in these cases must not open breakers that later cases rely on */
                routing: { max_attempts: 3, backoff_base_ms: 10, backoff_max_ms: 20, breaker_failures: 50 },
                tenants: [{
                    id: 'kp',
                    allow_route_override: true,
                    keys: [
                        { name: 'all', hash: allHash },
                        { name: 'b-only', hash: bHash, providers: ['pb'] },
                        { name: 'b-and-c', hash: bcHash, providers: ['pc', 'pb'] },
                    ],
                }],
            },
            env: { LEO_KP_KEY_A: SECRETS.A, LEO_KP_KEY_B: SECRETS.B, LEO_KP_KEY_C: SECRETS.C },
        });
        port = gw.port;
    }, { timeout: 20000 });

    after(async () => {
        const results = await Promise.allSettled([gw && gw.stop(), mock && mock.stop()]);
        const failed = results.find((r) => r.status === 'rejected');
        if (failed) throw failed.reason;
    }, { timeout: 20000 });

    it('a key restricted to pb lands on pb although pa has the higher priority; other keys land on pa', T, async () => {
        for (let i = 0; i < 5; i++) {
            const n = nonce('kpb');
            const r = await ask('b', i % 2 ? 'both' : 'both-alias', n);
            assert.equal(r.status, 200, r.text);
            assert.equal(r.headers['x-leo-deployment'], 'pb/mock-small');
            assert.equal(r.headers['x-leo-attempts'], '1');
            assert.equal(r.json().choices[0].message.content, `mock reply to: ${n}`);
            assert.deepEqual(await upstream(n), ['B']);

            const m = nonce('kpall');
            const ra = await ask('all', 'both', m);
            assert.equal(ra.status, 200, ra.text);
            assert.equal(ra.headers['x-leo-deployment'], 'pa/mock-small');
            assert.deepEqual(await upstream(m), ['A']);
        }
        /* the Anthropic dialect is routed the same way */
        const n = nonce('kpmsg');
        const r = await messages(port, KEYS.b, 'both', n);
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json().type, 'message');
        assert.equal(r.headers['x-leo-deployment'], 'pb/mock-small');
        assert.deepEqual(await upstream(n), ['B']);
    });

    it('when pb fails, every retry stays on pb and the request fails; pa is never tried', T, async () => {
        const n = nonce('kpfail');
        const r = await ask('b', 'both', `${n} [[mock:status=500]]`);
        assert.equal(r.status, 502, r.text);
        assert.ok(r.json().error, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'pb/mock-small');
        assert.equal(r.headers['x-leo-attempts'], '3');
        assert.deepEqual(await upstream(n, 3), ['B', 'B', 'B']);
        /* nothing more arrives later */
        assert.equal((await upstream(n, 4, 300)).length, 3);
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.status, 502);
        assert.equal(line.failed_attempts, 'pb/mock-small:500,pb/mock-small:500,pb/mock-small:500');

        /* the same failure for a key that may use pa falls back to it */
        const m = nonce('kpfailall');
        const ra = await ask('all', 'both', `${m} [[mock:status=500]]`);
        assert.equal(ra.status, 502, ra.text);
        assert.deepEqual((await upstream(m, 2)).sort(), ['A', 'B']);
    });

    it('a model with no deployment at the key\'s providers is refused as not allowed, in both dialects', T, async () => {
        const n = nonce('kpref');
        const r = await ask('b', 'only-a', n);
        assert.equal(r.status, 403, r.text);
        const e = r.json().error;
        assert.equal(e.code, 'model_not_allowed');
        assert.equal(e.type, 'permission_error');
        assert.equal(e.param, 'model');
        assert.match(e.message, /"only-a" is not allowed for this key/);

        const m = await messages(port, KEYS.b, 'only-a', n);
        assert.equal(m.status, 403, m.text);
        assert.equal(m.json().type, 'error');
        assert.equal(m.json().error.type, 'permission_error');
        assert.match(m.json().error.message, /"only-a" is not allowed for this key/);

        const em = await embeddings(port, KEYS.b, 'only-a', n);
        assert.equal(em.status, 403, em.text);
        assert.equal(em.json().error.code, 'model_not_allowed');

        /* refused before any upstream call */
        assert.equal((await mock.requestsWith(n, { timeoutMs: 300 })).length, 0);
        /* the same model serves a key without the restriction */
        const ok = await ask('all', 'only-a', nonce('kpok'));
        assert.equal(ok.status, 200, ok.text);
    });

    it('GET /v1/models leaves such models out, and GET /v1/models/{id} answers 404 for them', T, async () => {
        const list = async (key) => {
            const r = await request(port, { path: '/v1/models', headers: { Authorization: `Bearer ${KEYS[key]}` } });
            assert.equal(r.status, 200, r.text);
            return r.json().data.map((d) => d.id);
        };
        assert.deepEqual(await list('b'), ['both', 'hedged']);
        assert.deepEqual(await list('all'), ['both', 'only-a', 'hedged']);
        const one = (key, id) => request(port, { path: `/v1/models/${id}`, headers: { Authorization: `Bearer ${KEYS[key]}` } });
        const r = await one('b', 'only-a');
        assert.equal(r.status, 404, r.text);
        assert.equal(r.json().error.code, 'model_not_found');
        assert.equal((await one('b', 'both')).status, 200);
        assert.equal((await one('all', 'only-a')).status, 200);
    });

    it('embeddings go to the key\'s providers too', T, async () => {
        const n = nonce('kpemb');
        const r = await embeddings(port, KEYS.b, 'both', n);
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json().object, 'list');
        assert.equal(r.headers['x-leo-deployment'], 'pb/mock-small');
        assert.deepEqual(await upstream(n), ['B']);
    });

    it('x-leo-route may pin a request only to a deployment at the key\'s providers', T, async () => {
        for (const pin of ['pa/mock-small', 'pa']) {
            const n = nonce('kppin');
            const r = await ask('b', 'both', n, { 'x-leo-route': pin });
            assert.equal(r.status, 403, r.text);
            assert.equal(r.json().error.code, 'deployment_not_allowed');
            assert.match(r.json().error.message, /provider "pa", which this key may not use/);
            assert.equal((await mock.requestsWith(n, { timeoutMs: 200 })).length, 0);
        }
        const n = nonce('kppinb');
        const r = await ask('b', 'both', n, { 'x-leo-route': 'pb' });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'pb/mock-small');
        assert.deepEqual(await upstream(n), ['B']);
        const m = nonce('kppina');
        const ra = await ask('all', 'both', m, { 'x-leo-route': 'pa' });
        assert.equal(ra.status, 200, ra.text);
        assert.deepEqual(await upstream(m), ['A']);
    });

    it('a hedge goes only to a provider of the key: pb alone never hedges, pb+pc hedges to pc, not pa', T, async () => {
        const slow = (n) => `${n} [[mock:delay_headers_ms=400]]`;
        const n = nonce('kphb');
        const r = await ask('b', 'hedged', slow(n));
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'pb/mock-small');
        assert.equal(r.headers['x-leo-attempts'], '1');
        assert.deepEqual(await upstream(n, 2, 600), ['B']);

        const m = nonce('kphbc');
        const rbc = await ask('bc', 'hedged', slow(m));
        assert.equal(rbc.status, 200, rbc.text);
        assert.equal(rbc.headers['x-leo-attempts'], '2');
        assert.deepEqual((await upstream(m, 2)).sort(), ['B', 'C']);
        assert.equal((await upstream(m, 3, 300)).length, 2);

        /* a key that may use pa hedges to it: the order the hedge takes without the restriction */
        const k = nonce('kphall');
        const rall = await ask('all', 'hedged', slow(k));
        assert.equal(rall.status, 200, rall.text);
        assert.equal(rall.headers['x-leo-attempts'], '2');
        assert.deepEqual((await upstream(k, 2)).sort(), ['A', 'B']);
    });
});

/* ------------------------------------------------------------------------------------------------------------
 * The control plane and a gateway following it
 * ------------------------------------------------------------------------------------------------------------ */

describe('allowed_providers through the admin API, on a following gateway', () => {
    const KEY_HASH_SECRET = 'key-providers-integration-secret-5c21';
    const OWNER = { email: 'owner@keyproviders.test', password: 'owner-password-0001' };
    const MASTER_KEY = crypto.randomBytes(32).toString('base64');
    const SECRETS = { A: `sk-kp-cp-a-${crypto.randomBytes(8).toString('hex')}`,
        B: `sk-kp-cp-b-${crypto.randomBytes(8).toString('hex')}` };
    const LIVE_MS = 1000; /* a change is in force on the gateway within this (docs/controlplane.md) */
    const BATCH = 16;
    let pg, redis, cp, mock, gw, token, dir;
    const S = {};

    const api = (method, p, body) => cp.api(method, p, { body, token });
    async function created(p, body) {
        const r = await api('POST', p, body);
        assert.equal(r.status, 201, `POST ${p}: ${r.text}`);
        return r.json;
    }

    /** Sends n chat requests for kp-chat with secret; resolves with the statuses and the credentials used. */
    async function batch(secret, n = BATCH) {
        const tag = nonce('kpcp');
        const statuses = [];
        for (let i = 0; i < n; i++) {
            const r = await chat(gw.port, { model: 'kp-chat', messages: [{ role: 'user', content: `${tag} #${i}` }] },
                { key: secret, timeoutMs: 5000 });
            statuses.push(r.status);
        }
        const ok = statuses.filter((s) => s === 200).length;
        const recs = await mock.requestsWith(tag, { count: ok, timeoutMs: ok ? 5000 : 200 });
        const credentials = { A: 0, B: 0 };
        for (const rec of recs) credentials[credentialOf(SECRETS, rec)]++;
        return { statuses: [...new Set(statuses)], credentials };
    }

    /** Polls batch(secret, 4) until pred holds; fails after deadline (ms epoch). */
    async function until(secret, pred, deadline, what) {
        let last;
        while (Date.now() < deadline) {
            last = await batch(secret, 4);
            if (pred(last)) return last;
            await new Promise((r) => setTimeout(r, 20));
        }
        throw new Error(`${what}: not before the deadline; last: ${JSON.stringify(last)}\n${gw.stderr.tail(20)}`);
    }

    const onlyB = (b) => b.statuses.length === 1 && b.statuses[0] === 200 && b.credentials.A === 0;
    const refused = (b) => b.statuses.length === 1 && b.statuses[0] === 403;

    async function snapshotKey(name) {
        const snap = JSON.parse(await redis.command('GET', 'leo:snapshot'));
        return snap.tenants.flatMap((t) => t.keys).find((k) => k.name === name);
    }

    before(async () => {
        ({ dir, pg, mock, redis, cp, token } = await startControlPlaneStack({ name: 'key-providers',
            keyHashSecret: KEY_HASH_SECRET, owner: OWNER, env: { LEO_MASTER_KEY: MASTER_KEY } }));
        gw = await startGateway({
            config: {
                listen: '127.0.0.1:0',
                drain_timeout_ms: 2000,
                control_plane: { redis_url: redis.url },
            },
            workers: 1,
            env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET, LEO_MASTER_KEY: MASTER_KEY },
        });
    }, { timeout: 90000 });

    after(() => stopControlPlaneStack({ gateways: [gw], mock, cp, redis, pg, dir }), { timeout: 60000 });

    it('setup: providers cp-a and cp-b, a model with an equal-weight deployment at each; an open key uses both', TL,
        async () => {
            S.tenant = (await created('/admin/v1/tenants', { slug: 'kp', name: 'Key providers' })).id;
            for (const [letter, name] of [['A', 'cp-a'], ['B', 'cp-b']]) {
                const p = await created('/admin/v1/providers', { name, type: 'openai', base_url: mock.baseUrl });
                await created(`/admin/v1/providers/${p.id}/credentials`, { name: 'main', secret: SECRETS[letter] });
                S[name] = { provider: p, deployment: await created('/admin/v1/deployments',
                    { provider_id: p.id, model: 'mock-small' }) };
            }
            await created('/admin/v1/models', { name: 'kp-chat', deployments: [
                { deployment_id: S['cp-a'].deployment.id }, { deployment_id: S['cp-b'].deployment.id }] });
            S.open = await created(`/admin/v1/tenants/${S.tenant}/keys`, { name: 'open' });
            const b = await until(S.open.secret, (x) => x.statuses[0] === 200 && x.credentials.A > 0 && x.credentials.B > 0,
                Date.now() + 5000, 'the open key served by both providers');
            assert.deepEqual(b.statuses, [200]);
        });

    it('a key created with allowed_providers [cp-b] returns it, is published with it, and only reaches cp-b', TL,
        async () => {
            const k = await created(`/admin/v1/tenants/${S.tenant}/keys`, { name: 'b-only', allowed_providers: ['cp-b'] });
            const at = Date.now();
            assert.deepEqual(k.allowed_providers, ['cp-b']);
            S.bkey = k;
            const got = await api('GET', `/admin/v1/tenants/${S.tenant}/keys/${k.id}`);
            assert.equal(got.status, 200, got.text);
            assert.deepEqual(got.json.allowed_providers, ['cp-b']);
            assert.equal(S.open.allowed_providers, null);

            await until(k.secret, onlyB, at + LIVE_MS, 'the b-only key served');
            const b = await batch(k.secret);
            assert.deepEqual(b, { statuses: [200], credentials: { A: 0, B: BATCH } });
            assert.deepEqual((await snapshotKey('b-only')).providers, ['cp-b']);
            assert.equal((await snapshotKey('open')).providers, undefined);
        });

    it('allowed_providers is validated: names of existing providers, listed once, a non-empty array or null', TL,
        async () => {
            const cases = [
                [['nope'], 'allowed_providers[0]', /no provider is named "nope"/],
                [['cp-b', 'cp-c'], 'allowed_providers[1]', /no provider is named "cp-c"/],
                [['cp-b', 'cp-b'], 'allowed_providers[1]', /listed twice/],
                [['cp-b', 'bad name!'], 'allowed_providers[1]', /expected a provider name/],
                [['cp-b', 7], 'allowed_providers[1]', /expected a provider name/],
                [[], 'allowed_providers', /expected null or an array of 1 to/],
                ['cp-b', 'allowed_providers', /expected null or an array of 1 to/],
            ];
            for (const [value, param, message] of cases) {
                const r = await api('POST', `/admin/v1/tenants/${S.tenant}/keys`, { name: 'bad', allowed_providers: value });
                assert.equal(r.status, 400, `${JSON.stringify(value)}: ${r.text}`);
                assert.equal(r.json.error.param, param, r.text);
                assert.equal(r.json.error.code, 'invalid_value', r.text);
                assert.match(r.json.error.message, message);
                const p = await api('PATCH', `/admin/v1/tenants/${S.tenant}/keys/${S.bkey.id}`, { allowed_providers: value });
                assert.equal(p.status, 400, `PATCH ${JSON.stringify(value)}: ${p.text}`);
                assert.equal(p.json.error.param, param, p.text);
            }
            /* nothing was created or changed */
            const list = await api('GET', `/admin/v1/tenants/${S.tenant}/keys`);
            assert.deepEqual(list.json.data.map((k) => k.name).sort(), ['b-only', 'open']);
            assert.deepEqual(list.json.data.find((k) => k.name === 'b-only').allowed_providers, ['cp-b']);
        });

    it('a provider disabled under the key leaves it no provider: refused (403), never routed to cp-a', TL, async () => {
        const off = await api('PATCH', `/admin/v1/providers/${S['cp-b'].provider.id}`, { enabled: false });
        assert.equal(off.status, 200, off.text);
        const r = await until(S.bkey.secret, refused, Date.now() + LIVE_MS, 'the b-only key refused');
        assert.deepEqual(r.credentials, { A: 0, B: 0 });
        const c = await chat(gw.port, { model: 'kp-chat', messages: [{ role: 'user', content: 'x' }] },
            { key: S.bkey.secret });
        assert.equal(c.json().error.code, 'model_not_allowed', c.text);
        assert.deepEqual((await snapshotKey('b-only')).providers, []);
        /* the open key goes on on cp-a */
        assert.deepEqual(await batch(S.open.secret, 4), { statuses: [200], credentials: { A: 4, B: 0 } });

        const on = await api('PATCH', `/admin/v1/providers/${S['cp-b'].provider.id}`, { enabled: true });
        assert.equal(on.status, 200, on.text);
        await until(S.bkey.secret, onlyB, Date.now() + LIVE_MS, 'the b-only key back on cp-b');
    });

    it('PATCH to null opens the key to both providers; the change is audited; rotation keeps the list', TL, async () => {
        const p = await api('PATCH', `/admin/v1/tenants/${S.tenant}/keys/${S.bkey.id}`, { allowed_providers: null });
        assert.equal(p.status, 200, p.text);
        assert.equal(p.json.allowed_providers, null);
        await until(S.bkey.secret, (b) => b.statuses[0] === 200 && b.credentials.A > 0 && b.credentials.B > 0,
            Date.now() + 5000, 'the key served by both providers');
        assert.equal((await snapshotKey('b-only')).providers, undefined);

        const back = await api('PATCH', `/admin/v1/tenants/${S.tenant}/keys/${S.bkey.id}`,
            { allowed_providers: ['cp-b'] });
        assert.equal(back.status, 200, back.text);
        assert.deepEqual(back.json.allowed_providers, ['cp-b']);
        const audit = await api('GET', `/admin/v1/audit?action=key.update&target=key:${S.bkey.id}`);
        assert.equal(audit.status, 200, audit.text);
        assert.deepEqual(audit.json.data.map((e) => e.details.changes.allowed_providers), [['cp-b'], null]);

        const rot = await api('POST', `/admin/v1/tenants/${S.tenant}/keys/${S.bkey.id}/rotate`, {});
        assert.equal(rot.status, 200, rot.text);
        assert.deepEqual(rot.json.allowed_providers, ['cp-b']);
        await until(rot.json.secret, onlyB, Date.now() + LIVE_MS, 'the rotated key on cp-b only');
    });

    it('leoctl keys create --providers sets allowed_providers', TL, async () => {
        const cfg = path.join(dir, 'leoctl', 'session.json');
        const run = (args, env = {}) => new Promise((resolve) => {
            execFile(bin('leoctl'), args, { env: { ...process.env, LEOCTL_CONFIG: cfg, ...env }, timeout: 15000 },
                (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
        });
        const login = await run(['login', '--url', cp.url, '--email', OWNER.email], { LEOCTL_PASSWORD: OWNER.password });
        assert.equal(login.code, 0, login.stderr);
        const r = await run(['--json', 'keys', 'create', '--tenant', S.tenant, '--name', 'cli', '--providers',
            'cp-b,cp-a']);
        assert.equal(r.code, 0, r.stderr);
        const k = JSON.parse(r.stdout);
        assert.deepEqual(k.allowed_providers, ['cp-b', 'cp-a']);
        const bad = await run(['keys', 'create', '--tenant', S.tenant, '--name', 'cli2', '--providers', 'cp-z']);
        assert.equal(bad.code, 1);
        assert.match(bad.stderr, /allowed_providers\[0\]: no provider is named "cp-z" \(HTTP 400\)/);
    });
});
