/*
 * leoctl — command-line client of the control plane's admin API (docs/leoctl.md).
 *
 * Each command is one row of the command table: its words, the options it takes, how many positional
 * arguments, and a handler that makes blocking requests through client.c. Global options (--url, --json,
 * --help) are accepted before the command words and among the command's own options.
 *
 * Exit status: 0 on success, 1 when the API answered an error or could not be reached, 2 for a usage error.
 * The session token and passwords are never printed: `login --json` drops the token from what it shows.
 */
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "common/alloc.h"
#include "common/buf.h"
#include "session.h"

#define EXIT_API 1
#define EXIT_USAGE 2
#define MAX_POS 4
#define MAX_OPTS 8
#define PAGE 200 /* the API's largest page */

/* ---- command table ---- */

struct ctx;
typedef int (*cmd_fn)(struct ctx *c);

struct command {
    const char *group;
    const char *verb;           /* NULL for one-word commands */
    const char *opts[MAX_OPTS]; /* option names; a trailing '=' means it takes a value */
    int npos;                   /* positional arguments required */
    cmd_fn fn;
    const char *usage;
    const char *help;
};

struct ctx {
    const struct command *cmd;
    const char *url; /* --url, or NULL */
    bool json;
    const char *pos[MAX_POS];
    int npos;
    const char *optval[MAX_OPTS]; /* by index into cmd->opts; flags hold "" when given */
    char *session_path;
    struct leoctl_session session;
    char *base; /* the base URL requests go to */
};

static const char *opt(const struct ctx *c, const char *name)
{
    for (int i = 0; i < MAX_OPTS && c->cmd->opts[i]; i++) {
        const char *o = c->cmd->opts[i];
        size_t n = strlen(name);
        if (strncmp(o, name, n) == 0 && (o[n] == '\0' || o[n] == '='))
            return c->optval[i];
    }
    return NULL;
}

static void err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("leoctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- output ---- */

/* Copies s for a terminal: control characters become '?', so a name cannot move the cursor or hide text. */
static void add_clean(struct leo_buf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++)
        leo_buf_addch(b, (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p);
}

/* Display width of UTF-8 text, counted in code points (no wide-character tables). */
static size_t width(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

/* "2026-01-31T12:00:00.123456+00:00" → "2026-01-31 12:00:00" (the API always answers in UTC). */
static void add_time(struct leo_buf *b, const char *t)
{
    if (!t) {
        leo_buf_adds(b, "-");
        return;
    }
    size_t n = strlen(t);
    if (n >= 19 && t[10] == 'T') {
        leo_buf_add(b, t, 10);
        leo_buf_addch(b, ' ');
        leo_buf_add(b, t + 11, 8);
    } else {
        add_clean(b, t);
    }
}

/* A table of strings: rows[r][col], row 0 the header. Columns are padded to their widest cell. */
struct table {
    int ncols;
    size_t nrows;
    char **cells; /* nrows * ncols */
};

static void table_row(struct table *t, char **row)
{
    t->cells = leo_realloc(t->cells, (t->nrows + 1) * (size_t)t->ncols * sizeof(char *));
    memcpy(t->cells + t->nrows * (size_t)t->ncols, row, (size_t)t->ncols * sizeof(char *));
    t->nrows++;
}

static void table_print(struct table *t)
{
    size_t w[16] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (int k = 0; k < t->ncols; k++) {
            size_t n = width(t->cells[r * (size_t)t->ncols + (size_t)k]);
            if (n > w[k])
                w[k] = n;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (int k = 0; k < t->ncols; k++) {
            const char *cell = t->cells[r * (size_t)t->ncols + (size_t)k];
            if (k == t->ncols - 1)
                printf("%s\n", cell);
            else
                printf("%s%*s", cell, (int)(w[k] - width(cell) + 2), "");
        }
    }
    for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
        leo_free(t->cells[i]);
    leo_free(t->cells);
    t->cells = NULL;
    t->nrows = 0;
}

static char *cell_str(const char *s)
{
    struct leo_buf b = LEO_BUF_INIT;
    add_clean(&b, s ? s : "-");
    return leo_buf_detach(&b, NULL);
}

static char *cell_time(const char *s)
{
    struct leo_buf b = LEO_BUF_INIT;
    add_time(&b, s);
    return leo_buf_detach(&b, NULL);
}

static const char *jstr(json_t *o, const char *name)
{
    return json_string_value(json_object_get(o, name));
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s)
        printf("%s\n", s);
    free(s);
}

/* ---- requests ---- */

/*
 * One request with the session's token. 0 on a 2xx answer (resp filled, release it); otherwise the error is
 * printed as "leoctl: <message> (HTTP <status>)" and EXIT_API returned (resp already released).
 */
static int call(struct ctx *c, const char *method, const char *path, json_t *body, struct leoctl_response *resp)
{
    char e[512];
    if (leoctl_request(c->base, c->session.token, method, path, body, resp, e, sizeof(e)) != 0) {
        err("%s", e);
        return EXIT_API;
    }
    if (resp->status < 200 || resp->status > 299) {
        err("%s (HTTP %ld)", leoctl_error_message(resp), resp->status);
        leoctl_response_release(resp);
        return EXIT_API;
    }
    return 0;
}

/*
 * Follows a list's pages: path is the route with its query already started ("?..." or not); at most max
 * items are gathered (0 for all of them) into *out (a new array).
 */
static int fetch_list(struct ctx *c, const char *path, size_t max, json_t **out)
{
    json_t *all = json_array();
    char *cursor = NULL;
    int rc = 0;
    for (;;) {
        size_t want = PAGE;
        if (max && max - json_array_size(all) < want)
            want = max - json_array_size(all);
        struct leo_buf p = LEO_BUF_INIT;
        leo_buf_addf(&p, "%s%climit=%zu", path, strchr(path, '?') ? '&' : '?', want);
        if (cursor) {
            char *esc = leoctl_escape(cursor);
            leo_buf_addf(&p, "&cursor=%s", esc);
            leo_free(esc);
        }
        struct leoctl_response r;
        rc = call(c, "GET", p.p, NULL, &r);
        leo_buf_release(&p);
        if (rc != 0)
            break;
        json_t *data = json_object_get(r.json, "data");
        if (!json_is_array(data)) {
            err("unexpected answer from the control plane (HTTP %ld)", r.status);
            leoctl_response_release(&r);
            rc = EXIT_API;
            break;
        }
        json_array_extend(all, data);
        const char *next = jstr(r.json, "next_cursor");
        leo_free(cursor);
        cursor = next ? leo_strdup(next) : NULL;
        leoctl_response_release(&r);
        if (!cursor || (max && json_array_size(all) >= max))
            break;
    }
    leo_free(cursor);
    if (rc != 0) {
        json_decref(all);
        return rc;
    }
    *out = all;
    return 0;
}

/* Appends "/<escaped s>" to b. */
static void add_segment(struct leo_buf *b, const char *s)
{
    char *esc = leoctl_escape(s);
    leo_buf_addf(b, "/%s", esc);
    leo_free(esc);
}

/* ---- passwords ---- */

static struct termios saved_tty;
static int tty_fd = -1;

static void restore_tty(int sig)
{
    if (tty_fd >= 0)
        tcsetattr(tty_fd, TCSAFLUSH, &saved_tty);
    signal(sig, SIG_DFL);
    raise(sig);
}

/*
 * Reads one line from the terminal with echo off (not from stdin, which may be a pipe of other data).
 * 0, or -1 when there is no terminal or the line is empty or too long.
 */
static int read_secret(const char *prompt, char *out, size_t size)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    struct termios t;
    if (tcgetattr(fd, &saved_tty) != 0) {
        close(fd);
        return -1;
    }
    t = saved_tty;
    t.c_lflag &= ~(tcflag_t)ECHO;
    t.c_lflag |= ECHONL;
    tty_fd = fd;
    /* Ctrl-C while echo is off must not leave the terminal silent */
    void (*old_int)(int) = signal(SIGINT, restore_tty);
    void (*old_term)(int) = signal(SIGTERM, restore_tty);
    tcsetattr(fd, TCSAFLUSH, &t);
    if (write(fd, prompt, strlen(prompt)) < 0) {
        /* the prompt is a courtesy; reading still works */
    }
    size_t n = 0;
    bool ok = true;
    for (;;) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r <= 0 || ch == '\n')
            break;
        if (n + 1 >= size) {
            ok = false;
            continue;
        }
        out[n++] = ch;
    }
    out[n] = '\0';
    tcsetattr(fd, TCSAFLUSH, &saved_tty);
    signal(SIGINT, old_int);
    signal(SIGTERM, old_term);
    tty_fd = -1;
    close(fd);
    if (n > 0 && out[n - 1] == '\r')
        out[--n] = '\0';
    return ok && n > 0 ? 0 : -1;
}

