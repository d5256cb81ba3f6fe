/*
 * usage.c — the usage consumer (see usage.h for the protocol).
 *
 * One batch at a time, as a small state machine driven by Redis and PostgreSQL callbacks:
 *
 *   fetch (by mode) → [ensure partitions] → write (one statement) → XACK → next fetch
 *
 * The fetch mode says where the next entries come from: OWN re-reads this consumer's own pending entries
 * (XREADGROUP ... 0: what a previous run of the same name read but never acknowledged), CLAIM walks the
 * group's pending list with XAUTOCLAIM for entries idle longer than claim_idle_ms, NEW reads entries never
 * delivered (XREADGROUP ... >). A run starts in OWN, then CLAIM, then NEW; it goes back to CLAIM every
 * claim_idle_ms, and to OWN after any failure, since a failed batch stays pending for this consumer.
 *
 * Fetches never block (no BLOCK argument): the connection is the consumer's own, but a blocking read would
 * trip the module's stall check; when nothing is new the consumer polls again after IDLE_MS.
 *
 * Each entry's "e" field is parsed and rebuilt from the known members with their types checked, so what
 * reaches SQL (json_to_recordset) always has the right shape and a malformed entry cannot fail a batch
 * forever.
 */
#include "usage.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/redis.h"
#include "db.h"

#define DEFAULT_BATCH 500
#define DEFAULT_CLAIM_IDLE_MS 60000
#define DEFAULT_RETENTION_DAYS 90
#define IDLE_MS 100
#define RETRY_MS 1000
#define MAINT_MS (3600 * 1000)
#define LAG_MS 5000
#define STR_MAX 256
#define DAY_MS 86400000LL

enum { S_WRITE, S_ENSURE, S_MAINT, S_COUNT };

/* clang-format off */
static const struct leo_db_stmt stmts[S_COUNT] = {
    /* $1 JSON array of events → events in the batch (after in-batch dedup), events inserted */
    [S_WRITE] = {"usage_write",
        "WITH ev AS (SELECT DISTINCT ON (e.request_id, e.ts) e.* FROM json_to_recordset($1::json) AS e("
        "request_id text, ts bigint, tenant text, key_name text, model text, deployment text, provider text,"
        " route text, status int, error bool, stream bool, prompt_tokens bigint, completion_tokens bigint,"
        " cost_usd float8, saved_usd float8, cache text, latency_ms float8, attempts int)"
        " ORDER BY e.request_id, e.ts),"
        " ins AS (INSERT INTO usage_events (at, request_id, tenant, key_name, model, deployment, provider, route,"
        " status, error, stream, prompt_tokens, completion_tokens, cost_usd, saved_usd, cache_status, latency_ms,"
        " attempts) SELECT 'epoch'::timestamptz + ev.ts * interval '1 millisecond', ev.request_id, ev.tenant,"
        " ev.key_name, ev.model, ev.deployment, ev.provider, ev.route, ev.status, ev.error, ev.stream,"
        " ev.prompt_tokens, ev.completion_tokens, ev.cost_usd, ev.saved_usd, ev.cache, ev.latency_ms, ev.attempts"
        " FROM ev ORDER BY 1, 2 ON CONFLICT (at, request_id) DO NOTHING"
        " RETURNING at, tenant, key_name, model, error, cache_status, prompt_tokens, completion_tokens, cost_usd,"
        " saved_usd, latency_ms),"
        " roll AS (INSERT INTO usage_rollups AS r (hour, tenant, key_name, model, requests, errors, cache_hits,"
        " prompt_tokens, completion_tokens, cost_usd, saved_usd, latency_ms_sum)"
        " SELECT date_trunc('hour', at), tenant, key_name, model, count(*), count(*) FILTER (WHERE error),"
        " count(*) FILTER (WHERE cache_status IN ('hit', 'semantic-hit')), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd),"
        " sum(saved_usd), sum(latency_ms) FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        " ON CONFLICT (hour, tenant, key_name, model) DO UPDATE SET requests = r.requests + excluded.requests,"
        " errors = r.errors + excluded.errors, cache_hits = r.cache_hits + excluded.cache_hits,"
        " prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,"
        " completion_tokens = r.completion_tokens + excluded.completion_tokens,"
        " cost_usd = r.cost_usd + excluded.cost_usd, saved_usd = r.saved_usd + excluded.saved_usd,"
        " latency_ms_sum = r.latency_ms_sum + excluded.latency_ms_sum, updated_at = now())"
        " SELECT (SELECT count(*) FROM ev)::text, (SELECT count(*) FROM ins)::text"},

    /* $1, $2 first and last day (days since the epoch) an event of the batch needs */
    [S_ENSURE] = {"usage_ensure",
        "SELECT leo_usage_ensure_partitions('1970-01-01'::date + $1::int, '1970-01-01'::date + $2::int)"},

    /* $1 retention in days → partitions created (yesterday to three days ahead), partitions dropped */
    [S_MAINT] = {"usage_maint",
        "SELECT leo_usage_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1,"
        " (now() AT TIME ZONE 'UTC')::date + 3)::text, leo_usage_drop_partitions($1::int)::text"},
};
/* clang-format on */

