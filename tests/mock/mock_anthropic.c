#include "mock_anthropic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"

/* status → Anthropic error type; the fallback is by class (4xx invalid_request_error, 5xx api_error). */
static const struct {
    int status;
    const char *type;
} error_types[] = {
    {400, "invalid_request_error"}, {401, "authentication_error"}, {402, "billing_error"},
    {403, "permission_error"},      {404, "not_found_error"},      {413, "request_too_large"},
    {429, "rate_limit_error"},      {500, "api_error"},            {504, "timeout_error"},
    {529, "overloaded_error"},
};

/* Rate-limit headers a real Anthropic response carries; fixed values, the mock does not rate limit. */
static const struct {
    const char *name, *value;
} ratelimit_headers[] = {
    {"anthropic-ratelimit-requests-limit", "4000"},
    {"anthropic-ratelimit-requests-remaining", "3999"},
    {"anthropic-ratelimit-input-tokens-limit", "2000000"},
    {"anthropic-ratelimit-input-tokens-remaining", "1999000"},
    {"anthropic-ratelimit-output-tokens-limit", "400000"},
    {"anthropic-ratelimit-output-tokens-remaining", "399000"},
    {"anthropic-ratelimit-tokens-limit", "2400000"},
    {"anthropic-ratelimit-tokens-remaining", "2398000"},
};

static void anthropic_render_error(int status, const char *message, const char *param, int retry_after_s,
                                   struct leo_buf *out)
{
    const char *type = status >= 500 ? "api_error" : "invalid_request_error";
    for (size_t i = 0; i < sizeof(error_types) / sizeof(error_types[0]); i++) {
        if (error_types[i].status == status) {
            type = error_types[i].type;
            break;
        }
    }
    json_t *e = json_object();
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "message", mock_json_string_lossy(message, strlen(message)));
    json_t *root = json_object();
    json_object_set_new(root, "type", json_string("error"));
    json_object_set_new(root, "error", e);
    mock_json_append(out, root, 0);
    json_decref(root);
}

static void anthropic_response_headers(uint64_t seq, struct leo_arena *a, struct leo_http_header *h, size_t *n)
{
    char id[40];
    int len = snprintf(id, sizeof(id), "req_mock_%llu", (unsigned long long)seq);
    h[(*n)++] =
        (struct leo_http_header){LEO_STR_LIT("request-id"), leo_arena_strdup_str(a, leo_str_n(id, (size_t)len))};
    for (size_t i = 0; i < sizeof(ratelimit_headers) / sizeof(ratelimit_headers[0]); i++)
        h[(*n)++] = (struct leo_http_header){leo_str_c(ratelimit_headers[i].name),
                                             leo_str_c(ratelimit_headers[i].value)};
}

/* ---- parsing ------------------------------------------------------------------------------------------ */

/* Appends the text of a tool_result's content (a string or blocks) to text and counts its images. */
static int tool_result_text(json_t *content, size_t mi, size_t bi, struct leo_buf *text, unsigned *images,
                            struct mock_error *err)
{
    if (content == NULL || json_is_null(content))
        return 0;
    if (json_is_string(content)) {
        leo_buf_add(text, json_string_value(content), json_string_length(content));
        return 0;
    }
    if (!json_is_array(content))
        return mock_error_set(err, 400, "messages",
                              "messages.%zu.content.%zu.content: must be a string or a list of blocks", mi, bi);
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type == NULL)
            return mock_error_set(err, 400, "messages", "messages.%zu.content.%zu.content.%zu.type: field required",
                                  mi, bi, i);
        if (strcmp(type, "text") == 0 && json_is_string(json_object_get(b, "text"))) {
            json_t *t = json_object_get(b, "text");
            leo_buf_add(text, json_string_value(t), json_string_length(t));
        } else if (strcmp(type, "image") == 0) {
            (*images)++;
        }
    }
    return 0;
}

/* One message: its text blocks into text, its tool results into results; *tool_only tells whether every block
 * is a tool_result (and there is at least one). */
