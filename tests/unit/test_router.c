#include <stdlib.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/error.h"
#include "common/metrics.h"
#include "gateway/config.h"
#include "gateway/router.h"
#include "tests/unit/test.h"

#define T0 1000000u /* an arbitrary monotonic start time */

static struct leo_config *parse(const char *json)
{
    setenv("LEO_KEY_HASH_SECRET", "unit-test-secret", 1);
    setenv("LEO_RT_KEY_A", "sk-secret-value-aaaa", 1);
    setenv("LEO_RT_KEY_B", "sk-secret-value-bbbb", 1);
    setenv("LEO_RT_KEY_C", "sk-secret-value-cccc", 1);
    leo_router_metrics_describe();
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    if (leo_config_parse_json(json, strlen(json), "test", &cfg, &err) != 0)
        TEST_FAIL_("parse failed: %s", err.p);
    leo_buf_release(&err);
    return cfg;
}

static const struct leo_model *model(const struct leo_config *cfg, const char *name)
{
    const struct leo_model *m = leo_config_find_model(cfg, leo_str_c(name));
    ASSERT(m != NULL);
    return m;
}

/* Three keyless providers p1..p3 and one model; deployments and routing are spliced in. */
#define PROVIDERS3                                                                                           \
    "\"providers\": [{\"name\": \"p1\", \"base_url\": \"http://127.0.0.1:1\"},"                             \
    "{\"name\": \"p2\", \"base_url\": \"http://127.0.0.1:2\"},"                                             \
    "{\"name\": \"p3\", \"base_url\": \"http://127.0.0.1:3\"}]"

/* One plan, one attempt, ended with outcome; returns the deployment index or -1. */
static int pick(struct leo_router *r, const struct leo_config *cfg, const struct leo_model *m, uint64_t now,
                enum leo_route_outcome outcome)
{
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 1000, now);
    if (leo_router_next(r, &plan, now, &a, NULL) != 0)
        return -1;
    leo_router_begin(r, &a, now);
    leo_router_end(r, &a, outcome, NULL, now);
    return (int)a.deployment_index;
}

TEST(weighted_distribution)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"models\": [{\"name\": \"m\", \"strategy\": \"weighted\","
                                   "\"deployments\": [{\"provider\": \"p1\", \"weight\": 1},"
                                   "{\"provider\": \"p2\", \"weight\": 3}, {\"provider\": \"p3\", \"weight\": 0}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(42);
    int counts[3] = {0, 0, 0};
    for (int i = 0; i < 10000; i++) {
        int d = pick(r, cfg, m, T0, LEO_ROUTE_OK);
        ASSERT(d >= 0);
        counts[d]++;
    }
    ASSERT(counts[0] >= 2375 && counts[0] <= 2625);
    ASSERT(counts[1] >= 7125 && counts[1] <= 7875);
    ASSERT_EQ(counts[2], 0); /* weight 0 is a standby */
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(priority_strategy_uses_config_order)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"models\": [{\"name\": \"m\", \"strategy\": \"priority\","
                                   "\"deployments\": [{\"provider\": \"p2\", \"weight\": 1},"
                                   "{\"provider\": \"p1\", \"weight\": 100}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_OK), 0);
    ASSERT_STR_EQ(m->deployments[0].id, "p2/m");
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(least_busy)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"models\": [{\"name\": \"m\", \"strategy\": \"least-busy\","
                                   "\"deployments\": [{\"provider\": \"p1\", \"weight\": 1},"
                                   "{\"provider\": \"p2\", \"weight\": 2}, {\"provider\": \"p3\", \"weight\": 1}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    struct leo_route_plan plan[4];
    struct leo_route_attempt a[4];
    /* all idle: the tie goes to the heaviest (p2); then the idle p1 and p3 (equal weight: config order); then
     * one in flight everywhere: the heaviest again */
    int want[4] = {1, 0, 2, 1};
    for (int i = 0; i < 4; i++) {
        leo_route_plan_init(&plan[i], cfg, m, 10, T0);
        ASSERT_EQ(leo_router_next(r, &plan[i], T0, &a[i], NULL), 0);
        ASSERT_EQ(a[i].deployment_index, want[i]);
        leo_router_begin(r, &a[i], T0);
    }
    /* p1 finishes: it is now the least busy */
    leo_router_end(r, &a[1], LEO_ROUTE_OK, NULL, T0);
    ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_OK), 0);
    /* an attempt ended without begin does not touch in-flight counts */
    struct leo_route_plan p;
    struct leo_route_attempt x;
    leo_route_plan_init(&p, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &p, T0, &x, NULL), 0);
    ASSERT_EQ(x.deployment_index, 0);
    leo_router_end(r, &x, LEO_ROUTE_CANCELLED, NULL, T0);
    ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_OK), 0);
    for (int i = 0; i < 4; i++)
        leo_router_end(r, &a[i], LEO_ROUTE_OK, NULL, T0); /* a[1] again: ignored */
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0, &js);
    ASSERT(strstr(js.p, "\"in_flight\":1") == NULL);
    ASSERT(strstr(js.p, "\"in_flight\":0") != NULL);
    leo_buf_release(&js);
    leo_router_free(r);
    leo_config_unref(cfg);
}

