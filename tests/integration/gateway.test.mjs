/*
 * gateway.test.mjs — the gateway's HTTP behaviour end to end: leo-gateway (one worker) in front of the mock
 * provider, driven over real sockets.
 *
 * Each case shows the client request, what the client must get back and, where it matters, the exact bytes the
 * mock received. Requests carry a unique marker (nonce) so a case finds its own upstream request in the mock's
 * log regardless of what other cases sent.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
    RawConn,
    chat,
    chatBody,
    expectedCost,
    metricSum,
    nonce,
    openStream,
    rawRequest,
    recordedHeader,
    request,
    startStack,
} from './lib/harness.mjs';

const T = { timeout: 20000 };
const REQ_ID = /^req_[0-9a-f]{20}$/;

let stack, gw, mock, port, KEY1, KEY2;

/* the credential of the "keyed" provider, handed to the gateway through the environment only */
const PROVIDER_KEY = 'sk-provider-secret-integration-7c1d';

before(async () => {
    stack = await startStack({
        env: { LEO_IT_PROVIDER_KEY: PROVIDER_KEY },
        mutate: (cfg) => {
            const base = cfg.providers[0].base_url;
            cfg.providers.push({ name: 'keyed', type: 'openai', base_url: base, api_key_env: 'LEO_IT_PROVIDER_KEY' });
            cfg.models.push({ name: 'keyed-model', deployments: [{ provider: 'keyed', model: 'mock-small' }] });
        },
    });
    ({ gw, mock } = stack);
    port = gw.port;
    KEY1 = stack.keys.t1;
    KEY2 = stack.keys.t2;
}, { timeout: 30000 });

after(async () => {
    if (stack) await stack.stop();
}, { timeout: 30000 });

/* words as the mock counts them: maximal runs of non-whitespace */
const words = (s) => s.split(/[ \t\n\r\v\f]+/).filter(Boolean).length;
/* the mock's usage for a single user message */
const usageFor = (text) => {
    const content = `mock reply to: ${text}`;
    return { prompt: words(text) + 3, completion: words(content), content };
};

