/*
 * hnsw_bench.c — insert time, search latency, recall@10 against exact search and memory per entry of the
 * semantic cache's vector index (common/hnsw.c) at several sizes. Driven by tests/bench/hnsw.sh; a benchmark,
 * not a test: it prints figures and fails only on bad arguments.
 *
 *   hnsw_bench [--sizes 10000,100000] [--dim 256] [--M 0] [--efc 0] [--ef 0,32,64,...] [--queries 1000]
 *              [--recall-queries 200] [--data random|clustered] [--clusters 1000] [--seed 1]
 *              [--no-reserve]
 *
 * --M, --efc and an --ef of 0 mean the index's defaults. For each size it generates the vectors (uniform random
 * directions, or points around random centres with --data clustered), inserts them one by one (timing the
 * whole build), then for each ef_search runs --queries searches for the 10 nearest (fresh vectors from the same
 * distribution) one at a time, timing each with CLOCK_MONOTONIC, and checks the first --recall-queries of them
 * against an exact scan of all vectors. The index is sized for the whole set first (leo_hnsw_reserve, as a
 * rebuild from Redis at start does), so bytes/entry is the index's own cost; with --no-reserve it grows by
 * doubling and bytes/entry includes up to 2x of unused capacity.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/hnsw.h"

#define K 10
#define MAX_LIST 32

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double gaussian(void)
{
    double u1 = (double)((rnd() >> 11) + 1) * 0x1.0p-53, u2 = (double)(rnd() >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static void unit(float *v, size_t dim)
{
    double s = 0;
    for (size_t i = 0; i < dim; i++)
        s += (double)v[i] * v[i];
    double inv = 1.0 / sqrt(s);
    for (size_t i = 0; i < dim; i++)
        v[i] = (float)(v[i] * inv);
}

/* n unit vectors: random directions, or (centres != NULL) a random centre plus gaussian noise of about the
 * centre's length, so that points of one cluster have a cosine near 0.5 to each other. */
static void generate(float *out, size_t n, size_t dim, const float *centres, size_t clusters)
{
    double sigma = 1.0 / sqrt((double)dim);
    for (size_t i = 0; i < n; i++) {
        float *v = out + i * dim;
        if (centres == NULL) {
            for (size_t j = 0; j < dim; j++)
                v[j] = (float)gaussian();
        } else {
            const float *c = centres + (rnd() % clusters) * dim;
            for (size_t j = 0; j < dim; j++)
                v[j] = (float)(c[j] + sigma * gaussian());
        }
        unit(v, dim);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Wall time, and the CPU time of this thread: on a machine shared with other work the second is the fairer
 * figure (it leaves out the time the process waited for a core, not the cache misses others cause). */
static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static double cpu_s(void)
{
    return clock_s(CLOCK_THREAD_CPUTIME_ID);
}

static double percentile(double *v, size_t n, double p)
{
    qsort(v, n, sizeof(double), cmp_double);
    return v[(size_t)((double)(n - 1) * p)];
}

/* Exact top K by a full scan (float dot products; the vectors are unit length, so larger dot = nearer). */
static void exact_top(const float *base, size_t n, size_t dim, const float *q, uint64_t *out)
{
    float best[K];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const float *v = base + i * dim;
        float s = 0;
        for (size_t j = 0; j < dim; j++)
            s += v[j] * q[j];
        if (m == K && s <= best[K - 1])
            continue;
        size_t j = m < K ? m++ : K - 1;
        while (j > 0 && best[j - 1] < s) {
            best[j] = best[j - 1];
            out[j] = out[j - 1];
            j--;
        }
        best[j] = s;
        out[j] = i;
    }
}

static int parse_list(const char *s, uint64_t *out, size_t *n)
{
    *n = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s || errno || *n == MAX_LIST)
            return -1;
        out[(*n)++] = v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return *n ? 0 : -1;
}

