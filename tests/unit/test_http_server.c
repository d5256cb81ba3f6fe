/*
 * test_http_server.c — the HTTP/1.1 server core over real loopback sockets.
 *
 * Each case runs one server on a private libuv loop in the main thread and a client script in a second
 * thread that speaks raw HTTP/1.1 over blocking sockets (5 s receive timeout) and compares exact bytes.
 * When the script ends the server is closed and the loop must finish with no handle left. Server-side
 * events the client has to wait for (handler called, on_close) are posted on semaphores. A 20 s watchdog
 * on the loop bounds every case.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/error.h"
#include "common/http_server.h"
#include "tests/unit/test.h"

/* ---------------------------------------------------------------------------------------------------- */
/* Fixture                                                                                                */

struct fixture {
    uv_loop_t loop;
    struct leo_http_server *srv;
    struct leo_http_server *extra; /* a second server sharing the port (reuseport case) */
    int port;
    uv_async_t done;
    uv_timer_t watchdog;
    pthread_t thread;
    void (*client)(void);
    leo_http_error_body_cb error_body;
    sem_t sem_handler; /* posted by handlers the client waits for */
    sem_t sem_close;   /* posted by every on_close */
    int keep_fd;       /* a client socket left open until the server has closed */

    /* counters, written on the loop thread */
    atomic_int handled, closed, aborted, drains, eclosed_seen, server_closed;
    atomic_size_t flood_total;
    unsigned max_inflight, inflight_at_close, conns_at_close;
    unsigned conns_seen[8];
    char order[64];
    /* the last request seen by the handler */
    char method[16], url[256], path[256], query[256], remote[64], xmulti[64];
    char body[256];
    size_t body_len, nheaders;
    bool body_terminated, keep_alive;
    int http_major, http_minor;
};

static struct fixture fx;

struct rstate {
    uv_timer_t timer;
    struct leo_http_request *req;
    int step;
    char body[64];
    size_t total;
};

static void rstate_closed(uv_handle_t *h)
{
    leo_free(h->data);
}

static struct rstate *rstate_new(struct leo_http_request *req)
{
    struct rstate *rs = leo_new(struct rstate);
    uv_timer_init(&fx.loop, &rs->timer);
    rs->timer.data = rs;
    rs->req = req;
    req->data = rs;
    return rs;
}

static void on_request_close(struct leo_http_request *req, bool aborted)
{
    fx.closed++;
    if (aborted)
        fx.aborted++;
    struct rstate *rs = req->data;
    if (rs) {
        /* after on_close the request is gone: the server must ignore any late call, but we make none */
        rs->req = NULL;
        uv_close((uv_handle_t *)&rs->timer, rstate_closed);
    }
    sem_post(&fx.sem_close);
}

static void copy_str(char *dst, size_t size, struct leo_str s)
{
    size_t n = s.len < size - 1 ? s.len : size - 1;
    if (n)
        memcpy(dst, s.p, n);
    dst[n] = '\0';
}

