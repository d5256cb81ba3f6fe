/*
 * json_scan.h — locating the top-level members of a JSON object in its original bytes.
 *
 * The gateway forwards request bodies byte for byte except the few members it must rewrite ("model",
 * "stream_options"); re-serialising a parsed document would change number formatting and spacing of the
 * client's fields. This scanner finds where each top-level member's key and value start and end so a caller
 * can splice. It expects a document that a full parser (jansson) has already accepted; on anything else it
 * returns LEO_EPARSE rather than guessing.
 */
#ifndef LEO_JSON_SCAN_H
#define LEO_JSON_SCAN_H

#include <stddef.h>

#include "buf.h"
#include "str.h"

struct leo_json_member {
    struct leo_str key;   /* the key's raw text between the quotes (escapes not decoded) */
    size_t start;         /* offset of the key's opening quote */
    size_t value_start;   /* offset of the first byte of the value */
    size_t value_end;     /* offset one past the last byte of the value */
};

/** Scans the top-level object in p[0..len). Calls fn for each member in order; fn returns non-zero to stop.
 *  *close_brace receives the offset of the object's closing '}'. Returns 0 or LEO_EPARSE. */
int leo_json_scan_object(const char *p, size_t len,
                         int (*fn)(const struct leo_json_member *m, void *ud), void *ud, size_t *close_brace);

/** Finds the value of the top-level member `key` (compared raw, escapes not decoded) of the object in
 *  p[0..len) without building a tree: the cheap way to read one member, such as "usage" near the end of a
 *  whole chat.completion, out of an answer that is otherwise relayed untouched.
 *  Unlike leo_json_scan_object it does not trust its input: it checks the whole document against the JSON
 *  grammar (RFC 8259: strings with valid escapes and UTF-8, no control characters, \u0000 refused as jansson
 *  does; numbers, literals, commas and colons; nesting up to LEO_JSON_MAX_DEPTH; nothing after the object but
 *  whitespace), so 0 or LEO_ENOTFOUND also say "jansson would accept this object". Known limit: a number's
 *  magnitude is not checked (jansson refuses integers beyond 64 bits). With duplicate keys the last one wins,
 *  as in jansson. *value spans p and is valid as long as p is.
 *  Returns 0 (found), LEO_ENOTFOUND (well-formed, no such member; *value is empty) or LEO_EPARSE. */
int leo_json_find_member(const char *p, size_t len, const char *key, struct leo_str *value);

/** How deep leo_json_find_member follows nested arrays and objects (jansson's limit). */
#define LEO_JSON_MAX_DEPTH 2048

/** One replacement for leo_json_splice: the value of top-level member `key` becomes `value` (raw JSON text);
 *  when the member does not exist it is appended at the end of the object. value NULL removes the member. */
struct leo_json_edit {
    const char *key;
    struct leo_str value;
    int remove;
    /* private */
    int _found;
};

/** Writes p with the edits applied into out. Keys with escape sequences are compared raw. 0 or LEO_EPARSE
 *  (or LEO_ETOOBIG from out). */
int leo_json_splice(const char *p, size_t len, struct leo_json_edit *edits, size_t nedits, struct leo_buf *out);

#endif
