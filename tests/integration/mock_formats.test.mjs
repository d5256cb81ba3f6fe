// Integration tests of leo-mock-provider's Anthropic Messages and Gemini formats (and the OpenAI additions that
// go with them: reasoning, refusals, tool results): the real binary over real sockets, with fetch, with raw TCP
// where the exact bytes and chunk boundaries matter, and with the official Anthropic SDK.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';

const BIN = path.join(process.env.LEO_BUILD_DIR ?? 'build', 'leo-mock-provider');
const T = { timeout: 15000 };

let mock; // { proc, port, base, exited, stderr }

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

// ---- raw HTTP over a TCP socket ------------------------------------------------------------------------

// One request with Connection: close; collects everything until the server closes the connection.
function rawExchange(port, request) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    const reads = [];
    const t0 = performance.now();
    sock.on('connect', () => sock.write(request));
    sock.on('data', (d) => reads.push({ at: performance.now() - t0, data: d }));
    sock.on('error', (e) => { if (e.code !== 'ECONNRESET') reject(e); });
    sock.on('close', () => resolve({ raw: Buffer.concat(reads.map((r) => r.data)), reads, elapsed: performance.now() - t0 }));
  });
}

function httpRequest(method, target, { headers = [], body = '' } = {}) {
  const b = Buffer.from(body);
  let s = `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n`;
  for (const [k, v] of headers) s += `${k}: ${v}\r\n`;
  if (method !== 'GET' || b.length) s += `Content-Length: ${b.length}\r\n`;
  s += 'Connection: close\r\n\r\n';
  return Buffer.concat([Buffer.from(s), b]);
}

// Status, headers and body of a raw response; a chunked body is de-chunked with each chunk kept.
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
    if (rest.length < nl + 2 + size + 2) break;
    chunks.push(rest.subarray(nl + 2, nl + 2 + size));
    rest = rest.subarray(nl + 2 + size + 2);
  }
  return { status, headers, body: Buffer.concat(chunks), chunks, complete };
}

async function raw(target, body, headers = []) {
  const res = await rawExchange(mock.port, httpRequest('POST', target, {
    headers: [['Content-Type', 'application/json'], ...headers],
    body: typeof body === 'string' ? body : JSON.stringify(body),
  }));
  const r = parseResponse(res.raw);
  return { ...r, text: r.body.toString(), chunkTexts: r.chunks?.map((c) => c.toString()), reads: res.reads, elapsed: res.elapsed };
}

