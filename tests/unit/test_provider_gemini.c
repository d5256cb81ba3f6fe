/*
 * test_provider_gemini.c — golden tests of the Gemini adapter: canonical requests → exact generateContent
 * bodies, recorded Gemini responses → exact chat.completion objects, and recorded streamGenerateContent (SSE)
 * event sequences → the exact canonical chunks, event by event. JSON is compared as compact text. In the
 * literals below a single quote stands for a double quote, to keep the goldens readable.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/arena.h"
#include "common/buf.h"
#include "common/error.h"
#include "gateway/config.h"
#include "gateway/providers/gemini.h"
#include "gateway/sse.h"
#include "tests/unit/test.h"

static const struct leo_adapter *A = &leo_adapter_gemini;

static const struct leo_adapter_ctx CTX = {
    .model = "gemini-2.5-flash",
    .default_max_tokens = 4096,
    .response_id = "chatcmpl-gem1",
    .created = 1700000000,
};

/* The literal with every ' turned into " (caller frees). */
static char *q(const char *s)
{
    char *out = leo_strdup(s);
    for (char *p = out; *p; p++)
        if (*p == '\'')
            *p = '"';
    return out;
}

static json_t *load(const char *text)
{
    char *s = q(text);
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (j == NULL)
        TEST_FAIL_("test input is not JSON (%s): %s", e.text, s);
    leo_free(s);
    return j;
}

static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    ASSERT(s != NULL);
    return s;
}

/* build_chat(request) must succeed and produce exactly `expect`. */
static void expect_build(const char *request, const char *expect)
{
    json_t *req = load(request);
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    int rc = A->build_chat(req, &CTX, &body, &err);
    if (rc != 0)
        TEST_FAIL_("build_chat failed (%d): %s", rc, err.p);
    char *want = q(expect);
    ASSERT_STR_EQ(body.p, want);
    leo_free(want);
    leo_buf_release(&body);
    leo_buf_release(&err);
    json_decref(req);
}

/* build_chat(request) must fail with LEO_EINVAL, an untouched body and exactly this message. */
static void expect_build_error(const char *request, const char *message)
{
    json_t *req = load(request);
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    ASSERT_EQ(A->build_chat(req, &CTX, &body, &err), LEO_EINVAL);
    ASSERT_EQ(body.len, 0);
    char *want = q(message);
    ASSERT_STR_EQ(err.p, want);
    leo_free(want);
    leo_buf_release(&body);
    leo_buf_release(&err);
    json_decref(req);
}

/* parse_chat(response) must produce exactly `expect`; returns the usage it reported. */
static struct leo_usage expect_parse(const char *response, const char *expect)
{
    char *body = q(response);
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    json_t *out = A->parse_chat(body, strlen(body), &CTX, &u, &err);
    if (out == NULL)
        TEST_FAIL_("parse_chat failed: %s", err.p);
    char *got = dump(out);
    char *want = q(expect);
    ASSERT_STR_EQ(got, want);
    free(got);
    leo_free(want);
    leo_free(body);
    json_decref(out);
    leo_buf_release(&err);
    return u;
}

static void expect_parse_error(const char *response, const char *message)
{
    char *body = q(response);
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    ASSERT(A->parse_chat(body, strlen(body), &CTX, &u, &err) == NULL);
    ASSERT_STR_EQ(err.p, message);
    ASSERT(!u.have);
    leo_free(body);
    leo_buf_release(&err);
}

/* A stream under test: each event's chunks are checked as soon as the event is fed. */
struct stream {
    struct leo_stream_xlate *st;
    struct leo_usage u;
    struct leo_buf err;
};

static void stream_open(struct stream *s)
{
    memset(s, 0, sizeof(*s));
    s->st = A->stream_new(&CTX);
    s->err = (struct leo_buf)LEO_BUF_INIT;
}

static void stream_close(struct stream *s)
{
    A->stream_free(s->st);
    leo_buf_release(&s->err);
}

/* The chunks in out, one compact JSON per line. */
static char *chunk_lines(json_t *out)
{
    struct leo_buf b = LEO_BUF_INIT;
    size_t i;
    json_t *c;
    json_array_foreach(out, i, c)
    {
        char *s = dump(c);
        leo_buf_adds(&b, s);
        leo_buf_addch(&b, '\n');
        free(s);
    }
    return leo_buf_detach(&b, NULL);
}

/* Feeds one event's data; it must return rc and emit exactly the chunk lines `expect`. */
static void feed(struct stream *s, const char *data, int rc, const char *expect)
{
    char *d = q(data);
    json_t *out = json_array();
    ASSERT_EQ(A->stream_event(s->st, leo_str_c(""), leo_str_c(d), out, &s->u, &s->err), rc);
    char *got = chunk_lines(out);
    char *want = q(expect);
    ASSERT_STR_EQ(got, want);
    leo_free(got);
    leo_free(want);
    leo_free(d);
    json_decref(out);
}

static void end(struct stream *s, int rc, const char *expect)
{
    json_t *out = json_array();
    ASSERT_EQ(A->stream_end(s->st, out, &s->u, &s->err), rc);
    char *got = chunk_lines(out);
    char *want = q(expect);
    ASSERT_STR_EQ(got, want);
    leo_free(got);
    leo_free(want);
    json_decref(out);
}

#define CHUNK "{'id':'chatcmpl-gem1','object':'chat.completion.chunk','created':1700000000,'model':'gemini-2.5-flash',"
#define ROLE0                                                                                                          \
    CHUNK "'choices':[{'index':0,'delta':{'role':'assistant','content':''},'logprobs':null,'finish_reason':null}]}\n"

/* ---- URL and headers ---- */

