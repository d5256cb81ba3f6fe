/*
 * busy_poll.test.mjs — the workers' opt-in busy polling ("busy_poll_us", gateway/worker.h): after I/O a worker
 * polls without blocking for busy_poll_us, then blocks as before.
 *
 * What is checked, against the real gateway and the mock provider, through /metrics and /proc:
 *   - with busy_poll_us 2000, proxied requests open busy-poll windows and their time is counted, each window
 *     lasting at least busy_poll_us;
 *   - an idle worker uses no CPU once its last window has closed (a worker that kept spinning would burn about
 *     a second of CPU per second);
 *   - with the default (0) no window ever opens;
 *   - a SIGHUP reload turns it on and off without a restart;
 *   - SIGTERM still drains and exits 0 (every stack.stop() asserts it).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

import { chat, chatBody, metricSum, nonce, startStack } from './lib/harness.mjs';

const T = { timeout: 90000 };
const BUSY_US = 2000;
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The fields of /proc/<pid>/stat after the command name: [0] is the state, [1] the parent pid, [11] utime and
 *  [12] stime (clock ticks). null when the process is gone. */
function procStat(pid) {
    let text;
    try {
        text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
        return null;
    }
    return text.slice(text.lastIndexOf(')') + 2).trim().split(/\s+/);
}

/** The pids of the supervisor's children (its workers). */
function childrenOf(ppid) {
    const out = [];
    for (const name of fs.readdirSync('/proc')) {
        if (!/^\d+$/.test(name)) continue;
        const st = procStat(Number(name));
        if (st && Number(st[1]) === ppid) out.push(Number(name));
    }
    return out;
}

/** CPU time (user + system) a process has used, in milliseconds. */
function cpuMs(pid) {
    const st = procStat(pid);
    assert.ok(st, `process ${pid} is gone`);
    return ((Number(st[11]) + Number(st[12])) * 1000) / CLK_TCK;
}

/** The one worker of a one-worker gateway, found as the supervisor's only child. */
function onlyWorker(gw) {
    const kids = childrenOf(gw.pid);
    assert.equal(kids.length, 1, `the supervisor (pid ${gw.pid}) has one child, found ${JSON.stringify(kids)}`);
    return kids[0];
}

/** n proxied chat requests, one after the other, each checked. */
async function chats(stack, n, tag) {
    for (let i = 0; i < n; i++) {
        const text = `${tag} ${i} ${nonce(tag)}`;
        const r = await chat(stack.gw.port, chatBody(text), { key: stack.keys.t1 });
        assert.equal(r.status, 200, `request ${i}: ${r.status} ${r.text}`);
        assert.equal(r.json().choices[0].message.content, `mock reply to: ${text}`);
    }
}

/* The busy-poll metrics once pred holds of them, scraping until it does (a window's time is published when it
 * closes or by the worker's 1 s tick, so a window the requests left open shows a moment later). */
async function busyMetricsWhen(gw, pred, what) {
    const deadline = Date.now() + 3000;
    for (;;) {
        const m = await busyMetrics(gw);
        if (pred(m)) return m;
        if (Date.now() > deadline) assert.fail(`${what}: ${JSON.stringify(m)}`);
        await sleep(50);
    }
}

async function busyMetrics(gw) {
    const m = await gw.metrics();
    const has = (name) => m.some((s) => s.name === name);
    assert.ok(has('leo_busy_poll_windows_total'), 'leo_busy_poll_windows_total is published');
    assert.ok(has('leo_busy_poll_seconds_total'), 'leo_busy_poll_seconds_total is published');
    return {
        windows: metricSum(m, 'leo_busy_poll_windows_total'),
        seconds: metricSum(m, 'leo_busy_poll_seconds_total'),
    };
}

/**
 * Waits until the worker's CPU time grows by less than 100 ms over one second without traffic (up to `tries`
 * seconds); returns the growth of the last interval. A worker spinning in its loop never gets there.
 */
async function idleCpuGrowth(pid, tries = 8) {
    let grew = Infinity;
    for (let i = 0; i < tries && grew >= 100; i++) {
        const before = cpuMs(pid);
        await sleep(1000);
        grew = cpuMs(pid) - before;
    }
    return grew;
}

