/*
 * quota.c — admission and settlement of quotas (see quota.h for the model).
 *
 * Both backends share one key model: every counter is a named integer `leo:q:<scope>:<id>:<kind>:<window>`
 * with an expiry, so the in-process map below and Redis hold the same things and the Lua scripts in
 * quota_lua.h implement exactly the arithmetic of check_eval()/check_reserve(). The sliding-window test is
 * done in integers (prev*(W-e) + (cur+cost)*W <= limit*W) so C and Lua (doubles, exact below 2^53) agree.
 */
#include "quota.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/alloc.h"
#include "../common/buf.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/redis.h"
#include "quota_lua.h"

#define WINDOW_MS ((uint64_t)60000)
#define DAY_MS ((uint64_t)86400000)
#define KEY_MAX 200
#define MAX_CHECKS 17 /* 7 kinds for the key and the tenant, 3 for the deployment */
#define SWEEP_EVERY 256
#define DEFAULT_LEASE_MS ((uint64_t)15 * 60 * 1000)

enum kind { K_RPM, K_TPM, K_TOK_DAY, K_TOK_MONTH, K_USD_DAY, K_USD_MONTH, K_CONC, K_COUNT };

static const char *const kind_names[K_COUNT] = {"rpm",     "tpm",       "tokens_day", "tokens_month",
                                                "usd_day", "usd_month", "concurrency"};

/* ---- the in-process key/value map ---- */

struct kv_entry {
    struct kv_entry *next;
    uint64_t expire_ms; /* 0 = never */
    int64_t val;
    char key[];
};

struct kv {
    struct kv_entry **b;
    size_t nb, n;
};

