/*
 * providers-openai-sdk.test.mjs — the official `openai` SDK against /v1/chat/completions, served by each of the
 * three upstream wire formats: OpenAI (passthrough), Anthropic Messages and Gemini (translated by the gateway).
 *
 * One gateway, one mock: gpt-mock → openai/mock-small, claude-mock → anthropic/claude-sonnet-4, gemini-mock →
 * gemini/gemini-2.5-flash (tests/integration/lib/providers.mjs). The same cases run against every model, and
 * the answers the SDK parses must be the same: the mock replies identically in all three formats, so content,
 * tool calls and usage are computed from docs/mock.md. The mock's request log shows what the gateway sent
 * upstream in each format (system prompt, tools, images, tool results, thinking). Retries are off
 * (maxRetries: 0) so error cases are deterministic.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { nonce, recordedHeader } from '../integration/lib/harness.mjs';
import {
    FORMATS,
    MODELS,
    UPSTREAM_KEYS,
    callTokens,
    costOf,
    promptTokens,
    reply,
    startProviderStack,
    thinking,
    words,
} from '../integration/lib/providers.mjs';

const T = { timeout: 20000 };

let stack, mock, client;

before(async () => {
    stack = await startProviderStack();
    mock = stack.mock;
    client = new OpenAI({ apiKey: stack.key, baseURL: `${stack.gw.url}/v1`, maxRetries: 0, timeout: 15000 });
}, { timeout: 30000 });

after(async () => {
    if (stack) await stack.stop();
}, { timeout: 30000 });

const tools = [
    {
        type: 'function',
        function: {
            name: 'search_docs',
            description: 'Search the documentation',
            parameters: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] },
        },
    },
    {
        type: 'function',
        function: { name: 'get_time', description: 'Local time', parameters: { type: 'object', properties: {} } },
    },
];

/* a 1x1 transparent PNG */
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=';

/* What differs between the formats, as the mock and the adapters define it. */
const PER_FORMAT = {
    /* tool-call ids: OpenAI's and Anthropic's own; Gemini sends none, the adapter numbers them per candidate */
    openai: { callId: (i) => `call_mock_${i + 1}`, streamsArguments: true },
    anthropic: { callId: (i) => `toolu_mock_${i + 1}`, streamsArguments: true },
    gemini: { callId: (i) => `call_0_${i}`, streamsArguments: false },
};

/** The body the mock recorded for the one upstream request carrying marker n, parsed, with the record. */
async function upstream(n) {
    const rec = await mock.requestWith(n);
    return { rec, sent: JSON.parse(rec.body) };
}

/** Consumes an SDK chat stream: the chunks, and per tool-call index its id, name, arguments and delta count. */
async function collect(stream) {
    const out = { chunks: [], content: '', reasoning: '', finish: null, calls: [], order: [] };
    for await (const chunk of stream) {
        out.chunks.push(chunk);
        assert.equal(chunk.object, 'chat.completion.chunk');
        const choice = chunk.choices[0];
        if (!choice) continue;
        const d = choice.delta || {};
        if (d.reasoning_content) {
            out.reasoning += d.reasoning_content;
            out.order.push('reasoning');
        }
        if (d.content) {
            out.content += d.content;
            out.order.push('content');
        }
        for (const tc of d.tool_calls || []) {
            const c = (out.calls[tc.index] ||= { id: null, name: '', arguments: '', pieces: 0 });
            if (tc.id) c.id = tc.id;
            c.name += tc.function?.name || '';
            if (tc.function?.arguments) {
                c.arguments += tc.function.arguments;
                c.pieces += 1;
            }
            out.order.push(`call${tc.index}`);
        }
        if (choice.finish_reason) out.finish = choice.finish_reason;
    }
    return out;
}

