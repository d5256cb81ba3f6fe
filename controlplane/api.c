/*
 * api.c — routes, authentication, validation and the SQL behind each endpoint of the admin API.
 *
 * A request becomes a `struct call`, allocated apart from the HTTP request because it may outlive it: when
 * the client goes away while a query or a password hash is running, the HTTP server ends the request, and
 * the call is freed when that work comes back (call->pending counts it). Handlers chain steps through
 * run_query() / run_work(), each naming the function that continues.
 *
 * SQL builds the JSON of the objects it returns (json_build_object), so what a client sees is exactly what
 * the row holds; C adds only what never reaches the database (a new key's secret) or derives from it (the
 * masked key). Every write is a single statement whose CTEs change the rows and append the audit entry, so
 * the two commit together. Parameters are always passed separately from the SQL text.
 */
#include "api.h"

#include <ctype.h>
#include <jansson.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/secretbox.h"
#include "auth.h"
#include "probe.h"
#include "openapi.h"
#include "snapshot.h"

#define SESSION_TTL_DEFAULT_S (12 * 3600)
#define PAGE_DEFAULT 50
#define PAGE_MAX 200
#define NAME_MAX_CHARS 128
#define TENANT_NAME_MAX_CHARS 200
#define EMAIL_MAX 254
#define MODELS_MAX 256
#define PROVIDERS_MAX 64
#define MODEL_NAME_MAX 128
#define KEY_PREFIX "sk-leo-"
#define KEY_RANDOM_BYTES 30 /* 40 URL-safe base64 characters, as `leo-gateway hash-key --generate` makes */
#define KEY_DISPLAY_PREFIX 7
#define THROTTLE_WINDOW_S (15 * 60)
/* 15 significant digits print 0.1 as 0.1, not 0.10000000000000001 */
#define DUMP_ORDERED (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15))
#define DUMP_SORTED (JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15))

/* ------------------------------------------------------------------------------------------------------ */
/* SQL                                                                                                     */

#define RFC3339(x) "(to_json(" x ")#>>'{}')"
#define CURSOR_US(a) "(extract(epoch FROM " a ".created_at) * 1000000)::bigint"
/* keyset pagination on (created_at, id); $us and $id NULL for the first page */
#define AFTER(a, us, id)                                                                                               \
    "($" us "::bigint IS NULL OR (" a ".created_at, " a ".id) > ('epoch'::timestamptz + $" us                          \
    "::bigint * interval '1 microsecond', $" id "::uuid))"
#define IN_ALLOWED(expr, p) "(" expr ")::text IN (SELECT jsonb_array_elements_text($" p "::jsonb))"

#define TENANT_JSON(a)                                                                                                 \
    "json_build_object('id', " a ".id, 'slug', " a ".slug, 'name', " a ".name, 'status', " a ".status,"                \
    " 'limits', " a ".limits, 'allow_byok', " a ".allow_byok, 'allow_route_override', " a ".allow_route_override,"     \
    " 'allowed_models', " a ".allowed_models, 'created_at', " a ".created_at, 'updated_at', " a ".updated_at)::text"

#define KEY_JSON(a)                                                                                                    \
    "json_build_object('id', " a ".id, 'tenant_id', " a ".tenant_id, 'name', " a ".name, 'prefix', " a ".prefix,"      \
    " 'last4', " a ".last4, 'status', " a ".status, 'expired', coalesce(" a ".expires_at <= now(), false),"            \
    " 'expires_at', " a ".expires_at, 'allowed_models', " a ".allowed_models, 'allowed_providers',"                    \
    " " a ".allowed_providers, 'limits', " a ".limits,"                                                                \
    " 'created_by', " a ".created_by, 'created_at', " a ".created_at, 'updated_at', " a ".updated_at,"                 \
    " 'revoked_at', " a ".revoked_at, 'rotated_from', " a ".rotated_from)::text"

/* the sealed secret never leaves the database through the API: only its masked form and key id */
#define PROVIDER_JSON(a)                                                                                               \
    "json_build_object('id', " a ".id, 'name', " a ".name, 'type', " a ".type, 'base_url', " a ".base_url,"            \
    " 'api_version', " a ".api_version, 'timeouts', json_build_object('connect_ms', " a ".connect_timeout_ms,"         \
    " 'first_byte_ms', " a ".first_byte_timeout_ms, 'total_ms', " a ".total_timeout_ms), 'enabled', " a ".enabled,"    \
    " 'created_at', " a ".created_at, 'updated_at', " a ".updated_at)::text"

#define CRED_JSON(a)                                                                                                   \
    "json_build_object('id', " a ".id, 'provider_id', " a ".provider_id, 'name', " a ".name, 'masked', " a ".masked,"  \
    " 'key_id', " a ".key_id, 'weight', " a ".weight, 'enabled', " a ".enabled, 'created_at', " a ".created_at,"       \
    " 'updated_at', " a ".updated_at)::text"

#define DEPLOYMENT_JSON(a)                                                                                             \
    "json_build_object('id', " a ".id, 'provider_id', " a ".provider_id, 'provider', (SELECT pp.name FROM providers"   \
    " pp WHERE pp.id = " a ".provider_id), 'model', " a ".model, 'limits', " a ".limits, 'enabled', " a ".enabled,"    \
    " 'created_at', " a ".created_at, 'updated_at', " a ".updated_at)::text"

/* a model with its deployments, ordered as the gateway tries them (priority, then weight, then id) */
#define MODEL_JSON(a)                                                                                                  \
    "json_build_object('id', " a ".id, 'name', " a ".name, 'strategy', " a ".strategy, 'enabled', " a ".enabled,"      \
    " 'deployments', coalesce((SELECT json_agg(json_build_object('deployment_id', md.deployment_id, 'provider',"       \
    " pp.name, 'model', dd.model, 'priority', md.priority, 'weight', md.weight) ORDER BY md.priority,"                 \
    " md.weight DESC, md.deployment_id) FROM model_deployments md JOIN deployments dd ON dd.id = md.deployment_id"     \
    " JOIN providers pp ON pp.id = dd.provider_id WHERE md.model_id = " a ".id), '[]'::json),"                         \
    " 'created_at', " a ".created_at, 'updated_at', " a ".updated_at)::text"

/* $p: a jsonb array of {"deployment_id", "priority", "weight"} (checked by the daemon) */
#define MODEL_DEPLOYMENTS_FROM(p)                                                                                      \
    "SELECT (e->>'deployment_id')::uuid AS deployment_id, (e->>'priority')::int AS priority,"                          \
    " (e->>'weight')::int AS weight FROM jsonb_array_elements($" p "::jsonb) e"

#define MODELS_FROM(p)                                                                                                 \
    "CASE WHEN $" p "::jsonb IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text($" p "::jsonb)) END"

/* $p: a key's allowed_providers (a jsonb array of names, or NULL) → one row holding the 0-based index of the first
 * name no provider has, none when every name is a provider (or $p is NULL) */
#define MISSING_PROVIDER(p)                                                                                            \
    "SELECT min(e.i) - 1 AS i FROM jsonb_array_elements_text($" p "::jsonb) WITH ORDINALITY e(name, i)"                \
    " WHERE NOT EXISTS (SELECT 1 FROM providers pp WHERE pp.name = e.name) HAVING min(e.i) IS NOT NULL"

/* an admin API token as lists show it: never the secret, only "leo_at_…" and its last four */
#define TOKEN_JSON(a)                                                                                                  \
    "json_build_object('id', " a ".id, 'name', " a ".name, 'role', " a ".role, 'tenant_id', " a ".tenant_id,"          \
    " 'prefix', " a ".prefix, 'last4', " a ".last4, 'masked', " a ".prefix || '…' || " a ".last4, 'status',"           \
    " CASE WHEN " a ".revoked_at IS NOT NULL THEN 'revoked' WHEN " a ".expires_at <= now() THEN 'expired'"             \
    " ELSE 'active' END, 'created_by', " a ".created_by, 'created_at', " a ".created_at, 'last_used_at',"              \
    " " a ".last_used_at, 'expires_at', " a ".expires_at, 'revoked_at', " a ".revoked_at)::text"

#define INVITE_STATUS(a)                                                                                               \
    "CASE WHEN " a ".accepted_at IS NOT NULL THEN 'accepted' WHEN " a ".revoked_at IS NOT NULL THEN 'revoked'"         \
    " WHEN " a ".expires_at <= now() THEN 'expired' ELSE 'pending' END"

#define INVITE_JSON(a)                                                                                                 \
    "json_build_object('id', " a ".id, 'email', " a ".email, 'role', " a ".role, 'tenant_id', " a ".tenant_id,"        \
    " 'invited_by', " a ".invited_by, 'created_at', " a ".created_at, 'expires_at', " a ".expires_at,"                 \
    " 'accepted_at', " a ".accepted_at, 'revoked_at', " a ".revoked_at, 'status', " INVITE_STATUS(a) ")::text"

#define INVITE_PENDING(a) "(" a ".accepted_at IS NULL AND " a ".revoked_at IS NULL AND " a ".expires_at > now())"

/* a routing override (migrations/0008) with the names of its model and deployment */
#define OVERRIDE_JSON(a)                                                                                               \
    "json_build_object('id', " a ".id, 'model_id', " a ".model_id, 'model', (SELECT mm.name FROM models mm"          \
    " WHERE mm.id = " a ".model_id), 'deployment_id', " a ".deployment_id, 'deployment', (SELECT pp.name || '/' ||"  \
    " dd.model FROM deployments dd JOIN providers pp ON pp.id = dd.provider_id WHERE dd.id = " a ".deployment_id),"  \
    " 'action', " a ".action, 'weight', " a ".weight, 'reason', " a ".reason, 'created_by', " a ".created_by,"       \
    " 'created_at', " a ".created_at)::text"

/* a forced cooldown of a provider credential, with the names of both; active while until is ahead */
#define COOLDOWN_JSON(a)                                                                                               \
    "json_build_object('id', " a ".id, 'credential_id', " a ".credential_id, 'credential', kk.name, 'provider_id',"  \
    " kk.provider_id, 'provider', (SELECT pp.name FROM providers pp WHERE pp.id = kk.provider_id), 'until', " a     \
    ".until, 'active', " a ".until > now(), 'reason', " a ".reason, 'created_by', " a ".created_by, 'created_at',"  \
    " " a ".created_at)::text"

enum stmt {
    S_AUTH,
    S_LOGIN_LOOKUP,
    S_LOGIN_OK,
    S_LOGIN_FAIL,
    S_LOGOUT,
    S_TENANT_LIST,
    S_TENANT_CREATE,
    S_TENANT_GET,
    S_TENANT_PATCH,
    S_USER_CREATE,
    S_USER_LIST,
    S_KEY_LIST,
    S_KEY_GET,
    S_KEY_CREATE,
    S_KEY_PATCH,
    S_KEY_REVOKE,
    S_KEY_ROTATE,
    S_AUDIT_LIST,
    S_USAGE_REPORT,
    S_PROVIDER_LIST,
    S_PROVIDER_CREATE,
    S_PROVIDER_GET,
    S_PROVIDER_PATCH,
    S_PROVIDER_DELETE,
    S_CRED_LIST,
    S_CRED_CREATE,
    S_CRED_PATCH,
    S_CRED_DELETE,
    S_DEPLOYMENT_LIST,
    S_DEPLOYMENT_CREATE,
    S_DEPLOYMENT_GET,
    S_DEPLOYMENT_PATCH,
    S_DEPLOYMENT_DELETE,
    S_MODEL_LIST,
    S_MODEL_CREATE,
    S_MODEL_GET,
    S_MODEL_PATCH,
    S_MODEL_DELETE,
    S_AUTH_TOKEN,
    S_TOKEN_CREATE,
    S_TOKEN_LIST,
    S_TOKEN_REVOKE,
    S_INVITE_CREATE,
    S_INVITE_LIST,
    S_INVITE_REVOKE,
    S_INVITE_CHECK,
    S_INVITE_ACCEPT,
    S_PROVIDER_PROBE,
    S_OVERRIDE_LIST,
    S_OVERRIDE_SET,
    S_OVERRIDE_CLEAR,
    S_COOLDOWN_LIST,
    S_COOLDOWN_SET,
    S_COOLDOWN_CLEAR,
    S_COUNT
};

