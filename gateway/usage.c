/*
 * usage.c — usage events to a Redis stream, with a bounded queue for when Redis is away (see usage.h).
 *
 * An event is serialised once, into a struct item. The item is sent at once when the connection is up and
 * nothing is queued before it; otherwise it waits in a FIFO queue. While the queue is not empty a timer
 * flushes it every FLUSH_MS, keeping at most MAX_INFLIGHT XADDs outstanding, so a Redis that comes back
 * after an outage is not flooded with one burst of every queued event. An item whose XADD failed (error
 * reply, timeout, lost connection) goes back to the queue's head and is retried; only a full queue or the
 * worker's shutdown drops events, and both are counted and logged.
 *
 * On shutdown the worker waits (within its drain timeout) until leo_usage_flushing() is false before it closes
 * the connection; what is still queued then (Redis down) is dropped and counted, unless the emitter has a spool
 * file: then it is appended to that file in one write(2) and fsync'ed, and the XADDs the closing connection
 * cancels are appended after it. The next emitter on the same path (the worker's successor) renames the file to
 * <path>.replay, queues its lines and unlinks it, so the events reach Redis once it is back. The rename makes a
 * start that dies while loading harmless: the next start loads the .replay first. An event may then reach the
 * stream twice (a cancelled XADD that had run, a replay loaded twice); the consumer keeps one copy of each
 * (at, request_id). Known limit: a worker that dies without closing its emitter spools nothing (worker_died).
 *
 * When a worker dies instead, the supervisor counts what its queue held from the worker's metrics slot
 * (leo_usage_report_worker_death).
 */
#define _GNU_SOURCE /* getline */
#include "usage.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/json_scan.h"
#include "../common/log.h"
#include "../common/metrics.h"

#define FLUSH_MS 100
#define MAX_INFLIGHT 256
#define DROP_LOG_EVERY_MS 10000

struct item {
    struct item *next;
    struct leo_usage *u;
    size_t len;
    char json[]; /* the event, NUL-terminated */
};

struct leo_usage {
    uv_loop_t *loop;
    struct leo_redis *redis;
    char *stream;
    char *spool_path;          /* NULL: no spool */
    struct leo_buf spool_late; /* XADDs cancelled while closing, written once the last one is answered */
    uint64_t spool_late_n;
    char maxlen[24];
    size_t max_queue;
    struct item *head, *tail; /* the queue */
    size_t queued;
    size_t inflight;
    uv_timer_t timer;
    bool timer_on;
    bool closing;
    bool timer_closed;
    bool redis_down_logged;
    uint64_t dropped_since_log;
    uint64_t last_drop_log_ms;
};

static struct leo_usage *current;

/* ---- the event ---- */

static void add_str(struct leo_buf *b, const char *key, const char *v)
{
    leo_buf_addf(b, ",\"%s\":\"", key);
    if (v)
        leo_buf_add_json_escaped(b, v, strlen(v));
    leo_buf_addch(b, '"');
}

void leo_usage_event_json(const struct leo_usage_event *ev, struct leo_buf *out)
{
    leo_buf_adds(out, "{\"v\":1");
    add_str(out, "request_id", ev->request_id);
    leo_buf_addf(out, ",\"ts\":%" PRIu64, ev->time_ms);
    add_str(out, "tenant", ev->tenant);
    add_str(out, "key_name", ev->key_name);
    add_str(out, "model", ev->model);
    add_str(out, "deployment", ev->deployment);
    add_str(out, "provider", ev->provider);
    add_str(out, "route", ev->route);
    leo_buf_addf(out, ",\"status\":%d,\"error\":%s,\"stream\":%s", ev->status, ev->error ? "true" : "false",
                 ev->stream ? "true" : "false");
    leo_buf_addf(out, ",\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu64, ev->prompt_tokens,
                 ev->completion_tokens);
    leo_buf_addf(out, ",\"cost_usd\":%.10g,\"saved_usd\":%.10g", ev->cost_usd, ev->saved_usd);
    add_str(out, "cache", ev->cache_status ? ev->cache_status : "none");
    leo_buf_addf(out, ",\"latency_ms\":%.3f,\"attempts\":%u}", ev->latency_ms, ev->attempts);
}

