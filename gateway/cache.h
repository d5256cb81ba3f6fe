/*
 * cache.h — the exact-answer cache and in-flight request deduplication of one worker.
 *
 * Pieces (one module, several files):
 *   cache.c        the key, the policy (config section, per-request headers, eligibility), entries, the
 *                  two-level store (an in-process LRU bounded in bytes, Redis shared by every worker), metrics;
 *   cache_asm.c    assembling a stream into the whole answer it stands for, and replaying a whole answer as
 *                  the stream a client expects (OpenAI chat.completion.chunk events or Anthropic events);
 *   cache_dedup.c  the registry of requests in flight: one leader per key, followers fed from it.
 *
 * Invariants:
 * - A key covers the tenant, the client's dialect, the model as requested and every request member that can
 *   change the answer; two requests that differ in any of those never share a key (BLAKE2b-256 over a
 *   canonical serialisation: object keys sorted, no whitespace, numbers normalised so 0, 0.0 and 0e0 agree).
 * - Only complete successful answers become entries. An entry is immutable once built and reference counted:
 *   whoever replays it holds a reference, so eviction or expiry never frees an entry in use.
 * - The cache never waits on Redis beyond the Redis client's command timeout; a Redis that is down, slow or
 *   answering garbage makes a lookup a miss and a store a no-op, and the request goes on.
 * - Everything here runs on one worker's loop thread: reference counts and tables are plain, not atomic.
 * - Nothing here logs or stores a secret: keys are hashes; entries hold answers only.
 */
#ifndef LEO_CACHE_H
#define LEO_CACHE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/str.h"
#include "providers/provider.h"

struct leo_redis;

/* ---- configuration and policy ------------------------------------------------------------------------- */

/** Which requests may be answered from (and stored into) the cache. */
enum leo_cache_mode {
    LEO_CACHE_MODE_NEVER,
    LEO_CACHE_MODE_DETERMINISTIC, /* temperature 0, or a seed given (the default) */
    LEO_CACHE_MODE_ALWAYS,
};

/** Parses "never" | "deterministic" | "always"; -1 when unknown. */
int leo_cache_mode_parse(const char *s);
/** The name of a mode (static storage). */
const char *leo_cache_mode_name(enum leo_cache_mode m);

/** The policy that applies to one request's tenant and model. */
struct leo_cache_policy {
    bool enabled; /* the exact cache (lookup and store) */
    enum leo_cache_mode mode;
    uint64_t ttl_s; /* time to live of what is stored */
    bool dedup;     /* identical eligible requests in flight share one upstream call */
};

/** An override of some policy members for one model or one tenant; only the members whose has_* is set apply. */
struct leo_cache_override {
    char *name; /* the configured model name, or the tenant id */
    bool has_enabled, has_mode, has_ttl, has_dedup;
    struct leo_cache_policy p;
};

/** The "cache" section of the gateway's config. Owned by the config snapshot; release with
 *  leo_cache_config_release. */
struct leo_cache_config {
    struct leo_cache_policy def; /* enabled true, deterministic, 3600 s, dedup true */
    uint64_t max_bytes;          /* L1 bound per worker (bytes of entries and their bookkeeping); default 64 MiB */
    uint64_t max_entry_bytes;    /* larger answers are not cached; default 1 MiB */
    bool redis;                  /* L2 in the config's "redis" when one is configured; default true */
    struct leo_cache_override *models; /* applied over def */
    size_t nmodels;
    struct leo_cache_override *tenants; /* applied over def and the model's override */
    size_t ntenants;
};

/** The defaults (what a config without a "cache" section gets). */
void leo_cache_config_defaults(struct leo_cache_config *cc);

/**
 * Parses the "cache" section:
 *   {"enabled": bool, "mode": "never|deterministic|always", "ttl_s": 1..2592000, "dedup": bool,
 *    "max_bytes": 0..2^40, "max_entry_bytes": 1..2^30, "redis": bool,
 *    "models":  {"<model name>": {"enabled", "mode", "ttl_s", "dedup"}},
 *    "tenants": {"<tenant id>":  {"enabled", "mode", "ttl_s", "dedup"}}}
 * section may be NULL (the defaults). path is the section's JSON path for messages ("cache"). Unknown fields
 * and wrong types are errors: returns LEO_ECONFIG with "<path>: <what is wrong>" appended to err (may be NULL)
 * and *cc released to its defaults; 0 otherwise. Model and tenant names are not checked against the rest of
 * the config here (the caller may: an override for an unknown name is harmless).
 */
