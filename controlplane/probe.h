/*
 * probe.h — the provider connection test (POST /admin/v1/providers/{provider}/test): one authenticated call
 * to the provider's model list with one of its credentials, answered as ok / refused / unreachable.
 *
 * What is called, by provider type (the same authentication the gateway sends, gateway/providers/):
 *   openai     GET {base_url}/models                               Authorization: Bearer <secret>
 *   azure      GET {base_url}/openai/models?api-version=<version>  api-key: <secret>
 *   anthropic  GET {base_url}/models                               x-api-key, anthropic-version
 *   gemini     GET {base_url}/models                               x-goog-api-key: <secret>
 * The secret travels in a header only, never in the URL, so no URL in a message can carry it.
 *
 * Invariants:
 * - leo_probe_run blocks (a libcurl easy transfer): call it on a work thread, never on the loop.
 * - The secret is held by the probe only, wiped by leo_probe_free; no result field ever contains it: the
 *   upstream's error message (and libcurl's) is scrubbed of every run of 8 or more characters of the secret
 *   (of the whole secret when it is shorter) before it is kept.
 * - Nothing here logs.
 */
#ifndef LEO_CP_PROBE_H
#define LEO_CP_PROBE_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/buf.h"

/** Upper bounds on one probe's transfer (a provider's own timeouts apply when shorter). */
#define LEO_PROBE_CONNECT_TIMEOUT_MS 5000
#define LEO_PROBE_TOTAL_TIMEOUT_MS 15000
/** The most of the upstream's answer that is read (the rest is discarded). */
#define LEO_PROBE_BODY_MAX (64 * 1024)
#define LEO_PROBE_ERROR_MAX 300

enum leo_probe_result {
    LEO_PROBE_OK,          /* a 2xx answer */
    LEO_PROBE_REFUSED,     /* any other HTTP answer (401, 403, 404, 429, 5xx...) */
    LEO_PROBE_UNREACHABLE, /* no HTTP answer: DNS, connect, TLS or timeout */
};

struct leo_probe {
    /* in (copied by leo_probe_new) */
    char *type, *base_url, *api_version;
    struct leo_buf secret; /* wiped by leo_probe_free */
    unsigned connect_timeout_ms, total_timeout_ms;
    /* out (set by leo_probe_run) */
    enum leo_probe_result result;
    int status;                          /* HTTP status; 0 when unreachable */
    unsigned latency_ms;                 /* from the start of the transfer to its end */
    char error[LEO_PROBE_ERROR_MAX + 1]; /* "" when ok; scrubbed of the secret */
};

/** A probe of one provider with one secret (taken over: the caller's buffer is left empty). Timeouts of 0
 *  mean the LEO_PROBE_* defaults; larger ones are capped at them. api_version may be NULL. */
struct leo_probe *leo_probe_new(const char *type, const char *base_url, const char *api_version, struct leo_buf *secret,
                                unsigned connect_timeout_ms, unsigned total_timeout_ms);

/** Runs the call and fills the out fields. Blocking; thread-safe for distinct probes. Never fails: every
 *  problem is a result. */
void leo_probe_run(struct leo_probe *p);

/** "ok", "refused" or "unreachable". */
const char *leo_probe_result_name(enum leo_probe_result r);

/** Wipes the secret and frees the probe. NULL is a no-op. */
void leo_probe_free(struct leo_probe *p);

/** Removes from msg (in place) every run of at least 8 bytes that also occurs in secret (or the whole secret
 *  when it is shorter than 8 bytes), replacing each with "***". Exposed for the unit of scrubbing. */
void leo_probe_scrub(char *msg, size_t size, const char *secret, size_t secret_len);

/** Declares leo_cp_provider_tests_total; call once at start, on the loop thread. */
void leo_probe_metrics_describe(void);

/** Counts a finished probe in leo_cp_provider_tests_total{type, result}; loop thread only. */
void leo_probe_count(const struct leo_probe *p);

#endif
