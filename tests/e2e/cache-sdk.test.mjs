/*
 * cache-sdk.test.mjs — answers from the exact cache as the official `openai` SDK sees them: a streamed answer
 * replayed from the cache parses, through the SDK's own stream parser, into exactly what the live stream gave
 * (content, tool calls, finish reason, usage), and a whole answer replayed as a stream the same.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { nonce, startStack } from '../integration/lib/harness.mjs';

const T = { timeout: 20000 };

let stack, mock, client;

before(async () => {
    stack = await startStack({ mutate: (c) => { c.cache = { ttl_s: 600 }; } });
    ({ mock } = stack);
    client = new OpenAI({ apiKey: stack.keys.t1, baseURL: `${stack.gw.url}/v1`, maxRetries: 0, timeout: 15000 });
}, { timeout: 30000 });

after(async () => {
    if (stack) await stack.stop();
}, { timeout: 30000 });

const tools = [{
    type: 'function',
    function: {
        name: 'get_weather',
        description: 'Weather for a city',
        parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    },
}];

/* Reads a stream through the SDK and returns what an application would collect from it, with the cache status. */
async function collect(params) {
    const { data: stream, response } = await client.chat.completions.create({ ...params, stream: true }).withResponse();
    const out = { content: '', tools: {}, finish: null, usage: null, chunks: 0 };
    for await (const chunk of stream) {
        out.chunks++;
        if (chunk.usage) out.usage = chunk.usage;
        for (const ch of chunk.choices) {
            if (ch.delta?.content) out.content += ch.delta.content;
            for (const tc of ch.delta?.tool_calls ?? []) {
                const t = (out.tools[tc.index] ??= { id: '', name: '', arguments: '' });
                if (tc.id) t.id = tc.id;
                if (tc.function?.name) t.name += tc.function.name;
                if (tc.function?.arguments) t.arguments += tc.function.arguments;
            }
            if (ch.finish_reason) out.finish = ch.finish_reason;
        }
    }
    return { ...out, status: response.headers.get('x-leo-cache-status') };
}

describe('cached answers through the SDK', () => {
    it('a streamed answer replays to the same content, finish reason and usage', T, async () => {
        const n = nonce('sdk');
        const params = {
            model: 'gpt-4o-mini', temperature: 0, stream_options: { include_usage: true },
            messages: [{ role: 'user', content: `a cached story ${n}` }],
        };
        const live = await collect(params);
        assert.equal(live.status, 'miss');
        const replay = await collect(params);
        assert.equal(replay.status, 'hit');
        assert.ok(live.content.length > 0);
        assert.equal(replay.content, live.content);
        assert.equal(replay.finish, live.finish);
        assert.deepEqual(replay.usage, live.usage);
        assert.equal((await mock.requestsWith(n)).length, 1);
    });

    it('tool calls replay with their ids, names and arguments', T, async () => {
        const n = nonce('tool');
        const params = {
            model: 'gpt-4o-mini', temperature: 0, tools: [...tools, { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } }],
            messages: [{ role: 'user', content: `weather in Paris, parallel tools please ${n}` }],
        };
        const live = await collect(params);
        const replay = await collect(params);
        assert.equal(replay.status, 'hit');
        assert.equal(live.finish, 'tool_calls');
        assert.equal(Object.keys(live.tools).length, 2);
        assert.deepEqual(replay.tools, live.tools);
        assert.equal(replay.finish, live.finish);
    });

    it('a whole answer replays as a stream, and a streamed one as a whole answer with its usage', T, async () => {
        const n = nonce('mix');
        const params = { model: 'gpt-4o-mini', temperature: 0, messages: [{ role: 'user', content: `mixed ${n}` }] };
        const { data: whole, response } = await client.chat.completions.create(params).withResponse();
        assert.equal(response.headers.get('x-leo-cache-status'), 'miss');
        const replay = await collect(params);
        assert.equal(replay.status, 'hit');
        assert.equal(replay.content, whole.choices[0].message.content);
        assert.equal(replay.finish, whole.choices[0].finish_reason);

        const m = nonce('mix2');
        const p2 = { model: 'gpt-4o-mini', seed: 3, messages: [{ role: 'user', content: `mixed ${m}` }] };
        const live = await collect(p2);
        const { data: again, response: r2 } = await client.chat.completions.create(p2).withResponse();
        assert.equal(r2.headers.get('x-leo-cache-status'), 'hit');
        assert.equal(again.choices[0].message.content, live.content);
        assert.ok(again.usage.total_tokens > 0);
    });
});
