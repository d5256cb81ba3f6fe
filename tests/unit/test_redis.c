/*
 * test_redis.c — the Redis client (common/redis.c) against a real redis-server.
 *
 * Each case starts its own server (tests/unit/redis_harness.h) and runs a private libuv loop in the main
 * thread. Waiting means running the loop until a condition holds, bounded by a guard timer; nothing sleeps.
 * Every callback is counted: an accepted command must be answered exactly once, and a refused one never.
 * A case ends with every handle closed (uv_loop_close succeeds), which the ASan build turns into a leak check.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/error.h"
#include "common/metrics.h"
#include "common/redis.h"
#include "tests/unit/redis_harness.h"
#include "tests/unit/test.h"

/* ---------------------------------------------------------------------------------------------------- */
/* Fixture                                                                                                */

static struct redis_loop fx;

#define RUN_UNTIL(cond, ms) REDIS_LOOP_RUN_UNTIL(&fx, cond, ms)

static void setup(void)
{
    redis_loop_init(&fx);
    leo_redis_metrics_describe();
}

/* What one command's callback saw. */
struct call {
    int calls;
    int err;
    int type;
    long long integer;
    char str[8192];
    size_t len;
    size_t elements;
    int etype[4];
    long long eint[4];
    char estr[4][64];
    int seq;         /* order among all callbacks */
    uint64_t at_ns;  /* when it ran */
    int resubmit_rc; /* what a submission from inside the callback returned, when asked to try */
    bool resubmit;
    bool close_inside;
};

static int seq_counter;
static int closed_inside; /* close callbacks of closes made from inside a command callback */

static void on_closed(void *ud)
{
    (*(int *)ud)++;
}

static void record(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    struct call *c = ud;
    c->calls++;
    c->err = err;
    c->seq = ++seq_counter;
    c->at_ns = uv_hrtime();
    if (reply) {
        c->type = reply->type;
        c->integer = reply->integer;
        if (reply->str) {
            c->len = reply->len < sizeof(c->str) - 1 ? reply->len : sizeof(c->str) - 1;
            memcpy(c->str, reply->str, c->len);
            c->str[c->len] = '\0';
        }
        c->elements = reply->elements;
        for (size_t i = 0; i < reply->elements && i < 4; i++) {
            c->etype[i] = reply->element[i]->type;
            c->eint[i] = reply->element[i]->integer;
            if (reply->element[i]->str)
                snprintf(c->estr[i], sizeof(c->estr[i]), "%s", reply->element[i]->str);
        }
    }
    if (c->resubmit) {
        const char *argv[] = {"PING"};
        c->resubmit_rc = leo_redis_command_argv(r, record, c, 1, argv, NULL);
    }
    if (c->close_inside)
        leo_redis_close(r, on_closed, &closed_inside);
}

/* Submits a command given as NUL-terminated strings (NULL-terminated list); returns what the call returned. */
static int submit(struct leo_redis *r, struct call *c, const char *arg0, ...)
{
    const char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a && argc < 32; a = va_arg(ap, const char *))
        argv[argc++] = a;
    va_end(ap);
    return leo_redis_command_argv(r, record, c, argc, argv, NULL);
}

/* Submits, waits for the one callback, and returns what it saw. */
#define RUN_CMD(r, ...)                                                                                                \
    ({                                                                                                                 \
        struct call c_;                                                                                                \
        memset(&c_, 0, sizeof(c_));                                                                                    \
        ASSERT_EQ(submit((r), &c_, __VA_ARGS__, NULL), 0);                                                             \
        RUN_UNTIL(c_.calls > 0, 3000);                                                                                 \
        ASSERT_EQ(c_.calls, 1);                                                                                        \
        c_;                                                                                                            \
    })

struct state_log {
    int ups, downs;
};

static void on_state(struct leo_redis *r, bool connected, void *ud)
{
    struct state_log *st = ud;
    ASSERT_EQ(leo_redis_connected(r), connected);
    if (connected)
        st->ups++;
    else
        st->downs++;
}

static struct leo_redis *open_client(const char *url, const struct leo_redis_opts *base, struct state_log *st)
{
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    if (base)
        o = *base;
    o.url = url;
    o.on_state = on_state;
    o.ud = st;
    return redis_loop_open(&fx, &o);
}

static void close_client_within(struct leo_redis *r, int ms)
{
    int closed = 0;
    leo_redis_close(r, on_closed, &closed);
    RUN_UNTIL(closed == 1, ms);
    redis_loop_run_for(&fx, 5);
    ASSERT_EQ(closed, 1);
}

static void close_client(struct leo_redis *r)
{
    close_client_within(r, 5000);
}

static void tcp_url(char *buf, size_t size, const struct redis_server *s, const char *userinfo, int db)
{
    snprintf(buf, size, "redis://%s127.0.0.1:%d/%d", userinfo ? userinfo : "", s->port, db);
}

static struct redis_stats_snapshot {
    struct leo_redis_stats s;
} stats_of(struct leo_redis *r)
{
    struct redis_stats_snapshot out;
    leo_redis_stats(r, &out.s);
    return out;
}

#define STATS(r) (stats_of(r).s)

/* ---------------------------------------------------------------------------------------------------- */
/* URL parsing and script hashing                                                                        */