static const struct leo_http_header text_plain[] = {{LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/plain")}};

/* GET /delay/<ms>/<body>: answers <body> after <ms> milliseconds. */
static void delay_fire(uv_timer_t *t)
{
    struct rstate *rs = t->data;
    size_t n = strlen(fx.order);
    snprintf(fx.order + n, sizeof(fx.order) - n, "%s>", rs->body);
    int closed = fx.closed;
    leo_http_respond(rs->req, 200, text_plain, 1, rs->body, strlen(rs->body));
    /* the whole answer fits the socket at once, yet on_close waits until this caller has returned */
    ASSERT_EQ(fx.closed, closed);
    ASSERT(rs->req != NULL);
}

/* GET /stream: "hello", then " world" and the end from timers. */
static void stream_tick(uv_timer_t *t)
{
    struct rstate *rs = t->data;
    if (rs->step++ == 0) {
        ASSERT_EQ(leo_http_stream_write(rs->req, " world", 6), 0);
        uv_timer_start(&rs->timer, stream_tick, 5, 0);
    } else {
        leo_http_stream_end(rs->req);
    }
}

/* GET /forever: a chunk every 5 ms until the client goes away. */
static void forever_tick(uv_timer_t *t)
{
    struct rstate *rs = t->data;
    int rc = leo_http_stream_write(rs->req, "tick", 4);
    if (rc == LEO_ECLOSED) {
        /* the connection is gone but on_close has not run yet: further calls must be harmless no-ops */
        fx.eclosed_seen++;
        ASSERT_EQ(leo_http_stream_write(rs->req, "tock", 4), LEO_ECLOSED);
        leo_http_stream_end(rs->req);
        leo_http_respond(rs->req, 500, NULL, 0, "x", 1);
        uv_timer_stop(&rs->timer);
    }
}

/* GET /flood: writes until the server says the queue is full, then again after each on_drain. */
static char flood_chunk[65536];

static void flood_more(struct leo_http_request *req)
{
    struct rstate *rs = req->data;
    for (;;) {
        int rc = leo_http_stream_write(req, flood_chunk, sizeof(flood_chunk));
        ASSERT(rc == 0 || rc == 1);
        rs->total += sizeof(flood_chunk);
        if (rs->total > (size_t)256 << 20)
            TEST_FAIL_("the pending-write limit never triggered");
        if (rc == 1)
            break;
    }
    if (rs->step == 0)
        sem_post(&fx.sem_handler); /* the client may start reading now */
    if (rs->step++ == 2) {
        fx.flood_total = rs->total;
        leo_http_stream_end(req);
    }
}

static void flood_drain(struct leo_http_request *req)
{
    fx.drains++;
    flood_more(req);
}

static void test_handler(struct leo_http_request *req, void *ud)
{
    ASSERT(ud == &fx);
    fx.handled++;
    req->on_close = on_request_close;
    unsigned inflight = leo_http_server_inflight(fx.srv);
    if (inflight > fx.max_inflight)
        fx.max_inflight = inflight;
    if (fx.handled <= 8)
        fx.conns_seen[fx.handled - 1] = leo_http_server_connections(fx.srv);
    copy_str(fx.method, sizeof(fx.method), req->method);
    copy_str(fx.url, sizeof(fx.url), req->url);
    copy_str(fx.path, sizeof(fx.path), req->path);
    copy_str(fx.query, sizeof(fx.query), req->query);
    copy_str(fx.body, sizeof(fx.body), leo_buf_str(&req->body));
    snprintf(fx.remote, sizeof(fx.remote), "%s", req->remote_addr);
    fx.body_len = req->body.len;
    fx.body_terminated = req->body.p[req->body.len] == '\0';
    fx.nheaders = req->nheaders;
    fx.keep_alive = req->keep_alive;
    fx.http_major = req->http_major;
    fx.http_minor = req->http_minor;
    const struct leo_http_header *xm = leo_http_header_find(req, "x-multi");
    copy_str(fx.xmulti, sizeof(fx.xmulti), xm ? xm->value : leo_str_c(""));
    ASSERT(!leo_http_response_started(req));

    if (leo_str_eqc(req->path, "/hello")) {
        int closed = fx.closed;
        leo_http_respond(req, 200, text_plain, 1, "hello", 5);
        ASSERT(leo_http_response_started(req));
        ASSERT_EQ(fx.closed, closed);                    /* on_close runs after the handler returns */
        leo_http_respond(req, 500, NULL, 0, "twice", 5); /* a second answer is ignored */
    } else if (leo_str_eqc(req->path, "/echo")) {
        leo_http_respond(req, 200, text_plain, 1, req->body.p, req->body.len);
    } else if (leo_str_startswith(req->path, "/delay/")) {
        struct rstate *rs = rstate_new(req);
        char *end;
        unsigned long ms = strtoul(req->path.p + 7, &end, 10);
        copy_str(rs->body, sizeof(rs->body), leo_str_n(end + 1, req->path.len - (size_t)(end + 1 - req->path.p)));
        size_t n = strlen(fx.order);
        snprintf(fx.order + n, sizeof(fx.order) - n, "%s<", rs->body);
        uv_timer_start(&rs->timer, delay_fire, ms, 0);
    } else if (leo_str_eqc(req->path, "/stream")) {
        struct rstate *rs = rstate_new(req);
        static const struct leo_http_header sse[] = {{LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/event-stream")}};
        leo_http_stream_start(req, 200, sse, 1);
        ASSERT_EQ(leo_http_stream_write(req, "hello", 5), 0);
        ASSERT_EQ(leo_http_stream_write(req, "", 0), 0);
        uv_timer_start(&rs->timer, stream_tick, 5, 0);
    } else if (leo_str_eqc(req->path, "/forever")) {
        struct rstate *rs = rstate_new(req);
        leo_http_stream_start(req, 200, text_plain, 1);
        ASSERT_EQ(leo_http_stream_write(req, "tick", 4), 0);
        uv_timer_start(&rs->timer, forever_tick, 5, 5);
    } else if (leo_str_eqc(req->path, "/hold")) {
        sem_post(&fx.sem_handler); /* never answered: ends by disconnect or server close */
    } else if (leo_str_eqc(req->path, "/abort")) {
        leo_http_stream_start(req, 200, text_plain, 1);
        leo_http_stream_write(req, "part", 4);
        leo_http_abort(req);
        /* the request is dead but on_close has not run: every call is a harmless no-op */
        ASSERT_EQ(fx.closed, fx.handled - 1);
        ASSERT_EQ(leo_http_stream_write(req, "more", 4), LEO_ECLOSED);
        leo_http_stream_end(req);
        leo_http_respond(req, 200, NULL, 0, "late", 4);
        leo_http_abort(req);
    } else if (leo_str_eqc(req->path, "/drain")) {
        leo_http_server_drain(fx.srv);
        struct rstate *rs = rstate_new(req);
        snprintf(rs->body, sizeof(rs->body), "drained");
        uv_timer_start(&rs->timer, delay_fire, 30, 0);
    } else if (leo_str_eqc(req->path, "/flood")) {
        struct rstate *rs = rstate_new(req);
        (void)rs;
        req->on_drain = flood_drain;
        leo_http_stream_start(req, 200, NULL, 0);
        flood_more(req);
    } else if (leo_str_eqc(req->path, "/nocontent")) {
        leo_http_respond(req, 204, NULL, 0, "ignored", 7);
    } else {
        leo_http_respond(req, 404, NULL, 0, NULL, 0);
    }
}

static void on_server_closed(void *ud)
{
    ASSERT(ud == &fx);
    fx.server_closed++;
}

static void on_watchdog(uv_timer_t *t)
{
    TEST_FAIL_("test did not finish within 20 s");
}

static void on_client_done(uv_async_t *a)
{
    fx.inflight_at_close = leo_http_server_inflight(fx.srv);
    fx.conns_at_close = leo_http_server_connections(fx.srv);
    uv_close((uv_handle_t *)&fx.done, NULL);
    uv_close((uv_handle_t *)&fx.watchdog, NULL);
    leo_http_server_close(fx.srv, on_server_closed, &fx);
    if (fx.extra)
        leo_http_server_close(fx.extra, on_server_closed, &fx);
}

static void *client_main(void *arg)
{
    fx.client();
    uv_async_send(&fx.done);
    return NULL;
}

static struct leo_http_limits test_limits(void)
{
    struct leo_http_limits l;
    leo_http_limits_default(&l);
    return l;
}

static struct leo_http_server *make_server(const struct leo_http_limits *lim)
{
    struct leo_http_server_opts o;
    memset(&o, 0, sizeof(o));
    o.limits = *lim;
    o.handler = test_handler;
    o.error_body = fx.error_body;
    o.ud = &fx;
    o.server_header = "leo-test";
    return leo_http_server_new(&fx.loop, &o);
}

/* Runs one case: a server with lim, the client script in a thread, then a clean shutdown. */
static void run_case(const struct leo_http_limits *lim, bool reuseport, void (*client)(void), void (*before_run)(void))
{
    leo_http_error_body_cb eb = fx.error_body;
    memset(&fx, 0, sizeof(fx));
    fx.error_body = eb;
    fx.keep_fd = -1;
    fx.client = client;
    sem_init(&fx.sem_handler, 0, 0);
    sem_init(&fx.sem_close, 0, 0);
    ASSERT_EQ(uv_loop_init(&fx.loop), 0);
    fx.srv = make_server(lim);
    ASSERT_EQ(leo_http_server_listen(fx.srv, "127.0.0.1", 0, reuseport), 0);
    fx.port = leo_http_server_port(fx.srv);
    ASSERT(fx.port > 0);
    if (before_run)
        before_run();
    uv_async_init(&fx.loop, &fx.done, on_client_done);
    uv_timer_init(&fx.loop, &fx.watchdog);
    uv_timer_start(&fx.watchdog, on_watchdog, 20000, 0);
    ASSERT_EQ(pthread_create(&fx.thread, NULL, client_main, NULL), 0);
    ASSERT_EQ(uv_run(&fx.loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(pthread_join(fx.thread, NULL), 0);
    ASSERT_EQ(fx.server_closed, fx.extra ? 2 : 1);
    ASSERT_EQ(uv_loop_close(&fx.loop), 0);
    if (fx.keep_fd >= 0)
        close(fx.keep_fd);
    sem_destroy(&fx.sem_handler);
    sem_destroy(&fx.sem_close);
    fx.error_body = NULL;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Client side (runs in the client thread)                                                               */

static int cli_connect_port(int port, int *err)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(fd >= 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    return fd;
}

static int cli_connect(void)
{
    int err = 0;
    int fd = cli_connect_port(fx.port, &err);
    if (fd < 0)
        TEST_FAIL_("connect: %s", strerror(err));
    return fd;
}

static void cli_send(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            TEST_FAIL_("send: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

static void cli_sends(int fd, const char *s)
{
    cli_send(fd, s, strlen(s));
}

/* Reads up to want bytes (stops early at EOF or timeout); returns the count. */
static size_t cli_read(int fd, char *buf, size_t want)
{
    size_t got = 0;
    while (got < want) {
        ssize_t n = recv(fd, buf + got, want - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

/* Reads exactly strlen(expected) bytes and compares them. */
static void cli_expect(int fd, const char *expected)
{
    size_t want = strlen(expected);
    char *buf = leo_malloc(want + 1);
    size_t got = cli_read(fd, buf, want);
    ASSERT_MEM_EQ(buf, got, expected, want);
    leo_free(buf);
}

/* The server closed its side: the next read is EOF (or a reset), with no byte before it. */
static void cli_expect_eof(int fd)
{
    char c;
    ssize_t n;
    do {
        n = recv(fd, &c, 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0)
        TEST_FAIL_("expected EOF, got byte 0x%02x", (unsigned char)c);
    if (n < 0 && errno != ECONNRESET)
        TEST_FAIL_("expected EOF, got %s", strerror(errno));
}

/* Reads until EOF into a malloc'd NUL-terminated string. */
static char *cli_read_all(int fd, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = leo_malloc(cap);
    for (;;) {
        if (n + 1 == cap) {
            cap *= 2;
            buf = leo_realloc(buf, cap);
        }
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == ECONNRESET)
            break;
        if (r < 0)
            TEST_FAIL_("read until EOF: %s", strerror(errno));
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void cli_expect_all(int fd, const char *expected)
{
    size_t n;
    char *all = cli_read_all(fd, &n);
    ASSERT_MEM_EQ(all, n, expected, strlen(expected));
    leo_free(all);
}

static void wait_sem(sem_t *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    int r = sem_timedwait(s, &ts);
    while (r == -1 && errno == EINTR)
        r = sem_timedwait(s, &ts);
    if (r != 0)
        TEST_FAIL_("server event did not happen within 5 s");
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The exact response /hello produces. */
#define HELLO_KEEP                                                                                                     \
    "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"                         \
    "Connection: keep-alive\r\n\r\nhello"
#define HELLO_CLOSE                                                                                                    \
    "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"                         \
    "Connection: close\r\n\r\nhello"

/* The exact bytes of an error the server emits with the default plain-text body. */
static char *error_response(int status, const char *msg)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_addf(&b,
                 "HTTP/1.1 %d %s\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n%s\n",
                 status, leo_http_reason(status), strlen(msg) + 1, msg);
    return leo_buf_detach(&b, NULL);
}

static void cli_expect_error(int fd, int status, const char *msg)
{
    char *exp = error_response(status, msg);
    cli_expect_all(fd, exp);
    leo_free(exp);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Cases                                                                                                  */

static void client_simple_get(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /hello?x=1&y=2 HTTP/1.1\r\nHost: a\r\nX-Multi: one\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 200 OK\r\n"
                   "Server: leo-test\r\n"
                   "Content-Type: text/plain\r\n"
                   "Content-Length: 5\r\n"
                   "Connection: keep-alive\r\n"
                   "\r\n"
                   "hello");
    close(fd);
}

TEST(simple_get)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_simple_get, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_EQ(fx.closed, 1);
    ASSERT_EQ(fx.aborted, 0);
    ASSERT_STR_EQ(fx.method, "GET");
    ASSERT_STR_EQ(fx.url, "/hello?x=1&y=2");
    ASSERT_STR_EQ(fx.path, "/hello");
    ASSERT_STR_EQ(fx.query, "x=1&y=2");
    ASSERT_STR_EQ(fx.remote, "127.0.0.1");
    ASSERT_STR_EQ(fx.xmulti, "one");
    ASSERT_EQ(fx.nheaders, 2);
    ASSERT_EQ(fx.body_len, 0);
    ASSERT(fx.body_terminated);
    ASSERT(fx.keep_alive);
    ASSERT_EQ(fx.http_major, 1);
    ASSERT_EQ(fx.http_minor, 1);
}

static void client_split_reads(void)
{
    int fd = cli_connect();
    /* No server event tells that a partial request was read, so short pauses make the pieces arrive in
     * separate reads: the URL, a header name and a header value are each split. */
    const char *parts[] = {"GET /hel", "lo?a=b HTTP/1.1\r\nHost: a\r\nX-Mu", "lti: va", "lue two\r\n", "\r\n"};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        cli_sends(fd, parts[i]);
        usleep(20000);
    }
    cli_expect(fd, HELLO_KEEP);
    close(fd);
}

TEST(request_split_across_reads)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_split_reads, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_STR_EQ(fx.url, "/hello?a=b");
    ASSERT_STR_EQ(fx.xmulti, "value two");
}

static void client_keep_alive(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, HELLO_KEEP);
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, HELLO_KEEP);
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    cli_expect(fd, HELLO_CLOSE);
    cli_expect_eof(fd);
    close(fd);
}

TEST(keep_alive_then_connection_close)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_keep_alive, NULL);
    ASSERT_EQ(fx.handled, 3);
    ASSERT_EQ(fx.closed, 3);
    ASSERT_EQ(fx.aborted, 0);
    /* all three on one connection */
    ASSERT_EQ(fx.conns_seen[0], 1);
    ASSERT_EQ(fx.conns_seen[1], 1);
    ASSERT_EQ(fx.conns_seen[2], 1);
}

static void client_pipelined(void)
{
    int fd = cli_connect();
    /* the first answer takes longest: answering in arrival order means waiting for it */
    cli_sends(fd, "GET /delay/60/one HTTP/1.1\r\nHost: a\r\n\r\n"
                  "GET /delay/30/two HTTP/1.1\r\nHost: a\r\n\r\n"
                  "GET /delay/0/three HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                   "Connection: keep-alive\r\n\r\none"
                   "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                   "Connection: keep-alive\r\n\r\ntwo"
                   "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                   "Connection: keep-alive\r\n\r\nthree");
    close(fd);
}

TEST(pipelined_requests_answered_in_order)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_pipelined, NULL);
    ASSERT_EQ(fx.handled, 3);
    ASSERT_EQ(fx.closed, 3);
    ASSERT_EQ(fx.aborted, 0);
    /* each handler ran only after the previous response was finished */
    ASSERT_STR_EQ(fx.order, "one<one>two<two>three<three>");
    ASSERT_EQ(fx.max_inflight, 1);
}

static void client_chunked_body(void)
{
    int fd = cli_connect();
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    usleep(20000); /* let the server see a partial chunk */
    cli_sends(fd, "lo\r\n7\r\n world!\r\n0\r\nX-Trailer: t\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
                   "Connection: keep-alive\r\n\r\nhello world!");
    /* a Content-Length body on the same connection afterwards */
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                   "Connection: keep-alive\r\n\r\nabc");
    close(fd);
}

TEST(chunked_request_body_is_dechunked)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_chunked_body, NULL);
    ASSERT_EQ(fx.handled, 2);
    ASSERT_STR_EQ(fx.body, "abc");
    ASSERT(fx.body_terminated);
}

static void client_expect_continue(void)
{
    int fd = cli_connect();
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 100 Continue\r\n\r\n");
    cli_sends(fd, "abcde");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                   "Connection: keep-alive\r\n\r\nabcde");
    close(fd);

    /* too large a declared body is refused before the client sends it */
    fd = cli_connect();
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n");
    cli_expect_error(fd, 413, "request body too large");
    close(fd);
}

TEST(expect_100_continue)
{
    struct leo_http_limits l = test_limits();
    l.max_body_bytes = 100;
    run_case(&l, false, client_expect_continue, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_STR_EQ(fx.body, "abcde");
}

static void client_huge_headers(void)
{
    int fd = cli_connect();
    char *big = leo_malloc(20100);
    memcpy(big, "GET /hello HTTP/1.1\r\nX-Big: ", 28);
    memset(big + 28, 'a', 20000);
    memcpy(big + 20028, "\r\n\r\n", 5);
    cli_sends(fd, big);
    leo_free(big);
    cli_expect_error(fd, 431, "request headers too large");
    close(fd);
}

static void client_exact_header_limit(void)
{
    /* the limit counts request line + headers + the blank line exactly: 64 bytes pass, 65 do not */
    int fd = cli_connect();
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\nX-Pad: 12345678901234567890123\r\n\r\n");
    cli_expect(fd, HELLO_KEEP);
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\nX-Pad: 123456789012345678901234\r\n\r\n");
    cli_expect_error(fd, 431, "request headers too large");
    close(fd);
}

TEST(huge_headers_get_431)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_huge_headers, NULL);
    ASSERT_EQ(fx.handled, 0);

    l.max_header_bytes = 64;
    run_case(&l, false, client_exact_header_limit, NULL);
    ASSERT_EQ(fx.handled, 1);
}

static void client_many_headers(void)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_adds(&b, "GET /hello HTTP/1.1\r\n");
    for (int i = 0; i < 100; i++)
        leo_buf_addf(&b, "X-H%d: v\r\n", i);
    leo_buf_adds(&b, "\r\n");
    int fd = cli_connect();
    cli_send(fd, b.p, b.len);
    cli_expect(fd, HELLO_KEEP);
    close(fd);

    b.len -= 2;
    leo_buf_adds(&b, "X-One-Too-Many: v\r\n\r\n");
    fd = cli_connect();
    cli_send(fd, b.p, b.len);
    cli_expect_error(fd, 431, "too many request headers");
    close(fd);
    leo_buf_release(&b);
}

