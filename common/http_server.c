/*
 * http_server.c — HTTP/1.1 server core: libuv sockets, llhttp parsing, keep-alive, pipelining, limits.
 *
 * One connection holds at most one request at a time. Bytes are fed to llhttp as they arrive; the parser
 * is paused at the end of each request's headers (to count header bytes exactly and check the limits
 * before any body is read) and at the end of each request (so pipelined requests wait). While a request is
 * outstanding the connection keeps reading, so a client that goes away is noticed at once, but the bytes
 * are only buffered (up to max_header_bytes; past that reading stops until the response is done).
 *
 * The request struct is embedded in the connection and reused for the next request on it: there is no
 * per-request allocation on the server side besides what a slow client forces (a queued write).
 *
 * Re-entrancy: public calls (respond, stream_*, abort, drain, close) never run on_close or free anything
 * while their caller is on the stack. When a public call ends a request whose bytes were all written at
 * once (or whose connection just died), the connection is queued and finished from an idle callback, or
 * by the processing loop right after the handler returns when the call came from inside the handler.
 * Everything that calls user code (handler, on_close, on_drain) runs from a libuv callback of ours.
 */
#include "http_server.h"
#include "probe.h"

#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"

#define READ_BUF_SIZE 65536
#define LINGER_MS 2000      /* how long a closing connection keeps draining the client's bytes */
#define KEEP_HBUF_CAP 8192  /* header storage kept across requests; bigger is released */
#define KEEP_BODY_CAP 65536 /* body storage kept across requests; bigger is released */
#define SPANS_INITIAL 16

enum phase { PHASE_NONE, PHASE_IDLE, PHASE_HEADERS, PHASE_BODY, PHASE_LINGER };

enum parse_result { PARSE_MORE, PARSE_REQUEST, PARSE_ERROR };

enum listener_state { LISTENER_NONE, LISTENER_OPEN, LISTENER_CLOSING };

/* Offsets into hbuf while the headers are still arriving (hbuf may move as it grows). */
struct hdr_span {
    size_t name_off, name_len, value_off, value_len;
};

struct leo_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct leo_http_server *srv;
    struct leo_http_conn *prev, *next; /* the server's list */
    struct leo_http_conn *next_deferred;
    struct leo_http_conn *next_corked;
    llhttp_t parser;
    struct leo_http_limits limits; /* snapshot taken at accept */
    struct leo_http_request req;

    /* the request being parsed */
    struct leo_buf hbuf; /* url, then header names and values */
    struct hdr_span *spans;
    struct leo_http_header *hdrs;
    size_t hcap, nspans, url_len;
    size_t hdr_bytes; /* raw bytes of request line + headers so far */
    int err_status;   /* set by a parser callback that hit a limit */
    const char *err_msg;

    struct leo_buf inbuf; /* received but not parsed yet */
    struct leo_buf cork;  /* a streamed response's bytes of this loop iteration, written together (conn_cork) */
    size_t pending_write; /* bytes queued with uv_write (or corked), not written yet */
    unsigned nwrites;     /* uv_write requests outstanding, the cork counting as one */
    int handles_open;
    enum phase phase;

    bool reading, closing, shutting, processing, in_deferred, corked, in_cork_list;
    bool msg_begun, headers_done, msg_complete, pause_headers, last_was_value;
    bool is_head;
    bool req_active, req_dead, req_finalizing, in_handler;
    bool resp_started, resp_ended, resp_stream, resp_chunked, resp_no_body, resp_keep_alive, want_drain;
};

struct leo_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_idle_t idle; /* finishes requests ended by public calls (see the top of the file) */
    llhttp_settings_t settings;
    leo_http_handler_cb handler;
    leo_http_error_body_cb error_body;
    void *ud;
    char *server_header;
    size_t server_header_len;
    struct leo_http_limits limits;
    struct leo_http_conn *conns;
    struct leo_http_conn *defer_head, *defer_tail;
    struct leo_http_conn *cork_head; /* connections whose cork the idle callback writes */
    unsigned nconns, inflight;
    uint64_t io_events; /* reads, write completions and accepts, ever (leo_http_server_io_events) */
    int port;
    enum listener_state listener_state;
    bool draining, closing, idle_closing;
    void (*close_cb)(void *ud);
    void *close_ud;
    struct leo_buf wbuf;   /* response heads are built here; never kept across a return to the loop */
    struct leo_buf errbuf; /* error bodies */
    char msg[160];
    char rbuf[READ_BUF_SIZE]; /* every read of this loop lands here and is parsed or copied at once */
};

static void conn_process(struct leo_http_conn *c, const char *ext, size_t extlen);
static void conn_close(struct leo_http_conn *c);
static void conn_graceful_close(struct leo_http_conn *c);
static void server_maybe_done(struct leo_http_server *srv);

/* ---------------------------------------------------------------------------------------------------- */
/* Small helpers                                                                                          */