TEST(chat_url)
{
    struct leo_provider p = {.base_url = "https://generativelanguage.googleapis.com/v1beta"};
    struct leo_buf url = LEO_BUF_INIT;
    ASSERT_EQ(A->chat_url(&p, "gemini-2.5-flash", false, &url), 0);
    ASSERT_STR_EQ(url.p, "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent");
    leo_buf_reset(&url);
    ASSERT_EQ(A->chat_url(&p, "gemini-2.5-flash", true, &url), 0);
    ASSERT_STR_EQ(url.p, "https://generativelanguage.googleapis.com/v1beta/models/"
                         "gemini-2.5-flash:streamGenerateContent?alt=sse");
    leo_buf_reset(&url);
    ASSERT_EQ(A->chat_url(&p, "models/gemini-2.0-flash-001", false, &url), 0);
    ASSERT_STR_EQ(url.p,
                  "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash-001:generateContent");
    leo_buf_reset(&url);
    ASSERT_EQ(A->chat_url(&p, "a b/../c?d:e", false, &url), 0);
    ASSERT_STR_EQ(url.p, "https://generativelanguage.googleapis.com/v1beta/models/"
                         "a%20b%2F..%2Fc%3Fd%3Ae:generateContent");
    leo_buf_reset(&url);
    ASSERT_EQ(A->chat_url(&p, "", false, &url), LEO_EINVAL);
    ASSERT_EQ(A->chat_url(&p, "models/", false, &url), LEO_EINVAL);
    leo_buf_release(&url);
}

TEST(auth_headers)
{
    struct leo_provider p = {.base_url = "https://generativelanguage.googleapis.com/v1beta"};
    struct leo_arena a = LEO_ARENA_INIT;
    struct leo_http_header h[2];
    size_t n = 0;
    char key[] = "AIza-secret";
    A->auth_headers(&p, leo_str_c(key), h, &n, 2, &a);
    ASSERT_EQ(n, 1);
    key[0] = 'X'; /* the header keeps its own copy */
    ASSERT_MEM_EQ(h[0].name.p, h[0].name.len, "x-goog-api-key", 14);
    ASSERT_MEM_EQ(h[0].value.p, h[0].value.len, "AIza-secret", 11);
    A->auth_headers(&p, leo_str_c(""), h, &n, 2, &a); /* no key: no header */
    ASSERT_EQ(n, 1);
    A->auth_headers(&p, leo_str_c("k2"), h, &n, 1, &a); /* no room: nothing written */
    ASSERT_EQ(n, 1);
    leo_arena_destroy(&a);
}

/* ---- requests ---- */

TEST(build_text_system_and_generation_config)
{
    expect_build("{'model':'gem','stream':true,'stream_options':{'include_usage':true},'user':'u1','store':false,"
                 "'messages':["
                 "{'role':'system','content':'You are terse.'},"
                 "{'role':'developer','content':[{'type':'text','text':'Answer in French.'}]},"
                 "{'role':'user','content':'Hi','name':'ann'},"
                 "{'role':'assistant','content':'Bonjour','reasoning_content':'greeting','refusal':null},"
                 "{'role':'user','content':[{'type':'text','text':'How are'},{'type':'text','text':' you?'}]}],"
                 "'temperature':0.5,'top_p':0.25,'max_tokens':100,'stop':'END','seed':7,'n':2,"
                 "'presence_penalty':0,'frequency_penalty':1.5,'logit_bias':{'50256':-100},'logprobs':false,"
                 "'parallel_tool_calls':true,'metadata':{'a':'b'},'service_tier':'auto','top_k':null}",
                 "{'contents':["
                 "{'role':'user','parts':[{'text':'Hi'}]},"
                 "{'role':'model','parts':[{'text':'Bonjour'}]},"
                 "{'role':'user','parts':[{'text':'How are'},{'text':' you?'}]}],"
                 "'systemInstruction':{'parts':[{'text':'You are terse.'},{'text':'Answer in French.'}]},"
                 "'generationConfig':{'stopSequences':['END'],'candidateCount':2,'maxOutputTokens':100,"
                 "'temperature':0.5,'topP':0.25,'seed':7,'presencePenalty':0,'frequencyPenalty':1.5}}");
}

TEST(build_max_completion_tokens_wins_and_stop_list)
{
    expect_build("{'messages':[{'role':'user','content':'x'}],'max_completion_tokens':50,'max_tokens':9,"
                 "'stop':['a','b'],'top_k':40}",
                 "{'contents':[{'role':'user','parts':[{'text':'x'}]}],"
                 "'generationConfig':{'stopSequences':['a','b'],'maxOutputTokens':50,'topK':40}}");
}

TEST(build_images_audio_and_files)
{
    expect_build("{'messages':[{'role':'user','content':["
                 "{'type':'text','text':'What is in these?'},"
                 "{'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0K','detail':'high'}},"
                 "{'type':'input_audio','input_audio':{'data':'UklGRg==','format':'wav'}},"
                 "{'type':'file','file':{'filename':'a.pdf','file_data':'data:application/pdf;base64,JVBERi0='}}"
                 "]}]}",
                 "{'contents':[{'role':'user','parts':[{'text':'What is in these?'},"
                 "{'inlineData':{'mimeType':'image/png','data':'iVBORw0K'}},"
                 "{'inlineData':{'mimeType':'audio/wav','data':'UklGRg=='}},"
                 "{'inlineData':{'mimeType':'application/pdf','data':'JVBERi0='}}]}]}");
}

TEST(build_multi_turn_with_parallel_tool_results)
{
    /* The first assistant turn carries Gemini's thought signature (as Google's OpenAI endpoint returns it);
     * the second has none, so it gets the validator-skipping placeholder. Tool results name their function
     * through the call id, merge into one user turn, and join the following user text. */
    expect_build(
        "{'messages':["
        "{'role':'user','content':'Weather in Paris and Rome?'},"
        "{'role':'assistant','content':null,'tool_calls':["
        "{'id':'call_0_0','type':'function','function':{'name':'get_weather','arguments':'{\\'city\\':\\'Paris\\'}'},"
        "'extra_content':{'google':{'thought_signature':'c2lnMQ=='}}},"
        "{'id':'call_0_1','type':'function','function':{'name':'get_weather','arguments':'{\\'city\\':\\'Rome\\'}'}}]},"
        "{'role':'tool','tool_call_id':'call_0_0','content':'{\\'temp_c\\':21}'},"
        "{'role':'tool','tool_call_id':'call_0_1','content':[{'type':'text','text':'sunny, '},"
        "{'type':'text','text':'25C'}]},"
        "{'role':'user','content':'And the time there?'},"
        "{'role':'assistant','content':'Checking.','tool_calls':["
        "{'id':'x1','type':'function','function':{'name':'get_time','arguments':''}}]},"
        "{'role':'tool','tool_call_id':'x1','content':'[1,2]'}]}",
        "{'contents':["
        "{'role':'user','parts':[{'text':'Weather in Paris and Rome?'}]},"
        "{'role':'model','parts':[{'functionCall':{'name':'get_weather','args':{'city':'Paris'}},"
        "'thoughtSignature':'c2lnMQ=='},"
        "{'functionCall':{'name':'get_weather','args':{'city':'Rome'}}}]},"
        "{'role':'user','parts':["
        "{'functionResponse':{'name':'get_weather','response':{'temp_c':21}}},"
        "{'functionResponse':{'name':'get_weather','response':{'content':'sunny, 25C'}}},"
        "{'text':'And the time there?'}]},"
        "{'role':'model','parts':[{'text':'Checking.'},"
        "{'functionCall':{'name':'get_time','args':{}},'thoughtSignature':'skip_thought_signature_validator'}]},"
        "{'role':'user','parts':[{'functionResponse':{'name':'get_time','response':{'content':'[1,2]'}}}]}]}");
}

