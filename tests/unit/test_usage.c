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
#include <sys/stat.h>
#include <unistd.h>
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

/* ---- the spool ---- */

/* A fresh directory with the path of one spool file in it and that file's ".replay". */
struct spool {
    char dir[64], path[128], replay[160];
};

static void spool_init(struct spool *sp, const char *name)
{
    snprintf(sp->dir, sizeof(sp->dir), "/tmp/leo-test-usage-XXXXXX");
    ASSERT(mkdtemp(sp->dir) != NULL);
    snprintf(sp->path, sizeof(sp->path), "%s/%s", sp->dir, name);
    snprintf(sp->replay, sizeof(sp->replay), "%s.replay", sp->path);
}

/* Removes the directory; fails when a file other than the spool is left in it. */
static void spool_done(struct spool *sp)
{
    unlink(sp->path);
    unlink(sp->replay);
    ASSERT_EQ(rmdir(sp->dir), 0);
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The whole file in out (false when it cannot be opened). */
static bool read_file(const char *path, struct leo_buf *out)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return false;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
        leo_buf_add(out, chunk, n);
    fclose(fp);
    return true;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    ASSERT(fp != NULL);
    ASSERT_EQ(fwrite(text, 1, strlen(text), fp), strlen(text));
    ASSERT_EQ(fclose(fp), 0);
}

/* Fails unless the file holds exactly want. */
static void assert_file(const char *path, const struct leo_buf *want)
{
    struct leo_buf got = LEO_BUF_INIT;
    ASSERT(read_file(path, &got));
    ASSERT_STR_EQ(got.p, want->p);
    leo_buf_release(&got);
}

/* The JSON lines of events first..first+n-1, as the emitter writes them to the spool. */
static void expected_lines(int first, int n, struct leo_buf *out)
{
    for (int i = first; i < first + n; i++) {
        struct leo_usage_event ev;
        char id[32];
        event(&ev, id, sizeof(id), i);
        leo_usage_event_json(&ev, out);
        leo_buf_addch(out, '\n');
    }
}

static void emit_events(struct leo_usage *u, int first, int n)
{
    for (int i = first; i < first + n; i++) {
        struct leo_usage_event ev;
        char id[32];
        event(&ev, id, sizeof(id), i);
        leo_usage_emit(u, &ev);
    }
}

/* An emitter on a port nothing listens on. */
static struct leo_usage *unreachable_emitter(struct leo_redis **r, const struct leo_usage_opts *o)
{
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", redis_harness_free_port());
    *r = open_redis(url);
    return leo_usage_new(&fx.loop, *r, o);
}

/* A worker that stops while Redis is away with events first..first+n-1 queued, and a spool at path. */
static void stop_with_queued_events(const char *path, int first, int n)
{
    struct leo_redis *r;
    struct leo_usage_opts o = {.spool_path = path};
    struct leo_usage *u = unreachable_emitter(&r, &o);
    emit_events(u, first, n);
    ASSERT_EQ(leo_usage_queued(u), (size_t)n);
    close_all(u, r);
}

