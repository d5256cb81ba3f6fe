/*
 * analytics.h — savings analytics: what every finished request spent and saved, kept in minute, hour and day
 * buckets, and the GET /v1/analytics report over them (docs/analytics.md).
 *
 * Invariants:
 * - Recording never blocks and never talks to Redis on the request path: leo_analytics_record adds the
 *   request's counters to an in-process batch; a timer flushes the batch about once a second.
 * - Storage is counters only, so every worker's contribution adds up: per (granularity, tenant, bucket) one
 *   hash whose fields are "<model>|<counter>" integers. Money is counted in nano-USD (1e-9 USD, each request's
 *   amount rounded to the nearest), so sums are exact and independent of the order workers flush in.
 * - With Redis, a batch is applied by one Lua script that first sets a marker named by the batch's id (SET NX):
 *   a batch resent after an unknown outcome (timeout, lost connection) is applied at most once. While Redis is
 *   unreachable the batch keeps growing up to a bound; past it new requests are dropped and counted in
 *   leo_analytics_dropped_total.
 * - Without Redis the buckets live in this process (one worker's view: several workers need Redis).
 * - Latency is a fixed log-bucket histogram (LEO_AN_LAT_BUCKETS buckets, four per doubling, from 1 ms), so
 *   percentiles are computed from summed buckets across workers and time.
 *
 * Thread model: one struct leo_analytics per worker loop, used from that loop's thread only.
 */
#ifndef LEO_ANALYTICS_H
#define LEO_ANALYTICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "../common/buf.h"

struct leo_redis;
struct leo_config;
struct leo_model;
struct leo_deployment;
struct leo_gw_req;

/** Bucket sizes. */
enum leo_an_gran { LEO_AN_MINUTE, LEO_AN_HOUR, LEO_AN_DAY, LEO_AN_NGRAN };

/** "minute" | "hour" | "day" → the granularity, or -1. */
int leo_analytics_gran_parse(const char *s, size_t len);
/** Bucket length in seconds (60, 3600, 86400). */
uint64_t leo_analytics_bucket_len(enum leo_an_gran g);
/** How long a bucket is kept after it ends, in seconds (minutes 48 h, hours 90 days, days 730 days). */
uint64_t leo_analytics_retention(enum leo_an_gran g);
/** Start (Unix seconds, UTC) of the bucket that holds unix_s. */
uint64_t leo_analytics_bucket_start(enum leo_an_gran g, uint64_t unix_s);

#define LEO_AN_LAT_BUCKETS 80

/** The latency bucket of a duration in ms: 0 holds [0, 1 ms), bucket i (1..78) holds [2^((i-1)/4), 2^(i/4))
 *  ms, the last holds everything from 2^19.5 ms (about 12 minutes) up. */
unsigned leo_analytics_latency_bucket(double ms);
/** Lower bound in ms of latency bucket i. */
double leo_analytics_latency_lower(unsigned i);
/** The p-quantile (0 < p <= 1) of a latency histogram in ms, interpolated linearly inside the bucket that
 *  holds it (the last bucket answers its lower bound); 0 for an empty histogram. */
double leo_analytics_percentile(const uint64_t *counts, size_t n, double p);

/** Appends s as one CSV field (RFC 4180: quoted, with quotes doubled, when it holds a comma, a quote, CR, LF or
 *  leading/trailing spaces). */
void leo_analytics_csv_field(struct leo_buf *out, const char *s, size_t len);

/** The routing saving of a request: what its usage would have cost on the model's first (most preferred)
 *  deployment minus what it cost on the deployment that served it, at the snapshot's prices; 0 when the
 *  served one is not cheaper, is the first, or either price is unknown. */
double leo_analytics_routing_saving(const struct leo_config *cfg, const struct leo_model *m,
                                    const struct leo_deployment *served, uint64_t input_tokens, uint64_t output_tokens);

/** One finished request, as recorded. Strings are borrowed for the duration of the call. */
struct leo_analytics_event {
    uint64_t unix_ms;       /* when it finished (UTC); 0 = now */
    const char *tenant;     /* required */
    const char *key;        /* the key's name (a label, never the key) or NULL */
    const char *model;      /* the model as requested (configured name); required */
    const char *deployment; /* the deployment that served ("provider/model") or NULL */
    int status;             /* what the client got; >= 400 counts as an error */
    uint64_t input_tokens, output_tokens;
    double cost_usd;
    const char *cache;        /* x-leo-cache-status: "hit", "semantic-hit", "miss", "bypass"; NULL or
                                 "none": no cache consulted */
    uint64_t saved_tokens;    /* by the cache */
    double saved_usd;         /* by the cache */
    double routing_saved_usd; /* see leo_analytics_routing_saving */
    double latency_ms;
};

struct leo_analytics;

/** Creates a worker's analytics service on loop; redis NULL keeps the buckets in this process. Starts the
 *  flush timer (unreferenced: it does not keep the loop alive). Never fails (aborts on OOM). */
struct leo_analytics *leo_analytics_new(uv_loop_t *loop, struct leo_redis *redis);
/** Stops the flush timer; what was not flushed yet is lost (logged). A draining worker flushes first and waits
 *  for the answer (worker.c drain_check), so only a drain timeout or a Redis outage loses counters. Call before
 *  the Redis client is closed, then leo_analytics_free once the loop has run (the timer's close). */
void leo_analytics_stop(struct leo_analytics *a);
/** Frees the service. A Redis flush still in flight must have completed (its client closed first). */
void leo_analytics_free(struct leo_analytics *a);

/** Adds one request to the current batch (or, without Redis, to the in-process buckets). a NULL: no-op. */
void leo_analytics_record(struct leo_analytics *a, const struct leo_analytics_event *e);
/** Records a finished gateway request (called by the access log code with the status the client got and the
 *  total latency). Requests without a key or a resolved model are not recorded. a NULL: no-op. */
void leo_analytics_record_request(struct leo_analytics *a, const struct leo_gw_req *g, int status, double latency_ms);
/** Sends the current batch now (tests; the timer does it otherwise). Does nothing while a batch is in flight.
 *  A batch that could not be sent is resent, with the same id, by the next flush. */
void leo_analytics_flush(struct leo_analytics *a);
/** Requests recorded and not yet acknowledged by Redis (0 without Redis). */
uint64_t leo_analytics_pending(const struct leo_analytics *a);

/** GET /v1/analytics. */
void leo_route_analytics(struct leo_gw_req *g);

/** Declares the analytics metric families (with the other describe functions, before forking). */
void leo_analytics_metrics_describe(void);

#endif
