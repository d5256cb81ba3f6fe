/*
 * harness.mjs — runs the real leo-gateway and leo-mock-provider binaries for the integration and end-to-end
 * tests, and talks to them over real sockets.
 *
 * Binaries come from $LEO_BUILD_DIR (default: <repo>/build). Every process a test starts is stopped by the
 * test (stop()), and killed with SIGKILL when the test process exits before that, so no run leaves servers
 * behind. Gateway and mock stderr lines are kept (parsed as JSON where they are JSON) so tests can wait for and
 * assert on log lines; sanitizer reports found in them fail the stop().
 *
 * Exports, by purpose:
 *   processes:  startMock, startGateway, startStack, hashKey, freePort, gatewayConfig, spawnChild (any other
 *               binary, as a Child); lib/redis.mjs and lib/controlplane.mjs build on Child
 *   HTTP:       request (node:http, one fresh connection per call), chat, openStream (SSE, incremental),
 *               RawConn + rawRequest (a raw socket with an HTTP/1.1 response reader, for keep-alive,
 *               pipelining and bad input)
 *   formats:    parseSSE, parseMetrics, metricSum, expectedCost, recordedHeader
 */
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const sourceDir = process.env.LEO_SOURCE_DIR || path.resolve(here, '../../..');
export const buildDir = process.env.LEO_BUILD_DIR || path.join(sourceDir, 'build');

export function bin(name) {
    return path.join(buildDir, name);
}

/* ------------------------------------------------------------------------------------------------------------
 * Child processes
 * ------------------------------------------------------------------------------------------------------------ */

const live = new Set();
process.on('exit', () => {
    for (const p of live) {
        try {
            process.kill(p.pid, 'SIGKILL');
        } catch {
            /* already gone */
        }
    }
});

/* Environment for the children: sanitizer reports go to stderr, where the harness looks for them. */
function childEnv(extra = {}) {
    const env = { ...process.env, ...extra };
    if (!env.ASAN_OPTIONS) env.ASAN_OPTIONS = 'abort_on_error=0:detect_leaks=1';
    if (!env.UBSAN_OPTIONS) env.UBSAN_OPTIONS = 'print_stacktrace=1';
    return env;
}

const SANITIZER_RE = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (Address|Undefined|Leak)/;

/**
 * Lines of one output stream of a child. Each entry: { text, json (object or null), at (ms since start) }.
 * waitFor() resolves with the first line from index `from` on that matches, now or when it arrives.
 */
export class LineLog {
    constructor(stream, name) {
        this.name = name;
        this.lines = [];
        this.waiters = new Set();
        this.ended = false;
        this.t0 = Date.now();
        let pending = '';
        stream.setEncoding('utf8');
        stream.on('data', (chunk) => {
            pending += chunk;
            let nl;
            while ((nl = pending.indexOf('\n')) >= 0) {
                this.push(pending.slice(0, nl));
                pending = pending.slice(nl + 1);
            }
        });
        stream.on('end', () => {
            if (pending) this.push(pending);
            this.ended = true;
            for (const w of this.waiters) w.check();
        });
    }

    push(text) {
        let json = null;
        if (text.startsWith('{')) {
            try {
                json = JSON.parse(text);
            } catch {
                json = null;
            }
        }
        const line = { text, json, at: Date.now() - this.t0 };
        this.lines.push(line);
        if (process.env.LEO_TEST_VERBOSE) process.stderr.write(`[${this.name}] ${text}\n`);
        for (const w of this.waiters) w.check();
    }

    /** Index to pass as `from` to look only at lines written after this call. */
    mark() {
        return this.lines.length;
    }

    /** JSON lines matching pred (a function of the parsed object), from index `from`. */
    json(pred = () => true, from = 0) {
        return this.lines.slice(from).filter((l) => l.json && pred(l.json)).map((l) => l.json);
    }

    /** Waits for a line whose parsed JSON matches pred; rejects after timeoutMs naming what it waited for. */
    waitForJson(pred, { from = 0, timeoutMs = 10000, what = 'log line' } = {}) {
        return this.waitFor((l) => l.json !== null && pred(l.json), { from, timeoutMs, what }).then((l) => l.json);
    }

    waitFor(pred, { from = 0, timeoutMs = 10000, what = 'log line' } = {}) {
        return new Promise((resolve, reject) => {
            const w = {
                check: () => {
                    for (let i = from; i < this.lines.length; i++) {
                        if (pred(this.lines[i])) {
                            done();
                            resolve(this.lines[i]);
                            return;
                        }
                    }
                    if (this.ended) {
                        done();
                        reject(new Error(`${this.name}: stream ended without ${what}`));
                    }
                },
            };
            const timer = setTimeout(() => {
                done();
                reject(new Error(`${this.name}: no ${what} within ${timeoutMs} ms; last lines:\n` + this.tail(15)));
            }, timeoutMs);
            const done = () => {
                clearTimeout(timer);
                this.waiters.delete(w);
            };
            this.waiters.add(w);
            w.check();
        });
    }