TEST(too_many_headers_get_431)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_many_headers, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_EQ(fx.nheaders, 100);
}

static void client_body_limits(void)
{
    int fd = cli_connect();
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\n\r\n0123456789abcdef");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n"
                   "Connection: keep-alive\r\n\r\n0123456789abcdef");
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n");
    cli_expect_error(fd, 413, "request body too large");
    close(fd);

    fd = cli_connect();
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n");
    cli_expect_error(fd, 413, "request body too large");
    close(fd);
}

TEST(too_large_bodies_get_413)
{
    struct leo_http_limits l = test_limits();
    l.max_body_bytes = 16;
    run_case(&l, false, client_body_limits, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_EQ(fx.closed, 1);
}

static void json_error_body(int status, const char *message, struct leo_buf *body, const char **content_type, void *ud)
{
    ASSERT(ud == &fx);
    *content_type = "application/json";
    leo_buf_addf(body, "{\"status\":%d}", status);
}

static void client_garbage(void)
{
    int fd = cli_connect();
    cli_sends(fd, "HELLO WORLD\r\n\r\n");
    cli_expect_all(fd, "HTTP/1.1 400 Bad Request\r\nServer: leo-test\r\nContent-Type: application/json\r\n"
                       "Content-Length: 14\r\nConnection: close\r\n\r\n{\"status\":400}");
    close(fd);
    /* the server is unaffected */
    fd = cli_connect();
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, HELLO_KEEP);
    close(fd);
}

