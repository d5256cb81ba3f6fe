#include <math.h>

#include "common/alloc.h"
#include "common/error.h"
#include "common/hnsw.h"
#include "tests/unit/test.h"

/* The sanitizer build runs the same cases on a smaller dimension so that the suite stays within ~20 s there;
 * the number of vectors (10 000) and the recall bar do not change. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifdef UNDER_ASAN
#define BIG_DIM 64
#else
#define BIG_DIM 256
#endif
#define BIG_N 10000
#define N_QUERIES 200
#define K 10

/* ---- data: a seeded generator independent of the index's own ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double uniform(void)
{
    return (double)((rnd() >> 11) + 1) * 0x1.0p-53;
}

static double gaussian(void)
{
    return sqrt(-2.0 * log(uniform())) * cos(2.0 * M_PI * uniform());
}

static void unit(float *v, size_t dim)
{
    double s = 0;
    for (size_t i = 0; i < dim; i++)
        s += (double)v[i] * v[i];
    for (size_t i = 0; i < dim; i++)
        v[i] = (float)(v[i] / sqrt(s));
}

/* n random directions, uniform on the sphere. */
static float *random_vectors(size_t n, size_t dim, uint64_t seed)
{
    rng_state = seed;
    float *v = leo_malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < n * dim; i++)
        v[i] = (float)gaussian();
    for (size_t i = 0; i < n; i++)
        unit(v + i * dim, dim);
    return v;
}

/* n points around `clusters` random centres, each point the centre plus gaussian noise of about the centre's
 * length (so members of one cluster have a cosine similarity near 0.5 to each other): the shape of embeddings
 * of questions on a few topics, much easier for a graph than uniform noise but with many near-ties. */
static float *clustered_vectors(size_t n, size_t dim, size_t clusters, uint64_t seed)
{
    float *centres = random_vectors(clusters, dim, seed);
    rng_state = seed ^ UINT64_C(0x5bd1e995);
    float *v = leo_malloc(n * dim * sizeof(float));
    double sigma = 1.0 / sqrt((double)dim);
    for (size_t i = 0; i < n; i++) {
        const float *c = centres + (rnd() % clusters) * dim;
        for (size_t j = 0; j < dim; j++)
            v[i * dim + j] = (float)(c[j] + sigma * gaussian());
        unit(v + i * dim, dim);
    }
    leo_free(centres);
    return v;
}

/* ---- exact search, written independently of the index ---- */

static double cos_dist(const float *a, const float *b, size_t dim)
{
    double s = 0;
    for (size_t i = 0; i < dim; i++)
        s += (double)a[i] * b[i];
    return 1.0 - s;
}

/* The k nearest of base[0..n) to q, skipping indexes with skip[i] (when skip is not NULL), in out[]. */
static void exact_knn(const float *base, size_t n, size_t dim, const uint8_t *skip, const float *q, size_t k,
                      size_t *out)
{
    double best_d[64];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip && skip[i])
            continue;
        double d = cos_dist(base + i * dim, q, dim);
        if (m == k && d >= best_d[k - 1])
            continue;
        size_t j = m < k ? m++ : k - 1;
        while (j > 0 && best_d[j - 1] > d) {
            best_d[j] = best_d[j - 1];
            out[j] = out[j - 1];
            j--;
        }
        best_d[j] = d;
        out[j] = i;
    }
}

static struct leo_hnsw *make(uint32_t dim, uint32_t M, uint32_t efc, uint64_t seed)
{
    struct leo_hnsw *h;
    struct leo_hnsw_params p = {.dim = dim, .M = M, .ef_construction = efc, .seed = seed};
    ASSERT_EQ(leo_hnsw_create(&h, &p), 0);
    return h;
}

/* Index of vector i is id i * 7 + 3, so that ids and positions never coincide by accident. */
#define ID_OF(i) ((uint64_t)(i)*7 + 3)

static struct leo_hnsw *build(const float *base, size_t n, size_t dim, uint64_t seed)
{
    struct leo_hnsw *h = make((uint32_t)dim, 0, 0, seed);
    for (size_t i = 0; i < n; i++)
        ASSERT_EQ(leo_hnsw_insert(h, ID_OF(i), base + i * dim), 0);
    ASSERT_EQ(leo_hnsw_count(h), n);
    return h;
}

