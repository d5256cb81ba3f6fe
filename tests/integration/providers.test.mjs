/*
 * providers.test.mjs — provider translation checked on the exact bytes, where the SDKs would hide them: what the
 * gateway sends each upstream format, the exact answers and event streams it gives each client dialect, the
 * routes that exist for one format only, the usage and cost in the access log, and the error shapes per route.
 *
 * One gateway with three providers of types openai, anthropic and gemini, all on one mock
 * (tests/integration/lib/providers.mjs). Expected bytes are computed from the mock's documented rules
 * (docs/mock.md) and the gateway's documented translations (gateway/providers/*.c, docs/providers.md).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { nonce, openStream, recordedHeader, recordedHeaders, request } from './lib/harness.mjs';
import {
    FORMATS,
    MODELS,
    UPSTREAM_KEYS,
    costOf,
    promptTokens,
    reply,
    startProviderStack,
    words,
} from './lib/providers.mjs';

const T = { timeout: 20000 };

let stack, gw, mock, key;

/* Error-mapping tests inject 401, 429, 5xx...: the router disables a refused key, cools a rate-limited one down
 * and counts failures. Each (format, status, route) therefore gets a deployment of its own: a provider of the
 * same type on the same mock, named "<provider>-e<status><c|m|s>" (chat, messages, stream). */
const ERROR_STATUSES = [400, 401, 403, 404, 429, 500, 503, 529];
function isolateErrorDeployments(config) {
    for (const base of config.providers.filter((p) => ['oa', 'an', 'ge'].includes(p.name)))
        for (const st of ERROR_STATUSES)
            for (const route of ['c', 'm', 's']) {
                const name = `${base.name}-e${st}${route}`;
                config.providers.push({ ...base, name });
                const model = config.models.find((m) => m.deployments[0].provider === base.name);
                config.models.push({ name: `${model.name}-e${st}${route}`,
                    deployments: [{ provider: name, model: model.deployments[0].model }] });
            }
}

before(async () => {
    stack = await startProviderStack({ mutate: isolateErrorDeployments });
    ({ gw, mock, key } = stack);
}, { timeout: 30000 });

after(async () => {
    if (stack) await stack.stop();
}, { timeout: 30000 });

/* ---- helpers ---- */

const OPENAI_HEADERS = () => ({ Authorization: `Bearer ${key}` });
const ANTHROPIC_HEADERS = () => ({ 'x-api-key': key, 'anthropic-version': '2023-06-01' });

function chatPost(body, headers = {}) {
    return request(gw.port, {
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { ...OPENAI_HEADERS(), 'Content-Type': 'application/json', ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
    });
}

function messagesPost(body, { path = '/v1/messages', headers = {} } = {}) {
    return request(gw.port, {
        method: 'POST',
        path,
        headers: { ...ANTHROPIC_HEADERS(), 'Content-Type': 'application/json', ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
    });
}

/** The pieces the mock streams a text in: each word with the whitespace that follows it. */
const pieces = (text) => text.match(/[^ \t\n\r\v\f]+[ \t\n\r\v\f]*/g);

/** The gateway's documented estimate (gateway/tokens.h) for plain-text messages and canonical tools. */
function estimate(texts, canonicalTools = null) {
    let chars = texts.reduce((n, t) => n + [...t].length, 0);
    if (canonicalTools) chars += [...JSON.stringify(canonicalTools)].length;
    return Math.ceil(chars / 4) + 4 * texts.length + 3;
}

/** Anthropic SSE bytes for [type, data] pairs, as the gateway frames them. */
const anthropicSSE = (events) => events.map(([type, data]) => `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`).join('');

/** OpenAI SSE bytes for chunk objects. */
const openaiSSE = (chunks) => chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join('');

/**
 * Asserts that no upstream request carried marker n. A request refused by the gateway is answered before any
 * upstream request would start, so a later request that did reach the mock (awaited) bounds the check.
 */
async function assertNothingUpstream(n) {
    const sentinel = nonce('sentinel');
    const res = await chatPost({ model: 'gpt-mock', messages: [{ role: 'user', content: sentinel }] });
    assert.equal(res.status, 200);
    await mock.requestWith(sentinel);
    const hits = (await mock.requests()).filter((r) => typeof r.body === 'string' && r.body.includes(n));
    assert.deepEqual(hits, [], 'nothing reached the upstream');
}

const idOf = (prefix, res) => prefix + res.headers['x-leo-request-id'].slice(4);

const tools = [
    {
        type: 'function',
        function: {
            name: 'search_docs',
            description: 'Search the documentation',
            parameters: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] },
        },
    },
];

/* ------------------------------------------------------------------------------------------------------------ */