TEST(garbage_gets_400_and_server_keeps_serving)
{
    struct leo_http_limits l = test_limits();
    fx.error_body = json_error_body;
    run_case(&l, false, client_garbage, NULL);
    ASSERT_EQ(fx.handled, 1);
}

static void client_header_timeout(void)
{
    int fd = cli_connect();
    uint64_t t0 = now_ms();
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\n");
    cli_expect_error(fd, 408, "request headers timed out");
    uint64_t dt = now_ms() - t0;
    ASSERT(dt >= 90 && dt < 3000);
    close(fd);

    fd = cli_connect();
    t0 = now_ms();
    cli_sends(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    cli_expect_error(fd, 408, "request body timed out");
    dt = now_ms() - t0;
    ASSERT(dt >= 90 && dt < 3000);
    close(fd);
}

TEST(header_and_body_timeouts_get_408)
{
    struct leo_http_limits l = test_limits();
    l.header_timeout_ms = 100;
    l.body_timeout_ms = 100;
    run_case(&l, false, client_header_timeout, NULL);
    ASSERT_EQ(fx.handled, 0);
}

static void client_idle_timeout(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, HELLO_KEEP);
    uint64_t t0 = now_ms();
    cli_expect_eof(fd);
    uint64_t dt = now_ms() - t0;
    ASSERT(dt >= 70 && dt < 3000);
    close(fd);

    /* a connection that never sends anything is closed the same way */
    fd = cli_connect();
    t0 = now_ms();
    cli_expect_eof(fd);
    dt = now_ms() - t0;
    ASSERT(dt >= 90 && dt < 3000);
    close(fd);
}

