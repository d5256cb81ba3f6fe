/*
 * analytics.c — recording, batching, storing and reporting the savings analytics (see analytics.h).
 *
 * Storage layout (Redis and in-process alike):
 *   leo:an:<m|h|d>:<tenant>:<bucket start, Unix s>   hash, expires retention after the bucket ends
 *       <model>|<counter>            integers: req err hit semhit miss bypass tin tout nusd svtok svnusd rtnusd latus
 *       <model>|lat|<i>              requests in latency bucket i
 *       <model>|dep|<deployment>     requests served by that deployment (the route distribution)
 *       <model>|key|<key name>       requests made with that key of the tenant
 *   leo:an:tenants                   set of the tenants that have data (for an admin's all-tenant report)
 *   leo:an:flush:<batch id>          marker of an applied batch (one day), so a resent batch counts once
 * Model, deployment and key names are written with '%' and '|' percent-encoded, so a field splits
 * unambiguously at its '|'.
 */
#include "analytics.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/redis.h"
#include "config.h"
#include "handlers.h"

#define FLUSH_MS 1000
#define MAX_BATCH_FIELDS 100000 /* bound of the unflushed batch while Redis is away (hash fields) */
#define MAX_BATCH_ERRORS 5      /* error replies before a batch is given up */
#define MARKER_TTL_S 86400
#define SWEEP_TICKS 60 /* without Redis: expired buckets are swept about once a minute */
#define MAX_QUERY_BUCKETS 1500
#define MAX_QUERY_FETCHES 20000 /* tenants x buckets read by one report */
#define MAX_PARAM_LEN 256
#define MAX_INCS 24

static const char *const gran_names[LEO_AN_NGRAN] = {"minute", "hour", "day"};
static const char gran_tags[LEO_AN_NGRAN] = {'m', 'h', 'd'};
static const uint64_t gran_len[LEO_AN_NGRAN] = {60, 3600, 86400};
static const uint64_t gran_keep[LEO_AN_NGRAN] = {48 * 3600, 90 * 86400, 730 * 86400};
static const uint64_t gran_default_buckets[LEO_AN_NGRAN] = {60, 24, 30};

enum counter {
    C_REQ,
    C_ERR,
    C_HIT,
    C_SEM,
    C_MISS,
    C_BYPASS,
    C_TIN,
    C_TOUT,
    C_USD,
    C_SVTOK,
    C_SVUSD,
    C_RTUSD,
    C_LATUS,
    C_COUNT
};
static const char *const counter_names[C_COUNT] = {"req",  "err",  "hit",   "semhit", "miss",   "bypass", "tin",
                                                   "tout", "nusd", "svtok", "svnusd", "rtnusd", "latus"};

/* ---- buckets, histograms, CSV, routing saving ---- */

int leo_analytics_gran_parse(const char *s, size_t len)
{
    for (int i = 0; i < LEO_AN_NGRAN; i++)
        if (strlen(gran_names[i]) == len && memcmp(gran_names[i], s, len) == 0)
            return i;
    return -1;
}

uint64_t leo_analytics_bucket_len(enum leo_an_gran g)
{
    return gran_len[g];
}

uint64_t leo_analytics_retention(enum leo_an_gran g)
{
    return gran_keep[g];
}

uint64_t leo_analytics_bucket_start(enum leo_an_gran g, uint64_t unix_s)
{
    return unix_s - unix_s % gran_len[g];
}

unsigned leo_analytics_latency_bucket(double ms)
{
    if (!(ms >= 1.0))
        return 0;
    double i = floor(4.0 * log2(ms)) + 1.0;
    return i >= LEO_AN_LAT_BUCKETS - 1 ? LEO_AN_LAT_BUCKETS - 1 : (unsigned)i;
}

double leo_analytics_latency_lower(unsigned i)
{
    return i == 0 ? 0.0 : exp2((double)(i - 1) / 4.0);
}

double leo_analytics_percentile(const uint64_t *counts, size_t n, double p)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += counts[i];
    if (total == 0)
        return 0;
    /* the rank of the wanted observation, 1-based: ceil(p * total), at least 1 */
    double rank = ceil(p * (double)total - 1e-9);
    if (rank < 1)
        rank = 1;
    uint64_t before = 0;
    for (size_t i = 0; i < n; i++) {
        if (counts[i] == 0)
            continue;
        if ((double)(before + counts[i]) >= rank) {
            double lo = leo_analytics_latency_lower((unsigned)i);
            if (i == n - 1)
                return lo;
            double hi = leo_analytics_latency_lower((unsigned)i + 1);
            return lo + (hi - lo) * (rank - (double)before) / (double)counts[i];
        }
        before += counts[i];
    }
    return leo_analytics_latency_lower((unsigned)n - 1);
}

void leo_analytics_csv_field(struct leo_buf *out, const char *s, size_t len)
{
    bool quote = len > 0 && (s[0] == ' ' || s[len - 1] == ' ');
    for (size_t i = 0; i < len && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n';
    if (!quote) {
        leo_buf_add(out, s, len);
        return;
    }
    leo_buf_addch(out, '"');
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"')
            leo_buf_addch(out, '"');
        leo_buf_addch(out, s[i]);
    }
    leo_buf_addch(out, '"');
}

double leo_analytics_routing_saving(const struct leo_config *cfg, const struct leo_model *m,
                                    const struct leo_deployment *served, uint64_t input_tokens, uint64_t output_tokens)
{
    if (cfg == NULL || m == NULL || served == NULL || m->ndeployments == 0 || served == &m->deployments[0])
        return 0;
    const struct leo_price *first = leo_config_price(cfg, leo_str_c(m->deployments[0].model));
    const struct leo_price *used = leo_config_price(cfg, leo_str_c(served->model));
    if (first == NULL || used == NULL)
        return 0;
    double d = leo_price_cost(first, input_tokens, output_tokens) - leo_price_cost(used, input_tokens, output_tokens);
    return d > 0 ? d : 0;
}

static int64_t to_nano(double usd)
{
    return usd > 0 ? (int64_t)llround(usd * 1e9) : 0;
}

/* ---- a small string-keyed hash map (keys are byte spans; NULs allowed) ---- */

struct map;

struct ment {
    struct ment *next;
    uint64_t h;
    int64_t val;
    uint64_t expire; /* bucket maps: EXPIREAT time, Unix s */
    struct map *sub; /* bucket maps: the fields */
    size_t len;
    char key[];
};

struct map {
    struct ment **b;
    size_t nb, n;
};

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ULL;
    return h;
}

static struct ment *map_find_h(const struct map *m, const char *k, size_t len, uint64_t h)
{
    if (m->nb == 0)
        return NULL;
    for (struct ment *e = m->b[h & (m->nb - 1)]; e; e = e->next)
        if (e->h == h && e->len == len && memcmp(e->key, k, len) == 0)
            return e;
    return NULL;
}