enum mode { M_GROUP, M_OWN, M_CLAIM, M_NEW };

struct leo_usage_consumer {
    uv_loop_t *loop;
    struct leo_db *db;
    struct leo_redis *redis;
    char *consumer;
    char batch_s[16];
    char claim_idle_s[24];
    unsigned retention_days;
    uint64_t claim_idle_ms;
    enum mode mode;
    char cursor[64]; /* XAUTOCLAIM's next start */
    uint64_t last_claim_ms;
    bool busy; /* a batch is in flight (fetch, write or ack) */
    bool closing;
    bool db_down, redis_down;
    bool maint_pending;         /* maintenance wanted but the database was down */
    int64_t part_from, part_to; /* days known to have a partition; part_to < part_from: none */
    uv_timer_t tick, maint, lag;
    int open;
    void (*close_cb)(void *);
    void *close_ud;

    /* the batch in flight */
    char **ids;
    size_t *idlens;
    size_t nids, cap;
    json_t *events;
    int64_t min_day, max_day;
    size_t ninvalid;
};

/* ---- small helpers ---- */

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && v[0] ? v : dflt;
}

static int env_num(const char *name, unsigned long long min, unsigned long long max, unsigned long long *out,
                   struct leo_buf *err)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        return 0;
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    if (*end || v[0] == '-' || n < min || n > max) {
        leo_buf_addf(err, "%s must be a number from %llu to %llu, got \"%.32s\"", name, min, max, v);
        return LEO_ECONFIG;
    }
    *out = n;
    return 0;
}

int leo_usage_consumer_opts_env(struct leo_usage_consumer_opts *o, struct leo_buf *err)
{
    unsigned long long batch = o->batch, idle = o->claim_idle_ms, days = o->retention_days;
    if (env_num("LEO_USAGE_BATCH", 1, 10000, &batch, err) ||
        env_num("LEO_USAGE_CLAIM_IDLE_MS", 100, 86400000, &idle, err) ||
        env_num("LEO_USAGE_RETENTION_DAYS", 1, 3650, &days, err))
        return LEO_ECONFIG;
    o->batch = (unsigned)batch;
    o->claim_idle_ms = idle;
    o->retention_days = (unsigned)days;
    o->consumer = env_or("LEO_USAGE_CONSUMER", o->consumer);
    return 0;
}

static void batch_reset(struct leo_usage_consumer *c)
{
    for (size_t i = 0; i < c->nids; i++)
        leo_free(c->ids[i]);
    c->nids = 0;
    if (c->events)
        json_decref(c->events);
    c->events = NULL;
    c->ninvalid = 0;
    c->min_day = INT64_MAX;
    c->max_day = INT64_MIN;
}

static void batch_add_id(struct leo_usage_consumer *c, const char *id, size_t len)
{
    if (c->nids == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->ids = leo_realloc(c->ids, c->cap * sizeof(*c->ids));
        c->idlens = leo_realloc(c->idlens, c->cap * sizeof(*c->idlens));
    }
    c->ids[c->nids] = leo_strndup(id, len);
    c->idlens[c->nids++] = len;
}

