/*
 * semguard.h — what the semantic cache may look up, and when two prompts may share an answer.
 *
 * Two independent pieces, both pure functions (no I/O, no allocation that outlives a call):
 * - Eligibility: a chat request is eligible when its conversation is short, holds only text, and has no tool
 *   traffic; the text to embed is then its last user message, and the rest of the conversation is reduced to
 *   two hashes (the system prompt, the earlier turns) that belong in the cache namespace, so an answer is
 *   never shared between two conversations that differ anywhere but in the last user message.
 * - The false-hit guard: given the new prompt and a cached prompt whose embeddings are close, refuses the hit
 *   when a detail that decides the answer differs: numbers, dates and times, negation, quoted strings, code,
 *   units, named entities, or the language; or when one prompt is the other with a content word dropped
 *   ("How do I a diff in Spark?" against "How do I merge a diff in Spark?": the shorter one is ambiguous, and
 *   no single stored answer is right for it). The embedding says "about the same thing"; the guard says "and
 *   nothing decisive changed". It errs on the side of refusing: a refusal costs one upstream call, a false
 *   hit serves a wrong answer.
 *
 * The word tables are built into a small hash index on first use; a process uses them from one thread (each
 * worker is single-threaded), so no locking is done.
 */
#ifndef LEO_SEMGUARD_H
#define LEO_SEMGUARD_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/str.h"

/* ---- eligibility ---- */

#define LEO_SEMGUARD_DEFAULT_MAX_TURNS 3
#define LEO_SEMGUARD_DEFAULT_MAX_CHARS 2000
#define LEO_SEMGUARD_HASH_BYTES 16

struct leo_semguard_limits {
    unsigned max_turns; /* user messages in the conversation, the last one included; 0: the default */
    size_t max_chars;   /* characters (UTF-8 code points) of the last user message; 0: the default */
    bool allow_tools;   /* requests that declare tools or functions are eligible (default: no) */
};

/** Why a request is not eligible (LEO_SEMGUARD_ELIGIBLE when it is). */
enum leo_semguard_reason {
    LEO_SEMGUARD_ELIGIBLE = 0,
    LEO_SEMGUARD_NO_MESSAGES,    /* no "messages" array, or an empty one */
    LEO_SEMGUARD_BAD_MESSAGE,    /* a message that is not an object with a known string role */
    LEO_SEMGUARD_TOOLS,          /* the request declares tools or functions */
    LEO_SEMGUARD_TOOL_RESULT,    /* a "tool" or "function" message */
    LEO_SEMGUARD_TOOL_CALLS,     /* an assistant message with tool_calls or function_call */
    LEO_SEMGUARD_IMAGE,          /* an image part */
    LEO_SEMGUARD_NON_TEXT,       /* another non-text part (audio, file...) or non-string content */
    LEO_SEMGUARD_LAST_NOT_USER,  /* the conversation does not end with a user message */
    LEO_SEMGUARD_EMPTY,          /* the last user message has no text */
    LEO_SEMGUARD_TOO_MANY_TURNS, /* more user messages than max_turns */
    LEO_SEMGUARD_TOO_LONG,       /* the last user message is longer than max_chars */
    LEO_SEMGUARD_NREASONS
};

/** What an eligible request contributes to a semantic lookup. */
struct leo_semguard_input {
    struct leo_buf text;                                 /* the last user message's text (caller releases) */
    unsigned char system_hash[LEO_SEMGUARD_HASH_BYTES];  /* BLAKE2b-128 of the system/developer messages */
    unsigned char context_hash[LEO_SEMGUARD_HASH_BYTES]; /* BLAKE2b-128 of the earlier user/assistant turns */
};

/**
 * Decides whether the chat request req (the client's parsed JSON body, OpenAI form) may use the semantic
 * cache under lim (NULL: the defaults). When it may, fills out (whose text must be an initialised buffer; it
 * is reset first) and returns LEO_SEMGUARD_ELIGIBLE; otherwise returns the first reason found and leaves the
 * contents of out unspecified.
 */
enum leo_semguard_reason leo_semguard_eligible(const json_t *req, const struct leo_semguard_limits *lim,
                                               struct leo_semguard_input *out);

/** A short name for a reason ("eligible", "too_long", ...): the metric label. Static storage. */
const char *leo_semguard_reason_name(enum leo_semguard_reason r);

/* ---- the false-hit guard ---- */

/** The rule that refused a hit (LEO_SEMGUARD_OK when none did). */
enum leo_semguard_rule {
    LEO_SEMGUARD_OK = 0,
    LEO_SEMGUARD_CODE,     /* fenced or inline code differs */
    LEO_SEMGUARD_QUOTE,    /* quoted strings differ */
    LEO_SEMGUARD_NUMBER,   /* numbers differ (as multisets, or in their order), digits or number words */
    LEO_SEMGUARD_UNIT,     /* units differ, or a quantity's unit differs (5 km vs 5 miles) */
    LEO_SEMGUARD_DATE,     /* months, weekdays, relative days, am/pm differ */
    LEO_SEMGUARD_NEGATION, /* a different number of negations */
    LEO_SEMGUARD_ENTITY,   /* a capitalised word of one (not at a sentence start) is absent from the other */
    LEO_SEMGUARD_LANGUAGE, /* the prompts are written in different languages */
    LEO_SEMGUARD_DROPPED_WORD, /* one prompt's words are among the other's, which has a content word more */
    LEO_SEMGUARD_TOO_COMPLEX, /* more items than the guard compares (64 of a kind): refused to be safe */
    LEO_SEMGUARD_NRULES
};

/**
 * Checks whether a cached answer to prompt b may be served for prompt a (symmetric). Returns LEO_SEMGUARD_OK
 * or the first rule that refuses, in the order of the enum (LEO_SEMGUARD_TOO_COMPLEX, checked before any
 * rule, when either prompt has more items of one kind than the guard keeps).
 */
enum leo_semguard_rule leo_semguard_check(struct leo_str a, struct leo_str b);

/** A short name for a rule ("ok", "number", ...): the metric label. Static storage. */
const char *leo_semguard_rule_name(enum leo_semguard_rule r);

/** Declares the metric families of eligibility and the guard (call before forking). */
void leo_semguard_metrics_describe(void);

#endif
