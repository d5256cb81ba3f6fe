/*
 * Golden tests for the Anthropic Messages adapter: canonical requests in, exact Messages bodies out; recorded
 * Messages responses and event streams in, exact canonical objects and chunks out (compact JSON, compared byte
 * for byte). Test data is written with single quotes for readability; q() turns them into double quotes (the
 * data never contains a literal apostrophe, and \' in the source becomes an escaped quote).
 */
#include <jansson.h>

#include "common/alloc.h"
#include "common/arena.h"
#include "common/buf.h"
#include "common/error.h"
#include "gateway/config.h"
#include "gateway/providers/anthropic.h"
#include "tests/unit/test.h"

static const struct leo_adapter *A = &leo_adapter_anthropic;
static const struct leo_adapter_ctx CTX = {
    .model = "claude-sonnet-4-5",
    .default_max_tokens = 4096,
    .response_id = "chatcmpl-test1",
    .created = 1700000000,
};

static char *q(const char *s)
{
    char *r = leo_strdup(s);
    for (char *p = r; *p; p++)
        if (*p == '\'')
            *p = '"';
    return r;
}

static json_t *load(const char *single_quoted)
{
    char *s = q(single_quoted);
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (j == NULL)
        TEST_FAIL_("test JSON does not parse: %s: %s", e.text, s);
    leo_free(s);
    return j;
}

static void check_build_ctx(const struct leo_adapter_ctx *ctx, const char *in, const char *expected)
{
    json_t *canon = load(in);
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    int rc = A->build_chat(canon, ctx, &body, &err);
    if (rc != 0)
        TEST_FAIL_("build_chat failed: %s", err.p);
    char *want = q(expected);
    ASSERT_STR_EQ(body.p, want);
    leo_free(want);
    json_decref(canon);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

static void check_build(const char *in, const char *expected)
{
    check_build_ctx(&CTX, in, expected);
}

static void check_build_fails(const char *in, const char *message)
{
    json_t *canon = load(in);
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    ASSERT_EQ(A->build_chat(canon, &CTX, &body, &err), LEO_EINVAL);
    char *want = q(message);
    ASSERT_STR_EQ(err.p, want);
    ASSERT_EQ(body.len, 0);
    leo_free(want);
    json_decref(canon);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    ASSERT(s != NULL);
    return s;
}

static void check_parse(const char *in, const char *expected, struct leo_usage *u)
{
    char *body = q(in);
    struct leo_buf err = LEO_BUF_INIT;
    json_t *res = A->parse_chat(body, strlen(body), &CTX, u, &err);
    if (res == NULL)
        TEST_FAIL_("parse_chat failed: %s", err.p);
    char *got = dump(res), *want = q(expected);
    ASSERT_STR_EQ(got, want);
    free(got);
    leo_free(want);
    leo_free(body);
    json_decref(res);
    leo_buf_release(&err);
}

/* ---- endpoint and headers ---- */

TEST(chat_url_appends_messages)
{
    struct leo_provider p = {.name = "claude", .type = "anthropic", .base_url = "https://api.anthropic.com/v1"};
    struct leo_buf url = LEO_BUF_INIT;
    ASSERT_EQ(A->chat_url(&p, "claude-sonnet-4-5", false, &url), 0);
    ASSERT_STR_EQ(url.p, "https://api.anthropic.com/v1/messages");
    leo_buf_reset(&url);
    ASSERT_EQ(A->chat_url(&p, "claude-sonnet-4-5", true, &url), 0);
    ASSERT_STR_EQ(url.p, "https://api.anthropic.com/v1/messages");
    ASSERT_STR_EQ(A->type, "anthropic");
    ASSERT_EQ(A->dialect, LEO_DIALECT_ANTHROPIC);
    leo_buf_release(&url);
}

TEST(auth_headers_key_and_version)
{
    struct leo_provider p = {.name = "claude", .type = "anthropic", .base_url = "https://api.anthropic.com/v1"};
    struct leo_arena a = LEO_ARENA_INIT;
    struct leo_http_header h[4];
    size_t n = 1;
    h[0] = (struct leo_http_header){LEO_STR_LIT("content-type"), LEO_STR_LIT("application/json")};
    char key[] = "sk-ant-secret";
    A->auth_headers(&p, leo_str_c(key), h, &n, 4, &a);
    ASSERT_EQ(n, 3);
    key[0] = 'X'; /* the header value is a copy in the arena */
    ASSERT(leo_str_eqc(h[1].name, "x-api-key"));
    ASSERT(leo_str_eqc(h[1].value, "sk-ant-secret"));
    ASSERT(leo_str_eqc(h[2].name, "anthropic-version"));
    ASSERT(leo_str_eqc(h[2].value, "2023-06-01"));

    /* No key (a local proxy): only the version; a configured api_version wins. */
    p.api_version = "2099-01-01";
    n = 0;
    A->auth_headers(&p, leo_str_n(NULL, 0), h, &n, 4, &a);
    ASSERT_EQ(n, 1);
    ASSERT(leo_str_eqc(h[0].name, "anthropic-version"));
    ASSERT(leo_str_eqc(h[0].value, "2099-01-01"));

    /* Never writes past max. */
    n = 3;
    A->auth_headers(&p, LEO_STR_LIT("k"), h, &n, 4, &a);
    ASSERT_EQ(n, 4);
    ASSERT(leo_str_eqc(h[3].name, "x-api-key"));
    A->auth_headers(&p, LEO_STR_LIT("k"), h, &n, 4, &a);
    ASSERT_EQ(n, 4);
    leo_arena_destroy(&a);
}

TEST(error_message_formats_type_and_message)
{
    char out[128];
    const char *body = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}";
    A->error_message(body, strlen(body), out, sizeof(out));
    ASSERT_STR_EQ(out, "overloaded_error: Overloaded");
    const char *only = "{\"error\":{\"message\":\"x-api-key header is required\"}}";
    A->error_message(only, strlen(only), out, sizeof(out));
    ASSERT_STR_EQ(out, "x-api-key header is required");
    A->error_message("<html>bad gateway</html>", 24, out, sizeof(out));
    ASSERT_STR_EQ(out, "");
    char small[9];
    A->error_message(body, strlen(body), small, sizeof(small));
    ASSERT_STR_EQ(small, "overload");
}

