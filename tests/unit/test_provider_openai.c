#include "common/arena.h"
#include "common/buf.h"
#include "common/error.h"
#include "common/json_scan.h"
#include "gateway/config.h"
#include "gateway/providers/openai.h"
#include "tests/unit/test.h"

static struct leo_provider provider(const char *type, const char *base, const char *version)
{
    struct leo_provider p;
    memset(&p, 0, sizeof(p));
    p.name = (char *)"p";
    p.type = (char *)type;
    p.base_url = (char *)base;
    p.api_version = (char *)version;
    return p;
}

TEST(openai_url_and_bearer)
{
    struct leo_provider p = provider("openai", "https://api.deepseek.com/v1", NULL);
    struct leo_buf url = LEO_BUF_INIT;
    ASSERT_EQ(leo_adapter_openai.chat_url(&p, "deepseek-chat", true, &url), 0);
    ASSERT_STR_EQ(url.p, "https://api.deepseek.com/v1/chat/completions");
    struct leo_arena a = LEO_ARENA_INIT;
    struct leo_http_header h[4];
    size_t n = 0;
    leo_adapter_openai.auth_headers(&p, LEO_STR_LIT("sk-abc"), h, &n, 4, &a);
    ASSERT_EQ(n, 1);
    ASSERT_MEM_EQ(h[0].name.p, h[0].name.len, "Authorization", 13);
    ASSERT_MEM_EQ(h[0].value.p, h[0].value.len, "Bearer sk-abc", 13);
    n = 0;
    leo_adapter_openai.auth_headers(&p, (struct leo_str){NULL, 0}, h, &n, 4, &a);
    ASSERT_EQ(n, 0);
    leo_arena_destroy(&a);
    leo_buf_release(&url);
}

TEST(azure_deployment_path_version_and_api_key)
{
    struct leo_provider p = provider("azure", "https://res.openai.azure.com", "2024-10-21");
    struct leo_buf url = LEO_BUF_INIT;
    ASSERT_EQ(leo_adapter_azure.chat_url(&p, "my gpt/4o", false, &url), 0);
    ASSERT_STR_EQ(url.p, "https://res.openai.azure.com/openai/deployments/my%20gpt%2F4o/chat/completions"
                         "?api-version=2024-10-21");
    struct leo_arena a = LEO_ARENA_INIT;
    struct leo_http_header h[4];
    size_t n = 0;
    leo_adapter_azure.auth_headers(&p, LEO_STR_LIT("azkey"), h, &n, 4, &a);
    ASSERT_EQ(n, 1);
    ASSERT_MEM_EQ(h[0].name.p, h[0].name.len, "api-key", 7);
    ASSERT_MEM_EQ(h[0].value.p, h[0].value.len, "azkey", 5);
    leo_arena_destroy(&a);
    leo_buf_release(&url);
}

