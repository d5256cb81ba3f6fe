/*
 * embed.c — the `local` and `provider` embedders (see embed.h).
 *
 * local: the text is normalised (embed.h: leo_embed_normalize) and cut into words; the features are the
 * words, adjacent word pairs and the character 3..5-grams of each word with ^ and $ marking its ends. Each
 * feature is hashed with a seeded 64-bit hash; its weight is its kind's weight (stop words and pairs of stop
 * words weigh less) times 1 + ln(tf). The projection is feature hashing with signs, which is a sparse random
 * projection (Weinberger et al. 2009): each feature adds ±weight/√2 to two coordinates chosen by its hash, so
 * one collision does not merge two features entirely. The vector is then unit-normalised.
 * Known limit: this is lexical. Paraphrases that share few words ("How do I quit vim?" / "exit the vi
 * editor") score low, and texts that differ in one decisive word score high; the guards of semguard.h are
 * there for the second case, and the `provider` embedder for the first.
 *
 * provider: POST {base_url}/embeddings with {"model","input","encoding_format":"float"[,"dimensions"]}, one
 * text per call, through the upstream client. Answers are kept in an LRU keyed by BLAKE2b-128 of the text
 * (collisions are not a practical concern at that width).
 */
#include "embed.h"

#include <jansson.h>
#include <math.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "upstream.h"

/* ---- shared ---- */

int leo_embed_now(struct leo_embedder *e, struct leo_str text, float *out)
{
    return e->ops->embed_now(e, text, out);
}

int leo_embed_start(struct leo_embedder *e, struct leo_str text, leo_embed_cb cb, void *ud,
                    struct leo_embed_op **op)
{
    if (!e->ops->embed_start)
        return LEO_EINVAL;
    return e->ops->embed_start(e, text, cb, ud, op);
}

void leo_embedder_free(struct leo_embedder *e)
{
    if (e)
        e->ops->free(e);
}

double leo_embed_cosine(const float *a, const float *b, unsigned dim)
{
    double dot = 0, na = 0, nb = 0;
    for (unsigned i = 0; i < dim; i++) {
        dot += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    if (na == 0 || nb == 0)
        return 0;
    return dot / (sqrt(na) * sqrt(nb));
}

static void normalize_vec(float *v, unsigned dim)
{
    double n = 0;
    for (unsigned i = 0; i < dim; i++)
        n += (double)v[i] * v[i];
    if (n == 0)
        return;
    double inv = 1.0 / sqrt(n);
    for (unsigned i = 0; i < dim; i++)
        v[i] = (float)(v[i] * inv);
}

void leo_embed_metrics_describe(void)
{
    leo_metrics_describe("leo_embed_requests_total", LEO_METRIC_COUNTER,
                         "Embeddings computed, by embedder and result (ok, cache_hit, error).");
    leo_metrics_describe("leo_embed_duration_seconds", LEO_METRIC_HISTOGRAM,
                         "Time of a provider embeddings call, by embedder.");
}

/* ---- hashing ---- */

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33;
    k *= UINT64_C(0xc4ceb9fe1a85ec53);
    k ^= k >> 33;
    return k;
}

/* A seeded 64-bit hash in the manner of MurmurHash3's 64-bit lanes: fast, well mixed, not cryptographic
 * (nothing here is adversarial: a collision only adds noise to one coordinate). */
static uint64_t hash64(uint64_t seed, const void *data, size_t n)
{
    const unsigned char *p = data;
    const uint64_t c1 = UINT64_C(0x87c37b91114253d5), c2 = UINT64_C(0x4cf5ad432745937f);
    uint64_t h = seed ^ (n * UINT64_C(0x9e3779b97f4a7c15));
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t k;
        memcpy(&k, p + i, 8);
        k *= c1;
        k = rotl64(k, 31);
        k *= c2;
        h ^= k;
        h = rotl64(h, 27) * 5 + 0x52dce729;
    }
    uint64_t k = 0;
    for (size_t j = 0; i + j < n; j++)
        k |= (uint64_t)p[i + j] << (8 * j);
    if (n & 7) {
        k *= c1;
        k = rotl64(k, 31);
        k *= c2;
        h ^= k;
    }
    return fmix64(h ^ n);
}

/* ---- normalisation ---- */

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Length of the UTF-8 sequence that starts with byte c (1 for a stray continuation byte). */
static size_t utf8_len(unsigned char c)
{
    if (c >= 0xf0 && c < 0xf8)
        return 4;
    if (c >= 0xe0)
        return 3;
    if (c >= 0xc2)
        return 2;
    return 1;
}

