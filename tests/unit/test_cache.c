/*
 * test_cache.c — gateway/cache*.c: keys, policy, the L1 LRU, assembling and replaying streams, L2 on a real
 * redis-server (tests/unit/redis_harness.h), and in-flight deduplication.
 *
 * Async cases run a private libuv loop until a condition holds, bounded by a guard timer; nothing sleeps and
 * nothing asserts on timing. Every callback is counted.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/error.h"
#include "common/json_scan.h"
#include "common/metrics.h"
#include "common/redis.h"
#include "gateway/cache.h"
#include "gateway/sse.h"
#include "tests/unit/redis_harness.h"
#include "tests/unit/test.h"

/* ---- helpers ------------------------------------------------------------------------------------------ */

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    if (v == NULL)
        TEST_FAIL_("bad test JSON at %d: %s: %s", e.position, e.text, text);
    return v;
}

static void key_of(const char *tenant, enum leo_dialect d, const char *req, struct leo_cache_key *k)
{
    ASSERT_EQ(leo_cache_key(tenant, d, req, strlen(req), k), 0);
}

/* leo_cache_deterministic over a request's top-level temperature and seed */
static bool deterministic(const char *req)
{
    struct leo_str t, seed;
    if (leo_json_find_member(req, strlen(req), "temperature", &t) != 0)
        t = (struct leo_str){NULL, 0};
    if (leo_json_find_member(req, strlen(req), "seed", &seed) != 0)
        seed = (struct leo_str){NULL, 0};
    return leo_cache_deterministic(t, seed);
}

static bool same_key(const char *a, const char *b)
{
    struct leo_cache_key ka, kb;
    key_of("acme", LEO_DIALECT_OPENAI, a, &ka);
    key_of("acme", LEO_DIALECT_OPENAI, b, &kb);
    return strcmp(ka.s, kb.s) == 0;
}

static void assert_json_eq(json_t *a, json_t *b)
{
    if (!json_equal(a, b)) {
        char *x = json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS), *y = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS);
        TEST_FAIL_("json differs:\n  %s\n  %s", x ? x : "(null)", y ? y : "(null)");
    }
}

/* ---- keys ----------------------------------------------------------------------------------------------- */

#define BASE "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"what is 2+3?\"}],\"temperature\":0"

TEST(key_format_is_tenant_and_hex)
{
    struct leo_cache_key k;
    key_of("acme", LEO_DIALECT_OPENAI, BASE "}", &k);
    ASSERT_EQ(k.len, 5 + 64);
    ASSERT_EQ(strlen(k.s), k.len);
    ASSERT(strncmp(k.s, "acme:", 5) == 0);
    for (size_t i = 5; i < k.len; i++)
        ASSERT((k.s[i] >= '0' && k.s[i] <= '9') || (k.s[i] >= 'a' && k.s[i] <= 'f'));
    ASSERT_EQ(leo_cache_key("acme", LEO_DIALECT_OPENAI, "[1]", 3, &k), LEO_EPARSE);
    ASSERT_EQ(leo_cache_key("acme", LEO_DIALECT_OPENAI, "{\"a\":1", 6, &k), LEO_EPARSE);
    ASSERT_EQ(leo_cache_key("", LEO_DIALECT_OPENAI, BASE "}", strlen(BASE "}"), &k), LEO_EINVAL);
    ASSERT_EQ(leo_cache_key(NULL, LEO_DIALECT_OPENAI, BASE "}", strlen(BASE "}"), &k), LEO_EINVAL);
}

TEST(key_ignores_order_whitespace_and_number_forms)
{
    ASSERT(same_key(BASE ",\"top_p\":1}", "{ \"top_p\" : 1.0,\n\"temperature\": 0e0, \"messages\": [ {\"content\":"
                                          "\"what is 2+3?\", \"role\":\"user\"} ], \"model\":\"gpt-4o\" }"));
    ASSERT(same_key(BASE ",\"max_tokens\":100}", BASE ",\"max_tokens\":1e2}"));
    ASSERT(same_key(BASE ",\"presence_penalty\":0.5}", BASE ",\"presence_penalty\":0.50}"));
    ASSERT(
        same_key(BASE ",\"x\":{\"b\":1,\"a\":{\"d\":2,\"c\":3}}}", BASE ",\"x\":{\"a\":{\"c\":3,\"d\":2},\"b\":1}}"));
    /* an escaped spelling of the same string is the same string */
    ASSERT(same_key(BASE ",\"stop\":\"A\"}", BASE ",\"stop\":\"\\u0041\"}"));

    struct leo_buf b = LEO_BUF_INIT;
    json_t *r = J("{\"b\":1.0,\"a\":[0e0,-0.0,1e2,0.5,-3],\"stream\":true,\"c\":{\"z\":null,\"y\":\"q\\\"\"}}");
    ASSERT_EQ(leo_cache_canonical(LEO_DIALECT_OPENAI, r, &b), 0);
    ASSERT_STR_EQ(b.p, "{\"a\":[0,0,100,0.5,-3],\"b\":1,\"c\":{\"y\":\"q\\\"\",\"z\":null}}");
    json_decref(r);
    leo_buf_release(&b);
}

/* ---- the key's canonical text from the bytes, against the same text from jansson's tree ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static unsigned rnd(unsigned n)
{
    return test_rnd(&rng_state, n);
}

static void ws(struct leo_buf *b)
{
    static const char *const spaces[] = {"", "", "", " ", "\n", "\t ", "\r\n  "};
    leo_buf_adds(b, spaces[rnd(7)]);
}

static void gen_value(struct leo_buf *b, int depth)
{
    static const char *const keys[] = {
        "\"a\"", "\"b\"", "\"A\"", "\"\"", "\"model\"", "\"stream\"", "\"user\"", "\"us\\u0065r\"", "\"metadata\"",
        "\"k\\u0041\"", "\"kA\"", "\"\\u00e9\"", "\"\xc3\xa9\"", "\"a\\\"b\"", "\"a\\\\b\"", "\"temperature\"",
        "\"\\ud83d\\ude00\"", "\"messages\"", "\"z\\/\"", "\"ab\""};
    static const char *const strings[] = {
        "\"plain text\"", "\"tab\\there\"", "\"\\u00e9t\\u00E9\"", "\"\xc3\xa9t\xc3\xa9\"", "\"\\ud83d\\ude00\"",
        "\"\xf0\x9f\x98\x80\"", "\"\\/\\\\\"", "\"x\\\"y\"", "\"\\u001f\\u007f\"", "\"\\b\\f\\n\\r\\t\"", "\"\"",
        "\"\\u0041BC\"", "\"what is 2+3?\"", "\"\x7f\"", "\"\\uFFFF\"", "\"\xef\xbf\xbf\""};
    static const char *const numbers[] = {
        "0", "-0", "0.0", "-0.0", "1e2", "1E+2", "100", "1.5", "-1.25e-3", "123456789012345678", "9223372036854775807",
        "-9223372036854775808", "9223372036854775808", "-9223372036854775809", "1e400", "-1e400", "1e-400", "0.1",
        "3.141592653589793238462643", "12345678901234567890123", "-1e18", "9.5e18", "1e19", "0e0", "2.50", "7"};
    static const char *const literals[] = {"true", "false", "null"};
    unsigned kind = depth >= 4 ? 2 + rnd(4) : rnd(6);
    switch (kind) {
    case 0:
    case 1: {
        int obj = kind == 0;
        unsigned n = rnd(5);
        leo_buf_addch(b, obj ? '{' : '[');
        for (unsigned i = 0; i < n; i++) {
            if (i)
                leo_buf_addch(b, ',');
            ws(b);
            if (obj) {
                leo_buf_adds(b, keys[rnd(sizeof(keys) / sizeof(keys[0]))]);
                ws(b);
                leo_buf_addch(b, ':');
                ws(b);
            }
            gen_value(b, depth + 1);
            ws(b);
        }
        leo_buf_addch(b, obj ? '}' : ']');
        break;
    }
    case 2: leo_buf_adds(b, strings[rnd(sizeof(strings) / sizeof(strings[0]))]); break;
    case 3:
    case 4: leo_buf_adds(b, numbers[rnd(sizeof(numbers) / sizeof(numbers[0]))]); break;
    default: leo_buf_adds(b, literals[rnd(3)]); break;
    }
}

static unsigned agreed_accepts, agreed_refusals;

/* jansson and the byte scan agree on whether doc is a request object, and on its canonical text */
static void agree(const char *doc, size_t len)
{
    json_t *r = json_loadb(doc, len, 0, NULL);
    struct leo_buf tree = LEO_BUF_INIT, raw = LEO_BUF_INIT;
    int rc = leo_cache_canonical_raw(doc, len, &raw);
    if (r == NULL || !json_is_object(r)) {
        if (rc != LEO_EPARSE)
            TEST_FAIL_("jansson refuses (or not an object) but the scan gives %d: %.*s", rc, (int)len, doc);
        ASSERT_EQ(raw.len, 0);
        agreed_refusals++;
    } else {
        agreed_accepts++;
        if (rc != 0)
            TEST_FAIL_("jansson accepts but the scan gives %d: %.*s", rc, (int)len, doc);
        ASSERT_EQ(leo_cache_canonical(LEO_DIALECT_OPENAI, r, &tree), 0);
        if (tree.len != raw.len || memcmp(tree.p, raw.p, raw.len) != 0)
            TEST_FAIL_("canonical texts differ for %.*s\n  tree: %s\n  raw:  %s", (int)len, doc, tree.p, raw.p);
    }
    json_decref(r);
    leo_buf_release(&tree);
    leo_buf_release(&raw);
}

