/*
 * config.c — builds a struct leo_config from JSON (jansson) and answers lookups on it.
 *
 * Parsing stops at the first error and reports it as "<JSON path>: <what is wrong>". Every object is checked
 * against the list of fields it may hold before any field is read, so a misspelt field name is reported as
 * unknown rather than silently replaced by a default. jansson keeps object members in document order, so
 * "the first error" is the first one in reading order.
 *
 * A snapshot is built completely (indexes included) before it is handed out, and never changes afterwards.
 */
#include "config.h"
#include "providers/provider.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "prices.h"
#include "worker.h"

#define CONFIG_FILE_MAX (16u << 20)
#define NAME_MAX_LEN 128
#define PRICE_MAX 1e6

/* Provider types the gateway can talk to. A new adapter is one row here plus its code in gateway/providers/. */
static const struct {
    const char *name;
    const char *default_api_version; /* NULL: api_version not used; "": required */
} provider_types[] = {
    {"openai", NULL},             /* OpenAI and every compatible API: DeepSeek, Groq, Together, Mistral, vLLM, Ollama */
    {"azure", ""},                /* Azure OpenAI: deployment path, api-key header, api-version parameter */
    {"anthropic", "2023-06-01"},  /* the Anthropic Messages API */
    {"gemini", NULL},             /* the Google Gemini API (generateContent) */
};

/* ---------------------------------------------------------------------------------------------------------
 * Lookup indexes: open addressing with linear probing, at most half full, so a probe sequence stays short.
 * Items are pointers into the snapshot; an empty slot holds NULL.
 */

struct index {
    size_t mask; /* capacity - 1, capacity a power of two */
    uint64_t *hashes;
    const void **items;
    const char **names; /* the name an item is filed under when it is not the item's own (model aliases) */
};

typedef bool (*index_eq_fn)(const void *item, const void *key);

static struct index *index_new(size_t n)
{
    size_t cap = 8;
    while (cap < 2 * n)
        cap <<= 1;
    struct index *ix = leo_new(struct index);
    ix->mask = cap - 1;
    ix->hashes = leo_calloc(cap, sizeof(*ix->hashes));
    ix->items = leo_calloc(cap, sizeof(*ix->items));
    ix->names = leo_calloc(cap, sizeof(*ix->names));
    return ix;
}

static void index_free(struct index *ix)
{
    if (ix == NULL)
        return;
    leo_free(ix->hashes);
    leo_free(ix->items);
    leo_free(ix->names);
    leo_free(ix);
}

static const void *index_find(const struct index *ix, uint64_t h, index_eq_fn eq, const void *key)
{
    for (size_t i = h & ix->mask;; i = (i + 1) & ix->mask) {
        if (ix->items[i] == NULL)
            return NULL;
        if (ix->hashes[i] == h && eq(ix->items[i], key))
            return ix->items[i];
    }
}

/* The caller has checked that no equal item is present; the table never fills (capacity >= 2n). */
static void index_put(struct index *ix, uint64_t h, const void *item)
{
    size_t i = h & ix->mask;
    while (ix->items[i] != NULL)
        i = (i + 1) & ix->mask;
    ix->hashes[i] = h;
    ix->items[i] = item;
}

/* Files item under another name than its own (the name must live as long as the index). */
static void index_put_named(struct index *ix, uint64_t h, const void *item, const char *name)
{
    size_t i = h & ix->mask;
    while (ix->items[i] != NULL)
        i = (i + 1) & ix->mask;
    ix->hashes[i] = h;
    ix->items[i] = item;
    ix->names[i] = name;
}

/* A model by its name or one of its aliases. */
static const struct leo_model *model_find(const struct index *ix, uint64_t h, struct leo_str name)
{
    for (size_t i = h & ix->mask;; i = (i + 1) & ix->mask) {
        const struct leo_model *m = ix->items[i];
        if (m == NULL)
            return NULL;
        if (ix->hashes[i] == h && leo_str_eqc(name, ix->names[i] ? ix->names[i] : m->name))
            return m;
    }
}

static uint64_t hash_str(struct leo_str s)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < s.len; i++) {
        h ^= (unsigned char)s.p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Key hashes are keyed BLAKE2b output, uniformly distributed: their first 8 bytes are a fine table hash. */
static uint64_t hash_keyhash(const uint8_t *kh)
{
    uint64_t h;
    memcpy(&h, kh, sizeof(h));
    return h;
}

static bool key_eq(const void *item, const void *key)
{
    return leo_keyhash_equal(((const struct leo_tenant_key *)item)->hash, key);
}

/* ---------------------------------------------------------------------------------------------------------
 * Parse context: the JSON path of the value being read and the first error.
 */

struct ctx {
    struct leo_buf *err;
    char path[512];
    size_t plen;
    bool failed;
    const char *secret_env; /* auth.key_hash_secret_env; the secret is derived once the whole file is valid */
    bool key_values;        /* provider keys may be given as values (the control plane's snapshot), not only as
                               environment variable names (files) */
};

static size_t path_push(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(struct ctx *c, const char *fmt, ...)
{
    size_t old = c->plen;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->path + c->plen, sizeof(c->path) - c->plen, fmt, ap);
    va_end(ap);
    if (n > 0)
        c->plen += (size_t)n < sizeof(c->path) - c->plen ? (size_t)n : sizeof(c->path) - c->plen - 1;
    return old;
}

/* ".key", or "key" at the top level. */
static size_t path_key(struct ctx *c, const char *key)
{
    return path_push(c, c->plen ? ".%s" : "%s", key);
}

static size_t path_index(struct ctx *c, size_t i)
{
    return path_push(c, "[%zu]", i);
}

/* A member of an object whose keys are names (prices): ["name"]. */
static size_t path_member(struct ctx *c, const char *name)
{
    return path_push(c, "[\"%.*s\"]", NAME_MAX_LEN, name);
}

static void path_pop(struct ctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

static int fail(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct ctx *c, const char *fmt, ...)
{
    if (c->failed || c->err == NULL) {
        c->failed = true;
        return LEO_ECONFIG;
    }
    c->failed = true;
    leo_buf_addf(c->err, "%s: ", c->plen ? c->path : "(top level)");
    va_list ap;
    va_start(ap, fmt);
    leo_buf_vaddf(c->err, fmt, ap);
    va_end(ap);
    return LEO_ECONFIG;
}

/* Reports the error at path + "." + key. */
static int fail_at(struct ctx *c, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_at(struct ctx *c, const char *key, const char *fmt, ...)
{
    size_t old = path_key(c, key);
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int rc = fail(c, "%s", msg);
    path_pop(c, old);
    return rc;
}

static int expected(struct ctx *c, const char *what)
{
    return fail(c, "expected %s", what);
}

/* Rejects members not listed in allowed (NULL-terminated). */
static int check_fields(struct ctx *c, const json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], key) != 0)
            i++;
        if (allowed[i] == NULL)
            return fail_at(c, key, "unknown field");
    }
    return 0;
}

/* An element that must be an object holding only the allowed fields. */
static int open_object(struct ctx *c, const json_t *v, const char *const *allowed)
{
    if (!json_is_object(v))
        return expected(c, "an object");
    return check_fields(c, v, allowed);
}

/* The getters read obj.key. An absent optional member leaves *out unchanged and returns 0. */

static int get_string(struct ctx *c, const json_t *obj, const char *key, bool required, const char **out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return required ? fail_at(c, key, "missing required field") : 0;
    size_t old = path_key(c, key);
    int rc = 0;
    if (!json_is_string(v))
        rc = expected(c, "a string");
    else if (strlen(json_string_value(v)) != json_string_length(v))
        rc = fail(c, "must not contain NUL characters");
    else
        *out = json_string_value(v);
    path_pop(c, old);
    return rc;
}

static int get_uint(struct ctx *c, const json_t *obj, const char *key, uint64_t min, uint64_t max, uint64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return 0;
    size_t old = path_key(c, key);
    int rc = 0;
    if (!json_is_integer(v)) {
        rc = expected(c, "an integer");
    } else {
        json_int_t i = json_integer_value(v);
        if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
            rc = fail(c, "must be between %llu and %llu", (unsigned long long)min, (unsigned long long)max);
        else
            *out = (uint64_t)i;
    }
    path_pop(c, old);
    return rc;
}