TEST(build_tool_call_ids_resolve_to_the_nearest_earlier_call)
{
    /* Gemini-made ids repeat across turns ("call_0_0" each time): the nearest earlier call names the result. */
    expect_build("{'messages':[{'role':'user','content':'go'},"
                 "{'role':'assistant','tool_calls':[{'id':'call_0_0','type':'function',"
                 "'function':{'name':'a','arguments':'{}'}}]},"
                 "{'role':'tool','tool_call_id':'call_0_0','content':'1'},"
                 "{'role':'assistant','tool_calls':[{'id':'call_0_0','type':'function',"
                 "'function':{'name':'b','arguments':'{}'}}]},"
                 "{'role':'tool','tool_call_id':'call_0_0','content':'2'}]}",
                 "{'contents':[{'role':'user','parts':[{'text':'go'}]},"
                 "{'role':'model','parts':[{'functionCall':{'name':'a','args':{}},"
                 "'thoughtSignature':'skip_thought_signature_validator'}]},"
                 "{'role':'user','parts':[{'functionResponse':{'name':'a','response':{'content':'1'}}}]},"
                 "{'role':'model','parts':[{'functionCall':{'name':'b','args':{}},"
                 "'thoughtSignature':'skip_thought_signature_validator'}]},"
                 "{'role':'user','parts':[{'functionResponse':{'name':'b','response':{'content':'2'}}}]}]}");
}

TEST(build_tools_rewrites_json_schema)
{
    expect_build(
        "{'messages':[{'role':'user','content':'x'}],'tools':["
        "{'type':'function','function':{'name':'book','description':'Books a trip.','strict':true,'parameters':{"
        "'$schema':'http://json-schema.org/draft-07/schema#','type':'object','additionalProperties':false,"
        "'properties':{"
        "'when':{'type':'string','format':'date-time'},"
        "'site':{'type':'string','format':'uri','minLength':3},"
        "'party':{'type':['integer','null'],'minimum':1,'exclusiveMaximum':10},"
        "'mode':{'enum':['air','rail']},"
        "'class':{'const':'eco'},"
        "'level':{'type':'integer','enum':[1,2,3]},"
        "'who':{'anyOf':[{'$ref':'#/$defs/Person'},{'type':'null'}],'description':'Traveller'},"
        "'tags':{'type':'array','items':{'type':'string'},'uniqueItems':true,'maxItems':5},"
        "'either':{'oneOf':[{'type':'string'},{'type':'number'}]},"
        "'wrapped':{'allOf':[{'$ref':'#/$defs/Person'}],'description':'Wrapped'}},"
        "'required':['when'],"
        "'$defs':{'Person':{'type':'object','title':'Person','properties':{'name':{'type':'string'}},"
        "'required':['name'],'additionalProperties':false}}}}},"
        "{'type':'function','function':{'name':'now','parameters':{'type':'object','properties':{}}}},"
        "{'type':'function','function':{'name':'ping'}}],"
        "'tool_choice':'required'}",
        "{'contents':[{'role':'user','parts':[{'text':'x'}]}],"
        "'tools':[{'functionDeclarations':["
        "{'name':'book','description':'Books a trip.','parameters':{'type':'OBJECT','properties':{"
        "'when':{'type':'STRING','format':'date-time'},"
        "'site':{'type':'STRING','minLength':3},"
        "'party':{'nullable':true,'type':'INTEGER','minimum':1},"
        "'mode':{'enum':['air','rail'],'type':'STRING'},"
        "'class':{'enum':['eco'],'type':'STRING'},"
        "'level':{'type':'INTEGER'},"
        "'who':{'nullable':true,'type':'OBJECT','title':'Person','properties':{'name':{'type':'STRING'}},"
        "'required':['name'],'description':'Traveller'},"
        "'tags':{'type':'ARRAY','items':{'type':'STRING'},'maxItems':5},"
        "'either':{'anyOf':[{'type':'STRING'},{'type':'NUMBER'}]},"
        "'wrapped':{'type':'OBJECT','title':'Person','properties':{'name':{'type':'STRING'}},"
        "'required':['name'],'description':'Wrapped'}},"
        "'required':['when']}},"
        "{'name':'now'},{'name':'ping'}]}],"
        "'toolConfig':{'functionCallingConfig':{'mode':'ANY'}}}");
}

TEST(build_tool_choice_variants)
{
    const char *msgs = "{'messages':[{'role':'user','content':'x'}],'tools':[{'type':'function','function':"
                       "{'name':'f','parameters':{'type':'object','properties':{'a':{'type':'string'}}}}}],";
    const char *decl = "{'contents':[{'role':'user','parts':[{'text':'x'}]}],'tools':[{'functionDeclarations':"
                       "[{'name':'f','parameters':{'type':'OBJECT','properties':{'a':{'type':'STRING'}}}}]}],";
    char req[512], want[512];
    snprintf(req, sizeof(req), "%s'tool_choice':'auto'}", msgs);
    snprintf(want, sizeof(want), "%s'toolConfig':{'functionCallingConfig':{'mode':'AUTO'}}}", decl);
    expect_build(req, want);
    snprintf(req, sizeof(req), "%s'tool_choice':'none'}", msgs);
    snprintf(want, sizeof(want), "%s'toolConfig':{'functionCallingConfig':{'mode':'NONE'}}}", decl);
    expect_build(req, want);
    snprintf(req, sizeof(req), "%s'tool_choice':{'type':'function','function':{'name':'f'}}}", msgs);
    snprintf(want, sizeof(want),
             "%s'toolConfig':{'functionCallingConfig':{'mode':'ANY','allowedFunctionNames':['f']}}}", decl);
    expect_build(req, want);
    snprintf(req, sizeof(req), "%s'tool_choice':'sometimes'}", msgs);
    expect_build_error(req, "tool_choice: expected 'auto', 'none', 'required' or "
                            "{'type':'function','function':{'name':...}}");
}

