/*
 * router.c — deployment and key selection, cooldowns, circuit breakers, backoff, Retry-After parsing.
 *
 * State lives in two hash tables of individually allocated entries (so attempts may keep pointers to them):
 * deployments by id, provider keys by "provider name, 0x1f, key index". Entries are never removed while the
 * router lives; their number is bounded by the distinct deployments and keys the worker has ever been
 * configured with, which is small.
 */
#include "router.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"

#define EWMA_ALPHA 0.3
#define DAY_MS 86400000ull
/* The key index used for a provider without keys: its 429 cooldown still has to live somewhere. */
#define KEYLESS_INDEX ((size_t)-1)

enum breaker { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };
static const char *const breaker_names[] = {"closed", "open", "half-open"};

struct leo_router__dep {
    char *id;
    unsigned in_flight;
    double ewma_ttfb_ms;
    bool measured;
    unsigned consecutive_failures;
    enum breaker breaker;
    uint64_t open_until;     /* BREAKER_OPEN: when a probe may go */
    bool probe_in_flight;    /* BREAKER_HALF_OPEN */
    uint64_t probe_started;
};

struct leo_router__key {
    char *name;               /* provider \x1f index */
    uint64_t fingerprint;     /* of the key value, to notice a rotated key after a reload */
    uint64_t cooldown_until;  /* 429 */
    uint64_t exhausted_until; /* daily quota */
    bool disabled;            /* 401/403 */
    int disabled_status;
};

struct table {
    void **slots; /* entry pointers; the entry's first member is its name */
    size_t cap;   /* power of two */
    size_t n;
};

struct leo_router {
    uint64_t rng;
    struct table deps;
    struct table keys;
};

/* ---- small helpers ---- */

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* splitmix64: small, fast, good enough for load spreading and jitter. */
static uint64_t rng_next(struct leo_router *r)
{
    uint64_t z = (r->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) without modulo bias; n > 0. */
static uint64_t rng_below(struct leo_router *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = rng_next(r);
    while (x >= limit);
    return x % n;
}

static const char *entry_name(void *e)
{
    return *(char **)e;
}

static void **table_slot(struct table *t, const char *name, size_t len)
{
    size_t mask = t->cap - 1;
    for (size_t i = fnv1a(name, len) & mask;; i = (i + 1) & mask) {
        void *e = t->slots[i];
        if (e == NULL)
            return &t->slots[i];
        const char *en = entry_name(e);
        if (strlen(en) == len && memcmp(en, name, len) == 0)
            return &t->slots[i];
    }
}

static void table_grow(struct table *t)
{
    struct table old = *t;
    t->cap = old.cap ? old.cap * 2 : 16;
    t->slots = leo_calloc(t->cap, sizeof(void *));
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i]) {
            const char *n = entry_name(old.slots[i]);
            *table_slot(t, n, strlen(n)) = old.slots[i];
        }
    leo_free(old.slots);
}

static void *table_find(const struct table *t, const char *name, size_t len)
{
    if (t->cap == 0)
        return NULL;
    return *table_slot((struct table *)t, name, len);
}

/* Inserts e (whose name is not yet present). */
static void table_insert(struct table *t, void *e)
{
    if ((t->n + 1) * 2 > t->cap)
        table_grow(t);
    const char *n = entry_name(e);
    *table_slot(t, n, strlen(n)) = e;
    t->n++;
}

static struct leo_router__dep *dep_state(struct leo_router *r, const struct leo_deployment *d)
{
    struct leo_router__dep *s = table_find(&r->deps, d->id, strlen(d->id));
    if (s == NULL) {
        s = leo_new(struct leo_router__dep);
        s->id = leo_strdup(d->id);
        table_insert(&r->deps, s);
    }
    return s;
}

/* Builds the key-table name into buf (at least 160 bytes for a 128-byte provider name). */
static size_t key_name(char *buf, size_t size, const struct leo_provider *p, size_t idx)
{
    int n = idx == KEYLESS_INDEX ? snprintf(buf, size, "%s\x1f-", p->name)
                                 : snprintf(buf, size, "%s\x1f%zu", p->name, idx);
    return n < 0 ? 0 : ((size_t)n < size ? (size_t)n : size - 1);
}

static uint64_t key_fingerprint(const struct leo_provider *p, size_t idx)
{
    if (idx == KEYLESS_INDEX || p->keys[idx].value == NULL)
        return 0;
    return fnv1a(p->keys[idx].value, strlen(p->keys[idx].value));
}

static const struct leo_router__key *key_peek(const struct leo_router *r, const struct leo_provider *p, size_t idx)
{
    char name[512];
    size_t len = key_name(name, sizeof(name), p, idx);
    const struct leo_router__key *k = table_find(&r->keys, name, len);
    if (k && k->fingerprint != key_fingerprint(p, idx))
        return NULL; /* the key was rotated: its old state no longer applies */
    return k;
}

static struct leo_router__key *key_state(struct leo_router *r, const struct leo_provider *p, size_t idx)
{
    char name[512];
    size_t len = key_name(name, sizeof(name), p, idx);
    struct leo_router__key *k = table_find(&r->keys, name, len);
    uint64_t fp = key_fingerprint(p, idx);
    if (k == NULL) {
        k = leo_new(struct leo_router__key);
        k->name = leo_strndup(name, len);
        k->fingerprint = fp;
        table_insert(&r->keys, k);
    } else if (k->fingerprint != fp) {
        char *keep = k->name;
        memset(k, 0, sizeof(*k));
        k->name = keep;
        k->fingerprint = fp;
    }
    return k;
}

