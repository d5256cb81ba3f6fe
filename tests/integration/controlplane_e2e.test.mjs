/*
 * controlplane_e2e.test.mjs — the whole path from the admin API to an upstream call: a tenant, a user, a
 * provider with a sealed credential pointing at the mock, a deployment, a model mapping and a key are created
 * through the admin API; a gateway that follows the control plane (and holds the master key) serves the model
 * to the official openai SDK with the credential it decrypted; a revoked key gets 401 within a second; the
 * master key is rotated while the gateway keeps serving.
 *
 * Real processes over real sockets: a private PostgreSQL (lib/postgres.mjs), redis-server, leo-controlplane,
 * the mock provider and two gateways: one with the master key (two workers), one without it, which must log
 * why and keep serving what it can. Cases run in file order and share the processes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { ControlPlane, stopControlPlaneStack } from './lib/controlplane.mjs';
import { bin, freePort, nonce, recordedHeader, sourceDir, startGateway, startMock } from './lib/harness.mjs';
import { startPostgres } from './lib/postgres.mjs';
import { Redis } from './lib/redis.mjs';

/* the official SDK, installed for the end-to-end tests (tests/e2e/package.json, `npm ci` in tests/run.sh) */
const e2eRequire = createRequire(path.join(sourceDir, 'tests/e2e/package.json'));
const { default: OpenAI } = await import(pathToFileURL(e2eRequire.resolve('openai')).href);

const T = { timeout: 30000 };
const KEY_HASH_SECRET = 'cp-e2e-integration-secret-91c4';
const OWNER = { email: 'owner@e2e.test', password: 'owner-password-0001' };
const MASTER_OLD = crypto.randomBytes(32).toString('hex');
const MASTER_NEW = crypto.randomBytes(32).toString('base64');
const UPSTREAM_SECRET = `sk-mock-upstream-${crypto.randomBytes(12).toString('hex')}`;
const LIVE_MS = 1000;

let pg, redis, cp, mock, gw, gwNoKey, token, dir, redisPort;
const S = {};

function run(file, args, env) {
    return new Promise((resolve, reject) => {
        execFile(file, args, { env: { ...process.env, ...env }, timeout: 15000 }, (err, stdout, stderr) => {
            if (err && typeof err.code !== 'number') reject(err);
            else resolve({ code: err ? err.code : 0, stdout, stderr });
        });
    });
}

const redisCli = (...args) => run('/usr/bin/redis-cli', ['-p', String(redisPort), ...args], {});

const api = (method, p, body, tok = token) => cp.api(method, p, { body, token: tok });

async function created(method, p, body, tok) {
    const r = await api(method, p, body, tok);
    assert.equal(r.status, 201, `${method} ${p}: ${r.text}`);
    return r.json;
}

/** One chat completion through the SDK with a fresh client (a fresh connection, so workers alternate). */
function sdkChat(g, key, text, model = 'cp-chat') {
    const client = new OpenAI({ apiKey: key, baseURL: `${g.url}/v1`, maxRetries: 0, timeout: 5000 });
    return client.chat.completions.create({ model, messages: [{ role: 'user', content: text }] });
}

/** The HTTP status the SDK call ends with: 200, or the status of the APIError it throws. */
async function sdkStatus(g, key, model) {
    try {
        await sdkChat(g, key, 'status probe', model);
        return 200;
    } catch (e) {
        if (typeof e.status === 'number') return e.status;
        throw e;
    }
}

/** Polls until n consecutive SDK calls end with want, or fails after deadline (ms epoch). */
async function until(g, key, want, deadline, n = 1, model = 'cp-chat') {
    let got = [];
    while (Date.now() < deadline) {
        got = [];
        for (let i = 0; i < n; i++) got.push(await sdkStatus(g, key, model));
        if (got.every((s) => s === want)) return Date.now();
        await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`expected ${want} x${n} before the deadline, last: ${got.join(',')}\n${g.stderr.tail(20)}`);
}