static struct ment *map_find(const struct map *m, const char *k, size_t len)
{
    return m->nb ? map_find_h(m, k, len, hash_bytes(k, len)) : NULL;
}

static void map_grow(struct map *m)
{
    size_t nb = m->nb ? m->nb * 2 : 16;
    struct ment **b = leo_calloc(nb, sizeof(*b));
    for (size_t i = 0; i < m->nb; i++) {
        struct ment *e = m->b[i];
        while (e) {
            struct ment *next = e->next;
            e->next = b[e->h & (nb - 1)];
            b[e->h & (nb - 1)] = e;
            e = next;
        }
    }
    leo_free(m->b);
    m->b = b;
    m->nb = nb;
}

/* The entry for k (whose hash_bytes is h), created (zeroed) when missing; *created says which. */
static struct ment *map_put_h(struct map *m, const char *k, size_t len, uint64_t h, bool *created)
{
    struct ment *e = map_find_h(m, k, len, h);
    if (created)
        *created = e == NULL;
    if (e)
        return e;
    if (m->n >= m->nb)
        map_grow(m);
    e = leo_calloc(1, sizeof(*e) + len + 1);
    e->h = h;
    e->len = len;
    memcpy(e->key, k, len);
    e->next = m->b[e->h & (m->nb - 1)];
    m->b[e->h & (m->nb - 1)] = e;
    m->n++;
    return e;
}

static struct ment *map_put(struct map *m, const char *k, size_t len, bool *created)
{
    return map_put_h(m, k, len, hash_bytes(k, len), created);
}

static void map_clear(struct map *m);

static void ment_free(struct ment *e)
{
    if (e->sub) {
        map_clear(e->sub);
        leo_free(e->sub);
    }
    leo_free(e);
}

static void map_clear(struct map *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        struct ment *e = m->b[i];
        while (e) {
            struct ment *next = e->next;
            ment_free(e);
            e = next;
        }
    }
    leo_free(m->b);
    memset(m, 0, sizeof(*m));
}

#define MAP_EACH(m, e)                                                                                                 \
    for (size_t i_##e = 0; i_##e < (m)->nb; i_##e++)                                                                   \
        for (struct ment *e = (m)->b[i_##e]; e; e = e->next)

/* ---- names inside fields ---- */

static void add_escaped(struct leo_buf *b, const char *s, size_t len)
{
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%' && s[i] != '|')
            continue;
        leo_buf_add(b, s + run, i - run);
        leo_buf_add(b, s[i] == '%' ? "%25" : "%7C", 3);
        run = i + 1;
    }
    leo_buf_add(b, s + run, len - run);
}

static void add_unescaped(struct leo_buf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len && s[i + 1] == '2' && s[i + 2] == '5') {
            leo_buf_addch(b, '%');
            i += 2;
        } else if (s[i] == '%' && i + 2 < len && s[i + 1] == '7' && s[i + 2] == 'C') {
            leo_buf_addch(b, '|');
            i += 2;
        } else {
            leo_buf_addch(b, s[i]);
        }
    }
}

static void bucket_key(struct leo_buf *b, enum leo_an_gran g, const char *tenant, uint64_t start)
{
    leo_buf_reset(b);
    leo_buf_adds(b, "leo:an:");
    leo_buf_addch(b, gran_tags[g]);
    leo_buf_addch(b, ':');
    leo_buf_adds(b, tenant);
    leo_buf_addch(b, ':');
    leo_buf_add_uint(b, start);
}

/* ---- the service ---- */

struct batch {
    struct leo_analytics *a;
    char id[48];
    struct map keys; /* bucket key → fields */
    struct map tenants;
    size_t fields;
    uint64_t events;
    unsigned errors; /* error replies so far */
    bool in_flight;
};

struct leo_analytics {
    uv_loop_t *loop;
    struct leo_redis *redis;
    uv_timer_t timer;
    struct batch cur;  /* being accumulated (with Redis) */
    struct batch *out; /* sent and not yet acknowledged, or waiting to be resent; NULL when none */
    struct map store;  /* without Redis: the buckets */
    struct map store_tenants;
    unsigned ticks;
    uint64_t seq;
    char salt[17];
    bool outage; /* the last flush failed; cleared (and logged) by the next success */
    bool stopped;
    struct leo_redis_script script;
};

/* KEYS[1] the batch marker, KEYS[2] the tenant set, KEYS[3..] the bucket hashes.
 * ARGV: marker ttl, tenant-set ttl, then per bucket hash: EXPIREAT time, n, n × (field, increment); then the
 * number of tenants and the tenants. A batch whose marker exists was applied already: nothing is done. */
static const char flush_lua[] = "if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end\n"
                                "local a = 3\n"
                                "for k = 3, #KEYS do\n"
                                "  local exp = ARGV[a]\n"
                                "  local n = tonumber(ARGV[a + 1])\n"
                                "  a = a + 2\n"
                                "  for i = 1, n do\n"
                                "    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])\n"
                                "    a = a + 2\n"
                                "  end\n"
                                "  redis.call('EXPIREAT', KEYS[k], exp)\n"
                                "end\n"
                                "local nt = tonumber(ARGV[a])\n"
                                "a = a + 1\n"
                                "for i = 1, nt do\n"
                                "  redis.call('SADD', KEYS[2], ARGV[a])\n"
                                "  a = a + 1\n"
                                "end\n"
                                "if nt > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end\n"
                                "return 1\n";

static uint64_t wall_s(void)
{
    return (uint64_t)time(NULL);
}

void leo_analytics_metrics_describe(void)
{
    leo_metrics_describe("leo_analytics_events_total", LEO_METRIC_COUNTER,
                         "Requests recorded by the savings analytics.");
    leo_metrics_describe("leo_analytics_flushes_total", LEO_METRIC_COUNTER,
                         "Analytics batches sent to Redis, by result (ok, duplicate, error, retry, unavailable).");
    leo_metrics_describe("leo_analytics_dropped_total", LEO_METRIC_COUNTER,
                         "Requests left out of the analytics, by reason (buffer_full, rejected).");
    leo_metrics_describe("leo_analytics_pending_fields", LEO_METRIC_GAUGE,
                         "Counters accumulated in this worker and not yet written to Redis.");
}

static void publish_pending(struct leo_analytics *a)
{
    size_t n = a->cur.fields + (a->out ? a->out->fields : 0);
    leo_metrics_gauge_set("leo_analytics_pending_fields", "", (double)n);
}

