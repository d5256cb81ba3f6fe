#include "mock_job.h"

#include <stdio.h>

#include "common/alloc.h"
#include "common/error.h"

/* content-type, cache-control, retry-after, retry-after-ms, then the format's own */
#define JOB_MAX_HEADERS (4 + MOCK_FORMAT_MAX_HEADERS)

enum job_state {
    JOB_WAIT_HEADERS, /* delay_headers_ms is running */
    JOB_PUMP,         /* chunked response started; writing events */
    JOB_DONE,         /* the response has been finished or the client is gone */
};

struct mock_job {
    uv_timer_t timer;
    struct leo_http_request *req; /* NULL once on_close has run */
    struct mock_answer a;
    enum job_state state;
    bool paused;                  /* waiting for on_drain */
    unsigned events_sent;
    /* stream source: steps of a->reply, rendered one step at a time */
    size_t step;
    struct mock_events ev;
    size_t ev_next;
    bool ev_cut;                  /* cut the connection after the last event of ev */
    bool cut_now;                 /* the cut step rendered no event: cut before the next one */
    bool malformed_pending;
    unsigned rendered;            /* events rendered from steps so far */
    /* body source: pieces of a->body */
    size_t body_off;
    size_t piece_len;
};

/* The Retry-After seconds sent with a fault's status: the given value, 1 by default for 429, else none (-1). */
static int retry_after_secs(const struct mock_fault *f)
{
    if (f->retry_after_s >= 0)
        return f->retry_after_s;
    return f->status == 429 ? 1 : -1;
}

static size_t build_headers(const struct mock_answer *a, struct leo_arena *arena, bool stream,
                            struct leo_http_header *h)
{
    size_t n = 0;
    const char *ctype = a->content_type;
    if (stream) {
        ctype = a->fmt->stream_content_type ? a->fmt->stream_content_type(a->reply->chat) : NULL;
        if (ctype == NULL)
            ctype = "text/event-stream";
    }
    h[n++] = (struct leo_http_header){LEO_STR_LIT("content-type"), leo_str_c(ctype)};
    if (stream)
        h[n++] = (struct leo_http_header){LEO_STR_LIT("cache-control"), LEO_STR_LIT("no-cache")};
    if (a->fault.status) {
        int secs = retry_after_secs(&a->fault);
        char tmp[24];
        if (secs >= 0) {
            int len = snprintf(tmp, sizeof(tmp), "%d", secs);
            h[n++] = (struct leo_http_header){LEO_STR_LIT("retry-after"),
                                              leo_arena_strdup_str(arena, leo_str_n(tmp, (size_t)len))};
        }
        if (a->fault.retry_after_ms >= 0) {
            int len = snprintf(tmp, sizeof(tmp), "%d", a->fault.retry_after_ms);
            h[n++] = (struct leo_http_header){LEO_STR_LIT("retry-after-ms"),
                                              leo_arena_strdup_str(arena, leo_str_n(tmp, (size_t)len))};
        }
    }
    if (a->fmt->response_headers != NULL)
        a->fmt->response_headers(a->seq, arena, h, &n);
    return n;
}

void mock_job_respond_error(struct leo_http_request *req, const struct mock_format *fmt, uint64_t seq, int status,
                            const char *message, const char *param)
{
    struct leo_buf body = LEO_BUF_INIT;
    fmt->render_error(status, message, param, -1, &body);
    struct mock_answer a = {
        .kind = MOCK_ANSWER_BODY, .fmt = fmt, .seq = seq, .status = status, .content_type = "application/json"};
    mock_fault_init(&a.fault);
    struct leo_http_header h[JOB_MAX_HEADERS];
    size_t n = build_headers(&a, &req->arena, false, h);
    leo_http_respond(req, status, h, n, body.p, body.len);
    leo_buf_release(&body);
}

/* ---- job lifecycle ------------------------------------------------------------------------------------ */

static void job_free(uv_handle_t *h)
{
    struct mock_job *job = h->data;
    leo_buf_release(&job->ev.data);
    leo_free(job);
}

static void (*abort_hook)(uint64_t seq, void *ud);
static void *abort_hook_ud;

void mock_job_set_abort_hook(void (*fn)(uint64_t seq, void *ud), void *ud)
{
    abort_hook = fn;
    abort_hook_ud = ud;
}