    tail(n = 20) {
        return this.lines.slice(-n).map((l) => l.text).join('\n');
    }

    sanitizerReports() {
        return this.lines.filter((l) => SANITIZER_RE.test(l.text)).map((l) => l.text);
    }
}

/**
 * A spawned child with its stdout/stderr lines, its exit, and a bounded stop. With { stdin: true } its standard
 * input is a pipe (this.proc.stdin), otherwise /dev/null.
 */
export class Child {
    constructor(name, file, args, env, { stdin = false } = {}) {
        this.name = name;
        this.proc = spawn(file, args, { env: childEnv(env), stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
        this.pid = this.proc.pid;
        live.add(this.proc);
        this.stdout = new LineLog(this.proc.stdout, `${name} stdout`);
        this.stderr = new LineLog(this.proc.stderr, `${name} stderr`);
        this.exitInfo = null;
        this.exited = new Promise((resolve) => {
            this.proc.on('exit', (code, signal) => {
                live.delete(this.proc);
                this.exitInfo = { code, signal };
                resolve(this.exitInfo);
            });
        });
        this.spawnError = new Promise((resolve) => this.proc.on('error', resolve));
    }

    get running() {
        return this.exitInfo === null;
    }

    signal(sig) {
        if (this.running) this.proc.kill(sig);
    }

    /** Resolves with {code, signal} once the child exited, or rejects after timeoutMs (the child is killed). */
    async waitExit(timeoutMs = 20000) {
        let timer;
        const timeout = new Promise((_, reject) => {
            timer = setTimeout(() => {
                this.signal('SIGKILL');
                reject(new Error(`${this.name} did not exit within ${timeoutMs} ms; last stderr:\n` +
                    this.stderr.tail(15)));
            }, timeoutMs);
        });
        try {
            return await Promise.race([this.exited, timeout]);
        } finally {
            clearTimeout(timer);
        }
    }

    /** SIGTERM (or sig) unless the child has exited already, await the exit, then (unless sanitizers is false)
     *  check its output for sanitizer reports (which make this reject). Returns {code, signal}. */
    async stop({ sig = 'SIGTERM', timeoutMs = 20000, sanitizers = true } = {}) {
        this.signal(sig);
        const info = await this.waitExit(timeoutMs);
        await Promise.all([endOf(this.proc.stdout), endOf(this.proc.stderr)]);
        if (!sanitizers) return info;
        const reports = [...this.stderr.sanitizerReports(), ...this.stdout.sanitizerReports()];
        if (reports.length) {
            throw new Error(`${this.name}: sanitizer reports:\n${reports.join('\n')}\n--- stderr tail ---\n` +
                this.stderr.tail(60));
        }
        return info;
    }
}

/** Spawns file with args and env (added to the test's own) as a Child named after the file. */
export function spawnChild(file, args, env = {}, opts = {}) {
    return new Child(path.basename(file), file, args, env, opts);
}

/* The end of a child's output pipe, bounded: a grandchild (a worker) could keep it open after the child exited. */
function endOf(stream, timeoutMs = 5000) {
    if (stream.readableEnded || stream.destroyed) return Promise.resolve();
    let timer;
    return Promise.race([
        once(stream, 'close').catch(() => {}),
        new Promise((resolve) => {
            timer = setTimeout(resolve, timeoutMs);
        }),
    ]).finally(() => clearTimeout(timer));
}

/** A TCP port that was free a moment ago (bound to 0 and closed). */
export async function freePort() {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const { port } = srv.address();
    srv.close();
    await once(srv, 'close');
    return port;
}

/** Runs `leo-gateway hash-key KEY` and returns its "kh1:<hex>" output. */
export function hashKey(key, env = {}) {
    return new Promise((resolve, reject) => {
        execFile(bin('leo-gateway'), ['hash-key', key], { env: childEnv(env), timeout: 10000 }, (err, stdout, stderr) => {
            if (err) {
                reject(new Error(`hash-key failed: ${err.message}\n${stderr}`));
                return;
            }
            const m = /kh1:[0-9a-f]{64}/.exec(stdout);
            if (!m) {
                reject(new Error(`hash-key printed no kh1 hash: ${JSON.stringify(stdout)}`));
                return;
            }
            resolve(m[0]);
        });
    });
}

/* ------------------------------------------------------------------------------------------------------------
 * The mock provider
 * ------------------------------------------------------------------------------------------------------------ */

export class Mock extends Child {
    /** Starts `leo-mock-provider --listen 127.0.0.1:0` and waits for its "listening" line. */
    static async start({ env = {}, timeoutMs = 10000 } = {}) {
        const m = new Mock('mock', bin('leo-mock-provider'), ['--listen', '127.0.0.1:0'], env);
        const ready = m.stdout.waitFor((l) => /mock provider listening on/.test(l.text), {
            timeoutMs,
            what: '"mock provider listening on" line',
        });
        const failed = Promise.race([m.spawnError, m.exited]).then((e) => {
            throw new Error(`mock provider did not start: ${e && e.message ? e.message : JSON.stringify(e)}\n` +
                m.stderr.tail(10));
        });
        /* once ready, a later exit (the test's stop) is no failure */
        failed.catch(() => {});
        const line = await Promise.race([ready, failed]);
        const mm = /listening on (\S+):(\d+)/.exec(line.text);
        m.host = mm[1];
        m.port = Number(mm[2]);
        m.baseUrl = `http://127.0.0.1:${m.port}/v1`;
        return m;
    }

    /** Every request the mock has recorded: [{method, path, headers: [[name, value]...], body}]. */
    async requests() {
        const r = await request(this.port, { method: 'GET', path: '/_mock/requests' });
        if (r.status !== 200) throw new Error(`GET /_mock/requests answered ${r.status}: ${r.text}`);
        return JSON.parse(r.text);
    }

    /**
     * The recorded requests whose body contains needle (a unique marker the test put in its message). Waits up
     * to timeoutMs for at least `count` of them: the mock records a request when it has read it, which can be
     * just after the gateway answered the client (e.g. when the gateway gave up on the upstream).
     */
    async requestsWith(needle, { count = 1, timeoutMs = 5000 } = {}) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            const found = (await this.requests()).filter((r) => typeof r.body === 'string' && r.body.includes(needle));
            if (found.length >= count || Date.now() > deadline) return found;
            await new Promise((r) => setTimeout(r, 25));
        }
    }

