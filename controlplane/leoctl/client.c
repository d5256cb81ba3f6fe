/*
 * client.c — the blocking HTTP client behind every leoctl command.
 */
#include "client.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"

int leoctl_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void leoctl_global_cleanup(void)
{
    curl_global_cleanup();
}

char *leoctl_base_url(const char *url, char *err, size_t errlen)
{
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
        snprintf(err, errlen, "--url \"%s\" is not an http:// or https:// URL", url);
        return NULL;
    }
    size_t n = strlen(url);
    for (;;) {
        while (n > 0 && url[n - 1] == '/')
            n--;
        if (n >= 9 && memcmp(url + n - 9, "/admin/v1", 9) == 0)
            n -= 9;
        else
            break;
    }
    size_t scheme = url[4] == 's' ? 8 : 7;
    if (n <= scheme) {
        snprintf(err, errlen, "--url \"%s\" names no host", url);
        return NULL;
    }
    return leo_strndup(url, n);
}

static size_t on_data(char *p, size_t size, size_t nmemb, void *arg)
{
    struct leo_buf *b = arg;
    size_t n = size * nmemb;
    if (leo_buf_add(b, p, n) != 0)
        return 0; /* over LEOCTL_MAX_BODY: curl stops with CURLE_WRITE_ERROR */
    return n;
}

int leoctl_request(const char *base, const char *token, const char *method, const char *path, json_t *body,
                   struct leoctl_response *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    struct leo_buf url = LEO_BUF_INIT, auth = LEO_BUF_INIT, resp = LEO_BUF_INIT;
    struct curl_slist *hdrs = NULL;
    char *payload = NULL;
    char curl_err[CURL_ERROR_SIZE] = "";
    int rc = -1;

    leo_buf_init(&resp, LEOCTL_MAX_BODY, 0);
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(err, errlen, "cannot create an HTTP handle");
        goto fail_handle;
    }
    leo_buf_addf(&url, "%s/admin/v1%s", base, path);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    if (token) {
        leo_buf_addf(&auth, "Authorization: Bearer %s", token);
        hdrs = curl_slist_append(hdrs, auth.p);
    }
    if (body) {
        payload = json_dumps(body, JSON_COMPACT);
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    }
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_URL, url.p);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "leoctl");
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);

    CURLcode cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        if (cc == CURLE_WRITE_ERROR)
            snprintf(err, errlen, "%s %s: the answer is larger than %u bytes", method, url.p, LEOCTL_MAX_BODY);
        else
            snprintf(err, errlen, "%s %s: %s", method, url.p, curl_err[0] ? curl_err : curl_easy_strerror(cc));
        goto fail_perform;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    out->len = resp.len;
    out->body = leo_buf_detach(&resp, NULL);
    if (out->len > 0)
        out->json = json_loadb(out->body, out->len, 0, NULL);
    rc = 0;

fail_perform:
    curl_easy_cleanup(h);
fail_handle:
    curl_slist_free_all(hdrs);
    free(payload);
    /* the Authorization line holds the session token: wipe it before the memory goes back */
    if (auth.len)
        memset(auth.p, 0, auth.len);
    leo_buf_release(&auth);
    leo_buf_release(&url);
    leo_buf_release(&resp);
    return rc;
}

void leoctl_response_release(struct leoctl_response *r)
{
    json_decref(r->json);
    leo_free(r->body);
    memset(r, 0, sizeof(*r));
}

const char *leoctl_error_message(const struct leoctl_response *r)
{
    json_t *e = json_object_get(r->json, "error");
    const char *m = json_string_value(json_object_get(e, "message"));
    if (m && *m)
        return m;
    return "unexpected answer from the control plane";
}

char *leoctl_escape(const char *s)
{
    struct leo_buf b = LEO_BUF_INIT;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '_' || *p == '.' || *p == '~')
            leo_buf_addch(&b, (char)*p);
        else
            leo_buf_addf(&b, "%%%02X", *p);
    }
    return leo_buf_detach(&b, NULL);
}
