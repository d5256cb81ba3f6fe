/*
 * proxy.c — the proxied routes: POST /v1/chat/completions (OpenAI dialect), POST /v1/messages (Anthropic
 * dialect), POST /v1/messages/count_tokens, POST /v1/embeddings and POST /v1/completions.
 *
 * One engine serves every pair of client dialect × upstream wire format:
 *   - passthrough, when the client speaks the upstream's dialect (OpenAI client → OpenAI-compatible or Azure
 *     upstream, Anthropic client → Anthropic upstream): the body goes upstream byte for byte except "model"
 *     (and, on OpenAI streams, stream_options.include_usage), and the answer comes back untouched but for the
 *     usage-only chunk the gateway asked for itself;
 *   - translation otherwise: client request → canonical (OpenAI) request → the adapter's upstream request; the
 *     upstream's answer → canonical → the client's dialect, a stream event by event (gateway/providers/).
 *
 * Stages of one request (each callback names the next):
 *   proxy_start   auth → parse → model → build the upstream request → leo_upstream_start
 *   up_headers    2xx + stream: start the client's SSE response now; otherwise collect the body
 *   up_data       stream: parse upstream SSE events and relay each at once; otherwise append (capped)
 *   up_done       stream: the clean end, or an error event when the upstream broke (never a clean end then);
 *                 whole: the (translated) body, or an error mapped from the upstream's status
 *   proxy_close   (the request's on_close) cancel the transfer if the client left early
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/json_scan.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/probe.h"
#include "errors.h"
#include "handlers.h"
#include "optimize.h"
#include "providers/messages.h"
#include "providers/provider.h"
#include "quota.h"
#include "router.h"
#include "sse.h"
#include "tokens.h"
#include "upstream.h"

#define MAX_UPSTREAM_BODY (64u << 20) /* whole (non-streamed) answers */
#define MAX_UPSTREAM_ERROR (64u << 10)
#define MAX_SSE_EVENT (8u << 20)
#define MAX_PASS_HEADERS 16

enum proxy_kind { KIND_CHAT, KIND_MESSAGES, KIND_COUNT_TOKENS, KIND_EMBEDDINGS, KIND_COMPLETIONS };

struct proxy;

/* What a quota admission is for: the request (key and tenant scopes, before routing), the current attempt's
 * deployment, or the hedge's deployment. */
enum ticket_kind { TICKET_REQUEST, TICKET_ATTEMPT, TICKET_HEDGE };

/* Outlives the request when the client leaves while Redis is answering: the answer then releases what it
 * reserved. */
struct admit_ticket {
    struct proxy *p;          /* NULL once the request (or, for a hedge, the hedge) is gone */
    struct leo_worker *w;
    struct leo_config *cfg;   /* the request's snapshot, kept for the admission's lifetime */
    enum ticket_kind kind;
};

/* The second attempt of a hedged request, racing the first one until either delivers 2xx headers. Lives in
 * the request's arena: it stays the user data of its transfer after winning. */
struct hedge {
    struct proxy *p;
    struct leo_upstream_xfer *xfer;     /* NULL until sent, and once cancelled or done */
    struct leo_route_attempt att;
    bool att_open;
    bool promoted;                      /* it became the request's attempt: its callbacks are the proxy's */
    bool count_on_headers;              /* promoted before its headers: count won/lost when they come */
    char dep_resv[40];                  /* its deployment's quota reservation */
    uint64_t t_start;
};

/* The top-level members a request is checked, cached and routed by, read from its bytes without building a tree
 * (raw spans into the body; the last of a repeated key, as jansson keeps; {NULL, 0} when absent). */
struct req_view {
    const char *body;
    struct leo_str model, messages, max_tokens, max_completion_tokens, input, prompt, stream, stream_options,
        temperature, seed, tools;
};

struct proxy {
    struct leo_gw_req *g;
    enum proxy_kind kind;
    const struct leo_adapter *ad;
    struct leo_upstream_xfer *xfer;
    uint64_t t_start;
    bool passthrough;         /* same dialect on both sides */
    bool client_wants_usage;  /* OpenAI clients: stream_options.include_usage */
    bool streaming;           /* the client's SSE response has started */
    bool finished;            /* the client's stream has been ended */
    bool upstream_complete;   /* the upstream signalled its end of stream */
    bool paused;
    struct leo_usage usage;
    struct leo_buf body;      /* whole answers and error bodies */
    struct leo_buf out;       /* scratch for the client's bytes */
    struct leo_sse_parser sse;
    struct leo_stream_xlate *xl;       /* translation: upstream events → canonical chunks */
    struct leo_messages_stream *ms;    /* Anthropic clients: canonical chunks → Anthropic events */
    json_t *chunks;
    json_t *req_json;                  /* the client's request, where the answer's translation needs it */
    struct req_view view;              /* the client's request as its bytes say (validated) */
    json_t *root;                      /* the client's request as a tree, parsed when first needed (request_tree) */
    json_t *canon;                     /* its canonical form, built once when a translation needs it */
    struct leo_opt_req *opt;           /* the caches' view of this request (gateway/optimize.h), or NULL */
    int64_t created;
    unsigned attempts;
    struct leo_route_plan plan;
    struct leo_route_attempt att;      /* the current attempt, open between leo_router_next and _end */
    bool att_open;
    uint64_t retry_after_ms;           /* what the upstream asked for (Retry-After and relatives) */
    struct admit_ticket *ticket;       /* a quota admission in flight (request or attempt), or NULL */
    char reservation[40];              /* the quota reservation to settle at the end, "" for none */
    int pin;                           /* x-leo-route: index of the only deployment to use, -1 = any */
    uint64_t est_tokens;               /* input estimate + output allowance, reserved by quota admissions */
    char dep_resv[40];                 /* the current attempt's deployment reservation, "" for none */
    bool dep_limited;                  /* some deployment refused this request by its own limits */
    struct leo_quota_result dep_refusal; /* the refusal that frees up soonest */
    uv_timer_t *hedge_timer;           /* fires hedge_after_ms after an attempt started; freed on close */
    struct hedge *hedge;               /* the hedge racing the current attempt, or NULL */
    struct admit_ticket *hedge_ticket; /* the hedge's deployment admission in flight, or NULL */
    bool hedged;                       /* a hedge was started (one per request) */
    uv_timer_t *retry_timer;           /* backoff between attempts; freed in its close callback */
    struct leo_buf attempt_log;        /* "deployment:outcome" of each failed attempt, for the access log */
    struct leo_adapter_ctx ctx;
    char resp_id[48];
    uint64_t input_estimate;
    struct leo_http_header pass[MAX_PASS_HEADERS];
    size_t npass;
    char cost_s[32];
    char dep_s[256];
    char attempts_s[8];
};

/* Upstream response headers relayed to the client; everything else (hop-by-hop, content-length, encodings,
 * cookies, server identity) stays behind. */
static const char *const pass_headers[] = {
    "x-request-id", "request-id", "openai-processing-ms", "openai-version", "retry-after", "retry-after-ms",
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining",
};

/* Client request headers forwarded upstream only with a bring-your-own key (they belong to that account). */
static const char *const byok_headers[] = {"openai-organization", "openai-project"};

/* Client request headers forwarded to an Anthropic upstream (they select API behaviour, not identity). */
static const char *const anthropic_headers[] = {"anthropic-beta"};

/* How an upstream error status reaches the client. */
static const struct status_map {
    int lo, hi;        /* upstream status range */
    int status;        /* what the client gets; 0 = the upstream's own */
    const char *code;
    bool keep_message; /* relay the upstream's error message */
} status_map[] = {
    {401, 403, 502, "upstream_auth_failed", false}, /* the gateway's provider key was refused */
    {429, 429, 429, "upstream_rate_limited", true},
    {400, 499, 0, NULL, true}, /* the request itself was refused */
    {529, 529, 503, "upstream_overloaded", true},
    {500, 599, 502, "upstream_error", true},
    {0, 999, 502, "upstream_error", false},
};

static const struct leo_upstream_callbacks up_cbs;
static const struct leo_upstream_callbacks hedge_cbs;
static void admit_attempt(struct proxy *p);
static void promote_hedge(struct proxy *p, struct hedge *h);
static void on_admitted(const struct leo_quota_result *res, void *ud);

/* Settles one quota reservation (the request's or a deployment's) with the request's usage, once. */
static void settle_resv(struct proxy *p, char *resv, bool had_usage)
{
    if (!resv[0])
        return;
    leo_quota_settle(p->g->w->quota, resv, p->usage.input_tokens + p->usage.output_tokens, p->g->cost_usd,
                     had_usage);
    resv[0] = '\0';
}

static void count_hedge(struct proxy *p, const char *outcome)
{
    struct leo_buf lbl = LEO_BUF_INIT;
    leo_buf_adds(&lbl, "model=\"");
    leo_metrics_label_value(&lbl, p->g->model->name, strlen(p->g->model->name));
    leo_buf_addf(&lbl, "\",outcome=\"%s\"", outcome);
    leo_metrics_add("leo_route_hedges_total", lbl.p, 1);
    leo_buf_release(&lbl);
}

/* Ends the hedge the request no longer needs (it lost the race, or the request is over): cancels its transfer
 * or its pending admission, closes its attempt without penalty, releases its deployment's reservation. why,
 * when set, goes into the access log's list of attempts. */
static void drop_hedge(struct proxy *p, const char *why)
{
    struct hedge *h = p->hedge;
    if (h == NULL)
        return;
    struct leo_gw_req *g = p->g;
    p->hedge = NULL;
    if (h->xfer) {
        leo_upstream_cancel(h->xfer);
        h->xfer = NULL;
    }
    if (p->hedge_ticket) {
        p->hedge_ticket->p = NULL; /* its answer releases what it reserved */
        p->hedge_ticket = NULL;
    }
    if (h->att_open) {
        h->att_open = false;
        leo_router_end(g->w->router, &h->att, LEO_ROUTE_CANCELLED, NULL, uv_now(g->w->loop));
    }
    settle_resv(p, h->dep_resv, false);
    if (why)
        leo_buf_addf(&p->attempt_log, "%s%s:%s", p->attempt_log.len ? "," : "", h->att.deployment->id, why);
}

