/*
 * messages_sdk_stream.test.mjs — the official @anthropic-ai/sdk reads what the Anthropic Messages translator
 * (gateway/providers/messages.c) produces.
 *
 * The unit test binary prints the exact bytes of its golden cases (`test_messages --emit-stream <case>`: a
 * translated canonical chunk sequence as Anthropic SSE; `--emit-response <case>`: a translated chat.completion
 * as a Messages response). A node:http server answers POST /v1/messages with those bytes, the case named by the
 * request's model, and the SDK consumes them through messages.stream() + finalMessage(), the raw `stream: true`
 * iterator and a plain create(). The assertions are on what the SDK parsed: text, tool_use input rebuilt from
 * the partial JSON pieces, thinking with its signature, stop_reason, usage, and the typed error of a cut stream.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const sourceDir = process.env.LEO_SOURCE_DIR || path.resolve(here, '../..');
const buildDir = process.env.LEO_BUILD_DIR || path.join(sourceDir, 'build');
const sdkEntry = path.join(sourceDir, 'tests/e2e/node_modules/@anthropic-ai/sdk/index.mjs');
const { default: Anthropic, APIError } = await import(pathToFileURL(sdkEntry).href);

const T = { timeout: 15000 };

function emit(mode, name) {
    return execFileSync(path.join(buildDir, 'test_messages'), [mode, name], { timeout: 10000 });
}

let server, client;
const requests = [];

before(async () => {
    server = http.createServer((req, res) => {
        let body = '';
        req.setEncoding('utf8');
        req.on('data', (d) => (body += d));
        req.on('end', () => {
            if (req.method !== 'POST' || req.url !== '/v1/messages') {
                res.writeHead(404, { 'content-type': 'application/json' });
                res.end('{"type":"error","error":{"type":"not_found_error","message":"no such route"}}');
                return;
            }
            const params = JSON.parse(body);
            requests.push({ headers: req.headers, params });
            const name = params.model.replace(/^case:/, '');
            if (!params.stream) {
                res.writeHead(200, { 'content-type': 'application/json' });
                res.end(emit('--emit-response', name));
                return;
            }
            const bytes = emit('--emit-stream', name);
            res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
            /* Odd-sized writes, so events and even UTF-8 sequences straddle the reads the SDK makes. */
            for (let i = 0; i < bytes.length; i += 37) res.write(bytes.subarray(i, i + 37));
            res.end();
        });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    client = new Anthropic({
        apiKey: 'sk-ant-test',
        baseURL: `http://127.0.0.1:${server.address().port}`,
        maxRetries: 0,
        timeout: 10000,
    });
});

after(async () => {
    if (server) {
        server.closeAllConnections();
        server.close();
        await once(server, 'close');
    }
});

const params = (name, extra = {}) => ({
    model: `case:${name}`,
    max_tokens: 1024,
    messages: [{ role: 'user', content: 'hello' }],
    ...extra,
});