TEST(canonical_text_from_bytes_matches_the_tree)
{
    static const char mutations[] = "{}[],:\"\\ 0a-e.+\x80\xc3\x01";
    for (int n = 0; n < 8000; n++) {
        struct leo_buf b = LEO_BUF_INIT;
        ws(&b);
        /* a request object with a few members, then the same with its bytes damaged */
        leo_buf_addch(&b, '{');
        unsigned members = 1 + rnd(6);
        for (unsigned i = 0; i < members; i++) {
            struct leo_buf v = LEO_BUF_INIT;
            gen_value(&v, 1);
            if (i)
                leo_buf_addch(&b, ',');
            leo_buf_adds(&b, i == 0 ? "\"model\"" : i == 1 ? "\"stream\"" : "\"x\"");
            if (rnd(3) == 0) {
                b.len -= strlen(i == 0 ? "\"model\"" : i == 1 ? "\"stream\"" : "\"x\"");
                struct leo_buf k = LEO_BUF_INIT;
                gen_value(&k, 4); /* a string key, or not a key at all (then jansson refuses) */
                leo_buf_add(&b, k.p, k.len);
                leo_buf_release(&k);
            }
            ws(&b);
            leo_buf_addch(&b, ':');
            leo_buf_add(&b, v.p, v.len);
            leo_buf_release(&v);
        }
        leo_buf_addch(&b, '}');
        ws(&b);
        agree(b.p, b.len);
        for (int m = 0; m < 3; m++) {
            struct leo_buf c = LEO_BUF_INIT;
            size_t at = rnd((unsigned)b.len);
            leo_buf_add(&c, b.p, at);
            unsigned op = rnd(3);
            if (op != 1)
                leo_buf_addch(&c, mutations[rnd(sizeof(mutations) - 1)]);
            size_t from = op == 2 ? at : at + 1;
            if (from < b.len)
                leo_buf_add(&c, b.p + from, b.len - from);
            agree(c.p, c.len);
            leo_buf_release(&c);
        }
        leo_buf_release(&b);
    }
    /* both sides were exercised: documents compared, and damaged ones refused */
    ASSERT(agreed_accepts > 3000 && agreed_refusals > 8000);
    /* nesting around jansson's limit: the scan may refuse a level jansson takes, never the reverse */
    for (int depth = 2040; depth <= 2050; depth++) {
        struct leo_buf b = LEO_BUF_INIT;
        leo_buf_adds(&b, "{\"x\":");
        for (int i = 0; i < depth; i++)
            leo_buf_addch(&b, '[');
        leo_buf_addch(&b, '1');
        for (int i = 0; i < depth; i++)
            leo_buf_addch(&b, ']');
        leo_buf_addch(&b, '}');
        json_t *r = json_loadb(b.p, b.len, 0, NULL);
        struct leo_buf raw = LEO_BUF_INIT;
        if (leo_cache_canonical_raw(b.p, b.len, &raw) == 0)
            ASSERT(r != NULL);
        json_decref(r);
        leo_buf_release(&raw);
        leo_buf_release(&b);
    }
}

TEST(key_changes_with_every_output_member)
{
    static const char *const variants[] = {
        "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"what is 2+3?\"}],\"temperature\":0}",
        "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"what is 2+4?\"}],\"temperature\":0}",
        "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":\"what is 2+3?\"}],\"temperature\":0}",
        "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"what is 2+3?\"}],\"temperature\":0.2}",
        BASE ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"add\"}}]}",
        BASE ",\"tool_choice\":\"none\"}",
        BASE ",\"response_format\":{\"type\":\"json_object\"}}",
        BASE ",\"top_p\":0.9}",
        BASE ",\"max_tokens\":10}",
        BASE ",\"max_completion_tokens\":10}",
        BASE ",\"seed\":7}",
        BASE ",\"stop\":[\"\\n\"]}",
        BASE ",\"n\":2}",
        BASE ",\"logit_bias\":{\"50256\":-100}}",
        BASE ",\"presence_penalty\":0.1}",
        BASE ",\"frequency_penalty\":0.1}",
        BASE ",\"reasoning_effort\":\"low\"}",
        BASE ",\"system\":\"be brief\"}",
        BASE ",\"some_future_member\":1}",
        BASE ",\"temperature\":null}",
    };
    struct leo_cache_key base, k;
    key_of("acme", LEO_DIALECT_OPENAI, BASE "}", &base);
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        key_of("acme", LEO_DIALECT_OPENAI, variants[i], &k);
        if (strcmp(k.s, base.s) == 0)
            TEST_FAIL_("variant %zu shares the base key: %s", i, variants[i]);
        for (size_t j = 0; j < i; j++) {
            struct leo_cache_key kj;
            key_of("acme", LEO_DIALECT_OPENAI, variants[j], &kj);
            ASSERT(strcmp(k.s, kj.s) != 0);
        }
    }
}

