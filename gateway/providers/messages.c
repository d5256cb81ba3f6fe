/*
 * messages.c — the Anthropic Messages dialect on the client side: an Anthropic request becomes a canonical
 * (OpenAI Chat Completions) request, and a canonical response or chunk stream becomes an Anthropic message or
 * event stream. Used when an Anthropic client reaches an upstream that does not speak Anthropic.
 *
 * Request mapping (Anthropic → canonical):
 *   model, max_tokens (both required, as Anthropic requires them), temperature, top_p: copied.
 *   system (string or text blocks)      → a leading {"role":"system"} message.
 *   text blocks                         → text parts; content made of a single text block becomes a string.
 *   image {source base64 | url}         → image_url parts (base64 as a data: URI).
 *   tool_use (assistant)                → tool_calls, the input serialised as compact JSON arguments.
 *   tool_result (user)                  → {"role":"tool"} messages, placed before the rest of that user turn.
 *   thinking (assistant)                → reasoning_content and reasoning_signature.
 *   stop_sequences → stop; stream → stream; metadata.user_id → user.
 *   tools (custom tools)                → function tools (input_schema → parameters, strict → strict).
 *   tool_choice auto|any|tool|none      → "auto" | "required" | {"type":"function",...} | "none";
 *                                         disable_parallel_tool_use → parallel_tool_calls false. Both are left out
 *                                         when the request has no tools (OpenAI rejects tool_choice without tools).
 *   thinking {enabled, budget_tokens}   → reasoning_effort: <= 2048 "low", <= 8192 "medium", else "high".
 *   output_config.effort                → reasoning_effort (low|medium|high; "max" → "high"); overrides thinking.
 *   output_config.format, output_format → response_format {"type":"json_schema"} named "output", strict.
 * Dropped, because the canonical form has no equivalent and dropping them does not change the answer's meaning:
 *   cache_control (everywhere), top_k, service_tier, citations on text blocks, redacted_thinking blocks (their
 *   content is encrypted for Anthropic only), thinking {type disabled | adaptive} (no reasoning_effort: the
 *   model's default), tool_result is_error (OpenAI tool messages carry no error flag; the result's text is kept
 *   as is), signatures when one assistant turn holds several thinking blocks (their texts are joined with a
 *   blank line, which no single signature covers), unknown top-level fields.
 * Rejected with LEO_EINVAL naming the field, because the upstream cannot do what they ask:
 *   document, search_result and every other block type not listed above, image sources other than base64 and
 *   url (Files API ids), images inside tool results, server tools (a tool "type" other than "custom"),
 *   container, mcp_servers, context_management.
 *
 * Response and stream mapping: see leo_messages_from_canonical and the stream functions below. A finish_reason
 * of "stop" on an answer that holds tool calls becomes "tool_use" (some OpenAI-compatible servers say "stop"),
 * because Anthropic agent loops key on stop_reason to run tools. Only choice 0 is translated (Anthropic has no n).
 */
#include "messages.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/alloc.h"
#include "../../common/error.h"

/* Room for field paths: "messages[N]", then ".content[N]" once or twice (N up to 20 digits). */
#define PATH_MSG 48
#define PATH_BLOCK 80
#define PATH_INNER 112

/* ---- small helpers ---------------------------------------------------------------------------------------- */

static int fail(struct leo_buf *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct leo_buf *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    leo_buf_vaddf(err, fmt, ap);
    va_end(ap);
    return code;
}

/* A string member, or NULL when absent or not a string. */
static const char *str_member(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Appends text as a JSON string literal (quotes included). Invalid UTF-8 sequences become U+FFFD so the output
 * always parses, whatever bytes an upstream error message carried. */
static int add_json_string(struct leo_buf *b, const char *s, size_t n)
{
    int rc = leo_buf_addch(b, '"');
    size_t i = 0, start = 0;
    while (rc == 0 && i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = 0;
        uint32_t cp = 0, min = 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4, cp = c & 0x07, min = 0x10000;
        }
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) {
            unsigned char cc = (unsigned char)s[i + k];
            ok = (cc & 0xc0) == 0x80;
            cp = (cp << 6) | (cc & 0x3f);
        }
        if (ok && cp >= min && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff)) {
            i += len;
            continue;
        }
        rc = leo_buf_add_json_escaped(b, s + start, i - start);
        if (rc == 0)
            rc = leo_buf_adds(b, "\xef\xbf\xbd");
        i++;
        start = i;
    }
    if (rc == 0)
        rc = leo_buf_add_json_escaped(b, s + start, n - start);
    if (rc == 0)
        rc = leo_buf_addch(b, '"');
    return rc;
}

/* ---- request: Anthropic → canonical --------------------------------------------------------------------- */

static bool is_type(json_t *block, const char *type)
{
    const char *t = str_member(block, "type");
    return t != NULL && strcmp(t, type) == 0;
}

/* A text block's text ({"type":"text","text":"..."}). */
static int text_of(json_t *block, const char *path, json_t **out, struct leo_buf *err)
{
    json_t *t = json_object_get(block, "text");
    if (!json_is_string(t))
        return fail(err, LEO_EINVAL, "%s.text: must be a string", path);
    *out = t;
    return 0;
}

/* A list of parts as content: no part is the empty string, a single text part collapses to its string (how
 * OpenAI clients write it and what every compatible server accepts). Steals parts. */
static json_t *text_parts_content(json_t *parts)
{
    if (json_array_size(parts) == 0) {
        json_decref(parts);
        return json_string("");
    }
    if (json_array_size(parts) == 1 && is_type(json_array_get(parts, 0), "text")) {
        json_t *s = json_incref(json_object_get(json_array_get(parts, 0), "text"));
        json_decref(parts);
        return s;
    }
    return parts;
}

static json_t *text_part(json_t *text)
{
    json_t *p = json_object();
    json_object_set_new(p, "type", json_string("text"));
    json_object_set(p, "text", text);
    return p;
}

/* system: a string or an array of text blocks (cache_control and citations dropped). */
static int map_system(json_t *system, json_t *messages, struct leo_buf *err)
{
    json_t *content;
    if (json_is_string(system)) {
        if (json_string_length(system) == 0)
            return 0;
        content = json_incref(system);
    } else if (json_is_array(system)) {
        json_t *parts = json_array();
        size_t i;
        json_t *block;
        json_array_foreach(system, i, block)
        {
            char path[PATH_MSG];
            snprintf(path, sizeof(path), "system[%zu]", i);
            json_t *text = NULL;
            int rc = !is_type(block, "text") ? fail(err, LEO_EINVAL, "%s.type: system blocks must be text blocks", path)
                                             : text_of(block, path, &text, err);
            if (rc) {
                json_decref(parts);
                return rc;
            }
            json_array_append_new(parts, text_part(text));
        }
        if (json_array_size(parts) == 0) {
            json_decref(parts);
            return 0;
        }
        content = text_parts_content(parts);
    } else {
        return fail(err, LEO_EINVAL, "system: must be a string or an array of text blocks");
    }
    json_t *m = json_object();
    json_object_set_new(m, "role", json_string("system"));
    json_object_set_new(m, "content", content);
    json_array_append_new(messages, m);
    return 0;
}

