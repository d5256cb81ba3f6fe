/*
 * alloc.h — the one allocation wrapper.
 *
 * Invariants: every function here either returns usable memory or aborts the process with a message on
 * stderr. Call sites therefore carry no out-of-memory branches. leo_free(NULL) is a no-op.
 */
#ifndef LEO_ALLOC_H
#define LEO_ALLOC_H

#include <stddef.h>

/** malloc that aborts on failure; leo_malloc(0) returns a unique non-NULL pointer. */
void *leo_malloc(size_t n);
/** calloc that aborts on failure or on n*size overflow. */
void *leo_calloc(size_t n, size_t size);
/** realloc that aborts on failure; p may be NULL. */
void *leo_realloc(void *p, size_t n);
/** Copies a NUL-terminated string into new memory. */
char *leo_strdup(const char *s);
/** Copies n bytes and appends a NUL. */
char *leo_strndup(const char *s, size_t n);
/** free(). */
void leo_free(void *p);

/** Allocates one zeroed object of type T. */
#define leo_new(T) ((T *)leo_calloc(1, sizeof(T)))

#endif
