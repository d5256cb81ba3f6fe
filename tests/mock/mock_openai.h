/*
 * mock_openai.h — the OpenAI wire format of the mock provider.
 *
 * mock_openai_format speaks POST /v1/chat/completions (whole and streamed, tool calls included). The other
 * OpenAI routes are plain JSON routes: GET /v1/models lists mock-small and mock-large; POST /v1/embeddings
 * answers deterministic vectors derived from a hash of each input. What each field contains is described in
 * docs/mock.md.
 */
#ifndef MOCK_OPENAI_H
#define MOCK_OPENAI_H

#include <stddef.h>

#include "common/buf.h"
#include "mock_format.h"

extern const struct mock_format mock_openai_format;

/** GET /v1/models (a mock_json_route_fn): appends the model list to out. Returns 0 (never fails). */
int mock_openai_models(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err);

/** POST /v1/embeddings (a mock_json_route_fn): validates the request and appends the response to out. Vectors
 *  have MOCK_EMBEDDING_DIMS values unless "dimensions" asks otherwise. */
int mock_openai_embeddings(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err);

#endif
