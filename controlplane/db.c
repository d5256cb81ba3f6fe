/*
 * db.c — libpq in non-blocking mode on a libuv loop.
 *
 * Each connection is a small state machine: DOWN → CONNECTING (PQconnectPoll) → SETUP (session settings)
 * → IDLE ⇄ PREPARE → QUERY. A uv_poll_t watches PQsocket(). While connecting, libpq may close its socket
 * and open another one that gets the same descriptor number (when it falls back from one address or
 * protocol to the next); an epoll registration does not survive that, and libuv would not notice the change
 * of file behind the same number. So during CONNECTING the poll handle is closed and made anew after every
 * PQconnectPoll step. Once connected the socket is stable and the handle stays.
 *
 * Callbacks into the user (query results) are always made last in a code path, after the connection's state
 * is consistent, because a callback may submit the next query at once and find this connection idle.
 */
#include "db.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "../common/alloc.h"
#include "../common/buf.h"
#include "../common/error.h"
#include "../common/log.h"

#define CONNECT_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define APPLICATION_NAME "leo-controlplane"

enum conn_state { C_DOWN, C_CONNECTING, C_SETUP, C_IDLE, C_PREPARE, C_QUERY };

struct query {
    struct query *next;
    size_t stmt;
    int nparams;
    const char **params;
    leo_db_cb cb;
    void *ud;
    int fail_err;                    /* for queries failed from the idle callback ... */
    char fail_why[160];              /* ... and why, for the log */
    _Alignas(void *) char storage[]; /* the parameter pointers, then the parameter strings */
};

struct conn {
    struct leo_db *db;
    unsigned index;
    PGconn *pg;
    uv_poll_t *poll; /* NULL when none; freed in its close callback */
    int poll_events;
    uv_timer_t timer; /* connect timeout while CONNECTING, reconnect delay while DOWN */
    enum conn_state state;
    bool flushing, connected, timer_closed;
    unsigned char *prepared; /* one flag per statement */
    struct query *q;         /* the query running on this connection */
    PGresult *result;        /* the result being collected */
    uint64_t backoff_ms;
};

struct leo_db {
    uv_loop_t *loop;
    char *conninfo;
    unsigned size, queue_max, statement_timeout_ms;
    const struct leo_db_stmt *stmts;
    size_t nstmts;
    struct conn *conns;
    struct query *head, *tail; /* waiting */
    size_t nqueued;
    struct query *fail_head, *fail_tail; /* failed without a connection, reported from the idle callback */
    uv_idle_t idle;
    unsigned nconnected;
    unsigned handles_open;
    bool closing, abort, freed;
    void (*close_cb)(void *ud);
    void *close_ud;
};

static void conn_connect(struct conn *c);
static void conn_failed(struct conn *c, const char *why);
static void dispatch(struct leo_db *db);
static void db_maybe_free(struct leo_db *db);

/* ---- queries ---- */

static struct query *query_new(size_t stmt, const char *const *params, int nparams, leo_db_cb cb, void *ud)
{
    size_t bytes = (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
        if (params[i])
            bytes += strlen(params[i]) + 1;
    struct query *q = leo_malloc(sizeof(*q) + bytes);
    memset(q, 0, sizeof(*q));
    q->stmt = stmt;
    q->nparams = nparams;
    q->cb = cb;
    q->ud = ud;
    q->params = (const char **)(void *)q->storage;
    char *at = q->storage + (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++) {
        if (params[i] == NULL) {
            q->params[i] = NULL;
            continue;
        }
        size_t n = strlen(params[i]) + 1;
        memcpy(at, params[i], n);
        q->params[i] = at;
        at += n;
    }
    return q;
}

/* Reports a result to the query's owner and frees the query and the result. */
static void query_finish(struct query *q, PGresult *res, int err, const char *why)
{
    struct leo_db_result r = {res, err, "", why ? why : "", ""};
    if (res && err == 0) {
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            r.err = LEO_EUPSTREAM;
            const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            const char *k = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
            r.sqlstate = s ? s : "";
            r.message = m ? m : PQresStatus(st);
            r.constraint = k ? k : "";
        }
    }
    if (r.err && r.message[0] == '\0')
        r.message = leo_strerror(r.err);
    q->cb(&r, q->ud);
    if (res)
        PQclear(res);
    leo_free(q);
}

