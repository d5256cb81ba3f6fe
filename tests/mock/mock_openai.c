#include "mock_openai.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"

/* status → (error type, error code) in the style of OpenAI's error objects; the first match wins, and the
 * fallback is by class (4xx invalid_request_error, 5xx server_error). */
static const struct {
    int status;
    const char *type;
    const char *code;
} error_kinds[] = {
    {400, "invalid_request_error", NULL},
    {401, "invalid_request_error", "invalid_api_key"},
    {403, "permission_error", "unsupported_country_region_territory"},
    {404, "invalid_request_error", "model_not_found"},
    {408, "timeout_error", NULL},
    {409, "conflict_error", NULL},
    {429, "requests", "rate_limit_exceeded"},
    {500, "server_error", NULL},
    {502, "server_error", "bad_gateway"},
    {503, "server_error", "overloaded"},
    {504, "server_error", "timeout"},
};

static const char *const mock_models[] = {"mock-small", "mock-large"};

/* Rate-limit headers a real OpenAI response carries; fixed values, the mock does not rate limit. */
static const struct {
    const char *name, *value;
} ratelimit_headers[] = {
    {"x-ratelimit-limit-requests", "10000"},
    {"x-ratelimit-remaining-requests", "9999"},
    {"x-ratelimit-limit-tokens", "2000000"},
    {"x-ratelimit-remaining-tokens", "1999000"},
    {"x-ratelimit-reset-requests", "6ms"},
    {"x-ratelimit-reset-tokens", "30ms"},
};

static void openai_render_error(int status, const char *message, const char *param, int retry_after_s,
                                struct leo_buf *out)
{
    const char *type = status >= 500 ? "server_error" : "invalid_request_error", *code = NULL;
    for (size_t i = 0; i < sizeof(error_kinds) / sizeof(error_kinds[0]); i++) {
        if (error_kinds[i].status == status) {
            type = error_kinds[i].type;
            code = error_kinds[i].code;
            break;
        }
    }
    json_t *e = json_object();
    json_object_set_new(e, "message", mock_json_string_lossy(message, strlen(message)));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", e);
    mock_json_append(out, root, 0);
    json_decref(root);
}

static void openai_response_headers(uint64_t seq, struct leo_arena *a, struct leo_http_header *h, size_t *n)
{
    char id[40];
    int len = snprintf(id, sizeof(id), "req-mock-%llu", (unsigned long long)seq);
    h[(*n)++] = (struct leo_http_header){LEO_STR_LIT("x-request-id"),
                                         leo_arena_strdup_str(a, leo_str_n(id, (size_t)len))};
    for (size_t i = 0; i < sizeof(ratelimit_headers) / sizeof(ratelimit_headers[0]); i++)
        h[(*n)++] = (struct leo_http_header){leo_str_c(ratelimit_headers[i].name),
                                             leo_str_c(ratelimit_headers[i].value)};
}

/* ---- parsing ------------------------------------------------------------------------------------------ */

static bool is_image_part(const char *type)
{
    return strcmp(type, "image_url") == 0 || strcmp(type, "input_image") == 0 || strcmp(type, "image") == 0;
}

/* The text of one message's content into text (reset first); image parts counted in *images. */
static int content_text(json_t *content, size_t index, struct leo_buf *text, unsigned *images,
                        struct mock_error *err)
{
    leo_buf_reset(text);
    if (content == NULL || json_is_null(content))
        return 0;
    if (json_is_string(content)) {
        leo_buf_add(text, json_string_value(content), json_string_length(content));
        return 0;
    }
    if (!json_is_array(content))
        return mock_error_set(err, 400, "messages", "messages[%zu].content must be a string or an array of parts",
                              index);
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        if (type == NULL)
            return mock_error_set(err, 400, "messages", "messages[%zu].content[%zu] has no string \"type\"", index,
                                  i);
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(part, "text");
            if (!json_is_string(t))
                return mock_error_set(err, 400, "messages", "messages[%zu].content[%zu].text must be a string",
                                      index, i);
            leo_buf_add(text, json_string_value(t), json_string_length(t));
        } else if (is_image_part(type)) {
            (*images)++;
        }
    }
    return 0;
}