TEST(build_tool_choice_without_tools_is_left_out)
{
    expect_build("{'messages':[{'role':'user','content':'x'}],'tool_choice':'none','tools':[]}",
                 "{'contents':[{'role':'user','parts':[{'text':'x'}]}]}");
}

TEST(build_response_format_and_reasoning_effort)
{
    expect_build("{'messages':[{'role':'user','content':'x'}],'response_format':{'type':'json_object'},"
                 "'reasoning_effort':'low'}",
                 "{'contents':[{'role':'user','parts':[{'text':'x'}]}],'generationConfig':{"
                 "'responseMimeType':'application/json','thinkingConfig':{'includeThoughts':true,"
                 "'thinkingBudget':1024}}}");
    expect_build("{'messages':[{'role':'user','content':'x'}],'reasoning_effort':'none','response_format':"
                 "{'type':'json_schema','json_schema':{'name':'pt','strict':true,'schema':{'type':'object',"
                 "'properties':{'x':{'type':'number'},'y':{'type':'number'}},'required':['x','y'],"
                 "'additionalProperties':false}}}}",
                 "{'contents':[{'role':'user','parts':[{'text':'x'}]}],'generationConfig':{"
                 "'responseMimeType':'application/json','responseSchema':{'type':'OBJECT','properties':{"
                 "'x':{'type':'NUMBER'},'y':{'type':'NUMBER'}},'required':['x','y']},"
                 "'thinkingConfig':{'thinkingBudget':0}}}");
    expect_build("{'messages':[{'role':'user','content':'x'}],'reasoning_effort':'high','response_format':"
                 "{'type':'text'}}",
                 "{'contents':[{'role':'user','parts':[{'text':'x'}]}],'generationConfig':{"
                 "'thinkingConfig':{'includeThoughts':true,'thinkingBudget':24576}}}");
}

