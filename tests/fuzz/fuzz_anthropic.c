/*
 * fuzz_anthropic.c — the Anthropic adapter with arbitrary bytes. Each input is used three ways:
 *   - as a whole Messages response body for parse_chat;
 *   - as an SSE stream for the stream translator: "event:" lines name the event, every "data:" line is one
 *     event, fed until the translator reports the end or an error, then stream_end (as the engine does);
 *   - as a canonical request for build_chat when it parses as a JSON object.
 * Every chunk, response and request produced must serialise to JSON that parses again; anything else aborts.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "gateway/providers/anthropic.h"

static const struct leo_adapter_ctx ctx = {
    .model = "claude-fuzz",
    .default_max_tokens = 1024,
    .response_id = "chatcmpl-fuzz",
    .created = 1700000000,
};

static void must_roundtrip(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (s == NULL)
        abort();
    json_t *back = json_loads(s, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (back == NULL)
        abort();
    json_decref(back);
    free(s);
}

static void check_usage(const struct leo_usage *u)
{
    if (u->have && (u->cache_read_tokens > u->input_tokens || u->cache_write_tokens > u->input_tokens))
        abort();
}

static void fuzz_parse(const char *p, size_t n)
{
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    json_t *res = leo_adapter_anthropic.parse_chat(p, n, &ctx, &u, &err);
    if (res == NULL && err.len == 0)
        abort(); /* a failure always says why */
    if (res != NULL)
        must_roundtrip(res);
    check_usage(&u);
    json_decref(res);
    leo_buf_release(&err);

    char msg[64];
    leo_adapter_anthropic.error_message(p, n, msg, sizeof(msg));
    if (strlen(msg) >= sizeof(msg))
        abort();
}

static void fuzz_stream(const char *p, size_t n)
{
    struct leo_stream_xlate *st = leo_adapter_anthropic.stream_new(&ctx);
    struct leo_usage u = {0};
    struct leo_buf err = LEO_BUF_INIT;
    json_t *out = json_array();
    struct leo_str event = {NULL, 0};
    int rc = 0;
    const char *end = p + n;
    while (p < end && rc == 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        struct leo_str line = leo_str_n(p, nl ? (size_t)(nl - p) : (size_t)(end - p));
        p = nl ? nl + 1 : end;
        if (leo_str_startswith(line, "event:")) {
            event = leo_str_trim(leo_str_n(line.p + 6, line.len - 6));
        } else if (leo_str_startswith(line, "data:")) {
            struct leo_str data = leo_str_n(line.p + 5, line.len - 5);
            if (data.len && data.p[0] == ' ') {
                data.p++;
                data.len--;
            }
            rc = leo_adapter_anthropic.stream_event(st, event, data, out, &u, &err);
            if (rc < 0 && err.len == 0)
                abort();
        }
    }
    if (rc == 0 && leo_adapter_anthropic.stream_end(st, out, &u, &err) < 0 && err.len == 0)
        abort();
    must_roundtrip(out);
    check_usage(&u);
    json_decref(out);
    leo_buf_release(&err);
    leo_adapter_anthropic.stream_free(st);
}

static void fuzz_build(const char *p, size_t n)
{
    json_t *canon = json_loadb(p, n, 0, NULL);
    if (!json_is_object(canon)) {
        json_decref(canon);
        return;
    }
    struct leo_buf body = LEO_BUF_INIT, err = LEO_BUF_INIT;
    int rc = leo_adapter_anthropic.build_chat(canon, &ctx, &body, &err);
    if (rc == 0) {
        json_t *back = json_loadb(body.p, body.len, JSON_ALLOW_NUL, NULL);
        if (!json_is_object(back) || !json_is_array(json_object_get(back, "messages")))
            abort();
        json_decref(back);
    } else if (err.len == 0) {
        abort();
    }
    json_decref(canon);
    leo_buf_release(&body);
    leo_buf_release(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    fuzz_parse(p, size);
    fuzz_stream(p, size);
    fuzz_build(p, size);
    return 0;
}