static int parse_messages(json_t *messages, struct leo_arena *a, struct mock_chat *chat, struct mock_error *err)
{
    struct leo_buf text = LEO_BUF_INIT;
    int rc = 0;
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role == NULL) {
            rc = mock_error_set(err, 400, "messages", "messages[%zu] must be an object with a string \"role\"", i);
            break;
        }
        rc = content_text(json_object_get(m, "content"), i, &text, &chat->images, err);
        if (rc)
            break;
        chat->nmessages++;
        chat->prompt_words += mock_count_words(text.p, text.len);
        chat->after_tool_result = strcmp(role, "tool") == 0 || strcmp(role, "function") == 0;
        if (strcmp(role, "user") == 0)
            chat->last_user = leo_arena_strdup_str(a, leo_buf_str(&text));
    }
    leo_buf_release(&text);
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
        const char *type = json_string_value(json_object_get(t, "type"));
        const char *name = json_string_value(json_object_get(json_object_get(t, "function"), "name"));
        if (name == NULL || (type != NULL && strcmp(type, "function") != 0))
            continue;
        chat->tools[chat->ntools++] = leo_arena_strndup(a, name, strlen(name));
    }
}

static int openai_parse_chat(const struct leo_http_request *req, struct leo_arena *a, struct mock_chat *chat,
                             struct mock_error *err)
{
    memset(chat, 0, sizeof(*chat));
    chat->last_user = leo_str_n("", 0);
    json_t *root = mock_json_load_object(req->body.p, req->body.len, err);
    if (root == NULL)
        return err->status;
    int rc = 0;
    json_t *model = json_object_get(root, "model");
    json_t *messages = json_object_get(root, "messages");
    json_t *stream = json_object_get(root, "stream");
    if (model == NULL) {
        rc = mock_error_set(err, 400, "model", "missing required parameter \"model\"");
    } else if (!json_is_string(model) || json_string_length(model) == 0) {
        rc = mock_error_set(err, 400, "model", "\"model\" must be a non-empty string");
    } else if (messages == NULL) {
        rc = mock_error_set(err, 400, "messages", "missing required parameter \"messages\"");
    } else if (!json_is_array(messages) || json_array_size(messages) == 0) {
        rc = mock_error_set(err, 400, "messages", "\"messages\" must be a non-empty array");
    } else if (stream != NULL && !json_is_boolean(stream) && !json_is_null(stream)) {
        rc = mock_error_set(err, 400, "stream", "\"stream\" must be a boolean");
    }
    if (rc == 0)
        rc = parse_messages(messages, a, chat, err);
    if (rc == 0) {
        chat->model = leo_arena_strndup(a, json_string_value(model), json_string_length(model));
        chat->stream = json_is_true(stream);
        chat->include_usage = json_is_true(json_object_get(json_object_get(root, "stream_options"), "include_usage"));
        parse_tools(json_object_get(root, "tools"), a, chat);
    }
    json_decref(root);
    return rc;
}

/* ---- rendering ---------------------------------------------------------------------------------------- */

static json_t *usage_json(const struct mock_reply *r)
{
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(r->prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(r->completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer((json_int_t)r->prompt_tokens + r->completion_tokens));
    if (r->thinking_tokens) {
        json_t *d = json_object();
        json_object_set_new(d, "reasoning_tokens", json_integer(r->thinking_tokens));
        json_object_set_new(u, "completion_tokens_details", d);
    }
    return u;
}

static json_t *reply_head(const struct mock_reply *r, const char *object)
{
    char id[48];
    snprintf(id, sizeof(id), "chatcmpl-mock-%llu", (unsigned long long)r->seq);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(r->created));
    json_object_set_new(o, "model", json_string(r->chat->model));
    return o;
}

static const char *finish_reason(const struct mock_reply *r)
{
    return r->blocked ? "content_filter" : r->tool_calls ? "tool_calls" : "stop";
}

