/*
 * semcache.h — the semantic cache of one worker: a near-repeat of an earlier prompt is answered with the earlier
 * answer, when the embeddings are close enough and the guards (semguard.h) find nothing decisive that differs.
 *
 * What it holds. An entry is (namespace, prompt text, its vector, the exact-cache key of the answer, a
 * per-entry threshold, an expiry). The answer itself stays in the exact cache (cache.h) under that key, so a
 * semantic hit is an exact-cache lookup of another request's key, and an answer expires or is evicted once.
 * Entries are grouped by namespace: tenant + client dialect + model as requested + the hash of the system
 * prompt + the hash of the earlier turns + every output-affecting parameter (the exact-cache canonical form of
 * the request without its messages). Nothing is ever compared across namespaces, so nothing crosses tenants,
 * models, system prompts or sampling parameters. Each namespace has its own HNSW index (common/hnsw.h).
 *
 * Sharing. With Redis, every change is appended to one stream, `leo:semcache:log` (add an entry, feedback on
 * an entry, delete an entry, set a tenant's or a model's threshold, purge a tenant); every worker applies the
 * stream in order to its in-memory indexes, polling it without blocking, and a starting worker rebuilds from
 * the stream's beginning. The stream is trimmed approximately to max_log entries (MAXLEN ~): size it above
 * (entries stored per TTL). A worker applies its own changes at once and again when it reads them back;
 * applying is idempotent. Without Redis the cache is the worker's own.
 *
 * Thresholds. A hit needs similarity >= max(the namespace's threshold, the entry's own threshold). The
 * namespace's threshold is the configured default until set at run time (leo_semcache_set_threshold). Feedback
 * on a served semantic hit (leo_semcache_feedback) tunes the entry: "bad" raises the entry's threshold above
 * the similarity it was served at (so that prompt, and anything as far away, no longer hits it) and a second
 * "bad" evicts it; "good" is counted.
 *
 * Lifetime: one per worker loop, created after the worker's Redis client and freed before it is closed
 * (commands in flight at free are detached: their callbacks free their records and touch nothing else).
 * Not thread-safe. Secrets: nothing here sees a key or credential; prompts are stored as sent.
 */
#ifndef LEO_SEMCACHE_H
#define LEO_SEMCACHE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../common/buf.h"
#include "../common/str.h"
#include "cache.h"
#include "semguard.h"

struct leo_redis;
struct leo_embedder;
struct leo_semcache;

/* ---- configuration: the "semantic_cache" section ---- */

/** A tenant's override: whether the semantic cache is on for it. */
struct leo_semcache_tenant_cfg {
    char *tenant;
    bool enabled;
};

/** The "semantic_cache" section of the gateway's config. Owned by the config snapshot; release with
 *  leo_semcache_config_release. */
struct leo_semcache_config {
    bool enabled;                  /* default false: the semantic cache is opt-in */
    double threshold;              /* default LEO_SEMCACHE_DEFAULT_THRESHOLD */
    char *embedder;                /* "local" (default) or "provider" */
    char *provider_base_url;       /* provider: an OpenAI-compatible API's base URL (".../v1") */
    char *provider_model;          /* provider: the embeddings model */
    char *provider_api_key_env;    /* provider: the environment variable holding the API key (may be NULL) */
    unsigned provider_dimensions;  /* provider: asked for when non-zero */
    uint64_t max_entries;          /* per worker; default 100000 */
    unsigned max_turns;            /* eligibility; default LEO_SEMGUARD_DEFAULT_MAX_TURNS */
    uint64_t max_chars;            /* eligibility; default LEO_SEMGUARD_DEFAULT_MAX_CHARS */
    struct leo_semcache_tenant_cfg *tenants;
    size_t ntenants;
};

