/*
 * anthropic.c — the Anthropic Messages API as an upstream: POST {base_url}/messages with x-api-key and
 * anthropic-version headers; canonical (OpenAI) requests are translated into Messages requests and Messages
 * responses and event streams back into chat.completion objects and chunks.
 *
 * Request (build_chat). Mapped: messages (system/developer → top-level "system", a string when there is one
 * plain-text system message, else text blocks; user/assistant → content blocks, merging consecutive messages of
 * the same role because Anthropic requires alternation; tool messages → tool_result blocks in a user message),
 * text / image_url / file parts, assistant tool_calls → tool_use, reasoning_content + reasoning_signature → a
 * leading thinking block, max_completion_tokens or max_tokens (else ctx->default_max_tokens), temperature, top_p,
 * top_k (a common extension), stop → stop_sequences, stream, tools, tool_choice, parallel_tool_calls,
 * user (or safety_identifier) → metadata.user_id, reasoning_effort → thinking. A "cache_control" object on a
 * content part is copied onto its block (the usual way OpenAI-format clients ask for Anthropic prompt caching).
 *   Dropped because Anthropic has no equivalent and the answer keeps its meaning without them: stream_options
 * (usage is always reported), seed, frequency_penalty, presence_penalty, logit_bias, service_tier, store,
 * metadata, prediction, verbosity, prompt_cache_key, top_logprobs, response_format {"type":"text"}, a message's
 * "name", an image part's "detail", a function tool's "strict", unknown top-level members, and
 * reasoning_content that has no reasoning_signature (Anthropic rejects a thinking block without its signature,
 * so reasoning from another provider cannot be replayed; previous turns' thinking does not reach the model
 * anyway).
 *   Rejected (LEO_EINVAL) because dropping them would change the answer: response_format json_object /
 * json_schema, n > 1, logprobs true, audio output (audio, modalities other than text), legacy functions /
 * function_call, web_search_options, input_audio parts, file parts given by file_id, image URLs that are neither
 * http(s) nor base64 data URIs, non-function tools, unknown roles and part types, unparsable tool-call
 * arguments.
 *   reasoning_effort: "none" → no thinking; "minimal" and "low" → budget_tokens 1024 (Anthropic's minimum),
 * "medium" → 4096, "high" → 16384. Anthropic needs max_tokens > budget_tokens, and OpenAI's token limit counts
 * reasoning too, so when max_tokens is not above the budget it is raised to budget + default_max_tokens.
 * Temperature and forced tool_choice are passed on even with thinking; Anthropic rejects those combinations
 * with a 400 that names them. A temperature outside Anthropic's 0..1 is rejected here (OpenAI allows up to 2;
 * rescaling would silently change the sampling the client asked for).
 *   Blank tool-call arguments ("", as some clients send for a call without parameters) become input {}.
 *   Reals are printed with 15 significant digits, so a client's 0.7 goes upstream as 0.7 and a tool input's
 * 48.8566 comes back as 48.8566 (a 16- or 17-digit real loses its last digits: no tool argument needs them).
 *
 * Response (parse_chat): the chat.completion takes ctx->response_id as its id (so ids look like OpenAI's; the
 * upstream "msg_..." id is dropped), ctx->created and ctx->model; text blocks are concatenated into content (null
 * when there are none), thinking blocks into reasoning_content (with the last block's signature as
 * reasoning_signature), tool_use blocks become tool_calls with arguments = the compact JSON of input.
 * redacted_thinking blocks are dropped (their encrypted payload has no canonical field), as are server tool
 * blocks (server_tool_use, web_search_tool_result, ...) and citations. Several thinking blocks collapse into one
 * reasoning_content with one signature: a known limit of the canonical form.
 *   stop_reason → finish_reason: end_turn, stop_sequence, pause_turn → "stop"; max_tokens,
 * model_context_window_exceeded → "length"; tool_use → "tool_calls"; refusal → "content_filter"; anything else
 * → "stop".
 *
 * Stream: each event is translated as it arrives; a tool call's id and name go out with its content_block_start
 * and each input_json_delta goes out as an arguments delta at once. Empty text, thinking and partial_json deltas
 * carry nothing and produce no chunk; ping, content_block_stop and unknown event types produce nothing. The last
 * events are the finish_reason chunk and a usage chunk ("choices": []), which is always produced: the engine
 * strips it when the client did not ask for usage. Events after message_stop are ignored.
 *   Token counts above 10^15 are clamped (no real count comes near), so sums never overflow.
 */
#include "anthropic.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/alloc.h"
#include "../../common/error.h"
#include "../../common/json_scan.h"
#include "../config.h"

#define ANTH_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))
#define ANTH_TOKENS_MAX 1000000000000000ull
#define ANTH_DEFAULT_MAX_TOKENS 4096
/* Longest client-supplied value quoted in an error message. */
#define ANTH_QUOTE_MAX 64

__attribute__((format(printf, 3, 4))) static int fail(struct leo_buf *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    leo_buf_vaddf(err, fmt, ap);
    va_end(ap);
    return code;
}

static const char *str_or(json_t *v, const char *dflt)
{
    return json_is_string(v) ? json_string_value(v) : dflt;
}

/* ---------------------------------------------------------------------------------------------------------
 * Endpoint and headers
 */

static int anth_chat_url(const struct leo_provider *p, const char *model, bool stream, struct leo_buf *url)
{
    (void)model;
    (void)stream;
    return leo_buf_addf(url, "%s/messages", p->base_url);
}

static void anth_auth_headers(const struct leo_provider *p, struct leo_str key, struct leo_http_header *h, size_t *n,
                              size_t max, struct leo_arena *a)
{
    if (key.len && *n < max)
        h[(*n)++] = (struct leo_http_header){LEO_STR_LIT("x-api-key"), leo_arena_strdup_str(a, key)};
    const char *version = p->api_version && p->api_version[0] ? p->api_version : LEO_ANTHROPIC_DEFAULT_VERSION;
    if (*n < max)
        h[(*n)++] =
            (struct leo_http_header){LEO_STR_LIT("anthropic-version"), leo_arena_strdup_str(a, leo_str_c(version))};
}

/* ---------------------------------------------------------------------------------------------------------
 * Request: canonical → Messages
 */

struct req_state {
    json_t *system;    /* text blocks from system/developer messages */
    size_t nsystem;    /* system/developer messages seen */
    bool system_plain; /* the first of them was a plain string */
    json_t *messages;  /* the Messages "messages" array */
    json_t *last;      /* its last element (borrowed) */
    struct leo_buf *err;
};

