/*
 * redis.c — one asynchronous Redis connection on a libuv loop (see redis.h for the contract).
 *
 * Pieces:
 * - struct conn wraps one hiredis async context and the uv_poll_t that drives it. The module registers its
 *   own event hooks instead of hiredis's adapters/libuv.h, for two reasons: when the socket reports an error
 *   (a refused connect, a reset), libuv stops the poll handle and calls back with a negative status, which
 *   that adapter ignores, so the failure would only surface at the next timeout; and the cleanup hook, which
 *   hiredis calls exactly once whenever it frees a context (connect failure, I/O error, or our own
 *   redisAsyncFree), is the one reliable "this connection is gone" signal, which the adapter keeps to itself.
 * - struct cmd is the record of one command. hiredis holds it (as the reply callback's privdata) until it
 *   calls back, with the reply or, when the context is freed, with NULL. The caller's callback runs at most
 *   once, whichever comes first: the reply, the command's deadline, or the end of the connection. A record
 *   whose caller was already answered (timed out) stays alive, marked done, until hiredis lets go of it, so
 *   a late reply lands on valid memory and is dropped.
 * - Two intrusive lists on struct leo_redis: "held" (every record hiredis holds, oldest first, for the stall
 *   check and the pending count) and "waiting" (records whose callback has not run). Every command gets the
 *   same timeout and loop time never goes backwards, so "waiting" in submission order is also deadline order:
 *   one uv_timer armed for the head serves every command's timeout.
 * - The connection's life: WAITING (backoff) -> RESOLVING (uv_getaddrinfo, TCP only) -> CONNECTING (the
 *   socket connects while AUTH, SELECT and PING are already queued behind it) -> READY (the PING answered
 *   PONG) -> back to WAITING on any loss. CLOSING is final. One timer covers the connect timeout and the
 *   backoff, since the two never overlap.
 *
 * hiredis rules this file relies on (0.14): callbacks pending when a context is freed run with a NULL reply,
 * before the cleanup hook; redisAsyncFree called from inside a reply callback only flags the context and the
 * free happens when that callback returns; commands submitted to a context that is being freed are refused.
 *
 * Known limits: only the first address of a name is tried per attempt (attempts rotate through them); blocking
 * commands (BLPOP, XREAD BLOCK) hold up every command behind them on the shared connection.
 */
#include "redis.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <sodium.h>

#include "alloc.h"
#include "error.h"
#include "log.h"
#include "metrics.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_COMMAND_TIMEOUT_MS 1000
#define DEFAULT_RECONNECT_MIN_MS 100
#define DEFAULT_RECONNECT_MAX_MS 5000
#define DEFAULT_MAX_PENDING 100000
#define MIN_STALL_TIMEOUT_MS 2000
#define LOG_EVERY_NTH_FAILURE 10

/* ------------------------------------------------------------------------------------------------------------
 * URL parsing
 */

static int url_fail(struct leo_buf *err, const char *msg)
{
    if (err)
        leo_buf_addf(err, "redis url: %s", msg);
    return LEO_ECONFIG;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes [p, p+n) into a new string; NULL on a bad escape or an encoded NUL. */
static char *pct_decode(const char *p, size_t n)
{
    char *out = leo_malloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            out[j++] = p[i];
            continue;
        }
        if (n - i < 3 || hexval(p[i + 1]) < 0 || hexval(p[i + 2]) < 0 || (p[i + 1] == '0' && p[i + 2] == '0')) {
            sodium_memzero(out, n + 1);
            leo_free(out);
            return NULL;
        }
        out[j++] = (char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
        i += 2;
    }
    out[j] = '\0';
    return out;
}

/* A decimal in [min, max] spelled with digits only; -1 otherwise. */
static long parse_decimal(const char *p, size_t n, long min, long max)
{
    if (n == 0 || n > 10)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v < min || v > max ? -1 : v;
}

/* Splits "[username]:password" (or "username") into u->username / u->password. */
static int parse_userinfo(const char *p, size_t n, struct leo_redis_url *u, struct leo_buf *err)
{
    const char *colon = memchr(p, ':', n);
    size_t ulen = colon ? (size_t)(colon - p) : n;
    if (ulen > 0) {
        u->username = pct_decode(p, ulen);
        if (u->username == NULL)
            return url_fail(err, "bad percent-encoding in the username");
    }
    if (colon) {
        u->password = pct_decode(colon + 1, n - ulen - 1);
        if (u->password == NULL)
            return url_fail(err, "bad percent-encoding in the password");
        if (u->password[0] == '\0') {
            leo_free(u->password);
            u->password = NULL;
        }
    }
    return 0;
}

/* "db=N" is the only query parameter. */
static int parse_query(const char *p, size_t n, bool have_db, struct leo_redis_url *u, struct leo_buf *err)
{
    while (n > 0) {
        const char *amp = memchr(p, '&', n);
        size_t len = amp ? (size_t)(amp - p) : n;
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        if (klen == 2 && memcmp(p, "db", 2) == 0 && eq) {
            if (have_db)
                return url_fail(err, "the database is given twice");
            long db = parse_decimal(eq + 1, len - klen - 1, 0, 2147483647);
            if (db < 0)
                return url_fail(err, "db must be a number from 0 to 2147483647");
            u->db = (int)db;
            have_db = true;
        } else {
            /* Parameter names are not secret, but their values may be (password=...): name only. */
            if (err)
                leo_buf_addf(err, "redis url: unknown query parameter \"%.*s\" (only db=N is accepted)",
                             (int)(klen > 32 ? 32 : klen), p);
            return LEO_ECONFIG;
        }
        if (!amp)
            break;
        p = amp + 1;
        n -= len + 1;
    }
    return 0;
}

