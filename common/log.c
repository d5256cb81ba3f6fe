#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

static enum leo_log_level min_level = LEO_LOG_INFO;
static char role_name[32] = "main";

/* Access-log lines held back until leo_log_flush (batching on), written in writes of at most PIPE_BUF bytes of
 * whole lines so that lines of several processes sharing one pipe never interleave. */
#define BATCH_WRITE 4096
static bool batching;
static char batch[BATCH_WRITE];
static size_t batch_len;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void leo_log_setup(enum leo_log_level min, const char *role)
{
    min_level = min;
    if (role)
        snprintf(role_name, sizeof(role_name), "%s", role);
}

int leo_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

size_t leo_log_timestamp(char *buf, size_t size)
{
    /* the date and time to the second are formatted once per second (every request logs a timestamp) */
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[24];
    static _Thread_local size_t cached_len;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        cached_len = strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = tv.tv_sec;
    }
    if (size < cached_len + 6) {
        if (size)
            buf[0] = '\0';
        return 0;
    }
    memcpy(buf, cached, cached_len);
    unsigned ms = (unsigned)(tv.tv_usec / 1000);
    char *p = buf + cached_len;
    p[0] = '.';
    p[1] = (char)('0' + ms / 100);
    p[2] = (char)('0' + ms / 10 % 10);
    p[3] = (char)('0' + ms % 10);
    p[4] = 'Z';
    p[5] = '\0';
    return cached_len + 5;
}

static void write_all(const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(2, p, n);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

void leo_log_batch(bool on)
{
    if (!on)
        leo_log_flush();
    batching = on;
}

void leo_log_flush(void)
{
    if (batch_len) {
        write_all(batch, batch_len);
        batch_len = 0;
    }
}

void leo_log(enum leo_log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    leo_log_flush(); /* lines keep their order */
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;
    char ts[40];
    leo_log_timestamp(ts, sizeof(ts));
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_addf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"role\":\"%s\",\"pid\":%d,\"msg\":\"", ts, level_names[level],
                 role_name, (int)getpid());
    leo_buf_add_json_escaped(&b, msg, (size_t)n);
    leo_buf_adds(&b, "\"}\n");
    write_all(b.p, b.len);
    leo_buf_release(&b);
}

void leo_log_line(const char *json, size_t len)
{
    if (batching && len < BATCH_WRITE) {
        if (batch_len + len + 1 > BATCH_WRITE)
            leo_log_flush();
        memcpy(batch + batch_len, json, len);
        batch[batch_len + len] = '\n';
        batch_len += len + 1;
        return;
    }
    leo_log_flush();
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_add(&b, json, len);
    leo_buf_addch(&b, '\n');
    write_all(b.p, b.len);
    leo_buf_release(&b);
}
