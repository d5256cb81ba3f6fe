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
#include <stdint.h>

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

/** Calls fn for each element of the array in p[0..len) (raw spans, in order); fn returns non-zero to stop. Like
 *  leo_json_scan_object it expects a document already accepted. 0 or LEO_EPARSE. */
int leo_json_scan_array(const char *p, size_t len, int (*fn)(struct leo_str elem, void *ud), void *ud);

/** Finds the value of the top-level member `key` (compared with the member's key decoded, as jansson reads it:
 *  "us\u0061ge" names "usage"; only keys with a backslash cost a decoding) of the object in p[0..len) without
 *  building a tree: the cheap way to read one member, such as "usage" near the end of a whole chat.completion,
 *  out of an answer that is otherwise relayed untouched.
 *  Unlike leo_json_scan_object it does not trust its input: it checks the whole document against the JSON
 *  grammar (RFC 8259: strings with valid escapes and UTF-8, no control characters, \u0000 refused as jansson
 *  does; numbers, literals, commas and colons; nesting up to LEO_JSON_MAX_DEPTH; nothing after the object but
 *  whitespace), so 0 or LEO_ENOTFOUND also say "jansson would accept this object". Known limit: a number's
 *  magnitude is not checked (jansson refuses integers beyond 64 bits). With duplicate keys the last one wins,
 *  as in jansson. *value spans p and is valid as long as p is.
 *  Returns 0 (found), LEO_ENOTFOUND (well-formed, no such member; *value is empty) or LEO_EPARSE. */
int leo_json_find_member(const char *p, size_t len, const char *key, struct leo_str *value);

/** The validating scan of leo_json_find_member, handing every top-level member (raw spans, document order,
 *  repeated keys each time) to fn as its value ends. 0 only when the whole document is well formed (then,
 *  number magnitudes aside, jansson accepts it); LEO_EPARSE otherwise, possibly after some calls of fn. */
int leo_json_scan_members(const char *text, size_t len, void (*fn)(const struct leo_json_member *m, void *ud),
                          void *ud);

/** Reads the top-level members named keys[0..n) (compared decoded, as in leo_json_find_member) of the object
 *  in p[0..len), as json_object_get on jansson's tree of it would: values[i] is the raw value of the last member
 *  named keys[i], {NULL, 0} when there is none; spans of p. Validates like leo_json_find_member and, unlike it,
 *  also refuses what jansson refuses for its magnitude: any number in the object, nested ones included, that is
 *  an integer beyond 64 bits or a real that overflows. Returns 0, or LEO_EPARSE with every value empty. */
int leo_json_get_members(const char *p, size_t len, const char *const *keys, size_t n, struct leo_str *values);

/** How deep leo_json_find_member follows nested arrays and objects (jansson's limit). */
#define LEO_JSON_MAX_DEPTH 2048

/** What leo_json_canonical does with the members of the top-level object. */
struct leo_json_canon_opts {
    /* true: leave this member out of the canonical text (key decoded); NULL keeps every member */
    int (*skip)(const char *key, size_t key_len, void *ud);
    void *ud;
};

/** Writes the canonical text of the JSON object in p[0..len) to out, validating it on the way as
 *  leo_json_find_member does (0 means jansson accepts the document, integers beyond 64 bits and real numbers
 *  that overflow included). Canonical: no whitespace; object members sorted by their decoded keys (bytewise,
 *  a shorter key first), a repeated key keeping its last value as jansson does; strings decoded and written
 *  again escaping only '"', '\\' and control characters; a number with an integral value written as an integer
 *  whatever its spelling (0.0, -0, 1e2), any other with %.17g. This is, byte for byte, what gateway/cache.c
 *  writes for the same document parsed by jansson (the exact cache's key), without building a tree.
 *  Returns 0, LEO_EPARSE (not a JSON object jansson would accept) or LEO_ETOOBIG (out). */
int leo_json_canonical(const char *p, size_t len, const struct leo_json_canon_opts *opts, struct leo_buf *out);

/** True when raw (a validated JSON value) is a number written without fraction or exponent: what jansson
 *  makes an integer. */
int leo_json_is_integer(struct leo_str raw);

/** Reads raw (a validated JSON value, or the empty span) as a number, as jansson does: 1 with *i its value when
 *  it is an integer (no fraction, no exponent), 0 with *d its value for a real (an underflow is 0, as with
 *  strtod), LEO_EPARSE when it is not a number or jansson refuses it (an integer beyond 64 bits, a real that
 *  overflows). i and d may be NULL. */
int leo_json_number(struct leo_str raw, int64_t *i, double *d);

/** True when a member's raw key (leo_json_member.key: between the quotes, escapes not decoded) names `name`
 *  once decoded, as jansson reads it ("mod\u0065l" names "model"). */
int leo_json_key_is(struct leo_str raw_key, const char *name);

/** Decodes the JSON string literal raw (its quotes included, already validated) into out. 0 or LEO_EPARSE /
 *  LEO_ETOOBIG. */
int leo_json_string_decode(struct leo_str raw, struct leo_buf *out);

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
