/*
 * openapi.test.mjs — the admin API's OpenAPI document (controlplane/openapi.json, served at
 * GET /admin/v1/openapi.json) is kept true here:
 *
 * - its operations are exactly the rows of the route table (`routes[]` in controlplane/api.c, read from the
 *   source), with the permission and scope of each row in `x-leo-permission` / `x-leo-scope`, so a new route
 *   without documentation fails, and so does a documented route that does not exist;
 * - it is structurally valid OpenAPI 3.0 (every $ref resolves, every path parameter is declared, ...);
 * - the daemon (on a private PostgreSQL, lib/postgres.mjs) answers a walk through the API as documented: every
 *   status is one the operation lists, and every body validates against the documented schema for its status
 *   and content type; required members of request bodies really are required.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { LineLog, bin, sourceDir } from './lib/harness.mjs';
import { adminRequest } from './lib/controlplane.mjs';
import { startPostgres } from './lib/postgres.mjs';

const T = { timeout: 30000 };
const OWNER = { email: 'owner@openapi.test', password: 'owner-password-0001' };
const DOC_FILE = path.join(sourceDir, 'controlplane', 'openapi.json');
const API_C = path.join(sourceDir, 'controlplane', 'api.c');
const AUTH_C = path.join(sourceDir, 'controlplane', 'auth.c');
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

let pg;
let cp;
let port;
let doc; /* the document as served */
let upstream; /* the provider of the connection test */

/* ------------------------------------------------------------------------------------------------------------
 * The route table, from the source
 * ------------------------------------------------------------------------------------------------------------ */

