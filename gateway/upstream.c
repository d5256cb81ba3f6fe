/*
 * upstream.c — libcurl's multi-socket interface driven by libuv.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to wake it up
 * (CURLMOPT_TIMERFUNCTION → one uv_timer_t); every wake-up goes through run_action(), and after curl
 * returns, after_curl() does the work that must not happen inside a curl callback: removing transfers that
 * were cancelled from on_headers/on_data, adding transfers started from them, and reading finished transfers
 * off curl_multi_info_read() to call on_done.
 *
 * Re-entrancy rules, in one place:
 * - up->defer counts the frames in which we are inside libcurl (curl_multi_socket_action, curl_easy_pause)
 *   or inside an on_headers/on_data call. curl refuses multi calls from its callbacks, so while defer > 0
 *   cancel only marks the transfer (its callbacks then return an abort code) and parks it on up->zombies,
 *   and start parks the new transfer until curl has returned.
 * - up->busy counts frames of our own dispatch loop (after_curl, the first-byte timer). While it is non-zero
 *   the multi handle stays alive even if leo_upstream_close was called from on_done; the last frame to
 *   unwind finishes the close.
 * - Memory of a transfer is released in the close callback of its first-byte timer, and the client itself in
 *   the close callback of its last uv handle, so no pointer on a stack below us ever dangles.
 *
 * One watcher per socket for the socket's whole life. libcurl takes a connection's socket off its watch list
 * (CURL_POLL_REMOVE) whenever the connection goes back to its cache, and asks for it again on the next
 * transfer. Closing and re-creating the uv_poll_t each time cost an ioctl and about six epoll_ctl per request
 * (every uv_poll_start begins with an EPOLL_CTL_DEL). So the sockets curl opens for connections come from our
 * CURLOPT_OPENSOCKETFUNCTION, which creates their watcher ("owned" sockets), and go through our
 * CURLOPT_CLOSESOCKETFUNCTION, which closes the watcher and then the descriptor: libuv's rule that a poll
 * handle is stopped before its descriptor is closed holds by construction. In between:
 * - a watcher is (re)started only when the events curl asks for differ from those it watches;
 * - CURL_POLL_REMOVE on an owned socket leaves a read-only watcher running (an idle keep-alive connection is
 *   silent, so it costs nothing); if that idle socket becomes readable (the peer closed it, usually) the
 *   watcher stops, since epoll is level-triggered, and curl finds the connection dead when it next looks;
 * - curl forgets the socketp of a removed socket, so sockets are also indexed by descriptor (up->byfd).
 * Sockets curl opens otherwise (the threaded resolver's wake-up pair) are closed by curl without telling us;
 * their watchers still close on CURL_POLL_REMOVE, as before.
 */
#include "upstream.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/alloc.h"
#include "../common/buf.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/probe.h"

#define UP_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define UP_MAX_HEADER_BYTES (256 * 1024) /* one response header block, status line included */
#define UP_MAX_CONNECTS 1024L            /* idle connections kept in the multi handle's cache */
#define UP_EASY_POOL_MAX 64              /* reset easy handles kept for the next transfers */

enum xfer_state {
    XS_PENDING, /* started while curl was on the stack; not yet added to the multi handle */
    XS_RUNNING, /* added to the multi handle */
    XS_ZOMBIE,  /* cancelled while curl was on the stack; awaiting removal */
    XS_DONE,    /* removed; on_done running or the memory about to be released */
};

struct up_sock {
    uv_poll_t poll;
    struct leo_upstream *up;
    curl_socket_t fd;
    int watching; /* UV_READABLE | UV_WRITABLE the poll handle is started with; 0 when stopped */
    bool owned;   /* opened by on_curl_opensocket: lives until on_curl_closesocket */
    bool wanted;  /* curl watches it now (between CURL_POLL_IN/OUT and CURL_POLL_REMOVE) */
    struct up_sock *prev, *next;
};

struct leo_upstream {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct leo_upstream_xfer *xfers;   /* started, neither finished nor cancelled */
    struct leo_upstream_xfer *zombies; /* cancelled inside a curl callback, still in the multi handle */
    struct up_sock *socks;             /* polled sockets */
    struct up_sock **byfd;             /* the same, indexed by descriptor (nbyfd entries) */
    size_t nbyfd;
    const char *valid_url;             /* the last URL valid_url accepted (most requests repeat it) */
    size_t valid_url_len;
    CURL *pool[UP_EASY_POOL_MAX];
    unsigned npool;
    unsigned active;
    unsigned handles; /* uv handles not yet closed: the timer, the polls, the transfers' timers */
    unsigned defer;
    unsigned busy;
    unsigned xfers_gen; /* bumped whenever a transfer leaves up->xfers */
    uint64_t io_events; /* socket and timer callbacks, ever (leo_upstream_io_events) */
    bool data_end_pending; /* some transfer got on_data calls whose on_data_end is due */
    bool pending_adds;
    bool no_proxy_env; /* no *_proxy variable in the environment: transfers say "no proxy" outright */
    bool closing; /* leo_upstream_close was called */
    bool closed;  /* the multi handle is gone; waiting for the uv handles to close */
};