static int get_number(struct ctx *c, const json_t *obj, const char *key, bool required, double min, double max,
                      double *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return required ? fail_at(c, key, "missing required field") : 0;
    size_t old = path_key(c, key);
    int rc = 0;
    if (!json_is_number(v)) {
        rc = expected(c, "a number");
    } else {
        double d = json_number_value(v);
        if (!(d >= min && d <= max))
            rc = fail(c, "must be between %.10g and %.10g", min, max);
        else
            *out = d;
    }
    path_pop(c, old);
    return rc;
}

static int get_bool(struct ctx *c, const json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return 0;
    if (!json_is_boolean(v)) {
        size_t old = path_key(c, key);
        int rc = expected(c, "a boolean");
        path_pop(c, old);
        return rc;
    }
    *out = json_is_true(v);
    return 0;
}

/* Returns the member if it has the JSON type wanted (JSON_OBJECT or JSON_ARRAY); NULL when absent or wrong
 * (then *rc is set). */
static json_t *get_container(struct ctx *c, const json_t *obj, const char *key, json_type type, bool required, int *rc)
{
    *rc = 0;
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        if (required)
            *rc = fail_at(c, key, "missing required field");
        return NULL;
    }
    if (json_typeof(v) != type) {
        size_t old = path_key(c, key);
        *rc = expected(c, type == JSON_OBJECT ? "an object" : "an array");
        path_pop(c, old);
        return NULL;
    }
    return v;
}

/* Names (providers, models, tenants, upstream models) appear in logs, metrics labels and URLs. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
            return false;
    }
    return true;
}

static const char *const name_rule = "must be 1 to 128 printable ASCII characters without spaces, quotes or "
                                     "backslashes";

/* Labels (key names) may hold spaces but no control characters. */
static bool valid_label(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

static bool valid_env_name(const char *s)
{
    if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    for (const char *p = s + 1; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return strlen(s) <= NAME_MAX_LEN;
}

/* Reads a name member and checks it against valid_name. */
static int get_name(struct ctx *c, const json_t *obj, const char *key, bool required, const char **out)
{
    const char *s = NULL;
    int rc = get_string(c, obj, key, required, &s);
    if (rc || s == NULL)
        return rc;
    if (!valid_name(s))
        return fail_at(c, key, "%s", name_rule);
    *out = s;
    return 0;
}

static int get_env_name(struct ctx *c, const json_t *obj, const char *key, const char **out)
{
    const char *s = NULL;
    int rc = get_string(c, obj, key, true, &s);
    if (rc)
        return rc;
    if (!valid_env_name(s))
        return fail_at(c, key, "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
    *out = s;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * Sections
 */

static int parse_listen(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    const char *s = NULL;
    int rc = get_string(c, root, "listen", false, &s);
    if (rc || s == NULL)
        return rc;
    char host[256];
    int port;
    if (leo_parse_listen(s, host, sizeof(host), &port) != 0)
        return fail_at(c, "listen", "expected \"host:port\" (IPv6 as \"[::1]:8080\"), got \"%.*s\"", NAME_MAX_LEN, s);
    unsigned char addr[16];
    bool v6 = s[0] == '[';
    if (!v6 && strchr(host, ':'))
        return fail_at(c, "listen", "an IPv6 address goes in brackets, as in \"[::1]:8080\"");
    if (inet_pton(v6 ? AF_INET6 : AF_INET, host, addr) != 1)
        return fail_at(c, "listen", "\"%s\" is not an IP%s address", host, v6 ? "v6" : "v4");
    leo_free(cfg->listen_host);
    cfg->listen_host = leo_strdup(host);
    cfg->listen_port = port;
    return 0;
}

static int parse_limits(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"max_header_bytes",
                                         "max_headers",
                                         "max_body_bytes",
                                         "header_timeout_ms",
                                         "body_timeout_ms",
                                         "idle_timeout_ms",
                                         "max_connections",
                                         "max_pending_write_bytes",
                                         NULL};
    int rc;
    json_t *o = get_container(c, root, "limits", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "limits");
    struct leo_http_limits *l = &cfg->limits;
    uint64_t header_bytes = l->max_header_bytes, headers = l->max_headers, body = l->max_body_bytes,
             conns = l->max_connections, pending = l->max_pending_write;
    rc = check_fields(c, o, fields);
    if (rc == 0)
        rc = get_uint(c, o, "max_header_bytes", 1024, 1u << 20, &header_bytes);
    if (rc == 0)
        rc = get_uint(c, o, "max_headers", 1, 10000, &headers);
    if (rc == 0)
        rc = get_uint(c, o, "max_body_bytes", 1024, 1u << 30, &body);
    if (rc == 0)
        rc = get_uint(c, o, "header_timeout_ms", 100, 3600000, &l->header_timeout_ms);
    if (rc == 0)
        rc = get_uint(c, o, "body_timeout_ms", 100, 3600000, &l->body_timeout_ms);
    if (rc == 0)
        rc = get_uint(c, o, "idle_timeout_ms", 100, 3600000, &l->idle_timeout_ms);
    if (rc == 0)
        rc = get_uint(c, o, "max_connections", 1, 1000000, &conns);
    if (rc == 0)
        rc = get_uint(c, o, "max_pending_write_bytes", 4096, 1u << 30, &pending);
    l->max_header_bytes = (size_t)header_bytes;
    l->max_headers = (size_t)headers;
    l->max_body_bytes = (size_t)body;
    l->max_connections = (unsigned)conns;
    l->max_pending_write = (size_t)pending;
    path_pop(c, old);
    return rc;
}

static int parse_auth(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"key_hash_secret_env", NULL};
    int rc;
    json_t *o = get_container(c, root, "auth", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "auth");
    rc = check_fields(c, o, fields);
    if (rc == 0 && json_object_get(o, "key_hash_secret_env"))
        rc = get_env_name(c, o, "key_hash_secret_env", &c->secret_env);
    path_pop(c, old);
    return rc;
}

static int parse_defaults(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"max_tokens", NULL};
    int rc;
    json_t *o = get_container(c, root, "defaults", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "defaults");
    rc = check_fields(c, o, fields);
    if (rc == 0)
        rc = get_uint(c, o, "max_tokens", 1, 10000000, &cfg->default_max_tokens);
    path_pop(c, old);
    return rc;
}

/* Reads the variable named at path.key into key; an unset or empty variable is an error that names it. */
/* ---------------------------------------------------------------------------------------------------------
 * Quotas, strategies, routing, Redis, alerts
 */

static const char *const strategy_names[] = {
    [LEO_STRATEGY_WEIGHTED] = "weighted",
    [LEO_STRATEGY_PRIORITY] = "priority",
    [LEO_STRATEGY_LEAST_BUSY] = "least-busy",
    [LEO_STRATEGY_LOWEST_LATENCY] = "lowest-latency",
    [LEO_STRATEGY_LOWEST_COST] = "lowest-cost",
};

int leo_strategy_parse(const char *s)
{
    for (size_t i = 0; i < sizeof(strategy_names) / sizeof(strategy_names[0]); i++)
        if (strcmp(strategy_names[i], s) == 0)
            return (int)i;
    return -1;
}

const char *leo_strategy_name(enum leo_strategy s)
{
    return (size_t)s < sizeof(strategy_names) / sizeof(strategy_names[0]) ? strategy_names[s] : "unknown";
}

#define QUOTA_MAX 1000000000000000ull

/* obj[key] = {"rpm", "tpm", "tokens_per_day", "tokens_per_month", "usd_per_day", "usd_per_month", "concurrency"};
 * a deployment's limits take rpm, tpm and concurrency only. */
static int parse_quota(struct ctx *c, const json_t *obj, const char *key, bool deployment, struct leo_quota *q)
{
    static const char *const all[] = {"rpm",         "tpm",           "tokens_per_day", "tokens_per_month",
                                      "usd_per_day", "usd_per_month", "concurrency",    NULL};
    static const char *const dep[] = {"rpm", "tpm", "concurrency", NULL};
    int rc;
    json_t *o = get_container(c, obj, key, JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, key);
    rc = open_object(c, o, deployment ? dep : all);
    if (rc == 0)
        rc = get_uint(c, o, "rpm", 0, QUOTA_MAX, &q->rpm);
    if (rc == 0)
        rc = get_uint(c, o, "tpm", 0, QUOTA_MAX, &q->tpm);
    if (rc == 0)
        rc = get_uint(c, o, "tokens_per_day", 0, QUOTA_MAX, &q->tokens_per_day);
    if (rc == 0)
        rc = get_uint(c, o, "tokens_per_month", 0, QUOTA_MAX, &q->tokens_per_month);
    if (rc == 0)
        rc = get_number(c, o, "usd_per_day", false, 0, 1e12, &q->usd_per_day);
    if (rc == 0)
        rc = get_number(c, o, "usd_per_month", false, 0, 1e12, &q->usd_per_month);
    if (rc == 0)
        rc = get_uint(c, o, "concurrency", 0, 1000000, &q->concurrency);
    path_pop(c, old);
    return rc;
}

static int parse_routing(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"max_attempts",    "backoff_base_ms",  "backoff_max_ms",
                                         "deadline_ms",     "key_cooldown_ms",  "breaker_failures",
                                         "breaker_open_ms", "hedge_after_ms",   "breaker_slow_ms",
                                         NULL};
    int rc;
    json_t *o = get_container(c, root, "routing", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "routing");
    uint64_t attempts = cfg->routing.max_attempts, failures = cfg->routing.breaker_failures;
    rc = open_object(c, o, fields);
    if (rc == 0)
        rc = get_uint(c, o, "max_attempts", 1, 20, &attempts);
    if (rc == 0)
        rc = get_uint(c, o, "backoff_base_ms", 0, 60000, &cfg->routing.backoff_base_ms);
    if (rc == 0)
        rc = get_uint(c, o, "backoff_max_ms", 0, 600000, &cfg->routing.backoff_max_ms);
    if (rc == 0)
        rc = get_uint(c, o, "deadline_ms", 0, 3600000, &cfg->routing.deadline_ms);
    if (rc == 0)
        rc = get_uint(c, o, "key_cooldown_ms", 0, 86400000, &cfg->routing.key_cooldown_ms);
    if (rc == 0)
        rc = get_uint(c, o, "breaker_failures", 1, 1000, &failures);
    if (rc == 0)
        rc = get_uint(c, o, "breaker_open_ms", 0, 3600000, &cfg->routing.breaker_open_ms);
    if (rc == 0)
        rc = get_uint(c, o, "hedge_after_ms", 0, 600000, &cfg->routing.hedge_after_ms);
    if (rc == 0)
        rc = get_uint(c, o, "breaker_slow_ms", 0, 3600000, &cfg->routing.breaker_slow_ms);
    cfg->routing.max_attempts = (unsigned)attempts;
    cfg->routing.breaker_failures = (unsigned)failures;
    path_pop(c, old);
    return rc;
}

