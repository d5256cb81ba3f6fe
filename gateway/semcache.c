/*
 * semcache.c — the semantic cache of one worker (see semcache.h for what it holds and how it is shared).
 *
 * Tables are small chained hashes on the loop thread: entries by id, namespaces by name, served request ids
 * by id (a bounded LRU). Each namespace owns an HNSW index created at its first entry; deleted and replaced
 * entries leave tombstones that are compacted away when they outnumber the live ones.
 *
 * The Redis stream is read with XREAD without BLOCK on a timer: a blocking read would hold up every other
 * command of the worker's one connection (common/redis.h). A full batch is followed by the next read at once,
 * so a starting worker catches up at the speed of Redis.
 */
#define _GNU_SOURCE
#include "semcache.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/hnsw.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/redis.h"
#include "embed.h"

#define STREAM_KEY "leo:semcache:log"
#define SERVED_PREFIX "leo:semcache:served:"
#define SERVED_TTL_S 86400
#define SERVED_LOCAL_MAX 4096
#define READ_BATCH 512
#define SEARCH_K 8
#define SEARCH_EF 64
/* The search effort stays SEARCH_EF whatever the namespace's size (0). Growing it past 16 384 entries (16384
 * here: 112 at 100 000 entries, 160 at 1 000 000; common/hnsw.h) was measured with tests/bench/semcache.sh: a
 * lookup that searches the index cost about 1.5 times the CPU at 100 000 entries and 1.9 times at 1 000 000,
 * and it won back 1 of 5 lost hits at 1 000 000 and none at 100 000; no answer from another prompt came from an
 * index miss either way (the exact-text check answers repeats). docs/caching.md has the figures. */
#define SEARCH_EF_GROW_FROM 0
#define BAD_EVICT 2          /* "bad" feedback this many times evicts an entry */
#define BAD_MARGIN 0.01      /* a bad hit's entry threshold: the similarity it was served at, plus this */
#define MAX_RULES 256

struct sc_ns;

struct sc_entry {
    uint64_t id;
    struct sc_ns *ns;
    char *text;
    size_t text_len;
    struct leo_cache_key answer;
    double threshold; /* the entry's own; 0 = none */
    unsigned bad, good;
    uint64_t expires_ms;
    struct sc_entry *chain;      /* by id */
    uint64_t text_key;           /* namespace + normalised text, for the exact-text check */
    struct sc_entry *text_chain; /* by text_key */
    struct sc_entry *prev, *next; /* insertion order, oldest first */
};

struct sc_ns {
    char name[LEO_SEMCACHE_NS_HEX + 1];
    char tenant[129];
    char model[129];
    struct leo_hnsw *index; /* NULL until the first entry */
    unsigned dim;
    size_t entries;
    uint64_t hits, misses, guard_refusals;
    struct sc_ns *chain;
    struct sc_ns *next_all;
};

struct sc_rule {
    char tenant[129];
    char model[129]; /* "" = every model of the tenant */
    double threshold;
};

struct sc_served {
    char request_id[64];
    char tenant[129];
    uint64_t entry_id;
    double similarity;
    struct sc_served *chain;
    struct sc_served *prev, *next; /* LRU, oldest first */
};

struct leo_semcache {
    uv_loop_t *loop;
    struct leo_redis *redis;
    struct leo_embedder *embedder;
    double threshold;
    size_t max_entries, max_log;
    uint64_t poll_ms;
    struct leo_semguard_limits limits;
    leo_semcache_purge_cb on_purge;
    void *purge_ud;

    struct sc_entry **by_id;
    struct sc_entry **by_text;   /* same size as by_id */
    size_t id_buckets, nentries;
    struct sc_entry *oldest, *newest;

    struct sc_ns **ns_tab;
    size_t ns_buckets, nns;
    struct sc_ns *all_ns;

    struct sc_rule rules[MAX_RULES];
    size_t nrules;

    struct sc_served **served_tab;
    size_t served_buckets, nserved;
    struct sc_served *served_old, *served_new;

    uv_timer_t *poll;
    char last_id[64];  /* the last stream id applied */
    bool reading;      /* an XREAD is in flight */
    unsigned batch;    /* entries asked per XREAD: halved after a timeout, doubled back after full reads */
    bool synced;
    unsigned inflight; /* Redis commands whose callbacks still need this struct */
    bool dead;         /* freed by its owner; released when inflight reaches 0 */
};

/* ---- small helpers ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a: table placement only */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* The key of a prompt in its namespace for the exact-text check: the namespace and the text as the local
 * embedder normalises it (case, punctuation and spacing do not count), hashed; norm receives the normalised
 * text so that a candidate can be compared byte for byte. */
static uint64_t text_key(const char *ns, struct leo_str text, struct leo_buf *norm)
{
    leo_buf_reset(norm);
    leo_embed_normalize(text, norm);
    return mix64(hash_bytes(ns, strlen(ns)) ^ hash_bytes(norm->p, norm->len));
}

