/*
 * auth.c — the role table, permission checks, password hashing, session tokens and the keyed hash of admin API
 * tokens.
 */
#include "auth.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>

#include "../common/error.h"

/* Which permissions each role holds. Global roles hold them for every tenant; tenant roles only inside the
 * tenant of their membership. Owners differ from admins only in LEO_PERM_OWNERS: an admin cannot make
 * owners, so the owners stay in control of who administers the deployment. */
static const struct {
    const char *name;
    bool global;
    unsigned perms;
} roles[LEO_ROLE_COUNT] = {
    [LEO_ROLE_OWNER] = {"owner", true,
                        LEO_PERM_TENANTS_READ | LEO_PERM_TENANTS_WRITE | LEO_PERM_USERS_READ | LEO_PERM_USERS_WRITE |
                            LEO_PERM_KEYS_READ | LEO_PERM_KEYS_WRITE | LEO_PERM_AUDIT_READ | LEO_PERM_OWNERS |
                            LEO_PERM_TOKENS_READ | LEO_PERM_TOKENS_WRITE | LEO_PERM_PROVIDERS_READ |
                            LEO_PERM_PROVIDERS_WRITE | LEO_PERM_USAGE_READ},
    [LEO_ROLE_ADMIN] = {"admin", true,
                        LEO_PERM_TENANTS_READ | LEO_PERM_TENANTS_WRITE | LEO_PERM_USERS_READ | LEO_PERM_USERS_WRITE |
                            LEO_PERM_KEYS_READ | LEO_PERM_KEYS_WRITE | LEO_PERM_AUDIT_READ | LEO_PERM_TOKENS_READ |
                            LEO_PERM_TOKENS_WRITE | LEO_PERM_PROVIDERS_READ | LEO_PERM_PROVIDERS_WRITE |
                            LEO_PERM_USAGE_READ},
    [LEO_ROLE_OPERATOR] = {"operator", true,
                           LEO_PERM_TENANTS_READ | LEO_PERM_USERS_READ | LEO_PERM_KEYS_READ | LEO_PERM_KEYS_WRITE |
                               LEO_PERM_AUDIT_READ | LEO_PERM_TOKENS_READ | LEO_PERM_PROVIDERS_READ |
                               LEO_PERM_USAGE_READ},
    [LEO_ROLE_VIEWER] = {"viewer", true,
                         LEO_PERM_TENANTS_READ | LEO_PERM_USERS_READ | LEO_PERM_KEYS_READ | LEO_PERM_AUDIT_READ |
                             LEO_PERM_TOKENS_READ | LEO_PERM_PROVIDERS_READ | LEO_PERM_USAGE_READ},
    [LEO_ROLE_TENANT_ADMIN] = {"tenant_admin", false,
                               LEO_PERM_TENANTS_READ | LEO_PERM_USERS_READ | LEO_PERM_USERS_WRITE | LEO_PERM_KEYS_READ |
                                   LEO_PERM_KEYS_WRITE | LEO_PERM_TOKENS_READ | LEO_PERM_TOKENS_WRITE |
                                   LEO_PERM_USAGE_READ},
    [LEO_ROLE_TENANT_MEMBER] = {"tenant_member", false,
                                LEO_PERM_TENANTS_READ | LEO_PERM_KEYS_READ | LEO_PERM_USAGE_READ},
};

static const struct {
    unsigned perm;
    const char *name;
} perm_names[] = {
    {LEO_PERM_TENANTS_READ, "tenants.read"}, {LEO_PERM_TENANTS_WRITE, "tenants.write"},
    {LEO_PERM_USERS_READ, "users.read"},     {LEO_PERM_USERS_WRITE, "users.write"},
    {LEO_PERM_KEYS_READ, "keys.read"},       {LEO_PERM_KEYS_WRITE, "keys.write"},
    {LEO_PERM_AUDIT_READ, "audit.read"},     {LEO_PERM_OWNERS, "owners.manage"},
    {LEO_PERM_TOKENS_READ, "tokens.read"},   {LEO_PERM_TOKENS_WRITE, "tokens.write"},
    {LEO_PERM_PROVIDERS_READ, "providers.read"}, {LEO_PERM_PROVIDERS_WRITE, "providers.write"},
    {LEO_PERM_USAGE_READ, "usage.read"},
};