static int message_blocks(json_t *content, size_t mi, struct leo_buf *text, struct leo_buf *results,
                          unsigned *images, bool *tool_only, struct mock_error *err)
{
    *tool_only = false;
    if (json_is_string(content)) {
        leo_buf_add(text, json_string_value(content), json_string_length(content));
        return 0;
    }
    if (!json_is_array(content))
        return mock_error_set(err, 400, "messages", "messages.%zu.content: must be a string or a list of blocks",
                              mi);
    size_t i, nresults = 0;
    json_t *b;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type == NULL)
            return mock_error_set(err, 400, "messages", "messages.%zu.content.%zu.type: field required", mi, i);
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(b, "text");
            if (!json_is_string(t))
                return mock_error_set(err, 400, "messages", "messages.%zu.content.%zu.text: must be a string", mi,
                                      i);
            leo_buf_add(text, json_string_value(t), json_string_length(t));
        } else if (strcmp(type, "image") == 0) {
            (*images)++;
        } else if (strcmp(type, "tool_result") == 0) {
            nresults++;
            int rc = tool_result_text(json_object_get(b, "content"), mi, i, results, images, err);
            if (rc)
                return rc;
            leo_buf_addch(results, ' '); /* results of separate blocks never merge into one word */
        }
        /* tool_use, thinking, redacted_thinking, document and other blocks carry no text of their own here */
    }
    *tool_only = nresults > 0 && nresults == json_array_size(content);
    return 0;
}

static int parse_system(json_t *system, struct mock_chat *chat, struct mock_error *err)
{
    if (system == NULL)
        return 0;
    struct leo_buf text = LEO_BUF_INIT;
    int rc = 0;
    if (json_is_string(system)) {
        leo_buf_add(&text, json_string_value(system), json_string_length(system));
    } else if (json_is_array(system)) {
        size_t i;
        json_t *b;
        json_array_foreach(system, i, b) {
            json_t *t = json_object_get(b, "text");
            if (!json_is_string(t) || !json_is_string(json_object_get(b, "type")) ||
                strcmp(json_string_value(json_object_get(b, "type")), "text") != 0) {
                rc = mock_error_set(err, 400, "system", "system.%zu: must be a text block with a string \"text\"",
                                    i);
                break;
            }
            leo_buf_add(&text, json_string_value(t), json_string_length(t));
        }
    } else {
        rc = mock_error_set(err, 400, "system", "system: must be a string or a list of text blocks");
    }
    if (rc == 0) {
        chat->nmessages++;
        chat->prompt_words += mock_count_words(text.p, text.len);
    }
    leo_buf_release(&text);
    return rc;
}

static int parse_messages(json_t *messages, struct leo_arena *a, struct mock_chat *chat, struct mock_error *err)
{
    struct leo_buf text = LEO_BUF_INIT, results = LEO_BUF_INIT;
    int rc = 0;
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
            rc = mock_error_set(err, 400, "messages", "messages.%zu.role: must be \"user\" or \"assistant\"", i);
            break;
        }
        json_t *content = json_object_get(m, "content");
        if (content == NULL) {
            rc = mock_error_set(err, 400, "messages", "messages.%zu.content: field required", i);
            break;
        }
        leo_buf_reset(&text);
        leo_buf_reset(&results);
        bool tool_only;
        rc = message_blocks(content, i, &text, &results, &chat->images, &tool_only, err);
        if (rc)
            break;
        chat->nmessages++;
        chat->prompt_words += mock_count_words(text.p, text.len) + mock_count_words(results.p, results.len);
        bool user = strcmp(role, "user") == 0;
        chat->after_tool_result = user && tool_only;
        if (user && !tool_only)
            chat->last_user = leo_arena_strdup_str(a, leo_buf_str(&text));
    }
    leo_buf_release(&text);
    leo_buf_release(&results);
    return rc;
}

