/*
 * openai-sdk.test.mjs — the official `openai` npm SDK against leo-gateway in front of the mock provider.
 *
 * The SDK is what applications use, so these cases check what they see: parsed completions, streamed chunks,
 * typed errors, tool calls, models, and the gateway's headers through withResponse()/asResponse(). Retries are
 * off (maxRetries: 0) so error cases are deterministic. The mock's request log shows what reached the upstream.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { expectedCost, nonce, recordedHeader, startStack } from '../integration/lib/harness.mjs';

const T = { timeout: 20000 };

let stack, gw, mock, client;

before(async () => {
    stack = await startStack();
    ({ gw, mock } = stack);
    client = new OpenAI({ apiKey: stack.keys.t1, baseURL: `${gw.url}/v1`, maxRetries: 0, timeout: 15000 });
}, { timeout: 30000 });

after(async () => {
    if (stack) await stack.stop();
}, { timeout: 30000 });

const words = (s) => s.split(/[ \t\n\r\v\f]+/).filter(Boolean).length;

const tools = [
    {
        type: 'function',
        function: {
            name: 'get_weather',
            description: 'Weather for a city',
            parameters: {
                type: 'object',
                properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['c', 'f'] } },
                required: ['city'],
            },
        },
    },
    {
        type: 'function',
        function: { name: 'get_time', description: 'Local time', parameters: { type: 'object', properties: {} } },
    },
];

describe('chat.completions through the SDK', () => {
    it('create() returns the content and usage', T, async () => {
        const text = `hello sdk ${nonce('sdk')}`;
        const c = await client.chat.completions.create({
            model: 'gpt-4o-mini',
            messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: text }],
            temperature: 0.2,
        });
        assert.equal(c.object, 'chat.completion');
        assert.equal(c.model, 'mock-small');
        assert.equal(c.choices.length, 1);
        assert.equal(c.choices[0].message.role, 'assistant');
        assert.equal(c.choices[0].message.content, `mock reply to: ${text}`);
        assert.equal(c.choices[0].finish_reason, 'stop');
        const prompt = words('be brief') + words(text) + 2 * 3;
        const completion = words(`mock reply to: ${text}`);
        assert.deepEqual(c.usage, { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion });
    });

    it('a stream assembles to the same content as the whole answer', T, async () => {
        const text = `stream through the sdk ${nonce('sdks')}`;
        const whole = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: text }] });
        const stream = await client.chat.completions.create({
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content: text }],
            stream: true,
        });
        let content = '';
        let chunks = 0;
        let finish = null;
        for await (const chunk of stream) {
            chunks += 1;
            assert.equal(chunk.object, 'chat.completion.chunk');
            assert.equal(chunk.choices.length, 1, 'no usage-only chunk when the client did not ask for it');
            content += chunk.choices[0].delta.content || '';
            finish = chunk.choices[0].finish_reason || finish;
        }
        assert.equal(content, whole.choices[0].message.content);
        assert.equal(chunks, words(content) + 2);
        assert.equal(finish, 'stop');
    });

    it('stream_options.include_usage gives a final usage chunk', T, async () => {
        const text = `usage please ${nonce('sdku')}`;
        const stream = await client.chat.completions.create({
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content: text }],
            stream: true,
            stream_options: { include_usage: true },
        });
        const chunks = [];
        for await (const chunk of stream) chunks.push(chunk);
        const last = chunks.at(-1);
        assert.deepEqual(last.choices, []);
        const completion = words(`mock reply to: ${text}`);
        assert.deepEqual(last.usage, {
            prompt_tokens: words(text) + 3,
            completion_tokens: completion,
            total_tokens: words(text) + 3 + completion,
        });
        assert.ok(chunks.slice(0, -1).every((c) => c.choices.length === 1));
    });

    it('an unknown model throws NotFoundError (404)', T, async () => {
        await assert.rejects(
            client.chat.completions.create({ model: 'gpt-5x', messages: [{ role: 'user', content: 'x' }] }),
            (err) => {
                assert.ok(err instanceof OpenAI.NotFoundError, `got ${err && err.constructor.name}: ${err}`);
                assert.equal(err.status, 404);
                assert.equal(err.code, 'model_not_found');
                assert.equal(err.param, 'model');
                assert.match(err.headers.get('x-leo-request-id') || '', /^req_/);
                return true;
            },
        );
    });

    it('a bad key throws AuthenticationError (401)', T, async () => {
        const bad = new OpenAI({ apiKey: 'sk-not-a-leo-key-0000', baseURL: `${gw.url}/v1`, maxRetries: 0 });
        await assert.rejects(
            bad.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] }),
            (err) => {
                assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err && err.constructor.name}: ${err}`);
                assert.equal(err.status, 401);
                assert.equal(err.code, 'invalid_api_key');
                assert.ok(!err.message.includes('sk-not-a-leo-key-0000'));
                return true;
            },
        );
    });

    it('an upstream 500 throws InternalServerError with the gateway status 502', T, async () => {
        await assert.rejects(
            client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: '[[mock:status=500]] x' }] }),
            (err) => {
                assert.ok(err instanceof OpenAI.InternalServerError, `got ${err && err.constructor.name}: ${err}`);
                assert.equal(err.status, 502);
                assert.equal(err.code, 'upstream_error');
                return true;
            },
        );
    });

    it('a stream cut by the upstream makes the iteration throw an APIError', T, async () => {
        const stream = await client.chat.completions.create({
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content: '[[mock:reset_after_events=3]] one two three four five six' }],
            stream: true,
        });
        let got = 0;
        await assert.rejects(
            (async () => {
                for await (const chunk of stream) {
                    assert.equal(chunk.object, 'chat.completion.chunk');
                    got += 1;
                }
            })(),
            (err) => {
                assert.ok(err instanceof OpenAI.APIError, `got ${err && err.constructor.name}: ${err}`);
                assert.match(err.message, /ended before completion/);
                return true;
            },
        );
        assert.equal(got, 3, 'the chunks before the cut were delivered');
    });
});

describe('request content passes through untouched', () => {
    it('tools and tool_choice reach the upstream byte for byte, and tool calls come back', T, async () => {
        const n = nonce('tools');
        const text = `please call a tool for Paris ${n}`;
        const c = await client.chat.completions.create({
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content: text }],
            tools,
            tool_choice: 'auto',
        });
        assert.equal(c.choices[0].finish_reason, 'tool_calls');
        const calls = c.choices[0].message.tool_calls;
        assert.equal(calls.length, 1);
        assert.equal(calls[0].type, 'function');
        assert.equal(calls[0].id, 'call_mock_1');
        assert.equal(calls[0].function.name, 'get_weather');
        assert.deepEqual(JSON.parse(calls[0].function.arguments), { query: text });

        const rec = await mock.requestWith(n);
        assert.ok(rec.body.includes(`"tools":${JSON.stringify(tools)}`), `tools byte-identical upstream: ${rec.body}`);
        const sent = JSON.parse(rec.body);
        assert.deepEqual(sent.tools, tools);
        assert.equal(sent.tool_choice, 'auto');
        assert.equal(sent.model, 'mock-small');
    });

    it('streamed tool calls assemble to the same call', T, async () => {
        const n = nonce('stools');
        const text = `call a tool, streamed ${n}`;
        const stream = await client.chat.completions.create({
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content: text }],
            tools,
            tool_choice: { type: 'function', function: { name: 'get_weather' } },
            stream: true,
        });
        let name = '';
        let args = '';
        let id = null;
        let finish = null;
        for await (const chunk of stream) {
            const d = chunk.choices[0]?.delta;
            for (const tc of d?.tool_calls || []) {
                if (tc.id) id = tc.id;
                name += tc.function?.name || '';
                args += tc.function?.arguments || '';
            }
            finish = chunk.choices[0]?.finish_reason || finish;
        }
        assert.equal(id, 'call_mock_1');
        assert.equal(name, 'get_weather');
        assert.deepEqual(JSON.parse(args), { query: text });
        assert.equal(finish, 'tool_calls');
        const rec = await mock.requestWith(n);
        assert.ok(rec.body.includes(`"tool_choice":{"type":"function","function":{"name":"get_weather"}}`), rec.body);
    });

    it('image content parts pass through untouched', T, async () => {
        const n = nonce('img');
        /* a 1x1 transparent PNG */
        const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=';
        const messages = [{
            role: 'user',
            content: [
                { type: 'text', text: `what is in this picture ${n}` },
                { type: 'image_url', image_url: { url: `data:image/png;base64,${png}`, detail: 'low' } },
            ],
        }];
        const c = await client.chat.completions.create({ model: 'gpt-4o-mini', messages });
        assert.equal(c.choices[0].message.content, `mock reply to: what is in this picture ${n}`);
        assert.equal(c.usage.prompt_tokens, words(`what is in this picture ${n}`) + 3 + 85, 'the image part was seen upstream');
        const rec = await mock.requestWith(n);
        assert.ok(rec.body.includes(`"messages":${JSON.stringify(messages)}`), `messages byte-identical: ${rec.body}`);
    });

    it('a bring-your-own key set as the SDK key goes upstream when X-API-Key carries the LEO key', T, async () => {
        const n = nonce('sdkbyok');
        const own = new OpenAI({
            apiKey: 'sk-user-own-sdk',
            baseURL: `${gw.url}/v1`,
            maxRetries: 0,
            defaultHeaders: { 'X-API-Key': stack.keys.t1 },
        });
        const c = await own.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `mine ${n}` }] });
        assert.equal(c.choices[0].message.content, `mock reply to: mine ${n}`);
        const rec = await mock.requestWith(n);
        assert.equal(recordedHeader(rec, 'authorization'), 'Bearer sk-user-own-sdk');
    });
});