TEST(key_ignores_members_that_cannot_change_the_answer)
{
    ASSERT(same_key(BASE "}", BASE ",\"user\":\"u-17\"}"));
    ASSERT(same_key(BASE "}", BASE ",\"stream\":true}"));
    ASSERT(same_key(BASE "}", BASE ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}"));
    ASSERT(same_key(BASE "}", BASE ",\"metadata\":{\"trace\":\"x\"}}"));
    ASSERT(same_key(BASE "}", BASE ",\"store\":true}"));
    ASSERT(same_key(BASE "}", BASE ",\"service_tier\":\"flex\"}"));
    /* only at the top level: a nested "user" is content */
    ASSERT(!same_key(BASE ",\"x\":{}}", BASE ",\"x\":{\"user\":\"a\"}}"));
}

TEST(key_differs_between_tenants_and_dialects)
{
    struct leo_cache_key a, b, c;
    key_of("acme", LEO_DIALECT_OPENAI, BASE "}", &a);
    key_of("globex", LEO_DIALECT_OPENAI, BASE "}", &b);
    key_of("acme", LEO_DIALECT_ANTHROPIC, BASE "}", &c);
    ASSERT(strcmp(a.s + 5, b.s + 7) != 0);
    ASSERT(strcmp(a.s, c.s) != 0);
    /* a tenant id cannot smuggle itself into another's namespace */
    key_of("acme:x", LEO_DIALECT_OPENAI, BASE "}", &b);
    ASSERT(strcmp(a.s + 5, b.s + 7) != 0);
}

/* ---- policy ----------------------------------------------------------------------------------------------- */

TEST(deterministic_requests)
{
    static const struct {
        const char *req;
        bool det;
    } cases[] = {
        {"{\"temperature\":0}", true},
        {"{\"temperature\":0.0}", true},
        {"{\"temperature\":0.7}", false},
        {"{}", false},
        {"{\"seed\":1}", true},
        {"{\"seed\":\"1\"}", false},
        {"{\"temperature\":1,\"seed\":3}", true},
        {"{\"temperature\":\"0\"}", false},
        {"{\"temperature\":-0.0e3}", true},
        {"{\"temperature\":0.000001}", false},
        {"{\"temperature\":1e-3}", false},
        {"{\"temperature\":null}", false},
        {"{\"seed\":1.0}", false},
        {"{\"seed\":-42}", true},
        /* zero as jansson reads it: reals that underflow strtod are 0 */
        {"{\"temperature\":1e-400}", true},
        {"{\"temperature\":-1E-400}", true},
        {"{\"temperature\":0.1e-330}", true},
        {"{\"temperature\":1e-300}", false},
        {"{\"temperature\":5e-324}", false},
        {"{\"temperature\":0.0e5}", true},
        {"{\"temperature\":-0}", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (deterministic(cases[i].req) != cases[i].det)
            TEST_FAIL_("%s: expected %d", cases[i].req, cases[i].det);
    }
    /* no exponent, but so many zeros after the point that it underflows too (and a longer copy than usual) */
    struct leo_buf b = LEO_BUF_INIT;
    for (int few = 0; few < 2; few++) {
        leo_buf_reset(&b);
        leo_buf_adds(&b, "{\"temperature\":0.");
        for (int i = 0; i < (few ? 300 : 400); i++)
            leo_buf_addch(&b, '0');
        leo_buf_adds(&b, "1}");
        ASSERT_EQ(deterministic(b.p), !few);
    }
    leo_buf_release(&b);
}

static struct leo_cache_decision decide(const struct leo_cache_policy *p, const char *req, const char *hdr,
                                        const char *ttl)
{
    struct leo_cache_ctl ctl;
    ASSERT_EQ(leo_cache_ctl_parse(leo_str_c(hdr), leo_str_c(ttl), &ctl, NULL), 0);
    struct leo_cache_decision d;
    leo_cache_decide(p, deterministic(req), &ctl, &d);
    return d;
}

TEST(decisions_follow_mode_and_headers)
{
    struct leo_cache_policy p = {true, LEO_CACHE_MODE_DETERMINISTIC, 60, true};
    struct leo_cache_decision d = decide(&p, "{\"temperature\":0}", "", "");
    ASSERT(d.lookup && d.store && d.dedup && d.reason == NULL);
    ASSERT_EQ(d.ttl_ms, 60000);
    d = decide(&p, "{\"temperature\":1}", "", "");
    ASSERT(!d.lookup && !d.store && !d.dedup);
    ASSERT_STR_EQ(d.reason, "not deterministic");
    d = decide(&p, "{\"temperature\":0}", "no-cache", "");
    ASSERT(!d.lookup && d.store && !d.dedup);
    d = decide(&p, "{\"temperature\":0}", "no-store", "");
    ASSERT(d.lookup && !d.store && d.dedup);
    d = decide(&p, "{\"temperature\":0}", "Refresh", "120");
    ASSERT(!d.lookup && d.store && !d.dedup);
    ASSERT_EQ(d.ttl_ms, 120000);
    d = decide(&p, "{\"temperature\":0}", " no-cache , no-store ", "");
    ASSERT(!d.lookup && !d.store);
    ASSERT_STR_EQ(d.reason, "no-cache, no-store");
    p.mode = LEO_CACHE_MODE_ALWAYS;
    d = decide(&p, "{\"temperature\":1}", "", "");
    ASSERT(d.lookup && d.store);
    p.dedup = false;
    d = decide(&p, "{}", "", "");
    ASSERT(d.lookup && !d.dedup);
    p.mode = LEO_CACHE_MODE_NEVER;
    d = decide(&p, "{\"temperature\":0}", "", "");
    ASSERT(!d.lookup && !d.store);
    ASSERT_STR_EQ(d.reason, "mode never");
    p.mode = LEO_CACHE_MODE_ALWAYS;
    p.enabled = false;
    d = decide(&p, "{\"temperature\":0}", "", "");
    ASSERT(!d.lookup && !d.store);
    ASSERT_STR_EQ(d.reason, "disabled");
}

TEST(header_errors_name_the_header)
{
    struct leo_cache_ctl ctl;
    struct leo_buf err = LEO_BUF_INIT;
    ASSERT_EQ(leo_cache_ctl_parse(LEO_STR_LIT("no-cache, sometimes"), LEO_STR_LIT(""), &ctl, &err), LEO_EINVAL);
    ASSERT_STR_EQ(err.p,
                  "header x-leo-cache: unknown directive \"sometimes\" (expected no-cache, no-store or refresh)");
    leo_buf_reset(&err);
    static const char *const bad_ttls[] = {"0", "-1", "1.5", "abc", "2592001", "99999999999", " "};
    for (size_t i = 0; i < sizeof(bad_ttls) / sizeof(bad_ttls[0]); i++) {
        ASSERT_EQ(leo_cache_ctl_parse(LEO_STR_LIT(""), leo_str_c(bad_ttls[i]), &ctl, &err), LEO_EINVAL);
        ASSERT(strstr(err.p, "header x-leo-cache-ttl") == err.p);
        leo_buf_reset(&err);
    }
    ASSERT_EQ(leo_cache_ctl_parse(LEO_STR_LIT("no-store,"), LEO_STR_LIT(" 2592000 "), &ctl, &err), 0);
    ASSERT(ctl.no_store && !ctl.no_cache && !ctl.refresh);
    ASSERT_EQ(ctl.ttl_s, 2592000);
    leo_buf_release(&err);
}

TEST(status_names)
{
    ASSERT_STR_EQ(leo_cache_status_name(LEO_CACHE_STATUS_HIT), "hit");
    ASSERT_STR_EQ(leo_cache_status_name(LEO_CACHE_STATUS_MISS), "miss");
    ASSERT_STR_EQ(leo_cache_status_name(LEO_CACHE_STATUS_SEMANTIC_HIT), "semantic-hit");
    ASSERT_STR_EQ(leo_cache_status_name(LEO_CACHE_STATUS_BYPASS), "bypass");
}

static int parse_cfg(const char *text, struct leo_cache_config *cc, struct leo_buf *err)
{
    json_t *v = J(text);
    int rc = leo_cache_config_parse(v, "cache", cc, err);
    json_decref(v);
    return rc;
}

TEST(config_section_and_overrides)
{
    struct leo_cache_config cc;
    struct leo_buf err = LEO_BUF_INIT;
    ASSERT_EQ(leo_cache_config_parse(NULL, "cache", &cc, &err), 0);
    ASSERT(cc.def.enabled && cc.def.mode == LEO_CACHE_MODE_DETERMINISTIC && cc.def.dedup && cc.redis);
    ASSERT_EQ(cc.def.ttl_s, 3600);
    ASSERT_EQ(cc.max_bytes, 64 << 20);
    ASSERT_EQ(parse_cfg("{\"mode\":\"always\",\"ttl_s\":600,\"max_bytes\":1048576,\"max_entry_bytes\":65536,"
                        "\"redis\":false,\"dedup\":false,"
                        "\"models\":{\"gpt-4o\":{\"ttl_s\":60},\"o3\":{\"enabled\":false}},"
                        "\"tenants\":{\"acme\":{\"mode\":\"deterministic\",\"dedup\":true}}}",
                        &cc, &err),
              0);
    ASSERT_EQ(cc.max_bytes, 1048576);
    ASSERT_EQ(cc.max_entry_bytes, 65536);
    ASSERT(!cc.redis);
    struct leo_cache_policy p;
    leo_cache_policy_for(&cc, "globex", "gpt-4o", &p);
    ASSERT(p.enabled && p.mode == LEO_CACHE_MODE_ALWAYS && !p.dedup);
    ASSERT_EQ(p.ttl_s, 60);
    leo_cache_policy_for(&cc, "acme", "gpt-4o", &p);
    ASSERT(p.mode == LEO_CACHE_MODE_DETERMINISTIC && p.dedup);
    ASSERT_EQ(p.ttl_s, 60);
    leo_cache_policy_for(&cc, "acme", "o3", &p);
    ASSERT(!p.enabled);
    leo_cache_policy_for(&cc, NULL, NULL, &p);
    ASSERT(p.enabled && p.mode == LEO_CACHE_MODE_ALWAYS);
    ASSERT_EQ(p.ttl_s, 600);
    leo_cache_config_release(&cc);
    ASSERT_EQ(cc.nmodels, 0);

    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"[]", "cache: expected an object"},
        {"{\"ttl\":5}", "cache.ttl: unknown field"},
        {"{\"mode\":\"sometimes\"}", "cache.mode: expected \"never\", \"deterministic\" or \"always\""},
        {"{\"ttl_s\":0}", "cache.ttl_s: must be between 1 and 2592000"},
        {"{\"enabled\":1}", "cache.enabled: expected a boolean"},
        {"{\"models\":{\"gpt-4o\":{\"ttl_s\":\"60\"}}}", "cache.models[\"gpt-4o\"].ttl_s: expected an integer"},
        {"{\"models\":{\"gpt-4o\":{\"max_bytes\":1}}}", "cache.models[\"gpt-4o\"].max_bytes: unknown field"},
        {"{\"tenants\":[]}", "cache.tenants: expected an object"},
        {"{\"tenants\":{\"acme\":true}}", "cache.tenants[\"acme\"]: expected an object"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        leo_buf_reset(&err);
        ASSERT_EQ(parse_cfg(bad[i].text, &cc, &err), LEO_ECONFIG);
        ASSERT_STR_EQ(err.p, bad[i].msg);
        ASSERT_EQ(cc.nmodels + cc.ntenants, 0);
    }
    leo_buf_release(&err);
}

/* ---- entries and L1 ------------------------------------------------------------------------------------ */

static uint64_t fake_now = 1714521600000ull;

static uint64_t fake_clock(void *ud)
{
    (void)ud;
    return fake_now;
}

static const char *answer(int i, struct leo_buf *b)
{
    leo_buf_reset(b);
    leo_buf_addf(b,
                 "{\"id\":\"chatcmpl-%d\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"gpt-4o\","
                 "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"answer %d\","
                 "\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
                 "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":%d,\"total_tokens\":%d}}",
                 i, i, i, 10 + i);
    return b->p;
}

/* A whole answer as an entry (the body is built first: argument evaluation order is unspecified). */
static struct leo_cache_entry *answer_entry(int i, uint64_t now)
{
    struct leo_buf b = LEO_BUF_INIT;
    answer(i, &b);
    struct leo_cache_entry *e = leo_cache_entry_new(LEO_DIALECT_OPENAI, b.p, b.len, NULL, now);
    leo_buf_release(&b);
    return e;
}

static struct leo_cache_key numbered_key(int i)
{
    struct leo_cache_key k;
    char req[128];
    snprintf(req, sizeof(req), "{\"model\":\"m\",\"messages\":[],\"n\":%d}", i);
    key_of("acme", LEO_DIALECT_OPENAI, req, &k);
    return k;
}

TEST(entry_reads_usage_and_round_trips_its_encoding)
{
    struct leo_buf b = LEO_BUF_INIT, v = LEO_BUF_INIT;
    struct leo_cache_entry *e = answer_entry(7, 1234);
    ASSERT(e != NULL && e->have_usage && e->replayable);
    ASSERT_EQ(e->input_tokens, 10);
    ASSERT_EQ(e->output_tokens, 7);
    e->expires_at_ms = 99999;
    leo_cache_entry_encode(e, &v);
    struct leo_cache_entry *d = leo_cache_entry_decode(v.p, v.len);
    ASSERT(d != NULL);
    ASSERT_MEM_EQ(d->body, d->len, e->body, e->len);
    ASSERT_EQ(d->output_tokens, 7);
    ASSERT_EQ(d->stored_at_ms, 1234);
    ASSERT_EQ(d->expires_at_ms, 99999);
    ASSERT(d->replayable && d->dialect == LEO_DIALECT_OPENAI);
    ASSERT(leo_cache_entry_decode("LEOC1 0 1 2 1 3 4 1", 19) == NULL);
    ASSERT(leo_cache_entry_decode("LEOC1 9 1 2 1 3 4 1\n{}", 22) == NULL);
    ASSERT(leo_cache_entry_decode("LEOC2 0 1 2 1 3 4 1\n{}", 22) == NULL);
    ASSERT(leo_cache_entry_new(LEO_DIALECT_OPENAI, "not json", 8, NULL, 0) == NULL);
    const char *anth = "{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}],"
                       "\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":3,\"output_tokens\":2}}";
    struct leo_cache_entry *a = leo_cache_entry_new(LEO_DIALECT_ANTHROPIC, anth, strlen(anth), NULL, 0);
    ASSERT_EQ(a->input_tokens, 8);
    ASSERT_EQ(a->output_tokens, 2);
    ASSERT(a->replayable);
    leo_cache_entry_unref(a);
    leo_cache_entry_unref(d);
    leo_cache_entry_unref(e);
    leo_buf_release(&b);
    leo_buf_release(&v);
}

TEST(l1_is_bounded_in_bytes_and_evicts_least_recent)
{
    struct leo_buf b = LEO_BUF_INIT;
    struct leo_cache_entry *probe = answer_entry(1, 0);
    struct leo_cache_key k0 = numbered_key(0);
    /* room for exactly three entries of this size */
    uint64_t one = probe->len + k0.len + sizeof(struct leo_cache_entry);
    leo_cache_entry_unref(probe);
    struct leo_cache_opts o = {.max_bytes = 3 * one + one / 2};
    struct leo_cache *c = leo_cache_new(&o);
    leo_cache_set_clock(c, fake_clock, NULL);
    for (int i = 1; i <= 3; i++) {
        struct leo_cache_entry *e = answer_entry(i, 0);
        struct leo_cache_key k = numbered_key(i);
        ASSERT_EQ(leo_cache_store(c, &k, e, 60000), 0);
        leo_cache_entry_unref(e);
    }
    uint64_t bytes, entries;
    leo_cache_l1_usage(c, &bytes, &entries);
    ASSERT_EQ(entries, 3);
    ASSERT_EQ(bytes, 3 * one);
    /* touch 1, so 2 is the least recently used */
    struct leo_cache_entry *got = NULL;
    struct leo_cache_key k1 = numbered_key(1), k2 = numbered_key(2), k3 = numbered_key(3), k4 = numbered_key(4);
    ASSERT_EQ(leo_cache_lookup(c, &k1, &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    leo_cache_entry_unref(got);
    struct leo_cache_entry *e4 = answer_entry(4, 0);
    ASSERT_EQ(leo_cache_store(c, &k4, e4, 60000), 0);
    leo_cache_entry_unref(e4);
    leo_cache_l1_usage(c, &bytes, &entries);
    ASSERT_EQ(entries, 3);
    ASSERT(bytes <= o.max_bytes);
    ASSERT_EQ(leo_cache_lookup(c, &k2, &got, NULL, NULL, NULL), LEO_CACHE_MISS);
    ASSERT(got == NULL);
    ASSERT_EQ(leo_cache_lookup(c, &k1, &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    ASSERT(strstr(got->body, "answer 1") != NULL);
    leo_cache_entry_unref(got);
    ASSERT_EQ(leo_cache_lookup(c, &k3, &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    leo_cache_entry_unref(got);
    /* shrinking the bound evicts at once */
    leo_cache_set_limits(c, one, 0);
    leo_cache_l1_usage(c, &bytes, &entries);
    ASSERT_EQ(entries, 1);
    ASSERT_EQ(leo_cache_lookup(c, &k3, &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    leo_cache_entry_unref(got);
    /* an entry larger than the bound is not kept in L1; one past max_entry_bytes is refused */
    leo_cache_set_limits(c, 10, 0);
    struct leo_cache_entry *e5 = answer_entry(5, 0);
    struct leo_cache_key k5 = numbered_key(5);
    ASSERT_EQ(leo_cache_store(c, &k5, e5, 60000), 0);
    ASSERT_EQ(leo_cache_lookup(c, &k5, &got, NULL, NULL, NULL), LEO_CACHE_MISS);
    leo_cache_set_limits(c, 1 << 20, 16);
    ASSERT_EQ(leo_cache_store(c, &k5, e5, 60000), LEO_ETOOBIG);
    leo_cache_entry_unref(e5);
    leo_cache_free(c);
    leo_buf_release(&b);
}

/* The event-stream replay of an entry in L1 is rendered once, kept with the entry and counted in the bound. */
TEST(entry_sse_is_rendered_once_and_counted_in_l1)
{
    struct leo_cache_opts o = {.max_bytes = 1 << 20};
    struct leo_cache *c = leo_cache_new(&o);
    leo_cache_set_clock(c, fake_clock, NULL);
    struct leo_cache_entry *e = answer_entry(1, 0);
    struct leo_cache_key k = numbered_key(1);
    ASSERT_EQ(leo_cache_store(c, &k, e, 60000), 0);
    leo_cache_entry_unref(e);
    struct leo_cache_entry *got = NULL;
    ASSERT_EQ(leo_cache_lookup(c, &k, &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    ASSERT(got->replayable);
    uint64_t bytes0, bytes1, bytes2, entries;
    leo_cache_l1_usage(c, &bytes0, &entries);
    /* what rendering it from the body gives */
    struct leo_buf want = LEO_BUF_INIT, first = LEO_BUF_INIT, again = LEO_BUF_INIT, plain = LEO_BUF_INIT;
    json_t *doc = leo_cache_entry_doc(got);
    ASSERT_EQ(leo_cache_replay_sse(got->dialect, doc, NULL, 0, true, &want), 0);
    json_decref(doc);
    leo_buf_adds(&first, "prefix:");
    ASSERT_EQ(leo_cache_entry_sse(c, got, true, &first), 0);
    ASSERT_STR_EQ(first.p + 7, want.p);
    leo_cache_l1_usage(c, &bytes1, &entries);
    ASSERT_EQ(bytes1, bytes0 + want.len);
    ASSERT_EQ(leo_cache_entry_sse(c, got, true, &again), 0);
    ASSERT_STR_EQ(again.p, want.p);
    leo_cache_l1_usage(c, &bytes2, &entries);
    ASSERT_EQ(bytes2, bytes1); /* kept, not rendered again */
    /* without the usage chunk: another rendering, counted too */
    ASSERT_EQ(leo_cache_entry_sse(c, got, false, &plain), 0);
    ASSERT(plain.len < want.len);
    leo_cache_l1_usage(c, &bytes2, &entries);
    ASSERT_EQ(bytes2, bytes1 + plain.len);
    /* shrinking the bound below the entry with its renderings evicts it; the reference held keeps it usable */
    leo_cache_set_limits(c, bytes0, 0);
    leo_cache_l1_usage(c, &bytes2, &entries);
    ASSERT_EQ(entries, 0);
    leo_buf_reset(&again);
    ASSERT_EQ(leo_cache_entry_sse(c, got, true, &again), 0);
    ASSERT_STR_EQ(again.p, want.p);
    leo_cache_entry_unref(got);
    leo_buf_release(&want);
    leo_buf_release(&first);
    leo_buf_release(&again);
    leo_buf_release(&plain);
    leo_cache_free(c);
}

TEST(l1_expires_by_ttl_and_entries_in_use_survive_eviction)
{
    struct leo_buf b = LEO_BUF_INIT;
    struct leo_cache_opts o = {.max_bytes = 1 << 20};
    struct leo_cache *c = leo_cache_new(&o);
    leo_cache_set_clock(c, fake_clock, NULL);
    uint64_t t0 = fake_now;
    struct leo_cache_key k1 = numbered_key(1);
    struct leo_cache_entry *e = answer_entry(1, t0);
    ASSERT_EQ(leo_cache_store(c, &k1, e, 1000), 0);
    ASSERT_EQ(e->expires_at_ms, t0 + 1000);
    leo_cache_entry_unref(e);
    struct leo_cache_entry *held = NULL, *got = NULL;
    fake_now = t0 + 999;
    ASSERT_EQ(leo_cache_lookup(c, &k1, &held, NULL, NULL, NULL), LEO_CACHE_HIT);
    fake_now = t0 + 1000;
    ASSERT_EQ(leo_cache_lookup(c, &k1, &got, NULL, NULL, NULL), LEO_CACHE_MISS);
    uint64_t bytes, entries;
    leo_cache_l1_usage(c, &bytes, &entries);
    ASSERT_EQ(entries, 0);
    ASSERT_EQ(bytes, 0);
    /* the reference taken before expiry still reads the answer (ASan would catch a use after free) */
    ASSERT(strstr(held->body, "answer 1") != NULL);
    ASSERT_EQ(held->refs, 1);
    leo_cache_entry_unref(held);
    /* a store replaces, and the replaced entry lives on while held */
    e = answer_entry(2, 0);
    ASSERT_EQ(leo_cache_store(c, &k1, e, 1000), 0);
    ASSERT_EQ(leo_cache_lookup(c, &k1, &held, NULL, NULL, NULL), LEO_CACHE_HIT);
    leo_cache_entry_unref(e);
    e = answer_entry(3, 0);
    ASSERT_EQ(leo_cache_store(c, &k1, e, 1000), 0);
    leo_cache_entry_unref(e);
    ASSERT(strstr(held->body, "answer 2") != NULL);
    leo_cache_entry_unref(held);
    ASSERT_EQ(leo_cache_lookup(c, &k1, &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    ASSERT(strstr(got->body, "answer 3") != NULL);
    leo_cache_free(c); /* the cache goes, the caller's reference stays valid */
    ASSERT(strstr(got->body, "answer 3") != NULL);
    leo_cache_entry_unref(got);
    leo_buf_release(&b);
}

TEST(purge_removes_one_tenants_entries_or_all)
{
    struct leo_cache_opts o = {.max_bytes = 1 << 20};
    struct leo_cache *c = leo_cache_new(&o);
    static const char *const tenants[] = {"acme", "acme2", "globex", "acme"};
    struct leo_cache_key keys[4];
    for (int i = 0; i < 4; i++) {
        char req[64];
        snprintf(req, sizeof(req), "{\"n\":%d}", i);
        key_of(tenants[i], LEO_DIALECT_OPENAI, req, &keys[i]);
        struct leo_cache_entry *e = answer_entry(i, 0);
        ASSERT_EQ(leo_cache_store(c, &keys[i], e, 60000), 0);
        leo_cache_entry_unref(e);
    }
    /* "acme" is not a prefix match for "acme2" */
    ASSERT_EQ(leo_cache_purge_tenant(c, "acme"), 2);
    struct leo_cache_entry *got = NULL;
    ASSERT_EQ(leo_cache_lookup(c, &keys[0], &got, NULL, NULL, NULL), LEO_CACHE_MISS);
    ASSERT_EQ(leo_cache_lookup(c, &keys[3], &got, NULL, NULL, NULL), LEO_CACHE_MISS);
    ASSERT_EQ(leo_cache_lookup(c, &keys[1], &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    leo_cache_entry_unref(got);
    ASSERT_EQ(leo_cache_purge_tenant(c, NULL), 2);
    uint64_t bytes, entries;
    leo_cache_l1_usage(c, &bytes, &entries);
    ASSERT_EQ(entries, 0);
    ASSERT_EQ(bytes, 0);
    leo_cache_free(c);
}

/* ---- assembling and replaying ---------------------------------------------------------------------------- */

struct sse_capture {
    struct leo_cache_asm *a;
    int events, done, errors, usage_chunks;
    bool after_done;
};

static void on_replayed(void *ud, struct leo_str event, struct leo_str data, struct leo_str id)
{
    (void)id;
    struct sse_capture *s = ud;
    s->events++;
    if (s->done)
        s->after_done = true;
    if (leo_str_eqc(data, "[DONE]")) {
        s->done++;
        return;
    }
    json_t *v = J(data.p);
    if (json_is_array(json_object_get(v, "choices")) && json_array_size(json_object_get(v, "choices")) == 0)
        s->usage_chunks++;
    int rc = event.len ? leo_cache_asm_anthropic(s->a, event, v, NULL) : leo_cache_asm_openai(s->a, v, NULL);
    if (rc < 0)
        s->errors++;
    json_decref(v);
}

/* Replays doc and assembles the bytes again. */
static json_t *round_trip(enum leo_dialect d, json_t *doc, bool include_usage, struct sse_capture *s)
{
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(leo_cache_replay_sse(d, doc, NULL, 0, include_usage, &out), 0);
    memset(s, 0, sizeof(*s));
    s->a = leo_cache_asm_new(d, 0);
    struct leo_sse_parser p;
    leo_sse_parser_init(&p, 1 << 20, on_replayed, s);
    ASSERT_EQ(leo_sse_parser_feed(&p, out.p, out.len), 0);
    ASSERT_EQ(leo_sse_parser_finish(&p), 0);
    leo_sse_parser_release(&p);
    ASSERT_EQ(s->errors, 0);
    struct leo_buf err = LEO_BUF_INIT;
    json_t *back = leo_cache_asm_finish(s->a, &err);
    if (back == NULL)
        TEST_FAIL_("assembly failed: %s", err.p);
    leo_buf_release(&err);
    leo_cache_asm_free(s->a);
    leo_buf_release(&out);
    return back;
}

TEST(openai_chunks_assemble_into_the_whole_answer)
{
    static const char *const chunks[] = {
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o\",\"system_fingerprint\":"
        "\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},"
        "\"logprobs\":null,\"finish_reason\":null}],\"obfuscation\":\"xx\"}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":"
        "\"function\",\"function\":{\"name\":\"add\",\"arguments\":\"\"}}]}}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":"
        "\"function\",\"function\":{\"name\":\"mul\",\"arguments\":\"{\\\"x\\\"\"}}]}}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
        "\"{\\\"a\\\":2,\"}}]}}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
        "\"\\\"b\\\":3}\"}},{\"index\":1,\"function\":{\"arguments\":\":4}\"}}]}}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}",
        "{\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}",
    };
    struct leo_cache_asm *a = leo_cache_asm_new(LEO_DIALECT_OPENAI, 0);
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        json_t *c = J(chunks[i]);
        ASSERT_EQ(leo_cache_asm_openai(a, c, NULL), 0);
        json_decref(c);
    }
    json_t *doc = leo_cache_asm_finish(a, NULL);
    json_t *want = J("{\"id\":\"c1\",\"object\":\"chat.completion\",\"created\":5,\"model\":\"gpt-4o\","
                     "\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                     "\"content\":\"Hello\",\"refusal\":null,\"tool_calls\":[{\"id\":\"call_a\",\"type\":\"function\","
                     "\"function\":{\"name\":\"add\",\"arguments\":\"{\\\"a\\\":2,\\\"b\\\":3}\"}},{\"id\":\"call_b\","
                     "\"type\":\"function\",\"function\":{\"name\":\"mul\",\"arguments\":\"{\\\"x\\\":4}\"}}]},"
                     "\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":9,"
                     "\"completion_tokens\":4,\"total_tokens\":13}}");
    assert_json_eq(doc, want);
    json_decref(want);
    json_decref(doc);
    leo_cache_asm_free(a);
}

TEST(openai_replay_round_trips)
{
    static const char *const docs[] = {
        /* content, usage, fingerprint */
        "{\"id\":\"c1\",\"object\":\"chat.completion\",\"created\":5,\"model\":\"gpt-4o\",\"system_fingerprint\":"
        "\"fp\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello \\\"world\\\"\\n\\u00e9\","
        "\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,"
        "\"completion_tokens\":4,\"total_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":0}}}",
        /* tool calls only (content null) */
        "{\"id\":\"c2\",\"object\":\"chat.completion\",\"created\":6,\"model\":\"m\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":null,\"refusal\":null,\"tool_calls\":[{\"id\":\"call_1\","
        "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"q\\\":[1,2]}\"}},{\"id\":\"call_2\","
        "\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]},\"logprobs\":null,"
        "\"finish_reason\":\"tool_calls\"}]}",
        /* refusal */
        "{\"id\":\"c3\",\"object\":\"chat.completion\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":null,\"refusal\":\"I can't help with that.\"},"
        "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,"
        "\"total_tokens\":3}}",
        /* two choices, empty content, reasoning */
        "{\"id\":\"c4\",\"object\":\"chat.completion\",\"created\":8,\"model\":\"m\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":"
        "\"length\"},{\"index\":1,\"message\":{\"role\":\"assistant\",\"content\":\"b\",\"refusal\":null,"
        "\"reasoning_content\":\"think\"},\"logprobs\":null,\"finish_reason\":\"stop\"}]}",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        json_t *doc = J(docs[i]);
        ASSERT(leo_cache_replayable(LEO_DIALECT_OPENAI, doc));
        struct sse_capture s;
        json_t *back = round_trip(LEO_DIALECT_OPENAI, doc, true, &s);
        assert_json_eq(back, doc);
        ASSERT_EQ(s.done, 1);
        ASSERT(!s.after_done);
        ASSERT_EQ(s.usage_chunks, json_object_get(doc, "usage") ? 1 : 0);
        json_decref(back);
        /* without include_usage: no usage chunk, and the rest is the same */
        back = round_trip(LEO_DIALECT_OPENAI, doc, false, &s);
        ASSERT_EQ(s.usage_chunks, 0);
        json_object_del(doc, "usage");
        assert_json_eq(back, doc);
        json_decref(back);
        json_decref(doc);
    }
}

TEST(openai_replay_takes_a_new_id_and_frames_sse)
{
    json_t *doc = J("{\"id\":\"old\",\"object\":\"chat.completion\",\"created\":5,\"model\":\"m\",\"choices\":[{"
                    "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null},"
                    "\"logprobs\":null,\"finish_reason\":\"stop\"}]}");
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(leo_cache_replay_sse(LEO_DIALECT_OPENAI, doc, "chatcmpl-new", 99, false, &out), 0);
    const char *want =
        "data: {\"id\":\"chatcmpl-new\",\"object\":\"chat.completion.chunk\",\"created\":99,\"model\":\"m\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},"
        "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"chatcmpl-new\",\"object\":\"chat.completion.chunk\",\"created\":99,\"model\":\"m\","
        "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"chatcmpl-new\",\"object\":\"chat.completion.chunk\",\"created\":99,\"model\":\"m\","
        "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n"
        "data: [DONE]\n\n";
    ASSERT_MEM_EQ(out.p, out.len, want, strlen(want));
    leo_buf_release(&out);
    json_decref(doc);
}

TEST(anthropic_replay_round_trips)
{
    json_t *doc = J("{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4\","
                    "\"content\":[{\"type\":\"thinking\",\"thinking\":\"let me add\",\"signature\":\"sig==\"},"
                    "{\"type\":\"text\",\"text\":\"2+3 is 5.\\nDone\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\","
                    "\"name\":\"calc\",\"input\":{\"expr\":\"2+3\",\"n\":[1,2.5]}},{\"type\":\"redacted_thinking\","
                    "\"data\":\"abc\"}],\"stop_reason\":\"tool_use\",\"stop_sequence\":null,\"usage\":{"
                    "\"input_tokens\":12,\"cache_read_input_tokens\":0,\"output_tokens\":30}}");
    ASSERT(leo_cache_replayable(LEO_DIALECT_ANTHROPIC, doc));
    struct sse_capture s;
    json_t *back = round_trip(LEO_DIALECT_ANTHROPIC, doc, false, &s);
    assert_json_eq(back, doc);
    ASSERT_EQ(s.done, 0);
    json_decref(back);
    json_decref(doc);
    /* a stop sequence and an empty answer */
    doc = J("{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c\",\"content\":[],"
            "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\",\"usage\":{\"input_tokens\":1,"
            "\"output_tokens\":0}}");
    back = round_trip(LEO_DIALECT_ANTHROPIC, doc, false, &s);
    assert_json_eq(back, doc);
    json_decref(back);
    json_decref(doc);
}

TEST(assemblers_refuse_what_they_cannot_represent)
{
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_cache_asm *a = leo_cache_asm_new(LEO_DIALECT_OPENAI, 0);
    json_t *c = J("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"logprobs\":{\"content\":[]}}]}");
    ASSERT_EQ(leo_cache_asm_openai(a, c, &err), LEO_EINVAL);
    ASSERT_STR_EQ(err.p, "logprobs cannot be cached");
    json_decref(c);
    ASSERT(leo_cache_asm_finish(a, NULL) == NULL);
    leo_cache_asm_free(a);

    leo_buf_reset(&err);
    a = leo_cache_asm_new(LEO_DIALECT_OPENAI, 0);
    c = J("{\"choices\":[{\"index\":0,\"delta\":{\"audio\":{\"id\":\"x\"}}}]}");
    ASSERT_EQ(leo_cache_asm_openai(a, c, &err), LEO_EINVAL);
    ASSERT_STR_EQ(err.p, "delta member \"audio\" cannot be cached");
    json_decref(c);
    leo_cache_asm_free(a);

    /* a stream cut before its finish_reason is no answer */
    a = leo_cache_asm_new(LEO_DIALECT_OPENAI, 0);
    c = J("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"},\"finish_reason\":null}]}");
    ASSERT_EQ(leo_cache_asm_openai(a, c, NULL), 0);
    json_decref(c);
    ASSERT(leo_cache_asm_finish(a, NULL) == NULL);
    leo_cache_asm_free(a);

    /* the byte bound */
    a = leo_cache_asm_new(LEO_DIALECT_OPENAI, 4);
    c = J("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"12345\"}}]}");
    ASSERT_EQ(leo_cache_asm_openai(a, c, NULL), LEO_ETOOBIG);
    json_decref(c);
    leo_cache_asm_free(a);

    /* Anthropic: citations, unknown events, no message_stop */
    a = leo_cache_asm_new(LEO_DIALECT_ANTHROPIC, 0);
    c = J("{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"content\":[]}}");
    ASSERT_EQ(leo_cache_asm_anthropic(a, LEO_STR_LIT("message_start"), c, NULL), 0);
    json_decref(c);
    c = J("{\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}");
    ASSERT_EQ(leo_cache_asm_anthropic(a, LEO_STR_LIT("content_block_start"), c, NULL), 0);
    json_decref(c);
    c = J("{\"index\":0,\"delta\":{\"type\":\"citations_delta\",\"citation\":{}}}");
    leo_buf_reset(&err);
    ASSERT_EQ(leo_cache_asm_anthropic(a, LEO_STR_LIT("content_block_delta"), c, &err), LEO_EINVAL);
    ASSERT_STR_EQ(err.p, "a delta of type \"citations_delta\" cannot be cached");
    json_decref(c);
    leo_cache_asm_free(a);

    a = leo_cache_asm_new(LEO_DIALECT_ANTHROPIC, 0);
    c = J("{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"content\":[]}}");
    ASSERT_EQ(leo_cache_asm_anthropic(a, LEO_STR_LIT("message_start"), c, NULL), 0);
    json_decref(c);
    c = J("{}");
    ASSERT_EQ(leo_cache_asm_anthropic(a, LEO_STR_LIT("ping"), c, NULL), 0);
    ASSERT(leo_cache_asm_finish(a, NULL) == NULL); /* no message_stop yet */
    ASSERT_EQ(leo_cache_asm_anthropic(a, LEO_STR_LIT("error"), c, NULL), LEO_EINVAL);
    json_decref(c);
    leo_cache_asm_free(a);

    /* whole answers with parts a stream replay would lose are not replayable */
    json_t *d = J("{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"x\",\"audio\":"
                  "{\"id\":\"a\"}},\"finish_reason\":\"stop\"}]}");
    ASSERT(!leo_cache_replayable(LEO_DIALECT_OPENAI, d));
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(leo_cache_replay_sse(LEO_DIALECT_OPENAI, d, NULL, 0, false, &out), LEO_EINVAL);
    ASSERT_EQ(out.len, 0);
    json_decref(d);
    d = J("{\"content\":[{\"type\":\"text\",\"text\":\"x\",\"citations\":[{\"type\":\"char_location\"}]}]}");
    ASSERT(!leo_cache_replayable(LEO_DIALECT_ANTHROPIC, d));
    json_decref(d);
    leo_buf_release(&err);
}

/* ---- L2 on a real redis-server ------------------------------------------------------------------------- */

static struct redis_loop fx;

#define RUN_UNTIL(cond, ms) REDIS_LOOP_RUN_UNTIL(&fx, cond, ms)

static struct leo_redis *redis_up(const struct redis_server *s, uint64_t timeout_ms)
{
    char url[64];
    redis_server_url(s, url, sizeof(url));
    struct leo_redis_opts o = {.url = url, .command_timeout_ms = timeout_ms};
    return redis_loop_connect(&fx, &o);
}

struct l2_result {
    int calls;
    int err;
    struct leo_cache_entry *e;
};

static void on_l2(struct leo_cache_entry *e, int err, void *ud)
{
    struct l2_result *r = ud;
    r->calls++;
    r->err = err;
    r->e = e;
}

TEST(l2_is_shared_between_workers_through_redis)
{
    redis_loop_init(&fx);
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    struct leo_redis *r = redis_up(&srv, 1000);
    struct leo_cache_opts o = {.max_bytes = 1 << 20, .redis = r};
    struct leo_cache *w1 = leo_cache_new(&o), *w2 = leo_cache_new(&o); /* two workers' caches */
    struct leo_buf b = LEO_BUF_INIT;
    struct leo_cache_key k = numbered_key(1);
    struct leo_cache_entry *e = answer_entry(1, 0);
    ASSERT_EQ(leo_cache_store(w1, &k, e, 60000), 0);
    leo_cache_entry_unref(e);
    RUN_UNTIL(leo_cache_pending(w1) == 0, 5000);

    /* what Redis holds, read independently of the module */
    char rk[256];
    snprintf(rk, sizeof(rk), "leo:cache:%s", k.s);
    redisReply *rep = redis_harness_query(&srv, NULL, 0, "PTTL %s", rk);
    ASSERT(rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 && rep->integer <= 60000);
    freeReplyObject(rep);

    struct leo_cache_entry *got = NULL;
    struct leo_cache_lookup *h = NULL;
    struct l2_result res = {0};
    ASSERT_EQ(leo_cache_lookup(w2, &k, &got, on_l2, &res, &h), LEO_CACHE_PENDING);
    ASSERT(h != NULL && got == NULL);
    ASSERT_EQ(res.calls, 0); /* never from inside the call */
    RUN_UNTIL(res.calls == 1, 5000);
    ASSERT_EQ(res.err, 0);
    ASSERT(res.e != NULL);
    ASSERT(strstr(res.e->body, "answer 1") != NULL);
    ASSERT_EQ(res.e->output_tokens, 1);
    leo_cache_entry_unref(res.e);
    /* promoted: the next lookup in that worker is an L1 hit */
    ASSERT_EQ(leo_cache_lookup(w2, &k, &got, on_l2, &res, &h), LEO_CACHE_HIT);
    leo_cache_entry_unref(got);
    ASSERT_EQ(res.calls, 1);

    /* a key nobody stored: a miss through the callback */
    struct leo_cache_key k2 = numbered_key(2);
    res = (struct l2_result){0};
    ASSERT_EQ(leo_cache_lookup(w2, &k2, &got, on_l2, &res, &h), LEO_CACHE_PENDING);
    RUN_UNTIL(res.calls == 1, 5000);
    ASSERT(res.e == NULL);
    ASSERT_EQ(res.err, 0);

    /* garbage under a key is a miss with an error, never an answer */
    struct leo_cache_key k3 = numbered_key(3);
    char setcmd[300];
    snprintf(setcmd, sizeof(setcmd), "SET leo:cache:%s %%s", k3.s);
    rep = redis_harness_query(&srv, NULL, 0, setcmd, "LEOC1 garbage");
    ASSERT(rep != NULL);
    freeReplyObject(rep);
    res = (struct l2_result){0};
    ASSERT_EQ(leo_cache_lookup(w2, &k3, &got, on_l2, &res, &h), LEO_CACHE_PENDING);
    RUN_UNTIL(res.calls == 1, 5000);
    ASSERT(res.e == NULL);
    ASSERT_EQ(res.err, LEO_EPARSE);

    /* a cancelled lookup never calls back; its record goes when Redis answers */
    struct leo_cache *w3 = leo_cache_new(&o);
    res = (struct l2_result){0};
    ASSERT_EQ(leo_cache_lookup(w3, &k, &got, on_l2, &res, &h), LEO_CACHE_PENDING);
    leo_cache_lookup_cancel(h);
    RUN_UNTIL(leo_cache_pending(w3) == 0, 5000);
    ASSERT_EQ(res.calls, 0);
    /* a cache freed with a lookup in flight: no callback either */
    ASSERT_EQ(leo_cache_lookup(w3, &k2, &got, on_l2, &res, &h), LEO_CACHE_PENDING);
    leo_cache_free(w3);
    struct leo_redis_stats st;
    leo_redis_stats(r, &st);
    RUN_UNTIL((leo_redis_stats(r, &st), st.pending == 0), 5000);
    ASSERT_EQ(res.calls, 0);

    leo_cache_free(w1);
    leo_cache_free(w2);
    redis_loop_close_client(&fx, r);
    redis_server_stop(&srv);
    leo_buf_release(&b);
    redis_loop_done(&fx);
}

TEST(l2_expired_entries_are_misses)
{
    redis_loop_init(&fx);
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    struct leo_redis *r = redis_up(&srv, 1000);
    struct leo_cache_opts o = {.max_bytes = 1 << 20, .redis = r};
    struct leo_cache *w1 = leo_cache_new(&o), *w2 = leo_cache_new(&o);
    leo_cache_set_clock(w1, fake_clock, NULL);
    leo_cache_set_clock(w2, fake_clock, NULL);
    uint64_t t0 = fake_now;
    struct leo_buf b = LEO_BUF_INIT;
    struct leo_cache_key k = numbered_key(1);
    struct leo_cache_entry *e = answer_entry(1, 0);
    ASSERT_EQ(leo_cache_store(w1, &k, e, 60000), 0);
    leo_cache_entry_unref(e);
    RUN_UNTIL(leo_cache_pending(w1) == 0, 5000);
    /* the value's own expiry is checked too (Redis's PX is the other guard) */
    fake_now = t0 + 60000;
    struct leo_cache_entry *got = NULL;
    struct l2_result res = {0};
    ASSERT_EQ(leo_cache_lookup(w2, &k, &got, on_l2, &res, NULL), LEO_CACHE_PENDING);
    RUN_UNTIL(res.calls == 1, 5000);
    ASSERT(res.e == NULL);
    fake_now = t0;
    leo_cache_free(w1);
    leo_cache_free(w2);
    redis_loop_close_client(&fx, r);
    redis_server_stop(&srv);
    leo_buf_release(&b);
    redis_loop_done(&fx);
}

TEST(l2_down_or_stalled_is_a_miss_and_never_blocks)
{
    redis_loop_init(&fx);
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    struct leo_redis *r = redis_up(&srv, 100);
    struct leo_cache_opts o = {.max_bytes = 1 << 20, .redis = r};
    struct leo_cache *c = leo_cache_new(&o);
    struct leo_buf b = LEO_BUF_INIT;
    struct leo_cache_key k = numbered_key(1), k2 = numbered_key(2);

    /* stalled: the server is stopped (SIGSTOP), the command times out and the lookup reports a miss */
    ASSERT_EQ(kill(srv.pid, SIGSTOP), 0);
    struct leo_cache_entry *got = NULL;
    struct l2_result res = {0};
    ASSERT_EQ(leo_cache_lookup(c, &k, &got, on_l2, &res, NULL), LEO_CACHE_PENDING);
    RUN_UNTIL(res.calls == 1, 5000);
    ASSERT(res.e == NULL);
    ASSERT_EQ(res.err, LEO_ETIMEOUT);
    ASSERT_EQ(kill(srv.pid, SIGCONT), 0);

    /* down: once the client knows, a lookup is a miss at once, without a callback, and stores still fill L1 */
    redis_server_kill(&srv);
    RUN_UNTIL(!leo_redis_connected(r), 5000);
    res = (struct l2_result){0};
    ASSERT_EQ(leo_cache_lookup(c, &k2, &got, on_l2, &res, NULL), LEO_CACHE_MISS);
    struct leo_cache_entry *e = answer_entry(2, 0);
    ASSERT_EQ(leo_cache_store(c, &k2, e, 60000), 0);
    leo_cache_entry_unref(e);
    ASSERT_EQ(leo_cache_pending(c), 0);
    ASSERT_EQ(leo_cache_lookup(c, &k2, &got, on_l2, &res, NULL), LEO_CACHE_HIT);
    leo_cache_entry_unref(got);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    ASSERT_EQ(res.calls, 0);

    leo_cache_free(c);
    redis_loop_close_client(&fx, r);
    redis_server_stop(&srv);
    leo_buf_release(&b);
    redis_loop_done(&fx);
}

/* ---- deduplication --------------------------------------------------------------------------------------- */

struct fol {
    int data_calls, done_calls;
    struct leo_buf data;
    struct leo_dedup_result last;
    struct leo_cache_entry *entry;
    char body[128];
    struct leo_dedup_follower *self;
    bool leave_on_data;       /* its client fails a write */
    struct leo_dedup *rejoin; /* retry from inside on_done */
    const struct leo_cache_key *rejoin_key;
    int rejoined_as;
    struct leo_dedup_flight *rejoined_flight;
};

static void fol_data(void *ud, const char *bytes, size_t len)
{
    struct fol *f = ud;
    f->data_calls++;
    leo_buf_add(&f->data, bytes, len);
    if (f->leave_on_data)
        leo_dedup_leave(f->self);
}

static const struct leo_dedup_callbacks stream_cbs;

static void fol_done(void *ud, const struct leo_dedup_result *r)
{
    struct fol *f = ud;
    f->done_calls++;
    f->last = *r;
    f->entry = r->entry;
    snprintf(f->body, sizeof(f->body), "%.*s", (int)r->len, r->body ? r->body : "");
    f->last.body = NULL;
    if (f->rejoin && r->retry) {
        struct leo_dedup_follower *fl;
        f->rejoined_as = leo_dedup_join(f->rejoin, f->rejoin_key, 1, &stream_cbs, f, &f->rejoined_flight, &fl);
    }
}

static const struct leo_dedup_callbacks stream_cbs = {fol_data, fol_done};
static const struct leo_dedup_callbacks whole_cbs = {NULL, fol_done};

static void fol_init(struct fol *f)
{
    memset(f, 0, sizeof(*f));
    f->data = (struct leo_buf)LEO_BUF_INIT;
}

static void fol_release(struct fol *f)
{
    leo_buf_release(&f->data);
    leo_cache_entry_unref(f->entry);
}

TEST(dedup_followers_share_the_leaders_stream_and_answer)
{
    struct leo_dedup *d = leo_dedup_new(0);
    struct leo_cache_key k = numbered_key(1), other = numbered_key(2);
    struct leo_dedup_flight *lead = NULL, *lead2 = NULL, *x = NULL;
    struct leo_dedup_follower *fl = NULL;
    struct fol s1, s2, w, u;
    fol_init(&s1);
    fol_init(&s2);
    fol_init(&w);
    fol_init(&u);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    ASSERT(lead != NULL && fl == NULL);
    ASSERT_EQ(leo_dedup_join(d, &other, 1, &stream_cbs, NULL, &lead2, &fl), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &s1, &x, &fl), LEO_DEDUP_FOLLOWER);
    ASSERT(fl != NULL);
    ASSERT_EQ(leo_dedup_join(d, &k, 0, &whole_cbs, &w, &x, &fl), LEO_DEDUP_FOLLOWER);
    /* a stream follower of another variant (e.g. with usage) gets only the end */
    ASSERT_EQ(leo_dedup_join(d, &k, 2, &stream_cbs, &u, &x, &fl), LEO_DEDUP_FOLLOWER);
    leo_dedup_publish(lead, "data: a\n\n", 9);
    leo_dedup_publish(lead, "data: b\n\n", 9);
    ASSERT_EQ(s1.data_calls, 2);
    /* a late joiner gets the backlog at once, then the rest live */
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &s2, &x, &fl), LEO_DEDUP_FOLLOWER);
    ASSERT_EQ(s2.data_calls, 1);
    ASSERT_STR_EQ(s2.data.p, "data: a\n\ndata: b\n\n");
    leo_dedup_publish(lead, "data: [DONE]\n\n", 14);
    ASSERT_STR_EQ(s1.data.p, "data: a\n\ndata: b\n\ndata: [DONE]\n\n");
    ASSERT_STR_EQ(s2.data.p, s1.data.p);
    ASSERT_EQ(w.data_calls + u.data_calls, 0);
    size_t flights, followers;
    leo_dedup_counts(d, &flights, &followers);
    ASSERT_EQ(flights, 2);
    ASSERT_EQ(followers, 4);

    struct leo_buf b = LEO_BUF_INIT;
    struct leo_cache_entry *e = answer_entry(1, 0);
    leo_dedup_complete(lead, e);
    struct fol *all[] = {&s1, &s2, &w, &u};
    for (size_t i = 0; i < 4; i++) {
        ASSERT_EQ(all[i]->done_calls, 1);
        ASSERT(all[i]->entry == e);
        ASSERT(!all[i]->last.retry);
    }
    ASSERT(s1.last.delivered && !w.last.delivered && !u.last.delivered);
    ASSERT_EQ(e->refs, 5);
    leo_dedup_counts(d, &flights, &followers);
    ASSERT_EQ(flights, 1);
    ASSERT_EQ(followers, 0);
    /* the key is free again: the next identical request leads */
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    leo_dedup_abandon(lead);
    leo_dedup_abandon(lead2);
    for (size_t i = 0; i < 4; i++)
        fol_release(all[i]);
    ASSERT_EQ(e->refs, 1);
    leo_cache_entry_unref(e);
    leo_buf_release(&b);
    leo_dedup_free(d);
}

TEST(dedup_leader_failure_fails_or_retries_followers)
{
    struct leo_dedup *d = leo_dedup_new(0);
    struct leo_cache_key k = numbered_key(1);
    struct leo_dedup_flight *lead = NULL, *x = NULL;
    struct leo_dedup_follower *fl = NULL;
    struct fol s, w;
    fol_init(&s);
    fol_init(&w);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &s, &x, &fl), LEO_DEDUP_FOLLOWER);
    ASSERT_EQ(leo_dedup_join(d, &k, 0, &whole_cbs, &w, &x, &fl), LEO_DEDUP_FOLLOWER);
    leo_dedup_publish(lead, "data: a\n\n", 9);
    const char *body = "{\"error\":{\"message\":\"upstream failed\"}}";
    leo_dedup_fail(lead, 502, body, strlen(body), true);
    ASSERT_EQ(s.done_calls, 1);
    ASSERT_EQ(w.done_calls, 1);
    /* the stream follower already has bytes: it cannot start over */
    ASSERT(s.entry == NULL && !s.last.retry && s.last.delivered);
    ASSERT(w.entry == NULL && w.last.retry && !w.last.delivered);
    ASSERT_EQ(w.last.status, 502);
    ASSERT_STR_EQ(w.body, body);

    /* a failure the followers would meet too (the request is bad): no retry for anyone */
    fol_release(&w);
    fol_init(&w);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k, 0, &whole_cbs, &w, &x, &fl), LEO_DEDUP_FOLLOWER);
    leo_dedup_fail(lead, 400, "{}", 2, false);
    ASSERT_EQ(w.done_calls, 1);
    ASSERT(!w.last.retry);
    ASSERT_EQ(w.last.status, 400);
    fol_release(&s);
    fol_release(&w);
    leo_dedup_free(d);
}

TEST(dedup_abandoned_flight_hands_over_to_a_retrying_follower)
{
    struct leo_dedup *d = leo_dedup_new(0);
    struct leo_cache_key k = numbered_key(1);
    struct leo_dedup_flight *lead = NULL, *x = NULL;
    struct leo_dedup_follower *fl = NULL;
    struct fol a, b;
    fol_init(&a);
    fol_init(&b);
    a.rejoin = b.rejoin = d;
    a.rejoin_key = b.rejoin_key = &k;
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &a, &x, &fl), LEO_DEDUP_FOLLOWER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &b, &x, &fl), LEO_DEDUP_FOLLOWER);
    leo_dedup_abandon(lead); /* the leader's client left */
    ASSERT_EQ(a.done_calls + b.done_calls, 2);
    ASSERT(a.last.retry && b.last.retry);
    /* whichever heard first leads now, the other follows it */
    struct fol *leader = a.rejoined_as == LEO_DEDUP_LEADER ? &a : &b;
    struct fol *follower = leader == &a ? &b : &a;
    ASSERT_EQ(leader->rejoined_as, LEO_DEDUP_LEADER);
    ASSERT_EQ(follower->rejoined_as, LEO_DEDUP_FOLLOWER);
    leo_dedup_publish(leader->rejoined_flight, "x", 1);
    ASSERT_EQ(follower->data_calls, 1);
    size_t flights, followers;
    leo_dedup_counts(d, &flights, &followers);
    ASSERT_EQ(flights, 1);
    ASSERT_EQ(followers, 1);
    follower->rejoin = NULL;
    leo_dedup_fail(leader->rejoined_flight, 500, NULL, 0, false);
    ASSERT_EQ(follower->done_calls, 2);
    fol_release(&a);
    fol_release(&b);
    leo_dedup_free(d);
}