static void on_idle(uv_idle_t *h)
{
    struct leo_db *db = h->data;
    struct query *list = db->fail_head;
    db->fail_head = db->fail_tail = NULL;
    uv_idle_stop(h);
    while (list) {
        struct query *q = list;
        list = q->next;
        query_finish(q, NULL, q->fail_err, q->fail_why);
    }
    db_maybe_free(db);
}

/* Fails a query from the idle callback, so no callback runs on the stack of a call into this module. */
static void query_fail_later(struct leo_db *db, struct query *q, int err, const char *why)
{
    snprintf(q->fail_why, sizeof(q->fail_why), "%s", why ? why : "");
    if (uv_is_closing((uv_handle_t *)&db->idle)) {
        /* only a query submitted after the pool finished closing gets here; nothing else can report it */
        query_finish(q, NULL, err, q->fail_why);
        return;
    }
    q->fail_err = err;
    q->next = NULL;
    if (db->fail_tail)
        db->fail_tail->next = q;
    else
        db->fail_head = q;
    db->fail_tail = q;
    uv_idle_start(&db->idle, on_idle);
}

static void fail_waiting(struct leo_db *db, int err)
{
    while (db->head) {
        struct query *q = db->head;
        db->head = q->next;
        query_fail_later(db, q, err, NULL);
    }
    db->tail = NULL;
    db->nqueued = 0;
}

/* True while some connection is opening or setting up (its outcome will come soon). */
static bool attempt_running(const struct leo_db *db)
{
    for (unsigned i = 0; i < db->size; i++)
        if (db->conns[i].state == C_CONNECTING || db->conns[i].state == C_SETUP)
            return true;
    return false;
}

void leo_db_query(struct leo_db *db, size_t stmt, const char *const *params, int nparams, leo_db_cb cb, void *ud)
{
    struct query *q = query_new(stmt, params, nparams, cb, ud);
    if (db->closing) {
        query_fail_later(db, q, LEO_ECANCELED, NULL);
        return;
    }
    if (stmt >= db->nstmts) {
        query_fail_later(db, q, LEO_EINVAL, NULL);
        return;
    }
    if (db->nqueued >= db->queue_max) {
        query_fail_later(db, q, LEO_ETOOBIG, NULL);
        return;
    }
    if (db->nconnected == 0 && !attempt_running(db)) {
        /* every connection is waiting to retry: the database is down, and the next attempt may be seconds away */
        query_fail_later(db, q, LEO_ECONNECT, "no database connection is up");
        return;
    }
    if (db->tail)
        db->tail->next = q;
    else
        db->head = q;
    db->tail = q;
    db->nqueued++;
    dispatch(db);
}

/* ---- the poll handle ---- */

static void on_handle_freed(uv_handle_t *h)
{
    struct leo_db *db = h->data;
    leo_free(h);
    db->handles_open--;
    db_maybe_free(db);
}

static void poll_close(struct conn *c)
{
    if (c->poll == NULL)
        return;
    c->poll->data = c->db;
    uv_close((uv_handle_t *)c->poll, on_handle_freed);
    c->poll = NULL;
    c->poll_events = 0;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches the socket for events; fresh makes a new handle even when one exists (see the top of the file). */
static int poll_set(struct conn *c, int events, bool fresh)
{
    if (fresh)
        poll_close(c);
    if (c->poll == NULL) {
        int fd = PQsocket(c->pg);
        if (fd < 0)
            return UV_EBADF;
        c->poll = leo_new(uv_poll_t);
        int rc = uv_poll_init(c->db->loop, c->poll, fd);
        if (rc) {
            leo_free(c->poll);
            c->poll = NULL;
            return rc;
        }
        c->poll->data = c;
        c->db->handles_open++;
    }
    if (events != c->poll_events) {
        int rc = uv_poll_start(c->poll, events, on_poll);
        if (rc)
            return rc;
        c->poll_events = events;
    }
    return 0;
}

/* Flushes libpq's output buffer; polls for writability while some of it is left. */
static int conn_flush(struct conn *c)
{
    int r = PQflush(c->pg);
    if (r < 0)
        return -1;
    c->flushing = r == 1;
    return poll_set(c, UV_READABLE | (c->flushing ? UV_WRITABLE : 0), false) ? -1 : 0;
}

/* ---- connections ---- */

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->state == C_CONNECTING)
        conn_failed(c, "connection attempt timed out");
    else if (c->state == C_DOWN && !c->db->closing)
        conn_connect(c);
}

