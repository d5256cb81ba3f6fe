/*
 * audit.h — checking the audit log's hash chain (`leo-controlplane audit verify`).
 *
 * The chain itself is written by the database (migrations/0004_audit_log.sql): each row's
 *   hash = SHA-256(prev_hash || canonical), canonical = jsonb_build_array(id, at in microseconds since the
 *   epoch, actor, action, target, details)::text
 * and prev_hash is the previous row's hash (empty for the first row). Verification recomputes every hash
 * here, in C, from the stored fields, so an edited field, an edited hash or a removed row shows up as the
 * first row where the recomputation and the stored values disagree.
 *
 * Known limit: a chain without an external anchor cannot reveal that its newest rows were removed, or that
 * the whole chain was recomputed by someone with write access. The report prints the head hash so operators
 * can record it elsewhere and compare later.
 */
#ifndef LEO_CP_AUDIT_H
#define LEO_CP_AUDIT_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

struct leo_audit_report {
    uint64_t rows;     /* rows checked */
    char head[65];     /* hex hash of the last row ("" for an empty log) */
    int64_t bad_id;    /* id of the first row that does not verify, 0 when intact */
    char problem[160]; /* what is wrong with it */
};

/** Walks the whole log in id order (in pages, one query per 1000 rows). Returns 0 when the chain is intact,
 *  1 when it is broken (rep->bad_id and rep->problem say where and why), -1 when the database could not be
 *  read (err). */
int leo_audit_verify(PGconn *conn, struct leo_audit_report *rep, char *err, size_t errlen);

#endif
