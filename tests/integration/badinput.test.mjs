/*
 * badinput.test.mjs — hostile and broken clients. Each case sends something bad, checks the gateway's answer
 * (or its closing the connection), then checks that a normal request is still served.
 *
 * Limits of the gateway under test: max_body_bytes 1 MiB, header_timeout_ms 500, body_timeout_ms 500,
 * idle_timeout_ms 1500.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

import {
    Mock,
    RawConn,
    chat,
    chatBody,
    metricSum,
    nonce,
    openStream,
    rawRequest,
    request,
    startStack,
} from './lib/harness.mjs';

const T = { timeout: 20000 };

let stack, gw, mock, mock2, port, KEY;

before(async () => {
    /* a second mock serves only the client-abort case, so its connections are that case's alone */
    mock2 = await Mock.start();
    stack = await startStack({
        limits: { max_body_bytes: 1048576, header_timeout_ms: 500, body_timeout_ms: 500, idle_timeout_ms: 1500 },
        mutate: (cfg) => {
            cfg.providers.push({ name: 'mock2', type: 'openai', base_url: `http://127.0.0.1:${mock2.port}/v1` });
            cfg.models.push({ name: 'abort-model', deployments: [{ provider: 'mock2', model: 'mock-small' }] });
        },
    });
    ({ gw, mock } = stack);
    port = gw.port;
    KEY = stack.keys.t1;
}, { timeout: 30000 });

after(async () => {
    const results = await Promise.allSettled([stack ? stack.stop() : null, mock2 ? mock2.stop() : null]);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
}, { timeout: 30000 });

/** A normal request still succeeds (run after every bad input). */
async function assertStillServes() {
    const n = nonce('ok');
    const r = await chat(port, chatBody(`still fine ${n}`), { key: KEY });
    assert.equal(r.status, 200, `a normal request after the bad input: ${r.status} ${r.text}`);
    assert.equal(r.json().choices[0].message.content, `mock reply to: still fine ${n}`);
}

const chatHeaders = () => [['Authorization', `Bearer ${KEY}`], ['Content-Type', 'application/json']];

function assertErrorBody(text, type) {
    const j = JSON.parse(text);
    assert.equal(typeof j.error.message, 'string');
    if (type) assert.equal(j.error.type, type);
    return j.error;
}

/** TCP states ("01" established, "08" close-wait, ...) of the sockets whose local port is port, listener excluded. */
function tcpStates(localPort) {
    const states = [];
    for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
        let text;
        try {
            text = fs.readFileSync(file, 'utf8');
        } catch {
            continue;
        }
        for (const line of text.split('\n').slice(1)) {
            const f = line.trim().split(/\s+/);
            if (f.length < 4) continue;
            const lport = parseInt(f[1].split(':')[1], 16);
            if (lport === localPort && f[3] !== '0A') states.push(f[3]);
        }
    }
    return states;
}

