/*
 * fuzz_gemini.c — the Gemini adapter on arbitrary bytes. One input drives every entry point that sees bytes
 * from outside: the whole input as a generateContent response body (parse_chat) and as an error body
 * (error_message); the input split at blank lines into SSE events (a leading "data: " is stripped, as the SSE
 * parser would) fed to the stream translator, then stream_end; and, when the input is a JSON object, the input
 * as a canonical client request (build_chat). Every output must be well-formed: chunks are objects, a
 * translated response is an object, a successful build is JSON.
 */
#define _GNU_SOURCE /* memmem */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/error.h"
#include "gateway/providers/gemini.h"

static const struct leo_adapter_ctx ctx = {
    .model = "gemini-fuzz",
    .default_max_tokens = 1024,
    .response_id = "chatcmpl-fuzz",
    .created = 1,
};

static void check_chunks(json_t *out)
{
    size_t i;
    json_t *c;
    json_array_foreach(out, i, c)
    {
        if (!json_is_object(c) || !json_is_array(json_object_get(c, "choices")))
            abort();
    }
}

static void fuzz_stream(const char *p, size_t n)
{
    const struct leo_adapter *a = &leo_adapter_gemini;
    struct leo_stream_xlate *st = a->stream_new(&ctx);
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    json_t *out = json_array();
    size_t off = 0;
    int rc = 0;
    while (off < n && rc == 0) {
        const char *sep = memmem(p + off, n - off, "\n\n", 2);
        size_t len = sep ? (size_t)(sep - (p + off)) : n - off;
        struct leo_str data = {p + off, len};
        if (data.len >= 6 && memcmp(data.p, "data: ", 6) == 0) {
            data.p += 6;
            data.len -= 6;
        }
        rc = a->stream_event(st, leo_str_c(""), data, out, &u, &err);
        if (rc == 1 || (rc != 0 && rc != LEO_EUPSTREAM))
            abort(); /* Gemini has no end event; the only failure is an unusable upstream */
        off += len + (sep ? 2 : 0);
    }
    if (rc == 0) {
        rc = a->stream_end(st, out, &u, &err);
        if (rc != 0 && rc != LEO_EUPSTREAM)
            abort();
    }
    if (rc != 0 && err.len == 0)
        abort(); /* a failure always says why */
    check_chunks(out);
    json_decref(out);
    leo_buf_release(&err);
    a->stream_free(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct leo_adapter *a = &leo_adapter_gemini;
    const char *p = (const char *)data;

    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    json_t *resp = a->parse_chat(p, size, &ctx, &u, &err);
    if (resp == NULL ? err.len == 0 : !json_is_object(resp))
        abort();
    json_decref(resp);
    leo_buf_release(&err);

    char msg[64];
    a->error_message(p, size, msg, sizeof(msg));
    if (strlen(msg) >= sizeof(msg))
        abort();

    fuzz_stream(p, size);

    json_t *req = json_loadb(p, size, 0, NULL);
    if (json_is_object(req)) {
        struct leo_buf body = LEO_BUF_INIT;
        int rc = a->build_chat(req, &ctx, &body, &err);
        if (rc == 0) {
            json_t *check = json_loadb(body.p, body.len, 0, NULL);
            if (!json_is_object(check))
                abort();
            json_decref(check);
        } else if (rc != LEO_EINVAL || err.len == 0) {
            abort();
        }
        leo_buf_release(&body);
        leo_buf_release(&err);
    }
    json_decref(req);
    return 0;
}
