/*
 * secretbox.c — XChaCha20-Poly1305 sealing of stored secrets under a master key ring (secretbox.h).
 *
 * The associated data is "sb1\0" || key id || "\0" || the caller's ad: the version and the key id travel in
 * clear in the sealed text, so they are authenticated rather than trusted. The 24-byte random nonce of
 * XChaCha20 makes collisions negligible for any number of seals under one key, which is why it was chosen
 * over the 12-byte IETF ChaCha20-Poly1305.
 */
#include "secretbox.h"

#include <ctype.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "keyhash.h"

#define PREFIX "sb1."
#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define KEY_FILE_MAX 4096

void leo_secretbox_key_set(struct leo_secretbox_key *k, const uint8_t raw[LEO_SECRETBOX_KEY_BYTES])
{
    leo_keyhash_init();
    memcpy(k->key, raw, LEO_SECRETBOX_KEY_BYTES);
    static const char label[] = "leo-master-key-id";
    uint8_t h[32];
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof(h));
    crypto_generichash_update(&st, (const unsigned char *)label, sizeof(label) - 1);
    crypto_generichash_update(&st, raw, LEO_SECRETBOX_KEY_BYTES);
    crypto_generichash_final(&st, h, sizeof(h));
    memcpy(k->id, "mk", 2);
    sodium_bin2hex(k->id + 2, sizeof(k->id) - 2, h, (LEO_SECRETBOX_KEY_ID_LEN - 2) / 2);
}

int leo_secretbox_key_parse(struct leo_str text, struct leo_secretbox_key *k, const char **why)
{
    struct leo_str t = text;
    while (t.len && isspace((unsigned char)t.p[0])) {
        t.p++;
        t.len--;
    }
    while (t.len && isspace((unsigned char)t.p[t.len - 1]))
        t.len--;
    uint8_t raw[LEO_SECRETBOX_KEY_BYTES];
    size_t n = 0;
    int rc = LEO_EINVAL;
    *why = "expected 64 hex digits or the base64 of 32 bytes";
    if (t.len == 2 * LEO_SECRETBOX_KEY_BYTES) {
        if (sodium_hex2bin(raw, sizeof(raw), t.p, t.len, NULL, &n, NULL) == 0 && n == sizeof(raw))
            rc = 0;
    } else if (t.len >= 43 && t.len <= 44) {
        /* 32 bytes are 43 base64 characters, 44 with padding; both alphabets are accepted */
        static const int variants[] = {sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
                                       sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};
        for (size_t i = 0; rc != 0 && i < sizeof(variants) / sizeof(variants[0]); i++)
            if (sodium_base642bin(raw, sizeof(raw), t.p, t.len, NULL, &n, NULL, variants[i]) == 0 && n == sizeof(raw))
                rc = 0;
    }
    if (rc == 0)
        leo_secretbox_key_set(k, raw);
    sodium_memzero(raw, sizeof(raw));
    return rc;
}

static int key_from_file(const char *var, const char *path, struct leo_secretbox_key *k, struct leo_buf *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        leo_buf_addf(err, "%s: cannot open %s: %s", var, path, strerror(errno));
        return LEO_EIO;
    }
    char text[KEY_FILE_MAX];
    size_t n = fread(text, 1, sizeof(text), f);
    int rc = ferror(f) ? LEO_EIO : 0;
    fclose(f);
    if (rc) {
        leo_buf_addf(err, "%s: cannot read %s", var, path);
    } else {
        const char *why;
        rc = leo_secretbox_key_parse(leo_str_n(text, n), k, &why);
        if (rc)
            leo_buf_addf(err, "%s: the key in %s is malformed: %s", var, path, why);
    }
    sodium_memzero(text, sizeof(text));
    return rc;
}

int leo_secretbox_key_from_env(const char *env_name, struct leo_secretbox_key *k, struct leo_buf *err)
{
    const char *v = getenv(env_name);
    if (v && v[0]) {
        const char *why;
        int rc = leo_secretbox_key_parse(leo_str_c(v), k, &why);
        if (rc)
            leo_buf_addf(err, "%s is malformed: %s", env_name, why);
        return rc;
    }
    char file_var[128];
    snprintf(file_var, sizeof(file_var), "%s_FILE", env_name);
    const char *path = getenv(file_var);
    if (path && path[0])
        return key_from_file(file_var, path, k, err);
    return LEO_ENOTFOUND;
}

bool leo_secretbox_ring_add(struct leo_secretbox_ring *ring, const struct leo_secretbox_key *k)
{
    if (leo_secretbox_ring_find(ring, leo_str_c(k->id)))
        return true;
    if (ring->nkeys >= LEO_SECRETBOX_RING_MAX)
        return false;
    ring->keys[ring->nkeys++] = *k;
    return true;
}

int leo_secretbox_ring_from_env(struct leo_secretbox_ring *ring, struct leo_buf *err)
{
    static const char *const vars[] = {"LEO_MASTER_KEY", "LEO_MASTER_KEY_NEW", "LEO_MASTER_KEY_PREVIOUS"};
    memset(ring, 0, sizeof(*ring));
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        struct leo_secretbox_key k;
        int rc = leo_secretbox_key_from_env(vars[i], &k, err);
        if (rc == LEO_ENOTFOUND) {
            if (i == 0)
                return 0; /* no current key: nothing to seal or open with */
            continue;
        }
        if (rc) {
            leo_secretbox_ring_clear(ring);
            return rc;
        }
        leo_secretbox_ring_add(ring, &k);
        sodium_memzero(&k, sizeof(k));
    }
    return 0;
}