describe('bad request bodies', () => {
    it('400 for truncated JSON', T, async () => {
        const r = await chat(port, '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"cut',
            { key: KEY, headers: { 'Content-Type': 'application/json' } });
        assert.equal(r.status, 400, r.text);
        const e = assertErrorBody(r.text, 'invalid_request_error');
        assert.equal(e.code, 'invalid_json');
        assert.match(e.message, /byte/);
        await assertStillServes();
    });

    it('400 for invalid UTF-8, and nothing goes upstream', T, async () => {
        const n = nonce('utf');
        const body = Buffer.concat([
            Buffer.from(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"${n} `),
            Buffer.from([0xff, 0xfe, 0xc3, 0x28]),
            Buffer.from('"}]}'),
        ]);
        const r = await chat(port, body, { key: KEY, headers: { 'Content-Type': 'application/json' } });
        assert.equal(r.status, 400, r.text);
        assert.equal(assertErrorBody(r.text, 'invalid_request_error').code, 'invalid_json');
        assert.equal((await mock.requestsWith(n, { timeoutMs: 0 })).length, 0);
        await assertStillServes();
    });

    it('400 for a body that is JSON but not an object', T, async () => {
        const r = await chat(port, '[1,2,3]', { key: KEY, headers: { 'Content-Type': 'application/json' } });
        assert.equal(r.status, 400, r.text);
        assertErrorBody(r.text, 'invalid_request_error');
        await assertStillServes();
    });

    it('413 for a 10 MB body, then the connection closes', T, async () => {
        const total = 10 * 1024 * 1024;
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('POST', '/v1/chat/completions',
                [...chatHeaders(), ['Content-Length', String(total)]]));
            /* send the body until the answer comes (the gateway may answer before reading it all) */
            const piece = Buffer.alloc(64 * 1024, 0x61);
            const response = c.readResponse({ timeoutMs: 15000 });
            let answered = false;
            response.then(() => (answered = true), () => (answered = true));
            for (let sent = 0; sent < total && !answered && !c.isClosed; sent += piece.length) {
                if (!(await c.write(piece))) break;
            }
            const r = await response;
            assert.equal(r.status, 413, r.text);
            assertErrorBody(r.text, 'invalid_request_error');
            await c.waitClosed(5000);
        } finally {
            c.destroy();
        }
        await assertStillServes();
    });

    it('413 for a chunked body that grows past the limit', T, async () => {
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('POST', '/v1/chat/completions', [...chatHeaders(), ['Transfer-Encoding', 'chunked']]));
            const piece = Buffer.alloc(256 * 1024, 0x62);
            const chunk = Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]);
            const response = c.readResponse({ timeoutMs: 15000 });
            let answered = false;
            response.then(() => (answered = true), () => (answered = true));
            for (let i = 0; i < 40 && !answered && !c.isClosed; i++) {
                if (!(await c.write(chunk))) break;
            }
            const r = await response;
            assert.equal(r.status, 413, r.text);
            await c.waitClosed(5000);
        } finally {
            c.destroy();
        }
        await assertStillServes();
    });

    it('408 when the body stops arriving', T, async () => {
        const c = await RawConn.open(port);
        try {
            const t0 = Date.now();
            await c.write(rawRequest('POST', '/v1/chat/completions', [...chatHeaders(), ['Content-Length', '100']]));
            await c.write('{"model":"gpt-4o-mini"');
            const r = await c.readResponse({ timeoutMs: 5000 });
            const elapsed = Date.now() - t0;
            assert.equal(r.status, 408, r.text);
            assert.ok(elapsed >= 400 && elapsed < 3000, `408 after ${elapsed} ms; body_timeout_ms is 500`);
            await c.waitClosed(5000);
        } finally {
            c.destroy();
        }
        await assertStillServes();
    });
});

describe('bad request heads', () => {
    it('431 for 1,000 headers', T, async () => {
        const headers = [...chatHeaders()];
        for (let i = 0; i < 1000; i++) headers.push([`X-Filler-${i}`, 'v']);
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('POST', '/v1/chat/completions', headers, JSON.stringify(chatBody('many headers'))));
            const r = await c.readResponse();
            assert.equal(r.status, 431, r.text);
            assertErrorBody(r.text, 'invalid_request_error');
            await c.waitClosed(5000);
        } finally {
            c.destroy();
        }
        await assertStillServes();
    });

    it('431 for one header of 64 KiB', T, async () => {
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('GET', '/health', [['X-Huge', 'h'.repeat(64 * 1024)]]));
            const r = await c.readResponse();
            assert.equal(r.status, 431, r.text);
            await c.waitClosed(5000);
        } finally {
            c.destroy();
        }
        await assertStillServes();
    });

    it('400 and close for garbage bytes', T, async () => {
        const c = await RawConn.open(port);
        try {
            /* the start of a TLS ClientHello, then junk */
            await c.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]),
                Buffer.from('\x00garbage\r\n\r\n', 'latin1')]));
            const r = await c.readResponse();
            assert.equal(r.status, 400, r.text);
            await c.waitClosed(5000);
        } finally {
            c.destroy();
        }
        const c2 = await RawConn.open(port);
        try {
            await c2.write('GET /health HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n');
            const r = await c2.readResponse();
            assert.equal(r.status, 400, r.text);
            await c2.waitClosed(5000);
        } finally {
            c2.destroy();
        }
        await assertStillServes();
    });
});

