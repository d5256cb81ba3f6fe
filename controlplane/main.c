/*
 * leo-controlplane — entry point: the subcommands (serve, migrate, create-owner, audit verify).
 *
 * The database comes from DATABASE_URL (a libpq connection string or URI) and nowhere else, so a password in
 * it never shows in the process list.
 */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <uv.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/http_server.h"
#include "../common/keyhash.h"
#include "../common/log.h"
#include "../common/secretbox.h"
#include "api.h"
#include "audit.h"
#include "auth.h"
#include "db.h"
#include "migrate.h"
#include "snapshot.h"
#include "usage.h"

#define LEO_VERSION "0.1.0"
#define DRAIN_TIMEOUT_MS 10000
#define DRAIN_POLL_MS 20

static const char *prog = "leo-controlplane";

static void usage(FILE *out)
{
    fprintf(out, "usage: leo-controlplane serve --listen HOST:PORT [--db-pool N] [--session-ttl SECONDS]\n"
                 "                              [--log-level LEVEL]\n"
                 "       leo-controlplane migrate\n"
                 "       leo-controlplane create-owner --email EMAIL\n"
                 "       leo-controlplane audit verify\n"
                 "       leo-controlplane rotate-master-key\n"
                 "\n"
                 "environment:\n"
                 "  DATABASE_URL                  PostgreSQL connection string or URI (required)\n"
                 "  LEO_KEY_HASH_SECRET           secret tenant API keys are hashed with (as for leo-gateway)\n"
                 "  LEO_REDIS_URL                 serve: Redis where the gateways' snapshot is published\n"
                 "                                and their usage events are read (docs/usage.md)\n"
                 "  LEO_USAGE_CONSUMER, LEO_USAGE_BATCH, LEO_USAGE_CLAIM_IDLE_MS, LEO_USAGE_RETENTION_DAYS\n"
                 "                                serve: the usage consumer's name, batch size, reclaim delay\n"
                 "                                and retention (docs/usage.md)\n"
                 "  LEO_BOOTSTRAP_OWNER_EMAIL     serve: create this owner at start when there is no user yet\n"
                 "  LEO_BOOTSTRAP_OWNER_PASSWORD  ... with this password\n"
                 "  LEO_OWNER_PASSWORD            create-owner: the password (else one line from stdin)\n"
                 "  LEO_MASTER_KEY[_FILE]         the master key provider credentials are sealed under\n"
                 "  LEO_MASTER_KEY_NEW[_FILE]     rotate-master-key: the key to re-seal every credential under\n"
                 "  LEO_MASTER_KEY_PREVIOUS[_FILE] a further key accepted for opening credentials\n");
}

static const char *database_url(void)
{
    const char *url = getenv("DATABASE_URL");
    if (url == NULL || url[0] == '\0') {
        fprintf(stderr,
                "%s: DATABASE_URL is not set (a libpq connection string, e.g. "
                "postgresql://user@host:5432/leo)\n",
                prog);
        return NULL;
    }
    return url;
}

static void print_applied(const struct leo_migration *m, void *ud)
{
    if (ud)
        printf("applied %04d_%s\n", m->version, m->name);
    else
        leo_info("applied migration %04d_%s", m->version, m->name);
}

/* ---- users created from the command line or the environment ---- */

/* Creates an owner: one statement, so the user, the membership and the audit entry commit together.
 * With only_if_empty, nothing happens when any user exists. Returns 1 when created, 0 when skipped, -1 on
 * error (err). */
static int create_owner(PGconn *pg, const char *email, struct leo_str password, const char *actor, bool only_if_empty,
                        char *err, size_t errlen)
{
    char hash[LEO_PASSWORD_HASH_MAX];
    if (leo_password_hash(password, hash) != 0) {
        snprintf(err, errlen, "cannot hash the password (out of memory?)");
        return -1;
    }
    const char *params[] = {email, hash, actor, only_if_empty ? "true" : "false"};
    PGresult *r =
        leo_db_exec(pg,
                    "WITH u AS (INSERT INTO users (email, password_hash) SELECT $1::text, $2::text"
                    " WHERE NOT $4::bool OR NOT EXISTS (SELECT 1 FROM users) RETURNING id, email),"
                    " m AS (INSERT INTO memberships (user_id, role) SELECT id, 'owner' FROM u),"
                    " a AS (INSERT INTO audit_log (actor, action, target, details) SELECT $3::text, 'user.create',"
                    " 'user:' || u.id, jsonb_build_object('email', u.email, 'role', 'owner', 'tenant_id', NULL) FROM u)"
                    " SELECT id FROM u",
                    4, params, err, errlen);
    sodium_memzero(hash, sizeof(hash));
    if (r == NULL) {
        if (strstr(err, "users_email_key"))
            snprintf(err, errlen, "a user with the email \"%s\" already exists", email);
        return -1;
    }
    int created = PQntuples(r) == 1;
    PQclear(r);
    return created;
}

