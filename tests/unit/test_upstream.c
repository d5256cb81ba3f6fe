/*
 * test_upstream.c — the upstream client against a raw TCP server on loopback, run on the same libuv loop.
 *
 * The server reads until a request's head and Content-Length body are in, then hands it to the test's
 * handler, which writes canned bytes (at once, later from a timer, or never) and may close the connection.
 * Each test counts every client callback; teardown closes the client and the server and runs the loop until
 * no handle is left, so a leaked uv handle fails uv_loop_close and leaked memory fails the ASan build.
 */
#define _GNU_SOURCE /* memmem */

#include <curl/curl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/error.h"
#include "gateway/upstream.h"
#include "tests/unit/test.h"

/* ---- the raw server ---- */

struct sconn {
    uv_tcp_t tcp;
    struct leo_buf in;
    struct sconn *next;
    bool closing;
    bool eof;
};

struct srv {
    uv_tcp_t tcp;
    int port;
    int accepts;
    int requests;
    int eofs;
    bool listening;
    struct sconn *conns;
    struct leo_buf last; /* bytes of the last complete request */
    void (*handler)(struct sconn *c, struct leo_str req);
};

static uv_loop_t loop;
static uv_timer_t watchdog;
static struct srv srv;
static struct leo_upstream *up;

static void on_conn_closed(uv_handle_t *h)
{
    (void)h;
}

static void conn_close(struct sconn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

struct wreq {
    uv_write_t w;
    char data[];
};

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    leo_free(w);
}

static void conn_write(struct sconn *c, const char *data, size_t len)
{
    if (c->closing)
        return;
    struct wreq *r = leo_malloc(sizeof(*r) + len);
    memcpy(r->data, data, len);
    uv_buf_t b = uv_buf_init(r->data, (unsigned)len);
    ASSERT_EQ(uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, on_written), 0);
}

static void conn_writes(struct sconn *c, const char *s)
{
    conn_write(c, s, strlen(s));
}

static void on_shutdown(uv_shutdown_t *s, int status)
{
    (void)status;
    conn_close(s->data);
    leo_free(s);
}

/* Closes after everything queued has been written (a FIN, not a reset). */
static void conn_end(struct sconn *c)
{
    if (c->closing)
        return;
    uv_shutdown_t *s = leo_new(uv_shutdown_t);
    s->data = c;
    ASSERT_EQ(uv_shutdown(s, (uv_stream_t *)&c->tcp, on_shutdown), 0);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    b->base = leo_malloc(hint);
    b->len = hint;
}

static size_t content_length(struct leo_str head)
{
    static const char key[] = "\r\ncontent-length:";
    for (size_t i = 0; i + sizeof(key) - 1 <= head.len; i++) {
        if (strncasecmp(head.p + i, key, sizeof(key) - 1) == 0)
            return strtoul(head.p + i + sizeof(key) - 1, NULL, 10);
    }
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct sconn *c = s->data;
    if (n < 0) {
        c->eof = true;
        srv.eofs++;
        conn_close(c);
    } else if (n > 0) {
        leo_buf_add(&c->in, b->base, (size_t)n);
    }
    leo_free(b->base);
    while (!c->closing) {
        const char *end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
        if (!end)
            break;
        size_t head = (size_t)(end - c->in.p) + 4;
        size_t total = head + content_length(leo_str_n(c->in.p, head));
        if (c->in.len < total)
            break;
        srv.requests++;
        leo_buf_reset(&srv.last);
        leo_buf_add(&srv.last, c->in.p, total);
        struct leo_str req = leo_buf_str(&srv.last);
        /* the handler sees a copy: consuming the input below must not move what it looks at */
        leo_buf_consume(&c->in, total);
        srv.handler(c, req);
    }
}

static void on_connection(uv_stream_t *l, int status)
{
    ASSERT_EQ(status, 0);
    struct sconn *c = leo_new(struct sconn);
    c->in = (struct leo_buf)LEO_BUF_INIT;
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    c->next = srv.conns;
    srv.conns = c;
    ASSERT_EQ(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    srv.accepts++;
    ASSERT_EQ(uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read), 0);
}