/* o[url_key] (a redis:// or unix:// URL) and o.password_env (the variable holding the password), shared by the
 * "redis" and "control_plane" sections; the password is read from the environment here. */
static int parse_redis_target(struct ctx *c, const json_t *o, const char *url_key, const char **url, char **password)
{
    const char *env = NULL;
    int rc = get_string(c, o, url_key, true, url);
    if (rc == 0 && strncmp(*url, "redis://", 8) != 0 && strncmp(*url, "unix://", 7) != 0)
        rc = fail_at(c, url_key, "expected redis://host:port[/db] or unix:///path/to/socket[?db=N]");
    if (rc == 0 && json_object_get(o, "password_env") != NULL) {
        rc = get_env_name(c, o, "password_env", &env);
        if (rc == 0) {
            const char *pw = getenv(env);
            if (pw == NULL || pw[0] == '\0')
                rc = fail_at(c, "password_env", "environment variable \"%s\" is not set or empty", env);
            else
                *password = leo_strdup(pw);
        }
    }
    return rc;
}

static int parse_redis(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"url", "password_env", "timeout_ms", "on_failure", NULL};
    int rc;
    json_t *o = get_container(c, root, "redis", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "redis");
    const char *url = NULL, *policy = NULL;
    rc = open_object(c, o, fields);
    if (rc == 0)
        rc = parse_redis_target(c, o, "url", &url, &cfg->redis.password);
    if (rc == 0)
        rc = get_uint(c, o, "timeout_ms", 1, 60000, &cfg->redis.timeout_ms);
    if (rc == 0)
        rc = get_string(c, o, "on_failure", false, &policy);
    if (rc == 0 && policy) {
        if (strcmp(policy, "open") == 0)
            cfg->redis.fail_open = true;
        else if (strcmp(policy, "closed") == 0)
            cfg->redis.fail_open = false;
        else
            rc = fail_at(c, "on_failure", "expected \"open\" or \"closed\", got \"%.*s\"", NAME_MAX_LEN, policy);
    }
    if (rc == 0)
        cfg->redis.url = leo_strdup(url);
    path_pop(c, old);
    return rc;
}

static int parse_control_plane(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"redis_url", "password_env", "cache_path", NULL};
    int rc;
    json_t *o = get_container(c, root, "control_plane", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "control_plane");
    const char *url = NULL, *cache = NULL;
    rc = open_object(c, o, fields);
    if (rc == 0)
        rc = parse_redis_target(c, o, "redis_url", &url, &cfg->control_plane.password);
    if (rc == 0)
        rc = get_string(c, o, "cache_path", false, &cache);
    if (rc == 0 && cache && cache[0] == '\0')
        rc = fail_at(c, "cache_path", "must not be empty (leave it out for no cache)");
    if (rc == 0) {
        cfg->control_plane.redis_url = leo_strdup(url);
        cfg->control_plane.cache_path = cache ? leo_strdup(cache) : NULL;
    }
    path_pop(c, old);
    return rc;
}

static int parse_usage(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"spool_dir", NULL};
    int rc;
    json_t *o = get_container(c, root, "usage", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "usage");
    const char *dir = NULL;
    rc = open_object(c, o, fields);
    if (rc == 0)
        rc = get_string(c, o, "spool_dir", false, &dir);
    if (rc == 0 && dir && dir[0] == '\0')
        rc = fail_at(c, "spool_dir", "must not be empty (leave it out for no spool)");
    if (rc == 0)
        cfg->usage.spool_dir = dir ? leo_strdup(dir) : NULL;
    path_pop(c, old);
    return rc;
}

static int parse_alerts(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"threshold", "webhook_url", NULL};
    int rc;
    json_t *o = get_container(c, root, "alerts", JSON_OBJECT, false, &rc);
    if (o == NULL)
        return rc;
    size_t old = path_key(c, "alerts");
    const char *url = NULL;
    rc = open_object(c, o, fields);
    if (rc == 0)
        rc = get_number(c, o, "threshold", false, 0, 1, &cfg->alerts.threshold);
    if (rc == 0)
        rc = get_string(c, o, "webhook_url", false, &url);
    if (rc == 0 && url && strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        rc = fail_at(c, "webhook_url", "expected an http:// or https:// URL");
    if (rc == 0 && url)
        cfg->alerts.webhook_url = leo_strdup(url);
    path_pop(c, old);
    return rc;
}

static int load_provider_key(struct ctx *c, const json_t *obj, const char *field, struct leo_provider_key *key)
{
    const char *env = NULL;
    int rc = get_env_name(c, obj, field, &env);
    if (rc)
        return rc;
    const char *value = getenv(env);
    if (value == NULL || value[0] == '\0')
        return fail_at(c, field, "environment variable \"%s\" is not set or empty", env);
    key->env = leo_strdup(env);
    key->value = leo_strdup(value);
    return 0;
}

/* A key given as its value, from the control plane's snapshot (leo_config_parse_overlay): "label" names it in
 * logs and the status API ("env" holds the label, as it is what those print). */
