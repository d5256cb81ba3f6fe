/*
 * cache.c — the exact cache: keys, policy, entries and the two-level store (see cache.h for the contract).
 *
 * L1 is a chained hash table over the entries themselves (each entry carries its key, its chain link and its
 * LRU links), so a hit costs one hash of the key text and no allocation. Its byte count is the bodies plus a
 * fixed per-entry overhead; inserting past the bound evicts from the least recently used end. Expired entries
 * are dropped when a lookup meets them (no sweeper: an expired entry still counts against the bound until it is
 * met or evicted, which the LRU order makes likely soon enough).
 *
 * L2 is Redis: "GET leo:cache:<tenant>:<hash>" and "SET ... PX ttl". The value is a one-line text header (format
 * version, dialect, usage, times, replayability) and the body. Every Redis outcome other than a well-formed
 * value is a miss; the cache never retries, never queues while Redis is down (the client refuses at once),
 * and waits at most the client's command timeout.
 */
#define _GNU_SOURCE
#include "cache.h"

#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/json_scan.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/redis.h"

#define DEFAULT_TTL_S 3600
#define DEFAULT_MAX_BYTES (64ull << 20)
#define DEFAULT_MAX_ENTRY_BYTES (1ull << 20)
#define MAX_BYTES_LIMIT (1ull << 40)
#define MAX_ENTRY_LIMIT (1ull << 30)
#define ENTRY_OVERHEAD ((uint64_t)sizeof(struct leo_cache_entry))
#define REDIS_PREFIX "leo:cache:"
#define VALUE_MAGIC "LEOC1"
#define TENANT_MAX 128

/* ---- names ----------------------------------------------------------------------------------------------- */

static const char *const mode_names[] = {"never", "deterministic", "always"};

int leo_cache_mode_parse(const char *s)
{
    for (size_t i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
        if (strcmp(s, mode_names[i]) == 0)
            return (int)i;
    return -1;
}

const char *leo_cache_mode_name(enum leo_cache_mode m)
{
    return (unsigned)m < sizeof(mode_names) / sizeof(mode_names[0]) ? mode_names[m] : "unknown";
}

const char *leo_cache_status_name(enum leo_cache_status s)
{
    switch (s) {
    case LEO_CACHE_STATUS_HIT: return "hit";
    case LEO_CACHE_STATUS_MISS: return "miss";
    case LEO_CACHE_STATUS_SEMANTIC_HIT: return "semantic-hit";
    default: return "bypass";
    }
}

/* ---- configuration ----------------------------------------------------------------------------------------- */

void leo_cache_config_defaults(struct leo_cache_config *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->def = (struct leo_cache_policy){true, LEO_CACHE_MODE_DETERMINISTIC, DEFAULT_TTL_S, true};
    cc->max_bytes = DEFAULT_MAX_BYTES;
    cc->max_entry_bytes = DEFAULT_MAX_ENTRY_BYTES;
    cc->redis = true;
}

static void overrides_free(struct leo_cache_override *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        leo_free(o[i].name);
    leo_free(o);
}

void leo_cache_config_release(struct leo_cache_config *cc)
{
    overrides_free(cc->models, cc->nmodels);
    overrides_free(cc->tenants, cc->ntenants);
    leo_cache_config_defaults(cc);
}

/* The JSON path of the value being read, and the first error (the style of gateway/config.c). */
struct pctx {
    struct leo_buf *err;
    char path[384];
    size_t plen;
};

static size_t path_push(struct pctx *c, const char *fmt, const char *s)
{
    size_t old = c->plen;
    int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, fmt, s);
    if (n > 0)
        c->plen += (size_t)n < sizeof(c->path) - c->plen ? (size_t)n : sizeof(c->path) - c->plen - 1;
    return old;
}

static void path_pop(struct pctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

static int pfail(struct pctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pfail(struct pctx *c, const char *fmt, ...)
{
    if (c->err) {
        leo_buf_addf(c->err, "%s: ", c->path);
        va_list ap;
        va_start(ap, fmt);
        leo_buf_vaddf(c->err, fmt, ap);
        va_end(ap);
    }
    return LEO_ECONFIG;
}

/* Calls pfail at path.key. */
static int pfail_at(struct pctx *c, const char *key, const char *msg)
{
    size_t old = path_push(c, ".%s", key);
    int rc = pfail(c, "%s", msg);
    path_pop(c, old);
    return rc;
}

static int check_fields(struct pctx *c, json_t *o, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], key) != 0)
            i++;
        if (allowed[i] == NULL)
            return pfail_at(c, key, "unknown field");
    }
    return 0;
}

static int get_bool(struct pctx *c, json_t *o, const char *key, bool *out, bool *has)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return 0;
    if (!json_is_boolean(v))
        return pfail_at(c, key, "expected a boolean");
    *out = json_is_true(v);
    if (has)
        *has = true;
    return 0;
}

static int get_uint(struct pctx *c, json_t *o, const char *key, uint64_t min, uint64_t max, uint64_t *out, bool *has)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return 0;
    if (!json_is_integer(v))
        return pfail_at(c, key, "expected an integer");
    json_int_t i = json_integer_value(v);
    if (i < 0 || (uint64_t)i < min || (uint64_t)i > max) {
        size_t old = path_push(c, ".%s", key);
        int rc = pfail(c, "must be between %" PRIu64 " and %" PRIu64, min, max);
        path_pop(c, old);
        return rc;
    }
    *out = (uint64_t)i;
    if (has)
        *has = true;
    return 0;
}

