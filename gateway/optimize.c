/*
 * optimize.c — the exact cache, deduplication and the semantic cache on the request path (see optimize.h).
 *
 * The order of a request's checks, each step only when the policy and the request's x-leo-cache controls
 * allow it:
 *   1. the exact cache (L1, then Redis);
 *   2. join the flight of an identical request in the air (dedup): a follower waits for the leader's answer;
 *   3. the semantic cache (an eligible chat request of a tenant that has it on): a close enough earlier prompt
 *      whose answer is still in the exact cache;
 *   4. go on to the upstream as the flight's leader; the answer is stored at its clean end.
 * A hit that cannot be replayed in the form the client asked for (a stream of an answer with parts the replay
 * cannot write) is treated as a miss.
 */
#define _GNU_SOURCE
#include "optimize.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/redis.h"
#include "cache.h"
#include "config.h"
#include "embed.h"
#include "handlers.h"
#include "semcache.h"
#include "sse.h"
#include "worker.h"

#define SWITCHES_KEY "leo:optimization"
#define SWITCHES_POLL_MS 1000
#define MAX_SWITCHES 1024
#define MAX_SSE_EVENT (8u << 20)

/* A tenant's run-time switches: -1 unset (the config decides), 0 off, 1 on. */
struct opt_switch {
    char tenant[129];
    int8_t exact, semantic, dedup;
};

struct leo_optimizer {
    uv_loop_t *loop;
    struct leo_redis *redis;
    struct leo_cache *cache;
    struct leo_dedup *dedup;
    struct leo_semcache *sem;
    struct leo_embedder *embedder;
    struct opt_switch switches[MAX_SWITCHES];
    size_t nswitches;
    uv_timer_t *switch_timer;
    bool reading_switches;
    unsigned switch_gen; /* bumped by every local change */
    unsigned read_gen;   /* switch_gen when the read in flight was sent */
    bool dead;           /* freed by its owner while a read was in flight: its answer frees the struct */
};

struct leo_opt_req {
    struct leo_optimizer *o;
    struct leo_gw_req *g;
    json_t *(*tree)(void *ud); /* the request for the semantic cache, parsed on demand (leo_opt_input) */
    struct leo_str body;       /* the request's bytes (the key memo's) */
    bool key_memoized;         /* the key came from the cache's memo of answered bodies */
    void *tree_ud;
    bool stream, include_usage;
    bool want_semantic;               /* the semantic cache is on for this request: q is set up after an exact miss */
    struct leo_cache_decision dec;
    struct leo_cache_key key;
    bool semantic;                    /* the semantic cache applies (q is initialised) */
    bool have_q;
    struct leo_semcache_query q;
    struct leo_semcache_match match;
    struct leo_semcache_op *semop;
    struct leo_cache_lookup *lookup;  /* pending L2 lookup (the key's, or a semantic match's answer) */
    bool lookup_semantic;
    struct leo_dedup_flight *flight;
    struct leo_dedup_follower *follower;
    bool follower_streaming;
    leo_opt_continue_cb cont;
    void *ud;
    bool recording;                   /* assemble the stream for the cache or the followers */
    struct leo_sse_parser sse;
    struct leo_cache_asm *asmb;
    bool asm_failed;
    bool finished;                    /* stored / handed over: nothing more to do at close */
    char saved_s[32];
};

static const struct leo_dedup_callbacks follower_cbs;

/* ---- run-time switches ---- */

static struct opt_switch *switch_find(struct leo_optimizer *o, const char *tenant, bool create)
{
    for (size_t i = 0; i < o->nswitches; i++)
        if (strcmp(o->switches[i].tenant, tenant) == 0)
            return &o->switches[i];
    if (!create || o->nswitches >= MAX_SWITCHES || strlen(tenant) >= sizeof(o->switches[0].tenant))
        return NULL;
    struct opt_switch *s = &o->switches[o->nswitches++];
    snprintf(s->tenant, sizeof(s->tenant), "%s", tenant);
    s->exact = s->semantic = s->dedup = -1;
    return s;
}

/* "exact=1;semantic=-1;dedup=0" */
static void switch_parse(struct opt_switch *s, const char *v, size_t len)
{
    const char *p = v, *end = v + len;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *e = semi ? semi : end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        if (eq) {
            struct leo_str name = {p, (size_t)(eq - p)};
            char num[8];
            snprintf(num, sizeof(num), "%.*s", (int)((size_t)(e - eq - 1) < sizeof(num) ? (size_t)(e - eq - 1) : 7),
                     eq + 1);
            long x = strtol(num, NULL, 10);
            int8_t val = x > 0 ? 1 : x == 0 ? 0 : -1;
            if (leo_str_eqc(name, "exact"))
                s->exact = val;
            else if (leo_str_eqc(name, "semantic"))
                s->semantic = val;
            else if (leo_str_eqc(name, "dedup"))
                s->dedup = val;
        }
        p = e + 1;
    }
}

static void on_switches(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_optimizer *o = ud;
    o->reading_switches = false;
    if (o->dead) {
        leo_free(o);
        return;
    }
    if (err != 0 || reply == NULL || reply->type != REDIS_REPLY_ARRAY)
        return;
    /* a read sent before a change made here may have run before that change's HSET: it would undo it until
     * the next read, so it is dropped (the next read sees the change) */
    if (o->read_gen != o->switch_gen)
        return;
    /* Redis holds the switches of every worker: a tenant missing from the hash (deleted, or Redis flushed or
     * restarted without its data) is back on its configuration here too, as on a worker started since */
    bool seen[MAX_SWITCHES] = {false};
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        char tenant[129];
        snprintf(tenant, sizeof(tenant), "%.*s", (int)(k->len < 128 ? k->len : 128), k->str);
        struct opt_switch *s = switch_find(o, tenant, true);
        if (s) {
            switch_parse(s, v->str, (size_t)v->len);
            seen[s - o->switches] = true;
        }
    }
    for (size_t i = 0; i < o->nswitches; i++)
        if (!seen[i])
            o->switches[i].exact = o->switches[i].semantic = o->switches[i].dedup = -1;
}