/* A string member cut to STR_MAX bytes (on a character boundary); "" when absent or not a string. */
static json_t *str_member(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v))
        return json_string("");
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n > STR_MAX) {
        n = STR_MAX;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    json_t *r = json_stringn_nocheck(s, n);
    return r ? r : json_string("");
}

static json_t *int_member(json_t *o, const char *k, json_int_t min, json_int_t max)
{
    json_t *v = json_object_get(o, k);
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
    return json_integer(n < min ? min : n > max ? max : n);
}

static json_t *real_member(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    double d = json_is_number(v) ? json_number_value(v) : 0.0;
    return json_real(d >= 0 && d < 1e15 ? d : 0.0);
}

/* Validates one entry's event and adds its normalised form to the batch; false when it is not an event. */
static bool batch_add_event(struct leo_usage_consumer *c, const char *text, size_t len)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    json_t *rid = json_object_get(o, "request_id"), *ts = json_object_get(o, "ts");
    if (!json_is_object(o) || !json_is_string(rid) || json_string_length(rid) == 0 ||
        json_string_length(rid) > STR_MAX || !json_is_integer(ts) || json_integer_value(ts) <= 0 ||
        json_integer_value(ts) > 253402300799999LL) {
        json_decref(o);
        return false;
    }
    json_t *e = json_object();
    json_object_set(e, "request_id", rid);
    json_object_set(e, "ts", ts);
    static const char *const strs[] = {"tenant", "key_name", "model", "deployment", "provider", "route", "cache"};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        json_object_set_new(e, strs[i], str_member(o, strs[i]));
    if (json_string_length(json_object_get(e, "cache")) == 0)
        json_object_set_new(e, "cache", json_string("none"));
    json_object_set_new(e, "status", int_member(o, "status", 0, 999));
    json_object_set_new(e, "attempts", int_member(o, "attempts", 0, 1000));
    json_object_set_new(e, "prompt_tokens", int_member(o, "prompt_tokens", 0, INT64_MAX / 4));
    json_object_set_new(e, "completion_tokens", int_member(o, "completion_tokens", 0, INT64_MAX / 4));
    json_object_set_new(e, "error", json_boolean(json_is_true(json_object_get(o, "error"))));
    json_object_set_new(e, "stream", json_boolean(json_is_true(json_object_get(o, "stream"))));
    json_object_set_new(e, "cost_usd", real_member(o, "cost_usd"));
    json_object_set_new(e, "saved_usd", real_member(o, "saved_usd"));
    json_object_set_new(e, "latency_ms", real_member(o, "latency_ms"));
    int64_t day = (int64_t)json_integer_value(ts) / DAY_MS;
    if (day < c->min_day)
        c->min_day = day;
    if (day > c->max_day)
        c->max_day = day;
    json_decref(o);
    if (c->events == NULL)
        c->events = json_array();
    json_array_append_new(c->events, e);
    return true;
}

