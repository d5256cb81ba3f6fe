/*
 * auth.h — who may do what in the admin API: roles, permissions, the principal behind a session, passwords
 * and session tokens.
 *
 * Invariants:
 * - Roles map to permissions through one table (auth.c); no code asks "is this an admin", only "does this
 *   principal hold permission P for tenant T".
 * - Global roles (owner, admin, operator, viewer) hold their permissions for every tenant and for the
 *   endpoints that belong to no tenant. Tenant roles (tenant_admin, tenant_member) hold theirs only for the
 *   tenant of the membership.
 * - A principal may grant a role (create a user with it) only when the role's permissions are a subset of
 *   what the principal holds in the same scope, so nobody can create an account stronger than their own.
 * - The same rule bounds admin API tokens: a principal may issue a token with a role only when it holds
 *   tokens.write and every permission of that role in the same scope.
 * - Passwords are hashed with libsodium's crypto_pwhash_str (argon2id). Session tokens, admin API tokens and
 *   invitation tokens are 32 random bytes in URL-safe base64 behind a prefix that says what they are
 *   ("leo_sess_", "leo_at_", "leo_inv_"); only their BLAKE2b-256 hash is ever stored. Admin API tokens, which
 *   live until revoked, are hashed with a key derived from the daemon's key hash secret, so a copy of the
 *   table alone does not let anyone test guesses offline; sessions and invitations expire and stay unkeyed.
 */
#ifndef LEO_CP_AUTH_H
#define LEO_CP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/keyhash.h"
#include "../common/str.h"

/** Permissions; an endpoint needs exactly one. */
enum leo_perm {
    LEO_PERM_TENANTS_READ = 1u << 0,
    LEO_PERM_TENANTS_WRITE = 1u << 1,
    LEO_PERM_USERS_READ = 1u << 2,
    LEO_PERM_USERS_WRITE = 1u << 3,
    LEO_PERM_KEYS_READ = 1u << 4,
    LEO_PERM_KEYS_WRITE = 1u << 5,
    LEO_PERM_AUDIT_READ = 1u << 6,
    LEO_PERM_OWNERS = 1u << 7, /* grant the owner role */
    LEO_PERM_TOKENS_READ = 1u << 8,
    LEO_PERM_TOKENS_WRITE = 1u << 9, /* create and revoke admin API tokens */
    LEO_PERM_PROVIDERS_READ = 1u << 10,  /* providers, credentials (masked), deployments, models, overrides */
    LEO_PERM_PROVIDERS_WRITE = 1u << 11, /* change them, test a provider, force or clear a key cooldown */
    LEO_PERM_USAGE_READ = 1u << 12,      /* usage reports (tenant roles: their own tenant's) */
};

enum leo_role {
    LEO_ROLE_OWNER,
    LEO_ROLE_ADMIN,
    LEO_ROLE_OPERATOR,
    LEO_ROLE_VIEWER,
    LEO_ROLE_TENANT_ADMIN,
    LEO_ROLE_TENANT_MEMBER,
    LEO_ROLE_COUNT
};

/** The role named s, or -1. */
int leo_role_parse(struct leo_str s);
/** "owner", "tenant_admin", ...; static storage. */
const char *leo_role_name(enum leo_role r);
/** True for the roles that apply to every tenant (and carry no tenant). */
bool leo_role_is_global(enum leo_role r);
/** The permission set of a role (a bitwise or of enum leo_perm). */
unsigned leo_role_perms(enum leo_role r);
/** "keys.write", ...; static storage. */
const char *leo_perm_name(unsigned perm);

#define LEO_UUID_TEXT_LEN 36

/** True when s is a UUID in canonical text form (8-4-4-4-12 hex digits, any case). */
bool leo_uuid_valid(struct leo_str s);

struct leo_membership {
    enum leo_role role;
    char tenant_id[LEO_UUID_TEXT_LEN + 1]; /* "" for a global role */
};

/** The authenticated user behind a request. */
struct leo_principal {
    char user_id[LEO_UUID_TEXT_LEN + 1];
    char email[256];
    struct leo_membership *memberships; /* owned by whoever filled the struct */
    size_t nmemberships;
};