struct leo_upstream_xfer {
    struct leo_upstream *up;
    struct leo_upstream_xfer *prev, *next;
    CURL *easy;
    struct curl_slist *req_headers; /* one allocation (build_headers): leo_free, not curl_slist_free_all */
    char *body;
    size_t body_len;
    struct leo_upstream_callbacks cbs;
    void *ud;
    void (*on_data_end)(struct leo_upstream_xfer *x, void *ud);
    bool data_end_due;
    uv_timer_t fb_timer; /* first-byte timeout; its close callback frees the transfer */
    uint64_t connect_timeout_ms, first_byte_timeout_ms, total_timeout_ms;
    uint64_t start_ns;
    double ttfb_ms;
    int http_version;
    struct leo_buf hdr;    /* the response header block being collected, one line per '\n' */
    const char *local_msg; /* why our own callback aborted the transfer, if it did */
    enum xfer_state state;
    bool connected; /* CURLOPT_PREREQFUNCTION fired: connection (and TLS) established or reused */
    bool headers_done;
    bool paused;
    bool canceled;
};

static void after_curl(struct leo_upstream *up);

/* ---- lists ---- */

static void xfer_push(struct leo_upstream_xfer **head, struct leo_upstream_xfer *x)
{
    x->prev = NULL;
    x->next = *head;
    if (*head)
        (*head)->prev = x;
    *head = x;
}

static void xfer_unlink(struct leo_upstream_xfer **head, struct leo_upstream_xfer *x)
{
    x->up->xfers_gen++;
    if (x->prev)
        x->prev->next = x->next;
    else
        *head = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
}

/* ---- handle bookkeeping ---- */

static void handle_closed(struct leo_upstream *up)
{
    if (--up->handles == 0 && up->closed) {
        leo_free(up->byfd);
        leo_free((char *)up->valid_url);
        leo_free(up);
    }
}

static void on_timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_sock_closed(uv_handle_t *h)
{
    struct up_sock *sc = h->data;
    struct leo_upstream *up = sc->up;
    leo_free(sc);
    handle_closed(up);
}

static void sock_index(struct leo_upstream *up, curl_socket_t fd, struct up_sock *sc)
{
    size_t i = (size_t)fd;
    if (i >= up->nbyfd) {
        size_t n = up->nbyfd ? up->nbyfd : 64;
        while (n <= i)
            n *= 2;
        up->byfd = leo_realloc(up->byfd, n * sizeof(*up->byfd));
        memset(up->byfd + up->nbyfd, 0, (n - up->nbyfd) * sizeof(*up->byfd));
        up->nbyfd = n;
    }
    up->byfd[i] = sc;
}

static struct up_sock *sock_find(const struct leo_upstream *up, curl_socket_t fd)
{
    return fd >= 0 && (size_t)fd < up->nbyfd ? up->byfd[fd] : NULL;
}

/* Stops and closes the watcher. uv_close stops the poll handle at once, so the descriptor may be closed as
 * soon as this returns; the memory goes in the close callback. */
static void sock_close(struct up_sock *sc)
{
    struct leo_upstream *up = sc->up;
    if (sc->prev)
        sc->prev->next = sc->next;
    else
        up->socks = sc->next;
    if (sc->next)
        sc->next->prev = sc->prev;
    if (sock_find(up, sc->fd) == sc)
        up->byfd[sc->fd] = NULL;
    uv_close((uv_handle_t *)&sc->poll, on_sock_closed);
}

/* A watcher for fd, registered with the client, or NULL (logged) if libuv refuses the descriptor. */
static struct up_sock *sock_new(struct leo_upstream *up, curl_socket_t fd, bool owned)
{
    struct up_sock *sc = leo_new(struct up_sock);
    sc->up = up;
    sc->fd = fd;
    sc->owned = owned;
    int rc = uv_poll_init_socket(up->loop, &sc->poll, fd);
    if (rc == UV_EEXIST) {
        /* curl closed a socket without telling us (only possible for sockets it did not open through
         * on_curl_opensocket) and got the same number back: drop the stale watcher */
        struct up_sock *old = sock_find(up, fd);
        if (old)
            sock_close(old);
        rc = uv_poll_init_socket(up->loop, &sc->poll, fd);
    }
    if (rc != 0) {
        leo_warn("upstream: cannot poll socket %d: %s", (int)fd, uv_strerror(rc));
        leo_free(sc);
        return NULL;
    }
    sc->poll.data = sc;
    up->handles++;
    sc->next = up->socks;
    if (up->socks)
        up->socks->prev = sc;
    up->socks = sc;
    sock_index(up, fd, sc);
    return sc;
}

static void on_xfer_closed(uv_handle_t *h)
{
    struct leo_upstream_xfer *x = h->data;
    struct leo_upstream *up = x->up;
    leo_free(x);
    handle_closed(up);
}

/* ---- easy handle pool ---- */

static CURLcode setup_easy_once(struct leo_upstream *up, CURL *e);

/* Pooled handles keep their options between transfers (no curl_easy_reset): the options every transfer shares
 * are set once, when the handle is made (setup_easy_once), and setup_easy sets every option that differs
 * between transfers, each time, so nothing of one transfer's request carries over to the next. */
