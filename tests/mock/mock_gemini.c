#include "mock_gemini.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/arena.h"

/* chat->variant of a streamed request */
enum {
    GEMINI_STREAM_ARRAY = 0, /* no alt=sse: one JSON array, element by element */
    GEMINI_STREAM_SSE = 1,   /* alt=sse */
};

/* status → google.rpc.Code name; the fallback is by class (4xx FAILED_PRECONDITION, 5xx INTERNAL). */
static const struct {
    int status;
    const char *name;
} rpc_status[] = {
    {400, "INVALID_ARGUMENT"}, {401, "UNAUTHENTICATED"}, {403, "PERMISSION_DENIED"}, {404, "NOT_FOUND"},
    {409, "ABORTED"},          {429, "RESOURCE_EXHAUSTED"}, {499, "CANCELLED"},     {500, "INTERNAL"},
    {501, "NOT_IMPLEMENTED"},  {503, "UNAVAILABLE"},     {504, "DEADLINE_EXCEEDED"},
};

static void gemini_render_error(int status, const char *message, const char *param, int retry_after_s,
                                struct leo_buf *out)
{
    const char *name = status >= 500 ? "INTERNAL" : "FAILED_PRECONDITION";
    for (size_t i = 0; i < sizeof(rpc_status) / sizeof(rpc_status[0]); i++) {
        if (rpc_status[i].status == status) {
            name = rpc_status[i].name;
            break;
        }
    }
    json_t *e = json_object();
    json_object_set_new(e, "code", json_integer(status));
    json_object_set_new(e, "message", mock_json_string_lossy(message, strlen(message)));
    json_object_set_new(e, "status", json_string(name));
    if (status == 429 && retry_after_s >= 0) {
        /* Google states the wait in a RetryInfo detail, not (only) in a header */
        char delay[24];
        snprintf(delay, sizeof(delay), "%ds", retry_after_s);
        json_t *d = json_object();
        json_object_set_new(d, "@type", json_string("type.googleapis.com/google.rpc.RetryInfo"));
        json_object_set_new(d, "retryDelay", json_string(delay));
        json_t *details = json_array();
        json_array_append_new(details, d);
        json_object_set_new(e, "details", details);
    }
    json_t *root = json_object();
    json_object_set_new(root, "error", e);
    mock_json_append(out, root, 0);
    json_decref(root);
}

/* ---- parsing ------------------------------------------------------------------------------------------ */

/* A field under its lowerCamelCase name or its snake_case name (proto JSON accepts both). */
static json_t *field(json_t *o, const char *camel, const char *snake)
{
    json_t *v = json_object_get(o, camel);
    return v != NULL ? v : json_object_get(o, snake);
}

