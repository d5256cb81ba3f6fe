/*
 * snapshot.h — compiles the gateways' view of tenants, API keys, providers and models from PostgreSQL and
 * publishes it to Redis (docs/controlplane.md, "Snapshot protocol").
 *
 * The document is {"version": N, "tenants": [{"id", "allow_byok", "keys": [{"name", "hash", "quotas"?,
 * "models"?}]}], "providers": [{"name", "type", "base_url", "api_version"?, "timeouts"?, "credentials":
 * [{"id", "name", "weight", "sealed", "cooldown_until_ms"?, "cooldown_reason"?}]}], "models": [{"name",
 * "strategy", "deployments": [{"provider", "model", "priority", "weight", "limits", "override"?}]}]}:
 * active tenants, and only their keys that are active and not expired, as keyed hashes ("kh1:..."), never
 * secrets; enabled providers with their enabled credentials still sealed (common/secretbox.h), which only a
 * gateway holding the master key can open, and a credential under a forced cooldown carries its end (Unix ms)
 * and reason; enabled models with their usable deployments, a routing override as {"action": "disable" |
 * "weight", "reason"} (a pinned weight is already the deployment's "weight"). It is written with
 * one Lua script that sets leo:snapshot and increments leo:snapshot:version together, so a gateway never sees
 * a version without its document.
 *
 * When it publishes: at start; after every committed change to tenants, keys or the provider catalogue
 * (leo_snapshot_changed); when the next key expires or forced cooldown ends; and every LEO_SNAPSHOT_REFRESH_MS, which also restores
 * the keys if Redis lost them (a republication of an unchanged document keeps its version). Changes that
 * arrive while a publication runs are folded into one more run. If PostgreSQL or Redis is down the publisher
 * logs once per outage and retries every LEO_SNAPSHOT_RETRY_MS; admin writes never wait for it.
 *
 * Not thread-safe: every function runs on the loop thread.
 */
#ifndef LEO_CP_SNAPSHOT_H
#define LEO_CP_SNAPSHOT_H

#include <uv.h>

#include "../common/buf.h"

#define LEO_SNAPSHOT_RETRY_MS 1000
#define LEO_SNAPSHOT_REFRESH_MS 10000

struct leo_snapshot;

/**
 * Starts the publisher: a PostgreSQL connection of its own (conninfo) and a Redis connection (redis_url,
 * common/redis.h). Returns 0 and *out, or LEO_ECONFIG for a bad Redis URL (message appended to err, without
 * the password). The first publication runs as soon as both are up. The publisher started last is the one
 * leo_snapshot_changed notifies (the daemon runs one).
 */
int leo_snapshot_start(uv_loop_t *loop, const char *conninfo, const char *redis_url, struct leo_snapshot **out,
                       struct leo_buf *err);

/** Tells the running publisher (if any) that tenants or keys changed and committed; it republishes soon.
 *  Never blocks and never fails. */
void leo_snapshot_changed(void);

/** Stops publishing, closes both connections and calls cb(ud) (may be NULL) from the loop once everything is
 *  released. Call once. */
void leo_snapshot_close(struct leo_snapshot *s, void (*cb)(void *ud), void *ud);

#endif