TEST(parses_urls)
{
    struct leo_redis_url u;
    struct leo_buf err = LEO_BUF_INIT;

    ASSERT_EQ(leo_redis_parse_url("redis://127.0.0.1", &u, &err), 0);
    ASSERT_STR_EQ(u.host, "127.0.0.1");
    ASSERT_EQ(u.port, 6379);
    ASSERT_EQ(u.db, 0);
    ASSERT(u.path == NULL && u.username == NULL && u.password == NULL);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://redis.internal:6380/2", &u, &err), 0);
    ASSERT_STR_EQ(u.host, "redis.internal");
    ASSERT_EQ(u.port, 6380);
    ASSERT_EQ(u.db, 2);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://:p%40ss%2Fw0rd@10.0.0.5:7000/15", &u, &err), 0);
    ASSERT_STR_EQ(u.password, "p@ss/w0rd");
    ASSERT(u.username == NULL);
    ASSERT_STR_EQ(u.host, "10.0.0.5");
    ASSERT_EQ(u.port, 7000);
    ASSERT_EQ(u.db, 15);
    leo_redis_url_release(&u);
    ASSERT(u.password == NULL && u.host == NULL);

    ASSERT_EQ(leo_redis_parse_url("redis://app:secret@cache", &u, &err), 0);
    ASSERT_STR_EQ(u.username, "app");
    ASSERT_STR_EQ(u.password, "secret");
    ASSERT_STR_EQ(u.host, "cache");
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://app@cache", &u, &err), 0);
    ASSERT_STR_EQ(u.username, "app");
    ASSERT(u.password == NULL);
    leo_redis_url_release(&u);

    /* An unencoded '@' in the password: the credentials end at the last '@'. */
    ASSERT_EQ(leo_redis_parse_url("redis://:p@ss@cache:1", &u, &err), 0);
    ASSERT_STR_EQ(u.password, "p@ss");
    ASSERT_STR_EQ(u.host, "cache");
    ASSERT_EQ(u.port, 1);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://[::1]:6390/1", &u, &err), 0);
    ASSERT_STR_EQ(u.host, "::1");
    ASSERT_EQ(u.port, 6390);
    ASSERT_EQ(u.db, 1);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://[fe80::1]", &u, &err), 0);
    ASSERT_STR_EQ(u.host, "fe80::1");
    ASSERT_EQ(u.port, 6379);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://cache/", &u, &err), 0);
    ASSERT_EQ(u.db, 0);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://cache?db=4", &u, &err), 0);
    ASSERT_EQ(u.db, 4);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("redis://cache/2147483647", &u, &err), 0);
    ASSERT_EQ(u.db, 2147483647);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("unix:///var/run/redis/redis.sock", &u, &err), 0);
    ASSERT_STR_EQ(u.path, "/var/run/redis/redis.sock");
    ASSERT(u.host == NULL);
    ASSERT_EQ(u.port, 0);
    ASSERT_EQ(u.db, 0);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("unix:///tmp/r.sock?db=3", &u, &err), 0);
    ASSERT_STR_EQ(u.path, "/tmp/r.sock");
    ASSERT_EQ(u.db, 3);
    leo_redis_url_release(&u);

    ASSERT_EQ(leo_redis_parse_url("unix://:pw@/tmp/r.sock?db=1", &u, &err), 0);
    ASSERT_STR_EQ(u.password, "pw");
    ASSERT_STR_EQ(u.path, "/tmp/r.sock");
    ASSERT_EQ(u.db, 1);
    leo_redis_url_release(&u);
    ASSERT_EQ(err.len, 0);
    leo_buf_release(&err);
}

