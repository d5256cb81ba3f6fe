#include "tokens.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/buf.h"
#include "../common/json_scan.h"

#define PER_MESSAGE 4
#define REPLY_PRIMING 3
#define PER_IMAGE 85

/* Characters of UTF-8 text (code points, not bytes: a 3-byte character is one character of text). */
static uint64_t chars(const char *s, size_t len)
{
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static uint64_t content_chars(json_t *content, uint64_t *images)
{
    if (json_is_string(content))
        return chars(json_string_value(content), json_string_length(content));
    uint64_t n = 0;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *type = json_object_get(part, "type");
        if (json_is_string(type) && strcmp(json_string_value(type), "image_url") == 0) {
            (*images)++;
            continue;
        }
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text))
            n += chars(json_string_value(text), json_string_length(text));
    }
    return n;
}

uint64_t leo_estimate_tokens(json_t *canon)
{
    uint64_t text = 0, images = 0, messages = 0;
    size_t i, j;
    json_t *m, *call;
    json_array_foreach(json_object_get(canon, "messages"), i, m)
    {
        messages++;
        text += content_chars(json_object_get(m, "content"), &images);
        json_array_foreach(json_object_get(m, "tool_calls"), j, call)
        {
            json_t *fn = json_object_get(call, "function");
            json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
            if (json_is_string(name))
                text += chars(json_string_value(name), json_string_length(name));
            if (json_is_string(args))
                text += chars(json_string_value(args), json_string_length(args));
        }
    }
    json_t *tools = json_object_get(canon, "tools");
    if (json_is_array(tools) && json_array_size(tools) > 0) {
        char *s = json_dumps(tools, JSON_COMPACT);
        if (s) {
            text += chars(s, strlen(s));
            free(s);
        }
    }
    return (text + 3) / 4 + messages * PER_MESSAGE + REPLY_PRIMING + images * PER_IMAGE;
}

/* ---- the same estimate from the request's bytes ---- */

/* Characters of the JSON string literal raw once decoded (0 for anything else); scratch is reused. */
static uint64_t raw_string_chars(struct leo_str raw, struct leo_buf *scratch)
{
    if (raw.len < 2 || raw.p[0] != '"')
        return 0;
    if (memchr(raw.p, '\\', raw.len) == NULL)
        return chars(raw.p + 1, raw.len - 2);
    scratch->len = 0;
    return leo_json_string_decode(raw, scratch) == 0 ? chars(scratch->p, scratch->len) : 0;
}

/* True when the string literal raw decodes to lit. */
static bool raw_string_is(struct leo_str raw, const char *lit, struct leo_buf *scratch)
{
    if (raw.len < 2 || raw.p[0] != '"')
        return false;
    scratch->len = 0;
    if (leo_json_string_decode(raw, scratch) != 0)
        return false;
    return scratch->len == strlen(lit) && memcmp(scratch->p, lit, scratch->len) == 0;
}

/* The last value of member `key` of the object raw (jansson keeps the last of a repeated key), or {NULL, 0}. */
struct member_find {
    const char *key;
    struct leo_str value;
    const char *base;
};

static int find_last(const struct leo_json_member *m, void *ud)
{
    struct member_find *f = ud;
    if (leo_json_key_is(m->key, f->key))
        f->value = (struct leo_str){f->base + m->value_start, m->value_end - m->value_start};
    return 0;
}

static struct leo_str member(struct leo_str obj, const char *key)
{
    struct member_find f = {key, {NULL, 0}, obj.p};
    if (obj.len == 0 || obj.p[0] != '{' || leo_json_scan_object(obj.p, obj.len, find_last, &f, NULL) != 0)
        return (struct leo_str){NULL, 0};
    return f.value;
}

struct raw_count {
    uint64_t text, images, messages;
    struct leo_buf scratch;
};

static int count_part(struct leo_str part, void *ud)
{
    struct raw_count *c = ud;
    if (raw_string_is(member(part, "type"), "image_url", &c->scratch)) {
        c->images++;
        return 0;
    }
    c->text += raw_string_chars(member(part, "text"), &c->scratch);
    return 0;
}