static void openai_render_reply(const struct mock_reply *r, struct leo_buf *out)
{
    json_t *msg = json_object();
    json_object_set_new(msg, "role", json_string("assistant"));
    if (r->tool_calls) {
        json_object_set_new(msg, "content", json_null());
        json_t *calls = json_array();
        for (size_t i = 0; i < r->ncalls; i++) {
            json_t *fn = json_object();
            json_object_set_new(fn, "name", json_string(r->calls[i].name));
            json_object_set_new(fn, "arguments", mock_json_span(r->calls[i].arguments));
            json_t *c = json_object();
            json_object_set_new(c, "id", json_string(r->calls[i].id));
            json_object_set_new(c, "type", json_string("function"));
            json_object_set_new(c, "function", fn);
            json_array_append_new(calls, c);
        }
        json_object_set_new(msg, "tool_calls", calls);
    } else {
        json_object_set_new(msg, "content", r->blocked ? json_null() : mock_json_span(r->content));
    }
    /* DeepSeek's reasoning field, the canonical form's extension */
    if (r->thinking.len)
        json_object_set_new(msg, "reasoning_content", mock_json_span(r->thinking));
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    json_object_set_new(choice, "message", msg);
    json_object_set_new(choice, "finish_reason", json_string(finish_reason(r)));
    json_t *root = reply_head(r, "chat.completion");
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(root, "choices", choices);
    json_object_set_new(root, "usage", usage_json(r));
    mock_json_append(out, root, 0);
    json_decref(root);
}

/* One chunk with a single choice carrying delta; like OpenAI, "usage": null rides on every chunk when the
 * client asked for usage. */
static void add_chunk(const struct mock_reply *r, json_t *delta, const char *finish, struct mock_events *ev)
{
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    json_object_set_new(choice, "delta", delta);
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *root = reply_head(r, "chat.completion.chunk");
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(root, "choices", choices);
    if (r->chat->include_usage)
        json_object_set_new(root, "usage", json_null());
    mock_events_add_sse_json(ev, root, 0);
    json_decref(root);
}

/* delta {"tool_calls":[call]} with call.function = fn */
static json_t *tool_delta(json_t *call, json_t *fn)
{
    json_object_set_new(call, "function", fn);
    json_t *calls = json_array();
    json_array_append_new(calls, call);
    json_t *delta = json_object();
    json_object_set_new(delta, "tool_calls", calls);
    return delta;
}

static void openai_render_step(const struct mock_reply *r, const struct mock_step *s, struct mock_events *ev)
{
    json_t *delta, *fields, *fn;
    switch (s->kind) {
    case MOCK_STEP_START:
        delta = json_object();
        json_object_set_new(delta, "role", json_string("assistant"));
        json_object_set_new(delta, "content", r->tool_calls ? json_null() : json_string(""));
        add_chunk(r, delta, NULL, ev);
        break;
    case MOCK_STEP_THINK:
        delta = json_object();
        json_object_set_new(delta, "reasoning_content", json_stringn(r->thinking.p + s->off, s->len));
        add_chunk(r, delta, NULL, ev);
        break;
    case MOCK_STEP_TEXT:
        delta = json_object();
        json_object_set_new(delta, "content", json_stringn(r->content.p + s->off, s->len));
        add_chunk(r, delta, NULL, ev);
        break;
    case MOCK_STEP_THINK_START:
    case MOCK_STEP_THINK_END:
    case MOCK_STEP_TEXT_START:
    case MOCK_STEP_TEXT_END:
    case MOCK_STEP_CALL_END:
        break; /* OpenAI has no block boundaries */
    case MOCK_STEP_CALL_START:
        fields = json_object();
        json_object_set_new(fields, "index", json_integer(s->call));
        json_object_set_new(fields, "id", json_string(r->calls[s->call].id));
        json_object_set_new(fields, "type", json_string("function"));
        fn = json_object();
        json_object_set_new(fn, "name", json_string(r->calls[s->call].name));
        json_object_set_new(fn, "arguments", json_string(""));
        add_chunk(r, tool_delta(fields, fn), NULL, ev);
        break;
    case MOCK_STEP_CALL_ARGS:
        fields = json_object();
        json_object_set_new(fields, "index", json_integer(s->call));
        fn = json_object();
        json_object_set_new(fn, "arguments", json_stringn(r->calls[s->call].arguments.p + s->off, s->len));
        add_chunk(r, tool_delta(fields, fn), NULL, ev);
        break;
    case MOCK_STEP_FINISH:
        add_chunk(r, json_object(), finish_reason(r), ev);
        break;
    case MOCK_STEP_USAGE:
        if (r->chat->include_usage) {
            json_t *root = reply_head(r, "chat.completion.chunk");
            json_object_set_new(root, "choices", json_array());
            json_object_set_new(root, "usage", usage_json(r));
            mock_events_add_sse_json(ev, root, 0);
            json_decref(root);
        }
        break;
    case MOCK_STEP_DONE:
        leo_buf_adds(&ev->data, "data: [DONE]\n\n");
        mock_events_commit(ev);
        break;
    }
}