static void copy_str(char *dst, size_t size, const char *src, size_t len)
{
    if (len >= size)
        len = size - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

static void id_hex(uint64_t id, char out[17])
{
    snprintf(out, 17, "%016" PRIx64, id);
}

static bool parse_id(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 16)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

static void release_if_dead(struct leo_semcache *sc);
static enum leo_semcache_feedback_result feedback_apply(struct leo_semcache *sc, uint64_t id, double sim, bool good,
                                                        bool mutate, double *thr_out);

/* ---- namespaces ---- */

static struct sc_ns *ns_find(struct leo_semcache *sc, const char *name)
{
    size_t b = hash_bytes(name, strlen(name)) & (sc->ns_buckets - 1);
    for (struct sc_ns *n = sc->ns_tab[b]; n; n = n->chain)
        if (strcmp(n->name, name) == 0)
            return n;
    return NULL;
}

static struct sc_ns *ns_get(struct leo_semcache *sc, const char *name, const char *tenant, const char *model)
{
    struct sc_ns *n = ns_find(sc, name);
    if (n)
        return n;
    if (sc->nns >= sc->ns_buckets) {
        size_t nb = sc->ns_buckets * 2;
        struct sc_ns **tab = leo_calloc(nb, sizeof(*tab));
        for (struct sc_ns *x = sc->all_ns; x; x = x->next_all) {
            size_t b = hash_bytes(x->name, strlen(x->name)) & (nb - 1);
            x->chain = tab[b];
            tab[b] = x;
        }
        leo_free(sc->ns_tab);
        sc->ns_tab = tab;
        sc->ns_buckets = nb;
    }
    n = leo_calloc(1, sizeof(*n));
    copy_str(n->name, sizeof(n->name), name, strlen(name));
    copy_str(n->tenant, sizeof(n->tenant), tenant, strlen(tenant));
    copy_str(n->model, sizeof(n->model), model, strlen(model));
    size_t b = hash_bytes(n->name, strlen(n->name)) & (sc->ns_buckets - 1);
    n->chain = sc->ns_tab[b];
    sc->ns_tab[b] = n;
    n->next_all = sc->all_ns;
    sc->all_ns = n;
    sc->nns++;
    return n;
}

/* The threshold of a namespace: the most specific run-time rule (the namespace itself, written "ns:<hex>" in
 * the model slot; its model; its tenant), else the default. */
static double ns_threshold(const struct leo_semcache *sc, const struct sc_ns *n)
{
    double tenant_wide = 0, model_wide = 0;
    for (size_t i = 0; i < sc->nrules; i++) {
        const struct sc_rule *r = &sc->rules[i];
        if (strcmp(r->tenant, n->tenant) != 0)
            continue;
        if (strncmp(r->model, "ns:", 3) == 0) {
            if (strcmp(r->model + 3, n->name) == 0)
                return r->threshold;
        } else if (r->model[0] && strcmp(r->model, n->model) == 0) {
            model_wide = r->threshold;
        } else if (r->model[0] == '\0') {
            tenant_wide = r->threshold;
        }
    }
    return model_wide > 0 ? model_wide : tenant_wide > 0 ? tenant_wide : sc->threshold;
}

/* ---- entries ---- */

static struct sc_entry *entry_find(struct leo_semcache *sc, uint64_t id)
{
    for (struct sc_entry *e = sc->by_id[mix64(id) & (sc->id_buckets - 1)]; e; e = e->chain)
        if (e->id == id)
            return e;
    return NULL;
}

static void entry_unlink(struct leo_semcache *sc, struct sc_entry *e)
{
    struct sc_entry **pp = &sc->by_id[mix64(e->id) & (sc->id_buckets - 1)];
    while (*pp != e)
        pp = &(*pp)->chain;
    *pp = e->chain;
    pp = &sc->by_text[e->text_key & (sc->id_buckets - 1)];
    while (*pp != e)
        pp = &(*pp)->text_chain;
    *pp = e->text_chain;
    if (e->prev)
        e->prev->next = e->next;
    else
        sc->oldest = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        sc->newest = e->prev;
    sc->nentries--;
}

/* Removes an entry from this worker only. */
static void entry_drop(struct leo_semcache *sc, struct sc_entry *e, const char *reason)
{
    struct sc_ns *n = e->ns;
    entry_unlink(sc, e);
    if (n->index) {
        leo_hnsw_delete(n->index, e->id);
        if (leo_hnsw_deleted(n->index) > leo_hnsw_count(n->index) + 64)
            leo_hnsw_compact(n->index);
    }
    n->entries--;
    leo_free(e->text);
    leo_free(e);
    leo_metrics_gauge_add("leo_semcache_entries", "", -1);
    if (reason) {
        char lbl[64];
        snprintf(lbl, sizeof(lbl), "reason=\"%s\"", reason);
        leo_metrics_add("leo_semcache_evictions_total", lbl, 1);
    }
}

/* Inserts an entry into this worker; false when it cannot be (bad vector, dimension mismatch). An id that is
 * already here is left as it is (the stream replays this worker's own adds). */
static bool entry_insert(struct leo_semcache *sc, uint64_t id, const char *ns, const char *tenant, const char *model,
                         struct leo_str text, const char *answer, size_t answer_len, const float *vec, unsigned dim,
                         double threshold, uint64_t expires_ms)
{
    if (entry_find(sc, id) || answer_len == 0 || answer_len >= LEO_CACHE_KEY_MAX || dim == 0)
        return false;
    struct sc_ns *n = ns_get(sc, ns, tenant, model);
    if (n->index == NULL) {
        struct leo_hnsw_params hp = {.dim = dim, .M = 16, .ef_construction = 100, .ef_search = SEARCH_EF,
                                     .ef_search_grow_from = SEARCH_EF_GROW_FROM,
                                     .seed = 0x5eed};
        if (leo_hnsw_create(&n->index, &hp) != 0)
            return false;
        n->dim = dim;
    }
    if (n->dim != dim || leo_hnsw_insert(n->index, id, vec) != 0)
        return false;
    if (sc->nentries >= sc->id_buckets) {
        size_t nb = sc->id_buckets * 2;
        struct sc_entry **tab = leo_calloc(nb, sizeof(*tab)), **ttab = leo_calloc(nb, sizeof(*ttab));
        for (struct sc_entry *x = sc->oldest; x; x = x->next) {
            size_t b = mix64(x->id) & (nb - 1);
            x->chain = tab[b];
            tab[b] = x;
            b = x->text_key & (nb - 1);
            x->text_chain = ttab[b];
            ttab[b] = x;
        }
        leo_free(sc->by_id);
        leo_free(sc->by_text);
        sc->by_id = tab;
        sc->by_text = ttab;
        sc->id_buckets = nb;
    }
    struct sc_entry *e = leo_calloc(1, sizeof(*e));
    e->id = id;
    e->ns = n;
    e->text = leo_malloc(text.len + 1);
    memcpy(e->text, text.p, text.len);
    e->text[text.len] = '\0';
    e->text_len = text.len;
    memcpy(e->answer.s, answer, answer_len);
    e->answer.s[answer_len] = '\0';
    e->answer.len = answer_len;
    e->threshold = threshold;
    e->expires_ms = expires_ms;
    struct leo_buf norm = LEO_BUF_INIT;
    e->text_key = text_key(n->name, text, &norm);
    leo_buf_release(&norm);
    size_t b = mix64(id) & (sc->id_buckets - 1);
    e->chain = sc->by_id[b];
    sc->by_id[b] = e;
    b = e->text_key & (sc->id_buckets - 1);
    e->text_chain = sc->by_text[b];
    sc->by_text[b] = e;
    e->prev = sc->newest;
    if (sc->newest)
        sc->newest->next = e;
    else
        sc->oldest = e;
    sc->newest = e;
    sc->nentries++;
    n->entries++;
    leo_metrics_gauge_add("leo_semcache_entries", "", 1);
    while (sc->nentries > sc->max_entries && sc->oldest != e)
        entry_drop(sc, sc->oldest, "capacity");
    return true;
}

static void purge_local(struct leo_semcache *sc, const char *tenant)
{
    if (sc->on_purge)
        sc->on_purge(tenant ? tenant : "", sc->purge_ud);
    struct sc_entry *e = sc->oldest;
    while (e) {
        struct sc_entry *next = e->next;
        if (tenant == NULL || tenant[0] == '\0' || strcmp(e->ns->tenant, tenant) == 0)
            entry_drop(sc, e, "purge");
        e = next;
    }
}

static void set_rule(struct leo_semcache *sc, const char *tenant, const char *model, double thr)
{
    for (size_t i = 0; i < sc->nrules; i++) {
        struct sc_rule *r = &sc->rules[i];
        if (strcmp(r->tenant, tenant) == 0 && strcmp(r->model, model) == 0) {
            if (thr <= 0)
                sc->rules[i] = sc->rules[--sc->nrules];
            else
                r->threshold = thr;
            return;
        }
    }
    if (thr <= 0 || sc->nrules >= MAX_RULES)
        return;
    struct sc_rule *r = &sc->rules[sc->nrules++];
    copy_str(r->tenant, sizeof(r->tenant), tenant, strlen(tenant));
    copy_str(r->model, sizeof(r->model), model, strlen(model));
    r->threshold = thr;
}

/* ---- the shared log ---- */

static void on_written(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_semcache *sc = ud;
    sc->inflight--;
    if (err != 0 || reply == NULL || reply->type == REDIS_REPLY_ERROR)
        leo_metrics_add("leo_semcache_sync_total", "result=\"write_error\"", 1);
    release_if_dead(sc);
}

/* Appends one change to the stream: field/value pairs after "op". Best effort: when Redis cannot take it, the
 * change stays this worker's own (counted). */
static void log_append(struct leo_semcache *sc, const char **fv, const size_t *fvlen, int nfv)
{
    if (sc->redis == NULL)
        return;
    const char *argv[32];
    size_t argvlen[32];
    char maxlen[32];
    snprintf(maxlen, sizeof(maxlen), "%zu", sc->max_log);
    int argc = 0;
    argv[argc] = "XADD", argvlen[argc++] = 4;
    argv[argc] = STREAM_KEY, argvlen[argc++] = strlen(STREAM_KEY);
    argv[argc] = "MAXLEN", argvlen[argc++] = 6;
    argv[argc] = "~", argvlen[argc++] = 1;
    argv[argc] = maxlen, argvlen[argc++] = strlen(maxlen);
    argv[argc] = "*", argvlen[argc++] = 1;
    for (int i = 0; i < nfv && argc < 32; i++) {
        argv[argc] = fv[i];
        argvlen[argc++] = fvlen ? fvlen[i] : strlen(fv[i]);
    }
    if (leo_redis_command_argv(sc->redis, on_written, sc, argc, argv, argvlen) == 0)
        sc->inflight++;
    else
        leo_metrics_add("leo_semcache_sync_total", "result=\"write_error\"", 1);
}

static const redisReply *field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i];
        if (k->type == REDIS_REPLY_STRING && (size_t)k->len == strlen(name) && memcmp(k->str, name, k->len) == 0)
            return fields->element[i + 1]->type == REDIS_REPLY_STRING ? fields->element[i + 1] : NULL;
    }
    return NULL;
}

