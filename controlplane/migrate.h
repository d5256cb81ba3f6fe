/*
 * migrate.h — versioned schema migrations.
 *
 * The SQL files of migrations/ (NNNN_name.sql, applied in version order) are compiled into the binary by the
 * build (migrations_data.c, generated), so a binary always carries exactly the schema it was written for.
 *
 * Invariants:
 * - Applied migrations are recorded in schema_migrations (version, name, applied_at, checksum = SHA-256 of
 *   the file, hex). Each pending migration runs in its own transaction together with its record, so it is
 *   applied completely or not at all.
 * - The whole run holds a session-level advisory lock: concurrent runs (two daemons starting at once, or two
 *   `migrate` commands) queue behind each other, and the later ones find nothing left to do.
 * - A recorded migration whose checksum differs from the compiled-in file, or a recorded version this
 *   binary does not know, is an error: the database and the binary disagree about the schema.
 */
#ifndef LEO_CP_MIGRATE_H
#define LEO_CP_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

struct leo_migration {
    int version;
    const char *name; /* the file name without the version and the ".sql" */
    const char *sql;
    size_t len;
};

/** The compiled-in migrations, in version order (generated from the .sql files of migrations/). */
extern const struct leo_migration leo_migrations[];
extern const size_t leo_nmigrations;

/** Called after each migration applied (for progress output); may be NULL. */
typedef void (*leo_migrate_progress_cb)(const struct leo_migration *m, void *ud);

/** The advisory lock key that serialises migration runs (and first-owner bootstrap). */
#define LEO_MIGRATE_LOCK_KEY 30510826535609200LL

/** Takes the advisory lock (waits for it); 0 or -1 with err set. */
int leo_migrate_lock(PGconn *conn, char *err, size_t errlen);
/** Releases it; 0 or -1 with err set. */
int leo_migrate_unlock(PGconn *conn, char *err, size_t errlen);

/** Applies the pending migrations on conn, which must hold the lock (leo_migrate_lock). *applied receives
 *  how many were applied. 0, or -1 with a lowercase message in err naming the migration that failed. */
int leo_migrate_locked(PGconn *conn, int *applied, leo_migrate_progress_cb cb, void *ud, char *err, size_t errlen);

/** Lock, apply, unlock. */
int leo_migrate(PGconn *conn, int *applied, leo_migrate_progress_cb cb, void *ud, char *err, size_t errlen);

#endif