static void read_switches(uv_timer_t *t)
{
    struct leo_optimizer *o = t->data;
    if (o->redis == NULL || o->reading_switches)
        return;
    const char *argv[] = {"HGETALL", SWITCHES_KEY};
    if (leo_redis_command_argv(o->redis, on_switches, o, 2, argv, NULL) == 0) {
        o->reading_switches = true;
        o->read_gen = o->switch_gen;
    }
}

static void on_switch_written(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    (void)ud;
    if (err != 0 || reply == NULL || reply->type == REDIS_REPLY_ERROR)
        leo_log(LEO_LOG_WARN, "optimization: a switch could not be written to redis; it holds on this worker only, "
                              "until its next read of the switches in redis");
}

/* Sets one strategy ("exact", "semantic" or "dedup") in a tenant's field of the hash, keeping the others as
 * Redis has them. Writing this worker's whole view of the tenant instead lost updates: a worker's view of the
 * strategies it was not asked to change can be up to a poll old, so a switch posted to worker A and another
 * strategy's switch posted to worker B within that second left B writing A's strategy back to its old value,
 * on every worker (tests/integration/cache_switch.test.mjs). The merge runs in Redis as one script, so two
 * workers writing at once both land. Sent as EVAL on the worker's ordered connection, not EVALSHA: a script
 * resent after NOSCRIPT would run after a read sent meanwhile, which switch_gen would then not catch. */
static const char SWITCH_MERGE_LUA[] =
    "local t = {exact = '-1', semantic = '-1', dedup = '-1'}\n"
    "for k, x in string.gmatch(redis.call('HGET', KEYS[1], ARGV[1]) or '', '(%a+)=(%-?%d+)') do t[k] = x end\n"
    "t[ARGV[2]] = ARGV[3]\n"
    "return redis.call('HSET', KEYS[1], ARGV[1], "
    "'exact=' .. t.exact .. ';semantic=' .. t.semantic .. ';dedup=' .. t.dedup)";

static void switch_write(struct leo_optimizer *o, const struct opt_switch *s, const char *strategy, int8_t value)
{
    o->switch_gen++;
    if (o->redis == NULL)
        return;
    char v[8];
    snprintf(v, sizeof(v), "%d", value);
    const char *argv[] = {"EVAL", SWITCH_MERGE_LUA, "1", SWITCHES_KEY, s->tenant, strategy, v};
    if (leo_redis_command_argv(o->redis, on_switch_written, o, 7, argv, NULL) != 0)
        leo_log(LEO_LOG_WARN,
                "optimization: redis is unreachable; the switch holds on this worker only, until redis is back");
}

/* The effective policy of a request: the config's, then the tenant's run-time switches. */
static void effective(struct leo_optimizer *o, const struct leo_config *cfg, const char *tenant, const char *model,
                      struct leo_cache_policy *pol, bool *semantic)
{
    leo_cache_policy_for(&cfg->cache, tenant, model, pol);
    *semantic = leo_semcache_config_enabled(&cfg->semantic_cache, tenant);
    struct opt_switch *s = switch_find(o, tenant, false);
    if (s) {
        if (s->exact >= 0)
            pol->enabled = s->exact;
        if (s->dedup >= 0)
            pol->dedup = s->dedup;
        if (s->semantic >= 0)
            *semantic = s->semantic;
    }
}

/* ---- lifecycle ---- */

static void purge_l1(const char *tenant, void *ud)
{
    struct leo_optimizer *o = ud;
    leo_cache_purge_tenant(o->cache, tenant[0] ? tenant : NULL);
}

static struct leo_embedder *make_embedder(const struct leo_optimizer_opts *opts)
{
    const struct leo_semcache_config *sc = &opts->cfg->semantic_cache;
    if (sc->embedder && strcmp(sc->embedder, "provider") == 0 && opts->up) {
        const char *key = sc->provider_api_key_env ? getenv(sc->provider_api_key_env) : NULL;
        struct leo_embed_provider_config pc = {.base_url = sc->provider_base_url, .api_key = key,
                                               .model = sc->provider_model, .dimensions = sc->provider_dimensions};
        char err[256];
        struct leo_embedder *e = leo_embed_provider_new(opts->up, &pc, err, sizeof(err));
        if (e)
            return e;
        leo_log(LEO_LOG_ERROR, "semantic_cache: the provider embedder cannot be used (%s); using the local one", err);
    }
    return leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
}

struct leo_optimizer *leo_optimizer_new(const struct leo_optimizer_opts *opts)
{
    struct leo_optimizer *o = leo_calloc(1, sizeof(*o));
    const struct leo_config *cfg = opts->cfg;
    o->loop = opts->loop;
    o->redis = opts->redis;
    struct leo_cache_opts co = {.max_bytes = cfg->cache.max_bytes, .max_entry_bytes = cfg->cache.max_entry_bytes,
                                .redis = cfg->cache.redis ? opts->redis : NULL};
    o->cache = leo_cache_new(&co);
    o->dedup = leo_dedup_new(0);
    o->embedder = make_embedder(opts);
    const struct leo_semcache_config *scc = &cfg->semantic_cache;
    struct leo_semcache_opts so = {
        .loop = opts->loop,
        .redis = cfg->cache.redis ? opts->redis : NULL,
        .embedder = o->embedder,
        .threshold = scc->threshold,
        .max_entries = scc->max_entries,
        .limits = {.max_turns = scc->max_turns, .max_chars = scc->max_chars},
        .on_purge = purge_l1,
        .purge_ud = o,
    };
    o->sem = leo_semcache_new(&so);
    if (o->redis) {
        o->switch_timer = leo_malloc(sizeof(*o->switch_timer));
        uv_timer_init(o->loop, o->switch_timer);
        o->switch_timer->data = o;
        uv_timer_start(o->switch_timer, read_switches, 0, SWITCHES_POLL_MS);
        uv_unref((uv_handle_t *)o->switch_timer);
    }
    return o;
}

