/*
 * session.c — reading and writing the session file.
 */
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"

/* The file holds four short strings; anything bigger is not ours. */
#define SESSION_MAX_BYTES 65536

char *leoctl_session_path(char *err, size_t errlen)
{
    const char *p = getenv("LEOCTL_CONFIG");
    if (p && *p)
        return leo_strdup(p);
    struct leo_buf b = LEO_BUF_INIT;
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && xdg[0] == '/') {
        leo_buf_addf(&b, "%s/leoctl/session", xdg);
    } else if (home && *home) {
        leo_buf_addf(&b, "%s/.config/leoctl/session", home);
    } else {
        snprintf(err, errlen, "neither LEOCTL_CONFIG nor HOME is set: nowhere to keep the session");
        return NULL;
    }
    return leo_buf_detach(&b, NULL);
}

static char *dup_member(json_t *o, const char *name)
{
    const char *v = json_string_value(json_object_get(o, name));
    return v ? leo_strdup(v) : NULL;
}

int leoctl_session_load(const char *path, struct leoctl_session *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 1;
        snprintf(err, errlen, "cannot open the session file %s: %s", path, strerror(errno));
        return -1;
    }
    struct leo_buf b = LEO_BUF_INIT;
    leo_buf_init(&b, SESSION_MAX_BYTES, 0);
    char chunk[4096];
    ssize_t n;
    int rc = -1;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
        if (leo_buf_add(&b, chunk, (size_t)n) != 0) {
            snprintf(err, errlen, "the session file %s is larger than %d bytes", path, SESSION_MAX_BYTES);
            goto out;
        }
    }
    if (n < 0) {
        snprintf(err, errlen, "cannot read the session file %s: %s", path, strerror(errno));
        goto out;
    }
    json_t *j = json_loadb(b.p, b.len, 0, NULL);
    s->url = dup_member(j, "url");
    s->token = dup_member(j, "token");
    s->email = dup_member(j, "email");
    s->expires_at = dup_member(j, "expires_at");
    json_decref(j);
    if (!s->url || !s->token) {
        leoctl_session_clear(s);
        snprintf(err, errlen, "the session file %s is damaged; run leoctl login again", path);
        goto out;
    }
    rc = 0;
out:
    memset(b.p, 0, b.len);
    leo_buf_release(&b);
    close(fd);
    return rc;
}

/* Creates the parent directory of path (one level, like ~/.config/leoctl) with mode 0700 if it is missing. */
static int make_parent(const char *path, char *err, size_t errlen)
{
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path)
        return 0;
    char *dir = leo_strndup(path, (size_t)(slash - path));
    int rc = 0;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        /* ~/.config itself may be missing on a fresh account */
        const char *up = strrchr(dir, '/');
        if (errno == ENOENT && up && up != dir) {
            char *parent = leo_strndup(dir, (size_t)(up - dir));
            if (mkdir(parent, 0700) != 0 && errno != EEXIST)
                rc = -1;
            leo_free(parent);
            if (rc == 0 && mkdir(dir, 0700) != 0 && errno != EEXIST)
                rc = -1;
        } else {
            rc = -1;
        }
        if (rc != 0)
            snprintf(err, errlen, "cannot create the directory %s: %s", dir, strerror(errno));
    }
    leo_free(dir);
    return rc;
}

int leoctl_session_save(const char *path, const struct leoctl_session *s, char *err, size_t errlen)
{
    if (make_parent(path, err, errlen) != 0)
        return -1;
    json_t *j = json_pack("{s:s, s:s, s:s?, s:s?}", "url", s->url, "token", s->token, "email", s->email, "expires_at",
                          s->expires_at);
    char *text = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    struct leo_buf tmp = LEO_BUF_INIT;
    leo_buf_addf(&tmp, "%s.tmp.%ld", path, (long)getpid());
    int rc = -1;
    /* O_EXCL: a file (or a symlink planted there) of someone else is not written through */
    int fd = open(tmp.p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp.p, strerror(errno));
        goto fail_open;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot write %s: %s", tmp.p, strerror(errno));
            goto fail_write;
        }
        off += (size_t)n;
    }
    /* the umask may have narrowed the mode further but never widened it; fchmod makes it exactly 0600 */
    if (write(fd, "\n", 1) != 1 || fchmod(fd, 0600) != 0 || fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp.p, strerror(errno));
        goto fail_write;
    }
    if (close(fd) != 0) {
        fd = -1;
        snprintf(err, errlen, "cannot write %s: %s", tmp.p, strerror(errno));
        goto fail_write;
    }
    fd = -1;
    if (rename(tmp.p, path) != 0) {
        snprintf(err, errlen, "cannot replace %s: %s", path, strerror(errno));
        goto fail_write;
    }
    rc = 0;
    goto done;

fail_write:
    if (fd >= 0)
        close(fd);
    unlink(tmp.p);
fail_open:
done:
    memset(text, 0, strlen(text));
    free(text);
    leo_buf_release(&tmp);
    return rc;
}

int leoctl_session_remove(const char *path, char *err, size_t errlen)
{
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove the session file %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

void leoctl_session_clear(struct leoctl_session *s)
{
    if (s->token)
        memset(s->token, 0, strlen(s->token));
    leo_free(s->url);
    leo_free(s->token);
    leo_free(s->email);
    leo_free(s->expires_at);
    memset(s, 0, sizeof(*s));
}
