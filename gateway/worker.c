/*
 * worker.c — a worker process: its loop, its signals, its snapshot and its drain.
 */
#include "worker.h"

#include <dirent.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "handlers.h"
#include "quota.h"
#include "analytics.h"
#include "optimize.h"
#include "usage.h"

int leo_parse_listen(const char *s, char *host, size_t hostsize, int *port)
{
    const char *colon;
    size_t hlen;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return LEO_EINVAL;
        hlen = (size_t)(end - s - 1);
        if (hlen == 0 || hlen >= hostsize)
            return LEO_EINVAL;
        memcpy(host, s + 1, hlen);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return LEO_EINVAL;
        hlen = (size_t)(colon - s);
        if (hlen == 0 || hlen >= hostsize)
            return LEO_EINVAL;
        memcpy(host, s, hlen);
    }
    host[hlen] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || end == colon + 1 || p < 0 || p > 65535)
        return LEO_EINVAL;
    *port = (int)p;
    return 0;
}

void leo_worker_request_id(struct leo_worker *w, char *out, size_t size)
{
    /* "req_" + the worker's 12 hex digits + 8 hex digits of the counter, without printf (every request) */
    static const char hex[] = "0123456789abcdef";
    char id[4 + sizeof(w->id_prefix) + 8 + 1];
    size_t plen = strnlen(w->id_prefix, sizeof(w->id_prefix));
    memcpy(id, "req_", 4);
    memcpy(id + 4, w->id_prefix, plen);
    uint32_t n = (uint32_t)++w->next_request;
    for (int i = 7; i >= 0; i--, n >>= 4)
        id[4 + plen + (size_t)i] = hex[n & 15];
    size_t len = 4 + plen + 8;
    if (size == 0)
        return;
    if (len >= size)
        len = size - 1;
    memcpy(out, id, len);
    out[len] = '\0';
}

void leo_worker_set_config(struct leo_worker *w, struct leo_config *cfg)
{
    struct leo_config *old = w->cfg;
    w->cfg = cfg;
    leo_log_setup((enum leo_log_level)cfg->log_level, NULL);
    if (w->http)
        leo_http_server_set_limits(w->http, &cfg->limits);
    if (w->optimizer)
        leo_optimizer_set_config(w->optimizer, cfg);
    char lbl[32];
    snprintf(lbl, sizeof(lbl), "worker=\"%u\"", w->opts.index);
    leo_metrics_gauge_set("leo_config_version", lbl, (double)cfg->version);
    if (cfg->busy_poll_us != (old ? old->busy_poll_us : 0))
        leo_info("busy polling %s (busy_poll_us %llu)", cfg->busy_poll_us ? "on" : "off",
                 (unsigned long long)cfg->busy_poll_us);
    if (old && (strcmp(old->listen_host, cfg->listen_host) != 0 || old->listen_port != cfg->listen_port) &&
        w->opts.listen == NULL)
        leo_warn("config %s: a new listen address takes effect only after a restart", cfg->source);
    leo_config_unref(old);
}

int leo_worker_reload(struct leo_worker *w)
{
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    int rc = w->_snapshot ? leo_config_overlay_file(w->opts.config_path, w->_snapshot, w->_snapshot_len, &cfg, &err)
                          : leo_config_load_file(w->opts.config_path, &cfg, &err);
    if (rc) {
        leo_error("config reload rejected, still serving version %llu: %s",
                  (unsigned long long)w->cfg->version, err.p);
        leo_metrics_add("leo_config_reloads_total", "result=\"rejected\"", 1);
        leo_buf_release(&err);
        return rc;
    }
    leo_buf_release(&err);
    leo_worker_set_config(w, cfg);
    leo_metrics_add("leo_config_reloads_total", "result=\"applied\"", 1);
    leo_info("config reloaded from %s (version %llu)", cfg->source, (unsigned long long)cfg->version);
    return 0;
}