function gatewayConfig() {
    /* no providers or models of its own but a file model on the mock, to show what a gateway without the master
     * key still serves; everything else comes from the control plane */
    return {
        listen: '127.0.0.1:0',
        drain_timeout_ms: 2000,
        providers: [{ name: 'file-mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` }],
        models: [{ name: 'file-chat', deployments: [{ provider: 'file-mock', model: 'mock-small' }] }],
        control_plane: { redis_url: `redis://127.0.0.1:${redisPort}` },
    };
}

before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leo-cp-e2e-'));
    redisPort = await freePort();
    [pg, mock] = await Promise.all([startPostgres(), startMock()]);
    redis = await Redis.start({ port: redisPort, dir });
    cp = await ControlPlane.start({ pg, redisUrl: redis.url, keyHashSecret: KEY_HASH_SECRET, owner: OWNER,
        env: { LEO_MASTER_KEY: MASTER_OLD } });
    token = await cp.login(OWNER.email, OWNER.password);
    /* this gateway holds the current key and the next one: it accepts both while the rotation spreads */
    [gw, gwNoKey] = await Promise.all([
        startGateway({ config: gatewayConfig(), workers: 2,
            env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET, LEO_MASTER_KEY: MASTER_OLD, LEO_MASTER_KEY_NEW: MASTER_NEW } }),
        startGateway({ config: gatewayConfig(), workers: 1, env: { LEO_KEY_HASH_SECRET: KEY_HASH_SECRET } }),
    ]);
}, { timeout: 90000 });

after(() => stopControlPlaneStack({ gateways: [gw, gwNoKey], mock, cp, redis, pg, dir }), { timeout: 60000 });

