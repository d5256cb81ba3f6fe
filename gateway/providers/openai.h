/*
 * openai.h — the OpenAI Chat Completions adapters ("openai" and "azure").
 */
#ifndef LEO_PROVIDERS_OPENAI_H
#define LEO_PROVIDERS_OPENAI_H

#include "provider.h"

extern const struct leo_adapter leo_adapter_openai;
extern const struct leo_adapter leo_adapter_azure;

/** The message of an OpenAI-shaped error body ({"error":{"message"}} or {"error":"..."}), or "". */
void leo_openai_error_message(const char *body, size_t len, char *out, size_t size);

#endif