static void end_ok_ttfb(struct leo_router *r, const struct leo_config *cfg, const struct leo_model *m,
                        int want_index, uint64_t ttfb)
{
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_EQ(a.deployment_index, want_index);
    leo_router_begin(r, &a, T0);
    struct leo_route_feedback fb = {.ttfb_ms = ttfb};
    leo_router_end(r, &a, LEO_ROUTE_OK, &fb, T0 + ttfb);
}

TEST(lowest_latency_after_feedback)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"models\": [{\"name\": \"m\", \"strategy\": \"lowest-latency\","
                                   "\"deployments\": [{\"provider\": \"p1\"}, {\"provider\": \"p2\"},"
                                   "{\"provider\": \"p3\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    /* unmeasured ones first, in order */
    end_ok_ttfb(r, cfg, m, 0, 300);
    end_ok_ttfb(r, cfg, m, 1, 100);
    end_ok_ttfb(r, cfg, m, 2, 200);
    /* then the lowest EWMA: p2 (100) */
    end_ok_ttfb(r, cfg, m, 1, 1000); /* p2: 0.3*1000 + 0.7*100 = 370 */
    end_ok_ttfb(r, cfg, m, 2, 200);  /* p3: 200 is now the lowest */
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0, &js);
    ASSERT(strstr(js.p, "\"id\":\"p2/m\",\"provider\":\"p2\",\"priority\":0,\"weight\":1,\"breaker\":\"closed\","
                        "\"open_for_ms\":0,\"in_flight\":0,\"ewma_ttfb_ms\":370,") != NULL);
    leo_buf_release(&js);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(lowest_cost_by_prices)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"models\": [{\"name\": \"m\", \"strategy\": \"lowest-cost\","
                                   "\"deployments\": [{\"provider\": \"p1\", \"model\": \"unpriced-xyz\"},"
                                   "{\"provider\": \"p2\", \"model\": \"rt-in-cheap\"},"
                                   "{\"provider\": \"p3\", \"model\": \"rt-out-cheap\"}]}],"
                                   "\"prices\": {\"rt-in-cheap\": {\"input\": 1, \"output\": 10},"
                                   "\"rt-out-cheap\": {\"input\": 3, \"output\": 1}}}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    /* long prompt, default output guess (256): input-cheap wins (1e5*1 + 256*10 < 1e5*3 + 256) */
    leo_route_plan_init(&plan, cfg, m, 100000, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_STR_EQ(a.deployment->model, "rt-in-cheap");
    leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0);
    /* short prompt, long output: output-cheap wins */
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    plan.output_tokens = 4000;
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_STR_EQ(a.deployment->model, "rt-out-cheap");
    /* the fallback from there is the next cheapest; the unpriced one comes last */
    leo_router_end(r, &a, LEO_ROUTE_SERVER_ERROR, NULL, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_STR_EQ(a.deployment->model, "rt-in-cheap");
    ASSERT(a.fallback);
    leo_router_end(r, &a, LEO_ROUTE_SERVER_ERROR, NULL, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_STR_EQ(a.deployment->model, "unpriced-xyz");
    leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(priority_groups_fall_back_only_when_exhausted)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"routing\": {\"max_attempts\": 5},"
                                   "\"models\": [{\"name\": \"m\", \"deployments\": ["
                                   "{\"provider\": \"p3\", \"priority\": 1},"
                                   "{\"provider\": \"p1\"}, {\"provider\": \"p2\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    ASSERT_STR_EQ(m->deployments[2].id, "p3/m"); /* sorted by priority */
    struct leo_router *r = leo_router_new(7);
    for (int i = 0; i < 200; i++) {
        struct leo_route_plan plan;
        struct leo_route_attempt a;
        leo_route_plan_init(&plan, cfg, m, 10, T0);
        int seen = 0;
        for (int k = 0; k < 2; k++) {
            ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
            ASSERT(a.deployment_index < 2); /* the first group until both were tried */
            ASSERT_EQ(a.attempt_no, k + 1);
            seen |= 1 << a.deployment_index;
            leo_router_end(r, &a, LEO_ROUTE_CLIENT_ERROR, NULL, T0);
        }
        ASSERT_EQ(seen, 3);
        ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
        ASSERT_EQ(a.deployment_index, 2);
        ASSERT(a.fallback);
        leo_router_end(r, &a, LEO_ROUTE_CLIENT_ERROR, NULL, T0);
        /* tried-set: every deployment tried and several eligible → nothing more */
        uint64_t retry_in = 99;
        ASSERT_EQ(leo_router_next(r, &plan, T0, &a, &retry_in), LEO_ENOTFOUND);
        ASSERT_EQ(retry_in, 0);
    }
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(single_deployment_is_retried_with_backoff_until_attempts_run_out)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"routing\": {\"max_attempts\": 3, \"backoff_base_ms\": 100,"
                                   "\"backoff_max_ms\": 1000},"
                                   "\"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"p1\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(3);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT(!a.retry && !a.fallback);
    ASSERT_EQ(a.backoff_ms, 0);
    leo_router_end(r, &a, LEO_ROUTE_SERVER_ERROR, NULL, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT(a.retry);
    ASSERT(a.backoff_ms >= 50 && a.backoff_ms <= 100);
    leo_router_end(r, &a, LEO_ROUTE_TIMEOUT, NULL, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_EQ(a.attempt_no, 3);
    ASSERT(a.backoff_ms >= 100 && a.backoff_ms <= 200);
    leo_router_end(r, &a, LEO_ROUTE_SERVER_ERROR, NULL, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), LEO_ENOTFOUND);
    leo_router_free(r);
    leo_config_unref(cfg);
}

#define KEYED_PROVIDER(keys)                                                                                 \
    "\"providers\": [{\"name\": \"oa\", \"base_url\": \"http://127.0.0.1:1\", \"api_keys\": [" keys "]}]"

TEST(rate_limited_key_is_skipped_until_retry_after_passes)
{
    struct leo_config *cfg = parse("{" KEYED_PROVIDER("{\"env\": \"LEO_RT_KEY_A\"}, {\"env\": \"LEO_RT_KEY_B\"}")
                                   ", \"routing\": {\"max_attempts\": 2},"
                                   "\"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"oa\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(11);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    size_t limited = a.key_index;
    leo_router_begin(r, &a, T0);
    struct leo_http_header hdr[] = {{LEO_STR_LIT("Retry-After"), LEO_STR_LIT("2")}};
    struct leo_route_feedback fb = {.status = 429, .retry_after_ms = leo_retry_after_ms(hdr, 1, 0)};
    ASSERT_EQ(fb.retry_after_ms, 2000);
    leo_router_end(r, &a, LEO_ROUTE_RATE_LIMITED, &fb, T0);
    ASSERT(leo_route_retryable(LEO_ROUTE_RATE_LIMITED));
    /* the same request's next attempt: the same (only) deployment with the other key */
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT(a.retry);
    ASSERT_EQ(a.key_index, 1 - limited);
    ASSERT_STR_EQ(a.key->env, limited ? "LEO_RT_KEY_A" : "LEO_RT_KEY_B");
    leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0);
    /* until exactly 2 s later, every request uses the other key */
    for (uint64_t t = T0; t < T0 + 2000; t += 7) {
        leo_route_plan_init(&plan, cfg, m, 10, t);
        ASSERT_EQ(leo_router_next(r, &plan, t, &a, NULL), 0);
        ASSERT_EQ(a.key_index, 1 - limited);
        leo_router_end(r, &a, LEO_ROUTE_OK, NULL, t);
    }
    leo_route_plan_init(&plan, cfg, m, 10, T0 + 1999);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 1999, &a, NULL), 0);
    ASSERT_EQ(a.key_index, 1 - limited);
    leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0 + 1999);
    /* from T0+2000 on, both keys serve again */
    int seen[2] = {0, 0};
    for (int i = 0; i < 200; i++) {
        leo_route_plan_init(&plan, cfg, m, 10, T0 + 2000);
        ASSERT_EQ(leo_router_next(r, &plan, T0 + 2000, &a, NULL), 0);
        seen[a.key_index]++;
        leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0 + 2000);
    }
    ASSERT(seen[0] > 50 && seen[1] > 50);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(rate_limit_without_retry_after_uses_key_cooldown)
{
    struct leo_config *cfg = parse("{" KEYED_PROVIDER("{\"env\": \"LEO_RT_KEY_A\"}")
                                   ", \"routing\": {\"key_cooldown_ms\": 5000},"
                                   "\"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"oa\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_RATE_LIMITED), 0);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    uint64_t retry_in = 0;
    leo_route_plan_init(&plan, cfg, m, 10, T0 + 1000);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 1000, &a, &retry_in), LEO_ENOTFOUND);
    ASSERT_EQ(retry_in, 4000);
    ASSERT_EQ(pick(r, cfg, m, T0 + 5000, LEO_ROUTE_OK), 0);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(auth_failure_disables_key_permanently)
{
    struct leo_config *cfg = parse("{" KEYED_PROVIDER("{\"env\": \"LEO_RT_KEY_A\", \"weight\": 5},"
                                                      "{\"env\": \"LEO_RT_KEY_B\"}")
                                   ", \"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"oa\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(5);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    int done = 0;
    while (!done) {
        leo_route_plan_init(&plan, cfg, m, 10, T0);
        ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
        struct leo_route_feedback fb = {.status = 401};
        if (a.key_index == 0) {
            leo_router_end(r, &a, LEO_ROUTE_AUTH_FAILED, &fb, T0);
            done = 1;
        } else {
            leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0);
        }
    }
    for (int i = 0; i < 100; i++) {
        uint64_t t = T0 + (uint64_t)i * 86400000ull; /* days later */
        leo_route_plan_init(&plan, cfg, m, 10, t);
        ASSERT_EQ(leo_router_next(r, &plan, t, &a, NULL), 0);
        ASSERT_EQ(a.key_index, 1);
        leo_router_end(r, &a, LEO_ROUTE_OK, NULL, t);
    }
    /* the last key fails too: nothing left, and nothing will recover */
    ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_AUTH_FAILED), 0);
    uint64_t retry_in = 1;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, &retry_in), LEO_ENOTFOUND);
    ASSERT_EQ(retry_in, 0);
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0, &js);
    ASSERT(strstr(js.p, "{\"env\":\"LEO_RT_KEY_A\",\"state\":\"disabled\",\"cooldown_ms\":0}") != NULL);
    ASSERT(strstr(js.p, "sk-secret") == NULL);
    leo_buf_release(&js);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(state_survives_reload_and_rotated_key_is_reenabled)
{
    const char *json = "{" KEYED_PROVIDER("{\"env\": \"LEO_RT_KEY_A\"}")
                       ", \"routing\": {\"breaker_failures\": 1, \"breaker_open_ms\": 1000},"
                       "\"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"oa\"}]},"
                       "{\"name\": \"n\", \"deployments\": [{\"provider\": \"oa\", \"model\": \"x\"}]}]}";
    struct leo_config *cfg = parse(json);
    struct leo_router *r = leo_router_new(1);
    ASSERT_EQ(pick(r, cfg, model(cfg, "m"), T0, LEO_ROUTE_SERVER_ERROR), 0);
    ASSERT_EQ(pick(r, cfg, model(cfg, "n"), T0, LEO_ROUTE_AUTH_FAILED), 0);
    struct leo_config *cfg2 = parse(json);
    ASSERT_EQ(pick(r, cfg2, model(cfg2, "m"), T0 + 10, LEO_ROUTE_OK), -1); /* breaker still open */
    ASSERT_EQ(pick(r, cfg2, model(cfg2, "n"), T0 + 10, LEO_ROUTE_OK), -1); /* key still disabled */
    setenv("LEO_RT_KEY_A", "sk-secret-value-rotated", 1);
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg3 = NULL;
    ASSERT_EQ(leo_config_parse_json(json, strlen(json), "test", &cfg3, &err), 0);
    leo_buf_release(&err);
    ASSERT_EQ(pick(r, cfg3, model(cfg3, "n"), T0 + 10, LEO_ROUTE_OK), 0);
    ASSERT_EQ(pick(r, cfg3, model(cfg3, "m"), T0 + 999, LEO_ROUTE_OK), -1); /* the breaker is independent */
    ASSERT_EQ(pick(r, cfg3, model(cfg3, "m"), T0 + 1000, LEO_ROUTE_OK), 0);
    leo_router_free(r);
    leo_config_unref(cfg);
    leo_config_unref(cfg2);
    leo_config_unref(cfg3);
}