describe('control plane end to end', () => {
    it('tenant, user, provider, credential, deployment, model and key through the admin API', T, async () => {
        S.tenant = await created('POST', '/admin/v1/tenants', { slug: 'e2e', name: 'End to end' });
        S.user = await created('POST', '/admin/v1/users',
            { email: 'admin@e2e.test', password: 'tenant-password-01', role: 'tenant_admin', tenant_id: S.tenant.id });
        S.provider = await created('POST', '/admin/v1/providers',
            { name: 'cp-mock', type: 'openai', base_url: `http://127.0.0.1:${mock.port}/v1` });
        S.credential = await created('POST', `/admin/v1/providers/${S.provider.id}/credentials`,
            { name: 'primary', secret: UPSTREAM_SECRET });
        assert.equal(S.credential.masked, `sk-…${UPSTREAM_SECRET.slice(-4)}`);
        S.deployment = await created('POST', '/admin/v1/deployments', { provider_id: S.provider.id, model: 'mock-small' });
        S.model = await created('POST', '/admin/v1/models',
            { name: 'cp-chat', deployments: [{ deployment_id: S.deployment.id }] });
        /* the tenant's own admin makes the key */
        const tok = await cp.login('admin@e2e.test', 'tenant-password-01');
        S.key = await created('POST', `/admin/v1/tenants/${S.tenant.id}/keys`, { name: 'sdk' }, tok);
        assert.match(S.key.secret, /^sk-leo-/);
    });

    it('the openai SDK gets the mock\'s answer through the gateway, which sent the decrypted credential', T, async () => {
        await until(gw, S.key.secret, 200, Date.now() + 5000, 4);
        const marker = nonce('e2e');
        const out = await sdkChat(gw, S.key.secret, `hello ${marker}`);
        assert.equal(out.object, 'chat.completion');
        assert.equal(out.model, 'mock-small');
        assert.ok(out.choices[0].message.content.length > 0);
        const rec = await mock.requestWith(marker);
        assert.equal(recordedHeader(rec, 'authorization'), `Bearer ${UPSTREAM_SECRET}`);
        assert.ok(!gw.stderr.lines.some((l) => l.text.includes(UPSTREAM_SECRET)), 'secret in the gateway log');
        assert.ok(!cp.stderr.lines.some((l) => l.text.includes(UPSTREAM_SECRET)), 'secret in the control plane log');
    });

    it('Redis holds the credential sealed: neither the snapshot nor a dump of the database contains it', T, async () => {
        const doc = await redis.command('GET', 'leo:snapshot');
        const snap = JSON.parse(doc);
        const p = snap.providers.find((x) => x.name === 'cp-mock');
        assert.equal(p.credentials.length, 1);
        assert.match(p.credentials[0].sealed, /^sb1\.mk[0-9a-f]{16}\.[A-Za-z0-9_-]+$/);
        assert.deepEqual(snap.models.find((m) => m.name === 'cp-chat').deployments.map((d) => [d.provider, d.model]),
            [['cp-mock', 'mock-small']]);
        assert.ok(!doc.includes(UPSTREAM_SECRET));
        const rdb = path.join(dir, 'dump-e2e.rdb');
        const r = await redisCli('--rdb', rdb);
        assert.equal(r.code, 0, r.stderr);
        const raw = fs.readFileSync(rdb);
        assert.ok(raw.includes(Buffer.from('cp-mock')), 'the dump holds the snapshot');
        assert.ok(!raw.includes(Buffer.from(UPSTREAM_SECRET)), 'plaintext secret in the Redis dump');
        assert.ok(!raw.includes(Buffer.from(UPSTREAM_SECRET.slice(8, 30))), 'part of the secret in the Redis dump');
    });

    it('a gateway without the master key says why and keeps serving the rest', T, async () => {
        await gwNoKey.stderr.waitForJson((j) => typeof j.msg === 'string' &&
            j.msg.includes('credential "primary" cannot be opened: no master key is configured'), { timeoutMs: 5000 });
        await gwNoKey.stderr.waitForJson((j) => typeof j.msg === 'string' &&
            j.msg.includes('provider "cp-mock" is left out'), { timeoutMs: 5000 });
        /* the key is known (tenants and keys need no master key); the model that needs the credential is not */
        assert.equal(await sdkStatus(gwNoKey, S.key.secret, 'file-chat'), 200);
        assert.equal(await sdkStatus(gwNoKey, S.key.secret, 'cp-chat'), 404);
        assert.ok(!gwNoKey.stderr.lines.some((l) => l.text.includes(UPSTREAM_SECRET)));
    });

    it('rotate-master-key re-seals every credential in one go; a gateway holding both keys keeps serving', T, async () => {
        const env = { DATABASE_URL: pg.conninfo, LEO_MASTER_KEY: MASTER_OLD, LEO_MASTER_KEY_NEW: MASTER_NEW };
        const before = await pg.query("SELECT key_id, sealed FROM provider_credentials");
        const r = await run(bin('leo-controlplane'), ['rotate-master-key'], env);
        assert.equal(r.code, 0, r.stderr);
        const m = /re-encrypted 1 credentials under master key (mk[0-9a-f]{16})/.exec(r.stdout);
        assert.ok(m, r.stdout);
        const rows = await pg.query("SELECT key_id, sealed FROM provider_credentials");
        assert.equal(rows[0].key_id, m[1]);
        assert.notEqual(rows[0].key_id, before[0].key_id);
        assert.ok(rows[0].sealed.startsWith(`sb1.${m[1]}.`));
        const [audit] = await pg.query("SELECT details FROM audit_log WHERE action = 'master_key.rotate'");
        assert.deepEqual(audit.details, { credentials: 1, from: [before[0].key_id] });
        /* without the new key the command changes nothing */
        const bad = await run(bin('leo-controlplane'), ['rotate-master-key'], { DATABASE_URL: pg.conninfo, LEO_MASTER_KEY: MASTER_OLD });
        assert.equal(bad.code, 2);
        assert.match(bad.stderr, /LEO_MASTER_KEY_NEW/);
        /* a key that opens nothing: refused, nothing changed */
        const wrong = await run(bin('leo-controlplane'), ['rotate-master-key'], {
            DATABASE_URL: pg.conninfo, LEO_MASTER_KEY: crypto.randomBytes(32).toString('hex'), LEO_MASTER_KEY_NEW: MASTER_OLD });
        assert.equal(wrong.code, 1);
        assert.match(wrong.stderr, /cannot be opened/);
        assert.deepEqual(await pg.query("SELECT key_id, sealed FROM provider_credentials"), rows);
        assert.ok(!`${r.stdout}${r.stderr}${wrong.stderr}`.includes(UPSTREAM_SECRET));

        /* the next publication carries the re-sealed credential; the gateway opens it with the new key */
        const from = gw.stderr.lines.length;
        const versionBefore = Number(await redis.command('GET', 'leo:snapshot:version'));
        const p = await api('PATCH', `/admin/v1/providers/${S.provider.id}/credentials/${S.credential.id}`, { weight: 2 });
        assert.equal(p.status, 200, p.text);
        /* the publication follows the commit: wait for the version to move past the one before the change */
        let version = versionBefore;
        for (const deadline = Date.now() + 5000; version <= versionBefore && Date.now() < deadline;) {
            await new Promise((r) => setTimeout(r, 20));
            version = Number(await redis.command('GET', 'leo:snapshot:version'));
        }
        assert.ok(version > versionBefore, 'no snapshot was published after the change');
        await gw.stderr.waitForJson((j) => typeof j.msg === 'string' &&
            j.msg.startsWith(`control plane snapshot version ${version} applied`), { timeoutMs: 5000, from });
        const marker = nonce('rot');
        await sdkChat(gw, S.key.secret, `after rotation ${marker}`);
        assert.equal(recordedHeader(await mock.requestWith(marker), 'authorization'), `Bearer ${UPSTREAM_SECRET}`);
        assert.ok(!gw.stderr.lines.slice(from).some((l) => /cannot be opened/.test(l.text)), gw.stderr.tail(10));
    });

    it('a revoked key answers 401 to the SDK on every worker within a second', T, async () => {
        const r = await api('POST', `/admin/v1/tenants/${S.tenant.id}/keys/${S.key.id}/revoke`, {});
        const revoked = Date.now();
        assert.equal(r.status, 200, r.text);
        const live = await until(gw, S.key.secret, 401, revoked + LIVE_MS, 6);
        assert.ok(live - revoked <= LIVE_MS, `401 after ${live - revoked} ms`);
        await assert.rejects(sdkChat(gw, S.key.secret, 'after revoke'), (e) => e.status === 401 &&
            e.constructor.name === 'AuthenticationError');
    });
});