/* Mean recall@k of the index over the queries against exact search on the live vectors. */
static double recall_at(struct leo_hnsw *h, const float *base, size_t n, size_t dim, const uint8_t *skip,
                        const float *queries, size_t nq, size_t k)
{
    size_t found = 0;
    struct leo_hnsw_hit hits[64];
    size_t exact[64];
    for (size_t qi = 0; qi < nq; qi++) {
        const float *q = queries + qi * dim;
        size_t nh;
        ASSERT_EQ(leo_hnsw_search(h, q, k, hits, &nh), 0);
        ASSERT_EQ(nh, k);
        exact_knn(base, n, dim, skip, q, k, exact);
        for (size_t i = 0; i < k; i++)
            for (size_t j = 0; j < k; j++)
                found += hits[i].id == ID_OF(exact[j]);
    }
    return (double)found / (double)(nq * k);
}

/* ---- cases ---- */

TEST(create_rejects_bad_parameters)
{
    struct leo_hnsw *h = NULL; /* must stay untouched on failure */
    struct leo_hnsw_params p = {.dim = 0};
    ASSERT_EQ(leo_hnsw_create(&h, &p), LEO_EINVAL);
    p = (struct leo_hnsw_params){.dim = LEO_HNSW_MAX_DIM + 1};
    ASSERT_EQ(leo_hnsw_create(&h, &p), LEO_EINVAL);
    p = (struct leo_hnsw_params){.dim = 8, .M = 1};
    ASSERT_EQ(leo_hnsw_create(&h, &p), LEO_EINVAL);
    p = (struct leo_hnsw_params){.dim = 8, .M = LEO_HNSW_MAX_M + 1};
    ASSERT_EQ(leo_hnsw_create(&h, &p), LEO_EINVAL);
    ASSERT(h == NULL);
    p = (struct leo_hnsw_params){.dim = 8};
    ASSERT_EQ(leo_hnsw_create(&h, &p), 0);
    ASSERT_EQ(leo_hnsw_dim(h), 8);
    ASSERT_EQ(leo_hnsw_ef_search(h), LEO_HNSW_DEFAULT_EF_SEARCH);
    ASSERT_EQ(leo_hnsw_count(h), 0);
    leo_hnsw_free(h);
    leo_hnsw_free(NULL);
}

TEST(empty_index_finds_nothing)
{
    struct leo_hnsw *h = make(3, 0, 0, 1);
    float q[3] = {1, 0, 0};
    struct leo_hnsw_hit hits[4];
    size_t n = 99;
    ASSERT_EQ(leo_hnsw_search(h, q, 4, hits, &n), 0);
    ASSERT_EQ(n, 0);
    leo_hnsw_free(h);
}

TEST(refuses_zero_and_non_finite_vectors)
{
    struct leo_hnsw *h = make(3, 0, 0, 1);
    float zero[3] = {0, 0, 0}, nan_v[3] = {1, NAN, 0}, inf_v[3] = {INFINITY, 0, 0}, ok[3] = {0, 0, 2};
    ASSERT_EQ(leo_hnsw_insert(h, 1, zero), LEO_EINVAL);
    ASSERT_EQ(leo_hnsw_insert(h, 2, nan_v), LEO_EINVAL);
    ASSERT_EQ(leo_hnsw_insert(h, 3, inf_v), LEO_EINVAL);
    ASSERT_EQ(leo_hnsw_count(h), 0);
    ASSERT_EQ(leo_hnsw_contains(h, 1), 0);
    ASSERT_EQ(leo_hnsw_insert(h, 4, ok), 0);
    struct leo_hnsw_hit hits[1];
    size_t n = 99;
    ASSERT_EQ(leo_hnsw_search(h, zero, 1, hits, &n), LEO_EINVAL);
    ASSERT_EQ(n, 0);
    ASSERT_EQ(leo_hnsw_search(h, nan_v, 1, hits, &n), LEO_EINVAL);
    leo_hnsw_free(h);
}

