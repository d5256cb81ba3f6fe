/*
 * usage.test.mjs — the usage pipeline (docs/usage.md): gateway workers append one event per proxied request to
 * the Redis stream leo:usage; leo-controlplane consumes it with a consumer group into PostgreSQL
 * (usage_events, usage_rollups) and serves GET /admin/v1/usage from the rollups.
 *
 * Real processes over real sockets: a private PostgreSQL (lib/postgres.mjs), redis-server, leo-controlplane,
 * the mock provider and a two-worker gateway following the control plane. The cases run in file order and
 * share the processes: the consumer is SIGKILLed and restarted, and Redis is stopped and started again, on
 * purpose. Every wait is for an observable state (a row count, the group's pending list), never a fixed time.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ControlPlane, stopControlPlaneStack } from './lib/controlplane.mjs';
import {
    MOCK_PRICE, chat, chatBody, freePort, metricSum, openStream, parseMetrics, request, spawnChild, startGateway,
    startMock,
} from './lib/harness.mjs';
import { startPostgres } from './lib/postgres.mjs';
import { Redis, redisCommand } from './lib/redis.mjs';

const T = { timeout: 60000 };
const KEY_HASH_SECRET = 'usage-integration-secret-5c2e';
const OWNER = { email: 'owner@usage.test', password: 'owner-password-0001' };
const PASSWORD = 'member-password-0001';
/* "hello there world": the mock counts 3 words + 3 for the message = 6 prompt tokens, and answers
 * "mock reply to: hello there world", 6 completion tokens (docs/mock.md) */
const PROMPT = 6;
const COMPLETION = 6;

let pg, redis, cp, mock, gw, token, tenantA, tenantB, keyA, keyB, dir, redisPort;
let sent = 0; /* requests sent through the gateway with a tenant key: each must be one row */

/** Entries delivered to the group and not acknowledged (0 when the group does not exist yet). */
async function pendingCount() {
    const r = await redisCommand(redisPort, ['XPENDING', 'leo:usage', 'leo-usage']);
    if (r instanceof Error) {
        if (/NOGROUP/.test(r.message)) return 0;
        throw r;
    }
    return Number(r[0]) || 0;
}

function startControlPlane(consumer) {
    return ControlPlane.start({ pg, redisUrl: `redis://127.0.0.1:${redisPort}`, keyHashSecret: KEY_HASH_SECRET,
        owner: OWNER, env: { LEO_USAGE_CONSUMER: consumer, LEO_USAGE_CLAIM_IDLE_MS: '1000', LEO_USAGE_BATCH: '7' } });
}

function api(method, p, { body, auth = token, raw = false } = {}) {
    return cp.api(method, p, { body, token: auth, raw });
}

/** Polls `fn` until it returns a truthy value, or fails with `what` after timeoutMs. */
async function waitFor(fn, what, timeoutMs = 20000) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
        last = await fn();
        if (last) return last;
        await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})\ncontrolplane:\n` +
        (cp ? cp.stderr.tail(15) : ''));
}

async function eventCount() {
    const [row] = await pg.query('SELECT count(*)::int AS n FROM usage_events');
    return row.n;
}

/** Waits until every request sent is a row and the group has nothing pending. */
async function allStored() {
    await waitFor(async () => (await eventCount()) === sent, `${sent} usage events in PostgreSQL`);
    await waitFor(async () => (await pendingCount()) === 0, 'no pending entries in the group');
}

async function chatOk(key, text = 'hello there world') {
    const r = await chat(gw.port, chatBody(text), { key, timeoutMs: 10000 });
    assert.equal(r.status, 200, r.text);
    sent++;
    return r;
}

async function streamOk(key, text = 'hello there world') {
    const s = await openStream(gw.port, chatBody(text, { stream: true }), { key });
    assert.equal(s.status, 200);
    const end = await s.end;
    sent++;
    return { s, end };
}

function gatewayConfig(cachePath) {
    return {
        listen: '127.0.0.1:0',
        workers: 2,
        drain_timeout_ms: 2000,
        providers: [{ name: 'mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` }],
        models: [{ name: 'gpt-4o-mini', deployments: [{ provider: 'mock', model: 'mock-small' }] }],
        prices: { 'mock-small': { input: MOCK_PRICE.input, output: MOCK_PRICE.output } },
        routing: { breaker_failures: 1000 },
        control_plane: { redis_url: `redis://127.0.0.1:${redisPort}`, cache_path: cachePath },
    };
}