/* image {source {type base64, media_type, data} | {type url, url}} → an image_url part. */
static int map_image(json_t *block, const char *path, json_t **part, struct leo_buf *err)
{
    json_t *source = json_object_get(block, "source");
    const char *type = str_member(source, "type");
    json_t *url;
    if (type == NULL)
        return fail(err, LEO_EINVAL, "%s.source.type: must be \"base64\" or \"url\"", path);
    if (strcmp(type, "base64") == 0) {
        const char *media = str_member(source, "media_type");
        json_t *data = json_object_get(source, "data");
        if (media == NULL)
            return fail(err, LEO_EINVAL, "%s.source.media_type: must be a string", path);
        if (!json_is_string(data))
            return fail(err, LEO_EINVAL, "%s.source.data: must be a string", path);
        struct leo_buf u = LEO_BUF_INIT;
        leo_buf_addf(&u, "data:%s;base64,", media);
        leo_buf_add(&u, json_string_value(data), json_string_length(data));
        url = json_stringn(u.p, u.len);
        leo_buf_release(&u);
        if (url == NULL)
            return fail(err, LEO_EINVAL, "%s.source.media_type: must be valid UTF-8", path);
    } else if (strcmp(type, "url") == 0) {
        url = json_incref(json_object_get(source, "url"));
        if (!json_is_string(url)) {
            json_decref(url);
            return fail(err, LEO_EINVAL, "%s.source.url: must be a string", path);
        }
    } else {
        return fail(err, LEO_EINVAL, "%s.source.type: \"%s\" is not supported by this upstream (only base64 and url)",
                    path, type);
    }
    json_t *iu = json_object();
    json_object_set_new(iu, "url", url);
    *part = json_object();
    json_object_set_new(*part, "type", json_string("image_url"));
    json_object_set_new(*part, "image_url", iu);
    return 0;
}

static int unsupported_block(json_t *block, const char *path, const char *role, struct leo_buf *err)
{
    const char *type = str_member(block, "type");
    if (type == NULL)
        return fail(err, LEO_EINVAL, "%s.type: must be a string", path);
    if (strcmp(type, "tool_use") == 0 || strcmp(type, "thinking") == 0 || strcmp(type, "redacted_thinking") == 0)
        return fail(err, LEO_EINVAL, "%s.type: \"%s\" blocks belong in assistant messages", path, type);
    if (strcmp(type, "tool_result") == 0)
        return fail(err, LEO_EINVAL, "%s.type: \"tool_result\" blocks belong in user messages", path);
    if (strcmp(type, "image") == 0)
        return fail(err, LEO_EINVAL, "%s.type: \"image\" blocks are not allowed in %s messages", path, role);
    return fail(err, LEO_EINVAL, "%s.type: \"%s\" blocks are not supported by this upstream", path, type);
}

/* tool_result → {"role":"tool","tool_call_id","content"}; content is a string or text blocks. */
static int map_tool_result(json_t *block, const char *path, json_t *messages, struct leo_buf *err)
{
    json_t *id = json_object_get(block, "tool_use_id");
    if (!json_is_string(id))
        return fail(err, LEO_EINVAL, "%s.tool_use_id: must be a string", path);
    json_t *c = json_object_get(block, "content");
    json_t *content;
    if (c == NULL || json_is_null(c)) {
        content = json_string("");
    } else if (json_is_string(c)) {
        content = json_incref(c);
    } else if (json_is_array(c)) {
        json_t *parts = json_array();
        size_t i;
        json_t *b;
        json_array_foreach(c, i, b)
        {
            char sub[PATH_INNER];
            snprintf(sub, sizeof(sub), "%s.content[%zu]", path, i);
            json_t *text = NULL;
            int rc;
            if (is_type(b, "text"))
                rc = text_of(b, sub, &text, err);
            else if (is_type(b, "image"))
                rc = fail(err, LEO_EINVAL, "%s.type: images in tool results are not supported by this upstream", sub);
            else
                rc = unsupported_block(b, sub, "user", err);
            if (rc) {
                json_decref(parts);
                return rc;
            }
            json_array_append_new(parts, text_part(text));
        }
        content = text_parts_content(parts);
    } else {
        return fail(err, LEO_EINVAL, "%s.content: must be a string or an array of content blocks", path);
    }
    json_t *m = json_object();
    json_object_set_new(m, "role", json_string("tool"));
    json_object_set(m, "tool_call_id", id);
    json_object_set_new(m, "content", content);
    json_array_append_new(messages, m);
    return 0;
}

static int map_user(json_t *content, const char *path, json_t *messages, struct leo_buf *err)
{
    json_t *parts = json_array();
    size_t i;
    json_t *block;
    int rc = 0;
    json_array_foreach(content, i, block)
    {
        char sub[PATH_BLOCK];
        snprintf(sub, sizeof(sub), "%s.content[%zu]", path, i);
        json_t *part = NULL, *text = NULL;
        if (is_type(block, "text")) {
            rc = text_of(block, sub, &text, err);
            if (rc == 0)
                part = text_part(text);
        } else if (is_type(block, "image")) {
            rc = map_image(block, sub, &part, err);
        } else if (is_type(block, "tool_result")) {
            rc = map_tool_result(block, sub, messages, err);
        } else {
            rc = unsupported_block(block, sub, "user", err);
        }
        if (rc)
            break;
        if (part != NULL)
            json_array_append_new(parts, part);
    }
    if (rc) {
        json_decref(parts);
        return rc;
    }
    /* A turn made only of tool results is fully carried by the tool messages. */
    if (json_array_size(parts) == 0 && json_array_size(content) > 0) {
        json_decref(parts);
        return 0;
    }
    json_t *m = json_object();
    json_object_set_new(m, "role", json_string("user"));
    json_object_set_new(m, "content", text_parts_content(parts));
    json_array_append_new(messages, m);
    return 0;
}

static int map_tool_use(json_t *block, const char *path, json_t *calls, struct leo_buf *err)
{
    json_t *id = json_object_get(block, "id");
    json_t *name = json_object_get(block, "name");
    json_t *input = json_object_get(block, "input");
    if (!json_is_string(id))
        return fail(err, LEO_EINVAL, "%s.id: must be a string", path);
    if (!json_is_string(name))
        return fail(err, LEO_EINVAL, "%s.name: must be a string", path);
    if (input != NULL && !json_is_object(input))
        return fail(err, LEO_EINVAL, "%s.input: must be an object", path);
    char *args = input ? json_dumps(input, JSON_COMPACT) : NULL;
    json_t *fn = json_object();
    json_object_set(fn, "name", name);
    json_object_set_new(fn, "arguments", json_string(args ? args : "{}"));
    free(args);
    json_t *call = json_object();
    json_object_set(call, "id", id);
    json_object_set_new(call, "type", json_string("function"));
    json_object_set_new(call, "function", fn);
    json_array_append_new(calls, call);
    return 0;
}

