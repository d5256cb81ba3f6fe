/*
 * mock_anthropic.h — the Anthropic Messages wire format of the mock provider.
 *
 * mock_anthropic_format speaks POST /v1/messages, whole and streamed (message_start, ping, content blocks with
 * text_delta / thinking_delta / signature_delta / input_json_delta, message_delta, message_stop), with
 * thinking blocks, tool_use blocks and Anthropic-shaped errors. Every request must carry the anthropic-version
 * header. POST /v1/messages/count_tokens is a plain JSON route answering the input tokens the same request
 * would be charged. What each field contains is described in docs/mock.md.
 */
#ifndef MOCK_ANTHROPIC_H
#define MOCK_ANTHROPIC_H

#include "common/buf.h"
#include "common/http_server.h"
#include "mock_format.h"

extern const struct mock_format mock_anthropic_format;

/** POST /v1/messages/count_tokens (a mock_json_route_fn): {"input_tokens":N}, N being the usage.input_tokens
 *  that /v1/messages would report for the same body (max_tokens is not required here). */
int mock_anthropic_count_tokens(const struct leo_http_request *req, struct leo_buf *out, struct mock_error *err);

#endif
