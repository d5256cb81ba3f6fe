/*
 * chat.c — POST /v1/chat/completions: validate, pick the deployment, forward through the upstream client and
 * relay the answer, streamed event by event or whole, with usage and cost accounted.
 *
 * Stages of one request (each callback names the next):
 *   leo_route_chat_completions  auth → parse → model → rewrite body → leo_upstream_start
 *   up_headers                  2xx + stream: start the client's SSE response now; otherwise collect the body
 *   up_data                     stream: parse SSE events, forward each at once; otherwise append (capped)
 *   up_done                     stream: [DONE] and end, or an SSE error event when the upstream broke;
 *                               whole: answer with the body (2xx) or a mapped error
 *   chat_close                  (from the request's on_close) cancel the transfer if the client left early
 *
 * The request body goes upstream byte for byte except "model" (replaced by the deployment's model) and, on
 * streams, "stream_options.include_usage" (forced on so every stream is accounted; the usage-only chunk is
 * removed again if the client did not ask for it).
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/json_scan.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "errors.h"
#include "handlers.h"
#include "sse.h"
#include "upstream.h"

#define MAX_UPSTREAM_BODY (64u << 20) /* whole (non-streamed) answers */
#define MAX_UPSTREAM_ERROR (64u << 10)
#define MAX_SSE_EVENT (8u << 20)
#define MAX_PASS_HEADERS 16

struct chat {
    struct leo_gw_req *g;
    struct leo_upstream_xfer *xfer;
    uint64_t t_start;
    bool client_wants_usage;
    bool streaming;   /* the client's SSE response has started */
    bool saw_done;
    bool broken;      /* the stream has already failed (malformed or error event) */
    bool paused;
    struct leo_buf body;
    struct leo_sse_parser sse;
    struct leo_buf ev; /* scratch for framing events */
    struct leo_http_header pass[MAX_PASS_HEADERS];
    size_t npass;
    char cost_s[32];
    char dep_s[256];
};

/* Upstream response headers relayed to the client; everything else (hop-by-hop, content-length, encodings,
 * cookies, server identity) stays behind. */
static const char *const pass_headers[] = {
    "x-request-id",  "openai-processing-ms", "openai-version", "retry-after", "retry-after-ms",
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
};

/* Client request headers forwarded upstream only with a bring-your-own key (they belong to that account). */
static const char *const byok_headers[] = {"openai-organization", "openai-project"};

/* How an upstream error status reaches the client. */
static const struct status_map {
    int lo, hi;          /* upstream status range */
    int status;          /* what the client gets; 0 = the upstream's own */
    const char *code;
    bool keep_message;   /* relay the upstream's error message */
} status_map[] = {
    {401, 403, 502, "upstream_auth_failed", false}, /* the gateway's provider key was refused */
    {429, 429, 429, "upstream_rate_limited", true},
    {400, 499, 0, NULL, true},                       /* the request itself was refused */
    {500, 599, 502, "upstream_error", true},
    {0, 999, 502, "upstream_error", false},
};

static void chat_release(struct chat *c)
{
    leo_buf_release(&c->body);
    leo_buf_release(&c->ev);
    leo_sse_parser_release(&c->sse);
}

static void chat_close(struct leo_gw_req *g, bool aborted)
{
    struct chat *c = g->data;
    if (c->xfer) {
        leo_upstream_cancel(c->xfer);
        c->xfer = NULL;
        if (!g->error)
            g->error = "client disconnected";
    }
    if (c->streaming)
        leo_metrics_gauge_add("leo_active_streams", "", -1);
    chat_release(c);
}

static void on_drain(struct leo_http_request *req)
{
    struct leo_gw_req *g = req->data;
    struct chat *c = g->data;
    if (c->paused && c->xfer) {
        c->paused = false;
        leo_upstream_resume(c->xfer);
    }
}

/* ---- accounting ---- */

