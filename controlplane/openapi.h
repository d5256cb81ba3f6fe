/*
 * openapi.h — the OpenAPI 3 document of the admin API, compiled into leo-controlplane.
 *
 * controlplane/openapi.json is the source; controlplane/embed_openapi.cmake turns it into a byte array at build
 * time (the build fails when it is not JSON), and api.c serves it as GET /admin/v1/openapi.json.
 * tests/integration/openapi.test.mjs keeps it true: its operations must be exactly the rows of the route table
 * in api.c, with the same permissions.
 */
#ifndef LEO_CP_OPENAPI_H
#define LEO_CP_OPENAPI_H

#include <stddef.h>

/** The document's bytes, as in controlplane/openapi.json, followed by a NUL. Static storage. */
extern const char *const leo_openapi_json;
/** Its length in bytes, without the NUL. */
extern const size_t leo_openapi_json_len;

#endif
