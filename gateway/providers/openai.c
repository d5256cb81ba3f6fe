/*
 * openai.c — the OpenAI Chat Completions wire format (type "openai": OpenAI and every compatible API) and its
 * Azure OpenAI variant (type "azure": the deployment in the path, an api-version parameter, an api-key
 * header). The canonical form is this format, so translation is mostly parsing: it is used when a client
 * speaking another dialect (Anthropic) reaches an OpenAI-compatible upstream. OpenAI clients in front of these
 * upstreams are served by the engine's passthrough and never come here.
 */
#include "openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/alloc.h"
#include "../../common/error.h"
#include "../../common/json_scan.h"
#include "../config.h"

struct leo_stream_xlate {
    bool done;
};

static int openai_chat_url(const struct leo_provider *p, const char *model, bool stream, struct leo_buf *url)
{
    (void)model;
    (void)stream;
    return leo_buf_addf(url, "%s/chat/completions", p->base_url);
}

/* Azure names the deployment in the path; the configured upstream model is that deployment's name. */
static int azure_chat_url(const struct leo_provider *p, const char *model, bool stream, struct leo_buf *url)
{
    (void)stream;
    int rc = leo_buf_addf(url, "%s/openai/deployments/", p->base_url);
    for (const unsigned char *s = (const unsigned char *)model; rc == 0 && *s; s++) {
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
            *s == '_' || *s == '.')
            rc = leo_buf_addch(url, (char)*s);
        else
            rc = leo_buf_addf(url, "%%%02X", *s);
    }
    if (rc == 0)
        rc = leo_buf_addf(url, "/chat/completions?api-version=%s", p->api_version);
    return rc;
}

static struct leo_str join(struct leo_arena *a, const char *prefix, struct leo_str key)
{
    size_t n = strlen(prefix);
    char *s = leo_arena_alloc(a, n + key.len + 1);
    memcpy(s, prefix, n);
    memcpy(s + n, key.p, key.len);
    s[n + key.len] = '\0';
    return (struct leo_str){s, n + key.len};
}

static void openai_auth(const struct leo_provider *p, struct leo_str key, struct leo_http_header *h, size_t *n,
                        size_t max, struct leo_arena *a)
{
    (void)p;
    if (key.len && *n < max)
        h[(*n)++] = (struct leo_http_header){LEO_STR_LIT("Authorization"), join(a, "Bearer ", key)};
}

static void azure_auth(const struct leo_provider *p, struct leo_str key, struct leo_http_header *h, size_t *n,
                       size_t max, struct leo_arena *a)
{
    (void)p;
    if (key.len && *n < max)
        h[(*n)++] = (struct leo_http_header){LEO_STR_LIT("api-key"), join(a, "", key)};
}