static CURL *easy_get(struct leo_upstream *up)
{
    if (up->npool)
        return up->pool[--up->npool];
    CURL *e = curl_easy_init();
    if (e && setup_easy_once(up, e) != CURLE_OK) {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

static void easy_put(struct leo_upstream *up, CURL *e)
{
    if (up->npool < UP_EASY_POOL_MAX && !up->closed) {
        up->pool[up->npool++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

/* ---- transfer teardown ---- */

/* Takes the transfer out of libcurl and gives back everything but its memory. Not from a curl callback. */
static void xfer_release_curl(struct leo_upstream_xfer *x)
{
    struct leo_upstream *up = x->up;
    uv_timer_stop(&x->fb_timer);
    if (x->easy) {
        if (x->state == XS_RUNNING || x->state == XS_ZOMBIE)
            curl_multi_remove_handle(up->multi, x->easy);
        easy_put(up, x->easy);
        x->easy = NULL;
    }
    x->state = XS_DONE;
    leo_free(x->req_headers);
    x->req_headers = NULL;
    leo_free(x->body);
    x->body = NULL;
    leo_buf_release(&x->hdr);
}

static void xfer_free(struct leo_upstream_xfer *x)
{
    uv_close((uv_handle_t *)&x->fb_timer, on_xfer_closed);
}

static void reap_zombies(struct leo_upstream *up)
{
    struct leo_upstream_xfer *x;
    while ((x = up->zombies) != NULL) {
        xfer_unlink(&up->zombies, x);
        xfer_release_curl(x);
        xfer_free(x);
    }
}

/* ---- stages, versions, errors ---- */

static const char *const stage_names[] = {"connect", "send", "headers", "body", "done"};

static enum leo_upstream_stage stage_now(const struct leo_upstream_xfer *x)
{
    if (x->state == XS_DONE)
        return LEO_UP_DONE;
    if (x->headers_done)
        return LEO_UP_BODY;
    if (!x->connected || !x->easy)
        return LEO_UP_CONNECT;
    /* The request counts as sent once curl has written its head and all of the body. */
    long head = 0;
    curl_off_t sent = 0;
    curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &head);
    curl_easy_getinfo(x->easy, CURLINFO_SIZE_UPLOAD_T, &sent);
    if (head > 0 && (uint64_t)sent >= x->body_len)
        return LEO_UP_HEADERS;
    return LEO_UP_SEND;
}

static int version_from_curl(long v)
{
    switch (v) {
    case CURL_HTTP_VERSION_1_0: return 10;
    case CURL_HTTP_VERSION_1_1: return 11;
    case CURL_HTTP_VERSION_2_0: return 20;
    case CURL_HTTP_VERSION_3: return 30;
    default: return 0;
    }
}

/* curl results that mean "never got a usable connection"; anything else but a timeout is an upstream error */
static const CURLcode connect_errors[] = {
    CURLE_COULDNT_RESOLVE_PROXY, CURLE_COULDNT_RESOLVE_HOST,     CURLE_COULDNT_CONNECT,
    CURLE_SSL_CONNECT_ERROR,     CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_ENGINE_NOTFOUND,
    CURLE_SSL_ENGINE_SETFAILED,  CURLE_SSL_CERTPROBLEM,          CURLE_SSL_CIPHER,
    CURLE_SSL_ENGINE_INITFAILED, CURLE_SSL_CACERT_BADFILE,       CURLE_SSL_CRL_BADFILE,
    CURLE_SSL_ISSUER_ERROR,      CURLE_SSL_PINNEDPUBKEYNOTMATCH, CURLE_SSL_INVALIDCERTSTATUS,
    CURLE_SSL_CLIENTCERT,        CURLE_USE_SSL_FAILED,           CURLE_PROXY,
};

/* A failure before the connection was usable (CURLOPT_PREREQFUNCTION not yet called: a reset during the TLS
 * handshake, say) is a connect failure whatever curl calls it; a timeout keeps its own code. */
static bool is_connect_error(const struct leo_upstream_xfer *x, CURLcode rc)
{
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return false;
    if (!x->connected)
        return true;
    for (size_t i = 0; i < sizeof(connect_errors) / sizeof(connect_errors[0]); i++)
        if (rc == connect_errors[i])
            return true;
    return false;
}

/* Turns a curl result into the module's (err, stage, message). Messages carry curl's generic text for the
 * code (curl_easy_strerror), never curl's error buffer, which may quote the URL and with it a key. */
static int map_result(const struct leo_upstream_xfer *x, CURLcode rc, enum leo_upstream_stage *stage, char *msg,
                      size_t size)
{
    enum leo_upstream_stage now = stage_now(x);
    if (rc == CURLE_OK) {
        *stage = LEO_UP_DONE;
        snprintf(msg, size, "ok");
        return 0;
    }
    if (rc == CURLE_WRITE_ERROR && x->local_msg) {
        *stage = now;
        snprintf(msg, size, "%s", x->local_msg);
        return LEO_EUPSTREAM;
    }
    if (is_connect_error(x, rc)) {
        *stage = LEO_UP_CONNECT;
        snprintf(msg, size, "could not connect to upstream: %s", curl_easy_strerror(rc));
        return LEO_ECONNECT;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        *stage = now;
        if (now == LEO_UP_CONNECT) {
            uint64_t ms = x->connect_timeout_ms;
            if (x->total_timeout_ms && x->total_timeout_ms < ms)
                ms = x->total_timeout_ms;
            snprintf(msg, size, "no connection to upstream within %" PRIu64 " ms", ms);
        } else if (x->total_timeout_ms) {
            snprintf(msg, size, "upstream response not complete within %" PRIu64 " ms (during %s)", x->total_timeout_ms,
                     stage_names[now]);
        } else {
            snprintf(msg, size, "upstream timed out during %s", stage_names[now]);
        }
        return LEO_ETIMEOUT;
    }
    /* A broken connection: during the body once headers came, otherwise while waiting for them, unless
     * curl could not even send the request. */
    if (rc == CURLE_SEND_ERROR && !x->headers_done)
        *stage = now == LEO_UP_CONNECT ? LEO_UP_SEND : now;
    else
        *stage = x->headers_done ? LEO_UP_BODY : LEO_UP_HEADERS;
    snprintf(msg, size, "upstream failed during %s: %s", stage_names[*stage], curl_easy_strerror(rc));
    return LEO_EUPSTREAM;
}

/* ---- response headers ---- */

static struct leo_str strip_eol(struct leo_str s)
{
    while (s.len && (s.p[s.len - 1] == '\n' || s.p[s.len - 1] == '\r'))
        s.len--;
    return s;
}

/* "HTTP/1.1 200 OK" → 200, 11 */
static int parse_status_line(struct leo_str line, int *version)
{
    *version = 0;
    if (leo_str_startswith(line, "HTTP/1.0"))
        *version = 10;
    else if (leo_str_startswith(line, "HTTP/1.1"))
        *version = 11;
    else if (leo_str_startswith(line, "HTTP/2"))
        *version = 20;
    else if (leo_str_startswith(line, "HTTP/3"))
        *version = 30;
    const char *sp = memchr(line.p, ' ', line.len);
    if (!sp)
        return 0;
    size_t i = (size_t)(sp - line.p) + 1;
    int status = 0;
    for (int n = 0; n < 3 && i < line.len && line.p[i] >= '0' && line.p[i] <= '9'; n++, i++)
        status = status * 10 + (line.p[i] - '0');
    return status;
}

/* Calls on_headers with the collected block. Runs with up->defer raised, so a cancel from on_headers only
 * marks the transfer. */
static void deliver_headers(struct leo_upstream_xfer *x)
{
    struct leo_upstream *up = x->up;
    uv_timer_stop(&x->fb_timer);
    x->headers_done = true;
    x->ttfb_ms = (double)(uv_hrtime() - x->start_ns) / 1e6;

    struct leo_str block = leo_buf_str(&x->hdr);
    const char *nl = memchr(block.p, '\n', block.len);
    struct leo_str status_line = leo_str_n(block.p, nl ? (size_t)(nl - block.p) : block.len);
    int line_version;
    long code = 0, curl_version = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code == 0)
        code = parse_status_line(status_line, &line_version);
    else
        parse_status_line(status_line, &line_version);
    curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &curl_version);
    x->http_version = version_from_curl(curl_version);
    if (x->http_version == 0)
        x->http_version = line_version;

    size_t max = 0;
    for (size_t i = 0; i < block.len; i++)
        max += block.p[i] == '\n';
    struct leo_http_header *hs = leo_calloc(max ? max : 1, sizeof(*hs));
    size_t n = 0;
    size_t off = nl ? (size_t)(nl - block.p) + 1 : block.len;
    while (off < block.len) {
        const char *p = block.p + off;
        const char *end = memchr(p, '\n', block.len - off);
        size_t len = end ? (size_t)(end - p) : block.len - off;
        off += len + 1;
        /* obsolete line folding (a line starting with whitespace) is dropped, as are lines without a name */
        if (len == 0 || p[0] == ' ' || p[0] == '\t')
            continue;
        const char *colon = memchr(p, ':', len);
        if (!colon || colon == p)
            continue;
        hs[n].name = leo_str_trim(leo_str_n(p, (size_t)(colon - p)));
        hs[n].value = leo_str_trim(leo_str_n(colon + 1, len - (size_t)(colon - p) - 1));
        n++;
    }
    up->defer++;
    x->cbs.on_headers(x, (int)code, hs, n, x->ud);
    up->defer--;
    leo_free(hs);
    leo_buf_release(&x->hdr);
}

/* The blank line closing a header block: an interim 1xx block is dropped, the final one delivered.
 * Returns false when the transfer must stop (cancelled from on_headers). */
static bool end_header_block(struct leo_upstream_xfer *x)
{
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code == 0) {
        int v;
        struct leo_str block = leo_buf_str(&x->hdr);
        const char *nl = memchr(block.p, '\n', block.len);
        code = parse_status_line(leo_str_n(block.p, nl ? (size_t)(nl - block.p) : block.len), &v);
    }
    if (code >= 100 && code < 200 && code != 101) {
        leo_buf_reset(&x->hdr);
        return true;
    }
    deliver_headers(x);
    return !x->canceled;
}

static bool header_line(struct leo_upstream_xfer *x, const char *p, size_t len)
{
    struct leo_str line = strip_eol(leo_str_n(p, len));
    if (line.len == 0)
        return x->hdr.len == 0 ? true : end_header_block(x);
    if (leo_str_startswith(line, "HTTP/"))
        leo_buf_reset(&x->hdr); /* a new block (after a 1xx) starts with its status line */
    if (leo_buf_addstr(&x->hdr, line) != 0 || leo_buf_addch(&x->hdr, '\n') != 0) {
        x->local_msg = "upstream response headers too large";
        return false;
    }
    return true;
}

/* ---- curl callbacks ---- */

static size_t on_curl_header(char *p, size_t size, size_t nitems, void *arg)
{
    LEO_PROBE("curl_header");
    struct leo_upstream_xfer *x = arg;
    size_t len = size * nitems;
    if (x->canceled)
        return 0;
    /* curl hands over one line per call; splitting anyway costs nothing and survives a change. Lines after
     * the final block (trailers) are not part of the contract and are ignored. */
    size_t off = 0;
    while (off < len && !x->headers_done) {
        const char *line = p + off;
        const char *nl = memchr(line, '\n', len - off);
        size_t llen = nl ? (size_t)(nl - line) + 1 : len - off;
        off += llen;
        if (!header_line(x, line, llen))
            return 0;
    }
    return len;
}

static size_t on_curl_write(char *p, size_t size, size_t nmemb, void *arg)
{
    LEO_PROBE("curl_body");
    struct leo_upstream_xfer *x = arg;
    struct leo_upstream *up = x->up;
    size_t len = size * nmemb;
    if (x->canceled)
        return 0;
    /* A pause asked for from inside a callback takes effect here: curl keeps the bytes until resume. */
    if (x->paused)
        return CURL_WRITEFUNC_PAUSE;
    if (!x->headers_done) {
        deliver_headers(x);
        if (x->canceled)
            return 0;
    }
    if (len) {
        up->defer++;
        x->cbs.on_data(x, p, len, x->ud);
        up->defer--;
        if (x->on_data_end) {
            x->data_end_due = true;
            up->data_end_pending = true;
        }
    }
    return x->canceled ? 0 : len;
}

static int on_curl_prereq(void *arg, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    LEO_PROBE("curl_prereq");
    struct leo_upstream_xfer *x = arg;
    x->connected = true;
    return CURL_PREREQFUNC_OK;
}

/* ---- driving curl from libuv ---- */

/* on_data_end for every transfer that got body bytes since the last call: curl hands a chunked body over
 * one chunk at a time, so one read of the socket can mean many on_data calls. Runs once curl has returned. */
static void deliver_data_end(struct leo_upstream *up)
{
    if (up->defer || !up->data_end_pending)
        return;
    up->data_end_pending = false;
    struct leo_upstream_xfer *x = up->xfers, *next;
    while (x) {
        next = x->next;
        if (x->data_end_due) {
            x->data_end_due = false;
            unsigned gen = up->xfers_gen;
            up->defer++; /* a cancel from the callback only marks the transfer, as from on_data */
            x->on_data_end(x, x->ud);
            up->defer--;
            if (gen != up->xfers_gen)
                next = up->xfers; /* the list changed: start over (the flags say who is still due) */
        }
        x = next;
    }
}

static void run_action(struct leo_upstream *up, curl_socket_t fd, int ev)
{
    int running = 0;
    up->io_events++;
    up->defer++;
    LEO_PROBE("curl_enter");
    CURLMcode mc = curl_multi_socket_action(up->multi, fd, ev, &running);
    LEO_PROBE("curl_leave");
    up->defer--;
    if (mc != CURLM_OK)
        leo_warn("upstream: curl_multi_socket_action failed: %s", curl_multi_strerror(mc));
    deliver_data_end(up);
    after_curl(up);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct up_sock *sc = h->data;
    if (!sc->wanted) {
        /* an idle pooled connection became readable: the peer closed it, usually. curl is not watching it and
         * epoll is level-triggered, so stop; curl sees the connection is dead when it next considers it. */
        uv_poll_stop(&sc->poll);
        sc->watching = 0;
        return;
    }
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR | CURL_CSELECT_IN | CURL_CSELECT_OUT;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    run_action(sc->up, sc->fd, flags);
}

static void on_timeout(uv_timer_t *t)
{
    run_action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static void sock_watch(struct up_sock *sc, int ev)
{
    if (ev == sc->watching)
        return;
    int rc = ev ? uv_poll_start(&sc->poll, ev, on_poll) : uv_poll_stop(&sc->poll);
    if (rc != 0) {
        leo_warn("upstream: cannot poll socket %d: %s", (int)sc->fd, uv_strerror(rc));
        return;
    }
    sc->watching = ev;
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct leo_upstream *up = userp;
    struct up_sock *sc = socketp;
    if (!sc)
        sc = sock_find(up, fd);
    if (what == CURL_POLL_REMOVE) {
        /* curl forgets socketp itself once we return */
        if (!sc)
            return 0;
        if (!sc->owned) {
            sock_close(sc);
            return 0;
        }
        sc->wanted = false;
        /* keep a read-only watcher on an idle connection (see the top of the file); anything else stops */
        if (sc->watching != UV_READABLE)
            sock_watch(sc, 0);
        return 0;
    }
    if (up->closed)
        return 0;
    if (!sc) {
        /* Returning -1 would mark the whole multi handle dead. Left unwatched, the transfer ends at its
         * connect timeout or its total timeout, and without a total timeout a transfer already past connect
         * would wait for ever. Not seen in practice: uv_poll_init only fails for a descriptor that is not
         * open, after the EEXIST case in sock_new. */
        sc = sock_new(up, fd, false);
        if (!sc)
            return 0;
    }
    if (!socketp)
        curl_multi_assign(up->multi, fd, sc);
    sc->wanted = true;
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    sock_watch(sc, ev);
    return 0;
}

/* Every socket curl opens for a connection: its watcher is created here, once. */
static curl_socket_t on_curl_opensocket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    struct leo_upstream *up = clientp;
    (void)purpose;
    curl_socket_t fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
    if (fd == CURL_SOCKET_BAD)
        return CURL_SOCKET_BAD;
    if (up->closed || !sock_new(up, fd, true)) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    return fd;
}

/* ...and closed here: the watcher first (libuv's rule), then the descriptor. */
static int on_curl_closesocket(void *clientp, curl_socket_t fd)
{
    struct leo_upstream *up = clientp;
    struct up_sock *sc = sock_find(up, fd);
    if (sc)
        sock_close(sc);
    return close(fd);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct leo_upstream *up = userp;
    if (timeout_ms < 0 || up->closed)
        uv_timer_stop(&up->timer);
    else
        /* 0 means "as soon as possible": the next loop iteration, never from inside this callback */
        uv_timer_start(&up->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- finishing ---- */

/* Ends a live transfer: out of curl, on_done, then the memory. Not from inside a curl callback. */
static void xfer_finish(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg)
{
    struct leo_upstream *up = x->up;
    xfer_unlink(&up->xfers, x);
    up->active--;
    xfer_release_curl(x);
    if (x->cbs.on_done)
        x->cbs.on_done(x, err, stage, msg, x->ud);
    xfer_free(x);
}

static void xfer_done(struct leo_upstream_xfer *x, CURLcode rc)
{
    if (rc == CURLE_OK && !x->headers_done) {
        /* curl finished without a header block we saw end (not expected from HTTP); the contract still
         * promises on_headers before a successful on_done */
        deliver_headers(x);
        if (x->canceled)
            return;
    }
    char msg[192];
    enum leo_upstream_stage stage;
    int err = map_result(x, rc, &stage, msg, sizeof(msg));
    xfer_finish(x, err, stage, msg);
}

static void add_pending(struct leo_upstream *up)
{
    up->pending_adds = false;
    struct leo_upstream_xfer *x = up->xfers, *next;
    for (; x; x = next) {
        next = x->next;
        if (x->state != XS_PENDING)
            continue;
        CURLMcode mc = curl_multi_add_handle(up->multi, x->easy);
        if (mc == CURLM_OK) {
            x->state = XS_RUNNING;
        } else {
            char msg[128];
            snprintf(msg, sizeof(msg), "could not start upstream transfer: %s", curl_multi_strerror(mc));
            xfer_finish(x, LEO_ECONNECT, LEO_UP_CONNECT, msg);
            next = up->xfers; /* on_done may have changed the list; PENDING entries are re-checked */
        }
    }
}

static void finish_close(struct leo_upstream *up)
{
    if (up->closed)
        return;
    up->closed = true;
    reap_zombies(up);
    curl_multi_cleanup(up->multi);
    up->multi = NULL;
    while (up->socks)
        sock_close(up->socks);
    while (up->npool)
        curl_easy_cleanup(up->pool[--up->npool]);
    uv_timer_stop(&up->timer);
    uv_close((uv_handle_t *)&up->timer, on_timer_closed);
    curl_global_cleanup();
}

static void after_curl(struct leo_upstream *up)
{
    if (up->defer || up->busy || up->closed)
        return;
    up->busy++;
    for (;;) {
        reap_zombies(up);
        if (up->pending_adds)
            add_pending(up);
        int left;
        CURLMsg *m = curl_multi_info_read(up->multi, &left);
        if (!m)
            break;
        if (m->msg != CURLMSG_DONE)
            continue;
        /* the message lives inside the easy handle: copy what we need before removing it */
        CURLcode rc = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        struct leo_upstream_xfer *x = (struct leo_upstream_xfer *)(void *)priv;
        if (x && x->state == XS_RUNNING)
            xfer_done(x, rc);
        else
            curl_multi_remove_handle(up->multi, m->easy_handle);
    }
    up->busy--;
    if (up->closing)
        finish_close(up);
}

static void on_first_byte_timeout(uv_timer_t *t)
{
    struct leo_upstream_xfer *x = t->data;
    struct leo_upstream *up = x->up;
    if (x->headers_done || x->canceled || x->state == XS_DONE)
        return;
    char msg[96];
    snprintf(msg, sizeof(msg), "no response headers within %" PRIu64 " ms", x->first_byte_timeout_ms);
    up->busy++;
    xfer_finish(x, LEO_ETIMEOUT, LEO_UP_HEADERS, msg);
    up->busy--;
    after_curl(up);
}

/* ---- public API ---- */

struct leo_upstream *leo_upstream_new(uv_loop_t *loop)
{
    /* reference-counted by libcurl; the matching cleanup runs when this client is closed */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    CURLM *multi = curl_multi_init();
    if (!multi) {
        curl_global_cleanup();
        return NULL;
    }
    struct leo_upstream *up = leo_new(struct leo_upstream);
    up->loop = loop;
    up->multi = multi;
    uv_timer_init(loop, &up->timer);
    up->timer.data = up;
    up->handles = 1;
    static const char *const proxy_vars[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                                             "all_proxy",  "ALL_PROXY"};
    up->no_proxy_env = true;
    for (size_t i = 0; i < sizeof(proxy_vars) / sizeof(proxy_vars[0]); i++)
        if (getenv(proxy_vars[i]))
            up->no_proxy_env = false;
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, up);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, up);
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, UP_MAX_CONNECTS);
    return up;
}

