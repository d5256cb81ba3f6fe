/*
 * handlers.c — route dispatch, authentication, the access log and the small routes (models, health, ready,
 * metrics). The proxied completion route lives in chat.c.
 */
#include "handlers.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../common/alloc.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "analytics.h"
#include "follower.h"
#include "optimize.h"
#include "errors.h"
#include "providers/messages.h"
#include "usage.h"

static const struct route {
    const char *method;
    const char *path;
    bool prefix; /* path is a prefix ending in '/', the rest is a parameter */
    bool usage;  /* a billed, proxied route: its requests emit usage events (gateway/usage.h) */
    void (*fn)(struct leo_gw_req *g);
} routes[] = {
    {"POST", "/v1/chat/completions", false, true, leo_route_chat_completions},
    {"POST", "/chat/completions", false, true, leo_route_chat_completions},
    {"POST", "/v1/messages", false, true, leo_route_messages},
    {"POST", "/v1/messages/count_tokens", false, false, leo_route_count_tokens},
    {"POST", "/v1/embeddings", false, true, leo_route_embeddings},
    {"POST", "/v1/completions", false, true, leo_route_completions},
    {"GET", "/v1/models", false, false, leo_route_models},
    {"GET", "/v1/models/", true, false, leo_route_model_get},
    {"GET", "/v1/status/deployments", false, false, leo_route_status_deployments},
    {"GET", "/health", false, false, leo_route_health},
    {"GET", "/ready", false, false, leo_route_ready},
    {"GET", "/metrics", false, false, leo_route_metrics},
    {"GET", "/v1/analytics", false, false, leo_route_analytics},
    {"GET", "/v1/optimization/status", false, false, leo_route_opt_status},
    {"POST", "/v1/optimization/enable", false, false, leo_route_opt_enable},
    {"GET", "/v1/optimization/cache/stats", false, false, leo_route_opt_cache_stats},
    {"POST", "/v1/optimization/cache/purge", false, false, leo_route_opt_cache_purge},
    {"POST", "/v1/optimization/cache/feedback", false, false, leo_route_opt_cache_feedback},
    {"POST", "/v1/optimization/cache/threshold", false, false, leo_route_opt_cache_threshold},
};

void leo_gw_metrics_describe(void)
{
    leo_metrics_describe("leo_requests_total", LEO_METRIC_COUNTER,
                         "Requests answered, by route, configured model and status code.");
    leo_metrics_describe("leo_request_duration_seconds", LEO_METRIC_HISTOGRAM,
                         "Time from the first request byte to the end of the response, by route.");
    leo_metrics_describe("leo_upstream_duration_seconds", LEO_METRIC_HISTOGRAM,
                         "Time spent on the upstream call, by provider.");
    leo_metrics_describe("leo_upstream_ttfb_seconds", LEO_METRIC_HISTOGRAM,
                         "Time until the upstream's response headers, by provider.");
    leo_metrics_describe("leo_upstream_errors_total", LEO_METRIC_COUNTER,
                         "Upstream calls that failed, by provider and reason.");
    leo_metrics_describe("leo_tokens_total", LEO_METRIC_COUNTER, "Tokens accounted, by model and direction.");
    leo_metrics_describe("leo_cost_usd_total", LEO_METRIC_COUNTER, "Cost in USD accounted, by model.");
    leo_metrics_describe("leo_active_connections", LEO_METRIC_GAUGE, "Client connections open.");
    leo_metrics_describe("leo_active_requests", LEO_METRIC_GAUGE, "Requests in progress.");
    leo_metrics_describe("leo_active_streams", LEO_METRIC_GAUGE, "Streaming responses in progress.");
    leo_metrics_describe("leo_config_reloads_total", LEO_METRIC_COUNTER, "Configuration reloads, by result.");
    leo_metrics_describe("leo_worker_restarts_total", LEO_METRIC_COUNTER,
                         "Worker processes restarted by the supervisor after dying.");
    leo_metrics_describe("leo_config_version", LEO_METRIC_GAUGE, "Version of the snapshot each worker serves, by worker.");
    leo_usage_metrics_describe();
    leo_follower_metrics_describe();
    leo_analytics_metrics_describe();
    leo_opt_metrics_describe();
    leo_worker_metrics_describe();
}

