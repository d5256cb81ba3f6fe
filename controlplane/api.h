/*
 * api.h — the admin REST API (/admin/v1/...) served by leo-controlplane.
 *
 * Every route is a row of one table (api.c): method, path pattern, the permission it needs and how the
 * tenant that permission applies to is found (none, the {tenant} of the path, any tenant the caller belongs
 * to, or the request body). Requests authenticate with `Authorization: Bearer <session token>`; the session
 * is looked up (by the token's hash) on every request, so a revoked or expired session is refused at once.
 *
 * Every write is one SQL statement that changes the data and appends the audit entry together, so both
 * commit or neither does. Errors use the gateway's shape:
 *   {"error":{"message":"...","type":"...","param":<field or null>,"code":<string>}}
 *
 * Lifetime: leo_api_new() before the HTTP server starts; leo_api_free() after the server and the work queue
 * have finished (no request may still be running).
 */
#ifndef LEO_CP_API_H
#define LEO_CP_API_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../common/buf.h"
#include "../common/http_server.h"
#include "../common/keyhash.h"
#include "db.h"

struct leo_api;

struct leo_api_opts {
    uv_loop_t *loop;
    struct leo_db *db;                                 /* built with leo_api_statements() */
    uint8_t key_hash_secret[LEO_KEYHASH_SECRET_BYTES]; /* hashes tenant API keys, like the gateway */
    unsigned session_ttl_s;                            /* lifetime of a login session; default 12 h */
};

/** The statement table the pool must be created with. Static storage. */
const struct leo_db_stmt *leo_api_statements(size_t *n);

/** Creates the API state. Never fails. */
struct leo_api *leo_api_new(const struct leo_api_opts *opts);
/** The HTTP handler (leo_http_server_opts.handler, with ud = the struct leo_api). */
void leo_api_handle(struct leo_http_request *req, void *ud);
/** Error bodies for errors the HTTP server produces itself (leo_http_server_opts.error_body). */
void leo_api_error_body(int status, const char *message, struct leo_buf *body, const char **content_type, void *ud);
/** Requests whose work (a query or a password hash) is still running. */
unsigned leo_api_busy(const struct leo_api *api);
/** Frees the API state. */
void leo_api_free(struct leo_api *api);

#endif