/* clang-format off */
static const struct leo_db_stmt stmts[S_COUNT] = {
    /* $1 token hash (hex) */
    [S_AUTH] = {"auth",
        "SELECT u.id, u.email, " RFC3339("s.expires_at") ", " RFC3339("u.created_at") ","
        " coalesce((SELECT json_agg(json_build_object('role', m.role, 'tenant_id', m.tenant_id)"
        " ORDER BY m.created_at) FROM memberships m WHERE m.user_id = u.id), '[]'::json)::text"
        " FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.token_hash = decode($1::text, 'hex') AND s.revoked_at IS NULL AND s.expires_at > now()"
        " AND NOT u.disabled"},

    /* $1 email, $2 client address → user id, password hash, seconds until the pair may try again */
    [S_LOGIN_LOOKUP] = {"login_lookup",
        "SELECT u.id, u.password_hash,"
        " (SELECT ceil(extract(epoch FROM f.at + interval '15 minutes' - now()))::int"
        " FROM login_failures f WHERE f.email = $1::text AND f.remote_addr = $2::text"
        " AND f.at > now() - interval '15 minutes' ORDER BY f.at DESC OFFSET 4 LIMIT 1)"
        " FROM (SELECT 1) one LEFT JOIN users u ON u.email = $1::text AND NOT u.disabled"},

    /* $1 token hash, $2 user id, $3 ttl seconds, $4 client address, $5 email */
    [S_LOGIN_OK] = {"login_ok",
        "WITH s AS (INSERT INTO sessions (token_hash, user_id, expires_at, remote_addr)"
        " VALUES (decode($1::text, 'hex'), $2::uuid, now() + $3::int * interval '1 second', $4::text)"
        " RETURNING id, expires_at),"
        " d AS (DELETE FROM login_failures WHERE email = $5::text AND remote_addr = $4::text),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT 'user:' || $2::text, 'session.login', 'user:' || $2::text,"
        " jsonb_build_object('session_id', s.id, 'remote_addr', $4::text) FROM s)"
        " SELECT " RFC3339("s.expires_at") " FROM s"},

    /* $1 email, $2 client address */
    [S_LOGIN_FAIL] = {"login_fail",
        "WITH old AS (DELETE FROM login_failures WHERE at < now() - interval '1 hour')"
        " INSERT INTO login_failures (email, remote_addr) VALUES ($1::text, $2::text)"},

    /* $1 token hash, $2 user id */
    [S_LOGOUT] = {"logout",
        "WITH s AS (UPDATE sessions SET revoked_at = now()"
        " WHERE token_hash = decode($1::text, 'hex') AND revoked_at IS NULL RETURNING id),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT 'user:' || $2::text, 'session.logout', 'user:' || $2::text,"
        " jsonb_build_object('session_id', s.id) FROM s)"
        " SELECT count(*) FROM s"},

    /* $1 allowed tenant ids (jsonb array, NULL for all), $2/$3 cursor, $4 limit */
    [S_TENANT_LIST] = {"tenant_list",
        "SELECT " TENANT_JSON("t") ", " CURSOR_US("t") ", t.id FROM tenants t"
        " WHERE ($1::jsonb IS NULL OR " IN_ALLOWED("t.id", "1") ")"
        " AND " AFTER("t", "2", "3") " ORDER BY t.created_at, t.id LIMIT $4::int"},

    /* $1 slug, $2 name, $3 status, $4 actor, $5 limits (jsonb), $6 allow_byok, $7 allow_route_override,
     * $8 allowed models (jsonb array or NULL) */
    [S_TENANT_CREATE] = {"tenant_create",
        "WITH t AS (INSERT INTO tenants (slug, name, status, limits, allow_byok, allow_route_override, allowed_models)"
        " VALUES ($1::text, $2::text, $3::text, $5::jsonb, $6::bool, $7::bool, " MODELS_FROM("8") ") RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $4::text, 'tenant.create', 'tenant:' || t.id,"
        " jsonb_build_object('slug', t.slug, 'name', t.name, 'status', t.status, 'limits', t.limits,"
        " 'allow_byok', t.allow_byok, 'allow_route_override', t.allow_route_override,"
        " 'allowed_models', t.allowed_models) FROM t)"
        " SELECT " TENANT_JSON("t") " FROM t"},

    /* $1 tenant id */
    [S_TENANT_GET] = {"tenant_get",
        "SELECT " TENANT_JSON("t") " FROM tenants t WHERE t.id = $1::uuid"},

    /* $1 tenant id, $2 name or NULL, $3 status or NULL, $4 actor, $5 the change (jsonb), $6 limits or NULL,
     * $7 allow_byok or NULL, $8 allow_route_override or NULL, $9 set models?, $10 models or NULL */
    [S_TENANT_PATCH] = {"tenant_patch",
        "WITH t AS (UPDATE tenants SET name = coalesce($2::text, name), status = coalesce($3::text, status),"
        " limits = coalesce($6::jsonb, limits), allow_byok = coalesce($7::bool, allow_byok),"
        " allow_route_override = coalesce($8::bool, allow_route_override),"
        " allowed_models = CASE WHEN $9::bool THEN " MODELS_FROM("10") " ELSE allowed_models END,"
        " updated_at = now() WHERE id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $4::text, 'tenant.update', 'tenant:' || t.id, $5::jsonb FROM t)"
        " SELECT " TENANT_JSON("t") " FROM t"},

    /* $1 email, $2 password hash, $3 role, $4 tenant id or NULL, $5 actor */
    [S_USER_CREATE] = {"user_create",
        "WITH u AS (INSERT INTO users (email, password_hash) VALUES ($1::text, $2::text) RETURNING *),"
        " m AS (INSERT INTO memberships (user_id, tenant_id, role) SELECT u.id, $4::uuid, $3::text FROM u),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $5::text, 'user.create', 'user:' || u.id,"
        " jsonb_build_object('email', u.email, 'role', $3::text, 'tenant_id', $4::uuid) FROM u)"
        " SELECT json_build_object('id', u.id, 'email', u.email, 'disabled', u.disabled,"
        " 'created_at', u.created_at, 'memberships',"
        " json_build_array(json_build_object('role', $3::text, 'tenant_id', $4::uuid)))::text FROM u"},

    /* $1 allowed tenant ids or NULL, $2/$3 cursor, $4 limit */
    [S_USER_LIST] = {"user_list",
        "SELECT json_build_object('id', u.id, 'email', u.email, 'disabled', u.disabled,"
        " 'created_at', u.created_at, 'memberships', coalesce((SELECT json_agg(json_build_object("
        "'role', m.role, 'tenant_id', m.tenant_id) ORDER BY m.created_at) FROM memberships m"
        " WHERE m.user_id = u.id AND ($1::jsonb IS NULL OR " IN_ALLOWED("m.tenant_id", "1") ")),"
        " '[]'::json))::text, " CURSOR_US("u") ", u.id FROM users u"
        " WHERE ($1::jsonb IS NULL OR EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.id"
        " AND " IN_ALLOWED("m.tenant_id", "1") "))"
        " AND " AFTER("u", "2", "3") " ORDER BY u.created_at, u.id LIMIT $4::int"},

    /* $1 tenant id, $2/$3 cursor, $4 limit; no row: no such tenant; a row of NULLs: no keys */
    [S_KEY_LIST] = {"key_list",
        "SELECT " KEY_JSON("k") ", " CURSOR_US("k") ", k.id FROM tenants t"
        " LEFT JOIN LATERAL (SELECT * FROM api_keys k WHERE k.tenant_id = t.id"
        " AND " AFTER("k", "2", "3") " ORDER BY k.created_at, k.id LIMIT $4::int) k ON true"
        " WHERE t.id = $1::uuid ORDER BY k.created_at, k.id"},

    /* $1 tenant id, $2 key id */
    [S_KEY_GET] = {"key_get",
        "SELECT " KEY_JSON("k") " FROM api_keys k WHERE k.id = $2::uuid AND k.tenant_id = $1::uuid"},

    /* $1 tenant, $2 name, $3 hash, $4 prefix, $5 last4, $6 expires_at, $7 models (jsonb array or NULL),
     * $8 limits (jsonb), $9 creator (user id), $10 actor, $11 providers (jsonb array or NULL)
     * → the key (NULL when not created), the index of the first provider name that does not exist (NULL: none) */
    [S_KEY_CREATE] = {"key_create",
        "WITH miss AS (" MISSING_PROVIDER("11") "),"
        " k AS (INSERT INTO api_keys (tenant_id, name, key_hash, prefix, last4, expires_at,"
        " allowed_models, allowed_providers, limits, created_by) SELECT $1::uuid, $2::text, $3::text, $4::text,"
        " $5::text, $6::timestamptz, " MODELS_FROM("7") ", " MODELS_FROM("11") ", $8::jsonb, $9::uuid"
        " WHERE NOT EXISTS (SELECT 1 FROM miss) RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $10::text, 'key.create', 'key:' || k.id, jsonb_build_object('tenant_id', k.tenant_id,"
        " 'name', k.name, 'prefix', k.prefix, 'last4', k.last4) FROM k)"
        " SELECT (SELECT " KEY_JSON("k") " FROM k), (SELECT i FROM miss)"},

    /* $1 tenant, $2 key, $3 name or NULL, $4 status or NULL, $5 set models?, $6 models or NULL,
     * $7 limits or NULL, $8 set expiry?, $9 expires_at or NULL, $10 actor, $11 the change (jsonb),
     * $12 set providers?, $13 providers or NULL
     * → the key (NULL when not changed), its status before (NULL when it does not exist), the index of the first
     * provider name that does not exist (NULL: none) */
    [S_KEY_PATCH] = {"key_patch",
        "WITH cur AS (SELECT status FROM api_keys WHERE id = $2::uuid AND tenant_id = $1::uuid),"
        " miss AS (" MISSING_PROVIDER("13") "),"
        " k AS (UPDATE api_keys SET name = coalesce($3::text, name), status = coalesce($4::text, status),"
        " allowed_models = CASE WHEN $5::bool THEN " MODELS_FROM("6") " ELSE allowed_models END,"
        " allowed_providers = CASE WHEN $12::bool THEN " MODELS_FROM("13") " ELSE allowed_providers END,"
        " limits = coalesce($7::jsonb, limits),"
        " expires_at = CASE WHEN $8::bool THEN $9::timestamptz ELSE expires_at END, updated_at = now()"
        " WHERE id = $2::uuid AND tenant_id = $1::uuid AND status <> 'revoked' AND NOT EXISTS (SELECT 1 FROM miss)"
        " RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $10::text, 'key.update', 'key:' || k.id,"
        " jsonb_build_object('tenant_id', k.tenant_id, 'changes', $11::jsonb) FROM k)"
        " SELECT (SELECT " KEY_JSON("k") " FROM k), (SELECT status FROM cur), (SELECT i FROM miss)"},

    /* $1 tenant, $2 key, $3 actor → the key, its status before */
    [S_KEY_REVOKE] = {"key_revoke",
        "WITH cur AS (SELECT status FROM api_keys WHERE id = $2::uuid AND tenant_id = $1::uuid),"
        " k AS (UPDATE api_keys SET status = 'revoked', revoked_at = now(), updated_at = now()"
        " WHERE id = $2::uuid AND tenant_id = $1::uuid AND status <> 'revoked' RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $3::text, 'key.revoke', 'key:' || k.id,"
        " jsonb_build_object('tenant_id', k.tenant_id, 'name', k.name) FROM k)"
        " SELECT (SELECT " KEY_JSON("k") " FROM k), (SELECT status FROM cur)"},

    /* $1 tenant, $2 key, $3 new hash, $4 prefix, $5 last4, $6 creator, $7 actor → the new key, the old key's
     * status before */
    [S_KEY_ROTATE] = {"key_rotate",
        "WITH cur AS (SELECT status FROM api_keys WHERE id = $2::uuid AND tenant_id = $1::uuid),"
        " old AS (UPDATE api_keys SET status = 'revoked', revoked_at = now(), updated_at = now()"
        " WHERE id = $2::uuid AND tenant_id = $1::uuid AND status <> 'revoked' RETURNING *),"
        " k AS (INSERT INTO api_keys (tenant_id, name, key_hash, prefix, last4, status, expires_at,"
        " allowed_models, allowed_providers, limits, created_by, rotated_from) SELECT o.tenant_id, o.name, $3::text,"
        " $4::text, $5::text, (SELECT status FROM cur), o.expires_at, o.allowed_models, o.allowed_providers,"
        " o.limits, $6::uuid, o.id FROM old o RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $7::text, 'key.rotate', 'key:' || old.id, jsonb_build_object('tenant_id', old.tenant_id,"
        " 'name', old.name, 'new_key_id', k.id, 'prefix', k.prefix, 'last4', k.last4) FROM old, k)"
        " SELECT (SELECT " KEY_JSON("k") " FROM k), (SELECT status FROM cur)"},

    /* $1 action, $2 since, $3 until, $4 before id, $5 limit, $6 target, $7 actor (all but $5 may be NULL) */
    [S_AUDIT_LIST] = {"audit_list",
        "SELECT json_build_object('id', l.id, 'at', l.at, 'actor', l.actor, 'action', l.action,"
        " 'target', l.target, 'details', l.details, 'hash', encode(l.hash, 'hex'))::text, l.id"
        " FROM audit_log l WHERE ($1::text IS NULL OR l.action = $1::text)"
        " AND ($2::timestamptz IS NULL OR l.at >= $2::timestamptz)"
        " AND ($3::timestamptz IS NULL OR l.at < $3::timestamptz)"
        " AND ($4::bigint IS NULL OR l.id < $4::bigint)"
        " AND ($6::text IS NULL OR l.target = $6::text) AND ($7::text IS NULL OR l.actor = $7::text)"
        " ORDER BY l.id DESC LIMIT $5::int"},

    /* $1 allowed tenant ids (jsonb array, NULL for all), $2 tenant slug, $3 key name, $4 model, $5 from,
     * $6 to (all but $7 may be NULL), $7 group_by → group, key name (group_by key), requests, errors,
     * cache hits, prompt tokens, completion tokens, cost, saved, average latency; one row more than shown */
    [S_USAGE_REPORT] = {"usage_report",
        "SELECT CASE $7::text WHEN 'hour' THEN to_char(r.hour, 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')"
        " WHEN 'day' THEN to_char(r.hour, 'YYYY-MM-DD') WHEN 'model' THEN r.model ELSE r.tenant END,"
        " CASE WHEN $7::text = 'key' THEN r.key_name ELSE '' END,"
        " sum(r.requests)::text, sum(r.errors)::text, sum(r.cache_hits)::text, sum(r.prompt_tokens)::text,"
        " sum(r.completion_tokens)::text, sum(r.cost_usd)::text, sum(r.saved_usd)::text,"
        " (sum(r.latency_ms_sum) / nullif(sum(r.requests), 0))::text"
        " FROM usage_rollups r"
        " WHERE ($1::jsonb IS NULL OR r.tenant IN (SELECT t.slug FROM tenants t WHERE " IN_ALLOWED("t.id", "1") "))"
        " AND ($2::text IS NULL OR r.tenant = $2::text) AND ($3::text IS NULL OR r.key_name = $3::text)"
        " AND ($4::text IS NULL OR r.model = $4::text)"
        " AND ($5::timestamptz IS NULL OR r.hour >= date_trunc('hour', $5::timestamptz))"
        " AND ($6::timestamptz IS NULL OR r.hour < $6::timestamptz)"
        " GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 10001"},

    /* $1/$2 cursor, $3 limit */
    [S_PROVIDER_LIST] = {"provider_list",
        "SELECT " PROVIDER_JSON("p") ", " CURSOR_US("p") ", p.id FROM providers p"
        " WHERE " AFTER("p", "1", "2") " ORDER BY p.created_at, p.id LIMIT $3::int"},

    /* $1 name, $2 type, $3 base_url, $4 api_version, $5-$7 timeouts (ms or NULL), $8 enabled, $9 actor */
    [S_PROVIDER_CREATE] = {"provider_create",
        "WITH p AS (INSERT INTO providers (name, type, base_url, api_version, connect_timeout_ms,"
        " first_byte_timeout_ms, total_timeout_ms, enabled) VALUES ($1::text, $2::text, $3::text, $4::text,"
        " $5::int, $6::int, $7::int, $8::bool) RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $9::text, 'provider.create', 'provider:' || p.id, jsonb_build_object('name', p.name,"
        " 'type', p.type, 'base_url', p.base_url, 'enabled', p.enabled) FROM p)"
        " SELECT " PROVIDER_JSON("p") " FROM p"},

    /* $1 provider id */
    [S_PROVIDER_GET] = {"provider_get",
        "SELECT " PROVIDER_JSON("p") " FROM providers p WHERE p.id = $1::uuid"},

    /* $1 id, $2 base_url, $3 set api_version?, $4 api_version, $5-$7 timeouts (NULL: unchanged), $8 enabled,
     * $9 actor, $10 the change (jsonb) */
    [S_PROVIDER_PATCH] = {"provider_patch",
        "WITH p AS (UPDATE providers SET base_url = coalesce($2::text, base_url),"
        " api_version = CASE WHEN $3::bool THEN $4::text ELSE api_version END,"
        " connect_timeout_ms = coalesce($5::int, connect_timeout_ms),"
        " first_byte_timeout_ms = coalesce($6::int, first_byte_timeout_ms),"
        " total_timeout_ms = coalesce($7::int, total_timeout_ms), enabled = coalesce($8::bool, enabled),"
        " updated_at = now() WHERE id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $9::text, 'provider.update', 'provider:' || p.id, $10::jsonb FROM p)"
        " SELECT " PROVIDER_JSON("p") " FROM p"},

    /* $1 id, $2 actor; credentials and deployments go with it (ON DELETE CASCADE) */
    [S_PROVIDER_DELETE] = {"provider_delete",
        "WITH p AS (DELETE FROM providers WHERE id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $2::text, 'provider.delete', 'provider:' || p.id, jsonb_build_object('name', p.name) FROM p)"
        " SELECT " PROVIDER_JSON("p") " FROM p"},

    /* $1 provider, $2/$3 cursor, $4 limit; no row: no such provider; a row of NULLs: no credentials */
    [S_CRED_LIST] = {"credential_list",
        "SELECT " CRED_JSON("k") ", " CURSOR_US("k") ", k.id FROM providers p"
        " LEFT JOIN LATERAL (SELECT * FROM provider_credentials k WHERE k.provider_id = p.id"
        " AND " AFTER("k", "2", "3") " ORDER BY k.created_at, k.id LIMIT $4::int) k ON true"
        " WHERE p.id = $1::uuid ORDER BY k.created_at, k.id"},

    /* $1 credential id, $2 provider, $3 name, $4 sealed, $5 key id, $6 masked, $7 weight, $8 enabled, $9 actor */
    [S_CRED_CREATE] = {"credential_create",
        "WITH k AS (INSERT INTO provider_credentials (id, provider_id, name, sealed, key_id, masked, weight,"
        " enabled) VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::text, $7::int, $8::bool)"
        " RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $9::text, 'credential.create', 'credential:' || k.id, jsonb_build_object('provider_id',"
        " k.provider_id, 'name', k.name, 'masked', k.masked, 'key_id', k.key_id) FROM k)"
        " SELECT " CRED_JSON("k") " FROM k"},

    /* $1 provider, $2 credential, $3 name, $4 weight, $5 enabled (NULL: unchanged), $6 actor, $7 change */
    [S_CRED_PATCH] = {"credential_patch",
        "WITH k AS (UPDATE provider_credentials SET name = coalesce($3::text, name),"
        " weight = coalesce($4::int, weight), enabled = coalesce($5::bool, enabled), updated_at = now()"
        " WHERE id = $2::uuid AND provider_id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $6::text, 'credential.update', 'credential:' || k.id,"
        " jsonb_build_object('provider_id', k.provider_id, 'changes', $7::jsonb) FROM k)"
        " SELECT " CRED_JSON("k") " FROM k"},

    /* $1 provider, $2 credential, $3 actor */
    [S_CRED_DELETE] = {"credential_delete",
        "WITH k AS (DELETE FROM provider_credentials WHERE id = $2::uuid AND provider_id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $3::text, 'credential.delete', 'credential:' || k.id,"
        " jsonb_build_object('provider_id', k.provider_id, 'name', k.name, 'masked', k.masked) FROM k)"
        " SELECT " CRED_JSON("k") " FROM k"},

    /* $1/$2 cursor, $3 limit */
    [S_DEPLOYMENT_LIST] = {"deployment_list",
        "SELECT " DEPLOYMENT_JSON("d") ", " CURSOR_US("d") ", d.id FROM deployments d"
        " WHERE " AFTER("d", "1", "2") " ORDER BY d.created_at, d.id LIMIT $3::int"},

    /* $1 provider id, $2 upstream model, $3 limits, $4 enabled, $5 actor */
    [S_DEPLOYMENT_CREATE] = {"deployment_create",
        "WITH d AS (INSERT INTO deployments (provider_id, model, limits, enabled)"
        " VALUES ($1::uuid, $2::text, $3::jsonb, $4::bool) RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $5::text, 'deployment.create', 'deployment:' || d.id, jsonb_build_object('provider_id',"
        " d.provider_id, 'model', d.model, 'limits', d.limits, 'enabled', d.enabled) FROM d)"
        " SELECT " DEPLOYMENT_JSON("d") " FROM d"},

    /* $1 id */
    [S_DEPLOYMENT_GET] = {"deployment_get",
        "SELECT " DEPLOYMENT_JSON("d") " FROM deployments d WHERE d.id = $1::uuid"},

    /* $1 id, $2 enabled, $3 limits (NULL: unchanged), $4 actor, $5 the change */
    [S_DEPLOYMENT_PATCH] = {"deployment_patch",
        "WITH d AS (UPDATE deployments SET enabled = coalesce($2::bool, enabled),"
        " limits = coalesce($3::jsonb, limits), updated_at = now() WHERE id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $4::text, 'deployment.update', 'deployment:' || d.id, $5::jsonb FROM d)"
        " SELECT " DEPLOYMENT_JSON("d") " FROM d"},

    /* $1 id, $2 actor; the models lose it (ON DELETE CASCADE on model_deployments) */
    [S_DEPLOYMENT_DELETE] = {"deployment_delete",
        "WITH d AS (DELETE FROM deployments WHERE id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $2::text, 'deployment.delete', 'deployment:' || d.id, jsonb_build_object('provider_id',"
        " d.provider_id, 'model', d.model) FROM d)"
        " SELECT json_build_object('id', d.id, 'provider_id', d.provider_id, 'model', d.model)::text FROM d"},

    /* $1/$2 cursor, $3 limit */
    [S_MODEL_LIST] = {"model_list",
        "SELECT " MODEL_JSON("m") ", " CURSOR_US("m") ", m.id FROM models m"
        " WHERE " AFTER("m", "1", "2") " ORDER BY m.created_at, m.id LIMIT $3::int"},

    /* $1 name, $2 strategy, $3 enabled, $4 deployments (jsonb), $5 actor → the new id (the caller reads the
     * model back: a statement does not see the rows its own CTEs insert) */
    [S_MODEL_CREATE] = {"model_create",
        "WITH m AS (INSERT INTO models (name, strategy, enabled) VALUES ($1::text, $2::text, $3::bool)"
        " RETURNING *),"
        " md AS (INSERT INTO model_deployments (model_id, deployment_id, priority, weight)"
        " SELECT m.id, x.deployment_id, x.priority, x.weight FROM m, (" MODEL_DEPLOYMENTS_FROM("4") ") x),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $5::text, 'model.create', 'model:' || m.id, jsonb_build_object('name', m.name, 'strategy',"
        " m.strategy, 'enabled', m.enabled, 'deployments', $4::jsonb) FROM m)"
        " SELECT m.id::text FROM m"},

    /* $1 id */
    [S_MODEL_GET] = {"model_get",
        "SELECT " MODEL_JSON("m") " FROM models m WHERE m.id = $1::uuid"},

    /* $1 id, $2 strategy, $3 enabled (NULL: unchanged), $4 replace deployments?, $5 deployments (jsonb),
     * $6 actor, $7 the change → the id. Deployments no longer listed are deleted and the others upserted, so
     * the two never touch the same row. */
    [S_MODEL_PATCH] = {"model_patch",
        "WITH m AS (UPDATE models SET strategy = coalesce($2::text, strategy), enabled = coalesce($3::bool, enabled),"
        " updated_at = now() WHERE id = $1::uuid RETURNING *),"
        " x AS (" MODEL_DEPLOYMENTS_FROM("5") " WHERE $4::bool),"
        " del AS (DELETE FROM model_deployments md USING m WHERE $4::bool AND md.model_id = m.id"
        " AND md.deployment_id NOT IN (SELECT deployment_id FROM x)),"
        " ins AS (INSERT INTO model_deployments (model_id, deployment_id, priority, weight)"
        " SELECT m.id, x.deployment_id, x.priority, x.weight FROM m, x ON CONFLICT (model_id, deployment_id)"
        " DO UPDATE SET priority = EXCLUDED.priority, weight = EXCLUDED.weight),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $6::text, 'model.update', 'model:' || m.id, $7::jsonb FROM m)"
        " SELECT m.id::text FROM m"},

    /* $1 id, $2 actor */
    [S_MODEL_DELETE] = {"model_delete",
        "WITH m AS (DELETE FROM models WHERE id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $2::text, 'model.delete', 'model:' || m.id, jsonb_build_object('name', m.name) FROM m)"
        " SELECT json_build_object('id', m.id, 'name', m.name)::text FROM m"},

    /* $1 the token's keyed hash, $2 its unkeyed hash (hex) → id, role, tenant id, expires_at of a live admin API
     * token. A token stored before hashes were keyed (hash_kind 0) is found by $2 and rewritten to $1 (kind 1)
     * by this use. Marks it used, at most once a minute: the condition is on the row itself, so concurrent
     * requests with one token update it once (or, for a legacy token, write the same values twice). */
    [S_AUTH_TOKEN] = {"auth_token",
        "WITH t AS (SELECT id, role, tenant_id, expires_at, hash_kind FROM admin_tokens"
        " WHERE ((token_hash = decode($1::text, 'hex') AND hash_kind = 1)"
        " OR (token_hash = decode($2::text, 'hex') AND hash_kind = 0)) AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now())),"
        " u AS (UPDATE admin_tokens x SET last_used_at = now(), token_hash = decode($1::text, 'hex'), hash_kind = 1"
        " FROM t WHERE x.id = t.id"
        " AND (t.hash_kind = 0 OR x.last_used_at IS NULL OR x.last_used_at < now() - interval '1 minute'))"
        " SELECT t.id, t.role, t.tenant_id, " RFC3339("t.expires_at") " FROM t"},

    /* $1 token hash (keyed, kind 1), $2 name, $3 role, $4 tenant or NULL, $5 prefix, $6 last4, $7 expires_at or
     * NULL, $8 actor */
    [S_TOKEN_CREATE] = {"token_create",
        "WITH t AS (INSERT INTO admin_tokens (token_hash, hash_kind, name, role, tenant_id, prefix, last4,"
        " expires_at, created_by) VALUES (decode($1::text, 'hex'), 1, $2::text, $3::text, $4::uuid, $5::text,"
        " $6::text, $7::timestamptz, $8::text) RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $8::text, 'token.create', 'token:' || t.id, jsonb_build_object('name', t.name, 'role', t.role,"
        " 'tenant_id', t.tenant_id, 'last4', t.last4, 'expires_at', t.expires_at) FROM t)"
        " SELECT " TOKEN_JSON("t") " FROM t"},

    /* $1 allowed tenant ids (jsonb array, NULL for all), $2/$3 cursor, $4 limit */
    [S_TOKEN_LIST] = {"token_list",
        "SELECT " TOKEN_JSON("t") ", " CURSOR_US("t") ", t.id FROM admin_tokens t"
        " WHERE ($1::jsonb IS NULL OR " IN_ALLOWED("t.tenant_id", "1") ")"
        " AND " AFTER("t", "2", "3") " ORDER BY t.created_at, t.id LIMIT $4::int"},

    /* $1 token id, $2 allowed tenant ids or NULL, $3 actor → the token (NULL when not changed), whether it exists
     * in the caller's scope */
    [S_TOKEN_REVOKE] = {"token_revoke",
        "WITH cur AS (SELECT id FROM admin_tokens WHERE id = $1::uuid"
        " AND ($2::jsonb IS NULL OR " IN_ALLOWED("tenant_id", "2") ")),"
        " t AS (UPDATE admin_tokens SET revoked_at = now() WHERE id IN (SELECT id FROM cur) AND revoked_at IS NULL"
        " RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $3::text, 'token.revoke', 'token:' || t.id, jsonb_build_object('name', t.name, 'role', t.role,"
        " 'tenant_id', t.tenant_id) FROM t)"
        " SELECT (SELECT " TOKEN_JSON("t") " FROM t), (SELECT count(*) FROM cur)"},

    /* $1 token hash, $2 email, $3 role, $4 tenant or NULL, $5 lifetime in seconds, $6 actor; no row when a user
     * with this email exists */
    [S_INVITE_CREATE] = {"invitation_create",
        "WITH i AS (INSERT INTO invitations (token_hash, email, role, tenant_id, expires_at, invited_by)"
        " SELECT decode($1::text, 'hex'), $2::text, $3::text, $4::uuid, now() + $5::int * interval '1 second',"
        " $6::text WHERE NOT EXISTS (SELECT 1 FROM users WHERE email = $2::text) RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $6::text, 'invitation.create', 'invitation:' || i.id, jsonb_build_object('email', i.email,"
        " 'role', i.role, 'tenant_id', i.tenant_id, 'expires_at', i.expires_at) FROM i)"
        " SELECT " INVITE_JSON("i") " FROM i"},

    /* $1 allowed tenant ids or NULL, $2/$3 cursor, $4 limit; pending invitations only */
    [S_INVITE_LIST] = {"invitation_list",
        "SELECT " INVITE_JSON("i") ", " CURSOR_US("i") ", i.id FROM invitations i"
        " WHERE " INVITE_PENDING("i") " AND ($1::jsonb IS NULL OR " IN_ALLOWED("i.tenant_id", "1") ")"
        " AND " AFTER("i", "2", "3") " ORDER BY i.created_at, i.id LIMIT $4::int"},

    /* $1 invitation id, $2 allowed tenant ids or NULL, $3 actor → the invitation (NULL when not changed), its
     * status before (NULL when it does not exist in the caller's scope) */
    [S_INVITE_REVOKE] = {"invitation_revoke",
        "WITH cur AS (SELECT i.id, " INVITE_STATUS("i") " AS status FROM invitations i WHERE i.id = $1::uuid"
        " AND ($2::jsonb IS NULL OR " IN_ALLOWED("i.tenant_id", "2") ")),"
        " i AS (UPDATE invitations x SET revoked_at = now() FROM cur WHERE x.id = cur.id AND " INVITE_PENDING("x")
        " RETURNING x.*),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $3::text, 'invitation.revoke', 'invitation:' || i.id, jsonb_build_object('email', i.email,"
        " 'role', i.role, 'tenant_id', i.tenant_id) FROM i)"
        " SELECT (SELECT " INVITE_JSON("i") " FROM i), (SELECT status FROM cur)"},

    /* $1 token hash → a row when the invitation is pending */
    [S_INVITE_CHECK] = {"invitation_check",
        "SELECT i.id FROM invitations i WHERE i.token_hash = decode($1::text, 'hex') AND " INVITE_PENDING("i")},

    /* $1 token hash, $2 password hash → the new user; no row when the invitation is not (or no longer) pending.
     * Two accepts of one invitation: the second waits for the first's row lock, then finds accepted_at set and
     * changes nothing. */
    [S_INVITE_ACCEPT] = {"invitation_accept",
        "WITH i AS (UPDATE invitations x SET accepted_at = now() WHERE x.token_hash = decode($1::text, 'hex')"
        " AND " INVITE_PENDING("x") " RETURNING x.*),"
        " u AS (INSERT INTO users (email, password_hash) SELECT i.email, $2::text FROM i RETURNING *),"
        " m AS (INSERT INTO memberships (user_id, tenant_id, role) SELECT u.id, i.tenant_id, i.role FROM u, i),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT 'user:' || u.id, 'invitation.accept', 'invitation:' || i.id, jsonb_build_object('user_id', u.id,"
        " 'email', u.email, 'role', i.role, 'tenant_id', i.tenant_id) FROM u, i)"
        " SELECT json_build_object('id', u.id, 'email', u.email, 'disabled', u.disabled,"
        " 'created_at', u.created_at, 'memberships',"
        " json_build_array(json_build_object('role', i.role, 'tenant_id', i.tenant_id)))::text FROM u, i"},

    /* $1 provider → type, base_url, api_version, connect and total timeouts, and its first enabled credential
     * (id, name, sealed), NULL when it has none; no row: no such provider */
    [S_PROVIDER_PROBE] = {"provider_probe",
        "SELECT p.type, p.base_url, p.api_version, p.connect_timeout_ms::text, p.total_timeout_ms::text,"
        " k.id, k.name, k.sealed FROM providers p LEFT JOIN LATERAL (SELECT * FROM provider_credentials k"
        " WHERE k.provider_id = p.id AND k.enabled ORDER BY k.created_at, k.id LIMIT 1) k ON true"
        " WHERE p.id = $1::uuid"},

    /* $1/$2 cursor, $3 limit */
    [S_OVERRIDE_LIST] = {"override_list",
        "SELECT " OVERRIDE_JSON("o") ", " CURSOR_US("o") ", o.id FROM routing_overrides o"
        " WHERE " AFTER("o", "1", "2") " ORDER BY o.created_at, o.id LIMIT $3::int"},

    /* $1 model id, $2 deployment id, $3 action, $4 weight (NULL unless action is weight), $5 reason, $6 actor;
     * replaces the model deployment's override if it has one */
    [S_OVERRIDE_SET] = {"override_set",
        "WITH o AS (INSERT INTO routing_overrides (model_id, deployment_id, action, weight, reason, created_by)"
        " VALUES ($1::uuid, $2::uuid, $3::text, $4::int, coalesce($5::text, ''), $6::text)"
        " ON CONFLICT (model_id, deployment_id) DO UPDATE SET action = EXCLUDED.action, weight = EXCLUDED.weight,"
        " reason = EXCLUDED.reason, created_by = EXCLUDED.created_by, created_at = now() RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $6::text, 'override.set', 'model:' || o.model_id, jsonb_build_object('override_id', o.id,"
        " 'deployment_id', o.deployment_id, 'action', o.action, 'weight', o.weight, 'reason', o.reason) FROM o)"
        " SELECT " OVERRIDE_JSON("o") " FROM o"},

    /* $1 override id, $2 actor */
    [S_OVERRIDE_CLEAR] = {"override_clear",
        "WITH o AS (DELETE FROM routing_overrides WHERE id = $1::uuid RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $2::text, 'override.clear', 'model:' || o.model_id, jsonb_build_object('override_id', o.id,"
        " 'deployment_id', o.deployment_id, 'action', o.action, 'weight', o.weight) FROM o)"
        " SELECT " OVERRIDE_JSON("o") " FROM o"},

    /* $1/$2 cursor, $3 limit */
    [S_COOLDOWN_LIST] = {"cooldown_list",
        "SELECT " COOLDOWN_JSON("c") ", " CURSOR_US("c") ", c.id FROM credential_cooldowns c"
        " JOIN provider_credentials kk ON kk.id = c.credential_id"
        " WHERE " AFTER("c", "1", "2") " ORDER BY c.created_at, c.id LIMIT $3::int"},

    /* $1 provider, $2 credential, $3 until (NULL: now + $4 seconds), $4 seconds, $5 reason, $6 actor; no row: no
     * such credential at this provider. Replaces the credential's cooldown if it has one. */
    [S_COOLDOWN_SET] = {"cooldown_set",
        "WITH kk AS (SELECT * FROM provider_credentials WHERE id = $2::uuid AND provider_id = $1::uuid),"
        " c AS (INSERT INTO credential_cooldowns (credential_id, until, reason, created_by)"
        " SELECT kk.id, coalesce($3::timestamptz, now() + $4::int * interval '1 second'), coalesce($5::text, ''),"
        " $6::text FROM kk ON CONFLICT (credential_id) DO UPDATE SET until = EXCLUDED.until, reason = EXCLUDED.reason,"
        " created_by = EXCLUDED.created_by, created_at = now() RETURNING *),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $6::text, 'credential.cooldown', 'credential:' || c.credential_id, jsonb_build_object('provider_id',"
        " $1::uuid, 'until', c.until, 'reason', c.reason) FROM c)"
        " SELECT " COOLDOWN_JSON("c") " FROM c JOIN kk ON kk.id = c.credential_id"},

    /* $1 provider, $2 credential, $3 actor; no row: the credential has no forced cooldown */
    [S_COOLDOWN_CLEAR] = {"cooldown_clear",
        "WITH kk AS (SELECT * FROM provider_credentials WHERE id = $2::uuid AND provider_id = $1::uuid),"
        " c AS (DELETE FROM credential_cooldowns x USING kk WHERE x.credential_id = kk.id RETURNING x.*),"
        " a AS (INSERT INTO audit_log (actor, action, target, details)"
        " SELECT $3::text, 'credential.cooldown_clear', 'credential:' || c.credential_id,"
        " jsonb_build_object('provider_id', $1::uuid, 'until', c.until, 'reason', c.reason) FROM c)"
        " SELECT " COOLDOWN_JSON("c") " FROM c JOIN kk ON kk.id = c.credential_id"},
};
/* clang-format on */