TEST(dedup_followers_that_leave_do_not_disturb_the_flight)
{
    struct leo_dedup *d = leo_dedup_new(0);
    struct leo_cache_key k = numbered_key(1);
    struct leo_dedup_flight *lead = NULL, *x = NULL;
    struct fol a, b, c;
    fol_init(&a);
    fol_init(&b);
    fol_init(&c);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &a.self), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &a, &x, &a.self), LEO_DEDUP_FOLLOWER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &b, &x, &b.self), LEO_DEDUP_FOLLOWER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &c, &x, &c.self), LEO_DEDUP_FOLLOWER);
    leo_dedup_publish(lead, "1", 1);
    leo_dedup_leave(a.self); /* its client disconnected */
    b.leave_on_data = true;  /* its client fails the next write, from inside the callback */
    leo_dedup_publish(lead, "2", 1);
    leo_dedup_publish(lead, "3", 1);
    ASSERT_EQ(a.data_calls, 1);
    ASSERT_EQ(b.data_calls, 2);
    ASSERT_EQ(c.data_calls, 3);
    size_t flights, followers;
    leo_dedup_counts(d, &flights, &followers);
    ASSERT_EQ(flights, 1);
    ASSERT_EQ(followers, 1);
    struct leo_buf buf = LEO_BUF_INIT;
    struct leo_cache_entry *e = answer_entry(1, 0);
    leo_dedup_complete(lead, e);
    ASSERT_EQ(a.done_calls + b.done_calls, 0);
    ASSERT_EQ(c.done_calls, 1);
    ASSERT_STR_EQ(c.data.p, "123");
    leo_cache_entry_unref(e);
    fol_release(&a);
    fol_release(&b);
    fol_release(&c);
    leo_buf_release(&buf);
    leo_dedup_free(d);
}

