/*
 * redis.mjs — a private redis-server for integration tests, and a minimal RESP client to look inside it.
 *
 *   const redis = await Redis.start();   // redis-server on a free port, persistence off
 *   await redis.command('GET', 'k');     // one command on a fresh connection
 *   await redis.kill();                  // SIGKILL (a crash as clients see it); start() again on the same port
 *
 * Servers left running when the test process exits are killed.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';

import { freePort } from './harness.mjs';

const REDIS_BIN = process.env.LEO_REDIS_SERVER || '/usr/bin/redis-server';

const redisProcs = new Set();
process.on('exit', () => {
    for (const p of redisProcs) {
        try {
            process.kill(p.pid, 'SIGKILL');
        } catch {
            /* already gone */
        }
    }
});

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
    constructor(port) {
        this.port = port;
        this.proc = null;
    }

    /** Spawns redis-server on this.port and resolves once it answers PING with +PONG. */
    async start(timeoutMs = 5000) {
        const proc = spawn(REDIS_BIN, ['--port', String(this.port), '--save', '', '--appendonly', 'no',
            '--bind', '127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'] });
        proc.stdout.resume();
        proc.stderr.resume();
        redisProcs.add(proc);
        this.exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
            redisProcs.delete(proc);
            resolve({ code, signal });
        }));
        this.proc = proc;
        const deadline = Date.now() + timeoutMs;
        let last = 'no answer';
        while (Date.now() < deadline) {
            if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`redis-server exited: ${last}`);
            try {
                if ((await redisCommand(this.port, ['PING'], 500)) === 'PONG') return;
            } catch (e) {
                last = e.message;
            }
            await new Promise((r) => setTimeout(r, 20));
        }
        throw new Error(`redis-server on ${this.port} did not answer PING within ${timeoutMs} ms (${last})`);
    }

    /** SIGKILL, awaiting the exit. */
    async kill() {
        if (!this.proc) return;
        const p = this.proc;
        this.proc = null;
        if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
        await this.exited;
    }

    command(...args) {
        return redisCommand(this.port, args);
    }

    /** A private server on a free port, started. */
    static async start() {
        const r = new Redis(await freePort());
        await r.start();
        return r;
    }

    /** Its URL for the gateway's config. */
    get url() {
        return `redis://127.0.0.1:${this.port}`;
    }
}