TEST(quota_exhausted_key_waits_for_utc_midnight)
{
    struct leo_config *cfg = parse("{" KEYED_PROVIDER("{\"env\": \"LEO_RT_KEY_A\"}, {\"env\": \"LEO_RT_KEY_B\"}")
                                   ", \"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"oa\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(2);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    size_t k = a.key_index;
    /* 2024-05-01T23:00:00Z: one hour to midnight */
    struct leo_route_feedback fb = {.status = 429,
                                    .retry_after_ms = 20000,
                                    .message = LEO_STR_LIT("You exceeded your current quota, please check your plan "
                                                           "and billing details."),
                                    .now_unix_ms = 1714604400000ull};
    leo_router_end(r, &a, LEO_ROUTE_RATE_LIMITED, &fb, T0);
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0 + 600000, &js);
    char want[128];
    snprintf(want, sizeof(want), "{\"env\":\"%s\",\"state\":\"exhausted\",\"cooldown_ms\":3000000}",
             k ? "LEO_RT_KEY_B" : "LEO_RT_KEY_A");
    ASSERT(strstr(js.p, want) != NULL);
    leo_buf_release(&js);
    leo_route_plan_init(&plan, cfg, m, 10, T0 + 3599999);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 3599999, &a, NULL), 0);
    ASSERT_EQ(a.key_index, 1 - k);
    leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0);
    int seen = 0;
    for (int i = 0; i < 100 && !seen; i++) {
        leo_route_plan_init(&plan, cfg, m, 10, T0 + 3600000);
        ASSERT_EQ(leo_router_next(r, &plan, T0 + 3600000, &a, NULL), 0);
        seen = a.key_index == k;
        leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0 + 3600000);
    }
    ASSERT(seen);
    leo_router_free(r);
    leo_config_unref(cfg);
}

