-- The time of each session's last write (Unix seconds), for listing a user's sessions with
-- their last activity. Additive: instances of earlier builds leave it as it is (NULL for their
-- sessions, which then list their creation time).
ALTER TABLE rocket_sessions ADD COLUMN IF NOT EXISTS active_at bigint;
