/*
 * follower.c — polls the control plane's snapshot in Redis, applies new versions, keeps a file cache.
 *
 * One GET of the version key per poll is cheap for Redis (a few hundred per second for a large fleet) and
 * keeps the worst-case delay between a publication and its use at one interval plus one fetch. At most one
 * command of the follower is in flight at a time, so a slow Redis never piles up polls.
 *
 * The cache is written with blocking calls on the loop thread: it happens once per published change, the
 * file is small, and an atomic rename keeps a concurrent reader (another worker starting) from seeing a
 * partial document.
 */
#include "follower.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/alloc.h"
#include "../common/error.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/secretbox.h"

#define KEY_VERSION "leo:snapshot:version"
#define KEY_DOC "leo:snapshot"

struct leo_follower {
    uv_loop_t *loop;
    struct leo_redis *redis;
    char *cache_path;
    leo_follower_apply_cb apply;
    void *ud;
    uint64_t version; /* last applied, 0 for none */
    bool busy;        /* a command of ours is in flight */
    bool stopped;
    bool warned_down; /* "redis unreachable" logged once per outage */
    int handles;      /* open timers; the struct is freed when they and the command in flight are done */
    uv_timer_t poll, cold;
};

static void maybe_free(struct leo_follower *f)
{
    if (f->stopped && f->handles == 0 && !f->busy) {
        leo_free(f->cache_path);
        leo_free(f);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    struct leo_follower *f = h->data;
    f->handles--;
    maybe_free(f);
}

/* Checks the document's shape and reads its version; 0 or LEO_EPARSE with a reason. */
static int doc_check(const char *json, size_t len, uint64_t *version, const char **why)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = LEO_EPARSE;
    if (root == NULL) {
        *why = "not valid JSON";
        return rc;
    }
    json_t *v = json_object_get(root, "version");
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        *why = "\"version\" is not a positive integer";
    else if (!json_is_array(json_object_get(root, "tenants")))
        *why = "\"tenants\" is not an array";
    else {
        *version = (uint64_t)json_integer_value(v);
        rc = 0;
    }
    json_decref(root);
    return rc;
}

static void cache_write(struct leo_follower *f, const char *json, size_t len)
{
    if (f->cache_path == NULL)
        return;
    char tmp[4096];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", f->cache_path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        leo_warn("snapshot cache path is too long: %s", f->cache_path);
        return;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        leo_warn("cannot write the snapshot cache %s: %s", tmp, strerror(errno));
        return;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, json + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            leo_warn("cannot write the snapshot cache %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        leo_warn("cannot write the snapshot cache %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return;
    }
    if (rename(tmp, f->cache_path) != 0) {
        leo_warn("cannot rename %s to %s: %s", tmp, f->cache_path, strerror(errno));
        unlink(tmp);
    }
}

