-- Tenant policy managed through the admin API, and admin API tokens hashed with a key.
--
-- A tenant's flags and model list are published with it in the snapshot as "allow_byok",
-- "allow_route_override" and "models" (the gateway's tenant object, docs/configuration.md):
--   allow_byok            X-API-Key authenticates with the gateway and the caller's own Authorization: Bearer
--                         goes upstream instead of the deployment's credential
--   allow_route_override  the x-leo-route header may pin a request to one deployment of its model
--   allowed_models        NULL: every model; otherwise the client model names the tenant's keys may ask for (a
--                         key's own allowed_models narrows within it)
ALTER TABLE tenants
    ADD COLUMN allow_byok boolean NOT NULL DEFAULT false,
    ADD COLUMN allow_route_override boolean NOT NULL DEFAULT false,
    ADD COLUMN allowed_models text[] CHECK (allowed_models IS NULL OR cardinality(allowed_models) > 0);

-- How admin_tokens.token_hash was made: 0 the unkeyed BLAKE2b-256 of the token (tokens made before this
-- migration), 1 BLAKE2b-256 keyed with a subkey of the daemon's LEO_KEY_HASH_SECRET (controlplane/auth.h). The
-- daemon writes 1; a kind 0 row is rewritten to kind 1 the first time its token is used. The default is 0 so
-- that a writer unaware of the column (an older daemon during an upgrade) is still described truly.
ALTER TABLE admin_tokens ADD COLUMN hash_kind smallint NOT NULL DEFAULT 0 CHECK (hash_kind IN (0, 1));