function assertOpenAIError(r, status, { code, param, type } = {}) {
    assert.equal(r.status, status, `status; body: ${r.text}`);
    assert.match(r.headers['content-type'] || '', /^application\/json/);
    assert.match(r.headers['x-leo-request-id'] || '', REQ_ID, 'x-leo-request-id on an error answer');
    const j = JSON.parse(r.text);
    assert.deepEqual(Object.keys(j), ['error']);
    assert.deepEqual(Object.keys(j.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(typeof j.error.message, 'string');
    assert.ok(j.error.message.length > 0);
    if (code !== undefined) assert.equal(j.error.code, code, `error.code; body: ${r.text}`);
    if (param !== undefined) assert.equal(j.error.param, param, `error.param; body: ${r.text}`);
    if (type !== undefined) assert.equal(j.error.type, type, `error.type; body: ${r.text}`);
    return j.error;
}

const HOP_BY_HOP = ['keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer',
    'trailers', 'upgrade', 'transfer-encoding'];

describe('POST /v1/chat/completions, whole answers', () => {
    it('relays the mock body untouched with request id, deployment and cost headers', T, async () => {
        const n = nonce('plain');
        const text = `hello ${n}`;
        /* unusual spacing, an unknown member and number formatting that a re-serialiser would change */
        const clientBody = `{ "model" :  "gpt-4o-mini",\n  "messages":[ {"role":"user","content":"${text}"} ],\n` +
            `  "temperature": 0.2 , "foo":{"bar":[1,2.50]}  }`;
        const r = await chat(port, clientBody, { key: KEY1, headers: { 'Content-Type': 'application/json' } });
        assert.equal(r.status, 200, r.text);
        assert.match(r.headers['x-leo-request-id'], REQ_ID);
        assert.equal(r.headers['x-leo-deployment'], 'mock/mock-small');
        assert.equal(r.headers['x-leo-attempts'], '1');
        assert.match(r.headers['content-type'], /^application\/json/);

        /* the body is the mock's JSON, byte for byte */
        const j = r.json();
        const m = /^chatcmpl-mock-(\d+)$/.exec(j.id);
        assert.ok(m, `mock completion id, got ${j.id}`);
        const u = usageFor(text);
        const expected = JSON.stringify({
            id: j.id,
            object: 'chat.completion',
            created: j.created,
            model: 'mock-small',
            choices: [{ index: 0, message: { role: 'assistant', content: u.content }, finish_reason: 'stop' }],
            usage: { prompt_tokens: u.prompt, completion_tokens: u.completion, total_tokens: u.prompt + u.completion },
        });
        assert.equal(r.text, expected);
        assert.equal(r.headers['x-request-id'], `req-mock-${m[1]}`, 'x-request-id relayed from the upstream');
        assert.equal(r.headers['x-ratelimit-remaining-requests'], '9999', 'rate-limit headers relayed');

        /* cost = (prompt * 0.10 + completion * 0.40) / 1e6, printed with 8 decimals */
        const cost = r.headers['x-leo-cost-usd'];
        assert.match(cost, /^\d+\.\d{8}$/);
        assert.ok(Number(cost) > 0);
        assert.equal(cost, expectedCost(u.prompt, u.completion));

        /* framing: one Content-Length matching the body, no hop-by-hop header */
        const lens = [];
        for (let i = 0; i < r.rawHeaders.length; i += 2) {
            const name = r.rawHeaders[i].toLowerCase();
            if (name === 'content-length') lens.push(r.rawHeaders[i + 1]);
            assert.ok(!HOP_BY_HOP.includes(name), `hop-by-hop header ${name} in the answer`);
        }
        assert.deepEqual(lens, [String(r.body.length)]);

        /* what the mock received: the client's bytes with only "model" replaced */
        const rec = await mock.requestWith(n);
        assert.equal(rec.method, 'POST');
        assert.equal(rec.path, '/v1/chat/completions');
        assert.equal(rec.body, clientBody.replace('"gpt-4o-mini"', '"mock-small"'));
        assert.equal(recordedHeader(rec, 'authorization'), undefined, 'no Authorization: the provider has no key');
        assert.match(recordedHeader(rec, 'content-type') || '', /^application\/json/);

        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.status, 200);
        assert.equal(line.method, 'POST');
        assert.equal(line.path, '/v1/chat/completions');
        assert.equal(line.tenant, 't1');
        assert.equal(line.key, 'k1');
        assert.equal(line.model, 'gpt-4o-mini');
        assert.equal(line.deployment, 'mock');
        assert.equal(line.upstream_model, 'mock-small');
        assert.equal(line.stream, false);
        assert.equal(line.byok, false);
        assert.equal(line.prompt_tokens, u.prompt);
        assert.equal(line.completion_tokens, u.completion);
        assert.equal(line.cost_usd.toFixed(8), cost);
        assert.equal(line.upstream_status, 200);
        assert.equal(line.client_aborted, undefined);
    });

    it('accepts the key as X-API-Key and serves /chat/completions without /v1', T, async () => {
        const n = nonce('alias');
        const r = await request(port, {
            method: 'POST',
            path: '/chat/completions',
            headers: { 'x-api-key': KEY1 },
            body: chatBody(`alias ${n}`),
        });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json().choices[0].message.content, `mock reply to: alias ${n}`);
        assert.equal((await mock.requestWith(n)).path, '/v1/chat/completions');
    });

    it('keeps a multi-byte UTF-8 body and escaped strings intact', T, async () => {
        const n = nonce('utf8');
        const clientBody = `{"messages":[{"role":"system","content":"Réponds en français \\u00e9 \\"q\\" \\\\ /"},` +
            `{"role":"user","content":"naïve café 日本語 ${n}"}],"model":"gpt-4o-mini","top_p":1e-3}`;
        const r = await chat(port, Buffer.from(clientBody, 'utf8'), { key: KEY1, headers: { 'Content-Type': 'application/json' } });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json().choices[0].message.content, `mock reply to: naïve café 日本語 ${n}`);
        const rec = await mock.requestWith(n);
        assert.equal(rec.body, clientBody.replace('"gpt-4o-mini"', '"mock-small"'));
    });
});