static uint64_t kv_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static struct kv_entry **kv_slot(struct kv *kv, const char *key)
{
    struct kv_entry **pp = &kv->b[kv_hash(key) & (kv->nb - 1)];
    while (*pp && strcmp((*pp)->key, key) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void kv_del_at(struct kv *kv, struct kv_entry **pp)
{
    struct kv_entry *e = *pp;
    *pp = e->next;
    leo_free(e);
    kv->n--;
}

/* Returns the live entry for key or NULL; an expired entry is dropped on the way. */
static struct kv_entry *kv_get(struct kv *kv, const char *key, uint64_t now)
{
    struct kv_entry **pp = kv_slot(kv, key);
    if (*pp && (*pp)->expire_ms && (*pp)->expire_ms <= now) {
        kv_del_at(kv, pp);
        return NULL;
    }
    return *pp;
}

static int64_t kv_val(struct kv *kv, const char *key, uint64_t now)
{
    struct kv_entry *e = kv_get(kv, key, now);
    return e ? e->val : 0;
}

static void kv_grow(struct kv *kv)
{
    size_t nb = kv->nb * 2;
    struct kv_entry **b = leo_calloc(nb, sizeof(*b));
    for (size_t i = 0; i < kv->nb; i++) {
        struct kv_entry *e = kv->b[i];
        while (e) {
            struct kv_entry *next = e->next;
            size_t j = kv_hash(e->key) & (nb - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    leo_free(kv->b);
    kv->b = b;
    kv->nb = nb;
}

/* Creates the entry when missing; expire_ms, when non-zero, replaces the entry's expiry. */
static struct kv_entry *kv_upsert(struct kv *kv, const char *key, uint64_t now, uint64_t expire_ms)
{
    struct kv_entry *e = kv_get(kv, key, now);
    if (!e) {
        if (kv->n >= kv->nb * 2)
            kv_grow(kv);
        size_t len = strlen(key);
        e = leo_malloc(sizeof(*e) + len + 1);
        memcpy(e->key, key, len + 1);
        e->val = 0;
        e->expire_ms = 0;
        struct kv_entry **head = &kv->b[kv_hash(key) & (kv->nb - 1)];
        e->next = *head;
        *head = e;
        kv->n++;
    }
    if (expire_ms)
        e->expire_ms = expire_ms;
    return e;
}

static void kv_sweep(struct kv *kv, uint64_t now)
{
    for (size_t i = 0; i < kv->nb; i++) {
        struct kv_entry **pp = &kv->b[i];
        while (*pp) {
            if ((*pp)->expire_ms && (*pp)->expire_ms <= now)
                kv_del_at(kv, pp);
            else
                pp = &(*pp)->next;
        }
    }
}

static void kv_clear(struct kv *kv)
{
    for (size_t i = 0; i < kv->nb; i++) {
        struct kv_entry **pp = &kv->b[i];
        while (*pp)
            kv_del_at(kv, pp);
    }
    leo_free(kv->b);
}

/* ---- reservations ---- */

struct resv_item {
    uint8_t kind;
    uint64_t cost;    /* what was reserved (tokens, micro-USD, 1 request, 1 slot) */
    char key[KEY_MAX];
};

struct resv {
    struct resv *next;
    bool local;       /* reserved in the in-process map (standalone, or fail-open during an outage) */
    uint64_t admit_ms; /* the admission's clock (injected or wall) */
    uint64_t admit_hr; /* uv_hrtime() at admission: settlement's clock is admit_ms + the time since */
    size_t n;
    struct resv_item *items;
    char id[40];
};

#define RESV_BUCKETS 1024

struct leo_quota_service {
    uv_loop_t *loop;
    struct leo_redis *redis;
    struct kv kv;
    struct resv *resv[RESV_BUCKETS];
    size_t npending;
    uint64_t seq;
    uint32_t salt;
    unsigned ops;
    leo_quota_alert_cb alert_cb;
    void *alert_ud;
    bool outage;      /* the last Redis operation failed; cleared (and logged) by the next success */
    struct leo_redis_script admit_script, settle_script;
};

static struct resv **resv_slot(struct leo_quota_service *q, const char *id)
{
    struct resv **pp = &q->resv[kv_hash(id) & (RESV_BUCKETS - 1)];
    while (*pp && strcmp((*pp)->id, id) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void resv_free(struct resv *r)
{
    leo_free(r->items);
    leo_free(r);
}

/* ---- checks: one (scope, kind) limit that applies to a request ---- */

struct check {
    const char *scope;
    const char *id;       /* points into struct admit_ctx */
    enum kind kind;
    uint64_t limit, cost;
    char key[KEY_MAX];      /* the current window's counter (or the in-flight counter) */
    char prev_key[KEY_MAX]; /* rpm/tpm: the previous minute's counter */
    char alert_key[KEY_MAX];
    uint64_t elapsed_ms;    /* rpm/tpm: time since the current minute started */
    uint64_t window_end_ms; /* end of the current window or period */
    uint64_t expire_ms;     /* when the counter may disappear */
    char window[40];        /* for alerts: "minute 28512345", "2024-05-01", "2024-05" */
    /* results of check_eval */
    bool ok;
    uint64_t remaining, retry_ms, reset_ms;
    uint64_t used_after;    /* usage once this request is reserved (for alerts) */
};

static uint64_t usd_to_micro(double usd)
{
    if (!(usd > 0))
        return 0;
    /* the small bias keeps 0.000001 * 3 from rounding up to 4 micro-USD through binary noise */
    return (uint64_t)ceil(usd * 1e6 - 1e-6);
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Fills the window fields of c for time now. */
static void check_window(struct check *c, const char *ns, uint64_t now)
{
    time_t secs = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    switch (c->kind) {
    case K_RPM:
    case K_TPM: {
        uint64_t m = now / WINDOW_MS;
        snprintf(c->key, sizeof(c->key), "%s:%" PRIu64, ns, m);
        snprintf(c->prev_key, sizeof(c->prev_key), "%s:%" PRIu64, ns, m - 1);
        c->elapsed_ms = now % WINDOW_MS;
        c->window_end_ms = (m + 1) * WINDOW_MS;
        /* the counter is read as "previous minute" during the next minute; a minute more for late settles */
        c->expire_ms = (m + 3) * WINDOW_MS;
        snprintf(c->window, sizeof(c->window), "minute %" PRIu64, m);
        break;
    }
    case K_TOK_DAY:
    case K_USD_DAY:
        snprintf(c->window, sizeof(c->window), "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        snprintf(c->key, sizeof(c->key), "%.150s:%s", ns, c->window);
        c->window_end_ms = (now / DAY_MS + 1) * DAY_MS;
        c->expire_ms = c->window_end_ms + DAY_MS; /* requests that started before midnight still settle */
        break;
    case K_TOK_MONTH:
    case K_USD_MONTH: {
        snprintf(c->window, sizeof(c->window), "%04d-%02d", tm.tm_year + 1900, tm.tm_mon + 1);
        snprintf(c->key, sizeof(c->key), "%.150s:%s", ns, c->window);
        struct tm next = {0};
        next.tm_year = tm.tm_mon == 11 ? tm.tm_year + 1 : tm.tm_year;
        next.tm_mon = tm.tm_mon == 11 ? 0 : tm.tm_mon + 1;
        next.tm_mday = 1;
        c->window_end_ms = (uint64_t)timegm(&next) * 1000;
        c->expire_ms = c->window_end_ms + DAY_MS;
        break;
    }
    case K_CONC:
        snprintf(c->key, sizeof(c->key), "%s", ns);
        c->window_end_ms = (now / WINDOW_MS + 1) * WINDOW_MS; /* alerts: at most once a minute */
        c->expire_ms = 0;
        snprintf(c->window, sizeof(c->window), "minute %" PRIu64, now / WINDOW_MS);
        break;
    default:
        break;
    }
    snprintf(c->alert_key, sizeof(c->alert_key), "%s:alert:%" PRIu64, ns, c->window_end_ms);
}

/*
 * The sliding-window decision, shared in spirit with the Lua script. prev and cur are the previous and the
 * current minute's counters, e the time into the current minute.
 */
static void sliding_eval(struct check *c, uint64_t prev, uint64_t cur)
{
    const uint64_t W = WINDOW_MS, e = c->elapsed_ms, L = c->limit, cost = c->cost;
    uint64_t used_w = prev * (W - e) + cur * W; /* the weighted count, times W */
    c->ok = used_w + cost * W <= L * W;
    uint64_t after_w = c->ok ? used_w + cost * W : used_w;
    c->remaining = after_w >= L * W ? 0 : (L * W - after_w) / W;
    c->used_after = (used_w + cost * W + W - 1) / W;
    uint64_t cur_after = c->ok ? cur + cost : cur;
    c->reset_ms = cur_after ? (W - e) + W : prev ? W - e : 0;
    c->retry_ms = 0;
    if (c->ok)
        return;
    if (cur + cost <= L) {
        /* later in this minute: prev*(W-e') <= (L-cur-cost)*W (prev > 0 here, or it would fit) */
        uint64_t span = (L - cur - cost) * W / prev; /* largest W-e' that fits */
        c->retry_ms = (W - span) - e;
    } else if (cost <= L) {
        /* next minute, where cur becomes prev: cur*(W-e'') <= (L-cost)*W */
        uint64_t span = (L - cost) * W / cur;
        c->retry_ms = (W - e) + (W - span);
    } else {
        /* the estimate alone exceeds the limit: it never fits; answer with the full window */
        c->retry_ms = (W - e) + W;
    }
    if (c->retry_ms == 0)
        c->retry_ms = 1;
}

static void total_eval(struct check *c, uint64_t v, uint64_t now)
{
    c->ok = v + c->cost <= c->limit;
    uint64_t after = c->ok ? v + c->cost : v;
    c->remaining = after >= c->limit ? 0 : c->limit - after;
    c->used_after = v + c->cost;
    if (c->kind == K_CONC) {
        c->reset_ms = 0;
        c->retry_ms = c->ok ? 0 : 1000;
    } else {
        c->reset_ms = c->window_end_ms - now;
        c->retry_ms = c->ok ? 0 : c->window_end_ms - now;
    }
}

static void check_eval_local(struct leo_quota_service *q, struct check *c, uint64_t now)
{
    int64_t v = kv_val(&q->kv, c->key, now);
    uint64_t cur = v > 0 ? (uint64_t)v : 0;
    if (c->kind == K_RPM || c->kind == K_TPM) {
        int64_t p = kv_val(&q->kv, c->prev_key, now);
        sliding_eval(c, p > 0 ? (uint64_t)p : 0, cur);
    } else {
        total_eval(c, cur, now);
    }
}

/* ---- building the list of checks for a request ---- */

struct admit_ctx {
    char key_id[96];
    char tenant_id[96];
    char dep_id[96];
    struct check checks[MAX_CHECKS];
    size_t n;
};

static void add_check(struct admit_ctx *ctx, const char *scope, const char *id, enum kind k, uint64_t limit,
                      uint64_t cost, uint64_t now)
{
    if (!limit)
        return;
    struct check *c = &ctx->checks[ctx->n++];
    memset(c, 0, sizeof(*c));
    c->scope = scope;
    c->id = id;
    c->kind = k;
    c->limit = limit;
    c->cost = cost;
    char ns[KEY_MAX];
    snprintf(ns, sizeof(ns), "leo:q:%s:%s:%s", scope, id, kind_names[k]);
    check_window(c, ns, now);
}

static void add_scope(struct admit_ctx *ctx, const char *scope, const char *id, const struct leo_quota *lim,
                      const struct leo_quota_request *r, uint64_t now, bool all_kinds)
{
    uint64_t usd = usd_to_micro(r->est_usd);
    add_check(ctx, scope, id, K_RPM, lim->rpm, 1, now);
    add_check(ctx, scope, id, K_TPM, lim->tpm, r->est_tokens, now);
    if (all_kinds) {
        add_check(ctx, scope, id, K_TOK_DAY, lim->tokens_per_day, r->est_tokens, now);
        add_check(ctx, scope, id, K_TOK_MONTH, lim->tokens_per_month, r->est_tokens, now);
        add_check(ctx, scope, id, K_USD_DAY, usd_to_micro(lim->usd_per_day), usd, now);
        add_check(ctx, scope, id, K_USD_MONTH, usd_to_micro(lim->usd_per_month), usd, now);
    }
    add_check(ctx, scope, id, K_CONC, lim->concurrency, 1, now);
}

static void build_checks(struct admit_ctx *ctx, const struct leo_quota_request *r, uint64_t now)
{
    ctx->n = 0;
    if (r->key) {
        const struct leo_tenant *t = r->key->tenant;
        snprintf(ctx->key_id, sizeof(ctx->key_id), "%s/%s", t ? t->id : "", r->key->name ? r->key->name : "");
        add_scope(ctx, "key", ctx->key_id, &r->key->quota, r, now, true);
        if (t) {
            snprintf(ctx->tenant_id, sizeof(ctx->tenant_id), "%s", t->id);
            add_scope(ctx, "tenant", ctx->tenant_id, &t->quota, r, now, true);
        }
    }
    if (r->dep) {
        snprintf(ctx->dep_id, sizeof(ctx->dep_id), "%s", r->dep->id ? r->dep->id : "");
        add_scope(ctx, "deployment", ctx->dep_id, &r->dep->limits, r, now, false);
    }
}

/* ---- results, alerts, metrics ---- */

static void fill_headers(struct leo_quota_result *res, const struct check *checks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct check *c = &checks[i];
        if (c->kind == K_RPM && (!res->has_requests || c->remaining < res->remaining_requests)) {
            res->has_requests = true;
            res->limit_requests = c->limit;
            res->remaining_requests = c->remaining;
            res->reset_requests_ms = c->reset_ms;
        } else if (c->kind == K_TPM && (!res->has_tokens || c->remaining < res->remaining_tokens)) {
            res->has_tokens = true;
            res->limit_tokens = c->limit;
            res->remaining_tokens = c->remaining;
            res->reset_tokens_ms = c->reset_ms;
        }
    }
}

static void fill_refusal(struct leo_quota_result *res, const struct check *c)
{
    res->allowed = false;
    res->status = 429;
    res->scope = c->scope;
    res->kind = kind_names[c->kind];
    snprintf(res->id, sizeof(res->id), "%s", c->id);
    res->limit = c->limit;
    res->remaining = c->remaining;
    res->retry_after_ms = c->retry_ms;
}

static void count_result(const struct leo_quota_result *res)
{
    char labels[256];
    snprintf(labels, sizeof(labels), "result=\"%s\"",
             res->allowed ? (res->degraded ? "allowed_local" : "allowed") : res->status == 503 ? "unavailable"
                                                                                              : "rejected");
    leo_metrics_add("leo_quota_admissions_total", labels, 1);
    if (!res->allowed && res->status == 429) {
        snprintf(labels, sizeof(labels), "scope=\"%s\",kind=\"%s\"", res->scope, res->kind);
        leo_metrics_add("leo_quota_rejections_total", labels, 1);
    }
}

/* Logs and forwards one alert: usage of c crossed threshold of its limit in its window. */
static void fire_alert(struct leo_quota_service *q, const struct leo_config *cfg, const struct check *c)
{
    struct leo_buf j = LEO_BUF_INIT;
    leo_buf_adds(&j, "{\"type\":\"quota_threshold\",\"scope\":\"");
    leo_buf_add_json_escaped(&j, c->scope, strlen(c->scope));
    leo_buf_adds(&j, "\",\"id\":\"");
    leo_buf_add_json_escaped(&j, c->id, strlen(c->id));
    leo_buf_addf(&j, "\",\"kind\":\"%s\",\"window\":\"%s\",\"limit\":%" PRIu64 ",\"used\":%" PRIu64
                     ",\"threshold\":%g}",
                 kind_names[c->kind], c->window, c->limit, c->used_after, cfg->alerts.threshold);
    leo_warn("quota alert: %s \"%s\" %s at %" PRIu64 " of %" PRIu64 " (threshold %g, window %s)", c->scope, c->id,
             kind_names[c->kind], c->used_after, c->limit, cfg->alerts.threshold, c->window);
    char labels[128];
    snprintf(labels, sizeof(labels), "scope=\"%s\",kind=\"%s\"", c->scope, kind_names[c->kind]);
    leo_metrics_add("leo_quota_alerts_total", labels, 1);
    if (q->alert_cb)
        q->alert_cb(cfg, j.p, j.len, q->alert_ud);
    leo_buf_release(&j);
}

static bool crosses_threshold(const struct leo_config *cfg, const struct check *c)
{
    double th = cfg->alerts.threshold;
    return th > 0 && (double)c->used_after >= th * (double)c->limit;
}

void leo_quota_metrics_describe(void)
{
    leo_metrics_describe("leo_quota_admissions_total", LEO_METRIC_COUNTER,
                         "Quota admissions, by result (allowed, allowed_local, rejected, unavailable).");
    leo_metrics_describe("leo_quota_rejections_total", LEO_METRIC_COUNTER,
                         "Requests refused by a quota or rate limit, by scope and kind.");
    leo_metrics_describe("leo_quota_redis_failures_total", LEO_METRIC_COUNTER,
                         "Quota operations that could not reach Redis, by policy (fail_open, fail_closed).");
    leo_metrics_describe("leo_quota_alerts_total", LEO_METRIC_COUNTER,
                         "Near-quota alerts fired, by scope and kind.");
}

/* ---- lifecycle ---- */

struct leo_quota_service *leo_quota_new(uv_loop_t *loop, struct leo_redis *redis)
{
    struct leo_quota_service *q = leo_new(struct leo_quota_service);
    q->loop = loop;
    q->redis = redis;
    q->kv.nb = 256;
    q->kv.b = leo_calloc(q->kv.nb, sizeof(*q->kv.b));
    q->salt = (uint32_t)(wall_ms() * 2654435761u) ^ (uint32_t)getpid() << 16;
    leo_redis_script_init(&q->admit_script, leo_quota_lua_admit);
    leo_redis_script_init(&q->settle_script, leo_quota_lua_settle);
    return q;
}

void leo_quota_free(struct leo_quota_service *q)
{
    if (!q)
        return;
    for (size_t i = 0; i < RESV_BUCKETS; i++) {
        while (q->resv[i]) {
            struct resv *r = q->resv[i];
            q->resv[i] = r->next;
            resv_free(r);
        }
    }
    kv_clear(&q->kv);
    leo_free(q);
}

void leo_quota_set_alert_cb(struct leo_quota_service *q, leo_quota_alert_cb cb, void *ud)
{
    q->alert_cb = cb;
    q->alert_ud = ud;
}

size_t leo_quota_pending(const struct leo_quota_service *q)
{
    return q->npending;
}

static struct resv *resv_new(struct leo_quota_service *q, const struct admit_ctx *ctx, bool local, uint64_t now,
                             const char *id)
{
    struct resv *r = leo_new(struct resv);
    r->local = local;
    r->admit_ms = now;
    r->admit_hr = uv_hrtime();
    r->n = ctx->n;
    r->items = leo_calloc(ctx->n, sizeof(*r->items));
    for (size_t i = 0; i < ctx->n; i++) {
        r->items[i].kind = (uint8_t)ctx->checks[i].kind;
        r->items[i].cost = ctx->checks[i].cost;
        memcpy(r->items[i].key, ctx->checks[i].key, sizeof(r->items[i].key));
    }
    if (id)
        snprintf(r->id, sizeof(r->id), "%s", id);
    else
        snprintf(r->id, sizeof(r->id), "%08x%05x-%" PRIx64, q->salt, (unsigned)getpid() & 0xfffff, ++q->seq);
    struct resv **head = &q->resv[kv_hash(r->id) & (RESV_BUCKETS - 1)];
    r->next = *head;
    *head = r;
    q->npending++;
    return r;
}

/* ---- the in-process backend ---- */

static void admit_local(struct leo_quota_service *q, const struct leo_quota_request *r, struct admit_ctx *ctx, uint64_t now,
                        struct leo_quota_result *res)
{
    if (++q->ops % SWEEP_EVERY == 0)
        kv_sweep(&q->kv, now);
    const struct check *refused = NULL;
    for (size_t i = 0; i < ctx->n; i++) {
        check_eval_local(q, &ctx->checks[i], now);
        if (!ctx->checks[i].ok && !refused)
            refused = &ctx->checks[i];
    }
    fill_headers(res, ctx->checks, ctx->n);
    if (refused) {
        fill_refusal(res, refused);
        return;
    }
    for (size_t i = 0; i < ctx->n; i++) {
        struct check *c = &ctx->checks[i];
        kv_upsert(&q->kv, c->key, now, c->expire_ms)->val += (int64_t)c->cost;
        if (crosses_threshold(r->cfg, c)) {
            struct kv_entry *a = kv_upsert(&q->kv, c->alert_key, now, c->window_end_ms);
            if (a->val == 0) { /* the local SET NX */
                a->val = 1;
                fire_alert(q, r->cfg, c);
            }
        }
    }
    res->allowed = true;
    res->status = 0;
    snprintf(res->reservation, sizeof(res->reservation), "%s", resv_new(q, ctx, true, now, NULL)->id);
}

static void settle_local(struct leo_quota_service *q, const struct resv *r, uint64_t tokens, uint64_t usd, bool had_usage)
{
    uint64_t now = r->admit_ms + (uv_hrtime() - r->admit_hr) / 1000000;
    for (size_t i = 0; i < r->n; i++) {
        const struct resv_item *it = &r->items[i];
        struct kv_entry *e = kv_get(&q->kv, it->key, now);
        if (!e)
            continue; /* the window is gone: nothing left to correct */
        int64_t delta;
        switch (it->kind) {
        case K_RPM:
            delta = 0; /* a request counts whether or not it succeeded */
            break;
        case K_CONC:
            delta = -1;
            break;
        case K_USD_DAY:
        case K_USD_MONTH:
            delta = (int64_t)(had_usage ? usd : 0) - (int64_t)it->cost;
            break;
        default:
            delta = (int64_t)(had_usage ? tokens : 0) - (int64_t)it->cost;
            break;
        }
        e->val += delta;
        if (e->val < 0)
            e->val = 0;
    }
}

/* ---- the Redis backend ---- */

#define ADMIT_ARGS (5 + MAX_CHECKS * 9)

/* One admission in flight on Redis. */
struct redis_admit {
    struct leo_quota_service *q;
    const struct leo_config *cfg; /* kept alive by the caller until cb has fired */
    struct leo_quota_request req;
    uint64_t now;
    leo_quota_admit_cb cb;
    void *ud;
    char id[40];
    struct admit_ctx ctx;
};

static void redis_state_ok(struct leo_quota_service *q)
{
    if (q->outage) {
        q->outage = false;
        leo_info("quota: redis reachable again; admissions use the shared counters");
    }
}

/* Applies the configured policy to an admission that Redis could not answer. */
static void redis_failed(struct leo_quota_service *q, const struct leo_quota_request *r, struct admit_ctx *ctx,
                         uint64_t now, const char *why, struct leo_quota_result *res)
{
    bool open = r->cfg->redis.fail_open;
    if (!q->outage) {
        q->outage = true;
        leo_warn("quota: redis unavailable (%s); %s until it returns", why,
                 open ? "failing open on this worker's counters" : "failing closed (503)");
    }
    leo_metrics_add("leo_quota_redis_failures_total", open ? "policy=\"fail_open\"" : "policy=\"fail_closed\"", 1);
    if (open) {
        admit_local(q, r, ctx, now, res);
        res->degraded = res->allowed;
    } else {
        res->allowed = false;
        res->status = 503;
        res->scope = "service";
        res->kind = "redis";
        res->retry_after_ms = 1000;
    }
}

static void on_admit_reply(struct leo_redis *rd, int err, redisReply *reply, void *ud)
{
    struct redis_admit *ra = ud;
    struct leo_quota_service *q = ra->q;
    struct admit_ctx *ctx = &ra->ctx;
    struct leo_quota_result res;
    memset(&res, 0, sizeof(res));
    size_t want = 2 + 5 * ctx->n;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != want) {
        char why[160];
        if (err)
            snprintf(why, sizeof(why), "%s", leo_strerror(err));
        else
            snprintf(why, sizeof(why), "unexpected reply: %.120s",
                     reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "not an array");
        redis_failed(q, &ra->req, ctx, ra->now, why, &res);
    } else {
        redis_state_ok(q);
        const struct check *refused = NULL;
        long long refused_idx = reply->element[1]->integer;
        for (size_t i = 0; i < ctx->n; i++) {
            struct check *c = &ctx->checks[i];
            redisReply **e = &reply->element[2 + 5 * i];
            c->remaining = (uint64_t)(e[0]->integer > 0 ? e[0]->integer : 0);
            c->retry_ms = (uint64_t)(e[1]->integer > 0 ? e[1]->integer : 0);
            c->reset_ms = (uint64_t)(e[2]->integer > 0 ? e[2]->integer : 0);
            c->used_after = (uint64_t)(e[4]->integer > 0 ? e[4]->integer : 0);
            if ((long long)i + 1 == refused_idx)
                refused = c;
        }
        fill_headers(&res, ctx->checks, ctx->n);
        if (refused) {
            fill_refusal(&res, refused);
        } else {
            res.allowed = true;
            for (size_t i = 0; i < ctx->n; i++)
                if (reply->element[2 + 5 * i + 3]->integer == 1)
                    fire_alert(q, ra->cfg, &ctx->checks[i]);
            /* the id the script leased concurrency slots under */
            struct resv *r = resv_new(q, ctx, false, ra->now, ra->id);
            snprintf(res.reservation, sizeof(res.reservation), "%s", r->id);
        }
    }
    (void)rd;
    count_result(&res);
    ra->cb(&res, ra->ud);
    leo_free(ra);
}

static int admit_redis(struct leo_quota_service *q, const struct leo_quota_request *r, struct redis_admit *ra)
{
    struct admit_ctx *ctx = &ra->ctx;
    const char *argv[ADMIT_ARGS];
    char nums[MAX_CHECKS * 5 + 4][24];
    size_t ni = 0, argc = 0;
#define NUM(v) (snprintf(nums[ni], sizeof(nums[ni]), "%" PRIu64, (uint64_t)(v)), nums[ni++])
    for (size_t i = 0; i < ctx->n; i++) {
        struct check *c = &ctx->checks[i];
        argv[argc++] = c->key;
        argv[argc++] = c->prev_key[0] ? c->prev_key : c->key;
        argv[argc++] = c->alert_key;
    }
    int nkeys = (int)argc;
    char th[32];
    snprintf(th, sizeof(th), "%.17g", r->cfg->alerts.threshold);
    argv[argc++] = NUM(ra->now);
    argv[argc++] = NUM(ctx->n);
    argv[argc++] = ra->id;
    argv[argc++] = th;
    argv[argc++] = NUM(r->lease_ms ? r->lease_ms : DEFAULT_LEASE_MS);
    for (size_t i = 0; i < ctx->n; i++) {
        struct check *c = &ctx->checks[i];
        argv[argc++] = kind_names[c->kind];
        argv[argc++] = NUM(c->limit);
        argv[argc++] = NUM(c->cost);
        argv[argc++] = NUM(c->elapsed_ms);
        argv[argc++] = NUM(c->expire_ms ? c->expire_ms : ra->now + DAY_MS);
        argv[argc++] = NUM(c->window_end_ms);
    }
#undef NUM
    return leo_redis_eval(q->redis, &q->admit_script, on_admit_reply, ra, nkeys, (int)argc, argv, NULL);
}

int leo_quota_admit(struct leo_quota_service *q, const struct leo_quota_request *r, leo_quota_admit_cb cb, void *ud)
{
    if (!r || !r->cfg || !cb)
        return LEO_EINVAL;
    uint64_t now = r->now_ms ? r->now_ms : wall_ms();
    struct leo_quota_result res;
    memset(&res, 0, sizeof(res));
    if (q->redis) {
        struct redis_admit *ra = leo_new(struct redis_admit);
        build_checks(&ra->ctx, r, now);
        if (ra->ctx.n > 0) {
            ra->q = q;
            ra->cfg = r->cfg;
            ra->req = *r;
            ra->now = now;
            ra->cb = cb;
            ra->ud = ud;
            snprintf(ra->id, sizeof(ra->id), "%08x%05x-%" PRIx64, q->salt, (unsigned)getpid() & 0xfffff, ++q->seq);
            int err = admit_redis(q, r, ra);
            if (err == 0)
                return 0;
            /* not connected (or too many commands held): the policy answers at once */
            redis_failed(q, r, &ra->ctx, now, leo_strerror(err), &res);
        } else {
            res.allowed = true;
        }
        leo_free(ra);
    } else {
        struct admit_ctx *ctx = leo_new(struct admit_ctx);
        build_checks(ctx, r, now);
        if (ctx->n == 0)
            res.allowed = true;
        else
            admit_local(q, r, ctx, now, &res);
        leo_free(ctx);
    }
    count_result(&res);
    cb(&res, ud);
    return 0;
}

static void on_settle_reply(struct leo_redis *rd, int err, redisReply *reply, void *ud)
{
    struct leo_quota_service *q = ud;
    (void)rd;
    if (err || !reply || reply->type == REDIS_REPLY_ERROR) {
        /* the estimate stays reserved (the conservative side) and a concurrency lease runs out by itself */
        leo_warn("quota: settlement not applied in redis: %s",
                 err ? leo_strerror(err) : reply ? reply->str : "no reply");
        leo_metrics_add("leo_quota_redis_failures_total", "policy=\"settle\"", 1);
    }
    (void)q;
}

static void settle_redis(struct leo_quota_service *q, const struct resv *r, uint64_t tokens, uint64_t usd,
                         bool had_usage)
{
    const char *argv[1 + MAX_CHECKS * 3];
    char deltas[MAX_CHECKS][24];
    size_t argc = 0;
    for (size_t i = 0; i < r->n; i++)
        argv[argc++] = r->items[i].key;
    argv[argc++] = r->id;
    for (size_t i = 0; i < r->n; i++) {
        const struct resv_item *it = &r->items[i];
        int64_t delta = 0;
        if (it->kind == K_USD_DAY || it->kind == K_USD_MONTH)
            delta = (int64_t)(had_usage ? usd : 0) - (int64_t)it->cost;
        else if (it->kind != K_RPM && it->kind != K_CONC)
            delta = (int64_t)(had_usage ? tokens : 0) - (int64_t)it->cost;
        snprintf(deltas[i], sizeof(deltas[i]), "%" PRId64, delta);
        argv[argc++] = kind_names[it->kind];
        argv[argc++] = deltas[i];
    }
    int err = leo_redis_eval(q->redis, &q->settle_script, on_settle_reply, q, (int)r->n, (int)argc, argv, NULL);
    if (err)
        on_settle_reply(q->redis, err, NULL, q);
}

void leo_quota_settle(struct leo_quota_service *q, const char *reservation, uint64_t actual_tokens, double actual_usd,
                      bool had_usage)
{
    if (!reservation || !reservation[0])
        return;
    struct resv **pp = resv_slot(q, reservation);
    struct resv *r = *pp;
    if (!r)
        return;
    *pp = r->next;
    q->npending--;
    if (r->local)
        settle_local(q, r, actual_tokens, usd_to_micro(actual_usd), had_usage);
    else
        settle_redis(q, r, actual_tokens, usd_to_micro(actual_usd), had_usage);
    resv_free(r);
}

uint64_t leo_quota_local_usage(struct leo_quota_service *q, const char *scope, const char *id, const char *kind,
                               uint64_t now_ms)
{
    struct check c;
    memset(&c, 0, sizeof(c));
    c.kind = K_COUNT;
    for (int k = 0; k < K_COUNT; k++)
        if (strcmp(kind_names[k], kind) == 0)
            c.kind = (enum kind)k;
    if (c.kind == K_COUNT)
        return 0;
    char ns[KEY_MAX];
    snprintf(ns, sizeof(ns), "leo:q:%s:%s:%s", scope, id, kind);
    check_window(&c, ns, now_ms);
    int64_t v = kv_val(&q->kv, c.key, now_ms);
    if (c.kind != K_RPM && c.kind != K_TPM)
        return v > 0 ? (uint64_t)v : 0;
    int64_t p = kv_val(&q->kv, c.prev_key, now_ms);
    uint64_t w = (uint64_t)(p > 0 ? p : 0) * (WINDOW_MS - c.elapsed_ms) + (uint64_t)(v > 0 ? v : 0) * WINDOW_MS;
    return w / WINDOW_MS;
}

/* ---- headers and messages ---- */

size_t leo_quota_format_reset(uint64_t ms, char *buf, size_t size)
{
    int n;
    if (ms < 1000) {
        n = snprintf(buf, size, "%" PRIu64 "ms", ms);
    } else {
        uint64_t s = (ms + 999) / 1000;
        if (s < 60)
            n = snprintf(buf, size, "%" PRIu64 "s", s);
        else if (s < 3600)
            n = snprintf(buf, size, "%" PRIu64 "m%" PRIu64 "s", s / 60, s % 60);
        else
            n = snprintf(buf, size, "%" PRIu64 "h%" PRIu64 "m%" PRIu64 "s", s / 3600, s / 60 % 60, s % 60);
    }
    return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

static struct leo_str arena_fmt_u64(struct leo_arena *a, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v);
    return leo_str_n(leo_arena_strndup(a, tmp, (size_t)n), (size_t)n);
}

static struct leo_str arena_fmt_reset(struct leo_arena *a, uint64_t ms)
{
    char tmp[48];
    size_t n = leo_quota_format_reset(ms, tmp, sizeof(tmp));
    return leo_str_n(leo_arena_strndup(a, tmp, n), n);
}

size_t leo_quota_headers(const struct leo_quota_result *res, struct leo_http_header *h, size_t max,
                         struct leo_arena *a)
{
    size_t n = 0;
#define PUT(name, value)                                                                                     \
    do {                                                                                                     \
        if (n < max)                                                                                         \
            h[n++] = (struct leo_http_header){LEO_STR_LIT(name), (value)};                                   \
    } while (0)
    if (res->has_requests) {
        PUT("x-ratelimit-limit-requests", arena_fmt_u64(a, res->limit_requests));
        PUT("x-ratelimit-remaining-requests", arena_fmt_u64(a, res->remaining_requests));
        PUT("x-ratelimit-reset-requests", arena_fmt_reset(a, res->reset_requests_ms));
    }
    if (res->has_tokens) {
        PUT("x-ratelimit-limit-tokens", arena_fmt_u64(a, res->limit_tokens));
        PUT("x-ratelimit-remaining-tokens", arena_fmt_u64(a, res->remaining_tokens));
        PUT("x-ratelimit-reset-tokens", arena_fmt_reset(a, res->reset_tokens_ms));
    }
    if (!res->allowed && res->status == 429) {
        uint64_t s = (res->retry_after_ms + 999) / 1000;
        PUT("Retry-After", arena_fmt_u64(a, s ? s : 1));
    }
#undef PUT
    return n;
}

void leo_quota_message(const struct leo_quota_result *res, char *buf, size_t size)
{
    if (res->allowed) {
        snprintf(buf, size, "admitted");
    } else if (res->status == 503) {
        snprintf(buf, size, "quota service unavailable");
    } else if (strncmp(res->kind, "usd_", 4) == 0) {
        snprintf(buf, size, "%s \"%s\" exceeded its %s quota (limit %.6f USD, remaining %.6f USD)", res->scope,
                 res->id, res->kind, (double)res->limit / 1e6, (double)res->remaining / 1e6);
    } else {
        snprintf(buf, size, "%s \"%s\" exceeded its %s limit (limit %" PRIu64 ", remaining %" PRIu64 ")",
                 res->scope, res->id, res->kind, res->limit, res->remaining);
    }
}