static bool email_ok(const char *in, char *out, size_t size)
{
    size_t n = strlen(in);
    const char *at = strchr(in, '@');
    if (n < 3 || n >= size || at == NULL || at == in || at == in + n - 1 || strchr(at + 1, '@'))
        return false;
    for (size_t i = 0; i <= n; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (i < n && (ch <= 0x20 || ch == 0x7f))
            return false;
        out[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    return true;
}

/* ---- serve ---- */

struct daemon {
    uv_loop_t *loop;
    struct leo_http_server *http;
    struct leo_db *db;
    struct leo_api *api;
    struct leo_snapshot *snapshot; /* NULL without LEO_REDIS_URL */
    struct leo_usage_consumer *usage; /* NULL without LEO_REDIS_URL */
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    uint64_t drain_started;
    bool stopping, closing;
};

static void on_db_closed(void *ud)
{
    struct daemon *d = ud;
    d->db = NULL;
    uv_close((uv_handle_t *)&d->drain_timer, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
}

static void on_http_closed(void *ud)
{
    struct daemon *d = ud;
    d->http = NULL;
    /* requests still waiting for the database were aborted with the server; their queries are cancelled */
    leo_db_close(d->db, 1, on_db_closed, d);
}

static void close_all(struct daemon *d)
{
    if (d->closing)
        return;
    d->closing = true;
    uv_timer_stop(&d->drain_timer);
    if (d->snapshot) {
        leo_snapshot_close(d->snapshot, NULL, NULL);
        d->snapshot = NULL;
    }
    if (d->usage) {
        leo_usage_consumer_close(d->usage, NULL, NULL);
        d->usage = NULL;
    }
    leo_http_server_close(d->http, on_http_closed, d);
}

static void on_drain_timer(uv_timer_t *t)
{
    struct daemon *d = t->data;
    bool idle = leo_http_server_inflight(d->http) == 0 && leo_api_busy(d->api) == 0;
    if (idle || uv_now(d->loop) - d->drain_started >= DRAIN_TIMEOUT_MS) {
        if (!idle)
            leo_warn("drain timeout: closing with %u requests in flight", leo_http_server_inflight(d->http));
        close_all(d);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct daemon *d = s->data;
    if (d->stopping) {
        leo_warn("second signal: closing now");
        close_all(d);
        return;
    }
    d->stopping = true;
    leo_info("signal %d: draining", signum);
    leo_http_server_drain(d->http);
    d->drain_started = uv_now(d->loop);
    uv_timer_start(&d->drain_timer, on_drain_timer, 0, DRAIN_POLL_MS);
}

static int parse_listen(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s || (size_t)(colon - s) >= hostlen)
        return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || p < 0 || p > 65535)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return 0;
}

/* Migrations and the first owner, under the migration lock so that two daemons starting together neither
 * race on the schema nor both create an owner. */
static int prepare_database(const char *url)
{
    char err[1024];
    PGconn *pg = leo_db_connect_blocking(url, err, sizeof(err));
    if (pg == NULL) {
        leo_error("%s", err);
        return -1;
    }
    int rc = -1, applied = 0;
    if (leo_migrate_lock(pg, err, sizeof(err)) != 0) {
        leo_error("cannot take the migration lock: %s", err);
        goto done;
    }
    if (leo_migrate_locked(pg, &applied, print_applied, NULL, err, sizeof(err)) != 0) {
        leo_error("%s", err);
        goto unlock;
    }
    leo_info("database schema is up to date (%zu migrations, %d applied now)", leo_nmigrations, applied);

    const char *email = getenv("LEO_BOOTSTRAP_OWNER_EMAIL"), *password = getenv("LEO_BOOTSTRAP_OWNER_PASSWORD");
    bool have_email = email && email[0], have_password = password && password[0];
    if (have_email != have_password) {
        leo_error("LEO_BOOTSTRAP_OWNER_EMAIL and LEO_BOOTSTRAP_OWNER_PASSWORD must be set together");
        goto unlock;
    }
    if (have_email) {
        char normal[256];
        const char *why;
        if (!email_ok(email, normal, sizeof(normal))) {
            leo_error("LEO_BOOTSTRAP_OWNER_EMAIL is not an email address");
            goto unlock;
        }
        if (leo_password_policy(leo_str_c(password), &why) != 0) {
            leo_error("LEO_BOOTSTRAP_OWNER_PASSWORD %s", why);
            goto unlock;
        }
        int created = create_owner(pg, normal, leo_str_c(password), "system:bootstrap", true, err, sizeof(err));
        if (created < 0) {
            leo_error("cannot create the first owner: %s", err);
            goto unlock;
        }
        if (created)
            leo_info("created the first owner \"%s\" from LEO_BOOTSTRAP_OWNER_EMAIL", normal);
        else
            leo_info("users exist: LEO_BOOTSTRAP_OWNER_EMAIL is ignored");
    }
    rc = 0;
unlock:
    if (leo_migrate_unlock(pg, err, sizeof(err)) != 0 && rc == 0) {
        leo_error("cannot release the migration lock: %s", err);
        rc = -1;
    }
done:
    PQfinish(pg);
    return rc;
}

static int cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"db-pool", required_argument, NULL, 'p'},
        {"session-ttl", required_argument, NULL, 't'},
        {"log-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen = NULL;
    long pool = 4, ttl = 12 * 3600;
    int level = LEO_LOG_INFO, c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'l': listen = optarg; break;
        case 'p':
            pool = strtol(optarg, &end, 10);
            if (*end || pool < 1 || pool > 32) {
                fprintf(stderr, "%s: --db-pool must be a number from 1 to 32, got \"%s\"\n", prog, optarg);
                return 2;
            }
            break;
        case 't':
            ttl = strtol(optarg, &end, 10);
            if (*end || ttl < 60 || ttl > 30L * 24 * 3600) {
                fprintf(stderr, "%s: --session-ttl must be 60 to 2592000 seconds, got \"%s\"\n", prog, optarg);
                return 2;
            }
            break;
        case 'L':
            level = leo_log_level_parse(optarg);
            if (level < 0) {
                fprintf(stderr, "%s: --log-level must be debug, info, warn or error, got \"%s\"\n", prog, optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s serve: unexpected argument \"%s\"\n", prog, argv[optind]);
        return 2;
    }
    char host[128];
    int port;
    if (listen == NULL || parse_listen(listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "%s serve: --listen HOST:PORT is required (e.g. 127.0.0.1:8090), got \"%s\"\n", prog,
                listen ? listen : "");
        return 2;
    }
    const char *url = database_url();
    if (url == NULL)
        return 2;

    leo_log_setup((enum leo_log_level)level, "controlplane");
    struct leo_api_opts aopts = {0};
    if (leo_keyhash_secret_from_env("LEO_KEY_HASH_SECRET", aopts.key_hash_secret))
        leo_warn("LEO_KEY_HASH_SECRET is not set: tenant keys are hashed with the public development secret");
    if (prepare_database(url) != 0)
        return 1;

    struct daemon d = {0};
    d.loop = uv_default_loop();
    size_t nstmts;
    const struct leo_db_stmt *stmts = leo_api_statements(&nstmts);
    struct leo_db_opts dopts = {.conninfo = url, .size = (unsigned)pool, .stmts = stmts, .nstmts = nstmts};
    d.db = leo_db_new(d.loop, &dopts);
    aopts.loop = d.loop;
    aopts.db = d.db;
    aopts.session_ttl_s = (unsigned)ttl;
    d.api = leo_api_new(&aopts);
    sodium_memzero(aopts.key_hash_secret, sizeof(aopts.key_hash_secret));
    const char *redis_url = getenv("LEO_REDIS_URL");
    if (redis_url && redis_url[0]) {
        struct leo_buf rerr = LEO_BUF_INIT;
        if (leo_snapshot_start(d.loop, url, redis_url, &d.snapshot, &rerr) != 0)
            leo_error("LEO_REDIS_URL: %s; gateways will not receive snapshots", rerr.p);
        leo_buf_release(&rerr);
        struct leo_usage_consumer_opts uopts = {.conninfo = url, .redis_url = redis_url};
        leo_usage_consumer_metrics_describe();
        if (leo_usage_consumer_opts_env(&uopts, &rerr) != 0 ||
            leo_usage_consumer_start(d.loop, &uopts, &d.usage, &rerr) != 0)
            leo_error("usage consumer: %s; usage events are not consumed", rerr.p);
        leo_buf_release(&rerr);
    } else {
        leo_warn("LEO_REDIS_URL is not set: tenants and keys are not published to gateways");
    }

    struct leo_http_server_opts hopts = {0};
    leo_http_limits_default(&hopts.limits);
    hopts.limits.max_body_bytes = 1024 * 1024;
    hopts.handler = leo_api_handle;
    hopts.error_body = leo_api_error_body;
    hopts.ud = d.api;
    hopts.server_header = "leo-controlplane";
    d.http = leo_http_server_new(d.loop, &hopts);
    int rc = leo_http_server_listen(d.http, host, port, false);
    if (rc != 0) {
        leo_error("cannot listen on %s: %s", listen, leo_strerror(rc));
        d.stopping = true;
        uv_timer_init(d.loop, &d.drain_timer);
        uv_signal_init(d.loop, &d.sigterm);
        uv_signal_init(d.loop, &d.sigint);
        close_all(&d);
        uv_run(d.loop, UV_RUN_DEFAULT);
        leo_api_free(d.api);
        uv_loop_close(d.loop);
        return 1;
    }
    uv_timer_init(d.loop, &d.drain_timer);
    d.drain_timer.data = &d;
    uv_signal_init(d.loop, &d.sigterm);
    uv_signal_init(d.loop, &d.sigint);
    d.sigterm.data = d.sigint.data = &d;
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    leo_info("listening on %s:%d", host, leo_http_server_port(d.http));

    uv_run(d.loop, UV_RUN_DEFAULT);
    leo_api_free(d.api);
    rc = uv_loop_close(d.loop);
    if (rc != 0)
        leo_warn("event loop closed with handles open: %s", uv_strerror(rc));
    leo_info("stopped");
    return 0;
}

/* ---- migrate, create-owner, audit verify ---- */

static int cmd_migrate(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "%s migrate: unexpected argument \"%s\"\n", prog, argv[1]);
        return 2;
    }
    const char *url = database_url();
    if (url == NULL)
        return 2;
    char err[1024];
    PGconn *pg = leo_db_connect_blocking(url, err, sizeof(err));
    if (pg == NULL) {
        fprintf(stderr, "%s migrate: %s\n", prog, err);
        return 1;
    }
    int applied = 0;
    int rc = leo_migrate(pg, &applied, print_applied, (void *)1, err, sizeof(err));
    PQfinish(pg);
    if (rc != 0) {
        fprintf(stderr, "%s migrate: %s\n", prog, err);
        return 1;
    }
    if (applied == 0)
        printf("nothing to apply: the schema is up to date (%zu migrations)\n", leo_nmigrations);
    else
        printf("applied %d migration%s; the schema is up to date (%zu migrations)\n", applied, applied == 1 ? "" : "s",
               leo_nmigrations);
    return 0;
}

