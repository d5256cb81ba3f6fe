/*
 * probe.c — the provider connection test: one blocking libcurl transfer, on the caller's (work) thread.
 *
 * A blocking easy transfer on the libuv thread pool is what the admin API already does for password hashing
 * (api.c, run_work): a test is rare, admin-triggered and bounded by its timeouts, so it does not need the
 * multi interface on the loop. CURLOPT_NOSIGNAL keeps libcurl's resolver from using signals in a thread.
 * Known limit: a test holds one of libuv's pool threads (4 by default) for up to LEO_PROBE_TOTAL_TIMEOUT_MS.
 */
#include "probe.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../common/alloc.h"
#include "../common/metrics.h"

#define SCRUB_RUN 8
#define ANTHROPIC_VERSION "2023-06-01"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct leo_probe *leo_probe_new(const char *type, const char *base_url, const char *api_version, struct leo_buf *secret,
                                unsigned connect_timeout_ms, unsigned total_timeout_ms)
{
    struct leo_probe *p = leo_new(struct leo_probe);
    p->type = leo_strdup(type);
    p->base_url = leo_strdup(base_url);
    p->api_version = api_version ? leo_strdup(api_version) : NULL;
    p->secret = *secret;
    leo_buf_init(secret, 0, 0);
    p->connect_timeout_ms = connect_timeout_ms && connect_timeout_ms < LEO_PROBE_CONNECT_TIMEOUT_MS
                                ? connect_timeout_ms
                                : LEO_PROBE_CONNECT_TIMEOUT_MS;
    p->total_timeout_ms = total_timeout_ms && total_timeout_ms < LEO_PROBE_TOTAL_TIMEOUT_MS
                              ? total_timeout_ms
                              : LEO_PROBE_TOTAL_TIMEOUT_MS;
    return p;
}

void leo_probe_free(struct leo_probe *p)
{
    if (p == NULL)
        return;
    if (p->secret.p && p->secret.len)
        sodium_memzero(p->secret.p, p->secret.len);
    leo_buf_release(&p->secret);
    leo_free(p->type);
    leo_free(p->base_url);
    leo_free(p->api_version);
    leo_free(p);
}

const char *leo_probe_result_name(enum leo_probe_result r)
{
    static const char *const names[] = {"ok", "refused", "unreachable"};
    return (unsigned)r < 3 ? names[r] : "unknown";
}

/* The longest n such that msg[i..i+n) occurs in secret. O(len(msg) * len(secret)) over at most
 * LEO_PROBE_ERROR_MAX bytes of message: cheap. */
static size_t longest_in_secret(const char *msg, size_t i, size_t msg_len, const char *secret, size_t secret_len)
{
    size_t best = 0;
    for (size_t j = 0; j < secret_len; j++) {
        size_t n = 0;
        while (i + n < msg_len && j + n < secret_len && msg[i + n] == secret[j + n])
            n++;
        if (n > best)
            best = n;
    }
    return best;
}

void leo_probe_scrub(char *msg, size_t size, const char *secret, size_t secret_len)
{
    if (secret_len == 0 || size == 0)
        return;
    size_t min_run = secret_len < SCRUB_RUN ? secret_len : SCRUB_RUN;
    size_t len = strnlen(msg, size - 1);
    struct leo_buf out = LEO_BUF_INIT;
    for (size_t i = 0; i < len;) {
        size_t n = longest_in_secret(msg, i, len, secret, secret_len);
        if (n >= min_run) {
            leo_buf_adds(&out, "***");
            i += n;
        } else {
            leo_buf_addch(&out, msg[i]);
            i++;
        }
    }
    size_t keep = out.len < size - 1 ? out.len : size - 1;
    memcpy(msg, out.p, keep);
    msg[keep] = '\0';
    sodium_memzero(out.p, out.len);
    leo_buf_release(&out);
}

struct body {
    char data[LEO_PROBE_BODY_MAX + 1];
    size_t len;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct body *b = ud;
    size_t n = size * nmemb;
    size_t room = LEO_PROBE_BODY_MAX - b->len;
    size_t take = n < room ? n : room;
    memcpy(b->data + b->len, ptr, take);
    b->len += take;
    b->data[b->len] = '\0';
    return n; /* the rest is discarded, not an error */
}

/* The upstream's own explanation: error.message (OpenAI, Azure, Anthropic, Gemini), error as a string, or
 * message; else the start of the body, printable bytes only. */
static void upstream_message(const struct body *b, char *out, size_t size)
{
    out[0] = '\0';
    json_t *j = json_loadb(b->data, b->len, 0, NULL);
    const char *m = NULL;
    if (j) {
        json_t *e = json_object_get(j, "error");
        m = json_string_value(json_object_get(e, "message"));
        if (m == NULL)
            m = json_string_value(e);
        if (m == NULL)
            m = json_string_value(json_object_get(j, "message"));
    }
    if (m) {
        snprintf(out, size, "%s", m);
    } else {
        size_t n = 0;
        for (size_t i = 0; i < b->len && n + 1 < size && n < 200; i++)
            out[n++] = b->data[i] >= 0x20 && b->data[i] < 0x7f ? b->data[i] : ' ';
        out[n] = '\0';
    }
    json_decref(j);
}

