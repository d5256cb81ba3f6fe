#include "json_scan.h"

#include <string.h>

#include "error.h"

static size_t skip_ws(const char *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* i at an opening quote; returns the offset after the closing quote, or 0 on error */
static size_t skip_string(const char *p, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (p[i] == '\\')
            i++;
        else if (p[i] == '"')
            return i + 1;
    }
    return 0;
}

/* i at the first byte of a value; returns the offset after it, or 0 on error. Nesting is tracked with a
 * depth counter only: strings are skipped whole, so brackets inside them do not count. */
static size_t skip_value(const char *p, size_t len, size_t i)
{
    if (i >= len)
        return 0;
    if (p[i] == '"')
        return skip_string(p, len, i);
    if (p[i] == '{' || p[i] == '[') {
        size_t depth = 0;
        while (i < len) {
            char c = p[i];
            if (c == '"') {
                i = skip_string(p, len, i);
                if (i == 0)
                    return 0;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return i + 1;
            }
            i++;
        }
        return 0;
    }
    /* number, true, false, null */
    size_t s = i;
    while (i < len && p[i] != ',' && p[i] != '}' && p[i] != ']' && p[i] != ' ' && p[i] != '\t' && p[i] != '\n' &&
           p[i] != '\r')
        i++;
    return i > s ? i : 0;
}

int leo_json_scan_object(const char *p, size_t len, int (*fn)(const struct leo_json_member *m, void *ud), void *ud,
                         size_t *close_brace)
{
    size_t i = skip_ws(p, len, 0);
    if (i >= len || p[i] != '{')
        return LEO_EPARSE;
    i = skip_ws(p, len, i + 1);
    if (i < len && p[i] == '}') {
        if (close_brace)
            *close_brace = i;
        return 0;
    }
    for (;;) {
        if (i >= len || p[i] != '"')
            return LEO_EPARSE;
        struct leo_json_member m;
        m.start = i;
        size_t kend = skip_string(p, len, i);
        if (kend == 0)
            return LEO_EPARSE;
        m.key = (struct leo_str){p + i + 1, kend - i - 2};
        i = skip_ws(p, len, kend);
        if (i >= len || p[i] != ':')
            return LEO_EPARSE;
        i = skip_ws(p, len, i + 1);
        m.value_start = i;
        m.value_end = skip_value(p, len, i);
        if (m.value_end == 0)
            return LEO_EPARSE;
        if (fn && fn(&m, ud))
            return 0;
        i = skip_ws(p, len, m.value_end);
        if (i < len && p[i] == ',') {
            i = skip_ws(p, len, i + 1);
            continue;
        }
        if (i < len && p[i] == '}') {
            if (close_brace)
                *close_brace = i;
            return 0;
        }
        return LEO_EPARSE;
    }
}

struct splice_state {
    const char *p;
    struct leo_json_edit *edits;
    size_t nedits;
    struct leo_buf *out;
    size_t copied;   /* bytes of p already copied */
    size_t last_end; /* end of the last member kept */
    int members_out; /* members written or kept so far */
    int err;
};

static int splice_member(const struct leo_json_member *m, void *ud)
{
    struct splice_state *s = ud;
    for (size_t i = 0; i < s->nedits; i++) {
        struct leo_json_edit *e = &s->edits[i];
        if (!leo_str_eqc(m->key, e->key))
            continue;
        e->_found = 1;
        if (e->remove) {
            /* drop the member and the comma that precedes it (or the one that follows, if first) */
            size_t from = s->members_out ? s->last_end : m->start;
            if (s->err == 0)
                s->err = leo_buf_add(s->out, s->p + s->copied, from - s->copied);
            size_t next = m->value_end;
            if (!s->members_out) {
                /* first member: swallow up to and including the following comma, if any */
                const char *q = s->p + next;
                while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
                    q++;
                if (*q == ',') {
                    q++;
                    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
                        q++;
                    next = (size_t)(q - s->p);
                }
            }
            s->copied = next;
            return 0;
        }
        if (s->err == 0)
            s->err = leo_buf_add(s->out, s->p + s->copied, m->value_start - s->copied);
        if (s->err == 0)
            s->err = leo_buf_addstr(s->out, e->value);
        s->copied = m->value_end;
        s->last_end = m->value_end;
        s->members_out++;
        return 0;
    }
    s->last_end = m->value_end;
    s->members_out++;
    return 0;
}

int leo_json_splice(const char *p, size_t len, struct leo_json_edit *edits, size_t nedits, struct leo_buf *out)
{
    for (size_t i = 0; i < nedits; i++)
        edits[i]._found = 0;
    struct splice_state s = {p, edits, nedits, out, 0, 0, 0, 0};
    size_t close = 0;
    int rc = leo_json_scan_object(p, len, splice_member, &s, &close);
    if (rc)
        return rc;
    if (s.err)
        return s.err;
    /* copy up to the closing brace, then append the members that were not there */
    rc = leo_buf_add(out, p + s.copied, close - s.copied);
    for (size_t i = 0; rc == 0 && i < nedits; i++) {
        struct leo_json_edit *e = &edits[i];
        if (e->_found || e->remove)
            continue;
        if (s.members_out++)
            rc = leo_buf_addch(out, ',');
        if (rc == 0)
            rc = leo_buf_addf(out, "\"%s\":", e->key);
        if (rc == 0)
            rc = leo_buf_addstr(out, e->value);
    }
    if (rc == 0)
        rc = leo_buf_add(out, p + close, len - close);
    return rc;
}
