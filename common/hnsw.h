/*
 * hnsw.h — an approximate nearest-neighbour index over float32 vectors: a Hierarchical Navigable Small World
 * graph (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using Hierarchical
 * Navigable Small World graphs", 2016/2018), written for the semantic cache.
 *
 * Invariants:
 * - The dimension is fixed at creation. Every stored vector is unit-normalised on insert, and the distance is
 *   the cosine distance 1 - dot(a, b), in [0, 2]. Queries are normalised the same way, so callers may pass
 *   vectors of any non-zero length. A vector with a zero norm or a NaN/infinite component is refused
 *   (LEO_EINVAL) and never stored.
 * - Each entry carries a caller-supplied 64-bit id, unique among live entries: inserting an id that is live
 *   replaces its vector (the old node becomes a tombstone); inserting it again with the same vector changes
 *   nothing, so replaying a stream of inserts is idempotent.
 * - Delete marks the entry as a tombstone: it is never returned by a search again, but its node stays in the
 *   graph as a waypoint, with its links, and may still be chosen as a neighbour of later inserts. The links
 *   are not repaired: repairing means a neighbour search per affected node (the costly part of an insert) and
 *   the graph stays navigable with tombstones in it. Tombstones keep their memory until leo_hnsw_compact(),
 *   which rebuilds the graph from the live entries; the owner decides when (leo_hnsw_deleted() says how many).
 *   Many tombstones also cost search time: they are walked through but do not count towards ef.
 * - Searches are deterministic: the same sequence of inserts and deletes with the same seed builds the same
 *   graph, and the same query then returns the same hits. Hits are ordered by distance, ties by insertion order.
 * - Memory: vectors live in one contiguous array, level-0 neighbour lists in another (fixed 2*M slots per
 *   node), upper-level lists (M slots per level) in a shared pool for the few nodes that have upper levels;
 *   all arrays grow by doubling (leo_hnsw_reserve preallocates) through common/alloc.h, so running out of
 *   memory aborts the process like every other allocation in the tree.
 * - Not thread-safe: one index belongs to one worker loop. A search writes scratch state in the index.
 *
 * - The search effort may grow with the graph (ef_search_grow_from): a fixed candidate list finds the true
 *   nearest neighbours less often as the graph grows (the descent is longer, local minima more frequent; see
 *   the 1M figures of docs/caching.md), so past a size each doubling of the graph widens the list.
 *   leo_hnsw_search_ef() says what a search uses.
 *
 * Complexity (n live + deleted nodes, d the dimension): insert O(ef_construction * M * log n) distance
 * computations of O(d) each, on average; search O(ef * M * log n) distance computations (ef as given by
 * leo_hnsw_search_ef) plus the walk through tombstones; delete O(1); compact O(n) inserts. These are the usual
 * HNSW bounds for data of low intrinsic dimension; on high-dimensional uniform noise the graph needs a higher ef
 * for the same recall, and recall is never guaranteed: it is measured (tests/unit/test_hnsw.c,
 * tests/bench/hnsw.sh).
 *
 * Limits: at most LEO_HNSW_MAX_NODES nodes (live + tombstones), dimension up to LEO_HNSW_MAX_DIM, M up to
 * LEO_HNSW_MAX_M, levels capped at LEO_HNSW_MAX_LEVEL. Memory per node: 4*d (vector) + 4*(2*M+1) (level-0
 * links) + 8 (id) + 4 (visited mark) + 4 (upper-level offset) + 2 (level, tombstone flag) bytes, plus 32 to 64
 * bytes of id map (16-byte slots, at most half full), plus 4*(M+1) per upper level for the ~1/(M-1) of nodes
 * that have any, plus up to 2x unused capacity when the index grew by doubling rather than by reserve. At
 * d = 256 and M = 32 that is about 1.35 kB per entry, three quarters of it the vector itself.
 */
#ifndef LEO_HNSW_H
#define LEO_HNSW_H

#include <stddef.h>
#include <stdint.h>

#define LEO_HNSW_MAX_DIM 65536
#define LEO_HNSW_MAX_M 128
#define LEO_HNSW_MAX_LEVEL 24
#define LEO_HNSW_MAX_NODES (UINT32_C(1) << 31)

/* Defaults chosen so that recall@10 is at least 0.95 on the hardest data the tests use, 10 000 uniform random
 * directions in 256 dimensions (tests/unit/test_hnsw.c; tests/bench/hnsw.sh shows the trade-off): with M 16
 * that needs ef_search above 400. Embeddings of real text are far easier (clustered, low intrinsic dimension)
 * and reach the same recall with a much smaller ef_search, which the owner may set at run time. */