int leo_cache_config_parse(const json_t *section, const char *path, struct leo_cache_config *cc, struct leo_buf *err);

/** Frees the overrides; *cc returns to the defaults. */
void leo_cache_config_release(struct leo_cache_config *cc);

/** The policy for a request of tenant (id, may be NULL) on model (the configured name, may be NULL):
 *  the defaults, then the model's override, then the tenant's. O(models + tenants overrides). */
void leo_cache_policy_for(const struct leo_cache_config *cc, const char *tenant, const char *model,
                          struct leo_cache_policy *out);

/** Per-request controls from the request headers x-leo-cache and x-leo-cache-ttl. */
struct leo_cache_ctl {
    bool no_cache;  /* do not read (may store) */
    bool no_store;  /* may read, do not store */
    bool refresh;   /* do not read, store (replaces what is there) */
    uint64_t ttl_s; /* 0: the policy's */
};

#define LEO_CACHE_MAX_TTL_S 2592000u /* 30 days */

/**
 * Parses the header values (either span may be empty = header absent). x-leo-cache is a comma-separated list
 * of no-cache, no-store and refresh (case-insensitive, spaces ignored); x-leo-cache-ttl is whole seconds,
 * 1..LEO_CACHE_MAX_TTL_S. Returns 0, or LEO_EINVAL with a client-facing message in err naming the header and
 * the value that was wrong (the value is cut to 64 bytes).
 */
int leo_cache_ctl_parse(struct leo_str cache_hdr, struct leo_str ttl_hdr, struct leo_cache_ctl *out,
                        struct leo_buf *err);

/** What the cache does for one request. */
struct leo_cache_decision {
    bool lookup;        /* look the key up (L1, then L2) */
    bool store;         /* store a complete successful answer */
    bool dedup;         /* join the in-flight registry under the key */
    uint64_t ttl_ms;    /* for the store */
    const char *reason; /* why not, when neither lookup nor store: "disabled", "mode never",
                           "not deterministic", "no-cache, no-store"; NULL otherwise; static storage */
};

/** True when a request (either dialect) asks for a deterministic answer: temperature 0 (any number form), or an
 *  integer seed. temperature and seed are the raw JSON values of those top-level members ({NULL, 0} when
 *  absent), as leo_json_scan_members gives them. */
bool leo_cache_deterministic(struct leo_str temperature, struct leo_str seed);

/** Decides from the policy, whether the request is deterministic (leo_cache_deterministic) and its controls. Deduplication follows lookup (a request that asks for a
 *  fresh answer with no-cache or refresh does not share someone else's). */
void leo_cache_decide(const struct leo_cache_policy *pol, bool deterministic, const struct leo_cache_ctl *ctl,
                      struct leo_cache_decision *out);

/** What the client is told in x-leo-cache-status. */
enum leo_cache_status {
    LEO_CACHE_STATUS_BYPASS,       /* not looked up (not eligible, disabled, no-cache, refresh) */
    LEO_CACHE_STATUS_MISS,         /* looked up, not found (Redis failures included) */
    LEO_CACHE_STATUS_HIT,          /* answered from the exact cache */
    LEO_CACHE_STATUS_SEMANTIC_HIT, /* answered from the semantic cache */
};

/** "bypass" | "miss" | "hit" | "semantic-hit" (static storage). */
const char *leo_cache_status_name(enum leo_cache_status s);

/* ---- keys ------------------------------------------------------------------------------------------------ */

#define LEO_CACHE_HASH_HEX 64 /* BLAKE2b-256, hex */
#define LEO_CACHE_KEY_MAX (128 + 1 + LEO_CACHE_HASH_HEX + 1)

/** A cache key as text: "<tenant>:<64 hex>" (the tenant in clear so one tenant's entries can be found and
 *  purged in Redis; the hash covers it too). NUL-terminated. */
