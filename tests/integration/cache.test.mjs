/*
 * cache.test.mjs — the exact cache, the semantic cache and deduplication on the request path: leo-gateway with a
 * private redis-server in front of the mock provider. The mock's request log says how many calls reached the
 * upstream; x-leo-cache-status says what the gateway did.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { chat, nonce, openStream, request, startStack } from './lib/harness.mjs';
import { startRedisStack, stopRedisStack } from './lib/redis.mjs';

const T = { timeout: 20000 };

let redis, stack, gw, mock, keys;

before(async () => {
    ({ redis, stack } = await startRedisStack({
        mutate: (c) => { c.semantic_cache = { enabled: false, tenants: { t1: { enabled: true } } }; },
    }));
    ({ gw, mock, keys } = stack);
}, { timeout: 30000 });

after(() => stopRedisStack({ redis, stack }), { timeout: 30000 });

const det = (text, extra = {}) => ({ model: 'gpt-4o-mini', temperature: 0, messages: [{ role: 'user', content: text }], ...extra });
const status = (r) => r.headers['x-leo-cache-status'];
const content = (r) => r.json().choices[0].message.content;
const upstreamCalls = async (needle) => (await mock.requests()).filter((r) => r.body.includes(needle)).length;

/*
 * A stored answer reaches Redis (and so the other worker) a moment after the first answer went to the client:
 * repeats until one is a hit, with `no-store` so that a miss on the way does not store again. Returns the hit
 * and how many misses went upstream before it.
 */
async function awaitHit(send) {
    let misses = 0;
    const until = Date.now() + 5000;
    for (;;) {
        const r = await send({ 'x-leo-cache': 'no-store' });
        assert.equal(r.status, 200, r.text);
        if (status(r) === 'hit' || Date.now() > until) return { r, misses };
        assert.equal(status(r), 'miss');
        misses += 1;
    }
}
const chatHit = (body, key = keys.t1) => awaitHit((headers) => chat(gw.port, body, { key, headers }));

