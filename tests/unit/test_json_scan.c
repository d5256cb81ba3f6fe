#include <jansson.h>
#include <stdio.h>

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


/* ---- leo_json_find_member ---- */

static void find(const char *doc, const char *key, int want_rc, const char *want_value)
{
    struct leo_str v;
    int rc = leo_json_find_member(doc, strlen(doc), key, &v);
    ASSERT_EQ(rc, want_rc);
    if (want_value)
        ASSERT_MEM_EQ(v.p, v.len, want_value, strlen(want_value));
    else
        ASSERT_EQ(v.len, (size_t)0);
}

TEST(find_member_usage_at_the_end_of_an_answer)
{
    const char *answer =
        "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"gpt-4o-mini\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"say \\\"usage\\\": {}\\\\\","
        "\"usage\":\"not this one\",\"refusal\":null},\"finish_reason\":\"stop\"}],"
        "\"usage\" : {\"prompt_tokens\":25,\"completion_tokens\":12,\"total_tokens\":37,"
        "\"details\":{\"cached\":[1,2,{\"x\":\"}]\"}]}}\n}\n";
    find(answer, "usage", 0,
         "{\"prompt_tokens\":25,\"completion_tokens\":12,\"total_tokens\":37,\"details\":{\"cached\":[1,2,{\"x\":\"}]\"}]}}");
    find(answer, "model", 0, "\"gpt-4o-mini\"");
    find(answer, "created", 0, "1700000000");
    find(answer, "refusal", LEO_ENOTFOUND, NULL); /* nested members do not count */
    find(answer, "usag", LEO_ENOTFOUND, NULL);
}

TEST(find_member_value_kinds)
{
    const char *doc = "{ \"a\" : -0.5e+3 , \"b\":true,\"c\":null,\"d\":[],\"e\":{},\"f\":\"\\u00e9\\ud83d\\ude00\","
                      "\"g\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\",\"h\":[[[]],{}]}";
    find(doc, "a", 0, "-0.5e+3");
    find(doc, "b", 0, "true");
    find(doc, "c", 0, "null");
    find(doc, "d", 0, "[]");
    find(doc, "e", 0, "{}");
    find(doc, "f", 0, "\"\\u00e9\\ud83d\\ude00\"");
    find(doc, "g", 0, "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
    find(doc, "h", 0, "[[[]],{}]");
    find("{}", "a", LEO_ENOTFOUND, NULL);
    find(" \r\n\t{\"a\":1} \n", "a", 0, "1");
}

TEST(find_member_duplicate_keys_last_wins)
{
    find("{\"usage\":1,\"x\":2,\"usage\":{\"n\":3}}", "usage", 0, "{\"n\":3}");
}

TEST(find_member_keys_compared_decoded)
{
    /* keys are compared as jansson decodes them: "\u0061" is "a", and the last of the two spellings wins */
    find("{\"\\u0061\":1,\"a\":2}", "a", 0, "2");
    find("{\"a\":2,\"\\u0061\":1}", "a", 0, "1");
    find("{\"include\\u005fusage\":true}", "include_usage", 0, "true");
    find("{\"id\":1,\"us\\u0061ge\":{\"n\":1}}", "usage", 0, "{\"n\":1}");
    find("{\"a\\\"b\":1}", "a\"b", 0, "1");
    /* the same bytes as the name, but decoding to something else: no match */
    find("{\"a\\\"b\":1}", "a\\\"b", LEO_ENOTFOUND, NULL);
    find("{\"\\u0061\":1}", "\\u0061", LEO_ENOTFOUND, NULL);
}

static const char *const malformed[] = {
    "",                          /* nothing */
    "[1]",                       /* not an object */
    "\"a\"",                     /* not an object */
    "{",                         /* truncated */
    "{\"a\":",                   /* truncated */
    "{\"a\":1",                  /* truncated */
    "{\"a\":\"x}",               /* unterminated string */
    "{\"a\":1}x",                /* trailing garbage */
    "{\"a\":1}{}",               /* two documents */
    "{\"a\":1,}",                /* trailing comma */
    "{,\"a\":1}",                /* leading comma */
    "{\"a\" 1}",                 /* no colon */
    "{\"a\":1 \"b\":2}",         /* no comma */
    "{a:1}",                     /* unquoted key */
    "{1:1}",                     /* number key */
    "{\"a\":[1,]}",              /* trailing comma in an array */
    "{\"a\":[1}",                /* mismatched brackets */
    "{\"a\":{]}",                /* mismatched brackets */
    "{\"a\":tru}",               /* bad literal */
    "{\"a\":nul}",               /* bad literal */
    "{\"a\":True}",              /* bad literal */
    "{\"a\":01}",                /* leading zero */
    "{\"a\":1.}",                /* no fraction digits */
    "{\"a\":.5}",                /* no integer part */
    "{\"a\":-}",                 /* sign alone */
    "{\"a\":1e}",                /* no exponent digits */
    "{\"a\":+1}",                /* plus sign */
    "{\"a\":0x1}",               /* hex */
    "{\"a\":NaN}",               /* not JSON */
    "{\"a\":'x'}",               /* single quotes */
    "{\"a\":\"\\x\"}",           /* bad escape */
    "{\"a\":\"\\u12\"}",         /* short \u escape */
    "{\"a\":\"\\u12g4\"}",       /* bad hex */
    "{\"a\":\"\\u0000\"}",       /* NUL, refused by jansson */
    "{\"a\":\"\\ud83d\"}",       /* lone high surrogate */
    "{\"a\":\"\\ud83dx\"}",      /* high surrogate, no low one */
    "{\"a\":\"\\ude00\"}",       /* lone low surrogate */
    "{\"a\":\"\\ud83d\\u0041\"}", /* high surrogate then not a low one */
    "{\"a\":\"tab\there\"}",     /* raw control character */
    "{\"a\":\"\xc3\"}",          /* truncated UTF-8 */
    "{\"a\":\"\xc0\x80\"}",      /* overlong */
    "{\"a\":\"\xe0\x80\xaf\"}",  /* overlong */
    "{\"a\":\"\xed\xa0\x80\"}",  /* encoded surrogate */
    "{\"a\":\"\xf4\x90\x80\x80\"}", /* above U+10FFFF */
    "{\"a\":\"\xff\"}",          /* never valid */
    "{\"a\":\"\x80\"}",          /* continuation byte first */
    "{\"a\":1}\xc3\xa9",         /* garbage after the object */
};

TEST(find_member_rejects_what_jansson_rejects)
{
    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
        const char *doc = malformed[i];
        struct leo_str v;
        if (leo_json_find_member(doc, strlen(doc), "a", &v) != LEO_EPARSE) {
            fprintf(stderr, "accepted malformed input #%zu: %s\n", i, doc);
            ASSERT(0);
        }
        /* the cases are real rejections: jansson refuses each one too */
        json_t *j = json_loadb(doc, strlen(doc), 0, NULL);
        if (json_is_object(j)) {
            fprintf(stderr, "jansson accepts case #%zu: %s\n", i, doc);
            ASSERT(0);
        }
        json_decref(j);
    }
}