/* A new snapshot from the control plane: its tenants replace the file's. A snapshot the file's models cannot
 * carry (a tenant naming a model the file lacks) is rejected and the current one keeps serving. */
static void on_snapshot(const char *json, size_t len, uint64_t version, void *ud)
{
    struct leo_worker *w = ud;
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    if (leo_config_overlay_file(w->opts.config_path, json, len, &cfg, &err) != 0) {
        leo_error("control plane snapshot version %llu rejected, still serving config version %llu: %s",
                  (unsigned long long)version, (unsigned long long)w->cfg->version, err.p);
        leo_metrics_add("leo_config_reloads_total", "result=\"rejected\"", 1);
        leo_buf_release(&err);
        return;
    }
    leo_buf_release(&err);
    leo_free(w->_snapshot);
    w->_snapshot = leo_strndup(json, len);
    w->_snapshot_len = len;
    leo_worker_set_config(w, cfg);
    leo_metrics_add("leo_config_reloads_total", "result=\"applied\"", 1);
    leo_info("control plane snapshot version %llu applied: %zu tenants (config version %llu)",
             (unsigned long long)version, cfg->ntenants, (unsigned long long)cfg->version);
}

/* Starts following the control plane when the config names its Redis; a bad URL is logged and the file's
 * tenants keep serving. */
static void follow_start(struct leo_worker *w)
{
    const struct leo_config *cfg = w->cfg;
    if (cfg->control_plane.redis_url == NULL)
        return;
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_redis_opts ro = {.url = cfg->control_plane.redis_url, .password = cfg->control_plane.password};
    if (leo_redis_new(w->loop, &ro, &w->_cp_redis, &err) != 0) {
        leo_error("control_plane.redis_url: %s; serving the file's tenants", err.p);
        leo_buf_release(&err);
        return;
    }
    leo_buf_release(&err);
    w->_follower = leo_follower_start(w->loop, w->_cp_redis, cfg->control_plane.cache_path, on_snapshot, w);
}

static void on_alert_sent(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg,
                          void *ud)
{
    (void)x;
    (void)stage;
    (void)ud;
    if (err != 0)
        leo_warn("quota alert webhook failed: %s", msg);
}

/* Near-quota alerts go to the log (quota.c) and, when configured, to a webhook as a JSON POST. */
static void on_quota_alert(const struct leo_config *cfg, const char *json, size_t len, void *ud)
{
    struct leo_worker *w = ud;
    if (cfg->alerts.webhook_url == NULL || w->up == NULL)
        return;
    static const struct leo_upstream_callbacks cbs = {NULL, NULL, on_alert_sent};
    struct leo_http_header h[] = {{LEO_STR_LIT("Content-Type"), LEO_STR_LIT("application/json")}};
    struct leo_upstream_request r = {.method = "POST", .url = cfg->alerts.webhook_url, .headers = h, .nheaders = 1,
                                     .body = json, .body_len = len, .total_timeout_ms = 10000};
    if (leo_upstream_start(w->up, &r, &cbs, NULL) == NULL)
        leo_warn("quota alert webhook could not be started");
}

/* Shared counters when the config names a Redis; in-process otherwise (one worker's view: see docs/limits.md). */
static void quota_start(struct leo_worker *w)
{
    const struct leo_config *cfg = w->cfg;
    if (cfg->redis.url) {
        struct leo_buf err = LEO_BUF_INIT;
        struct leo_redis_opts ro = {.url = cfg->redis.url, .password = cfg->redis.password,
                                    .command_timeout_ms = cfg->redis.timeout_ms};
        if (leo_redis_new(w->loop, &ro, &w->redis, &err) != 0)
            leo_error("redis.url: %s; quotas use in-process counters", err.p);
        leo_buf_release(&err);
    }
    w->quota = leo_quota_new(w->loop, w->redis);
    leo_quota_set_alert_cb(w->quota, on_quota_alert, w);
}