/** The defaults (what a config without the section gets). */
void leo_semcache_config_defaults(struct leo_semcache_config *c);
/**
 * Parses the section (NULL: the defaults):
 *   {"enabled": bool, "threshold": (0,1], "embedder": "local"|"provider",
 *    "provider": {"base_url": str, "model": str, "api_key_env": str, "dimensions": int},
 *    "max_entries": int, "max_turns": int, "max_chars": int, "tenants": {"<id>": {"enabled": bool}}}
 * Unknown fields and wrong types are errors: LEO_ECONFIG with "<path>.<field>: <what>" appended to err.
 */
int leo_semcache_config_parse(const json_t *section, const char *path, struct leo_semcache_config *c,
                              struct leo_buf *err);
void leo_semcache_config_release(struct leo_semcache_config *c);
/** Whether the semantic cache is on for tenant by configuration (the tenant's override, else enabled). */
bool leo_semcache_config_enabled(const struct leo_semcache_config *c, const char *tenant);

/** Called when a purge of tenant ("" for every tenant) is applied, from this worker or read from the shared
 *  stream: the owner purges what it holds beside the semantic entries (the exact cache's L1). */
typedef void (*leo_semcache_purge_cb)(const char *tenant, void *ud);

#define LEO_SEMCACHE_NS_HEX 32 /* BLAKE2b-128 of the namespace, hex */

/** Options of a worker's semantic cache. */
struct leo_semcache_opts {
    uv_loop_t *loop;
    struct leo_redis *redis;        /* shared entries, or NULL (the worker's own); borrowed */
    struct leo_embedder *embedder;  /* borrowed; must outlive the cache */
    double threshold;               /* default similarity threshold of every namespace (0: the embedder's
                                       evaluated default, LEO_SEMCACHE_DEFAULT_THRESHOLD) */
    size_t max_entries;             /* per worker; the oldest go first past it; 0: 100000 */
    size_t max_log;                 /* approximate length of the Redis stream; 0: 1000000 */
    uint64_t poll_ms;               /* how often the stream is read; 0: 100 */
    struct leo_semguard_limits limits; /* eligibility (zero: the defaults) */
    leo_semcache_purge_cb on_purge;    /* optional */
    void *purge_ud;
};

/** Creates the cache; with Redis it starts following the stream at once. Never fails (aborts on OOM). */
struct leo_semcache *leo_semcache_new(const struct leo_semcache_opts *opts);
/** Frees it (see the lifetime rule above). NULL is a no-op. */
void leo_semcache_free(struct leo_semcache *sc);

/** A prepared lookup: what one request asks. Release with leo_semcache_query_release. */
struct leo_semcache_query {
    char ns[LEO_SEMCACHE_NS_HEX + 1];
    char tenant[129];
    char model[129];
    struct leo_semguard_input in;   /* the text embedded (in.text) and the conversation hashes */
    enum leo_semguard_reason reason;
    /* private */
    float *_vec;                    /* the text's vector once computed */
    unsigned _dim;
};

/**
 * Prepares the query of a chat request: canon is the request in the OpenAI form (for Anthropic clients, its
 * canonical translation), dialect the client's. Returns true when the request is eligible (q->reason says why
 * not otherwise; the query must be released either way).
 */
bool leo_semcache_query_init(struct leo_semcache *sc, const char *tenant, enum leo_dialect dialect,
                             const char *model, json_t *canon, struct leo_semcache_query *q);
void leo_semcache_query_release(struct leo_semcache_query *q);

/** A hit. */
struct leo_semcache_match {
    uint64_t entry_id;
    struct leo_cache_key answer;    /* the exact-cache key holding the answer */
    double similarity;
    double threshold;               /* the one that applied */
};

/** Result of an asynchronous lookup (a provider embedder that had to be called): hit true with m filled, or
 *  false (a miss, or the embedding failed: err < 0). */
typedef void (*leo_semcache_cb)(bool hit, const struct leo_semcache_match *m, int err, void *ud);

struct leo_semcache_op;

enum { LEO_SEMCACHE_MISS = 0, LEO_SEMCACHE_HIT = 1, LEO_SEMCACHE_PENDING = 2 };

