/* Unit tests of gateway/quota.c's in-process backend, with injected time. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "common/arena.h"
#include "common/redis.h"
#include "gateway/quota.h"
#include "tests/unit/test.h"

/* 2024-05-01T00:00:00Z: a minute, day and month boundary */
#define T0 ((uint64_t)1714521600000)
#define MINUTE ((uint64_t)60000)
#define DAY ((uint64_t)86400000)

struct fixture {
    struct leo_config cfg;
    struct leo_tenant tenant;
    struct leo_tenant_key key;
    struct leo_provider prov;
    struct leo_deployment dep;
    struct leo_quota_service *q;
    int alerts;
    char last_alert[512];
};

static void fx_init(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    f->cfg.alerts.threshold = 0; /* tests that need alerts set it */
    f->tenant.id = "acme";
    f->key.name = "ci";
    f->key.tenant = &f->tenant;
    f->prov.name = "openai";
    f->dep.provider = &f->prov;
    f->dep.model = "gpt-4o";
    f->dep.id = "openai/gpt-4o";
    f->q = leo_quota_new(NULL, NULL);
}

static void fx_done(struct fixture *f)
{
    leo_quota_free(f->q);
}

static void on_result(const struct leo_quota_result *res, void *ud)
{
    struct leo_quota_result *out = ud;
    ASSERT_EQ(out->status, -1); /* fires once */
    *out = *res;
}

/* Admits synchronously (in-process backend) and returns the result. */
static struct leo_quota_result admit(struct fixture *f, uint64_t now, uint64_t tokens, double usd)
{
    struct leo_quota_request r = {.cfg = &f->cfg, .key = &f->key, .dep = &f->dep, .est_tokens = tokens,
                                  .est_usd = usd, .now_ms = now};
    struct leo_quota_result res;
    memset(&res, 0, sizeof(res));
    res.status = -1;
    ASSERT_EQ(leo_quota_admit(f->q, &r, on_result, &res), 0);
    ASSERT(res.status != -1);
    return res;
}

static uint64_t usage(struct fixture *f, const char *scope, const char *id, const char *kind, uint64_t now)
{
    return leo_quota_local_usage(f->q, scope, id, kind, now);
}

TEST(no_limits_admits_without_reservation)
{
    struct fixture f;
    fx_init(&f);
    struct leo_quota_result r = admit(&f, T0, 100, 0.5);
    ASSERT(r.allowed);
    ASSERT_STR_EQ(r.reservation, "");
    ASSERT(!r.has_requests && !r.has_tokens);
    ASSERT_EQ(leo_quota_pending(f.q), 0);
    leo_quota_settle(f.q, r.reservation, 1, 1, true); /* a no-op */
    fx_done(&f);
}

TEST(rpm_rejects_past_the_limit_and_names_it)
{
    struct fixture f;
    fx_init(&f);
    f.key.quota.rpm = 3;
    for (int i = 0; i < 3; i++) {
        struct leo_quota_result r = admit(&f, T0 + 1000, 10, 0);
        ASSERT(r.allowed);
        ASSERT(r.reservation[0] != '\0');
        ASSERT_EQ(r.remaining_requests, 2 - i);
        leo_quota_settle(f.q, r.reservation, 10, 0, true);
    }
    struct leo_quota_result r = admit(&f, T0 + 1000, 10, 0);
    ASSERT(!r.allowed);
    ASSERT_EQ(r.status, 429);
    ASSERT_STR_EQ(r.scope, "key");
    ASSERT_STR_EQ(r.kind, "rpm");
    ASSERT_STR_EQ(r.id, "acme/ci");
    ASSERT_EQ(r.limit, 3);
    ASSERT_EQ(r.remaining, 0);
    ASSERT_STR_EQ(r.reservation, "");
    /* cur = 3 fills the limit: the next minute needs 3*(W-e'') <= 2W, e'' >= W/3 = 20 s; now is 1 s in */
    ASSERT_EQ(r.retry_after_ms, 59000 + 20000);
    ASSERT(!admit(&f, T0 + MINUTE + 19999, 10, 0).allowed);
    ASSERT(admit(&f, T0 + MINUTE + 20000, 10, 0).allowed);
    fx_done(&f);
}