TEST(idle_keep_alive_connection_is_closed)
{
    struct leo_http_limits l = test_limits();
    l.idle_timeout_ms = 100;
    run_case(&l, false, client_idle_timeout, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_EQ(fx.closed, 1);
}

static void client_max_connections(void)
{
    int a = cli_connect();
    cli_sends(a, "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(a, HELLO_KEEP);
    int b = cli_connect(); /* the kernel completes the handshake; the server closes it at once */
    cli_expect_eof(b);
    close(b);
    cli_sends(a, "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(a, HELLO_KEEP);
    close(a);
}

TEST(connections_over_the_limit_are_closed)
{
    struct leo_http_limits l = test_limits();
    l.max_connections = 1;
    run_case(&l, false, client_max_connections, NULL);
    ASSERT_EQ(fx.handled, 2);
}

static void client_stream(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/event-stream\r\n"
                   "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                   "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    /* HEAD: the same head, no body; the next answer follows right after it */
    cli_sends(fd, "HEAD /stream HTTP/1.1\r\nHost: a\r\n\r\nHEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n"
                  "GET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/event-stream\r\n"
                   "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                   "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                   "Connection: keep-alive\r\n\r\n"
                   "HTTP/1.1 204 No Content\r\nServer: leo-test\r\nConnection: keep-alive\r\n\r\n");
    close(fd);

    /* an HTTP/1.0 client gets the raw body, ended by closing the connection */
    fd = cli_connect();
    cli_sends(fd, "GET /stream HTTP/1.0\r\n\r\n");
    cli_expect_all(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/event-stream\r\n"
                       "Connection: close\r\n\r\nhello world");
    close(fd);
}

TEST(streaming_response_exact_bytes)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_stream, NULL);
    ASSERT_EQ(fx.handled, 5);
    ASSERT_EQ(fx.closed, 5);
    ASSERT_EQ(fx.aborted, 0);
}

static void client_http10(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /hello HTTP/1.0\r\n\r\n");
    cli_expect_all(fd, HELLO_CLOSE);
    close(fd);

    fd = cli_connect();
    cli_sends(fd, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    cli_expect(fd, HELLO_KEEP);
    cli_sends(fd, "GET /hello HTTP/1.0\r\n\r\n");
    cli_expect_all(fd, HELLO_CLOSE);
    close(fd);
}

TEST(http10_keep_alive_only_when_asked)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_http10, NULL);
    ASSERT_EQ(fx.handled, 3);
    ASSERT_EQ(fx.http_minor, 0);
    ASSERT(!fx.keep_alive);
}

