/*
 * quota.test.mjs — quotas, rate limits and concurrency limits (docs/limits.md) enforced by the real gateway in
 * front of the mock provider, with and without a private Redis (redis-server started by this file).
 *
 * Requests whose estimate must be exact use EXACT_TEXT with max_tokens 11: the gateway estimates
 * ceil(15 chars / 4) + 4 per message + 3 = 11 input tokens plus 11 output tokens, and the mock reports exactly
 * prompt_tokens 8 words + 3 = 11 and completion_tokens "mock reply to:" 3 + 8 = 11 words. Settlement therefore
 * moves no counter, and budgets hold an exact number of requests: 22 tokens and, at the mock-small price
 * (0.10 / 0.40 USD per 1M tokens), 5.5 micro-USD rounded up to 6 micro-USD per request.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
    Gateway,
    Mock,
    RawConn,
    chat,
    freePort,
    hashKey,
    metricSum,
    nonce,
    rawRequest,
    request,
} from './lib/harness.mjs';
import { Redis } from './lib/redis.mjs';

const T = { timeout: 15000 };

const EXACT_TEXT = 'a b c d e f g h';
const EXACT_BODY = { model: 'gpt-4o-mini', max_tokens: 11, messages: [{ role: 'user', content: EXACT_TEXT }] };
const EXACT_TOKENS = 22;
const EXACT_MICRO_USD = 6;

/* ------------------------------------------------------------------------------------------------------------
 * Configuration and requests
 * ------------------------------------------------------------------------------------------------------------ */

const KEYS = {
    a1: 'sk-leo-quota-a1-0001',
    a2: 'sk-leo-quota-a2-0002',
    b1: 'sk-leo-quota-b1-0003',
    b2: 'sk-leo-quota-b2-0004',
    u1: 'sk-leo-quota-u1-0005',
    c1: 'sk-leo-quota-c1-0006',
    r1: 'sk-leo-quota-r1-0007',
    x1: 'sk-leo-quota-x1-0008',
    y1: 'sk-leo-quota-y1-0009',
};
const hashes = {};

function config(mockPort, tenants, redis) {
    const c = {
        listen: '127.0.0.1:0',
        workers: 1,
        drain_timeout_ms: 5000,
        providers: [{ name: 'mock', type: 'openai', base_url: `http://127.0.0.1:${mockPort}/v1` }],
        models: [{ name: 'gpt-4o-mini', deployments: [{ provider: 'mock', model: 'mock-small' }] }],
        prices: { 'mock-small': { input: 0.1, output: 0.4 } },
        alerts: { threshold: 0 },
        tenants,
    };
    if (redis) c.redis = redis;
    return c;
}

const key = (name, quotas) => (quotas ? { name, hash: hashes[name], quotas } : { name, hash: hashes[name] });

function chatAs(port, k, body) {
    return chat(port, body, { key: KEYS[k] });
}

/** Milliseconds of an OpenAI-style reset duration ("20ms", "7s", "1m23s", "1h2m3s"). */
function parseReset(v) {
    const m = /^(?:(\d+)ms|(?:(\d+)h)?(?:(\d+)m)?(\d+)s)$/.exec(v || '');
    assert.ok(m, `reset header ${JSON.stringify(v)}`);
    if (m[1] !== undefined) return Number(m[1]);
    return ((Number(m[2] || 0) * 60 + Number(m[3] || 0)) * 60 + Number(m[4])) * 1000;
}

function marked(tag, extra = {}) {
    const n = nonce(tag);
    const messages = [{ role: 'user', content: `hello ${n}` }];
    return { n, body: { model: 'gpt-4o-mini', max_tokens: 16, messages, ...extra } };
}

