/*
 * client.h — one blocking request to the admin API (libcurl easy interface).
 *
 * Invariants: a request goes to "<base>/admin/v1<path>" with a JSON body or none, and never follows redirects
 * (a Location elsewhere would take the bearer token with it). The answer body is capped at LEOCTL_MAX_BODY;
 * a larger one is a transport error. leoctl_global_init() must run once before the first request.
 */
#ifndef LEOCTL_CLIENT_H
#define LEOCTL_CLIENT_H

#include <jansson.h>
#include <stddef.h>

#define LEOCTL_MAX_BODY (16u << 20)

/** The answer to one request; release with leoctl_response_release. */
struct leoctl_response {
    long status;  /* HTTP status */
    json_t *json; /* the parsed body; NULL when empty or not JSON */
    char *body;   /* the raw body, NUL-terminated, never NULL after a completed request */
    size_t len;
};

/** curl_global_init; 0 or -1. */
int leoctl_global_init(void);
void leoctl_global_cleanup(void);

/**
 * Normalises a base URL given by the user into new memory: trailing slashes and a trailing "/admin/v1" are
 * dropped. NULL (and a message in err) when it is not an http:// or https:// URL.
 */
char *leoctl_base_url(const char *url, char *err, size_t errlen);

/**
 * Sends METHOD <base>/admin/v1<path> with body (may be NULL; not stolen) and the bearer token (may be NULL).
 * path must already be percent-encoded where needed (see leoctl_escape). 0 once an HTTP answer arrived,
 * whatever its status; -1 with a message in err when the server could not be reached or answered too much.
 */
int leoctl_request(const char *base, const char *token, const char *method, const char *path, json_t *body,
                   struct leoctl_response *out, char *err, size_t errlen);

void leoctl_response_release(struct leoctl_response *r);

/** The message of an API error answer ("error.message"), or a generic text for bodies without one. */
const char *leoctl_error_message(const struct leoctl_response *r);

/** Percent-encodes s for use in a URL path segment or query value; new memory (leo_free). */
char *leoctl_escape(const char *s);

#endif