static void sep(struct leo_buf *out, size_t start)
{
    if (out->len > start && out->p[out->len - 1] != ' ')
        leo_buf_addch(out, ' ');
}

void leo_embed_normalize(struct leo_str text, struct leo_buf *out)
{
    size_t start = out->len;
    const unsigned char *s = (const unsigned char *)text.p;
    size_t n = text.len;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        char prev = out->len > start ? out->p[out->len - 1] : ' ';
        int next = i + 1 < n ? s[i + 1] : -1;
        if (c < 0x80) {
            if (is_alpha(c) || is_digit(c)) {
                leo_buf_addch(out, (char)(c >= 'A' && c <= 'Z' ? c + 32 : c));
            } else if ((c == '.' || c == ',') && is_digit((unsigned char)prev) && next >= 0 && is_digit(next)) {
                leo_buf_addch(out, (char)c); /* 3.5, 1,000 */
            } else if (c == '%' && is_digit((unsigned char)prev)) {
                leo_buf_addch(out, '%');
            } else if (c == '-' && prev == ' ' && next >= 0 && is_digit(next)) {
                leo_buf_addch(out, '-'); /* a negative number */
            } else if (c == '\'' && is_alpha((unsigned char)prev) && next >= 0 && is_alpha(next)) {
                /* don't → dont: the word stays whole */
            } else {
                sep(out, start);
            }
            i++;
            continue;
        }
        size_t l = utf8_len(c);
        if (i + l > n)
            l = n - i;
        if (l == 2 && c == 0xc3 && s[i + 1] >= 0x80 && s[i + 1] <= 0x9e && s[i + 1] != 0x97) {
            /* Latin-1 capitals À..Þ (not ×) → à..þ */
            leo_buf_addch(out, (char)0xc3);
            leo_buf_addch(out, (char)(s[i + 1] + 0x20));
        } else if (l == 2 && c == 0xc2) {
            sep(out, start); /* U+0080..U+00BF: Latin-1 punctuation and symbols (« » ¿ ¡ °) */
        } else if (l == 2 && c == 0xc3 && s[i + 1] == 0x97) {
            sep(out, start); /* × */
        } else if (l == 3 && c == 0xe2 && s[i + 1] == 0x80) {
            /* U+2000..U+203F: spaces, dashes, quotes; ’ inside a word is an apostrophe */
            if (s[i + 2] == 0x99 && is_alpha((unsigned char)prev) && i + 3 < n && is_alpha(s[i + 3]))
                ;
            else
                sep(out, start);
        } else {
            leo_buf_add(out, s + i, l); /* other letters (accented, Greek, CJK...) as they are */
        }
        i += l;
    }
    if (out->len > start && out->p[out->len - 1] == ' ') {
        out->len--;
        out->p[out->len] = '\0';
    }
}

/* ---- local ---- */

#define W_WORD 1.0
#define W_STOP 0.25
#define W_BIGRAM 0.8
#define W_BIGRAM_STOP 0.3
#define W_CHAR 0.3
#define MAX_WORDS 512

/* Function words of English: they carry little of a question's meaning. Negations are not here. */
static const char *const stop_words[] = {
    "a",     "an",    "the",   "is",     "are",   "was",  "were",   "be",   "been",  "to",    "of",     "in",
    "on",    "at",    "for",   "and",    "or",    "by",   "with",   "from", "as",    "it",    "its",    "this",
    "that",  "these", "those", "i",      "me",    "my",   "we",     "our",  "you",   "your",  "do",     "does",
    "did",   "can",   "could", "would",  "should", "will", "shall", "may",  "might", "please", "how",  "what",
    "which", "some",  "any",   "there",  "here",  "about", "into",  "up",   "so",    "if",    "then",   "just",
    "get",   "have",  "has",   "had",    "am",    "s",    "way",    "tell", "want",  "need",  "know",   "like",
};

struct feat {
    uint64_t h;
    float w;
};

struct local {
    struct leo_embedder base;
    uint64_t seed;
    uint64_t stop_hash[sizeof(stop_words) / sizeof(stop_words[0])];
};

static bool is_stop(const struct local *l, uint64_t wh)
{
    for (size_t i = 0; i < sizeof(stop_words) / sizeof(stop_words[0]); i++) {
        if (l->stop_hash[i] == wh)
            return true;
    }
    return false;
}

