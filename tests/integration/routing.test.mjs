/*
 * routing.test.mjs — the router as clients see it: fallback across deployments and priority groups, provider
 * keys (429 cooldowns, 401 disabling), circuit breakers, weighted spreading, streams, and the status API.
 *
 * One leo-gateway (one worker, so the status API describes the worker that served every request) in front of
 * the mock provider. Dead deployments point at closed ports. Each case has providers of its own, so the
 * router state one case builds up (cooldowns, breakers) never leaks into another.
 *
 * The mock chooses its faults from the request body, and a retry resends the same body. For the key cases,
 * where only the first attempt may fail, the keyed providers reach the mock through FaultFront, a relay in
 * this file that adds "x-mock-fault: SPEC" to the first upstream request carrying the marker
 * [[once:ID:SPEC]] and forwards everything else unchanged (the mock treats the marker as plain text). The
 * mock still answers and records every attempt, Authorization header included.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';

import { Gateway, Mock, chat, freePort, hashKey, nonce, openStream, recordedHeader, request } from './lib/harness.mjs';

const T5 = { timeout: 5000 };
const ADMIN_KEY = 'sk-leo-routing-admin-0001';
const USER_KEY = 'sk-leo-routing-user-0002';

/* provider credentials, given to the gateway through its environment only */
const PROVIDER_KEYS = {
    LEO_RT_KEY_A: 'sk-rt-provider-aaaa-5c1e9b',
    LEO_RT_KEY_B: 'sk-rt-provider-bbbb-7d20f4',
    LEO_RT_KEY_C: 'sk-rt-provider-cccc-31a8e6',
    LEO_RT_KEY_D: 'sk-rt-provider-dddd-94bb02',
};
const envOfBearer = (auth) => Object.keys(PROVIDER_KEYS).find((env) => `Bearer ${PROVIDER_KEYS[env]}` === auth);

/* ------------------------------------------------------------------------------------------------------------
 * FaultFront: a relay in front of the mock that faults only the first attempt of a request
 * ------------------------------------------------------------------------------------------------------------ */

const ONCE_RE = /\[\[once:([A-Za-z0-9]+):([^\]]*)\]\]/;
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'proxy-connection']);

class FaultFront {
    static async start(mockPort) {
        const f = new FaultFront(mockPort);
        f.server.listen(0, '127.0.0.1');
        await once(f.server, 'listening');
        f.port = f.server.address().port;
        return f;
    }

    constructor(mockPort) {
        this.mockPort = mockPort;
        this.seen = new Set();
        this.sockets = new Set();
        this.server = http.createServer((req, res) => this.relay(req, res));
        this.server.on('connection', (s) => {
            this.sockets.add(s);
            s.on('close', () => this.sockets.delete(s));
        });
    }

