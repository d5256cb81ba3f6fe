/*
 * test_messages.c — golden tests of the client-side Anthropic Messages dialect (gateway/providers/messages.c):
 * request → canonical, canonical response → message, canonical chunks → Anthropic events (checked chunk by
 * chunk, so nothing may be held back), error bodies and passthrough usage.
 *
 * JSON in this file is written with single quotes for readability; q() turns them into double quotes before
 * use (an apostrophe inside a JSON string is written \u0027).
 *
 * `test_messages --emit-stream <case>` prints the SSE bytes of one stream case and `--emit-response <case>`
 * the JSON of one response case, so tests/integration/messages_sdk_stream.test.mjs can serve them to the
 * official @anthropic-ai/sdk.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/error.h"
#include "gateway/providers/messages.h"
#include "tests/unit/test.h"

/* Single quotes → double quotes (new memory). */
static char *q(const char *s)
{
    char *d = leo_strdup(s);
    for (char *p = d; *p; p++)
        if (*p == '\'')
            *p = '"';
    return d;
}

static json_t *parse(const char *single_quoted)
{
    char *s = q(single_quoted);
    json_error_t je;
    json_t *v = json_loads(s, 0, &je);
    if (v == NULL)
        TEST_FAIL_("bad test JSON (%s): %s", je.text, s);
    leo_free(s);
    return v;
}

static void assert_json(json_t *got, const char *want_single_quoted)
{
    char *want = q(want_single_quoted);
    char *s = json_dumps(got, JSON_COMPACT);
    ASSERT_STR_EQ(s, want);
    free(s);
    leo_free(want);
}

/* ---- request: Anthropic → canonical ---------------------------------------------------------------------- */

static void expect_canonical(const char *in, const char *want)
{
    json_t *req = parse(in);
    struct leo_buf err = LEO_BUF_INIT;
    json_t *c = leo_messages_to_canonical(req, &err);
    if (c == NULL)
        TEST_FAIL_("unexpected error: %s", err.p);
    ASSERT_EQ(err.len, 0);
    assert_json(c, want);
    json_decref(c);
    json_decref(req);
    leo_buf_release(&err);
}

static void expect_rejected(const char *in, const char *want_err)
{
    json_t *req = parse(in);
    struct leo_buf err = LEO_BUF_INIT;
    json_t *c = leo_messages_to_canonical(req, &err);
    ASSERT(c == NULL);
    ASSERT_STR_EQ(err.p, want_err);
    json_decref(req);
    leo_buf_release(&err);
}

TEST(request_text)
{
    expect_canonical("{'model':'claude-sonnet-4-5','max_tokens':256,'messages':[{'role':'user','content':'Hello'}]}",
                     "{'model':'claude-sonnet-4-5','messages':[{'role':'user','content':'Hello'}],'max_tokens':256}");
}

TEST(request_system_string_and_sampling)
{
    expect_canonical("{'model':'m','max_tokens':100,'system':'Be brief.','temperature':0.5,'top_p':0.25,'top_k':40,"
                     "'stop_sequences':['END','###'],'stream':true,'metadata':{'user_id':'u-42'},"
                     "'service_tier':'auto','messages':[{'role':'user','content':'Hi'}]}",
                     "{'model':'m','messages':[{'role':'system','content':'Be brief.'},{'role':'user','content':'Hi'}],"
                     "'max_tokens':100,'temperature':0.5,'top_p':0.25,'stop':['END','###'],'stream':true,"
                     "'user':'u-42'}");
}

TEST(request_system_blocks_drop_cache_control)
{
    /* One block collapses to a string; several stay text parts. */
    expect_canonical("{'model':'m','max_tokens':1,'system':[{'type':'text','text':'You are terse.',"
                     "'cache_control':{'type':'ephemeral'}}],'messages':[{'role':'user','content':'x'}]}",
                     "{'model':'m','messages':[{'role':'system','content':'You are terse.'},"
                     "{'role':'user','content':'x'}],'max_tokens':1}");
    expect_canonical("{'model':'m','max_tokens':1,'system':[{'type':'text','text':'A'},{'type':'text','text':'B',"
                     "'cache_control':{'type':'ephemeral','ttl':'1h'}}],'messages':[{'role':'user','content':'x'}]}",
                     "{'model':'m','messages':[{'role':'system','content':[{'type':'text','text':'A'},"
                     "{'type':'text','text':'B'}]},{'role':'user','content':'x'}],'max_tokens':1}");
}

TEST(request_content_blocks_and_images)
{
    expect_canonical(
        "{'model':'m','max_tokens':64,'messages':[{'role':'user','content':[{'type':'text','text':'Only text',"
        "'cache_control':{'type':'ephemeral'}}]},{'role':'assistant','content':[{'type':'text','text':'Ok',"
        "'citations':null}]},{'role':'user','content':[{'type':'text','text':'What is in these?'},"
        "{'type':'image','source':{'type':'base64','media_type':'image/png','data':'iVBORw0KGgo='}},"
        "{'type':'image','source':{'type':'url','url':'https://example.com/cat.jpg'}}]}]}",
        "{'model':'m','messages':[{'role':'user','content':'Only text'},{'role':'assistant','content':'Ok'},"
        "{'role':'user','content':[{'type':'text','text':'What is in these?'},{'type':'image_url','image_url':"
        "{'url':'data:image/png;base64,iVBORw0KGgo='}},{'type':'image_url','image_url':"
        "{'url':'https://example.com/cat.jpg'}}]}],'max_tokens':64}");
}