static void field_str(const redisReply *fields, const char *name, char *out, size_t size)
{
    const redisReply *v = field(fields, name);
    out[0] = '\0';
    if (v)
        copy_str(out, size, v->str, (size_t)v->len);
}

/* Applies one change read from the stream. */
static void apply(struct leo_semcache *sc, const redisReply *fields)
{
    char op[8], idh[20], tmp[64];
    field_str(fields, "op", op, sizeof(op));
    field_str(fields, "id", idh, sizeof(idh));
    uint64_t id = 0;
    bool have_id = parse_id(idh, strlen(idh), &id);
    if (strcmp(op, "add") == 0 && have_id) {
        char ns[LEO_SEMCACHE_NS_HEX + 1], tenant[129], model[129];
        field_str(fields, "ns", ns, sizeof(ns));
        field_str(fields, "tenant", tenant, sizeof(tenant));
        field_str(fields, "model", model, sizeof(model));
        field_str(fields, "exp", tmp, sizeof(tmp));
        uint64_t exp = strtoull(tmp, NULL, 10);
        field_str(fields, "thr", tmp, sizeof(tmp));
        double thr = strtod(tmp, NULL);
        const redisReply *text = field(fields, "text"), *key = field(fields, "key"), *vec = field(fields, "vec");
        if (text == NULL || key == NULL || vec == NULL || vec->len % 4 != 0 || exp <= now_ms())
            return;
        unsigned dim = (unsigned)(vec->len / 4);
        float *v = leo_malloc((size_t)vec->len);
        memcpy(v, vec->str, (size_t)vec->len); /* the stream's bytes are not aligned for floats */
        entry_insert(sc, id, ns, tenant, model, leo_str_n(text->str, (size_t)text->len), key->str, (size_t)key->len,
                     v, dim, thr, exp);
        leo_free(v);
    } else if (strcmp(op, "del") == 0 && have_id) {
        struct sc_entry *e = entry_find(sc, id);
        if (e)
            entry_drop(sc, e, "feedback");
    } else if (strcmp(op, "fb") == 0 && have_id) {
        field_str(fields, "sim", tmp, sizeof(tmp));
        double sim = strtod(tmp, NULL);
        field_str(fields, "good", tmp, sizeof(tmp));
        double thr;
        feedback_apply(sc, id, sim, strcmp(tmp, "1") == 0, true, &thr);
    } else if (strcmp(op, "nthr") == 0) {
        char tenant[129], model[129];
        field_str(fields, "tenant", tenant, sizeof(tenant));
        field_str(fields, "model", model, sizeof(model));
        field_str(fields, "thr", tmp, sizeof(tmp));
        set_rule(sc, tenant, model, strtod(tmp, NULL));
    } else if (strcmp(op, "purge") == 0) {
        char tenant[129];
        field_str(fields, "tenant", tenant, sizeof(tenant));
        purge_local(sc, tenant);
    }
}

static void poll_now(struct leo_semcache *sc);

static void on_read(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_semcache *sc = ud;
    sc->inflight--;
    sc->reading = false;
    if (sc->dead) {
        release_if_dead(sc);
        return;
    }
    size_t got = 0;
    if (err == 0 && reply && reply->type == REDIS_REPLY_NIL) {
        sc->synced = true;
    } else if (err == 0 && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1) {
        const redisReply *stream = reply->element[0];
        if (stream->type == REDIS_REPLY_ARRAY && stream->elements == 2 && stream->element[1]->type == REDIS_REPLY_ARRAY) {
            const redisReply *items = stream->element[1];
            for (size_t i = 0; i < items->elements; i++) {
                const redisReply *it = items->element[i];
                if (it->type != REDIS_REPLY_ARRAY || it->elements != 2 || it->element[0]->type != REDIS_REPLY_STRING)
                    continue;
                if (it->element[1]->type == REDIS_REPLY_ARRAY)
                    apply(sc, it->element[1]);
                copy_str(sc->last_id, sizeof(sc->last_id), it->element[0]->str, (size_t)it->element[0]->len);
                got++;
            }
        }
        leo_metrics_add("leo_semcache_sync_total", "result=\"read\"", (double)got);
        if (got < sc->batch)
            sc->synced = true;
    } else if (err != 0 || (reply && reply->type == REDIS_REPLY_ERROR)) {
        leo_metrics_add("leo_semcache_sync_total", "result=\"read_error\"", 1);
        /* a catch-up read of many entries can outlast the connection's command timeout (it is shared with the
         * quotas, which keep it short): ask for fewer next time rather than fail the same way forever */
        if (err == LEO_ETIMEOUT && sc->batch > 8)
            sc->batch /= 2;
    }
    if (got > 0 && got == sc->batch) {
        if (sc->batch < READ_BATCH)
            sc->batch *= 2;
        poll_now(sc); /* catching up: read the next batch at once */
    }
}

