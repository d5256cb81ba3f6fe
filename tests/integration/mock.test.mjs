// Integration tests of leo-mock-provider: the real binary, spoken to over real sockets with fetch and with raw
// TCP when the exact bytes on the wire matter (chunk boundaries, a connection cut before the end).
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';

const BIN = path.join(process.env.LEO_BUILD_DIR ?? 'build', 'leo-mock-provider');
const T = { timeout: 15000 };

let mock; // { proc, port, base, exited }

function startMock() {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const exited = new Promise((res) => proc.on('exit', (code, signal) => res({ code, signal })));
    const timer = setTimeout(() => reject(new Error(`mock did not start; stderr: ${err}`)), 5000);
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    proc.stderr.on('data', (d) => { err += d; });
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /^mock provider listening on 127\.0\.0\.1:(\d+)\n/m.exec(out);
      if (m) {
        clearTimeout(timer);
        const port = Number(m[1]);
        resolve({ proc, port, base: `http://127.0.0.1:${port}`, exited, stderr: () => err });
      }
    });
    exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`mock exited early (${code}): ${err}`)); });
  });
}

async function stopMock(m) {
  m.proc.kill('SIGTERM');
  const { code, signal } = await m.exited;
  assert.equal(signal, null, `mock died of ${signal}; stderr: ${m.stderr()}`);
  assert.equal(code, 0, `mock exit code; stderr: ${m.stderr()}`);
}

function chatBody(extra = {}, userText = 'hello there world') {
  return {
    model: 'gpt-test',
    messages: [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: userText },
    ],
    ...extra,
  };
}