describe('POST /v1/chat/completions, streams', () => {
    /* the JSON chunks of a finished stream, checked for the framing every stream must have */
    function chunksOf(events) {
        assert.ok(events.length >= 2, `events: ${JSON.stringify(events)}`);
        assert.equal(events.at(-1).data, '[DONE]', 'the stream ends with data: [DONE]');
        const body = events.slice(0, -1);
        for (const e of body) assert.notEqual(e.data, '[DONE]', '[DONE] only once, at the end');
        return body.map((e) => JSON.parse(e.data));
    }

    it('relays one event per mock chunk, hides the forced usage chunk and ends with cost and [DONE]', T, async () => {
        const n = nonce('stream');
        const text = `stream me ${n}`;
        const u = usageFor(text);
        const clientBody = `{"model":"gpt-4o-mini", "stream":true, "messages":[{"role":"user","content":"${text}"}]}`;
        const s = await openStream(port, clientBody, { key: KEY1 });
        assert.equal(s.status, 200);
        assert.match(s.headers['content-type'], /^text\/event-stream/);
        assert.match(s.headers['x-leo-request-id'], REQ_ID);
        assert.equal(s.headers['x-leo-deployment'], 'mock/mock-small');
        const { events, raw, error } = await s.end;
        assert.equal(error, null);

        const chunks = chunksOf(events);
        /* role chunk, one chunk per word of the reply, the finish chunk; no usage-only chunk */
        assert.equal(chunks.length, 1 + words(u.content) + 1, raw);
        assert.equal(chunks[0].choices[0].delta.role, 'assistant');
        assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
        for (const c of chunks) {
            assert.equal(c.object, 'chat.completion.chunk');
            assert.equal(c.model, 'mock-small');
            assert.equal(c.choices.length, 1, 'no usage-only chunk reaches a client that did not ask for it');
            assert.ok(c.usage === undefined || c.usage === null);
        }
        assert.equal(chunks.map((c) => c.choices[0].delta.content || '').join(''), u.content);
        for (const c of chunks.slice(1, -1)) assert.equal(words(c.choices[0].delta.content), 1, 'one word per chunk');

        /* ": x-leo-cost-usd <n>" right before [DONE] */
        const m = /: x-leo-cost-usd (\d+\.\d{8})\r?\n\r?\ndata: \[DONE\]\r?\n\r?\n$/.exec(raw);
        assert.ok(m, `cost comment before [DONE]; tail: ${JSON.stringify(raw.slice(-200))}`);
        assert.equal(m[1], expectedCost(u.prompt, u.completion));

        /* upstream: usage forced on, everything else as sent */
        const rec = await mock.requestWith(n);
        const sent = JSON.parse(rec.body);
        assert.deepEqual(sent, { ...JSON.parse(clientBody), model: 'mock-small', stream_options: { include_usage: true } });
        assert.ok(rec.body.startsWith(clientBody.replace('"gpt-4o-mini"', '"mock-small"').slice(0, -1)),
            `client bytes kept: ${rec.body}`);
        assert.match(recordedHeader(rec, 'accept') || '', /text\/event-stream/);

        const line = await gw.accessLine(s.headers['x-leo-request-id']);
        assert.equal(line.status, 200);
        assert.equal(line.stream, true);
        assert.equal(line.prompt_tokens, u.prompt);
        assert.equal(line.completion_tokens, u.completion);
        assert.equal(line.cost_usd.toFixed(8), m[1]);
    });

    it('relays the usage chunk when the client asked for include_usage', T, async () => {
        const n = nonce('usage');
        const text = `count my tokens ${n}`;
        const u = usageFor(text);
        const clientBody = JSON.stringify({
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content: text }],
            stream: true,
            stream_options: { include_usage: true },
        });
        const s = await openStream(port, clientBody, { key: KEY1 });
        assert.equal(s.status, 200);
        const { events, raw, error } = await s.end;
        assert.equal(error, null);
        const chunks = chunksOf(events);
        assert.equal(chunks.length, 1 + words(u.content) + 1 + 1, raw);
        const last = chunks.at(-1);
        assert.deepEqual(last.choices, []);
        assert.deepEqual(last.usage, {
            prompt_tokens: u.prompt,
            completion_tokens: u.completion,
            total_tokens: u.prompt + u.completion,
        });
        assert.match(raw, /: x-leo-cost-usd \d+\.\d{8}\r?\n\r?\ndata: \[DONE\]\r?\n\r?\n$/);

        /* nothing to change but the model */
        const rec = await mock.requestWith(n);
        assert.equal(rec.body, clientBody.replace('"gpt-4o-mini"', '"mock-small"'));

        const line = await gw.accessLine(s.headers['x-leo-request-id']);
        assert.equal(line.prompt_tokens, u.prompt);
        assert.equal(line.completion_tokens, u.completion);
        assert.equal(line.cost_usd.toFixed(8), expectedCost(u.prompt, u.completion));
    });

    it('forces include_usage upstream when the client sent include_usage:false, and still hides the chunk', T, async () => {
        const n = nonce('nousage');
        const s = await openStream(port, {
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content: `no usage please ${n}` }],
            stream: true,
            stream_options: { include_usage: false },
        }, { key: KEY1 });
        const { events, error } = await s.end;
        assert.equal(error, null);
        const chunks = chunksOf(events);
        assert.ok(chunks.every((c) => c.choices.length === 1));
        const rec = await mock.requestWith(n);
        assert.deepEqual(JSON.parse(rec.body).stream_options, { include_usage: true });
        const line = await gw.accessLine(s.headers['x-leo-request-id']);
        assert.equal(typeof line.prompt_tokens, 'number');
        assert.ok(line.cost_usd > 0);
    });

    it('ends with an upstream_stream_interrupted error event and no [DONE] when the upstream dies mid-stream', T, async () => {
        const n = nonce('cut');
        const s = await openStream(port, chatBody(`[[mock:reset_after_events=2]] one two three four ${n}`, { stream: true }),
            { key: KEY1 });
        assert.equal(s.status, 200);
        const { events, raw } = await s.end;
        assert.ok(!events.some((e) => e.data === '[DONE]'), `no [DONE] after a broken stream: ${raw}`);
        assert.ok(!/x-leo-cost-usd/.test(raw));
        assert.equal(events.length, 3, `two relayed events and the error event: ${raw}`);
        const first = JSON.parse(events[0].data);
        assert.equal(first.choices[0].delta.role, 'assistant');
        assert.equal(JSON.parse(events[1].data).object, 'chat.completion.chunk');
        const err = JSON.parse(events[2].data);
        assert.equal(err.error.code, 'upstream_stream_interrupted');
        assert.equal(err.error.type, 'upstream_error');
        assert.equal(typeof err.error.message, 'string');
        const line = await gw.accessLine(s.headers['x-leo-request-id']);
        assert.equal(line.stream, true);
        assert.equal(typeof line.error, 'string');
    });
});