void leo_upstream_close(struct leo_upstream *up)
{
    if (!up || up->closing)
        return;
    up->closing = true;
    while (up->xfers)
        leo_upstream_cancel(up->xfers);
    if (!up->defer && !up->busy)
        finish_close(up);
}

unsigned leo_upstream_active(const struct leo_upstream *up)
{
    return up->active;
}

uint64_t leo_upstream_io_events(const struct leo_upstream *up)
{
    return up->io_events;
}

static bool valid_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (*s <= ' ' || *s >= 127 || strchr("()<>@,;:\\\"/[]?={}", *s))
            return false;
    return true;
}

static bool valid_header(const struct leo_http_header *h)
{
    if (h->name.len == 0)
        return false;
    for (size_t i = 0; i < h->name.len; i++) {
        char c = h->name.p[i];
        if (c <= ' ' || c >= 127 || c == ':')
            return false;
    }
    for (size_t i = 0; i < h->value.len; i++) {
        char c = h->value.p[i];
        if (c == '\r' || c == '\n' || c == '\0')
            return false;
    }
    return true;
}

/* A full URL parse costs more than the rest of starting a transfer; a worker sends almost every request to a
 * handful of URLs, so the last URL accepted is remembered and a repeat skips the parse. */
static bool valid_url(struct leo_upstream *up, const char *url)
{
    size_t len = strlen(url);
    if (up->valid_url && len == up->valid_url_len && memcmp(url, up->valid_url, len) == 0)
        return true;
    CURLU *u = curl_url();
    if (!u)
        return false;
    char *scheme = NULL;
    bool ok = curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
              (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0);
    curl_free(scheme);
    curl_url_cleanup(u);
    if (ok) {
        leo_free((char *)up->valid_url);
        up->valid_url = leo_strndup(url, len);
        up->valid_url_len = len;
    }
    return ok;
}