describe('exact cache', () => {
    it('answers a repeated deterministic request from the cache, with the same answer', T, async () => {
        const n = nonce('ex');
        const a = await chat(gw.port, det(`tell me about ${n}`), { key: keys.t1 });
        assert.equal(a.status, 200);
        assert.equal(status(a), 'miss');
        const { r: b, misses } = await chatHit(det(`tell me about ${n}`));
        assert.equal(status(b), 'hit');
        assert.equal(content(b), content(a));
        assert.deepEqual(b.json().usage, a.json().usage);
        assert.equal(b.headers['x-leo-cost-usd'], '0.00000000');
        assert.ok(Number(b.headers['x-leo-saved-usd']) > 0);
        assert.equal(await upstreamCalls(n), 1 + misses);
    });

    it('ignores key order, whitespace and number forms; every worker sees the entry through Redis', T, async () => {
        const n = nonce('ord');
        const first = await chat(gw.port, det(`order ${n}`, { max_tokens: 20 }), { key: keys.t1 });
        assert.equal(status(first), 'miss');
        const { misses } = await chatHit(det(`order ${n}`, { max_tokens: 20 }));
        const text = `{ "max_tokens" : 20.0,\n "messages": [{"content": "order ${n}", "role": "user"}], ` +
            `"temperature": 0e0, "model": "gpt-4o-mini" }`;
        /* fresh connections land on either worker: all of them must hit */
        for (let i = 0; i < 6; i++) {
            const r = await request(gw.port, {
                method: 'POST', path: '/v1/chat/completions', body: text,
                headers: { Authorization: `Bearer ${keys.t1}`, 'Content-Type': 'application/json' },
            });
            assert.equal(r.status, 200);
            assert.equal(status(r), 'hit');
        }
        assert.equal(await upstreamCalls(n), 1 + misses);
    });

    it('misses when a member that can change the answer differs, hits when one that cannot differs', T, async () => {
        const n = nonce('fld');
        const base = det(`fields ${n}`, { max_tokens: 30 });
        assert.equal(status(await chat(gw.port, base, { key: keys.t1 })), 'miss');
        assert.equal(status((await chatHit(base)).r), 'hit');
        const changes = [
            { max_tokens: 31 },
            { stop: ['x'] },
            { seed: 7 },
            { top_p: 0.5 },
            { response_format: { type: 'json_object' } },
            { tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }] },
            { model: 'other-model' },
            { messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: `fields ${n}` }] },
        ];
        for (const c of changes) {
            const r = await chat(gw.port, { ...base, ...c }, { key: keys.t1 });
            assert.equal(r.status, 200, JSON.stringify(c));
            assert.equal(status(r), 'miss', `changing ${JSON.stringify(c)} must miss`);
        }
        for (const c of [{ user: 'someone' }, { metadata: { a: '1' } }, { store: false }]) {
            const r = await chat(gw.port, { ...base, ...c }, { key: keys.t1 });
            assert.equal(status(r), 'hit', `adding ${JSON.stringify(c)} must still hit`);
        }
    });

    it('bypasses non-deterministic requests, and caches them when they carry a seed', T, async () => {
        const n = nonce('nd');
        const body = { model: 'gpt-4o-mini', temperature: 0.8, messages: [{ role: 'user', content: `rnd ${n}` }] };
        assert.equal(status(await chat(gw.port, body, { key: keys.t1 })), 'bypass');
        assert.equal(status(await chat(gw.port, body, { key: keys.t1 })), 'bypass');
        assert.equal(await upstreamCalls(n), 2);
        const seeded = { ...body, seed: 42 };
        assert.equal(status(await chat(gw.port, seeded, { key: keys.t1 })), 'miss');
        assert.equal(status((await chatHit(seeded)).r), 'hit');
    });

    it('obeys x-leo-cache: no-store, no-cache and refresh, and rejects a bad value', T, async () => {
        const n = nonce('ctl');
        const body = det(`ctl ${n}`);
        const h = (v) => ({ key: keys.t1, headers: { 'x-leo-cache': v } });
        assert.equal(status(await chat(gw.port, body, h('no-store'))), 'miss');
        assert.equal(status(await chat(gw.port, body, h('no-store'))), 'miss'); /* nothing was stored */
        assert.equal(status(await chat(gw.port, body, h('no-cache'))), 'bypass'); /* not read, but stored */
        const { r: hit, misses } = await chatHit(body);
        assert.equal(status(hit), 'hit');
        assert.equal(status(await chat(gw.port, body, h('refresh'))), 'bypass');
        assert.equal(await upstreamCalls(n), 4 + misses);
        const bad = await chat(gw.port, body, h('sometimes'));
        assert.equal(bad.status, 400);
        assert.match(bad.json().error.message, /x-leo-cache/);
    });

    it('expires an entry after its TTL', T, async () => {
        const n = nonce('ttl');
        const body = det(`ttl ${n}`);
        const opt = { key: keys.t1, headers: { 'x-leo-cache-ttl': '1' } };
        assert.equal(status(await chat(gw.port, body, opt)), 'miss');
        assert.equal(status((await chatHit(body)).r), 'hit');
        /* the entry lives one second: poll until it is gone (bounded) */
        const deadline = Date.now() + 5000;
        let s;
        do {
            await new Promise((r) => setTimeout(r, 200));
            s = status(await chat(gw.port, body, { key: keys.t1 }));
        } while (s === 'hit' && Date.now() < deadline);
        assert.equal(s, 'miss');
    });

    it('never serves one tenant the answer of another', T, async () => {
        const n = nonce('ten');
        const body = det(`tenant ${n}`);
        assert.equal(status(await chat(gw.port, body, { key: keys.t1 })), 'miss');
        const { misses } = await chatHit(body);
        const other = await chat(gw.port, body, { key: keys.t2 });
        assert.equal(other.status, 200);
        assert.equal(status(other), 'miss');
        assert.equal(await upstreamCalls(n), 2 + misses);
    });

    it('replays a stored answer as a stream, and a streamed answer as JSON', T, async () => {
        const n = nonce('str');
        const body = det(`stream ${n}`);
        const first = await chat(gw.port, body, { key: keys.t1 });
        await chatHit(body); /* stored where every worker sees it */
        const s = await openStream(gw.port, { ...body, stream: true }, { key: keys.t1 });
        assert.equal(s.status, 200);
        assert.equal(s.headers['x-leo-cache-status'], 'hit');
        const { events, error } = await s.end;
        assert.ok(!error, String(error));
        assert.equal(events.at(-1).data, '[DONE]');
        const text = events.slice(0, -1).map((e) => JSON.parse(e.data).choices[0]?.delta?.content ?? '').join('');
        assert.equal(text, content(first));

        const m = nonce('str2');
        const sbody = { ...det(`stream ${m}`), stream: true };
        const live = await openStream(gw.port, sbody, { key: keys.t1 });
        assert.equal(live.headers['x-leo-cache-status'], 'miss');
        const le = await live.end;
        const liveText = le.events.slice(0, -1).map((e) => JSON.parse(e.data).choices[0]?.delta?.content ?? '').join('');
        const { r: whole, misses } = await chatHit(det(`stream ${m}`));
        assert.equal(status(whole), 'hit');
        assert.equal(content(whole), liveText);
        /* the client did not ask for the usage chunk, the stored answer still has its usage */
        assert.ok(whole.json().usage.total_tokens > 0);
        assert.equal(await upstreamCalls(m), 1 + misses);
    });

    it('keeps serving when Redis is gone (the cache is bypassed to L1 only), and purges a tenant', T, async () => {
        const n = nonce('pur');
        const body = det(`purge ${n}`);
        assert.equal(status(await chat(gw.port, body, { key: keys.t1 })), 'miss');
        assert.equal(status((await chatHit(body)).r), 'hit');
        const p = await request(gw.port, {
            method: 'POST', path: '/v1/optimization/cache/purge', body: {},
            headers: { Authorization: `Bearer ${keys.t1}` },
        });
        assert.equal(p.status, 200);
        assert.equal(p.json().tenant, 't1');
        /* every worker drops its L1 through the shared stream; Redis entries are deleted by the scan */
        const deadline = Date.now() + 5000;
        let s;
        do {
            s = status(await chat(gw.port, body, { key: keys.t1 }));
        } while (s === 'hit' && Date.now() < deadline);
        assert.equal(s, 'miss');
    });
});