describe('errors are OpenAI-shaped', () => {
    it('401 without a key', T, async () => {
        const r = await chat(port, chatBody('no key'));
        assertOpenAIError(r, 401, { code: 'missing_api_key', type: 'authentication_error' });
    });

    it('401 for an unknown key, which the message shows masked only', T, async () => {
        const bad = 'sk-leo-unknown-secret-9f8e';
        const r = await chat(port, chatBody('bad key'), { key: bad });
        const e = assertOpenAIError(r, 401, { code: 'invalid_api_key' });
        assert.ok(!e.message.includes(bad), `message leaks the key: ${e.message}`);
        assert.ok(!e.message.includes('unknown-secret'), `message leaks part of the key: ${e.message}`);
        assert.ok(e.message.includes('sk-…9f8e'), `masked key (first 3 and last 4 characters) in the message: ${e.message}`);
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.ok(!JSON.stringify(line).includes(bad), 'access log leaks the key');
    });

    it('400 with the byte offset for invalid JSON', T, async () => {
        const r = await chat(port, '{"model":"gpt-4o-mini","messages":[}', { key: KEY1, headers: { 'Content-Type': 'application/json' } });
        const e = assertOpenAIError(r, 400, { code: 'invalid_json', type: 'invalid_request_error' });
        assert.match(e.message, /byte/);
    });

    it('400 naming the missing field', T, async () => {
        const r1 = await chat(port, { messages: [{ role: 'user', content: 'x' }] }, { key: KEY1 });
        assertOpenAIError(r1, 400, { param: 'model', code: 'missing_required_parameter' });
        const r2 = await chat(port, { model: 'gpt-4o-mini' }, { key: KEY1 });
        assertOpenAIError(r2, 400, { param: 'messages', code: 'missing_required_parameter' });
        const r3 = await chat(port, { model: 'gpt-4o-mini', messages: [] }, { key: KEY1 });
        assertOpenAIError(r3, 400, { param: 'messages', code: 'invalid_type' });
        const r4 = await chat(port, { model: 42, messages: [{ role: 'user', content: 'x' }] }, { key: KEY1 });
        assertOpenAIError(r4, 400, { param: 'model', code: 'invalid_type' });
        const r5 = await chat(port, chatBody('x', { stream: 'yes' }), { key: KEY1 });
        assertOpenAIError(r5, 400, { param: 'stream', code: 'invalid_type' });
    });

    it('404 model_not_found for an unknown model and 403 for a model outside the tenant list', T, async () => {
        const r = await chat(port, { model: 'gpt-5x', messages: [{ role: 'user', content: 'x' }] }, { key: KEY1 });
        const e = assertOpenAIError(r, 404, { code: 'model_not_found', param: 'model', type: 'not_found_error' });
        assert.match(e.message, /gpt-5x/);
        const r2 = await chat(port, { model: 'other-model', messages: [{ role: 'user', content: 'x' }] }, { key: KEY2 });
        assertOpenAIError(r2, 403, { code: 'model_not_allowed', param: 'model', type: 'permission_error' });
        /* the same model is fine for the tenant that may use every model */
        const r3 = await chat(port, { model: 'other-model', messages: [{ role: 'user', content: 'x' }] }, { key: KEY1 });
        assert.equal(r3.status, 200, r3.text);
        assert.equal(r3.headers['x-leo-deployment'], 'mock/mock-large');
    });

    it('502 naming the status when the upstream answers 500', T, async () => {
        const r = await chat(port, chatBody('[[mock:status=500]] boom'), { key: KEY1 });
        const e = assertOpenAIError(r, 502, { code: 'upstream_error', type: 'upstream_error' });
        assert.match(e.message, /500/);
        assert.equal(r.headers['x-leo-deployment'], 'mock/mock-small');
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.status, 502);
        assert.equal(line.upstream_status, 500);
    });

    it('429 with Retry-After relayed when the upstream rate-limits', T, async () => {
        const r = await chat(port, { ...chatBody('[[mock:status=429;retry_after=2]] slow down'), model: 'rl-model' },
            { key: KEY1 });
        assertOpenAIError(r, 429, { code: 'upstream_rate_limited', type: 'rate_limit_error' });
        assert.equal(r.headers['retry-after'], '2');
    });

    it('the upstream status and message for other 4xx answers', T, async () => {
        const r = await chat(port, chatBody('[[mock:status=400]] refused'), { key: KEY1 });
        assertOpenAIError(r, 400);
    });

    it('502 upstream_auth_failed when the upstream refuses the gateway credentials', T, async () => {
        const r = await chat(port, chatBody('[[mock:status=401]] who are you'), { key: KEY1 });
        assertOpenAIError(r, 502, { code: 'upstream_auth_failed' });
    });

    it('the upstream 401 itself when it refuses a bring-your-own key', T, async () => {
        const r = await chat(port, chatBody('[[mock:status=401]] my own key'), {
            headers: { 'X-API-Key': KEY1, Authorization: 'Bearer sk-user-own-bad' },
        });
        const e = assertOpenAIError(r, 401, { code: 'upstream_auth_failed' });
        assert.ok(!e.message.includes('sk-user-own-bad'), e.message);
    });

    it('504 when the upstream sends no headers within first_byte_ms', T, async () => {
        const t0 = Date.now();
        const r = await request(port, {
            method: 'POST',
            path: '/v1/chat/completions',
            headers: { Authorization: `Bearer ${KEY1}` },
            body: { model: 'slow-model', messages: [{ role: 'user', content: '[[mock:delay_headers_ms=3000]] wait' }] },
        });
        const elapsed = Date.now() - t0;
        assertOpenAIError(r, 504, { code: 'upstream_timeout', type: 'timeout_error' });
        assert.ok(elapsed >= 250 && elapsed < 2500, `answered after ${elapsed} ms; first_byte_ms is 300`);
    });

    it('502 upstream_unreachable when the provider port is closed', T, async () => {
        const r = await chat(port, { model: 'dead-model', messages: [{ role: 'user', content: 'x' }] }, { key: KEY1 });
        assertOpenAIError(r, 502, { code: 'upstream_unreachable' });
    });

    it('502 when the upstream closes without answering or sends invalid JSON', T, async () => {
        const r1 = await chat(port, chatBody('[[mock:reset_before_headers]] x'), { key: KEY1 });
        assertOpenAIError(r1, 502, { type: 'upstream_error' });
        const r2 = await chat(port, chatBody('[[mock:malformed]] x'), { key: KEY1 });
        assertOpenAIError(r2, 502, { code: 'upstream_invalid_response' });
    });

    it('404 for an unknown route and 405 for a wrong method', T, async () => {
        const r = await request(port, { method: 'GET', path: '/v2/nothing-here' });
        assertOpenAIError(r, 404, { code: 'unknown_route' });
        const r2 = await request(port, { method: 'GET', path: '/v1/chat/completions', headers: { Authorization: `Bearer ${KEY1}` } });
        assertOpenAIError(r2, 405, { code: 'method_not_allowed' });
        const r3 = await request(port, { method: 'DELETE', path: '/v1/models' });
        assertOpenAIError(r3, 405, { code: 'method_not_allowed' });
    });

    it('gives every answer its own request id', T, async () => {
        const ids = new Set();
        for (const p of ['/health', '/ready', '/metrics', '/v1/models', '/nope']) {
            const r = await request(port, { method: 'GET', path: p });
            assert.match(r.headers['x-leo-request-id'] || '', REQ_ID, `x-leo-request-id on ${p}`);
            ids.add(r.headers['x-leo-request-id']);
        }
        assert.equal(ids.size, 5);
    });
});