static int load_provider_key_value(struct ctx *c, const json_t *k, struct leo_provider_key *key)
{
    const char *label = NULL, *value = NULL;
    int rc = get_string(c, k, "label", true, &label);
    if (rc == 0)
        rc = get_string(c, k, "value", true, &value);
    if (rc == 0 && !valid_label(label))
        rc = fail_at(c, "label", "must be 1 to 128 characters without control characters");
    if (rc == 0 && value[0] == '\0')
        rc = fail_at(c, "value", "must not be empty"); /* never the value itself in a message */
    if (rc)
        return rc;
    key->env = leo_strdup(label);
    key->value = leo_strdup(value);
    /* a forced cooldown from the control plane (migrations/0008) */
    const char *reason = NULL;
    rc = get_uint(c, k, "cooldown_until_ms", 0, UINT64_MAX >> 1, &key->forced_until_ms);
    if (rc == 0)
        rc = get_string(c, k, "cooldown_reason", false, &reason);
    if (rc == 0 && reason && reason[0])
        key->forced_reason = leo_strdup(reason);
    return rc;
}

static int parse_provider_keys(struct ctx *c, const json_t *o, struct leo_provider *p)
{
    static const char *const key_fields[] = {"env", "weight", NULL};
    static const char *const value_fields[] = {"label", "value", "weight", "cooldown_until_ms", "cooldown_reason",
                                               NULL};
    int rc;
    json_t *shorthand = json_object_get(o, "api_key_env");
    json_t *arr = get_container(c, o, "api_keys", JSON_ARRAY, false, &rc);
    if (rc)
        return rc;
    if (shorthand && arr)
        return fail_at(c, "api_key_env", "give either api_key_env or api_keys, not both");
    if (shorthand) {
        p->keys = leo_new(struct leo_provider_key);
        p->nkeys = 1;
        p->keys[0].weight = 1;
        return load_provider_key(c, o, "api_key_env", &p->keys[0]);
    }
    if (arr == NULL || json_array_size(arr) == 0)
        return 0;
    size_t old = path_key(c, "api_keys");
    p->nkeys = json_array_size(arr);
    p->keys = leo_calloc(p->nkeys, sizeof(*p->keys));
    for (size_t i = 0; rc == 0 && i < p->nkeys; i++) {
        size_t o2 = path_index(c, i);
        json_t *k = json_array_get(arr, i);
        uint64_t weight = 1;
        bool by_value = c->key_values && json_is_object(k) && json_object_get(k, "value") != NULL;
        rc = open_object(c, k, by_value ? value_fields : key_fields);
        if (rc == 0)
            rc = get_uint(c, k, "weight", 0, 1000000, &weight);
        p->keys[i].weight = (unsigned)weight;
        if (rc == 0)
            rc = by_value ? load_provider_key_value(c, k, &p->keys[i]) : load_provider_key(c, k, "env", &p->keys[i]);
        path_pop(c, o2);
    }
    path_pop(c, old);
    return rc;
}

static int parse_timeouts(struct ctx *c, const json_t *o, struct leo_provider *p)
{
    static const char *const fields[] = {"connect_ms", "first_byte_ms", "total_ms", NULL};
    int rc;
    json_t *t = get_container(c, o, "timeouts", JSON_OBJECT, false, &rc);
    if (t == NULL)
        return rc;
    size_t old = path_key(c, "timeouts");
    rc = check_fields(c, t, fields);
    if (rc == 0)
        rc = get_uint(c, t, "connect_ms", 1, 600000, &p->connect_timeout_ms);
    if (rc == 0)
        rc = get_uint(c, t, "first_byte_ms", 1, 3600000, &p->first_byte_timeout_ms);
    if (rc == 0)
        rc = get_uint(c, t, "total_ms", 1, 86400000, &p->total_timeout_ms);
    path_pop(c, old);
    return rc;
}

/* http(s)://host[:port][/path], no whitespace or control characters; trailing slashes are dropped. */
static int parse_base_url(struct ctx *c, const json_t *o, struct leo_provider *p)
{
    const char *s = NULL;
    int rc = get_string(c, o, "base_url", true, &s);
    if (rc)
        return rc;
    size_t scheme = strncmp(s, "https://", 8) == 0 ? 8 : strncmp(s, "http://", 7) == 0 ? 7 : 0;
    bool ok = scheme != 0 && s[scheme] != '\0' && s[scheme] != '/';
    for (const char *q = s; ok && *q; q++)
        ok = (unsigned char)*q > 0x20 && (unsigned char)*q != 0x7f;
    if (!ok)
        return fail_at(c, "base_url", "must be an http:// or https:// URL with a host, got \"%.*s\"", 256, s);
    size_t n = strlen(s);
    while (n > scheme && s[n - 1] == '/')
        n--;
    p->base_url = leo_strndup(s, n);
    return 0;
}

static int parse_provider(struct ctx *c, const json_t *o, struct leo_config *cfg, size_t idx)
{
    static const char *const fields[] = {"name",        "type",     "base_url",    "api_keys",
                                         "api_key_env", "timeouts", "api_version", NULL};
    struct leo_provider *p = &cfg->providers[idx];
    p->connect_timeout_ms = 10000;
    p->first_byte_timeout_ms = 120000;
    p->total_timeout_ms = 600000;
    int rc = open_object(c, o, fields);
    if (rc)
        return rc;

    const char *name = NULL, *type = "openai";
    rc = get_name(c, o, "name", true, &name);
    if (rc)
        return rc;
    for (size_t i = 0; i < idx; i++)
        if (strcmp(cfg->providers[i].name, name) == 0)
            return fail_at(c, "name", "duplicate provider \"%s\" (also providers[%zu])", name, i);
    p->name = leo_strdup(name);

    rc = get_string(c, o, "type", false, &type);
    if (rc)
        return rc;
    size_t t = 0, ntypes = sizeof(provider_types) / sizeof(provider_types[0]);
    while (t < ntypes && strcmp(provider_types[t].name, type) != 0)
        t++;
    if (t == ntypes) {
        struct leo_buf known = LEO_BUF_INIT;
        for (size_t i = 0; i < ntypes; i++)
            leo_buf_addf(&known, "%s%s", i ? ", " : "", provider_types[i].name);
        rc = fail_at(c, "type", "unknown provider type \"%.*s\" (known: %s)", NAME_MAX_LEN, type, known.p);
        leo_buf_release(&known);
        return rc;
    }
    p->type = leo_strdup(type);
    p->adapter = leo_adapter_find(type);
    if (p->adapter == NULL)
        return fail_at(c, "type", "provider type \"%s\" has no adapter in this build", type);
    const char *api_version = provider_types[t].default_api_version;
    if (api_version == NULL && json_object_get(o, "api_version") != NULL)
        return fail_at(c, "api_version", "not used by provider type \"%s\"", type);
    rc = get_string(c, o, "api_version", false, &api_version);
    if (rc)
        return rc;
    if (api_version != NULL && api_version[0] == '\0')
        return fail_at(c, "api_version", "required for provider type \"%s\"", type);
    p->api_version = api_version ? leo_strdup(api_version) : NULL;

    rc = parse_base_url(c, o, p);
    if (rc)
        return rc;
    rc = parse_provider_keys(c, o, p);
    if (rc)
        return rc;
    return parse_timeouts(c, o, p);
}

static int parse_providers(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    int rc;
    json_t *arr = get_container(c, root, "providers", JSON_ARRAY, false, &rc);
    if (arr == NULL)
        return rc;
    size_t old = path_key(c, "providers");
    cfg->nproviders = json_array_size(arr);
    cfg->providers = leo_calloc(cfg->nproviders, sizeof(*cfg->providers));
    for (size_t i = 0; rc == 0 && i < cfg->nproviders; i++) {
        size_t o2 = path_index(c, i);
        rc = parse_provider(c, json_array_get(arr, i), cfg, i);
        path_pop(c, o2);
    }
    path_pop(c, old);
    return rc;
}

