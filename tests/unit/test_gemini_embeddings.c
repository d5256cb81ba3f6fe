#include "common/buf.h"
#include "common/error.h"
#include "gateway/config.h"
#include "gateway/providers/gemini.h"
#include "tests/unit/test.h"

static const struct leo_adapter_ctx ctx = {"text-embedding-004", 4096, "chatcmpl-x", 1700000000};

TEST(builds_batch_request_with_dimensions)
{
    json_t *req = json_loads("{\"model\":\"e\",\"input\":[\"a b\",\"c\"],\"dimensions\":8}", 0, NULL);
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    ASSERT_EQ(leo_adapter_gemini.build_embeddings(req, &ctx, &body, &err), 0);
    ASSERT_STR_EQ(body.p, "{\"requests\":[{\"model\":\"models/text-embedding-004\",\"content\":{\"parts\":[{\"text\":"
                          "\"a b\"}]},\"outputDimensionality\":8},{\"model\":\"models/text-embedding-004\","
                          "\"content\":{\"parts\":[{\"text\":\"c\"}]},\"outputDimensionality\":8}]}");
    json_decref(req);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

TEST(rejects_token_arrays)
{
    json_t *req = json_loads("{\"model\":\"e\",\"input\":[[1,2,3]]}", 0, NULL);
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    ASSERT_EQ(leo_adapter_gemini.build_embeddings(req, &ctx, &body, &err), LEO_EINVAL);
    ASSERT_STR_EQ(err.p, "input[0]: gemini embeds text only, not token arrays");
    json_decref(req);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

TEST(parses_floats_and_base64)
{
    const char *up = "{\"embeddings\":[{\"values\":[1.0,-2.5]},{\"values\":[0.5,0]}]}";
    json_t *req = json_loads("{\"model\":\"e\",\"input\":[\"abcd\",\"efgh\"]}", 0, NULL);
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    json_t *out = leo_adapter_gemini.parse_embeddings(up, strlen(up), req, &ctx, &u, &err);
    ASSERT(out != NULL);
    char *s = json_dumps(out, JSON_COMPACT);
    ASSERT_STR_EQ(s, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[1.0,-2.5]},"
                     "{\"object\":\"embedding\",\"index\":1,\"embedding\":[0.5,0]}],\"model\":\"text-embedding-004\","
                     "\"usage\":{\"prompt_tokens\":2,\"total_tokens\":2}}");
    free(s);
    json_decref(out);
    json_object_set_new(req, "encoding_format", json_string("base64"));
    out = leo_adapter_gemini.parse_embeddings(up, strlen(up), req, &ctx, &u, &err);
    /* 1.0f = 00 00 80 3f, -2.5f = 00 00 20 c0 (little-endian) */
    ASSERT_STR_EQ(json_string_value(json_object_get(json_array_get(json_object_get(out, "data"), 0), "embedding")),
                  "AACAPwAAIMA=");
    json_decref(out);
    ASSERT(leo_adapter_gemini.parse_embeddings("{}", 2, req, &ctx, &u, &err) == NULL);
    json_decref(req);
    leo_buf_release(&err);
}

TEST_MAIN(TEST_ENTRY(builds_batch_request_with_dimensions), TEST_ENTRY(rejects_token_arrays),
          TEST_ENTRY(parses_floats_and_base64))
