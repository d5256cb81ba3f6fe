/*
 * gemini.c — the Google Gemini API wire format (type "gemini"): POST {base_url}/models/{model}:generateContent,
 * and :streamGenerateContent?alt=sse for streams, authenticated with "x-goog-api-key".
 *
 * Request (canonical OpenAI chat request → GenerateContentRequest):
 *   - system and developer messages, wherever they stand, become systemInstruction.parts in their order (Gemini
 *     has a single system instruction); user → role "user", assistant → role "model", tool → role "user" with a
 *     functionResponse part. Consecutive contents of the same role merge into one (parallel tool results form
 *     one turn, as Gemini expects).
 *   - parts: text → {text} (empty texts are left out, and so is a message left without parts); image_url and
 *     file.file_data with a base64 data: URI → {inlineData}; input_audio (wav, mp3, aiff, aac, ogg, flac) →
 *     {inlineData}. http(s) image URLs and file_id are LEO_EINVAL: Gemini does not fetch URLs.
 *   - assistant tool_calls → {functionCall {name, args}} (arguments must be a JSON object). Gemini 3 rejects a
 *     replayed function call without its thought signature, so the signature travels the way Google's own
 *     OpenAI-compatible endpoint carries it: tool_calls[].extra_content.google.thought_signature, emitted on the
 *     way out and sent back as the part's thoughtSignature. An assistant turn whose calls carry none (history
 *     from another model, or a client that dropped the field) gets Google's documented validator-skipping
 *     signature on its first call.
 *   - tool messages → {functionResponse {name, response}}: the name is that of the nearest earlier tool call
 *     with the same id (LEO_EINVAL when there is none); response is the content when it parses as a JSON
 *     object, else {"content": "<text>"}.
 *   - tools → tools[0].functionDeclarations. Gemini's `parameters` is an OpenAPI subset, so JSON Schema is
 *     rewritten: local "$ref"s are inlined (nesting and expansion bounded), type arrays and anyOf/oneOf with a
 *     null branch become nullable, oneOf becomes anyOf, a one-element allOf is inlined, a string const becomes a
 *     one-value enum, type names are upper-cased; keywords Gemini lacks are dropped ("$schema",
 *     "additionalProperties", "$defs", "exclusiveMinimum", "multipleOf", "uniqueItems", "strict", ...), and so
 *     are enums with non-string values and formats Gemini does not know for the type. An object schema without
 *     properties is left out at the top (Gemini rejects an OBJECT with no properties). A multi-schema allOf and
 *     tuple items are LEO_EINVAL.
 *   - tool_choice auto/none/required/{function} → toolConfig.functionCallingConfig mode AUTO/NONE/ANY
 *     (+ allowedFunctionNames); left out when the request declares no function (nothing to choose from).
 *   - generationConfig: stop → stopSequences, response_format json_object → responseMimeType
 *     "application/json", json_schema → that plus responseSchema (the same Schema rewrite; the "strict" flag
 *     and the schema name are dropped), n → candidateCount, max_completion_tokens (or max_tokens) →
 *     maxOutputTokens, temperature, top_p → topP, top_k → topK, seed, presence_penalty → presencePenalty,
 *     frequency_penalty → frequencyPenalty, reasoning_effort → thinkingConfig (none: thinkingBudget 0;
 *     minimal 512, low 1024, medium 8192, high 24576, each with includeThoughts).
 *   - dropped: model and stream (in the URL), stream_options (Gemini always reports usage), user, logit_bias,
 *     store, metadata, parallel_tool_calls, service_tier, prediction, prompt_cache_key, safety_identifier,
 *     verbosity, logprobs false, a message's name, an image's detail, reasoning_content and
 *     reasoning_signature of assistant messages (Gemini takes no thought text back), and any field not named
 *     here. Rejected (LEO_EINVAL): logprobs true / top_logprobs, audio output (audio, modalities other than
 *     text), the legacy functions / function_call, web_search_options, unknown roles and part types.
 *     No safetySettings are sent: Gemini's defaults apply.
 *
 * Response (GenerateContentResponse → chat.completion): one choice per candidate; text parts concatenate into
 * content, parts marked "thought" into reasoning_content, functionCall parts become tool_calls with ids
 * "call_<candidate>_<n>". Other part kinds (inlineData images, executableCode, ...) and text-part thought
 * signatures are dropped. finishReason: STOP → "stop" ("tool_calls" when the candidate called functions),
 * MAX_TOKENS → "length", the safety family → "content_filter", anything else → "stop". A prompt blocked
 * before any candidate (promptFeedback.blockReason) is a choice with null content and "content_filter".
 * usageMetadata → usage: prompt_tokens = promptTokenCount + toolUsePromptTokenCount, completion_tokens =
 * candidatesTokenCount + thoughtsTokenCount, total_tokens = totalTokenCount, cached_tokens and
 * reasoning_tokens in the details objects. id, created and model come from the adapter context (Gemini's
 * responseId and modelVersion are not used).
 *
 * Stream (each SSE event is a whole GenerateContentResponse): the first appearance of a candidate gives a
 * {role:"assistant",content:""} chunk; then one chunk per part (content, reasoning_content, or a tool_calls
 * delta carrying the whole call, since Gemini sends calls whole), and a finish chunk for its finishReason. The
 * last usageMetadata wins and goes out as the final {"choices":[],"usage"} chunk from stream_end. Gemini has
 * no end event, so stream_event never returns 1; stream_end decides: complete when a finishReason was seen.
 */
#include "gemini.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sodium.h>

#include "../../common/alloc.h"
#include "../../common/error.h"
#include "../config.h"

/* Gemini's candidateCount is at most 8; a stream naming a higher index is not something we can trust. */
#define MAX_CANDIDATES 8

/* Bounds on the JSON Schema rewrite: "$ref" may recurse or fan out exponentially. */
#define SCHEMA_MAX_DEPTH 32
#define SCHEMA_MAX_NODES 10000

/* Google's documented placeholder for a function call whose real thought signature is unknown. */
#define SKIP_SIGNATURE "skip_thought_signature_validator"

/* ---- small helpers ---- */

/* A member that is present and not null: clients send explicit nulls for "unset". */
static json_t *member(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int fail(struct leo_buf *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct leo_buf *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    leo_buf_vaddf(err, fmt, ap);
    va_end(ap);
    return LEO_EINVAL;
}

static bool str_is(json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* Adds src's members that dst lacks (dst's own win). */
static void merge_missing(json_t *dst, json_t *src)
{
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v)
    {
        if (json_object_get(dst, k) == NULL)
            json_object_set(dst, k, v);
    }
}

/* "<status>: <message>" of an error member ({"code","message","status"}), or its message alone. */
static void error_text(json_t *e, char *out, size_t size)
{
    if (size == 0)
        return;
    out[0] = '\0';
    if (json_is_string(e)) {
        snprintf(out, size, "%s", json_string_value(e));
        return;
    }
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *status = json_string_value(json_object_get(e, "status"));
    if (msg && status)
        snprintf(out, size, "%s: %s", status, msg);
    else if (msg || status)
        snprintf(out, size, "%s", msg ? msg : status);
}

/* ---- URL and headers ---- */

/* base_url + "/models/" + the escaped model name + suffix */
static int model_url(const struct leo_provider *p, const char *model, const char *suffix, struct leo_buf *url)
{
    /* Gemini's own resource names read "models/x"; accept that spelling in the configuration too. */
    if (strncmp(model, "models/", 7) == 0)
        model += 7;
    if (*model == '\0')
        return LEO_EINVAL;
    int rc = leo_buf_addf(url, "%s/models/", p->base_url);
    for (const unsigned char *s = (const unsigned char *)model; rc == 0 && *s; s++) {
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
            *s == '_' || *s == '.')
            rc = leo_buf_addch(url, (char)*s);
        else
            rc = leo_buf_addf(url, "%%%02X", *s);
    }
    if (rc == 0)
        rc = leo_buf_adds(url, suffix);
    return rc;
}

static int gemini_chat_url(const struct leo_provider *p, const char *model, bool stream, struct leo_buf *url)
{
    return model_url(p, model, stream ? ":streamGenerateContent?alt=sse" : ":generateContent", url);
}