TEST(build_sets_model_and_stream_usage)
{
    json_t *canon = json_loads("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0.7,"
                               "\"stream\":true}",
                               0, NULL);
    struct leo_adapter_ctx ctx = {"gpt-4o-mini", 4096, "chatcmpl-1", 1};
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    ASSERT_EQ(leo_adapter_openai.build_chat(canon, &ctx, &body, &err), 0);
    ASSERT_STR_EQ(body.p, "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                          "\"temperature\":0.7,\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    /* the canonical request itself is not changed */
    ASSERT_STR_EQ(json_string_value(json_object_get(canon, "model")), "x");
    json_decref(canon);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

TEST(stream_events_usage_done_and_errors)
{
    struct leo_adapter_ctx ctx = {"m", 4096, "chatcmpl-1", 1};
    struct leo_stream_xlate *st = leo_adapter_openai.stream_new(&ctx);
    json_t *out = json_array();
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    ASSERT_EQ(leo_adapter_openai.stream_end(st, out, &u, &err), LEO_EUPSTREAM);
    leo_buf_reset(&err);
    ASSERT_EQ(leo_adapter_openai.stream_event(st, (struct leo_str){NULL, 0},
                                              LEO_STR_LIT("{\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                                                          "\"completion_tokens\":4,\"prompt_tokens_details\":"
                                                          "{\"cached_tokens\":2}}}"),
                                              out, &u, &err),
              0);
    ASSERT_EQ(json_array_size(out), 1);
    ASSERT(u.have);
    ASSERT_EQ(u.input_tokens, 3);
    ASSERT_EQ(u.output_tokens, 4);
    ASSERT_EQ(u.cache_read_tokens, 2);
    ASSERT_EQ(leo_adapter_openai.stream_event(st, (struct leo_str){NULL, 0}, LEO_STR_LIT("{\"error\":{\"message\":"
                                                                                          "\"overloaded\"}}"),
                                              out, &u, &err),
              LEO_EUPSTREAM);
    ASSERT_STR_EQ(err.p, "upstream error event: overloaded");
    ASSERT_EQ(leo_adapter_openai.stream_event(st, (struct leo_str){NULL, 0}, LEO_STR_LIT("[DONE]"), out, &u, &err), 1);
    ASSERT_EQ(leo_adapter_openai.stream_end(st, out, &u, &err), 0);
    leo_adapter_openai.stream_free(st);
    json_decref(out);
    leo_buf_release(&err);
}

TEST(error_messages)
{
    char out[64];
    const char *b1 = "{\"error\":{\"message\":\"bad key\"}}";
    leo_openai_error_message(b1, strlen(b1), out, sizeof(out));
    ASSERT_STR_EQ(out, "bad key");
    leo_openai_error_message("{\"error\":\"plain\"}", 17, out, sizeof(out));
    ASSERT_STR_EQ(out, "plain");
    leo_openai_error_message("not json", 8, out, sizeof(out));
    ASSERT_STR_EQ(out, "");
}

/* ---- usage read in place (passthrough) against usage read from jansson's tree, both dialects ---- */

/* The keys the readers look for, near misses, and others. */
static const char *const usage_keys[] = {"prompt_tokens",
                                         "completion_tokens",
                                         "prompt_tokens_details",
                                         "cached_tokens",
                                         "cache_creation_input_tokens",
                                         "input_tokens",
                                         "output_tokens",
                                         "cache_read_input_tokens",
                                         "total_tokens",
                                         "prompt_token",
                                         "Input_tokens",
                                         ""};

/* Integers the readers count, and values they must not: reals (12.0 too), strings, literals; numbers jansson
 * refuses (integers beyond 64 bits, reals that overflow) make it refuse the whole usage object, wherever they
 * stand in it. */
static const char *const usage_counts[] = {
    "0", "1", "25", "-3", "-0", "4096", "9223372036854775807", "-9223372036854775808"};
static const char *const usage_others[] = {"12.0", "1e2", "-0.0", "1.5e-400", "\"12\"", "null", "true", "[1]"};
static const char *const usage_refused[] = {"9223372036854775808", "-9223372036854775809", "99999999999999999999",
                                            "1e999", "[-1E+400]"};

#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

static void gen_space(uint64_t *rnd, struct leo_buf *b)
{
    if (test_rnd(rnd, 4) == 0)
        leo_buf_adds(b, test_rnd(rnd, 2) ? " " : "\n\t ");
}

static void gen_object(uint64_t *rnd, struct leo_buf *b, int depth);

static void gen_value(uint64_t *rnd, struct leo_buf *b, int depth)
{
    unsigned k = test_rnd(rnd, depth < 3 ? 100 : 75);
    if (k < 45)
        leo_buf_adds(b, usage_counts[test_rnd(rnd, NELEMS(usage_counts))]);
    else if (k < 74)
        leo_buf_adds(b, usage_others[test_rnd(rnd, NELEMS(usage_others))]);
    else if (k < 75)
        leo_buf_adds(b, usage_refused[test_rnd(rnd, NELEMS(usage_refused))]);
    else
        gen_object(rnd, b, depth + 1);
}

/* An object of up to seven members, keys repeated at random and their characters now and then escaped. */
static void gen_object(uint64_t *rnd, struct leo_buf *b, int depth)
{
    leo_buf_addch(b, '{');
    for (unsigned i = 0, n = test_rnd(rnd, 8); i < n; i++) {
        if (i)
            leo_buf_addch(b, ',');
        gen_space(rnd, b);
        leo_buf_addch(b, '"');
        /* half the time one of the keys a reader looks for */
        const char *key = usage_keys[test_rnd(rnd, test_rnd(rnd, 2) ? 8 : NELEMS(usage_keys))];
        for (const char *c = key; *c; c++) {
            if (test_rnd(rnd, 10) == 0)
                leo_buf_addf(b, "\\u%04x", (unsigned)*c);
            else
                leo_buf_addch(b, *c);
        }
        leo_buf_addch(b, '"');
        gen_space(rnd, b);
        leo_buf_addch(b, ':');
        gen_space(rnd, b);
        if (strcmp(key, "prompt_tokens_details") == 0 && test_rnd(rnd, 2)) {
            leo_buf_adds(b, "{\"cached_tokens\":"); /* where the OpenAI reader looks for cache reads */
            gen_value(rnd, b, depth + 1);
            leo_buf_addch(b, '}');
        } else {
            gen_value(rnd, b, depth);
        }
    }
    gen_space(rnd, b);
    leo_buf_addch(b, '}');
}

TEST(usage_read_in_place_agrees_with_the_tree)
{
    uint64_t rnd = 0x9e3779b97f4a7c15ull;
    struct leo_buf doc = LEO_BUF_INIT;
    size_t have[2] = {0, 0}, cached = 0, refused = 0;
    for (int i = 0; i < 5000; i++) {
        leo_buf_reset(&doc);
        leo_buf_adds(&doc, "{\"id\":\"x\",\"usage\":");
        if (test_rnd(&rnd, 10) == 0)
            gen_value(&rnd, &doc, 3); /* not an object */
        else
            gen_object(&rnd, &doc, 1);
        leo_buf_addch(&doc, '}');
        /* as finish_whole_ok reads it */
        struct leo_str text;
        ASSERT_EQ(leo_json_find_member(doc.p, doc.len, "usage", &text), 0);
        json_t *tree = json_loadb(text.p, text.len, JSON_DECODE_ANY, NULL);
        refused += tree == NULL;
        for (int anthropic = 0; anthropic < 2; anthropic++) {
            /* a sentinel: a reader that should leave u alone must */
            struct leo_usage t = {7, 7, 7, 7, false}, r = t;
            if (anthropic) {
                leo_usage_from_anthropic(tree, &t);
                leo_usage_from_anthropic_raw(text.p, text.len, &r);
            } else {
                leo_usage_from_openai(tree, &t);
                leo_usage_from_openai_raw(text.p, text.len, &r);
            }
            if (t.input_tokens != r.input_tokens || t.output_tokens != r.output_tokens ||
                t.cache_read_tokens != r.cache_read_tokens || t.cache_write_tokens != r.cache_write_tokens ||
                t.have != r.have)
                TEST_FAIL_("%s usage %.*s: tree {%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%d}, raw {%" PRIu64
                           ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%d}",
                           anthropic ? "anthropic" : "openai", (int)text.len, text.p, t.input_tokens, t.output_tokens,
                           t.cache_read_tokens, t.cache_write_tokens, t.have, r.input_tokens, r.output_tokens,
                           r.cache_read_tokens, r.cache_write_tokens, r.have);
            have[anthropic] += t.have;
            if (!anthropic && t.have && t.cache_read_tokens > 0)
                cached++;
        }
        json_decref(tree);
    }
    /* the cases reach every branch: usage counted in both dialects, cached tokens from the nested details,
     * and usage objects jansson refuses for a number's size */
    fprintf(stderr, "have openai %zu, anthropic %zu, cached %zu, refused %zu\n", have[0], have[1], cached, refused);
    ASSERT(have[0] > 500 && have[1] > 500);
    ASSERT(cached > 20);
    ASSERT(refused > 200);
    leo_buf_release(&doc);
}

/* An upstream's negative count is counted as 0 (a wrapped count would bill a fortune), by both readers. */
TEST(anthropic_passthrough_usage_negative_counts_zero)
{
    static const char text[] =
        "{\"input_tokens\":-5,\"output_tokens\":7,\"cache_read_input_tokens\":-1,\"cache_creation_input_tokens\":2}";
    json_t *tree = json_loads(text, 0, NULL);
    ASSERT(tree != NULL);
    struct leo_usage t = {0}, r = {0};
    leo_usage_from_anthropic(tree, &t);
    leo_usage_from_anthropic_raw(text, strlen(text), &r);
    json_decref(tree);
    ASSERT(t.have && r.have);
    ASSERT_EQ(t.input_tokens, 2); /* 0 + 0 cache reads + 2 cache writes */
    ASSERT_EQ(t.output_tokens, 7);
    ASSERT_EQ(t.cache_read_tokens, 0);
    ASSERT_EQ(r.input_tokens, 2);
    ASSERT_EQ(r.output_tokens, 7);
    ASSERT_EQ(r.cache_read_tokens, 0);
}

TEST_MAIN(TEST_ENTRY(openai_url_and_bearer), TEST_ENTRY(azure_deployment_path_version_and_api_key),
          TEST_ENTRY(build_sets_model_and_stream_usage), TEST_ENTRY(stream_events_usage_done_and_errors),
          TEST_ENTRY(error_messages), TEST_ENTRY(usage_read_in_place_agrees_with_the_tree),
          TEST_ENTRY(anthropic_passthrough_usage_negative_counts_zero))