/* error = prefix + text, cut to fit (messages are for people; a cut one still says what failed first). */
static void set_error(struct leo_probe *p, const char *prefix, const char *text)
{
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_adds(&b, prefix);
    leo_buf_adds(&b, text);
    size_t n = b.len < sizeof(p->error) - 1 ? b.len : sizeof(p->error) - 1;
    memcpy(p->error, b.p, n);
    p->error[n] = '\0';
    leo_buf_release(&b);
}

static unsigned elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ms = (long long)(t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
    return ms < 0 ? 0 : (unsigned)ms;
}

/* Builds the model-list URL and the authentication headers for the provider type. */
static int request_for(const struct leo_probe *p, struct leo_buf *url, struct curl_slist **headers)
{
    struct leo_buf h = LEO_BUF_INIT;
    const char *secret = p->secret.p ? p->secret.p : "";
    int rc = 0;
    if (strcmp(p->type, "azure") == 0) {
        char *v = curl_easy_escape(NULL, p->api_version ? p->api_version : "", 0);
        leo_buf_addf(url, "%s/openai/models?api-version=%s", p->base_url, v ? v : "");
        curl_free(v);
        leo_buf_addf(&h, "api-key: %s", secret);
    } else if (strcmp(p->type, "anthropic") == 0) {
        leo_buf_addf(url, "%s/models", p->base_url);
        leo_buf_addf(&h, "x-api-key: %s", secret);
        *headers = curl_slist_append(*headers, "anthropic-version: " ANTHROPIC_VERSION);
    } else if (strcmp(p->type, "gemini") == 0) {
        leo_buf_addf(url, "%s/models", p->base_url);
        leo_buf_addf(&h, "x-goog-api-key: %s", secret);
    } else if (strcmp(p->type, "openai") == 0) {
        leo_buf_addf(url, "%s/models", p->base_url);
        leo_buf_addf(&h, "Authorization: Bearer %s", secret);
    } else {
        rc = -1;
    }
    if (rc == 0)
        *headers = curl_slist_append(*headers, h.p);
    /* curl_slist_append copied it */
    if (h.len)
        sodium_memzero(h.p, h.len);
    leo_buf_release(&h);
    return rc;
}

void leo_probe_run(struct leo_probe *p)
{
    pthread_once(&curl_once, curl_init_once);
    p->result = LEO_PROBE_UNREACHABLE;
    p->status = 0;
    p->latency_ms = 0;
    p->error[0] = '\0';

    struct leo_buf url = LEO_BUF_INIT;
    struct curl_slist *headers = NULL;
    if (request_for(p, &url, &headers) != 0) {
        set_error(p, "this provider type cannot be tested: ", p->type);
        curl_slist_free_all(headers);
        leo_buf_release(&url);
        return;
    }
    headers = curl_slist_append(headers, "Accept: application/json");
    struct body *b = leo_new(struct body);
    char curl_err[CURL_ERROR_SIZE] = "";
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url.p);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->total_timeout_ms);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_USERAGENT, "leo-controlplane provider test");

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CURLcode cc = curl_easy_perform(e);
    p->latency_ms = elapsed_ms(&t0);
    if (cc != CURLE_OK) {
        set_error(p, "cannot reach the provider: ", curl_err[0] ? curl_err : curl_easy_strerror(cc));
    } else {
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        p->status = (int)status;
        if (status >= 200 && status < 300) {
            p->result = LEO_PROBE_OK;
        } else {
            p->result = LEO_PROBE_REFUSED;
            char msg[LEO_PROBE_ERROR_MAX], prefix[48];
            upstream_message(b, msg, sizeof(msg));
            snprintf(prefix, sizeof(prefix), "the provider answered %ld%s", status, msg[0] ? ": " : "");
            set_error(p, prefix, msg);
        }
    }
    leo_probe_scrub(p->error, sizeof(p->error), p->secret.p ? p->secret.p : "", p->secret.len);
    curl_easy_cleanup(e);
    /* the header list holds the secret */
    for (struct curl_slist *s = headers; s; s = s->next)
        sodium_memzero(s->data, strlen(s->data));
    curl_slist_free_all(headers);
    sodium_memzero(b->data, b->len);
    leo_free(b);
    leo_buf_release(&url);
}

void leo_probe_metrics_describe(void)
{
    leo_metrics_describe("leo_cp_provider_tests_total", LEO_METRIC_COUNTER,
                         "Provider connection tests (POST /admin/v1/providers/{provider}/test), by provider type and "
                         "result (ok, refused, unreachable).");
}

void leo_probe_count(const struct leo_probe *p)
{
    struct leo_buf l = LEO_BUF_INIT;
    leo_buf_adds(&l, "type=\"");
    leo_metrics_label_value(&l, p->type, strlen(p->type));
    leo_buf_addf(&l, "\",result=\"%s\"", leo_probe_result_name(p->result));
    leo_metrics_add("leo_cp_provider_tests_total", l.p, 1);
    leo_buf_release(&l);
}