/* ---- lifecycle ---- */

static void proxy_close(struct leo_gw_req *g, bool aborted)
{
    (void)aborted;
    struct proxy *p = g->data;
    if (p->xfer) {
        leo_upstream_cancel(p->xfer);
        p->xfer = NULL;
        if (!g->error)
            g->error = "client disconnected";
    }
    if (p->att_open) {
        p->att_open = false;
        leo_router_end(g->w->router, &p->att, LEO_ROUTE_CANCELLED, NULL, uv_now(g->w->loop));
    }
    drop_hedge(p, NULL);
    leo_opt_close(p->opt);
    if (p->hedge_timer) {
        uv_close((uv_handle_t *)p->hedge_timer, (uv_close_cb)leo_free);
        p->hedge_timer = NULL;
    }
    if (p->ticket)
        p->ticket->p = NULL; /* the admission answers later; the ticket releases what it reserved */
    /* only the attempt that answered holds a deployment reservation now: the usage is its */
    settle_resv(p, p->reservation, p->usage.have);
    settle_resv(p, p->dep_resv, p->usage.have);
    if (p->streaming)
        leo_metrics_gauge_add("leo_active_streams", "", -1);
    if (p->usage.have) {
        g->have_usage = true;
        g->prompt_tokens = p->usage.input_tokens;
        g->completion_tokens = p->usage.output_tokens;
    }
    leo_buf_release(&p->body);
    leo_buf_release(&p->out);
    leo_sse_parser_release(&p->sse);
    if (p->xl)
        p->ad->stream_free(p->xl);
    if (p->ms)
        leo_messages_stream_free(p->ms);
    json_decref(p->chunks);
    json_decref(p->req_json);
    json_decref(p->root);
    json_decref(p->canon);
    if (p->retry_timer) {
        uv_close((uv_handle_t *)p->retry_timer, (uv_close_cb)leo_free);
        p->retry_timer = NULL;
    }
    if (p->attempt_log.len)
        g->attempts_log = leo_arena_strndup(&g->req->arena, p->attempt_log.p, p->attempt_log.len);
    g->attempts = p->attempts;
    leo_buf_release(&p->attempt_log);
}

static void on_drain(struct leo_http_request *req)
{
    struct leo_gw_req *g = req->data;
    struct proxy *p = g->data;
    if (p->paused && p->xfer) {
        p->paused = false;
        leo_upstream_resume(p->xfer);
    }
}

static void account(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    if (p->usage.have) {
        const struct leo_price *pr = leo_config_price(g->cfg, leo_str_c(g->dep->model));
        g->cost_usd = leo_price_cost(pr, p->usage.input_tokens, p->usage.output_tokens);
    }
    leo_fmt_fixed(p->cost_s, sizeof(p->cost_s), g->cost_usd, 8);
}

/* ---- the client's response ---- */

static size_t response_headers(struct proxy *p, struct leo_http_header *h, size_t max, bool with_cost)
{
    size_t n = 0;
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-deployment"), leo_str_c(p->dep_s)};
    snprintf(p->attempts_s, sizeof(p->attempts_s), "%u", p->attempts);
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-attempts"), leo_str_c(p->attempts_s)};
    if (with_cost)
        h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-cost-usd"), leo_str_c(p->cost_s)};
    if (p->g->cache_status)
        h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-cache-status"), leo_str_c(p->g->cache_status)};
    for (size_t i = 0; i < p->npass && n < max; i++)
        h[n++] = p->pass[i];
    return n;
}

