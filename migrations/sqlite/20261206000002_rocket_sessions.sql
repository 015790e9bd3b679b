-- Sessions of rocket_server_sessions in SQLite. The store applies this file itself (bookkept in
-- rocket_sessions_schema, never in sqlx's _sqlx_migrations); every statement is safe to run
-- twice.

-- One row per session. `key` is the SHA-256 digest of the session id: the file never holds a
-- usable session token. Times are Unix seconds.
CREATE TABLE IF NOT EXISTS rocket_sessions (
    id         INTEGER PRIMARY KEY,
    key        BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    active_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Sweeps delete by expiry.
CREATE INDEX IF NOT EXISTS rocket_sessions_expires_at ON rocket_sessions (expires_at);

-- One row per session key, so that requests changing different keys never overwrite each
-- other. Values are MessagePack. A session's rows go with it (the store's connections turn
-- foreign keys on).
CREATE TABLE IF NOT EXISTS rocket_session_data (
    session_id INTEGER NOT NULL REFERENCES rocket_sessions (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    PRIMARY KEY (session_id, name)
) WITHOUT ROWID;