struct feats {
    struct feat *v;
    size_t n, cap;
};

static void feat_add(struct feats *f, uint64_t h, double w)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 256;
        f->v = leo_realloc(f->v, f->cap * sizeof(*f->v));
    }
    f->v[f->n++] = (struct feat){h, (float)w};
}

static int feat_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct feat *)a)->h, y = ((const struct feat *)b)->h;
    return x < y ? -1 : x > y;
}

/* A feature's hash covers its kind, so the word "ing" and the 3-gram "ing" are different features. */
static uint64_t feat_hash(uint64_t seed, char kind, const char *p, size_t n)
{
    return hash64(seed ^ (uint64_t)(unsigned char)kind * UINT64_C(0x100000001b3), p, n);
}

static int local_embed_now(struct leo_embedder *e, struct leo_str text, float *out)
{
    struct local *l = (struct local *)e;
    struct leo_buf norm = LEO_BUF_INIT;
    leo_embed_normalize(text, &norm);

    struct leo_str words[MAX_WORDS];
    bool stop[MAX_WORDS];
    size_t nw = 0;
    for (size_t i = 0; i < norm.len && nw < MAX_WORDS;) {
        size_t j = i;
        while (j < norm.len && norm.p[j] != ' ')
            j++;
        words[nw] = leo_str_n(norm.p + i, j - i);
        stop[nw] = is_stop(l, hash64(l->seed, words[nw].p, words[nw].len));
        nw++;
        i = j + 1;
    }

    struct feats f = {0};
    char gram[16];
    for (size_t i = 0; i < nw; i++) {
        struct leo_str w = words[i];
        feat_add(&f, feat_hash(l->seed, 'w', w.p, w.len), stop[i] ? W_STOP : W_WORD);
        if (i + 1 < nw) {
            /* the pair's hash: both words with a separator byte that normalised text never contains */
            uint64_t h = feat_hash(l->seed, 'b', w.p, w.len);
            h = hash64(h, "\x01", 1) ^ feat_hash(l->seed, 'B', words[i + 1].p, words[i + 1].len);
            feat_add(&f, fmix64(h), stop[i] && stop[i + 1] ? W_BIGRAM_STOP : W_BIGRAM);
        }
        if (stop[i] || w.len < 3 || is_digit((unsigned char)w.p[0]) || w.p[0] == '-')
            continue; /* numbers and function words: the word itself says it all */
        /* ^word$ n-grams, counted in bytes (a multibyte letter may be split; that is consistent) */
        size_t plen = w.len + 2;
        for (size_t n = 3; n <= 5; n++) {
            for (size_t s = 0; s + n <= plen; s++) {
                for (size_t k = 0; k < n; k++) {
                    size_t pos = s + k;
                    gram[k] = pos == 0 ? '^' : pos == plen - 1 ? '$' : w.p[pos - 1];
                }
                feat_add(&f, feat_hash(l->seed, 'c', gram, n), W_CHAR);
            }
        }
    }

    memset(out, 0, sizeof(float) * e->dim);
    if (f.n)
        qsort(f.v, f.n, sizeof(*f.v), feat_cmp);
    for (size_t i = 0; i < f.n;) {
        size_t j = i;
        while (j < f.n && f.v[j].h == f.v[i].h)
            j++;
        double v = f.v[i].w * (1.0 + log((double)(j - i))) * M_SQRT1_2;
        uint64_t h = f.v[i].h, h2 = fmix64(h ^ l->seed);
        out[h % e->dim] += (float)((h >> 63) ? -v : v);
        out[h2 % e->dim] += (float)((h2 >> 63) ? -v : v);
        i = j;
    }
    normalize_vec(out, e->dim);
    leo_free(f.v);
    leo_buf_release(&norm);
    leo_metrics_add("leo_embed_requests_total", "embedder=\"local\",result=\"ok\"", 1);
    return 0;
}

static void local_free(struct leo_embedder *e)
{
    leo_free(e);
}

static const struct leo_embedder_ops local_ops = {"local", local_embed_now, NULL, NULL, local_free};

struct leo_embedder *leo_embed_local_new(uint64_t seed)
{
    struct local *l = leo_new(struct local);
    l->base.ops = &local_ops;
    l->base.dim = LEO_EMBED_LOCAL_DIM;
    l->seed = seed;
    for (size_t i = 0; i < sizeof(stop_words) / sizeof(stop_words[0]); i++)
        l->stop_hash[i] = hash64(seed, stop_words[i], strlen(stop_words[i]));
    return &l->base;
}

