/*
 * secretbox.h — sealing of stored secrets (provider credentials) under a master key: XChaCha20-Poly1305
 * (libsodium's crypto_aead_xchacha20poly1305_ietf), with a key id so the master key can be rotated.
 *
 * Invariants:
 * - The sealed form is self-describing text: "sb1.<key id>.<base64url(nonce || ciphertext+tag)>", unpadded
 *   URL-safe base64, a fresh random 24-byte nonce per seal. Nothing else is needed to open it but the key.
 * - The associated data binds a sealed secret to its row (for credentials: the credential id), so a sealed
 *   value copied into another row does not open there. The key id is authenticated too (it is part of the
 *   associated data), so relabelling a ciphertext with another key id fails.
 * - A key id is derived from the key itself ("mk" + 16 hex digits of BLAKE2b-256("leo-master-key-id" || key)):
 *   it names the key without revealing it, and two sides holding the same key agree on its id without
 *   configuration.
 * - A ring holds the current key (used to seal) and up to LEO_SECRETBOX_RING_MAX - 1 further keys accepted
 *   for opening during a rotation. Keys are wiped when the ring is cleared.
 * - No function logs, and no error message contains a key or a plaintext.
 */
#ifndef LEO_SECRETBOX_H
#define LEO_SECRETBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "str.h"

#define LEO_SECRETBOX_KEY_BYTES 32
#define LEO_SECRETBOX_KEY_ID_LEN 18 /* "mk" + 16 hex digits */
#define LEO_SECRETBOX_RING_MAX 3
#define LEO_SECRETBOX_PLAIN_MAX 16384 /* a longer secret is refused (LEO_ETOOBIG) */

struct leo_secretbox_key {
    char id[LEO_SECRETBOX_KEY_ID_LEN + 1];
    uint8_t key[LEO_SECRETBOX_KEY_BYTES];
};

/** keys[0] is the current key (seals); the others only open. nkeys 0: no master key configured. */
struct leo_secretbox_ring {
    struct leo_secretbox_key keys[LEO_SECRETBOX_RING_MAX];
    size_t nkeys;
};

/** Fills k from 32 raw key bytes and derives its id. */
void leo_secretbox_key_set(struct leo_secretbox_key *k, const uint8_t raw[LEO_SECRETBOX_KEY_BYTES]);

/**
 * Parses a master key given as text: 64 hex digits, or base64 (standard or URL-safe, padded or not) of
 * exactly 32 bytes; surrounding whitespace (a trailing newline from a file) is ignored. 0, or LEO_EINVAL with
 * a static reason in *why (never the text).
 */
int leo_secretbox_key_parse(struct leo_str text, struct leo_secretbox_key *k, const char **why);

/**
 * Reads the key named by env_name (the key as text) or, when that is unset or empty, by env_name + "_FILE"
 * (a path to a file holding it). 0 and *k; LEO_ENOTFOUND when neither is set; LEO_EINVAL or LEO_EIO with a
 * message naming the variable (and the path, never the key) appended to err.
 */
int leo_secretbox_key_from_env(const char *env_name, struct leo_secretbox_key *k, struct leo_buf *err);

/**
 * The process's key ring from the environment: LEO_MASTER_KEY (or LEO_MASTER_KEY_FILE) is the current key;
 * LEO_MASTER_KEY_NEW and LEO_MASTER_KEY_PREVIOUS (each also as _FILE) are added, when set, as keys that open
 * (the former during a rotation, the latter after one). 0 with ring->nkeys == 0 when no master key is set;
 * an error (message in err) when a variable is set but unreadable or malformed.
 */
int leo_secretbox_ring_from_env(struct leo_secretbox_ring *ring, struct leo_buf *err);

/** Adds k to the ring unless a key with its id is there; false when the ring is full. */
bool leo_secretbox_ring_add(struct leo_secretbox_ring *ring, const struct leo_secretbox_key *k);

/** The ring's key with this id, or NULL. */
const struct leo_secretbox_key *leo_secretbox_ring_find(const struct leo_secretbox_ring *ring, struct leo_str id);

/** Wipes the ring's keys. */
void leo_secretbox_ring_clear(struct leo_secretbox_ring *ring);

/** Seals plain under k with the associated data ad; appends the sealed text to out. 0 or LEO_ETOOBIG. */
int leo_secretbox_seal(const struct leo_secretbox_key *k, struct leo_str plain, struct leo_str ad, struct leo_buf *out);

/**
 * Opens a sealed text with the ring's key of the same id and the associated data ad; appends the plaintext
 * to out (the caller wipes it: leo_secretbox_wipe). 0; LEO_EPARSE when sealed is not in the sealed form;
 * LEO_ENOTFOUND when the ring has no key of its id; LEO_EAUTH when the key, the associated data or the bytes
 * do not match. *why (may be NULL) gets a static reason.
 */
int leo_secretbox_open(const struct leo_secretbox_ring *ring, struct leo_str sealed, struct leo_str ad,
                       struct leo_buf *out, const char **why);

/** The key id of a sealed text (a span into it), or an empty span when it is not in the sealed form. */
struct leo_str leo_secretbox_key_id(struct leo_str sealed);

/** Wipes and releases a buffer that held a plaintext. */
void leo_secretbox_wipe(struct leo_buf *b);

#endif