static void gemini_auth(const struct leo_provider *p, struct leo_str key, struct leo_http_header *h, size_t *n,
                        size_t max, struct leo_arena *a)
{
    (void)p;
    if (key.len && *n < max)
        h[(*n)++] = (struct leo_http_header){LEO_STR_LIT("x-goog-api-key"), leo_arena_strdup_str(a, key)};
}

/* ---- JSON Schema → Gemini Schema ---- */

struct schema_ctx {
    json_t *root;        /* the schema "$ref"s resolve against */
    struct leo_buf path; /* JSON path of the node being rewritten, for errors */
    size_t nodes;        /* nodes rewritten so far */
    struct leo_buf *err;
};

static const struct {
    const char *json;
    const char *gemini;
} schema_types[] = {
    {"string", "STRING"}, {"number", "NUMBER"}, {"integer", "INTEGER"}, {"boolean", "BOOLEAN"},
    {"array", "ARRAY"},   {"object", "OBJECT"}, {"null", "NULL"},
};

/* The formats Gemini accepts, per type; any other is dropped (Gemini rejects it outright). */
static const struct {
    const char *type;
    const char *format;
} schema_formats[] = {
    {"STRING", "enum"},   {"STRING", "date-time"}, {"NUMBER", "float"},
    {"NUMBER", "double"}, {"INTEGER", "int32"},    {"INTEGER", "int64"},
};

/* Keywords copied as they are when their value has the expected JSON type. */
static const struct {
    const char *key;
    int type; /* a json_type; JSON_REAL stands for any number, JSON_NULL for any value */
} schema_plain[] = {
    {"title", JSON_STRING},          {"description", JSON_STRING}, {"pattern", JSON_STRING},
    {"format", JSON_STRING},         {"nullable", JSON_TRUE},      {"example", JSON_NULL},
    {"default", JSON_NULL},          {"minItems", JSON_INTEGER},   {"maxItems", JSON_INTEGER},
    {"minLength", JSON_INTEGER},     {"maxLength", JSON_INTEGER},  {"minProperties", JSON_INTEGER},
    {"maxProperties", JSON_INTEGER}, {"minimum", JSON_REAL},       {"maximum", JSON_REAL},
};

static const char *schema_type(const char *t)
{
    for (size_t i = 0; i < sizeof(schema_types) / sizeof(schema_types[0]); i++)
        if (strcasecmp(schema_types[i].json, t) == 0)
            return schema_types[i].gemini;
    return NULL;
}

static bool plain_type_ok(int want, json_t *v)
{
    switch (want) {
    case JSON_NULL: return true;
    case JSON_TRUE: return json_is_boolean(v);
    case JSON_REAL: return json_is_number(v);
    case JSON_INTEGER: return json_is_integer(v) && json_integer_value(v) >= 0;
    default: return json_typeof(v) == (json_type)want;
    }
}

static bool all_strings(json_t *a)
{
    size_t i;
    json_t *v;
    if (!json_is_array(a))
        return false;
    json_array_foreach(a, i, v)
    {
        if (!json_is_string(v))
            return false;
    }
    return true;
}

/* Resolves a local JSON pointer reference ("#", "#/$defs/Name", with ~0 and ~1 escapes) against root. */
static json_t *schema_resolve(json_t *root, const char *ref)
{
    if (ref[0] != '#')
        return NULL;
    const char *s = ref + 1;
    json_t *cur = root;
    while (*s) {
        if (*s != '/')
            return NULL;
        s++;
        char tok[256];
        size_t n = 0;
        while (*s && *s != '/') {
            char c = *s++;
            if (c == '~') {
                if (*s != '0' && *s != '1')
                    return NULL;
                c = *s++ == '0' ? '~' : '/';
            }
            if (n + 1 >= sizeof(tok))
                return NULL;
            tok[n++] = c;
        }
        tok[n] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *end;
            unsigned long idx = strtoul(tok, &end, 10);
            cur = n && *end == '\0' ? json_array_get(cur, idx) : NULL;
        } else {
            cur = NULL;
        }
        if (cur == NULL)
            return NULL;
    }
    return cur;
}

static void path_restore(struct schema_ctx *sc, size_t mark)
{
    sc->path.len = mark;
    sc->path.p[mark] = '\0';
}

static json_t *schema_convert(struct schema_ctx *sc, json_t *node, int depth);

/* Rewrites anyOf/oneOf branches into out: null branches make out nullable, one remaining branch is inlined. */
static int schema_any_of(struct schema_ctx *sc, const char *key, json_t *branches, json_t *out, int depth)
{
    if (!json_is_array(branches))
        return fail(sc->err, "%s.%s: expected an array", sc->path.p, key);
    json_t *kept = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(branches, i, b)
    {
        json_t *t = json_object_get(b, "type");
        if (json_is_object(b) && json_is_string(t) && strcmp(json_string_value(t), "null") == 0) {
            json_object_set_new(out, "nullable", json_true());
            continue;
        }
        size_t mark = sc->path.len;
        leo_buf_addf(&sc->path, ".%s[%zu]", key, i);
        json_t *c = schema_convert(sc, b, depth + 1);
        path_restore(sc, mark);
        if (c == NULL) {
            json_decref(kept);
            return LEO_EINVAL;
        }
        json_array_append_new(kept, c);
    }
    if (json_array_size(kept) == 1) {
        merge_missing(out, json_array_get(kept, 0));
    } else if (json_array_size(kept) > 1) {
        json_t *prev = json_object_get(out, "anyOf");
        if (prev)
            json_array_extend(prev, kept);
        else
            json_object_set(out, "anyOf", kept);
    }
    json_decref(kept);
    return 0;
}

/* Rewrites node's keywords (except "$ref") into out. */
static int schema_members(struct schema_ctx *sc, json_t *node, json_t *out, int depth)
{
    const char *key;
    json_t *v;
    json_object_foreach(node, key, v)
    {
        if (strcmp(key, "type") == 0) {
            if (json_is_string(v)) {
                const char *t = schema_type(json_string_value(v));
                if (t == NULL)
                    return fail(sc->err, "%s.type: \"%.64s\" is not a JSON Schema type", sc->path.p,
                                json_string_value(v));
                json_object_set_new(out, "type", json_string(t));
                continue;
            }
            if (!json_is_array(v))
                return fail(sc->err, "%s.type: expected a string or an array", sc->path.p);
            /* ["string", "null"] → STRING + nullable; several non-null types → anyOf of each. */
            json_t *alts = json_array();
            size_t i;
            json_t *t;
            json_array_foreach(v, i, t)
            {
                const char *g = json_is_string(t) ? schema_type(json_string_value(t)) : NULL;
                if (g == NULL) {
                    json_decref(alts);
                    return fail(sc->err, "%s.type[%zu]: not a JSON Schema type", sc->path.p, i);
                }
                if (strcmp(g, "NULL") == 0)
                    json_object_set_new(out, "nullable", json_true());
                else
                    json_array_append_new(alts, json_pack("{ss}", "type", g));
            }
            if (json_array_size(alts) == 1)
                json_object_set(out, "type", json_object_get(json_array_get(alts, 0), "type"));
            else if (json_array_size(alts) > 1)
                json_object_set(out, "anyOf", alts);
            else
                json_object_set_new(out, "type", json_string("NULL"));
            json_decref(alts);
        } else if (strcmp(key, "anyOf") == 0 || strcmp(key, "oneOf") == 0) {
            if (schema_any_of(sc, key, v, out, depth) != 0)
                return LEO_EINVAL;
        } else if (strcmp(key, "allOf") == 0) {
            if (!json_is_array(v) || json_array_size(v) != 1)
                return fail(sc->err, "%s.allOf: only a single-schema allOf is supported by gemini", sc->path.p);
            size_t mark = sc->path.len;
            leo_buf_adds(&sc->path, ".allOf[0]");
            json_t *c = schema_convert(sc, json_array_get(v, 0), depth + 1);
            path_restore(sc, mark);
            if (c == NULL)
                return LEO_EINVAL;
            merge_missing(out, c);
            json_decref(c);
        } else if (strcmp(key, "const") == 0) {
            if (json_is_string(v))
                json_object_set_new(out, "enum", json_pack("[O]", v));
        } else if (strcmp(key, "enum") == 0) {
            if (all_strings(v))
                json_object_set(out, "enum", v);
        } else if (strcmp(key, "required") == 0 || strcmp(key, "propertyOrdering") == 0) {
            if (all_strings(v))
                json_object_set(out, key, v);
        } else if (strcmp(key, "properties") == 0) {
            if (!json_is_object(v))
                return fail(sc->err, "%s.properties: expected an object", sc->path.p);
            json_t *props = json_object();
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv)
            {
                size_t mark = sc->path.len;
                leo_buf_addf(&sc->path, ".properties.%s", pk);
                json_t *c = schema_convert(sc, pv, depth + 1);
                path_restore(sc, mark);
                if (c == NULL) {
                    json_decref(props);
                    return LEO_EINVAL;
                }
                json_object_set_new(props, pk, c);
            }
            json_object_set_new(out, "properties", props);
        } else if (strcmp(key, "items") == 0) {
            if (json_is_array(v))
                return fail(sc->err, "%s.items: tuple schemas are not supported by gemini", sc->path.p);
            if (!json_is_object(v))
                continue;
            size_t mark = sc->path.len;
            leo_buf_adds(&sc->path, ".items");
            json_t *c = schema_convert(sc, v, depth + 1);
            path_restore(sc, mark);
            if (c == NULL)
                return LEO_EINVAL;
            json_object_set_new(out, "items", c);
        } else {
            for (size_t i = 0; i < sizeof(schema_plain) / sizeof(schema_plain[0]); i++)
                if (strcmp(key, schema_plain[i].key) == 0 && plain_type_ok(schema_plain[i].type, v))
                    json_object_set(out, key, v);
        }
    }
    return 0;
}

