/*
 * worker.h — one gateway worker process: a libuv loop with the HTTP server, the upstream client and the
 * current configuration snapshot.
 *
 * The supervisor forks N workers; each binds the same port with SO_REUSEPORT and serves on its own. A worker
 * owns exactly one current snapshot (struct leo_config) and swaps it with leo_worker_set_config: requests in
 * flight keep the snapshot they started with (each holds a reference). SIGHUP makes the worker reload its
 * config file (an invalid file is logged and the old snapshot keeps serving); SIGTERM drains: stop accepting,
 * let in-flight requests and streams finish up to drain_timeout_ms, then exit 0.
 *
 * Busy polling (config "busy_poll_us", 0 = off): after each loop iteration that ran I/O callbacks of the HTTP
 * server or the upstream client, the worker keeps polling for I/O without blocking until busy_poll_us have passed
 * since the last such iteration, then blocks in epoll_wait as usual. On virtual machines a blocking wait halts
 * the vCPU and the wake-up costs tens of microseconds; polling through the short gaps of a request (client →
 * upstream → client) saves them, for CPU spent during the window. An idle worker never polls: only I/O opens a
 * window. The current snapshot's value applies, so a reload changes it.
 */
#ifndef LEO_WORKER_H
#define LEO_WORKER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "../common/http_server.h"
#include "config.h"
#include "follower.h"
#include "router.h"
#include "upstream.h"

struct leo_worker_opts {
    const char *config_path;   /* file source of snapshots */
    const char *listen;        /* "host:port" override of the config's listen, or NULL */
    unsigned index;            /* worker number, also its metrics slot */
};

struct leo_worker {
    uv_loop_t *loop;
    struct leo_http_server *http;
    struct leo_upstream *up;
    struct leo_router *router; /* routing state (breakers, cooldowns, latencies); survives reloads */
    struct leo_redis *redis;   /* shared counters (config "redis"), or NULL: standalone */
    struct leo_quota_service *quota; /* quotas and rate limits, on redis or in-process */
    struct leo_analytics *analytics; /* savings analytics, on redis or in-process (gateway/analytics.h) */
    struct leo_optimizer *optimizer; /* exact and semantic caches, dedup (gateway/optimize.h) */
    struct leo_config *cfg;    /* current snapshot (one reference held here) */
    struct leo_worker_opts opts;
    char listen_host[256];
    int listen_port;
    bool draining;
    uint64_t next_request;     /* request counter for ids */
    char id_prefix[16];        /* random per worker start */
    /* private */
    uv_signal_t _sigterm, _sigint, _sighup;
    uv_timer_t _drain_timer;
    uv_timer_t _gauge_timer;
    uv_check_t _drain_check;
    uv_prepare_t _log_flush;         /* writes the access-log lines of each loop iteration (common/log.h) */
    uv_check_t _busy_check;          /* after each poll: did it run I/O? then opens or extends a busy-poll window */
    uv_idle_t _busy_idle;            /* active while a busy-poll window is open: libuv then polls with timeout 0 */
    uint64_t _busy_events;           /* the I/O event count (server + upstream) at the last check */
    uint64_t _busy_last_ns;          /* uv_hrtime() of the last check that saw the count move */
    uint64_t _busy_published_ns;     /* the open window's time is in leo_busy_poll_seconds_total up to here */
    struct leo_redis *_cp_redis;     /* the control plane's Redis, or NULL (config control_plane) */
    struct leo_follower *_follower;  /* follows the control plane's snapshot, or NULL */
    char *_snapshot;                 /* the last snapshot applied (re-applied on SIGHUP), or NULL */
    size_t _snapshot_len;
};

/** Declares the worker's own metric families (busy polling); called with the other declarations, before the
 *  supervisor forks. */
void leo_worker_metrics_describe(void);

/** Runs a worker until it has drained after SIGTERM (returns 0) or fails to start (returns an error). The
 *  first snapshot is loaded from opts->config_path. */
int leo_worker_run(const struct leo_worker_opts *opts);

/** Installs a new current snapshot (takes over the caller's reference) and applies what can change live
 *  (HTTP limits, log level). */
void leo_worker_set_config(struct leo_worker *w, struct leo_config *cfg);

/** Reloads the file source (with the last control plane snapshot's tenants over it, if any); 0 on success,
 *  LEO_ECONFIG when the file is invalid (old snapshot kept). */
int leo_worker_reload(struct leo_worker *w);

/** Writes a new request id ("req_" + 24 hex) into out (at least 32 bytes). */
void leo_worker_request_id(struct leo_worker *w, char *out, size_t size);

/** Parses "host:port" / "[v6]:port"; 0 or LEO_EINVAL. */
int leo_parse_listen(const char *s, char *host, size_t hostsize, int *port);

#endif