/** Asserts an OpenAI-shaped error body and returns its error object. */
function openaiError(r, status, code) {
    assert.equal(r.status, status, `status; body: ${r.text}`);
    assert.match(r.headers['content-type'] || '', /^application\/json/);
    const j = JSON.parse(r.text);
    assert.deepEqual(Object.keys(j), ['error']);
    assert.deepEqual(Object.keys(j.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(j.error.code, code, `error.code; body: ${r.text}`);
    assert.equal(j.error.type, status === 429 ? 'rate_limit_error' : 'service_unavailable');
    assert.equal(j.error.param, null);
    return j.error;
}

/** Resolves once `count` more "redis: connected" lines (from `from` on) came from distinct worker roles. */
async function redisConnected(gw, count, from = 0, timeoutMs = 8000) {
    const roles = new Set();
    await gw.stderr.waitForJson((j) => {
        if (typeof j.msg === 'string' && j.msg.startsWith('redis: connected to') && /^worker-/.test(j.role || '')) {
            roles.add(j.role);
        }
        return roles.size >= count;
    }, { from, timeoutMs, what: `"redis: connected" from ${count} worker(s)` });
}

/** Successful EVAL + EVALSHA calls in an INFO commandstats text. */
function scriptCalls(stats) {
    let n = 0;
    for (const m of stats.matchAll(/^cmdstat_(?:eval|evalsha):calls=(\d+)/gm)) n += Number(m[1]);
    return n;
}

let mock;
let redis;

before(async () => {
    const names = Object.keys(KEYS);
    const [m, hs, redisPort] = await Promise.all([Mock.start(), Promise.all(names.map((n) => hashKey(KEYS[n]))),
        freePort()]);
    mock = m;
    names.forEach((n, i) => {
        hashes[n] = hs[i];
    });
    redis = new Redis(redisPort);
    await redis.start();
}, { timeout: 15000 });

after(async () => {
    await Promise.allSettled([mock && mock.stop(), redis && redis.kill()]);
}, { timeout: 15000 });

async function stopGateway(gw) {
    const info = await gw.stop();
    assert.equal(info.code, 0, `gateway exit after SIGTERM: ${JSON.stringify(info)}\n${gw.stderr.tail(20)}`);
}

/* ------------------------------------------------------------------------------------------------------------
 * Standalone: in-process counters, one worker
 * ------------------------------------------------------------------------------------------------------------ */

describe('standalone quotas (no redis, one worker)', () => {
    let gw;

    before(async () => {
        gw = await Gateway.start({
            config: config(mock.port, [
                { id: 'ta', keys: [key('a1', { rpm: 3 }), key('a2')] },
                { id: 'tb', quotas: { rpm: 2 }, keys: [key('b1'), key('b2')] },
                { id: 'tu', quotas: { usd_per_day: (10 * EXACT_MICRO_USD + 3) / 1e6 }, keys: [key('u1')] },
                { id: 'tc', keys: [key('c1', { concurrency: 2 })] },
            ]),
        });
    }, { timeout: 15000 });

    after(async () => {
        if (gw) await stopGateway(gw);
    }, { timeout: 15000 });

    it('key rpm 3: the 4th request is a 429 quota_exceeded with Retry-After and x-ratelimit-*, never sent upstream',
        T, async () => {
            const t0 = Date.now();
            for (let i = 0; i < 3; i++) {
                const { n, body } = marked('rpmok');
                const r = await chatAs(gw.port, 'a1', body);
                assert.equal(r.status, 200, `request ${i + 1}: ${r.text}`);
                await mock.requestWith(n);
            }
            const { n, body } = marked('rpmno');
            const r = await chatAs(gw.port, 'a1', body);
            const err = openaiError(r, 429, 'quota_exceeded');
            assert.equal(err.message, 'key "ta/a1" exceeded its rpm limit (limit 3, remaining 0)');
            const t1 = Date.now();
            const ra = Number(r.headers['retry-after']);
            assert.equal(r.headers['x-ratelimit-limit-requests'], '3');
            assert.equal(r.headers['x-ratelimit-remaining-requests'], '0');
            const reset = parseReset(r.headers['x-ratelimit-reset-requests']);
            /* sliding window, 3 requests in the current minute: one more fits once 3 * (60 s - e) / 60 s + 1 <= 3
             * in the next minute (e >= 20 s), and the window is empty at the end of the next minute */
            assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 80, `Retry-After ${r.headers['retry-after']}`);
            if (Math.floor(t0 / 60000) === Math.floor(t1 / 60000)) {
                const left = 60000 - (t1 % 60000);
                assert.ok(Math.abs(ra - Math.ceil((left + 20000) / 1000)) <= 1,
                    `Retry-After ${ra}, ${left} ms left in the minute`);
                assert.ok(Math.abs(reset - (left + 60000)) <= 1500, `reset ${reset} ms, ${left} ms left in minute`);
            }
            assert.match(r.headers['x-leo-request-id'] || '', /^req_[0-9a-f]{20}$/);
            /* the refusal happened before any upstream call */
            assert.equal((await mock.requestsWith(n, { timeoutMs: 300 })).length, 0, 'the mock saw a refused request');

            /* the access log names the refusal */
            const line = await gw.accessLine(r.headers['x-leo-request-id']);
            assert.equal(line.status, 429);
            assert.equal(line.tenant, 'ta');
            assert.equal(line.key, 'a1');
        });

    it('on /v1/messages the refusal is Anthropic-shaped', T, async () => {
        const n = nonce('rpmmsg');
        const r = await request(gw.port, {
            method: 'POST',
            path: '/v1/messages',
            headers: { 'x-api-key': KEYS.a1, 'anthropic-version': '2023-06-01' },
            body: { model: 'gpt-4o-mini', max_tokens: 16, messages: [{ role: 'user', content: `hello ${n}` }] },
        });
        assert.equal(r.status, 429, r.text);
        assert.deepEqual(r.json(), {
            type: 'error',
            error: { type: 'rate_limit_error', message: 'key "ta/a1" exceeded its rpm limit (limit 3, remaining 0)' },
        });
        assert.ok(Number(r.headers['retry-after']) >= 1);
        assert.equal(r.headers['x-ratelimit-remaining-requests'], '0');
        assert.equal((await mock.requestsWith(n, { timeoutMs: 300 })).length, 0);
    });

    it('another key of the same tenant is not affected by a key quota', T, async () => {
        for (let i = 0; i < 5; i++) {
            const r = await chatAs(gw.port, 'a2', marked('a2').body);
            assert.equal(r.status, 200, `request ${i + 1} of the unlimited key: ${r.text}`);
        }
    });

    it('a tenant rpm is shared by all its keys', T, async () => {
        assert.equal((await chatAs(gw.port, 'b1', marked('tb').body)).status, 200);
        assert.equal((await chatAs(gw.port, 'b2', marked('tb').body)).status, 200);
        for (const k of ['b1', 'b2']) {
            const { n, body } = marked('tbno');
            const r = await chatAs(gw.port, k, body);
            const err = openaiError(r, 429, 'quota_exceeded');
            assert.equal(err.message, 'tenant "tb" exceeded its rpm limit (limit 2, remaining 0)');
            assert.equal(r.headers['x-ratelimit-limit-requests'], '2');
            assert.equal((await mock.requestsWith(n, { timeoutMs: 200 })).length, 0);
        }
    });

    it('a tenant usd_per_day budget with room for 10 estimates admits exactly 10', T, async () => {
        const before = (await mock.requests()).length;
        const statuses = [];
        let refusal;
        for (let i = 0; i < 13; i++) {
            const r = await chatAs(gw.port, 'u1', EXACT_BODY);
            statuses.push(r.status);
            if (r.status === 200) {
                /* the estimate is exact: the provider's usage equals it */
                assert.equal(r.json().usage.prompt_tokens + r.json().usage.completion_tokens, EXACT_TOKENS);
            } else {
                refusal = r;
            }
        }
        assert.deepEqual(statuses, [...Array(10).fill(200), 429, 429, 429]);
        const err = openaiError(refusal, 429, 'quota_exceeded');
        assert.equal(err.message,
            'tenant "tu" exceeded its usd_day quota (limit 0.000063 USD, remaining 0.000003 USD)');
        /* a day limit's Retry-After is the time until the UTC day ends */
        const now = new Date();
        const midnight = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1);
        const want = Math.ceil((midnight - now.getTime()) / 1000);
        const ra = Number(refusal.headers['retry-after']);
        assert.ok(Math.abs(ra - want) <= 5 || (want <= 5 && ra >= 1), `Retry-After ${ra}, expected about ${want}`);
        assert.equal((await mock.requests()).length - before, 10, 'the mock saw exactly the admitted requests');
    });

    it('concurrency 2: of 5 slow requests in parallel 2 are served and 3 refused at once', T, async () => {
        const slow = (i) => ({
            model: 'gpt-4o-mini',
            max_tokens: 16,
            messages: [{ role: 'user', content: `slow ${nonce('conc')} ${i} [[mock:delay_headers_ms=600]]` }],
        });
        const t0 = Date.now();
        const rs = await Promise.all([0, 1, 2, 3, 4].map(async (i) => {
            const r = await chatAs(gw.port, 'c1', slow(i));
            return { r, ms: Date.now() - t0 };
        }));
        const ok = rs.filter((x) => x.r.status === 200);
        const refused = rs.filter((x) => x.r.status !== 200);
        assert.equal(ok.length, 2, `statuses ${rs.map((x) => x.r.status)}`);
        assert.equal(refused.length, 3);
        for (const x of ok) assert.ok(x.ms >= 590, `a served request took only ${x.ms} ms`);
        for (const x of refused) {
            const err = openaiError(x.r, 429, 'quota_exceeded');
            assert.equal(err.message, 'key "tc/c1" exceeded its concurrency limit (limit 2, remaining 0)');
            assert.equal(x.r.headers['retry-after'], '1');
            assert.ok(x.ms < 590, `a refusal took ${x.ms} ms: it waited for a slot`);
        }
        /* the slots were released when the two finished */
        const again = await Promise.all([0, 1].map((i) => chatAs(gw.port, 'c1', marked(`conc${i}`).body)));
        assert.deepEqual(again.map((r) => r.status), [200, 200]);
    });
});