static void srv_start(void (*handler)(struct sconn *c, struct leo_str req))
{
    memset(&srv, 0, sizeof(srv));
    srv.last = (struct leo_buf)LEO_BUF_INIT;
    srv.handler = handler;
    struct sockaddr_in addr;
    ASSERT_EQ(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    ASSERT_EQ(uv_tcp_init(&loop, &srv.tcp), 0);
    ASSERT_EQ(uv_tcp_bind(&srv.tcp, (const struct sockaddr *)&addr, 0), 0);
    ASSERT_EQ(uv_listen((uv_stream_t *)&srv.tcp, 256, on_connection), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    ASSERT_EQ(uv_tcp_getsockname(&srv.tcp, (struct sockaddr *)&ss, &len), 0);
    srv.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    srv.listening = true;
}

static void srv_close(void)
{
    if (srv.listening) {
        srv.listening = false;
        uv_close((uv_handle_t *)&srv.tcp, NULL);
    }
    for (struct sconn *c = srv.conns; c; c = c->next)
        conn_close(c);
}

static void srv_free(void)
{
    struct sconn *c, *next;
    for (c = srv.conns; c; c = next) {
        next = c->next;
        leo_buf_release(&c->in);
        leo_free(c);
    }
    srv.conns = NULL;
    leo_buf_release(&srv.last);
}

/* the request line's target */
static struct leo_str req_target(struct leo_str req)
{
    const char *sp = memchr(req.p, ' ', req.len);
    ASSERT(sp != NULL);
    const char *p = sp + 1;
    const char *sp2 = memchr(p, ' ', req.len - (size_t)(p - req.p));
    ASSERT(sp2 != NULL);
    return leo_str_n(p, (size_t)(sp2 - p));
}

static bool contains(struct leo_str hay, const char *needle)
{
    return memmem(hay.p, hay.len, needle, strlen(needle)) != NULL;
}

/* ---- fixture ---- */

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    TEST_FAIL_("test did not finish within its time bound");
}

static void fx_setup(void (*handler)(struct sconn *c, struct leo_str req))
{
    ASSERT_EQ(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &watchdog);
    uv_timer_start(&watchdog, on_watchdog, 15000, 0);
    srv_start(handler);
    up = leo_upstream_new(&loop);
    ASSERT(up != NULL);
}

/* Runs the loop until *counter reaches want; the watchdog bounds the wait. */
static void run_until(const int *counter, int want)
{
    while (*counter < want)
        uv_run(&loop, UV_RUN_ONCE);
}

static void fx_teardown(void)
{
    if (up) {
        leo_upstream_close(up);
        up = NULL;
    }
    srv_close();
    /* every handle must close by itself; the unreferenced watchdog still fires if one does not */
    uv_unref((uv_handle_t *)&watchdog);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
    srv_free();
}

static void url_for(char *buf, size_t size, const char *path)
{
    snprintf(buf, size, "http://127.0.0.1:%d%s", srv.port, path);
}

/* ---- the client side: a probe records every callback ---- */

struct probe {
    int headers, data, done;
    int status;
    int err;
    enum leo_upstream_stage stage;
    char msg[256];
    struct leo_buf body;
    struct leo_buf hdrs; /* "name=value\n" per header, as delivered */
    int version;
    double ttfb;
    struct leo_upstream_xfer *x;
    int *total_done; /* shared counter across probes, optional */
    void (*on_headers_hook)(struct probe *p);
    void (*on_data_hook)(struct probe *p);
    void (*on_done_hook)(struct probe *p);
};

static void probe_init(struct probe *p)
{
    memset(p, 0, sizeof(*p));
    p->body = (struct leo_buf)LEO_BUF_INIT;
    p->hdrs = (struct leo_buf)LEO_BUF_INIT;
}

static void probe_release(struct probe *p)
{
    leo_buf_release(&p->body);
    leo_buf_release(&p->hdrs);
}

static void p_on_headers(struct leo_upstream_xfer *x, int status, const struct leo_http_header *hs, size_t n, void *ud)
{
    struct probe *p = ud;
    ASSERT(x == p->x);
    ASSERT_EQ(p->done, 0);
    p->headers++;
    p->status = status;
    for (size_t i = 0; i < n; i++)
        leo_buf_addf(&p->hdrs, "%.*s=%.*s\n", (int)hs[i].name.len, hs[i].name.p, (int)hs[i].value.len, hs[i].value.p);
    p->version = leo_upstream_http_version(x);
    p->ttfb = leo_upstream_ttfb_ms(x);
    ASSERT_EQ(leo_upstream_stage(x), LEO_UP_BODY);
    if (p->on_headers_hook)
        p->on_headers_hook(p);
}

static void p_on_data(struct leo_upstream_xfer *x, const char *data, size_t len, void *ud)
{
    struct probe *p = ud;
    ASSERT(x == p->x);
    ASSERT_EQ(p->headers, 1);
    ASSERT_EQ(p->done, 0);
    ASSERT(len > 0);
    p->data++;
    leo_buf_add(&p->body, data, len);
    if (p->on_data_hook)
        p->on_data_hook(p);
}

static void p_on_done(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg, void *ud)
{
    struct probe *p = ud;
    ASSERT(x == p->x);
    ASSERT(msg != NULL);
    p->done++;
    p->err = err;
    p->stage = stage;
    snprintf(p->msg, sizeof(p->msg), "%s", msg);
    ASSERT_EQ(leo_upstream_stage(x), LEO_UP_DONE);
    if (p->total_done)
        (*p->total_done)++;
    if (p->on_done_hook)
        p->on_done_hook(p);
}

static const struct leo_upstream_callbacks probe_cbs = {p_on_headers, p_on_data, p_on_done};

static struct leo_upstream_xfer *probe_start(struct probe *p, const char *method, const char *path,
                                             const struct leo_http_header *hs, size_t nh, const char *body,
                                             size_t body_len, uint64_t first_byte_ms, uint64_t total_ms)
{
    char url[128];
    url_for(url, sizeof(url), path);
    struct leo_upstream_request req = {
        .method = method,
        .url = url,
        .headers = hs,
        .nheaders = nh,
        .body = body,
        .body_len = body_len,
        .connect_timeout_ms = 5000,
        .first_byte_timeout_ms = first_byte_ms,
        .total_timeout_ms = total_ms,
    };
    p->x = leo_upstream_start(up, &req, &probe_cbs, p);
    return p->x;
}

static bool has_header(const struct probe *p, const char *line)
{
    return contains(leo_buf_str(&p->hdrs), line);
}

/* ---- canned responses ---- */

#define JSON_BODY "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"ok\":true}"

static void reply_json(struct sconn *c, struct leo_str req)
{
    (void)req;
    char head[256];
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id:   req-42 \t\r\n"
             "Content-Length: %zu\r\n\r\n",
             strlen(JSON_BODY));
    conn_writes(c, head);
    conn_writes(c, JSON_BODY);
}