/* A deployment's routing override from the control plane's snapshot (docs/controlplane.md). */
static int parse_override(struct ctx *c, const json_t *o, struct leo_deployment *d)
{
    static const char *const fields[] = {"action", "reason", NULL};
    int rc;
    json_t *ov = get_container(c, o, "override", JSON_OBJECT, false, &rc);
    if (ov == NULL)
        return rc;
    size_t old = path_key(c, "override");
    const char *action = NULL, *reason = NULL;
    rc = check_fields(c, ov, fields);
    if (rc == 0)
        rc = get_string(c, ov, "action", true, &action);
    if (rc == 0)
        rc = get_string(c, ov, "reason", false, &reason);
    if (rc == 0 && strcmp(action, "disable") != 0 && strcmp(action, "weight") != 0)
        rc = fail_at(c, "action", "must be \"disable\" or \"weight\"");
    if (rc == 0) {
        d->override = leo_strdup(action);
        d->override_reason = reason && reason[0] ? leo_strdup(reason) : NULL;
        d->disabled = strcmp(action, "disable") == 0;
    }
    path_pop(c, old);
    return rc;
}

static int parse_deployment(struct ctx *c, const json_t *o, struct leo_config *cfg, struct leo_model *m,
                            struct leo_deployment *d)
{
    static const char *const fields[] = {"provider", "model", "weight", "priority", "limits", NULL};
    /* the control plane's snapshot may carry a routing override: {"action": "disable"|"weight", "reason"} */
    static const char *const snapshot_fields[] = {"provider", "model", "weight", "priority", "limits", "override",
                                                  NULL};
    int rc = open_object(c, o, c->key_values ? snapshot_fields : fields);
    if (rc)
        return rc;
    rc = parse_override(c, o, d);
    if (rc)
        return rc;
    const char *provider = NULL, *upstream = m->name;
    rc = get_string(c, o, "provider", true, &provider);
    if (rc)
        return rc;
    for (size_t i = 0; i < cfg->nproviders && d->provider == NULL; i++)
        if (strcmp(cfg->providers[i].name, provider) == 0)
            d->provider = &cfg->providers[i];
    if (d->provider == NULL)
        return fail_at(c, "provider", "unknown provider \"%.*s\"", NAME_MAX_LEN, provider);
    rc = get_name(c, o, "model", false, &upstream);
    if (rc)
        return rc;
    d->model = leo_strdup(upstream);
    uint64_t weight = 1, prio = 0;
    rc = get_uint(c, o, "weight", 0, 1000000, &weight);
    if (rc == 0)
        rc = get_uint(c, o, "priority", 0, 1000, &prio);
    if (rc == 0)
        rc = parse_quota(c, o, "limits", true, &d->limits);
    d->weight = (unsigned)weight;
    d->priority = (int)prio;
    struct leo_buf id = LEO_BUF_INIT;
    leo_buf_addf(&id, "%s/%s", d->provider->name, d->model);
    d->id = leo_buf_detach(&id, NULL);
    for (struct leo_deployment *e = m->deployments; rc == 0 && e < d; e++)
        if (strcmp(e->id, d->id) == 0)
            rc = fail(c, "duplicate deployment \"%s\" in model \"%s\"", d->id, m->name);
    return rc;
}

/* Stable sort by priority: the order within a group stays the configuration order. */
static void sort_deployments(struct leo_model *m)
{
    for (size_t i = 1; i < m->ndeployments; i++) {
        struct leo_deployment d = m->deployments[i];
        size_t j = i;
        while (j > 0 && m->deployments[j - 1].priority > d.priority) {
            m->deployments[j] = m->deployments[j - 1];
            j--;
        }
        m->deployments[j] = d;
    }
}

static int parse_model_routing(struct ctx *c, const json_t *o, struct leo_config *cfg, struct leo_model *m)
{
    const char *strategy = NULL;
    uint64_t attempts = 0;
    int rc = get_string(c, o, "strategy", false, &strategy);
    if (rc == 0 && strategy) {
        int st = leo_strategy_parse(strategy);
        if (st < 0)
            rc = fail_at(c, "strategy",
                         "unknown strategy \"%.*s\" (known: weighted, priority, least-busy, lowest-latency, "
                         "lowest-cost)",
                         NAME_MAX_LEN, strategy);
        else
            m->strategy = (enum leo_strategy)st;
    }
    if (rc == 0)
        rc = get_uint(c, o, "max_attempts", 1, 20, &attempts);
    m->max_attempts = (unsigned)attempts;
    if (rc == 0)
        rc = get_uint(c, o, "hedge_after_ms", 0, 600000, &m->hedge_after_ms);
    if (rc)
        return rc;
    json_t *arr = get_container(c, o, "aliases", JSON_ARRAY, false, &rc);
    if (arr == NULL)
        return rc;
    size_t old = path_key(c, "aliases");
    m->aliases = leo_calloc(json_array_size(arr) + 1, sizeof(*m->aliases));
    for (size_t i = 0; rc == 0 && i < json_array_size(arr); i++) {
        size_t o2 = path_index(c, i);
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v) || !valid_name(json_string_value(v))) {
            rc = fail(c, "expected a model name: %s", name_rule);
        } else {
            struct leo_str key = leo_str_c(json_string_value(v));
            uint64_t h = hash_str(key);
            const struct leo_model *dup = model_find(cfg->_model_index, h, key);
            if (dup) {
                rc = fail(c, "\"%s\" is already the name or an alias of models[%zu]", key.p,
                          (size_t)(dup - cfg->models));
            } else {
                m->aliases[m->naliases++] = leo_strdup(key.p);
                index_put_named(cfg->_model_index, h, m, m->aliases[m->naliases - 1]);
            }
        }
        path_pop(c, o2);
    }
    path_pop(c, old);
    return rc;
}

static int parse_model(struct ctx *c, const json_t *o, struct leo_config *cfg, struct leo_model *m)
{
    static const char *const fields[] = {"name",         "deployments",    "aliases", "strategy",
                                         "max_attempts", "hedge_after_ms", NULL};
    int rc = open_object(c, o, fields);
    if (rc)
        return rc;
    const char *name = NULL;
    rc = get_name(c, o, "name", true, &name);
    if (rc)
        return rc;
    struct leo_str key = leo_str_c(name);
    uint64_t h = hash_str(key);
    const struct leo_model *dup = model_find(cfg->_model_index, h, key);
    if (dup)
        return fail_at(c, "name", "duplicate model \"%s\" (also models[%zu])", name, (size_t)(dup - cfg->models));
    m->name = leo_strdup(name);
    index_put(cfg->_model_index, h, m);

    json_t *arr = get_container(c, o, "deployments", JSON_ARRAY, true, &rc);
    if (arr == NULL)
        return rc;
    if (json_array_size(arr) == 0)
        return fail_at(c, "deployments", "at least one deployment is required");
    size_t old = path_key(c, "deployments");
    m->ndeployments = json_array_size(arr);
    m->deployments = leo_calloc(m->ndeployments, sizeof(*m->deployments));
    for (size_t i = 0; rc == 0 && i < m->ndeployments; i++) {
        size_t o2 = path_index(c, i);
        rc = parse_deployment(c, json_array_get(arr, i), cfg, m, &m->deployments[i]);
        path_pop(c, o2);
    }
    path_pop(c, old);
    if (rc)
        return rc;
    sort_deployments(m);
    return parse_model_routing(c, o, cfg, m);
}

static int parse_models(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    int rc;
    json_t *arr = get_container(c, root, "models", JSON_ARRAY, false, &rc);
    size_t names = 0;
    for (size_t i = 0; arr && i < json_array_size(arr); i++) {
        json_t *aliases = json_object_get(json_array_get(arr, i), "aliases");
        names += 1 + (json_is_array(aliases) ? json_array_size(aliases) : 0);
    }
    cfg->_model_index = index_new(names);
    if (arr == NULL)
        return rc;
    size_t old = path_key(c, "models");
    cfg->nmodels = json_array_size(arr);
    cfg->models = leo_calloc(cfg->nmodels, sizeof(*cfg->models));
    for (size_t i = 0; rc == 0 && i < cfg->nmodels; i++) {
        size_t o2 = path_index(c, i);
        rc = parse_model(c, json_array_get(arr, i), cfg, &cfg->models[i]);
        path_pop(c, o2);
    }
    path_pop(c, old);
    return rc;
}