static void client_disconnect_mid_stream(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /forever HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\n"
                   "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n4\r\ntick\r\n");
    close(fd);
    wait_sem(&fx.sem_close); /* the server notices on its own, before it is closed */

    /* the same while the handler has not answered at all */
    fd = cli_connect();
    cli_sends(fd, "GET /hold HTTP/1.1\r\nHost: a\r\n\r\n");
    wait_sem(&fx.sem_handler);
    close(fd);
    wait_sem(&fx.sem_close);
}

TEST(client_disconnect_aborts_request_once)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_disconnect_mid_stream, NULL);
    ASSERT_EQ(fx.handled, 2);
    ASSERT_EQ(fx.closed, 2);
    ASSERT_EQ(fx.aborted, 2);
    ASSERT_EQ(fx.inflight_at_close, 0);
}

static void client_abort(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /abort HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect_all(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\n"
                       "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n4\r\npart\r\n");
    close(fd);
    wait_sem(&fx.sem_close);
}

TEST(abort_closes_without_final_chunk)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_abort, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_EQ(fx.closed, 1);
    ASSERT_EQ(fx.aborted, 1);
}

static void client_server_close(void)
{
    int fd = cli_connect();
    cli_sends(fd, "GET /hold HTTP/1.1\r\nHost: a\r\n\r\n");
    wait_sem(&fx.sem_handler);
    fx.keep_fd = fd; /* still open when the server closes */
}