static json_t *text_block(json_t *text)
{
    json_t *b = json_object();
    json_object_set_new(b, "type", json_string("text"));
    json_object_set(b, "text", text);
    return b;
}

static void copy_cache_control(json_t *part, json_t *block)
{
    json_t *cc = json_object_get(part, "cache_control");
    if (json_is_object(cc))
        json_object_set(block, "cache_control", cc);
}

/* "data:<media type>[;params];base64,<data>" → media type and data. */
static bool parse_data_uri(const char *s, size_t len, struct leo_str *media, struct leo_str *data)
{
    if (len < 5 || memcmp(s, "data:", 5) != 0)
        return false;
    const char *p = s + 5, *end = s + len;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    if (comma == NULL || comma - p < 7 || memcmp(comma - 7, ";base64", 7) != 0)
        return false;
    const char *semi = memchr(p, ';', (size_t)(comma - p));
    if (semi == p)
        return false;
    *media = leo_str_n(p, (size_t)(semi - p));
    *data = leo_str_n(comma + 1, (size_t)(end - comma - 1));
    return true;
}

static json_t *base64_source(struct leo_str media, struct leo_str data)
{
    json_t *src = json_object();
    json_object_set_new(src, "type", json_string("base64"));
    json_object_set_new(src, "media_type", json_stringn(media.p, media.len));
    json_object_set_new(src, "data", json_stringn(data.p, data.len));
    return src;
}

static json_t *image_block(json_t *part, size_t i, size_t j, struct leo_buf *err)
{
    json_t *iu = json_object_get(part, "image_url");
    json_t *url = json_is_object(iu) ? json_object_get(iu, "url") : iu;
    if (!json_is_string(url)) {
        fail(err, LEO_EINVAL, "messages[%zu].content[%zu].image_url.url: expected a string", i, j);
        return NULL;
    }
    const char *s = json_string_value(url);
    size_t len = json_string_length(url);
    json_t *src;
    struct leo_str media, data;
    if (parse_data_uri(s, len, &media, &data)) {
        src = base64_source(media, data);
    } else if (strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0) {
        src = json_object();
        json_object_set_new(src, "type", json_string("url"));
        json_object_set(src, "url", url);
    } else {
        fail(err, LEO_EINVAL,
             "messages[%zu].content[%zu].image_url.url: only http(s) URLs and base64 data URIs are supported by "
             "anthropic",
             i, j);
        return NULL;
    }
    json_t *b = json_object();
    json_object_set_new(b, "type", json_string("image"));
    json_object_set_new(b, "source", src);
    copy_cache_control(part, b);
    return b;
}

/* An OpenAI "file" part with inline data (PDFs) → a document block. */
static json_t *document_block(json_t *part, size_t i, size_t j, struct leo_buf *err)
{
    json_t *f = json_object_get(part, "file");
    json_t *fd = json_is_object(f) ? json_object_get(f, "file_data") : NULL;
    struct leo_str media, data;
    if (!json_is_string(fd) || !parse_data_uri(json_string_value(fd), json_string_length(fd), &media, &data)) {
        fail(err, LEO_EINVAL,
             "messages[%zu].content[%zu].file: only inline file_data as a base64 data URI is supported by anthropic", i,
             j);
        return NULL;
    }
    json_t *b = json_object();
    json_object_set_new(b, "type", json_string("document"));
    json_object_set_new(b, "source", base64_source(media, data));
    copy_cache_control(part, b);
    return b;
}

enum part_ctx { PART_SYSTEM, PART_USER, PART_ASSISTANT, PART_TOOL };

/* One content part → one block, or NULL with err set. Which part types are allowed depends on the role. */
static json_t *part_block(json_t *part, enum part_ctx where, size_t i, size_t j, struct leo_buf *err)
{
    json_t *type = json_object_get(part, "type");
    if (!json_is_object(part) || !json_is_string(type)) {
        fail(err, LEO_EINVAL, "messages[%zu].content[%zu]: expected an object with a string \"type\"", i, j);
        return NULL;
    }
    const char *t = json_string_value(type);
    if (strcmp(t, "text") == 0 || (where == PART_ASSISTANT && strcmp(t, "refusal") == 0)) {
        json_t *text = json_object_get(part, t);
        if (!json_is_string(text)) {
            fail(err, LEO_EINVAL, "messages[%zu].content[%zu].%s: expected a string", i, j, t);
            return NULL;
        }
        json_t *b = text_block(text);
        copy_cache_control(part, b);
        return b;
    }
    if (where == PART_USER && strcmp(t, "image_url") == 0)
        return image_block(part, i, j, err);
    if (where == PART_USER && strcmp(t, "file") == 0)
        return document_block(part, i, j, err);
    fail(err, LEO_EINVAL, "messages[%zu].content[%zu].type: \"%.*s\" is not supported by anthropic", i, j,
         ANTH_QUOTE_MAX, t);
    return NULL;
}

/* Appends the blocks for an array of parts to blocks. */
static int parts_to_blocks(json_t *parts, enum part_ctx where, size_t i, json_t *blocks, struct leo_buf *err)
{
    size_t j;
    json_t *part;
    json_array_foreach(parts, j, part)
    {
        json_t *b = part_block(part, where, i, j, err);
        if (b == NULL)
            return LEO_EINVAL;
        json_array_append_new(blocks, b);
    }
    return 0;
}

/* Content as a block array (new reference); an empty string contributes nothing. */
static json_t *as_blocks(json_t *content)
{
    if (json_is_array(content))
        return json_incref(content);
    json_t *blocks = json_array();
    if (json_is_string(content) && json_string_length(content) > 0)
        json_array_append_new(blocks, text_block(content));
    return blocks;
}

/* Appends a message, merging it into the previous one when the roles match. Steals content. */
static void push_message(struct req_state *st, const char *role, json_t *content)
{
    if (st->last != NULL && strcmp(json_string_value(json_object_get(st->last, "role")), role) == 0) {
        json_t *merged = as_blocks(json_object_get(st->last, "content"));
        json_t *more = as_blocks(content);
        json_array_extend(merged, more);
        json_decref(more);
        json_decref(content);
        json_object_set_new(st->last, "content", merged);
        return;
    }
    json_t *m = json_object();
    json_object_set_new(m, "role", json_string(role));
    json_object_set_new(m, "content", content);
    json_array_append_new(st->messages, m);
    st->last = m;
}