    relay(req, res) {
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => {
            const body = Buffer.concat(chunks);
            const headers = {};
            for (let i = 0; i < req.rawHeaders.length; i += 2) {
                const k = req.rawHeaders[i];
                if (!HOP_BY_HOP.has(k.toLowerCase())) headers[k] = req.rawHeaders[i + 1];
            }
            headers['Content-Length'] = String(body.length);
            const m = ONCE_RE.exec(body.toString('utf8'));
            if (m && !this.seen.has(m[1])) {
                this.seen.add(m[1]);
                headers['x-mock-fault'] = m[2];
            }
            const up = http.request({ host: '127.0.0.1', port: this.mockPort, method: req.method, path: req.url,
                headers, agent: false });
            up.on('error', () => res.destroy());
            up.on('response', (ur) => {
                const out = [];
                for (let i = 0; i < ur.rawHeaders.length; i += 2) {
                    const [k, v] = [ur.rawHeaders[i], ur.rawHeaders[i + 1]];
                    if (!HOP_BY_HOP.has(k.toLowerCase())) out.push([k, v]);
                }
                res.writeHead(ur.statusCode, out.flat());
                ur.on('data', (c) => res.write(c));
                ur.on('end', () => res.end());
                ur.on('close', () => {
                    if (!ur.complete) res.destroy();
                });
            });
            up.end(body);
        });
    }

    async stop() {
        for (const s of this.sockets) s.destroy();
        this.server.close();
        await once(this.server, 'close');
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * The stack
 * ------------------------------------------------------------------------------------------------------------ */

let mock, front, gw, port;

const dep = (provider, extra = {}) => ({ provider, model: 'mock-small', ...extra });

before(async () => {
    mock = await Mock.start();
    front = await FaultFront.start(mock.port);
    const [adminHash, userHash, ...dead] = await Promise.all([
        hashKey(ADMIN_KEY), hashKey(USER_KEY), freePort(), freePort(), freePort(), freePort(), freePort(),
    ]);
    const mockUrl = `http://127.0.0.1:${mock.port}/v1`;
    const frontUrl = `http://127.0.0.1:${front.port}/v1`;
    const deadUrl = (i) => `http://127.0.0.1:${dead[i]}/v1`;
    const config = {
        listen: '127.0.0.1:0',
        workers: 1,
        drain_timeout_ms: 5000,
        providers: [
            { name: 'mock', type: 'openai', base_url: mockUrl },
            { name: 'deadA', type: 'openai', base_url: deadUrl(0) },
            { name: 'deadB', type: 'openai', base_url: deadUrl(1) },
            { name: 'deadC', type: 'openai', base_url: deadUrl(2) },
            { name: 'deadD', type: 'openai', base_url: deadUrl(3) },
            { name: 'deadS', type: 'openai', base_url: deadUrl(4) },
            {
                name: 'keys429', type: 'openai', base_url: frontUrl,
                api_keys: [{ env: 'LEO_RT_KEY_A' }, { env: 'LEO_RT_KEY_B' }],
            },
            {
                name: 'keys401', type: 'openai', base_url: frontUrl,
                api_keys: [{ env: 'LEO_RT_KEY_C', weight: 1 }, { env: 'LEO_RT_KEY_D', weight: 1 }],
            },
            { name: 'brk', type: 'openai', base_url: mockUrl },
            { name: 'wa', type: 'openai', base_url: mockUrl },
            { name: 'wb', type: 'openai', base_url: mockUrl },
            { name: 'cut', type: 'openai', base_url: mockUrl },
            { name: 'slowlat', type: 'openai', base_url: mockUrl },
            { name: 'fastlat', type: 'openai', base_url: mockUrl },
        ],
        models: [
            { name: 'gpt-4o-mini', deployments: [dep('mock')] },
            /* equal priority, configuration order: the dead one first */
            { name: 'fallback-model', strategy: 'priority', deployments: [dep('deadA'), dep('mock')] },
            /* priority groups: listed mock first, but the dead deployment's group (0) comes first */
            { name: 'groups-model', deployments: [dep('mock', { priority: 1 }), dep('deadB', { priority: 0 })] },
            { name: 'all-down', deployments: [dep('deadC'), dep('deadD')] },
            { name: 'keys-model', deployments: [dep('keys429')] },
            { name: 'auth-model', deployments: [dep('keys401')] },
            { name: 'breaker-model', max_attempts: 1, deployments: [dep('brk')] },
            {
                name: 'weighted-model', strategy: 'weighted',
                deployments: [dep('wa', { weight: 3 }), dep('wb', { weight: 1 })],
            },
            { name: 'stream-fallback', deployments: [dep('deadS', { priority: 0 }), dep('mock', { priority: 1 })] },
            { name: 'cut-model', deployments: [dep('cut', { priority: 0 }), dep('mock', { priority: 1 })] },
            { name: 'slow-latency', deployments: [dep('slowlat')] },
            { name: 'fast-latency', deployments: [dep('fastlat')] },
        ],
        routing: { breaker_failures: 2, breaker_open_ms: 500 },
        tenants: [
            {
                id: 'rt',
                keys: [{ name: 'admin', hash: adminHash, admin: true }, { name: 'user', hash: userHash }],
            },
        ],
    };
    gw = await Gateway.start({ config, env: PROVIDER_KEYS });
    port = gw.port;
}, { timeout: 20000 });

after(async () => {
    const results = await Promise.allSettled([gw && gw.stop(), front && front.stop(), mock && mock.stop()]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
}, { timeout: 20000 });

/* ------------------------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------------------------ */

const body = (model, text, extra = {}) => ({ model, messages: [{ role: 'user', content: text }], ...extra });
const ask = (model, text, extra) => chat(port, body(model, text, extra), { key: ADMIN_KEY, timeoutMs: 8000 });

const getStatus = (key) =>
    request(port, { method: 'GET', path: '/v1/status/deployments', headers: { Authorization: `Bearer ${key}` } });

async function status(key = ADMIN_KEY) {
    const r = await getStatus(key);
    assert.equal(r.status, 200, r.text);
    for (const v of Object.values(PROVIDER_KEYS)) assert.ok(!r.text.includes(v), 'the status API shows a key value');
    return r.json();
}

/* The status entry of deployment id as listed under model (the first listing of id when model is omitted: the
 * same id in several models shares one state). */
async function depStatus(id, model) {
    const s = await status();
    const d = s.deployments.find((x) => x.id === id && (model === undefined || x.model === model));
    assert.ok(d, `status lists no deployment ${id} of ${model}: ${JSON.stringify(s)}`);
    return d;
}

const keyState = (d, env) => d.keys.find((k) => k.env === env);

/* Polls cond() (async) every 20 ms until it returns a truthy value, at most timeoutMs. */
async function pollUntil(cond, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const v = await cond();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
    }
}

function assertOk(r, deployment, attempts) {
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers['x-leo-deployment'], deployment);
    assert.equal(r.headers['x-leo-attempts'], String(attempts));
}

