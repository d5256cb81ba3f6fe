-- The audit log: append-only and hash-chained.
--
-- Every row carries prev_hash (the hash of the row before it, empty for the first row) and
--   hash = sha256(prev_hash || convert_to(canonical, 'UTF8'))
-- where canonical is the text of the JSON array [id, at as microseconds since the epoch, actor, action,
-- target, details] as PostgreSQL renders jsonb (deterministic: keys sorted, fixed spacing). The BEFORE INSERT
-- trigger fills id, at, prev_hash and hash itself, so no writer can pick them. `leo-controlplane audit verify`
-- recomputes the chain from the stored fields and reports the first row that does not match.
--
-- Ordering: the trigger takes a transaction-level advisory lock before it reads the last row and draws the
-- id, so ids increase in chain order even when several transactions write at once (an id drawn from a column
-- default would be assigned before the lock and could be out of order). The lock is held until commit, so
-- writers that audit are serialised for the rest of their transaction; the daemon makes each write a single
-- statement, which keeps that short.
--
-- Append-only: UPDATE, DELETE and TRUNCATE are rejected by triggers. A superuser can disable triggers; the
-- hash chain is what exposes such edits afterwards.

CREATE SEQUENCE audit_log_id_seq;

CREATE TABLE audit_log (
    id bigint PRIMARY KEY,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL DEFAULT '',
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL CHECK (octet_length(hash) = 32)
);
ALTER SEQUENCE audit_log_id_seq OWNED BY audit_log.id;
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_hash bytea;
BEGIN
    -- 0x6c656f61756469 is "leoaudi": the lock that orders audit writers
    PERFORM pg_advisory_xact_lock(30510826535609449);
    SELECT hash INTO last_hash FROM audit_log ORDER BY id DESC LIMIT 1;
    NEW.id := nextval('audit_log_id_seq');
    NEW.at := clock_timestamp();
    NEW.prev_hash := coalesce(last_hash, '\x'::bytea);
    NEW.hash := sha256(NEW.prev_hash || convert_to(jsonb_build_array(
        NEW.id, (extract(epoch FROM NEW.at) * 1000000)::bigint, NEW.actor, NEW.action, NEW.target,
        NEW.details)::text, 'UTF8'));
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

CREATE FUNCTION audit_log_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_reject_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change();