TEST(build_rejects_what_gemini_cannot_express)
{
    expect_build_error("{'messages':[{'role':'function','name':'f','content':'1'}]}",
                       "messages[0].role: 'function' is not supported by gemini");
    expect_build_error("{'messages':[{'role':'user','content':[{'type':'video','video':{}}]}]}",
                       "messages[0].content[0].type: 'video' is not supported by gemini");
    expect_build_error("{'messages':[{'role':'system','content':[{'type':'image_url','image_url':{'url':'x'}}]}]}",
                       "messages[0].content[0].type: 'image_url' is not supported by gemini in a system message");
    expect_build_error("{'messages':[{'role':'user','content':[{'type':'image_url',"
                       "'image_url':{'url':'https://example.com/cat.png'}}]}]}",
                       "messages[0].content[0].image_url.url: gemini takes files only inline, as base64 data: "
                       "URIs (it does not fetch URLs)");
    expect_build_error("{'messages':[{'role':'user','content':[{'type':'image_url',"
                       "'image_url':{'url':'data:image/png,rawbytes'}}]}]}",
                       "messages[0].content[0].image_url.url: the data: URI must be base64-encoded");
    expect_build_error("{'messages':[{'role':'user','content':[{'type':'file','file':{'file_id':'file-1'}}]}]}",
                       "messages[0].content[0].file: gemini needs the file inline (file_data); file_id is not "
                       "supported");
    expect_build_error("{'messages':[{'role':'user','content':[{'type':'input_audio','input_audio':"
                       "{'data':'AA==','format':'opus'}}]}]}",
                       "messages[0].content[0].input_audio.format: 'opus' is not supported by gemini");
    expect_build_error("{'messages':[{'role':'user','content':'x'},{'role':'tool','tool_call_id':'c9','content':'1'}]}",
                       "messages[1].tool_call_id: 'c9' matches no tool call of an earlier assistant message");
    expect_build_error("{'messages':[{'role':'assistant','tool_calls':[{'id':'c','type':'function',"
                       "'function':{'name':'f','arguments':'[1]'}}]}]}",
                       "messages[0].tool_calls[0].function.arguments: expected a JSON object");
    expect_build_error("{'messages':[{'role':'system','content':'only me'}]}",
                       "messages: gemini needs at least one non-empty user or assistant message");
    expect_build_error("{'messages':'hi'}", "messages: expected an array");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'logprobs':true}",
                       "logprobs: not supported by gemini");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'modalities':['text','audio']}",
                       "modalities[1]: only 'text' output is supported by gemini");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'functions':[{'name':'f'}]}",
                       "functions: not supported by gemini");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'tools':[{'type':'web_search'}]}",
                       "tools[0].type: 'web_search' is not supported by gemini (only function tools are)");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'temperature':'hot'}",
                       "temperature: expected a number");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'reasoning_effort':'extreme'}",
                       "reasoning_effort: expected 'none', 'minimal', 'low', 'medium' or 'high'");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'tools':[{'type':'function','function':"
                       "{'name':'f','parameters':{'type':'object','properties':{'a':"
                       "{'allOf':[{'type':'string'},{'minLength':2}]}}}}}]}",
                       "tools[0].function.parameters.properties.a.allOf: only a single-schema allOf is supported "
                       "by gemini");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'tools':[{'type':'function','function':"
                       "{'name':'f','parameters':{'type':'object','properties':{'a':{'$ref':'#/$defs/N'}},"
                       "'$defs':{'N':{'type':'object','properties':{'next':{'$ref':'#/$defs/N'}}}}}}}]}",
                       "tools[0].function.parameters.properties.a.properties.next.properties.next.properties.next"
                       ".properties.next.properties.next.properties.next.properties.next.properties.next"
                       ".properties.next.properties.next.properties.next.properties.next.properties.next"
                       ".properties.next.properties.next.properties.next: schema nests too deeply or expands too "
                       "far (a recursive '$ref'?)");
    expect_build_error("{'messages':[{'role':'user','content':'x'}],'response_format':{'type':'json_schema',"
                       "'json_schema':{'schema':{'$ref':'https://example.com/s.json'}}}}",
                       "response_format.json_schema.schema.$ref: 'https://example.com/s.json' cannot be resolved "
                       "(only local '#/...' references are supported)");
}

TEST(build_bounds_ref_fan_out)
{
    /* Each level refers to the next twice: 2^20 nodes if expanded naively. */
    struct leo_buf r = LEO_BUF_INIT;
    leo_buf_adds(&r, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
                     "\"function\":{\"name\":\"f\",\"parameters\":{\"$ref\":\"#/$defs/d0\",\"$defs\":{");
    for (int i = 0; i < 20; i++)
        leo_buf_addf(&r,
                     "\"d%d\":{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/d%d\"},"
                     "\"b\":{\"$ref\":\"#/$defs/d%d\"}}},",
                     i, i + 1, i + 1);
    leo_buf_adds(&r, "\"d20\":{\"type\":\"string\"}}}}}]}");
    json_t *req = json_loads(r.p, 0, NULL);
    ASSERT(req != NULL);
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    ASSERT_EQ(A->build_chat(req, &CTX, &body, &err), LEO_EINVAL);
    ASSERT(strstr(err.p, "schema nests too deeply or expands too far") != NULL);
    json_decref(req);
    leo_buf_release(&r);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

/* ---- responses ---- */

TEST(parse_text_with_thoughts_and_usage)
{
    struct leo_usage u = expect_parse(
        "{'candidates':[{'content':{'role':'model','parts':["
        "{'text':'Let me think. ','thought':true},{'text':'Sum is 4.','thought':true},"
        "{'text':'2 + 2 = '},{'text':'4.','thoughtSignature':'c2ln'}]},"
        "'finishReason':'STOP','index':0}],"
        "'usageMetadata':{'promptTokenCount':12,'candidatesTokenCount':5,'totalTokenCount':57,"
        "'cachedContentTokenCount':8,'thoughtsTokenCount':40,"
        "'promptTokensDetails':[{'modality':'TEXT','tokenCount':12}]},"
        "'modelVersion':'gemini-2.5-flash','responseId':'abc'}",
        "{'id':'chatcmpl-gem1','object':'chat.completion','created':1700000000,'model':'gemini-2.5-flash',"
        "'choices':[{'index':0,'message':{'role':'assistant','content':'2 + 2 = 4.',"
        "'reasoning_content':'Let me think. Sum is 4.'},'logprobs':null,'finish_reason':'stop'}],"
        "'usage':{'prompt_tokens':12,'completion_tokens':45,'total_tokens':57,"
        "'prompt_tokens_details':{'cached_tokens':8},'completion_tokens_details':{'reasoning_tokens':40}}}");
    ASSERT(u.have);
    ASSERT_EQ(u.input_tokens, 12);
    ASSERT_EQ(u.output_tokens, 45);
    ASSERT_EQ(u.cache_read_tokens, 8);
    ASSERT_EQ(u.cache_write_tokens, 0);
}

TEST(parse_parallel_tool_calls)
{
    struct leo_usage u = expect_parse(
        "{'candidates':[{'content':{'role':'model','parts':["
        "{'text':'Looking both up.'},"
        "{'functionCall':{'name':'get_weather','args':{'city':'Paris','units':['c']}},'thoughtSignature':'c2lnMQ=='},"
        "{'functionCall':{'name':'get_time','args':{}}},"
        "{'functionCall':{'name':'noargs'}}]},"
        "'finishReason':'STOP','index':0}],"
        "'usageMetadata':{'promptTokenCount':30,'candidatesTokenCount':20,'totalTokenCount':50}}",
        "{'id':'chatcmpl-gem1','object':'chat.completion','created':1700000000,'model':'gemini-2.5-flash',"
        "'choices':[{'index':0,'message':{'role':'assistant','content':'Looking both up.','tool_calls':["
        "{'id':'call_0_0','type':'function','function':{'name':'get_weather',"
        "'arguments':'{\\'city\\':\\'Paris\\',\\'units\\':[\\'c\\']}'},"
        "'extra_content':{'google':{'thought_signature':'c2lnMQ=='}}},"
        "{'id':'call_0_1','type':'function','function':{'name':'get_time','arguments':'{}'}},"
        "{'id':'call_0_2','type':'function','function':{'name':'noargs','arguments':'{}'}}]},"
        "'logprobs':null,'finish_reason':'tool_calls'}],"
        "'usage':{'prompt_tokens':30,'completion_tokens':20,'total_tokens':50}}");
    ASSERT_EQ(u.input_tokens, 30);
    ASSERT_EQ(u.output_tokens, 20);
}

TEST(parse_several_candidates_and_finish_reasons)
{
    expect_parse("{'candidates':["
                 "{'content':{'parts':[{'text':'one'}],'role':'model'},'finishReason':'MAX_TOKENS','index':0},"
                 "{'content':{'parts':[{'text':'two'}],'role':'model'},'finishReason':'RECITATION','index':1},"
                 "{'finishReason':'SAFETY','index':2,'safetyRatings':[]},"
                 "{'content':{'parts':[{'text':'four'}]},'finishReason':'MALFORMED_FUNCTION_CALL','index':3}]}",
                 "{'id':'chatcmpl-gem1','object':'chat.completion','created':1700000000,'model':'gemini-2.5-flash',"
                 "'choices':["
                 "{'index':0,'message':{'role':'assistant','content':'one'},'logprobs':null,'finish_reason':'length'},"
                 "{'index':1,'message':{'role':'assistant','content':'two'},'logprobs':null,"
                 "'finish_reason':'content_filter'},"
                 "{'index':2,'message':{'role':'assistant','content':null},'logprobs':null,"
                 "'finish_reason':'content_filter'},"
                 "{'index':3,'message':{'role':'assistant','content':'four'},'logprobs':null,"
                 "'finish_reason':'stop'}]}");
}

TEST(parse_content_is_null_beside_calls_and_empty_without)
{
    /* An empty text part carrying a signature beside a call: content null, as OpenAI sends it. */
    expect_parse("{'candidates':[{'content':{'parts':[{'functionCall':{'name':'f','args':{'a':1}}},"
                 "{'text':'','thoughtSignature':'c2ln'}]},'finishReason':'STOP'}]}",
                 "{'id':'chatcmpl-gem1','object':'chat.completion','created':1700000000,'model':'gemini-2.5-flash',"
                 "'choices':[{'index':0,'message':{'role':'assistant','content':null,'tool_calls':["
                 "{'id':'call_0_0','type':'function','function':{'name':'f','arguments':'{\\'a\\':1}'}}]},"
                 "'logprobs':null,'finish_reason':'tool_calls'}]}");
    /* An empty answer stays an (empty) string. */
    expect_parse("{'candidates':[{'content':{'parts':[{'text':''}]},'finishReason':'STOP','index':0}]}",
                 "{'id':'chatcmpl-gem1','object':'chat.completion','created':1700000000,'model':'gemini-2.5-flash',"
                 "'choices':[{'index':0,'message':{'role':'assistant','content':''},'logprobs':null,"
                 "'finish_reason':'stop'}]}");
}

TEST(parse_blocked_prompt)
{
    struct leo_usage u =
        expect_parse("{'promptFeedback':{'blockReason':'SAFETY','safetyRatings':[]},"
                     "'usageMetadata':{'promptTokenCount':7,'totalTokenCount':7}}",
                     "{'id':'chatcmpl-gem1','object':'chat.completion','created':1700000000,'model':'gemini-2.5-flash',"
                     "'choices':[{'index':0,'message':{'role':'assistant','content':null},'logprobs':null,"
                     "'finish_reason':'content_filter'}],"
                     "'usage':{'prompt_tokens':7,'completion_tokens':0,'total_tokens':7}}");
    ASSERT(u.have);
    ASSERT_EQ(u.input_tokens, 7);
}

TEST(parse_errors)
{
    expect_parse_error("{'error':{'code':400,'message':'API key not valid.','status':'INVALID_ARGUMENT'}}",
                       "upstream error: INVALID_ARGUMENT: API key not valid.");
    expect_parse_error("not json", "upstream returned a body that is not a JSON object");
    expect_parse_error("{'usageMetadata':{'promptTokenCount':1}}", "upstream response has no candidates");
    expect_parse_error("{'candidates':{}}", "upstream response: candidates is not an array");
    expect_parse_error("{'candidates':[7]}", "upstream response: candidates[0] is not an object");
    expect_parse_error("{'candidates':[{'content':{'parts':[{'functionCall':{'args':{}}}]}}]}",
                       "upstream candidate 0 has a function call without a name");
}

TEST(error_message)
{
    char out[128];
    const char *b = "{\"error\":{\"code\":429,\"message\":\"Resource has been exhausted.\","
                    "\"status\":\"RESOURCE_EXHAUSTED\"}}";
    A->error_message(b, strlen(b), out, sizeof(out));
    ASSERT_STR_EQ(out, "RESOURCE_EXHAUSTED: Resource has been exhausted.");
    b = "[{\"error\":{\"code\":404,\"message\":\"models/x is not found.\",\"status\":\"NOT_FOUND\"}}]";
    A->error_message(b, strlen(b), out, sizeof(out));
    ASSERT_STR_EQ(out, "NOT_FOUND: models/x is not found.");
    b = "{\"error\":{\"message\":\"bare\"}}";
    A->error_message(b, strlen(b), out, sizeof(out));
    ASSERT_STR_EQ(out, "bare");
    b = "<html>502</html>";
    A->error_message(b, strlen(b), out, sizeof(out));
    ASSERT_STR_EQ(out, "");
    b = "{\"error\":{\"message\":\"0123456789abcdef\",\"status\":\"S\"}}";
    A->error_message(b, strlen(b), out, 8);
    ASSERT_STR_EQ(out, "S: 0123");
}

/* ---- streams ---- */

TEST(stream_text)
{
    struct stream s;
    stream_open(&s);
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'text':'Hello'}],'role':'model'},'index':0}],"
         "'usageMetadata':{'promptTokenCount':4,'totalTokenCount':4},'modelVersion':'gemini-2.5-flash'}",
         0, ROLE0 CHUNK "'choices':[{'index':0,'delta':{'content':'Hello'},'logprobs':null,'finish_reason':null}]}\n");
    ASSERT(s.u.have);
    ASSERT_EQ(s.u.input_tokens, 4);
    feed(&s, "{'candidates':[{'content':{'parts':[{'text':', world'}],'role':'model'},'index':0}]}", 0,
         CHUNK "'choices':[{'index':0,'delta':{'content':', world'},'logprobs':null,'finish_reason':null}]}\n");
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'text':'!'}],'role':'model'},'finishReason':'STOP','index':0}],"
         "'usageMetadata':{'promptTokenCount':4,'candidatesTokenCount':3,'totalTokenCount':7}}",
         0,
         CHUNK "'choices':[{'index':0,'delta':{'content':'!'},'logprobs':null,'finish_reason':null}]}\n" CHUNK
               "'choices':[{'index':0,'delta':{},'logprobs':null,'finish_reason':'stop'}]}\n");
    ASSERT_EQ(s.u.output_tokens, 3);
    end(&s, 0, CHUNK "'choices':[],'usage':{'prompt_tokens':4,'completion_tokens':3,'total_tokens':7}}\n");
    stream_close(&s);
}

