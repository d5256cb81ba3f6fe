/*
 * routing_hedge.test.mjs — the per-request route override (x-leo-route) and hedging, as clients see them.
 *
 * One leo-gateway (one worker) in front of the mock provider. Deployments that must behave differently for the
 * same request body reach the mock through a FixedFault relay in this file, which adds one fixed
 * "x-mock-fault: SPEC" header to every request it forwards (e.g. delay_headers_ms=4000 makes a slow deployment)
 * and, when the gateway drops its connection, drops its own connection to the mock. The mock's request log
 * then marks that request "aborted": that is how a test sees that the gateway cancelled a losing transfer.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';

import { Gateway, Mock, chat, freePort, hashKey, metricSum, nonce, openStream, recordedHeader, request } from
    './lib/harness.mjs';

const T = { timeout: 10000 };
const PIN_KEY = 'sk-leo-hedge-pin-0001';
const PLAIN_KEY = 'sk-leo-hedge-plain-0002';
const BUDGET_KEY = 'sk-leo-hedge-budget-0003';

/* The quota.test.mjs exact request: 11 input tokens estimated and reported, 11 output tokens (22 in all). */
const EXACT_TEXT = 'a b c d e f g h';
const EXACT_TOKENS = 22;

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'proxy-connection']);

class FixedFault {
    static async start(mockPort, spec) {
        const f = new FixedFault(mockPort, spec);
        f.server.listen(0, '127.0.0.1');
        await once(f.server, 'listening');
        f.port = f.server.address().port;
        return f;
    }