TEST(request_tools_and_tool_choice)
{
    const char *tools = "'tools':[{'name':'get_weather','description':'Weather for a city','input_schema':"
                        "{'type':'object','properties':{'city':{'type':'string'}},'required':['city']},"
                        "'cache_control':{'type':'ephemeral'}},{'type':'custom','name':'noop','input_schema':"
                        "{'type':'object'},'strict':true}]";
    const char *ftools = "'tools':[{'type':'function','function':{'name':'get_weather','description':"
                         "'Weather for a city','parameters':{'type':'object','properties':{'city':{'type':"
                         "'string'}},'required':['city']}}},{'type':'function','function':{'name':'noop',"
                         "'parameters':{'type':'object'},'strict':true}}]";
    static const struct {
        const char *choice;
        const char *want;
    } cases[] = {
        {"", ""},
        {",'tool_choice':{'type':'auto'}", ",'tool_choice':'auto'"},
        {",'tool_choice':{'type':'any','disable_parallel_tool_use':true}",
         ",'tool_choice':'required','parallel_tool_calls':false"},
        {",'tool_choice':{'type':'tool','name':'get_weather'}",
         ",'tool_choice':{'type':'function','function':{'name':'get_weather'}}"},
        {",'tool_choice':{'type':'none'}", ",'tool_choice':'none'"},
        {",'tool_choice':{'type':'auto','disable_parallel_tool_use':false}", ",'tool_choice':'auto'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char in[2048], want[2048];
        snprintf(in, sizeof(in), "{'model':'m','max_tokens':10,'messages':[{'role':'user','content':'hi'}],%s%s}",
                 tools, cases[i].choice);
        snprintf(want, sizeof(want), "{'model':'m','messages':[{'role':'user','content':'hi'}],'max_tokens':10,%s%s}",
                 ftools, cases[i].want);
        expect_canonical(in, want);
    }
    /* Without tools, tool_choice has nothing to choose from and is left out (OpenAI rejects it alone). */
    expect_canonical("{'model':'m','max_tokens':10,'messages':[{'role':'user','content':'hi'}],'tools':[],"
                     "'tool_choice':{'type':'none'}}",
                     "{'model':'m','messages':[{'role':'user','content':'hi'}],'max_tokens':10}");
}

TEST(request_multi_turn_with_parallel_tool_results)
{
    expect_canonical(
        "{'model':'m','max_tokens':512,'messages':["
        "{'role':'user','content':'Weather in Paris and time in Tokyo?'},"
        "{'role':'assistant','content':[{'type':'text','text':'Checking both.'},"
        "{'type':'tool_use','id':'toolu_01','name':'get_weather','input':{'city':'Paris','units':{'temp':'C'}}},"
        "{'type':'tool_use','id':'toolu_02','name':'get_time','input':{}}]},"
        "{'role':'user','content':[{'type':'tool_result','tool_use_id':'toolu_01','content':'18C, cloudy'},"
        "{'type':'tool_result','tool_use_id':'toolu_02','content':[{'type':'text','text':'09:30'},"
        "{'type':'text','text':'JST'}],'is_error':false},{'type':'text','text':'Summarise please.'}]},"
        "{'role':'assistant','content':[{'type':'tool_use','id':'toolu_03','name':'get_time','input':{'tz':'UTC'}}]},"
        "{'role':'user','content':[{'type':'tool_result','tool_use_id':'toolu_03','is_error':true,"
        "'content':[{'type':'text','text':'clock unavailable'}]}]}]}",
        "{'model':'m','messages':[{'role':'user','content':'Weather in Paris and time in Tokyo?'},"
        "{'role':'assistant','content':'Checking both.','tool_calls':[{'id':'toolu_01','type':'function',"
        "'function':{'name':'get_weather','arguments':'{\\'city\\':\\'Paris\\',\\'units\\':{\\'temp\\':\\'C\\'}}'}},"
        "{'id':'toolu_02','type':'function','function':{'name':'get_time','arguments':'{}'}}]},"
        "{'role':'tool','tool_call_id':'toolu_01','content':'18C, cloudy'},"
        "{'role':'tool','tool_call_id':'toolu_02','content':[{'type':'text','text':'09:30'},"
        "{'type':'text','text':'JST'}]},{'role':'user','content':'Summarise please.'},"
        "{'role':'assistant','content':null,'tool_calls':[{'id':'toolu_03','type':'function','function':"
        "{'name':'get_time','arguments':'{\\'tz\\':\\'UTC\\'}'}}]},"
        "{'role':'tool','tool_call_id':'toolu_03','content':'clock unavailable'}],'max_tokens':512}");
}

TEST(request_thinking_history_and_budget)
{
    expect_canonical(
        "{'model':'m','max_tokens':16000,'thinking':{'type':'enabled','budget_tokens':10000},'messages':["
        "{'role':'user','content':'2+2?'},{'role':'assistant','content':[{'type':'thinking','thinking':'Simple sum.',"
        "'signature':'sig=='},{'type':'redacted_thinking','data':'EmwKAhgB'},{'type':'text','text':'4'}]},"
        "{'role':'user','content':'And 3+3?'}]}",
        "{'model':'m','messages':[{'role':'user','content':'2+2?'},{'role':'assistant','content':'4',"
        "'reasoning_content':'Simple sum.','reasoning_signature':'sig=='},{'role':'user','content':'And 3+3?'}],"
        "'max_tokens':16000,'reasoning_effort':'high'}");
    /* Several thinking blocks: texts joined, no single signature covers them. */
    expect_canonical("{'model':'m','max_tokens':10,'messages':[{'role':'assistant','content':[{'type':'thinking',"
                     "'thinking':'A','signature':'s1'},{'type':'thinking','thinking':'B','signature':'s2'}]}]}",
                     "{'model':'m','messages':[{'role':'assistant','content':'','reasoning_content':'A\\n\\nB'}],"
                     "'max_tokens':10}");
    static const struct {
        const char *thinking;
        const char *effort;
    } buckets[] = {
        {"{'type':'enabled','budget_tokens':1024}", ",'reasoning_effort':'low'"},
        {"{'type':'enabled','budget_tokens':2048}", ",'reasoning_effort':'low'"},
        {"{'type':'enabled','budget_tokens':2049}", ",'reasoning_effort':'medium'"},
        {"{'type':'enabled','budget_tokens':8192}", ",'reasoning_effort':'medium'"},
        {"{'type':'enabled','budget_tokens':8193}", ",'reasoning_effort':'high'"},
        {"{'type':'disabled'}", ""},
        {"{'type':'adaptive'}", ""},
    };
    for (size_t i = 0; i < sizeof(buckets) / sizeof(buckets[0]); i++) {
        char in[512], want[512];
        snprintf(in, sizeof(in),
                 "{'model':'m','max_tokens':9000,'messages':[{'role':'user','content':'q'}],"
                 "'thinking':%s}",
                 buckets[i].thinking);
        snprintf(want, sizeof(want), "{'model':'m','messages':[{'role':'user','content':'q'}],'max_tokens':9000%s}",
                 buckets[i].effort);
        expect_canonical(in, want);
    }
}

TEST(request_output_config)
{
    expect_canonical("{'model':'m','max_tokens':10,'messages':[{'role':'user','content':'q'}],"
                     "'thinking':{'type':'enabled','budget_tokens':1024},'output_config':{'effort':'max',"
                     "'format':{'type':'json_schema','schema':{'type':'object'}}}}",
                     "{'model':'m','messages':[{'role':'user','content':'q'}],'max_tokens':10,'reasoning_effort':"
                     "'high','response_format':{'type':'json_schema','json_schema':{'name':'output','strict':true,"
                     "'schema':{'type':'object'}}}}");
    expect_canonical("{'model':'m','max_tokens':10,'messages':[{'role':'user','content':'q'}],"
                     "'output_format':{'type':'json_schema','schema':{'type':'object','properties':{}}}}",
                     "{'model':'m','messages':[{'role':'user','content':'q'}],'max_tokens':10,'response_format':"
                     "{'type':'json_schema','json_schema':{'name':'output','strict':true,'schema':{'type':'object',"
                     "'properties':{}}}}}");
}

TEST(request_only_tool_results_and_empty_content)
{
    /* A user turn of tool results only yields tool messages; an empty content array an empty string. */
    expect_canonical("{'model':'m','max_tokens':5,'messages':[{'role':'user','content':[{'type':'tool_result',"
                     "'tool_use_id':'t1'}]},{'role':'user','content':[]}]}",
                     "{'model':'m','messages':[{'role':'tool','tool_call_id':'t1','content':''},"
                     "{'role':'user','content':''}],'max_tokens':5}");
}

TEST(request_errors_name_the_field)
{
    expect_rejected("[]", "request body: must be a JSON object");
    expect_rejected("{'max_tokens':1,'messages':[{'role':'user','content':'x'}]}",
                    "model: required, must be a non-empty string");
    expect_rejected("{'model':'','max_tokens':1,'messages':[{'role':'user','content':'x'}]}",
                    "model: required, must be a non-empty string");
    expect_rejected("{'model':'m','messages':[{'role':'user','content':'x'}]}",
                    "max_tokens: required, must be an integer >= 1");
    expect_rejected("{'model':'m','max_tokens':0,'messages':[{'role':'user','content':'x'}]}",
                    "max_tokens: required, must be an integer >= 1");
    expect_rejected("{'model':'m','max_tokens':1}", "messages: required, must be a non-empty array");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[]}", "messages: required, must be a non-empty array");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'system','content':'x'}]}",
                    "messages[0].role: must be \"user\" or \"assistant\"");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':7}]}",
                    "messages[0].content: must be a string or an array of content blocks");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'a'},{'role':'user','content':"
                    "[{'type':'text','text':'see'},{'type':'document','source':{'type':'base64','media_type':"
                    "'application/pdf','data':'JVBER'}}]}]}",
                    "messages[1].content[1].type: \"document\" blocks are not supported by this upstream");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':[{'type':'image','source':"
                    "{'type':'file','file_id':'file_1'}}]}]}",
                    "messages[0].content[0].source.type: \"file\" is not supported by this upstream "
                    "(only base64 and url)");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':[{'type':'tool_use','id':'a',"
                    "'name':'n','input':{}}]}]}",
                    "messages[0].content[0].type: \"tool_use\" blocks belong in assistant messages");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'assistant','content':[{'type':'tool_result',"
                    "'tool_use_id':'a'}]}]}",
                    "messages[0].content[0].type: \"tool_result\" blocks belong in user messages");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':[{'type':'tool_result',"
                    "'tool_use_id':'a','content':[{'type':'image','source':{'type':'url','url':'u'}}]}]}]}",
                    "messages[0].content[0].content[0].type: images in tool results are not supported by this "
                    "upstream");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'x'}],'tools':[{'type':"
                    "'web_search_20250305','name':'web_search','max_uses':5}]}",
                    "tools[0].type: \"web_search_20250305\" is a server tool, not supported by this upstream");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'x'}],'tools':[{'name':'f'}]}",
                    "tools[0].input_schema: must be an object");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'x'}],'tools':[{'name':'f',"
                    "'input_schema':{}}],'tool_choice':{'type':'sometimes'}}",
                    "tool_choice.type: \"sometimes\" is not one of auto, any, tool, none");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'x'}],'temperature':'hot'}",
                    "temperature: must be a number");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'x'}],'thinking':"
                    "{'type':'enabled'}}",
                    "thinking.budget_tokens: must be a non-negative integer");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'x'}],'mcp_servers':[{}]}",
                    "mcp_servers: not supported by this upstream");
    expect_rejected("{'model':'m','max_tokens':1,'messages':[{'role':'user','content':'x'}],'stop_sequences':[1]}",
                    "stop_sequences[0]: must be a string");
    expect_rejected("{'model':'m','max_tokens':1,'system':[{'type':'image'}],'messages':[{'role':'user','content':"
                    "'x'}]}",
                    "system[0].type: system blocks must be text blocks");
}

