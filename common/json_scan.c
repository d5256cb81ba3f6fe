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

/* ---- leo_json_find_member: a validating scan ---- */

/* One past a well-formed UTF-8 sequence starting at p[i] (a byte >= 0x80), or 0: no overlong forms, no
 * surrogates, nothing above U+10FFFF (the checks jansson makes). */
static size_t utf8_next(const unsigned char *p, size_t len, size_t i)
{
    unsigned char c = p[i];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (len - i < n || p[i + 1] < lo || p[i + 1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if (p[i + k] < 0x80 || p[i + k] > 0xBF)
            return 0;
    return i + n;
}

static int hex4(const unsigned char *p, size_t len, size_t i, unsigned *out)
{
    if (len < 4 || i > len - 4)
        return 0;
    unsigned v = 0;
    for (size_t k = 0; k < 4; k++) {
        unsigned char c = p[i + k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

/* i at an opening quote; one past the closing quote of a valid string, or 0 */
static size_t valid_string(const unsigned char *p, size_t len, size_t i)
{
    for (i++;;) {
        /* the common case, printable ASCII, in a tight loop */
        while (i < len && p[i] != '"' && p[i] != '\\' && p[i] >= 0x20 && p[i] < 0x80)
            i++;
        if (i >= len)
            return 0;
        unsigned char c = p[i];
        if (c == '"')
            return i + 1;
        if (c < 0x20)
            return 0;
        if (c >= 0x80) {
            i = utf8_next(p, len, i);
            if (i == 0)
                return 0;
            continue;
        }
        /* an escape */
        if (++i >= len)
            return 0;
        switch (p[i]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': i++; break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(p, len, i + 1, &cp) || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
                return 0;
            i += 5;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* a high surrogate must be followed by an escaped low one */
                if (len - i < 6 || p[i] != '\\' || p[i + 1] != 'u' || !hex4(p, len, i + 2, &lo) || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return 0;
                i += 6;
            }
            break;
        }
        default: return 0;
        }
    }
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* i at the first byte of a number or literal; one past its end, or 0 */
static size_t valid_scalar(const unsigned char *p, size_t len, size_t i)
{
    static const char *const literals[] = {"true", "false", "null"};
    for (size_t k = 0; k < 3; k++) {
        size_t n = strlen(literals[k]);
        if (p[i] == (unsigned char)literals[k][0])
            return len - i >= n && memcmp(p + i, literals[k], n) == 0 ? i + n : 0;
    }
    if (p[i] == '-')
        i++;
    if (i >= len)
        return 0;
    if (p[i] == '0') {
        i++;
    } else if (is_digit(p[i])) {
        while (i < len && is_digit(p[i]))
            i++;
    } else {
        return 0;
    }
    if (i < len && p[i] == '.') {
        if (++i >= len || !is_digit(p[i]))
            return 0;
        while (i < len && is_digit(p[i]))
            i++;
    }
    if (i < len && (p[i] == 'e' || p[i] == 'E')) {
        if (++i < len && (p[i] == '+' || p[i] == '-'))
            i++;
        if (i >= len || !is_digit(p[i]))
            return 0;
        while (i < len && is_digit(p[i]))
            i++;
    }
    return i;
}

/* One pass over the document with an explicit stack (one bit per level: object or array), so hostile nesting
 * costs 256 bytes of stack, not recursion. At depth 1 (the members of the top-level object) keys are compared
 * with `key` and the span of a matching member's value is kept when the value ends. */
int leo_json_find_member(const char *text, size_t len, const char *key, struct leo_str *value)
{
    const unsigned char *p = (const unsigned char *)text;
    unsigned char is_obj[LEO_JSON_MAX_DEPTH / 8];
    size_t depth = 0, klen = strlen(key), vstart = 0;
    int match = 0, found = 0;
    *value = (struct leo_str){text, 0};
    size_t i = skip_ws(text, len, 0);
    if (i >= len || p[i] != '{')
        return LEO_EPARSE;

value: /* i at the first byte of a value */
    if (i >= len)
        return LEO_EPARSE;
    if (p[i] == '{' || p[i] == '[') {
        if (depth == LEO_JSON_MAX_DEPTH)
            return LEO_EPARSE;
        int obj = p[i] == '{';
        if (obj)
            is_obj[depth / 8] |= (unsigned char)(1u << (depth % 8));
        else
            is_obj[depth / 8] &= (unsigned char)~(1u << (depth % 8));
        depth++;
        i = skip_ws(text, len, i + 1);
        if (i < len && p[i] == (obj ? '}' : ']')) {
            i++;
            depth--;
            goto after_value;
        }
        if (obj)
            goto member;
        goto value;
    }
    i = p[i] == '"' ? valid_string(p, len, i) : valid_scalar(p, len, i);
    if (i == 0)
        return LEO_EPARSE;

after_value: /* a value ends at i, inside the container at `depth` (0: the document) */
    if (depth == 0) {
        if (skip_ws(text, len, i) != len)
            return LEO_EPARSE;
        return found ? 0 : LEO_ENOTFOUND;
    }
    if (depth == 1 && match) {
        *value = (struct leo_str){text + vstart, i - vstart};
        found = 1;
        match = 0;
    }
    i = skip_ws(text, len, i);
    if (i >= len)
        return LEO_EPARSE;
    {
        int obj = (is_obj[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1;
        if (p[i] == ',') {
            i = skip_ws(text, len, i + 1);
            if (obj)
                goto member;
            goto value;
        }
        if (p[i] != (obj ? '}' : ']'))
            return LEO_EPARSE;
        i++;
        depth--;
        goto after_value;
    }

member: /* i at a member's key, inside an object */
    if (i >= len || p[i] != '"')
        return LEO_EPARSE;
    {
        size_t ks = i;
        i = valid_string(p, len, i);
        if (i == 0)
            return LEO_EPARSE;
        if (depth == 1)
            match = i - ks - 2 == klen && memcmp(p + ks + 1, key, klen) == 0;
    }
    i = skip_ws(text, len, i);
    if (i >= len || p[i] != ':')
        return LEO_EPARSE;
    i = skip_ws(text, len, i + 1);
    if (depth == 1)
        vstart = i;
    goto value;
}
