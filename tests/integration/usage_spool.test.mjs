/*
 * usage_spool.test.mjs — usage events survive a gateway restart during a Redis outage (docs/usage.md, "When
 * Redis is down or slow"): with usage.spool_dir, a worker stopping while Redis is unreachable writes its queued
 * events to <spool_dir>/usage-<worker>.jsonl, and the next gateway on that directory sends them once Redis is up.
 *
 * Real processes: redis-server (stopped and started again on the same port), the mock provider and leo-gateway
 * (SIGTERMed, then a second one on the same configuration). Every wait is for an observable state.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { chat, chatBody, nonce, startGateway, startStack } from './lib/harness.mjs';
import { Redis } from './lib/redis.mjs';

const T = { timeout: 60000 };

/** The request ids of the stream's entries, in stream order. */
async function streamIds(redis) {
    const entries = await redis.command('XRANGE', 'leo:usage', '-', '+');
    if (entries instanceof Error) throw entries;
    return entries.map(([, fields]) => {
        assert.equal(fields[0], 'e');
        return JSON.parse(fields[1]).request_id;
    });
}

describe('usage spool', () => {
    it('events queued while Redis is down are spooled at SIGTERM and replayed by the next gateway', T, async () => {
        const spoolDir = fs.mkdtempSync(path.join(os.tmpdir(), 'leo-it-spool-'));
        const spool = path.join(spoolDir, 'usage-0.jsonl');
        const redis = await Redis.start();
        let stack, gw2, stopped = false;
        try {
            stack = await startStack({
                mutate: (c) => {
                    c.redis = { url: redis.url };
                    c.usage = { spool_dir: spoolDir };
                },
            });
            const { gw, keys } = stack;
            await gw.stderr.waitForJson((j) => /^redis: connected/.test(j.msg || ''), { what: 'redis connected' });
            await redis.stop();

            const ids = [];
            for (let i = 0; i < 3; i++) {
                const text = `spool ${i} ${nonce('spool')}`;
                const r = await chat(gw.port, chatBody(text), { key: keys.t1 });
                assert.equal(r.status, 200, `request ${i}: ${r.status} ${r.text}`);
                ids.push(r.headers['x-leo-request-id']);
                await gw.accessLine(ids[i]); /* the event is emitted when the request ends */
            }
            assert.equal(new Set(ids).size, 3);

            const info = await gw.stop();
            stopped = true;
            assert.equal(info.code, 0, gw.stderr.tail(20));
            const lines = fs.readFileSync(spool, 'utf8').split('\n');
            assert.equal(lines.pop(), '', 'the file ends with a newline');
            assert.deepEqual(lines.map((l) => JSON.parse(l).request_id), ids);
            assert.equal(fs.statSync(spool).mode & 0o777, 0o600);
            const spooled = gw.stderr.json((j) => /^usage: 3 events spooled to /.test(j.msg || ''));
            assert.equal(spooled.length, 1, gw.stderr.tail(20));
            assert.equal(spooled[0].level, 'info');
            assert.deepEqual(gw.stderr.json((j) => /events dropped/.test(j.msg || '')).map((j) => j.msg), []);

            await redis.start();
            gw2 = await startGateway({ config: stack.config, workers: 1 });
            /* the replayed events go out once the new worker's connection is up */
            const deadline = Date.now() + 15000;
            let got = await streamIds(redis);
            while (got.length < 3 && Date.now() < deadline) {
                await new Promise((r) => setTimeout(r, 50));
                got = await streamIds(redis);
            }
            assert.deepEqual(got, ids);
            assert.equal(fs.existsSync(spool), false);
            assert.equal(fs.existsSync(`${spool}.replay`), false);
            assert.equal(gw2.stderr.json((j) => /^usage: 3 events replayed from the spool /.test(j.msg || '')).length, 1,
                gw2.stderr.tail(20));

            const info2 = await gw2.stop();
            gw2 = null;
            assert.equal(info2.code, 0);
            assert.equal(fs.existsSync(spool), false, 'nothing to spool with Redis up');
        } finally {
            if (stack && !stopped) await stack.gw.stop().catch(() => {});
            if (gw2) await gw2.stop().catch(() => {});
            if (stack) await stack.mock.stop().catch(() => {});
            await redis.kill();
            fs.rmSync(spoolDir, { recursive: true, force: true });
        }
    });
});
