/*
 * usage.h — the gateway's usage events: one per proxied request, appended to a Redis stream that the control
 * plane consumes (docs/usage.md).
 *
 * Invariants:
 * - leo_usage_emit never blocks and never fails the request: the event is serialised at once and either sent
 *   (XADD, pipelined on the worker's shared Redis connection) or held in a bounded in-memory queue.
 * - Nothing accepted is lost silently: an event leaves the emitter only when Redis has answered its XADD with
 *   an entry id, when it is written to the spool file (opts.spool_path) as the emitter closes, or when it is
 *   dropped — queue full, the worker shutting down with events still queued and no spool (or a failed spool
 *   write), a corrupt spool line — and every drop is counted in leo_usage_events_dropped_total{reason} and
 *   logged.
 * - A spool file is written by one emitter at a time (each worker has its own path) and read back by the next
 *   emitter created on that path, which queues its events and removes it. An event replayed from it may reach
 *   the stream twice (see usage.c); the consumer keeps one copy.
 * - An XADD that failed or timed out is queued again. A timed-out XADD may still have run, so the stream can
 *   hold an event twice; both copies carry the same request id and time, and the consumer keeps one.
 * - The event never carries a secret: the key's name, never the key.
 * - One emitter per worker process; not thread-safe (the loop's thread only).
 */
#ifndef LEO_USAGE_H
#define LEO_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../common/buf.h"
#include "../common/redis.h"

#define LEO_USAGE_STREAM "leo:usage"
/* XADD ... MAXLEN ~ this: far more than a consumer that is keeping up ever leaves unread (docs/usage.md) */
#define LEO_USAGE_STREAM_MAXLEN 1000000
#define LEO_USAGE_QUEUE_DEFAULT 100000

/** One request's usage. Strings are borrowed for the duration of leo_usage_emit (NULL: unknown). */
struct leo_usage_event {
    const char *request_id;
    uint64_t time_ms; /* wall-clock time the request ended, ms since the epoch; part of its identity */
    const char *tenant, *key_name, *model, *deployment, *provider, *route;
    int status; /* what the client got (499: the client left first) */
    bool error; /* the request failed, including a stream cut after a 200 */
    bool stream;
    uint64_t prompt_tokens, completion_tokens;
    double cost_usd, saved_usd;
    const char *cache_status; /* "none", "hit", "miss"...; NULL: "none" */
    double latency_ms;
    unsigned attempts;
};

struct leo_usage;

struct leo_usage_opts {
    const char *stream; /* NULL: LEO_USAGE_STREAM */
    size_t max_queue;   /* events held while Redis is away; 0: LEO_USAGE_QUEUE_DEFAULT */
    uint64_t maxlen;    /* the stream's approximate cap; 0: LEO_USAGE_STREAM_MAXLEN */
    const char *spool_path;         /* NULL: no spool. Else the file (JSON lines) that leo_usage_close appends the
                                       undelivered events to, and that leo_usage_new replays; copied */
    const char *const *spool_adopt; /* NULL-terminated, or NULL: more spool files that leo_usage_new replays
                                       (and removes) after spool_path's, e.g. those of workers that no
                                       longer exist; ignored without spool_path; borrowed for the call */
};

/** Appends the event's JSON form (the stream entry's "e" field) to out. */
void leo_usage_event_json(const struct leo_usage_event *ev, struct leo_buf *out);

/** Creates the emitter on redis (borrowed: the emitter must be closed before the connection is) and makes it
 *  the process's current one (leo_usage_emit_current). With opts->spool_path: first renames that file (if it
 *  exists) to <path>.replay, queues each of its lines as an event (as well as those of a <path>.replay left by
 *  a start that died while loading it), removes it, then does the same for each of opts->spool_adopt; they are
 *  sent once Redis answers. Counted in leo_usage_events_total{result="replayed"} and logged; a line that is
 *  not a JSON object is dropped (reason "spool_corrupt"), lines beyond max_queue too ("queue_full"). A file
 *  that cannot be read is logged and left for the next start. Blocks on file I/O; never fails. */
struct leo_usage *leo_usage_new(uv_loop_t *loop, struct leo_redis *redis, const struct leo_usage_opts *opts);

/** Sends or queues one event; see the invariants above. */
void leo_usage_emit(struct leo_usage *u, const struct leo_usage_event *ev);

/** leo_usage_emit on the process's current emitter; does nothing without one (standalone gateway). */
void leo_usage_emit_current(const struct leo_usage_event *ev);

/** Events queued, not yet sent. */
size_t leo_usage_queued(const struct leo_usage *u);

/** True while events are on their way: XADDs unanswered, or events queued while Redis is connected (so they
 *  are about to be sent). A draining worker waits for this to turn false before it closes the connection,
 *  so the last requests' events are not lost; with Redis down it does not wait. */
bool leo_usage_flushing(const struct leo_usage *u);

/** Stops the emitter: queued events are dropped (counted, logged with their number), or with a spool_path
 *  appended to that file (one write of the whole batch, then fsync; counted as result="spooled", logged at
 *  info; if the write fails they are dropped as without a spool, and the error is logged). XADDs in flight are
 *  left to the connection; those it cancels when it closes are spooled the same way, in one batch once the last
 *  has been answered, or dropped. Frees u once its timer has closed and every XADD has been answered. */
void leo_usage_close(struct leo_usage *u);

/** Declares the module's metric families (called with the gateway's, before forking):
 *   leo_usage_events_total{result="sent|queued|retried|spooled|replayed"}   counter
 *   leo_usage_events_dropped_total{reason="queue_full|shutdown|worker_died|spool_corrupt"}  counter
 *   leo_usage_queue_depth                                   gauge
 *   leo_usage_inflight                                      gauge */
void leo_usage_metrics_describe(void);

/** In the supervisor, when a worker died (a signal or a non-zero exit) and before its metrics slot is given to
 *  the next worker: the events its queue held died with it. Reads that slot's leo_usage_queue_depth and
 *  leo_usage_inflight, counts the queued ones in leo_usage_events_dropped_total{reason="worker_died"} (in that
 *  slot) and logs both numbers (the unanswered XADDs may or may not have reached Redis). Silent when both are 0. */
void leo_usage_report_worker_death(unsigned slot, unsigned worker, long pid);

#endif