/* The model of a path ".../models/<model>:<method>": what lies between "/models/" and the last ':'. */
static struct leo_str path_model(struct leo_str path)
{
    static const char marker[] = "/models/";
    const size_t mlen = sizeof(marker) - 1;
    size_t colon = path.len;
    while (colon > 0 && path.p[colon - 1] != ':')
        colon--;
    if (colon == 0)
        return leo_str_n("", 0);
    colon--;
    for (size_t i = 0; i + mlen <= colon; i++)
        if (memcmp(path.p + i, marker, mlen) == 0)
            return leo_str_n(path.p + i + mlen, colon - i - mlen);
    return leo_str_n("", 0);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The model name with %XX escapes decoded (clients escape bytes outside [A-Za-z0-9._-]), NUL-terminated in a;
 * a '%' not followed by two hex digits is kept as it is. A decoded name that is not UTF-8 is replaced like any
 * other lossy string when rendered. */
static char *decode_model(struct leo_str m, struct leo_arena *a)
{
    char *out = leo_arena_alloc(a, m.len + 1);
    size_t n = 0;
    for (size_t i = 0; i < m.len; i++) {
        int hi = m.p[i] == '%' && i + 2 < m.len ? hex_value(m.p[i + 1]) : -1;
        int lo = hi >= 0 ? hex_value(m.p[i + 2]) : -1;
        if (lo >= 0) {
            out[n++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[n++] = m.p[i];
        }
    }
    out[n] = '\0';
    return out;
}

/* True when the query string has the parameter name=value. */
static bool query_has(struct leo_str query, const char *param)
{
    size_t start = 0;
    for (size_t i = 0; i <= query.len; i++) {
        if (i < query.len && query.p[i] != '&')
            continue;
        if (leo_str_eqc(leo_str_n(query.p + start, i - start), param))
            return true;
        start = i + 1;
    }
    return false;
}

/* Counts the words of a JSON value's compact text (how a functionResponse is charged). */
static unsigned json_words(json_t *v)
{
    if (v == NULL)
        return 0;
    struct leo_buf b = LEO_BUF_INIT;
    mock_json_append(&b, v, 0);
    unsigned n = mock_count_words(b.p, b.len);
    leo_buf_release(&b);
    return n;
}

/* One Content: its non-thought text parts into text, images counted; *tool_only tells whether every part is a
 * functionResponse (and there is at least one); *extra_words gets the words of the function responses. */
static int content_parts(json_t *content, const char *where, struct leo_buf *text, unsigned *images,
                         bool *tool_only, unsigned *extra_words, struct mock_error *err)
{
    json_t *parts = json_object_get(content, "parts");
    if (!json_is_array(parts) || json_array_size(parts) == 0)
        return mock_error_set(err, 400, NULL, "%s.parts: must be a non-empty list", where);
    size_t i, nresponses = 0;
    json_t *p;
    json_array_foreach(parts, i, p) {
        if (!json_is_object(p))
            return mock_error_set(err, 400, NULL, "%s.parts[%zu]: must be an object", where, i);
        json_t *t = json_object_get(p, "text");
        json_t *resp = field(p, "functionResponse", "function_response");
        if (t != NULL) {
            if (!json_is_string(t))
                return mock_error_set(err, 400, NULL, "%s.parts[%zu].text: must be a string", where, i);
            if (!json_is_true(json_object_get(p, "thought")))
                leo_buf_add(text, json_string_value(t), json_string_length(t));
        } else if (field(p, "inlineData", "inline_data") != NULL || field(p, "fileData", "file_data") != NULL) {
            (*images)++;
        } else if (resp != NULL) {
            nresponses++;
            *extra_words += json_words(json_object_get(resp, "response"));
        }
        /* functionCall, executableCode and other parts carry no text of their own here */
    }
    *tool_only = nresponses > 0 && nresponses == json_array_size(parts);
    return 0;
}

static int parse_contents(json_t *contents, struct leo_arena *a, struct mock_chat *chat, struct mock_error *err)
{
    struct leo_buf text = LEO_BUF_INIT;
    int rc = 0;
    size_t i;
    json_t *c;
    json_array_foreach(contents, i, c) {
        if (!json_is_object(c)) {
            rc = mock_error_set(err, 400, NULL, "contents[%zu]: must be an object", i);
            break;
        }
        json_t *role_j = json_object_get(c, "role");
        const char *role = json_string_value(role_j);
        if (role_j != NULL && (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "model") != 0))) {
            rc = mock_error_set(err, 400, NULL, "contents[%zu].role: please use a valid role: user, model", i);
            break;
        }
        bool user = role == NULL || strcmp(role, "user") == 0;
        bool tool_only;
        unsigned extra = 0;
        leo_buf_reset(&text);
        char where[40];
        snprintf(where, sizeof(where), "contents[%zu]", i);
        rc = content_parts(c, where, &text, &chat->images, &tool_only, &extra, err);
        if (rc)
            break;
        chat->nmessages++;
        chat->prompt_words += mock_count_words(text.p, text.len) + extra;
        chat->after_tool_result = user && tool_only;
        if (user && !tool_only)
            chat->last_user = leo_arena_strdup_str(a, leo_buf_str(&text));
    }
    leo_buf_release(&text);
    return rc;
}

