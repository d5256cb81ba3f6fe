/*
 * redis_harness.h — a private redis-server for tests.
 *
 * redis_server_start runs /usr/bin/redis-server (or $LEO_REDIS_SERVER) in a fresh directory under /tmp,
 * listening on 127.0.0.1 at a free port and on a unix socket in that directory, with persistence off
 * (--save '' --appendonly no) and DEBUG allowed from local clients. It returns once the server answers PING
 * on both the socket and the port (at most 10 s). The child gets SIGKILL if the test process dies, so an
 * aborted test leaves no server behind.
 *
 * redis_server_kill ends it abruptly (SIGKILL: a crash as clients see it); redis_server_restart starts it
 * again on the same port, socket and options; redis_server_stop ends it (SIGTERM) and removes the directory.
 * A server that cannot be started aborts the test with its log on stderr.
 *
 * Waiting for the server to come up polls PING every 5 ms: a starting process offers no event to wait on.
 *
 * struct redis_loop is the fixture of the cases that drive the asynchronous client (common/redis.c) and the
 * modules built on it: one libuv loop per case, run in the main thread, and a guard timer that bounds every
 * wait (REDIS_LOOP_RUN_UNTIL fails the case when its condition does not hold in time; nothing sleeps).
 * redis_loop_connect opens a client and waits until it is connected, redis_loop_close_client closes one and
 * waits for its close callback, and redis_loop_done closes the loop, failing when a handle is still open (the
 * ASan build turns that into a leak check).
 */
#ifndef LEO_TEST_REDIS_HARNESS_H
#define LEO_TEST_REDIS_HARNESS_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/redis.h"
#include "test.h"

#define REDIS_HARNESS_MAX_EXTRA 8

struct redis_server {
    pid_t pid; /* 0 when not running */
    int port;
    char dir[64];
    char sock[128];
    char log[128];
    const char *extra[REDIS_HARNESS_MAX_EXTRA + 1]; /* further arguments, NULL-terminated */
    const char *password;                           /* for the readiness PING; NULL when none */
};

/* A TCP port on 127.0.0.1 that nothing listens on at the moment of the call. */
static inline int redis_harness_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static inline void redis_harness_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline uint64_t redis_harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline void redis_harness_dump_log(const struct redis_server *s)
{
    FILE *f = fopen(s->log, "r");
    if (!f)
        return;
    char line[512];
    fprintf(stderr, "--- %s ---\n", s->log);
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fclose(f);
}

/* True when the server answers PING (any reply: an unauthenticated client gets NOAUTH, which still proves
 * the server is up) on c. Frees c. */
static inline bool redis_harness_ping(redisContext *c, const char *password)
{
    bool ok = false;
    if (c && !c->err) {
        redisReply *rep = password ? redisCommand(c, "AUTH %s", password) : NULL;
        if (rep)
            freeReplyObject(rep);
        rep = redisCommand(c, "PING");
        ok = rep != NULL;
        if (rep)
            freeReplyObject(rep);
    }
    if (c)
        redisFree(c);
    return ok;
}

static inline bool redis_harness_spawn(struct redis_server *s)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", s->port);
    const char *bin = getenv("LEO_REDIS_SERVER") ? getenv("LEO_REDIS_SERVER") : "/usr/bin/redis-server";
    /* clang-format off */
    const char *argv[64] = {
        bin,
        "--port", port,
        "--bind", "127.0.0.1",
        "--unixsocket", s->sock,
        "--unixsocketperm", "700",
        "--save", "",
        "--appendonly", "no",
        "--dir", s->dir,
        "--logfile", s->log,
        "--daemonize", "no",
        "--enable-debug-command", "local",
    };
    /* clang-format on */
    int argc = 0;
    while (argv[argc])
        argc++;
    for (int i = 0; s->extra[i]; i++)
        argv[argc++] = s->extra[i];
    argv[argc] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "redis harness: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    s->pid = pid;

    uint64_t deadline = redis_harness_now_ms() + 10000;
    while (redis_harness_now_ms() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            s->pid = 0;
            return false;
        }
        struct timeval tv = {0, 200000};
        if (redis_harness_ping(redisConnectUnixWithTimeout(s->sock, tv), s->password) &&
            redis_harness_ping(redisConnectWithTimeout("127.0.0.1", s->port, tv), s->password))
            return true;
        redis_harness_sleep_ms(5);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    s->pid = 0;
    return false;
}

/* Starts a server; extra is a NULL-terminated list of further arguments (or NULL), e.g.
 * {"--requirepass", "pw", NULL}; password is what the readiness check authenticates with. Aborts on failure. */
static inline void redis_server_start(struct redis_server *s, const char *const *extra, const char *password)
{
    memset(s, 0, sizeof(*s));
    int n = 0;
    for (; extra && extra[n]; n++) {
        if (n == REDIS_HARNESS_MAX_EXTRA) {
            fprintf(stderr, "redis harness: too many extra arguments\n");
            abort();
        }
        s->extra[n] = extra[n];
    }
    s->extra[n] = NULL;
    s->password = password;
    snprintf(s->dir, sizeof(s->dir), "/tmp/leo-redis-XXXXXX");
    if (mkdtemp(s->dir) == NULL) {
        fprintf(stderr, "redis harness: mkdtemp: %s\n", strerror(errno));
        abort();
    }
    snprintf(s->sock, sizeof(s->sock), "%s/redis.sock", s->dir);
    snprintf(s->log, sizeof(s->log), "%s/redis.log", s->dir);
    /* The free port can be taken by someone else before the server binds it: try a few. */
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = redis_harness_free_port();
        if (s->port > 0 && redis_harness_spawn(s))
            return;
    }
    fprintf(stderr, "redis harness: redis-server did not start\n");
    redis_harness_dump_log(s);
    abort();
}