/* ---- the queue ---- */

static void queue_push_tail(struct leo_usage *u, struct item *it)
{
    it->next = NULL;
    if (u->tail)
        u->tail->next = it;
    else
        u->head = it;
    u->tail = it;
    u->queued++;
    leo_metrics_gauge_add("leo_usage_queue_depth", "", 1);
}

static void queue_push_head(struct leo_usage *u, struct item *it)
{
    it->next = u->head;
    u->head = it;
    if (u->tail == NULL)
        u->tail = it;
    u->queued++;
    leo_metrics_gauge_add("leo_usage_queue_depth", "", 1);
}

static struct item *queue_pop(struct leo_usage *u)
{
    struct item *it = u->head;
    if (it == NULL)
        return NULL;
    u->head = it->next;
    if (u->head == NULL)
        u->tail = NULL;
    u->queued--;
    leo_metrics_gauge_add("leo_usage_queue_depth", "", -1);
    return it;
}

/* Drops are logged at most every DROP_LOG_EVERY_MS with how many happened since the last line, so an outage
 * that fills the queue does not flood the log, but no drop goes unmentioned. */
static void count_drop(struct leo_usage *u, const char *reason, uint64_t n)
{
    char lbl[48];
    snprintf(lbl, sizeof(lbl), "reason=\"%s\"", reason);
    leo_metrics_add("leo_usage_events_dropped_total", lbl, (double)n);
    u->dropped_since_log += n;
    uint64_t now = uv_now(u->loop);
    if (u->closing || u->last_drop_log_ms == 0 || now - u->last_drop_log_ms >= DROP_LOG_EVERY_MS) {
        leo_error("usage: %" PRIu64 " events dropped (%s; queue limit %zu)", u->dropped_since_log, reason,
                  u->max_queue);
        u->dropped_since_log = 0;
        u->last_drop_log_ms = now ? now : 1;
    }
}

static void spool_out(struct leo_usage *u, const struct leo_buf *b, uint64_t n);

static void maybe_free(struct leo_usage *u)
{
    if (!u->closing || u->inflight > 0)
        return;
    if (u->spool_late_n) { /* the last XADD has been answered */
        spool_out(u, &u->spool_late, u->spool_late_n);
        leo_buf_release(&u->spool_late);
        u->spool_late_n = 0;
    }
    if (!u->timer_closed)
        return;
    leo_free(u->stream);
    leo_free(u->spool_path);
    leo_free(u);
}

/* ---- the spool ---- */

/* Appends b to path in one write(2) and fsyncs it; 0 or a negative errno. On failure the file is cut back to
 * its old length (each worker has its own file, so nobody else appended meanwhile): a half-written batch would
 * be replayed in part although it is counted as dropped. */