static int get_mode(struct pctx *c, json_t *o, enum leo_cache_mode *out, bool *has)
{
    json_t *v = json_object_get(o, "mode");
    if (v == NULL)
        return 0;
    int m = json_is_string(v) ? leo_cache_mode_parse(json_string_value(v)) : -1;
    if (m < 0)
        return pfail_at(c, "mode", "expected \"never\", \"deterministic\" or \"always\"");
    *out = (enum leo_cache_mode)m;
    if (has)
        *has = true;
    return 0;
}

/* The policy members, shared by the section itself and its overrides. */
static int parse_policy(struct pctx *c, json_t *o, struct leo_cache_override *ov)
{
    int rc = get_bool(c, o, "enabled", &ov->p.enabled, &ov->has_enabled);
    if (rc == 0)
        rc = get_mode(c, o, &ov->p.mode, &ov->has_mode);
    if (rc == 0)
        rc = get_uint(c, o, "ttl_s", 1, LEO_CACHE_MAX_TTL_S, &ov->p.ttl_s, &ov->has_ttl);
    if (rc == 0)
        rc = get_bool(c, o, "dedup", &ov->p.dedup, &ov->has_dedup);
    return rc;
}

static int parse_overrides(struct pctx *c, json_t *section, const char *key, struct leo_cache_override **out,
                           size_t *nout)
{
    static const char *const fields[] = {"enabled", "mode", "ttl_s", "dedup", NULL};
    json_t *o = json_object_get(section, key);
    if (o == NULL)
        return 0;
    if (!json_is_object(o))
        return pfail_at(c, key, "expected an object");
    size_t old = path_push(c, ".%s", key);
    size_t n = json_object_size(o), i = 0;
    struct leo_cache_override *ovs = leo_calloc(n ? n : 1, sizeof(*ovs));
    const char *name;
    json_t *v;
    int rc = 0;
    json_object_foreach(o, name, v)
    {
        size_t o2 = path_push(c, "[\"%.128s\"]", name);
        if (name[0] == '\0' || strlen(name) > 128)
            rc = pfail(c, "a name must be 1 to 128 characters");
        else if (!json_is_object(v))
            rc = pfail(c, "expected an object");
        else
            rc = check_fields(c, v, fields);
        if (rc == 0) {
            ovs[i].name = leo_strdup(name);
            rc = parse_policy(c, v, &ovs[i]);
            i++;
        }
        path_pop(c, o2);
        if (rc)
            break;
    }
    path_pop(c, old);
    *out = ovs;
    *nout = i;
    return rc;
}

int leo_cache_config_parse(const json_t *section, const char *path, struct leo_cache_config *cc, struct leo_buf *err)
{
    static const char *const fields[] = {"enabled",         "mode",  "ttl_s",  "dedup",   "max_bytes",
                                         "max_entry_bytes", "redis", "models", "tenants", NULL};
    leo_cache_config_defaults(cc);
    if (section == NULL)
        return 0;
    struct pctx c = {.err = err};
    path_push(&c, "%s", path ? path : "cache");
    json_t *o = (json_t *)section;
    if (!json_is_object(o))
        return pfail(&c, "expected an object");
    int rc = check_fields(&c, o, fields);
    struct leo_cache_override def = {.p = cc->def};
    if (rc == 0)
        rc = parse_policy(&c, o, &def);
    cc->def = def.p;
    if (rc == 0)
        rc = get_uint(&c, o, "max_bytes", 0, MAX_BYTES_LIMIT, &cc->max_bytes, NULL);
    if (rc == 0)
        rc = get_uint(&c, o, "max_entry_bytes", 1, MAX_ENTRY_LIMIT, &cc->max_entry_bytes, NULL);
    if (rc == 0)
        rc = get_bool(&c, o, "redis", &cc->redis, NULL);
    if (rc == 0)
        rc = parse_overrides(&c, o, "models", &cc->models, &cc->nmodels);
    if (rc == 0)
        rc = parse_overrides(&c, o, "tenants", &cc->tenants, &cc->ntenants);
    if (rc != 0)
        leo_cache_config_release(cc);
    return rc;
}

static void apply_override(const struct leo_cache_override *o, struct leo_cache_policy *p)
{
    if (o->has_enabled)
        p->enabled = o->p.enabled;
    if (o->has_mode)
        p->mode = o->p.mode;
    if (o->has_ttl)
        p->ttl_s = o->p.ttl_s;
    if (o->has_dedup)
        p->dedup = o->p.dedup;
}

void leo_cache_policy_for(const struct leo_cache_config *cc, const char *tenant, const char *model,
                          struct leo_cache_policy *out)
{
    *out = cc->def;
    for (size_t i = 0; model && i < cc->nmodels; i++)
        if (strcmp(cc->models[i].name, model) == 0)
            apply_override(&cc->models[i], out);
    for (size_t i = 0; tenant && i < cc->ntenants; i++)
        if (strcmp(cc->tenants[i].name, tenant) == 0)
            apply_override(&cc->tenants[i], out);
}

/* ---- per-request controls and eligibility ----------------------------------------------------------------- */

/* Directives of x-leo-cache: data over an if-chain. */
static const struct {
    const char *name;
    size_t offset;
} directives[] = {
    {"no-cache", offsetof(struct leo_cache_ctl, no_cache)},
    {"no-store", offsetof(struct leo_cache_ctl, no_store)},
    {"refresh", offsetof(struct leo_cache_ctl, refresh)},
};