static void read_usage(struct leo_gw_req *g, json_t *usage)
{
    if (!json_is_object(usage))
        return;
    json_t *pt = json_object_get(usage, "prompt_tokens");
    json_t *ct = json_object_get(usage, "completion_tokens");
    if (!json_is_integer(pt) && !json_is_integer(ct))
        return;
    g->prompt_tokens = json_is_integer(pt) && json_integer_value(pt) > 0 ? (uint64_t)json_integer_value(pt) : 0;
    g->completion_tokens =
        json_is_integer(ct) && json_integer_value(ct) > 0 ? (uint64_t)json_integer_value(ct) : 0;
    g->have_usage = true;
}

static void account(struct chat *c)
{
    struct leo_gw_req *g = c->g;
    if (g->have_usage) {
        const struct leo_price *p = leo_config_price(g->cfg, leo_str_c(g->dep->model));
        g->cost_usd = leo_price_cost(p, g->prompt_tokens, g->completion_tokens);
    }
    snprintf(c->cost_s, sizeof(c->cost_s), "%.8f", g->cost_usd);
}

/* ---- building the client's response headers ---- */

static size_t response_headers(struct chat *c, struct leo_http_header *h, size_t max, bool with_cost)
{
    size_t n = 0;
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-deployment"), leo_str_c(c->dep_s)};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-attempts"), LEO_STR_LIT("1")};
    if (with_cost)
        h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-cost-usd"), leo_str_c(c->cost_s)};
    for (size_t i = 0; i < c->npass && n < max; i++)
        h[n++] = c->pass[i];
    return n;
}