static int spool_append(const char *path, const struct leo_buf *b)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    int rc = 0;
    ssize_t n;
    do
        n = write(fd, b->p, b->len);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        rc = -errno;
    else if ((size_t)n != b->len)
        rc = -ENOSPC; /* a regular file writes short only when the disk or a quota is full */
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (rc != 0 && ftruncate(fd, st.st_size) != 0)
        leo_warn("usage: cannot cut %s back after a failed write: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* n events (b: their JSON, one a line) leave the emitter at shutdown: into the spool file, or dropped. */
static void spool_out(struct leo_usage *u, const struct leo_buf *b, uint64_t n)
{
    if (n == 0)
        return;
    int rc = u->spool_path ? spool_append(u->spool_path, b) : LEO_EINVAL;
    if (rc == 0) {
        leo_metrics_add("leo_usage_events_total", "result=\"spooled\"", (double)n);
        leo_info("usage: %" PRIu64 " events spooled to %s for the next start", n, u->spool_path);
        return;
    }
    if (u->spool_path)
        leo_error("usage: cannot spool %" PRIu64 " events to %s: %s", n, u->spool_path, leo_strerror(rc));
    count_drop(u, "shutdown", n);
}

static void ignore_member(const struct leo_json_member *m, void *ud)
{
    (void)m;
    (void)ud;
}

/* Queues every line of file (a spool being replayed) and unlinks it; the number of events queued, or -1 when
 * the file could not be read (it is left in place for the next start). */
static long long spool_load_file(struct leo_usage *u, const char *file)
{
    FILE *fp = fopen(file, "re");
    if (fp == NULL) {
        int e = errno;
        if (e == ENOENT)
            return 0;
        leo_error("usage: cannot open the spool %s: %s", file, strerror(e));
        return -1;
    }
    long long queued = 0;
    uint64_t corrupt = 0, full = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, fp)) >= 0) {
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        /* the validating scan, without a tree: the line must be one whole JSON object */
        if (leo_json_scan_members(line, (size_t)len, ignore_member, NULL) != 0) {
            corrupt++;
        } else if (u->queued >= u->max_queue) {
            full++;
        } else {
            struct item *it = leo_malloc(sizeof(*it) + (size_t)len + 1);
            it->u = u;
            it->len = (size_t)len;
            memcpy(it->json, line, (size_t)len + 1);
            queue_push_tail(u, it);
            queued++;
        }
    }
    bool failed = ferror(fp);
    free(line);
    fclose(fp);
    if (failed) {
        leo_error("usage: cannot read the spool %s; left for the next start (%lld events queued from it may "
                  "reach the stream twice)",
                  file, queued);
    } else if (unlink(file) != 0) {
        leo_error("usage: cannot remove the replayed spool %s: %s (its events may reach the stream twice)", file,
                  strerror(errno));
    }
    /* counted here rather than through count_drop, whose rate limit could hold back the second reason's line */
    if (corrupt || full) {
        leo_metrics_add("leo_usage_events_dropped_total", "reason=\"spool_corrupt\"", (double)corrupt);
        leo_metrics_add("leo_usage_events_dropped_total", "reason=\"queue_full\"", (double)full);
        leo_error("usage: %" PRIu64 " events dropped from the spool %s: %" PRIu64 " lines not a JSON object "
                  "(spool_corrupt), %" PRIu64 " beyond the queue limit %zu (queue_full)",
                  corrupt + full, file, corrupt, full, u->max_queue);
    }
    return failed ? -1 : queued;
}

/* Replays path: first a <path>.replay left by a start that died while loading it, then path itself, renamed to
 * <path>.replay before it is read so that a crash from here on leaves it where the next start looks. */
static void spool_load(struct leo_usage *u, const char *path)
{
    struct leo_buf replay = LEO_BUF_INIT;
    leo_buf_addf(&replay, "%s.replay", path);
    long long n = spool_load_file(u, replay.p);
    if (n >= 0) {
        if (rename(path, replay.p) == 0) {
            long long m = spool_load_file(u, replay.p);
            n = m >= 0 ? n + m : m;
        } else if (errno != ENOENT) {
            leo_error("usage: cannot rename the spool %s to %s: %s", path, replay.p, strerror(errno));
        }
    }
    if (n > 0) {
        leo_metrics_add("leo_usage_events_total", "result=\"replayed\"", (double)n);
        leo_info("usage: %lld events replayed from the spool %s", n, path);
    }
    leo_buf_release(&replay);
}

/* ---- sending ---- */

static void timer_arm(struct leo_usage *u);
static void flush(struct leo_usage *u);

