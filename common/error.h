/*
 * error.h — error codes shared by every module.
 *
 * Functions that can fail return int: 0 on success, a negative code on failure. libuv's negative errno codes
 * (UV_E*) pass through unchanged; the project's own codes live below LEO_E_BASE so the two never collide.
 */
#ifndef LEO_ERROR_H
#define LEO_ERROR_H

#define LEO_E_BASE (-20000)

enum {
    LEO_ETOOBIG = LEO_E_BASE - 1,      /* a bounded buffer would exceed its cap */
    LEO_EPARSE = LEO_E_BASE - 2,       /* malformed input */
    LEO_ECONFIG = LEO_E_BASE - 3,      /* invalid configuration */
    LEO_ENOTFOUND = LEO_E_BASE - 4,    /* a looked-up name does not exist */
    LEO_ECONNECT = LEO_E_BASE - 5,     /* could not connect to an upstream */
    LEO_ETIMEOUT = LEO_E_BASE - 6,     /* a deadline passed */
    LEO_EUPSTREAM = LEO_E_BASE - 7,    /* an upstream answered with garbage or broke the connection */
    LEO_ECANCELED = LEO_E_BASE - 8,    /* the operation was cancelled by its owner */
    LEO_EAUTH = LEO_E_BASE - 9,        /* missing or unknown credentials */
    LEO_EINVAL = LEO_E_BASE - 10,      /* an argument was out of range */
    LEO_EIO = LEO_E_BASE - 11,         /* a file or socket operation failed */
    LEO_ECLOSED = LEO_E_BASE - 12,     /* the peer or the object is already closed */
};

/** Names an error code: a LEO_E* code, a libuv code, or "unknown error". Never NULL, static storage. */
const char *leo_strerror(int err);

#endif