describe('semantic cache', () => {
    it('serves a paraphrase, refuses a changed number, never crosses tenants, and learns from feedback', T, async () => {
        const n = nonce('sem');
        const q1 = `How do I reverse a list in Python? (${n})`;
        const q2 = `how can I reverse a list in Python (${n})`;
        const a = await chat(gw.port, det(q1), { key: keys.t1 });
        assert.equal(status(a), 'miss');
        /* the other worker learns of q1's entry through the shared stream (read every 100 ms): ask until it
           answers from it; no-store keeps a miss from adding q2 itself */
        let b;
        const until = Date.now() + 5000;
        do {
            b = await chat(gw.port, det(q2), { key: keys.t1, headers: { 'x-leo-cache': 'no-store' } });
            assert.equal(b.status, 200);
        } while (status(b) === 'miss' && Date.now() < until);
        assert.equal(status(b), 'semantic-hit');
        assert.equal(content(b), content(a));
        /* a different number is never served the cached answer */
        const c1 = await chat(gw.port, det(`What is 2+3? (${n})`), { key: keys.t1 });
        assert.equal(status(c1), 'miss');
        const c2 = await chat(gw.port, det(`What is 2+4? (${n})`), { key: keys.t1 });
        assert.equal(status(c2), 'miss');
        /* tenant t2 has the semantic cache off, and its namespace is its own anyway */
        assert.equal(status(await chat(gw.port, det(q2), { key: keys.t2 })), 'miss');

        /* feedback: a bad semantic hit raises that entry's bar, so the paraphrase no longer hits it */
        const fb = await request(gw.port, {
            method: 'POST', path: '/v1/optimization/cache/feedback',
            body: { request_id: b.headers['x-leo-request-id'], rating: 'bad' },
            headers: { Authorization: `Bearer ${keys.t1}` },
        });
        assert.equal(fb.status, 200, fb.text);
        assert.equal(fb.json().result, 'applied');
        assert.ok(fb.json().threshold > 0.74);
        const deadline = Date.now() + 5000;
        let s;
        do {
            s = status(await chat(gw.port, det(q2), { key: keys.t1, headers: { 'x-leo-cache': 'no-store' } }));
        } while (s === 'semantic-hit' && Date.now() < deadline);
        assert.equal(s, 'miss');
        /* another tenant cannot rate t1's request */
        const fb2 = await request(gw.port, {
            method: 'POST', path: '/v1/optimization/cache/feedback',
            body: { request_id: b.headers['x-leo-request-id'], rating: 'bad' },
            headers: { Authorization: `Bearer ${keys.t2}` },
        });
        assert.equal(fb2.status, 404);
    });

    it('can be switched off and on at run time for a tenant, and the switch is written to Redis', T, async () => {
        /* a gateway of its own (one worker, its own Redis database), so that switching the semantic cache off
         * here cannot race the other cases' workers */
        const own = await startStack({
            workers: 1,
            mutate: (c) => {
                c.redis = { url: `${redis.url}/2` };
                c.semantic_cache = { enabled: false, tenants: { t1: { enabled: true } } };
            },
        });
        try {
            const post = (body) => request(own.gw.port, {
                method: 'POST', path: '/v1/optimization/enable', body, headers: { Authorization: `Bearer ${keys.t1}` },
            });
            /* no-store: a miss here must not answer the next ask from the exact cache */
            const ask = (text, headers = { 'x-leo-cache': 'no-store' }) => chat(own.gw.port, det(text), { key: keys.t1, headers });
            const n = nonce('sw');
            /* on by configuration: a paraphrase hits */
            assert.equal(status(await ask(`How do I sort a dict by value in Python? ${n}`, {})), 'miss');
            assert.equal(status(await ask(`how can I sort a dict by value in Python ${n}`)), 'semantic-hit');
            const off = await post({ strategy: 'semantic_cache', enabled: false });
            assert.equal(off.status, 200, off.text);
            assert.equal(off.json().strategies.semantic_cache.enabled, false);
            assert.equal(off.json().strategies.semantic_cache.source, 'runtime');
            /* off: the same paraphrase is not looked up by meaning */
            assert.equal(status(await ask(`how can I sort a dict by value in Python ${n}`)), 'miss');
            /* the switch is shared: written to Redis (database 2) where every worker reads it each second */
            const shared = await redis.command('EVAL', "redis.call('SELECT', 2) return redis.call('HGET', KEYS[1], ARGV[1])",
                '1', 'leo:optimization', 't1');
            assert.equal(shared, 'exact=-1;semantic=0;dedup=-1');
            const back = await post({ strategy: 'semantic_cache', enabled: null });
            assert.equal(back.json().strategies.semantic_cache.source, 'config');
            assert.equal(back.json().strategies.semantic_cache.enabled, true);
            assert.equal(status(await ask(`how can I sort a dict by value in Python ${n}`)), 'semantic-hit');
            const bad = await post({ strategy: 'everything', enabled: true });
            assert.equal(bad.status, 400);
            assert.equal(bad.json().error.param, 'strategy');
            const stats = await request(own.gw.port, { path: '/v1/optimization/cache/stats', headers: { Authorization: `Bearer ${keys.t1}` } });
            assert.equal(stats.status, 200);
            assert.ok(stats.json().semantic_namespaces.every((ns) => ns.tenant === 't1'));
        } finally {
            await own.stop();
        }
    });
});