static void wipe(char *s, size_t n)
{
    volatile char *p = s;
    while (n--)
        *p++ = 0;
}

/* ---- session handling ---- */

/* Opens the stored session and picks the URL; a --url for another server than the session's is refused. */
static int need_session(struct ctx *c)
{
    char e[512];
    int rc = leoctl_session_load(c->session_path, &c->session, e, sizeof(e));
    if (rc < 0) {
        err("%s", e);
        return EXIT_API;
    }
    if (rc == 1) {
        err("not logged in: run leoctl login --url URL --email EMAIL");
        return EXIT_API;
    }
    if (c->url) {
        char *u = leoctl_base_url(c->url, e, sizeof(e));
        if (!u) {
            err("%s", e);
            return EXIT_USAGE;
        }
        /* the token belongs to the server it came from and is never sent anywhere else */
        if (strcmp(u, c->session.url) != 0) {
            err("the session is for %s, not %s: run leoctl login --url %s first", c->session.url, u, u);
            leo_free(u);
            return EXIT_API;
        }
        leo_free(u);
    }
    c->base = leo_strdup(c->session.url);
    return 0;
}

/* ---- commands ---- */

static int cmd_login(struct ctx *c)
{
    char e[512];
    const char *url = c->url ? c->url : getenv("LEOCTL_URL");
    if (!url || !*url) {
        err("login needs --url URL (or LEOCTL_URL)");
        return EXIT_USAGE;
    }
    c->base = leoctl_base_url(url, e, sizeof(e));
    if (!c->base) {
        err("%s", e);
        return EXIT_USAGE;
    }
    const char *email = opt(c, "email");
    if (!email || !*email) {
        err("login needs --email EMAIL");
        return EXIT_USAGE;
    }
    char password[1100];
    const char *env = getenv("LEOCTL_PASSWORD");
    if (env && *env) {
        if (strlen(env) >= sizeof(password)) {
            err("LEOCTL_PASSWORD is longer than %zu bytes", sizeof(password) - 1);
            return EXIT_USAGE;
        }
        memcpy(password, env, strlen(env) + 1);
    } else if (read_secret("Password: ", password, sizeof(password)) != 0) {
        wipe(password, sizeof(password));
        err("cannot read a password: set LEOCTL_PASSWORD or run leoctl on a terminal");
        return EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s, s:s}", "email", email, "password", password);
    wipe(password, sizeof(password));
    struct leoctl_response r;
    int rc = call(c, "POST", "/login", body, &r);
    /* the body holds the password: overwrite it before jansson frees it */
    json_t *pw = json_object_get(body, "password");
    if (pw)
        wipe((char *)json_string_value(pw), json_string_length(pw));
    json_decref(body);
    if (rc != 0)
        return rc;
    const char *token = jstr(r.json, "token");
    if (!token) {
        err("the control plane answered without a session token (HTTP %ld)", r.status);
        leoctl_response_release(&r);
        return EXIT_API;
    }
    struct leoctl_session s = {
        .url = c->base,
        .token = (char *)token,
        .email = (char *)jstr(json_object_get(r.json, "user"), "email"),
        .expires_at = (char *)jstr(r.json, "expires_at"),
    };
    rc = leoctl_session_save(c->session_path, &s, e, sizeof(e));
    if (rc != 0) {
        err("%s", e);
        rc = EXIT_API;
    } else if (c->json) {
        json_object_del(r.json, "token");
        print_json(r.json);
    } else {
        struct leo_buf b = LEO_BUF_INIT;
        leo_buf_adds(&b, "logged in to ");
        add_clean(&b, c->base);
        leo_buf_adds(&b, " as ");
        add_clean(&b, s.email ? s.email : email);
        leo_buf_adds(&b, " (session expires ");
        add_time(&b, s.expires_at);
        leo_buf_adds(&b, " UTC)");
        printf("%s\n", b.p);
        leo_buf_release(&b);
    }
    json_t *tok = json_object_get(r.json, "token");
    if (tok)
        wipe((char *)json_string_value(tok), json_string_length(tok));
    wipe(r.body, r.len);
    leoctl_response_release(&r);
    return rc;
}

static int cmd_logout(struct ctx *c)
{
    char e[512];
    int rc = leoctl_session_load(c->session_path, &c->session, e, sizeof(e));
    if (rc < 0) {
        err("%s", e);
        return EXIT_API;
    }
    if (rc == 1) {
        printf("not logged in\n");
        return 0;
    }
    c->base = leo_strdup(c->session.url);
    struct leoctl_response r;
    if (leoctl_request(c->base, c->session.token, "POST", "/logout", NULL, &r, e, sizeof(e)) != 0) {
        err("%s", e);
        return EXIT_API; /* the session file stays: the session may still be open on the server */
    }
    /* 401: the session had already ended (expired or revoked); forgetting it locally is all that is left */
    if ((r.status < 200 || r.status > 299) && r.status != 401) {
        err("%s (HTTP %ld)", leoctl_error_message(&r), r.status);
        leoctl_response_release(&r);
        return EXIT_API;
    }
    leoctl_response_release(&r);
    if (leoctl_session_remove(c->session_path, e, sizeof(e)) != 0) {
        err("%s", e);
        return EXIT_API;
    }
    printf("logged out of %s\n", c->base);
    return 0;
}

static void add_memberships(struct leo_buf *b, json_t *ms)
{
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m)
    {
        if (i)
            leo_buf_adds(b, ", ");
        add_clean(b, jstr(m, "role"));
        const char *t = jstr(m, "tenant_id");
        if (t) {
            leo_buf_adds(b, " of tenant ");
            add_clean(b, t);
        }
    }
    if (json_array_size(ms) == 0)
        leo_buf_adds(b, "none");
}

static int cmd_whoami(struct ctx *c)
{
    int rc = need_session(c);
    if (rc)
        return rc;
    struct leoctl_response r;
    rc = call(c, "GET", "/me", NULL, &r);
    if (rc)
        return rc;
    if (c->json) {
        print_json(r.json);
    } else {
        json_t *u = json_object_get(r.json, "user");
        struct leo_buf b = LEO_BUF_INIT;
        add_clean(&b, jstr(u, "email"));
        leo_buf_adds(&b, " (");
        add_clean(&b, jstr(u, "id"));
        leo_buf_adds(&b, ") on ");
        add_clean(&b, c->base);
        leo_buf_adds(&b, "\nroles: ");
        add_memberships(&b, json_object_get(r.json, "memberships"));
        leo_buf_adds(&b, "\nsession expires: ");
        add_time(&b, jstr(json_object_get(r.json, "session"), "expires_at"));
        leo_buf_adds(&b, " UTC");
        printf("%s\n", b.p);
        leo_buf_release(&b);
    }
    leoctl_response_release(&r);
    return 0;
}

/* Prints a list answer: the gathered array as JSON, or a table built by row(). */
static int print_list(struct ctx *c, json_t *all, int ncols, char **header, void (*row)(json_t *, char **))
{
    if (c->json) {
        print_json(all);
        return 0;
    }
    struct table t = {.ncols = ncols};
    char *h[16];
    for (int k = 0; k < ncols; k++)
        h[k] = leo_strdup(header[k]);
    table_row(&t, h);
    size_t i;
    json_t *item;
    json_array_foreach(all, i, item)
    {
        char *cells[16];
        row(item, cells);
        table_row(&t, cells);
    }
    table_print(&t);
    return 0;
}

