/*
 * mock_provider.c — leo-mock-provider: a deterministic stand-in for LLM providers, used by the gateway's
 * integration tests and benchmarks. Built on the project's own HTTP server core (common/http_server.h).
 *
 * Usage: leo-mock-provider [--listen HOST:PORT] [--log-size N]
 * Prints "mock provider listening on HOST:PORT" on stdout once it accepts connections; SIGTERM or SIGINT
 * close it cleanly with exit status 0. Behaviour is documented in docs/mock.md.
 *
 * Routes are a table: each names its wire format (mock_format.h): OpenAI, Anthropic Messages and Gemini. A
 * route path may hold one '*' standing for a non-empty run of bytes without ':' (Gemini's model name). Every
 * request outside /_mock/ is numbered (seq, from 1), recorded in the request log, and answered through
 * mock_job.c with the faults chosen by the x-mock-fault header or, for chat routes, by a [[mock:<spec>]]
 * marker in the last user message (the header wins when both are present). A request the mock refuses (bad
 * JSON, missing fields, an unknown fault item) is answered at once, without faults, in its format's shape.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/error.h"
#include "common/http_server.h"
#include "mock_anthropic.h"
#include "mock_chat.h"
#include "mock_faults.h"
#include "mock_format.h"
#include "mock_gemini.h"
#include "mock_job.h"
#include "mock_openai.h"
#include "mock_reqlog.h"

#define DEFAULT_HOST "127.0.0.1"
#define DEFAULT_PORT 9100

enum route_kind {
    ROUTE_CHAT, /* a chat request in the route's format; may stream */
    ROUTE_JSON, /* a plain JSON request answered by fn */
};

static const struct mock_route {
    const char *method;
    const char *path;
    enum route_kind kind;
    const struct mock_format *fmt;
    mock_json_route_fn fn;
} routes[] = {
    {"POST", "/v1/chat/completions", ROUTE_CHAT, &mock_openai_format, NULL},
    {"GET", "/v1/models", ROUTE_JSON, &mock_openai_format, mock_openai_models},
    {"POST", "/v1/embeddings", ROUTE_JSON, &mock_openai_format, mock_openai_embeddings},
    {"POST", "/v1/messages", ROUTE_CHAT, &mock_anthropic_format, NULL},
    {"POST", "/v1/messages/count_tokens", ROUTE_JSON, &mock_anthropic_format, mock_anthropic_count_tokens},
    {"POST", "/v1beta/models/*:generateContent", ROUTE_CHAT, &mock_gemini_format, NULL},
    {"POST", "/v1beta/models/*:streamGenerateContent", ROUTE_CHAT, &mock_gemini_format, NULL},
    {"POST", "/v1beta/models/*:embedContent", ROUTE_JSON, &mock_gemini_format, mock_gemini_embed_content},
    {"POST", "/v1beta/models/*:batchEmbedContents", ROUTE_JSON, &mock_gemini_format, mock_gemini_batch_embed},
    {"POST", "/v1beta/models/*:countTokens", ROUTE_JSON, &mock_gemini_format, mock_gemini_count_tokens},
    {"POST", "/v1/models/*:generateContent", ROUTE_CHAT, &mock_gemini_format, NULL},
    {"POST", "/v1/models/*:streamGenerateContent", ROUTE_CHAT, &mock_gemini_format, NULL},
    {"POST", "/v1/models/*:embedContent", ROUTE_JSON, &mock_gemini_format, mock_gemini_embed_content},
    {"POST", "/v1/models/*:batchEmbedContents", ROUTE_JSON, &mock_gemini_format, mock_gemini_batch_embed},
    {"POST", "/v1/models/*:countTokens", ROUTE_JSON, &mock_gemini_format, mock_gemini_count_tokens},
};

/* The format of the errors for a path no route matches: the family its prefix belongs to. */
static const struct {
    const char *prefix;
    const struct mock_format *fmt;
} fallback_formats[] = {
    {"/v1beta/", &mock_gemini_format},
    {"/v1/models/", &mock_gemini_format},
    {"/v1/messages", &mock_anthropic_format},
};

struct mock_ctx {
    uv_loop_t *loop;
    struct leo_http_server *srv;
    struct mock_reqlog *log;
    uint64_t seq;
    uv_signal_t sig_term, sig_int;
    bool closing;
};

/* ---- /_mock/ control routes --------------------------------------------------------------------------- */

static void respond_json(struct leo_http_request *req, int status, const char *body, size_t len)
{
    const struct leo_http_header h[] = {{LEO_STR_LIT("content-type"), LEO_STR_LIT("application/json")}};
    leo_http_respond(req, status, h, 1, body, len);
}

