/*
 * controlplane.mjs — leo-controlplane for the integration tests, and a client of its admin API.
 *
 *   const cp = await ControlPlane.start({ pg, redisUrl, keyHashSecret, owner });
 *   const token = await cp.login(owner.email, owner.password);
 *   const r = await cp.api('POST', '/admin/v1/tenants', { body: { slug, name }, token });
 *   // r: { status, headers, text, json } (json undefined for an empty body, or with raw: true)
 *   await cp.stop();                     // SIGTERM; resolves with { code, signal }
 *   after(() => stopControlPlaneStack({ gateways: [gw], mock, cp, redis, pg, dir }));
 *   // or the whole stack at once: a private directory, PostgreSQL, the mock, Redis and the daemon, logged in
 *   ({ dir, pg, mock, redis, cp, token } = await startControlPlaneStack({ name: 'cp-x', keyHashSecret, owner }));
 *
 * The server runs `serve --listen 127.0.0.1:0 --db-pool 2` against a private PostgreSQL (lib/postgres.mjs) and
 * is a Child of lib/harness.mjs: its log lines are kept (cp.stderr) and it is killed when the test process exits
 * before stop(). Its port is read from its "listening on" line.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Child, bin, freePort, request, startMock } from './harness.mjs';
import { startPostgres } from './postgres.mjs';
import { Redis } from './redis.mjs';

/**
 * One admin API request on a fresh connection to 127.0.0.1:port: body (if given) is sent as JSON, or as is when
 * it is a string (malformed bodies in tests); token (if given) as "Authorization: Bearer". Resolves with
 * { status, headers, text, json }; json is the parsed body, undefined when it is empty or not JSON.
 */
export async function adminRequest(port, method, path, { body, token, timeoutMs = 10000 } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    if (payload !== undefined) headers['Content-Type'] = 'application/json';
    const r = await request(port, { method, path, headers, body: payload, timeoutMs });
    let json;
    try {
        json = r.text ? JSON.parse(r.text) : undefined;
    } catch {
        json = undefined;
    }
    return { status: r.status, headers: r.headers, text: r.text, json };
}

export class ControlPlane extends Child {
    /**
     * Starts the server with DATABASE_URL (pg.conninfo), LEO_KEY_HASH_SECRET, LEO_REDIS_URL and the bootstrap
     * owner { email, password }, plus env; resolves once it listens. A server that does not is killed.
     */
    static async start({ pg, redisUrl, keyHashSecret, owner, env = {}, timeoutMs = 20000 }) {
        const c = new ControlPlane('leo-controlplane', bin('leo-controlplane'),
            ['serve', '--listen', '127.0.0.1:0', '--db-pool', '2'], {
                DATABASE_URL: pg.conninfo,
                LEO_KEY_HASH_SECRET: keyHashSecret,
                LEO_REDIS_URL: redisUrl,
                LEO_BOOTSTRAP_OWNER_EMAIL: owner.email,
                LEO_BOOTSTRAP_OWNER_PASSWORD: owner.password,
                ...env,
            });
        try {
            const line = await c.stderr.waitForJson((j) => /^listening on /.test(j.msg || ''),
                { timeoutMs, what: '"listening on" line' });
            c.port = Number(/:(\d+)$/.exec(line.msg)[1]);
        } catch (e) {
            c.signal('SIGKILL');
            await c.exited;
            throw e;
        }
        c.url = `http://127.0.0.1:${c.port}`;
        return c;
    }

    /** One admin API request to this server: see adminRequest (raw: true leaves json undefined). */
    async api(method, path, { body, token, raw = false, timeoutMs = 10000 } = {}) {
        const r = await adminRequest(this.port, method, path, { body, token, timeoutMs });
        return raw ? { ...r, json: undefined } : r;
    }

    /** POST /admin/v1/login; resolves with the session token, rejects unless the answer is 200. */
    async login(email, password) {
        const r = await this.api('POST', '/admin/v1/login', { body: { email, password } });
        if (r.status !== 200) throw new Error(`login as ${email} answered ${r.status}: ${r.text}`);
        return r.json.token;
    }

    /** SIGTERM, awaiting the exit (SIGKILL and a rejection after 15 s); resolves with { code, signal }. */
    stop(opts = {}) {
        return super.stop({ timeoutMs: 15000, sanitizers: false, ...opts });
    }
}

/**
 * The stack most control-plane tests stand on: a private directory (leo-<name>-*), PostgreSQL and the mock
 * provider (started together), Redis (its files in the directory) and leo-controlplane with the owner bootstrapped
 * (env: extra environment, e.g. LEO_MASTER_KEY), and the owner's session token. Resolves with
 * { dir, pg, mock, redis, cp, token }; stop it with stopControlPlaneStack.
 */
export async function startControlPlaneStack({ name, keyHashSecret, owner, env = {} }) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `leo-${name}-`));
    const redisPort = await freePort();
    const [pg, mock] = await Promise.all([startPostgres(), startMock()]);
    const redis = await Redis.start({ port: redisPort, dir });
    const cp = await ControlPlane.start({ pg, redisUrl: redis.url, keyHashSecret, owner, env });
    const token = await cp.login(owner.email, owner.password);
    return { dir, pg, mock, redis, cp, token };
}

/**
 * The teardown of a test file's stack (each part may be null or undefined: not started, or stopped already):
 * stops the gateways, the mock and the control plane together (SIGTERM), then Redis (a failure there is
 * ignored) and PostgreSQL, and removes dir. Then rejects with the first stop that failed, or unless the control
 * plane exited with status 0.
 */
export async function stopControlPlaneStack({ gateways = [], mock, cp, redis, pg, dir }) {
    const results = await Promise.allSettled([...gateways.map((g) => g && g.stop()), mock && mock.stop(),
        cp && cp.stop()]);
    if (redis) await redis.stop().catch(() => {});
    if (pg) await pg.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    assert.deepEqual(results[results.length - 1].value, { code: 0, signal: null },
        'leo-controlplane exit after SIGTERM');
}