const struct leo_db_stmt *leo_api_statements(size_t *n)
{
    *n = S_COUNT;
    return stmts;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Calls                                                                                                   */

struct leo_api {
    uv_loop_t *loop;
    struct leo_db *db;
    uint8_t key_secret[LEO_KEYHASH_SECRET_BYTES];
    uint8_t token_key[LEO_TOKEN_KEY_BYTES]; /* hashes admin API tokens (auth.h leo_admin_token_key) */
    unsigned session_ttl_s;
    unsigned busy;
    struct leo_secretbox_ring ring; /* seals provider credentials; nkeys 0: credentials cannot be written */
};

struct call;
typedef void (*call_step)(struct call *c);
typedef void (*query_step)(struct call *c, const struct leo_db_result *r);

enum scope {
    SCOPE_PUBLIC,  /* no authentication */
    SCOPE_SESSION, /* any signed-in user */
    SCOPE_GLOBAL,  /* the permission from a global role */
    SCOPE_TENANT,  /* the permission for the {tenant} of the path */
    SCOPE_ANY,     /* the permission for some tenant; the handler limits what it shows */
    SCOPE_BODY,    /* the permission for the tenant named in the body; the handler checks it */
};

struct route {
    const char *method;
    const char *pattern; /* segments; "{tenant}" and "{key}" capture UUIDs */
    unsigned perm;       /* the permission the endpoint needs; 0 for public and session-only routes */
    enum scope scope;
    call_step run;
};

struct call {
    struct leo_api *api;
    struct leo_http_request *req; /* NULL once the client is gone */
    const struct route *route;
    int pending; /* a query or a work item is running */
    uint64_t t0;
    json_t *body;
    char tenant_id[LEO_UUID_TEXT_LEN + 1];
    char key_id[LEO_UUID_TEXT_LEN + 1];
    char obj_id[LEO_UUID_TEXT_LEN + 1]; /* {provider} of the path */
    char token_hash[2 * LEO_SESSION_HASH_BYTES + 1];
    char actor[8 + LEO_UUID_TEXT_LEN]; /* "user:<id>" or "token:<id>" */
    struct leo_principal who;
    bool authenticated;
    char token_id[LEO_UUID_TEXT_LEN + 1]; /* the admin API token that authenticated the call; "" for a session */
    bool dry_run; /* POST /config/validate: the handler validates and answers; nothing is written */
    char session_expires[48];
    char user_created_at[48];
    query_step next;

    /* multi-step handlers */
    uv_work_t work;
    call_step after_work;
    call_step work_fn;
    char *password; /* wiped before it is freed */
    size_t password_len;
    char *pwhash; /* from the database, or made by the work */
    bool verified;
    char email[EMAIL_MAX + 1];
    char user_id[LEO_UUID_TEXT_LEN + 1];
    const char *role;
    const char *body_tenant; /* points into body */
    char secret[sizeof(KEY_PREFIX) + 48];
    int limit; /* page size of a list */
    const char *usage_group; /* usage report: group_by (static storage) */
    bool usage_csv;          /* usage report: format=csv */
    struct leo_probe *probe; /* provider test: the probe (holds the opened secret until freed) */
    json_t *reply;           /* provider test: the answer being built */
};

static void call_free(struct call *c)
{
    if (c->body)
        json_decref(c->body);
    if (c->password) {
        sodium_memzero(c->password, c->password_len);
        leo_free(c->password);
    }
    leo_free(c->pwhash);
    leo_free(c->who.memberships);
    leo_probe_free(c->probe);
    if (c->reply)
        json_decref(c->reply);
    sodium_memzero(c->secret, sizeof(c->secret));
    leo_free(c);
}

static void on_request_close(struct leo_http_request *req, bool aborted)
{
    struct call *c = req->data;
    c->req = NULL;
    if (c->pending == 0)
        call_free(c);
}

/* Called first by every continuation: false (and the call freed) when the client has gone meanwhile. */
static bool call_resume(struct call *c)
{
    c->pending--;
    c->api->busy--;
    if (c->req == NULL) {
        call_free(c);
        return false;
    }
    return true;
}

static void access_log(struct call *c, int status)
{
    struct leo_http_request *req = c->req;
    char ts[40];
    leo_log_timestamp(ts, sizeof(ts));
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_addf(&b, "{\"ts\":\"%s\",\"type\":\"access\",\"method\":\"", ts);
    leo_buf_add_json_escaped(&b, req->method.p, req->method.len);
    leo_buf_adds(&b, "\",\"path\":\"");
    leo_buf_add_json_escaped(&b, req->path.p, req->path.len);
    leo_buf_addf(&b, "\",\"status\":%d,\"ms\":%.3f,\"remote\":\"", status, (double)(uv_hrtime() - c->t0) / 1e6);
    leo_buf_add_json_escaped(&b, req->remote_addr, strlen(req->remote_addr));
    leo_buf_adds(&b, "\",\"user\":");
    if (c->authenticated && c->token_id[0])
        leo_buf_addf(&b, "null,\"token\":\"%s\"}", c->token_id);
    else if (c->authenticated)
        leo_buf_addf(&b, "\"%s\"}", c->who.user_id);
    else
        leo_buf_adds(&b, "null}");
    leo_log_line(b.p, b.len);
    leo_buf_release(&b);
}

static void respond_extra(struct call *c, int status, const char *body, size_t len, const struct leo_http_header *extra,
                          size_t nextra)
{
    struct leo_http_header h[6];
    size_t n = 0;
    if (len) {
        h[n++] = (struct leo_http_header){LEO_STR_LIT("Content-Type"), LEO_STR_LIT("application/json")};
    }
    h[n++] = (struct leo_http_header){LEO_STR_LIT("Cache-Control"), LEO_STR_LIT("no-store")};
    for (size_t i = 0; i < nextra && n < sizeof(h) / sizeof(h[0]); i++)
        h[n++] = extra[i];
    access_log(c, status);
    leo_http_respond(c->req, status, h, n, body, len);
}

static void respond(struct call *c, int status, const char *body, size_t len)
{
    respond_extra(c, status, body, len, NULL, 0);
}

static void respond_json(struct call *c, int status, json_t *j)
{
    char *s = json_dumps(j, DUMP_ORDERED);
    json_decref(j);
    respond(c, status, s, strlen(s));
    free(s); /* jansson's allocation */
}

/* status → error type; the first matching row wins */
static const struct {
    int status;
    const char *type;
} error_types[] = {
    {400, "invalid_request_error"}, {401, "authentication_error"},  {403, "permission_error"},
    {404, "not_found_error"},       {405, "invalid_request_error"}, {408, "timeout_error"},
    {409, "conflict_error"},        {413, "invalid_request_error"}, {429, "rate_limit_error"},
    {431, "invalid_request_error"}, {503, "service_unavailable"},   {0, NULL},
};

static const char *error_type(int status)
{
    for (size_t i = 0; error_types[i].status; i++)
        if (error_types[i].status == status)
            return error_types[i].type;
    return status >= 500 ? "server_error" : "invalid_request_error";
}

static json_t *error_json(int status, const char *code, const char *param, const char *message)
{
    return json_pack("{s:{s:s,s:s,s:s?,s:s}}", "error", "message", message, "type", error_type(status), "param", param,
                     "code", code);
}

static void fail_extra(struct call *c, int status, const char *code, const char *param,
                       const struct leo_http_header *extra, size_t nextra, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static void fail_extra(struct call *c, int status, const char *code, const char *param,
                       const struct leo_http_header *extra, size_t nextra, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *j;
    if (c->dry_run && status == 400) {
        /* a dry run (POST /config/validate) answers what the real request would have been refused for */
        j = json_pack("{s:b,s:[{s:s?,s:s}]}", "valid", 0, "errors", "field", param, "message", msg);
        status = 200;
    } else {
        j = error_json(status, code, param, msg);
    }
    char *s = json_dumps(j, DUMP_ORDERED);
    json_decref(j);
    respond_extra(c, status, s, strlen(s), extra, nextra);
    free(s);
}

#define fail(c, status, code, param, ...) fail_extra((c), (status), (code), (param), NULL, 0, __VA_ARGS__)

void leo_api_error_body(int status, const char *message, struct leo_buf *body, const char **content_type, void *ud)
{
    const char *code = status == 408   ? "request_timeout"
                       : status == 413 ? "body_too_large"
                       : status == 431 ? "headers_too_large"
                                       : "bad_request";
    json_t *j = error_json(status, code, NULL, message);
    char *s = json_dumps(j, DUMP_ORDERED);
    json_decref(j);
    leo_buf_adds(body, s);
    free(s);
    *content_type = "application/json";
}

/* Database errors a handler expects, by SQLSTATE and constraint; everything else is a 500 (logged) or,
 * for lost connections, a 503. */
static const struct {
    const char *sqlstate;
    const char *constraint; /* NULL matches any */
    int status;
    const char *code;
    const char *param;
    const char *message;
} db_errors[] = {
    {"23505", "tenants_slug_key", 409, "already_exists", "slug", "a tenant with this slug already exists"},
    {"23505", "users_email_key", 409, "already_exists", "email", "a user with this email already exists"},
    {"23505", "api_keys_key_hash_key", 409, "already_exists", NULL, "key collision, try again"},
    {"23505", "providers_name_key", 409, "already_exists", "name", "a provider with this name already exists"},
    {"23505", "provider_credentials_provider_id_name_key", 409, "already_exists", "name",
     "this provider already has a credential with this name"},
    {"23503", "provider_credentials_provider_id_fkey", 404, "not_found", NULL, "provider not found"},
    {"23503", "deployments_provider_id_fkey", 400, "invalid_value", "provider_id", "provider does not exist"},
    {"23505", "deployments_provider_id_model_key", 409, "already_exists", "model",
     "this provider already has a deployment of this model"},
    {"23503", "model_deployments_deployment_id_fkey", 400, "invalid_value", "deployments",
     "a listed deployment does not exist"},
    {"23505", "models_name_key", 409, "already_exists", "name", "a model with this name already exists"},
    {"23503", "memberships_tenant_id_fkey", 400, "invalid_value", "tenant_id", "tenant does not exist"},
    {"23503", "api_keys_tenant_id_fkey", 404, "not_found", NULL, "tenant not found"},
    {"23503", "admin_tokens_tenant_id_fkey", 400, "invalid_value", "tenant_id", "tenant does not exist"},
    {"23503", "invitations_tenant_id_fkey", 400, "invalid_value", "tenant_id", "tenant does not exist"},
    {"23503", "routing_overrides_model_id_deployment_id_fkey", 400, "invalid_value", "deployment_id",
     "the deployment is not one of the model's deployments"},
    {"23514", NULL, 400, "invalid_value", NULL, "a value is out of range"},
    {"22P02", NULL, 400, "invalid_value", NULL, "a value has the wrong format"},
    {"22007", NULL, 400, "invalid_value", NULL, "a value has the wrong format"},
    {"22008", NULL, 400, "invalid_value", NULL, "a date is out of range"},
};

static void fail_db(struct call *c, const struct leo_db_result *r)
{
    if (r->err != LEO_EUPSTREAM) {
        leo_warn("%s %.*s: database unavailable: %s", c->route->method, (int)c->req->path.len, c->req->path.p,
                 r->message);
        fail(c, 503, "database_unavailable", NULL, "the database is unavailable, try again");
        return;
    }
    for (size_t i = 0; i < sizeof(db_errors) / sizeof(db_errors[0]); i++) {
        if (strcmp(db_errors[i].sqlstate, r->sqlstate) != 0)
            continue;
        if (db_errors[i].constraint && strcmp(db_errors[i].constraint, r->constraint) != 0)
            continue;
        fail(c, db_errors[i].status, db_errors[i].code, db_errors[i].param, "%s", db_errors[i].message);
        return;
    }
    leo_error("%s %s: database error %s: %s", c->route->method, c->route->pattern, r->sqlstate, r->message);
    fail(c, 500, "internal_error", NULL, "internal error");
}

static void on_query(const struct leo_db_result *r, void *ud)
{
    struct call *c = ud;
    if (!call_resume(c))
        return;
    c->next(c, r);
}

static void respond_dry_run_valid(struct call *c)
{
    respond_json(c, 200, json_pack("{s:b}", "valid", 1));
}

static void run_query(struct call *c, enum stmt s, const char *const *params, int n, query_step next)
{
    /* a dry run ends where the handler, its validation passed, would write */
    if (c->dry_run) {
        respond_dry_run_valid(c);
        return;
    }
    c->next = next;
    c->pending++;
    c->api->busy++;
    leo_db_query(c->api->db, s, params, n, on_query, c);
}

static void on_work(uv_work_t *w)
{
    struct call *c = w->data;
    c->work_fn(c);
}

static void on_work_done(uv_work_t *w, int status)
{
    struct call *c = w->data;
    if (!call_resume(c))
        return;
    c->after_work(c);
}

/* Runs fn on the libuv thread pool (it must touch nothing but the call's own fields), then after on the
 * loop. */
static void run_work(struct call *c, call_step fn, call_step after)
{
    if (c->dry_run) { /* the work (a password hash) comes after validation */
        respond_dry_run_valid(c);
        return;
    }
    c->work.data = c;
    c->work_fn = fn;
    c->after_work = after;
    c->pending++;
    c->api->busy++;
    int rc = uv_queue_work(c->api->loop, &c->work, on_work, on_work_done);
    if (rc != 0) {
        c->pending--;
        c->api->busy--;
        leo_error("cannot queue work: %s", uv_strerror(rc));
        fail(c, 500, "internal_error", NULL, "internal error");
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Validation                                                                                              */

/* Checks that every member of the body is one of allowed; 400 naming the first other one. */
static int body_fields(struct call *c, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(c->body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], key) == 0)
                ok = true;
        if (!ok) {
            fail(c, 400, "unknown_field", key, "%s: unknown field", key);
            return -1;
        }
    }
    return 0;
}

static bool has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return true;
    return false;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xc0) != 0x80)
            n++;
    return n;
}

/* A string member: *out NULL when absent (or null when null_ok); 400 when required and missing, not a string,
 * too short or long (in characters), or containing control characters. */
static int body_string(struct call *c, const char *field, bool required, size_t min, size_t max, const char **out)
{
    json_t *v = json_object_get(c->body, field);
    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        if (required) {
            fail(c, 400, "missing_field", field, "%s: required", field);
            return -1;
        }
        return 0;
    }
    if (!json_is_string(v)) {
        fail(c, 400, "invalid_type", field, "%s: expected a string", field);
        return -1;
    }
    const char *s = json_string_value(v);
    size_t n = utf8_chars(s);
    if (strlen(s) != json_string_length(v)) {
        fail(c, 400, "invalid_value", field, "%s: must not contain NUL characters", field);
        return -1;
    }
    if (n < min || n > max) {
        fail(c, 400, "invalid_value", field, "%s: must be %zu to %zu characters long", field, min, max);
        return -1;
    }
    if (has_control(s)) {
        fail(c, 400, "invalid_value", field, "%s: must not contain control characters", field);
        return -1;
    }
    *out = s;
    return 0;
}

/* A value of a fixed set ("active" | "disabled"...). */
static int body_enum(struct call *c, const char *field, const char *const *values, const char **out)
{
    if (body_string(c, field, false, 1, 64, out) != 0)
        return -1;
    if (*out == NULL)
        return 0;
    for (size_t i = 0; values[i]; i++)
        if (strcmp(values[i], *out) == 0)
            return 0;
    struct leo_buf b = LEO_BUF_INIT;
    for (size_t i = 0; values[i]; i++)
        leo_buf_addf(&b, "%s\"%s\"", i ? ", " : "", values[i]);
    fail(c, 400, "invalid_value", field, "%s: must be one of %s", field, b.p);
    leo_buf_release(&b);
    return -1;
}

static bool slug_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64 || !(islower((unsigned char)s[0]) || isdigit((unsigned char)s[0])))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(islower(ch) || isdigit(ch) || ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* Lower-cases an email address into out; false when it is not plausibly one (one '@' with text on both
 * sides, no spaces or control characters, at most EMAIL_MAX bytes). */
static bool email_normalise(const char *in, char out[EMAIL_MAX + 1])
{
    size_t n = strlen(in);
    if (n < 3 || n > EMAIL_MAX)
        return false;
    const char *at = strchr(in, '@');
    if (at == NULL || at == in || at == in + n - 1 || strchr(at + 1, '@'))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch <= 0x20 || ch == 0x7f)
            return false;
        out[i] = (char)tolower(ch);
    }
    out[n] = '\0';
    return true;
}

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return n > 0;
}

/* The value of n (at most 9) decimal digits, or -1. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Strict RFC 3339 date-time ("2026-01-31T12:00:00Z", fraction and numeric offset allowed); seconds since
 * the epoch in *t. */