static void tenant_row(json_t *t, char **cells)
{
    cells[0] = cell_str(jstr(t, "id"));
    cells[1] = cell_str(jstr(t, "slug"));
    cells[2] = cell_str(jstr(t, "name"));
    cells[3] = cell_str(jstr(t, "status"));
    cells[4] = cell_time(jstr(t, "created_at"));
}

static char *tenant_header[] = {"ID", "SLUG", "NAME", "STATUS", "CREATED"};

static int cmd_tenants_list(struct ctx *c)
{
    int rc = need_session(c);
    if (rc)
        return rc;
    json_t *all;
    rc = fetch_list(c, "/tenants", 0, &all);
    if (rc)
        return rc;
    print_list(c, all, 5, tenant_header, tenant_row);
    json_decref(all);
    return 0;
}

/* Prints one object: its JSON, or a table of one row. */
static void print_one(struct ctx *c, json_t *o, int ncols, char **header, void (*row)(json_t *, char **))
{
    if (c->json) {
        print_json(o);
        return;
    }
    json_t *a = json_array();
    json_array_append(a, o);
    print_list(c, a, ncols, header, row);
    json_decref(a);
}

/* A slug from a display name: lower case, runs of other characters become one '-', at most 64 bytes. */
static char *slug_of(const char *name)
{
    struct leo_buf b = LEO_BUF_INIT;
    bool dash = false;
    for (const unsigned char *p = (const unsigned char *)name; *p && b.len < 64; p++) {
        unsigned char ch = *p;
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch - 'A' + 'a');
        if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_') {
            if (dash && b.len)
                leo_buf_addch(&b, '-');
            dash = false;
            if (b.len < 64)
                leo_buf_addch(&b, (char)ch);
        } else {
            dash = true;
        }
    }
    while (b.len && (b.p[b.len - 1] == '-' || b.p[b.len - 1] == '.'))
        b.p[--b.len] = '\0';
    if (b.len && (b.p[0] == '.' || b.p[0] == '_'))
        leo_buf_consume(&b, 1);
    return leo_buf_detach(&b, NULL);
}

static int cmd_tenants_create(struct ctx *c)
{
    const char *name = c->pos[0];
    char *slug = opt(c, "slug") ? leo_strdup(opt(c, "slug")) : slug_of(name);
    if (!*slug) {
        err("cannot derive a slug from \"%s\": give one with --slug", name);
        leo_free(slug);
        return EXIT_USAGE;
    }
    int rc = need_session(c);
    if (rc) {
        leo_free(slug);
        return rc;
    }
    json_t *body = json_pack("{s:s, s:s}", "slug", slug, "name", name);
    leo_free(slug);
    struct leoctl_response r;
    rc = call(c, "POST", "/tenants", body, &r);
    json_decref(body);
    if (rc)
        return rc;
    print_one(c, r.json, 5, tenant_header, tenant_row);
    leoctl_response_release(&r);
    return 0;
}

static int cmd_tenants_get(struct ctx *c)
{
    int rc = need_session(c);
    if (rc)
        return rc;
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/tenants");
    add_segment(&p, c->pos[0]);
    struct leoctl_response r;
    rc = call(c, "GET", p.p, NULL, &r);
    leo_buf_release(&p);
    if (rc)
        return rc;
    print_one(c, r.json, 5, tenant_header, tenant_row);
    leoctl_response_release(&r);
    return 0;
}

/* ---- keys ---- */

static void key_row(json_t *k, char **cells)
{
    cells[0] = cell_str(jstr(k, "id"));
    cells[1] = cell_str(jstr(k, "name"));
    cells[2] = cell_str(jstr(k, "masked"));
    const char *status = jstr(k, "status");
    /* an expired key keeps its status "active" in the API but no longer works: say so */
    if (status && strcmp(status, "active") == 0 && json_is_true(json_object_get(k, "expired")))
        status = "expired";
    cells[3] = cell_str(status);
    cells[4] = cell_time(jstr(k, "created_at"));
}

static char *key_header[] = {"ID", "NAME", "KEY", "STATUS", "CREATED"};

/* "/tenants/<t>/keys[/<k>][suffix]" */
static char *key_path(struct ctx *c, const char *key, const char *suffix)
{
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/tenants");
    add_segment(&p, opt(c, "tenant"));
    leo_buf_adds(&p, "/keys");
    if (key)
        add_segment(&p, key);
    if (suffix)
        leo_buf_adds(&p, suffix);
    return leo_buf_detach(&p, NULL);
}

static int need_tenant(struct ctx *c)
{
    const char *t = opt(c, "tenant");
    if (!t || !*t) {
        err("%s %s needs --tenant ID", c->cmd->group, c->cmd->verb);
        return EXIT_USAGE;
    }
    return 0;
}

/* Prints a key answer that carries the secret, then the warning that it will not be shown again. */
static void print_secret_key(struct ctx *c, json_t *k, const char *what)
{
    if (c->json) {
        print_json(k);
    } else {
        struct leo_buf b = LEO_BUF_INIT;
        leo_buf_addf(&b, "%s key ", what);
        add_clean(&b, jstr(k, "id"));
        leo_buf_adds(&b, " \"");
        add_clean(&b, jstr(k, "name"));
        leo_buf_adds(&b, "\" in tenant ");
        add_clean(&b, jstr(k, "tenant_id"));
        leo_buf_adds(&b, "\nsecret: ");
        add_clean(&b, jstr(k, "secret"));
        printf("%s\n", b.p);
        wipe(b.p, b.len);
        leo_buf_release(&b);
    }
    fflush(stdout);
    fprintf(stderr, "leoctl: warning: the secret is shown only this once and cannot be retrieved later; "
                    "store it now\n");
    json_t *s = json_object_get(k, "secret");
    if (s)
        wipe((char *)json_string_value(s), json_string_length(s));
}

/*
 * --expires: "never" (no expiry), a duration from now ("90d", "12h", "30m"), or an RFC 3339 date-time that
 * is passed on for the API to check. NULL and a message when a duration is malformed.
 */
static json_t *expires_value(const char *v)
{
    if (strcmp(v, "never") == 0 || strcmp(v, "none") == 0)
        return json_null();
    size_t n = strlen(v);
    char unit = n ? v[n - 1] : 0;
    if (n >= 2 && strchr("dhm", unit) && strspn(v, "0123456789") == n - 1) {
        if (n - 1 > 7) {
            err("--expires \"%s\": too far in the future", v);
            return NULL;
        }
        long long count = strtoll(v, NULL, 10);
        long long secs = count * (unit == 'd' ? 86400 : unit == 'h' ? 3600 : 60);
        if (count <= 0) {
            err("--expires \"%s\": must be after now", v);
            return NULL;
        }
        time_t at = time(NULL) + (time_t)secs;
        struct tm tm;
        gmtime_r(&at, &tm);
        char buf[32];
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
        return json_string(buf);
    }
    return json_string(v);
}

/* "a,b,c" as a JSON array of strings; empty items are left out. */
static json_t *comma_list(const char *s)
{
    json_t *a = json_array();
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        if (len)
            json_array_append_new(a, json_stringn(s, len));
        if (!comma)
            return a;
        s = comma + 1;
    }
}

static int cmd_keys_create(struct ctx *c)
{
    int rc = need_tenant(c);
    if (rc)
        return rc;
    const char *name = opt(c, "name");
    if (!name) {
        err("keys create needs --name NAME");
        return EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s}", "name", name);
    const char *models = opt(c, "models");
    if (models)
        json_object_set_new(body, "allowed_models", comma_list(models));
    const char *providers = opt(c, "providers");
    if (providers)
        json_object_set_new(body, "allowed_providers", comma_list(providers));
    const char *expires = opt(c, "expires");
    if (expires) {
        json_t *e = expires_value(expires);
        if (!e) {
            json_decref(body);
            return EXIT_USAGE;
        }
        json_object_set_new(body, "expires_at", e);
    }
    const char *limits = opt(c, "limits");
    if (limits) {
        json_error_t je;
        json_t *l = json_loads(limits, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(l)) {
            err("--limits must be a JSON object such as '{\"rpm\":600}'");
            json_decref(l);
            json_decref(body);
            return EXIT_USAGE;
        }
        json_object_set_new(body, "limits", l);
    }
    rc = need_session(c);
    if (rc) {
        json_decref(body);
        return rc;
    }
    char *path = key_path(c, NULL, NULL);
    struct leoctl_response r;
    rc = call(c, "POST", path, body, &r);
    leo_free(path);
    json_decref(body);
    if (rc)
        return rc;
    print_secret_key(c, r.json, "created");
    wipe(r.body, r.len);
    leoctl_response_release(&r);
    return 0;
}

