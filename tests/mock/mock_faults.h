/*
 * mock_faults.h — fault injection specs of the mock provider.
 *
 * A spec is a ';'-separated list of items, each `name` or `name=value` (spaces around items are ignored, empty
 * items too). It comes from the `x-mock-fault` request header or from a `[[mock:<spec>]]` marker in the text of
 * the last user message. Parsing is pure: it fills a struct mock_fault and never allocates. The items, their
 * ranges and their meaning are listed in docs/mock.md; the table in mock_faults.c is the single source of truth
 * for names and ranges.
 */
#ifndef MOCK_FAULTS_H
#define MOCK_FAULTS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/str.h"

struct mock_fault {
    int status;                /* 0: none; else the status to answer with (400..599) */
    int retry_after_s;         /* -1 when not given */
    int retry_after_ms;        /* -1 when not given */
    int delay_headers_ms;      /* wait before sending anything */
    int delay_events_ms;       /* wait between stream events */
    int trickle_ms;            /* -1: no trickle; else the wait between 16-byte body pieces */
    int reset_after_events;    /* -1: none; else cut the connection after this many events / pieces */
    bool reset_before_headers; /* close without answering */
    bool malformed;            /* send a body (or one stream event) that is not valid JSON */
    bool tool_then_reset;      /* streams: cut after the first content or arguments delta */
    bool blocked;              /* chat routes: answer with the format's refusal (content filter, safety block) */
};

/** Sets f to "no fault". */
void mock_fault_init(struct mock_fault *f);

/** True when f asks for nothing. */
bool mock_fault_is_none(const struct mock_fault *f);

/** Parses spec into f (which it initialises first). Returns 0, or -1 with a lowercase message naming the
 *  offending item in err (always NUL-terminated when errsize > 0). */
int mock_fault_parse(struct leo_str spec, struct mock_fault *f, char *err, size_t errsize);

/** Looks for the first "[[mock:<spec>]]" in text. Returns 1 and sets *spec when found, 0 when there is no
 *  marker, -1 when a marker is opened but never closed. */
int mock_fault_find_marker(struct leo_str text, struct leo_str *spec);

#endif