struct leo_cache_key {
    char s[LEO_CACHE_KEY_MAX];
    size_t len;
};

/**
 * Computes the key of a request from its body as received (body[0..len), a JSON object), without building a
 * tree: BLAKE2b-256 over a version tag, the tenant id, the client's dialect and the canonical serialisation
 * (common/json_scan.h leo_json_canonical) of the object without the members that cannot change the answer
 * (top level only: user, stream, stream_options, metadata, store, service_tier). Everything else counts,
 * unknown members too.
 * Returns 0, LEO_EPARSE when body is not a JSON object jansson accepts, or LEO_EINVAL when tenant is NULL,
 * empty or longer than 128 bytes.
 */
int leo_cache_key(const char *tenant, enum leo_dialect dialect, const char *body, size_t len,
                  struct leo_cache_key *out);

struct leo_cache;

/** leo_cache_key through the cache's memo of bodies it answered: the same bytes (for the same tenant and
 *  dialect) as a body remembered with leo_cache_key_remember get their key without being canonicalised and
 *  hashed again (*memoized says so). 1024 slots, bodies up to 8 KiB; counted in leo_cache_key_memo_total{result}. */
int leo_cache_key_memo(struct leo_cache *c, const char *tenant, enum leo_dialect dialect, const char *body, size_t len,
                       struct leo_cache_key *out, bool *memoized);
/** Remembers that body has key (after the cache answered it). */
void leo_cache_key_remember(struct leo_cache *c, enum leo_dialect dialect, const char *body, size_t len,
                            const struct leo_cache_key *key);

/** Appends the canonical serialisation of a parsed request, the same bytes leo_cache_key hashes for its text
 *  (the semantic cache's namespaces use it on trees). */
int leo_cache_canonical(enum leo_dialect dialect, json_t *req, struct leo_buf *out);

/** The same from the body's bytes (what leo_cache_key hashes). 0, LEO_EPARSE or LEO_ETOOBIG. */
int leo_cache_canonical_raw(const char *body, size_t len, struct leo_buf *out);

/* ---- entries ------------------------------------------------------------------------------------------- */

/** One stored answer. Immutable after leo_cache_entry_new; reference counted. */
struct leo_cache_entry {
    unsigned refs;
    enum leo_dialect dialect; /* the client dialect the body is written in */
    char *body;               /* the whole answer, one JSON document (chat.completion or Anthropic message),
                                 NUL-terminated */
    size_t len;
    uint64_t input_tokens, output_tokens; /* the answer's usage (what a hit saves) */
    bool have_usage;
    uint64_t stored_at_ms;  /* Unix time when it was produced */
    uint64_t expires_at_ms; /* Unix time; 0 until stored */
    bool replayable;        /* every part can be replayed as a stream (see cache_asm.c) */
    /* private */
    struct leo_cache_entry *_prev, *_next; /* LRU list (most recent first) while in L1 */
    struct leo_cache_entry *_chain;        /* hash chain in L1 */
    bool _in_l1;
    size_t _l1_bytes;       /* counted in L1's byte bound: the body, the key, the overhead and _sse */
    char *_sse[2];          /* the answer replayed as an event stream, without [0] and with [1] the usage chunk,
                               rendered on the first replay while the entry is in L1 (leo_cache_entry_sse) */
    size_t _sse_len[2];
    char _key[LEO_CACHE_KEY_MAX];
};

/**
 * Builds an entry (refs = 1) from a whole answer in the given dialect, copying body. Reads the usage from the
 * body when u is NULL or !u->have. Returns NULL when body is not a JSON object.
 */
struct leo_cache_entry *leo_cache_entry_new(enum leo_dialect dialect, const char *body, size_t len,
                                            const struct leo_usage *u, uint64_t now_ms);
/** Takes a reference. */
struct leo_cache_entry *leo_cache_entry_ref(struct leo_cache_entry *e);
/** Drops a reference; frees at zero. NULL is a no-op. */
void leo_cache_entry_unref(struct leo_cache_entry *e);

/* ---- the two-level store ---------------------------------------------------------------------------------- */

struct leo_cache;
struct leo_cache_lookup;