static const char breaker_cfg[] =
    "{" PROVIDERS3 ", \"routing\": {\"breaker_failures\": 3, \"breaker_open_ms\": 1000},"
    "\"models\": [{\"name\": \"m\", \"strategy\": \"priority\","
    "\"deployments\": [{\"provider\": \"p1\"}, {\"provider\": \"p2\"}]}]}";

/* Opens p1's breaker at T0 and checks it stays open until T0 + 1000. */
static void open_breaker(struct leo_router *r, const struct leo_config *cfg, const struct leo_model *m)
{
    ASSERT_EQ(pick(r, cfg, m, T0 - 2, LEO_ROUTE_SERVER_ERROR), 0);
    ASSERT_EQ(pick(r, cfg, m, T0 - 1, LEO_ROUTE_CONNECT_ERROR), 0);
    ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_TIMEOUT), 0);
    ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_OK), 1);
    ASSERT_EQ(pick(r, cfg, m, T0 + 999, LEO_ROUTE_OK), 1);
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0 + 400, &js);
    ASSERT(strstr(js.p, "\"id\":\"p1/m\",\"provider\":\"p1\",\"priority\":0,\"weight\":1,\"breaker\":\"open\","
                        "\"open_for_ms\":600,\"in_flight\":0,\"ewma_ttfb_ms\":null,\"consecutive_failures\":3,") != NULL);
    leo_buf_release(&js);
}