static int system_message(struct req_state *st, json_t *content, size_t i)
{
    if (st->nsystem == 0)
        st->system_plain = json_is_string(content);
    st->nsystem++;
    if (json_is_string(content)) {
        if (json_string_length(content) > 0) /* Anthropic rejects empty text blocks */
            json_array_append_new(st->system, text_block(content));
        return 0;
    }
    if (json_is_array(content))
        return parts_to_blocks(content, PART_SYSTEM, i, st->system, st->err);
    return fail(st->err, LEO_EINVAL, "messages[%zu].content: expected a string or an array", i);
}

static int user_message(struct req_state *st, json_t *content, size_t i)
{
    if (json_is_string(content)) {
        push_message(st, "user", json_incref(content));
        return 0;
    }
    if (!json_is_array(content))
        return fail(st->err, LEO_EINVAL, "messages[%zu].content: expected a string or an array", i);
    json_t *blocks = json_array();
    int rc = parts_to_blocks(content, PART_USER, i, blocks, st->err);
    if (rc < 0) {
        json_decref(blocks);
        return rc;
    }
    push_message(st, "user", blocks);
    return 0;
}

static bool is_blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    return true;
}

static json_t *tool_use_block(json_t *tc, size_t i, size_t k, struct leo_buf *err)
{
    json_t *fn = json_object_get(tc, "function");
    json_t *type = json_object_get(tc, "type");
    json_t *id = json_object_get(tc, "id");
    json_t *name = json_object_get(fn, "name");
    json_t *args = json_object_get(fn, "arguments");
    if (!json_is_object(tc) || !json_is_object(fn)) {
        fail(err, LEO_EINVAL, "messages[%zu].tool_calls[%zu]: expected an object with a \"function\" object", i, k);
        return NULL;
    }
    if (type != NULL && !(json_is_string(type) && strcmp(json_string_value(type), "function") == 0)) {
        fail(err, LEO_EINVAL, "messages[%zu].tool_calls[%zu].type: only \"function\" is supported by anthropic", i, k);
        return NULL;
    }
    if (!json_is_string(id)) {
        fail(err, LEO_EINVAL, "messages[%zu].tool_calls[%zu].id: expected a string", i, k);
        return NULL;
    }
    if (!json_is_string(name)) {
        fail(err, LEO_EINVAL, "messages[%zu].tool_calls[%zu].function.name: expected a string", i, k);
        return NULL;
    }
    json_t *input;
    if (json_is_object(args)) {
        input = json_incref(args);
    } else if (json_is_string(args) && is_blank(json_string_value(args))) {
        input = json_object(); /* a call without arguments, as some clients send it */
    } else if (json_is_string(args)) {
        input = json_loadb(json_string_value(args), json_string_length(args), JSON_ALLOW_NUL, NULL);
        if (!json_is_object(input)) {
            json_decref(input);
            fail(err, LEO_EINVAL, "messages[%zu].tool_calls[%zu].function.arguments: not a JSON object", i, k);
            return NULL;
        }
    } else {
        fail(err, LEO_EINVAL, "messages[%zu].tool_calls[%zu].function.arguments: expected a string", i, k);
        return NULL;
    }
    json_t *b = json_object();
    json_object_set_new(b, "type", json_string("tool_use"));
    json_object_set(b, "id", id);
    json_object_set(b, "name", name);
    json_object_set_new(b, "input", input);
    return b;
}

static int assistant_message(struct req_state *st, json_t *m, size_t i)
{
    json_t *content = json_object_get(m, "content");
    json_t *reasoning = json_object_get(m, "reasoning_content");
    json_t *signature = json_object_get(m, "reasoning_signature");
    json_t *calls = json_object_get(m, "tool_calls");
    if (content != NULL && !json_is_null(content) && !json_is_string(content) && !json_is_array(content))
        return fail(st->err, LEO_EINVAL, "messages[%zu].content: expected a string, an array or null", i);
    if (calls != NULL && !json_is_null(calls) && !json_is_array(calls))
        return fail(st->err, LEO_EINVAL, "messages[%zu].tool_calls: expected an array", i);

    json_t *blocks = json_array();
    if (json_is_string(reasoning) && json_string_length(reasoning) > 0 && json_is_string(signature) &&
        json_string_length(signature) > 0) {
        json_t *b = json_object();
        json_object_set_new(b, "type", json_string("thinking"));
        json_object_set(b, "thinking", reasoning);
        json_object_set(b, "signature", signature);
        json_array_append_new(blocks, b);
    }
    if (json_is_string(content) && json_string_length(content) > 0)
        json_array_append_new(blocks, text_block(content));
    if (json_is_array(content) && parts_to_blocks(content, PART_ASSISTANT, i, blocks, st->err) < 0)
        goto fail_blocks;
    size_t k;
    json_t *tc;
    json_array_foreach(calls, k, tc)
    {
        json_t *b = tool_use_block(tc, i, k, st->err);
        if (b == NULL)
            goto fail_blocks;
        json_array_append_new(blocks, b);
    }

    bool only_text = json_array_size(blocks) == 0 ||
                     (json_array_size(blocks) == 1 && json_is_string(content) && json_array_size(calls) == 0 &&
                      strcmp(json_string_value(json_object_get(json_array_get(blocks, 0), "type")), "text") == 0);
    if (json_is_string(content) && only_text) {
        json_decref(blocks);
        push_message(st, "assistant", json_incref(content));
        return 0;
    }
    if (json_array_size(blocks) == 0 && !json_is_array(content)) {
        json_decref(blocks);
        return fail(st->err, LEO_EINVAL, "messages[%zu]: an assistant message needs content or tool_calls", i);
    }
    push_message(st, "assistant", blocks);
    return 0;

fail_blocks:
    json_decref(blocks);
    return LEO_EINVAL;
}

static int tool_message(struct req_state *st, json_t *m, size_t i)
{
    json_t *id = json_object_get(m, "tool_call_id");
    json_t *content = json_object_get(m, "content");
    if (!json_is_string(id))
        return fail(st->err, LEO_EINVAL, "messages[%zu].tool_call_id: expected a string", i);
    json_t *b = json_object();
    json_object_set_new(b, "type", json_string("tool_result"));
    json_object_set(b, "tool_use_id", id);
    if (json_is_string(content)) {
        json_object_set(b, "content", content);
    } else if (json_is_array(content)) {
        json_t *blocks = json_array();
        json_object_set_new(b, "content", blocks);
        if (parts_to_blocks(content, PART_TOOL, i, blocks, st->err) < 0) {
            json_decref(b);
            return LEO_EINVAL;
        }
    } else if (content != NULL && !json_is_null(content)) {
        json_decref(b);
        return fail(st->err, LEO_EINVAL, "messages[%zu].content: expected a string or an array", i);
    }
    json_t *blocks = json_array();
    json_array_append_new(blocks, b);
    push_message(st, "user", blocks);
    return 0;
}