describe('busy polling', () => {
    it('busy_poll_us 2000: requests open busy-poll windows, and an idle worker spends no CPU', T, async () => {
        const started = Date.now();
        const stack = await startStack({ workers: 1, mutate: (c) => { c.busy_poll_us = BUSY_US; } });
        try {
            const { gw } = stack;
            const worker = onlyWorker(gw);
            await chats(stack, 20, 'busy');
            const m = await busyMetricsWhen(gw, (x) => x.windows > 0 && x.seconds > 0, 'after 20 requests');
            assert.ok(m.windows > 0, `leo_busy_poll_windows_total is ${m.windows} after 20 requests`);
            assert.ok(m.seconds > 0, `leo_busy_poll_seconds_total is ${m.seconds} after 20 requests`);
            /* every closed window lasted at least busy_poll_us (the scrape's own window may still be open) */
            assert.ok(m.seconds >= (m.windows - 1) * (BUSY_US / 1e6),
                `${m.seconds} s over ${m.windows} windows of at least ${BUSY_US} us each`);
            assert.ok(m.seconds <= (Date.now() - started) / 1000,
                `${m.seconds} s of busy polling within ${(Date.now() - started) / 1000} s of the test`);

            const grew = await idleCpuGrowth(worker);
            assert.ok(grew < 100, `the idle worker (pid ${worker}) used ${grew} ms of CPU in one second`);

            /* the windows stopped: two scrapes a second apart differ by the first scrape's own windows only (its
             * accept, read, write and close each open one when the worker takes longer than busy_poll_us between
             * them, as a sanitizer build can), and by well under a second of polling */
            const a = await busyMetrics(gw);
            await sleep(1000);
            const b = await busyMetrics(gw);
            assert.ok(b.windows - a.windows <= 6, `${b.windows - a.windows} windows opened by one idle scrape`);
            assert.ok(b.seconds - a.seconds < 0.1, `${b.seconds - a.seconds} s of busy polling in an idle second`);
        } finally {
            await stack.stop();
        }
    });

    it('the default (0) never busy-polls', T, async () => {
        const stack = await startStack({ workers: 1 });
        try {
            assert.equal(stack.config.busy_poll_us, undefined, 'the config leaves busy_poll_us out');
            await chats(stack, 20, 'default');
            const m = await busyMetrics(stack.gw);
            assert.equal(m.windows, 0, 'leo_busy_poll_windows_total');
            assert.equal(m.seconds, 0, 'leo_busy_poll_seconds_total');
        } finally {
            await stack.stop();
        }
    });

    it('a SIGHUP reload turns busy polling on and off', T, async () => {
        const stack = await startStack({ workers: 1 });
        try {
            const { gw } = stack;
            const worker = onlyWorker(gw);
            const reload = async (busyPollUs) => {
                const cfg = structuredClone(gw.config);
                if (busyPollUs === undefined) delete cfg.busy_poll_us;
                else cfg.busy_poll_us = busyPollUs;
                gw.writeConfig(cfg);
                const from = gw.stderr.mark();
                gw.signal('SIGHUP');
                await gw.stderr.waitForJson((j) => j.role === 'worker-0' && /^config reloaded from/.test(j.msg || ''),
                    { from, what: '"config reloaded" from worker-0' });
            };

            await chats(stack, 5, 'off');
            assert.equal((await busyMetrics(gw)).windows, 0, 'no window before the reload');

            await reload(BUSY_US);
            await chats(stack, 10, 'on');
            const on = await busyMetricsWhen(gw, (m) => m.windows > 0 && m.seconds > 0, 'after the reload turned it on');
            assert.ok(on.windows > 0, `leo_busy_poll_windows_total is ${on.windows} after the reload turned it on`);
            assert.ok(on.seconds > 0, `leo_busy_poll_seconds_total is ${on.seconds} after the reload turned it on`);
            assert.equal(worker, onlyWorker(gw), 'the same worker process (no restart)');

            await reload(undefined);
            const off0 = await busyMetrics(gw);
            await chats(stack, 10, 'off again');
            const off1 = await busyMetrics(gw);
            assert.equal(off1.windows, off0.windows, 'no window opens after the reload turned it off');
            const grew = await idleCpuGrowth(worker);
            assert.ok(grew < 100, `the idle worker (pid ${worker}) used ${grew} ms of CPU in one second`);
        } finally {
            await stack.stop();
        }
    });
});
