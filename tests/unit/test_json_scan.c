#include "common/buf.h"
#include "common/error.h"
#include "common/json_scan.h"
#include "tests/unit/test.h"

static void splice(const char *in, struct leo_json_edit *e, size_t n, const char *expect)
{
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(leo_json_splice(in, strlen(in), e, n, &out), 0);
    ASSERT_STR_EQ(out.p, expect);
    leo_buf_release(&out);
}

TEST(replaces_value_keeping_other_bytes)
{
    struct leo_json_edit e[] = {{"model", LEO_STR_LIT("\"up-model\""), 0, 0}};
    splice("{\"model\" : \"gpt\", \"temperature\":0.2,\"x\":{\"model\":\"inner\"}}", e, 1,
           "{\"model\" : \"up-model\", \"temperature\":0.2,\"x\":{\"model\":\"inner\"}}");
}

TEST(appends_missing_member)
{
    struct leo_json_edit e[] = {{"stream_options", LEO_STR_LIT("{\"include_usage\":true}"), 0, 0}};
    splice("{\"a\":[1,2,\"]}\"]}\n", e, 1, "{\"a\":[1,2,\"]}\"],\"stream_options\":{\"include_usage\":true}}\n");
    splice("{ }", e, 1, "{ \"stream_options\":{\"include_usage\":true}}");
}

TEST(removes_members)
{
    struct leo_json_edit e[] = {{"b", {NULL, 0}, 1, 0}};
    splice("{\"a\":1,\"b\":2,\"c\":3}", e, 1, "{\"a\":1,\"c\":3}");
    splice("{\"b\":2, \"c\":3}", e, 1, "{\"c\":3}");
    splice("{\"a\":1,\"b\":2}", e, 1, "{\"a\":1}");
    splice("{\"b\":2}", e, 1, "{}");
}

TEST(escaped_strings_do_not_confuse_nesting)
{
    struct leo_json_edit e[] = {{"model", LEO_STR_LIT("\"m\""), 0, 0}};
    splice("{\"messages\":[{\"content\":\"a \\\"}{[ b\\\\\"}],\"model\":\"x\"}", e, 1,
           "{\"messages\":[{\"content\":\"a \\\"}{[ b\\\\\"}],\"model\":\"m\"}");
}

TEST(rejects_non_objects)
{
    struct leo_buf out = LEO_BUF_INIT;
    ASSERT_EQ(leo_json_splice("[1]", 3, NULL, 0, &out), LEO_EPARSE);
    ASSERT_EQ(leo_json_splice("{\"a\":", 5, NULL, 0, &out), LEO_EPARSE);
    leo_buf_release(&out);
}

TEST_MAIN(TEST_ENTRY(replaces_value_keeping_other_bytes), TEST_ENTRY(appends_missing_member),
          TEST_ENTRY(removes_members), TEST_ENTRY(escaped_strings_do_not_confuse_nesting),
          TEST_ENTRY(rejects_non_objects))
