/*
 * sse.h — Server-Sent Events: an incremental parser for upstream streams and the framing of outgoing events.
 *
 * The parser follows the WHATWG EventSource rules ("Interpreting an event stream"):
 * - a line ends in "\r\n", "\n" or "\r"; a "\r" that ends one feed and a "\n" that starts the next are one
 *   line end; a UTF-8 byte order mark at the very start of the stream is skipped (also when split);
 * - a line starting with ':' is a comment; otherwise the line is "field: value" (one space after the colon is
 *   stripped) or a bare "field" (empty value);
 * - "data" appends a line to the event's data (several data lines are joined with "\n"), "event" sets the
 *   event name, "id" sets the last event id (ignored when the value contains a NUL byte), "retry" and unknown
 *   fields are ignored;
 * - an empty line dispatches the pending event and starts a new one.
 *
 * One deliberate difference: WHATWG drops an event that has no data line. Here an event is dispatched when it
 * had at least one data line (even an empty one: "data:" gives data "") or an event field; an event with
 * only an "event:" line is dispatched with empty data. A blank line after nothing, or after only comments, id,
 * retry or unknown fields, dispatches nothing.
 *
 * Memory: the parser keeps the partial line that crosses feeds and the pending event's data and name. Every
 * line must fit in max_event_bytes, and so must the pending event (data bytes with their joining "\n"s plus
 * the event name); crossing either bound is LEO_ETOOBIG, after which the parser refuses further input. The
 * cap therefore holds no matter how the upstream splits its bytes.
 */
#ifndef LEO_SSE_H
#define LEO_SSE_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/buf.h"
#include "../common/str.h"

/**
 * Called once per dispatched event. event is the event name (empty span when the stream set none; WHATWG
 * readers call that "message"), data the joined data lines, id the last event id seen so far in the stream
 * (it persists across events, as in WHATWG; empty when none). data.p[data.len] == '\0', so data may be handed
 * to functions that want a C string; event.p and id.p are NUL-terminated too when non-empty.
 * The spans are valid only until the callback returns.
 *
 * The callback may call leo_sse_parser_stop (feed then returns at once) and leo_sse_parser_release (also
 * stops; the storage is freed when feed unwinds). It must not call feed or finish on the same parser, and
 * the struct leo_sse_parser itself must stay in place until feed returns.
 */
typedef void (*leo_sse_event_cb)(void *ud, struct leo_str event, struct leo_str data, struct leo_str id);

struct leo_sse_parser {
    leo_sse_event_cb cb;
    void *ud;
    size_t max; /* cap on one line and on the pending event */
    /* private */
    struct leo_buf _line;  /* the partial line carried over between feeds */
    struct leo_buf _data;  /* data lines of the pending event, joined with "\n" */
    struct leo_buf _event; /* event name of the pending event */
    struct leo_buf _id;    /* last event id */
    unsigned char _bom;    /* bytes of the byte order mark matched so far */
    bool _started;         /* past the point where a byte order mark may appear */
    bool _skip_lf;         /* the previous byte was a "\r": a "\n" right after it ends nothing */
    bool _has_data;        /* the pending event had a data line */
    bool _has_event;       /* the pending event had an event line */
    bool _pending;         /* a field line was seen since the last blank line */
    bool _in_cb;
    bool _stopped;
    bool _release_later; /* released from inside the callback */
    int _err;            /* sticky error: LEO_ETOOBIG */
};

/** Prepares a parser. max_event_bytes bounds one line and one pending event (must be > 0). cb receives every
 *  event, with ud as its first argument. Allocates nothing until bytes arrive. */
void leo_sse_parser_init(struct leo_sse_parser *p, size_t max_event_bytes, leo_sse_event_cb cb, void *ud);

/**
 * Parses len more bytes of the stream, calling the callback for every event they complete.
 * Returns 0; LEO_ETOOBIG when a line or an event crossed the cap (events completed before that point were
 * dispatched; the parser then refuses everything with LEO_ETOOBIG); LEO_ECANCELED when the parser was
 * stopped (by the callback during this call, or earlier): the remaining bytes are ignored.
 */
int leo_sse_parser_feed(struct leo_sse_parser *p, const char *bytes, size_t len);

/**
 * Declares the end of the stream. Per WHATWG a pending event without its terminating blank line is discarded,
 * never dispatched. Returns 0 when the stream ended cleanly between events (trailing comments or blank lines
 * are fine); LEO_EUPSTREAM when it ended inside an event (a field line without the blank line, or a partial
 * line); LEO_ETOOBIG or LEO_ECANCELED when the parser had already failed or been stopped.
 * The parser keeps its state; release it afterwards.
 */
int leo_sse_parser_finish(struct leo_sse_parser *p);

/** Makes the feed in progress return LEO_ECANCELED as soon as the callback returns, and every later feed
 *  too. Safe to call from the callback. */
void leo_sse_parser_stop(struct leo_sse_parser *p);

/** Frees the parser's buffers. Safe to call from the callback (then it also stops the parser and the buffers
 *  are freed when feed returns). Calling it twice is harmless. */
void leo_sse_parser_release(struct leo_sse_parser *p);

/**
 * Appends one event in SSE framing to out: "event: <event>\n" when event is not NULL, then one "data: <line>\n"
 * per line of data (data is split at "\r\n", "\n" and "\r", so it cannot break the framing; empty data gives
 * one "data: \n"), then the blank line "\n". An event name is cut at its first line break for the same reason.
 * Returns 0, or LEO_ETOOBIG when out's cap would be crossed (then out is left as it was).
 */
int leo_sse_append_event(struct leo_buf *out, const char *event, const char *data, size_t len);

#endif
