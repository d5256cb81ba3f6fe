/*
 * upstream.h — the HTTP client toward providers: libcurl's multi interface driven by the worker's libuv loop
 * (CURLMOPT_SOCKETFUNCTION + CURLMOPT_TIMERFUNCTION; one multi handle per worker, so connections and TLS
 * sessions are reused across requests; HTTP/2 negotiated by ALPN where the upstream offers it; TLS verified).
 *
 * A transfer moves through visible stages: CONNECT → SEND → HEADERS → BODY → DONE. Callbacks name them:
 * on_headers fires once when the status line and all response headers have arrived (entering BODY),
 * on_data for each piece of body as it arrives (never buffered whole), and on_done exactly once at the end
 * with 0 on success or a negative code telling which stage failed:
 *   LEO_ECONNECT (could not connect / TLS failed), LEO_ETIMEOUT (with `stage` saying which timeout),
 *   LEO_EUPSTREAM (connection reset or protocol error), LEO_ECANCELED is never reported (see cancel).
 * Lifetime: the transfer is owned by the module; it is freed right after on_done returns, or inside
 * leo_upstream_cancel, after which no callback fires. Callbacks may call leo_upstream_cancel on their own
 * transfer only from on_headers and on_data (then no further callback fires, on_done included).
 * If leo_upstream_start fails it returns NULL and no callback ever fires.
 */
#ifndef LEO_UPSTREAM_H
#define LEO_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../common/http_server.h"
#include "../common/str.h"

struct leo_upstream;
struct leo_upstream_xfer;

enum leo_upstream_stage {
    LEO_UP_CONNECT,
    LEO_UP_SEND,
    LEO_UP_HEADERS,
    LEO_UP_BODY,
    LEO_UP_DONE,
};

struct leo_upstream_callbacks {
    /** Status and headers (name/value spans valid only during the call). */
    void (*on_headers)(struct leo_upstream_xfer *x, int status, const struct leo_http_header *headers,
                       size_t nheaders, void *ud);
    /** A piece of the body (valid only during the call). */
    void (*on_data)(struct leo_upstream_xfer *x, const char *data, size_t len, void *ud);
    /** The end: err 0 or a negative code; stage is where it ended; msg a short human description (never a
     *  secret, never NULL). */
    void (*on_done)(struct leo_upstream_xfer *x, int err, enum leo_upstream_stage stage, const char *msg,
                    void *ud);
};

struct leo_upstream_request {
    const char *method;                      /* "POST" or "GET" */
    const char *url;                         /* absolute URL */
    const struct leo_http_header *headers;   /* request headers to send (copied) */
    size_t nheaders;
    const char *body;                        /* copied; may be NULL */
    size_t body_len;
    uint64_t connect_timeout_ms;             /* 0: default 10 s */
    uint64_t first_byte_timeout_ms;          /* time to response headers; 0: none */
    uint64_t total_timeout_ms;               /* 0: none */
};

/** Creates the client for loop. Returns NULL only if libcurl cannot be initialised. */
struct leo_upstream *leo_upstream_new(uv_loop_t *loop);
/** Cancels every transfer (no callbacks) and frees the client once its handles are closed. */
void leo_upstream_close(struct leo_upstream *up);
/** Number of transfers in progress. */
unsigned leo_upstream_active(const struct leo_upstream *up);
/** Socket and timer callbacks that drove libcurl since the client was created: a counter that only grows, for
 *  a caller that wants to know whether the loop saw upstream traffic (gateway/worker.c). */
uint64_t leo_upstream_io_events(const struct leo_upstream *up);

/** Starts a transfer. Returns NULL (and fires nothing) if the request cannot be started. */
struct leo_upstream_xfer *leo_upstream_start(struct leo_upstream *up, const struct leo_upstream_request *req,
                                             const struct leo_upstream_callbacks *cbs, void *ud);
/** Cancels a transfer: no callback fires after this returns; the connection is not reused. */
void leo_upstream_cancel(struct leo_upstream_xfer *x);
/** Optional: cb runs once after the on_data calls that one pass of libcurl over the sockets produced (curl
 *  delivers a chunked body one HTTP chunk per on_data, so one read can mean many calls), so a caller can
 *  batch what it writes downstream. It runs outside libcurl, with the same rules as on_data (it may cancel
 *  its own transfer). NULL turns it off. */
void leo_upstream_on_data_end(struct leo_upstream_xfer *x, void (*cb)(struct leo_upstream_xfer *x, void *ud));
/** Pauses delivery of body data (client back-pressure) / resumes it. */
void leo_upstream_pause(struct leo_upstream_xfer *x);
void leo_upstream_resume(struct leo_upstream_xfer *x);
/** The stage the transfer is in now. */
enum leo_upstream_stage leo_upstream_stage(const struct leo_upstream_xfer *x);
/** Milliseconds from start to response headers (0 before), and the HTTP version used (11, 20). */
double leo_upstream_ttfb_ms(const struct leo_upstream_xfer *x);
int leo_upstream_http_version(const struct leo_upstream_xfer *x);

#endif
