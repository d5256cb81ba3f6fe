/*
 * analytics.test.mjs — GET /v1/analytics (docs/analytics.md) against the real gateway with two workers, a
 * private redis-server and the mock provider: known requests go in, and the report (JSON and CSV) must give
 * back exactly their counts, tokens, cost and routing savings, per tenant, with tenant isolation.
 *
 * Expected figures come from the usage the mock reported in each answer and the configured prices:
 * mock-small 0.10 / 0.40 USD per 1M tokens (100 / 400 nano-USD per token), mock-large the shipped default
 * 2.00 / 8.00 (2000 / 8000 nano-USD per token). "fb-model" prefers a dead deployment priced as mock-large and
 * falls back to mock-small, so each of its requests saves the difference.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { chat, hashKey, metricSum, request, startStack } from './lib/harness.mjs';
import { Redis } from './lib/redis.mjs';

const ADMIN_KEY = 'sk-leo-analytics-admin-0003';
const NANO = { 'mock-small': [100, 400], 'mock-large': [2000, 8000] };

/* ---- helpers ---- */

function analytics(port, key, query = '') {
    return request(port, { method: 'GET', path: `/v1/analytics${query}`, headers: { Authorization: `Bearer ${key}` } });
}

/** Polls the report until pred(json) holds (the workers flush about once a second), bounded by timeoutMs. */
async function waitReport(port, key, query, pred, timeoutMs = 15000) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        const r = await analytics(port, key, query);
        assert.equal(r.status, 200, r.text);
        last = r.json();
        if (pred(last)) return last;
        if (Date.now() > deadline) throw new Error(`report never matched; last: ${JSON.stringify(last.totals)}`);
        await new Promise((res) => setTimeout(res, 100));
    }
}

const nanoOf = (usd) => Math.round(Number(usd) * 1e9);

/** Parses RFC 4180 CSV text (CRLF rows, quoted fields) into arrays of strings. */
function parseCSV(text) {
    const rows = [];
    let row = [];
    let field = '';
    let quoted = false;
    for (let i = 0; i < text.length; i++) {
        const c = text[i];
        if (quoted) {
            if (c === '"' && text[i + 1] === '"') {
                field += '"';
                i++;
            } else if (c === '"') {
                quoted = false;
            } else {
                field += c;
            }
        } else if (c === '"') {
            quoted = true;
        } else if (c === ',') {
            row.push(field);
            field = '';
        } else if (c === '\r' && text[i + 1] === '\n') {
            row.push(field);
            rows.push(row);
            row = [];
            field = '';
            i++;
        } else {
            field += c;
        }
    }
    if (field !== '' || row.length) {
        row.push(field);
        rows.push(row);
    }
    return rows;
}

/** What one tenant's requests must add up to: built from the answers the clients got. */
class Expect {
    constructor() {
        this.models = {};
    }

    add(model, { status, usage, upstream, first, cache }) {
        const m = (this.models[model] ??= { requests: 0, errors: 0, tin: 0, tout: 0, nusd: 0, rtnusd: 0, hit: 0,
            miss: 0, bypass: 0, svtok: 0, svnusd: 0 });
        m.requests++;
        if (status >= 400) m.errors++;
        if (cache) m[cache]++;
        if (cache === 'hit') {
            /* nothing spent; the original answer's usage at the price of the model's first deployment saved */
            const [pi, po] = NANO[upstream];
            m.svtok += usage.prompt_tokens + usage.completion_tokens;
            m.svnusd += usage.prompt_tokens * pi + usage.completion_tokens * po;
        } else if (usage) {
            const [pi, po] = NANO[upstream];
            m.tin += usage.prompt_tokens;
            m.tout += usage.completion_tokens;
            m.nusd += usage.prompt_tokens * pi + usage.completion_tokens * po;
            if (first && first !== upstream) {
                const [fi, fo] = NANO[first];
                m.rtnusd += usage.prompt_tokens * (fi - pi) + usage.completion_tokens * (fo - po);
            }
        }
        return m;
    }