/* One JSON Schema node → a new Gemini Schema object, or NULL with err. */
static json_t *schema_convert(struct schema_ctx *sc, json_t *node, int depth)
{
    if (depth > SCHEMA_MAX_DEPTH || ++sc->nodes > SCHEMA_MAX_NODES) {
        fail(sc->err, "%s: schema nests too deeply or expands too far (a recursive \"$ref\"?)", sc->path.p);
        return NULL;
    }
    if (!json_is_object(node)) {
        fail(sc->err, "%s: expected a schema object", sc->path.p);
        return NULL;
    }
    json_t *out = json_object();
    if (schema_members(sc, node, out, depth) != 0) {
        json_decref(out);
        return NULL;
    }
    json_t *ref = json_object_get(node, "$ref");
    if (ref != NULL) {
        json_t *target = json_is_string(ref) ? schema_resolve(sc->root, json_string_value(ref)) : NULL;
        if (target == NULL) {
            fail(sc->err, "%s.$ref: \"%.128s\" cannot be resolved (only local \"#/...\" references are supported)",
                 sc->path.p, json_is_string(ref) ? json_string_value(ref) : "");
            json_decref(out);
            return NULL;
        }
        json_t *c = schema_convert(sc, target, depth + 1);
        if (c == NULL) {
            json_decref(out);
            return NULL;
        }
        merge_missing(out, c); /* keywords beside "$ref" (a description, usually) win */
        json_decref(c);
    }
    json_t *type = json_object_get(out, "type");
    if (type == NULL && json_object_get(out, "enum") != NULL) {
        json_object_set_new(out, "type", json_string("STRING"));
        type = json_object_get(out, "type");
    }
    json_t *format = json_object_get(out, "format");
    if (format != NULL) {
        bool ok = false;
        for (size_t i = 0; i < sizeof(schema_formats) / sizeof(schema_formats[0]); i++)
            if (str_is(type, schema_formats[i].type) && str_is(format, schema_formats[i].format))
                ok = true;
        if (!ok)
            json_object_del(out, "format");
    }
    return out;
}

/* The Gemini Schema for a client's JSON Schema at `path` (new reference, NULL with err). */
static json_t *schema_rewrite(json_t *schema, const char *path, struct leo_buf *err)
{
    struct schema_ctx sc = {.root = schema, .path = LEO_BUF_INIT, .err = err};
    leo_buf_adds(&sc.path, path);
    json_t *out = schema_convert(&sc, schema, 0);
    leo_buf_release(&sc.path);
    return out;
}

/* An OBJECT schema without properties, which Gemini rejects where a function's parameters or a response
 * schema stand; leaving it out means the same thing there (no arguments / free-form JSON). */
static bool schema_is_empty_object(json_t *s)
{
    json_t *props = json_object_get(s, "properties");
    return str_is(json_object_get(s, "type"), "OBJECT") && (props == NULL || json_object_size(props) == 0) &&
           json_object_get(s, "anyOf") == NULL;
}

/* ---- request: messages → contents ---- */

struct build {
    json_t *contents; /* "contents" */
    json_t *system;   /* systemInstruction.parts */
    json_t *names;    /* tool call id → function name, from the assistant messages seen so far */
};

/* Appends parts (stolen) as a content of role, merging with the previous content of the same role. */
static void add_content(json_t *contents, const char *role, json_t *parts)
{
    if (json_array_size(parts) == 0) {
        json_decref(parts);
        return;
    }
    size_t n = json_array_size(contents);
    json_t *last = n ? json_array_get(contents, n - 1) : NULL;
    if (last && str_is(json_object_get(last, "role"), role)) {
        json_array_extend(json_object_get(last, "parts"), parts);
        json_decref(parts);
        return;
    }
    json_t *c = json_object();
    json_object_set_new(c, "role", json_string(role));
    json_object_set_new(c, "parts", parts);
    json_array_append_new(contents, c);
}

static void add_text(json_t *parts, json_t *text)
{
    if (json_string_length(text) > 0)
        json_array_append_new(parts, json_pack("{sO}", "text", text));
}

/* Text parts of a system, developer or assistant message (assistants may also carry "refusal" parts). */
static int text_parts(json_t *content, size_t i, const char *role, json_t *parts, struct leo_buf *err)
{
    if (content == NULL)
        return 0;
    if (json_is_string(content)) {
        add_text(parts, content);
        return 0;
    }
    if (!json_is_array(content))
        return fail(err, "messages[%zu].content: expected a string or an array of parts", i);
    size_t j;
    json_t *p;
    json_array_foreach(content, j, p)
    {
        json_t *type = json_object_get(p, "type");
        if (!json_is_string(type))
            return fail(err, "messages[%zu].content[%zu].type: expected a string", i, j);
        const char *key = NULL;
        if (strcmp(json_string_value(type), "text") == 0)
            key = "text";
        else if (strcmp(role, "assistant") == 0 && strcmp(json_string_value(type), "refusal") == 0)
            key = "refusal";
        if (key == NULL)
            return fail(err, "messages[%zu].content[%zu].type: \"%.64s\" is not supported by gemini in a %s message", i,
                        j, json_string_value(type), role);
        json_t *t = json_object_get(p, key);
        if (!json_is_string(t))
            return fail(err, "messages[%zu].content[%zu].%s: expected a string", i, j, key);
        add_text(parts, t);
    }
    return 0;
}

/* A base64 data: URI → an inlineData part. */
static int add_data_uri(json_t *parts, json_t *uri, const char *path, struct leo_buf *err)
{
    if (!json_is_string(uri))
        return fail(err, "%s: expected a string", path);
    const char *s = json_string_value(uri);
    size_t n = json_string_length(uri);
    if (n < 5 || strncasecmp(s, "data:", 5) != 0)
        return fail(err, "%s: gemini takes files only inline, as base64 data: URIs (it does not fetch URLs)", path);
    const char *comma = memchr(s, ',', n);
    if (comma == NULL)
        return fail(err, "%s: malformed data: URI (no comma)", path);
    const char *meta = s + 5;
    size_t mlen = (size_t)(comma - meta);
    if (mlen < 7 || strncasecmp(comma - 7, ";base64", 7) != 0)
        return fail(err, "%s: the data: URI must be base64-encoded", path);
    const char *semi = memchr(meta, ';', mlen);
    size_t tlen = (size_t)(semi - meta);
    const char *data = comma + 1;
    size_t dlen = n - (size_t)(data - s);
    if (tlen == 0 || dlen == 0)
        return fail(err, "%s: the data: URI needs a media type and data", path);
    json_t *inl = json_object();
    json_object_set_new(inl, "mimeType", json_stringn(meta, tlen));
    json_object_set_new(inl, "data", json_stringn(data, dlen));
    json_array_append_new(parts, json_pack("{so}", "inlineData", inl));
    return 0;
}