static void relay_error(struct proxy *p, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void relay_error(struct proxy *p, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct leo_gw_req *g = p->g;
    struct leo_buf b = LEO_BUF_INIT;
    if (g->dialect == LEO_DIALECT_ANTHROPIC)
        leo_anthropic_error_json(&b, leo_anthropic_error_type(status), msg);
    else
        leo_openai_error_json(&b, msg, leo_openai_error_type(status), NULL, code);
    struct leo_http_header h[MAX_PASS_HEADERS + 4];
    size_t n = p->dep_s[0] ? response_headers(p, h, sizeof(h) / sizeof(h[0]), false) : 0;
    g->error = leo_arena_strndup(&g->req->arena, msg, strlen(msg));
    leo_gw_respond_json(g, status, h, n, b.p, b.len);
    leo_buf_release(&b);
}

/* The upstream's error message, with the provider keys scrubbed should an upstream ever echo one. */
static void upstream_message(struct proxy *p, char *out, size_t size)
{
    p->ad->error_message(p->body.p, p->body.len, out, size);
    const struct leo_provider *prov = p->g->dep->provider;
    for (size_t i = 0; i < prov->nkeys; i++) {
        size_t kl = strlen(prov->keys[i].value);
        char *hit;
        while (kl >= 8 && (hit = strstr(out, prov->keys[i].value)) != NULL)
            memset(hit, '*', kl);
    }
}

static int client_write(struct proxy *p, const char *data, size_t len);

/* Passthrough events collect in p->out and go to the client in one write once libcurl has delivered what one
 * read brought (up_data_end), or before anything else is written, instead of one write per event. */
static void flush_out(struct proxy *p)
{
    if (!p->passthrough || p->out.len == 0) /* translated streams write each chunk from relay_chunk */
        return;
    client_write(p, p->out.p, p->out.len);
    leo_buf_reset(&p->out);
}

static int client_write(struct proxy *p, const char *data, size_t len)
{
    leo_opt_stream_write(p->opt, data, len);
    int rc = leo_http_stream_write(p->g->req, data, len);
    if (rc == 1 && p->xfer && !p->paused) {
        p->paused = true;
        leo_upstream_pause(p->xfer);
    }
    if (rc < 0 && p->xfer) {
        leo_upstream_cancel(p->xfer);
        p->xfer = NULL;
        leo_sse_parser_stop(&p->sse);
    }
    return rc < 0 ? rc : 0;
}

/* Ends the client's stream with an error event in its dialect. A clean chunked end follows: clients read the
 * event reliably, and the missing [DONE] / message_stop tells any SSE reader the answer is incomplete. */
static void stream_fail(struct proxy *p, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void stream_fail(struct proxy *p, const char *code, const char *fmt, ...)
{
    if (p->finished)
        return;
    flush_out(p);
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct leo_gw_req *g = p->g;
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_reset(&p->out);
    if (g->dialect == LEO_DIALECT_ANTHROPIC) {
        if (p->ms) {
            leo_messages_stream_error(p->ms, "api_error", msg, &p->out);
        } else {
            leo_anthropic_error_json(&b, "api_error", msg);
            leo_sse_append_event(&p->out, "error", b.p, b.len);
        }
    } else {
        leo_openai_error_json(&b, msg, "upstream_error", NULL, code);
        leo_sse_append_event(&p->out, NULL, b.p, b.len);
    }
    leo_buf_release(&b);
    leo_opt_stream_write(p->opt, p->out.p, p->out.len); /* followers see the same error event */
    leo_http_stream_write(g->req, p->out.p, p->out.len);
    g->error = leo_arena_strndup(&g->req->arena, msg, strlen(msg));
    p->finished = true;
    leo_http_stream_end(g->req);
}

static void stream_succeed(struct proxy *p)
{
    if (p->finished)
        return;
    struct leo_gw_req *g = p->g;
    flush_out(p);
    account(p);
    leo_buf_reset(&p->out);
    if (g->dialect == LEO_DIALECT_ANTHROPIC) {
        if (p->ms)
            leo_messages_stream_finish(p->ms, p->usage.have ? &p->usage : NULL, &p->out);
        /* passthrough: message_stop has been relayed already */
        leo_buf_addf(&p->out, ": x-leo-cost-usd %s\n\n", p->cost_s);
    } else {
        /* The cost travels as an SSE comment: every SSE client ignores it, scripts can read it. */
        leo_buf_addf(&p->out, ": x-leo-cost-usd %s\n\ndata: [DONE]\n\n", p->cost_s);
    }
    leo_opt_stream_write(p->opt, p->out.p, p->out.len);
    leo_opt_stream_done(p->opt, &p->usage); /* stored, and handed to the followers */
    leo_http_stream_write(g->req, p->out.p, p->out.len);
    p->finished = true;
    leo_http_stream_end(g->req);
}

/* One canonical chunk → the client's dialect. */
static void relay_chunk(struct proxy *p, json_t *chunk)
{
    leo_buf_reset(&p->out);
    if (p->g->dialect == LEO_DIALECT_ANTHROPIC) {
        struct leo_buf err = LEO_BUF_INIT;
        if (leo_messages_stream_chunk(p->ms, chunk, &p->out, &err) != 0)
            leo_warn("request %s: a stream chunk could not be translated: %s", p->g->id, err.p);
        leo_buf_release(&err);
    } else {
        json_t *choices = json_object_get(chunk, "choices");
        if (!p->client_wants_usage && json_is_array(choices) && json_array_size(choices) == 0 &&
            json_object_get(chunk, "usage") != NULL)
            return;
        char *s = json_dumps(chunk, JSON_COMPACT | JSON_REAL_PRECISION(15));
        if (s)
            leo_sse_append_event(&p->out, NULL, s, strlen(s));
        free(s);
    }
    if (p->out.len)
        client_write(p, p->out.p, p->out.len);
}

static void relay_chunks(struct proxy *p)
{
    size_t i;
    json_t *chunk;
    json_array_foreach(p->chunks, i, chunk)
    {
        if (p->finished)
            break;
        relay_chunk(p, chunk);
    }
    json_array_clear(p->chunks);
}

/* ---- upstream stream events ---- */

static void passthrough_event(struct proxy *p, struct leo_str event, struct leo_str data)
{
    if (p->g->dialect == LEO_DIALECT_ANTHROPIC) {
        leo_anthropic_event_usage(event, data, &p->usage);
        if (leo_str_eqc(event, "message_stop"))
            p->upstream_complete = true;
        if (leo_str_eqc(event, "error")) {
            p->g->error = "upstream sent an error event";
            p->finished = true; /* relayed as is below: the upstream's own error event ends the stream */
        }
    } else {
        if (leo_str_eqc(data, "[DONE]")) {
            p->upstream_complete = true;
            return; /* sent by stream_succeed after the cost comment */
        }
        /* Only events that may carry usage or an error are parsed; plain deltas are relayed untouched. */
        bool usage_null = memmem(data.p, data.len, "\"usage\":null", 12) != NULL;
        bool has_usage = !usage_null && memmem(data.p, data.len, "\"usage\"", 7) != NULL;
        if (has_usage || memmem(data.p, data.len, "\"error\"", 7)) {
            json_t *root = json_loadb(data.p, data.len, 0, NULL);
            bool drop = false;
            if (json_is_object(root)) {
                json_t *usage = json_object_get(root, "usage");
                if (json_is_object(usage)) {
                    leo_usage_from_openai(usage, &p->usage);
                    json_t *choices = json_object_get(root, "choices");
                    drop = !p->client_wants_usage && json_is_array(choices) && json_array_size(choices) == 0;
                }
                if (json_object_get(root, "error") != NULL) {
                    p->g->error = "upstream sent an error event";
                    p->finished = true;
                }
            }
            json_decref(root);
            if (drop)
                return;
        }
    }
    char evname[64];
    const char *ev = NULL;
    if (event.len && event.len < sizeof(evname)) {
        memcpy(evname, event.p, event.len);
        evname[event.len] = '\0';
        ev = evname;
    }
    leo_sse_append_event(&p->out, ev, data.p, data.len); /* written by flush_out */
    if (p->finished) {
        flush_out(p);
        leo_http_stream_end(p->g->req);
    }
}

static void on_sse_event(void *ud, struct leo_str event, struct leo_str data, struct leo_str id)
{
    (void)id;
    struct proxy *p = ud;
    if (p->finished || p->upstream_complete)
        return;
    if (p->passthrough) {
        passthrough_event(p, event, data);
        return;
    }
    struct leo_buf err = LEO_BUF_INIT;
    int rc = p->ad->stream_event(p->xl, event, data, p->chunks, &p->usage, &err);
    relay_chunks(p);
    if (rc == 1) {
        p->upstream_complete = true;
    } else if (rc < 0 && !p->finished) {
        if (p->xfer) {
            leo_upstream_cancel(p->xfer);
            p->xfer = NULL;
        }
        leo_sse_parser_stop(&p->sse);
        stream_fail(p, "upstream_stream_error", "upstream \"%s\" stream failed: %s", p->g->dep->provider->name,
                    err.p);
    }
    leo_buf_release(&err);
}

/* ---- upstream callbacks ---- */

static void up_headers(struct leo_upstream_xfer *x, int status, const struct leo_http_header *headers,
                       size_t nheaders, void *ud)
{
    struct proxy *p = ud;
    struct leo_gw_req *g = p->g;
    if (p->hedge_timer)
        uv_timer_stop(p->hedge_timer);
    if (status >= 200 && status < 300 && p->hedge) {
        drop_hedge(p, "cancelled"); /* this attempt won the race */
        count_hedge(p, "lost");
    }
    g->upstream_status = status;
    g->upstream_ttfb_ms = leo_upstream_ttfb_ms(x);
    if (status == 429 || status >= 500)
        p->retry_after_ms = leo_retry_after_ms(headers, nheaders, (uint64_t)time(NULL) * 1000);
    for (size_t i = 0; i < nheaders && p->npass < MAX_PASS_HEADERS; i++)
        for (size_t j = 0; j < sizeof(pass_headers) / sizeof(pass_headers[0]); j++)
            if (leo_str_caseeq(headers[i].name, pass_headers[j])) {
                p->pass[p->npass].name = leo_str_c(pass_headers[j]);
                p->pass[p->npass].value = leo_arena_strdup_str(&g->req->arena, headers[i].value);
                p->npass++;
                break;
            }
    if (status >= 200 && status < 300 && g->stream) {
        struct leo_http_header h[MAX_PASS_HEADERS + 8];
        size_t n = 0;
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/event-stream")};
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Cache-Control"), LEO_STR_LIT("no-cache")};
        h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-request-id"), leo_str_c(g->id)};
        n += response_headers(p, h + n, sizeof(h) / sizeof(h[0]) - n, false);
        g->status = status;
        leo_http_stream_start(g->req, status, h, n);
        p->streaming = true;
        leo_metrics_gauge_add("leo_active_streams", "", 1);
        if (!p->passthrough) {
            p->xl = p->ad->stream_new(&p->ctx);
            p->chunks = json_array();
            if (g->dialect == LEO_DIALECT_ANTHROPIC)
                p->ms = leo_messages_stream_new(g->model->name, p->resp_id, p->input_estimate);
        }
        return;
    }
    leo_buf_init(&p->body, status >= 200 && status < 300 ? MAX_UPSTREAM_BODY : MAX_UPSTREAM_ERROR, 0);
}

static void up_data(struct leo_upstream_xfer *x, const char *data, size_t len, void *ud)
{
    struct proxy *p = ud;
    if (p->streaming) {
        if (leo_sse_parser_feed(&p->sse, data, len) == LEO_ETOOBIG && p->xfer) {
            leo_upstream_cancel(x);
            p->xfer = NULL;
            stream_fail(p, "upstream_event_too_large", "upstream stream event exceeds %u bytes", MAX_SSE_EVENT);
        }
        return;
    }
    if (leo_buf_add(&p->body, data, len) == LEO_ETOOBIG && p->g->upstream_status >= 200 &&
        p->g->upstream_status < 300) {
        /* an error body is only kept for its message: its first 64 KiB do */
        leo_upstream_cancel(x);
        p->xfer = NULL;
        relay_error(p, 502, "upstream_response_too_large", "upstream response exceeds %u bytes", MAX_UPSTREAM_BODY);
    }
}

/* The events of one upstream read, collected by passthrough_event, go out in one client write. */
static void up_data_end(struct leo_upstream_xfer *x, void *ud)
{
    (void)x;
    flush_out(ud);
}

static void hedge_data_end(struct leo_upstream_xfer *x, void *ud)
{
    (void)x;
    struct hedge *h = ud;
    if (h->promoted)
        flush_out(h->p);
}

static void finish_stream(struct proxy *p, int err, const char *msg)
{
    struct leo_gw_req *g = p->g;
    if (p->finished) {
        leo_http_stream_end(g->req);
        return;
    }
    if (err == 0 && leo_sse_parser_finish(&p->sse) != 0)
        err = LEO_EUPSTREAM, msg = "the stream ended inside an event";
    if (err == 0 && !p->passthrough && !p->upstream_complete) {
        struct leo_buf e = LEO_BUF_INIT;
        int rc = p->ad->stream_end(p->xl, p->chunks, &p->usage, &e);
        relay_chunks(p);
        if (rc == 0) {
            p->upstream_complete = true;
        } else {
            stream_fail(p, "upstream_stream_interrupted", "upstream stream from \"%s\" ended before completion: %s",
                        g->dep->provider->name, e.p);
            leo_buf_release(&e);
            return;
        }
        leo_buf_release(&e);
    }
    if (err != 0 || !p->upstream_complete) {
        stream_fail(p, "upstream_stream_interrupted", "upstream stream from \"%s\" ended before completion: %s",
                    g->dep->provider->name, err ? msg : "no end-of-stream event");
        return;
    }
    stream_succeed(p);
}

/* A whole 2xx answer: relay it (passthrough) or translate it into the client's dialect. */
static void finish_whole_ok(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    const char *prov = g->dep->provider->name;
    json_t *root = NULL;
    struct leo_buf err = LEO_BUF_INIT;
    const char *body = p->body.p;
    size_t len = p->body.len;
    char *owned = NULL;

    if (p->req_json != NULL && p->kind == KIND_EMBEDDINGS) {
        json_t *out = p->ad->parse_embeddings(body, len, p->req_json, &p->ctx, &p->usage, &err);
        if (out == NULL) {
            relay_error(p, 502, "upstream_invalid_response", "upstream \"%s\" returned unusable embeddings: %s",
                        prov, err.p);
            goto out;
        }
        owned = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(9)); /* float32 precision */
        json_decref(out);
        body = owned;
        len = owned ? strlen(owned) : 0;
    } else if (p->passthrough || p->kind == KIND_EMBEDDINGS || p->kind == KIND_COMPLETIONS ||
               p->kind == KIND_COUNT_TOKENS) {
        /* Relayed byte for byte: the body is checked against the JSON grammar and its "usage" member is read in
         * place, without a tree (parsing the whole answer cost more than the rest of the request). */
        struct leo_str usage_text;
        int rc = leo_json_find_member(body, len, "usage", &usage_text);
        if (rc == LEO_EPARSE) {
            relay_error(p, 502, "upstream_invalid_response", "upstream \"%s\" returned an invalid JSON body", prov);
            goto out;
        }
        if (rc == 0 && g->dialect == LEO_DIALECT_ANTHROPIC)
            leo_usage_from_anthropic_raw(usage_text.p, usage_text.len, &p->usage);
        else if (rc == 0)
            leo_usage_from_openai_raw(usage_text.p, usage_text.len, &p->usage);
    } else {
        root = p->ad->parse_chat(body, len, &p->ctx, &p->usage, &err);
        if (root == NULL) {
            relay_error(p, 502, "upstream_invalid_response", "upstream \"%s\" returned an unusable answer: %s", prov,
                        err.p);
            goto out;
        }
        json_t *out = root;
        if (g->dialect == LEO_DIALECT_ANTHROPIC) {
            out = leo_messages_from_canonical(root, g->model->name, p->resp_id, &err);
            if (out == NULL) {
                relay_error(p, 502, "upstream_invalid_response", "upstream \"%s\" answer cannot be translated: %s",
                            prov, err.p);
                goto out;
            }
        }
        owned = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(15));
        if (out != root)
            json_decref(out);
        body = owned;
        len = owned ? strlen(owned) : 0;
    }
    account(p);
    struct leo_http_header h[MAX_PASS_HEADERS + 4];
    size_t n = response_headers(p, h, sizeof(h) / sizeof(h[0]), true);
    leo_opt_whole(p->opt, body, len, &p->usage);
    leo_gw_respond_json(g, g->upstream_status, h, n, body, len);
out:
    json_decref(root);
    free(owned);
    leo_buf_release(&err);
}