    total(field) {
        return Object.values(this.models).reduce((s, m) => s + m[field], 0);
    }
}

function assertAgg(agg, exp, what) {
    assert.equal(agg.requests, exp.requests, `${what}: requests`);
    assert.equal(agg.errors, exp.errors, `${what}: errors`);
    assert.equal(agg.tokens.input, exp.tin, `${what}: input tokens`);
    assert.equal(agg.tokens.output, exp.tout, `${what}: output tokens`);
    assert.equal(nanoOf(agg.cost_usd), exp.nusd, `${what}: cost`);
    assert.equal(nanoOf(agg.saved.routing_usd), exp.rtnusd, `${what}: routing saving`);
    assert.equal(agg.cache.hits, exp.hit, `${what}: cache hits`);
    assert.equal(agg.cache.misses, exp.miss, `${what}: cache misses`);
    assert.equal(agg.cache.bypass, exp.bypass, `${what}: cache bypass`);
    assert.equal(agg.cache.semantic_hits, 0, `${what}: semantic hits`);
    assert.equal(agg.saved.cache_tokens, exp.svtok, `${what}: tokens saved by the cache`);
    assert.equal(nanoOf(agg.saved.cache_usd), exp.svnusd, `${what}: USD saved by the cache`);
    assert.equal(nanoOf(agg.saved.total_usd), exp.svnusd + exp.rtnusd, `${what}: USD saved`);
}

function assertTotals(report, expect, what) {
    const t = report.totals;
    const fields = ['requests', 'errors', 'tin', 'tout', 'nusd', 'rtnusd', 'hit', 'miss', 'bypass', 'svtok', 'svnusd'];
    assertAgg(t, Object.fromEntries(fields.map((f) => [f, expect.total(f)])), what);
    assert.deepEqual(report.models.map((m) => m.model), Object.keys(expect.models).sort(), `${what}: models`);
    for (const m of report.models) assertAgg(m, expect.models[m.model], `${what} ${m.model}`);
    /* the series adds up to the totals */
    const sum = report.series.reduce((s, b) => s + b.requests, 0);
    assert.equal(sum, t.requests, `${what}: series requests`);
    assert.ok(t.latency_ms.p50 > 0 && t.latency_ms.p50 <= t.latency_ms.p95 && t.latency_ms.p95 <= t.latency_ms.p99);
}

/* ---- the stack ---- */

let stack;
let redis;
const expectT1 = new Expect();
const expectT2 = new Expect();

before(async () => {
    redis = await Redis.start();
    const adminHash = await hashKey(ADMIN_KEY);
    stack = await startStack({
        workers: 2,
        mutate(c) {
            c.redis = { url: `redis://127.0.0.1:${redis.port}`, timeout_ms: 1000 };
            c.models.push({
                name: 'fb-model',
                deployments: [
                    { provider: 'dead', model: 'mock-large', priority: 0 },
                    { provider: 'mock', model: 'mock-small', priority: 1 },
                ],
            });
            c.tenants.push({ id: 'ops', keys: [{ name: 'admin', hash: adminHash, admin: true }] });
        },
    });
});

after(async () => {
    try {
        if (stack) await stack.stop();
    } finally {
        if (redis) await redis.stop();
    }
});

