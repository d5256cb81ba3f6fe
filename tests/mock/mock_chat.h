/*
 * mock_chat.h — the format-neutral core of the mock provider's chat endpoints.
 *
 * A wire format (mock_openai.c, mock_anthropic.c, mock_gemini.c) parses a request into a struct mock_chat.
 * mock_reply_build() then decides, from the chat alone, what the mock answers: the thinking, the reply text or
 * the tool calls, the token usage, and the streaming plan, a list of format-neutral steps grouped in blocks
 * (a thinking block, a text block or one block per tool call, each opened, filled piece by piece and closed),
 * then finish, usage and done. The format renders the reply, or each step, in its own wire format. Keeping the
 * decision here means every format answers the same request with the same text, tool calls and usage, and the
 * fault machinery (mock_job.c) works on steps without knowing any format.
 *
 * Rules (documented for test writers in docs/mock.md):
 * - content = "mock reply to: " + the text of the last user message;
 * - prompt_tokens = words over all messages + 3 per message + 85 per image part;
 * - completion_tokens = words of the content, or for tool calls 1 + words of the arguments per call;
 * - with tools present, "call a tool" in the last user text (ASCII case-insensitive) calls the first tool,
 *   "parallel tools" calls every tool once, in order; arguments are {"query":"<last user text>"}; a
 *   conversation that ends with a tool result is answered with text (so agent loops terminate);
 * - thinking (the format's request field, or "think first" in the last user text) adds the reasoning
 *   "mock thinking about: " + the last user text, counted in completion_tokens and in thinking_tokens;
 * - a blocked reply (the `blocked` fault) has no content, no calls, no thinking and no completion tokens.
 * A word is a maximal run of bytes other than ASCII whitespace.
 *
 * Memory: everything a chat or reply points to lives in the arena passed to the parser / builder (the request's
 * arena), so both live exactly as long as the request.
 */
#ifndef MOCK_CHAT_H
#define MOCK_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/str.h"

/** Prompt tokens charged per message and per image part. */
#define MOCK_TOKENS_PER_MESSAGE 3
#define MOCK_TOKENS_PER_IMAGE 85
/** Size of the pieces the tool-call arguments are streamed in (extended to a UTF-8 character boundary). */
#define MOCK_ARGS_PIECE 8

struct mock_chat {
    const char *model;      /* as sent by the client */
    bool stream;
    bool include_usage;     /* the client asked for a usage event at the end of a stream */
    struct leo_str last_user; /* text of the last user message (text parts concatenated), valid UTF-8 */
    unsigned nmessages;
    unsigned prompt_words;  /* words over the text of all messages */
    unsigned images;        /* image parts over all messages */
    const char **tools;     /* function names in request order */
    size_t ntools;
    bool thinking;          /* the request asked for visible reasoning (format-specific field) */
    bool after_tool_result; /* the last message is a tool result */
    bool blocked;           /* set from the fault spec before mock_reply_build: answer with a refusal */
    int variant;            /* private to the format (e.g. Gemini's SSE vs JSON-array streaming) */
};

struct mock_call {
    char id[32];            /* "call_mock_<n>", n from 1 (formats with other id schemes derive theirs from n) */
    const char *name;
    struct leo_str arguments; /* a JSON text */
};

/* The plan is: START, [THINK_START THINK+ THINK_END], then either [TEXT_START TEXT+ TEXT_END] or, per call,
 * CALL_START CALL_ARGS+ CALL_END (nothing at all when blocked), then FINISH, USAGE, DONE. */
enum mock_step_kind {
    MOCK_STEP_START,        /* the assistant message begins */
    MOCK_STEP_THINK_START,  /* the thinking block begins */
    MOCK_STEP_THINK,        /* a piece of thinking: one word with the whitespace that follows it */
    MOCK_STEP_THINK_END,    /* the thinking block ends (its signature is known) */
    MOCK_STEP_TEXT_START,   /* the text block begins */
    MOCK_STEP_TEXT,         /* a piece of content: one word with the whitespace that follows it */
    MOCK_STEP_TEXT_END,     /* the text block ends */
    MOCK_STEP_CALL_START,   /* a tool call begins (id, name) */
    MOCK_STEP_CALL_ARGS,    /* a piece of a tool call's arguments */
    MOCK_STEP_CALL_END,     /* a tool call ends */
    MOCK_STEP_FINISH,       /* the finish reason */
    MOCK_STEP_USAGE,        /* token usage (a format may render nothing when the client did not ask) */
    MOCK_STEP_DONE,         /* the end-of-stream marker */
};

struct mock_step {
    enum mock_step_kind kind;
    unsigned call;          /* CALL_*: index into reply->calls */
    size_t off, len;        /* THINK: span of thinking; TEXT: span of content; CALL_ARGS: span of the arguments */
    /* output produced up to and including this step, for formats that report running usage: completion
     * tokens (thinking included; a tool call counts in full from its CALL_START) and thinking tokens */
    unsigned out_tokens, think_tokens;
};

struct mock_reply {
    const struct mock_chat *chat;
    uint64_t seq;           /* the request's sequence number (ids are derived from it) */
    int64_t created;        /* unix seconds */
    struct leo_str thinking; /* the reasoning; empty when the reply does not think */
    char signature[40];     /* "mock-signature-<seq>" when there is thinking */
    struct leo_str content; /* the text reply; empty when there are tool calls or when blocked */
    struct mock_call *calls;
    size_t ncalls;
    bool tool_calls;        /* finish because of tool calls rather than a complete text */
    bool blocked;           /* refused: no content and no calls */
    unsigned prompt_tokens;
    unsigned completion_tokens; /* thinking included */
    unsigned thinking_tokens;
    struct mock_step *steps;
    size_t nsteps;
    size_t first_delta;     /* index of the first TEXT or CALL_ARGS step (nsteps when none): where
                             * tool_then_reset cuts */
};

/** Counts words: maximal runs of bytes other than ASCII space, tab, newline, carriage return, vt, ff. */
unsigned mock_count_words(const char *p, size_t len);

/** The prompt tokens charged for chat (what count-tokens routes answer). */
unsigned mock_prompt_tokens(const struct mock_chat *chat);

/** Decides the reply to chat and its streaming plan. seq and created go into ids and timestamps. */
void mock_reply_build(const struct mock_chat *chat, uint64_t seq, int64_t created, struct leo_arena *a,
                      struct mock_reply *r);

#endif