/* Request headers as curl wants them. The body is framed by the module (Content-Length from body_len), so the
 * caller's Content-Length and Transfer-Encoding are not forwarded. "Expect:" stops curl's 100-continue
 * round trip; "Content-Type:" stops curl inventing a form type for a body the caller did not label.
 * curl_slist_append would allocate twice per header; struct curl_slist is public and curl only reads the list
 * it is given, so the nodes and their strings are laid out in one allocation instead, released with leo_free
 * (never with curl_slist_free_all). Never NULL. */
static struct curl_slist *build_headers(const struct leo_upstream_request *req, bool has_body)
{
    static const char expect[] = "Expect:", no_type[] = "Content-Type:";
    size_t nodes = 2, bytes = sizeof(expect) + sizeof(no_type);
    bool has_type = false;
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct leo_http_header *h = &req->headers[i];
        nodes++;
        bytes += h->name.len + 2 + h->value.len + 1;
    }
    struct curl_slist *list = leo_malloc(nodes * sizeof(*list) + bytes);
    char *text = (char *)(list + nodes);
    size_t n = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct leo_http_header *h = &req->headers[i];
        if (leo_str_caseeq(h->name, "content-length") || leo_str_caseeq(h->name, "transfer-encoding"))
            continue;
        if (leo_str_caseeq(h->name, "content-type"))
            has_type = true;
        list[n].data = text;
        memcpy(text, h->name.p, h->name.len);
        text += h->name.len;
        if (h->value.len) {
            *text++ = ':';
            *text++ = ' ';
            memcpy(text, h->value.p, h->value.len);
            text += h->value.len;
        } else {
            *text++ = ';'; /* curl's spelling of a header with an empty value */
        }
        *text++ = '\0';
        n++;
    }
    list[n].data = text;
    memcpy(text, expect, sizeof(expect));
    text += sizeof(expect);
    n++;
    if (has_body && !has_type) {
        list[n].data = text;
        memcpy(text, no_type, sizeof(no_type));
        n++;
    }
    for (size_t i = 0; i < n; i++)
        list[i].next = i + 1 < n ? &list[i + 1] : NULL;
    return list;
}