describe('GET /v1/analytics', () => {
    it('reports exactly what known requests spent and saved, per tenant, from both workers', { timeout: 60000 },
        async () => {
            const { gw, keys } = stack;
            const plan = [
                ['t1', 'gpt-4o-mini', 'mock-small'], ['t1', 'gpt-4o-mini', 'mock-small'],
                ['t1', 'gpt-4o-mini', 'mock-small'], ['t1', 'other-model', 'mock-large'],
                ['t1', 'other-model', 'mock-large'], ['t1', 'fb-model', 'mock-small', 'mock-large'],
                ['t1', 'fb-model', 'mock-small', 'mock-large'], ['t1', 'dead-model', null],
                ['t2', 'gpt-4o-mini', 'mock-small'], ['t2', 'gpt-4o-mini', 'mock-small'],
                /* deterministic and identical: the second is answered by the cache */
                ['t1', 'gpt-4o-mini', 'mock-small', undefined, 'same question'],
                ['t1', 'gpt-4o-mini', 'mock-small', undefined, 'same question'],
            ];
            let i = 0;
            for (const [tenant, model, upstream, first, same] of plan) {
                i++;
                const body = same ? { model, temperature: 0, messages: [{ role: 'user', content: same }] }
                    : { model, messages: [{ role: 'user', content: `word `.repeat(i) + 'end' }] };
                let r = await chat(gw.port, body, { key: keys[tenant] });
                if (same && i === plan.length) {
                    /* the first answer reaches Redis (and the other worker) a moment after its client got it:
                     * repeat until the cache answers, counting every answer */
                    for (const until = Date.now() + 5000; r.headers['x-leo-cache-status'] === 'miss' &&
                        Date.now() < until;) {
                        (tenant === 't1' ? expectT1 : expectT2).add(model,
                            { status: r.status, usage: r.json().usage, upstream, first, cache: 'miss' });
                        r = await chat(gw.port, body, { key: keys[tenant] });
                    }
                }
                const usage = r.status === 200 ? r.json().usage : null;
                const cache = r.headers['x-leo-cache-status'];
                if (same) assert.equal(cache, i === plan.length ? 'hit' : 'miss');
                if (model === 'dead-model') assert.ok(r.status >= 500, `dead-model answered ${r.status}`);
                else assert.equal(r.status, 200, r.text);
                if (model === 'fb-model') assert.equal(r.headers['x-leo-deployment'], 'mock/mock-small');
                (tenant === 't1' ? expectT1 : expectT2).add(model, { status: r.status, usage, upstream, first, cache });
            }
            assert.ok(expectT1.total('rtnusd') > 0, 'the fallback saved something');

            const q = '?granularity=minute';
            const t1 = await waitReport(gw.port, keys.t1, q, (j) => j.totals.requests >= expectT1.total('requests'));
            assert.equal(t1.tenant, 't1');
            assert.equal(t1.granularity, 'minute');
            assertTotals(t1, expectT1, 't1');
            /* the route distribution: fb-model always landed on its second deployment */
            const fb = t1.routes.filter((r) => r.model === 'fb-model');
            assert.deepEqual(fb.map((r) => [r.deployment, r.requests, r.share]), [['mock/mock-small', 2, 1]]);
            const dead = t1.routes.filter((r) => r.model === 'dead-model');
            assert.deepEqual(dead.map((r) => r.deployment), ['dead/mock-small']);
            assert.deepEqual(t1.keys, [
                { tenant: 't1', key: 'k1', requests: expectT1.total('requests') },
            ]);

            /* tenant B sees only its own numbers, and may not ask for A's */
            const t2 = await waitReport(gw.port, keys.t2, q, (j) => j.totals.requests >= 2);
            assertTotals(t2, expectT2, 't2');
            assert.deepEqual(t2.models.map((m) => m.model), ['gpt-4o-mini']);
            const denied = await analytics(gw.port, keys.t2, '?tenant=t1');
            assert.equal(denied.status, 403);
            assert.equal(denied.json().error.param, 'tenant');
            assert.equal(denied.json().error.code, 'tenant_forbidden');
            const own = await analytics(gw.port, keys.t2, '?tenant=t2&granularity=minute');
            assert.equal(own.json().totals.requests, 2);

            /* an admin sees either tenant, or all of them */
            const a1 = await analytics(gw.port, ADMIN_KEY, '?tenant=t1&granularity=minute');
            assert.equal(a1.status, 200);
            assertTotals(a1.json(), expectT1, 'admin t1');
            const all = await analytics(gw.port, ADMIN_KEY, '?granularity=hour');
            assert.equal(all.json().tenant, null);
            const both = new Expect();
            for (const e of [expectT1, expectT2]) {
                for (const [name, m] of Object.entries(e.models)) {
                    const b = (both.models[name] ??= {});
                    for (const [f, v] of Object.entries(m)) b[f] = (b[f] ?? 0) + v;
                }
            }
            assertTotals(all.json(), both, 'admin all');
            /* the model filter */
            const only = await analytics(gw.port, ADMIN_KEY, '?granularity=day&model=gpt-4o-mini');
            assert.equal(only.json().totals.requests,
                expectT1.models['gpt-4o-mini'].requests + expectT2.models['gpt-4o-mini'].requests);
            assert.deepEqual(only.json().models.map((m) => m.model), ['gpt-4o-mini']);

            /* both workers wrote through Redis, and the metrics show the flushes */
            const metrics = await gw.metrics();
            /* one event per request sent, the repeats of the last one (while its twin's answer travelled) included */
            assert.equal(metricSum(metrics, 'leo_analytics_events_total'),
                expectT1.total('requests') + expectT2.total('requests'));
            assert.ok(metricSum(metrics, 'leo_analytics_flushes_total', { result: 'ok' }) >= 1);
            assert.equal(metricSum(metrics, 'leo_analytics_dropped_total'), 0);
        });

    it('exports the series as CSV that parses back to the same numbers', { timeout: 20000 }, async () => {
        const { gw, keys } = stack;
        const json = (await analytics(gw.port, keys.t1, '?granularity=hour')).json();
        const r = await analytics(gw.port, keys.t1, '?granularity=hour&format=csv');
        assert.equal(r.status, 200);
        assert.match(r.headers['content-type'], /^text\/csv/);
        const rows = parseCSV(r.text);
        const header = rows[0];
        assert.deepEqual(header.slice(0, 5), ['bucket_start', 'bucket_ts', 'model', 'requests', 'errors']);
        const col = (name) => header.indexOf(name);
        const perModel = {};
        for (const row of rows.slice(1)) {
            assert.equal(row.length, header.length);
            const m = (perModel[row[col('model')]] ??= { requests: 0, tin: 0, tout: 0, nusd: 0, rtnusd: 0 });
            m.requests += Number(row[col('requests')]);
            m.tin += Number(row[col('input_tokens')]);
            m.tout += Number(row[col('output_tokens')]);
            m.nusd += nanoOf(row[col('cost_usd')]);
            m.rtnusd += nanoOf(row[col('saved_routing_usd')]);
        }
        assert.deepEqual(Object.keys(perModel).sort(), json.models.map((m) => m.model));
        for (const m of json.models) {
            assert.deepEqual(perModel[m.model], {
                requests: m.requests, tin: m.tokens.input, tout: m.tokens.output, nusd: nanoOf(m.cost_usd),
                rtnusd: nanoOf(m.saved.routing_usd),
            }, m.model);
        }
        assert.equal(perModel['gpt-4o-mini'].requests, expectT1.models['gpt-4o-mini'].requests);
    });

    it('names the bad parameter in an OpenAI-shaped 400', { timeout: 10000 }, async () => {
        const { gw, keys } = stack;
        for (const [query, param] of [
            ['?granularity=week', 'granularity'],
            ['?from=yesterday', 'from'],
            ['?to=2024-13-01', 'to'],
            ['?format=xml', 'format'],
            ['?from=2024-05-02&to=2024-05-01', 'from'],
            ['?granularity=minute&from=0', 'from'],
            ['?colour=blue', 'query'],
            ['?model=', 'model'],
            ['?granularity=%zz', 'granularity'],
        ]) {
            const r = await analytics(gw.port, keys.t1, query);
            assert.equal(r.status, 400, `${query}: ${r.text}`);
            const e = r.json().error;
            assert.equal(e.param, param, query);
            assert.equal(e.type, 'invalid_request_error');
        }
        const anon = await request(gw.port, { method: 'GET', path: '/v1/analytics' });
        assert.equal(anon.status, 401);
    });
});