/* Adds the entries of an array [[id, [field, value, ...] or nil], ...] to the batch. */
static void batch_add_entries(struct leo_usage_consumer *c, const redisReply *entries)
{
    if (entries == NULL || entries->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *en = entries->element[i];
        if (en->type != REDIS_REPLY_ARRAY || en->elements < 2 || en->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *id = en->element[0], *fields = en->element[1];
        batch_add_id(c, id->str, id->len);
        leo_metrics_add("leo_usage_consumed_total", "", 1);
        const redisReply *ev = NULL;
        if (fields->type == REDIS_REPLY_ARRAY)
            for (size_t j = 0; j + 1 < fields->elements; j += 2)
                if (fields->element[j]->type == REDIS_REPLY_STRING && fields->element[j]->len == 1 &&
                    fields->element[j]->str[0] == 'e' && fields->element[j + 1]->type == REDIS_REPLY_STRING)
                    ev = fields->element[j + 1];
        if (fields->type != REDIS_REPLY_ARRAY) {
            /* the entry was trimmed from the stream while pending: its event is gone */
            leo_error("usage: pending entry %.*s no longer exists in the stream (trimmed): its event is lost",
                      (int)id->len, id->str);
            c->ninvalid++;
        } else if (ev == NULL || !batch_add_event(c, ev->str, ev->len)) {
            leo_warn("usage: stream entry %.*s is not a usage event; acknowledged without writing it", (int)id->len,
                     id->str);
            c->ninvalid++;
        }
    }
}

/* ---- the batch cycle ---- */

static void kick(struct leo_usage_consumer *c);

static void on_tick(uv_timer_t *t)
{
    kick(t->data);
}

/* Ends the current cycle; the next fetch runs after delay_ms (0: on the next loop iteration). */
static void cycle_done(struct leo_usage_consumer *c, uint64_t delay_ms)
{
    batch_reset(c);
    c->busy = false;
    if (!c->closing)
        uv_timer_start(&c->tick, on_tick, delay_ms, 0);
}

static void cycle_failed(struct leo_usage_consumer *c)
{
    /* what this consumer read stays pending for it: read it again from its own list */
    if (c->mode != M_GROUP)
        c->mode = M_OWN;
    cycle_done(c, RETRY_MS);
}

static void redis_failed(struct leo_usage_consumer *c, const char *what, int err, const redisReply *reply)
{
    if (!c->redis_down)
        leo_warn("usage: %s failed: %s; retrying every %d ms", what,
                 err ? leo_strerror(err) : (reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "bad reply"),
                 RETRY_MS);
    c->redis_down = true;
}

static void after_ack(struct leo_usage_consumer *c)
{
    switch (c->mode) {
    case M_CLAIM:
        if (strcmp(c->cursor, "0-0") == 0)
            c->mode = M_NEW;
        break;
    default: break;
    }
    cycle_done(c, 0);
}

static void on_ack(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_usage_consumer *c = ud;
    if (c->closing) {
        c->busy = false;
        return;
    }
    if (err || reply->type != REDIS_REPLY_INTEGER) {
        /* committed but not acknowledged: the entries are read again and found to be duplicates */
        leo_metrics_add("leo_usage_batches_total", "result=\"ack_error\"", 1);
        redis_failed(c, "XACK", err, reply);
        cycle_failed(c);
        return;
    }
    leo_metrics_add("leo_usage_invalid_total", "", (double)c->ninvalid);
    after_ack(c);
}

static void ack(struct leo_usage_consumer *c)
{
    if (c->nids == 0) {
        after_ack(c);
        return;
    }
    size_t argc = 3 + c->nids;
    const char **argv = leo_malloc(argc * sizeof(*argv));
    size_t *lens = leo_malloc(argc * sizeof(*lens));
    argv[0] = "XACK";
    argv[1] = LEO_USAGE_STREAM;
    argv[2] = LEO_USAGE_GROUP;
    for (size_t i = 0; i < 3; i++)
        lens[i] = strlen(argv[i]);
    for (size_t i = 0; i < c->nids; i++) {
        argv[3 + i] = c->ids[i];
        lens[3 + i] = c->idlens[i];
    }
    int rc = leo_redis_command_argv(c->redis, on_ack, c, (int)argc, argv, lens);
    leo_free(argv);
    leo_free(lens);
    if (rc != 0) {
        leo_metrics_add("leo_usage_batches_total", "result=\"ack_error\"", 1);
        redis_failed(c, "XACK", rc, NULL);
        cycle_failed(c);
    }
}

static void db_failed(struct leo_usage_consumer *c, const char *what, const struct leo_db_result *r)
{
    if (!c->db_down)
        leo_warn("usage: %s failed: %s%s%s; retrying every %d ms", what, r->message, r->sqlstate[0] ? " " : "",
                 r->sqlstate, RETRY_MS);
    c->db_down = true;
}

static void on_written(const struct leo_db_result *r, void *ud)
{
    struct leo_usage_consumer *c = ud;
    if (c->closing) {
        c->busy = false;
        return;
    }
    if (r->err || PQntuples(r->res) != 1) {
        leo_metrics_add("leo_usage_batches_total", "result=\"db_error\"", 1);
        db_failed(c, "writing a batch", r);
        c->part_to = c->part_from - 1; /* a missing partition is a possible cause: ensure again */
        cycle_failed(c);
        return;
    }
    if (c->db_down)
        leo_info("usage: the database accepts batches again");
    c->db_down = false;
    long long in_batch = strtoll(PQgetvalue(r->res, 0, 0), NULL, 10);
    long long inserted = strtoll(PQgetvalue(r->res, 0, 1), NULL, 10);
    size_t valid = c->events ? json_array_size(c->events) : 0;
    leo_metrics_add("leo_usage_inserted_total", "", (double)inserted);
    leo_metrics_add("leo_usage_duplicates_total", "", (double)((long long)valid - inserted));
    leo_metrics_add("leo_usage_batches_total", "result=\"ok\"", 1);
    leo_debug("usage: batch of %zu entries: %lld events, %lld inserted, %zu invalid", c->nids, in_batch, inserted,
              c->ninvalid);
    ack(c);
}

static void write_batch(struct leo_usage_consumer *c)
{
    char *text = json_dumps(c->events, JSON_COMPACT);
    const char *params[] = {text};
    leo_db_query(c->db, S_WRITE, params, 1, on_written, c);
    free(text); /* jansson's allocation; the pool copied it */
}

static void on_ensured(const struct leo_db_result *r, void *ud)
{
    struct leo_usage_consumer *c = ud;
    if (c->closing) {
        c->busy = false;
        return;
    }
    if (r->err) {
        leo_metrics_add("leo_usage_batches_total", "result=\"db_error\"", 1);
        db_failed(c, "creating usage partitions", r);
        cycle_failed(c);
        return;
    }
    if (c->part_to < c->part_from || c->max_day < c->part_from - 1 || c->min_day > c->part_to + 1) {
        c->part_from = c->min_day;
        c->part_to = c->max_day;
    } else {
        if (c->min_day < c->part_from)
            c->part_from = c->min_day;
        if (c->max_day > c->part_to)
            c->part_to = c->max_day;
    }
    write_batch(c);
}

/* The fetched entries are in the batch: write them (creating partitions first if needed), or only
 * acknowledge them when none was an event. */
static void process(struct leo_usage_consumer *c)
{
    if (c->events == NULL) {
        ack(c);
        return;
    }
    if (c->part_to >= c->part_from && c->min_day >= c->part_from && c->max_day <= c->part_to) {
        write_batch(c);
        return;
    }
    int64_t from = c->min_day, to = c->max_day;
    if (to - from > 400) {
        /* an event with a wild clock; the function refuses such a range, so ensure the two ends only */
        leo_warn("usage: a batch spans %" PRId64 " days; event times look wrong", to - from);
        from = to - 400;
    }
    char a[24], b[24];
    snprintf(a, sizeof(a), "%" PRId64, from);
    snprintf(b, sizeof(b), "%" PRId64, to);
    const char *params[] = {a, b};
    leo_db_query(c->db, S_ENSURE, params, 2, on_ensured, c);
}

static bool is_error(const redisReply *reply, const char *prefix)
{
    return reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, prefix, strlen(prefix)) == 0;
}