static int convert_messages(struct req_state *st, json_t *msgs)
{
    if (!json_is_array(msgs))
        return fail(st->err, LEO_EINVAL, "messages: expected an array");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role))
            return fail(st->err, LEO_EINVAL, "messages[%zu]: expected an object with a string \"role\"", i);
        const char *r = json_string_value(role);
        int rc;
        if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0)
            rc = system_message(st, json_object_get(m, "content"), i);
        else if (strcmp(r, "user") == 0)
            rc = user_message(st, json_object_get(m, "content"), i);
        else if (strcmp(r, "assistant") == 0)
            rc = assistant_message(st, m, i);
        else if (strcmp(r, "tool") == 0)
            rc = tool_message(st, m, i);
        else
            rc = fail(st->err, LEO_EINVAL, "messages[%zu].role: \"%.*s\" is not supported by anthropic", i,
                      ANTH_QUOTE_MAX, r);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int convert_tools(json_t *tools, json_t *out, struct leo_buf *err)
{
    if (!json_is_array(tools))
        return fail(err, LEO_EINVAL, "tools: expected an array");
    json_t *res = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        json_t *type = json_object_get(t, "type");
        json_t *fn = json_object_get(t, "function");
        json_t *name = json_object_get(fn, "name");
        json_t *desc = json_object_get(fn, "description");
        json_t *params = json_object_get(fn, "parameters");
        if (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0) {
            json_decref(res);
            return fail(err, LEO_EINVAL, "tools[%zu].type: \"%.*s\" is not supported by anthropic", i, ANTH_QUOTE_MAX,
                        str_or(type, ""));
        }
        if (!json_is_object(fn) || !json_is_string(name)) {
            json_decref(res);
            return fail(err, LEO_EINVAL, "tools[%zu].function.name: expected a string", i);
        }
        if (params != NULL && !json_is_object(params)) {
            json_decref(res);
            return fail(err, LEO_EINVAL, "tools[%zu].function.parameters: expected an object", i);
        }
        json_t *o = json_object();
        json_object_set(o, "name", name);
        if (json_is_string(desc))
            json_object_set(o, "description", desc);
        if (params != NULL) {
            json_object_set(o, "input_schema", params);
        } else {
            json_t *schema = json_object();
            json_object_set_new(schema, "type", json_string("object"));
            json_object_set_new(schema, "properties", json_object());
            json_object_set_new(o, "input_schema", schema);
        }
        json_array_append_new(res, o);
    }
    if (json_array_size(res) > 0)
        json_object_set(out, "tools", res);
    json_decref(res);
    return 0;
}

static int convert_tool_choice(json_t *choice, json_t *parallel, json_t *out, struct leo_buf *err)
{
    const char *type = NULL;
    json_t *name = NULL;
    if (json_is_string(choice)) {
        static const struct {
            const char *openai, *anthropic;
        } map[] = {{"auto", "auto"}, {"required", "any"}, {"none", "none"}};
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
            if (strcmp(json_string_value(choice), map[i].openai) == 0)
                type = map[i].anthropic;
        if (type == NULL)
            return fail(err, LEO_EINVAL, "tool_choice: \"%.*s\" is not supported by anthropic", ANTH_QUOTE_MAX,
                        json_string_value(choice));
    } else if (json_is_object(choice)) {
        json_t *t = json_object_get(choice, "type");
        name = json_object_get(json_object_get(choice, "function"), "name");
        if (!json_is_string(t) || strcmp(json_string_value(t), "function") != 0 || !json_is_string(name))
            return fail(err, LEO_EINVAL,
                        "tool_choice: expected \"auto\", \"required\", \"none\" or a function by name");
        type = "tool";
    } else if (choice != NULL && !json_is_null(choice)) {
        return fail(err, LEO_EINVAL, "tool_choice: expected a string or an object");
    }
    bool no_parallel = json_is_false(parallel);
    if (type == NULL && !no_parallel)
        return 0;
    if (type == NULL)
        type = "auto";
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    if (name != NULL)
        json_object_set(o, "name", name);
    if (no_parallel && strcmp(type, "none") != 0)
        json_object_set_new(o, "disable_parallel_tool_use", json_true());
    json_object_set_new(out, "tool_choice", o);
    return 0;
}