TEST(rpm_window_slides_with_weight)
{
    struct fixture f;
    fx_init(&f);
    f.tenant.quota.rpm = 10;
    for (int i = 0; i < 10; i++)
        ASSERT(admit(&f, T0 + 5000, 1, 0).allowed);
    /* half of the previous minute is still inside the window: 10 * 0.5 = 5 counted */
    uint64_t now = T0 + MINUTE + 30000;
    ASSERT_EQ(usage(&f, "tenant", "acme", "rpm", now), 5);
    for (int i = 0; i < 5; i++)
        ASSERT(admit(&f, now, 1, 0).allowed);
    struct leo_quota_result r = admit(&f, now, 1, 0);
    ASSERT(!r.allowed);
    ASSERT_STR_EQ(r.scope, "tenant");
    /* prev=10, cur=5: 10*(W-e') <= (10-5-1)*W → e' >= 36 s, 6 s from now */
    ASSERT_EQ(r.retry_after_ms, 6000);
    ASSERT(!admit(&f, now + 5999, 1, 0).allowed);
    ASSERT(admit(&f, now + 6000, 1, 0).allowed);
    /* two minutes later everything has slid out */
    ASSERT_EQ(usage(&f, "tenant", "acme", "rpm", T0 + 3 * MINUTE), 0);
    fx_done(&f);
}

TEST(tpm_reserves_estimates_and_settles_up_and_down)
{
    struct fixture f;
    fx_init(&f);
    f.key.quota.tpm = 1000;
    struct leo_quota_result a = admit(&f, T0, 400, 0);
    struct leo_quota_result b = admit(&f, T0, 400, 0);
    ASSERT(a.allowed && b.allowed);
    ASSERT_EQ(b.remaining_tokens, 200);
    struct leo_quota_result c = admit(&f, T0, 400, 0);
    ASSERT(!c.allowed);
    ASSERT_STR_EQ(c.kind, "tpm");
    ASSERT_EQ(c.remaining, 200);
    /* settle down: a used 100 of its 400 */
    leo_quota_settle(f.q, a.reservation, 100, 0, true);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tpm", T0), 500);
    ASSERT(admit(&f, T0, 400, 0).allowed);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tpm", T0), 900);
    /* settle up: b used 600 (more than estimated): the total may pass the limit by that overshoot */
    leo_quota_settle(f.q, b.reservation, 600, 0, true);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tpm", T0), 1100);
    struct leo_quota_result d = admit(&f, T0, 1, 0);
    ASSERT(!d.allowed);
    ASSERT_EQ(d.remaining, 0);
    fx_done(&f);
}

TEST(settle_is_idempotent_and_failed_requests_keep_the_request_count)
{
    struct fixture f;
    fx_init(&f);
    f.key.quota.rpm = 100;
    f.key.quota.tokens_per_day = 10000;
    f.key.quota.usd_per_day = 10;
    struct leo_quota_result a = admit(&f, T0, 500, 0.25);
    ASSERT(a.allowed);
    ASSERT_EQ(leo_quota_pending(f.q), 1);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tokens_day", T0), 500);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "usd_day", T0), 250000);
    leo_quota_settle(f.q, a.reservation, 999, 9.0, false); /* failed, no usage: values ignored */
    ASSERT_EQ(leo_quota_pending(f.q), 0);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tokens_day", T0), 0);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "usd_day", T0), 0);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "rpm", T0), 1);
    leo_quota_settle(f.q, a.reservation, 500, 0.25, true); /* again: no-op */
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tokens_day", T0), 0);
    leo_quota_settle(f.q, "no-such-reservation", 500, 0.25, true);
    struct leo_quota_result b = admit(&f, T0, 500, 0.25);
    leo_quota_settle(f.q, b.reservation, 120, 0.000003, true);
    leo_quota_settle(f.q, b.reservation, 120, 0.000003, true);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tokens_day", T0), 120);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "usd_day", T0), 3);
    fx_done(&f);
}

TEST(tokens_per_day_resets_at_utc_midnight)
{
    struct fixture f;
    fx_init(&f);
    f.tenant.quota.tokens_per_day = 1000;
    uint64_t late = T0 + DAY - 1000; /* 2024-05-01T23:59:59Z */
    ASSERT(admit(&f, late, 1000, 0).allowed);
    struct leo_quota_result r = admit(&f, late, 1, 0);
    ASSERT(!r.allowed);
    ASSERT_STR_EQ(r.kind, "tokens_day");
    ASSERT_EQ(r.retry_after_ms, 1000);
    ASSERT(admit(&f, T0 + DAY, 1000, 0).allowed);
    ASSERT(!admit(&f, T0 + DAY + 1, 1, 0).allowed);
    fx_done(&f);
}

