/*
 * config.h — the gateway's configuration snapshot.
 *
 * A struct leo_config is immutable once built and reference-counted. The worker holds one "current"
 * snapshot; every request takes a reference when it starts and drops it when it ends, so a reload (a new
 * snapshot swapped in by leo_worker_set_config) never changes what a request in flight sees. Snapshots come
 * from a source: the JSON file (leo_config_load_file), or the file overlaid with the control plane's
 * Redis-published snapshot (gateway/follower.h), which produces the same struct through
 * leo_config_parse_overlay.
 *
 * Parsing is strict: unknown fields and wrong types are errors that name the JSON path of the offending
 * field ("providers[1].base_url: expected a string"). Secrets (provider API keys) are read from environment
 * variables named in the file; the file itself never holds them. Only the control plane's snapshot, once its
 * sealed credentials are opened in memory, hands keys over as values. Tenant API keys are stored only as
 * keyed hashes (leo_keyhash_*). Errors never contain a secret.
 *
 * The snapshot is per process and used from one thread (the worker's loop): refcounts are plain integers.
 */
#ifndef LEO_CONFIG_H
#define LEO_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/http_server.h"
#include "../common/keyhash.h"
#include "../common/str.h"
#include "cache.h"
#include "semcache.h"

struct leo_adapter;

struct leo_provider_key {
    char *env;       /* name of the environment variable it came from (safe to log) */
    char *value;     /* the secret; never log it */
    unsigned weight; /* share of requests when a provider has several keys; default 1 */
    uint64_t forced_until_ms; /* the control plane's forced cooldown: unused until this wall-clock time (Unix ms);
                                 0 for none (snapshot keys only, "cooldown_until_ms") */
    char *forced_reason;      /* why, as the operator wrote it; NULL for none */
};

/** Quotas and rate limits; 0 means "no limit" for every member. */
struct leo_quota {
    uint64_t rpm;              /* requests per minute */
    uint64_t tpm;              /* tokens (input + output) per minute */
    uint64_t tokens_per_day;   /* UTC days */
    uint64_t tokens_per_month; /* UTC calendar months */
    double usd_per_day;
    double usd_per_month;
    uint64_t concurrency;      /* requests in flight */
};

/** True when no member of q is set. */
static inline bool leo_quota_empty(const struct leo_quota *q)
{
    return !q->rpm && !q->tpm && !q->tokens_per_day && !q->tokens_per_month && q->usd_per_day <= 0 &&
           q->usd_per_month <= 0 && !q->concurrency;
}

/** How a deployment is chosen among those of equal priority. */
enum leo_strategy {
    LEO_STRATEGY_WEIGHTED,       /* random by weight (default) */
    LEO_STRATEGY_PRIORITY,       /* configuration order */
    LEO_STRATEGY_LEAST_BUSY,     /* fewest requests in flight */
    LEO_STRATEGY_LOWEST_LATENCY, /* lowest EWMA of time to first byte */
    LEO_STRATEGY_LOWEST_COST,    /* cheapest for the request's estimated tokens */
};

/** Parses a strategy name ("weighted", "priority", "least-busy", "lowest-latency", "lowest-cost"); -1 if unknown. */
int leo_strategy_parse(const char *s);
/** The name of a strategy. */
const char *leo_strategy_name(enum leo_strategy s);

struct leo_provider {
    char *name;                     /* unique */
    char *type;                     /* "openai", "azure", "anthropic" or "gemini" */
    const struct leo_adapter *adapter; /* the wire format for type (gateway/providers/provider.h) */
    char *api_version;              /* azure: the api-version query parameter; anthropic: anthropic-version */
    char *base_url;                 /* without trailing slash, e.g. "https://api.openai.com/v1" */
    struct leo_provider_key *keys;  /* may be empty (local servers, the mock) */
    size_t nkeys;
    uint64_t connect_timeout_ms;    /* default 10000 */
    uint64_t first_byte_timeout_ms; /* default 120000 */
    uint64_t total_timeout_ms;      /* default 600000 */
};

