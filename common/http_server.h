/*
 * http_server.h — the HTTP/1.1 server core (llhttp on libuv), shared by the gateway, the control plane and
 * the mock provider.
 *
 * Model: one server per libuv loop. A connection parses requests with llhttp; when a request is complete
 * (headers and the whole body, chunked bodies de-chunked) the server calls the handler once. The handler
 * answers later or at once with exactly one response: leo_http_respond() for a whole body, or
 * leo_http_stream_start() / leo_http_stream_write() / leo_http_stream_end() for a chunked stream (SSE).
 *
 * Invariants:
 * - Pipelined requests are answered in order: the next request on a connection is not parsed (and its
 *   handler not called) until the current response has been finished.
 * - A struct leo_http_request stays valid from the handler call until the response is finished
 *   (respond / stream_end / abort) *and* the server has called on_close if set, or, when the client goes
 *   away first, until on_close returns. The handler must not touch req after that.
 * - on_close(req) is called exactly once for each request whose handler was called: after the response has
 *   been fully handed to the socket, or when the connection died before that (then `aborted` is true).
 *   It is the place to cancel upstream work and free per-request state.
 * - Limits (struct leo_http_limits) are enforced by the server itself: header bytes → 431, body bytes → 413,
 *   header count → 431, malformed → 400 and close, header/body read timeout → 408 and close, idle keep-alive
 *   timeout → silent close, max connections per server → the new connection is closed at once.
 *   Those error bodies are produced by the error_body callback so each product speaks its own error format.
 * - Expect: 100-continue gets "HTTP/1.1 100 Continue" unless the declared Content-Length exceeds the body
 *   limit, which gets 413 at once.
 * - Every buffer holding client bytes is capped by the limits.
 */
#ifndef LEO_HTTP_SERVER_H
#define LEO_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "arena.h"
#include "buf.h"
#include "str.h"

struct leo_http_server;
struct leo_http_conn;

struct leo_http_header {
    struct leo_str name;
    struct leo_str value;
};

struct leo_http_limits {
    size_t max_header_bytes;      /* request line + headers; default 16 KiB */
    size_t max_headers;           /* number of header lines; default 100 */
    size_t max_body_bytes;        /* default 4 MiB */
    uint64_t header_timeout_ms;   /* from the first byte of a request to the end of its headers; default 10 s */
    uint64_t body_timeout_ms;     /* from the end of headers to the end of the body; default 30 s */
    uint64_t idle_timeout_ms;     /* keep-alive wait for the next request; default 60 s */
    unsigned max_connections;     /* per server (= per worker); default 10000 */
    size_t max_pending_write;     /* bytes queued to a slow client before leo_http_stream_write says so; 1 MiB */
};

/** Fills the defaults listed above. */
void leo_http_limits_default(struct leo_http_limits *l);

struct leo_http_request {
    struct leo_str method;   /* "GET", "POST", ... */
    struct leo_str url;      /* raw request target, e.g. "/v1/models?x=1" */
    struct leo_str path;     /* url up to '?' */
    struct leo_str query;    /* after '?', without it; empty if none */
    struct leo_http_header *headers;
    size_t nheaders;
    struct leo_buf body;     /* de-chunked body; NUL-terminated */
    int http_major, http_minor;
    bool keep_alive;         /* the client wants the connection kept (may be overridden by the server) */
    uint64_t start_ns;       /* uv_hrtime() when the first byte of this request arrived */
    char remote_addr[64];    /* peer IP as text */
    struct leo_arena arena;  /* owned by the request, destroyed after on_close */
    void *data;              /* the handler's own per-request state */
    /** Called once when the request ends (see the invariants above). May be NULL. */
    void (*on_close)(struct leo_http_request *req, bool aborted);
    /** Called when the pending write queue drops below half of max_pending_write after stream_write said
     *  it was full. May be NULL. */
    void (*on_drain)(struct leo_http_request *req);
    /* private */
    struct leo_http_conn *_conn;
};

/** Finds a header by case-insensitive name; returns NULL if absent. */
const struct leo_http_header *leo_http_header_find(const struct leo_http_request *req, const char *name);

/** Called once per complete request. */
typedef void (*leo_http_handler_cb)(struct leo_http_request *req, void *ud);
/** Builds the body of an error the server emits by itself (400, 408, 413, 431); sets *content_type. */
typedef void (*leo_http_error_body_cb)(int status, const char *message, struct leo_buf *body,
                                       const char **content_type, void *ud);

struct leo_http_server_opts {
    struct leo_http_limits limits;
    leo_http_handler_cb handler;
    leo_http_error_body_cb error_body; /* NULL: a plain-text body */
    void *ud;
    const char *server_header;         /* value of "Server:", NULL for none */
};

/** Creates a server on loop. Does not listen yet. Never fails. */
struct leo_http_server *leo_http_server_new(uv_loop_t *loop, const struct leo_http_server_opts *opts);
/** Replaces the limits for connections accepted from now on (config reload). */
void leo_http_server_set_limits(struct leo_http_server *srv, const struct leo_http_limits *limits);
/** Binds host:port and listens. With reuseport, SO_REUSEPORT is set so several processes may share the port.
 *  port 0 picks a free port; leo_http_server_port() tells which. Returns 0 or a negative error. */
int leo_http_server_listen(struct leo_http_server *srv, const char *host, int port, bool reuseport);
/** The bound port, after listen. */
int leo_http_server_port(const struct leo_http_server *srv);
/** Stops accepting; closes idle keep-alive connections; in-flight requests finish, and their connections
 *  close after the response (Connection: close). */
void leo_http_server_drain(struct leo_http_server *srv);
/** Number of open connections and of requests whose response is not finished. */
unsigned leo_http_server_connections(const struct leo_http_server *srv);
unsigned leo_http_server_inflight(const struct leo_http_server *srv);
/** I/O callbacks the server has run since it was created (reads, write completions, accepts): a counter that
 *  only grows, for a caller that wants to know whether the loop saw client traffic (gateway/worker.c). */
uint64_t leo_http_server_io_events(const struct leo_http_server *srv);
/** Closes everything (aborting in-flight requests, whose on_close fires with aborted=true) and frees the
 *  server when all handles are closed, then calls cb (may be NULL). */
void leo_http_server_close(struct leo_http_server *srv, void (*cb)(void *ud), void *ud);

/** Sends a complete response with Content-Length. headers must not include Content-Length,
 *  Transfer-Encoding or Connection (the server writes those). Copies everything it needs. */
void leo_http_respond(struct leo_http_request *req, int status, const struct leo_http_header *headers,
                      size_t nheaders, const char *body, size_t len);
/** Starts a chunked response (Transfer-Encoding: chunked). */
void leo_http_stream_start(struct leo_http_request *req, int status, const struct leo_http_header *headers,
                           size_t nheaders);
/** Sends one chunk (len 0 is ignored). Returns 0, 1 when the pending queue is above max_pending_write
 *  (the caller should pause its producer until on_drain), or LEO_ECLOSED when the client is gone. */
int leo_http_stream_write(struct leo_http_request *req, const char *data, size_t len);
/** Ends a chunked response cleanly (the terminating zero-length chunk). */
void leo_http_stream_end(struct leo_http_request *req);
/** Ends the response by closing the connection without a clean end (a chunked stream left unterminated). */
void leo_http_abort(struct leo_http_request *req);
/** True once the response has started (status line queued). */
bool leo_http_response_started(const struct leo_http_request *req);

/** Reason phrase for a status code ("OK", "Not Found", ...). */
const char *leo_http_reason(int status);

#endif
