/*
 * eval.c — leo-cache-eval: precision, recall and false-hit rate of the semantic cache on a labelled set.
 *
 *   leo-cache-eval [--data FILE] [--seed N] [--check THRESHOLD|default] [--min-recall R] [--verbose]
 *                  [--provider-url URL --model NAME [--key-env VAR] [--dimensions D] [--timeout-ms MS]]
 *
 * The set is JSON lines {"a":…,"b":…,"label":"hit"|"miss","kind":…}: "hit" when a cached answer to a may be
 * served for b, "miss" when it must not. For each embedder (`local` always; `provider` when --provider-url and
 * --model are given, with the API key read from the environment variable --key-env names) the tool embeds
 * both prompts of every pair, takes their cosine similarity, runs the false-hit guard (gateway/semguard.h),
 * and prints for each threshold 0.50..0.99: precision, recall and the false-hit rate (misses served / all
 * misses), without and with the guard; then the recommended default (the lowest threshold whose false-hit
 * rate with the guard is below 1%) and, per kind of pair, what that threshold serves.
 *
 * --check T (or "default": LEO_SEMCACHE_DEFAULT_THRESHOLD) makes it a test: exit 1 when, for the local
 * embedder with the guard at T, the false-hit rate is 1% or more, or recall is below --min-recall, or the set
 * has fewer than 300 pairs. Exit 2 on a usage or input error.
 */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/error.h"
#include "gateway/embed.h"
#include "gateway/semguard.h"
#include "gateway/upstream.h"

#define MIN_PAIRS 300
#define T_LO 50
#define T_HI 99

struct pair {
    char *a, *b, *kind;
    bool hit;              /* the label */
    enum leo_semguard_rule guard;
    double sim;
};

struct set {
    struct pair *v;
    size_t n, cap;
    size_t hits, misses;
};

static void usage(void)
{
    fprintf(stderr, "usage: leo-cache-eval [--data FILE] [--seed N] [--check THRESHOLD|default] [--min-recall R]\n"
                    "                      [--verbose] [--provider-url URL --model NAME [--key-env VAR]\n"
                    "                      [--dimensions D] [--timeout-ms MS]]\n");
    exit(2);
}

static int load(const char *path, struct set *s)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "leo-cache-eval: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned lineno = 0;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (len <= 1)
            continue;
        json_error_t err;
        json_t *o = json_loadb(line, (size_t)len, 0, &err);
        const char *a = json_string_value(json_object_get(o, "a"));
        const char *b = json_string_value(json_object_get(o, "b"));
        const char *label = json_string_value(json_object_get(o, "label"));
        const char *kind = json_string_value(json_object_get(o, "kind"));
        if (!a || !b || !label || !kind || (strcmp(label, "hit") != 0 && strcmp(label, "miss") != 0)) {
            fprintf(stderr, "leo-cache-eval: %s:%u: want {\"a\",\"b\",\"label\":\"hit\"|\"miss\",\"kind\"}\n", path,
                    lineno);
            json_decref(o);
            rc = -1;
            break;
        }
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 512;
            s->v = leo_realloc(s->v, s->cap * sizeof(*s->v));
        }
        struct pair *p = &s->v[s->n++];
        p->a = leo_strdup(a);
        p->b = leo_strdup(b);
        p->kind = leo_strdup(kind);
        p->hit = strcmp(label, "hit") == 0;
        p->guard = leo_semguard_check(leo_str_c(a), leo_str_c(b));
        if (p->hit)
            s->hits++;
        else
            s->misses++;
        json_decref(o);
    }
    free(line);
    fclose(f);
    return rc;
}

struct score {
    size_t tp, fp;
    double precision, recall, fhr;
};

static struct score score_at(const struct set *s, double t, bool guard)
{
    struct score r = {0};
    for (size_t i = 0; i < s->n; i++) {
        const struct pair *p = &s->v[i];
        bool served = p->sim >= t && (!guard || p->guard == LEO_SEMGUARD_OK);
        if (served && p->hit)
            r.tp++;
        else if (served)
            r.fp++;
    }
    r.precision = r.tp + r.fp ? (double)r.tp / (double)(r.tp + r.fp) : 1.0;
    r.recall = s->hits ? (double)r.tp / (double)s->hits : 0;
    r.fhr = s->misses ? (double)r.fp / (double)s->misses : 0;
    return r;
}

/* ---- the provider embedder, driven on a loop until every text is embedded ---- */

struct run {
    struct leo_embedder *e;
    struct set *s;
    size_t next; /* 2*pair + side */
    float *va;
    int err;
    bool done;
};

static void embed_next(struct run *r);

static void on_embedded(int err, const float *vec, unsigned dim, const char *msg, void *ud)
{
    struct run *r = ud;
    if (err) {
        fprintf(stderr, "leo-cache-eval: provider: %s\n", msg);
        r->err = err;
        r->done = true;
        return;
    }
    size_t i = r->next / 2;
    if (r->next % 2 == 0)
        memcpy(r->va, vec, sizeof(float) * dim);
    else
        r->s->v[i].sim = leo_embed_cosine(r->va, vec, dim);
    r->next++;
    embed_next(r);
}