    /** The single recorded request containing needle (fails when there is not exactly one). */
    async requestWith(needle, opts) {
        const found = await this.requestsWith(needle, opts);
        if (found.length !== 1) {
            throw new Error(`expected exactly one upstream request containing ${JSON.stringify(needle)}, ` +
                `the mock recorded ${found.length}`);
        }
        return found[0];
    }
}

export const startMock = (opts) => Mock.start(opts);

/** Value of a header in a recorded request ([[name, value]...]), case-insensitive; undefined when absent. */
export function recordedHeader(rec, name) {
    const all = recordedHeaders(rec, name);
    return all.length ? all[0] : undefined;
}

export function recordedHeaders(rec, name) {
    const n = name.toLowerCase();
    return rec.headers.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
}

/* ------------------------------------------------------------------------------------------------------------
 * The gateway
 * ------------------------------------------------------------------------------------------------------------ */

export const KEYS = {
    /* tenant t1: all models, bring-your-own-key allowed */
    t1: 'sk-leo-t1-integration-0001',
    /* tenant t2: only gpt-4o-mini, no bring-your-own-key */
    t2: 'sk-leo-t2-integration-0002',
};

/** The price the tests configure for the mock's model (USD per 1M tokens). */
export const MOCK_PRICE = { input: 0.1, output: 0.4 };

/** Cost as the gateway formats it ("%.8f"). */
export function expectedCost(promptTokens, completionTokens) {
    return ((promptTokens * MOCK_PRICE.input + completionTokens * MOCK_PRICE.output) / 1e6).toFixed(8);
}

/**
 * The standard test configuration:
 *   providers  mock (the mock, default timeouts), slowmock (the mock, first byte within 300 ms),
 *              dead (a closed port)
 *   models     gpt-4o-mini → mock/mock-small, slow-model → slowmock/mock-small, dead-model → dead/mock-small,
 *              other-model → mock/mock-large
 *   tenants    t1 (all models, allow_byok), t2 (gpt-4o-mini only, no byok)
 */
