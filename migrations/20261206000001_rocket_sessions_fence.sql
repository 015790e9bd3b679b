-- The claim protocol each instance speaks: 1, builds whose fence is a lock on the claim's row
-- (`FOR SHARE`), which write no protocol and get this default; 2, the fence below.
ALTER TABLE rocket_sessions_instances ADD COLUMN IF NOT EXISTS protocol integer NOT NULL DEFAULT 1;
-- What every change asks (below): is an instance of protocol 1 alive? An index of those rows
-- alone keeps the answer one lookup however many instances a day of restarts has recorded.
CREATE INDEX IF NOT EXISTS rocket_sessions_instances_protocol_1
    ON rocket_sessions_instances (alive_until) WHERE protocol < 2;

-- The fence every statement that changes or deletes existing sessions passes: true when no
-- other instance than `me` holds a valid cache claim. A change holds this advisory lock,
-- shared, until it commits, and reads the claim afresh once it holds it (a VOLATILE function's
-- statements see what committed before them, not the calling statement's snapshot). Taking or
-- renewing the claim holds the same lock exclusively, so it waits for the changes in flight,
-- and a change that comes meanwhile reads the new claim. Unlike the row lock of protocol 1, it
-- writes nothing: no WAL record, and no MultiXact when several instances' changes run at once.
-- While an instance of protocol 1 may run (alive within the last minute: a rolling upgrade),
-- a change takes that row lock too, since such an instance's claim waits for nothing else.
-- The key is the store's FENCE_LOCK. Additive: protocol-1 builds keep their own fence.
CREATE OR REPLACE FUNCTION rocket_sessions_fence(me bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(8245918755669241443);
    IF EXISTS (SELECT FROM rocket_sessions_instances
                WHERE protocol < 2 AND alive_until > clock_timestamp() - interval '1 minute') THEN
        PERFORM FROM rocket_sessions_claim FOR SHARE;
    END IF;
    RETURN EXISTS (SELECT FROM rocket_sessions_claim
                    WHERE holder IS NULL OR holder = me OR until < clock_timestamp());
END
$$;