/* ---- response: canonical → message ----------------------------------------------------------------------- */

struct response_case {
    const char *name;
    const char *completion;
    const char *want;
};

static const struct response_case response_cases[] = {
    {"text",
     "{'id':'chatcmpl-1','object':'chat.completion','created':1700000000,'model':'gpt-4o','choices':[{'index':0,"
     "'message':{'role':'assistant','content':'Hello there.'},'finish_reason':'stop'}],'usage':{'prompt_tokens':10,"
     "'completion_tokens':3,'total_tokens':13}}",
     "{'id':'msg_r1','type':'message','role':'assistant','model':'claude-front','content':[{'type':'text',"
     "'text':'Hello there.'}],'stop_reason':'end_turn','stop_sequence':null,'usage':{'input_tokens':10,"
     "'output_tokens':3}}"},
    {"tools",
     "{'id':'chatcmpl-2','object':'chat.completion','created':1700000000,'model':'deepseek-reasoner','choices':"
     "[{'index':0,'message':{'role':'assistant','content':'Looking up.','reasoning_content':'Need two calls.',"
     "'reasoning_signature':'c2ln','tool_calls':[{'id':'call_1','type':'function','function':{'name':'get_weather',"
     "'arguments':'{\\'city\\':\\'Paris\\'}'}},{'id':'call_2','type':'function','function':{'name':'get_time',"
     "'arguments':'not json'}}]},'finish_reason':'tool_calls'}],'usage':{'prompt_tokens':120,'completion_tokens':"
     "40,'total_tokens':160,'prompt_tokens_details':{'cached_tokens':100},'cache_creation_input_tokens':15}}",
     "{'id':'msg_r1','type':'message','role':'assistant','model':'claude-front','content':[{'type':'thinking',"
     "'thinking':'Need two calls.','signature':'c2ln'},{'type':'text','text':'Looking up.'},{'type':'tool_use',"
     "'id':'call_1','name':'get_weather','input':{'city':'Paris'}},{'type':'tool_use','id':'call_2','name':"
     "'get_time','input':{}}],'stop_reason':'tool_use','stop_sequence':null,'usage':{'input_tokens':5,"
     "'cache_creation_input_tokens':15,'cache_read_input_tokens':100,'output_tokens':40}}"},
    {"length",
     "{'choices':[{'index':0,'message':{'role':'assistant','content':[{'type':'text','text':'Once upon'},"
     "{'type':'text','text':' a time'}],'reasoning_content':'Story.'},'finish_reason':'length'}]}",
     "{'id':'msg_r1','type':'message','role':'assistant','model':'claude-front','content':[{'type':'thinking',"
     "'thinking':'Story.','signature':''},{'type':'text','text':'Once upon a time'}],'stop_reason':'max_tokens',"
     "'stop_sequence':null,'usage':{'input_tokens':0,'output_tokens':0}}"},
    {"stop_with_tools",
     "{'choices':[{'index':0,'message':{'role':'assistant','content':null,'tool_calls':[{'type':'function',"
     "'function':{'name':'f','arguments':{'a':1}}}]},'finish_reason':'stop'}],'usage':{'prompt_tokens':3,"
     "'completion_tokens':2}}",
     "{'id':'msg_r1','type':'message','role':'assistant','model':'claude-front','content':[{'type':'tool_use',"
     "'id':'toolu_r1_0','name':'f','input':{'a':1}}],'stop_reason':'tool_use','stop_sequence':null,'usage':"
     "{'input_tokens':3,'output_tokens':2}}"},
    {"refusal",
     "{'choices':[{'index':0,'message':{'role':'assistant','content':null,'refusal':'I can\\u0027t help with that.'},"
     "'finish_reason':'stop'}],'usage':{'prompt_tokens':8,'completion_tokens':6}}",
     "{'id':'msg_r1','type':'message','role':'assistant','model':'claude-front','content':[{'type':'text','text':"
     "'I can\\u0027t help with that.'}],'stop_reason':'refusal','stop_sequence':null,'usage':{'input_tokens':8,"
     "'output_tokens':6}}"},
    {"empty",
     "{'choices':[{'index':0,'message':{'role':'assistant','content':''},'finish_reason':'content_filter'}],"
     "'usage':{'prompt_tokens':4,'completion_tokens':0}}",
     "{'id':'msg_r1','type':'message','role':'assistant','model':'claude-front','content':[],'stop_reason':"
     "'refusal','stop_sequence':null,'usage':{'input_tokens':4,'output_tokens':0}}"},
};