/* Members whose loss would change the answer, with the reason given to the client. */
static int check_rejected(json_t *canon, struct leo_buf *err)
{
    json_t *v = json_object_get(canon, "n");
    if (v != NULL && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return fail(err, LEO_EINVAL, "n: only 1 choice is supported by anthropic");
    if (json_is_true(json_object_get(canon, "logprobs")))
        return fail(err, LEO_EINVAL, "logprobs: not supported by anthropic");
    v = json_object_get(canon, "response_format");
    if (v != NULL && !json_is_null(v)) {
        const char *t = str_or(json_object_get(v, "type"), "");
        if (strcmp(t, "text") != 0)
            return fail(err, LEO_EINVAL, "response_format: \"%.*s\" is not supported by anthropic", ANTH_QUOTE_MAX, t);
    }
    v = json_object_get(canon, "modalities");
    if (json_is_array(v)) {
        size_t i;
        json_t *mod;
        json_array_foreach(v, i, mod)
        {
            if (!json_is_string(mod) || strcmp(json_string_value(mod), "text") != 0)
                return fail(err, LEO_EINVAL, "modalities[%zu]: only \"text\" is supported by anthropic", i);
        }
    }
    static const char *const rejected[] = {"audio", "functions", "function_call", "web_search_options"};
    for (size_t i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++) {
        v = json_object_get(canon, rejected[i]);
        if (v != NULL && !json_is_null(v))
            return fail(err, LEO_EINVAL, "%s: not supported by anthropic", rejected[i]);
    }
    return 0;
}

static int thinking_budget(json_t *effort, uint64_t *budget, struct leo_buf *err)
{
    static const struct {
        const char *effort;
        uint64_t budget;
    } budgets[] = {{"none", 0}, {"minimal", 1024}, {"low", 1024}, {"medium", 4096}, {"high", 16384}};
    *budget = 0;
    if (effort == NULL || json_is_null(effort))
        return 0;
    if (json_is_string(effort))
        for (size_t i = 0; i < sizeof(budgets) / sizeof(budgets[0]); i++)
            if (strcmp(json_string_value(effort), budgets[i].effort) == 0) {
                *budget = budgets[i].budget;
                return 0;
            }
    return fail(err, LEO_EINVAL, "reasoning_effort: expected \"none\", \"minimal\", \"low\", \"medium\" or \"high\"");
}

static int anth_build_chat(json_t *canon, const struct leo_adapter_ctx *ctx, struct leo_buf *body, struct leo_buf *err)
{
    if (!json_is_object(canon))
        return fail(err, LEO_EINVAL, "request: expected a JSON object");
    int rc = check_rejected(canon, err);
    if (rc < 0)
        return rc;

    uint64_t dflt = ctx->default_max_tokens ? ctx->default_max_tokens : ANTH_DEFAULT_MAX_TOKENS;
    uint64_t max_tokens = dflt;
    const char *max_name = "max_completion_tokens";
    json_t *mt = json_object_get(canon, max_name);
    if (mt == NULL || json_is_null(mt)) {
        max_name = "max_tokens";
        mt = json_object_get(canon, max_name);
    }
    if (mt != NULL && !json_is_null(mt)) {
        if (!json_is_integer(mt) || json_integer_value(mt) < 1)
            return fail(err, LEO_EINVAL, "%s: expected a positive integer", max_name);
        max_tokens = (uint64_t)json_integer_value(mt);
    }
    uint64_t budget;
    rc = thinking_budget(json_object_get(canon, "reasoning_effort"), &budget, err);
    if (rc < 0)
        return rc;
    if (budget && max_tokens <= budget)
        max_tokens = budget + dflt;

    static const char *const numbers[] = {"temperature", "top_p"};
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
        json_t *v = json_object_get(canon, numbers[i]);
        if (v != NULL && !json_is_null(v) && !json_is_number(v))
            return fail(err, LEO_EINVAL, "%s: expected a number", numbers[i]);
    }
    /* OpenAI accepts temperatures up to 2; Anthropic's range is 0 to 1, and scaling would change the meaning. */
    json_t *temp = json_object_get(canon, "temperature");
    if (json_is_number(temp) && (json_number_value(temp) < 0 || json_number_value(temp) > 1))
        return fail(err, LEO_EINVAL, "temperature: %g is outside the range anthropic accepts (0 to 1)",
                    json_number_value(temp));
    json_t *top_k = json_object_get(canon, "top_k");
    if (top_k != NULL && !json_is_null(top_k) && !json_is_integer(top_k))
        return fail(err, LEO_EINVAL, "top_k: expected an integer");

    json_t *stop = json_object_get(canon, "stop");
    json_t *stops = NULL;
    if (json_is_string(stop)) {
        stops = json_array();
        json_array_append(stops, stop);
    } else if (json_is_array(stop)) {
        size_t i;
        json_t *s;
        json_array_foreach(stop, i, s)
        {
            if (!json_is_string(s))
                return fail(err, LEO_EINVAL, "stop[%zu]: expected a string", i);
        }
        stops = json_array_size(stop) ? json_incref(stop) : NULL;
    } else if (stop != NULL && !json_is_null(stop)) {
        return fail(err, LEO_EINVAL, "stop: expected a string or an array of strings");
    }

    struct req_state st = {.system = json_array(), .messages = json_array(), .err = err};
    json_t *out = json_object();
    rc = convert_messages(&st, json_object_get(canon, "messages"));
    if (rc < 0)
        goto done;

    json_object_set_new(out, "model", json_string(ctx->model ? ctx->model : ""));
    json_object_set_new(out, "max_tokens", json_integer((json_int_t)max_tokens));
    if (st.nsystem == 1 && st.system_plain && json_array_size(st.system) == 1)
        json_object_set(out, "system", json_object_get(json_array_get(st.system, 0), "text"));
    else if (json_array_size(st.system) > 0)
        json_object_set(out, "system", st.system);
    json_object_set(out, "messages", st.messages);

    json_t *user = json_object_get(canon, "user");
    if (!json_is_string(user))
        user = json_object_get(canon, "safety_identifier");
    if (json_is_string(user)) {
        json_t *md = json_object();
        json_object_set(md, "user_id", user);
        json_object_set_new(out, "metadata", md);
    }
    if (stops != NULL)
        json_object_set(out, "stop_sequences", stops);
    if (json_is_true(json_object_get(canon, "stream")))
        json_object_set_new(out, "stream", json_true());
    static const char *const copied[] = {"temperature", "top_p", "top_k"};
    for (size_t i = 0; i < sizeof(copied) / sizeof(copied[0]); i++) {
        json_t *v = json_object_get(canon, copied[i]);
        if (json_is_number(v))
            json_object_set(out, copied[i], v);
    }
    if (budget) {
        json_t *th = json_object();
        json_object_set_new(th, "type", json_string("enabled"));
        json_object_set_new(th, "budget_tokens", json_integer((json_int_t)budget));
        json_object_set_new(out, "thinking", th);
    }
    json_t *tools = json_object_get(canon, "tools");
    if (tools != NULL && !json_is_null(tools)) {
        rc = convert_tools(tools, out, err);
        if (rc < 0)
            goto done;
    }
    /* tool_choice means nothing without tools, and Anthropic rejects it there. */
    if (json_array_size(json_object_get(out, "tools")) > 0) {
        rc = convert_tool_choice(json_object_get(canon, "tool_choice"), json_object_get(canon, "parallel_tool_calls"),
                                 out, err);
        if (rc < 0)
            goto done;
    }

    char *s = json_dumps(out, ANTH_JSON_FLAGS);
    if (s == NULL) {
        rc = fail(err, LEO_EINVAL, "request: cannot be serialised");
        goto done;
    }
    rc = leo_buf_adds(body, s);
    free(s);

done:
    json_decref(stops);
    json_decref(out);
    json_decref(st.system);
    json_decref(st.messages);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------
 * Usage and stop reasons
 */

struct raw_usage {
    uint64_t input, output, cache_read, cache_write;
    bool have;
};

static void usage_member(json_t *usage, const char *key, uint64_t *to, bool *have)
{
    json_t *v = json_object_get(usage, key);
    if (!json_is_integer(v))
        return;
    json_int_t n = json_integer_value(v);
    *to = n < 0 ? 0 : (uint64_t)n > ANTH_TOKENS_MAX ? ANTH_TOKENS_MAX : (uint64_t)n;
    *have = true;
}

/* Anthropic usage members present in usage replace what r holds (stream counts are cumulative). */
static void usage_apply(json_t *usage, struct raw_usage *r)
{
    if (!json_is_object(usage))
        return;
    usage_member(usage, "input_tokens", &r->input, &r->have);
    usage_member(usage, "output_tokens", &r->output, &r->have);
    usage_member(usage, "cache_read_input_tokens", &r->cache_read, &r->have);
    usage_member(usage, "cache_creation_input_tokens", &r->cache_write, &r->have);
}

static struct leo_usage usage_export(const struct raw_usage *r)
{
    return (struct leo_usage){
        .input_tokens = r->input + r->cache_read + r->cache_write,
        .output_tokens = r->output,
        .cache_read_tokens = r->cache_read,
        .cache_write_tokens = r->cache_write,
        .have = r->have,
    };
}

/* A count from an integer member: a negative one (an upstream's bug) counts 0, as in usage_apply. */
static uint64_t count_of(json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* The passthrough reader: reports usage only when input_tokens or output_tokens is an integer. */
void leo_usage_from_anthropic(json_t *usage, struct leo_usage *u)
{
    if (!json_is_object(usage))
        return;
    json_t *in = json_object_get(usage, "input_tokens"), *out = json_object_get(usage, "output_tokens");
    u->cache_read_tokens = count_of(json_object_get(usage, "cache_read_input_tokens"));
    u->cache_write_tokens = count_of(json_object_get(usage, "cache_creation_input_tokens"));
    u->input_tokens = count_of(in) + u->cache_read_tokens + u->cache_write_tokens;
    u->output_tokens = count_of(out);
    u->have = json_is_integer(in) || json_is_integer(out);
}

void leo_usage_from_anthropic_raw(const char *p, size_t len, struct leo_usage *u)
{
    static const char *const keys[] = {"input_tokens", "output_tokens", "cache_read_input_tokens",
                                       "cache_creation_input_tokens"};
    struct leo_str v[4];
    int64_t n[4];
    bool is_int[4];
    if (leo_json_get_members(p, len, keys, 4, v) != 0)
        return;
    for (size_t i = 0; i < 4; i++) {
        is_int[i] = leo_json_number(v[i], &n[i], NULL) == 1;
        if (!is_int[i] || n[i] < 0)
            n[i] = 0;
    }
    u->cache_read_tokens = (uint64_t)n[2];
    u->cache_write_tokens = (uint64_t)n[3];
    u->input_tokens = (uint64_t)n[0] + u->cache_read_tokens + u->cache_write_tokens;
    u->output_tokens = (uint64_t)n[1];
    u->have = is_int[0] || is_int[1];
}

static const char *finish_reason(json_t *stop_reason)
{
    static const struct {
        const char *anthropic, *openai;
    } map[] = {
        {"end_turn", "stop"},
        {"stop_sequence", "stop"},
        {"pause_turn", "stop"},
        {"max_tokens", "length"},
        {"model_context_window_exceeded", "length"},
        {"tool_use", "tool_calls"},
        {"refusal", "content_filter"},
    };
    if (json_is_string(stop_reason))
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
            if (strcmp(json_string_value(stop_reason), map[i].anthropic) == 0)
                return map[i].openai;
    return "stop";
}

/* "<type>: <message>" for an Anthropic error object ({"type":..,"message":..}); false when it has neither. */
static bool format_error(json_t *e, char *out, size_t size)
{
    const char *type = str_or(json_object_get(e, "type"), NULL);
    const char *msg = str_or(json_object_get(e, "message"), NULL);
    if (type && msg)
        snprintf(out, size, "%s: %s", type, msg);
    else if (type || msg)
        snprintf(out, size, "%s", type ? type : msg);
    else
        return false;
    return true;
}

static void anth_error_message(const char *body, size_t len, char *out, size_t size)
{
    if (size == 0)
        return;
    out[0] = '\0';
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *e = json_object_get(root, "error");
    if (json_is_object(e))
        format_error(e, out, size);
    else if (json_is_string(e))
        snprintf(out, size, "%s", json_string_value(e));
    json_decref(root);
}

/* ---------------------------------------------------------------------------------------------------------
 * Response: Messages → chat.completion
 */

static json_t *anth_parse_chat(const char *body, size_t len, const struct leo_adapter_ctx *ctx, struct leo_usage *u,
                               struct leo_buf *err)
{
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        fail(err, LEO_EUPSTREAM, "anthropic response is not a JSON object");
        return NULL;
    }
    json_t *e = json_object_get(root, "error");
    if (strcmp(str_or(json_object_get(root, "type"), ""), "error") == 0 || json_is_object(e)) {
        char msg[512];
        if (!format_error(e, msg, sizeof(msg)))
            snprintf(msg, sizeof(msg), "(no message)");
        fail(err, LEO_EUPSTREAM, "anthropic error: %s", msg);
        json_decref(root);
        return NULL;
    }
    json_t *content = json_object_get(root, "content");
    if (!json_is_array(content)) {
        json_decref(root);
        fail(err, LEO_EUPSTREAM, "anthropic response has no content array");
        return NULL;
    }

    struct leo_buf text = LEO_BUF_INIT, reasoning = LEO_BUF_INIT;
    bool have_text = false, have_reasoning = false;
    json_t *signature = NULL, *calls = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = str_or(json_object_get(b, "type"), "");
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(b, "text");
            if (json_is_string(t))
                leo_buf_add(&text, json_string_value(t), json_string_length(t));
            have_text = true;
        } else if (strcmp(type, "thinking") == 0) {
            json_t *t = json_object_get(b, "thinking");
            if (json_is_string(t))
                leo_buf_add(&reasoning, json_string_value(t), json_string_length(t));
            if (json_is_string(json_object_get(b, "signature")))
                signature = json_object_get(b, "signature");
            have_reasoning = true;
        } else if (strcmp(type, "tool_use") == 0) {
            json_t *id = json_object_get(b, "id"), *name = json_object_get(b, "name");
            json_t *input = json_object_get(b, "input");
            if (!json_is_string(id) || !json_is_string(name)) {
                fail(err, LEO_EUPSTREAM, "anthropic response content[%zu]: tool_use without id or name", i);
                goto fail_content;
            }
            char *args = input ? json_dumps(input, ANTH_JSON_FLAGS | JSON_ENCODE_ANY) : NULL;
            json_t *fn = json_object();
            json_object_set(fn, "name", name);
            json_object_set_new(fn, "arguments", json_string(args ? args : "{}"));
            free(args);
            json_t *tc = json_object();
            json_object_set(tc, "id", id);
            json_object_set_new(tc, "type", json_string("function"));
            json_object_set_new(tc, "function", fn);
            json_array_append_new(calls, tc);
        }
    }

    json_t *msg = json_object();
    json_object_set_new(msg, "role", json_string("assistant"));
    json_object_set_new(msg, "content", have_text ? json_stringn(text.p, text.len) : json_null());
    if (have_reasoning) {
        json_object_set_new(msg, "reasoning_content", json_stringn(reasoning.p, reasoning.len));
        if (signature != NULL)
            json_object_set(msg, "reasoning_signature", signature);
    }
    if (json_array_size(calls) > 0)
        json_object_set(msg, "tool_calls", calls);

    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    json_object_set_new(choice, "message", msg);
    json_object_set_new(choice, "logprobs", json_null());
    json_object_set_new(choice, "finish_reason", json_string(finish_reason(json_object_get(root, "stop_reason"))));
    json_t *choices = json_array();
    json_array_append_new(choices, choice);

    json_t *res = json_object();
    json_object_set_new(res, "id", json_string(ctx->response_id ? ctx->response_id : ""));
    json_object_set_new(res, "object", json_string("chat.completion"));
    json_object_set_new(res, "created", json_integer(ctx->created));
    json_object_set_new(res, "model", json_string(ctx->model ? ctx->model : ""));
    json_object_set_new(res, "choices", choices);
    struct raw_usage raw = {0};
    usage_apply(json_object_get(root, "usage"), &raw);
    if (raw.have) {
        *u = usage_export(&raw);
        json_object_set_new(res, "usage", leo_usage_to_openai(u));
    }
    json_decref(calls);
    json_decref(root);
    leo_buf_release(&text);
    leo_buf_release(&reasoning);
    return res;

