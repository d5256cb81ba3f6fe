#include "arena.h"

#include <stdalign.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"

#define ARENA_BLOCK 4096

struct leo_arena_block {
    struct leo_arena_block *next;
    size_t used, size;
    alignas(max_align_t) char data[];
};

/* Standard blocks freed by destroyed arenas, kept for the next ones (per thread, bounded): most requests need
 * one or two blocks, and taking them from here spares malloc and free on every request. */
#define BLOCK_CACHE_MAX 64
#if defined(__SANITIZE_ADDRESS__)
#define BLOCK_CACHE 0 /* AddressSanitizer sees a use after the arena's end only in memory really freed */
#else
#define BLOCK_CACHE 1
#endif
static _Thread_local struct leo_arena_block *block_cache;
static _Thread_local unsigned block_cache_n;

struct leo_arena_cleanup {
    struct leo_arena_cleanup *next;
    void (*fn)(void *);
    void *arg;
};

void *leo_arena_alloc(struct leo_arena *a, size_t n)
{
    const size_t align = alignof(max_align_t);
    n = (n + align - 1) & ~(align - 1);
    struct leo_arena_block *b = a->_blocks;
    if (b == NULL || b->size - b->used < n) {
        size_t size = n > ARENA_BLOCK / 2 ? n : ARENA_BLOCK;
        struct leo_arena_block *nb;
        if (BLOCK_CACHE && size == ARENA_BLOCK && block_cache) {
            nb = block_cache;
            block_cache = nb->next;
            block_cache_n--;
        } else {
            nb = leo_malloc(sizeof(*nb) + size);
        }
        nb->used = 0;
        nb->size = size;
        if (b != NULL && size != ARENA_BLOCK) {
            /* a large one-off allocation: keep the current block in front for the small ones */
            nb->next = b->next;
            b->next = nb;
            nb->used = n;
            return nb->data;
        }
        nb->next = b;
        a->_blocks = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

void *leo_arena_zalloc(struct leo_arena *a, size_t n)
{
    void *p = leo_arena_alloc(a, n);
    memset(p, 0, n);
    return p;
}

char *leo_arena_strndup(struct leo_arena *a, const char *s, size_t n)
{
    char *p = leo_arena_alloc(a, n + 1);
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

struct leo_str leo_arena_strdup_str(struct leo_arena *a, struct leo_str s)
{
    return (struct leo_str){leo_arena_strndup(a, s.p, s.len), s.len};
}

void leo_arena_on_destroy(struct leo_arena *a, void (*fn)(void *), void *arg)
{
    struct leo_arena_cleanup *c = leo_arena_alloc(a, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    c->next = a->_cleanups;
    a->_cleanups = c;
}

void leo_arena_destroy(struct leo_arena *a)
{
    while (a->_cleanups) {
        struct leo_arena_cleanup *c = a->_cleanups;
        a->_cleanups = c->next;
        c->fn(c->arg);
    }
    while (a->_blocks) {
        struct leo_arena_block *b = a->_blocks;
        a->_blocks = b->next;
        if (BLOCK_CACHE && b->size == ARENA_BLOCK && block_cache_n < BLOCK_CACHE_MAX) {
            b->next = block_cache;
            block_cache = b;
            block_cache_n++;
        } else {
            leo_free(b);
        }
    }
}