describe('hostile and vanishing clients', () => {
    it('408 and close for a slowloris client while others are served', T, async () => {
        const c = await RawConn.open(port);
        const head = Buffer.from('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ' + 's'.repeat(200) + '\r\n\r\n');
        let i = 0;
        const t0 = Date.now();
        /* one byte every 100 ms */
        const dribble = setInterval(() => {
            if (i >= head.length || c.isClosed) {
                clearInterval(dribble);
                return;
            }
            c.write(head.subarray(i, i + 1));
            i += 1;
        }, 100);
        c.write(head.subarray(0, 1));
        i = 1;
        try {
            /* other clients are served meanwhile */
            for (let k = 0; k < 3; k++) await assertStillServes();
            const h = await request(port, { path: '/health' });
            assert.equal(h.status, 200);
            assert.equal(c.isClosed, false, 'served the others while the slow client was still open');

            const closedAt = await c.waitClosed(5000);
            const elapsed = closedAt - t0;
            assert.ok(elapsed >= 450 && elapsed < 3000, `closed after ${elapsed} ms; header_timeout_ms is 500`);
            assert.ok(i < head.length, 'closed before the slow client finished its headers');
            const r = await c.readResponse({ timeoutMs: 1000 });
            assert.equal(r.status, 408, r.text);
            assertErrorBody(r.text, 'timeout_error');
        } finally {
            clearInterval(dribble);
            c.destroy();
        }
        await assertStillServes();
    });

    it('closes a keep-alive connection left idle past idle_timeout_ms, without an answer', T, async () => {
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('GET', '/health'));
            assert.equal((await c.readResponse()).status, 200);
            const t0 = Date.now();
            const closedAt = await c.waitClosed(6000);
            const idle = closedAt - t0;
            assert.ok(idle >= 1300 && idle < 4500, `closed after ${idle} ms idle; idle_timeout_ms is 1500`);
            assert.equal(c.buf.length, 0, 'a silent close, no 408 for an idle connection');
        } finally {
            c.destroy();
        }
        await assertStillServes();
    });

    it('logs client_aborted and cancels the upstream transfer when a client vanishes mid-stream', T, async () => {
        const n = nonce('vanish');
        const text = `[[mock:delay_events_ms=200]] ${n} ` + Array.from({ length: 30 }, (_, k) => `w${k}`).join(' ');
        const s = await openStream(port, { ...chatBody(text, { stream: true }), model: 'abort-model' }, { key: KEY });
        assert.equal(s.status, 200);
        const id = s.headers['x-leo-request-id'];
        await s.waitEvents(1, 5000);
        /* the upstream connection is open while the stream runs */
        assert.ok(tcpStates(mock2.port).includes('01'), 'an upstream connection to mock2 during the stream');
        const t0 = Date.now();
        s.destroy();

        const line = await gw.accessLine(id, 5000);
        assert.equal(line.client_aborted, true, JSON.stringify(line));
        assert.equal(line.stream, true);
        assert.equal(line.model, 'abort-model');
        assert.ok(Date.now() - t0 < 2000, 'the request ended soon after the client left');

        /* the transfer to mock2 is gone: no established or half-closed connection remains on its port (the
         * rest of the stream would take about 6 s) */
        const deadline = Date.now() + 3000;
        let states = tcpStates(mock2.port);
        while (Date.now() < deadline && states.some((st) => st === '01' || st === '08')) {
            await new Promise((r) => setTimeout(r, 50));
            states = tcpStates(mock2.port);
        }
        assert.ok(!states.some((st) => st === '01' || st === '08'),
            `connections to the mock still open after the client left: ${states}`);
        assert.equal((await mock2.requestsWith(n, { timeoutMs: 0 })).length, 1, 'one upstream request, no retry');

        const m = await gw.metrics();
        assert.equal(metricSum(m, 'leo_active_streams'), 0);
        await assertStillServes();
        /* and mock2 itself is fine, so the gateway can use it again */
        const r = await chat(port, { ...chatBody(`after abort ${n}`), model: 'abort-model' }, { key: KEY });
        assert.equal(r.status, 200, r.text);
    });

    it('logs 499 and keeps serving after a client resets the connection before the answer', T, async () => {
        const n = nonce('reset');
        const from = gw.stderr.mark();
        const c = await RawConn.open(port);
        const body = JSON.stringify(chatBody(`[[mock:delay_headers_ms=300]] reset me ${n}`));
        await c.write(rawRequest('POST', '/v1/chat/completions', chatHeaders(), body));
        /* wait until the gateway has forwarded it, then reset */
        assert.equal((await mock.requestsWith(n, { timeoutMs: 3000 })).length, 1);
        c.socket.resetAndDestroy();
        const line = await gw.stderr.waitForJson((j) => j.type === 'access' && j.client_aborted === true,
            { from, timeoutMs: 5000, what: 'access line of the reset request' });
        assert.equal(line.status, 499);
        assert.equal(line.path, '/v1/chat/completions');
        await assertStillServes();
    });
});