/* When a key (or the keyless pseudo-key) can be used again: 0 = now, UINT64_MAX = never. */
static uint64_t key_ready_at(const struct leo_router__key *k, uint64_t now_ms)
{
    if (k == NULL)
        return 0;
    if (k->disabled)
        return UINT64_MAX;
    uint64_t t = k->cooldown_until > k->exhausted_until ? k->cooldown_until : k->exhausted_until;
    return t > now_ms ? t : 0;
}

/* The wall clock in Unix ms. The one clock the router reads: a forced cooldown comes from the control plane as
 * an absolute time (the same for every gateway), and the callers' now_ms is a monotonic clock with another
 * origin. */
static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* How long the control plane's forced cooldown of key idx still lasts, in ms (0: none or over). */
static uint64_t forced_left_ms(const struct leo_provider *p, size_t idx)
{
    if (idx == KEYLESS_INDEX || p->keys[idx].forced_until_ms == 0)
        return 0;
    uint64_t wall = wall_ms();
    return p->keys[idx].forced_until_ms > wall ? p->keys[idx].forced_until_ms - wall : 0;
}

/* key_ready_at, and the forced cooldown: a forced key is skipped until its time passes, whatever its state. */
static uint64_t key_usable_at(const struct leo_router *r, const struct leo_provider *p, size_t idx, uint64_t now_ms)
{
    uint64_t t = key_ready_at(key_peek(r, p, idx), now_ms);
    uint64_t forced = forced_left_ms(p, idx);
    if (forced && t != UINT64_MAX && now_ms + forced > t)
        t = now_ms + forced;
    return t;
}

static void metric_label1(struct leo_buf *b, const char *name, const char *value)
{
    leo_buf_reset(b);
    leo_buf_addf(b, "%s=\"", name);
    leo_metrics_label_value(b, value, strlen(value));
    leo_buf_addch(b, '"');
}

static void breaker_set(struct leo_router__dep *s, enum breaker to)
{
    if (s->breaker == to)
        return;
    s->breaker = to;
    struct leo_buf l = LEO_BUF_INIT;
    metric_label1(&l, "deployment", s->id);
    leo_metrics_gauge_set("leo_breaker_open", l.p, to == BREAKER_CLOSED ? 0 : 1);
    leo_buf_adds(&l, ",to=\"");
    leo_buf_adds(&l, breaker_names[to]);
    leo_buf_addch(&l, '"');
    leo_metrics_add("leo_breaker_transitions_total", l.p, 1);
    leo_buf_release(&l);
    if (to == BREAKER_OPEN)
        leo_warn("deployment \"%s\" breaker opened after %u consecutive failures", s->id, s->consecutive_failures);
    else
        leo_info("deployment \"%s\" breaker %s", s->id, breaker_names[to]);
}

/* ---- lifecycle ---- */

struct leo_router *leo_router_new(uint64_t seed)
{
    struct leo_router *r = leo_new(struct leo_router);
    r->rng = seed;
    return r;
}

void leo_router_free(struct leo_router *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->deps.cap; i++)
        if (r->deps.slots[i]) {
            struct leo_router__dep *s = r->deps.slots[i];
            leo_free(s->id);
            leo_free(s);
        }
    for (size_t i = 0; i < r->keys.cap; i++)
        if (r->keys.slots[i]) {
            struct leo_router__key *k = r->keys.slots[i];
            leo_free(k->name);
            leo_free(k);
        }
    leo_free(r->deps.slots);
    leo_free(r->keys.slots);
    leo_free(r);
}

void leo_router_metrics_describe(void)
{
    leo_metrics_describe("leo_route_fallbacks_total", LEO_METRIC_COUNTER,
                         "Attempts sent to a different deployment than the request's previous attempt, by model.");
    leo_metrics_describe("leo_route_retries_total", LEO_METRIC_COUNTER,
                         "Attempts that retried the deployment of the request's previous attempt, by model.");
    leo_metrics_describe("leo_key_cooldowns_total", LEO_METRIC_COUNTER,
                         "Provider keys taken out of rotation, by provider and reason.");
    leo_metrics_describe("leo_breaker_transitions_total", LEO_METRIC_COUNTER,
                         "Circuit breaker state changes, by deployment and new state.");
    leo_metrics_describe("leo_route_slow_calls_total", LEO_METRIC_COUNTER,
                         "Successful attempts slower to first byte than routing.breaker_slow_ms (counted as breaker "
                         "failures), by deployment.");
    leo_metrics_describe("leo_route_hedges_total", LEO_METRIC_COUNTER,
                         "Hedged requests (a second attempt after hedge_after_ms), by model and by whether the hedge "
                         "won or lost.");
    leo_metrics_describe("leo_route_override_skips_total", LEO_METRIC_COUNTER,
                         "Deployments passed over by a routing decision because of the control plane: by model and "
                         "reason (deployment_disabled: a routing override; forced_cooldown: every key of the "
                         "deployment is under a forced cooldown).");
    leo_metrics_describe("leo_breaker_open", LEO_METRIC_GAUGE,
                         "1 while a deployment's breaker is open or half-open in a worker (summed over workers).");
}

/* ---- planning ---- */

