/*
 * mock_gemini.h — the Gemini API (generativelanguage) wire format of the mock provider.
 *
 * mock_gemini_format speaks POST /v1beta/models/{model}:generateContent and :streamGenerateContent (also
 * under /v1/models/): the model comes from the path, the stream flag from the method name. A stream with
 * ?alt=sse is Server-Sent Events framed "data: <json>\r\n\r\n" as Google frames them; without it, it is one
 * JSON array sent element by element, as the API does. Thinking is a part with "thought": true, tool calls are
 * functionCall parts, errors are Google RPC errors ({"error":{"code","message","status"}}), and the `blocked`
 * fault is a promptFeedback with blockReason SAFETY and no candidates. Request fields are accepted in both
 * lowerCamelCase and snake_case, as Google's JSON parser accepts them. The plain JSON routes embedContent,
 * batchEmbedContents and countTokens answer deterministic vectors and the prompt token count. What each field
 * contains is described in docs/mock.md.
 */
#ifndef MOCK_GEMINI_H
#define MOCK_GEMINI_H

#include "common/buf.h"
#include "common/http_server.h"
#include "mock_format.h"

extern const struct mock_format mock_gemini_format;

/** POST .../models/{model}:embedContent (a mock_json_route_fn): {"embedding":{"values":[...]}}, the vector
 *  /v1/embeddings gives the same text (the text parts of "content" concatenated). */
int mock_gemini_embed_content(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err);

/** POST .../models/{model}:batchEmbedContents: {"embeddings":[{"values":[...]},...]}, one per request. */
int mock_gemini_batch_embed(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err);

/** POST .../models/{model}:countTokens: {"totalTokens":N}, N being the promptTokenCount that
 *  generateContent would report for the same contents (given directly or as generateContentRequest). */
int mock_gemini_count_tokens(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err);

#endif
