#include "hnsw.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

#define NONE UINT32_MAX

/* A (distance, node) pair: the element of both heaps and of the neighbour selection buffer. */
struct hnsw_pair {
    float d;
    uint32_t node;
};

/* A binary max-heap on d. The candidate queue stores -d so that the same code yields the nearest first. */
struct hnsw_heap {
    struct hnsw_pair *a;
    size_t n, cap;
};

/* The id map: open addressing with linear probing, node == NONE marks an empty slot. Ids are never removed;
 * the id of a tombstone keeps pointing at it until the id is inserted again or the index is compacted. */
struct hnsw_slot {
    uint64_t id;
    uint32_t node;
};

struct leo_hnsw {
    uint32_t dim;
    uint32_t M;  /* link slots per upper level */
    uint32_t M0; /* link slots on level 0 (2*M) */
    uint32_t ef_construction;
    uint32_t ef_search;
    uint32_t ef_search_grow_from; /* 0: fixed */
    uint64_t seed;
    uint64_t rng;
    double level_mult; /* 1/ln(M), the paper's mL */

    size_t n;         /* nodes in use, live + tombstones; node i is the i-th insert */
    size_t cap;       /* nodes allocated */
    size_t n_deleted; /* tombstones */
    uint32_t entry;   /* entry point (may be a tombstone), NONE while empty */
    int max_level;    /* level of the entry point, -1 while empty */

    float *vecs;         /* cap * dim, unit-normalised */
    uint64_t *ids;       /* cap */
    uint8_t *levels;     /* cap: the node's top level */
    uint8_t *deleted;    /* cap: 1 for a tombstone */
    uint32_t *links0;    /* cap * (M0 + 1): count, then M0 node indices */
    uint32_t *upper_off; /* cap: offset of the node's upper-level lists in upper, NONE for level 0 only */
    uint32_t *upper;     /* levels 1..L of a node: L blocks of (M + 1) u32, count first */
    size_t upper_len, upper_cap;

    uint32_t *visited; /* cap: visited[i] == epoch marks node i visited in the current search */
    uint32_t epoch;

    struct hnsw_slot *map;
    size_t map_cap, map_used; /* map_cap is 0 or a power of two, kept at most half full */

    /* scratch, reused by every call (the index is single-threaded) */
    struct hnsw_heap cand, res;
    struct hnsw_pair *sel;
    size_t sel_cap;
    float *qbuf; /* dim: the normalised vector being inserted or searched */
};

/* ---- vectors ---- */

/* Dot product with GCC/clang vector extensions: eight lanes, two accumulators, so that the compiler emits
 * packed multiplies on any target. The loads go through memcpy because rows are only 4-byte aligned.
 * On x86-64 with GCC the function is also compiled for x86-64-v3 (AVX2, FMA) and the loader picks the clone
 * the CPU supports (an ifunc): about 1.5x faster inserts and searches at dimension 256 than baseline SSE2. FMA
 * rounds differently, so the same build gives bit-identical results only on CPUs that pick the same clone. */
typedef float hnsw_v8f __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__gnu_linux__)
#define HNSW_DOT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HNSW_DOT_CLONES
#endif

HNSW_DOT_CLONES static float dot(const float *a, const float *b, uint32_t dim)
{
    hnsw_v8f s0 = {0}, s1 = {0};
    uint32_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        hnsw_v8f a0, a1, b0, b1;
        memcpy(&a0, a + i, sizeof(a0));
        memcpy(&a1, a + i + 8, sizeof(a1));
        memcpy(&b0, b + i, sizeof(b0));
        memcpy(&b1, b + i + 8, sizeof(b1));
        s0 += a0 * b0;
        s1 += a1 * b1;
    }
    s0 += s1;
    float s = ((s0[0] + s0[4]) + (s0[1] + s0[5])) + ((s0[2] + s0[6]) + (s0[3] + s0[7]));
    for (; i < dim; i++)
        s += a[i] * b[i];
    return s;
}

static inline const float *vec_of(const struct leo_hnsw *h, uint32_t node)
{
    return h->vecs + (size_t)node * h->dim;
}

static inline float dist(const struct leo_hnsw *h, const float *q, uint32_t node)
{
    return 1.0f - dot(q, vec_of(h, node), h->dim);
}

