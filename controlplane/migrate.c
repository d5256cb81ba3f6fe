/*
 * migrate.c — applies the compiled-in migrations under an advisory lock.
 */
#include "migrate.h"

#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/alloc.h"
#include "db.h"

#define CHECKSUM_HEX (2 * crypto_hash_sha256_BYTES + 1)

static void checksum(const struct leo_migration *m, char out[CHECKSUM_HEX])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)m->sql, m->len);
    sodium_bin2hex(out, CHECKSUM_HEX, h, sizeof(h));
}

int leo_migrate_lock(PGconn *conn, char *err, size_t errlen)
{
    char key[32];
    snprintf(key, sizeof(key), "%lld", LEO_MIGRATE_LOCK_KEY);
    const char *params[] = {key};
    PGresult *r = leo_db_exec(conn, "SELECT pg_advisory_lock($1::bigint)", 1, params, err, errlen);
    if (r == NULL)
        return -1;
    PQclear(r);
    return 0;
}

int leo_migrate_unlock(PGconn *conn, char *err, size_t errlen)
{
    char key[32];
    snprintf(key, sizeof(key), "%lld", LEO_MIGRATE_LOCK_KEY);
    const char *params[] = {key};
    PGresult *r = leo_db_exec(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, params, err, errlen);
    if (r == NULL)
        return -1;
    PQclear(r);
    return 0;
}

static const struct leo_migration *find(int version)
{
    for (size_t i = 0; i < leo_nmigrations; i++)
        if (leo_migrations[i].version == version)
            return &leo_migrations[i];
    return NULL;
}

/* Applies one migration and its record in one transaction. */
static int apply(PGconn *conn, const struct leo_migration *m, char *err, size_t errlen)
{
    char sum[CHECKSUM_HEX], version[16], why[512];
    checksum(m, sum);
    snprintf(version, sizeof(version), "%d", m->version);
    if (leo_db_exec_script(conn, "BEGIN", why, sizeof(why)) != 0)
        goto fail;
    /* the file is trusted text compiled into the binary, and may hold several statements */
    if (leo_db_exec_script(conn, m->sql, why, sizeof(why)) != 0)
        goto fail_rollback;
    const char *params[] = {version, m->name, sum};
    PGresult *r = leo_db_exec(conn, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", 3,
                              params, why, sizeof(why));
    if (r == NULL)
        goto fail_rollback;
    PQclear(r);
    if (leo_db_exec_script(conn, "COMMIT", why, sizeof(why)) != 0)
        goto fail_rollback;
    return 0;

fail_rollback:
    leo_db_exec_script(conn, "ROLLBACK", NULL, 0);
fail:
    snprintf(err, errlen, "migration %04d_%s failed: %s", m->version, m->name, why);
    return -1;
}

int leo_migrate_locked(PGconn *conn, int *applied, leo_migrate_progress_cb cb, void *ud, char *err, size_t errlen)
{
    char why[512];
    *applied = 0;
    if (leo_db_exec_script(conn,
                           "CREATE TABLE IF NOT EXISTS schema_migrations ("
                           " version integer PRIMARY KEY,"
                           " name text NOT NULL,"
                           " applied_at timestamptz NOT NULL DEFAULT now(),"
                           " checksum text NOT NULL)",
                           why, sizeof(why)) != 0) {
        snprintf(err, errlen, "cannot create schema_migrations: %s", why);
        return -1;
    }
    PGresult *r = leo_db_exec(conn, "SELECT version, checksum FROM schema_migrations ORDER BY version", 0, NULL, why,
                              sizeof(why));
    if (r == NULL) {
        snprintf(err, errlen, "cannot read schema_migrations: %s", why);
        return -1;
    }
    int n = PQntuples(r);
    bool *done = leo_calloc(leo_nmigrations ? leo_nmigrations : 1, sizeof(bool));
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        int version = (int)strtol(PQgetvalue(r, i, 0), NULL, 10);
        const struct leo_migration *m = find(version);
        if (m == NULL) {
            snprintf(err, errlen,
                     "the database has migration %04d applied, which this binary does not know: it is newer than "
                     "this binary",
                     version);
            rc = -1;
            break;
        }
        char sum[CHECKSUM_HEX];
        checksum(m, sum);
        if (strcmp(sum, PQgetvalue(r, i, 1)) != 0) {
            snprintf(err, errlen, "migration %04d_%s was changed after it was applied (checksum %s, recorded %.64s)",
                     m->version, m->name, sum, PQgetvalue(r, i, 1));
            rc = -1;
            break;
        }
        done[m - leo_migrations] = true;
    }
    PQclear(r);
    for (size_t i = 0; i < leo_nmigrations && rc == 0; i++) {
        if (done[i])
            continue;
        rc = apply(conn, &leo_migrations[i], err, errlen);
        if (rc == 0) {
            (*applied)++;
            if (cb)
                cb(&leo_migrations[i], ud);
        }
    }
    leo_free(done);
    return rc;
}

int leo_migrate(PGconn *conn, int *applied, leo_migrate_progress_cb cb, void *ud, char *err, size_t errlen)
{
    *applied = 0;
    if (leo_migrate_lock(conn, err, errlen) != 0)
        return -1;
    int rc = leo_migrate_locked(conn, applied, cb, ud, err, errlen);
    char why[256];
    if (leo_migrate_unlock(conn, why, sizeof(why)) != 0 && rc == 0) {
        snprintf(err, errlen, "cannot release the migration lock: %s", why);
        rc = -1;
    }
    return rc;
}