export function gatewayConfig({ mockPort, deadPort, hashes, limits = {}, drainTimeoutMs = 10000 }) {
    return {
        listen: '127.0.0.1:0',
        workers: 1,
        drain_timeout_ms: drainTimeoutMs,
        providers: [
            { name: 'mock', type: 'openai', base_url: `http://127.0.0.1:${mockPort}/v1` },
            {
                name: 'slowmock',
                type: 'openai',
                base_url: `http://127.0.0.1:${mockPort}/v1`,
                timeouts: { connect_ms: 2000, first_byte_ms: 300, total_ms: 10000 },
            },
            { name: 'dead', type: 'openai', base_url: `http://127.0.0.1:${deadPort}/v1` },
            /* a provider of its own for rate-limit tests: a 429 cools its deployment down for Retry-After */
            { name: 'rlmock', type: 'openai', base_url: `http://127.0.0.1:${mockPort}/v1` },
        ],
        models: [
            { name: 'gpt-4o-mini', deployments: [{ provider: 'mock', model: 'mock-small' }] },
            { name: 'slow-model', deployments: [{ provider: 'slowmock', model: 'mock-small' }] },
            { name: 'dead-model', deployments: [{ provider: 'dead', model: 'mock-small' }] },
            { name: 'other-model', deployments: [{ provider: 'mock', model: 'mock-large' }] },
            { name: 'rl-model', deployments: [{ provider: 'rlmock', model: 'mock-small' }] },
        ],
        /* fault-injection tests fail the same deployment many times on purpose: keep its breaker closed */
        routing: { breaker_failures: 1000 },
        prices: { 'mock-small': { input: MOCK_PRICE.input, output: MOCK_PRICE.output } },
        tenants: [
            { id: 't1', allow_byok: true, keys: [{ name: 'k1', hash: hashes.t1 }] },
            { id: 't2', allow_byok: false, models: ['gpt-4o-mini'], keys: [{ name: 'k2', hash: hashes.t2 }] },
        ],
        limits: { max_body_bytes: 1048576, ...limits },
    };
}

export class Gateway extends Child {
    /**
     * Writes config to a temporary file and starts `leo-gateway --config FILE --workers N --listen
     * 127.0.0.1:PORT`; resolves once GET /ready answers 200.
     */
    static async start({ config, workers = 1, env = {}, readyTimeoutMs = 15000 } = {}) {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leo-it-'));
        const configPath = path.join(dir, 'gateway.json');
        fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
        const port = await freePort();
        const g = new Gateway('gateway', bin('leo-gateway'),
            ['--config', configPath, '--workers', String(workers), '--listen', `127.0.0.1:${port}`], env);
        g.dir = dir;
        g.configPath = configPath;
        g.config = config;
        g.port = port;
        g.workers = workers;
        g.url = `http://127.0.0.1:${port}`;
        g.expectedDeaths = new Set();
        try {
            await g.waitReady(readyTimeoutMs);
        } catch (e) {
            g.signal('SIGKILL');
            await g.exited;
            fs.rmSync(dir, { recursive: true, force: true });
            throw e;
        }
        return g;
    }

    /** Polls GET /ready every 50 ms until 200, bounded by timeoutMs; fails at once if the process exits. */
    async waitReady(timeoutMs = 15000) {
        const deadline = Date.now() + timeoutMs;
        let last = 'no answer';
        while (Date.now() < deadline) {
            if (!this.running) {
                throw new Error(`gateway exited (${JSON.stringify(this.exitInfo)}) before ready:\n` + this.stderr.tail(20));
            }
            try {
                const r = await request(this.port, { method: 'GET', path: '/ready', timeoutMs: 1000 });
                if (r.status === 200) return JSON.parse(r.text);
                last = `${r.status} ${r.text}`;
            } catch (e) {
                last = e.message;
            }
            await new Promise((r) => setTimeout(r, 50));
        }
        throw new Error(`gateway not ready within ${timeoutMs} ms (last: ${last}):\n` + this.stderr.tail(20));
    }

    /** Replaces the config file (the running processes see it on SIGHUP). text may be an object or raw text. */
    writeConfig(config) {
        const text = typeof config === 'string' ? config : JSON.stringify(config, null, 2);
        const tmp = this.configPath + '.tmp';
        fs.writeFileSync(tmp, text);
        fs.renameSync(tmp, this.configPath);
        if (typeof config !== 'string') this.config = config;
    }

    /** Access-log lines ("type":"access"). */
    accessLines(from = 0) {
        return this.stderr.json((j) => j.type === 'access', from);
    }

    /** Waits for the access-log line of a request id (the line is written when the request has ended). */
    accessLine(requestId, timeoutMs = 10000) {
        return this.stderr.waitForJson((j) => j.type === 'access' && j.request_id === requestId, {
            timeoutMs,
            what: `access log line for ${requestId}`,
        });
    }