/** Unix time in milliseconds; tests inject their own clock. */
typedef uint64_t (*leo_cache_clock_fn)(void *ud);

struct leo_cache_opts {
    uint64_t max_bytes;       /* L1 bound; 0 = no L1 */
    uint64_t max_entry_bytes; /* larger bodies are neither stored nor looked up in L2; 0 = 1 MiB */
    struct leo_redis *redis;  /* L2, or NULL; borrowed: must outlive the cache's lookups */
};

/** Creates a worker's cache. Never fails (aborts on OOM). */
struct leo_cache *leo_cache_new(const struct leo_cache_opts *opts);
/** Frees it and drops L1's references. L2 lookups still in flight are detached: their callbacks never fire
 *  and their records are freed when Redis answers (the Redis client must still be open or close later). */
void leo_cache_free(struct leo_cache *c);
/** Changes the L1 bound (a config reload); evicts at once when it shrank. */
void leo_cache_set_limits(struct leo_cache *c, uint64_t max_bytes, uint64_t max_entry_bytes);
/** Enables or disables L2 without changing the Redis connection (config "cache.redis"). */
void leo_cache_set_redis(struct leo_cache *c, struct leo_redis *redis);
/** Replaces the clock (tests). */
void leo_cache_set_clock(struct leo_cache *c, leo_cache_clock_fn fn, void *ud);

/** Result of an L2 lookup: e is a reference for the callee (NULL on a miss, an error, or a cancel never
 *  reaches here). level_err is 0, or the Redis error that made it a miss (LEO_ETIMEOUT, LEO_ECLOSED...). */
typedef void (*leo_cache_lookup_cb)(struct leo_cache_entry *e, int level_err, void *ud);

enum {
    LEO_CACHE_MISS = 0,    /* not in L1 and L2 not asked (none, or not connected): no callback */
    LEO_CACHE_HIT = 1,     /* found in L1: *out is a reference for the caller; no callback */
    LEO_CACHE_PENDING = 2, /* asked L2: cb fires exactly once, from the loop, unless cancelled */
};

/**
 * Looks key up: L1 first (synchronously), then L2. Returns LEO_CACHE_HIT, LEO_CACHE_MISS or LEO_CACHE_PENDING
 * (then *handle is set for leo_cache_lookup_cancel; it stays valid until cb fires or cancel is called). An L2
 * hit is promoted into L1 before cb runs. Expired entries are never returned.
 */
int leo_cache_lookup(struct leo_cache *c, const struct leo_cache_key *key, struct leo_cache_entry **out,
                     leo_cache_lookup_cb cb, void *ud, struct leo_cache_lookup **handle);

/** The caller no longer wants the answer (its client left): cb will not fire. */
void leo_cache_lookup_cancel(struct leo_cache_lookup *l);

/**
 * Stores e under key in L1 and (fire and forget) in L2, for ttl_ms; sets e->expires_at_ms. An entry larger
 * than max_entry_bytes is not stored (returns LEO_ETOOBIG); otherwise 0. The cache takes its own reference.
 * A store replaces what the key held.
 */
int leo_cache_store(struct leo_cache *c, const struct leo_cache_key *key, struct leo_cache_entry *e, uint64_t ttl_ms);

/** Removes key from L1 (L2 entries expire by TTL). */
void leo_cache_remove(struct leo_cache *c, const struct leo_cache_key *key);

/** Removes from L1 every entry of tenant (NULL: every entry) and returns how many went. L2 is not touched here
 *  (its keys, leo:cache:<tenant>:*, are found with SCAN by whoever purges Redis). O(entries in L1). */
size_t leo_cache_purge_tenant(struct leo_cache *c, const char *tenant);

/** L1's current totals (they also feed the leo_cache_bytes and leo_cache_entries gauges). */
void leo_cache_l1_usage(const struct leo_cache *c, uint64_t *bytes, uint64_t *entries);

/** Number of L2 lookups and stores waiting on Redis (tests, status). */
size_t leo_cache_pending(const struct leo_cache *c);

/** The Redis value of an entry and back (exposed for tests): a text header line then the body. */
void leo_cache_entry_encode(const struct leo_cache_entry *e, struct leo_buf *out);
struct leo_cache_entry *leo_cache_entry_decode(const char *p, size_t len);