static int parse_tcp(const char *p, struct leo_redis_url *u, struct leo_buf *err)
{
    /* The user information ends at the last '@': passwords should percent-encode '@', but this way an
     * unencoded one still never leaks into what is parsed (and reported) as the host. */
    const char *at = strrchr(p, '@');
    if (at) {
        int rc = parse_userinfo(p, (size_t)(at - p), u, err);
        if (rc < 0)
            return rc;
        p = at + 1;
    }
    size_t hplen = strcspn(p, "/?#");
    if (p[hplen] == '#')
        return url_fail(err, "a fragment (#...) is not allowed");
    const char *host, *port = NULL;
    size_t hostlen, portlen = 0;
    if (hplen > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', hplen);
        if (!close)
            return url_fail(err, "an IPv6 address must be closed with ']'");
        host = p + 1;
        hostlen = (size_t)(close - p - 1);
        const char *rest = close + 1;
        if (rest < p + hplen) {
            if (*rest != ':')
                return url_fail(err, "expected ':port' after the IPv6 address");
            port = rest + 1;
            portlen = (size_t)(p + hplen - port);
        }
    } else {
        const char *colon = memchr(p, ':', hplen);
        host = p;
        hostlen = colon ? (size_t)(colon - p) : hplen;
        if (colon) {
            port = colon + 1;
            portlen = hplen - hostlen - 1;
            if (memchr(port, ':', portlen))
                return url_fail(err, "an IPv6 address must be written in brackets: redis://[::1]:6379");
        }
    }
    if (hostlen == 0)
        return url_fail(err, "the host is missing");
    u->port = 6379;
    if (port) {
        long v = parse_decimal(port, portlen, 1, 65535);
        if (v < 0)
            return url_fail(err, "the port must be a number from 1 to 65535");
        u->port = (int)v;
    }
    u->host = leo_strndup(host, hostlen);
    p += hplen;
    bool have_db = false;
    if (*p == '/') {
        p++;
        size_t dblen = strcspn(p, "?#");
        if (p[dblen] == '#')
            return url_fail(err, "a fragment (#...) is not allowed");
        if (dblen > 0) {
            long db = parse_decimal(p, dblen, 0, 2147483647);
            if (db < 0)
                return url_fail(err, "the path must be a database number from 0 to 2147483647");
            u->db = (int)db;
            have_db = true;
        }
        p += dblen;
    }
    if (*p == '?')
        return parse_query(p + 1, strlen(p + 1), have_db, u, err);
    return 0;
}

static int parse_unix(const char *p, struct leo_redis_url *u, struct leo_buf *err)
{
    if (*p != '/') {
        /* unix://[[username]:password@]/path: the credentials end at "@/". */
        const char *at = strstr(p, "@/");
        if (!at)
            return url_fail(err, "expected unix:///absolute/path/to/socket[?db=N]");
        int rc = parse_userinfo(p, (size_t)(at - p), u, err);
        if (rc < 0)
            return rc;
        p = at + 1;
    }
    size_t plen = strcspn(p, "?#");
    if (p[plen] == '#')
        return url_fail(err, "a fragment (#...) is not allowed");
    if (plen < 2)
        return url_fail(err, "the socket path is missing");
    if (plen >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return url_fail(err, "the socket path is longer than 107 bytes");
    u->path = leo_strndup(p, plen);
    p += plen;
    if (*p == '?')
        return parse_query(p + 1, strlen(p + 1), false, u, err);
    return 0;
}

int leo_redis_parse_url(const char *url, struct leo_redis_url *out, struct leo_buf *err)
{
    memset(out, 0, sizeof(*out));
    if (url == NULL || url[0] == '\0')
        return url_fail(err, "the url is empty");
    int rc;
    if (strncmp(url, "redis://", 8) == 0)
        rc = parse_tcp(url + 8, out, err);
    else if (strncmp(url, "unix://", 7) == 0)
        rc = parse_unix(url + 7, out, err);
    else if (strncmp(url, "rediss://", 9) == 0)
        rc = url_fail(err, "rediss:// (TLS) is not supported: hiredis 0.14 has no TLS; reach the server through a "
                           "local TLS tunnel (stunnel, ssh -L) and use redis://127.0.0.1:<port> (see docs/redis.md)");
    else
        rc = url_fail(err, "expected redis://[[user]:password@]host[:port][/db] or unix:///path/to/socket[?db=N]");
    if (rc < 0)
        leo_redis_url_release(out);
    return rc;
}

void leo_redis_url_release(struct leo_redis_url *u)
{
    if (u->password) {
        sodium_memzero(u->password, strlen(u->password));
        leo_free(u->password);
    }
    leo_free(u->host);
    leo_free(u->path);
    leo_free(u->username);
    memset(u, 0, sizeof(*u));
}

/* ------------------------------------------------------------------------------------------------------------
 * SHA-1 (FIPS 180-4), only to name scripts the way EVALSHA does.
 */

static uint32_t rol32(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1_hex(const char *data, size_t len, char out[41])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const uint8_t *p = (const uint8_t *)data;
    size_t n = len;
    for (; n >= 64; n -= 64, p += 64)
        sha1_block(h, p);
    /* The tail, a 0x80 byte, zeros, and the message length in bits (big-endian) fill one or two blocks. */
    uint8_t tail[128] = {0};
    if (n)
        memcpy(tail, p, n);
    tail[n] = 0x80;
    size_t tlen = n + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tlen - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, tail);
    if (tlen == 128)
        sha1_block(h, tail + 64);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 20; i++) {
        uint8_t byte = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
        out[2 * i] = hex[byte >> 4];
        out[2 * i + 1] = hex[byte & 15];
    }
    out[40] = '\0';
}