/** Permissions held for tenant_id (NULL or "": what global roles give, nothing from tenant roles). */
unsigned leo_principal_perms(const struct leo_principal *p, const char *tenant_id);
/** True when the principal holds perm for tenant_id (NULL: globally). */
bool leo_principal_can(const struct leo_principal *p, unsigned perm, const char *tenant_id);
/** True when some membership, global or for any tenant, grants perm. */
bool leo_principal_can_anywhere(const struct leo_principal *p, unsigned perm);
/** True when the principal may create a membership with role r in tenant_id (NULL for a global role). */
bool leo_principal_can_grant(const struct leo_principal *p, enum leo_role r, const char *tenant_id);
/** True when the principal may issue an admin API token with role r in tenant_id (NULL for a global role):
 *  it holds tokens.write there and every permission of r. */
bool leo_principal_can_issue_token(const struct leo_principal *p, enum leo_role r, const char *tenant_id);

/** Bytes of a password hash string including its NUL (crypto_pwhash_STRBYTES). */
#define LEO_PASSWORD_HASH_MAX 128
#define LEO_PASSWORD_MIN 12
#define LEO_PASSWORD_MAX 1024

/** Checks the password policy (LEO_PASSWORD_MIN to LEO_PASSWORD_MAX bytes, no NUL); 0 or LEO_EINVAL with a
 *  static reason in *why. */
int leo_password_policy(struct leo_str pw, const char **why);
/** Hashes a password (argon2id, libsodium's interactive limits). CPU- and memory-heavy (tens of ms, 64 MiB):
 *  call it off the event loop. 0, or LEO_EINVAL when libsodium refuses (out of memory). */
int leo_password_hash(struct leo_str pw, char out[LEO_PASSWORD_HASH_MAX]);
/** True when pw matches hash. Runs the same work for a malformed or NULL hash (against a fixed dummy hash), so
 *  the time taken does not tell whether the account exists. Off the event loop, like leo_password_hash. */
bool leo_password_verify(const char *hash, struct leo_str pw);

#define LEO_SESSION_TOKEN_PREFIX "leo_sess_"
#define LEO_SESSION_TOKEN_LEN (9 + 43) /* prefix + 32 bytes in unpadded URL-safe base64 */
#define LEO_SESSION_HASH_BYTES 32

/** Writes a new random session token (LEO_SESSION_TOKEN_LEN characters and a NUL). */
void leo_session_token_new(char out[LEO_SESSION_TOKEN_LEN + 1]);
/** Hashes a presented token into the form stored in sessions.token_hash, as 64 lowercase hex digits. Admin API
 *  tokens and invitation tokens are stored as the same hash. */
void leo_session_token_hash_hex(struct leo_str token, char out[2 * LEO_SESSION_HASH_BYTES + 1]);

#define LEO_ADMIN_TOKEN_PREFIX "leo_at_"
#define LEO_INVITE_TOKEN_PREFIX "leo_inv_"
/** The longest token leo_token_new makes (the longest prefix + 43 characters). */
#define LEO_TOKEN_MAX_LEN (8 + 43)

#define LEO_TOKEN_KEY_BYTES 32

/** Derives the key admin API tokens are hashed with from the key hash secret (the secret tenant API keys are
 *  hashed with, LEO_KEY_HASH_SECRET): libsodium's crypto_kdf subkey 1 of context "leoadmtk". A subkey rather
 *  than the secret itself, so a token's hash and an API key's hash (crypto_generichash keyed with the secret)
 *  are different functions even for the same text. Wipe out when done. */
void leo_admin_token_key(const uint8_t secret[LEO_KEYHASH_SECRET_BYTES], uint8_t out[LEO_TOKEN_KEY_BYTES]);
/** Hashes a presented admin API token into the form stored in admin_tokens.token_hash with hash_kind 1:
 *  BLAKE2b-256 keyed with key (from leo_admin_token_key), as 64 lowercase hex digits. Tokens stored before
 *  (hash_kind 0) carry leo_session_token_hash_hex of the token instead. */
void leo_admin_token_hash_hex(const uint8_t key[LEO_TOKEN_KEY_BYTES], struct leo_str token,
                              char out[2 * LEO_SESSION_HASH_BYTES + 1]);

/** Writes prefix followed by 32 random bytes in unpadded URL-safe base64 into out (at most
 *  LEO_TOKEN_MAX_LEN characters and a NUL; prefix at most 8 characters). */
void leo_token_new(const char *prefix, char out[LEO_TOKEN_MAX_LEN + 1]);
/** True when token begins with prefix. */
bool leo_token_has_prefix(struct leo_str token, const char *prefix);

#endif