    /** pids of the workers currently logging (the latest "listening on" line per role). */
    workerPids(from = 0) {
        const byRole = new Map();
        for (const j of this.stderr.json((x) => typeof x.role === 'string' && x.role.startsWith('worker-') &&
            typeof x.msg === 'string' && x.msg.startsWith('listening on'), from)) {
            byRole.set(j.role, j.pid);
        }
        return byRole;
    }

    async metrics() {
        const r = await request(this.port, { method: 'GET', path: '/metrics' });
        if (r.status !== 200) throw new Error(`GET /metrics answered ${r.status}`);
        return parseMetrics(r.text);
    }

    /**
     * Worker deaths the supervisor logged ("worker N (pid P) died from signal S" / "exited with status S"),
     * except those of pids a test killed on purpose (added to expectedDeaths).
     */
    unexpectedWorkerDeaths() {
        return this.stderr.json((j) => j.role === 'supervisor' && /^worker \d+ \(pid \d+\) (died|exited)/.test(j.msg || ''))
            .filter((j) => !this.expectedDeaths.has(Number(/\(pid (\d+)\)/.exec(j.msg)[1])))
            .map((j) => j.msg);
    }

    /** Stops the gateway (see Child.stop); also fails when a worker died that no test killed. */
    async stop(opts) {
        try {
            const info = await super.stop(opts);
            const deaths = this.unexpectedWorkerDeaths();
            if (deaths.length) {
                throw new Error(`gateway workers died during the test:\n${deaths.join('\n')}\n--- stderr tail ---\n` +
                    this.stderr.tail(40));
            }
            return info;
        } finally {
            fs.rmSync(this.dir, { recursive: true, force: true });
        }
    }
}

export const startGateway = (opts) => Gateway.start(opts);

/**
 * A mock and a gateway with the standard configuration (see gatewayConfig). mutate(config) may change the
 * config before the gateway starts. Returns { mock, gw, keys, hashes, config, stop() }.
 */