void leo_redis_script_init(struct leo_redis_script *s, const char *source)
{
    s->source = source;
    sha1_hex(source, strlen(source), s->sha);
}

/* ------------------------------------------------------------------------------------------------------------
 * The connection object
 */

enum state {
    ST_WAITING,    /* not connected; conn_timer runs the backoff */
    ST_RESOLVING,  /* uv_getaddrinfo in flight; conn_timer runs the connect timeout */
    ST_CONNECTING, /* hiredis context connecting or handshaking; conn_timer runs the connect timeout */
    ST_READY,      /* commands accepted */
    ST_CLOSING,    /* leo_redis_close was called */
};

struct conn {
    struct leo_redis *r;
    redisAsyncContext *ac; /* NULL once hiredis has started freeing it */
    uv_poll_t poll;
    int events; /* UV_READABLE | UV_WRITABLE as hiredis asked */
    bool lost;  /* conn_lost ran: the module no longer uses this connection */
};

struct cmd {
    struct cmd *prev, *next;   /* r->held */
    struct cmd *wprev, *wnext; /* r->waiting, while !done */
    struct leo_redis *r;
    leo_redis_cb cb;
    void *ud;
    uint64_t sent_ms;     /* loop time at submission */
    uint64_t deadline_ms; /* sent_ms + command timeout */
    uint64_t start_ns;    /* for the latency histogram */
    bool done;            /* the caller's callback ran */
    /* leo_redis_eval only: the command as sent (EVALSHA form), kept to resend it as EVAL */
    struct leo_redis_script *script;
    bool resent;
    int argc;
    const char **argv;
    size_t *argvlen;
};

struct cmd_list {
    struct cmd *head, *tail;
};

struct resolve {
    uv_getaddrinfo_t req;
    struct leo_redis *r;
    bool stale; /* the attempt it belonged to is over: drop the result */
};

struct leo_redis {
    uv_loop_t *loop;
    struct leo_redis_url url;
    char *label; /* the address for logs: never the credentials */
    uint64_t connect_timeout_ms, command_timeout_ms, stall_timeout_ms;
    uint64_t reconnect_min_ms, reconnect_max_ms;
    size_t max_pending;
    leo_redis_state_cb on_state;
    void *ud;

    enum state state;
    struct conn *conn;         /* the connection being established or in use; NULL otherwise */
    struct resolve *resolving; /* the current attempt's lookup, if any */
    unsigned failures;         /* consecutive failed attempts: backoff exponent and log throttle */
    unsigned addr_rotation;    /* which resolved address the next attempt uses */
    bool ever_ready;
    uint64_t rng;
    uv_timer_t conn_timer;
    uv_timer_t cmd_timer;
    uint64_t cmd_timer_due; /* loop time cmd_timer is set for, while active */
    struct cmd_list held, waiting;
    size_t nheld;
    unsigned live; /* timers, poll handles and lookups not yet released */
    void (*close_cb)(void *ud);
    void *close_ud;
    struct leo_redis_stats stats;
};

static void start_attempt(struct leo_redis *r);
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Commands that would change the connection's protocol or state under the other users of the connection:
 * subscriptions and MONITOR switch it to push mode; AUTH, SELECT, HELLO and RESET undo the handshake; QUIT
 * closes it. CLIENT REPLY (checked separately) would desynchronise replies from callbacks. */
static const char *const refused_commands[] = {"subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
                                               "punsubscribe", "sunsubscribe", "monitor",    "auth",
                                               "select",       "hello",        "reset",      "quit"};

static bool arg_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(p, name, n) == 0;
}

static bool is_refused(int argc, const char **argv, const size_t *argvlen)
{
    size_t n0 = argvlen ? argvlen[0] : strlen(argv[0]);
    for (size_t i = 0; i < sizeof(refused_commands) / sizeof(refused_commands[0]); i++)
        if (arg_is(argv[0], n0, refused_commands[i]))
            return true;
    if (argc >= 2 && arg_is(argv[0], n0, "client"))
        return arg_is(argv[1], argvlen ? argvlen[1] : strlen(argv[1]), "reply");
    return false;
}

static uint64_t next_random(struct leo_redis *r)
{
    /* xorshift64*: jitter only, nothing secret. */
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * 0x2545F4914F6CDD1DULL;
}

/* The delay before the next attempt: reconnect_min doubled per consecutive failure up to reconnect_max, then
 * drawn uniformly from its upper half so workers that lost Redis together do not reconnect in lockstep. */