/* ---- requests ---- */

TEST(build_text_with_system_and_scalar_options)
{
    check_build("{'model':'claude','messages':[{'role':'system','content':'You are terse.'},"
                "{'role':'user','content':'Hi','name':'bob'}],"
                "'temperature':0.7,'top_p':0.9,'stop':'END','user':'u-42','stream':true,"
                "'stream_options':{'include_usage':true},'seed':7,'frequency_penalty':0.5,'presence_penalty':0.1,"
                "'logit_bias':{'50256':-100},'service_tier':'auto','store':false,'metadata':{'k':'v'},'n':1,"
                "'logprobs':false,'response_format':{'type':'text'}}",
                "{'model':'claude-sonnet-4-5','max_tokens':4096,'system':'You are terse.',"
                "'messages':[{'role':'user','content':'Hi'}],'metadata':{'user_id':'u-42'},"
                "'stop_sequences':['END'],'stream':true,'temperature':0.7,'top_p':0.9}");
}

TEST(build_system_blocks_from_several_messages)
{
    /* Two system-side messages (one with parts) anywhere in the conversation become text blocks. */
    check_build(
        "{'messages':[{'role':'developer','content':'Rule one.'},{'role':'user','content':'Q1'},"
        "{'role':'system','content':[{'type':'text','text':'Rule two.','cache_control':{'type':'ephemeral'}}]}],"
        "'max_tokens':100,'stop':['a','b']}",
        "{'model':'claude-sonnet-4-5','max_tokens':100,'system':[{'type':'text','text':'Rule one.'},"
        "{'type':'text','text':'Rule two.','cache_control':{'type':'ephemeral'}}],"
        "'messages':[{'role':'user','content':'Q1'}],'stop_sequences':['a','b']}");
    check_build(
        "{'messages':[{'role':'system','content':[{'type':'text','text':'Only one, as parts.'}]},"
        "{'role':'user','content':'Q'}]}",
        "{'model':'claude-sonnet-4-5','max_tokens':4096,'system':[{'type':'text','text':'Only one, as parts.'}],"
        "'messages':[{'role':'user','content':'Q'}]}");
}

TEST(build_images_and_documents)
{
    check_build(
        "{'messages':[{'role':'user','content':[{'type':'text','text':'What is in these?'},"
        "{'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0KGgo=','detail':'high'}},"
        "{'type':'image_url','image_url':{'url':'https://example.com/cat.jpg'},'cache_control':{'type':'ephemeral'}},"
        "{'type':'file','file':{'filename':'a.pdf','file_data':'data:application/pdf;base64,JVBERi0='}}]}]}",
        "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':[{'role':'user','content':["
        "{'type':'text','text':'What is in these?'},"
        "{'type':'image','source':{'type':'base64','media_type':'image/png','data':'iVBORw0KGgo='}},"
        "{'type':'image','source':{'type':'url','url':'https://example.com/"
        "cat.jpg'},'cache_control':{'type':'ephemeral'}},"
        "{'type':'document','source':{'type':'base64','media_type':'application/pdf','data':'JVBERi0='}}]}]}");
}

TEST(build_tools_and_tool_choice)
{
    const char *tools =
        "'tools':[{'type':'function','function':{'name':'get_weather','description':'Weather for a city',"
        "'parameters':{'type':'object','properties':{'city':{'type':'string'}},'required':['city']},"
        "'strict':true}},{'type':'function','function':{'name':'now'}}]";
    const char *tools_out = "'tools':[{'name':'get_weather','description':'Weather for a city','input_schema':{'type':"
                            "'object','properties':{'city':{'type':'string'}},'required':['city']}},"
                            "{'name':'now','input_schema':{'type':'object','properties':{}}}]";
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", ""},
        {",'tool_choice':'auto'", ",'tool_choice':{'type':'auto'}"},
        {",'tool_choice':'required'", ",'tool_choice':{'type':'any'}"},
        {",'tool_choice':'none'", ",'tool_choice':{'type':'none'}"},
        {",'tool_choice':{'type':'function','function':{'name':'now'}}", ",'tool_choice':{'type':'tool','name':'now'}"},
        {",'parallel_tool_calls':false", ",'tool_choice':{'type':'auto','disable_parallel_tool_use':true}"},
        {",'parallel_tool_calls':true", ""},
        {",'tool_choice':'required','parallel_tool_calls':false",
         ",'tool_choice':{'type':'any','disable_parallel_tool_use':true}"},
        {",'tool_choice':'none','parallel_tool_calls':false", ",'tool_choice':{'type':'none'}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char in[2048], out[2048];
        snprintf(in, sizeof(in), "{'messages':[{'role':'user','content':'Weather in Paris?'}],%s%s}", tools,
                 cases[i].in);
        snprintf(out, sizeof(out),
                 "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':[{'role':'user','content':'Weather in "
                 "Paris?'}],%s%s}",
                 tools_out, cases[i].out);
        check_build(in, out);
    }
    /* tool_choice without tools means nothing and is not sent. */
    check_build("{'messages':[{'role':'user','content':'x'}],'tool_choice':'none','tools':[]}",
                "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':[{'role':'user','content':'x'}]}");
}

