/*
 * cache_asm.c — a stream turned into the whole answer it stands for, and a whole answer replayed as a stream.
 *
 * The cache stores whole answers only; a streamed answer is assembled on the way past (every chunk the client
 * got is fed here) and a cached answer is replayed as SSE for a client that streams. The pair is built so that
 * assemble(replay(x)) == x for every answer x the assembler can produce, which the unit tests check.
 *
 * What is refused rather than approximated (the answer is then simply not cached): OpenAI logprobs, audio,
 * the legacy function_call, annotations and any other delta member this file does not know; Anthropic
 * citations, server tool blocks and unknown events. A cache that replays an answer without its logprobs or
 * citations would serve something other than what the upstream said.
 *
 * Text accumulates in leo_bufs (appending to jansson strings would copy the whole string per chunk), bounded
 * together by max_bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "cache.h"
#include "sse.h"

#define DEFAULT_MAX_BYTES (64u << 20)

struct acc_tool {
    json_int_t index;
    json_t *id, *type;
    struct leo_buf name, args;
};

struct acc_choice {
    json_int_t index;
    json_t *role;
    struct leo_buf content, refusal, reasoning;
    bool has_content, has_refusal, has_reasoning;
    struct acc_tool *tools;
    size_t ntools;
    json_t *finish;
};

enum block_kind { BLOCK_TEXT, BLOCK_THINKING, BLOCK_REDACTED, BLOCK_TOOL_USE };

struct acc_block {
    json_int_t index;
    enum block_kind kind;
    json_t *start;       /* the content_block of content_block_start (own copy) */
    struct leo_buf text; /* text, thinking, or the tool input's partial JSON */
    struct leo_buf sig;  /* thinking: the signature */
    bool stopped;
};

struct leo_cache_asm {
    enum leo_dialect dialect;
    size_t max, total;
    bool failed;
    /* OpenAI */
    json_t *id, *model, *created, *fingerprint, *tier, *usage;
    struct acc_choice *choices;
    size_t nchoices;
    /* Anthropic */
    json_t *message; /* message_start's message (own copy) */
    struct acc_block *blocks;
    size_t nblocks;
    json_t *stop_reason, *stop_sequence;
    bool stopped;
};

struct leo_cache_asm *leo_cache_asm_new(enum leo_dialect dialect, size_t max_bytes)
{
    struct leo_cache_asm *a = leo_new(struct leo_cache_asm);
    a->dialect = dialect;
    a->max = max_bytes ? max_bytes : DEFAULT_MAX_BYTES;
    return a;
}

void leo_cache_asm_free(struct leo_cache_asm *a)
{
    if (a == NULL)
        return;
    json_decref(a->id);
    json_decref(a->model);
    json_decref(a->created);
    json_decref(a->fingerprint);
    json_decref(a->tier);
    json_decref(a->usage);
    for (size_t i = 0; i < a->nchoices; i++) {
        struct acc_choice *c = &a->choices[i];
        json_decref(c->role);
        json_decref(c->finish);
        leo_buf_release(&c->content);
        leo_buf_release(&c->refusal);
        leo_buf_release(&c->reasoning);
        for (size_t j = 0; j < c->ntools; j++) {
            json_decref(c->tools[j].id);
            json_decref(c->tools[j].type);
            leo_buf_release(&c->tools[j].name);
            leo_buf_release(&c->tools[j].args);
        }
        leo_free(c->tools);
    }
    leo_free(a->choices);
    json_decref(a->message);
    for (size_t i = 0; i < a->nblocks; i++) {
        json_decref(a->blocks[i].start);
        leo_buf_release(&a->blocks[i].text);
        leo_buf_release(&a->blocks[i].sig);
    }
    leo_free(a->blocks);
    json_decref(a->stop_reason);
    json_decref(a->stop_sequence);
    leo_free(a);
}