static int map_assistant(json_t *content, const char *path, json_t *messages, struct leo_buf *err)
{
    json_t *parts = json_array(), *calls = json_array();
    struct leo_buf reasoning = LEO_BUF_INIT;
    json_t *signature = NULL;
    size_t thinking_blocks = 0;
    size_t i;
    json_t *block;
    int rc = 0;
    json_array_foreach(content, i, block)
    {
        char sub[PATH_BLOCK];
        snprintf(sub, sizeof(sub), "%s.content[%zu]", path, i);
        json_t *text = NULL;
        if (is_type(block, "text")) {
            rc = text_of(block, sub, &text, err);
            if (rc == 0)
                json_array_append_new(parts, text_part(text));
        } else if (is_type(block, "tool_use")) {
            rc = map_tool_use(block, sub, calls, err);
        } else if (is_type(block, "thinking")) {
            json_t *t = json_object_get(block, "thinking");
            json_t *sig = json_object_get(block, "signature");
            if (!json_is_string(t)) {
                rc = fail(err, LEO_EINVAL, "%s.thinking: must be a string", sub);
            } else if (sig != NULL && !json_is_null(sig) && !json_is_string(sig)) {
                rc = fail(err, LEO_EINVAL, "%s.signature: must be a string", sub);
            } else {
                if (thinking_blocks++ > 0)
                    leo_buf_adds(&reasoning, "\n\n");
                leo_buf_add(&reasoning, json_string_value(t), json_string_length(t));
                if (json_is_string(sig))
                    signature = sig;
            }
        } else if (is_type(block, "redacted_thinking")) {
            /* Encrypted for Anthropic's models only: nothing another upstream could read. */
        } else {
            rc = unsupported_block(block, sub, "assistant", err);
        }
        if (rc)
            break;
    }
    if (rc == 0) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("assistant"));
        if (json_array_size(parts) > 0)
            json_object_set_new(m, "content", text_parts_content(json_incref(parts)));
        else
            json_object_set_new(m, "content", json_array_size(calls) > 0 ? json_null() : json_string(""));
        if (thinking_blocks > 0) {
            json_t *r = json_stringn(reasoning.p, reasoning.len);
            json_object_set_new(m, "reasoning_content", r ? r : json_string(""));
            if (thinking_blocks == 1 && signature != NULL)
                json_object_set(m, "reasoning_signature", signature);
        }
        if (json_array_size(calls) > 0)
            json_object_set(m, "tool_calls", calls);
        json_array_append_new(messages, m);
    }
    leo_buf_release(&reasoning);
    json_decref(parts);
    json_decref(calls);
    return rc;
}

static int map_messages(json_t *msgs, json_t *messages, struct leo_buf *err)
{
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg)
    {
        char path[PATH_MSG];
        snprintf(path, sizeof(path), "messages[%zu]", i);
        if (!json_is_object(msg))
            return fail(err, LEO_EINVAL, "%s: must be an object", path);
        const char *role = str_member(msg, "role");
        json_t *content = json_object_get(msg, "content");
        if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
            return fail(err, LEO_EINVAL, "%s.role: must be \"user\" or \"assistant\"", path);
        if (json_is_string(content)) {
            json_t *m = json_object();
            json_object_set_new(m, "role", json_string(role));
            json_object_set(m, "content", content);
            json_array_append_new(messages, m);
            continue;
        }
        if (!json_is_array(content))
            return fail(err, LEO_EINVAL, "%s.content: must be a string or an array of content blocks", path);
        int rc = role[0] == 'u' ? map_user(content, path, messages, err) : map_assistant(content, path, messages, err);
        if (rc)
            return rc;
    }
    return 0;
}

static int map_tools(json_t *tools, json_t *out, struct leo_buf *err)
{
    size_t i;
    json_t *tool;
    json_array_foreach(tools, i, tool)
    {
        if (!json_is_object(tool))
            return fail(err, LEO_EINVAL, "tools[%zu]: must be an object", i);
        const char *type = str_member(tool, "type");
        if (json_object_get(tool, "type") != NULL && !json_is_null(json_object_get(tool, "type")) &&
            (type == NULL || strcmp(type, "custom") != 0))
            return fail(err, LEO_EINVAL, "tools[%zu].type: \"%s\" is a server tool, not supported by this upstream", i,
                        type ? type : "?");
        json_t *name = json_object_get(tool, "name");
        json_t *desc = json_object_get(tool, "description");
        json_t *schema = json_object_get(tool, "input_schema");
        json_t *strict = json_object_get(tool, "strict");
        if (!json_is_string(name))
            return fail(err, LEO_EINVAL, "tools[%zu].name: must be a string", i);
        if (desc != NULL && !json_is_null(desc) && !json_is_string(desc))
            return fail(err, LEO_EINVAL, "tools[%zu].description: must be a string", i);
        if (!json_is_object(schema))
            return fail(err, LEO_EINVAL, "tools[%zu].input_schema: must be an object", i);
        json_t *fn = json_object();
        json_object_set(fn, "name", name);
        if (json_is_string(desc))
            json_object_set(fn, "description", desc);
        json_object_set(fn, "parameters", schema);
        if (json_is_boolean(strict))
            json_object_set(fn, "strict", strict);
        json_t *t = json_object();
        json_object_set_new(t, "type", json_string("function"));
        json_object_set_new(t, "function", fn);
        json_array_append_new(out, t);
    }
    return 0;
}

static int map_tool_choice(json_t *tc, json_t *out, struct leo_buf *err)
{
    const char *type = str_member(tc, "type");
    if (type == NULL)
        return fail(err, LEO_EINVAL, "tool_choice.type: must be \"auto\", \"any\", \"tool\" or \"none\"");
    json_t *choice;
    if (strcmp(type, "auto") == 0) {
        choice = json_string("auto");
    } else if (strcmp(type, "any") == 0) {
        choice = json_string("required");
    } else if (strcmp(type, "none") == 0) {
        choice = json_string("none");
    } else if (strcmp(type, "tool") == 0) {
        json_t *name = json_object_get(tc, "name");
        if (!json_is_string(name))
            return fail(err, LEO_EINVAL, "tool_choice.name: must be a string");
        json_t *fn = json_object();
        json_object_set(fn, "name", name);
        choice = json_object();
        json_object_set_new(choice, "type", json_string("function"));
        json_object_set_new(choice, "function", fn);
    } else {
        return fail(err, LEO_EINVAL, "tool_choice.type: \"%s\" is not one of auto, any, tool, none", type);
    }
    json_object_set_new(out, "tool_choice", choice);
    json_t *dp = json_object_get(tc, "disable_parallel_tool_use");
    if (dp != NULL && !json_is_boolean(dp))
        return fail(err, LEO_EINVAL, "tool_choice.disable_parallel_tool_use: must be a boolean");
    if (json_is_true(dp) && strcmp(type, "none") != 0)
        json_object_set_new(out, "parallel_tool_calls", json_false());
    return 0;
}