static void on_xadd(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    (void)r;
    struct item *it = ud;
    struct leo_usage *u = it->u;
    u->inflight--;
    leo_metrics_gauge_add("leo_usage_inflight", "", -1);
    bool ok = err == 0 && reply && reply->type == REDIS_REPLY_STRING;
    if (ok) {
        leo_metrics_add("leo_usage_events_total", "result=\"sent\"", 1);
        leo_free(it);
        if (u->redis_down_logged) {
            leo_info("usage: redis accepts events again (%zu queued)", u->queued);
            u->redis_down_logged = false;
        }
        if (!u->closing && u->head)
            flush(u);
        maybe_free(u);
        return;
    }
    if (u->closing) {
        /* the connection is closing with the worker; the XADD may or may not have run. Spooled (a duplicate is
         * harmless, see the top), in one batch once the last XADD has been answered */
        if (u->spool_path) {
            leo_buf_add(&u->spool_late, it->json, it->len);
            leo_buf_addch(&u->spool_late, '\n');
            u->spool_late_n++;
        } else {
            count_drop(u, "shutdown", 1);
        }
        leo_free(it);
        maybe_free(u);
        return;
    }
    if (!u->redis_down_logged) {
        leo_warn("usage: XADD failed (%s); queueing events until redis answers",
                 err ? leo_strerror(err) : (reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "bad reply"));
        u->redis_down_logged = true;
    }
    leo_metrics_add("leo_usage_events_total", "result=\"retried\"", 1);
    queue_push_head(u, it);
    timer_arm(u);
}

/* Sends one item; false (the item untouched) when the connection refuses it now. */
static bool send_item(struct leo_usage *u, struct item *it)
{
    const char *argv[] = {"XADD", u->stream, "MAXLEN", "~", u->maxlen, "*", "e", it->json};
    size_t lens[] = {4, strlen(u->stream), 6, 1, strlen(u->maxlen), 1, 1, it->len};
    if (leo_redis_command_argv(u->redis, on_xadd, it, 8, argv, lens) != 0)
        return false;
    u->inflight++;
    leo_metrics_gauge_add("leo_usage_inflight", "", 1);
    return true;
}

static void flush(struct leo_usage *u)
{
    while (u->head && u->inflight < MAX_INFLIGHT && leo_redis_connected(u->redis)) {
        struct item *it = queue_pop(u);
        if (!send_item(u, it)) {
            queue_push_head(u, it);
            break;
        }
    }
    if (u->head)
        timer_arm(u);
}

static void on_timer(uv_timer_t *t)
{
    struct leo_usage *u = t->data;
    u->timer_on = false;
    if (!u->closing)
        flush(u);
}

static void timer_arm(struct leo_usage *u)
{
    if (u->timer_on || u->closing)
        return;
    u->timer_on = true;
    uv_timer_start(&u->timer, on_timer, FLUSH_MS, 0);
}

void leo_usage_emit(struct leo_usage *u, const struct leo_usage_event *ev)
{
    if (u->closing)
        return;
    struct leo_buf b = LEO_BUF_INIT;
    leo_usage_event_json(ev, &b);
    struct item *it = leo_malloc(sizeof(*it) + b.len + 1);
    it->u = u;
    it->len = b.len;
    memcpy(it->json, b.p, b.len + 1);
    leo_buf_release(&b);
    if (u->head == NULL && u->inflight < MAX_INFLIGHT && send_item(u, it))
        return;
    if (u->queued >= u->max_queue) {
        leo_free(it);
        count_drop(u, "queue_full", 1);
        return;
    }
    leo_metrics_add("leo_usage_events_total", "result=\"queued\"", 1);
    queue_push_tail(u, it);
    timer_arm(u);
}

void leo_usage_emit_current(const struct leo_usage_event *ev)
{
    if (current)
        leo_usage_emit(current, ev);
}

size_t leo_usage_queued(const struct leo_usage *u)
{
    return u->queued;
}

bool leo_usage_flushing(const struct leo_usage *u)
{
    return u->inflight > 0 || (u->queued > 0 && leo_redis_connected(u->redis));
}

/* ---- lifecycle ---- */