static int openai_build_chat(json_t *canon, const struct leo_adapter_ctx *ctx, struct leo_buf *body,
                             struct leo_buf *err)
{
    (void)err;
    json_t *req = json_copy(canon); /* shallow: only top-level members are replaced */
    json_object_set_new(req, "model", json_string(ctx->model));
    if (json_is_true(json_object_get(req, "stream"))) {
        json_t *so = json_object_get(req, "stream_options");
        so = json_is_object(so) ? json_copy(so) : json_object();
        json_object_set_new(so, "include_usage", json_true());
        json_object_set_new(req, "stream_options", so);
    }
    char *s = json_dumps(req, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(req);
    if (s == NULL)
        return LEO_EINVAL;
    int rc = leo_buf_adds(body, s);
    free(s);
    return rc;
}

static json_t *openai_parse_chat(const char *body, size_t len, const struct leo_adapter_ctx *ctx, struct leo_usage *u,
                                 struct leo_buf *err)
{
    (void)ctx;
    json_t *root = json_loadb(body, len, 0, NULL);
    if (!json_is_object(root) || !json_is_array(json_object_get(root, "choices"))) {
        json_decref(root);
        leo_buf_adds(err, "upstream returned a body that is not a chat completion");
        return NULL;
    }
    leo_usage_from_openai(json_object_get(root, "usage"), u);
    return root;
}

static struct leo_stream_xlate *openai_stream_new(const struct leo_adapter_ctx *ctx)
{
    (void)ctx;
    return leo_new(struct leo_stream_xlate);
}

static int openai_stream_event(struct leo_stream_xlate *st, struct leo_str event, struct leo_str data, json_t *out,
                               struct leo_usage *u, struct leo_buf *err)
{
    (void)event;
    if (leo_str_eqc(data, "[DONE]")) {
        st->done = true;
        return 1;
    }
    json_t *chunk = json_loadb(data.p, data.len, 0, NULL);
    if (!json_is_object(chunk)) {
        json_decref(chunk);
        leo_buf_adds(err, "upstream sent a stream event that is not a JSON object");
        return LEO_EUPSTREAM;
    }
    json_t *e = json_object_get(chunk, "error");
    if (e != NULL) {
        json_t *m = json_is_object(e) ? json_object_get(e, "message") : e;
        leo_buf_addf(err, "upstream error event: %s", json_is_string(m) ? json_string_value(m) : "(no message)");
        json_decref(chunk);
        return LEO_EUPSTREAM;
    }
    leo_usage_from_openai(json_object_get(chunk, "usage"), u);
    json_array_append_new(out, chunk);
    return 0;
}

static int openai_stream_end(struct leo_stream_xlate *st, json_t *out, struct leo_usage *u, struct leo_buf *err)
{
    (void)out;
    (void)u;
    if (st->done)
        return 0;
    leo_buf_adds(err, "stream ended before [DONE]");
    return LEO_EUPSTREAM;
}

static void openai_stream_free(struct leo_stream_xlate *st)
{
    leo_free(st);
}

void leo_openai_error_message(const char *body, size_t len, char *out, size_t size)
{
    out[0] = '\0';
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *e = json_is_object(root) ? json_object_get(root, "error") : NULL;
    json_t *m = json_is_object(e) ? json_object_get(e, "message") : e;
    if (json_is_string(m))
        snprintf(out, size, "%s", json_string_value(m));
    json_decref(root);
}

const struct leo_adapter leo_adapter_openai = {
    .type = "openai",
    .dialect = LEO_DIALECT_OPENAI,
    .chat_url = openai_chat_url,
    .auth_headers = openai_auth,
    .build_chat = openai_build_chat,
    .parse_chat = openai_parse_chat,
    .stream_new = openai_stream_new,
    .stream_event = openai_stream_event,
    .stream_end = openai_stream_end,
    .stream_free = openai_stream_free,
    .error_message = leo_openai_error_message,
};

const struct leo_adapter leo_adapter_azure = {
    .type = "azure",
    .dialect = LEO_DIALECT_OPENAI,
    .chat_url = azure_chat_url,
    .auth_headers = azure_auth,
    .build_chat = openai_build_chat,
    .parse_chat = openai_parse_chat,
    .stream_new = openai_stream_new,
    .stream_event = openai_stream_event,
    .stream_end = openai_stream_end,
    .stream_free = openai_stream_free,
    .error_message = leo_openai_error_message,
};

/* ---- canonical usage ---- */

static uint64_t uint_member(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

void leo_usage_from_openai(json_t *usage, struct leo_usage *u)
{
    if (!json_is_object(usage))
        return;
    if (!json_is_integer(json_object_get(usage, "prompt_tokens")) &&
        !json_is_integer(json_object_get(usage, "completion_tokens")))
        return;
    u->input_tokens = uint_member(usage, "prompt_tokens");
    u->output_tokens = uint_member(usage, "completion_tokens");
    u->cache_read_tokens = uint_member(json_object_get(usage, "prompt_tokens_details"), "cached_tokens");
    u->cache_write_tokens = uint_member(usage, "cache_creation_input_tokens");
    u->have = true;
}

/* uint_member over a member's raw value */
static uint64_t uint_raw(struct leo_str v)
{
    int64_t n;
    return leo_json_number(v, &n, NULL) == 1 && n > 0 ? (uint64_t)n : 0;
}

void leo_usage_from_openai_raw(const char *p, size_t len, struct leo_usage *u)
{
    static const char *const keys[] = {"prompt_tokens", "completion_tokens", "prompt_tokens_details",
                                       "cache_creation_input_tokens"};
    static const char *const cached_key[] = {"cached_tokens"};
    struct leo_str v[4], cached = {NULL, 0};
    if (leo_json_get_members(p, len, keys, 4, v) != 0)
        return;
    if (leo_json_number(v[0], NULL, NULL) != 1 && leo_json_number(v[1], NULL, NULL) != 1)
        return;
    if (v[2].len > 0 && v[2].p[0] == '{')
        leo_json_get_members(v[2].p, v[2].len, cached_key, 1, &cached);
    u->input_tokens = uint_raw(v[0]);
    u->output_tokens = uint_raw(v[1]);
    u->cache_read_tokens = uint_raw(cached);
    u->cache_write_tokens = uint_raw(v[3]);
    u->have = true;
}

json_t *leo_usage_to_openai(const struct leo_usage *u)
{
    json_t *o = json_object();
    json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)u->input_tokens));
    json_object_set_new(o, "completion_tokens", json_integer((json_int_t)u->output_tokens));
    json_object_set_new(o, "total_tokens", json_integer((json_int_t)(u->input_tokens + u->output_tokens)));
    if (u->cache_read_tokens) {
        json_t *d = json_object();
        json_object_set_new(d, "cached_tokens", json_integer((json_int_t)u->cache_read_tokens));
        json_object_set_new(o, "prompt_tokens_details", d);
    }
    if (u->cache_write_tokens)
        json_object_set_new(o, "cache_creation_input_tokens", json_integer((json_int_t)u->cache_write_tokens));
    return o;
}