void leo_route_plan_init(struct leo_route_plan *plan, const struct leo_config *cfg, const struct leo_model *model,
                         uint64_t input_tokens, uint64_t now_ms)
{
    memset(plan, 0, sizeof(*plan));
    plan->cfg = cfg;
    plan->model = model;
    plan->input_tokens = input_tokens;
    plan->output_tokens = LEO_ROUTE_OUTPUT_GUESS;
    plan->max_attempts = model->max_attempts ? model->max_attempts : cfg->routing.max_attempts;
    if (plan->max_attempts == 0)
        plan->max_attempts = 1;
    plan->deadline_ms = cfg->routing.deadline_ms ? now_ms + cfg->routing.deadline_ms : 0;
    plan->pin = -1;
    plan->allowed = UINT64_MAX;
    plan->_last = -1;
}

/* A deployment this plan may never use: not allowed to the key, not the pinned one, or refused by its own limits. */
static bool excluded(const struct leo_route_plan *plan, size_t i)
{
    return !(plan->allowed & (1ull << i)) || (plan->pin >= 0 && (size_t)plan->pin != i) ||
           (plan->_skipped & (1ull << i));
}

int leo_route_find_deployment(const struct leo_model *model, struct leo_str name)
{
    int by_provider = -1, nprovider = 0;
    for (size_t i = 0; i < model->ndeployments && i < LEO_ROUTE_MAX_DEPLOYMENTS; i++) {
        const struct leo_deployment *d = &model->deployments[i];
        if (leo_str_eqc(name, d->id))
            return (int)i;
        if (leo_str_eqc(name, d->provider->name)) {
            by_provider = (int)i;
            nprovider++;
        }
    }
    return nprovider == 1 ? by_provider : -1;
}

/* Availability of one deployment, ignoring the plan's tried-set. */
struct cand {
    struct leo_router__dep *s;
    bool eligible;
    bool probe;        /* admitting it makes it the half-open probe */
    uint64_t ready_at; /* when not eligible: when it may become so (UINT64_MAX = unknown/never) */
    bool forced;       /* every key is under the control plane's forced cooldown */
};

static void assess(struct leo_router *r, const struct leo_deployment *d, uint64_t now_ms, struct cand *c)
{
    struct leo_router__dep *s = dep_state(r, d);
    c->s = s;
    c->eligible = false;
    c->probe = false;
    c->forced = false;
    if (d->disabled) { /* the control plane's override: recovers only with another snapshot */
        c->ready_at = UINT64_MAX;
        return;
    }
    uint64_t breaker_at = 0;
    switch (s->breaker) {
    case BREAKER_CLOSED:
        break;
    case BREAKER_OPEN:
        if (now_ms >= s->open_until)
            c->probe = true;
        else
            breaker_at = s->open_until;
        break;
    case BREAKER_HALF_OPEN:
        /* A probe that outlived every timeout of its provider was lost (its end never reported). */
        if (!s->probe_in_flight || now_ms - s->probe_started > d->provider->total_timeout_ms)
            c->probe = true;
        else
            breaker_at = UINT64_MAX; /* recovers when the probe ends, at no known time */
        break;
    }
    const struct leo_provider *p = d->provider;
    uint64_t key_at;
    if (p->nkeys == 0) {
        key_at = key_ready_at(key_peek(r, p, KEYLESS_INDEX), now_ms);
    } else {
        key_at = UINT64_MAX;
        bool all_forced = true;
        for (size_t i = 0; i < p->nkeys && key_at; i++) {
            uint64_t t = key_usable_at(r, p, i, now_ms);
            all_forced = all_forced && forced_left_ms(p, i) > 0;
            if (t < key_at)
                key_at = t;
        }
        c->forced = all_forced;
    }
    c->ready_at = breaker_at > key_at ? breaker_at : key_at;
    c->eligible = c->ready_at == 0;
}

static double deployment_cost(const struct leo_route_plan *plan, const struct leo_deployment *d)
{
    const struct leo_price *p = leo_config_price(plan->cfg, leo_str_c(d->model));
    return p ? leo_price_cost(p, plan->input_tokens, plan->output_tokens) : -1;
}

/* Picks one of idx[0..n) (indexes into the model's deployments, in configuration order) by strategy. */
static size_t choose(struct leo_router *r, const struct leo_route_plan *plan, const struct cand *cands,
                     const size_t *idx, size_t n)
{
    const struct leo_deployment *ds = plan->model->deployments;
    size_t best = idx[0];
    switch (plan->model->strategy) {
    case LEO_STRATEGY_PRIORITY:
        return idx[0];
    case LEO_STRATEGY_WEIGHTED: {
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++)
            total += ds[idx[i]].weight;
        if (total == 0)
            return idx[0]; /* only weight-0 standbys left: configuration order */
        uint64_t x = rng_below(r, total);
        for (size_t i = 0; i < n; i++) {
            if (x < ds[idx[i]].weight)
                return idx[i];
            x -= ds[idx[i]].weight;
        }
        return idx[n - 1];
    }
    case LEO_STRATEGY_LEAST_BUSY:
        for (size_t i = 1; i < n; i++) {
            const struct cand *a = &cands[idx[i]], *b = &cands[best];
            if (a->s->in_flight < b->s->in_flight ||
                (a->s->in_flight == b->s->in_flight && ds[idx[i]].weight > ds[best].weight))
                best = idx[i];
        }
        return best;
    case LEO_STRATEGY_LOWEST_LATENCY:
        for (size_t i = 0; i < n; i++)
            if (!cands[idx[i]].s->measured)
                return idx[i]; /* unmeasured first, so every deployment gets measured */
        for (size_t i = 1; i < n; i++)
            if (cands[idx[i]].s->ewma_ttfb_ms < cands[best].s->ewma_ttfb_ms)
                best = idx[i];
        return best;
    case LEO_STRATEGY_LOWEST_COST: {
        double best_cost = deployment_cost(plan, &ds[best]);
        for (size_t i = 1; i < n; i++) {
            double c = deployment_cost(plan, &ds[idx[i]]);
            /* an unpriced deployment (-1) ranks after every priced one */
            bool better = best_cost < 0 ? c >= 0 : (c >= 0 && c < best_cost);
            if (better) {
                best = idx[i];
                best_cost = c;
            }
        }
        return best;
    }
    }
    return best;
}