describe('bring your own key', () => {
    it('sends the caller bearer upstream when the tenant allows it', T, async () => {
        const n = nonce('byok');
        const r = await chat(port, chatBody(`byok ${n}`), {
            headers: { 'X-API-Key': KEY1, Authorization: 'Bearer sk-user-own', 'OpenAI-Organization': 'org-own' },
        });
        assert.equal(r.status, 200, r.text);
        const rec = await mock.requestWith(n);
        assert.equal(recordedHeader(rec, 'authorization'), 'Bearer sk-user-own');
        assert.equal(recordedHeader(rec, 'openai-organization'), 'org-own');
        assert.equal(recordedHeader(rec, 'x-api-key'), undefined, 'the LEO key never goes upstream');
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.byok, true);
        assert.ok(!JSON.stringify(line).includes('sk-user-own'), 'access log leaks the caller key');
    });

    it('ignores the bearer when the tenant does not allow it', T, async () => {
        const n = nonce('nobyok');
        const r = await chat(port, chatBody(`no byok ${n}`), {
            headers: { 'X-API-Key': KEY2, Authorization: 'Bearer sk-user-own', 'OpenAI-Organization': 'org-own' },
        });
        assert.equal(r.status, 200, r.text);
        const rec = await mock.requestWith(n);
        assert.equal(recordedHeader(rec, 'authorization'), undefined);
        assert.equal(recordedHeader(rec, 'openai-organization'), undefined);
        const line = await gw.accessLine(r.headers['x-leo-request-id']);
        assert.equal(line.byok, false);
        assert.equal(line.tenant, 't2');
    });

    it('sends the provider key from the environment, and the caller key instead of it with byok', T, async () => {
        const n = nonce('keyed');
        const r = await chat(port, { model: 'keyed-model', messages: [{ role: 'user', content: `keyed ${n}` }] }, { key: KEY1 });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['x-leo-deployment'], 'keyed/mock-small');
        assert.equal(recordedHeader(await mock.requestWith(n), 'authorization'), `Bearer ${PROVIDER_KEY}`);

        const n2 = nonce('keyedbyok');
        const r2 = await chat(port, { model: 'keyed-model', messages: [{ role: 'user', content: `keyed byok ${n2}` }] }, {
            headers: { 'X-API-Key': KEY1, Authorization: 'Bearer sk-user-own' },
        });
        assert.equal(r2.status, 200, r2.text);
        assert.equal(recordedHeader(await mock.requestWith(n2), 'authorization'), 'Bearer sk-user-own');

        /* a refusal of the provider key is the gateway's problem: 502, and the key shows nowhere */
        const r3 = await chat(port, { model: 'keyed-model', messages: [{ role: 'user', content: '[[mock:status=401]] x' }] },
            { key: KEY1 });
        const e = assertOpenAIError(r3, 502, { code: 'upstream_auth_failed' });
        assert.ok(!e.message.includes(PROVIDER_KEY) && !r3.text.includes('provider-secret'), e.message);
        const line = await gw.accessLine(r3.headers['x-leo-request-id']);
        assert.ok(!JSON.stringify(line).includes('provider-secret'));
        assert.ok(!gw.stderr.lines.some((l) => l.text.includes(PROVIDER_KEY)), 'no log line contains the provider key');
    });

    it('never forwards the LEO key itself as a bearer', T, async () => {
        const n = nonce('leokey');
        const r = await chat(port, chatBody(`bearer only ${n}`), { key: KEY1 });
        assert.equal(r.status, 200);
        const rec = await mock.requestWith(n);
        assert.equal(recordedHeader(rec, 'authorization'), undefined);
        assert.ok(!JSON.stringify(rec.headers).includes(KEY1));
    });
});