/* One line from stdin (prompting without echo on a terminal); 0 or -1. */
static int read_password(char *buf, size_t size, size_t *len)
{
    bool tty = isatty(STDIN_FILENO);
    struct termios old, quiet;
    if (tty) {
        fprintf(stderr, "password: ");
        if (tcgetattr(STDIN_FILENO, &old) == 0) {
            quiet = old;
            quiet.c_lflag &= ~(tcflag_t)ECHO;
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
        } else {
            tty = false;
        }
    }
    char *got = fgets(buf, (int)size, stdin);
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
        fputc('\n', stderr);
    }
    if (got == NULL)
        return -1;
    size_t n = strlen(buf);
    if (n == size - 1 && buf[n - 1] != '\n')
        return -1;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    *len = n;
    return 0;
}

static int cmd_create_owner(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"email", required_argument, NULL, 'e'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    const char *email = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "e:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'e': email = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    char normal[256];
    if (email == NULL || optind < argc || !email_ok(email, normal, sizeof(normal))) {
        fprintf(stderr, "%s create-owner: --email EMAIL is required and must be an email address\n", prog);
        return 2;
    }
    const char *url = database_url();
    if (url == NULL)
        return 2;

    char pwbuf[LEO_PASSWORD_MAX + 2];
    size_t pwlen;
    const char *env = getenv("LEO_OWNER_PASSWORD");
    if (env && env[0]) {
        pwlen = strlen(env);
        if (pwlen > LEO_PASSWORD_MAX) {
            fprintf(stderr, "%s create-owner: LEO_OWNER_PASSWORD must be at most %d bytes long\n", prog,
                    LEO_PASSWORD_MAX);
            return 2;
        }
        memcpy(pwbuf, env, pwlen + 1);
    } else if (read_password(pwbuf, sizeof(pwbuf), &pwlen) != 0) {
        fprintf(stderr, "%s create-owner: no password: set LEO_OWNER_PASSWORD or give one line on stdin\n", prog);
        return 2;
    }
    const char *why;
    if (leo_password_policy(leo_str_n(pwbuf, pwlen), &why) != 0) {
        sodium_memzero(pwbuf, sizeof(pwbuf));
        fprintf(stderr, "%s create-owner: the password %s\n", prog, why);
        return 2;
    }

    char err[1024];
    int rc = 1, applied;
    PGconn *pg = leo_db_connect_blocking(url, err, sizeof(err));
    if (pg == NULL) {
        fprintf(stderr, "%s create-owner: %s\n", prog, err);
        goto done;
    }
    if (leo_migrate(pg, &applied, print_applied, (void *)1, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s create-owner: %s\n", prog, err);
        goto done;
    }
    if (create_owner(pg, normal, leo_str_n(pwbuf, pwlen), "cli:create-owner", false, err, sizeof(err)) != 1) {
        fprintf(stderr, "%s create-owner: %s\n", prog, err);
        goto done;
    }
    printf("created owner %s\n", normal);
    rc = 0;
done:
    sodium_memzero(pwbuf, sizeof(pwbuf));
    if (pg)
        PQfinish(pg);
    return rc;
}

static int cmd_audit(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "verify") != 0) {
        fprintf(stderr, "usage: %s audit verify\n", prog);
        return 2;
    }
    const char *url = database_url();
    if (url == NULL)
        return 2;
    char err[1024];
    PGconn *pg = leo_db_connect_blocking(url, err, sizeof(err));
    if (pg == NULL) {
        fprintf(stderr, "%s audit verify: %s\n", prog, err);
        return 1;
    }
    struct leo_audit_report rep;
    int rc = leo_audit_verify(pg, &rep, err, sizeof(err));
    PQfinish(pg);
    if (rc < 0) {
        fprintf(stderr, "%s audit verify: cannot read the audit log: %s\n", prog, err);
        return 1;
    }
    if (rc > 0) {
        printf("audit log BROKEN at row %lld: %s (%llu rows before it verified)\n", (long long)rep.bad_id, rep.problem,
               (unsigned long long)rep.rows);
        return 1;
    }
    printf("audit log intact: %llu rows, head %s\n", (unsigned long long)rep.rows, rep.head[0] ? rep.head : "(empty)");
    return 0;
}

