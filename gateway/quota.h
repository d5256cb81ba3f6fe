/*
 * quota.h — quotas, rate limits and concurrency limits, admitted before the upstream call and settled after it.
 *
 * Invariants:
 * - Admission is check-and-reserve: for every applicable scope (the tenant key, its tenant, the chosen
 *   deployment) and every configured limit, the request's estimate is checked and reserved atomically. If any
 *   limit would be exceeded nothing at all is reserved and the result names that limit.
 * - A reserved total never exceeds its limit at admission time; only settlement of a request whose actual usage
 *   is above its estimate can push a total past the limit, so no interleaving of concurrent requests overshoots
 *   a limit by more than one request's estimate (with the Redis backend, across processes and hosts).
 * - Units: rpm counts requests, tpm/tokens_* count tokens, usd_* count micro-USD (1e-6 USD, rounded up), and
 *   concurrency counts requests in flight. Every limit/remaining value in a result is in its kind's unit.
 * - Windows: rpm/tpm use a sliding-window counter over two fixed UTC minutes (the previous minute weighted by
 *   the part of it still inside the last 60 s); tokens/usd per day and per month are totals over the UTC day
 *   and the UTC calendar month.
 * - Every admission that is allowed with a non-empty reservation id must be settled exactly once
 *   (leo_quota_settle); settling again is a no-op. A reservation never settled holds its concurrency slot in
 *   the in-process backend until the struct leo_quota_service is freed; in Redis the slot is a lease that expires.
 *
 * Backends: without Redis the counters live in this process (standalone mode, one worker; several workers need
 * Redis or each would enforce the limits separately). With Redis, one Lua script admits (one round trip) and
 * one settles. If Redis fails (unreachable, timeout, error reply), cfg->redis.fail_open decides: admit on the
 * in-process counters (logged once per outage, counted) or reject with 503. Reservations made locally during an
 * outage are settled locally and never replayed into Redis, so nothing is counted twice when Redis returns.
 *
 * Thread model: one struct leo_quota_service per worker loop, used from that loop's thread only.
 */
#ifndef LEO_QUOTA_H
#define LEO_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "../common/arena.h"
#include "../common/http_server.h"
#include "config.h"

struct leo_redis;
struct leo_quota_service;

/** What one admission asks for. Pointers are borrowed for the duration of leo_quota_admit only. */
struct leo_quota_request {
    const struct leo_config *cfg;       /* redis policy and alert threshold */
    const struct leo_tenant_key *key;   /* may be NULL (no key/tenant scopes) */
    const struct leo_deployment *dep;   /* may be NULL (no deployment scope) */
    uint64_t est_tokens;                /* input estimate + max_tokens (or the caller's default output guess) */
    double est_usd;                     /* priced by the caller */
    uint64_t now_ms;                    /* Unix time in ms (UTC); 0 = the wall clock now */
    uint64_t lease_ms;                  /* Redis concurrency lease; 0 = 15 minutes */
};

/** The answer to an admission. Plain data; copy it if it must outlive the callback. */
struct leo_quota_result {
    bool allowed;
    int status;                 /* when !allowed: 429 (a limit) or 503 (quota service unavailable) */
    const char *scope;          /* the limit that refused: "key", "tenant" or "deployment"; static storage */
    const char *kind;           /* "rpm", "tpm", "tokens_day", "tokens_month", "usd_day", "usd_month",
                                   "concurrency"; static storage */
    char id[96];                /* the scope's name: tenant id, "tenant/key-name", or the deployment id */
    uint64_t limit, remaining;  /* of that limit, in its kind's unit */
    uint64_t retry_after_ms;    /* when enough frees up; day/month: until the period ends; concurrency: 1000 */
    char reservation[40];       /* "" when nothing was reserved */
    bool degraded;              /* admitted on in-process counters because Redis failed (fail-open) */
    /* x-ratelimit-* of the tightest scope (the least remaining); has_* false when no such limit applies */
    bool has_requests, has_tokens;
    uint64_t limit_requests, remaining_requests, reset_requests_ms;
    uint64_t limit_tokens, remaining_tokens, reset_tokens_ms;
};

/** Receives one alert as a JSON object (to POST to cfg->alerts.webhook_url when set); json is valid only for
 *  the call. The alert has already been logged. */
typedef void (*leo_quota_alert_cb)(const struct leo_config *cfg, const char *json, size_t len, void *ud);
/** Receives the result of leo_quota_admit; res is valid only for the call. */
typedef void (*leo_quota_admit_cb)(const struct leo_quota_result *res, void *ud);

/** Creates the quota service of one worker. redis NULL = in-process backend only. Never fails (aborts on OOM). */
struct leo_quota_service *leo_quota_new(uv_loop_t *loop, struct leo_redis *redis);
/** Frees it. Admissions in flight on Redis must have completed (the Redis client is closed first). */
void leo_quota_free(struct leo_quota_service *q);
/** Sets the callback that forwards near-quota alerts (e.g. to the webhook). */
void leo_quota_set_alert_cb(struct leo_quota_service *q, leo_quota_alert_cb cb, void *ud);

/** Checks and reserves. cb fires exactly once: synchronously, before this returns, for the in-process backend
 *  and for requests with no applicable limit; later, on the loop, for Redis. Returns 0, or a negative code
 *  (LEO_EINVAL: no cfg) and then cb never fires. */
int leo_quota_admit(struct leo_quota_service *q, const struct leo_quota_request *r, leo_quota_admit_cb cb, void *ud);

/** Replaces a reservation by the actual usage and releases its concurrency slot. had_usage false (a request
 *  that failed without usage) releases the token and USD reservations but keeps the request counted. An
 *  unknown, empty or already settled reservation id is a no-op. Usage in a window or period that has ended is
 *  applied to that window's counter while it still exists. */
void leo_quota_settle(struct leo_quota_service *q, const char *reservation, uint64_t actual_tokens, double actual_usd,
                      bool had_usage);

/** Fills h with x-ratelimit-limit/remaining/reset-requests and -tokens (for the limits that apply) and, for a
 *  429, Retry-After (whole seconds, at least 1). Values are allocated from a. Returns the number written. */
size_t leo_quota_headers(const struct leo_quota_result *res, struct leo_http_header *h, size_t max,
                         struct leo_arena *a);

/** Writes a one-line, lowercase client-facing message for a refused result into buf. */
void leo_quota_message(const struct leo_quota_result *res, char *buf, size_t size);

/** Declares the quota metric families (call with the other describe functions, before forking). */
void leo_quota_metrics_describe(void);

/** Formats a duration the way OpenAI's x-ratelimit-reset-* headers do ("20ms", "1s", "6m0s", "1h2m3s"). */
size_t leo_quota_format_reset(uint64_t ms, char *buf, size_t size);

/** Number of reservations not yet settled (tests and the status API). */
size_t leo_quota_pending(const struct leo_quota_service *q);

/** The current value of an in-process counter for scope/id/kind at time now_ms (tests; 0 if absent). For
 *  rpm/tpm it is the sliding-window count rounded down. id is as in struct leo_quota_result. */
uint64_t leo_quota_local_usage(struct leo_quota_service *q, const char *scope, const char *id, const char *kind,
                               uint64_t now_ms);

#endif