static void fetched_common(struct leo_usage_consumer *c, int err, redisReply *reply, const char *what)
{
    if (is_error(reply, "NOGROUP")) {
        /* Redis lost the stream or the group (restarted without persistence): create it again */
        leo_warn("usage: the consumer group is gone (%s); creating it again", reply->str);
        c->mode = M_GROUP;
        cycle_done(c, 0);
        return;
    }
    redis_failed(c, what, err, reply);
    cycle_failed(c);
}

/* XREADGROUP's reply: nil, or [[stream, [entries]]]. */
static void on_read(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_usage_consumer *c = ud;
    if (c->closing) {
        c->busy = false;
        return;
    }
    if (err || (reply->type != REDIS_REPLY_ARRAY && reply->type != REDIS_REPLY_NIL)) {
        fetched_common(c, err, reply, "XREADGROUP");
        return;
    }
    if (c->redis_down)
        leo_info("usage: redis is reachable again");
    c->redis_down = false;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 && reply->element[0]->type == REDIS_REPLY_ARRAY &&
        reply->element[0]->elements == 2)
        batch_add_entries(c, reply->element[0]->element[1]);
    if (c->nids > 0 && c->mode == M_OWN)
        leo_info("usage: resuming %zu entries this consumer read before but never acknowledged", c->nids);
    if (c->nids == 0) {
        if (c->mode == M_OWN) {
            c->mode = M_CLAIM;
            snprintf(c->cursor, sizeof(c->cursor), "0-0");
            cycle_done(c, 0);
        } else {
            cycle_done(c, IDLE_MS);
        }
        return;
    }
    process(c);
}