/* thinking {type enabled, budget_tokens} → a reasoning_effort bucket (NULL: leave it to the model). */
static int map_thinking(json_t *th, const char **effort, struct leo_buf *err)
{
    const char *type = str_member(th, "type");
    if (type == NULL)
        return fail(err, LEO_EINVAL, "thinking.type: must be \"enabled\", \"disabled\" or \"adaptive\"");
    if (strcmp(type, "disabled") == 0 || strcmp(type, "adaptive") == 0)
        return 0;
    if (strcmp(type, "enabled") != 0)
        return fail(err, LEO_EINVAL, "thinking.type: \"%s\" is not one of enabled, disabled, adaptive", type);
    json_t *b = json_object_get(th, "budget_tokens");
    if (!json_is_integer(b) || json_integer_value(b) < 0)
        return fail(err, LEO_EINVAL, "thinking.budget_tokens: must be a non-negative integer");
    json_int_t n = json_integer_value(b);
    *effort = n <= 2048 ? "low" : n <= 8192 ? "medium" : "high";
    return 0;
}

/* {"type":"json_schema","schema":{...}} → OpenAI's response_format. */
static int map_format(json_t *f, const char *path, json_t *out, struct leo_buf *err)
{
    const char *type = str_member(f, "type");
    json_t *schema = json_object_get(f, "schema");
    if (type == NULL || strcmp(type, "json_schema") != 0)
        return fail(err, LEO_EINVAL, "%s.type: must be \"json_schema\"", path);
    if (!json_is_object(schema))
        return fail(err, LEO_EINVAL, "%s.schema: must be an object", path);
    json_t *js = json_object();
    json_object_set_new(js, "name", json_string("output"));
    json_object_set_new(js, "strict", json_true());
    json_object_set(js, "schema", schema);
    json_t *rf = json_object();
    json_object_set_new(rf, "type", json_string("json_schema"));
    json_object_set_new(rf, "json_schema", js);
    json_object_set_new(out, "response_format", rf);
    return 0;
}

static int map_output_config(json_t *oc, const char **effort, json_t *out, struct leo_buf *err)
{
    if (!json_is_object(oc))
        return fail(err, LEO_EINVAL, "output_config: must be an object");
    json_t *e = json_object_get(oc, "effort");
    if (e != NULL && !json_is_null(e)) {
        const char *v = json_string_value(e);
        static const char *const levels[][2] = {
            {"low", "low"}, {"medium", "medium"}, {"high", "high"}, {"max", "high"}};
        const char *mapped = NULL;
        for (size_t i = 0; v && i < sizeof(levels) / sizeof(levels[0]); i++)
            if (strcmp(v, levels[i][0]) == 0)
                mapped = levels[i][1];
        if (mapped == NULL)
            return fail(err, LEO_EINVAL, "output_config.effort: must be \"low\", \"medium\", \"high\" or \"max\"");
        *effort = mapped;
    }
    json_t *f = json_object_get(oc, "format");
    if (f != NULL && !json_is_null(f))
        return map_format(f, "output_config.format", out, err);
    return 0;
}

static bool present(json_t *req, const char *key)
{
    json_t *v = json_object_get(req, key);
    return v != NULL && !json_is_null(v);
}

/* temperature and top_p (Anthropic's 0..1 temperature lies inside OpenAI's 0..2 with the same default, 1),
 * top_k (checked, then dropped), stop_sequences → stop, stream. */
static int map_sampling(json_t *req, json_t *out, struct leo_buf *err)
{
    static const char *const numbers[] = {"temperature", "top_p"};
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
        json_t *v = json_object_get(req, numbers[i]);
        if (v == NULL || json_is_null(v))
            continue;
        if (!json_is_number(v))
            return fail(err, LEO_EINVAL, "%s: must be a number", numbers[i]);
        json_object_set(out, numbers[i], v);
    }
    if (present(req, "top_k") && !json_is_integer(json_object_get(req, "top_k")))
        return fail(err, LEO_EINVAL, "top_k: must be an integer");

    json_t *stop = json_object_get(req, "stop_sequences");
    if (stop != NULL && !json_is_null(stop)) {
        size_t i;
        json_t *s;
        if (!json_is_array(stop))
            return fail(err, LEO_EINVAL, "stop_sequences: must be an array of strings");
        json_array_foreach(stop, i, s)
        {
            if (!json_is_string(s))
                return fail(err, LEO_EINVAL, "stop_sequences[%zu]: must be a string", i);
        }
        if (json_array_size(stop) > 0)
            json_object_set(out, "stop", stop);
    }

    json_t *stream = json_object_get(req, "stream");
    if (stream != NULL && !json_is_null(stream)) {
        if (!json_is_boolean(stream))
            return fail(err, LEO_EINVAL, "stream: must be a boolean");
        json_object_set(out, "stream", stream);
    }
    return 0;
}

/* tools, then tool_choice and parallel_tool_calls (only when there are tools to choose from). */
static int map_tooling(json_t *req, json_t *out, struct leo_buf *err)
{
    json_t *tools = json_object_get(req, "tools");
    bool have_tools = false;
    if (tools != NULL && !json_is_null(tools)) {
        if (!json_is_array(tools))
            return fail(err, LEO_EINVAL, "tools: must be an array");
        json_t *ftools = json_array();
        int rc = map_tools(tools, ftools, err);
        have_tools = json_array_size(ftools) > 0;
        if (rc == 0 && have_tools)
            json_object_set(out, "tools", ftools);
        json_decref(ftools);
        if (rc)
            return rc;
    }
    json_t *tc = json_object_get(req, "tool_choice");
    if (tc == NULL || json_is_null(tc))
        return 0;
    if (!json_is_object(tc))
        return fail(err, LEO_EINVAL, "tool_choice: must be an object");
    json_t *scratch = json_object(); /* validated all the same, then discarded */
    int rc = map_tool_choice(tc, have_tools ? out : scratch, err);
    json_decref(scratch);
    return rc;
}

/* thinking and output_config.effort → reasoning_effort; output_config.format or output_format →
 * response_format (set after reasoning_effort, in field order). */
static int map_reasoning(json_t *req, json_t *out, struct leo_buf *err)
{
    const char *effort = NULL;
    int rc = 0;
    json_t *th = json_object_get(req, "thinking");
    if (th != NULL && !json_is_null(th))
        rc = json_is_object(th) ? map_thinking(th, &effort, err) : fail(err, LEO_EINVAL, "thinking: must be an object");
    json_t *formats = json_object();
    json_t *oc = json_object_get(req, "output_config");
    if (rc == 0 && oc != NULL && !json_is_null(oc))
        rc = map_output_config(oc, &effort, formats, err);
    json_t *of = json_object_get(req, "output_format");
    if (rc == 0 && of != NULL && !json_is_null(of))
        rc = json_is_object(of) ? map_format(of, "output_format", formats, err)
                                : fail(err, LEO_EINVAL, "output_format: must be an object");
    if (rc == 0 && effort != NULL)
        json_object_set_new(out, "reasoning_effort", json_string(effort));
    if (rc == 0 && json_object_get(formats, "response_format") != NULL)
        json_object_set(out, "response_format", json_object_get(formats, "response_format"));
    json_decref(formats);
    return rc;
}