static bool rfc3339_parse(const char *s, time_t *t)
{
    size_t n = strlen(s);
    if (n < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':')
        return false;
    int Y = digits(s, 4), M = digits(s + 5, 2), D = digits(s + 8, 2);
    int h = digits(s + 11, 2), m = digits(s + 14, 2), sec = digits(s + 17, 2);
    if (Y < 1970 || Y > 9999 || M < 1 || M > 12 || D < 1 || D > 31 || h < 0 || h > 23 || m < 0 || m > 59 || sec < 0 ||
        sec > 60)
        return false;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6) {
        int oh = digits(p + 1, 2), om = p[3] == ':' ? digits(p + 4, 2) : -1;
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return false;
        off = (*p == '-' ? -1 : 1) * (oh * 3600L + om * 60L);
        p += 6;
    } else {
        return false;
    }
    if (*p != '\0')
        return false;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (D > mdays[M - 1] || (M == 2 && D == 29 && !((Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0)))
        return false;
    struct tm tm = {
        .tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h, .tm_min = m, .tm_sec = sec > 59 ? 59 : sec};
    *t = timegm(&tm) - off;
    return true;
}

/* The query string: each name of `names` may appear once; values (percent-decoded, in the request's arena)
 * land in the same position of `values` (NULL when absent). 400 on an unknown name, a repeated one or a bad
 * escape. */
static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static char *url_decode(struct leo_arena *a, const char *p, size_t n)
{
    char *out = leo_arena_alloc(a, n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%') {
            int hi = n - i >= 3 ? hexval(p[i + 1]) : -1, lo = n - i >= 3 ? hexval(p[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return NULL;
            ch = (char)(hi << 4 | lo);
            i += 2;
        }
        out[o++] = ch;
    }
    out[o] = '\0';
    return out;
}

static int query_params(struct call *c, const char *const *names, const char **values)
{
    for (size_t i = 0; names[i]; i++)
        values[i] = NULL;
    struct leo_str q = c->req->query;
    size_t i = 0;
    while (i < q.len) {
        size_t end = i;
        while (end < q.len && q.p[end] != '&')
            end++;
        if (end > i) {
            const char *eq = memchr(q.p + i, '=', end - i);
            size_t klen = eq ? (size_t)(eq - (q.p + i)) : end - i;
            char *k = url_decode(&c->req->arena, q.p + i, klen);
            char *v = eq ? url_decode(&c->req->arena, eq + 1, (size_t)(q.p + end - eq - 1)) : "";
            if (k == NULL || v == NULL) {
                fail(c, 400, "invalid_value", k, "malformed query string");
                return -1;
            }
            size_t j = 0;
            while (names[j] && strcmp(names[j], k) != 0)
                j++;
            if (names[j] == NULL) {
                fail(c, 400, "unknown_parameter", k, "%s: unknown query parameter", k);
                return -1;
            }
            if (values[j]) {
                fail(c, 400, "invalid_value", k, "%s: given more than once", k);
                return -1;
            }
            if (has_control(v)) {
                fail(c, 400, "invalid_value", k, "%s: must not contain control characters", k);
                return -1;
            }
            values[j] = v;
        }
        i = end + 1;
    }
    return 0;
}

/* limit: 1..PAGE_MAX, default PAGE_DEFAULT; written as text with one more row than the page (to know whether
 * another page follows). */
static int page_limit(struct call *c, const char *v, int *limit, char text[16])
{
    *limit = PAGE_DEFAULT;
    if (v) {
        int n = (int)strlen(v) <= 3 ? digits(v, (int)strlen(v)) : -1;
        if (v[0] == '\0' || n < 1 || n > PAGE_MAX) {
            fail(c, 400, "invalid_value", "limit", "limit: must be a whole number from 1 to %d", PAGE_MAX);
            return -1;
        }
        *limit = n;
    }
    snprintf(text, 16, "%d", *limit + 1);
    return 0;
}

/* Cursors are opaque to clients: URL-safe base64 of "<created_at in µs>,<uuid>" (or "<id>" for the audit
 * log). */
static void cursor_encode(const char *plain, struct leo_buf *out)
{
    size_t n = strlen(plain);
    char enc[128];
    sodium_bin2base64(enc, sizeof(enc), (const unsigned char *)plain, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    leo_buf_adds(out, enc);
}

static bool cursor_decode(const char *v, char *plain, size_t size)
{
    size_t n = 0;
    if (strlen(v) > 100 || sodium_base642bin((unsigned char *)plain, size - 1, v, strlen(v), NULL, &n, NULL,
                                             sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return false;
    plain[n] = '\0';
    return true;
}

/* Splits a keyset cursor into its two parameters (written into us[24] and id[37]); NULLs when absent. */
static int keyset_cursor(struct call *c, const char *v, char us[24], char id[LEO_UUID_TEXT_LEN + 1], const char **p_us,
                         const char **p_id)
{
    *p_us = *p_id = NULL;
    if (v == NULL)
        return 0;
    char plain[80];
    const char *comma;
    if (!cursor_decode(v, plain, sizeof(plain)) || (comma = strchr(plain, ',')) == NULL ||
        (size_t)(comma - plain) >= 24 || comma == plain || !leo_uuid_valid(leo_str_c(comma + 1))) {
        fail(c, 400, "invalid_value", "cursor", "cursor: not a cursor from this list");
        return -1;
    }
    size_t n = (size_t)(comma - plain);
    if (!all_digits(plain, n) && !(n > 1 && plain[0] == '-' && all_digits(plain + 1, n - 1))) {
        fail(c, 400, "invalid_value", "cursor", "cursor: not a cursor from this list");
        return -1;
    }
    memcpy(us, plain, n);
    us[n] = '\0';
    memcpy(id, comma + 1, LEO_UUID_TEXT_LEN + 1);
    *p_us = us;
    *p_id = id;
    return 0;
}

/* Writes {"data":[rows...],"next_cursor":...} for a keyset page: column 0 of each row is the object's JSON,
 * columns 1 and 2 its cursor fields (or column 1 alone when cursor_cols is 1). Rows beyond limit only say
 * that another page exists. */
static void respond_page(struct call *c, PGresult *res, int limit, int cursor_cols, json_t *(*decorate)(json_t *))
{
    int n = PQntuples(res);
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_adds(&b, "{\"data\":[");
    int shown = 0;
    for (int i = 0; i < n && shown < limit; i++) {
        /* a row without an id is the LEFT JOIN of a tenant that has no keys */
        if (PQgetisnull(res, i, 0) || (cursor_cols == 2 && PQgetisnull(res, i, 2)))
            continue;
        if (shown)
            leo_buf_addch(&b, ',');
        /* re-encoded so every response has the same compact form (PostgreSQL's json text has spaces) */
        json_t *j = json_loads(PQgetvalue(res, i, 0), 0, NULL);
        if (j && decorate)
            j = decorate(j);
        char *s = j ? json_dumps(j, DUMP_ORDERED) : NULL;
        json_decref(j);
        leo_buf_adds(&b, s ? s : "null");
        free(s);
        shown++;
    }
    leo_buf_adds(&b, "],\"next_cursor\":");
    if (n > limit) {
        int last = limit - 1;
        char plain[80];
        if (cursor_cols == 2)
            snprintf(plain, sizeof(plain), "%s,%s", PQgetvalue(res, last, 1), PQgetvalue(res, last, 2));
        else
            snprintf(plain, sizeof(plain), "%s", PQgetvalue(res, last, 1));
        leo_buf_addch(&b, '"');
        cursor_encode(plain, &b);
        leo_buf_addch(&b, '"');
    } else {
        leo_buf_adds(&b, "null");
    }
    leo_buf_addch(&b, '}');
    respond(c, 200, b.p, b.len);
    leo_buf_release(&b);
}

/* A JSON array of the tenants for which the caller holds perm, or NULL when a global role grants it for
 * all. The caller frees the string (leo_free). */
static char *allowed_tenants(struct call *c, unsigned perm)
{
    if (leo_principal_can(&c->who, perm, NULL))
        return NULL;
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_addch(&b, '[');
    size_t n = 0;
    for (size_t i = 0; i < c->who.nmemberships; i++) {
        const struct leo_membership *m = &c->who.memberships[i];
        if (m->tenant_id[0] && (leo_role_perms(m->role) & perm) == perm)
            leo_buf_addf(&b, "%s\"%s\"", n++ ? "," : "", m->tenant_id);
    }
    leo_buf_addch(&b, ']');
    return leo_buf_detach(&b, NULL);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Authentication                                                                                          */

static void dispatch_route(struct call *c);

static void auth_done(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQntuples(r->res) != 1) {
        fail(c, 401, "invalid_session", NULL, "the session is unknown, expired or revoked: sign in again");
        return;
    }
    PGresult *res = r->res;
    snprintf(c->who.user_id, sizeof(c->who.user_id), "%s", PQgetvalue(res, 0, 0));
    snprintf(c->who.email, sizeof(c->who.email), "%s", PQgetvalue(res, 0, 1));
    snprintf(c->session_expires, sizeof(c->session_expires), "%s", PQgetvalue(res, 0, 2));
    snprintf(c->user_created_at, sizeof(c->user_created_at), "%s", PQgetvalue(res, 0, 3));
    snprintf(c->actor, sizeof(c->actor), "user:%s", c->who.user_id);
    json_t *ms = json_loads(PQgetvalue(res, 0, 4), 0, NULL);
    size_t n = json_is_array(ms) ? json_array_size(ms) : 0;
    c->who.memberships = leo_calloc(n ? n : 1, sizeof(struct leo_membership));
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(ms, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *tenant = json_string_value(json_object_get(m, "tenant_id"));
        int rr = role ? leo_role_parse(leo_str_c(role)) : -1;
        if (rr < 0)
            continue; /* a role this binary does not know grants nothing */
        struct leo_membership *dst = &c->who.memberships[c->who.nmemberships++];
        dst->role = (enum leo_role)rr;
        snprintf(dst->tenant_id, sizeof(dst->tenant_id), "%s", tenant ? tenant : "");
    }
    json_decref(ms);
    c->authenticated = true;
    dispatch_route(c);
}

/* An admin API token authenticates as a principal with the token's one role (and tenant): the same permission
 * table as a session, and the token, not a user, as the actor of what it writes. */
static void token_auth_done(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    int role = PQntuples(r->res) == 1 ? leo_role_parse(leo_str_c(PQgetvalue(r->res, 0, 1))) : -1;
    if (role < 0) {
        fail(c, 401, "invalid_session", NULL, "the API token is unknown, expired or revoked");
        return;
    }
    snprintf(c->token_id, sizeof(c->token_id), "%s", PQgetvalue(r->res, 0, 0));
    snprintf(c->actor, sizeof(c->actor), "token:%s", c->token_id);
    snprintf(c->session_expires, sizeof(c->session_expires), "%s", PQgetvalue(r->res, 0, 3));
    c->who.memberships = leo_calloc(1, sizeof(struct leo_membership));
    c->who.memberships[0].role = (enum leo_role)role;
    snprintf(c->who.memberships[0].tenant_id, sizeof(c->who.memberships[0].tenant_id), "%s", PQgetvalue(r->res, 0, 2));
    c->who.nmemberships = 1;
    c->authenticated = true;
    dispatch_route(c);
}

/* Looks up the bearer token's session (or admin API token), then continues with the route. */
static void authenticate(struct call *c)
{
    const struct leo_http_header *h = leo_http_header_find(c->req, "authorization");
    struct leo_str v = h ? leo_str_trim(h->value) : (struct leo_str){NULL, 0};
    if (v.len < 7 || strncasecmp(v.p, "Bearer ", 7) != 0) {
        fail(c, 401, "missing_session", NULL, "authentication required: send Authorization: Bearer <token>");
        return;
    }
    struct leo_str token = leo_str_trim(leo_str_n(v.p + 7, v.len - 7));
    leo_session_token_hash_hex(token, c->token_hash);
    if (leo_token_has_prefix(token, LEO_ADMIN_TOKEN_PREFIX)) {
        /* the keyed hash first; the unkeyed one finds (and upgrades) a token stored before keyed hashes */
        char keyed[2 * LEO_SESSION_HASH_BYTES + 1];
        leo_admin_token_hash_hex(c->api->token_key, token, keyed);
        const char *params[] = {keyed, c->token_hash};
        run_query(c, S_AUTH_TOKEN, params, 2, token_auth_done);
        return;
    }
    const char *params[] = {c->token_hash};
    run_query(c, S_AUTH, params, 1, auth_done);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Login, logout, me                                                                                        */

static void login_ok_done(struct call *c, const struct leo_db_result *r)
{
    if (r->err || PQntuples(r->res) != 1) {
        if (r->err)
            fail_db(c, r);
        else
            fail(c, 401, "invalid_credentials", NULL, "invalid email or password");
        return;
    }
    json_t *j = json_pack("{s:s,s:s,s:{s:s,s:s}}", "token", c->secret, "expires_at", PQgetvalue(r->res, 0, 0), "user",
                          "id", c->user_id, "email", c->email);
    sodium_memzero(c->secret, sizeof(c->secret));
    respond_json(c, 200, j);
}

static void login_fail_done(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    fail(c, 401, "invalid_credentials", NULL, "invalid email or password");
}

static void login_verify(struct call *c)
{
    c->verified = leo_password_verify(c->pwhash, leo_str_n(c->password, c->password_len));
}

static void login_verified(struct call *c)
{
    sodium_memzero(c->password, c->password_len);
    if (!c->verified) {
        const char *params[] = {c->email, c->req->remote_addr};
        run_query(c, S_LOGIN_FAIL, params, 2, login_fail_done);
        return;
    }
    char token_hash[2 * LEO_SESSION_HASH_BYTES + 1], ttl[16];
    _Static_assert(sizeof(((struct call *)0)->secret) > LEO_SESSION_TOKEN_LEN, "secret buffer too small");
    leo_session_token_new(c->secret);
    leo_session_token_hash_hex(leo_str_c(c->secret), token_hash);
    snprintf(ttl, sizeof(ttl), "%u", c->api->session_ttl_s);
    const char *params[] = {token_hash, c->user_id, ttl, c->req->remote_addr, c->email};
    run_query(c, S_LOGIN_OK, params, 5, login_ok_done);
}

static void login_looked_up(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (!PQgetisnull(r->res, 0, 2)) {
        long wait = strtol(PQgetvalue(r->res, 0, 2), NULL, 10);
        char retry[24];
        snprintf(retry, sizeof(retry), "%ld", wait < 1 ? 1 : wait > THROTTLE_WINDOW_S ? THROTTLE_WINDOW_S : wait);
        struct leo_http_header h = {LEO_STR_LIT("Retry-After"), leo_str_c(retry)};
        fail_extra(c, 429, "too_many_attempts", NULL, &h, 1,
                   "too many failed sign-in attempts for this account from this address: try again in %s seconds",
                   retry);
        return;
    }
    if (!PQgetisnull(r->res, 0, 0)) {
        snprintf(c->user_id, sizeof(c->user_id), "%s", PQgetvalue(r->res, 0, 0));
        c->pwhash = leo_strdup(PQgetvalue(r->res, 0, 1));
    }
    /* an unknown account is verified against a dummy hash: same time, same answer */
    run_work(c, login_verify, login_verified);
}

static void h_login(struct call *c)
{
    static const char *const fields[] = {"email", "password", NULL};
    const char *email, *password;
    if (body_fields(c, fields) != 0 || body_string(c, "email", true, 1, EMAIL_MAX, &email) != 0)
        return;
    json_t *pw = json_object_get(c->body, "password");
    if (pw == NULL || json_is_null(pw)) {
        fail(c, 400, "missing_field", "password", "password: required");
        return;
    }
    if (!json_is_string(pw)) {
        fail(c, 400, "invalid_type", "password", "password: expected a string");
        return;
    }
    password = json_string_value(pw);
    size_t plen = json_string_length(pw);
    if (plen > LEO_PASSWORD_MAX) {
        fail(c, 400, "invalid_value", "password", "password: must be at most %d bytes long", LEO_PASSWORD_MAX);
        return;
    }
    if (!email_normalise(email, c->email)) {
        fail(c, 400, "invalid_value", "email", "email: not an email address");
        return;
    }
    c->password = leo_malloc(plen + 1);
    memcpy(c->password, password, plen + 1);
    c->password_len = plen;
    const char *params[] = {c->email, c->req->remote_addr};
    run_query(c, S_LOGIN_LOOKUP, params, 2, login_looked_up);
}

static void logout_done(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond(c, 204, NULL, 0);
}

static void h_logout(struct call *c)
{
    if (c->token_id[0]) {
        fail(c, 400, "invalid_value", NULL,
             "logout ends a session; an API token is revoked with POST /admin/v1/tokens/{id}/revoke");
        return;
    }
    const char *params[] = {c->token_hash, c->who.user_id};
    run_query(c, S_LOGOUT, params, 2, logout_done);
}

static void h_me(struct call *c)
{
    json_t *ms = json_array();
    for (size_t i = 0; i < c->who.nmemberships; i++) {
        const struct leo_membership *m = &c->who.memberships[i];
        json_array_append_new(ms, json_pack("{s:s,s:s?}", "role", leo_role_name(m->role), "tenant_id",
                                            m->tenant_id[0] ? m->tenant_id : NULL));
    }
    if (c->token_id[0]) {
        respond_json(c, 200,
                     json_pack("{s:n,s:o,s:{s:s,s:s?}}", "user", "memberships", ms, "token", "id", c->token_id,
                               "expires_at", c->session_expires[0] ? c->session_expires : NULL));
        return;
    }
    json_t *j =
        json_pack("{s:{s:s,s:s,s:s},s:o,s:{s:s}}", "user", "id", c->who.user_id, "email", c->who.email, "created_at",
                  c->user_created_at, "memberships", ms, "session", "expires_at", c->session_expires);
    respond_json(c, 200, j);
}

/* Prometheus text for the daemon's own series (the usage consumer's, docs/usage.md). Public like /health: it
 * carries counts only, never a tenant, key or secret. */
static void h_metrics(struct call *c)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_metrics_render(&b);
    struct leo_http_header h[] = {
        {LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/plain; version=0.0.4; charset=utf-8")},
        {LEO_STR_LIT("Cache-Control"), LEO_STR_LIT("no-store")},
    };
    access_log(c, 200);
    leo_http_respond(c->req, 200, h, 2, b.p, b.len);
    leo_buf_release(&b);
}

static void h_health(struct call *c)
{
    unsigned up = leo_db_connected(c->api->db);
    json_t *j = json_pack("{s:s,s:i}", "status", up ? "ok" : "database_unavailable", "database_connections", up);
    respond_json(c, up ? 200 : 503, j);
}

/* The OpenAPI document of this API (controlplane/openapi.json, compiled in). Public like /health: it describes
 * the routes, never data. */
static void h_openapi(struct call *c)
{
    respond(c, 200, leo_openapi_json, leo_openapi_json_len);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Tenants                                                                                                 */

static const char *const tenant_statuses[] = {"active", "disabled", NULL};

static void one_object_done(struct call *c, const struct leo_db_result *r, int status, const char *what)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQntuples(r->res) != 1 || PQgetisnull(r->res, 0, 0)) {
        fail(c, 404, "not_found", NULL, "%s not found", what);
        return;
    }
    json_t *j = json_loads(PQgetvalue(r->res, 0, 0), 0, NULL);
    if (j == NULL) {
        fail(c, 500, "internal_error", NULL, "internal error");
        return;
    }
    respond_json(c, status, j);
}

static void tenant_created(struct call *c, const struct leo_db_result *r)
{
    if (r->err == 0)
        leo_snapshot_changed();
    one_object_done(c, r, 201, "tenant");
}

static void tenant_found(struct call *c, const struct leo_db_result *r)
{
    one_object_done(c, r, 200, "tenant");
}

static void tenant_patched(struct call *c, const struct leo_db_result *r)
{
    if (r->err == 0)
        leo_snapshot_changed();
    one_object_done(c, r, 200, "tenant");
}

static void tenants_listed(struct call *c, const struct leo_db_result *r);

static void h_tenants_list(struct call *c)
{
    static const char *const names[] = {"limit", "cursor", NULL};
    const char *v[2], *p_us, *p_id;
    char lim[16], us[24], id[LEO_UUID_TEXT_LEN + 1];
    int limit;
    if (query_params(c, names, v) != 0 || page_limit(c, v[0], &limit, lim) != 0 ||
        keyset_cursor(c, v[1], us, id, &p_us, &p_id) != 0)
        return;
    char *allowed = allowed_tenants(c, LEO_PERM_TENANTS_READ);
    const char *params[] = {allowed, p_us, p_id, lim};
    c->limit = limit; /* the page size, for the continuation */
    run_query(c, S_TENANT_LIST, params, 4, tenants_listed);
    leo_free(allowed);
}

static void tenants_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond_page(c, r->res, c->limit, 2, NULL);
}

struct key_fields {
    const char *name;
    const char *status;
    bool set_models, set_limits, set_expires, set_providers;
    char *models; /* JSON array text or NULL (all models); jansson's allocation */
    char *providers; /* JSON array text or NULL (all providers); jansson's allocation */
    char *limits; /* JSON object text; jansson's allocation */
    const char *expires_at;
};

static void key_fields_release(struct key_fields *f)
{
    free(f->models);
    free(f->providers);
    free(f->limits);
}

/* The gateway's quota members (docs/configuration.md): name, whether a fraction is allowed, the maximum. */
static const struct {
    const char *name;
    bool fraction;
    double max;
} limit_fields[] = {
    {"rpm", false, 1e15},
    {"tpm", false, 1e15},
    {"tokens_per_day", false, 1e15},
    {"tokens_per_month", false, 1e15},
    {"usd_per_day", true, 1e12},
    {"usd_per_month", true, 1e12},
    {"concurrency", false, 1e6},
};

static int key_limits(struct call *c, json_t *v, struct key_fields *f)
{
    if (!json_is_object(v)) {
        fail(c, 400, "invalid_type", "limits", "limits: expected an object");
        return -1;
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        size_t i = 0, n = sizeof(limit_fields) / sizeof(limit_fields[0]);
        while (i < n && strcmp(limit_fields[i].name, k) != 0)
            i++;
        char param[96];
        snprintf(param, sizeof(param), "limits.%s", k);
        if (i == n) {
            fail(c, 400, "unknown_field", param, "%s: unknown field", param);
            return -1;
        }
        if (!json_is_number(x) || (!limit_fields[i].fraction && !json_is_integer(x))) {
            fail(c, 400, "invalid_type", param, "%s: expected %s", param,
                 limit_fields[i].fraction ? "a number" : "a whole number");
            return -1;
        }
        double d = json_number_value(x);
        if (!(d >= 0 && d <= limit_fields[i].max)) {
            fail(c, 400, "invalid_value", param, "%s: must be between 0 and %.0f", param, limit_fields[i].max);
            return -1;
        }
    }
    f->limits = json_dumps(v, DUMP_SORTED);
    f->set_limits = true;
    return 0;
}

static int body_bool(struct call *c, const char *field, const char **out);
static int key_models(struct call *c, json_t *v, struct key_fields *f);

/* Tenant policy (migrations/0010): allow_byok and allow_route_override into *byok and *route ("true", "false",
 * NULL when absent), allowed_models into f (the checks of a key's allowed_models). It decides what every key of
 * the tenant may do at the gateway, so it takes tenants.write from a global role (owner, admin): a tenant role
 * gets 403 for these fields even where it could change the tenant's other fields. */
static int tenant_policy(struct call *c, const char **byok, const char **route, struct key_fields *f)
{
    static const char *const policy[] = {"allow_byok", "allow_route_override", "allowed_models", NULL};
    *byok = *route = NULL;
    for (size_t i = 0; policy[i]; i++) {
        if (json_object_get(c->body, policy[i]) && !leo_principal_can(&c->who, LEO_PERM_TENANTS_WRITE, NULL)) {
            fail(c, 403, "forbidden", policy[i],
                 "%s: tenant policy (allow_byok, allow_route_override, allowed_models) is changed only by a global "
                 "role with tenants.write (owner, admin)",
                 policy[i]);
            return -1;
        }
    }
    if (body_bool(c, "allow_byok", byok) != 0 || body_bool(c, "allow_route_override", route) != 0)
        return -1;
    json_t *v = json_object_get(c->body, "allowed_models");
    return v ? key_models(c, v, f) : 0;
}

static void h_tenant_create(struct call *c)
{
    static const char *const fields[] = {
        "slug", "name", "status", "limits", "allow_byok", "allow_route_override", "allowed_models", NULL};
    const char *slug, *name, *status, *byok, *route;
    if (body_fields(c, fields) != 0 || body_string(c, "slug", true, 1, 64, &slug) != 0)
        return;
    if (!slug_valid(slug)) {
        fail(c, 400, "invalid_value", "slug",
             "slug: 1 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit");
        return;
    }
    if (body_string(c, "name", true, 1, TENANT_NAME_MAX_CHARS, &name) != 0 ||
        body_enum(c, "status", tenant_statuses, &status) != 0)
        return;
    /* tenant-wide quotas: the same members and checks as a key's limits */
    struct key_fields f = {0};
    json_t *jl = json_object_get(c->body, "limits");
    if ((jl && key_limits(c, jl, &f) != 0) || tenant_policy(c, &byok, &route, &f) != 0) {
        key_fields_release(&f);
        return;
    }
    const char *params[] = {slug,
                            name,
                            status ? status : "active",
                            c->actor,
                            f.limits ? f.limits : "{}",
                            byok ? byok : "false",
                            route ? route : "false",
                            f.models};
    run_query(c, S_TENANT_CREATE, params, 8, tenant_created);
    key_fields_release(&f);
}

static void h_tenant_get(struct call *c)
{
    const char *params[] = {c->tenant_id};
    run_query(c, S_TENANT_GET, params, 1, tenant_found);
}

static void h_tenant_patch(struct call *c)
{
    static const char *const fields[] = {"name",           "status", "limits", "allow_byok", "allow_route_override",
                                         "allowed_models", NULL};
    const char *name, *status, *byok, *route;
    if (json_object_get(c->body, "slug")) {
        fail(c, 400, "immutable_field", "slug", "slug: cannot be changed");
        return;
    }
    if (body_fields(c, fields) != 0 || body_string(c, "name", false, 1, TENANT_NAME_MAX_CHARS, &name) != 0 ||
        body_enum(c, "status", tenant_statuses, &status) != 0)
        return;
    struct key_fields f = {0};
    json_t *jl = json_object_get(c->body, "limits");
    if ((jl && key_limits(c, jl, &f) != 0) || tenant_policy(c, &byok, &route, &f) != 0) {
        key_fields_release(&f);
        return;
    }
    if (name == NULL && status == NULL && f.limits == NULL && byok == NULL && route == NULL && !f.set_models) {
        fail(c, 400, "empty_change", NULL,
             "the body changes nothing: give name, status, limits, allow_byok, allow_route_override or allowed_models");
        return;
    }
    char *change = json_dumps(c->body, DUMP_SORTED);
    const char *params[] = {
        c->tenant_id, name, status, c->actor, change, f.limits, byok, route, f.set_models ? "true" : "false", f.models};
    run_query(c, S_TENANT_PATCH, params, 10, tenant_patched);
    free(change);
    key_fields_release(&f);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Users                                                                                                   */

static void user_created(struct call *c, const struct leo_db_result *r)
{
    one_object_done(c, r, 201, "user");
}

static void user_hash(struct call *c)
{
    char out[LEO_PASSWORD_HASH_MAX];
    if (leo_password_hash(leo_str_n(c->password, c->password_len), out) == 0)
        c->pwhash = leo_strdup(out);
    sodium_memzero(out, sizeof(out));
}

static void user_hashed(struct call *c)
{
    sodium_memzero(c->password, c->password_len);
    if (c->pwhash == NULL) {
        leo_error("password hashing failed (out of memory?)");
        fail(c, 500, "internal_error", NULL, "internal error");
        return;
    }
    const char *params[] = {c->email, c->pwhash, c->role, c->body_tenant, c->actor};
    run_query(c, S_USER_CREATE, params, 5, user_created);
}

/* "role" and "tenant_id" of a body that gives someone a role (a user, an invitation, an admin API token):
 * a known role, a tenant id exactly when the role is a tenant role. */
static int body_role(struct call *c, enum leo_role *role, const char **tenant)
{
    const char *name;
    if (body_string(c, "role", true, 1, 64, &name) != 0 || body_string(c, "tenant_id", false, 1, 64, tenant) != 0)
        return -1;
    int r = leo_role_parse(leo_str_c(name));
    if (r < 0) {
        fail(c, 400, "invalid_value", "role",
             "role: must be one of owner, admin, operator, viewer, tenant_admin, tenant_member");
        return -1;
    }
    if (leo_role_is_global((enum leo_role)r) && *tenant) {
        fail(c, 400, "invalid_value", "tenant_id", "tenant_id: must be left out for the global role \"%s\"", name);
        return -1;
    }
    if (!leo_role_is_global((enum leo_role)r) && !*tenant) {
        fail(c, 400, "missing_field", "tenant_id", "tenant_id: required for the tenant role \"%s\"", name);
        return -1;
    }
    if (*tenant && !leo_uuid_valid(leo_str_c(*tenant))) {
        fail(c, 400, "invalid_value", "tenant_id", "tenant_id: not a tenant id");
        return -1;
    }
    *role = (enum leo_role)r;
    return 0;
}

/* body_role, and the caller may grant that role there: what creating a user and inviting one both need. */
static int body_grant(struct call *c, enum leo_role *role, const char **tenant)
{
    if (body_role(c, role, tenant) != 0)
        return -1;
    /* the permission applies to the tenant named in the body (or globally) */
    if (!leo_principal_can(&c->who, LEO_PERM_USERS_WRITE, *tenant)) {
        fail(c, 403, "forbidden", NULL, "this account may not create users %s",
             *tenant ? "in this tenant" : "with global roles");
        return -1;
    }
    if (!leo_principal_can_grant(&c->who, *role, *tenant)) {
        fail(c, 403, "forbidden", "role", "role: this account may not grant the role \"%s\"", leo_role_name(*role));
        return -1;
    }
    return 0;
}

/* "password" of a new account: required, within the password policy; copied into c->password for the hash. */
static int body_password(struct call *c)
{
    json_t *pw = json_object_get(c->body, "password");
    if (pw == NULL || json_is_null(pw)) {
        fail(c, 400, "missing_field", "password", "password: required");
        return -1;
    }
    if (!json_is_string(pw)) {
        fail(c, 400, "invalid_type", "password", "password: expected a string");
        return -1;
    }
    const char *password = json_string_value(pw), *why;
    if (leo_password_policy(leo_str_n(password, json_string_length(pw)), &why) != 0) {
        fail(c, 400, "invalid_value", "password", "password: %s", why);
        return -1;
    }
    c->password_len = json_string_length(pw);
    c->password = leo_malloc(c->password_len + 1);
    memcpy(c->password, password, c->password_len + 1);
    return 0;
}

static void h_user_create(struct call *c)
{
    static const char *const fields[] = {"email", "password", "role", "tenant_id", NULL};
    const char *email, *tenant;
    enum leo_role r;
    if (body_fields(c, fields) != 0 || body_string(c, "email", true, 1, EMAIL_MAX, &email) != 0)
        return;
    if (!email_normalise(email, c->email)) {
        fail(c, 400, "invalid_value", "email", "email: not an email address");
        return;
    }
    if (body_grant(c, &r, &tenant) != 0 || body_password(c) != 0)
        return;
    c->role = leo_role_name((enum leo_role)r);
    c->body_tenant = tenant;
    run_work(c, user_hash, user_hashed);
}

static void users_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond_page(c, r->res, c->limit, 2, NULL);
}

static void h_users_list(struct call *c)
{
    static const char *const names[] = {"limit", "cursor", NULL};
    const char *v[2], *p_us, *p_id;
    char lim[16], us[24], id[LEO_UUID_TEXT_LEN + 1];
    int limit;
    if (query_params(c, names, v) != 0 || page_limit(c, v[0], &limit, lim) != 0 ||
        keyset_cursor(c, v[1], us, id, &p_us, &p_id) != 0)
        return;
    char *allowed = allowed_tenants(c, LEO_PERM_USERS_READ);
    const char *params[] = {allowed, p_us, p_id, lim};
    c->limit = limit;
    run_query(c, S_USER_LIST, params, 4, users_listed);
    leo_free(allowed);
}

/* ------------------------------------------------------------------------------------------------------ */
/* API keys                                                                                                */

/* Adds "masked" ("sk-…abcd") to a key object, made by leo_secret_mask from the stored prefix and last four:
 * the secret itself is gone, so a stand-in with the same first and last characters is masked instead. */
static json_t *key_decorate(json_t *k)
{
    const char *prefix = json_string_value(json_object_get(k, "prefix"));
    const char *last4 = json_string_value(json_object_get(k, "last4"));
    char stand_in[32], masked[32];
    snprintf(stand_in, sizeof(stand_in), "%s.%s", prefix ? prefix : "", last4 ? last4 : "");
    leo_secret_mask(leo_str_c(stand_in), masked, sizeof(masked));
    json_object_set_new(k, "masked", json_string(masked));
    return k;
}

static void respond_key(struct call *c, int status, const char *json, bool with_secret)
{
    json_t *k = json_loads(json, 0, NULL);
    if (k == NULL) {
        fail(c, 500, "internal_error", NULL, "internal error");
        return;
    }
    key_decorate(k);
    if (with_secret)
        json_object_set_new(k, "secret", json_string(c->secret));
    sodium_memzero(c->secret, sizeof(c->secret));
    respond_json(c, status, k);
}

/* The user behind the call, for created_by columns that reference users: NULL when an admin API token made the
 * call (the audit entry names the token). */
static const char *creator_id(const struct call *c)
{
    return c->token_id[0] ? NULL : c->who.user_id;
}

/* Makes a new secret in c->secret and its hash, display prefix and last four. */
static void key_new(struct call *c, char hash[LEO_KEYHASH_TEXT_LEN + 1], char prefix[KEY_DISPLAY_PREFIX + 1],
                    char last4[5])
{
    unsigned char raw[KEY_RANDOM_BYTES];
    randombytes_buf(raw, sizeof(raw));
    memcpy(c->secret, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    sodium_bin2base64(c->secret + sizeof(KEY_PREFIX) - 1, sizeof(c->secret) - (sizeof(KEY_PREFIX) - 1), raw,
                      sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
    size_t n = strlen(c->secret);
    uint8_t h[LEO_KEYHASH_BYTES];
    leo_keyhash(c->api->key_secret, leo_str_n(c->secret, n), h);
    leo_keyhash_format(h, hash);
    memcpy(prefix, c->secret, KEY_DISPLAY_PREFIX);
    prefix[KEY_DISPLAY_PREFIX] = '\0';
    memcpy(last4, c->secret + n - 4, 4);
    last4[4] = '\0';
}

static bool model_name_valid(const char *s)
{
    return s[0] != '\0' && strlen(s) <= MODEL_NAME_MAX && !has_control(s);
}

static bool provider_name_valid(const char *s);

/* A list member: null (every one) or an array of 1 to max names, each valid and listed once; 0, or -1 after
 * answering 400 naming the member or the element at fault. */
static int name_list(struct call *c, json_t *v, const char *member, size_t max, bool (*valid)(const char *),
                     const char *what)
{
    if (json_is_null(v))
        return 0;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > max) {
        fail(c, 400, "invalid_value", member, "%s: expected null or an array of 1 to %zu %s names", member, max,
             what);
        return -1;
    }
    size_t i;
    json_t *m;
    json_array_foreach(v, i, m)
    {
        char param[48];
        snprintf(param, sizeof(param), "%s[%zu]", member, i);
        const char *s = json_string_value(m);
        if (s == NULL || strlen(s) != json_string_length(m) || !valid(s)) {
            if (valid == provider_name_valid)
                fail(c, 400, "invalid_value", param,
                     "%s: expected a provider name (1 to 64 letters, digits, '.', '_' or '-')", param);
            else
                fail(c, 400, "invalid_value", param, "%s: expected a model name of 1 to %d characters", param,
                     MODEL_NAME_MAX);
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(json_string_value(json_array_get(v, j)), s) == 0) {
                fail(c, 400, "invalid_value", param, "%s: \"%s\" is listed twice", param, s);
                return -1;
            }
        }
    }
    return 0;
}

/* The members a key create or update may carry, checked and serialised for the statement. */
static int key_models(struct call *c, json_t *v, struct key_fields *f)
{
    f->set_models = true;
    if (name_list(c, v, "allowed_models", MODELS_MAX, model_name_valid, "model") != 0)
        return -1;
    if (!json_is_null(v))
        f->models = json_dumps(v, DUMP_SORTED);
    return 0;
}

/* allowed_providers: null (every provider) or provider names, each listed once. Whether each names a provider is
 * checked by the statement that writes the key (MISSING_PROVIDER), which answers through key_provider_missing. */
static int key_providers(struct call *c, json_t *v, struct key_fields *f)
{
    f->set_providers = true;
    if (name_list(c, v, "allowed_providers", PROVIDERS_MAX, provider_name_valid, "provider") != 0)
        return -1;
    if (!json_is_null(v))
        f->providers = json_dumps(v, JSON_COMPACT);
    return 0;
}

/* The statements that write a key answer, in column col, the index of the first allowed_providers name that no
 * provider has (NULL when all exist). Sends the 400 naming it and returns true when there is one. */
static bool key_provider_missing(struct call *c, const struct leo_db_result *r, int col)
{
    if (PQnfields(r->res) <= col || PQgetisnull(r->res, 0, col))
        return false;
    size_t i = strtoul(PQgetvalue(r->res, 0, col), NULL, 10);
    const char *name = json_string_value(json_array_get(json_object_get(c->body, "allowed_providers"), i));
    char param[48];
    snprintf(param, sizeof(param), "allowed_providers[%zu]", i);
    fail(c, 400, "invalid_value", param, "%s: no provider is named \"%s\"", param, name ? name : "?");
    return true;
}

static int key_expiry(struct call *c, json_t *v, struct key_fields *f)
{
    f->set_expires = true;
    if (json_is_null(v))
        return 0;
    time_t t;
    const char *s = json_string_value(v);
    if (s == NULL || !rfc3339_parse(s, &t)) {
        fail(c, 400, "invalid_value", "expires_at",
             "expires_at: expected an RFC 3339 date-time such as \"2030-01-31T00:00:00Z\", or null");
        return -1;
    }
    if (t <= time(NULL)) {
        fail(c, 400, "invalid_value", "expires_at", "expires_at: must be in the future");
        return -1;
    }
    f->expires_at = s;
    return 0;
}

static int key_body(struct call *c, bool create, struct key_fields *f)
{
    static const char *const create_fields[] = {"name", "expires_at", "allowed_models", "allowed_providers", "limits",
                                                NULL};
    static const char *const patch_fields[] = {"name",   "status", "expires_at", "allowed_models", "allowed_providers",
                                               "limits", NULL};
    static const char *const statuses[] = {"active", "disabled", NULL};
    memset(f, 0, sizeof(*f));
    if (body_fields(c, create ? create_fields : patch_fields) != 0 ||
        body_string(c, "name", create, 1, NAME_MAX_CHARS, &f->name) != 0)
        return -1;
    if (!create && body_enum(c, "status", statuses, &f->status) != 0)
        return -1;
    json_t *v;
    if ((v = json_object_get(c->body, "allowed_models")) && key_models(c, v, f) != 0)
        return -1;
    if ((v = json_object_get(c->body, "allowed_providers")) && key_providers(c, v, f) != 0)
        return -1;
    if ((v = json_object_get(c->body, "limits")) && key_limits(c, v, f) != 0)
        return -1;
    if ((v = json_object_get(c->body, "expires_at")) && key_expiry(c, v, f) != 0)
        return -1;
    return 0;
}

static void key_created(struct call *c, const struct leo_db_result *r)
{
    if (r->err == 0)
        leo_snapshot_changed();
    if (r->err) {
        sodium_memzero(c->secret, sizeof(c->secret));
        fail_db(c, r);
        return;
    }
    if (key_provider_missing(c, r, 1)) {
        sodium_memzero(c->secret, sizeof(c->secret));
        return;
    }
    respond_key(c, 201, PQgetvalue(r->res, 0, 0), true);
}

static void h_key_create(struct call *c)
{
    struct key_fields f;
    if (key_body(c, true, &f) != 0) {
        key_fields_release(&f);
        return;
    }
    char hash[LEO_KEYHASH_TEXT_LEN + 1], prefix[KEY_DISPLAY_PREFIX + 1], last4[5];
    key_new(c, hash, prefix, last4);
    const char *params[] = {c->tenant_id,  f.name,       hash,     prefix,
                            last4,         f.expires_at, f.models, f.limits ? f.limits : "{}",
                            creator_id(c), c->actor,     f.providers};
    run_query(c, S_KEY_CREATE, params, 11, key_created);
    key_fields_release(&f);
}

static void key_found(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQntuples(r->res) != 1) {
        fail(c, 404, "not_found", NULL, "key not found");
        return;
    }
    respond_key(c, 200, PQgetvalue(r->res, 0, 0), false);
}

static void h_key_get(struct call *c)
{
    const char *params[] = {c->tenant_id, c->key_id};
    run_query(c, S_KEY_GET, params, 2, key_found);
}

static void keys_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQntuples(r->res) == 0) {
        fail(c, 404, "not_found", NULL, "tenant not found");
        return;
    }
    respond_page(c, r->res, c->limit, 2, key_decorate);
}

