/*
 * quota_workers.test.mjs — every limit kind held exactly across workers: one leo-gateway with two workers
 * sharing one private redis-server (started by this file), the mock provider behind it.
 *
 * Each case owns a tenant (or a model) of its own, so the cases run concurrently: requests per minute, tokens
 * per minute, tokens and USD per day and per month, and concurrent requests, for the key scope and for the
 * tenant scope (whose requests alternate between two keys), plus the deployment scope (a deployment at its
 * limit is skipped, and the client gets 429 only when every deployment is). Every request opens a connection
 * of its own, so the kernel spreads them over both workers (SO_REUSEPORT); the admitted counts are exact.
 *
 * Requests use the exact body of quota.test.mjs: 11 input tokens estimated and reported, 11 output tokens, so
 * 22 tokens and 6 micro-USD (at 0.10 / 0.40 USD per 1M tokens) per request, and settlement moves nothing.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { Gateway, Mock, chat, freePort, hashKey } from './lib/harness.mjs';
import { Redis, redisCommand } from './lib/redis.mjs';

const T = { timeout: 20000 };
const EXACT_TEXT = 'a b c d e f g h';
const EXACT_TOKENS = 22;
const EXACT_MICRO_USD = 6;
const N = 5; /* what every budget below admits */
const FIRED = 12; /* requests fired at once at each budget */

/* ---- the stack ---- */

/* One tenant per case: [case name, scope, quotas]. The key scope puts the quota on the tenant's first key;
 * the tenant scope on the tenant, with two keys. */
const usd = (n) => (n * EXACT_MICRO_USD + 3) / 1e6;
const CASES = [
    ['rpm', { rpm: N }],
    ['tpm', { tpm: N * EXACT_TOKENS }],
    ['tokens_day', { tokens_per_day: N * EXACT_TOKENS }],
    ['tokens_month', { tokens_per_month: N * EXACT_TOKENS }],
    ['usd_day', { usd_per_day: usd(N) }],
    ['usd_month', { usd_per_month: usd(N) }],
];
const CONCURRENCY = 2;

const keyOf = (tenant, i) => `sk-leo-qw-${tenant}-${i}-00000000`;
const tenantIds = [];
for (const [kind] of CASES) tenantIds.push(`key-${kind}`, `tenant-${kind}`);
tenantIds.push('key-concurrency', 'tenant-concurrency', 'free');

let mock, redis, redisPort, gw;

/* A MONITOR connection: every command redis runs, with the address of the client that sent it. */
const scriptClients = new Set();
let monitor;
function startMonitor(port) {
    return new Promise((resolve, reject) => {
        monitor = net.connect({ host: '127.0.0.1', port });
        let rest = '';
        monitor.on('error', reject);
        monitor.on('connect', () => monitor.write('*1\r\n$7\r\nMONITOR\r\n'));
        monitor.on('data', (d) => {
            const lines = (rest + d.toString('latin1')).split('\r\n');
            rest = lines.pop();
            for (const l of lines) {
                if (l === '+OK') resolve();
                const m = /^\+[\d.]+ \[\d+ ([\d.]+:\d+)\] "(evalsha|eval)"/i.exec(l);
                if (m) scriptClients.add(m[1]);
            }
        });
    });
}