static int map_metadata(json_t *req, json_t *out, struct leo_buf *err)
{
    json_t *meta = json_object_get(req, "metadata");
    if (meta == NULL || json_is_null(meta))
        return 0;
    if (!json_is_object(meta))
        return fail(err, LEO_EINVAL, "metadata: must be an object");
    json_t *user = json_object_get(meta, "user_id");
    if (user != NULL && !json_is_null(user) && !json_is_string(user))
        return fail(err, LEO_EINVAL, "metadata.user_id: must be a string");
    if (json_is_string(user))
        json_object_set(out, "user", user);
    return 0;
}

/* Fills out in the field order of an OpenAI request: model, messages, max_tokens, sampling, stop, stream,
 * tools, tool_choice, parallel_tool_calls, reasoning_effort, response_format, user. */
static int to_canonical(json_t *req, json_t *out, struct leo_buf *err)
{
    json_t *model = json_object_get(req, "model");
    json_t *msgs = json_object_get(req, "messages");
    json_t *max_tokens = json_object_get(req, "max_tokens");
    if (!json_is_string(model) || json_string_length(model) == 0)
        return fail(err, LEO_EINVAL, "model: required, must be a non-empty string");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return fail(err, LEO_EINVAL, "messages: required, must be a non-empty array");
    if (!json_is_integer(max_tokens) || json_integer_value(max_tokens) < 1)
        return fail(err, LEO_EINVAL, "max_tokens: required, must be an integer >= 1");

    static const char *const server_side[] = {"container", "mcp_servers", "context_management"};
    for (size_t i = 0; i < sizeof(server_side) / sizeof(server_side[0]); i++)
        if (present(req, server_side[i]))
            return fail(err, LEO_EINVAL, "%s: not supported by this upstream", server_side[i]);

    json_object_set(out, "model", model);
    json_t *messages = json_array();
    json_object_set_new(out, "messages", messages);
    int rc = 0;
    if (present(req, "system"))
        rc = map_system(json_object_get(req, "system"), messages, err);
    if (rc == 0)
        rc = map_messages(msgs, messages, err);
    if (rc == 0) {
        json_object_set(out, "max_tokens", max_tokens);
        rc = map_sampling(req, out, err);
    }
    if (rc == 0)
        rc = map_tooling(req, out, err);
    if (rc == 0)
        rc = map_reasoning(req, out, err);
    if (rc == 0)
        rc = map_metadata(req, out, err);
    return rc;
}

json_t *leo_messages_to_canonical(json_t *req, struct leo_buf *err)
{
    if (!json_is_object(req)) {
        fail(err, LEO_EINVAL, "request body: must be a JSON object");
        return NULL;
    }
    json_t *out = json_object();
    if (to_canonical(req, out, err) != 0) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* ---- response: canonical → Anthropic -------------------------------------------------------------------- */

static const struct {
    const char *finish;
    const char *stop;
} stop_reasons[] = {
    {"stop", "end_turn"},
    {"length", "max_tokens"},
    {"tool_calls", "tool_use"},
    {"function_call", "tool_use"},
    {"content_filter", "refusal"},
    {"stop_sequence", "stop_sequence"},
    /* Anthropic's own values, as the anthropic adapter may carry them through. */
    {"end_turn", "end_turn"},
    {"max_tokens", "max_tokens"},
    {"tool_use", "tool_use"},
    {"pause_turn", "pause_turn"},
    {"refusal", "refusal"},
    {"model_context_window_exceeded", "model_context_window_exceeded"},
};

const char *leo_messages_stop_reason(const char *finish_reason)
{
    for (size_t i = 0; finish_reason != NULL && i < sizeof(stop_reasons) / sizeof(stop_reasons[0]); i++)
        if (strcmp(finish_reason, stop_reasons[i].finish) == 0)
            return stop_reasons[i].stop;
    return "end_turn";
}

/* Usage as the canonical form reports it, with which cache counters the upstream actually gave. */
struct usage_view {
    uint64_t input; /* prompt tokens, cache reads and writes included */
    uint64_t output;
    uint64_t cache_read;
    uint64_t cache_write;
    bool have;
    bool read_known;
    bool write_known;
};

static bool uint_of(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v))
        return false;
    json_int_t n = json_integer_value(v);
    *out = n < 0 ? 0 : (uint64_t)n;
    return true;
}

static void usage_from_canonical(json_t *usage, struct usage_view *v)
{
    struct usage_view n = {0};
    bool in = uint_of(json_object_get(usage, "prompt_tokens"), &n.input);
    bool outp = uint_of(json_object_get(usage, "completion_tokens"), &n.output);
    if (!in && !outp)
        return;
    n.have = true;
    n.read_known =
        uint_of(json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens"), &n.cache_read);
    n.write_known = uint_of(json_object_get(usage, "cache_creation_input_tokens"), &n.cache_write);
    *v = n;
}

static json_t *json_uint(uint64_t n)
{
    return json_integer(n > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)n);
}

/* Anthropic's usage: input_tokens counts only the uncached part of the prompt; the cache counters appear only
 * when the upstream reported them. */
static json_t *anthropic_usage(const struct usage_view *v, bool with_input)
{
    json_t *u = json_object();
    if (with_input) {
        uint64_t cached = v->cache_read + v->cache_write;
        json_object_set_new(u, "input_tokens", json_uint(v->input > cached ? v->input - cached : 0));
        if (v->write_known)
            json_object_set_new(u, "cache_creation_input_tokens", json_uint(v->cache_write));
        if (v->read_known)
            json_object_set_new(u, "cache_read_input_tokens", json_uint(v->cache_read));
    }
    json_object_set_new(u, "output_tokens", json_uint(v->output));
    return u;
}

/* A tool-call id for an upstream that sent none, stable within the message: "toolu_<message id>_<n>". */
static json_t *fallback_tool_id(const char *msg_id, int64_t n)
{
    char buf[160];
    if (msg_id != NULL && strncmp(msg_id, "msg_", 4) == 0)
        msg_id += 4;
    snprintf(buf, sizeof(buf), "toolu_%.120s_%" PRId64, msg_id ? msg_id : "", n);
    json_t *s = json_string(buf);
    return s ? s : json_string("toolu");
}

/* The text of a canonical content: a string, or an array of text parts (joined). */
static void content_text(json_t *content, struct leo_buf *text)
{
    if (json_is_string(content)) {
        leo_buf_add(text, json_string_value(content), json_string_length(content));
        return;
    }
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *t = json_object_get(part, "text");
        if (is_type(part, "text") && json_is_string(t))
            leo_buf_add(text, json_string_value(t), json_string_length(t));
    }
}

