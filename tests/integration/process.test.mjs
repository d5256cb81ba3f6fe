/*
 * process.test.mjs — the gateway as a group of processes: several workers, a worker killed and restarted,
 * configuration reloads on SIGHUP (valid and invalid), and the drain on SIGTERM.
 *
 * Every case starts its own mock and gateway and stops them itself, since most of them disturb the processes.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import {
    RawConn,
    chat,
    chatBody,
    freePort,
    metricSum,
    nonce,
    openStream,
    parseMetrics,
    rawRequest,
    request,
    startStack,
} from './lib/harness.mjs';

const T = { timeout: 60000 };

/* the per-worker part of a request id: req_<12 hex of the worker><8 hex counter> */
const workerOf = (requestId) => {
    const m = /^req_([0-9a-f]{12})[0-9a-f]{8}$/.exec(requestId || '');
    assert.ok(m, `request id ${requestId}`);
    return m[1];
};

/** Waits for the "listening on" line of each of n workers logged from `from` on; returns role → pid. */
async function workersListening(gw, n, from = 0) {
    const roles = new Map();
    for (let i = 0; i < n; i++) {
        const role = `worker-${i}`;
        const line = await gw.stderr.waitForJson((j) => j.role === role && /^listening on/.test(j.msg || ''),
            { from, timeoutMs: 15000, what: `"listening on" from ${role}` });
        roles.set(role, line.pid);
    }
    return roles;
}

/** n chat requests, each on a new connection; returns their request ids. */
async function chats(port, key, n, tag) {
    const ids = [];
    for (let i = 0; i < n; i++) {
        const text = `${tag} ${i} ${nonce(tag)}`;
        const r = await chat(port, chatBody(text), { key });
        assert.equal(r.status, 200, `request ${i}: ${r.status} ${r.text}`);
        assert.equal(r.json().choices[0].message.content, `mock reply to: ${text}`);
        ids.push(r.headers['x-leo-request-id']);
    }
    return ids;
}

function alive(pid) {
    try {
        process.kill(pid, 0);
        return true;
    } catch {
        return false;
    }
}

const chatRoute = { route: '/v1/chat/completions', model: 'gpt-4o-mini', status: '200' };