/**
 * Declares the metric families (call with the gateway's other describe functions, before forking):
 *   leo_cache_lookups_total{level="l1|l2",result="hit|miss|error"}  counter
 *   leo_cache_stores_total{level="l1|l2",result="ok|error|too_big"}  counter
 *   leo_cache_evictions_total{reason="size|expired"}                 counter (L1)
 *   leo_cache_bytes, leo_cache_entries                               gauges (L1, per worker, summed)
 *   leo_dedup_followers_total                                        counter: requests served by a leader's call
 *   leo_dedup_leaders_total                                          counter: flights with a leader
 */
void leo_cache_metrics_describe(void);

/* ---- assembling and replaying (cache_asm.c) ----------------------------------------------------------- */

struct leo_cache_asm;

/** Starts assembling a stream of the given client dialect. max_bytes caps the accumulated text (0: 64 MiB). */
struct leo_cache_asm *leo_cache_asm_new(enum leo_dialect dialect, size_t max_bytes);
void leo_cache_asm_free(struct leo_cache_asm *a);

/**
 * Feeds one OpenAI chat.completion.chunk object (borrowed). Returns 0, or LEO_EINVAL (err says why) when the
 * chunk holds something the whole answer could not represent faithfully (logprobs, audio, legacy
 * function_call, an unknown delta member) or LEO_ETOOBIG past max_bytes; the assembler then refuses the rest
 * and the answer must not be cached.
 */
int leo_cache_asm_openai(struct leo_cache_asm *a, json_t *chunk, struct leo_buf *err);

/**
 * Feeds one Anthropic stream event: its name and its parsed data (borrowed). ping is ignored; an error event,
 * an unknown event, an unsupported block or delta (citations, server tools) is LEO_EINVAL. Returns 1 at
 * message_stop (the answer is complete), 0 otherwise.
 */
int leo_cache_asm_anthropic(struct leo_cache_asm *a, struct leo_str event, json_t *data, struct leo_buf *err);

/**
 * The whole answer (new reference): an OpenAI chat.completion — choices in index order, each with message
 * {role, content (string or null), refusal (string or null), tool_calls when any, reasoning_content when any},
 * logprobs null and finish_reason, plus id, object, created, model, system_fingerprint and service_tier when
 * the stream had them, and usage when it had one — or the Anthropic message as message_start announced it with
 * its content blocks, stop_reason, stop_sequence and usage filled in. NULL with err when the stream was not
 * complete (no finish_reason on some choice / no message_stop) or an earlier feed failed.
 */
json_t *leo_cache_asm_finish(struct leo_cache_asm *a, struct leo_buf *err);

/** True when every part of a whole answer can be replayed as a stream by leo_cache_replay_sse. */
bool leo_cache_replayable(enum leo_dialect dialect, json_t *doc);

/**
 * Appends the SSE bytes a streaming client expects for the whole answer doc:
 *   OpenAI: per choice a role chunk, a reasoning chunk, a content chunk, a refusal chunk, one chunk per tool
 *   call (id, name and the whole arguments), a finish chunk; then a usage chunk (choices []) only when
 *   include_usage, then "data: [DONE]".
 *   Anthropic: message_start (content [], usage with output_tokens 0), per block content_block_start, one delta
 *   (text_delta, thinking_delta + signature_delta, input_json_delta) and content_block_stop, message_delta
 *   (stop_reason, stop_sequence, usage.output_tokens), message_stop.
 * id and created replace the answer's (NULL / 0: keep them). Returns 0, LEO_EINVAL when doc is not
 * replayable, or LEO_ETOOBIG from out's cap.
 */
int leo_cache_replay_sse(enum leo_dialect dialect, json_t *doc, const char *id, int64_t created, bool include_usage,
                         struct leo_buf *out);

/**
 * Appends to out the entry replayed as an event stream in its dialect (leo_cache_replay_sse with the entry's own
 * id and time; include_usage adds the usage chunk). The rendering is kept with the entry while it is in c's L1
 * (and counted in L1's byte bound, which may evict other entries), so later replays copy it instead of parsing and
 * rendering again. 0, or LEO_EINVAL when the entry cannot be replayed (then out is unchanged).
 */
