/*
 * cache_switch.test.mjs — run-time switches (POST /v1/optimization/enable) reach every worker: one leo-gateway
 * with two workers sharing a private redis-server, the mock provider behind it.
 *
 * A switch is posted on one connection, so one worker takes it and writes it to the Redis hash
 * leo:optimization; every worker re-reads that hash each second (gateway/optimize.c). Every request here opens
 * a connection of its own, so the kernel spreads them over both workers (SO_REUSEPORT); the request id of each
 * answer says which worker served it (see workerOf), and each phase goes on until both workers have served
 * answers. Waiting for a switch to take effect is polling, bounded by SETTLE_MS, never a fixed sleep.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { chat, nonce, request } from './lib/harness.mjs';
import { startRedisStack, stopRedisStack } from './lib/redis.mjs';

const T = { timeout: 30000 };
/* each worker reads the switches every second; a read in flight or one dropped because it raced a local change
 * puts the next one a second later, and a sanitizer build on a busy machine is slow: a few seconds bound it */
const SETTLE_MS = 5000;

let redis, stack, gw, mock, keys;

before(async () => {
    ({ redis, stack } = await startRedisStack());
    ({ gw, mock, keys } = stack);
}, { timeout: 30000 });

after(() => stopRedisStack({ redis, stack }), { timeout: 30000 });

const det = (text) => ({ model: 'gpt-4o-mini', temperature: 0, messages: [{ role: 'user', content: text }] });
const status = (r) => r.headers['x-leo-cache-status'];
const content = (r) => r.json().choices[0].message.content;
const upstreamCalls = async (needle) => (await mock.requests()).filter((r) => r.body.includes(needle)).length;

/* The worker that answered r. A request id is "req_" + 12 hex digits drawn at random when the worker process
 * starts + its 8-digit request counter (gateway/worker.c, leo_worker_request_id): the 12 digits name the worker.
 * (The access log line has no worker role.) No worker restarts here: the stack's stop() fails on a death. */
function workerOf(r) {
    const id = r.headers['x-leo-request-id'];
    const m = /^req_([0-9a-f]{12})[0-9a-f]{8}$/.exec(id || '');
    assert.ok(m, `not a request id: ${JSON.stringify(id)}`);
    return m[1];
}

/* One request on a fresh connection: { r, worker }. */
async function send(fn) {
    const r = await fn();
    assert.equal(r.status, 200, r.text);
    return { r, worker: workerOf(r) };
}

const post = (body, key = keys.t1) => send(() => request(gw.port, {
    method: 'POST', path: '/v1/optimization/enable', body, headers: { Authorization: `Bearer ${key}` },
}));
const getStatus = (key = keys.t1) => request(gw.port, {
    path: '/v1/optimization/status', headers: { Authorization: `Bearer ${key}` },
});

/*
 * Sends ask() on fresh connections until every worker's latest answers satisfy ok() `streak` times in a row
 * (so a worker that has not applied the switch yet cannot hide behind the other), within SETTLE_MS. Returns how
 * long that took. On a timeout it fails with what each worker answered last.
 */
async function settle(ask, ok, what, streak = 3) {
    const t0 = Date.now();
    const runs = new Map(); /* worker -> answers in a row that satisfied ok */
    const last = new Map();
    for (;;) {
        const { r, worker } = await send(ask);
        last.set(worker, `${r.status} ${status(r) ?? ''} ${r.text.slice(0, 120)}`);
        runs.set(worker, ok(r) ? (runs.get(worker) || 0) + 1 : 0);
        if (runs.size >= gw.workers && [...runs.values()].every((n) => n >= streak)) return Date.now() - t0;
        if (Date.now() - t0 > SETTLE_MS) {
            assert.fail(`${what}: not on every worker within ${SETTLE_MS} ms; last answers: ` +
                JSON.stringify(Object.fromEntries(last)));
        }
    }
}

/* The tenant's switches as written in Redis, once they equal want (a POST answers before its worker's write
 * has necessarily reached Redis), within SETTLE_MS. */
async function awaitShared(tenant, want) {
    const t0 = Date.now();
    let got;
    while ((got = await redis.command('HGET', 'leo:optimization', tenant)) !== want && Date.now() - t0 < SETTLE_MS) {
        await new Promise((res) => setTimeout(res, 20));
    }
    assert.equal(got, want, `the switches of ${tenant} in Redis`);
}

/* Sends ask() on fresh connections: at least n, and on until every worker has answered at least twice (bounded:
 * with two workers, 200 connections that all land on one would be a broken spread, reported as such). */
async function spread(ask, n) {
    const out = [];
    const per = new Map();
    while (out.length < n || per.size < gw.workers || [...per.values()].some((c) => c < 2)) {
        assert.ok(out.length < 200, `200 connections did not reach every worker: ${JSON.stringify([...per])}`);
        const s = await send(ask);
        per.set(s.worker, (per.get(s.worker) || 0) + 1);
        out.push(s);
    }
    return out;
}