static json_t *parse_arguments(json_t *args)
{
    if (json_is_object(args))
        return json_deep_copy(args);
    json_t *v = NULL;
    if (json_is_string(args))
        v = json_loadb(json_string_value(args), json_string_length(args), JSON_DECODE_ANY, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        v = json_object();
    }
    return v;
}

/*
 * chat.completion → message. Content order: thinking (reasoning_content, its signature or ""), text (content,
 * or the refusal when there is no content), tool_use blocks (arguments parsed; {} when they are not a JSON
 * object, as Anthropic's input is always an object).
 */
json_t *leo_messages_from_canonical(json_t *completion, const char *model, const char *id, struct leo_buf *err)
{
    json_t *choice = json_array_get(json_object_get(completion, "choices"), 0);
    json_t *msg = json_object_get(choice, "message");
    if (!json_is_object(msg)) {
        fail(err, LEO_EUPSTREAM, "choices[0].message: missing from the upstream response");
        return NULL;
    }
    json_t *content = json_array();
    bool refused = false;

    json_t *reasoning = json_object_get(msg, "reasoning_content");
    if (json_is_string(reasoning) && json_string_length(reasoning) > 0) {
        json_t *sig = json_object_get(msg, "reasoning_signature");
        json_t *b = json_object();
        json_object_set_new(b, "type", json_string("thinking"));
        json_object_set(b, "thinking", reasoning);
        json_object_set_new(b, "signature", json_is_string(sig) ? json_incref(sig) : json_string(""));
        json_array_append_new(content, b);
    }

    struct leo_buf text = LEO_BUF_INIT;
    content_text(json_object_get(msg, "content"), &text);
    json_t *refusal = json_object_get(msg, "refusal");
    if (text.len == 0 && json_is_string(refusal) && json_string_length(refusal) > 0) {
        leo_buf_add(&text, json_string_value(refusal), json_string_length(refusal));
        refused = true;
    }
    if (text.len > 0) {
        json_t *t = json_stringn(text.p, text.len);
        json_t *b = json_object();
        json_object_set_new(b, "type", json_string("text"));
        json_object_set_new(b, "text", t ? t : json_string(""));
        json_array_append_new(content, b);
    }
    leo_buf_release(&text);

    size_t i, calls = 0;
    json_t *tc;
    json_array_foreach(json_object_get(msg, "tool_calls"), i, tc)
    {
        json_t *fn = json_object_get(tc, "function");
        json_t *tid = json_object_get(tc, "id");
        json_t *name = json_object_get(fn, "name");
        json_t *b = json_object();
        json_object_set_new(b, "type", json_string("tool_use"));
        json_object_set_new(b, "id", json_is_string(tid) ? json_incref(tid) : fallback_tool_id(id, (int64_t)i));
        json_object_set_new(b, "name", json_is_string(name) ? json_incref(name) : json_string(""));
        json_object_set_new(b, "input", parse_arguments(json_object_get(fn, "arguments")));
        json_array_append_new(content, b);
        calls++;
    }

    const char *stop = leo_messages_stop_reason(str_member(choice, "finish_reason"));
    if (strcmp(stop, "end_turn") == 0 && calls > 0)
        stop = "tool_use";
    else if (strcmp(stop, "end_turn") == 0 && refused)
        stop = "refusal";

    struct usage_view uv = {0};
    usage_from_canonical(json_object_get(completion, "usage"), &uv);

    json_t *m = json_object();
    json_t *jid = json_string(id ? id : "");
    json_t *jmodel = json_string(model ? model : "");
    json_object_set_new(m, "id", jid ? jid : json_string(""));
    json_object_set_new(m, "type", json_string("message"));
    json_object_set_new(m, "role", json_string("assistant"));
    json_object_set_new(m, "model", jmodel ? jmodel : json_string(""));
    json_object_set_new(m, "content", content);
    json_object_set_new(m, "stop_reason", json_string(stop));
    json_object_set_new(m, "stop_sequence", json_null());
    json_object_set_new(m, "usage", anthropic_usage(&uv, true));
    return m;
}

/* ---- stream: canonical chunks → Anthropic events -------------------------------------------------------- */

/*
 * The first chunk (whatever it holds) sends message_start, with the caller's input estimate. Each non-empty
 * delta field then goes to a content block of its kind, in this order within one delta: reasoning_content
 * (thinking block, thinking_delta), reasoning_signature (signature_delta in that block), content (text block,
 * text_delta), tool_calls (one tool_use block per call, input_json_delta per arguments piece). A change of kind
 * or of tool call closes the open block and opens the next, numbered from 0. Every piece is written as soon as
 * its chunk arrives: nothing is buffered. finish_reason and usage are remembered for message_delta, where the
 * caller's usage (from the upstream adapter) wins over a usage chunk.
 */

enum block_kind {
    BLOCK_NONE,
    BLOCK_TEXT,
    BLOCK_THINKING,
    BLOCK_TOOL,
};

struct leo_messages_stream {
    char *model;
    char *id;
    uint64_t input_estimate;
    bool started;         /* message_start sent */
    bool ended;           /* message_stop or error sent: nothing more is written */
    enum block_kind kind; /* the open content block */
    bool is_signed;       /* the open thinking block got its signature: more thinking opens a new block */
    int64_t block;        /* index of the open block */
    int64_t next_block;   /* index the next block will get */
    bool any_tool;        /* a tool_use block was opened */
    int64_t tool_index;   /* canonical tool_calls index of the last tool_use block */
    char *tool_id;        /* its id */
    char *finish;         /* the last finish_reason seen */
    struct usage_view usage;
};

struct leo_messages_stream *leo_messages_stream_new(const char *model, const char *id, uint64_t input_tokens)
{
    struct leo_messages_stream *st = leo_new(struct leo_messages_stream);
    st->model = leo_strdup(model ? model : "");
    st->id = leo_strdup(id ? id : "");
    st->input_estimate = input_tokens;
    return st;
}

void leo_messages_stream_free(struct leo_messages_stream *st)
{
    if (st == NULL)
        return;
    leo_free(st->model);
    leo_free(st->id);
    leo_free(st->tool_id);
    leo_free(st->finish);
    leo_free(st);
}

static int dump_to_buf(const char *p, size_t n, void *data)
{
    return leo_buf_add(data, p, n) == 0 ? 0 : -1;
}

/* One SSE event "event: <type>\ndata: <compact json>\n\n"; takes data. All or nothing: on LEO_ETOOBIG the
 * buffer is left as it was. */
static int emit(struct leo_buf *out, const char *type, json_t *data)
{
    size_t mark = out->len;
    int rc = leo_buf_addf(out, "event: %s\ndata: ", type);
    if (rc == 0 && json_dump_callback(data, dump_to_buf, out, JSON_COMPACT) != 0)
        rc = LEO_ETOOBIG;
    if (rc == 0)
        rc = leo_buf_add(out, "\n\n", 2);
    json_decref(data);
    if (rc) {
        out->len = mark;
        out->p[mark] = '\0';
    }
    return rc;
}