static void conn_connect(struct conn *c)
{
    static const char *const keys[] = {"application_name", "dbname", NULL};
    const char *values[] = {APPLICATION_NAME, c->db->conninfo, NULL};
    c->pg = PQconnectStartParams(keys, values, 1);
    if (c->pg == NULL) {
        conn_failed(c, "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_failed(c, PQerrorMessage(c->pg));
        return;
    }
    c->state = C_CONNECTING;
    uv_timer_start(&c->timer, on_timer, CONNECT_TIMEOUT_MS, 0);
    /* before the first PQconnectPoll, libpq waits for the socket to become writable */
    if (poll_set(c, UV_WRITABLE, true) != 0)
        conn_failed(c, "cannot watch the database socket");
}

static void conn_send_setup(struct conn *c)
{
    char sql[200];
    snprintf(sql, sizeof(sql), "SET TimeZone = 'UTC'; SET client_min_messages = warning; SET statement_timeout = %u",
             c->db->statement_timeout_ms);
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQsendQuery(c->pg, sql) || conn_flush(c) != 0) {
        conn_failed(c, PQerrorMessage(c->pg));
        return;
    }
    c->state = C_SETUP;
}

static void conn_connect_step(struct conn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        if (poll_set(c, UV_READABLE, true) != 0)
            conn_failed(c, "cannot watch the database socket");
        return;
    case PGRES_POLLING_WRITING:
        if (poll_set(c, UV_WRITABLE, true) != 0)
            conn_failed(c, "cannot watch the database socket");
        return;
    case PGRES_POLLING_OK:
        uv_timer_stop(&c->timer);
        if (poll_set(c, UV_READABLE, true) != 0) {
            conn_failed(c, "cannot watch the database socket");
            return;
        }
        conn_send_setup(c);
        return;
    default: conn_failed(c, PQerrorMessage(c->pg)); return;
    }
}

/* Sends the running query (preparing its statement first when this connection has not yet). */
static void conn_send(struct conn *c)
{
    struct query *q = c->q;
    const struct leo_db_stmt *s = &c->db->stmts[q->stmt];
    int ok;
    if (!c->prepared[q->stmt]) {
        ok = PQsendPrepare(c->pg, s->name, s->sql, 0, NULL);
        c->state = C_PREPARE;
    } else {
        ok = PQsendQueryPrepared(c->pg, s->name, q->nparams, q->params, NULL, NULL, 0);
        c->state = C_QUERY;
    }
    if (!ok || conn_flush(c) != 0)
        conn_failed(c, PQerrorMessage(c->pg));
}

static void dispatch(struct leo_db *db)
{
    for (unsigned i = 0; i < db->size && db->head; i++) {
        struct conn *c = &db->conns[i];
        if (c->state != C_IDLE)
            continue;
        struct query *q = db->head;
        db->head = q->next;
        if (db->head == NULL)
            db->tail = NULL;
        db->nqueued--;
        q->next = NULL;
        c->q = q;
        conn_send(c);
    }
}

static void conn_close_now(struct conn *c)
{
    poll_close(c);
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    if (c->result) {
        PQclear(c->result);
        c->result = NULL;
    }
    if (c->connected) {
        c->connected = false;
        c->db->nconnected--;
    }
    c->state = C_DOWN;
    c->flushing = false;
    memset(c->prepared, 0, c->db->nstmts);
}