TEST(build_multi_turn_with_parallel_tool_results)
{
    check_build(
        "{'messages':[{'role':'user','content':'Weather in Paris and Rome?'},"
        "{'role':'assistant','content':'Checking both.','reasoning_content':'Two cities: two calls.',"
        "'reasoning_signature':'EqQBCgIYAhIM','tool_calls':["
        "{'id':'toolu_01','type':'function','function':{'name':'get_weather','arguments':'{\\'city\\': \\'Paris\\'}'}},"
        "{'id':'toolu_02','type':'function','function':{'name':'get_weather','arguments':'{\\'city\\':\\'Rome\\',\\'"
        "d\\':1.5}'}}]},"
        "{'role':'tool','tool_call_id':'toolu_01','content':'18C, sunny'},"
        "{'role':'tool','tool_call_id':'toolu_02','content':[{'type':'text','text':'22C'},{'type':'text','text':'clear'"
        "}]},"
        "{'role':'user','content':'And tomorrow?'},"
        "{'role':'assistant','content':null,'tool_calls':[{'id':'toolu_03','type':'function',"
        "'function':{'name':'now','arguments':''}}]},"
        "{'role':'tool','tool_call_id':'toolu_03','content':'2025-06-01'}]}",
        "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':["
        "{'role':'user','content':'Weather in Paris and Rome?'},"
        "{'role':'assistant','content':[{'type':'thinking','thinking':'Two cities: two "
        "calls.','signature':'EqQBCgIYAhIM'},"
        "{'type':'text','text':'Checking both.'},"
        "{'type':'tool_use','id':'toolu_01','name':'get_weather','input':{'city':'Paris'}},"
        "{'type':'tool_use','id':'toolu_02','name':'get_weather','input':{'city':'Rome','d':1.5}}]},"
        "{'role':'user','content':[{'type':'tool_result','tool_use_id':'toolu_01','content':'18C, sunny'},"
        "{'type':'tool_result','tool_use_id':'toolu_02','content':[{'type':'text','text':'22C'},{'type':'text','text':'"
        "clear'}]},"
        "{'type':'text','text':'And tomorrow?'}]},"
        "{'role':'assistant','content':[{'type':'tool_use','id':'toolu_03','name':'now','input':{}}]},"
        "{'role':'user','content':[{'type':'tool_result','tool_use_id':'toolu_03','content':'2025-06-01'}]}]}");
}

TEST(build_merges_same_role_and_keeps_plain_assistant_text)
{
    /* Reasoning without a signature (another provider's history) cannot be replayed and is dropped. */
    check_build("{'messages':[{'role':'user','content':'one'},{'role':'user','content':[{'type':'text','text':'two'}]},"
                "{'role':'assistant','content':'three','reasoning_content':'unsigned'},"
                "{'role':'assistant','content':[{'type':'refusal','refusal':'no'}]},{'role':'user','content':''},"
                "{'role':'user','content':'four'}]}",
                "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':["
                "{'role':'user','content':[{'type':'text','text':'one'},{'type':'text','text':'two'}]},"
                "{'role':'assistant','content':[{'type':'text','text':'three'},{'type':'text','text':'no'}]},"
                "{'role':'user','content':[{'type':'text','text':'four'}]}]}");
    /* A final assistant message (a prefill) stays a string. */
    check_build("{'messages':[{'role':'user','content':'Say hi'},{'role':'assistant','content':'Hi'}]}",
                "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':[{'role':'user','content':'Say hi'},"
                "{'role':'assistant','content':'Hi'}]}");
}

TEST(build_max_tokens_and_reasoning_effort)
{
    check_build("{'messages':[{'role':'user','content':'x'}],'max_tokens':50,'max_completion_tokens':60,'top_k':5}",
                "{'model':'claude-sonnet-4-5','max_tokens':60,'messages':[{'role':'user','content':'x'}],'top_k':5}");
    /* A budget above the client's limit raises max_tokens to budget + default. */
    check_build("{'messages':[{'role':'user','content':'x'}],'max_tokens':1000,'reasoning_effort':'high'}",
                "{'model':'claude-sonnet-4-5','max_tokens':20480,'messages':[{'role':'user','content':'x'}],"
                "'thinking':{'type':'enabled','budget_tokens':16384}}");
    check_build(
        "{'messages':[{'role':'user','content':'x'}],'max_completion_tokens':10000,'reasoning_effort':'medium'}",
        "{'model':'claude-sonnet-4-5','max_tokens':10000,'messages':[{'role':'user','content':'x'}],"
        "'thinking':{'type':'enabled','budget_tokens':4096}}");
    check_build("{'messages':[{'role':'user','content':'x'}],'reasoning_effort':'low'}",
                "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':[{'role':'user','content':'x'}],"
                "'thinking':{'type':'enabled','budget_tokens':1024}}");
    check_build("{'messages':[{'role':'user','content':'x'}],'reasoning_effort':'none'}",
                "{'model':'claude-sonnet-4-5','max_tokens':4096,'messages':[{'role':'user','content':'x'}]}");
    struct leo_adapter_ctx ctx = CTX;
    ctx.default_max_tokens = 0; /* unset: the adapter's own default */
    check_build_ctx(&ctx, "{'messages':[{'role':'user','content':'x'}],'reasoning_effort':'high'}",
                    "{'model':'claude-sonnet-4-5','max_tokens':20480,'messages':[{'role':'user','content':'x'}],"
                    "'thinking':{'type':'enabled','budget_tokens':16384}}");
}