TEST(breaker_half_open_probe_success_closes)
{
    struct leo_config *cfg = parse(breaker_cfg);
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    open_breaker(r, cfg, m);
    struct leo_route_plan plan, plan2;
    struct leo_route_attempt probe, other;
    leo_route_plan_init(&plan, cfg, m, 10, T0 + 1000);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 1000, &probe, NULL), 0);
    ASSERT_EQ(probe.deployment_index, 0);
    ASSERT(probe.probe);
    leo_router_begin(r, &probe, T0 + 1000);
    /* exactly one probe: concurrent requests go elsewhere */
    leo_route_plan_init(&plan2, cfg, m, 10, T0 + 1001);
    ASSERT_EQ(leo_router_next(r, &plan2, T0 + 1001, &other, NULL), 0);
    ASSERT_EQ(other.deployment_index, 1);
    leo_router_end(r, &other, LEO_ROUTE_OK, NULL, T0 + 1001);
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0 + 1001, &js);
    ASSERT(strstr(js.p, "\"breaker\":\"half-open\"") != NULL);
    leo_buf_reset(&js);
    leo_router_end(r, &probe, LEO_ROUTE_OK, NULL, T0 + 1050);
    ASSERT_EQ(pick(r, cfg, m, T0 + 1051, LEO_ROUTE_OK), 0);
    leo_router_status_json(r, cfg, T0 + 1051, &js);
    ASSERT(strstr(js.p, "\"id\":\"p1/m\",\"provider\":\"p1\",\"priority\":0,\"weight\":1,\"breaker\":\"closed\","
                        "\"open_for_ms\":0,\"in_flight\":0,\"ewma_ttfb_ms\":null,\"consecutive_failures\":0,") != NULL);
    leo_buf_reset(&js);
    leo_metrics_render(&js);
    ASSERT(strstr(js.p, "leo_breaker_transitions_total{deployment=\"p1/m\",to=\"half-open\"}") != NULL);
    leo_buf_release(&js);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(breaker_probe_failure_reopens)
{
    struct leo_config *cfg = parse(breaker_cfg);
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    open_breaker(r, cfg, m);
    /* an inconclusive probe (client error) leaves it half-open: the next request probes */
    ASSERT_EQ(pick(r, cfg, m, T0 + 1000, LEO_ROUTE_CLIENT_ERROR), 0);
    ASSERT_EQ(pick(r, cfg, m, T0 + 1010, LEO_ROUTE_SERVER_ERROR), 0);
    ASSERT_EQ(pick(r, cfg, m, T0 + 1011, LEO_ROUTE_OK), 1);
    ASSERT_EQ(pick(r, cfg, m, T0 + 2009, LEO_ROUTE_OK), 1);
    ASSERT_EQ(pick(r, cfg, m, T0 + 2010, LEO_ROUTE_OK), 0);
    leo_router_free(r);
    leo_config_unref(cfg);
}

/* One plan, one begun attempt ended OK with the given time to first byte; returns the deployment index. */
static int pick_ttfb(struct leo_router *r, const struct leo_config *cfg, const struct leo_model *m, uint64_t now,
                     uint64_t ttfb_ms)
{
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 1000, now);
    if (leo_router_next(r, &plan, now, &a, NULL) != 0)
        return -1;
    leo_router_begin(r, &a, now);
    struct leo_route_feedback fb = {.status = 200, .ttfb_ms = ttfb_ms};
    leo_router_end(r, &a, LEO_ROUTE_OK, &fb, now);
    return (int)a.deployment_index;
}

static const char slow_cfg[] =
    "{" PROVIDERS3 ", \"routing\": {\"breaker_failures\": 2, \"breaker_open_ms\": 1000, \"breaker_slow_ms\": 500},"
    "\"models\": [{\"name\": \"m\", \"strategy\": \"priority\","
    "\"deployments\": [{\"provider\": \"p1\"}, {\"provider\": \"p2\"}]}]}";