describe('messages.stream() + finalMessage()', () => {
    it('text: deltas joined, end_turn, usage from the usage chunk', T, async () => {
        const stream = client.messages.stream(params('text'));
        const pieces = [];
        stream.on('text', (delta) => pieces.push(delta));
        const msg = await stream.finalMessage();
        assert.deepEqual(pieces, ['Hello', ', "world"!\n']);
        assert.equal(msg.id, 'msg_01');
        assert.equal(msg.model, 'claude-front');
        assert.equal(msg.role, 'assistant');
        assert.deepEqual(msg.content, [{ type: 'text', text: 'Hello, "world"!\n' }]);
        assert.equal(msg.stop_reason, 'end_turn');
        assert.equal(msg.stop_sequence, null);
        assert.deepEqual(msg.usage, { input_tokens: 12, output_tokens: 4 });
        assert.equal(requests.at(-1).params.stream, true);
    });

    it('tools: parallel tool_use blocks with input rebuilt from the partial JSON', T, async () => {
        const stream = client.messages.stream(params('tools'));
        const partials = [];
        stream.on('inputJson', (partial, snapshot) => partials.push([partial, structuredClone(snapshot)]));
        const msg = await stream.finalMessage();
        assert.deepEqual(msg.content, [
            { type: 'text', text: 'Checking both.' },
            { type: 'tool_use', id: 'call_a', name: 'get_weather', input: { city: 'Paris' } },
            { type: 'tool_use', id: 'call_b', name: 'get_time', input: { tz: 'Asia/Tokyo' } },
        ]);
        /* Every arguments piece arrived as its own input_json_delta. */
        assert.deepEqual(
            partials.map(([p]) => p),
            ['{"city":', '"Paris"}', '{"tz":"Asia/', 'Tokyo"}'],
        );
        assert.deepEqual(partials[1][1], { city: 'Paris' });
        assert.equal(msg.stop_reason, 'tool_use');
        assert.deepEqual(msg.usage, { input_tokens: 50, cache_read_input_tokens: 40, output_tokens: 31 });
    });

    it('thinking: a thinking block with its signature, then text; cache usage', T, async () => {
        const stream = client.messages.stream(params('thinking'));
        const thinking = [];
        const signatures = [];
        stream.on('thinking', (delta) => thinking.push(delta));
        stream.on('signature', (sig) => signatures.push(sig));
        const msg = await stream.finalMessage();
        assert.deepEqual(thinking, ['Let me think', ' about 2+2.']);
        assert.deepEqual(signatures, ['EqQBsig==']);
        assert.deepEqual(msg.content, [
            { type: 'thinking', thinking: 'Let me think about 2+2.', signature: 'EqQBsig==' },
            { type: 'text', text: '4' },
        ]);
        assert.equal(msg.stop_reason, 'end_turn');
        assert.deepEqual(msg.usage, {
            input_tokens: 10,
            cache_creation_input_tokens: 5,
            cache_read_input_tokens: 10,
            output_tokens: 9,
        });
    });

    it('length: max_tokens', T, async () => {
        const msg = await client.messages.stream(params('length')).finalMessage();
        assert.deepEqual(msg.content, [{ type: 'text', text: 'The answer is' }]);
        assert.equal(msg.stop_reason, 'max_tokens');
        assert.deepEqual(msg.usage, { input_tokens: 3, output_tokens: 3 });
    });

    it('empty: a message without content blocks', T, async () => {
        const msg = await client.messages.stream(params('empty')).finalMessage();
        assert.deepEqual(msg.content, []);
        assert.equal(msg.stop_reason, 'end_turn');
        assert.deepEqual(msg.usage, { input_tokens: 5, output_tokens: 0 });
    });

    it('cut after a tool-call delta: the SDK raises a typed APIError', T, async () => {
        const stream = client.messages.stream(params('cut'));
        const seen = [];
        stream.on('streamEvent', (ev) => seen.push(ev.type));
        await assert.rejects(stream.finalMessage(), (err) => {
            assert.ok(err instanceof APIError, `not an APIError: ${err}`);
            assert.equal(err.type, 'api_error');
            assert.equal(err.apiMessage, 'upstream connection closed mid-stream');
            return true;
        });
        assert.deepEqual(seen, ['message_start', 'content_block_start', 'content_block_delta']);
    });
});

describe('the raw stream: true iterator', () => {
    it('yields the exact Anthropic event sequence', T, async () => {
        const stream = await client.messages.create(params('tools', { stream: true }));
        const events = [];
        for await (const ev of stream) events.push(ev);
        assert.deepEqual(
            events.map((e) => [e.type, e.index ?? null, e.delta?.type ?? e.content_block?.type ?? null]),
            [
                ['message_start', null, null],
                ['content_block_start', 0, 'text'],
                ['content_block_delta', 0, 'text_delta'],
                ['content_block_stop', 0, null],
                ['content_block_start', 1, 'tool_use'],
                ['content_block_delta', 1, 'input_json_delta'],
                ['content_block_delta', 1, 'input_json_delta'],
                ['content_block_stop', 1, null],
                ['content_block_start', 2, 'tool_use'],
                ['content_block_delta', 2, 'input_json_delta'],
                ['content_block_delta', 2, 'input_json_delta'],
                ['content_block_stop', 2, null],
                ['message_delta', null, null],
                ['message_stop', null, null],
            ],
        );
        assert.deepEqual(events[0].message, {
            id: 'msg_01',
            type: 'message',
            role: 'assistant',
            model: 'claude-front',
            content: [],
            stop_reason: null,
            stop_sequence: null,
            usage: { input_tokens: 50, output_tokens: 0 },
        });
        assert.deepEqual(events.at(-2).delta, { stop_reason: 'tool_use', stop_sequence: null });
    });

    it('stops with the error event of a cut stream', T, async () => {
        const stream = await client.messages.create(params('cut', { stream: true }));
        const types = [];
        await assert.rejects(
            (async () => {
                for await (const ev of stream) types.push(ev.type);
            })(),
            (err) => err instanceof APIError && err.type === 'api_error',
        );
        assert.deepEqual(types, ['message_start', 'content_block_start', 'content_block_delta']);
    });
});

describe('messages.create() without streaming', () => {
    it('parses a translated response with thinking, text and tool_use', T, async () => {
        const msg = await client.messages.create(params('tools'));
        assert.deepEqual(msg, {
            id: 'msg_r1',
            type: 'message',
            role: 'assistant',
            model: 'claude-front',
            content: [
                { type: 'thinking', thinking: 'Need two calls.', signature: 'c2ln' },
                { type: 'text', text: 'Looking up.' },
                { type: 'tool_use', id: 'call_1', name: 'get_weather', input: { city: 'Paris' } },
                { type: 'tool_use', id: 'call_2', name: 'get_time', input: {} },
            ],
            stop_reason: 'tool_use',
            stop_sequence: null,
            usage: { input_tokens: 5, cache_creation_input_tokens: 15, cache_read_input_tokens: 100, output_tokens: 40 },
        });
    });
});