/* Config entries first (document order), then every default the config does not override. */
static int parse_prices(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {"input", "output", NULL};
    int rc;
    json_t *o = get_container(c, root, "prices", JSON_OBJECT, false, &rc);
    if (rc)
        return rc;
    size_t ndefaults;
    const struct leo_default_price *defaults = leo_default_prices(&ndefaults);
    size_t nconfig = o ? json_object_size(o) : 0;
    cfg->prices = leo_calloc(nconfig + ndefaults, sizeof(*cfg->prices));

    if (o) {
        size_t old = path_key(c, "prices");
        const char *name;
        json_t *v;
        json_object_foreach(o, name, v)
        {
            size_t o2 = path_member(c, name);
            struct leo_price *p = &cfg->prices[cfg->nprices];
            rc = valid_name(name) ? open_object(c, v, fields) : fail(c, "%s", name_rule);
            if (rc == 0)
                rc = get_number(c, v, "input", true, 0, PRICE_MAX, &p->input_per_mtok);
            if (rc == 0)
                rc = get_number(c, v, "output", true, 0, PRICE_MAX, &p->output_per_mtok);
            path_pop(c, o2);
            if (rc)
                break;
            p->model = leo_strdup(name);
            cfg->nprices++;
        }
        path_pop(c, old);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < ndefaults; i++) {
        if (o && json_object_get(o, defaults[i].model))
            continue;
        struct leo_price *p = &cfg->prices[cfg->nprices++];
        p->model = leo_strdup(defaults[i].model);
        p->input_per_mtok = defaults[i].input_per_mtok;
        p->output_per_mtok = defaults[i].output_per_mtok;
    }
    return 0;
}

/* Finds where an already indexed key lives, for the duplicate message. */
static void key_location(const struct leo_config *cfg, const struct leo_tenant_key *k, size_t *ti, size_t *ki)
{
    /* a view shares its tenant's id string (see leo_tenant_key._view) */
    *ti = 0;
    while (*ti < cfg->ntenants && cfg->tenants[*ti].id != k->tenant->id)
        (*ti)++;
    *ki = (size_t)(k - cfg->tenants[*ti].keys);
}

/* A key's own model list. Names are kept even when no model has them (they then grant nothing), so a list
 * written in the control plane before a model exists does not reject the whole snapshot. The key's view of
 * its tenant allows the names on both lists; when none is left, it holds the single name "", which no
 * request can ask for, so the key is refused every model rather than granted all. */
static int parse_key_models(struct ctx *c, const json_t *k, struct leo_tenant *t, struct leo_tenant_key *tk)
{
    int rc;
    json_t *arr = get_container(c, k, "models", JSON_ARRAY, false, &rc);
    if (arr == NULL)
        return rc;
    size_t n = json_array_size(arr);
    if (n == 0)
        return fail_at(c, "models", "must not be empty (leave it out to allow every model of the tenant)");
    struct leo_tenant *v = leo_new(struct leo_tenant);
    *v = *t;
    v->keys = NULL;
    v->nkeys = 0;
    v->models = leo_calloc(n, sizeof(*v->models));
    v->nmodels = 0;
    tk->_view = v;
    size_t old = path_key(c, "models");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *m = json_array_get(arr, i);
        if (!json_is_string(m)) {
            size_t o2 = path_index(c, i);
            rc = expected(c, "a string");
            path_pop(c, o2);
            continue;
        }
        struct leo_str name = leo_str_n(json_string_value(m), json_string_length(m));
        if (leo_tenant_allows_model(t, name))
            v->models[v->nmodels++] = leo_strndup(name.p, name.len);
    }
    path_pop(c, old);
    if (rc == 0 && v->nmodels == 0)
        v->models[v->nmodels++] = leo_strdup("");
    return rc;
}

/* A key's own provider list, compiled into the deployments it may use in every model (leo_tenant_key._deployments)
 * so that a request pays one lookup: a mask of 64 bits per model, the most deployments a route plan considers
 * (LEO_ROUTE_MAX_DEPLOYMENTS in router.h). In a file, an unknown name and an empty list are errors. In the
 * control plane's snapshot an unknown name grants nothing (the gateway leaves out a provider whose credentials it
 * cannot open, and the whole snapshot must not fail for it), and an empty list is how the control plane says that
 * none of the key's providers is left: the key is then routed nowhere, never everywhere. */
static int parse_key_providers(struct ctx *c, const json_t *k, struct leo_config *cfg, struct leo_tenant_key *tk)
{
    int rc;
    json_t *arr = get_container(c, k, "providers", JSON_ARRAY, false, &rc);
    if (arr == NULL)
        return rc;
    size_t n = json_array_size(arr);
    if (n == 0 && !c->key_values)
        return fail_at(c, "providers", "must not be empty (leave it out to allow every provider)");
    bool *allowed = leo_calloc(cfg->nproviders + 1, sizeof(*allowed));
    size_t old = path_key(c, "providers");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t o2 = path_index(c, i);
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v)) {
            rc = expected(c, "a string");
        } else {
            struct leo_str name = leo_str_n(json_string_value(v), json_string_length(v));
            size_t p = 0;
            while (p < cfg->nproviders && !leo_str_eqc(name, cfg->providers[p].name))
                p++;
            if (p < cfg->nproviders)
                allowed[p] = true;
            else if (!c->key_values)
                rc = fail(c, "unknown provider \"%.*s\"", (int)(name.len > NAME_MAX_LEN ? NAME_MAX_LEN : name.len),
                          name.p);
        }
        path_pop(c, o2);
    }
    path_pop(c, old);
    if (rc == 0) {
        tk->_deployments = leo_calloc(cfg->nmodels + 1, sizeof(*tk->_deployments));
        for (size_t m = 0; m < cfg->nmodels; m++)
            for (size_t d = 0; d < cfg->models[m].ndeployments && d < 64; d++)
                if (allowed[cfg->models[m].deployments[d].provider - cfg->providers])
                    tk->_deployments[m] |= 1ull << d;
    }
    leo_free(allowed);
    return rc;
}

static void key_view_free(struct leo_tenant_key *k)
{
    if (k->_view == NULL)
        return;
    for (size_t m = 0; m < k->_view->nmodels; m++)
        leo_free(k->_view->models[m]);
    leo_free(k->_view->models);
    leo_free(k->_view);
}

static int parse_tenant_keys(struct ctx *c, const json_t *o, struct leo_config *cfg, struct leo_tenant *t)
{
    static const char *const fields[] = {"name", "hash", "quotas", "admin", "models", "providers", NULL};
    int rc;
    json_t *arr = get_container(c, o, "keys", JSON_ARRAY, false, &rc);
    if (arr == NULL)
        return rc;
    size_t old = path_key(c, "keys");
    size_t n = json_array_size(arr);
    t->keys = leo_calloc(n, sizeof(*t->keys));
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t o2 = path_index(c, i);
        json_t *k = json_array_get(arr, i);
        struct leo_tenant_key *tk = &t->keys[i];
        const char *name = NULL, *hash = NULL;
        rc = open_object(c, k, fields);
        if (rc == 0)
            rc = get_string(c, k, "name", true, &name);
        if (rc == 0)
            rc = get_string(c, k, "hash", true, &hash);
        if (rc == 0 && !valid_label(name))
            rc = fail_at(c, "name", "must be 1 to 128 characters without control characters");
        if (rc == 0)
            rc = parse_quota(c, k, "quotas", false, &tk->quota);
        if (rc == 0)
            rc = get_bool(c, k, "admin", &tk->admin);
        if (rc == 0 && leo_keyhash_parse(leo_str_c(hash), tk->hash) != 0)
            rc = fail_at(c, "hash", "expected \"kh1:\" followed by 64 lowercase hex digits (see leo-gateway hash-key)");
        if (rc == 0) {
            uint64_t h = hash_keyhash(tk->hash);
            const struct leo_tenant_key *dup = index_find(cfg->_key_index, h, key_eq, tk->hash);
            if (dup) {
                size_t ti, ki;
                key_location(cfg, dup, &ti, &ki);
                rc = fail_at(c, "hash", "duplicate key hash (also tenants[%zu].keys[%zu])", ti, ki);
            } else {
                tk->name = leo_strdup(name);
                tk->tenant = t;
                t->nkeys++;
                index_put(cfg->_key_index, h, tk);
                rc = parse_key_models(c, k, t, tk);
                if (tk->_view)
                    tk->tenant = tk->_view;
                if (rc == 0)
                    rc = parse_key_providers(c, k, cfg, tk);
            }
        }
        path_pop(c, o2);
    }
    path_pop(c, old);
    return rc;
}