describe('GET /v1/analytics without Redis', () => {
    it('keeps the buckets in the worker and reports them at once', { timeout: 30000 }, async () => {
        const s = await startStack({ workers: 1 });
        try {
            const exp = new Expect();
            for (const model of ['gpt-4o-mini', 'other-model', 'gpt-4o-mini']) {
                const r = await chat(s.gw.port, { model, messages: [{ role: 'user', content: 'one two three' }] },
                    { key: s.keys.t1 });
                assert.equal(r.status, 200, r.text);
                /* the access-log line is written when the request has ended, after it was recorded */
                await s.gw.accessLine(r.headers['x-leo-request-id']);
                exp.add(model, { status: 200, usage: r.json().usage, cache: r.headers['x-leo-cache-status'],
                    upstream: model === 'other-model' ? 'mock-large' : 'mock-small' });
            }
            const r = await analytics(s.gw.port, s.keys.t1, '?granularity=day');
            assert.equal(r.status, 200, r.text);
            assertTotals(r.json(), exp, 'in-process');
            const t2 = await analytics(s.gw.port, s.keys.t2, '?granularity=day');
            assert.equal(t2.json().totals.requests, 0);
            assert.deepEqual(t2.json().models, []);
        } finally {
            await s.stop();
        }
    });
});