void leo_http_limits_default(struct leo_http_limits *l)
{
    l->max_header_bytes = 16 * 1024;
    l->max_headers = 100;
    l->max_body_bytes = 4 * 1024 * 1024;
    l->header_timeout_ms = 10000;
    l->body_timeout_ms = 30000;
    l->idle_timeout_ms = 60000;
    l->max_connections = 10000;
    l->max_pending_write = 1024 * 1024;
}

const char *leo_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Entity";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    case 511: return "Network Authentication Required";
    default: return "Unknown";
    }
}

const struct leo_http_header *leo_http_header_find(const struct leo_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (leo_str_caseeq(req->headers[i].name, name))
            return &req->headers[i];
    return NULL;
}

#define ADD_LIT(b, s) leo_buf_add((b), (s), sizeof(s) - 1)

static void add_uint(struct leo_buf *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    leo_buf_add(b, tmp + i, sizeof(tmp) - i);
}

static bool has_crlf(struct leo_str s)
{
    return s.len && (memchr(s.p, '\r', s.len) || memchr(s.p, '\n', s.len));
}

/* ---------------------------------------------------------------------------------------------------- */
/* Timers, reading, writing                                                                               */

static void on_timer(uv_timer_t *t);

static void conn_timer(struct leo_http_conn *c, enum phase phase, uint64_t ms)
{
    c->phase = phase;
    if (phase == PHASE_NONE || ms == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct leo_http_conn *c = h->data;
    *buf = uv_buf_init(c->srv->rbuf, sizeof(c->srv->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(struct leo_http_conn *c)
{
    if (c->reading || c->closing)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
}

static void conn_read_stop(struct leo_http_conn *c)
{
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

/* The cap on bytes buffered while a request is outstanding. */
static size_t inbuf_cap(const struct leo_http_conn *c)
{
    return c->limits.max_header_bytes; /* never 0: see leo_http_server_set_limits */
}

struct wreq {
    uv_write_t w;
    struct leo_http_conn *conn;
    size_t len;
    char data[];
};

/* Tells a streaming handler it may write again once the queue has fallen to half its limit. */
static void maybe_drain(struct leo_http_conn *c)
{
    if (c->want_drain && c->pending_write <= c->limits.max_pending_write / 2) {
        c->want_drain = false;
        if (c->req_active && !c->req_dead && !c->req_finalizing && !c->resp_ended && c->req.on_drain)
            c->req.on_drain(&c->req);
    }
}

static void on_write(uv_write_t *w, int status)
{
    struct wreq *wr = (struct wreq *)w;
    struct leo_http_conn *c = wr->conn;
    c->nwrites--;
    c->pending_write -= wr->len;
    leo_free(wr);
    c->srv->io_events++;
    if (status < 0)
        conn_close(c);
    else
        maybe_drain(c);
    conn_process(c, NULL, 0);
}

/* Writes bufs in order: at once when the socket takes them, the rest copied and queued. 0 or LEO_ECLOSED
 * (the connection has then been closed). */
static int conn_write(struct leo_http_conn *c, const uv_buf_t *bufs, unsigned n)
{
    if (c->closing)
        return LEO_ECLOSED;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (total == 0)
        return 0;
    if (c->corked) {
        for (unsigned i = 0; i < n; i++)
            leo_buf_add(&c->cork, bufs[i].base, bufs[i].len);
        c->pending_write += total;
        return 0;
    }
    size_t done = 0;
    if (c->nwrites == 0) {
        int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
        LEO_PROBE("response_written");
        if (r >= 0) {
            done = (size_t)r;
        } else if (r != UV_EAGAIN) {
            conn_close(c);
            return LEO_ECLOSED;
        }
        if (done == total)
            return 0;
    }
    size_t rest = total - done;
    struct wreq *wr = leo_malloc(sizeof(*wr) + rest);
    size_t skip = done, at = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(wr->data + at, bufs[i].base + skip, len - skip);
        at += len - skip;
        skip = 0;
    }
    wr->conn = c;
    wr->len = rest;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)rest);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        leo_free(wr);
        conn_close(c);
        return LEO_ECLOSED;
    }
    c->nwrites++;
    c->pending_write += rest;
    return 0;
}

/* Corking: a streamed response's head, events and end often come from one upstream read, in one loop
 * iteration. From leo_http_stream_start on, the connection's writes gather in c->cork (counted as one write
 * outstanding, so nothing treats the response as written) and the idle callback, before the loop polls
 * again, writes them with one system call: the client gets every byte in the same iteration, with one
 * write(2) where there were three or more. */
static void on_idle(uv_idle_t *idle);

static void conn_cork(struct leo_http_conn *c)
{
    if (c->corked || c->closing)
        return;
    c->corked = true;
    c->nwrites++;
    if (!c->in_cork_list) {
        c->in_cork_list = true;
        c->next_corked = c->srv->cork_head;
        c->srv->cork_head = c;
    }
    uv_idle_start(&c->srv->idle, on_idle);
}

/* Writes what is corked (drops it on a closed connection) and ends the cork's write. */
static void cork_flush(struct leo_http_conn *c)
{
    if (!c->corked)
        return;
    c->corked = false;
    c->nwrites--;
    size_t len = c->cork.len;
    c->pending_write -= len;
    if (len) {
        uv_buf_t b = uv_buf_init(c->cork.p, (unsigned)len);
        conn_write(c, &b, 1);
    }
    if (c->cork.cap > 65536)
        leo_buf_release(&c->cork);
    else
        leo_buf_reset(&c->cork);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Connection life                                                                                        */

static void conn_maybe_free(struct leo_http_conn *c)
{
    if (!c->closing || c->handles_open || c->req_active || c->in_deferred || c->processing || c->in_cork_list)
        return;
    struct leo_http_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    leo_buf_release(&c->hbuf);
    leo_buf_release(&c->inbuf);
    leo_buf_release(&c->cork);
    leo_buf_release(&c->req.body);
    leo_free(c->spans);
    leo_free(c->hdrs);
    leo_free(c);
    server_maybe_done(srv);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct leo_http_conn *c = h->data;
    c->handles_open--;
    conn_maybe_free(c);
}

/* Closes at once (queued writes are dropped). A request still outstanding becomes dead: it is finished
 * with aborted=true by whoever processes the connection next. */
static void conn_close(struct leo_http_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->reading = false;
    if (c->req_active)
        c->req_dead = true;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct leo_http_conn *c = req->data;
    if (status < 0)
        conn_close(c);
}

/* Sends FIN after the queued writes and keeps reading (discarding) until the client closes too or
 * LINGER_MS passes: closing with unread client bytes would make the kernel send RST, and the client could
 * lose the response it has not read yet (a 413 while it is still sending the body, for one). */
static void conn_graceful_close(struct leo_http_conn *c)
{
    if (c->closing || c->shutting)
        return;
    cork_flush(c); /* the FIN goes after every byte of the response */
    c->shutting = true;
    leo_buf_release(&c->inbuf);
    conn_timer(c, PHASE_LINGER, LINGER_MS);
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    conn_read_start(c);
}

/* Queues the connection to be processed from the idle callback: used by public calls, whose caller must
 * not see on_close run (or memory go away) under its feet. */
static void conn_defer(struct leo_http_conn *c);

static void conn_after_api(struct leo_http_conn *c)
{
    if (c->processing)
        return; /* the processing loop on the stack looks at the request when the handler returns */
    if (c->req_dead || (c->resp_ended && c->nwrites == 0) || c->closing)
        conn_defer(c);
}

static void on_idle(uv_idle_t *idle)
{
    struct leo_http_server *srv = idle->data;
    while (srv->cork_head || srv->defer_head) {
        while (srv->cork_head) {
            struct leo_http_conn *c = srv->cork_head;
            srv->cork_head = c->next_corked;
            c->in_cork_list = false;
            if (!c->corked) { /* flushed already (a graceful close) */
                conn_maybe_free(c);
                continue;
            }
            cork_flush(c);
            if (c->closing) {
                conn_maybe_free(c);
                continue;
            }
            maybe_drain(c);
            conn_process(c, NULL, 0);
        }
        if (srv->defer_head == NULL)
            break;
        struct leo_http_conn *c = srv->defer_head;
        srv->defer_head = c->next_deferred;
        if (srv->defer_head == NULL)
            srv->defer_tail = NULL;
        c->in_deferred = false;
        conn_process(c, NULL, 0);
    }
    uv_idle_stop(idle);
}

static void conn_defer(struct leo_http_conn *c)
{
    struct leo_http_server *srv = c->srv;
    if (c->in_deferred)
        return;
    c->in_deferred = true;
    c->next_deferred = NULL;
    if (srv->defer_tail)
        srv->defer_tail->next_deferred = c;
    else
        srv->defer_head = c;
    srv->defer_tail = c;
    uv_idle_start(&srv->idle, on_idle);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Responses                                                                                              */

static void head_begin(struct leo_http_server *srv, struct leo_buf *b, int status)
{
    if (status < 100 || status > 999)
        status = 500;
    leo_buf_reset(b);
    char line[16] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + status / 100);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    leo_buf_add(b, line, 13);
    leo_buf_adds(b, leo_http_reason(status));
    ADD_LIT(b, "\r\n");
    if (srv->server_header) {
        ADD_LIT(b, "Server: ");
        leo_buf_add(b, srv->server_header, srv->server_header_len);
        ADD_LIT(b, "\r\n");
    }
}

static void head_headers(struct leo_buf *b, const struct leo_http_header *headers, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct leo_http_header *h = &headers[i];
        /* a CR or LF would let a value smuggle its own headers or a second response */
        if (h->name.len == 0 || has_crlf(h->name) || has_crlf(h->value))
            continue;
        leo_buf_addstr(b, h->name);
        ADD_LIT(b, ": ");
        leo_buf_addstr(b, h->value);
        ADD_LIT(b, "\r\n");
    }
}

static void head_end(struct leo_buf *b, bool keep_alive)
{
    if (keep_alive)
        ADD_LIT(b, "Connection: keep-alive\r\n\r\n");
    else
        ADD_LIT(b, "Connection: close\r\n\r\n");
}

static bool status_has_body(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

/* True while the handler may still act on the request. */
static bool req_usable(const struct leo_http_conn *c)
{
    return c->req_active && !c->req_dead && !c->req_finalizing && !c->closing;
}

void leo_http_respond(struct leo_http_request *req, int status, const struct leo_http_header *headers, size_t nheaders,
                      const char *body, size_t len)
{
    struct leo_http_conn *c = req->_conn;
    if (!req_usable(c) || c->resp_started)
        return;
    struct leo_http_server *srv = c->srv;
    c->resp_started = true;
    c->resp_ended = true;
    c->resp_keep_alive = c->req.keep_alive && !srv->draining;
    bool with_body = status_has_body(status);
    struct leo_buf *b = &srv->wbuf;
    head_begin(srv, b, status);
    head_headers(b, headers, nheaders);
    if (with_body) {
        ADD_LIT(b, "Content-Length: ");
        add_uint(b, len);
        ADD_LIT(b, "\r\n");
    }
    head_end(b, c->resp_keep_alive);
    uv_buf_t bufs[2] = {uv_buf_init(b->p, (unsigned)b->len), uv_buf_init((char *)body, (unsigned)len)};
    unsigned n = with_body && !c->is_head && len ? 2 : 1;
    if (n == 2 && b->len + len <= 4096) {
        /* one contiguous buffer: a single write(2) instead of writev(2) for the common small answer */
        leo_buf_add(b, body, len);
        bufs[0] = uv_buf_init(b->p, (unsigned)b->len);
        n = 1;
    }
    conn_write(c, bufs, n);
    conn_after_api(c);
}

void leo_http_stream_start(struct leo_http_request *req, int status, const struct leo_http_header *headers,
                           size_t nheaders)
{
    struct leo_http_conn *c = req->_conn;
    if (!req_usable(c) || c->resp_started)
        return;
    struct leo_http_server *srv = c->srv;
    c->resp_started = true;
    c->resp_stream = true;
    c->resp_no_body = c->is_head || !status_has_body(status);
    /* An HTTP/1.0 client cannot read chunked framing: its body ends when the connection closes. */
    bool http11 = c->req.http_major > 1 || (c->req.http_major == 1 && c->req.http_minor >= 1);
    c->resp_chunked = http11 && status_has_body(status);
    c->resp_keep_alive = c->req.keep_alive && !srv->draining && (c->resp_chunked || !status_has_body(status));
    struct leo_buf *b = &srv->wbuf;
    head_begin(srv, b, status);
    head_headers(b, headers, nheaders);
    if (c->resp_chunked)
        ADD_LIT(b, "Transfer-Encoding: chunked\r\n");
    head_end(b, c->resp_keep_alive);
    conn_cork(c);
    uv_buf_t buf = uv_buf_init(b->p, (unsigned)b->len);
    conn_write(c, &buf, 1);
    conn_after_api(c);
}

int leo_http_stream_write(struct leo_http_request *req, const char *data, size_t len)
{
    struct leo_http_conn *c = req->_conn;
    if (!req_usable(c))
        return LEO_ECLOSED;
    if (!c->resp_stream || c->resp_ended)
        return LEO_EINVAL;
    if (len && !c->resp_no_body) {
        int rc;
        if (c->resp_chunked) {
            static const char hex[] = "0123456789abcdef";
            char size[24];
            size_t i = sizeof(size) - 2;
            size[sizeof(size) - 2] = '\r';
            size[sizeof(size) - 1] = '\n';
            size_t v = len;
            do {
                size[--i] = hex[v & 15];
                v >>= 4;
            } while (v);
            uv_buf_t bufs[3] = {uv_buf_init(size + i, (unsigned)(sizeof(size) - i)),
                                uv_buf_init((char *)data, (unsigned)len), uv_buf_init("\r\n", 2)};
            rc = conn_write(c, bufs, 3);
        } else {
            uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
            rc = conn_write(c, &buf, 1);
        }
        if (rc) {
            conn_after_api(c);
            return LEO_ECLOSED;
        }
    }
    if (c->pending_write > c->limits.max_pending_write) {
        c->want_drain = true;
        return 1;
    }
    return 0;
}

void leo_http_stream_end(struct leo_http_request *req)
{
    struct leo_http_conn *c = req->_conn;
    if (!req_usable(c) || !c->resp_stream || c->resp_ended)
        return;
    c->resp_ended = true;
    c->want_drain = false;
    if (c->resp_chunked && !c->resp_no_body) {
        uv_buf_t buf = uv_buf_init("0\r\n\r\n", 5);
        conn_write(c, &buf, 1);
    }
    conn_after_api(c);
}

void leo_http_abort(struct leo_http_request *req)
{
    struct leo_http_conn *c = req->_conn;
    if (!req_usable(c))
        return;
    c->resp_ended = true;
    cork_flush(c); /* what was written so far (an error event) reaches the client before the close */
    conn_close(c);
    conn_after_api(c);
}

bool leo_http_response_started(const struct leo_http_request *req)
{
    return req->_conn->resp_started;
}

/* An error the server answers by itself (400, 408, 413, 431); the connection closes after it. */
static void conn_send_error(struct leo_http_conn *c, int status, const char *msg)
{
    if (c->closing || c->shutting)
        return;
    struct leo_http_server *srv = c->srv;
    const char *ctype = "text/plain";
    leo_buf_reset(&srv->errbuf);
    if (srv->error_body) {
        srv->error_body(status, msg, &srv->errbuf, &ctype, srv->ud);
    } else {
        leo_buf_adds(&srv->errbuf, msg);
        leo_buf_addch(&srv->errbuf, '\n');
    }
    struct leo_buf *b = &srv->wbuf;
    head_begin(srv, b, status);
    ADD_LIT(b, "Content-Type: ");
    leo_buf_adds(b, ctype ? ctype : "text/plain");
    ADD_LIT(b, "\r\nContent-Length: ");
    add_uint(b, srv->errbuf.len);
    ADD_LIT(b, "\r\n");
    head_end(b, false);
    leo_buf_addstr(b, leo_buf_str(&srv->errbuf));
    uv_buf_t buf = uv_buf_init(b->p, (unsigned)b->len);
    if (conn_write(c, &buf, 1) == 0)
        conn_graceful_close(c);
    if (srv->errbuf.cap > KEEP_BODY_CAP)
        leo_buf_release(&srv->errbuf);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Parsing                                                                                                */

static int parse_fail(struct leo_http_conn *c, int status, const char *msg)
{
    c->err_status = status;
    c->err_msg = msg;
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    struct leo_http_conn *c = p->data;
    c->msg_begun = true;
    c->headers_done = false;
    c->msg_complete = false;
    c->last_was_value = true;
    c->nspans = 0;
    c->url_len = 0;
    c->hdr_bytes = 0;
    c->is_head = false;
    leo_buf_reset(&c->hbuf);
    c->hbuf.max = c->limits.max_header_bytes;
    leo_buf_reset(&c->req.body);
    c->req.body.max = c->limits.max_body_bytes;
    c->req.start_ns = uv_hrtime();
    conn_timer(c, PHASE_HEADERS, c->limits.header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct leo_http_conn *c = p->data;
    if (leo_buf_add(&c->hbuf, at, len) != 0)
        return parse_fail(c, 431, "request headers too large");
    c->url_len += len;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct leo_http_conn *c = p->data;
    if (c->headers_done)
        return 0; /* trailers of a chunked body are not kept */
    if (c->last_was_value) {
        if (c->nspans >= c->limits.max_headers)
            return parse_fail(c, 431, "too many request headers");
        if (c->nspans == c->hcap) {
            size_t cap = c->hcap ? c->hcap * 2 : SPANS_INITIAL;
            c->spans = leo_realloc(c->spans, cap * sizeof(*c->spans));
            c->hdrs = leo_realloc(c->hdrs, cap * sizeof(*c->hdrs));
            c->hcap = cap;
        }
        struct hdr_span *s = &c->spans[c->nspans++];
        s->name_off = c->hbuf.len;
        s->name_len = 0;
        s->value_off = c->hbuf.len;
        s->value_len = 0;
        c->last_was_value = false;
    }
    if (leo_buf_add(&c->hbuf, at, len) != 0)
        return parse_fail(c, 431, "request headers too large");
    c->spans[c->nspans - 1].name_len += len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct leo_http_conn *c = p->data;
    if (c->headers_done || c->nspans == 0)
        return 0;
    struct hdr_span *s = &c->spans[c->nspans - 1];
    if (!c->last_was_value) {
        s->value_off = c->hbuf.len;
        c->last_was_value = true;
    }
    if (leo_buf_add(&c->hbuf, at, len) != 0)
        return parse_fail(c, 431, "request headers too large");
    s->value_len += len;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct leo_http_conn *c = p->data;
    c->pause_headers = true;
    return HPE_PAUSED; /* conn_parse learns the exact header size from the pause position */
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct leo_http_conn *c = p->data;
    if (leo_buf_add(&c->req.body, at, len) != 0)
        return parse_fail(c, 413, "request body too large");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    LEO_PROBE("request_parsed");
    struct leo_http_conn *c = p->data;
    c->msg_complete = true;
    /* after an upgrade or CONNECT the bytes that follow are another protocol: answer, then close */
    c->req.keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    return HPE_PAUSED;
}

static void send_100_continue(struct leo_http_conn *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t buf = uv_buf_init((char *)cont, sizeof(cont) - 1);
    conn_write(c, &buf, 1);
}

/* The headers are complete: build the request's view of them and check what can be checked now.
 * Returns 0 or sets err_status. */
static int headers_done(struct leo_http_conn *c)
{
    llhttp_t *p = &c->parser;
    struct leo_http_request *r = &c->req;
    c->headers_done = true;
    if (c->hdr_bytes > c->limits.max_header_bytes)
        return parse_fail(c, 431, "request headers too large");

    r->method = leo_str_c(llhttp_method_name((llhttp_method_t)p->method));
    r->url = leo_str_n(c->hbuf.p, c->url_len);
    const char *q = c->url_len ? memchr(c->hbuf.p, '?', c->url_len) : NULL;
    if (q) {
        r->path = leo_str_n(c->hbuf.p, (size_t)(q - c->hbuf.p));
        r->query = leo_str_n(q + 1, c->url_len - r->path.len - 1);
    } else {
        r->path = r->url;
        r->query = leo_str_n(c->hbuf.p + c->url_len, 0);
    }
    for (size_t i = 0; i < c->nspans; i++) {
        const struct hdr_span *s = &c->spans[i];
        c->hdrs[i].name = leo_str_n(c->hbuf.p + s->name_off, s->name_len);
        /* llhttp strips leading whitespace of a value but keeps trailing whitespace, which is not part of it */
        c->hdrs[i].value = leo_str_trim(leo_str_n(c->hbuf.p + s->value_off, s->value_len));
    }
    r->headers = c->hdrs;
    r->nheaders = c->nspans;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    c->is_head = p->method == HTTP_HEAD;

    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    if (!chunked && has_length && p->content_length > c->limits.max_body_bytes)
        return parse_fail(c, 413, "request body too large");
    bool has_body = chunked || (has_length && p->content_length > 0);
    if (!has_body)
        return 0;
    if (!chunked) /* sized up front, but a client that only declares a length does not get a big buffer */
        leo_buf_grow(&r->body, p->content_length < KEEP_BODY_CAP ? (size_t)p->content_length : KEEP_BODY_CAP);
    conn_timer(c, PHASE_BODY, c->limits.body_timeout_ms);
    bool http11 = r->http_major > 1 || (r->http_major == 1 && r->http_minor >= 1);
    const struct leo_http_header *expect = http11 ? leo_http_header_find(r, "expect") : NULL;
    if (expect && leo_str_caseeq(leo_str_trim(expect->value), "100-continue"))
        send_100_continue(c);
    return 0;
}

/* Feeds bytes to the parser. *used tells how many were consumed; the rest belongs to the next request. */
static enum parse_result conn_parse(struct leo_http_conn *c, const char *data, size_t len, size_t *used)
{
    const char *at = data;
    const char *end = data + len;
    for (;;) {
        enum llhttp_errno e = llhttp_execute(&c->parser, at, (size_t)(end - at));
        if (e == HPE_OK) {
            if (c->msg_begun && !c->headers_done) {
                c->hdr_bytes += (size_t)(end - at);
                if (c->hdr_bytes > c->limits.max_header_bytes) {
                    parse_fail(c, 431, "request headers too large");
                    *used = len;
                    return PARSE_ERROR;
                }
            }
            *used = len;
            return PARSE_MORE;
        }
        const char *pos = llhttp_get_error_pos(&c->parser);
        if (pos == NULL || pos < at || pos > end)
            pos = end;
        *used = (size_t)(pos - data);
        if (e == HPE_PAUSED && c->pause_headers) {
            c->pause_headers = false;
            c->hdr_bytes += (size_t)(pos - at);
            if (headers_done(c) != 0)
                return PARSE_ERROR;
            if (c->closing)
                return PARSE_ERROR;
            llhttp_resume(&c->parser);
            at = pos;
            continue;
        }
        if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && c->msg_complete)
            return PARSE_REQUEST;
        if (c->err_status == 0) {
            snprintf(c->srv->msg, sizeof(c->srv->msg), "malformed request: %s",
                     llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser) : "parse error");
            parse_fail(c, 400, c->srv->msg);
        }
        return PARSE_ERROR;
    }
}

static void dispatch(struct leo_http_conn *c)
{
    struct leo_http_server *srv = c->srv;
    struct leo_http_request *r = &c->req;
    conn_timer(c, PHASE_NONE, 0);
    r->data = NULL;
    r->on_close = NULL;
    r->on_drain = NULL;
    c->resp_started = c->resp_ended = c->resp_stream = c->resp_chunked = false;
    c->resp_no_body = c->resp_keep_alive = c->want_drain = false;
    c->req_active = true;
    c->req_dead = false;
    srv->inflight++;
    c->in_handler = true;
    if (srv->handler) {
        srv->handler(r, srv->ud);
    } else {
        leo_http_respond(r, 404, NULL, 0, NULL, 0);
    }
    c->in_handler = false;
}

/* Ends the current request: on_close, then the arena, then the per-request state is reset for reuse. */
static void request_finish(struct leo_http_conn *c, bool aborted)
{
    struct leo_http_request *r = &c->req;
    c->req_finalizing = true;
    if (r->on_close)
        r->on_close(r, aborted);
    leo_arena_destroy(&r->arena);
    c->req_finalizing = false;
    c->req_active = false;
    c->req_dead = false;
    c->srv->inflight--;
    r->data = NULL;
    r->on_close = NULL;
    r->on_drain = NULL;
    r->headers = NULL;
    r->nheaders = 0;
    c->msg_begun = c->headers_done = c->msg_complete = false;
    if (r->body.cap > KEEP_BODY_CAP)
        leo_buf_release(&r->body);
    else
        leo_buf_reset(&r->body);
    if (c->hbuf.cap > KEEP_HBUF_CAP)
        leo_buf_release(&c->hbuf);
}

/* The connection's one processing loop: finish the request when its response is out (or it died), then
 * parse what is buffered, call the handler for each complete request, and stop when a response is
 * outstanding or more bytes are needed. ext is data just read, parsed in place when nothing is pending. */
static void conn_process(struct leo_http_conn *c, const char *ext, size_t extlen)
{
    if (extlen && (c->processing || c->req_active || c->inbuf.len)) {
        leo_buf_add(&c->inbuf, ext, extlen);
        extlen = 0;
        if (c->inbuf.len >= inbuf_cap(c))
            conn_read_stop(c);
    }
    if (c->processing)
        return;
    c->processing = true;
    struct leo_http_server *srv = c->srv;
    for (;;) {
        if (c->req_active) {
            if (c->in_handler)
                break;
            bool done = c->resp_ended && c->nwrites == 0;
            if (!c->req_dead && !done)
                break;
            bool aborted = c->req_dead;
            request_finish(c, aborted);
            if (c->closing)
                break;
            if (!c->resp_keep_alive || srv->draining) {
                conn_graceful_close(c);
                break;
            }
            llhttp_resume(&c->parser);
            if (c->inbuf.len == 0)
                conn_timer(c, PHASE_IDLE, c->limits.idle_timeout_ms);
            continue;
        }
        if (c->closing || c->shutting)
            break;
        const char *data;
        size_t len;
        if (extlen) {
            data = ext;
            len = extlen;
        } else if (c->inbuf.len) {
            data = c->inbuf.p;
            len = c->inbuf.len;
        } else {
            break;
        }
        size_t used = 0;
        enum parse_result pr = conn_parse(c, data, len, &used);
        if (extlen) {
            if (used < len && pr != PARSE_ERROR)
                leo_buf_add(&c->inbuf, data + used, len - used);
            extlen = 0;
        } else {
            leo_buf_consume(&c->inbuf, used);
        }
        if (pr == PARSE_ERROR) {
            conn_send_error(c, c->err_status ? c->err_status : 400, c->err_msg ? c->err_msg : "bad request");
            break;
        }
        if (pr == PARSE_MORE)
            break;
        if (c->closing)
            break;
        dispatch(c);
    }
    c->processing = false;
    if (!c->closing && !c->reading && c->inbuf.len < inbuf_cap(c))
        conn_read_start(c);
    conn_maybe_free(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    LEO_PROBE("request_read");
    struct leo_http_conn *c = s->data;
    if (nread == 0)
        return;
    c->srv->io_events++;
    if (nread < 0) {
        /* EOF or error: the client is gone; an outstanding request is aborted */
        conn_close(c);
        conn_process(c, NULL, 0);
        return;
    }
    if (c->shutting || c->closing)
        return; /* lingering: drop what the client still sends */
    conn_process(c, buf->base, (size_t)nread);
}

static void on_timer(uv_timer_t *t)
{
    struct leo_http_conn *c = t->data;
    switch (c->phase) {
    case PHASE_HEADERS:
        c->phase = PHASE_NONE;
        conn_send_error(c, 408, "request headers timed out");
        break;
    case PHASE_BODY:
        c->phase = PHASE_NONE;
        conn_send_error(c, 408, "request body timed out");
        break;
    case PHASE_IDLE:
    case PHASE_LINGER: conn_close(c); break;
    case PHASE_NONE: break;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Server                                                                                                 */

static void on_reject_closed(uv_handle_t *h)
{
    leo_free(h->data);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct leo_http_server *srv = listener->data;
    srv->io_events++;
    if (status < 0)
        return; /* EMFILE and friends: the pending connection stays in the backlog and is retried */
    struct leo_http_conn *c = leo_new(struct leo_http_conn);
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    bool over = srv->limits.max_connections && srv->nconns >= srv->limits.max_connections;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 || over) {
        /* closing the socket at once is the answer to a connection over the limit */
        uv_close((uv_handle_t *)&c->tcp, on_reject_closed);
        return;
    }
    c->srv = srv;
    c->limits = srv->limits;
    c->handles_open = 2;
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    leo_buf_init(&c->hbuf, c->limits.max_header_bytes, 0);
    leo_buf_init(&c->inbuf, 0, 0);
    leo_buf_init(&c->req.body, c->limits.max_body_bytes, 0);
    c->req.arena = (struct leo_arena)LEO_ARENA_INIT;
    c->req._conn = c;
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->req.remote_addr, sizeof(c->req.remote_addr));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->req.remote_addr, sizeof(c->req.remote_addr));
    }
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    conn_timer(c, PHASE_IDLE, c->limits.idle_timeout_ms);
    conn_read_start(c);
    if (!c->reading)
        conn_close(c);
}

struct leo_http_server *leo_http_server_new(uv_loop_t *loop, const struct leo_http_server_opts *opts)
{
    /* Writing to a socket the peer has reset raises SIGPIPE, whose default action ends the process. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    struct leo_http_server *srv = leo_new(struct leo_http_server);
    srv->loop = loop;
    srv->handler = opts->handler;
    srv->error_body = opts->error_body;
    srv->ud = opts->ud;
    if (opts->server_header) {
        srv->server_header = leo_strdup(opts->server_header);
        srv->server_header_len = strlen(srv->server_header);
    }
    leo_http_server_set_limits(srv, &opts->limits);
    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;
    uv_idle_init(loop, &srv->idle);
    srv->idle.data = srv;
    leo_buf_init(&srv->wbuf, 0, 512);
    leo_buf_init(&srv->errbuf, 0, 0);
    return srv;
}

void leo_http_server_set_limits(struct leo_http_server *srv, const struct leo_http_limits *limits)
{
    struct leo_http_limits d;
    leo_http_limits_default(&d);
    srv->limits = *limits;
    /* a zero size limit would make every request fail (or, for the body, lift the cap); take the default */
    if (srv->limits.max_header_bytes == 0)
        srv->limits.max_header_bytes = d.max_header_bytes;
    if (srv->limits.max_headers == 0)
        srv->limits.max_headers = d.max_headers;
    if (srv->limits.max_body_bytes == 0)
        srv->limits.max_body_bytes = d.max_body_bytes;
    if (srv->limits.max_pending_write == 0)
        srv->limits.max_pending_write = d.max_pending_write;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct leo_http_server *srv = h->data;
    srv->listener_state = LISTENER_NONE;
    server_maybe_done(srv);
}

static void listener_close(struct leo_http_server *srv)
{
    if (srv->listener_state != LISTENER_OPEN)
        return;
    srv->listener_state = LISTENER_CLOSING;
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

static int parse_host(const char *host, int port, struct sockaddr_storage *ss)
{
    char tmp[64];
    if (host == NULL || host[0] == '\0' || strcmp(host, "*") == 0)
        host = "0.0.0.0";
    else if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof(tmp)) {
        memcpy(tmp, host + 1, n - 2);
        tmp[n - 2] = '\0';
        host = tmp;
    }
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return UV_EINVAL;
}

int leo_http_server_listen(struct leo_http_server *srv, const char *host, int port, bool reuseport)
{
    if (srv->listener_state != LISTENER_NONE || srv->closing || srv->draining)
        return UV_EBUSY;
    if (port < 0 || port > 65535)
        return UV_EINVAL;
    struct sockaddr_storage ss;
    int rc = parse_host(host, port, &ss);
    if (rc)
        return rc;
    socklen_t sslen = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);

    /* libuv 1.44 cannot set SO_REUSEPORT itself, so the socket is made here and handed over. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        goto fail_fd;
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        goto fail_fd;
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0)
        goto fail_fd;

    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    srv->listener_state = LISTENER_OPEN;
    rc = uv_tcp_open(&srv->listener, fd);
    if (rc) {
        close(fd);
        goto fail_handle;
    }
    rc = uv_listen((uv_stream_t *)&srv->listener, SOMAXCONN, on_connection);
    if (rc)
        goto fail_handle;
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen);
    if (rc)
        goto fail_handle;
    srv->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
    return 0;

fail_fd:
    rc = -errno;
    close(fd);
    return rc;
fail_handle:
    listener_close(srv);
    return rc;
}

int leo_http_server_port(const struct leo_http_server *srv)
{
    return srv->port;
}

void leo_http_server_drain(struct leo_http_server *srv)
{
    if (srv->draining)
        return;
    srv->draining = true;
    listener_close(srv);
    for (struct leo_http_conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (!c->closing && !c->shutting && !c->req_active && !c->msg_begun && c->inbuf.len == 0)
            conn_close(c);
    }
}

unsigned leo_http_server_connections(const struct leo_http_server *srv)
{
    return srv->nconns;
}

unsigned leo_http_server_inflight(const struct leo_http_server *srv)
{
    return srv->inflight;
}

uint64_t leo_http_server_io_events(const struct leo_http_server *srv)
{
    return srv->io_events;
}

static void on_idle_closed(uv_handle_t *h)
{
    struct leo_http_server *srv = h->data;
    void (*cb)(void *) = srv->close_cb;
    void *ud = srv->close_ud;
    leo_buf_release(&srv->wbuf);
    leo_buf_release(&srv->errbuf);
    leo_free(srv->server_header);
    leo_free(srv);
    if (cb)
        cb(ud);
}

static void server_maybe_done(struct leo_http_server *srv)
{
    if (!srv->closing || srv->idle_closing || srv->nconns || srv->listener_state != LISTENER_NONE)
        return;
    srv->idle_closing = true;
    uv_close((uv_handle_t *)&srv->idle, on_idle_closed);
}

void leo_http_server_close(struct leo_http_server *srv, void (*cb)(void *ud), void *ud)
{
    if (srv->closing)
        return;
    srv->closing = true;
    srv->draining = true;
    srv->close_cb = cb;
    srv->close_ud = ud;
    listener_close(srv);
    for (struct leo_http_conn *c = srv->conns; c; c = c->next) {
        conn_close(c);
        if (!c->processing)
            conn_defer(c);
    }
    server_maybe_done(srv);
}
