/*
 * prices.h — the shipped default price table (USD per 1M tokens) for common upstream models.
 *
 * The table is static, read-only data. A configuration snapshot copies it behind its own "prices" entries,
 * so a config entry with the same name replaces the default one (see leo_config_price in config.h for the
 * lookup rules: exact name first, then the longest name that is a '-'-delimited prefix).
 */
#ifndef LEO_PRICES_H
#define LEO_PRICES_H

#include <stddef.h>

struct leo_default_price {
    const char *model;      /* upstream model name or family prefix, e.g. "gpt-4o-mini" */
    double input_per_mtok;  /* USD per 1M input tokens */
    double output_per_mtok; /* USD per 1M output tokens */
};

/** The shipped defaults; *n receives the number of entries. Static storage, never NULL. */
const struct leo_default_price *leo_default_prices(size_t *n);

#endif