TEST(stream_thinking_then_text)
{
    struct stream s;
    stream_open(&s);
    feed(&s, "{'candidates':[{'content':{'parts':[{'text':'**Plan**','thought':true}],'role':'model'},'index':0}]}", 0,
         ROLE0 CHUNK
         "'choices':[{'index':0,'delta':{'reasoning_content':'**Plan**'},'logprobs':null,'finish_reason':null}]}\n");
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'text':' add them','thought':true},{'text':'4'}],'role':'model'},"
         "'index':0}]}",
         0,
         CHUNK "'choices':[{'index':0,'delta':{'reasoning_content':' add them'},'logprobs':null,"
               "'finish_reason':null}]}\n" CHUNK
               "'choices':[{'index':0,'delta':{'content':'4'},'logprobs':null,'finish_reason':null}]}\n");
    /* The last event: an empty text carrying only a signature, the finish reason and the final usage. */
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'text':'','thoughtSignature':'c2ln'}],'role':'model'},"
         "'finishReason':'STOP','index':0}],'usageMetadata':{'promptTokenCount':9,'candidatesTokenCount':1,"
         "'totalTokenCount':30,'thoughtsTokenCount':20}}",
         0, CHUNK "'choices':[{'index':0,'delta':{},'logprobs':null,'finish_reason':'stop'}]}\n");
    end(&s, 0,
        CHUNK "'choices':[],'usage':{'prompt_tokens':9,'completion_tokens':21,'total_tokens':30,"
              "'completion_tokens_details':{'reasoning_tokens':20}}}\n");
    ASSERT_EQ(s.u.output_tokens, 21);
    stream_close(&s);
}