static int cmd_keys_list(struct ctx *c)
{
    int rc = need_tenant(c);
    if (rc)
        return rc;
    rc = need_session(c);
    if (rc)
        return rc;
    char *path = key_path(c, NULL, NULL);
    json_t *all;
    rc = fetch_list(c, path, 0, &all);
    leo_free(path);
    if (rc)
        return rc;
    print_list(c, all, 5, key_header, key_row);
    json_decref(all);
    return 0;
}

/* keys get / revoke / rotate: one request on one key. */
static int key_action(struct ctx *c, const char *method, const char *suffix)
{
    int rc = need_tenant(c);
    if (rc)
        return rc;
    rc = need_session(c);
    if (rc)
        return rc;
    char *path = key_path(c, c->pos[0], suffix);
    struct leoctl_response r;
    rc = call(c, method, path, NULL, &r);
    leo_free(path);
    if (rc)
        return rc;
    if (json_object_get(r.json, "secret")) {
        print_secret_key(c, r.json, "rotated: new");
        wipe(r.body, r.len);
    } else {
        print_one(c, r.json, 5, key_header, key_row);
    }
    leoctl_response_release(&r);
    return 0;
}

static int cmd_keys_get(struct ctx *c)
{
    return key_action(c, "GET", NULL);
}

static int cmd_keys_revoke(struct ctx *c)
{
    return key_action(c, "POST", "/revoke");
}

static int cmd_keys_rotate(struct ctx *c)
{
    return key_action(c, "POST", "/rotate");
}

/* ---- providers, deployments, models ---- */

static void provider_row(json_t *p, char **cells)
{
    cells[0] = cell_str(jstr(p, "id"));
    cells[1] = cell_str(jstr(p, "name"));
    cells[2] = cell_str(jstr(p, "type"));
    cells[3] = cell_str(jstr(p, "base_url"));
    cells[4] = cell_str(json_is_true(json_object_get(p, "enabled")) ? "enabled" : "disabled");
    cells[5] = cell_time(jstr(p, "created_at"));
}

static char *provider_header[] = {"ID", "NAME", "TYPE", "BASE URL", "STATUS", "CREATED"};

static int list_cmd(struct ctx *c, const char *path, int ncols, char **header, void (*row)(json_t *, char **))
{
    int rc = need_session(c);
    if (rc)
        return rc;
    json_t *all;
    rc = fetch_list(c, path, 0, &all);
    if (rc)
        return rc;
    print_list(c, all, ncols, header, row);
    json_decref(all);
    return 0;
}

/* POSTs body (consumed) to path and prints the answer as one row. */
static int create_cmd(struct ctx *c, const char *path, json_t *body, int ncols, char **header,
                      void (*row)(json_t *, char **))
{
    int rc = need_session(c);
    if (rc) {
        json_decref(body);
        return rc;
    }
    struct leoctl_response r;
    rc = call(c, "POST", path, body, &r);
    json_decref(body);
    if (rc)
        return rc;
    print_one(c, r.json, ncols, header, row);
    leoctl_response_release(&r);
    return 0;
}

/* A whole number option within [min, max] into *out; false (after saying why) when malformed. */
static bool number_opt(struct ctx *c, const char *name, long min, long max, json_int_t *out)
{
    const char *v = opt(c, name);
    char *end;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || n < min || n > max) {
        err("--%s must be a whole number from %ld to %ld", name, min, max);
        return false;
    }
    *out = n;
    return true;
}

static int cmd_providers_list(struct ctx *c)
{
    return list_cmd(c, "/providers", 6, provider_header, provider_row);
}

static int cmd_providers_create(struct ctx *c)
{
    const char *type = opt(c, "type"), *url = opt(c, "base-url"), *version = opt(c, "api-version");
    if (!type || !url) {
        err("providers create needs --type openai|azure|anthropic|gemini and --base-url URL");
        return EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s, s:s, s:s}", "name", c->pos[0], "type", type, "base_url", url);
    if (version)
        json_object_set_new(body, "api_version", json_string(version));
    return create_cmd(c, "/providers", body, 6, provider_header, provider_row);
}

static void credential_row(json_t *k, char **cells)
{
    char w[24];
    snprintf(w, sizeof(w), "%lld", (long long)json_integer_value(json_object_get(k, "weight")));
    cells[0] = cell_str(jstr(k, "id"));
    cells[1] = cell_str(jstr(k, "name"));
    cells[2] = cell_str(jstr(k, "masked"));
    cells[3] = cell_str(w);
    cells[4] = cell_str(json_is_true(json_object_get(k, "enabled")) ? "enabled" : "disabled");
    cells[5] = cell_time(jstr(k, "created_at"));
}

static char *credential_header[] = {"ID", "NAME", "SECRET", "WEIGHT", "STATUS", "CREATED"};

/* The secret comes from LEOCTL_CREDENTIAL_SECRET or the terminal, never from the command line (where the
 * process list and the shell history would keep it); only its masked form is printed. */
static int cmd_providers_add_credential(struct ctx *c)
{
    const char *name = opt(c, "name");
    json_int_t weight = 1;
    if (!name) {
        err("providers add-credential needs --name NAME");
        return EXIT_USAGE;
    }
    if (opt(c, "weight") && !number_opt(c, "weight", 1, 1000, &weight))
        return EXIT_USAGE;
    char secret[8200];
    const char *env = getenv("LEOCTL_CREDENTIAL_SECRET");
    if (env && *env) {
        if (strlen(env) >= sizeof(secret)) {
            err("LEOCTL_CREDENTIAL_SECRET is longer than %zu bytes", sizeof(secret) - 1);
            return EXIT_USAGE;
        }
        memcpy(secret, env, strlen(env) + 1);
    } else if (read_secret("Provider API key: ", secret, sizeof(secret)) != 0) {
        wipe(secret, sizeof(secret));
        err("cannot read the secret: set LEOCTL_CREDENTIAL_SECRET or run leoctl on a terminal");
        return EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s, s:s, s:I}", "name", name, "secret", secret, "weight", weight);
    wipe(secret, sizeof(secret));
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/providers");
    add_segment(&p, c->pos[0]);
    leo_buf_adds(&p, "/credentials");
    json_t *sv = json_object_get(body, "secret");
    int rc = need_session(c);
    struct leoctl_response r;
    if (rc == 0)
        rc = call(c, "POST", p.p, body, &r);
    wipe((char *)json_string_value(sv), json_string_length(sv));
    json_decref(body);
    leo_buf_release(&p);
    if (rc)
        return rc;
    print_one(c, r.json, 6, credential_header, credential_row);
    leoctl_response_release(&r);
    return 0;
}

static int cmd_providers_credentials(struct ctx *c)
{
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/providers");
    add_segment(&p, c->pos[0]);
    leo_buf_adds(&p, "/credentials");
    int rc = list_cmd(c, p.p, 6, credential_header, credential_row);
    leo_buf_release(&p);
    return rc;
}

static void deployment_row(json_t *d, char **cells)
{
    cells[0] = cell_str(jstr(d, "id"));
    cells[1] = cell_str(jstr(d, "provider"));
    cells[2] = cell_str(jstr(d, "model"));
    cells[3] = cell_str(json_is_true(json_object_get(d, "enabled")) ? "enabled" : "disabled");
    cells[4] = cell_time(jstr(d, "created_at"));
}

static char *deployment_header[] = {"ID", "PROVIDER", "UPSTREAM MODEL", "STATUS", "CREATED"};

static int cmd_deployments_list(struct ctx *c)
{
    return list_cmd(c, "/deployments", 5, deployment_header, deployment_row);
}

static int cmd_deployments_create(struct ctx *c)
{
    const char *provider = opt(c, "provider"), *model = opt(c, "model");
    if (!provider || !model) {
        err("deployments create needs --provider PROVIDER_ID and --model UPSTREAM_MODEL");
        return EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s, s:s}", "provider_id", provider, "model", model);
    return create_cmd(c, "/deployments", body, 5, deployment_header, deployment_row);
}