static const char *const audio_formats[] = {"wav", "mp3", "aiff", "aac", "ogg", "flac"};

static int user_parts(json_t *content, size_t i, json_t *parts, struct leo_buf *err)
{
    if (content == NULL)
        return 0;
    if (json_is_string(content)) {
        add_text(parts, content);
        return 0;
    }
    if (!json_is_array(content))
        return fail(err, "messages[%zu].content: expected a string or an array of parts", i);
    size_t j;
    json_t *p;
    json_array_foreach(content, j, p)
    {
        char path[96];
        const char *type = json_string_value(json_object_get(p, "type"));
        if (type == NULL)
            return fail(err, "messages[%zu].content[%zu].type: expected a string", i, j);
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(p, "text");
            if (!json_is_string(t))
                return fail(err, "messages[%zu].content[%zu].text: expected a string", i, j);
            add_text(parts, t);
        } else if (strcmp(type, "image_url") == 0) {
            json_t *img = json_object_get(p, "image_url");
            json_t *url = json_is_object(img) ? json_object_get(img, "url") : img;
            snprintf(path, sizeof(path), "messages[%zu].content[%zu].image_url.url", i, j);
            if (add_data_uri(parts, url, path, err) != 0)
                return LEO_EINVAL;
        } else if (strcmp(type, "input_audio") == 0) {
            json_t *ia = json_object_get(p, "input_audio");
            json_t *data = json_object_get(ia, "data");
            const char *fmt = json_string_value(json_object_get(ia, "format"));
            bool known = false;
            for (size_t k = 0; fmt && k < sizeof(audio_formats) / sizeof(audio_formats[0]); k++)
                known = known || strcmp(fmt, audio_formats[k]) == 0;
            if (!known)
                return fail(err, "messages[%zu].content[%zu].input_audio.format: \"%.32s\" is not supported by gemini",
                            i, j, fmt ? fmt : "");
            if (!json_is_string(data) || json_string_length(data) == 0)
                return fail(err, "messages[%zu].content[%zu].input_audio.data: expected base64 data", i, j);
            json_t *inl = json_object();
            json_object_set_new(inl, "mimeType", json_sprintf("audio/%s", fmt));
            json_object_set(inl, "data", data);
            json_array_append_new(parts, json_pack("{so}", "inlineData", inl));
        } else if (strcmp(type, "file") == 0) {
            json_t *f = json_object_get(p, "file");
            json_t *fd = member(f, "file_data");
            if (fd == NULL)
                return fail(err,
                            "messages[%zu].content[%zu].file: gemini needs the file inline (file_data); "
                            "file_id is not supported",
                            i, j);
            snprintf(path, sizeof(path), "messages[%zu].content[%zu].file.file_data", i, j);
            if (add_data_uri(parts, fd, path, err) != 0)
                return LEO_EINVAL;
        } else {
            return fail(err, "messages[%zu].content[%zu].type: \"%.64s\" is not supported by gemini", i, j, type);
        }
    }
    return 0;
}

static int assistant_parts(json_t *msg, size_t i, struct build *b, json_t *parts, struct leo_buf *err)
{
    if (text_parts(member(msg, "content"), i, "assistant", parts, err) != 0)
        return LEO_EINVAL;
    json_t *calls = member(msg, "tool_calls");
    if (calls == NULL)
        return 0;
    if (!json_is_array(calls))
        return fail(err, "messages[%zu].tool_calls: expected an array", i);
    json_t *first = NULL;
    bool signed_any = false;
    size_t j;
    json_t *tc;
    json_array_foreach(calls, j, tc)
    {
        if (!json_is_object(tc))
            return fail(err, "messages[%zu].tool_calls[%zu]: expected an object", i, j);
        json_t *type = member(tc, "type");
        if (type != NULL && !str_is(type, "function"))
            return fail(err, "messages[%zu].tool_calls[%zu].type: only function calls are supported by gemini", i, j);
        json_t *id = json_object_get(tc, "id");
        json_t *fn = json_object_get(tc, "function");
        json_t *name = json_object_get(fn, "name");
        if (!json_is_string(id))
            return fail(err, "messages[%zu].tool_calls[%zu].id: expected a string", i, j);
        if (!json_is_string(name) || json_string_length(name) == 0)
            return fail(err, "messages[%zu].tool_calls[%zu].function.name: expected a non-empty string", i, j);
        json_t *args = member(fn, "arguments");
        if (args == NULL || (json_is_string(args) && json_string_length(args) == 0))
            args = json_object();
        else if (json_is_string(args))
            args = json_loadb(json_string_value(args), json_string_length(args), 0, NULL);
        else
            args = json_incref(args);
        if (!json_is_object(args)) {
            json_decref(args);
            return fail(err, "messages[%zu].tool_calls[%zu].function.arguments: expected a JSON object", i, j);
        }
        json_t *part = json_pack("{s{sOso}}", "functionCall", "name", name, "args", args);
        json_t *google = json_object_get(json_object_get(tc, "extra_content"), "google");
        json_t *sig = json_object_get(google, "thought_signature");
        if (json_is_string(sig)) {
            json_object_set(part, "thoughtSignature", sig);
            signed_any = true;
        }
        json_object_set(b->names, json_string_value(id), name);
        json_array_append_new(parts, part);
        if (first == NULL)
            first = part;
    }
    if (first != NULL && !signed_any)
        json_object_set_new(first, "thoughtSignature", json_string(SKIP_SIGNATURE));
    return 0;
}

static int tool_parts(json_t *msg, size_t i, struct build *b, json_t *parts, struct leo_buf *err)
{
    json_t *id = json_object_get(msg, "tool_call_id");
    if (!json_is_string(id))
        return fail(err, "messages[%zu].tool_call_id: expected a string", i);
    json_t *name = json_object_get(b->names, json_string_value(id));
    if (name == NULL)
        return fail(err, "messages[%zu].tool_call_id: \"%.64s\" matches no tool call of an earlier assistant message",
                    i, json_string_value(id));
    /* The result as one text: a string, or text parts joined. */
    json_t *content = member(msg, "content");
    json_t *text;
    if (content == NULL) {
        text = json_string("");
    } else if (json_is_string(content)) {
        text = json_incref(content);
    } else if (json_is_array(content)) {
        struct leo_buf joined = LEO_BUF_INIT;
        size_t j;
        json_t *p;
        json_array_foreach(content, j, p)
        {
            json_t *t = json_object_get(p, "text");
            if (!str_is(json_object_get(p, "type"), "text") || !json_is_string(t)) {
                leo_buf_release(&joined);
                return fail(err, "messages[%zu].content[%zu]: a tool result takes only text parts", i, j);
            }
            leo_buf_add(&joined, json_string_value(t), json_string_length(t));
        }
        text = json_stringn(joined.p, joined.len);
        leo_buf_release(&joined);
    } else {
        return fail(err, "messages[%zu].content: expected a string or an array of parts", i);
    }
    json_t *response = json_loadb(json_string_value(text), json_string_length(text), 0, NULL);
    if (!json_is_object(response)) {
        json_decref(response);
        response = json_pack("{sO}", "content", text);
    }
    json_decref(text);
    json_array_append_new(parts, json_pack("{s{sOso}}", "functionResponse", "name", name, "response", response));
    return 0;
}

