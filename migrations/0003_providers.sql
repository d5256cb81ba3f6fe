-- Upstream providers and their credentials. Credentials are encrypted by the daemon with XChaCha20-Poly1305
-- under a master key that never enters the database; key_id names the master key so it can be rotated.

CREATE TABLE providers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    type text NOT NULL CHECK (char_length(type) BETWEEN 1 AND 64),
    base_url text NOT NULL CHECK (char_length(base_url) BETWEEN 1 AND 2048),
    settings jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(settings) = 'object'),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE provider_credentials (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_id uuid NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    ciphertext bytea NOT NULL,
    nonce bytea NOT NULL CHECK (octet_length(nonce) = 24),
    key_id text NOT NULL CHECK (char_length(key_id) BETWEEN 1 AND 64),
    -- masked form for display ("sk-…abcd"), written with the ciphertext
    masked text NOT NULL DEFAULT '',
    weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider_id, name)
);