static uint64_t backoff_ms(struct leo_redis *r)
{
    uint64_t d = r->reconnect_min_ms;
    for (unsigned i = 1; i < r->failures && d < r->reconnect_max_ms; i++)
        d *= 2;
    if (d > r->reconnect_max_ms)
        d = r->reconnect_max_ms;
    uint64_t half = d / 2;
    return half + next_random(r) % (d - half + 1);
}

static void maybe_finish_close(struct leo_redis *r)
{
    if (r->state != ST_CLOSING || r->live > 0)
        return;
    void (*cb)(void *) = r->close_cb;
    void *ud = r->close_ud;
    leo_redis_url_release(&r->url);
    leo_free(r->label);
    leo_free(r);
    if (cb)
        cb(ud);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct leo_redis *r = h->data;
    r->live--;
    maybe_finish_close(r);
}

/* ---- command bookkeeping ---- */

static void held_unlink(struct leo_redis *r, struct cmd *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        r->held.head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->held.tail = c->prev;
    r->nheld--;
}

static void waiting_unlink(struct leo_redis *r, struct cmd *c)
{
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        r->waiting.head = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
    else
        r->waiting.tail = c->wprev;
}

static const char *result_label(int err, const redisReply *reply)
{
    switch (err) {
    case 0: return reply->type == REDIS_REPLY_ERROR ? "result=\"error\"" : "result=\"ok\"";
    case LEO_ETIMEOUT: return "result=\"timeout\"";
    case LEO_ECANCELED: return "result=\"canceled\"";
    default: return "result=\"closed\"";
    }
}

/* Runs the caller's callback for c (once) and takes c off the waiting list. c must not be used afterwards by
 * the code that called this, except to free it when hiredis has already let go of it. */
static void complete(struct leo_redis *r, struct cmd *c, int err, redisReply *reply)
{
    waiting_unlink(r, c);
    c->done = true;
    leo_metrics_add("leo_redis_commands_total", result_label(err, reply), 1);
    if (err == 0)
        leo_metrics_observe("leo_redis_command_duration_seconds", "", (double)(uv_hrtime() - c->start_ns) / 1e9);
    else if (err == LEO_ETIMEOUT)
        r->stats.timeouts++;
    c->cb(r, err, reply, c->ud);
}

static void on_cmd_timer(uv_timer_t *t);

/* Arms cmd_timer for the earliest of the oldest waiting command's deadline and the stall check of the oldest
 * held one, unless it is already set for that time or earlier (an early wake-up just re-arms). */
static void cmd_timer_arm(struct leo_redis *r)
{
    uint64_t due = UINT64_MAX;
    if (r->waiting.head)
        due = r->waiting.head->deadline_ms;
    if (r->state == ST_READY && r->held.head && r->held.head->sent_ms + r->stall_timeout_ms < due)
        due = r->held.head->sent_ms + r->stall_timeout_ms;
    if (due == UINT64_MAX)
        return;
    if (uv_is_active((uv_handle_t *)&r->cmd_timer) && r->cmd_timer_due <= due)
        return;
    /* Never 0: libuv runs a timer restarted with 0 from its own callback again in the same pass, so a due
     * time that is already past would spin. */
    uint64_t now = uv_now(r->loop);
    uv_timer_start(&r->cmd_timer, on_cmd_timer, due > now ? due - now : 1, 0);
    r->cmd_timer_due = due;
}

static void track(struct leo_redis *r, struct cmd *c)
{
    uint64_t now = uv_now(r->loop);
    c->r = r;
    c->sent_ms = now;
    c->deadline_ms = now + r->command_timeout_ms;
    c->start_ns = uv_hrtime();
    c->prev = r->held.tail;
    if (r->held.tail)
        r->held.tail->next = c;
    else
        r->held.head = c;
    r->held.tail = c;
    r->nheld++;
    c->wprev = r->waiting.tail;
    if (r->waiting.tail)
        r->waiting.tail->wnext = c;
    else
        r->waiting.head = c;
    r->waiting.tail = c;
    cmd_timer_arm(r);
}

/* ---- connection state ---- */

static void conn_timer_start(struct leo_redis *r, uv_timer_cb cb, uint64_t ms)
{
    uv_timer_start(&r->conn_timer, cb, ms, 0);
}

static void on_backoff_done(uv_timer_t *t)
{
    start_attempt(t->data);
}

/* An attempt failed before the connection became ready: count it, log it (the first failure of a streak and
 * then every LOG_EVERY_NTH_FAILURE-th, so an unreachable server does not flood the log), and wait. */
static void attempt_failed(struct leo_redis *r, const char *reason)
{
    r->failures++;
    r->addr_rotation++;
    r->stats.connect_failures++;
    leo_metrics_add("leo_redis_connect_failures_total", "", 1);
    uint64_t delay = backoff_ms(r);
    if (r->failures == 1 || r->failures % LOG_EVERY_NTH_FAILURE == 0)
        leo_warn("redis: cannot connect to %s: %s (attempt %u; retrying in %" PRIu64 " ms)", r->label, reason,
                 r->failures, delay);
    r->state = ST_WAITING;
    conn_timer_start(r, on_backoff_done, delay);
}