async function createKey(tenantId, name) {
    const k = await api('POST', `/admin/v1/tenants/${tenantId}/keys`, { body: { name } });
    assert.equal(k.status, 201, k.text);
    return k.json.secret;
}

before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leo-usage-'));
    redisPort = await freePort();
    [pg, redis, mock] = await Promise.all([startPostgres(), Redis.start({ port: redisPort }), startMock()]);
    cp = await startControlPlane('cp-a');
    token = await cp.login(OWNER.email, OWNER.password);
    for (const [slug, set] of [['acme', (t) => (tenantA = t)], ['beta', (t) => (tenantB = t)]]) {
        const t = await api('POST', '/admin/v1/tenants', { body: { slug, name: slug } });
        assert.equal(t.status, 201, t.text);
        set(t.json.id);
    }
    keyA = await createKey(tenantA, 'ci');
    keyB = await createKey(tenantB, 'batch');
    gw = await startGateway({ config: gatewayConfig(path.join(dir, 'snapshot.json')), workers: 2,
        env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET } });
    /* both keys serve once the snapshot is live (these probes are not counted: they are sent before) */
    for (const k of [keyA, keyB]) {
        await waitFor(async () => (await chat(gw.port, chatBody('probe'), { key: k, timeoutMs: 5000 })).status === 200,
            'the key to serve on the gateway', 10000);
    }
    /* the probes above produced events too: count them as sent once they are stored */
    await waitFor(async () => (await eventCount()) >= 2, 'the probe events');
    sent = await eventCount();
}, { timeout: 120000 });

after(() => stopControlPlaneStack({ gateways: [gw], mock, cp, redis, pg, dir }), { timeout: 60000 });

async function report(query, auth = token) {
    const r = await api('GET', `/admin/v1/usage${query}`, { auth });
    assert.equal(r.status, 200, r.text);
    return r.json;
}