TEST(shutdown_with_redis_down_spools_the_queue_and_the_next_start_replays_it)
{
    setup();
    struct spool sp;
    spool_init(&sp, "usage-0.jsonl");
    double spooled0 = metric("leo_usage_events_total{result=\"spooled\"}");
    double replayed0 = metric("leo_usage_events_total{result=\"replayed\"}");
    double sent0 = metric("leo_usage_events_total{result=\"sent\"}");
    double shut0 = metric("leo_usage_events_dropped_total{reason=\"shutdown\"}");

    /* the worker stops while Redis is away: its three queued events go to the file, none is dropped */
    stop_with_queued_events(sp.path, 0, 3);
    ASSERT_DBL_EQ(metric("leo_usage_events_total{result=\"spooled\"}"), spooled0 + 3);
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"shutdown\"}"), shut0);
    struct leo_buf want = LEO_BUF_INIT;
    expected_lines(0, 3, &want);
    assert_file(sp.path, &want);
    struct stat st;
    ASSERT_EQ(stat(sp.path, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0600);

    /* the next start on the same path, with Redis up: the events reach the stream, the file is gone */
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    struct leo_redis *r = connect_redis(&srv);
    struct leo_usage_opts o = {.spool_path = sp.path};
    struct leo_usage *u = leo_usage_new(&fx.loop, r, &o);
    ASSERT_DBL_EQ(metric("leo_usage_events_total{result=\"replayed\"}"), replayed0 + 3);
    ASSERT(!file_exists(sp.path));
    ASSERT(!file_exists(sp.replay));
    RUN_UNTIL(metric("leo_usage_events_total{result=\"sent\"}") == sent0 + 3, 5000);
    ASSERT_EQ(xlen(&srv), 3);
    redisReply *rep = redis_harness_query(&srv, NULL, 0, "XRANGE %s - +", LEO_USAGE_STREAM);
    ASSERT(rep && rep->type == REDIS_REPLY_ARRAY);
    ASSERT_EQ(rep->elements, 3);
    struct leo_buf stream = LEO_BUF_INIT;
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *fields = rep->element[i]->element[1];
        ASSERT_STR_EQ(fields->element[0]->str, "e");
        leo_buf_add(&stream, fields->element[1]->str, fields->element[1]->len);
        leo_buf_addch(&stream, '\n');
    }
    ASSERT_STR_EQ(stream.p, want.p);
    freeReplyObject(rep);
    leo_buf_release(&stream);
    leo_buf_release(&want);
    close_all(u, r);
    ASSERT(!file_exists(sp.path)); /* nothing left to spool */
    redis_server_stop(&srv);
    spool_done(&sp);
    redis_loop_done(&fx);
}

TEST(replay_skips_corrupt_lines_loads_a_left_replay_and_respools_what_is_still_queued)
{
    setup();
    struct spool sp;
    spool_init(&sp, "usage-1.jsonl");
    struct leo_buf a = LEO_BUF_INIT, bc = LEO_BUF_INIT, text = LEO_BUF_INIT;
    expected_lines(10, 1, &a);
    expected_lines(11, 2, &bc);
    const char *c = strchr(bc.p, '\n') + 1;
    /* a start that died while loading left a .replay; the last stop appended to the file again */
    write_file(sp.replay, a.p);
    leo_buf_addf(&text, "%.*snot json\n[1,2]\n\n%s{\"v\":1,\"request_id\":\"cut", (int)(c - bc.p), bc.p, c);
    write_file(sp.path, text.p);
    double replayed0 = metric("leo_usage_events_total{result=\"replayed\"}");
    double corrupt0 = metric("leo_usage_events_dropped_total{reason=\"spool_corrupt\"}");
    double full0 = metric("leo_usage_events_dropped_total{reason=\"queue_full\"}");

    struct leo_redis *r;
    struct leo_usage_opts o = {.spool_path = sp.path, .max_queue = 2};
    struct leo_usage *u = unreachable_emitter(&r, &o);
    /* a (the older file first), b; c is beyond max_queue; four lines are not JSON objects */
    ASSERT_EQ(leo_usage_queued(u), 2);
    ASSERT_DBL_EQ(metric("leo_usage_events_total{result=\"replayed\"}"), replayed0 + 2);
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"spool_corrupt\"}"), corrupt0 + 4);
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"queue_full\"}"), full0 + 1);
    ASSERT(!file_exists(sp.path));
    ASSERT(!file_exists(sp.replay));
    /* Redis is still away at the next stop: the two go back to the file, in order */
    close_all(u, r);
    leo_buf_add(&a, bc.p, (size_t)(c - bc.p));
    assert_file(sp.path, &a);
    spool_done(&sp);
    leo_buf_release(&a);
    leo_buf_release(&bc);
    leo_buf_release(&text);
    redis_loop_done(&fx);
}