TEST(usd_per_month_uses_calendar_months)
{
    struct fixture f;
    fx_init(&f);
    f.key.quota.usd_per_month = 2.0;
    /* 2024-02-29T12:00:00Z (leap year): the month ends 12 h later */
    uint64_t feb29 = (uint64_t)1709208000000;
    ASSERT(admit(&f, feb29, 10, 1.5).allowed);
    struct leo_quota_result r = admit(&f, feb29, 10, 0.6);
    ASSERT(!r.allowed);
    ASSERT_STR_EQ(r.kind, "usd_month");
    ASSERT_EQ(r.limit, 2000000);
    ASSERT_EQ(r.remaining, 500000);
    ASSERT_EQ(r.retry_after_ms, 12 * 3600 * 1000);
    ASSERT(admit(&f, feb29, 10, 0.5).allowed); /* exactly to the limit */
    ASSERT(admit(&f, (uint64_t)1709251200000, 10, 2.0).allowed); /* 2024-03-01T00:00:00Z */
    /* December rolls over into January of the next year */
    f.key.quota.usd_per_month = 0;
    f.key.quota.tokens_per_month = 100;
    uint64_t dec31 = (uint64_t)1735689599000; /* 2024-12-31T23:59:59Z */
    ASSERT(admit(&f, dec31, 100, 0).allowed);
    r = admit(&f, dec31, 1, 0);
    ASSERT(!r.allowed);
    ASSERT_EQ(r.retry_after_ms, 1000);
    ASSERT(admit(&f, dec31 + 1000, 100, 0).allowed);
    fx_done(&f);
}

TEST(concurrency_counts_requests_in_flight)
{
    struct fixture f;
    fx_init(&f);
    f.key.quota.concurrency = 2;
    struct leo_quota_result a = admit(&f, T0, 1, 0), b = admit(&f, T0, 1, 0);
    ASSERT(a.allowed && b.allowed);
    struct leo_quota_result c = admit(&f, T0, 1, 0);
    ASSERT(!c.allowed);
    ASSERT_STR_EQ(c.kind, "concurrency");
    ASSERT_EQ(c.retry_after_ms, 1000);
    leo_quota_settle(f.q, a.reservation, 1, 0, true);
    leo_quota_settle(f.q, a.reservation, 1, 0, true); /* idempotent: does not free a second slot */
    ASSERT_EQ(usage(&f, "key", "acme/ci", "concurrency", T0), 1);
    struct leo_quota_result d = admit(&f, T0 + 10 * MINUTE, 1, 0);
    ASSERT(d.allowed);
    ASSERT(!admit(&f, T0, 1, 0).allowed);
    fx_done(&f);
}

TEST(deployment_scope_has_rpm_tpm_concurrency_only)
{
    struct fixture f;
    fx_init(&f);
    f.dep.limits.tpm = 100;
    f.dep.limits.tokens_per_day = 1; /* not a deployment limit: ignored */
    struct leo_quota_result a = admit(&f, T0, 60, 0);
    ASSERT(a.allowed);
    struct leo_quota_result b = admit(&f, T0, 60, 0);
    ASSERT(!b.allowed);
    ASSERT_STR_EQ(b.scope, "deployment");
    ASSERT_STR_EQ(b.id, "openai/gpt-4o");
    ASSERT_STR_EQ(b.kind, "tpm");
    fx_done(&f);
}

TEST(a_refusal_reserves_nothing_anywhere)
{
    struct fixture f;
    fx_init(&f);
    f.tenant.quota.rpm = 100;
    f.tenant.quota.tokens_per_day = 1000000;
    f.dep.limits.concurrency = 10;
    f.key.quota.tpm = 50;
    ASSERT(admit(&f, T0, 40, 0).allowed);
    struct leo_quota_result r = admit(&f, T0, 40, 0);
    ASSERT(!r.allowed);
    ASSERT_STR_EQ(r.kind, "tpm");
    ASSERT_EQ(usage(&f, "tenant", "acme", "rpm", T0), 1);
    ASSERT_EQ(usage(&f, "tenant", "acme", "tokens_day", T0), 40);
    ASSERT_EQ(usage(&f, "deployment", "openai/gpt-4o", "concurrency", T0), 1);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tpm", T0), 40);
    ASSERT_EQ(leo_quota_pending(f.q), 1);
    fx_done(&f);
}