void leo_optimizer_set_config(struct leo_optimizer *o, const struct leo_config *cfg)
{
    leo_cache_set_limits(o->cache, cfg->cache.max_bytes, cfg->cache.max_entry_bytes);
    leo_cache_set_redis(o->cache, cfg->cache.redis ? o->redis : NULL);
}

void leo_optimizer_free(struct leo_optimizer *o)
{
    if (o == NULL)
        return;
    if (o->switch_timer) {
        uv_timer_stop(o->switch_timer);
        uv_close((uv_handle_t *)o->switch_timer, (uv_close_cb)leo_free);
    }
    leo_semcache_free(o->sem);
    leo_dedup_free(o->dedup);
    leo_cache_free(o->cache);
    leo_embedder_free(o->embedder);
    if (o->reading_switches)
        o->dead = true; /* the read's callback (an answer, or LEO_ECANCELED when Redis closes) frees it */
    else
        leo_free(o);
}

/* ---- answering from the cache ---- */

static void count(const char *strategy, const char *result)
{
    /* strategy and result are short literals of this file */
    char lbl[96];
    size_t ns = strlen(strategy), nr = strlen(result), n = 0;
    if (ns + nr + 22 > sizeof(lbl))
        return;
    memcpy(lbl + n, "strategy=\"", 10);
    n += 10;
    memcpy(lbl + n, strategy, ns);
    n += ns;
    memcpy(lbl + n, "\",result=\"", 10);
    n += 10;
    memcpy(lbl + n, result, nr);
    n += nr;
    lbl[n++] = '"';
    lbl[n] = '\0';
    leo_metrics_add("leo_optimization_requests_total", lbl, 1);
}

/* What a hit saved: the original answer's usage at today's price of the model's first deployment. */
static void account_saved(struct leo_opt_req *r, const struct leo_cache_entry *e)
{
    struct leo_gw_req *g = r->g;
    g->cost_usd = 0;
    if (e->have_usage) {
        g->saved_tokens = e->input_tokens + e->output_tokens;
        const struct leo_price *pr = leo_config_price(g->cfg, leo_str_c(g->model->deployments[0].model));
        g->saved_usd = leo_price_cost(pr, e->input_tokens, e->output_tokens);
    }
    leo_fmt_fixed(r->saved_s, sizeof(r->saved_s), g->saved_usd, 8);
}

/* Answers the request from an entry; false when it cannot be replayed in the form asked (then nothing has been
 * sent). */
static bool serve(struct leo_opt_req *r, struct leo_cache_entry *e, const char *status, bool follower)
{
    struct leo_gw_req *g = r->g;
    struct leo_buf out = LEO_BUF_INIT;
    if (r->stream) {
        int rc = e->dialect == g->dialect ? leo_cache_entry_sse(r->o->cache, e, r->include_usage, &out)
                                          : LEO_EINVAL;
        if (rc != 0) {
            leo_buf_release(&out);
            return false;
        }
    }
    g->cache_status = status;
    account_saved(r, e);
    struct leo_http_header h[8];
    size_t n = 0;
    if (r->stream) {
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/event-stream")};
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Cache-Control"), LEO_STR_LIT("no-cache")};
        h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-request-id"), leo_str_c(g->id)};
    }
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-cache-status"), leo_str_c(status)};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-cost-usd"), LEO_STR_LIT("0.00000000")};
    h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-saved-usd"), leo_str_c(r->saved_s)};
    if (follower)
        h[n++] = (struct leo_http_header){LEO_STR_LIT("x-leo-dedup"), LEO_STR_LIT("follower")};
    if (r->stream) {
        /* the whole event stream is known: one response with a length, in one write, rather than a chunked
         * stream of three (headers, events, end) */
        g->status = 200;
        leo_http_respond(g->req, 200, h, n, out.p, out.len);
    } else {
        leo_gw_respond_json(g, 200, h, n, e->body, e->len);
    }
    leo_buf_release(&out);
    r->finished = true;
    return true;
}

/* The request goes on to the upstream (as the flight's leader, if it leads one). */
static void go_on(struct leo_opt_req *r, bool now)
{
    struct leo_gw_req *g = r->g;
    if (g->cache_status == NULL)
        g->cache_status = r->dec.lookup ? "miss" : "bypass";
    r->recording = r->dec.store || r->flight != NULL;
    if (!now)
        r->cont(r->ud);
}

static bool try_semantic(struct leo_opt_req *r);
static bool after_exact_miss(struct leo_opt_req *r);

/* level_err: 0 when the exact cache answered for certain (an entry or "not there"), else why it could not */
static void answer_lookup_done(struct leo_opt_req *r, struct leo_cache_entry *e, bool semantic, int level_err)
{
    if (e && serve(r, e, semantic ? "semantic-hit" : "hit", false)) {
        count(semantic ? "semantic_cache" : "exact_cache", "hit");
        if (!semantic && !r->key_memoized)
            leo_cache_key_remember(r->o->cache, r->g->dialect, r->body.p, r->body.len, &r->key);
        if (semantic)
            leo_semcache_served(r->o->sem, r->g->id, &r->match);
        if (r->flight) {
            leo_dedup_complete(r->flight, e);
            r->flight = NULL;
        }
        leo_cache_entry_unref(e);
        return;
    }
    if (e == NULL && semantic && level_err == 0)
        /* its answer is gone from the exact cache (expired or evicted); a Redis that could not answer in time
         * says nothing about that, and the entry stays */
        leo_semcache_delete(r->o->sem, r->match.entry_id);
    leo_cache_entry_unref(e);
    if (!semantic) {
        if (after_exact_miss(r))
            return;
    } else {
        count("semantic_cache", "miss");
    }
    go_on(r, false);
}