static void parse_tools(json_t *tools, struct leo_arena *a, struct mock_chat *chat)
{
    size_t i, j, n = 0;
    json_t *t, *d;
    json_array_foreach(tools, i, t) {
        n += json_array_size(field(t, "functionDeclarations", "function_declarations"));
    }
    if (n == 0)
        return;
    chat->tools = leo_arena_alloc(a, n * sizeof(*chat->tools));
    json_array_foreach(tools, i, t) {
        json_array_foreach(field(t, "functionDeclarations", "function_declarations"), j, d) {
            const char *name = json_string_value(json_object_get(d, "name"));
            if (name != NULL)
                chat->tools[chat->ntools++] = leo_arena_strndup(a, name, strlen(name));
        }
    }
}

/* A GenerateContentRequest object (the body, or countTokens' generateContentRequest) into chat. */
static int parse_request(json_t *root, struct leo_arena *a, struct mock_chat *chat, struct mock_error *err)
{
    json_t *contents = json_object_get(root, "contents");
    if (contents == NULL)
        return mock_error_set(err, 400, NULL, "contents: contents is not specified");
    if (!json_is_array(contents) || json_array_size(contents) == 0)
        return mock_error_set(err, 400, NULL, "contents: must be a non-empty list");
    json_t *system = field(root, "systemInstruction", "system_instruction");
    if (system != NULL) {
        struct leo_buf text = LEO_BUF_INIT;
        bool tool_only;
        unsigned extra = 0;
        int rc = json_is_object(system)
                     ? content_parts(system, "systemInstruction", &text, &chat->images, &tool_only, &extra, err)
                     : mock_error_set(err, 400, NULL, "systemInstruction: must be a Content object");
        chat->nmessages++;
        chat->prompt_words += mock_count_words(text.p, text.len) + extra;
        leo_buf_release(&text);
        if (rc)
            return rc;
    }
    int rc = parse_contents(contents, a, chat, err);
    if (rc)
        return rc;
    json_t *tools = json_object_get(root, "tools");
    if (json_is_array(tools))
        parse_tools(tools, a, chat);
    json_t *thinking = field(field(root, "generationConfig", "generation_config"), "thinkingConfig", "thinking_config");
    chat->thinking = json_is_true(field(thinking, "includeThoughts", "include_thoughts"));
    return 0;
}

static int gemini_parse_chat(const struct leo_http_request *req, struct leo_arena *a, struct mock_chat *chat,
                             struct mock_error *err)
{
    memset(chat, 0, sizeof(*chat));
    chat->last_user = leo_str_n("", 0);
    struct leo_str model = path_model(req->path);
    if (model.len == 0)
        return mock_error_set(err, 404, NULL, "no model in the path %.*s", (int)req->path.len, req->path.p);
    json_t *root = mock_json_load_object(req->body.p, req->body.len, err);
    if (root == NULL)
        return err->status;
    int rc = parse_request(root, a, chat, err);
    json_decref(root);
    if (rc)
        return rc;
    chat->model = decode_model(model, a);
    static const char stream_suffix[] = ":streamGenerateContent";
    size_t slen = sizeof(stream_suffix) - 1;
    chat->stream = req->path.len >= slen && memcmp(req->path.p + req->path.len - slen, stream_suffix, slen) == 0;
    chat->variant = query_has(req->query, "alt=sse") ? GEMINI_STREAM_SSE : GEMINI_STREAM_ARRAY;
    return 0;
}

/* ---- rendering ---------------------------------------------------------------------------------------- */

/* usageMetadata for out completion tokens of which think are thoughts; zero counts are left out, as proto3
 * JSON leaves them out. */
static json_t *usage_json(const struct mock_reply *r, unsigned out, unsigned think)
{
    json_t *u = json_object();
    json_object_set_new(u, "promptTokenCount", json_integer(r->prompt_tokens));
    if (out - think)
        json_object_set_new(u, "candidatesTokenCount", json_integer(out - think));
    json_object_set_new(u, "totalTokenCount", json_integer((json_int_t)r->prompt_tokens + out));
    if (think)
        json_object_set_new(u, "thoughtsTokenCount", json_integer(think));
    return u;
}