/* Five directions in 3-d with known cosines to the query (1, 0, 0): the answer is exact, in order, with the
 * exact distances, whatever the lengths of the stored vectors. */
TEST(exact_results_on_a_tiny_set)
{
    struct leo_hnsw *h = make(3, 0, 0, 42);
    const float v[5][3] = {
        {0, 5, 0},    /* id 10: cos 0      -> distance 1 */
        {3, 0, 0},    /* id 11: cos 1      -> distance 0 */
        {-1, 0, 0},   /* id 12: cos -1     -> distance 2 */
        {1, 1, 0},    /* id 13: cos 0.7071 -> distance 0.2929 */
        {1, 0, 1e-3}, /* id 14: cos ~1     -> distance 5e-7 */
    };
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(leo_hnsw_insert(h, 10 + i, v[i]), 0);
    ASSERT_EQ(leo_hnsw_count(h), 5);

    float q[3] = {2, 0, 0};
    struct leo_hnsw_hit hits[8];
    size_t n;
    ASSERT_EQ(leo_hnsw_search(h, q, 8, hits, &n), 0);
    ASSERT_EQ(n, 5);
    const uint64_t want[5] = {11, 14, 13, 10, 12};
    const double want_d[5] = {0, 1 - 1 / sqrt(1 + 1e-6), 1 - sqrt(0.5), 1, 2};
    for (int i = 0; i < 5; i++) {
        ASSERT_EQ(hits[i].id, want[i]);
        ASSERT(fabs(hits[i].distance - want_d[i]) < 1e-6);
    }
    ASSERT_EQ(leo_hnsw_search(h, q, 2, hits, &n), 0);
    ASSERT_EQ(n, 2);
    ASSERT_EQ(hits[0].id, 11);
    ASSERT_EQ(hits[1].id, 14);
    ASSERT_EQ(leo_hnsw_search(h, q, 0, hits, &n), 0);
    ASSERT_EQ(n, 0);

    float got[3];
    ASSERT_EQ(leo_hnsw_get(h, 13, got), 0);
    ASSERT(fabs(got[0] - sqrt(0.5)) < 1e-7 && fabs(got[1] - sqrt(0.5)) < 1e-7 && got[2] == 0);
    ASSERT_EQ(leo_hnsw_get(h, 99, got), LEO_ENOTFOUND);
    leo_hnsw_free(h);
}

/* With fewer vectors than ef_search the search is exhaustive in practice: 500 vectors, every query's top 10
 * equals exact search. */
TEST(small_set_matches_exact_search)
{
    const size_t n = 500, dim = 16;
    float *base = random_vectors(n, dim, 7);
    float *queries = random_vectors(50, dim, 8);
    struct leo_hnsw *h = build(base, n, dim, 3);
    leo_hnsw_set_ef_search(h, 600);
    double r = recall_at(h, base, n, dim, NULL, queries, 50, K);
    fprintf(stderr, "  recall@10 on 500 x %zu with ef_search 600: %.4f\n", dim, r);
    ASSERT_DBL_EQ(r, 1.0);
    leo_hnsw_free(h);
    leo_free(base);
    leo_free(queries);
}

TEST(ids_are_preserved)
{
    const size_t dim = 24;
    const uint64_t ids[] = {0,
                            1,
                            UINT64_MAX,
                            UINT64_C(0x8000000000000000),
                            UINT64_C(0xdeadbeefcafef00d),
                            42,
                            UINT64_C(0x0123456789abcdef),
                            UINT64_MAX - 1};
    const size_t n = sizeof(ids) / sizeof(ids[0]);
    float *base = random_vectors(n, dim, 11);
    struct leo_hnsw *h = make(dim, 0, 0, 5);
    for (size_t i = 0; i < n; i++)
        ASSERT_EQ(leo_hnsw_insert(h, ids[i], base + i * dim), 0);
    for (size_t i = 0; i < n; i++) {
        struct leo_hnsw_hit hit;
        size_t nh;
        ASSERT_EQ(leo_hnsw_search(h, base + i * dim, 1, &hit, &nh), 0);
        ASSERT_EQ(nh, 1);
        ASSERT(hit.id == ids[i]);
        ASSERT(fabs(hit.distance) < 1e-6);
        ASSERT_EQ(leo_hnsw_contains(h, ids[i]), 1);
    }
    ASSERT_EQ(leo_hnsw_contains(h, 2), 0);
    leo_hnsw_free(h);
    leo_free(base);
}