TEST(the_spools_of_workers_that_no_longer_exist_are_adopted)
{
    setup();
    struct spool sp;
    spool_init(&sp, "usage-0.jsonl");
    char other[128];
    snprintf(other, sizeof(other), "%s/usage-3.jsonl", sp.dir);
    struct leo_buf mine = LEO_BUF_INIT, theirs = LEO_BUF_INIT;
    expected_lines(20, 1, &mine);
    expected_lines(21, 2, &theirs);
    write_file(sp.path, mine.p);
    write_file(other, theirs.p);
    const char *adopt[] = {other, NULL};
    struct leo_redis *r;
    struct leo_usage_opts o = {.spool_path = sp.path, .spool_adopt = adopt};
    struct leo_usage *u = unreachable_emitter(&r, &o);
    ASSERT_EQ(leo_usage_queued(u), 3);
    ASSERT(!file_exists(sp.path));
    ASSERT(!file_exists(other));
    close_all(u, r);
    /* spooled to this emitter's own file only */
    leo_buf_adds(&mine, theirs.p);
    assert_file(sp.path, &mine);
    ASSERT(!file_exists(other));
    spool_done(&sp);
    leo_buf_release(&mine);
    leo_buf_release(&theirs);
    redis_loop_done(&fx);
}

TEST(xadds_cancelled_by_the_closing_connection_are_spooled)
{
    setup();
    struct spool sp;
    spool_init(&sp, "usage-0.jsonl");
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    struct leo_redis *r = connect_redis(&srv);
    struct leo_usage_opts o = {.spool_path = sp.path};
    struct leo_usage *u = leo_usage_new(&fx.loop, r, &o);
    double spooled0 = metric("leo_usage_events_total{result=\"spooled\"}");
    double shut0 = metric("leo_usage_events_dropped_total{reason=\"shutdown\"}");
    kill(srv.pid, SIGSTOP); /* connected, but answers nothing */
    emit_events(u, 30, 2);
    ASSERT(leo_usage_flushing(u)); /* both XADDs unanswered */
    ASSERT_EQ(leo_usage_queued(u), 0);
    close_all(u, r); /* the connection cancels them */
    kill(srv.pid, SIGCONT);
    ASSERT_DBL_EQ(metric("leo_usage_events_total{result=\"spooled\"}"), spooled0 + 2);
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"shutdown\"}"), shut0);
    struct leo_buf want = LEO_BUF_INIT;
    expected_lines(30, 2, &want);
    assert_file(sp.path, &want);
    spool_done(&sp);
    leo_buf_release(&want);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

TEST(a_failed_spool_write_drops_and_counts_as_without_a_spool)
{
    setup();
    struct spool sp;
    spool_init(&sp, "missing/usage-0.jsonl"); /* a directory that does not exist: open(2) fails */
    double spooled0 = metric("leo_usage_events_total{result=\"spooled\"}");
    double shut0 = metric("leo_usage_events_dropped_total{reason=\"shutdown\"}");
    stop_with_queued_events(sp.path, 40, 2);
    ASSERT_DBL_EQ(metric("leo_usage_events_total{result=\"spooled\"}"), spooled0);
    ASSERT_DBL_EQ(metric("leo_usage_events_dropped_total{reason=\"shutdown\"}"), shut0 + 2);
    spool_done(&sp);
    redis_loop_done(&fx);
}

TEST_MAIN(TEST_ENTRY(event_json_carries_every_field_and_escapes_strings), TEST_ENTRY(events_are_appended_to_the_stream),
          TEST_ENTRY(events_wait_while_redis_is_down_and_are_sent_when_it_returns),
          TEST_ENTRY(a_full_queue_drops_and_counts_and_shutdown_counts_what_is_left),
          TEST_ENTRY(shutdown_with_redis_down_spools_the_queue_and_the_next_start_replays_it),
          TEST_ENTRY(replay_skips_corrupt_lines_loads_a_left_replay_and_respools_what_is_still_queued),
          TEST_ENTRY(the_spools_of_workers_that_no_longer_exist_are_adopted),
          TEST_ENTRY(xadds_cancelled_by_the_closing_connection_are_spooled),
          TEST_ENTRY(a_failed_spool_write_drops_and_counts_as_without_a_spool))