TEST(find_member_agrees_with_jansson_on_truncations)
{
    /* every prefix of a valid answer but the whole is malformed; the whole is accepted by both */
    const char *doc = "{\"id\":\"x\\\"y\",\"n\":[1,-2.5e3,true,false,null,{\"k\":\"\xc3\xa9\\u00e9\"}],"
                      "\"usage\":{\"prompt_tokens\":3}}";
    size_t len = strlen(doc);
    for (size_t n = 0; n <= len; n++) {
        struct leo_str v;
        int rc = leo_json_find_member(doc, n, "usage", &v);
        json_t *j = json_loadb(doc, n, 0, NULL);
        int jansson_ok = json_is_object(j);
        json_decref(j);
        if ((rc == 0) != jansson_ok) {
            fprintf(stderr, "prefix of %zu bytes: find_member %d, jansson %s\n", n, rc, jansson_ok ? "ok" : "error");
            ASSERT(0);
        }
    }
}

TEST(find_member_depth_limit)
{
    /* LEO_JSON_MAX_DEPTH levels in all (the top-level object is one) are accepted; one more is not */
    struct leo_buf b = LEO_BUF_INIT;
    for (int extra = 0; extra <= 1; extra++) {
        leo_buf_reset(&b);
        leo_buf_adds(&b, "{\"a\":");
        for (int i = 0; i < LEO_JSON_MAX_DEPTH - 1 + extra; i++)
            leo_buf_addch(&b, '[');
        for (int i = 0; i < LEO_JSON_MAX_DEPTH - 1 + extra; i++)
            leo_buf_addch(&b, ']');
        leo_buf_addch(&b, '}');
        struct leo_str v;
        ASSERT_EQ(leo_json_find_member(b.p, b.len, "a", &v), extra ? LEO_EPARSE : 0);
        if (!extra)
            ASSERT_EQ(v.len, (size_t)(2 * (LEO_JSON_MAX_DEPTH - 1)));
        json_t *j = json_loadb(b.p, b.len, 0, NULL);
        ASSERT_EQ(json_is_object(j) ? 0 : LEO_EPARSE, extra ? LEO_EPARSE : 0);
        json_decref(j);
    }
    leo_buf_release(&b);
}