static void job_on_close(struct leo_http_request *req, bool aborted)
{
    struct mock_job *job = req->data;
    if (aborted && job->state != JOB_DONE && abort_hook)
        abort_hook(job->a.seq, abort_hook_ud);
    job->req = NULL;
    job->state = JOB_DONE;
    uv_timer_stop(&job->timer);
    uv_close((uv_handle_t *)&job->timer, job_free);
}

static void job_finish(struct mock_job *job, void (*fn)(struct leo_http_request *))
{
    job->state = JOB_DONE;
    fn(job->req); /* may run on_close synchronously; the job's memory outlives it until the timer closes */
}

/* ---- event sources ------------------------------------------------------------------------------------ */

/* The next stream event without consuming it; false at the end of the plan, or when the connection is to be
 * cut before any further event (then *cut is true). */
static bool stream_peek(struct mock_job *job, struct leo_str *out, bool *cut)
{
    const struct mock_reply *r = job->a.reply;
    *cut = false;
    while (job->ev_next == job->ev.n) {
        if (job->cut_now) {
            *cut = true;
            return false;
        }
        mock_events_reset(&job->ev);
        job->ev_next = 0;
        job->ev_cut = false;
        if (job->malformed_pending && job->rendered > 0) {
            /* the broken event goes right after the events of the first step that rendered any */
            job->malformed_pending = false;
            job->a.fmt->render_malformed_event(r, &job->ev);
            continue;
        }
        if (job->step == r->nsteps)
            return false;
        job->a.fmt->render_step(r, &r->steps[job->step], &job->ev);
        job->rendered += (unsigned)job->ev.n;
        if (job->a.fault.tool_then_reset && job->step == r->first_delta) {
            /* a format may render the first delta as no event of its own (Gemini sends a call whole at its
             * start): the cut then follows the events already sent */
            job->ev_cut = job->ev.n > 0;
            job->cut_now = job->ev.n == 0;
        }
        job->step++;
    }
    size_t start = job->ev_next ? job->ev.end[job->ev_next - 1] : 0;
    *out = leo_str_n(job->ev.data.p + start, job->ev.end[job->ev_next] - start);
    *cut = job->ev_cut && job->ev_next == job->ev.n - 1;
    return true;
}

static bool body_peek(struct mock_job *job, struct leo_str *out, bool *cut)
{
    *cut = false;
    size_t rest = job->a.body.len - job->body_off;
    if (rest == 0)
        return false;
    job->piece_len = rest < MOCK_TRICKLE_PIECE ? rest : MOCK_TRICKLE_PIECE;
    *out = leo_str_n(job->a.body.p + job->body_off, job->piece_len);
    return true;
}

static bool job_peek(struct mock_job *job, struct leo_str *out, bool *cut)
{
    return job->a.kind == MOCK_ANSWER_STREAM ? stream_peek(job, out, cut) : body_peek(job, out, cut);
}

static void job_advance(struct mock_job *job)
{
    if (job->a.kind == MOCK_ANSWER_STREAM)
        job->ev_next++;
    else
        job->body_off += job->piece_len;
}

/* Milliseconds to wait between two events. */
static uint64_t job_pace(const struct mock_job *job)
{
    const struct mock_fault *f = &job->a.fault;
    if (job->a.kind == MOCK_ANSWER_STREAM && f->delay_events_ms > 0)
        return (uint64_t)f->delay_events_ms;
    return f->trickle_ms > 0 ? (uint64_t)f->trickle_ms : 0;
}

/* ---- the pump ----------------------------------------------------------------------------------------- */

static void job_pump(struct mock_job *job);
static void job_begin(struct mock_job *job);

static void job_on_timer(uv_timer_t *t)
{
    struct mock_job *job = t->data;
    if (job->state == JOB_WAIT_HEADERS)
        job_begin(job);
    else if (job->state == JOB_PUMP && !job->paused)
        job_pump(job);
}

static void job_on_drain(struct leo_http_request *req)
{
    struct mock_job *job = req->data;
    if (job->state != JOB_PUMP || !job->paused)
        return;
    job->paused = false;
    uv_timer_start(&job->timer, job_on_timer, job_pace(job), 0);
}

/* Writes events until the answer ends, a fault cuts it, the pacing timer takes over, the client's queue is
 * full, or MOCK_JOB_BURST events have gone out in this loop turn. */