static json_t *translate_response(const struct response_case *c)
{
    json_t *in = parse(c->completion);
    struct leo_buf err = LEO_BUF_INIT;
    json_t *m = leo_messages_from_canonical(in, "claude-front", "msg_r1", &err);
    if (m == NULL)
        TEST_FAIL_("%s: unexpected error: %s", c->name, err.p);
    json_decref(in);
    leo_buf_release(&err);
    return m;
}

TEST(response_golden)
{
    for (size_t i = 0; i < sizeof(response_cases) / sizeof(response_cases[0]); i++) {
        fprintf(stderr, "  response case %s\n", response_cases[i].name);
        json_t *m = translate_response(&response_cases[i]);
        /* The golden holds \u0027 escapes (an apostrophe cannot be written with the q() convention), so it is
         * parsed and dumped compactly before the byte comparison. */
        json_t *want = parse(response_cases[i].want);
        char *w = json_dumps(want, JSON_COMPACT), *g = json_dumps(m, JSON_COMPACT);
        ASSERT_STR_EQ(g, w);
        free(w);
        free(g);
        json_decref(want);
        json_decref(m);
    }
}

TEST(response_errors)
{
    static const char *const bad[] = {"{}", "{'choices':[]}", "{'choices':[{'index':0}]}", "[1]",
                                      "{'choices':[{'message':'text'}]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *in = parse(bad[i]);
        struct leo_buf err = LEO_BUF_INIT;
        ASSERT(leo_messages_from_canonical(in, "m", "msg_1", &err) == NULL);
        ASSERT_STR_EQ(err.p, "choices[0].message: missing from the upstream response");
        leo_buf_release(&err);
        json_decref(in);
    }
}

TEST(stop_reasons)
{
    ASSERT_STR_EQ(leo_messages_stop_reason("stop"), "end_turn");
    ASSERT_STR_EQ(leo_messages_stop_reason("length"), "max_tokens");
    ASSERT_STR_EQ(leo_messages_stop_reason("tool_calls"), "tool_use");
    ASSERT_STR_EQ(leo_messages_stop_reason("function_call"), "tool_use");
    ASSERT_STR_EQ(leo_messages_stop_reason("content_filter"), "refusal");
    ASSERT_STR_EQ(leo_messages_stop_reason("stop_sequence"), "stop_sequence");
    ASSERT_STR_EQ(leo_messages_stop_reason("pause_turn"), "pause_turn");
    ASSERT_STR_EQ(leo_messages_stop_reason(NULL), "end_turn");
    ASSERT_STR_EQ(leo_messages_stop_reason("eos"), "end_turn");
}

/* ---- stream: canonical chunks → Anthropic events ---------------------------------------------------------- */

/* One canonical chunk and the exact SSE bytes it must produce at once. */
struct step {
    const char *chunk;
    const char *sse;
};

struct stream_case {
    const char *name;
    uint64_t estimate;
    const struct step *steps;
    const struct leo_usage *usage; /* handed to finish */
    const char *error_type;        /* set: the stream ends with leo_messages_stream_error */
    const char *error_message;
    const char *end_sse; /* bytes of finish or error */
};

