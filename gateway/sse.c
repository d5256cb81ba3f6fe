/*
 * sse.c — incremental Server-Sent Events parser and event framing (see sse.h for the rules followed).
 *
 * Lines that lie wholly inside one feed are parsed in place; only a line that crosses a feed boundary is
 * copied (into _line). Data and event name are copied into the pending event as their lines arrive, so the
 * upstream's buffers can be released as soon as feed returns.
 */
#include "sse.h"

#include <string.h>

#include "../common/error.h"

static const unsigned char utf8_bom[3] = {0xEF, 0xBB, 0xBF};

void leo_sse_parser_init(struct leo_sse_parser *p, size_t max_event_bytes, leo_sse_event_cb cb, void *ud)
{
    memset(p, 0, sizeof(*p));
    p->cb = cb;
    p->ud = ud;
    p->max = max_event_bytes;
    p->_line = (struct leo_buf)LEO_BUF_INIT;
    p->_data = (struct leo_buf)LEO_BUF_INIT;
    p->_event = (struct leo_buf)LEO_BUF_INIT;
    p->_id = (struct leo_buf)LEO_BUF_INIT;
}

static void free_buffers(struct leo_sse_parser *p)
{
    leo_buf_release(&p->_line);
    leo_buf_release(&p->_data);
    leo_buf_release(&p->_event);
    leo_buf_release(&p->_id);
}

void leo_sse_parser_release(struct leo_sse_parser *p)
{
    p->_stopped = true;
    if (p->_in_cb) {
        /* the spans the callback holds point into these buffers: free them once it has returned */
        p->_release_later = true;
        return;
    }
    free_buffers(p);
}

void leo_sse_parser_stop(struct leo_sse_parser *p)
{
    p->_stopped = true;
}

static int too_big(struct leo_sse_parser *p)
{
    p->_err = LEO_ETOOBIG;
    return LEO_ETOOBIG;
}

/* Index of the first "\r" or "\n" in s[0..n), or n. Two memchr scans beat a byte loop on long data lines. */
static size_t find_eol(const char *s, size_t n)
{
    const char *lf = memchr(s, '\n', n);
    size_t end = lf ? (size_t)(lf - s) : n;
    const char *cr = memchr(s, '\r', end);
    return cr ? (size_t)(cr - s) : end;
}

static void reset_event(struct leo_sse_parser *p)
{
    leo_buf_reset(&p->_data);
    leo_buf_reset(&p->_event);
    p->_has_data = false;
    p->_has_event = false;
    p->_pending = false;
}

static int dispatch(struct leo_sse_parser *p)
{
    if (!p->_has_data && !p->_has_event) {
        reset_event(p);
        return 0;
    }
    p->_in_cb = true;
    p->cb(p->ud, leo_buf_str(&p->_event), leo_buf_str(&p->_data), leo_buf_str(&p->_id));
    p->_in_cb = false;
    reset_event(p);
    return p->_stopped ? LEO_ECANCELED : 0;
}

static int process_line(struct leo_sse_parser *p, struct leo_str line)
{
    if (line.len == 0)
        return dispatch(p);
    if (line.p[0] == ':')
        return 0;
    struct leo_str field = line, value = {NULL, 0};
    const char *colon = memchr(line.p, ':', line.len);
    if (colon) {
        field.len = (size_t)(colon - line.p);
        value = leo_str_n(colon + 1, line.len - field.len - 1);
        if (value.len && value.p[0] == ' ') {
            value.p++;
            value.len--;
        }
    }
    p->_pending = true;
    if (leo_str_eqc(field, "data")) {
        size_t sep = p->_has_data ? 1 : 0;
        if (p->_data.len + p->_event.len + sep + value.len > p->max)
            return too_big(p);
        if (sep)
            leo_buf_addch(&p->_data, '\n');
        leo_buf_addstr(&p->_data, value);
        p->_has_data = true;
    } else if (leo_str_eqc(field, "event")) {
        if (p->_data.len + value.len > p->max)
            return too_big(p);
        leo_buf_reset(&p->_event);
        leo_buf_addstr(&p->_event, value);
        p->_has_event = true;
    } else if (leo_str_eqc(field, "id")) {
        if (value.len == 0 || memchr(value.p, '\0', value.len) == NULL) {
            leo_buf_reset(&p->_id);
            leo_buf_addstr(&p->_id, value);
        }
    }
    /* "retry" and unknown fields are ignored */
    return 0;
}

