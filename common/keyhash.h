/*
 * keyhash.h — keyed hashes of API keys (libsodium's BLAKE2b, crypto_generichash, keyed with a server
 * secret). API keys are stored and compared only as these hashes; the text form is "kh1:" followed by
 * 64 lowercase hex digits. The secret comes from the environment variable named in the config
 * (LEO_KEY_HASH_SECRET by default, any length, itself hashed down to 32 bytes); when it is unset a
 * built-in development secret is used and a warning is logged at start.
 */
#ifndef LEO_KEYHASH_H
#define LEO_KEYHASH_H

#include <stddef.h>
#include <stdint.h>

#include "str.h"

#define LEO_KEYHASH_BYTES 32
#define LEO_KEYHASH_SECRET_BYTES 32
#define LEO_KEYHASH_TEXT_LEN (4 + 2 * LEO_KEYHASH_BYTES) /* "kh1:" + hex, without NUL */

/** Initialises libsodium (idempotent); aborts if it cannot. */
void leo_keyhash_init(void);
/** Derives the 32-byte secret from a passphrase of any length. */
void leo_keyhash_secret_from(const char *passphrase, size_t len, uint8_t out[LEO_KEYHASH_SECRET_BYTES]);
/** Derives the secret from the named environment variable, or the development default when unset;
 *  returns 1 if the default was used, 0 otherwise. */
int leo_keyhash_secret_from_env(const char *env_name, uint8_t out[LEO_KEYHASH_SECRET_BYTES]);
/** Hashes a presented key. */
void leo_keyhash(const uint8_t secret[LEO_KEYHASH_SECRET_BYTES], struct leo_str key, uint8_t out[LEO_KEYHASH_BYTES]);
/** Formats a hash as "kh1:<hex>" into out (LEO_KEYHASH_TEXT_LEN + 1 bytes). */
void leo_keyhash_format(const uint8_t hash[LEO_KEYHASH_BYTES], char out[LEO_KEYHASH_TEXT_LEN + 1]);
/** Parses the text form; 0 or LEO_EPARSE. */
int leo_keyhash_parse(struct leo_str text, uint8_t out[LEO_KEYHASH_BYTES]);
/** Constant-time comparison of two hashes. */
int leo_keyhash_equal(const uint8_t a[LEO_KEYHASH_BYTES], const uint8_t b[LEO_KEYHASH_BYTES]);
/** Writes a masked form of a secret for display ("sk-…abcd": the first 3 and last 4 characters, or "…"
 *  alone for short ones) into out (at least 16 bytes). */
void leo_secret_mask(struct leo_str secret, char *out, size_t size);

#endif