TEST(json_response)
{
    fx_setup(reply_json);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "GET", "/v1/models", NULL, 0, NULL, 0, 0, 0) != NULL);
    ASSERT_EQ(leo_upstream_active(up), 1);
    run_until(&p.done, 1);

    ASSERT_EQ(p.headers, 1);
    ASSERT_EQ(p.done, 1);
    ASSERT(p.data >= 1);
    ASSERT_EQ(p.err, 0);
    ASSERT_EQ(p.stage, LEO_UP_DONE);
    ASSERT_EQ(p.status, 200);
    ASSERT_EQ(p.version, 11);
    ASSERT(p.ttfb > 0);
    ASSERT(has_header(&p, "Content-Type=application/json\n"));
    ASSERT(has_header(&p, "X-Request-Id=req-42\n")); /* spans trimmed on both ends */
    ASSERT(has_header(&p, "Content-Length=56\n"));
    ASSERT_MEM_EQ(p.body.p, p.body.len, JSON_BODY, strlen(JSON_BODY));
    ASSERT_EQ(leo_upstream_active(up), 0);
    ASSERT_EQ(srv.accepts, 1);
    ASSERT_EQ(srv.requests, 1);
    fx_teardown();
    probe_release(&p);
}

static void reply_ok_empty(struct sconn *c, struct leo_str req)
{
    (void)req;
    conn_writes(c, "HTTP/1.1 204 No Content\r\n\r\n");
}

TEST(request_bytes_on_the_wire)
{
    fx_setup(reply_ok_empty);
    struct probe p;
    probe_init(&p);
    static const char body[] = "{\"model\":\"m\",\"messages\":[]}\0\xff tail";
    const struct leo_http_header hs[] = {
        {LEO_STR_LIT("Content-Type"), LEO_STR_LIT("application/json")},
        {LEO_STR_LIT("X-Custom"), LEO_STR_LIT("hello world")},
        {LEO_STR_LIT("Accept"), LEO_STR_LIT("text/event-stream")},
        {LEO_STR_LIT("Content-Length"), LEO_STR_LIT("999")}, /* the module frames the body itself */
    };
    ASSERT(probe_start(&p, "POST", "/v1/chat/completions?x=1", hs, 4, body, sizeof(body) - 1, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 1);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, 0);
    ASSERT_EQ(p.status, 204);

    struct leo_str req = leo_buf_str(&srv.last);
    ASSERT(leo_str_startswith(req, "POST /v1/chat/completions?x=1 HTTP/1.1\r\n"));
    char host[64];
    snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%d\r\n", srv.port);
    ASSERT(contains(req, host));
    ASSERT(contains(req, "\r\nX-Custom: hello world\r\n"));
    ASSERT(contains(req, "\r\nContent-Type: application/json\r\n"));
    ASSERT(contains(req, "\r\nAccept: text/event-stream\r\n"));
    ASSERT(!contains(req, "*/*"));
    char cl[64];
    snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n", sizeof(body) - 1);
    ASSERT(contains(req, cl));
    ASSERT(!contains(req, "999"));
    ASSERT(!contains(req, "Expect"));
    ASSERT(!contains(req, "Accept-Encoding"));
    const char *end = memmem(req.p, req.len, "\r\n\r\n", 4);
    ASSERT(end != NULL);
    size_t head = (size_t)(end - req.p) + 4;
    ASSERT_MEM_EQ(req.p + head, req.len - head, body, sizeof(body) - 1);
    fx_teardown();
    probe_release(&p);
}