static void sweep_store(struct leo_analytics *a, uint64_t now)
{
    for (size_t i = 0; i < a->store.nb; i++) {
        struct ment **pp = &a->store.b[i];
        while (*pp) {
            if ((*pp)->expire && (*pp)->expire <= now) {
                struct ment *e = *pp;
                *pp = e->next;
                ment_free(e);
                a->store.n--;
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    struct leo_analytics *a = t->data;
    a->ticks++;
    if (a->redis == NULL) {
        if (a->ticks % SWEEP_TICKS == 0)
            sweep_store(a, wall_s());
        return;
    }
    leo_analytics_flush(a);
}

struct leo_analytics *leo_analytics_new(uv_loop_t *loop, struct leo_redis *redis)
{
    struct leo_analytics *a = leo_new(struct leo_analytics);
    a->loop = loop;
    a->redis = redis;
    a->cur.a = a;
    uint8_t rnd[8];
    randombytes_buf(rnd, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(a->salt + 2 * i, 3, "%02x", rnd[i]);
    leo_redis_script_init(&a->script, flush_lua);
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
    uv_timer_start(&a->timer, on_tick, FLUSH_MS, FLUSH_MS);
    uv_unref((uv_handle_t *)&a->timer);
    return a;
}

uint64_t leo_analytics_pending(const struct leo_analytics *a)
{
    return a->cur.events + (a->out ? a->out->events : 0);
}

void leo_analytics_stop(struct leo_analytics *a)
{
    if (a == NULL || a->stopped)
        return;
    a->stopped = true;
    if (leo_analytics_pending(a) > 0)
        leo_warn("analytics: %" PRIu64 " recorded requests may not have been written to redis before shutdown",
                 leo_analytics_pending(a));
    uv_close((uv_handle_t *)&a->timer, NULL);
}

static void batch_release(struct batch *b)
{
    map_clear(&b->keys);
    map_clear(&b->tenants);
    b->fields = 0;
    b->events = 0;
}

void leo_analytics_free(struct leo_analytics *a)
{
    if (a == NULL)
        return;
    batch_release(&a->cur);
    if (a->out) {
        batch_release(a->out);
        leo_free(a->out);
    }
    map_clear(&a->store);
    map_clear(&a->store_tenants);
    leo_free(a);
}

/* ---- recording ---- */

struct inc {
    size_t off, len;
    uint64_t h; /* hash_bytes of the field, computed once for the maps of every granularity */
    int64_t v;
};

struct incs {
    struct leo_buf names; /* the fields, each NUL-terminated */
    struct inc v[MAX_INCS];
    size_t n;
};

/* model is already escaped (add_escaped): it is the same in every field of a request */
static void inc_add(struct incs *x, struct leo_str model, const char *kind, const char *name, int64_t v)
{
    if (v == 0 || x->n == MAX_INCS)
        return;
    struct inc *i = &x->v[x->n++];
    i->off = x->names.len;
    leo_buf_add(&x->names, model.p, model.len);
    leo_buf_addch(&x->names, '|');
    leo_buf_adds(&x->names, kind);
    if (name) {
        leo_buf_addch(&x->names, '|');
        add_escaped(&x->names, name, strlen(name));
    }
    i->len = x->names.len - i->off;
    i->h = hash_bytes(x->names.p + i->off, i->len);
    leo_buf_addch(&x->names, '\0');
    i->v = v;
}

/* Adds the increments to the bucket hashes of every granularity in keys; returns the fields created. */
static size_t apply_incs(struct map *keys, const struct incs *x, const char *tenant, uint64_t unix_s)
{
    size_t created_fields = 0;
    struct leo_buf k = LEO_BUF_INIT;
    for (int g = 0; g < LEO_AN_NGRAN; g++) {
        uint64_t start = leo_analytics_bucket_start((enum leo_an_gran)g, unix_s);
        bucket_key(&k, (enum leo_an_gran)g, tenant, start);
        struct ment *bk = map_put(keys, k.p, k.len, NULL);
        if (bk->sub == NULL)
            bk->sub = leo_new(struct map);
        bk->expire = start + gran_len[g] + gran_keep[g];
        for (size_t i = 0; i < x->n; i++) {
            bool created;
            struct ment *f = map_put_h(bk->sub, x->names.p + x->v[i].off, x->v[i].len, x->v[i].h, &created);
            f->val += x->v[i].v;
            created_fields += created;
        }
    }
    leo_buf_release(&k);
    return created_fields;
}

/* The counter of an x-leo-cache-status value; C_COUNT for none or an unknown value. */
static enum counter cache_counter(const char *s)
{
    static const struct {
        const char *name;
        enum counter c;
    } t[] = {{"hit", C_HIT}, {"semantic-hit", C_SEM}, {"miss", C_MISS}, {"bypass", C_BYPASS}};
    for (size_t i = 0; s && i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(s, t[i].name) == 0)
            return t[i].c;
    return C_COUNT;
}

void leo_analytics_record(struct leo_analytics *a, const struct leo_analytics_event *e)
{
    if (a == NULL || e->tenant == NULL || e->model == NULL)
        return;
    uint64_t unix_s = e->unix_ms ? e->unix_ms / 1000 : wall_s();
    struct incs x;
    memset(&x, 0, sizeof(x));
    leo_buf_init(&x.names, 0, 512);
    struct leo_buf mb = LEO_BUF_INIT;
    add_escaped(&mb, e->model, strlen(e->model));
    struct leo_str m = leo_buf_str(&mb);
    inc_add(&x, m, "req", NULL, 1);
    inc_add(&x, m, "err", NULL, e->status >= 400);
    enum counter cc = cache_counter(e->cache);
    if (cc != C_COUNT)
        inc_add(&x, m, counter_names[cc], NULL, 1);
    inc_add(&x, m, "tin", NULL, (int64_t)e->input_tokens);
    inc_add(&x, m, "tout", NULL, (int64_t)e->output_tokens);
    inc_add(&x, m, "nusd", NULL, to_nano(e->cost_usd));
    inc_add(&x, m, "svtok", NULL, (int64_t)e->saved_tokens);
    inc_add(&x, m, "svnusd", NULL, to_nano(e->saved_usd));
    inc_add(&x, m, "rtnusd", NULL, to_nano(e->routing_saved_usd));
    inc_add(&x, m, "latus", NULL, e->latency_ms > 0 ? (int64_t)llround(e->latency_ms * 1000.0) : 0);
    char li[8];
    unsigned bucket = leo_analytics_latency_bucket(e->latency_ms);
    size_t nl = 0;
    do
        li[nl++] = (char)('0' + bucket % 10);
    while ((bucket /= 10) != 0 && nl < sizeof(li) - 1);
    for (size_t i = 0; i < nl / 2; i++) {
        char t = li[i];
        li[i] = li[nl - 1 - i];
        li[nl - 1 - i] = t;
    }
    li[nl] = '\0';
    inc_add(&x, m, "lat", li, 1);
    if (e->deployment)
        inc_add(&x, m, "dep", e->deployment, 1);
    if (e->key)
        inc_add(&x, m, "key", e->key, 1);

    if (a->redis == NULL) {
        apply_incs(&a->store, &x, e->tenant, unix_s);
        map_put(&a->store_tenants, e->tenant, strlen(e->tenant), NULL);
    } else if (a->cur.fields + LEO_AN_NGRAN * x.n > MAX_BATCH_FIELDS) {
        /* Redis has been away long enough to fill the bound: this request is left out */
        leo_metrics_add("leo_analytics_dropped_total", "reason=\"buffer_full\"", 1);
        leo_buf_release(&x.names);
        leo_buf_release(&mb);
        return;
    } else {
        a->cur.fields += apply_incs(&a->cur.keys, &x, e->tenant, unix_s);
        map_put(&a->cur.tenants, e->tenant, strlen(e->tenant), NULL);
        a->cur.events++;
    }
    leo_metrics_add("leo_analytics_events_total", "", 1);
    leo_buf_release(&x.names);
    leo_buf_release(&mb);
}

void leo_analytics_record_request(struct leo_analytics *a, const struct leo_gw_req *g, int status, double latency_ms)
{
    if (a == NULL || g->key == NULL || g->model == NULL)
        return;
    struct leo_analytics_event e = {
        .tenant = g->key->tenant->id,
        .key = g->key->name,
        .model = g->model->name,
        .deployment = g->dep ? g->dep->id : NULL,
        .status = status,
        .cache = g->cache_status,
        .saved_tokens = g->saved_tokens,
        .saved_usd = g->saved_usd,
        .latency_ms = latency_ms,
    };
    if (g->have_usage) {
        e.input_tokens = g->prompt_tokens;
        e.output_tokens = g->completion_tokens;
        e.cost_usd = g->cost_usd;
        enum counter cc = cache_counter(g->cache_status);
        if (cc != C_HIT && cc != C_SEM)
            e.routing_saved_usd =
                leo_analytics_routing_saving(g->cfg, g->model, g->dep, g->prompt_tokens, g->completion_tokens);
    }
    leo_analytics_record(a, &e);
}

/* ---- flushing to Redis ---- */

static void flush_failed(struct leo_analytics *a, const char *why)
{
    if (!a->outage) {
        a->outage = true;
        leo_warn("analytics: cannot write to redis (%s); accumulating in this worker until it returns", why);
    }
}

static void batch_drop(struct leo_analytics *a, struct batch *b)
{
    leo_metrics_add("leo_analytics_dropped_total", "reason=\"rejected\"", (double)b->events);
    batch_release(b);
    leo_free(b);
    if (a->out == b)
        a->out = NULL;
}

static void on_flush_reply(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct batch *b = ud;
    struct leo_analytics *a = b->a;
    b->in_flight = false;
    if (err == 0 && reply && reply->type == REDIS_REPLY_INTEGER) {
        leo_metrics_add("leo_analytics_flushes_total", reply->integer == 1 ? "result=\"ok\"" : "result=\"duplicate\"",
                        1);
        if (a->outage) {
            a->outage = false;
            leo_info("analytics: redis reachable again; buffered counters written");
        }
        batch_release(b);
        leo_free(b);
        a->out = NULL;
        publish_pending(a);
        return;
    }
    if (err == 0) {
        /* an error reply: nothing of the script's writes before the error is undone, but the marker is set, so
         * a resend would be ignored anyway; retry a few times in case the marker write itself failed */
        leo_metrics_add("leo_analytics_flushes_total", "result=\"error\"", 1);
        leo_warn("analytics: redis refused a batch: %.200s",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        if (++b->errors >= MAX_BATCH_ERRORS)
            batch_drop(a, b);
        return;
    }
    /* timeout, lost connection or shutdown: the outcome is unknown; the marker makes a resend safe */
    leo_metrics_add("leo_analytics_flushes_total", "result=\"retry\"", 1);
    flush_failed(a, leo_strerror(err));
}

/* Builds the script's arguments for batch b and sends it. */
static int batch_send(struct leo_analytics *a, struct batch *b)
{
    size_t nkeys = 2 + b->keys.n;
    size_t argc = nkeys + 2 + 1 + b->tenants.n;
    MAP_EACH(&b->keys, k)
    argc += 2 + 2 * k->sub->n;
    const char **argv = leo_calloc(argc, sizeof(*argv));
    size_t *argvlen = leo_calloc(argc, sizeof(*argvlen));
    size_t *off = leo_calloc(argc, sizeof(*off));
    bool *owned = leo_calloc(argc, sizeof(*owned));
    struct leo_buf s = LEO_BUF_INIT; /* numbers and composed strings; argv points into it once complete */
    size_t n = 0;
#define OWN_F(...)                                                                                                     \
    do {                                                                                                               \
        off[n] = s.len;                                                                                                \
        leo_buf_addf(&s, __VA_ARGS__);                                                                                 \
        argvlen[n] = s.len - off[n];                                                                                   \
        owned[n++] = true;                                                                                             \
    } while (0)
#define BORROW(p, len)                                                                                                 \
    do {                                                                                                               \
        argv[n] = (p);                                                                                                 \
        argvlen[n++] = (len);                                                                                          \
    } while (0)
    OWN_F("leo:an:flush:%s", b->id);
    BORROW("leo:an:tenants", strlen("leo:an:tenants"));
    MAP_EACH(&b->keys, k)
    BORROW(k->key, k->len);
    OWN_F("%d", MARKER_TTL_S);
    OWN_F("%" PRIu64, gran_keep[LEO_AN_DAY] + gran_len[LEO_AN_DAY]);
    MAP_EACH(&b->keys, k)
    {
        OWN_F("%" PRIu64, k->expire);
        OWN_F("%zu", k->sub->n);
        MAP_EACH(k->sub, f)
        {
            BORROW(f->key, f->len);
            OWN_F("%" PRId64, f->val);
        }
    }
    OWN_F("%zu", b->tenants.n);
    MAP_EACH(&b->tenants, t)
    BORROW(t->key, t->len);
#undef OWN_F
#undef BORROW
    for (size_t i = 0; i < n; i++)
        if (owned[i])
            argv[i] = s.p + off[i];
    int err = leo_redis_eval(a->redis, &a->script, on_flush_reply, b, (int)nkeys, (int)n, argv, argvlen);
    leo_buf_release(&s);
    leo_free(owned);
    leo_free(off);
    leo_free(argvlen);
    leo_free(argv);
    return err;
}

void leo_analytics_flush(struct leo_analytics *a)
{
    if (a == NULL || a->redis == NULL || a->stopped)
        return;
    if (a->out && a->out->in_flight)
        return;
    if (a->out == NULL) {
        if (a->cur.events == 0)
            return;
        a->out = leo_new(struct batch);
        *a->out = a->cur;
        memset(&a->cur, 0, sizeof(a->cur));
        a->cur.a = a;
        snprintf(a->out->id, sizeof(a->out->id), "%s%05x-%" PRIx64, a->salt, (unsigned)getpid() & 0xfffff, ++a->seq);
    }
    int err = batch_send(a, a->out);
    if (err == 0) {
        a->out->in_flight = true;
    } else {
        leo_metrics_add("leo_analytics_flushes_total", "result=\"unavailable\"", 1);
        flush_failed(a, leo_strerror(err));
    }
    publish_pending(a);
}

/* ---- the report ---- */

struct agg {
    char *model;
    int64_t c[C_COUNT];
    uint64_t lat[LEO_AN_LAT_BUCKETS];
    struct map deps; /* deployment → requests (totals only) */
    struct map keys; /* tenant NUL key-name → requests (totals only) */
};

struct point {
    struct agg **m;
    size_t n, cap;
};

struct fetch {
    struct query *q;
    size_t bucket;
    size_t tenant;
};

struct query {
    struct leo_analytics *a;
    struct leo_gw_req *g; /* NULL once the client has gone */
    enum leo_an_gran gran;
    uint64_t first; /* start of the first bucket */
    size_t nb;
    char *model;  /* filter, or NULL */
    char *tenant; /* the one tenant, or NULL for every tenant */
    bool csv;
    char **tenants;
    size_t ntenants;
    struct fetch *fetches;
    size_t outstanding;
    bool failed;  /* Redis failed: 503 */
    bool too_big; /* too many tenants x buckets: 400 */
    struct point *pts;
    struct point tot;
};

static struct agg *agg_find(struct point *p, const char *model, size_t len)
{
    for (size_t i = 0; i < p->n; i++)
        if (strlen(p->m[i]->model) == len && memcmp(p->m[i]->model, model, len) == 0)
            return p->m[i];
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 4;
        p->m = leo_realloc(p->m, p->cap * sizeof(*p->m));
    }
    struct agg *g = leo_new(struct agg);
    g->model = leo_strndup(model, len);
    p->m[p->n++] = g;
    return g;
}

static void point_free(struct point *p)
{
    for (size_t i = 0; i < p->n; i++) {
        map_clear(&p->m[i]->deps);
        map_clear(&p->m[i]->keys);
        leo_free(p->m[i]->model);
        leo_free(p->m[i]);
    }
    leo_free(p->m);
}

static void agg_apply(struct agg *g, bool totals, const char *kind, size_t klen, const char *name, size_t nlen,
                      const char *tenant, int64_t v)
{
    for (int i = 0; i < C_COUNT; i++) {
        if (name == NULL && strlen(counter_names[i]) == klen && memcmp(counter_names[i], kind, klen) == 0) {
            g->c[i] += v;
            return;
        }
    }
    if (name == NULL)
        return; /* a counter of a newer version: ignored */
    if (klen == 3 && memcmp(kind, "lat", 3) == 0) {
        char tmp[8];
        if (nlen == 0 || nlen >= sizeof(tmp))
            return;
        memcpy(tmp, name, nlen);
        tmp[nlen] = '\0';
        char *end;
        unsigned long i = strtoul(tmp, &end, 10);
        if (*end == '\0' && i < LEO_AN_LAT_BUCKETS && v > 0)
            g->lat[i] += (uint64_t)v;
        return;
    }
    if (!totals)
        return;
    struct leo_buf u = LEO_BUF_INIT;
    if (klen == 3 && memcmp(kind, "dep", 3) == 0) {
        add_unescaped(&u, name, nlen);
        map_put(&g->deps, u.p, u.len, NULL)->val += v;
    } else if (klen == 3 && memcmp(kind, "key", 3) == 0) {
        leo_buf_adds(&u, tenant);
        leo_buf_addch(&u, '\0');
        add_unescaped(&u, name, nlen);
        map_put(&g->keys, u.p, u.len, NULL)->val += v;
    }
    leo_buf_release(&u);
}

/* Adds one stored field of bucket bi (of tenant ti) to the report. */
static void merge_field(struct query *q, size_t bi, size_t ti, const char *f, size_t flen, int64_t v)
{
    const char *bar = memchr(f, '|', flen);
    if (bar == NULL)
        return;
    struct leo_buf model = LEO_BUF_INIT;
    add_unescaped(&model, f, (size_t)(bar - f));
    if (q->model && strcmp(q->model, model.p) != 0) {
        leo_buf_release(&model);
        return;
    }
    const char *kind = bar + 1;
    size_t rest = flen - (size_t)(kind - f);
    const char *bar2 = memchr(kind, '|', rest);
    size_t klen = bar2 ? (size_t)(bar2 - kind) : rest;
    const char *name = bar2 ? bar2 + 1 : NULL;
    size_t nlen = bar2 ? rest - klen - 1 : 0;
    agg_apply(agg_find(&q->pts[bi], model.p, model.len), false, kind, klen, name, nlen, q->tenants[ti], v);
    agg_apply(agg_find(&q->tot, model.p, model.len), true, kind, klen, name, nlen, q->tenants[ti], v);
    leo_buf_release(&model);
}

static void add_usd(struct leo_buf *b, int64_t nano)
{
    if (nano < 0) {
        leo_buf_addch(b, '-');
        nano = -nano;
    }
    leo_buf_addf(b, "%" PRId64 ".%09" PRId64, nano / 1000000000, nano % 1000000000);
}

static void add_iso(struct leo_buf *b, uint64_t unix_s)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    char s[32];
    strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &tm);
    leo_buf_adds(b, s);
}

static void add_jstr(struct leo_buf *b, const char *s, size_t len)
{
    leo_buf_addch(b, '"');
    leo_buf_add_json_escaped(b, s, len);
    leo_buf_addch(b, '"');
}

static double ratio(int64_t a, int64_t b)
{
    return b > 0 ? (double)a / (double)b : 0;
}

/* The members shared by totals, models and series points (no braces). */
static void add_agg_members(struct leo_buf *b, const struct agg *g)
{
    const int64_t *c = g->c;
    leo_buf_addf(b, "\"requests\":%" PRId64 ",\"errors\":%" PRId64, c[C_REQ], c[C_ERR]);
    leo_buf_addf(b,
                 ",\"cache\":{\"hits\":%" PRId64 ",\"semantic_hits\":%" PRId64 ",\"misses\":%" PRId64
                 ",\"bypass\":%" PRId64 ",\"hit_rate\":%.6f,\"semantic_hit_rate\":%.6f}",
                 c[C_HIT], c[C_SEM], c[C_MISS], c[C_BYPASS], ratio(c[C_HIT], c[C_REQ]), ratio(c[C_SEM], c[C_REQ]));
    leo_buf_addf(b, ",\"tokens\":{\"input\":%" PRId64 ",\"output\":%" PRId64 "}", c[C_TIN], c[C_TOUT]);
    leo_buf_adds(b, ",\"cost_usd\":");
    add_usd(b, c[C_USD]);
    leo_buf_adds(b, ",\"saved\":{\"cache_usd\":");
    add_usd(b, c[C_SVUSD]);
    leo_buf_addf(b, ",\"cache_tokens\":%" PRId64 ",\"routing_usd\":", c[C_SVTOK]);
    add_usd(b, c[C_RTUSD]);
    leo_buf_adds(b, ",\"total_usd\":");
    add_usd(b, c[C_SVUSD] + c[C_RTUSD]);
    leo_buf_addf(b, "},\"latency_ms\":{\"mean\":%.3f,\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f}",
                 c[C_REQ] > 0 ? (double)c[C_LATUS] / 1000.0 / (double)c[C_REQ] : 0.0,
                 leo_analytics_percentile(g->lat, LEO_AN_LAT_BUCKETS, 0.50),
                 leo_analytics_percentile(g->lat, LEO_AN_LAT_BUCKETS, 0.95),
                 leo_analytics_percentile(g->lat, LEO_AN_LAT_BUCKETS, 0.99));
}

static void agg_sum(struct agg *dst, const struct point *p)
{
    for (size_t i = 0; i < p->n; i++) {
        for (int k = 0; k < C_COUNT; k++)
            dst->c[k] += p->m[i]->c[k];
        for (int k = 0; k < LEO_AN_LAT_BUCKETS; k++)
            dst->lat[k] += p->m[i]->lat[k];
    }
}

static int agg_cmp(const void *x, const void *y)
{
    return strcmp((*(struct agg *const *)x)->model, (*(struct agg *const *)y)->model);
}

static int ment_cmp(const void *x, const void *y)
{
    const struct ment *a = *(struct ment *const *)x, *b = *(struct ment *const *)y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->key, b->key, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* The entries of m sorted by key; free the array. */
static struct ment **map_sorted(const struct map *m)
{
    struct ment **v = leo_calloc(m->n ? m->n : 1, sizeof(*v));
    size_t n = 0;
    MAP_EACH(m, e)
    v[n++] = e;
    qsort(v, n, sizeof(*v), ment_cmp);
    return v;
}

static void render_json(struct query *q, struct leo_buf *b)
{
    uint64_t len = gran_len[q->gran];
    leo_buf_addf(b, "{\"object\":\"analytics\",\"granularity\":\"%s\",\"from\":\"", gran_names[q->gran]);
    add_iso(b, q->first);
    leo_buf_adds(b, "\",\"to\":\"");
    add_iso(b, q->first + q->nb * len);
    leo_buf_adds(b, "\",\"tenant\":");
    if (q->tenant)
        add_jstr(b, q->tenant, strlen(q->tenant));
    else
        leo_buf_adds(b, "null");
    leo_buf_adds(b, ",\"model\":");
    if (q->model)
        add_jstr(b, q->model, strlen(q->model));
    else
        leo_buf_adds(b, "null");

    struct agg total;
    memset(&total, 0, sizeof(total));
    agg_sum(&total, &q->tot);
    leo_buf_adds(b, ",\"totals\":{");
    add_agg_members(b, &total);
    leo_buf_adds(b, "},\"models\":[");
    for (size_t i = 0; i < q->tot.n; i++) {
        struct agg *g = q->tot.m[i];
        leo_buf_adds(b, i ? ",{\"model\":" : "{\"model\":");
        add_jstr(b, g->model, strlen(g->model));
        leo_buf_addch(b, ',');
        add_agg_members(b, g);
        leo_buf_addch(b, '}');
    }
    leo_buf_adds(b, "],\"routes\":[");
    bool first = true;
    for (size_t i = 0; i < q->tot.n; i++) {
        struct agg *g = q->tot.m[i];
        int64_t routed = 0;
        MAP_EACH(&g->deps, d)
        routed += d->val;
        struct ment **v = map_sorted(&g->deps);
        for (size_t k = 0; k < g->deps.n; k++) {
            leo_buf_adds(b, first ? "{\"model\":" : ",{\"model\":");
            first = false;
            add_jstr(b, g->model, strlen(g->model));
            leo_buf_adds(b, ",\"deployment\":");
            add_jstr(b, v[k]->key, v[k]->len);
            leo_buf_addf(b, ",\"requests\":%" PRId64 ",\"share\":%.6f}", v[k]->val, ratio(v[k]->val, routed));
        }
        leo_free(v);
    }
    leo_buf_adds(b, "],\"keys\":[");
    struct map keys;
    memset(&keys, 0, sizeof(keys));
    for (size_t i = 0; i < q->tot.n; i++)
        MAP_EACH(&q->tot.m[i]->keys, k)
    map_put(&keys, k->key, k->len, NULL)->val += k->val;
    struct ment **kv = map_sorted(&keys);
    for (size_t k = 0; k < keys.n; k++) {
        size_t tl = strlen(kv[k]->key);
        leo_buf_adds(b, k ? ",{\"tenant\":" : "{\"tenant\":");
        add_jstr(b, kv[k]->key, tl);
        leo_buf_adds(b, ",\"key\":");
        add_jstr(b, kv[k]->key + tl + 1, kv[k]->len - tl - 1);
        leo_buf_addf(b, ",\"requests\":%" PRId64 "}", kv[k]->val);
    }
    leo_free(kv);
    map_clear(&keys);
    leo_buf_adds(b, "],\"series\":[");
    for (size_t bi = 0; bi < q->nb; bi++) {
        struct point *p = &q->pts[bi];
        struct agg bt;
        memset(&bt, 0, sizeof(bt));
        agg_sum(&bt, p);
        leo_buf_adds(b, bi ? ",{\"start\":\"" : "{\"start\":\"");
        add_iso(b, q->first + bi * len);
        leo_buf_addf(b, "\",\"ts\":%" PRIu64 ",", q->first + bi * len);
        add_agg_members(b, &bt);
        leo_buf_adds(b, ",\"models\":[");
        for (size_t i = 0; i < p->n; i++) {
            leo_buf_adds(b, i ? ",{\"model\":" : "{\"model\":");
            add_jstr(b, p->m[i]->model, strlen(p->m[i]->model));
            leo_buf_addch(b, ',');
            add_agg_members(b, p->m[i]);
            leo_buf_addch(b, '}');
        }
        leo_buf_adds(b, "]}");
    }
    leo_buf_adds(b, "]}");
}

static const char csv_header[] =
    "bucket_start,bucket_ts,model,requests,errors,cache_hits,cache_semantic_hits,cache_misses,cache_bypass,"
    "input_tokens,output_tokens,cost_usd,saved_cache_usd,saved_cache_tokens,saved_routing_usd,latency_mean_ms,"
    "latency_p50_ms,latency_p95_ms,latency_p99_ms\r\n";

static void render_csv(struct query *q, struct leo_buf *b)
{
    leo_buf_adds(b, csv_header);
    uint64_t len = gran_len[q->gran];
    for (size_t bi = 0; bi < q->nb; bi++) {
        struct point *p = &q->pts[bi];
        for (size_t i = 0; i < p->n; i++) {
            const struct agg *g = p->m[i];
            const int64_t *c = g->c;
            add_iso(b, q->first + bi * len);
            leo_buf_addf(b, ",%" PRIu64 ",", q->first + bi * len);
            leo_analytics_csv_field(b, g->model, strlen(g->model));
            leo_buf_addf(
                b, ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",",
                c[C_REQ], c[C_ERR], c[C_HIT], c[C_SEM], c[C_MISS], c[C_BYPASS], c[C_TIN], c[C_TOUT]);
            add_usd(b, c[C_USD]);
            leo_buf_addch(b, ',');
            add_usd(b, c[C_SVUSD]);
            leo_buf_addf(b, ",%" PRId64 ",", c[C_SVTOK]);
            add_usd(b, c[C_RTUSD]);
            leo_buf_addf(b, ",%.3f,%.3f,%.3f,%.3f\r\n",
                         c[C_REQ] > 0 ? (double)c[C_LATUS] / 1000.0 / (double)c[C_REQ] : 0.0,
                         leo_analytics_percentile(g->lat, LEO_AN_LAT_BUCKETS, 0.50),
                         leo_analytics_percentile(g->lat, LEO_AN_LAT_BUCKETS, 0.95),
                         leo_analytics_percentile(g->lat, LEO_AN_LAT_BUCKETS, 0.99));
        }
    }
}

static void query_free(struct query *q)
{
    for (size_t i = 0; i < q->nb; i++)
        point_free(&q->pts[i]);
    leo_free(q->pts);
    point_free(&q->tot);
    for (size_t i = 0; i < q->ntenants; i++)
        leo_free(q->tenants[i]);
    leo_free(q->tenants);
    leo_free(q->fetches);
    leo_free(q->model);
    leo_free(q->tenant);
    leo_free(q);
}

/* Answers the client (if still there) and frees q. */
static void query_finish(struct query *q)
{
    struct leo_gw_req *g = q->g;
    if (g) {
        g->on_close = NULL;
        g->data = NULL;
        q->g = NULL;
        if (q->too_big) {
            leo_gw_error(g, 400, "from", "invalid_parameter",
                         "the range covers %zu tenants x %zu buckets, more than %d: narrow it, name a tenant or use "
                         "a coarser granularity",
                         q->ntenants, q->nb, MAX_QUERY_FETCHES);
        } else if (q->failed) {
            leo_gw_error(g, 503, NULL, "analytics_unavailable", "analytics store (redis) unavailable, try again");
        } else {
            for (size_t i = 0; i < q->nb; i++)
                if (q->pts[i].n > 1)
                    qsort(q->pts[i].m, q->pts[i].n, sizeof(*q->pts[i].m), agg_cmp);
            if (q->tot.n > 1)
                qsort(q->tot.m, q->tot.n, sizeof(*q->tot.m), agg_cmp);
            struct leo_buf b = LEO_BUF_INIT;
            if (q->csv) {
                render_csv(q, &b);
                struct leo_http_header h[] = {
                    {LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/csv; charset=utf-8")},
                    {LEO_STR_LIT("Content-Disposition"), LEO_STR_LIT("attachment; filename=\"leo-analytics.csv\"")},
                    {LEO_STR_LIT("x-leo-request-id"), leo_str_c(g->id)},
                };
                g->status = 200;
                leo_http_respond(g->req, 200, h, 3, b.p, b.len);
            } else {
                render_json(q, &b);
                leo_gw_respond_json(g, 200, NULL, 0, b.p, b.len);
            }
            leo_buf_release(&b);
        }
    }
    query_free(q);
}

static void query_on_close(struct leo_gw_req *g, bool aborted)
{
    (void)aborted;
    struct query *q = g->data;
    if (q)
        q->g = NULL; /* the replies still due free it */
}

static void on_hgetall(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct fetch *f = ud;
    struct query *q = f->q;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY) {
        q->failed = true;
    } else if (!q->failed) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            redisReply *k = reply->element[i], *v = reply->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            merge_field(q, f->bucket, f->tenant, k->str, k->len, strtoll(v->str, NULL, 10));
        }
    }
    if (--q->outstanding == 0)
        query_finish(q);
}

/* Starts one HGETALL per tenant and bucket; finishes the query at once if nothing could be sent. */
static void fetch_redis(struct query *q)
{
    size_t n = q->ntenants * q->nb;
    if (n > MAX_QUERY_FETCHES) {
        q->too_big = true;
        query_finish(q);
        return;
    }
    q->fetches = leo_calloc(n ? n : 1, sizeof(*q->fetches));
    struct leo_buf k = LEO_BUF_INIT;
    q->outstanding = 1; /* held until every command is sent */
    for (size_t t = 0; t < q->ntenants && !q->failed; t++) {
        for (size_t bi = 0; bi < q->nb; bi++) {
            struct fetch *f = &q->fetches[t * q->nb + bi];
            *f = (struct fetch){q, bi, t};
            bucket_key(&k, q->gran, q->tenants[t], q->first + bi * gran_len[q->gran]);
            const char *argv[] = {"HGETALL", k.p};
            size_t argvlen[] = {7, k.len};
            if (leo_redis_command_argv(q->a->redis, on_hgetall, f, 2, argv, argvlen) != 0) {
                q->failed = true;
                break;
            }
            q->outstanding++;
        }
    }
    leo_buf_release(&k);
    if (--q->outstanding == 0)
        query_finish(q);
}

static void on_smembers(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct query *q = ud;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY) {
        q->failed = true;
        query_finish(q);
        return;
    }
    q->tenants = leo_calloc(reply->elements ? reply->elements : 1, sizeof(*q->tenants));
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING)
            q->tenants[q->ntenants++] = leo_strndup(reply->element[i]->str, reply->element[i]->len);
    fetch_redis(q);
}