/* ---- responses ---- */

void leo_gw_respond_json(struct leo_gw_req *g, int status, const struct leo_http_header *extra, size_t nextra,
                         const char *body, size_t len)
{
    struct leo_http_header h[24];
    size_t n = 0;
    h[n++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("application/json")};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-request-id"), leo_str_c(g->id)};
    for (size_t i = 0; i < nextra && n < sizeof(h) / sizeof(h[0]); i++)
        h[n++] = extra[i];
    g->status = status;
    leo_http_respond(g->req, status, h, n, body, len);
}

void leo_gw_error(struct leo_gw_req *g, int status, const char *param, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct leo_buf b = LEO_BUF_INIT;
    if (g->dialect == LEO_DIALECT_ANTHROPIC)
        leo_anthropic_error_json(&b, leo_anthropic_error_type(status), msg);
    else
        leo_openai_error_json(&b, msg, leo_openai_error_type(status), param, code);
    if (g->error == NULL)
        g->error = leo_arena_strndup(&g->req->arena, msg, strlen(msg));
    leo_gw_respond_json(g, status, NULL, 0, b.p, b.len);
    leo_buf_release(&b);
}

void leo_gw_server_error_body(int status, const char *message, struct leo_buf *body, const char **content_type,
                              void *ud)
{
    (void)ud;
    leo_openai_error_json(body, message, leo_openai_error_type(status), NULL, NULL);
    *content_type = "application/json";
}

/* ---- authentication ---- */

static struct leo_str bearer_token(const struct leo_http_request *req)
{
    const struct leo_http_header *h = leo_http_header_find(req, "authorization");
    if (h == NULL)
        return (struct leo_str){NULL, 0};
    struct leo_str v = leo_str_trim(h->value);
    if (v.len > 7 && strncasecmp(v.p, "bearer ", 7) == 0)
        return leo_str_trim(leo_str_n(v.p + 7, v.len - 7));
    return (struct leo_str){NULL, 0};
}

bool leo_gw_authenticate(struct leo_gw_req *g)
{
    const struct leo_http_header *xk = leo_http_header_find(g->req, "x-api-key");
    struct leo_str bearer = bearer_token(g->req);
    struct leo_str presented = xk ? leo_str_trim(xk->value) : bearer;
    if (presented.len == 0) {
        leo_gw_error(g, 401, NULL, "missing_api_key",
                     "missing api key: send it as \"Authorization: Bearer <key>\" or \"X-API-Key: <key>\"");
        return false;
    }
    g->key = leo_config_find_key(g->cfg, presented);
    if (g->key == NULL) {
        char masked[32];
        leo_secret_mask(presented, masked, sizeof(masked));
        leo_gw_error(g, 401, NULL, "invalid_api_key", "invalid api key %s", masked);
        return false;
    }
    /* Both headers present: X-API-Key authenticates with the gateway, the bearer is the caller's own provider
     * key, used only where the tenant allows bring-your-own-key. */
    if (xk != NULL && bearer.len > 0 && g->key->tenant->allow_byok)
        g->byok = bearer;
    return true;
}

/* ---- small routes ---- */

static void add_model_obj(struct leo_buf *b, const char *name)
{
    leo_buf_adds(b, "{\"id\":\"");
    leo_buf_add_json_escaped(b, name, strlen(name));
    leo_buf_adds(b, "\",\"object\":\"model\",\"created\":0,\"owned_by\":\"leo-optima\"}");
}

void leo_route_models(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_adds(&b, "{\"object\":\"list\",\"data\":[");
    bool first = true;
    for (size_t i = 0; i < g->cfg->nmodels; i++) {
        const char *name = g->cfg->models[i].name;
        if (!leo_tenant_allows_model(g->key->tenant, leo_str_c(name)) ||
            leo_key_deployments(g->key, g->cfg, &g->cfg->models[i]) == 0)
            continue;
        if (!first)
            leo_buf_addch(&b, ',');
        first = false;
        add_model_obj(&b, name);
    }
    leo_buf_adds(&b, "]}");
    leo_gw_respond_json(g, 200, NULL, 0, b.p, b.len);
    leo_buf_release(&b);
}

