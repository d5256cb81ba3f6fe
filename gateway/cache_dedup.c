/*
 * cache_dedup.c — identical requests in flight share one upstream call (see cache.h for the contract).
 *
 * A flight is registered under its cache key while it takes followers. It keeps every stream byte its leader
 * published (the backlog, capped) so that a follower joining late still gets the whole stream from its first
 * byte; past the cap the flight is unregistered (it keeps feeding the followers it has) and the next
 * identical request becomes a new leader. Ending a flight unregisters it before any follower hears about it,
 * so a follower told to retry can become the next leader from inside its on_done.
 *
 * Callbacks may call leo_dedup_leave on any follower (their own client failed a write); a follower that
 * leaves during an iteration is only marked and swept afterwards, so the iteration stays valid.
 *
 * Known limit: the index has a fixed number of buckets (chains grow with the flights in the air, which one
 * worker keeps in the hundreds at most).
 */
#include <string.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/metrics.h"
#include "cache.h"

#define BUCKETS 1024
#define DEFAULT_MAX_BACKLOG (8u << 20)

struct leo_dedup_follower {
    struct leo_dedup_flight *f;
    const struct leo_dedup_callbacks *cbs;
    void *ud;
    unsigned variant;
    bool delivered;
    bool gone; /* left or answered; freed at the next sweep */
    struct leo_dedup_follower *next;
};

struct leo_dedup_flight {
    struct leo_dedup *d;
    struct leo_cache_key key;
    unsigned variant;
    struct leo_buf backlog;
    bool registered;
    unsigned iterating;
    struct leo_dedup_follower *followers;
    struct leo_dedup_flight *chain;       /* index bucket */
    struct leo_dedup_flight *prev, *next; /* every flight alive */
};

struct leo_dedup {
    size_t max_backlog;
    struct leo_dedup_flight *buckets[BUCKETS];
    struct leo_dedup_flight *all;
    size_t nflights, nfollowers;
};

static size_t bucket_of(const struct leo_cache_key *k)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < k->len; i++) {
        h ^= (unsigned char)k->s[i];
        h *= 1099511628211ull;
    }
    return (size_t)(h % BUCKETS);
}

struct leo_dedup *leo_dedup_new(size_t max_backlog)
{
    struct leo_dedup *d = leo_new(struct leo_dedup);
    d->max_backlog = max_backlog ? max_backlog : DEFAULT_MAX_BACKLOG;
    return d;
}

static void unregister(struct leo_dedup_flight *f)
{
    if (!f->registered)
        return;
    struct leo_dedup_flight **pp = &f->d->buckets[bucket_of(&f->key)];
    while (*pp != f)
        pp = &(*pp)->chain;
    *pp = f->chain;
    f->chain = NULL;
    f->registered = false;
}

/* Frees the followers marked gone (outside iterations only). */
static void sweep(struct leo_dedup_flight *f)
{
    if (f->iterating)
        return;
    struct leo_dedup_follower **pp = &f->followers;
    while (*pp) {
        struct leo_dedup_follower *fl = *pp;
        if (fl->gone) {
            *pp = fl->next;
            f->d->nfollowers--;
            leo_free(fl);
        } else {
            pp = &fl->next;
        }
    }
}