static void parse_tools(json_t *tools, struct leo_arena *a, struct mock_chat *chat)
{
    if (!json_is_array(tools) || json_array_size(tools) == 0)
        return;
    chat->tools = leo_arena_alloc(a, json_array_size(tools) * sizeof(*chat->tools));
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        /* client tools have no type or "custom"; server tools (web_search_..., bash_...) are never called */
        const char *type = json_string_value(json_object_get(t, "type"));
        const char *name = json_string_value(json_object_get(t, "name"));
        if (name == NULL || (type != NULL && strcmp(type, "custom") != 0))
            continue;
        chat->tools[chat->ntools++] = leo_arena_strndup(a, name, strlen(name));
    }
}

/* Parses a Messages request; count_tokens does not require max_tokens. */
static int parse_request(const struct leo_http_request *req, bool need_max_tokens, struct leo_arena *a,
                         struct mock_chat *chat, struct mock_error *err)
{
    memset(chat, 0, sizeof(*chat));
    chat->last_user = leo_str_n("", 0);
    if (leo_http_header_find(req, "anthropic-version") == NULL)
        return mock_error_set(err, 400, NULL, "anthropic-version: header is required");
    json_t *root = mock_json_load_object(req->body.p, req->body.len, err);
    if (root == NULL)
        return err->status;
    int rc = 0;
    json_t *model = json_object_get(root, "model");
    json_t *messages = json_object_get(root, "messages");
    json_t *max_tokens = json_object_get(root, "max_tokens");
    json_t *stream = json_object_get(root, "stream");
    json_t *thinking = json_object_get(root, "thinking");
    if (json_is_null(thinking))
        thinking = NULL;
    if (model == NULL) {
        rc = mock_error_set(err, 400, "model", "model: field required");
    } else if (!json_is_string(model) || json_string_length(model) == 0) {
        rc = mock_error_set(err, 400, "model", "model: must be a non-empty string");
    } else if (messages == NULL) {
        rc = mock_error_set(err, 400, "messages", "messages: field required");
    } else if (!json_is_array(messages) || json_array_size(messages) == 0) {
        rc = mock_error_set(err, 400, "messages", "messages: must be a non-empty list");
    } else if (need_max_tokens && max_tokens == NULL) {
        rc = mock_error_set(err, 400, "max_tokens", "max_tokens: field required");
    } else if (max_tokens != NULL && (!json_is_integer(max_tokens) || json_integer_value(max_tokens) < 1)) {
        rc = mock_error_set(err, 400, "max_tokens", "max_tokens: must be an integer of at least 1");
    } else if (stream != NULL && !json_is_boolean(stream)) {
        rc = mock_error_set(err, 400, "stream", "stream: must be a boolean");
    } else if (thinking != NULL && !json_is_string(json_object_get(thinking, "type"))) {
        rc = mock_error_set(err, 400, "thinking", "thinking.type: field required");
    }
    if (rc == 0)
        rc = parse_system(json_object_get(root, "system"), chat, err);
    if (rc == 0)
        rc = parse_messages(messages, a, chat, err);
    if (rc == 0) {
        chat->model = leo_arena_strndup(a, json_string_value(model), json_string_length(model));
        chat->stream = json_is_true(stream);
        chat->thinking =
            thinking != NULL && strcmp(json_string_value(json_object_get(thinking, "type")), "enabled") == 0;
        parse_tools(json_object_get(root, "tools"), a, chat);
    }
    json_decref(root);
    return rc;
}

static int anthropic_parse_chat(const struct leo_http_request *req, struct leo_arena *a, struct mock_chat *chat,
                                struct mock_error *err)
{
    return parse_request(req, true, a, chat, err);
}

int mock_anthropic_count_tokens(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err)
{
    struct leo_arena a = LEO_ARENA_INIT;
    struct mock_chat chat;
    int rc = parse_request(req, false, &a, &chat, err);
    if (rc == 0)
        leo_buf_addf(out, "{\"input_tokens\":%u}", mock_prompt_tokens(&chat));
    leo_arena_destroy(&a);
    return rc;
}

/* ---- rendering ---------------------------------------------------------------------------------------- */

