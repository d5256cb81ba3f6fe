/*
 * usage.h — the control plane's usage consumer: reads the gateways' usage events from the Redis stream
 * leo:usage with a consumer group and writes them to PostgreSQL (usage_events, usage_rollups; see
 * migrations/0006_usage.sql and docs/usage.md).
 *
 * Protocol, and the invariants it keeps:
 * - The group (LEO_USAGE_GROUP) is created with XGROUP CREATE ... 0 MKSTREAM, so events written before the
 *   first consumer started are read too; it is created again if Redis lost it (NOGROUP).
 * - A batch (at most `batch` entries) is written in ONE statement, hence one transaction: the events are
 *   inserted with ON CONFLICT (at, request_id) DO NOTHING and the hourly rollups are upserted from exactly the
 *   rows that statement inserted. An event delivered twice is therefore stored and counted once.
 * - Entries are XACKed only after that statement committed. A consumer killed before the XACK leaves them
 *   pending: at start it first re-reads its own pending entries (XREADGROUP ... 0), then claims entries that
 *   other consumers left pending for longer than claim_idle_ms (XAUTOCLAIM, Redis 6.2+), and repeats the claim
 *   every claim_idle_ms while running.
 * - An entry that is not a usage event (bad JSON, no request id or time) is logged, counted and acknowledged,
 *   so it cannot block the stream; a database failure leaves the batch pending and retries it.
 * - Partitions: the consumer creates daily partitions a few days ahead and for any day an event needs, and
 *   drops partitions older than retention_days, at start and every hour.
 *
 * Not thread-safe: everything runs on the loop thread.
 */
#ifndef LEO_CP_USAGE_H
#define LEO_CP_USAGE_H

#include <stdint.h>
#include <uv.h>

#include "../common/buf.h"

#define LEO_USAGE_STREAM "leo:usage"
#define LEO_USAGE_GROUP "leo-usage"

struct leo_usage_consumer;

struct leo_usage_consumer_opts {
    const char *conninfo;    /* PostgreSQL; the consumer opens one connection of its own */
    const char *redis_url;   /* where the gateways write leo:usage */
    const char *consumer;    /* this consumer's name in the group; NULL: the host name. A restarted daemon
                                with the same name resumes its own pending entries at once */
    unsigned batch;          /* entries per batch; 0: 500 */
    uint64_t claim_idle_ms;  /* claim other consumers' entries pending this long; 0: 60000 */
    unsigned retention_days; /* keep usage_events partitions this many days; 0: 90 */
};

/** Reads the options from the environment (LEO_USAGE_CONSUMER, LEO_USAGE_BATCH, LEO_USAGE_CLAIM_IDLE_MS,
 *  LEO_USAGE_RETENTION_DAYS) over the defaults. 0, or LEO_ECONFIG with a message in err naming the variable. */
int leo_usage_consumer_opts_env(struct leo_usage_consumer_opts *o, struct leo_buf *err);

/** Starts consuming. Returns 0 and *out, or LEO_ECONFIG for a bad Redis URL (message in err, without the
 *  password). Outages of Redis or PostgreSQL are logged once each and retried. */
int leo_usage_consumer_start(uv_loop_t *loop, const struct leo_usage_consumer_opts *opts,
                             struct leo_usage_consumer **out, struct leo_buf *err);

/** Stops: a batch whose statement is running is left unacknowledged (it is re-read at the next start), the
 *  connections close, and cb(ud) (may be NULL) runs once everything is released. Call once. */
void leo_usage_consumer_close(struct leo_usage_consumer *c, void (*cb)(void *ud), void *ud);

/** Declares the consumer's metric families (once per process; the daemon calls it at start):
 *   leo_usage_consumed_total               counter  stream entries read
 *   leo_usage_inserted_total               counter  events written to usage_events
 *   leo_usage_duplicates_total             counter  events already stored (redelivered)
 *   leo_usage_invalid_total                counter  entries that were not usage events (acknowledged)
 *   leo_usage_batches_total{result}        counter  ok | db_error | ack_error
 *   leo_usage_consumer_lag                 gauge    entries in the stream not yet delivered to the group
 *   leo_usage_consumer_pending             gauge    entries delivered but not acknowledged */
void leo_usage_consumer_metrics_describe(void);

#endif