async function post(target, body, headers = {}) {
  return fetch(`${mock.base}${target}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function lastLogged() {
  const log = await (await fetch(`${mock.base}/_mock/requests`)).json();
  return log.at(-1);
}

// Pieces of a text as the mock streams it: each word with the whitespace that follows it.
const words = (s) => s.match(/\s*\S+\s*/g);

const tools = {
  anthropic: [
    { name: 'search_docs', description: 'search', input_schema: { type: 'object' } },
    { name: 'get_weather', input_schema: { type: 'object' } },
    { type: 'web_search_20250305', name: 'web_search' }, // a server tool: never called by the mock
  ],
  gemini: [{ functionDeclarations: [{ name: 'search_docs' }, { name: 'get_weather' }] }, { googleSearch: {} }],
};

// ---- Anthropic -----------------------------------------------------------------------------------------

const A_PATH = '/v1/messages';
const A_HEADERS = { 'anthropic-version': '2023-06-01', 'x-api-key': 'sk-ant-test' };
const A_RAW_HEADERS = Object.entries(A_HEADERS);

function aBody(text, extra = {}) {
  return { model: 'claude-test', max_tokens: 256, system: 'be brief', messages: [{ role: 'user', content: text }], ...extra };
}

// Named SSE events: each "event: X\ndata: {...}\n\n" with the data's type equal to X.
function namedEvents(text) {
  return text.split('\n\n').filter((e) => e.length).map((e) => {
    const m = /^event: ([a-z_]+)\ndata: (.*)$/s.exec(e);
    assert.ok(m, `not a named event: ${JSON.stringify(e)}`);
    const data = JSON.parse(m[2]);
    assert.equal(data.type, m[1]);
    return data;
  });
}

const aEvent = (obj) => `event: ${obj.type}\ndata: ${JSON.stringify(obj)}\n\n`;
const aSeq = (headers) => Number(headers['request-id'].slice('req_mock_'.length));

// The exact events of a streamed Anthropic reply of text blocks (after the given leading blocks).
function aStreamText(seq, { input, text, output, thinking = null, stop = 'end_turn' }) {
  const ev = [
    { type: 'message_start', message: { id: `msg_mock_${seq}`, type: 'message', role: 'assistant', model: 'claude-test', content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: input, output_tokens: 1 } } },
    { type: 'ping' },
  ];
  let index = 0;
  if (thinking !== null) {
    ev.push({ type: 'content_block_start', index, content_block: { type: 'thinking', thinking: '', signature: '' } });
    for (const w of words(thinking)) ev.push({ type: 'content_block_delta', index, delta: { type: 'thinking_delta', thinking: w } });
    ev.push({ type: 'content_block_delta', index, delta: { type: 'signature_delta', signature: `mock-signature-${seq}` } });
    ev.push({ type: 'content_block_stop', index });
    index++;
  }
  if (text !== null) {
    ev.push({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } });
    for (const w of words(text)) ev.push({ type: 'content_block_delta', index, delta: { type: 'text_delta', text: w } });
    ev.push({ type: 'content_block_stop', index });
  }
  ev.push({ type: 'message_delta', delta: { stop_reason: stop, stop_sequence: null }, usage: { output_tokens: output } });
  ev.push({ type: 'message_stop' });
  return ev.map(aEvent);
}

// ---- Gemini --------------------------------------------------------------------------------------------

const gPath = (method, query = '') => `/v1beta/models/gemini-test:${method}${query}`;
const G_SSE = gPath('streamGenerateContent', '?alt=sse');

function gBody(text, extra = {}) {
  return {
    systemInstruction: { parts: [{ text: 'be brief' }] },
    contents: [{ role: 'user', parts: [{ text }] }],
    ...extra,
  };
}

function gUsage(prompt, candidates, thoughts = 0) {
  const u = { promptTokenCount: prompt };
  if (candidates) u.candidatesTokenCount = candidates;
  u.totalTokenCount = prompt + candidates + thoughts;
  if (thoughts) u.thoughtsTokenCount = thoughts;
  return u;
}

function gResponse(seq, parts, usage, finish = null) {
  const cand = { content: { parts, role: 'model' } };
  if (finish) cand.finishReason = finish;
  cand.index = 0;
  return { candidates: [cand], usageMetadata: usage, modelVersion: 'gemini-test', responseId: `mock-${seq}` };
}

const gSse = (obj) => `data: ${JSON.stringify(obj)}\r\n\r\n`;

// SSE events of a Gemini stream (CRLF framing), parsed.
function gEvents(text) {
  assert.ok(text.endsWith('\r\n\r\n'), 'events end with CRLF CRLF');
  return text.split('\r\n\r\n').filter((e) => e.length).map((e) => {
    assert.ok(e.startsWith('data: '), `not a data event: ${JSON.stringify(e)}`);
    return JSON.parse(e.slice(6));
  });
}

// ---- tests ---------------------------------------------------------------------------------------------

describe('leo-mock-provider formats', () => {
  before(async () => { mock = await startMock(); });
  after(async () => { await stopMock(mock); });
  beforeEach(async () => {
    const r = await fetch(`${mock.base}/_mock/requests`, { method: 'DELETE' });
    assert.equal(r.status, 200);
  });

  describe('anthropic messages', () => {
    it('answers a message exactly, with the request id and rate-limit headers', T, async () => {
      const r = await post(A_PATH, aBody('hello there world'), A_HEADERS);
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('content-type'), 'application/json');
      assert.equal(r.headers.get('anthropic-ratelimit-requests-limit'), '4000');
      assert.equal(r.headers.get('anthropic-ratelimit-tokens-remaining'), '2398000');
      const seq = (await lastLogged()).seq;
      assert.equal(r.headers.get('request-id'), `req_mock_${seq}`);
      assert.equal(await r.text(), JSON.stringify({
        id: `msg_mock_${seq}`, type: 'message', role: 'assistant', model: 'claude-test',
        content: [{ type: 'text', text: 'mock reply to: hello there world' }],
        stop_reason: 'end_turn', stop_sequence: null,
        // as OpenAI: "be brief" (2) + "hello there world" (3) + 3 per message, the system prompt counting as one
        usage: { input_tokens: 11, output_tokens: 6 },
      }));
      const logged = await lastLogged();
      assert.ok(logged.headers.some(([k, v]) => k === 'anthropic-version' && v === '2023-06-01'));
      assert.ok(logged.headers.some(([k, v]) => k === 'x-api-key' && v === 'sk-ant-test'));
    });

    it('reads text from blocks, counts images, and answers a tool result with text', T, async () => {
      const img = { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'AAAA' } };
      const body = {
        model: 'claude-test',
        max_tokens: 100,
        system: [{ type: 'text', text: 'sys one' }, { type: 'text', text: ' two' }],
        tools: tools.anthropic,
        messages: [
          { role: 'user', content: [{ type: 'text', text: 'look at ' }, img, { type: 'text', text: 'this, call a tool' }] },
          { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'search_docs', input: { q: 'x' } }] },
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: [{ type: 'text', text: 'found it here' }, img] }] },
        ],
      };
      const j = await (await post(A_PATH, body, A_HEADERS)).json();
      // the last user message is a tool result: the reply is text about the last user text
      assert.deepEqual(j.content, [{ type: 'text', text: 'mock reply to: look at this, call a tool' }]);
      assert.equal(j.stop_reason, 'end_turn');
      // words: system 3, user 6, assistant 0, tool result 3; 4 messages; 2 images
      assert.deepEqual(j.usage, { input_tokens: 12 + 4 * 3 + 2 * 85, output_tokens: 9 });
      const c = await (await post('/v1/messages/count_tokens', body, A_HEADERS)).json();
      assert.deepEqual(c, { input_tokens: j.usage.input_tokens });
    });

    it('streams the exact Anthropic event sequence, one event per HTTP chunk', T, async () => {
      const r = await raw(A_PATH, aBody('stream  me\nplease', { stream: true }), A_RAW_HEADERS);
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-type'], 'text/event-stream');
      assert.equal(r.headers['cache-control'], 'no-cache');
      assert.ok(r.complete);
      const expected = aStreamText(aSeq(r.headers), { input: 11, text: 'mock reply to: stream  me\nplease', output: 6 });
      assert.deepEqual(r.chunkTexts, expected);
      assert.deepEqual(words('mock reply to: stream  me\nplease'), ['mock ', 'reply ', 'to: ', 'stream  ', 'me\n', 'please']);
      namedEvents(r.text); // framing: every event is named after its type
    });

    it('answers tool_use blocks for "call a tool" and "parallel tools"', T, async () => {
      const text = 'Please CALL A TOOL about "quotes"';
      const r = await post(A_PATH, aBody(text, { tools: tools.anthropic }), A_HEADERS);
      const seq = (await lastLogged()).seq;
      assert.equal(await r.text(), JSON.stringify({
        id: `msg_mock_${seq}`, type: 'message', role: 'assistant', model: 'claude-test',
        content: [{ type: 'tool_use', id: 'toolu_mock_1', name: 'search_docs', input: { query: text } }],
        stop_reason: 'tool_use', stop_sequence: null,
        usage: { input_tokens: 2 + 6 + 6, output_tokens: 1 + 6 },
      }));
      const p = await (await post(A_PATH, aBody('parallel tools', { tools: tools.anthropic }), A_HEADERS)).json();
      assert.deepEqual(p.content.map((b) => [b.type, b.id, b.name, b.input]), [
        ['tool_use', 'toolu_mock_1', 'search_docs', { query: 'parallel tools' }],
        ['tool_use', 'toolu_mock_2', 'get_weather', { query: 'parallel tools' }],
      ]);
    });

    it('streams tool_use with input_json_delta in 8-byte pieces', T, async () => {
      const r = await raw(A_PATH, aBody('call a tool now', { tools: tools.anthropic, stream: true }), A_RAW_HEADERS);
      assert.ok(r.complete);
      const seq = aSeq(r.headers);
      const delta = (partial_json) => ({ type: 'content_block_delta', index: 0, delta: { type: 'input_json_delta', partial_json } });
      assert.deepEqual(r.chunkTexts, [
        { type: 'message_start', message: { id: `msg_mock_${seq}`, type: 'message', role: 'assistant', model: 'claude-test', content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: 12, output_tokens: 1 } } },
        { type: 'ping' },
        { type: 'content_block_start', index: 0, content_block: { type: 'tool_use', id: 'toolu_mock_1', name: 'search_docs', input: {} } },
        delta('{"query"'), delta(':"call a'), delta(' tool no'), delta('w"}'),
        { type: 'content_block_stop', index: 0 },
        { type: 'message_delta', delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: { output_tokens: 5 } },
        { type: 'message_stop' },
      ].map(aEvent));
    });

    it('thinks first when asked by the thinking parameter or the phrase', T, async () => {
      const j = await (await post(A_PATH, aBody('hello there', { thinking: { type: 'enabled', budget_tokens: 1024 } }), A_HEADERS)).json();
      const seq = (await lastLogged()).seq;
      assert.deepEqual(j.content, [
        { type: 'thinking', thinking: 'mock thinking about: hello there', signature: `mock-signature-${seq}` },
        { type: 'text', text: 'mock reply to: hello there' },
      ]);
      assert.deepEqual(j.usage, { input_tokens: 10, output_tokens: 5 + 5 });
      const d = await (await post(A_PATH, aBody('hello there', { thinking: { type: 'disabled' } }), A_HEADERS)).json();
      assert.equal(d.content.length, 1);

      const r = await raw(A_PATH, aBody('think first', { stream: true }), A_RAW_HEADERS);
      assert.ok(r.complete);
      assert.deepEqual(r.chunkTexts, aStreamText(aSeq(r.headers), {
        input: 10, thinking: 'mock thinking about: think first', text: 'mock reply to: think first', output: 10,
      }));
      // thinking before tool_use: the tool block takes index 1
      const t = await raw(A_PATH, aBody('think first and call a tool', { stream: true, tools: tools.anthropic }), A_RAW_HEADERS);
      const ev = namedEvents(t.text);
      assert.deepEqual(ev.filter((e) => e.type === 'content_block_start').map((e) => [e.index, e.content_block.type]),
        [[0, 'thinking'], [1, 'tool_use']]);
    });

    it('rejects a missing anthropic-version and missing fields in Anthropic shape', T, async () => {
      const noVersion = await post(A_PATH, aBody('x'), { 'x-api-key': 'k' });
      assert.equal(noVersion.status, 400);
      assert.match(noVersion.headers.get('request-id'), /^req_mock_\d+$/);
      assert.deepEqual(await noVersion.json(), {
        type: 'error', error: { type: 'invalid_request_error', message: 'anthropic-version: header is required' },
      });
      const cases = [
        ['{"model":', /not valid JSON/],
        [JSON.stringify({ max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }), /^model: field required$/],
        [JSON.stringify({ model: 'm', max_tokens: 5 }), /^messages: field required$/],
        [JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'x' }] }), /^max_tokens: field required$/],
        [JSON.stringify({ model: 'm', max_tokens: 0, messages: [{ role: 'user', content: 'x' }] }), /^max_tokens: /],
        [JSON.stringify({ model: 'm', max_tokens: 5, messages: [{ role: 'system', content: 'x' }] }), /^messages\.0\.role: /],
        [JSON.stringify({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: [{ text: 'x' }] }] }), /^messages\.0\.content\.0\.type: /],
      ];
      for (const [body, re] of cases) {
        const r = await post(A_PATH, body, A_HEADERS);
        assert.equal(r.status, 400, body);
        const j = await r.json();
        assert.deepEqual(Object.keys(j), ['type', 'error']);
        assert.equal(j.type, 'error');
        assert.equal(j.error.type, 'invalid_request_error');
        assert.match(j.error.message, re, body);
      }
      const nf = await post('/v1/messages/nope', '{}', A_HEADERS);
      assert.equal(nf.status, 404);
      assert.equal((await nf.json()).error.type, 'not_found_error');
    });

    it('count_tokens answers what usage.input_tokens would be, without max_tokens', T, async () => {
      const body = aBody('count these four words');
      const full = await (await post(A_PATH, body, A_HEADERS)).json();
      delete body.max_tokens;
      const r = await post('/v1/messages/count_tokens', body, A_HEADERS);
      assert.equal(r.status, 200);
      assert.equal(await r.text(), `{"input_tokens":${full.usage.input_tokens}}`);
      const bad = await post('/v1/messages/count_tokens', body, { 'x-api-key': 'k' });
      assert.equal(bad.status, 400);
      assert.equal((await bad.json()).error.type, 'invalid_request_error');
    });

    describe('faults', () => {
      it('status=N answers Anthropic error types, with retry-after on 429', T, async () => {
        const expect = { 429: 'rate_limit_error', 529: 'overloaded_error', 401: 'authentication_error', 500: 'api_error', 403: 'permission_error', 404: 'not_found_error', 503: 'api_error', 418: 'invalid_request_error' };
        for (const [status, type] of Object.entries(expect)) {
          const r = await post(A_PATH, aBody('x', { stream: true }), { ...A_HEADERS, 'x-mock-fault': `status=${status}` });
          assert.equal(r.status, Number(status));
          assert.equal(r.headers.get('content-type'), 'application/json');
          assert.equal(r.headers.get('retry-after'), status === '429' ? '1' : null);
          assert.match(r.headers.get('request-id'), /^req_mock_\d+$/);
          assert.deepEqual(await r.json(), { type: 'error', error: { type, message: `mock fault: injected status ${status}` } });
        }
        const m = await post(A_PATH, aBody('slow [[mock:status=529;retry_after=3]]'), A_HEADERS);
        assert.equal(m.status, 529);
        assert.equal(m.headers.get('retry-after'), '3');
        assert.equal((await m.json()).error.type, 'overloaded_error');
      });

      it('blocked ends with stop_reason refusal and no content', T, async () => {
        const r = await post(A_PATH, aBody('bad things [[mock:blocked]]'), A_HEADERS);
        const seq = (await lastLogged()).seq;
        assert.equal(await r.text(), JSON.stringify({
          id: `msg_mock_${seq}`, type: 'message', role: 'assistant', model: 'claude-test', content: [],
          stop_reason: 'refusal', stop_sequence: null, usage: { input_tokens: 11, output_tokens: 0 },
        }));
        const s = await raw(A_PATH, aBody('bad things', { stream: true }), [...A_RAW_HEADERS, ['x-mock-fault', 'blocked']]);
        assert.ok(s.complete);
        assert.deepEqual(s.chunkTexts, aStreamText(aSeq(s.headers), { input: 10, text: null, output: 0, stop: 'refusal' }));
      });

      it('tool_then_reset cuts right after the first input_json_delta', T, async () => {
        const r = await raw(A_PATH, aBody('call a tool now', { tools: tools.anthropic, stream: true }),
          [...A_RAW_HEADERS, ['x-mock-fault', 'tool_then_reset']]);
        assert.equal(r.status, 200);
        assert.equal(r.complete, false);
        const ev = namedEvents(r.text);
        assert.deepEqual(ev.map((e) => e.type), ['message_start', 'ping', 'content_block_start', 'content_block_delta']);
        assert.deepEqual(ev.at(-1).delta, { type: 'input_json_delta', partial_json: '{"query"' });
        // with thinking first, the cut still follows the first arguments delta
        const t = await raw(A_PATH, aBody('call a tool now', { tools: tools.anthropic, stream: true, thinking: { type: 'enabled', budget_tokens: 9 } }),
          [...A_RAW_HEADERS, ['x-mock-fault', 'tool_then_reset']]);
        assert.equal(t.complete, false);
        assert.deepEqual(namedEvents(t.text).at(-1).delta.type, 'input_json_delta');
        // a text reply is cut after its first text_delta
        const x = await raw(A_PATH, aBody('plain [[mock:tool_then_reset]]', { stream: true }), A_RAW_HEADERS);
        assert.equal(x.complete, false);
        assert.deepEqual(namedEvents(x.text).at(-1).delta, { type: 'text_delta', text: 'mock ' });
      });

      it('reset_after_events, reset_before_headers and malformed', T, async () => {
        const r = await raw(A_PATH, aBody('a b c', { stream: true }), [...A_RAW_HEADERS, ['x-mock-fault', 'reset_after_events=4']]);
        assert.equal(r.complete, false);
        assert.deepEqual(namedEvents(r.text).map((e) => e.type), ['message_start', 'ping', 'content_block_start', 'content_block_delta']);

        const gone = await rawExchange(mock.port, httpRequest('POST', A_PATH, {
          headers: [...A_RAW_HEADERS, ['x-mock-fault', 'reset_before_headers']], body: JSON.stringify(aBody('x')),
        }));
        assert.equal(gone.raw.length, 0);

        const m = await post(A_PATH, aBody('x'), { ...A_HEADERS, 'x-mock-fault': 'malformed' });
        assert.equal(m.status, 200);
        const text = await m.text();
        assert.ok(text.startsWith('{"id":"msg_mock_'));
        assert.throws(() => JSON.parse(text));

        const s = await raw(A_PATH, aBody('x', { stream: true }), [...A_RAW_HEADERS, ['x-mock-fault', 'malformed']]);
        assert.ok(s.complete);
        const good = aStreamText(aSeq(s.headers), { input: 9, text: 'mock reply to: x', output: 4 });
        // the broken event follows the first step's events (message_start and ping)
        assert.deepEqual([...s.chunkTexts.slice(0, 2), ...s.chunkTexts.slice(3)], good);
        assert.equal(s.chunkTexts[2], 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"brok\n\n');
      });

      it('delay_headers_ms, delay_events_ms and trickle_ms pace the answer', T, async () => {
        const d = await raw(A_PATH, aBody('x'), [...A_RAW_HEADERS, ['x-mock-fault', 'delay_headers_ms=250']]);
        assert.equal(d.status, 200);
        assert.ok(d.reads[0].at >= 240, `first byte after ${d.reads[0].at} ms`);

        const e = await raw(A_PATH, aBody('a', { stream: true }), [...A_RAW_HEADERS, ['x-mock-fault', 'delay_events_ms=40']]);
        assert.ok(e.complete);
        assert.equal(e.chunkTexts.length, 10); // start, ping, block start, 4 deltas, stop, delta, message_stop
        assert.ok(e.elapsed >= 9 * 40 - 10, `stream took ${e.elapsed} ms`);

        const t = await raw(A_PATH, aBody('x'), [...A_RAW_HEADERS, ['x-mock-fault', 'trickle_ms=5']]);
        assert.ok(t.complete);
        assert.equal(t.headers['content-type'], 'application/json');
        assert.ok(t.chunks.slice(0, -1).every((c) => c.length === 16));
        assert.equal(JSON.parse(t.text).content[0].text, 'mock reply to: x');
      });
    });

    describe('@anthropic-ai/sdk', () => {
      let client;
      before(async () => {
        const { default: Anthropic } = await import(new URL('../e2e/node_modules/@anthropic-ai/sdk/index.mjs', import.meta.url));
        client = new Anthropic({ apiKey: 'sk-ant-test', baseURL: mock.base, maxRetries: 0 });
      });

      it('messages.stream().finalMessage() assembles text, thinking and tool_use input', T, async () => {
        const text = await client.messages.stream({ model: 'claude-test', max_tokens: 64, messages: [{ role: 'user', content: 'hello sdk' }] }).finalMessage();
        assert.deepEqual(text.content, [{ type: 'text', text: 'mock reply to: hello sdk' }]);
        assert.equal(text.stop_reason, 'end_turn');
        assert.deepEqual(text.usage, { input_tokens: 5, output_tokens: 5 });

        const q = 'call a tool with "ünïcode" \\ quotes';
        const stream = client.messages.stream({
          model: 'claude-test', max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 },
          tools: tools.anthropic, messages: [{ role: 'user', content: q }],
        });
        const seen = [];
        stream.on('streamEvent', (e) => seen.push(e.type));
        const msg = await stream.finalMessage();
        assert.equal(msg.content.length, 2);
        assert.equal(msg.content[0].type, 'thinking');
        assert.equal(msg.content[0].thinking, `mock thinking about: ${q}`);
        assert.match(msg.content[0].signature, /^mock-signature-\d+$/);
        assert.equal(msg.content[1].type, 'tool_use');
        assert.equal(msg.content[1].id, 'toolu_mock_1');
        assert.equal(msg.content[1].name, 'search_docs');
        assert.deepEqual(msg.content[1].input, { query: q });
        assert.equal(msg.stop_reason, 'tool_use');
        assert.ok(seen.filter((t) => t === 'content_block_delta').length > 5);
        assert.equal(seen.at(-1), 'message_stop');
      });

      it('messages.create and countTokens parse the non-streamed answers', T, async () => {
        const m = await client.messages.create({ model: 'claude-test', max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
        assert.equal(m.content[0].text, 'mock reply to: hi');
        const c = await client.messages.countTokens({ model: 'claude-test', messages: [{ role: 'user', content: 'hi' }] });
        assert.equal(c.input_tokens, m.usage.input_tokens);
      });

      it('raises typed errors and fails a stream cut after a tool-call delta', T, async () => {
        await assert.rejects(
          client.messages.create({ model: 'claude-test', max_tokens: 8, messages: [{ role: 'user', content: '[[mock:status=529]]' }] }),
          (e) => e.status === 529 && e.error?.error?.type === 'overloaded_error',
        );
        await assert.rejects(
          client.messages.create({ model: 'claude-test', max_tokens: 8, messages: [{ role: 'user', content: '[[mock:status=429]]' }] }),
          (e) => e.status === 429 && e.headers?.get('retry-after') === '1',
        );
        const stream = client.messages.stream({
          model: 'claude-test', max_tokens: 8, tools: tools.anthropic,
          messages: [{ role: 'user', content: 'call a tool [[mock:tool_then_reset]]' }],
        });
        await assert.rejects(stream.finalMessage());
      });
    });
  });

  // ---- Gemini ------------------------------------------------------------------------------------------

  describe('gemini', () => {
    it('answers generateContent exactly; the key may come as a header or ?key=', T, async () => {
      const r = await post(gPath('generateContent'), gBody('hello there world'), { 'x-goog-api-key': 'g-key' });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('content-type'), 'application/json');
      const logged = await lastLogged();
      assert.ok(logged.headers.some(([k, v]) => k === 'x-goog-api-key' && v === 'g-key'));
      assert.equal(await r.text(), JSON.stringify(gResponse(logged.seq,
        [{ text: 'mock reply to: hello there world' }], gUsage(11, 6), 'STOP')));

      const q = await post(gPath('generateContent', '?key=q-key'), gBody('x'));
      assert.equal(q.status, 200);
      assert.equal((await lastLogged()).url, '/v1beta/models/gemini-test:generateContent?key=q-key');
      // the v1 API path answers the same way
      const v1 = await (await post('/v1/models/gemini-test:generateContent', gBody('x'))).json();
      assert.equal(v1.candidates[0].content.parts[0].text, 'mock reply to: x');
      // an escaped model name is decoded
      const esc = await (await post('/v1beta/models/tuned%2Fgemini%20x:generateContent', gBody('x'))).json();
      assert.equal(esc.modelVersion, 'tuned/gemini x');
    });

    it('counts inline data, takes snake_case fields, and answers a function response with text', T, async () => {
      const body = {
        system_instruction: { parts: [{ text: 'sys' }] },
        tools: tools.gemini,
        contents: [
          { role: 'user', parts: [{ text: 'look at ' }, { inline_data: { mime_type: 'image/png', data: 'AAAA' } }, { text: 'this, call a tool' }] },
          { role: 'model', parts: [{ functionCall: { name: 'search_docs', args: { q: 1 } } }] },
          { role: 'user', parts: [{ functionResponse: { name: 'search_docs', response: { result: 'sunny and warm' } } }] },
        ],
      };
      const j = await (await post(gPath('generateContent'), body)).json();
      assert.deepEqual(j.candidates[0].content, { parts: [{ text: 'mock reply to: look at this, call a tool' }], role: 'model' });
      // words: sys 1, user 6, model 0, function response 3 ({"result":"sunny and warm"}); 4 messages; 1 image
      assert.deepEqual(j.usageMetadata, gUsage(10 + 12 + 85, 9));
      const c = await (await post(gPath('countTokens'), { contents: body.contents })).json();
      assert.deepEqual(c, { totalTokens: 9 + 9 + 85 }); // no system instruction given here
      const c2 = await (await post(gPath('countTokens'), { generateContentRequest: { model: 'models/gemini-test', ...body } })).json();
      assert.deepEqual(c2, { totalTokens: j.usageMetadata.promptTokenCount });
    });

    it('streams with alt=sse: one CRLF-framed event per word with running usage, then the finish', T, async () => {
      const r = await raw(G_SSE, gBody('hello there world'));
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-type'], 'text/event-stream');
      assert.ok(r.complete);
      const seq = (await lastLogged()).seq;
      const pieces = ['mock ', 'reply ', 'to: ', 'hello ', 'there ', 'world'];
      assert.deepEqual(r.chunkTexts, [
        ...pieces.map((text, i) => gSse(gResponse(seq, [{ text }], gUsage(11, i + 1)))),
        gSse(gResponse(seq, [{ text: '' }], gUsage(11, 6), 'STOP')),
      ]);
    });

    it('streams without alt=sse as one JSON array, element by element', T, async () => {
      const sse = gEvents((await raw(G_SSE, gBody('a b'))).text);
      const r = await raw(gPath('streamGenerateContent'), gBody('a b'));
      assert.equal(r.headers['content-type'], 'application/json');
      assert.ok(r.complete);
      assert.ok(r.chunkTexts[0].startsWith('[{'));
      assert.ok(r.chunkTexts.slice(1, -1).every((c) => c.startsWith(',\r\n{')));
      assert.equal(r.chunkTexts.at(-1), ']');
      const arr = JSON.parse(r.text);
      assert.equal(arr.length, sse.length);
      const seq = (await lastLogged()).seq;
      assert.deepEqual(arr, sse.map((o) => ({ ...o, responseId: `mock-${seq}` })));
    });

    it('answers functionCall parts, non-streamed and streamed whole', T, async () => {
      const text = 'call a tool please';
      const j = await (await post(gPath('generateContent'), gBody(text, { tools: tools.gemini }))).json();
      const seq = (await lastLogged()).seq;
      assert.deepEqual(j, gResponse(seq, [{ functionCall: { name: 'search_docs', args: { query: text } } }], gUsage(12, 5), 'STOP'));

      const r = await raw(G_SSE, gBody('use parallel tools', { tools: tools.gemini }));
      const s2 = (await lastLogged()).seq;
      const call = (name) => ({ functionCall: { name, args: { query: 'use parallel tools' } } });
      assert.deepEqual(r.chunkTexts, [
        gSse(gResponse(s2, [call('search_docs')], gUsage(11, 4))),
        gSse(gResponse(s2, [call('get_weather')], gUsage(11, 8))),
        gSse(gResponse(s2, [{ text: '' }], gUsage(11, 8), 'STOP')),
      ]);
    });

    it('includes thoughts and thoughtsTokenCount when includeThoughts is set', T, async () => {
      const body = gBody('hello there', { generationConfig: { thinkingConfig: { includeThoughts: true, thinkingBudget: 512 } } });
      const j = await (await post(gPath('generateContent'), body)).json();
      const seq = (await lastLogged()).seq;
      assert.deepEqual(j, gResponse(seq, [
        { text: 'mock thinking about: hello there', thought: true },
        { text: 'mock reply to: hello there' },
      ], gUsage(10, 5, 5), 'STOP'));
      const r = await raw(G_SSE, body);
      const ev = gEvents(r.text);
      const s2 = (await lastLogged()).seq;
      assert.deepEqual(ev.slice(0, 6), [
        ...['mock ', 'thinking ', 'about: ', 'hello ', 'there'].map((text, i) => gResponse(s2, [{ text, thought: true }], gUsage(10, 0, i + 1))),
        gResponse(s2, [{ text: 'mock ' }], gUsage(10, 1, 5)),
      ]);
      assert.deepEqual(ev.at(-1), gResponse(s2, [{ text: '' }], gUsage(10, 5, 5), 'STOP'));
      // after thinking, the first function call carries the thought signature
      const calls = await (await post(gPath('generateContent'), gBody('think first: parallel tools', { tools: tools.gemini }))).json();
      const s3 = (await lastLogged()).seq;
      assert.deepEqual(calls.candidates[0].content.parts.slice(1), [
        { functionCall: { name: 'search_docs', args: { query: 'think first: parallel tools' } }, thoughtSignature: `mock-signature-${s3}` },
        { functionCall: { name: 'get_weather', args: { query: 'think first: parallel tools' } } },
      ]);
      const none = await (await post(gPath('generateContent'), gBody('hello there'))).json();
      assert.equal(none.candidates[0].content.parts.length, 1);
      assert.ok(!('thoughtsTokenCount' in none.usageMetadata));
    });

    it('rejects bad requests with Google-shaped errors', T, async () => {
      const cases = [
        ['{"contents":', 400, 'INVALID_ARGUMENT'],
        [JSON.stringify({}), 400, 'INVALID_ARGUMENT'],
        [JSON.stringify({ contents: [] }), 400, 'INVALID_ARGUMENT'],
        [JSON.stringify({ contents: [{ role: 'assistant', parts: [{ text: 'x' }] }] }), 400, 'INVALID_ARGUMENT'],
        [JSON.stringify({ contents: [{ parts: [{ text: 5 }] }] }), 400, 'INVALID_ARGUMENT'],
      ];
      for (const [body, code, status] of cases) {
        const r = await post(gPath('generateContent'), body);
        assert.equal(r.status, code, body);
        const j = await r.json();
        assert.deepEqual(Object.keys(j.error), ['code', 'message', 'status']);
        assert.equal(j.error.code, code);
        assert.equal(j.error.status, status);
      }
      const nf = await post('/v1beta/models/x:frobnicate', '{}');
      assert.equal(nf.status, 404);
      assert.equal((await nf.json()).error.status, 'NOT_FOUND');
      const get = await fetch(`${mock.base}${gPath('generateContent')}`);
      assert.equal(get.status, 405);
      assert.equal((await get.json()).error.code, 405);
    });

    it('embedContent matches the OpenAI embedding of the same text; batch and dimensions', T, async () => {
      const e = await (await post(gPath('embedContent'), { model: 'models/gemini-test', content: { parts: [{ text: 'alpha ' }, { text: 'beta' }] } })).json();
      const o = await (await post('/v1/embeddings', { model: 'emb', input: 'alpha beta' })).json();
      assert.deepEqual(Object.keys(e), ['embedding']);
      assert.deepEqual(e.embedding.values, o.data[0].embedding);
      const b = await (await post(gPath('batchEmbedContents'), {
        requests: [{ content: { parts: [{ text: 'alpha beta' }] } }, { content: { parts: [{ text: 'gamma' }] }, outputDimensionality: 3 }],
      })).json();
      assert.equal(b.embeddings.length, 2);
      assert.deepEqual(b.embeddings[0].values, e.embedding.values);
      assert.equal(b.embeddings[1].values.length, 3);
      const bad = await post(gPath('embedContent'), { content: {} });
      assert.equal(bad.status, 400);
      assert.equal((await bad.json()).error.status, 'INVALID_ARGUMENT');
    });

    describe('faults', () => {
      it('status=N answers Google RPC errors; 429 carries RetryInfo', T, async () => {
        const expect = { 429: 'RESOURCE_EXHAUSTED', 500: 'INTERNAL', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED', 400: 'INVALID_ARGUMENT' };
        for (const [code, status] of Object.entries(expect)) {
          const r = await post(G_SSE, gBody('x'), { 'x-mock-fault': `status=${code}` });
          assert.equal(r.status, Number(code));
          assert.equal(r.headers.get('content-type'), 'application/json');
          const error = { code: Number(code), message: `mock fault: injected status ${code}`, status };
          if (code === '429') error.details = [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '1s' }];
          assert.deepEqual(await r.json(), { error });
        }
        const m = await post(gPath('generateContent'), gBody('x [[mock:status=429;retry_after=7]]'));
        assert.equal(m.headers.get('retry-after'), '7');
        assert.equal((await m.json()).error.details[0].retryDelay, '7s');
      });

      it('blocked answers promptFeedback SAFETY without candidates, whole and streamed', T, async () => {
        const j = await (await post(gPath('generateContent'), gBody('bad [[mock:blocked]]'))).json();
        const seq = (await lastLogged()).seq;
        const expected = { promptFeedback: { blockReason: 'SAFETY' }, usageMetadata: { promptTokenCount: 10, totalTokenCount: 10 }, modelVersion: 'gemini-test', responseId: `mock-${seq}` };
        assert.deepEqual(j, expected);
        const r = await raw(G_SSE, gBody('bad [[mock:blocked]]'));
        assert.ok(r.complete);
        assert.deepEqual(r.chunkTexts, [gSse({ ...expected, responseId: `mock-${(await lastLogged()).seq}` })]);
      });

      it('tool_then_reset cuts right after the functionCall event', T, async () => {
        const r = await raw(G_SSE, gBody('parallel tools', { tools: tools.gemini }), [['x-mock-fault', 'tool_then_reset']]);
        assert.equal(r.status, 200);
        assert.equal(r.complete, false);
        const ev = gEvents(r.text);
        assert.equal(ev.length, 1);
        assert.deepEqual(ev[0].candidates[0].content.parts, [{ functionCall: { name: 'search_docs', args: { query: 'parallel tools' } } }]);
        assert.ok(!('finishReason' in ev[0].candidates[0]));
        // with thoughts first, and with pacing (the look-ahead path), the cut still follows the call
        const t = await raw(G_SSE, gBody('call a tool', { tools: tools.gemini, generationConfig: { thinkingConfig: { includeThoughts: true } } }),
          [['x-mock-fault', 'tool_then_reset;delay_events_ms=5']]);
        assert.equal(t.complete, false);
        const tev = gEvents(t.text);
        assert.equal(tev.length, 7); // 6 thought pieces, then the call
        assert.ok('functionCall' in tev.at(-1).candidates[0].content.parts[0]);
        // a text reply is cut after its first text event
        const x = await raw(G_SSE, gBody('plain [[mock:tool_then_reset]]'));
        assert.equal(x.complete, false);
        assert.deepEqual(gEvents(x.text).map((e) => e.candidates[0].content.parts[0].text), ['mock ']);
      });

      it('reset_after_events, reset_before_headers and malformed', T, async () => {
        const r = await raw(G_SSE, gBody('a b c'), [['x-mock-fault', 'reset_after_events=2']]);
        assert.equal(r.complete, false);
        assert.equal(r.chunkTexts.length, 2);
        assert.equal(gEvents(r.text).length, 2);

        const gone = await rawExchange(mock.port, httpRequest('POST', G_SSE, {
          headers: [['x-mock-fault', 'reset_before_headers']], body: JSON.stringify(gBody('x')),
        }));
        assert.equal(gone.raw.length, 0);

        const m = await post(gPath('generateContent'), gBody('x'), { 'x-mock-fault': 'malformed' });
        assert.equal(m.status, 200);
        const text = await m.text();
        assert.ok(text.startsWith('{"candidates":'));
        assert.throws(() => JSON.parse(text));

        const s = await raw(G_SSE, gBody('x'), [['x-mock-fault', 'malformed']]);
        assert.ok(s.complete);
        assert.equal(s.chunkTexts.length, 6); // 4 words, the finish, and the broken event after the first
        assert.equal(s.chunkTexts[1], 'data: {"candidates":[{"content":{"parts":[{"text":"brok\r\n\r\n');
        assert.equal(gEvents([s.chunkTexts[0], ...s.chunkTexts.slice(2)].join('')).length, 5);

        const a = await raw(gPath('streamGenerateContent'), gBody('x'), [['x-mock-fault', 'malformed']]);
        assert.ok(a.chunkTexts[1].startsWith(',\r\n{"candidates":[{"content":{"parts":[{"text":"brok'));
        assert.throws(() => JSON.parse(a.text));
      });

      it('delay_headers_ms, delay_events_ms and trickle_ms pace the answer', T, async () => {
        const d = await raw(gPath('generateContent'), gBody('x'), [['x-mock-fault', 'delay_headers_ms=250']]);
        assert.equal(d.status, 200);
        assert.ok(d.reads[0].at >= 240, `first byte after ${d.reads[0].at} ms`);

        const e = await raw(G_SSE, gBody('a'), [['x-mock-fault', 'delay_events_ms=50']]);
        assert.ok(e.complete);
        assert.equal(e.chunkTexts.length, 5);
        assert.ok(e.elapsed >= 4 * 50 - 10, `stream took ${e.elapsed} ms`);

        const t = await raw(gPath('generateContent'), gBody('x'), [['x-mock-fault', 'trickle_ms=5']]);
        assert.ok(t.complete);
        assert.ok(t.chunks.length > 5 && t.chunks.slice(0, -1).every((c) => c.length === 16));
        assert.equal(JSON.parse(t.text).candidates[0].content.parts[0].text, 'mock reply to: x');
      });
    });
  });

  // ---- the same conversation in every format -----------------------------------------------------------

  describe('across formats', () => {
    it('gives the same text and usage for the same conversation', T, async () => {
      const text = 'compare   these\tformats';
      const o = await (await post('/v1/chat/completions', { model: 'm', messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: text }] })).json();
      const a = await (await post(A_PATH, aBody(text), A_HEADERS)).json();
      const g = await (await post(gPath('generateContent'), gBody(text))).json();
      const reply = `mock reply to: ${text}`;
      assert.equal(o.choices[0].message.content, reply);
      assert.equal(a.content[0].text, reply);
      assert.equal(g.candidates[0].content.parts[0].text, reply);
      assert.equal(a.usage.input_tokens, o.usage.prompt_tokens);
      assert.equal(g.usageMetadata.promptTokenCount, o.usage.prompt_tokens);
      assert.equal(a.usage.output_tokens, o.usage.completion_tokens);
      assert.equal(g.usageMetadata.candidatesTokenCount, o.usage.completion_tokens);
    });

    it('openai: "think first" adds reasoning_content, blocked finishes with content_filter, a tool result ends in text', T, async () => {
      const body = (content, extra = {}) => ({ model: 'm', messages: [{ role: 'user', content }], ...extra });
      const t = await (await post('/v1/chat/completions', body('think first'))).json();
      assert.deepEqual(t.choices[0].message, { role: 'assistant', content: 'mock reply to: think first', reasoning_content: 'mock thinking about: think first' });
      assert.deepEqual(t.usage, { prompt_tokens: 5, completion_tokens: 10, total_tokens: 15, completion_tokens_details: { reasoning_tokens: 5 } });
      const s = await raw('/v1/chat/completions', body('think first', { stream: true }));
      const deltas = s.text.split('\n\n').filter((e) => e && e !== 'data: [DONE]').map((e) => JSON.parse(e.slice(6)).choices[0].delta);
      assert.deepEqual(deltas.slice(1, 7), [
        ...['mock ', 'thinking ', 'about: ', 'think ', 'first'].map((reasoning_content) => ({ reasoning_content })),
        { content: 'mock ' },
      ]);

      const b = await (await post('/v1/chat/completions', body('x [[mock:blocked]]'))).json();
      assert.deepEqual(b.choices[0], { index: 0, message: { role: 'assistant', content: null }, finish_reason: 'content_filter' });
      assert.equal(b.usage.completion_tokens, 0);
      const bs = await raw('/v1/chat/completions', body('x', { stream: true }), [['x-mock-fault', 'blocked']]);
      const chunks = bs.text.split('\n\n').filter((e) => e && e !== 'data: [DONE]').map((e) => JSON.parse(e.slice(6)));
      assert.deepEqual(chunks.map((c) => c.choices[0]), [
        { index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null },
        { index: 0, delta: {}, finish_reason: 'content_filter' },
      ]);

      const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
      const loop = await (await post('/v1/chat/completions', {
        model: 'm',
        tools,
        messages: [
          { role: 'user', content: 'call a tool' },
          { role: 'assistant', content: null, tool_calls: [{ id: 'call_mock_1', type: 'function', function: { name: 'f', arguments: '{}' } }] },
          { role: 'tool', tool_call_id: 'call_mock_1', content: 'result text' },
        ],
      })).json();
      assert.equal(loop.choices[0].finish_reason, 'stop');
      assert.equal(loop.choices[0].message.content, 'mock reply to: call a tool');
    });
  });
});