static double recall_case(const float *base, const float *queries, const char *what)
{
    struct leo_hnsw *h = build(base, BIG_N, BIG_DIM, 1234);
    double r = recall_at(h, base, BIG_N, BIG_DIM, NULL, queries, N_QUERIES, K);
    fprintf(stderr, "  recall@10 on %d %s vectors of dimension %d, %d queries, ef_search %u: %.4f (%zu bytes)\n", BIG_N,
            what, BIG_DIM, N_QUERIES, leo_hnsw_ef_search(h), r, leo_hnsw_memory(h));
    leo_hnsw_free(h);
    return r;
}

TEST(recall_on_random_unit_vectors)
{
    float *base = random_vectors(BIG_N, BIG_DIM, 100);
    float *queries = random_vectors(N_QUERIES, BIG_DIM, 101);
    double r = recall_case(base, queries, "uniform random");
    ASSERT(r >= 0.95);
    leo_free(base);
    leo_free(queries);
}

TEST(recall_on_clustered_vectors)
{
    /* queries drawn from the same clusters as the data (same seed, so the same centres) */
    float *all = clustered_vectors(BIG_N + N_QUERIES, BIG_DIM, 50, 200);
    double r = recall_case(all, all + (size_t)BIG_N * BIG_DIM, "clustered");
    ASSERT(r >= 0.95);
    leo_free(all);
}

TEST(deleted_entries_are_never_returned)
{
    const size_t n = 3000, dim = 32;
    float *base = random_vectors(n, dim, 300);
    float *queries = random_vectors(100, dim, 301);
    uint8_t *gone = leo_calloc(n, 1);
    struct leo_hnsw *h = build(base, n, dim, 9);
    size_t deleted = 0;
    for (size_t i = 0; i < n; i += 3) {
        ASSERT_EQ(leo_hnsw_delete(h, ID_OF(i)), 0);
        gone[i] = 1;
        deleted++;
    }
    ASSERT_EQ(leo_hnsw_delete(h, ID_OF(0)), LEO_ENOTFOUND);
    ASSERT_EQ(leo_hnsw_delete(h, ID_OF(n + 5)), LEO_ENOTFOUND);
    ASSERT_EQ(leo_hnsw_count(h), n - deleted);
    ASSERT_EQ(leo_hnsw_deleted(h), deleted);
    ASSERT_EQ(leo_hnsw_contains(h, ID_OF(3)), 0);
    ASSERT_EQ(leo_hnsw_contains(h, ID_OF(4)), 1);

    /* a deleted vector searched for itself finds its live neighbours, not itself */
    struct leo_hnsw_hit hits[50];
    size_t nh;
    for (size_t i = 0; i < n; i += 3) {
        ASSERT_EQ(leo_hnsw_search(h, base + i * dim, 50, hits, &nh), 0);
        ASSERT_EQ(nh, 50);
        for (size_t j = 0; j < nh; j++)
            ASSERT(hits[j].id % 7 == 3 && !gone[(hits[j].id - 3) / 7]);
    }
    /* and recall against exact search over the live ones holds up with a third of the graph as waypoints */
    double r = recall_at(h, base, n, dim, gone, queries, 100, K);
    fprintf(stderr, "  recall@10 with a third deleted: %.4f\n", r);
    ASSERT(r >= 0.95);

    /* deleting everything leaves a searchable, empty-looking index */
    for (size_t i = 0; i < n; i++)
        if (!gone[i])
            ASSERT_EQ(leo_hnsw_delete(h, ID_OF(i)), 0);
    ASSERT_EQ(leo_hnsw_count(h), 0);
    ASSERT_EQ(leo_hnsw_search(h, queries, 5, hits, &nh), 0);
    ASSERT_EQ(nh, 0);
    /* ... into which an id can come back */
    ASSERT_EQ(leo_hnsw_insert(h, ID_OF(7), base + 7 * dim), 0);
    ASSERT_EQ(leo_hnsw_search(h, queries, 5, hits, &nh), 0);
    ASSERT_EQ(nh, 1);
    ASSERT_EQ(hits[0].id, ID_OF(7));
    leo_hnsw_free(h);
    leo_free(base);
    leo_free(queries);
    leo_free(gone);
}