static void relay_error(struct chat *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void relay_error(struct chat *c, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct leo_gw_req *g = c->g;
    struct leo_buf b = LEO_BUF_INIT;
    leo_openai_error_json(&b, msg, leo_openai_error_type(status), NULL, code);
    struct leo_http_header h[MAX_PASS_HEADERS + 4];
    size_t n = response_headers(c, h, sizeof(h) / sizeof(h[0]), false);
    g->error = leo_arena_strndup(&g->req->arena, msg, strlen(msg));
    leo_gw_respond_json(g, status, h, n, b.p, b.len);
    leo_buf_release(&b);
}

/* The upstream's error message, with the provider key scrubbed should an upstream ever echo it. */
static void upstream_message(struct chat *c, char *out, size_t size)
{
    out[0] = '\0';
    json_t *root = json_loadb(c->body.p, c->body.len, 0, NULL);
    json_t *err = root ? json_object_get(root, "error") : NULL;
    json_t *msg = json_is_object(err) ? json_object_get(err, "message") : (json_is_string(err) ? err : NULL);
    if (json_is_string(msg))
        snprintf(out, size, "%s", json_string_value(msg));
    json_decref(root);
    const struct leo_provider *p = c->g->dep->provider;
    for (size_t i = 0; i < p->nkeys; i++) {
        size_t kl = strlen(p->keys[i].value);
        char *hit;
        while (kl >= 8 && (hit = strstr(out, p->keys[i].value)) != NULL) {
            memset(hit, '*', kl);
        }
    }
}

/* ---- streaming ---- */

static int send_event(struct chat *c, const char *event, const char *data, size_t len)
{
    leo_buf_reset(&c->ev);
    leo_sse_append_event(&c->ev, event, data, len);
    int rc = leo_http_stream_write(c->g->req, c->ev.p, c->ev.len);
    if (rc == 1 && c->xfer && !c->paused) {
        c->paused = true;
        leo_upstream_pause(c->xfer);
    }
    return rc < 0 ? rc : 0;
}

static void stream_fail(struct chat *c, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void stream_fail(struct chat *c, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct leo_buf b = LEO_BUF_INIT;
    leo_openai_error_json(&b, msg, "upstream_error", NULL, code);
    send_event(c, NULL, b.p, b.len);
    leo_buf_release(&b);
    c->g->error = leo_arena_strndup(&c->g->req->arena, msg, strlen(msg));
    /* A clean chunked end after the error event: clients read the event reliably, and the missing [DONE]
     * tells any SSE reader that the answer is incomplete. */
    leo_http_stream_end(c->g->req);
}

static void on_sse_event(void *ud, struct leo_str event, struct leo_str data, struct leo_str id)
{
    (void)id;
    struct chat *c = ud;
    if (c->saw_done || c->broken)
        return;
    if (leo_str_eqc(data, "[DONE]")) {
        c->saw_done = true;
        return;
    }
    bool forward = true;
    /* Only events that may carry usage or an error are parsed; plain deltas are relayed untouched. */
    if (memmem(data.p, data.len, "\"usage\"", 7) || memmem(data.p, data.len, "\"error\"", 7)) {
        json_t *root = json_loadb(data.p, data.len, 0, NULL);
        if (json_is_object(root)) {
            json_t *usage = json_object_get(root, "usage");
            if (json_is_object(usage)) {
                read_usage(c->g, usage);
                json_t *choices = json_object_get(root, "choices");
                if (!c->client_wants_usage && json_is_array(choices) && json_array_size(choices) == 0)
                    forward = false;
            }
            if (json_object_get(root, "error") != NULL) {
                c->broken = true;
                c->g->error = "upstream sent an error event";
            }
        }
        json_decref(root);
    }
    if (!forward)
        return;
    const char *ev = event.len ? leo_arena_strndup(&c->g->req->arena, event.p, event.len) : NULL;
    if (send_event(c, ev, data.p, data.len) < 0 && c->xfer) {
        leo_upstream_cancel(c->xfer);
        c->xfer = NULL;
        leo_sse_parser_stop(&c->sse);
    }
}

/* ---- upstream callbacks ---- */

static void up_headers(struct leo_upstream_xfer *x, int status, const struct leo_http_header *headers,
                       size_t nheaders, void *ud)
{
    struct chat *c = ud;
    struct leo_gw_req *g = c->g;
    g->upstream_status = status;
    g->upstream_ttfb_ms = leo_upstream_ttfb_ms(x);
    for (size_t i = 0; i < nheaders && c->npass < MAX_PASS_HEADERS; i++)
        for (size_t j = 0; j < sizeof(pass_headers) / sizeof(pass_headers[0]); j++)
            if (leo_str_caseeq(headers[i].name, pass_headers[j])) {
                c->pass[c->npass].name = leo_str_c(pass_headers[j]);
                c->pass[c->npass].value = leo_arena_strdup_str(&g->req->arena, headers[i].value);
                c->npass++;
                break;
            }
    if (status >= 200 && status < 300 && g->stream) {
        struct leo_http_header h[MAX_PASS_HEADERS + 8];
        size_t n = 0;
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/event-stream")};
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Cache-Control"), LEO_STR_LIT("no-cache")};
        h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-request-id"), leo_str_c(g->id)};
        n += response_headers(c, h + n, sizeof(h) / sizeof(h[0]) - n, false);
        g->status = status;
        leo_http_stream_start(g->req, status, h, n);
        c->streaming = true;
        leo_metrics_gauge_add("leo_active_streams", "", 1);
        return;
    }
    leo_buf_init(&c->body, status >= 200 && status < 300 ? MAX_UPSTREAM_BODY : MAX_UPSTREAM_ERROR, 0);
}

static void up_data(struct leo_upstream_xfer *x, const char *data, size_t len, void *ud)
{
    struct chat *c = ud;
    if (c->streaming) {
        if (leo_sse_parser_feed(&c->sse, data, len) == LEO_ETOOBIG && c->xfer) {
            leo_upstream_cancel(x);
            c->xfer = NULL;
            stream_fail(c, "upstream_event_too_large", "upstream stream event exceeds %u bytes", MAX_SSE_EVENT);
        }
        return;
    }
    if (leo_buf_add(&c->body, data, len) == LEO_ETOOBIG) {
        /* an error body is only kept for its message: the first 64 KiB do */
        if (c->g->upstream_status >= 200 && c->g->upstream_status < 300) {
            leo_upstream_cancel(x);
            c->xfer = NULL;
            relay_error(c, 502, "upstream_response_too_large", "upstream response exceeds %u bytes",
                        MAX_UPSTREAM_BODY);
        }
    }
}

static void finish_stream(struct chat *c, int err, const char *msg)
{
    struct leo_gw_req *g = c->g;
    if (err == 0 && leo_sse_parser_finish(&c->sse) != 0)
        err = LEO_EUPSTREAM, msg = "stream ended inside an event";
    if (c->broken) {
        leo_http_stream_end(g->req);
        return;
    }
    if (err != 0 || !c->saw_done) {
        stream_fail(c, "upstream_stream_interrupted", "upstream stream from \"%s\" ended before completion: %s",
                    g->dep->provider->name, err ? msg : "no [DONE] event");
        return;
    }
    account(c);
    /* The cost travels as an SSE comment: every SSE client ignores it, scripts can read it. */
    leo_buf_reset(&c->ev);
    leo_buf_addf(&c->ev, ": x-leo-cost-usd %s\n\ndata: [DONE]\n\n", c->cost_s);
    leo_http_stream_write(g->req, c->ev.p, c->ev.len);
    leo_http_stream_end(g->req);
}

static void finish_whole(struct chat *c, int err, enum leo_upstream_stage stage, const char *msg)
{
    struct leo_gw_req *g = c->g;
    const char *prov = g->dep->provider->name;
    if (err == LEO_ETIMEOUT) {
        relay_error(c, 504, "upstream_timeout", "upstream \"%s\" timed out: %s", prov, msg);
        return;
    }
    if (err != 0) {
        relay_error(c, 502, stage <= LEO_UP_SEND ? "upstream_unreachable" : "upstream_error",
                    "upstream \"%s\" failed: %s", prov, msg);
        return;
    }
    int st = g->upstream_status;
    if (st >= 200 && st < 300) {
        json_error_t jerr;
        json_t *root = json_loadb(c->body.p, c->body.len, 0, &jerr);
        if (!json_is_object(root)) {
            json_decref(root);
            relay_error(c, 502, "upstream_invalid_response", "upstream \"%s\" returned an invalid JSON body", prov);
            return;
        }
        read_usage(g, json_object_get(root, "usage"));
        json_decref(root);
        account(c);
        struct leo_http_header h[MAX_PASS_HEADERS + 4];
        size_t n = response_headers(c, h, sizeof(h) / sizeof(h[0]), true);
        leo_gw_respond_json(g, st, h, n, c->body.p, c->body.len);
        return;
    }
    const struct status_map *m = status_map;
    while (!(st >= m->lo && st <= m->hi))
        m++;
    char umsg[512];
    upstream_message(c, umsg, sizeof(umsg));
    int out = m->status ? m->status : st;
    if (st >= 401 && st <= 403 && g->byok.len) {
        /* with the caller's own key, a refusal is about the caller's key: say so with its status */
        relay_error(c, st, "upstream_auth_failed", "upstream \"%s\" refused your provider key (status %d)%s%s", prov,
                    st, umsg[0] ? ": " : "", umsg);
        return;
    }
    if (!m->keep_message || umsg[0] == '\0')
        relay_error(c, out, m->code ? m->code : "upstream_error", "upstream \"%s\" returned status %d", prov, st);
    else
        relay_error(c, out, m->code ? m->code : "upstream_error", "upstream \"%s\" returned status %d: %s", prov,
                    st, umsg);
}

static void up_done(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg, void *ud)
{
    struct chat *c = ud;
    struct leo_gw_req *g = c->g;
    c->xfer = NULL;
    g->upstream_ms = (double)(uv_hrtime() - c->t_start) / 1e6;
    const char *prov = g->dep->provider->name;
    struct leo_buf lbl = LEO_BUF_INIT;
    leo_buf_adds(&lbl, "provider=\"");
    leo_metrics_label_value(&lbl, prov, strlen(prov));
    leo_buf_addch(&lbl, '"');
    leo_metrics_observe("leo_upstream_duration_seconds", lbl.p, g->upstream_ms / 1000.0);
    if (g->upstream_ttfb_ms > 0)
        leo_metrics_observe("leo_upstream_ttfb_seconds", lbl.p, g->upstream_ttfb_ms / 1000.0);
    if (err != 0) {
        leo_buf_addf(&lbl, ",reason=\"%s\"", err == LEO_ETIMEOUT ? "timeout" : err == LEO_ECONNECT ? "connect" : "protocol");
        leo_metrics_add("leo_upstream_errors_total", lbl.p, 1);
    }
    leo_buf_release(&lbl);
    (void)x;
    if (c->streaming)
        finish_stream(c, err, msg);
    else
        finish_whole(c, err, stage, msg);
}

static const struct leo_upstream_callbacks up_cbs = {up_headers, up_data, up_done};

/* ---- the route ---- */

void leo_route_chat_completions(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    struct leo_http_request *req = g->req;
    json_error_t jerr;
    json_t *root = json_loadb(req->body.p, req->body.len, 0, &jerr);
    if (root == NULL) {
        leo_gw_error(g, 400, NULL, "invalid_json", "invalid JSON in request body at byte %d: %s", jerr.position,
                     jerr.text);
        return;
    }
    json_t *jmodel = json_object_get(root, "model");
    json_t *jmsgs = json_object_get(root, "messages");
    if (!json_is_object(root)) {
        leo_gw_error(g, 400, NULL, "invalid_request", "request body must be a JSON object");
        goto out;
    }
    if (jmodel == NULL) {
        leo_gw_error(g, 400, "model", "missing_required_parameter", "missing required field \"model\"");
        goto out;
    }
    if (!json_is_string(jmodel)) {
        leo_gw_error(g, 400, "model", "invalid_type", "field \"model\" must be a string");
        goto out;
    }
    if (jmsgs == NULL) {
        leo_gw_error(g, 400, "messages", "missing_required_parameter", "missing required field \"messages\"");
        goto out;
    }
    if (!json_is_array(jmsgs) || json_array_size(jmsgs) == 0) {
        leo_gw_error(g, 400, "messages", "invalid_type", "field \"messages\" must be a non-empty array");
        goto out;
    }
    json_t *jstream = json_object_get(root, "stream");
    if (jstream && !json_is_boolean(jstream) && !json_is_null(jstream)) {
        leo_gw_error(g, 400, "stream", "invalid_type", "field \"stream\" must be a boolean");
        goto out;
    }
    struct leo_str model_name = {json_string_value(jmodel), json_string_length(jmodel)};
    g->model = leo_config_find_model(g->cfg, model_name);
    if (g->model == NULL) {
        leo_gw_error(g, 404, "model", "model_not_found", "model \"%.*s\" is not configured",
                     (int)(model_name.len > 200 ? 200 : model_name.len), model_name.p);
        goto out;
    }
    if (!leo_tenant_allows_model(g->key->tenant, model_name)) {
        leo_gw_error(g, 403, "model", "model_not_allowed", "model \"%s\" is not allowed for this key",
                     g->model->name);
        goto out;
    }
    g->stream = json_is_true(jstream);
    g->dep = &g->model->deployments[0];

    struct chat *c = leo_arena_zalloc(&req->arena, sizeof(*c));
    c->g = g;
    g->data = c;
    g->on_close = chat_close;
    req->on_drain = on_drain;
    c->ev = (struct leo_buf)LEO_BUF_INIT;
    c->body = (struct leo_buf)LEO_BUF_INIT;
    leo_sse_parser_init(&c->sse, MAX_SSE_EVENT, on_sse_event, c);
    snprintf(c->dep_s, sizeof(c->dep_s), "%s/%s", g->dep->provider->name, g->dep->model);
    json_t *jso = json_object_get(root, "stream_options");
    c->client_wants_usage = json_is_true(json_object_get(jso, "include_usage"));

    /* the upstream body: the client's bytes with model (and stream_options) replaced */
    struct leo_buf mval = LEO_BUF_INIT, soval = LEO_BUF_INIT, body = LEO_BUF_INIT;
    leo_buf_addch(&mval, '"');
    leo_buf_add_json_escaped(&mval, g->dep->model, strlen(g->dep->model));
    leo_buf_addch(&mval, '"');
    struct leo_json_edit edits[2] = {{"model", leo_buf_str(&mval), 0, 0}};
    size_t nedits = 1;
    if (g->stream && !c->client_wants_usage) {
        json_t *so = json_is_object(jso) ? json_deep_copy(jso) : json_object();
        json_object_set_new(so, "include_usage", json_true());
        char *s = json_dumps(so, JSON_COMPACT);
        leo_buf_adds(&soval, s);
        free(s);
        json_decref(so);
        edits[nedits++] = (struct leo_json_edit){"stream_options", leo_buf_str(&soval), 0, 0};
    }
    if (leo_json_splice(req->body.p, req->body.len, edits, nedits, &body) != 0) {
        /* keys written with escape sequences defeat the raw scan: fall back to re-serialising */
        leo_buf_reset(&body);
        json_object_set_new(root, "model", json_string(g->dep->model));
        if (g->stream && !c->client_wants_usage) {
            json_t *so = json_object_get(root, "stream_options");
            if (!json_is_object(so))
                json_object_set_new(root, "stream_options", so = json_object());
            json_object_set_new(so, "include_usage", json_true());
        }
        char *s = json_dumps(root, JSON_COMPACT);
        leo_buf_adds(&body, s);
        free(s);
    }

    /* upstream request headers */
    const struct leo_provider *prov = g->dep->provider;
    struct leo_http_header h[8];
    size_t n = 0;
    struct leo_buf auth = LEO_BUF_INIT;
    struct leo_str key = g->byok;
    if (key.len == 0 && prov->nkeys)
        key = leo_str_c(prov->keys[g->w->next_request % prov->nkeys].value);
    h[n++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("application/json")};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("Accept"),
                                      g->stream ? LEO_STR_LIT("text/event-stream") : LEO_STR_LIT("application/json")};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("User-Agent"), LEO_STR_LIT("leo-optima/0.1")};
    if (key.len) {
        leo_buf_adds(&auth, "Bearer ");
        leo_buf_addstr(&auth, key);
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Authorization"), leo_buf_str(&auth)};
    }
    if (g->byok.len)
        for (size_t i = 0; i < sizeof(byok_headers) / sizeof(byok_headers[0]); i++) {
            const struct leo_http_header *ch = leo_http_header_find(req, byok_headers[i]);
            if (ch)
                h[n++] = *ch;
        }
    char url[1024];
    snprintf(url, sizeof(url), "%s/chat/completions", prov->base_url);
    struct leo_upstream_request ur = {
        .method = "POST",
        .url = url,
        .headers = h,
        .nheaders = n,
        .body = body.p,
        .body_len = body.len,
        .connect_timeout_ms = prov->connect_timeout_ms,
        .first_byte_timeout_ms = prov->first_byte_timeout_ms,
        .total_timeout_ms = prov->total_timeout_ms,
    };
    c->t_start = uv_hrtime();
    c->xfer = leo_upstream_start(g->w->up, &ur, &up_cbs, c);
    leo_buf_release(&auth);
    leo_buf_release(&body);
    leo_buf_release(&mval);
    leo_buf_release(&soval);
    if (c->xfer == NULL)
        relay_error(c, 502, "upstream_unreachable", "upstream \"%s\" could not be started", prov->name);
out:
    json_decref(root);
}