describe('semantic thresholds at run time', () => {
    it('a threshold set for a tenant and model applies on every worker, and null restores the default', T, async () => {
        const n = nonce('thr');
        const q1 = `How do I reverse a list in Python? (${n})`;
        const q2 = `how can I reverse a list in Python (${n})`;
        assert.equal(status(await chat(gw.port, det(q1), { key: keys.t1 })), 'miss');
        const ask = async () => status(await chat(gw.port, det(q2), { key: keys.t1, headers: { 'x-leo-cache': 'no-store' } }));
        /* answers from every worker agree ten times in a row */
        const settle = async (want) => {
            let agree = 0;
            const until = Date.now() + 5000;
            const seen = [];
            while (agree < 10 && Date.now() < until) {
                const got = await ask();
                seen.push(got);
                agree = got === want ? agree + 1 : 0;
            }
            if (agree < 10) {
                const stats = [];
                for (let k = 0; k < 6; k++) {
                    const st = await request(gw.port, { path: '/v1/optimization/cache/stats', headers: { Authorization: `Bearer ${keys.t1}` } });
                    stats.push(st.text);
                }
                const m = await request(gw.port, { path: '/metrics' });
                const lines = m.text.split('\n').filter((l) => /semcache|optimization_requests/.test(l) && !l.startsWith('#'));
                const log = await redis.command('XRANGE', 'leo:semcache:log', '-', '+');
                const ops = log.map(([id, f]) => `${id} ${f[1]} ${f[3] || ''} ${f.includes('text') ? f[f.indexOf('text') + 1] : ''} ${f.includes('tenant') ? f[f.indexOf('tenant') + 1] : ''}`);
                assert.fail(`expected ${want} from every worker, got ${seen.slice(-12).join(' ')}\n${ops.slice(-25).join('\n')}\n${lines.join('\n')}`);
            }
        };
        await settle('semantic-hit');
        const set = (body, key = keys.t1) => request(gw.port, {
            method: 'POST', path: '/v1/optimization/cache/threshold', body, headers: { Authorization: `Bearer ${key}` },
        });
        const r = await set({ model: 'gpt-4o-mini', threshold: 0.999 });
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.json(), { tenant: 't1', model: 'gpt-4o-mini', threshold: 0.999 });
        await settle('miss');
        assert.equal((await set({ model: 'gpt-4o-mini', threshold: null })).status, 200);
        await settle('semantic-hit');
        assert.equal((await set({ threshold: 1.5 })).status, 400);
        assert.equal((await set({ model: 'no-such-model', threshold: 0.9 })).status, 404);
        /* a tenant key cannot set another tenant's threshold */
        assert.equal((await set({ tenant: 't1', threshold: 0.9 }, keys.t2)).status, 403);
    });
});

