/*
 * keyhash.c — keyed BLAKE2b-256 hashes of API keys (libsodium crypto_generichash).
 *
 * The 32-byte secret is itself a BLAKE2b-256 of "leo-keyhash-v1:" followed by the passphrase, so a
 * passphrase of any length maps to a full-size key and the context prefix keeps this derivation apart from
 * any other use of the same passphrase. Changing the prefix or the passphrase invalidates every stored hash.
 */
#include "keyhash.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define SECRET_CONTEXT "leo-keyhash-v1:"
#define DEFAULT_ENV "LEO_KEY_HASH_SECRET"
/* Public on purpose: it only makes a development setup work out of the box. */
#define DEVELOPMENT_PASSPHRASE "leo-optima-development-key-hash-secret"

void leo_keyhash_init(void)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "fatal: libsodium cannot be initialised\n");
        abort();
    }
}

void leo_keyhash_secret_from(const char *passphrase, size_t len, uint8_t out[LEO_KEYHASH_SECRET_BYTES])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, LEO_KEYHASH_SECRET_BYTES);
    crypto_generichash_update(&st, (const unsigned char *)SECRET_CONTEXT, sizeof(SECRET_CONTEXT) - 1);
    if (len)
        crypto_generichash_update(&st, (const unsigned char *)passphrase, len);
    crypto_generichash_final(&st, out, LEO_KEYHASH_SECRET_BYTES);
    sodium_memzero(&st, sizeof(st));
}

int leo_keyhash_secret_from_env(const char *env_name, uint8_t out[LEO_KEYHASH_SECRET_BYTES])
{
    const char *v = getenv(env_name && env_name[0] ? env_name : DEFAULT_ENV);
    /* An empty value counts as unset: an empty passphrase would be a secret everybody knows, like the
     * development one, and the caller then warns about it. */
    if (v == NULL || v[0] == '\0') {
        leo_keyhash_secret_from(DEVELOPMENT_PASSPHRASE, sizeof(DEVELOPMENT_PASSPHRASE) - 1, out);
        return 1;
    }
    leo_keyhash_secret_from(v, strlen(v), out);
    return 0;
}

void leo_keyhash(const uint8_t secret[LEO_KEYHASH_SECRET_BYTES], struct leo_str key, uint8_t out[LEO_KEYHASH_BYTES])
{
    /* libsodium treats a NULL input with length 0 as misuse on some versions; the empty span may be NULL. */
    const unsigned char *in = key.len ? (const unsigned char *)key.p : (const unsigned char *)"";
    crypto_generichash(out, LEO_KEYHASH_BYTES, in, key.len, secret, LEO_KEYHASH_SECRET_BYTES);
}

void leo_keyhash_format(const uint8_t hash[LEO_KEYHASH_BYTES], char out[LEO_KEYHASH_TEXT_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "kh1:", 4);
    for (size_t i = 0; i < LEO_KEYHASH_BYTES; i++) {
        out[4 + 2 * i] = hex[hash[i] >> 4];
        out[4 + 2 * i + 1] = hex[hash[i] & 0xf];
    }
    out[LEO_KEYHASH_TEXT_LEN] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is rejected: the text form is canonical, so equal hashes are equal strings */
}

int leo_keyhash_parse(struct leo_str text, uint8_t out[LEO_KEYHASH_BYTES])
{
    if (text.len != LEO_KEYHASH_TEXT_LEN || memcmp(text.p, "kh1:", 4) != 0)
        return LEO_EPARSE;
    uint8_t tmp[LEO_KEYHASH_BYTES];
    for (size_t i = 0; i < LEO_KEYHASH_BYTES; i++) {
        int hi = hexval(text.p[4 + 2 * i]), lo = hexval(text.p[4 + 2 * i + 1]);
        if (hi < 0 || lo < 0)
            return LEO_EPARSE;
        tmp[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(out, tmp, LEO_KEYHASH_BYTES);
    return 0;
}

int leo_keyhash_equal(const uint8_t a[LEO_KEYHASH_BYTES], const uint8_t b[LEO_KEYHASH_BYTES])
{
    return sodium_memcmp(a, b, LEO_KEYHASH_BYTES) == 0;
}

void leo_secret_mask(struct leo_str secret, char *out, size_t size)
{
    static const char ellipsis[] = "\xe2\x80\xa6"; /* U+2026 */
    if (size == 0)
        return;
    if (secret.len >= 12)
        snprintf(out, size, "%.3s%s%.4s", secret.p, ellipsis, secret.p + secret.len - 4);
    else
        snprintf(out, size, "%s", ellipsis);
}
