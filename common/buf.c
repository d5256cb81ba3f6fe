#include "buf.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

char leo_buf__empty[1];

void leo_buf_init(struct leo_buf *b, size_t max, size_t hint)
{
    b->p = leo_buf__empty;
    b->len = 0;
    b->cap = 0;
    b->max = max;
    if (hint)
        leo_buf_grow(b, hint);
}

void leo_buf_release(struct leo_buf *b)
{
    if (b->cap)
        leo_free(b->p);
    b->p = leo_buf__empty;
    b->len = 0;
    b->cap = 0;
}

int leo_buf_grow(struct leo_buf *b, size_t n)
{
    if (b->max && (n > b->max || b->len > b->max - n))
        return LEO_ETOOBIG;
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap < (1u << 20) ? cap * 2 : cap + (cap >> 1);
    if (b->cap) {
        b->p = leo_realloc(b->p, cap);
    } else {
        b->p = leo_malloc(cap);
        b->p[0] = '\0';
    }
    b->cap = cap;
    return 0;
}

int leo_buf_add(struct leo_buf *b, const void *data, size_t n)
{
    int rc = leo_buf_grow(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int leo_buf_adds(struct leo_buf *b, const char *s)
{
    return leo_buf_add(b, s, strlen(s));
}

int leo_buf_addch(struct leo_buf *b, char c)
{
    return leo_buf_add(b, &c, 1);
}

int leo_buf_vaddf(struct leo_buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, cp);
    va_end(cp);
    if (n < 0)
        return LEO_EINVAL;
    if ((size_t)n < sizeof(small))
        return leo_buf_add(b, small, (size_t)n);
    int rc = leo_buf_grow(b, (size_t)n);
    if (rc)
        return rc;
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int leo_buf_addf(struct leo_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = leo_buf_vaddf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int leo_buf_add_uint(struct leo_buf *b, unsigned long long v)
{
    char tmp[24];
    char *e = tmp + sizeof(tmp), *p = e;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return leo_buf_add(b, p, (size_t)(e - p));
}

size_t leo_fmt_fixed(char *out, size_t size, double v, unsigned decimals)
{
    static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
    if (decimals > 9)
        decimals = 9;
    double scaled = (v < 0 ? -v : v) * pow10[decimals];
    if (!(scaled < 1e15)) { /* NaN, infinities, and values whose digits run past a double's precision */
        int n = snprintf(out, size, "%.*f", (int)decimals, v);
        return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size ? size - 1 : 0;
    }
    unsigned long long n = (unsigned long long)(scaled + 0.5);
    char tmp[48];
    char *e = tmp + sizeof(tmp), *p = e;
    for (unsigned i = 0; i < decimals; i++) {
        *--p = (char)('0' + n % 10);
        n /= 10;
    }
    if (decimals)
        *--p = '.';
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    if (signbit(v))
        *--p = '-';
    size_t len = (size_t)(e - p);
    if (size == 0)
        return 0;
    if (len >= size)
        len = size - 1;
    memcpy(out, p, len);
    out[len] = '\0';
    return len;
}

int leo_buf_add_fixed(struct leo_buf *b, double v, unsigned decimals)
{
    char tmp[512];
    size_t n = leo_fmt_fixed(tmp, sizeof(tmp), v, decimals);
    return leo_buf_add(b, tmp, n);
}

int leo_buf_add_json_escaped(struct leo_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                u[0] = '\\';
                u[1] = 'u';
                u[2] = '0';
                u[3] = '0';
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
            }
        }
        if (esc == NULL && c >= 0x20)
            continue;
        int rc = leo_buf_add(b, s + start, i - start);
        if (rc == 0)
            rc = esc ? leo_buf_adds(b, esc) : leo_buf_add(b, u, 6);
        if (rc)
            return rc;
        start = i + 1;
    }
    return leo_buf_add(b, s + start, n - start);
}

void leo_buf_consume(struct leo_buf *b, size_t n)
{
    if (n >= b->len) {
        leo_buf_reset(b);
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = '\0';
}

char *leo_buf_detach(struct leo_buf *b, size_t *len)
{
    char *p = b->cap ? b->p : leo_strdup("");
    if (len)
        *len = b->len;
    b->p = leo_buf__empty;
    b->len = 0;
    b->cap = 0;
    return p;
}