/* ---- master key rotation ---- */

/* Opens every credential with the keys it may be sealed under (LEO_MASTER_KEY, _PREVIOUS, _NEW) and seals it
 * again under LEO_MASTER_KEY_NEW, in one transaction whose rows are locked from the read to the write: either
 * every credential moves to the new key or none does. The gateways accept both keys while the change spreads
 * (docs/controlplane.md, "Rotating the master key"). */
static int rotate_credentials(PGconn *pg, const struct leo_secretbox_ring *ring, const struct leo_secretbox_key *newk,
                              long *count, char *err, size_t errlen)
{
    PGresult *res = leo_db_exec(pg, "BEGIN", 0, NULL, err, errlen);
    if (res == NULL)
        return -1;
    PQclear(res);
    int rc = -1;
    json_t *rows = json_array(), *from = json_array();
    res = leo_db_exec(pg, "SELECT id::text, sealed, key_id FROM provider_credentials ORDER BY id FOR UPDATE", 0, NULL,
                      err, errlen);
    if (res == NULL)
        goto rollback;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *id = PQgetvalue(res, i, 0), *kid = PQgetvalue(res, i, 2);
        struct leo_buf plain = LEO_BUF_INIT, sealed = LEO_BUF_INIT;
        const char *why = NULL;
        if (leo_secretbox_open(ring, leo_str_c(PQgetvalue(res, i, 1)), leo_str_c(id), &plain, &why) != 0) {
            snprintf(err, errlen, "credential %s (sealed under %s) cannot be opened: %s; nothing was changed", id, kid,
                     why);
            leo_secretbox_wipe(&plain);
            PQclear(res);
            goto rollback;
        }
        leo_secretbox_seal(newk, leo_buf_str(&plain), leo_str_c(id), &sealed);
        leo_secretbox_wipe(&plain);
        json_array_append_new(rows, json_pack("{s:s,s:s}", "id", id, "sealed", sealed.p));
        leo_buf_release(&sealed);
        bool seen = false;
        size_t j;
        json_t *v;
        json_array_foreach(from, j, v)
        {
            seen = seen || strcmp(json_string_value(v), kid) == 0;
        }
        if (!seen)
            json_array_append_new(from, json_string(kid));
    }
    PQclear(res);
    char *rows_text = json_dumps(rows, JSON_COMPACT), *from_text = json_dumps(from, JSON_COMPACT);
    const char *params[] = {rows_text, newk->id, from_text};
    /* one statement: the credentials and the audit entry change together */
    res = leo_db_exec(pg,
                      "WITH u AS (UPDATE provider_credentials c SET sealed = v.sealed, key_id = $2::text,"
                      " updated_at = now() FROM jsonb_to_recordset($1::jsonb) AS v(id uuid, sealed text)"
                      " WHERE c.id = v.id RETURNING c.id),"
                      " a AS (INSERT INTO audit_log (actor, action, target, details)"
                      " SELECT 'cli:rotate-master-key', 'master_key.rotate', 'master_key:' || $2::text,"
                      " jsonb_build_object('credentials', (SELECT count(*) FROM u), 'from', $3::jsonb))"
                      " SELECT count(*) FROM u",
                      3, params, err, errlen);
    free(rows_text);
    free(from_text);
    if (res == NULL)
        goto rollback;
    *count = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    res = leo_db_exec(pg, "COMMIT", 0, NULL, err, errlen);
    if (res == NULL)
        goto done;
    PQclear(res);
    rc = 0;
    goto done;