describe('Anthropic passthrough', () => {
    it('sends the client\'s exact bytes upstream except "model", and relays the answer untouched', T, async () => {
        const n = nonce('pass');
        const text = `passthrough bytes ${n}`;
        /* odd spacing, key order, an escaped non-ASCII character, reals and an unknown field: all must survive */
        const body = `{ "max_tokens" : 64,\n  "model":"claude-mock", "messages":[{"role":"user","content":"${text}"}],` +
            ` "temperature": 1.0, "x_unknown": {"keep": [1, 2.50, "caf\\u00e9"]} }`;
        const res = await messagesPost(body, { headers: { 'anthropic-beta': 'tools-2024-04-04' } });
        assert.equal(res.status, 200, res.text);
        const rec = await mock.requestWith(n);
        assert.equal(rec.path, '/v1/messages');
        assert.equal(rec.body, body.replace('"model":"claude-mock"', '"model":"claude-sonnet-4"'));
        assert.equal(recordedHeader(rec, 'x-api-key'), UPSTREAM_KEYS.an.value, 'the provider key, not the LEO key');
        assert.deepEqual(recordedHeaders(rec, 'anthropic-version'), ['2023-06-01']);
        assert.equal(recordedHeader(rec, 'anthropic-beta'), 'tools-2024-04-04', 'anthropic-beta is forwarded');

        const expected = JSON.stringify({
            id: `msg_mock_${rec.seq}`,
            type: 'message',
            role: 'assistant',
            model: 'claude-sonnet-4',
            content: [{ type: 'text', text: reply(text) }],
            stop_reason: 'end_turn',
            stop_sequence: null,
            usage: { input_tokens: promptTokens([text]), output_tokens: words(reply(text)) },
        });
        assert.equal(res.text, expected);
        assert.equal(res.headers['request-id'], `req_mock_${rec.seq}`, 'the upstream request id is relayed');
        assert.equal(res.headers['x-leo-deployment'], 'an/claude-sonnet-4');
        assert.equal(res.headers['x-leo-cost-usd'], costOf('claude-sonnet-4', promptTokens([text]), words(reply(text))));
    });

    it('relays the upstream\'s event stream byte for byte, then the cost comment', T, async () => {
        const n = nonce('pstream');
        const body = { model: 'claude-mock', max_tokens: 64, stream: true, messages: [{ role: 'user', content: `stream ${n}` }] };
        const s = await openStream(gw.port, body, { path: '/v1/messages', headers: ANTHROPIC_HEADERS() });
        const got = await s.end;
        assert.equal(s.status, 200);
        assert.equal(got.error, null);
        /* the same request straight to the mock */
        const direct = await request(mock.port, {
            method: 'POST',
            path: '/v1/messages',
            headers: { 'anthropic-version': '2023-06-01' },
            body: { ...body, model: 'claude-sonnet-4' },
        });
        const norm = (t) => t.replace(/msg_mock_\d+/g, 'msg_mock_N');
        const text = `stream ${n}`;
        const cost = costOf('claude-sonnet-4', promptTokens([text]), words(reply(text)));
        assert.equal(norm(got.raw), norm(direct.text) + `: x-leo-cost-usd ${cost}\n\n`);
        assert.match(direct.text, /^event: message_start\n/);
        assert.match(direct.text, /event: ping\n/);
    });

    it('count_tokens goes to the upstream\'s count_tokens with "model" replaced', T, async () => {
        const n = nonce('count');
        const body = `{"model":"claude-mock","messages":[{"role":"user","content":"count ${n}"}]}`;
        const res = await messagesPost(body, { path: '/v1/messages/count_tokens' });
        assert.equal(res.status, 200, res.text);
        assert.equal(res.text, JSON.stringify({ input_tokens: promptTokens([`count ${n}`]) }));
        assert.equal(res.headers['x-leo-token-count'], undefined);
        const rec = await mock.requestWith(n);
        assert.equal(rec.path, '/v1/messages/count_tokens');
        assert.equal(rec.body, body.replace('claude-mock', 'claude-sonnet-4'));
    });
});

