/*
 * follower.h — a gateway worker following the control plane's published snapshot (docs/controlplane.md,
 * "Snapshot protocol").
 *
 * The control plane keeps two Redis keys: leo:snapshot:version (an integer that changes with every
 * publication) and leo:snapshot (the JSON document {"version": N, "tenants": [...]}). The follower polls the
 * version every 200 ms with GET on the worker's Redis connection (common/redis.h refuses SUBSCRIBE on a
 * shared connection, and a poll needs no second connection, survives reconnects without a resubscribe, and
 * bounds the delay at one interval), fetches the document when the version differs from the last one seen,
 * and hands it to the apply callback.
 *
 * Invariants:
 * - apply is called on the loop thread, once per distinct version, never from inside leo_follower_start.
 * - Any change of version counts, not only an increase: a Redis that lost its data starts counting again.
 * - Every document passed to apply has a numeric "version" and a "tenants" array; anything else is logged and
 *   skipped, and the last good snapshot keeps serving.
 * - While Redis or the control plane is down nothing is applied: the worker keeps its last snapshot.
 * - cache_path (optional) receives each applied document (written to a temporary file beside it, then
 *   renamed, so readers never see half a file). When no document has come from Redis within
 *   LEO_FOLLOWER_COLD_START_MS of the start, the cached one is applied instead (cold start with Redis down).
 */
#ifndef LEO_FOLLOWER_H
#define LEO_FOLLOWER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../common/buf.h"
#include "../common/redis.h"
#include "config.h"

#define LEO_FOLLOWER_POLL_MS 200
#define LEO_FOLLOWER_COLD_START_MS 1000
#define LEO_FOLLOWER_MAX_BYTES (64u << 20) /* a larger document is refused (logged, not applied) */

struct leo_follower;

/** Receives a snapshot document (json of len bytes, NUL-terminated, valid only during the call) and its
 *  version. */
typedef void (*leo_follower_apply_cb)(const char *json, size_t len, uint64_t version, void *ud);

/**
 * Starts following on loop through redis (owned by the caller, which must keep it alive until
 * leo_follower_stop). cache_path may be NULL (no cache, no cold start from it); it is copied. Never fails.
 * The follower's timers do not keep the loop alive.
 */
struct leo_follower *leo_follower_start(uv_loop_t *loop, struct leo_redis *redis, const char *cache_path,
                                        leo_follower_apply_cb apply, void *ud);

/** Stops polling; apply is never called again. A command in flight is answered into the void; the memory is
 *  freed once its timers have closed. NULL is a no-op. Call once, from the loop thread. */
void leo_follower_stop(struct leo_follower *f);

/** The version last handed to apply, 0 before the first. */
uint64_t leo_follower_version(const struct leo_follower *f);

/**
 * Builds a configuration from the JSON file at path and the snapshot_json (len bytes), through
 * leo_config_parse_overlay:
 * - the file's "tenants" are replaced by the snapshot's, except for the file's admin keys ("admin": true, for
 *   the gateway's operational APIs; the control plane publishes none): a file tenant whose id the snapshot does
 *   not have is kept with its admin keys only (its other keys are dropped), one whose id it has keeps nothing;
 * - the snapshot's "providers" (optional) replace the file's of the same name or are added; their sealed
 *   credentials are opened in memory with the master key ring from the environment (LEO_MASTER_KEY,
 *   LEO_MASTER_KEY_NEW, LEO_MASTER_KEY_PREVIOUS, each also as _FILE; common/secretbox.h) and become the
 *   provider's keys, with their forced cooldowns ("cooldown_until_ms", "cooldown_reason"), which the router
 *   honours. A credential that cannot be opened is logged (provider, credential, why) and skipped; a
 *   provider none of whose credentials opens is left out, with the deployments that use it;
 * - the snapshot's "models" (optional) replace the file's of the same name or are added; a deployment's
 *   "override" ({"action": "disable"|"weight", "reason"}) is kept: a disabled one is listed but never routed to.
 * The result is validated like a file. Returns 0 and *out (refs 1), or LEO_ECONFIG with a message appended
 * to err (which may be NULL); no secret is ever in a message.
 */
int leo_config_overlay_file(const char *path, const char *snapshot_json, size_t len, struct leo_config **out,
                            struct leo_buf *err);

/** Declares the follower's metric families (leo_snapshot_credentials_total); call with the gateway's other
 *  declarations, before forking. */
void leo_follower_metrics_describe(void);

#endif