static int build_contents(json_t *messages, struct build *b, struct leo_buf *err)
{
    if (!json_is_array(messages))
        return fail(err, "messages: expected an array");
    size_t i;
    json_t *msg;
    json_array_foreach(messages, i, msg)
    {
        const char *role = json_string_value(json_object_get(msg, "role"));
        if (role == NULL)
            return fail(err, "messages[%zu].role: expected a string", i);
        json_t *parts = json_array();
        int rc;
        const char *to;
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            rc = text_parts(member(msg, "content"), i, role, parts, err);
            to = NULL;
        } else if (strcmp(role, "user") == 0) {
            rc = user_parts(member(msg, "content"), i, parts, err);
            to = "user";
        } else if (strcmp(role, "assistant") == 0) {
            rc = assistant_parts(msg, i, b, parts, err);
            to = "model";
        } else if (strcmp(role, "tool") == 0) {
            rc = tool_parts(msg, i, b, parts, err);
            to = "user";
        } else {
            json_decref(parts);
            return fail(err, "messages[%zu].role: \"%.64s\" is not supported by gemini", i, role);
        }
        if (rc != 0) {
            json_decref(parts);
            return rc;
        }
        if (to == NULL) {
            json_array_extend(b->system, parts);
            json_decref(parts);
        } else {
            add_content(b->contents, to, parts);
        }
    }
    if (json_array_size(b->contents) == 0)
        return fail(err, "messages: gemini needs at least one non-empty user or assistant message");
    return 0;
}

/* ---- request: tools, tool choice, generation config ---- */

static int build_tools(json_t *tools, json_t **out, struct leo_buf *err)
{
    *out = NULL;
    if (!json_is_array(tools))
        return fail(err, "tools: expected an array");
    json_t *decls = json_array();
    size_t i;
    json_t *tool;
    json_array_foreach(tools, i, tool)
    {
        json_t *type = json_object_get(tool, "type");
        if (!str_is(type, "function")) {
            json_decref(decls);
            return fail(err, "tools[%zu].type: \"%.64s\" is not supported by gemini (only function tools are)", i,
                        json_is_string(type) ? json_string_value(type) : "");
        }
        json_t *fn = json_object_get(tool, "function");
        json_t *name = json_object_get(fn, "name");
        if (!json_is_string(name) || json_string_length(name) == 0) {
            json_decref(decls);
            return fail(err, "tools[%zu].function.name: expected a non-empty string", i);
        }
        json_t *decl = json_pack("{sO}", "name", name);
        json_t *desc = member(fn, "description");
        if (json_is_string(desc))
            json_object_set(decl, "description", desc);
        json_t *params = member(fn, "parameters");
        if (params != NULL) {
            char path[64];
            snprintf(path, sizeof(path), "tools[%zu].function.parameters", i);
            json_t *s = schema_rewrite(params, path, err);
            if (s == NULL) {
                json_decref(decl);
                json_decref(decls);
                return LEO_EINVAL;
            }
            if (schema_is_empty_object(s))
                json_decref(s);
            else
                json_object_set_new(decl, "parameters", s);
        }
        json_array_append_new(decls, decl);
    }
    if (json_array_size(decls) == 0) {
        json_decref(decls);
        return 0;
    }
    *out = json_pack("[{so}]", "functionDeclarations", decls);
    return 0;
}

static const struct {
    const char *openai;
    const char *gemini;
} tool_choice_modes[] = {
    {"auto", "AUTO"},
    {"none", "NONE"},
    {"required", "ANY"},
};

static int build_tool_config(json_t *tc, json_t **out, struct leo_buf *err)
{
    *out = NULL;
    json_t *fcc = json_object();
    if (json_is_string(tc)) {
        for (size_t i = 0; i < sizeof(tool_choice_modes) / sizeof(tool_choice_modes[0]); i++)
            if (strcmp(json_string_value(tc), tool_choice_modes[i].openai) == 0)
                json_object_set_new(fcc, "mode", json_string(tool_choice_modes[i].gemini));
    } else if (str_is(json_object_get(tc, "type"), "function")) {
        json_t *name = json_object_get(json_object_get(tc, "function"), "name");
        if (json_is_string(name)) {
            json_object_set_new(fcc, "mode", json_string("ANY"));
            json_object_set_new(fcc, "allowedFunctionNames", json_pack("[O]", name));
        }
    }
    if (json_object_size(fcc) == 0) {
        json_decref(fcc);
        return fail(err, "tool_choice: expected \"auto\", \"none\", \"required\" or "
                         "{\"type\":\"function\",\"function\":{\"name\":...}}");
    }
    *out = json_pack("{so}", "functionCallingConfig", fcc);
    return 0;
}

/* Numeric request fields that map one to one, in the order generationConfig lists them. */
static const struct {
    const char *openai;
    const char *gemini;
    bool integer;
} gen_numbers[] = {
    {"n", "candidateCount", true},
    {"max_completion_tokens", "maxOutputTokens", true},
    {"max_tokens", "maxOutputTokens", true}, /* the older name: max_completion_tokens wins */
    {"temperature", "temperature", false},
    {"top_p", "topP", false},
    {"top_k", "topK", true},
    {"seed", "seed", true},
    {"presence_penalty", "presencePenalty", false},
    {"frequency_penalty", "frequencyPenalty", false},
};

static const struct {
    const char *effort;
    int budget;
} thinking_budgets[] = {
    {"none", 0}, {"minimal", 512}, {"low", 1024}, {"medium", 8192}, {"high", 24576},
};

static int gen_response_format(json_t *rf, json_t *g, struct leo_buf *err)
{
    json_t *type = json_object_get(rf, "type");
    if (str_is(type, "text"))
        return 0;
    if (str_is(type, "json_object")) {
        json_object_set_new(g, "responseMimeType", json_string("application/json"));
        return 0;
    }
    if (!str_is(type, "json_schema"))
        return fail(err, "response_format.type: expected \"text\", \"json_object\" or \"json_schema\"");
    json_object_set_new(g, "responseMimeType", json_string("application/json"));
    json_t *schema = member(json_object_get(rf, "json_schema"), "schema");
    if (schema == NULL)
        return 0;
    json_t *s = schema_rewrite(schema, "response_format.json_schema.schema", err);
    if (s == NULL)
        return LEO_EINVAL;
    if (schema_is_empty_object(s))
        json_decref(s);
    else
        json_object_set_new(g, "responseSchema", s);
    return 0;
}

static int build_generation_config(json_t *canon, json_t *g, struct leo_buf *err)
{
    json_t *stop = member(canon, "stop");
    if (json_is_string(stop))
        json_object_set_new(g, "stopSequences", json_pack("[O]", stop));
    else if (all_strings(stop))
        json_object_set(g, "stopSequences", stop);
    else if (stop != NULL)
        return fail(err, "stop: expected a string or an array of strings");

    json_t *rf = member(canon, "response_format");
    if (rf != NULL && gen_response_format(rf, g, err) != 0)
        return LEO_EINVAL;

    for (size_t i = 0; i < sizeof(gen_numbers) / sizeof(gen_numbers[0]); i++) {
        json_t *v = member(canon, gen_numbers[i].openai);
        if (v == NULL)
            continue;
        if (gen_numbers[i].integer ? !json_is_integer(v) : !json_is_number(v))
            return fail(err, "%s: expected %s", gen_numbers[i].openai,
                        gen_numbers[i].integer ? "an integer" : "a number");
        if (json_object_get(g, gen_numbers[i].gemini) == NULL)
            json_object_set(g, gen_numbers[i].gemini, v);
    }

    json_t *effort = member(canon, "reasoning_effort");
    if (effort != NULL) {
        size_t k = 0, n = sizeof(thinking_budgets) / sizeof(thinking_budgets[0]);
        while (k < n && !str_is(effort, thinking_budgets[k].effort))
            k++;
        if (k == n)
            return fail(err, "reasoning_effort: expected \"none\", \"minimal\", \"low\", \"medium\" or \"high\"");
        json_t *tc = json_object();
        if (thinking_budgets[k].budget > 0)
            json_object_set_new(tc, "includeThoughts", json_true());
        json_object_set_new(tc, "thinkingBudget", json_integer(thinking_budgets[k].budget));
        json_object_set_new(g, "thinkingConfig", tc);
    }
    return 0;
}