/* The usage emitter of this worker (one worker per process; struct leo_worker does not carry it yet). */
static struct leo_usage *usage_emitter;

/* The spool files in dir of workers numbered nworkers or more, "<dir>/usage-<n>.jsonl" (one also when only its
 * ".replay" is left), NULL-terminated; NULL when there are none. Freed with leo_free, each and the array. */
static char **usage_orphan_spools(const char *dir, unsigned nworkers)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return NULL;
    char **paths = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        if (strncmp(e->d_name, "usage-", 6) != 0 || e->d_name[6] < '0' || e->d_name[6] > '9')
            continue;
        unsigned long idx = strtoul(e->d_name + 6, &end, 10);
        if (e->d_name[6] == '0' && end != e->d_name + 7)
            continue; /* "usage-01.jsonl" is not a worker's name */
        if ((strcmp(end, ".jsonl") != 0 && strcmp(end, ".jsonl.replay") != 0) || idx < nworkers)
            continue;
        struct leo_buf p = LEO_BUF_INIT;
        leo_buf_addf(&p, "%s/usage-%lu.jsonl", dir, idx);
        bool seen = false;
        for (size_t i = 0; i < n && !seen; i++)
            seen = strcmp(paths[i], p.p) == 0;
        if (seen) {
            leo_buf_release(&p);
            continue;
        }
        paths = leo_realloc(paths, (n + 2) * sizeof(*paths));
        paths[n++] = leo_buf_detach(&p, NULL);
        paths[n] = NULL;
    }
    closedir(d);
    return paths;
}

/* Usage events go to the control plane's Redis when there is one (its consumer reads them there), else to the
 * "redis" section's; without either the gateway runs standalone and emits none. With usage.spool_dir each worker
 * spools to its own usage-<index>.jsonl (read here, at the start: a reload does not move it), and worker 0 also
 * replays the files of indexes the current worker count no longer has. The count is the supervisor's (shared
 * metrics region, published before the first fork); a worker run without a supervisor (tests) falls back to the
 * config's "workers", and with neither the orphans wait for a later start. */
static void usage_start(struct leo_worker *w)
{
    struct leo_redis *r = w->_cp_redis ? w->_cp_redis : w->redis;
    if (r == NULL)
        return;
    const char *dir = w->cfg->usage.spool_dir;
    if (dir == NULL) {
        usage_emitter = leo_usage_new(w->loop, r, NULL);
        return;
    }
    struct leo_buf path = LEO_BUF_INIT;
    leo_buf_addf(&path, "%s/usage-%u.jsonl", dir, w->opts.index);
    char **orphans = NULL;
    if (w->opts.index == 0) {
        unsigned wanted, up;
        leo_metrics_get_workers(&wanted, &up);
        unsigned n = wanted ? wanted : w->cfg->workers;
        if (n)
            orphans = usage_orphan_spools(dir, n);
    }
    struct leo_usage_opts uo = {.spool_path = path.p, .spool_adopt = (const char *const *)orphans};
    usage_emitter = leo_usage_new(w->loop, r, &uo);
    for (char **p = orphans; p && *p; p++)
        leo_free(*p);
    leo_free(orphans);
    leo_buf_release(&path);
}

/* ---- busy polling (see worker.h) ----
 *
 * libuv runs an iteration as: timers, idle, prepare, poll for I/O, check. While an idle handle is active the
 * poll's timeout is 0 (uv_backend_timeout), so the loop spins instead of blocking; both handles are unref'd, so
 * neither keeps the loop alive and the drain ends the loop as before. The check handle is always started and
 * costs one comparison per iteration; the clock is read only in iterations that saw I/O and while a window is
 * open. What counts as I/O is the server's reads, write completions and accepts and the upstream client's socket
 * and timer callbacks: a Redis reply or a timer of another module neither opens nor extends a window. */

