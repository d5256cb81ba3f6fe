#include "json_scan.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
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

int leo_json_scan_array(const char *p, size_t len, int (*fn)(struct leo_str elem, void *ud), void *ud)
{
    size_t i = skip_ws(p, len, 0);
    if (i >= len || p[i] != '[')
        return LEO_EPARSE;
    i = skip_ws(p, len, i + 1);
    if (i < len && p[i] == ']')
        return 0;
    for (;;) {
        size_t end = skip_value(p, len, i);
        if (end == 0)
            return LEO_EPARSE;
        if (fn(((struct leo_str){p + i, end - i}), ud))
            return 0;
        i = skip_ws(p, len, end);
        if (i < len && p[i] == ',') {
            i = skip_ws(p, len, i + 1);
            continue;
        }
        return i < len && p[i] == ']' ? 0 : LEO_EPARSE;
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

static size_t decode_string(const unsigned char *p, size_t len, size_t i, struct leo_buf *out, int *rc);

/* i at an opening quote; one past the closing quote of a valid string, or 0 */
static size_t valid_string(const unsigned char *p, size_t len, size_t i)
{
    int rc;
    return decode_string(p, len, i, NULL, &rc);
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
 * costs 256 bytes of stack, not recursion. At depth 1 (the members of the top-level object) each member is
 * handed to fn when its value ends. */
int leo_json_scan_members(const char *text, size_t len, void (*fn)(const struct leo_json_member *m, void *ud),
                          void *ud)
{
    const unsigned char *p = (const unsigned char *)text;
    unsigned char is_obj[LEO_JSON_MAX_DEPTH / 8];
    size_t depth = 0, vstart = 0, kstart = 0, kend = 0;
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
        return skip_ws(text, len, i) == len ? 0 : LEO_EPARSE;
    }
    if (depth == 1) {
        struct leo_json_member m = {{text + kstart + 1, kend - kstart - 2}, kstart, vstart, i};
        fn(&m, ud);
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
        if (depth == 1) {
            kstart = ks;
            kend = i;
        }
    }
    i = skip_ws(text, len, i);
    if (i >= len || p[i] != ':')
        return LEO_EPARSE;
    i = skip_ws(text, len, i + 1);
    if (depth == 1)
        vstart = i;
    goto value;
}

struct find {
    const char *text, *key;
    size_t klen;
    struct leo_str *value;
    int found;
};

static void find_one(const struct leo_json_member *m, void *ud)
{
    struct find *f = ud;
    /* a decoded key is never longer than its raw text; leo_json_key_is decodes only keys with a backslash */
    if (m->key.len >= f->klen && leo_json_key_is(m->key, f->key)) {
        *f->value = (struct leo_str){f->text + m->value_start, m->value_end - m->value_start};
        f->found = 1;
    }
}

int leo_json_find_member(const char *text, size_t len, const char *key, struct leo_str *value)
{
    struct find f = {text, key, strlen(key), value, 0};
    *value = (struct leo_str){text, 0};
    int rc = leo_json_scan_members(text, len, find_one, &f);
    if (rc != 0) {
        *value = (struct leo_str){text, 0};
        return rc;
    }
    return f.found ? 0 : LEO_ENOTFOUND;
}

/* True when jansson accepts the magnitude of every number in the validated value v. Short numbers are decided
 * without a copy: an integer of up to 18 digits always fits, and a real without an exponent needs over 300
 * digits to overflow. */
static int numbers_fit(struct leo_str v)
{
    const unsigned char *p = (const unsigned char *)v.p;
    for (size_t i = 0; i < v.len;) {
        if (p[i] == '"') {
            i = skip_string(v.p, v.len, i);
            if (i == 0)
                return 0;
            continue;
        }
        if (p[i] != '-' && !is_digit(p[i])) {
            i++;
            continue;
        }
        size_t e = valid_scalar(p, v.len, i);
        if (e == 0)
            return 0;
        struct leo_str n = {v.p + i, e - i};
        if ((n.len > 18 || memchr(n.p, 'e', n.len) != NULL || memchr(n.p, 'E', n.len) != NULL) &&
            leo_json_number(n, NULL, NULL) < 0)
            return 0;
        i = e;
    }
    return 1;
}

struct get {
    const char *text;
    const char *const *keys;
    size_t n;
    struct leo_str *values;
    int too_big;
};

static void get_one(const struct leo_json_member *m, void *ud)
{
    struct get *g = ud;
    struct leo_str v = {g->text + m->value_start, m->value_end - m->value_start};
    if (!g->too_big && !numbers_fit(v))
        g->too_big = 1;
    for (size_t i = 0; i < g->n; i++)
        if (leo_json_key_is(m->key, g->keys[i]))
            g->values[i] = v;
}

int leo_json_get_members(const char *text, size_t len, const char *const *keys, size_t n, struct leo_str *values)
{
    struct get g = {text, keys, n, values, 0};
    for (size_t i = 0; i < n; i++)
        values[i] = (struct leo_str){NULL, 0};
    int rc = leo_json_scan_members(text, len, get_one, &g);
    if (rc == 0 && g.too_big)
        rc = LEO_EPARSE;
    for (size_t i = 0; rc != 0 && i < n; i++)
        values[i] = (struct leo_str){NULL, 0};
    return rc;
}

/* ---- leo_json_canonical: the canonical text without a tree ---- */

/* Appends the code point cp as UTF-8. */
static int add_utf8(struct leo_buf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return leo_buf_add(b, u, n);
}

/* i at an opening quote: validates the string (RFC 8259: valid escapes and UTF-8, no control characters,
 * \u0000 refused as jansson does) and appends its decoded bytes to out (NULL: validation only). One past the
 * closing quote, or 0 (*rc says why: LEO_EPARSE or LEO_ETOOBIG). */
static size_t decode_string(const unsigned char *p, size_t len, size_t i, struct leo_buf *out, int *rc)
{
    *rc = LEO_EPARSE;
    size_t run = ++i; /* the start of the bytes not yet copied */
    for (;;) {
        while (i < len && p[i] != '"' && p[i] != '\\' && p[i] >= 0x20 && p[i] < 0x80)
            i++;
        if (i >= len)
            return 0;
        unsigned char c = p[i];
        if (c >= 0x80) {
            i = utf8_next(p, len, i);
            if (i == 0)
                return 0;
            continue; /* the run goes on through the multi-byte sequence */
        }
        if (out && i > run && leo_buf_add(out, p + run, i - run) != 0) {
            *rc = LEO_ETOOBIG;
            return 0;
        }
        if (c == '"') {
            *rc = 0;
            return i + 1;
        }
        if (c < 0x20 || ++i >= len)
            return 0;
        unsigned cp;
        switch (p[i]) {
        case '"': case '\\': case '/': cp = p[i]; i++; break;
        case 'b': cp = '\b'; i++; break;
        case 'f': cp = '\f'; i++; break;
        case 'n': cp = '\n'; i++; break;
        case 'r': cp = '\r'; i++; break;
        case 't': cp = '\t'; i++; break;
        case 'u': {
            unsigned lo;
            if (!hex4(p, len, i + 1, &cp) || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
                return 0;
            i += 5;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (len - i < 6 || p[i] != '\\' || p[i + 1] != 'u' || !hex4(p, len, i + 2, &lo) || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return 0;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
            break;
        }
        default: return 0;
        }
        if (out && add_utf8(out, cp) != 0) {
            *rc = LEO_ETOOBIG;
            return 0;
        }
        run = i;
    }
}

int leo_json_is_integer(struct leo_str raw)
{
    return raw.len > 0 && (raw.p[0] == '-' || is_digit((unsigned char)raw.p[0])) && memchr(raw.p, '.', raw.len) == NULL &&
           memchr(raw.p, 'e', raw.len) == NULL && memchr(raw.p, 'E', raw.len) == NULL;
}

int leo_json_number(struct leo_str raw, int64_t *i, double *d)
{
    if (raw.len == 0 || (raw.p[0] != '-' && !is_digit((unsigned char)raw.p[0])))
        return LEO_EPARSE;
    char small[64], *t = small;
    if (raw.len >= sizeof(small))
        t = leo_malloc(raw.len + 1);
    memcpy(t, raw.p, raw.len);
    t[raw.len] = '\0';
    int rc;
    errno = 0;
    if (strpbrk(t, ".eE") == NULL) {
        long long v = strtoll(t, NULL, 10);
        rc = errno == ERANGE ? LEO_EPARSE : 1;
        if (i)
            *i = v;
    } else {
        double v = strtod(t, NULL); /* an underflow is 0 for jansson too */
        rc = errno == ERANGE && (v == HUGE_VAL || v == -HUGE_VAL) ? LEO_EPARSE : 0;
        if (d)
            *d = v;
    }
    if (t != small)
        leo_free(t);
    return rc;
}

int leo_json_key_is(struct leo_str raw_key, const char *name)
{
    if (memchr(raw_key.p, '\\', raw_key.len) == NULL)
        return leo_str_eqc(raw_key, name);
    /* escapes: rare in keys; decode a quoted copy */
    struct leo_buf lit = LEO_BUF_INIT, dec = LEO_BUF_INIT;
    leo_buf_addch(&lit, '"');
    leo_buf_add(&lit, raw_key.p, raw_key.len);
    leo_buf_addch(&lit, '"');
    int same = leo_json_string_decode((struct leo_str){lit.p, lit.len}, &dec) == 0 &&
               leo_str_eqc((struct leo_str){dec.p, dec.len}, name);
    leo_buf_release(&lit);
    leo_buf_release(&dec);
    return same;
}

int leo_json_string_decode(struct leo_str raw, struct leo_buf *out)
{
    int rc;
    const unsigned char *p = (const unsigned char *)raw.p;
    if (raw.len < 2 || p[0] != '"')
        return LEO_EPARSE;
    size_t end = decode_string(p, raw.len, 0, out, &rc);
    return end == raw.len ? 0 : rc ? rc : LEO_EPARSE;
}

struct canon_member {
    size_t key, key_len; /* the decoded key in canon.keys */
    size_t seg, seg_len; /* `"key":value` in the output */
    size_t order;
};

struct canon {
    const unsigned char *p;
    size_t len;
    struct leo_buf *out;
    struct leo_buf keys;    /* the decoded keys of the objects being written */
    struct leo_buf scratch; /* decoded strings; an object's members while they are put in order */
    struct canon_member *m; /* the members of the objects being written, innermost last */
    size_t n, cap;
    const struct leo_json_canon_opts *opts;
    int rc;
};

static void truncate_buf(struct leo_buf *b, size_t n)
{
    if (n < b->len) {
        b->len = n;
        b->p[n] = '\0';
    }
}

static int member_cmp(const struct canon *c, const struct canon_member *x, const struct canon_member *y)
{
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int d = memcmp(c->keys.p + x->key, c->keys.p + y->key, n);
    if (d == 0)
        d = (x->key_len > y->key_len) - (x->key_len < y->key_len);
    return d ? d : (x->order > y->order) - (x->order < y->order);
}

/* Insertion sort by (key, order): objects in requests have a handful of members. */
static void sort_members(const struct canon *c, struct canon_member *m, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        struct canon_member t = m[i];
        size_t j = i;
        while (j > 0 && member_cmp(c, &m[j - 1], &t) > 0) {
            m[j] = m[j - 1];
            j--;
        }
        m[j] = t;
    }
}

/* A number token p[s..e) (validated): an integral value as an integer, any other with %.17g; jansson's
 * refusals (integers beyond 64 bits, reals that overflow) as LEO_EPARSE. */
static int canon_number(struct canon *c, size_t s, size_t e)
{
    int64_t v;
    double d;
    int kind = leo_json_number((struct leo_str){(const char *)c->p + s, e - s}, &v, &d);
    if (kind < 0)
        return kind;
    if (kind == 0) {
        if (!(isfinite(d) && d == floor(d) && fabs(d) < 9.0e18))
            return leo_buf_addf(c->out, "%.17g", d);
        v = (int64_t)d;
    }
    if (v < 0)
        return leo_buf_addch(c->out, '-') ? LEO_ETOOBIG : leo_buf_add_uint(c->out, 0ULL - (unsigned long long)v);
    return leo_buf_add_uint(c->out, (unsigned long long)v);
}

/* A string value: escapes decoded and written again (the raw text when it has none: then it holds no '"', '\\'
 * or control character, and escaping the decoded bytes gives it back). */
static size_t canon_string(struct canon *c, size_t i)
{
    size_t e = valid_string(c->p, c->len, i);
    if (e == 0) {
        c->rc = LEO_EPARSE;
        return 0;
    }
    if (memchr(c->p + i + 1, '\\', e - i - 2) == NULL) {
        c->rc = leo_buf_add(c->out, c->p + i, e - i);
        return c->rc ? 0 : e;
    }
    truncate_buf(&c->scratch, 0);
    decode_string(c->p, c->len, i, &c->scratch, &c->rc);
    if (c->rc == 0)
        c->rc = leo_buf_addch(c->out, '"');
    if (c->rc == 0)
        c->rc = leo_buf_add_json_escaped(c->out, c->scratch.p, c->scratch.len);
    if (c->rc == 0)
        c->rc = leo_buf_addch(c->out, '"');
    return c->rc ? 0 : e;
}

static size_t canon_value(struct canon *c, size_t i, size_t depth);

/* After a member or element ending at *i: 1 with *i at the next one (a comma passed), 0 with *i at the closing
 * byte `close`, -1 on anything else. */
static int next_member(const struct canon *c, size_t *i, char close)
{
    size_t j = skip_ws((const char *)c->p, c->len, *i);
    if (j < c->len && c->p[j] == ',') {
        *i = skip_ws((const char *)c->p, c->len, j + 1);
        return 1;
    }
    *i = j;
    return j < c->len && c->p[j] == (unsigned char)close ? 0 : -1;
}

/* i at '{'. Members are written as they come, then put in key order (the last of a repeated key kept). */
static size_t canon_object(struct canon *c, size_t i, size_t depth)
{
    const unsigned char *p = c->p;
    size_t base = c->n, keys_base = c->keys.len;
    int top = depth == 1;
    if ((c->rc = leo_buf_addch(c->out, '{')) != 0)
        return 0;
    size_t body = c->out->len;
    i = skip_ws((const char *)p, c->len, i + 1);
    if (i < c->len && p[i] == '}')
        goto close;
    for (size_t order = 0;; order++) {
        if (i >= c->len || p[i] != '"')
            goto bad;
        size_t key = c->keys.len;
        i = decode_string(p, c->len, i, &c->keys, &c->rc);
        if (i == 0)
            return 0;
        size_t key_len = c->keys.len - key;
        i = skip_ws((const char *)p, c->len, i);
        if (i >= c->len || p[i] != ':')
            goto bad;
        i = skip_ws((const char *)p, c->len, i + 1);
        size_t seg = c->out->len + (c->n > base);
        int skip = top && c->opts && c->opts->skip && c->opts->skip(c->keys.p + key, key_len, c->opts->ud);
        if (c->n > base && (c->rc = leo_buf_addch(c->out, ',')) != 0)
            return 0;
        if ((c->rc = leo_buf_addch(c->out, '"')) != 0 ||
            (c->rc = leo_buf_add_json_escaped(c->out, c->keys.p + key, key_len)) != 0 ||
            (c->rc = leo_buf_add(c->out, "\":", 2)) != 0)
            return 0;
        i = canon_value(c, i, depth);
        if (i == 0)
            return 0;
        if (skip) {
            truncate_buf(c->out, seg - (c->n > base));
            truncate_buf(&c->keys, key);
        } else {
            if (c->n == c->cap) {
                c->cap = c->cap ? 2 * c->cap : 16;
                c->m = leo_realloc(c->m, c->cap * sizeof(*c->m));
            }
            c->m[c->n++] = (struct canon_member){key, key_len, seg, c->out->len - seg, order};
        }
        int more = next_member(c, &i, '}');
        if (more < 0)
            goto bad;
        if (!more)
            break;
    }
    {
        struct canon_member *m = c->m + base;
        size_t n = c->n - base, kept = 0;
        int in_order = 1;
        for (size_t k = 1; k < n && in_order; k++)
            in_order = member_cmp(c, &m[k - 1], &m[k]) < 0 &&
                       !(m[k - 1].key_len == m[k].key_len &&
                         memcmp(c->keys.p + m[k - 1].key, c->keys.p + m[k].key, m[k].key_len) == 0);
        if (!in_order) {
            sort_members(c, m, n);
            truncate_buf(&c->scratch, 0);
            if ((c->rc = leo_buf_add(&c->scratch, c->out->p + body, c->out->len - body)) != 0)
                return 0;
            truncate_buf(c->out, body);
            for (size_t k = 0; k < n; k++) {
                if (k + 1 < n && m[k + 1].key_len == m[k].key_len &&
                    memcmp(c->keys.p + m[k + 1].key, c->keys.p + m[k].key, m[k].key_len) == 0)
                    continue; /* a later value of the same key wins */
                if ((kept++ && (c->rc = leo_buf_addch(c->out, ',')) != 0) ||
                    (c->rc = leo_buf_add(c->out, c->scratch.p + (m[k].seg - body), m[k].seg_len)) != 0)
                    return 0;
            }
        }
    }
close:
    c->n = base;
    truncate_buf(&c->keys, keys_base);
    c->rc = leo_buf_addch(c->out, '}');
    return c->rc ? 0 : i + 1;
bad:
    c->rc = LEO_EPARSE;
    return 0;
}

/* i at the first byte of a value inside `depth` containers; one past its end, or 0 with c->rc set */
static size_t canon_value(struct canon *c, size_t i, size_t depth)
{
    const unsigned char *p = c->p;
    if (i >= c->len)
        goto bad;
    if (p[i] == '{' || p[i] == '[') {
        /* jansson counts every value, scalars included, against its limit */
        if (depth + 1 >= LEO_JSON_MAX_DEPTH)
            goto bad;
        if (p[i] == '{')
            return canon_object(c, i, depth + 1);
        if ((c->rc = leo_buf_addch(c->out, '[')) != 0)
            return 0;
        i = skip_ws((const char *)p, c->len, i + 1);
        if (i < c->len && p[i] == ']')
            goto close_array;
        for (int first = 1;; first = 0) {
            if (!first && (c->rc = leo_buf_addch(c->out, ',')) != 0)
                return 0;
            i = canon_value(c, i, depth + 1);
            if (i == 0)
                return 0;
            int more = next_member(c, &i, ']');
            if (more < 0)
                goto bad;
            if (!more)
                break;
        }
    close_array:
        c->rc = leo_buf_addch(c->out, ']');
        return c->rc ? 0 : i + 1;
    }
    if (p[i] == '"')
        return canon_string(c, i);
    size_t e = valid_scalar(p, c->len, i);
    if (e == 0)
        goto bad;
    if (p[i] == 't' || p[i] == 'f' || p[i] == 'n')
        c->rc = leo_buf_add(c->out, p + i, e - i);
    else
        c->rc = canon_number(c, i, e);
    return c->rc ? 0 : e;
bad:
    c->rc = LEO_EPARSE;
    return 0;
}

int leo_json_canonical(const char *p, size_t len, const struct leo_json_canon_opts *opts, struct leo_buf *out)
{
    struct canon c = {(const unsigned char *)p, len, out, LEO_BUF_INIT, LEO_BUF_INIT, NULL, 0, 0, opts, 0};
    size_t start = out->len, i = skip_ws(p, len, 0);
    if (i < len && p[i] == '{') {
        i = canon_object(&c, i, 1);
        if (i != 0 && skip_ws(p, len, i) != len)
            c.rc = LEO_EPARSE;
    } else {
        c.rc = LEO_EPARSE;
    }
    leo_buf_release(&c.keys);
    leo_buf_release(&c.scratch);
    leo_free(c.m);
    if (c.rc != 0)
        truncate_buf(out, start);
    return c.rc;
}