static void poll_now(struct leo_semcache *sc)
{
    if (sc->reading || sc->redis == NULL || sc->dead)
        return;
    char count[16];
    snprintf(count, sizeof(count), "%u", sc->batch);
    const char *argv[] = {"XREAD", "COUNT", count, "STREAMS", STREAM_KEY, sc->last_id};
    if (leo_redis_command_argv(sc->redis, on_read, sc, 6, argv, NULL) == 0) {
        sc->reading = true;
        sc->inflight++;
    }
}

static void on_poll(uv_timer_t *t)
{
    poll_now(t->data);
}

/* ---- lifecycle ---- */

struct leo_semcache *leo_semcache_new(const struct leo_semcache_opts *opts)
{
    struct leo_semcache *sc = leo_calloc(1, sizeof(*sc));
    sc->loop = opts->loop;
    sc->redis = opts->redis;
    sc->embedder = opts->embedder;
    sc->threshold = opts->threshold > 0 ? opts->threshold : LEO_SEMCACHE_DEFAULT_THRESHOLD;
    sc->max_entries = opts->max_entries ? opts->max_entries : 100000;
    sc->max_log = opts->max_log ? opts->max_log : 1000000;
    sc->poll_ms = opts->poll_ms ? opts->poll_ms : 100;
    sc->limits = opts->limits;
    sc->on_purge = opts->on_purge;
    sc->purge_ud = opts->purge_ud;
    sc->id_buckets = 1024;
    sc->by_id = leo_calloc(sc->id_buckets, sizeof(*sc->by_id));
    sc->by_text = leo_calloc(sc->id_buckets, sizeof(*sc->by_text));
    sc->ns_buckets = 64;
    sc->ns_tab = leo_calloc(sc->ns_buckets, sizeof(*sc->ns_tab));
    sc->served_buckets = 1024;
    sc->served_tab = leo_calloc(sc->served_buckets, sizeof(*sc->served_tab));
    snprintf(sc->last_id, sizeof(sc->last_id), "0-0");
    sc->batch = READ_BATCH;
    sc->synced = sc->redis == NULL;
    if (sc->redis && sc->loop) {
        sc->poll = leo_malloc(sizeof(*sc->poll));
        uv_timer_init(sc->loop, sc->poll);
        sc->poll->data = sc;
        uv_timer_start(sc->poll, on_poll, 0, sc->poll_ms);
    }
    return sc;
}

static void free_all(struct leo_semcache *sc)
{
    while (sc->oldest)
        entry_drop(sc, sc->oldest, NULL);
    for (struct sc_ns *n = sc->all_ns, *next; n; n = next) {
        next = n->next_all;
        leo_hnsw_free(n->index);
        leo_free(n);
    }
    for (struct sc_served *s = sc->served_old, *next; s; s = next) {
        next = s->next;
        leo_free(s);
    }
    leo_free(sc->by_id);
    leo_free(sc->by_text);
    leo_free(sc->ns_tab);
    leo_free(sc->served_tab);
    leo_free(sc);
}

static void release_if_dead(struct leo_semcache *sc)
{
    if (sc->dead && sc->inflight == 0)
        free_all(sc);
}

void leo_semcache_free(struct leo_semcache *sc)
{
    if (sc == NULL)
        return;
    if (sc->poll) {
        uv_timer_stop(sc->poll);
        uv_close((uv_handle_t *)sc->poll, (uv_close_cb)leo_free);
        sc->poll = NULL;
    }
    sc->dead = true;
    release_if_dead(sc);
}

/* ---- queries ---- */

bool leo_semcache_query_init(struct leo_semcache *sc, const char *tenant, enum leo_dialect dialect,
                             const char *model, json_t *canon, struct leo_semcache_query *q)
{
    memset(q, 0, sizeof(*q));
    q->in.text = (struct leo_buf)LEO_BUF_INIT;
    copy_str(q->tenant, sizeof(q->tenant), tenant, strlen(tenant));
    copy_str(q->model, sizeof(q->model), model, strlen(model));
    q->reason = leo_semguard_eligible(canon, &sc->limits, &q->in);
    if (q->reason != LEO_SEMGUARD_ELIGIBLE) {
        leo_metrics_add("leo_semcache_lookups_total", "result=\"ineligible\"", 1);
        return false;
    }
    /* every output-affecting member but the messages: the exact cache's canonical form of the rest */
    json_t *rest = json_copy(canon);
    json_object_del(rest, "messages");
    struct leo_buf c = LEO_BUF_INIT;
    leo_cache_canonical(dialect, rest, &c);
    json_decref(rest);
    crypto_generichash_state st;
    unsigned char h[16];
    crypto_generichash_init(&st, NULL, 0, sizeof(h));
    crypto_generichash_update(&st, (const unsigned char *)"leo-semns-1", 12);
    crypto_generichash_update(&st, (const unsigned char *)tenant, strlen(tenant) + 1);
    unsigned char d = (unsigned char)dialect;
    crypto_generichash_update(&st, &d, 1);
    crypto_generichash_update(&st, (const unsigned char *)model, strlen(model) + 1);
    crypto_generichash_update(&st, q->in.system_hash, sizeof(q->in.system_hash));
    crypto_generichash_update(&st, q->in.context_hash, sizeof(q->in.context_hash));
    crypto_generichash_update(&st, (const unsigned char *)c.p, c.len);
    crypto_generichash_final(&st, h, sizeof(h));
    sodium_bin2hex(q->ns, sizeof(q->ns), h, sizeof(h));
    leo_buf_release(&c);
    return true;
}

void leo_semcache_query_release(struct leo_semcache_query *q)
{
    leo_buf_release(&q->in.text);
    leo_free(q->_vec);
    q->_vec = NULL;
}

