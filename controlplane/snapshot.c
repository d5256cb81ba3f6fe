/*
 * snapshot.c — the publisher of the gateways' snapshot.
 *
 * One run is: one SQL statement that builds the tenants array as JSON (so the document holds exactly what the
 * rows say), then one Lua script in Redis. The statement also returns the audit log's last id, the
 * "position" of the data it read: every committed change appends an audit row in the same statement, so a
 * run that read older data than the last publication (another daemon published in between) carries a lower
 * position and the script refuses it instead of overwriting newer data with older.
 *
 * Keys restricted to some providers (api_keys.allowed_providers) carry as "providers" the names on their list that
 * the document publishes (enabled providers, the condition of the "providers" array below): a provider disabled or
 * deleted since drops out, and a key left with none carries [], which the gateway reads as "no provider" (the key
 * is refused every model), never as "every provider" (gateway/config.c, parse_key_providers).
 *
 * Keys restricted to some models (api_keys.allowed_models) carry their list as "models"; the gateway narrows
 * the key to those names (gateway/config.h, leo_tenant_key._view), within its tenant's "models". A tenant's
 * policy (migrations/0010: allow_byok, allow_route_override, allowed_models) is published as the gateway's
 * tenant members of those names; see PUBLISHED_MODELS for when the tenant's list travels on its keys instead.
 */
#include "snapshot.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/redis.h"
#include "db.h"

/*
 * The names of the models the document publishes: enabled, with at least one enabled deployment at an enabled
 * provider (the condition of the "models" array below; keep the two together).
 *
 * A tenant's allowed_models is published as its "models" only when every name is one of these. The gateway
 * rejects a whole document whose tenant names a model it does not know (gateway/config.c), so a typo, or a
 * model deleted or disabled after it was listed, would otherwise stop every gateway from following. When some
 * name is not published the tenant goes without "models" and each of its keys carries the list instead,
 * intersected with the key's own (keys may name unknown models: those grant nothing); a key left with no name
 * carries [""], a name no model has, so it is refused every model instead of being granted all.
 */
#define PUBLISHED_MODELS                                                                                               \
    "ARRAY(SELECT m.name FROM models m WHERE m.enabled AND EXISTS (SELECT 1 FROM model_deployments md"                 \
    " JOIN deployments d ON d.id = md.deployment_id JOIN providers p ON p.id = d.provider_id"                          \
    " WHERE md.model_id = m.id AND d.enabled AND p.enabled))"

