/*
 * buf.h — the growable byte buffer (after git's strbuf).
 *
 * Invariants:
 * - p is never NULL: a buffer starts on a shared empty string and allocates on its first append.
 * - p[len] == '\0' always, so p can be handed to functions that want a C string (binary content may still
 *   contain NULs; len is the truth).
 * - max, when non-zero, is a hard cap on len chosen by the owner at init. An append that would cross it
 *   changes nothing and returns LEO_ETOOBIG; that is an ordinary error for the caller to report.
 * - leo_buf_release frees the storage and returns the buffer to its initial state; leo_buf_detach hands the
 *   storage to the caller (who frees it with leo_free) and also resets the buffer.
 */
#ifndef LEO_BUF_H
#define LEO_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "str.h"

struct leo_buf {
    char *p;
    size_t len;
    size_t cap; /* allocated bytes, 0 while p points at the shared empty string */
    size_t max; /* hard cap on len, 0 for none */
};

extern char leo_buf__empty[];

#define LEO_BUF_INIT {leo_buf__empty, 0, 0, 0}

/** Initialises a buffer with a hard cap (0 for none) and an optional size hint to preallocate. */
void leo_buf_init(struct leo_buf *b, size_t max, size_t hint);
/** Frees the storage; the buffer is reusable afterwards (keeps its max). */
void leo_buf_release(struct leo_buf *b);
/** Empties the buffer but keeps its storage. */
static inline void leo_buf_reset(struct leo_buf *b)
{
    b->len = 0;
    b->p[0] = '\0';
}
/** Ensures room for n more bytes; LEO_ETOOBIG if that would cross max. */
int leo_buf_grow(struct leo_buf *b, size_t n);
/** Appends n bytes; 0 or LEO_ETOOBIG (then nothing was appended). */
int leo_buf_add(struct leo_buf *b, const void *data, size_t n);
/** Appends a NUL-terminated string. */
int leo_buf_adds(struct leo_buf *b, const char *s);
/** Appends a span. */
static inline int leo_buf_addstr(struct leo_buf *b, struct leo_str s)
{
    return leo_buf_add(b, s.p, s.len);
}
/** Appends one byte. */
int leo_buf_addch(struct leo_buf *b, char c);
/** Appends printf-formatted text. */
int leo_buf_addf(struct leo_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int leo_buf_vaddf(struct leo_buf *b, const char *fmt, va_list ap);
/** Appends v in decimal. */
int leo_buf_add_uint(struct leo_buf *b, unsigned long long v);
/** Appends v in decimal with exactly `decimals` digits after the point (at most 9), rounded to nearest: what
 *  printf's "%.<decimals>f" prints, except that a value within rounding error of a tie may round the other
 *  way in the last digit. Values whose scaled magnitude reaches 1e15, infinities and NaN go through printf.
 *  For the hot path (the access log), where vsnprintf's cost shows. */
int leo_buf_add_fixed(struct leo_buf *b, double v, unsigned decimals);
/** The same into out (size bytes, NUL-terminated, truncated if too small); returns the length written. */
size_t leo_fmt_fixed(char *out, size_t size, double v, unsigned decimals);
/** Appends s as the body of a JSON string (escaped, without the surrounding quotes). */
int leo_buf_add_json_escaped(struct leo_buf *b, const char *s, size_t n);
/** Removes the first n bytes (n > len empties it). */
void leo_buf_consume(struct leo_buf *b, size_t n);
/** Hands the storage to the caller (free with leo_free) and resets the buffer; never NULL. */
char *leo_buf_detach(struct leo_buf *b, size_t *len);
/** The contents as a span. */
static inline struct leo_str leo_buf_str(const struct leo_buf *b)
{
    return (struct leo_str){b->p, b->len};
}

#endif
