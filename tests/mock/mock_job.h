/*
 * mock_job.h — delivering one answer of the mock provider, with the faults chosen for it.
 *
 * An answer is either a whole body (status, content type, bytes) or a stream (a struct mock_reply whose steps
 * the answer's format renders event by event). mock_job_answer() applies the fault spec: it may wait before
 * the headers, replace the answer with an error status, cut the body in half (malformed), send a body in
 * 16-byte chunks (trickle), pace stream events, or cut the connection after some events. A plain answer
 * without faults is sent at once; anything else becomes a job driven by one libuv timer on the request.
 *
 * Lifetime: a job lives from mock_job_answer() until the request's on_close, which stops its timer; its
 * memory is freed in the timer's close callback. Everything the answer points to (body, reply) must live in
 * the request's arena or longer. The job never touches the request after on_close, and nothing it does
 * blocks the loop: a stream with no pacing yields to the loop every MOCK_JOB_BURST events and pauses when
 * the client stops reading (leo_http_stream_write returning 1) until on_drain.
 */
#ifndef MOCK_JOB_H
#define MOCK_JOB_H

#include <stdint.h>
#include <uv.h>

#include "common/http_server.h"
#include "common/str.h"
#include "mock_chat.h"
#include "mock_faults.h"
#include "mock_format.h"

/** Size of the pieces of a trickled (or cut) non-streamed body. */
#define MOCK_TRICKLE_PIECE 16
/** Events written in one loop turn before the job yields. */
#define MOCK_JOB_BURST 64

enum mock_answer_kind {
    MOCK_ANSWER_BODY,
    MOCK_ANSWER_STREAM,
};

struct mock_answer {
    enum mock_answer_kind kind;
    const struct mock_format *fmt;  /* error bodies and per-response headers */
    uint64_t seq;                   /* the request's sequence number */
    int status;                     /* BODY */
    const char *content_type;       /* BODY */
    struct leo_str body;            /* BODY */
    const struct mock_reply *reply; /* STREAM */
    struct mock_fault fault;
};

/** Sends a, applying a->fault. Takes over req->data, req->on_close and req->on_drain when it needs a job. */
void mock_job_answer(uv_loop_t *loop, struct leo_http_request *req, const struct mock_answer *a);

/** Called with the request's sequence number when a client goes away before its answer was complete (a
 *  cancelled transfer): the request log marks the entry. One hook per process; NULL removes it. */
void mock_job_set_abort_hook(void (*fn)(uint64_t seq, void *ud), void *ud);

/** Answers at once with fmt's error body for status (no faults). */
void mock_job_respond_error(struct leo_http_request *req, const struct mock_format *fmt, uint64_t seq, int status,
                            const char *message, const char *param);

#endif