/* Request fields whose loss would change what the client gets back. */
static int check_rejected(json_t *canon, struct leo_buf *err)
{
    static const char *const never[] = {"audio", "functions", "function_call", "web_search_options"};
    for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
        if (member(canon, never[i]) != NULL)
            return fail(err, "%s: not supported by gemini", never[i]);
    json_t *lp = member(canon, "logprobs");
    if (lp != NULL && !json_is_false(lp))
        return fail(err, "logprobs: not supported by gemini");
    json_t *tlp = member(canon, "top_logprobs");
    if (tlp != NULL && !(json_is_integer(tlp) && json_integer_value(tlp) == 0))
        return fail(err, "top_logprobs: not supported by gemini");
    json_t *mod = member(canon, "modalities");
    if (mod != NULL) {
        size_t i;
        json_t *m;
        if (!json_is_array(mod))
            return fail(err, "modalities: expected an array");
        json_array_foreach(mod, i, m)
        {
            if (!str_is(m, "text"))
                return fail(err, "modalities[%zu]: only \"text\" output is supported by gemini", i);
        }
    }
    return 0;
}

static int gemini_build_chat(json_t *canon, const struct leo_adapter_ctx *ctx, struct leo_buf *body,
                             struct leo_buf *err)
{
    (void)ctx;
    if (!json_is_object(canon))
        return fail(err, "request: expected a JSON object");
    if (check_rejected(canon, err) != 0)
        return LEO_EINVAL;
    struct build b = {json_array(), json_array(), json_object()};
    json_t *tools = NULL, *tool_config = NULL, *gen = json_object();
    json_t *req = NULL;
    int rc = build_contents(json_object_get(canon, "messages"), &b, err);
    if (rc != 0)
        goto done;
    json_t *v = member(canon, "tools");
    rc = v ? build_tools(v, &tools, err) : 0;
    if (rc != 0)
        goto done;
    v = member(canon, "tool_choice");
    rc = v ? build_tool_config(v, &tool_config, err) : 0;
    if (rc != 0)
        goto done;
    rc = build_generation_config(canon, gen, err);
    if (rc != 0)
        goto done;

    /* In the order Google documents GenerateContentRequest's fields. */
    req = json_object();
    json_object_set(req, "contents", b.contents);
    if (tools)
        json_object_set(req, "tools", tools);
    if (tools && tool_config) /* without declarations there is nothing to choose, and Gemini rejects it */
        json_object_set(req, "toolConfig", tool_config);
    if (json_array_size(b.system))
        json_object_set_new(req, "systemInstruction", json_pack("{sO}", "parts", b.system));
    if (json_object_size(gen))
        json_object_set(req, "generationConfig", gen);
    char *s = json_dumps(req, JSON_COMPACT | JSON_REAL_PRECISION(15));
    rc = s ? leo_buf_adds(body, s) : LEO_EINVAL;
    free(s);
done:
    json_decref(req);
    json_decref(gen);
    json_decref(tool_config);
    json_decref(tools);
    json_decref(b.names);
    json_decref(b.system);
    json_decref(b.contents);
    return rc;
}

/* ---- response ---- */

static const struct {
    const char *gemini;
    const char *openai;
} finish_reasons[] = {
    {"STOP", "stop"},
    {"MAX_TOKENS", "length"},
    {"SAFETY", "content_filter"},
    {"RECITATION", "content_filter"},
    {"LANGUAGE", "content_filter"},
    {"BLOCKLIST", "content_filter"},
    {"PROHIBITED_CONTENT", "content_filter"},
    {"SPII", "content_filter"},
    {"IMAGE_SAFETY", "content_filter"},
    {"IMAGE_PROHIBITED_CONTENT", "content_filter"},
};

/* The canonical finish_reason for a Gemini finishReason; unknown reasons (OTHER, MALFORMED_FUNCTION_CALL, ...)
 * read as "stop", the only neutral value OpenAI clients know. */
static const char *finish_reason(const char *r, bool called)
{
    const char *out = "stop";
    for (size_t i = 0; r && i < sizeof(finish_reasons) / sizeof(finish_reasons[0]); i++)
        if (strcmp(r, finish_reasons[i].gemini) == 0)
            out = finish_reasons[i].openai;
    return called && strcmp(out, "stop") == 0 ? "tool_calls" : out;
}

static uint64_t count(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* usageMetadata → a canonical usage object (new reference); fills u. */
static json_t *usage_from_meta(json_t *m, struct leo_usage *u)
{
    uint64_t prompt = count(m, "promptTokenCount") + count(m, "toolUsePromptTokenCount");
    uint64_t thoughts = count(m, "thoughtsTokenCount");
    uint64_t completion = count(m, "candidatesTokenCount") + thoughts;
    uint64_t cached = count(m, "cachedContentTokenCount");
    uint64_t total =
        json_is_integer(json_object_get(m, "totalTokenCount")) ? count(m, "totalTokenCount") : prompt + completion;
    json_t *o = json_object();
    json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)prompt));
    json_object_set_new(o, "completion_tokens", json_integer((json_int_t)completion));
    json_object_set_new(o, "total_tokens", json_integer((json_int_t)total));
    if (json_object_get(m, "cachedContentTokenCount"))
        json_object_set_new(o, "prompt_tokens_details", json_pack("{sI}", "cached_tokens", (json_int_t)cached));
    if (json_object_get(m, "thoughtsTokenCount"))
        json_object_set_new(o, "completion_tokens_details",
                            json_pack("{sI}", "reasoning_tokens", (json_int_t)thoughts));
    if (u != NULL) {
        u->input_tokens = prompt;
        u->output_tokens = completion;
        u->cache_read_tokens = cached;
        u->cache_write_tokens = 0;
        u->have = true;
    }
    return o;
}

/* A canonical tool call for a functionCall part; "index" is set for stream deltas. NULL when the part is
 * unusable (no name). */
static json_t *tool_call(json_t *part, json_int_t cand, size_t n, bool delta)
{
    json_t *fc = json_object_get(part, "functionCall");
    json_t *name = json_object_get(fc, "name");
    if (!json_is_string(name))
        return NULL;
    json_t *args = json_object_get(fc, "args");
    char *a = args ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_t *tc = json_object();
    if (delta)
        json_object_set_new(tc, "index", json_integer((json_int_t)n));
    json_object_set_new(tc, "id", json_sprintf("call_%" JSON_INTEGER_FORMAT "_%zu", cand, n));
    json_object_set_new(tc, "type", json_string("function"));
    json_object_set_new(tc, "function", json_pack("{sOss}", "name", name, "arguments", a ? a : "{}"));
    free(a);
    json_t *sig = json_object_get(part, "thoughtSignature");
    if (json_is_string(sig))
        json_object_set_new(tc, "extra_content", json_pack("{s{sO}}", "google", "thought_signature", sig));
    return tc;
}

static json_int_t candidate_index(json_t *cand, size_t pos)
{
    json_t *idx = json_object_get(cand, "index");
    return json_is_integer(idx) && json_integer_value(idx) >= 0 ? json_integer_value(idx) : (json_int_t)pos;
}

static json_t *candidate_choice(json_t *cand, size_t pos, struct leo_buf *err)
{
    json_int_t index = candidate_index(cand, pos);
    struct leo_buf text = LEO_BUF_INIT, reasoning = LEO_BUF_INIT;
    json_t *calls = json_array();
    bool any_text = false;
    json_t *parts = json_object_get(json_object_get(cand, "content"), "parts");
    size_t j;
    json_t *part;
    json_array_foreach(parts, j, part)
    {
        json_t *t = json_object_get(part, "text");
        if (json_object_get(part, "functionCall") != NULL) {
            json_t *tc = tool_call(part, index, json_array_size(calls), false);
            if (tc == NULL) {
                leo_buf_addf(err, "upstream candidate %" JSON_INTEGER_FORMAT " has a function call without a name",
                             index);
                leo_buf_release(&text);
                leo_buf_release(&reasoning);
                json_decref(calls);
                return NULL;
            }
            json_array_append_new(calls, tc);
        } else if (json_is_string(t)) {
            bool thought = json_is_true(json_object_get(part, "thought"));
            leo_buf_add(thought ? &reasoning : &text, json_string_value(t), json_string_length(t));
            any_text = any_text || !thought;
        }
    }
    json_t *msg = json_object();
    json_object_set_new(msg, "role", json_string("assistant"));
    /* null, as OpenAI sends it, when the candidate only called functions (Gemini may add an empty text part
     * that carries a signature) or had no text at all. */
    bool content = text.len > 0 || (any_text && json_array_size(calls) == 0);
    json_object_set_new(msg, "content", content ? json_stringn(text.p, text.len) : json_null());
    if (reasoning.len)
        json_object_set_new(msg, "reasoning_content", json_stringn(reasoning.p, reasoning.len));
    if (json_array_size(calls))
        json_object_set(msg, "tool_calls", calls);
    const char *fr =
        finish_reason(json_string_value(json_object_get(cand, "finishReason")), json_array_size(calls) > 0);
    json_t *choice = json_pack("{sIsosnss}", "index", index, "message", msg, "logprobs", "finish_reason", fr);
    json_decref(calls);
    leo_buf_release(&text);
    leo_buf_release(&reasoning);
    return choice;
}