#define SET(opt, val)                                                                                                  \
    do {                                                                                                               \
        if (rc == CURLE_OK)                                                                                            \
            rc = curl_easy_setopt(e, opt, val);                                                                        \
    } while (0)

/* The options every transfer of this client shares: set once per pooled handle. */
static CURLcode setup_easy_once(struct leo_upstream *up, CURL *e)
{
    CURLcode rc = CURLE_OK;
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TCP_NODELAY, 1L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TCP_KEEPIDLE, 30L);
    SET(CURLOPT_TCP_KEEPINTVL, 15L);
    SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    SET(CURLOPT_HEADERFUNCTION, on_curl_header);
    SET(CURLOPT_WRITEFUNCTION, on_curl_write);
    SET(CURLOPT_PREREQFUNCTION, on_curl_prereq);
    if (up->no_proxy_env) {
        /* without this curl reads up to six environment variables for every transfer (it looks for a proxy
         * before it looks for a pooled connection); the answer cannot change, so it is given once */
        SET(CURLOPT_PROXY, "");
        SET(CURLOPT_NOPROXY, "");
    }
    SET(CURLOPT_OPENSOCKETFUNCTION, on_curl_opensocket);
    SET(CURLOPT_OPENSOCKETDATA, up);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_curl_closesocket);
    SET(CURLOPT_CLOSESOCKETDATA, up);
    return rc;
}

