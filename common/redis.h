/*
 * redis.h — one asynchronous Redis connection on a libuv loop (hiredis 0.14 underneath).
 *
 * A worker owns one struct leo_redis for its loop. The module connects in the background, keeps the
 * connection up (reconnecting with jittered exponential backoff after a loss), authenticates and selects the
 * database before any caller's command can be sent, bounds every command with a timeout, and never queues
 * work while disconnected: callers apply their own fail-open or fail-closed policy at once.
 *
 * Invariants:
 * - Every command accepted (a call that returned 0) gets exactly one callback: err 0 with the server's reply
 *   (error replies included), or LEO_ETIMEOUT, LEO_ECLOSED or LEO_ECANCELED with a NULL reply.
 * - A call that fails (a negative return) never calls back, as everywhere in the project.
 * - Commands run and are answered in the order they were sent (Redis pipelines them on the one connection),
 *   except that a script resent as EVAL after NOSCRIPT (leo_redis_eval) runs after what was sent meanwhile.
 * - Callbacks run on the loop thread, never from inside the call that submitted the command.
 * - The password is never logged and never appears in an error message.
 * - Not thread-safe: every function must be called from the loop's thread.
 *
 * The connection is shared by every caller of the worker. Commands that would change it for the others are
 * refused (subscriptions, MONITOR, AUTH, SELECT, HELLO, RESET, QUIT, CLIENT REPLY); subscriptions need a
 * connection of their own. A transaction (MULTI ... EXEC) must be submitted in one go, without returning to
 * the loop in between, or other callers' commands would land inside it; prefer a script. Blocking commands
 * (BLPOP, XREAD BLOCK) hold up every command behind them and trip the stall check.
 *
 * Writing to a socket the server has reset raises SIGPIPE; leo_redis_new sets SIGPIPE to SIG_IGN when it
 * still has its default action (the gateway ignores it anyway).
 */
#ifndef LEO_REDIS_H
#define LEO_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "buf.h"

struct leo_redis;

/** Where a server is and how to log in, as parsed from a URL. Every string is owned by the struct and
 *  released by leo_redis_url_release; unset strings are NULL. */
struct leo_redis_url {
    char *host;     /* TCP: host name or address (an IPv6 address without its brackets); NULL for unix */
    int port;       /* TCP: 1..65535, default 6379; 0 for unix */
    char *path;     /* unix: the socket's path; NULL for TCP */
    char *username; /* ACL user (Redis 6+), or NULL for the default user */
    char *password; /* NULL when the URL has none; a secret */
    int db;         /* database number, default 0 */
};

/**
 * Parses a Redis URL:
 *   redis://[[username]:password@]host[:port][/db]      host may be a name, an IPv4 or a [bracketed] IPv6
 *   unix://[[username]:password@]/path/to/socket[?db=N]
 * Username and password are percent-decoded. rediss:// (TLS) is refused: hiredis 0.14 has no TLS, so a
 * TLS-only server is reached through a local tunnel (docs/redis.md).
 * Returns 0 and fills *out (release it with leo_redis_url_release), or LEO_ECONFIG with *out zeroed and a
 * message appended to err (may be NULL) that never contains the password.
 */
int leo_redis_parse_url(const char *url, struct leo_redis_url *out, struct leo_buf *err);

/** Frees the strings of a parsed URL (the password is wiped first) and zeroes it. Idempotent. */
void leo_redis_url_release(struct leo_redis_url *u);

/** Called when the connection becomes ready (connected true: commands are accepted from now on) and when a
 *  ready connection is lost (connected false; commands fail synchronously until the next ready). Failed
 *  attempts in between do not call it. */
typedef void (*leo_redis_state_cb)(struct leo_redis *r, bool connected, void *ud);

struct leo_redis_opts {
    const char *url;             /* required: see leo_redis_parse_url; copied */
    const char *password;        /* NULL: the URL's password, if any; otherwise overrides it; copied */
    uint64_t connect_timeout_ms; /* name lookup + connect + AUTH/SELECT/PING; 0: 2000 */
    uint64_t command_timeout_ms; /* from sending a command to its reply; 0: 1000 */
    uint64_t stall_timeout_ms;   /* a connection whose oldest unanswered command (timed out or not) has
                                    waited this long is dropped and replaced; 0: the larger of 2000 and
                                    10 * command_timeout_ms */
    uint64_t reconnect_min_ms;   /* first delay after a loss or failed attempt; 0: 100 */
    uint64_t reconnect_max_ms;   /* the backoff's ceiling (raised to reconnect_min_ms if lower); 0: 5000 */
    size_t max_pending;          /* commands held at once, late-answered timed-out ones included; past it
                                    submissions fail with LEO_ETOOBIG; 0: 100000 */
    leo_redis_state_cb on_state; /* optional */
    void *ud;                    /* passed to on_state */
};