TEST(server_close_aborts_inflight)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_server_close, NULL);
    ASSERT_EQ(fx.inflight_at_close, 1);
    ASSERT_EQ(fx.conns_at_close, 1);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_EQ(fx.closed, 1);
    ASSERT_EQ(fx.aborted, 1);
}

static void client_drain(void)
{
    int idle = cli_connect();
    cli_sends(idle, "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(idle, HELLO_KEEP);

    int fd = cli_connect();
    cli_sends(fd, "GET /drain HTTP/1.1\r\nHost: a\r\n\r\n");
    cli_expect(fd, "HTTP/1.1 200 OK\r\nServer: leo-test\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n"
                   "Connection: close\r\n\r\ndrained");
    cli_expect_eof(fd);
    close(fd);
    cli_expect_eof(idle); /* the idle keep-alive connection was closed by the drain */
    close(idle);

    int err = 0;
    fd = cli_connect_port(fx.port, &err);
    ASSERT_EQ(fd, -1);
    ASSERT_EQ(err, ECONNREFUSED);
}

TEST(drain_finishes_inflight_with_connection_close)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, false, client_drain, NULL);
    ASSERT_EQ(fx.handled, 2);
    ASSERT_EQ(fx.closed, 2);
    ASSERT_EQ(fx.aborted, 0);
}