TEST(reinserting_an_id_replaces_its_vector)
{
    const size_t n = 200, dim = 16;
    float *base = random_vectors(n, dim, 400);
    struct leo_hnsw *h = build(base, n, dim, 10);
    /* the same vector again (even scaled: it is normalised first) changes nothing */
    float scaled[16];
    for (size_t j = 0; j < dim; j++)
        scaled[j] = 2 * base[5 * dim + j];
    ASSERT_EQ(leo_hnsw_insert(h, ID_OF(5), scaled), 0);
    ASSERT_EQ(leo_hnsw_count(h), n);
    ASSERT_EQ(leo_hnsw_deleted(h), 0);
    /* a different vector under id 5 replaces the old one: one live entry, one tombstone */
    ASSERT_EQ(leo_hnsw_insert(h, ID_OF(5), base + 9 * dim), 0);
    ASSERT_EQ(leo_hnsw_count(h), n);
    ASSERT_EQ(leo_hnsw_deleted(h), 1);
    struct leo_hnsw_hit hits[3];
    size_t nh;
    ASSERT_EQ(leo_hnsw_search(h, base + 9 * dim, 3, hits, &nh), 0);
    ASSERT_EQ(nh, 3);
    /* ids 5 and 9 now hold the same vector: both at distance 0, tie broken by insertion order (9 first) */
    ASSERT_EQ(hits[0].id, ID_OF(9));
    ASSERT_EQ(hits[1].id, ID_OF(5));
    ASSERT(hits[0].distance == hits[1].distance);
    ASSERT_EQ(leo_hnsw_search(h, base + 5 * dim, 3, hits, &nh), 0);
    for (size_t j = 0; j < nh; j++)
        ASSERT(hits[j].id != ID_OF(5) || hits[j].distance > 1e-3);
    leo_hnsw_free(h);
    leo_free(base);
}

TEST(same_seed_builds_the_same_index)
{
    const size_t n = 2000, dim = 32;
    float *base = random_vectors(n, dim, 500);
    float *queries = random_vectors(50, dim, 501);
    struct leo_hnsw *a = build(base, n, dim, 77), *b = build(base, n, dim, 77);
    for (size_t i = 0; i < n; i += 10) {
        ASSERT_EQ(leo_hnsw_delete(a, ID_OF(i)), 0);
        ASSERT_EQ(leo_hnsw_delete(b, ID_OF(i)), 0);
    }
    ASSERT_EQ(leo_hnsw_memory(a), leo_hnsw_memory(b));
    /* a low ef_search makes the answer depend on the graph's shape, so equal answers mean equal graphs */
    leo_hnsw_set_ef_search(a, 10);
    leo_hnsw_set_ef_search(b, 10);
    for (size_t qi = 0; qi < 50; qi++) {
        struct leo_hnsw_hit ha[10], hb[10];
        size_t na, nb;
        ASSERT_EQ(leo_hnsw_search(a, queries + qi * dim, 10, ha, &na), 0);
        ASSERT_EQ(leo_hnsw_search(b, queries + qi * dim, 10, hb, &nb), 0);
        ASSERT_EQ(na, nb);
        for (size_t i = 0; i < na; i++) {
            ASSERT(ha[i].id == hb[i].id);
            ASSERT(memcmp(&ha[i].distance, &hb[i].distance, sizeof(float)) == 0);
        }
    }
    leo_hnsw_free(a);
    leo_hnsw_free(b);
    leo_free(base);
    leo_free(queries);
}