int leo_role_parse(struct leo_str s)
{
    for (int i = 0; i < LEO_ROLE_COUNT; i++)
        if (leo_str_eqc(s, roles[i].name))
            return i;
    return -1;
}

const char *leo_role_name(enum leo_role r)
{
    return (unsigned)r < LEO_ROLE_COUNT ? roles[r].name : "unknown";
}

bool leo_role_is_global(enum leo_role r)
{
    return (unsigned)r < LEO_ROLE_COUNT && roles[r].global;
}

unsigned leo_role_perms(enum leo_role r)
{
    return (unsigned)r < LEO_ROLE_COUNT ? roles[r].perms : 0;
}

const char *leo_perm_name(unsigned perm)
{
    for (size_t i = 0; i < sizeof(perm_names) / sizeof(perm_names[0]); i++)
        if (perm_names[i].perm == perm)
            return perm_names[i].name;
    return "unknown";
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool leo_uuid_valid(struct leo_str s)
{
    if (s.len != LEO_UUID_TEXT_LEN)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s.p[i] != '-' : !is_hex(s.p[i]))
            return false;
    }
    return true;
}

unsigned leo_principal_perms(const struct leo_principal *p, const char *tenant_id)
{
    unsigned perms = 0;
    for (size_t i = 0; i < p->nmemberships; i++) {
        const struct leo_membership *m = &p->memberships[i];
        if (leo_role_is_global(m->role))
            perms |= leo_role_perms(m->role);
        else if (tenant_id && tenant_id[0] && strcasecmp(m->tenant_id, tenant_id) == 0)
            perms |= leo_role_perms(m->role);
    }
    return perms;
}

bool leo_principal_can(const struct leo_principal *p, unsigned perm, const char *tenant_id)
{
    return (leo_principal_perms(p, tenant_id) & perm) == perm;
}

bool leo_principal_can_anywhere(const struct leo_principal *p, unsigned perm)
{
    for (size_t i = 0; i < p->nmemberships; i++)
        if ((leo_role_perms(p->memberships[i].role) & perm) == perm)
            return true;
    return false;
}

bool leo_principal_can_grant(const struct leo_principal *p, enum leo_role r, const char *tenant_id)
{
    unsigned held = leo_principal_perms(p, leo_role_is_global(r) ? NULL : tenant_id);
    return (held & LEO_PERM_USERS_WRITE) && (leo_role_perms(r) & ~held) == 0;
}

bool leo_principal_can_issue_token(const struct leo_principal *p, enum leo_role r, const char *tenant_id)
{
    unsigned held = leo_principal_perms(p, leo_role_is_global(r) ? NULL : tenant_id);
    return (held & LEO_PERM_TOKENS_WRITE) && (leo_role_perms(r) & ~held) == 0;
}

/* ---- passwords ---- */

int leo_password_policy(struct leo_str pw, const char **why)
{
    if (pw.len < LEO_PASSWORD_MIN) {
        *why = "must be at least 12 characters long";
        return LEO_EINVAL;
    }
    if (pw.len > LEO_PASSWORD_MAX) {
        *why = "must be at most 1024 bytes long";
        return LEO_EINVAL;
    }
    if (memchr(pw.p, '\0', pw.len)) {
        *why = "must not contain NUL characters";
        return LEO_EINVAL;
    }
    return 0;
}

_Static_assert(crypto_pwhash_STRBYTES <= LEO_PASSWORD_HASH_MAX, "LEO_PASSWORD_HASH_MAX is too small");

int leo_password_hash(struct leo_str pw, char out[LEO_PASSWORD_HASH_MAX])
{
    if (crypto_pwhash_str_alg(out, pw.len ? pw.p : "", pw.len, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                              crypto_pwhash_MEMLIMIT_INTERACTIVE, crypto_pwhash_ALG_ARGON2ID13) != 0)
        return LEO_EINVAL;
    return 0;
}