static json_t *typed(const char *type)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    return o;
}

static int start_message(struct leo_messages_stream *st, struct leo_buf *out)
{
    if (st->started)
        return 0;
    json_t *jid = json_string(st->id), *jmodel = json_string(st->model);
    json_t *usage = json_object();
    json_object_set_new(usage, "input_tokens", json_uint(st->input_estimate));
    json_object_set_new(usage, "output_tokens", json_integer(0));
    json_t *m = json_object();
    json_object_set_new(m, "id", jid ? jid : json_string(""));
    json_object_set_new(m, "type", json_string("message"));
    json_object_set_new(m, "role", json_string("assistant"));
    json_object_set_new(m, "model", jmodel ? jmodel : json_string(""));
    json_object_set_new(m, "content", json_array());
    json_object_set_new(m, "stop_reason", json_null());
    json_object_set_new(m, "stop_sequence", json_null());
    json_object_set_new(m, "usage", usage);
    json_t *ev = typed("message_start");
    json_object_set_new(ev, "message", m);
    int rc = emit(out, "message_start", ev);
    if (rc == 0)
        st->started = true;
    return rc;
}

static int close_block(struct leo_messages_stream *st, struct leo_buf *out)
{
    if (st->kind == BLOCK_NONE)
        return 0;
    json_t *ev = typed("content_block_stop");
    json_object_set_new(ev, "index", json_integer(st->block));
    int rc = emit(out, "content_block_stop", ev);
    if (rc == 0)
        st->kind = BLOCK_NONE;
    return rc;
}

/* Closes the open block and opens the next one of this kind; takes block (the content_block object). */
static int open_block(struct leo_messages_stream *st, enum block_kind kind, json_t *block, struct leo_buf *out)
{
    int rc = close_block(st, out);
    if (rc) {
        json_decref(block);
        return rc;
    }
    json_t *ev = typed("content_block_start");
    json_object_set_new(ev, "index", json_integer(st->next_block));
    json_object_set_new(ev, "content_block", block);
    rc = emit(out, "content_block_start", ev);
    if (rc == 0) {
        st->kind = kind;
        st->block = st->next_block++;
        st->is_signed = false;
    }
    return rc;
}

/* content_block_delta for the open block; delta_type and its one field (value is borrowed). */
static int block_delta(struct leo_messages_stream *st, const char *delta_type, const char *field, json_t *value,
                       struct leo_buf *out)
{
    json_t *d = typed(delta_type);
    json_object_set(d, field, value);
    json_t *ev = typed("content_block_delta");
    json_object_set_new(ev, "index", json_integer(st->block));
    json_object_set_new(ev, "delta", d);
    return emit(out, "content_block_delta", ev);
}

static int on_text(struct leo_messages_stream *st, json_t *text, struct leo_buf *out)
{
    int rc = 0;
    if (st->kind != BLOCK_TEXT) {
        json_t *b = typed("text");
        json_object_set_new(b, "text", json_string(""));
        rc = open_block(st, BLOCK_TEXT, b, out);
    }
    return rc ? rc : block_delta(st, "text_delta", "text", text, out);
}

static int open_thinking(struct leo_messages_stream *st, struct leo_buf *out)
{
    if (st->kind == BLOCK_THINKING && !st->is_signed)
        return 0;
    json_t *b = typed("thinking");
    json_object_set_new(b, "thinking", json_string(""));
    json_object_set_new(b, "signature", json_string(""));
    return open_block(st, BLOCK_THINKING, b, out);
}

static int on_thinking(struct leo_messages_stream *st, json_t *text, struct leo_buf *out)
{
    int rc = open_thinking(st, out);
    return rc ? rc : block_delta(st, "thinking_delta", "thinking", text, out);
}

static int on_signature(struct leo_messages_stream *st, json_t *sig, struct leo_buf *out)
{
    int rc = open_thinking(st, out);
    if (rc == 0)
        rc = block_delta(st, "signature_delta", "signature", sig, out);
    if (rc == 0)
        st->is_signed = true;
    return rc;
}

/*
 * One tool_calls delta. A new index (or, at the same index, a new id: some servers number every call 0) opens
 * a tool_use block; every arguments piece becomes an input_json_delta at once. A delta for a call whose block
 * was already closed cannot be expressed (Anthropic blocks never reopen) and is an upstream error; OpenAI
 * never interleaves calls.
 */
static int on_tool_call(struct leo_messages_stream *st, json_t *tc, size_t pos, struct leo_buf *out,
                        struct leo_buf *err)
{
    if (!json_is_object(tc))
        return fail(err, LEO_EUPSTREAM, "stream chunk: choices[0].delta.tool_calls[%zu] is not an object", pos);
    json_t *jidx = json_object_get(tc, "index");
    const char *tid = str_member(tc, "id");
    if (tid != NULL && tid[0] == '\0')
        tid = NULL;
    json_t *fn = json_object_get(tc, "function");
    int64_t index;
    if (json_is_integer(jidx))
        index = json_integer_value(jidx);
    else if (!st->any_tool)
        index = 0;
    else
        index =
            tid != NULL && (st->tool_id == NULL || strcmp(tid, st->tool_id) != 0) ? st->tool_index + 1 : st->tool_index;
    if (index < 0)
        return fail(err, LEO_EUPSTREAM, "stream chunk: tool call index %" PRId64 " is negative", index);

    bool same = st->kind == BLOCK_TOOL && index == st->tool_index &&
                (tid == NULL || st->tool_id == NULL || strcmp(tid, st->tool_id) == 0);
    if (!same) {
        if (st->any_tool && (index < st->tool_index || (index == st->tool_index && tid == NULL)))
            return fail(err, LEO_EUPSTREAM,
                        "stream chunk: tool call %" PRId64 " continued after its content block was closed", index);
        json_t *name = json_object_get(fn, "name");
        json_t *b = typed("tool_use");
        json_t *jtid = tid ? json_string(tid) : fallback_tool_id(st->id, index);
        json_object_set(b, "id", jtid);
        json_object_set_new(b, "name", json_is_string(name) ? json_incref(name) : json_string(""));
        json_object_set_new(b, "input", json_object());
        int rc = open_block(st, BLOCK_TOOL, b, out);
        if (rc == 0) {
            st->any_tool = true;
            st->tool_index = index;
            leo_free(st->tool_id);
            st->tool_id = leo_strdup(json_string_value(jtid));
        }
        json_decref(jtid);
        if (rc)
            return rc;
    }
    json_t *args = json_object_get(fn, "arguments");
    if (json_is_string(args) && json_string_length(args) > 0)
        return block_delta(st, "input_json_delta", "partial_json", args, out);
    return 0;
}

