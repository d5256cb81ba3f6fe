/*
 * metrics.c — Prometheus metrics in one shared anonymous mapping (see metrics.h for the contract).
 *
 * Layout of the region: a small header (supervisor state), then nslots fixed-size slots. A slot is the
 * series table of one process:
 *   - entries[SLOT_ENTRIES]: family index, label text (at most LABEL_MAX bytes), value, histogram buckets;
 *   - state[] / hash[]: a compact open-addressing index over entries (linear probing), so a lookup touches
 *     a few bytes of the index and then one entry;
 *   - order[] / nseries: the entries in order of insertion, which is what readers walk.
 * The families themselves (name, kind, help) are process-local: every process declares the same families
 * in the same order, so a family index means the same thing in every slot.
 *
 * Concurrency: only the owner of a slot writes it (one thread of one process: the updates are load-add-store,
 * not atomic read-modify-writes). It fills an entry, publishes it (state[i] = 1, release),
 * appends it to order[] and publishes the new nseries (release). Readers acquire nseries and read only
 * entries listed in order[], whose family and labels never change again. Values are 64-bit words read and
 * written with relaxed atomics: a counter or gauge value is the bit pattern of a double (fractional
 * amounts such as costs need no scaling); a histogram keeps one count per bucket (not
 * cumulative, the last one is +Inf) and the bit pattern of the sum of observations. _count is derived from
 * the buckets, so it always equals the +Inf bucket; _sum may lag by one observation during a scrape.
 *
 * A worker that dies between publishing an entry and appending it to order[] leaves an entry readers cannot
 * see; leo_metrics_attach repairs that before the restarted worker writes again.
 *
 * The table is sized for SLOT_ENTRIES entries but holds at most SLOT_MAX_SERIES series, which keeps linear
 * probes short. An update that would need a new series past that bound, or whose label text is longer than
 * LABEL_MAX, or that names an undeclared family or the wrong kind, is dropped and counted in
 * leo_metrics_dropped_series_total (the count is of dropped updates: the series themselves are not kept).
 * Negative counter increments and NaN observations are ignored; describing a known name again is a no-op.
 *
 * Memory: about 640 KiB of address space per slot; pages are touched only as series are added.
 */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc.h"
#include "error.h"
#include "log.h"

#define MAX_FAMILIES 128
#define FAMILY_INDEX_SIZE 256 /* power of two, > 2 * MAX_FAMILIES */
#define SLOT_ENTRIES 2048     /* power of two */
#define SLOT_MAX_SERIES 1536
#define LABEL_MAX 160
#define NBUCKETS 16

static const double bucket_bounds[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
static const char *const bucket_names[NBUCKETS] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                                                   "0.25",   "0.5",   "1",      "2.5",   "5",    "10",    "30",   "60"};

struct series {
    uint16_t family;
    uint16_t label_len;
    char labels[LABEL_MAX];
    uint64_t value;                 /* double bits: counter or gauge value, histogram sum */
    uint64_t buckets[NBUCKETS + 1]; /* histogram only; the last is +Inf */
};

struct slot {
    uint64_t dropped;
    uint32_t nseries;
    uint8_t state[SLOT_ENTRIES]; /* 0 free, 1 published */
    uint32_t hash[SLOT_ENTRIES];
    uint16_t order[SLOT_ENTRIES];
    struct series entries[SLOT_ENTRIES];
};

struct region {
    uint32_t nslots;
    uint32_t wanted;
    uint32_t up;
    struct slot slots[];
};

struct family {
    char *name;
    char *help;
    enum leo_metric_kind kind;
    uint32_t hash;
};

/* Process-local state. */
static struct region *region;
static size_t region_size;
static bool region_shared;
static struct slot *my_slot;
static struct family families[MAX_FAMILIES];
static unsigned nfamilies;
static uint8_t family_index[FAMILY_INDEX_SIZE]; /* family number + 1, 0 when free */