TEST(slow_answers_open_the_breaker)
{
    struct leo_config *cfg = parse(slow_cfg);
    ASSERT_EQ(cfg->routing.breaker_slow_ms, 500);
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    /* at the threshold is not slow; a fast answer resets the count of slow ones */
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0, 500), 0);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0, 501), 0);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0, 20), 0);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0, 900), 0);
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0, &js);
    ASSERT(strstr(js.p, "\"id\":\"p1/m\",\"provider\":\"p1\",\"priority\":0,\"weight\":1,\"breaker\":\"closed\","
                        "\"open_for_ms\":0,\"in_flight\":0,") != NULL);
    ASSERT(strstr(js.p, "\"consecutive_failures\":1,") != NULL);
    /* the second slow answer in a row opens it: traffic moves to p2 for breaker_open_ms */
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0 + 1, 700), 0);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0 + 2, 10), 1);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0 + 1000, 10), 1);
    /* a slow probe reopens it; a fast one closes it */
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0 + 1001, 800), 0);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0 + 1002, 10), 1);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0 + 2001, 30), 0);
    ASSERT_EQ(pick_ttfb(r, cfg, m, T0 + 2002, 30), 0);
    leo_buf_reset(&js);
    leo_metrics_render(&js);
    ASSERT(strstr(js.p, "leo_route_slow_calls_total{deployment=\"p1/m\"} 4") != NULL);
    leo_buf_release(&js);
    leo_router_free(r);
    leo_config_unref(cfg);

    /* off by default: any latency is a success */
    cfg = parse(breaker_cfg);
    ASSERT_EQ(cfg->routing.breaker_slow_ms, 0);
    m = model(cfg, "m");
    r = leo_router_new(1);
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(pick_ttfb(r, cfg, m, T0, 600000), 0);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(pinned_plan_uses_only_its_deployment)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"routing\": {\"backoff_base_ms\": 0},"
                                   "\"models\": [{\"name\": \"m\", \"strategy\": \"priority\", \"max_attempts\": 3,"
                                   "\"deployments\": [{\"provider\": \"p1\"}, {\"provider\": \"p2\", \"model\": \"x\"},"
                                   "{\"provider\": \"p3\", \"priority\": 1}]}]}");
    const struct leo_model *m = model(cfg, "m");
    ASSERT_EQ(leo_route_find_deployment(m, leo_str_c("p2/x")), 1);
    ASSERT_EQ(leo_route_find_deployment(m, leo_str_c("p3")), 2); /* the provider's only deployment */
    ASSERT_EQ(leo_route_find_deployment(m, leo_str_c("p2/m")), -1);
    ASSERT_EQ(leo_route_find_deployment(m, leo_str_c("nope")), -1);
    struct leo_router *r = leo_router_new(1);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(plan.pin, -1);
    plan.pin = 2;
    /* every attempt goes to the pinned deployment (retries), never to the others */
    for (unsigned i = 1; i <= 3; i++) {
        ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
        ASSERT_EQ(a.deployment_index, 2);
        ASSERT_EQ(a.retry, i > 1);
        leo_router_begin(r, &a, T0);
        leo_router_end(r, &a, LEO_ROUTE_SERVER_ERROR, NULL, T0);
    }
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), LEO_ENOTFOUND);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(skipped_deployment_is_excluded_and_costs_no_attempt)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"models\": [{\"name\": \"m\", \"strategy\": \"priority\","
                                   "\"max_attempts\": 2, \"deployments\": [{\"provider\": \"p1\"},"
                                   "{\"provider\": \"p2\"}, {\"provider\": \"p3\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    struct leo_route_plan plan;
    struct leo_route_attempt a, b, c;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_EQ(a.deployment_index, 0);
    leo_router_skip(r, &plan, &a, T0);
    ASSERT_EQ(plan.attempts, 0);
    /* the next choice is p2, and as the first real attempt it is not a fallback */
    ASSERT_EQ(leo_router_next(r, &plan, T0, &b, NULL), 0);
    ASSERT_EQ(b.deployment_index, 1);
    ASSERT_EQ(b.attempt_no, 1);
    ASSERT(!b.fallback);
    /* a hedge never takes the previous attempt's deployment, nor a skipped one */
    ASSERT_EQ(leo_router_next_other(r, &plan, T0, &c), 0);
    ASSERT_EQ(c.deployment_index, 2);
    ASSERT_EQ(c.backoff_ms, 0);
    leo_router_end(r, &c, LEO_ROUTE_CANCELLED, NULL, T0);
    /* both attempts are used now: nothing left, and p1 was never a candidate again */
    ASSERT_EQ(leo_router_next(r, &plan, T0, &c, NULL), LEO_ENOTFOUND);
    leo_router_end(r, &b, LEO_ROUTE_OK, NULL, T0);
    /* a single-deployment model skipped has nothing left: not even a retry of it */
    struct leo_route_plan p1;
    leo_route_plan_init(&p1, cfg, m, 10, T0);
    p1.pin = 0;
    ASSERT_EQ(leo_router_next(r, &p1, T0, &a, NULL), 0);
    leo_router_skip(r, &p1, &a, T0);
    ASSERT_EQ(leo_router_next(r, &p1, T0, &a, NULL), LEO_ENOTFOUND);
    ASSERT_EQ(leo_router_next_other(r, &p1, T0, &a), LEO_ENOTFOUND);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(all_down_reports_soonest_recovery)
{
    struct leo_config *cfg = parse(
        "{\"providers\": [{\"name\": \"p1\", \"base_url\": \"http://127.0.0.1:1\"},"
        "{\"name\": \"oa\", \"base_url\": \"http://127.0.0.1:2\", \"api_keys\": [{\"env\": \"LEO_RT_KEY_A\"}]}],"
        "\"routing\": {\"breaker_failures\": 1, \"breaker_open_ms\": 1000},"
        "\"models\": [{\"name\": \"m\", \"strategy\": \"priority\","
        "\"deployments\": [{\"provider\": \"p1\"}, {\"provider\": \"oa\", \"priority\": 1}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_SERVER_ERROR), 0); /* p1 open until T0+1000 */
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 10, T0 + 100);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 100, &a, NULL), 0);
    ASSERT_EQ(a.deployment_index, 1);
    struct leo_route_feedback fb = {.retry_after_ms = 500};
    leo_router_end(r, &a, LEO_ROUTE_RATE_LIMITED, &fb, T0 + 100); /* oa's only key cools until T0+600 */
    uint64_t retry_in = 0;
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 200, &a, &retry_in), LEO_ENOTFOUND);
    ASSERT_EQ(retry_in, 400);
    leo_route_plan_init(&plan, cfg, m, 10, T0 + 700);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 700, &a, NULL), 0);
    ASSERT_EQ(a.deployment_index, 1);
    struct leo_route_feedback fb2 = {.retry_after_ms = 5000};
    leo_router_end(r, &a, LEO_ROUTE_RATE_LIMITED, &fb2, T0 + 700);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 800, &a, &retry_in), LEO_ENOTFOUND);
    ASSERT_EQ(retry_in, 200); /* now p1's breaker is the soonest */
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(deadline_bounds_attempts_and_recovery)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"routing\": {\"deadline_ms\": 300, \"max_attempts\": 5,"
                                   "\"breaker_failures\": 1, \"breaker_open_ms\": 1000},"
                                   "\"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"p1\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    uint64_t retry_in = 1;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    leo_router_end(r, &a, LEO_ROUTE_SERVER_ERROR, NULL, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 10, &a, &retry_in), LEO_ENOTFOUND);
    ASSERT_EQ(retry_in, 0); /* the breaker reopens after the deadline */
    leo_route_plan_init(&plan, cfg, m, 10, T0 + 5000);
    ASSERT_EQ(leo_router_next(r, &plan, T0 + 5300, &a, NULL), LEO_ENOTFOUND);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(client_error_and_cancel_carry_no_penalty)
{
    struct leo_config *cfg = parse("{" PROVIDERS3 ", \"routing\": {\"breaker_failures\": 1},"
                                   "\"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"p1\"}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    for (int i = 0; i < 10; i++) {
        ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_CLIENT_ERROR), 0);
        ASSERT_EQ(pick(r, cfg, m, T0, LEO_ROUTE_CANCELLED), 0);
    }
    ASSERT(!leo_route_retryable(LEO_ROUTE_CLIENT_ERROR));
    ASSERT(!leo_route_retryable(LEO_ROUTE_CANCELLED));
    ASSERT(!leo_route_retryable(LEO_ROUTE_OK));
    ASSERT(leo_route_retryable(LEO_ROUTE_SERVER_ERROR));
    ASSERT(leo_route_retryable(LEO_ROUTE_CONNECT_ERROR));
    ASSERT(leo_route_retryable(LEO_ROUTE_TIMEOUT));
    ASSERT(leo_route_retryable(LEO_ROUTE_AUTH_FAILED));
    ASSERT_STR_EQ(leo_route_outcome_name(LEO_ROUTE_TIMEOUT), "timeout");
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST(backoff_bounds)
{
    struct leo_config *cfg = parse("{\"routing\": {\"backoff_base_ms\": 100, \"backoff_max_ms\": 2000}}");
    struct leo_router *r = leo_router_new(9);
    static const uint64_t hi[] = {0, 100, 200, 400, 800, 1600, 2000, 2000, 2000};
    for (unsigned n = 1; n < 9; n++) {
        uint64_t mn = UINT64_MAX, mx = 0;
        for (int i = 0; i < 2000; i++) {
            uint64_t b = leo_router_backoff_ms(r, cfg, n);
            if (b < mn)
                mn = b;
            if (b > mx)
                mx = b;
        }
        ASSERT(mn >= hi[n] / 2);
        ASSERT(mx <= hi[n]);
        ASSERT(mn < hi[n] / 2 + hi[n] / 20); /* jitter spans the range */
        ASSERT(mx > hi[n] - hi[n] / 20);
    }
    ASSERT_EQ(leo_router_backoff_ms(r, cfg, 0), 0);
    ASSERT(leo_router_backoff_ms(r, cfg, 200) <= 2000);
    leo_router_free(r);
    leo_config_unref(cfg);
}

