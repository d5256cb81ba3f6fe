/*
 * provider.h — the provider adapter interface: one adapter per upstream wire format.
 *
 * The gateway's canonical form is the OpenAI Chat Completions format: a canonical request is an OpenAI chat
 * request (a jansson object), a canonical response is an OpenAI `chat.completion` object and a canonical stream
 * is a sequence of OpenAI `chat.completion.chunk` objects. Extensions beyond OpenAI's own fields:
 *   - `reasoning_content` (string) in a message and in a chunk's delta: model reasoning ("thinking"), as
 *     DeepSeek sends it; `reasoning_signature` (string) carries an Anthropic thinking block's signature.
 *   - usage may carry `prompt_tokens_details.cached_tokens` (cache reads) and `cache_creation_input_tokens`.
 * Each adapter translates canonical → its upstream request and its upstream response / stream → canonical.
 * A client speaking the same dialect as the upstream is served by passthrough (the engine splices "model"),
 * never by a round trip through the canonical form.
 *
 * Every function here is pure: no I/O, no globals, deterministic given its inputs (ids and timestamps are passed
 * in), so each is golden-tested byte for byte and fuzzed. Errors: functions return 0 or a negative LEO_E* code
 * and append a lowercase message to `err` naming the offending field ("messages[2].content[0].type: \"audio\" is
 * not supported by anthropic"); LEO_EINVAL means the client's request cannot be expressed (→ 400),
 * LEO_EUPSTREAM means the upstream sent something unusable or an error (→ 502 or an SSE error event).
 */
#ifndef LEO_PROVIDER_H
#define LEO_PROVIDER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/arena.h"
#include "../../common/buf.h"
#include "../../common/http_server.h"
#include "../../common/str.h"

struct leo_provider;

enum leo_dialect {
    LEO_DIALECT_OPENAI,
    LEO_DIALECT_ANTHROPIC,
    LEO_DIALECT_GEMINI,
};

/** Token usage of one answer, in the gateway's terms. */
struct leo_usage {
    uint64_t input_tokens;       /* prompt tokens, cache reads and writes included */
    uint64_t output_tokens;      /* completion tokens, reasoning included */
    uint64_t cache_read_tokens;  /* part of input_tokens served from the provider's prompt cache */
    uint64_t cache_write_tokens; /* part of input_tokens written to it */
    bool have;                   /* the upstream reported usage */
};

/** What an adapter needs to know besides the request. */
struct leo_adapter_ctx {
    const char *model;            /* the upstream model name */
    uint64_t default_max_tokens;  /* for formats that require max_tokens when the client gave none */
    const char *response_id;      /* id to give a translated response / stream ("chatcmpl-..." style) */
    int64_t created;              /* unix time for translated responses */
};

/** Per-stream translation state (opaque to the engine). */
struct leo_stream_xlate;

struct leo_adapter {
    const char *type;             /* the provider "type" in the config */
    enum leo_dialect dialect;

    /** Appends the chat endpoint URL for model to url (base_url has no trailing slash). */
    int (*chat_url)(const struct leo_provider *p, const char *model, bool stream, struct leo_buf *url);
    /** Adds the authentication and version headers for key (may be empty) to h[*n..max); storage in a. */
    void (*auth_headers)(const struct leo_provider *p, struct leo_str key, struct leo_http_header *h, size_t *n,
                         size_t max, struct leo_arena *a);

    /** Canonical request → upstream request body. `stream` is the canonical request's "stream". */
    int (*build_chat)(json_t *canon, const struct leo_adapter_ctx *ctx, struct leo_buf *body, struct leo_buf *err);
    /** A whole upstream 2xx body → a canonical chat.completion (new reference, NULL on error); fills u. */
    json_t *(*parse_chat)(const char *body, size_t len, const struct leo_adapter_ctx *ctx, struct leo_usage *u,
                          struct leo_buf *err);

    /** Starts translating a stream. */
    struct leo_stream_xlate *(*stream_new)(const struct leo_adapter_ctx *ctx);
    /** One upstream SSE event → zero or more canonical chunks appended to the array `out`. Returns 0, 1 when
     *  the upstream signalled the end of the stream (its last event), LEO_EUPSTREAM on an upstream error event
     *  or an unusable event (err says which). Usage seen so far is written to u. */
    int (*stream_event)(struct leo_stream_xlate *st, struct leo_str event, struct leo_str data, json_t *out,
                        struct leo_usage *u, struct leo_buf *err);
    /** The upstream's body ended: appends final chunks if the format ends implicitly (Gemini); returns 0 if the
     *  stream is complete, LEO_EUPSTREAM if it was cut short. */
    int (*stream_end)(struct leo_stream_xlate *st, json_t *out, struct leo_usage *u, struct leo_buf *err);
    void (*stream_free)(struct leo_stream_xlate *st);

    /** The human message of an upstream error body (empty when there is none); never includes headers. */
    void (*error_message)(const char *body, size_t len, char *out, size_t size);

    /** Embeddings for formats whose API differs from OpenAI's /embeddings (NULL otherwise: OpenAI-compatible
     *  upstreams get the client's body by passthrough). The URL; the upstream body for an OpenAI embeddings
     *  request; the upstream answer → an OpenAI embeddings list (new reference), honouring the request's
     *  encoding_format. */
    int (*embeddings_url)(const struct leo_provider *p, const char *model, struct leo_buf *url);
    int (*build_embeddings)(json_t *req, const struct leo_adapter_ctx *ctx, struct leo_buf *body, struct leo_buf *err);
    json_t *(*parse_embeddings)(const char *body, size_t len, json_t *req, const struct leo_adapter_ctx *ctx,
                                struct leo_usage *u, struct leo_buf *err);
};

/** The adapter for a provider type, or NULL. Types: "openai", "azure", "anthropic", "gemini"; every
 *  OpenAI-compatible API (DeepSeek, Groq, Together, Mistral, vLLM, Ollama) is type "openai". */
const struct leo_adapter *leo_adapter_find(const char *type);

/** Usage from a canonical (OpenAI) usage object; leaves u untouched when usage is not an object. */
void leo_usage_from_openai(json_t *usage, struct leo_usage *u);
/** leo_usage_from_openai over the raw text p[0..len) of a usage value (validated JSON, as leo_json_find_member
 *  gives it) without building a tree: for every input the same u as leo_usage_from_openai on json_loadb's tree
 *  of that text (untouched when jansson would refuse it, a number too large included). */
void leo_usage_from_openai_raw(const char *p, size_t len, struct leo_usage *u);
/** Usage of a whole Anthropic Messages answer relayed by passthrough, from its "usage" object (input counts
 *  cache reads and writes, as everywhere); leaves u untouched when usage is not an object. */
void leo_usage_from_anthropic(json_t *usage, struct leo_usage *u);
/** leo_usage_from_anthropic over the raw text of a usage value, without a tree; the same contract as
 *  leo_usage_from_openai_raw. */
void leo_usage_from_anthropic_raw(const char *p, size_t len, struct leo_usage *u);
/** A canonical usage object for u (new reference). */
json_t *leo_usage_to_openai(const struct leo_usage *u);

#endif