void leo_route_model_get(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    struct leo_str name = leo_str_n(g->req->path.p + strlen("/v1/models/"), g->req->path.len - strlen("/v1/models/"));
    const struct leo_model *m = leo_config_find_model(g->cfg, name);
    if (m == NULL || !leo_tenant_allows_model(g->key->tenant, name) || leo_key_deployments(g->key, g->cfg, m) == 0) {
        leo_gw_error(g, 404, "model", "model_not_found", "model \"%.*s\" is not configured for this key",
                     (int)(name.len > 200 ? 200 : name.len), name.p);
        return;
    }
    struct leo_buf b = LEO_BUF_INIT;
    add_model_obj(&b, m->name);
    leo_gw_respond_json(g, 200, NULL, 0, b.p, b.len);
    leo_buf_release(&b);
}

void leo_route_status_deployments(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    if (!g->key->admin) {
        leo_gw_error(g, 403, NULL, "admin_key_required", "this route needs a key with \"admin\": true");
        return;
    }
    struct leo_buf b = LEO_BUF_INIT;
    leo_router_status_json(g->w->router, g->cfg, uv_now(g->w->loop), &b);
    leo_gw_respond_json(g, 200, NULL, 0, b.p, b.len);
    leo_buf_release(&b);
}

void leo_route_health(struct leo_gw_req *g)
{
    static const char body[] = "{\"status\":\"ok\"}";
    leo_gw_respond_json(g, 200, NULL, 0, body, sizeof(body) - 1);
}

void leo_route_ready(struct leo_gw_req *g)
{
    unsigned wanted = 0, up = 0;
    leo_metrics_get_workers(&wanted, &up);
    bool ready = g->cfg != NULL && !g->w->draining && up >= wanted;
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_addf(&b, "{\"status\":\"%s\",\"config_version\":%llu,\"workers\":{\"wanted\":%u,\"up\":%u}}",
                 ready ? "ready" : (g->w->draining ? "draining" : "starting"),
                 (unsigned long long)(g->cfg ? g->cfg->version : 0), wanted, up);
    leo_gw_respond_json(g, ready ? 200 : 503, NULL, 0, b.p, b.len);
    leo_buf_release(&b);
}

void leo_route_metrics(struct leo_gw_req *g)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_metrics_render(&b);
    struct leo_http_header h[] = {
        {LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/plain; version=0.0.4; charset=utf-8")},
        {LEO_STR_LIT("x-leo-request-id"), leo_str_c(g->id)},
    };
    g->status = 200;
    leo_http_respond(g->req, 200, h, 2, b.p, b.len);
    leo_buf_release(&b);
}

/* ---- access log and metrics at the end of every request ---- */

static void add_json_str(struct leo_buf *b, const char *key, struct leo_str v)
{
    leo_buf_add(b, ",\"", 2);
    leo_buf_adds(b, key);
    leo_buf_add(b, "\":", 2);
    if (v.p == NULL) {
        leo_buf_adds(b, "null");
        return;
    }
    leo_buf_addch(b, '"');
    leo_buf_add_json_escaped(b, v.p, v.len);
    leo_buf_addch(b, '"');
}

/* Upstream attempts: what the route recorded, else one per failed attempt in the log plus the deployment
 * that answered last. (When every attempt failed and the router had nothing left, the last failure is both
 * in the log and in dep, and this counts it twice; routes that set g->attempts are exact.) */
static unsigned attempts_made(const struct leo_gw_req *g)
{
    if (g->attempts)
        return g->attempts;
    unsigned n = g->dep ? 1 : 0;
    if (g->attempts_log && g->attempts_log[0]) {
        n++;
        for (const char *p = g->attempts_log; *p; p++)
            n += *p == ',';
    }
    return n;
}

/* The usage event of a proxied request that got as far as an authenticated key (anything earlier has no
 * tenant to charge). */