/* "provider/model@priority*weight, ..." */
static void model_row(json_t *m, char **cells)
{
    struct leo_buf b = LEO_BUF_INIT;
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(m, "deployments"), i, d)
    {
        if (i)
            leo_buf_adds(&b, ", ");
        add_clean(&b, jstr(d, "provider"));
        leo_buf_addch(&b, '/');
        add_clean(&b, jstr(d, "model"));
        leo_buf_addf(&b, "@%lld*%lld", (long long)json_integer_value(json_object_get(d, "priority")),
                     (long long)json_integer_value(json_object_get(d, "weight")));
    }
    cells[0] = cell_str(jstr(m, "id"));
    cells[1] = cell_str(jstr(m, "name"));
    cells[2] = cell_str(jstr(m, "strategy"));
    cells[3] = b.len ? leo_buf_detach(&b, NULL) : cell_str("-");
    leo_buf_release(&b);
    cells[4] = cell_str(json_is_true(json_object_get(m, "enabled")) ? "enabled" : "disabled");
}

static char *model_header[] = {"ID", "NAME", "STRATEGY", "DEPLOYMENTS (provider/model@priority*weight)", "STATUS"};

static int cmd_models_list(struct ctx *c)
{
    return list_cmd(c, "/models", 5, model_header, model_row);
}

/* --deployments ID[@PRIORITY][*WEIGHT],...: deployment ids from `deployments list`. */
static json_t *deployments_value(const char *v)
{
    json_t *a = json_array();
    const char *p = v;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[128];
        if (len == 0 || len >= sizeof(item)) {
            json_decref(a);
            return NULL;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        json_int_t prio = 0, weight = 1;
        char *star = strchr(item, '*'), *at = strchr(item, '@'), *end;
        if (star) {
            *star = '\0';
            weight = strtol(star + 1, &end, 10);
            if (star[1] == '\0' || *end) {
                json_decref(a);
                return NULL;
            }
        }
        if (at) {
            *at = '\0';
            prio = strtol(at + 1, &end, 10);
            if (at[1] == '\0' || *end) {
                json_decref(a);
                return NULL;
            }
        }
        json_array_append_new(a,
                              json_pack("{s:s, s:I, s:I}", "deployment_id", item, "priority", prio, "weight", weight));
        if (!comma)
            break;
        p = comma + 1;
    }
    return a;
}

static int cmd_models_create(struct ctx *c)
{
    const char *deps = opt(c, "deployments"), *strategy = opt(c, "strategy");
    json_t *a = deps ? deployments_value(deps) : NULL;
    if (a == NULL) {
        err("models create needs --deployments ID[@PRIORITY][*WEIGHT],... (ids from `leoctl deployments list`)");
        return EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s, s:o}", "name", c->pos[0], "deployments", a);
    if (strategy)
        json_object_set_new(body, "strategy", json_string(strategy));
    return create_cmd(c, "/models", body, 5, model_header, model_row);
}

/* ---- users ---- */

static void user_row(json_t *u, char **cells)
{
    cells[0] = cell_str(jstr(u, "id"));
    cells[1] = cell_str(jstr(u, "email"));
    struct leo_buf b = LEO_BUF_INIT;
    add_memberships(&b, json_object_get(u, "memberships"));
    cells[2] = leo_buf_detach(&b, NULL);
    cells[3] = cell_str(json_is_true(json_object_get(u, "disabled")) ? "disabled" : "active");
    cells[4] = cell_time(jstr(u, "created_at"));
}

static char *user_header[] = {"ID", "EMAIL", "ROLES", "STATUS", "CREATED"};

static int cmd_users_create(struct ctx *c)
{
    const char *email = opt(c, "email"), *role = opt(c, "role"), *tenant = opt(c, "tenant");
    if (!email || !role) {
        err("users create needs --email EMAIL and --role ROLE");
        return EXIT_USAGE;
    }
    char password[1100], again[1100];
    const char *env = getenv("LEOCTL_NEW_PASSWORD");
    if (env && *env) {
        if (strlen(env) >= sizeof(password)) {
            err("LEOCTL_NEW_PASSWORD is longer than %zu bytes", sizeof(password) - 1);
            return EXIT_USAGE;
        }
        memcpy(password, env, strlen(env) + 1);
    } else {
        if (read_secret("Password for the new user: ", password, sizeof(password)) != 0 ||
            read_secret("Again: ", again, sizeof(again)) != 0) {
            wipe(password, sizeof(password));
            wipe(again, sizeof(again));
            err("cannot read a password: set LEOCTL_NEW_PASSWORD or run leoctl on a terminal");
            return EXIT_USAGE;
        }
        bool same = strcmp(password, again) == 0;
        wipe(again, sizeof(again));
        if (!same) {
            wipe(password, sizeof(password));
            err("the passwords differ");
            return EXIT_USAGE;
        }
    }
    int rc = need_session(c);
    if (rc) {
        wipe(password, sizeof(password));
        return rc;
    }
    json_t *body = json_pack("{s:s, s:s, s:s}", "email", email, "password", password, "role", role);
    wipe(password, sizeof(password));
    if (tenant)
        json_object_set_new(body, "tenant_id", json_string(tenant));
    struct leoctl_response r;
    rc = call(c, "POST", "/users", body, &r);
    json_t *pw = json_object_get(body, "password");
    wipe((char *)json_string_value(pw), json_string_length(pw));
    json_decref(body);
    if (rc)
        return rc;
    print_one(c, r.json, 5, user_header, user_row);
    leoctl_response_release(&r);
    return 0;
}

static int cmd_users_list(struct ctx *c)
{
    int rc = need_session(c);
    if (rc)
        return rc;
    json_t *all;
    rc = fetch_list(c, "/users", 0, &all);
    if (rc)
        return rc;
    print_list(c, all, 5, user_header, user_row);
    json_decref(all);
    return 0;
}

/* ---- audit ---- */

static void audit_row(json_t *a, char **cells)
{
    char id[32];
    snprintf(id, sizeof(id), "%" JSON_INTEGER_FORMAT, json_integer_value(json_object_get(a, "id")));
    cells[0] = leo_strdup(id);
    cells[1] = cell_time(jstr(a, "at"));
    cells[2] = cell_str(jstr(a, "actor"));
    cells[3] = cell_str(jstr(a, "action"));
    cells[4] = cell_str(jstr(a, "target"));
}

static char *audit_header[] = {"ID", "AT", "ACTOR", "ACTION", "TARGET"};

static int cmd_audit_list(struct ctx *c)
{
    size_t max = 50;
    const char *limit = opt(c, "limit");
    if (limit) {
        char *end;
        long v = strtol(limit, &end, 10);
        if (*limit < '0' || *limit > '9' || *end || v < 1 || v > 100000) {
            err("--limit \"%s\": must be a number from 1 to 100000", limit);
            return EXIT_USAGE;
        }
        max = (size_t)v;
    }
    int rc = need_session(c);
    if (rc)
        return rc;
    static const char *filters[] = {"action", "target", "actor", "since", "until"};
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/audit");
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++) {
        const char *v = opt(c, filters[i]);
        if (!v)
            continue;
        char *esc = leoctl_escape(v);
        leo_buf_addf(&p, "%c%s=%s", strchr(p.p, '?') ? '&' : '?', filters[i], esc);
        leo_free(esc);
    }
    json_t *all;
    rc = fetch_list(c, p.p, max, &all);
    leo_buf_release(&p);
    if (rc)
        return rc;
    print_list(c, all, 5, audit_header, audit_row);
    json_decref(all);
    return 0;
}

static int cmd_audit_verify(struct ctx *c)
{
    err("the admin API has no endpoint to verify the audit chain; run `leo-controlplane audit verify` on the "
        "control plane host (it reads the database directly)");
    return EXIT_USAGE;
}

/* ---- provider test, routing overrides, forced cooldowns ---- */