struct leo_usage *leo_usage_new(uv_loop_t *loop, struct leo_redis *redis, const struct leo_usage_opts *opts)
{
    struct leo_usage *u = leo_new(struct leo_usage);
    u->loop = loop;
    u->redis = redis;
    u->stream = leo_strdup(opts && opts->stream ? opts->stream : LEO_USAGE_STREAM);
    u->max_queue = opts && opts->max_queue ? opts->max_queue : LEO_USAGE_QUEUE_DEFAULT;
    snprintf(u->maxlen, sizeof(u->maxlen), "%" PRIu64,
             opts && opts->maxlen ? opts->maxlen : (uint64_t)LEO_USAGE_STREAM_MAXLEN);
    uv_timer_init(loop, &u->timer);
    u->timer.data = u;
    uv_unref((uv_handle_t *)&u->timer);
    if (opts && opts->spool_path) {
        u->spool_path = leo_strdup(opts->spool_path);
        spool_load(u, u->spool_path);
        for (const char *const *p = opts->spool_adopt; p && *p; p++)
            spool_load(u, *p);
        if (u->head)
            timer_arm(u); /* sent once the connection is up, through the usual flush */
    }
    current = u;
    return u;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct leo_usage *u = h->data;
    u->timer_closed = true;
    maybe_free(u);
}

void leo_usage_close(struct leo_usage *u)
{
    if (current == u)
        current = NULL;
    u->closing = true;
    uint64_t n = 0;
    struct leo_buf b = LEO_BUF_INIT;
    for (struct item *it = queue_pop(u); it; it = queue_pop(u)) {
        if (u->spool_path) {
            leo_buf_add(&b, it->json, it->len);
            leo_buf_addch(&b, '\n');
        }
        leo_free(it);
        n++;
    }
    if (u->spool_path)
        spool_out(u, &b, n);
    else if (n)
        count_drop(u, "shutdown", n);
    leo_buf_release(&b);
    uv_close((uv_handle_t *)&u->timer, on_timer_closed);
}

void leo_usage_metrics_describe(void)
{
    leo_metrics_describe("leo_usage_events_total", LEO_METRIC_COUNTER,
                         "Usage events by result: sent (Redis accepted the XADD), queued (held while Redis was "
                         "away or busy), retried (an XADD failed and the event was queued again), spooled "
                         "(written to the spool file when the worker stopped), replayed (queued from the spool "
                         "file when the worker started).");
    leo_metrics_describe("leo_usage_events_dropped_total", LEO_METRIC_COUNTER,
                         "Usage events lost, by reason: queue_full (Redis away for too long), shutdown (still "
                         "queued or unconfirmed when the worker stopped, with no spool or a failed spool write), "
                         "worker_died (queued in a worker that died), spool_corrupt (a spool line that is not a "
                         "JSON object).");
    leo_metrics_describe("leo_usage_queue_depth", LEO_METRIC_GAUGE, "Usage events waiting for Redis.");
    leo_metrics_describe("leo_usage_inflight", LEO_METRIC_GAUGE,
                         "Usage events sent to Redis whose XADD has not been answered yet.");
}

void leo_usage_report_worker_death(unsigned slot, unsigned worker, long pid)
{
    double queued = leo_metrics_slot_value(slot, "leo_usage_queue_depth", "");
    double inflight = leo_metrics_slot_value(slot, "leo_usage_inflight", "");
    if (!(queued > 0) && !(inflight > 0))
        return;
    leo_metrics_slot_add(slot, "leo_usage_events_dropped_total", "reason=\"worker_died\"", queued > 0 ? queued : 0);
    leo_error("usage: worker %u (pid %ld) died with %.0f usage events queued, which are lost (counted in "
              "leo_usage_events_dropped_total{reason=\"worker_died\"}), and %.0f sent to Redis without an answer, "
              "which may be lost",
              worker, pid, queued > 0 ? queued : 0, inflight > 0 ? inflight : 0);
}