TEST(build_rejects_what_anthropic_cannot_express)
{
    const char *msgs = "'messages':[{'role':'user','content':'x'}]";
    static const struct {
        const char *extra, *message;
    } cases[] = {
        {"'response_format':{'type':'json_schema','json_schema':{'name':'x','schema':{}}}",
         "response_format: 'json_schema' is not supported by anthropic"},
        {"'response_format':{'type':'json_object'}", "response_format: 'json_object' is not supported by anthropic"},
        {"'n':2", "n: only 1 choice is supported by anthropic"},
        {"'logprobs':true", "logprobs: not supported by anthropic"},
        {"'modalities':['text','audio']", "modalities[1]: only 'text' is supported by anthropic"},
        {"'audio':{'voice':'alloy','format':'mp3'}", "audio: not supported by anthropic"},
        {"'functions':[{'name':'f'}]", "functions: not supported by anthropic"},
        {"'reasoning_effort':'max'", "reasoning_effort: expected 'none', 'minimal', 'low', 'medium' or 'high'"},
        {"'max_tokens':0", "max_tokens: expected a positive integer"},
        {"'max_completion_tokens':'9'", "max_completion_tokens: expected a positive integer"},
        {"'temperature':'hot'", "temperature: expected a number"},
        {"'temperature':1.5", "temperature: 1.5 is outside the range anthropic accepts (0 to 1)"},
        {"'stop':['a',3]", "stop[1]: expected a string"},
        {"'tools':[{'type':'custom','custom':{'name':'x'}}]", "tools[0].type: 'custom' is not supported by anthropic"},
        {"'tools':[{'type':'function','function':{'name':'f','parameters':[]}}]",
         "tools[0].function.parameters: expected an object"},
        {"'tools':[{'type':'function','function':{'name':'f'}}],'tool_choice':'sometimes'",
         "tool_choice: 'sometimes' is not supported by anthropic"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char in[1024];
        snprintf(in, sizeof(in), "{%s,%s}", msgs, cases[i].extra);
        check_build_fails(in, cases[i].message);
    }
}

TEST(build_rejects_bad_messages_naming_the_path)
{
    check_build_fails("{'messages':[{'role':'user','content':'x'},{'role':'function','name':'f','content':'y'}]}",
                      "messages[1].role: 'function' is not supported by anthropic");
    check_build_fails("{'messages':[{'role':'user','content':[{'type':'text','text':'x'},"
                      "{'type':'input_audio','input_audio':{'data':'AA==','format':'wav'}}]}]}",
                      "messages[0].content[1].type: 'input_audio' is not supported by anthropic");
    check_build_fails("{'messages':[{'role':'user','content':'x'},{'role':'assistant','content':null,'tool_calls':"
                      "[{'id':'t1','type':'function','function':{'name':'f','arguments':'{}'}},"
                      "{'id':'t2','type':'function','function':{'name':'f','arguments':'{\\'a\\':'}}]}]}",
                      "messages[1].tool_calls[1].function.arguments: not a JSON object");
    check_build_fails(
        "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':'ftp://x/y.png'}}]}]}",
        "messages[0].content[0].image_url.url: only http(s) URLs and base64 data URIs are supported by "
        "anthropic");
    check_build_fails(
        "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':'data:image/png,abc'}}]}]}",
        "messages[0].content[0].image_url.url: only http(s) URLs and base64 data URIs are supported by "
        "anthropic");
    check_build_fails("{'messages':[{'role':'user','content':[{'type':'file','file':{'file_id':'file-abc'}}]}]}",
                      "messages[0].content[0].file: only inline file_data as a base64 data URI is supported by "
                      "anthropic");
    check_build_fails("{'messages':[{'role':'tool','content':'x'}]}", "messages[0].tool_call_id: expected a string");
    check_build_fails("{'messages':[{'role':'tool','tool_call_id':'t','content':[{'type':'image_url'}]}]}",
                      "messages[0].content[0].type: 'image_url' is not supported by anthropic");
    check_build_fails("{'messages':[{'role':'system','content':[{'type':'image_url'}]}]}",
                      "messages[0].content[0].type: 'image_url' is not supported by anthropic");
    check_build_fails("{'messages':[{'role':'assistant','content':null}]}",
                      "messages[0]: an assistant message needs content or tool_calls");
    check_build_fails("{'messages':[{'content':'x'}]}", "messages[0]: expected an object with a string 'role'");
    check_build_fails("{'messages':'hello'}", "messages: expected an array");
    check_build_fails("{'messages':[{'role':'user','content':5}]}",
                      "messages[0].content: expected a string or an array");
}

TEST(build_reports_a_full_body_buffer)
{
    json_t *canon = load("{'messages':[{'role':'user','content':'a long enough question'}]}");
    struct leo_buf body, err = LEO_BUF_INIT;
    leo_buf_init(&body, 16, 0);
    ASSERT_EQ(A->build_chat(canon, &CTX, &body, &err), LEO_ETOOBIG);
    ASSERT_EQ(body.len, 0);
    json_decref(canon);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

/* ---- responses ---- */

TEST(parse_text_with_cached_usage)
{
    struct leo_usage u = {0};
    check_parse("{'id':'msg_01XFDUDYJgAACzvnptvVoYEL','type':'message','role':'assistant',"
                "'content':[{'type':'text','text':'Hello'},{'type':'text','text':', world'}],"
                "'model':'claude-sonnet-4-5-20250929','stop_reason':'end_turn','stop_sequence':null,"
                "'usage':{'input_tokens':12,'cache_creation_input_tokens':100,'cache_read_input_tokens':2000,"
                "'output_tokens':6,'service_tier':'standard'}}",
                "{'id':'chatcmpl-test1','object':'chat.completion','created':1700000000,'model':'claude-sonnet-4-5',"
                "'choices':[{'index':0,'message':{'role':'assistant','content':'Hello, world'},'logprobs':null,"
                "'finish_reason':'stop'}],'usage':{'prompt_tokens':2112,'completion_tokens':6,'total_tokens':2118,"
                "'prompt_tokens_details':{'cached_tokens':2000},'cache_creation_input_tokens':100}}",
                &u);
    ASSERT(u.have);
    ASSERT_EQ(u.input_tokens, 2112);
    ASSERT_EQ(u.output_tokens, 6);
    ASSERT_EQ(u.cache_read_tokens, 2000);
    ASSERT_EQ(u.cache_write_tokens, 100);
}

TEST(parse_parallel_tool_calls)
{
    struct leo_usage u = {0};
    check_parse("{'id':'msg_02','type':'message','role':'assistant','model':'claude-sonnet-4-5',"
                "'content':[{'type':'text','text':'Checking both.'},"
                "{'type':'tool_use','id':'toolu_01','name':'get_weather','input':{'city':'Paris','days':2}},"
                "{'type':'tool_use','id':'toolu_02','name':'get_weather','input':{'city':'Rome','lat':41.9}}],"
                "'stop_reason':'tool_use','stop_sequence':null,'usage':{'input_tokens':300,'output_tokens':80}}",
                "{'id':'chatcmpl-test1','object':'chat.completion','created':1700000000,'model':'claude-sonnet-4-5',"
                "'choices':[{'index':0,'message':{'role':'assistant','content':'Checking both.','tool_calls':["
                "{'id':'toolu_01','type':'function','function':{'name':'get_weather','arguments':'{\\'city\\':\\'"
                "Paris\\',\\'days\\':2}'}},"
                "{'id':'toolu_02','type':'function','function':{'name':'get_weather','arguments':'{\\'city\\':\\'"
                "Rome\\',\\'lat\\':41.9}'}}]},"
                "'logprobs':null,'finish_reason':'tool_calls'}],"
                "'usage':{'prompt_tokens':300,'completion_tokens':80,'total_tokens':380}}",
                &u);
    ASSERT_EQ(u.input_tokens, 300);
    ASSERT_EQ(u.cache_read_tokens, 0);
}

TEST(parse_thinking_and_tool_only)
{
    struct leo_usage u = {0};
    check_parse("{'id':'msg_03','type':'message','role':'assistant','model':'claude-sonnet-4-5',"
                "'content':[{'type':'thinking','thinking':'Need the time.','signature':'EqQBCgIYAhIM'},"
                "{'type':'redacted_thinking','data':'EmwKAhgBEgy3va3pzix'},"
                "{'type':'tool_use','id':'toolu_09','name':'now','input':{}}],"
                "'stop_reason':'tool_use','usage':{'input_tokens':10,'output_tokens':20}}",
                "{'id':'chatcmpl-test1','object':'chat.completion','created':1700000000,'model':'claude-sonnet-4-5',"
                "'choices':[{'index':0,'message':{'role':'assistant','content':null,"
                "'reasoning_content':'Need the time.','reasoning_signature':'EqQBCgIYAhIM','tool_calls':["
                "{'id':'toolu_09','type':'function','function':{'name':'now','arguments':'{}'}}]},"
                "'logprobs':null,'finish_reason':'tool_calls'}],"
                "'usage':{'prompt_tokens':10,'completion_tokens':20,'total_tokens':30}}",
                &u);
}

TEST(parse_finish_reasons)
{
    static const struct {
        const char *stop_reason, *finish;
    } cases[] = {
        {"'end_turn'", "stop"},
        {"'stop_sequence'", "stop"},
        {"'pause_turn'", "stop"},
        {"'max_tokens'", "length"},
        {"'tool_use'", "tool_calls"},
        {"'refusal'", "content_filter"},
        {"'model_context_window_exceeded'", "length"},
        {"null", "stop"},
        {"'something_new'", "stop"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char in[512], out[512];
        snprintf(in, sizeof(in), "{'type':'message','content':[],'stop_reason':%s}", cases[i].stop_reason);
        snprintf(out, sizeof(out),
                 "{'id':'chatcmpl-test1','object':'chat.completion','created':1700000000,'model':'claude-sonnet-4-5',"
                 "'choices':[{'index':0,'message':{'role':'assistant','content':null},'logprobs':null,"
                 "'finish_reason':'%s'}]}",
                 cases[i].finish);
        struct leo_usage u = {0};
        check_parse(in, out, &u);
        ASSERT(!u.have);
    }
}

TEST(parse_errors_are_upstream_errors)
{
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    const char *body = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}";
    ASSERT(A->parse_chat(body, strlen(body), &CTX, &u, &err) == NULL);
    ASSERT_STR_EQ(err.p, "anthropic error: overloaded_error: Overloaded");
    leo_buf_reset(&err);
    ASSERT(A->parse_chat("not json", 8, &CTX, &u, &err) == NULL);
    ASSERT_STR_EQ(err.p, "anthropic response is not a JSON object");
    leo_buf_reset(&err);
    body = "{\"type\":\"message\",\"content\":\"hi\"}";
    ASSERT(A->parse_chat(body, strlen(body), &CTX, &u, &err) == NULL);
    ASSERT_STR_EQ(err.p, "anthropic response has no content array");
    leo_buf_reset(&err);
    body = "{\"type\":\"message\",\"content\":[{\"type\":\"tool_use\",\"name\":\"f\",\"input\":{}}]}";
    ASSERT(A->parse_chat(body, strlen(body), &CTX, &u, &err) == NULL);
    ASSERT_STR_EQ(err.p, "anthropic response content[0]: tool_use without id or name");
    ASSERT(!u.have);
    leo_buf_release(&err);
}

/* ---- streams ---- */

#define HEAD "{'id':'chatcmpl-test1','object':'chat.completion.chunk','created':1700000000,'model':'claude-sonnet-4-5',"
#define CHUNK(delta) HEAD "'choices':[{'index':0,'delta':" delta ",'finish_reason':null}]}"
#define FINAL(reason) HEAD "'choices':[{'index':0,'delta':{},'finish_reason':'" reason "'}]}"
#define USAGE(u) HEAD "'choices':[],'usage':" u "}"
#define TOOL(tc) CHUNK("{'tool_calls':[" tc "]}")

struct step {
    const char *event;
    const char *data; /* single-quoted JSON (or raw bytes) */
    int rc;
    const char *chunks; /* the chunks this one event must produce, newline-separated, single-quoted */
};

/* Feeds the steps one event at a time and checks each event's own output, so a chunk held back until a later
 * event (a buffered tool call) fails the test at the event that should have produced it. */
static void run_stream(struct leo_stream_xlate *st, const struct step *steps, size_t n, struct leo_usage *u)
{
    for (size_t i = 0; i < n; i++) {
        json_t *out = json_array();
        struct leo_buf err = LEO_BUF_INIT, got = LEO_BUF_INIT;
        char *data = q(steps[i].data);
        int rc = A->stream_event(st, leo_str_c(steps[i].event), leo_str_c(data), out, u, &err);
        if (rc != steps[i].rc)
            TEST_FAIL_("step %zu (%s): rc %d, want %d (%s)", i, steps[i].event, rc, steps[i].rc, err.p);
        size_t k;
        json_t *c;
        json_array_foreach(out, k, c)
        {
            char *s = dump(c);
            if (k)
                leo_buf_addch(&got, '\n');
            leo_buf_adds(&got, s);
            free(s);
        }
        char *want = q(steps[i].chunks);
        if (strcmp(got.p, want) != 0)
            TEST_FAIL_("step %zu (%s):\n got: %s\nwant: %s", i, steps[i].event, got.p, want);
        leo_free(want);
        leo_free(data);
        json_decref(out);
        leo_buf_release(&err);
        leo_buf_release(&got);
    }
}

#define NSTEPS(a) (sizeof(a) / sizeof((a)[0]))

TEST(stream_text)
{
    static const struct step steps[] = {
        {"message_start",
         "{'type':'message_start','message':{'id':'msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY','type':'message',"
         "'role':'assistant','content':[],'model':'claude-sonnet-4-5-20250929','stop_reason':null,'stop_sequence':null,"
         "'usage':{'input_tokens':25,'cache_creation_input_tokens':0,'cache_read_input_tokens':10,'output_tokens':1}}}",
         0, CHUNK("{'role':'assistant','content':''}")},
        {"content_block_start", "{'type':'content_block_start','index':0,'content_block':{'type':'text','text':''}}", 0,
         ""},
        {"ping", "{'type': 'ping'}", 0, ""},
        {"content_block_delta", "{'type':'content_block_delta','index':0,'delta':{'type':'text_delta','text':'Hello'}}",
         0, CHUNK("{'content':'Hello'}")},
        {"content_block_delta",
         "{'type':'content_block_delta','index':0,'delta':{'type':'text_delta','text':', \\'world\\'!'}}", 0,
         CHUNK("{'content':', \\'world\\'!'}")},
        {"content_block_stop", "{'type':'content_block_stop','index':0}", 0, ""},
        {"message_delta",
         "{'type':'message_delta','delta':{'stop_reason':'end_turn','stop_sequence':null},'usage':{'output_tokens':15}"
         "}",
         0, ""},
        {"message_stop", "{'type':'message_stop'}", 1,
         FINAL("stop") "\n" USAGE("{'prompt_tokens':35,'completion_tokens':15,'total_tokens':50,"
                                  "'prompt_tokens_details':{'cached_tokens':10}}")},
    };
    struct leo_stream_xlate *st = A->stream_new(&CTX);
    struct leo_usage u = {0};
    run_stream(st, steps, 1, &u);
    ASSERT(u.have); /* usage is known from message_start on */
    ASSERT_EQ(u.input_tokens, 35);
    ASSERT_EQ(u.output_tokens, 1);
    run_stream(st, steps + 1, NSTEPS(steps) - 1, &u);
    ASSERT_EQ(u.input_tokens, 35);
    ASSERT_EQ(u.output_tokens, 15);
    ASSERT_EQ(u.cache_read_tokens, 10);
    json_t *out = json_array();
    struct leo_buf err = LEO_BUF_INIT;
    ASSERT_EQ(A->stream_end(st, out, &u, &err), 0);
    ASSERT_EQ(json_array_size(out), 0);
    json_decref(out);
    leo_buf_release(&err);
    A->stream_free(st);
}

static const struct step tool_steps[] = {
    {"message_start",
     "{'type':'message_start','message':{'id':'msg_014p7gG3wDgGV9EUtLvnow3U','type':'message','role':'assistant',"
     "'model':'claude-sonnet-4-5','stop_sequence':null,'usage':{'input_tokens':472,'output_tokens':2},"
     "'content':[],'stop_reason':null}}",
     0, CHUNK("{'role':'assistant','content':''}")},
    {"content_block_start", "{'type':'content_block_start','index':0,'content_block':{'type':'text','text':''}}", 0,
     ""},
    {"content_block_delta",
     "{'type':'content_block_delta','index':0,'delta':{'type':'text_delta','text':'Checking both.'}}", 0,
     CHUNK("{'content':'Checking both.'}")},
    {"content_block_stop", "{'type':'content_block_stop','index':0}", 0, ""},
    {"content_block_start",
     "{'type':'content_block_start','index':1,'content_block':{'type':'tool_use','id':'toolu_01T1x1fJ34qAmk2tNTrN7Up6',"
     "'name':'get_weather','input':{}}}",
     0,
     TOOL("{'index':0,'id':'toolu_01T1x1fJ34qAmk2tNTrN7Up6','type':'function','function':{'name':'get_weather',"
          "'arguments':''}}")},
    {"content_block_delta",
     "{'type':'content_block_delta','index':1,'delta':{'type':'input_json_delta','partial_json':''}}", 0, ""},
    {"content_block_delta",
     "{'type':'content_block_delta','index':1,'delta':{'type':'input_json_delta','partial_json':'{\\'city\\': \\'Pa'}}",
     0, TOOL("{'index':0,'function':{'arguments':'{\\'city\\': \\'Pa'}}")},
    {"content_block_delta",
     "{'type':'content_block_delta','index':1,'delta':{'type':'input_json_delta','partial_json':'ris\\'}'}}", 0,
     TOOL("{'index':0,'function':{'arguments':'ris\\'}'}}")},
    {"content_block_stop", "{'type':'content_block_stop','index':1}", 0, ""},
    {"content_block_start",
     "{'type':'content_block_start','index':2,'content_block':{'type':'tool_use','id':'toolu_02',"
     "'name':'get_weather','input':{}}}",
     0, TOOL("{'index':1,'id':'toolu_02','type':'function','function':{'name':'get_weather','arguments':''}}")},
    {"content_block_delta",
     "{'type':'content_block_delta','index':2,'delta':{'type':'input_json_delta','partial_json':'{\\'city\\':'}}", 0,
     TOOL("{'index':1,'function':{'arguments':'{\\'city\\':'}}")},
    /* the cut test stops here, right after a tool-call argument delta */
    {"content_block_delta",
     "{'type':'content_block_delta','index':2,'delta':{'type':'input_json_delta','partial_json':' \\'Rome\\'}'}}", 0,
     TOOL("{'index':1,'function':{'arguments':' \\'Rome\\'}'}}")},
    {"content_block_stop", "{'type':'content_block_stop','index':2}", 0, ""},
    {"message_delta",
     "{'type':'message_delta','delta':{'stop_reason':'tool_use','stop_sequence':null},'usage':{'output_tokens':89}}", 0,
     ""},
    {"message_stop", "{'type':'message_stop'}", 1,
     FINAL("tool_calls") "\n" USAGE("{'prompt_tokens':472,'completion_tokens':89,'total_tokens':561}")},
};

TEST(stream_parallel_tool_calls_incrementally)
{
    struct leo_stream_xlate *st = A->stream_new(&CTX);
    struct leo_usage u = {0};
    run_stream(st, tool_steps, NSTEPS(tool_steps), &u);
    ASSERT_EQ(u.output_tokens, 89);
    struct leo_buf err = LEO_BUF_INIT;
    json_t *out = json_array();
    ASSERT_EQ(A->stream_end(st, out, &u, &err), 0);
    /* Events after message_stop are ignored. */
    ASSERT_EQ(A->stream_event(st, LEO_STR_LIT("ping"), LEO_STR_LIT("{\"type\":\"ping\"}"), out, &u, &err), 0);
    ASSERT_EQ(json_array_size(out), 0);
    json_decref(out);
    leo_buf_release(&err);
    A->stream_free(st);
}

TEST(stream_cut_after_tool_call_delta)
{
    struct leo_stream_xlate *st = A->stream_new(&CTX);
    struct leo_usage u = {0};
    run_stream(st, tool_steps, 11, &u); /* through the first argument delta of the second call */
    struct leo_buf err = LEO_BUF_INIT;
    json_t *out = json_array();
    ASSERT_EQ(A->stream_end(st, out, &u, &err), LEO_EUPSTREAM);
    ASSERT_STR_EQ(err.p, "stream ended before message_stop");
    ASSERT_EQ(json_array_size(out), 0);
    ASSERT(u.have);
    ASSERT_EQ(u.input_tokens, 472);
    json_decref(out);
    leo_buf_release(&err);
    A->stream_free(st);
}

TEST(stream_thinking)
{
    static const struct step steps[] = {
        {"message_start",
         "{'type':'message_start','message':{'id':'msg_01','type':'message','role':'assistant','content':[],"
         "'model':'claude-sonnet-4-5','stop_reason':null,'stop_sequence':null,'usage':{'input_tokens':40,'output_"
         "tokens':0}}}",
         0, CHUNK("{'role':'assistant','content':''}")},
        {"content_block_start",
         "{'type':'content_block_start','index':0,'content_block':{'type':'thinking','thinking':'','signature':''}}", 0,
         ""},
        {"content_block_delta",
         "{'type':'content_block_delta','index':0,'delta':{'type':'thinking_delta','thinking':'Let me think'}}", 0,
         CHUNK("{'reasoning_content':'Let me think'}")},
        {"content_block_delta",
         "{'type':'content_block_delta','index':0,'delta':{'type':'thinking_delta','thinking':' step by step.'}}", 0,
         CHUNK("{'reasoning_content':' step by step.'}")},
        {"content_block_delta",
         "{'type':'content_block_delta','index':0,'delta':{'type':'signature_delta','signature':'EqQBCgIYAhIM'}}", 0,
         CHUNK("{'reasoning_signature':'EqQBCgIYAhIM'}")},
        {"content_block_stop", "{'type':'content_block_stop','index':0}", 0, ""},
        {"content_block_start",
         "{'type':'content_block_start','index':1,'content_block':{'type':'redacted_thinking','data':'EmwKAhgB'}}", 0,
         ""},
        {"content_block_stop", "{'type':'content_block_stop','index':1}", 0, ""},
        {"content_block_start", "{'type':'content_block_start','index':2,'content_block':{'type':'text','text':'4'}}",
         0, CHUNK("{'content':'4'}")},
        {"content_block_delta",
         "{'type':'content_block_delta','index':2,'delta':{'type':'citations_delta','citation':{'type':'char_location'}"
         "}}",
         0, ""},
        {"some_future_event", "{'type':'some_future_event','x':1}", 0, ""},
        {"content_block_stop", "{'type':'content_block_stop','index':2}", 0, ""},
        {"message_delta",
         "{'type':'message_delta','delta':{'stop_reason':'max_tokens','stop_sequence':null},"
         "'usage':{'input_tokens':40,'cache_creation_input_tokens':5,'output_tokens':30}}",
         0, ""},
        {"message_stop", "{'type':'message_stop'}", 1,
         FINAL("length") "\n" USAGE("{'prompt_tokens':45,'completion_tokens':30,'total_tokens':75,"
                                    "'cache_creation_input_tokens':5}")},
    };
    struct leo_stream_xlate *st = A->stream_new(&CTX);
    struct leo_usage u = {0};
    run_stream(st, steps, NSTEPS(steps), &u);
    ASSERT_EQ(u.cache_write_tokens, 5);
    A->stream_free(st);
}

TEST(stream_upstream_errors)
{
    static const struct step start[] = {
        {"message_start",
         "{'type':'message_start','message':{'id':'msg_01','type':'message','role':'assistant','content':[],"
         "'model':'claude-sonnet-4-5','usage':{'input_tokens':3,'output_tokens':1}}}",
         0, CHUNK("{'role':'assistant','content':''}")},
    };
    static const struct {
        const char *event, *data, *message;
    } cases[] = {
        {"error", "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}",
         "anthropic stream error: overloaded_error: Overloaded"},
        {"error", "{\"type\":\"error\"}", "anthropic stream error: (no message)"},
        {"content_block_delta", "{\"type\":\"content_block_del",
         "anthropic stream event \"content_block_delta\" is not a JSON object"},
        {"content_block_delta",
         "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{"
         "\"}}",
         "anthropic input_json_delta for a block that is not a tool_use"},
        {"content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\"}}",
         "anthropic text_delta without a string \"text\""},
        {"content_block_start",
         "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"name\":\"f\"}}",
         "anthropic tool_use block 0 without id or name"},
        {"message_start", "{\"type\":\"message_start\"}", "anthropic message_start without a message"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct leo_stream_xlate *st = A->stream_new(&CTX);
        struct leo_usage u = {0};
        run_stream(st, start, 1, &u);
        json_t *out = json_array();
        struct leo_buf err = LEO_BUF_INIT;
        ASSERT_EQ(A->stream_event(st, leo_str_c(cases[i].event), leo_str_c(cases[i].data), out, &u, &err),
                  LEO_EUPSTREAM);
        ASSERT_STR_EQ(err.p, cases[i].message);
        ASSERT_EQ(json_array_size(out), 0);
        ASSERT_EQ(u.input_tokens, 3);
        json_decref(out);
        leo_buf_release(&err);
        A->stream_free(st);
    }
}

TEST(stream_end_without_any_event)
{
    struct leo_stream_xlate *st = A->stream_new(&CTX);
    struct leo_usage u = {0};
    json_t *out = json_array();
    struct leo_buf err = LEO_BUF_INIT;
    ASSERT_EQ(A->stream_end(st, out, &u, &err), LEO_EUPSTREAM);
    ASSERT_STR_EQ(err.p, "stream ended before message_stop");
    ASSERT(!u.have);
    json_decref(out);
    leo_buf_release(&err);
    A->stream_free(st);
}

TEST_MAIN(TEST_ENTRY(chat_url_appends_messages), TEST_ENTRY(auth_headers_key_and_version),
          TEST_ENTRY(error_message_formats_type_and_message), TEST_ENTRY(build_text_with_system_and_scalar_options),
          TEST_ENTRY(build_system_blocks_from_several_messages), TEST_ENTRY(build_images_and_documents),
          TEST_ENTRY(build_tools_and_tool_choice), TEST_ENTRY(build_multi_turn_with_parallel_tool_results),
          TEST_ENTRY(build_merges_same_role_and_keeps_plain_assistant_text),
          TEST_ENTRY(build_max_tokens_and_reasoning_effort), TEST_ENTRY(build_rejects_what_anthropic_cannot_express),
          TEST_ENTRY(build_rejects_bad_messages_naming_the_path), TEST_ENTRY(build_reports_a_full_body_buffer),
          TEST_ENTRY(parse_text_with_cached_usage), TEST_ENTRY(parse_parallel_tool_calls),
          TEST_ENTRY(parse_thinking_and_tool_only), TEST_ENTRY(parse_finish_reasons),
          TEST_ENTRY(parse_errors_are_upstream_errors), TEST_ENTRY(stream_text),
          TEST_ENTRY(stream_parallel_tool_calls_incrementally), TEST_ENTRY(stream_cut_after_tool_call_delta),
          TEST_ENTRY(stream_thinking), TEST_ENTRY(stream_upstream_errors), TEST_ENTRY(stream_end_without_any_event))
