-- Changing sessions by hand while instances run. Call this first, in the transaction that
-- makes the change, and commit soon:
--
--   BEGIN;
--   SELECT rocket_sessions_edit_by_hand();
--   UPDATE rocket_session_data SET ... ;   -- or DELETE FROM rocket_sessions ...
--   COMMIT;
--
-- It takes the fence's lock exclusively and the cache claim's row until the transaction ends
-- (after the changes in flight commit), so that meanwhile no instance changes a session and
-- none takes or renews the claim; it gives the claim up, so that the next one is new and
-- starts with an empty cache; and it waits until the holder's lease has lapsed (at most
-- 1.5 s), by when the holder has stopped serving from its cache. Additive: earlier builds do
-- not call it.
CREATE OR REPLACE FUNCTION rocket_sessions_edit_by_hand() RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lapses timestamptz;
BEGIN
    -- The fence's lock (see rocket_sessions_fence): this key is the store's FENCE_LOCK.
    PERFORM pg_advisory_xact_lock(8245918755669241443);
    SELECT until INTO lapses FROM rocket_sessions_claim FOR UPDATE;
    UPDATE rocket_sessions_claim SET holder = NULL, until = '-infinity';
    IF lapses > clock_timestamp() THEN
        PERFORM pg_sleep(extract(epoch FROM lapses - clock_timestamp()));
    END IF;
END
$$;