/** The rows of routes[] in api.c: [{method, path, perm (a permission name or null), scope}]. */
function routeTable() {
    const api = fs.readFileSync(API_C, 'utf8');
    const auth = fs.readFileSync(AUTH_C, 'utf8');
    const names = new Map(); /* LEO_PERM_X → "x.read" (auth.c's perm_names) */
    for (const m of auth.matchAll(/\{\s*(LEO_PERM_[A-Z_]+),\s*"([a-z._]+)"\s*\}/g)) names.set(m[1], m[2]);
    const aliases = new Map(); /* api.c's #define PERM_X LEO_PERM_Y */
    for (const m of api.matchAll(/^#define\s+(PERM_[A-Z_]+)\s+(LEO_PERM_[A-Z_]+)\s*$/gm)) aliases.set(m[1], m[2]);
    const start = api.indexOf('static const struct route routes[] = {');
    assert.ok(start >= 0, 'routes[] not found in controlplane/api.c');
    const body = api.slice(start, api.indexOf('\n};', start));
    const rows = [];
    for (const m of body.matchAll(/\{\s*"([A-Z]+)",\s*"([^"]+)",\s*([A-Za-z0-9_]+),\s*SCOPE_([A-Z]+),\s*\w+\s*\}/g)) {
        let perm = null;
        if (m[3] !== '0') {
            const ident = aliases.get(m[3]) || m[3];
            perm = names.get(ident);
            assert.ok(perm, `${m[1]} ${m[2]}: cannot resolve the permission ${m[3]} to a name (auth.c perm_names)`);
        }
        rows.push({ method: m[1], path: m[2], perm, scope: m[4].toLowerCase() });
    }
    /* every row was understood: as many matches as rows that open with a method string */
    const opened = [...body.matchAll(/\{\s*"(GET|POST|PUT|PATCH|DELETE)"/g)].length;
    assert.equal(rows.length, opened, 'a row of routes[] has a shape this test does not parse');
    assert.ok(rows.length > 40, `only ${rows.length} routes parsed`);
    return rows;
}

function operations(d) {
    const ops = [];
    for (const [p, item] of Object.entries(d.paths))
        for (const m of METHODS) if (item[m]) ops.push({ method: m.toUpperCase(), path: p, item, op: item[m] });
    return ops;
}

/* ------------------------------------------------------------------------------------------------------------
 * A small validator for the JSON Schema subset OpenAPI 3.0 uses (and this document uses)
 * ------------------------------------------------------------------------------------------------------------ */

function resolvePointer(d, ref) {
    assert.ok(ref.startsWith('#/'), `only local $refs are used: ${ref}`);
    let cur = d;
    for (const raw of ref.slice(2).split('/')) {
        const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
        if (cur === null || typeof cur !== 'object' || !(part in cur)) return undefined;
        cur = cur[part];
    }
    return cur;
}

const deref = (d, s) => (s && s.$ref ? deref(d, resolvePointer(d, s.$ref)) : s);
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function typeOf(v) {
    if (v === null) return 'null';
    if (Array.isArray(v)) return 'array';
    if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
    return typeof v;
}

/** Errors of v against schema s (empty when valid), each "where: what". */
function validate(d, s, v, where = '$', errs = []) {
    s = deref(d, s);
    if (s === undefined) {
        errs.push(`${where}: unresolvable schema`);
        return errs;
    }
    if (s.allOf) for (const sub of s.allOf) validate(d, sub, v, where, errs);
    if (s.oneOf) {
        const ok = s.oneOf.filter((sub) => validate(d, sub, v, where, []).length === 0).length;
        if (ok !== 1) errs.push(`${where}: matches ${ok} of oneOf`);
    }
    if (v === null) {
        if (!s.nullable && (s.type || s.properties)) errs.push(`${where}: null is not allowed`);
        return errs;
    }
    const t = typeOf(v);
    if (s.type && !(s.type === t || (s.type === 'number' && t === 'integer'))) {
        errs.push(`${where}: expected ${s.type}, got ${t}`);
        return errs;
    }
    if (s.enum && !s.enum.includes(v)) errs.push(`${where}: ${JSON.stringify(v)} is not one of ${s.enum.join(', ')}`);
    if (t === 'string') {
        if (s.minLength !== undefined && [...v].length < s.minLength) errs.push(`${where}: shorter than ${s.minLength}`);
        if (s.maxLength !== undefined && [...v].length > s.maxLength) errs.push(`${where}: longer than ${s.maxLength}`);
        if (s.pattern && !new RegExp(s.pattern, 'u').test(v)) errs.push(`${where}: does not match ${s.pattern}`);
        if (s.format === 'date-time' && !RFC3339.test(v)) errs.push(`${where}: not a date-time: ${v}`);
        if (s.format === 'uuid' && !UUID.test(v)) errs.push(`${where}: not a uuid: ${v}`);
    }
    if (t === 'integer' || t === 'number') {
        if (s.minimum !== undefined && v < s.minimum) errs.push(`${where}: below ${s.minimum}`);
        if (s.maximum !== undefined && v > s.maximum) errs.push(`${where}: above ${s.maximum}`);
    }
    if (t === 'array') {
        if (s.minItems !== undefined && v.length < s.minItems) errs.push(`${where}: fewer than ${s.minItems} items`);
        if (s.maxItems !== undefined && v.length > s.maxItems) errs.push(`${where}: more than ${s.maxItems} items`);
        if (s.items) v.forEach((x, i) => validate(d, s.items, x, `${where}[${i}]`, errs));
    }
    if (t === 'object') {
        for (const r of s.required || []) if (!(r in v)) errs.push(`${where}: the required member "${r}" is missing`);
        const props = s.properties || {};
        for (const [k, x] of Object.entries(v)) {
            if (k in props) validate(d, props[k], x, `${where}.${k}`, errs);
            else if (s.additionalProperties === false) errs.push(`${where}: "${k}" is not a documented member`);
            else if (typeof s.additionalProperties === 'object') validate(d, s.additionalProperties, x, `${where}.${k}`, errs);
        }
        if (s.minProperties !== undefined && Object.keys(v).length < s.minProperties)
            errs.push(`${where}: fewer than ${s.minProperties} members`);
    }
    return errs;
}

/* ------------------------------------------------------------------------------------------------------------
 * The daemon and calls checked against the document
 * ------------------------------------------------------------------------------------------------------------ */

async function startDaemon(env) {
    const proc = spawn(bin('leo-controlplane'), ['serve', '--listen', '127.0.0.1:0', '--db-pool', '3'], {
        env: {
            ...process.env,
            ASAN_OPTIONS: process.env.ASAN_OPTIONS || 'abort_on_error=0:detect_leaks=1',
            UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || 'print_stacktrace=1',
            LEO_KEY_HASH_SECRET: 'openapi-integration-secret-0c2d',
            ...env,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    const stderr = new LineLog(proc.stderr, 'controlplane stderr');
    const line = await stderr.waitForJson((j) => /^listening on /.test(j.msg || ''), {
        timeoutMs: 20000,
        what: '"listening on" line',
    });
    return {
        port: Number(/:(\d+)$/.exec(line.msg)[1]),
        async stop() {
            proc.kill('SIGTERM');
            const info = await exited;
            if (!proc.stderr.readableEnded) await new Promise((resolve) => proc.stderr.once('close', resolve));
            if (stderr.sanitizerReports().length) throw new Error('sanitizer reports:\n' + stderr.tail(80));
            return info;
        },
    };
}

/** One admin API request to the daemon (lib/controlplane.mjs adminRequest): {status, headers, text, json}. */
const request = (method, p, opts = {}) => adminRequest(port, method, p, opts);

const exercised = new Set();

/**
 * Calls the documented operation `method template` with the path parameters filled in from params (and
 * `query` appended), and checks the answer against the document: the status must be one the operation lists,
 * the content type one it lists for that status, and a JSON body must validate against its schema. Returns
 * the answer.
 */
async function call(method, template, { params = {}, query = '', token, body, expect } = {}) {
    const item = doc.paths[template];
    assert.ok(item && item[method.toLowerCase()], `${method} ${template} is not documented`);
    const op = item[method.toLowerCase()];
    const p = template.replace(/\{(\w+)\}/g, (_, n) => {
        assert.ok(n in params, `${template}: no value for {${n}}`);
        return encodeURIComponent(params[n]);
    });
    const r = await request(method, p + query, { token, body });
    const what = `${method} ${p}${query} → ${r.status}`;
    if (expect !== undefined) assert.equal(r.status, expect, `${what}: ${r.text}`);
    const status = String(r.status);
    const resp = deref(doc, op.responses[status] || op.responses[`${status[0]}XX`] || op.responses.default);
    assert.ok(resp, `${what}: the status is not documented for this operation (documented: ${
        Object.keys(op.responses).join(', ')}): ${r.text}`);
    exercised.add(`${method} ${template}`);
    if (!resp.content) {
        assert.equal(r.text, '', `${what}: documented without a body, got one`);
        return r;
    }
    const type = (r.headers['content-type'] || '').split(';')[0].trim();
    const media = resp.content[type];
    assert.ok(media, `${what}: content type "${type}" is not documented (${Object.keys(resp.content).join(', ')})`);
    if (type === 'application/json') {
        assert.ok(r.json !== undefined, `${what}: not JSON: ${r.text}`);
        const errs = validate(doc, media.schema, r.json);
        assert.deepEqual(errs, [], `${what}: the body does not match the documented schema: ${r.text}`);
    }
    return r;
}

/** A documented error: the status, and the code and param when given. */
async function callError(method, template, status, { code, param, ...opts }) {
    const r = await call(method, template, { ...opts, expect: status });
    if (code !== undefined) assert.equal(r.json.error.code, code, r.text);
    if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
    return r;
}

/** Each member the request schema of the operation marks required, left out of an otherwise valid body,
 *  is a 400 naming it (missing_field) — the documented required members are the real ones. */
async function requiredMembersAreRequired(method, template, validBody, opts = {}) {
    const op = doc.paths[template][method.toLowerCase()];
    const schema = deref(doc, op.requestBody.content['application/json'].schema);
    assert.deepEqual(validate(doc, schema, validBody), [], `${template}: the test's valid body is not valid`);
    assert.ok((schema.required || []).length > 0, `${method} ${template}: no required members documented`);
    for (const member of schema.required) {
        const body = { ...validBody };
        delete body[member];
        await callError(method, template, 400, { ...opts, body, code: 'missing_field', param: member });
    }
    if (schema.additionalProperties === false)
        await callError(method, template, 400, { ...opts, body: { ...validBody, surplus: 1 }, code: 'unknown_field',
            param: 'surplus' });
}

/* ------------------------------------------------------------------------------------------------------------ */

before(async () => {
    pg = await startPostgres();
    await pg.psql('CREATE DATABASE leo;');
    cp = await startDaemon({
        DATABASE_URL: `host=127.0.0.1 port=${pg.port} user=postgres dbname=leo connect_timeout=5`,
        LEO_BOOTSTRAP_OWNER_EMAIL: OWNER.email,
        LEO_BOOTSTRAP_OWNER_PASSWORD: OWNER.password,
        LEO_MASTER_KEY: crypto.randomBytes(32).toString('base64'),
    });
    port = cp.port;
}, { timeout: 60000 });

after(async () => {
    if (upstream) await new Promise((resolve) => upstream.close(resolve));
    try {
        if (cp) assert.deepEqual(await cp.stop(), { code: 0, signal: null }, 'leo-controlplane exit after SIGTERM');
    } finally {
        if (pg) await pg.stop();
    }
}, { timeout: 60000 });

describe('the document', () => {
    it('is served without authentication as application/json, byte for byte controlplane/openapi.json', T, async () => {
        const r = await request('GET', '/admin/v1/openapi.json');
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['content-type'], 'application/json');
        assert.equal(r.text, fs.readFileSync(DOC_FILE, 'utf8'), 'the served document is not the one in the tree');
        doc = r.json;
        assert.ok(doc && typeof doc === 'object', 'the served document is not JSON');
    });

    it('documents exactly the routes of routes[] in controlplane/api.c', T, () => {
        const table = routeTable();
        const inTable = new Set(table.map((r) => `${r.method} ${r.path}`));
        assert.equal(inTable.size, table.length, 'a route appears twice in routes[]');
        const documented = new Set(operations(doc).map((o) => `${o.method} ${o.path}`));
        const undocumented = [...inTable].filter((k) => !documented.has(k)).sort();
        const nonexistent = [...documented].filter((k) => !inTable.has(k)).sort();
        assert.deepEqual(undocumented, [], 'routes without documentation in controlplane/openapi.json');
        assert.deepEqual(nonexistent, [], 'documented operations that are not routes of controlplane/api.c');
    });

    it('gives each operation the permission and scope of its route; public routes need no security', T, () => {
        const byKey = new Map(routeTable().map((r) => [`${r.method} ${r.path}`, r]));
        for (const { method, path: p, op } of operations(doc)) {
            const row = byKey.get(`${method} ${p}`);
            const what = `${method} ${p}`;
            assert.ok('x-leo-permission' in op, `${what}: no x-leo-permission`);
            assert.equal(op['x-leo-permission'], row.perm, `${what}: x-leo-permission`);
            assert.equal(op['x-leo-scope'], row.scope, `${what}: x-leo-scope`);
            const security = op.security || doc.security;
            if (row.scope === 'public') {
                assert.deepEqual(op.security, [], `${what}: a public route is documented with security []`);
            } else {
                assert.ok(Array.isArray(security) && security.length > 0, `${what}: needs a bearer token`);
                assert.ok(op.responses['401'], `${what}: 401 is not documented`);
            }
            if (row.perm) assert.ok(op.responses['403'], `${what}: 403 is not documented`);
        }
    });

    it('is structurally valid OpenAPI 3.0: info, paths, operations, $refs, path parameters', T, () => {
        assert.match(doc.openapi, /^3\.0\.\d+$/);
        assert.equal(typeof doc.info?.title, 'string');
        assert.equal(typeof doc.info?.version, 'string');
        assert.ok(doc.paths && typeof doc.paths === 'object');
        const schemes = doc.components?.securitySchemes || {};
        for (const req of doc.security || []) for (const name of Object.keys(req)) assert.ok(schemes[name], name);
        for (const [name, s] of Object.entries(schemes)) {
            assert.ok(['http', 'apiKey', 'oauth2', 'openIdConnect'].includes(s.type), `securityScheme ${name}`);
            if (s.type === 'http') assert.equal(typeof s.scheme, 'string', `securityScheme ${name}`);
        }

        /* every $ref anywhere resolves */
        const refs = [];
        (function walk(x, where) {
            if (Array.isArray(x)) x.forEach((y, i) => walk(y, `${where}[${i}]`));
            else if (x && typeof x === 'object')
                for (const [k, v] of Object.entries(x)) {
                    if (k === '$ref') refs.push([where, v]);
                    else walk(v, `${where}.${k}`);
                }
        })(doc, '$');
        assert.ok(refs.length > 50, `only ${refs.length} $refs`);
        for (const [where, ref] of refs) assert.ok(resolvePointer(doc, ref) !== undefined, `${where}: $ref ${ref}`);

        const ids = new Set();
        for (const { method, path: p, item, op } of operations(doc)) {
            const what = `${method} ${p}`;
            assert.ok(p.startsWith('/'), `${what}: a path starts with /`);
            assert.equal(typeof op.operationId, 'string', `${what}: operationId`);
            assert.ok(!ids.has(op.operationId), `${what}: operationId ${op.operationId} is used twice`);
            ids.add(op.operationId);
            for (const req of op.security || []) for (const name of Object.keys(req)) assert.ok(schemes[name], name);

            /* parameters: the operation's override the path item's of the same name and location */
            const params = new Map();
            for (const raw of [...(item.parameters || []), ...(op.parameters || [])]) {
                const prm = deref(doc, raw);
                assert.ok(prm && typeof prm.name === 'string', `${what}: a parameter without a name`);
                assert.ok(['path', 'query', 'header', 'cookie'].includes(prm.in), `${what}: ${prm.name}: in`);
                assert.ok(prm.schema || prm.content, `${what}: ${prm.name}: no schema`);
                params.set(`${prm.in}:${prm.name}`, prm);
            }
            const inTemplate = [...p.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
            assert.equal(new Set(inTemplate).size, inTemplate.length, `${what}: a path parameter appears twice`);
            for (const n of inTemplate) {
                const prm = params.get(`path:${n}`);
                assert.ok(prm, `${what}: the path parameter {${n}} is not declared`);
                assert.equal(prm.required, true, `${what}: the path parameter {${n}} must be required`);
            }
            for (const prm of params.values())
                if (prm.in === 'path') assert.ok(inTemplate.includes(prm.name), `${what}: {${prm.name}} is not in the path`);

            if (op.requestBody) {
                const rb = deref(doc, op.requestBody);
                assert.ok(rb.content && Object.keys(rb.content).length, `${what}: requestBody without content`);
                for (const m of Object.values(rb.content)) assert.ok(deref(doc, m.schema), `${what}: request schema`);
            }
            const codes = Object.keys(op.responses || {});
            assert.ok(codes.length > 0, `${what}: no responses`);
            assert.ok(codes.some((c) => /^2/.test(c)), `${what}: no success response`);
            for (const c of codes) {
                assert.match(c, /^([1-5](\d\d|XX)|default)$/, `${what}: response key ${c}`);
                const resp = deref(doc, op.responses[c]);
                assert.equal(typeof resp?.description, 'string', `${what} ${c}: a response needs a description`);
                for (const [type, m] of Object.entries(resp.content || {})) {
                    assert.ok(deref(doc, m.schema), `${what} ${c} ${type}: no schema`);
                    if (['400', '401', '403', '404', '409'].includes(c))
                        assert.equal(m.schema.$ref, '#/components/schemas/Error', `${what} ${c}: the error shape`);
                }
            }
        }
        /* the error shape is the API's: {"error":{"message","type","param","code"}} */
        const err = deref(doc, doc.components.schemas.Error);
        assert.deepEqual(err.required, ['error']);
        assert.deepEqual(deref(doc, err.properties.error).required.sort(), ['code', 'message', 'param', 'type']);
    });
});

describe('the daemon answers as documented', () => {
    const S = {};

    it('public routes: health, metrics, login; 401 without a token', T, async () => {
        await call('GET', '/admin/v1/health', { expect: 200 });
        await call('GET', '/metrics', { expect: 200 });
        await callError('GET', '/admin/v1/tenants', 401, { code: 'missing_session' });
        await callError('GET', '/admin/v1/me', 401, { token: 'leo_sess_not-a-session', code: 'invalid_session' });
        await callError('POST', '/admin/v1/login', 401, { body: { email: OWNER.email, password: 'wrong-password-01' },
            code: 'invalid_credentials' });
        await requiredMembersAreRequired('POST', '/admin/v1/login', OWNER);
        S.owner = (await call('POST', '/admin/v1/login', { body: OWNER, expect: 200 })).json.token;
        await call('GET', '/admin/v1/me', { token: S.owner, expect: 200 });
    });

    it('tenants, users and keys', T, async () => {
        const token = S.owner;
        const tenant = { slug: 'openapi-a', name: 'OpenAPI A' };
        await requiredMembersAreRequired('POST', '/admin/v1/tenants', tenant, { token });
        S.tenant = (await call('POST', '/admin/v1/tenants', { token, body: tenant, expect: 201 })).json;
        await callError('POST', '/admin/v1/tenants', 409, { token, body: tenant, code: 'already_exists', param: 'slug' });
        const tp = { tenant: S.tenant.id };
        await call('GET', '/admin/v1/tenants', { token, query: '?limit=1', expect: 200 });
        await callError('GET', '/admin/v1/tenants', 400, { token, query: '?limit=0', param: 'limit' });
        await callError('GET', '/admin/v1/tenants', 400, { token, query: '?colour=red', code: 'unknown_parameter' });
        await call('GET', '/admin/v1/tenants/{tenant}', { token, params: tp, expect: 200 });
        await callError('GET', '/admin/v1/tenants/{tenant}', 404, { token, params: { tenant: crypto.randomUUID() } });
        await call('PATCH', '/admin/v1/tenants/{tenant}', { token, params: tp, body: { name: 'OpenAPI A.' }, expect: 200 });
        await callError('PATCH', '/admin/v1/tenants/{tenant}', 400, { token, params: tp, body: {}, code: 'empty_change' });

        const user = { email: 'member@openapi.test', password: 'member-password-0001', role: 'tenant_member',
            tenant_id: S.tenant.id };
        await requiredMembersAreRequired('POST', '/admin/v1/users', user, { token });
        await call('POST', '/admin/v1/users', { token, body: user, expect: 201 });
        await call('GET', '/admin/v1/users', { token, expect: 200 });
        const member = (await call('POST', '/admin/v1/login', { body: { email: user.email, password: user.password },
            expect: 200 })).json.token;
        await callError('POST', '/admin/v1/tenants', 403, { token: member, body: { slug: 'x', name: 'x' },
            code: 'forbidden' });
        await callError('GET', '/admin/v1/audit', 403, { token: member, code: 'forbidden' });

        const key = { name: 'production', allowed_models: ['gpt-4o-mini'], limits: { rpm: 100, usd_per_day: 2.5 },
            expires_at: '2099-01-31T00:00:00Z' };
        await requiredMembersAreRequired('POST', '/admin/v1/tenants/{tenant}/keys', key, { token, params: tp });
        const k = (await call('POST', '/admin/v1/tenants/{tenant}/keys', { token, params: tp, body: key, expect: 201 }))
            .json;
        const kp = { ...tp, key: k.id };
        await call('GET', '/admin/v1/tenants/{tenant}/keys', { token, params: tp, expect: 200 });
        await call('GET', '/admin/v1/tenants/{tenant}/keys/{key}', { token, params: kp, expect: 200 });
        await call('PATCH', '/admin/v1/tenants/{tenant}/keys/{key}', { token, params: kp,
            body: { status: 'disabled', allowed_models: null }, expect: 200 });
        const rotated = (await call('POST', '/admin/v1/tenants/{tenant}/keys/{key}/rotate', { token, params: kp,
            expect: 200 })).json;
        await callError('POST', '/admin/v1/tenants/{tenant}/keys/{key}/revoke', 409, { token, params: kp,
            code: 'key_revoked' });
        await call('POST', '/admin/v1/tenants/{tenant}/keys/{key}/revoke', { token, params: { ...tp, key: rotated.id },
            body: {}, expect: 200 });
        await callError('GET', '/admin/v1/tenants/{tenant}/keys/{key}', 404, { token,
            params: { ...tp, key: crypto.randomUUID() } });
    });

    it('admin API tokens, invitations and config validation', T, async () => {
        const token = S.owner;
        const tok = { name: 'ci', role: 'viewer' };
        await requiredMembersAreRequired('POST', '/admin/v1/tokens', tok, { token });
        const t = (await call('POST', '/admin/v1/tokens', { token, body: tok, expect: 201 })).json;
        await call('GET', '/admin/v1/me', { token: t.token, expect: 200 });
        await call('GET', '/admin/v1/tokens', { token: t.token, expect: 200 });
        await call('POST', '/admin/v1/tokens/{token}/revoke', { token, params: { token: t.id }, expect: 200 });
        await callError('POST', '/admin/v1/tokens/{token}/revoke', 409, { token, params: { token: t.id },
            code: 'token_revoked' });
        await callError('GET', '/admin/v1/me', 401, { token: t.token, code: 'invalid_session' });

        const inv = { email: 'invitee@openapi.test', role: 'tenant_admin', tenant_id: S.tenant.id };
        await requiredMembersAreRequired('POST', '/admin/v1/invitations', inv, { token });
        const i = (await call('POST', '/admin/v1/invitations', { token, body: inv, expect: 201 })).json;
        await call('GET', '/admin/v1/invitations', { token, expect: 200 });
        const accept = { token: i.token, password: 'invitee-password-01' };
        await requiredMembersAreRequired('POST', '/admin/v1/invitations/accept', accept);
        await call('POST', '/admin/v1/invitations/accept', { body: accept, expect: 201 });
        await callError('POST', '/admin/v1/invitations/accept', 404, { body: accept, code: 'not_found' });
        await callError('POST', '/admin/v1/invitations/{invitation}/revoke', 409, { token, params: { invitation: i.id },
            code: 'invitation_not_pending' });
        const i2 = (await call('POST', '/admin/v1/invitations', { token, expect: 201,
            body: { email: 'second@openapi.test', role: 'viewer' } })).json;
        await call('POST', '/admin/v1/invitations/{invitation}/revoke', { token, params: { invitation: i2.id },
            expect: 200 });

        const v = { kind: 'key', action: 'create', tenant_id: S.tenant.id, body: { name: 'ci', limits: { rpm: -1 } } };
        await requiredMembersAreRequired('POST', '/admin/v1/config/validate', v, { token });
        const bad = (await call('POST', '/admin/v1/config/validate', { token, body: v, expect: 200 })).json;
        assert.equal(bad.valid, false);
        assert.equal(bad.errors[0].field, 'limits.rpm');
        const good = (await call('POST', '/admin/v1/config/validate', { token, expect: 200,
            body: { ...v, body: { name: 'ci' } } })).json;
        assert.deepEqual(good, { valid: true });
    });

    it('providers, credentials, deployments and models', T, async () => {
        const token = S.owner;
        /* the provider the connection test reaches: a local server that refuses every request */
        upstream = http.createServer((req, res) => {
            req.resume();
            res.writeHead(401, { 'Content-Type': 'application/json' });
            res.end('{"error":{"message":"invalid api key"}}');
        });
        await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve));
        const prov = { name: 'openai-main', type: 'openai', base_url: `http://127.0.0.1:${upstream.address().port}/v1`,
            timeouts: { connect_ms: 2000 } };
        await requiredMembersAreRequired('POST', '/admin/v1/providers', prov, { token });
        const p = (await call('POST', '/admin/v1/providers', { token, body: prov, expect: 201 })).json;
        const pp = { provider: p.id };
        await callError('POST', '/admin/v1/providers', 409, { token, body: prov, code: 'already_exists' });
        await call('GET', '/admin/v1/providers', { token, expect: 200 });
        await call('GET', '/admin/v1/providers/{provider}', { token, params: pp, expect: 200 });
        await callError('POST', '/admin/v1/providers/{provider}/test', 409, { token, params: pp, code: 'no_credential' });
        await callError('PATCH', '/admin/v1/providers/{provider}', 400, { token, params: pp, body: { name: 'x' },
            code: 'immutable_field', param: 'name' });

        const cred = { name: 'primary', secret: 'sk-openapi-test-secret-4b1d', weight: 2 };
        await requiredMembersAreRequired('POST', '/admin/v1/providers/{provider}/credentials', cred,
            { token, params: pp });
        const c = (await call('POST', '/admin/v1/providers/{provider}/credentials', { token, params: pp, body: cred,
            expect: 201 })).json;
        assert.ok(!JSON.stringify(c).includes(cred.secret), 'the secret is never returned');
        const cp2 = { ...pp, key: c.id };
        await call('GET', '/admin/v1/providers/{provider}/credentials', { token, params: pp, expect: 200 });
        await call('PATCH', '/admin/v1/providers/{provider}/credentials/{key}', { token, params: cp2,
            body: { weight: 3 }, expect: 200 });
        const probe = (await call('POST', '/admin/v1/providers/{provider}/test', { token, params: pp, expect: 200 })).json;
        assert.equal(probe.result, 'refused', JSON.stringify(probe));
        assert.equal(probe.status, 401);
        await call('PATCH', '/admin/v1/providers/{provider}', { token, params: pp, body: { enabled: false }, expect: 200 });

        const cool = { duration_s: 60, reason: 'maintenance' };
        const cooldown = '/admin/v1/providers/{provider}/credentials/{key}/cooldown';
        await callError('POST', cooldown, 400, { token, params: cp2, body: { ...cool, until: '2099-01-01T00:00:00Z' } });
        await callError('POST', cooldown, 400, { token, params: cp2, body: { reason: 'neither' } });
        await call('POST', cooldown, { token, params: cp2, body: cool, expect: 201 });
        await call('GET', '/admin/v1/cooldowns', { token, expect: 200 });
        await call('DELETE', cooldown, { token, params: cp2, expect: 200 });
        await callError('DELETE', cooldown, 404, { token, params: cp2 });
        await call('DELETE', '/admin/v1/providers/{provider}/credentials/{key}', { token, params: cp2, expect: 200 });
        await callError('DELETE', '/admin/v1/providers/{provider}/credentials/{key}', 404, { token, params: cp2 });

        const dep = { provider_id: p.id, model: 'gpt-4o-mini-2024-07-18', limits: { rpm: 500 } };
        await requiredMembersAreRequired('POST', '/admin/v1/deployments', dep, { token });
        const d = (await call('POST', '/admin/v1/deployments', { token, body: dep, expect: 201 })).json;
        const dp = { deployment: d.id };
        await call('GET', '/admin/v1/deployments', { token, expect: 200 });
        await call('GET', '/admin/v1/deployments/{deployment}', { token, params: dp, expect: 200 });
        await call('PATCH', '/admin/v1/deployments/{deployment}', { token, params: dp, body: { enabled: false },
            expect: 200 });

        const model = { name: 'smart', strategy: 'priority', deployments: [{ deployment_id: d.id, priority: 1 }] };
        await requiredMembersAreRequired('POST', '/admin/v1/models', model, { token });
        const m = (await call('POST', '/admin/v1/models', { token, body: model, expect: 201 })).json;
        const mp = { model: m.id };
        await call('GET', '/admin/v1/models', { token, expect: 200 });
        await call('GET', '/admin/v1/models/{model}', { token, params: mp, expect: 200 });
        await call('PATCH', '/admin/v1/models/{model}', { token, params: mp, body: { enabled: false }, expect: 200 });
        const ov = { model_id: m.id, deployment_id: d.id, action: 'weight', weight: 5, reason: 'canary' };
        await requiredMembersAreRequired('POST', '/admin/v1/overrides', ov, { token });
        const o = (await call('POST', '/admin/v1/overrides', { token, body: ov, expect: 201 })).json;
        await call('GET', '/admin/v1/overrides', { token, expect: 200 });
        await call('DELETE', '/admin/v1/overrides/{override}', { token, params: { override: o.id }, expect: 200 });
        await callError('DELETE', '/admin/v1/overrides/{override}', 404, { token, params: { override: o.id } });
        await call('DELETE', '/admin/v1/models/{model}', { token, params: mp, expect: 200 });
        await call('DELETE', '/admin/v1/deployments/{deployment}', { token, params: dp, expect: 200 });
        await call('DELETE', '/admin/v1/providers/{provider}', { token, params: pp, expect: 200 });
        await callError('GET', '/admin/v1/providers/{provider}', 404, { token, params: pp });
    });

    it('usage report (JSON and CSV) and the audit log', T, async () => {
        const token = S.owner;
        await pg.psql(`INSERT INTO usage_rollups (hour, tenant, key_name, model, requests, errors, cache_hits,
            prompt_tokens, completion_tokens, cost_usd, saved_usd, latency_ms_sum)
            VALUES (date_trunc('hour', now()), 'openapi-a', 'production', 'gpt-4o-mini', 5, 0, 1, 30, 30, 0.000015, 0,
            190);`, { database: 'leo' });
        for (const g of ['hour', 'day', 'model', 'key', 'tenant']) {
            const r = await call('GET', '/admin/v1/usage', { token, query: `?group_by=${g}`, expect: 200 });
            assert.equal(r.json.rows.length, 1, r.text);
            assert.equal(r.json.rows[0].requests, 5);
        }
        const csv = await call('GET', '/admin/v1/usage', { token, query: '?group_by=day&format=csv', expect: 200 });
        assert.match(csv.headers['content-type'], /^text\/csv/);
        assert.match(csv.text, /^day,requests,errors,cache_hits,prompt_tokens,completion_tokens,cost_usd,saved_usd,avg_latency_ms\r\n/);
        await callError('GET', '/admin/v1/usage', 400, { token, query: '?format=xml', param: 'format' });

        const audit = await call('GET', '/admin/v1/audit', { token, query: '?action=tenant.create&limit=5', expect: 200 });
        assert.equal(audit.json.data.length, 1, audit.text);
        await callError('GET', '/admin/v1/audit', 400, { token, query: '?since=yesterday', param: 'since' });
    });

    it('logout ends the session', T, async () => {
        await call('POST', '/admin/v1/logout', { token: S.owner, expect: 204 });
        await callError('GET', '/admin/v1/me', 401, { token: S.owner, code: 'invalid_session' });
        /* the walk above calls this many operations; a shorter walk would check less */
        assert.ok(exercised.size >= 52, `only ${exercised.size} operations were called`);
    });
});