static void reply_methods(struct sconn *c, struct leo_str req)
{
    (void)req;
    /* HEAD gets a Content-Length but no body, as HTTP says */
    if (leo_str_startswith(req, "HEAD "))
        conn_writes(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    else
        conn_writes(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
}

TEST(methods_and_bodies)
{
    static const struct {
        const char *method, *body, *request_line, *body_on_wire;
        int data;
    } cases[] = {
        {"GET", NULL, "GET /r HTTP/1.1\r\n", "", 1},     {"DELETE", NULL, "DELETE /r HTTP/1.1\r\n", "", 1},
        {"PUT", "abc", "PUT /r HTTP/1.1\r\n", "abc", 1}, {"POST", NULL, "POST /r HTTP/1.1\r\n", "", 1},
        {"HEAD", NULL, "HEAD /r HTTP/1.1\r\n", "", 0},
    };
    fx_setup(reply_methods);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct probe p;
        probe_init(&p);
        const char *b = cases[i].body;
        ASSERT(probe_start(&p, cases[i].method, "/r", NULL, 0, b, b ? strlen(b) : 0, 0, 0) != NULL);
        run_until(&p.done, 1);
        ASSERT_EQ(p.headers, 1);
        ASSERT_EQ(p.done, 1);
        ASSERT_EQ(p.err, 0);
        ASSERT_EQ(p.data, cases[i].data);
        struct leo_str req = leo_buf_str(&srv.last);
        ASSERT(leo_str_startswith(req, cases[i].request_line));
        const char *end = memmem(req.p, req.len, "\r\n\r\n", 4);
        ASSERT(end != NULL);
        size_t head = (size_t)(end - req.p) + 4;
        ASSERT_MEM_EQ(req.p + head, req.len - head, cases[i].body_on_wire, strlen(cases[i].body_on_wire));
        /* a POST without a body still says so; bodiless GET/DELETE/HEAD carry no length at all */
        if (strcmp(cases[i].method, "POST") == 0)
            ASSERT(contains(req, "\r\nContent-Length: 0\r\n"));
        if (!b && strcmp(cases[i].method, "POST") != 0)
            ASSERT(!contains(req, "Content-Length"));
        if (b)
            ASSERT(!contains(req, "Content-Type")); /* no invented form type */
        probe_release(&p);
    }
    ASSERT_EQ(srv.accepts, 1); /* all on one keep-alive connection */
    fx_teardown();
}

/* ---- streaming ---- */

static struct sconn *stream_conn;
static bool second_sent, last_sent;
static uv_timer_t chunk_timer;

static void reply_stream_head(struct sconn *c, struct leo_str req)
{
    (void)req;
    stream_conn = c;
    conn_writes(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "b\r\ndata: one\n\n\r\n");
}

static void send_last(uv_timer_t *t)
{
    (void)t;
    conn_writes(stream_conn, "c\r\ndata: three\n\r\n0\r\n\r\n");
    last_sent = true;
}

static void send_second(uv_timer_t *t)
{
    conn_writes(stream_conn, "b\r\ndata: two\n\n\r\n");
    second_sent = true;
    uv_timer_start(t, send_last, 20, 0);
}

static void stream_on_data(struct probe *p)
{
    if (p->data == 1) {
        /* the first piece is here while the server has not even sent the second one */
        ASSERT(!second_sent);
        ASSERT_MEM_EQ(p->body.p, p->body.len, "data: one\n\n", 11);
        uv_timer_start(&chunk_timer, send_second, 20, 0);
    }
}

TEST(chunked_stream_arrives_piece_by_piece)
{
    fx_setup(reply_stream_head);
    second_sent = last_sent = false;
    uv_timer_init(&loop, &chunk_timer);
    struct probe p;
    probe_init(&p);
    p.on_data_hook = stream_on_data;
    ASSERT(probe_start(&p, "POST", "/v1/chat/completions", NULL, 0, "{}", 2, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT(last_sent);
    ASSERT_EQ(p.headers, 1);
    ASSERT(p.data >= 2);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, 0);
    ASSERT_EQ(p.status, 200);
    ASSERT(has_header(&p, "Transfer-Encoding=chunked\n"));
    const char *want = "data: one\n\ndata: two\n\ndata: three\n";
    ASSERT_MEM_EQ(p.body.p, p.body.len, want, strlen(want));
    uv_close((uv_handle_t *)&chunk_timer, NULL);
    fx_teardown();
    probe_release(&p);
}

static void reply_interim_then_final(struct sconn *c, struct leo_str req)
{
    (void)req;
    conn_writes(c, "HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
                   "HTTP/1.1 201 Created\r\nX-Final:  1 \r\nContent-Length: 2\r\n\r\nok");
}

TEST(interim_1xx_block_is_not_delivered)
{
    fx_setup(reply_interim_then_final);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "POST", "/x", NULL, 0, "{}", 2, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 1);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, 0);
    ASSERT_EQ(p.status, 201);
    ASSERT(has_header(&p, "X-Final=1\n"));
    ASSERT(!has_header(&p, "X-Interim"));
    ASSERT_MEM_EQ(p.body.p, p.body.len, "ok", 2);
    fx_teardown();
    probe_release(&p);
}

/* ---- failures ---- */

static void reply_never(struct sconn *c, struct leo_str req)
{
    (void)c;
    (void)req;
}

TEST(connection_refused)
{
    fx_setup(reply_never);
    /* a port that was free a moment ago and has no listener now */
    uv_tcp_t probe_tcp;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_init(&loop, &probe_tcp);
    ASSERT_EQ(uv_tcp_bind(&probe_tcp, (const struct sockaddr *)&addr, 0), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&probe_tcp, (struct sockaddr *)&ss, &len);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&probe_tcp, NULL);

    struct probe p;
    probe_init(&p);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/models", port);
    struct leo_upstream_request req = {.method = "GET", .url = url, .connect_timeout_ms = 5000};
    p.x = leo_upstream_start(up, &req, &probe_cbs, &p);
    ASSERT(p.x != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 0);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, LEO_ECONNECT);
    ASSERT_EQ(p.stage, LEO_UP_CONNECT);
    ASSERT(strlen(p.msg) > 0);
    ASSERT_EQ(leo_upstream_active(up), 0);
    fx_teardown();
    probe_release(&p);
}

TEST(first_byte_timeout)
{
    fx_setup(reply_never);
    struct probe p;
    probe_init(&p);
    uint64_t t0 = uv_now(&loop);
    ASSERT(probe_start(&p, "POST", "/slow", NULL, 0, "{}", 2, 200, 0) != NULL);
    run_until(&p.done, 1);
    uv_update_time(&loop);
    ASSERT(uv_now(&loop) - t0 >= 190);
    ASSERT_EQ(srv.requests, 1);
    ASSERT_EQ(p.headers, 0);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, LEO_ETIMEOUT);
    ASSERT_EQ(p.stage, LEO_UP_HEADERS);
    ASSERT_STR_EQ(p.msg, "no response headers within 200 ms");
    /* the abandoned connection is closed, not kept for reuse */
    run_until(&srv.eofs, 1);
    ASSERT_EQ(p.done, 1);
    fx_teardown();
    probe_release(&p);
}

TEST(total_timeout_while_waiting_for_headers)
{
    fx_setup(reply_never);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "POST", "/slow", NULL, 0, "{\"a\":1}", 7, 0, 250) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 0);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.err, LEO_ETIMEOUT);
    ASSERT_EQ(p.stage, LEO_UP_HEADERS); /* the request was fully sent */
    ASSERT(strstr(p.msg, "250 ms") != NULL);
    fx_teardown();
    probe_release(&p);
}

