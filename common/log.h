/*
 * log.h — structured logging: one JSON object per line on stderr.
 *
 * Lines are written with a single write(2) so lines from several worker processes never interleave. With
 * batching on (a worker's event loop), access-log lines are held in a 4 KiB buffer and written together by
 * leo_log_flush, which the loop calls once per iteration: one write for all the requests that ended in that
 * iteration, never more than PIPE_BUF bytes and always whole lines. Any other log line flushes them first.
 * What a process that dies abnormally held back (the lines of its current iteration) is lost.
 * Never pass a secret (an API key, a provider credential, a password) to any function here.
 */
#ifndef LEO_LOG_H
#define LEO_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum leo_log_level { LEO_LOG_DEBUG, LEO_LOG_INFO, LEO_LOG_WARN, LEO_LOG_ERROR };

/** Sets the minimum level written (default INFO) and the process role shown in each line ("supervisor"...). */
void leo_log_setup(enum leo_log_level min, const char *role);
/** Parses "debug" | "info" | "warn" | "error"; -1 when unknown. */
int leo_log_level_parse(const char *s);
/** Logs a message: {"ts":...,"level":...,"role":...,"pid":...,"msg":"<formatted, JSON-escaped>"}. */
void leo_log(enum leo_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Writes one prebuilt JSON object as a line (the access log); json must not contain a newline. Held back
 *  until leo_log_flush while batching is on (lines of 4 KiB or more are written at once). */
void leo_log_line(const char *json, size_t len);
/** Turns batching of access-log lines on or off (off flushes). Single-threaded use only. */
void leo_log_batch(bool on);
/** Writes the held-back access-log lines, if any. */
void leo_log_flush(void);
/** Appends the current UTC time as RFC 3339 with milliseconds to buf (at least 32 bytes); returns length. */
size_t leo_log_timestamp(char *buf, size_t size);

#define leo_debug(...) leo_log(LEO_LOG_DEBUG, __VA_ARGS__)
#define leo_info(...) leo_log(LEO_LOG_INFO, __VA_ARGS__)
#define leo_warn(...) leo_log(LEO_LOG_WARN, __VA_ARGS__)
#define leo_error(...) leo_log(LEO_LOG_ERROR, __VA_ARGS__)

#endif