/* Searches the query's namespace with its vector. */
static bool search(struct leo_semcache *sc, struct leo_semcache_query *q, struct leo_semcache_match *m)
{
    struct sc_ns *n = ns_get(sc, q->ns, q->tenant, q->model);
    if (n->index == NULL || n->dim != q->_dim) {
        n->misses++;
        leo_metrics_add("leo_semcache_lookups_total", "result=\"miss\"", 1);
        return false;
    }
    double base = ns_threshold(sc, n);
    uint64_t now = now_ms();
    /* The same prompt (as the embedder sees it) stored in this namespace is the answer, whatever the index
     * returns: an approximate search can miss an entry, and then a close neighbour could be served instead. */
    struct leo_buf qn = LEO_BUF_INIT, en = LEO_BUF_INIT;
    uint64_t key = text_key(n->name, leo_buf_str(&q->in.text), &qn);
    for (struct sc_entry *e = sc->by_text[key & (sc->id_buckets - 1)]; e; e = e->text_chain) {
        if (e->text_key != key || e->ns != n || e->expires_ms <= now)
            continue;
        leo_buf_reset(&en);
        leo_embed_normalize(leo_str_n(e->text, e->text_len), &en);
        if (!leo_str_eq(leo_buf_str(&qn), leo_buf_str(&en)) ||
            leo_semguard_check(leo_buf_str(&q->in.text), leo_str_n(e->text, e->text_len)) != LEO_SEMGUARD_OK)
            continue; /* the guard sees what normalising dropped (quotes, code) */
        double thr = e->threshold > base ? e->threshold : base;
        if (thr > 1.0)
            break;
        m->entry_id = e->id;
        m->answer = e->answer;
        m->similarity = 1.0;
        m->threshold = thr;
        n->hits++;
        leo_metrics_add("leo_semcache_lookups_total", "result=\"hit\"", 1);
        leo_buf_release(&qn);
        leo_buf_release(&en);
        return true;
    }
    leo_buf_release(&qn);
    leo_buf_release(&en);
    struct leo_hnsw_hit hits[SEARCH_K];
    size_t nh = 0;
    leo_hnsw_search(n->index, q->_vec, SEARCH_K, hits, &nh);
    bool refused = false;
    for (size_t i = 0; i < nh; i++) {
        double sim = 1.0 - hits[i].distance;
        if (sim < base)
            break; /* hits are ordered: nothing further can pass */
        struct sc_entry *e = entry_find(sc, hits[i].id);
        if (e == NULL)
            continue;
        if (e->expires_ms <= now) {
            entry_drop(sc, e, "expired");
            continue;
        }
        double thr = e->threshold > base ? e->threshold : base;
        if (sim < thr)
            continue;
        enum leo_semguard_rule g = leo_semguard_check(leo_buf_str(&q->in.text), leo_str_n(e->text, e->text_len));
        if (g != LEO_SEMGUARD_OK) {
            refused = true;
            if (g == LEO_SEMGUARD_DROPPED_WORD)
                break; /* the prompt lacks (or adds) the word that tells near prompts apart: no answer fits it,
                        * and a less similar candidate would differ by more than the guard sees */
            continue;
        }
        m->entry_id = e->id;
        m->answer = e->answer;
        m->similarity = sim;
        m->threshold = thr;
        n->hits++;
        leo_metrics_add("leo_semcache_lookups_total", "result=\"hit\"", 1);
        return true;
    }
    n->misses++;
    if (refused)
        n->guard_refusals++;
    leo_metrics_add("leo_semcache_lookups_total", refused ? "result=\"guard\"" : "result=\"miss\"", 1);
    return false;
}

struct leo_semcache_op {
    struct leo_semcache *sc;
    struct leo_semcache_query *q;
    leo_semcache_cb cb;
    void *ud;
    struct leo_embed_op *eop;
};

static void on_embedded(int err, const float *vec, unsigned dim, const char *msg, void *ud)
{
    (void)msg;
    struct leo_semcache_op *op = ud;
    struct leo_semcache_match m = {0};
    bool hit = false;
    if (err == 0) {
        op->q->_vec = leo_malloc(sizeof(float) * dim);
        memcpy(op->q->_vec, vec, sizeof(float) * dim);
        op->q->_dim = dim;
        hit = search(op->sc, op->q, &m);
    } else {
        leo_metrics_add("leo_semcache_lookups_total", "result=\"error\"", 1);
    }
    op->cb(hit, hit ? &m : NULL, err, op->ud);
    leo_free(op);
}

/* The query's vector now, when the embedder can: 0, UV_EAGAIN, or an error. */
static int vector_now(struct leo_semcache *sc, struct leo_semcache_query *q)
{
    if (q->_vec)
        return 0;
    float *v = leo_malloc(sizeof(float) * LEO_EMBED_MAX_DIM);
    int rc = leo_embed_now(sc->embedder, leo_buf_str(&q->in.text), v);
    if (rc != 0) {
        leo_free(v);
        return rc;
    }
    q->_vec = v;
    q->_dim = leo_embedder_dim(sc->embedder);
    return 0;
}

int leo_semcache_lookup(struct leo_semcache *sc, struct leo_semcache_query *q, struct leo_semcache_match *m,
                        leo_semcache_cb cb, void *ud, struct leo_semcache_op **op)
{
    int rc = vector_now(sc, q);
    if (rc == 0)
        return search(sc, q, m) ? LEO_SEMCACHE_HIT : LEO_SEMCACHE_MISS;
    if (rc != UV_EAGAIN) {
        leo_metrics_add("leo_semcache_lookups_total", "result=\"error\"", 1);
        return rc;
    }
    struct leo_semcache_op *o = leo_calloc(1, sizeof(*o));
    *o = (struct leo_semcache_op){sc, q, cb, ud, NULL};
    rc = leo_embed_start(sc->embedder, leo_buf_str(&q->in.text), on_embedded, o, &o->eop);
    if (rc != 0) {
        leo_free(o);
        leo_metrics_add("leo_semcache_lookups_total", "result=\"error\"", 1);
        return rc;
    }
    if (op)
        *op = o;
    return LEO_SEMCACHE_PENDING;
}

void leo_semcache_cancel(struct leo_semcache_op *op)
{
    leo_embed_cancel(op->eop);
    leo_free(op);
}

int leo_semcache_add(struct leo_semcache *sc, struct leo_semcache_query *q, const struct leo_cache_key *answer,
                     uint64_t ttl_ms, uint64_t *id_out)
{
    if (q->reason != LEO_SEMGUARD_ELIGIBLE || vector_now(sc, q) != 0 || q->_dim == 0)
        return LEO_EINVAL;
    uint64_t id;
    randombytes_buf(&id, sizeof(id));
    uint64_t exp = now_ms() + ttl_ms;
    if (!entry_insert(sc, id, q->ns, q->tenant, q->model, leo_buf_str(&q->in.text), answer->s, answer->len, q->_vec,
                      q->_dim, 0, exp))
        return LEO_EINVAL;
    char idh[17], exps[24];
    id_hex(id, idh);
    snprintf(exps, sizeof(exps), "%" PRIu64, exp);
    const char *fv[] = {"op", "add", "id", idh, "ns", q->ns, "tenant", q->tenant, "model", q->model,
                        "exp", exps, "thr", "0", "key", answer->s, "text", q->in.text.p, "vec", (const char *)q->_vec};
    size_t fvlen[20];
    for (int i = 0; i < 20; i++)
        fvlen[i] = strlen(fv[i]);
    fvlen[17] = q->in.text.len;
    fvlen[19] = sizeof(float) * q->_dim;
    log_append(sc, fv, fvlen, 20);
    if (id_out)
        *id_out = id;
    return 0;
}