/* Writes v / |v| to out; LEO_EINVAL for a zero, NaN or infinite vector. The norm is summed in double so that
 * neither large nor tiny components overflow or underflow it. */
static int normalise(const float *v, uint32_t dim, float *out)
{
    double sum = 0;
    for (uint32_t i = 0; i < dim; i++) {
        if (!isfinite(v[i]))
            return LEO_EINVAL;
        sum += (double)v[i] * (double)v[i];
    }
    if (!(sum > 0) || !isfinite(sum))
        return LEO_EINVAL;
    double inv = 1.0 / sqrt(sum);
    for (uint32_t i = 0; i < dim; i++)
        out[i] = (float)((double)v[i] * inv);
    return 0;
}

/* ---- heaps ---- */

static void heap_push(struct hnsw_heap *hp, float d, uint32_t node)
{
    if (hp->n == hp->cap) {
        hp->cap = hp->cap ? hp->cap * 2 : 64;
        hp->a = leo_realloc(hp->a, hp->cap * sizeof(*hp->a));
    }
    size_t i = hp->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (hp->a[parent].d >= d)
            break;
        hp->a[i] = hp->a[parent];
        i = parent;
    }
    hp->a[i] = (struct hnsw_pair){d, node};
}

static void heap_pop(struct hnsw_heap *hp)
{
    struct hnsw_pair last = hp->a[--hp->n];
    size_t i = 0, n = hp->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hp->a[c + 1].d > hp->a[c].d)
            c++;
        if (hp->a[c].d <= last.d)
            break;
        hp->a[i] = hp->a[c];
        i = c;
    }
    if (n)
        hp->a[i] = last;
}

static int pair_cmp(const void *pa, const void *pb)
{
    const struct hnsw_pair *a = pa, *b = pb;
    if (a->d != b->d)
        return a->d < b->d ? -1 : 1;
    return a->node < b->node ? -1 : a->node > b->node;
}

/* Copies the result heap into h->sel sorted by (distance, node) and returns the count. */
static size_t take_sorted(struct leo_hnsw *h)
{
    size_t n = h->res.n;
    if (n > h->sel_cap) {
        h->sel_cap = n;
        h->sel = leo_realloc(h->sel, n * sizeof(*h->sel));
    }
    if (n)
        memcpy(h->sel, h->res.a, n * sizeof(*h->sel));
    qsort(h->sel, n, sizeof(*h->sel), pair_cmp);
    return n;
}

/* ---- the id map ---- */

static inline size_t id_hash(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return (size_t)x;
}

static struct hnsw_slot *map_find(const struct leo_hnsw *h, uint64_t id)
{
    if (h->map_cap == 0)
        return NULL;
    size_t mask = h->map_cap - 1;
    for (size_t i = id_hash(id) & mask;; i = (i + 1) & mask) {
        struct hnsw_slot *s = &h->map[i];
        if (s->node == NONE)
            return NULL;
        if (s->id == id)
            return s;
    }
}

static void map_resize(struct leo_hnsw *h, size_t cap)
{
    struct hnsw_slot *old = h->map;
    size_t old_cap = h->map_cap;
    h->map = leo_malloc(cap * sizeof(*h->map));
    h->map_cap = cap;
    for (size_t i = 0; i < cap; i++)
        h->map[i].node = NONE;
    size_t mask = cap - 1;
    for (size_t j = 0; j < old_cap; j++) {
        if (old[j].node == NONE)
            continue;
        size_t i = id_hash(old[j].id) & mask;
        while (h->map[i].node != NONE)
            i = (i + 1) & mask;
        h->map[i] = old[j];
    }
    leo_free(old);
}

/* Points id at node, adding the id if it is new. */
static void map_set(struct leo_hnsw *h, uint64_t id, uint32_t node)
{
    struct hnsw_slot *s = map_find(h, id);
    if (s != NULL) {
        s->node = node;
        return;
    }
    if ((h->map_used + 1) * 2 > h->map_cap)
        map_resize(h, h->map_cap ? h->map_cap * 2 : 64);
    size_t mask = h->map_cap - 1;
    size_t i = id_hash(id) & mask;
    while (h->map[i].node != NONE)
        i = (i + 1) & mask;
    h->map[i] = (struct hnsw_slot){id, node};
    h->map_used++;
}