static int parse_tenant_models(struct ctx *c, const json_t *o, struct leo_config *cfg, struct leo_tenant *t)
{
    int rc;
    json_t *arr = get_container(c, o, "models", JSON_ARRAY, false, &rc);
    if (arr == NULL)
        return rc;
    if (json_array_size(arr) == 0)
        return fail_at(c, "models", "must not be empty (leave it out to allow every model)");
    size_t old = path_key(c, "models");
    size_t n = json_array_size(arr);
    t->models = leo_calloc(n, sizeof(*t->models));
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t o2 = path_index(c, i);
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v)) {
            rc = expected(c, "a string");
        } else {
            struct leo_str name = leo_str_n(json_string_value(v), json_string_length(v));
            if (model_find(cfg->_model_index, hash_str(name), name) != NULL)
                t->models[t->nmodels++] = leo_strndup(name.p, name.len);
            else if (!c->key_values) /* in the control plane's snapshot an unknown name grants nothing */
                rc =
                    fail(c, "unknown model \"%.*s\"", (int)(name.len > NAME_MAX_LEN ? NAME_MAX_LEN : name.len), name.p);
        }
        path_pop(c, o2);
    }
    path_pop(c, old);
    /* a snapshot's list of models none of which this gateway knows (it left out a model whose credentials it
     * cannot open) allows none of them, never all: a name no model has */
    if (rc == 0 && t->nmodels == 0)
        t->models[t->nmodels++] = leo_strdup("");
    return rc;
}

static int parse_tenant(struct ctx *c, const json_t *o, struct leo_config *cfg, size_t idx)
{
    static const char *const fields[] = {"id", "allow_byok", "allow_route_override", "models", "keys", "quotas",
                                         NULL};
    struct leo_tenant *t = &cfg->tenants[idx];
    int rc = open_object(c, o, fields);
    if (rc)
        return rc;
    const char *id = NULL;
    rc = get_name(c, o, "id", true, &id);
    if (rc)
        return rc;
    for (size_t i = 0; i < idx; i++)
        if (strcmp(cfg->tenants[i].id, id) == 0)
            return fail_at(c, "id", "duplicate tenant \"%s\" (also tenants[%zu])", id, i);
    t->id = leo_strdup(id);
    rc = get_bool(c, o, "allow_byok", &t->allow_byok);
    if (rc == 0)
        rc = get_bool(c, o, "allow_route_override", &t->allow_route_override);
    if (rc == 0)
        rc = parse_quota(c, o, "quotas", false, &t->quota);
    if (rc)
        return rc;
    rc = parse_tenant_models(c, o, cfg, t);
    if (rc)
        return rc;
    return parse_tenant_keys(c, o, cfg, t);
}

