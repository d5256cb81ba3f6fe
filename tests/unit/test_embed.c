/*
 * test_embed.c — the embedders: `local` (normalisation, determinism, unit norm, similarity order) and
 * `provider` against the real mock provider (<build>/leo-mock-provider, started per test on a free port).
 *
 * The mock is started with --listen 127.0.0.1:0 and the test reads its "listening on" line from a pipe (a
 * blocking read: the line is the event). Each provider test counts its callbacks; teardown frees the embedder,
 * closes the upstream client and runs the loop until no handle is left, so leaks fail the ASan build.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/error.h"
#include "gateway/embed.h"
#include "gateway/upstream.h"
#include "tests/unit/test.h"

/* ---- local ---- */

static void norm_is(const char *in, const char *want)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_embed_normalize(leo_str_c(in), &b);
    ASSERT_STR_EQ(b.p, want);
    leo_buf_release(&b);
}

TEST(normalize)
{
    norm_is("Hello,   World!", "hello world");
    norm_is("  What's 3.5 + 1,000 - -2 = 50%?  ", "whats 3.5 1,000 -2 50%");
    norm_is("Don't\tstop\n\nnow.", "dont stop now");
    norm_is("\xc3\x89" "COLE \xc3\x80 Paris", "\xc3\xa9" "cole \xc3\xa0 paris"); /* ÉCOLE À → école à */
    norm_is("\xc2\xab" "Bonjour" "\xc2\xbb", "bonjour");                          /* «Bonjour» */
    norm_is("a\xe2\x80\x94" "b", "a b");                                          /* a—b */
    norm_is("don\xe2\x80\x99t", "dont");                                          /* don’t */
    norm_is("end.", "end");
    norm_is("", "");
    norm_is("?!", "");
}

static double norm_of(const float *v, unsigned dim)
{
    double n = 0;
    for (unsigned i = 0; i < dim; i++)
        n += (double)v[i] * v[i];
    return sqrt(n);
}

TEST(local_deterministic_and_unit)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    struct leo_embedder *e2 = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    struct leo_embedder *other = leo_embed_local_new(42);
    ASSERT_EQ(leo_embedder_dim(e), LEO_EMBED_LOCAL_DIM);
    float a[LEO_EMBED_LOCAL_DIM], b[LEO_EMBED_LOCAL_DIM], c[LEO_EMBED_LOCAL_DIM];
    struct leo_str t = leo_str_c("How do I reverse a list in Python?");
    ASSERT_EQ(leo_embed_now(e, t, a), 0);
    ASSERT_EQ(leo_embed_now(e2, t, b), 0);
    ASSERT(memcmp(a, b, sizeof(a)) == 0);
    ASSERT(fabs(norm_of(a, LEO_EMBED_LOCAL_DIM) - 1.0) < 1e-5);
    ASSERT_EQ(leo_embed_now(other, t, c), 0);
    ASSERT(memcmp(a, c, sizeof(a)) != 0);
    ASSERT(fabs(norm_of(c, LEO_EMBED_LOCAL_DIM) - 1.0) < 1e-5);
    /* texts that normalise alike embed alike */
    ASSERT_EQ(leo_embed_now(e, leo_str_c("  how DO i reverse a list, in python  "), b), 0);
    ASSERT(leo_embed_cosine(a, b, LEO_EMBED_LOCAL_DIM) > 0.999999);
    /* no feature at all: the zero vector, similar to nothing */
    ASSERT_EQ(leo_embed_now(e, leo_str_c("?!"), c), 0);
    ASSERT_DBL_EQ(norm_of(c, LEO_EMBED_LOCAL_DIM), 0.0);
    ASSERT_DBL_EQ(leo_embed_cosine(a, c, LEO_EMBED_LOCAL_DIM), 0.0);
    /* local never needs I/O */
    ASSERT_EQ(leo_embed_start(e, t, NULL, NULL, NULL), LEO_EINVAL);
    leo_embedder_free(e);
    leo_embedder_free(e2);
    leo_embedder_free(other);
}