/* ---- storage ---- */

static void grow_nodes(struct leo_hnsw *h, size_t cap)
{
    if (cap <= h->cap)
        return;
    if (cap > LEO_HNSW_MAX_NODES)
        cap = LEO_HNSW_MAX_NODES;
    h->vecs = leo_realloc(h->vecs, cap * h->dim * sizeof(float));
    h->ids = leo_realloc(h->ids, cap * sizeof(*h->ids));
    h->levels = leo_realloc(h->levels, cap);
    h->deleted = leo_realloc(h->deleted, cap);
    h->links0 = leo_realloc(h->links0, cap * (h->M0 + 1) * sizeof(uint32_t));
    h->upper_off = leo_realloc(h->upper_off, cap * sizeof(uint32_t));
    h->visited = leo_realloc(h->visited, cap * sizeof(uint32_t));
    /* 0 is never a current epoch, so zeroed marks read as unvisited */
    memset(h->visited + h->cap, 0, (cap - h->cap) * sizeof(uint32_t));
    h->cap = cap;
}

static inline uint32_t *links(const struct leo_hnsw *h, uint32_t node, int level)
{
    if (level == 0)
        return h->links0 + (size_t)node * (h->M0 + 1);
    return h->upper + h->upper_off[node] + (size_t)(level - 1) * (h->M + 1);
}