TEST(dedup_backlog_cap_closes_the_flight_to_joiners)
{
    struct leo_dedup *d = leo_dedup_new(8);
    struct leo_cache_key k = numbered_key(1);
    struct leo_dedup_flight *lead = NULL, *lead2 = NULL, *x = NULL;
    struct leo_dedup_follower *fl = NULL;
    struct fol a;
    fol_init(&a);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, &a, &x, &fl), LEO_DEDUP_FOLLOWER);
    leo_dedup_publish(lead, "0123456789", 10);
    ASSERT_EQ(a.data_calls, 1); /* those already following still get everything */
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead2, &fl), LEO_DEDUP_LEADER);
    leo_dedup_publish(lead, "x", 1);
    ASSERT_STR_EQ(a.data.p, "0123456789x");
    leo_dedup_abandon(lead2);
    leo_dedup_fail(lead, 500, NULL, 0, true);
    ASSERT_EQ(a.done_calls, 1);
    ASSERT(!a.last.retry);
    fol_release(&a);
    leo_dedup_free(d);
}

TEST(dedup_free_releases_followers_with_retry)
{
    struct leo_dedup *d = leo_dedup_new(0);
    struct leo_cache_key k = numbered_key(1);
    struct leo_dedup_flight *lead = NULL, *x = NULL;
    struct leo_dedup_follower *fl = NULL;
    struct fol a;
    fol_init(&a);
    ASSERT_EQ(leo_dedup_join(d, &k, 1, &stream_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k, 0, &whole_cbs, &a, &x, &fl), LEO_DEDUP_FOLLOWER);
    leo_dedup_free(d);
    ASSERT_EQ(a.done_calls, 1);
    ASSERT(a.last.retry);
    fol_release(&a);
}