static void job_pump(struct mock_job *job)
{
    unsigned burst = MOCK_JOB_BURST;
    for (;;) {
        struct leo_str ev;
        bool cut;
        if (!job_peek(job, &ev, &cut)) {
            job_finish(job, cut ? leo_http_abort : leo_http_stream_end);
            return;
        }
        int rc = leo_http_stream_write(job->req, ev.p, ev.len);
        if (rc < 0 || job->req == NULL) {
            job->state = JOB_DONE; /* the client is gone: on_close has run or will */
            return;
        }
        job_advance(job);
        job->events_sent++;
        if (cut || (job->a.fault.reset_after_events >= 0 &&
                    job->events_sent == (unsigned)job->a.fault.reset_after_events)) {
            job_finish(job, leo_http_abort);
            return;
        }
        uint64_t pace = job_pace(job);
        /* with pacing, look ahead so that the last event is followed by the end at once, not after a pause */
        if (pace > 0 && !job_peek(job, &ev, &cut)) {
            job_finish(job, cut ? leo_http_abort : leo_http_stream_end);
            return;
        }
        if (rc == 1) {
            job->paused = true;
            return;
        }
        if (pace > 0 || --burst == 0) {
            uv_timer_start(&job->timer, job_on_timer, pace, 0);
            return;
        }
    }
}

static void job_begin(struct mock_job *job)
{
    struct leo_http_request *req = job->req;
    const struct mock_answer *a = &job->a;
    if (a->fault.reset_before_headers) {
        job_finish(job, leo_http_abort);
        return;
    }
    bool sse = a->kind == MOCK_ANSWER_STREAM;
    struct leo_http_header h[JOB_MAX_HEADERS];
    size_t n = build_headers(a, &req->arena, sse, h);
    if (!sse && a->fault.trickle_ms < 0 && a->fault.reset_after_events < 0) {
        job->state = JOB_DONE;
        leo_http_respond(req, a->status, h, n, a->body.p, a->body.len);
        return;
    }
    job->state = JOB_PUMP;
    leo_http_stream_start(req, sse ? 200 : a->status, h, n);
    if (job->req == NULL)
        return;
    if (a->fault.reset_after_events == 0) {
        job_finish(job, leo_http_abort);
        return;
    }
    job_pump(job);
}

void mock_job_answer(uv_loop_t *loop, struct leo_http_request *req, const struct mock_answer *in)
{
    struct mock_answer a = *in;
    if (a.fault.status) {
        char msg[64];
        snprintf(msg, sizeof(msg), "mock fault: injected status %d", a.fault.status);
        struct leo_buf b = LEO_BUF_INIT;
        a.fmt->render_error(a.fault.status, msg, NULL, retry_after_secs(&a.fault), &b);
        a.kind = MOCK_ANSWER_BODY;
        a.status = a.fault.status;
        a.content_type = "application/json";
        a.body = leo_arena_strdup_str(&req->arena, leo_buf_str(&b));
        leo_buf_release(&b);
    }
    if (a.fault.malformed && a.kind == MOCK_ANSWER_BODY)
        a.body.len /= 2; /* a JSON document cut in the middle is never valid JSON */

    if (a.kind == MOCK_ANSWER_BODY && a.fault.delay_headers_ms == 0 && !a.fault.reset_before_headers &&
        a.fault.trickle_ms < 0 && a.fault.reset_after_events < 0) {
        struct leo_http_header h[JOB_MAX_HEADERS];
        size_t n = build_headers(&a, &req->arena, false, h);
        leo_http_respond(req, a.status, h, n, a.body.p, a.body.len);
        return;
    }

    struct mock_job *job = leo_new(struct mock_job);
    job->req = req;
    job->a = a;
    job->ev.data = (struct leo_buf)LEO_BUF_INIT;
    job->malformed_pending = a.fault.malformed && a.kind == MOCK_ANSWER_STREAM;
    uv_timer_init(loop, &job->timer);
    job->timer.data = job;
    req->data = job;
    req->on_close = job_on_close;
    req->on_drain = job_on_drain;
    if (a.fault.delay_headers_ms > 0) {
        job->state = JOB_WAIT_HEADERS;
        uv_timer_start(&job->timer, job_on_timer, (uint64_t)a.fault.delay_headers_ms, 0);
        return;
    }
    job_begin(job);
}
