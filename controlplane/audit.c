/*
 * audit.c — recomputing the audit log's hash chain.
 */
#include "audit.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"

#define PAGE_ROWS 1000
#define STR_(x) #x
#define STR(x) STR_(x)
#define HASH_BYTES crypto_hash_sha256_BYTES

/* The canonical text must be the expression the trigger hashes (migrations/0004_audit_log.sql). */
static const char page_sql[] =
    "SELECT id, encode(prev_hash, 'hex'), encode(hash, 'hex'),"
    " jsonb_build_array(id, (extract(epoch FROM at) * 1000000)::bigint, actor, action, target, details)::text"
    " FROM audit_log WHERE id > $1::bigint ORDER BY id LIMIT " STR(PAGE_ROWS);

/* Decodes hex into out; the number of bytes, or -1 when it is not hex or too long. */
static int unhex(const char *hex, unsigned char *out, size_t max)
{
    size_t n = 0;
    if (sodium_hex2bin(out, max, hex, strlen(hex), NULL, &n, NULL) != 0)
        return -1;
    return (int)n;
}

int leo_audit_verify(PGconn *conn, struct leo_audit_report *rep, char *err, size_t errlen)
{
    memset(rep, 0, sizeof(*rep));
    unsigned char prev[HASH_BYTES];
    size_t prevlen = 0; /* the first row's prev_hash is empty */
    int64_t after = 0;
    for (;;) {
        char cursor[24];
        snprintf(cursor, sizeof(cursor), "%" PRId64, after);
        const char *params[] = {cursor};
        PGresult *r = leo_db_exec(conn, page_sql, 1, params, err, errlen);
        if (r == NULL)
            return -1;
        int n = PQntuples(r);
        for (int i = 0; i < n; i++) {
            int64_t id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
            unsigned char stored_prev[HASH_BYTES], stored[HASH_BYTES], computed[HASH_BYTES];
            int plen = unhex(PQgetvalue(r, i, 1), stored_prev, sizeof(stored_prev));
            int hlen = unhex(PQgetvalue(r, i, 2), stored, sizeof(stored));
            const char *canon = PQgetvalue(r, i, 3);
            const char *problem = NULL;
            if (plen < 0 || (size_t)plen != prevlen || (prevlen && sodium_memcmp(stored_prev, prev, prevlen) != 0)) {
                problem = rep->rows == 0 ? "prev_hash of the first row is not empty: rows before it were removed"
                                         : "prev_hash does not match the previous row's hash: a row before it was "
                                           "removed or changed";
            } else {
                crypto_hash_sha256_state st;
                crypto_hash_sha256_init(&st);
                crypto_hash_sha256_update(&st, prev, prevlen);
                crypto_hash_sha256_update(&st, (const unsigned char *)canon, strlen(canon));
                crypto_hash_sha256_final(&st, computed);
                if (hlen != HASH_BYTES || sodium_memcmp(stored, computed, HASH_BYTES) != 0)
                    problem = "hash does not match the row's contents: the row was changed";
            }
            if (problem) {
                rep->bad_id = id;
                snprintf(rep->problem, sizeof(rep->problem), "%s", problem);
                PQclear(r);
                return 1;
            }
            memcpy(prev, stored, HASH_BYTES);
            prevlen = HASH_BYTES;
            rep->rows++;
            after = id;
        }
        PQclear(r);
        if (n < PAGE_ROWS)
            break;
    }
    if (prevlen)
        sodium_bin2hex(rep->head, sizeof(rep->head), prev, prevlen);
    return 0;
}
