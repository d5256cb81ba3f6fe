/*
 * db.h — PostgreSQL for the control plane: a small pool of non-blocking libpq connections driven by a libuv
 * loop, and blocking helpers for the command-line tools (migrate, create-owner, audit verify).
 *
 * Invariants:
 * - Every query is a prepared statement from the table given to leo_db_new(); parameters travel separately
 *   from the SQL text (text format), so no value a client sent is ever spliced into SQL.
 * - A statement is prepared on a connection the first time that connection runs it.
 * - Queries run in the order they were submitted when a connection is free; at most `queue_max` wait.
 *   Each query's callback fires exactly once (success, server error, lost connection or pool closing),
 *   never from inside leo_db_query() itself.
 * - Connections are opened without blocking (PQconnectStartParams + PQconnectPoll); a broken connection is
 *   reopened with a growing delay (100 ms up to 5 s). While no connection is up and none is being opened,
 *   queries fail at once with LEO_ECONNECT rather than wait for the next attempt; when the last attempt under
 *   way fails, the queries waiting for it fail too.
 * - Each new connection sets TimeZone to UTC (so JSON renders timestamps in UTC), client_min_messages to
 *   warning (no NOTICE chatter) and statement_timeout before it takes queries.
 */
#ifndef LEO_CP_DB_H
#define LEO_CP_DB_H

#include <libpq-fe.h>
#include <stddef.h>
#include <uv.h>

struct leo_db;

/** A statement known at build time. */
struct leo_db_stmt {
    const char *name; /* unique, used as the prepared statement's name */
    const char *sql;
};

/** What a query's callback receives. Valid only during the callback: res is cleared afterwards. */
struct leo_db_result {
    PGresult *res;          /* PGRES_TUPLES_OK or PGRES_COMMAND_OK when err == 0; otherwise may be NULL */
    int err;                /* 0; LEO_EUPSTREAM for an error the server reported (see sqlstate);
                               LEO_ECONNECT when the connection failed; LEO_ETOOBIG when the queue is full;
                               LEO_ECANCELED when the pool is closing */
    const char *sqlstate;   /* five characters for server errors ("23505"), "" otherwise */
    const char *message;    /* for logs: the server's primary message or what failed; never NULL */
    const char *constraint; /* the violated constraint's name for integrity errors, "" otherwise */
};

typedef void (*leo_db_cb)(const struct leo_db_result *r, void *ud);

struct leo_db_opts {
    const char *conninfo;            /* libpq connection string or URI */
    unsigned size;                   /* connections; default 4 */
    unsigned queue_max;              /* waiting queries; default 1024 */
    unsigned statement_timeout_ms;   /* default 30000 */
    const struct leo_db_stmt *stmts; /* the statement table; must outlive the pool */
    size_t nstmts;
};

/** Creates the pool and starts connecting. Never fails: connection problems surface in the queries. */
struct leo_db *leo_db_new(uv_loop_t *loop, const struct leo_db_opts *opts);
/** Runs statement stmt (an index into the table) with nparams text parameters (NULL for SQL NULL), copied
 *  before the call returns. cb fires later, once. */
void leo_db_query(struct leo_db *db, size_t stmt, const char *const *params, int nparams, leo_db_cb cb, void *ud);
/** Number of connections that are open and set up. */
unsigned leo_db_connected(const struct leo_db *db);
/** Fails waiting queries with LEO_ECANCELED, lets running ones finish (or fails them too when abort is set),
 *  closes the connections, frees the pool and then calls cb (may be NULL). */
void leo_db_close(struct leo_db *db, int abort, void (*cb)(void *ud), void *ud);

/* ---- blocking helpers (command-line tools and start-up only: they block the calling thread) ---- */

/** Connects and sets up the session like the pool does; NULL on failure with the reason in err. */
PGconn *leo_db_connect_blocking(const char *conninfo, char *err, size_t errlen);
/** PQexecParams with text parameters; returns the result (caller PQclears) or NULL after writing the error
 *  message (lowercase, without a trailing newline) to err. Accepts PGRES_COMMAND_OK and PGRES_TUPLES_OK. */
PGresult *leo_db_exec(PGconn *conn, const char *sql, int nparams, const char *const *params, char *err, size_t errlen);
/** PQexec of a script of several statements (trusted text such as a migration); 0 or -1 with err set. */
int leo_db_exec_script(PGconn *conn, const char *sql, char *err, size_t errlen);

#endif
