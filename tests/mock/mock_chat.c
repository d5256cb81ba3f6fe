#include "mock_chat.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char reply_prefix[] = "mock reply to: ";
static const char thinking_prefix[] = "mock thinking about: ";

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

unsigned mock_count_words(const char *p, size_t len)
{
    unsigned n = 0;
    bool in_word = false;
    for (size_t i = 0; i < len; i++) {
        bool sp = is_space((unsigned char)p[i]);
        if (!sp && !in_word)
            n++;
        in_word = !sp;
    }
    return n;
}

/* ASCII case-insensitive substring test over a span (the span is not NUL-terminated). */
static bool contains_ci(struct leo_str hay, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= hay.len; i++)
        if (strncasecmp(hay.p + i, needle, n) == 0)
            return true;
    return false;
}

/* A step array in the arena: steps are counted first, then filled, so no reallocation. The running token
 * counts are kept while filling. */
struct plan {
    struct mock_step *steps;
    size_t n;
    unsigned out_tokens, think_tokens;
};

static void plan_add(struct plan *pl, enum mock_step_kind kind, unsigned call, size_t off, size_t len)
{
    if (pl->steps != NULL)
        pl->steps[pl->n] = (struct mock_step){kind, call, off, len, pl->out_tokens, pl->think_tokens};
    pl->n++;
}

/* Pieces of a text: each word together with the whitespace after it; leading whitespace joins the first piece,
 * so the pieces concatenate to the text exactly and each holds one word (one token). */
static void plan_pieces(struct plan *pl, enum mock_step_kind kind, struct leo_str text)
{
    size_t i = 0;
    while (i < text.len) {
        size_t start = i;
        while (i < text.len && is_space((unsigned char)text.p[i]))
            i++;
        while (i < text.len && !is_space((unsigned char)text.p[i]))
            i++;
        while (i < text.len && is_space((unsigned char)text.p[i]))
            i++;
        unsigned words = mock_count_words(text.p + start, i - start);
        pl->out_tokens += words;
        if (kind == MOCK_STEP_THINK)
            pl->think_tokens += words;
        plan_add(pl, kind, 0, start, i - start);
    }
}

static void plan_args(struct plan *pl, unsigned call, struct leo_str args)
{
    size_t i = 0;
    while (i < args.len) {
        size_t end = i + MOCK_ARGS_PIECE < args.len ? i + MOCK_ARGS_PIECE : args.len;
        /* never split a UTF-8 character: move the end past continuation bytes */
        while (end < args.len && ((unsigned char)args.p[end] & 0xc0) == 0x80)
            end++;
        plan_add(pl, MOCK_STEP_CALL_ARGS, call, i, end - i);
        i = end;
    }
}

static void plan_all(struct plan *pl, const struct mock_reply *r)
{
    pl->out_tokens = pl->think_tokens = 0;
    plan_add(pl, MOCK_STEP_START, 0, 0, 0);
    if (r->thinking.len) {
        plan_add(pl, MOCK_STEP_THINK_START, 0, 0, 0);
        plan_pieces(pl, MOCK_STEP_THINK, r->thinking);
        plan_add(pl, MOCK_STEP_THINK_END, 0, 0, 0);
    }
    if (r->tool_calls) {
        for (size_t c = 0; c < r->ncalls; c++) {
            struct leo_str args = r->calls[c].arguments;
            pl->out_tokens += 1 + mock_count_words(args.p, args.len);
            plan_add(pl, MOCK_STEP_CALL_START, (unsigned)c, 0, 0);
            plan_args(pl, (unsigned)c, args);
            plan_add(pl, MOCK_STEP_CALL_END, (unsigned)c, 0, 0);
        }
    } else if (r->content.len) {
        plan_add(pl, MOCK_STEP_TEXT_START, 0, 0, 0);
        plan_pieces(pl, MOCK_STEP_TEXT, r->content);
        plan_add(pl, MOCK_STEP_TEXT_END, 0, 0, 0);
    }
    plan_add(pl, MOCK_STEP_FINISH, 0, 0, 0);
    plan_add(pl, MOCK_STEP_USAGE, 0, 0, 0);
    plan_add(pl, MOCK_STEP_DONE, 0, 0, 0);
}