static void embed_next(struct run *r)
{
    float vec[LEO_EMBED_MAX_DIM];
    while (r->next < 2 * r->s->n) {
        const struct pair *p = &r->s->v[r->next / 2];
        struct leo_str text = leo_str_c(r->next % 2 == 0 ? p->a : p->b);
        int rc = leo_embed_now(r->e, text, vec);
        if (rc == 0) {
            on_embedded(0, vec, leo_embedder_dim(r->e), "ok", r);
            return;
        }
        rc = leo_embed_start(r->e, text, on_embedded, r, NULL);
        if (rc != 0) {
            fprintf(stderr, "leo-cache-eval: provider: cannot start a call: %s\n", leo_strerror(rc));
            r->err = rc;
            r->done = true;
        }
        return;
    }
    r->done = true;
}

static int run_provider(struct set *s, const struct leo_embed_provider_config *cfg)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct leo_upstream *up = leo_upstream_new(&loop);
    char err[160];
    struct leo_embedder *e = leo_embed_provider_new(up, cfg, err, sizeof(err));
    if (!e) {
        fprintf(stderr, "leo-cache-eval: %s\n", err);
        leo_upstream_close(up);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return -1;
    }
    struct run r = {.e = e, .s = s, .va = leo_malloc(sizeof(float) * LEO_EMBED_MAX_DIM)};
    embed_next(&r);
    while (!r.done)
        uv_run(&loop, UV_RUN_ONCE);
    leo_embedder_free(e);
    leo_upstream_close(up);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    leo_free(r.va);
    return r.err ? -1 : 0;
}

/* ---- the report ---- */

static void fmt_pct(char *out, size_t n, double v)
{
    snprintf(out, n, "%6.2f%%", 100.0 * v);
}

static int report(const struct set *s, const char *name, bool verbose, double check)
{
    printf("\nembedder %s: %zu pairs (%zu hit, %zu miss)\n", name, s->n, s->hits, s->misses);
    printf("%-9s | %-28s | %-28s\n", "", "without guard", "with guard");
    printf("%-9s | %8s %8s %9s | %8s %8s %9s\n", "threshold", "precis.", "recall", "false-hit", "precis.", "recall",
           "false-hit");
    int rec = -1;
    for (int t = T_LO; t <= T_HI; t++) {
        struct score u = score_at(s, t / 100.0, false), g = score_at(s, t / 100.0, true);
        char a[16], b[16], c[16], d[16], e[16], f[16];
        fmt_pct(a, sizeof(a), u.precision);
        fmt_pct(b, sizeof(b), u.recall);
        fmt_pct(c, sizeof(c), u.fhr);
        fmt_pct(d, sizeof(d), g.precision);
        fmt_pct(e, sizeof(e), g.recall);
        fmt_pct(f, sizeof(f), g.fhr);
        printf("%9.2f | %8s %8s %9s | %8s %8s %9s\n", t / 100.0, a, b, c, d, e, f);
        if (rec < 0 && g.fhr < 0.01)
            rec = t;
    }
    if (rec >= 0) {
        struct score g = score_at(s, rec / 100.0, true);
        printf("recommended default for %s: %.2f (with the guard: recall %.2f%%, precision %.2f%%, false-hit rate "
               "%.2f%%)\n",
               name, rec / 100.0, 100 * g.recall, 100 * g.precision, 100 * g.fhr);
    } else {
        printf("recommended default for %s: none (no threshold keeps the false-hit rate below 1%%)\n", name);
    }

    /* per kind, at the threshold under check (else the recommended one) */
    double t = check > 0 ? check : rec >= 0 ? rec / 100.0 : 0.99;
    printf("per kind at %.2f with the guard (served / pairs; refusals by rule for misses):\n", t);
    const char *kinds[64];
    size_t nk = 0;
    for (size_t i = 0; i < s->n && nk < 64; i++) {
        bool seen = false;
        for (size_t k = 0; k < nk && !seen; k++)
            seen = strcmp(kinds[k], s->v[i].kind) == 0;
        if (!seen)
            kinds[nk++] = s->v[i].kind;
    }
    for (size_t k = 0; k < nk; k++) {
        size_t hit_n = 0, hit_served = 0, miss_n = 0, miss_served = 0, by_rule[LEO_SEMGUARD_NRULES] = {0};
        for (size_t i = 0; i < s->n; i++) {
            const struct pair *p = &s->v[i];
            if (strcmp(p->kind, kinds[k]) != 0)
                continue;
            bool served = p->sim >= t && p->guard == LEO_SEMGUARD_OK;
            if (p->hit) {
                hit_n++;
                hit_served += served;
            } else {
                miss_n++;
                miss_served += served;
                by_rule[p->guard]++;
            }
        }
        printf("  %-12s hits %3zu/%-3zu  misses %3zu/%-3zu", kinds[k], hit_served, hit_n, miss_served, miss_n);
        for (int r = 1; r < LEO_SEMGUARD_NRULES; r++) {
            if (by_rule[r])
                printf("  %s:%zu", leo_semguard_rule_name((enum leo_semguard_rule)r), by_rule[r]);
        }
        printf("\n");
    }
    if (verbose) {
        for (size_t i = 0; i < s->n; i++) {
            const struct pair *p = &s->v[i];
            bool served = p->sim >= t && p->guard == LEO_SEMGUARD_OK;
            if (served != p->hit)
                printf("  %s %.3f guard=%s [%s] %s | %s\n", p->hit ? "MISSED" : "FALSE-HIT", p->sim,
                       leo_semguard_rule_name(p->guard), p->kind, p->a, p->b);
        }
    }
    fflush(stdout);
    return rec;
}