static int refuse(struct leo_cache_asm *a, struct leo_buf *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(struct leo_cache_asm *a, struct leo_buf *err, int code, const char *fmt, ...)
{
    a->failed = true;
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        leo_buf_vaddf(err, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Appends a string value to an accumulator, within the assembler's byte bound. */
static int acc_add(struct leo_cache_asm *a, struct leo_buf *b, json_t *s, struct leo_buf *err)
{
    size_t n = json_string_length(s);
    if (a->total + n > a->max)
        return refuse(a, err, LEO_ETOOBIG, "the answer exceeds %zu bytes", a->max);
    a->total += n;
    leo_buf_add(b, json_string_value(s), n);
    return 0;
}

/* Keeps a reference to v in *slot (replacing what was there). */
static void keep(json_t **slot, json_t *v)
{
    json_incref(v);
    json_decref(*slot);
    *slot = v;
}

/* ---- OpenAI ------------------------------------------------------------------------------------------- */

static struct acc_choice *choice_at(struct leo_cache_asm *a, json_int_t index)
{
    for (size_t i = 0; i < a->nchoices; i++)
        if (a->choices[i].index == index)
            return &a->choices[i];
    a->choices = leo_realloc(a->choices, (a->nchoices + 1) * sizeof(*a->choices));
    struct acc_choice *c = &a->choices[a->nchoices++];
    memset(c, 0, sizeof(*c));
    c->index = index;
    c->content = c->refusal = c->reasoning = (struct leo_buf)LEO_BUF_INIT;
    return c;
}

static struct acc_tool *tool_at(struct acc_choice *c, json_int_t index)
{
    for (size_t i = 0; i < c->ntools; i++)
        if (c->tools[i].index == index)
            return &c->tools[i];
    c->tools = leo_realloc(c->tools, (c->ntools + 1) * sizeof(*c->tools));
    struct acc_tool *t = &c->tools[c->ntools++];
    memset(t, 0, sizeof(*t));
    t->index = index;
    t->name = t->args = (struct leo_buf)LEO_BUF_INIT;
    return t;
}

static int feed_tool_calls(struct leo_cache_asm *a, struct acc_choice *c, json_t *calls, struct leo_buf *err)
{
    if (!json_is_array(calls))
        return refuse(a, err, LEO_EINVAL, "delta.tool_calls is not an array");
    size_t i;
    json_t *tc;
    json_array_foreach(calls, i, tc)
    {
        json_t *idx = json_object_get(tc, "index");
        if (!json_is_object(tc) || !json_is_integer(idx))
            return refuse(a, err, LEO_EINVAL, "delta.tool_calls[%zu] has no index", i);
        struct acc_tool *t = tool_at(c, json_integer_value(idx));
        json_t *v = json_object_get(tc, "id");
        if (json_is_string(v) && json_string_length(v))
            keep(&t->id, v);
        v = json_object_get(tc, "type");
        if (json_is_string(v))
            keep(&t->type, v);
        json_t *fn = json_object_get(tc, "function");
        if (json_is_object(fn)) {
            json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
            int rc = 0;
            if (json_is_string(name))
                rc = acc_add(a, &t->name, name, err);
            if (rc == 0 && json_is_string(args))
                rc = acc_add(a, &t->args, args, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Delta members that hold text, accumulated per choice. */
static int feed_text(struct leo_cache_asm *a, json_t *v, struct leo_buf *b, bool *has, const char *what,
                     struct leo_buf *err)
{
    if (json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return refuse(a, err, LEO_EINVAL, "delta.%s is not a string", what);
    *has = true;
    return acc_add(a, b, v, err);
}

static int feed_delta(struct leo_cache_asm *a, struct acc_choice *c, json_t *delta, struct leo_buf *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(delta, key, v)
    {
        int rc = 0;
        if (strcmp(key, "role") == 0) {
            if (json_is_string(v))
                keep(&c->role, v);
        } else if (strcmp(key, "content") == 0) {
            rc = feed_text(a, v, &c->content, &c->has_content, key, err);
        } else if (strcmp(key, "refusal") == 0) {
            rc = feed_text(a, v, &c->refusal, &c->has_refusal, key, err);
        } else if (strcmp(key, "reasoning_content") == 0) {
            rc = feed_text(a, v, &c->reasoning, &c->has_reasoning, key, err);
        } else if (strcmp(key, "tool_calls") == 0) {
            if (!json_is_null(v))
                rc = feed_tool_calls(a, c, v, err);
        } else if (!json_is_null(v)) {
            rc = refuse(a, err, LEO_EINVAL, "delta member \"%s\" cannot be cached", key);
        }
        if (rc)
            return rc;
    }
    return 0;
}

int leo_cache_asm_openai(struct leo_cache_asm *a, json_t *chunk, struct leo_buf *err)
{
    if (a->failed)
        return refuse(a, err, LEO_EINVAL, "an earlier chunk was refused");
    if (!json_is_object(chunk))
        return refuse(a, err, LEO_EINVAL, "a chunk is not an object");
    if (a->id == NULL && json_is_string(json_object_get(chunk, "id")))
        keep(&a->id, json_object_get(chunk, "id"));
    if (a->model == NULL && json_is_string(json_object_get(chunk, "model")))
        keep(&a->model, json_object_get(chunk, "model"));
    if (a->created == NULL && json_is_integer(json_object_get(chunk, "created")))
        keep(&a->created, json_object_get(chunk, "created"));
    if (json_is_string(json_object_get(chunk, "system_fingerprint")))
        keep(&a->fingerprint, json_object_get(chunk, "system_fingerprint"));
    if (json_is_string(json_object_get(chunk, "service_tier")))
        keep(&a->tier, json_object_get(chunk, "service_tier"));
    if (json_is_object(json_object_get(chunk, "usage")))
        keep(&a->usage, json_object_get(chunk, "usage"));
    json_t *choices = json_object_get(chunk, "choices");
    if (choices != NULL && !json_is_array(choices))
        return refuse(a, err, LEO_EINVAL, "choices is not an array");
    size_t i;
    json_t *ch;
    json_array_foreach(choices, i, ch)
    {
        json_t *idx = json_object_get(ch, "index");
        if (!json_is_integer(idx))
            return refuse(a, err, LEO_EINVAL, "choices[%zu] has no index", i);
        json_t *lp = json_object_get(ch, "logprobs");
        if (lp != NULL && !json_is_null(lp))
            return refuse(a, err, LEO_EINVAL, "logprobs cannot be cached");
        struct acc_choice *c = choice_at(a, json_integer_value(idx));
        json_t *delta = json_object_get(ch, "delta");
        if (json_is_object(delta)) {
            int rc = feed_delta(a, c, delta, err);
            if (rc)
                return rc;
        }
        json_t *fr = json_object_get(ch, "finish_reason");
        if (json_is_string(fr))
            keep(&c->finish, fr);
    }
    return 0;
}

static int cmp_choice(const void *x, const void *y)
{
    json_int_t a = ((const struct acc_choice *)x)->index, b = ((const struct acc_choice *)y)->index;
    return (a > b) - (a < b);
}

static int cmp_tool(const void *x, const void *y)
{
    json_int_t a = ((const struct acc_tool *)x)->index, b = ((const struct acc_tool *)y)->index;
    return (a > b) - (a < b);
}

static int cmp_block(const void *x, const void *y)
{
    json_int_t a = ((const struct acc_block *)x)->index, b = ((const struct acc_block *)y)->index;
    return (a > b) - (a < b);
}

static json_t *buf_string(const struct leo_buf *b)
{
    return json_stringn(b->p, b->len);
}

static json_t *finish_openai(struct leo_cache_asm *a, struct leo_buf *err)
{
    if (a->nchoices == 0) {
        refuse(a, err, LEO_EINVAL, "the stream has no choices");
        return NULL;
    }
    qsort(a->choices, a->nchoices, sizeof(*a->choices), cmp_choice);
    json_t *choices = json_array();
    for (size_t i = 0; i < a->nchoices; i++) {
        struct acc_choice *c = &a->choices[i];
        if (c->finish == NULL) {
            json_decref(choices);
            refuse(a, err, LEO_EINVAL, "choice %lld has no finish_reason", (long long)c->index);
            return NULL;
        }
        json_t *msg = json_object();
        json_object_set_new(msg, "role", c->role ? json_incref(c->role) : json_string("assistant"));
        json_object_set_new(msg, "content", c->has_content ? buf_string(&c->content) : json_null());
        json_object_set_new(msg, "refusal", c->has_refusal ? buf_string(&c->refusal) : json_null());
        if (c->has_reasoning)
            json_object_set_new(msg, "reasoning_content", buf_string(&c->reasoning));
        if (c->ntools) {
            qsort(c->tools, c->ntools, sizeof(*c->tools), cmp_tool);
            json_t *calls = json_array();
            for (size_t j = 0; j < c->ntools; j++) {
                struct acc_tool *t = &c->tools[j];
                json_t *fn = json_pack("{s:o,s:o}", "name", buf_string(&t->name), "arguments", buf_string(&t->args));
                json_array_append_new(
                    calls, json_pack("{s:o,s:o,s:o}", "id", t->id ? json_incref(t->id) : json_string(""), "type",
                                     t->type ? json_incref(t->type) : json_string("function"), "function", fn));
            }
            json_object_set_new(msg, "tool_calls", calls);
        }
        json_array_append_new(choices, json_pack("{s:I,s:o,s:n,s:O}", "index", c->index, "message", msg, "logprobs",
                                                 "finish_reason", c->finish));
    }
    json_t *doc = json_object();
    json_object_set_new(doc, "id", a->id ? json_incref(a->id) : json_string(""));
    json_object_set_new(doc, "object", json_string("chat.completion"));
    json_object_set_new(doc, "created", a->created ? json_incref(a->created) : json_integer(0));
    json_object_set_new(doc, "model", a->model ? json_incref(a->model) : json_string(""));
    json_object_set_new(doc, "choices", choices);
    if (a->usage)
        json_object_set(doc, "usage", a->usage);
    if (a->fingerprint)
        json_object_set(doc, "system_fingerprint", a->fingerprint);
    if (a->tier)
        json_object_set(doc, "service_tier", a->tier);
    return doc;
}

/* ---- Anthropic ------------------------------------------------------------------------------------------ */

static const struct {
    const char *type;
    enum block_kind kind;
} block_types[] = {
    {"text", BLOCK_TEXT},
    {"thinking", BLOCK_THINKING},
    {"redacted_thinking", BLOCK_REDACTED},
    {"tool_use", BLOCK_TOOL_USE},
};

static int block_kind_of(json_t *block)
{
    const char *t = json_string_value(json_object_get(block, "type"));
    for (size_t i = 0; t && i < sizeof(block_types) / sizeof(block_types[0]); i++)
        if (strcmp(t, block_types[i].type) == 0)
            return (int)block_types[i].kind;
    return -1;
}

static struct acc_block *block_at(struct leo_cache_asm *a, json_t *idx)
{
    if (!json_is_integer(idx))
        return NULL;
    for (size_t i = 0; i < a->nblocks; i++)
        if (a->blocks[i].index == json_integer_value(idx))
            return &a->blocks[i];
    return NULL;
}

static bool has_citations(json_t *block)
{
    json_t *c = json_object_get(block, "citations");
    return c != NULL && !json_is_null(c) && !(json_is_array(c) && json_array_size(c) == 0);
}

static int on_block_start(struct leo_cache_asm *a, json_t *data, struct leo_buf *err)
{
    json_t *idx = json_object_get(data, "index"), *cb = json_object_get(data, "content_block");
    if (!json_is_integer(idx) || !json_is_object(cb) || block_at(a, idx))
        return refuse(a, err, LEO_EINVAL, "content_block_start without a new index and a block");
    int kind = block_kind_of(cb);
    if (kind < 0 || has_citations(cb))
        return refuse(a, err, LEO_EINVAL, "a content block of type \"%s\" cannot be cached",
                      json_string_value(json_object_get(cb, "type")) ? json_string_value(json_object_get(cb, "type"))
                                                                     : "?");
    a->blocks = leo_realloc(a->blocks, (a->nblocks + 1) * sizeof(*a->blocks));
    struct acc_block *b = &a->blocks[a->nblocks++];
    memset(b, 0, sizeof(*b));
    b->index = json_integer_value(idx);
    b->kind = (enum block_kind)kind;
    b->start = json_deep_copy(cb);
    b->text = b->sig = (struct leo_buf)LEO_BUF_INIT;
    json_t *t = json_object_get(cb, kind == BLOCK_TEXT ? "text" : "thinking");
    if ((kind == BLOCK_TEXT || kind == BLOCK_THINKING) && json_is_string(t))
        return acc_add(a, &b->text, t, err);
    return 0;
}

/* Delta types, which accumulator they feed and the member holding the text. */
static const struct {
    const char *type;
    enum block_kind kind;
    const char *member;
    bool sig;
} delta_types[] = {
    {"text_delta", BLOCK_TEXT, "text", false},
    {"thinking_delta", BLOCK_THINKING, "thinking", false},
    {"signature_delta", BLOCK_THINKING, "signature", true},
    {"input_json_delta", BLOCK_TOOL_USE, "partial_json", false},
};

static int on_block_delta(struct leo_cache_asm *a, json_t *data, struct leo_buf *err)
{
    struct acc_block *b = block_at(a, json_object_get(data, "index"));
    json_t *d = json_object_get(data, "delta");
    const char *type = json_string_value(json_object_get(d, "type"));
    if (b == NULL || b->stopped || type == NULL)
        return refuse(a, err, LEO_EINVAL, "content_block_delta for no open block");
    for (size_t i = 0; i < sizeof(delta_types) / sizeof(delta_types[0]); i++) {
        if (strcmp(type, delta_types[i].type) != 0)
            continue;
        json_t *s = json_object_get(d, delta_types[i].member);
        if (b->kind != delta_types[i].kind || !json_is_string(s))
            return refuse(a, err, LEO_EINVAL, "%s does not fit its block", type);
        return acc_add(a, delta_types[i].sig ? &b->sig : &b->text, s, err);
    }
    return refuse(a, err, LEO_EINVAL, "a delta of type \"%s\" cannot be cached", type);
}

int leo_cache_asm_anthropic(struct leo_cache_asm *a, struct leo_str event, json_t *data, struct leo_buf *err)
{
    if (a->failed)
        return refuse(a, err, LEO_EINVAL, "an earlier event was refused");
    if (a->stopped)
        return refuse(a, err, LEO_EINVAL, "an event after message_stop");
    if (leo_str_eqc(event, "ping"))
        return 0;
    if (!json_is_object(data))
        return refuse(a, err, LEO_EINVAL, "event data is not an object");
    if (leo_str_eqc(event, "message_start")) {
        json_t *m = json_object_get(data, "message");
        if (!json_is_object(m) || a->message)
            return refuse(a, err, LEO_EINVAL, "message_start without a message, or twice");
        a->message = json_deep_copy(m);
        return 0;
    }
    if (a->message == NULL)
        return refuse(a, err, LEO_EINVAL, "an event before message_start");
    if (leo_str_eqc(event, "content_block_start"))
        return on_block_start(a, data, err);
    if (leo_str_eqc(event, "content_block_delta"))
        return on_block_delta(a, data, err);
    if (leo_str_eqc(event, "content_block_stop")) {
        struct acc_block *b = block_at(a, json_object_get(data, "index"));
        if (b == NULL)
            return refuse(a, err, LEO_EINVAL, "content_block_stop for no block");
        b->stopped = true;
        return 0;
    }
    if (leo_str_eqc(event, "message_delta")) {
        json_t *d = json_object_get(data, "delta"), *u = json_object_get(data, "usage");
        if (json_object_get(d, "stop_reason"))
            keep(&a->stop_reason, json_object_get(d, "stop_reason"));
        if (json_object_get(d, "stop_sequence"))
            keep(&a->stop_sequence, json_object_get(d, "stop_sequence"));
        if (json_is_object(u)) {
            json_t *mu = json_object_get(a->message, "usage");
            if (!json_is_object(mu)) {
                mu = json_object();
                json_object_set_new(a->message, "usage", mu);
            }
            json_object_update(mu, u);
        }
        return 0;
    }
    if (leo_str_eqc(event, "message_stop")) {
        a->stopped = true;
        return 1;
    }
    return refuse(a, err, LEO_EINVAL, "event \"%.*s\" cannot be cached", (int)(event.len > 64 ? 64 : event.len),
                  event.p);
}

static json_t *finish_anthropic(struct leo_cache_asm *a, struct leo_buf *err)
{
    if (!a->stopped) {
        refuse(a, err, LEO_EINVAL, "the stream did not reach message_stop");
        return NULL;
    }
    if (a->nblocks) /* qsort wants a valid pointer even for nothing */
        qsort(a->blocks, a->nblocks, sizeof(*a->blocks), cmp_block);
    json_t *content = json_array();
    for (size_t i = 0; i < a->nblocks; i++) {
        struct acc_block *b = &a->blocks[i];
        json_t *blk = json_deep_copy(b->start);
        if (!b->stopped) {
            json_decref(blk);
            json_decref(content);
            refuse(a, err, LEO_EINVAL, "content block %lld was not stopped", (long long)b->index);
            return NULL;
        }
        if (b->kind == BLOCK_TEXT) {
            json_object_set_new(blk, "text", buf_string(&b->text));
        } else if (b->kind == BLOCK_THINKING) {
            json_object_set_new(blk, "thinking", buf_string(&b->text));
            json_t *s0 = json_object_get(blk, "signature");
            if (b->sig.len || !json_is_string(s0))
                json_object_set_new(blk, "signature", buf_string(&b->sig));
        } else if (b->kind == BLOCK_TOOL_USE) {
            json_t *input = b->text.len ? json_loadb(b->text.p, b->text.len, JSON_DECODE_ANY, NULL) : json_object();
            if (!json_is_object(input)) {
                json_decref(input);
                json_decref(blk);
                json_decref(content);
                refuse(a, err, LEO_EINVAL, "tool_use block %lld has invalid input JSON", (long long)b->index);
                return NULL;
            }
            json_object_set_new(blk, "input", input);
        }
        json_array_append_new(content, blk);
    }
    json_t *doc = json_deep_copy(a->message);
    json_object_set_new(doc, "content", content);
    json_object_set(doc, "stop_reason", a->stop_reason ? a->stop_reason : json_null());
    json_object_set(doc, "stop_sequence", a->stop_sequence ? a->stop_sequence : json_null());
    return doc;
}

json_t *leo_cache_asm_finish(struct leo_cache_asm *a, struct leo_buf *err)
{
    if (a->failed) {
        if (err)
            leo_buf_adds(err, "the stream was refused");
        return NULL;
    }
    return a->dialect == LEO_DIALECT_ANTHROPIC ? finish_anthropic(a, err) : finish_openai(a, err);
}

/* ---- replay -------------------------------------------------------------------------------------------- */

static bool null_or_string(json_t *v)
{
    return v == NULL || json_is_null(v) || json_is_string(v);
}

static bool openai_message_replayable(json_t *m)
{
    const char *key;
    json_t *v;
    json_object_foreach(m, key, v)
    {
        if (strcmp(key, "role") == 0 || strcmp(key, "content") == 0 || strcmp(key, "refusal") == 0 ||
            strcmp(key, "reasoning_content") == 0) {
            if (!null_or_string(v))
                return false;
        } else if (strcmp(key, "tool_calls") == 0) {
            size_t i;
            json_t *tc;
            if (!json_is_array(v))
                return json_is_null(v);
            json_array_foreach(v, i, tc)
            {
                json_t *fn = json_object_get(tc, "function");
                if (!json_is_string(json_object_get(fn, "name")) || !json_is_string(json_object_get(fn, "arguments")))
                    return false;
            }
        } else if (strcmp(key, "annotations") == 0) {
            if (!json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
                return false;
        } else if (!json_is_null(v)) {
            return false; /* audio, function_call, anything newer */
        }
    }
    return true;
}

bool leo_cache_replayable(enum leo_dialect dialect, json_t *doc)
{
    if (!json_is_object(doc))
        return false;
    size_t i;
    json_t *v;
    if (dialect == LEO_DIALECT_ANTHROPIC) {
        json_t *content = json_object_get(doc, "content");
        if (!json_is_array(content))
            return false;
        json_array_foreach(content, i, v)
        {
            if (block_kind_of(v) < 0 || has_citations(v))
                return false;
            if (block_kind_of(v) == BLOCK_TOOL_USE && !json_is_object(json_object_get(v, "input")))
                return false;
        }
        return true;
    }
    json_t *choices = json_object_get(doc, "choices");
    if (!json_is_array(choices) || json_array_size(choices) == 0)
        return false;
    json_array_foreach(choices, i, v)
    {
        json_t *lp = json_object_get(v, "logprobs");
        if (!json_is_integer(json_object_get(v, "index")) || !json_is_object(json_object_get(v, "message")) ||
            !json_is_string(json_object_get(v, "finish_reason")) || (lp && !json_is_null(lp)) ||
            !openai_message_replayable(json_object_get(v, "message")))
            return false;
    }
    return true;
}

static int emit(struct leo_buf *out, const char *event, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(obj);
    if (s == NULL)
        return LEO_EINVAL;
    int rc = leo_sse_append_event(out, event, s, strlen(s));
    free(s);
    return rc;
}

/* A chunk of the answer: the common members and one choice with this delta (or no choice when delta NULL). */
static json_t *openai_chunk(json_t *doc, const char *id, int64_t created, json_int_t index, json_t *delta,
                            json_t *finish)
{
    json_t *c = json_object();
    json_object_set_new(c, "id", id ? json_string(id) : json_incref(json_object_get(doc, "id")));
    json_object_set_new(c, "object", json_string("chat.completion.chunk"));
    json_object_set_new(c, "created", created ? json_integer(created) : json_incref(json_object_get(doc, "created")));
    json_object_set(c, "model", json_object_get(doc, "model"));
    if (json_is_string(json_object_get(doc, "system_fingerprint")))
        json_object_set(c, "system_fingerprint", json_object_get(doc, "system_fingerprint"));
    if (json_is_string(json_object_get(doc, "service_tier")))
        json_object_set(c, "service_tier", json_object_get(doc, "service_tier"));
    json_t *choices = json_array();
    if (delta)
        json_array_append_new(choices, json_pack("{s:I,s:o,s:n,s:O}", "index", index, "delta", delta, "logprobs",
                                                 "finish_reason", finish ? finish : json_null()));
    json_object_set_new(c, "choices", choices);
    /* jansson turns a missing member into NULL: keep the object valid when the stored doc lacks one */
    if (json_object_get(c, "id") == NULL)
        json_object_set_new(c, "id", json_string(""));
    if (json_object_get(c, "created") == NULL)
        json_object_set_new(c, "created", json_integer(0));
    return c;
}

static int replay_openai(json_t *doc, const char *id, int64_t created, bool include_usage, struct leo_buf *out)
{
    size_t i;
    json_t *ch;
    int rc = 0;
    json_array_foreach(json_object_get(doc, "choices"), i, ch)
    {
        json_int_t idx = json_integer_value(json_object_get(ch, "index"));
        json_t *m = json_object_get(ch, "message");
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        json_t *refusal = json_object_get(m, "refusal"), *reasoning = json_object_get(m, "reasoning_content");
        json_t *d =
            json_pack("{s:o,s:o,s:n}", "role", json_is_string(role) ? json_incref(role) : json_string("assistant"),
                      "content", json_is_string(content) ? json_string("") : json_null(), "refusal");
        rc = emit(out, NULL, openai_chunk(doc, id, created, idx, d, NULL));
        if (rc == 0 && json_is_string(reasoning))
            rc = emit(out, NULL,
                      openai_chunk(doc, id, created, idx, json_pack("{s:O}", "reasoning_content", reasoning), NULL));
        if (rc == 0 && json_is_string(content) && json_string_length(content))
            rc = emit(out, NULL, openai_chunk(doc, id, created, idx, json_pack("{s:O}", "content", content), NULL));
        if (rc == 0 && json_is_string(refusal))
            rc = emit(out, NULL, openai_chunk(doc, id, created, idx, json_pack("{s:O}", "refusal", refusal), NULL));
        size_t k;
        json_t *tc;
        json_array_foreach(json_object_get(m, "tool_calls"), k, tc)
        {
            if (rc)
                break;
            json_t *fn = json_object_get(tc, "function");
            json_t *call =
                json_pack("{s:I,s:O,s:O,s:{s:O,s:O}}", "index", (json_int_t)k, "id",
                          json_object_get(tc, "id") ? json_object_get(tc, "id") : json_null(), "type",
                          json_object_get(tc, "type") ? json_object_get(tc, "type") : json_null(), "function", "name",
                          json_object_get(fn, "name"), "arguments", json_object_get(fn, "arguments"));
            rc = emit(out, NULL, openai_chunk(doc, id, created, idx, json_pack("{s:[o]}", "tool_calls", call), NULL));
        }
        if (rc == 0)
            rc = emit(out, NULL,
                      openai_chunk(doc, id, created, idx, json_object(), json_object_get(ch, "finish_reason")));
        if (rc)
            return rc;
    }
    json_t *usage = json_object_get(doc, "usage");
    if (include_usage && json_is_object(usage)) {
        json_t *c = openai_chunk(doc, id, created, 0, NULL, NULL);
        json_object_set(c, "usage", usage);
        rc = emit(out, NULL, c);
    }
    return rc ? rc : leo_buf_adds(out, "data: [DONE]\n\n");
}

static int replay_anthropic(json_t *doc, const char *id, struct leo_buf *out)
{
    json_t *msg = json_deep_copy(doc);
    if (id)
        json_object_set_new(msg, "id", json_string(id));
    json_object_set_new(msg, "content", json_array());
    json_object_set_new(msg, "stop_reason", json_null());
    json_object_set_new(msg, "stop_sequence", json_null());
    json_t *usage = json_object_get(msg, "usage");
    json_t *out_tokens = json_object_get(json_object_get(doc, "usage"), "output_tokens");
    if (json_is_object(usage) && out_tokens)
        json_object_set_new(usage, "output_tokens", json_integer(0));
    int rc = emit(out, "message_start", json_pack("{s:s,s:o}", "type", "message_start", "message", msg));
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(doc, "content"), i, b)
    {
        if (rc)
            return rc;
        int kind = block_kind_of(b);
        json_t *start = json_deep_copy(b);
        json_t *deltas[2] = {NULL, NULL};
        if (kind == BLOCK_TEXT) {
            json_object_set_new(start, "text", json_string(""));
            json_t *t = json_object_get(b, "text");
            if (json_string_length(t))
                deltas[0] = json_pack("{s:s,s:O}", "type", "text_delta", "text", t);
        } else if (kind == BLOCK_THINKING) {
            json_object_set_new(start, "thinking", json_string(""));
            json_object_set_new(start, "signature", json_string(""));
            json_t *t = json_object_get(b, "thinking"), *s = json_object_get(b, "signature");
            if (json_string_length(t))
                deltas[0] = json_pack("{s:s,s:O}", "type", "thinking_delta", "thinking", t);
            if (json_string_length(s))
                deltas[1] = json_pack("{s:s,s:O}", "type", "signature_delta", "signature", s);
        } else if (kind == BLOCK_TOOL_USE) {
            json_object_set_new(start, "input", json_object());
            char *js = json_dumps(json_object_get(b, "input"), JSON_COMPACT | JSON_REAL_PRECISION(17));
            deltas[0] = json_pack("{s:s,s:s}", "type", "input_json_delta", "partial_json", js ? js : "{}");
            free(js);
        }
        rc = emit(
            out, "content_block_start",
            json_pack("{s:s,s:I,s:o}", "type", "content_block_start", "index", (json_int_t)i, "content_block", start));
        for (int k = 0; k < 2; k++) {
            if (deltas[k] == NULL)
                continue;
            if (rc == 0)
                rc = emit(out, "content_block_delta",
                          json_pack("{s:s,s:I,s:o}", "type", "content_block_delta", "index", (json_int_t)i, "delta",
                                    deltas[k]));
            else
                json_decref(deltas[k]);
        }
        if (rc == 0)
            rc = emit(out, "content_block_stop",
                      json_pack("{s:s,s:I}", "type", "content_block_stop", "index", (json_int_t)i));
    }
    if (rc)
        return rc;
    json_t *sr = json_object_get(doc, "stop_reason"), *ss = json_object_get(doc, "stop_sequence");
    json_t *delta =
        json_pack("{s:O,s:O}", "stop_reason", sr ? sr : json_null(), "stop_sequence", ss ? ss : json_null());
    json_t *md = json_pack("{s:s,s:o}", "type", "message_delta", "delta", delta);
    if (out_tokens)
        json_object_set_new(md, "usage", json_pack("{s:O}", "output_tokens", out_tokens));
    rc = emit(out, "message_delta", md);
    if (rc == 0)
        rc = emit(out, "message_stop", json_pack("{s:s}", "type", "message_stop"));
    return rc;
}

int leo_cache_replay_sse(enum leo_dialect dialect, json_t *doc, const char *id, int64_t created, bool include_usage,
                         struct leo_buf *out)
{
    if (!leo_cache_replayable(dialect, doc))
        return LEO_EINVAL;
    size_t mark = out->len;
    int rc = dialect == LEO_DIALECT_ANTHROPIC ? replay_anthropic(doc, id, out)
                                              : replay_openai(doc, id, created, include_usage, out);
    if (rc != 0) {
        out->len = mark;
        out->p[mark] = '\0';
    }
    return rc;
}