/* ---- provider: the LRU ---- */

#define KEY_BYTES 16
#define NIL ((uint32_t)-1)

struct lru_entry {
    unsigned char key[KEY_BYTES];
    uint32_t prev, next; /* recency list, most recent at head */
    uint32_t hnext;      /* bucket chain */
    float *vec;
};

struct lru {
    struct lru_entry *e;
    uint32_t *buckets;
    uint32_t cap, nbuckets, count, head, tail, free_next;
};

static void lru_init(struct lru *c, size_t cap)
{
    c->cap = (uint32_t)cap;
    c->nbuckets = 1;
    while (c->nbuckets < c->cap * 2)
        c->nbuckets <<= 1;
    c->e = leo_calloc(c->cap, sizeof(*c->e));
    c->buckets = leo_malloc(sizeof(uint32_t) * c->nbuckets);
    for (uint32_t i = 0; i < c->nbuckets; i++)
        c->buckets[i] = NIL;
    c->head = c->tail = NIL;
    c->count = 0;
    c->free_next = 0;
}

static void lru_release(struct lru *c)
{
    for (uint32_t i = 0; i < c->cap; i++)
        leo_free(c->e[i].vec);
    leo_free(c->e);
    leo_free(c->buckets);
}

static uint32_t lru_bucket(const struct lru *c, const unsigned char *key)
{
    uint32_t b;
    memcpy(&b, key, sizeof(b));
    return b & (c->nbuckets - 1);
}

static void lru_unlink(struct lru *c, uint32_t i)
{
    struct lru_entry *x = &c->e[i];
    if (x->prev != NIL)
        c->e[x->prev].next = x->next;
    else
        c->head = x->next;
    if (x->next != NIL)
        c->e[x->next].prev = x->prev;
    else
        c->tail = x->prev;
}

static void lru_push_front(struct lru *c, uint32_t i)
{
    struct lru_entry *x = &c->e[i];
    x->prev = NIL;
    x->next = c->head;
    if (c->head != NIL)
        c->e[c->head].prev = i;
    c->head = i;
    if (c->tail == NIL)
        c->tail = i;
}

static const float *lru_get(struct lru *c, const unsigned char *key)
{
    for (uint32_t i = c->buckets[lru_bucket(c, key)]; i != NIL; i = c->e[i].hnext) {
        if (memcmp(c->e[i].key, key, KEY_BYTES) == 0) {
            lru_unlink(c, i);
            lru_push_front(c, i);
            return c->e[i].vec;
        }
    }
    return NULL;
}

static void lru_put(struct lru *c, const unsigned char *key, const float *vec, unsigned dim)
{
    if (lru_get(c, key))
        return;
    uint32_t i;
    if (c->free_next < c->cap) {
        i = c->free_next++;
        c->count++;
    } else {
        /* evict the least recently used: unlink it from its bucket chain (chains are short: load ≤ 1/2) */
        i = c->tail;
        lru_unlink(c, i);
        uint32_t *pp = &c->buckets[lru_bucket(c, c->e[i].key)];
        while (*pp != i)
            pp = &c->e[*pp].hnext;
        *pp = c->e[i].hnext;
    }
    struct lru_entry *x = &c->e[i];
    memcpy(x->key, key, KEY_BYTES);
    x->vec = leo_realloc(x->vec, sizeof(float) * dim);
    memcpy(x->vec, vec, sizeof(float) * dim);
    uint32_t b = lru_bucket(c, key);
    x->hnext = c->buckets[b];
    c->buckets[b] = i;
    lru_push_front(c, i);
}

/* ---- provider ---- */

struct provider {
    struct leo_embedder base;
    struct leo_upstream *up;
    char *url;
    char *model;
    char *auth; /* "Bearer <key>", NULL when no key */
    struct leo_http_header *headers;
    size_t nheaders;
    char *header_store; /* the copied names and values */
    unsigned want_dim;
    uint64_t timeout_ms;
    size_t max_response;
    struct lru cache;
    struct leo_embed_op *ops; /* in flight */
    struct leo_embed_stats stats;
};