describe('translated requests, exact upstream bodies', () => {
    it('OpenAI → Anthropic: a small request becomes exactly this Messages request', T, async () => {
        const n = nonce('o2a');
        const res = await chatPost({
            model: 'claude-mock',
            messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: `hi ${n}` }],
            max_tokens: 50,
            temperature: 0.7,
            top_p: 0.9,
            stop: ['END'],
            user: 'user-1',
            seed: 7, /* dropped: Anthropic has no seed */
            presence_penalty: 0.5, /* dropped */
            tools,
            tool_choice: 'required',
            parallel_tool_calls: false,
        });
        assert.equal(res.status, 200, res.text);
        const rec = await mock.requestWith(n);
        assert.equal(rec.path, '/v1/messages');
        assert.equal(rec.body, JSON.stringify({
            model: 'claude-sonnet-4',
            max_tokens: 50,
            system: 'be brief',
            messages: [{ role: 'user', content: `hi ${n}` }],
            metadata: { user_id: 'user-1' },
            stop_sequences: ['END'],
            temperature: 0.7,
            top_p: 0.9,
            tools: [{
                name: 'search_docs',
                description: 'Search the documentation',
                input_schema: tools[0].function.parameters,
            }],
            tool_choice: { type: 'any', disable_parallel_tool_use: true },
        }));
    });

    it('OpenAI → Anthropic: without max_tokens the configured default (4096) is sent', T, async () => {
        const n = nonce('o2adef');
        const res = await chatPost({ model: 'claude-mock', messages: [{ role: 'user', content: `hi ${n}` }], stream: true });
        assert.equal(res.status, 200, res.text);
        const rec = await mock.requestWith(n);
        assert.equal(rec.body, JSON.stringify({
            model: 'claude-sonnet-4',
            max_tokens: 4096,
            messages: [{ role: 'user', content: `hi ${n}` }],
            stream: true,
        }));
    });

    it('OpenAI → Gemini: a small request becomes exactly this GenerateContentRequest', T, async () => {
        const n = nonce('o2g');
        const res = await chatPost({
            model: 'gemini-mock',
            messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: `hi ${n}` }],
            max_tokens: 50,
            temperature: 0.7,
            stop: 'END',
            seed: 7,
            tools,
            tool_choice: 'auto',
            user: 'user-1', /* dropped: Gemini has no end-user field */
        });
        assert.equal(res.status, 200, res.text);
        const rec = await mock.requestWith(n);
        assert.equal(rec.url, '/v1beta/models/gemini-2.5-flash:generateContent');
        assert.equal(recordedHeader(rec, 'x-goog-api-key'), UPSTREAM_KEYS.ge.value);
        assert.equal(rec.body, JSON.stringify({
            contents: [{ role: 'user', parts: [{ text: `hi ${n}` }] }],
            tools: [{
                functionDeclarations: [{
                    name: 'search_docs',
                    description: 'Search the documentation',
                    parameters: { type: 'OBJECT', properties: { query: { type: 'STRING' } }, required: ['query'] },
                }],
            }],
            toolConfig: { functionCallingConfig: { mode: 'AUTO' } },
            systemInstruction: { parts: [{ text: 'be brief' }] },
            generationConfig: { stopSequences: ['END'], maxOutputTokens: 50, temperature: 0.7, seed: 7 },
        }));
    });

    it('Anthropic → OpenAI: a Messages request becomes exactly this chat request', T, async () => {
        const n = nonce('a2o');
        const res = await messagesPost({
            model: 'gpt-mock',
            max_tokens: 50,
            system: 'be brief',
            messages: [{ role: 'user', content: `hi ${n}` }],
            stop_sequences: ['END'],
            temperature: 0.5,
            metadata: { user_id: 'user-1' },
            stream: true,
        });
        assert.equal(res.status, 200, res.text);
        const rec = await mock.requestWith(n);
        assert.equal(rec.path, '/v1/chat/completions');
        assert.equal(recordedHeader(rec, 'authorization'), `Bearer ${UPSTREAM_KEYS.oa.value}`);
        assert.deepEqual(JSON.parse(rec.body), {
            model: 'mock-small',
            messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: `hi ${n}` }],
            max_tokens: 50,
            temperature: 0.5,
            stop: ['END'],
            user: 'user-1',
            stream: true,
            stream_options: { include_usage: true },
        });
    });

    it('a request the upstream cannot express is refused before anything is sent', T, async () => {
        const n = nonce('refuse');
        const cases = [
            [chatPost, { model: 'claude-mock', n: 2, messages: [{ role: 'user', content: `x ${n}` }] }, /^n: only 1 choice is supported by anthropic$/],
            [chatPost, { model: 'claude-mock', response_format: { type: 'json_object' }, messages: [{ role: 'user', content: `x ${n}` }] }, /response_format: "json_object" is not supported by anthropic/],
            [chatPost, { model: 'gemini-mock', logprobs: true, messages: [{ role: 'user', content: `x ${n}` }] }, /logprobs/],
            [chatPost, {
                model: 'gemini-mock',
                messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/a.png' } }, { type: 'text', text: n }] }],
            }, /messages\[0\]\.content\[0\]/],
        ];
        for (const [post, body, re] of cases) {
            const res = await post(body);
            assert.equal(res.status, 400, `${JSON.stringify(body)} → ${res.text}`);
            const e = res.json().error;
            assert.equal(e.type, 'invalid_request_error');
            assert.equal(e.code, 'unsupported_parameter');
            assert.match(e.message, re);
        }
        const res = await messagesPost({
            model: 'gpt-mock',
            max_tokens: 16,
            messages: [{ role: 'user', content: [{ type: 'text', text: n }, { type: 'document', source: { type: 'text', media_type: 'text/plain', data: 'x' } }] }],
        });
        assert.equal(res.status, 400, res.text);
        const body = res.json();
        assert.equal(body.type, 'error');
        assert.equal(body.error.type, 'invalid_request_error');
        assert.match(body.error.message, /messages\[0\]\.content\[1\]/);
        await assertNothingUpstream(n);
    });
});