static inline uint64_t load64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void store64(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline double bits_to_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static inline uint64_t double_to_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

/* Hashes 8 bytes per step (labels run to a hundred bytes and are hashed on every update). Equal input gives
 * equal output in every process of the same build, which is all the slot index needs. */
static inline uint32_t hash_bytes(uint64_t seed, const char *s, size_t n)
{
    uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15u);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9u;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebu;
    h ^= h >> 29;
    return (uint32_t)(h ^ (h >> 32));
}

static size_t size_for(unsigned nslots)
{
    return sizeof(struct region) + (size_t)nslots * sizeof(struct slot);
}

static void drop_region(void)
{
    if (region == NULL)
        return;
    if (region_shared)
        munmap(region, region_size);
    else
        leo_free(region);
    region = NULL;
    my_slot = NULL;
}

/* Without leo_metrics_init the process gets one private slot on first use. */
static inline void ensure_region(void)
{
    if (region != NULL)
        return;
    region_size = size_for(1);
    region = leo_calloc(1, region_size);
    region->nslots = 1;
    region_shared = false;
    my_slot = &region->slots[0];
}

int leo_metrics_init(unsigned nslots)
{
    if (nslots == 0 || nslots > 4096)
        return LEO_EINVAL;
    size_t size = size_for(nslots);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    drop_region();
    /* anonymous mappings start zeroed: every slot is empty */
    region = p;
    region_size = size;
    region_shared = true;
    region->nslots = nslots;
    my_slot = &region->slots[0];
    return 0;
}

void leo_metrics_attach(unsigned idx)
{
    ensure_region();
    if (idx >= region->nslots) {
        leo_warn("metrics slot %u does not exist (%u slots)", idx, region->nslots);
        return;
    }
    struct slot *s = &region->slots[idx];
    my_slot = s;

    /* Repair: a previous owner may have died between publishing an entry and listing it in order[]. */
    uint32_t n = __atomic_load_n(&s->nseries, __ATOMIC_ACQUIRE);
    static uint8_t listed[SLOT_ENTRIES];
    memset(listed, 0, sizeof(listed));
    for (uint32_t j = 0; j < n; j++)
        listed[s->order[j]] = 1;
    for (uint32_t i = 0; i < SLOT_ENTRIES; i++) {
        if (__atomic_load_n(&s->state[i], __ATOMIC_ACQUIRE) && !listed[i]) {
            s->order[n++] = (uint16_t)i;
            __atomic_store_n(&s->nseries, n, __ATOMIC_RELEASE);
        }
    }

    /* Gauges describe the live process, which is new: start them from zero. */
    for (uint32_t j = 0; j < n; j++) {
        struct series *e = &s->entries[s->order[j]];
        if (e->family < nfamilies && families[e->family].kind == LEO_METRIC_GAUGE)
            store64(&e->value, double_to_bits(0.0));
    }
}

static int family_find(const char *name, size_t len, uint32_t h)
{
    for (uint32_t i = h & (FAMILY_INDEX_SIZE - 1);; i = (i + 1) & (FAMILY_INDEX_SIZE - 1)) {
        unsigned f = family_index[i];
        if (f == 0)
            return -1;
        const struct family *fam = &families[f - 1];
        if (fam->hash == h && strncmp(fam->name, name, len) == 0 && fam->name[len] == '\0')
            return (int)(f - 1);
    }
}

void leo_metrics_describe(const char *name, enum leo_metric_kind kind, const char *help)
{
    size_t len = strlen(name);
    uint32_t h = hash_bytes(0, name, len);
    if (family_find(name, len, h) >= 0)
        return;
    if (nfamilies == MAX_FAMILIES) {
        leo_warn("metric family \"%s\" not declared: the limit is %d families", name, MAX_FAMILIES);
        return;
    }
    struct family *fam = &families[nfamilies];
    fam->name = leo_strdup(name);
    fam->help = leo_strdup(help ? help : "");
    fam->kind = kind;
    fam->hash = h;
    uint32_t i = h & (FAMILY_INDEX_SIZE - 1);
    while (family_index[i] != 0)
        i = (i + 1) & (FAMILY_INDEX_SIZE - 1);
    family_index[i] = (uint8_t)(nfamilies + 1);
    nfamilies++;
}

static void count_drop(void)
{
    store64(&my_slot->dropped, load64(&my_slot->dropped) + 1);
}