#define MSG_START(n)                                                                                                   \
    "event: message_start\ndata: {'type':'message_start','message':{'id':'msg_01','type':'message','role':"            \
    "'assistant','model':'claude-front','content':[],'stop_reason':null,'stop_sequence':null,'usage':"                 \
    "{'input_tokens':" #n ",'output_tokens':0}}}\n\n"
#define BLOCK_START(i, block)                                                                                          \
    "event: content_block_start\ndata: {'type':'content_block_start','index':" #i ",'content_block':" block "}\n\n"
#define BLOCK_DELTA(i, delta)                                                                                          \
    "event: content_block_delta\ndata: {'type':'content_block_delta','index':" #i ",'delta':" delta "}\n\n"
#define BLOCK_STOP(i) "event: content_block_stop\ndata: {'type':'content_block_stop','index':" #i "}\n\n"
#define MSG_DELTA(stop, usage)                                                                                         \
    "event: message_delta\ndata: {'type':'message_delta','delta':{'stop_reason':'" stop "','stop_sequence':"           \
    "null},'usage':" usage "}\n\n"
#define MSG_STOP "event: message_stop\ndata: {'type':'message_stop'}\n\n"
#define CHUNK(delta, finish)                                                                                           \
    "{'id':'chatcmpl-9','object':'chat.completion.chunk','created':1700000000,'model':'gpt-4o','choices':"             \
    "[{'index':0,'delta':" delta ",'finish_reason':" finish "}]}"

static const struct step text_steps[] = {
    {CHUNK("{'role':'assistant','content':''}", "null"), MSG_START(12)},
    {CHUNK("{'content':'Hello'}", "null"),
     BLOCK_START(0, "{'type':'text','text':''}") BLOCK_DELTA(0, "{'type':'text_delta','text':'Hello'}")},
    {CHUNK("{'content':', \\'world\\'!\\n'}", "null"),
     BLOCK_DELTA(0, "{'type':'text_delta','text':', \\'world\\'!\\n'}")},
    {CHUNK("{}", "'stop'"), ""},
    {"{'id':'chatcmpl-9','object':'chat.completion.chunk','created':1700000000,'model':'gpt-4o','choices':[],"
     "'usage':{'prompt_tokens':12,'completion_tokens':4,'total_tokens':16}}",
     ""},
    {NULL, NULL},
};

static const struct step tools_steps[] = {
    {CHUNK("{'role':'assistant','content':null}", "null"), MSG_START(50)},
    {CHUNK("{'content':'Checking both.'}", "null"),
     BLOCK_START(0, "{'type':'text','text':''}") BLOCK_DELTA(0, "{'type':'text_delta','text':'Checking both.'}")},
    {CHUNK("{'tool_calls':[{'index':0,'id':'call_a','type':'function','function':{'name':'get_weather',"
           "'arguments':''}}]}",
           "null"),
     BLOCK_STOP(0) BLOCK_START(1, "{'type':'tool_use','id':'call_a','name':'get_weather','input':{}}")},
    {CHUNK("{'tool_calls':[{'index':0,'function':{'arguments':'{\\'city\\':'}}]}", "null"),
     BLOCK_DELTA(1, "{'type':'input_json_delta','partial_json':'{\\'city\\':'}")},
    {CHUNK("{'tool_calls':[{'index':0,'function':{'arguments':'\\'Paris\\'}'}}]}", "null"),
     BLOCK_DELTA(1, "{'type':'input_json_delta','partial_json':'\\'Paris\\'}'}")},
    {CHUNK("{'tool_calls':[{'index':1,'id':'call_b','type':'function','function':{'name':'get_time',"
           "'arguments':'{\\'tz\\':\\'Asia/'}}]}",
           "null"),
     BLOCK_STOP(1) BLOCK_START(2, "{'type':'tool_use','id':'call_b','name':'get_time','input':{}}")
         BLOCK_DELTA(2, "{'type':'input_json_delta','partial_json':'{\\'tz\\':\\'Asia/'}")},
    {CHUNK("{'tool_calls':[{'index':1,'function':{'arguments':'Tokyo\\'}'}}]}", "null"),
     BLOCK_DELTA(2, "{'type':'input_json_delta','partial_json':'Tokyo\\'}'}")},
    {CHUNK("{}", "'tool_calls'"), ""},
    {NULL, NULL},
};
static const struct leo_usage tools_usage = {
    .input_tokens = 90, .output_tokens = 31, .cache_read_tokens = 40, .have = true};

static const struct step thinking_steps[] = {
    {CHUNK("{'role':'assistant','reasoning_content':'Let me think'}", "null"),
     MSG_START(20) BLOCK_START(0, "{'type':'thinking','thinking':'','signature':''}")
         BLOCK_DELTA(0, "{'type':'thinking_delta','thinking':'Let me think'}")},
    {CHUNK("{'reasoning_content':' about 2+2.'}", "null"),
     BLOCK_DELTA(0, "{'type':'thinking_delta','thinking':' about 2+2.'}")},
    {CHUNK("{'reasoning_signature':'EqQBsig=='}", "null"),
     BLOCK_DELTA(0, "{'type':'signature_delta','signature':'EqQBsig=='}")},
    {CHUNK("{'content':'4'}", "null"),
     BLOCK_STOP(0) BLOCK_START(1, "{'type':'text','text':''}") BLOCK_DELTA(1, "{'type':'text_delta','text':'4'}")},
    {"{'id':'chatcmpl-9','object':'chat.completion.chunk','created':1700000000,'model':'gpt-4o','choices':[{"
     "'index':0,'delta':{},'finish_reason':'stop'}],'usage':{'prompt_tokens':25,'completion_tokens':9,"
     "'prompt_tokens_details':{'cached_tokens':10},'cache_creation_input_tokens':5}}",
     ""},
    {NULL, NULL},
};

static const struct step cut_steps[] = {
    {CHUNK("{'role':'assistant','content':''}", "null"), MSG_START(7)},
    {CHUNK("{'tool_calls':[{'index':0,'id':'call_x','type':'function','function':{'name':'search',"
           "'arguments':'{\\'q\\':\\'wea'}}]}",
           "null"),
     BLOCK_START(0, "{'type':'tool_use','id':'call_x','name':'search','input':{}}")
         BLOCK_DELTA(0, "{'type':'input_json_delta','partial_json':'{\\'q\\':\\'wea'}")},
    {NULL, NULL},
};