export async function startStack({ workers = 1, limits = {}, mutate, env = {}, drainTimeoutMs } = {}) {
    const mock = await startMock({ env });
    let gw;
    try {
        const [h1, h2, deadPort] = await Promise.all([hashKey(KEYS.t1, env), hashKey(KEYS.t2, env), freePort()]);
        const hashes = { t1: h1, t2: h2 };
        const config = gatewayConfig({ mockPort: mock.port, deadPort, hashes, limits, drainTimeoutMs });
        if (mutate) mutate(config);
        gw = await startGateway({ config, workers, env });
        return {
            mock,
            gw,
            keys: KEYS,
            hashes,
            config,
            /* Stops both (SIGTERM) and fails unless both exited with status 0 and without sanitizer reports. */
            async stop() {
                const results = await Promise.allSettled([gw.stop(), mock.stop()]);
                const failed = results.filter((r) => r.status === 'rejected');
                if (failed.length) throw failed[0].reason;
                const [g, m] = results.map((r) => r.value);
                if (g.code !== 0) {
                    throw new Error(`gateway exited with ${JSON.stringify(g)} after SIGTERM:\n` + gw.stderr.tail(20));
                }
                if (m.code !== 0) throw new Error(`mock exited with ${JSON.stringify(m)} after SIGTERM`);
                return [g, m];
            },
        };
    } catch (e) {
        await mock.stop().catch(() => {});
        throw e;
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * HTTP clients
 * ------------------------------------------------------------------------------------------------------------ */

/**
 * One request on a fresh connection (node:http, no agent, so "Connection: close"). body may be a string, a
 * Buffer or an object (sent as JSON). Resolves with { status, headers (lower-case names), rawHeaders, body
 * (Buffer), text, json() }.
 */
export function request(port, { method = 'GET', path: p = '/', headers = {}, body, timeoutMs = 15000 } = {}) {
    return new Promise((resolve, reject) => {
        let payload = body;
        const h = { ...headers };
        if (body !== undefined && !Buffer.isBuffer(body) && typeof body !== 'string') {
            payload = JSON.stringify(body);
            if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) h['Content-Type'] = 'application/json';
        }
        const req = http.request({ host: '127.0.0.1', port, method, path: p, headers: h, agent: false });
        const timer = setTimeout(() => {
            req.destroy(new Error(`${method} ${p}: no complete answer within ${timeoutMs} ms`));
        }, timeoutMs);
        req.on('error', (e) => {
            clearTimeout(timer);
            reject(e);
        });
        req.on('response', (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('error', (e) => {
                clearTimeout(timer);
                reject(e);
            });
            res.on('end', () => {
                clearTimeout(timer);
                const buf = Buffer.concat(chunks);
                const text = buf.toString('utf8');
                resolve({
                    status: res.statusCode,
                    headers: res.headers,
                    rawHeaders: res.rawHeaders,
                    body: buf,
                    text,
                    json: () => JSON.parse(text),
                });
            });
        });
        if (payload !== undefined) req.write(payload);
        req.end();
    });
}

/** POST /v1/chat/completions on a fresh connection; key (if given) goes as "Authorization: Bearer", headers as
 *  given. */
export function chat(port, body, { key, headers = {}, timeoutMs } = {}) {
    const h = { ...headers };
    if (key) h.Authorization = `Bearer ${key}`;
    return request(port, { method: 'POST', path: '/v1/chat/completions', headers: h, body, timeoutMs });
}

/** A chat request body for the configured model with one user message. */
export function chatBody(text, extra = {}) {
    return { model: 'gpt-4o-mini', messages: [{ role: 'user', content: text }], ...extra };
}

/** A unique marker to find a request again in the mock's records. */
let nonceCounter = 0;
export function nonce(tag = 'n') {
    nonceCounter += 1;
    return `${tag}${process.pid.toString(36)}x${Date.now().toString(36)}x${nonceCounter}`;
}

/**
 * Opens a streaming request and reads its SSE events as they arrive.
 * Resolves once the response headers arrived with:
 *   status, headers, events (array, growing), raw (text so far),
 *   nextEvent(timeoutMs) / waitEvents(n, timeoutMs): wait for the n-th event,
 *   end: a promise of { events, raw, error } settled when the response ended (error set when it was cut),
 *   destroy(): close the socket abruptly.
 */
export function openStream(port, body, { key, headers = {}, path: p = '/v1/chat/completions', timeoutMs = 15000 } = {}) {
    return new Promise((resolve, reject) => {
        const payload = typeof body === 'string' ? body : JSON.stringify(body);
        const h = { 'Content-Type': 'application/json', ...headers };
        if (key) h.Authorization = `Bearer ${key}`;
        const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: p, headers: h, agent: false });
        const timer = setTimeout(() => req.destroy(new Error(`stream: no headers within ${timeoutMs} ms`)), timeoutMs);
        req.on('error', (e) => {
            clearTimeout(timer);
            reject(e);
        });
        req.on('response', (res) => {
            clearTimeout(timer);
            const parser = new SSEParser();
            const s = {
                status: res.statusCode,
                headers: res.headers,
                events: parser.events,
                get raw() {
                    return parser.raw;
                },
                waitEvents(n, ms = 10000) {
                    return waitUntil(() => parser.events.length >= n || ended, ms, `${n} stream events`, parser)
                        .then(() => {
                            if (parser.events.length < n) {
                                throw new Error(`stream ended after ${parser.events.length} events, wanted ${n}`);
                            }
                            return parser.events[n - 1];
                        });
                },
                destroy() {
                    req.destroy();
                    res.destroy();
                },
                socket: req.socket,
            };
            let ended = false;
            s.end = new Promise((resolveEnd) => {
                const finish = (error) => {
                    if (ended) return;
                    ended = true;
                    parser.emitter();
                    resolveEnd({ events: parser.events, raw: parser.raw, error });
                };
                res.on('data', (c) => parser.feed(c));
                res.on('end', () => finish(null));
                res.on('aborted', () => finish(new Error('response aborted')));
                res.on('error', (e) => finish(e));
                res.on('close', () => finish(res.complete ? null : new Error('response closed before its end')));
            });
            resolve(s);
        });
        req.end(payload);
    });
}

function waitUntil(cond, ms, what, parser) {
    return new Promise((resolve, reject) => {
        if (cond()) {
            resolve();
            return;
        }
        const timer = setTimeout(() => {
            parser.listeners.delete(check);
            reject(new Error(`no ${what} within ${ms} ms`));
        }, ms);
        const check = () => {
            if (cond()) {
                clearTimeout(timer);
                parser.listeners.delete(check);
                resolve();
            }
        };
        parser.listeners.add(check);
    });
}

/**
 * Incremental text/event-stream parser. events: [{ event, data, comments: [text before it] }]; the data of a
 * multi-line event is joined with "\n". raw keeps every byte received as text.
 */
export class SSEParser {
    constructor() {
        this.raw = '';
        this.pending = '';
        this.events = [];
        this.comments = [];
        this.cur = { event: null, data: [], comments: [] };
        this.listeners = new Set();
        this.decoder = new TextDecoder();
    }

    emitter() {
        for (const l of [...this.listeners]) l();
    }

