#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

static enum leo_log_level min_level = LEO_LOG_INFO;
static char role_name[32] = "main";

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
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = snprintf(buf + n, size - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    return n + (m > 0 ? (size_t)m : 0);
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

void leo_log(enum leo_log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
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
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_add(&b, json, len);
    leo_buf_addch(&b, '\n');
    write_all(b.p, b.len);
    leo_buf_release(&b);
}