struct leo_embed_op {
    struct provider *p;
    struct leo_upstream_xfer *xfer;
    leo_embed_cb cb;
    void *ud;
    unsigned char key[KEY_BYTES];
    struct leo_buf body;
    int status;
    uint64_t started_ns;
    struct leo_embed_op *prev, *next;
};

static void text_key(struct leo_str text, unsigned char key[KEY_BYTES])
{
    crypto_generichash(key, KEY_BYTES, (const unsigned char *)text.p, text.len, NULL, 0);
}

static int provider_embed_now(struct leo_embedder *e, struct leo_str text, float *out)
{
    struct provider *p = (struct provider *)e;
    unsigned char key[KEY_BYTES];
    text_key(text, key);
    const float *v = e->dim ? lru_get(&p->cache, key) : NULL;
    if (!v)
        return UV_EAGAIN;
    memcpy(out, v, sizeof(float) * e->dim);
    p->stats.cache_hits++;
    leo_metrics_add("leo_embed_requests_total", "embedder=\"provider\",result=\"cache_hit\"", 1);
    return 0;
}

static void op_unlink(struct leo_embed_op *op)
{
    struct provider *p = op->p;
    if (op->prev)
        op->prev->next = op->next;
    else
        p->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->prev = op->next = NULL;
}

static void op_free(struct leo_embed_op *op)
{
    leo_buf_release(&op->body);
    leo_free(op);
}

/* Ends an operation: unlinks it first (so the callback may start others or free nothing of ours), then
 * calls back, then frees. */
static void op_finish(struct leo_embed_op *op, int err, const float *vec, unsigned dim, const char *msg)
{
    struct provider *p = op->p;
    op_unlink(op);
    leo_metrics_observe("leo_embed_duration_seconds", "embedder=\"provider\"",
                        (double)(uv_hrtime() - op->started_ns) / 1e9);
    if (err) {
        p->stats.failures++;
        leo_metrics_add("leo_embed_requests_total", "embedder=\"provider\",result=\"error\"", 1);
    } else {
        leo_metrics_add("leo_embed_requests_total", "embedder=\"provider\",result=\"ok\"", 1);
    }
    op->cb(err, vec, dim, msg, op->ud);
    op_free(op);
}

static void on_up_headers(struct leo_upstream_xfer *x, int status, const struct leo_http_header *headers,
                          size_t nheaders, void *ud)
{
    struct leo_embed_op *op = ud;
    op->status = status;
}

static void on_up_data(struct leo_upstream_xfer *x, const char *data, size_t len, void *ud)
{
    struct leo_embed_op *op = ud;
    if (leo_buf_add(&op->body, data, len) == 0)
        return;
    leo_upstream_cancel(x); /* no further callback: we finish it here */
    op->xfer = NULL;
    op_finish(op, LEO_ETOOBIG, NULL, 0, "embeddings answer exceeds its size cap");
}

/* Reads data[0].embedding: an array of numbers, or a base64 string of little-endian float32 (what the
 * OpenAI SDKs ask for; we ask for floats, but some servers ignore encoding_format). */