/* The module stops using c: it failed, was lost, or is being dropped. Idempotent, and safe from inside
 * hiredis's free path (it only touches our own state). The caller frees the hiredis context if hiredis is
 * not already doing so. */
static void conn_lost(struct conn *c, const char *reason)
{
    if (c->lost)
        return;
    c->lost = true;
    struct leo_redis *r = c->r;
    if (r->conn != c)
        return;
    r->conn = NULL;
    if (r->state == ST_CLOSING)
        return;
    uv_timer_stop(&r->conn_timer);
    if (r->state != ST_READY) {
        attempt_failed(r, reason);
        return;
    }
    r->stats.disconnects++;
    leo_metrics_gauge_add("leo_redis_connected", "", -1);
    r->failures = 0;
    uint64_t delay = backoff_ms(r);
    leo_warn("redis: connection to %s lost: %s; reconnecting in %" PRIu64 " ms", r->label, reason, delay);
    r->state = ST_WAITING;
    conn_timer_start(r, on_backoff_done, delay);
    if (r->on_state)
        r->on_state(r, false, r->ud);
}

static const char *context_error(const redisAsyncContext *ac)
{
    if (ac && ac->err && ac->errstr && ac->errstr[0])
        return ac->errstr;
    if (ac && ac->c.err && ac->c.errstr[0])
        return ac->c.errstr;
    return "connection closed";
}

/* Drops the current connection on the module's own initiative (timeouts, handshake errors). */
static void conn_drop(struct conn *c, const char *reason)
{
    redisAsyncContext *ac = c->ac;
    conn_lost(c, reason);
    /* From inside a reply callback hiredis defers the free until the callback returns; otherwise the pending
     * callbacks (with NULL) and the cleanup hook run right here. */
    if (ac)
        redisAsyncFree(ac);
}

/* ---- hiredis event hooks ---- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct conn *c = h->data;
    /* A negative status means the socket reported an error and libuv stopped the handle; hiredis finds the
     * error itself when it reads or writes, and tears the context down. */
    if (status < 0)
        events = UV_READABLE | UV_WRITABLE;
    if ((events & UV_READABLE) && c->ac)
        redisAsyncHandleRead(c->ac);
    if ((events & UV_WRITABLE) && c->ac)
        redisAsyncHandleWrite(c->ac);
}

static void ev_update(struct conn *c)
{
    if (c->events)
        uv_poll_start(&c->poll, c->events, on_poll);
    else
        uv_poll_stop(&c->poll);
}

static void ev_add_read(void *p)
{
    struct conn *c = p;
    c->events |= UV_READABLE;
    ev_update(c);
}

static void ev_del_read(void *p)
{
    struct conn *c = p;
    c->events &= ~UV_READABLE;
    ev_update(c);
}

static void ev_add_write(void *p)
{
    struct conn *c = p;
    c->events |= UV_WRITABLE;
    ev_update(c);
}

static void ev_del_write(void *p)
{
    struct conn *c = p;
    c->events &= ~UV_WRITABLE;
    ev_update(c);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct leo_redis *r = c->r;
    leo_free(c);
    r->live--;
    maybe_finish_close(r);
}

/* hiredis is freeing the context: every pending callback has run. The socket is closed right after this
 * returns, so the poll handle is closed now. */
static void ev_cleanup(void *p)
{
    struct conn *c = p;
    const char *reason = context_error(c->ac);
    c->ac = NULL;
    conn_lost(c, reason);
    uv_close((uv_handle_t *)&c->poll, on_poll_closed);
}

/* ---- handshake ---- */

/* A handshake step was answered with something other than success. The server's message goes to the log
 * unless it happens to contain the password. */
static void handshake_failed(struct conn *c, const char *step, const redisReply *reply)
{
    struct leo_redis *r = c->r;
    char reason[200];
    const char *msg = "unexpected reply";
    if (reply->type == REDIS_REPLY_ERROR || reply->type == REDIS_REPLY_STATUS)
        msg = reply->str;
    if (r->url.password && strstr(msg, r->url.password))
        msg = "(server message withheld: it contains the password)";
    snprintf(reason, sizeof(reason), "%s failed: %.150s", step, msg);
    conn_drop(c, reason);
}

static bool reply_is_ok(const redisReply *reply, const char *status)
{
    return reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, status) == 0;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct conn *c = privdata;
    if (reply == NULL) {
        conn_lost(c, context_error(ac));
        return;
    }
    if (!c->lost && !reply_is_ok(reply, "OK"))
        handshake_failed(c, "AUTH", reply);
}

static void on_select(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct conn *c = privdata;
    if (reply == NULL) {
        conn_lost(c, context_error(ac));
        return;
    }
    if (!c->lost && !reply_is_ok(reply, "OK")) {
        char step[32];
        snprintf(step, sizeof(step), "SELECT %d", c->r->url.db);
        handshake_failed(c, step, reply);
    }
}

static void on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct conn *c = privdata;
    if (reply == NULL) {
        conn_lost(c, context_error(ac));
        return;
    }
    if (c->lost)
        return;
    if (!reply_is_ok(reply, "PONG")) {
        handshake_failed(c, "PING", reply);
        return;
    }
    struct leo_redis *r = c->r;
    uv_timer_stop(&r->conn_timer);
    r->state = ST_READY;
    r->failures = 0;
    r->stats.connects++;
    if (r->ever_ready)
        leo_metrics_add("leo_redis_reconnects_total", "", 1);
    r->ever_ready = true;
    leo_metrics_gauge_add("leo_redis_connected", "", 1);
    leo_info("redis: connected to %s", r->label);
    if (r->on_state)
        r->on_state(r, true, r->ud);
}

