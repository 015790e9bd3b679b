-- Sessions of rocket_server_sessions. The store applies this file itself (bookkept in
-- rocket_sessions_schema, never in sqlx's _sqlx_migrations); it is also plain SQL that
-- sqlx-cli or psql can apply, and every statement is safe to run twice.

-- One row per session. `key` is the SHA-256 digest of the session id: the database never holds
-- a usable session token. Times are Unix seconds.
CREATE TABLE IF NOT EXISTS rocket_sessions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        bytea  NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);

-- Expiry is a range scan on this index: loads filter on it, sweeps delete by it.
CREATE INDEX IF NOT EXISTS rocket_sessions_expires_at ON rocket_sessions (expires_at);

-- One row per session key, so that requests changing different keys never overwrite each
-- other. Values are MessagePack.
CREATE TABLE IF NOT EXISTS rocket_session_data (
    session_id bigint NOT NULL REFERENCES rocket_sessions (id) ON DELETE CASCADE,
    name       text   NOT NULL,
    value      bytea  NOT NULL,
    PRIMARY KEY (session_id, name)
);