TEST(rejects_bad_urls_without_leaking_the_password)
{
    char longpath[160] = "unix:///";
    memset(longpath + 8, 'x', 120);
    longpath[128] = '\0';
    const struct {
        const char *url;
        const char *says; /* a fragment the message must contain */
    } cases[] = {
        {"", "empty"},
        {"http://cache:6379", "expected redis://"},
        {"rediss://:hunter2@cache:6380", "tunnel"},
        {"redis://", "host is missing"},
        {"redis://:hunter2@", "host is missing"},
        {"redis://:hunter2@:6379", "host is missing"},
        {"redis://cache:0", "port"},
        {"redis://cache:65536", "port"},
        {"redis://cache:12x", "port"},
        {"redis://cache:", "port"},
        {"redis://cache/abc", "database number"},
        {"redis://cache/-1", "database number"},
        {"redis://cache/2147483648", "database number"},
        {"redis://cache/1?db=2", "twice"},
        {"redis://cache?password=hunter2", "unknown query parameter \"password\""},
        {"redis://cache?db=", "db must be"},
        {"redis://::1:6379", "brackets"},
        {"redis://[::1", "closed with"},
        {"redis://[::1]x", "':port'"},
        {"redis://cache#frag", "fragment"},
        {"redis://:bad%zzhunter2@cache", "percent-encoding in the password"},
        {"redis://:%00hunter2@cache", "percent-encoding in the password"},
        {"redis://us%4@cache", "percent-encoding in the username"},
        {"unix://", "expected unix:///"},
        {"unix://relative.sock", "expected unix:///"},
        {"unix:///", "socket path is missing"},
        {"unix:///tmp/x.sock?db=-1", "db must be"},
        {"unix:///tmp/x.sock?timeout=1", "unknown query parameter \"timeout\""},
        {longpath, "longer than 107"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct leo_redis_url u;
        struct leo_buf err = LEO_BUF_INIT;
        memset(&u, 0x5a, sizeof(u));
        int rc = leo_redis_parse_url(cases[i].url, &u, &err);
        if (rc != LEO_ECONFIG)
            TEST_FAIL_("\"%s\" was accepted (rc %d)", cases[i].url, rc);
        ASSERT(u.host == NULL && u.path == NULL && u.username == NULL && u.password == NULL);
        if (strstr(err.p, cases[i].says) == NULL)
            TEST_FAIL_("\"%s\": message \"%s\" lacks \"%s\"", cases[i].url, err.p, cases[i].says);
        ASSERT(strncmp(err.p, "redis url: ", 11) == 0);
        ASSERT(strstr(err.p, "hunter2") == NULL);
        leo_buf_release(&err);
    }
    /* NULL err is allowed. */
    struct leo_redis_url u;
    ASSERT_EQ(leo_redis_parse_url(NULL, &u, NULL), LEO_ECONFIG);
}

TEST(new_rejects_bad_options)
{
    setup();
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    struct leo_redis *r = (struct leo_redis *)&o;
    struct leo_buf err = LEO_BUF_INIT;
    o.url = "redis://cache:99999";
    ASSERT_EQ(leo_redis_new(&fx.loop, &o, &r, &err), LEO_ECONFIG);
    ASSERT(r == NULL);
    ASSERT(strstr(err.p, "port") != NULL);
    leo_buf_reset(&err);
    o.url = "redis://app@cache";
    ASSERT_EQ(leo_redis_new(&fx.loop, &o, &r, &err), LEO_ECONFIG);
    ASSERT(strstr(err.p, "username needs a password") != NULL);
    leo_buf_release(&err);
    redis_loop_done(&fx);
}

TEST(script_sha1_matches_known_vectors)
{
    static const struct {
        size_t n;         /* 'a' repeated n times, or ... */
        const char *text; /* ... this text */
        const char *sha;
    } cases[] = {
        {0, "", "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {0, "abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
        {0, "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
        {55, NULL, "c1c8bbdc22796e28c0e15163d20899b65621d65a"},
        {56, NULL, "c2db330f6083854c99d4b5bfb6e8f29f201be699"},
        {63, NULL, "03f09f5b158a7a8cdad920bddc29b81c18a551f5"},
        {64, NULL, "0098ba824b5c16427bd7a1122a5a442a25ec644d"},
        {65, NULL, "11655326c708d70319be2610e8a57d9a5b959d3b"},
        {1000, NULL, "291e9a6c66994949b57ba5e650361e98fc36b1ba"},
    };
    static char text[1001];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *src = cases[i].text;
        if (src == NULL) {
            memset(text, 'a', cases[i].n);
            text[cases[i].n] = '\0';
            src = text;
        }
        struct leo_redis_script s;
        leo_redis_script_init(&s, src);
        ASSERT_STR_EQ(s.sha, cases[i].sha);
        ASSERT(s.source == src);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Commands                                                                                              */

TEST(refuses_commands_until_connected_and_bad_ones_always)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, NULL, &st);

    /* Connecting happens in the background: right after new, commands fail at once and never call back. */
    struct call early = {0};
    ASSERT(!leo_redis_connected(r));
    ASSERT_EQ(submit(r, &early, "PING", NULL), LEO_ECLOSED);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    ASSERT_EQ(st.ups, 1);
    ASSERT_EQ(early.calls, 0);

    struct call c = {0};
    ASSERT_EQ(submit(r, &c, "SUBSCRIBE", "news", NULL), LEO_EINVAL);
    ASSERT_EQ(submit(r, &c, "psubscribe", "n*", NULL), LEO_EINVAL);
    ASSERT_EQ(submit(r, &c, "MONITOR", NULL), LEO_EINVAL);
    ASSERT_EQ(submit(r, &c, "select", "2", NULL), LEO_EINVAL);
    ASSERT_EQ(submit(r, &c, "AUTH", "x", NULL), LEO_EINVAL);
    ASSERT_EQ(submit(r, &c, "HELLO", "3", NULL), LEO_EINVAL);
    ASSERT_EQ(submit(r, &c, "client", "REPLY", "OFF", NULL), LEO_EINVAL);
    ASSERT_EQ(leo_redis_command_argv(r, record, &c, 0, NULL, NULL), LEO_EINVAL);
    struct leo_redis_script s = {.source = "return 1"};
    const char *argv[] = {"k"};
    ASSERT_EQ(leo_redis_eval(r, &s, record, &c, 2, 1, argv, NULL), LEO_EINVAL);
    ASSERT_EQ(leo_redis_eval(r, &s, record, &c, -1, 1, argv, NULL), LEO_EINVAL);
    /* CLIENT with another subcommand is fine. */
    struct call id = RUN_CMD(r, "CLIENT", "ID");
    ASSERT_EQ(id.type, REDIS_REPLY_INTEGER);
    redis_loop_run_for(&fx, 20);
    ASSERT_EQ(c.calls, 0);
    ASSERT_EQ(early.calls, 0);

    close_client(r);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

TEST(set_get_incrby_round_trips)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, NULL, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    struct call c = RUN_CMD(r, "SET", "greeting", "hello world");
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.type, REDIS_REPLY_STATUS);
    ASSERT_STR_EQ(c.str, "OK");

    c = RUN_CMD(r, "GET", "greeting");
    ASSERT_EQ(c.type, REDIS_REPLY_STRING);
    ASSERT_STR_EQ(c.str, "hello world");
    ASSERT_EQ(c.len, 11);

    c = RUN_CMD(r, "GET", "missing");
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.type, REDIS_REPLY_NIL);

    c = RUN_CMD(r, "INCRBY", "n", "5");
    ASSERT_EQ(c.type, REDIS_REPLY_INTEGER);
    ASSERT_EQ(c.integer, 5);
    c = RUN_CMD(r, "INCRBY", "n", "-7");
    ASSERT_EQ(c.integer, -2);
    c = RUN_CMD(r, "INCRBY", "n", "9223372036854775000");
    ASSERT_EQ(c.integer, 9223372036854774998LL);

    /* An error reply is a reply: err 0, type ERROR, the server's message. */
    c = RUN_CMD(r, "INCRBY", "greeting", "1");
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.type, REDIS_REPLY_ERROR);
    ASSERT_STR_EQ(c.str, "ERR value is not an integer or out of range");

    /* Binary-safe arguments with explicit lengths. */
    const char val[] = {'a', '\0', 'b', '\r', '\n', 'c'};
    const char *argv[] = {"SET", "bin", val};
    size_t argvlen[] = {3, 3, sizeof(val)};
    struct call b = {0};
    ASSERT_EQ(leo_redis_command_argv(r, record, &b, 3, argv, argvlen), 0);
    RUN_UNTIL(b.calls == 1, 3000);
    ASSERT_STR_EQ(b.str, "OK");
    c = RUN_CMD(r, "STRLEN", "bin");
    ASSERT_EQ(c.integer, 6);
    c = RUN_CMD(r, "GETRANGE", "bin", "1", "3");
    ASSERT_MEM_EQ(c.str, c.len, "\0b\r", 3);

    /* The independent client sees what the module wrote. */
    redisReply *rep = redis_harness_query(&srv, NULL, 0, "GET %s", "greeting");
    ASSERT(rep != NULL);
    ASSERT_STR_EQ(rep->str, "hello world");
    freeReplyObject(rep);

    struct leo_redis_stats stats = STATS(r);
    ASSERT_EQ(stats.connects, 1);
    ASSERT_EQ(stats.connect_failures, 0);
    ASSERT_EQ(stats.pending, 0);
    close_client(r);
    ASSERT_EQ(st.ups, 1);
    ASSERT_EQ(st.downs, 0);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

