/*
 * errors.h — client-facing errors in the OpenAI format.
 *
 * Every error the gateway itself produces on an OpenAI route is
 *   {"error":{"message":"...","type":"...","param":<string|null>,"code":<string|null>}}
 * with the status code from the table in errors.c. Messages are lowercase, say what failed first, carry the
 * offending value, and never a secret.
 */
#ifndef LEO_ERRORS_H
#define LEO_ERRORS_H

#include "../common/buf.h"

/** Appends the OpenAI-shaped error object to out. param and code may be NULL (JSON null). */
void leo_openai_error_json(struct leo_buf *out, const char *message, const char *type, const char *param,
                           const char *code);
/** The OpenAI error type that goes with an HTTP status ("invalid_request_error", "authentication_error",
 *  "permission_error", "not_found_error", "rate_limit_error", "server_error", ...). */
const char *leo_openai_error_type(int status);

#endif
