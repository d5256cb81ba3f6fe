/*
 * providers-anthropic-sdk.test.mjs — the official `@anthropic-ai/sdk` against the gateway's /v1/messages, served
 * by each of the three upstream wire formats: Anthropic (passthrough), OpenAI and Gemini (translated through the
 * canonical form by gateway/providers/messages.c and the upstream adapter).
 *
 * The client's base URL is the gateway root and its API key is the LEO key, which the SDK sends as x-api-key.
 * Models and the mock's counting rules come from tests/integration/lib/providers.mjs. Every case runs against
 * every backend; what the SDK parses must be the same whatever format served it (text, tool_use input rebuilt
 * from input_json_delta pieces, thinking, stop_reason, usage, typed errors). Retries are off (maxRetries: 0).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import Anthropic from '@anthropic-ai/sdk';

import { nonce } from '../integration/lib/harness.mjs';
import {
    FORMATS,
    MODELS,
    callTokens,
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
    client = new Anthropic({ apiKey: stack.key, baseURL: stack.gw.url, maxRetries: 0, timeout: 15000 });
}, { timeout: 30000 });

after(async () => {
    if (stack) await stack.stop();
}, { timeout: 30000 });

const tools = [
    {
        name: 'search_docs',
        description: 'Search the documentation',
        input_schema: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] },
    },
    { name: 'get_time', description: 'Local time', input_schema: { type: 'object', properties: {} } },
];

const PER_FORMAT = {
    /* the model name the answer reports: the upstream's own in passthrough, the configured name when translated
     * (gateway/providers/messages.h: leo_messages_from_canonical reports the client's model name) */
    anthropic: { model: (m) => m.upstream, callId: (i) => `toolu_mock_${i + 1}`, streamsArguments: true },
    openai: { model: (m) => m.name, callId: (i) => `call_mock_${i + 1}`, streamsArguments: true },
    gemini: { model: (m) => m.name, callId: (i) => `call_0_${i}`, streamsArguments: false },
};

/** The gateway's documented estimate (gateway/tokens.h) for plain-text messages. */
function estimate(texts) {
    const chars = texts.reduce((n, t) => n + [...t].length, 0);
    return Math.ceil(chars / 4) + 4 * texts.length + 3;
}

