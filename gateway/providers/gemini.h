/*
 * gemini.h — the Google Gemini API adapter (type "gemini"): generateContent and streamGenerateContent (SSE) on
 * generativelanguage.googleapis.com, base_url e.g. "https://generativelanguage.googleapis.com/v1beta".
 *
 * Translation rules, and every field dropped or rejected on the way, are listed at the top of gemini.c.
 * Like every adapter it is pure (see provider.h): no I/O, deterministic given its inputs.
 */
#ifndef LEO_PROVIDERS_GEMINI_H
#define LEO_PROVIDERS_GEMINI_H

#include "provider.h"

/** The "gemini" adapter: static storage, lives for the whole process. */
extern const struct leo_adapter leo_adapter_gemini;

#endif