static void h_keys_list(struct call *c)
{
    static const char *const names[] = {"limit", "cursor", NULL};
    const char *v[2], *p_us, *p_id;
    char lim[16], us[24], id[LEO_UUID_TEXT_LEN + 1];
    int limit;
    if (query_params(c, names, v) != 0 || page_limit(c, v[0], &limit, lim) != 0 ||
        keyset_cursor(c, v[1], us, id, &p_us, &p_id) != 0)
        return;
    const char *params[] = {c->tenant_id, p_us, p_id, lim};
    c->limit = limit;
    run_query(c, S_KEY_LIST, params, 4, keys_listed);
}

/* The statements that change a key return (the key or NULL, its status before or NULL). */
static void key_changed(struct call *c, const struct leo_db_result *r, bool with_secret)
{
    if (r->err == 0)
        leo_snapshot_changed();
    if (r->err) {
        sodium_memzero(c->secret, sizeof(c->secret));
        fail_db(c, r);
        return;
    }
    if (PQgetisnull(r->res, 0, 1)) {
        fail(c, 404, "not_found", NULL, "key not found");
        return;
    }
    if (key_provider_missing(c, r, 2))
        return;
    if (PQgetisnull(r->res, 0, 0)) {
        fail(c, 409, "key_revoked", NULL, "the key is revoked and cannot be changed");
        return;
    }
    respond_key(c, 200, PQgetvalue(r->res, 0, 0), with_secret);
}

static void key_updated(struct call *c, const struct leo_db_result *r)
{
    key_changed(c, r, false);
}

static void key_rotated(struct call *c, const struct leo_db_result *r)
{
    key_changed(c, r, true);
}

static void h_key_patch(struct call *c)
{
    struct key_fields f;
    if (key_body(c, false, &f) != 0) {
        key_fields_release(&f);
        return;
    }
    if (!f.name && !f.status && !f.set_models && !f.set_providers && !f.set_limits && !f.set_expires) {
        fail(c, 400, "empty_change", NULL,
             "the body changes nothing: give name, status, expires_at, allowed_models, allowed_providers or limits");
        key_fields_release(&f);
        return;
    }
    char *change = json_dumps(c->body, DUMP_SORTED);
    const char *params[] = {c->tenant_id,
                            c->key_id,
                            f.name,
                            f.status,
                            f.set_models ? "true" : "false",
                            f.models,
                            f.limits,
                            f.set_expires ? "true" : "false",
                            f.expires_at,
                            c->actor,
                            change,
                            f.set_providers ? "true" : "false",
                            f.providers};
    run_query(c, S_KEY_PATCH, params, 13, key_updated);
    free(change);
    key_fields_release(&f);
}