/**
 * Looks the query up. LEO_SEMCACHE_HIT (m filled) or LEO_SEMCACHE_MISS synchronously when the vector could be
 * computed at once; LEO_SEMCACHE_PENDING when the embedder needs I/O: cb fires once later (unless
 * leo_semcache_cancel is called first) and *op is its handle. A negative error code (no callback) when the
 * embedding could not even start: treat as a miss.
 */
int leo_semcache_lookup(struct leo_semcache *sc, struct leo_semcache_query *q, struct leo_semcache_match *m,
                        leo_semcache_cb cb, void *ud, struct leo_semcache_op **op);
/** Cancels a pending lookup: its callback never fires. */
void leo_semcache_cancel(struct leo_semcache_op *op);

/**
 * Adds the query's prompt as an entry whose answer is stored in the exact cache under answer, for ttl_ms.
 * Needs the query's vector (computed by an earlier lookup, or now for a local embedder): LEO_EINVAL when it
 * is not available. 0 otherwise; the entry id in *id when id is not NULL.
 */
int leo_semcache_add(struct leo_semcache *sc, struct leo_semcache_query *q, const struct leo_cache_key *answer,
                     uint64_t ttl_ms, uint64_t *id);

/** Drops an entry (its answer vanished from the exact cache, or feedback evicted it); shared through Redis. */
void leo_semcache_delete(struct leo_semcache *sc, uint64_t entry_id);

/** Remembers that request_id was served by m, for feedback (kept 24 h; in Redis when configured). */
void leo_semcache_served(struct leo_semcache *sc, const char *request_id, const struct leo_semcache_match *m);

/** Outcome of feedback. */
enum leo_semcache_feedback_result {
    LEO_SEMCACHE_FB_APPLIED,    /* good counted, or the entry's threshold raised */
    LEO_SEMCACHE_FB_EVICTED,    /* bad again: the entry is gone */
    LEO_SEMCACHE_FB_UNKNOWN,    /* no semantic hit recorded for this request id (or the entry is gone) */
    LEO_SEMCACHE_FB_ERROR,      /* Redis could not be asked */
};

typedef void (*leo_semcache_feedback_cb)(enum leo_semcache_feedback_result r, double new_threshold, void *ud);

/**
 * Applies feedback on the answer served to request_id (of tenant: feedback on another tenant's request is
 * UNKNOWN). Calls cb exactly once, synchronously when the record is in this worker, later when Redis is asked.
 */
void leo_semcache_feedback(struct leo_semcache *sc, const char *tenant, const char *request_id, bool good,
                           leo_semcache_feedback_cb cb, void *ud);

/** Sets the threshold of every namespace of tenant (model NULL), of one model of it, or of one namespace (model
 *  "ns:<namespace hex>"), shared through Redis; 0 restores the default. LEO_EINVAL outside [0, 1]. The most
 *  specific setting applies: namespace, then model, then tenant. */
int leo_semcache_set_threshold(struct leo_semcache *sc, const char *tenant, const char *model, double threshold);

/** Removes every entry of tenant (NULL: of every tenant), shared through Redis. */
void leo_semcache_purge(struct leo_semcache *sc, const char *tenant);

/** Appends a JSON array of the namespaces of tenant (NULL: all) with their counters and thresholds:
 *  [{"tenant","model","namespace","entries","hits","misses","guard_refusals","threshold"}...]. */
void leo_semcache_stats_json(struct leo_semcache *sc, const char *tenant, struct leo_buf *out);

/** Entries held by this worker (tests). */
size_t leo_semcache_entries(const struct leo_semcache *sc);
/** True once the worker has read the Redis stream up to its end at least once (or has no Redis). */
bool leo_semcache_synced(const struct leo_semcache *sc);

/** Declares the metric families (before forking):
 *   leo_semcache_lookups_total{result="hit|miss|guard|ineligible|error"}, leo_semcache_entries (gauge),
 *   leo_semcache_feedback_total{rating="good|bad"}, leo_semcache_evictions_total{reason}. */
void leo_semcache_metrics_describe(void);

#endif