static void openai_render_malformed_event(const struct mock_reply *r, struct mock_events *ev)
{
    /* a chunk cut off in the middle of a string: "data:" framing intact, payload not JSON */
    leo_buf_addf(&ev->data,
                 "data: {\"id\":\"chatcmpl-mock-%llu\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                 "\"delta\":{\"content\":\"brok\n\n",
                 (unsigned long long)r->seq);
    mock_events_commit(ev);
}

const struct mock_format mock_openai_format = {
    .name = "openai",
    .parse_chat = openai_parse_chat,
    .render_reply = openai_render_reply,
    .render_step = openai_render_step,
    .render_malformed_event = openai_render_malformed_event,
    .render_error = openai_render_error,
    .response_headers = openai_response_headers,
    .stream_content_type = NULL,
};

/* ---- /v1/models --------------------------------------------------------------------------------------- */

int mock_openai_models(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err)
{
    json_t *data = json_array();
    for (size_t i = 0; i < sizeof(mock_models) / sizeof(mock_models[0]); i++) {
        json_t *m = json_object();
        json_object_set_new(m, "id", json_string(mock_models[i]));
        json_object_set_new(m, "object", json_string("model"));
        json_object_set_new(m, "created", json_integer(1700000000));
        json_object_set_new(m, "owned_by", json_string("leo-mock"));
        json_array_append_new(data, m);
    }
    json_t *root = json_object();
    json_object_set_new(root, "object", json_string("list"));
    json_object_set_new(root, "data", data);
    mock_json_append(out, root, 0);
    json_decref(root);
    return 0;
}

/* ---- /v1/embeddings ----------------------------------------------------------------------------------- */