/* clang-format off */
static const struct leo_db_stmt stmts[] = {
    /* → audit position, tenants JSON array, ms until the next key expires or forced cooldown ends (NULL: none),
     * providers JSON array (enabled providers with their enabled credentials, still sealed, each with its
     * forced cooldown while one lasts), models JSON array (enabled models with their usable deployments:
     * enabled, at an enabled provider, with the routing override on each; a model left with none is not
     * published) */
    {"snapshot_compile",
        "SELECT coalesce((SELECT max(id) FROM audit_log), 0)::text,"
        " coalesce(json_agg((jsonb_build_object('id', t.slug, 'allow_byok', t.allow_byok, 'allow_route_override',"
        " t.allow_route_override, 'quotas', t.limits, 'keys',"
        " coalesce((SELECT json_agg(jsonb_build_object('name', k.name, 'hash', k.key_hash)"
        " || CASE WHEN k.limits = '{}'::jsonb THEN '{}'::jsonb ELSE jsonb_build_object('quotas', k.limits) END"
        " || CASE WHEN t.allowed_models IS NOT NULL AND NOT tm.published THEN jsonb_build_object('models',"
        " to_jsonb(coalesce(nullif(ARRAY(SELECT x FROM unnest(coalesce(k.allowed_models, t.allowed_models))"
        " WITH ORDINALITY u(x, i) WHERE x = ANY(t.allowed_models) ORDER BY i), '{}'::text[]), ARRAY[''])))"
        " WHEN k.allowed_models IS NULL THEN '{}'::jsonb"
        " ELSE jsonb_build_object('models', to_jsonb(k.allowed_models)) END"
        " || CASE WHEN k.allowed_providers IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('providers',"
        " to_jsonb(ARRAY(SELECT x FROM unnest(k.allowed_providers) WITH ORDINALITY u(x, i) WHERE EXISTS (SELECT 1"
        " FROM providers p WHERE p.name = u.x AND p.enabled) ORDER BY i))) END"
        " ORDER BY k.created_at, k.id) FROM api_keys k WHERE k.tenant_id = t.id AND k.status = 'active'"
        " AND (k.expires_at IS NULL OR k.expires_at > now())), '[]'::json))"
        " || CASE WHEN tm.published THEN jsonb_build_object('models', to_jsonb(t.allowed_models)) ELSE '{}'::jsonb END)"
        " ORDER BY t.created_at, t.id), '[]'::json)::text,"
        " (SELECT ceil(extract(epoch FROM min(x.at) - now()) * 1000)::bigint FROM (SELECT k.expires_at AS at"
        " FROM api_keys k JOIN tenants t2 ON t2.id = k.tenant_id WHERE t2.status = 'active' AND k.status = 'active'"
        " AND k.expires_at > now() UNION ALL SELECT cc.until FROM credential_cooldowns cc WHERE cc.until > now()) x)"
        "::text,"
        " (SELECT coalesce(json_agg(json_strip_nulls(json_build_object('name', p.name, 'type', p.type,"
        " 'base_url', p.base_url, 'api_version', p.api_version, 'timeouts', CASE WHEN coalesce(p.connect_timeout_ms,"
        " p.first_byte_timeout_ms, p.total_timeout_ms) IS NULL THEN NULL ELSE json_build_object('connect_ms',"
        " p.connect_timeout_ms, 'first_byte_ms', p.first_byte_timeout_ms, 'total_ms', p.total_timeout_ms) END,"
        " 'credentials', coalesce((SELECT json_agg(jsonb_build_object('id', c.id, 'name', c.name, 'weight', c.weight,"
        " 'sealed', c.sealed) || coalesce((SELECT jsonb_build_object('cooldown_until_ms',"
        " floor(extract(epoch FROM cc.until) * 1000)::bigint, 'cooldown_reason', cc.reason)"
        " FROM credential_cooldowns cc WHERE cc.credential_id = c.id AND cc.until > now()), '{}'::jsonb)"
        " ORDER BY c.created_at, c.id) FROM provider_credentials c WHERE c.provider_id = p.id"
        " AND c.enabled), '[]'::json))) ORDER BY p.created_at, p.id), '[]'::json) FROM providers p"
        " WHERE p.enabled)::text,"
        " (SELECT coalesce(json_agg(json_build_object('name', m.name, 'strategy', m.strategy, 'deployments', ds.list)"
        " ORDER BY m.created_at, m.id), '[]'::json) FROM models m CROSS JOIN LATERAL (SELECT json_agg("
        "jsonb_build_object('provider', p.name, 'model', d.model, 'priority', md.priority, 'weight',"
        " CASE WHEN o.action = 'weight' THEN o.weight ELSE md.weight END, 'limits', d.limits)"
        " || CASE WHEN o.id IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('override', jsonb_build_object("
        "'action', o.action, 'reason', o.reason)) END"
        " ORDER BY md.priority, md.weight DESC, d.id) AS list FROM model_deployments md"
        " JOIN deployments d ON d.id = md.deployment_id JOIN providers p ON p.id = d.provider_id"
        " LEFT JOIN routing_overrides o ON o.model_id = md.model_id AND o.deployment_id = md.deployment_id"
        " WHERE md.model_id = m.id AND d.enabled AND p.enabled) ds WHERE m.enabled AND ds.list IS NOT NULL)::text"
        " FROM tenants t CROSS JOIN LATERAL (SELECT coalesce(t.allowed_models <@ " PUBLISHED_MODELS ", false)"
        " AS published) tm WHERE t.status = 'active'"},
};
/* clang-format on */

/*
 * KEYS: the document, the version, the position. ARGV: the document after its opening '{"version":N,', the
 * position. Returns the new version, 0 when Redis already holds this document (nothing written but the
 * position), or -1 when a publication from newer data is already there.
 */