void leo_semcache_delete(struct leo_semcache *sc, uint64_t entry_id)
{
    struct sc_entry *e = entry_find(sc, entry_id);
    if (e)
        entry_drop(sc, e, "gone");
    char idh[17];
    id_hex(entry_id, idh);
    const char *fv[] = {"op", "del", "id", idh};
    log_append(sc, fv, NULL, 4);
}

/* ---- served requests and feedback ---- */

static struct sc_served *served_find(struct leo_semcache *sc, const char *rid)
{
    for (struct sc_served *s = sc->served_tab[hash_bytes(rid, strlen(rid)) & (sc->served_buckets - 1)]; s;
         s = s->chain)
        if (strcmp(s->request_id, rid) == 0)
            return s;
    return NULL;
}

static void served_remove_oldest(struct leo_semcache *sc)
{
    struct sc_served *s = sc->served_old;
    struct sc_served **pp = &sc->served_tab[hash_bytes(s->request_id, strlen(s->request_id)) & (sc->served_buckets - 1)];
    while (*pp != s)
        pp = &(*pp)->chain;
    *pp = s->chain;
    sc->served_old = s->next;
    if (sc->served_old)
        sc->served_old->prev = NULL;
    else
        sc->served_new = NULL;
    sc->nserved--;
    leo_free(s);
}

static void served_put(struct leo_semcache *sc, const char *rid, const char *tenant, uint64_t id, double sim)
{
    if (strlen(rid) >= sizeof(((struct sc_served *)0)->request_id) || served_find(sc, rid))
        return;
    if (sc->nserved >= SERVED_LOCAL_MAX)
        served_remove_oldest(sc);
    struct sc_served *s = leo_calloc(1, sizeof(*s));
    copy_str(s->request_id, sizeof(s->request_id), rid, strlen(rid));
    copy_str(s->tenant, sizeof(s->tenant), tenant, strlen(tenant));
    s->entry_id = id;
    s->similarity = sim;
    size_t b = hash_bytes(rid, strlen(rid)) & (sc->served_buckets - 1);
    s->chain = sc->served_tab[b];
    sc->served_tab[b] = s;
    s->prev = sc->served_new;
    if (sc->served_new)
        sc->served_new->next = s;
    else
        sc->served_old = s;
    sc->served_new = s;
    sc->nserved++;
}

void leo_semcache_served(struct leo_semcache *sc, const char *request_id, const struct leo_semcache_match *m)
{
    struct sc_entry *e = entry_find(sc, m->entry_id);
    const char *tenant = e ? e->ns->tenant : "";
    served_put(sc, request_id, tenant, m->entry_id, m->similarity);
    if (sc->redis == NULL)
        return;
    char key[128], val[256], ttl[16];
    snprintf(key, sizeof(key), SERVED_PREFIX "%s", request_id);
    snprintf(val, sizeof(val), "%016" PRIx64 " %.6f %s", m->entry_id, m->similarity, tenant);
    snprintf(ttl, sizeof(ttl), "%d", SERVED_TTL_S);
    const char *argv[] = {"SET", key, val, "EX", ttl};
    if (leo_redis_command_argv(sc->redis, on_written, sc, 5, argv, NULL) == 0)
        sc->inflight++;
}

/* Applies feedback to the entry held here (mutate) or says what it would do (!mutate). Every worker applies
 * the same feedback, in stream order, so their entries stay alike. */
static enum leo_semcache_feedback_result feedback_apply(struct leo_semcache *sc, uint64_t id, double sim, bool good,
                                                        bool mutate, double *thr_out)
{
    struct sc_entry *e = entry_find(sc, id);
    if (e == NULL)
        return LEO_SEMCACHE_FB_UNKNOWN;
    double base = ns_threshold(sc, e->ns);
    double thr = e->threshold;
    if (good) {
        if (mutate)
            e->good++;
        *thr_out = thr > base ? thr : base;
        return LEO_SEMCACHE_FB_APPLIED;
    }
    if (e->bad + 1 >= BAD_EVICT) {
        *thr_out = 0;
        if (mutate)
            entry_drop(sc, e, "feedback");
        return LEO_SEMCACHE_FB_EVICTED;
    }
    double raised = sim + BAD_MARGIN;
    if (raised > 1.0)
        raised = 1.0;
    if (raised > thr)
        thr = raised;
    if (mutate) {
        e->bad++;
        e->threshold = thr;
    }
    *thr_out = thr > base ? thr : base;
    return LEO_SEMCACHE_FB_APPLIED;
}

/* Feedback on a served hit: applied here at once without Redis; with Redis, published to the stream and applied
 * by every worker (this one included) when it reads it, and answered with what it will do. An entry this worker
 * does not hold yet (it has not read its addition) is answered from the served record. */
static enum leo_semcache_feedback_result feedback_submit(struct leo_semcache *sc, uint64_t id, double sim, bool good,
                                                         double *thr_out)
{
    leo_metrics_add("leo_semcache_feedback_total", good ? "rating=\"good\"" : "rating=\"bad\"", 1);
    if (sc->redis == NULL)
        return feedback_apply(sc, id, sim, good, true, thr_out);
    enum leo_semcache_feedback_result res = feedback_apply(sc, id, sim, good, false, thr_out);
    if (res == LEO_SEMCACHE_FB_UNKNOWN) {
        res = LEO_SEMCACHE_FB_APPLIED;
        *thr_out = good ? sc->threshold : (sim + BAD_MARGIN > 1.0 ? 1.0 : sim + BAD_MARGIN);
    }
    char idh[17], simv[32];
    id_hex(id, idh);
    snprintf(simv, sizeof(simv), "%.6f", sim);
    const char *fv[] = {"op", "fb", "id", idh, "sim", simv, "good", good ? "1" : "0"};
    log_append(sc, fv, NULL, 8);
    return res;
}

#define SERVED_GET_TRIES 5
#define SERVED_GET_RETRY_MS 20

struct fb_call {
    struct leo_semcache *sc;
    char tenant[129];
    char key[128];
    bool good;
    unsigned tries;
    uv_timer_t *timer;
    leo_semcache_feedback_cb cb;
    void *ud;
};

static void served_get(struct fb_call *c);

static void fb_call_free(struct fb_call *c)
{
    if (c->timer)
        uv_close((uv_handle_t *)c->timer, (uv_close_cb)leo_free);
    leo_free(c);
}