static json_t *embedding_value(const float *v, unsigned dims, bool base64)
{
    if (!base64) {
        json_t *arr = json_array();
        for (unsigned d = 0; d < dims; d++)
            json_array_append_new(arr, json_real(v[d]));
        return arr;
    }
    /* little-endian float32, base64 (what the OpenAI SDKs request by default and decode) */
    size_t nbytes = (size_t)dims * 4;
    unsigned char *bin = leo_malloc(nbytes);
    for (unsigned d = 0; d < dims; d++) {
        uint32_t bits;
        memcpy(&bits, &v[d], 4);
        for (int k = 0; k < 4; k++)
            bin[d * 4 + k] = (unsigned char)(bits >> (8 * k));
    }
    size_t b64len = sodium_base64_ENCODED_LEN(nbytes, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = leo_malloc(b64len);
    sodium_bin2base64(b64, b64len, bin, nbytes, sodium_base64_VARIANT_ORIGINAL);
    json_t *s = json_string(b64);
    leo_free(b64);
    leo_free(bin);
    return s;
}

/* Checks one input item; returns its text to hash (a token array hashes as its compact JSON) and its token
 * count, or a status. */
static int embedding_item(json_t *item, size_t index, struct leo_buf *text, unsigned *tokens,
                          struct mock_error *err)
{
    leo_buf_reset(text);
    if (json_is_string(item)) {
        leo_buf_add(text, json_string_value(item), json_string_length(item));
        *tokens = mock_count_words(text->p, text->len);
        return 0;
    }
    if (json_is_array(item) && json_array_size(item) > 0) {
        size_t i;
        json_t *t;
        json_array_foreach(item, i, t) {
            if (!json_is_integer(t))
                return mock_error_set(err, 400, "input", "input[%zu] must be a string or an array of integers",
                                      index);
        }
        mock_json_append(text, item, 0);
        *tokens = (unsigned)json_array_size(item);
        return 0;
    }
    return mock_error_set(err, 400, "input", "input[%zu] must be a string or a non-empty array of integers", index);
}

int mock_openai_embeddings(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err)
{
    json_t *root = mock_json_load_object(req->body.p, req->body.len, err);
    if (root == NULL)
        return err->status;
    json_t *model = json_object_get(root, "model");
    json_t *input = json_object_get(root, "input");
    json_t *dims_j = json_object_get(root, "dimensions");
    const char *format = json_string_value(json_object_get(root, "encoding_format"));
    json_t *items = NULL, *data = NULL, *resp = NULL;
    unsigned dims = MOCK_EMBEDDING_DIMS, total = 0;
    float *v = NULL;
    struct leo_buf text = LEO_BUF_INIT;
    int rc = 0;

    if (!json_is_string(model) || json_string_length(model) == 0) {
        rc = mock_error_set(err, 400, "model", "missing required parameter \"model\"");
        goto out;
    }
    if (input == NULL) {
        rc = mock_error_set(err, 400, "input", "missing required parameter \"input\"");
        goto out;
    }
    if (dims_j != NULL) {
        if (!json_is_integer(dims_j) || json_integer_value(dims_j) < 1 ||
            json_integer_value(dims_j) > MOCK_EMBEDDING_MAX_DIMS) {
            rc = mock_error_set(err, 400, "dimensions", "\"dimensions\" must be an integer 1..%d",
                                MOCK_EMBEDDING_MAX_DIMS);
            goto out;
        }
        dims = (unsigned)json_integer_value(dims_j);
    }
    if (json_object_get(root, "encoding_format") != NULL && !json_is_null(json_object_get(root, "encoding_format")) &&
        (format == NULL || (strcmp(format, "float") != 0 && strcmp(format, "base64") != 0))) {
        rc = mock_error_set(err, 400, "encoding_format", "\"encoding_format\" must be \"float\" or \"base64\"");
        goto out;
    }
    /* a single string or a single token array is one input; anything else must be an array of inputs */
    bool single = json_is_string(input) ||
                  (json_is_array(input) && json_array_size(input) > 0 && json_is_integer(json_array_get(input, 0)));
    if (single) {
        items = json_array();
        json_array_append(items, input);
    } else if (json_is_array(input) && json_array_size(input) > 0) {
        items = json_incref(input);
    } else {
        rc = mock_error_set(err, 400, "input", "\"input\" must be a string or a non-empty array");
        goto out;
    }

    data = json_array();
    v = leo_malloc(dims * sizeof(*v));
    bool base64 = format != NULL && strcmp(format, "base64") == 0;
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) {
        unsigned tokens = 0;
        rc = embedding_item(item, i, &text, &tokens, err);
        if (rc)
            goto out;
        total += tokens;
        mock_embed(text.p, text.len, dims, v);
        json_t *e = json_object();
        json_object_set_new(e, "object", json_string("embedding"));
        json_object_set_new(e, "index", json_integer((json_int_t)i));
        json_object_set_new(e, "embedding", embedding_value(v, dims, base64));
        json_array_append_new(data, e);
    }
    resp = json_object();
    json_object_set_new(resp, "object", json_string("list"));
    json_object_set_new(resp, "data", json_incref(data));
    json_object_set_new(resp, "model", json_incref(model));
    json_t *usage = json_object();
    json_object_set_new(usage, "prompt_tokens", json_integer(total));
    json_object_set_new(usage, "total_tokens", json_integer(total));
    json_object_set_new(resp, "usage", usage);
    /* 9 significant digits print every float32 exactly */
    mock_json_append(out, resp, JSON_REAL_PRECISION(9));
out:
    leo_buf_release(&text);
    leo_free(v);
    json_decref(resp);
    json_decref(data);
    json_decref(items);
    json_decref(root);
    return rc;
}