/* ------------------------------------------------------------------------------------------------------------
 * Cases
 * ------------------------------------------------------------------------------------------------------------ */

describe('fallback', () => {
    it('a dead first deployment falls back to the next one (equal priority, configuration order)', T5, async () => {
        const n = nonce('fb');
        const r = await ask('fallback-model', n);
        assertOk(r, 'mock/mock-small', 2);
        assert.equal(r.json().choices[0].message.content, `mock reply to: ${n}`);
        assert.equal((await mock.requestsWith(n)).length, 1);
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.status, 200);
        assert.equal(line.failed_attempts, 'deadA/mock-small:connect');
        assert.equal(line.deployment, 'mock');
    });

    it('priority groups: the priority 0 group is tried before priority 1 whatever the listed order', T5, async () => {
        const n = nonce('grp');
        const r = await ask('groups-model', n);
        assertOk(r, 'mock/mock-small', 2);
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, 'deadB/mock-small:connect');
        const d = await depStatus('deadB/mock-small');
        assert.equal(d.priority, 0);
        assert.equal(d.consecutive_failures, 1);
        assert.equal((await depStatus('mock/mock-small', 'groups-model')).priority, 1);
    });
});

describe('provider keys', () => {
    it('a 429 cools its key for Retry-After: the retry and later requests use the other key, then both serve', {
        timeout: 8000,
    }, async () => {
        const n = nonce('rl');
        const r = await ask('keys-model', `${n} [[once:${n}:status=429;retry_after=1]]`);
        assertOk(r, 'keys429/mock-small', 2);
        const recs = await mock.requestsWith(n, { count: 2 });
        assert.equal(recs.length, 2);
        assert.equal(recordedHeader(recs[0], 'x-mock-fault'), 'status=429;retry_after=1');
        assert.equal(recordedHeader(recs[1], 'x-mock-fault'), undefined);
        const limited = envOfBearer(recordedHeader(recs[0], 'authorization'));
        const other = envOfBearer(recordedHeader(recs[1], 'authorization'));
        assert.ok(limited && other, 'each attempt carried one of the configured keys');
        assert.notEqual(limited, other, 'the retry used the other key');
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, 'keys429/mock-small:429');

        let d = await depStatus('keys429/mock-small');
        assert.equal(keyState(d, limited).state, 'cooling_down');
        assert.ok(keyState(d, limited).cooldown_ms > 0 && keyState(d, limited).cooldown_ms <= 1000,
            JSON.stringify(d.keys));
        assert.deepEqual(keyState(d, other), { env: other, state: 'ok', cooldown_ms: 0 });

        /* while the key cools down (with a margin before its end), every request uses the other key */
        let during = 0;
        for (;;) {
            d = await depStatus('keys429/mock-small');
            const k = keyState(d, limited);
            if (k.state !== 'cooling_down' || k.cooldown_ms < 150) break;
            const m = nonce('rlc');
            const rr = await ask('keys-model', m);
            assertOk(rr, 'keys429/mock-small', 1);
            const rec = await mock.requestWith(m);
            assert.equal(envOfBearer(recordedHeader(rec, 'authorization')), other, 'a cooling key was used');
            during++;
        }
        assert.ok(during >= 3, `only ${during} requests fit in the cooldown`);

        /* the cooldown ends about 1 s after the 429; then both keys serve again */
        await pollUntil(async () => keyState(await depStatus('keys429/mock-small'), limited).state === 'ok', 2000,
            'the rate-limited key back in rotation');
        const used = new Set();
        for (let i = 0; i < 40 && used.size < 2; i++) {
            const m = nonce('rlb');
            assertOk(await ask('keys-model', m), 'keys429/mock-small', 1);
            used.add(envOfBearer(recordedHeader(await mock.requestWith(m), 'authorization')));
        }
        assert.deepEqual([...used].sort(), [limited, other].sort());
    });

    it('a 401 disables its key: the request and all later ones succeed on the other key', T5, async () => {
        const n = nonce('auth');
        const r = await ask('auth-model', `${n} [[once:${n}:status=401]]`);
        assertOk(r, 'keys401/mock-small', 2);
        const recs = await mock.requestsWith(n, { count: 2 });
        assert.equal(recs.length, 2);
        assert.equal(recordedHeader(recs[0], 'x-mock-fault'), 'status=401');
        const refused = envOfBearer(recordedHeader(recs[0], 'authorization'));
        const other = envOfBearer(recordedHeader(recs[1], 'authorization'));
        assert.ok(refused && other && refused !== other, `keys used: ${refused}, ${other}`);
        assert.equal((await gw.accessLine(r.headers['x-leo-request-id'])).failed_attempts, 'keys401/mock-small:401');

        const d = await depStatus('keys401/mock-small');
        assert.deepEqual(keyState(d, refused), { env: refused, state: 'disabled', cooldown_ms: 0 });
        assert.deepEqual(keyState(d, other), { env: other, state: 'ok', cooldown_ms: 0 });
        /* the warning names the variable, never the value */
        const warn = await gw.stderr.waitForJson((j) => typeof j.msg === 'string' && j.msg.includes('keys401') &&
            j.msg.includes(refused), { timeoutMs: 2000, what: 'key disabled warning' });
        assert.ok(!JSON.stringify(warn).includes(PROVIDER_KEYS[refused]));

        for (let i = 0; i < 8; i++) {
            const m = nonce('authok');
            assertOk(await ask('auth-model', m), 'keys401/mock-small', 1);
            assert.equal(envOfBearer(recordedHeader(await mock.requestWith(m), 'authorization')), other);
        }
        assert.equal(keyState(await depStatus('keys401/mock-small'), refused).state, 'disabled');
    });
});

