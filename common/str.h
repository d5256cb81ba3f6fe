/*
 * str.h — byte spans passed by value.
 *
 * A struct leo_str borrows memory it does not own: it is valid only as long as the buffer it points into.
 * It is not NUL-terminated. { NULL, 0 } is the empty span.
 */
#ifndef LEO_STR_H
#define LEO_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

struct leo_str {
    const char *p;
    size_t len;
};

/** A span over a string literal. */
#define LEO_STR_LIT(s) ((struct leo_str){(s), sizeof(s) - 1})

/** A span over a NUL-terminated string (NULL gives the empty span). */
static inline struct leo_str leo_str_c(const char *s)
{
    return (struct leo_str){s, s ? strlen(s) : 0};
}

static inline struct leo_str leo_str_n(const char *p, size_t len)
{
    return (struct leo_str){p, len};
}

/** Byte-wise equality. */
static inline bool leo_str_eq(struct leo_str a, struct leo_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/** Equality with a NUL-terminated string. */
static inline bool leo_str_eqc(struct leo_str a, const char *b)
{
    return leo_str_eq(a, leo_str_c(b));
}

/** ASCII case-insensitive equality (header names). */
static inline bool leo_str_caseeq(struct leo_str a, const char *b)
{
    size_t n = strlen(b);
    return a.len == n && (n == 0 || strncasecmp(a.p, b, n) == 0);
}

/** True when a starts with the NUL-terminated prefix. */
static inline bool leo_str_startswith(struct leo_str a, const char *prefix)
{
    size_t n = strlen(prefix);
    return a.len >= n && memcmp(a.p, prefix, n) == 0;
}

/** Strips ASCII spaces and tabs from both ends. */
static inline struct leo_str leo_str_trim(struct leo_str s)
{
    while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) {
        s.p++;
        s.len--;
    }
    while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t'))
        s.len--;
    return s;
}

#endif