for (const format of FORMATS) {
    const m = MODELS[format];
    const model = m.name;
    const fx = PER_FORMAT[format];

    describe(`anthropic SDK → ${model} (${format} upstream)`, () => {
        it('messages.create returns the text, end_turn and the upstream usage', T, async () => {
            const n = nonce('c');
            const text = `hello ${format} ${n}`;
            const { data: msg, response } = await client.messages
                .create({ model, max_tokens: 256, system: 'be brief', messages: [{ role: 'user', content: text }] })
                .withResponse();
            assert.equal(msg.type, 'message');
            assert.equal(msg.role, 'assistant');
            assert.match(msg.id, /^msg_/);
            assert.equal(msg.model, fx.model(m));
            assert.deepEqual(msg.content, [{ type: 'text', text: reply(text) }]);
            assert.equal(msg.stop_reason, 'end_turn');
            assert.equal(msg.stop_sequence, null);
            assert.deepEqual(msg.usage, { input_tokens: promptTokens(['be brief', text]), output_tokens: words(reply(text)) });
            assert.equal(response.headers.get('x-leo-deployment'), `${m.provider}/${m.upstream}`);

            /* the system prompt in the upstream's format */
            const sent = JSON.parse((await mock.requestWith(n)).body);
            if (format === 'anthropic') {
                assert.equal(sent.system, 'be brief');
            } else if (format === 'openai') {
                assert.deepEqual(sent.messages, [{ role: 'system', content: 'be brief' }, { role: 'user', content: text }]);
                assert.equal(sent.max_tokens, 256);
            } else {
                assert.deepEqual(sent.systemInstruction, { parts: [{ text: 'be brief' }] });
                assert.deepEqual(sent.generationConfig, { maxOutputTokens: 256 });
            }
        });

        it('messages.stream: on("text") and finalMessage() give the non-streamed answer', T, async () => {
            const text = `stream to the sdk ${format} ${nonce('s')}`;
            const params = { model, max_tokens: 256, messages: [{ role: 'user', content: text }] };
            const whole = await client.messages.create(params);
            const stream = client.messages.stream(params);
            let streamed = '';
            let pieces = 0;
            stream.on('text', (delta) => {
                streamed += delta;
                pieces += 1;
            });
            const final = await stream.finalMessage();
            assert.equal(streamed, whole.content[0].text);
            assert.equal(pieces, words(reply(text)), 'one text event per word, as the upstream sent them');
            assert.deepEqual(final.content, whole.content);
            assert.equal(final.stop_reason, 'end_turn');
            assert.equal(final.usage.output_tokens, whole.usage.output_tokens);
            assert.equal(final.usage.input_tokens, whole.usage.input_tokens);
        });

        it('the raw stream iterator sees the Anthropic event sequence in order', T, async () => {
            /* the SDK's iterator drops ping events; tests/integration/providers.test.mjs checks the bytes */
            const text = `raw events ${format} ${nonce('raw')}`;
            const stream = await client.messages.create({
                model,
                max_tokens: 256,
                messages: [{ role: 'user', content: text }],
                stream: true,
            });
            const events = [];
            for await (const ev of stream) events.push(ev);
            const k = words(reply(text));
            const expected = [
                'message_start',
                'content_block_start',
                ...Array(k).fill('content_block_delta'),
                'content_block_stop',
                'message_delta',
                'message_stop',
            ];
            assert.deepEqual(events.map((e) => e.type), expected);
            assert.equal(events[0].message.role, 'assistant');
            assert.deepEqual(events[0].message.content, []);
            const start = events.find((e) => e.type === 'content_block_start');
            assert.deepEqual(start, { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } });
            const deltas = events.filter((e) => e.type === 'content_block_delta');
            assert.ok(deltas.every((e) => e.index === 0 && e.delta.type === 'text_delta'));
            assert.equal(deltas.map((e) => e.delta.text).join(''), reply(text));
            const md = events.at(-2);
            assert.deepEqual(md.delta, { stop_reason: 'end_turn', stop_sequence: null });
            assert.equal(md.usage.output_tokens, k);
        });

        it('tool use: a tool_use block with input, whole and streamed', T, async () => {
            const text = `please call a tool for ${format} ${nonce('tool')}`;
            const params = { model, max_tokens: 256, tools, messages: [{ role: 'user', content: text }] };
            const msg = await client.messages.create(params);
            assert.equal(msg.stop_reason, 'tool_use');
            assert.deepEqual(msg.content, [{ type: 'tool_use', id: fx.callId(0), name: 'search_docs', input: { query: text } }]);
            assert.equal(msg.usage.output_tokens, callTokens(JSON.stringify({ query: text })));

            const stream = client.messages.stream(params);
            const partials = [];
            stream.on('streamEvent', (ev) => {
                if (ev.type === 'content_block_delta' && ev.delta.type === 'input_json_delta') partials.push(ev.delta.partial_json);
            });
            const final = await stream.finalMessage();
            assert.deepEqual(final.content, msg.content, 'the SDK rebuilt the input from the streamed pieces');
            assert.equal(final.stop_reason, 'tool_use');
            const args = JSON.stringify({ query: text });
            assert.equal(partials.join(''), args);
            if (fx.streamsArguments) assert.equal(partials.length, Math.ceil(Buffer.byteLength(args) / 8));
            else assert.equal(partials.length, 1, 'Gemini sends a call whole');
        });

        it('parallel tools: one tool_use block per tool, streamed in order', T, async () => {
            const text = `parallel tools for ${format} ${nonce('par')}`;
            const stream = client.messages.stream({ model, max_tokens: 256, tools, messages: [{ role: 'user', content: text }] });
            const starts = [];
            stream.on('streamEvent', (ev) => {
                if (ev.type === 'content_block_start') starts.push([ev.index, ev.content_block.type, ev.content_block.name]);
            });
            const final = await stream.finalMessage();
            assert.deepEqual(starts, [[0, 'tool_use', 'search_docs'], [1, 'tool_use', 'get_time']]);
            assert.deepEqual(final.content, [
                { type: 'tool_use', id: fx.callId(0), name: 'search_docs', input: { query: text } },
                { type: 'tool_use', id: fx.callId(1), name: 'get_time', input: { query: text } },
            ]);
            assert.equal(final.stop_reason, 'tool_use');
        });

        it('a tool_result turn is answered with text', T, async () => {
            const n = nonce('turn');
            const text = `call a tool, then answer ${n}`;
            const first = await client.messages.create({ model, max_tokens: 256, tools, messages: [{ role: 'user', content: text }] });
            const use = first.content[0];
            assert.equal(use.type, 'tool_use');
            const result = '{"temp_c":21,"sky":"clear"}';
            const messages = [
                { role: 'user', content: text },
                { role: 'assistant', content: first.content },
                { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: result }] },
            ];
            const msg = await client.messages.create({ model, max_tokens: 256, tools, messages });
            assert.equal(msg.stop_reason, 'end_turn');
            assert.deepEqual(msg.content, [{ type: 'text', text: reply(text) }]);
            assert.equal(msg.usage.input_tokens, promptTokens([text, '', result]));

            const recs = await mock.requestsWith(n, { count: 2 });
            assert.equal(recs.length, 2);
            const sent = JSON.parse(recs[1].body);
            if (format === 'anthropic') {
                assert.deepEqual(sent.messages, JSON.parse(JSON.stringify(messages)));
            } else if (format === 'openai') {
                assert.deepEqual(sent.messages, [
                    { role: 'user', content: text },
                    {
                        role: 'assistant',
                        content: null,
                        tool_calls: [{
                            id: use.id,
                            type: 'function',
                            function: { name: 'search_docs', arguments: JSON.stringify({ query: text }) },
                        }],
                    },
                    { role: 'tool', tool_call_id: use.id, content: result },
                ]);
            } else {
                assert.deepEqual(sent.contents.slice(1), [
                    {
                        role: 'model',
                        parts: [{
                            functionCall: { name: 'search_docs', args: { query: text } },
                            thoughtSignature: 'skip_thought_signature_validator',
                        }],
                    },
                    { role: 'user', parts: [{ functionResponse: { name: 'search_docs', response: JSON.parse(result) } }] },
                ]);
            }
        });

        /* Anthropic and Gemini think when asked by the budget; the OpenAI-format mock only on "think first" and
         * answers with DeepSeek's reasoning_content, which must become a thinking block too, never text */
        const thinkTitle = format === 'openai'
            ? 'reasoning_content from an OpenAI-compatible upstream becomes a thinking block, whole and streamed'
            : 'thinking with a budget gives a thinking block before the text, whole and streamed';
        it(thinkTitle, T, async () => {
            const n = nonce('think');
            const text = format === 'openai' ? `think first about this ${n}` : `consider this ${n}`;
            const params = {
                model,
                max_tokens: 2048,
                ...(format === 'openai' ? {} : { thinking: { type: 'enabled', budget_tokens: 1024 } }),
                messages: [{ role: 'user', content: text }],
            };
            const msg = await client.messages.create(params);
            assert.equal(msg.content.length, 2);
            assert.equal(msg.content[0].type, 'thinking');
            assert.equal(msg.content[0].thinking, thinking(text));
            if (format === 'anthropic') assert.match(msg.content[0].signature, /^mock-signature-\d+$/);
            else assert.equal(msg.content[0].signature, '', 'the upstream gives no signature for its reasoning');
            assert.deepEqual(msg.content[1], { type: 'text', text: reply(text) });
            assert.equal(msg.usage.output_tokens, words(reply(text)) + words(thinking(text)));

            const stream = client.messages.stream(params);
            let thought = '';
            stream.on('thinking', (delta) => {
                thought += delta;
            });
            const final = await stream.finalMessage();
            assert.equal(thought, thinking(text));
            assert.equal(final.content[0].type, 'thinking');
            assert.equal(final.content[0].thinking, thinking(text));
            assert.deepEqual(final.content[1], { type: 'text', text: reply(text) });

            const sent = JSON.parse((await mock.requestsWith(n, { count: 2 }))[0].body);
            if (format === 'anthropic') {
                assert.deepEqual(sent.thinking, params.thinking);
            } else if (format === 'gemini') {
                assert.deepEqual(sent.generationConfig, {
                    maxOutputTokens: 2048,
                    thinkingConfig: { includeThoughts: true, thinkingBudget: 1024 },
                });
            }
        });

        it('an upstream 429 throws RateLimitError with the Anthropic error shape', T, async () => {
            await assert.rejects(
                client.messages.create({ model: `${model}-rl`, max_tokens: 64, messages: [{ role: 'user', content: 'hold on [[mock:status=429;retry_after=3]]' }] }),
                (err) => {
                    assert.ok(err instanceof Anthropic.RateLimitError, `got ${err && err.constructor.name}: ${err}`);
                    assert.equal(err.status, 429);
                    assert.equal(err.error.type, 'error');
                    assert.equal(err.error.error.type, 'rate_limit_error');
                    assert.match(err.error.error.message, /mock fault: injected status 429/);
                    assert.equal(err.headers.get('retry-after'), '3');
                    return true;
                },
            );
        });

        it('an upstream 500 throws InternalServerError (502, api_error)', T, async () => {
            await assert.rejects(
                client.messages.create({ model, max_tokens: 64, messages: [{ role: 'user', content: 'break [[mock:status=500]]' }] }),
                (err) => {
                    assert.ok(err instanceof Anthropic.InternalServerError, `got ${err && err.constructor.name}: ${err}`);
                    assert.equal(err.status, 502);
                    assert.equal(err.error.error.type, 'api_error');
                    assert.match(err.error.error.message, new RegExp(`upstream "${m.provider}" returned status 500`));
                    return true;
                },
            );
        });

        it('a stream cut by the upstream rejects finalMessage() and the raw iterator', T, async () => {
            const text = 'one two three four five six seven [[mock:reset_after_events=3]]';
            const params = { model, max_tokens: 64, messages: [{ role: 'user', content: text }] };
            const stream = client.messages.stream(params);
            let streamed = '';
            stream.on('text', (d) => {
                streamed += d;
            });
            await assert.rejects(stream.finalMessage(), (err) => {
                assert.ok(err instanceof Anthropic.APIError, `got ${err && err.constructor.name}: ${err}`);
                return true;
            });
            assert.ok(reply(text).startsWith(streamed));
            assert.ok(streamed.length < reply(text).length);

            const raw = await client.messages.create({ ...params, stream: true });
            const types = [];
            await assert.rejects(
                (async () => {
                    for await (const ev of raw) types.push(ev.type);
                })(),
                (err) => err instanceof Anthropic.APIError,
            );
            assert.equal(types[0], 'message_start');
            assert.ok(!types.includes('message_stop'));
        });

        it('a stream cut after the first input_json_delta rejects after delivering it', T, async () => {
            const stream = client.messages.stream({
                model,
                max_tokens: 64,
                tools,
                messages: [{ role: 'user', content: 'call a tool and fail [[mock:tool_then_reset]]' }],
            });
            const partials = [];
            stream.on('streamEvent', (ev) => {
                if (ev.type === 'content_block_delta' && ev.delta.type === 'input_json_delta') partials.push(ev.delta.partial_json);
            });
            await assert.rejects(stream.finalMessage(), (err) => err instanceof Anthropic.APIError);
            assert.ok(partials.length >= 1, 'the first arguments piece was relayed before the cut');
            if (fx.streamsArguments) assert.equal(partials.join(''), '{"query"');
        });

        it('messages.countTokens', T, async () => {
            const text = `count these words for ${format}`;
            const { data, response } = await client.messages
                .countTokens({ model, messages: [{ role: 'user', content: text }] })
                .withResponse();
            if (format === 'anthropic') {
                assert.deepEqual(data, { input_tokens: promptTokens([text]) }, 'the upstream\'s own count');
                assert.equal(response.headers.get('x-leo-token-count'), null);
            } else {
                assert.deepEqual(data, { input_tokens: estimate([text]) }, 'the gateway estimate (gateway/tokens.h)');
                assert.ok(data.input_tokens > 0);
                assert.equal(response.headers.get('x-leo-token-count'), 'estimate');
            }
        });
    });
}