static void emit_usage(struct leo_gw_req *g, int status, bool aborted, double latency_ms)
{
    if (!g->usage || g->key == NULL)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct leo_usage_event ev = {
        .request_id = g->id,
        .time_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000,
        .tenant = g->key->tenant->id,
        .key_name = g->key->name,
        .model = g->model ? g->model->name : NULL,
        .deployment = g->dep ? g->dep->id : NULL,
        .provider = g->dep ? g->dep->provider->name : NULL,
        .route = g->route,
        .status = status,
        .error = status >= 400 || g->error != NULL || aborted,
        .stream = g->stream,
        .prompt_tokens = g->have_usage ? g->prompt_tokens : 0,
        .completion_tokens = g->have_usage ? g->completion_tokens : 0,
        .cost_usd = g->cost_usd,
        .saved_usd = g->saved_usd,
        .cache_status = g->cache_status,
        .latency_ms = latency_ms,
        .attempts = attempts_made(g),
    };
    leo_usage_emit_current(&ev);
}

static void finish(struct leo_gw_req *g, bool aborted)
{
    if (g->on_close)
        g->on_close(g, aborted);
    int status = aborted && g->status == 0 ? 499 : g->status;
    double total_s = (double)(uv_hrtime() - g->req->start_ns) / 1e9;
    const char *model_label = g->model ? g->model->name : "";

    struct leo_buf lbl = LEO_BUF_INIT;
    leo_buf_adds(&lbl, "route=\"");
    leo_metrics_label_value(&lbl, g->route, strlen(g->route));
    leo_buf_adds(&lbl, "\",model=\"");
    leo_metrics_label_value(&lbl, model_label, strlen(model_label));
    leo_buf_adds(&lbl, "\",status=\"");
    leo_buf_add_uint(&lbl, (unsigned)status);
    leo_buf_addch(&lbl, '"');
    leo_metrics_add("leo_requests_total", lbl.p, 1);
    leo_buf_reset(&lbl);
    leo_buf_adds(&lbl, "route=\"");
    leo_metrics_label_value(&lbl, g->route, strlen(g->route));
    leo_buf_addch(&lbl, '"');
    leo_metrics_observe("leo_request_duration_seconds", lbl.p, total_s);
    leo_metrics_gauge_add("leo_active_requests", "", -1);
    if (g->have_usage && g->model) {
        leo_buf_reset(&lbl);
        leo_buf_adds(&lbl, "model=\"");
        leo_metrics_label_value(&lbl, model_label, strlen(model_label));
        size_t base = lbl.len;
        leo_buf_adds(&lbl, "\",direction=\"input\"");
        leo_metrics_add("leo_tokens_total", lbl.p, (double)g->prompt_tokens);
        lbl.len = base;
        leo_buf_adds(&lbl, "\",direction=\"output\"");
        leo_metrics_add("leo_tokens_total", lbl.p, (double)g->completion_tokens);
        lbl.len = base;
        leo_buf_adds(&lbl, "\"");
        leo_metrics_add("leo_cost_usd_total", lbl.p, g->cost_usd);
    }
    leo_buf_release(&lbl);
    emit_usage(g, status, aborted, total_s * 1000.0);
    leo_analytics_record_request(g->w->analytics, g, status, total_s * 1000.0);

    if (g->cfg == NULL || g->cfg->access_log) {
        /* formatted by hand: this line is written for every request, and vsnprintf showed in profiles */
        char ts[40];
        size_t tslen = leo_log_timestamp(ts, sizeof(ts));
        struct leo_buf b;
        leo_buf_init(&b, 0, 512);
        leo_buf_adds(&b, "{\"ts\":\"");
        leo_buf_add(&b, ts, tslen);
        leo_buf_adds(&b, "\",\"type\":\"access\",\"request_id\":\"");
        leo_buf_adds(&b, g->id);
        leo_buf_addch(&b, '"');
        add_json_str(&b, "method", g->req->method);
        add_json_str(&b, "path", g->req->path);
        add_json_str(&b, "tenant", g->key ? leo_str_c(g->key->tenant->id) : (struct leo_str){NULL, 0});
        add_json_str(&b, "key", g->key ? leo_str_c(g->key->name) : (struct leo_str){NULL, 0});
        add_json_str(&b, "model", g->model ? leo_str_c(g->model->name) : (struct leo_str){NULL, 0});
        add_json_str(&b, "deployment",
                     g->dep ? leo_str_c(g->dep->provider->name) : (struct leo_str){NULL, 0});
        add_json_str(&b, "upstream_model", g->dep ? leo_str_c(g->dep->model) : (struct leo_str){NULL, 0});
        leo_buf_adds(&b, ",\"status\":");
        leo_buf_add_uint(&b, (unsigned)status);
        leo_buf_adds(&b, g->stream ? ",\"stream\":true" : ",\"stream\":false");
        leo_buf_adds(&b, g->byok.len ? ",\"byok\":true" : ",\"byok\":false");
        if (g->estimated_tokens) {
            leo_buf_adds(&b, ",\"estimated_tokens\":");
            leo_buf_add_uint(&b, (unsigned long long)g->estimated_tokens);
        }
        if (g->have_usage) {
            leo_buf_adds(&b, ",\"prompt_tokens\":");
            leo_buf_add_uint(&b, (unsigned long long)g->prompt_tokens);
            leo_buf_adds(&b, ",\"completion_tokens\":");
            leo_buf_add_uint(&b, (unsigned long long)g->completion_tokens);
            leo_buf_adds(&b, ",\"cost_usd\":");
            leo_buf_add_fixed(&b, g->cost_usd, 8);
        }
        leo_buf_adds(&b, ",\"latency_ms\":");
        leo_buf_add_fixed(&b, total_s * 1000.0, 3);
        if (g->upstream_status || g->upstream_ms > 0) {
            leo_buf_adds(&b, ",\"upstream_status\":");
            if (g->upstream_status < 0)
                leo_buf_addch(&b, '-');
            leo_buf_add_uint(&b, (unsigned)(g->upstream_status < 0 ? -g->upstream_status : g->upstream_status));
            leo_buf_adds(&b, ",\"upstream_ms\":");
            leo_buf_add_fixed(&b, g->upstream_ms, 3);
            leo_buf_adds(&b, ",\"upstream_ttfb_ms\":");
            leo_buf_add_fixed(&b, g->upstream_ttfb_ms, 3);
        }
        if (g->attempts_log)
            add_json_str(&b, "failed_attempts", leo_str_c(g->attempts_log));
        if (aborted)
            leo_buf_adds(&b, ",\"client_aborted\":true");
        if (g->error)
            add_json_str(&b, "error", leo_str_c(g->error));
        leo_buf_addch(&b, '}');
        leo_log_line(b.p, b.len);
        leo_buf_release(&b);
    }
    leo_config_unref(g->cfg);
    g->cfg = NULL;
}