static const char *stop_reason(const struct mock_reply *r)
{
    return r->blocked ? "refusal" : r->tool_calls ? "tool_use" : "end_turn";
}

/* Block indexes: the thinking block first, then the text block or one block per call. */
static unsigned block_index(const struct mock_reply *r, unsigned call)
{
    return (r->thinking.len ? 1u : 0u) + call;
}

static json_t *tool_use_id(unsigned call)
{
    char id[32];
    snprintf(id, sizeof(id), "toolu_mock_%u", call + 1);
    return json_string(id);
}

static json_t *message_head(const struct mock_reply *r, json_t *content)
{
    char id[48];
    snprintf(id, sizeof(id), "msg_mock_%llu", (unsigned long long)r->seq);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "type", json_string("message"));
    json_object_set_new(o, "role", json_string("assistant"));
    json_object_set_new(o, "model", json_string(r->chat->model));
    json_object_set_new(o, "content", content);
    return o;
}

static json_t *usage_json(unsigned input, unsigned output)
{
    json_t *u = json_object();
    json_object_set_new(u, "input_tokens", json_integer(input));
    json_object_set_new(u, "output_tokens", json_integer(output));
    return u;
}

static json_t *tool_input(const struct mock_call *c)
{
    json_t *in = json_loadb(c->arguments.p, c->arguments.len, 0, NULL);
    if (in == NULL) /* cannot happen: the arguments are the compact JSON mock_chat.c built */
        abort();
    return in;
}

static void anthropic_render_reply(const struct mock_reply *r, struct leo_buf *out)
{
    json_t *content = json_array(), *b;
    if (r->thinking.len) {
        b = json_object();
        json_object_set_new(b, "type", json_string("thinking"));
        json_object_set_new(b, "thinking", mock_json_span(r->thinking));
        json_object_set_new(b, "signature", json_string(r->signature));
        json_array_append_new(content, b);
    }
    for (size_t i = 0; i < r->ncalls; i++) {
        b = json_object();
        json_object_set_new(b, "type", json_string("tool_use"));
        json_object_set_new(b, "id", tool_use_id((unsigned)i));
        json_object_set_new(b, "name", json_string(r->calls[i].name));
        json_object_set_new(b, "input", tool_input(&r->calls[i]));
        json_array_append_new(content, b);
    }
    if (r->content.len) {
        b = json_object();
        json_object_set_new(b, "type", json_string("text"));
        json_object_set_new(b, "text", mock_json_span(r->content));
        json_array_append_new(content, b);
    }
    json_t *root = message_head(r, content);
    json_object_set_new(root, "stop_reason", json_string(stop_reason(r)));
    json_object_set_new(root, "stop_sequence", json_null());
    json_object_set_new(root, "usage", usage_json(r->prompt_tokens, r->completion_tokens));
    mock_json_append(out, root, 0);
    json_decref(root);
}

/* {"type":type,"index":index,key:value} as an event named type */
static void add_block_event(struct mock_events *ev, const char *type, unsigned index, const char *key, json_t *value)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "index", json_integer(index));
    if (key != NULL)
        json_object_set_new(o, key, value);
    mock_events_add_sse_named(ev, type, o);
    json_decref(o);
}

/* content_block_delta with delta {"type":dtype, field: value} */
static void add_delta(struct mock_events *ev, unsigned index, const char *dtype, const char *field, json_t *value)
{
    json_t *d = json_object();
    json_object_set_new(d, "type", json_string(dtype));
    json_object_set_new(d, field, value);
    add_block_event(ev, "content_block_delta", index, "delta", d);
}

/* content_block_start with content_block {"type":btype, ...fields} */
static void add_block_start(struct mock_events *ev, unsigned index, json_t *block)
{
    add_block_event(ev, "content_block_start", index, "content_block", block);
}

static json_t *typed(const char *type)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    return o;
}

