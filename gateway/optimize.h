/*
 * optimize.h — the optimisation strategies on the request path of the proxied chat routes, and their API:
 * the exact cache (cache.h), request deduplication (cache.h) and the semantic cache (semcache.h).
 *
 * A worker owns one struct leo_optimizer holding the three (and the semantic cache's embedder). Per request,
 * the proxy calls:
 *   leo_opt_begin        after validation, before admission: answers from a cache, joins an identical request
 *                        in flight, or lets the request go on (now, or later through the continue callback);
 *   leo_opt_stream_write every byte of a streamed answer written to the client (followers get them; the
 *                        answer is assembled for the cache);
 *   leo_opt_whole /      the complete successful answer (whole) or the clean end of the stream: stored in the
 *   leo_opt_stream_done  exact cache (and the semantic cache), handed to the followers;
 *   leo_opt_close        from the request's on_close: cancels what is pending, abandons an unfinished flight
 *                        (its followers then make their own calls).
 * Every answer of these routes carries x-leo-cache-status: hit | semantic-hit | miss | bypass (the proxy adds
 * it from g->cache_status); followers of an identical request get hit with x-leo-dedup: follower.
 *
 * Run-time switches: POST /v1/optimization/enable turns a strategy on or off for a tenant over the config;
 * with Redis the switches are shared by every worker (hash leo:optimization, one field per tenant, re-read
 * every second; a switch rewrites only its own strategy in the field, merged in Redis by a script).
 *
 * Lifetime: leo_optimizer_new after the worker's Redis client and upstream client, leo_optimizer_free before
 * they close; a switch read still in flight then keeps the struct until its callback (an answer, or
 * LEO_ECANCELED when the Redis client closes) frees it. Not thread-safe (one loop).
 */
#ifndef LEO_OPTIMIZE_H
#define LEO_OPTIMIZE_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "providers/provider.h"

struct leo_gw_req;
struct leo_config;
struct leo_redis;
struct leo_upstream;
struct leo_optimizer;
struct leo_opt_req;

struct leo_optimizer_opts {
    uv_loop_t *loop;
    struct leo_redis *redis;       /* shared caches and switches, or NULL */
    struct leo_upstream *up;       /* for a provider embedder */
    const struct leo_config *cfg;  /* the first snapshot: cache limits and the embedder */
};

/** Creates the worker's optimiser. Never fails; a provider embedder that cannot be built is logged and the
 *  local one used instead. */
struct leo_optimizer *leo_optimizer_new(const struct leo_optimizer_opts *opts);
/** Applies a new snapshot's cache limits (the embedder is chosen at start). */
void leo_optimizer_set_config(struct leo_optimizer *o, const struct leo_config *cfg);
void leo_optimizer_free(struct leo_optimizer *o);

/** Called when the request must go on to the upstream after leo_opt_begin returned true. */
typedef void (*leo_opt_continue_cb)(void *ud);

/** What leo_opt_begin needs of a validated chat request, read from its bytes without building a tree. */
struct leo_opt_input {
    struct leo_str body;      /* the request's bytes (the exact cache's key is computed over their canonical form) */
    bool deterministic;       /* temperature 0 or an integer seed (leo_cache_request_deterministic) */
    bool stream, include_usage;
    /* the request as a tree in the OpenAI form (for Anthropic clients their request translated), which the
     * semantic cache needs: asked for only after the exact cache missed, owned by the caller and alive until
     * leo_opt_close; NULL when it cannot be built (the semantic cache is then skipped) */
    json_t *(*tree)(void *ud);
    void *tree_ud;
};

/**
 * Consults the caches for a validated chat request.
 * Returns false when the request goes on now (*out may be set: call the recording functions); true when the
 * optimiser took it over: it has been answered (a hit, a header error) or will be answered, or cont(ud) will be
 * called exactly once to let it go on. Sets g->cache_status. *out is allocated in the request's arena.
 */
bool leo_opt_begin(struct leo_optimizer *o, struct leo_gw_req *g, const struct leo_opt_input *in,
                   leo_opt_continue_cb cont, void *ud, struct leo_opt_req **out);

/** Stream bytes written to the client (r may be NULL: nothing to do). */
void leo_opt_stream_write(struct leo_opt_req *r, const char *bytes, size_t len);
/** The stream ended cleanly; u is the usage the proxy accounted (it may not be in the client's bytes). */
void leo_opt_stream_done(struct leo_opt_req *r, const struct leo_usage *u);
/** A complete successful whole answer in the client's dialect. */
void leo_opt_whole(struct leo_opt_req *r, const char *body, size_t len, const struct leo_usage *u);
/** The request is over (from on_close). */
void leo_opt_close(struct leo_opt_req *r);

/* Routes (authenticated like every /v1 route; an admin key may name another tenant with "tenant"). */
void leo_route_opt_status(struct leo_gw_req *g);        /* GET  /v1/optimization/status */
void leo_route_opt_enable(struct leo_gw_req *g);        /* POST /v1/optimization/enable */
void leo_route_opt_cache_stats(struct leo_gw_req *g);   /* GET  /v1/optimization/cache/stats */
void leo_route_opt_cache_purge(struct leo_gw_req *g);   /* POST /v1/optimization/cache/purge */
void leo_route_opt_cache_feedback(struct leo_gw_req *g); /* POST /v1/optimization/cache/feedback */
void leo_route_opt_cache_threshold(struct leo_gw_req *g); /* POST /v1/optimization/cache/threshold */

/** Declares the metric families of the three strategies (before forking). */
void leo_opt_metrics_describe(void);

#endif