/* ---- metrics ------------------------------------------------------------------------------------------ */

static double metric(const char *series)
{
    struct leo_buf out = LEO_BUF_INIT;
    leo_metrics_render(&out);
    /* a sample line: the series at the start of a line, then a space (the HELP and TYPE lines do not match) */
    char needle[256];
    snprintf(needle, sizeof(needle), "\n%s ", series);
    const char *p = strstr(out.p, needle);
    double v = -1;
    if (p && sscanf(p + strlen(needle), "%lf", &v) != 1)
        v = -1;
    leo_buf_release(&out);
    return v;
}

TEST(key_memo_returns_the_key_of_the_same_bytes_only)
{
    struct leo_cache_opts o = {.max_bytes = 1 << 20};
    struct leo_cache *c = leo_cache_new(&o);
    const char *body = BASE ",\"seed\":1}", *spaced = BASE ", \"seed\": 1}";
    struct leo_cache_key want, k;
    bool memo;
    key_of("acme", LEO_DIALECT_OPENAI, body, &want);
    double hits0 = metric("leo_cache_key_memo_total{result=\"hit\"}");
    /* not remembered yet: computed */
    ASSERT_EQ(leo_cache_key_memo(c, "acme", LEO_DIALECT_OPENAI, body, strlen(body), &k, &memo), 0);
    ASSERT(!memo);
    ASSERT_STR_EQ(k.s, want.s);
    leo_cache_key_remember(c, LEO_DIALECT_OPENAI, body, strlen(body), &k);
    /* the same bytes: from the memo, the same key */
    memset(&k, 0, sizeof(k));
    ASSERT_EQ(leo_cache_key_memo(c, "acme", LEO_DIALECT_OPENAI, body, strlen(body), &k, &memo), 0);
    ASSERT(memo);
    ASSERT_STR_EQ(k.s, want.s);
    ASSERT_EQ(k.len, want.len);
    ASSERT(metric("leo_cache_key_memo_total{result=\"hit\"}") >= (hits0 < 0 ? 0 : hits0) + 1);
    /* another tenant, another dialect, other bytes with the same meaning, one byte changed: computed again */
    ASSERT_EQ(leo_cache_key_memo(c, "acme2", LEO_DIALECT_OPENAI, body, strlen(body), &k, &memo), 0);
    ASSERT(!memo);
    ASSERT(strcmp(k.s, want.s) != 0);
    ASSERT_EQ(leo_cache_key_memo(c, "acme", LEO_DIALECT_ANTHROPIC, body, strlen(body), &k, &memo), 0);
    ASSERT(!memo);
    ASSERT(strcmp(k.s, want.s) != 0);
    ASSERT_EQ(leo_cache_key_memo(c, "acme", LEO_DIALECT_OPENAI, spaced, strlen(spaced), &k, &memo), 0);
    ASSERT(!memo);
    ASSERT_STR_EQ(k.s, want.s);
    char *changed = leo_strdup(body);
    changed[strlen(changed) - 2] = '2';
    ASSERT_EQ(leo_cache_key_memo(c, "acme", LEO_DIALECT_OPENAI, changed, strlen(changed), &k, &memo), 0);
    ASSERT(!memo);
    ASSERT(strcmp(k.s, want.s) != 0);
    leo_free(changed);
    /* a prefix "acme" of the tenant "acme2" is not the tenant */
    leo_cache_key_remember(c, LEO_DIALECT_OPENAI, body, strlen(body), &want);
    ASSERT_EQ(leo_cache_key_memo(c, "acm", LEO_DIALECT_OPENAI, body, strlen(body), &k, &memo), 0);
    ASSERT(!memo);
    /* invalid bytes are never memoised into a key */
    ASSERT_EQ(leo_cache_key_memo(c, "acme", LEO_DIALECT_OPENAI, "{", 1, &k, &memo), LEO_EPARSE);
    ASSERT(!memo);
    leo_cache_free(c);
}