    feed(chunk) {
        const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
        this.raw += text;
        this.pending += text;
        let nl;
        while ((nl = this.pending.indexOf('\n')) >= 0) {
            let line = this.pending.slice(0, nl);
            this.pending = this.pending.slice(nl + 1);
            if (line.endsWith('\r')) line = line.slice(0, -1);
            this.line(line);
        }
        this.emitter();
    }

    line(line) {
        if (line === '') {
            if (this.cur.data.length || this.cur.event !== null) {
                this.events.push({ event: this.cur.event, data: this.cur.data.join('\n'), comments: this.cur.comments });
            } else if (this.cur.comments.length) {
                this.comments.push(...this.cur.comments);
                return; /* keep the comments for the next event */
            }
            this.cur = { event: null, data: [], comments: [] };
            return;
        }
        if (line.startsWith(':')) {
            this.cur.comments.push(line.slice(1).trimStart());
            return;
        }
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') this.cur.data.push(value);
        else if (field === 'event') this.cur.event = value;
    }
}

/** Parses a complete event-stream text; returns the events (see SSEParser). */
export function parseSSE(text) {
    const p = new SSEParser();
    p.feed(text);
    p.feed('\n');
    return p.events;
}

/**
 * A raw TCP connection with an HTTP/1.1 response reader: write bytes exactly as given, read responses in
 * order (interim 1xx responses included), observe the close.
 */
export class RawConn {
    static async open(port, { host = '127.0.0.1', timeoutMs = 5000 } = {}) {
        const socket = net.connect({ host, port });
        let timer;
        try {
            await Promise.race([
                once(socket, 'connect'),
                new Promise((_, reject) => {
                    timer = setTimeout(() => reject(new Error(`connect to ${port}: timeout`)), timeoutMs);
                }),
            ]);
        } finally {
            clearTimeout(timer);
        }
        return new RawConn(socket);
    }

    constructor(socket) {
        this.socket = socket;
        this.buf = Buffer.alloc(0);
        this.isClosed = false;
        this.error = null;
        this.listeners = new Set();
        this.closedAt = null;
        socket.on('data', (d) => {
            this.buf = Buffer.concat([this.buf, d]);
            this.notify();
        });
        socket.on('error', (e) => {
            this.error = e;
            this.notify();
        });
        socket.on('close', () => {
            this.isClosed = true;
            this.closedAt = Date.now();
            this.notify();
        });
        /* the peer closing its side must not make node end ours with queued writes in flight */
        socket.on('end', () => {});
    }

    notify() {
        for (const l of [...this.listeners]) l();
    }

    /** Writes bytes; resolves when they are handed to the kernel. Write errors (peer gone) resolve false. */
    write(data) {
        return new Promise((resolve) => {
            if (this.socket.destroyed) {
                resolve(false);
                return;
            }
            this.socket.write(data, (err) => resolve(!err));
        });
    }

    /** Waits until cond() is true (checked on every data/close event), bounded by timeoutMs. */
    wait(cond, timeoutMs, what) {
        return new Promise((resolve, reject) => {
            const check = () => {
                let v;
                try {
                    v = cond();
                } catch (e) {
                    cleanup();
                    reject(e);
                    return;
                }
                if (v) {
                    cleanup();
                    resolve(v);
                }
            };
            const timer = setTimeout(() => {
                cleanup();
                reject(new Error(`raw connection: no ${what} within ${timeoutMs} ms (received ${this.buf.length} ` +
                    `unread bytes: ${JSON.stringify(this.buf.subarray(0, 300).toString('latin1'))})`));
            }, timeoutMs);
            const cleanup = () => {
                clearTimeout(timer);
                this.listeners.delete(check);
            };
            this.listeners.add(check);
            check();
        });
    }

    /**
     * Reads the next response: { status, reason, version, headers: [[name, value]...], header(name), body
     * (Buffer, de-chunked), raw (Buffer) }. A response without a length is read until the close. Rejects when
     * the connection closes before a complete response.
     */
    readResponse({ timeoutMs = 10000 } = {}) {
        return this.wait(() => {
            const r = parseResponse(this.buf, this.isClosed);
            if (r) {
                this.buf = this.buf.subarray(r.consumed);
                return r.response;
            }
            if (this.isClosed) {
                throw new Error('connection closed before a complete response' + (this.buf.length
                    ? ` (partial: ${JSON.stringify(this.buf.subarray(0, 300).toString('latin1'))})` : '') +
                    (this.error ? ` [${this.error.code}]` : ''));
            }
            return null;
        }, timeoutMs, 'complete response');
    }