describe('translated answers and streams, exact bytes', () => {
    it('an Anthropic client of an OpenAI upstream gets exactly this event sequence', T, async () => {
        const text = `exact events ${nonce('ev')}`;
        const s = await openStream(gw.port, {
            model: 'gpt-mock',
            max_tokens: 64,
            stream: true,
            messages: [{ role: 'user', content: text }],
        }, { path: '/v1/messages', headers: ANTHROPIC_HEADERS() });
        const got = await s.end;
        assert.equal(s.status, 200);
        assert.equal(s.headers['content-type'], 'text/event-stream');
        const r = reply(text);
        const input = promptTokens([text]);
        const output = words(r);
        const expected = anthropicSSE([
            ['message_start', {
                type: 'message_start',
                message: {
                    id: idOf('msg_', s),
                    type: 'message',
                    role: 'assistant',
                    model: 'gpt-mock',
                    content: [],
                    stop_reason: null,
                    stop_sequence: null,
                    usage: { input_tokens: estimate([text]), output_tokens: 0 },
                },
            }],
            ['content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }],
            ...pieces(r).map((p) => ['content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: p } }]),
            ['content_block_stop', { type: 'content_block_stop', index: 0 }],
            ['message_delta', {
                type: 'message_delta',
                delta: { stop_reason: 'end_turn', stop_sequence: null },
                usage: { input_tokens: input, output_tokens: output },
            }],
            ['message_stop', { type: 'message_stop' }],
        ]) + `: x-leo-cost-usd ${costOf('mock-small', input, output)}\n\n`;
        assert.equal(got.raw, expected);
    });

    it('an Anthropic client of an OpenAI upstream: a streamed tool call, one input_json_delta per piece', T, async () => {
        const text = `call a tool in a stream ${nonce('evt')}`;
        const s = await openStream(gw.port, {
            model: 'gpt-mock',
            max_tokens: 64,
            stream: true,
            tools: [{ name: 'search_docs', input_schema: tools[0].function.parameters }],
            messages: [{ role: 'user', content: text }],
        }, { path: '/v1/messages', headers: ANTHROPIC_HEADERS() });
        const got = await s.end;
        const args = JSON.stringify({ query: text });
        const argPieces = args.match(/.{1,8}/gs);
        const input = promptTokens([text]);
        const output = 1 + words(args);
        const expected = anthropicSSE([
            ['message_start', {
                type: 'message_start',
                message: {
                    id: idOf('msg_', s),
                    type: 'message',
                    role: 'assistant',
                    model: 'gpt-mock',
                    content: [],
                    stop_reason: null,
                    stop_sequence: null,
                    /* the estimate counts the tool definitions, as the canonical request carries them */
                    usage: { input_tokens: estimate([text], [{ type: 'function', function: { name: 'search_docs', parameters: tools[0].function.parameters } }]), output_tokens: 0 },
                },
            }],
            ['content_block_start', {
                type: 'content_block_start',
                index: 0,
                content_block: { type: 'tool_use', id: 'call_mock_1', name: 'search_docs', input: {} },
            }],
            ...argPieces.map((p) => ['content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'input_json_delta', partial_json: p } }]),
            ['content_block_stop', { type: 'content_block_stop', index: 0 }],
            ['message_delta', {
                type: 'message_delta',
                delta: { stop_reason: 'tool_use', stop_sequence: null },
                usage: { input_tokens: input, output_tokens: output },
            }],
            ['message_stop', { type: 'message_stop' }],
        ]) + `: x-leo-cost-usd ${costOf('mock-small', input, output)}\n\n`;
        assert.equal(got.raw, expected);
    });

    it('an OpenAI client of an Anthropic upstream gets exactly these chunks', T, async () => {
        const text = `exact chunks ${nonce('ch')}`;
        const s = await openStream(gw.port, {
            model: 'claude-mock',
            stream: true,
            stream_options: { include_usage: true },
            messages: [{ role: 'user', content: text }],
        }, { headers: OPENAI_HEADERS() });
        const got = await s.end;
        assert.equal(s.status, 200);
        const id = idOf('chatcmpl-', s);
        const created = JSON.parse(got.events[0].data).created;
        assert.ok(Math.abs(created - Date.now() / 1000) < 60);
        const head = { id, object: 'chat.completion.chunk', created, model: 'claude-sonnet-4' };
        const chunk = (delta, finish = null) => ({ ...head, choices: [{ index: 0, delta, finish_reason: finish }] });
        const r = reply(text);
        const input = promptTokens([text]);
        const output = words(r);
        const expected = openaiSSE([
            chunk({ role: 'assistant', content: '' }),
            ...pieces(r).map((p) => chunk({ content: p })),
            chunk({}, 'stop'),
            { ...head, choices: [], usage: { prompt_tokens: input, completion_tokens: output, total_tokens: input + output } },
        ]) + `: x-leo-cost-usd ${costOf('claude-sonnet-4', input, output)}\n\ndata: [DONE]\n\n`;
        assert.equal(got.raw, expected);
    });

    it('an OpenAI client of a Gemini upstream gets exactly these chunks (thinking first)', T, async () => {
        const text = `think first please ${nonce('gch')}`;
        const s = await openStream(gw.port, {
            model: 'gemini-mock',
            stream: true,
            stream_options: { include_usage: true },
            messages: [{ role: 'user', content: text }],
        }, { headers: OPENAI_HEADERS() });
        const got = await s.end;
        assert.equal(s.status, 200);
        const id = idOf('chatcmpl-', s);
        const created = JSON.parse(got.events[0].data).created;
        const head = { id, object: 'chat.completion.chunk', created, model: 'gemini-2.5-flash' };
        const chunk = (delta, finish = null) => ({ ...head, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] });
        const r = reply(text);
        const th = `mock thinking about: ${text}`;
        const input = promptTokens([text]);
        const output = words(r) + words(th);
        const expected = openaiSSE([
            chunk({ role: 'assistant', content: '' }),
            ...pieces(th).map((p) => chunk({ reasoning_content: p })),
            ...pieces(r).map((p) => chunk({ content: p })),
            chunk({}, 'stop'),
            {
                ...head,
                choices: [],
                usage: {
                    prompt_tokens: input,
                    completion_tokens: output,
                    total_tokens: input + output,
                    completion_tokens_details: { reasoning_tokens: words(th) },
                },
            },
        ]) + `: x-leo-cost-usd ${costOf('gemini-2.5-flash', input, output)}\n\ndata: [DONE]\n\n`;
        assert.equal(got.raw, expected);
    });

    it('an OpenAI client of an Anthropic upstream gets exactly this chat.completion', T, async () => {
        const text = `whole answer ${nonce('wh')}`;
        const res = await chatPost({ model: 'claude-mock', messages: [{ role: 'user', content: text }] });
        assert.equal(res.status, 200);
        const created = res.json().created;
        const input = promptTokens([text]);
        const output = words(reply(text));
        assert.equal(res.text, JSON.stringify({
            id: idOf('chatcmpl-', res),
            object: 'chat.completion',
            created,
            model: 'claude-sonnet-4',
            choices: [{ index: 0, message: { role: 'assistant', content: reply(text) }, logprobs: null, finish_reason: 'stop' }],
            usage: { prompt_tokens: input, completion_tokens: output, total_tokens: input + output },
        }));
    });

    it('an Anthropic client of a Gemini upstream gets exactly this message', T, async () => {
        const text = `whole message ${nonce('whg')}`;
        const res = await messagesPost({ model: 'gemini-mock', max_tokens: 64, messages: [{ role: 'user', content: text }] });
        assert.equal(res.status, 200);
        assert.equal(res.text, JSON.stringify({
            id: idOf('msg_', res),
            type: 'message',
            role: 'assistant',
            model: 'gemini-mock',
            content: [{ type: 'text', text: reply(text) }],
            stop_reason: 'end_turn',
            stop_sequence: null,
            usage: { input_tokens: promptTokens([text]), output_tokens: words(reply(text)) },
        }));
    });
});

describe('routes that exist for some formats only', () => {
    for (const [format, route, body] of [
        ['anthropic', 'completions', { prompt: 'x' }],
        ['anthropic', 'embeddings', { input: 'x' }],
        ['gemini', 'completions', { prompt: 'x' }],
    ]) {
        const model = MODELS[format].name;
        it(`/v1/${route} to a ${format}-backed model is a 400 naming the provider type`, T, async () => {
            const n = nonce('only');
            const res = await request(gw.port, {
                method: 'POST',
                path: `/v1/${route}`,
                headers: OPENAI_HEADERS(),
                body: { model, ...body, user: n },
            });
            assert.equal(res.status, 400);
            assert.equal(res.text, JSON.stringify({
                error: {
                    message: `model "${model}" is served by a "${format}" provider, which has no /v1/${route} API`,
                    type: 'invalid_request_error',
                    param: 'model',
                    code: 'unsupported_for_provider',
                },
            }));
            await assertNothingUpstream(n);
        });
    }

    it('/v1/embeddings to the Gemini-backed model: exactly this batchEmbedContents request and this answer', T, async () => {
        const n = nonce('gemb');
        const input = [`embed ${n}`, 'd\u00e9j\u00e0 \u00e9t\u00e9 \u00e9l\u00e8ve \u00e0 c\u00f4t\u00e9'];
        const res = await request(gw.port, {
            method: 'POST',
            path: '/v1/embeddings',
            headers: OPENAI_HEADERS(),
            body: { model: 'gemini-mock', input, dimensions: 3, encoding_format: 'float', user: 'dropped' },
        });
        assert.equal(res.status, 200, res.text);
        const rec = await mock.requestWith(n);
        assert.equal(rec.url, '/v1beta/models/gemini-2.5-flash:batchEmbedContents');
        assert.equal(recordedHeader(rec, 'x-goog-api-key'), UPSTREAM_KEYS.ge.value);
        assert.equal(rec.body, JSON.stringify({
            requests: input.map((text) => ({ model: 'models/gemini-2.5-flash', content: { parts: [{ text }] }, outputDimensionality: 3 })),
        }));
        /* the vectors are the mock's, as /v1/embeddings of the same text gives them */
        const direct = await request(mock.port, { method: 'POST', path: '/v1/embeddings', body: { model: 'm', input, dimensions: 3 } });
        const vectors = direct.json().data.map((d) => d.embedding);
        /* Gemini reports no usage for embeddings: the estimate is ceil(characters / 4), characters as in
         * gateway/tokens.h (code points) */
        const est = Math.ceil(input.reduce((k, t) => k + [...t].length, 0) / 4);
        assert.equal(res.text, JSON.stringify({
            object: 'list',
            data: vectors.map((embedding, index) => ({ object: 'embedding', index, embedding })),
            model: 'gemini-2.5-flash',
            usage: { prompt_tokens: est, total_tokens: est },
        }));
        assert.equal(res.headers['x-leo-cost-usd'], costOf('gemini-2.5-flash', est, 0));
    });

    it('/v1/embeddings to the Gemini-backed model refuses token arrays, which Gemini cannot embed', T, async () => {
        const res = await request(gw.port, {
            method: 'POST',
            path: '/v1/embeddings',
            headers: OPENAI_HEADERS(),
            body: { model: 'gemini-mock', input: [1, 2, 3] },
        });
        assert.equal(res.status, 400);
        assert.equal(res.text, JSON.stringify({
            error: {
                message: 'input[0]: gemini embeds text only, not token arrays',
                type: 'invalid_request_error',
                param: 'input',
                code: 'unsupported_parameter',
            },
        }));
    });

    it('/v1/embeddings and /v1/completions to an OpenAI-backed model pass through to the same path', T, async () => {
        const n = nonce('emb');
        const body = `{"model":"gpt-mock","input":"embed ${n}","dimensions":4}`;
        const res = await request(gw.port, { method: 'POST', path: '/v1/embeddings', headers: OPENAI_HEADERS(), body });
        assert.equal(res.status, 200, res.text);
        assert.equal(res.json().data[0].embedding.length, 4);
        const rec = await mock.requestWith(`embed ${n}`);
        assert.equal(rec.path, '/v1/embeddings');
        assert.equal(rec.body, body.replace('gpt-mock', 'mock-small'));

        const cbody = `{"model":"gpt-mock","prompt":"complete ${n}"}`;
        await request(gw.port, { method: 'POST', path: '/v1/completions', headers: OPENAI_HEADERS(), body: cbody });
        const crec = await mock.requestWith(`complete ${n}`);
        assert.equal(crec.path, '/v1/completions');
        assert.equal(crec.body, cbody.replace('gpt-mock', 'mock-small'));
    });

    for (const format of ['openai', 'gemini']) {
        it(`count_tokens for a ${format}-backed model is the gateway's estimate`, T, async () => {
            const text = `count these words for ${format}`;
            const res = await messagesPost({ model: MODELS[format].name, messages: [{ role: 'user', content: text }] }, {
                path: '/v1/messages/count_tokens',
            });
            assert.equal(res.status, 200, res.text);
            assert.equal(res.text, JSON.stringify({ input_tokens: estimate([text]) }));
            assert.equal(res.headers['x-leo-token-count'], 'estimate');
        });
    }
});

describe('usage and cost in the access log', () => {
    for (const format of FORMATS) {
        const m = MODELS[format];
        for (const [route, stream] of [['chat', false], ['chat', true], ['messages', false], ['messages', true]]) {
            it(`${route}${stream ? ' (streamed)' : ''} via ${m.name}: the upstream's usage priced as ${m.upstream}`, T, async () => {
                const text = `account this ${route} ${format} ${nonce('acct')}`;
                const messages = [{ role: 'user', content: text }];
                let res;
                if (route === 'chat') {
                    res = stream
                        ? await openStream(gw.port, { model: m.name, stream, messages }, { headers: OPENAI_HEADERS() })
                        : await chatPost({ model: m.name, messages });
                } else {
                    const body = { model: m.name, max_tokens: 64, stream, messages };
                    res = stream
                        ? await openStream(gw.port, body, { path: '/v1/messages', headers: ANTHROPIC_HEADERS() })
                        : await messagesPost(body);
                }
                assert.equal(res.status, 200);
                const raw = stream ? (await res.end).raw : res.text;
                const input = promptTokens([text]);
                const output = words(reply(text));
                const cost = costOf(m.upstream, input, output);
                if (stream) assert.ok(raw.includes(`: x-leo-cost-usd ${cost}\n\n`), raw.slice(-200));
                else assert.equal(res.headers['x-leo-cost-usd'], cost);
                const line = await gw.accessLine(res.headers['x-leo-request-id']);
                assert.equal(line.path, route === 'chat' ? '/v1/chat/completions' : '/v1/messages');
                assert.equal(line.status, 200);
                assert.equal(line.stream, stream);
                assert.equal(line.model, m.name);
                assert.equal(line.deployment, m.provider);
                assert.equal(line.upstream_model, m.upstream);
                assert.equal(line.upstream_status, 200);
                assert.equal(line.prompt_tokens, input);
                assert.equal(line.completion_tokens, output);
                assert.equal(line.cost_usd.toFixed(8), cost);
                assert.equal(line.estimated_tokens, estimate([text]));
                assert.equal(line.error, undefined);
            });
        }
    }
});

describe('error shapes per route', () => {
    /* status_map in gateway/proxy.c: upstream status → client status and code */
    const MAP = [
        [400, 400, 'upstream_error', true],
        [401, 502, 'upstream_auth_failed', false],
        [403, 502, 'upstream_auth_failed', false],
        [404, 404, 'upstream_error', true],
        [429, 429, 'upstream_rate_limited', true],
        [500, 502, 'upstream_error', true],
        [503, 502, 'upstream_error', true],
        [529, 503, 'upstream_overloaded', true],
    ];
    const OPENAI_TYPE = { 400: 'invalid_request_error', 404: 'not_found_error', 429: 'rate_limit_error', 502: 'upstream_error', 503: 'service_unavailable' };
    const ANTHROPIC_TYPE = { 400: 'invalid_request_error', 404: 'not_found_error', 429: 'rate_limit_error', 502: 'api_error', 503: 'overloaded_error' };
    /* the upstream's message as each adapter reads it from the format's error body (docs/mock.md lists the bodies) */
    const UPSTREAM_PREFIX = {
        openai: () => '',
        anthropic: (st) => `${{ 400: 'invalid_request_error', 404: 'not_found_error', 429: 'rate_limit_error', 500: 'api_error', 503: 'api_error', 529: 'overloaded_error' }[st]}: `,
        gemini: (st) => `${{ 400: 'INVALID_ARGUMENT', 404: 'NOT_FOUND', 429: 'RESOURCE_EXHAUSTED', 500: 'INTERNAL', 503: 'UNAVAILABLE', 529: 'INTERNAL' }[st]}: `,
    };

    for (const format of FORMATS) {
        const m = MODELS[format];
        it(`upstream errors from ${format} reach both dialects with the mapped status`, T, async () => {
            for (const [up, status, code, keep] of MAP) {
                const content = `fail [[mock:status=${up}]]`;
                const message = (route) => keep
                    ? `upstream "${m.provider}-e${up}${route}" returned status ${up}: ${UPSTREAM_PREFIX[format](up)}mock fault: injected status ${up}`
                    : `upstream "${m.provider}-e${up}${route}" returned status ${up}`;
                const o = await chatPost({ model: `${m.name}-e${up}c`, messages: [{ role: 'user', content }] });
                assert.equal(o.status, status, `chat, upstream ${up}: ${o.text}`);
                assert.equal(o.text, JSON.stringify({ error: { message: message('c'), type: OPENAI_TYPE[status], param: null, code } }));
                const a = await messagesPost({ model: `${m.name}-e${up}m`, max_tokens: 16, messages: [{ role: 'user', content }] });
                assert.equal(a.status, status, `messages, upstream ${up}: ${a.text}`);
                assert.equal(a.text, JSON.stringify({ type: 'error', error: { type: ANTHROPIC_TYPE[status], message: message('m') } }));
            }
        });
    }

    it('gateway errors on /v1/messages are Anthropic-shaped, on /v1/chat/completions OpenAI-shaped', T, async () => {
        const nf = await messagesPost({ model: 'nope', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] });
        assert.equal(nf.status, 404);
        assert.equal(nf.text, JSON.stringify({ type: 'error', error: { type: 'not_found_error', message: 'model "nope" is not configured' } }));
        const onf = await chatPost({ model: 'nope', messages: [{ role: 'user', content: 'x' }] });
        assert.equal(onf.status, 404);
        assert.equal(onf.text, JSON.stringify({
            error: { message: 'model "nope" is not configured', type: 'not_found_error', param: 'model', code: 'model_not_found' },
        }));

        const mt = await messagesPost({ model: 'claude-mock', messages: [{ role: 'user', content: 'x' }] });
        assert.equal(mt.status, 400);
        assert.equal(mt.json().type, 'error');
        assert.equal(mt.json().error.type, 'invalid_request_error');
        assert.match(mt.json().error.message, /max_tokens/);

        const bad = await messagesPost('{"model": ');
        assert.equal(bad.status, 400);
        assert.equal(bad.json().type, 'error');
        assert.equal(bad.json().error.type, 'invalid_request_error');

        const nokey = await request(gw.port, {
            method: 'POST',
            path: '/v1/messages',
            headers: { 'anthropic-version': '2023-06-01' },
            body: { model: 'claude-mock', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] },
        });
        assert.equal(nokey.status, 401);
        assert.equal(nokey.json().type, 'error');
        assert.equal(nokey.json().error.type, 'authentication_error');
    });

    for (const format of FORMATS) {
        const m = MODELS[format];
        it(`a streamed request refused by ${format} before the stream starts gets a JSON error, not a stream`, T, async () => {
            const content = 'later [[mock:status=429;retry_after=2]]';
            const message = `upstream "${m.provider}-rl" returned status 429: ${UPSTREAM_PREFIX[format](429)}mock fault: injected status 429`;
            const o = await openStream(gw.port, { model: `${m.name}-rl`, stream: true, messages: [{ role: 'user', content }] }, {
                headers: OPENAI_HEADERS(),
            });
            const og = await o.end;
            assert.equal(o.status, 429);
            assert.equal(o.headers['content-type'], 'application/json');
            assert.equal(o.headers['retry-after'], '2');
            assert.equal(og.raw, JSON.stringify({ error: { message, type: 'rate_limit_error', param: null, code: 'upstream_rate_limited' } }));
            const a = await openStream(gw.port, { model: `${m.name}-e429s`, max_tokens: 16, stream: true, messages: [{ role: 'user', content }] }, {
                path: '/v1/messages',
                headers: ANTHROPIC_HEADERS(),
            });
            const ag = await a.end;
            assert.equal(a.status, 429);
            assert.equal(a.headers['content-type'], 'application/json');
            assert.equal(ag.raw, JSON.stringify({ type: 'error', error: { type: 'rate_limit_error',
                message: message.replace(`"${m.provider}-rl"`, `"${m.provider}-e429s"`) } }));
        });

        it(`an unparsable answer from ${format} is a 502, and an unparsable event ends a translated stream`, T, async () => {
            const content = 'a b [[mock:malformed]]';
            const o = await chatPost({ model: m.name, messages: [{ role: 'user', content }] });
            assert.equal(o.status, 502, o.text);
            assert.equal(o.json().error.code, 'upstream_invalid_response');
            const a = await messagesPost({ model: m.name, max_tokens: 16, messages: [{ role: 'user', content }] });
            assert.equal(a.status, 502, a.text);
            assert.equal(a.json().error.type, 'api_error');

            /* In passthrough the event bytes are the client's to parse (the gateway parses only events that may
             * carry usage or an error); a translated stream must parse each event, and fails on a broken one. */
            const client = format === 'openai' ? 'anthropic' : 'openai';
            const s = client === 'openai'
                ? await openStream(gw.port, { model: m.name, stream: true, messages: [{ role: 'user', content }] }, { headers: OPENAI_HEADERS() })
                : await openStream(gw.port, { model: m.name, max_tokens: 16, stream: true, messages: [{ role: 'user', content }] }, {
                    path: '/v1/messages',
                    headers: ANTHROPIC_HEADERS(),
                });
            const got = await s.end;
            assert.equal(s.status, 200);
            const last = got.events.at(-1);
            const { message } = JSON.parse(last.data).error;
            if (client === 'anthropic') assert.equal(last.event, 'error');
            else assert.equal(JSON.parse(last.data).error.code, 'upstream_stream_error');
            assert.match(message, new RegExp(`^upstream "${m.provider}" stream failed: `));
            assert.ok(!got.raw.includes('[DONE]') && !got.raw.includes('message_stop') && !got.raw.includes('x-leo-cost-usd'));
        });

        it(`a stream from ${format} cut mid-way ends with an error event in each dialect, never a clean end`, T, async () => {
            const content = 'one two three four five six [[mock:reset_after_events=3]]';
            const o = await openStream(gw.port, { model: MODELS[format].name, stream: true, messages: [{ role: 'user', content }] }, {
                headers: OPENAI_HEADERS(),
            });
            const og = await o.end;
            assert.equal(o.status, 200);
            const olast = og.events.at(-1);
            const oerr = JSON.parse(olast.data).error;
            assert.equal(oerr.type, 'upstream_error');
            assert.equal(oerr.code, 'upstream_stream_interrupted');
            assert.match(oerr.message, new RegExp(`^upstream stream from "${MODELS[format].provider}" ended before completion`));
            assert.ok(!og.raw.includes('[DONE]'));
            assert.ok(!og.raw.includes('x-leo-cost-usd'));

            const a = await openStream(gw.port, {
                model: MODELS[format].name,
                max_tokens: 64,
                stream: true,
                messages: [{ role: 'user', content }],
            }, { path: '/v1/messages', headers: ANTHROPIC_HEADERS() });
            const ag = await a.end;
            assert.equal(a.status, 200);
            const alast = ag.events.at(-1);
            assert.equal(alast.event, 'error');
            const aerr = JSON.parse(alast.data);
            assert.equal(aerr.type, 'error');
            assert.equal(aerr.error.type, 'api_error');
            assert.match(aerr.error.message, /ended before completion/);
            assert.ok(!ag.events.some((e) => e.event === 'message_stop'));
            assert.equal(ag.events[0].event, 'message_start');
        });
    }
});