static int on_choice(struct leo_messages_stream *st, json_t *choice, struct leo_buf *out, struct leo_buf *err)
{
    json_t *delta = json_object_get(choice, "delta");
    int rc = 0;
    json_t *v = json_object_get(delta, "reasoning_content");
    if (json_is_string(v) && json_string_length(v) > 0)
        rc = on_thinking(st, v, out);
    v = json_object_get(delta, "reasoning_signature");
    if (rc == 0 && json_is_string(v) && json_string_length(v) > 0)
        rc = on_signature(st, v, out);
    v = json_object_get(delta, "content");
    if (rc == 0 && json_is_string(v) && json_string_length(v) > 0)
        rc = on_text(st, v, out);
    v = json_object_get(delta, "tool_calls");
    if (rc == 0 && v != NULL && !json_is_null(v)) {
        if (!json_is_array(v))
            return fail(err, LEO_EUPSTREAM, "stream chunk: choices[0].delta.tool_calls is not an array");
        size_t i;
        json_t *tc;
        json_array_foreach(v, i, tc)
        {
            rc = on_tool_call(st, tc, i, out, err);
            if (rc)
                break;
        }
    }
    const char *finish = str_member(choice, "finish_reason");
    if (rc == 0 && finish != NULL) {
        leo_free(st->finish);
        st->finish = leo_strdup(finish);
    }
    return rc;
}

int leo_messages_stream_chunk(struct leo_messages_stream *st, json_t *chunk, struct leo_buf *out, struct leo_buf *err)
{
    if (st->ended)
        return 0;
    if (!json_is_object(chunk))
        return fail(err, LEO_EUPSTREAM, "stream chunk: not a JSON object");
    json_t *choices = json_object_get(chunk, "choices");
    if (choices != NULL && !json_is_null(choices) && !json_is_array(choices))
        return fail(err, LEO_EUPSTREAM, "stream chunk: choices is not an array");
    int rc = start_message(st, out);
    if (rc)
        return rc;
    usage_from_canonical(json_object_get(chunk, "usage"), &st->usage);
    size_t i;
    json_t *choice;
    json_array_foreach(choices, i, choice)
    {
        json_t *idx = json_object_get(choice, "index");
        if (idx != NULL && !(json_is_integer(idx) && json_integer_value(idx) == 0))
            continue;
        rc = on_choice(st, choice, out, err);
        if (rc)
            return rc;
    }
    return 0;
}

void leo_messages_stream_finish(struct leo_messages_stream *st, const struct leo_usage *u, struct leo_buf *out)
{
    if (st->ended)
        return;
    st->ended = true;
    if (start_message(st, out) != 0 || close_block(st, out) != 0)
        return;
    const char *stop = leo_messages_stop_reason(st->finish);
    if (strcmp(stop, "end_turn") == 0 && st->any_tool)
        stop = "tool_use";

    struct usage_view uv = st->usage;
    if (u != NULL && u->have) {
        /* The engine's count; a cache counter of 0 there cannot be told from an unknown one. */
        uv = (struct usage_view){
            u->input_tokens,          u->output_tokens,         u->cache_read_tokens, u->cache_write_tokens, true,
            u->cache_read_tokens > 0, u->cache_write_tokens > 0};
    }
    json_t *delta = json_object();
    json_object_set_new(delta, "stop_reason", json_string(stop));
    json_object_set_new(delta, "stop_sequence", json_null());
    json_t *ev = typed("message_delta");
    json_object_set_new(ev, "delta", delta);
    json_object_set_new(ev, "usage", anthropic_usage(&uv, uv.have));
    if (emit(out, "message_delta", ev) == 0)
        emit(out, "message_stop", typed("message_stop"));
}

/* {"type":"error","error":{"type":..,"message":..}} written by hand: the message may hold any bytes. */
static int error_body(struct leo_buf *out, const char *type, const char *message)
{
    int rc = leo_buf_adds(out, "{\"type\":\"error\",\"error\":{\"type\":");
    if (rc == 0)
        rc = add_json_string(out, type ? type : "api_error", strlen(type ? type : "api_error"));
    if (rc == 0)
        rc = leo_buf_adds(out, ",\"message\":");
    if (rc == 0)
        rc = add_json_string(out, message ? message : "", message ? strlen(message) : 0);
    if (rc == 0)
        rc = leo_buf_adds(out, "}}");
    return rc;
}

void leo_messages_stream_error(struct leo_messages_stream *st, const char *type, const char *message,
                               struct leo_buf *out)
{
    if (st->ended)
        return;
    st->ended = true;
    size_t mark = out->len;
    int rc = leo_buf_adds(out, "event: error\ndata: ");
    if (rc == 0)
        rc = error_body(out, type, message);
    if (rc == 0)
        rc = leo_buf_add(out, "\n\n", 2);
    if (rc) {
        out->len = mark;
        out->p[mark] = '\0';
    }
}

/* ---- passthrough usage ----------------------------------------------------------------------- */

/*
 * message_start carries the prompt's usage in message.usage (input_tokens excludes the cache counters, which
 * are added back: leo_usage counts the whole prompt); message_delta carries the cumulative output_tokens and,
 * in newer API versions, the final input and cache counters, which replace the earlier ones when present.
 */
bool leo_anthropic_event_usage(struct leo_str event, struct leo_str data, struct leo_usage *u)
{
    bool start = leo_str_eqc(event, "message_start");
    if (!start && !leo_str_eqc(event, "message_delta") && event.len != 0)
        return false;
    if (data.p == NULL || data.len == 0)
        return false;
    json_t *d = json_loadb(data.p, data.len, 0, NULL);
    if (event.len == 0) {
        const char *type = str_member(d, "type");
        start = type != NULL && strcmp(type, "message_start") == 0;
        if (!start && (type == NULL || strcmp(type, "message_delta") != 0)) {
            json_decref(d);
            return false;
        }
    }
    json_t *usage = start ? json_object_get(json_object_get(d, "message"), "usage") : json_object_get(d, "usage");
    uint64_t in = 0, outp = 0, cr = 0, cw = 0;
    bool has_in = uint_of(json_object_get(usage, "input_tokens"), &in);
    bool has_out = uint_of(json_object_get(usage, "output_tokens"), &outp);
    bool has_cr = uint_of(json_object_get(usage, "cache_read_input_tokens"), &cr);
    bool has_cw = uint_of(json_object_get(usage, "cache_creation_input_tokens"), &cw);
    json_decref(d);
    if (!has_in && !has_out && !has_cr && !has_cw)
        return false;
    if (start) {
        *u = (struct leo_usage){in + cr + cw, outp, cr, cw, true};
        return true;
    }
    uint64_t cached = u->cache_read_tokens + u->cache_write_tokens;
    uint64_t base = has_in ? in : (u->have && u->input_tokens > cached ? u->input_tokens - cached : 0);
    if (!has_cr)
        cr = u->cache_read_tokens;
    if (!has_cw)
        cw = u->cache_write_tokens;
    if (!has_out)
        outp = u->output_tokens;
    *u = (struct leo_usage){base + cr + cw, outp, cr, cw, true};
    return true;
}