/* A whole GenerateContentResponse with one candidate holding parts (taken); finish may be NULL. */
static json_t *response(const struct mock_reply *r, json_t *parts, const char *finish, unsigned out, unsigned think)
{
    json_t *content = json_object();
    json_object_set_new(content, "parts", parts);
    json_object_set_new(content, "role", json_string("model"));
    json_t *cand = json_object();
    json_object_set_new(cand, "content", content);
    if (finish != NULL)
        json_object_set_new(cand, "finishReason", json_string(finish));
    json_object_set_new(cand, "index", json_integer(0));
    json_t *cands = json_array();
    json_array_append_new(cands, cand);
    json_t *root = json_object();
    json_object_set_new(root, "candidates", cands);
    json_object_set_new(root, "usageMetadata", usage_json(r, out, think));
    return root;
}

static void add_ids(const struct mock_reply *r, json_t *root)
{
    char id[40];
    snprintf(id, sizeof(id), "mock-%llu", (unsigned long long)r->seq);
    json_object_set_new(root, "modelVersion", mock_json_string_lossy(r->chat->model, strlen(r->chat->model)));
    json_object_set_new(root, "responseId", json_string(id));
}

/* The answer to a blocked prompt: promptFeedback and no candidates. */
static json_t *blocked_response(const struct mock_reply *r)
{
    json_t *fb = json_object();
    json_object_set_new(fb, "blockReason", json_string("SAFETY"));
    json_t *root = json_object();
    json_object_set_new(root, "promptFeedback", fb);
    json_object_set_new(root, "usageMetadata", usage_json(r, 0, 0));
    add_ids(r, root);
    return root;
}

static json_t *text_part(const char *p, size_t len, bool thought)
{
    json_t *o = json_object();
    json_object_set_new(o, "text", json_stringn(p, len));
    if (thought)
        json_object_set_new(o, "thought", json_true());
    return o;
}

/* A functionCall part; the first call of a reply that thought carries the thinking's signature as its
 * thoughtSignature, as Gemini 2.5 signs the first function call after thinking. */
static json_t *call_part(const struct mock_reply *r, size_t i)
{
    const struct mock_call *c = &r->calls[i];
    json_t *args = json_loadb(c->arguments.p, c->arguments.len, 0, NULL);
    if (args == NULL) /* cannot happen: the arguments are the compact JSON mock_chat.c built */
        abort();
    json_t *fc = json_object();
    json_object_set_new(fc, "name", json_string(c->name));
    json_object_set_new(fc, "args", args);
    json_t *o = json_object();
    json_object_set_new(o, "functionCall", fc);
    if (i == 0 && r->thinking.len)
        json_object_set_new(o, "thoughtSignature", json_string(r->signature));
    return o;
}

static void gemini_render_reply(const struct mock_reply *r, struct leo_buf *out)
{
    json_t *root;
    if (r->blocked) {
        root = blocked_response(r);
    } else {
        json_t *parts = json_array();
        if (r->thinking.len)
            json_array_append_new(parts, text_part(r->thinking.p, r->thinking.len, true));
        for (size_t i = 0; i < r->ncalls; i++)
            json_array_append_new(parts, call_part(r, i));
        if (r->content.len)
            json_array_append_new(parts, text_part(r->content.p, r->content.len, false));
        root = response(r, parts, "STOP", r->completion_tokens, r->thinking_tokens);
        add_ids(r, root);
    }
    mock_json_append(out, root, 0);
    json_decref(root);
}

/* Whether a step renders a response object: thoughts and text one per piece, a call whole at its start, and
 * the final object at FINISH. */
static bool step_emits(enum mock_step_kind k)
{
    return k == MOCK_STEP_THINK || k == MOCK_STEP_TEXT || k == MOCK_STEP_CALL_START || k == MOCK_STEP_FINISH;
}