/* The series (name, labels) of slot s, created on first use when create; NULL when there is none or the update
 * is dropped (counted in this process's slot). */
static struct series *series_in(struct slot *s, const char *name, const char *labels, enum leo_metric_kind kind,
                                bool create)
{
    size_t nlen = strlen(name);
    int f = family_find(name, nlen, hash_bytes(0, name, nlen));
    if (f < 0 || families[f].kind != kind) {
        count_drop();
        return NULL;
    }
    if (labels == NULL)
        labels = "";
    size_t llen = strlen(labels);
    if (llen > LABEL_MAX) {
        count_drop();
        return NULL;
    }
    uint32_t h = hash_bytes((uint64_t)(f + 1) << 32, labels, llen);
    uint32_t i = h & (SLOT_ENTRIES - 1);
    for (;;) {
        if (s->state[i] == 0)
            break;
        struct series *e = &s->entries[i];
        if (s->hash[i] == h && e->family == (uint16_t)f && e->label_len == llen && memcmp(e->labels, labels, llen) == 0)
            return e;
        i = (i + 1) & (SLOT_ENTRIES - 1);
    }
    if (!create)
        return NULL;
    uint32_t n = s->nseries;
    if (n >= SLOT_MAX_SERIES) {
        count_drop();
        return NULL;
    }
    /* The free entry may hold the remains of an insert its previous owner did not finish: overwrite all. */
    struct series *e = &s->entries[i];
    e->family = (uint16_t)f;
    e->label_len = (uint16_t)llen;
    memcpy(e->labels, labels, llen);
    store64(&e->value, 0);
    for (int b = 0; b <= NBUCKETS; b++)
        store64(&e->buckets[b], 0);
    s->hash[i] = h;
    __atomic_store_n(&s->state[i], 1, __ATOMIC_RELEASE);
    s->order[n] = (uint16_t)i;
    __atomic_store_n(&s->nseries, n + 1, __ATOMIC_RELEASE);
    return e;
}

/* The series of this process for (name, labels), created on first use; NULL when the update is dropped. */
static struct series *series_get(const char *name, const char *labels, enum leo_metric_kind kind)
{
    ensure_region();
    return series_in(my_slot, name, labels, kind, true);
}

static inline void add_double(uint64_t *p, double v)
{
    store64(p, double_to_bits(bits_to_double(load64(p)) + v));
}

/* Slot idx when it exists and is not this process's own. */
static struct slot *other_slot(unsigned idx)
{
    ensure_region();
    return idx < region->nslots && &region->slots[idx] != my_slot ? &region->slots[idx] : NULL;
}

double leo_metrics_slot_value(unsigned idx, const char *name, const char *labels)
{
    struct slot *s = other_slot(idx);
    size_t nlen = strlen(name);
    int f = s ? family_find(name, nlen, hash_bytes(0, name, nlen)) : -1;
    if (f < 0 || families[f].kind == LEO_METRIC_HISTOGRAM)
        return 0.0;
    struct series *e = series_in(s, name, labels, families[f].kind, false);
    return e ? bits_to_double(load64(&e->value)) : 0.0;
}

void leo_metrics_slot_add(unsigned idx, const char *name, const char *labels, double v)
{
    struct slot *s = other_slot(idx);
    struct series *e = s && v >= 0 ? series_in(s, name, labels, LEO_METRIC_COUNTER, true) : NULL;
    if (e)
        add_double(&e->value, v);
}

void leo_metrics_add(const char *name, const char *labels, double v)
{
    if (!(v >= 0)) /* counters never go backwards; NaN is no amount either */
        return;
    struct series *e = series_get(name, labels, LEO_METRIC_COUNTER);
    if (e)
        add_double(&e->value, v);
}

void leo_metrics_gauge_add(const char *name, const char *labels, double v)
{
    struct series *e = series_get(name, labels, LEO_METRIC_GAUGE);
    if (e)
        add_double(&e->value, v);
}

void leo_metrics_gauge_set(const char *name, const char *labels, double v)
{
    struct series *e = series_get(name, labels, LEO_METRIC_GAUGE);
    if (e)
        store64(&e->value, double_to_bits(v));
}