static void conn_failed(struct conn *c, const char *why)
{
    struct leo_db *db = c->db;
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", why && why[0] ? why : "connection lost");
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    bool was_connected = c->connected;
    struct query *q = c->q;
    c->q = NULL;
    conn_close_now(c);
    if (!db->closing) {
        leo_warn("database connection %u %s: %s", c->index, was_connected ? "lost" : "failed", msg);
        uv_timer_start(&c->timer, on_timer, c->backoff_ms, 0);
        c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
    }
    /* with nothing connected, waiting queries would wait for an unknown time: fail them now */
    if (db->nconnected == 0)
        fail_waiting(db, db->closing ? LEO_ECANCELED : LEO_ECONNECT);
    /* conn_failed may run inside leo_db_query (a send that fails at once): report from the idle callback */
    if (q)
        query_fail_later(db, q, db->closing ? LEO_ECANCELED : LEO_ECONNECT, msg);
    db_maybe_free(db);
}

/* The results of the current step are all in (PQgetResult returned NULL). */
static void conn_step_done(struct conn *c)
{
    struct leo_db *db = c->db;
    PGresult *res = c->result;
    c->result = NULL;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;

    switch (c->state) {
    case C_SETUP:
        if (!ok) {
            char why[256];
            snprintf(why, sizeof(why), "session setup failed: %s", res ? PQresultErrorMessage(res) : "no result");
            if (res)
                PQclear(res);
            conn_failed(c, why);
            return;
        }
        PQclear(res);
        c->state = C_IDLE;
        c->connected = true;
        c->backoff_ms = BACKOFF_MIN_MS;
        db->nconnected++;
        leo_debug("database connection %u ready", c->index);
        break;
    case C_PREPARE:
        if (ok) {
            PQclear(res);
            c->prepared[c->q->stmt] = 1;
            conn_send(c);
            return;
        }
        /* a statement that does not prepare is a bug in the statement table; its query fails */
        /* fall through */
    case C_QUERY: {
        struct query *q = c->q;
        c->q = NULL;
        c->state = C_IDLE;
        if (db->closing) {
            conn_close_now(c);
        }
        query_finish(q, res, 0, NULL);
        break;
    }
    default:
        if (res)
            PQclear(res);
        break;
    }
    if (!db->closing)
        dispatch(db);
    db_maybe_free(db);
}

static void conn_read(struct conn *c)
{
    if (!PQconsumeInput(c->pg)) {
        conn_failed(c, PQerrorMessage(c->pg));
        return;
    }
    for (PGnotify *n; (n = PQnotifies(c->pg)) != NULL;)
        PQfreemem(n);
    if (c->state == C_IDLE) {
        if (PQstatus(c->pg) == CONNECTION_BAD)
            conn_failed(c, PQerrorMessage(c->pg));
        return;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (r == NULL) {
            conn_step_done(c);
            return;
        }
        /* keep the first error, else the last result */
        if (c->result == NULL) {
            c->result = r;
        } else if (PQresultStatus(c->result) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(c->result);
            c->result = r;
        }
    }
    if (PQstatus(c->pg) == CONNECTION_BAD)
        conn_failed(c, PQerrorMessage(c->pg));
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct conn *c = h->data;
    if (status < 0) {
        conn_failed(c, uv_strerror(status));
        return;
    }
    if (c->state == C_CONNECTING) {
        conn_connect_step(c);
        return;
    }
    if (c->flushing && conn_flush(c) != 0) {
        conn_failed(c, PQerrorMessage(c->pg));
        return;
    }
    if (events & UV_READABLE)
        conn_read(c);
}

/* ---- the pool ---- */

struct leo_db *leo_db_new(uv_loop_t *loop, const struct leo_db_opts *opts)
{
    struct leo_db *db = leo_new(struct leo_db);
    db->loop = loop;
    db->conninfo = leo_strdup(opts->conninfo ? opts->conninfo : "");
    db->size = opts->size ? opts->size : 4;
    db->queue_max = opts->queue_max ? opts->queue_max : 1024;
    db->statement_timeout_ms = opts->statement_timeout_ms ? opts->statement_timeout_ms : 30000;
    db->stmts = opts->stmts;
    db->nstmts = opts->nstmts;
    uv_idle_init(loop, &db->idle);
    db->idle.data = db;
    db->handles_open = 1;
    db->conns = leo_calloc(db->size, sizeof(struct conn));
    for (unsigned i = 0; i < db->size; i++) {
        struct conn *c = &db->conns[i];
        c->db = db;
        c->index = i;
        c->backoff_ms = BACKOFF_MIN_MS;
        c->prepared = leo_calloc(db->nstmts ? db->nstmts : 1, 1);
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        db->handles_open++;
        conn_connect(c);
    }
    return db;
}