describe('worker processes', () => {
    it('--workers 2 starts two workers that both serve, and /metrics sums them', T, async () => {
        const stack = await startStack({ workers: 2 });
        try {
            const { gw } = stack;
            const pids = await workersListening(gw, 2);
            assert.equal(new Set(pids.values()).size, 2);
            for (const pid of pids.values()) {
                assert.notEqual(pid, gw.pid);
                assert.ok(alive(pid));
            }
            const ready = await request(gw.port, { path: '/ready' });
            assert.equal(ready.status, 200);
            assert.deepEqual(ready.json().workers, { wanted: 2, up: 2 });

            const before = await gw.metrics();
            const ids = await chats(gw.port, stack.keys.t1, 30, 'two');
            const served = new Set(ids.map(workerOf));
            assert.equal(served.size, 2, `30 new connections were served by ${served.size} worker(s)`);
            for (const id of ids) await gw.accessLine(id);

            /* any worker answers for all: several scrapes on new connections, each sees all 30 */
            const scrapers = new Set();
            for (let i = 0; i < 8; i++) {
                const r = await request(gw.port, { path: '/metrics' });
                scrapers.add(workerOf(r.headers['x-leo-request-id']));
                const m = parseMetrics(r.text);
                assert.equal(metricSum(m, 'leo_requests_total', chatRoute) - metricSum(before, 'leo_requests_total', chatRoute), 30,
                    `scrape ${i} (worker ${workerOf(r.headers['x-leo-request-id'])})`);
            }
            assert.ok(scrapers.size >= 1);
        } finally {
            await stack.stop();
        }
    });

    it('restarts a worker killed with SIGKILL and keeps serving', T, async () => {
        const stack = await startStack({ workers: 2 });
        try {
            const { gw } = stack;
            const pids = await workersListening(gw, 2);
            const victim = pids.get('worker-0');
            const before = await chats(gw.port, stack.keys.t1, 30, 'pre');
            assert.equal(new Set(before.map(workerOf)).size, 2, 'both workers served before the kill');
            for (const id of before) await gw.accessLine(id);
            const m0 = await gw.metrics();

            const from = gw.stderr.mark();
            gw.expectedDeaths.add(victim);
            process.kill(victim, 'SIGKILL');
            const died = await gw.stderr.waitForJson((j) => j.role === 'supervisor' &&
                new RegExp(`worker 0 \\(pid ${victim}\\) died from signal 9`).test(j.msg || ''),
            { from, timeoutMs: 10000, what: 'the supervisor noticing the killed worker' });
            assert.equal(died.level, 'error');
            const restarted = await gw.stderr.waitForJson((j) => j.role === 'supervisor' &&
                /^worker 0 restarted as pid \d+/.test(j.msg || ''), { from, timeoutMs: 10000, what: 'restart line' });
            const newPid = Number(/pid (\d+)/.exec(restarted.msg)[1]);
            assert.notEqual(newPid, victim);
            const again = await workersListening(gw, 1, from);
            assert.equal(again.get('worker-0'), newPid);
            assert.ok(!alive(victim), 'the killed worker is gone (and reaped)');
            assert.ok(alive(pids.get('worker-1')), 'the other worker was left alone');

            await gw.waitReady(10000);
            const ready = await request(gw.port, { path: '/ready' });
            assert.deepEqual(ready.json().workers, { wanted: 2, up: 2 });

            const after = await chats(gw.port, stack.keys.t1, 30, 'post');
            const servedAfter = new Set(after.map(workerOf));
            assert.equal(servedAfter.size, 2, 'both workers serve after the restart');
            /* the survivor keeps its id prefix, the restarted worker has a new one, the killed one is gone */
            const union = new Set([...before.map(workerOf), ...servedAfter]);
            assert.equal(union.size, 3, 'the restarted worker (a new request id prefix) serves');
            for (const id of after) await gw.accessLine(id);

            /* counters survive the restart (the slot is reused, never reset) */
            const m1 = await gw.metrics();
            assert.equal(metricSum(m1, 'leo_requests_total', chatRoute) - metricSum(m0, 'leo_requests_total', chatRoute), 30);
            assert.equal(metricSum(m1, 'leo_worker_restarts_total') - metricSum(m0, 'leo_worker_restarts_total'), 1);
        } finally {
            await stack.stop();
        }
    });

    it('a worker killed with usage events queued (Redis away): the supervisor reports them lost', T, async () => {
        const deadRedis = await freePort(); /* nothing listens there: every event stays in the worker's queue */
        const stack = await startStack({ workers: 1, mutate: (c) => { c.redis = { url: `redis://127.0.0.1:${deadRedis}` }; } });
        try {
            const { gw } = stack;
            const pids = await workersListening(gw, 1);
            const victim = pids.get('worker-0');
            await chats(gw.port, stack.keys.t1, 5, 'queued');
            const m0 = await gw.metrics();
            assert.equal(metricSum(m0, 'leo_usage_queue_depth'), 5, 'five events wait for Redis');
            assert.equal(metricSum(m0, 'leo_usage_events_dropped_total'), 0);

            const from = gw.stderr.mark();
            gw.expectedDeaths.add(victim);
            process.kill(victim, 'SIGKILL');
            const report = await gw.stderr.waitForJson((j) => j.role === 'supervisor' &&
                /^usage: worker 0 \(pid \d+\) died with/.test(j.msg || ''),
            { from, timeoutMs: 10000, what: 'the supervisor reporting the lost usage events' });
            assert.equal(report.level, 'error');
            assert.match(report.msg, new RegExp(`\\(pid ${victim}\\) died with 5 usage events queued, which are lost`));
            assert.match(report.msg, /and 0 sent to Redis without an answer/);

            await gw.waitReady(10000);
            const m1 = await gw.metrics();
            assert.equal(metricSum(m1, 'leo_usage_events_dropped_total', { reason: 'worker_died' }), 5);
            assert.equal(metricSum(m1, 'leo_usage_queue_depth'), 0, 'the new worker starts with an empty queue');

            /* a clean stop reports nothing of the kind */
            await chats(gw.port, stack.keys.t1, 2, 'then');
        } finally {
            await stack.stop();
        }
        assert.equal(stack.gw.stderr.json((j) => /^usage: worker \d+ \(pid \d+\) died with/.test(j.msg || '')).length, 1);
    });
});