/* Prints the outcome of POST /providers/{id}/test; exit status 0 only when the provider accepted the key. */
static int cmd_providers_test(struct ctx *c)
{
    int rc = need_session(c);
    if (rc)
        return rc;
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/providers");
    add_segment(&p, c->pos[0]);
    leo_buf_adds(&p, "/test");
    struct leoctl_response r;
    rc = call(c, "POST", p.p, NULL, &r);
    leo_buf_release(&p);
    if (rc)
        return rc;
    bool ok = json_is_true(json_object_get(r.json, "ok"));
    if (c->json) {
        print_json(r.json);
    } else {
        struct leo_buf b = LEO_BUF_INIT;
        json_t *status = json_object_get(r.json, "status");
        add_clean(&b, jstr(r.json, "result"));
        if (json_is_integer(status))
            leo_buf_addf(&b, ": HTTP %lld", (long long)json_integer_value(status));
        json_t *ms = json_object_get(r.json, "latency_ms");
        if (json_is_integer(ms))
            leo_buf_addf(&b, " in %lld ms", (long long)json_integer_value(ms));
        leo_buf_adds(&b, " (credential ");
        add_clean(&b, jstr(json_object_get(r.json, "credential"), "name"));
        leo_buf_adds(&b, ")");
        if (!ok) {
            leo_buf_adds(&b, ": ");
            add_clean(&b, jstr(r.json, "error"));
        }
        printf("%s\n", b.p);
        leo_buf_release(&b);
    }
    leoctl_response_release(&r);
    return ok ? 0 : EXIT_API;
}

static void override_row(json_t *o, char **cells)
{
    char w[48];
    json_t *weight = json_object_get(o, "weight");
    if (json_is_integer(weight))
        snprintf(w, sizeof(w), "weight=%lld", (long long)json_integer_value(weight));
    else
        snprintf(w, sizeof(w), "%s", jstr(o, "action") ? jstr(o, "action") : "-");
    const char *reason = jstr(o, "reason");
    cells[0] = cell_str(jstr(o, "id"));
    cells[1] = cell_str(jstr(o, "model"));
    cells[2] = cell_str(jstr(o, "deployment"));
    cells[3] = cell_str(w);
    cells[4] = cell_str(reason && *reason ? reason : "-");
    cells[5] = cell_time(jstr(o, "created_at"));
}

static char *override_header[] = {"ID", "MODEL", "DEPLOYMENT", "OVERRIDE", "REASON", "SET"};

static int cmd_overrides_list(struct ctx *c)
{
    return list_cmd(c, "/overrides", 6, override_header, override_row);
}

static int cmd_overrides_set(struct ctx *c)
{
    const char *model = opt(c, "model"), *dep = opt(c, "deployment"), *reason = opt(c, "reason");
    bool disable = opt(c, "disable") != NULL;
    json_int_t weight = 0;
    if (!model || !dep || disable == (opt(c, "weight") != NULL)) {
        err("overrides set needs --model MODEL_ID, --deployment DEPLOYMENT_ID and either --disable or --weight N");
        return EXIT_USAGE;
    }
    if (!disable && !number_opt(c, "weight", 0, 1000000, &weight))
        return EXIT_USAGE;
    json_t *body = json_pack("{s:s, s:s, s:s}", "model_id", model, "deployment_id", dep, "action",
                             disable ? "disable" : "weight");
    if (!disable)
        json_object_set_new(body, "weight", json_integer(weight));
    if (reason)
        json_object_set_new(body, "reason", json_string(reason));
    return create_cmd(c, "/overrides", body, 6, override_header, override_row);
}

/* DELETEs path and prints the removed object as one row. */
static int delete_cmd(struct ctx *c, const char *path, int ncols, char **header, void (*row)(json_t *, char **))
{
    int rc = need_session(c);
    if (rc)
        return rc;
    struct leoctl_response r;
    rc = call(c, "DELETE", path, NULL, &r);
    if (rc)
        return rc;
    print_one(c, r.json, ncols, header, row);
    leoctl_response_release(&r);
    return 0;
}

static int cmd_overrides_clear(struct ctx *c)
{
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/overrides");
    add_segment(&p, c->pos[0]);
    int rc = delete_cmd(c, p.p, 6, override_header, override_row);
    leo_buf_release(&p);
    return rc;
}

static void cooldown_row(json_t *k, char **cells)
{
    const char *reason = jstr(k, "reason");
    cells[0] = cell_str(jstr(k, "provider"));
    cells[1] = cell_str(jstr(k, "credential"));
    cells[2] = cell_str(jstr(k, "credential_id"));
    cells[3] = cell_time(jstr(k, "until"));
    cells[4] = cell_str(json_is_true(json_object_get(k, "active")) ? "active" : "over");
    cells[5] = cell_str(reason && *reason ? reason : "-");
}

static char *cooldown_header[] = {"PROVIDER", "CREDENTIAL", "CREDENTIAL ID", "UNTIL", "STATE", "REASON"};

static int cmd_cooldowns_list(struct ctx *c)
{
    return list_cmd(c, "/cooldowns", 6, cooldown_header, cooldown_row);
}

static char *cooldown_path(struct ctx *c)
{
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/providers");
    add_segment(&p, c->pos[0]);
    leo_buf_adds(&p, "/credentials");
    add_segment(&p, c->pos[1]);
    leo_buf_adds(&p, "/cooldown");
    return leo_buf_detach(&p, NULL);
}

/* "90s", "10m", "2h", "1d" → seconds; -1 when malformed. */
static long long duration_seconds(const char *v)
{
    size_t n = strlen(v);
    char unit = n ? v[n - 1] : 0;
    if (n < 2 || n - 1 > 7 || !strchr("smhd", unit) || strspn(v, "0123456789") != n - 1)
        return -1;
    long long count = strtoll(v, NULL, 10);
    return count * (unit == 'd' ? 86400 : unit == 'h' ? 3600 : unit == 'm' ? 60 : 1);
}

static int cmd_cooldowns_set(struct ctx *c)
{
    const char *dur = opt(c, "for"), *until = opt(c, "until"), *reason = opt(c, "reason");
    if ((dur == NULL) == (until == NULL)) {
        err("cooldowns set needs either --for DURATION (90s, 10m, 2h, 1d) or --until RFC3339");
        return EXIT_USAGE;
    }
    json_t *body = json_object();
    if (dur) {
        long long secs = duration_seconds(dur);
        if (secs <= 0) {
            err("--for \"%s\": expected a duration like 90s, 10m, 2h or 1d", dur);
            json_decref(body);
            return EXIT_USAGE;
        }
        json_object_set_new(body, "duration_s", json_integer(secs));
    } else {
        json_object_set_new(body, "until", json_string(until));
    }
    if (reason)
        json_object_set_new(body, "reason", json_string(reason));
    char *path = cooldown_path(c);
    int rc = create_cmd(c, path, body, 6, cooldown_header, cooldown_row);
    leo_free(path);
    return rc;
}

static int cmd_cooldowns_clear(struct ctx *c)
{
    char *path = cooldown_path(c);
    int rc = delete_cmd(c, path, 6, cooldown_header, cooldown_row);
    leo_free(path);
    return rc;
}

/* ---- usage report ---- */

static const char *const usage_groups[] = {"hour", "day", "model", "key", "tenant", NULL};