fail_content:
    json_decref(calls);
    json_decref(root);
    leo_buf_release(&text);
    leo_buf_release(&reasoning);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * Stream: Messages events → chat.completion.chunk objects
 */

struct tool_block {
    json_int_t block; /* the Anthropic content block index */
    size_t call;      /* the canonical tool_calls index */
};

struct leo_stream_xlate {
    char *id;
    char *model;
    int64_t created;
    struct raw_usage usage;
    const char *finish;       /* from message_delta's stop_reason; static storage */
    struct tool_block *tools; /* tool_use blocks started so far */
    size_t ntools, cap;
    bool done; /* message_stop seen */
};

static json_t *chunk_head(struct leo_stream_xlate *st)
{
    json_t *c = json_object();
    json_object_set_new(c, "id", json_string(st->id));
    json_object_set_new(c, "object", json_string("chat.completion.chunk"));
    json_object_set_new(c, "created", json_integer(st->created));
    json_object_set_new(c, "model", json_string(st->model));
    return c;
}

/* Appends a chunk with this delta (stolen) and finish_reason (NULL for null) to out. */
static void emit(struct leo_stream_xlate *st, json_t *out, json_t *delta, const char *finish)
{
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    json_object_set_new(choice, "delta", delta);
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_t *c = chunk_head(st);
    json_object_set_new(c, "choices", choices);
    json_array_append_new(out, c);
}