/* Picks a usable key by weight; the deployment is known to have one. */
static size_t choose_key(struct leo_router *r, const struct leo_provider *p, uint64_t now_ms)
{
    uint64_t total = 0;
    size_t first = SIZE_MAX;
    for (size_t i = 0; i < p->nkeys; i++)
        if (key_usable_at(r, p, i, now_ms) == 0) {
            total += p->keys[i].weight;
            if (first == SIZE_MAX)
                first = i;
        }
    if (total == 0)
        return first;
    uint64_t x = rng_below(r, total);
    for (size_t i = 0; i < p->nkeys; i++) {
        if (key_usable_at(r, p, i, now_ms) != 0)
            continue;
        if (x < p->keys[i].weight)
            return i;
        x -= p->keys[i].weight;
    }
    return first;
}

int leo_router_next(struct leo_router *r, struct leo_route_plan *plan, uint64_t now_ms,
                    struct leo_route_attempt *out, uint64_t *retry_in_ms)
{
    uint64_t dummy;
    if (retry_in_ms == NULL)
        retry_in_ms = &dummy;
    *retry_in_ms = 0;
    memset(out, 0, sizeof(*out));
    if (plan->attempts >= plan->max_attempts || (plan->deadline_ms && now_ms >= plan->deadline_ms))
        return LEO_ENOTFOUND;

    const struct leo_model *m = plan->model;
    size_t n = m->ndeployments < LEO_ROUTE_MAX_DEPLOYMENTS ? m->ndeployments : LEO_ROUTE_MAX_DEPLOYMENTS;
    struct cand cands[LEO_ROUTE_MAX_DEPLOYMENTS];
    size_t neligible = 0, only = 0;
    uint64_t soonest = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        if (excluded(plan, i)) {
            cands[i] = (struct cand){.eligible = false, .ready_at = UINT64_MAX};
            continue;
        }
        assess(r, &m->deployments[i], now_ms, &cands[i]);
        if (m->deployments[i].disabled || cands[i].forced) {
            struct leo_buf l = LEO_BUF_INIT;
            metric_label1(&l, "model", m->name);
            leo_buf_adds(&l, m->deployments[i].disabled ? ",reason=\"deployment_disabled\""
                                                        : ",reason=\"forced_cooldown\"");
            leo_metrics_add("leo_route_override_skips_total", l.p, 1);
            leo_buf_release(&l);
        }
        if (cands[i].eligible) {
            neligible++;
            only = i;
        } else if (cands[i].ready_at < soonest) {
            soonest = cands[i].ready_at;
        }
    }

    /* Walk the priority groups; the first with an untried eligible deployment decides. */
    size_t idx[LEO_ROUTE_MAX_DEPLOYMENTS], nidx = 0, chosen = SIZE_MAX;
    for (size_t g = 0; g < n && chosen == SIZE_MAX;) {
        size_t end = g;
        nidx = 0;
        while (end < n && m->deployments[end].priority == m->deployments[g].priority) {
            if (cands[end].eligible && !(plan->_tried & (1ull << end)))
                idx[nidx++] = end;
            end++;
        }
        if (nidx)
            chosen = choose(r, plan, cands, idx, nidx);
        g = end;
    }
    /* Retry rule: a deployment already tried goes again only when it is the only eligible one. */
    if (chosen == SIZE_MAX && neligible == 1)
        chosen = only;

    if (chosen == SIZE_MAX) {
        if (neligible == 0 && soonest != UINT64_MAX && soonest > now_ms &&
            (plan->deadline_ms == 0 || soonest < plan->deadline_ms))
            *retry_in_ms = soonest - now_ms;
        return LEO_ENOTFOUND;
    }

    const struct leo_deployment *d = &m->deployments[chosen];
    struct cand *c = &cands[chosen];
    out->deployment = d;
    out->deployment_index = chosen;
    out->attempt_no = ++plan->attempts;
    out->_cfg = plan->cfg;
    out->_model = m;
    out->_dep = c->s;
    out->_prev_last = plan->_last;
    if (d->provider->nkeys) {
        out->key_index = choose_key(r, d->provider, now_ms);
        out->key = &d->provider->keys[out->key_index];
        out->_key = key_state(r, d->provider, out->key_index);
    } else {
        out->_key = key_state(r, d->provider, KEYLESS_INDEX);
    }
    if (c->probe) {
        breaker_set(c->s, BREAKER_HALF_OPEN);
        c->s->probe_in_flight = true;
        c->s->probe_started = now_ms;
        out->probe = true;
    }
    if (plan->_last >= 0) {
        struct leo_buf l = LEO_BUF_INIT;
        metric_label1(&l, "model", m->name);
        if ((size_t)plan->_last == chosen) {
            out->retry = true;
            out->backoff_ms = leo_router_backoff_ms(r, plan->cfg, out->attempt_no - 1);
            leo_metrics_add("leo_route_retries_total", l.p, 1);
        } else {
            out->fallback = true;
            leo_metrics_add("leo_route_fallbacks_total", l.p, 1);
        }
        leo_buf_release(&l);
    }
    plan->_tried |= 1ull << chosen;
    plan->_last = (int)chosen;
    return 0;
}