unsigned leo_db_connected(const struct leo_db *db)
{
    return db->nconnected;
}

static void on_fixed_handle_closed(uv_handle_t *h)
{
    struct leo_db *db = h->data;
    db->handles_open--;
    db_maybe_free(db);
}

static void db_maybe_free(struct leo_db *db)
{
    if (!db->closing || db->freed)
        return;
    for (unsigned i = 0; i < db->size; i++)
        if (db->conns[i].state != C_DOWN)
            return;
    if (db->fail_head)
        return;
    /* every connection is down: close the fixed handles, then free when the last one is gone */
    for (unsigned i = 0; i < db->size; i++) {
        struct conn *c = &db->conns[i];
        if (!c->timer_closed) {
            c->timer_closed = true;
            c->timer.data = db;
            uv_close((uv_handle_t *)&c->timer, on_fixed_handle_closed);
        }
    }
    if (!uv_is_closing((uv_handle_t *)&db->idle))
        uv_close((uv_handle_t *)&db->idle, on_fixed_handle_closed);
    if (db->handles_open)
        return;
    db->freed = true;
    void (*cb)(void *) = db->close_cb;
    void *ud = db->close_ud;
    for (unsigned i = 0; i < db->size; i++)
        leo_free(db->conns[i].prepared);
    leo_free(db->conns);
    leo_free(db->conninfo);
    leo_free(db);
    if (cb)
        cb(ud);
}

void leo_db_close(struct leo_db *db, int abort, void (*cb)(void *ud), void *ud)
{
    if (db->closing)
        return;
    db->closing = true;
    db->abort = abort;
    db->close_cb = cb;
    db->close_ud = ud;
    fail_waiting(db, LEO_ECANCELED);
    for (unsigned i = 0; i < db->size; i++) {
        struct conn *c = &db->conns[i];
        uv_timer_stop(&c->timer);
        if (c->state == C_QUERY || c->state == C_PREPARE) {
            if (!abort)
                continue; /* closed when its result is in */
            struct query *q = c->q;
            c->q = NULL;
            conn_close_now(c);
            query_fail_later(db, q, LEO_ECANCELED, NULL);
        } else {
            conn_close_now(c);
        }
    }
    db_maybe_free(db);
}

/* ---- blocking helpers ---- */

static void copy_error(char *err, size_t errlen, const char *what, const char *msg)
{
    if (err == NULL || errlen == 0)
        return;
    snprintf(err, errlen, "%s%s%s", what ? what : "", what && msg ? ": " : "", msg ? msg : "");
    size_t n = strlen(err);
    while (n && (err[n - 1] == '\n' || err[n - 1] == ' '))
        err[--n] = '\0';
}

PGconn *leo_db_connect_blocking(const char *conninfo, char *err, size_t errlen)
{
    static const char *const keys[] = {"application_name", "dbname", NULL};
    const char *values[] = {APPLICATION_NAME, conninfo, NULL};
    PGconn *pg = PQconnectdbParams(keys, values, 1);
    if (pg == NULL) {
        copy_error(err, errlen, "cannot connect to the database", "out of memory");
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        copy_error(err, errlen, "cannot connect to the database", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    if (leo_db_exec_script(pg, "SET TimeZone = 'UTC'; SET client_min_messages = warning", err, errlen) != 0) {
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

PGresult *leo_db_exec(PGconn *conn, const char *sql, int nparams, const char *const *params, char *err, size_t errlen)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    copy_error(err, errlen, NULL, res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
    if (res)
        PQclear(res);
    return NULL;
}

int leo_db_exec_script(PGconn *conn, const char *sql, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(res);
        return 0;
    }
    copy_error(err, errlen, NULL, res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
    if (res)
        PQclear(res);
    return -1;
}