/* A chunk whose delta has one string member copied from v. Empty strings carry nothing and emit nothing. */
static void emit_string(struct leo_stream_xlate *st, json_t *out, const char *key, json_t *v)
{
    if (json_string_length(v) == 0)
        return;
    json_t *d = json_object();
    json_object_set(d, key, v);
    emit(st, out, d, NULL);
}

static json_t *tool_delta(size_t call)
{
    json_t *tc = json_object();
    json_object_set_new(tc, "index", json_integer((json_int_t)call));
    return tc;
}

static void emit_tool(struct leo_stream_xlate *st, json_t *out, json_t *tc)
{
    json_t *calls = json_array();
    json_array_append_new(calls, tc);
    json_t *d = json_object();
    json_object_set_new(d, "tool_calls", calls);
    emit(st, out, d, NULL);
}

static int ev_message_start(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err)
{
    json_t *m = json_object_get(ev, "message");
    if (!json_is_object(m))
        return fail(err, LEO_EUPSTREAM, "anthropic message_start without a message");
    usage_apply(json_object_get(m, "usage"), &st->usage);
    json_t *d = json_object();
    json_object_set_new(d, "role", json_string("assistant"));
    json_object_set_new(d, "content", json_string(""));
    emit(st, out, d, NULL);
    return 0;
}

static int ev_block_start(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err)
{
    json_t *index = json_object_get(ev, "index");
    json_t *b = json_object_get(ev, "content_block");
    if (!json_is_integer(index) || !json_is_object(b))
        return fail(err, LEO_EUPSTREAM, "anthropic content_block_start without an index or a content_block");
    const char *type = str_or(json_object_get(b, "type"), "");
    if (strcmp(type, "text") == 0) {
        emit_string(st, out, "content", json_object_get(b, "text"));
    } else if (strcmp(type, "thinking") == 0) {
        emit_string(st, out, "reasoning_content", json_object_get(b, "thinking"));
        emit_string(st, out, "reasoning_signature", json_object_get(b, "signature"));
    } else if (strcmp(type, "tool_use") == 0) {
        json_t *id = json_object_get(b, "id"), *name = json_object_get(b, "name");
        json_t *input = json_object_get(b, "input");
        if (!json_is_string(id) || !json_is_string(name))
            return fail(err, LEO_EUPSTREAM, "anthropic tool_use block %" JSON_INTEGER_FORMAT " without id or name",
                        json_integer_value(index));
        if (st->ntools == st->cap) {
            st->cap = st->cap ? 2 * st->cap : 4;
            st->tools = leo_realloc(st->tools, st->cap * sizeof(st->tools[0]));
        }
        size_t call = st->ntools++;
        st->tools[call] = (struct tool_block){json_integer_value(index), call};
        /* Arguments normally follow as input_json_delta; an input given up front is sent here whole. */
        char *args = json_object_size(input) > 0 ? json_dumps(input, ANTH_JSON_FLAGS) : NULL;
        json_t *fn = json_object();
        json_object_set(fn, "name", name);
        json_object_set_new(fn, "arguments", json_string(args ? args : ""));
        free(args);
        json_t *tc = tool_delta(call);
        json_object_set(tc, "id", id);
        json_object_set_new(tc, "type", json_string("function"));
        json_object_set_new(tc, "function", fn);
        emit_tool(st, out, tc);
    }
    return 0;
}