static void fetch_local(struct query *q)
{
    struct leo_buf k = LEO_BUF_INIT;
    uint64_t now = wall_s();
    for (size_t t = 0; t < q->ntenants; t++) {
        for (size_t bi = 0; bi < q->nb; bi++) {
            bucket_key(&k, q->gran, q->tenants[t], q->first + bi * gran_len[q->gran]);
            struct ment *e = map_find(&q->a->store, k.p, k.len);
            if (e == NULL || (e->expire && e->expire <= now))
                continue;
            MAP_EACH(e->sub, f)
            merge_field(q, bi, t, f->key, f->len, f->val);
        }
    }
    leo_buf_release(&k);
    query_finish(q);
}

/* ---- request parameters ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes a query component ('+' is a space); false when malformed. */
static bool url_decode(struct leo_str s, struct leo_buf *out)
{
    for (size_t i = 0; i < s.len; i++) {
        char c = s.p[i];
        if (c == '+') {
            leo_buf_addch(out, ' ');
        } else if (c == '%') {
            if (i + 2 >= s.len)
                return false;
            int h = hexval(s.p[i + 1]), l = hexval(s.p[i + 2]);
            if (h < 0 || l < 0)
                return false;
            leo_buf_addch(out, (char)(h * 16 + l));
            i += 2;
        } else {
            leo_buf_addch(out, c);
        }
    }
    return true;
}

