/*
 * test_usage.c — the gateway's usage emitter (gateway/usage.c) against a real redis-server.
 *
 * Each case runs a private libuv loop in the main thread; waiting means running the loop until a condition
 * holds, bounded by a guard timer. What the emitter wrote is checked with a separate blocking connection
 * (redis_harness_query), independently of the module. Counters are read from the metrics the module keeps.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/buf.h"
#include "common/metrics.h"
#include "common/redis.h"
#include "gateway/usage.h"
#include "tests/unit/redis_harness.h"
#include "tests/unit/test.h"

static uv_loop_t loop;
static uv_timer_t guard;
static bool guard_fired;

static void on_guard(uv_timer_t *t)
{
    (void)t;
    guard_fired = true;
}

#define RUN_UNTIL(cond, ms)                                                                                            \
    do {                                                                                                               \
        guard_fired = false;                                                                                           \
        uv_timer_start(&guard, on_guard, (ms), 0);                                                                     \
        while (!(cond) && !guard_fired)                                                                                \
            uv_run(&loop, UV_RUN_ONCE);                                                                                \
        uv_timer_stop(&guard);                                                                                         \
        if (!(cond))                                                                                                   \
            TEST_FAIL_("no \"%s\" within %d ms", #cond, (int)(ms));                                                    \
    } while (0)

static void setup(void)
{
    ASSERT_EQ(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &guard);
    leo_redis_metrics_describe();
    leo_usage_metrics_describe();
}

static void teardown(void)
{
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* The value of one series (0 when it has no sample yet). */
static double metric(const char *series)
{
    struct leo_buf text = LEO_BUF_INIT;
    leo_metrics_render(&text);
    char key[160];
    snprintf(key, sizeof(key), "\n%s ", series);
    const char *p = strstr(text.p, key);
    double v = p ? strtod(p + strlen(key), NULL) : 0;
    leo_buf_release(&text);
    return v;
}

static long long xlen(const struct redis_server *srv)
{
    redisReply *r = redis_harness_query(srv, NULL, 0, "XLEN %s", LEO_USAGE_STREAM);
    ASSERT(r != NULL);
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return n;
}

static void on_closed(void *ud)
{
    (*(int *)ud)++;
}

static struct leo_redis *open_redis(const char *url)
{
    struct leo_redis_opts o = {.url = url, .command_timeout_ms = 500, .reconnect_min_ms = 20, .reconnect_max_ms = 50};
    struct leo_redis *r = NULL;
    ASSERT_EQ(leo_redis_new(&loop, &o, &r, NULL), 0);
    return r;
}

static void close_all(struct leo_usage *u, struct leo_redis *r)
{
    int closed = 0;
    leo_usage_close(u);
    leo_redis_close(r, on_closed, &closed);
    RUN_UNTIL(closed == 1, 5000);
}

static void event(struct leo_usage_event *ev, char *id, size_t idsize, int i)
{
    snprintf(id, idsize, "req_test%08d", i);
    *ev = (struct leo_usage_event){
        .request_id = id,
        .time_ms = 1767225600000ULL + (uint64_t)i,
        .tenant = "acme",
        .key_name = "ci",
        .model = "gpt-4o-mini",
        .deployment = "mock/mock-small",
        .provider = "mock",
        .route = "/v1/chat/completions",
        .status = 200,
        .prompt_tokens = 11,
        .completion_tokens = 6,
        .cost_usd = 0.0000035,
        .latency_ms = 12.5,
        .attempts = 1,
    };
}

TEST(event_json_carries_every_field_and_escapes_strings)
{
    struct leo_usage_event ev;
    char id[32];
    event(&ev, id, sizeof(id), 7);
    ev.tenant = "a\"b\\c\n";
    ev.model = NULL;
    ev.error = true;
    ev.stream = true;
    ev.saved_usd = 0.25;
    ev.cache_status = "hit";
    struct leo_buf b = LEO_BUF_INIT;
    leo_usage_event_json(&ev, &b);
    json_error_t e;
    json_t *j = json_loadb(b.p, b.len, 0, &e);
    ASSERT(j != NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "request_id")), "req_test00000007");
    ASSERT_EQ(json_integer_value(json_object_get(j, "ts")), 1767225600007LL);
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "tenant")), "a\"b\\c\n");
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "key_name")), "ci");
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "model")), "");
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "deployment")), "mock/mock-small");
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "provider")), "mock");
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "route")), "/v1/chat/completions");
    ASSERT_EQ(json_integer_value(json_object_get(j, "status")), 200);
    ASSERT(json_is_true(json_object_get(j, "error")));
    ASSERT(json_is_true(json_object_get(j, "stream")));
    ASSERT_EQ(json_integer_value(json_object_get(j, "prompt_tokens")), 11);
    ASSERT_EQ(json_integer_value(json_object_get(j, "completion_tokens")), 6);
    ASSERT_DBL_EQ(json_number_value(json_object_get(j, "cost_usd")), 0.0000035);
    ASSERT_DBL_EQ(json_number_value(json_object_get(j, "saved_usd")), 0.25);
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "cache")), "hit");
    ASSERT_DBL_EQ(json_number_value(json_object_get(j, "latency_ms")), 12.5);
    ASSERT_EQ(json_integer_value(json_object_get(j, "attempts")), 1);
    json_decref(j);
    leo_buf_release(&b);
}