const struct leo_secretbox_key *leo_secretbox_ring_find(const struct leo_secretbox_ring *ring, struct leo_str id)
{
    for (size_t i = 0; i < ring->nkeys; i++)
        if (leo_str_eqc(id, ring->keys[i].id))
            return &ring->keys[i];
    return NULL;
}

void leo_secretbox_ring_clear(struct leo_secretbox_ring *ring)
{
    sodium_memzero(ring, sizeof(*ring));
}

/* "sb1\0" || key id || "\0" || ad */
static void full_ad(struct leo_buf *b, struct leo_str key_id, struct leo_str ad)
{
    leo_buf_add(b, "sb1", 4);
    leo_buf_addstr(b, key_id);
    leo_buf_addch(b, '\0');
    leo_buf_addstr(b, ad);
}

int leo_secretbox_seal(const struct leo_secretbox_key *k, struct leo_str plain, struct leo_str ad, struct leo_buf *out)
{
    if (plain.len > LEO_SECRETBOX_PLAIN_MAX)
        return LEO_ETOOBIG;
    size_t raw_len = NONCE_BYTES + plain.len + TAG_BYTES;
    uint8_t *raw = sodium_malloc(raw_len);
    if (raw == NULL)
        abort(); /* like leo_alloc: out of memory is not an error the caller handles */
    randombytes_buf(raw, NONCE_BYTES);
    struct leo_buf a = LEO_BUF_INIT;
    full_ad(&a, leo_str_c(k->id), ad);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(raw + NONCE_BYTES, &clen, (const unsigned char *)plain.p, plain.len,
                                               (const unsigned char *)a.p, a.len, NULL, raw, k->key);
    leo_buf_release(&a);
    size_t b64 = sodium_base64_ENCODED_LEN(raw_len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *enc = sodium_malloc(b64);
    if (enc == NULL)
        abort();
    sodium_bin2base64(enc, b64, raw, raw_len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    leo_buf_addf(out, PREFIX "%s.%s", k->id, enc);
    sodium_free(enc);
    sodium_free(raw);
    return 0;
}

struct leo_str leo_secretbox_key_id(struct leo_str sealed)
{
    struct leo_str none = {NULL, 0};
    if (!leo_str_startswith(sealed, PREFIX))
        return none;
    const char *p = sealed.p + strlen(PREFIX);
    const char *end = sealed.p + sealed.len;
    const char *dot = memchr(p, '.', (size_t)(end - p));
    if (dot == NULL || dot == p || dot - p > 64)
        return none;
    return leo_str_n(p, (size_t)(dot - p));
}

int leo_secretbox_open(const struct leo_secretbox_ring *ring, struct leo_str sealed, struct leo_str ad,
                       struct leo_buf *out, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    struct leo_str id = leo_secretbox_key_id(sealed);
    if (id.len == 0 || sealed.len > 2 * LEO_SECRETBOX_PLAIN_MAX + 256) {
        *why = "not a sealed secret";
        return LEO_EPARSE;
    }
    const struct leo_secretbox_key *k = leo_secretbox_ring_find(ring, id);
    if (k == NULL) {
        *why = ring->nkeys ? "sealed under a master key this process does not hold" : "no master key is configured";
        return LEO_ENOTFOUND;
    }
    const char *b64 = id.p + id.len + 1;
    size_t b64_len = (size_t)(sealed.p + sealed.len - b64);
    size_t cap = b64_len / 4 * 3 + 3, raw_len = 0;
    uint8_t *raw = sodium_malloc(cap ? cap : 1);
    if (raw == NULL)
        abort();
    int rc = 0;
    if (sodium_base642bin(raw, cap, b64, b64_len, NULL, &raw_len, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) !=
            0 ||
        raw_len < NONCE_BYTES + TAG_BYTES) {
        *why = "not a sealed secret";
        rc = LEO_EPARSE;
    }
    if (rc == 0) {
        size_t plen = raw_len - NONCE_BYTES - TAG_BYTES;
        uint8_t *plain = sodium_malloc(plen + 1);
        if (plain == NULL)
            abort();
        struct leo_buf a = LEO_BUF_INIT;
        full_ad(&a, id, ad);
        unsigned long long got = 0;
        if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain, &got, NULL, raw + NONCE_BYTES, raw_len - NONCE_BYTES,
                                                       (const unsigned char *)a.p, a.len, raw, k->key) != 0) {
            *why = "authentication failed (wrong key, wrong row or altered bytes)";
            rc = LEO_EAUTH;
        } else {
            rc = leo_buf_add(out, plain, (size_t)got);
        }
        leo_buf_release(&a);
        sodium_free(plain); /* sodium_free wipes */
    }
    sodium_free(raw);
    return rc;
}

void leo_secretbox_wipe(struct leo_buf *b)
{
    if (b->p && b->cap)
        sodium_memzero(b->p, b->cap);
    leo_buf_release(b);
}