describe('models and raw responses', () => {
    it('models.list returns the configured models', T, async () => {
        const ids = [];
        for await (const m of client.models.list()) {
            assert.equal(m.object, 'model');
            ids.push(m.id);
        }
        assert.deepEqual(ids, ['gpt-4o-mini', 'slow-model', 'dead-model', 'other-model', 'rl-model']);
        const one = await client.models.retrieve('gpt-4o-mini');
        assert.equal(one.id, 'gpt-4o-mini');
        await assert.rejects(client.models.retrieve('nope'), (err) => err instanceof OpenAI.NotFoundError);
    });

    it('withResponse() and asResponse() expose the request id and cost headers', T, async () => {
        const text = `headers ${nonce('hdr')}`;
        const { data, response } = await client.chat.completions
            .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: text }] })
            .withResponse();
        assert.match(response.headers.get('x-leo-request-id'), /^req_[0-9a-f]{20}$/);
        assert.equal(response.headers.get('x-leo-deployment'), 'mock/mock-small');
        assert.equal(response.headers.get('x-leo-cost-usd'),
            expectedCost(data.usage.prompt_tokens, data.usage.completion_tokens));
        assert.equal(data._request_id, response.headers.get('x-request-id'));

        const raw = await client.chat.completions
            .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: text }] })
            .asResponse();
        assert.equal(raw.status, 200);
        assert.match(raw.headers.get('x-leo-request-id'), /^req_/);
        assert.notEqual(raw.headers.get('x-leo-request-id'), response.headers.get('x-leo-request-id'));
        assert.match(raw.headers.get('x-leo-cost-usd'), /^\d+\.\d{8}$/);
        const body = await raw.json();
        assert.equal(body.choices[0].message.content, `mock reply to: ${text}`);
    });
});