static const char publish_lua[] =
    "local cur = tonumber(redis.call('GET', KEYS[3]) or '0')\n"
    "local pos = tonumber(ARGV[2])\n"
    "if pos < cur then return -1 end\n"
    "local old = redis.call('GET', KEYS[1])\n"
    "if old and redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  local comma = string.find(old, ',', 1, true)\n"
    "  if comma and string.sub(old, comma + 1) == ARGV[1] then\n"
    "    redis.call('SET', KEYS[3], ARGV[2])\n"
    "    return 0\n"
    "  end\n"
    "end\n"
    "local v = redis.call('INCR', KEYS[2])\n"
    "redis.call('SET', KEYS[1], '{\"version\":' .. v .. ',' .. ARGV[1])\n"
    "redis.call('SET', KEYS[3], ARGV[2])\n"
    "redis.call('PUBLISH', 'leo:snapshot:changed', v)\n"
    "return v\n";

static struct leo_redis_script publish_script;

struct leo_snapshot {
    uv_loop_t *loop;
    struct leo_db *db;
    struct leo_redis *redis;
    uv_timer_t retry, refresh, expiry;
    bool running;   /* a compile or a publish is in flight */
    bool dirty;     /* a change arrived while running */
    bool closing;
    bool db_down, redis_down; /* logged once per outage */
    uint64_t published; /* the version Redis answered last, 0 before */
    int open;       /* handles and connections not yet closed */
    void (*close_cb)(void *ud);
    void *close_ud;
};

static struct leo_snapshot *current; /* see leo_snapshot_changed */

static void run(struct leo_snapshot *s);

static void on_timer(uv_timer_t *t)
{
    run(t->data);
}

static void retry_later(struct leo_snapshot *s)
{
    if (!s->closing)
        uv_timer_start(&s->retry, on_timer, LEO_SNAPSHOT_RETRY_MS, 0);
}

static void finish(struct leo_snapshot *s, bool ok)
{
    s->running = false;
    if (s->closing)
        return;
    if (!ok) {
        s->dirty = false; /* the retry recompiles anyway */
        retry_later(s);
        return;
    }
    if (s->dirty)
        run(s);
}