int leo_router_next_other(struct leo_router *r, struct leo_route_plan *plan, uint64_t now_ms,
                          struct leo_route_attempt *out)
{
    uint64_t keep = plan->_skipped;
    if (plan->_last >= 0)
        plan->_skipped |= 1ull << plan->_last; /* for this choice only */
    int rc = leo_router_next(r, plan, now_ms, out, NULL);
    plan->_skipped = keep;
    return rc;
}

void leo_router_skip(struct leo_router *r, struct leo_route_plan *plan, struct leo_route_attempt *a,
                     uint64_t now_ms)
{
    if (a->_dep == NULL || a->_ended || a->_begun)
        return;
    plan->_skipped |= 1ull << a->deployment_index;
    if (plan->attempts)
        plan->attempts--;
    plan->_last = a->_prev_last;
    leo_router_end(r, a, LEO_ROUTE_CANCELLED, NULL, now_ms);
}

void leo_router_begin(struct leo_router *r, struct leo_route_attempt *a, uint64_t now_ms)
{
    if (a->_dep == NULL || a->_begun || a->_ended)
        return;
    a->_begun = true;
    a->_dep->in_flight++;
}

/* "The quota is gone for the day" rather than "slow down": OpenAI's insufficient_quota / billing messages,
 * Anthropic's credit balance, Gemini's per-day quota metrics. Case-insensitive substring match. */
static bool quota_exhausted(struct leo_str msg)
{
    static const char *const needles[] = {"insufficient_quota", "billing", "credit balance", "per day",
                                          "perday", "daily", NULL};
    for (const char *const *n = needles; *n; n++) {
        size_t nl = strlen(*n);
        for (size_t i = 0; i + nl <= msg.len; i++)
            if (strncasecmp(msg.p + i, *n, nl) == 0)
                return true;
    }
    return false;
}

static void count_cooldown(const struct leo_deployment *d, const char *reason)
{
    struct leo_buf l = LEO_BUF_INIT;
    metric_label1(&l, "provider", d->provider->name);
    leo_buf_addf(&l, ",reason=\"%s\"", reason);
    leo_metrics_add("leo_key_cooldowns_total", l.p, 1);
    leo_buf_release(&l);
}

static void on_rate_limited(const struct leo_route_attempt *a, const struct leo_config *cfg,
                            const struct leo_route_feedback *fb, uint64_t now_ms)
{
    struct leo_router__key *k = a->_key;
    const char *who = a->key ? a->key->env : "(no key)";
    uint64_t wait = fb && fb->retry_after_ms ? fb->retry_after_ms : cfg->routing.key_cooldown_ms;
    if (fb && quota_exhausted(fb->message)) {
        uint64_t unix_ms = fb->now_unix_ms ? fb->now_unix_ms : (uint64_t)time(NULL) * 1000;
        uint64_t to_midnight = DAY_MS - unix_ms % DAY_MS;
        if (to_midnight < wait)
            to_midnight = wait;
        k->exhausted_until = now_ms + to_midnight;
        leo_warn("provider \"%s\" key %s: quota exhausted, unused for %llu ms (until the next UTC midnight)",
                 a->deployment->provider->name, who, (unsigned long long)to_midnight);
        count_cooldown(a->deployment, "quota_exhausted");
        return;
    }
    if (now_ms + wait > k->cooldown_until)
        k->cooldown_until = now_ms + wait;
    leo_info("provider \"%s\" key %s: rate limited, cooling down for %llu ms", a->deployment->provider->name, who,
             (unsigned long long)wait);
    count_cooldown(a->deployment, "rate_limited");
}

static void on_failure(const struct leo_config *cfg, struct leo_route_attempt *a, uint64_t now_ms)
{
    struct leo_router__dep *s = a->_dep;
    s->consecutive_failures++;
    bool reopen = false;
    if (s->breaker == BREAKER_HALF_OPEN && a->probe)
        reopen = true;
    else if (s->breaker == BREAKER_CLOSED && cfg->routing.breaker_failures &&
             s->consecutive_failures >= cfg->routing.breaker_failures)
        reopen = true;
    if (reopen) {
        s->open_until = now_ms + cfg->routing.breaker_open_ms;
        s->probe_in_flight = false;
        breaker_set(s, BREAKER_OPEN);
    }
}