describe('usage pipeline', () => {
    it('non-streamed and streamed requests appear in the report with their token counts', T, async () => {
        const before = (await report('?tenant=acme&group_by=key')).rows.find((r) => r.key === 'ci');
        for (let i = 0; i < 3; i++) await chatOk(keyA);
        for (let i = 0; i < 2; i++) await streamOk(keyA);
        await allStored();
        const after = (await report('?tenant=acme&group_by=key')).rows.find((r) => r.key === 'ci');
        assert.equal(after.tenant, 'acme');
        assert.equal(after.requests - before.requests, 5);
        assert.equal(after.errors - before.errors, 0);
        assert.equal(after.prompt_tokens - before.prompt_tokens, 5 * PROMPT);
        assert.equal(after.completion_tokens - before.completion_tokens, 5 * COMPLETION);
        const cost = (5 * (PROMPT * MOCK_PRICE.input + COMPLETION * MOCK_PRICE.output)) / 1e6;
        assert.ok(Math.abs(after.cost_usd - before.cost_usd - cost) < 1e-12, `cost ${after.cost_usd - before.cost_usd}`);
        assert.equal(after.saved_usd, 0);
        assert.equal(after.cache_hits, 0);

        const rows = await pg.query("SELECT stream, count(*)::int AS n FROM usage_events WHERE key_name = 'ci'" +
            ` AND prompt_tokens = ${PROMPT} GROUP BY stream ORDER BY stream`);
        assert.ok(rows.find((r) => r.stream === true).n >= 2, JSON.stringify(rows));
        const [ev] = await pg.query("SELECT * FROM usage_events WHERE key_name = 'ci' AND stream ORDER BY at DESC LIMIT 1");
        assert.equal(ev.tenant, 'acme');
        assert.equal(ev.model, 'gpt-4o-mini');
        assert.equal(ev.deployment, 'mock/mock-small');
        assert.equal(ev.provider, 'mock');
        assert.equal(ev.status, 200);
        assert.equal(ev.error, false);
        /* no cache answered: "none", or what a cache module in front reported ("miss", "bypass") */
        assert.match(ev.cache_status, /^[a-z_-]+$/);
        assert.notEqual(ev.cache_status, 'hit');
        assert.equal(ev.attempts, 1);
        assert.match(ev.request_id, /^req_[0-9a-f]+$/);
    });

    it('a cache hit is recorded with its status and what it saved', T, async () => {
        const before = (await report('?tenant=acme&group_by=tenant')).rows[0];
        /* temperature 0 makes the request cacheable; each worker has its own L1, so repeat until one hits */
        const body = chatBody(`cache me ${Date.now()}`, { temperature: 0 });
        let hit;
        for (let i = 0; i < 20 && !hit; i++) {
            const r = await chat(gw.port, body, { key: keyA, timeoutMs: 10000 });
            assert.equal(r.status, 200, r.text);
            sent++;
            if (r.headers['x-leo-cache-status'] === 'hit') hit = r;
        }
        assert.ok(hit, 'no cache hit in 20 identical requests');
        const id = hit.headers['x-leo-request-id'];
        await allStored();
        const [ev] = await pg.query(`SELECT * FROM usage_events WHERE request_id = '${id}'`);
        assert.equal(ev.cache_status, 'hit');
        assert.equal(ev.cost_usd, 0);
        assert.equal(ev.saved_usd.toFixed(8), hit.headers['x-leo-saved-usd']);
        assert.ok(ev.saved_usd > 0);
        const after = (await report('?tenant=acme&group_by=tenant')).rows[0];
        assert.equal(after.cache_hits - before.cache_hits, 1);
        assert.ok(Math.abs(after.saved_usd - before.saved_usd - ev.saved_usd) < 1e-12);
    });

    it('a stream cut by the provider is one event, marked as an error, with what the gateway accounted', T,
        async () => {
            const s = await openStream(gw.port, chatBody('hello there world [[mock:reset_after_events=2]]',
                { stream: true }), { key: keyA });
            assert.equal(s.status, 200);
            await s.end;
            sent++;
            const id = s.headers['x-leo-request-id'];
            assert.ok(id, 'x-leo-request-id');
            await allStored();
            const [ev] = await pg.query(`SELECT * FROM usage_events WHERE request_id = '${id}'`);
            assert.equal(ev.stream, true);
            assert.equal(ev.error, true);
            const access = await waitFor(() => gw.stderr.json((j) => j.type === 'access' && j.request_id === id)[0],
                'the access log line');
            assert.equal(Number(ev.prompt_tokens), access.prompt_tokens || 0);
            assert.equal(Number(ev.completion_tokens), access.completion_tokens || 0);
            assert.equal(ev.status, access.status);
        });

    it('the report groups by hour, day, model, key and tenant, exports CSV and validates its parameters', T,
        async () => {
            for (let i = 0; i < 2; i++) await chatOk(keyB);
            await allStored();
            const [tot] = await pg.query('SELECT count(*)::int AS n, sum(prompt_tokens)::int AS p FROM usage_events');
            for (const g of ['hour', 'day', 'model', 'key', 'tenant']) {
                const j = await report(`?group_by=${g}`);
                assert.equal(j.group_by, g);
                assert.equal(j.truncated, false);
                assert.equal(j.rows.reduce((a, r) => a + r.requests, 0), tot.n, g);
                assert.equal(j.rows.reduce((a, r) => a + r.prompt_tokens, 0), tot.p, g);
            }
            const byTenant = await report('?group_by=tenant');
            assert.deepEqual(byTenant.rows.map((r) => r.tenant), ['acme', 'beta']);
            const hour = await report('?group_by=hour');
            for (const r of hour.rows) assert.match(r.hour, /^\d{4}-\d\d-\d\dT\d\d:00:00Z$/);
            /* a range that ends before the first event is empty; one around now holds everything */
            assert.deepEqual((await report('?to=2000-01-01T00:00:00Z')).rows, []);
            const now = Date.now();
            const around = await report(`?from=${new Date(now - 3600e3).toISOString()}` +
                `&to=${new Date(now + 3600e3).toISOString()}&group_by=tenant`);
            assert.equal(around.rows.reduce((a, r) => a + r.requests, 0), tot.n);
            assert.deepEqual((await report('?model=no-such-model')).rows, []);

            const csv = await api('GET', '/admin/v1/usage?group_by=key&format=csv', { raw: true });
            assert.equal(csv.status, 200);
            assert.match(csv.headers['content-type'], /^text\/csv/);
            const lines = csv.text.split('\r\n');
            assert.equal(lines[0], 'tenant,key,requests,errors,cache_hits,prompt_tokens,completion_tokens,cost_usd,' +
                'saved_usd,avg_latency_ms');
            const beta = lines.find((l) => l.startsWith('beta,batch,'));
            assert.ok(beta, csv.text);
            assert.equal(beta.split(',')[2], String(byTenant.rows[1].requests));

            for (const [q, param] of [['?group_by=week', 'group_by'], ['?from=yesterday', 'from'],
                ['?format=xml', 'format'], ['?tenant=', 'tenant'], ['?nope=1', 'nope'],
                ['?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z', 'to']]) {
                const r = await api('GET', `/admin/v1/usage${q}`);
                assert.equal(r.status, 400, `${q}: ${r.text}`);
                assert.equal(r.json.error.param, param, q);
                assert.equal(r.json.error.type, 'invalid_request_error');
            }
        });

    it('every role may read usage; tenant roles see only their own tenant', T, async () => {
        const roles = ['admin', 'operator', 'viewer', 'tenant_admin', 'tenant_member'];
        const tokens = { owner: token };
        for (const role of roles) {
            const body = { email: `${role}@usage.test`, password: PASSWORD, role };
            if (role.startsWith('tenant_')) body.tenant_id = tenantA;
            const u = await api('POST', '/admin/v1/users', { body });
            assert.equal(u.status, 201, u.text);
            tokens[role] = await cp.login(body.email, PASSWORD);
        }
        for (const [role, t] of Object.entries(tokens)) {
            const j = await report('?group_by=tenant', t);
            const want = role.startsWith('tenant_') ? ['acme'] : ['acme', 'beta'];
            assert.deepEqual(j.rows.map((r) => r.tenant), want, role);
            /* naming another tenant does not widen the scope */
            const other = await report('?group_by=tenant&tenant=beta', t);
            assert.deepEqual(other.rows.map((r) => r.tenant), role.startsWith('tenant_') ? [] : ['beta'], role);
        }
        const anon = await api('GET', '/admin/v1/usage', { auth: null });
        assert.equal(anon.status, 401);
    });

    /* round 1: the new process has another name and claims the dead one's entries (XAUTOCLAIM); round 2: it
     * has the same name and resumes its own pending entries (XREADGROUP ... 0) */
    for (const [round, next, how] of [[1, 'cp-b', /claimed \d+ entries left pending by other consumers/],
        [2, 'cp-b', /resuming \d+ entries this consumer read before/]]) {
        it(`consumer SIGKILLed mid-batch (round ${round}, restarted as ${next}): every event stored exactly once`, T,
            async () => {
                /* Hold a lock that the batch statement needs, so the consumer has read entries it cannot commit. */
                const locker = spawnChild('runuser', ['-u', 'postgres', '--', path.join(pg.bin, 'psql'), '-X', '-q',
                    '-A', '-t', '-h', pg.socketDir, '-p', String(pg.port), '-U', 'postgres', '-d', pg.database], {},
                { stdin: true });
                locker.proc.stdin.write('BEGIN; LOCK TABLE usage_rollups IN SHARE ROW EXCLUSIVE MODE; SELECT \'locked\';\n');
                await locker.stdout.waitFor((l) => l.text === 'locked', { timeoutMs: 10000, what: 'the lock' });
                const base = sent;
                const flowing = [];
                for (let i = 0; i < 20; i++) flowing.push(i % 2 ? streamOk(keyA) : chatOk(keyA));
                await waitFor(async () => (await pendingCount()) > 0, 'entries read but not committed');
                cp.proc.kill('SIGKILL');
                assert.deepEqual(await cp.exited, { code: null, signal: 'SIGKILL' });
                await Promise.all(flowing);
                assert.equal(sent, base + 20);
                cp = await startControlPlane(next);
                locker.proc.stdin.end('COMMIT;\n');
                await locker.exited;
                await allStored();
                await cp.stderr.waitForJson((j) => how.test(j.msg || ''), { what: String(how) });
                const [r] = await pg.query('SELECT count(*)::int AS n, count(DISTINCT request_id)::int AS ids,' +
                    ' sum(prompt_tokens)::int AS p, sum(completion_tokens)::int AS c FROM usage_events');
                assert.equal(r.n, sent);
                assert.equal(r.ids, sent);
                const [roll] = await pg.query('SELECT sum(requests)::int AS n, sum(prompt_tokens)::int AS p,' +
                    ' sum(completion_tokens)::int AS c FROM usage_rollups');
                assert.deepEqual(roll, { n: r.n, p: r.p, c: r.c }, 'rollups count each stored event once');
                const [mine] = await pg.query(`SELECT count(*)::int AS n FROM (SELECT * FROM usage_events
                    WHERE key_name = 'ci' ORDER BY inserted_at DESC, request_id LIMIT 20) q WHERE prompt_tokens = ${PROMPT}`);
                assert.equal(mine.n, 20);
                const m = await api('GET', '/metrics', { auth: null, raw: true });
                assert.equal(m.status, 200);
                const series = parseMetrics(m.text);
                const inserted = metricSum(series, 'leo_usage_inserted_total');
                const dups = metricSum(series, 'leo_usage_duplicates_total');
                assert.ok(inserted >= 1, m.text);
                assert.ok(metricSum(series, 'leo_usage_consumed_total') >= inserted + dups, m.text);
                assert.ok(metricSum(series, 'leo_usage_batches_total', { result: 'ok' }) >= 1, m.text);
            });
    }

    it('Redis down at the gateway: events are queued and delivered once it is back', T, async () => {
        const info = await redis.stop();
        redis = null;
        assert.equal(info.code, 0);
        const base = await eventCount();
        for (let i = 0; i < 4; i++) await chatOk(keyA);
        const m = parseMetrics((await request(gw.port, { path: '/metrics' })).text);
        assert.ok(metricSum(m, 'leo_usage_events_total', { result: 'queued' }) +
            metricSum(m, 'leo_usage_events_total', { result: 'retried' }) >= 4);
        assert.ok(metricSum(m, 'leo_usage_queue_depth') >= 4);
        assert.equal(metricSum(m, 'leo_usage_events_dropped_total'), 0);
        assert.equal(await eventCount(), base);
        const from = gw.stderr.lines.length;
        redis = await Redis.start({ port: redisPort }); /* an empty Redis: the stream and the group are created again */
        await allStored();
        /* every worker is back on Redis before the next case stops the gateway: a worker still waiting out its
         * reconnect backoff would hold its next events in its queue, which a stop drops (counted; usage.md) */
        await waitFor(async () => new Set(gw.stderr.lines.slice(from).map((l) => {
            try {
                const j = JSON.parse(l.text);
                return typeof j.msg === 'string' && j.msg.startsWith('redis: connected to') &&
                    /^worker-/.test(j.role || '') ? j.role : null;
            } catch {
                return null;
            }
        }).filter(Boolean)).size >= 2, 'both workers reconnected to Redis');
        const after = parseMetrics((await request(gw.port, { path: '/metrics' })).text);
        await waitFor(async () => metricSum(parseMetrics((await request(gw.port, { path: '/metrics' })).text),
            'leo_usage_queue_depth') === 0, 'the gateway queue to drain');
        assert.equal(metricSum(after, 'leo_usage_events_dropped_total'), 0);
    });

    it('a gateway stopped right after its last requests still delivers their events', T, async () => {
        await Promise.all([chatOk(keyA), streamOk(keyA), chatOk(keyB)]);
        const g = gw;
        gw = null;
        const info = await g.stop();
        assert.equal(info.code, 0);
        await allStored();
        assert.equal(g.stderr.json((j) => /events dropped/.test(j.msg || '')).length, 0, g.stderr.tail(10));
    });
});