/* Queues the handshake behind the connect: hiredis writes it as soon as the socket is writable, and no
 * caller's command can be sent before the PING answers, so every caller's command runs authenticated and in
 * the right database. */
static int queue_handshake(struct leo_redis *r, struct conn *c)
{
    if (r->url.password) {
        const char *argv[3] = {"AUTH"};
        int argc = 1;
        if (r->url.username)
            argv[argc++] = r->url.username;
        argv[argc++] = r->url.password;
        if (redisAsyncCommandArgv(c->ac, on_auth, c, argc, argv, NULL) != REDIS_OK)
            return -1;
    }
    if (r->url.db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->url.db);
        const char *argv[2] = {"SELECT", db};
        if (redisAsyncCommandArgv(c->ac, on_select, c, 2, argv, NULL) != REDIS_OK)
            return -1;
    }
    const char *argv[1] = {"PING"};
    return redisAsyncCommandArgv(c->ac, on_ping, c, 1, argv, NULL) == REDIS_OK ? 0 : -1;
}

/* ---- attempts ---- */

static void connect_now(struct leo_redis *r, const char *ip)
{
    char reason[160];
    redisAsyncContext *ac = ip ? redisAsyncConnect(ip, r->url.port) : redisAsyncConnectUnix(r->url.path);
    if (ac == NULL) {
        attempt_failed(r, "hiredis could not allocate a context");
        return;
    }
    if (ac->err) {
        snprintf(reason, sizeof(reason), "%s", context_error(ac));
        redisAsyncFree(ac);
        attempt_failed(r, reason);
        return;
    }
    struct conn *c = leo_new(struct conn);
    c->r = r;
    c->ac = ac;
    int rc = uv_poll_init(r->loop, &c->poll, ac->c.fd);
    if (rc < 0) {
        leo_free(c);
        redisAsyncFree(ac);
        snprintf(reason, sizeof(reason), "uv_poll_init: %s", uv_strerror(rc));
        attempt_failed(r, reason);
        return;
    }
    c->poll.data = c;
    r->live++;
    ac->data = c;
    ac->ev.data = c;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    /* Keepalive finds a peer that vanished while the connection was idle; with commands in flight the stall
     * timeout is faster. Failing to set it is not worth failing the connection for. */
    if (ip && redisEnableKeepAlive(&ac->c) != REDIS_OK) {
        ac->c.err = 0;
        ac->c.errstr[0] = '\0';
    }
    r->conn = c;
    r->state = ST_CONNECTING;
    if (queue_handshake(r, c) < 0)
        conn_drop(c, "hiredis refused the handshake commands");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct resolve *rs = req->data;
    struct leo_redis *r = rs->r;
    bool stale = rs->stale;
    leo_free(rs);
    r->live--;
    if (stale) {
        uv_freeaddrinfo(res);
        maybe_finish_close(r);
        return;
    }
    r->resolving = NULL;
    char reason[160];
    if (status < 0) {
        snprintf(reason, sizeof(reason), "cannot resolve \"%s\": %s", r->url.host, uv_strerror(status));
        attempt_failed(r, reason);
        return;
    }
    unsigned n = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
            n++;
    char ip[64] = "";
    if (n > 0) {
        unsigned pick = r->addr_rotation % n;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                continue;
            if (pick-- == 0) {
                if (ai->ai_family == AF_INET)
                    uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof(ip));
                else
                    uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof(ip));
                break;
            }
        }
    }
    uv_freeaddrinfo(res);
    if (ip[0] == '\0') {
        snprintf(reason, sizeof(reason), "\"%s\" has no IPv4 or IPv6 address", r->url.host);
        attempt_failed(r, reason);
        return;
    }
    connect_now(r, ip);
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct leo_redis *r = t->data;
    char reason[96];
    snprintf(reason, sizeof(reason), "no ready connection within %" PRIu64 " ms", r->connect_timeout_ms);
    if (r->state == ST_RESOLVING && r->resolving) {
        r->resolving->stale = true;
        uv_cancel((uv_req_t *)&r->resolving->req);
        r->resolving = NULL;
        attempt_failed(r, reason);
    } else if (r->state == ST_CONNECTING && r->conn) {
        conn_drop(r->conn, reason);
    }
}