before(async () => {
    redisPort = await freePort();
    [mock, redis] = await Promise.all([Mock.start(), Redis.start({ port: redisPort })]);
    await startMonitor(redisPort);
    const hashes = {};
    await Promise.all(tenantIds.flatMap((t) => [0, 1].map(async (i) => {
        hashes[keyOf(t, i)] = await hashKey(keyOf(t, i));
    })));
    const tenant = (id, scope, quotas) => {
        const keys = [0, 1].map((i) => ({ name: `k${i}`, hash: hashes[keyOf(id, i)] }));
        if (scope === 'key') keys[0].quotas = quotas;
        return scope === 'tenant' ? { id, quotas, keys } : { id, keys };
    };
    const tenants = [];
    for (const [kind, q] of CASES) tenants.push(tenant(`key-${kind}`, 'key', q), tenant(`tenant-${kind}`, 'tenant', q));
    tenants.push(tenant('key-concurrency', 'key', { concurrency: CONCURRENCY }),
        tenant('tenant-concurrency', 'tenant', { concurrency: CONCURRENCY }), tenant('free', 'none'));
    const mockUrl = `http://127.0.0.1:${mock.port}/v1`;
    const prov = (name) => ({ name, type: 'openai', base_url: mockUrl });
    const dep = (provider, limits) => ({ provider, model: 'mock-small', limits });
    const config = {
        listen: '127.0.0.1:0',
        workers: 2,
        drain_timeout_ms: 5000,
        providers: [prov('mock'), prov('da'), prov('db'), prov('dc'), prov('dd'), prov('de')],
        models: [
            { name: 'gpt-4o-mini', deployments: [{ provider: 'mock', model: 'mock-small' }] },
            /* rpm: da takes 3, then db takes 2, then every deployment is at its limit */
            { name: 'dep-rpm', strategy: 'priority', deployments: [dep('da', { rpm: 3 }), dep('db', { rpm: 2 })] },
            /* concurrency: one request in flight on each */
            { name: 'dep-conc', strategy: 'priority',
                deployments: [dep('dc', { concurrency: 1 }), dep('dd', { concurrency: 1 })] },
            /* tpm: a single deployment with room for 3 exact requests */
            { name: 'dep-tpm', deployments: [dep('de', { tpm: 3 * EXACT_TOKENS })] },
        ],
        prices: { 'mock-small': { input: 0.1, output: 0.4 } },
        alerts: { threshold: 0 },
        redis: { url: `redis://127.0.0.1:${redisPort}/0`, timeout_ms: 1000, on_failure: 'closed' },
        tenants,
    };
    gw = await Gateway.start({ config, workers: 2 });
    /* both workers connected to redis before any request */
    const roles = new Set();
    await gw.stderr.waitForJson((j) => {
        if (typeof j.msg === 'string' && j.msg.startsWith('redis: connected to') && /^worker-/.test(j.role || '')) {
            roles.add(j.role);
        }
        return roles.size >= 2;
    }, { timeoutMs: 8000, what: 'both workers connected to redis' });
}, { timeout: 30000 });

after(async () => {
    if (monitor) monitor.destroy();
    const results = await Promise.allSettled([gw && gw.stop(), mock && mock.stop()]);
    if (redis) await redis.kill();
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const info = results[0].value;
    assert.equal(info && info.code, 0, `gateway exit: ${JSON.stringify(info)}`);
}, { timeout: 20000 });

const exact = (model = 'gpt-4o-mini', extra = '') =>
    ({ model, max_tokens: 11, messages: [{ role: 'user', content: `${EXACT_TEXT}${extra}` }] });

/** Fires `count` requests at once, alternating between the tenant's two keys. */
function fire(tenant, count, body = exact()) {
    return Promise.all(Array.from({ length: count }, (_, i) =>
        chat(gw.port, typeof body === 'function' ? body(i) : body, { key: keyOf(tenant, i % 2), timeoutMs: 15000 })));
}