static int parse_tenants(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    int rc;
    json_t *arr = get_container(c, root, "tenants", JSON_ARRAY, false, &rc);
    if (rc)
        return rc;
    /* Size the key index for every key in the document before any is inserted. */
    size_t nkeys = 0;
    for (size_t i = 0; arr && i < json_array_size(arr); i++) {
        json_t *keys = json_object_get(json_array_get(arr, i), "keys");
        nkeys += json_is_array(keys) ? json_array_size(keys) : 0;
    }
    cfg->_key_index = index_new(nkeys);
    if (arr == NULL)
        return 0;
    size_t old = path_key(c, "tenants");
    cfg->ntenants = json_array_size(arr);
    cfg->tenants = leo_calloc(cfg->ntenants, sizeof(*cfg->tenants));
    for (size_t i = 0; rc == 0 && i < cfg->ntenants; i++) {
        size_t o2 = path_index(c, i);
        rc = parse_tenant(c, json_array_get(arr, i), cfg, i);
        path_pop(c, o2);
    }
    path_pop(c, old);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------
 * Snapshot lifecycle
 */

static uint64_t config_version; /* per process; see leo_config.version */

static void config_free(struct leo_config *cfg)
{
    leo_cache_config_release(&cfg->cache);
    leo_semcache_config_release(&cfg->semantic_cache);
    for (size_t i = 0; i < cfg->nproviders; i++) {
        struct leo_provider *p = &cfg->providers[i];
        for (size_t k = 0; k < p->nkeys; k++) {
            leo_free(p->keys[k].env);
            leo_free(p->keys[k].forced_reason);
            if (p->keys[k].value) {
                sodium_memzero(p->keys[k].value, strlen(p->keys[k].value));
                leo_free(p->keys[k].value);
            }
        }
        leo_free(p->keys);
        leo_free(p->name);
        leo_free(p->type);
        leo_free(p->api_version);
        leo_free(p->base_url);
    }
    leo_free(cfg->providers);
    for (size_t i = 0; i < cfg->nmodels; i++) {
        for (size_t d = 0; d < cfg->models[i].ndeployments; d++) {
            leo_free(cfg->models[i].deployments[d].model);
            leo_free(cfg->models[i].deployments[d].id);
            leo_free(cfg->models[i].deployments[d].override);
            leo_free(cfg->models[i].deployments[d].override_reason);
        }
        for (size_t a = 0; a < cfg->models[i].naliases; a++)
            leo_free(cfg->models[i].aliases[a]);
        leo_free(cfg->models[i].aliases);
        leo_free(cfg->models[i].deployments);
        leo_free(cfg->models[i].name);
    }
    leo_free(cfg->models);
    for (size_t i = 0; i < cfg->nprices; i++)
        leo_free(cfg->prices[i].model);
    leo_free(cfg->prices);
    for (size_t i = 0; i < cfg->ntenants; i++) {
        struct leo_tenant *t = &cfg->tenants[i];
        for (size_t m = 0; m < t->nmodels; m++)
            leo_free(t->models[m]);
        leo_free(t->models);
        for (size_t k = 0; k < t->nkeys; k++) {
            leo_free(t->keys[k].name);
            leo_free(t->keys[k]._deployments);
            key_view_free(&t->keys[k]);
        }
        leo_free(t->keys);
        leo_free(t->id);
    }
    leo_free(cfg->tenants);
    index_free(cfg->_model_index);
    index_free(cfg->_key_index);
    sodium_memzero(cfg->key_hash_secret, sizeof(cfg->key_hash_secret));
    leo_free(cfg->redis.url);
    leo_free(cfg->control_plane.redis_url);
    leo_free(cfg->control_plane.cache_path);
    leo_free(cfg->usage.spool_dir);
    if (cfg->control_plane.password) {
        sodium_memzero(cfg->control_plane.password, strlen(cfg->control_plane.password));
        leo_free(cfg->control_plane.password);
    }
    if (cfg->redis.password) {
        sodium_memzero(cfg->redis.password, strlen(cfg->redis.password));
        leo_free(cfg->redis.password);
    }
    leo_free(cfg->alerts.webhook_url);
    leo_free(cfg->listen_host);
    leo_free(cfg->source);
    leo_free(cfg);
}

/* workers, drain_timeout_ms, busy_poll_us, log_level, access_log */
static int parse_process(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    uint64_t workers = 0;
    int rc = get_uint(c, root, "workers", 0, 256, &workers);
    if (rc)
        return rc;
    cfg->workers = (unsigned)workers;
    rc = get_uint(c, root, "drain_timeout_ms", 0, 3600000, &cfg->drain_timeout_ms);
    if (rc)
        return rc;
    rc = get_uint(c, root, "busy_poll_us", 0, 100000, &cfg->busy_poll_us);
    if (rc)
        return rc;
    const char *level = NULL;
    rc = get_string(c, root, "log_level", false, &level);
    if (rc)
        return rc;
    if (level) {
        int l = leo_log_level_parse(level);
        if (l < 0)
            return fail_at(c, "log_level", "expected one of debug, info, warn, error, got \"%.*s\"", NAME_MAX_LEN,
                           level);
        cfg->log_level = l;
    }
    return get_bool(c, root, "access_log", &cfg->access_log);
}

/* "cache" and "semantic_cache": parsed by their modules; an error carries the section's path. */
static int parse_caches(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const names[] = {"cache", "semantic_cache"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *sec = json_object_get(root, names[i]);
        struct leo_buf e = LEO_BUF_INIT;
        int rc = i == 0 ? leo_cache_config_parse(sec, names[i], &cfg->cache, &e)
                        : leo_semcache_config_parse(sec, names[i], &cfg->semantic_cache, &e);
        if (rc != 0) {
            if (c->err && !c->failed)
                leo_buf_addf(c->err, "%s", e.p); /* the message already starts with the field's path */
            c->failed = true;
            leo_buf_release(&e);
            return LEO_ECONFIG;
        }
        leo_buf_release(&e);
    }
    return 0;
}

/* In dependency order: models refer to providers, tenants to models. */
static int (*const sections[])(struct ctx *, const json_t *, struct leo_config *) = {
    parse_listen,    parse_process, parse_limits,        parse_auth,    parse_defaults,
    parse_routing,   parse_redis,   parse_control_plane, parse_usage,   parse_alerts,
    parse_providers, parse_models,  parse_prices,        parse_tenants, parse_caches,
};

static int parse_root(struct ctx *c, const json_t *root, struct leo_config *cfg)
{
    static const char *const fields[] = {
        "listen",    "workers",  "drain_timeout_ms", "log_level", "access_log",    "busy_poll_us",   "limits",
        "auth",      "defaults", "routing",          "redis",     "control_plane", "usage",          "alerts",
        "providers", "models",   "prices",           "tenants",   "cache",         "semantic_cache", NULL};
    int rc = open_object(c, root, fields);
    for (size_t i = 0; rc == 0 && i < sizeof(sections) / sizeof(sections[0]); i++)
        rc = sections[i](c, root, cfg);
    if (rc)
        return rc;
    if (leo_keyhash_secret_from_env(c->secret_env, cfg->key_hash_secret) == 1)
        leo_warn("config %s: %s is not set; tenant keys are hashed with the public development secret, "
                 "which must not be used in production",
                 cfg->source, c->secret_env);
    return 0;
}

static int parse_document(const char *json, size_t len, const char *source, bool key_values, struct leo_config **out,
                          struct leo_buf *err)
{
    *out = NULL;
    leo_keyhash_init();
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        if (err)
            leo_buf_addf(err, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
        return LEO_ECONFIG;
    }

    struct leo_config *cfg = leo_new(struct leo_config);
    cfg->refs = 1;
    cfg->source = leo_strdup(source ? source : "(unnamed)");
    cfg->listen_host = leo_strdup("0.0.0.0");
    cfg->listen_port = 8080;
    cfg->drain_timeout_ms = 30000;
    leo_http_limits_default(&cfg->limits);
    cfg->log_level = LEO_LOG_INFO;
    cfg->access_log = true;
    cfg->default_max_tokens = 4096;
    cfg->routing.max_attempts = 3;
    cfg->routing.backoff_base_ms = 100;
    cfg->routing.backoff_max_ms = 2000;
    cfg->routing.key_cooldown_ms = 30000;
    cfg->routing.breaker_failures = 5;
    cfg->routing.breaker_open_ms = 30000;
    cfg->redis.timeout_ms = 50;
    cfg->redis.fail_open = true;
    cfg->alerts.threshold = 0.8;
    leo_cache_config_defaults(&cfg->cache);
    leo_semcache_config_defaults(&cfg->semantic_cache);

    struct ctx c = {.err = err, .secret_env = "LEO_KEY_HASH_SECRET", .key_values = key_values};
    int rc = parse_root(&c, root, cfg);
    json_decref(root);
    if (rc) {
        config_free(cfg);
        return rc;
    }
    cfg->version = ++config_version;
    *out = cfg;
    return 0;
}

int leo_config_parse_json(const char *json, size_t len, const char *source, struct leo_config **out,
                          struct leo_buf *err)
{
    return parse_document(json, len, source, false, out, err);
}

int leo_config_parse_overlay(const char *json, size_t len, const char *source, struct leo_config **out,
                             struct leo_buf *err)
{
    return parse_document(json, len, source, true, out, err);
}

int leo_config_load_file(const char *path, struct leo_config **out, struct leo_buf *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        if (err)
            leo_buf_addf(err, "cannot open %s: %s", path, strerror(errno));
        return LEO_ECONFIG;
    }
    struct leo_buf data;
    leo_buf_init(&data, CONFIG_FILE_MAX, 0);
    char chunk[16384];
    size_t n;
    int rc = 0;
    while (rc == 0 && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        rc = leo_buf_add(&data, chunk, n);
    if (rc == 0 && ferror(f)) {
        if (err)
            leo_buf_addf(err, "cannot read %s: %s", path, strerror(errno));
        rc = LEO_ECONFIG;
    } else if (rc) {
        if (err)
            leo_buf_addf(err, "%s is larger than %u bytes", path, CONFIG_FILE_MAX);
        rc = LEO_ECONFIG;
    }
    fclose(f);
    if (rc == 0)
        rc = leo_config_parse_json(data.p, data.len, path, out, err);
    leo_buf_release(&data);
    return rc;
}

struct leo_config *leo_config_ref(struct leo_config *cfg)
{
    cfg->refs++;
    return cfg;
}

void leo_config_unref(struct leo_config *cfg)
{
    if (cfg == NULL)
        return;
    if (--cfg->refs == 0)
        config_free(cfg);
}

/* ---------------------------------------------------------------------------------------------------------
 * Lookups
 */

const struct leo_model *leo_config_find_model(const struct leo_config *cfg, struct leo_str name)
{
    return model_find(cfg->_model_index, hash_str(name), name);
}

const struct leo_tenant_key *leo_config_find_key(const struct leo_config *cfg, struct leo_str presented)
{
    if (presented.len == 0)
        return NULL;
    uint8_t h[LEO_KEYHASH_BYTES];
    leo_keyhash(cfg->key_hash_secret, presented, h);
    return index_find(cfg->_key_index, hash_keyhash(h), key_eq, h);
}

/* Tenants list a handful of models, so a scan is cheaper than a per-tenant index. */
bool leo_tenant_allows_model(const struct leo_tenant *t, struct leo_str model)
{
    if (t->nmodels == 0)
        return true;
    for (size_t i = 0; i < t->nmodels; i++)
        if (leo_str_eqc(model, t->models[i]))
            return true;
    return false;
}

/* A scan over some fifty entries, once per answered request; config entries come first, so on an exact name
 * they win, and the defaults that share a config name were left out when the snapshot was built. */
const struct leo_price *leo_config_price(const struct leo_config *cfg, struct leo_str model)
{
    const struct leo_price *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < cfg->nprices; i++) {
        const struct leo_price *p = &cfg->prices[i];
        size_t n = strlen(p->model);
        if (n > model.len || memcmp(p->model, model.p, n) != 0)
            continue;
        if (n == model.len)
            return p;
        if (model.p[n] == '-' && n > best_len) {
            best = p;
            best_len = n;
        }
    }
    return best;
}

double leo_price_cost(const struct leo_price *p, uint64_t input_tokens, uint64_t output_tokens)
{
    if (p == NULL)
        return 0;
    return ((double)input_tokens * p->input_per_mtok + (double)output_tokens * p->output_per_mtok) / 1e6;
}
