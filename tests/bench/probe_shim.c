/*
 * probe_shim.c — times the gateway's request path, for tests/bench/latency_probe.sh. A benchmark tool.
 *
 * Loaded with LD_PRELOAD into a gateway built with -DLEO_PROBES=ON. It defines leo_probe(), which the probe
 * points of common/probe.h call, and wraps the system calls the request path makes (read, write, send, recv,
 * poll, epoll_wait and their variants) so that entering and leaving each is a point too ("<poll" is leaving
 * poll; a write to descriptor 2, the log, is "write_log"). For every pair of successive points of the main
 * thread it keeps a histogram of the time between them (100 ns buckets up to 500 us), and every 2^18 points it
 * writes "FROM TO COUNT P50_NS" lines to $LEO_PROBE_OUT/probe.PID.txt (the worker's exit does not run
 * destructors, so the file is rewritten as it goes). Each point costs two clock reads and a few stores, about
 * 0.1 us, which is included in the segment it ends.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_POINTS 64
#define BUCKET_NS 100
#define BUCKETS 5000

static const char *point_name[MAX_POINTS];
static uint32_t *hist[MAX_POINTS][MAX_POINTS]; /* allocated on a pair's first use */
static uint64_t pair_count[MAX_POINTS][MAX_POINTS];
static int prev_point = -1;
static uint64_t prev_ns, points;
static __thread int thread_state; /* 0 unknown, 1 the process's main thread, 2 another thread */

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int point_index(const char *name)
{
    for (int i = 0; i < MAX_POINTS; i++) {
        if (point_name[i] == NULL) {
            point_name[i] = name;
            return i;
        }
        if (point_name[i] == name || strcmp(point_name[i], name) == 0)
            return i;
    }
    return MAX_POINTS - 1;
}

static void dump(void)
{
    const char *dir = getenv("LEO_PROBE_OUT");
    char path[512], tmp[520];
    snprintf(path, sizeof(path), "%s/probe.%d.txt", dir ? dir : "/tmp", (int)getpid());
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    for (int a = 0; a < MAX_POINTS; a++)
        for (int b = 0; b < MAX_POINTS; b++) {
            if (hist[a][b] == NULL)
                continue;
            uint64_t half = pair_count[a][b] / 2, seen = 0;
            int i = 0;
            for (; i < BUCKETS - 1; i++) {
                seen += hist[a][b][i];
                if (seen > half)
                    break;
            }
            fprintf(f, "%s %s %llu %d\n", point_name[a], point_name[b], (unsigned long long)pair_count[a][b],
                    i * BUCKET_NS + BUCKET_NS / 2);
        }
    fclose(f);
    rename(tmp, path);
}

void leo_probe(const char *name)
{
    if (thread_state == 0)
        thread_state = syscall(SYS_gettid) == getpid() ? 1 : 2;
    if (thread_state != 1)
        return;
    uint64_t t = now_ns();
    int k = point_index(name);
    if (prev_point >= 0) {
        uint32_t **h = &hist[prev_point][k];
        if (*h == NULL)
            *h = calloc(BUCKETS, sizeof(**h));
        uint64_t bucket = (t - prev_ns) / BUCKET_NS;
        if (*h != NULL)
            (*h)[bucket < BUCKETS ? bucket : BUCKETS - 1]++;
        pair_count[prev_point][k]++;
    }
    prev_point = k;
    if ((++points & ((1u << 18) - 1)) == 0)
        dump();
    prev_ns = now_ns(); /* the bookkeeping above is not part of the next segment */
}

#define WRAP(ret, name, params, args, enter, leave)                                                                    \
    ret name params                                                                                                    \
    {                                                                                                                  \
        static ret(*real) params;                                                                                      \
        if (real == NULL)                                                                                              \
            real = (ret(*) params)dlsym(RTLD_NEXT, #name);                                                             \
        leo_probe(enter);                                                                                              \
        ret r = real args;                                                                                             \
        leo_probe(leave);                                                                                              \
        return r;                                                                                                      \
    }

WRAP(int, poll, (struct pollfd * f, nfds_t n, int t), (f, n, t), ">poll", "<poll")
WRAP(int, epoll_wait, (int e, struct epoll_event *ev, int m, int t), (e, ev, m, t), ">epoll_wait", "<epoll_wait")
WRAP(int, epoll_pwait, (int e, struct epoll_event *ev, int m, int t, const sigset_t *s), (e, ev, m, t, s),
     ">epoll_wait", "<epoll_wait")
WRAP(ssize_t, read, (int fd, void *b, size_t n), (fd, b, n), ">read", "<read")
WRAP(ssize_t, readv, (int fd, const struct iovec *v, int n), (fd, v, n), ">read", "<read")
WRAP(ssize_t, send, (int fd, const void *b, size_t n, int fl), (fd, b, n, fl), ">send", "<send")
WRAP(ssize_t, sendto, (int fd, const void *b, size_t n, int fl, const struct sockaddr *a, socklen_t l),
     (fd, b, n, fl, a, l), ">send", "<send")
WRAP(ssize_t, recv, (int fd, void *b, size_t n, int fl), (fd, b, n, fl), ">recv", "<recv")
WRAP(ssize_t, recvfrom, (int fd, void *b, size_t n, int fl, struct sockaddr *a, socklen_t *l), (fd, b, n, fl, a, l),
     ">recv", "<recv")
WRAP(ssize_t, write, (int fd, const void *b, size_t n), (fd, b, n), fd == 2 ? ">write_log" : ">write",
     fd == 2 ? "<write_log" : "<write")
WRAP(ssize_t, writev, (int fd, const struct iovec *v, int n), (fd, v, n), fd == 2 ? ">write_log" : ">write",
     fd == 2 ? "<write_log" : "<write")