static void h_key_revoke(struct call *c)
{
    if (json_object_size(c->body) != 0) {
        const char *k = json_object_iter_key(json_object_iter(c->body));
        fail(c, 400, "unknown_field", k, "%s: unknown field", k);
        return;
    }
    const char *params[] = {c->tenant_id, c->key_id, c->actor};
    run_query(c, S_KEY_REVOKE, params, 3, key_updated);
}

static void h_key_rotate(struct call *c)
{
    if (json_object_size(c->body) != 0) {
        const char *k = json_object_iter_key(json_object_iter(c->body));
        fail(c, 400, "unknown_field", k, "%s: unknown field", k);
        return;
    }
    char hash[LEO_KEYHASH_TEXT_LEN + 1], prefix[KEY_DISPLAY_PREFIX + 1], last4[5];
    key_new(c, hash, prefix, last4);
    const char *params[] = {c->tenant_id, c->key_id, hash, prefix, last4, creator_id(c), c->actor};
    run_query(c, S_KEY_ROTATE, params, 7, key_rotated);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Providers and credentials                                                                               */

/* Providers, credentials, deployments and models are global configuration: providers.read (every global
 * role) reads them, providers.write (owner, admin) changes them; tenant roles get neither. */
#define CREDENTIAL_SECRET_MAX 8192

static const char *const provider_types[] = {"openai", "azure", "anthropic", "gemini", NULL};

static bool provider_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64 || !isalnum((unsigned char)s[0]))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(isalnum(ch) || ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* An optional whole number in [min, max], written as text into out (NULL when absent). */
static int body_uint(struct call *c, json_t *obj, const char *field, const char *param, long long min, long long max,
                     char out[24], const char **p)
{
    json_t *v = json_object_get(obj, field);
    *p = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        fail(c, 400, "invalid_value", param, "%s: expected a whole number from %lld to %lld", param, min, max);
        return -1;
    }
    snprintf(out, 24, "%lld", (long long)json_integer_value(v));
    *p = out;
    return 0;
}

/* An optional boolean: "true", "false" or NULL when absent. */
static int body_bool(struct call *c, const char *field, const char **out)
{
    json_t *v = json_object_get(c->body, field);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        fail(c, 400, "invalid_type", field, "%s: expected true or false", field);
        return -1;
    }
    *out = json_is_true(v) ? "true" : "false";
    return 0;
}

/* http(s)://host[...] without whitespace, as the gateway's configuration requires (gateway/config.c). */
static int body_base_url(struct call *c, bool required, const char **out)
{
    if (body_string(c, "base_url", required, 1, 2048, out) != 0)
        return -1;
    if (*out == NULL)
        return 0;
    const char *s = *out;
    size_t scheme = strncmp(s, "https://", 8) == 0 ? 8 : strncmp(s, "http://", 7) == 0 ? 7 : 0;
    bool ok = scheme != 0 && s[scheme] != '\0' && s[scheme] != '/';
    for (const char *q = s; ok && *q; q++)
        ok = (unsigned char)*q > 0x20 && (unsigned char)*q != 0x7f;
    if (!ok) {
        fail(c, 400, "invalid_value", "base_url", "base_url: must be an http:// or https:// URL with a host");
        return -1;
    }
    return 0;
}

struct provider_fields {
    const char *base_url, *api_version, *enabled;
    bool set_api_version;
    char t[3][24];
    const char *timeouts[3];
};

static int provider_common(struct call *c, bool create, struct provider_fields *f)
{
    static const char *const tnames[] = {"connect_ms", "first_byte_ms", "total_ms"};
    static const long long tmax[] = {600000, 3600000, 86400000};
    memset(f, 0, sizeof(*f));
    if (body_base_url(c, create, &f->base_url) != 0 || body_bool(c, "enabled", &f->enabled) != 0)
        return -1;
    json_t *av = json_object_get(c->body, "api_version");
    if (av) {
        f->set_api_version = true;
        if (body_string(c, "api_version", false, 1, 64, &f->api_version) != 0)
            return -1;
    }
    json_t *t = json_object_get(c->body, "timeouts");
    if (t == NULL || json_is_null(t))
        return 0;
    if (!json_is_object(t)) {
        fail(c, 400, "invalid_type", "timeouts", "timeouts: expected an object");
        return -1;
    }
    const char *k;
    json_t *x;
    json_object_foreach(t, k, x)
    {
        bool known = false;
        for (size_t i = 0; i < 3; i++)
            known = known || strcmp(k, tnames[i]) == 0;
        if (!known) {
            char param[96];
            snprintf(param, sizeof(param), "timeouts.%s", k);
            fail(c, 400, "unknown_field", param, "%s: unknown field", param);
            return -1;
        }
    }
    for (size_t i = 0; i < 3; i++) {
        char param[32];
        snprintf(param, sizeof(param), "timeouts.%s", tnames[i]);
        if (body_uint(c, t, tnames[i], param, 1, tmax[i], f->t[i], &f->timeouts[i]) != 0)
            return -1;
    }
    return 0;
}

static void provider_written(struct call *c, const struct leo_db_result *r, int status)
{
    if (r->err == 0)
        leo_snapshot_changed();
    one_object_done(c, r, status, "provider");
}

static void provider_created(struct call *c, const struct leo_db_result *r)
{
    provider_written(c, r, 201);
}

static void provider_changed(struct call *c, const struct leo_db_result *r)
{
    provider_written(c, r, 200);
}

static void provider_found(struct call *c, const struct leo_db_result *r)
{
    one_object_done(c, r, 200, "provider");
}

static void h_provider_create(struct call *c)
{
    static const char *const fields[] = {"name", "type", "base_url", "api_version", "timeouts", "enabled", NULL};
    const char *name, *type;
    struct provider_fields f;
    if (body_fields(c, fields) != 0 || body_string(c, "name", true, 1, 64, &name) != 0)
        return;
    if (!provider_name_valid(name)) {
        fail(c, 400, "invalid_value", "name",
             "name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit");
        return;
    }
    if (body_enum(c, "type", provider_types, &type) != 0 || provider_common(c, true, &f) != 0)
        return;
    if (type == NULL) {
        fail(c, 400, "missing_field", "type", "type: required");
        return;
    }
    if (strcmp(type, "azure") == 0 && f.api_version == NULL) {
        fail(c, 400, "missing_field", "api_version", "api_version: required for provider type \"azure\"");
        return;
    }
    const char *params[] = {name,          type,          f.base_url,    f.api_version,
                            f.timeouts[0], f.timeouts[1], f.timeouts[2], f.enabled ? f.enabled : "true",
                            c->actor};
    run_query(c, S_PROVIDER_CREATE, params, 9, provider_created);
}

static void providers_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond_page(c, r->res, c->limit, 2, NULL);
}

/* The lists of providers, deployments and models take the same parameters and differ in the statement. */
static void global_list(struct call *c, enum stmt s, query_step next)
{
    static const char *const names[] = {"limit", "cursor", NULL};
    const char *v[2], *p_us, *p_id;
    char lim[16], us[24], id[LEO_UUID_TEXT_LEN + 1];
    int limit;
    if (query_params(c, names, v) != 0 || page_limit(c, v[0], &limit, lim) != 0 ||
        keyset_cursor(c, v[1], us, id, &p_us, &p_id) != 0)
        return;
    const char *params[] = {p_us, p_id, lim};
    c->limit = limit;
    run_query(c, s, params, 3, next);
}

static void h_providers_list(struct call *c)
{
    global_list(c, S_PROVIDER_LIST, providers_listed);
}

static void h_provider_get(struct call *c)
{
    const char *params[] = {c->obj_id};
    run_query(c, S_PROVIDER_GET, params, 1, provider_found);
}

static void h_provider_patch(struct call *c)
{
    static const char *const fields[] = {"base_url", "api_version", "timeouts", "enabled", NULL};
    struct provider_fields f;
    if (json_object_get(c->body, "name") || json_object_get(c->body, "type")) {
        const char *which = json_object_get(c->body, "name") ? "name" : "type";
        fail(c, 400, "immutable_field", which, "%s: cannot be changed", which);
        return;
    }
    if (body_fields(c, fields) != 0 || provider_common(c, false, &f) != 0)
        return;
    if (json_object_size(c->body) == 0) {
        fail(c, 400, "empty_change", NULL, "the body changes nothing: give base_url, api_version, timeouts or enabled");
        return;
    }
    char *change = json_dumps(c->body, DUMP_SORTED);
    const char *params[] = {c->obj_id,     f.base_url,    f.set_api_version ? "true" : "false",
                            f.api_version, f.timeouts[0], f.timeouts[1],
                            f.timeouts[2], f.enabled,     c->actor,
                            change};
    run_query(c, S_PROVIDER_PATCH, params, 10, provider_changed);
    free(change);
}

static void h_provider_delete(struct call *c)
{
    const char *params[] = {c->obj_id, c->actor};
    run_query(c, S_PROVIDER_DELETE, params, 2, provider_changed);
}

static void credential_written(struct call *c, const struct leo_db_result *r, int status)
{
    if (r->err == 0)
        leo_snapshot_changed();
    one_object_done(c, r, status, "credential");
}

static void credential_created(struct call *c, const struct leo_db_result *r)
{
    credential_written(c, r, 201);
}

static void credential_changed(struct call *c, const struct leo_db_result *r)
{
    credential_written(c, r, 200);
}

/* A random (version 4) UUID in canonical text form. */
static void uuid_v4(char out[LEO_UUID_TEXT_LEN + 1])
{
    uint8_t b[16];
    randombytes_buf(b, sizeof(b));
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    char hex[33];
    sodium_bin2hex(hex, sizeof(hex), b, sizeof(b));
    snprintf(out, LEO_UUID_TEXT_LEN + 1, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

/* The secret is sealed here, with the new row's id as associated data, and never stored or logged in clear;
 * the response shows only its masked form. */
static void h_credential_create(struct call *c)
{
    static const char *const fields[] = {"name", "secret", "weight", "enabled", NULL};
    const char *name, *secret, *enabled, *weight;
    char wtext[24];
    if (body_fields(c, fields) != 0 || body_string(c, "name", true, 1, NAME_MAX_CHARS, &name) != 0 ||
        body_string(c, "secret", true, 1, CREDENTIAL_SECRET_MAX, &secret) != 0 ||
        body_uint(c, c->body, "weight", "weight", 1, 1000, wtext, &weight) != 0 ||
        body_bool(c, "enabled", &enabled) != 0)
        return;
    if (c->api->ring.nkeys == 0) {
        fail(c, 503, "master_key_missing", NULL,
             "credentials cannot be stored: the control plane has no master key (LEO_MASTER_KEY)");
        return;
    }
    char id[LEO_UUID_TEXT_LEN + 1], masked[32];
    uuid_v4(id);
    leo_secret_mask(leo_str_c(secret), masked, sizeof(masked));
    struct leo_buf sealed = LEO_BUF_INIT;
    const struct leo_secretbox_key *k = &c->api->ring.keys[0];
    leo_secretbox_seal(k, leo_str_c(secret), leo_str_c(id), &sealed);
    sodium_memzero((char *)secret, strlen(secret)); /* the body's copy; the sealed form is all that goes on */
    const char *params[] = {
        id, c->obj_id, name, sealed.p, k->id, masked, weight ? weight : "1", enabled ? enabled : "true", c->actor};
    run_query(c, S_CRED_CREATE, params, 9, credential_created);
    leo_buf_release(&sealed);
}

static void credentials_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQntuples(r->res) == 0) {
        fail(c, 404, "not_found", NULL, "provider not found");
        return;
    }
    respond_page(c, r->res, c->limit, 2, NULL);
}

static void h_credentials_list(struct call *c)
{
    static const char *const names[] = {"limit", "cursor", NULL};
    const char *v[2], *p_us, *p_id;
    char lim[16], us[24], id[LEO_UUID_TEXT_LEN + 1];
    int limit;
    if (query_params(c, names, v) != 0 || page_limit(c, v[0], &limit, lim) != 0 ||
        keyset_cursor(c, v[1], us, id, &p_us, &p_id) != 0)
        return;
    const char *params[] = {c->obj_id, p_us, p_id, lim};
    c->limit = limit;
    run_query(c, S_CRED_LIST, params, 4, credentials_listed);
}

static void h_credential_patch(struct call *c)
{
    static const char *const fields[] = {"name", "weight", "enabled", NULL};
    const char *name, *enabled, *weight;
    char wtext[24];
    if (json_object_get(c->body, "secret")) {
        fail(c, 400, "immutable_field", "secret", "secret: cannot be changed; create a new credential instead");
        return;
    }
    if (body_fields(c, fields) != 0 || body_string(c, "name", false, 1, NAME_MAX_CHARS, &name) != 0 ||
        body_uint(c, c->body, "weight", "weight", 1, 1000, wtext, &weight) != 0 ||
        body_bool(c, "enabled", &enabled) != 0)
        return;
    if (!name && !weight && !enabled) {
        fail(c, 400, "empty_change", NULL, "the body changes nothing: give name, weight or enabled");
        return;
    }
    char *change = json_dumps(c->body, DUMP_SORTED);
    const char *params[] = {c->obj_id, c->key_id, name, weight, enabled, c->actor, change};
    run_query(c, S_CRED_PATCH, params, 7, credential_changed);
    free(change);
}

static void h_credential_delete(struct call *c)
{
    const char *params[] = {c->obj_id, c->key_id, c->actor};
    run_query(c, S_CRED_DELETE, params, 3, credential_changed);
}

/* ---- deployments ---- */

static void deployment_written(struct call *c, const struct leo_db_result *r, int status)
{
    if (r->err == 0)
        leo_snapshot_changed();
    one_object_done(c, r, status, "deployment");
}

static void deployment_created(struct call *c, const struct leo_db_result *r)
{
    deployment_written(c, r, 201);
}

static void deployment_changed(struct call *c, const struct leo_db_result *r)
{
    deployment_written(c, r, 200);
}

static void deployment_found(struct call *c, const struct leo_db_result *r)
{
    one_object_done(c, r, 200, "deployment");
}

/* Model names as the gateway's configuration takes them: 1 to 128 printable ASCII characters without spaces,
 * quotes or backslashes. */
static int body_model_name(struct call *c, const char *field, const char **out)
{
    if (body_string(c, field, true, 1, MODEL_NAME_MAX, out) != 0)
        return -1;
    for (const unsigned char *p = (const unsigned char *)*out; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f || *p == '"' || *p == '\\') {
            fail(c, 400, "invalid_value", field,
                 "%s: 1 to %d printable ASCII characters without spaces, quotes or backslashes", field, MODEL_NAME_MAX);
            return -1;
        }
    }
    return 0;
}

/* A deployment's limits: the provider's rpm, tpm and concurrency (the gateway's deployment quota). */
static int deployment_limits(struct call *c, char **out)
{
    static const struct {
        const char *name;
        double max;
    } fields[] = {{"rpm", 1e15}, {"tpm", 1e15}, {"concurrency", 1e6}};
    json_t *v = json_object_get(c->body, "limits");
    *out = NULL;
    if (v == NULL)
        return 0;
    if (!json_is_object(v)) {
        fail(c, 400, "invalid_type", "limits", "limits: expected an object");
        return -1;
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        size_t i = 0, n = sizeof(fields) / sizeof(fields[0]);
        while (i < n && strcmp(fields[i].name, k) != 0)
            i++;
        char param[96];
        snprintf(param, sizeof(param), "limits.%s", k);
        if (i == n) {
            fail(c, 400, "unknown_field", param, "%s: unknown field (known: rpm, tpm, concurrency)", param);
            return -1;
        }
        if (!json_is_integer(x) || json_integer_value(x) < 0 || (double)json_integer_value(x) > fields[i].max) {
            fail(c, 400, "invalid_value", param, "%s: expected a whole number from 0 to %.0f", param, fields[i].max);
            return -1;
        }
    }
    *out = json_dumps(v, DUMP_SORTED);
    return 0;
}

static void h_deployment_create(struct call *c)
{
    static const char *const fields[] = {"provider_id", "model", "limits", "enabled", NULL};
    const char *provider, *model, *enabled;
    char *limits = NULL;
    if (body_fields(c, fields) != 0 || body_string(c, "provider_id", true, 36, 36, &provider) != 0)
        return;
    if (!leo_uuid_valid(leo_str_c(provider))) {
        fail(c, 400, "invalid_value", "provider_id", "provider_id: expected a provider id (a UUID)");
        return;
    }
    if (body_model_name(c, "model", &model) != 0 || body_bool(c, "enabled", &enabled) != 0 ||
        deployment_limits(c, &limits) != 0)
        return;
    const char *params[] = {provider, model, limits ? limits : "{}", enabled ? enabled : "true", c->actor};
    run_query(c, S_DEPLOYMENT_CREATE, params, 5, deployment_created);
    free(limits);
}

static void deployments_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond_page(c, r->res, c->limit, 2, NULL);
}

static void h_deployments_list(struct call *c)
{
    global_list(c, S_DEPLOYMENT_LIST, deployments_listed);
}

static void h_deployment_get(struct call *c)
{
    const char *params[] = {c->key_id};
    run_query(c, S_DEPLOYMENT_GET, params, 1, deployment_found);
}

static void h_deployment_patch(struct call *c)
{
    static const char *const fields[] = {"limits", "enabled", NULL};
    const char *enabled;
    char *limits = NULL;
    if (json_object_get(c->body, "provider_id") || json_object_get(c->body, "model")) {
        const char *which = json_object_get(c->body, "model") ? "model" : "provider_id";
        fail(c, 400, "immutable_field", which, "%s: cannot be changed; create another deployment", which);
        return;
    }
    if (body_fields(c, fields) != 0 || body_bool(c, "enabled", &enabled) != 0 || deployment_limits(c, &limits) != 0)
        return;
    if (enabled == NULL && limits == NULL) {
        fail(c, 400, "empty_change", NULL, "the body changes nothing: give enabled or limits");
        return;
    }
    char *change = json_dumps(c->body, DUMP_SORTED);
    const char *params[] = {c->key_id, enabled, limits, c->actor, change};
    run_query(c, S_DEPLOYMENT_PATCH, params, 5, deployment_changed);
    free(change);
    free(limits);
}

static void h_deployment_delete(struct call *c)
{
    const char *params[] = {c->key_id, c->actor};
    run_query(c, S_DEPLOYMENT_DELETE, params, 2, deployment_changed);
}

/* ---- models ---- */

static const char *const model_strategies[] = {"weighted",       "priority",    "least-busy",
                                               "lowest-latency", "lowest-cost", NULL};

/* "deployments": [{"deployment_id", "priority"?, "weight"?}], 1 to MODELS_MAX entries, each deployment once;
 * written out with the defaults filled in (priority 0, weight 1), for the statement. */
static int model_deployments(struct call *c, bool required, char **out)
{
    static const char *const fields[] = {"deployment_id", "priority", "weight", NULL};
    json_t *v = json_object_get(c->body, "deployments");
    *out = NULL;
    if (v == NULL && !required)
        return 0;
    if (v == NULL) {
        fail(c, 400, "missing_field", "deployments", "deployments: required");
        return -1;
    }
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > MODELS_MAX) {
        fail(c, 400, "invalid_value", "deployments", "deployments: expected an array of 1 to %d objects", MODELS_MAX);
        return -1;
    }
    json_t *norm = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        char param[96];
        snprintf(param, sizeof(param), "deployments[%zu]", i);
        const char *k;
        json_t *x;
        const char *bad = NULL;
        if (!json_is_object(e)) {
            fail(c, 400, "invalid_type", param, "%s: expected an object", param);
            json_decref(norm);
            return -1;
        }
        json_object_foreach(e, k, x)
        {
            bool known = false;
            for (size_t f = 0; fields[f]; f++)
                known = known || strcmp(fields[f], k) == 0;
            if (!known && bad == NULL)
                bad = k;
        }
        if (bad) {
            snprintf(param, sizeof(param), "deployments[%zu].%s", i, bad);
            fail(c, 400, "unknown_field", param, "%s: unknown field", param);
            json_decref(norm);
            return -1;
        }
        const char *id = json_string_value(json_object_get(e, "deployment_id"));
        if (id == NULL || !leo_uuid_valid(leo_str_c(id))) {
            snprintf(param, sizeof(param), "deployments[%zu].deployment_id", i);
            fail(c, 400, "invalid_value", param, "%s: expected a deployment id (a UUID)", param);
            json_decref(norm);
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcasecmp(json_string_value(json_object_get(json_array_get(v, j), "deployment_id")), id) == 0) {
                snprintf(param, sizeof(param), "deployments[%zu].deployment_id", i);
                fail(c, 400, "invalid_value", param, "%s: listed twice", param);
                json_decref(norm);
                return -1;
            }
        }
        char t1[24], t2[24], pp[64], pw[64];
        const char *prio, *weight;
        snprintf(pp, sizeof(pp), "deployments[%zu].priority", i);
        snprintf(pw, sizeof(pw), "deployments[%zu].weight", i);
        if (body_uint(c, e, "priority", pp, 0, 1000, t1, &prio) != 0 ||
            body_uint(c, e, "weight", pw, 0, 1000000, t2, &weight) != 0) {
            json_decref(norm);
            return -1;
        }
        json_array_append_new(norm, json_pack("{s:s,s:I,s:I}", "deployment_id", id, "priority",
                                              (json_int_t)(prio ? strtoll(prio, NULL, 10) : 0), "weight",
                                              (json_int_t)(weight ? strtoll(weight, NULL, 10) : 1)));
    }
    *out = json_dumps(norm, DUMP_ORDERED);
    json_decref(norm);
    return 0;
}

/* A model write returns its id; the model is then read back with its deployments. */
static void model_read_back(struct call *c, const struct leo_db_result *r, query_step next)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQntuples(r->res) != 1) {
        fail(c, 404, "not_found", NULL, "model not found");
        return;
    }
    leo_snapshot_changed();
    snprintf(c->key_id, sizeof(c->key_id), "%s", PQgetvalue(r->res, 0, 0));
    const char *params[] = {c->key_id};
    run_query(c, S_MODEL_GET, params, 1, next);
}

static void model_found_created(struct call *c, const struct leo_db_result *r)
{
    one_object_done(c, r, 201, "model");
}