static const struct step length_steps[] = {
    {CHUNK("{'content':'The answer is'}", "'length'"),
     MSG_START(3) BLOCK_START(0, "{'type':'text','text':''}")
         BLOCK_DELTA(0, "{'type':'text_delta','text':'The answer is'}")},
    {NULL, NULL},
};
static const struct leo_usage length_usage = {.input_tokens = 3, .output_tokens = 3, .have = true};

static const struct step empty_steps[] = {{NULL, NULL}};

static const struct stream_case stream_cases[] = {
    {"text", 12, text_steps, NULL, NULL, NULL,
     BLOCK_STOP(0) MSG_DELTA("end_turn", "{'input_tokens':12,'output_tokens':4}") MSG_STOP},
    {"tools", 50, tools_steps, &tools_usage, NULL, NULL,
     BLOCK_STOP(2) MSG_DELTA("tool_use", "{'input_tokens':50,'cache_read_input_tokens':40,'output_tokens':31}")
         MSG_STOP},
    {"thinking", 20, thinking_steps, NULL, NULL, NULL,
     BLOCK_STOP(1) MSG_DELTA("end_turn", "{'input_tokens':10,'cache_creation_input_tokens':5,"
                                         "'cache_read_input_tokens':10,'output_tokens':9}") MSG_STOP},
    {"cut", 7, cut_steps, NULL, "api_error", "upstream connection closed mid-stream",
     "event: error\ndata: {'type':'error','error':{'type':'api_error','message':'upstream connection closed "
     "mid-stream'}}\n\n"},
    {"length", 3, length_steps, &length_usage, NULL, NULL,
     BLOCK_STOP(0) MSG_DELTA("max_tokens", "{'input_tokens':3,'output_tokens':3}") MSG_STOP},
    {"empty", 5, empty_steps, NULL, NULL, NULL, MSG_START(5) MSG_DELTA("end_turn", "{'output_tokens':0}") MSG_STOP},
};

/* Runs a case; with check, asserts the bytes of every step; returns all bytes (caller frees). */
static char *run_stream(const struct stream_case *c, bool check)
{
    struct leo_messages_stream *st = leo_messages_stream_new("claude-front", "msg_01", c->estimate);
    struct leo_buf all = LEO_BUF_INIT, err = LEO_BUF_INIT;
    for (const struct step *s = c->steps; s->chunk != NULL; s++) {
        json_t *chunk = parse(s->chunk);
        struct leo_buf out = LEO_BUF_INIT;
        int rc = leo_messages_stream_chunk(st, chunk, &out, &err);
        if (rc != 0)
            TEST_FAIL_("%s: chunk %zu failed: %s", c->name, (size_t)(s - c->steps), err.p);
        if (check) {
            char *want = q(s->sse);
            ASSERT_STR_EQ(out.p, want);
            leo_free(want);
        }
        leo_buf_addstr(&all, leo_buf_str(&out));
        leo_buf_release(&out);
        json_decref(chunk);
    }
    struct leo_buf out = LEO_BUF_INIT;
    if (c->error_type)
        leo_messages_stream_error(st, c->error_type, c->error_message, &out);
    else
        leo_messages_stream_finish(st, c->usage, &out);
    if (check) {
        char *want = q(c->end_sse);
        ASSERT_STR_EQ(out.p, want);
        leo_free(want);
    }
    leo_buf_addstr(&all, leo_buf_str(&out));
    leo_buf_release(&out);
    /* Nothing follows the end. */
    json_t *late = parse(CHUNK("{'content':'late'}", "null"));
    ASSERT_EQ(leo_messages_stream_chunk(st, late, &out, &err), 0);
    leo_messages_stream_finish(st, NULL, &out);
    leo_messages_stream_error(st, "api_error", "again", &out);
    ASSERT_EQ(out.len, 0);
    json_decref(late);
    leo_messages_stream_free(st);
    leo_buf_release(&err);
    return leo_buf_detach(&all, NULL);
}

TEST(stream_golden)
{
    for (size_t i = 0; i < sizeof(stream_cases) / sizeof(stream_cases[0]); i++) {
        fprintf(stderr, "  stream case %s\n", stream_cases[i].name);
        leo_free(run_stream(&stream_cases[i], true));
    }
}

/* Feeds chunks (single-quoted JSON) and returns all bytes, the stream's end included. */
static void expect_stream(const char *const *chunks, size_t n, int want_rc, const char *want_err, const char *want)
{
    struct leo_messages_stream *st = leo_messages_stream_new("claude-front", "msg_01", 1);
    struct leo_buf out = LEO_BUF_INIT, err = LEO_BUF_INIT;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *c = parse(chunks[i]);
        rc = leo_messages_stream_chunk(st, c, &out, &err);
        json_decref(c);
    }
    ASSERT_EQ(rc, want_rc);
    if (want_err) {
        ASSERT_STR_EQ(err.p, want_err);
    } else {
        leo_messages_stream_finish(st, NULL, &out);
    }
    char *w = q(want);
    ASSERT_STR_EQ(out.p, w);
    leo_free(w);
    leo_messages_stream_free(st);
    leo_buf_release(&out);
    leo_buf_release(&err);
}

TEST(stream_thinking_after_signature_opens_a_new_block)
{
    const char *chunks[] = {
        CHUNK("{'reasoning_content':'A','reasoning_signature':'s1'}", "null"),
        CHUNK("{'reasoning_content':'B'}", "null"),
        CHUNK("{'reasoning_signature':'s2','content':'done'}", "null"),
    };
    expect_stream(chunks, 3, 0, NULL,
                  MSG_START(1) BLOCK_START(0, "{'type':'thinking','thinking':'','signature':''}")
                      BLOCK_DELTA(0, "{'type':'thinking_delta','thinking':'A'}")
                          BLOCK_DELTA(0, "{'type':'signature_delta','signature':'s1'}") BLOCK_STOP(0)
                              BLOCK_START(1, "{'type':'thinking','thinking':'','signature':''}")
                                  BLOCK_DELTA(1, "{'type':'thinking_delta','thinking':'B'}")
                                      BLOCK_DELTA(1, "{'type':'signature_delta','signature':'s2'}") BLOCK_STOP(1)
                                          BLOCK_START(2, "{'type':'text','text':''}")
                                              BLOCK_DELTA(2, "{'type':'text_delta','text':'done'}") BLOCK_STOP(2)
                                                  MSG_DELTA("end_turn", "{'output_tokens':0}") MSG_STOP);
}