int leo_dedup_join(struct leo_dedup *d, const struct leo_cache_key *key, unsigned variant,
                   const struct leo_dedup_callbacks *cbs, void *ud, struct leo_dedup_flight **flight,
                   struct leo_dedup_follower **follower)
{
    *flight = NULL;
    *follower = NULL;
    size_t b = bucket_of(key);
    struct leo_dedup_flight *f = d->buckets[b];
    while (f && !(f->key.len == key->len && memcmp(f->key.s, key->s, key->len) == 0))
        f = f->chain;
    if (f == NULL) {
        f = leo_new(struct leo_dedup_flight);
        f->d = d;
        f->key = *key;
        f->variant = variant;
        leo_buf_init(&f->backlog, d->max_backlog, 0);
        f->registered = true;
        f->chain = d->buckets[b];
        d->buckets[b] = f;
        f->next = d->all;
        if (d->all)
            d->all->prev = f;
        d->all = f;
        d->nflights++;
        leo_metrics_add("leo_dedup_leaders_total", "", 1);
        *flight = f;
        return LEO_DEDUP_LEADER;
    }
    struct leo_dedup_follower *fl = leo_new(struct leo_dedup_follower);
    fl->f = f;
    fl->cbs = cbs;
    fl->ud = ud;
    fl->variant = variant;
    fl->next = f->followers;
    f->followers = fl;
    d->nfollowers++;
    leo_metrics_add("leo_dedup_followers_total", "", 1);
    *follower = fl;
    if (f->backlog.len && cbs->on_data && variant == f->variant) {
        fl->delivered = true;
        f->iterating++;
        cbs->on_data(ud, f->backlog.p, f->backlog.len);
        f->iterating--;
        sweep(f);
    }
    return LEO_DEDUP_FOLLOWER;
}

void leo_dedup_publish(struct leo_dedup_flight *f, const char *bytes, size_t len)
{
    if (len == 0)
        return;
    /* a backlog past its cap cannot bring a late joiner up to date: no more joiners */
    if (f->registered && leo_buf_add(&f->backlog, bytes, len) != 0) {
        unregister(f);
        leo_buf_release(&f->backlog);
    }
    f->iterating++;
    for (struct leo_dedup_follower *fl = f->followers; fl; fl = fl->next) {
        if (fl->gone || fl->variant != f->variant || fl->cbs->on_data == NULL)
            continue;
        fl->delivered = true;
        fl->cbs->on_data(fl->ud, bytes, len);
    }
    f->iterating--;
    sweep(f);
}

/* Tells every follower how it ended, then frees the flight. */
static void finish(struct leo_dedup_flight *f, struct leo_cache_entry *e, int status, const char *body, size_t len,
                   bool retry)
{
    struct leo_dedup *d = f->d;
    unregister(f);
    f->iterating++;
    for (struct leo_dedup_follower *fl = f->followers; fl; fl = fl->next) {
        if (fl->gone)
            continue;
        fl->gone = true;
        struct leo_dedup_result r = {
            .entry = e ? leo_cache_entry_ref(e) : NULL,
            .status = status,
            .body = body,
            .len = len,
            .retry = e == NULL && retry && !fl->delivered,
            .delivered = fl->delivered,
        };
        fl->cbs->on_done(fl->ud, &r);
    }
    f->iterating--;
    sweep(f);
    if (f->prev)
        f->prev->next = f->next;
    else
        d->all = f->next;
    if (f->next)
        f->next->prev = f->prev;
    d->nflights--;
    leo_buf_release(&f->backlog);
    leo_free(f);
}

void leo_dedup_complete(struct leo_dedup_flight *f, struct leo_cache_entry *e)
{
    finish(f, e, 200, NULL, 0, false);
}

void leo_dedup_fail(struct leo_dedup_flight *f, int status, const char *body, size_t len, bool retry)
{
    finish(f, NULL, status, body, len, retry);
}

void leo_dedup_abandon(struct leo_dedup_flight *f)
{
    finish(f, NULL, 0, NULL, 0, true);
}

void leo_dedup_leave(struct leo_dedup_follower *fl)
{
    if (fl == NULL || fl->gone)
        return;
    fl->gone = true;
    sweep(fl->f);
}

void leo_dedup_counts(const struct leo_dedup *d, size_t *flights, size_t *followers)
{
    *flights = d->nflights;
    *followers = d->nfollowers;
}

void leo_dedup_free(struct leo_dedup *d)
{
    if (d == NULL)
        return;
    while (d->all)
        leo_dedup_abandon(d->all);
    leo_free(d);
}