static int count_call(struct leo_str call, void *ud)
{
    struct raw_count *c = ud;
    struct leo_str fn = member(call, "function");
    c->text += raw_string_chars(member(fn, "name"), &c->scratch);
    c->text += raw_string_chars(member(fn, "arguments"), &c->scratch);
    return 0;
}

static int count_message(struct leo_str m, void *ud)
{
    struct raw_count *c = ud;
    c->messages++;
    struct leo_str content = member(m, "content");
    if (content.len && content.p[0] == '"')
        c->text += raw_string_chars(content, &c->scratch);
    else if (content.len && content.p[0] == '[')
        leo_json_scan_array(content.p, content.len, count_part, c);
    struct leo_str calls = member(m, "tool_calls");
    if (calls.len && calls.p[0] == '[')
        leo_json_scan_array(calls.p, calls.len, count_call, c);
    return 0;
}

/* Characters jansson's compact dump of a number token has: integers as %lld, reals as %.17g with the exponent's
 * '+' and leading zeros dropped and ".0" added when neither '.' nor 'e' shows (jansson's dtostr). */
static uint64_t number_chars(const char *p, size_t n)
{
    char t[512], out[64];
    if (n >= sizeof(t))
        return n;
    memcpy(t, p, n);
    t[n] = '\0';
    if (strpbrk(t, ".eE") == NULL)
        return (uint64_t)snprintf(out, sizeof(out), "%lld", strtoll(t, NULL, 10));
    int len = snprintf(out, sizeof(out), "%.17g", strtod(t, NULL));
    uint64_t k = (uint64_t)len;
    char *e = strchr(out, 'e');
    if (e != NULL) {
        char *d = e + 1;
        if (*d == '+')
            k--, d++;
        else if (*d == '-')
            d++;
        while (*d == '0' && d[1] != '\0')
            k--, d++;
    } else if (strchr(out, '.') == NULL) {
        k += 2;
    }
    return k;
}

/* Characters of jansson's compact dump of the JSON value raw, counted without writing it: strings decoded and
 * escaped as jansson escapes them ('"', '\\', \b \f \n \r \t, other control characters as \u00XX), numbers as
 * it prints them. */
static uint64_t dump_chars(struct leo_str raw, struct leo_buf *scratch)
{
    uint64_t n = 0;
    for (size_t i = 0; i < raw.len;) {
        char c = raw.p[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            i++;
        } else if (c == '"') {
            size_t e = i + 1;
            while (e < raw.len && raw.p[e] != '"')
                e += raw.p[e] == '\\' ? 2 : 1;
            e++;
            scratch->len = 0;
            if (leo_json_string_decode((struct leo_str){raw.p + i, e - i}, scratch) == 0) {
                n += 2;
                for (size_t k = 0; k < scratch->len; k++) {
                    unsigned char b = (unsigned char)scratch->p[k];
                    if (b == '"' || b == '\\' || b == '\b' || b == '\f' || b == '\n' || b == '\r' || b == '\t')
                        n += 2;
                    else if (b < 0x20)
                        n += 6;
                    else
                        n += (b & 0xC0) != 0x80;
                }
            }
            i = e;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t e = i;
            while (e < raw.len && strchr("+-.eE0123456789", raw.p[e]) != NULL)
                e++;
            n += number_chars(raw.p + i, e - i);
            i = e;
        } else {
            n++; /* punctuation, or a byte of true/false/null */
            i++;
        }
    }
    return n;
}

uint64_t leo_estimate_tokens_raw(struct leo_str messages, struct leo_str tools)
{
    struct raw_count c = {0, 0, 0, LEO_BUF_INIT};
    if (messages.len && messages.p[0] == '[')
        leo_json_scan_array(messages.p, messages.len, count_message, &c);
    if (tools.len && tools.p[0] == '[') {
        size_t i = 1;
        while (i < tools.len && (tools.p[i] == ' ' || tools.p[i] == '\t' || tools.p[i] == '\n' || tools.p[i] == '\r'))
            i++;
        if (tools.p[i] != ']')
            c.text += dump_chars(tools, &c.scratch);
    }
    leo_buf_release(&c.scratch);
    return (c.text + 3) / 4 + c.messages * PER_MESSAGE + REPLY_PRIMING + c.images * PER_IMAGE;
}