describe('run-time switches across workers', () => {
    it('an exact-cache switch posted to one worker is applied by every worker, off and on again', T, async () => {
        const n = nonce('xsw');
        const body = det(`switch me ${n}`);
        const ask = () => chat(gw.port, body, { key: keys.t1 });
        const first = await send(ask);
        assert.equal(status(first.r), 'miss');
        const answer = content(first.r);
        /* on by configuration: once the answer is in Redis, every worker answers it from the cache */
        await settle(ask, (r) => status(r) === 'hit', 'hits before the switch');
        const before = await upstreamCalls(n);

        /* off, through one connection (one worker) */
        const off = await post({ strategy: 'exact_cache', enabled: false });
        assert.equal(off.r.json().strategies.exact_cache.enabled, false);
        assert.equal(off.r.json().strategies.exact_cache.source, 'runtime');
        const tookOff = await settle(ask, (r) => status(r) === 'bypass', 'bypass after switching off');
        /* now every answer, from every worker, bypasses the cache and goes upstream */
        const offAnswers = await spread(ask, 20);
        assert.equal(new Set(offAnswers.map((s) => s.worker)).size, 2);
        for (const { r, worker } of offAnswers) {
            assert.equal(status(r), 'bypass', `${worker} answered ${status(r)} with the exact cache switched off`);
        }
        assert.ok((await upstreamCalls(n)) >= before + offAnswers.length, 'bypassed requests went upstream');
        /* every worker reports the switch, and its source */
        await settle(getStatus, (r) => r.json().strategies.exact_cache.enabled === false &&
            r.json().strategies.exact_cache.source === 'runtime', 'status after switching off', 1);
        await awaitShared('t1', 'exact=0;semantic=-1;dedup=-1');
        /* the other tenant is untouched */
        const t2 = await send(() => chat(gw.port, det(`other tenant ${n}`), { key: keys.t2 }));
        assert.equal(status(t2.r), 'miss');

        /* back to the configuration, through one connection again: hits return on every worker (the entries
         * were kept: switching off stops lookups and stores, it does not purge) */
        const on = await post({ strategy: 'exact_cache', enabled: null });
        assert.equal(on.r.json().strategies.exact_cache.enabled, true);
        assert.equal(on.r.json().strategies.exact_cache.source, 'config');
        const tookOn = await settle(ask, (r) => status(r) === 'hit', 'hits after switching on');
        const callsOn = await upstreamCalls(n);
        const onAnswers = await spread(ask, 20);
        for (const { r, worker } of onAnswers) {
            assert.equal(status(r), 'hit', `${worker} answered ${status(r)} with the exact cache switched on`);
            assert.equal(content(r), answer);
        }
        assert.equal(await upstreamCalls(n), callsOn, 'hits made no upstream call');
        await awaitShared('t1', 'exact=-1;semantic=-1;dedup=-1');
        /* printed for the record: how long the switches took to reach every worker */
        console.log(`# switch off on every worker in ${tookOff} ms, on again in ${tookOn} ms ` +
            `(off worker ${off.worker}, on worker ${on.worker})`);
    });

    it('switches of two strategies posted to different workers at once are both kept', T, async () => {
        /* Worker A takes one switch, worker B another before its next read of the hash: B's local view of the
         * tenant does not have A's switch yet, and writing B's whole view back would undo it. */
        const a = await post({ strategy: 'semantic_cache', enabled: true, tenant: 't2' }, keys.t2);
        let b;
        for (let i = 0; i < 50; i++) {
            b = await post({ strategy: 'dedup', enabled: false, tenant: 't2' }, keys.t2);
            if (b.worker !== a.worker) break;
        }
        assert.notEqual(b.worker, a.worker, 'fifty POSTs all landed on the first one\'s worker');
        await awaitShared('t2', 'exact=-1;semantic=1;dedup=0');
        await settle(() => getStatus(keys.t2), (r) => {
            const s = r.json().strategies;
            return s.semantic_cache.enabled === true && s.semantic_cache.source === 'runtime' &&
                s.dedup.enabled === false && s.dedup.source === 'runtime' && s.exact_cache.source === 'config';
        }, 'both switches on every worker');
        /* back to the configuration */
        await post({ strategy: 'semantic_cache', enabled: null, tenant: 't2' }, keys.t2);
        await post({ strategy: 'dedup', enabled: null, tenant: 't2' }, keys.t2);
        await awaitShared('t2', 'exact=-1;semantic=-1;dedup=-1');
    });

    it('a tenant missing from the shared hash (Redis flushed) is back on its configuration on every worker', T,
        async () => {
            const n = nonce('xfl');
            const body = det(`flush me ${n}`);
            const ask = () => chat(gw.port, body, { key: keys.t1 });
            assert.equal(status((await send(ask)).r), 'miss');
            await settle(ask, (r) => status(r) === 'hit', 'hits before the switch');
            await post({ strategy: 'exact_cache', enabled: false });
            await awaitShared('t1', 'exact=0;semantic=-1;dedup=-1');
            await settle(ask, (r) => status(r) === 'bypass', 'bypass after switching off');
            /* what a flush or a restart without data leaves: no switches at all */
            assert.equal(await redis.command('DEL', 'leo:optimization'), 1);
            await settle(ask, (r) => status(r) === 'hit', 'hits once the switch is gone from Redis');
            await settle(getStatus, (r) => r.json().strategies.exact_cache.enabled === true &&
                r.json().strategies.exact_cache.source === 'config', 'status once the switch is gone', 1);
        });
});
