/*
 * handlers.h — the gateway's routes and the per-request context they share.
 *
 * The worker's HTTP handler looks the route up in a table (method + path → handler) and calls it with a
 * struct leo_gw_req allocated in the request's arena. Every route ends through leo_gw_respond_* or, for the
 * proxied routes, through its own streaming code; either way leo_gw_finish runs once from the request's
 * on_close and writes the access-log line and the metrics.
 */
#ifndef LEO_HANDLERS_H
#define LEO_HANDLERS_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/http_server.h"
#include "config.h"
#include "providers/provider.h"
#include "worker.h"

struct leo_gw_req {
    struct leo_http_request *req;
    struct leo_worker *w;
    struct leo_config *cfg;                 /* snapshot reference held for the request's life */
    const char *route;                      /* metrics label: the matched route pattern */
    enum leo_dialect dialect;               /* the client's API dialect: errors are written in it */
    char id[32];                            /* x-leo-request-id */
    const struct leo_tenant_key *key;       /* after authentication */
    struct leo_str byok;                    /* bring-your-own provider key, if allowed and sent */
    const struct leo_model *model;          /* the configured model, if any */
    const struct leo_deployment *dep;       /* the deployment used, if any */
    int status;                             /* what the client got */
    bool stream;
    uint64_t estimated_tokens;              /* the gateway's estimate of the input, before sending */
    uint64_t prompt_tokens, completion_tokens;
    bool have_usage;
    double cost_usd;
    int upstream_status;                    /* 0 when no upstream answered */
    double upstream_ms;                     /* time spent on the upstream call (to its end) */
    double upstream_ttfb_ms;
    const char *error;                      /* short reason for a failure, for the log (static or arena) */
    const char *attempts_log;               /* failed attempts before the last, "deployment:outcome,..." */
    unsigned attempts;                      /* upstream attempts made (the route sets it; 0: derived from
                                               attempts_log and dep for the usage event) */
    double saved_usd;                       /* what a cache hit saved; 0 until a cache answers */
    uint64_t saved_tokens;                  /* tokens a cache hit saved (the original answer's usage); 0 */
    const char *cache_status;               /* "hit", "miss", ...; NULL: no cache consulted ("none") */
    bool usage;                             /* a proxied route: emits a usage event at the end */
    /** Called from on_close before the log line, to cancel outstanding work; may be NULL. */
    void (*on_close)(struct leo_gw_req *g, bool aborted);
    void *data;                             /* the route's own state */
};

/** Sends a JSON response with the standard gateway headers (x-leo-request-id, content-type) plus extra. */
void leo_gw_respond_json(struct leo_gw_req *g, int status, const struct leo_http_header *extra, size_t nextra,
                         const char *body, size_t len);
/** Sends an error in the client's dialect (OpenAI-shaped, or Anthropic-shaped on /v1/messages routes);
 *  message is formatted printf-style; param and code are used by the OpenAI shape only. */
void leo_gw_error(struct leo_gw_req *g, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/** Authenticates from Authorization: Bearer / X-API-Key; on failure sends 401 and returns false. Also
 *  records a bring-your-own-key bearer when the tenant allows it. */
bool leo_gw_authenticate(struct leo_gw_req *g);

/* Routes (handlers.c, chat.c). */
void leo_route_chat_completions(struct leo_gw_req *g);
void leo_route_messages(struct leo_gw_req *g);
void leo_route_count_tokens(struct leo_gw_req *g);
void leo_route_embeddings(struct leo_gw_req *g);
void leo_route_completions(struct leo_gw_req *g);
void leo_route_models(struct leo_gw_req *g);
void leo_route_model_get(struct leo_gw_req *g);
void leo_route_status_deployments(struct leo_gw_req *g);
void leo_route_health(struct leo_gw_req *g);
void leo_route_ready(struct leo_gw_req *g);
void leo_route_metrics(struct leo_gw_req *g);

/** Dispatches a complete request (the HTTP server's handler). ud is the struct leo_worker. */
void leo_gw_handle(struct leo_http_request *req, void *ud);
/** The OpenAI-shaped body for errors the HTTP server emits itself (400, 408, 413, 431). */
void leo_gw_server_error_body(int status, const char *message, struct leo_buf *body, const char **content_type,
                              void *ud);
/** Declares every metric family the gateway uses (call once before forking). */
void leo_gw_metrics_describe(void);

#endif