int leo_cache_entry_sse(struct leo_cache *c, struct leo_cache_entry *e, bool include_usage, struct leo_buf *out);

/** The body of an entry parsed (a new reference; parsed on every call so that L1's byte bound covers all an
 *  entry holds). NULL if it does not parse. */
json_t *leo_cache_entry_doc(struct leo_cache_entry *e);

/* ---- deduplication (cache_dedup.c) ------------------------------------------------------------------- */

struct leo_dedup;
struct leo_dedup_flight;
struct leo_dedup_follower;

/** How a flight ended, as a follower sees it. */
struct leo_dedup_result {
    struct leo_cache_entry *entry; /* success: a reference for the follower (unref it), NULL on failure */
    int status;                    /* failure: the status the leader's client got (0 when it was abandoned) */
    const char *body;              /* failure: the error body the leader's client got (client dialect), may be
                                      NULL; valid only during the callback */
    size_t len;
    bool retry;     /* failure: the follower should make its own upstream call (only ever true
                       when it has received no stream bytes) */
    bool delivered; /* this follower received stream bytes through on_data */
};

struct leo_dedup_callbacks {
    /** Stream bytes the leader wrote to its client (the backlog first, during leo_dedup_join, then each new
     *  write). NULL: the follower only wants the end. Called only for followers of the leader's variant. */
    void (*on_data)(void *ud, const char *bytes, size_t len);
    /** The end, exactly once (unless the follower left first). The follower handle is freed when it returns. */
    void (*on_done)(void *ud, const struct leo_dedup_result *r);
};

enum { LEO_DEDUP_LEADER = 1, LEO_DEDUP_FOLLOWER = 2 };

/** Creates a worker's registry. max_backlog caps the stream bytes a flight keeps for late joiners (0: 8 MiB);
 *  past it the flight stops taking followers (a new identical request becomes a new leader). */
struct leo_dedup *leo_dedup_new(size_t max_backlog);
/** Frees it. Flights still registered are failed with retry (their followers' on_done runs now). */
void leo_dedup_free(struct leo_dedup *d);

/**
 * Joins the flight of key with a variant (an opaque number for how the answer is written: e.g. whole, stream,
 * stream with usage; stream bytes are shared only between equal variants).
 * Returns LEO_DEDUP_LEADER with *flight set: no flight was in the air; the caller makes the call and must end
 * the flight with exactly one of leo_dedup_complete, leo_dedup_fail or leo_dedup_abandon. Or
 * LEO_DEDUP_FOLLOWER with *follower set: cbs will be called with ud (the backlog of stream bytes before this
 * returns, when on_data is given and the variant matches). cbs must stay valid while the follower lives.
 */
int leo_dedup_join(struct leo_dedup *d, const struct leo_cache_key *key, unsigned variant,
                   const struct leo_dedup_callbacks *cbs, void *ud, struct leo_dedup_flight **flight,
                   struct leo_dedup_follower **follower);

/** The leader wrote these stream bytes to its client: followers of its variant get them now. */
void leo_dedup_publish(struct leo_dedup_flight *f, const char *bytes, size_t len);
/** Success: every follower's on_done gets a reference to e (borrowed here). The flight is freed. */
void leo_dedup_complete(struct leo_dedup_flight *f, struct leo_cache_entry *e);
/** Failure: followers' on_done gets status and body; retry is passed on to followers that received no
 *  stream bytes. The flight is freed. */
void leo_dedup_fail(struct leo_dedup_flight *f, int status, const char *body, size_t len, bool retry);
/** The leader's client left before the end: followers are told to retry (or fail, when they already
 *  received stream bytes). The flight is freed. */
void leo_dedup_abandon(struct leo_dedup_flight *f);
/** A follower's client left: it is unregistered; the leader and the other followers go on. Must not be
 *  called after its on_done. */
void leo_dedup_leave(struct leo_dedup_follower *fl);

/** Flights in the air and followers attached (tests, status). */
void leo_dedup_counts(const struct leo_dedup *d, size_t *flights, size_t *followers);

#endif
