#include "mock_format.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/alloc.h"

int mock_error_set(struct mock_error *e, int status, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    e->status = status;
    e->param = param;
    return status;
}

void mock_events_reset(struct mock_events *ev)
{
    leo_buf_reset(&ev->data);
    ev->n = 0;
}

void mock_events_commit(struct mock_events *ev)
{
    if (ev->n == MOCK_EVENTS_MAX) {
        fprintf(stderr, "fatal: a mock format rendered more than %d events for one step\n", MOCK_EVENTS_MAX);
        abort();
    }
    ev->end[ev->n++] = ev->data.len;
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    leo_buf_add(data, buffer, size);
    return 0;
}

void mock_json_append(struct leo_buf *out, const json_t *j, size_t flags)
{
    json_dump_callback(j, dump_cb, out, JSON_COMPACT | flags);
}

void mock_events_add_sse_json(struct mock_events *ev, json_t *j, size_t flags)
{
    leo_buf_adds(&ev->data, "data: ");
    mock_json_append(&ev->data, j, flags);
    leo_buf_adds(&ev->data, "\n\n");
    mock_events_commit(ev);
}

void mock_events_add_framed(struct mock_events *ev, const char *before, const json_t *j, const char *after)
{
    leo_buf_adds(&ev->data, before);
    mock_json_append(&ev->data, j, 0);
    leo_buf_adds(&ev->data, after);
    mock_events_commit(ev);
}

void mock_events_add_sse_named(struct mock_events *ev, const char *name, const json_t *j)
{
    leo_buf_addf(&ev->data, "event: %s\ndata: ", name);
    mock_json_append(&ev->data, j, 0);
    leo_buf_adds(&ev->data, "\n\n");
    mock_events_commit(ev);
}

json_t *mock_json_load_object(const char *body, size_t len, struct mock_error *err)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (root == NULL) {
        mock_error_set(err, 400, NULL, "request body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                       je.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        mock_error_set(err, 400, NULL, "request body must be a JSON object");
        return NULL;
    }
    return root;
}

json_t *mock_json_span(struct leo_str s)
{
    json_t *j = json_stringn(s.p ? s.p : "", s.len);
    if (j == NULL) /* only on out-of-memory: the chat's strings are valid UTF-8 */
        abort();
    return j;
}

/* FNV-1a over the input, seeded per dimension, then a splitmix64 finaliser so that nearby seeds give
 * unrelated values. */
static uint64_t dim_hash(const char *p, size_t len, unsigned dim)
{
    uint64_t h = 14695981039346656037ull ^ ((uint64_t)(dim + 1) * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

void mock_embed(const char *p, size_t len, unsigned dims, float *v)
{
    double norm = 0;
    for (unsigned d = 0; d < dims; d++) {
        double x = (double)(dim_hash(p, len, d) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        v[d] = (float)x;
        norm += x * x;
    }
    norm = sqrt(norm);
    if (norm > 0)
        for (unsigned d = 0; d < dims; d++)
            v[d] = (float)(v[d] / norm);
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when the bytes there are not one. Rejects overlong
 * forms, surrogates and code points above U+10FFFF, as jansson does. */
static size_t utf8_valid_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

json_t *mock_json_string_lossy(const char *p, size_t len)
{
    json_t *s = json_stringn(p, len);
    if (s != NULL)
        return s;
    struct leo_buf b = LEO_BUF_INIT;
    const unsigned char *u = (const unsigned char *)p;
    size_t i = 0;
    while (i < len) {
        size_t k = utf8_valid_seq(u + i, len - i);
        if (k == 0) {
            leo_buf_adds(&b, "\xef\xbf\xbd");
            i++;
        } else {
            leo_buf_add(&b, p + i, k);
            i += k;
        }
    }
    s = json_stringn(b.p, b.len);
    leo_buf_release(&b);
    if (s == NULL) /* cannot happen: b holds valid UTF-8 only; treat as out-of-memory */
        abort();
    return s;
}
