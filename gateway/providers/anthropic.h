/*
 * anthropic.h — the Anthropic Messages API as an upstream (type "anthropic").
 *
 * The adapter translates a canonical (OpenAI Chat Completions) request into a Messages request, and a Messages
 * response or event stream back into a canonical chat.completion or chunk sequence; see provider.h for the
 * contract and anthropic.c's opening comment for every field that is mapped, dropped or rejected.
 * Anthropic clients in front of this upstream never come here: the engine serves them by passthrough.
 */
#ifndef LEO_PROVIDERS_ANTHROPIC_H
#define LEO_PROVIDERS_ANTHROPIC_H

#include "provider.h"

/** The adapter: POST {base_url}/messages, x-api-key and anthropic-version headers. Static storage. */
extern const struct leo_adapter leo_adapter_anthropic;

/** The anthropic-version header sent when the provider configures no api_version. */
#define LEO_ANTHROPIC_DEFAULT_VERSION "2023-06-01"

#endif