TEST(headers_show_the_tightest_scope)
{
    struct fixture f;
    fx_init(&f);
    f.tenant.quota.rpm = 100;
    f.key.quota.rpm = 5;
    f.dep.limits.tpm = 10000;
    f.key.quota.tpm = 20000;
    struct leo_arena a = LEO_ARENA_INIT;
    struct leo_quota_result r = admit(&f, T0 + 15000, 1200, 0);
    ASSERT(r.allowed);
    struct leo_http_header h[8];
    size_t n = leo_quota_headers(&r, h, 8, &a);
    ASSERT_EQ(n, 6);
    const char *want[6][2] = {
        {"x-ratelimit-limit-requests", "5"},  {"x-ratelimit-remaining-requests", "4"},
        {"x-ratelimit-reset-requests", "1m45s"}, {"x-ratelimit-limit-tokens", "10000"},
        {"x-ratelimit-remaining-tokens", "8800"}, {"x-ratelimit-reset-tokens", "1m45s"},
    };
    for (size_t i = 0; i < 6; i++) {
        ASSERT_MEM_EQ(h[i].name.p, h[i].name.len, want[i][0], strlen(want[i][0]));
        ASSERT_MEM_EQ(h[i].value.p, h[i].value.len, want[i][1], strlen(want[i][1]));
    }
    for (int i = 0; i < 4; i++)
        ASSERT(admit(&f, T0 + 15000, 1, 0).allowed);
    r = admit(&f, T0 + 15000, 1, 0);
    ASSERT(!r.allowed);
    n = leo_quota_headers(&r, h, 8, &a);
    ASSERT_EQ(n, 7);
    ASSERT_MEM_EQ(h[1].value.p, h[1].value.len, "0", 1);
    ASSERT_MEM_EQ(h[6].name.p, h[6].name.len, "Retry-After", 11);
    /* cur=5 fills the limit: next minute at e'' >= W*(1-4/5) = 12 s; 45 s + 12 s = 57 s */
    ASSERT_EQ(r.retry_after_ms, 57000);
    ASSERT_MEM_EQ(h[6].value.p, h[6].value.len, "57", 2);
    ASSERT_EQ(leo_quota_headers(&r, h, 2, &a), 2); /* bounded by max */
    char msg[256];
    leo_quota_message(&r, msg, sizeof(msg));
    ASSERT_STR_EQ(msg, "key \"acme/ci\" exceeded its rpm limit (limit 5, remaining 0)");
    leo_arena_destroy(&a);
    fx_done(&f);
}

TEST(reset_format_matches_openai)
{
    char b[32];
    leo_quota_format_reset(20, b, sizeof(b));
    ASSERT_STR_EQ(b, "20ms");
    leo_quota_format_reset(1000, b, sizeof(b));
    ASSERT_STR_EQ(b, "1s");
    leo_quota_format_reset(1001, b, sizeof(b));
    ASSERT_STR_EQ(b, "2s");
    leo_quota_format_reset(360000, b, sizeof(b));
    ASSERT_STR_EQ(b, "6m0s");
    leo_quota_format_reset(3723000, b, sizeof(b));
    ASSERT_STR_EQ(b, "1h2m3s");
    leo_quota_format_reset(0, b, sizeof(b));
    ASSERT_STR_EQ(b, "0ms");
}

static void on_alert(const struct leo_config *cfg, const char *json, size_t len, void *ud)
{
    struct fixture *f = ud;
    ASSERT(cfg == &f->cfg);
    f->alerts++;
    snprintf(f->last_alert, sizeof(f->last_alert), "%.*s", (int)len, json);
}

TEST(alert_fires_once_per_window)
{
    struct fixture f;
    fx_init(&f);
    f.cfg.alerts.threshold = 0.8;
    f.tenant.quota.rpm = 10;
    leo_quota_set_alert_cb(f.q, on_alert, &f);
    for (int i = 0; i < 7; i++)
        ASSERT(admit(&f, T0 + 1000, 1, 0).allowed);
    ASSERT_EQ(f.alerts, 0);
    ASSERT(admit(&f, T0 + 1000, 1, 0).allowed); /* 8 of 10 */
    ASSERT_EQ(f.alerts, 1);
    ASSERT_STR_EQ(f.last_alert, "{\"type\":\"quota_threshold\",\"scope\":\"tenant\",\"id\":\"acme\",\"kind\":\"rpm\","
                                "\"window\":\"minute 28575360\",\"limit\":10,\"used\":8,\"threshold\":0.8}");
    ASSERT(admit(&f, T0 + 1000, 1, 0).allowed);
    ASSERT(admit(&f, T0 + 1000, 1, 0).allowed);
    ASSERT(!admit(&f, T0 + 1000, 1, 0).allowed);
    ASSERT_EQ(f.alerts, 1);
    /* the next minute is a new window: the weighted count is still above 80% → one more alert */
    ASSERT(admit(&f, T0 + MINUTE + 40000, 1, 0).allowed); /* 10/3 + 1 = 5 of 10: below */
    ASSERT_EQ(f.alerts, 1);
    for (int i = 0; i < 3; i++)
        ASSERT(admit(&f, T0 + MINUTE + 40000, 1, 0).allowed);
    ASSERT_EQ(f.alerts, 2);
    ASSERT(admit(&f, T0 + MINUTE + 40000, 1, 0).allowed);
    ASSERT_EQ(f.alerts, 2);
    fx_done(&f);
}