/* XAUTOCLAIM's reply: [next cursor, [entries], [deleted ids] (Redis 7)]. */
static void on_claim(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_usage_consumer *c = ud;
    if (c->closing) {
        c->busy = false;
        return;
    }
    if (is_error(reply, "ERR unknown command")) {
        leo_warn("usage: this Redis has no XAUTOCLAIM (Redis 6.2+): entries left pending by other consumers "
                 "are not reclaimed");
        c->claim_idle_ms = UINT64_MAX;
        c->mode = M_NEW;
        cycle_done(c, 0);
        return;
    }
    if (err || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        fetched_common(c, err, reply, "XAUTOCLAIM");
        return;
    }
    c->redis_down = false;
    snprintf(c->cursor, sizeof(c->cursor), "%.*s", (int)reply->element[0]->len, reply->element[0]->str);
    batch_add_entries(c, reply->element[1]);
    if (reply->elements >= 3 && reply->element[2]->type == REDIS_REPLY_ARRAY && reply->element[2]->elements > 0)
        leo_error("usage: %zu pending entries no longer exist in the stream (trimmed): their events are lost",
                  reply->element[2]->elements);
    if (c->nids > 0)
        leo_info("usage: claimed %zu entries left pending by other consumers", c->nids);
    process(c);
}

static void on_group(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_usage_consumer *c = ud;
    if (c->closing) {
        c->busy = false;
        return;
    }
    if (err || (reply->type == REDIS_REPLY_ERROR && !is_error(reply, "BUSYGROUP"))) {
        redis_failed(c, "XGROUP CREATE", err, reply);
        cycle_done(c, RETRY_MS);
        return;
    }
    c->redis_down = false;
    c->mode = M_OWN;
    cycle_done(c, 0);
}

static void kick(struct leo_usage_consumer *c)
{
    if (c->busy || c->closing || !leo_redis_connected(c->redis))
        return;
    uint64_t now = uv_now(c->loop);
    if (c->mode == M_NEW && c->claim_idle_ms != UINT64_MAX && now - c->last_claim_ms >= c->claim_idle_ms) {
        c->mode = M_CLAIM;
        snprintf(c->cursor, sizeof(c->cursor), "0-0");
    }
    batch_reset(c);
    c->busy = true;
    int rc;
    switch (c->mode) {
    case M_GROUP: {
        const char *argv[] = {"XGROUP", "CREATE", LEO_USAGE_STREAM, LEO_USAGE_GROUP, "0", "MKSTREAM"};
        rc = leo_redis_command_argv(c->redis, on_group, c, 6, argv, NULL);
        break;
    }
    case M_OWN:
    case M_NEW: {
        const char *argv[] = {"XREADGROUP", "GROUP",          LEO_USAGE_GROUP,
                              c->consumer,  "COUNT",          c->batch_s,
                              "STREAMS",    LEO_USAGE_STREAM, c->mode == M_OWN ? "0" : ">"};
        rc = leo_redis_command_argv(c->redis, on_read, c, 9, argv, NULL);
        break;
    }
    case M_CLAIM: {
        if (strcmp(c->cursor, "0-0") == 0)
            c->last_claim_ms = now;
        const char *argv[] = {"XAUTOCLAIM",    LEO_USAGE_STREAM, LEO_USAGE_GROUP, c->consumer,
                              c->claim_idle_s, c->cursor,        "COUNT",         c->batch_s};
        rc = leo_redis_command_argv(c->redis, on_claim, c, 8, argv, NULL);
        break;
    }
    default: rc = LEO_EINVAL;
    }
    if (rc != 0) {
        c->busy = false;
        uv_timer_start(&c->tick, on_tick, RETRY_MS, 0);
    }
}