struct members_seen {
    char log[256];
};

static void log_member(const struct leo_json_member *m, void *ud)
{
    struct members_seen *s = ud;
    size_t n = strlen(s->log);
    snprintf(s->log + n, sizeof(s->log) - n, "%.*s=%.*s;", (int)m->key.len, m->key.p,
             (int)(m->value_end - m->value_start), m->key.p - 1 - m->start + m->value_start);
}

TEST(scan_members_reports_every_top_level_member)
{
    struct members_seen s = {""};
    const char *doc = " {\"a\" : [1, {\"x\":2}], \"b\\u0041\":\"s\\\"\" ,\"a\":null}\n";
    ASSERT_EQ(leo_json_scan_members(doc, strlen(doc), log_member, &s), 0);
    /* raw keys, raw values, repeated keys each time, nested members not reported */
    ASSERT_STR_EQ(s.log, "a=[1, {\"x\":2}];b\\u0041=\"s\\\"\";a=null;");
    struct members_seen t = {""};
    ASSERT_EQ(leo_json_scan_members("{\"a\":1,}", 8, log_member, &t), LEO_EPARSE);
    ASSERT_EQ(leo_json_scan_members("[1]", 3, log_member, &t), LEO_EPARSE);
    ASSERT_EQ(leo_json_scan_members("{\"a\":1} x", 9, log_member, &t), LEO_EPARSE);
}

TEST(string_decode_and_integers)
{
    struct leo_buf b = LEO_BUF_INIT;
    ASSERT_EQ(leo_json_string_decode(LEO_STR_LIT("\"a\\u00e9\\n\\ud83d\\ude00\\/\xc3\xa9\""), &b), 0);
    ASSERT_STR_EQ(b.p, "a\xc3\xa9\n\xf0\x9f\x98\x80/\xc3\xa9");
    leo_buf_release(&b);
    ASSERT_EQ(leo_json_string_decode(LEO_STR_LIT("\"\\u0000\""), &b), LEO_EPARSE);
    ASSERT_EQ(leo_json_string_decode(LEO_STR_LIT("\"\\ud83d\""), &b), LEO_EPARSE);
    ASSERT_EQ(leo_json_string_decode(LEO_STR_LIT("\"\xc3\""), &b), LEO_EPARSE);
    ASSERT_EQ(leo_json_string_decode(LEO_STR_LIT("\"a\" "), &b), LEO_EPARSE);
    leo_buf_release(&b);
    ASSERT(leo_json_key_is(LEO_STR_LIT("model"), "model"));
    ASSERT(leo_json_key_is(LEO_STR_LIT("mod\\u0065l"), "model"));
    ASSERT(!leo_json_key_is(LEO_STR_LIT("mod\\u0065"), "model"));
    ASSERT(!leo_json_key_is(LEO_STR_LIT("models"), "model"));
    ASSERT(leo_json_is_integer(LEO_STR_LIT("-12")));
    ASSERT(leo_json_is_integer(LEO_STR_LIT("0")));
    ASSERT(!leo_json_is_integer(LEO_STR_LIT("1.0")));
    ASSERT(!leo_json_is_integer(LEO_STR_LIT("1e3")));
    ASSERT(!leo_json_is_integer(LEO_STR_LIT("\"1\"")));
    ASSERT(!leo_json_is_integer((struct leo_str){NULL, 0}));
}

TEST(numbers_read_as_jansson_reads_them)
{
    int64_t i = 0;
    double d = 1;
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("-12"), &i, &d), 1);
    ASSERT_EQ(i, -12);
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("12.0"), &i, &d), 0);
    ASSERT_DBL_EQ(d, 12.0);
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("1e-400"), &i, &d), 0); /* underflows to 0, as in jansson */
    ASSERT(d == 0);
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("-9223372036854775808"), &i, NULL), 1);
    ASSERT_EQ(i, INT64_MIN);
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("9223372036854775808"), &i, NULL), LEO_EPARSE);
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("-1E400"), NULL, &d), LEO_EPARSE);
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("\"1\""), &i, &d), LEO_EPARSE);
    ASSERT_EQ(leo_json_number(LEO_STR_LIT("null"), &i, &d), LEO_EPARSE);
    ASSERT_EQ(leo_json_number((struct leo_str){NULL, 0}, &i, &d), LEO_EPARSE);
    /* longer than the stack copy */
    const char *tiny = "0.00000000000000000000000000000000000000000000000000000000000000000000000000000000000001";
    ASSERT_EQ(leo_json_number(leo_str_c(tiny), NULL, &d), 0);
    ASSERT(d > 0 && d < 1e-80);
}