/* prefix + text, NUL-terminated, in the arena */
static struct leo_str prefixed(const char *prefix, struct leo_str text, struct leo_arena *a)
{
    size_t plen = strlen(prefix);
    char *c = leo_arena_alloc(a, plen + text.len + 1);
    memcpy(c, prefix, plen);
    if (text.len)
        memcpy(c + plen, text.p, text.len);
    c[plen + text.len] = '\0';
    return leo_str_n(c, plen + text.len);
}

static struct leo_str tool_arguments(struct leo_str text, struct leo_arena *a)
{
    json_t *o = json_object();
    json_object_set_new(o, "query", json_stringn(text.p, text.len));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL) /* only on out-of-memory; text is valid UTF-8 by the chat's contract */
        abort();
    struct leo_str out = leo_arena_strdup_str(a, leo_str_c(s));
    free(s);
    return out;
}

unsigned mock_prompt_tokens(const struct mock_chat *chat)
{
    return chat->prompt_words + MOCK_TOKENS_PER_MESSAGE * chat->nmessages + MOCK_TOKENS_PER_IMAGE * chat->images;
}

void mock_reply_build(const struct mock_chat *chat, uint64_t seq, int64_t created, struct leo_arena *a,
                      struct mock_reply *r)
{
    memset(r, 0, sizeof(*r));
    r->chat = chat;
    r->seq = seq;
    r->created = created;
    r->prompt_tokens = mock_prompt_tokens(chat);
    r->thinking = r->content = leo_str_n("", 0);

    if (chat->blocked) {
        r->blocked = true;
    } else {
        if (chat->thinking || contains_ci(chat->last_user, "think first")) {
            r->thinking = prefixed(thinking_prefix, chat->last_user, a);
            r->thinking_tokens = mock_count_words(r->thinking.p, r->thinking.len);
            snprintf(r->signature, sizeof(r->signature), "mock-signature-%llu", (unsigned long long)seq);
        }
        size_t ncalls = 0;
        if (chat->ntools > 0 && !chat->after_tool_result) {
            if (contains_ci(chat->last_user, "parallel tools"))
                ncalls = chat->ntools;
            else if (contains_ci(chat->last_user, "call a tool"))
                ncalls = 1;
        }
        if (ncalls > 0) {
            r->tool_calls = true;
            r->ncalls = ncalls;
            r->calls = leo_arena_zalloc(a, ncalls * sizeof(*r->calls));
            struct leo_str args = tool_arguments(chat->last_user, a);
            for (size_t i = 0; i < ncalls; i++) {
                snprintf(r->calls[i].id, sizeof(r->calls[i].id), "call_mock_%zu", i + 1);
                r->calls[i].name = chat->tools[i];
                r->calls[i].arguments = args;
                r->completion_tokens += 1 + mock_count_words(args.p, args.len);
            }
        } else {
            r->content = prefixed(reply_prefix, chat->last_user, a);
            r->completion_tokens = mock_count_words(r->content.p, r->content.len);
        }
        r->completion_tokens += r->thinking_tokens;
    }

    struct plan pl = {NULL, 0, 0, 0};
    plan_all(&pl, r); /* count */
    pl.steps = leo_arena_alloc(a, pl.n * sizeof(*pl.steps));
    pl.n = 0;
    plan_all(&pl, r); /* fill */
    r->steps = pl.steps;
    r->nsteps = pl.n;
    r->first_delta = r->nsteps;
    for (size_t i = 0; i < r->nsteps; i++) {
        if (r->steps[i].kind == MOCK_STEP_TEXT || r->steps[i].kind == MOCK_STEP_CALL_ARGS) {
            r->first_delta = i;
            break;
        }
    }
}