static void model_found(struct call *c, const struct leo_db_result *r)
{
    one_object_done(c, r, 200, "model");
}

static void model_created(struct call *c, const struct leo_db_result *r)
{
    model_read_back(c, r, model_found_created);
}

static void model_patched(struct call *c, const struct leo_db_result *r)
{
    model_read_back(c, r, model_found);
}

static void model_deleted(struct call *c, const struct leo_db_result *r)
{
    if (r->err == 0)
        leo_snapshot_changed();
    one_object_done(c, r, 200, "model");
}

static void h_model_create(struct call *c)
{
    static const char *const fields[] = {"name", "strategy", "enabled", "deployments", NULL};
    const char *name, *strategy, *enabled;
    char *deps = NULL;
    if (body_fields(c, fields) != 0 || body_model_name(c, "name", &name) != 0 ||
        body_enum(c, "strategy", model_strategies, &strategy) != 0 || body_bool(c, "enabled", &enabled) != 0 ||
        model_deployments(c, true, &deps) != 0)
        return;
    const char *params[] = {name, strategy ? strategy : "weighted", enabled ? enabled : "true", deps, c->actor};
    run_query(c, S_MODEL_CREATE, params, 5, model_created);
    free(deps);
}

static void models_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond_page(c, r->res, c->limit, 2, NULL);
}

static void h_models_list(struct call *c)
{
    global_list(c, S_MODEL_LIST, models_listed);
}

static void h_model_get(struct call *c)
{
    const char *params[] = {c->key_id};
    run_query(c, S_MODEL_GET, params, 1, model_found);
}

static void h_model_patch(struct call *c)
{
    static const char *const fields[] = {"strategy", "enabled", "deployments", NULL};
    const char *strategy, *enabled;
    char *deps = NULL;
    if (json_object_get(c->body, "name")) {
        fail(c, 400, "immutable_field", "name", "name: cannot be changed; create another model");
        return;
    }
    if (body_fields(c, fields) != 0 || body_enum(c, "strategy", model_strategies, &strategy) != 0 ||
        body_bool(c, "enabled", &enabled) != 0 || model_deployments(c, false, &deps) != 0)
        return;
    if (!strategy && !enabled && !deps) {
        fail(c, 400, "empty_change", NULL, "the body changes nothing: give strategy, enabled or deployments");
        return;
    }
    char *change = json_dumps(c->body, DUMP_SORTED);
    const char *params[] = {c->key_id,          strategy, enabled, deps ? "true" : "false",
                            deps ? deps : "[]", c->actor, change};
    run_query(c, S_MODEL_PATCH, params, 7, model_patched);
    free(change);
    free(deps);
}

static void h_model_delete(struct call *c)
{
    const char *params[] = {c->key_id, c->actor};
    run_query(c, S_MODEL_DELETE, params, 2, model_deleted);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Audit log                                                                                               */

static void audit_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond_page(c, r->res, c->limit, 1, NULL);
}

static void h_audit_list(struct call *c)
{
    static const char *const names[] = {"action", "since", "until", "limit", "cursor", "target", "actor", NULL};
    const char *v[7];
    char lim[16], before[24];
    int limit;
    time_t t;
    if (query_params(c, names, v) != 0 || page_limit(c, v[3], &limit, lim) != 0)
        return;
    if (v[1] && !rfc3339_parse(v[1], &t)) {
        fail(c, 400, "invalid_value", "since", "since: expected an RFC 3339 date-time");
        return;
    }
    if (v[2] && !rfc3339_parse(v[2], &t)) {
        fail(c, 400, "invalid_value", "until", "until: expected an RFC 3339 date-time");
        return;
    }
    const char *p_before = NULL;
    if (v[4]) {
        size_t n;
        if (!cursor_decode(v[4], before, sizeof(before)) || (n = strlen(before)) == 0 || n > 18 ||
            !all_digits(before, n)) {
            fail(c, 400, "invalid_value", "cursor", "cursor: not a cursor from this list");
            return;
        }
        p_before = before;
    }
    for (int i = 0; i < 7; i++) {
        if (v[i] && strlen(v[i]) > 512) {
            fail(c, 400, "invalid_value", names[i], "%s: at most 512 characters", names[i]);
            return;
        }
    }
    const char *params[] = {v[0], v[1], v[2], p_before, lim, v[5], v[6]};
    c->limit = limit;
    run_query(c, S_AUDIT_LIST, params, 7, audit_listed);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Usage reports (docs/usage.md)                                                                           */

/* usage.read, scoped like the tenant lists: a tenant role sees its own tenant's usage only. */
#define USAGE_ROWS_MAX 10000
#define USAGE_FILTER_MAX 256

static const char *const usage_groups[] = {"hour", "day", "model", "key", "tenant", NULL};
static const char *const usage_columns[] = {"requests",          "errors",   "cache_hits", "prompt_tokens",
                                            "completion_tokens", "cost_usd", "saved_usd",  "avg_latency_ms"};

/* A CSV field: quoted when it holds a separator, a quote or a line break; a leading = + - @ (a formula to a
 * spreadsheet) is defused with a leading apostrophe. */
static void csv_field(struct leo_buf *b, const char *s)
{
    bool quote = strpbrk(s, ",\"\r\n") != NULL;
    if (quote)
        leo_buf_addch(b, '"');
    if (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@')
        leo_buf_addch(b, '\'');
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            leo_buf_addch(b, '"');
        leo_buf_addch(b, *p);
    }
    if (quote)
        leo_buf_addch(b, '"');
}

static json_t *usage_value(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return json_null();
    const char *s = PQgetvalue(res, row, col);
    if (col - 2 >= 5) /* cost_usd, saved_usd, avg_latency_ms */
        return json_real(strtod(s, NULL));
    return json_integer(strtoll(s, NULL, 10));
}

static void usage_reported(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    const char *group = c->usage_group;
    bool csv = c->usage_csv;
    int n = PQntuples(r->res);
    bool truncated = n > USAGE_ROWS_MAX;
    if (truncated)
        n = USAGE_ROWS_MAX;
    bool by_key = strcmp(group, "key") == 0;
    if (csv) {
        struct leo_buf b = LEO_BUF_INIT;
        leo_buf_adds(&b, by_key ? "tenant,key" : group);
        for (size_t i = 0; i < sizeof(usage_columns) / sizeof(usage_columns[0]); i++)
            leo_buf_addf(&b, ",%s", usage_columns[i]);
        leo_buf_adds(&b, "\r\n");
        for (int i = 0; i < n; i++) {
            csv_field(&b, PQgetvalue(r->res, i, 0));
            if (by_key) {
                leo_buf_addch(&b, ',');
                csv_field(&b, PQgetvalue(r->res, i, 1));
            }
            for (int col = 2; col < 10; col++)
                leo_buf_addf(&b, ",%s", PQgetvalue(r->res, i, col));
            leo_buf_adds(&b, "\r\n");
        }
        struct leo_http_header h[] = {
            {LEO_STR_LIT("Content-Type"), LEO_STR_LIT("text/csv; charset=utf-8")},
            {LEO_STR_LIT("Content-Disposition"), LEO_STR_LIT("attachment; filename=\"usage.csv\"")},
            {LEO_STR_LIT("Cache-Control"), LEO_STR_LIT("no-store")},
            {LEO_STR_LIT("x-leo-truncated"), truncated ? LEO_STR_LIT("true") : LEO_STR_LIT("false")},
        };
        access_log(c, 200);
        leo_http_respond(c->req, 200, h, 4, b.p, b.len);
        leo_buf_release(&b);
        return;
    }
    json_t *rows = json_array();
    for (int i = 0; i < n; i++) {
        json_t *row = json_object();
        if (by_key) {
            json_object_set_new(row, "tenant", json_string(PQgetvalue(r->res, i, 0)));
            json_object_set_new(row, "key", json_string(PQgetvalue(r->res, i, 1)));
        } else {
            json_object_set_new(row, group, json_string(PQgetvalue(r->res, i, 0)));
        }
        for (int col = 2; col < 10; col++)
            json_object_set_new(row, usage_columns[col - 2], usage_value(r->res, i, col));
        json_array_append_new(rows, row);
    }
    json_t *j = json_pack("{s:s,s:o,s:b}", "group_by", group, "rows", rows, "truncated", truncated);
    respond_json(c, 200, j);
}

static void h_usage_report(struct call *c)
{
    static const char *const names[] = {"tenant", "key", "model", "from", "to", "group_by", "format", NULL};
    const char *v[7];
    time_t from = 0, to = 0;
    if (query_params(c, names, v) != 0)
        return;
    for (int i = 0; i < 3; i++) {
        if (v[i] && (v[i][0] == '\0' || strlen(v[i]) > USAGE_FILTER_MAX)) {
            fail(c, 400, "invalid_value", names[i], "%s: must be 1 to %d bytes long", names[i], USAGE_FILTER_MAX);
            return;
        }
    }
    if (v[3] && !rfc3339_parse(v[3], &from)) {
        fail(c, 400, "invalid_value", "from", "from: expected an RFC 3339 date-time");
        return;
    }
    if (v[4] && !rfc3339_parse(v[4], &to)) {
        fail(c, 400, "invalid_value", "to", "to: expected an RFC 3339 date-time");
        return;
    }
    if (v[3] && v[4] && to <= from) {
        fail(c, 400, "invalid_value", "to", "to: must be later than from");
        return;
    }
    const char *group = v[5] ? v[5] : "hour";
    size_t gi = 0;
    while (usage_groups[gi] && strcmp(usage_groups[gi], group) != 0)
        gi++;
    if (usage_groups[gi] == NULL) {
        fail(c, 400, "invalid_value", "group_by", "group_by: must be one of \"hour\", \"day\", \"model\", \"key\", "
                                                  "\"tenant\"");
        return;
    }
    if (v[6] && strcmp(v[6], "json") != 0 && strcmp(v[6], "csv") != 0) {
        fail(c, 400, "invalid_value", "format", "format: must be \"json\" or \"csv\"");
        return;
    }
    c->usage_group = usage_groups[gi];
    c->usage_csv = v[6] && strcmp(v[6], "csv") == 0;
    char *allowed = allowed_tenants(c, LEO_PERM_USAGE_READ);
    const char *params[] = {allowed, v[0], v[1], v[2], v[3], v[4], usage_groups[gi]};
    run_query(c, S_USAGE_REPORT, params, 7, usage_reported);
    leo_free(allowed);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Admin API tokens and invitations                                                                        */

#define INVITE_TTL_S (7 * 24 * 3600)
_Static_assert(sizeof(((struct call *)0)->secret) > LEO_TOKEN_MAX_LEN, "secret buffer too small");

static void page_listed(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    respond_page(c, r->res, c->limit, 2, NULL);
}

/* A keyset page of s, limited to the tenants where the caller holds perm (all of them for a global role). */
static void scoped_list(struct call *c, unsigned perm, enum stmt s)
{
    static const char *const names[] = {"limit", "cursor", NULL};
    const char *v[2], *p_us, *p_id;
    char lim[16], us[24], id[LEO_UUID_TEXT_LEN + 1];
    int limit;
    if (query_params(c, names, v) != 0 || page_limit(c, v[0], &limit, lim) != 0 ||
        keyset_cursor(c, v[1], us, id, &p_us, &p_id) != 0)
        return;
    char *allowed = allowed_tenants(c, perm);
    const char *params[] = {allowed, p_us, p_id, lim};
    c->limit = limit;
    run_query(c, s, params, 4, page_listed);
    leo_free(allowed);
}

/* 201 with the new object and, once, its secret (member), which is then wiped. No row: conflict_message. */
static void respond_created_with_secret(struct call *c, const struct leo_db_result *r, const char *member,
                                        const char *conflict_param, const char *conflict_message)
{
    json_t *j = NULL;
    if (r->err)
        fail_db(c, r);
    else if (PQntuples(r->res) != 1 || PQgetisnull(r->res, 0, 0))
        fail(c, 409, "already_exists", conflict_param, "%s", conflict_message);
    else if ((j = json_loads(PQgetvalue(r->res, 0, 0), 0, NULL)) == NULL)
        fail(c, 500, "internal_error", NULL, "internal error");
    if (j) {
        json_object_set_new(j, member, json_string(c->secret));
        respond_json(c, 201, j);
    }
    sodium_memzero(c->secret, sizeof(c->secret));
}

/* Revocations return (the object or NULL when nothing changed, NULL or 0 when it is not in the caller's
 * scope). */
static void revoked(struct call *c, const struct leo_db_result *r, const char *what, const char *code)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQgetisnull(r->res, 0, 1) || strcmp(PQgetvalue(r->res, 0, 1), "0") == 0) {
        fail(c, 404, "not_found", NULL, "%s not found", what);
        return;
    }
    if (PQgetisnull(r->res, 0, 0)) {
        fail(c, 409, code, NULL, "the %s is no longer %s and cannot be revoked", what,
             strcmp(what, "token") == 0 ? "active" : "pending");
        return;
    }
    one_object_done(c, r, 200, what);
}

static void token_created(struct call *c, const struct leo_db_result *r)
{
    respond_created_with_secret(c, r, "token", NULL, "token collision, try again");
}

/* A token's role is bounded like a grant: never above what the caller holds in the token's scope. */
static void h_token_create(struct call *c)
{
    static const char *const fields[] = {"name", "role", "tenant_id", "expires_at", NULL};
    const char *name, *tenant;
    enum leo_role r;
    struct key_fields f = {0};
    json_t *v;
    if (body_fields(c, fields) != 0 || body_string(c, "name", true, 1, NAME_MAX_CHARS, &name) != 0 ||
        body_role(c, &r, &tenant) != 0)
        return;
    if (!leo_principal_can(&c->who, LEO_PERM_TOKENS_WRITE, tenant)) {
        fail(c, 403, "forbidden", NULL, "this account may not create API tokens %s",
             tenant ? "for this tenant" : "with global roles");
        return;
    }
    if (!leo_principal_can_issue_token(&c->who, r, tenant)) {
        fail(c, 403, "forbidden", "role", "role: this account may not issue a token with the role \"%s\"",
             leo_role_name(r));
        return;
    }
    if ((v = json_object_get(c->body, "expires_at")) && key_expiry(c, v, &f) != 0)
        return;
    char hash[2 * LEO_SESSION_HASH_BYTES + 1], last4[5];
    leo_token_new(LEO_ADMIN_TOKEN_PREFIX, c->secret);
    leo_admin_token_hash_hex(c->api->token_key, leo_str_c(c->secret), hash);
    memcpy(last4, c->secret + strlen(c->secret) - 4, 5);
    const char *params[] = {hash,  name,         leo_role_name(r), tenant, LEO_ADMIN_TOKEN_PREFIX,
                            last4, f.expires_at, c->actor};
    run_query(c, S_TOKEN_CREATE, params, 8, token_created);
}

static void h_tokens_list(struct call *c)
{
    scoped_list(c, LEO_PERM_TOKENS_READ, S_TOKEN_LIST);
}

static void token_revoked(struct call *c, const struct leo_db_result *r)
{
    revoked(c, r, "token", "token_revoked");
}

/* Global tokens.write holders revoke any token; tenant admins only the tokens of their tenants (others are
 * 404, as if they did not exist). */
static void h_token_revoke(struct call *c)
{
    if (body_fields(c, (const char *const[]){NULL}) != 0)
        return;
    char *allowed = allowed_tenants(c, LEO_PERM_TOKENS_WRITE);
    const char *params[] = {c->key_id, allowed, c->actor};
    run_query(c, S_TOKEN_REVOKE, params, 3, token_revoked);
    leo_free(allowed);
}

static void invitation_created(struct call *c, const struct leo_db_result *r)
{
    respond_created_with_secret(c, r, "token", "email", "a user with this email already exists");
}

/* Inviting grants a role as creating the user would, so it needs the same permission and obeys the same bound. */
static void h_invitation_create(struct call *c)
{
    static const char *const fields[] = {"email", "role", "tenant_id", NULL};
    const char *email, *tenant;
    enum leo_role r;
    if (body_fields(c, fields) != 0 || body_string(c, "email", true, 1, EMAIL_MAX, &email) != 0)
        return;
    if (!email_normalise(email, c->email)) {
        fail(c, 400, "invalid_value", "email", "email: not an email address");
        return;
    }
    if (body_grant(c, &r, &tenant) != 0)
        return;
    char hash[2 * LEO_SESSION_HASH_BYTES + 1], ttl[16];
    leo_token_new(LEO_INVITE_TOKEN_PREFIX, c->secret);
    leo_session_token_hash_hex(leo_str_c(c->secret), hash);
    snprintf(ttl, sizeof(ttl), "%d", INVITE_TTL_S);
    const char *params[] = {hash, c->email, leo_role_name(r), tenant, ttl, c->actor};
    run_query(c, S_INVITE_CREATE, params, 6, invitation_created);
}

static void h_invitations_list(struct call *c)
{
    scoped_list(c, LEO_PERM_USERS_READ, S_INVITE_LIST);
}

static void invitation_revoked(struct call *c, const struct leo_db_result *r)
{
    revoked(c, r, "invitation", "invitation_not_pending");
}

static void h_invitation_revoke(struct call *c)
{
    if (body_fields(c, (const char *const[]){NULL}) != 0)
        return;
    char *allowed = allowed_tenants(c, LEO_PERM_USERS_WRITE);
    const char *params[] = {c->key_id, allowed, c->actor};
    run_query(c, S_INVITE_REVOKE, params, 3, invitation_revoked);
    leo_free(allowed);
}

static void invitation_accepted(struct call *c, const struct leo_db_result *r)
{
    one_object_done(c, r, 201, "invitation");
}

static void invitation_hashed(struct call *c)
{
    sodium_memzero(c->password, c->password_len);
    if (c->pwhash == NULL) {
        leo_error("password hashing failed (out of memory?)");
        fail(c, 500, "internal_error", NULL, "internal error");
        return;
    }
    const char *params[] = {c->token_hash, c->pwhash};
    run_query(c, S_INVITE_ACCEPT, params, 2, invitation_accepted);
}

static void invitation_checked(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    if (PQntuples(r->res) != 1) {
        fail(c, 404, "not_found", NULL, "invitation not found: unknown, already used, revoked or expired");
        return;
    }
    run_work(c, user_hash, invitation_hashed);
}

/* Public: the invitation token is the credential. It is looked up before the password is hashed, so a guess
 * costs the server one indexed read, not an argon2id hash; the accept statement checks it again, atomically. */
static void h_invitation_accept(struct call *c)
{
    static const char *const fields[] = {"token", "password", NULL};
    const char *token;
    if (body_fields(c, fields) != 0 || body_string(c, "token", true, 1, 128, &token) != 0 || body_password(c) != 0)
        return;
    leo_session_token_hash_hex(leo_str_c(token), c->token_hash);
    const char *params[] = {c->token_hash};
    run_query(c, S_INVITE_CHECK, params, 1, invitation_checked);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Provider connection test (probe.h)                                                                      */

static void provider_probe(struct call *c)
{
    leo_probe_run(c->probe);
}

static void provider_probed(struct call *c)
{
    struct leo_probe *p = c->probe;
    json_t *j = c->reply;
    c->reply = NULL;
    leo_probe_count(p);
    json_object_set_new(j, "ok", json_boolean(p->result == LEO_PROBE_OK));
    json_object_set_new(j, "result", json_string(leo_probe_result_name(p->result)));
    json_object_set_new(j, "status", p->status ? json_integer(p->status) : json_null());
    json_object_set_new(j, "latency_ms", json_integer(p->latency_ms));
    if (p->result != LEO_PROBE_OK)
        json_object_set_new(j, "error", json_string(p->error));
    leo_probe_free(p);
    c->probe = NULL;
    respond_json(c, 200, j);
}

/* The credential is opened here, on the loop, into memory the probe owns (wiped when it is freed); the call
 * itself runs on the thread pool, like a password hash. */
static void provider_probe_found(struct call *c, const struct leo_db_result *r)
{
    if (r->err) {
        fail_db(c, r);
        return;
    }
    PGresult *res = r->res;
    if (PQntuples(res) != 1) {
        fail(c, 404, "not_found", NULL, "provider not found");
        return;
    }
    if (PQgetisnull(res, 0, 5)) {
        fail(c, 409, "no_credential", NULL, "the provider has no enabled credential to test");
        return;
    }
    const char *id = PQgetvalue(res, 0, 5), *name = PQgetvalue(res, 0, 6);
    json_t *j = json_pack("{s:{s:s,s:s}}", "credential", "id", id, "name", name);
    struct leo_buf plain = LEO_BUF_INIT;
    const char *why = "the credential is malformed";
    int rc = leo_secretbox_open(&c->api->ring, leo_str_c(PQgetvalue(res, 0, 7)), leo_str_c(id), &plain, &why);
    if (rc != 0) {
        leo_secretbox_wipe(&plain);
        json_object_set_new(j, "ok", json_false());
        json_object_set_new(j, "result", json_string("unusable_credential"));
        json_object_set_new(j, "status", json_null());
        json_object_set_new(j, "error", json_sprintf("the credential cannot be opened: %s%s", why,
                                                     rc == LEO_ENOTFOUND ? " (is LEO_MASTER_KEY the right key?)" : ""));
        respond_json(c, 200, j);
        return;
    }
    unsigned connect_ms = PQgetisnull(res, 0, 3) ? 0 : (unsigned)strtoul(PQgetvalue(res, 0, 3), NULL, 10);
    unsigned total_ms = PQgetisnull(res, 0, 4) ? 0 : (unsigned)strtoul(PQgetvalue(res, 0, 4), NULL, 10);
    c->probe = leo_probe_new(PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                             PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2), &plain, connect_ms, total_ms);
    leo_secretbox_wipe(&plain);
    c->reply = j;
    run_work(c, provider_probe, provider_probed);
}