static void on_lookup(struct leo_cache_entry *e, int level_err, void *ud)
{
    struct leo_opt_req *r = ud;
    r->lookup = NULL;
    answer_lookup_done(r, e, r->lookup_semantic, level_err);
}

/* A semantic match: look its answer up. Returns true when answered or pending. */
static bool semantic_match(struct leo_opt_req *r)
{
    struct leo_cache_entry *e = NULL;
    r->lookup_semantic = true;
    int rc = leo_cache_lookup(r->o->cache, &r->match.answer, &e, on_lookup, r, &r->lookup);
    if (rc == LEO_CACHE_PENDING)
        return true;
    if (rc == LEO_CACHE_HIT && serve(r, e, "semantic-hit", false)) {
        count("semantic_cache", "hit");
        leo_semcache_served(r->o->sem, r->g->id, &r->match);
        if (r->flight) {
            leo_dedup_complete(r->flight, e);
            r->flight = NULL;
        }
        leo_cache_entry_unref(e);
        return true;
    }
    /* not in this worker's memory and Redis not asked: without Redis the answer is gone for good (the entry
     * goes); with a Redis that is not connected nothing is known about it elsewhere (the entry stays) */
    if (rc == LEO_CACHE_MISS && (r->o->redis == NULL || !r->g->cfg->cache.redis))
        leo_semcache_delete(r->o->sem, r->match.entry_id);
    leo_cache_entry_unref(e);
    count("semantic_cache", "miss");
    return false;
}

static void on_semantic(bool hit, const struct leo_semcache_match *m, int err, void *ud)
{
    (void)err;
    struct leo_opt_req *r = ud;
    r->semop = NULL;
    if (hit) {
        r->match = *m;
        if (semantic_match(r))
            return;
    } else {
        count("semantic_cache", "miss");
    }
    go_on(r, false);
}

/* Step 3. Returns true when the request was answered or a lookup is pending; false: a miss, go on. */
static bool try_semantic(struct leo_opt_req *r)
{
    if (!r->semantic || !r->dec.lookup)
        return false;
    int rc = leo_semcache_lookup(r->o->sem, &r->q, &r->match, on_semantic, r, &r->semop);
    if (rc == LEO_SEMCACHE_PENDING)
        return true;
    if (rc == LEO_SEMCACHE_HIT)
        return semantic_match(r);
    count("semantic_cache", "miss");
    return false;
}

/* ---- followers ---- */