static void anthropic_render_step(const struct mock_reply *r, const struct mock_step *s, struct mock_events *ev)
{
    json_t *o;
    switch (s->kind) {
    case MOCK_STEP_START:
        o = message_head(r, json_array());
        json_object_set_new(o, "stop_reason", json_null());
        json_object_set_new(o, "stop_sequence", json_null());
        json_object_set_new(o, "usage", usage_json(r->prompt_tokens, 1));
        json_t *ms = typed("message_start");
        json_object_set_new(ms, "message", o);
        mock_events_add_sse_named(ev, "message_start", ms);
        json_decref(ms);
        o = typed("ping");
        mock_events_add_sse_named(ev, "ping", o);
        json_decref(o);
        break;
    case MOCK_STEP_THINK_START:
        o = typed("thinking");
        json_object_set_new(o, "thinking", json_string(""));
        json_object_set_new(o, "signature", json_string(""));
        add_block_start(ev, 0, o);
        break;
    case MOCK_STEP_THINK:
        add_delta(ev, 0, "thinking_delta", "thinking", json_stringn(r->thinking.p + s->off, s->len));
        break;
    case MOCK_STEP_THINK_END:
        add_delta(ev, 0, "signature_delta", "signature", json_string(r->signature));
        add_block_event(ev, "content_block_stop", 0, NULL, NULL);
        break;
    case MOCK_STEP_TEXT_START:
        o = typed("text");
        json_object_set_new(o, "text", json_string(""));
        add_block_start(ev, block_index(r, 0), o);
        break;
    case MOCK_STEP_TEXT:
        add_delta(ev, block_index(r, 0), "text_delta", "text", json_stringn(r->content.p + s->off, s->len));
        break;
    case MOCK_STEP_CALL_START:
        o = typed("tool_use");
        json_object_set_new(o, "id", tool_use_id(s->call));
        json_object_set_new(o, "name", json_string(r->calls[s->call].name));
        json_object_set_new(o, "input", json_object());
        add_block_start(ev, block_index(r, s->call), o);
        break;
    case MOCK_STEP_CALL_ARGS:
        add_delta(ev, block_index(r, s->call), "input_json_delta", "partial_json",
                  json_stringn(r->calls[s->call].arguments.p + s->off, s->len));
        break;
    case MOCK_STEP_TEXT_END:
    case MOCK_STEP_CALL_END:
        add_block_event(ev, "content_block_stop", block_index(r, s->kind == MOCK_STEP_CALL_END ? s->call : 0), NULL,
                        NULL);
        break;
    case MOCK_STEP_FINISH: {
        json_t *d = json_object();
        json_object_set_new(d, "stop_reason", json_string(stop_reason(r)));
        json_object_set_new(d, "stop_sequence", json_null());
        json_t *u = json_object();
        json_object_set_new(u, "output_tokens", json_integer(r->completion_tokens));
        o = typed("message_delta");
        json_object_set_new(o, "delta", d);
        json_object_set_new(o, "usage", u);
        mock_events_add_sse_named(ev, "message_delta", o);
        json_decref(o);
        break;
    }
    case MOCK_STEP_USAGE:
        break; /* the usage rides on message_start and message_delta */
    case MOCK_STEP_DONE:
        o = typed("message_stop");
        mock_events_add_sse_named(ev, "message_stop", o);
        json_decref(o);
        break;
    }
}

static void anthropic_render_malformed_event(const struct mock_reply *r, struct mock_events *ev)
{
    /* a delta cut off in the middle of a string: framing intact, payload not JSON */
    leo_buf_adds(&ev->data, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
                            "\"delta\":{\"type\":\"text_delta\",\"text\":\"brok\n\n");
    mock_events_commit(ev);
}

const struct mock_format mock_anthropic_format = {
    .name = "anthropic",
    .parse_chat = anthropic_parse_chat,
    .render_reply = anthropic_render_reply,
    .render_step = anthropic_render_step,
    .render_malformed_event = anthropic_render_malformed_event,
    .render_error = anthropic_render_error,
    .response_headers = anthropic_response_headers,
    .stream_content_type = NULL,
};