static double sim(struct leo_embedder *e, const char *x, const char *y)
{
    float a[LEO_EMBED_LOCAL_DIM], b[LEO_EMBED_LOCAL_DIM];
    ASSERT_EQ(leo_embed_now(e, leo_str_c(x), a), 0);
    ASSERT_EQ(leo_embed_now(e, leo_str_c(y), b), 0);
    return leo_embed_cosine(a, b, LEO_EMBED_LOCAL_DIM);
}

TEST(local_similar_closer_than_unrelated)
{
    struct leo_embedder *e = leo_embed_local_new(LEO_EMBED_DEFAULT_SEED);
    static const char *const triples[][3] = {
        {"How do I reverse a list in Python?", "What's the way to reverse a Python list?", "Why is the sky blue?"},
        {"How can I reset my password?", "I forgot my password, how do I reset it?", "How do I cook rice?"},
        {"How long should I boil an egg?", "Boiling an egg: how long?", "How do I rename a git branch?"},
        {"Explain how photosynthesis works", "How does photosynthesis work?", "Cheapest way to travel in Europe"},
    };
    for (size_t i = 0; i < sizeof(triples) / sizeof(triples[0]); i++) {
        double near = sim(e, triples[i][0], triples[i][1]), far = sim(e, triples[i][0], triples[i][2]);
        if (!(near > far + 0.2))
            TEST_FAIL_("triple %zu: similar %.3f, unrelated %.3f", i, near, far);
    }
    /* word order matters a little (pairs), and inflections share n-grams */
    ASSERT(sim(e, "dog bites man", "man bites dog") < 0.999);
    ASSERT(sim(e, "configure the server", "configuring servers") > sim(e, "configure the server", "bake a cake"));
    leo_embedder_free(e);
}

/* ---- the mock provider ---- */

struct mock {
    pid_t pid;
    int port;
};