/* ------------------------------------------------------------------------------------------------------------
 * Redis: shared counters across workers, outages
 * ------------------------------------------------------------------------------------------------------------ */

describe('quotas on redis', () => {
    it('200 concurrent requests on two workers: a tokens_per_day budget for 20 admits exactly 20', { timeout: 20000 },
        async () => {
            const N = 20;
            const gw = await Gateway.start({
                workers: 2,
                config: config(mock.port,
                    [{ id: 'tr', quotas: { tokens_per_day: N * EXACT_TOKENS }, keys: [key('r1')] }],
                    { url: `redis://127.0.0.1:${redis.port}/0`, timeout_ms: 1000, on_failure: 'closed' }),
            });
            try {
                await redisConnected(gw, 2);
                const before = (await mock.requests()).length;
                const scriptsBefore = scriptCalls(String(await redis.command('INFO', 'commandstats')));
                const payload = JSON.stringify(EXACT_BODY);
                const req = rawRequest('POST', '/v1/chat/completions', [['Authorization', `Bearer ${KEYS.r1}`],
                    ['Content-Type', 'application/json']], payload);
                /* 40 keep-alive connections, 5 requests each, all connections at once */
                const conns = await Promise.all(Array.from({ length: 40 }, () => RawConn.open(gw.port)));
                const results = await Promise.all(conns.map(async (c) => {
                    const out = [];
                    for (let i = 0; i < 5; i++) {
                        await c.write(req);
                        out.push(await c.readResponse({ timeoutMs: 10000 }));
                    }
                    c.destroy();
                    return out;
                }));
                const all = results.flat();
                assert.equal(all.length, 200);
                const admitted = all.filter((r) => r.status === 200);
                const refused = all.filter((r) => r.status !== 200);
                for (const r of refused) {
                    assert.equal(r.status, 429, `a refusal other than 429: ${r.status} ${r.text}`);
                    const j = JSON.parse(r.text);
                    assert.equal(j.error.code, 'quota_exceeded', r.text);
                    assert.match(j.error.message,
                        /^tenant "tr" exceeded its tokens_day limit \(limit 440, remaining \d+\)$/);
                }
                /* estimates equal the actual usage, so the budget holds exactly N (the documented bound is N..N+1) */
                assert.equal(admitted.length, N, `admitted ${admitted.length} of 200`);
                assert.equal((await mock.requests()).length - before, N, 'the mock saw exactly the admitted requests');

                /* the shared counter holds exactly the usage of the admitted requests once everything settled */
                const keys = await redis.command('KEYS', 'leo:q:tenant:tr:tokens_day:*');
                assert.equal(keys.length, 1, `redis keys ${JSON.stringify(keys)}`);
                assert.equal(Number(await redis.command('GET', keys[0])), N * EXACT_TOKENS);

                /* both workers hold a connection to redis (the shared counters); that both ran the admission
                 * scripts is proven with MONITOR in quota_workers.test.mjs: the last command of a connection
                 * here may be anything the worker shares it for (usage events, the caches' stream) */
                const clients = String(await redis.command('CLIENT', 'LIST')).trim().split('\n')
                    .filter((l) => !/ cmd=client\|list /.test(l) && !/ cmd=client /.test(l));
                assert.equal(clients.length, 2, `redis clients:\n${clients.join('\n')}`);
                /* one admission script per request, one settlement script per admitted request */
                const scripts = scriptCalls(String(await redis.command('INFO', 'commandstats'))) - scriptsBefore;
                assert.ok(scripts >= 200 + N, `script calls: ${scripts}`);
            } finally {
                await stopGateway(gw);
            }
        });

    it('redis killed mid-run: "closed" answers 503 quota_unavailable, "open" keeps serving on local counters; ' +
        'back up, redis enforces again', { timeout: 20000 }, async () => {
        const url = `redis://127.0.0.1:${redis.port}/0`;
        const [closed, open] = await Promise.all([
            Gateway.start({
                config: config(mock.port, [{ id: 'tx', keys: [key('x1', { rpm: 3 })] }],
                    { url, timeout_ms: 500, on_failure: 'closed' }),
            }),
            Gateway.start({
                config: config(mock.port, [{ id: 'ty', keys: [key('y1', { rpm: 3 })] }],
                    { url, timeout_ms: 500, on_failure: 'open' }),
            }),
        ]);
        try {
            await Promise.all([redisConnected(closed, 1), redisConnected(open, 1)]);
            assert.equal((await chatAs(closed.port, 'x1', marked('x').body)).status, 200);
            assert.equal((await chatAs(open.port, 'y1', marked('y').body)).status, 200);
            assert.equal((await redis.command('KEYS', 'leo:q:key:tx/x1:rpm:*')).length, 1, 'counted in redis');

            await redis.kill();
            const markClosed = closed.stderr.mark();
            const markOpen = open.stderr.mark();

            /* fail closed: 503 quota_unavailable, nothing sent upstream */
            for (let i = 0; i < 2; i++) {
                const { n, body } = marked('xdown');
                const r = await chatAs(closed.port, 'x1', body);
                const err = openaiError(r, 503, 'quota_unavailable');
                assert.equal(err.message, 'quota service unavailable');
                assert.equal((await mock.requestsWith(n, { timeoutMs: 200 })).length, 0);
            }
            /* fail open: served on the worker's own counters, which still apply the limit */
            for (let i = 0; i < 3; i++) {
                const r = await chatAs(open.port, 'y1', marked('ydown').body);
                assert.equal(r.status, 200, `fail-open request ${i + 1}: ${r.text}`);
            }
            const local = await chatAs(open.port, 'y1', marked('ydown').body);
            assert.equal(openaiError(local, 429, 'quota_exceeded').message,
                'key "ty/y1" exceeded its rpm limit (limit 3, remaining 0)');
            const mo = await open.metrics();
            assert.equal(metricSum(mo, 'leo_quota_redis_failures_total', { policy: 'fail_open' }), 4);
            const mc = await closed.metrics();
            assert.equal(metricSum(mc, 'leo_quota_redis_failures_total', { policy: 'fail_closed' }), 2);

            /* redis back (empty): both reconnect and the shared counters apply again */
            await redis.start();
            await Promise.all([redisConnected(closed, 1, markClosed), redisConnected(open, 1, markOpen)]);
            for (const [gw, k, tenant] of [[closed, 'x1', 'tx'], [open, 'y1', 'ty']]) {
                /* 3 admitted: redis starts from zero; on "open" the worker's own counters are full, so these
                 * 200s can only come from redis */
                for (let i = 0; i < 3; i++) {
                    const r = await chatAs(gw.port, k, marked('up').body);
                    assert.equal(r.status, 200, `${tenant} after redis returned, request ${i + 1}: ${r.text}`);
                }
                const r = await chatAs(gw.port, k, marked('up').body);
                assert.equal(openaiError(r, 429, 'quota_exceeded').message,
                    `key "${tenant}/${k}" exceeded its rpm limit (limit 3, remaining 0)`);
                /* the admitted 3 are counted in redis (a refusal reserves nothing); a minute boundary may
                 * split them over two counters */
                const ks = await redis.command('KEYS', `leo:q:key:${tenant}/${k}:rpm:*`);
                assert.ok(ks.length >= 1, `rpm counter of ${tenant} in redis`);
                let total = 0;
                for (const x of ks) total += Number(await redis.command('GET', x));
                assert.equal(total, 3, `${tenant} requests counted in redis`);
            }
        } finally {
            await Promise.allSettled([stopGateway(closed), stopGateway(open)]);
        }
    });
});
