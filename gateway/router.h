/*
 * router.h — choosing a deployment and a provider key for each attempt of a request.
 *
 * The router is pure decision logic: it does no I/O and reads no clock but one. Every call that depends on time
 * takes now_ms (a monotonic millisecond clock, the worker loop's uv_now), so behaviour is deterministic and
 * testable; the exception is a key's forced cooldown from the control plane (leo_provider_key.forced_until_ms),
 * an absolute time compared with the wall clock. One router lives in each worker process and is used from that process's loop thread only.
 *
 * Invariants:
 * - Runtime state outlives configuration snapshots: deployment state is keyed by the deployment id string
 *   ("provider/model"), provider-key state by provider name + key index. A reload that keeps a deployment keeps
 *   its breaker, in-flight count and latency; a key whose value changed on reload starts afresh (its
 *   disabled/cooldown state is cleared). State entries are created on first use and freed with the router.
 * - Deployments with the same id in different models share one state: they are the same upstream endpoint.
 * - Every attempt returned by leo_router_next must be passed to leo_router_end exactly once, whether or not it
 *   was begun; otherwise a half-open breaker keeps waiting for its probe (a probe older than the provider's
 *   total timeout is presumed lost and another one is admitted).
 * - No function here logs or renders a provider key value; only the names of the environment variables.
 *
 * Behaviour (strategies, breaker, cooldowns, retries) is documented in docs/routing.md.
 */
#ifndef LEO_ROUTER_H
#define LEO_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/http_server.h"
#include "../common/str.h"
#include "config.h"

/** The most deployments of one model a plan considers (the first ones in priority order). */
#define LEO_ROUTE_MAX_DEPLOYMENTS 64
/** Output tokens assumed by the lowest-cost strategy when the caller does not set plan->output_tokens. */
#define LEO_ROUTE_OUTPUT_GUESS 256

struct leo_router;
struct leo_router__dep;
struct leo_router__key;

/** How an attempt ended. */
enum leo_route_outcome {
    LEO_ROUTE_OK,            /* the upstream answered successfully (2xx) */
    LEO_ROUTE_RATE_LIMITED,  /* 429: the key cools down (or is exhausted for the day) */
    LEO_ROUTE_AUTH_FAILED,   /* 401/403: the key is disabled until it changes */
    LEO_ROUTE_SERVER_ERROR,  /* 5xx: counts toward the breaker */
    LEO_ROUTE_CONNECT_ERROR, /* could not connect: counts toward the breaker */
    LEO_ROUTE_TIMEOUT,       /* no answer in time: counts toward the breaker */
    LEO_ROUTE_CLIENT_ERROR,  /* another 4xx: the request's fault, no penalty, not retryable */
    LEO_ROUTE_CANCELLED,     /* the client went away or a hedge lost: no penalty */
};

/** What the caller observed about an attempt; every member may be left zero. */
struct leo_route_feedback {
    int status;              /* HTTP status, 0 when there was none */
    uint64_t ttfb_ms;        /* time to first byte, for OK (feeds the latency EWMA); 0 = not measured */
    uint64_t retry_after_ms; /* RATE_LIMITED: from leo_retry_after_ms; 0 = unknown → routing.key_cooldown_ms */
    struct leo_str message;  /* the upstream error message (or a body excerpt), for the daily-quota heuristic */
    uint64_t now_unix_ms;    /* wall clock for "until the next UTC midnight"; 0 = read it with time() */
};

/**
 * One request's routing state. Caller-allocated (typically in the request), initialised with
 * leo_route_plan_init, no heap memory: nothing to free. The config and model must outlive the plan (the
 * request holds a reference to the snapshot).
 */
struct leo_route_plan {
    const struct leo_config *cfg;
    const struct leo_model *model;
    uint64_t input_tokens;    /* estimate, for lowest-cost */
    uint64_t output_tokens;   /* estimate, for lowest-cost; LEO_ROUTE_OUTPUT_GUESS by default */
    unsigned attempts;        /* attempts handed out so far */
    unsigned max_attempts;    /* model.max_attempts, else routing.max_attempts */
    uint64_t deadline_ms;     /* now_ms after which no attempt starts (0 = none), from routing.deadline_ms */
    int pin;                  /* index into model->deployments of the only deployment this plan may use (the
                                 x-leo-route header); -1 (the default) = any */
    uint64_t allowed;         /* bit i: deployments[i] may be used (the key's providers, leo_key_deployments);
                                 all bits (the default) = any */
    /* private */
    uint64_t _tried;          /* bit i: deployments[i] was chosen by this plan */
    uint64_t _skipped;        /* bit i: deployments[i] refused this request by its own limits (leo_router_skip) */
    int _last;                /* index of the previous attempt's deployment, -1 before the first */
};

/** A chosen deployment and key. Pointers point into plan->cfg. */
struct leo_route_attempt {
    const struct leo_deployment *deployment;
    const struct leo_provider_key *key; /* NULL when the provider has no keys */
    size_t deployment_index;  /* into model->deployments */
    size_t key_index;         /* into provider->keys (0 when key is NULL) */
    unsigned attempt_no;      /* 1-based within the plan */
    bool retry;               /* the same deployment as the previous attempt */
    bool fallback;            /* a different deployment than the previous attempt */
    bool probe;               /* the half-open breaker's probe request */
    uint64_t backoff_ms;      /* wait this long before sending (non-zero only for a retry) */
    /* private */
    const struct leo_config *_cfg;
    const struct leo_model *_model;
    struct leo_router__dep *_dep;
    struct leo_router__key *_key;
    bool _begun;
    bool _ended;
    int _prev_last;           /* the plan's _last before this attempt, restored by leo_router_skip */
};