#define LEO_HNSW_DEFAULT_M 32
#define LEO_HNSW_DEFAULT_EF_CONSTRUCTION 200
#define LEO_HNSW_DEFAULT_EF_SEARCH 256

struct leo_hnsw;

/** Creation parameters. Zero in M, ef_construction or ef_search selects the default; dim is required. */
struct leo_hnsw_params {
    uint32_t dim;                 /* vector dimension, 1..LEO_HNSW_MAX_DIM */
    uint32_t M;                   /* links per node per upper level (2*M on level 0), 2..LEO_HNSW_MAX_M */
    uint32_t ef_construction;     /* candidate list size while inserting; raised to M if smaller */
    uint32_t ef_search;           /* candidate list size while searching (runtime: leo_hnsw_set_ef_search) */
    uint64_t seed;                /* seed of the level generator: equal seeds build equal graphs */
    uint32_t ef_search_grow_from; /* 0: ef_search is fixed. Otherwise the number of nodes (live + tombstones)
                                     up to which ef_search applies; each doubling of the graph past it adds
                                     ef_search / 4 (at least 1) to the candidate list of a search */
};

/** One search result. */
struct leo_hnsw_hit {
    uint64_t id;
    float distance; /* 1 - cosine similarity */
};

/** Creates an empty index into *out; LEO_EINVAL (and *out untouched) when a parameter is out of range. The
 *  caller owns the index and frees it with leo_hnsw_free(). */
int leo_hnsw_create(struct leo_hnsw **out, const struct leo_hnsw_params *params);
/** Frees the index and everything in it; NULL is a no-op. */
void leo_hnsw_free(struct leo_hnsw *h);

/** Preallocates room for n nodes in total (live + tombstones), e.g. before a rebuild from a known count. */
void leo_hnsw_reserve(struct leo_hnsw *h, size_t n);

/** Inserts vec (dim floats, copied and normalised) under id, replacing a live entry with the same id.
 *  0; LEO_EINVAL for a zero or non-finite vector; LEO_ETOOBIG when the index holds LEO_HNSW_MAX_NODES nodes. */
int leo_hnsw_insert(struct leo_hnsw *h, uint64_t id, const float *vec);

/** Finds up to k live entries nearest to query (dim floats, need not be normalised), written to hits[0..k)
 *  in increasing distance, their number in *n_hits (less than k only when fewer entries are reachable).
 *  Explores max(leo_hnsw_search_ef(h), k) candidates. 0, or LEO_EINVAL for a zero or non-finite query
 *  (*n_hits = 0). */
int leo_hnsw_search(struct leo_hnsw *h, const float *query, size_t k, struct leo_hnsw_hit *hits, size_t *n_hits);

/** Marks the entry with this id deleted: 0, or LEO_ENOTFOUND when no live entry has it. */
int leo_hnsw_delete(struct leo_hnsw *h, uint64_t id);
/** 1 when a live entry has this id, else 0. */
int leo_hnsw_contains(const struct leo_hnsw *h, uint64_t id);
/** Copies the stored (normalised) vector of a live entry into out (dim floats): 0 or LEO_ENOTFOUND. */
int leo_hnsw_get(const struct leo_hnsw *h, uint64_t id, float *out);

/** Rebuilds the graph from the live entries (in their insertion order, with the index's seed), dropping the
 *  tombstones and releasing their memory; the ids and vectors are unchanged. Costs as much as inserting every
 *  live entry again. */
void leo_hnsw_compact(struct leo_hnsw *h);

/** Sets the search candidate list size (1 and up; 0 restores the default). Takes effect on the next search. */
void leo_hnsw_set_ef_search(struct leo_hnsw *h, uint32_t ef_search);
/** The current ef_search (as set; see leo_hnsw_search_ef for what a search uses). */
uint32_t leo_hnsw_ef_search(const struct leo_hnsw *h);
/** The candidate list size a search of the index explores now (before raising it to k): ef_search, plus
 *  ef_search / 4 (at least 1) per doubling of the nodes (live + tombstones) past ef_search_grow_from when that
 *  is set. Grows as the index grows and shrinks again when leo_hnsw_compact() drops tombstones. */
uint32_t leo_hnsw_search_ef(const struct leo_hnsw *h);
/** The dimension given at creation. */
uint32_t leo_hnsw_dim(const struct leo_hnsw *h);
/** Number of live entries. */
size_t leo_hnsw_count(const struct leo_hnsw *h);
/** Number of tombstones (deleted or replaced entries still in the graph). */
size_t leo_hnsw_deleted(const struct leo_hnsw *h);
/** Bytes allocated by the index (all arrays at their capacity, the id map, scratch space, the struct). */
size_t leo_hnsw_memory(const struct leo_hnsw *h);

#endif