TEST(stream_tool_calls_without_index_or_with_reused_index)
{
    /* Whole calls in one delta each, all numbered 0 (as some servers do) or not numbered at all. */
    const char *chunks[] = {
        CHUNK("{'tool_calls':[{'index':0,'id':'c1','function':{'name':'a','arguments':'{}'}}]}", "null"),
        CHUNK("{'tool_calls':[{'index':0,'id':'c2','function':{'name':'b','arguments':'{\\'x\\':1}'}}]}", "null"),
        CHUNK("{'tool_calls':[{'id':'c3','function':{'name':'c'}}]}", "null"),
        CHUNK("{'tool_calls':[{'function':{'arguments':'{}'}}]}", "'stop'"),
    };
    expect_stream(chunks, 4, 0, NULL,
                  MSG_START(1) BLOCK_START(0, "{'type':'tool_use','id':'c1','name':'a','input':{}}")
                      BLOCK_DELTA(0, "{'type':'input_json_delta','partial_json':'{}'}") BLOCK_STOP(0)
                          BLOCK_START(1, "{'type':'tool_use','id':'c2','name':'b','input':{}}")
                              BLOCK_DELTA(1, "{'type':'input_json_delta','partial_json':'{\\'x\\':1}'}") BLOCK_STOP(1)
                                  BLOCK_START(2, "{'type':'tool_use','id':'c3','name':'c','input':{}}")
                                      BLOCK_DELTA(2, "{'type':'input_json_delta','partial_json':'{}'}") BLOCK_STOP(2)
                                          MSG_DELTA("tool_use", "{'output_tokens':0}") MSG_STOP);
}

TEST(stream_tool_call_resumed_after_close_is_an_upstream_error)
{
    const char *chunks[] = {
        CHUNK("{'tool_calls':[{'index':0,'id':'c1','function':{'name':'a','arguments':'{'}}]}", "null"),
        CHUNK("{'content':'interrupting'}", "null"),
        CHUNK("{'tool_calls':[{'index':0,'function':{'arguments':'}'}}]}", "null"),
    };
    expect_stream(chunks, 3, LEO_EUPSTREAM, "stream chunk: tool call 0 continued after its content block was closed",
                  MSG_START(1) BLOCK_START(0, "{'type':'tool_use','id':'c1','name':'a','input':{}}")
                      BLOCK_DELTA(0, "{'type':'input_json_delta','partial_json':'{'}") BLOCK_STOP(0)
                          BLOCK_START(1, "{'type':'text','text':''}")
                              BLOCK_DELTA(1, "{'type':'text_delta','text':'interrupting'}"));
}

TEST(stream_tool_call_without_id_gets_a_stable_one)
{
    const char *chunks[] = {CHUNK("{'tool_calls':[{'index':3,'function':{'name':'f','arguments':'{}'}}]}", "null")};
    expect_stream(chunks, 1, 0, NULL,
                  MSG_START(1) BLOCK_START(0, "{'type':'tool_use','id':'toolu_01_3','name':'f','input':{}}")
                      BLOCK_DELTA(0, "{'type':'input_json_delta','partial_json':'{}'}") BLOCK_STOP(0)
                          MSG_DELTA("tool_use", "{'output_tokens':0}") MSG_STOP);
}

TEST(stream_ignores_other_choices_and_rejects_garbage)
{
    const char *chunks[] = {
        "{'choices':[{'index':1,'delta':{'content':'other'}},{'index':0,'delta':{'content':'mine'}}]}",
    };
    expect_stream(chunks, 1, 0, NULL,
                  MSG_START(1) BLOCK_START(0, "{'type':'text','text':''}")
                      BLOCK_DELTA(0, "{'type':'text_delta','text':'mine'}") BLOCK_STOP(0)
                          MSG_DELTA("end_turn", "{'output_tokens':0}") MSG_STOP);
    const char *bad1[] = {"[1,2]"};
    expect_stream(bad1, 1, LEO_EUPSTREAM, "stream chunk: not a JSON object", "");
    const char *bad2[] = {"{'choices':{}}"};
    expect_stream(bad2, 1, LEO_EUPSTREAM, "stream chunk: choices is not an array", "");
    const char *bad3[] = {"{'choices':[{'index':0,'delta':{'tool_calls':{}}}]}"};
    expect_stream(bad3, 1, LEO_EUPSTREAM, "stream chunk: choices[0].delta.tool_calls is not an array", MSG_START(1));
}

TEST(stream_output_cap_is_all_or_nothing)
{
    struct leo_messages_stream *st = leo_messages_stream_new("claude-front", "msg_01", 1);
    struct leo_buf out, err = LEO_BUF_INIT;
    leo_buf_init(&out, 64, 0);
    json_t *c = parse(CHUNK("{'content':'hi'}", "null"));
    ASSERT_EQ(leo_messages_stream_chunk(st, c, &out, &err), LEO_ETOOBIG);
    ASSERT_EQ(out.len, 0);
    json_decref(c);
    leo_messages_stream_free(st);
    leo_buf_release(&out);
    leo_buf_release(&err);
}

/* ---- errors and passthrough usage ------------------------------------------------------------------------- */

TEST(error_event_escapes_and_repairs_the_message)
{
    struct leo_messages_stream *st = leo_messages_stream_new("claude-front", "msg_01", 1);
    struct leo_buf b = LEO_BUF_INIT;
    /* Invalid UTF-8 (a stray continuation byte, a truncated sequence, an overlong form) becomes U+FFFD so the
     * event always parses; quotes and control bytes are escaped. */
    leo_messages_stream_error(st, "overloaded_error",
                              "\"busy\"\n\x01 caf\xc3\xa9 a\x80"
                              "b\xe2\x82"
                              "c\xc0\xaf",
                              &b);
    ASSERT_STR_EQ(b.p, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":"
                       "\"\\\"busy\\\"\\n\\u0001 caf\xc3\xa9 a\xef\xbf\xbd"
                       "b\xef\xbf\xbd\xef\xbf\xbd"
                       "c\xef\xbf\xbd\xef\xbf\xbd\"}}\n\n");
    json_t *parsed = json_loads(b.p + strlen("event: error\ndata: "), JSON_DISABLE_EOF_CHECK, NULL);
    ASSERT(parsed != NULL);
    json_decref(parsed);
    leo_buf_release(&b);
    leo_messages_stream_free(st);
}