describe('circuit breaker', () => {
    it('two 500s open it; then 503 without reaching the upstream; a probe after 500 ms closes it', T5, async () => {
        for (let i = 1; i <= 2; i++) {
            const n = nonce('brk');
            const r = await ask('breaker-model', `${n} [[mock:status=500]]`);
            assert.equal(r.status, 502, r.text);
            assert.equal(r.headers['x-leo-attempts'], '1');
            assert.equal(r.headers['x-leo-deployment'], 'brk/mock-small');
            assert.equal((await mock.requestsWith(n)).length, 1);
        }
        const n1 = nonce('brkopen');
        const n2 = nonce('brkopen');
        const r1 = await ask('breaker-model', n1);
        const r2 = await request(port, {
            method: 'POST',
            path: '/v1/messages',
            headers: { Authorization: `Bearer ${ADMIN_KEY}`, 'anthropic-version': '2023-06-01' },
            body: { model: 'breaker-model', max_tokens: 16, messages: [{ role: 'user', content: n2 }] },
            timeoutMs: 5000,
        });
        const d = await depStatus('brk/mock-small');

        assert.equal(r1.status, 503, r1.text);
        assert.equal(r1.headers['retry-after'], '1');
        assert.equal(r1.json().error.code, 'no_deployment_available');
        assert.match(r1.json().error.message, /"breaker-model"/);
        assert.equal(r2.status, 503, r2.text);
        assert.equal(r2.headers['retry-after'], '1');
        assert.equal(r2.json().type, 'error');
        assert.equal(r2.json().error.type, 'overloaded_error');
        assert.match(r2.json().error.message, /"breaker-model"/);
        assert.equal(d.breaker, 'open');
        assert.ok(d.open_for_ms > 0 && d.open_for_ms <= 500, `open_for_ms ${d.open_for_ms}`);
        assert.equal(d.consecutive_failures, 2);
        const all = await mock.requests();
        assert.ok(!all.some((x) => x.body.includes(n1) || x.body.includes(n2)), 'a request reached the mock');

        await pollUntil(async () => (await depStatus('brk/mock-small')).open_for_ms === 0, 2000,
            'breaker open time over');
        const p = nonce('probe');
        const pr = await ask('breaker-model', p);
        assertOk(pr, 'brk/mock-small', 1);
        assert.equal((await mock.requestsWith(p)).length, 1);
        const after = await depStatus('brk/mock-small');
        assert.equal(after.breaker, 'closed');
        assert.equal(after.consecutive_failures, 0);
        assertOk(await ask('breaker-model', nonce('brkok')), 'brk/mock-small', 1);
    });

    it('all deployments down: 502 while tried, then 503 naming the model; other models keep working', T5, async () => {
        for (let i = 0; i < 2; i++) {
            const r = await ask('all-down', nonce('down'));
            assert.equal(r.status, 502, r.text);
            assert.equal(r.headers['x-leo-attempts'], '2');
            /* weighted (the default strategy) takes the two in either order */
            const failed = (await gw.accessLine(r.headers['x-leo-request-id'])).failed_attempts;
            assert.deepEqual(failed.split(',').sort(), ['deadC/mock-small:connect', 'deadD/mock-small:connect']);
        }
        const r = await ask('all-down', nonce('down'));
        assert.equal(r.status, 503, r.text);
        assert.equal(r.headers['retry-after'], '1');
        assert.equal(r.json().error.code, 'no_deployment_available');
        assert.match(r.json().error.message, /"all-down"/);
        const s = await status();
        for (const id of ['deadC/mock-small', 'deadD/mock-small']) {
            assert.equal(s.deployments.find((x) => x.id === id).breaker, 'open');
        }
        assert.ok(gw.running);
        const n = nonce('alive');
        const ok = await ask('gpt-4o-mini', n);
        assertOk(ok, 'mock/mock-small', 1);
        assert.equal(ok.json().choices[0].message.content, `mock reply to: ${n}`);
    });
});