    /** Resolves once the peer has closed the connection (with the time it happened). */
    waitClosed(timeoutMs = 10000) {
        return this.wait(() => this.isClosed && this.closedAt, timeoutMs, 'close');
    }

    destroy() {
        this.socket.destroy();
    }
}

/** Builds a raw HTTP/1.1 request. headers: [[name, value]...] or an object; Content-Length added for bodies
 *  unless a Content-Length or Transfer-Encoding header is given. */
export function rawRequest(method, target, headers = [], body) {
    const list = Array.isArray(headers) ? [...headers] : Object.entries(headers);
    const has = (n) => list.some(([k]) => k.toLowerCase() === n);
    if (!has('host')) list.unshift(['Host', '127.0.0.1']);
    const b = body === undefined ? null : Buffer.isBuffer(body) ? body : Buffer.from(body);
    if (b && !has('content-length') && !has('transfer-encoding')) list.push(['Content-Length', String(b.length)]);
    const head = `${method} ${target} HTTP/1.1\r\n` + list.map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n';
    return b ? Buffer.concat([Buffer.from(head, 'latin1'), b]) : Buffer.from(head, 'latin1');
}

function parseResponse(buf, closed) {
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return null;
    const head = buf.subarray(0, end).toString('latin1');
    const lines = head.split('\r\n');
    const m = /^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$/.exec(lines[0]);
    if (!m) throw new Error(`not an HTTP response: ${JSON.stringify(lines[0])}`);
    const headers = lines.slice(1).map((l) => {
        const c = l.indexOf(':');
        return [l.slice(0, c).trim(), l.slice(c + 1).trim()];
    });
    const status = Number(m[2]);
    const get = (n) => {
        const h = headers.find(([k]) => k.toLowerCase() === n.toLowerCase());
        return h ? h[1] : undefined;
    };
    const response = {
        version: m[1],
        status,
        reason: m[3] || '',
        headers,
        header: get,
        headerAll: (n) => headers.filter(([k]) => k.toLowerCase() === n.toLowerCase()).map(([, v]) => v),
    };
    let pos = end + 4;
    let body;
    if ((status >= 100 && status < 200) || status === 204 || status === 304) {
        body = Buffer.alloc(0);
    } else if ((get('transfer-encoding') || '').toLowerCase().includes('chunked')) {
        const parts = [];
        for (;;) {
            const le = buf.indexOf('\r\n', pos);
            if (le < 0) return null;
            const size = parseInt(buf.subarray(pos, le).toString('latin1').split(';')[0], 16);
            if (Number.isNaN(size)) throw new Error('bad chunk size line');
            pos = le + 2;
            if (size === 0) {
                /* trailers, then an empty line */
                for (;;) {
                    const te = buf.indexOf('\r\n', pos);
                    if (te < 0) return null;
                    const empty = te === pos;
                    pos = te + 2;
                    if (empty) break;
                }
                break;
            }
            if (buf.length < pos + size + 2) return null;
            parts.push(buf.subarray(pos, pos + size));
            pos += size + 2;
        }
        body = Buffer.concat(parts);
    } else if (get('content-length') !== undefined) {
        const n = Number(get('content-length'));
        if (buf.length < pos + n) return null;
        body = buf.subarray(pos, pos + n);
        pos += n;
    } else {
        if (!closed) return null;
        body = buf.subarray(pos);
        pos = buf.length;
    }
    response.body = Buffer.from(body);
    response.text = response.body.toString('utf8');
    response.raw = Buffer.from(buf.subarray(0, pos));
    return { response, consumed: pos };
}

/* ------------------------------------------------------------------------------------------------------------
 * Prometheus text format
 * ------------------------------------------------------------------------------------------------------------ */

/** Parses exposition text into [{ name, labels: {k: v}, value }] (comments skipped). */
export function parseMetrics(text) {
    const out = [];
    for (const line of text.split('\n')) {
        if (!line || line.startsWith('#')) continue;
        const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$/.exec(line);
        if (!m) throw new Error(`unparsable metrics line: ${JSON.stringify(line)}`);
        const labels = {};
        if (m[3]) {
            const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/g;
            let lm;
            while ((lm = re.exec(m[3])) !== null) {
                labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
            }
        }
        const v = m[4] === '+Inf' ? Infinity : m[4] === '-Inf' ? -Infinity : Number(m[4]);
        out.push({ name: m[1], labels, value: v });
    }
    return out;
}

/** Sum of the series of `name` whose labels include every given label (value compared exactly). */
export function metricSum(series, name, labels = {}) {
    let sum = 0;
    for (const s of series) {
        if (s.name !== name) continue;
        if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) sum += s.value;
    }
    return sum;
}
