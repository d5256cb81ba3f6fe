/*
 * redis.mjs — a private redis-server for integration tests, and a minimal RESP client to look inside it.
 *
 *   const redis = await Redis.start();   // redis-server on a free port (or { port }), persistence off
 *   await redis.command('GET', 'k');     // one command on a fresh connection; redisCommand(port, args) alike
 *   await redis.kill();                  // SIGKILL (a crash as clients see it); start() again on the same port
 *   await redis.stop();                  // SIGTERM, resolves with { code, signal }
 *
 * The server is a Child of lib/harness.mjs: killed when the test process exits before stop() or kill(). It is
 * ready once it logs "Ready to accept connections" (written after its listening socket is open).
 */
import net from 'node:net';

import { freePort, spawnChild, startStack } from './harness.mjs';

const REDIS_BIN = process.env.LEO_REDIS_SERVER || '/usr/bin/redis-server';

/** Parses one RESP reply at buf[pos]; returns { value, end } or null when incomplete. Errors become Error. */
function parseResp(buf, pos = 0) {
    const le = buf.indexOf('\r\n', pos);
    if (le < 0) return null;
    const type = String.fromCharCode(buf[pos]);
    const line = buf.subarray(pos + 1, le).toString('utf8');
    const next = le + 2;
    switch (type) {
    case '+':
        return { value: line, end: next };
    case '-':
        return { value: new Error(line), end: next };
    case ':':
        return { value: Number(line), end: next };
    case '$': {
        const n = Number(line);
        if (n < 0) return { value: null, end: next };
        if (buf.length < next + n + 2) return null;
        return { value: buf.subarray(next, next + n).toString('utf8'), end: next + n + 2 };
    }
    case '*': {
        const n = Number(line);
        if (n < 0) return { value: null, end: next };
        const out = [];
        let p = next;
        for (let i = 0; i < n; i++) {
            const r = parseResp(buf, p);
            if (!r) return null;
            out.push(r.value);
            p = r.end;
        }
        return { value: out, end: p };
    }
    default:
        throw new Error(`not a RESP reply: ${JSON.stringify(buf.subarray(pos, pos + 40).toString('latin1'))}`);
    }
}

/** Sends one command on a fresh connection and resolves with its reply (an Error value for an error reply). */
export function redisCommand(port, args, timeoutMs = 2000) {
    return new Promise((resolve, reject) => {
        const sock = net.connect({ host: '127.0.0.1', port });
        let buf = Buffer.alloc(0);
        const timer = setTimeout(() => {
            sock.destroy();
            reject(new Error(`redis ${args[0]}: no reply within ${timeoutMs} ms`));
        }, timeoutMs);
        sock.on('error', (e) => {
            clearTimeout(timer);
            reject(e);
        });
        sock.on('connect', () => {
            const parts = args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`);
            sock.write(`*${args.length}\r\n${parts.join('')}`);
        });
        sock.on('data', (d) => {
            buf = Buffer.concat([buf, d]);
            let r;
            try {
                r = parseResp(buf);
            } catch (e) {
                clearTimeout(timer);
                sock.destroy();
                reject(e);
                return;
            }
            if (r) {
                clearTimeout(timer);
                sock.destroy();
                resolve(r.value);
            }
        });
    });
}

export class Redis {
    /** dir: the server's working directory (--dir), where it would write a dump; the default is the cwd. */
    constructor(port, { dir } = {}) {
        this.port = port;
        this.dir = dir;
        this.child = null;
    }

    /** Spawns redis-server on this.port and resolves once it is ready; rejects (the server killed) when it
     *  exits first or is not ready within timeoutMs. */
    async start(timeoutMs = 10000) {
        const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
        if (this.dir) args.push('--dir', this.dir);
        const c = spawnChild(REDIS_BIN, args);
        this.child = c;
        this.exited = c.exited;
        try {
            await c.stdout.waitFor((l) => /Ready to accept connections/.test(l.text),
                { timeoutMs, what: `redis-server ready on port ${this.port}` });
        } catch (e) {
            this.child = null;
            c.signal('SIGKILL');
            await c.exited;
            throw new Error(`${e.message}\n${c.stdout.tail(10)}`);
        }
    }

    /** SIGKILL, awaiting the exit. */
    async kill() {
        if (!this.child) return;
        const c = this.child;
        this.child = null;
        c.signal('SIGKILL');
        await c.exited;
    }

    /** SIGTERM, awaiting the exit (SIGKILL and a rejection after timeoutMs); resolves with { code, signal }. */
    async stop(timeoutMs = 15000) {
        if (!this.child) return null;
        const c = this.child;
        this.child = null;
        return c.stop({ timeoutMs, sanitizers: false });
    }

    command(...args) {
        return redisCommand(this.port, args);
    }

    /** A private server, started: on port, or on a free port. */
    static async start({ port, dir } = {}) {
        const r = new Redis(port ?? (await freePort()), { dir });
        await r.start();
        return r;
    }

    /** Its URL for the gateway's config. */
    get url() {
        return `redis://127.0.0.1:${this.port}`;
    }
}

/**
 * A private redis-server and a gateway stack (lib/harness.mjs startStack) using it, with the exact cache's TTL at
 * 600 s: the set-up of the cache tests. mutate(config) may change the rest of the configuration. Resolves with
 * { redis, stack }; stopRedisStack stops both.
 */
export async function startRedisStack({ workers = 2, mutate } = {}) {
    const redis = await Redis.start();
    try {
        const stack = await startStack({
            workers,
            mutate: (c) => {
                c.redis = { url: redis.url };
                c.cache = { ttl_s: 600 };
                if (mutate) mutate(c);
            },
        });
        return { redis, stack };
    } catch (e) {
        await redis.kill();
        throw e;
    }
}

/** Stops what startRedisStack started (either may be undefined: not started). */
export async function stopRedisStack({ redis, stack }) {
    if (stack) await stack.stop();
    if (redis) await redis.kill();
}