static int ev_block_delta(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err)
{
    static const struct {
        const char *type;  /* Anthropic delta type */
        const char *field; /* its string member */
        const char *key;   /* the canonical delta member; NULL for a tool call's arguments */
    } deltas[] = {
        {"text_delta", "text", "content"},
        {"thinking_delta", "thinking", "reasoning_content"},
        {"signature_delta", "signature", "reasoning_signature"},
        {"input_json_delta", "partial_json", NULL},
    };
    json_t *d = json_object_get(ev, "delta");
    if (!json_is_object(d))
        return fail(err, LEO_EUPSTREAM, "anthropic content_block_delta without a delta");
    const char *type = str_or(json_object_get(d, "type"), "");
    for (size_t i = 0; i < sizeof(deltas) / sizeof(deltas[0]); i++) {
        if (strcmp(type, deltas[i].type) != 0)
            continue;
        json_t *v = json_object_get(d, deltas[i].field);
        if (!json_is_string(v))
            return fail(err, LEO_EUPSTREAM, "anthropic %s without a string \"%s\"", type, deltas[i].field);
        if (deltas[i].key != NULL) {
            emit_string(st, out, deltas[i].key, v);
            return 0;
        }
        json_t *index = json_object_get(ev, "index");
        size_t k = st->ntools;
        while (json_is_integer(index) && k > 0 && st->tools[k - 1].block != json_integer_value(index))
            k--;
        if (k == 0)
            return fail(err, LEO_EUPSTREAM, "anthropic input_json_delta for a block that is not a tool_use");
        if (json_string_length(v) == 0)
            return 0;
        json_t *fn = json_object();
        json_object_set(fn, "arguments", v);
        json_t *tc = tool_delta(st->tools[k - 1].call);
        json_object_set_new(tc, "function", fn);
        emit_tool(st, out, tc);
        return 0;
    }
    return 0; /* citations_delta and delta types added later carry nothing canonical */
}

static int ev_message_delta(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err)
{
    (void)out;
    (void)err;
    json_t *reason = json_object_get(json_object_get(ev, "delta"), "stop_reason");
    if (json_is_string(reason))
        st->finish = finish_reason(reason);
    usage_apply(json_object_get(ev, "usage"), &st->usage);
    return 0;
}

static int ev_message_stop(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err)
{
    (void)ev;
    (void)err;
    emit(st, out, json_object(), st->finish ? st->finish : "stop");
    struct leo_usage u = usage_export(&st->usage);
    json_t *c = chunk_head(st);
    json_object_set_new(c, "choices", json_array());
    json_object_set_new(c, "usage", leo_usage_to_openai(&u));
    json_array_append_new(out, c);
    st->done = true;
    return 1;
}

static int ev_error(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err)
{
    (void)st;
    (void)out;
    char msg[512];
    if (!format_error(json_object_get(ev, "error"), msg, sizeof(msg)))
        snprintf(msg, sizeof(msg), "(no message)");
    return fail(err, LEO_EUPSTREAM, "anthropic stream error: %s", msg);
}

static int ev_ignore(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err)
{
    (void)st;
    (void)ev;
    (void)out;
    (void)err;
    return 0;
}

static const struct {
    const char *type;
    int (*fn)(struct leo_stream_xlate *st, json_t *ev, json_t *out, struct leo_buf *err);
} stream_events[] = {
    {"message_start", ev_message_start},
    {"content_block_start", ev_block_start},
    {"content_block_delta", ev_block_delta},
    {"content_block_stop", ev_ignore},
    {"message_delta", ev_message_delta},
    {"message_stop", ev_message_stop},
    {"ping", ev_ignore},
    {"error", ev_error},
};

static struct leo_stream_xlate *anth_stream_new(const struct leo_adapter_ctx *ctx)
{
    struct leo_stream_xlate *st = leo_new(struct leo_stream_xlate);
    st->id = leo_strdup(ctx->response_id ? ctx->response_id : "");
    st->model = leo_strdup(ctx->model ? ctx->model : "");
    st->created = ctx->created;
    return st;
}

static int anth_stream_event(struct leo_stream_xlate *st, struct leo_str event, struct leo_str data, json_t *out,
                             struct leo_usage *u, struct leo_buf *err)
{
    if (st->done)
        return 0;
    json_t *ev = json_loadb(data.p, data.len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(ev)) {
        json_decref(ev);
        return fail(err, LEO_EUPSTREAM, "anthropic stream event \"%.*s\" is not a JSON object",
                    (int)(event.len > ANTH_QUOTE_MAX ? ANTH_QUOTE_MAX : event.len), event.p ? event.p : "");
    }
    /* The data's "type" is authoritative; the SSE event name repeats it. */
    json_t *type = json_object_get(ev, "type");
    struct leo_str t = json_is_string(type) ? leo_str_n(json_string_value(type), json_string_length(type)) : event;
    int rc = 0;
    for (size_t i = 0; i < sizeof(stream_events) / sizeof(stream_events[0]); i++)
        if (leo_str_eqc(t, stream_events[i].type)) {
            rc = stream_events[i].fn(st, ev, out, err);
            break;
        }
    json_decref(ev);
    if (st->usage.have && u != NULL)
        *u = usage_export(&st->usage);
    return rc;
}

static int anth_stream_end(struct leo_stream_xlate *st, json_t *out, struct leo_usage *u, struct leo_buf *err)
{
    (void)out;
    if (st->usage.have && u != NULL)
        *u = usage_export(&st->usage);
    if (st->done)
        return 0;
    return fail(err, LEO_EUPSTREAM, "stream ended before message_stop");
}

static void anth_stream_free(struct leo_stream_xlate *st)
{
    if (st == NULL)
        return;
    leo_free(st->id);
    leo_free(st->model);
    leo_free(st->tools);
    leo_free(st);
}

const struct leo_adapter leo_adapter_anthropic = {
    .type = "anthropic",
    .dialect = LEO_DIALECT_ANTHROPIC,
    .chat_url = anth_chat_url,
    .auth_headers = anth_auth_headers,
    .build_chat = anth_build_chat,
    .parse_chat = anth_parse_chat,
    .stream_new = anth_stream_new,
    .stream_event = anth_stream_event,
    .stream_end = anth_stream_end,
    .stream_free = anth_stream_free,
    .error_message = anth_error_message,
};