/** Creates a router; seed drives its PRNG (weighted choice, backoff jitter). Never NULL (aborts on OOM). */
struct leo_router *leo_router_new(uint64_t seed);
/** Frees the router and all its state. NULL is a no-op. Attempts still open become invalid. */
void leo_router_free(struct leo_router *r);

/** Declares the router's metric families. The gateway calls it once before forking workers. */
void leo_router_metrics_describe(void);

/** Prepares a plan for one request. input_tokens is the request's estimated input size. */
void leo_route_plan_init(struct leo_route_plan *plan, const struct leo_config *cfg, const struct leo_model *model,
                         uint64_t input_tokens, uint64_t now_ms);

/**
 * Chooses the next attempt for plan and fills *out. Returns 0, or LEO_ENOTFOUND when no deployment can take
 * the request now: then *retry_in_ms is the time until the soonest cooldown or breaker end that would make one
 * eligible (0 when nothing recovers at a known time, when the attempt budget is spent, or when the recovery
 * would come after the plan's deadline). retry_in_ms may be NULL.
 */
int leo_router_next(struct leo_router *r, struct leo_route_plan *plan, uint64_t now_ms,
                    struct leo_route_attempt *out, uint64_t *retry_in_ms);

/** Like leo_router_next, for a hedge: never the deployment of the plan's previous attempt (no retry of it), and
 *  no backoff. Returns LEO_ENOTFOUND when no other deployment is eligible now. */
int leo_router_next_other(struct leo_router *r, struct leo_route_plan *plan, uint64_t now_ms,
                          struct leo_route_attempt *out);

/** Marks the attempt as sent upstream (counts it in flight). At most once per attempt. */
void leo_router_begin(struct leo_router *r, struct leo_route_attempt *a, uint64_t now_ms);

/** Records how the attempt ended; fb may be NULL. Exactly once per attempt from leo_router_next (or
 *  leo_router_skip instead). An OK attempt whose fb->ttfb_ms exceeds routing.breaker_slow_ms (when set) counts
 *  as a failure for the breaker, though its answer was good: see docs/routing.md. */
void leo_router_end(struct leo_router *r, struct leo_route_attempt *a, enum leo_route_outcome outcome,
                    const struct leo_route_feedback *fb, uint64_t now_ms);

/**
 * Gives back an attempt that was never sent because its deployment's own limits (rpm, tpm, concurrency) refused
 * the request: the deployment is excluded for the rest of the plan (never chosen again, not even as a retry),
 * the attempt does not count against max_attempts, and the attempt is closed without penalty (a half-open
 * probe is released). Replaces leo_router_end for that attempt; it must not have been begun.
 */
void leo_router_skip(struct leo_router *r, struct leo_route_plan *plan, struct leo_route_attempt *a,
                     uint64_t now_ms);

/** Index into model->deployments of the deployment a client named with x-leo-route: its id ("provider/model",
 *  as in the status API) or, when only one deployment of the model uses that provider, the provider's name.
 *  -1 when none matches. */
int leo_route_find_deployment(const struct leo_model *model, struct leo_str name);

/** True when another attempt may help: rate limits, auth failures (another key), 5xx, connect errors,
 *  timeouts. Never after the first byte of a response reached the client (the caller's rule). */
bool leo_route_retryable(enum leo_route_outcome outcome);

/** The name of an outcome ("ok", "rate_limited", ...), for logs. */
const char *leo_route_outcome_name(enum leo_route_outcome outcome);

/** Delay before retry number attempt_no (1-based): uniformly random in [h/2, h] where
 *  h = min(backoff_base_ms * 2^(attempt_no-1), backoff_max_ms). 0 when the base is 0. */
uint64_t leo_router_backoff_ms(struct leo_router *r, const struct leo_config *cfg, unsigned attempt_no);

/**
 * The wait an upstream asked for, in ms, from its response headers: Retry-After (seconds or an HTTP date),
 * retry-after-ms, x-ratelimit-reset-requests / x-ratelimit-reset-tokens (durations like "6ms", "1.5s",
 * "1m30s", "2h"), anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset (RFC 3339 times).
 * The largest of those present and parseable; 0 if none. Times in the past count as 0.
 * now_unix_ms is the current wall-clock time (for the absolute forms).
 */
uint64_t leo_retry_after_ms(const struct leo_http_header *h, size_t n, uint64_t now_unix_ms);

/**
 * Appends the state of every deployment of cfg as JSON (the body of GET /v1/status/deployments):
 * {"deployments":[{"model","id","provider","priority","weight","breaker","open_for_ms","in_flight",
 * "ewma_ttfb_ms","consecutive_failures","disabled"?,"override"?,"keys":[{"env","state","cooldown_ms",
 * "reason"?}]}]}.
 * ewma_ttfb_ms is null until measured. "disabled" and "override" ({"action","reason"}) appear for a deployment
 * with a control-plane routing override; a key under a forced cooldown has the state "forced_cooldown", the
 * time left in cooldown_ms and the operator's "reason". Key values never appear, only their variable names.
 */
void leo_router_status_json(struct leo_router *r, const struct leo_config *cfg, uint64_t now_ms,
                            struct leo_buf *out);

#endif