static void reply_head_and_stall(struct sconn *c, struct leo_str req)
{
    (void)req;
    conn_writes(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n");
}

TEST(total_timeout_during_body)
{
    fx_setup(reply_head_and_stall);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "GET", "/stall", NULL, 0, NULL, 0, 5000, 250) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 1);
    ASSERT_EQ(p.data, 1);
    ASSERT_EQ(p.err, LEO_ETIMEOUT);
    ASSERT_EQ(p.stage, LEO_UP_BODY);
    ASSERT_MEM_EQ(p.body.p, p.body.len, "part", 4);
    fx_teardown();
    probe_release(&p);
}

static void reply_partial_then_close(struct sconn *c, struct leo_str req)
{
    (void)req;
    conn_writes(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "7\r\npartial\r\n");
    conn_end(c);
}

TEST(server_closes_mid_body)
{
    fx_setup(reply_partial_then_close);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "POST", "/v1/chat/completions", NULL, 0, "{}", 2, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 1);
    ASSERT_EQ(p.status, 200);
    ASSERT(p.data >= 1);
    ASSERT_MEM_EQ(p.body.p, p.body.len, "partial", 7);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, LEO_EUPSTREAM);
    ASSERT_EQ(p.stage, LEO_UP_BODY);
    fx_teardown();
    probe_release(&p);
}

static void reply_close_without_response(struct sconn *c, struct leo_str req)
{
    (void)req;
    conn_end(c);
}

TEST(server_closes_before_headers)
{
    fx_setup(reply_close_without_response);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "POST", "/x", NULL, 0, "{}", 2, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 0);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, LEO_EUPSTREAM);
    ASSERT_EQ(p.stage, LEO_UP_HEADERS);
    fx_teardown();
    probe_release(&p);
}

static void reply_garbage(struct sconn *c, struct leo_str req)
{
    (void)req;
    conn_writes(c, "this is not http\r\n\r\n");
    conn_end(c);
}

TEST(garbage_instead_of_a_response)
{
    fx_setup(reply_garbage);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "POST", "/x", NULL, 0, "{}", 2, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 0);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, LEO_EUPSTREAM);
    ASSERT_EQ(p.stage, LEO_UP_HEADERS);
    fx_teardown();
    probe_release(&p);
}

static void reply_huge_headers(struct sconn *c, struct leo_str req)
{
    (void)req;
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_adds(&b, "HTTP/1.1 200 OK\r\n");
    char filler[1001];
    memset(filler, 'v', sizeof(filler) - 1);
    filler[sizeof(filler) - 1] = '\0';
    for (int i = 0; i < 300; i++) /* 300 KB of headers, past the module's 256 KiB cap */
        leo_buf_addf(&b, "X-Filler-%d: %s\r\n", i, filler);
    leo_buf_adds(&b, "Content-Length: 0\r\n\r\n");
    conn_write(c, b.p, b.len);
    leo_buf_release(&b);
}

