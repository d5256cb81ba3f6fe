/*
 * registry.c — provider type → adapter. Adding a wire format is one row here; adding an OpenAI-compatible
 * provider is a config entry of type "openai", not code.
 */
#include <string.h>

#include "anthropic.h"
#include "gemini.h"
#include "openai.h"
#include "provider.h"

static const struct leo_adapter *const adapters[] = {
    &leo_adapter_openai,
    &leo_adapter_azure,
    &leo_adapter_anthropic,
    &leo_adapter_gemini,
};

const struct leo_adapter *leo_adapter_find(const char *type)
{
    for (size_t i = 0; i < sizeof(adapters) / sizeof(adapters[0]); i++)
        if (strcmp(adapters[i]->type, type) == 0)
            return adapters[i];
    return NULL;
}