static json_t *gemini_parse_chat(const char *body, size_t len, const struct leo_adapter_ctx *ctx, struct leo_usage *u,
                                 struct leo_buf *err)
{
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    json_t *choices = NULL;
    if (!json_is_object(root)) {
        leo_buf_adds(err, "upstream returned a body that is not a JSON object");
        goto fail;
    }
    json_t *e = json_object_get(root, "error");
    if (e != NULL) {
        char msg[512];
        error_text(e, msg, sizeof(msg));
        leo_buf_addf(err, "upstream error: %s", msg[0] ? msg : "(no message)");
        goto fail;
    }
    json_t *cands = json_object_get(root, "candidates");
    if (cands != NULL && !json_is_array(cands)) {
        leo_buf_adds(err, "upstream response: candidates is not an array");
        goto fail;
    }
    choices = json_array();
    size_t i;
    json_t *cand;
    json_array_foreach(cands, i, cand)
    {
        json_t *c = json_is_object(cand) ? candidate_choice(cand, i, err) : NULL;
        if (c == NULL) {
            if (!json_is_object(cand))
                leo_buf_addf(err, "upstream response: candidates[%zu] is not an object", i);
            goto fail;
        }
        json_array_append_new(choices, c);
    }
    if (json_array_size(choices) == 0) {
        json_t *block = json_object_get(json_object_get(root, "promptFeedback"), "blockReason");
        if (block == NULL) {
            leo_buf_adds(err, "upstream response has no candidates");
            goto fail;
        }
        json_array_append_new(choices, json_pack("{sis{sssn}snss}", "index", 0, "message", "role", "assistant",
                                                 "content", "logprobs", "finish_reason", "content_filter"));
    }
    json_t *out = json_object();
    json_object_set_new(out, "id", json_string(ctx->response_id ? ctx->response_id : ""));
    json_object_set_new(out, "object", json_string("chat.completion"));
    json_object_set_new(out, "created", json_integer(ctx->created));
    json_object_set_new(out, "model", json_string(ctx->model ? ctx->model : ""));
    json_object_set_new(out, "choices", choices);
    json_t *meta = json_object_get(root, "usageMetadata");
    if (json_is_object(meta))
        json_object_set_new(out, "usage", usage_from_meta(meta, u));
    json_decref(root);
    return out;
fail:
    json_decref(choices);
    json_decref(root);
    return NULL;
}

/* ---- stream ---- */

struct cand_state {
    bool started;  /* the role chunk went out */
    bool finished; /* the finish chunk went out */
    size_t ncalls; /* tool calls so far: the next call's index */
};

struct leo_stream_xlate {
    char *id;
    char *model;
    int64_t created;
    json_t *usage; /* canonical usage of the last usageMetadata, or NULL */
    bool finished; /* some candidate finished (or the prompt was blocked) */
    bool ended;
    struct cand_state cands[MAX_CANDIDATES];
};

static struct leo_stream_xlate *gemini_stream_new(const struct leo_adapter_ctx *ctx)
{
    struct leo_stream_xlate *st = leo_new(struct leo_stream_xlate);
    st->id = leo_strdup(ctx->response_id ? ctx->response_id : "");
    st->model = leo_strdup(ctx->model ? ctx->model : "");
    st->created = ctx->created;
    return st;
}

static json_t *chunk_new(struct leo_stream_xlate *st, json_t *choices)
{
    json_t *c = json_object();
    json_object_set_new(c, "id", json_string(st->id));
    json_object_set_new(c, "object", json_string("chat.completion.chunk"));
    json_object_set_new(c, "created", json_integer(st->created));
    json_object_set_new(c, "model", json_string(st->model));
    json_object_set_new(c, "choices", choices);
    return c;
}

/* Appends a chunk with one choice; steals delta. */
static void emit(struct leo_stream_xlate *st, json_t *out, json_int_t index, json_t *delta, const char *finish)
{
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(index));
    json_object_set_new(choice, "delta", delta);
    json_object_set_new(choice, "logprobs", json_null());
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_array_append_new(out, chunk_new(st, json_pack("[o]", choice)));
}

static void start_candidate(struct leo_stream_xlate *st, json_t *out, json_int_t index)
{
    if (st->cands[index].started)
        return;
    st->cands[index].started = true;
    emit(st, out, index, json_pack("{ssss}", "role", "assistant", "content", ""), NULL);
}

static int stream_candidate(struct leo_stream_xlate *st, json_t *cand, size_t pos, json_t *out, struct leo_buf *err)
{
    json_int_t index = candidate_index(cand, pos);
    if (index >= MAX_CANDIDATES) {
        leo_buf_addf(err, "upstream stream names candidate %" JSON_INTEGER_FORMAT ", more than gemini returns", index);
        return LEO_EUPSTREAM;
    }
    struct cand_state *cs = &st->cands[index];
    start_candidate(st, out, index);
    json_t *parts = json_object_get(json_object_get(cand, "content"), "parts");
    size_t j;
    json_t *part;
    json_array_foreach(parts, j, part)
    {
        json_t *t = json_object_get(part, "text");
        if (json_object_get(part, "functionCall") != NULL) {
            json_t *tc = tool_call(part, index, cs->ncalls, true);
            if (tc == NULL) {
                leo_buf_addf(err, "upstream candidate %" JSON_INTEGER_FORMAT " has a function call without a name",
                             index);
                return LEO_EUPSTREAM;
            }
            cs->ncalls++;
            emit(st, out, index, json_pack("{s[o]}", "tool_calls", tc), NULL);
        } else if (json_is_string(t) && json_string_length(t) > 0) {
            const char *key = json_is_true(json_object_get(part, "thought")) ? "reasoning_content" : "content";
            emit(st, out, index, json_pack("{sO}", key, t), NULL);
        }
    }
    json_t *fr = json_object_get(cand, "finishReason");
    if (json_is_string(fr) && !cs->finished) {
        cs->finished = true;
        st->finished = true;
        emit(st, out, index, json_object(), finish_reason(json_string_value(fr), cs->ncalls > 0));
    }
    return 0;
}