static void on_request_close(struct leo_http_request *req, bool aborted)
{
    finish(req->data, aborted);
}

void leo_gw_handle(struct leo_http_request *req, void *ud)
{
    struct leo_worker *w = ud;
    struct leo_gw_req *g = leo_arena_zalloc(&req->arena, sizeof(*g));
    g->req = req;
    g->w = w;
    g->cfg = leo_config_ref(w->cfg);
    g->route = "unmatched";
    leo_worker_request_id(w, g->id, sizeof(g->id));
    req->data = g;
    req->on_close = on_request_close;
    leo_metrics_gauge_add("leo_active_requests", "", 1);

    bool path_known = false;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        const struct route *r = &routes[i];
        bool match = r->prefix ? (leo_str_startswith(req->path, r->path) && req->path.len > strlen(r->path))
                               : leo_str_eqc(req->path, r->path);
        if (!match)
            continue;
        path_known = true;
        if (!leo_str_eqc(req->method, r->method) &&
            !(leo_str_eqc(req->method, "HEAD") && strcmp(r->method, "GET") == 0))
            continue;
        g->route = r->path;
        g->usage = r->usage;
        r->fn(g);
        return;
    }
    if (path_known) {
        g->route = "method_not_allowed";
        leo_gw_error(g, 405, NULL, "method_not_allowed", "method %.*s is not allowed on %.*s",
                     (int)(req->method.len > 16 ? 16 : req->method.len), req->method.p,
                     (int)(req->path.len > 200 ? 200 : req->path.len), req->path.p);
        return;
    }
    leo_gw_error(g, 404, NULL, "unknown_route", "unknown route %.*s %.*s",
                 (int)(req->method.len > 16 ? 16 : req->method.len), req->method.p,
                 (int)(req->path.len > 200 ? 200 : req->path.len), req->path.p);
}