static int parse_answer(struct provider *p, const char *body, size_t len, float *out, unsigned *dim,
                        char *msg, size_t msglen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    json_t *emb = json_object_get(json_array_get(json_object_get(root, "data"), 0), "embedding");
    int rc = 0;
    unsigned n = 0;
    if (json_is_array(emb)) {
        size_t count = json_array_size(emb);
        if (count == 0 || count > LEO_EMBED_MAX_DIM) {
            snprintf(msg, msglen, "embeddings answer has %zu dimensions (1..%d allowed)", count, LEO_EMBED_MAX_DIM);
            rc = LEO_EPARSE;
            goto done;
        }
        for (size_t i = 0; i < count; i++) {
            json_t *v = json_array_get(emb, i);
            if (!json_is_number(v)) {
                snprintf(msg, msglen, "embeddings answer: component %zu is not a number", i);
                rc = LEO_EPARSE;
                goto done;
            }
            out[i] = (float)json_number_value(v);
        }
        n = (unsigned)count;
    } else if (json_is_string(emb)) {
        const char *s = json_string_value(emb);
        size_t slen = json_string_length(emb), blen = 0;
        unsigned char *bytes = leo_malloc(slen);
        if (sodium_base642bin(bytes, slen, s, slen, NULL, &blen, NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
            blen % 4 != 0 || blen == 0 || blen / 4 > LEO_EMBED_MAX_DIM) {
            leo_free(bytes);
            snprintf(msg, msglen, "embeddings answer: bad base64 vector");
            rc = LEO_EPARSE;
            goto done;
        }
        n = (unsigned)(blen / 4);
        for (unsigned i = 0; i < n; i++) {
            uint32_t u = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
                         (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
            memcpy(&out[i], &u, 4);
        }
        leo_free(bytes);
    } else {
        snprintf(msg, msglen, "embeddings answer has no data[0].embedding");
        rc = LEO_EPARSE;
        goto done;
    }
    for (unsigned i = 0; i < n; i++) {
        if (!isfinite(out[i])) {
            snprintf(msg, msglen, "embeddings answer: component %u is not finite", i);
            rc = LEO_EPARSE;
            goto done;
        }
    }
    if ((p->want_dim && n != p->want_dim) || (p->base.dim && n != p->base.dim)) {
        snprintf(msg, msglen, "embeddings answer has %u dimensions, expected %u", n,
                 p->want_dim ? p->want_dim : p->base.dim);
        rc = LEO_EPARSE;
        goto done;
    }
    *dim = n;
done:
    json_decref(root);
    return rc;
}

static void on_up_done(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *umsg,
                       void *ud)
{
    struct leo_embed_op *op = ud;
    struct provider *p = op->p;
    op->xfer = NULL;
    char msg[160];
    if (err) {
        snprintf(msg, sizeof(msg), "embeddings call failed: %s", umsg);
        op_finish(op, err, NULL, 0, msg);
        return;
    }
    if (op->status != 200) {
        /* the body is not quoted: some providers echo part of the key in their error messages */
        snprintf(msg, sizeof(msg), "embeddings upstream answered status %d", op->status);
        op_finish(op, LEO_EUPSTREAM, NULL, 0, msg);
        return;
    }
    float *vec = leo_malloc(sizeof(float) * LEO_EMBED_MAX_DIM);
    unsigned dim = 0;
    int rc = parse_answer(p, op->body.p, op->body.len, vec, &dim, msg, sizeof(msg));
    if (rc) {
        leo_free(vec);
        op_finish(op, rc, NULL, 0, msg);
        return;
    }
    normalize_vec(vec, dim);
    if (!p->base.dim)
        p->base.dim = dim;
    lru_put(&p->cache, op->key, vec, dim);
    p->stats.cached = p->cache.count;
    op_finish(op, 0, vec, dim, "ok");
    leo_free(vec);
}

static const struct leo_upstream_callbacks up_cbs = {on_up_headers, on_up_data, on_up_done};

#define MAX_TEXT_BYTES (256 * 1024)

static int provider_embed_start(struct leo_embedder *e, struct leo_str text, leo_embed_cb cb, void *ud,
                                struct leo_embed_op **opp)
{
    struct provider *p = (struct provider *)e;
    if (text.len > MAX_TEXT_BYTES)
        return LEO_ETOOBIG;
    struct leo_buf body = LEO_BUF_INIT;
    leo_buf_adds(&body, "{\"model\":\"");
    leo_buf_add_json_escaped(&body, p->model, strlen(p->model));
    leo_buf_adds(&body, "\",\"input\":\"");
    leo_buf_add_json_escaped(&body, text.p, text.len);
    leo_buf_adds(&body, "\",\"encoding_format\":\"float\"");
    if (p->want_dim)
        leo_buf_addf(&body, ",\"dimensions\":%u", p->want_dim);
    leo_buf_addch(&body, '}');

    struct leo_http_header h[16];
    size_t nh = 0;
    h[nh++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("application/json")};
    if (p->auth)
        h[nh++] = (struct leo_http_header){LEO_STR_LIT("Authorization"), leo_str_c(p->auth)};
    for (size_t i = 0; i < p->nheaders && nh < sizeof(h) / sizeof(h[0]); i++)
        h[nh++] = p->headers[i];

    struct leo_embed_op *op = leo_new(struct leo_embed_op);
    op->p = p;
    op->cb = cb;
    op->ud = ud;
    op->body = (struct leo_buf)LEO_BUF_INIT;
    op->body.max = p->max_response;
    op->started_ns = uv_hrtime();
    text_key(text, op->key);
    struct leo_upstream_request req = {
        .method = "POST",
        .url = p->url,
        .headers = h,
        .nheaders = nh,
        .body = body.p,
        .body_len = body.len,
        .connect_timeout_ms = p->timeout_ms,
        .first_byte_timeout_ms = p->timeout_ms,
        .total_timeout_ms = p->timeout_ms,
    };
    op->xfer = leo_upstream_start(p->up, &req, &up_cbs, op);
    leo_buf_release(&body);
    if (!op->xfer) {
        op_free(op);
        return LEO_EUPSTREAM;
    }
    p->stats.calls++;
    op->next = p->ops;
    if (p->ops)
        p->ops->prev = op;
    p->ops = op;
    if (opp)
        *opp = op;
    return 0;
}

static void provider_cancel(struct leo_embed_op *op)
{
    if (op->xfer)
        leo_upstream_cancel(op->xfer);
    op->xfer = NULL;
    op_unlink(op);
    op_free(op);
}

static void provider_free(struct leo_embedder *e)
{
    struct provider *p = (struct provider *)e;
    while (p->ops)
        provider_cancel(p->ops);
    lru_release(&p->cache);
    if (p->auth) {
        sodium_memzero(p->auth, strlen(p->auth));
        leo_free(p->auth);
    }
    leo_free(p->url);
    leo_free(p->model);
    leo_free(p->headers);
    leo_free(p->header_store);
    leo_free(p);
}

static const struct leo_embedder_ops provider_ops = {"provider", provider_embed_now, provider_embed_start,
                                                     provider_cancel, provider_free};

/* Only the provider has asynchronous operations, so an op always belongs to one. */
void leo_embed_cancel(struct leo_embed_op *op)
{
    op->p->base.ops->cancel(op);
}

struct leo_embedder *leo_embed_provider_new(struct leo_upstream *up, const struct leo_embed_provider_config *cfg,
                                            char *err, size_t errlen)
{
    if (!cfg->base_url || !*cfg->base_url) {
        snprintf(err, errlen, "embedder: base_url is missing");
        return NULL;
    }
    if (!cfg->model || !*cfg->model) {
        snprintf(err, errlen, "embedder: model is missing");
        return NULL;
    }
    if (cfg->dimensions > LEO_EMBED_MAX_DIM) {
        snprintf(err, errlen, "embedder: dimensions %u is above the limit of %d", cfg->dimensions,
                 LEO_EMBED_MAX_DIM);
        return NULL;
    }
    struct provider *p = leo_new(struct provider);
    p->base.ops = &provider_ops;
    p->base.dim = cfg->dimensions;
    p->want_dim = cfg->dimensions;
    p->up = up;
    struct leo_buf b = LEO_BUF_INIT;
    size_t ulen = strlen(cfg->base_url);
    while (ulen && cfg->base_url[ulen - 1] == '/')
        ulen--;
    leo_buf_add(&b, cfg->base_url, ulen);
    leo_buf_adds(&b, "/embeddings");
    p->url = leo_buf_detach(&b, NULL);
    p->model = leo_strdup(cfg->model);
    if (cfg->api_key && *cfg->api_key) {
        leo_buf_addf(&b, "Bearer %s", cfg->api_key);
        p->auth = leo_buf_detach(&b, NULL);
    }
    if (cfg->nheaders) {
        size_t total = 0;
        for (size_t i = 0; i < cfg->nheaders; i++)
            total += cfg->headers[i].name.len + cfg->headers[i].value.len;
        p->header_store = leo_malloc(total ? total : 1);
        p->headers = leo_calloc(cfg->nheaders, sizeof(*p->headers));
        char *s = p->header_store;
        for (size_t i = 0; i < cfg->nheaders; i++) {
            memcpy(s, cfg->headers[i].name.p, cfg->headers[i].name.len);
            p->headers[i].name = leo_str_n(s, cfg->headers[i].name.len);
            s += cfg->headers[i].name.len;
            memcpy(s, cfg->headers[i].value.p, cfg->headers[i].value.len);
            p->headers[i].value = leo_str_n(s, cfg->headers[i].value.len);
            s += cfg->headers[i].value.len;
        }
        p->nheaders = cfg->nheaders;
    }
    p->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 10000;
    p->max_response = cfg->max_response_bytes ? cfg->max_response_bytes : 4 * 1024 * 1024;
    lru_init(&p->cache, cfg->cache_entries ? cfg->cache_entries : 1024);
    return &p->base;
}

void leo_embed_provider_stats(const struct leo_embedder *e, struct leo_embed_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (e->ops != &provider_ops)
        return;
    const struct provider *p = (const struct provider *)e;
    *out = p->stats;
    out->cached = p->cache.count;
}