TEST(stream_parallel_tool_calls_arrive_as_they_come)
{
    struct stream s;
    stream_open(&s);
    feed(&s, "{'candidates':[{'content':{'parts':[{'text':'Checking.'}],'role':'model'},'index':0}]}", 0,
         ROLE0 CHUNK "'choices':[{'index':0,'delta':{'content':'Checking.'},'logprobs':null,'finish_reason':null}]}\n");
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'functionCall':{'name':'get_weather','args':{'city':'Paris'}},"
         "'thoughtSignature':'c2lnMQ=='}],'role':'model'},'index':0}]}",
         0,
         CHUNK "'choices':[{'index':0,'delta':{'tool_calls':[{'index':0,'id':'call_0_0','type':'function',"
               "'function':{'name':'get_weather','arguments':'{\\'city\\':\\'Paris\\'}'},"
               "'extra_content':{'google':{'thought_signature':'c2lnMQ=='}}}]},'logprobs':null,"
               "'finish_reason':null}]}\n");
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'functionCall':{'name':'get_weather','args':{'city':'Rome'}}},"
         "{'functionCall':{'name':'get_time','args':{'tz':'CET'}}}],'role':'model'},'finishReason':'STOP',"
         "'index':0}],'usageMetadata':{'promptTokenCount':50,'candidatesTokenCount':25,'totalTokenCount':75}}",
         0,
         CHUNK "'choices':[{'index':0,'delta':{'tool_calls':[{'index':1,'id':'call_0_1','type':'function',"
               "'function':{'name':'get_weather','arguments':'{\\'city\\':\\'Rome\\'}'}}]},'logprobs':null,"
               "'finish_reason':null}]}\n" CHUNK
               "'choices':[{'index':0,'delta':{'tool_calls':[{'index':2,'id':'call_0_2','type':'function',"
               "'function':{'name':'get_time','arguments':'{\\'tz\\':\\'CET\\'}'}}]},'logprobs':null,"
               "'finish_reason':null}]}\n" CHUNK
               "'choices':[{'index':0,'delta':{},'logprobs':null,'finish_reason':'tool_calls'}]}\n");
    end(&s, 0, CHUNK "'choices':[],'usage':{'prompt_tokens':50,'completion_tokens':25,'total_tokens':75}}\n");
    stream_close(&s);
}

TEST(stream_cut_after_a_tool_call)
{
    struct stream s;
    stream_open(&s);
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'functionCall':{'name':'lookup','args':{'q':'x'}}}],"
         "'role':'model'},'index':0}],'usageMetadata':{'promptTokenCount':5,'totalTokenCount':5}}",
         0,
         ROLE0 CHUNK "'choices':[{'index':0,'delta':{'tool_calls':[{'index':0,'id':'call_0_0','type':'function',"
                     "'function':{'name':'lookup','arguments':'{\\'q\\':\\'x\\'}'}}]},'logprobs':null,"
                     "'finish_reason':null}]}\n");
    end(&s, LEO_EUPSTREAM, "");
    ASSERT_STR_EQ(s.err.p, "stream ended before a finish reason");
    ASSERT(s.u.have); /* the usage seen so far is still reported */
    ASSERT_EQ(s.u.input_tokens, 5);
    stream_close(&s);
}

TEST(stream_error_event)
{
    struct stream s;
    stream_open(&s);
    feed(&s, "{'candidates':[{'content':{'parts':[{'text':'Par'}],'role':'model'},'index':0}]}", 0,
         ROLE0 CHUNK "'choices':[{'index':0,'delta':{'content':'Par'},'logprobs':null,'finish_reason':null}]}\n");
    feed(&s, "{'error':{'code':503,'message':'The model is overloaded.','status':'UNAVAILABLE'}}", LEO_EUPSTREAM, "");
    ASSERT_STR_EQ(s.err.p, "upstream error event: UNAVAILABLE: The model is overloaded.");
    stream_close(&s);

    stream_open(&s);
    feed(&s, " \r\n", 0, ""); /* an empty event is ignored */
    feed(&s, "{'candidates':[", LEO_EUPSTREAM, "");
    ASSERT_STR_EQ(s.err.p, "upstream sent a stream event that is not a JSON object");
    stream_close(&s);

    stream_open(&s);
    feed(&s, "{'candidates':[{'index':8,'content':{'parts':[{'text':'x'}]}}]}", LEO_EUPSTREAM, "");
    ASSERT_STR_EQ(s.err.p, "upstream stream names candidate 8, more than gemini returns");
    stream_close(&s);
}

