#include "mock_reqlog.h"

#include <jansson.h>
#include <sodium.h>

#include "common/alloc.h"
#include "mock_format.h"

struct mock_reqlog_entry {
    char *json; /* the serialised entry, without "aborted" (added when dumped) */
    size_t len;
    uint64_t seq;
    bool aborted;
};

struct mock_reqlog {
    struct mock_reqlog_entry *ring;
    size_t capacity;
    size_t head;  /* index of the oldest entry */
    size_t count;
};

struct mock_reqlog *mock_reqlog_new(size_t capacity)
{
    struct mock_reqlog *log = leo_new(struct mock_reqlog);
    log->capacity = capacity;
    log->ring = leo_calloc(capacity ? capacity : 1, sizeof(*log->ring));
    return log;
}

void mock_reqlog_clear(struct mock_reqlog *log)
{
    for (size_t i = 0; i < log->count; i++)
        leo_free(log->ring[(log->head + i) % log->capacity].json);
    log->head = 0;
    log->count = 0;
}

void mock_reqlog_free(struct mock_reqlog *log)
{
    if (log == NULL)
        return;
    mock_reqlog_clear(log);
    leo_free(log->ring);
    leo_free(log);
}

size_t mock_reqlog_count(const struct mock_reqlog *log)
{
    return log->count;
}

static json_t *span_lossy(struct leo_str s)
{
    return mock_json_string_lossy(s.p, s.len);
}

static json_t *base64_string(const char *p, size_t len)
{
    size_t n = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = leo_malloc(n);
    sodium_bin2base64(b64, n, (const unsigned char *)p, len, sodium_base64_VARIANT_ORIGINAL);
    json_t *s = json_string(b64);
    leo_free(b64);
    return s;
}

void mock_reqlog_add(struct mock_reqlog *log, uint64_t seq, const struct leo_http_request *req)
{
    if (log->capacity == 0)
        return;
    json_t *e = json_object();
    json_object_set_new(e, "seq", json_integer((json_int_t)seq));
    json_object_set_new(e, "method", span_lossy(req->method));
    json_object_set_new(e, "url", span_lossy(req->url));
    json_object_set_new(e, "path", span_lossy(req->path));
    json_t *headers = json_array();
    for (size_t i = 0; i < req->nheaders; i++) {
        json_t *pair = json_array();
        json_array_append_new(pair, span_lossy(req->headers[i].name));
        json_array_append_new(pair, span_lossy(req->headers[i].value));
        json_array_append_new(headers, pair);
    }
    json_object_set_new(e, "headers", headers);
    size_t keep = req->body.len < MOCK_REQLOG_MAX_BODY ? req->body.len : MOCK_REQLOG_MAX_BODY;
    json_t *body = json_stringn(req->body.p, keep);
    if (body == NULL) {
        json_object_set_new(e, "body", mock_json_string_lossy(req->body.p, keep));
        json_object_set_new(e, "body_base64", base64_string(req->body.p, keep));
    } else {
        json_object_set_new(e, "body", body);
    }
    if (keep < req->body.len) {
        json_object_set_new(e, "body_truncated", json_true());
        json_object_set_new(e, "body_bytes", json_integer((json_int_t)req->body.len));
    }
    struct leo_buf b = LEO_BUF_INIT;
    mock_json_append(&b, e, 0);
    json_decref(e);

    struct mock_reqlog_entry *slot;
    if (log->count == log->capacity) {
        slot = &log->ring[log->head];
        leo_free(slot->json);
        log->head = (log->head + 1) % log->capacity;
    } else {
        slot = &log->ring[(log->head + log->count) % log->capacity];
        log->count++;
    }
    slot->json = leo_buf_detach(&b, &slot->len);
    slot->seq = seq;
    slot->aborted = false;
}

void mock_reqlog_mark_aborted(struct mock_reqlog *log, uint64_t seq)
{
    for (size_t i = 0; i < log->count; i++) {
        struct mock_reqlog_entry *en = &log->ring[(log->head + i) % log->capacity];
        if (en->seq == seq)
            en->aborted = true;
    }
}

void mock_reqlog_dump(const struct mock_reqlog *log, struct leo_buf *out)
{
    leo_buf_addch(out, '[');
    for (size_t i = 0; i < log->count; i++) {
        const struct mock_reqlog_entry *en = &log->ring[(log->head + i) % log->capacity];
        if (i)
            leo_buf_addch(out, ',');
        if (en->aborted && en->len > 0 && en->json[en->len - 1] == '}') {
            leo_buf_add(out, en->json, en->len - 1);
            leo_buf_adds(out, ",\"aborted\":true}");
        } else {
            leo_buf_add(out, en->json, en->len);
        }
    }
    leo_buf_addch(out, ']');
}