describe('strategies', () => {
    it('weighted 3:1 over 200 requests gives shares within ±10%', { timeout: 10000 }, async () => {
        const counts = { 'wa/mock-small': 0, 'wb/mock-small': 0 };
        let next = 0;
        const worker = async () => {
            while (next < 200) {
                next++;
                const r = await ask('weighted-model', 'spread');
                assert.equal(r.status, 200, r.text);
                assert.equal(r.headers['x-leo-attempts'], '1');
                counts[r.headers['x-leo-deployment']]++;
            }
        };
        await Promise.all(Array.from({ length: 8 }, worker));
        const total = counts['wa/mock-small'] + counts['wb/mock-small'];
        assert.equal(total, 200, JSON.stringify(counts));
        const share = counts['wa/mock-small'] / total;
        assert.ok(share >= 0.65 && share <= 0.85, `weight-3 share ${share} (${JSON.stringify(counts)})`);
    });
});

describe('latency', () => {
    it('a successful attempt measures its time to first byte (ewma_ttfb_ms)', { timeout: 5000 }, async () => {
        assert.equal((await depStatus('slowlat/mock-small')).ewma_ttfb_ms, null);
        assertOk(await ask('slow-latency', `${nonce('lat')} [[mock:delay_headers_ms=40]]`), 'slowlat/mock-small', 1);
        const d = await depStatus('slowlat/mock-small');
        assert.ok(d.ewma_ttfb_ms >= 40 && d.ewma_ttfb_ms < 2000, `ewma_ttfb_ms ${d.ewma_ttfb_ms}`);
    });

    it('an answer faster than 1 ms is measured too', { timeout: 5000 }, async () => {
        assert.equal((await depStatus('fastlat/mock-small')).ewma_ttfb_ms, null);
        for (let i = 0; i < 3; i++) assertOk(await ask('fast-latency', nonce('fast')), 'fastlat/mock-small', 1);
        const d = await depStatus('fastlat/mock-small');
        assert.equal(typeof d.ewma_ttfb_ms, 'number',
            `a deployment that answered 3 times is still unmeasured: ${JSON.stringify(d)}`);
    });
});