/* Every option that differs between transfers, including the method's, which are reset explicitly because the
 * handle may come from a transfer with another method. */
static CURLcode setup_easy(struct leo_upstream_xfer *x, const struct leo_upstream_request *req, const char *method)
{
    CURL *e = x->easy;
    CURLcode rc = CURLE_OK;
    SET(CURLOPT_PRIVATE, (char *)x);
    SET(CURLOPT_URL, req->url);
    /* PIPEWAIT makes a transfer wait for a connection in progress rather than open a second one, hoping to
     * multiplex on it. Over TLS, ALPN settles that during the handshake. In cleartext curl learns that the
     * connection is HTTP/1.1 only from the first response's status line, so concurrent transfers to a plain
     * http:// upstream would queue behind the first request's time to first byte (seconds for a model). */
    SET(CURLOPT_PIPEWAIT, strncasecmp(req->url, "https:", 6) == 0 ? 1L : 0L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)x->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, (long)x->total_timeout_ms);
    SET(CURLOPT_HEADERDATA, x);
    SET(CURLOPT_WRITEDATA, x);
    SET(CURLOPT_PREREQDATA, x);
    SET(CURLOPT_HTTPHEADER, x->req_headers);
    SET(CURLOPT_CUSTOMREQUEST, (char *)NULL);
    SET(CURLOPT_NOBODY, 0L);
    if (x->body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len);
        SET(CURLOPT_POSTFIELDS, x->body);
        if (strcmp(method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, method);
    } else {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
        SET(CURLOPT_POSTFIELDS, (char *)NULL);
        SET(CURLOPT_HTTPGET, 1L);
        if (strcmp(method, "HEAD") == 0)
            SET(CURLOPT_NOBODY, 1L);
        else if (strcmp(method, "GET") != 0)
            SET(CURLOPT_CUSTOMREQUEST, method);
    }
    return rc;
}
#undef SET