describe('configuration reload', () => {
    it('SIGHUP applies a changed config without dropping an open keep-alive connection', T, async () => {
        const stack = await startStack({ workers: 2 });
        const c = await RawConn.open(stack.gw.port);
        try {
            const { gw } = stack;
            await workersListening(gw, 2);
            const key = stack.keys.t1;
            const ask = async (model, text) => {
                await c.write(rawRequest('POST', '/v1/chat/completions',
                    [['Authorization', `Bearer ${key}`], ['Content-Type', 'application/json']],
                    JSON.stringify({ model, messages: [{ role: 'user', content: text }] })));
                return c.readResponse();
            };
            const r0 = await ask('new-model', 'before reload');
            assert.equal(r0.status, 404, r0.text);
            const v0 = (await request(gw.port, { path: '/ready' })).json().config_version;
            const m0 = await gw.metrics();

            const cfg = structuredClone(gw.config);
            cfg.models.push({ name: 'new-model', deployments: [{ provider: 'mock', model: 'mock-large' }] });
            gw.writeConfig(cfg);
            const from = gw.stderr.mark();
            gw.signal('SIGHUP');
            await gw.stderr.waitForJson((j) => j.role === 'supervisor' && /is valid; telling workers to reload/.test(j.msg || ''),
                { from, what: 'the supervisor accepting the new config' });
            for (const role of ['worker-0', 'worker-1']) {
                await gw.stderr.waitForJson((j) => j.role === role && /^config reloaded from/.test(j.msg || ''),
                    { from, what: `"config reloaded" from ${role}` });
            }

            /* the same connection, now with the new model */
            const n = nonce('reloaded');
            const r1 = await ask('new-model', `after reload ${n}`);
            assert.equal(r1.status, 200, r1.text);
            assert.equal(r1.header('x-leo-deployment'), 'mock/mock-large');
            assert.equal(JSON.parse(r1.text).choices[0].message.content, `mock reply to: after reload ${n}`);
            assert.equal(c.isClosed, false, 'the keep-alive connection survived the reload');
            assert.equal(JSON.parse(r0.text).error.code, 'model_not_found');

            /* new connections (either worker) see it too */
            for (let i = 0; i < 6; i++) {
                const r = await chat(gw.port, { model: 'new-model', messages: [{ role: 'user', content: `x${i}` }] }, { key });
                assert.equal(r.status, 200, r.text);
            }
            const ready = (await request(gw.port, { path: '/ready' })).json();
            assert.ok(ready.config_version > v0, `config_version ${ready.config_version} after reload, was ${v0}`);
            const models = (await request(gw.port, { path: '/v1/models', headers: { Authorization: `Bearer ${key}` } })).json();
            assert.ok(models.data.some((m) => m.id === 'new-model'));
            const m1 = await gw.metrics();
            const applied = { result: 'applied' };
            assert.equal(metricSum(m1, 'leo_config_reloads_total', applied) - metricSum(m0, 'leo_config_reloads_total', applied), 2);
        } finally {
            c.destroy();
            await stack.stop();
        }
    });

    it('SIGHUP with an invalid config is rejected and the running config keeps serving', T, async () => {
        const stack = await startStack({ workers: 2 });
        try {
            const { gw } = stack;
            await workersListening(gw, 2);
            const key = stack.keys.t1;
            const v0 = (await request(gw.port, { path: '/ready' })).json().config_version;
            const good = structuredClone(gw.config);

            for (const [what, text, pattern] of [
                ['broken JSON', '{"providers": [', /config reload rejected/],
                ['an unknown field', JSON.stringify({ ...good, colour: 'blue' }), /config reload rejected.*colour/],
                ['a deployment of an unknown provider', JSON.stringify({
                    ...good,
                    models: [...good.models, { name: 'm2', deployments: [{ provider: 'nope', model: 'x' }] }],
                }), /config reload rejected.*nope/],
            ]) {
                gw.writeConfig(text);
                const from = gw.stderr.mark();
                gw.signal('SIGHUP');
                const line = await gw.stderr.waitForJson((j) => j.role === 'supervisor' && /config reload rejected/.test(j.msg || ''),
                    { from, what: `rejection of ${what}` });
                assert.equal(line.level, 'error');
                assert.match(line.msg, pattern, what);

                const n = nonce('old');
                const r = await chat(gw.port, chatBody(`old config ${n}`), { key });
                assert.equal(r.status, 200, `${what}: ${r.text}`);
                const r2 = await chat(gw.port, { model: 'm2', messages: [{ role: 'user', content: 'x' }] }, { key });
                assert.equal(r2.status, 404, `${what}: nothing of the rejected config applies`);
                assert.equal((await request(gw.port, { path: '/ready' })).json().config_version, v0);
                assert.equal(gw.stderr.json((j) => /^config reloaded/.test(j.msg || ''), from).length, 0,
                    `${what}: no worker reloaded`);
            }

            /* a valid file afterwards is applied */
            gw.writeConfig(good);
            const from = gw.stderr.mark();
            gw.signal('SIGHUP');
            for (const role of ['worker-0', 'worker-1']) {
                await gw.stderr.waitForJson((j) => j.role === role && /^config reloaded from/.test(j.msg || ''),
                    { from, what: `"config reloaded" from ${role}` });
            }
            const r = await chat(gw.port, chatBody('valid again'), { key });
            assert.equal(r.status, 200);
        } finally {
            await stack.stop();
        }
    });
});