static void on_redis_state(struct leo_redis *r, bool connected, void *ud)
{
    (void)r;
    if (connected)
        kick(ud);
}

/* ---- maintenance and lag ---- */

static void on_maint_done(const struct leo_db_result *r, void *ud)
{
    struct leo_usage_consumer *c = ud;
    if (!c->closing) {
        if (r->err || PQntuples(r->res) != 1) {
            c->maint_pending = true;
            db_failed(c, "usage partition maintenance", r);
        } else {
            c->maint_pending = false;
            long created = strtol(PQgetvalue(r->res, 0, 0), NULL, 10),
                 dropped = strtol(PQgetvalue(r->res, 0, 1), NULL, 10);
            if (created || dropped)
                leo_info("usage: partitions created %ld, dropped %ld (retention %u days)", created, dropped,
                         c->retention_days);
            int64_t today = (int64_t)time(NULL) / 86400;
            c->part_from = today - 1;
            c->part_to = today + 3;
        }
    }
}

static void run_maint(struct leo_usage_consumer *c)
{
    char days[16];
    snprintf(days, sizeof(days), "%u", c->retention_days);
    const char *params[] = {days};
    leo_db_query(c->db, S_MAINT, params, 1, on_maint_done, c);
}

static void on_maint_timer(uv_timer_t *t)
{
    struct leo_usage_consumer *c = t->data;
    if (!c->closing)
        run_maint(c);
}

static const redisReply *map_get(const redisReply *m, const char *key)
{
    if (m->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < m->elements; i += 2)
        if (m->element[i]->type == REDIS_REPLY_STRING && strcmp(m->element[i]->str, key) == 0)
            return m->element[i + 1];
    return NULL;
}

/* XINFO GROUPS: for our group, "pending" and (Redis 7) "lag", the entries not yet delivered to the group. */
static void on_xinfo(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    (void)ud;
    if (err || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *name = map_get(reply->element[i], "name");
        if (name == NULL || name->type != REDIS_REPLY_STRING || strcmp(name->str, LEO_USAGE_GROUP) != 0)
            continue;
        const redisReply *pending = map_get(reply->element[i], "pending"), *lag = map_get(reply->element[i], "lag");
        if (pending && pending->type == REDIS_REPLY_INTEGER)
            leo_metrics_gauge_set("leo_usage_consumer_pending", "", (double)pending->integer);
        if (lag && lag->type == REDIS_REPLY_INTEGER)
            leo_metrics_gauge_set("leo_usage_consumer_lag", "", (double)lag->integer);
    }
}

static void on_lag_timer(uv_timer_t *t)
{
    struct leo_usage_consumer *c = t->data;
    if (c->closing || !leo_redis_connected(c->redis))
        return;
    const char *argv[] = {"XINFO", "GROUPS", LEO_USAGE_STREAM};
    leo_redis_command_argv(c->redis, on_xinfo, c, 3, argv, NULL);
    if (c->maint_pending)
        run_maint(c);
}

/* ---- lifecycle ---- */