static void start_attempt(struct leo_redis *r)
{
    conn_timer_start(r, on_connect_timeout, r->connect_timeout_ms);
    if (r->url.path) {
        r->state = ST_CONNECTING;
        connect_now(r, NULL);
        return;
    }
    r->state = ST_RESOLVING;
    struct resolve *rs = leo_new(struct resolve);
    rs->r = r;
    rs->req.data = rs;
    char port[8];
    snprintf(port, sizeof(port), "%d", r->url.port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(r->loop, &rs->req, on_resolved, r->url.host, port, &hints);
    if (rc < 0) {
        leo_free(rs);
        char reason[128];
        snprintf(reason, sizeof(reason), "uv_getaddrinfo: %s", uv_strerror(rc));
        attempt_failed(r, reason);
        return;
    }
    r->resolving = rs;
    r->live++;
}

/* ---- commands ---- */

static void on_cmd_timer(uv_timer_t *t)
{
    struct leo_redis *r = t->data;
    uint64_t now = uv_now(r->loop);
    /* Callbacks may submit (appending behind the head) or close (emptying the list): re-read the head. */
    while (r->waiting.head && r->waiting.head->deadline_ms <= now && r->state != ST_CLOSING)
        complete(r, r->waiting.head, LEO_ETIMEOUT, NULL);
    if (r->state == ST_READY && r->held.head && r->held.head->sent_ms + r->stall_timeout_ms <= now) {
        char reason[96];
        snprintf(reason, sizeof(reason), "no reply for %" PRIu64 " ms", now - r->held.head->sent_ms);
        conn_drop(r->conn, reason);
    }
    if (r->state != ST_CLOSING)
        cmd_timer_arm(r);
}

static bool is_noscript(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && reply->len >= 8 && memcmp(reply->str, "NOSCRIPT", 8) == 0;
}

/* EVALSHA was answered NOSCRIPT: send the same call as EVAL with the source. The record stays held (hiredis
 * takes it again) and keeps its original deadline. */
static bool resend_as_eval(redisAsyncContext *ac, struct cmd *c)
{
    c->argv[0] = "EVAL";
    c->argvlen[0] = 4;
    c->argv[1] = c->script->source;
    c->argvlen[1] = strlen(c->script->source);
    if (redisAsyncCommandArgv(ac, on_reply, c, c->argc, c->argv, c->argvlen) != REDIS_OK)
        return false;
    c->resent = true;
    c->r->stats.script_reloads++;
    return true;
}

/* hiredis lets go of a record: with the reply, or with NULL when the context is being freed. */
static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    struct cmd *c = privdata;
    struct leo_redis *r = c->r;
    redisReply *reply = reply_;
    if (reply == NULL)
        conn_lost(ac->data, context_error(ac)); /* first, so callbacks see the module disconnected */
    else if (c->script && !c->resent && !c->done && is_noscript(reply) && resend_as_eval(ac, c))
        return;
    held_unlink(r, c);
    if (!c->done)
        complete(r, c, reply ? 0 : (r->state == ST_CLOSING ? LEO_ECANCELED : LEO_ECLOSED), reply);
    leo_free(c);
}

/* Whether a command may be sent now; counts refusals for lack of a connection. */
static int admit(struct leo_redis *r)
{
    if (r->state == ST_CLOSING)
        return LEO_ECANCELED;
    if (r->state != ST_READY) {
        leo_metrics_add("leo_redis_commands_total", "result=\"unavailable\"", 1);
        return LEO_ECLOSED;
    }
    if (r->nheld >= r->max_pending)
        return LEO_ETOOBIG;
    return 0;
}

int leo_redis_command_argv(struct leo_redis *r, leo_redis_cb cb, void *ud, int argc, const char **argv,
                           const size_t *argvlen)
{
    if (argc < 1 || argv == NULL || cb == NULL || is_refused(argc, argv, argvlen))
        return LEO_EINVAL;
    int rc = admit(r);
    if (rc < 0)
        return rc;
    struct cmd *c = leo_new(struct cmd);
    c->cb = cb;
    c->ud = ud;
    c->r = r;
    if (redisAsyncCommandArgv(r->conn->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        leo_free(c);
        return LEO_ECLOSED;
    }
    track(r, c);
    return 0;
}

int leo_redis_eval(struct leo_redis *r, struct leo_redis_script *s, leo_redis_cb cb, void *ud, int nkeys, int argc,
                   const char **argv, const size_t *argvlen)
{
    if (s == NULL || s->source == NULL || cb == NULL || argc < 0 || nkeys < 0 || nkeys > argc ||
        (argc > 0 && argv == NULL))
        return LEO_EINVAL;
    if (s->sha[0] == '\0')
        sha1_hex(s->source, strlen(s->source), s->sha);
    int rc = admit(r);
    if (rc < 0)
        return rc;
    /* One allocation: the record, the argument vectors, then the copied bytes (the numkeys text first). */
    int total = argc + 3;
    size_t bytes = 12;
    for (int i = 0; i < argc; i++)
        bytes += argvlen ? argvlen[i] : strlen(argv[i]);
    size_t head = sizeof(struct cmd) + (size_t)total * (sizeof(char *) + sizeof(size_t));
    struct cmd *c = leo_calloc(1, head + bytes);
    c->argv = (const char **)(c + 1);
    c->argvlen = (size_t *)(c->argv + total);
    char *p = (char *)(c->argvlen + total);
    c->argv[0] = "EVALSHA";
    c->argvlen[0] = 7;
    c->argv[1] = s->sha;
    c->argvlen[1] = 40;
    int n = snprintf(p, 12, "%d", nkeys);
    c->argv[2] = p;
    c->argvlen[2] = (size_t)n;
    p += 12;
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        if (len)
            memcpy(p, argv[i], len);
        c->argv[3 + i] = p;
        c->argvlen[3 + i] = len;
        p += len;
    }
    c->argc = total;
    c->script = s;
    c->cb = cb;
    c->ud = ud;
    c->r = r;
    if (redisAsyncCommandArgv(r->conn->ac, on_reply, c, total, c->argv, c->argvlen) != REDIS_OK) {
        leo_free(c);
        return LEO_ECLOSED;
    }
    track(r, c);
    return 0;
}