describe('tenant quotas from the control plane', () => {
    it('limits set on a tenant through the admin API are enforced by the gateway, and lifted again', T, async () => {
        /* gwNoKey has one worker (its counters are exact without Redis) and serves its file model to the tenant */
        const key = await created('POST', `/admin/v1/tenants/${S.tenant.id}/keys`, { name: 'quota' });
        await until(gwNoKey, key.secret, 200, Date.now() + 5000, 1, 'file-chat');
        const bad = await api('PATCH', `/admin/v1/tenants/${S.tenant.id}`, { limits: { rpm: -1 } });
        assert.equal(bad.status, 400);
        assert.equal(bad.json.error.param, 'limits.rpm');
        const p = await api('PATCH', `/admin/v1/tenants/${S.tenant.id}`, { limits: { rpm: 3 } });
        assert.equal(p.status, 200, p.text);
        assert.deepEqual(p.json.limits, { rpm: 3 });
        /* once the snapshot is live the tenant's fourth request in the minute is refused */
        const client = new OpenAI({ apiKey: key.secret, baseURL: `${gwNoKey.url}/v1`, maxRetries: 0, timeout: 5000 });
        let refused;
        const deadline = Date.now() + 5000;
        while (!refused && Date.now() < deadline) {
            try {
                await client.chat.completions.create({ model: 'file-chat', messages: [{ role: 'user', content: 'q' }] });
            } catch (e) {
                if (e.status !== 429) throw e;
                refused = e;
            }
        }
        assert.ok(refused, 'no request was refused');
        assert.equal(refused.error?.code ?? refused.code, 'quota_exceeded');
        assert.match(refused.message, /tenant/);
        /* lifting the limit reaches the gateway within a second */
        const lifted = await api('PATCH', `/admin/v1/tenants/${S.tenant.id}`, { limits: {} });
        assert.equal(lifted.status, 200, lifted.text);
        await until(gwNoKey, key.secret, 200, Date.now() + LIVE_MS + 500, 3, 'file-chat');
    });
});

describe('the publication is also pushed', () => {
    it('every new snapshot version is published on leo:snapshot:changed', T, async () => {
        /* a raw RESP subscriber: SUBSCRIBE, then collect the "message" pushes */
        const sock = net.connect({ host: '127.0.0.1', port: redis.port });
        let buf = '';
        const messages = [];
        let wake = () => {};
        sock.on('data', (d) => {
            buf += d.toString('utf8');
            for (const m of buf.matchAll(/\*3\r\n\$7\r\nmessage\r\n\$\d+\r\nleo:snapshot:changed\r\n\$\d+\r\n(\d+)\r\n/g))
                if (!messages.includes(m[1])) messages.push(m[1]);
            wake();
        });
        await new Promise((resolve) => sock.on('connect', resolve));
        sock.write('*2\r\n$9\r\nSUBSCRIBE\r\n$20\r\nleo:snapshot:changed\r\n');
        await new Promise((resolve) => { wake = () => { if (buf.includes('subscribe')) resolve(); }; wake(); });
        try {
            /* a change the document carries (a renamed tenant would not change it, and the same document is not
             * published again) */
            const r = await api('PATCH', `/admin/v1/tenants/${S.tenant.id}`, { limits: { rpm: 100000 } });
            assert.equal(r.status, 200, r.text);
            const until = Date.now() + 5000;
            while (messages.length === 0 && Date.now() < until)
                await new Promise((resolve) => { wake = resolve; setTimeout(resolve, 100); });
            assert.ok(messages.length > 0, `no message on leo:snapshot:changed: ${JSON.stringify(buf)}`);
            const version = Number(await redis.command('GET', 'leo:snapshot:version'));
            assert.equal(Number(messages.at(-1)), version);
        } finally {
            sock.destroy();
        }
    });
});