static int parse_u64(const char *s, uint64_t *out)
{
    size_t n;
    return parse_list(s, out, &n) == 0 && n == 1 ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: hnsw_bench [--sizes N,N,...] [--dim D] [--M M] [--efc EF] [--ef EF,EF,...] "
                    "[--queries Q] [--recall-queries R] [--data random|clustered] [--clusters C] [--seed S] "
                    "[--no-reserve]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    uint64_t sizes[MAX_LIST] = {10000, 100000}, efs[MAX_LIST] = {0};
    size_t n_sizes = 2, n_efs = 1;
    uint64_t dim = 256, M = 0, efc = 0, n_queries = 1000, n_recall = 200, clusters = 1000, seed = 1;
    int clustered = 0, reserve = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-reserve") == 0) {
            reserve = 0;
            continue;
        }
        int bad = v == NULL;
        if (bad)
            usage();
        if (strcmp(a, "--sizes") == 0)
            bad = parse_list(v, sizes, &n_sizes);
        else if (strcmp(a, "--ef") == 0)
            bad = parse_list(v, efs, &n_efs);
        else if (strcmp(a, "--dim") == 0)
            bad = parse_u64(v, &dim);
        else if (strcmp(a, "--M") == 0)
            bad = parse_u64(v, &M);
        else if (strcmp(a, "--efc") == 0)
            bad = parse_u64(v, &efc);
        else if (strcmp(a, "--queries") == 0)
            bad = parse_u64(v, &n_queries);
        else if (strcmp(a, "--recall-queries") == 0)
            bad = parse_u64(v, &n_recall);
        else if (strcmp(a, "--clusters") == 0)
            bad = parse_u64(v, &clusters) || clusters == 0;
        else if (strcmp(a, "--seed") == 0)
            bad = parse_u64(v, &seed);
        else if (strcmp(a, "--data") == 0 && (strcmp(v, "random") == 0 || strcmp(v, "clustered") == 0))
            clustered = strcmp(v, "clustered") == 0;
        else
            bad = 1;
        if (bad)
            usage();
        i++;
    }
    if (dim == 0 || dim > LEO_HNSW_MAX_DIM || n_queries == 0 || n_recall > n_queries)
        usage();

    printf("# hnsw_bench: dim %" PRIu64 ", data %s", dim, clustered ? "clustered" : "random");
    if (clustered)
        printf(" (%" PRIu64 " clusters)", clusters);
    printf(", %" PRIu64 " queries for latency (k = %d), the first %" PRIu64 " also for recall@%d, seed %" PRIu64
           ", %s\n",
           n_queries, K, n_recall, K, seed, reserve ? "reserved to size" : "grown by doubling");
    printf("# build_s: wall time of all inserts; build_cpu_s and insert_cpu_us: CPU time of this thread for them, in\n"
           "# all and per insert; p50_us, p99_us: wall latency of one search; cpu_p50, cpu_p99: its CPU time\n");
    printf("%9s %4s %5s %5s %9s %11s %13s %8s %8s %8s %8s %9s %11s\n", "entries", "M", "efc", "ef", "build_s",
           "build_cpu_s", "insert_cpu_us", "p50_us", "p99_us", "cpu_p50", "cpu_p99", "recall10", "bytes/entry");

    for (size_t si = 0; si < n_sizes; si++) {
        size_t n = (size_t)sizes[si];
        rng_state = seed;
        float *centres = NULL;
        if (clustered) {
            centres = leo_malloc(clusters * dim * sizeof(float));
            generate(centres, clusters, dim, NULL, 0);
        }
        float *base = leo_malloc(n * dim * sizeof(float));
        float *queries = leo_malloc(n_queries * dim * sizeof(float));
        generate(base, n, dim, centres, clusters);
        generate(queries, n_queries, dim, centres, clusters);

        struct leo_hnsw_params p = {
            .dim = (uint32_t)dim, .M = (uint32_t)M, .ef_construction = (uint32_t)efc, .seed = seed};
        struct leo_hnsw *h;
        if (leo_hnsw_create(&h, &p) < 0) {
            fprintf(stderr, "hnsw_bench: parameters refused (dim %" PRIu64 ", M %" PRIu64 ")\n", dim, M);
            return 2;
        }
        double t0 = now_s(), c0 = cpu_s();
        if (reserve)
            leo_hnsw_reserve(h, n);
        for (size_t i = 0; i < n; i++) {
            if (leo_hnsw_insert(h, i, base + i * dim) < 0) {
                fprintf(stderr, "hnsw_bench: insert %zu failed\n", i);
                return 1;
            }
        }
        double build = now_s() - t0, build_cpu = cpu_s() - c0;
        size_t mem = leo_hnsw_memory(h);

        /* exact answers once per size, shared by every ef */
        uint64_t *exact = leo_malloc(n_recall * K * sizeof(uint64_t));
        for (size_t qi = 0; qi < n_recall; qi++)
            exact_top(base, n, dim, queries + qi * dim, exact + qi * K);

        double *lat = leo_malloc(n_queries * sizeof(double)), *cpu = leo_malloc(n_queries * sizeof(double));
        for (size_t ei = 0; ei < n_efs; ei++) {
            leo_hnsw_set_ef_search(h, (uint32_t)efs[ei]);
            size_t found = 0;
            for (size_t qi = 0; qi < n_queries; qi++) {
                struct leo_hnsw_hit hits[K];
                size_t nh;
                double s = now_s(), c = cpu_s();
                leo_hnsw_search(h, queries + qi * dim, K, hits, &nh);
                cpu[qi] = (cpu_s() - c) * 1e6;
                lat[qi] = (now_s() - s) * 1e6;
                if (qi < n_recall)
                    for (size_t a = 0; a < nh; a++)
                        for (size_t b = 0; b < K; b++)
                            found += hits[a].id == exact[qi * K + b];
            }
            double p50 = percentile(lat, n_queries, 0.5), p99 = percentile(lat, n_queries, 0.99);
            double cpu50 = percentile(cpu, n_queries, 0.5), cpu99 = percentile(cpu, n_queries, 0.99);
            printf("%9zu %4" PRIu64 " %5" PRIu64 " %5u %9.2f %11.2f %13.1f %8.1f %8.1f %8.1f %8.1f %9.4f %11.0f\n", n,
                   M ? M : (uint64_t)LEO_HNSW_DEFAULT_M, efc ? efc : (uint64_t)LEO_HNSW_DEFAULT_EF_CONSTRUCTION,
                   leo_hnsw_ef_search(h), build, build_cpu, build_cpu * 1e6 / (double)n, p50, p99, cpu50, cpu99,
                   n_recall ? (double)found / (double)(n_recall * K) : NAN, (double)mem / (double)n);
            fflush(stdout);
        }
        leo_free(lat);
        leo_free(cpu);
        leo_free(exact);
        leo_hnsw_free(h);
        leo_free(base);
        leo_free(queries);
        leo_free(centres);
    }
    return 0;
}