TEST(stream_blocked_prompt_and_multiple_candidates)
{
    struct stream s;
    stream_open(&s);
    feed(&s,
         "{'promptFeedback':{'blockReason':'PROHIBITED_CONTENT'},'usageMetadata':{'promptTokenCount':3,"
         "'totalTokenCount':3}}",
         0, ROLE0 CHUNK "'choices':[{'index':0,'delta':{},'logprobs':null,'finish_reason':'content_filter'}]}\n");
    end(&s, 0, CHUNK "'choices':[],'usage':{'prompt_tokens':3,'completion_tokens':0,'total_tokens':3}}\n");
    stream_close(&s);

    stream_open(&s);
    feed(&s,
         "{'candidates':[{'content':{'parts':[{'text':'A'}]},'index':0},{'content':{'parts':[{'text':'B'}]},"
         "'index':1,'finishReason':'MAX_TOKENS'}]}",
         0,
         ROLE0 CHUNK "'choices':[{'index':0,'delta':{'content':'A'},'logprobs':null,'finish_reason':null}]}\n" CHUNK
                     "'choices':[{'index':1,'delta':{'role':'assistant','content':''},'logprobs':null,"
                     "'finish_reason':null}]}\n" CHUNK
                     "'choices':[{'index':1,'delta':{'content':'B'},'logprobs':null,'finish_reason':null}]}\n" CHUNK
                     "'choices':[{'index':1,'delta':{},'logprobs':null,'finish_reason':'length'}]}\n");
    end(&s, 0, ""); /* a finish was seen; no usage was reported, so no usage chunk */
    stream_close(&s);
}

/* The SSE bytes as Gemini frames them (CRLF line ends), split at arbitrary points, through the gateway's SSE
 * parser: the translation must not depend on how the bytes arrive. */
struct sse_run {
    struct leo_stream_xlate *st;
    json_t *out;
    struct leo_usage u;
    struct leo_buf err;
    int events;
    int rc;
};

static void on_sse(void *ud, struct leo_str event, struct leo_str data, struct leo_str id)
{
    (void)id;
    struct sse_run *r = ud;
    r->events++;
    int rc = A->stream_event(r->st, event, data, r->out, &r->u, &r->err);
    ASSERT(rc != 1); /* Gemini has no end event */
    if (rc < 0 && r->rc == 0)
        r->rc = rc;
}

TEST(stream_recorded_sse_bytes)
{
    static const char wire[] =
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],"
        "\"usageMetadata\": {\"promptTokenCount\": 6,\"totalTokenCount\": 6},\"modelVersion\": \"gemini-2.5-flash\","
        "\"responseId\": \"r1\"}\r\n\r\n"
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky is blue.\"}],\"role\": \"model\"},"
        "\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 6,"
        "\"candidatesTokenCount\": 5,\"totalTokenCount\": 11},\"modelVersion\": \"gemini-2.5-flash\","
        "\"responseId\": \"r1\"}\r\n\r\n";
    const char *expect =
        ROLE0 CHUNK "'choices':[{'index':0,'delta':{'content':'The'},'logprobs':null,'finish_reason':null}]}\n" CHUNK
                    "'choices':[{'index':0,'delta':{'content':' sky is blue.'},'logprobs':null,"
                    "'finish_reason':null}]}\n" CHUNK
                    "'choices':[{'index':0,'delta':{},'logprobs':null,'finish_reason':'stop'}]}\n" CHUNK
                    "'choices':[],'usage':{'prompt_tokens':6,'completion_tokens':5,'total_tokens':11}}\n";
    char *want = q(expect);
    size_t steps[] = {sizeof(wire) - 1, 1, 7, 64};
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        struct sse_run r = {.st = A->stream_new(&CTX), .out = json_array(), .err = LEO_BUF_INIT};
        struct leo_sse_parser p;
        leo_sse_parser_init(&p, 1 << 16, on_sse, &r);
        for (size_t off = 0; off < sizeof(wire) - 1; off += steps[k]) {
            size_t n = sizeof(wire) - 1 - off < steps[k] ? sizeof(wire) - 1 - off : steps[k];
            ASSERT_EQ(leo_sse_parser_feed(&p, wire + off, n), 0);
        }
        ASSERT_EQ(leo_sse_parser_finish(&p), 0);
        ASSERT_EQ(r.events, 2);
        ASSERT_EQ(r.rc, 0);
        ASSERT_EQ(A->stream_end(r.st, r.out, &r.u, &r.err), 0);
        char *got = chunk_lines(r.out);
        ASSERT_STR_EQ(got, want);
        ASSERT_EQ(r.u.input_tokens, 6);
        ASSERT_EQ(r.u.output_tokens, 5);
        leo_free(got);
        json_decref(r.out);
        A->stream_free(r.st);
        leo_buf_release(&r.err);
        leo_sse_parser_release(&p);
    }
    leo_free(want);
}

TEST(adapter_identity)
{
    ASSERT_STR_EQ(A->type, "gemini");
    ASSERT_EQ(A->dialect, LEO_DIALECT_GEMINI);
}

TEST_MAIN(TEST_ENTRY(chat_url), TEST_ENTRY(auth_headers), TEST_ENTRY(build_text_system_and_generation_config),
          TEST_ENTRY(build_max_completion_tokens_wins_and_stop_list), TEST_ENTRY(build_images_audio_and_files),
          TEST_ENTRY(build_multi_turn_with_parallel_tool_results),
          TEST_ENTRY(build_tool_call_ids_resolve_to_the_nearest_earlier_call),
          TEST_ENTRY(build_tools_rewrites_json_schema), TEST_ENTRY(build_tool_choice_variants),
          TEST_ENTRY(build_tool_choice_without_tools_is_left_out),
          TEST_ENTRY(build_response_format_and_reasoning_effort), TEST_ENTRY(build_rejects_what_gemini_cannot_express),
          TEST_ENTRY(build_bounds_ref_fan_out), TEST_ENTRY(parse_text_with_thoughts_and_usage),
          TEST_ENTRY(parse_parallel_tool_calls), TEST_ENTRY(parse_several_candidates_and_finish_reasons),
          TEST_ENTRY(parse_content_is_null_beside_calls_and_empty_without), TEST_ENTRY(parse_blocked_prompt),
          TEST_ENTRY(parse_errors), TEST_ENTRY(error_message), TEST_ENTRY(stream_text),
          TEST_ENTRY(stream_thinking_then_text), TEST_ENTRY(stream_parallel_tool_calls_arrive_as_they_come),
          TEST_ENTRY(stream_cut_after_a_tool_call), TEST_ENTRY(stream_error_event),
          TEST_ENTRY(stream_blocked_prompt_and_multiple_candidates), TEST_ENTRY(stream_recorded_sse_bytes),
          TEST_ENTRY(adapter_identity))