static uint64_t ra(const char *name, const char *value, uint64_t now)
{
    struct leo_http_header h[] = {{LEO_STR_LIT("content-type"), LEO_STR_LIT("application/json")},
                                  {leo_str_c(name), leo_str_c(value)}};
    return leo_retry_after_ms(h, 2, now);
}

TEST(retry_after_header_forms)
{
    /* 1994-11-06T08:49:37Z */
    const uint64_t now = 784111777000ull;
    ASSERT_EQ(ra("Retry-After", "2", now), 2000);
    ASSERT_EQ(ra("retry-after", " 120 ", now), 120000);
    ASSERT_EQ(ra("Retry-After", "Sun, 06 Nov 1994 08:49:47 GMT", now), 10000);
    ASSERT_EQ(ra("Retry-After", "Sun, 06 Nov 1994 08:49:30 GMT", now), 0); /* in the past */
    ASSERT_EQ(ra("Retry-After", "soon", now), 0);
    ASSERT_EQ(ra("retry-after-ms", "1500", now), 1500);
    ASSERT_EQ(ra("retry-after-ms", "12.4", now), 12);
    ASSERT_EQ(ra("x-ratelimit-reset-requests", "6ms", now), 6);
    ASSERT_EQ(ra("x-ratelimit-reset-requests", "1s", now), 1000);
    ASSERT_EQ(ra("x-ratelimit-reset-tokens", "1m30s", now), 90000);
    ASSERT_EQ(ra("x-ratelimit-reset-tokens", "2h", now), 7200000);
    ASSERT_EQ(ra("x-ratelimit-reset-tokens", "17.28s", now), 17280);
    ASSERT_EQ(ra("x-ratelimit-reset-tokens", "6m0s", now), 360000);
    ASSERT_EQ(ra("x-ratelimit-reset-tokens", "1x", now), 0);
    ASSERT_EQ(ra("anthropic-ratelimit-requests-reset", "1994-11-06T08:49:40Z", now), 3000);
    ASSERT_EQ(ra("anthropic-ratelimit-tokens-reset", "1994-11-06T08:49:37.250Z", now), 250);
    ASSERT_EQ(ra("anthropic-ratelimit-tokens-reset", "1994-11-06T10:49:42+02:00", now), 5000);
    ASSERT_EQ(ra("anthropic-ratelimit-requests-reset", "1994-11-06 08:49", now), 0);
    ASSERT_EQ(ra("x-unrelated", "5", now), 0);
    /* the largest applicable */
    struct leo_http_header h[] = {
        {LEO_STR_LIT("retry-after"), LEO_STR_LIT("1")},
        {LEO_STR_LIT("x-ratelimit-reset-requests"), LEO_STR_LIT("2s")},
        {LEO_STR_LIT("x-ratelimit-reset-tokens"), LEO_STR_LIT("500ms")},
        {LEO_STR_LIT("retry-after-ms"), LEO_STR_LIT("1200")},
    };
    ASSERT_EQ(leo_retry_after_ms(h, 4, now), 2000);
    ASSERT_EQ(leo_retry_after_ms(h, 0, now), 0);
}