static void on_retry_get(uv_timer_t *t)
{
    struct fb_call *c = t->data;
    c->sc->inflight--;
    if (c->sc->dead) {
        struct leo_semcache *sc = c->sc;
        fb_call_free(c);
        release_if_dead(sc);
        return;
    }
    served_get(c);
}

static void on_served_get(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct fb_call *c = ud;
    struct leo_semcache *sc = c->sc;
    sc->inflight--;
    if (sc->dead) {
        /* the owner is gone: its requests are too, nobody waits for this answer */
        fb_call_free(c);
        release_if_dead(sc);
        return;
    }
    enum leo_semcache_feedback_result res = LEO_SEMCACHE_FB_UNKNOWN;
    double thr = 0;
    if (err != 0 || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        res = LEO_SEMCACHE_FB_ERROR;
    } else if (reply->type == REDIS_REPLY_NIL && ++c->tries < SERVED_GET_TRIES && sc->loop) {
        /* the worker that served the hit writes the record after its answer went out: a client quick enough
         * can ask before the record is there */
        if (c->timer == NULL) {
            c->timer = leo_malloc(sizeof(*c->timer));
            uv_timer_init(sc->loop, c->timer);
            c->timer->data = c;
        }
        uv_timer_start(c->timer, on_retry_get, SERVED_GET_RETRY_MS, 0);
        sc->inflight++;
        return;
    } else if (reply->type == REDIS_REPLY_STRING) {
        char buf[256];
        copy_str(buf, sizeof(buf), reply->str, (size_t)reply->len);
        char *sp1 = strchr(buf, ' ');
        char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
        uint64_t id;
        if (sp1 && sp2 && parse_id(buf, (size_t)(sp1 - buf), &id) && strcmp(sp2 + 1, c->tenant) == 0)
            res = feedback_submit(sc, id, strtod(sp1 + 1, NULL), c->good, &thr);
    }
    c->cb(res, thr, c->ud);
    fb_call_free(c);
}

static void served_get(struct fb_call *c)
{
    const char *argv[] = {"GET", c->key};
    if (leo_redis_command_argv(c->sc->redis, on_served_get, c, 2, argv, NULL) != 0) {
        c->cb(LEO_SEMCACHE_FB_ERROR, 0, c->ud);
        fb_call_free(c);
        return;
    }
    c->sc->inflight++;
}

void leo_semcache_feedback(struct leo_semcache *sc, const char *tenant, const char *request_id, bool good,
                           leo_semcache_feedback_cb cb, void *ud)
{
    double thr = 0;
    struct sc_served *s = served_find(sc, request_id);
    if (s) {
        enum leo_semcache_feedback_result res = strcmp(s->tenant, tenant) == 0
                                                    ? feedback_submit(sc, s->entry_id, s->similarity, good, &thr)
                                                    : LEO_SEMCACHE_FB_UNKNOWN;
        cb(res, thr, ud);
        return;
    }
    if (sc->redis == NULL || strlen(request_id) > 96) {
        cb(LEO_SEMCACHE_FB_UNKNOWN, 0, ud);
        return;
    }
    struct fb_call *c = leo_calloc(1, sizeof(*c));
    c->sc = sc;
    copy_str(c->tenant, sizeof(c->tenant), tenant, strlen(tenant));
    snprintf(c->key, sizeof(c->key), SERVED_PREFIX "%s", request_id);
    c->good = good;
    c->cb = cb;
    c->ud = ud;
    served_get(c);
}

/* ---- administration ---- */

int leo_semcache_set_threshold(struct leo_semcache *sc, const char *tenant, const char *model, double threshold)
{
    if (!(threshold >= 0 && threshold <= 1.0) || tenant == NULL || strlen(tenant) > 128 ||
        (model && strlen(model) > 128))
        return LEO_EINVAL;
    set_rule(sc, tenant, model ? model : "", threshold);
    char thr[32];
    snprintf(thr, sizeof(thr), "%.6f", threshold);
    const char *fv[] = {"op", "nthr", "tenant", tenant, "model", model ? model : "", "thr", thr};
    log_append(sc, fv, NULL, 8);
    return 0;
}

void leo_semcache_purge(struct leo_semcache *sc, const char *tenant)
{
    purge_local(sc, tenant);
    const char *fv[] = {"op", "purge", "tenant", tenant ? tenant : ""};
    log_append(sc, fv, NULL, 4);
}

void leo_semcache_stats_json(struct leo_semcache *sc, const char *tenant, struct leo_buf *out)
{
    json_t *arr = json_array();
    for (struct sc_ns *n = sc->all_ns; n; n = n->next_all) {
        if (tenant && strcmp(tenant, n->tenant) != 0)
            continue;
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:f}", "tenant", n->tenant, "model",
                                             n->model, "namespace", n->name, "entries", (json_int_t)n->entries,
                                             "hits", (json_int_t)n->hits, "misses", (json_int_t)n->misses,
                                             "guard_refusals", (json_int_t)n->guard_refusals, "threshold",
                                             ns_threshold(sc, n)));
    }
    char *s = json_dumps(arr, JSON_COMPACT | JSON_REAL_PRECISION(6));
    leo_buf_adds(out, s ? s : "[]");
    free(s);
    json_decref(arr);
}

size_t leo_semcache_entries(const struct leo_semcache *sc)
{
    return sc->nentries;
}

bool leo_semcache_synced(const struct leo_semcache *sc)
{
    return sc->synced;
}

void leo_semcache_metrics_describe(void)
{
    leo_metrics_describe("leo_semcache_lookups_total", LEO_METRIC_COUNTER,
                         "Semantic cache lookups by result (hit, miss, guard: a close entry refused by the guards, "
                         "ineligible, error).");
    leo_metrics_describe("leo_semcache_entries", LEO_METRIC_GAUGE, "Semantic cache entries held (summed over workers).");
    leo_metrics_describe("leo_semcache_feedback_total", LEO_METRIC_COUNTER, "Feedback on semantic hits by rating.");
    leo_metrics_describe("leo_semcache_evictions_total", LEO_METRIC_COUNTER,
                         "Semantic cache entries removed by reason (capacity, expired, feedback, purge, gone).");
    leo_metrics_describe("leo_semcache_sync_total", LEO_METRIC_COUNTER,
                         "Changes read from the shared Redis stream, and read or write errors.");
}

/* ---- configuration ---- */

void leo_semcache_config_defaults(struct leo_semcache_config *c)
{
    memset(c, 0, sizeof(*c));
    c->threshold = LEO_SEMCACHE_DEFAULT_THRESHOLD;
    c->max_entries = 100000;
    c->max_turns = LEO_SEMGUARD_DEFAULT_MAX_TURNS;
    c->max_chars = LEO_SEMGUARD_DEFAULT_MAX_CHARS;
}