function assertRefusals(rs, message) {
    for (const r of rs) {
        assert.equal(r.status, 429, `a refusal other than 429: ${r.status} ${r.text}`);
        const e = r.json().error;
        assert.equal(e.code, 'quota_exceeded', r.text);
        assert.equal(e.type, 'rate_limit_error');
        assert.match(e.message, message);
        assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After ${r.headers['retry-after']}`);
    }
}

/** The 200s and the rest of a batch of responses. */
const split = (rs) => [rs.filter((r) => r.status === 200), rs.filter((r) => r.status !== 200)];

describe('every limit kind, key and tenant scope, two workers on redis', () => {
    it('budgets and rate limits admit exactly their limit (12 cases at once)', T, async () => {
        const runs = [];
        for (const [kind] of CASES) {
            for (const scope of ['key', 'tenant']) {
                const tenant = `${scope}-${kind}`;
                /* the key scope is on key k0: only it is used, so the limit is what refuses */
                runs.push(fire(tenant, FIRED, exact()).then((rs) => ({ kind, scope, tenant, rs })));
            }
        }
        const keyOnly = [];
        for (const [kind] of CASES) {
            keyOnly.push(Promise.all(Array.from({ length: 3 }, () =>
                chat(gw.port, exact(), { key: keyOf(`key-${kind}`, 1) }))));
        }
        for (const { kind, scope, tenant, rs } of await Promise.all(runs)) {
            const [ok, refused] = split(rs);
            /* on the key scope, only requests made with k0 count: k1 of the same tenant is unlimited */
            const k0 = scope === 'key' ? rs.filter((_, i) => i % 2 === 0) : rs;
            const [k0ok, k0refused] = split(k0);
            if (scope === 'key') {
                assert.equal(k0ok.length, N, `${tenant}: k0 admitted ${k0ok.length} of ${k0.length}`);
                assert.equal(ok.length - k0ok.length, FIRED / 2, `${tenant}: the unlimited key was refused`);
            } else {
                assert.equal(ok.length, N, `${tenant}: admitted ${ok.length} of ${FIRED}`);
            }
            const who = scope === 'key' ? `key "${tenant}/k0"` : `tenant "${tenant}"`;
            const unit = kind.startsWith('usd') ? 'quota' : 'limit';
            assertRefusals(scope === 'key' ? k0refused : refused,
                new RegExp(`^${who.replace(/[/"]/g, '\\$&')} exceeded its ${kind} ${unit} `));
            for (const r of ok) {
                assert.equal(r.json().usage.prompt_tokens + r.json().usage.completion_tokens, EXACT_TOKENS);
            }
        }
        /* the unlimited key of each key-scope tenant keeps being served */
        for (const rs of await Promise.all(keyOnly)) assert.deepEqual(rs.map((r) => r.status), [200, 200, 200]);

        /* the shared counters in redis hold exactly the admitted usage */
        const total = async (pattern) => {
            let sum = 0;
            for (const k of await redisCommand(redisPort, ['KEYS', pattern])) {
                sum += Number(await redisCommand(redisPort, ['GET', k]));
            }
            return sum;
        };
        assert.equal(await total('leo:q:tenant:tenant-tokens_day:tokens_day:*'), N * EXACT_TOKENS);
        assert.equal(await total('leo:q:tenant:tenant-tokens_month:tokens_month:*'), N * EXACT_TOKENS);
        assert.equal(await total('leo:q:key:key-usd_day/k0:usd_day:*'), N * EXACT_MICRO_USD);
        assert.equal(await total('leo:q:tenant:tenant-rpm:rpm:*'), N);
    });

    it('concurrency: of 6 slow requests at once, exactly 2 are served per scope', T, async () => {
        const slow = (i) => exact('gpt-4o-mini', ` slow ${i} [[mock:delay_headers_ms=800]]`);
        const [keyRs, tenantRs] = await Promise.all([
            /* the key scope on k0: all six with k0 */
            Promise.all(Array.from({ length: 6 }, (_, i) =>
                chat(gw.port, slow(i), { key: keyOf('key-concurrency', 0) }))),
            fire('tenant-concurrency', 6, slow),
        ]);
        for (const [rs, who] of [[keyRs, 'key "key-concurrency/k0"'], [tenantRs, 'tenant "tenant-concurrency"']]) {
            const [ok, refused] = split(rs);
            assert.equal(ok.length, CONCURRENCY, `${who}: statuses ${rs.map((r) => r.status)}`);
            assertRefusals(refused, new RegExp(`^${who.replace(/[/"]/g, '\\$&')} exceeded its concurrency limit `));
            for (const r of refused) assert.equal(r.headers['retry-after'], '1');
        }
        /* every slot was released: the leases are gone from redis (the settlements follow the answers by a
         * moment: wait for them) */
        for (const k of ['leo:q:key:key-concurrency/k0:concurrency', 'leo:q:tenant:tenant-concurrency:concurrency']) {
            for (const until = Date.now() + 5000; Date.now() < until;) {
                if (await redisCommand(redisPort, ['ZCARD', k]) === 0) break;
                await new Promise((r) => setTimeout(r, 20));
            }
            assert.equal(await redisCommand(redisPort, ['ZCARD', k]), 0, k);
        }
    });
});

