/*
 * tokens.h — the gateway's token estimate for a request, used before any provider has counted it (the
 * Anthropic stream's message_start, count_tokens for non-Anthropic upstreams, and quota admission next).
 *
 * The estimator is documented and deterministic, not a tokenizer: ceil(characters / 4) over every text the
 * model reads (message contents and text parts, tool call arguments, tool definitions as JSON), plus 4 tokens
 * per message and 3 for the reply's priming, plus 85 per image part (OpenAI's low-detail figure). On English
 * prose it lands within about ±20% of the providers' counts; providers' own counts replace it wherever they
 * report usage.
 */
#ifndef LEO_TOKENS_H
#define LEO_TOKENS_H

#include <jansson.h>
#include <stdint.h>

#include "../common/str.h"

/** Estimated input tokens of a canonical (OpenAI) chat request. */
uint64_t leo_estimate_tokens(json_t *canon);

/** The same estimate from the bytes of an OpenAI chat request, without building a tree: messages and tools are
 *  the raw values of its top-level members ({NULL, 0} when absent) in a body leo_json_scan_members accepted.
 *  Equal to leo_estimate_tokens of the parsed request (a unit test holds the two together). */
uint64_t leo_estimate_tokens_raw(struct leo_str messages, struct leo_str tools);

#endif