describe('models, health, readiness', () => {
    it('lists the tenant models in OpenAI list format', T, async () => {
        const r = await request(port, { path: '/v1/models', headers: { Authorization: `Bearer ${KEY1}` } });
        assert.equal(r.status, 200, r.text);
        const j = r.json();
        assert.equal(j.object, 'list');
        assert.deepEqual(j.data.map((m) => m.id), ['gpt-4o-mini', 'slow-model', 'dead-model', 'other-model', 'rl-model', 'keyed-model']);
        for (const m of j.data) {
            assert.equal(m.object, 'model');
            assert.equal(typeof m.created, 'number');
            assert.equal(typeof m.owned_by, 'string');
        }
        const r2 = await request(port, { path: '/v1/models', headers: { 'X-API-Key': KEY2 } });
        assert.deepEqual(r2.json().data.map((m) => m.id), ['gpt-4o-mini']);
        const r3 = await request(port, { path: '/v1/models' });
        assertOpenAIError(r3, 401, { code: 'missing_api_key' });
    });

    it('answers one model by id, 404 for others', T, async () => {
        const r = await request(port, { path: '/v1/models/gpt-4o-mini', headers: { Authorization: `Bearer ${KEY1}` } });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json().id, 'gpt-4o-mini');
        assert.equal(r.json().object, 'model');
        const r2 = await request(port, { path: '/v1/models/other-model', headers: { Authorization: `Bearer ${KEY2}` } });
        assertOpenAIError(r2, 404, { code: 'model_not_found' });
        const r3 = await request(port, { path: '/v1/models/nope', headers: { Authorization: `Bearer ${KEY1}` } });
        assertOpenAIError(r3, 404, { code: 'model_not_found' });
    });

    it('/health and /ready', T, async () => {
        const h = await request(port, { path: '/health' });
        assert.equal(h.status, 200);
        assert.deepEqual(h.json(), { status: 'ok' });
        const r = await request(port, { path: '/ready' });
        assert.equal(r.status, 200);
        const j = r.json();
        assert.equal(j.status, 'ready');
        assert.deepEqual(j.workers, { wanted: 1, up: 1 });
        assert.equal(typeof j.config_version, 'number');
        assert.ok(j.config_version >= 1);
    });
});