TEST(settle_after_the_window_ended_is_harmless)
{
    struct fixture f;
    fx_init(&f);
    f.key.quota.tpm = 100;
    f.key.quota.tokens_per_day = 1000;
    struct leo_quota_result a = admit(&f, T0 - 1000, 50, 0);
    ASSERT(a.allowed);
    /* the request finishes in the next day; its tokens still count on the day it was admitted */
    leo_quota_settle(f.q, a.reservation, 80, 0, true);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tokens_day", T0 - 1000), 80);
    ASSERT_EQ(usage(&f, "key", "acme/ci", "tokens_day", T0), 0);
    ASSERT_EQ(leo_quota_pending(f.q), 0);
    fx_done(&f);
}

TEST(estimate_larger_than_limit_is_refused)
{
    struct fixture f;
    fx_init(&f);
    f.key.quota.tpm = 100;
    struct leo_quota_result r = admit(&f, T0, 101, 0);
    ASSERT(!r.allowed);
    ASSERT_EQ(r.remaining, 100);
    ASSERT_EQ(r.retry_after_ms, 2 * MINUTE);
    fx_done(&f);
}

TEST(admit_without_config_fails_synchronously)
{
    struct leo_quota_service *q = leo_quota_new(NULL, NULL);
    struct leo_quota_request r = {0};
    struct leo_quota_result res;
    res.status = -1;
    ASSERT(leo_quota_admit(q, &r, on_result, &res) < 0);
    ASSERT_EQ(res.status, -1);
    leo_quota_free(q);
}


/* ---- the Redis backend, against a real redis-server ---- */

static char redis_dir[64];
static char redis_sock[128];
static pid_t redis_pid;

static pid_t redis_parent;

/* A failed assertion aborts: the server must not outlive the test (it would also hold ctest's pipes). */
static void redis_cleanup(void)
{
    if (redis_pid > 0 && getpid() == redis_parent)
        kill(redis_pid, SIGKILL);
}

