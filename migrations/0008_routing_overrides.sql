-- Routing overrides and forced key cooldowns: what an operator changes about routing without editing the
-- catalogue, published in the snapshot and applied by every gateway (docs/controlplane.md, "Routing overrides
-- and forced cooldowns").
--
-- An override applies to one deployment of one model (a row of model_deployments, whose removal takes the
-- override with it): "disable" keeps the deployment out of the model's routing, "weight" pins its weight. A
-- model's deployment carries at most one override. Clearing an override deletes its row (the audit log keeps
-- the history).

CREATE TABLE routing_overrides (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id uuid NOT NULL,
    deployment_id uuid NOT NULL,
    action text NOT NULL CHECK (action IN ('disable', 'weight')),
    weight integer CHECK (weight BETWEEN 0 AND 1000000),
    reason text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 512),
    -- the audit actor that set it ("user:<id>" or "token:<id>")
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, deployment_id),
    CHECK ((action = 'weight') = (weight IS NOT NULL)),
    FOREIGN KEY (model_id, deployment_id) REFERENCES model_deployments (model_id, deployment_id) ON DELETE CASCADE
);
CREATE INDEX routing_overrides_page ON routing_overrides (created_at, id);

-- A forced cooldown keeps the gateways from using one provider credential until a time. A credential has at
-- most one; forcing it again replaces it, clearing deletes it. Rows past their time are left in place (they
-- no longer apply; the snapshot leaves them out).
CREATE TABLE credential_cooldowns (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    credential_id uuid NOT NULL UNIQUE REFERENCES provider_credentials (id) ON DELETE CASCADE,
    until timestamptz NOT NULL,
    reason text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 512),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credential_cooldowns_until ON credential_cooldowns (until);
CREATE INDEX credential_cooldowns_page ON credential_cooldowns (created_at, id);