/* GET /usage with the filters; a table of the rows, their JSON (--json), or the API's CSV as it is (--csv). */
static int cmd_usage_report(struct ctx *c)
{
    static const struct {
        const char *opt, *param;
    } filters[] = {{"tenant", "tenant"}, {"key", "key"}, {"model", "model"}, {"from", "from"}, {"to", "to"},
                   {"group-by", "group_by"}};
    const char *group = opt(c, "group-by") ? opt(c, "group-by") : "hour";
    bool known = false;
    for (size_t i = 0; usage_groups[i]; i++)
        known = known || strcmp(usage_groups[i], group) == 0;
    if (!known) {
        err("--group-by \"%s\": must be hour, day, model, key or tenant", group);
        return EXIT_USAGE;
    }
    bool csv = opt(c, "csv") != NULL;
    if (csv && c->json) {
        err("give --csv or --json, not both");
        return EXIT_USAGE;
    }
    int rc = need_session(c);
    if (rc)
        return rc;
    struct leo_buf p = LEO_BUF_INIT;
    leo_buf_adds(&p, "/usage");
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++) {
        const char *v = opt(c, filters[i].opt);
        if (!v)
            continue;
        char *esc = leoctl_escape(v);
        leo_buf_addf(&p, "%c%s=%s", strchr(p.p, '?') ? '&' : '?', filters[i].param, esc);
        leo_free(esc);
    }
    if (csv)
        leo_buf_addf(&p, "%cformat=csv", strchr(p.p, '?') ? '&' : '?');
    struct leoctl_response r;
    rc = call(c, "GET", p.p, NULL, &r);
    leo_buf_release(&p);
    if (rc)
        return rc;
    if (csv) {
        fwrite(r.body, 1, r.len, stdout);
    } else if (c->json) {
        print_json(r.json);
    } else {
        /* the group's own column(s), then the measures, as the API names them */
        static const char *const measures[] = {"requests",          "errors",   "cache_hits", "prompt_tokens",
                                               "completion_tokens", "cost_usd", "saved_usd",  "avg_latency_ms"};
        bool by_key = strcmp(group, "key") == 0;
        const char *firsts[2] = {by_key ? "tenant" : group, by_key ? "key" : NULL};
        int nfirst = firsts[1] ? 2 : 1, ncols = nfirst + 8;
        struct table t = {.ncols = ncols};
        char *h[16];
        for (int k = 0; k < ncols; k++) {
            const char *name = k < nfirst ? firsts[k] : measures[k - nfirst];
            struct leo_buf b = LEO_BUF_INIT;
            for (const char *q = name; *q; q++)
                leo_buf_addch(&b, *q == '_' ? ' ' : (char)(*q >= 'a' && *q <= 'z' ? *q - 32 : *q));
            h[k] = leo_buf_detach(&b, NULL);
        }
        table_row(&t, h);
        size_t i;
        json_t *row;
        json_array_foreach(json_object_get(r.json, "rows"), i, row)
        {
            char *cells[16];
            for (int k = 0; k < ncols; k++) {
                json_t *v = json_object_get(row, k < nfirst ? firsts[k] : measures[k - nfirst]);
                char num[64] = "-";
                if (json_is_integer(v))
                    snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
                else if (json_is_real(v))
                    snprintf(num, sizeof(num), "%.6g", json_real_value(v));
                cells[k] = cell_str(json_is_string(v) ? json_string_value(v) : num);
            }
            table_row(&t, cells);
        }
        table_print(&t);
        if (json_is_true(json_object_get(r.json, "truncated")))
            err("only the first rows are shown: narrow the range with --from and --to");
    }
    leoctl_response_release(&r);
    return 0;
}

/* ---- table and dispatch ---- */