/* Ends the server with SIGKILL and reaps it; the socket file stays, as after a crash. */
static inline void redis_server_kill(struct redis_server *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

/* Starts the server again on the same port, socket and options. Aborts on failure. */
static inline void redis_server_restart(struct redis_server *s)
{
    redis_server_kill(s);
    unlink(s->sock);
    if (!redis_harness_spawn(s)) {
        fprintf(stderr, "redis harness: redis-server did not restart on port %d\n", s->port);
        redis_harness_dump_log(s);
        abort();
    }
}

/* Stops the server (SIGTERM, SIGKILL after 5 s) and removes its directory. */
static inline void redis_server_stop(struct redis_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        uint64_t deadline = redis_harness_now_ms() + 5000;
        while (waitpid(s->pid, NULL, WNOHANG) == 0) {
            if (redis_harness_now_ms() >= deadline) {
                kill(s->pid, SIGKILL);
                waitpid(s->pid, NULL, 0);
                break;
            }
            redis_harness_sleep_ms(5);
        }
        s->pid = 0;
    }
    DIR *d = opendir(s->dir);
    if (d) {
        char path[512];
        for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", s->dir, e->d_name);
            unlink(path);
        }
        closedir(d);
        rmdir(s->dir);
    }
}

/* Runs one command on a fresh blocking connection (AUTH and SELECT first when given) and returns the reply
 * (free it with freeReplyObject), or NULL. For checking what the module wrote, independently of it. */
static inline redisReply *redis_harness_query(const struct redis_server *s, const char *password, int db,
                                              const char *fmt, const char *arg)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (c == NULL || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisReply *rep = password ? redisCommand(c, "AUTH %s", password) : NULL;
    if (rep)
        freeReplyObject(rep);
    rep = db ? redisCommand(c, "SELECT %d", db) : NULL;
    if (rep)
        freeReplyObject(rep);
    rep = redisCommand(c, fmt, arg);
    redisFree(c);
    return rep;
}

/* ---- the libuv loop fixture ---------------------------------------------------------------------------- */

struct redis_loop {
    uv_loop_t loop;
    uv_timer_t guard; /* started by each bounded wait, stopped when it ends */
    bool guard_fired;
};

static inline void redis_loop__on_guard(uv_timer_t *t)
{
    ((struct redis_loop *)t->data)->guard_fired = true;
}

static inline void redis_loop__on_closed(void *ud)
{
    (*(int *)ud)++;
}

/* Initialises the loop and its guard timer. */
static inline void redis_loop_init(struct redis_loop *l)
{
    ASSERT_EQ(uv_loop_init(&l->loop), 0);
    uv_timer_init(&l->loop, &l->guard);
    l->guard.data = l;
    l->guard_fired = false;
}

/* Closes the guard, runs the loop until nothing is left to do and closes it; fails when a handle is open. */
static inline void redis_loop_done(struct redis_loop *l)
{
    uv_close((uv_handle_t *)&l->guard, NULL);
    uv_run(&l->loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&l->loop), 0);
}

/* Runs the loop of l until cond holds; fails the case after ms milliseconds. */
#define REDIS_LOOP_RUN_UNTIL(l, cond, ms)                                                                              \
    do {                                                                                                               \
        (l)->guard_fired = false;                                                                                      \
        uv_timer_start(&(l)->guard, redis_loop__on_guard, (ms), 0);                                                    \
        while (!(cond) && !(l)->guard_fired)                                                                           \
            uv_run(&(l)->loop, UV_RUN_ONCE);                                                                           \
        uv_timer_stop(&(l)->guard);                                                                                    \
        if (!(cond))                                                                                                   \
            TEST_FAIL_("no \"%s\" within %d ms", #cond, (int)(ms));                                                    \
    } while (0)

/* Runs the loop for ms milliseconds, for asserting that something does NOT happen. */
static inline void redis_loop_run_for(struct redis_loop *l, uint64_t ms)
{
    l->guard_fired = false;
    uv_timer_start(&l->guard, redis_loop__on_guard, ms, 0);
    while (!l->guard_fired)
        uv_run(&l->loop, UV_RUN_ONCE);
}

/* "redis://127.0.0.1:<port>" of the server, in url (n bytes). */
static inline void redis_server_url(const struct redis_server *s, char *url, size_t n)
{
    snprintf(url, n, "redis://127.0.0.1:%d", s->port);
}

/* A client on the loop with options o (not connected yet); fails the case when leo_redis_new refuses them. */
static inline struct leo_redis *redis_loop_open(struct redis_loop *l, const struct leo_redis_opts *o)
{
    struct leo_buf err = LEO_BUF_INIT;
    struct leo_redis *r = NULL;
    int rc = leo_redis_new(&l->loop, o, &r, &err);
    if (rc != 0)
        TEST_FAIL_("leo_redis_new(%s): %s: %s", o->url, leo_strerror(rc), err.p);
    leo_buf_release(&err);
    return r;
}

/* A client on the loop with options o, once it is connected (at most 5 s). */
static inline struct leo_redis *redis_loop_connect(struct redis_loop *l, const struct leo_redis_opts *o)
{
    struct leo_redis *r = redis_loop_open(l, o);
    REDIS_LOOP_RUN_UNTIL(l, leo_redis_connected(r), 5000);
    return r;
}

/* Closes a client and runs the loop until its close callback has run (at most 5 s). */
static inline void redis_loop_close_client(struct redis_loop *l, struct leo_redis *r)
{
    int closed = 0;
    leo_redis_close(r, redis_loop__on_closed, &closed);
    REDIS_LOOP_RUN_UNTIL(l, closed == 1, 5000);
}

#endif
