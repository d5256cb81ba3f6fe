#include "common/arena.h"
#include "common/buf.h"
#include "common/error.h"
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

TEST_MAIN(TEST_ENTRY(openai_url_and_bearer), TEST_ENTRY(azure_deployment_path_version_and_api_key),
          TEST_ENTRY(build_sets_model_and_stream_usage), TEST_ENTRY(stream_events_usage_done_and_errors),
          TEST_ENTRY(error_messages))
