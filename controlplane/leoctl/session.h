/*
 * session.h — the session file: where `leoctl login` keeps the token for the commands that follow.
 *
 * Invariants: the file is a JSON object {"url", "token", "email", "expires_at"} written with mode 0600 (the
 * directory it creates, 0700) through a temporary file and a rename, so a reader never sees half a file. It
 * never holds a password. Its path is $LEOCTL_CONFIG, else $XDG_CONFIG_HOME/leoctl/session, else
 * ~/.config/leoctl/session.
 */
#ifndef LEOCTL_SESSION_H
#define LEOCTL_SESSION_H

#include <stddef.h>

/** A loaded session; every member is owned (leo_free through leoctl_session_clear). */
struct leoctl_session {
    char *url;   /* the base URL it was opened on (see leoctl_base_url) */
    char *token; /* the bearer token */
    char *email;
    char *expires_at;
};

/** The session file's path, in new memory; NULL with a message in err when no home directory is known. */
char *leoctl_session_path(char *err, size_t errlen);

/** Reads the file: 0, 1 when there is none, -1 with a message in err when it cannot be read or parsed. */
int leoctl_session_load(const char *path, struct leoctl_session *s, char *err, size_t errlen);

/** Writes the file (creating its directory); 0 or -1 with a message in err. */
int leoctl_session_save(const char *path, const struct leoctl_session *s, char *err, size_t errlen);

/** Deletes the file; 0 (also when there was none) or -1 with a message in err. */
int leoctl_session_remove(const char *path, char *err, size_t errlen);

/** Frees the members (the token is wiped first) and zeroes s. */
void leoctl_session_clear(struct leoctl_session *s);

#endif