void leo_worker_metrics_describe(void)
{
    leo_metrics_describe("leo_busy_poll_windows_total", LEO_METRIC_COUNTER,
                         "Busy-poll windows opened (busy_poll_us): each begins with I/O after the worker blocked.");
    leo_metrics_describe("leo_busy_poll_seconds_total", LEO_METRIC_COUNTER,
                         "Time workers spent in busy-poll windows, polling for I/O without blocking.");
}

static uint64_t io_events(const struct leo_worker *w)
{
    return (w->http ? leo_http_server_io_events(w->http) : 0) + (w->up ? leo_upstream_io_events(w->up) : 0);
}

/* Publishes the open window's time up to now; the gauge tick calls it too, so a long window shows as it runs. */
static void busy_window_publish(struct leo_worker *w, uint64_t now)
{
    if (now > w->_busy_published_ns)
        leo_metrics_add("leo_busy_poll_seconds_total", "", (double)(now - w->_busy_published_ns) / 1e9);
    w->_busy_published_ns = now;
}

static void busy_window_end(struct leo_worker *w, uint64_t now)
{
    if (!uv_is_active((uv_handle_t *)&w->_busy_idle))
        return;
    uv_idle_stop(&w->_busy_idle);
    busy_window_publish(w, now);
}

/* Runs first in every iteration of an open window: closes it once busy_poll_us have passed without I/O (at once
 * when a reload set busy_poll_us to 0). */
static void busy_idle(uv_idle_t *h)
{
    struct leo_worker *w = h->data;
    uint64_t now = uv_hrtime();
    if (now - w->_busy_last_ns > w->cfg->busy_poll_us * 1000)
        busy_window_end(w, now);
}