void leo_router_end(struct leo_router *r, struct leo_route_attempt *a, enum leo_route_outcome outcome,
                    const struct leo_route_feedback *fb, uint64_t now_ms)
{
    (void)r;
    if (a->_dep == NULL || a->_ended)
        return;
    a->_ended = true;
    struct leo_router__dep *s = a->_dep;
    if (a->_begun && s->in_flight)
        s->in_flight--;
    bool probe_done = a->probe && s->breaker == BREAKER_HALF_OPEN && s->probe_in_flight;

    switch (outcome) {
    case LEO_ROUTE_OK:
        if (fb && fb->ttfb_ms) {
            s->ewma_ttfb_ms = s->measured ? EWMA_ALPHA * (double)fb->ttfb_ms + (1 - EWMA_ALPHA) * s->ewma_ttfb_ms
                                          : (double)fb->ttfb_ms;
            s->measured = true;
        }
        if (fb && a->_cfg->routing.breaker_slow_ms && fb->ttfb_ms > a->_cfg->routing.breaker_slow_ms) {
            /* a good answer, but too slow: the breaker counts it as a failure (a slow probe reopens) */
            struct leo_buf l = LEO_BUF_INIT;
            metric_label1(&l, "deployment", s->id);
            leo_metrics_add("leo_route_slow_calls_total", l.p, 1);
            leo_buf_release(&l);
            on_failure(a->_cfg, a, now_ms);
            if (probe_done && s->breaker == BREAKER_HALF_OPEN)
                s->probe_in_flight = false;
            return;
        }
        s->consecutive_failures = 0;
        if (probe_done) {
            s->probe_in_flight = false;
            breaker_set(s, BREAKER_CLOSED);
        }
        return;
    case LEO_ROUTE_SERVER_ERROR:
    case LEO_ROUTE_CONNECT_ERROR:
    case LEO_ROUTE_TIMEOUT:
        on_failure(a->_cfg, a, now_ms);
        return;
    case LEO_ROUTE_RATE_LIMITED:
        on_rate_limited(a, a->_cfg, fb, now_ms);
        break;
    case LEO_ROUTE_AUTH_FAILED:
        if (a->key) {
            a->_key->disabled = true;
            a->_key->disabled_status = fb && fb->status ? fb->status : 401;
            leo_warn("provider \"%s\" rejected the key from %s (HTTP %d): key disabled until it changes",
                     a->deployment->provider->name, a->key->env, a->_key->disabled_status);
            count_cooldown(a->deployment, "auth_failed");
        } else {
            leo_warn("provider \"%s\" answered HTTP %d but has no key configured", a->deployment->provider->name,
                     fb && fb->status ? fb->status : 401);
        }
        break;
    case LEO_ROUTE_CLIENT_ERROR:
    case LEO_ROUTE_CANCELLED:
        break;
    }
    /* Outcomes that say nothing about the deployment's health leave a half-open breaker waiting for a
     * conclusive probe: the next request may probe. */
    if (probe_done)
        s->probe_in_flight = false;
}

bool leo_route_retryable(enum leo_route_outcome outcome)
{
    switch (outcome) {
    case LEO_ROUTE_RATE_LIMITED:
    case LEO_ROUTE_AUTH_FAILED:
    case LEO_ROUTE_SERVER_ERROR:
    case LEO_ROUTE_CONNECT_ERROR:
    case LEO_ROUTE_TIMEOUT:
        return true;
    case LEO_ROUTE_OK:
    case LEO_ROUTE_CLIENT_ERROR:
    case LEO_ROUTE_CANCELLED:
        return false;
    }
    return false;
}

const char *leo_route_outcome_name(enum leo_route_outcome outcome)
{
    static const char *const names[] = {
        [LEO_ROUTE_OK] = "ok",
        [LEO_ROUTE_RATE_LIMITED] = "rate_limited",
        [LEO_ROUTE_AUTH_FAILED] = "auth_failed",
        [LEO_ROUTE_SERVER_ERROR] = "server_error",
        [LEO_ROUTE_CONNECT_ERROR] = "connect_error",
        [LEO_ROUTE_TIMEOUT] = "timeout",
        [LEO_ROUTE_CLIENT_ERROR] = "client_error",
        [LEO_ROUTE_CANCELLED] = "cancelled",
    };
    return (unsigned)outcome < sizeof(names) / sizeof(names[0]) ? names[outcome] : "unknown";
}

uint64_t leo_router_backoff_ms(struct leo_router *r, const struct leo_config *cfg, unsigned attempt_no)
{
    uint64_t base = cfg->routing.backoff_base_ms, cap = cfg->routing.backoff_max_ms;
    if (base == 0 || attempt_no == 0)
        return 0;
    uint64_t hi = base;
    for (unsigned i = 1; i < attempt_no && hi < cap; i++)
        hi *= 2;
    if (hi > cap)
        hi = cap;
    uint64_t lo = hi / 2;
    return lo + rng_below(r, hi - lo + 1);
}

/* ---- Retry-After and reset headers ---- */

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* Reads exactly n digits at *s into *v. */
static bool digits(struct leo_str *s, size_t n, unsigned *v)
{
    if (s->len < n)
        return false;
    unsigned x = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s->p[i]))
            return false;
        x = x * 10 + (unsigned)(s->p[i] - '0');
    }
    *v = x;
    s->p += n;
    s->len -= n;
    return true;
}

static bool expect(struct leo_str *s, char c)
{
    if (s->len == 0 || s->p[0] != c)
        return false;
    s->p++;
    s->len--;
    return true;
}

