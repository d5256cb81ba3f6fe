/*
 * arena.h — per-request memory.
 *
 * Each request owns an arena. Memory taken from it lives until leo_arena_destroy; there is no per-object free.
 * Resources that are not memory (a curl handle, a timer, a Redis reply) register a cleanup; cleanups run in
 * reverse order of registration when the arena is destroyed, before its memory is released.
 */
#ifndef LEO_ARENA_H
#define LEO_ARENA_H

#include <stddef.h>

#include "str.h"

struct leo_arena_block;
struct leo_arena_cleanup;

struct leo_arena {
    /* private */
    struct leo_arena_block *_blocks;
    struct leo_arena_cleanup *_cleanups;
};

#define LEO_ARENA_INIT {NULL, NULL}

/** Allocates n bytes aligned for any type; aborts on out-of-memory. */
void *leo_arena_alloc(struct leo_arena *a, size_t n);
/** Allocates n zeroed bytes. */
void *leo_arena_zalloc(struct leo_arena *a, size_t n);
/** Copies a span into the arena as a NUL-terminated string. */
char *leo_arena_strndup(struct leo_arena *a, const char *s, size_t n);
/** Copies a span and returns the copy as a span. */
struct leo_str leo_arena_strdup_str(struct leo_arena *a, struct leo_str s);
/** Registers fn(arg) to run at destroy time (reverse order). */
void leo_arena_on_destroy(struct leo_arena *a, void (*fn)(void *), void *arg);
/** Runs the cleanups and frees all memory; the arena is reusable afterwards. */
void leo_arena_destroy(struct leo_arena *a);

#endif