    constructor(mockPort, spec) {
        this.mockPort = mockPort;
        this.spec = spec;
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
            headers['x-mock-fault'] = this.spec;
            const up = http.request({ host: '127.0.0.1', port: this.mockPort, method: req.method, path: req.url,
                headers, agent: false });
            up.on('error', () => res.destroy());
            /* the gateway went away (a cancelled transfer): so does this relay's request to the mock */
            res.on('close', () => {
                if (!res.writableFinished) up.destroy();
            });
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

let mock, slow, mid, failing, gw, port;

const dep = (provider, extra = {}) => ({ provider, model: 'mock-small', ...extra });

before(async () => {
    mock = await Mock.start();
    [slow, mid, failing] = await Promise.all([
        FixedFault.start(mock.port, 'delay_headers_ms=4000'),
        FixedFault.start(mock.port, 'delay_headers_ms=400'),
        FixedFault.start(mock.port, 'status=500'),
    ]);
    const [pinHash, plainHash, budgetHash, deadPort] = await Promise.all([hashKey(PIN_KEY), hashKey(PLAIN_KEY),
        hashKey(BUDGET_KEY), freePort()]);
    const url = (p) => `http://127.0.0.1:${p}/v1`;
    const config = {
        listen: '127.0.0.1:0',
        workers: 1,
        drain_timeout_ms: 5000,
        providers: [
            { name: 'mock', type: 'openai', base_url: url(mock.port) },
            { name: 'fast', type: 'openai', base_url: url(mock.port) },
            { name: 'dead', type: 'openai', base_url: url(deadPort) },
            { name: 'slow', type: 'openai', base_url: url(slow.port) },
            { name: 'slow2', type: 'openai', base_url: url(slow.port) },
            { name: 'mid', type: 'openai', base_url: url(mid.port) },
            { name: 'err500', type: 'openai', base_url: url(failing.port) },
        ],
        prices: { 'mock-small': { input: 0.1, output: 0.4 } },
        models: [
            /* x-leo-route: two deployments of equal priority, the dead one first in configuration order */
            { name: 'pin-model', strategy: 'priority', max_attempts: 2, deployments: [dep('dead'), dep('mock')] },
            /* the first attempt hangs; the hedge goes to the fast one after 100 ms */
            { name: 'hedge-win', strategy: 'priority', hedge_after_ms: 100, deployments: [dep('slow'), dep('fast')] },
            /* the first attempt answers after 400 ms, before the hedge (4 s) */
            { name: 'hedge-lose', strategy: 'priority', hedge_after_ms: 50, deployments: [dep('mid'), dep('slow2')] },
            /* the hedge fails at once; the first attempt carries on */
            { name: 'hedge-fail', strategy: 'priority', hedge_after_ms: 50, max_attempts: 2,
                deployments: [dep('mid'), dep('err500')] },
        ],
        routing: { backoff_base_ms: 10, backoff_max_ms: 20, breaker_failures: 1000 },
        tenants: [
            { id: 'pinning', allow_route_override: true, keys: [{ name: 'pin', hash: pinHash }] },
            { id: 'plain', keys: [{ name: 'plain', hash: plainHash }] },
            { id: 'budget', quotas: { tokens_per_day: 2 * EXACT_TOKENS }, keys: [{ name: 'b', hash: budgetHash }] },
        ],
    };
    gw = await Gateway.start({ config });
    port = gw.port;
}, { timeout: 20000 });

after(async () => {
    const results = await Promise.allSettled([gw && gw.stop(), slow && slow.stop(), mid && mid.stop(),
        failing && failing.stop()]);
    await mock.stop();
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
}, { timeout: 20000 });

const body = (model, text, extra = {}) => ({ model, messages: [{ role: 'user', content: text }], ...extra });

/** Polls the mock's log until the request carrying needle through the given relay (its x-mock-fault) is marked
 *  aborted. */
async function abortedAt(needle, spec, timeoutMs = 3000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const recs = (await mock.requestsWith(needle, { count: 1 })).filter((r) =>
            recordedHeader(r, 'x-mock-fault') === spec);
        if (recs.length === 1 && recs[0].aborted === true) return recs[0];
        if (Date.now() > deadline) throw new Error(`no aborted request ${needle} via ${spec}: ${JSON.stringify(recs)}`);
        await new Promise((r) => setTimeout(r, 25));
    }
}

describe('x-leo-route', () => {
    it('pins the request to the named deployment: retries stay on it, no fallback', T, async () => {
        const n = nonce('pin');
        const r = await chat(port, body('pin-model', n),
            { key: PIN_KEY, headers: { 'x-leo-route': 'dead/mock-small' } });
        assert.equal(r.status, 502, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'dead/mock-small');
        assert.equal(r.headers['x-leo-attempts'], '2');
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, 'dead/mock-small:connect,dead/mock-small:connect');
        assert.equal((await mock.requestsWith(n, { timeoutMs: 300 })).length, 0, 'the pinned request fell back');
    });

    it('by id or by provider name, the named deployment serves', T, async () => {
        for (const v of ['mock/mock-small', 'mock', ' mock/mock-small ']) {
            const n = nonce('pinok');
            const r = await chat(port, body('pin-model', n), { key: PIN_KEY, headers: { 'x-leo-route': v } });
            assert.equal(r.status, 200, r.text);
            assert.equal(r.headers['x-leo-deployment'], 'mock/mock-small');
            assert.equal(r.headers['x-leo-attempts'], '1');
            assert.equal(r.json().choices[0].message.content, `mock reply to: ${n}`);
        }
    });

    it('a tenant without allow_route_override gets 403, OpenAI- or Anthropic-shaped; nothing is sent', T,
        async () => {
            const n = nonce('deny');
            const r = await chat(port, body('pin-model', n), { key: PLAIN_KEY,
                headers: { 'x-leo-route': 'mock/mock-small' } });
            assert.equal(r.status, 403, r.text);
            assert.deepEqual(r.json(), { error: {
                message: 'the x-leo-route header is not allowed for this key (tenant "plain" has no ' +
                    'allow_route_override)',
                type: 'permission_error', param: null, code: 'route_override_not_allowed' } });
            const m = await request(port, {
                method: 'POST',
                path: '/v1/messages',
                headers: { 'x-api-key': PLAIN_KEY, 'anthropic-version': '2023-06-01', 'x-leo-route': 'mock' },
                body: { model: 'pin-model', max_tokens: 16, messages: [{ role: 'user', content: n }] },
            });
            assert.equal(m.status, 403, m.text);
            assert.deepEqual(m.json(), { type: 'error', error: { type: 'permission_error',
                message: 'the x-leo-route header is not allowed for this key (tenant "plain" has no ' +
                    'allow_route_override)' } });
            assert.equal((await mock.requestsWith(n, { timeoutMs: 300 })).length, 0);
        });

    it('an unknown deployment is a 400 naming the value', T, async () => {
        const r = await chat(port, body('pin-model', nonce('unk')), { key: PIN_KEY,
            headers: { 'x-leo-route': 'fast/mock-small' } });
        assert.equal(r.status, 400, r.text);
        const e = r.json().error;
        assert.equal(e.code, 'unknown_deployment');
        assert.equal(e.type, 'invalid_request_error');
        assert.equal(e.message, 'x-leo-route "fast/mock-small" is not a deployment of model "pin-model"');
    });
});