static int consume(struct leo_sse_parser *p, const char *s, size_t n)
{
    size_t i = 0;
    if (p->_skip_lf && n > 0) {
        if (s[0] == '\n')
            i = 1;
        p->_skip_lf = false;
    }
    while (i < n) {
        const char *start = s + i;
        size_t rem = n - i;
        size_t k = find_eol(start, rem);
        if (k == rem) {
            if (p->_line.len + rem > p->max)
                return too_big(p);
            leo_buf_add(&p->_line, start, rem);
            return 0;
        }
        struct leo_str line;
        if (p->_line.len) {
            if (p->_line.len + k > p->max)
                return too_big(p);
            leo_buf_add(&p->_line, start, k);
            line = leo_buf_str(&p->_line);
        } else {
            if (k > p->max)
                return too_big(p);
            line = leo_str_n(start, k);
        }
        i += k + 1;
        if (start[k] == '\r') {
            if (i < n) {
                if (s[i] == '\n')
                    i++;
            } else {
                p->_skip_lf = true;
            }
        }
        int rc = process_line(p, line);
        leo_buf_reset(&p->_line);
        if (rc)
            return rc;
    }
    return 0;
}

static int feed(struct leo_sse_parser *p, const char *bytes, size_t len)
{
    size_t i = 0;
    if (!p->_started) {
        while (i < len && p->_bom < sizeof(utf8_bom) && (unsigned char)bytes[i] == utf8_bom[p->_bom]) {
            p->_bom++;
            i++;
        }
        if (p->_bom == sizeof(utf8_bom)) {
            p->_started = true;
        } else if (i < len) {
            /* not a byte order mark after all: the bytes matched so far (possibly in earlier feeds) are
             * ordinary content */
            p->_started = true;
            int rc = consume(p, (const char *)utf8_bom, p->_bom);
            if (rc)
                return rc;
        } else {
            return 0; /* every byte so far may still be a byte order mark */
        }
    }
    return consume(p, bytes + i, len - i);
}

int leo_sse_parser_feed(struct leo_sse_parser *p, const char *bytes, size_t len)
{
    if (p->_err)
        return p->_err;
    if (p->_stopped)
        return LEO_ECANCELED;
    int rc = feed(p, bytes, len);
    if (p->_release_later) {
        p->_release_later = false;
        free_buffers(p);
    }
    return rc;
}

int leo_sse_parser_finish(struct leo_sse_parser *p)
{
    if (p->_err)
        return p->_err;
    if (p->_stopped)
        return LEO_ECANCELED;
    if (p->_line.len || p->_pending || (!p->_started && p->_bom))
        return LEO_EUPSTREAM;
    return 0;
}

int leo_sse_append_event(struct leo_buf *out, const char *event, const char *data, size_t len)
{
    size_t orig = out->len;
    int rc = 0;
    if (event) {
        rc |= leo_buf_adds(out, "event: ");
        rc |= leo_buf_add(out, event, strcspn(event, "\r\n"));
        rc |= leo_buf_addch(out, '\n');
    }
    size_t i = 0;
    for (;;) {
        size_t k = len ? find_eol(data + i, len - i) : 0;
        rc |= leo_buf_add(out, "data: ", 6);
        rc |= leo_buf_add(out, data + i, k);
        rc |= leo_buf_addch(out, '\n');
        if (i + k == len)
            break;
        i += k + 1;
        if (data[i - 1] == '\r' && i < len && data[i] == '\n')
            i++;
    }
    rc |= leo_buf_addch(out, '\n');
    if (rc) {
        /* a later append may have fitted where an earlier one did not: drop the whole event */
        out->len = orig;
        out->p[orig] = '\0';
        return LEO_ETOOBIG;
    }
    return 0;
}