int leo_usage_consumer_start(uv_loop_t *loop, const struct leo_usage_consumer_opts *opts,
                             struct leo_usage_consumer **out, struct leo_buf *err)
{
    *out = NULL;
    struct leo_usage_consumer *c = leo_new(struct leo_usage_consumer);
    c->loop = loop;
    struct leo_redis_opts ro = {
        .url = opts->redis_url, .on_state = on_redis_state, .ud = c, .command_timeout_ms = 5000};
    int rc = leo_redis_new(loop, &ro, &c->redis, err);
    if (rc) {
        leo_free(c);
        return rc;
    }
    char host[256] = "leo-controlplane";
    if (opts->consumer && opts->consumer[0])
        snprintf(host, sizeof(host), "%s", opts->consumer);
    else if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "leo-controlplane");
    c->consumer = leo_strdup(host);
    snprintf(c->batch_s, sizeof(c->batch_s), "%u", opts->batch ? opts->batch : DEFAULT_BATCH);
    c->claim_idle_ms = opts->claim_idle_ms ? opts->claim_idle_ms : DEFAULT_CLAIM_IDLE_MS;
    snprintf(c->claim_idle_s, sizeof(c->claim_idle_s), "%" PRIu64, c->claim_idle_ms);
    c->retention_days = opts->retention_days ? opts->retention_days : DEFAULT_RETENTION_DAYS;
    c->mode = M_GROUP;
    c->part_from = 1;
    c->part_to = 0;
    batch_reset(c);
    struct leo_db_opts dopts = {.conninfo = opts->conninfo, .size = 1, .stmts = stmts, .nstmts = S_COUNT};
    c->db = leo_db_new(loop, &dopts);
    uv_timer_t *timers[] = {&c->tick, &c->maint, &c->lag};
    for (size_t i = 0; i < 3; i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = c;
    }
    c->open = 5; /* three timers, the pool, the Redis connection */
    run_maint(c);
    uv_timer_start(&c->maint, on_maint_timer, MAINT_MS, MAINT_MS);
    uv_timer_start(&c->lag, on_lag_timer, LAG_MS, LAG_MS);
    leo_info("usage: consuming %s as \"%s\" in group %s (batches of %s, claim after %" PRIu64
             " ms idle, retention %u days)",
             LEO_USAGE_STREAM, c->consumer, LEO_USAGE_GROUP, c->batch_s, c->claim_idle_ms, c->retention_days);
    *out = c;
    return 0;
}

static void closed_one(struct leo_usage_consumer *c)
{
    if (--c->open > 0)
        return;
    void (*cb)(void *) = c->close_cb;
    void *ud = c->close_ud;
    batch_reset(c);
    leo_free(c->ids);
    leo_free(c->idlens);
    leo_free(c->consumer);
    leo_free(c);
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

void leo_usage_consumer_close(struct leo_usage_consumer *c, void (*cb)(void *ud), void *ud)
{
    c->closing = true;
    c->close_cb = cb;
    c->close_ud = ud;
    uv_close((uv_handle_t *)&c->tick, on_timer_closed);
    uv_close((uv_handle_t *)&c->maint, on_timer_closed);
    uv_close((uv_handle_t *)&c->lag, on_timer_closed);
    leo_db_close(c->db, 1, on_conn_closed, c);
    leo_redis_close(c->redis, on_conn_closed, c);
}

void leo_usage_consumer_metrics_describe(void)
{
    leo_metrics_describe("leo_usage_consumed_total", LEO_METRIC_COUNTER, "Usage stream entries read.");
    leo_metrics_describe("leo_usage_inserted_total", LEO_METRIC_COUNTER, "Usage events written to usage_events.");
    leo_metrics_describe("leo_usage_duplicates_total", LEO_METRIC_COUNTER,
                         "Usage events read again after they were stored (redelivered), not written twice.");
    leo_metrics_describe("leo_usage_invalid_total", LEO_METRIC_COUNTER,
                         "Usage stream entries that were not usage events (acknowledged, not written).");
    leo_metrics_describe("leo_usage_batches_total", LEO_METRIC_COUNTER,
                         "Usage batches by result: ok, db_error (retried), ack_error (retried).");
    leo_metrics_describe("leo_usage_consumer_lag", LEO_METRIC_GAUGE,
                         "Usage stream entries not yet delivered to the consumer group.");
    leo_metrics_describe("leo_usage_consumer_pending", LEO_METRIC_GAUGE,
                         "Usage stream entries delivered but not yet acknowledged.");
}