describe('metrics', () => {
    it('counts requests, durations, tokens and cost as they happen', T, async () => {
        const before = await gw.metrics();
        const ids = [];
        const expectTokens = { input: 0, output: 0, cost: 0 };
        for (let i = 0; i < 3; i++) {
            const text = `metrics ${i} ${nonce('m')}`;
            const r = await chat(port, chatBody(text), { key: KEY1 });
            assert.equal(r.status, 200);
            ids.push(r.headers['x-leo-request-id']);
            const u = usageFor(text);
            expectTokens.input += u.prompt;
            expectTokens.output += u.completion;
            expectTokens.cost += Number(expectedCost(u.prompt, u.completion));
        }
        const text = `metrics stream ${nonce('m')}`;
        const s = await openStream(port, chatBody(text, { stream: true }), { key: KEY1 });
        await s.end;
        ids.push(s.headers['x-leo-request-id']);
        const u = usageFor(text);
        expectTokens.input += u.prompt;
        expectTokens.output += u.completion;
        expectTokens.cost += Number(expectedCost(u.prompt, u.completion));
        const nf = await chat(port, { model: 'no-such', messages: [{ role: 'user', content: 'x' }] }, { key: KEY1 });
        assert.equal(nf.status, 404);
        ids.push(nf.headers['x-leo-request-id']);
        /* metrics are updated just before the access line is written */
        for (const id of ids) await gw.accessLine(id);

        const after = await gw.metrics();
        const d = (name, labels) => metricSum(after, name, labels) - metricSum(before, name, labels);
        const route = '/v1/chat/completions';
        assert.equal(d('leo_requests_total', { route, model: 'gpt-4o-mini', status: '200' }), 4);
        assert.equal(d('leo_requests_total', { route, model: '', status: '404' }), 1);
        assert.equal(d('leo_request_duration_seconds_count', { route }), 5);
        assert.equal(d('leo_request_duration_seconds_bucket', { route, le: '+Inf' }), 5);
        const buckets = after.filter((x) => x.name === 'leo_request_duration_seconds_bucket' && x.labels.route === route);
        assert.ok(buckets.length > 2, 'histogram buckets');
        for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i].value >= buckets[i - 1].value, 'cumulative buckets');
        assert.ok(d('leo_request_duration_seconds_sum', { route }) > 0);
        assert.equal(d('leo_tokens_total', { model: 'gpt-4o-mini', direction: 'input' }), expectTokens.input);
        assert.equal(d('leo_tokens_total', { model: 'gpt-4o-mini', direction: 'output' }), expectTokens.output);
        const dc = d('leo_cost_usd_total', { model: 'gpt-4o-mini' });
        assert.ok(Math.abs(dc - expectTokens.cost) < 1e-9, `cost delta ${dc}, expected ${expectTokens.cost}`);
        assert.ok(d('leo_upstream_duration_seconds_count', { provider: 'mock' }) >= 4);
        /* nothing in flight but the scrape itself */
        assert.equal(metricSum(after, 'leo_active_requests'), 1, 'leo_active_requests during a lone scrape');
        assert.equal(metricSum(after, 'leo_active_streams'), 0, 'leo_active_streams with no stream open');
    });

    it('publishes open client connections in leo_active_connections', T, async () => {
        /* the gauge is refreshed periodically (about once a second): poll, bounded */
        const held = await Promise.all([1, 2, 3].map(() => RawConn.open(port)));
        try {
            /* a request on each so the server has surely accepted them */
            for (const c of held) {
                await c.write(rawRequest('GET', '/health'));
                assert.equal((await c.readResponse()).status, 200);
            }
            const deadline = Date.now() + 5000;
            let v = -1;
            while (Date.now() < deadline) {
                v = metricSum(await gw.metrics(), 'leo_active_connections');
                if (v >= 3) break;
                await new Promise((r) => setTimeout(r, 100));
            }
            assert.ok(v >= 3, `leo_active_connections reached ${v} with 3 connections held open`);
        } finally {
            for (const c of held) c.destroy();
        }
        const deadline = Date.now() + 5000;
        let v = Infinity;
        while (Date.now() < deadline) {
            v = metricSum(await gw.metrics(), 'leo_active_connections');
            if (v <= 1) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        assert.ok(v <= 1, `leo_active_connections back to ${v} after the connections closed`);
    });

    it('serves the Prometheus text format with HELP and TYPE lines', T, async () => {
        const r = await request(port, { path: '/metrics' });
        assert.equal(r.status, 200);
        assert.match(r.headers['content-type'], /^text\/plain/);
        assert.match(r.text, /^# TYPE leo_requests_total counter$/m);
        assert.match(r.text, /^# HELP leo_requests_total .+$/m);
        assert.match(r.text, /^# TYPE leo_request_duration_seconds histogram$/m);
    });
});

describe('HTTP/1.1 connection handling', () => {
    it('keeps a connection alive across requests', T, async () => {
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('GET', '/health'));
            const r1 = await c.readResponse();
            assert.equal(r1.status, 200);
            assert.notEqual((r1.header('connection') || '').toLowerCase(), 'close');
            const n = nonce('ka');
            await c.write(rawRequest('POST', '/v1/chat/completions',
                [['Authorization', `Bearer ${KEY1}`], ['Content-Type', 'application/json']],
                JSON.stringify(chatBody(`keep alive ${n}`))));
            const r2 = await c.readResponse();
            assert.equal(r2.status, 200, r2.text);
            assert.equal(JSON.parse(r2.text).choices[0].message.content, `mock reply to: keep alive ${n}`);
            await c.write(rawRequest('GET', '/v1/models', [['X-API-Key', KEY1]]));
            const r3 = await c.readResponse();
            assert.equal(r3.status, 200);
            assert.equal(c.isClosed, false);
            assert.notEqual(r1.header('x-leo-request-id'), r2.header('x-leo-request-id'));
        } finally {
            c.destroy();
        }
    });

    it('answers pipelined requests in order, a slow one first', T, async () => {
        const n = nonce('pipe');
        const c = await RawConn.open(port);
        try {
            const slow = JSON.stringify(chatBody(`[[mock:delay_headers_ms=300]] first ${n}`));
            await c.write(Buffer.concat([
                rawRequest('POST', '/v1/chat/completions', [['Authorization', `Bearer ${KEY1}`], ['Content-Type', 'application/json']], slow),
                rawRequest('GET', '/health'),
                rawRequest('GET', '/v1/models/gpt-4o-mini', [['Authorization', `Bearer ${KEY1}`]]),
                rawRequest('POST', '/v1/chat/completions', [['Authorization', `Bearer ${KEY1}`], ['Content-Type', 'application/json']],
                    JSON.stringify(chatBody(`fourth ${n}`))),
            ]));
            const r1 = await c.readResponse();
            const r2 = await c.readResponse();
            const r3 = await c.readResponse();
            const r4 = await c.readResponse();
            assert.equal(r1.status, 200, r1.text);
            assert.match(JSON.parse(r1.text).choices[0].message.content, new RegExp(`first ${n}$`));
            assert.equal(r2.status, 200);
            assert.deepEqual(JSON.parse(r2.text), { status: 'ok' });
            assert.equal(r3.status, 200);
            assert.equal(JSON.parse(r3.text).id, 'gpt-4o-mini');
            assert.equal(r4.status, 200);
            assert.equal(JSON.parse(r4.text).choices[0].message.content, `mock reply to: fourth ${n}`);
        } finally {
            c.destroy();
        }
    });

    it('de-chunks a chunked request body before forwarding it', T, async () => {
        const n = nonce('chunked');
        const body = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"chunked ${n}"}],"n":1}`;
        const parts = [body.slice(0, 7), body.slice(7, 40), body.slice(40)];
        const chunked = parts.map((p) => `${Buffer.byteLength(p).toString(16)}\r\n${p}\r\n`).join('') + '0\r\n\r\n';
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('POST', '/v1/chat/completions', [
                ['Authorization', `Bearer ${KEY1}`], ['Content-Type', 'application/json'], ['Transfer-Encoding', 'chunked'],
            ]));
            /* the chunks arrive in separate writes */
            for (const piece of [chunked.slice(0, 10), chunked.slice(10, 50), chunked.slice(50)]) await c.write(piece);
            const r = await c.readResponse();
            assert.equal(r.status, 200, r.text);
            assert.equal(JSON.parse(r.text).choices[0].message.content, `mock reply to: chunked ${n}`);
        } finally {
            c.destroy();
        }
        const rec = await mock.requestWith(n);
        assert.equal(rec.body, body.replace('"gpt-4o-mini"', '"mock-small"'));
        assert.equal(recordedHeader(rec, 'transfer-encoding'), undefined, 'the upstream request has a plain body');
    });

    it('answers Expect: 100-continue before the body is sent', T, async () => {
        const n = nonce('expect');
        const body = JSON.stringify(chatBody(`expect ${n}`));
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('POST', '/v1/chat/completions', [
                ['Authorization', `Bearer ${KEY1}`], ['Content-Type', 'application/json'],
                ['Content-Length', String(Buffer.byteLength(body))], ['Expect', '100-continue'],
            ]));
            const interim = await c.readResponse({ timeoutMs: 5000 });
            assert.equal(interim.status, 100);
            await c.write(body);
            const r = await c.readResponse();
            assert.equal(r.status, 200, r.text);
            assert.equal(JSON.parse(r.text).choices[0].message.content, `mock reply to: expect ${n}`);
        } finally {
            c.destroy();
        }
    });

    it('refuses an Expect: 100-continue body over the limit with 413 at once', T, async () => {
        const c = await RawConn.open(port);
        try {
            await c.write(rawRequest('POST', '/v1/chat/completions', [
                ['Authorization', `Bearer ${KEY1}`], ['Content-Type', 'application/json'],
                ['Content-Length', String(8 * 1024 * 1024)], ['Expect', '100-continue'],
            ]));
            const r = await c.readResponse({ timeoutMs: 5000 });
            assert.equal(r.status, 413);
            assert.equal(JSON.parse(r.text).error.type, 'invalid_request_error');
        } finally {
            c.destroy();
        }
    });
});