static void h_provider_test(struct call *c)
{
    static const char *const fields[] = {NULL};
    if (body_fields(c, fields) != 0)
        return;
    const char *params[] = {c->obj_id};
    run_query(c, S_PROVIDER_PROBE, params, 1, provider_probe_found);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Routing overrides and forced cooldowns (migrations/0008)                                                */

#define OVERRIDE_REASON_MAX 512
#define COOLDOWN_MAX_S (30 * 24 * 3600)

static const char *const override_actions[] = {"disable", "weight", NULL};

static void catalogue_written(struct call *c, const struct leo_db_result *r, int status, const char *what)
{
    if (r->err == 0 && PQntuples(r->res) == 1)
        leo_snapshot_changed();
    one_object_done(c, r, status, what);
}

static void override_set(struct call *c, const struct leo_db_result *r)
{
    catalogue_written(c, r, 201, "override");
}

static void override_cleared(struct call *c, const struct leo_db_result *r)
{
    catalogue_written(c, r, 200, "override");
}

static void cooldown_set(struct call *c, const struct leo_db_result *r)
{
    catalogue_written(c, r, 201, "credential");
}

static void cooldown_cleared(struct call *c, const struct leo_db_result *r)
{
    catalogue_written(c, r, 200, "forced cooldown");
}

static void h_overrides_list(struct call *c)
{
    global_list(c, S_OVERRIDE_LIST, providers_listed);
}

static int body_uuid(struct call *c, const char *field, const char *what, const char **out)
{
    if (body_string(c, field, true, 1, 64, out) != 0)
        return -1;
    if (!leo_uuid_valid(leo_str_c(*out))) {
        fail(c, 400, "invalid_value", field, "%s: expected a %s id (a UUID)", field, what);
        return -1;
    }
    return 0;
}

static void h_override_set(struct call *c)
{
    static const char *const fields[] = {"model_id", "deployment_id", "action", "weight", "reason", NULL};
    const char *model, *deployment, *action, *weight, *reason;
    char wtext[24];
    if (body_fields(c, fields) != 0 || body_uuid(c, "model_id", "model", &model) != 0 ||
        body_uuid(c, "deployment_id", "deployment", &deployment) != 0 ||
        body_enum(c, "action", override_actions, &action) != 0 ||
        body_uint(c, c->body, "weight", "weight", 0, 1000000, wtext, &weight) != 0 ||
        body_string(c, "reason", false, 0, OVERRIDE_REASON_MAX, &reason) != 0)
        return;
    if (action == NULL) {
        fail(c, 400, "missing_field", "action", "action: required (\"disable\" or \"weight\")");
        return;
    }
    bool pin = strcmp(action, "weight") == 0;
    if (pin && weight == NULL) {
        fail(c, 400, "missing_field", "weight", "weight: required when action is \"weight\"");
        return;
    }
    if (!pin && weight) {
        fail(c, 400, "invalid_value", "weight", "weight: only with action \"weight\"");
        return;
    }
    const char *params[] = {model, deployment, action, weight, reason, c->actor};
    run_query(c, S_OVERRIDE_SET, params, 6, override_set);
}

static void h_override_clear(struct call *c)
{
    const char *params[] = {c->key_id, c->actor};
    run_query(c, S_OVERRIDE_CLEAR, params, 2, override_cleared);
}

static void h_cooldowns_list(struct call *c)
{
    global_list(c, S_COOLDOWN_LIST, providers_listed);
}

/* {"until": RFC 3339} or {"duration_s": n}, within COOLDOWN_MAX_S from now, and an optional "reason". */
static void h_cooldown_set(struct call *c)
{
    static const char *const fields[] = {"until", "duration_s", "reason", NULL};
    const char *until, *duration, *reason;
    char dtext[24];
    if (body_fields(c, fields) != 0 || body_string(c, "until", false, 1, 64, &until) != 0 ||
        body_uint(c, c->body, "duration_s", "duration_s", 1, COOLDOWN_MAX_S, dtext, &duration) != 0 ||
        body_string(c, "reason", false, 0, OVERRIDE_REASON_MAX, &reason) != 0)
        return;
    if ((until == NULL) == (duration == NULL)) {
        fail(c, 400, "missing_field", "until", "until: give either until (an RFC 3339 time) or duration_s");
        return;
    }
    if (until) {
        time_t t, now = time(NULL);
        if (!rfc3339_parse(until, &t)) {
            fail(c, 400, "invalid_value", "until", "until: expected an RFC 3339 date-time");
            return;
        }
        if (t <= now || t > now + COOLDOWN_MAX_S) {
            fail(c, 400, "invalid_value", "until", "until: must lie in the next %d days", COOLDOWN_MAX_S / 86400);
            return;
        }
    }
    const char *params[] = {c->obj_id, c->key_id, until, duration, reason, c->actor};
    run_query(c, S_COOLDOWN_SET, params, 6, cooldown_set);
}

static void h_cooldown_clear(struct call *c)
{
    const char *params[] = {c->obj_id, c->key_id, c->actor};
    run_query(c, S_COOLDOWN_CLEAR, params, 3, cooldown_cleared);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Config validation                                                                                       */

/* What POST /config/validate can dry-run: each kind and action names the route that makes the change for
 * real, whose handler (its validation) and permission are used as they are. */
static const struct {
    const char *kind, *action, *method, *pattern;
} validate_targets[] = {
    {"tenant", "create", "POST", "/admin/v1/tenants"},
    {"tenant", "update", "PATCH", "/admin/v1/tenants/{tenant}"},
    {"user", "create", "POST", "/admin/v1/users"},
    {"key", "create", "POST", "/admin/v1/tenants/{tenant}/keys"},
    {"key", "update", "PATCH", "/admin/v1/tenants/{tenant}/keys/{key}"},
    {"provider", "create", "POST", "/admin/v1/providers"},
    {"provider", "update", "PATCH", "/admin/v1/providers/{provider}"},
    {"deployment", "create", "POST", "/admin/v1/deployments"},
    {"deployment", "update", "PATCH", "/admin/v1/deployments/{deployment}"},
    {"model", "create", "POST", "/admin/v1/models"},
    {"model", "update", "PATCH", "/admin/v1/models/{model}"},
    {"token", "create", "POST", "/admin/v1/tokens"},
    {"invitation", "create", "POST", "/admin/v1/invitations"},
};

static void h_config_validate(struct call *c);

/* ------------------------------------------------------------------------------------------------------ */
/* Routing                                                                                                 */

static const struct route routes[] = {
    {"GET", "/admin/v1/health", 0, SCOPE_PUBLIC, h_health},
    {"GET", "/metrics", 0, SCOPE_PUBLIC, h_metrics},
    {"GET", "/admin/v1/openapi.json", 0, SCOPE_PUBLIC, h_openapi},
    {"POST", "/admin/v1/login", 0, SCOPE_PUBLIC, h_login},
    {"POST", "/admin/v1/logout", 0, SCOPE_SESSION, h_logout},
    {"GET", "/admin/v1/me", 0, SCOPE_SESSION, h_me},
    {"GET", "/admin/v1/tenants", LEO_PERM_TENANTS_READ, SCOPE_ANY, h_tenants_list},
    {"POST", "/admin/v1/tenants", LEO_PERM_TENANTS_WRITE, SCOPE_GLOBAL, h_tenant_create},
    {"GET", "/admin/v1/tenants/{tenant}", LEO_PERM_TENANTS_READ, SCOPE_TENANT, h_tenant_get},
    {"PATCH", "/admin/v1/tenants/{tenant}", LEO_PERM_TENANTS_WRITE, SCOPE_TENANT, h_tenant_patch},
    {"GET", "/admin/v1/users", LEO_PERM_USERS_READ, SCOPE_ANY, h_users_list},
    {"POST", "/admin/v1/users", LEO_PERM_USERS_WRITE, SCOPE_BODY, h_user_create},
    {"GET", "/admin/v1/invitations", LEO_PERM_USERS_READ, SCOPE_ANY, h_invitations_list},
    {"POST", "/admin/v1/invitations", LEO_PERM_USERS_WRITE, SCOPE_BODY, h_invitation_create},
    {"POST", "/admin/v1/invitations/accept", 0, SCOPE_PUBLIC, h_invitation_accept},
    {"POST", "/admin/v1/invitations/{invitation}/revoke", LEO_PERM_USERS_WRITE, SCOPE_ANY, h_invitation_revoke},
    {"GET", "/admin/v1/tokens", LEO_PERM_TOKENS_READ, SCOPE_ANY, h_tokens_list},
    {"POST", "/admin/v1/tokens", LEO_PERM_TOKENS_WRITE, SCOPE_BODY, h_token_create},
    {"POST", "/admin/v1/tokens/{token}/revoke", LEO_PERM_TOKENS_WRITE, SCOPE_ANY, h_token_revoke},
    {"POST", "/admin/v1/config/validate", 0, SCOPE_SESSION, h_config_validate},
    {"GET", "/admin/v1/tenants/{tenant}/keys", LEO_PERM_KEYS_READ, SCOPE_TENANT, h_keys_list},
    {"POST", "/admin/v1/tenants/{tenant}/keys", LEO_PERM_KEYS_WRITE, SCOPE_TENANT, h_key_create},
    {"GET", "/admin/v1/tenants/{tenant}/keys/{key}", LEO_PERM_KEYS_READ, SCOPE_TENANT, h_key_get},
    {"PATCH", "/admin/v1/tenants/{tenant}/keys/{key}", LEO_PERM_KEYS_WRITE, SCOPE_TENANT, h_key_patch},
    {"POST", "/admin/v1/tenants/{tenant}/keys/{key}/revoke", LEO_PERM_KEYS_WRITE, SCOPE_TENANT, h_key_revoke},
    {"POST", "/admin/v1/tenants/{tenant}/keys/{key}/rotate", LEO_PERM_KEYS_WRITE, SCOPE_TENANT, h_key_rotate},
    {"GET", "/admin/v1/audit", LEO_PERM_AUDIT_READ, SCOPE_GLOBAL, h_audit_list},
    {"GET", "/admin/v1/usage", LEO_PERM_USAGE_READ, SCOPE_ANY, h_usage_report},
    {"GET", "/admin/v1/providers", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_providers_list},
    {"POST", "/admin/v1/providers", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_provider_create},
    {"GET", "/admin/v1/providers/{provider}", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_provider_get},
    {"PATCH", "/admin/v1/providers/{provider}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_provider_patch},
    {"DELETE", "/admin/v1/providers/{provider}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_provider_delete},
    {"GET", "/admin/v1/providers/{provider}/credentials", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_credentials_list},
    {"POST", "/admin/v1/providers/{provider}/credentials", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_credential_create},
    {"PATCH", "/admin/v1/providers/{provider}/credentials/{key}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL,
     h_credential_patch},
    {"DELETE", "/admin/v1/providers/{provider}/credentials/{key}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL,
     h_credential_delete},
    {"GET", "/admin/v1/deployments", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_deployments_list},
    {"POST", "/admin/v1/deployments", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_deployment_create},
    {"GET", "/admin/v1/deployments/{deployment}", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_deployment_get},
    {"PATCH", "/admin/v1/deployments/{deployment}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_deployment_patch},
    {"DELETE", "/admin/v1/deployments/{deployment}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_deployment_delete},
    {"GET", "/admin/v1/models", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_models_list},
    {"POST", "/admin/v1/models", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_model_create},
    {"GET", "/admin/v1/models/{model}", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_model_get},
    {"PATCH", "/admin/v1/models/{model}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_model_patch},
    {"DELETE", "/admin/v1/models/{model}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_model_delete},
    {"POST", "/admin/v1/providers/{provider}/test", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_provider_test},
    {"GET", "/admin/v1/overrides", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_overrides_list},
    {"POST", "/admin/v1/overrides", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_override_set},
    {"DELETE", "/admin/v1/overrides/{override}", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL, h_override_clear},
    {"GET", "/admin/v1/cooldowns", LEO_PERM_PROVIDERS_READ, SCOPE_GLOBAL, h_cooldowns_list},
    {"POST", "/admin/v1/providers/{provider}/credentials/{key}/cooldown", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL,
     h_cooldown_set},
    {"DELETE", "/admin/v1/providers/{provider}/credentials/{key}/cooldown", LEO_PERM_PROVIDERS_WRITE, SCOPE_GLOBAL,
     h_cooldown_clear},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* Matches path against a pattern; captures {tenant} and {key} as raw segments. */
static bool match(const char *pattern, struct leo_str path, struct leo_str *tenant, struct leo_str *key,
                  struct leo_str *provider)
{
    const char *p = pattern;
    size_t i = 0;
    while (*p) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            size_t seg = i;
            while (i < path.len && path.p[i] != '/')
                i++;
            if (i == seg)
                return false;
            struct leo_str v = leo_str_n(path.p + seg, i - seg);
            if (strncmp(p, "{tenant}", 8) == 0)
                *tenant = v;
            else if (strncmp(p, "{provider}", 10) == 0)
                *provider = v;
            else
                *key = v;
            p = close + 1;
            continue;
        }
        if (i >= path.len || path.p[i] != *p)
            return false;
        p++;
        i++;
    }
    return i == path.len;
}

/* Continues with the route once the caller is known: scope and permission first, then the handler. */
static void dispatch_route(struct call *c)
{
    const struct route *rt = c->route;
    bool allowed = true;
    switch (rt->scope) {
    case SCOPE_PUBLIC:
    case SCOPE_SESSION: break;
    case SCOPE_GLOBAL: allowed = leo_principal_can(&c->who, rt->perm, NULL); break;
    case SCOPE_TENANT: allowed = leo_principal_can(&c->who, rt->perm, c->tenant_id); break;
    case SCOPE_ANY:
    case SCOPE_BODY: allowed = leo_principal_can_anywhere(&c->who, rt->perm); break;
    }
    if (!allowed) {
        fail(c, 403, "forbidden", NULL, "this account lacks the permission \"%s\"%s", leo_perm_name(rt->perm),
             rt->scope == SCOPE_TENANT ? " for this tenant" : "");
        return;
    }
    rt->run(c);
}

/* Dry-runs a change: the target route's permission check and handler run as for the real request, on the
 * inner body, with c->dry_run set; a 400 from the handler's validation becomes {"valid": false, ...}, and the
 * handler's first statement (or password hash) becomes {"valid": true} instead of running. Checks made by the
 * database itself (a taken slug, a tenant that does not exist) are not reached. */
static void h_config_validate(struct call *c)
{
    static const char *const fields[] = {"kind", "action", "tenant_id", "id", "body", NULL};
    const char *kind, *action, *tenant, *id;
    if (body_fields(c, fields) != 0 || body_string(c, "kind", true, 1, 64, &kind) != 0 ||
        body_string(c, "action", true, 1, 64, &action) != 0 ||
        body_string(c, "tenant_id", false, 1, 64, &tenant) != 0 || body_string(c, "id", false, 1, 64, &id) != 0)
        return;
    size_t n = sizeof(validate_targets) / sizeof(validate_targets[0]), i = 0, k = 0;
    while (k < n && strcmp(validate_targets[k].kind, kind) != 0)
        k++;
    if (k == n) {
        fail(c, 400, "invalid_value", "kind",
             "kind: must be one of tenant, user, key, provider, deployment, model, token, invitation");
        return;
    }
    for (i = k; i < n && strcmp(validate_targets[i].kind, kind) == 0; i++)
        if (strcmp(validate_targets[i].action, action) == 0)
            break;
    if (i == n || strcmp(validate_targets[i].kind, kind) != 0) {
        fail(c, 400, "invalid_value", "action", "action: \"%s\" cannot be validated for kind \"%s\"", action, kind);
        return;
    }
    const struct route *rt = NULL;
    for (size_t j = 0; j < NROUTES && rt == NULL; j++)
        if (strcmp(routes[j].method, validate_targets[i].method) == 0 &&
            strcmp(routes[j].pattern, validate_targets[i].pattern) == 0)
            rt = &routes[j];
    if (rt == NULL) {
        leo_error("config validate: no route %s %s", validate_targets[i].method, validate_targets[i].pattern);
        fail(c, 500, "internal_error", NULL, "internal error");
        return;
    }
    bool wants_tenant = strstr(rt->pattern, "{tenant}") != NULL;
    bool wants_id = strchr(rt->pattern, '{') != NULL && (!wants_tenant || strstr(rt->pattern, "{key}") != NULL);
    const char *const names[] = {"tenant_id", "id"};
    const char *const values[] = {tenant, id};
    const bool wanted[] = {wants_tenant, wants_id};
    for (int x = 0; x < 2; x++) {
        if (wanted[x] && values[x] == NULL) {
            fail(c, 400, "missing_field", names[x], "%s: required to validate a %s %s", names[x], kind, action);
            return;
        }
        if (!wanted[x] && values[x]) {
            fail(c, 400, "invalid_value", names[x], "%s: not used to validate a %s %s", names[x], kind, action);
            return;
        }
        if (values[x] && !leo_uuid_valid(leo_str_c(values[x]))) {
            fail(c, 400, "invalid_value", names[x], "%s: expected a UUID", names[x]);
            return;
        }
    }
    json_t *inner = json_object_get(c->body, "body");
    if (inner == NULL) {
        fail(c, 400, "missing_field", "body", "body: required");
        return;
    }
    if (!json_is_object(inner)) {
        fail(c, 400, "invalid_type", "body", "body: expected an object");
        return;
    }
    /* the ids go where the real route's path would have put them */
    char *id_dst = strstr(rt->pattern, "{provider}") ? c->obj_id : c->key_id;
    for (size_t j = 0; tenant && j < LEO_UUID_TEXT_LEN; j++)
        c->tenant_id[j] = (char)tolower((unsigned char)tenant[j]);
    for (size_t j = 0; id && j < LEO_UUID_TEXT_LEN; j++)
        id_dst[j] = (char)tolower((unsigned char)id[j]);
    json_incref(inner);
    json_decref(c->body);
    c->body = inner;
    c->route = rt;
    c->dry_run = true;
    dispatch_route(c);
}

void leo_api_handle(struct leo_http_request *req, void *ud)
{
    struct leo_api *api = ud;
    struct call *c = leo_new(struct call);
    c->api = api;
    c->req = req;
    c->t0 = req->start_ns ? req->start_ns : uv_hrtime();
    req->data = c;
    req->on_close = on_request_close;

    const struct route *found = NULL;
    bool path_known = false;
    struct leo_str tenant = {NULL, 0}, key = {NULL, 0}, provider = {NULL, 0};
    for (size_t i = 0; i < NROUTES; i++) {
        struct leo_str t = {NULL, 0}, k = {NULL, 0}, pv = {NULL, 0};
        if (!match(routes[i].pattern, req->path, &t, &k, &pv))
            continue;
        path_known = true;
        if (leo_str_eqc(req->method, routes[i].method)) {
            found = &routes[i];
            tenant = t;
            key = k;
            provider = pv;
            break;
        }
    }
    static const struct route not_found = {"", "", 0, SCOPE_PUBLIC, NULL};
    if (found == NULL) {
        c->route = &not_found;
        if (path_known)
            fail(c, 405, "method_not_allowed", NULL, "method %.*s is not allowed here", (int)req->method.len,
                 req->method.p);
        else
            fail(c, 404, "not_found", NULL, "no such endpoint");
        return;
    }
    c->route = found;
    if (tenant.p) {
        if (!leo_uuid_valid(tenant)) {
            fail(c, 404, "not_found", NULL, "tenant not found");
            return;
        }
        for (size_t i = 0; i < tenant.len; i++)
            c->tenant_id[i] = (char)tolower((unsigned char)tenant.p[i]);
    }
    if (provider.p) {
        if (!leo_uuid_valid(provider)) {
            fail(c, 404, "not_found", NULL, "provider not found");
            return;
        }
        for (size_t i = 0; i < provider.len; i++)
            c->obj_id[i] = (char)tolower((unsigned char)provider.p[i]);
    }
    if (key.p) {
        if (!leo_uuid_valid(key)) {
            const char *what = strstr(found->pattern, "{deployment}")   ? "deployment"
                               : strstr(found->pattern, "{model}")      ? "model"
                               : strstr(found->pattern, "{token}")      ? "token"
                               : strstr(found->pattern, "{invitation}") ? "invitation"
                               : strstr(found->pattern, "{override}")   ? "override"
                               : provider.p                             ? "credential"
                                                                        : "key";
            fail(c, 404, "not_found", NULL, "%s not found", what);
            return;
        }
        for (size_t i = 0; i < key.len; i++)
            c->key_id[i] = (char)tolower((unsigned char)key.p[i]);
    }
    if (leo_str_eqc(req->method, "POST") || leo_str_eqc(req->method, "PATCH")) {
        if (req->body.len == 0) {
            c->body = json_object();
        } else {
            json_error_t e;
            c->body = json_loadb(req->body.p, req->body.len, JSON_REJECT_DUPLICATES, &e);
            if (c->body == NULL) {
                fail(c, 400, "invalid_json", NULL, "invalid JSON at line %d, column %d: %s", e.line, e.column, e.text);
                return;
            }
            if (!json_is_object(c->body)) {
                fail(c, 400, "invalid_json", NULL, "the body must be a JSON object");
                return;
            }
        }
    } else {
        c->body = json_object();
    }
    if (found->scope == SCOPE_PUBLIC)
        found->run(c);
    else
        authenticate(c);
}

struct leo_api *leo_api_new(const struct leo_api_opts *opts)
{
    struct leo_api *api = leo_new(struct leo_api);
    api->loop = opts->loop;
    api->db = opts->db;
    memcpy(api->key_secret, opts->key_hash_secret, sizeof(api->key_secret));
    leo_admin_token_key(api->key_secret, api->token_key);
    api->session_ttl_s = opts->session_ttl_s ? opts->session_ttl_s : SESSION_TTL_DEFAULT_S;
    struct leo_buf err = LEO_BUF_INIT;
    if (leo_secretbox_ring_from_env(&api->ring, &err) != 0)
        leo_error("master key: %s; provider credentials cannot be written", err.p);
    else if (api->ring.nkeys == 0)
        leo_warn("LEO_MASTER_KEY is not set: provider credentials cannot be written");
    leo_buf_release(&err);
    leo_probe_metrics_describe();
    return api;
}

unsigned leo_api_busy(const struct leo_api *api)
{
    return api->busy;
}

void leo_api_free(struct leo_api *api)
{
    if (api == NULL)
        return;
    sodium_memzero(api->key_secret, sizeof(api->key_secret));
    sodium_memzero(api->token_key, sizeof(api->token_key));
    leo_secretbox_ring_clear(&api->ring);
    leo_free(api);
}