/* A decimal number with an optional fraction ("1", "1.5"); returns false when none is there. */
static bool number(struct leo_str *s, double *v)
{
    double x = 0, scale = 0;
    size_t i = 0;
    bool any = false;
    for (; i < s->len; i++) {
        char c = s->p[i];
        if (isdigit((unsigned char)c)) {
            any = true;
            if (scale) {
                x += (c - '0') * scale;
                scale /= 10;
            } else {
                x = x * 10 + (c - '0');
            }
        } else if (c == '.' && !scale) {
            scale = 0.1;
        } else {
            break;
        }
    }
    if (!any)
        return false;
    *v = x;
    s->p += i;
    s->len -= i;
    return true;
}

static uint64_t clamp_ms(double ms)
{
    if (!(ms > 0))
        return 0;
    if (ms > 1e15)
        return (uint64_t)1e15;
    return (uint64_t)(ms + 0.5);
}

/* IMF-fixdate, the HTTP date format: "Sun, 06 Nov 1994 08:49:37 GMT". */
static bool http_date(struct leo_str s, int64_t *unix_ms)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    unsigned day, year, hh, mm, ss, mon = 0;
    if (s.len < 29 || s.p[3] != ',' || s.p[4] != ' ')
        return false;
    s.p += 5;
    s.len -= 5;
    if (!digits(&s, 2, &day) || !expect(&s, ' ') || s.len < 4)
        return false;
    for (unsigned i = 0; i < 12; i++)
        if (memcmp(s.p, months + 3 * i, 3) == 0)
            mon = i + 1;
    s.p += 3;
    s.len -= 3;
    if (!mon || !expect(&s, ' ') || !digits(&s, 4, &year) || !expect(&s, ' ') || !digits(&s, 2, &hh) ||
        !expect(&s, ':') || !digits(&s, 2, &mm) || !expect(&s, ':') || !digits(&s, 2, &ss) ||
        !leo_str_eqc(s, " GMT"))
        return false;
    if (day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60)
        return false;
    *unix_ms = (days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss) * 1000;
    return true;
}

/* RFC 3339: "2024-05-01T12:00:30Z", "2024-05-01T12:00:30.250Z", "2024-05-01T14:00:30+02:00". */
static bool rfc3339(struct leo_str s, int64_t *unix_ms)
{
    unsigned y, mo, d, hh, mm, ss;
    if (!digits(&s, 4, &y) || !expect(&s, '-') || !digits(&s, 2, &mo) || !expect(&s, '-') || !digits(&s, 2, &d))
        return false;
    if (s.len == 0 || (s.p[0] != 'T' && s.p[0] != 't' && s.p[0] != ' '))
        return false;
    s.p++;
    s.len--;
    if (!digits(&s, 2, &hh) || !expect(&s, ':') || !digits(&s, 2, &mm) || !expect(&s, ':') || !digits(&s, 2, &ss))
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60)
        return false;
    double frac = 0, scale = 0.1;
    if (expect(&s, '.')) {
        if (s.len == 0 || !isdigit((unsigned char)s.p[0]))
            return false;
        while (s.len && isdigit((unsigned char)s.p[0])) {
            frac += (s.p[0] - '0') * scale;
            scale /= 10;
            s.p++;
            s.len--;
        }
    }
    int64_t offset_s = 0;
    if (s.len == 1 && (s.p[0] == 'Z' || s.p[0] == 'z')) {
        offset_s = 0;
    } else if (s.len == 6 && (s.p[0] == '+' || s.p[0] == '-')) {
        int sign = s.p[0] == '-' ? -1 : 1;
        unsigned oh, om;
        s.p++;
        s.len--;
        if (!digits(&s, 2, &oh) || !expect(&s, ':') || !digits(&s, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_s = sign * (int64_t)(oh * 3600 + om * 60);
    } else {
        return false;
    }
    int64_t secs = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mm * 60 + ss - offset_s;
    *unix_ms = secs * 1000 + (int64_t)(frac * 1000 + 0.5);
    return true;
}

/* OpenAI's reset durations: "6ms", "1s", "1.5s", "1m30s", "2h", "6m0s"; a bare number is seconds. */
static bool duration(struct leo_str s, uint64_t *ms)
{
    double total = 0;
    bool any = false;
    while (s.len) {
        double v;
        if (!number(&s, &v))
            return false;
        double unit;
        if (s.len >= 2 && s.p[0] == 'm' && s.p[1] == 's') {
            unit = 1;
            s.p += 2;
            s.len -= 2;
        } else if (s.len && (s.p[0] == 'h' || s.p[0] == 'm' || s.p[0] == 's')) {
            unit = s.p[0] == 'h' ? 3600000 : s.p[0] == 'm' ? 60000 : 1000;
            s.p++;
            s.len--;
        } else if (s.len == 0 && !any) {
            unit = 1000;
        } else {
            return false;
        }
        total += v * unit;
        any = true;
    }
    if (!any)
        return false;
    *ms = clamp_ms(total);
    return true;
}

static uint64_t until(int64_t t_ms, uint64_t now_unix_ms)
{
    return t_ms > (int64_t)now_unix_ms ? (uint64_t)(t_ms - (int64_t)now_unix_ms) : 0;
}

enum reset_form { FORM_RETRY_AFTER, FORM_MS, FORM_DURATION, FORM_RFC3339 };

static const struct {
    const char *name;
    enum reset_form form;
} reset_headers[] = {
    {"retry-after", FORM_RETRY_AFTER},
    {"retry-after-ms", FORM_MS},
    {"x-ratelimit-reset-requests", FORM_DURATION},
    {"x-ratelimit-reset-tokens", FORM_DURATION},
    {"anthropic-ratelimit-requests-reset", FORM_RFC3339},
    {"anthropic-ratelimit-tokens-reset", FORM_RFC3339},
    {"anthropic-ratelimit-input-tokens-reset", FORM_RFC3339},
    {"anthropic-ratelimit-output-tokens-reset", FORM_RFC3339},
};

uint64_t leo_retry_after_ms(const struct leo_http_header *h, size_t n, uint64_t now_unix_ms)
{
    uint64_t best = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < sizeof(reset_headers) / sizeof(reset_headers[0]); j++) {
            if (!leo_str_caseeq(h[i].name, reset_headers[j].name))
                continue;
            struct leo_str v = leo_str_trim(h[i].value);
            uint64_t ms = 0;
            int64_t t;
            double x;
            struct leo_str rest = v;
            switch (reset_headers[j].form) {
            case FORM_RETRY_AFTER:
                if (number(&rest, &x) && rest.len == 0)
                    ms = clamp_ms(x * 1000);
                else if (http_date(v, &t))
                    ms = until(t, now_unix_ms);
                break;
            case FORM_MS:
                if (number(&rest, &x) && rest.len == 0)
                    ms = clamp_ms(x);
                break;
            case FORM_DURATION:
                if (!duration(v, &ms))
                    ms = 0;
                break;
            case FORM_RFC3339:
                if (rfc3339(v, &t))
                    ms = until(t, now_unix_ms);
                break;
            }
            if (ms > best)
                best = ms;
        }
    }
    return best;
}