static void on_abort(int sig)
{
    redis_cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void redis_start(void)
{
    if (!redis_dir[0]) {
        redis_parent = getpid();
        atexit(redis_cleanup);
        signal(SIGABRT, on_abort);
        snprintf(redis_dir, sizeof(redis_dir), "/tmp/leo-quota-XXXXXX");
        ASSERT(mkdtemp(redis_dir) != NULL);
        snprintf(redis_sock, sizeof(redis_sock), "%s/redis.sock", redis_dir);
    }
    redis_pid = fork();
    ASSERT(redis_pid >= 0);
    if (redis_pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", redis_sock, "--save", "",
               "--appendonly", "no", "--dir", redis_dir, "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    /* the socket appears when the server accepts: poll for it, bounded at 10 s */
    for (int i = 0; i < 1000; i++) {
        redisContext *c = redisConnectUnix(redis_sock);
        bool ok = c && !c->err;
        redisFree(c);
        if (ok)
            return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    TEST_FAIL_("redis-server did not start on %s", redis_sock);
}

static void redis_kill(void)
{
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = 0;
    unlink(redis_sock);
}

static long long redis_get(const char *key)
{
    redisContext *c = redisConnectUnix(redis_sock);
    ASSERT(c && !c->err);
    redisReply *r = redisCommand(c, "GET %s", key);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    r = redisCommand(c, "PTTL %s", key);
    if (v >= 0)
        ASSERT(r->integer > 0); /* every counter carries an expiry */
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static void flushall(void)
{
    redisContext *c = redisConnectUnix(redis_sock);
    ASSERT(c && !c->err);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
}

struct rfix {
    struct fixture f;
    uv_loop_t loop;
    struct leo_redis *redis;
    uv_timer_t guard;
};

static void on_guard(uv_timer_t *t)
{
    (void)t;
    TEST_FAIL_("redis test timed out");
}

static void rfix_init(struct rfix *rf)
{
    fx_init(&rf->f);
    leo_quota_free(rf->f.q);
    ASSERT_EQ(uv_loop_init(&rf->loop), 0);
    char url[200];
    snprintf(url, sizeof(url), "unix://%s", redis_sock);
    struct leo_redis_opts o = {.url = url, .command_timeout_ms = 500, .reconnect_min_ms = 20,
                               .reconnect_max_ms = 50};
    ASSERT_EQ(leo_redis_new(&rf->loop, &o, &rf->redis, NULL), 0);
    rf->f.q = leo_quota_new(&rf->loop, rf->redis);
    uv_timer_init(&rf->loop, &rf->guard);
    uv_timer_start(&rf->guard, on_guard, 20000, 0);
    uv_unref((uv_handle_t *)&rf->guard);
    while (!leo_redis_connected(rf->redis))
        uv_run(&rf->loop, UV_RUN_ONCE);
}

static void rfix_done(struct rfix *rf)
{
    leo_quota_free(rf->f.q);
    leo_redis_close(rf->redis, NULL, NULL);
    uv_close((uv_handle_t *)&rf->guard, NULL);
    uv_run(&rf->loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&rf->loop), 0);
}

/* Admits through Redis and runs the loop until the answer is in. */
static struct leo_quota_result radmit(struct rfix *rf, uint64_t now, uint64_t tokens, double usd)
{
    struct leo_quota_request r = {.cfg = &rf->f.cfg, .key = &rf->f.key, .dep = &rf->f.dep, .est_tokens = tokens,
                                  .est_usd = usd, .now_ms = now};
    struct leo_quota_result res;
    memset(&res, 0, sizeof(res));
    res.status = -1;
    ASSERT_EQ(leo_quota_admit(rf->f.q, &r, on_result, &res), 0);
    while (res.status == -1)
        uv_run(&rf->loop, UV_RUN_ONCE);
    return res;
}

/* Settles and waits until Redis has applied it (a PING behind it on the same connection answers after). */
static void on_ping(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    (void)reply;
    ASSERT_EQ(err, 0);
    *(int *)ud = 1;
}

static void rsettle(struct rfix *rf, const char *id, uint64_t tokens, double usd, bool had)
{
    leo_quota_settle(rf->f.q, id, tokens, usd, had);
    /* two PINGs in sequence: when the server answered NOSCRIPT, the settlement was resent as EVAL before the
       first PING's answer arrived, so the second PING queues behind it */
    for (int i = 0; i < 2; i++) {
        int done = 0;
        const char *argv[] = {"PING"};
        ASSERT_EQ(leo_redis_command_argv(rf->redis, on_ping, &done, 1, argv, NULL), 0);
        while (!done)
            uv_run(&rf->loop, UV_RUN_ONCE);
    }
}

static uint64_t next_minute(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000;
    return (ms / MINUTE + 1) * MINUTE;
}

TEST(redis_script_matches_the_in_process_arithmetic)
{
    redis_start();
    struct rfix rf;
    rfix_init(&rf);
    uint64_t t = next_minute(), m = t / MINUTE;
    rf.f.key.quota.rpm = 3;
    rf.f.key.quota.tpm = 1000;
    rf.f.tenant.quota.concurrency = 3;
    char rpm_key[128], tpm_key[128];
    snprintf(rpm_key, sizeof(rpm_key), "leo:q:key:acme/ci:rpm:%" PRIu64, m);
    snprintf(tpm_key, sizeof(tpm_key), "leo:q:key:acme/ci:tpm:%" PRIu64, m);
    struct leo_quota_result r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = radmit(&rf, t + 1000, 300, 0);
        ASSERT(r[i].allowed);
        ASSERT(!r[i].degraded);
        ASSERT_EQ(r[i].remaining_requests, 2 - i);
        ASSERT_EQ(r[i].remaining_tokens, 1000 - 300 * (i + 1));
    }
    ASSERT_EQ(redis_get(rpm_key), 3);
    ASSERT_EQ(redis_get(tpm_key), 900);
    struct leo_quota_result x = radmit(&rf, t + 1000, 10, 0);
    ASSERT(!x.allowed);
    ASSERT_EQ(x.status, 429);
    ASSERT_STR_EQ(x.scope, "key");
    ASSERT_STR_EQ(x.kind, "rpm");
    ASSERT_EQ(x.retry_after_ms, 59000 + 20000); /* the same answer as the in-process backend */
    ASSERT_EQ(redis_get(tpm_key), 900);         /* the refusal reserved nothing */
    /* settle down, up, failed, and again (idempotent) */
    rsettle(&rf, r[0].reservation, 100, 0, true);
    rsettle(&rf, r[1].reservation, 450, 0, true);
    rsettle(&rf, r[2].reservation, 0, 0, false);
    rsettle(&rf, r[2].reservation, 999, 0, true);
    ASSERT_EQ(redis_get(tpm_key), 550);
    ASSERT_EQ(redis_get(rpm_key), 3);
    /* sliding: in the next minute at 40 s, 3 * 1/3 = 1 request counted */
    struct leo_quota_result y = radmit(&rf, t + MINUTE + 40000, 10, 0);
    ASSERT(y.allowed);
    ASSERT_EQ(y.remaining_requests, 1);
    rsettle(&rf, y.reservation, 10, 0, true);
    /* concurrency leases: 3 in flight, the 4th refused, one settled frees a slot */
    rf.f.key.quota.rpm = 0;
    struct leo_quota_result c[3];
    for (int i = 0; i < 3; i++)
        ASSERT((c[i] = radmit(&rf, t + 2000, 1, 0)).allowed);
    struct leo_quota_result z = radmit(&rf, t + 2000, 1, 0);
    ASSERT(!z.allowed);
    ASSERT_STR_EQ(z.kind, "concurrency");
    ASSERT_EQ(z.retry_after_ms, 1000);
    rsettle(&rf, c[1].reservation, 1, 0, true);
    struct leo_quota_result w = radmit(&rf, t + 2000, 1, 0);
    ASSERT(w.allowed);
    rsettle(&rf, c[0].reservation, 1, 0, true);
    rsettle(&rf, c[2].reservation, 1, 0, true);
    rsettle(&rf, w.reservation, 1, 0, true);
    ASSERT_EQ(leo_quota_pending(rf.f.q), 0);
    rfix_done(&rf);
    flushall();
}

TEST(redis_alert_fires_once_per_window_across_workers)
{
    struct rfix a, b;
    rfix_init(&a);
    rfix_init(&b);
    uint64_t t = next_minute();
    struct rfix *both[2] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        both[i]->f.cfg.alerts.threshold = 0.5;
        both[i]->f.tenant.quota.rpm = 10;
        leo_quota_set_alert_cb(both[i]->f.q, on_alert, &both[i]->f);
    }
    for (int i = 0; i < 8; i++)
        ASSERT(radmit(both[i % 2], t + 1000, 1, 0).allowed);
    ASSERT_EQ(a.f.alerts + b.f.alerts, 1);
    ASSERT(strstr(a.f.last_alert, "\"used\":5") != NULL); /* the 5th request crossed 50%, on worker a */
    rfix_done(&a);
    rfix_done(&b);
    flushall();
}

/* The race proof: 4 processes fire 200 admissions each, concurrently, at a USD budget with room for 37. */
#define RACE_PROCS 4
#define RACE_EACH 200
#define RACE_EST 0.01
#define RACE_ACTUAL 0.004

struct race_child {
    struct rfix rf;
    int answered, admitted;
    char ids[RACE_EACH][40];
};

static void on_race(const struct leo_quota_result *res, void *ud)
{
    struct race_child *c = ud;
    ASSERT(res->status != 503);
    if (res->allowed) {
        ASSERT(!res->degraded);
        snprintf(c->ids[c->admitted++], 40, "%s", res->reservation);
    } else {
        ASSERT_STR_EQ(res->kind, "usd_day");
    }
    c->answered++;
}

static void race_child_run(int fd, int go, uint64_t t)
{
    static struct race_child c;
    memset(&c, 0, sizeof(c));
    rfix_init(&c.rf);
    c.rf.f.tenant.quota.usd_per_day = 0.375;
    struct leo_quota_request r = {.cfg = &c.rf.f.cfg, .key = &c.rf.f.key, .est_tokens = 100, .est_usd = RACE_EST,
                                  .now_ms = t};
    for (int i = 0; i < RACE_EACH; i++)
        ASSERT_EQ(leo_quota_admit(c.rf.f.q, &r, on_race, &c), 0);
    while (c.answered < RACE_EACH)
        uv_run(&c.rf.loop, UV_RUN_ONCE);
    ASSERT_EQ(write(fd, &c.admitted, sizeof(c.admitted)), (ssize_t)sizeof(c.admitted));
    /* settling frees room (actual < estimate); wait until every process is done admitting */
    char b;
    ASSERT_EQ(read(go, &b, 1), 1);
    for (int i = 0; i < c.admitted; i++)
        rsettle(&c.rf, c.ids[i], 40, RACE_ACTUAL, true);
    rfix_done(&c.rf);
    _exit(0);
}

TEST(redis_race_never_overshoots_across_processes)
{
    uint64_t t = next_minute();
    time_t secs = (time_t)(t / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char key[128];
    snprintf(key, sizeof(key), "leo:q:tenant:acme:usd_day:%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday);
    int fds[2], go[2];
    ASSERT_EQ(pipe(fds), 0);
    ASSERT_EQ(pipe(go), 0);
    pid_t kids[RACE_PROCS];
    for (int i = 0; i < RACE_PROCS; i++) {
        kids[i] = fork();
        ASSERT(kids[i] >= 0);
        if (kids[i] == 0) {
            close(fds[0]);
            close(go[1]);
            race_child_run(fds[1], go[0], t);
        }
    }
    close(fds[1]);
    close(go[0]);
    int total = 0, n, reports = 0;
    while (reports < RACE_PROCS && read(fds[0], &n, sizeof(n)) == (ssize_t)sizeof(n)) {
        total += n;
        reports++;
    }
    ASSERT_EQ(reports, RACE_PROCS);
    /* every admission is answered and nothing settled yet: the reserve is at its peak */
    long long peak = redis_get(key);
    ASSERT_EQ(peak, (long long)total * 10000);
    ASSERT(write(go[1], "gggg", RACE_PROCS) == RACE_PROCS);
    close(go[1]);
    for (int i = 0; i < RACE_PROCS; i++) {
        int st;
        ASSERT_EQ(waitpid(kids[i], &st, 0), kids[i]);
        ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    close(fds[0]);
    /* reserved = total * 10000 micro-USD must stay within 375000 + one estimate; atomic check-and-reserve
       in fact admits exactly the 37 that fit */
    ASSERT((uint64_t)total * 10000 <= 375000 + 10000);
    ASSERT_EQ(total, 37);
    /* settlement replaced every reservation by the actual cost: exactly 37 * 4000 micro-USD */
    ASSERT_EQ(redis_get(key), 37 * 4000);
    flushall();
}

TEST(redis_outage_fails_open_or_closed_and_nothing_is_double_counted)
{
    struct rfix rf;
    rfix_init(&rf);
    uint64_t t = next_minute();
    rf.f.key.quota.tpm = 1000;
    char key[128];
    snprintf(key, sizeof(key), "leo:q:key:acme/ci:tpm:%" PRIu64, t / MINUTE);
    struct leo_quota_result a = radmit(&rf, t, 100, 0);
    ASSERT(a.allowed && !a.degraded);
    rsettle(&rf, a.reservation, 100, 0, true);
    /* the server runs without persistence, so the outage also empties it: consistency is checked on what
       happens after it returns */
    redis_kill();
    /* fail-closed: 503 "quota service unavailable" */
    rf.f.cfg.redis.fail_open = false;
    struct leo_quota_result c = radmit(&rf, t, 100, 0);
    ASSERT(!c.allowed);
    ASSERT_EQ(c.status, 503);
    char msg[128];
    leo_quota_message(&c, msg, sizeof(msg));
    ASSERT_STR_EQ(msg, "quota service unavailable");
    /* fail-open: admitted on this worker's counters, which enforce the same limit */
    rf.f.cfg.redis.fail_open = true;
    struct leo_quota_result o[10];
    for (int i = 0; i < 10; i++) {
        o[i] = radmit(&rf, t, 100, 0);
        ASSERT(o[i].allowed);
        ASSERT(o[i].degraded);
    }
    struct leo_quota_result over = radmit(&rf, t, 100, 0);
    ASSERT(!over.allowed);
    ASSERT_EQ(over.status, 429);
    ASSERT_EQ(usage(&rf.f, "key", "acme/ci", "tpm", t), 1000);
    /* Redis returns (empty: it was killed) */
    redis_start();
    while (!leo_redis_connected(rf.redis))
        uv_run(&rf.loop, UV_RUN_ONCE);
    /* the local reservations settle locally and are never replayed into Redis */
    for (int i = 0; i < 10; i++)
        rsettle(&rf, o[i].reservation, 50, 0, true);
    ASSERT_EQ(usage(&rf.f, "key", "acme/ci", "tpm", t), 500);
    ASSERT_EQ(redis_get(key), -1);
    struct leo_quota_result b = radmit(&rf, t + 1000, 200, 0);
    ASSERT(b.allowed && !b.degraded);
    ASSERT_EQ(redis_get(key), 200);
    rsettle(&rf, b.reservation, 150, 0, true);
    ASSERT_EQ(redis_get(key), 150);
    ASSERT_EQ(leo_quota_pending(rf.f.q), 0);
    rfix_done(&rf);
    redis_kill();
    rmdir(redis_dir);
}

TEST_MAIN(TEST_ENTRY(no_limits_admits_without_reservation), TEST_ENTRY(rpm_rejects_past_the_limit_and_names_it),
          TEST_ENTRY(rpm_window_slides_with_weight), TEST_ENTRY(tpm_reserves_estimates_and_settles_up_and_down),
          TEST_ENTRY(settle_is_idempotent_and_failed_requests_keep_the_request_count),
          TEST_ENTRY(tokens_per_day_resets_at_utc_midnight), TEST_ENTRY(usd_per_month_uses_calendar_months),
          TEST_ENTRY(concurrency_counts_requests_in_flight), TEST_ENTRY(deployment_scope_has_rpm_tpm_concurrency_only),
          TEST_ENTRY(a_refusal_reserves_nothing_anywhere), TEST_ENTRY(headers_show_the_tightest_scope),
          TEST_ENTRY(reset_format_matches_openai), TEST_ENTRY(alert_fires_once_per_window),
          TEST_ENTRY(settle_after_the_window_ended_is_harmless), TEST_ENTRY(estimate_larger_than_limit_is_refused),
          TEST_ENTRY(admit_without_config_fails_synchronously),
          TEST_ENTRY(redis_script_matches_the_in_process_arithmetic),
          TEST_ENTRY(redis_alert_fires_once_per_window_across_workers),
          TEST_ENTRY(redis_race_never_overshoots_across_processes),
          TEST_ENTRY(redis_outage_fails_open_or_closed_and_nothing_is_double_counted))