static void handle_control(struct mock_ctx *ctx, struct leo_http_request *req)
{
    struct leo_buf out = LEO_BUF_INIT;
    if (leo_str_eqc(req->path, "/_mock/requests") && leo_str_eqc(req->method, "GET")) {
        mock_reqlog_dump(ctx->log, &out);
        respond_json(req, 200, out.p, out.len);
    } else if (leo_str_eqc(req->path, "/_mock/requests") && leo_str_eqc(req->method, "DELETE")) {
        leo_buf_addf(&out, "{\"cleared\":%zu}", mock_reqlog_count(ctx->log));
        mock_reqlog_clear(ctx->log);
        respond_json(req, 200, out.p, out.len);
    } else {
        char msg[160];
        snprintf(msg, sizeof(msg), "no mock control route %.*s %.*s", (int)req->method.len, req->method.p,
                 (int)req->path.len, req->path.p);
        mock_job_respond_error(req, &mock_openai_format, 0, 404, msg, NULL);
    }
    leo_buf_release(&out);
}

/* ---- API routes --------------------------------------------------------------------------------------- */

/* path against a route pattern: literal bytes, and at most one '*' matching one or more bytes other than ':'. */
static bool path_matches(struct leo_str path, const char *pattern)
{
    const char *star = strchr(pattern, '*');
    if (star == NULL)
        return leo_str_eqc(path, pattern);
    size_t pre = (size_t)(star - pattern), post = strlen(star + 1);
    if (path.len < pre + post + 1 || memcmp(path.p, pattern, pre) != 0 ||
        memcmp(path.p + path.len - post, star + 1, post) != 0)
        return false;
    return memchr(path.p + pre, ':', path.len - pre - post) == NULL;
}

static const struct mock_format *fallback_format(struct leo_str path)
{
    for (size_t i = 0; i < sizeof(fallback_formats) / sizeof(fallback_formats[0]); i++)
        if (leo_str_startswith(path, fallback_formats[i].prefix))
            return fallback_formats[i].fmt;
    return &mock_openai_format;
}

static const struct mock_route *find_route(const struct leo_http_request *req, bool *path_known)
{
    *path_known = false;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (!path_matches(req->path, routes[i].path))
            continue;
        *path_known = true;
        if (leo_str_eqc(req->method, routes[i].method))
            return &routes[i];
    }
    return NULL;
}

/* Fault from the chat's marker, when the header did not choose one. Returns 0 or -1 with msg filled. */
static int marker_fault(const struct mock_chat *chat, struct mock_fault *fault, char *msg, size_t size)
{
    struct leo_str spec;
    int found = mock_fault_find_marker(chat->last_user, &spec);
    if (found < 0) {
        snprintf(msg, size, "unterminated [[mock: marker in the last user message");
        return -1;
    }
    if (found == 0)
        return 0;
    return mock_fault_parse(spec, fault, msg, size);
}

/* A client went away before its answer was complete: the request log says so. */
static void on_abort(uint64_t seq, void *ud)
{
    mock_reqlog_mark_aborted(ud, seq);
}

static void handle_api(struct mock_ctx *ctx, struct leo_http_request *req)
{
    uint64_t seq = ++ctx->seq;
    mock_reqlog_add(ctx->log, seq, req);

    bool path_known;
    const struct mock_route *rt = find_route(req, &path_known);
    char msg[256];
    if (rt == NULL) {
        snprintf(msg, sizeof(msg), path_known ? "method %.*s is not allowed on %.*s" : "no mock route for %.*s %.*s",
                 (int)req->method.len, req->method.p, (int)req->path.len, req->path.p);
        mock_job_respond_error(req, fallback_format(req->path), seq, path_known ? 405 : 404, msg, NULL);
        return;
    }

    struct mock_answer ans = {.fmt = rt->fmt, .seq = seq, .status = 200, .content_type = "application/json"};
    mock_fault_init(&ans.fault);
    const struct leo_http_header *fh = leo_http_header_find(req, "x-mock-fault");
    if (fh != NULL && mock_fault_parse(fh->value, &ans.fault, msg, sizeof(msg)) != 0) {
        mock_job_respond_error(req, rt->fmt, seq, 400, msg, NULL);
        return;
    }

    struct mock_error err;
    struct leo_buf out = LEO_BUF_INIT;
    if (rt->kind == ROUTE_JSON) {
        if (rt->fn(req, &out, &err) != 0) {
            mock_job_respond_error(req, rt->fmt, seq, err.status, err.message, err.param);
            return;
        }
        ans.kind = MOCK_ANSWER_BODY;
        ans.body = leo_arena_strdup_str(&req->arena, leo_buf_str(&out));
        leo_buf_release(&out);
        mock_job_answer(ctx->loop, req, &ans);
        return;
    }

    struct mock_chat *chat = leo_arena_zalloc(&req->arena, sizeof(*chat));
    if (rt->fmt->parse_chat(req, &req->arena, chat, &err) != 0) {
        mock_job_respond_error(req, rt->fmt, seq, err.status, err.message, err.param);
        return;
    }
    if (fh == NULL && marker_fault(chat, &ans.fault, msg, sizeof(msg)) != 0) {
        mock_job_respond_error(req, rt->fmt, seq, 400, msg, NULL);
        return;
    }
    chat->blocked = ans.fault.blocked;
    struct mock_reply *reply = leo_arena_zalloc(&req->arena, sizeof(*reply));
    mock_reply_build(chat, seq, (int64_t)time(NULL), &req->arena, reply);
    if (chat->stream) {
        ans.kind = MOCK_ANSWER_STREAM;
        ans.reply = reply;
    } else {
        rt->fmt->render_reply(reply, &out);
        ans.kind = MOCK_ANSWER_BODY;
        ans.body = leo_arena_strdup_str(&req->arena, leo_buf_str(&out));
        leo_buf_release(&out);
    }
    mock_job_answer(ctx->loop, req, &ans);
}

