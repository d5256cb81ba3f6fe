-- Providers, their sealed credentials, deployments and model mappings: what the gateways route to.
--
-- 0003 created providers and provider_credentials before any code used them; no row can exist yet, so this
-- migration reshapes them freely. A credential is now stored as one self-describing sealed text
-- (common/secretbox.h: "sb1.<key id>.<base64url(nonce || ciphertext)>", XChaCha20-Poly1305 under the master
-- key, with the credential's id as associated data); key_id repeats the key id for rotation queries, and a
-- CHECK keeps the two in agreement.

ALTER TABLE providers
    ADD CONSTRAINT providers_type_known CHECK (type IN ('openai', 'azure', 'anthropic', 'gemini')),
    ADD COLUMN api_version text CHECK (api_version IS NULL OR char_length(api_version) BETWEEN 1 AND 64),
    ADD COLUMN connect_timeout_ms integer CHECK (connect_timeout_ms BETWEEN 1 AND 600000),
    ADD COLUMN first_byte_timeout_ms integer CHECK (first_byte_timeout_ms BETWEEN 1 AND 3600000),
    ADD COLUMN total_timeout_ms integer CHECK (total_timeout_ms BETWEEN 1 AND 86400000);
CREATE INDEX providers_page ON providers (created_at, id);

ALTER TABLE provider_credentials
    DROP COLUMN ciphertext,
    DROP COLUMN nonce,
    ADD COLUMN sealed text NOT NULL CHECK (sealed LIKE 'sb1.%' AND char_length(sealed) <= 65536),
    ADD CONSTRAINT provider_credentials_key_id_matches CHECK (split_part(sealed, '.', 2) = key_id);
CREATE INDEX provider_credentials_page ON provider_credentials (provider_id, created_at, id);
CREATE INDEX provider_credentials_key_id ON provider_credentials (key_id);

-- A deployment is one upstream model at one provider; models route to deployments.
CREATE TABLE deployments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_id uuid NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    -- the model name sent upstream
    model text NOT NULL CHECK (model ~ '^[!-~]{1,128}$' AND model !~ '["\\]'),
    -- the provider's limits for this deployment (rpm, tpm, concurrency), as in the gateway's configuration
    limits jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(limits) = 'object'),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider_id, model)
);
CREATE INDEX deployments_page ON deployments (created_at, id);

-- A logical model: the name clients send, and how requests for it are spread over its deployments.
-- Global for now (every tenant sees the same catalogue; keys and tenants narrow it with their model lists).
CREATE TABLE models (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE CHECK (name ~ '^[!-~]{1,128}$' AND name !~ '["\\]'),
    strategy text NOT NULL DEFAULT 'weighted'
        CHECK (strategy IN ('weighted', 'priority', 'least-busy', 'lowest-latency', 'lowest-cost')),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX models_page ON models (created_at, id);

-- The deployments of a model. Equal priorities form a group (lower is tried first); within a group the
-- model's strategy picks, by weight for "weighted".
CREATE TABLE model_deployments (
    model_id uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    deployment_id uuid NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    priority integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 1000),
    weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 0 AND 1000000),
    PRIMARY KEY (model_id, deployment_id)
);
CREATE INDEX model_deployments_deployment ON model_deployments (deployment_id);
