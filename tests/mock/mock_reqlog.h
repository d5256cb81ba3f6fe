/*
 * mock_reqlog.h — the mock provider's log of received requests, for tests to assert what a client sent.
 *
 * A ring of the last `capacity` requests. Each entry is serialised when the request arrives, as
 *   {"seq":N,"method":"POST","url":"/v1/x?y","path":"/v1/x","headers":[["name","value"],...],"body":"..."}
 * with headers in received order and spelling. Bytes that are not valid UTF-8 become U+FFFD in "body" (and in
 * header values); such a body is also given exactly as "body_base64". A body longer than MOCK_REQLOG_MAX_BODY
 * is kept up to that size and the entry gets "body_truncated":true and "body_bytes":<full length>.
 * The log owns its memory; entries are freed when they fall out of the ring, on clear, and on free.
 */
#ifndef MOCK_REQLOG_H
#define MOCK_REQLOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/http_server.h"

#define MOCK_REQLOG_DEFAULT_CAPACITY 100
#define MOCK_REQLOG_MAX_BODY (1u << 20)

struct mock_reqlog;

/** Creates a log keeping the last capacity requests (0 keeps none). */
struct mock_reqlog *mock_reqlog_new(size_t capacity);
/** Frees the log and its entries. */
void mock_reqlog_free(struct mock_reqlog *log);
/** Records req (method, url, path, headers, body) under sequence number seq. */
void mock_reqlog_add(struct mock_reqlog *log, uint64_t seq, const struct leo_http_request *req);
/** Marks the entry of seq (if still held) as aborted: its client went away before the answer was complete.
 *  The entry then carries "aborted":true. */
void mock_reqlog_mark_aborted(struct mock_reqlog *log, uint64_t seq);
/** Appends the entries as a JSON array, oldest first. */
void mock_reqlog_dump(const struct mock_reqlog *log, struct leo_buf *out);
/** Drops every entry. */
void mock_reqlog_clear(struct mock_reqlog *log);
/** Number of entries held. */
size_t mock_reqlog_count(const struct mock_reqlog *log);

#endif