TEST(event_usage)
{
    struct leo_usage u = {0};
    char *start = q("{'type':'message_start','message':{'id':'msg_1','type':'message','role':'assistant','model':"
                    "'claude','content':[],'stop_reason':null,'stop_sequence':null,'usage':{'input_tokens':25,"
                    "'cache_creation_input_tokens':100,'cache_read_input_tokens':2000,'output_tokens':1}}}");
    ASSERT(leo_anthropic_event_usage(LEO_STR_LIT("message_start"), leo_str_c(start), &u));
    ASSERT(u.have);
    ASSERT_EQ(u.input_tokens, 2125);
    ASSERT_EQ(u.cache_read_tokens, 2000);
    ASSERT_EQ(u.cache_write_tokens, 100);
    ASSERT_EQ(u.output_tokens, 1);

    char *ping = q("{'type':'ping'}");
    ASSERT(!leo_anthropic_event_usage(LEO_STR_LIT("ping"), leo_str_c(ping), &u));
    char *cbd = q("{'type':'content_block_delta','index':0,'delta':{'type':'text_delta','text':'usage'}}");
    ASSERT(!leo_anthropic_event_usage(LEO_STR_LIT("content_block_delta"), leo_str_c(cbd), &u));

    /* Classic message_delta: only output_tokens; the prompt counts stay. */
    char *delta = q("{'type':'message_delta','delta':{'stop_reason':'end_turn','stop_sequence':null},"
                    "'usage':{'output_tokens':15}}");
    ASSERT(leo_anthropic_event_usage(LEO_STR_LIT("message_delta"), leo_str_c(delta), &u));
    ASSERT_EQ(u.input_tokens, 2125);
    ASSERT_EQ(u.output_tokens, 15);
    ASSERT_EQ(u.cache_read_tokens, 2000);

    /* Newer message_delta: final cumulative input counters replace the earlier ones. */
    char *delta2 = q("{'type':'message_delta','delta':{'stop_reason':'tool_use','stop_sequence':null},"
                     "'usage':{'input_tokens':30,'cache_read_input_tokens':1500,'output_tokens':40}}");
    ASSERT(leo_anthropic_event_usage(LEO_STR_LIT("message_delta"), leo_str_c(delta2), &u));
    ASSERT_EQ(u.input_tokens, 30 + 1500 + 100);
    ASSERT_EQ(u.cache_read_tokens, 1500);
    ASSERT_EQ(u.cache_write_tokens, 100);
    ASSERT_EQ(u.output_tokens, 40);

    /* Without an event name the data's type decides. */
    struct leo_usage v = {0};
    ASSERT(leo_anthropic_event_usage((struct leo_str){NULL, 0}, leo_str_c(delta), &v));
    ASSERT_EQ(v.output_tokens, 15);
    ASSERT_EQ(v.input_tokens, 0);
    ASSERT(!leo_anthropic_event_usage((struct leo_str){NULL, 0}, LEO_STR_LIT("not json"), &v));
    ASSERT(!leo_anthropic_event_usage(LEO_STR_LIT("message_start"), LEO_STR_LIT("{\"type\":\"message_start\"}"), &v));
    leo_free(start);
    leo_free(ping);
    leo_free(cbd);
    leo_free(delta);
    leo_free(delta2);
}

/* ---- emit mode for the SDK test ---------------------------------------------------------------------------- */

static int emit_case(const char *mode, const char *name)
{
    if (strcmp(mode, "--emit-stream") == 0) {
        for (size_t i = 0; i < sizeof(stream_cases) / sizeof(stream_cases[0]); i++) {
            if (strcmp(stream_cases[i].name, name) != 0)
                continue;
            char *s = run_stream(&stream_cases[i], false);
            fputs(s, stdout);
            leo_free(s);
            return 0;
        }
    } else if (strcmp(mode, "--emit-response") == 0) {
        for (size_t i = 0; i < sizeof(response_cases) / sizeof(response_cases[0]); i++) {
            if (strcmp(response_cases[i].name, name) != 0)
                continue;
            json_t *m = translate_response(&response_cases[i]);
            char *s = json_dumps(m, JSON_COMPACT);
            fputs(s, stdout);
            free(s);
            json_decref(m);
            return 0;
        }
    }
    fprintf(stderr, "usage: test_messages [--emit-stream|--emit-response CASE]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 3)
        return emit_case(argv[1], argv[2]);
    static const struct test_case cases[] = {
        TEST_ENTRY(request_text),
        TEST_ENTRY(request_system_string_and_sampling),
        TEST_ENTRY(request_system_blocks_drop_cache_control),
        TEST_ENTRY(request_content_blocks_and_images),
        TEST_ENTRY(request_tools_and_tool_choice),
        TEST_ENTRY(request_multi_turn_with_parallel_tool_results),
        TEST_ENTRY(request_thinking_history_and_budget),
        TEST_ENTRY(request_output_config),
        TEST_ENTRY(request_only_tool_results_and_empty_content),
        TEST_ENTRY(request_errors_name_the_field),
        TEST_ENTRY(response_golden),
        TEST_ENTRY(response_errors),
        TEST_ENTRY(stop_reasons),
        TEST_ENTRY(stream_golden),
        TEST_ENTRY(stream_thinking_after_signature_opens_a_new_block),
        TEST_ENTRY(stream_tool_calls_without_index_or_with_reused_index),
        TEST_ENTRY(stream_tool_call_resumed_after_close_is_an_upstream_error),
        TEST_ENTRY(stream_tool_call_without_id_gets_a_stable_one),
        TEST_ENTRY(stream_ignores_other_choices_and_rejects_garbage),
        TEST_ENTRY(stream_output_cap_is_all_or_nothing),
        TEST_ENTRY(error_event_escapes_and_repairs_the_message),
        TEST_ENTRY(event_usage),
    };
    return test_run_all(cases, sizeof(cases) / sizeof(cases[0]));
}