/* One response object as one event: SSE-framed, or as an element of the JSON array (the first opens it). */
static void add_object(const struct mock_reply *r, const struct mock_step *s, json_t *root, struct mock_events *ev)
{
    if (r->chat->variant == GEMINI_STREAM_SSE) {
        mock_events_add_framed(ev, "data: ", root, "\r\n\r\n");
        return;
    }
    /* the first emitting step is at most two steps in (START, then a block's START) */
    const struct mock_step *first = r->steps;
    while (!step_emits(first->kind))
        first++;
    mock_events_add_framed(ev, s == first ? "[" : ",\r\n", root, "");
}

static void gemini_render_step(const struct mock_reply *r, const struct mock_step *s, struct mock_events *ev)
{
    json_t *parts, *root;
    switch (s->kind) {
    case MOCK_STEP_THINK:
    case MOCK_STEP_TEXT:
    case MOCK_STEP_CALL_START:
        parts = json_array();
        if (s->kind == MOCK_STEP_CALL_START)
            json_array_append_new(parts, call_part(r, s->call));
        else if (s->kind == MOCK_STEP_THINK)
            json_array_append_new(parts, text_part(r->thinking.p + s->off, s->len, true));
        else
            json_array_append_new(parts, text_part(r->content.p + s->off, s->len, false));
        root = response(r, parts, NULL, s->out_tokens, s->think_tokens);
        add_ids(r, root);
        add_object(r, s, root, ev);
        json_decref(root);
        break;
    case MOCK_STEP_FINISH:
        if (r->blocked) {
            root = blocked_response(r);
        } else {
            /* the last object closes the candidate with an empty text part, as the API's final chunk does */
            parts = json_array();
            json_array_append_new(parts, text_part("", 0, false));
            root = response(r, parts, "STOP", r->completion_tokens, r->thinking_tokens);
            add_ids(r, root);
        }
        add_object(r, s, root, ev);
        json_decref(root);
        break;
    case MOCK_STEP_DONE:
        if (r->chat->variant == GEMINI_STREAM_ARRAY) {
            leo_buf_adds(&ev->data, "]");
            mock_events_commit(ev);
        }
        break; /* an SSE stream just ends */
    case MOCK_STEP_START:
    case MOCK_STEP_THINK_START:
    case MOCK_STEP_THINK_END:
    case MOCK_STEP_TEXT_START:
    case MOCK_STEP_TEXT_END:
    case MOCK_STEP_CALL_ARGS:
    case MOCK_STEP_CALL_END:
    case MOCK_STEP_USAGE:
        break; /* no event of their own: calls go whole, usage rides on every object */
    }
}