/* Runs after every poll: the iteration saw I/O when the counters moved. */
static void busy_check(uv_check_t *h)
{
    struct leo_worker *w = h->data;
    uint64_t n = io_events(w);
    if (n == w->_busy_events)
        return;
    w->_busy_events = n;
    if (w->cfg->busy_poll_us == 0)
        return;
    uint64_t now = uv_hrtime();
    w->_busy_last_ns = now;
    if (!uv_is_active((uv_handle_t *)&w->_busy_idle)) {
        w->_busy_published_ns = now;
        leo_metrics_add("leo_busy_poll_windows_total", "", 1);
        uv_idle_start(&w->_busy_idle, busy_idle);
    }
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Closes the server, the upstream client and the worker's own handles; each module closes its own handles,
 * so the loop ends once they all have. */
static void stop_everything(struct leo_worker *w)
{
    if (w->http) {
        leo_http_server_close(w->http, NULL, NULL);
        w->http = NULL;
    }
    /* before the upstream client (a provider embedder's calls) and the Redis connection (detached commands) */
    leo_optimizer_free(w->optimizer);
    w->optimizer = NULL;
    if (w->up) {
        leo_upstream_close(w->up);
        w->up = NULL;
    }
    if (usage_emitter) {
        leo_usage_close(usage_emitter); /* before the connection it sends on */
        usage_emitter = NULL;
    }
    leo_analytics_stop(w->analytics); /* its flush timer; before the connection it flushes on */
    if (w->redis) {
        leo_redis_close(w->redis, NULL, NULL);
        w->redis = NULL;
    }
    if (w->_follower) {
        leo_follower_stop(w->_follower);
        w->_follower = NULL;
    }
    if (w->_cp_redis) {
        leo_redis_close(w->_cp_redis, NULL, NULL);
        w->_cp_redis = NULL;
    }
    close_if_open((uv_handle_t *)&w->_sigterm);
    close_if_open((uv_handle_t *)&w->_sigint);
    close_if_open((uv_handle_t *)&w->_sighup);
    close_if_open((uv_handle_t *)&w->_drain_timer);
    close_if_open((uv_handle_t *)&w->_gauge_timer);
    close_if_open((uv_handle_t *)&w->_drain_check);
    close_if_open((uv_handle_t *)&w->_log_flush);
    busy_window_end(w, uv_hrtime());
    close_if_open((uv_handle_t *)&w->_busy_check);
    close_if_open((uv_handle_t *)&w->_busy_idle);
}

static void log_flush(uv_prepare_t *p)
{
    (void)p;
    leo_log_flush();
}

static void drain_check(uv_check_t *c)
{
    struct leo_worker *w = c->data;
    if (leo_http_server_inflight(w->http) > 0)
        return;
    /* the last requests' usage events are still on their way to Redis (bounded by the drain timeout) */
    if (usage_emitter && leo_usage_flushing(usage_emitter))
        return;
    /* and their analytics counters (sent now rather than at the next tick; already sent: awaiting the answer) */
    if (w->analytics && w->redis && leo_redis_connected(w->redis) && leo_analytics_pending(w->analytics) > 0) {
        leo_analytics_flush(w->analytics);
        return;
    }
    leo_info("drained, exiting");
    stop_everything(w);
}

static void drain_timeout(uv_timer_t *t)
{
    struct leo_worker *w = t->data;
    leo_warn("drain timeout: closing %u requests still in flight", leo_http_server_inflight(w->http));
    stop_everything(w);
}

/* Connection counts live in the HTTP server; publishing them once a second keeps the hot path free of it. */
static void gauge_tick(uv_timer_t *t)
{
    struct leo_worker *w = t->data;
    if (w->http)
        leo_metrics_gauge_set("leo_active_connections", "", (double)leo_http_server_connections(w->http));
    if (uv_is_active((uv_handle_t *)&w->_busy_idle))
        busy_window_publish(w, uv_hrtime());
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct leo_worker *w = s->data;
    if (signum == SIGHUP) {
        leo_worker_reload(w);
        return;
    }
    if (w->draining)
        return;
    w->draining = true;
    /* the listener is closed before the line says so: whoever reads "draining" finds the port refusing */
    leo_http_server_drain(w->http);
    leo_info("draining: %u requests in flight, up to %llu ms", leo_http_server_inflight(w->http),
             (unsigned long long)w->cfg->drain_timeout_ms);
    uv_signal_stop(&w->_sighup);
    uv_timer_start(&w->_drain_timer, drain_timeout, w->cfg->drain_timeout_ms, 0);
    uv_check_start(&w->_drain_check, drain_check);
}

int leo_worker_run(const struct leo_worker_opts *opts)
{
    struct leo_worker w;
    memset(&w, 0, sizeof(w));
    w.opts = *opts;
    uv_loop_t loop;
    int rc = uv_loop_init(&loop);
    if (rc)
        return rc;
    w.loop = &loop;

    char role[32];
    snprintf(role, sizeof(role), "worker-%u", opts->index);
    leo_log_setup(LEO_LOG_INFO, role);
    leo_metrics_attach(opts->index + 1);
    prctl(PR_SET_PDEATHSIG, SIGTERM);

    uint8_t rnd[6];
    randombytes_buf(rnd, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(w.id_prefix + 2 * i, 3, "%02x", rnd[i]);

    struct leo_buf err = LEO_BUF_INIT;
    struct leo_config *cfg = NULL;
    rc = leo_config_load_file(opts->config_path, &cfg, &err);
    if (rc) {
        leo_error("cannot load config: %s", err.p);
        leo_buf_release(&err);
        goto fail_config;
    }
    leo_buf_release(&err);
    leo_worker_set_config(&w, cfg);

    if (opts->listen) {
        rc = leo_parse_listen(opts->listen, w.listen_host, sizeof(w.listen_host), &w.listen_port);
        if (rc) {
            leo_error("invalid --listen \"%s\": expected HOST:PORT", opts->listen);
            goto fail_listen;
        }
    } else {
        snprintf(w.listen_host, sizeof(w.listen_host), "%s", cfg->listen_host);
        w.listen_port = cfg->listen_port;
    }

    uint64_t seed;
    randombytes_buf(&seed, sizeof(seed));
    w.router = leo_router_new(seed);
    w.up = leo_upstream_new(&loop);
    if (w.up == NULL) {
        rc = LEO_EIO;
        leo_error("cannot initialise the upstream client");
        goto fail_listen;
    }
    struct leo_http_server_opts so = {
        .limits = cfg->limits,
        .handler = leo_gw_handle,
        .error_body = leo_gw_server_error_body,
        .ud = &w,
        .server_header = NULL,
    };
    w.http = leo_http_server_new(&loop, &so);
    rc = leo_http_server_listen(w.http, w.listen_host, w.listen_port, true);
    if (rc) {
        leo_error("cannot listen on %s:%d: %s", w.listen_host, w.listen_port, leo_strerror(rc));
        goto fail_server;
    }

    uv_signal_init(&loop, &w._sigterm);
    uv_signal_init(&loop, &w._sigint);
    uv_signal_init(&loop, &w._sighup);
    w._sigterm.data = w._sigint.data = w._sighup.data = &w;
    uv_signal_start(&w._sigterm, on_signal, SIGTERM);
    uv_signal_start(&w._sigint, on_signal, SIGINT);
    uv_signal_start(&w._sighup, on_signal, SIGHUP);
    uv_timer_init(&loop, &w._drain_timer);
    w._drain_timer.data = &w;
    uv_unref((uv_handle_t *)&w._drain_timer);
    uv_timer_init(&loop, &w._gauge_timer);
    w._gauge_timer.data = &w;
    uv_timer_start(&w._gauge_timer, gauge_tick, 1000, 1000);
    uv_unref((uv_handle_t *)&w._gauge_timer);
    uv_check_init(&loop, &w._drain_check);
    w._drain_check.data = &w;
    /* runs before the loop waits for I/O: one write for the access-log lines of all the requests that ended in
     * this iteration */
    uv_prepare_init(&loop, &w._log_flush);
    uv_prepare_start(&w._log_flush, log_flush);
    uv_unref((uv_handle_t *)&w._log_flush);
    uv_idle_init(&loop, &w._busy_idle);
    w._busy_idle.data = &w;
    uv_unref((uv_handle_t *)&w._busy_idle);
    uv_check_init(&loop, &w._busy_check);
    w._busy_check.data = &w;
    uv_check_start(&w._busy_check, busy_check);
    uv_unref((uv_handle_t *)&w._busy_check);
    /* the series exist from the start (0 while busy polling is off) */
    leo_metrics_add("leo_busy_poll_windows_total", "", 0);
    leo_metrics_add("leo_busy_poll_seconds_total", "", 0);
    leo_log_batch(true);
    follow_start(&w);
    quota_start(&w);
    w.analytics = leo_analytics_new(&loop, w.redis); /* shares the quota's Redis connection, if any */
    w.optimizer = leo_optimizer_new(&(struct leo_optimizer_opts){&loop, w.redis, w.up, w.cfg});
    usage_start(&w);

    leo_info("listening on %s:%d (config version %llu)", w.listen_host, leo_http_server_port(w.http),
             (unsigned long long)cfg->version);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* every handle has been closed by stop_everything */
    uv_run(&loop, UV_RUN_DEFAULT);
    leo_log_batch(false);
    leo_config_unref(w.cfg);
    leo_router_free(w.router);
    leo_quota_free(w.quota);
    leo_analytics_free(w.analytics);
    leo_free(w._snapshot);
    uv_loop_close(&loop);
    return 0;

fail_server:
    leo_http_server_close(w.http, NULL, NULL);
    leo_upstream_close(w.up);
    uv_run(&loop, UV_RUN_DEFAULT);
fail_listen:
    leo_router_free(w.router);
    leo_config_unref(w.cfg);
fail_config:
    uv_loop_close(&loop);
    return rc ? rc : LEO_ECONFIG;
}