/* Reads the cache into buf; 0, or an error after logging why (a missing file is only debug news). */
static int cache_read(struct leo_follower *f, struct leo_buf *buf)
{
    FILE *fp = fopen(f->cache_path, "rb");
    if (fp == NULL) {
        if (errno == ENOENT)
            leo_info("no snapshot cache at %s", f->cache_path);
        else
            leo_warn("cannot open the snapshot cache %s: %s", f->cache_path, strerror(errno));
        return LEO_EIO;
    }
    char chunk[16384];
    size_t n;
    int rc = 0;
    while (rc == 0 && (n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
        rc = leo_buf_add(buf, chunk, n);
    if (rc == 0 && ferror(fp))
        rc = LEO_EIO;
    fclose(fp);
    if (rc)
        leo_warn("cannot read the snapshot cache %s: %s", f->cache_path, leo_strerror(rc));
    return rc;
}

static void deliver(struct leo_follower *f, const char *json, size_t len, uint64_t version, bool from_cache)
{
    f->version = version;
    f->apply(json, len, version, f->ud);
    if (!from_cache)
        cache_write(f, json, len);
}

static void on_cold_start(uv_timer_t *t)
{
    struct leo_follower *f = t->data;
    if (f->stopped || f->version != 0 || f->cache_path == NULL)
        return;
    struct leo_buf buf;
    leo_buf_init(&buf, LEO_FOLLOWER_MAX_BYTES, 0);
    uint64_t version = 0;
    const char *why = NULL;
    if (cache_read(f, &buf) == 0) {
        if (doc_check(buf.p, buf.len, &version, &why) != 0) {
            leo_warn("snapshot cache %s ignored: %s", f->cache_path, why);
        } else {
            leo_warn("no snapshot from redis within %d ms: serving the cached snapshot version %" PRIu64 " from %s",
                     LEO_FOLLOWER_COLD_START_MS, version, f->cache_path);
            deliver(f, buf.p, buf.len, version, true);
        }
    }
    leo_buf_release(&buf);
}

static void on_doc(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    struct leo_follower *f = ud;
    f->busy = false;
    if (f->stopped) {
        maybe_free(f);
        return;
    }
    if (err || reply->type == REDIS_REPLY_NIL)
        return; /* the next poll tries again */
    if (reply->type != REDIS_REPLY_STRING) {
        leo_warn("%s: expected a string reply, got type %d", KEY_DOC, reply->type);
        return;
    }
    if (reply->len > LEO_FOLLOWER_MAX_BYTES) {
        leo_error("%s is %zu bytes, more than the %u allowed: not applied", KEY_DOC, (size_t)reply->len,
                  LEO_FOLLOWER_MAX_BYTES);
        return;
    }
    uint64_t version = 0;
    const char *why = NULL;
    if (doc_check(reply->str, reply->len, &version, &why) != 0) {
        leo_error("%s rejected: %s; still serving version %" PRIu64, KEY_DOC, why, f->version);
        return;
    }
    if (version == f->version)
        return;
    deliver(f, reply->str, reply->len, version, false);
}

static int fetch_doc(struct leo_follower *f)
{
    const char *argv[] = {"GET", KEY_DOC};
    int rc = leo_redis_command_argv(f->redis, on_doc, f, 2, argv, NULL);
    if (rc == 0)
        f->busy = true;
    return rc;
}

/* The version key holds what INCR left there: a decimal string. */
static bool reply_u64(const redisReply *reply, uint64_t *out)
{
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        *out = (uint64_t)reply->integer;
        return true;
    }
    if (reply->type != REDIS_REPLY_STRING || reply->len == 0 || reply->len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < reply->len; i++) {
        char ch = reply->str[i];
        if (ch < '0' || ch > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(ch - '0');
    }
    *out = v;
    return v > 0;
}

static void on_version(struct leo_redis *r, int err, redisReply *reply, void *ud)
{
    struct leo_follower *f = ud;
    f->busy = false;
    if (f->stopped) {
        maybe_free(f);
        return;
    }
    if (err) {
        leo_debug("%s: %s", KEY_VERSION, leo_strerror(err));
        return;
    }
    uint64_t v = 0;
    if (reply->type == REDIS_REPLY_NIL)
        return; /* nothing published yet */
    if (!reply_u64(reply, &v)) {
        leo_warn("%s: not a positive integer", KEY_VERSION);
        return;
    }
    if (v != f->version)
        fetch_doc(f); /* a failure here is retried by the next poll */
}

static void on_poll(uv_timer_t *t)
{
    struct leo_follower *f = t->data;
    if (f->stopped || f->busy)
        return;
    if (!leo_redis_connected(f->redis)) {
        if (!f->warned_down) {
            leo_warn("control plane snapshot: redis is unreachable, still serving version %" PRIu64, f->version);
            f->warned_down = true;
        }
        return;
    }
    if (f->warned_down) {
        leo_info("control plane snapshot: redis is reachable again");
        f->warned_down = false;
    }
    const char *argv[] = {"GET", KEY_VERSION};
    if (leo_redis_command_argv(f->redis, on_version, f, 2, argv, NULL) == 0)
        f->busy = true;
}

struct leo_follower *leo_follower_start(uv_loop_t *loop, struct leo_redis *redis, const char *cache_path,
                                        leo_follower_apply_cb apply, void *ud)
{
    struct leo_follower *f = leo_new(struct leo_follower);
    f->loop = loop;
    f->redis = redis;
    f->cache_path = cache_path ? leo_strdup(cache_path) : NULL;
    f->apply = apply;
    f->ud = ud;
    uv_timer_init(loop, &f->poll);
    uv_timer_init(loop, &f->cold);
    f->poll.data = f->cold.data = f;
    f->handles = 2;
    /* the first poll runs on the next loop iteration, never from inside this call */
    uv_timer_start(&f->poll, on_poll, 0, LEO_FOLLOWER_POLL_MS);
    uv_timer_start(&f->cold, on_cold_start, LEO_FOLLOWER_COLD_START_MS, 0);
    uv_unref((uv_handle_t *)&f->poll);
    uv_unref((uv_handle_t *)&f->cold);
    return f;
}

void leo_follower_stop(struct leo_follower *f)
{
    if (f == NULL)
        return;
    f->stopped = true;
    uv_close((uv_handle_t *)&f->poll, on_handle_closed);
    uv_close((uv_handle_t *)&f->cold, on_handle_closed);
}

uint64_t leo_follower_version(const struct leo_follower *f)
{
    return f->version;
}

/* The master key ring, read from the environment on first use (common/secretbox.h). A malformed key is
 * logged once and leaves the ring empty: credentials then stay sealed and the providers that need them are
 * left out, while everything else keeps serving. */
static const struct leo_secretbox_ring *master_ring(void)
{
    static struct leo_secretbox_ring ring;
    static bool loaded;
    if (!loaded) {
        loaded = true;
        struct leo_buf err = LEO_BUF_INIT;
        if (leo_secretbox_ring_from_env(&ring, &err) != 0)
            leo_error("master key: %s; provider credentials from the control plane cannot be opened", err.p);
        leo_buf_release(&err);
    }
    return &ring;
}

void leo_follower_metrics_describe(void)
{
    leo_metrics_describe("leo_snapshot_credentials_total", LEO_METRIC_COUNTER,
                         "Provider credentials from the control plane's snapshot, by result of opening them.");
}

/* Removes the members of arr (objects) whose "name" is name. */
static void drop_named(json_t *arr, const char *name)
{
    for (size_t i = json_array_size(arr); i-- > 0;) {
        const char *n = json_string_value(json_object_get(json_array_get(arr, i), "name"));
        if (n && strcmp(n, name) == 0)
            json_array_remove(arr, i);
    }
}

static json_t *array_member(json_t *obj, const char *key)
{
    json_t *a = json_object_get(obj, key);
    if (!json_is_array(a)) {
        a = json_array();
        json_object_set_new(obj, key, a);
    }
    return a;
}

/*
 * Turns the snapshot's providers into configuration providers in file (replacing the file's of the same
 * name): credentials are opened with the master key (associated data: the credential id) and given as
 * {"label", "value", "weight", "cooldown_until_ms"?, "cooldown_reason"?} keys. A provider whose credentials all fail to open is left out (its name is
 * added to dropped), with an error naming the provider, the credential and why; never a secret.
 */
static void overlay_providers(json_t *file, json_t *providers, json_t *dropped)
{
    const struct leo_secretbox_ring *ring = master_ring();
    json_t *out = array_member(file, "providers");
    size_t i;
    json_t *sp;
    json_array_foreach(providers, i, sp)
    {
        const char *name = json_string_value(json_object_get(sp, "name"));
        if (name == NULL)
            continue; /* the configuration parser reports what is wrong with the rest */
        json_t *cp = json_deep_copy(sp);
        json_object_del(cp, "credentials");
        json_t *creds = json_object_get(sp, "credentials");
        json_t *keys = json_array();
        size_t j, failed = 0;
        json_t *cr;
        json_array_foreach(creds, j, cr)
        {
            const char *id = json_string_value(json_object_get(cr, "id"));
            const char *cname = json_string_value(json_object_get(cr, "name"));
            const char *sealed = json_string_value(json_object_get(cr, "sealed"));
            struct leo_buf plain = LEO_BUF_INIT;
            const char *why = "the credential is malformed";
            int rc = id && cname && sealed ? leo_secretbox_open(ring, leo_str_c(sealed), leo_str_c(id), &plain, &why)
                                           : LEO_EPARSE;
            if (rc != 0) {
                leo_error("provider \"%s\": credential \"%s\" cannot be opened: %s%s", name, cname ? cname : "?", why,
                          rc == LEO_ENOTFOUND ? " (set LEO_MASTER_KEY to the control plane's master key)" : "");
                leo_metrics_add("leo_snapshot_credentials_total", "result=\"failed\"", 1);
                failed++;
            } else {
                struct leo_buf label = LEO_BUF_INIT;
                leo_buf_addf(&label, "cp:%s", cname);
                json_t *k = json_pack("{s:s,s:s%}", "label", label.p, "value", plain.p, plain.len);
                json_t *w = json_object_get(cr, "weight");
                if (json_is_integer(w))
                    json_object_set(k, "weight", w);
                /* a forced cooldown (the control plane's credential_cooldowns): the router skips the key until
                 * then (gateway/router.h) */
                static const char *const passed[] = {"cooldown_until_ms", "cooldown_reason"};
                for (size_t x = 0; x < 2; x++) {
                    json_t *v = json_object_get(cr, passed[x]);
                    if (v)
                        json_object_set(k, passed[x], v);
                }
                json_array_append_new(keys, k);
                leo_buf_release(&label);
                leo_metrics_add("leo_snapshot_credentials_total", "result=\"opened\"", 1);
            }
            leo_secretbox_wipe(&plain);
        }
        if (failed > 0 && json_array_size(keys) == 0) {
            leo_error("provider \"%s\" is left out: none of its %zu credentials could be opened", name, failed);
            json_array_append_new(dropped, json_string(name));
            json_decref(keys);
            json_decref(cp);
            continue;
        }
        if (json_array_size(keys) > 0)
            json_object_set_new(cp, "api_keys", keys);
        else
            json_decref(keys);
        drop_named(out, name);
        json_array_append_new(out, cp);
    }
}

static bool name_in(json_t *names, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v)
    {
        if (strcmp(json_string_value(v), name) == 0)
            return true;
    }
    return false;
}

/* The snapshot's models replace the file's of the same name; deployments at a provider that was left out
 * are dropped, and a model left with none is not installed. */
static void overlay_models(json_t *file, json_t *models, json_t *dropped)
{
    json_t *out = array_member(file, "models");
    size_t i;
    json_t *sm;
    json_array_foreach(models, i, sm)
    {
        const char *name = json_string_value(json_object_get(sm, "name"));
        if (name == NULL)
            continue;
        json_t *cm = json_deep_copy(sm);
        json_t *deps = json_object_get(cm, "deployments");
        for (size_t j = json_array_size(deps); j-- > 0;) {
            const char *prov = json_string_value(json_object_get(json_array_get(deps, j), "provider"));
            if (prov && name_in(dropped, prov))
                json_array_remove(deps, j);
        }
        if (json_is_array(deps) && json_array_size(deps) == 0) {
            leo_error("model \"%s\" is left out: all its deployments are at providers that were left out", name);
            json_decref(cm);
            continue;
        }
        drop_named(out, name);
        json_array_append_new(out, cm);
    }
}

/* The tenants of the merged configuration: the snapshot's, plus the file's tenants cut down to their admin keys
 * ("admin": true). The control plane publishes no admin keys, and without one a following gateway's operational
 * APIs (/v1/status/deployments, ...) would be out of reach; they are the gateway operator's, set in its own file.
 * A file tenant whose id the snapshot also has keeps nothing (logged): the control plane owns that tenant. */
static json_t *merge_tenants(const char *path, json_t *file_tenants, json_t *snap_tenants)
{
    json_t *out = json_copy(snap_tenants);
    size_t i;
    json_t *ft;
    json_array_foreach(file_tenants, i, ft)
    {
        const char *id = json_string_value(json_object_get(ft, "id"));
        json_t *keys = json_object_get(ft, "keys");
        if (id == NULL || !json_is_array(keys))
            continue;
        json_t *admin = json_array();
        size_t j;
        json_t *k;
        json_array_foreach(keys, j, k)
        {
            if (json_is_true(json_object_get(k, "admin")))
                json_array_append(admin, k);
        }
        bool taken = false;
        size_t x;
        json_t *st;
        json_array_foreach(snap_tenants, x, st)
        {
            const char *sid = json_string_value(json_object_get(st, "id"));
            taken = taken || (sid && strcmp(sid, id) == 0);
        }
        if (json_array_size(admin) > 0 && taken)
            leo_warn("%s: the admin keys of tenant \"%s\" are not kept: the control plane has a tenant of that id", path,
                     id);
        if (json_array_size(admin) > 0 && !taken) {
            json_t *t = json_copy(ft);
            json_object_set(t, "keys", admin);
            json_array_append_new(out, t);
        }
        json_decref(admin);
    }
    return out;
}

int leo_config_overlay_file(const char *path, const char *snapshot_json, size_t len, struct leo_config **out,
                            struct leo_buf *err)
{
    *out = NULL;
    json_error_t jerr;
    json_t *snap = json_loadb(snapshot_json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (snap == NULL) {
        if (err)
            leo_buf_addf(err, "snapshot: invalid JSON at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
        return LEO_ECONFIG;
    }
    json_t *tenants = json_object_get(snap, "tenants");
    json_t *providers = json_object_get(snap, "providers");
    json_t *models = json_object_get(snap, "models");
    const char *bad = !json_is_array(tenants)                  ? "\"tenants\" is not an array"
                      : providers && !json_is_array(providers) ? "\"providers\" is not an array"
                      : models && !json_is_array(models)       ? "\"models\" is not an array"
                                                               : NULL;
    if (bad) {
        if (err)
            leo_buf_addf(err, "snapshot: %s", bad);
        json_decref(snap);
        return LEO_ECONFIG;
    }
    json_t *file = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (file == NULL) {
        if (err)
            leo_buf_addf(err, "%s: %s (line %d, column %d)", path, jerr.text, jerr.line, jerr.column);
        json_decref(snap);
        return LEO_ECONFIG;
    }
    if (!json_is_object(file)) {
        if (err)
            leo_buf_addf(err, "%s: expected a JSON object", path);
        json_decref(file);
        json_decref(snap);
        return LEO_ECONFIG;
    }
    json_object_set_new(file, "tenants", merge_tenants(path, json_object_get(file, "tenants"), tenants));
    json_t *dropped = json_array();
    if (providers)
        overlay_providers(file, providers, dropped);
    if (models)
        overlay_models(file, models, dropped);
    json_decref(dropped);
    char *text = json_dumps(file, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(file);
    json_decref(snap);
    if (text == NULL) {
        if (err)
            leo_buf_adds(err, "cannot serialise the merged configuration");
        return LEO_ECONFIG;
    }
    char source[4096];
    snprintf(source, sizeof(source), "%s+snapshot", path);
    int rc = leo_config_parse_overlay(text, strlen(text), source, out, err);
    /* the merged text holds the opened provider keys: wiped before it is freed. (jansson's own copies in the
     * freed tree are not wiped: a known limit.) */
    sodium_memzero(text, strlen(text));
    free(text);
    return rc;
}