static void client_reuseport(void)
{
    for (int i = 0; i < 8; i++) {
        int fd = cli_connect();
        cli_sends(fd, "GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        cli_expect_all(fd, HELLO_CLOSE);
        close(fd);
    }
}

static void start_second_server(void)
{
    struct leo_http_limits l = test_limits();
    fx.extra = make_server(&l);
    ASSERT_EQ(leo_http_server_listen(fx.extra, "127.0.0.1", fx.port, true), 0);
    ASSERT_EQ(leo_http_server_port(fx.extra), fx.port);
    /* without SO_REUSEPORT the port is taken */
    struct leo_http_server *third = make_server(&l);
    ASSERT_EQ(leo_http_server_listen(third, "127.0.0.1", fx.port, false), UV_EADDRINUSE);
    leo_http_server_close(third, NULL, NULL);
}

TEST(reuseport_lets_two_servers_share_a_port)
{
    struct leo_http_limits l = test_limits();
    run_case(&l, true, client_reuseport, start_second_server);
    ASSERT_EQ(fx.handled, 8);
    ASSERT_EQ(fx.closed, 8);
}

static void client_flood(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(fd >= 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)fx.port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cli_sends(fd, "GET /flood HTTP/1.1\r\nHost: a\r\n\r\n");
    wait_sem(&fx.sem_handler); /* the server's queue is full before we read anything */

    static const char head[] = "HTTP/1.1 200 OK\r\nServer: leo-test\r\nTransfer-Encoding: chunked\r\n"
                               "Connection: keep-alive\r\n\r\n";
    cli_expect(fd, head);
    size_t total = 0;
    char line[32];
    char *chunk = leo_malloc(sizeof(flood_chunk) + 2);
    for (;;) {
        /* chunk-size line */
        size_t n = 0;
        while (n < sizeof(line) - 1) {
            ASSERT_EQ(cli_read(fd, line + n, 1), 1);
            if (n && line[n - 1] == '\r' && line[n] == '\n')
                break;
            n++;
        }
        line[n + 1] = '\0';
        size_t size = strtoul(line, NULL, 16);
        if (size == 0) {
            cli_expect(fd, "\r\n");
            break;
        }
        ASSERT_EQ(size, sizeof(flood_chunk));
        ASSERT_EQ(cli_read(fd, chunk, size + 2), size + 2);
        ASSERT_MEM_EQ(chunk + size, 2, "\r\n", 2);
        total += size;
    }
    leo_free(chunk);
    ASSERT_EQ(total, fx.flood_total);
    close(fd);
}

TEST(pending_write_limit_and_on_drain)
{
    struct leo_http_limits l = test_limits();
    l.max_pending_write = 256 * 1024;
    memset(flood_chunk, 'z', sizeof(flood_chunk));
    run_case(&l, false, client_flood, NULL);
    ASSERT_EQ(fx.handled, 1);
    ASSERT_EQ(fx.closed, 1);
    ASSERT_EQ(fx.aborted, 0);
    ASSERT_EQ(fx.drains, 2);
    ASSERT(fx.flood_total > 256 * 1024);
}

static void count_close(void *ud)
{
    (*(int *)ud)++;
}

TEST(ipv6_and_bad_hosts)
{
    uv_loop_t loop;
    ASSERT_EQ(uv_loop_init(&loop), 0);
    struct leo_http_server_opts o;
    memset(&o, 0, sizeof(o));
    leo_http_limits_default(&o.limits);
    o.handler = test_handler;
    struct leo_http_server *srv = leo_http_server_new(&loop, &o);
    ASSERT_EQ(leo_http_server_listen(srv, "not-an-address", 0, false), UV_EINVAL);
    int rc = leo_http_server_listen(srv, "::1", 0, false);
    if (rc == UV_EADDRNOTAVAIL || rc == UV_EAFNOSUPPORT) {
        fprintf(stderr, "  (no IPv6 loopback here: %s)\n", uv_strerror(rc));
    } else {
        ASSERT_EQ(rc, 0);
        ASSERT(leo_http_server_port(srv) > 0);
    }
    int closed = 0;
    leo_http_server_close(srv, count_close, &closed);
    ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(closed, 1);
    ASSERT_EQ(uv_loop_close(&loop), 0);
}

TEST(reason_phrases)
{
    ASSERT_STR_EQ(leo_http_reason(200), "OK");
    ASSERT_STR_EQ(leo_http_reason(404), "Not Found");
    ASSERT_STR_EQ(leo_http_reason(413), "Payload Too Large");
    ASSERT_STR_EQ(leo_http_reason(431), "Request Header Fields Too Large");
    ASSERT_STR_EQ(leo_http_reason(503), "Service Unavailable");
    ASSERT_STR_EQ(leo_http_reason(799), "Unknown");
}

TEST_MAIN(TEST_ENTRY(simple_get), TEST_ENTRY(request_split_across_reads), TEST_ENTRY(keep_alive_then_connection_close),
          TEST_ENTRY(pipelined_requests_answered_in_order), TEST_ENTRY(chunked_request_body_is_dechunked),
          TEST_ENTRY(expect_100_continue), TEST_ENTRY(huge_headers_get_431), TEST_ENTRY(too_many_headers_get_431),
          TEST_ENTRY(too_large_bodies_get_413), TEST_ENTRY(garbage_gets_400_and_server_keeps_serving),
          TEST_ENTRY(header_and_body_timeouts_get_408), TEST_ENTRY(idle_keep_alive_connection_is_closed),
          TEST_ENTRY(connections_over_the_limit_are_closed), TEST_ENTRY(streaming_response_exact_bytes),
          TEST_ENTRY(http10_keep_alive_only_when_asked), TEST_ENTRY(client_disconnect_aborts_request_once),
          TEST_ENTRY(abort_closes_without_final_chunk), TEST_ENTRY(server_close_aborts_inflight),
          TEST_ENTRY(drain_finishes_inflight_with_connection_close),
          TEST_ENTRY(reuseport_lets_two_servers_share_a_port), TEST_ENTRY(pending_write_limit_and_on_drain),
          TEST_ENTRY(ipv6_and_bad_hosts), TEST_ENTRY(reason_phrases))