static void follower_data(void *ud, const char *bytes, size_t len)
{
    struct leo_opt_req *r = ud;
    struct leo_gw_req *g = r->g;
    if (!r->follower_streaming) {
        r->follower_streaming = true;
        g->cache_status = "hit";
        struct leo_http_header h[] = {
            {LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/event-stream")},
            {LEO_STR_LIT("Cache-Control"), LEO_STR_LIT("no-cache")},
            {LEO_STR_LIT("x-leo-request-id"), leo_str_c(g->id)},
            {LEO_STR_LIT("x-leo-cache-status"), LEO_STR_LIT("hit")},
            {LEO_STR_LIT("x-leo-dedup"), LEO_STR_LIT("follower")},
        };
        g->status = 200;
        leo_http_stream_start(g->req, 200, h, sizeof(h) / sizeof(h[0]));
    }
    leo_http_stream_write(g->req, bytes, len);
}

static void follower_done(void *ud, const struct leo_dedup_result *res)
{
    struct leo_opt_req *r = ud;
    struct leo_gw_req *g = r->g;
    r->follower = NULL;
    if (r->follower_streaming) {
        /* every byte of the leader's stream, its end or its error event included, has been relayed */
        if (res->entry)
            account_saved(r, res->entry);
        leo_cache_entry_unref(res->entry);
        r->finished = true;
        leo_http_stream_end(g->req);
        return;
    }
    if (res->entry) {
        bool ok = serve(r, res->entry, "hit", true);
        leo_cache_entry_unref(res->entry);
        if (ok)
            return;
    } else if (!res->retry && res->status > 0 && res->body) {
        g->cache_status = "miss";
        g->error = "the identical request this one followed failed";
        leo_gw_respond_json(g, res->status, NULL, 0, res->body, res->len);
        r->finished = true;
        return;
    }
    go_on(r, false); /* the leader left or failed: make our own call */
}

static const struct leo_dedup_callbacks follower_cbs = {follower_data, follower_done};

static const struct leo_dedup_callbacks follower_whole_cbs = {NULL, follower_done};

/* ---- the request path ---- */

bool leo_opt_begin(struct leo_optimizer *o, struct leo_gw_req *g, const struct leo_opt_input *in,
                   leo_opt_continue_cb cont, void *ud, struct leo_opt_req **out)
{
    *out = NULL;
    const char *tenant = g->key->tenant->id;
    struct leo_cache_policy pol;
    bool semantic;
    effective(o, g->cfg, tenant, g->model->name, &pol, &semantic);

    const struct leo_http_header *ch = leo_http_header_find(g->req, "x-leo-cache");
    const struct leo_http_header *th = leo_http_header_find(g->req, "x-leo-cache-ttl");
    struct leo_cache_ctl ctl;
    struct leo_buf err = LEO_BUF_INIT;
    if (leo_cache_ctl_parse(ch ? ch->value : (struct leo_str){NULL, 0}, th ? th->value : (struct leo_str){NULL, 0},
                            &ctl, &err) != 0) {
        leo_gw_error(g, 400, NULL, "invalid_cache_control", "%s", err.p);
        leo_buf_release(&err);
        return true;
    }
    leo_buf_release(&err);

    struct leo_opt_req *r = leo_arena_zalloc(&g->req->arena, sizeof(*r));
    r->o = o;
    r->g = g;
    r->tree = in->tree;
    r->tree_ud = in->tree_ud;
    r->body = in->body;
    r->stream = in->stream;
    r->include_usage = in->include_usage;
    r->cont = cont;
    r->ud = ud;
    *out = r;
    leo_cache_decide(&pol, in->deterministic, &ctl, &r->dec);
    if (!r->dec.lookup && !r->dec.store) {
        g->cache_status = "bypass";
        count("exact_cache", "bypass");
        return false;
    }
    if (leo_cache_key_memo(o->cache, tenant, g->dialect, in->body.p, in->body.len, &r->key, &r->key_memoized) != 0) {
        r->dec.lookup = r->dec.store = r->dec.dedup = false;
        g->cache_status = "bypass";
        return false;
    }
    r->want_semantic = semantic;

    /* 1. the exact cache (a hit in this worker's memory costs no more than this) */
    if (r->dec.lookup) {
        struct leo_cache_entry *e = NULL;
        r->lookup_semantic = false;
        int rc = leo_cache_lookup(o->cache, &r->key, &e, on_lookup, r, &r->lookup);
        if (rc == LEO_CACHE_PENDING)
            return true; /* Redis answers later: on_lookup goes on from there */
        if (rc == LEO_CACHE_HIT && serve(r, e, "hit", false)) {
            count("exact_cache", "hit");
            if (!r->key_memoized)
                leo_cache_key_remember(o->cache, g->dialect, r->body.p, r->body.len, &r->key);
            leo_cache_entry_unref(e);
            return true;
        }
        leo_cache_entry_unref(e);
    }
    if (after_exact_miss(r))
        return true;
    go_on(r, true);
    return false;
}

/* After the exact cache missed (or was not asked): 2. an identical request in flight, 3. the semantic cache.
 * Returns true when the request was taken over (a follower, a semantic hit or lookup); false: go on. */
static bool after_exact_miss(struct leo_opt_req *r)
{
    if (r->want_semantic && !r->have_q) {
        /* the semantic cache's query needs the request as a tree: built only now that the exact cache missed */
        json_t *tree = r->tree(r->tree_ud);
        r->have_q = true;
        r->semantic = tree != NULL && leo_semcache_query_init(r->o->sem, r->g->key->tenant->id, r->g->dialect,
                                                              r->g->model->name, tree, &r->q);
    }
    if (r->dec.lookup)
        count("exact_cache", "miss");
    if (r->dec.dedup) {
        unsigned variant = r->stream ? 1u + r->include_usage : 0u;
        int rc = leo_dedup_join(r->o->dedup, &r->key, variant, r->stream ? &follower_cbs : &follower_whole_cbs, r,
                                &r->flight, &r->follower);
        if (rc == LEO_DEDUP_FOLLOWER)
            return true;
    }
    return try_semantic(r);
}

/* ---- recording the answer ---- */

static void on_client_event(void *ud, struct leo_str event, struct leo_str data, struct leo_str id)
{
    (void)id;
    struct leo_opt_req *r = ud;
    if (r->asm_failed)
        return;
    if (r->g->dialect == LEO_DIALECT_OPENAI && leo_str_eqc(data, "[DONE]"))
        return;
    json_t *j = json_loadb(data.p, data.len, 0, NULL);
    struct leo_buf err = LEO_BUF_INIT;
    int rc = j == NULL ? LEO_EPARSE
             : r->g->dialect == LEO_DIALECT_OPENAI ? leo_cache_asm_openai(r->asmb, j, &err)
                                                    : leo_cache_asm_anthropic(r->asmb, event, j, &err);
    if (rc < 0)
        r->asm_failed = true;
    json_decref(j);
    leo_buf_release(&err);
}

void leo_opt_stream_write(struct leo_opt_req *r, const char *bytes, size_t len)
{
    if (r == NULL || r->finished)
        return;
    if (r->flight)
        leo_dedup_publish(r->flight, bytes, len);
    if (!r->recording || r->asm_failed)
        return;
    if (r->asmb == NULL) {
        r->asmb = leo_cache_asm_new(r->g->dialect, 0);
        leo_sse_parser_init(&r->sse, MAX_SSE_EVENT, on_client_event, r);
    }
    if (leo_sse_parser_feed(&r->sse, bytes, len) != 0)
        r->asm_failed = true;
}

/* Stores a complete answer and hands it to the followers. */
static void finish_with(struct leo_opt_req *r, struct leo_cache_entry *e)
{
    if (e && r->dec.store) {
        uint64_t ttl_ms = r->dec.ttl_ms;
        if (leo_cache_store(r->o->cache, &r->key, e, ttl_ms) == 0) {
            count("exact_cache", "store");
            if (r->semantic && leo_semcache_add(r->o->sem, &r->q, &r->key, ttl_ms, NULL) == 0)
                count("semantic_cache", "store");
        }
    }
    if (r->flight) {
        if (e)
            leo_dedup_complete(r->flight, e);
        else
            leo_dedup_fail(r->flight, 0, NULL, 0, true);
        r->flight = NULL;
    }
    r->finished = true;
}

void leo_opt_whole(struct leo_opt_req *r, const char *body, size_t len, const struct leo_usage *u)
{
    if (r == NULL || r->finished || !r->recording)
        return;
    struct leo_cache_entry *e = leo_cache_entry_new(r->g->dialect, body, len, u, (uint64_t)time(NULL) * 1000u);
    finish_with(r, e);
    leo_cache_entry_unref(e);
}

void leo_opt_stream_done(struct leo_opt_req *r, const struct leo_usage *u)
{
    if (r == NULL || r->finished || !r->recording)
        return;
    struct leo_cache_entry *e = NULL;
    if (r->asmb && !r->asm_failed && leo_sse_parser_finish(&r->sse) == 0) {
        struct leo_buf err = LEO_BUF_INIT;
        json_t *doc = leo_cache_asm_finish(r->asmb, &err);
        if (doc && r->g->dialect == LEO_DIALECT_OPENAI && json_object_get(doc, "usage") == NULL && u && u->have)
            /* the client did not ask for the usage chunk; a whole answer served later carries it */
            json_object_set_new(doc, "usage",
                                json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)u->input_tokens,
                                          "completion_tokens", (json_int_t)u->output_tokens, "total_tokens",
                                          (json_int_t)(u->input_tokens + u->output_tokens)));
        if (doc) {
            char *s = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(15));
            if (s)
                e = leo_cache_entry_new(r->g->dialect, s, strlen(s), u, (uint64_t)time(NULL) * 1000u);
            free(s);
            json_decref(doc);
        }
        leo_buf_release(&err);
    }
    finish_with(r, e);
    leo_cache_entry_unref(e);
}