/**
 * Creates the connection object and starts connecting in the background (host names are resolved on
 * libuv's thread pool, so the loop never blocks on DNS). Returns 0 and sets *out, or LEO_ECONFIG (bad URL or
 * options; a message is appended to err, which may be NULL). Commands are refused with LEO_ECLOSED until the
 * connection is ready: watch opts->on_state or leo_redis_connected.
 * The object lives until leo_redis_close's callback.
 */
int leo_redis_new(uv_loop_t *loop, const struct leo_redis_opts *opts, struct leo_redis **out, struct leo_buf *err);

/**
 * Called exactly once per accepted command.
 * err 0: reply is the server's answer, possibly an error reply (reply->type == REDIS_REPLY_ERROR); it is owned
 *        by the module and valid only during the call.
 * LEO_ETIMEOUT: no answer within command_timeout_ms (the connection stays up; the late answer is discarded).
 * LEO_ECLOSED: the connection was lost before the answer came; the command may or may not have run.
 * LEO_ECANCELED: leo_redis_close was called first; the command may or may not have run.
 * The callback may submit new commands or call leo_redis_close.
 */
typedef void (*leo_redis_cb)(struct leo_redis *r, int err, redisReply *reply, void *ud);

/**
 * Sends one command: argc arguments, each argv[i] of argvlen[i] bytes (binary-safe), or NUL-terminated when
 * argvlen is NULL. The arguments are copied before the call returns.
 * Returns 0 (cb will be called once), or, without calling cb:
 *   LEO_ECLOSED   not connected (still connecting, reconnecting, or the server is unreachable);
 *   LEO_ECANCELED leo_redis_close was called;
 *   LEO_ETOOBIG   max_pending commands are already held;
 *   LEO_EINVAL    argc < 1, cb NULL, or a refused command (see the top of this file).
 */
int leo_redis_command_argv(struct leo_redis *r, leo_redis_cb cb, void *ud, int argc, const char **argv,
                           const size_t *argvlen);

/** A Lua script known by its SHA-1. Define it statically and keep it alive while calls that use it are in
 *  flight; sha is filled in by leo_redis_script_init or by the first leo_redis_eval. */
struct leo_redis_script {
    const char *source;
    char sha[41]; /* lowercase hex SHA-1 of source, NUL-terminated; "" until computed */
};

/** Sets s->source and computes s->sha. */
void leo_redis_script_init(struct leo_redis_script *s, const char *source);

/**
 * Runs a script: EVALSHA sha nkeys argv..., where the first nkeys of the argc arguments are keys. When the
 * server answers NOSCRIPT (it restarted, or SCRIPT FLUSH ran) the module sends EVAL with the source instead,
 * which also caches it on the server; the caller sees one callback either way, bounded by one command
 * timeout overall. Script errors arrive as error replies with err 0. Returns and fails like
 * leo_redis_command_argv, plus LEO_EINVAL when nkeys is outside 0..argc or s->source is NULL.
 */
int leo_redis_eval(struct leo_redis *r, struct leo_redis_script *s, leo_redis_cb cb, void *ud, int nkeys, int argc,
                   const char **argv, const size_t *argvlen);

/** True when commands are accepted: connected, authenticated, database selected, and not closing. */
bool leo_redis_connected(const struct leo_redis *r);

/** Counters of one object, for status pages and tests. */
struct leo_redis_stats {
    uint64_t connects;         /* times the connection became ready */
    uint64_t connect_failures; /* attempts that failed (lookup, connect, handshake, or connect timeout) */
    uint64_t disconnects;      /* ready connections lost */
    uint64_t timeouts;         /* commands that ended with LEO_ETIMEOUT */
    uint64_t script_reloads;   /* EVALSHA answered NOSCRIPT and was resent as EVAL */
    size_t pending;            /* commands held by the connection, including timed-out ones not yet answered */
};

/** Fills *out. */
void leo_redis_stats(const struct leo_redis *r, struct leo_redis_stats *out);

/**
 * Closes: commands in flight get LEO_ECANCELED (during this call, or right after the hiredis callback that
 * called it returns), the connection and its timers close, and cb(ud) (may be NULL) runs from the loop once
 * everything is released; the object is freed just before. Until then, submissions fail with
 * LEO_ECANCELED. Call once.
 */
void leo_redis_close(struct leo_redis *r, void (*cb)(void *ud), void *ud);

/**
 * Declares the module's metric families (common/metrics.h); the gateway calls it before forking:
 *   leo_redis_commands_total{result="ok|error|timeout|closed|canceled|unavailable"}  counter
 *       ("error" is an error reply; "unavailable" a submission refused because not connected)
 *   leo_redis_command_duration_seconds   histogram of answered commands (ok and error)
 *   leo_redis_reconnects_total           counter: ready again after a lost connection
 *   leo_redis_connect_failures_total     counter
 *   leo_redis_connected                  gauge: ready connections (one per healthy worker)
 */
void leo_redis_metrics_describe(void);

#endif