static void gemini_render_malformed_event(const struct mock_reply *r, struct mock_events *ev)
{
    /* an object cut off in the middle of a string; it always follows an earlier event, so in the array it
     * is a later element */
    leo_buf_adds(&ev->data, r->chat->variant == GEMINI_STREAM_SSE ? "data: " : ",\r\n");
    leo_buf_adds(&ev->data, "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"brok");
    if (r->chat->variant == GEMINI_STREAM_SSE)
        leo_buf_adds(&ev->data, "\r\n\r\n");
    mock_events_commit(ev);
}

static const char *gemini_stream_content_type(const struct mock_chat *chat)
{
    return chat->variant == GEMINI_STREAM_SSE ? "text/event-stream" : "application/json";
}

const struct mock_format mock_gemini_format = {
    .name = "gemini",
    .parse_chat = gemini_parse_chat,
    .render_reply = gemini_render_reply,
    .render_step = gemini_render_step,
    .render_malformed_event = gemini_render_malformed_event,
    .render_error = gemini_render_error,
    .response_headers = NULL,
    .stream_content_type = gemini_stream_content_type,
};

/* ---- embedContent, batchEmbedContents, countTokens ---------------------------------------------------- */

/* One EmbedContentRequest → {"values":[...]}; where names it in messages. */
static int embed_one(json_t *req, const char *where, json_t **out, struct mock_error *err)
{
    json_t *content = json_object_get(req, "content");
    if (!json_is_object(content))
        return mock_error_set(err, 400, NULL, "%scontent: field required", where);
    json_t *parts = json_object_get(content, "parts");
    if (!json_is_array(parts) || json_array_size(parts) == 0)
        return mock_error_set(err, 400, NULL, "%scontent.parts: must be a non-empty list", where);
    unsigned dims = MOCK_EMBEDDING_DIMS;
    json_t *dj = field(req, "outputDimensionality", "output_dimensionality");
    if (dj != NULL) {
        if (!json_is_integer(dj) || json_integer_value(dj) < 1 || json_integer_value(dj) > MOCK_EMBEDDING_MAX_DIMS)
            return mock_error_set(err, 400, NULL, "%soutputDimensionality: must be an integer 1..%d", where,
                                  MOCK_EMBEDDING_MAX_DIMS);
        dims = (unsigned)json_integer_value(dj);
    }
    struct leo_buf text = LEO_BUF_INIT;
    size_t i;
    json_t *p;
    json_array_foreach(parts, i, p) {
        json_t *t = json_object_get(p, "text");
        if (json_is_string(t))
            leo_buf_add(&text, json_string_value(t), json_string_length(t));
    }
    float *v = leo_malloc(dims * sizeof(*v));
    mock_embed(text.p, text.len, dims, v);
    json_t *values = json_array();
    for (unsigned d = 0; d < dims; d++)
        json_array_append_new(values, json_real(v[d]));
    leo_free(v);
    leo_buf_release(&text);
    *out = json_object();
    json_object_set_new(*out, "values", values);
    return 0;
}

int mock_gemini_embed_content(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err)
{
    json_t *root = mock_json_load_object(req->body.p, req->body.len, err);
    if (root == NULL)
        return err->status;
    json_t *emb = NULL;
    int rc = embed_one(root, "", &emb, err);
    if (rc == 0) {
        json_t *resp = json_object();
        json_object_set_new(resp, "embedding", emb);
        /* 9 significant digits print every float32 exactly */
        mock_json_append(out, resp, JSON_REAL_PRECISION(9));
        json_decref(resp);
    }
    json_decref(root);
    return rc;
}

int mock_gemini_batch_embed(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err)
{
    json_t *root = mock_json_load_object(req->body.p, req->body.len, err);
    if (root == NULL)
        return err->status;
    json_t *requests = json_object_get(root, "requests");
    json_t *list = json_array();
    int rc = 0;
    if (!json_is_array(requests) || json_array_size(requests) == 0)
        rc = mock_error_set(err, 400, NULL, "requests: must be a non-empty list");
    size_t i;
    json_t *r;
    json_array_foreach(requests, i, r) {
        if (rc)
            break;
        char where[40];
        snprintf(where, sizeof(where), "requests[%zu].", i);
        json_t *emb = NULL;
        rc = embed_one(r, where, &emb, err);
        if (rc == 0)
            json_array_append_new(list, emb);
    }
    if (rc == 0) {
        json_t *resp = json_object();
        json_object_set_new(resp, "embeddings", json_incref(list));
        mock_json_append(out, resp, JSON_REAL_PRECISION(9));
        json_decref(resp);
    }
    json_decref(list);
    json_decref(root);
    return rc;
}

int mock_gemini_count_tokens(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err)
{
    json_t *root = mock_json_load_object(req->body.p, req->body.len, err);
    if (root == NULL)
        return err->status;
    json_t *inner = field(root, "generateContentRequest", "generate_content_request");
    struct leo_arena a = LEO_ARENA_INIT;
    struct mock_chat chat;
    memset(&chat, 0, sizeof(chat));
    int rc = json_is_object(inner) ? parse_request(inner, &a, &chat, err) : parse_request(root, &a, &chat, err);
    if (rc == 0)
        leo_buf_addf(out, "{\"totalTokens\":%u}", mock_prompt_tokens(&chat));
    leo_arena_destroy(&a);
    json_decref(root);
    return rc;
}