void leo_opt_close(struct leo_opt_req *r)
{
    if (r == NULL)
        return;
    if (r->lookup) {
        leo_cache_lookup_cancel(r->lookup);
        r->lookup = NULL;
    }
    if (r->semop) {
        leo_semcache_cancel(r->semop);
        r->semop = NULL;
    }
    if (r->follower) {
        leo_dedup_leave(r->follower);
        r->follower = NULL;
    }
    if (r->flight) {
        leo_dedup_abandon(r->flight);
        r->flight = NULL;
    }
    if (r->asmb) {
        leo_sse_parser_release(&r->sse);
        leo_cache_asm_free(r->asmb);
        r->asmb = NULL;
    }
    if (r->have_q) {
        leo_semcache_query_release(&r->q);
        r->have_q = false;
    }
}

/* ---- the /v1/optimization routes ---- */

/* The tenant a request acts on: its key's, or (admin keys) the one named by "tenant" in the query or body.
 * Sends 403/404 and returns NULL when it may not. */
static const char *target_tenant(struct leo_gw_req *g, const char *named)
{
    if (named == NULL || named[0] == '\0')
        return g->key->tenant->id;
    if (!g->key->admin && strcmp(named, g->key->tenant->id) != 0) {
        leo_gw_error(g, 403, "tenant", "admin_key_required", "only an admin key may act on another tenant");
        return NULL;
    }
    for (size_t i = 0; i < g->cfg->ntenants; i++)
        if (strcmp(g->cfg->tenants[i].id, named) == 0)
            return g->cfg->tenants[i].id;
    leo_gw_error(g, 404, "tenant", "tenant_not_found", "tenant \"%.128s\" is not configured", named);
    return NULL;
}

/* The value of a query parameter, copied into out ("" when absent). */
static void query_param(struct leo_gw_req *g, const char *name, char *out, size_t size)
{
    out[0] = '\0';
    struct leo_str t = g->req->query;
    size_t nlen = strlen(name);
    const char *p = t.p, *end = t.p + t.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == '=') {
            size_t vlen = (size_t)(e - p) - nlen - 1;
            snprintf(out, size, "%.*s", (int)(vlen < size ? vlen : size - 1), p + nlen + 1);
            return;
        }
        p = e + 1;
    }
}