/* ---- lifecycle ---- */

static char *make_label(const struct leo_redis_url *u)
{
    struct leo_buf b = LEO_BUF_INIT;
    if (u->path)
        leo_buf_addf(&b, "unix:%s", u->path);
    else if (strchr(u->host, ':'))
        leo_buf_addf(&b, "[%s]:%d", u->host, u->port);
    else
        leo_buf_addf(&b, "%s:%d", u->host, u->port);
    leo_buf_addf(&b, " db %d", u->db);
    return leo_buf_detach(&b, NULL);
}

int leo_redis_new(uv_loop_t *loop, const struct leo_redis_opts *opts, struct leo_redis **out, struct leo_buf *err)
{
    *out = NULL;
    struct leo_redis_url url;
    int rc = leo_redis_parse_url(opts->url, &url, err);
    if (rc < 0)
        return rc;
    if (opts->password && opts->password[0]) {
        if (url.password) {
            sodium_memzero(url.password, strlen(url.password));
            leo_free(url.password);
        }
        url.password = leo_strdup(opts->password);
    }
    if (url.username && !url.password) {
        leo_redis_url_release(&url);
        if (err)
            leo_buf_adds(err, "redis url: a username needs a password");
        return LEO_ECONFIG;
    }

    /* Writing to a socket the server has reset raises SIGPIPE, whose default action ends the process. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    struct leo_redis *r = leo_new(struct leo_redis);
    r->loop = loop;
    r->url = url;
    r->label = make_label(&url);
    r->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    r->command_timeout_ms = opts->command_timeout_ms ? opts->command_timeout_ms : DEFAULT_COMMAND_TIMEOUT_MS;
    r->stall_timeout_ms = opts->stall_timeout_ms;
    if (r->stall_timeout_ms == 0) {
        r->stall_timeout_ms = 10 * r->command_timeout_ms;
        if (r->stall_timeout_ms < MIN_STALL_TIMEOUT_MS)
            r->stall_timeout_ms = MIN_STALL_TIMEOUT_MS;
    }
    r->reconnect_min_ms = opts->reconnect_min_ms ? opts->reconnect_min_ms : DEFAULT_RECONNECT_MIN_MS;
    r->reconnect_max_ms = opts->reconnect_max_ms ? opts->reconnect_max_ms : DEFAULT_RECONNECT_MAX_MS;
    if (r->reconnect_max_ms < r->reconnect_min_ms)
        r->reconnect_max_ms = r->reconnect_min_ms;
    r->max_pending = opts->max_pending ? opts->max_pending : DEFAULT_MAX_PENDING;
    r->on_state = opts->on_state;
    r->ud = opts->ud;
    r->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)r;
    if (r->rng == 0)
        r->rng = 0x9E3779B97F4A7C15ULL;
    uv_timer_init(loop, &r->conn_timer);
    uv_timer_init(loop, &r->cmd_timer);
    r->conn_timer.data = r;
    r->cmd_timer.data = r;
    r->live = 2;
    start_attempt(r);
    *out = r;
    return 0;
}

bool leo_redis_connected(const struct leo_redis *r)
{
    return r->state == ST_READY;
}

void leo_redis_stats(const struct leo_redis *r, struct leo_redis_stats *out)
{
    *out = r->stats;
    out->pending = r->nheld;
}

void leo_redis_close(struct leo_redis *r, void (*cb)(void *ud), void *ud)
{
    if (r->state == ST_READY)
        leo_metrics_gauge_add("leo_redis_connected", "", -1);
    r->state = ST_CLOSING;
    r->close_cb = cb;
    r->close_ud = ud;
    if (r->resolving) {
        r->resolving->stale = true;
        uv_cancel((uv_req_t *)&r->resolving->req);
        r->resolving = NULL;
    }
    uv_close((uv_handle_t *)&r->conn_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->cmd_timer, on_handle_closed);
    struct conn *c = r->conn;
    if (c) {
        c->lost = true;
        r->conn = NULL;
        /* Pending callbacks run with NULL now (or when the reply callback we are in returns): LEO_ECANCELED. */
        redisAsyncFree(c->ac);
    }
}

void leo_redis_metrics_describe(void)
{
    leo_metrics_describe("leo_redis_commands_total", LEO_METRIC_COUNTER,
                         "Redis commands by result: ok, error (an error reply), timeout, closed (connection lost), "
                         "canceled (shutdown), unavailable (refused while not connected).");
    leo_metrics_describe("leo_redis_command_duration_seconds", LEO_METRIC_HISTOGRAM,
                         "Time from sending a Redis command to its reply.");
    leo_metrics_describe("leo_redis_reconnects_total", LEO_METRIC_COUNTER,
                         "Redis connections ready again after a lost connection.");
    leo_metrics_describe("leo_redis_connect_failures_total", LEO_METRIC_COUNTER,
                         "Failed attempts to connect to Redis (lookup, connect, handshake or timeout).");
    leo_metrics_describe("leo_redis_connected", LEO_METRIC_GAUGE, "Ready Redis connections (one per worker).");
}