void leo_metrics_observe(const char *name, const char *labels, double v)
{
    if (isnan(v))
        return;
    struct series *e = series_get(name, labels, LEO_METRIC_HISTOGRAM);
    if (e == NULL)
        return;
    int b = 0;
    while (b < NBUCKETS && !(v <= bucket_bounds[b]))
        b++;
    store64(&e->buckets[b], load64(&e->buckets[b]) + 1);
    add_double(&e->value, v);
}

/* ---- rendering ---- */

/* One series summed over all slots. */
struct agg {
    const char *labels;
    size_t label_len;
    unsigned family;
    uint32_t hash;
    int next; /* next series of the same family, in order of first appearance; -1 ends */
    double value;
    uint64_t buckets[NBUCKETS + 1];
};

static void add_number(struct leo_buf *out, double v)
{
    if (isnan(v)) {
        leo_buf_adds(out, "NaN");
    } else if (isinf(v)) {
        leo_buf_adds(out, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        leo_buf_addf(out, "%lld", (long long)v);
    } else {
        /* the shortest of the two precisions that reads back as the same double */
        char s[32];
        snprintf(s, sizeof(s), "%.15g", v);
        if (strtod(s, NULL) != v)
            snprintf(s, sizeof(s), "%.17g", v);
        leo_buf_adds(out, s);
    }
}

static void add_help(struct leo_buf *out, const char *help)
{
    for (const char *c = help; *c; c++) {
        if (*c == '\\')
            leo_buf_adds(out, "\\\\");
        else if (*c == '\n')
            leo_buf_adds(out, "\\n");
        else
            leo_buf_addch(out, *c);
    }
}

/* name[suffix]{labels[,extra]} — braces only when there is a label at all. */
static void add_series_name(struct leo_buf *out, const char *name, const char *suffix, const struct agg *a,
                            const char *extra)
{
    leo_buf_adds(out, name);
    leo_buf_adds(out, suffix);
    if (a->label_len == 0 && extra == NULL)
        return;
    leo_buf_addch(out, '{');
    leo_buf_add(out, a->labels, a->label_len);
    if (extra) {
        if (a->label_len)
            leo_buf_addch(out, ',');
        leo_buf_adds(out, extra);
    }
    leo_buf_addch(out, '}');
}

static const char *const kind_names[] = {"counter", "gauge", "histogram"};

void leo_metrics_render(struct leo_buf *out)
{
    ensure_region();
    unsigned nslots = region->nslots;
    size_t total = 0;
    uint64_t dropped = 0;
    for (unsigned s = 0; s < nslots; s++) {
        total += __atomic_load_n(&region->slots[s].nseries, __ATOMIC_ACQUIRE);
        dropped += load64(&region->slots[s].dropped);
    }

    /* Sum equal series of all slots: a temporary hash table over the aggregates. total is only an
     * estimate (writers keep adding), so the walk below stops at the capacity it was sized for. */
    size_t cap = 16;
    while (cap < 2 * total + 2)
        cap *= 2;
    struct agg *aggs = leo_malloc((total + 1) * sizeof(*aggs));
    int *table = leo_malloc(cap * sizeof(*table));
    memset(table, 0xff, cap * sizeof(*table));
    int head[MAX_FAMILIES], tail[MAX_FAMILIES];
    for (unsigned f = 0; f < MAX_FAMILIES; f++)
        head[f] = tail[f] = -1;
    size_t naggs = 0;

    for (unsigned si = 0; si < nslots; si++) {
        struct slot *s = &region->slots[si];
        uint32_t n = __atomic_load_n(&s->nseries, __ATOMIC_ACQUIRE);
        for (uint32_t j = 0; j < n; j++) {
            uint16_t idx = s->order[j];
            struct series *e = &s->entries[idx];
            unsigned f = e->family;
            if (f >= nfamilies)
                continue;
            uint32_t h = s->hash[idx];
            size_t t = h & (cap - 1);
            struct agg *a = NULL;
            for (; table[t] >= 0; t = (t + 1) & (cap - 1)) {
                struct agg *c = &aggs[table[t]];
                if (c->hash == h && c->family == f && c->label_len == e->label_len &&
                    memcmp(c->labels, e->labels, e->label_len) == 0) {
                    a = c;
                    break;
                }
            }
            if (a == NULL) {
                if (naggs == total) /* a series inserted after the count above: next scrape */
                    continue;
                a = &aggs[naggs];
                memset(a, 0, sizeof(*a));
                a->labels = e->labels;
                a->label_len = e->label_len;
                a->family = f;
                a->hash = h;
                a->next = -1;
                table[t] = (int)naggs;
                if (tail[f] >= 0)
                    aggs[tail[f]].next = (int)naggs;
                else
                    head[f] = (int)naggs;
                tail[f] = (int)naggs;
                naggs++;
            }
            a->value += bits_to_double(load64(&e->value));
            if (families[f].kind == LEO_METRIC_HISTOGRAM)
                for (int b = 0; b <= NBUCKETS; b++)
                    a->buckets[b] += load64(&e->buckets[b]);
        }
    }

    for (unsigned f = 0; f < nfamilies; f++) {
        const struct family *fam = &families[f];
        leo_buf_addf(out, "# HELP %s ", fam->name);
        add_help(out, fam->help);
        leo_buf_addf(out, "\n# TYPE %s %s\n", fam->name, kind_names[fam->kind]);
        for (int i = head[f]; i >= 0; i = aggs[i].next) {
            const struct agg *a = &aggs[i];
            if (fam->kind != LEO_METRIC_HISTOGRAM) {
                add_series_name(out, fam->name, "", a, NULL);
                leo_buf_addch(out, ' ');
                add_number(out, a->value);
                leo_buf_addch(out, '\n');
                continue;
            }
            uint64_t cum = 0;
            char le[32];
            for (int b = 0; b <= NBUCKETS; b++) {
                cum += a->buckets[b];
                snprintf(le, sizeof(le), "le=\"%s\"", b < NBUCKETS ? bucket_names[b] : "+Inf");
                add_series_name(out, fam->name, "_bucket", a, le);
                leo_buf_addf(out, " %llu\n", (unsigned long long)cum);
            }
            add_series_name(out, fam->name, "_sum", a, NULL);
            leo_buf_addch(out, ' ');
            add_number(out, a->value);
            leo_buf_addch(out, '\n');
            add_series_name(out, fam->name, "_count", a, NULL);
            leo_buf_addf(out, " %llu\n", (unsigned long long)cum);
        }
    }
    leo_buf_adds(out, "# HELP leo_metrics_dropped_series_total Metric updates dropped: series table full, label "
                      "text too long, or undeclared family.\n"
                      "# TYPE leo_metrics_dropped_series_total counter\n");
    leo_buf_addf(out, "leo_metrics_dropped_series_total %llu\n", (unsigned long long)dropped);

    leo_free(table);
    leo_free(aggs);
}

void leo_metrics_label_value(struct leo_buf *out, const char *s, size_t len)
{
    if (len == 0)
        return;
    size_t run = 0; /* start of the bytes not yet appended: runs without escapes go in one append */
    for (size_t i = 0; i < len; i++) {
        const char *esc = s[i] == '\\' ? "\\\\" : s[i] == '"' ? "\\\"" : s[i] == '\n' ? "\\n" : NULL;
        if (esc == NULL)
            continue;
        leo_buf_add(out, s + run, i - run);
        leo_buf_add(out, esc, 2);
        run = i + 1;
    }
    leo_buf_add(out, s + run, len - run);
}

void leo_metrics_set_workers(unsigned wanted, unsigned up)
{
    ensure_region();
    __atomic_store_n(&region->wanted, wanted, __ATOMIC_RELAXED);
    __atomic_store_n(&region->up, up, __ATOMIC_RELAXED);
}

void leo_metrics_get_workers(unsigned *wanted, unsigned *up)
{
    ensure_region();
    *wanted = __atomic_load_n(&region->wanted, __ATOMIC_RELAXED);
    *up = __atomic_load_n(&region->up, __ATOMIC_RELAXED);
}