/* A hash of a random password with the same limits, made once: verifying against it costs what a real
 * verification costs, so unknown accounts answer as slowly as known ones. */
static char dummy_hash[LEO_PASSWORD_HASH_MAX];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void make_dummy_hash(void)
{
    char pw[32];
    randombytes_buf(pw, sizeof(pw));
    if (leo_password_hash(leo_str_n(pw, sizeof(pw)), dummy_hash) != 0)
        dummy_hash[0] = '\0';
}

bool leo_password_verify(const char *hash, struct leo_str pw)
{
    bool real = hash && strncmp(hash, "$argon2id$", 10) == 0 && strlen(hash) < crypto_pwhash_STRBYTES;
    if (!real) {
        pthread_once(&dummy_once, make_dummy_hash);
        /* the outcome is false either way; only the time spent matters */
        volatile int sink = dummy_hash[0] ? crypto_pwhash_str_verify(dummy_hash, pw.len ? pw.p : "", pw.len) : -1;
        (void)sink;
        return false;
    }
    return crypto_pwhash_str_verify(hash, pw.len ? pw.p : "", pw.len) == 0;
}

/* ---- session tokens ---- */

void leo_session_token_new(char out[LEO_SESSION_TOKEN_LEN + 1])
{
    unsigned char raw[32];
    randombytes_buf(raw, sizeof(raw));
    memcpy(out, LEO_SESSION_TOKEN_PREFIX, sizeof(LEO_SESSION_TOKEN_PREFIX) - 1);
    sodium_bin2base64(out + sizeof(LEO_SESSION_TOKEN_PREFIX) - 1, LEO_SESSION_TOKEN_LEN + 1 - 9, raw, sizeof(raw),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
}

void leo_token_new(const char *prefix, char out[LEO_TOKEN_MAX_LEN + 1])
{
    unsigned char raw[32];
    size_t n = strlen(prefix);
    randombytes_buf(raw, sizeof(raw));
    memcpy(out, prefix, n);
    sodium_bin2base64(out + n, LEO_TOKEN_MAX_LEN + 1 - n, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
}

bool leo_token_has_prefix(struct leo_str token, const char *prefix)
{
    size_t n = strlen(prefix);
    return token.len >= n && memcmp(token.p, prefix, n) == 0;
}

void leo_session_token_hash_hex(struct leo_str token, char out[2 * LEO_SESSION_HASH_BYTES + 1])
{
    unsigned char h[LEO_SESSION_HASH_BYTES];
    crypto_generichash(h, sizeof(h), (const unsigned char *)(token.len ? token.p : ""), token.len, NULL, 0);
    sodium_bin2hex(out, 2 * LEO_SESSION_HASH_BYTES + 1, h, sizeof(h));
}

_Static_assert(LEO_KEYHASH_SECRET_BYTES == crypto_kdf_KEYBYTES, "the key hash secret is not a crypto_kdf key");
_Static_assert(LEO_TOKEN_KEY_BYTES == crypto_generichash_KEYBYTES, "the token key is not a BLAKE2b key");

void leo_admin_token_key(const uint8_t secret[LEO_KEYHASH_SECRET_BYTES], uint8_t out[LEO_TOKEN_KEY_BYTES])
{
    /* subkey id 1 of its own context: the secret keeps hashing API keys directly (common/keyhash.c) and this
     * key is never used for anything but admin API tokens */
    crypto_kdf_derive_from_key(out, LEO_TOKEN_KEY_BYTES, 1, "leoadmtk", secret);
}

void leo_admin_token_hash_hex(const uint8_t key[LEO_TOKEN_KEY_BYTES], struct leo_str token,
                              char out[2 * LEO_SESSION_HASH_BYTES + 1])
{
    unsigned char h[LEO_SESSION_HASH_BYTES];
    crypto_generichash(h, sizeof(h), (const unsigned char *)(token.len ? token.p : ""), token.len, key,
                       LEO_TOKEN_KEY_BYTES);
    sodium_bin2hex(out, 2 * LEO_SESSION_HASH_BYTES + 1, h, sizeof(h));
}
