-- Tenant-wide quotas and rate limits, in the gateway's quota shape (rpm, tpm, tokens_per_day, tokens_per_month,
-- usd_per_day, usd_per_month, concurrency; a missing member means no limit), published with the tenant in the
-- snapshot. A key's own limits (api_keys.limits) apply on top of them.
ALTER TABLE tenants ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(limits) = 'object');
