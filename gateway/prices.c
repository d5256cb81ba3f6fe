/*
 * prices.c — the shipped default price table.
 *
 * List prices in USD per 1M tokens as published by each provider, as of October 2025, for standard (not
 * batch, not cached-input) usage. Prices change: a deployment that needs exact figures sets them in the
 * config's "prices" object, which overrides and extends this table.
 *
 * Names are matched exactly first, then by the longest entry that is a '-'-delimited prefix of the upstream
 * model name, so dated snapshots ("gpt-4o-mini-2024-07-18", "claude-sonnet-4-5-20250929") price as their
 * family. Cheaper variants whose names extend a family name (o1-mini, gemini-2.0-flash-lite, ...) have their
 * own rows for that reason.
 */
#include "prices.h"

static const struct leo_default_price default_prices[] = {
    /* OpenAI */
    {"gpt-5", 1.25, 10.00},
    {"gpt-5-mini", 0.25, 2.00},
    {"gpt-5-nano", 0.05, 0.40},
    {"gpt-4.1", 2.00, 8.00},
    {"gpt-4.1-mini", 0.40, 1.60},
    {"gpt-4.1-nano", 0.10, 0.40},
    {"gpt-4o", 2.50, 10.00},
    {"gpt-4o-2024-05-13", 5.00, 15.00}, /* the first gpt-4o snapshot kept its launch price */
    {"gpt-4o-mini", 0.15, 0.60},
    {"gpt-4-turbo", 10.00, 30.00},
    {"gpt-4", 30.00, 60.00},
    {"gpt-3.5-turbo", 0.50, 1.50},
    {"o1", 15.00, 60.00},
    {"o1-mini", 1.10, 4.40},
    {"o1-pro", 150.00, 600.00},
    {"o3", 2.00, 8.00},
    {"o3-mini", 1.10, 4.40},
    {"o3-pro", 20.00, 80.00},
    {"o4-mini", 1.10, 4.40},
    {"text-embedding-3-small", 0.02, 0.00},
    {"text-embedding-3-large", 0.13, 0.00},

    /* Anthropic */
    {"claude-opus-4-1", 15.00, 75.00},
    {"claude-opus-4", 15.00, 75.00},
    {"claude-sonnet-4-5", 3.00, 15.00}, /* prompts up to 200k tokens */
    {"claude-sonnet-4", 3.00, 15.00},
    {"claude-haiku-4-5", 1.00, 5.00},
    {"claude-3-7-sonnet", 3.00, 15.00},
    {"claude-3-5-sonnet", 3.00, 15.00},
    {"claude-3-5-haiku", 0.80, 4.00},
    {"claude-3-opus", 15.00, 75.00},
    {"claude-3-haiku", 0.25, 1.25},

    /* Google Gemini (paid tier; 2.5 Pro doubles its rates above 200k prompt tokens, not modelled here) */
    {"gemini-2.5-pro", 1.25, 10.00},
    {"gemini-2.5-flash", 0.30, 2.50},
    {"gemini-2.5-flash-lite", 0.10, 0.40},
    {"gemini-2.0-flash", 0.10, 0.40},
    {"gemini-2.0-flash-lite", 0.075, 0.30},

    /* DeepSeek (both names serve the same model since V3.2; cache-miss input price) */
    {"deepseek-chat", 0.28, 0.42},
    {"deepseek-reasoner", 0.28, 0.42},

    /* the mock provider (tests/mock) used by the demo configuration and the tests */
    {"mock-small", 0.10, 0.40},
    {"mock-large", 2.00, 8.00},
};

const struct leo_default_price *leo_default_prices(size_t *n)
{
    *n = sizeof(default_prices) / sizeof(default_prices[0]);
    return default_prices;
}