static void mock_start(struct mock *m)
{
    const char *dir = getenv("LEO_BUILD_DIR");
    ASSERT(dir != NULL);
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/leo-mock-provider", dir);
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(bin, bin, "--listen", "127.0.0.1:0", "--log-size", "100", (char *)NULL);
        fprintf(stderr, "cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    ASSERT(f != NULL);
    char line[256];
    ASSERT(fgets(line, sizeof(line), f) != NULL); /* blocks until the mock listens (or dies: then NULL) */
    fclose(f);
    const char *colon = strrchr(line, ':');
    ASSERT(strstr(line, "mock provider listening on 127.0.0.1:") == line && colon != NULL);
    m->port = (int)strtol(colon + 1, NULL, 10);
    m->pid = pid;
    ASSERT(m->port > 0);
}

static void mock_stop(struct mock *m)
{
    kill(m->pid, SIGTERM);
    int status = 0;
    ASSERT_EQ(waitpid(m->pid, &status, 0), m->pid);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static uv_loop_t loop;
static uv_timer_t watchdog;
static struct leo_upstream *up;
static struct mock mock;

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    TEST_FAIL_("test did not finish within its time bound");
}

static void fx_setup(void)
{
    mock_start(&mock);
    ASSERT_EQ(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &watchdog);
    uv_timer_start(&watchdog, on_watchdog, 20000, 0);
    uv_unref((uv_handle_t *)&watchdog);
    up = leo_upstream_new(&loop);
    ASSERT(up != NULL);
}

static void fx_teardown(void)
{
    leo_upstream_close(up);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
    mock_stop(&mock);
}

static void run_until(const int *counter, int want)
{
    while (*counter < want)
        uv_run(&loop, UV_RUN_ONCE);
}

struct result {
    int calls;
    int err;
    unsigned dim;
    float vec[LEO_EMBED_MAX_DIM];
    char msg[200];
};

static void on_embed(int err, const float *vec, unsigned dim, const char *msg, void *ud)
{
    struct result *r = ud;
    r->calls++;
    r->err = err;
    r->dim = dim;
    if (vec)
        memcpy(r->vec, vec, sizeof(float) * dim);
    snprintf(r->msg, sizeof(r->msg), "%s", msg);
}

static struct leo_embedder *provider(const char *key, unsigned dims, size_t cache, const struct leo_http_header *h,
                                     size_t nh, uint64_t timeout_ms)
{
    char url[64], err[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/", mock.port);
    struct leo_embed_provider_config cfg = {.base_url = url,
                                            .api_key = key,
                                            .model = "mock-embed",
                                            .dimensions = dims,
                                            .timeout_ms = timeout_ms,
                                            .cache_entries = cache,
                                            .headers = h,
                                            .nheaders = nh};
    struct leo_embedder *e = leo_embed_provider_new(up, &cfg, err, sizeof(err));
    ASSERT(e != NULL);
    return e;
}

/* The mock's request log, fetched with a plain GET through the same upstream client. */
struct fetched {
    int done;
    struct leo_buf body;
};

static void f_headers(struct leo_upstream_xfer *x, int status, const struct leo_http_header *h, size_t n, void *ud)
{
    ASSERT_EQ(status, 200);
}

static void f_data(struct leo_upstream_xfer *x, const char *data, size_t len, void *ud)
{
    struct fetched *f = ud;
    leo_buf_add(&f->body, data, len);
}

static void f_done(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg, void *ud)
{
    struct fetched *f = ud;
    ASSERT_EQ(err, 0);
    f->done++;
}

static void fetch_log(struct leo_buf *out)
{
    static const struct leo_upstream_callbacks cbs = {f_headers, f_data, f_done};
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/_mock/requests", mock.port);
    struct fetched f = {0, LEO_BUF_INIT};
    struct leo_upstream_request req = {.method = "GET", .url = url};
    ASSERT(leo_upstream_start(up, &req, &cbs, &f) != NULL);
    run_until(&f.done, 1);
    *out = f.body;
}

TEST(provider_embeds_and_caches)
{
    fx_setup();
    struct leo_embedder *e = provider("sk-test-embed", 16, 8, NULL, 0, 5000);
    ASSERT_EQ(leo_embedder_dim(e), 16);
    float v[LEO_EMBED_MAX_DIM];
    struct leo_str t = leo_str_c("how do I boil an egg");
    ASSERT_EQ(leo_embed_now(e, t, v), UV_EAGAIN);
    struct result r = {0};
    struct leo_embed_op *op = NULL;
    ASSERT_EQ(leo_embed_start(e, t, on_embed, &r, &op), 0);
    ASSERT(op != NULL);
    ASSERT_EQ(r.calls, 0); /* never from inside the call */
    run_until(&r.calls, 1);
    ASSERT_EQ(r.err, 0);
    ASSERT_EQ(r.dim, 16);
    ASSERT(fabs(norm_of(r.vec, 16) - 1.0) < 1e-5);

    /* the LRU answers the same text synchronously, with the same vector */
    ASSERT_EQ(leo_embed_now(e, t, v), 0);
    ASSERT(memcmp(v, r.vec, sizeof(float) * 16) == 0);
    struct leo_embed_stats st;
    leo_embed_provider_stats(e, &st);
    ASSERT_EQ(st.calls, 1);
    ASSERT_EQ(st.cache_hits, 1);
    ASSERT_EQ(st.failures, 0);
    ASSERT_EQ(st.cached, 1);

    /* a different text is a different vector (the mock hashes the input) */
    struct result r2 = {0};
    ASSERT_EQ(leo_embed_start(e, leo_str_c("how do I poach an egg"), on_embed, &r2, NULL), 0);
    run_until(&r2.calls, 1);
    ASSERT_EQ(r2.err, 0);
    ASSERT(memcmp(r2.vec, r.vec, sizeof(float) * 16) != 0);

    /* what went upstream: the path, the key in the Authorization header, the body's fields */
    struct leo_buf log;
    fetch_log(&log);
    ASSERT(strstr(log.p, "\"path\":\"/v1/embeddings\"") != NULL);
    ASSERT(strstr(log.p, "[\"Authorization\",\"Bearer sk-test-embed\"]") != NULL);
    ASSERT(strstr(log.p, "\\\"model\\\":\\\"mock-embed\\\"") != NULL);
    ASSERT(strstr(log.p, "\\\"input\\\":\\\"how do I boil an egg\\\"") != NULL);
    ASSERT(strstr(log.p, "\\\"dimensions\\\":16") != NULL);
    leo_buf_release(&log);
    leo_embedder_free(e);
    fx_teardown();
}

TEST(provider_learns_dimension_and_evicts_lru)
{
    fx_setup();
    struct leo_embedder *e = provider(NULL, 0, 2, NULL, 0, 5000);
    ASSERT_EQ(leo_embedder_dim(e), 0);
    static const char *const texts[] = {"first text", "second text", "third text"};
    for (int i = 0; i < 3; i++) {
        struct result r = {0};
        ASSERT_EQ(leo_embed_start(e, leo_str_c(texts[i]), on_embed, &r, NULL), 0);
        run_until(&r.calls, 1);
        ASSERT_EQ(r.err, 0);
        ASSERT_EQ(r.dim, 8); /* the mock's default */
    }
    ASSERT_EQ(leo_embedder_dim(e), 8);
    float v[LEO_EMBED_MAX_DIM];
    ASSERT_EQ(leo_embed_now(e, leo_str_c("first text"), v), UV_EAGAIN); /* evicted: the least recent */
    ASSERT_EQ(leo_embed_now(e, leo_str_c("third text"), v), 0);
    ASSERT_EQ(leo_embed_now(e, leo_str_c("second text"), v), 0);
    struct leo_embed_stats st;
    leo_embed_provider_stats(e, &st);
    ASSERT_EQ(st.cached, 2);
    /* no Authorization header without a key */
    struct leo_buf log;
    fetch_log(&log);
    ASSERT(strstr(log.p, "Authorization") == NULL);
    leo_buf_release(&log);
    leo_embedder_free(e);
    fx_teardown();
}

TEST(provider_errors)
{
    fx_setup();
    /* an upstream error status: a clean error, the key nowhere in the message */
    const struct leo_http_header h401[] = {{LEO_STR_LIT("x-mock-fault"), LEO_STR_LIT("status=401")}};
    struct leo_embedder *e = provider("sk-secret-value", 0, 4, h401, 1, 5000);
    struct result r = {0};
    ASSERT_EQ(leo_embed_start(e, leo_str_c("hello"), on_embed, &r, NULL), 0);
    run_until(&r.calls, 1);
    ASSERT_EQ(r.err, LEO_EUPSTREAM);
    ASSERT_STR_EQ(r.msg, "embeddings upstream answered status 401");
    float v[LEO_EMBED_MAX_DIM];
    ASSERT_EQ(leo_embed_now(e, leo_str_c("hello"), v), UV_EAGAIN); /* failures are not cached */
    struct leo_embed_stats st;
    leo_embed_provider_stats(e, &st);
    ASSERT_EQ(st.failures, 1);
    leo_embedder_free(e);

    /* a body that is not JSON */
    const struct leo_http_header hbad[] = {{LEO_STR_LIT("x-mock-fault"), LEO_STR_LIT("malformed")}};
    e = provider(NULL, 0, 4, hbad, 1, 5000);
    struct result r2 = {0};
    ASSERT_EQ(leo_embed_start(e, leo_str_c("hello"), on_embed, &r2, NULL), 0);
    run_until(&r2.calls, 1);
    ASSERT_EQ(r2.err, LEO_EPARSE);
    ASSERT_STR_EQ(r2.msg, "embeddings answer has no data[0].embedding");
    leo_embedder_free(e);

    /* the timeout: the mock holds its headers far longer than the embedder waits */
    const struct leo_http_header hslow[] = {{LEO_STR_LIT("x-mock-fault"), LEO_STR_LIT("delay_headers_ms=60000")}};
    e = provider(NULL, 0, 4, hslow, 1, 200);
    struct result r3 = {0};
    ASSERT_EQ(leo_embed_start(e, leo_str_c("hello"), on_embed, &r3, NULL), 0);
    run_until(&r3.calls, 1);
    ASSERT_EQ(r3.err, LEO_ETIMEOUT);
    leo_embedder_free(e);
    fx_teardown();
}

TEST(provider_connect_refused)
{
    fx_setup();
    char err[128];
    /* port 1 on loopback: nothing listens there in a test environment */
    struct leo_embed_provider_config cfg = {.base_url = "http://127.0.0.1:1/v1", .model = "m", .timeout_ms = 5000};
    struct leo_embedder *e = leo_embed_provider_new(up, &cfg, err, sizeof(err));
    ASSERT(e != NULL);
    struct result r = {0};
    ASSERT_EQ(leo_embed_start(e, leo_str_c("hello"), on_embed, &r, NULL), 0);
    run_until(&r.calls, 1);
    ASSERT_EQ(r.err, LEO_ECONNECT);
    leo_embedder_free(e);
    fx_teardown();
}

TEST(provider_cancel_and_free_in_flight)
{
    fx_setup();
    const struct leo_http_header hslow[] = {{LEO_STR_LIT("x-mock-fault"), LEO_STR_LIT("delay_headers_ms=60000")}};
    struct leo_embedder *slow = provider(NULL, 0, 4, hslow, 1, 30000);
    struct leo_embedder *fast = provider(NULL, 0, 4, NULL, 0, 5000);
    struct result cancelled = {0}, freed = {0}, ok = {0};
    struct leo_embed_op *op = NULL;
    ASSERT_EQ(leo_embed_start(slow, leo_str_c("one"), on_embed, &cancelled, &op), 0);
    ASSERT_EQ(leo_embed_start(slow, leo_str_c("two"), on_embed, &freed, NULL), 0);
    leo_embed_cancel(op);
    /* a later call on the same loop completes; the cancelled one never calls back */
    ASSERT_EQ(leo_embed_start(fast, leo_str_c("three"), on_embed, &ok, NULL), 0);
    run_until(&ok.calls, 1);
    ASSERT_EQ(ok.err, 0);
    leo_embedder_free(slow); /* "two" is still in flight: freed without a callback */
    ASSERT_EQ(cancelled.calls, 0);
    ASSERT_EQ(freed.calls, 0);
    ASSERT_EQ(leo_upstream_active(up), 0);
    leo_embedder_free(fast);
    fx_teardown();
}

TEST(provider_config_errors)
{
    char err[128];
    struct leo_embed_provider_config cfg = {.model = "m"};
    ASSERT(leo_embed_provider_new(NULL, &cfg, err, sizeof(err)) == NULL);
    ASSERT_STR_EQ(err, "embedder: base_url is missing");
    cfg = (struct leo_embed_provider_config){.base_url = "http://x/v1"};
    ASSERT(leo_embed_provider_new(NULL, &cfg, err, sizeof(err)) == NULL);
    ASSERT_STR_EQ(err, "embedder: model is missing");
    cfg = (struct leo_embed_provider_config){.base_url = "http://x/v1", .model = "m", .dimensions = 5000};
    ASSERT(leo_embed_provider_new(NULL, &cfg, err, sizeof(err)) == NULL);
    ASSERT_STR_EQ(err, "embedder: dimensions 5000 is above the limit of 4096");
}

TEST_MAIN(TEST_ENTRY(normalize), TEST_ENTRY(local_deterministic_and_unit),
          TEST_ENTRY(local_similar_closer_than_unrelated), TEST_ENTRY(provider_embeds_and_caches),
          TEST_ENTRY(provider_learns_dimension_and_evicts_lru), TEST_ENTRY(provider_errors),
          TEST_ENTRY(provider_connect_refused), TEST_ENTRY(provider_cancel_and_free_in_flight),
          TEST_ENTRY(provider_config_errors))