TEST(events_are_appended_to_the_stream)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv.port);
    struct leo_redis *r = open_redis(url);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    struct leo_usage *u = leo_usage_new(&loop, r, NULL);
    double sent0 = metric("leo_usage_events_total{result=\"sent\"}");
    for (int i = 0; i < 50; i++) {
        struct leo_usage_event ev;
        char id[32];
        event(&ev, id, sizeof(id), i);
        leo_usage_emit_current(&ev);
    }
    ASSERT(leo_usage_flushing(u)); /* XADDs unanswered */
    RUN_UNTIL(metric("leo_usage_events_total{result=\"sent\"}") == sent0 + 50, 5000);
    ASSERT(!leo_usage_flushing(u));
    ASSERT_EQ(xlen(&srv), 50);
    ASSERT_EQ(leo_usage_queued(u), 0);
    /* the entry holds the event's JSON in field "e" */
    redisReply *rep = redis_harness_query(&srv, NULL, 0, "XRANGE %s - + COUNT 1", LEO_USAGE_STREAM);
    ASSERT(rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1);
    redisReply *fields = rep->element[0]->element[1];
    ASSERT_EQ(fields->elements, 2);
    ASSERT_STR_EQ(fields->element[0]->str, "e");
    ASSERT(strstr(fields->element[1]->str, "\"request_id\":\"req_test00000000\"") != NULL);
    freeReplyObject(rep);
    close_all(u, r);
    redis_server_stop(&srv);
    teardown();
}

TEST(events_wait_while_redis_is_down_and_are_sent_when_it_returns)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv.port);
    struct leo_redis *r = open_redis(url);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    struct leo_usage *u = leo_usage_new(&loop, r, NULL);
    double sent0 = metric("leo_usage_events_total{result=\"sent\"}");
    double dropped0 = metric("leo_usage_events_dropped_total{reason=\"queue_full\"}");
    redis_server_kill(&srv);
    RUN_UNTIL(!leo_redis_connected(r), 5000);
    for (int i = 0; i < 20; i++) {
        struct leo_usage_event ev;
        char id[32];
        event(&ev, id, sizeof(id), i);
        leo_usage_emit(u, &ev);
    }
    ASSERT_EQ(leo_usage_queued(u), 20);
    ASSERT_DBL_EQ(metric("leo_usage_queue_depth"), 20);
    redis_server_restart(&srv);
    RUN_UNTIL(metric("leo_usage_events_total{result=\"sent\"}") == sent0 + 20, 10000);
    ASSERT_EQ(leo_usage_queued(u), 0);
    ASSERT_DBL_EQ(metric("leo_usage_queue_depth"), 0);
    ASSERT_EQ(xlen(&srv), 20);
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"queue_full\"}"), dropped0);
    close_all(u, r);
    redis_server_stop(&srv);
    teardown();
}

TEST(a_full_queue_drops_and_counts_and_shutdown_counts_what_is_left)
{
    setup();
    /* a port nothing listens on: the connection never comes up */
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", redis_harness_free_port());
    struct leo_redis *r = open_redis(url);
    struct leo_usage_opts o = {.max_queue = 3};
    struct leo_usage *u = leo_usage_new(&loop, r, &o);
    double full0 = metric("leo_usage_events_dropped_total{reason=\"queue_full\"}");
    double shut0 = metric("leo_usage_events_dropped_total{reason=\"shutdown\"}");
    for (int i = 0; i < 5; i++) {
        struct leo_usage_event ev;
        char id[32];
        event(&ev, id, sizeof(id), i);
        leo_usage_emit(u, &ev);
    }
    ASSERT_EQ(leo_usage_queued(u), 3);
    ASSERT(!leo_usage_flushing(u)); /* queued, but with Redis away a draining worker does not wait for them */
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"queue_full\"}"), full0 + 2);
    close_all(u, r);
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"shutdown\"}"), shut0 + 3);
    teardown();
}

TEST_MAIN(TEST_ENTRY(event_json_carries_every_field_and_escapes_strings), TEST_ENTRY(events_are_appended_to_the_stream),
          TEST_ENTRY(events_wait_while_redis_is_down_and_are_sent_when_it_returns),
          TEST_ENTRY(a_full_queue_drops_and_counts_and_shutdown_counts_what_is_left))