TEST(ef_search_change_takes_effect)
{
    const size_t n = 5000, dim = 48;
    float *base = random_vectors(n, dim, 600);
    float *queries = random_vectors(100, dim, 601);
    struct leo_hnsw *h = build(base, n, dim, 13);
    leo_hnsw_set_ef_search(h, 1);
    ASSERT_EQ(leo_hnsw_ef_search(h), 1);
    /* k = 1 with ef 1 is a greedy walk; k = 10 raises ef to 10 whatever ef_search says */
    double r1 = recall_at(h, base, n, dim, NULL, queries, 100, 1);
    leo_hnsw_set_ef_search(h, 400);
    ASSERT_EQ(leo_hnsw_ef_search(h), 400);
    double r400 = recall_at(h, base, n, dim, NULL, queries, 100, 1);
    fprintf(stderr, "  recall@1 at ef_search 1: %.3f, at 400: %.3f\n", r1, r400);
    ASSERT(r1 < r400);
    ASSERT(r400 >= 0.99);
    leo_hnsw_set_ef_search(h, 0);
    ASSERT_EQ(leo_hnsw_ef_search(h), LEO_HNSW_DEFAULT_EF_SEARCH);
    leo_hnsw_free(h);
    leo_free(base);
    leo_free(queries);
}

TEST(ef_search_grows_with_the_graph_when_asked)
{
    const size_t n = 5000, dim = 48;
    float *base = random_vectors(n, dim, 900);
    float *queries = random_vectors(200, dim, 901);
    struct leo_hnsw *fixed, *grown;
    struct leo_hnsw_params p = {.dim = dim, .ef_search = 4, .seed = 31};
    ASSERT_EQ(leo_hnsw_create(&fixed, &p), 0);
    p.ef_search_grow_from = 100;
    ASSERT_EQ(leo_hnsw_create(&grown, &p), 0);
    ASSERT_EQ(leo_hnsw_search_ef(grown), 4);
    for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(leo_hnsw_insert(fixed, ID_OF(i), base + i * dim), 0);
        ASSERT_EQ(leo_hnsw_insert(grown, ID_OF(i), base + i * dim), 0);
        /* ef_search / 4 (at least 1) more per doubling past 100 nodes */
        size_t nodes = i + 1;
        uint32_t want = nodes <= 100 ? 4 : nodes <= 200 ? 5 : nodes <= 400 ? 6 : nodes <= 800 ? 7 : 0;
        if (want)
            ASSERT_EQ(leo_hnsw_search_ef(grown), want);
    }
    /* 5000 nodes: past 100, 200, 400, 800, 1600 and 3200 */
    ASSERT_EQ(leo_hnsw_search_ef(grown), 10);
    ASSERT_EQ(leo_hnsw_ef_search(grown), 4);
    ASSERT_EQ(leo_hnsw_search_ef(fixed), 4);
    /* the same graph (the same seed and inserts): the grown list finds more of the true nearest, and exactly
     * what the fixed index finds with its list set to the same size */
    double r_fixed = recall_at(fixed, base, n, dim, NULL, queries, 200, 1);
    double r_grown = recall_at(grown, base, n, dim, NULL, queries, 200, 1);
    leo_hnsw_set_ef_search(fixed, 10);
    double r_fixed10 = recall_at(fixed, base, n, dim, NULL, queries, 200, 1);
    fprintf(stderr, "  recall@1 with ef 4: %.3f, grown to 10: %.3f, fixed at 10: %.3f\n", r_fixed, r_grown, r_fixed10);
    ASSERT(r_grown > r_fixed);
    ASSERT_DBL_EQ(r_grown, r_fixed10);
    /* a larger ef_search grows by larger steps: 40 + 6 * 10 */
    leo_hnsw_set_ef_search(grown, 40);
    ASSERT_EQ(leo_hnsw_search_ef(grown), 100);
    /* tombstones count (they are walked); compacting them away shrinks the list again */
    for (size_t i = 0; i < n; i++)
        if (i % 40 != 0)
            ASSERT_EQ(leo_hnsw_delete(grown, ID_OF(i)), 0);
    ASSERT_EQ(leo_hnsw_search_ef(grown), 100);
    leo_hnsw_compact(grown);
    ASSERT_EQ(leo_hnsw_count(grown), 125);
    ASSERT_EQ(leo_hnsw_search_ef(grown), 50);
    leo_hnsw_free(fixed);
    leo_hnsw_free(grown);
    leo_free(base);
    leo_free(queries);
}