describe('deployment limits, two workers on redis', () => {
    it('rpm: a deployment at its limit is skipped; 429 naming the model only when all are', T, async () => {
        const rs = await fire('free', 8, exact('dep-rpm'));
        const [ok, refused] = split(rs);
        const by = (id) => ok.filter((r) => r.headers['x-leo-deployment'] === id).length;
        assert.equal(by('da/mock-small'), 3, `served by da: ${ok.map((r) => r.headers['x-leo-deployment'])}`);
        assert.equal(by('db/mock-small'), 2);
        for (const r of ok) assert.equal(r.headers['x-leo-attempts'], '1');
        assert.equal(refused.length, 3);
        for (const r of refused) {
            assert.equal(r.status, 429, r.text);
            const e = r.json().error;
            assert.equal(e.code, 'model_rate_limited');
            assert.equal(e.type, 'rate_limit_error');
            assert.match(e.message, new RegExp('^every deployment of model "dep-rpm" is at its rate limit ' +
                '\\(deployment "d[ab]/mock-small": rpm limit [23], remaining 0\\)$'));
            assert.ok(Number(r.headers['retry-after']) >= 1);
            assert.match(r.headers['x-ratelimit-limit-requests'], /^[23]$/);
            assert.equal(r.headers['x-ratelimit-remaining-requests'], '0');
        }
        /* the requests db served went to da first: the access log lists da as limited */
        const lines = await Promise.all(ok.filter((r) => r.headers['x-leo-deployment'] === 'db/mock-small')
            .map((r) => gw.accessLine(r.headers['x-leo-request-id'])));
        for (const l of lines) assert.equal(l.failed_attempts, 'da/mock-small:limited');
        const count = async (id) => {
            let sum = 0;
            for (const k of await redisCommand(redisPort, ['KEYS', `leo:q:deployment:${id}:rpm:*`])) {
                sum += Number(await redisCommand(redisPort, ['GET', k]));
            }
            return sum;
        };
        assert.equal(await count('da/mock-small'), 3);
        assert.equal(await count('db/mock-small'), 2);
    });

    it('concurrency: one in flight per deployment, the third concurrent request gets 429', T, async () => {
        const slow = (i) => exact('dep-conc', ` dslow ${i} [[mock:delay_headers_ms=800]]`);
        const rs = await fire('free', 4, slow);
        const [ok, refused] = split(rs);
        assert.deepEqual(ok.map((r) => r.headers['x-leo-deployment']).sort(), ['dc/mock-small', 'dd/mock-small']);
        assert.equal(refused.length, 2);
        for (const r of refused) {
            assert.equal(r.status, 429, r.text);
            assert.equal(r.json().error.code, 'model_rate_limited');
            assert.match(r.json().error.message, /concurrency limit 1, remaining 0\)$/);
            assert.equal(r.headers['retry-after'], '1');
        }
        /* the slots came back: a slot is released by the settlement the worker sends when its request ends,
         * which reaches Redis a moment after the client has its answer, so ask until both are served at once */
        let again;
        for (const until = Date.now() + 5000; ;) {
            again = await Promise.all([0, 1].map((i) => chat(gw.port, exact('dep-conc', ` again ${i}`),
                { key: keyOf('free', 0) })));
            if (again.every((r) => r.status === 200) || Date.now() > until) break;
            for (const r of again) if (r.status !== 200) assert.equal(r.json().error.code, 'model_rate_limited', r.text);
        }
        for (const r of again) assert.equal(r.status, 200, r.text);
    });

    it('tpm: a single deployment with room for 3 exact requests serves 3 of 6', T, async () => {
        const rs = await fire('free', 6, exact('dep-tpm'));
        const [ok, refused] = split(rs);
        assert.equal(ok.length, 3, `statuses ${rs.map((r) => r.status)}`);
        for (const r of refused) {
            assert.equal(r.status, 429, r.text);
            assert.equal(r.json().error.message, 'every deployment of model "dep-tpm" is at its rate limit ' +
                '(deployment "de/mock-small": tpm limit 66, remaining 0)');
            assert.equal(r.headers['x-ratelimit-limit-tokens'], '66');
        }
    });

    it('both workers admitted requests through redis (two client connections ran the scripts)', T, async () => {
        assert.equal(scriptClients.size, 2, `clients that ran scripts: ${[...scriptClients]}`);
    });
});
