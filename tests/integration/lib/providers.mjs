/*
 * providers.mjs — a gateway with one provider of each upstream wire format, all pointing at the same mock, for
 * the provider-translation tests (tests/integration/providers.test.mjs and tests/e2e/providers-*-sdk.test.mjs).
 *
 *   providers  oa (type "openai", <mock>/v1), an (type "anthropic", <mock>/v1), ge (type "gemini", <mock>/v1beta),
 *              each with one provider key (UPSTREAM_KEYS, passed to the gateway in the environment)
 *   models     gpt-mock → oa/mock-small, claude-mock → an/claude-sonnet-4, gemini-mock → ge/gemini-2.5-flash
 *   tenant     t1 with KEYS.t1, every model
 *   prices     none configured: each request is priced from the shipped table (gateway/prices.c) by its upstream
 *              model name, so the cost a test expects is that table's row (PRICES below).
 *
 * Also the mock's counting rules (docs/mock.md, "The reply, in every format") so tests compute the exact usage
 * each upstream format reports.
 */
import { hashKey, KEYS, startGateway, startMock } from './harness.mjs';

/** The three models, keyed by the upstream format that serves them. */
export const MODELS = {
    openai: { name: 'gpt-mock', provider: 'oa', upstream: 'mock-small' },
    anthropic: { name: 'claude-mock', provider: 'an', upstream: 'claude-sonnet-4' },
    gemini: { name: 'gemini-mock', provider: 'ge', upstream: 'gemini-2.5-flash' },
};

export const FORMATS = Object.keys(MODELS);

/** The provider keys the gateway is given, by provider name, with the environment variable each is read from. */
export const UPSTREAM_KEYS = {
    oa: { env: 'LEO_TEST_OA_KEY', value: 'sk-oa-upstream-key-0001' },
    an: { env: 'LEO_TEST_AN_KEY', value: 'sk-ant-upstream-key-0001' },
    ge: { env: 'LEO_TEST_GE_KEY', value: 'gm-upstream-key-0001' },
};

/** USD per 1M tokens of the upstream models, as gateway/prices.c lists them. */
export const PRICES = {
    'mock-small': { input: 0.1, output: 0.4 },
    'claude-sonnet-4': { input: 3.0, output: 15.0 },
    'gemini-2.5-flash': { input: 0.3, output: 2.5 },
};

/** The cost the gateway reports ("%.8f") for a request served by upstream model `upstream`. */
export function costOf(upstream, promptTokens, completionTokens) {
    const p = PRICES[upstream];
    return ((promptTokens * p.input + completionTokens * p.output) / 1e6).toFixed(8);
}

/** The gateway config: the three providers above on mockPort. mutate(config) may change it. */
export function providersConfig({ mockPort, hash, mutate } = {}) {
    const config = {
        listen: '127.0.0.1:0',
        workers: 1,
        drain_timeout_ms: 10000,
        providers: [
            { name: 'oa', type: 'openai', base_url: `http://127.0.0.1:${mockPort}/v1`, api_key_env: UPSTREAM_KEYS.oa.env },
            { name: 'an', type: 'anthropic', base_url: `http://127.0.0.1:${mockPort}/v1`, api_key_env: UPSTREAM_KEYS.an.env },
            { name: 'ge', type: 'gemini', base_url: `http://127.0.0.1:${mockPort}/v1beta`, api_key_env: UPSTREAM_KEYS.ge.env },
            { name: 'oa-rl', type: 'openai', base_url: `http://127.0.0.1:${mockPort}/v1`, api_key_env: UPSTREAM_KEYS.oa.env },
            { name: 'an-rl', type: 'anthropic', base_url: `http://127.0.0.1:${mockPort}/v1`, api_key_env: UPSTREAM_KEYS.an.env },
            { name: 'ge-rl', type: 'gemini', base_url: `http://127.0.0.1:${mockPort}/v1beta`, api_key_env: UPSTREAM_KEYS.ge.env },
        ],
        models: Object.values(MODELS).flatMap((m) => [
            { name: m.name, deployments: [{ provider: m.provider, model: m.upstream }] },
            /* the same upstream through a provider of its own, for rate-limit tests: a 429 cools down that
             * provider's key for Retry-After, which must not touch the other tests' traffic */
            { name: `${m.name}-rl`, deployments: [{ provider: `${m.provider}-rl`, model: m.upstream }] },
        ]),
        routing: { breaker_failures: 1000 },
        tenants: [{ id: 't1', keys: [{ name: 'k1', hash }] }],
        limits: { max_body_bytes: 1048576 },
    };
    if (mutate) mutate(config);
    return config;
}

/**
 * Starts a mock and a gateway with providersConfig. Returns { mock, gw, key, config, stop() }; stop() stops both
 * and fails unless both exited with status 0 and without sanitizer reports.
 */
export async function startProviderStack({ mutate, env = {} } = {}) {
    const mock = await startMock({ env });
    try {
        const hash = await hashKey(KEYS.t1, env);
        const config = providersConfig({ mockPort: mock.port, hash, mutate });
        const keyEnv = Object.fromEntries(Object.values(UPSTREAM_KEYS).map((k) => [k.env, k.value]));
        const gw = await startGateway({ config, env: { ...env, ...keyEnv } });
        return {
            mock,
            gw,
            key: KEYS.t1,
            config,
            async stop() {
                const results = await Promise.allSettled([gw.stop(), mock.stop()]);
                const failed = results.filter((r) => r.status === 'rejected');
                if (failed.length) throw failed[0].reason;
                const [g, m] = results.map((r) => r.value);
                if (g.code !== 0) throw new Error(`gateway exited with ${JSON.stringify(g)}:\n${gw.stderr.tail(20)}`);
                if (m.code !== 0) throw new Error(`mock exited with ${JSON.stringify(m)}`);
            },
        };
    } catch (e) {
        await mock.stop().catch(() => {});
        throw e;
    }
}

/* ---- the mock's counting rules (docs/mock.md) ---- */

/** Words: maximal runs of bytes that are not ASCII whitespace. */
export function words(s) {
    return s.split(/[ \t\n\r\v\f]+/).filter(Boolean).length;
}

/** The mock's reply text to a last user text. */
export const reply = (text) => `mock reply to: ${text}`;

/** The mock's reasoning text ("think first" or a thinking request). */
export const thinking = (text) => `mock thinking about: ${text}`;

/**
 * Prompt tokens the mock counts: the words of every message's text, 3 per message, 85 per image. texts is one
 * entry per message (the system prompt counts as one message).
 */
export function promptTokens(texts, images = 0) {
    return texts.reduce((n, t) => n + words(t) + 3, 0) + 85 * images;
}

/** Completion tokens of a tool-call answer: 1 + the words of the arguments string, per call. */
export function callTokens(args, calls = 1) {
    return calls * (1 + words(args));
}