/* Unix seconds, or an RFC 3339 UTC time "YYYY-MM-DDTHH:MM:SSZ" (or "YYYY-MM-DDTHH:MMZ", or a date
 * "YYYY-MM-DD"). */
static bool parse_time(const char *s, uint64_t *out)
{
    size_t n = strlen(s);
    if (n == 0)
        return false;
    if (strspn(s, "0123456789") == n) {
        if (n > 12)
            return false;
        *out = strtoull(s, NULL, 10);
        return true;
    }
    unsigned y, mo, d, h = 0, mi = 0, sec = 0;
    int used = 0;
    if (sscanf(s, "%4u-%2u-%2u%n", &y, &mo, &d, &used) != 3 || used != 10)
        return false;
    const char *p = s + used;
    if (*p == 'T') {
        int u2 = 0;
        if (sscanf(p + 1, "%2u:%2u%n", &h, &mi, &u2) != 2 || u2 != 5)
            return false;
        p += 1 + u2;
        if (*p == ':') {
            int u3 = 0;
            if (sscanf(p + 1, "%2u%n", &sec, &u3) != 1 || u3 != 2)
                return false;
            p += 1 + u3;
        }
        if (*p != 'Z')
            return false;
        p++;
    }
    if (*p != '\0' || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = (int)y - 1900;
    tm.tm_mon = (int)mo - 1;
    tm.tm_mday = (int)d;
    tm.tm_hour = (int)h;
    tm.tm_min = (int)mi;
    tm.tm_sec = (int)sec;
    time_t t = timegm(&tm);
    if (t < 0)
        return false;
    *out = (uint64_t)t;
    return true;
}

void leo_route_analytics(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    static const char *const names[] = {"granularity", "from", "to", "model", "tenant", "format"};
    char *vals[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    struct leo_str qs = g->req->query;
    size_t pos = 0;
    while (pos < qs.len) {
        const char *amp = memchr(qs.p + pos, '&', qs.len - pos);
        size_t end = amp ? (size_t)(amp - qs.p) : qs.len;
        struct leo_str part = leo_str_n(qs.p + pos, end - pos);
        pos = end + 1;
        if (part.len == 0)
            continue;
        const char *eq = memchr(part.p, '=', part.len);
        struct leo_str name = leo_str_n(part.p, eq ? (size_t)(eq - part.p) : part.len);
        struct leo_str raw = eq ? leo_str_n(eq + 1, part.len - name.len - 1) : leo_str_n(NULL, 0);
        size_t which = sizeof(names) / sizeof(names[0]);
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            if (leo_str_eqc(name, names[i]))
                which = i;
        if (which == sizeof(names) / sizeof(names[0])) {
            leo_gw_error(g, 400, "query", "invalid_parameter", "unknown query parameter \"%.*s\"",
                         (int)(name.len > 64 ? 64 : name.len), name.p);
            return;
        }
        struct leo_buf v = LEO_BUF_INIT;
        if (raw.len > MAX_PARAM_LEN || !url_decode(raw, &v) || v.len == 0 || memchr(v.p, '\0', v.len) != NULL) {
            leo_buf_release(&v);
            leo_gw_error(g, 400, names[which], "invalid_parameter",
                         "query parameter \"%s\" is empty, malformed or too long", names[which]);
            return;
        }
        vals[which] = leo_arena_strndup(&g->req->arena, v.p, v.len);
        leo_buf_release(&v);
    }

    int gran = LEO_AN_HOUR;
    if (vals[0]) {
        gran = leo_analytics_gran_parse(vals[0], strlen(vals[0]));
        if (gran < 0) {
            leo_gw_error(g, 400, "granularity", "invalid_parameter",
                         "granularity \"%.64s\" is not one of minute, hour, day", vals[0]);
            return;
        }
    }
    bool csv = false;
    if (vals[5]) {
        if (strcmp(vals[5], "csv") == 0)
            csv = true;
        else if (strcmp(vals[5], "json") != 0) {
            leo_gw_error(g, 400, "format", "invalid_parameter", "format \"%.64s\" is not one of json, csv", vals[5]);
            return;
        }
    }
    uint64_t len = gran_len[gran];
    uint64_t to = wall_s(), from;
    if (vals[2] && !parse_time(vals[2], &to)) {
        leo_gw_error(g, 400, "to", "invalid_parameter",
                     "to \"%.64s\" is not a unix time in seconds or an RFC 3339 UTC time", vals[2]);
        return;
    }
    from = leo_analytics_bucket_start((enum leo_an_gran)gran, to) - (gran_default_buckets[gran] - 1) * len;
    if (vals[1] && !parse_time(vals[1], &from)) {
        leo_gw_error(g, 400, "from", "invalid_parameter",
                     "from \"%.64s\" is not a unix time in seconds or an RFC 3339 UTC time", vals[1]);
        return;
    }
    uint64_t first = leo_analytics_bucket_start((enum leo_an_gran)gran, from);
    uint64_t last = leo_analytics_bucket_start((enum leo_an_gran)gran, to);
    if (first > last) {
        leo_gw_error(g, 400, "from", "invalid_parameter", "from is after to");
        return;
    }
    uint64_t nb = (last - first) / len + 1;
    if (nb > MAX_QUERY_BUCKETS) {
        leo_gw_error(g, 400, "from", "invalid_parameter",
                     "the range spans %" PRIu64 " %s buckets, more than %d: narrow it or use a coarser granularity", nb,
                     gran_names[gran], MAX_QUERY_BUCKETS);
        return;
    }
    const char *own = g->key->tenant->id;
    if (vals[4] && !g->key->admin && strcmp(vals[4], own) != 0) {
        leo_gw_error(g, 403, "tenant", "tenant_forbidden",
                     "this key may only read the analytics of its own tenant; \"tenant\" needs an admin key");
        return;
    }
    struct leo_analytics *a = g->w->analytics;
    if (a == NULL) {
        leo_gw_error(g, 503, NULL, "analytics_unavailable", "analytics are not enabled on this worker");
        return;
    }

    struct query *q = leo_new(struct query);
    q->a = a;
    q->gran = (enum leo_an_gran)gran;
    q->first = first;
    q->nb = (size_t)nb;
    q->csv = csv;
    q->model = vals[3] ? leo_strdup(vals[3]) : NULL;
    q->pts = leo_calloc(q->nb, sizeof(*q->pts));
    const char *one = g->key->admin ? vals[4] : own;
    if (one) {
        q->tenant = leo_strdup(one);
        q->tenants = leo_calloc(1, sizeof(*q->tenants));
        q->tenants[0] = leo_strdup(one);
        q->ntenants = 1;
    }
    q->g = g;
    g->data = q;
    g->on_close = query_on_close;

    if (a->redis == NULL) {
        if (!one) {
            q->tenants = leo_calloc(a->store_tenants.n ? a->store_tenants.n : 1, sizeof(*q->tenants));
            MAP_EACH(&a->store_tenants, t)
            q->tenants[q->ntenants++] = leo_strndup(t->key, t->len);
        }
        fetch_local(q);
        return;
    }
    if (one) {
        fetch_redis(q);
        return;
    }
    const char *argv[] = {"SMEMBERS", "leo:an:tenants"};
    if (leo_redis_command_argv(a->redis, on_smembers, q, 2, argv, NULL) != 0) {
        q->failed = true;
        query_finish(q);
    }
}
