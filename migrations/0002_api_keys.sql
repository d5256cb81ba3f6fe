-- Tenant API keys. The secret is shown once, at creation or rotation; the table keeps its keyed hash in the
-- gateway's text form ("kh1:" + 64 hex digits, common/keyhash.h) and, for display, its first 7 and last 4
-- characters.

CREATE TABLE api_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    key_hash text NOT NULL UNIQUE CHECK (key_hash ~ '^kh1:[0-9a-f]{64}$'),
    prefix text NOT NULL CHECK (char_length(prefix) = 7),
    last4 text NOT NULL CHECK (char_length(last4) = 4),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'revoked')),
    expires_at timestamptz,
    -- NULL: every model the tenant may use; otherwise the client model names this key may ask for
    allowed_models text[] CHECK (allowed_models IS NULL OR cardinality(allowed_models) > 0),
    -- the gateway's quota object: rpm, tpm, tokens_per_day, tokens_per_month, usd_per_day, usd_per_month,
    -- concurrency (see docs/configuration.md); validated by the daemon
    limits jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(limits) = 'object'),
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    -- the key this one replaced through rotation
    rotated_from uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX api_keys_page ON api_keys (tenant_id, created_at, id);