int main(int argc, char **argv)
{
    const char *data = NULL, *provider_url = NULL, *model = NULL, *key_env = NULL;
    double check = 0, min_recall = 0;
    uint64_t seed = LEO_EMBED_DEFAULT_SEED;
    unsigned dims = 0;
    uint64_t timeout_ms = 30000;
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(o, "--verbose") == 0) {
            verbose = true;
            continue;
        }
        if (!v)
            usage();
        i++;
        errno = 0;
        if (strcmp(o, "--data") == 0) {
            data = v;
        } else if (strcmp(o, "--check") == 0) {
            check = strcmp(v, "default") == 0 ? LEO_SEMCACHE_DEFAULT_THRESHOLD : strtod(v, &end);
            if ((end && *end) || check <= 0 || check > 1)
                usage();
        } else if (strcmp(o, "--min-recall") == 0) {
            min_recall = strtod(v, &end);
            if (*end || min_recall < 0 || min_recall > 1)
                usage();
        } else if (strcmp(o, "--seed") == 0) {
            seed = strtoull(v, &end, 0);
            if (*end || errno)
                usage();
        } else if (strcmp(o, "--provider-url") == 0) {
            provider_url = v;
        } else if (strcmp(o, "--model") == 0) {
            model = v;
        } else if (strcmp(o, "--key-env") == 0) {
            key_env = v;
        } else if (strcmp(o, "--dimensions") == 0) {
            unsigned long d = strtoul(v, &end, 10);
            if (*end || d > LEO_EMBED_MAX_DIM)
                usage();
            dims = (unsigned)d;
        } else if (strcmp(o, "--timeout-ms") == 0) {
            timeout_ms = strtoull(v, &end, 10);
            if (*end || errno)
                usage();
        } else {
            usage();
        }
    }
    if (!data)
        data = "tests/eval/pairs.jsonl";
    if ((provider_url == NULL) != (model == NULL)) {
        fprintf(stderr, "leo-cache-eval: --provider-url and --model go together\n");
        return 2;
    }

    struct set s = {0};
    if (load(data, &s) != 0)
        return 2;

    /* local */
    struct leo_embedder *local = leo_embed_local_new(seed);
    float *va = leo_malloc(sizeof(float) * LEO_EMBED_LOCAL_DIM), *vb = leo_malloc(sizeof(float) * LEO_EMBED_LOCAL_DIM);
    for (size_t i = 0; i < s.n; i++) {
        leo_embed_now(local, leo_str_c(s.v[i].a), va);
        leo_embed_now(local, leo_str_c(s.v[i].b), vb);
        s.v[i].sim = leo_embed_cosine(va, vb, LEO_EMBED_LOCAL_DIM);
    }
    leo_free(va);
    leo_free(vb);
    leo_embedder_free(local);
    printf("leo-cache-eval: %s, local seed 0x%016llx\n", data, (unsigned long long)seed);
    report(&s, "local", verbose, check);

    int status = 0;
    if (check > 0) {
        struct score g = score_at(&s, check, true);
        printf("check local at %.2f with the guard: false-hit rate %.2f%% (must be < 1%%), recall %.2f%% (floor "
               "%.2f%%), %zu pairs (floor %d)\n",
               check, 100 * g.fhr, 100 * g.recall, 100 * min_recall, s.n, MIN_PAIRS);
        if (g.fhr >= 0.01 || g.recall < min_recall || s.n < MIN_PAIRS) {
            printf("check FAILED\n");
            status = 1;
        } else {
            printf("check passed\n");
        }
    }

    if (provider_url) {
        const char *key = key_env ? getenv(key_env) : NULL;
        if (key_env && !key) {
            fprintf(stderr, "leo-cache-eval: the environment variable %s is not set\n", key_env);
            status = status ? status : 2;
        } else {
            struct leo_embed_provider_config cfg = {.base_url = provider_url,
                                                    .api_key = key,
                                                    .model = model,
                                                    .dimensions = dims,
                                                    .timeout_ms = timeout_ms,
                                                    .cache_entries = 2 * s.n + 1};
            if (run_provider(&s, &cfg) == 0)
                report(&s, "provider", verbose, 0);
            else
                status = status ? status : 2;
        }
    }

    for (size_t i = 0; i < s.n; i++) {
        leo_free(s.v[i].a);
        leo_free(s.v[i].b);
        leo_free(s.v[i].kind);
    }
    leo_free(s.v);
    return status;
}