describe('hedging', () => {
    it('the hedge answers first: it serves, the first attempt is cancelled upstream', T, async () => {
        const n = nonce('hw');
        const before = await gw.metrics();
        const r = await chat(port, body('hedge-win', n), { key: PLAIN_KEY });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'fast/mock-small');
        assert.equal(r.headers['x-leo-attempts'], '2');
        assert.equal(r.json().choices[0].message.content, `mock reply to: ${n}`);
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, 'slow/mock-small:cancelled');
        /* both reached the mock; the slow one was dropped by the gateway before its answer */
        await abortedAt(n, 'delay_headers_ms=4000');
        const fastRecs = (await mock.requestsWith(n, { count: 2 })).filter((x) =>
            recordedHeader(x, 'x-mock-fault') === undefined);
        assert.equal(fastRecs.length, 1);
        assert.equal(fastRecs[0].aborted, undefined);
        const m = await gw.metrics();
        const won = (s) => metricSum(s, 'leo_route_hedges_total', { model: 'hedge-win', outcome: 'won' });
        assert.equal(won(m) - won(before), 1);
    });

    it('a hedged stream: the hedge streams the whole answer', T, async () => {
        const n = nonce('hws');
        const s = await openStream(port, body('hedge-win', `hello ${n}`, { stream: true }), { key: PLAIN_KEY });
        assert.equal(s.status, 200);
        assert.equal(s.headers['x-leo-deployment'], 'fast/mock-small');
        assert.equal(s.headers['x-leo-attempts'], '2');
        const end = await s.end;
        assert.equal(end.error, null);
        const data = end.events.map((e) => e.data);
        assert.equal(data[data.length - 1], '[DONE]');
        const text = data.slice(0, -1).map((d) => JSON.parse(d))
            .map((c) => (c.choices && c.choices[0] && c.choices[0].delta.content) || '').join('');
        assert.equal(text, `mock reply to: hello ${n}`);
        await abortedAt(n, 'delay_headers_ms=4000');
    });

    it('the first attempt answers first: it serves, the hedge is cancelled and counted as lost', T, async () => {
        const n = nonce('hl');
        const before = await gw.metrics();
        const r = await chat(port, body('hedge-lose', n), { key: PLAIN_KEY });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'mid/mock-small');
        assert.equal(r.headers['x-leo-attempts'], '2');
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, 'slow2/mock-small:cancelled');
        await abortedAt(n, 'delay_headers_ms=4000');
        const m = await gw.metrics();
        const lost = (s) => metricSum(s, 'leo_route_hedges_total', { model: 'hedge-lose', outcome: 'lost' });
        assert.equal(lost(m) - lost(before), 1);
    });

    it('a hedge that fails before headers leaves the first attempt to finish', T, async () => {
        const n = nonce('hf');
        const r = await chat(port, body('hedge-fail', n), { key: PLAIN_KEY });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'mid/mock-small');
        assert.equal(r.headers['x-leo-attempts'], '2');
        assert.equal(r.json().choices[0].message.content, `mock reply to: ${n}`);
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.failed_attempts, 'err500/mock-small:500');
        const recs = await mock.requestsWith(n, { count: 2 });
        assert.equal(recs.length, 2);
        assert.ok(recs.every((x) => x.aborted === undefined), JSON.stringify(recs.map((x) => x.aborted)));
    });

    it('quota settlement counts the winner only: a budget of two requests serves two hedged requests', T,
        async () => {
            const exact = { model: 'hedge-win', max_tokens: 11, messages: [{ role: 'user', content: EXACT_TEXT }] };
            for (let i = 0; i < 2; i++) {
                const r = await chat(port, exact, { key: BUDGET_KEY });
                assert.equal(r.status, 200, `request ${i + 1}: ${r.text}`);
                assert.equal(r.headers['x-leo-attempts'], '2');
                assert.equal(r.json().usage.prompt_tokens + r.json().usage.completion_tokens, EXACT_TOKENS);
            }
            const r = await chat(port, exact, { key: BUDGET_KEY });
            assert.equal(r.status, 429, r.text);
            assert.equal(r.json().error.message,
                'tenant "budget" exceeded its tokens_day limit (limit 44, remaining 0)');
        });
});
