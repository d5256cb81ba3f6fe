-- Admin API tokens (for automation) and user invitations.
--
-- Both are bearer secrets of 32 random bytes shown once; like session tokens, only their BLAKE2b-256 hash is
-- stored. A token carries one role, with a tenant for the tenant roles, exactly like a membership; an
-- invitation carries the role the invited user will get.

CREATE TABLE admin_tokens (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'viewer', 'tenant_admin', 'tenant_member')),
    tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE,
    -- for display: "leo_at_" and the last four characters of the token
    prefix text NOT NULL CHECK (char_length(prefix) BETWEEN 1 AND 16),
    last4 text NOT NULL CHECK (char_length(last4) = 4),
    -- the audit actor that created it ("user:<id>" or "token:<id>")
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    -- refreshed at most once a minute, so using a token does not write on every request
    last_used_at timestamptz,
    revoked_at timestamptz,
    CHECK ((tenant_id IS NULL) = (role IN ('owner', 'admin', 'operator', 'viewer')))
);
CREATE INDEX admin_tokens_page ON admin_tokens (created_at, id);
CREATE INDEX admin_tokens_tenant ON admin_tokens (tenant_id);

-- An invitation is pending until accepted (once), revoked or expired. Accepting creates the user and its
-- membership and sets accepted_at in one statement, so two accepts of one invitation cannot both succeed.
CREATE TABLE invitations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    email text NOT NULL CHECK (email = lower(email) AND char_length(email) BETWEEN 3 AND 254),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'viewer', 'tenant_admin', 'tenant_member')),
    tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE,
    invited_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    accepted_at timestamptz,
    revoked_at timestamptz,
    CHECK ((tenant_id IS NULL) = (role IN ('owner', 'admin', 'operator', 'viewer'))),
    CHECK (accepted_at IS NULL OR revoked_at IS NULL)
);
CREATE INDEX invitations_page ON invitations (created_at, id);
CREATE INDEX invitations_tenant ON invitations (tenant_id);
