/*
 * postgres.mjs — a private PostgreSQL server for one test file.
 *
 * startPostgres() creates a cluster in a fresh temporary directory (initdb), starts it with pg_ctl on a free
 * TCP port of 127.0.0.1 and on a unix socket inside that directory, and returns a handle with the connection
 * string for the daemon, a psql-based query helper and stop(). The machines run the tests as root and
 * PostgreSQL refuses to run as root, so initdb, pg_ctl and the server run as the `postgres` system user
 * (runuser), which owns the directory. Authentication is `trust` and only local connections are accepted.
 *
 * The cluster is built for speed, not durability (fsync off, no synchronous commit): it lives for one test
 * file and is deleted by stop(). If the test process exits without stop(), the server is sent SIGQUIT
 * (immediate shutdown) and the directory removed from the exit handler.
 *
 * PostgreSQL's server binaries are looked up in $LEO_PG_BIN, else the newest /usr/lib/postgresql/<N>/bin.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { freePort } from './harness.mjs';

/** Directory of initdb, pg_ctl, postgres and psql. */
export function pgBinDir() {
    if (process.env.LEO_PG_BIN) return process.env.LEO_PG_BIN;
    const root = '/usr/lib/postgresql';
    let versions = [];
    try {
        versions = fs.readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
    } catch {
        /* no PostgreSQL installed */
    }
    for (const v of versions) {
        const dir = path.join(root, v, 'bin');
        if (fs.existsSync(path.join(dir, 'initdb'))) return dir;
    }
    throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql (install the "postgresql" ' +
        'package, e.g. with deploy/install-deps.sh) or set LEO_PG_BIN');
}

/** Runs a command, resolves with {stdout, stderr}; rejects with both on a non-zero exit or a timeout. */
function run(file, args, { timeoutMs = 30000, input, env } = {}) {
    return new Promise((resolve, reject) => {
        const child = execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 << 20, env: env || process.env },
            (err, stdout, stderr) => {
                if (err) {
                    err.message = `${path.basename(file)} ${args.join(' ')}: ${err.message}\n${stderr}`;
                    err.stdout = stdout;
                    err.stderr = stderr;
                    reject(err);
                    return;
                }
                resolve({ stdout, stderr });
            });
        if (input !== undefined) child.stdin.end(input);
    });
}

const asPostgres = (file, args, opts) => run('runuser', ['-u', 'postgres', '--', file, ...args], opts);

/* Clusters not stopped yet, cleaned up if the process exits first. */
const live = new Set();
process.on('exit', () => {
    for (const pg of live) pg.killNow();
});

export class Postgres {
    constructor(dir, port) {
        this.dir = dir;
        this.dataDir = path.join(dir, 'data');
        this.socketDir = dir;
        this.port = port;
        this.bin = pgBinDir();
        this.database = 'postgres';
        this.stopped = false;
    }

    /** libpq key/value connection string over TCP, for DATABASE_URL. */
    get conninfo() {
        return `host=127.0.0.1 port=${this.port} user=postgres dbname=${this.database} connect_timeout=5`;
    }

    /** The same as a URI. */
    get url() {
        return `postgresql://postgres@127.0.0.1:${this.port}/${this.database}`;
    }

    /**
     * Runs SQL through psql as the superuser (over the unix socket) and returns psql's unaligned output.
     * Several statements may be given; the first error rejects (ON_ERROR_STOP).
     */
    async psql(sql, { database = this.database, timeoutMs = 15000 } = {}) {
        const { stdout } = await run(path.join(this.bin, 'psql'), [
            '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
            '-h', this.socketDir, '-p', String(this.port), '-U', 'postgres', '-d', database,
        ], { timeoutMs, input: sql });
        return stdout;
    }

    /** Runs one SELECT (no trailing semicolon) and returns its rows as objects (through json_agg). */
    async query(select, opts) {
        const out = await this.psql(`SELECT coalesce(json_agg(q), '[]'::json) FROM (${select}) q;\n`, opts);
        return JSON.parse(out);
    }

    /** Stops the server but keeps the cluster (to test a database outage); startServer() brings it back. */
    async stopServer() {
        await asPostgres(path.join(this.bin, 'pg_ctl'), ['-D', this.dataDir, '-m', 'fast', '-w', '-t', '20', 'stop'],
            { timeoutMs: 30000 });
    }

    /** Starts the server of this cluster on its port; resolves once it accepts connections. */
    async startServer({ timeoutMs = 30000 } = {}) {
        await asPostgres(path.join(this.bin, 'pg_ctl'), ['-D', this.dataDir, '-l', path.join(this.dir, 'server.log'),
            '-o', `-p ${this.port}`, '-w', '-t', String(Math.ceil(timeoutMs / 1000)), 'start'],
        { timeoutMs: timeoutMs + 5000 });
    }

    /** Fast shutdown (when running) and removal of the directory. */
    async stop() {
        if (this.stopped) return;
        this.stopped = true;
        live.delete(this);
        try {
            if (fs.existsSync(path.join(this.dataDir, 'postmaster.pid'))) await this.stopServer();
        } finally {
            fs.rmSync(this.dir, { recursive: true, force: true });
        }
    }

    /* Synchronous last resort from the exit handler: SIGQUIT is PostgreSQL's immediate shutdown. */
    killNow() {
        try {
            const pid = Number(fs.readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
            if (pid > 0) process.kill(pid, 'SIGQUIT');
        } catch {
            /* not running */
        }
        try {
            fs.rmSync(this.dir, { recursive: true, force: true });
        } catch {
            /* best effort */
        }
    }
}

/**
 * Creates and starts a cluster; resolves with a Postgres handle once it accepts connections. A port taken by
 * someone else between the choice and the start is retried with another port (three attempts).
 */
export async function startPostgres({ timeoutMs = 30000 } = {}) {
    const bin = pgBinDir();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leo-pg-'));
    fs.chownSync(dir, ...postgresIds());
    const dataDir = path.join(dir, 'data');
    try {
        await asPostgres(path.join(bin, 'initdb'), ['-D', dataDir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8',
            '--locale=C', '--no-sync', '--no-instructions'], { timeoutMs });
        const conf = [
            "listen_addresses = '127.0.0.1'",
            `unix_socket_directories = '${dir}'`,
            'fsync = off',
            'synchronous_commit = off',
            'full_page_writes = off',
            'max_connections = 50',
            'shared_buffers = 16MB',
            "log_min_messages = 'warning'",
        ].join('\n');
        fs.appendFileSync(path.join(dataDir, 'postgresql.conf'), `\n${conf}\n`);
        let lastErr;
        for (let attempt = 0; attempt < 3; attempt++) {
            const port = await freePort();
            const pg = new Postgres(dir, port);
            live.add(pg);
            try {
                await pg.startServer({ timeoutMs });
                return pg;
            } catch (e) {
                live.delete(pg);
                lastErr = e;
                let log = '';
                try {
                    log = fs.readFileSync(path.join(dir, 'server.log'), 'utf8');
                } catch {
                    /* no log */
                }
                if (!/could not bind|address already in use/i.test(log)) break;
            }
        }
        throw lastErr;
    } catch (e) {
        fs.rmSync(dir, { recursive: true, force: true });
        throw e;
    }
}

/* uid and gid of the postgres system user. */
function postgresIds() {
    const line = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'));
    if (!line) throw new Error('there is no "postgres" system user (install the "postgresql" package)');
    const f = line.split(':');
    return [Number(f[2]), Number(f[3])];
}