describe('drain', () => {
    it('SIGTERM lets an in-flight stream finish, refuses new connections, and exits 0', T, async () => {
        const stack = await startStack({ workers: 2 });
        let stopped = false;
        try {
            const { gw } = stack;
            await workersListening(gw, 2);
            const words = Array.from({ length: 12 }, (_, k) => `w${k}`).join(' ');
            const text = `[[mock:delay_events_ms=150]] drain ${words}`;
            const s = await openStream(gw.port, chatBody(text, { stream: true }), { key: stack.keys.t1 });
            assert.equal(s.status, 200);
            await s.waitEvents(2, 5000);

            const from = gw.stderr.mark();
            gw.signal('SIGTERM');
            await gw.stderr.waitForJson((j) => j.role === 'supervisor' && /received SIGTERM: draining/.test(j.msg || ''),
                { from, what: 'the supervisor starting the drain' });
            for (const role of ['worker-0', 'worker-1']) {
                await gw.stderr.waitForJson((j) => j.role === role && /^draining/.test(j.msg || ''),
                    { from, what: `"draining" from ${role}` });
            }
            assert.ok(s.events.length < 12, 'the stream was still running when the drain started');

            /* nobody accepts any more */
            const err = await new Promise((resolve) => {
                const sock = net.connect({ host: '127.0.0.1', port: gw.port });
                sock.on('connect', () => {
                    sock.destroy();
                    resolve(null);
                });
                sock.on('error', resolve);
            });
            assert.ok(err, 'a new connection during the drain is refused');
            assert.equal(err.code, 'ECONNREFUSED');

            /* the stream runs to its end */
            const { events, raw, error } = await s.end;
            assert.equal(error, null);
            assert.equal(events.at(-1).data, '[DONE]', raw.slice(-300));
            const content = events.slice(0, -1).map((e) => JSON.parse(e.data).choices[0]?.delta?.content || '').join('');
            assert.equal(content, `mock reply to: ${text}`);
            assert.equal(s.headers['x-leo-request-id'] !== undefined, true);

            const info = await gw.waitExit(20000);
            stopped = true;
            assert.deepEqual(info, { code: 0, signal: null });
            await gw.stderr.waitForJson((j) => j.role === 'supervisor' && /all workers exited/.test(j.msg || ''),
                { from, what: 'the supervisor exiting' });
            const line = gw.accessLines().find((j) => j.request_id === s.headers['x-leo-request-id']);
            assert.ok(line, 'the drained stream was logged');
            assert.equal(line.status, 200);
            assert.equal(line.client_aborted, undefined);
        } finally {
            await stack.stop();
        }
        /* after the try, so that a failure inside it is the one reported */
        assert.ok(stopped, 'the gateway exited by itself after the drain');
    });

    it('SIGTERM closes idle keep-alive connections and exits at once', T, async () => {
        const stack = await startStack({ workers: 1 });
        try {
            const { gw } = stack;
            const c = await RawConn.open(gw.port);
            await c.write(rawRequest('GET', '/health'));
            assert.equal((await c.readResponse()).status, 200);
            const t0 = Date.now();
            gw.signal('SIGTERM');
            await c.waitClosed(5000);
            const info = await gw.waitExit(10000);
            assert.deepEqual(info, { code: 0, signal: null });
            assert.ok(Date.now() - t0 < 5000, 'no wait for the drain timeout when nothing is in flight');
        } finally {
            await stack.stop();
        }
    });
});