void leo_semcache_config_release(struct leo_semcache_config *c)
{
    leo_free(c->embedder);
    leo_free(c->provider_base_url);
    leo_free(c->provider_model);
    leo_free(c->provider_api_key_env);
    for (size_t i = 0; i < c->ntenants; i++)
        leo_free(c->tenants[i].tenant);
    leo_free(c->tenants);
    leo_semcache_config_defaults(c);
}

bool leo_semcache_config_enabled(const struct leo_semcache_config *c, const char *tenant)
{
    for (size_t i = 0; tenant && i < c->ntenants; i++)
        if (strcmp(c->tenants[i].tenant, tenant) == 0)
            return c->tenants[i].enabled;
    return c->enabled;
}

static int cfg_fail(struct leo_buf *err, const char *path, const char *field, const char *what)
{
    if (err)
        leo_buf_addf(err, "%s%s%s: %s", path, field ? "." : "", field ? field : "", what);
    return LEO_ECONFIG;
}

/* Checks that every member of o is one of the names (NULL-terminated). */
static int cfg_known(const json_t *o, const char *const *names, const char *path, struct leo_buf *err)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) {
        bool ok = false;
        for (size_t i = 0; names[i] && !ok; i++)
            ok = strcmp(names[i], k) == 0;
        if (!ok)
            return cfg_fail(err, path, k, "unknown field");
    }
    return 0;
}

static int cfg_uint(const json_t *o, const char *name, uint64_t lo, uint64_t hi, uint64_t *out, const char *path,
                    struct leo_buf *err)
{
    json_t *v = json_object_get(o, name);
    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)lo || (uint64_t)json_integer_value(v) > hi) {
        char what[96];
        snprintf(what, sizeof(what), "must be an integer in %" PRIu64 "..%" PRIu64, lo, hi);
        return cfg_fail(err, path, name, what);
    }
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int cfg_string(const json_t *o, const char *name, char **out, const char *path, struct leo_buf *err)
{
    json_t *v = json_object_get(o, name);
    if (v == NULL)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return cfg_fail(err, path, name, "must be a non-empty string");
    leo_free(*out);
    *out = leo_strdup(json_string_value(v));
    return 0;
}

int leo_semcache_config_parse(const json_t *section, const char *path, struct leo_semcache_config *c,
                              struct leo_buf *err)
{
    leo_semcache_config_defaults(c);
    if (section == NULL)
        return 0;
    static const char *const fields[] = {"enabled", "threshold", "embedder", "provider", "max_entries",
                                         "max_turns", "max_chars", "tenants", NULL};
    char sub[256];
    int rc = 0;
    uint64_t u;
    if (!json_is_object(section)) {
        rc = cfg_fail(err, path, NULL, "must be an object");
        goto fail;
    }
    if ((rc = cfg_known(section, fields, path, err)) != 0)
        goto fail;
    json_t *v = json_object_get(section, "enabled");
    if (v && !json_is_boolean(v)) {
        rc = cfg_fail(err, path, "enabled", "must be a boolean");
        goto fail;
    }
    c->enabled = json_is_true(v);
    v = json_object_get(section, "threshold");
    if (v && !(json_is_number(v) && json_number_value(v) > 0 && json_number_value(v) <= 1)) {
        rc = cfg_fail(err, path, "threshold", "must be a number in (0, 1]");
        goto fail;
    }
    if (v)
        c->threshold = json_number_value(v);
    if ((rc = cfg_string(section, "embedder", &c->embedder, path, err)) != 0)
        goto fail;
    if (c->embedder && strcmp(c->embedder, "local") != 0 && strcmp(c->embedder, "provider") != 0) {
        rc = cfg_fail(err, path, "embedder", "must be \"local\" or \"provider\"");
        goto fail;
    }
    if ((rc = cfg_uint(section, "max_entries", 1, 100000000, &c->max_entries, path, err)) != 0)
        goto fail;
    u = c->max_turns;
    if ((rc = cfg_uint(section, "max_turns", 1, 1000, &u, path, err)) != 0)
        goto fail;
    c->max_turns = (unsigned)u;
    if ((rc = cfg_uint(section, "max_chars", 1, 1000000, &c->max_chars, path, err)) != 0)
        goto fail;
    json_t *prov = json_object_get(section, "provider");
    snprintf(sub, sizeof(sub), "%s.provider", path);
    if (prov) {
        static const char *const pfields[] = {"base_url", "model", "api_key_env", "dimensions", NULL};
        if (!json_is_object(prov)) {
            rc = cfg_fail(err, path, "provider", "must be an object");
            goto fail;
        }
        if ((rc = cfg_known(prov, pfields, sub, err)) != 0 ||
            (rc = cfg_string(prov, "base_url", &c->provider_base_url, sub, err)) != 0 ||
            (rc = cfg_string(prov, "model", &c->provider_model, sub, err)) != 0 ||
            (rc = cfg_string(prov, "api_key_env", &c->provider_api_key_env, sub, err)) != 0)
            goto fail;
        u = 0;
        if ((rc = cfg_uint(prov, "dimensions", 1, LEO_EMBED_MAX_DIM, &u, sub, err)) != 0)
            goto fail;
        c->provider_dimensions = (unsigned)u;
    }
    if (c->embedder && strcmp(c->embedder, "provider") == 0 &&
        (c->provider_base_url == NULL || c->provider_model == NULL)) {
        rc = cfg_fail(err, sub, NULL, "base_url and model are required with the \"provider\" embedder");
        goto fail;
    }
    json_t *tenants = json_object_get(section, "tenants");
    snprintf(sub, sizeof(sub), "%s.tenants", path);
    if (tenants) {
        if (!json_is_object(tenants)) {
            rc = cfg_fail(err, path, "tenants", "must be an object");
            goto fail;
        }
        c->tenants = leo_calloc(json_object_size(tenants) + 1, sizeof(*c->tenants));
        const char *k;
        json_object_foreach(tenants, k, v) {
            static const char *const tfields[] = {"enabled", NULL};
            char tp[512];
            snprintf(tp, sizeof(tp), "%s.%s", sub, k);
            if (!json_is_object(v)) {
                rc = cfg_fail(err, tp, NULL, "must be an object");
                goto fail;
            }
            if ((rc = cfg_known(v, tfields, tp, err)) != 0)
                goto fail;
            json_t *en = json_object_get(v, "enabled");
            if (!json_is_boolean(en)) {
                rc = cfg_fail(err, tp, "enabled", "must be a boolean");
                goto fail;
            }
            c->tenants[c->ntenants].tenant = leo_strdup(k);
            c->tenants[c->ntenants++].enabled = json_is_true(en);
        }
    }
    return 0;
fail:
    leo_semcache_config_release(c);
    return rc;
}