TEST(status_json_exact)
{
    struct leo_config *cfg =
        parse("{" KEYED_PROVIDER("{\"env\": \"LEO_RT_KEY_A\"}, {\"env\": \"LEO_RT_KEY_B\", \"weight\": 0}")
              ", \"models\": [{\"name\": \"m\", \"deployments\": [{\"provider\": \"oa\", \"model\": \"up\","
              "\"weight\": 2, \"priority\": 3}]}]}");
    const struct leo_model *m = model(cfg, "m");
    struct leo_router *r = leo_router_new(1);
    struct leo_buf js = LEO_BUF_INIT;
    leo_router_status_json(r, cfg, T0, &js);
    ASSERT_STR_EQ(js.p, "{\"deployments\":[{\"model\":\"m\",\"id\":\"oa/up\",\"provider\":\"oa\",\"priority\":3,"
                        "\"weight\":2,\"breaker\":\"closed\",\"open_for_ms\":0,\"in_flight\":0,"
                        "\"ewma_ttfb_ms\":null,\"consecutive_failures\":0,\"keys\":["
                        "{\"env\":\"LEO_RT_KEY_A\",\"state\":\"ok\",\"cooldown_ms\":0},"
                        "{\"env\":\"LEO_RT_KEY_B\",\"state\":\"ok\",\"cooldown_ms\":0}]}]}");
    struct leo_route_plan plan;
    struct leo_route_attempt a;
    leo_route_plan_init(&plan, cfg, m, 10, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_EQ(a.key_index, 0); /* the weight-0 key is a standby */
    leo_router_begin(r, &a, T0);
    struct leo_route_feedback fb = {.retry_after_ms = 3000};
    leo_router_end(r, &a, LEO_ROUTE_RATE_LIMITED, &fb, T0);
    ASSERT_EQ(leo_router_next(r, &plan, T0, &a, NULL), 0);
    ASSERT_EQ(a.key_index, 1);
    leo_router_begin(r, &a, T0);
    leo_buf_reset(&js);
    leo_router_status_json(r, cfg, T0 + 1000, &js);
    ASSERT_STR_EQ(js.p, "{\"deployments\":[{\"model\":\"m\",\"id\":\"oa/up\",\"provider\":\"oa\",\"priority\":3,"
                        "\"weight\":2,\"breaker\":\"closed\",\"open_for_ms\":0,\"in_flight\":1,"
                        "\"ewma_ttfb_ms\":null,\"consecutive_failures\":0,\"keys\":["
                        "{\"env\":\"LEO_RT_KEY_A\",\"state\":\"cooling_down\",\"cooldown_ms\":2000},"
                        "{\"env\":\"LEO_RT_KEY_B\",\"state\":\"ok\",\"cooldown_ms\":0}]}]}");
    ASSERT(strstr(js.p, "sk-secret") == NULL);
    leo_router_end(r, &a, LEO_ROUTE_OK, NULL, T0);
    leo_buf_reset(&js);
    leo_metrics_render(&js);
    ASSERT(strstr(js.p, "leo_key_cooldowns_total{provider=\"oa\",reason=\"rate_limited\"}") != NULL);
    ASSERT(strstr(js.p, "leo_route_retries_total{model=\"m\"}") != NULL);
    ASSERT(strstr(js.p, "sk-secret") == NULL);
    leo_buf_release(&js);
    leo_router_free(r);
    leo_config_unref(cfg);
}

TEST_MAIN(TEST_ENTRY(weighted_distribution), TEST_ENTRY(priority_strategy_uses_config_order), TEST_ENTRY(least_busy),
          TEST_ENTRY(lowest_latency_after_feedback), TEST_ENTRY(lowest_cost_by_prices),
          TEST_ENTRY(priority_groups_fall_back_only_when_exhausted),
          TEST_ENTRY(single_deployment_is_retried_with_backoff_until_attempts_run_out),
          TEST_ENTRY(rate_limited_key_is_skipped_until_retry_after_passes),
          TEST_ENTRY(rate_limit_without_retry_after_uses_key_cooldown),
          TEST_ENTRY(auth_failure_disables_key_permanently),
          TEST_ENTRY(state_survives_reload_and_rotated_key_is_reenabled),
          TEST_ENTRY(quota_exhausted_key_waits_for_utc_midnight), TEST_ENTRY(breaker_half_open_probe_success_closes),
          TEST_ENTRY(breaker_probe_failure_reopens), TEST_ENTRY(all_down_reports_soonest_recovery),
          TEST_ENTRY(deadline_bounds_attempts_and_recovery), TEST_ENTRY(client_error_and_cancel_carry_no_penalty),
          TEST_ENTRY(backoff_bounds), TEST_ENTRY(retry_after_header_forms), TEST_ENTRY(status_json_exact),
          TEST_ENTRY(slow_answers_open_the_breaker), TEST_ENTRY(pinned_plan_uses_only_its_deployment),
          TEST_ENTRY(skipped_deployment_is_excluded_and_costs_no_attempt))