static void on_published(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    struct leo_snapshot *s = ud;
    if (s->closing) {
        s->running = false;
        return;
    }
    if (err || reply->type != REDIS_REPLY_INTEGER) {
        if (!s->redis_down)
            leo_warn("cannot publish the snapshot to redis: %s; retrying every %d ms",
                     err ? leo_strerror(err) : (reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply"),
                     LEO_SNAPSHOT_RETRY_MS);
        s->redis_down = true;
        finish(s, false);
        return;
    }
    if (s->redis_down)
        leo_info("redis is reachable again: snapshot published");
    s->redis_down = false;
    if (reply->integer > 0) {
        s->published = (uint64_t)reply->integer;
        leo_info("published snapshot version %" PRIu64, s->published);
    } else if (reply->integer < 0) {
        /* another publisher wrote newer data; read again so this one's view catches up */
        s->dirty = true;
    }
    finish(s, true);
}

static void on_compiled(const struct leo_db_result *res, void *ud)
{
    struct leo_snapshot *s = ud;
    if (s->closing) {
        s->running = false;
        return;
    }
    if (res->err || PQntuples(res->res) != 1) {
        if (!s->db_down)
            leo_warn("cannot compile the snapshot: %s; retrying every %d ms", res->message, LEO_SNAPSHOT_RETRY_MS);
        s->db_down = true;
        finish(s, false);
        return;
    }
    s->db_down = false;
    const char *position = PQgetvalue(res->res, 0, 0);
    const char *tenants = PQgetvalue(res->res, 0, 1);
    if (!PQgetisnull(res->res, 0, 2)) {
        /* republish just after the next key expires; the refresh covers anything further away */
        uint64_t ms = strtoull(PQgetvalue(res->res, 0, 2), NULL, 10) + 10;
        if (ms < LEO_SNAPSHOT_REFRESH_MS)
            uv_timer_start(&s->expiry, on_timer, ms, 0);
    }

    struct leo_buf doc = LEO_BUF_INIT;
    leo_buf_adds(&doc, "\"tenants\":");
    leo_buf_adds(&doc, tenants);
    leo_buf_adds(&doc, ",\"providers\":");
    leo_buf_adds(&doc, PQgetvalue(res->res, 0, 3));
    leo_buf_adds(&doc, ",\"models\":");
    leo_buf_adds(&doc, PQgetvalue(res->res, 0, 4));
    leo_buf_addch(&doc, '}');
    const char *keys_and_args[] = {"leo:snapshot", "leo:snapshot:version", "leo:snapshot:position", doc.p,
                                   position};
    size_t lens[] = {12, 20, 21, doc.len, strlen(position)};
    int rc = leo_redis_eval(s->redis, &publish_script, on_published, s, 3, 5, keys_and_args, lens);
    leo_buf_release(&doc);
    if (rc != 0) {
        if (!s->redis_down)
            leo_warn("cannot publish the snapshot to redis: %s; retrying every %d ms", leo_strerror(rc),
                     LEO_SNAPSHOT_RETRY_MS);
        s->redis_down = true;
        finish(s, false);
    }
}

static void run(struct leo_snapshot *s)
{
    if (s->closing)
        return;
    if (s->running) {
        s->dirty = true;
        return;
    }
    s->running = true;
    s->dirty = false;
    uv_timer_stop(&s->retry);
    leo_db_query(s->db, 0, NULL, 0, on_compiled, s);
}

static void on_redis_state(struct leo_redis *r, bool connected, void *ud)
{
    if (connected)
        run(ud);
}

void leo_snapshot_changed(void)
{
    if (current)
        run(current);
}

int leo_snapshot_start(uv_loop_t *loop, const char *conninfo, const char *redis_url, struct leo_snapshot **out,
                       struct leo_buf *err)
{
    *out = NULL;
    struct leo_snapshot *s = leo_new(struct leo_snapshot);
    s->loop = loop;
    if (publish_script.source == NULL)
        leo_redis_script_init(&publish_script, publish_lua);
    struct leo_redis_opts ro = {.url = redis_url, .on_state = on_redis_state, .ud = s};
    int rc = leo_redis_new(loop, &ro, &s->redis, err);
    if (rc) {
        leo_free(s);
        return rc;
    }
    struct leo_db_opts dopts = {
        .conninfo = conninfo, .size = 1, .stmts = stmts, .nstmts = sizeof(stmts) / sizeof(stmts[0])};
    s->db = leo_db_new(loop, &dopts);
    uv_timer_t *timers[] = {&s->retry, &s->refresh, &s->expiry};
    for (size_t i = 0; i < 3; i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = s;
    }
    s->open = 5; /* three timers, the pool, the Redis connection */
    uv_timer_start(&s->refresh, on_timer, LEO_SNAPSHOT_REFRESH_MS, LEO_SNAPSHOT_REFRESH_MS);
    /* the first run starts when Redis is ready (on_redis_state); the retry timer covers a database that is
     * not up by then */
    current = s;
    *out = s;
    return 0;
}

static void closed_one(struct leo_snapshot *s)
{
    if (--s->open > 0)
        return;
    void (*cb)(void *) = s->close_cb;
    void *ud = s->close_ud;
    leo_free(s);
    if (cb)
        cb(ud);
}

static void on_timer_closed(uv_handle_t *h)
{
    closed_one(h->data);
}

static void on_conn_closed(void *ud)
{
    closed_one(ud);
}

void leo_snapshot_close(struct leo_snapshot *s, void (*cb)(void *ud), void *ud)
{
    s->closing = true;
    s->close_cb = cb;
    s->close_ud = ud;
    if (current == s)
        current = NULL;
    uv_close((uv_handle_t *)&s->retry, on_timer_closed);
    uv_close((uv_handle_t *)&s->refresh, on_timer_closed);
    uv_close((uv_handle_t *)&s->expiry, on_timer_closed);
    leo_db_close(s->db, 1, on_conn_closed, s);
    leo_redis_close(s->redis, on_conn_closed, s);
}