struct leo_deployment {
    struct leo_provider *provider;  /* points into the same snapshot */
    char *model;                    /* the model name sent upstream */
    unsigned weight;                /* default 1 */
    int priority;                   /* lower is tried first; equal priorities form a group; default 0 */
    struct leo_quota limits;        /* the provider's limits for this deployment (rpm, tpm, concurrency) */
    char *id;                       /* "provider/model", unique within its model: names the deployment in
                                       metrics, headers and the status API */
    char *override;                 /* the control plane's routing override on it ("disable" or "weight"), NULL
                                       for none (snapshot models only) */
    char *override_reason;          /* why, as the operator wrote it; NULL for none */
    bool disabled;                  /* override "disable": listed in the status API, never routed to */
};

struct leo_model {
    char *name;                     /* what clients send */
    struct leo_deployment *deployments; /* sorted by priority (stable); at least one */
    size_t ndeployments;
    char **aliases;                 /* further names clients may send for this model ("smart", "fast", ...) */
    size_t naliases;
    enum leo_strategy strategy;     /* within a priority group */
    unsigned max_attempts;          /* 0: routing.max_attempts */
    uint64_t hedge_after_ms;        /* 0: routing.hedge_after_ms */
};

struct leo_price {
    char *model;                    /* upstream model name (or prefix, see leo_config_price) */
    double input_per_mtok;          /* USD per 1M input tokens */
    double output_per_mtok;         /* USD per 1M output tokens */
};

struct leo_tenant_key {
    uint8_t hash[LEO_KEYHASH_BYTES];
    char *name;                     /* a label, safe to log */
    struct leo_tenant *tenant;
    struct leo_quota quota;         /* per-key quotas, on top of the tenant's */
    bool admin;                     /* may call the gateway's operational APIs (/v1/status/...) */
    /* private: a key with its own provider list ("providers") holds, per model (indexed like cfg->models), the
     * mask of the deployments at those providers (bit i: deployments[i], the first 64); NULL for a key without
     * the list, which may use every deployment. Read through leo_key_deployments. */
    uint64_t *_deployments;
    /* private: a key with its own model list ("models") points `tenant` at this view of its tenant, owned by
     * the key: the same id, flags and quotas, with models narrowed to the key's list (intersected with the
     * tenant's), so every check that reads key->tenant (leo_tenant_allows_model) enforces the key's list */
    struct leo_tenant *_view;
};

struct leo_tenant {
    char *id;                       /* unique, safe to log */
    bool allow_byok;                /* X-API-Key + Authorization: Bearer → bearer goes upstream */
    bool allow_route_override;      /* the x-leo-route header may pick a deployment */
    struct leo_quota quota;         /* per-tenant quotas */
    char **models;                  /* allowed client model names; NULL/0 = all */
    size_t nmodels;
    struct leo_tenant_key *keys;
    size_t nkeys;
};

struct leo_config {
    unsigned refs;
    uint64_t version;               /* increases with every snapshot loaded by this process */
    char *source;                   /* file path or other origin, for logs */

    char *listen_host;              /* default "0.0.0.0" */
    int listen_port;                /* default 8080 */
    unsigned workers;               /* 0 = number of cores */
    uint64_t drain_timeout_ms;      /* default 30000 */
    uint64_t busy_poll_us;          /* after the last I/O event a worker polls without blocking this long;
                                       0 = off (default), at most 100000 (gateway/worker.h) */
    struct leo_http_limits limits;
    int log_level;                  /* enum leo_log_level */
    bool access_log;                /* default true */
    uint64_t default_max_tokens;    /* reserved for adapters that require max_tokens; default 4096 */

    struct {
        unsigned max_attempts;      /* per request, across deployments and retries; default 3 */
        uint64_t backoff_base_ms;   /* first retry delay (jittered, doubling); default 100 */
        uint64_t backoff_max_ms;    /* default 2000 */
        uint64_t deadline_ms;       /* a request's whole routing budget; default 0 = the providers' timeouts */
        uint64_t key_cooldown_ms;   /* a key's cooldown after 429 without Retry-After; default 30000 */
        unsigned breaker_failures;  /* consecutive failures that open a deployment's breaker; default 5 */
        uint64_t breaker_open_ms;   /* how long it stays open before a half-open probe; default 30000 */
        uint64_t breaker_slow_ms;   /* an OK attempt slower than this to first byte counts as a breaker failure;
                                       0 = off (default) */
        uint64_t hedge_after_ms;    /* 0 = no hedging */
    } routing;