TEST(compact_drops_tombstones_and_keeps_entries)
{
    const size_t n = 4000, dim = 32;
    float *base = random_vectors(n, dim, 700);
    float *queries = random_vectors(100, dim, 701);
    uint8_t *gone = leo_calloc(n, 1);
    struct leo_hnsw *h = build(base, n, dim, 21);
    size_t before = leo_hnsw_memory(h);
    for (size_t i = 0; i < n; i++) {
        if (i % 4 != 0) {
            ASSERT_EQ(leo_hnsw_delete(h, ID_OF(i)), 0);
            gone[i] = 1;
        }
    }
    float kept[32];
    ASSERT_EQ(leo_hnsw_get(h, ID_OF(8), kept), 0);
    leo_hnsw_set_ef_search(h, 50);
    leo_hnsw_compact(h);
    ASSERT_EQ(leo_hnsw_count(h), n / 4);
    ASSERT_EQ(leo_hnsw_deleted(h), 0);
    ASSERT_EQ(leo_hnsw_ef_search(h), 50);
    ASSERT(leo_hnsw_memory(h) < before / 2);
    float got[32];
    ASSERT_EQ(leo_hnsw_get(h, ID_OF(8), got), 0);
    ASSERT_MEM_EQ(got, sizeof(got), kept, sizeof(kept));
    ASSERT_EQ(leo_hnsw_contains(h, ID_OF(1)), 0);
    leo_hnsw_set_ef_search(h, 0);
    double r = recall_at(h, base, n, dim, gone, queries, 100, K);
    fprintf(stderr, "  recall@10 after compacting to a quarter: %.4f (%zu -> %zu bytes)\n", r, before,
            leo_hnsw_memory(h));
    ASSERT(r >= 0.95);
    /* the compacted index takes new entries as usual */
    ASSERT_EQ(leo_hnsw_insert(h, ID_OF(1), base + dim), 0);
    ASSERT_EQ(leo_hnsw_count(h), n / 4 + 1);
    leo_hnsw_free(h);
    leo_free(base);
    leo_free(queries);
    leo_free(gone);
}

TEST(memory_grows_with_entries_and_reserve_preallocates)
{
    const size_t dim = 64;
    float *base = random_vectors(1000, dim, 800);
    struct leo_hnsw *h = make(dim, 0, 0, 1);
    size_t empty = leo_hnsw_memory(h);
    leo_hnsw_reserve(h, 1000);
    size_t reserved = leo_hnsw_memory(h);
    ASSERT(reserved >= empty + 1000 * dim * sizeof(float));
    for (size_t i = 0; i < 1000; i++)
        ASSERT_EQ(leo_hnsw_insert(h, ID_OF(i), base + i * dim), 0);
    /* only the upper-level pool and the scratch heaps may have grown past the reservation */
    size_t full = leo_hnsw_memory(h);
    ASSERT(full >= reserved);
    ASSERT(full < reserved + 64 * 1024);
    leo_hnsw_free(h);
    leo_free(base);
}

TEST_MAIN(TEST_ENTRY(create_rejects_bad_parameters), TEST_ENTRY(empty_index_finds_nothing),
          TEST_ENTRY(refuses_zero_and_non_finite_vectors), TEST_ENTRY(exact_results_on_a_tiny_set),
          TEST_ENTRY(small_set_matches_exact_search), TEST_ENTRY(ids_are_preserved),
          TEST_ENTRY(recall_on_random_unit_vectors), TEST_ENTRY(recall_on_clustered_vectors),
          TEST_ENTRY(deleted_entries_are_never_returned), TEST_ENTRY(reinserting_an_id_replaces_its_vector),
          TEST_ENTRY(same_seed_builds_the_same_index), TEST_ENTRY(ef_search_change_takes_effect),
          TEST_ENTRY(ef_search_grows_with_the_graph_when_asked),
          TEST_ENTRY(compact_drops_tombstones_and_keeps_entries),
          TEST_ENTRY(memory_grows_with_entries_and_reserve_preallocates))