rollback:
    PQclear(PQexec(pg, "ROLLBACK"));
done:
    json_decref(rows);
    json_decref(from);
    return rc;
}

static int cmd_rotate_master_key(int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s rotate-master-key   (keys from LEO_MASTER_KEY and LEO_MASTER_KEY_NEW)\n", prog);
        return 2;
    }
    const char *url = database_url();
    if (url == NULL)
        return 2;
    struct leo_buf kerr = LEO_BUF_INIT;
    struct leo_secretbox_key newk;
    struct leo_secretbox_ring ring;
    int krc = leo_secretbox_key_from_env("LEO_MASTER_KEY_NEW", &newk, &kerr);
    if (krc == LEO_ENOTFOUND) {
        fprintf(stderr, "%s rotate-master-key: LEO_MASTER_KEY_NEW (or LEO_MASTER_KEY_NEW_FILE) is not set\n", prog);
        return 2;
    }
    if (krc == 0)
        krc = leo_secretbox_ring_from_env(&ring, &kerr);
    if (krc != 0) {
        fprintf(stderr, "%s rotate-master-key: %s\n", prog, kerr.p);
        leo_buf_release(&kerr);
        return 1;
    }
    leo_buf_release(&kerr);
    if (ring.nkeys == 0) {
        fprintf(stderr, "%s rotate-master-key: LEO_MASTER_KEY (or LEO_MASTER_KEY_FILE), the current key, is not set\n",
                prog);
        return 2;
    }
    char err[1024];
    int rc = 1, applied = 0;
    long n = 0;
    PGconn *pg = leo_db_connect_blocking(url, err, sizeof(err));
    if (pg == NULL || leo_migrate(pg, &applied, print_applied, (void *)1, err, sizeof(err)) != 0 ||
        rotate_credentials(pg, &ring, &newk, &n, err, sizeof(err)) != 0)
        fprintf(stderr, "%s rotate-master-key: %s\n", prog, err);
    else {
        printf("re-encrypted %ld credentials under master key %s\n", n, newk.id);
        rc = 0;
    }
    if (pg)
        PQfinish(pg);
    leo_secretbox_ring_clear(&ring);
    sodium_memzero(&newk, sizeof(newk));
    return rc;
}

int main(int argc, char **argv)
{
    leo_keyhash_init(); /* sodium_init */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(argc - 1, argv + 1);
    if (strcmp(cmd, "create-owner") == 0)
        return cmd_create_owner(argc - 1, argv + 1);
    if (strcmp(cmd, "audit") == 0)
        return cmd_audit(argc - 1, argv + 1);
    if (strcmp(cmd, "rotate-master-key") == 0)
        return cmd_rotate_master_key(argc - 1, argv + 1);
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("leo-controlplane %s\n", LEO_VERSION);
        return 0;
    }
    fprintf(stderr, "%s: unknown command \"%s\"\n", prog, cmd);
    usage(stderr);
    return 2;
}