TEST(metrics_count_lookups_stores_evictions_and_followers)
{
    double hits = metric("leo_cache_lookups_total{level=\"l1\",result=\"hit\"}");
    double followers = metric("leo_dedup_followers_total");
    double size_evictions = metric("leo_cache_evictions_total{reason=\"size\"}");
    struct leo_buf b = LEO_BUF_INIT;
    struct leo_cache_entry *e = answer_entry(1, 0);
    struct leo_cache_key k1 = numbered_key(1), k2 = numbered_key(2);
    uint64_t one = e->len + k1.len + sizeof(struct leo_cache_entry);
    struct leo_cache_opts o = {.max_bytes = one};
    struct leo_cache *c = leo_cache_new(&o);
    ASSERT_EQ(leo_cache_store(c, &k1, e, 60000), 0);
    ASSERT_DBL_EQ(metric("leo_cache_entries"), 1);
    ASSERT_DBL_EQ(metric("leo_cache_bytes"), (double)one);
    struct leo_cache_entry *got;
    ASSERT_EQ(leo_cache_lookup(c, &k1, &got, NULL, NULL, NULL), LEO_CACHE_HIT);
    leo_cache_entry_unref(got);
    struct leo_cache_entry *e2 = answer_entry(2, 0);
    ASSERT_EQ(leo_cache_store(c, &k2, e2, 60000), 0);
    ASSERT_DBL_EQ(metric("leo_cache_lookups_total{level=\"l1\",result=\"hit\"}"), (hits < 0 ? 0 : hits) + 1);
    ASSERT_DBL_EQ(metric("leo_cache_evictions_total{reason=\"size\"}"), (size_evictions < 0 ? 0 : size_evictions) + 1);
    struct leo_dedup *d = leo_dedup_new(0);
    struct leo_dedup_flight *lead, *x;
    struct leo_dedup_follower *fl;
    struct fol a;
    fol_init(&a);
    ASSERT_EQ(leo_dedup_join(d, &k1, 0, &whole_cbs, NULL, &lead, &fl), LEO_DEDUP_LEADER);
    ASSERT_EQ(leo_dedup_join(d, &k1, 0, &whole_cbs, &a, &x, &fl), LEO_DEDUP_FOLLOWER);
    ASSERT_DBL_EQ(metric("leo_dedup_followers_total"), (followers < 0 ? 0 : followers) + 1);
    leo_dedup_complete(lead, e);
    fol_release(&a);
    leo_dedup_free(d);
    leo_cache_free(c);
    ASSERT_DBL_EQ(metric("leo_cache_entries"), 0);
    leo_cache_entry_unref(e);
    leo_cache_entry_unref(e2);
    leo_buf_release(&b);
}

