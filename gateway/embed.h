/*
 * embed.h — embedders for the semantic cache: text in, a float32 unit vector of a fixed dimension out.
 *
 * Invariants:
 * - Every vector an embedder hands out has exactly leo_embedder_dim(e) components and unit L2 norm (an input
 *   that yields no feature at all gives the zero vector, which is similar to nothing).
 * - Two paths, one interface. leo_embed_now() answers synchronously when it can: always for `local`, and for
 *   `provider` when the text is in its LRU of recent embeddings. Otherwise it returns UV_EAGAIN and the caller
 *   uses leo_embed_start(), whose callback fires exactly once, later, on the loop (never from inside the call),
 *   unless the operation is cancelled first. If leo_embed_start fails synchronously, the callback never fires.
 * - `local` has no I/O and no state beyond its seed; its vectors are a pure function of (seed, text).
 * - `provider` calls an OpenAI-compatible POST {base_url}/embeddings through the worker's upstream client
 *   (gateway/upstream.h). It borrows the client: the client must outlive the embedder. The API key is copied,
 *   sent only in the Authorization header, and never appears in logs, errors or metric labels.
 */
#ifndef LEO_EMBED_H
#define LEO_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/http_server.h"
#include "../common/str.h"

struct leo_upstream;
struct leo_embedder;
struct leo_embed_op;

/** The dimension of `local` vectors. */
#define LEO_EMBED_LOCAL_DIM 256
/** The largest dimension any embedder may produce (a provider answer above it is an error). */
#define LEO_EMBED_MAX_DIM 4096
/** The seed `local` uses unless configured otherwise (changing it changes every vector: a cache rebuild). */
#define LEO_EMBED_DEFAULT_SEED UINT64_C(0x1e0c0ffee5eed001)

/**
 * The cosine similarity at or above which a cached answer may be served for a new prompt (the guards of
 * semguard.h must also agree). Chosen for the `local` embedder with tests/eval (leo-cache-eval): the lowest
 * threshold whose false-hit rate on the labelled set, with the guards, is below 1%; see docs/caching.md.
 */
#define LEO_SEMCACHE_DEFAULT_THRESHOLD 0.74

/**
 * Called once when an asynchronous embedding ends. err is 0 and vec holds dim components (valid only during
 * the call), or err is negative (LEO_ETIMEOUT, LEO_ECONNECT, LEO_EUPSTREAM, LEO_EPARSE, LEO_ETOOBIG), vec is
 * NULL and msg a short description (never a secret, never NULL).
 */
typedef void (*leo_embed_cb)(int err, const float *vec, unsigned dim, const char *msg, void *ud);

/** The operations an embedder implements. */
struct leo_embedder_ops {
    const char *name; /* "local", "provider": the metric label */
    int (*embed_now)(struct leo_embedder *e, struct leo_str text, float *out);
    int (*embed_start)(struct leo_embedder *e, struct leo_str text, leo_embed_cb cb, void *ud,
                       struct leo_embed_op **op);
    void (*cancel)(struct leo_embed_op *op);
    void (*free)(struct leo_embedder *e);
};

struct leo_embedder {
    const struct leo_embedder_ops *ops;
    unsigned dim; /* 0 for a provider whose dimension is not known before its first answer */
};

/** Creates the `local` embedder (LEO_EMBED_LOCAL_DIM dimensions) with the given seed. */
struct leo_embedder *leo_embed_local_new(uint64_t seed);

/** Configuration of a `provider` embedder; every pointer is copied by leo_embed_provider_new. */
struct leo_embed_provider_config {
    const char *base_url;                  /* e.g. "https://api.openai.com/v1"; "/embeddings" is appended */
    const char *api_key;                   /* sent as "Authorization: Bearer"; NULL or "" for none */
    const char *model;                     /* e.g. "text-embedding-3-small" */
    unsigned dimensions;                   /* asked for and enforced when non-zero; else learned from the first answer */
    uint64_t timeout_ms;                   /* the whole call; 0: 10 s */
    size_t cache_entries;                  /* LRU capacity in embeddings; 0: 1024 */
    size_t max_response_bytes;             /* cap on the answer's body; 0: 4 MiB */
    const struct leo_http_header *headers; /* further request headers (e.g. Azure's api-key); may be NULL */
    size_t nheaders;
};

/**
 * Creates a `provider` embedder on the upstream client up. Returns NULL and writes a message into err
 * (errlen bytes) when the configuration is invalid (missing base_url or model, dimensions above
 * LEO_EMBED_MAX_DIM).
 */
struct leo_embedder *leo_embed_provider_new(struct leo_upstream *up, const struct leo_embed_provider_config *cfg,
                                            char *err, size_t errlen);

/** The dimension of the vectors, 0 while a provider has not answered yet. */
static inline unsigned leo_embedder_dim(const struct leo_embedder *e)
{
    return e->dim;
}

/**
 * Embeds text now into out (LEO_EMBED_MAX_DIM floats of room). 0 on success; UV_EAGAIN when the answer needs
 * I/O (use leo_embed_start); never fires a callback.
 */
int leo_embed_now(struct leo_embedder *e, struct leo_str text, float *out);

/**
 * Starts an asynchronous embedding. On 0, *op (when op is not NULL) is the handle for leo_embed_cancel, valid
 * until cb has returned; cb fires exactly once later. On failure (LEO_EINVAL for an embedder that never needs
 * I/O, LEO_ETOOBIG for an oversized text, or the upstream client's refusal) cb never fires.
 */
int leo_embed_start(struct leo_embedder *e, struct leo_str text, leo_embed_cb cb, void *ud,
                    struct leo_embed_op **op);

/** Cancels an operation started by leo_embed_start: its callback never fires. */
void leo_embed_cancel(struct leo_embed_op *op);

/** Cancels every operation in flight (no callbacks) and frees the embedder. NULL is a no-op. */
void leo_embedder_free(struct leo_embedder *e);

/** The cosine similarity of two vectors of dimension dim (their dot product when both are unit vectors). */
double leo_embed_cosine(const float *a, const float *b, unsigned dim);

/**
 * The normalised form `local` embeds, for tests and the eval tool: ASCII and Latin-1 letters lowercased,
 * punctuation dropped except inside numbers ("3.5", "1,000", "-2", "50%"), whitespace collapsed to one space.
 * Appends to out.
 */
void leo_embed_normalize(struct leo_str text, struct leo_buf *out);

/** Counters of a provider embedder (tests, stats): LRU hits, calls made, calls failed. */
struct leo_embed_stats {
    uint64_t cache_hits;
    uint64_t calls;
    uint64_t failures;
    size_t cached;
};
void leo_embed_provider_stats(const struct leo_embedder *e, struct leo_embed_stats *out);

/** Declares the embedders' metric families (call with the gateway's other describes, before forking). */
void leo_embed_metrics_describe(void);

#endif