describe('streams', () => {
    it('a dead first deployment falls back before the stream starts', { timeout: 5000 }, async () => {
        const n = nonce('sfb');
        const s = await openStream(port, body('stream-fallback', `hello ${n}`, { stream: true }), { key: ADMIN_KEY });
        assert.equal(s.status, 200);
        assert.match(s.headers['content-type'], /^text\/event-stream/);
        assert.equal(s.headers['x-leo-deployment'], 'mock/mock-small');
        assert.equal(s.headers['x-leo-attempts'], '2');
        const end = await s.end;
        assert.equal(end.error, null);
        const data = end.events.map((e) => e.data);
        assert.equal(data[data.length - 1], '[DONE]');
        const text = data.slice(0, -1).map((d) => JSON.parse(d))
            .map((c) => (c.choices && c.choices[0] && c.choices[0].delta.content) || '').join('');
        assert.equal(text, `mock reply to: hello ${n}`);
        const line = await gw.accessLine(s.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, 'deadS/mock-small:connect');
        assert.equal(line.stream, true);
    });

    it('a stream cut mid-way is not retried: one attempt, an error event', { timeout: 5000 }, async () => {
        const n = nonce('cut');
        const text = `one two three four five six ${n} [[mock:delay_events_ms=20;reset_after_events=3]]`;
        const s = await openStream(port, body('cut-model', text, { stream: true }), { key: ADMIN_KEY });
        assert.equal(s.status, 200);
        assert.equal(s.headers['x-leo-deployment'], 'cut/mock-small');
        assert.equal(s.headers['x-leo-attempts'], '1');
        const end = await s.end;
        const data = end.events.map((e) => e.data);
        assert.ok(!data.includes('[DONE]'), 'a cut stream ended with [DONE]');
        assert.equal(data.length, 4, `events: ${JSON.stringify(data)}`);
        for (const d of data.slice(0, 3)) assert.ok(JSON.parse(d).choices, d);
        const err = JSON.parse(data[3]).error;
        assert.ok(err, data[3]);
        assert.equal(err.code, 'upstream_stream_interrupted');
        const line = await gw.accessLine(s.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, undefined);
        assert.ok(line.error);
        /* no second attempt went anywhere: exactly one upstream request carries the marker */
        assert.equal((await mock.requestsWith(n, { count: 2, timeoutMs: 300 })).length, 1);
    });
});

describe('status API', () => {
    it('needs an admin key and names keys by variable only', { timeout: 5000 }, async () => {
        const r = await getStatus(USER_KEY);
        assert.equal(r.status, 403);
        assert.equal(r.json().error.code, 'admin_key_required');
        const s = await status();
        const d = s.deployments.find((x) => x.id === 'keys429/mock-small');
        assert.deepEqual(d.keys.map((k) => k.env), ['LEO_RT_KEY_A', 'LEO_RT_KEY_B']);
        assert.deepEqual(s.deployments.filter((x) => x.model === 'weighted-model').map((x) => [x.id, x.weight]),
            [['wa/mock-small', 3], ['wb/mock-small', 1]]);
        /* no log line of the whole run carries a provider key value */
        for (const l of gw.stderr.lines) {
            for (const v of Object.values(PROVIDER_KEYS)) {
                assert.ok(!l.text.includes(v), `a log line shows a key: ${l.text}`);
            }
        }
    });
});