    struct {
        char *url;                  /* NULL: no Redis (standalone: in-process counters, one worker) */
        char *password;             /* from the env var named by password_env; never log it */
        uint64_t timeout_ms;        /* per command; default 50 */
        bool fail_open;             /* when Redis is unreachable: true = admit on local counters (default) */
    } redis;

    struct {
        char *redis_url;            /* NULL: tenants come from this file only; otherwise the control plane's
                                       snapshot (gateway/follower.h) replaces the file's tenants */
        char *password;             /* from the env var named by password_env; never log it */
        char *cache_path;           /* last snapshot, for a cold start with Redis down; NULL: none */
    } control_plane;

    struct {
        char *spool_dir;            /* where a worker stopping with Redis away writes its queued usage events,
                                       usage-<worker>.jsonl, and where the next start reads them back
                                       (gateway/usage.h); NULL: they are dropped. Read when a worker starts */
    } usage;

    struct {
        double threshold;           /* fraction of a quota that fires an alert (0 = off); default 0.8 */
        char *webhook_url;          /* POSTed a JSON alert; NULL = log only */
    } alerts;

    uint8_t key_hash_secret[LEO_KEYHASH_SECRET_BYTES];

    struct leo_provider *providers;
    size_t nproviders;
    struct leo_model *models;
    size_t nmodels;
    struct leo_price *prices;       /* config overrides first, then the shipped defaults */
    size_t nprices;
    struct leo_tenant *tenants;
    size_t ntenants;
    struct leo_cache_config cache;              /* "cache": the exact cache and dedup (gateway/cache.h) */
    struct leo_semcache_config semantic_cache;  /* "semantic_cache" (gateway/semcache.h) */

    /* private: lookup indexes */
    void *_model_index;
    void *_key_index;
};

/** Parses a JSON document into a new snapshot with refs = 1. On error returns LEO_ECONFIG and appends a
 *  message naming the JSON path to err. source is a label for logs. */
int leo_config_parse_json(const char *json, size_t len, const char *source, struct leo_config **out,
                          struct leo_buf *err);
/** Like leo_config_parse_json, but a provider's api_keys entries may also be {"label", "value", "weight"?}:
 *  the key itself, as the control plane's snapshot delivers it once decrypted (gateway/follower.c). Files are
 *  never parsed this way, so a configuration file cannot hold a secret. */
int leo_config_parse_overlay(const char *json, size_t len, const char *source, struct leo_config **out,
                             struct leo_buf *err);
/** Reads and parses a file. */
int leo_config_load_file(const char *path, struct leo_config **out, struct leo_buf *err);

/** Takes a reference. */
struct leo_config *leo_config_ref(struct leo_config *cfg);
/** Drops a reference; frees the snapshot at zero. NULL is a no-op. */
void leo_config_unref(struct leo_config *cfg);

/** The model a client asked for, or NULL. O(1). */
const struct leo_model *leo_config_find_model(const struct leo_config *cfg, struct leo_str name);
/** The tenant key whose keyed hash matches the presented key, or NULL. O(1) plus one hash computation. */
const struct leo_tenant_key *leo_config_find_key(const struct leo_config *cfg, struct leo_str presented);
/** True if the tenant may use the client model name. */
bool leo_tenant_allows_model(const struct leo_tenant *t, struct leo_str model);
/** The deployments of model m the key may be routed to, as a mask (bit i: m->deployments[i], the first 64):
 *  all bits for a key without a "providers" list; otherwise those at its providers, 0 when m has none there (the
 *  key may not use m). m must belong to cfg, the key's snapshot. O(1). */
static inline uint64_t leo_key_deployments(const struct leo_tenant_key *k, const struct leo_config *cfg,
                                           const struct leo_model *m)
{
    return k->_deployments ? k->_deployments[m - cfg->models] : UINT64_MAX;
}
/** Price for an upstream model: exact match first, then the longest configured name that is a prefix of it
 *  followed by '-' (so "gpt-4o-mini-2024-07-18" prices as "gpt-4o-mini"). NULL if unknown. */
const struct leo_price *leo_config_price(const struct leo_config *cfg, struct leo_str model);
/** USD for the given usage at price p (0 if p is NULL). */
double leo_price_cost(const struct leo_price *p, uint64_t input_tokens, uint64_t output_tokens);

#endif