static void describe(void)
{
    leo_redis_metrics_describe();
    leo_cache_metrics_describe();
}

TEST(setup)
{
    describe();
}

TEST_MAIN(TEST_ENTRY(setup), TEST_ENTRY(key_format_is_tenant_and_hex),
          TEST_ENTRY(key_ignores_order_whitespace_and_number_forms), TEST_ENTRY(key_changes_with_every_output_member),
          TEST_ENTRY(canonical_text_from_bytes_matches_the_tree),
          TEST_ENTRY(key_ignores_members_that_cannot_change_the_answer),
          TEST_ENTRY(key_differs_between_tenants_and_dialects), TEST_ENTRY(deterministic_requests),
          TEST_ENTRY(decisions_follow_mode_and_headers), TEST_ENTRY(header_errors_name_the_header),
          TEST_ENTRY(status_names), TEST_ENTRY(config_section_and_overrides),
          TEST_ENTRY(entry_reads_usage_and_round_trips_its_encoding),
          TEST_ENTRY(l1_is_bounded_in_bytes_and_evicts_least_recent), TEST_ENTRY(entry_sse_is_rendered_once_and_counted_in_l1),
          TEST_ENTRY(l1_expires_by_ttl_and_entries_in_use_survive_eviction),
          TEST_ENTRY(purge_removes_one_tenants_entries_or_all),
          TEST_ENTRY(openai_chunks_assemble_into_the_whole_answer), TEST_ENTRY(openai_replay_round_trips),
          TEST_ENTRY(openai_replay_takes_a_new_id_and_frames_sse), TEST_ENTRY(anthropic_replay_round_trips),
          TEST_ENTRY(assemblers_refuse_what_they_cannot_represent),
          TEST_ENTRY(l2_is_shared_between_workers_through_redis), TEST_ENTRY(l2_expired_entries_are_misses),
          TEST_ENTRY(l2_down_or_stalled_is_a_miss_and_never_blocks),
          TEST_ENTRY(dedup_followers_share_the_leaders_stream_and_answer),
          TEST_ENTRY(dedup_leader_failure_fails_or_retries_followers),
          TEST_ENTRY(dedup_abandoned_flight_hands_over_to_a_retrying_follower),
          TEST_ENTRY(dedup_followers_that_leave_do_not_disturb_the_flight),
          TEST_ENTRY(dedup_backlog_cap_closes_the_flight_to_joiners),
          TEST_ENTRY(dedup_free_releases_followers_with_retry),
          TEST_ENTRY(key_memo_returns_the_key_of_the_same_bytes_only),
          TEST_ENTRY(metrics_count_lookups_stores_evictions_and_followers))