static int start_attempt(struct proxy *p);

static void on_retry_timer(uv_timer_t *t)
{
    admit_attempt(t->data);
}

/* How an attempt ended, in the router's terms, from its status (0: none) and its transfer's error. */
static enum leo_route_outcome outcome_of(int st, int err, bool byok)
{
    if (err == LEO_ETIMEOUT)
        return LEO_ROUTE_TIMEOUT;
    if (err == LEO_ECONNECT)
        return LEO_ROUTE_CONNECT_ERROR;
    if (err != 0)
        return LEO_ROUTE_SERVER_ERROR;
    if (st >= 200 && st < 300)
        return LEO_ROUTE_OK;
    if (st == 429)
        return LEO_ROUTE_RATE_LIMITED;
    if (st == 401 || st == 403)
        return byok ? LEO_ROUTE_CLIENT_ERROR : LEO_ROUTE_AUTH_FAILED;
    if (st >= 500)
        return LEO_ROUTE_SERVER_ERROR;
    return LEO_ROUTE_CLIENT_ERROR;
}

static enum leo_route_outcome attempt_outcome(struct proxy *p, int err)
{
    return outcome_of(p->g->upstream_status, err, p->g->byok.len > 0);
}

/* Closes the current attempt with the router (once). */
static void end_attempt(struct proxy *p, enum leo_route_outcome outcome)
{
    if (!p->att_open)
        return;
    struct leo_gw_req *g = p->g;
    p->att_open = false;
    char msg[256] = "";
    if (outcome == LEO_ROUTE_RATE_LIMITED && p->body.len)
        p->ad->error_message(p->body.p, p->body.len, msg, sizeof(msg));
    struct leo_route_feedback fb = {
        .status = g->upstream_status,
        /* rounded up: an answer under a millisecond is measured too (0 means "not measured") */
        .ttfb_ms = (uint64_t)g->upstream_ttfb_ms + ((double)(uint64_t)g->upstream_ttfb_ms < g->upstream_ttfb_ms),
        .retry_after_ms = p->retry_after_ms,
        .message = leo_str_c(msg),
    };
    leo_router_end(g->w->router, &p->att, outcome, &fb, uv_now(g->w->loop));
}

/* Chooses the next attempt and starts it (through its deployment's admission), now or after its backoff.
 * Returns false when the router has nothing left (no response sent: the caller answers); true when an
 * attempt is under way or the request has been answered (every deployment left refused it by its limits). */
static bool next_attempt(struct proxy *p, uint64_t *retry_in_ms)
{
    struct leo_gw_req *g = p->g;
    if (leo_router_next(g->w->router, &p->plan, uv_now(g->w->loop), &p->att, retry_in_ms) != 0)
        return false;
    p->att_open = true;
    g->dep = p->att.deployment;
    if (p->att.backoff_ms == 0) {
        admit_attempt(p);
        return true;
    }
    if (p->retry_timer == NULL) {
        p->retry_timer = leo_malloc(sizeof(*p->retry_timer));
        uv_timer_init(g->w->loop, p->retry_timer);
        p->retry_timer->data = p;
    }
    uv_timer_start(p->retry_timer, on_retry_timer, p->att.backoff_ms, 0);
    return true;
}

/* A failure before the client has received anything: the router picks another deployment or key (or the
 * same one after a backoff) while attempts, cooldowns and the deadline allow. Returns true when another
 * attempt is under way. */
static bool maybe_retry(struct proxy *p, int err, const char *what)
{
    struct leo_gw_req *g = p->g;
    enum leo_route_outcome outcome = attempt_outcome(p, err);
    end_attempt(p, outcome);
    if (!leo_route_retryable(outcome) || p->kind == KIND_COUNT_TOKENS)
        return false;
    settle_resv(p, p->dep_resv, false); /* the failed attempt's deployment: counted, without usage */
    leo_buf_addf(&p->attempt_log, "%s%s:%s", p->attempt_log.len ? "," : "", g->dep->id, what);
    const struct leo_deployment *failed = g->dep;
    /* the failed answer stays until another attempt is under way: it is what the client gets otherwise */
    struct leo_buf failed_body = p->body;
    p->body = (struct leo_buf)LEO_BUF_INIT;
    if (!next_attempt(p, NULL)) {
        g->dep = failed;
        leo_buf_release(&p->body);
        p->body = failed_body;
        return false;
    }
    /* leo_router_next has counted the fallback or retry */
    leo_buf_release(&failed_body);
    return true;
}

static void finish_whole(struct proxy *p, int err, enum leo_upstream_stage stage, const char *msg)
{
    struct leo_gw_req *g = p->g;
    const char *prov = g->dep->provider->name;
    char what[32];
    if (err != 0)
        snprintf(what, sizeof(what), "%s", err == LEO_ETIMEOUT ? "timeout" : err == LEO_ECONNECT ? "connect" : "error");
    else
        snprintf(what, sizeof(what), "%d", g->upstream_status);
    bool failed = err != 0 || g->upstream_status < 200 || g->upstream_status >= 300;
    if (failed && p->hedge && p->hedge->xfer) {
        /* the first attempt failed while its hedge is in flight: the hedge carries the request on */
        end_attempt(p, attempt_outcome(p, err));
        settle_resv(p, p->dep_resv, false);
        leo_buf_addf(&p->attempt_log, "%s%s:%s", p->attempt_log.len ? "," : "", g->dep->id, what);
        p->hedge->count_on_headers = true;
        promote_hedge(p, p->hedge);
        return;
    }
    if (failed)
        drop_hedge(p, "cancelled"); /* still waiting for its admission: the retry logic takes over */
    if (failed && maybe_retry(p, err, what))
        return;
    end_attempt(p, attempt_outcome(p, err));
    if (err == LEO_ETIMEOUT) {
        relay_error(p, 504, "upstream_timeout", "upstream \"%s\" timed out: %s", prov, msg);
        return;
    }
    if (err != 0) {
        relay_error(p, 502, stage <= LEO_UP_SEND ? "upstream_unreachable" : "upstream_error",
                    "upstream \"%s\" failed: %s", prov, msg);
        return;
    }
    int st = g->upstream_status;
    if (st >= 200 && st < 300) {
        finish_whole_ok(p);
        return;
    }
    const struct status_map *m = status_map;
    while (!(st >= m->lo && st <= m->hi))
        m++;
    char umsg[512];
    upstream_message(p, umsg, sizeof(umsg));
    int out = m->status ? m->status : st;
    if (st >= 401 && st <= 403 && g->byok.len) {
        /* with the caller's own key, a refusal is about the caller's key: say so with its status */
        relay_error(p, st, "upstream_auth_failed", "upstream \"%s\" refused your provider key (status %d)%s%s", prov,
                    st, umsg[0] ? ": " : "", umsg);
        return;
    }
    if (!m->keep_message || umsg[0] == '\0')
        relay_error(p, out, m->code ? m->code : "upstream_error", "upstream \"%s\" returned status %d", prov, st);
    else
        relay_error(p, out, m->code ? m->code : "upstream_error", "upstream \"%s\" returned status %d: %s", prov, st,
                    umsg);
}

static void up_done(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg, void *ud)
{
    LEO_PROBE("upstream_done");
    (void)x;
    struct proxy *p = ud;
    struct leo_gw_req *g = p->g;
    p->xfer = NULL;
    if (p->hedge_timer)
        uv_timer_stop(p->hedge_timer);
    g->upstream_ms = (double)(uv_hrtime() - p->t_start) / 1e6;
    const char *prov = g->dep->provider->name;
    struct leo_buf lbl = LEO_BUF_INIT;
    leo_buf_adds(&lbl, "provider=\"");
    leo_metrics_label_value(&lbl, prov, strlen(prov));
    leo_buf_addch(&lbl, '"');
    leo_metrics_observe("leo_upstream_duration_seconds", lbl.p, g->upstream_ms / 1000.0);
    if (g->upstream_ttfb_ms > 0)
        leo_metrics_observe("leo_upstream_ttfb_seconds", lbl.p, g->upstream_ttfb_ms / 1000.0);
    if (err != 0) {
        leo_buf_addf(&lbl, ",reason=\"%s\"",
                     err == LEO_ETIMEOUT ? "timeout" : err == LEO_ECONNECT ? "connect" : "protocol");
        leo_metrics_add("leo_upstream_errors_total", lbl.p, 1);
    }
    leo_buf_release(&lbl);
    if (p->streaming) {
        end_attempt(p, err == 0 ? LEO_ROUTE_OK : LEO_ROUTE_SERVER_ERROR);
        finish_stream(p, err, msg);
    } else {
        finish_whole(p, err, stage, msg);
    }
}

static const struct leo_upstream_callbacks up_cbs = {up_headers, up_data, up_done};

/* ---- starting a request ---- */

static const char *kind_path(enum proxy_kind kind)
{
    switch (kind) {
    case KIND_EMBEDDINGS: return "embeddings";
    case KIND_COMPLETIONS: return "completions";
    case KIND_COUNT_TOKENS: return "messages/count_tokens";
    default: return NULL;
    }
}

static json_t *request_tree(struct proxy *p, json_error_t *jerr);

