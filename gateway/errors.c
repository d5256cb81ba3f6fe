#include "errors.h"
#include "providers/messages.h"

#include <string.h>

/* status → OpenAI error type; the first matching row wins, 0 ends the table */
static const struct {
    int status;
    const char *type;
} error_types[] = {
    {400, "invalid_request_error"}, {401, "authentication_error"}, {403, "permission_error"},
    {404, "not_found_error"},       {405, "invalid_request_error"}, {408, "timeout_error"},
    {409, "conflict_error"},        {413, "invalid_request_error"}, {415, "invalid_request_error"},
    {422, "invalid_request_error"}, {429, "rate_limit_error"},     {431, "invalid_request_error"},
    {502, "upstream_error"},        {503, "service_unavailable"},  {504, "timeout_error"},
    {0, NULL},
};

const char *leo_openai_error_type(int status)
{
    for (size_t i = 0; error_types[i].status; i++)
        if (error_types[i].status == status)
            return error_types[i].type;
    return status >= 500 ? "server_error" : "invalid_request_error";
}

static void add_nullable(struct leo_buf *out, const char *s)
{
    if (s == NULL) {
        leo_buf_adds(out, "null");
        return;
    }
    leo_buf_addch(out, '"');
    leo_buf_add_json_escaped(out, s, strlen(s));
    leo_buf_addch(out, '"');
}

void leo_openai_error_json(struct leo_buf *out, const char *message, const char *type, const char *param,
                           const char *code)
{
    leo_buf_adds(out, "{\"error\":{\"message\":");
    add_nullable(out, message);
    leo_buf_adds(out, ",\"type\":");
    add_nullable(out, type);
    leo_buf_adds(out, ",\"param\":");
    add_nullable(out, param);
    leo_buf_adds(out, ",\"code\":");
    add_nullable(out, code);
    leo_buf_adds(out, "}}");
}

/* ---- the Anthropic dialect (declared in providers/messages.h) ---- */

static const struct {
    int status;
    const char *type;
} anthropic_types[] = {
    {400, "invalid_request_error"}, {401, "authentication_error"}, {403, "permission_error"},
    {404, "not_found_error"},       {405, "invalid_request_error"}, {408, "timeout_error"},
    {413, "request_too_large"},     {429, "rate_limit_error"},      {431, "request_too_large"},
    {500, "api_error"},             {502, "api_error"},             {503, "overloaded_error"},
    {504, "timeout_error"},         {529, "overloaded_error"},      {0, NULL},
};

const char *leo_anthropic_error_type(int status)
{
    for (size_t i = 0; anthropic_types[i].status; i++)
        if (anthropic_types[i].status == status)
            return anthropic_types[i].type;
    return status >= 500 ? "api_error" : "invalid_request_error";
}

void leo_anthropic_error_json(struct leo_buf *out, const char *type, const char *message)
{
    leo_buf_adds(out, "{\"type\":\"error\",\"error\":{\"type\":");
    add_nullable(out, type);
    leo_buf_adds(out, ",\"message\":");
    add_nullable(out, message);
    leo_buf_adds(out, "}}");
}
