-- The fence every statement that changes or deletes existing sessions passes: true when no
-- other instance than `me` holds a valid cache claim. A change holds this advisory lock,
-- shared, until it commits, and reads the claim afresh once it holds it (a VOLATILE function's
-- statements see what committed before them, not the calling statement's snapshot). Taking or
-- renewing the claim holds the same lock exclusively, so it waits for the changes in flight,
-- and a change that comes meanwhile reads the new claim. Unlike the row lock of earlier builds
-- (`FOR SHARE` on the claim's row), it writes nothing: no WAL record, and no MultiXact when
-- several instances' changes run at once. The key is the store's FENCE_LOCK. Additive: earlier
-- builds keep their row lock, which the claim's UPDATE still waits for.
CREATE OR REPLACE FUNCTION rocket_sessions_fence(me bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(8245918755669241443);
    RETURN EXISTS (SELECT FROM rocket_sessions_claim
                    WHERE holder IS NULL OR holder = me OR until < clock_timestamp());
END
$$;