/* One command per entry reads better than one member per line. */
/* clang-format off */
static const struct command commands[] = {
    {"login", NULL, {"email="}, 0, cmd_login, "login --url URL --email EMAIL",
     "Opens a session; the password comes from LEOCTL_PASSWORD or a prompt on the terminal."},
    {"logout", NULL, {NULL}, 0, cmd_logout, "logout", "Ends the session on the server and forgets it here."},
    {"whoami", NULL, {NULL}, 0, cmd_whoami, "whoami", "Shows the logged-in user, its roles and the session."},
    {"tenants", "list", {NULL}, 0, cmd_tenants_list, "tenants list", "Lists the tenants you can see."},
    {"tenants", "create", {"slug="}, 1, cmd_tenants_create, "tenants create NAME [--slug SLUG]",
     "Creates a tenant; the slug defaults to NAME in lower case with other characters turned into '-'."},
    {"tenants", "get", {NULL}, 1, cmd_tenants_get, "tenants get ID", "Shows one tenant."},
    {"keys", "create", {"tenant=", "name=", "models=", "providers=", "expires=", "limits="}, 0, cmd_keys_create,
     "keys create --tenant ID --name NAME [--models a,b] [--providers p,q] [--expires never|90d|12h|RFC3339] "
     "[--limits JSON]",
     "Creates an API key and prints its secret, once."},
    {"keys", "list", {"tenant="}, 0, cmd_keys_list, "keys list --tenant ID",
     "Lists a tenant's keys (masked; the secret is never shown again)."},
    {"keys", "get", {"tenant="}, 1, cmd_keys_get, "keys get --tenant ID KEY_ID", "Shows one key (masked)."},
    {"keys", "revoke", {"tenant="}, 1, cmd_keys_revoke, "keys revoke --tenant ID KEY_ID",
     "Revokes a key; this is final."},
    {"keys", "rotate", {"tenant="}, 1, cmd_keys_rotate, "keys rotate --tenant ID KEY_ID",
     "Revokes a key and creates its successor; prints the new secret, once."},
    {"users", "create", {"email=", "role=", "tenant="}, 0, cmd_users_create,
     "users create --email EMAIL --role ROLE [--tenant ID]",
     "Creates a user; the password comes from LEOCTL_NEW_PASSWORD or a prompt on the terminal. Roles: owner, "
     "admin, operator, viewer (global), tenant_admin, tenant_member (with --tenant)."},
    {"users", "list", {NULL}, 0, cmd_users_list, "users list", "Lists the users you can see."},
    {"audit", "list", {"action=", "target=", "actor=", "since=", "until=", "limit="}, 0, cmd_audit_list,
     "audit list [--action A] [--target T] [--actor A] [--since T] [--until T] [--limit N]",
     "Lists audit entries, newest first (50 unless --limit says otherwise)."},
    {"providers", "list", {NULL}, 0, cmd_providers_list, "providers list", "Lists the upstream providers."},
    {"providers", "create", {"type=", "base-url=", "api-version="}, 1, cmd_providers_create,
     "providers create NAME --type openai|azure|anthropic|gemini --base-url URL [--api-version V]",
     "Creates a provider (no credential yet: see add-credential)."},
    {"providers", "add-credential", {"name=", "weight="}, 1, cmd_providers_add_credential,
     "providers add-credential PROVIDER_ID --name NAME [--weight N]",
     "Stores an upstream API key, sealed under the master key; the key comes from LEOCTL_CREDENTIAL_SECRET or a "
     "prompt on the terminal, and only its masked form is shown."},
    {"providers", "credentials", {NULL}, 1, cmd_providers_credentials, "providers credentials PROVIDER_ID",
     "Lists a provider's credentials (masked)."},
    {"deployments", "list", {NULL}, 0, cmd_deployments_list, "deployments list",
     "Lists the deployments (an upstream model at a provider)."},
    {"deployments", "create", {"provider=", "model="}, 0, cmd_deployments_create,
     "deployments create --provider PROVIDER_ID --model UPSTREAM_MODEL", "Creates a deployment."},
    {"models", "list", {NULL}, 0, cmd_models_list, "models list",
     "Lists the models clients can ask for, with their deployments."},
    {"models", "create", {"deployments=", "strategy="}, 1, cmd_models_create,
     "models create NAME --deployments ID[@PRIORITY][*WEIGHT],... [--strategy S]",
     "Creates a model mapping. Lower priorities are tried first; weights share requests within a priority."},
    {"providers", "test", {NULL}, 1, cmd_providers_test, "providers test PROVIDER_ID",
     "Calls the provider's model list with its first enabled credential; exits 0 only when the key is accepted."},
    {"overrides", "list", {NULL}, 0, cmd_overrides_list, "overrides list",
     "Lists the routing overrides (a model's deployment disabled or its weight pinned)."},
    {"overrides", "set", {"model=", "deployment=", "disable", "weight=", "reason="}, 0, cmd_overrides_set,
     "overrides set --model MODEL_ID --deployment DEPLOYMENT_ID --disable|--weight N [--reason TEXT]",
     "Disables a deployment of a model, or pins its weight; replaces the deployment's override if it has one."},
    {"overrides", "clear", {NULL}, 1, cmd_overrides_clear, "overrides clear OVERRIDE_ID", "Removes an override."},
    {"cooldowns", "list", {NULL}, 0, cmd_cooldowns_list, "cooldowns list",
     "Lists the forced cooldowns of provider credentials (active ones and those whose time is over)."},
    {"cooldowns", "set", {"for=", "until=", "reason="}, 2, cmd_cooldowns_set,
     "cooldowns set PROVIDER_ID CREDENTIAL_ID --for 10m|--until RFC3339 [--reason TEXT]",
     "Keeps every gateway from using a credential until the time given (at most 30 days)."},
    {"cooldowns", "clear", {NULL}, 2, cmd_cooldowns_clear, "cooldowns clear PROVIDER_ID CREDENTIAL_ID",
     "Ends a credential's forced cooldown."},
    {"usage", "report", {"tenant=", "key=", "model=", "from=", "to=", "group-by=", "csv"}, 0, cmd_usage_report,
     "usage report [--tenant SLUG] [--key NAME] [--model M] [--from T] [--to T] [--group-by G] [--csv]",
     "Usage per hour (default), day, model, key or tenant from the hourly rollups; --csv prints the API's CSV."},
    {"audit", "verify", {NULL}, 0, cmd_audit_verify, "audit verify",
     "Not available over the API: run `leo-controlplane audit verify` on the control plane host."},
};
/* clang-format on */

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out, const char *group)
{
    fprintf(out, "usage: leoctl [--url URL] [--json] COMMAND [OPTIONS]\n\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (!group || strcmp(group, commands[i].group) == 0)
            fprintf(out, "  leoctl %s\n", commands[i].usage);
    if (!group)
        fprintf(out, "\nglobal options:\n"
                     "  --url URL   the control plane (login; later commands use the session's)\n"
                     "  --json      print the API's JSON instead of text\n"
                     "  --help      help for a command: leoctl keys create --help\n"
                     "\nenvironment: LEOCTL_CONFIG (session file), LEOCTL_URL, LEOCTL_PASSWORD, "
                     "LEOCTL_NEW_PASSWORD, LEOCTL_CREDENTIAL_SECRET\n");
}

static void command_help(const struct command *cmd)
{
    printf("usage: leoctl %s\n\n%s\n\nglobal options: --url URL, --json, --help\n", cmd->usage, cmd->help);
}

/* Is a = a global option? Consumes its value from argv. 1 if handled, 0 if not global, -1 on a usage error. */
static int global_opt(struct ctx *c, const char *name, const char *value, int argc, char **argv, int *i, bool *help)
{
    if (strcmp(name, "json") == 0 && !value) {
        c->json = true;
        return 1;
    }
    if (strcmp(name, "help") == 0 && !value) {
        *help = true;
        return 1;
    }
    if (strcmp(name, "url") == 0) {
        if (!value) {
            if (*i + 1 >= argc) {
                err("--url needs a value");
                return -1;
            }
            value = argv[++*i];
        }
        c->url = value;
        return 1;
    }
    return 0;
}

static int run(int argc, char **argv, struct ctx *c)
{
    bool help = false;
    int i = 1;
    /* global options before the command words */
    for (; i < argc && strncmp(argv[i], "-", 1) == 0; i++) {
        if (strcmp(argv[i], "-h") == 0) {
            help = true;
            continue;
        }
        const char *name = argv[i] + 2, *eq = strchr(argv[i], '=');
        char nbuf[32];
        const char *value = NULL;
        if (strncmp(argv[i], "--", 2) != 0 || strlen(name) == 0) {
            err("unknown option \"%s\"", argv[i]);
            return EXIT_USAGE;
        }
        if (eq) {
            snprintf(nbuf, sizeof(nbuf), "%.*s", (int)(eq - name), name);
            name = nbuf;
            value = eq + 1;
        }
        int g = global_opt(c, name, value, argc, argv, &i, &help);
        if (g < 0)
            return EXIT_USAGE;
        if (g == 0) {
            err("unknown option \"%s\" (command options go after the command)", argv[i]);
            usage(stderr, NULL);
            return EXIT_USAGE;
        }
    }
    if (i >= argc) {
        usage(help ? stdout : stderr, NULL);
        return help ? 0 : EXIT_USAGE;
    }
    const char *group = argv[i++];
    bool known_group = false;
    for (size_t k = 0; k < NCOMMANDS; k++)
        known_group |= strcmp(commands[k].group, group) == 0;
    if (!known_group) {
        err("unknown command \"%s\"", group);
        usage(stderr, NULL);
        return EXIT_USAGE;
    }
    const char *verb = (i < argc && argv[i][0] != '-') ? argv[i] : NULL;
    for (size_t k = 0; k < NCOMMANDS && !c->cmd; k++) {
        if (strcmp(commands[k].group, group) != 0)
            continue;
        if (!commands[k].verb)
            c->cmd = &commands[k];
        else if (verb && strcmp(commands[k].verb, verb) == 0)
            c->cmd = &commands[k];
    }
    if (!c->cmd) {
        /* "leoctl keys --help" lists the group's commands */
        bool group_help = help;
        for (int k = i; k < argc; k++)
            group_help |= strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0;
        if (group_help && !verb) {
            usage(stdout, group);
            return 0;
        }
        if (verb)
            err("unknown command \"%s %s\"", group, verb);
        else
            err("\"%s\" needs a subcommand", group);
        usage(stderr, group);
        return EXIT_USAGE;
    }
    if (c->cmd->verb)
        i++;

    /* the command's options and positional arguments, in any order; "--" ends the options */
    bool only_pos = false;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == '\0') {
            if (c->npos >= MAX_POS) {
                err("too many arguments");
                return EXIT_USAGE;
            }
            c->pos[c->npos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (strcmp(a, "-h") == 0) {
            help = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            err("unknown option \"%s\" for %s%s%s", a, group, c->cmd->verb ? " " : "",
                c->cmd->verb ? c->cmd->verb : "");
            return EXIT_USAGE;
        }
        const char *name = a + 2, *eq = strchr(a, '='), *value = NULL;
        char nbuf[32];
        if (eq) {
            snprintf(nbuf, sizeof(nbuf), "%.*s", (int)(eq - name), name);
            name = nbuf;
            value = eq + 1;
        }
        int g = global_opt(c, name, value, argc, argv, &i, &help);
        if (g < 0)
            return EXIT_USAGE;
        if (g > 0)
            continue;
        int found = -1;
        for (int k = 0; k < MAX_OPTS && c->cmd->opts[k]; k++) {
            const char *o = c->cmd->opts[k];
            size_t n = strlen(name);
            if (strncmp(o, name, n) == 0 && (o[n] == '\0' || o[n] == '='))
                found = k;
        }
        if (found < 0) {
            err("unknown option \"--%s\" for %s%s%s", name, group, c->cmd->verb ? " " : "",
                c->cmd->verb ? c->cmd->verb : "");
            fprintf(stderr, "usage: leoctl %s\n", c->cmd->usage);
            return EXIT_USAGE;
        }
        bool takes = strchr(c->cmd->opts[found], '=') != NULL;
        if (takes && !value) {
            if (i + 1 >= argc) {
                err("--%s needs a value", name);
                return EXIT_USAGE;
            }
            value = argv[++i];
        } else if (!takes && value) {
            err("--%s takes no value", name);
            return EXIT_USAGE;
        }
        c->optval[found] = takes ? value : "";
    }
    if (help) {
        command_help(c->cmd);
        return 0;
    }
    if (c->npos != c->cmd->npos) {
        err("%s%s%s: expected %d argument%s, got %d", group, c->cmd->verb ? " " : "", c->cmd->verb ? c->cmd->verb : "",
            c->cmd->npos, c->cmd->npos == 1 ? "" : "s", c->npos);
        fprintf(stderr, "usage: leoctl %s\n", c->cmd->usage);
        return EXIT_USAGE;
    }
    char e[512];
    c->session_path = leoctl_session_path(e, sizeof(e));
    if (!c->session_path) {
        err("%s", e);
        return EXIT_API;
    }
    return c->cmd->fn(c);
}

int main(int argc, char **argv)
{
    if (leoctl_global_init() != 0) {
        err("cannot initialise libcurl");
        return EXIT_API;
    }
    struct ctx c;
    memset(&c, 0, sizeof(c));
    int rc = run(argc, argv, &c);
    if (fflush(stdout) != 0 && rc == 0) {
        err("cannot write the output");
        rc = EXIT_API;
    }
    leoctl_session_clear(&c.session);
    leo_free(c.session_path);
    leo_free(c.base);
    leoctl_global_cleanup();
    return rc;
}