static int gemini_stream_event(struct leo_stream_xlate *st, struct leo_str event, struct leo_str data, json_t *out,
                               struct leo_usage *u, struct leo_buf *err)
{
    (void)event;
    size_t k = 0;
    while (k < data.len && (data.p[k] == ' ' || data.p[k] == '\t' || data.p[k] == '\r' || data.p[k] == '\n'))
        k++;
    if (k == data.len)
        return 0; /* an empty event (a keep-alive through some proxy) says nothing */
    json_t *root = json_loadb(data.p, data.len, JSON_ALLOW_NUL, NULL);
    int rc = 0;
    if (!json_is_object(root)) {
        leo_buf_adds(err, "upstream sent a stream event that is not a JSON object");
        rc = LEO_EUPSTREAM;
        goto done;
    }
    json_t *e = json_object_get(root, "error");
    if (e != NULL) {
        char msg[512];
        error_text(e, msg, sizeof(msg));
        leo_buf_addf(err, "upstream error event: %s", msg[0] ? msg : "(no message)");
        rc = LEO_EUPSTREAM;
        goto done;
    }
    json_t *cands = json_object_get(root, "candidates");
    if (cands != NULL && !json_is_array(cands)) {
        leo_buf_adds(err, "upstream stream event: candidates is not an array");
        rc = LEO_EUPSTREAM;
        goto done;
    }
    size_t i;
    json_t *cand;
    json_array_foreach(cands, i, cand)
    {
        if (!json_is_object(cand)) {
            leo_buf_addf(err, "upstream stream event: candidates[%zu] is not an object", i);
            rc = LEO_EUPSTREAM;
            goto done;
        }
        rc = stream_candidate(st, cand, i, out, err);
        if (rc != 0)
            goto done;
    }
    json_t *block = json_object_get(json_object_get(root, "promptFeedback"), "blockReason");
    if (json_array_size(cands) == 0 && block != NULL && !st->cands[0].finished) {
        start_candidate(st, out, 0);
        st->cands[0].finished = true;
        st->finished = true;
        emit(st, out, 0, json_object(), "content_filter");
    }
    json_t *meta = json_object_get(root, "usageMetadata");
    if (json_is_object(meta)) {
        json_decref(st->usage);
        st->usage = usage_from_meta(meta, u);
    }
done:
    json_decref(root);
    return rc;
}

static int gemini_stream_end(struct leo_stream_xlate *st, json_t *out, struct leo_usage *u, struct leo_buf *err)
{
    (void)u; /* already written by stream_event */
    if (!st->finished) {
        leo_buf_adds(err, "stream ended before a finish reason");
        return LEO_EUPSTREAM;
    }
    if (st->usage != NULL && !st->ended) {
        json_t *c = chunk_new(st, json_array());
        json_object_set(c, "usage", st->usage);
        json_array_append_new(out, c);
    }
    st->ended = true;
    return 0;
}

static void gemini_stream_free(struct leo_stream_xlate *st)
{
    if (st == NULL)
        return;
    json_decref(st->usage);
    leo_free(st->id);
    leo_free(st->model);
    leo_free(st);
}

/* Gemini's error body is {"error":{"code","message","status"}}; on the streaming endpoint without alt=sse it
 * comes wrapped in an array, so the first element is taken then. */
static void gemini_error_message(const char *body, size_t len, char *out, size_t size)
{
    if (size == 0)
        return;
    out[0] = '\0';
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *obj = json_is_array(root) ? json_array_get(root, 0) : root;
    json_t *e = json_object_get(obj, "error");
    if (e != NULL)
        error_text(e, out, size);
    json_decref(root);
}

/* ---- embeddings: OpenAI /v1/embeddings ↔ batchEmbedContents ---- */

/* Code points of UTF-8 text, as the token estimator counts them (gateway/tokens.h). */
static uint64_t utf8_chars(const char *s, size_t len)
{
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static int gemini_embeddings_url(const struct leo_provider *p, const char *model, struct leo_buf *url)
{
    return model_url(p, model, ":batchEmbedContents", url);
}

/* input: a string or an array of strings (token-id arrays have no Gemini equivalent); dimensions →
 * outputDimensionality; encoding_format and user are handled on the way back / dropped. */
static int gemini_build_embeddings(json_t *req, const struct leo_adapter_ctx *ctx, struct leo_buf *body,
                                   struct leo_buf *err)
{
    json_t *input = json_object_get(req, "input");
    json_t *texts = json_is_string(input) ? json_pack("[O]", input) : json_incref(input);
    size_t i;
    json_t *t;
    if (!json_is_array(texts) || json_array_size(texts) == 0) {
        json_decref(texts);
        leo_buf_adds(err, "input: must be a string or a non-empty array of strings for gemini");
        return LEO_EINVAL;
    }
    json_t *dims = json_object_get(req, "dimensions");
    const char *model = strncmp(ctx->model, "models/", 7) == 0 ? ctx->model + 7 : ctx->model;
    json_t *requests = json_array();
    json_array_foreach(texts, i, t)
    {
        if (!json_is_string(t)) {
            leo_buf_addf(err, "input[%zu]: gemini embeds text only, not token arrays", i);
            json_decref(requests);
            json_decref(texts);
            return LEO_EINVAL;
        }
        json_t *r = json_pack("{s:s+,s:{s:[{s:O}]}}", "model", "models/", model, "content", "parts", "text", t);
        if (json_is_integer(dims))
            json_object_set(r, "outputDimensionality", dims);
        json_array_append_new(requests, r);
    }
    json_decref(texts);
    json_t *root = json_pack("{s:o}", "requests", requests);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    int rc = s ? leo_buf_adds(body, s) : LEO_EINVAL;
    free(s);
    return rc;
}

/* The OpenAI list; vectors as float arrays, or as base64 of little-endian float32 when the client asked for
 * encoding_format "base64" (the OpenAI SDKs' default). Gemini reports no usage for embeddings: the
 * gateway's estimate (characters / 4) fills it, marked as an estimate in the docs. */
static json_t *gemini_parse_embeddings(const char *body, size_t len, json_t *req, const struct leo_adapter_ctx *ctx,
                                       struct leo_usage *u, struct leo_buf *err)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *embs = json_object_get(root, "embeddings");
    if (!json_is_array(embs)) {
        json_decref(root);
        leo_buf_adds(err, "upstream returned no embeddings");
        return NULL;
    }
    json_t *fmt = json_object_get(req, "encoding_format");
    bool b64 = json_is_string(fmt) && strcmp(json_string_value(fmt), "base64") == 0;
    json_t *data = json_array();
    size_t i, j;
    json_t *e, *v;
    json_array_foreach(embs, i, e)
    {
        json_t *values = json_object_get(e, "values");
        json_t *vec;
        if (b64) {
            size_t n = json_array_size(values);
            unsigned char *raw = leo_malloc(n * 4 + 1);
            json_array_foreach(values, j, v)
            {
                float f = (float)json_number_value(v);
                uint32_t bits;
                memcpy(&bits, &f, 4);
                for (int k = 0; k < 4; k++)
                    raw[j * 4 + (size_t)k] = (unsigned char)(bits >> (8 * k));
            }
            size_t enc_len = sodium_base64_encoded_len(n * 4, sodium_base64_VARIANT_ORIGINAL);
            char *enc = leo_malloc(enc_len);
            sodium_bin2base64(enc, enc_len, raw, n * 4, sodium_base64_VARIANT_ORIGINAL);
            vec = json_string(enc);
            leo_free(raw);
            leo_free(enc);
        } else {
            vec = json_incref(json_is_array(values) ? values : json_array());
        }
        json_array_append_new(data, json_pack("{s:s,s:I,s:o}", "object", "embedding", "index", (json_int_t)i,
                                              "embedding", vec));
    }
    json_decref(root);
    /* the estimate: characters of the inputs / 4 */
    uint64_t chars = 0;
    json_t *input = json_object_get(req, "input");
    if (json_is_string(input))
        chars = utf8_chars(json_string_value(input), json_string_length(input));
    json_array_foreach(input, i, v) chars += json_is_string(v) ? utf8_chars(json_string_value(v), json_string_length(v)) : 0;
    u->input_tokens = (chars + 3) / 4;
    u->output_tokens = 0;
    u->have = true;
    return json_pack("{s:s,s:o,s:s,s:{s:I,s:I}}", "object", "list", "data", data, "model", ctx->model, "usage",
                     "prompt_tokens", (json_int_t)u->input_tokens, "total_tokens", (json_int_t)u->input_tokens);
}

const struct leo_adapter leo_adapter_gemini = {
    .type = "gemini",
    .dialect = LEO_DIALECT_GEMINI,
    .chat_url = gemini_chat_url,
    .auth_headers = gemini_auth,
    .build_chat = gemini_build_chat,
    .parse_chat = gemini_parse_chat,
    .stream_new = gemini_stream_new,
    .stream_event = gemini_stream_event,
    .stream_end = gemini_stream_end,
    .stream_free = gemini_stream_free,
    .error_message = gemini_error_message,
    .embeddings_url = gemini_embeddings_url,
    .build_embeddings = gemini_build_embeddings,
    .parse_embeddings = gemini_parse_embeddings,
};
