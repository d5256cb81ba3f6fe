#include "tokens.h"

#include <stdlib.h>
#include <string.h>

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
