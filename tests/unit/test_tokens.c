/*
 * test_tokens.c — the gateway's token estimate (gateway/tokens.h): golden figures, and the estimate from a
 * request's bytes (leo_estimate_tokens_raw, what chat requests use) held equal to the estimate from its tree
 * (leo_estimate_tokens) over generated requests with every kind of content, escapes and numbers.
 */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/json_scan.h"
#include "gateway/tokens.h"
#include "tests/unit/test.h"

static uint64_t from_tree(const char *body)
{
    json_error_t e;
    json_t *r = json_loads(body, 0, &e);
    if (r == NULL)
        TEST_FAIL_("bad test JSON at %d: %s: %s", e.position, e.text, body);
    uint64_t n = leo_estimate_tokens(r);
    json_decref(r);
    return n;
}

static uint64_t from_bytes(const char *body)
{
    struct leo_str messages, tools;
    size_t len = strlen(body);
    if (leo_json_find_member(body, len, "messages", &messages) != 0)
        messages = (struct leo_str){NULL, 0};
    if (leo_json_find_member(body, len, "tools", &tools) != 0)
        tools = (struct leo_str){NULL, 0};
    return leo_estimate_tokens_raw(messages, tools);
}

TEST(golden_estimates)
{
    /* "hello world!" is 12 characters: 3 tokens, + 4 for the message, + 3 for the reply */
    const char *one = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello world!\"}]}";
    ASSERT_EQ(from_tree(one), 10);
    ASSERT_EQ(from_bytes(one), 10);
    /* characters, not bytes: "été" is 3; an escaped "\u00e9" is 1; an image part is 85 */
    const char *parts = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\\u00e9t\xc3\xa9\"},"
                        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:x\"}}]}]}";
    ASSERT_EQ(from_tree(parts), 1 + 4 + 3 + 85);
    ASSERT_EQ(from_bytes(parts), 1 + 4 + 3 + 85);
    /* no messages: the reply's priming only */
    ASSERT_EQ(from_bytes("{\"model\":\"m\"}"), 3);
    ASSERT_EQ(from_tree("{\"model\":\"m\"}"), 3);
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static unsigned rnd(unsigned n)
{
    return test_rnd(&rng_state, n);
}

static const char *pick(const char *const *v, size_t n)
{
    return v[rnd((unsigned)n)];
}

#define PICK(v) pick(v, sizeof(v) / sizeof(v[0]))

static const char *const texts[] = {
    "\"plain text\"", "\"tab\\there\\nnew line\"", "\"\\u00e9t\\u00E9\"", "\"\xc3\xa9t\xc3\xa9 \xe2\x82\xac\"",
    "\"\\ud83d\\ude00 smile\"", "\"\\/\\\\ \\\"q\\\"\"", "\"\\u001f\\b\\f\\r\"", "\"\"", "\"what is 2+3?\"",
    "\"\x7f del\""};
static const char *const numbers[] = {"0", "-0", "0.0", "1e2", "1E+2", "1.5", "-1.25e-3", "0.1", "100", "1e22",
                                      "1.5e-7", "123456789", "-7", "2.50", "1e-5", "12345678901234567"};

static void gen_json(struct leo_buf *b, int depth)
{
    static const char *const keys[] = {"\"type\"", "\"description\"", "\"enum\"", "\"minimum\"", "\"items\"",
                                       "\"\\u00e9\"", "\"a\\nb\""};
    switch (depth >= 3 ? 2 + rnd(3) : rnd(5)) {
    case 0: {
        unsigned n = rnd(4);
        leo_buf_addch(b, '{');
        for (unsigned i = 0; i < n && i < 7; i++) {
            leo_buf_adds(b, i ? ", " : " ");
            leo_buf_adds(b, keys[i]); /* distinct keys: jansson would keep one of a repeated key */
            leo_buf_adds(b, rnd(2) ? ": " : ":");
            gen_json(b, depth + 1);
        }
        leo_buf_addch(b, '}');
        break;
    }
    case 1: {
        unsigned n = rnd(4);
        leo_buf_addch(b, '[');
        for (unsigned i = 0; i < n; i++) {
            if (i)
                leo_buf_adds(b, rnd(2) ? ",\n  " : ",");
            gen_json(b, depth + 1);
        }
        leo_buf_addch(b, ']');
        break;
    }
    case 2: leo_buf_adds(b, PICK(texts)); break;
    case 3: leo_buf_adds(b, PICK(numbers)); break;
    default: leo_buf_adds(b, rnd(3) == 0 ? "true" : rnd(2) ? "false" : "null"); break;
    }
}

static void gen_message(struct leo_buf *b)
{
    if (rnd(12) == 0) {
        leo_buf_adds(b, rnd(2) ? "\"not a message\"" : "42");
        return;
    }
    leo_buf_adds(b, "{\"role\":\"user\"");
    switch (rnd(5)) {
    case 0:
    case 1:
        leo_buf_adds(b, ", \"content\": ");
        leo_buf_adds(b, PICK(texts));
        break;
    case 2: {
        leo_buf_adds(b, ",\"content\":[");
        unsigned n = 1 + rnd(3);
        for (unsigned i = 0; i < n; i++) {
            if (i)
                leo_buf_addch(b, ',');
            switch (rnd(5)) {
            case 0: leo_buf_adds(b, "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x/y.png\"}}"); break;
            case 1: leo_buf_adds(b, "{\"type\":\"image\\u005furl\",\"image_url\":{\"url\":\"u\"}}"); break;
            case 2: leo_buf_adds(b, "\"a bare string part\""); break;
            default:
                leo_buf_adds(b, "{\"type\":\"text\",\"text\":");
                leo_buf_adds(b, PICK(texts));
                leo_buf_addch(b, '}');
            }
        }
        leo_buf_addch(b, ']');
        break;
    }
    case 3: leo_buf_adds(b, ",\"content\":null"); break;
    default: break;
    }
    if (rnd(3) == 0) {
        leo_buf_adds(b, ",\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":");
        leo_buf_adds(b, PICK(texts));
        leo_buf_adds(b, ",\"arguments\":");
        leo_buf_adds(b, rnd(4) ? PICK(texts) : "{\"not\":\"a string\"}");
        leo_buf_adds(b, "}}]");
    }
    if (rnd(6) == 0) {
        /* a repeated key: the last value counts */
        leo_buf_adds(b, ",\"content\":");
        leo_buf_adds(b, PICK(texts));
    }
    if (rnd(8) == 0)
        leo_buf_adds(b, ",\"cont\\u0065nt\":\"written with an escape\"");
    leo_buf_addch(b, '}');
}

TEST(estimate_from_bytes_equals_estimate_from_tree)
{
    for (int n = 0; n < 3000; n++) {
        struct leo_buf b = LEO_BUF_INIT;
        leo_buf_adds(&b, "{\"model\":\"gpt-4o\",\"messages\":[");
        unsigned msgs = rnd(5);
        for (unsigned i = 0; i < msgs; i++) {
            if (i)
                leo_buf_addch(&b, ',');
            gen_message(&b);
        }
        leo_buf_addch(&b, ']');
        if (rnd(2)) {
            leo_buf_adds(&b, ", \"tools\": [");
            unsigned t = rnd(3);
            for (unsigned i = 0; i < t; i++) {
                if (i)
                    leo_buf_addch(&b, ',');
                leo_buf_adds(&b, "{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":");
                gen_json(&b, 1);
                leo_buf_adds(&b, "}}");
            }
            leo_buf_addch(&b, ']');
        }
        leo_buf_addch(&b, '}');
        uint64_t tree = from_tree(b.p), bytes = from_bytes(b.p);
        if (tree != bytes)
            TEST_FAIL_("estimates differ (tree %llu, bytes %llu) for %s", (unsigned long long)tree,
                       (unsigned long long)bytes, b.p);
        leo_buf_release(&b);
    }
}

TEST_MAIN(TEST_ENTRY(golden_estimates), TEST_ENTRY(estimate_from_bytes_equals_estimate_from_tree))