/* The upstream body by passthrough: the client's bytes with "model" (and stream_options) spliced. */
static int splice_body(struct proxy *p, struct leo_buf *body)
{
    struct leo_gw_req *g = p->g;
    struct leo_http_request *req = g->req;
    struct leo_buf mval = LEO_BUF_INIT, soval = LEO_BUF_INIT;
    leo_buf_addch(&mval, '"');
    leo_buf_add_json_escaped(&mval, g->dep->model, strlen(g->dep->model));
    leo_buf_addch(&mval, '"');
    struct leo_json_edit edits[2] = {{"model", leo_buf_str(&mval), 0, 0}};
    size_t nedits = 1;
    bool add_usage = g->dialect == LEO_DIALECT_OPENAI && g->stream && !p->client_wants_usage;
    int rc = 0;
    if (add_usage) {
        /* the client's stream_options with include_usage set (their other members kept as written) */
        struct leo_str so = p->view.stream_options;
        struct leo_json_edit iu = {"include_usage", LEO_STR_LIT("true"), 0, 0};
        if (so.len == 0 || so.p[0] != '{' || leo_json_splice(so.p, so.len, &iu, 1, &soval) != 0) {
            leo_buf_reset(&soval);
            leo_buf_adds(&soval, "{\"include_usage\":true}");
        }
        edits[nedits++] = (struct leo_json_edit){"stream_options", leo_buf_str(&soval), 0, 0};
    }
    rc = leo_json_splice(req->body.p, req->body.len, edits, nedits, body);
    if (rc != 0) {
        /* keys written with escape sequences defeat the raw scan: fall back to re-serialising the tree */
        leo_buf_reset(body);
        json_error_t jerr;
        json_t *root = request_tree(p, &jerr);
        json_t *copy = root ? json_copy(root) : NULL;
        if (copy) {
            json_object_set_new(copy, "model", json_string(g->dep->model));
            if (add_usage) {
                json_t *so = json_object_get(copy, "stream_options");
                so = json_is_object(so) ? json_copy(so) : json_object();
                json_object_set_new(so, "include_usage", json_true());
                json_object_set_new(copy, "stream_options", so);
            }
        }
        char *s = copy ? json_dumps(copy, JSON_COMPACT) : NULL;
        json_decref(copy);
        rc = s ? leo_buf_adds(body, s) : LEO_EINVAL;
        free(s);
    }
    leo_buf_release(&mval);
    leo_buf_release(&soval);
    return rc;
}


static void view_member(const struct leo_json_member *m, void *ud)
{
    static const struct {
        const char *name;
        size_t off;
    } members[] = {
        {"model", offsetof(struct req_view, model)},
        {"messages", offsetof(struct req_view, messages)},
        {"max_tokens", offsetof(struct req_view, max_tokens)},
        {"max_completion_tokens", offsetof(struct req_view, max_completion_tokens)},
        {"tools", offsetof(struct req_view, tools)},
        {"input", offsetof(struct req_view, input)},
        {"prompt", offsetof(struct req_view, prompt)},
        {"stream", offsetof(struct req_view, stream)},
        {"stream_options", offsetof(struct req_view, stream_options)},
        {"temperature", offsetof(struct req_view, temperature)},
        {"seed", offsetof(struct req_view, seed)},
    };
    struct req_view *v = ud;
    for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++)
        if (leo_json_key_is(m->key, members[i].name)) {
            *(struct leo_str *)((char *)v + members[i].off) =
                (struct leo_str){v->body + m->value_start, m->value_end - m->value_start};
            break;
        }
}

static bool span_is(struct leo_str v, const char *lit)
{
    return v.p != NULL && leo_str_eqc(v, lit);
}

/* Validates the common members from the view; sends the error and returns false when the request cannot go
 * on. Sets g->model. */
static bool check_request(struct leo_gw_req *g, enum proxy_kind kind, const struct req_view *v)
{
    if (v->model.p == NULL) {
        leo_gw_error(g, 400, "model", "missing_required_parameter", "missing required field \"model\"");
        return false;
    }
    if (v->model.p[0] != '"') {
        leo_gw_error(g, 400, "model", "invalid_type", "field \"model\" must be a string");
        return false;
    }
    if (kind == KIND_CHAT || kind == KIND_MESSAGES || kind == KIND_COUNT_TOKENS) {
        if (v->messages.p == NULL) {
            leo_gw_error(g, 400, "messages", "missing_required_parameter", "missing required field \"messages\"");
            return false;
        }
        size_t i = 1;
        while (i < v->messages.len && (v->messages.p[i] == ' ' || v->messages.p[i] == '\t' ||
                                       v->messages.p[i] == '\n' || v->messages.p[i] == '\r'))
            i++;
        if (v->messages.p[0] != '[' || v->messages.p[i] == ']') {
            leo_gw_error(g, 400, "messages", "invalid_type", "field \"messages\" must be a non-empty array");
            return false;
        }
    }
    if (kind == KIND_MESSAGES && !leo_json_is_integer(v->max_tokens)) {
        leo_gw_error(g, 400, "max_tokens", "missing_required_parameter",
                     "field \"max_tokens\" is required and must be an integer");
        return false;
    }
    if (kind == KIND_EMBEDDINGS && v->input.p == NULL) {
        leo_gw_error(g, 400, "input", "missing_required_parameter", "missing required field \"input\"");
        return false;
    }
    if (kind == KIND_COMPLETIONS && v->prompt.p == NULL) {
        leo_gw_error(g, 400, "prompt", "missing_required_parameter", "missing required field \"prompt\"");
        return false;
    }
    if (v->stream.p && !span_is(v->stream, "true") && !span_is(v->stream, "false") && !span_is(v->stream, "null")) {
        leo_gw_error(g, 400, "stream", "invalid_type", "field \"stream\" must be a boolean");
        return false;
    }
    struct leo_str name = {v->model.p + 1, v->model.len - 2};
    if (memchr(name.p, '\\', name.len) != NULL) {
        struct leo_buf dec = LEO_BUF_INIT;
        if (leo_json_string_decode(v->model, &dec) == 0)
            name = (struct leo_str){leo_arena_strndup(&g->req->arena, dec.p, dec.len), dec.len};
        leo_buf_release(&dec);
    }
    g->model = leo_config_find_model(g->cfg, name);
    if (g->model == NULL) {
        leo_gw_error(g, 404, "model", "model_not_found", "model \"%.*s\" is not configured",
                     (int)(name.len > 200 ? 200 : name.len), name.p);
        return false;
    }
    if (!leo_tenant_allows_model(g->key->tenant, name)) {
        leo_gw_error(g, 403, "model", "model_not_allowed", "model \"%s\" is not allowed for this key", g->model->name);
        g->model = NULL;
        return false;
    }
    if (leo_key_deployments(g->key, g->cfg, g->model) == 0) {
        leo_gw_error(g, 403, "model", "model_not_allowed",
                     "model \"%s\" is not allowed for this key (none of its deployments is at a provider the key "
                     "may use)",
                     g->model->name);
        g->model = NULL;
        return false;
    }
    return true;
}

/* The client's request as a tree, parsed when first needed: a request the exact cache answers never is. NULL
 * when jansson refuses what the view's scan accepted (an integer beyond 64 bits, a real that overflows); *jerr
 * says why. */
static json_t *request_tree(struct proxy *p, json_error_t *jerr)
{
    if (p->root == NULL) {
        struct leo_http_request *req = p->g->req;
        p->root = json_loadb(req->body.p, req->body.len, 0, jerr);
    }
    return p->root;
}

/* leo_opt_input.tree: what the semantic cache embeds (Anthropic clients: their request in the OpenAI form) */
static json_t *semantic_tree(void *ud)
{
    struct proxy *p = ud;
    json_error_t jerr;
    json_t *root = request_tree(p, &jerr);
    if (root == NULL || p->kind != KIND_MESSAGES)
        return root;
    if (p->canon == NULL) {
        struct leo_buf err = LEO_BUF_INIT;
        p->canon = leo_messages_to_canonical(root, &err);
        leo_buf_release(&err);
    }
    return p->canon;
}

/* count_tokens without an Anthropic upstream: the gateway's own estimate. */
static void answer_token_estimate(struct leo_gw_req *g, json_t *root)
{
    struct leo_buf err = LEO_BUF_INIT;
    /* count_tokens requests carry no max_tokens, which the Messages translation requires: lend it one */
    json_t *copy = json_copy(root);
    if (json_object_get(copy, "max_tokens") == NULL)
        json_object_set_new(copy, "max_tokens", json_integer(1));
    json_t *canon = leo_messages_to_canonical(copy, &err);
    json_decref(copy);
    if (canon == NULL) {
        leo_gw_error(g, 400, NULL, "invalid_request", "%s", err.p);
        leo_buf_release(&err);
        return;
    }
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"input_tokens\":%llu}", (unsigned long long)leo_estimate_tokens(canon));
    struct leo_http_header h[] = {{LEO_STR_LIT("x-leo-token-count"), LEO_STR_LIT("estimate")}};
    leo_gw_respond_json(g, 200, h, 1, body, (size_t)n);
    json_decref(canon);
    leo_buf_release(&err);
}

/* Points the per-deployment state of the request (g->dep, adapter, dialect, adapter context, the deployment
 * name of the x-leo-deployment header) at d. */
static void use_deployment(struct proxy *p, const struct leo_deployment *d)
{
    struct leo_gw_req *g = p->g;
    g->dep = d;
    p->ad = d->provider->adapter;
    p->passthrough = p->ad->dialect == g->dialect;
    p->ctx = (struct leo_adapter_ctx){d->model, g->cfg->default_max_tokens, p->resp_id, p->created};
    snprintf(p->dep_s, sizeof(p->dep_s), "%s/%s", d->provider->name, d->model);
}

/* Why an upstream request could not be built or started (nothing has been sent to the client). */
struct build_fail {
    int status;
    const char *param, *code;
    bool estimate; /* count_tokens without an Anthropic upstream: answer with the gateway's own estimate */
    bool relay;    /* the transfer could not start: answer with the deployment headers */
    char msg[512];
};

static int build_failed(struct build_fail *f, int status, const char *param, const char *code, const char *msg)
{
    f->status = status;
    f->param = param;
    f->code = code;
    snprintf(f->msg, sizeof(f->msg), "%s", msg);
    return -1;
}