async function postChat(body, headers = {}) {
  return fetch(`${mock.base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

// ---- raw HTTP over a TCP socket ------------------------------------------------------------------------

// Sends one request with Connection: close and collects everything until the server closes the connection.
// Returns the raw bytes plus the arrival time of each socket read.
function rawExchange(port, request, { destroyAfterMs } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    const reads = [];
    const t0 = performance.now();
    let timer = null;
    sock.on('connect', () => {
      sock.write(request);
      if (destroyAfterMs !== undefined) {
        timer = setTimeout(() => { sock.destroy(); resolve({ destroyed: true }); }, destroyAfterMs);
      }
    });
    sock.on('data', (d) => reads.push({ at: performance.now() - t0, data: d }));
    sock.on('error', (e) => { if (e.code !== 'ECONNRESET') reject(e); });
    sock.on('close', () => {
      if (timer) clearTimeout(timer);
      resolve({ raw: Buffer.concat(reads.map((r) => r.data)), reads, elapsed: performance.now() - t0 });
    });
  });
}

function httpRequest(method, pathname, { headers = [], body = '' } = {}) {
  const b = Buffer.from(body);
  let s = `${method} ${pathname} HTTP/1.1\r\nHost: 127.0.0.1\r\n`;
  for (const [k, v] of headers) s += `${k}: ${v}\r\n`;
  if (method !== 'GET' || b.length) s += `Content-Length: ${b.length}\r\n`;
  s += 'Connection: close\r\n\r\n';
  return Buffer.concat([Buffer.from(s), b]);
}

// Splits a raw response into status, headers and body; de-chunks a chunked body, keeping each chunk.
function parseResponse(raw) {
  const end = raw.indexOf('\r\n\r\n');
  assert.ok(end > 0, `no header block in ${JSON.stringify(raw.toString())}`);
  const lines = raw.subarray(0, end).toString().split('\r\n');
  const status = Number(lines[0].split(' ')[1]);
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
  }
  let rest = raw.subarray(end + 4);
  if (headers['transfer-encoding'] !== 'chunked') return { status, headers, body: rest, chunks: null, complete: true };
  const chunks = [];
  let complete = false;
  for (;;) {
    const nl = rest.indexOf('\r\n');
    if (nl < 0) break;
    const size = parseInt(rest.subarray(0, nl).toString(), 16);
    if (size === 0) { complete = rest.subarray(nl + 2, nl + 4).toString() === '\r\n'; break; }
    if (rest.length < nl + 2 + size + 2) break; // cut in the middle of a chunk
    chunks.push(rest.subarray(nl + 2, nl + 2 + size));
    rest = rest.subarray(nl + 2 + size + 2);
  }
  return { status, headers, body: Buffer.concat(chunks), chunks, complete };
}

async function rawChat(body, headers = []) {
  const res = await rawExchange(mock.port, httpRequest('POST', '/v1/chat/completions', {
    headers: [['Content-Type', 'application/json'], ...headers],
    body: JSON.stringify(body),
  }));
  return { ...parseResponse(res.raw), reads: res.reads, elapsed: res.elapsed };
}

// SSE: the events of a body, each the payload of its data: line.
function sseEvents(text) {
  return text.split('\n\n').filter((e) => e.length).map((e) => {
    assert.ok(e.startsWith('data: '), `not a data event: ${JSON.stringify(e)}`);
    return e.slice(6);
  });
}

// ---- tests ---------------------------------------------------------------------------------------------

describe('leo-mock-provider', () => {
  before(async () => { mock = await startMock(); });
  after(async () => { await stopMock(mock); });
  beforeEach(async () => {
    const r = await fetch(`${mock.base}/_mock/requests`, { method: 'DELETE' });
    assert.equal(r.status, 200);
  });

  it('answers a chat completion with the echoed reply and deterministic usage', T, async () => {
    const r = await postChat(chatBody());
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'application/json');
    assert.match(r.headers.get('x-request-id'), /^req-mock-\d+$/);
    assert.equal(r.headers.get('x-ratelimit-limit-requests'), '10000');
    assert.equal(r.headers.get('x-ratelimit-remaining-requests'), '9999');
    const j = await r.json();
    const n = r.headers.get('x-request-id').slice('req-mock-'.length);
    assert.equal(j.id, `chatcmpl-mock-${n}`);
    assert.equal(j.object, 'chat.completion');
    assert.equal(typeof j.created, 'number');
    assert.ok(Math.abs(j.created - Date.now() / 1000) < 60);
    assert.equal(j.model, 'gpt-test');
    assert.deepEqual(j.choices, [{
      index: 0,
      message: { role: 'assistant', content: 'mock reply to: hello there world' },
      finish_reason: 'stop',
    }]);
    // prompt: "be brief" (2) + "hello there world" (3) + 3 per message (6); completion: 6 words
    assert.deepEqual(j.usage, { prompt_tokens: 11, completion_tokens: 6, total_tokens: 17 });
  });

  it('concatenates text parts, counts image parts and keeps whitespace exactly', T, async () => {
    const r = await postChat({
      model: 'm',
      messages: [
        { role: 'user', content: 'first question' },
        { role: 'assistant', content: 'an answer' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'look at ' },
            { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } },
            { type: 'text', text: 'this\tpicture  now' },
          ],
        },
      ],
    });
    const j = await r.json();
    assert.equal(j.choices[0].message.content, 'mock reply to: look at this\tpicture  now');
    // words 2 + 2 + 5, 3 messages * 3, one image * 85
    assert.deepEqual(j.usage, { prompt_tokens: 9 + 9 + 85, completion_tokens: 8, total_tokens: 111 });
  });

  it('streams one chunk per word, each event in its own HTTP chunk, ending with [DONE]', T, async () => {
    const plain = await (await postChat(chatBody({}, 'stream  me\nplease'))).json();
    const r = await rawChat(chatBody({ stream: true }, 'stream  me\nplease'));
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'text/event-stream');
    assert.ok(r.complete, 'chunked stream terminated');
    const events = sseEvents(r.body.toString());
    assert.deepEqual(r.chunks.map((c) => c.toString()), events.map((e) => `data: ${e}\n\n`));
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    const id = `chatcmpl-mock-${r.headers['x-request-id'].slice('req-mock-'.length)}`;
    for (const c of chunks) {
      assert.equal(c.id, id);
      assert.equal(c.object, 'chat.completion.chunk');
      assert.equal(typeof c.created, 'number');
      assert.equal(c.model, 'gpt-test');
      assert.ok(!('usage' in c), 'no usage field without include_usage');
    }
    assert.deepEqual(chunks[0].choices, [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }]);
    const words = chunks.slice(1, -1).map((c) => {
      assert.equal(c.choices[0].finish_reason, null);
      return c.choices[0].delta.content;
    });
    assert.deepEqual(words, ['mock ', 'reply ', 'to: ', 'stream  ', 'me\n', 'please']);
    assert.equal(words.join(''), plain.choices[0].message.content);
    assert.deepEqual(chunks.at(-1).choices, [{ index: 0, delta: {}, finish_reason: 'stop' }]);
  });

  it('adds the usage chunk only when stream_options.include_usage is true', T, async () => {
    const r = await rawChat(chatBody({ stream: true, stream_options: { include_usage: true } }));
    assert.ok(r.complete);
    const events = sseEvents(r.body.toString());
    assert.equal(events.at(-1), '[DONE]');
    const usage = JSON.parse(events.at(-2));
    assert.deepEqual(usage.choices, []);
    assert.deepEqual(usage.usage, { prompt_tokens: 11, completion_tokens: 6, total_tokens: 17 });
    assert.equal(usage.object, 'chat.completion.chunk');
    const finish = JSON.parse(events.at(-3));
    assert.equal(finish.choices[0].finish_reason, 'stop');
    assert.equal(finish.usage, null);
    // include_usage false: no usage chunk
    const r2 = await rawChat(chatBody({ stream: true, stream_options: { include_usage: false } }));
    const ev2 = sseEvents(r2.body.toString());
    assert.equal(ev2.length, events.length - 1);
    assert.ok(ev2.slice(0, -1).every((e) => JSON.parse(e).choices.length === 1));
  });

  const tools = [
    { type: 'function', function: { name: 'search_docs', parameters: { type: 'object' } } },
    { type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } },
  ];

  it('answers tool calls when asked to call a tool, and all tools for "parallel tools"', T, async () => {
    const text = 'Please CALL A TOOL about "quotes" \\ now';
    const j = await (await postChat(chatBody({ tools }, text))).json();
    assert.equal(j.choices[0].finish_reason, 'tool_calls');
    assert.deepEqual(j.choices[0].message, {
      role: 'assistant',
      content: null,
      tool_calls: [{
        id: 'call_mock_1',
        type: 'function',
        function: { name: 'search_docs', arguments: JSON.stringify({ query: text }) },
      }],
    });
    assert.deepEqual(JSON.parse(j.choices[0].message.tool_calls[0].function.arguments), { query: text });

    const p = await (await postChat(chatBody({ tools }, 'use parallel tools'))).json();
    const calls = p.choices[0].message.tool_calls;
    assert.deepEqual(calls.map((c) => [c.id, c.function.name]),
      [['call_mock_1', 'search_docs'], ['call_mock_2', 'get_weather']]);
    // without tools the phrase is just text
    const n = await (await postChat(chatBody({}, 'call a tool'))).json();
    assert.equal(n.choices[0].message.content, 'mock reply to: call a tool');
  });

  it('streams tool calls as OpenAI does: a header delta, then argument pieces', T, async () => {
    const text = 'call a tool and parallel tools with ünïcode';
    const r = await rawChat(chatBody({ tools, stream: true }, text));
    assert.ok(r.complete);
    const events = sseEvents(r.body.toString());
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: null });
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'tool_calls');
    const expectedArgs = JSON.stringify({ query: text });
    const byIndex = new Map();
    for (const c of chunks.slice(1, -1)) {
      const [tc] = c.choices[0].delta.tool_calls;
      if ('id' in tc) {
        assert.ok(!byIndex.has(tc.index));
        assert.deepEqual(Object.keys(tc).sort(), ['function', 'id', 'index', 'type']);
        assert.equal(tc.type, 'function');
        assert.equal(tc.function.arguments, '');
        byIndex.set(tc.index, { id: tc.id, name: tc.function.name, args: '', pieces: 0 });
      } else {
        assert.deepEqual(Object.keys(tc).sort(), ['function', 'index']);
        assert.deepEqual(Object.keys(tc.function), ['arguments']);
        const call = byIndex.get(tc.index);
        assert.ok(Buffer.byteLength(tc.function.arguments) <= 8 + 3);
        call.args += tc.function.arguments;
        call.pieces++;
      }
    }
    assert.deepEqual([...byIndex.entries()].map(([i, c]) => [i, c.id, c.name, c.args]), [
      [0, 'call_mock_1', 'search_docs', expectedArgs],
      [1, 'call_mock_2', 'get_weather', expectedArgs],
    ]);
    assert.ok(byIndex.get(0).pieces >= Math.floor(Buffer.byteLength(expectedArgs) / 11));
  });

  it('lists models and answers deterministic embeddings', T, async () => {
    const m = await (await fetch(`${mock.base}/v1/models`)).json();
    assert.equal(m.object, 'list');
    assert.deepEqual(m.data.map((x) => x.id), ['mock-small', 'mock-large']);

    const embed = async (body) => {
      const r = await fetch(`${mock.base}/v1/embeddings`, { method: 'POST', body: JSON.stringify(body) });
      assert.equal(r.status, 200);
      return r.json();
    };
    const a = await embed({ model: 'emb', input: ['alpha beta', 'gamma'] });
    const b = await embed({ model: 'emb', input: 'alpha beta' });
    assert.equal(a.model, 'emb');
    assert.deepEqual(a.usage, { prompt_tokens: 3, total_tokens: 3 });
    assert.equal(a.data.length, 2);
    assert.equal(a.data[0].embedding.length, 8);
    assert.deepEqual(b.data[0].embedding, a.data[0].embedding);
    assert.notDeepEqual(a.data[1].embedding, a.data[0].embedding);
    const norm = Math.hypot(...a.data[0].embedding);
    assert.ok(Math.abs(norm - 1) < 1e-5);
    const c = await embed({ model: 'emb', input: 'alpha beta', encoding_format: 'base64' });
    const bytes = Buffer.from(c.data[0].embedding, 'base64');
    const floats = Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4));
    // the JSON numbers carry 9 significant digits: exactly the float32 values base64 encodes
    assert.deepEqual(floats, a.data[0].embedding.map(Math.fround));
    const d = await embed({ model: 'emb', input: 'x', dimensions: 3 });
    assert.equal(d.data[0].embedding.length, 3);
    const bad = await fetch(`${mock.base}/v1/embeddings`, { method: 'POST', body: '{"model":"emb"}' });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).error.param, 'input');
  });

  it('rejects bad JSON and missing fields with OpenAI-shaped 400s', T, async () => {
    const cases = [
      ['{"model":"m","messages":[', null],
      ['[1,2]', null],
      [JSON.stringify({ messages: [{ role: 'user', content: 'x' }] }), 'model'],
      [JSON.stringify({ model: 'm' }), 'messages'],
      [JSON.stringify({ model: 'm', messages: [] }), 'messages'],
      [JSON.stringify({ model: 'm', messages: [{ content: 'x' }] }), 'messages'],
    ];
    for (const [body, param] of cases) {
      const r = await postChat(body);
      assert.equal(r.status, 400, body);
      assert.match(r.headers.get('x-request-id'), /^req-mock-\d+$/);
      const j = await r.json();
      assert.equal(j.error.type, 'invalid_request_error');
      assert.equal(j.error.param, param, body);
      assert.equal(typeof j.error.message, 'string');
      assert.ok(j.error.message.length > 0);
    }
    const r = await fetch(`${mock.base}/v1/nope`);
    assert.equal(r.status, 404);
    assert.match((await r.json()).error.message, /\/v1\/nope/);
    const r405 = await fetch(`${mock.base}/v1/chat/completions`);
    assert.equal(r405.status, 405);
    await r405.body.cancel();
  });

  describe('faults', () => {
    it('status=429 answers an OpenAI error with Retry-After, from the header or the marker', T, async () => {
      const r = await postChat(chatBody(), { 'x-mock-fault': 'status=429' });
      assert.equal(r.status, 429);
      assert.equal(r.headers.get('retry-after'), '1');
      assert.equal(r.headers.get('retry-after-ms'), null);
      const j = await r.json();
      assert.equal(j.error.code, 'rate_limit_exceeded');
      assert.equal(typeof j.error.message, 'string');

      const r2 = await postChat(chatBody({}, 'hi [[mock:status=429;retry_after=7;retry_after_ms=6500]]'));
      assert.equal(r2.status, 429);
      assert.equal(r2.headers.get('retry-after'), '7');
      assert.equal(r2.headers.get('retry-after-ms'), '6500');
      await r2.body.cancel();

      // a stream request gets the error as JSON, not a stream
      const r3 = await postChat(chatBody({ stream: true }, '[[mock:status=500]]'));
      assert.equal(r3.status, 500);
      assert.equal(r3.headers.get('content-type'), 'application/json');
      assert.equal((await r3.json()).error.type, 'server_error');
      assert.equal(r3.headers.get('retry-after'), null);

      // the header wins over a marker
      const r4 = await postChat(chatBody({}, '[[mock:status=500]]'), { 'x-mock-fault': 'status=503' });
      assert.equal(r4.status, 503);
      await r4.body.cancel();
    });

    it('unknown or invalid items are a 400 naming the item', T, async () => {
      const r = await postChat(chatBody(), { 'x-mock-fault': 'status=429; frobnicate' });
      assert.equal(r.status, 400);
      assert.match((await r.json()).error.message, /unknown fault item "frobnicate"/);
      const r2 = await postChat(chatBody({}, 'x [[mock:delay_headers_ms=soon]]'));
      assert.equal(r2.status, 400);
      assert.match((await r2.json()).error.message, /"delay_headers_ms=soon"/);
      const r3 = await postChat(chatBody({}, 'x [[mock:status=200]]'));
      assert.equal(r3.status, 400);
      const r4 = await postChat(chatBody({}, 'x [[mock:status=500'));
      assert.equal(r4.status, 400);
      assert.match((await r4.json()).error.message, /unterminated/);
    });

    it('delay_headers_ms holds the answer while other requests are served', T, async () => {
      const t0 = performance.now();
      const slow = postChat(chatBody(), { 'x-mock-fault': 'delay_headers_ms=600' });
      const fast = await postChat(chatBody());
      const fastAt = performance.now() - t0;
      assert.equal(fast.status, 200);
      await fast.body.cancel();
      const s = await slow;
      const slowAt = performance.now() - t0;
      assert.equal(s.status, 200);
      assert.equal((await s.json()).choices[0].message.content, 'mock reply to: hello there world');
      assert.ok(slowAt >= 590, `delayed answer came after ${slowAt} ms`);
      assert.ok(fastAt < slowAt - 200, `undelayed answer took ${fastAt} ms`);
    });

    it('delay_events_ms spaces stream events', T, async () => {
      const r = await rawChat(chatBody({ stream: true }, 'a b'), [['x-mock-fault', 'delay_events_ms=60']]);
      assert.ok(r.complete);
      const events = sseEvents(r.body.toString());
      assert.equal(events.length, 8); // role, 5 words, finish, [DONE]
      assert.ok(r.elapsed >= 7 * 60 - 10, `stream took ${r.elapsed} ms`);
      assert.ok(r.reads.length >= 4, `events arrived in ${r.reads.length} reads`);
    });

    it('reset_after_events cuts a stream: the client sees the end without [DONE]', T, async () => {
      const r = await rawChat(chatBody({ stream: true }), [['x-mock-fault', 'reset_after_events=3']]);
      assert.equal(r.status, 200);
      assert.equal(r.complete, false, 'no terminating chunk');
      const events = sseEvents(r.body.toString());
      assert.equal(events.length, 3);
      assert.ok(!events.includes('[DONE]'));

      // through fetch: reading the body fails
      const f = await postChat(chatBody({ stream: true }, 'x [[mock:reset_after_events=2]]'));
      assert.equal(f.status, 200);
      await assert.rejects(f.text());

      // 0 events: headers, then the cut
      const z = await rawChat(chatBody({ stream: true }), [['x-mock-fault', 'reset_after_events=0']]);
      assert.equal(z.status, 200);
      assert.equal(z.complete, false);
      assert.equal(z.body.length, 0);
    });

    it('reset_before_headers closes the connection without an answer', T, async () => {
      const res = await rawExchange(mock.port, httpRequest('POST', '/v1/chat/completions', {
        headers: [['x-mock-fault', 'reset_before_headers;delay_headers_ms=50']],
        body: JSON.stringify(chatBody()),
      }));
      assert.equal(res.raw.length, 0);
      assert.ok(res.elapsed >= 45);
      await assert.rejects(postChat(chatBody({}, '[[mock:reset_before_headers]]')));
    });

    it('malformed sends a 200 body that is not JSON, or one broken stream event', T, async () => {
      const r = await postChat(chatBody(), { 'x-mock-fault': 'malformed' });
      assert.equal(r.status, 200);
      const text = await r.text();
      assert.ok(text.startsWith('{"id":"chatcmpl-mock-'));
      assert.throws(() => JSON.parse(text));

      const s = await rawChat(chatBody({ stream: true }), [['x-mock-fault', 'malformed']]);
      assert.ok(s.complete);
      const events = sseEvents(s.body.toString());
      assert.equal(events.at(-1), '[DONE]');
      const broken = events.slice(0, -1).filter((e) => { try { JSON.parse(e); return false; } catch { return true; } });
      assert.equal(broken.length, 1);
      assert.equal(events.indexOf(broken[0]), 1);
      assert.equal(events.length, 8 + 1 + 1); // role, 6 words, finish, [DONE] + the broken one
    });

    it('trickle_ms sends a JSON body in 16-byte chunks over time', T, async () => {
      const plain = await rawChat(chatBody({}, 'short'));
      const r = await rawChat(chatBody({}, 'short'), [['x-mock-fault', 'trickle_ms=15']]);
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-type'], 'application/json');
      assert.equal(r.headers['transfer-encoding'], 'chunked');
      assert.ok(r.complete);
      assert.ok(r.chunks.length >= 10);
      assert.ok(r.chunks.slice(0, -1).every((c) => c.length === 16));
      assert.ok(r.chunks.at(-1).length <= 16);
      assert.ok(r.reads.length >= 5, `arrived in ${r.reads.length} reads`);
      assert.ok(r.elapsed >= (r.chunks.length - 1) * 15 - 10);
      const a = JSON.parse(r.body.toString());
      const b = JSON.parse(plain.body.toString());
      assert.equal(a.choices[0].message.content, b.choices[0].message.content);
      assert.deepEqual(a.usage, b.usage);
      // for streams trickle paces the events
      const s = await rawChat(chatBody({ stream: true }, 'a'), [['x-mock-fault', 'trickle_ms=40']]);
      assert.ok(s.complete);
      assert.ok(s.elapsed >= 6 * 40 - 10, `stream took ${s.elapsed} ms`);
    });

    it('tool_then_reset cuts a streamed tool call after the first arguments delta', T, async () => {
      const r = await rawChat(chatBody({ tools, stream: true }, 'call a tool please'),
        [['x-mock-fault', 'tool_then_reset']]);
      assert.equal(r.complete, false);
      const events = sseEvents(r.body.toString()).map((e) => JSON.parse(e));
      assert.equal(events.length, 3);
      assert.equal(events[1].choices[0].delta.tool_calls[0].id, 'call_mock_1');
      assert.equal(events[2].choices[0].delta.tool_calls[0].function.arguments, '{"query"');
    });

    it('a client that leaves during a delay does not disturb the mock', T, async () => {
      const gone = await rawExchange(mock.port, httpRequest('POST', '/v1/chat/completions', {
        headers: [['x-mock-fault', 'delay_headers_ms=300;delay_events_ms=50']],
        body: JSON.stringify(chatBody({ stream: true })),
      }), { destroyAfterMs: 50 });
      assert.ok(gone.destroyed);
      const streaming = await rawExchange(mock.port, httpRequest('POST', '/v1/chat/completions', {
        headers: [['x-mock-fault', 'delay_events_ms=100']],
        body: JSON.stringify(chatBody({ stream: true })),
      }), { destroyAfterMs: 150 });
      assert.ok(streaming.destroyed);
      // outlast both timers; a timer firing on a dead request would crash the process
      await new Promise((res) => setTimeout(res, 400));
      const r = await postChat(chatBody());
      assert.equal(r.status, 200);
      await r.body.cancel();
      assert.equal(mock.proc.exitCode, null);
    });
  });

  describe('request log', () => {
    it('returns method, path, headers in received order and the exact body', T, async () => {
      const body = '{"model":"m",  "messages":[{"role":"user","content":"caf\u00e9 \\u00e9"}]}';
      const res = await rawExchange(mock.port, httpRequest('POST', '/v1/chat/completions?trace=1', {
        headers: [['X-Zeta', 'last-first'], ['Authorization', 'Bearer sk-test'], ['x-alpha', '  spaced']],
        body,
      }));
      assert.equal(parseResponse(res.raw).status, 200);
      await postChat(chatBody({}, 'second'));
      const log = await (await fetch(`${mock.base}/_mock/requests`)).json();
      assert.equal(log.length, 2);
      const [e] = log;
      assert.equal(e.method, 'POST');
      assert.equal(e.path, '/v1/chat/completions');
      assert.equal(e.url, '/v1/chat/completions?trace=1');
      assert.equal(e.body, body);
      assert.deepEqual(e.headers, [
        ['Host', '127.0.0.1'],
        ['X-Zeta', 'last-first'],
        ['Authorization', 'Bearer sk-test'],
        ['x-alpha', 'spaced'],
        ['Content-Length', String(Buffer.byteLength(body))],
        ['Connection', 'close'],
      ]);
      assert.equal(log[1].seq, e.seq + 1);
      assert.equal(JSON.parse(log[1].body).messages[1].content, 'second');
      // DELETE clears; control requests are not logged
      const d = await (await fetch(`${mock.base}/_mock/requests`, { method: 'DELETE' })).json();
      assert.deepEqual(d, { cleared: 2 });
      assert.deepEqual(await (await fetch(`${mock.base}/_mock/requests`)).json(), []);
    });

    it('keeps the last 100 requests, oldest first', T, async () => {
      const first = await fetch(`${mock.base}/v1/models`);
      const firstSeq = Number(first.headers.get('x-request-id').slice('req-mock-'.length));
      await first.body.cancel();
      for (let i = 0; i < 104; i++) {
        const r = await fetch(`${mock.base}/v1/models?i=${i}`);
        await r.body.cancel();
      }
      const log = await (await fetch(`${mock.base}/_mock/requests`)).json();
      assert.equal(log.length, 100);
      assert.equal(log[0].seq, firstSeq + 5);
      assert.equal(log[0].url, '/v1/models?i=4');
      assert.equal(log[99].url, '/v1/models?i=103');
      assert.ok(log.every((e, i) => i === 0 || e.seq === log[i - 1].seq + 1));
    });

    it('keeps bodies that are not UTF-8 exactly in body_base64', T, async () => {
      const raw = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
      const res = await rawExchange(mock.port, Buffer.concat([
        Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n`),
        raw,
      ]));
      assert.equal(parseResponse(res.raw).status, 400);
      const [e] = await (await fetch(`${mock.base}/_mock/requests`)).json();
      assert.equal(e.body, '{\ufffd\ufffd}');
      assert.deepEqual(Buffer.from(e.body_base64, 'base64'), raw);
    });
  });
});