for (const format of FORMATS) {
    const { name: model, provider, upstream: upstreamModel } = MODELS[format];
    const fx = PER_FORMAT[format];

    describe(`openai SDK → ${model} (${format} upstream)`, () => {
        it('create() returns the reply, the upstream usage and model, and the cost header', T, async () => {
            const text = `hello ${format} ${nonce('c')}`;
            const { data: c, response } = await client.chat.completions
                .create({ model, messages: [{ role: 'user', content: text }], temperature: 0.5 })
                .withResponse();
            assert.equal(c.object, 'chat.completion');
            assert.match(c.id, /^chatcmpl-/);
            assert.equal(c.model, upstreamModel);
            assert.equal(c.choices.length, 1);
            assert.equal(c.choices[0].index, 0);
            assert.equal(c.choices[0].message.role, 'assistant');
            assert.equal(c.choices[0].message.content, reply(text));
            assert.equal(c.choices[0].finish_reason, 'stop');
            const prompt = promptTokens([text]);
            const completion = words(reply(text));
            assert.deepEqual(c.usage, { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion });
            assert.equal(response.headers.get('x-leo-deployment'), `${provider}/${upstreamModel}`);
            assert.equal(response.headers.get('x-leo-cost-usd'), costOf(upstreamModel, prompt, completion));
        });

        it('a system prompt reaches the upstream in its own format', T, async () => {
            const n = nonce('sys');
            const text = `with a system prompt ${n}`;
            const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: text }];
            const c = await client.chat.completions.create({ model, messages });
            assert.equal(c.choices[0].message.content, reply(text));
            assert.equal(c.usage.prompt_tokens, promptTokens(['be brief', text]), 'the system prompt counted upstream');
            const { rec, sent } = await upstream(n);
            if (format === 'openai') {
                assert.equal(rec.path, '/v1/chat/completions');
                assert.deepEqual(sent.messages, messages);
            } else if (format === 'anthropic') {
                assert.equal(rec.path, '/v1/messages');
                assert.equal(sent.system, 'be brief');
                assert.deepEqual(sent.messages, [{ role: 'user', content: text }]);
                assert.equal(sent.max_tokens, 4096, 'the default max_tokens, as Anthropic requires one');
            } else {
                assert.equal(rec.path, `/v1beta/models/${upstreamModel}:generateContent`);
                assert.deepEqual(sent.systemInstruction, { parts: [{ text: 'be brief' }] });
                assert.deepEqual(sent.contents, [{ role: 'user', parts: [{ text }] }]);
            }
        });

        it('a stream assembles to the whole answer, without a usage chunk unless asked', T, async () => {
            const n = nonce('s');
            const text = `stream this ${format} ${n}`;
            const whole = await client.chat.completions.create({ model, messages: [{ role: 'user', content: text }] });
            const got = await collect(await client.chat.completions.create({
                model,
                messages: [{ role: 'user', content: text }],
                stream: true,
            }));
            assert.equal(got.content, whole.choices[0].message.content);
            assert.equal(got.finish, 'stop');
            assert.ok(got.chunks.every((c) => c.choices.length === 1), 'no usage-only chunk the client did not ask for');
            assert.ok(got.chunks.every((c) => c.model === upstreamModel));
            assert.equal(new Set(got.chunks.map((c) => c.id)).size, 1, 'every chunk carries the same id');
            assert.ok(got.order.filter((k) => k === 'content').length >= words(reply(text)), 'text arrived word by word');
            const recs = await mock.requestsWith(n, { count: 2 });
            assert.equal(recs.length, 2);
            const streamed = recs[1]; /* the log is oldest first */
            if (format === 'gemini') assert.equal(streamed.url, `/v1beta/models/${upstreamModel}:streamGenerateContent?alt=sse`);
            if (format === 'anthropic') assert.equal(JSON.parse(streamed.body).stream, true);
        });

        it('stream_options.include_usage ends the stream with the upstream usage', T, async () => {
            const text = `usage please ${format} ${nonce('u')}`;
            const got = await collect(await client.chat.completions.create({
                model,
                messages: [{ role: 'user', content: text }],
                stream: true,
                stream_options: { include_usage: true },
            }));
            const last = got.chunks.at(-1);
            assert.deepEqual(last.choices, []);
            const prompt = promptTokens([text]);
            const completion = words(reply(text));
            assert.deepEqual(last.usage, { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion });
            assert.ok(got.chunks.slice(0, -1).every((c) => c.choices.length === 1));
            assert.equal(got.content, reply(text));
        });

        it('a function tool is called with JSON arguments', T, async () => {
            const n = nonce('tool');
            const text = `please call a tool for ${n}`;
            const c = await client.chat.completions.create({ model, messages: [{ role: 'user', content: text }], tools });
            assert.equal(c.choices[0].finish_reason, 'tool_calls');
            const msg = c.choices[0].message;
            assert.equal(msg.content, null);
            assert.equal(msg.tool_calls.length, 1);
            const call = msg.tool_calls[0];
            assert.equal(call.id, fx.callId(0));
            assert.equal(call.type, 'function');
            assert.equal(call.function.name, 'search_docs');
            assert.equal(JSON.parse(call.function.arguments).query, text);
            assert.equal(call.function.arguments, JSON.stringify({ query: text }), 'compact JSON, as OpenAI sends it');
            assert.equal(c.usage.completion_tokens, callTokens(call.function.arguments));

            const { sent } = await upstream(n);
            if (format === 'openai') {
                assert.deepEqual(sent.tools, tools);
            } else if (format === 'anthropic') {
                assert.deepEqual(sent.tools, tools.map((t) => ({
                    name: t.function.name,
                    description: t.function.description,
                    input_schema: t.function.parameters,
                })));
            } else {
                assert.deepEqual(sent.tools, [{
                    functionDeclarations: [
                        {
                            name: 'search_docs',
                            description: 'Search the documentation',
                            parameters: { type: 'OBJECT', properties: { query: { type: 'STRING' } }, required: ['query'] },
                        },
                        /* an object schema without properties is left out: Gemini rejects it */
                        { name: 'get_time', description: 'Local time' },
                    ],
                }]);
            }
        });

        it('parallel tools: one call per tool, in order', T, async () => {
            const text = `parallel tools please ${nonce('par')}`;
            const c = await client.chat.completions.create({ model, messages: [{ role: 'user', content: text }], tools });
            assert.equal(c.choices[0].finish_reason, 'tool_calls');
            const calls = c.choices[0].message.tool_calls;
            assert.deepEqual(calls.map((t) => t.function.name), ['search_docs', 'get_time']);
            assert.deepEqual(calls.map((t) => t.id), [fx.callId(0), fx.callId(1)]);
            for (const t of calls) assert.deepEqual(JSON.parse(t.function.arguments), { query: text });
            assert.equal(c.usage.completion_tokens, callTokens(JSON.stringify({ query: text }), 2));
        });

        it('streamed tool calls assemble per index from argument deltas', T, async () => {
            const text = `parallel tools, streamed for a long enough argument string ${nonce('stc')}`;
            const got = await collect(await client.chat.completions.create({
                model,
                messages: [{ role: 'user', content: text }],
                tools,
                stream: true,
                stream_options: { include_usage: true },
            }));
            assert.equal(got.finish, 'tool_calls');
            assert.equal(got.calls.length, 2);
            const args = JSON.stringify({ query: text });
            got.calls.forEach((c, i) => {
                assert.equal(c.id, fx.callId(i));
                assert.equal(c.name, tools[i].function.name);
                assert.equal(c.arguments, args);
                if (fx.streamsArguments) {
                    /* the mock sends 8-byte pieces; each must reach the client as its own delta */
                    assert.equal(c.pieces, Math.ceil(Buffer.byteLength(args) / 8), `call ${i} arguments in pieces`);
                } else {
                    assert.equal(c.pieces, 1, 'Gemini sends a call whole');
                }
            });
            /* call 0 is complete before call 1 starts */
            assert.ok(got.order.lastIndexOf('call0') < got.order.indexOf('call1'));
            assert.equal(got.chunks.at(-1).usage.completion_tokens, callTokens(args, 2));
        });

        it('a tool result turn is answered with text', T, async () => {
            const n = nonce('turn');
            const text = `call a tool, then answer ${n}`;
            const first = await client.chat.completions.create({ model, messages: [{ role: 'user', content: text }], tools });
            const asked = first.choices[0].message;
            assert.equal(asked.tool_calls.length, 1);
            const result = '{"temp_c":21,"sky":"clear"}';
            const messages = [
                { role: 'user', content: text },
                asked,
                { role: 'tool', tool_call_id: asked.tool_calls[0].id, content: result },
            ];
            const c = await client.chat.completions.create({ model, messages, tools });
            assert.equal(c.choices[0].finish_reason, 'stop');
            assert.equal(c.choices[0].message.content, reply(text));
            /* user text, the assistant's call (no words), the tool result (one word): the same in every format */
            assert.equal(c.usage.prompt_tokens, promptTokens([text, '', result]));

            const recs = await mock.requestsWith(n, { count: 2 });
            assert.equal(recs.length, 2);
            const sent = JSON.parse(recs[1].body);
            const id = fx.callId(0);
            if (format === 'openai') {
                assert.deepEqual(sent.messages, JSON.parse(JSON.stringify(messages)));
            } else if (format === 'anthropic') {
                assert.deepEqual(sent.messages, [
                    { role: 'user', content: text },
                    { role: 'assistant', content: [{ type: 'tool_use', id, name: 'search_docs', input: { query: text } }] },
                    { role: 'user', content: [{ type: 'tool_result', tool_use_id: id, content: result }] },
                ]);
            } else {
                assert.deepEqual(sent.contents, [
                    { role: 'user', parts: [{ text }] },
                    {
                        role: 'model',
                        parts: [{
                            functionCall: { name: 'search_docs', args: { query: text } },
                            /* history without a signature gets Google's documented placeholder */
                            thoughtSignature: 'skip_thought_signature_validator',
                        }],
                    },
                    { role: 'user', parts: [{ functionResponse: { name: 'search_docs', response: JSON.parse(result) } }] },
                ]);
            }
        });

        it('an image part is translated into the upstream image block', T, async () => {
            const n = nonce('img');
            const text = `what is in this picture ${n}`;
            const messages = [{
                role: 'user',
                content: [
                    { type: 'text', text },
                    { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG}`, detail: 'low' } },
                ],
            }];
            const c = await client.chat.completions.create({ model, messages });
            assert.equal(c.choices[0].message.content, reply(text));
            assert.equal(c.usage.prompt_tokens, promptTokens([text], 1), 'the upstream saw one image');
            const { sent } = await upstream(n);
            if (format === 'openai') {
                assert.deepEqual(sent.messages, messages);
            } else if (format === 'anthropic') {
                assert.deepEqual(sent.messages[0].content, [
                    { type: 'text', text },
                    { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG } },
                ]);
            } else {
                assert.deepEqual(sent.contents[0].parts, [{ text }, { inlineData: { mimeType: 'image/png', data: PNG } }]);
            }
        });

        it('"think first": the reasoning arrives as reasoning_content, whole and streamed', T, async () => {
            const text = `think first about ${format} ${nonce('think')}`;
            const c = await client.chat.completions.create({ model, messages: [{ role: 'user', content: text }] });
            const msg = c.choices[0].message;
            assert.equal(msg.reasoning_content, thinking(text));
            assert.equal(msg.content, reply(text));
            assert.equal(c.usage.completion_tokens, words(reply(text)) + words(thinking(text)));
            if (format === 'anthropic') assert.match(msg.reasoning_signature, /^mock-signature-\d+$/);
            if (format !== 'anthropic') {
                /* Anthropic reports no separate reasoning count */
                assert.equal(c.usage.completion_tokens_details.reasoning_tokens, words(thinking(text)));
            }

            const got = await collect(await client.chat.completions.create({
                model,
                messages: [{ role: 'user', content: text }],
                stream: true,
            }));
            assert.equal(got.reasoning, thinking(text));
            assert.equal(got.content, reply(text));
            assert.ok(got.order.lastIndexOf('reasoning') < got.order.indexOf('content'), 'reasoning comes first');
            assert.ok(got.order.filter((k) => k === 'reasoning').length >= words(thinking(text)), 'streamed piece by piece');
        });

        if (format !== 'openai') {
            it('reasoning_effort asks the upstream for thinking', T, async () => {
                const n = nonce('effort');
                const text = `consider this ${n}`;
                const c = await client.chat.completions.create({
                    model,
                    messages: [{ role: 'user', content: text }],
                    reasoning_effort: 'low',
                });
                assert.equal(c.choices[0].message.reasoning_content, thinking(text));
                const { sent } = await upstream(n);
                if (format === 'anthropic') {
                    assert.deepEqual(sent.thinking, { type: 'enabled', budget_tokens: 1024 });
                    assert.equal(sent.max_tokens, 4096);
                } else {
                    assert.deepEqual(sent.generationConfig, { thinkingConfig: { includeThoughts: true, thinkingBudget: 1024 } });
                }
            });
        }

        it('the provider key goes upstream in the format\'s own header', T, async () => {
            const n = nonce('auth');
            await client.chat.completions.create({ model, messages: [{ role: 'user', content: `auth ${n}` }] });
            const { rec } = await upstream(n);
            const key = UPSTREAM_KEYS[provider].value;
            if (format === 'openai') {
                assert.equal(recordedHeader(rec, 'authorization'), `Bearer ${key}`);
            } else if (format === 'anthropic') {
                assert.equal(recordedHeader(rec, 'x-api-key'), key);
                assert.equal(recordedHeader(rec, 'anthropic-version'), '2023-06-01');
                assert.equal(recordedHeader(rec, 'authorization'), undefined);
            } else {
                assert.equal(recordedHeader(rec, 'x-goog-api-key'), key);
                assert.equal(recordedHeader(rec, 'authorization'), undefined);
            }
            assert.ok(!rec.body.includes(stack.key), 'the LEO key never goes upstream');
            assert.ok(!rec.headers.some(([, v]) => v.includes(stack.key)), 'the LEO key never goes upstream');
        });

        it('an upstream 429 throws RateLimitError with Retry-After relayed', T, async () => {
            await assert.rejects(
                client.chat.completions.create({ model: `${model}-rl`, messages: [{ role: 'user', content: 'slow down [[mock:status=429;retry_after=3]]' }] }),
                (err) => {
                    assert.ok(err instanceof OpenAI.RateLimitError, `got ${err && err.constructor.name}: ${err}`);
                    assert.equal(err.status, 429);
                    assert.equal(err.code, 'upstream_rate_limited');
                    assert.equal(err.headers.get('retry-after'), '3');
                    assert.match(err.message, /mock fault: injected status 429/);
                    return true;
                },
            );
        });

        it('an upstream 500 throws InternalServerError with the gateway status 502', T, async () => {
            await assert.rejects(
                client.chat.completions.create({ model, messages: [{ role: 'user', content: 'break [[mock:status=500]]' }] }),
                (err) => {
                    assert.ok(err instanceof OpenAI.InternalServerError, `got ${err && err.constructor.name}: ${err}`);
                    assert.equal(err.status, 502);
                    assert.equal(err.code, 'upstream_error');
                    assert.match(err.message, new RegExp(`upstream "${provider}" returned status 500: .*mock fault: injected status 500`));
                    return true;
                },
            );
        });

        it('a stream cut by the upstream makes the iteration throw', T, async () => {
            const text = 'one two three four five six seven [[mock:reset_after_events=3]]';
            const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: text }], stream: true });
            let content = '';
            let chunks = 0;
            await assert.rejects(
                (async () => {
                    for await (const chunk of stream) {
                        chunks += 1;
                        content += chunk.choices[0]?.delta?.content || '';
                    }
                })(),
                (err) => {
                    assert.ok(err instanceof OpenAI.APIError, `got ${err && err.constructor.name}: ${err}`);
                    assert.match(err.message, /ended before completion/);
                    return true;
                },
            );
            assert.ok(chunks >= 1, 'the chunks before the cut were delivered');
            assert.ok(reply(text).startsWith(content), `partial content ${JSON.stringify(content)}`);
            assert.ok(content.length < reply(text).length);
        });

        it('a stream cut right after a tool call started throws after delivering that delta', T, async () => {
            const text = 'call a tool and then fail [[mock:tool_then_reset]]';
            const stream = await client.chat.completions.create({
                model,
                messages: [{ role: 'user', content: text }],
                tools,
                stream: true,
            });
            const calls = [];
            await assert.rejects(
                (async () => {
                    for await (const chunk of stream) for (const tc of chunk.choices[0]?.delta?.tool_calls || []) calls.push(tc);
                })(),
                (err) => err instanceof OpenAI.APIError && /ended before completion/.test(err.message),
            );
            assert.ok(calls.length >= 1);
            assert.equal(calls[0].id, fx.callId(0));
            assert.equal(calls[0].function.name, 'search_docs');
            const args = calls.map((tc) => tc.function?.arguments || '').join('');
            const whole = JSON.stringify({ query: text });
            if (fx.streamsArguments) {
                /* the first 8-byte piece got through, and nothing was held back waiting for the rest */
                assert.equal(args, whole.slice(0, 8));
            } else {
                assert.equal(args, whole);
            }
        });

        it('a refusal finishes with content_filter, whole and streamed', T, async () => {
            const c = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'bad idea [[mock:blocked]]' }] });
            assert.equal(c.choices[0].finish_reason, 'content_filter');
            assert.equal(c.choices[0].message.content, null);
            assert.equal(c.usage.completion_tokens, 0);
            const got = await collect(await client.chat.completions.create({
                model,
                messages: [{ role: 'user', content: 'bad idea [[mock:blocked]]' }],
                stream: true,
            }));
            assert.equal(got.finish, 'content_filter');
            assert.equal(got.content, '');
        });
    });
}

describe('openai SDK: other routes', () => {
    it('embeddings.create on the OpenAI-backed model', T, async () => {
        const e = await client.embeddings.create({ model: 'gpt-mock', input: ['hello world', 'again'] });
        assert.equal(e.object, 'list');
        assert.equal(e.model, 'mock-small');
        assert.equal(e.data.length, 2);
        for (const [i, d] of e.data.entries()) {
            assert.equal(d.index, i);
            assert.equal(d.embedding.length, 8);
            const norm = Math.sqrt(d.embedding.reduce((s, v) => s + v * v, 0));
            assert.ok(Math.abs(norm - 1) < 1e-5, `unit vector, norm ${norm}`);
        }
        assert.deepEqual(e.usage, { prompt_tokens: 3, total_tokens: 3 });
    });

    it('embeddings.create on the Gemini-backed model: the same vectors, through batchEmbedContents', T, async () => {
        const n = nonce('gemb');
        const input = [`hello world ${n}`, 'again'];
        const viaOpenAI = await client.embeddings.create({ model: 'gpt-mock', input });
        /* the SDK asks for base64 by default: the gateway encodes Gemini's floats as little-endian float32 */
        const viaGemini = await client.embeddings.create({ model: 'gemini-mock', input });
        assert.equal(viaGemini.model, 'gemini-2.5-flash');
        assert.deepEqual(viaGemini.data.map((d) => d.embedding), viaOpenAI.data.map((d) => d.embedding),
            'the mock embeds the same text to the same vector in both formats');
        const floats = await client.embeddings.create({ model: 'gemini-mock', input, encoding_format: 'float', dimensions: 4 });
        assert.equal(floats.data.length, 2);
        assert.ok(floats.data.every((d) => d.embedding.length === 4));
        /* Gemini reports no usage for embeddings: the gateway estimates ceil(characters / 4) */
        const chars = input.reduce((k, t) => k + [...t].length, 0);
        assert.deepEqual(viaGemini.usage, { prompt_tokens: Math.ceil(chars / 4), total_tokens: Math.ceil(chars / 4) });
        const recs = (await mock.requestsWith(n, { count: 3 })).filter((r) => r.path.includes(':batchEmbedContents'));
        assert.equal(recs.length, 2);
        assert.deepEqual(JSON.parse(recs[0].body), {
            requests: input.map((text) => ({ model: 'models/gemini-2.5-flash', content: { parts: [{ text }] } })),
        });
    });

    it('embeddings.create on the Anthropic-backed model is a 400 naming the provider type', T, async () => {
        await assert.rejects(client.embeddings.create({ model: 'claude-mock', input: 'x' }), (err) => {
            assert.ok(err instanceof OpenAI.BadRequestError, `got ${err && err.constructor.name}: ${err}`);
            assert.equal(err.status, 400);
            assert.equal(err.code, 'unsupported_for_provider');
            assert.equal(err.param, 'model');
            assert.match(err.message, /"anthropic" provider, which has no \/v1\/embeddings API/);
            return true;
        });
    });

    it('models.list names the three models', T, async () => {
        const ids = [];
        for await (const m of client.models.list()) ids.push(m.id);
        assert.deepEqual(ids, FORMATS.flatMap((f) => [MODELS[f].name, `${MODELS[f].name}-rl`]));
    });
});
