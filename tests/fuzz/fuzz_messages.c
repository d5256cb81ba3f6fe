/*
 * fuzz_messages.c — the client-side Anthropic Messages dialect with arbitrary bytes.
 *
 * The whole input, parsed as JSON, goes through leo_messages_to_canonical (a client request) and
 * leo_messages_from_canonical (an upstream completion); then the input is read line by line as a stream:
 * "event: X" / "data: Y" lines feed leo_anthropic_event_usage (the passthrough usage parser), every other line
 * is parsed as a canonical chunk and fed to the stream translator. The stream ends with finish or error (the
 * input's last byte decides). Everything the translator wrote is then checked against the Anthropic event
 * grammar, so a wrong sequence aborts like a crash does:
 *   - every event is "event: <type>\ndata: <json>\n\n" and the JSON's "type" equals <type>;
 *   - message_start first (or an error at once), then blocks: content_block_start with index 0, 1, 2, ...,
 *     deltas and the stop for the open block only, a delta type that matches the block type;
 *   - after message_delta only message_stop; after message_stop or error nothing.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "gateway/providers/messages.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            abort();                                                                                                   \
    } while (0)

static const char *delta_for(const char *block_type)
{
    if (strcmp(block_type, "text") == 0)
        return "text_delta";
    if (strcmp(block_type, "tool_use") == 0)
        return "input_json_delta";
    return NULL; /* thinking: two kinds, checked below */
}

/* Validates the whole translated stream (see the opening comment). */
static void check_events(const char *p, size_t n)
{
    enum { BEFORE, IN_MESSAGE, AFTER_DELTA, DONE } state = BEFORE;
    long next_index = 0, open = -1;
    char open_type[16] = "";
    size_t pos = 0;
    while (pos < n) {
        CHECK(n - pos > 7 && memcmp(p + pos, "event: ", 7) == 0);
        const char *name = p + pos + 7;
        const char *nl = memchr(name, '\n', n - (size_t)(name - p));
        CHECK(nl != NULL);
        size_t name_len = (size_t)(nl - name);
        const char *data = nl + 1;
        CHECK((size_t)(data - p) + 6 <= n && memcmp(data, "data: ", 6) == 0);
        data += 6;
        const char *end = memchr(data, '\n', n - (size_t)(data - p));
        CHECK(end != NULL && (size_t)(end - p) + 1 < n && end[1] == '\n');
        json_t *ev = json_loadb(data, (size_t)(end - data), 0, NULL);
        CHECK(json_is_object(ev));
        const char *type = json_string_value(json_object_get(ev, "type"));
        CHECK(type != NULL && strlen(type) == name_len && memcmp(type, name, name_len) == 0);
        json_t *idx = json_object_get(ev, "index");

        CHECK(state != DONE);
        if (strcmp(type, "error") == 0) {
            CHECK(json_is_string(json_object_get(json_object_get(ev, "error"), "message")));
            state = DONE;
        } else if (strcmp(type, "message_start") == 0) {
            CHECK(state == BEFORE);
            state = IN_MESSAGE;
        } else if (strcmp(type, "content_block_start") == 0) {
            CHECK(state == IN_MESSAGE && open < 0 && json_integer_value(idx) == next_index);
            const char *bt = json_string_value(json_object_get(json_object_get(ev, "content_block"), "type"));
            CHECK(bt != NULL && strlen(bt) < sizeof(open_type));
            memcpy(open_type, bt, strlen(bt) + 1);
            open = next_index++;
        } else if (strcmp(type, "content_block_delta") == 0) {
            CHECK(state == IN_MESSAGE && open >= 0 && json_integer_value(idx) == open);
            const char *dt = json_string_value(json_object_get(json_object_get(ev, "delta"), "type"));
            const char *want = delta_for(open_type);
            CHECK(dt != NULL);
            if (want)
                CHECK(strcmp(dt, want) == 0);
            else
                CHECK(strcmp(dt, "thinking_delta") == 0 || strcmp(dt, "signature_delta") == 0);
        } else if (strcmp(type, "content_block_stop") == 0) {
            CHECK(state == IN_MESSAGE && open >= 0 && json_integer_value(idx) == open);
            open = -1;
        } else if (strcmp(type, "message_delta") == 0) {
            CHECK(state == IN_MESSAGE && open < 0);
            CHECK(json_is_string(json_object_get(json_object_get(ev, "delta"), "stop_reason")));
            CHECK(json_is_integer(json_object_get(json_object_get(ev, "usage"), "output_tokens")));
            state = AFTER_DELTA;
        } else if (strcmp(type, "message_stop") == 0) {
            CHECK(state == AFTER_DELTA);
            state = DONE;
        } else {
            CHECK(0);
        }
        json_decref(ev);
        pos = (size_t)(end - p) + 2;
    }
    CHECK(state == DONE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    struct leo_buf err = LEO_BUF_INIT;

    json_t *whole = json_loadb(in, size, JSON_DECODE_ANY, NULL);
    if (whole != NULL) {
        json_t *c = leo_messages_to_canonical(whole, &err);
        if (c != NULL) {
            CHECK(err.len == 0);
            char *s = json_dumps(c, JSON_COMPACT);
            CHECK(s != NULL);
            free(s);
            json_decref(c);
        } else {
            CHECK(err.len > 0);
        }
        leo_buf_reset(&err);
        json_t *m = leo_messages_from_canonical(whole, "claude", "msg_fuzz", &err);
        if (m != NULL) {
            char *s = json_dumps(m, JSON_COMPACT);
            CHECK(s != NULL);
            free(s);
            json_decref(m);
        } else {
            CHECK(err.len > 0);
        }
        leo_buf_reset(&err);
    }

    struct leo_messages_stream *st = leo_messages_stream_new("claude", "msg_fuzz", size);
    struct leo_buf out = LEO_BUF_INIT;
    struct leo_usage u = {0};
    struct leo_str event = {NULL, 0};
    bool failed = false;
    size_t pos = 0;
    while (pos < size) {
        const char *nl = memchr(in + pos, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - (in + pos)) : size - pos;
        struct leo_str line = {in + pos, len};
        pos += len + 1;
        if (leo_str_startswith(line, "event: ")) {
            event = (struct leo_str){line.p + 7, line.len - 7};
        } else if (leo_str_startswith(line, "data: ")) {
            leo_anthropic_event_usage(event, (struct leo_str){line.p + 6, line.len - 6}, &u);
            event = (struct leo_str){NULL, 0};
        } else if (!failed) {
            json_t *chunk = json_loadb(line.p, line.len, JSON_DECODE_ANY, NULL);
            if (chunk == NULL)
                chunk = json_stringn(line.p, line.len); /* not JSON: still a chunk, just a wrong one */
            if (leo_messages_stream_chunk(st, chunk, &out, &err) != 0) {
                CHECK(err.len > 0);
                failed = true;
            }
            json_decref(chunk);
        }
    }
    bool finish = !failed && (size == 0 || (data[size - 1] & 1) == 0);
    if (finish)
        leo_messages_stream_finish(st, u.have ? &u : NULL, &out);
    else
        leo_messages_stream_error(st, "api_error", err.len ? err.p : "cut", &out);
    check_events(out.p, out.len);

    leo_messages_stream_free(st);
    leo_buf_release(&out);
    leo_buf_release(&err);
    if (whole != NULL)
        json_decref(whole);
    return 0;
}