int leo_cache_ctl_parse(struct leo_str cache_hdr, struct leo_str ttl_hdr, struct leo_cache_ctl *out,
                        struct leo_buf *err)
{
    memset(out, 0, sizeof(*out));
    const char *p = cache_hdr.p, *end = cache_hdr.p + cache_hdr.len;
    while (cache_hdr.len && p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        struct leo_str tok = leo_str_trim(leo_str_n(p, (size_t)((comma ? comma : end) - p)));
        if (tok.len) {
            size_t i = 0;
            while (i < sizeof(directives) / sizeof(directives[0]) && !leo_str_caseeq(tok, directives[i].name))
                i++;
            if (i == sizeof(directives) / sizeof(directives[0])) {
                if (err)
                    leo_buf_addf(err,
                                 "header x-leo-cache: unknown directive \"%.*s\" (expected no-cache, "
                                 "no-store or refresh)",
                                 (int)(tok.len > 64 ? 64 : tok.len), tok.p);
                return LEO_EINVAL;
            }
            *(bool *)((char *)out + directives[i].offset) = true;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    struct leo_str t = leo_str_trim(ttl_hdr);
    if (ttl_hdr.len) {
        uint64_t v = 0;
        bool ok = t.len > 0 && t.len <= 10;
        for (size_t i = 0; ok && i < t.len; i++) {
            ok = t.p[i] >= '0' && t.p[i] <= '9';
            v = v * 10 + (uint64_t)(t.p[i] - '0');
        }
        if (!ok || v < 1 || v > LEO_CACHE_MAX_TTL_S) {
            if (err)
                leo_buf_addf(err, "header x-leo-cache-ttl: \"%.*s\" is not a number of seconds from 1 to %u",
                             (int)(t.len > 64 ? 64 : t.len), t.p, LEO_CACHE_MAX_TTL_S);
            return LEO_EINVAL;
        }
        out->ttl_s = v;
    }
    return 0;
}

bool leo_cache_deterministic(struct leo_str t, struct leo_str seed)
{
    if (t.len > 0 && (t.p[0] == '-' || (t.p[0] >= '0' && t.p[0] <= '9'))) {
        /* a number is zero when every digit before its exponent is */
        size_t i = t.p[0] == '-';
        while (i < t.len && (t.p[i] == '0' || t.p[i] == '.'))
            i++;
        if (i == t.len || t.p[i] == 'e' || t.p[i] == 'E')
            return true;
        /* or when it underflows strtod, as jansson reads it (1e-400): that takes an exponent or some 320 zeros
         * after the point, so 0.7 and the like are decided without a copy */
        double d;
        if ((memchr(t.p, 'e', t.len) != NULL || memchr(t.p, 'E', t.len) != NULL || t.len > 300) &&
            leo_json_number(t, NULL, &d) == 0 && d == 0)
            return true;
    }
    return leo_json_is_integer(seed);
}

void leo_cache_decide(const struct leo_cache_policy *pol, bool deterministic, const struct leo_cache_ctl *ctl,
                      struct leo_cache_decision *out)
{
    memset(out, 0, sizeof(*out));
    if (!pol->enabled) {
        out->reason = "disabled";
        return;
    }
    if (pol->mode == LEO_CACHE_MODE_NEVER) {
        out->reason = "mode never";
        return;
    }
    if (pol->mode == LEO_CACHE_MODE_DETERMINISTIC && !deterministic) {
        out->reason = "not deterministic";
        return;
    }
    out->lookup = !ctl->no_cache && !ctl->refresh;
    out->store = !ctl->no_store;
    out->dedup = pol->dedup && out->lookup;
    out->ttl_ms = (ctl->ttl_s ? ctl->ttl_s : pol->ttl_s) * 1000;
    if (!out->lookup && !out->store)
        out->reason = "no-cache, no-store";
}

/* ---- keys ---------------------------------------------------------------------------------------------- */

/* Top-level members that cannot change the answer. */
static const char *const excluded_members[] = {"user", "stream", "stream_options", "metadata", "store", "service_tier"};

static bool excluded(const char *key, size_t len)
{
    for (size_t i = 0; i < sizeof(excluded_members) / sizeof(excluded_members[0]); i++)
        if (strlen(excluded_members[i]) == len && memcmp(excluded_members[i], key, len) == 0)
            return true;
    return false;
}

struct kv {
    const char *key;
    size_t len;
    json_t *v;
};

static int kv_cmp(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int canon_string(struct leo_buf *b, const char *s, size_t n)
{
    int rc = leo_buf_addch(b, '"');
    if (rc == 0)
        rc = leo_buf_add_json_escaped(b, s, n);
    if (rc == 0)
        rc = leo_buf_addch(b, '"');
    return rc;
}

/* Numbers: an integral value is written as an integer whatever its spelling (0, 0.0, 0e0, -0.0 → 0; 1e2 →
 * 100); any other value with 17 significant digits, which names one double exactly. */
static int add_int(struct leo_buf *b, long long n)
{
    if (n < 0 && leo_buf_addch(b, '-') != 0)
        return LEO_ETOOBIG;
    return leo_buf_add_uint(b, n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n);
}

static int canon_number(struct leo_buf *b, json_t *v)
{
    if (json_is_integer(v))
        return add_int(b, (long long)json_integer_value(v));
    double d = json_real_value(v);
    if (isfinite(d) && d == floor(d) && fabs(d) < 9.0e18)
        return add_int(b, (long long)d);
    return leo_buf_addf(b, "%.17g", d);
}

static int canon_value(struct leo_buf *b, json_t *v, bool top)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        struct kv *kvs = leo_malloc((n ? n : 1) * sizeof(*kvs));
        const char *key;
        size_t klen;
        json_t *m;
        json_object_keylen_foreach(v, key, klen, m)
        {
            if (top && excluded(key, klen))
                continue;
            kvs[i++] = (struct kv){key, klen, m};
        }
        qsort(kvs, i, sizeof(*kvs), kv_cmp);
        int rc = leo_buf_addch(b, '{');
        for (size_t j = 0; rc == 0 && j < i; j++) {
            if (j)
                rc = leo_buf_addch(b, ',');
            if (rc == 0)
                rc = canon_string(b, kvs[j].key, kvs[j].len);
            if (rc == 0)
                rc = leo_buf_addch(b, ':');
            if (rc == 0)
                rc = canon_value(b, kvs[j].v, false);
        }
        leo_free(kvs);
        return rc ? rc : leo_buf_addch(b, '}');
    }
    case JSON_ARRAY: {
        int rc = leo_buf_addch(b, '[');
        for (size_t j = 0; rc == 0 && j < json_array_size(v); j++) {
            if (j)
                rc = leo_buf_addch(b, ',');
            if (rc == 0)
                rc = canon_value(b, json_array_get(v, j), false);
        }
        return rc ? rc : leo_buf_addch(b, ']');
    }
    case JSON_STRING: return canon_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
    case JSON_REAL: return canon_number(b, v);
    case JSON_TRUE: return leo_buf_adds(b, "true");
    case JSON_FALSE: return leo_buf_adds(b, "false");
    default: return leo_buf_adds(b, "null");
    }
}