describe('GET /v1/analytics across a Redis outage', () => {
    it('keeps counting while Redis is down, answers 503 meanwhile, and writes the buffer when it returns',
        { timeout: 60000 }, async () => {
            let r1 = await Redis.start();
            const port = r1.port;
            const s = await startStack({
                workers: 1,
                mutate(c) {
                    c.redis = { url: `redis://127.0.0.1:${port}`, timeout_ms: 500 };
                },
            });
            try {
                const ask = (text) => chat(s.gw.port, { model: 'gpt-4o-mini', messages: [{ role: 'user', content: text }] },
                    { key: s.keys.t1 });
                assert.equal((await ask('before the outage')).status, 200);
                await waitReport(s.gw.port, s.keys.t1, '?granularity=day', (j) => j.totals.requests === 1);

                await r1.kill();
                const exp = new Expect();
                for (const text of ['during one', 'during two three']) {
                    const r = await ask(text);
                    assert.equal(r.status, 200, r.text);
                    await s.gw.accessLine(r.headers['x-leo-request-id']);
                    exp.add('gpt-4o-mini', { status: 200, usage: r.json().usage, upstream: 'mock-small',
                        cache: r.headers['x-leo-cache-status'] });
                }
                const down = await analytics(s.gw.port, s.keys.t1, '?granularity=day');
                assert.equal(down.status, 503, down.text);
                assert.equal(down.json().error.code, 'analytics_unavailable');

                /* the worker tried to write them, failed, and kept them */
                await s.gw.stderr.waitForJson((l) => /^analytics: cannot write to redis/.test(l.msg || ''),
                    { what: 'the analytics outage warning' });
                /* back, empty (no persistence): exactly the two requests buffered during the outage arrive */
                r1 = await Redis.start({ port });
                const deadline = Date.now() + 20000;
                let j;
                for (;;) {
                    const r = await analytics(s.gw.port, s.keys.t1, '?granularity=day');
                    if (r.status === 200) {
                        j = r.json();
                        if (j.totals.requests >= 2) break;
                    }
                    if (Date.now() > deadline) throw new Error(`buffered requests never arrived: ${r.status} ${r.text}`);
                    await new Promise((res) => setTimeout(res, 100));
                }
                assertTotals(j, exp, 'after the outage');
                const m = await s.gw.metrics();
                assert.ok(metricSum(m, 'leo_analytics_flushes_total', { result: 'unavailable' }) +
                    metricSum(m, 'leo_analytics_flushes_total', { result: 'retry' }) >= 1);
                assert.equal(metricSum(m, 'leo_analytics_dropped_total'), 0);
            } finally {
                try {
                    await s.stop();
                } finally {
                    await r1.stop();
                }
            }
        });
});
