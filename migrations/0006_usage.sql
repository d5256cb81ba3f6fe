-- Usage: one row per request in a table partitioned by day, and hourly rollups per tenant, key and model.
--
-- usage_events is never UPDATEd: rows are inserted by the usage consumer (controlplane/usage.c) and leave
-- only when their day's partition is dropped by the retention. Partitions are created ahead by the consumer
-- (leo_usage_ensure_partitions), and for any older day an arriving event needs.
--
-- Idempotency: a unique index on a partitioned table must contain the partition key, so the key is
-- (at, request_id). `at` is not the time the row is written but the time the gateway wrote into the event,
-- so a redelivered event carries the same `at` and conflicts with its first copy (ON CONFLICT DO NOTHING).
-- See docs/usage.md, "Exactly once".
--
-- usage_rollups holds one row per (hour, tenant, key, model), upserted once per consumer batch with the sums
-- of the events of that batch that were actually inserted, never per request. Missing dimensions are '' so
-- that the primary key can hold them.

CREATE TABLE usage_events (
    at timestamptz NOT NULL,
    request_id text NOT NULL,
    tenant text NOT NULL DEFAULT '',
    key_name text NOT NULL DEFAULT '',
    model text NOT NULL DEFAULT '',
    deployment text NOT NULL DEFAULT '',
    provider text NOT NULL DEFAULT '',
    route text NOT NULL DEFAULT '',
    status int NOT NULL,
    error boolean NOT NULL DEFAULT false,
    stream boolean NOT NULL DEFAULT false,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost_usd double precision NOT NULL DEFAULT 0,
    saved_usd double precision NOT NULL DEFAULT 0,
    cache_status text NOT NULL DEFAULT 'none',
    latency_ms double precision NOT NULL DEFAULT 0,
    attempts int NOT NULL DEFAULT 0,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (at, request_id)
) PARTITION BY RANGE (at);

CREATE INDEX usage_events_tenant_at ON usage_events (tenant, at);

CREATE TABLE usage_rollups (
    hour timestamptz NOT NULL,
    tenant text NOT NULL,
    key_name text NOT NULL,
    model text NOT NULL,
    requests bigint NOT NULL DEFAULT 0,
    errors bigint NOT NULL DEFAULT 0,
    cache_hits bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost_usd double precision NOT NULL DEFAULT 0,
    saved_usd double precision NOT NULL DEFAULT 0,
    latency_ms_sum double precision NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hour, tenant, key_name, model)
);

CREATE INDEX usage_rollups_tenant_hour ON usage_rollups (tenant, hour);

-- Creates the daily partitions usage_events_YYYYMMDD covering [from_day, to_day] (UTC days) that do not exist
-- yet. Serialised by a transaction-level advisory lock, so consumers running at once do not race on the
-- catalog. Returns the number created. At most 400 days per call.
CREATE FUNCTION leo_usage_ensure_partitions(from_day date, to_day date) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    n int := 0;
    name text;
BEGIN
    IF to_day < from_day OR to_day - from_day > 400 THEN
        RAISE EXCEPTION 'usage partitions: bad day range % to %', from_day, to_day;
    END IF;
    PERFORM pg_advisory_xact_lock(30510826535609201);
    d := from_day;
    WHILE d <= to_day LOOP
        name := 'usage_events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)', name,
                           (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
            n := n + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN n;
END;
$$;

-- Drops the partitions whose whole day ended more than keep_days days ago (UTC). Returns the number dropped.
CREATE FUNCTION leo_usage_drop_partitions(keep_days int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    n int := 0;
    cutoff date := (now() AT TIME ZONE 'UTC')::date - keep_days;
BEGIN
    PERFORM pg_advisory_xact_lock(30510826535609201);
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass AND c.relname ~ '^usage_events_[0-9]{8}$'
    LOOP
        IF to_date(substr(part.relname, 14), 'YYYYMMDD') < cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END;
$$;