static const char *dialect_tag(enum leo_dialect d)
{
    return d == LEO_DIALECT_ANTHROPIC ? "anthropic-messages" : d == LEO_DIALECT_GEMINI ? "gemini" : "openai-chat";
}

int leo_cache_canonical(enum leo_dialect dialect, json_t *req, struct leo_buf *out)
{
    if (!json_is_object(req))
        return LEO_EINVAL;
    (void)dialect;
    return canon_value(out, req, true);
}

static int skip_excluded(const char *key, size_t len, void *ud)
{
    (void)ud;
    return excluded(key, len);
}

int leo_cache_canonical_raw(const char *body, size_t len, struct leo_buf *out)
{
    struct leo_json_canon_opts opts = {skip_excluded, NULL};
    return leo_json_canonical(body, len, &opts, out);
}

/* tenant: 1 to TENANT_MAX bytes */
static void key_of_canonical(const char *tenant, enum leo_dialect dialect, struct leo_str canonical,
                             struct leo_cache_key *out)
{
    size_t tlen = strlen(tenant);
    /* lengths before the variable parts: no two (tenant, dialect, body) triples serialise alike */
    char head[TENANT_MAX + 64];
    const char *tag = dialect_tag(dialect);
    size_t tag_len = strlen(tag);
    int n = 13;
    memcpy(head, "leo-cache-v1\n", 13);
    if (tlen >= 100)
        head[n++] = (char)('0' + tlen / 100);
    if (tlen >= 10)
        head[n++] = (char)('0' + tlen / 10 % 10);
    head[n++] = (char)('0' + tlen % 10);
    head[n++] = ':';
    memcpy(head + n, tenant, tlen);
    n += (int)tlen;
    head[n++] = '\n';
    memcpy(head + n, tag, tag_len);
    n += (int)tag_len;
    head[n++] = '\n';
    crypto_generichash_state st;
    unsigned char d[32];
    crypto_generichash_init(&st, NULL, 0, sizeof(d));
    crypto_generichash_update(&st, (const unsigned char *)head, (size_t)n);
    crypto_generichash_update(&st, (const unsigned char *)canonical.p, canonical.len);
    crypto_generichash_final(&st, d, sizeof(d));
    memcpy(out->s, tenant, tlen);
    out->s[tlen] = ':';
    sodium_bin2hex(out->s + tlen + 1, LEO_CACHE_HASH_HEX + 1, d, sizeof(d));
    out->len = tlen + 1 + LEO_CACHE_HASH_HEX;
}

int leo_cache_key(const char *tenant, enum leo_dialect dialect, const char *body, size_t len,
                  struct leo_cache_key *out)
{
    if (tenant == NULL || tenant[0] == '\0' || strlen(tenant) > TENANT_MAX)
        return LEO_EINVAL;
    struct leo_buf b = LEO_BUF_INIT;
    int rc = leo_cache_canonical_raw(body, len, &b);
    if (rc == 0)
        key_of_canonical(tenant, dialect, (struct leo_str){b.p, b.len}, out);
    leo_buf_release(&b);
    return rc;
}

/* ---- entries ------------------------------------------------------------------------------------------- */

static void usage_from_doc(enum leo_dialect dialect, json_t *doc, struct leo_cache_entry *e)
{
    json_t *u = json_object_get(doc, "usage");
    if (!json_is_object(u))
        return;
    if (dialect == LEO_DIALECT_ANTHROPIC) {
        static const char *const inputs[] = {"input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"};
        for (size_t i = 0; i < 3; i++) {
            json_t *v = json_object_get(u, inputs[i]);
            if (json_is_integer(v) && json_integer_value(v) > 0)
                e->input_tokens += (uint64_t)json_integer_value(v);
        }
        json_t *o = json_object_get(u, "output_tokens");
        e->output_tokens = json_is_integer(o) && json_integer_value(o) > 0 ? (uint64_t)json_integer_value(o) : 0;
        e->have_usage = json_is_integer(json_object_get(u, "input_tokens")) || json_is_integer(o);
    } else {
        struct leo_usage lu = {0};
        leo_usage_from_openai(u, &lu);
        e->input_tokens = lu.input_tokens;
        e->output_tokens = lu.output_tokens;
        e->have_usage = lu.have;
    }
}

static struct leo_cache_entry *entry_alloc(enum leo_dialect dialect, const char *body, size_t len)
{
    struct leo_cache_entry *e = leo_new(struct leo_cache_entry);
    e->refs = 1;
    e->dialect = dialect;
    e->body = leo_strndup(body, len);
    e->len = len;
    return e;
}