describe('deduplication', () => {
    it('identical requests in flight share one upstream call', T, async () => {
        const n = nonce('dd');
        const body = det(`dedup ${n} [[mock:delay_headers_ms=400]]`);
        const rs = await Promise.all([0, 1, 2].map(() => chat(gw.port, body, { key: keys.t1 })));
        for (const r of rs) assert.equal(r.status, 200);
        const texts = new Set(rs.map(content));
        assert.equal(texts.size, 1);
        /* with two workers the three connections may land on both: at most one call per worker */
        const calls = await upstreamCalls(n);
        assert.ok(calls >= 1 && calls <= 2, `upstream calls: ${calls}`);
        const followers = rs.filter((r) => r.headers['x-leo-dedup'] === 'follower').length;
        const hits = rs.filter((r) => status(r) === 'hit').length;
        assert.equal(calls + hits, 3, `calls ${calls}, hits ${hits}, followers ${followers}`);
    });
});

describe('without Redis', () => {
    it('keeps answering when Redis dies: lookups miss quickly, each worker still caches in-process', T, async () => {
        await redis.kill();
        const n = nonce('down');
        const body = det(`redis down ${n}`);
        const first = await chat(gw.port, body, { key: keys.t1 });
        assert.equal(first.status, 200);
        assert.equal(status(first), 'miss');
        /* with two workers, a repeat lands on the worker that stored it (hit) or on the other (miss): never an error */
        for (let i = 0; i < 4; i++) {
            const r = await chat(gw.port, body, { key: keys.t1 });
            assert.equal(r.status, 200);
            assert.ok(['hit', 'miss'].includes(status(r)), status(r));
            assert.equal(content(r), content(first));
        }
        assert.ok((await upstreamCalls(n)) <= 2);
    });
});