#define NPIPE 1000

TEST(pipelines_1000_commands_answered_in_order)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, NULL, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    static struct call calls[NPIPE];
    memset(calls, 0, sizeof(calls));
    seq_counter = 0;
    /* All submitted before the loop runs again: one write, 1000 replies. */
    for (int i = 0; i < NPIPE; i++)
        ASSERT_EQ(submit(r, &calls[i], "INCR", "counter", NULL), 0);
    ASSERT_EQ(STATS(r).pending, NPIPE);
    RUN_UNTIL(seq_counter == NPIPE, 10000);
    for (int i = 0; i < NPIPE; i++) {
        ASSERT_EQ(calls[i].calls, 1);
        ASSERT_EQ(calls[i].err, 0);
        ASSERT_EQ(calls[i].type, REDIS_REPLY_INTEGER);
        ASSERT_EQ(calls[i].integer, i + 1);
        ASSERT_EQ(calls[i].seq, i + 1);
    }
    ASSERT_EQ(STATS(r).pending, 0);
    close_client(r);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

static long long commandstat(struct leo_redis *r, const char *cmd)
{
    /* INFO commandstats lines read "cmdstat_evalsha:calls=2,usec=...". */
    struct call c = RUN_CMD(r, "INFO", "commandstats");
    char key[64];
    snprintf(key, sizeof(key), "cmdstat_%s:calls=", cmd);
    const char *p = strstr(c.str, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : 0;
}

TEST(eval_uses_evalsha_and_falls_back_to_eval_on_noscript)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, NULL, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    static struct leo_redis_script script = {.source =
                                                 "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}"};
    const char *argv[] = {"quota:t1", "3"};

    /* First call: the server does not know the script: NOSCRIPT, then EVAL, one callback. */
    struct call c = {0};
    ASSERT_EQ(leo_redis_eval(r, &script, record, &c, 1, 2, argv, NULL), 0);
    ASSERT_EQ(strlen(script.sha), 40);
    RUN_UNTIL(c.calls == 1, 3000);
    redis_loop_run_for(&fx, 20);
    ASSERT_EQ(c.calls, 1);
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.type, REDIS_REPLY_ARRAY);
    ASSERT_EQ(c.elements, 3);
    ASSERT_STR_EQ(c.estr[0], "quota:t1");
    ASSERT_STR_EQ(c.estr[1], "3");
    ASSERT_EQ(c.etype[2], REDIS_REPLY_INTEGER);
    ASSERT_EQ(c.eint[2], 3);
    ASSERT_EQ(commandstat(r, "evalsha"), 1);
    ASSERT_EQ(commandstat(r, "eval"), 1);
    ASSERT_EQ(STATS(r).script_reloads, 1);

    /* The module's SHA-1 is the one Redis computes. */
    struct call load = RUN_CMD(r, "SCRIPT", "LOAD", script.source);
    ASSERT_STR_EQ(load.str, script.sha);

    /* Second call: EVALSHA hits. */
    memset(&c, 0, sizeof(c));
    ASSERT_EQ(leo_redis_eval(r, &script, record, &c, 1, 2, argv, NULL), 0);
    RUN_UNTIL(c.calls == 1, 3000);
    ASSERT_EQ(c.eint[2], 6);
    ASSERT_EQ(commandstat(r, "evalsha"), 2);
    ASSERT_EQ(commandstat(r, "eval"), 1);

    /* After SCRIPT FLUSH: NOSCRIPT again, EVAL again, still one callback. */
    struct call fl = RUN_CMD(r, "SCRIPT", "FLUSH");
    ASSERT_STR_EQ(fl.str, "OK");
    memset(&c, 0, sizeof(c));
    ASSERT_EQ(leo_redis_eval(r, &script, record, &c, 1, 2, argv, NULL), 0);
    RUN_UNTIL(c.calls == 1, 3000);
    redis_loop_run_for(&fx, 20);
    ASSERT_EQ(c.calls, 1);
    ASSERT_EQ(c.eint[2], 9);
    ASSERT_EQ(commandstat(r, "evalsha"), 3);
    ASSERT_EQ(commandstat(r, "eval"), 2);
    ASSERT_EQ(STATS(r).script_reloads, 2);

    /* A script that fails at run time is an error reply, not a reload. */
    static struct leo_redis_script bad = {.source = "return redis.call('INCR', KEYS[1])"};
    leo_redis_script_init(&bad, bad.source);
    struct call set = RUN_CMD(r, "SET", "text", "abc");
    ASSERT_STR_EQ(set.str, "OK");
    const char *k[] = {"text"};
    memset(&c, 0, sizeof(c));
    ASSERT_EQ(leo_redis_eval(r, &bad, record, &c, 1, 1, k, NULL), 0);
    RUN_UNTIL(c.calls == 1, 3000);
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.type, REDIS_REPLY_ERROR);
    ASSERT(strstr(c.str, "not an integer") != NULL);
    memset(&c, 0, sizeof(c));
    ASSERT_EQ(leo_redis_eval(r, &bad, record, &c, 1, 1, k, NULL), 0);
    RUN_UNTIL(c.calls == 1, 3000);
    ASSERT_EQ(c.type, REDIS_REPLY_ERROR);
    ASSERT_EQ(STATS(r).script_reloads, 3);

    /* Many evals pipelined across a flush: every one answered once, in order, with the right value. */
    static struct call many[50];
    memset(many, 0, sizeof(many));
    fl = RUN_CMD(r, "SCRIPT", "FLUSH");
    struct call del = RUN_CMD(r, "DEL", "quota:t1");
    ASSERT_EQ(del.integer, 1);
    const char *one[] = {"quota:t1", "1"};
    for (int i = 0; i < 50; i++)
        ASSERT_EQ(leo_redis_eval(r, &script, record, &many[i], 1, 2, one, NULL), 0);
    RUN_UNTIL(many[49].calls == 1, 5000);
    redis_loop_run_for(&fx, 20);
    long long seen[51] = {0};
    for (int i = 0; i < 50; i++) {
        ASSERT_EQ(many[i].calls, 1);
        ASSERT_EQ(many[i].err, 0);
        ASSERT(many[i].eint[2] >= 1 && many[i].eint[2] <= 50);
        seen[many[i].eint[2]]++;
    }
    for (int v = 1; v <= 50; v++)
        ASSERT_EQ(seen[v], 1);
    ASSERT_EQ(STATS(r).pending, 0);

    close_client(r);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Authentication, databases, unix sockets                                                               */