/* Builds the upstream request of att for the deployment use_deployment() selected and starts its transfer
 * with cbs/ud. Returns 0 with *xfer set, or -1 with *f saying why. Counts the attempt when it starts. */
static int send_upstream(struct proxy *p, const struct leo_route_attempt *att, const struct leo_upstream_callbacks *cbs,
                         void *ud, struct leo_upstream_xfer **xfer, struct build_fail *f)
{
    struct leo_gw_req *g = p->g;
    struct leo_http_request *req = g->req;
    const struct leo_provider *prov = g->dep->provider;
    struct leo_buf body = LEO_BUF_INIT, url = LEO_BUF_INIT, err = LEO_BUF_INIT;
    int rc = -1;
    /* a chat request passed through is spliced from its bytes; everything else works on the tree */
    json_t *root = NULL;
    if (!(p->passthrough && p->kind == KIND_CHAT)) {
        json_error_t jerr;
        root = request_tree(p, &jerr);
        if (root == NULL) {
            char msg[512];
            snprintf(msg, sizeof(msg), "invalid JSON in request body at byte %d: %s", jerr.position, jerr.text);
            build_failed(f, 400, NULL, "invalid_json", msg);
            goto out;
        }
    }

    /* the upstream URL and body */
    const char *sub = kind_path(p->kind);
    if (sub != NULL) {
        if (!p->passthrough && p->kind == KIND_EMBEDDINGS && p->ad->build_embeddings != NULL) {
            p->ad->embeddings_url(prov, g->dep->model, &url);
            if (p->ad->build_embeddings(root, &p->ctx, &body, &err) != 0) {
                build_failed(f, 400, "input", "unsupported_parameter", err.p);
                goto out;
            }
            json_decref(p->req_json);
            p->req_json = json_incref(root);
            goto send;
        }
        /* embeddings, legacy completions and count_tokens exist only in their own dialect's APIs */
        if (!p->passthrough) {
            if (p->kind == KIND_COUNT_TOKENS) {
                f->estimate = true;
                goto out;
            }
            char msg[512];
            snprintf(msg, sizeof(msg), "model \"%s\" is served by a \"%s\" provider, which has no /v1/%s API",
                     g->model->name, prov->type, sub);
            build_failed(f, 400, "model", "unsupported_for_provider", msg);
            goto out;
        }
        if (strcmp(prov->type, "azure") == 0)
            /* Azure: the same deployment path as chat, another operation */
            leo_buf_addf(&url, "%s/openai/deployments/%s/%s?api-version=%s", prov->base_url, g->dep->model, sub,
                         prov->api_version);
        else
            leo_buf_addf(&url, "%s/%s", prov->base_url, sub);
    } else {
        p->ad->chat_url(prov, g->dep->model, g->stream, &url);
    }
    if (p->passthrough) {
        if (splice_body(p, &body) != 0) {
            build_failed(f, 400, NULL, "invalid_request", "request body could not be rewritten");
            goto out;
        }
    } else {
        if (p->canon == NULL)
            p->canon = g->dialect == LEO_DIALECT_ANTHROPIC ? leo_messages_to_canonical(root, &err) : json_incref(root);
        if (p->canon == NULL || p->ad->build_chat(p->canon, &p->ctx, &body, &err) != 0) {
            build_failed(f, 400, NULL, "unsupported_parameter", err.len ? err.p : "request cannot be translated");
            goto out;
        }
        g->estimated_tokens = leo_estimate_tokens(p->canon);
        p->input_estimate = g->estimated_tokens;
    }

send:;
    /* upstream request headers */
    struct leo_http_header h[16];
    size_t n = 0;
    struct leo_str key = g->byok;
    if (key.len == 0 && att->key)
        key = leo_str_c(att->key->value);
    h[n++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("application/json")};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("Accept"),
                                      g->stream ? LEO_STR_LIT("text/event-stream") : LEO_STR_LIT("application/json")};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("User-Agent"), LEO_STR_LIT("leo-optima/0.1")};
    p->ad->auth_headers(prov, key, h, &n, sizeof(h) / sizeof(h[0]), &req->arena);
    if (g->byok.len)
        for (size_t i = 0; i < sizeof(byok_headers) / sizeof(byok_headers[0]); i++) {
            const struct leo_http_header *ch = leo_http_header_find(req, byok_headers[i]);
            if (ch && n < sizeof(h) / sizeof(h[0]))
                h[n++] = *ch;
        }
    if (p->ad->dialect == LEO_DIALECT_ANTHROPIC)
        for (size_t i = 0; i < sizeof(anthropic_headers) / sizeof(anthropic_headers[0]); i++) {
            const struct leo_http_header *ch = leo_http_header_find(req, anthropic_headers[i]);
            if (ch && n < sizeof(h) / sizeof(h[0]))
                h[n++] = *ch;
        }
    struct leo_upstream_request ur = {
        .method = "POST",
        .url = url.p,
        .headers = h,
        .nheaders = n,
        .body = body.p,
        .body_len = body.len,
        .connect_timeout_ms = prov->connect_timeout_ms,
        .first_byte_timeout_ms = prov->first_byte_timeout_ms,
        .total_timeout_ms = prov->total_timeout_ms,
    };
    p->attempts++;
    *xfer = leo_upstream_start(g->w->up, &ur, cbs, ud);
    if (*xfer != NULL && g->stream) /* flush_out does nothing unless the stream is relayed as is */
        leo_upstream_on_data_end(*xfer, cbs == &hedge_cbs ? hedge_data_end : up_data_end);
    if (*xfer == NULL) {
        char msg[300];
        snprintf(msg, sizeof(msg), "upstream \"%s\" could not be started", prov->name);
        build_failed(f, 502, NULL, "upstream_unreachable", msg);
        f->relay = true;
    } else {
        rc = 0;
    }
out:
    leo_buf_release(&body);
    leo_buf_release(&url);
    leo_buf_release(&err);
    return rc;
}

static void on_hedge_timer(uv_timer_t *t);

/* Arms the hedge timer for the attempt just sent, when the model hedges and the request has not hedged yet.
 * Only generations are hedged (chat, messages, legacy completions), and never a pinned request. */
static void arm_hedge(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    uint64_t after = g->model->hedge_after_ms ? g->model->hedge_after_ms : g->cfg->routing.hedge_after_ms;
    if (after == 0 || p->hedged || p->plan.pin >= 0 ||
        !(p->kind == KIND_CHAT || p->kind == KIND_MESSAGES || p->kind == KIND_COMPLETIONS))
        return;
    if (p->hedge_timer == NULL) {
        p->hedge_timer = leo_malloc(sizeof(*p->hedge_timer));
        uv_timer_init(g->w->loop, p->hedge_timer);
        p->hedge_timer->data = p;
    }
    uv_timer_start(p->hedge_timer, on_hedge_timer, after, 0);
}

/* Builds and starts the upstream call for the deployment chosen for this attempt. Returns 0 when the transfer
 * started; otherwise the response (an error) has been sent. */
static int start_attempt(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    p->npass = 0;
    p->upstream_complete = false;
    g->upstream_status = 0;
    g->upstream_ttfb_ms = 0;
    json_decref(p->req_json);
    p->req_json = NULL;
    use_deployment(p, p->att.deployment);
    p->retry_after_ms = 0;
    p->t_start = uv_hrtime();
    struct build_fail f = {0};
    if (send_upstream(p, &p->att, &up_cbs, p, &p->xfer, &f) == 0) {
        leo_router_begin(g->w->router, &p->att, uv_now(g->w->loop));
        arm_hedge(p);
        return 0;
    }
    end_attempt(p, LEO_ROUTE_CLIENT_ERROR);
    if (f.estimate)
        answer_token_estimate(g, p->root);
    else if (f.relay)
        relay_error(p, f.status, f.code, "%s", f.msg);
    else
        leo_gw_error(g, f.status, f.param, f.code, "%s", f.msg);
    return -1;
}

/* ---- hedging ---- */

/* The hedge becomes the request's attempt: its transfer, attempt and reservation move into the proxy, whose
 * per-attempt state starts afresh; its callbacks from now on are the proxy's own. */
static void promote_hedge(struct proxy *p, struct hedge *h)
{
    struct leo_gw_req *g = p->g;
    p->hedge = NULL;
    p->att = h->att;
    p->att_open = h->att_open;
    h->att_open = false;
    memcpy(p->dep_resv, h->dep_resv, sizeof(p->dep_resv));
    h->dep_resv[0] = '\0';
    p->xfer = h->xfer;
    h->promoted = true;
    use_deployment(p, p->att.deployment);
    p->npass = 0;
    p->upstream_complete = false;
    g->upstream_status = 0;
    g->upstream_ttfb_ms = 0;
    p->retry_after_ms = 0;
    p->t_start = h->t_start;
    leo_buf_release(&p->body);
    p->body = (struct leo_buf)LEO_BUF_INIT;
}

/* Sends the hedge (admitted by its deployment's limits, if any). Building it borrows the proxy's
 * per-deployment state, which is pointed back at the first attempt's deployment afterwards. */
static void send_hedge(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    struct hedge *h = p->hedge;
    const struct leo_deployment *primary = g->dep;
    use_deployment(p, h->att.deployment);
    h->t_start = uv_hrtime();
    struct build_fail f = {0};
    int rc = send_upstream(p, &h->att, &hedge_cbs, h, &h->xfer, &f);
    use_deployment(p, primary);
    if (rc != 0) {
        /* this deployment cannot take the request (a translation it lacks): the first attempt carries on */
        leo_debug("request %s: hedge to \"%s\" not sent: %s", g->id, h->att.deployment->id, f.msg);
        drop_hedge(p, "unsendable");
        return;
    }
    leo_router_begin(g->w->router, &h->att, uv_now(g->w->loop));
}