static json_t *body_object(struct leo_gw_req *g)
{
    json_error_t jerr;
    json_t *j = json_loadb(g->req->body.p, g->req->body.len, 0, &jerr);
    if (j == NULL) {
        leo_gw_error(g, 400, NULL, "invalid_json", "invalid JSON in request body at byte %d: %s", jerr.position,
                     jerr.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        leo_gw_error(g, 400, NULL, "invalid_request", "request body must be a JSON object");
        return NULL;
    }
    return j;
}

static void respond(struct leo_gw_req *g, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
    leo_gw_respond_json(g, status, NULL, 0, s, strlen(s));
    free(s);
    json_decref(j);
}

static json_t *status_json(struct leo_optimizer *o, const struct leo_config *cfg, const char *tenant)
{
    struct leo_cache_policy pol;
    bool semantic;
    effective(o, cfg, tenant, NULL, &pol, &semantic);
    struct opt_switch *s = switch_find(o, tenant, false);
    const char *src_exact = s && s->exact >= 0 ? "runtime" : "config";
    const char *src_sem = s && s->semantic >= 0 ? "runtime" : "config";
    const char *src_dedup = s && s->dedup >= 0 ? "runtime" : "config";
    return json_pack("{s:s,s:{s:{s:b,s:s,s:I,s:s},s:{s:b,s:f,s:s,s:s},s:{s:b,s:s}}}", "tenant", tenant,
                     "strategies", "exact_cache", "enabled", pol.enabled, "mode", leo_cache_mode_name(pol.mode),
                     "ttl_s", (json_int_t)pol.ttl_s, "source", src_exact, "semantic_cache", "enabled", semantic,
                     "threshold", cfg->semantic_cache.threshold, "embedder",
                     cfg->semantic_cache.embedder ? cfg->semantic_cache.embedder : "local", "source", src_sem,
                     "dedup", "enabled", pol.dedup, "source", src_dedup);
}

void leo_route_opt_status(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    char named[129];
    query_param(g, "tenant", named, sizeof(named));
    const char *tenant = target_tenant(g, named);
    if (tenant == NULL)
        return;
    respond(g, 200, status_json(g->w->optimizer, g->cfg, tenant));
}

void leo_route_opt_enable(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    json_t *b = body_object(g);
    if (b == NULL)
        return;
    json_t *js = json_object_get(b, "strategy"), *je = json_object_get(b, "enabled");
    json_t *jt = json_object_get(b, "tenant");
    const char *strategy = json_string_value(js);
    if (strategy == NULL || (strcmp(strategy, "exact_cache") != 0 && strcmp(strategy, "semantic_cache") != 0 &&
                             strcmp(strategy, "dedup") != 0)) {
        json_decref(b);
        leo_gw_error(g, 400, "strategy", "invalid_value",
                     "field \"strategy\" must be \"exact_cache\", \"semantic_cache\" or \"dedup\"");
        return;
    }
    if (!json_is_boolean(je) && !json_is_null(je)) {
        json_decref(b);
        leo_gw_error(g, 400, "enabled", "invalid_type",
                     "field \"enabled\" must be a boolean (or null to return to the configuration)");
        return;
    }
    if (jt && !json_is_string(jt)) {
        json_decref(b);
        leo_gw_error(g, 400, "tenant", "invalid_type", "field \"tenant\" must be a string");
        return;
    }
    const char *tenant = target_tenant(g, json_string_value(jt));
    if (tenant == NULL) {
        json_decref(b);
        return;
    }
    struct leo_optimizer *o = g->w->optimizer;
    struct opt_switch *s = switch_find(o, tenant, true);
    if (s == NULL) {
        json_decref(b);
        leo_gw_error(g, 507, NULL, "too_many_switches", "no room for another tenant's switches");
        return;
    }
    int8_t v = json_is_null(je) || je == NULL ? -1 : json_is_true(je) ? 1 : 0;
    const char *field = "dedup";
    if (strcmp(strategy, "exact_cache") == 0) {
        s->exact = v;
        field = "exact";
    } else if (strcmp(strategy, "semantic_cache") == 0) {
        s->semantic = v;
        field = "semantic";
    } else {
        s->dedup = v;
    }
    switch_write(o, s, field, v);
    json_decref(b);
    respond(g, 200, status_json(o, g->cfg, tenant));
}

void leo_route_opt_cache_stats(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    char named[129];
    query_param(g, "tenant", named, sizeof(named));
    const char *tenant = named[0] ? target_tenant(g, named) : g->key->admin ? NULL : g->key->tenant->id;
    if (named[0] && tenant == NULL)
        return;
    struct leo_optimizer *o = g->w->optimizer;
    uint64_t bytes = 0, entries = 0;
    leo_cache_l1_usage(o->cache, &bytes, &entries);
    size_t flights = 0, followers = 0;
    leo_dedup_counts(o->dedup, &flights, &followers);
    struct leo_buf sem = LEO_BUF_INIT;
    leo_semcache_stats_json(o->sem, tenant, &sem);
    json_t *jsem = json_loadb(sem.p, sem.len, 0, NULL);
    leo_buf_release(&sem);
    json_t *j = json_pack("{s:o,s:{s:s,s:I,s:I},s:{s:I,s:I},s:o}", "tenant", tenant ? json_string(tenant) : json_null(),
                          "exact_cache", "scope", "this worker's in-process level", "entries", (json_int_t)entries,
                          "bytes", (json_int_t)bytes, "dedup", "flights", (json_int_t)flights, "followers",
                          (json_int_t)followers, "semantic_namespaces", jsem ? jsem : json_array());
    respond(g, 200, j);
}

void leo_route_opt_cache_threshold(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    json_t *b = body_object(g);
    if (b == NULL)
        return;
    json_t *jthr = json_object_get(b, "threshold"), *jm = json_object_get(b, "model"), *jt = json_object_get(b, "tenant");
    json_t *jns = json_object_get(b, "namespace");
    if (jns && (!json_is_string(jns) || json_string_length(jns) != LEO_SEMCACHE_NS_HEX || jm)) {
        json_decref(b);
        leo_gw_error(g, 400, "namespace", "invalid_value",
                     "field \"namespace\" must be a namespace id from /v1/optimization/cache/stats (without \"model\")");
        return;
    }
    if (!(json_is_number(jthr) || json_is_null(jthr)) ||
        (json_is_number(jthr) && !(json_number_value(jthr) > 0 && json_number_value(jthr) <= 1))) {
        json_decref(b);
        leo_gw_error(g, 400, "threshold", "invalid_value",
                     "field \"threshold\" must be a number in (0, 1], or null to return to the default");
        return;
    }
    if ((jm && !json_is_string(jm)) || (jt && !json_is_string(jt))) {
        json_decref(b);
        leo_gw_error(g, 400, jm && !json_is_string(jm) ? "model" : "tenant", "invalid_type",
                     "fields \"model\" and \"tenant\" must be strings");
        return;
    }
    const char *model = json_string_value(jm);
    if (model && leo_config_find_model(g->cfg, leo_str_c(model)) == NULL) {
        leo_gw_error(g, 404, "model", "model_not_found", "model \"%.128s\" is not configured", model);
        json_decref(b);
        return;
    }
    const char *tenant = target_tenant(g, json_string_value(jt));
    if (tenant == NULL) {
        json_decref(b);
        return;
    }
    double thr = json_is_number(jthr) ? json_number_value(jthr) : 0;
    char nsrule[4 + LEO_SEMCACHE_NS_HEX + 1];
    if (jns)
        snprintf(nsrule, sizeof(nsrule), "ns:%s", json_string_value(jns));
    leo_semcache_set_threshold(g->w->optimizer->sem, tenant, jns ? nsrule : model, thr);
    json_t *out = json_pack("{s:s,s:o,s:o}", "tenant", tenant, "model", model ? json_string(model) : json_null(),
                            "threshold", thr > 0 ? json_real(thr) : json_null());
    if (jns)
        json_object_set_new(out, "namespace", json_string(json_string_value(jns)));
    json_decref(b);
    respond(g, 200, out);
}

/* Deletes a tenant's exact-cache keys from Redis: SCAN ... MATCH, DEL, until the cursor returns to 0. */
struct purge_scan {
    struct leo_redis *redis;
    char pattern[300];
    unsigned rounds;
};

static void on_scan(struct leo_redis *rd, int err, redisReply *reply, void *ud)
{
    (void)rd;
    struct purge_scan *ps = ud;
    if (err != 0 || reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        leo_log(LEO_LOG_WARN, "cache purge: the redis scan stopped early; remaining entries expire by their ttl");
        leo_free(ps);
        return;
    }
    const redisReply *keys = reply->element[1];
    if (keys->elements > 0) {
        const char **argv = leo_malloc(sizeof(char *) * (keys->elements + 1));
        size_t *lens = leo_malloc(sizeof(size_t) * (keys->elements + 1));
        argv[0] = "UNLINK";
        lens[0] = 6;
        for (size_t i = 0; i < keys->elements; i++) {
            argv[i + 1] = keys->element[i]->str;
            lens[i + 1] = (size_t)keys->element[i]->len;
        }
        leo_redis_command_argv(ps->redis, on_switch_written, NULL, (int)keys->elements + 1, argv, lens);
        leo_free(argv);
        leo_free(lens);
    }
    char cursor[32];
    snprintf(cursor, sizeof(cursor), "%.*s", (int)reply->element[0]->len, reply->element[0]->str);
    if (strcmp(cursor, "0") == 0 || ++ps->rounds > 100000) {
        leo_free(ps);
        return;
    }
    const char *argv[] = {"SCAN", cursor, "MATCH", ps->pattern, "COUNT", "1000"};
    if (leo_redis_command_argv(ps->redis, on_scan, ps, 6, argv, NULL) != 0)
        leo_free(ps);
}

static void purge_redis(struct leo_redis *redis, const char *tenant)
{
    struct purge_scan *ps = leo_calloc(1, sizeof(*ps));
    ps->redis = redis;
    /* the tenant id goes into a glob pattern: escape the glob's special characters */
    size_t n = (size_t)snprintf(ps->pattern, sizeof(ps->pattern), "leo:cache:");
    for (const char *c = tenant ? tenant : ""; *c && n + 3 < sizeof(ps->pattern); c++) {
        if (strchr("*?[]\\", *c))
            ps->pattern[n++] = '\\';
        ps->pattern[n++] = *c;
    }
    snprintf(ps->pattern + n, sizeof(ps->pattern) - n, "%s*", tenant ? ":" : "");
    const char *argv[] = {"SCAN", "0", "MATCH", ps->pattern, "COUNT", "1000"};
    if (leo_redis_command_argv(redis, on_scan, ps, 6, argv, NULL) != 0)
        leo_free(ps);
}

void leo_route_opt_cache_purge(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    json_t *b = g->req->body.len ? body_object(g) : json_object();
    if (b == NULL)
        return;
    json_t *jt = json_object_get(b, "tenant");
    if (jt && !json_is_string(jt)) {
        json_decref(b);
        leo_gw_error(g, 400, "tenant", "invalid_type", "field \"tenant\" must be a string");
        return;
    }
    const char *tenant = target_tenant(g, json_string_value(jt));
    json_decref(b);
    if (tenant == NULL)
        return;
    struct leo_optimizer *o = g->w->optimizer;
    leo_semcache_purge(o->sem, tenant); /* the exact cache's L1 follows (purge_l1), on every worker */
    bool redis = o->redis && g->cfg->cache.redis && leo_redis_connected(o->redis);
    if (redis)
        purge_redis(o->redis, tenant);
    respond(g, 200, json_pack("{s:s,s:b,s:b}", "tenant", tenant, "purged", 1, "shared", redis));
}

/* Feedback may be answered later (the served record is in Redis): the ticket outlives whichever of the
 * request and the answer ends first. */
struct fb_ticket {
    struct leo_gw_req *g; /* NULL once the request is gone */
    bool answered;
};

static void fb_close(struct leo_gw_req *g, bool aborted)
{
    (void)aborted;
    struct fb_ticket *t = g->data;
    if (t->answered)
        leo_free(t);
    else
        t->g = NULL;
}

static void on_feedback(enum leo_semcache_feedback_result res, double thr, void *ud)
{
    struct fb_ticket *t = ud;
    struct leo_gw_req *g = t->g;
    if (g == NULL) {
        leo_free(t);
        return;
    }
    t->answered = true;
    switch (res) {
    case LEO_SEMCACHE_FB_APPLIED:
        respond(g, 200, json_pack("{s:s,s:f}", "result", "applied", "threshold", thr));
        break;
    case LEO_SEMCACHE_FB_EVICTED:
        respond(g, 200, json_pack("{s:s}", "result", "evicted"));
        break;
    case LEO_SEMCACHE_FB_UNKNOWN:
        leo_gw_error(g, 404, "request_id", "not_found", "no semantic cache hit is recorded for this request id");
        break;
    default:
        leo_gw_error(g, 503, NULL, "cache_unavailable", "the shared cache could not be reached; try again");
        break;
    }
}

void leo_route_opt_cache_feedback(struct leo_gw_req *g)
{
    if (!leo_gw_authenticate(g))
        return;
    json_t *b = body_object(g);
    if (b == NULL)
        return;
    const char *rid = json_string_value(json_object_get(b, "request_id"));
    const char *rating = json_string_value(json_object_get(b, "rating"));
    if (rid == NULL || rid[0] == '\0' || strlen(rid) > 64) {
        json_decref(b);
        leo_gw_error(g, 400, "request_id", "invalid_value", "field \"request_id\" must be a request id string");
        return;
    }
    if (rating == NULL || (strcmp(rating, "good") != 0 && strcmp(rating, "bad") != 0)) {
        json_decref(b);
        leo_gw_error(g, 400, "rating", "invalid_value", "field \"rating\" must be \"good\" or \"bad\"");
        return;
    }
    char id[65];
    snprintf(id, sizeof(id), "%s", rid);
    bool good = strcmp(rating, "good") == 0;
    json_decref(b);
    struct fb_ticket *t = leo_calloc(1, sizeof(*t));
    t->g = g;
    g->data = t;
    g->on_close = fb_close;
    leo_semcache_feedback(g->w->optimizer->sem, g->key->tenant->id, id, good, on_feedback, t);
}

void leo_opt_metrics_describe(void)
{
    leo_metrics_describe("leo_optimization_requests_total", LEO_METRIC_COUNTER,
                         "Requests by optimisation strategy (exact_cache, semantic_cache) and result (hit, miss, "
                         "bypass, store).");
    leo_cache_metrics_describe();
    leo_semcache_metrics_describe();
    leo_embed_metrics_describe();
    leo_semguard_metrics_describe();
}