describe('anthropic SDK: gateway errors', () => {
    it('an unknown model throws NotFoundError with the Anthropic error shape', T, async () => {
        await assert.rejects(
            client.messages.create({ model: 'claude-nope', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }),
            (err) => {
                assert.ok(err instanceof Anthropic.NotFoundError, `got ${err && err.constructor.name}: ${err}`);
                assert.equal(err.status, 404);
                assert.deepEqual(err.error, {
                    type: 'error',
                    error: { type: 'not_found_error', message: 'model "claude-nope" is not configured' },
                });
                return true;
            },
        );
    });

    it('a bad key throws AuthenticationError', T, async () => {
        const bad = new Anthropic({ apiKey: 'sk-not-a-leo-key-0000', baseURL: stack.gw.url, maxRetries: 0 });
        await assert.rejects(
            bad.messages.create({ model: 'claude-mock', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }),
            (err) => {
                assert.ok(err instanceof Anthropic.AuthenticationError, `got ${err && err.constructor.name}: ${err}`);
                assert.equal(err.status, 401);
                assert.equal(err.error.type, 'error');
                assert.equal(err.error.error.type, 'authentication_error');
                assert.ok(!JSON.stringify(err.error).includes('sk-not-a-leo-key-0000'));
                return true;
            },
        );
    });
});