static void on_hedge_timer(uv_timer_t *t)
{
    struct proxy *p = t->data;
    struct leo_gw_req *g = p->g;
    /* only while the current attempt still waits for its headers */
    if (p->xfer == NULL || g->upstream_status != 0 || p->hedge || p->hedged || p->finished)
        return;
    struct hedge *h = leo_arena_zalloc(&g->req->arena, sizeof(*h));
    h->p = p;
    if (leo_router_next_other(g->w->router, &p->plan, uv_now(g->w->loop), &h->att) != 0)
        return; /* no other deployment can take it now */
    p->hedged = true;
    h->att_open = true;
    p->hedge = h;
    const struct leo_deployment *d = h->att.deployment;
    if (leo_quota_empty(&d->limits)) {
        send_hedge(p);
        return;
    }
    struct leo_quota_request qr = {.cfg = g->cfg, .dep = d, .est_tokens = p->est_tokens};
    struct admit_ticket *tk = leo_malloc(sizeof(*tk));
    *tk = (struct admit_ticket){p, g->w, leo_config_ref(g->cfg), TICKET_HEDGE};
    p->hedge_ticket = tk;
    if (leo_quota_admit(g->w->quota, &qr, on_admitted, tk) != 0) {
        p->hedge_ticket = NULL;
        leo_config_unref(tk->cfg);
        leo_free(tk);
        send_hedge(p);
    }
}

/* The race is decided for the hedge: it delivered 2xx headers first. The first attempt is cancelled. */
static void hedge_wins(struct proxy *p, struct hedge *h)
{
    struct leo_gw_req *g = p->g;
    if (p->xfer) {
        leo_upstream_cancel(p->xfer);
        p->xfer = NULL;
    }
    end_attempt(p, LEO_ROUTE_CANCELLED);
    settle_resv(p, p->dep_resv, false);
    leo_buf_addf(&p->attempt_log, "%s%s:cancelled", p->attempt_log.len ? "," : "", g->dep->id);
    count_hedge(p, "won");
    promote_hedge(p, h);
}

/* The hedge failed before the race was decided: it is closed with its outcome and the first attempt carries
 * on. status is 0 when it failed without headers. */
static void hedge_fails(struct proxy *p, struct hedge *h, int status, int err, uint64_t retry_after_ms)
{
    struct leo_gw_req *g = p->g;
    if (h->xfer) {
        leo_upstream_cancel(h->xfer);
        h->xfer = NULL;
    }
    p->hedge = NULL;
    struct leo_route_feedback fb = {.status = status, .retry_after_ms = retry_after_ms};
    h->att_open = false;
    leo_router_end(g->w->router, &h->att, outcome_of(status, err, g->byok.len > 0), &fb, uv_now(g->w->loop));
    settle_resv(p, h->dep_resv, false);
    char what[32];
    if (err != 0)
        snprintf(what, sizeof(what), "%s", err == LEO_ETIMEOUT ? "timeout" : err == LEO_ECONNECT ? "connect" : "error");
    else
        snprintf(what, sizeof(what), "%d", status);
    leo_buf_addf(&p->attempt_log, "%s%s:%s", p->attempt_log.len ? "," : "", h->att.deployment->id, what);
    count_hedge(p, "lost");
}

static void hedge_headers(struct leo_upstream_xfer *x, int status, const struct leo_http_header *headers,
                          size_t nheaders, void *ud)
{
    struct hedge *h = ud;
    struct proxy *p = h->p;
    if (!h->promoted) {
        if (status < 200 || status >= 300) {
            uint64_t ra = status == 429 || status >= 500 ? leo_retry_after_ms(headers, nheaders,
                                                                              (uint64_t)time(NULL) * 1000)
                                                         : 0;
            hedge_fails(p, h, status, 0, ra);
            return;
        }
        hedge_wins(p, h);
    } else if (h->count_on_headers) {
        h->count_on_headers = false;
        count_hedge(p, status >= 200 && status < 300 ? "won" : "lost");
    }
    up_headers(x, status, headers, nheaders, p);
}

static void hedge_data(struct leo_upstream_xfer *x, const char *data, size_t len, void *ud)
{
    struct hedge *h = ud;
    if (h->promoted)
        up_data(x, data, len, h->p);
}

static void hedge_done(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg, void *ud)
{
    struct hedge *h = ud;
    if (h->promoted) {
        if (h->count_on_headers) {
            h->count_on_headers = false;
            count_hedge(h->p, "lost"); /* it carried the request on, and failed before its headers too */
        }
        up_done(x, err, stage, msg, h->p);
        return;
    }
    h->xfer = NULL; /* freed after this returns */
    hedge_fails(h->p, h, 0, err ? err : LEO_EUPSTREAM, 0);
}

static const struct leo_upstream_callbacks hedge_cbs = {hedge_headers, hedge_data, hedge_done};

static void route_first(struct proxy *p);

/* ---- quota admission ---- */

/* Answers a refused admission (429 with Retry-After and x-ratelimit-*, or 503 when the quota service is
 * unavailable and the policy fails closed). */
static void respond_refusal(struct proxy *p, const struct leo_quota_result *res, const char *msg, const char *code)
{
    struct leo_gw_req *g = p->g;
    struct leo_http_header h[12];
    size_t n = leo_quota_headers(res, h, sizeof(h) / sizeof(h[0]), &g->req->arena);
    struct leo_buf b = LEO_BUF_INIT;
    if (g->dialect == LEO_DIALECT_ANTHROPIC)
        leo_anthropic_error_json(&b, leo_anthropic_error_type(res->status), msg);
    else
        leo_openai_error_json(&b, msg, leo_openai_error_type(res->status), NULL, code);
    g->error = leo_arena_strndup(&g->req->arena, msg, strlen(msg));
    leo_gw_respond_json(g, res->status, h, n, b.p, b.len);
    leo_buf_release(&b);
}

/* Every deployment the request could still use refused it by its own limits: 429 naming the model, with the
 * Retry-After and x-ratelimit-* of the deployment that frees up soonest. */
static void respond_deployments_limited(struct proxy *p)
{
    const struct leo_quota_result *res = &p->dep_refusal;
    char msg[512];
    snprintf(msg, sizeof(msg),
             "every deployment of model \"%s\" is at its rate limit (deployment \"%s\": %s limit %llu, "
             "remaining %llu)",
             p->g->model->name, res->id, res->kind, (unsigned long long)res->limit,
             (unsigned long long)res->remaining);
    respond_refusal(p, res, msg, "model_rate_limited");
}

/* Records a deployment's refusal (keeping the one that frees up soonest) and logs it with the attempts. */
static void note_dep_refusal(struct proxy *p, const struct leo_route_attempt *a, const struct leo_quota_result *res)
{
    if (!p->dep_limited || res->retry_after_ms < p->dep_refusal.retry_after_ms)
        p->dep_refusal = *res;
    p->dep_limited = true;
    leo_buf_addf(&p->attempt_log, "%s%s:limited", p->attempt_log.len ? "," : "", a->deployment->id);
}

/* The answer of the current attempt's deployment admission. */
static void attempt_admitted(struct proxy *p, const struct leo_quota_result *res)
{
    struct leo_gw_req *g = p->g;
    if (res->allowed) {
        snprintf(p->dep_resv, sizeof(p->dep_resv), "%s", res->reservation);
        start_attempt(p);
        return;
    }
    if (res->status != 429) {
        end_attempt(p, LEO_ROUTE_CANCELLED);
        char msg[128];
        leo_quota_message(res, msg, sizeof(msg));
        respond_refusal(p, res, msg, "quota_unavailable");
        return;
    }
    /* this deployment is at its limit: the next one serves, if any is left */
    note_dep_refusal(p, &p->att, res);
    p->att_open = false;
    leo_router_skip(g->w->router, &p->plan, &p->att, uv_now(g->w->loop));
    if (!next_attempt(p, NULL))
        respond_deployments_limited(p);
}

/* The answer of the hedge's deployment admission. */
static void hedge_admitted(struct proxy *p, const struct leo_quota_result *res)
{
    struct hedge *h = p->hedge;
    if (res->allowed) {
        snprintf(h->dep_resv, sizeof(h->dep_resv), "%s", res->reservation);
        send_hedge(p);
        return;
    }
    /* no hedge: the first attempt carries on alone */
    if (res->status == 429)
        note_dep_refusal(p, &h->att, res);
    p->hedge = NULL;
    h->att_open = false;
    leo_router_skip(p->g->w->router, &p->plan, &h->att, uv_now(p->g->w->loop));
}

static void on_admitted(const struct leo_quota_result *res, void *ud)
{
    struct admit_ticket *t = ud;
    struct proxy *p = t->p;
    if (p == NULL) {
        if (res->allowed && res->reservation[0])
            leo_quota_settle(t->w->quota, res->reservation, 0, 0, false);
    } else if (t->kind == TICKET_ATTEMPT) {
        p->ticket = NULL;
        attempt_admitted(p, res);
    } else if (t->kind == TICKET_HEDGE) {
        p->hedge_ticket = NULL;
        hedge_admitted(p, res);
    } else {
        p->ticket = NULL;
        if (res->allowed) {
            snprintf(p->reservation, sizeof(p->reservation), "%s", res->reservation);
            route_first(p);
        } else {
            char msg[512];
            leo_quota_message(res, msg, sizeof(msg));
            respond_refusal(p, res, msg, res->status == 429 ? "quota_exceeded" : "quota_unavailable");
        }
    }
    leo_config_unref(t->cfg);
    leo_free(t);
}

/* Admits the current attempt against its deployment's own limits (rpm, tpm, concurrency; shared by every
 * worker through Redis), then starts it. A deployment without limits starts at once. */
static void admit_attempt(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    const struct leo_deployment *d = p->att.deployment;
    if (leo_quota_empty(&d->limits)) {
        start_attempt(p);
        return;
    }
    struct leo_quota_request qr = {.cfg = g->cfg, .dep = d, .est_tokens = p->est_tokens};
    struct admit_ticket *t = leo_malloc(sizeof(*t));
    *t = (struct admit_ticket){p, g->w, leo_config_ref(g->cfg), TICKET_ATTEMPT};
    p->ticket = t;
    if (leo_quota_admit(g->w->quota, &qr, on_admitted, t) != 0) {
        p->ticket = NULL;
        leo_config_unref(t->cfg);
        leo_free(t);
        start_attempt(p);
    }
}

