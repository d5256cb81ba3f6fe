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

static struct redis_loop fx;

#define RUN_UNTIL(cond, ms) REDIS_LOOP_RUN_UNTIL(&fx, cond, ms)

static void setup(void)
{
    redis_loop_init(&fx);
    leo_redis_metrics_describe();
    leo_usage_metrics_describe();
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

static struct leo_redis *open_redis(const char *url)
{
    struct leo_redis_opts o = {.url = url, .command_timeout_ms = 500, .reconnect_min_ms = 20, .reconnect_max_ms = 50};
    return redis_loop_open(&fx, &o);
}

/* A client of srv, once connected. */
static struct leo_redis *connect_redis(const struct redis_server *srv)
{
    char url[64];
    redis_server_url(srv, url, sizeof(url));
    struct leo_redis *r = open_redis(url);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    return r;
}

static void close_all(struct leo_usage *u, struct leo_redis *r)
{
    leo_usage_close(u);
    redis_loop_close_client(&fx, r);
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
    struct leo_redis *r = connect_redis(&srv);
    struct leo_usage *u = leo_usage_new(&fx.loop, r, NULL);
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
    redis_loop_done(&fx);
}

TEST(events_wait_while_redis_is_down_and_are_sent_when_it_returns)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    struct leo_redis *r = connect_redis(&srv);
    struct leo_usage *u = leo_usage_new(&fx.loop, r, NULL);
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
    redis_loop_done(&fx);
}

TEST(a_full_queue_drops_and_counts_and_shutdown_counts_what_is_left)
{
    setup();
    /* a port nothing listens on: the connection never comes up */
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", redis_harness_free_port());
    struct leo_redis *r = open_redis(url);
    struct leo_usage_opts o = {.max_queue = 3};
    struct leo_usage *u = leo_usage_new(&fx.loop, r, &o);
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
    redis_loop_done(&fx);
}

TEST_MAIN(TEST_ENTRY(event_json_carries_every_field_and_escapes_strings), TEST_ENTRY(events_are_appended_to_the_stream),
          TEST_ENTRY(events_wait_while_redis_is_down_and_are_sent_when_it_returns),
          TEST_ENTRY(a_full_queue_drops_and_counts_and_shutdown_counts_what_is_left))
