/*
 * mock_format.h — what a wire format of the mock provider implements, and helpers shared by formats.
 *
 * A format (struct mock_format) turns request bytes into a format-neutral struct mock_chat and renders a
 * struct mock_reply (see mock_chat.h) back: whole, or step by step for streaming, plus the format's error body
 * and the response headers that identify a request. mock_openai.c is the OpenAI Chat Completions format,
 * mock_anthropic.c Anthropic Messages, mock_gemini.c Gemini generateContent; each exposes its struct
 * mock_format, registered in the route table of mock_provider.c. The fault machinery (mock_job.c) never looks
 * inside a format.
 *
 * All render functions append to the buffer they are given and never fail (buffers here are uncapped: the
 * input is already capped by the HTTP server's body limit).
 */
#ifndef MOCK_FORMAT_H
#define MOCK_FORMAT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/buf.h"
#include "common/http_server.h"
#include "common/str.h"
#include "mock_chat.h"

/** A request the mock refuses: status, a lowercase message, and the offending parameter (may be NULL). */
struct mock_error {
    int status;
    char message[256];
    const char *param;
};

/** Sets e and returns e->status (so parsers can `return mock_error_set(...)`). */
int mock_error_set(struct mock_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/** The events one stream step renders to: each is written with its own leo_http_stream_write. */
#define MOCK_EVENTS_MAX 8
struct mock_events {
    struct leo_buf data;          /* the events back to back */
    size_t end[MOCK_EVENTS_MAX];  /* end offset of each event in data */
    size_t n;
};

/** Empties ev (keeps its storage). */
void mock_events_reset(struct mock_events *ev);
/** Closes the event that has been appended to ev->data since the previous one. Aborts past MOCK_EVENTS_MAX
 *  (a format bug, not an input condition). */
void mock_events_commit(struct mock_events *ev);
/** Appends before + the compact serialisation of j + after as one event. */
void mock_events_add_framed(struct mock_events *ev, const char *before, const json_t *j, const char *after);
/** Appends "data: <json>\n\n" as one event (flags as for mock_json_append). */
void mock_events_add_sse_json(struct mock_events *ev, json_t *j, size_t flags);
/** Appends "event: <name>\ndata: <json>\n\n" as one event. */
void mock_events_add_sse_named(struct mock_events *ev, const char *name, const json_t *j);

/** Appends the compact serialisation of j (plus flags) to out. Does not take the reference. */
void mock_json_append(struct leo_buf *out, const json_t *j, size_t flags);

/** A JSON string from bytes that may not be valid UTF-8 (invalid bytes become U+FFFD). New reference. */
json_t *mock_json_string_lossy(const char *p, size_t len);

/** Parses a request body that must be a JSON object. Returns a new reference, or NULL with err set to a 400
 *  (the parser's message with line and column, or "request body must be a JSON object"). */
json_t *mock_json_load_object(const char *body, size_t len, struct mock_error *err);

/** A JSON string for a span of valid UTF-8 (the chat's strings are). New reference. */
json_t *mock_json_span(struct leo_str s);

/** Default and largest vector sizes of the embedding routes. */
#define MOCK_EMBEDDING_DIMS 8
#define MOCK_EMBEDDING_MAX_DIMS 4096

/** Fills v with a unit-length vector of dims float32 values derived only from the bytes p[0..len): the same
 *  text gives the same vector in every format. */
void mock_embed(const char *p, size_t len, unsigned dims, float *v);

/** A plain JSON route: validates req and appends the answer to out. Returns 0, or an HTTP status with err
 *  filled (out is then untouched). */
typedef int (*mock_json_route_fn)(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err);

struct mock_format {
    const char *name;
    /** Parses a chat request (body, and the path, query or headers where the format carries the model, the
     *  stream flag or its version). Returns 0, or an HTTP status with err filled. Strings the chat points to
     *  are copied into a. */
    int (*parse_chat)(const struct leo_http_request *req, struct leo_arena *a, struct mock_chat *chat,
                      struct mock_error *err);
    /** Renders the whole (non-streamed) reply. */
    void (*render_reply)(const struct mock_reply *r, struct leo_buf *out);
    /** Renders the events of one step of r's streaming plan (zero or more). */
    void (*render_step)(const struct mock_reply *r, const struct mock_step *s, struct mock_events *ev);
    /** Renders one stream event whose payload is not valid JSON. */
    void (*render_malformed_event)(const struct mock_reply *r, struct mock_events *ev);
    /** Renders the format's error body for status. param may be NULL; retry_after_s is the Retry-After value
     *  sent with the error, -1 when none. */
    void (*render_error)(int status, const char *message, const char *param, int retry_after_s,
                         struct leo_buf *out);
    /** Adds the format's per-response headers (request id, rate limits) after the *n already in h (room for
     *  MOCK_FORMAT_MAX_HEADERS); strings go into a. May be NULL. */
    void (*response_headers)(uint64_t seq, struct leo_arena *a, struct leo_http_header *h, size_t *n);
    /** The content type of a streamed answer to chat; NULL (the function or its result): text/event-stream. */
    const char *(*stream_content_type)(const struct mock_chat *chat);
};

#define MOCK_FORMAT_MAX_HEADERS 12

#endif