/* Reserves the request's estimate against the key's and the tenant's quotas before anything is sent;
 * requests without quotas skip the round trip. */
static void admit(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    /* chat requests go on from their bytes (a tree only if a translation needs one, in send_upstream); the other
     * routes build theirs now */
    if (p->kind != KIND_CHAT) {
        json_error_t jerr;
        if (request_tree(p, &jerr) == NULL) {
            leo_gw_error(g, 400, NULL, "invalid_json", "invalid JSON in request body at byte %d: %s", jerr.position,
                         jerr.text);
            return;
        }
    }
    /* Anthropic clients: the canonical form, kept for the translation and the estimate */
    if (p->kind == KIND_MESSAGES && p->canon == NULL) {
        struct leo_buf err = LEO_BUF_INIT;
        p->canon = leo_messages_to_canonical(p->root, &err);
        leo_buf_release(&err);
    }
    /* the estimate every request sent upstream gets (quotas admit on it; providers' counts replace it); a
     * request answered by a cache never needs it */
    if (p->kind == KIND_CHAT)
        g->estimated_tokens = leo_estimate_tokens_raw(p->view.messages, p->view.tools);
    else if (p->kind == KIND_MESSAGES && p->canon)
        g->estimated_tokens = leo_estimate_tokens(p->canon);
    struct leo_str mt = p->view.max_completion_tokens;
    if (!leo_json_is_integer(mt))
        mt = p->view.max_tokens;
    long long max = leo_json_is_integer(mt) ? strtoll(mt.p, NULL, 10) : 0;
    uint64_t out = max > 0 ? (uint64_t)max : LEO_ROUTE_OUTPUT_GUESS;
    p->est_tokens = g->estimated_tokens + out;
    if (leo_quota_empty(&g->key->quota) && leo_quota_empty(&g->key->tenant->quota)) {
        route_first(p);
        return;
    }
    const struct leo_price *pr = leo_config_price(g->cfg, leo_str_c(g->model->deployments[0].model));
    struct leo_quota_request qr = {
        .cfg = g->cfg,
        .key = g->key,
        .est_tokens = p->est_tokens,
        .est_usd = leo_price_cost(pr, g->estimated_tokens, out),
    };
    struct admit_ticket *t = leo_malloc(sizeof(*t));
    *t = (struct admit_ticket){p, g->w, leo_config_ref(g->cfg), TICKET_REQUEST};
    p->ticket = t;
    if (leo_quota_admit(g->w->quota, &qr, on_admitted, t) != 0) {
        p->ticket = NULL;
        leo_config_unref(t->cfg);
        leo_free(t);
        route_first(p);
    }
}

/* x-leo-route: pins the request to one deployment of its model, when the key's tenant allows it. Checked
 * before admission, so a refused override costs no quota. Sends the error and returns false when refused. */
static bool route_override(struct leo_gw_req *g, int *pin)
{
    *pin = -1;
    const struct leo_http_header *h = leo_http_header_find(g->req, "x-leo-route");
    if (h == NULL)
        return true;
    struct leo_str v = leo_str_trim(h->value);
    if (!g->key->tenant->allow_route_override) {
        leo_gw_error(g, 403, NULL, "route_override_not_allowed",
                     "the x-leo-route header is not allowed for this key (tenant \"%s\" has no allow_route_override)",
                     g->key->tenant->id);
        return false;
    }
    int i = leo_route_find_deployment(g->model, v);
    if (i < 0) {
        leo_gw_error(g, 400, NULL, "unknown_deployment", "x-leo-route \"%.*s\" is not a deployment of model \"%s\"",
                     (int)(v.len > 200 ? 200 : v.len), v.p, g->model->name);
        return false;
    }
    if (!(leo_key_deployments(g->key, g->cfg, g->model) & (1ull << i))) {
        leo_gw_error(g, 403, NULL, "deployment_not_allowed",
                     "x-leo-route \"%.*s\" names a deployment at provider \"%s\", which this key may not use",
                     (int)(v.len > 200 ? 200 : v.len), v.p, g->model->deployments[i].provider->name);
        return false;
    }
    *pin = i;
    return true;
}

static void on_opt_continue(void *ud)
{
    admit(ud);
}

/* The body is not a JSON object jansson accepts: the error, in jansson's words where it has some. */
static void reject_body(struct leo_gw_req *g)
{
    json_error_t jerr;
    json_t *root = json_loadb(g->req->body.p, g->req->body.len, 0, &jerr);
    if (root == NULL)
        leo_gw_error(g, 400, NULL, "invalid_json", "invalid JSON in request body at byte %d: %s", jerr.position,
                     jerr.text);
    else if (!json_is_object(root))
        leo_gw_error(g, 400, NULL, "invalid_request", "request body must be a JSON object");
    else
        leo_gw_error(g, 400, NULL, "invalid_json", "invalid JSON in request body");
    json_decref(root);
}

static void proxy_start(struct leo_gw_req *g, enum proxy_kind kind)
{
    g->dialect = kind == KIND_MESSAGES || kind == KIND_COUNT_TOKENS ? LEO_DIALECT_ANTHROPIC : LEO_DIALECT_OPENAI;
    if (!leo_gw_authenticate(g))
        return;
    struct leo_http_request *req = g->req;
    /* one validating pass over the bytes; the tree is built later, when something needs it (request_tree) */
    struct req_view v = {.body = req->body.p};
    if (leo_json_scan_members(req->body.p, req->body.len, view_member, &v) != 0) {
        reject_body(g);
        return;
    }
    int pin;
    if (!check_request(g, kind, &v) || !route_override(g, &pin))
        return;
    g->stream = span_is(v.stream, "true") && kind != KIND_EMBEDDINGS && kind != KIND_COUNT_TOKENS;

    struct proxy *p = leo_arena_zalloc(&req->arena, sizeof(*p));
    p->g = g;
    p->kind = kind;
    p->pin = pin;
    p->view = v;
    p->body = (struct leo_buf)LEO_BUF_INIT;
    p->out = (struct leo_buf)LEO_BUF_INIT;
    g->data = p;
    g->on_close = proxy_close;
    req->on_drain = on_drain;
    leo_sse_parser_init(&p->sse, MAX_SSE_EVENT, on_sse_event, p);
    {
        const char *prefix = g->dialect == LEO_DIALECT_ANTHROPIC ? "msg_" : "chatcmpl-";
        size_t np = strlen(prefix), ni = strlen(g->id + 4);
        if (np + ni >= sizeof(p->resp_id))
            ni = sizeof(p->resp_id) - 1 - np;
        memcpy(p->resp_id, prefix, np);
        memcpy(p->resp_id + np, g->id + 4, ni);
        p->resp_id[np + ni] = '\0';
    }
    p->created = (int64_t)time(NULL);
    struct leo_str usage;
    p->client_wants_usage = v.stream_options.len > 0 && v.stream_options.p[0] == '{' &&
                            leo_json_find_member(v.stream_options.p, v.stream_options.len, "include_usage", &usage) == 0 &&
                            leo_str_eqc(usage, "true");

    /* the caches: an answer now, an answer later, or go on (now, or later through on_opt_continue) */
    if ((kind == KIND_CHAT || kind == KIND_MESSAGES) && g->w->optimizer) {
        struct leo_opt_input in = {
            .body = {req->body.p, req->body.len},
            .deterministic = leo_cache_deterministic(v.temperature, v.seed),
            .stream = g->stream,
            .include_usage = p->client_wants_usage,
            .tree = semantic_tree,
            .tree_ud = p,
        };
        if (leo_opt_begin(g->w->optimizer, g, &in, on_opt_continue, p, &p->opt))
            return;
    }
    admit(p);
}

/* Routes the first attempt (after admission). */
static void route_first(struct proxy *p)
{
    struct leo_gw_req *g = p->g;
    leo_route_plan_init(&p->plan, g->cfg, g->model, g->estimated_tokens, uv_now(g->w->loop));
    p->plan.pin = p->pin;
    p->plan.allowed = leo_key_deployments(g->key, g->cfg, g->model);
    uint64_t retry_in = 0;
    if (!next_attempt(p, &retry_in)) {
        /* every deployment is cooling down, disabled or behind an open breaker */
        char ra[32];
        snprintf(ra, sizeof(ra), "%llu", (unsigned long long)((retry_in + 999) / 1000));
        struct leo_http_header h[] = {{LEO_STR_LIT("Retry-After"), leo_str_c(ra)}};
        struct leo_buf b = LEO_BUF_INIT;
        char msg[512];
        snprintf(msg, sizeof(msg), "no deployment of model \"%s\" is available now (all are cooling down, "
                 "disabled or failing)", g->model->name);
        if (g->dialect == LEO_DIALECT_ANTHROPIC)
            leo_anthropic_error_json(&b, "overloaded_error", msg);
        else
            leo_openai_error_json(&b, msg, "service_unavailable", "model", "no_deployment_available");
        g->error = "no deployment available";
        leo_gw_respond_json(g, 503, h, retry_in ? 1 : 0, b.p, b.len);
        leo_buf_release(&b);
    }
}

void leo_route_chat_completions(struct leo_gw_req *g)
{
    proxy_start(g, KIND_CHAT);
}

void leo_route_messages(struct leo_gw_req *g)
{
    proxy_start(g, KIND_MESSAGES);
}

void leo_route_count_tokens(struct leo_gw_req *g)
{
    proxy_start(g, KIND_COUNT_TOKENS);
}

void leo_route_embeddings(struct leo_gw_req *g)
{
    proxy_start(g, KIND_EMBEDDINGS);
}

void leo_route_completions(struct leo_gw_req *g)
{
    proxy_start(g, KIND_COMPLETIONS);
}