struct leo_upstream_xfer *leo_upstream_start(struct leo_upstream *up, const struct leo_upstream_request *req,
                                             const struct leo_upstream_callbacks *cbs, void *ud)
{
    LEO_PROBE("upstream_start");
    if (!up || up->closing || !req || !req->url || !cbs || !cbs->on_headers || !cbs->on_data)
        return NULL;
    const char *method = req->method ? req->method : (req->body ? "POST" : "GET");
    if (!valid_token(method) || !valid_url(up, req->url))
        return NULL;
    for (size_t i = 0; i < req->nheaders; i++)
        if (!valid_header(&req->headers[i]))
            return NULL;

    struct leo_upstream_xfer *x = leo_new(struct leo_upstream_xfer);
    x->up = up;
    x->cbs = *cbs;
    x->ud = ud;
    x->connect_timeout_ms = req->connect_timeout_ms ? req->connect_timeout_ms : UP_DEFAULT_CONNECT_TIMEOUT_MS;
    x->first_byte_timeout_ms = req->first_byte_timeout_ms;
    x->total_timeout_ms = req->total_timeout_ms;
    leo_buf_init(&x->hdr, UP_MAX_HEADER_BYTES, 0);
    /* a POST always carries a body, if only an empty one */
    if (req->body || strcmp(method, "POST") == 0) {
        x->body = leo_malloc(req->body_len);
        if (req->body_len)
            memcpy(x->body, req->body, req->body_len);
        x->body_len = req->body_len;
    }
    x->req_headers = build_headers(req, x->body != NULL);
    x->easy = easy_get(up);
    if (!x->easy)
        goto fail_easy;
    if (setup_easy(x, req, method) != CURLE_OK)
        goto fail_setup;

    uv_timer_init(up->loop, &x->fb_timer);
    x->fb_timer.data = x;
    up->handles++;
    x->start_ns = uv_hrtime();
    if (up->defer) {
        /* curl is on the stack (we are inside on_headers/on_data): add once it has returned */
        x->state = XS_PENDING;
        up->pending_adds = true;
    } else {
        CURLMcode mc = curl_multi_add_handle(up->multi, x->easy);
        if (mc != CURLM_OK) {
            x->state = XS_PENDING; /* not in the multi handle: release must not remove it */
            xfer_release_curl(x);
            xfer_free(x);
            return NULL;
        }
        x->state = XS_RUNNING;
    }
    xfer_push(&up->xfers, x);
    up->active++;
    if (x->first_byte_timeout_ms)
        uv_timer_start(&x->fb_timer, on_first_byte_timeout, x->first_byte_timeout_ms, 0);
    return x;

fail_setup:
    easy_put(up, x->easy);
fail_easy:
    leo_free(x->req_headers);
    leo_free(x->body);
    leo_buf_release(&x->hdr);
    leo_free(x);
    return NULL;
}

void leo_upstream_cancel(struct leo_upstream_xfer *x)
{
    if (!x || x->canceled || x->state == XS_DONE || x->state == XS_ZOMBIE)
        return;
    struct leo_upstream *up = x->up;
    x->canceled = true;
    up->active--;
    uv_timer_stop(&x->fb_timer);
    xfer_unlink(&up->xfers, x);
    if (up->defer && x->state == XS_RUNNING) {
        /* curl is on the stack; our callbacks now refuse every byte and after_curl removes the handle */
        x->state = XS_ZOMBIE;
        xfer_push(&up->zombies, x);
        return;
    }
    xfer_release_curl(x);
    xfer_free(x);
}

void leo_upstream_pause(struct leo_upstream_xfer *x)
{
    if (!x || x->paused || x->canceled || x->state == XS_DONE)
        return;
    struct leo_upstream *up = x->up;
    x->paused = true;
    /* Inside a callback the write function answers CURL_WRITEFUNC_PAUSE for the next piece instead, so no
     * byte is delivered after this returns either way. */
    if (up->defer || x->state != XS_RUNNING)
        return;
    up->defer++;
    curl_easy_pause(x->easy, CURLPAUSE_RECV);
    up->defer--;
    after_curl(up);
}

void leo_upstream_resume(struct leo_upstream_xfer *x)
{
    if (!x || !x->paused || x->canceled || x->state == XS_DONE)
        return;
    struct leo_upstream *up = x->up;
    x->paused = false;
    if (x->state != XS_RUNNING)
        return;
    /* curl may hand over the bytes it held back right here, through on_curl_write */
    up->defer++;
    curl_easy_pause(x->easy, CURLPAUSE_CONT);
    up->defer--;
    deliver_data_end(up);
    after_curl(up);
}

void leo_upstream_on_data_end(struct leo_upstream_xfer *x, void (*cb)(struct leo_upstream_xfer *x, void *ud))
{
    if (x)
        x->on_data_end = cb;
}

enum leo_upstream_stage leo_upstream_stage(const struct leo_upstream_xfer *x)
{
    return stage_now(x);
}

double leo_upstream_ttfb_ms(const struct leo_upstream_xfer *x)
{
    return x->ttfb_ms;
}

int leo_upstream_http_version(const struct leo_upstream_xfer *x)
{
    return x->http_version;
}