static void on_request(struct leo_http_request *req, void *ud)
{
    struct mock_ctx *ctx = ud;
    if (leo_str_startswith(req->path, "/_mock/"))
        handle_control(ctx, req);
    else
        handle_api(ctx, req);
}

static void on_error_body(int status, const char *message, struct leo_buf *body, const char **content_type,
                          void *ud)
{
    mock_openai_format.render_error(status, message, NULL, -1, body);
    *content_type = "application/json";
}

/* ---- process ------------------------------------------------------------------------------------------ */

static void on_signal(uv_signal_t *sig, int signum)
{
    struct mock_ctx *ctx = sig->data;
    if (ctx->closing)
        return;
    ctx->closing = true;
    uv_close((uv_handle_t *)&ctx->sig_term, NULL);
    uv_close((uv_handle_t *)&ctx->sig_int, NULL);
    leo_http_server_close(ctx->srv, NULL, NULL);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: leo-mock-provider [--listen HOST:PORT] [--log-size N]\n"
                 "  --listen HOST:PORT  address to listen on (default %s:%d; port 0 picks a free port)\n"
                 "  --log-size N        requests kept for GET /_mock/requests (default %d, 0 keeps none)\n",
            DEFAULT_HOST, DEFAULT_PORT, MOCK_REQLOG_DEFAULT_CAPACITY);
}

/* "HOST:PORT", "[v6]:PORT" or ":PORT"; host is written without brackets into host (size bytes). */
static int parse_listen(const char *s, char *host, size_t size, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        return -1;
    const char *h = s;
    size_t hlen = (size_t)(colon - s);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0) {
        h = DEFAULT_HOST;
        hlen = strlen(DEFAULT_HOST);
    }
    if (hlen >= size)
        return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || p < 0 || p > 65535)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)p;
    return 0;
}

int main(int argc, char **argv)
{
    char host[256] = DEFAULT_HOST;
    int port = DEFAULT_PORT;
    long log_size = MOCK_REQLOG_DEFAULT_CAPACITY;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            if (parse_listen(argv[++i], host, sizeof(host), &port) != 0) {
                fprintf(stderr, "leo-mock-provider: invalid --listen value \"%s\" (want HOST:PORT)\n", argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "--log-size") == 0 && i + 1 < argc) {
            char *end;
            log_size = strtol(argv[++i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || log_size < 0 || log_size > 1000000) {
                fprintf(stderr, "leo-mock-provider: invalid --log-size value \"%s\" (want 0..1000000)\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "leo-mock-provider: unknown argument \"%s\"\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    struct mock_ctx ctx = {.loop = uv_default_loop()};
    ctx.log = mock_reqlog_new((size_t)log_size);
    mock_job_set_abort_hook(on_abort, ctx.log);

    struct leo_http_server_opts opts = {
        .handler = on_request,
        .error_body = on_error_body,
        .ud = &ctx,
        .server_header = "leo-mock-provider",
    };
    leo_http_limits_default(&opts.limits);
    ctx.srv = leo_http_server_new(ctx.loop, &opts);
    int rc = leo_http_server_listen(ctx.srv, host, port, false);
    if (rc != 0) {
        fprintf(stderr, "leo-mock-provider: cannot listen on %s:%d: %s\n", host, port, leo_strerror(rc));
        leo_http_server_close(ctx.srv, NULL, NULL);
        uv_run(ctx.loop, UV_RUN_DEFAULT);
        mock_reqlog_free(ctx.log);
        return 1;
    }

    uv_signal_init(ctx.loop, &ctx.sig_term);
    uv_signal_init(ctx.loop, &ctx.sig_int);
    ctx.sig_term.data = ctx.sig_int.data = &ctx;
    uv_signal_start(&ctx.sig_term, on_signal, SIGTERM);
    uv_signal_start(&ctx.sig_int, on_signal, SIGINT);

    bool v6 = strchr(host, ':') != NULL;
    printf("mock provider listening on %s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "",
           leo_http_server_port(ctx.srv));
    fflush(stdout);

    uv_run(ctx.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(ctx.loop);
    mock_reqlog_free(ctx.log);
    if (rc != 0) {
        fprintf(stderr, "leo-mock-provider: handles left open at exit: %s\n", leo_strerror(rc));
        return 1;
    }
    return 0;
}
