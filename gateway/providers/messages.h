/*
 * messages.h — the Anthropic Messages dialect on the client side (POST /v1/messages): translation between a
 * client's Anthropic request / response / event stream and the gateway's canonical (OpenAI) form, for upstreams
 * that do not speak Anthropic. (An Anthropic client in front of an Anthropic upstream is served by passthrough.)
 *
 * Pure functions, like the adapters (see provider.h for the canonical form and the error conventions).
 * The event sequence produced for a stream is exactly what Anthropic sends and what @anthropic-ai/sdk's
 * stream helpers accept:
 *   message_start → (content_block_start → content_block_delta* → content_block_stop)* → message_delta (with
 *   stop_reason and usage) → message_stop; `ping` may appear anywhere; on failure an `error` event ends it.
 * Block kinds: text (text_delta), thinking (thinking_delta, then signature_delta when a signature is known),
 * tool_use (input_json_delta with partial_json pieces).
 */
#ifndef LEO_MESSAGES_H
#define LEO_MESSAGES_H

#include <jansson.h>
#include <stdint.h>

#include "../../common/buf.h"
#include "provider.h"

/** An Anthropic Messages request → a canonical OpenAI chat request (new reference, NULL with err on error).
 *  Maps system (string or text blocks) to a system message, content blocks (text, image base64/url,
 *  tool_use, tool_result, thinking) to OpenAI messages/parts/tool_calls/tool messages, tools to function tools,
 *  tool_choice, stop_sequences → stop, max_tokens, temperature, top_p, top_k (dropped, documented),
 *  metadata.user_id → user, stream, thinking {enabled, budget_tokens} → reasoning_effort (<=2048 low,
 *  <=8192 medium, else high; disabled/adaptive → none). A field whose
 *  loss would change the meaning is LEO_EINVAL naming it. */
json_t *leo_messages_to_canonical(json_t *req, struct leo_buf *err);

/** A canonical chat.completion → an Anthropic Messages response object (new reference). `model` is the name to
 *  report (the client's model name); `id` the message id ("msg_..."). */
json_t *leo_messages_from_canonical(json_t *completion, const char *model, const char *id, struct leo_buf *err);

/** Canonical finish_reason → Anthropic stop_reason ("stop"→"end_turn", "length"→"max_tokens",
 *  "tool_calls"→"tool_use", "content_filter"→"refusal"; a matched stop sequence → "stop_sequence"). */
const char *leo_messages_stop_reason(const char *finish_reason);

struct leo_messages_stream;

/** Starts translating canonical chunks into Anthropic events for a message with this id and model name.
 *  input_tokens is the estimate reported in message_start (the final usage goes in message_delta). */
struct leo_messages_stream *leo_messages_stream_new(const char *model, const char *id, uint64_t input_tokens);
/** One canonical chunk → Anthropic SSE bytes ("event: x\ndata: {...}\n\n" ...) appended to out. */
int leo_messages_stream_chunk(struct leo_messages_stream *st, json_t *chunk, struct leo_buf *out, struct leo_buf *err);
/** The canonical stream completed: closes the open block and appends message_delta (stop_reason, usage) and
 *  message_stop. u may be NULL. */
void leo_messages_stream_finish(struct leo_messages_stream *st, const struct leo_usage *u, struct leo_buf *out);
/** The stream failed: appends an `error` event ({"type":"error","error":{"type":type,"message":message}}). */
void leo_messages_stream_error(struct leo_messages_stream *st, const char *type, const char *message,
                               struct leo_buf *out);
void leo_messages_stream_free(struct leo_messages_stream *st);

/* The two error helpers below are implemented in gateway/errors.c (client-facing errors of both dialects),
 * not in messages.c. */

/** Appends an Anthropic-shaped error body: {"type":"error","error":{"type":type,"message":message}}. */
void leo_anthropic_error_json(struct leo_buf *out, const char *type, const char *message);
/** The Anthropic error type for an HTTP status (400 invalid_request_error, 401 authentication_error,
 *  403 permission_error, 404 not_found_error, 413 request_too_large, 429 rate_limit_error, 500/502 api_error,
 *  503/529 overloaded_error, 408/504 timeout_error). */
const char *leo_anthropic_error_type(int status);

/** Usage carried by an Anthropic stream event (message_start's message.usage, message_delta's usage), for
 *  the passthrough path; returns true when the event carried usage. */
bool leo_anthropic_event_usage(struct leo_str event, struct leo_str data, struct leo_usage *u);

#endif