TEST(get_members_reads_as_json_object_get)
{
    static const char *const keys[] = {"a", "b", "c"};
    struct leo_str v[3];
    /* keys decoded, the last of a repeated key, nested members not counted */
    const char *doc = "{\"a\":1,\"\\u0062\":[2],\"a\":{\"c\":3},\"z\":-9223372036854775808,\"y\":1e-400}";
    ASSERT_EQ(leo_json_get_members(doc, strlen(doc), keys, 3, v), 0);
    ASSERT_MEM_EQ(v[0].p, v[0].len, "{\"c\":3}", 7);
    ASSERT_MEM_EQ(v[1].p, v[1].len, "[2]", 3);
    ASSERT_EQ(v[2].len, 0);
    /* what jansson refuses, for a number's size too, wherever it stands: nothing is read */
    static const char *const refused[] = {"{\"a\":1,\"z\":[9223372036854775808]}", "{\"a\":1,\"z\":{\"x\":-1e400}}",
                                          "{\"a\":1", "[1]"};
    for (size_t k = 0; k < sizeof(refused) / sizeof(refused[0]); k++) {
        ASSERT_EQ(leo_json_get_members(refused[k], strlen(refused[k]), keys, 3, v), LEO_EPARSE);
        ASSERT_EQ(v[0].len, 0);
        json_t *j = json_loads(refused[k], 0, NULL);
        ASSERT(!json_is_object(j));
        json_decref(j);
    }
    /* digits inside strings are not numbers */
    const char *s = "{\"a\":\"99999999999999999999\",\"99999999999999999999e999\":0}";
    ASSERT_EQ(leo_json_get_members(s, strlen(s), keys, 3, v), 0);
}

static int skip_b(const char *key, size_t len, void *ud)
{
    (void)ud;
    return len == 1 && key[0] == 'b';
}

TEST(canonical_text)
{
    struct leo_buf b = LEO_BUF_INIT;
    struct leo_json_canon_opts opts = {skip_b, NULL};
    const char *doc = "{ \"c\": {\"y\":1.50, \"x\":[1e2, -0.0, \"\\u0041\\t\"]}, \"b\":1, \"\\u0062\":2, \"a\":true, \"a\":0e1 }";
    ASSERT_EQ(leo_json_canonical(doc, strlen(doc), &opts, &b), 0);
    /* sorted, the last "a" kept, "b" skipped in both spellings at the top only, numbers and strings rewritten */
    ASSERT_STR_EQ(b.p, "{\"a\":0,\"c\":{\"x\":[100,0,\"A\\t\"],\"y\":1.5}}");
    leo_buf_release(&b);
    ASSERT_EQ(leo_json_canonical("{\"a\":99999999999999999999}", 26, NULL, &b), LEO_EPARSE);
    ASSERT_EQ(leo_json_canonical("{\"a\":1e999}", 11, NULL, &b), LEO_EPARSE);
    ASSERT_EQ(b.len, 0);
    leo_buf_release(&b);
}

TEST_MAIN(TEST_ENTRY(replaces_value_keeping_other_bytes), TEST_ENTRY(appends_missing_member),
          TEST_ENTRY(removes_members), TEST_ENTRY(escaped_strings_do_not_confuse_nesting),
          TEST_ENTRY(rejects_non_objects), TEST_ENTRY(find_member_usage_at_the_end_of_an_answer),
          TEST_ENTRY(find_member_value_kinds), TEST_ENTRY(find_member_duplicate_keys_last_wins),
          TEST_ENTRY(find_member_keys_compared_decoded), TEST_ENTRY(find_member_rejects_what_jansson_rejects),
          TEST_ENTRY(find_member_agrees_with_jansson_on_truncations), TEST_ENTRY(find_member_depth_limit),
          TEST_ENTRY(scan_members_reports_every_top_level_member), TEST_ENTRY(string_decode_and_integers),
          TEST_ENTRY(numbers_read_as_jansson_reads_them), TEST_ENTRY(get_members_reads_as_json_object_get),
          TEST_ENTRY(canonical_text))