TEST(oversized_response_headers)
{
    fx_setup(reply_huge_headers);
    struct probe p;
    probe_init(&p);
    ASSERT(probe_start(&p, "GET", "/x", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(p.headers, 0);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.done, 1);
    ASSERT_EQ(p.err, LEO_EUPSTREAM);
    ASSERT_EQ(p.stage, LEO_UP_HEADERS);
    ASSERT_STR_EQ(p.msg, "upstream response headers too large");
    fx_teardown();
    probe_release(&p);
}

/* ---- cancel ---- */

static void reply_two_chunks_no_end(struct sconn *c, struct leo_str req)
{
    (void)req;
    /* both chunks in one write: curl parses them from one read, so the cancel lands between them */
    conn_writes(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\naaa\r\n3\r\nbbb\r\n");
}

static void cancel_self(struct probe *p)
{
    leo_upstream_cancel(p->x);
    ASSERT_EQ(leo_upstream_active(up), 0);
}

TEST(cancel_inside_on_data)
{
    fx_setup(reply_two_chunks_no_end);
    struct probe p;
    probe_init(&p);
    p.on_data_hook = cancel_self;
    ASSERT(probe_start(&p, "GET", "/s", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&p.data, 1);
    /* the connection of a cancelled transfer is closed; once the server sees that, curl is done with it */
    run_until(&srv.eofs, 1);
    ASSERT_EQ(p.headers, 1);
    ASSERT_EQ(p.data, 1);
    ASSERT_EQ(p.done, 0);
    ASSERT_MEM_EQ(p.body.p, p.body.len, "aaa", 3);
    ASSERT_EQ(leo_upstream_active(up), 0);
    fx_teardown();
    ASSERT_EQ(p.done, 0);
    probe_release(&p);
}

TEST(cancel_inside_on_headers)
{
    fx_setup(reply_two_chunks_no_end);
    struct probe p;
    probe_init(&p);
    p.on_headers_hook = cancel_self;
    ASSERT(probe_start(&p, "GET", "/s", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&p.headers, 1);
    run_until(&srv.eofs, 1);
    ASSERT_EQ(p.headers, 1);
    ASSERT_EQ(p.data, 0);
    ASSERT_EQ(p.done, 0);
    fx_teardown();
    ASSERT_EQ(p.done, 0);
    probe_release(&p);
}

TEST(cancel_from_outside_and_close_with_transfers_in_flight)
{
    fx_setup(reply_never);
    struct probe p[3];
    for (int i = 0; i < 3; i++) {
        probe_init(&p[i]);
        ASSERT(probe_start(&p[i], "POST", "/hang", NULL, 0, "{}", 2, 0, 0) != NULL);
    }
    ASSERT_EQ(leo_upstream_active(up), 3);
    run_until(&srv.requests, 3);
    leo_upstream_cancel(p[0].x);
    ASSERT_EQ(leo_upstream_active(up), 2);
    run_until(&srv.eofs, 1);
    leo_upstream_close(up);
    up = NULL;
    fx_teardown();
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(p[i].headers, 0);
        ASSERT_EQ(p[i].data, 0);
        ASSERT_EQ(p[i].done, 0);
        probe_release(&p[i]);
    }
}

/* ---- reuse and concurrency ---- */

static void reply_path_body(struct sconn *c, struct leo_str req)
{
    struct leo_str target = req_target(req);
    char head[128];
    snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
             target.len);
    conn_writes(c, head);
    conn_write(c, target.p, target.len);
}

static struct probe reuse_second;

static void start_second(struct probe *p)
{
    (void)p;
    /* from on_done of the first: its connection is back in the cache already */
    ASSERT(probe_start(&reuse_second, "GET", "/second", NULL, 0, NULL, 0, 0, 0) != NULL);
}

TEST(sequential_requests_reuse_the_connection)
{
    fx_setup(reply_path_body);
    struct probe first;
    probe_init(&first);
    probe_init(&reuse_second);
    first.on_done_hook = start_second;
    ASSERT(probe_start(&first, "GET", "/first", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&reuse_second.done, 1);
    ASSERT_EQ(first.headers, 1);
    ASSERT_EQ(first.done, 1);
    ASSERT_EQ(first.err, 0);
    ASSERT_MEM_EQ(first.body.p, first.body.len, "/first", 6);
    ASSERT_EQ(reuse_second.headers, 1);
    ASSERT_EQ(reuse_second.done, 1);
    ASSERT_EQ(reuse_second.err, 0);
    ASSERT_MEM_EQ(reuse_second.body.p, reuse_second.body.len, "/second", 7);
    ASSERT_EQ(srv.requests, 2);
    ASSERT_EQ(srv.accepts, 1);

    /* and a third one started from the top level, after the loop went idle */
    struct probe third;
    probe_init(&third);
    ASSERT(probe_start(&third, "GET", "/third", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&third.done, 1);
    ASSERT_EQ(third.err, 0);
    ASSERT_EQ(srv.accepts, 1);
    ASSERT_EQ(srv.requests, 3);
    fx_teardown();
    probe_release(&first);
    probe_release(&reuse_second);
    probe_release(&third);
}

/* ---- one watcher per pooled connection ---- */

struct poll_census {
    int n;
    uv_handle_t *last;
};

static void count_polls(uv_handle_t *h, void *arg)
{
    struct poll_census *pc = arg;
    if (h->type == UV_POLL && !uv_is_closing(h)) {
        pc->n++;
        pc->last = h;
    }
}

static struct poll_census census(void)
{
    struct poll_census pc = {0, NULL};
    uv_walk(&loop, count_polls, &pc);
    return pc;
}

TEST(pooled_connection_keeps_its_watcher)
{
    fx_setup(reply_path_body);
    struct probe a, b, c;
    probe_init(&a);
    probe_init(&b);
    probe_init(&c);

    ASSERT(probe_start(&a, "GET", "/a", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&a.done, 1);
    ASSERT_EQ(a.err, 0);
    /* the connection is back in curl's cache: its watcher stays, watching for the peer closing it */
    struct poll_census first = census();
    ASSERT_EQ(first.n, 1);
    ASSERT(uv_is_active(first.last));

    ASSERT(probe_start(&b, "GET", "/b", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&b.done, 1);
    ASSERT_EQ(b.err, 0);
    ASSERT_EQ(srv.accepts, 1);
    struct poll_census second = census();
    ASSERT_EQ(second.n, 1);
    ASSERT(second.last == first.last); /* the same handle, never closed in between */

    /* the server closes the idle connection: the watcher stops (epoll is level-triggered) but stays open */
    for (struct sconn *sc = srv.conns; sc; sc = sc->next)
        conn_close(sc);
    while (uv_is_active(first.last))
        uv_run(&loop, UV_RUN_ONCE);
    ASSERT_EQ(census().n, 1);

    /* the next transfer finds the connection dead, opens another, and the old watcher closes with its socket */
    ASSERT(probe_start(&c, "GET", "/c", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&c.done, 1);
    ASSERT_EQ(c.err, 0);
    ASSERT_MEM_EQ(c.body.p, c.body.len, "/c", 2);
    ASSERT_EQ(srv.accepts, 2);
    ASSERT_EQ(census().n, 1);
    fx_teardown(); /* fails if a watcher outlived the client */
    probe_release(&a);
    probe_release(&b);
    probe_release(&c);
}

/* ---- on_data_end ---- */

static int de_data, de_ends, de_data_since_end, de_early_ends;

static void de_on_data_end(struct leo_upstream_xfer *x, void *ud)
{
    (void)x;
    (void)ud;
    de_ends++;
    if (de_data_since_end == 0)
        de_early_ends++; /* fired without any body delivered since the last one */
    de_data_since_end = 0;
}

static void de_count_data(struct probe *p)
{
    (void)p;
    de_data++;
    de_data_since_end++;
}

static void de_check_done(struct probe *p)
{
    (void)p;
    ASSERT_EQ(de_data_since_end, 0); /* every piece was followed by on_data_end before on_done */
}

static void reply_many_chunks(struct sconn *c, struct leo_str req)
{
    (void)req;
    conn_writes(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "6\r\ndata:1\r\n6\r\ndata:2\r\n6\r\ndata:3\r\n6\r\ndata:4\r\n0\r\n\r\n");
}

TEST(on_data_end_follows_the_pieces_of_each_read)
{
    fx_setup(reply_many_chunks);
    struct probe p;
    probe_init(&p);
    p.on_data_hook = de_count_data;
    p.on_done_hook = de_check_done;
    struct leo_upstream_xfer *x = probe_start(&p, "GET", "/", NULL, 0, NULL, 0, 0, 0);
    ASSERT(x != NULL);
    leo_upstream_on_data_end(x, de_on_data_end);
    run_until(&p.done, 1);
    ASSERT_EQ(p.err, 0);
    ASSERT_MEM_EQ(p.body.p, p.body.len, "data:1data:2data:3data:4", 24);
    ASSERT(de_data >= 1);
    ASSERT(de_ends >= 1);
    ASSERT(de_ends <= de_data);
    ASSERT_EQ(de_early_ends, 0);
    ASSERT_EQ(de_data_since_end, 0);
    fx_teardown();
    probe_release(&p);
}

TEST(hundred_concurrent_transfers)
{
    enum { N = 100 };
    fx_setup(reply_path_body);
    static struct probe p[N];
    int total = 0;
    for (int i = 0; i < N; i++) {
        probe_init(&p[i]);
        p[i].total_done = &total;
        char path[32];
        snprintf(path, sizeof(path), "/n/%d", i);
        ASSERT(probe_start(&p[i], "POST", path, NULL, 0, path, strlen(path), 5000, 10000) != NULL);
    }
    ASSERT_EQ(leo_upstream_active(up), N);
    run_until(&total, N);
    for (int i = 0; i < N; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/n/%d", i);
        ASSERT_EQ(p[i].headers, 1);
        ASSERT_EQ(p[i].done, 1);
        ASSERT_EQ(p[i].err, 0);
        ASSERT_EQ(p[i].status, 200);
        ASSERT_MEM_EQ(p[i].body.p, p[i].body.len, path, strlen(path));
        probe_release(&p[i]);
    }
    ASSERT_EQ(srv.requests, N);
    ASSERT(srv.accepts >= 1 && srv.accepts <= N);
    ASSERT_EQ(leo_upstream_active(up), 0);
    fx_teardown();
}

/* ---- re-entrancy ---- */

static struct probe nested;

static void start_nested_on_first_data(struct probe *p)
{
    if (p->data == 1) {
        ASSERT(probe_start(&nested, "GET", "/nested", NULL, 0, NULL, 0, 0, 0) != NULL);
        ASSERT_EQ(leo_upstream_active(up), 2);
    }
}

static void reply_stream_or_path(struct sconn *c, struct leo_str req)
{
    if (leo_str_startswith(req_target(req), "/nested")) {
        reply_path_body(c, req);
        /* the stream ends once the transfer started inside its on_data has been served */
        conn_writes(stream_conn, "3\r\nend\r\n0\r\n\r\n");
        return;
    }
    stream_conn = c;
    conn_writes(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n");
}

TEST(start_inside_on_data)
{
    fx_setup(reply_stream_or_path);
    struct probe p;
    probe_init(&p);
    probe_init(&nested);
    p.on_data_hook = start_nested_on_first_data;
    ASSERT(probe_start(&p, "GET", "/stream", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&p.done, 1);
    run_until(&nested.done, 1);
    ASSERT_EQ(p.err, 0);
    ASSERT_MEM_EQ(p.body.p, p.body.len, "firstend", 8);
    ASSERT_EQ(nested.headers, 1);
    ASSERT_EQ(nested.done, 1);
    ASSERT_EQ(nested.err, 0);
    ASSERT_MEM_EQ(nested.body.p, nested.body.len, "/nested", 7);
    ASSERT_EQ(srv.accepts, 2); /* the stream's connection was busy */
    fx_teardown();
    probe_release(&p);
    probe_release(&nested);
}

static struct probe closer_victims[2];

static void close_client(struct probe *p)
{
    (void)p;
    leo_upstream_close(up);
    up = NULL;
}

static void reply_fast_or_never(struct sconn *c, struct leo_str req)
{
    if (leo_str_startswith(req_target(req), "/fast"))
        reply_path_body(c, req);
}

TEST(close_inside_on_done)
{
    fx_setup(reply_fast_or_never);
    struct probe fast;
    probe_init(&fast);
    fast.on_done_hook = close_client;
    for (int i = 0; i < 2; i++) {
        probe_init(&closer_victims[i]);
        ASSERT(probe_start(&closer_victims[i], "GET", "/hang", NULL, 0, NULL, 0, 0, 0) != NULL);
    }
    ASSERT(probe_start(&fast, "GET", "/fast", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&fast.done, 1);
    ASSERT(up == NULL);
    ASSERT_EQ(fast.err, 0);
    fx_teardown();
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(closer_victims[i].headers, 0);
        ASSERT_EQ(closer_victims[i].done, 0);
        probe_release(&closer_victims[i]);
    }
    probe_release(&fast);
}

/* ---- pause / resume ---- */

static uv_timer_t pause_timer;
static int pause_checks;

static void reply_stream_rest_on_demand(struct sconn *c, struct leo_str req)
{
    (void)req;
    stream_conn = c;
    conn_writes(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n");
}

static void check_still_paused(uv_timer_t *t)
{
    struct probe *p = t->data;
    /* the rest of the body has been on the wire for this whole interval */
    ASSERT_EQ(p->data, 1);
    ASSERT_EQ(p->done, 0);
    pause_checks++;
    leo_upstream_resume(p->x);
}

static void pause_on_first_data(struct probe *p)
{
    if (p->data == 1) {
        leo_upstream_pause(p->x);
        conn_writes(stream_conn, "3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n");
        pause_timer.data = p;
        uv_timer_start(&pause_timer, check_still_paused, 150, 0);
    }
}

TEST(pause_holds_data_until_resume)
{
    fx_setup(reply_stream_rest_on_demand);
    uv_timer_init(&loop, &pause_timer);
    pause_checks = 0;
    struct probe p;
    probe_init(&p);
    p.on_data_hook = pause_on_first_data;
    ASSERT(probe_start(&p, "GET", "/p", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(pause_checks, 1);
    ASSERT_EQ(p.headers, 1);
    ASSERT(p.data >= 2);
    ASSERT_EQ(p.err, 0);
    ASSERT_MEM_EQ(p.body.p, p.body.len, "onetwothree", 11);
    uv_close((uv_handle_t *)&pause_timer, NULL);
    fx_teardown();
    probe_release(&p);
}

static void pause_from_top_level(uv_timer_t *t)
{
    struct probe *p = t->data;
    if (pause_checks == 0) {
        /* paused from outside any callback: curl_easy_pause itself holds the data */
        leo_upstream_pause(p->x);
        conn_writes(stream_conn, "3\r\ntwo\r\n0\r\n\r\n");
        pause_checks = 1;
        uv_timer_start(t, pause_from_top_level, 150, 0);
    } else {
        ASSERT_EQ(p->data, 1);
        ASSERT_EQ(p->done, 0);
        pause_checks = 2;
        leo_upstream_resume(p->x);
    }
}

static void arm_outside_pause(struct probe *p)
{
    if (p->data == 1) {
        pause_timer.data = p;
        uv_timer_start(&pause_timer, pause_from_top_level, 0, 0);
    }
}

TEST(pause_outside_callbacks)
{
    fx_setup(reply_stream_rest_on_demand);
    uv_timer_init(&loop, &pause_timer);
    pause_checks = 0;
    struct probe p;
    probe_init(&p);
    p.on_data_hook = arm_outside_pause;
    ASSERT(probe_start(&p, "GET", "/p", NULL, 0, NULL, 0, 0, 0) != NULL);
    run_until(&p.done, 1);
    ASSERT_EQ(pause_checks, 2);
    ASSERT_EQ(p.err, 0);
    ASSERT_MEM_EQ(p.body.p, p.body.len, "onetwo", 6);
    uv_close((uv_handle_t *)&pause_timer, NULL);
    fx_teardown();
    probe_release(&p);
}

/* ---- start failures ---- */

TEST(invalid_requests_do_not_start)
{
    fx_setup(reply_never);
    struct probe p;
    probe_init(&p);
    struct leo_upstream_request req = {.method = "GET", .url = "not a url"};
    ASSERT(leo_upstream_start(up, &req, &probe_cbs, &p) == NULL);
    req.url = "ftp://127.0.0.1/x";
    ASSERT(leo_upstream_start(up, &req, &probe_cbs, &p) == NULL);
    char url[64];
    url_for(url, sizeof(url), "/x");
    req.url = url;
    const struct leo_http_header bad[] = {{LEO_STR_LIT("X-Evil"), LEO_STR_LIT("a\r\nInjected: 1")}};
    req.headers = bad;
    req.nheaders = 1;
    ASSERT(leo_upstream_start(up, &req, &probe_cbs, &p) == NULL);
    const struct leo_http_header badname[] = {{LEO_STR_LIT("X Bad"), LEO_STR_LIT("v")}};
    req.headers = badname;
    ASSERT(leo_upstream_start(up, &req, &probe_cbs, &p) == NULL);
    req.headers = NULL;
    req.nheaders = 0;
    req.method = "GE T";
    ASSERT(leo_upstream_start(up, &req, &probe_cbs, &p) == NULL);
    ASSERT_EQ(leo_upstream_active(up), 0);
    fx_teardown();
    ASSERT_EQ(p.headers + p.data + p.done, 0);
    ASSERT_EQ(srv.accepts, 0);
    probe_release(&p);
}

int main(void)
{
    static const struct test_case cases[] = {
        TEST_ENTRY(json_response),
        TEST_ENTRY(request_bytes_on_the_wire),
        TEST_ENTRY(methods_and_bodies),
        TEST_ENTRY(chunked_stream_arrives_piece_by_piece),
        TEST_ENTRY(interim_1xx_block_is_not_delivered),
        TEST_ENTRY(connection_refused),
        TEST_ENTRY(first_byte_timeout),
        TEST_ENTRY(total_timeout_while_waiting_for_headers),
        TEST_ENTRY(total_timeout_during_body),
        TEST_ENTRY(server_closes_mid_body),
        TEST_ENTRY(server_closes_before_headers),
        TEST_ENTRY(garbage_instead_of_a_response),
        TEST_ENTRY(oversized_response_headers),
        TEST_ENTRY(cancel_inside_on_data),
        TEST_ENTRY(cancel_inside_on_headers),
        TEST_ENTRY(cancel_from_outside_and_close_with_transfers_in_flight),
        TEST_ENTRY(sequential_requests_reuse_the_connection),
        TEST_ENTRY(hundred_concurrent_transfers),
        TEST_ENTRY(start_inside_on_data),
        TEST_ENTRY(close_inside_on_done),
        TEST_ENTRY(pause_holds_data_until_resume),
        TEST_ENTRY(pause_outside_callbacks),
        TEST_ENTRY(invalid_requests_do_not_start),
        TEST_ENTRY(pooled_connection_keeps_its_watcher),
        TEST_ENTRY(on_data_end_follows_the_pieces_of_each_read),
    };
    /* once per process, as libcurl asks; each client holds its own reference on top */
    ASSERT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    int rc = test_run_all(cases, sizeof(cases) / sizeof(cases[0]));
    curl_global_cleanup();
    return rc;
}