struct leo_cache_entry *leo_cache_entry_new(enum leo_dialect dialect, const char *body, size_t len,
                                            const struct leo_usage *u, uint64_t now_ms)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return NULL;
    }
    struct leo_cache_entry *e = entry_alloc(dialect, body, len);
    if (u && u->have) {
        e->input_tokens = u->input_tokens;
        e->output_tokens = u->output_tokens;
        e->have_usage = true;
    } else {
        usage_from_doc(dialect, doc, e);
    }
    e->stored_at_ms = now_ms;
    e->replayable = leo_cache_replayable(dialect, doc);
    json_decref(doc);
    return e;
}

struct leo_cache_entry *leo_cache_entry_ref(struct leo_cache_entry *e)
{
    e->refs++;
    return e;
}

void leo_cache_entry_unref(struct leo_cache_entry *e)
{
    if (e == NULL || --e->refs > 0)
        return;
    leo_free(e->_sse[0]);
    leo_free(e->_sse[1]);
    leo_free(e->body);
    leo_free(e);
}

json_t *leo_cache_entry_doc(struct leo_cache_entry *e)
{
    json_t *doc = json_loadb(e->body, e->len, 0, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

void leo_cache_entry_encode(const struct leo_cache_entry *e, struct leo_buf *out)
{
    leo_buf_addf(out, VALUE_MAGIC " %d %" PRIu64 " %" PRIu64 " %d %" PRIu64 " %" PRIu64 " %d\n", (int)e->dialect,
                 e->input_tokens, e->output_tokens, e->have_usage ? 1 : 0, e->stored_at_ms, e->expires_at_ms,
                 e->replayable ? 1 : 0);
    leo_buf_add(out, e->body, e->len);
}

struct leo_cache_entry *leo_cache_entry_decode(const char *p, size_t len)
{
    const char *nl = memchr(p, '\n', len < 160 ? len : 160);
    if (nl == NULL)
        return NULL;
    char head[161];
    memcpy(head, p, (size_t)(nl - p));
    head[nl - p] = '\0';
    int dialect, have, replayable, used = 0;
    uint64_t in, out, stored, expires;
    if (sscanf(head, VALUE_MAGIC " %d %" SCNu64 " %" SCNu64 " %d %" SCNu64 " %" SCNu64 " %d%n", &dialect, &in, &out,
               &have, &stored, &expires, &replayable, &used) != 7 ||
        (size_t)used != (size_t)(nl - p) || dialect < LEO_DIALECT_OPENAI || dialect > LEO_DIALECT_ANTHROPIC)
        return NULL;
    const char *body = nl + 1;
    size_t blen = len - (size_t)(body - p);
    if (blen == 0 || body[0] != '{')
        return NULL;
    struct leo_cache_entry *e = entry_alloc((enum leo_dialect)dialect, body, blen);
    e->input_tokens = in;
    e->output_tokens = out;
    e->have_usage = have != 0;
    e->stored_at_ms = stored;
    e->expires_at_ms = expires;
    e->replayable = replayable != 0;
    return e;
}

/* ---- the store -------------------------------------------------------------------------------------------- */

/* One Redis command in flight: a GET for a lookup or a SET for a store. Lives until Redis answers (the client
 * answers every accepted command exactly once), even when the cache or the caller is gone by then. */
struct leo_cache_lookup {
    struct leo_cache *c;    /* NULL once the cache is freed */
    leo_cache_lookup_cb cb; /* NULL: a store, or a cancelled lookup */
    void *ud;
    struct leo_cache_key key;
    struct leo_cache_lookup *prev, *next;
};

struct leo_cache {
    struct leo_redis *redis;
    uint64_t max_bytes, max_entry_bytes;
    uint64_t bytes, entries;
    struct leo_cache_entry **buckets;
    size_t mask;                       /* buckets - 1 */
    struct leo_cache_entry *mru, *lru; /* L1 recency list */
    struct leo_cache_lookup *pending;  /* Redis commands in flight */
    size_t npending;
    leo_cache_clock_fn clock;
    void *clock_ud;
    struct key_memo *memo;            /* KEY_MEMO_SLOTS bodies answered from the cache, by hash (or NULL) */
    unsigned char memo_seed[crypto_shorthash_KEYBYTES];
};

/* The key memo: bodies that got an answer from the cache, kept byte for byte with their key, so the same bytes
 * again skip the canonical text and its hash. Direct-mapped: a body takes its hash's slot, replacing what was
 * there. A key is a function of (tenant, dialect, bytes), so an entry is never stale. */
#define KEY_MEMO_SLOTS 1024
#define KEY_MEMO_MAX_BODY 8192

struct key_memo {
    uint64_t h;
    enum leo_dialect dialect;
    char *body; /* NULL: an empty slot */
    size_t len;
    struct leo_cache_key key;
};

static uint64_t wall_ms(void *ud)
{
    (void)ud;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static uint64_t key_hash(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void gauges(const struct leo_cache *c)
{
    leo_metrics_gauge_set("leo_cache_bytes", "", (double)c->bytes);
    leo_metrics_gauge_set("leo_cache_entries", "", (double)c->entries);
}

struct leo_cache *leo_cache_new(const struct leo_cache_opts *opts)
{
    struct leo_cache *c = leo_new(struct leo_cache);
    c->redis = opts->redis;
    c->max_bytes = opts->max_bytes;
    c->max_entry_bytes = opts->max_entry_bytes ? opts->max_entry_bytes : DEFAULT_MAX_ENTRY_BYTES;
    c->mask = 63;
    c->buckets = leo_calloc(c->mask + 1, sizeof(*c->buckets));
    c->clock = wall_ms;
    randombytes_buf(c->memo_seed, sizeof(c->memo_seed));
    return c;
}

static uint64_t memo_hash(const struct leo_cache *c, const char *body, size_t len)
{
    unsigned char h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const unsigned char *)body, len, c->memo_seed);
    uint64_t v;
    memcpy(&v, h, sizeof(v));
    return v;
}

/* The slot holding exactly these bytes for this tenant and dialect, or NULL. */
static struct key_memo *memo_find(const struct leo_cache *c, const char *tenant, enum leo_dialect dialect,
                                  const char *body, size_t len, uint64_t h)
{
    if (c->memo == NULL)
        return NULL;
    struct key_memo *m = &c->memo[h % KEY_MEMO_SLOTS];
    size_t tlen = strlen(tenant);
    if (m->body == NULL || m->h != h || m->dialect != dialect || m->len != len || m->key.len <= tlen ||
        m->key.s[tlen] != ':' || memcmp(m->key.s, tenant, tlen) != 0 || memcmp(m->body, body, len) != 0)
        return NULL;
    return m;
}

int leo_cache_key_memo(struct leo_cache *c, const char *tenant, enum leo_dialect dialect, const char *body, size_t len,
                       struct leo_cache_key *out, bool *memoized)
{
    *memoized = false;
    if (c != NULL && tenant != NULL && len <= KEY_MEMO_MAX_BODY) {
        const struct key_memo *m = memo_find(c, tenant, dialect, body, len, memo_hash(c, body, len));
        if (m != NULL) {
            *out = m->key;
            *memoized = true;
            leo_metrics_add("leo_cache_key_memo_total", "result=\"hit\"", 1);
            return 0;
        }
        leo_metrics_add("leo_cache_key_memo_total", "result=\"miss\"", 1);
    }
    return leo_cache_key(tenant, dialect, body, len, out);
}

void leo_cache_key_remember(struct leo_cache *c, enum leo_dialect dialect, const char *body, size_t len,
                            const struct leo_cache_key *key)
{
    if (c == NULL || len > KEY_MEMO_MAX_BODY)
        return;
    if (c->memo == NULL)
        c->memo = leo_calloc(KEY_MEMO_SLOTS, sizeof(*c->memo));
    uint64_t h = memo_hash(c, body, len);
    struct key_memo *m = &c->memo[h % KEY_MEMO_SLOTS];
    if (m->body && m->h == h && m->len == len && m->dialect == dialect && m->key.len == key->len &&
        memcmp(m->key.s, key->s, key->len) == 0 && memcmp(m->body, body, len) == 0)
        return; /* already there */
    leo_free(m->body);
    m->body = leo_malloc(len ? len : 1);
    memcpy(m->body, body, len);
    m->len = len;
    m->h = h;
    m->dialect = dialect;
    m->key = *key;
}

void leo_cache_set_clock(struct leo_cache *c, leo_cache_clock_fn fn, void *ud)
{
    c->clock = fn ? fn : wall_ms;
    c->clock_ud = ud;
}

void leo_cache_set_redis(struct leo_cache *c, struct leo_redis *redis)
{
    c->redis = redis;
}

static struct leo_cache_entry **l1_slot(struct leo_cache *c, const char *key, size_t len)
{
    struct leo_cache_entry **pp = &c->buckets[key_hash(key, len) & c->mask];
    while (*pp && strcmp((*pp)->_key, key) != 0)
        pp = &(*pp)->_chain;
    return pp;
}

static void l1_unlink(struct leo_cache *c, struct leo_cache_entry *e, const char *reason)
{
    struct leo_cache_entry **pp = l1_slot(c, e->_key, strlen(e->_key));
    if (*pp == e)
        *pp = e->_chain;
    if (e->_prev)
        e->_prev->_next = e->_next;
    else
        c->mru = e->_next;
    if (e->_next)
        e->_next->_prev = e->_prev;
    else
        c->lru = e->_prev;
    e->_prev = e->_next = e->_chain = NULL;
    e->_in_l1 = false;
    c->bytes -= e->_l1_bytes;
    c->entries--;
    if (reason)
        leo_metrics_add("leo_cache_evictions_total", reason, 1);
    leo_cache_entry_unref(e);
}

static void l1_touch(struct leo_cache *c, struct leo_cache_entry *e)
{
    if (c->mru == e)
        return;
    e->_prev->_next = e->_next;
    if (e->_next)
        e->_next->_prev = e->_prev;
    else
        c->lru = e->_prev;
    e->_prev = NULL;
    e->_next = c->mru;
    c->mru->_prev = e;
    c->mru = e;
}

static void l1_evict_to(struct leo_cache *c, uint64_t bound)
{
    while (c->lru && c->bytes > bound)
        l1_unlink(c, c->lru, "reason=\"size\"");
}

static void l1_grow(struct leo_cache *c)
{
    size_t n = (c->mask + 1) * 2;
    struct leo_cache_entry **nb = leo_calloc(n, sizeof(*nb));
    for (size_t i = 0; i <= c->mask; i++) {
        struct leo_cache_entry *e = c->buckets[i];
        while (e) {
            struct leo_cache_entry *next = e->_chain;
            size_t j = key_hash(e->_key, strlen(e->_key)) & (n - 1);
            e->_chain = nb[j];
            nb[j] = e;
            e = next;
        }
    }
    leo_free(c->buckets);
    c->buckets = nb;
    c->mask = n - 1;
}

int leo_cache_entry_sse(struct leo_cache *c, struct leo_cache_entry *e, bool include_usage, struct leo_buf *out)
{
    int u = include_usage ? 1 : 0;
    if (e->_sse[u])
        return leo_buf_add(out, e->_sse[u], e->_sse_len[u]);
    if (!e->replayable)
        return LEO_EINVAL;
    json_t *doc = leo_cache_entry_doc(e);
    if (doc == NULL)
        return LEO_EINVAL;
    size_t start = out->len;
    int rc = leo_cache_replay_sse(e->dialect, doc, NULL, 0, include_usage, out);
    json_decref(doc);
    if (rc != 0) {
        out->len = start;
        out->p[start] = '\0';
        return rc;
    }
    size_t n = out->len - start;
    /* kept only where the byte bound counts it: an entry in L1 that still fits with the rendering */
    if (c && e->_in_l1 && e->_l1_bytes + n <= c->max_bytes) {
        e->_sse[u] = leo_strndup(out->p + start, n);
        e->_sse_len[u] = n;
        e->_l1_bytes += n;
        c->bytes += n;
        leo_cache_entry_ref(e); /* the eviction below may take e itself out of L1 */
        l1_evict_to(c, c->max_bytes);
        leo_cache_entry_unref(e);
    }
    return 0;
}

/* Puts e (taking a reference) under key; replaces an older entry. False when it cannot fit at all. */
static bool l1_put(struct leo_cache *c, const struct leo_cache_key *key, struct leo_cache_entry *e)
{
    uint64_t size = e->len + key->len + ENTRY_OVERHEAD + e->_sse_len[0] + e->_sse_len[1];
    if (size > c->max_bytes || e->_in_l1)
        return false;
    struct leo_cache_entry **pp = l1_slot(c, key->s, key->len);
    if (*pp)
        l1_unlink(c, *pp, NULL);
    l1_evict_to(c, c->max_bytes - size);
    memcpy(e->_key, key->s, key->len + 1);
    e->_l1_bytes = size;
    e->_in_l1 = true;
    leo_cache_entry_ref(e);
    pp = l1_slot(c, key->s, key->len); /* evictions may have changed the chain */
    e->_chain = NULL;
    *pp = e;
    e->_prev = NULL;
    e->_next = c->mru;
    if (c->mru)
        c->mru->_prev = e;
    c->mru = e;
    if (c->lru == NULL)
        c->lru = e;
    c->bytes += size;
    c->entries++;
    if (c->entries > c->mask + 1)
        l1_grow(c);
    return true;
}

void leo_cache_set_limits(struct leo_cache *c, uint64_t max_bytes, uint64_t max_entry_bytes)
{
    c->max_bytes = max_bytes;
    c->max_entry_bytes = max_entry_bytes ? max_entry_bytes : DEFAULT_MAX_ENTRY_BYTES;
    l1_evict_to(c, max_bytes);
    gauges(c);
}

void leo_cache_l1_usage(const struct leo_cache *c, uint64_t *bytes, uint64_t *entries)
{
    *bytes = c->bytes;
    *entries = c->entries;
}

size_t leo_cache_pending(const struct leo_cache *c)
{
    return c->npending;
}

static void pending_unlink(struct leo_cache_lookup *l)
{
    struct leo_cache *c = l->c;
    if (c == NULL)
        return;
    if (l->prev)
        l->prev->next = l->next;
    else
        c->pending = l->next;
    if (l->next)
        l->next->prev = l->prev;
    c->npending--;
    l->c = NULL;
}

static struct leo_cache_lookup *pending_new(struct leo_cache *c, const struct leo_cache_key *key)
{
    struct leo_cache_lookup *l = leo_new(struct leo_cache_lookup);
    l->c = c;
    l->key = *key;
    l->next = c->pending;
    if (c->pending)
        c->pending->prev = l;
    c->pending = l;
    c->npending++;
    return l;
}

void leo_cache_free(struct leo_cache *c)
{
    if (c == NULL)
        return;
    while (c->pending) {
        struct leo_cache_lookup *l = c->pending;
        l->cb = NULL;
        pending_unlink(l);
    }
    while (c->lru)
        l1_unlink(c, c->lru, NULL);
    gauges(c);
    leo_free(c->buckets);
    for (size_t i = 0; c->memo && i < KEY_MEMO_SLOTS; i++)
        leo_free(c->memo[i].body);
    leo_free(c->memo);
    leo_free(c);
}

static void redis_key(const struct leo_cache_key *key, struct leo_buf *out)
{
    leo_buf_adds(out, REDIS_PREFIX);
    leo_buf_add(out, key->s, key->len);
}

static void on_get(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_cache_lookup *l = ud;
    struct leo_cache *c = l->c;
    pending_unlink(l);
    if (c == NULL || l->cb == NULL) {
        leo_free(l);
        return;
    }
    struct leo_cache_entry *e = NULL;
    const char *result = "miss";
    if (err != 0 || reply->type == REDIS_REPLY_ERROR) {
        result = "error";
        if (err == 0)
            err = LEO_EUPSTREAM;
    } else if (reply->type == REDIS_REPLY_STRING) {
        e = leo_cache_entry_decode(reply->str, reply->len);
        if (e == NULL) {
            result = "error";
            err = LEO_EPARSE;
        } else if (e->expires_at_ms <= c->clock(c->clock_ud) || e->len > c->max_entry_bytes) {
            leo_cache_entry_unref(e);
            e = NULL;
        } else {
            result = "hit";
        }
    }
    char lbl[48];
    snprintf(lbl, sizeof(lbl), "level=\"l2\",result=\"%s\"", result);
    leo_metrics_add("leo_cache_lookups_total", lbl, 1);
    if (e) {
        struct leo_cache_key key = l->key;
        if (l1_put(c, &key, e))
            gauges(c);
    }
    leo_cache_lookup_cb cb = l->cb;
    void *cud = l->ud;
    leo_free(l);
    cb(e, e ? 0 : err, cud);
}

int leo_cache_lookup(struct leo_cache *c, const struct leo_cache_key *key, struct leo_cache_entry **out,
                     leo_cache_lookup_cb cb, void *ud, struct leo_cache_lookup **handle)
{
    *out = NULL;
    if (handle)
        *handle = NULL;
    struct leo_cache_entry **pp = l1_slot(c, key->s, key->len);
    struct leo_cache_entry *e = *pp;
    if (e && e->expires_at_ms <= c->clock(c->clock_ud)) {
        l1_unlink(c, e, "reason=\"expired\"");
        gauges(c);
        e = NULL;
    }
    if (e) {
        l1_touch(c, e);
        leo_metrics_add("leo_cache_lookups_total", "level=\"l1\",result=\"hit\"", 1);
        *out = leo_cache_entry_ref(e);
        return LEO_CACHE_HIT;
    }
    leo_metrics_add("leo_cache_lookups_total", "level=\"l1\",result=\"miss\"", 1);
    if (c->redis == NULL || cb == NULL)
        return LEO_CACHE_MISS;
    struct leo_buf k = LEO_BUF_INIT;
    redis_key(key, &k);
    struct leo_cache_lookup *l = pending_new(c, key);
    l->cb = cb;
    l->ud = ud;
    const char *argv[2] = {"GET", k.p};
    int rc = leo_redis_command_argv(c->redis, on_get, l, 2, argv, NULL);
    leo_buf_release(&k);
    if (rc != 0) {
        /* not connected (or closing): a miss at once, without a callback */
        pending_unlink(l);
        leo_free(l);
        leo_metrics_add("leo_cache_lookups_total", "level=\"l2\",result=\"error\"", 1);
        return LEO_CACHE_MISS;
    }
    if (handle)
        *handle = l;
    return LEO_CACHE_PENDING;
}

void leo_cache_lookup_cancel(struct leo_cache_lookup *l)
{
    if (l)
        l->cb = NULL; /* the record itself is freed when Redis answers */
}

static void on_set(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct leo_cache_lookup *l = ud;
    pending_unlink(l);
    bool ok = err == 0 && reply->type != REDIS_REPLY_ERROR;
    leo_metrics_add("leo_cache_stores_total", ok ? "level=\"l2\",result=\"ok\"" : "level=\"l2\",result=\"error\"", 1);
    leo_free(l);
}

int leo_cache_store(struct leo_cache *c, const struct leo_cache_key *key, struct leo_cache_entry *e, uint64_t ttl_ms)
{
    if (e->len > c->max_entry_bytes) {
        leo_metrics_add("leo_cache_stores_total", "level=\"l1\",result=\"too_big\"", 1);
        return LEO_ETOOBIG;
    }
    if (ttl_ms == 0)
        ttl_ms = (uint64_t)DEFAULT_TTL_S * 1000;
    /* entries are immutable once shared: an entry already in L1 is stored as is (same expiry) */
    if (!e->_in_l1)
        e->expires_at_ms = c->clock(c->clock_ud) + ttl_ms;
    if (l1_put(c, key, e)) {
        leo_metrics_add("leo_cache_stores_total", "level=\"l1\",result=\"ok\"", 1);
        gauges(c);
    }
    if (c->redis == NULL)
        return 0;
    struct leo_buf k = LEO_BUF_INIT, v = LEO_BUF_INIT;
    redis_key(key, &k);
    leo_cache_entry_encode(e, &v);
    char px[24];
    snprintf(px, sizeof(px), "%" PRIu64, ttl_ms);
    const char *argv[5] = {"SET", k.p, v.p, "PX", px};
    size_t lens[5] = {3, k.len, v.len, 2, strlen(px)};
    struct leo_cache_lookup *l = pending_new(c, key);
    if (leo_redis_command_argv(c->redis, on_set, l, 5, argv, lens) != 0) {
        pending_unlink(l);
        leo_free(l);
        leo_metrics_add("leo_cache_stores_total", "level=\"l2\",result=\"error\"", 1);
    }
    leo_buf_release(&k);
    leo_buf_release(&v);
    return 0;
}

void leo_cache_remove(struct leo_cache *c, const struct leo_cache_key *key)
{
    struct leo_cache_entry *e = *l1_slot(c, key->s, key->len);
    if (e) {
        l1_unlink(c, e, NULL);
        gauges(c);
    }
}

size_t leo_cache_purge_tenant(struct leo_cache *c, const char *tenant)
{
    size_t tlen = tenant ? strlen(tenant) : 0, n = 0;
    struct leo_cache_entry *e = c->mru;
    while (e) {
        struct leo_cache_entry *next = e->_next;
        if (tenant == NULL || (strncmp(e->_key, tenant, tlen) == 0 && e->_key[tlen] == ':')) {
            l1_unlink(c, e, NULL);
            n++;
        }
        e = next;
    }
    gauges(c);
    return n;
}

void leo_cache_metrics_describe(void)
{
    leo_metrics_describe("leo_cache_lookups_total", LEO_METRIC_COUNTER,
                         "Exact-cache lookups, by level (l1 in-process, l2 Redis) and result (hit, miss, error).");
    leo_metrics_describe("leo_cache_stores_total", LEO_METRIC_COUNTER,
                         "Exact-cache stores, by level and result (ok, error, too_big).");
    leo_metrics_describe("leo_cache_evictions_total", LEO_METRIC_COUNTER,
                         "Entries dropped from the in-process cache, by reason (size, expired).");
    leo_metrics_describe("leo_cache_bytes", LEO_METRIC_GAUGE, "Bytes held by the in-process exact cache.");
    leo_metrics_describe("leo_cache_key_memo_total", LEO_METRIC_COUNTER,
                         "Exact-cache keys found for a body seen before (hit) or computed from its bytes (miss).");
    leo_metrics_describe("leo_cache_entries", LEO_METRIC_GAUGE, "Entries held by the in-process exact cache.");
    leo_metrics_describe("leo_dedup_leaders_total", LEO_METRIC_COUNTER,
                         "Deduplicated flights: requests that made the upstream call for identical ones.");
    leo_metrics_describe("leo_dedup_followers_total", LEO_METRIC_COUNTER,
                         "Requests served by an identical request's upstream call instead of their own.");
}