/* splitmix64: small, fast, and the same sequence everywhere for the same seed. */
static uint64_t rng_next(struct leo_hnsw *h)
{
    uint64_t z = (h->rng += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* The paper's level distribution: floor(-ln(U) * mL) with U uniform in (0, 1], capped. */
static int random_level(struct leo_hnsw *h)
{
    double u = (double)((rng_next(h) >> 11) + 1) * 0x1.0p-53;
    double l = -log(u) * h->level_mult;
    return l >= LEO_HNSW_MAX_LEVEL ? LEO_HNSW_MAX_LEVEL : (int)l;
}

/* ---- the graph ---- */

static uint32_t next_epoch(struct leo_hnsw *h)
{
    if (++h->epoch == 0) {
        memset(h->visited, 0, h->cap * sizeof(uint32_t));
        h->epoch = 1;
    }
    return h->epoch;
}

/* Greedy walk on one level: moves *ep to a local minimum of the distance to q. */
static void greedy(const struct leo_hnsw *h, const float *q, uint32_t *ep, float *d_ep, int level)
{
    int changed = 1;
    while (changed) {
        changed = 0;
        const uint32_t *l = links(h, *ep, level);
        for (uint32_t i = 1; i <= l[0]; i++) {
            float d = dist(h, q, l[i]);
            if (d < *d_ep) {
                *d_ep = d;
                *ep = l[i];
                changed = 1;
            }
        }
    }
}

/* The paper's SEARCH-LAYER: leaves in h->res (a max-heap) the ef nearest nodes to q found on this level from
 * ep. With skip_deleted, tombstones are walked through but kept out of the results, and the walk only stops
 * early once ef live nodes are held (so with fewer live nodes than ef it visits all it can reach). */
static void search_layer(struct leo_hnsw *h, const float *q, uint32_t ep, size_t ef, int level, int skip_deleted)
{
    uint32_t epoch = next_epoch(h);
    h->cand.n = 0;
    h->res.n = 0;
    float d = dist(h, q, ep);
    h->visited[ep] = epoch;
    heap_push(&h->cand, -d, ep);
    if (!(skip_deleted && h->deleted[ep]))
        heap_push(&h->res, d, ep);
    float bound = h->res.n ? h->res.a[0].d : INFINITY;

    while (h->cand.n) {
        struct hnsw_pair c = h->cand.a[0];
        if (-c.d > bound && h->res.n >= ef)
            break;
        heap_pop(&h->cand);
        const uint32_t *l = links(h, c.node, level);
        uint32_t count = l[0];
        for (uint32_t i = 1; i <= count; i++)
            __builtin_prefetch(vec_of(h, l[i]));
        for (uint32_t i = 1; i <= count; i++) {
            uint32_t nb = l[i];
            if (h->visited[nb] == epoch)
                continue;
            h->visited[nb] = epoch;
            float dn = dist(h, q, nb);
            if (h->res.n < ef || dn < bound) {
                heap_push(&h->cand, -dn, nb);
                if (!(skip_deleted && h->deleted[nb])) {
                    heap_push(&h->res, dn, nb);
                    if (h->res.n > ef)
                        heap_pop(&h->res);
                }
                if (h->res.n)
                    bound = h->res.a[0].d;
            }
        }
    }
}

/* The paper's SELECT-NEIGHBORS-HEURISTIC (without extending or keeping pruned candidates, as in hnswlib):
 * c[0..n) sorted by distance to the base; keeps a candidate only when it is nearer to the base than to every
 * candidate kept so far, which spreads links over directions instead of piling them into one cluster.
 * Writes the kept ones to c[0..r) (in place: r never passes i) and returns r. */
static size_t select_neighbours(const struct leo_hnsw *h, struct hnsw_pair *c, size_t n, size_t m)
{
    size_t r = 0;
    for (size_t i = 0; i < n && r < m; i++) {
        const float *v = vec_of(h, c[i].node);
        int keep = 1;
        for (size_t j = 0; j < r; j++) {
            if (dist(h, v, c[j].node) < c[i].d) {
                keep = 0;
                break;
            }
        }
        if (keep)
            c[r++] = c[i];
    }
    return r;
}

/* Adds a link from `from` to `to` on a level; when from's list is full, re-selects among the old links and
 * the new one with the heuristic (so `to` may be left out). Uses h->res as scratch. */
static void add_link(struct leo_hnsw *h, uint32_t from, uint32_t to, int level)
{
    uint32_t *l = links(h, from, level);
    uint32_t max = level ? h->M : h->M0;
    if (l[0] < max) {
        l[++l[0]] = to;
        return;
    }
    const float *v = vec_of(h, from);
    h->res.n = 0;
    heap_push(&h->res, dist(h, v, to), to);
    for (uint32_t i = 1; i <= l[0]; i++)
        heap_push(&h->res, dist(h, v, l[i]), l[i]);
    size_t n = take_sorted(h);
    size_t r = select_neighbours(h, h->sel, n, max);
    l[0] = (uint32_t)r;
    for (size_t i = 0; i < r; i++)
        l[i + 1] = h->sel[i].node;
}

/* Inserts an already normalised vector (q must not point into h's own arrays: they may move). */
static int insert_normalised(struct leo_hnsw *h, uint64_t id, const float *q)
{
    struct hnsw_slot *s = map_find(h, id);
    uint32_t old = s != NULL && !h->deleted[s->node] ? s->node : NONE;
    if (old != NONE && memcmp(vec_of(h, old), q, h->dim * sizeof(float)) == 0)
        return 0;
    if (h->n >= LEO_HNSW_MAX_NODES)
        return LEO_ETOOBIG;
    /* The level is drawn before anything can fail, so that a refused insert never changes the sequence. */
    uint64_t rng_saved = h->rng;
    int level = random_level(h);
    size_t upper_need = (size_t)level * (h->M + 1);
    if (h->upper_len + upper_need >= NONE) {
        h->rng = rng_saved;
        return LEO_ETOOBIG;
    }

    if (old != NONE) {
        h->deleted[old] = 1;
        h->n_deleted++;
    }
    if (h->n == h->cap)
        grow_nodes(h, h->cap ? h->cap * 2 : 16);
    uint32_t node = (uint32_t)h->n++;
    memcpy(h->vecs + (size_t)node * h->dim, q, h->dim * sizeof(float));
    h->ids[node] = id;
    h->levels[node] = (uint8_t)level;
    h->deleted[node] = 0;
    h->links0[(size_t)node * (h->M0 + 1)] = 0;
    h->upper_off[node] = NONE;
    if (level > 0) {
        if (h->upper_len + upper_need > h->upper_cap) {
            size_t cap = h->upper_cap ? h->upper_cap : 1024;
            while (cap < h->upper_len + upper_need)
                cap *= 2;
            h->upper = leo_realloc(h->upper, cap * sizeof(uint32_t));
            h->upper_cap = cap;
        }
        h->upper_off[node] = (uint32_t)h->upper_len;
        for (int l = 0; l < level; l++)
            h->upper[h->upper_len + (size_t)l * (h->M + 1)] = 0;
        h->upper_len += upper_need;
    }
    map_set(h, id, node);

    if (h->max_level < 0) {
        h->entry = node;
        h->max_level = level;
        return 0;
    }

    uint32_t ep = h->entry;
    float d_ep = dist(h, q, ep);
    for (int lc = h->max_level; lc > level; lc--)
        greedy(h, q, &ep, &d_ep, lc);
    for (int lc = level < h->max_level ? level : h->max_level; lc >= 0; lc--) {
        /* Tombstones stay candidates here: they are part of the graph until compaction. */
        search_layer(h, q, ep, h->ef_construction, lc, 0);
        size_t n = take_sorted(h);
        ep = h->sel[0].node;
        size_t r = select_neighbours(h, h->sel, n, h->M);
        uint32_t *l = links(h, node, lc);
        l[0] = (uint32_t)r;
        for (size_t i = 0; i < r; i++)
            l[i + 1] = h->sel[i].node;
        /* add_link reuses h->sel, so link back from the copy just written into the node's own list */
        for (size_t i = 0; i < r; i++)
            add_link(h, l[i + 1], node, lc);
    }
    if (level > h->max_level) {
        h->entry = node;
        h->max_level = level;
    }
    return 0;
}

/* ---- public ---- */

int leo_hnsw_create(struct leo_hnsw **out, const struct leo_hnsw_params *p)
{
    uint32_t M = p->M ? p->M : LEO_HNSW_DEFAULT_M;
    if (p->dim == 0 || p->dim > LEO_HNSW_MAX_DIM || M < 2 || M > LEO_HNSW_MAX_M)
        return LEO_EINVAL;
    struct leo_hnsw *h = leo_new(struct leo_hnsw);
    h->dim = p->dim;
    h->M = M;
    h->M0 = 2 * M;
    h->ef_construction = p->ef_construction ? p->ef_construction : LEO_HNSW_DEFAULT_EF_CONSTRUCTION;
    if (h->ef_construction < M)
        h->ef_construction = M;
    h->ef_search = p->ef_search ? p->ef_search : LEO_HNSW_DEFAULT_EF_SEARCH;
    h->ef_search_grow_from = p->ef_search_grow_from;
    h->seed = p->seed;
    h->rng = p->seed;
    h->level_mult = 1.0 / log((double)M);
    h->entry = NONE;
    h->max_level = -1;
    h->qbuf = leo_malloc(p->dim * sizeof(float));
    *out = h;
    return 0;
}

/* Frees what the index points at, not the struct itself. */
static void release(struct leo_hnsw *h)
{
    leo_free(h->vecs);
    leo_free(h->ids);
    leo_free(h->levels);
    leo_free(h->deleted);
    leo_free(h->links0);
    leo_free(h->upper_off);
    leo_free(h->upper);
    leo_free(h->visited);
    leo_free(h->map);
    leo_free(h->cand.a);
    leo_free(h->res.a);
    leo_free(h->sel);
    leo_free(h->qbuf);
}

void leo_hnsw_free(struct leo_hnsw *h)
{
    if (h == NULL)
        return;
    release(h);
    leo_free(h);
}

void leo_hnsw_reserve(struct leo_hnsw *h, size_t n)
{
    grow_nodes(h, n);
    size_t map_cap = h->map_cap ? h->map_cap : 64;
    while (map_cap < 2 * n)
        map_cap *= 2;
    if (map_cap > h->map_cap)
        map_resize(h, map_cap);
}

int leo_hnsw_insert(struct leo_hnsw *h, uint64_t id, const float *vec)
{
    int rc = normalise(vec, h->dim, h->qbuf);
    if (rc < 0)
        return rc;
    return insert_normalised(h, id, h->qbuf);
}

int leo_hnsw_search(struct leo_hnsw *h, const float *query, size_t k, struct leo_hnsw_hit *hits, size_t *n_hits)
{
    *n_hits = 0;
    int rc = normalise(query, h->dim, h->qbuf);
    if (rc < 0)
        return rc;
    if (k == 0 || h->n == h->n_deleted)
        return 0;
    const float *q = h->qbuf;
    uint32_t ep = h->entry;
    float d_ep = dist(h, q, ep);
    for (int lc = h->max_level; lc > 0; lc--)
        greedy(h, q, &ep, &d_ep, lc);
    size_t ef = leo_hnsw_search_ef(h);
    if (ef < k)
        ef = k;
    search_layer(h, q, ep, ef, 0, h->n_deleted > 0);
    size_t n = take_sorted(h);
    if (n > k)
        n = k;
    for (size_t i = 0; i < n; i++)
        hits[i] = (struct leo_hnsw_hit){h->ids[h->sel[i].node], h->sel[i].d};
    *n_hits = n;
    return 0;
}

int leo_hnsw_delete(struct leo_hnsw *h, uint64_t id)
{
    struct hnsw_slot *s = map_find(h, id);
    if (s == NULL || h->deleted[s->node])
        return LEO_ENOTFOUND;
    h->deleted[s->node] = 1;
    h->n_deleted++;
    return 0;
}

int leo_hnsw_contains(const struct leo_hnsw *h, uint64_t id)
{
    const struct hnsw_slot *s = map_find(h, id);
    return s != NULL && !h->deleted[s->node];
}

int leo_hnsw_get(const struct leo_hnsw *h, uint64_t id, float *out)
{
    const struct hnsw_slot *s = map_find(h, id);
    if (s == NULL || h->deleted[s->node])
        return LEO_ENOTFOUND;
    memcpy(out, vec_of(h, s->node), h->dim * sizeof(float));
    return 0;
}

void leo_hnsw_compact(struct leo_hnsw *h)
{
    struct leo_hnsw_params p = {.dim = h->dim, .M = h->M, .ef_construction = h->ef_construction,
                                .ef_search = h->ef_search, .seed = h->seed,
                                .ef_search_grow_from = h->ef_search_grow_from};
    struct leo_hnsw *fresh;
    if (leo_hnsw_create(&fresh, &p) < 0)
        abort(); /* the parameters were accepted once already */
    leo_hnsw_reserve(fresh, h->n - h->n_deleted);
    for (size_t i = 0; i < h->n; i++) {
        if (h->deleted[i])
            continue;
        /* cannot fail: the vector was valid and there are fewer nodes than before */
        if (insert_normalised(fresh, h->ids[i], vec_of(h, (uint32_t)i)) < 0)
            abort();
    }
    release(h);
    *h = *fresh;
    leo_free(fresh);
}

void leo_hnsw_set_ef_search(struct leo_hnsw *h, uint32_t ef_search)
{
    h->ef_search = ef_search ? ef_search : LEO_HNSW_DEFAULT_EF_SEARCH;
}

uint32_t leo_hnsw_ef_search(const struct leo_hnsw *h)
{
    return h->ef_search;
}

uint32_t leo_hnsw_search_ef(const struct leo_hnsw *h)
{
    uint64_t ef = h->ef_search;
    if (h->ef_search_grow_from == 0)
        return h->ef_search;
    uint64_t step = h->ef_search / 4 ? h->ef_search / 4 : 1;
    /* at most 31 doublings (LEO_HNSW_MAX_NODES), so ef stays below 9 * ef_search: no overflow in 64 bits */
    for (uint64_t m = h->ef_search_grow_from; m < h->n; m *= 2)
        ef += step;
    return ef > UINT32_MAX ? UINT32_MAX : (uint32_t)ef;
}

uint32_t leo_hnsw_dim(const struct leo_hnsw *h)
{
    return h->dim;
}

size_t leo_hnsw_count(const struct leo_hnsw *h)
{
    return h->n - h->n_deleted;
}

size_t leo_hnsw_deleted(const struct leo_hnsw *h)
{
    return h->n_deleted;
}

size_t leo_hnsw_memory(const struct leo_hnsw *h)
{
    size_t per_node =
        (size_t)h->dim * sizeof(float) + sizeof(uint64_t) + 2 + (h->M0 + 1) * sizeof(uint32_t) + 2 * sizeof(uint32_t);
    return sizeof(*h) + h->cap * per_node + h->upper_cap * sizeof(uint32_t) + h->map_cap * sizeof(struct hnsw_slot) +
           (h->cand.cap + h->res.cap + h->sel_cap) * sizeof(struct hnsw_pair) + (size_t)h->dim * sizeof(float);
}
