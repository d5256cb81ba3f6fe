-- The providers an API key's requests may be routed to. NULL: every provider; otherwise provider names, each one
-- an existing provider when it was written (the daemon checks it). The snapshot publishes the key's list as its
-- "providers" with only the names of the providers it publishes (enabled ones): a provider disabled or deleted
-- later is left out, and a key left with none is published with an empty list, which the gateway reads as "no
-- provider" (the key is refused every model), never as "every provider". Names, not ids, because the gateway
-- knows providers by name; a provider's name cannot change (the admin API refuses it), so a name goes stale only
-- when its provider is deleted, and a provider created later under the same name is then allowed again.
ALTER TABLE api_keys
    ADD COLUMN allowed_providers text[] CHECK (allowed_providers IS NULL OR cardinality(allowed_providers) > 0);