static void check_db(struct leo_redis *r, int db)
{
    struct call info = RUN_CMD(r, "CLIENT", "INFO");
    char want[32];
    snprintf(want, sizeof(want), " db=%d ", db);
    if (strstr(info.str, want) == NULL)
        TEST_FAIL_("CLIENT INFO \"%s\" lacks \"%s\"", info.str, want);
}

TEST(authenticates_and_selects_the_database)
{
    setup();
    static const char *const extra[] = {"--requirepass", "s3cr3t-pw", NULL};
    struct redis_server srv;
    redis_server_start(&srv, extra, "s3cr3t-pw");
    char url[160];
    struct state_log st = {0};

    /* Password and database in the URL. */
    tcp_url(url, sizeof(url), &srv, ":s3cr3t-pw@", 3);
    struct leo_redis *r = open_client(url, NULL, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    check_db(r, 3);
    struct call c = RUN_CMD(r, "SET", "where", "db3");
    ASSERT_STR_EQ(c.str, "OK");
    close_client(r);

    redisReply *rep = redis_harness_query(&srv, "s3cr3t-pw", 3, "GET %s", "where");
    ASSERT(rep && rep->type == REDIS_REPLY_STRING);
    ASSERT_STR_EQ(rep->str, "db3");
    freeReplyObject(rep);
    rep = redis_harness_query(&srv, "s3cr3t-pw", 0, "EXISTS %s", "where");
    ASSERT(rep && rep->type == REDIS_REPLY_INTEGER);
    ASSERT_EQ(rep->integer, 0);
    freeReplyObject(rep);

    /* opts.password overrides the URL's; an ACL user name is sent along (AUTH user password). */
    tcp_url(url, sizeof(url), &srv, "default:wrong@", 5);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.password = "s3cr3t-pw";
    r = open_client(url, &o, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    check_db(r, 5);
    c = RUN_CMD(r, "ACL", "WHOAMI");
    ASSERT_STR_EQ(c.str, "default");
    close_client(r);
    ASSERT_EQ(st.ups, 2);

    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

TEST(wrong_password_never_connects_and_is_never_logged)
{
    setup();
    static const char *const extra[] = {"--requirepass", "right-pw", NULL};
    struct redis_server srv;
    redis_server_start(&srv, extra, "right-pw");

    /* Capture stderr (the log) for this case. */
    char logpath[160];
    snprintf(logpath, sizeof(logpath), "%s/client.log", srv.dir);
    fflush(stderr);
    int saved = dup(2);
    int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);

    char url[160];
    tcp_url(url, sizeof(url), &srv, ":Zq7-wrong-pw@", 0);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.reconnect_min_ms = 10;
    o.reconnect_max_ms = 20;
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, &o, &st);
    RUN_UNTIL(STATS(r).connect_failures >= 3, 5000);
    ASSERT(!leo_redis_connected(r));
    ASSERT_EQ(STATS(r).connects, 0);
    ASSERT_EQ(st.ups, 0);
    struct call c = {0};
    ASSERT_EQ(submit(r, &c, "PING", NULL), LEO_ECLOSED);
    close_client(r);

    /* No password at all against a server that wants one: PING gets NOAUTH, the attempt fails. */
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    r = open_client(url, &o, &st);
    RUN_UNTIL(STATS(r).connect_failures >= 2, 5000);
    ASSERT_EQ(STATS(r).connects, 0);
    close_client(r);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *f = fopen(logpath, "r");
    ASSERT(f != NULL);
    static char text[65536];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = '\0';
    fclose(f);
    if (strstr(text, "AUTH failed: WRONGPASS") == NULL || strstr(text, "PING failed: NOAUTH") == NULL)
        TEST_FAIL_("log lacks the handshake failures:\n%s", text);
    ASSERT(strstr(text, "Zq7-wrong-pw") == NULL);
    ASSERT(strstr(text, "right-pw") == NULL);
    /* One line for the first failure of the streak, not one per attempt. */
    int lines = 0;
    for (const char *p = strstr(text, "AUTH failed"); p; p = strstr(p + 1, "AUTH failed"))
        lines++;
    ASSERT_EQ(lines, 1);

    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

TEST(unix_socket_with_database)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[200];
    snprintf(url, sizeof(url), "unix://%s?db=2", srv.sock);
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, NULL, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    check_db(r, 2);
    struct call c = RUN_CMD(r, "SET", "via", "unix");
    ASSERT_STR_EQ(c.str, "OK");
    c = RUN_CMD(r, "GET", "via");
    ASSERT_STR_EQ(c.str, "unix");
    redisReply *rep = redis_harness_query(&srv, NULL, 2, "GET %s", "via");
    ASSERT(rep && rep->type == REDIS_REPLY_STRING);
    ASSERT_STR_EQ(rep->str, "unix");
    freeReplyObject(rep);
    close_client(r);

    /* A socket path nobody listens on: attempts fail, nothing crashes. */
    snprintf(url, sizeof(url), "unix://%s/none.sock", srv.dir);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.reconnect_min_ms = 5;
    o.reconnect_max_ms = 10;
    r = open_client(url, &o, &st);
    RUN_UNTIL(STATS(r).connect_failures >= 3, 3000);
    ASSERT(!leo_redis_connected(r));
    close_client(r);
    ASSERT_EQ(st.ups, 1);

    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Timeouts and failures                                                                                  */

TEST(command_timeout_then_the_connection_still_works)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.command_timeout_ms = 100;
    o.stall_timeout_ms = 5000;
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, &o, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    struct call sleep = {0}, behind = {0};
    uint64_t t0 = uv_hrtime();
    ASSERT_EQ(submit(r, &sleep, "DEBUG", "SLEEP", "0.3", NULL), 0);
    ASSERT_EQ(submit(r, &behind, "INCR", "after-sleep", NULL), 0);
    RUN_UNTIL(sleep.calls == 1 && behind.calls == 1, 3000);
    ASSERT_EQ(sleep.err, LEO_ETIMEOUT);
    ASSERT_EQ(behind.err, LEO_ETIMEOUT);
    uint64_t waited_ms = (sleep.at_ns - t0) / 1000000;
    if (waited_ms < 90 || waited_ms >= 290)
        TEST_FAIL_("timed out after %" PRIu64 " ms, expected about 100", waited_ms);
    ASSERT(leo_redis_connected(r));
    ASSERT_EQ(STATS(r).pending, 2);

    /* The late replies arrive and are dropped: no second callback. */
    RUN_UNTIL(STATS(r).pending == 0, 3000);
    ASSERT_EQ(sleep.calls, 1);
    ASSERT_EQ(behind.calls, 1);

    /* Same connection, still good; the timed-out INCR did run on the server. */
    struct call c = RUN_CMD(r, "INCR", "after-sleep");
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.integer, 2);
    struct leo_redis_stats stats = STATS(r);
    ASSERT_EQ(stats.timeouts, 2);
    ASSERT_EQ(stats.disconnects, 0);
    ASSERT_EQ(stats.connects, 1);
    ASSERT_EQ(st.downs, 0);

    close_client(r);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

TEST(a_stalled_connection_is_replaced)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.command_timeout_ms = 100;
    o.stall_timeout_ms = 300;
    o.connect_timeout_ms = 3000;
    o.reconnect_min_ms = 10;
    o.reconnect_max_ms = 20;
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, &o, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    /* The server blocks for 1 s: the command times out at 100 ms, the connection is dropped at 300 ms, and
     * the next one becomes ready when the server answers its PING. */
    struct call sleep = {0};
    uint64_t t0 = uv_hrtime();
    ASSERT_EQ(submit(r, &sleep, "DEBUG", "SLEEP", "1", NULL), 0);
    RUN_UNTIL(st.downs == 1, 3000);
    uint64_t dropped_ms = (uv_hrtime() - t0) / 1000000;
    ASSERT(dropped_ms >= 290 && dropped_ms < 900);
    ASSERT_EQ(sleep.calls, 1);
    ASSERT_EQ(sleep.err, LEO_ETIMEOUT);
    struct call c = {0};
    ASSERT_EQ(submit(r, &c, "PING", NULL), LEO_ECLOSED);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    ASSERT_EQ(st.ups, 2);
    c = RUN_CMD(r, "PING");
    ASSERT_STR_EQ(c.str, "PONG");
    struct leo_redis_stats stats = STATS(r);
    ASSERT_EQ(stats.disconnects, 1);
    ASSERT_EQ(stats.connects, 2);
    ASSERT_EQ(sleep.calls, 1);

    close_client(r);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

#define NFLIGHT 5

TEST(server_killed_then_restarted)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.command_timeout_ms = 10000;
    o.stall_timeout_ms = 20000;
    o.connect_timeout_ms = 1000;
    o.reconnect_min_ms = 10;
    o.reconnect_max_ms = 40;
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, &o, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    /* A PING, then a BLPOP that blocks forever and commands queued behind it: all written in one go, so once
     * the PING is answered the rest are at the server, in flight. */
    struct call ping = {0};
    static struct call inflight[NFLIGHT];
    memset(inflight, 0, sizeof(inflight));
    ASSERT_EQ(submit(r, &ping, "PING", NULL), 0);
    ASSERT_EQ(submit(r, &inflight[0], "BLPOP", "never", "0", NULL), 0);
    for (int i = 1; i < NFLIGHT; i++)
        ASSERT_EQ(submit(r, &inflight[i], "INCR", "k", NULL), 0);
    RUN_UNTIL(ping.calls == 1, 3000);
    ASSERT_EQ(STATS(r).pending, NFLIGHT);

    /* Each in-flight callback tries to submit again: it must fail at once. */
    for (int i = 0; i < NFLIGHT; i++)
        inflight[i].resubmit = true;
    redis_server_kill(&srv);
    RUN_UNTIL(inflight[NFLIGHT - 1].calls == 1 && st.downs == 1, 3000);
    for (int i = 0; i < NFLIGHT; i++) {
        ASSERT_EQ(inflight[i].calls, 1);
        ASSERT_EQ(inflight[i].err, LEO_ECLOSED);
        ASSERT_EQ(inflight[i].resubmit_rc, LEO_ECLOSED);
        inflight[i].resubmit = false;
    }
    ASSERT(!leo_redis_connected(r));
    ASSERT_EQ(STATS(r).pending, 0);
    struct call refused = {0};
    ASSERT_EQ(submit(r, &refused, "PING", NULL), LEO_ECLOSED);

    /* Nothing listens: attempts fail and back off. */
    RUN_UNTIL(STATS(r).connect_failures >= 3, 3000);
    ASSERT(!leo_redis_connected(r));

    redis_server_restart(&srv);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    struct call c = RUN_CMD(r, "SET", "back", "again");
    ASSERT_STR_EQ(c.str, "OK");
    c = RUN_CMD(r, "GET", "back");
    ASSERT_STR_EQ(c.str, "again");

    struct leo_redis_stats stats = STATS(r);
    ASSERT_EQ(stats.connects, 2);
    ASSERT_EQ(stats.disconnects, 1);
    ASSERT_EQ(st.ups, 2);
    ASSERT_EQ(st.downs, 1);
    for (int i = 0; i < NFLIGHT; i++)
        ASSERT_EQ(inflight[i].calls, 1);
    ASSERT_EQ(refused.calls, 0);

    close_client(r);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

/* A listener that accepts connections (in the kernel's backlog) and never answers. */
static int silent_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ASSERT_EQ(listen(fd, 16), 0);
    ASSERT_EQ(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

TEST(connect_timeout_against_a_silent_server)
{
    setup();
    int port;
    int lfd = silent_listener(&port);
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.connect_timeout_ms = 50;
    o.reconnect_min_ms = 10;
    o.reconnect_max_ms = 20;
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, &o, &st);
    uint64_t t0 = uv_hrtime();
    RUN_UNTIL(STATS(r).connect_failures >= 2, 3000);
    ASSERT((uv_hrtime() - t0) / 1000000 >= 90);
    ASSERT(!leo_redis_connected(r));
    ASSERT_EQ(st.ups, 0);
    close_client(r);

    /* Closing while the handshake waits for its answer. */
    o.connect_timeout_ms = 5000;
    r = open_client(url, &o, &st);
    redis_loop_run_for(&fx, 30);
    ASSERT_EQ(STATS(r).connect_failures, 0);
    close_client(r);
    close(lfd);
    redis_loop_done(&fx);
}

TEST(close_while_resolving_or_waiting)
{
    setup();
    int port = redis_harness_free_port();
    char url[128];
    struct state_log st = {0};
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.reconnect_min_ms = 1000;

    /* A name: the lookup is on the thread pool when close comes. */
    snprintf(url, sizeof(url), "redis://localhost:%d", port);
    struct leo_redis *r = open_client(url, &o, &st);
    close_client(r);

    /* Nothing listens: the attempt fails and close comes during the backoff. */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    r = open_client(url, &o, &st);
    RUN_UNTIL(STATS(r).connect_failures == 1, 3000);
    close_client(r);

    /* A name that does not resolve. Close waits for the lookup thread, which a resolver without network
     * may keep for its full timeout. */
    r = open_client("redis://no-such-host.invalid:6379", &o, &st);
    RUN_UNTIL(STATS(r).connect_failures == 1, 10000);
    close_client_within(r, 30000);
    redis_loop_done(&fx);
}

TEST(close_cancels_commands_in_flight)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, NULL, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    struct call ping = {0};
    static struct call inflight[NFLIGHT];
    memset(inflight, 0, sizeof(inflight));
    static struct leo_redis_script script = {.source = "return 1"};
    ASSERT_EQ(submit(r, &ping, "PING", NULL), 0);
    ASSERT_EQ(submit(r, &inflight[0], "BLPOP", "never", "0", NULL), 0);
    for (int i = 1; i < NFLIGHT - 1; i++)
        ASSERT_EQ(submit(r, &inflight[i], "GET", "k", NULL), 0);
    ASSERT_EQ(leo_redis_eval(r, &script, record, &inflight[NFLIGHT - 1], 0, 0, NULL, NULL), 0);
    RUN_UNTIL(ping.calls == 1, 3000);
    for (int i = 0; i < NFLIGHT; i++)
        inflight[i].resubmit = true;

    int closed = 0;
    leo_redis_close(r, on_closed, &closed);
    /* Cancelled during the call; the object is not freed yet. */
    for (int i = 0; i < NFLIGHT; i++) {
        ASSERT_EQ(inflight[i].calls, 1);
        ASSERT_EQ(inflight[i].err, LEO_ECANCELED);
        ASSERT_EQ(inflight[i].resubmit_rc, LEO_ECANCELED);
    }
    ASSERT_EQ(closed, 0);
    RUN_UNTIL(closed == 1, 3000);
    redis_loop_run_for(&fx, 10);
    ASSERT_EQ(closed, 1);
    for (int i = 0; i < NFLIGHT; i++)
        ASSERT_EQ(inflight[i].calls, 1);
    ASSERT_EQ(st.downs, 0); /* closing is not a lost connection */

    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

TEST(close_from_inside_a_reply_callback)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct state_log st = {0};
    struct leo_redis *r = open_client(url, NULL, &st);
    RUN_UNTIL(leo_redis_connected(r), 5000);

    /* The first reply's callback closes; the commands behind it are cancelled once it returns. */
    struct call first = {0}, blocked = {0}, after = {0};
    first.close_inside = true;
    closed_inside = 0;
    ASSERT_EQ(submit(r, &first, "PING", NULL), 0);
    ASSERT_EQ(submit(r, &blocked, "BLPOP", "never", "0", NULL), 0);
    ASSERT_EQ(submit(r, &after, "PING", NULL), 0);
    RUN_UNTIL(first.calls == 1 && blocked.calls == 1 && after.calls == 1, 3000);
    ASSERT_EQ(first.err, 0);
    ASSERT_STR_EQ(first.str, "PONG");
    ASSERT_EQ(blocked.err, LEO_ECANCELED);
    ASSERT_EQ(after.err, LEO_ECANCELED);
    RUN_UNTIL(closed_inside == 1, 3000);
    redis_loop_run_for(&fx, 20);
    ASSERT_EQ(first.calls + blocked.calls + after.calls, 3);
    ASSERT_EQ(closed_inside, 1);

    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Metrics                                                                                               */

static double metric_value(const char *text, const char *series)
{
    char key[160];
    snprintf(key, sizeof(key), "\n%s ", series);
    const char *p = strstr(text, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

TEST(metrics_count_results_and_connections)
{
    setup();
    struct redis_server srv;
    redis_server_start(&srv, NULL, NULL);
    char url[128];
    tcp_url(url, sizeof(url), &srv, NULL, 0);
    struct leo_redis_opts o;
    memset(&o, 0, sizeof(o));
    o.command_timeout_ms = 50;
    struct state_log st = {0};

    struct leo_buf before = LEO_BUF_INIT;
    leo_metrics_render(&before);
    double ok0 = metric_value(before.p, "leo_redis_commands_total{result=\"ok\"}");
    double err0 = metric_value(before.p, "leo_redis_commands_total{result=\"error\"}");
    double to0 = metric_value(before.p, "leo_redis_commands_total{result=\"timeout\"}");
    double un0 = metric_value(before.p, "leo_redis_commands_total{result=\"unavailable\"}");
    double n0 = metric_value(before.p, "leo_redis_command_duration_seconds_count");
    leo_buf_release(&before);

    struct leo_redis *r = open_client(url, &o, &st);
    struct call c = {0};
    ASSERT_EQ(submit(r, &c, "PING", NULL), LEO_ECLOSED);
    RUN_UNTIL(leo_redis_connected(r), 5000);
    c = RUN_CMD(r, "SET", "a", "1");
    c = RUN_CMD(r, "GET", "a");
    c = RUN_CMD(r, "INCRBY", "a", "x");
    ASSERT_EQ(c.type, REDIS_REPLY_ERROR);
    c = RUN_CMD(r, "DEBUG", "SLEEP", "0.1");
    ASSERT_EQ(c.err, LEO_ETIMEOUT);

    struct leo_buf text = LEO_BUF_INIT;
    leo_metrics_render(&text);
    ASSERT_DBL_EQ(metric_value(text.p, "leo_redis_commands_total{result=\"ok\"}"), (ok0 < 0 ? 0 : ok0) + 2);
    ASSERT_DBL_EQ(metric_value(text.p, "leo_redis_commands_total{result=\"error\"}"), (err0 < 0 ? 0 : err0) + 1);
    ASSERT_DBL_EQ(metric_value(text.p, "leo_redis_commands_total{result=\"timeout\"}"), (to0 < 0 ? 0 : to0) + 1);
    ASSERT_DBL_EQ(metric_value(text.p, "leo_redis_commands_total{result=\"unavailable\"}"), (un0 < 0 ? 0 : un0) + 1);
    ASSERT_DBL_EQ(metric_value(text.p, "leo_redis_command_duration_seconds_count"), (n0 < 0 ? 0 : n0) + 3);
    ASSERT_DBL_EQ(metric_value(text.p, "leo_redis_connected"), 1);
    ASSERT(strstr(text.p, "# TYPE leo_redis_reconnects_total counter") != NULL);
    ASSERT(strstr(text.p, "# TYPE leo_redis_command_duration_seconds histogram") != NULL);
    leo_buf_release(&text);

    close_client(r);
    leo_buf_init(&text, 0, 0);
    leo_metrics_render(&text);
    ASSERT_DBL_EQ(metric_value(text.p, "leo_redis_connected"), 0);
    leo_buf_release(&text);
    redis_server_stop(&srv);
    redis_loop_done(&fx);
}

TEST_MAIN(TEST_ENTRY(parses_urls), TEST_ENTRY(rejects_bad_urls_without_leaking_the_password),
          TEST_ENTRY(new_rejects_bad_options), TEST_ENTRY(script_sha1_matches_known_vectors),
          TEST_ENTRY(refuses_commands_until_connected_and_bad_ones_always), TEST_ENTRY(set_get_incrby_round_trips),
          TEST_ENTRY(pipelines_1000_commands_answered_in_order),
          TEST_ENTRY(eval_uses_evalsha_and_falls_back_to_eval_on_noscript),
          TEST_ENTRY(authenticates_and_selects_the_database),
          TEST_ENTRY(wrong_password_never_connects_and_is_never_logged), TEST_ENTRY(unix_socket_with_database),
          TEST_ENTRY(command_timeout_then_the_connection_still_works), TEST_ENTRY(a_stalled_connection_is_replaced),
          TEST_ENTRY(server_killed_then_restarted), TEST_ENTRY(connect_timeout_against_a_silent_server),
          TEST_ENTRY(close_while_resolving_or_waiting), TEST_ENTRY(close_cancels_commands_in_flight),
          TEST_ENTRY(close_from_inside_a_reply_callback), TEST_ENTRY(metrics_count_results_and_connections))