/* ---- status ---- */

static void add_json_string(struct leo_buf *b, const char *s)
{
    leo_buf_addch(b, '"');
    leo_buf_add_json_escaped(b, s, strlen(s));
    leo_buf_addch(b, '"');
}

void leo_router_status_json(struct leo_router *r, const struct leo_config *cfg, uint64_t now_ms,
                            struct leo_buf *out)
{
    leo_buf_adds(out, "{\"deployments\":[");
    bool first = true;
    for (size_t mi = 0; mi < cfg->nmodels; mi++) {
        const struct leo_model *m = &cfg->models[mi];
        for (size_t di = 0; di < m->ndeployments; di++) {
            const struct leo_deployment *d = &m->deployments[di];
            const struct leo_router__dep *s = table_find(&r->deps, d->id, strlen(d->id));
            static const struct leo_router__dep fresh;
            if (s == NULL)
                s = &fresh;
            enum breaker b = s->breaker;
            uint64_t open_for = b == BREAKER_OPEN && s->open_until > now_ms ? s->open_until - now_ms : 0;
            if (!first)
                leo_buf_addch(out, ',');
            first = false;
            leo_buf_adds(out, "{\"model\":");
            add_json_string(out, m->name);
            leo_buf_adds(out, ",\"id\":");
            add_json_string(out, d->id);
            leo_buf_adds(out, ",\"provider\":");
            add_json_string(out, d->provider->name);
            leo_buf_addf(out, ",\"priority\":%d,\"weight\":%u,\"breaker\":\"%s\",\"open_for_ms\":%llu,\"in_flight\":%u",
                         d->priority, d->weight, breaker_names[b], (unsigned long long)open_for, s->in_flight);
            if (s->measured)
                leo_buf_addf(out, ",\"ewma_ttfb_ms\":%.0f", s->ewma_ttfb_ms);
            else
                leo_buf_adds(out, ",\"ewma_ttfb_ms\":null");
            leo_buf_addf(out, ",\"consecutive_failures\":%u", s->consecutive_failures);
            if (d->override) {
                leo_buf_addf(out, ",\"disabled\":%s,\"override\":{\"action\":", d->disabled ? "true" : "false");
                add_json_string(out, d->override);
                leo_buf_adds(out, ",\"reason\":");
                add_json_string(out, d->override_reason ? d->override_reason : "");
                leo_buf_addch(out, '}');
            }
            leo_buf_adds(out, ",\"keys\":[");
            const struct leo_provider *p = d->provider;
            for (size_t ki = 0; ki < p->nkeys; ki++) {
                const struct leo_router__key *k = key_peek(r, p, ki);
                const char *state = "ok";
                uint64_t cooldown = 0, forced = forced_left_ms(p, ki);
                if (forced) {
                    state = "forced_cooldown";
                    cooldown = forced;
                } else if (k && k->disabled) {
                    state = "disabled";
                } else if (k && k->exhausted_until > now_ms) {
                    state = "exhausted";
                    cooldown = k->exhausted_until - now_ms;
                } else if (k && k->cooldown_until > now_ms) {
                    state = "cooling_down";
                    cooldown = k->cooldown_until - now_ms;
                }
                if (ki)
                    leo_buf_addch(out, ',');
                leo_buf_adds(out, "{\"env\":");
                add_json_string(out, p->keys[ki].env);
                leo_buf_addf(out, ",\"state\":\"%s\",\"cooldown_ms\":%llu", state, (unsigned long long)cooldown);
                if (forced) {
                    leo_buf_adds(out, ",\"reason\":");
                    add_json_string(out, p->keys[ki].forced_reason ? p->keys[ki].forced_reason : "");
                }
                leo_buf_addch(out, '}');
            }
            leo_buf_adds(out, "]}");
        }
    }
    leo_buf_adds(out, "]}");
}
